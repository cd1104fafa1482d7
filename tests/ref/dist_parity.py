#!/usr/bin/python3
"""Weights of two clip-train runs that differ only in how the global batch was
split (ranks, --accum-freq) against the bound of their rounding difference.

  dist_parity.py A.safetensors B.safetensors A.jsonl

Prints the worst |w_A - w_B| / bound over every element; exits 1 if it is
above 1. A.jsonl is run A's log (its lr and grad_norm per step).

The bound (run with --eps 1; AdamW's other settings at their defaults):
  * Gradients. Both runs sum the same per-sample terms in another order (two
    partial sums of 4 samples and a sum over the ranks, or two backward
    passes accumulated, instead of one pass over 8): the difference of an
    element is that of two implementations' rounding, <= TAU_G = 1e-4 of its
    tensor's largest gradient G (tests/unit/test_train.c derives TAU_G), and
    G <= the total gradient norm the log reports. So at step t every element
    differs by at most d_t = TAU_G * grad_norm_t / (1 - TAU_G).
  * AdamW. The update is lr * m / (sqrt(v) + eps) of bias-corrected moments,
    m = sum a_s g_s and v = sum b_s g_s^2 with weights summing to 1: m moves by
    at most max_s d_s, and sqrt(v), a weighted RMS, too (the triangle
    inequality of the weighted 2-norm). With eps = 1,
      |dm / (r + 1) - m dr / (r + 1)^2| <= d (1 + |m| / (r + 1)) <= d (1 + R_t),
    R_t = sqrt(sum a_s^2 / b_s) >= |m| / sqrt(v) (Cauchy-Schwarz; ~1 over
    these steps). With the default eps = 1e-8 a gradient that is rounding
    noise (the key bias, whose exact gradient is 0) is divided by its own
    size and moves by +-lr either way: no bound below 2 lr a step could
    separate a broken gradient from rounding, hence eps = 1 in the test.
    Weight decay multiplies an earlier difference by 1 - lr wd <= 1.
  * The update's own arithmetic: 6 roundings of |w| + lr R_t a step (three a
    run, as in test_train.c).
  Per element: D = sum_t [lr_t (1 + R_t) max_{s<=t} d_s + 6 u (|w| + lr_t R_t)].
  The premise, as in test_train.c: a step's gradients differ by rounding
  alone; the weights' own drift (<= D, ~1e-7 here) changes the next step's
  gradients by far less than their rounding.
"""
import json
import math
import struct
import sys

import numpy as np

TAU_G = 1e-4
U32 = 2.0 ** -24
BETA1, BETA2 = 0.9, 0.999


def load(path):
    data = open(path, "rb").read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], np.float32).astype(np.float64)
    return out


def steps(log):
    lr, gn = [], []
    for line in open(log):
        j = json.loads(line)
        if "loss" in j:
            lr.append(j["lr"])
            gn.append(j["grad_norm"])
    return lr, gn


def r_t(t):
    bc1, bc2 = 1 - BETA1 ** t, 1 - BETA2 ** t
    s = 0.0
    for i in range(1, t + 1):
        a = (1 - BETA1) * BETA1 ** (t - i) / bc1
        b = (1 - BETA2) * BETA2 ** (t - i) / bc2
        s += a * a / b
    return math.sqrt(s)


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    lr, gn = steps(sys.argv[3])
    if not lr or set(a) != set(b):
        sys.exit("dist_parity: no steps in the log, or the runs' tensors differ")
    lin, rnd, dmax = 0.0, 0.0, 0.0
    for t, (lr_t, gn_t) in enumerate(zip(lr, gn), 1):
        dmax = max(dmax, TAU_G * gn_t / (1 - TAU_G))
        R = r_t(t)
        lin += lr_t * (1 + R) * dmax
        rnd += 6 * U32 * lr_t * R
    steps_n = len(lr)
    worst, where, diffmax = 0.0, "", 0.0
    for name in sorted(a):
        d = np.abs(a[name] - b[name])
        bound = lin + rnd + 6 * U32 * steps_n * np.abs(a[name])
        r = float(np.max(d / bound)) if d.size else 0.0
        diffmax = max(diffmax, float(np.max(d)) if d.size else 0.0)
        if r > worst:
            worst, where = r, name
    print(f"weights: max |diff| {diffmax:.3g}, bound {lin + rnd:.3g} + 6u|w| per step; "
          f"worst diff / bound {worst:.3g} ({where})")
    sys.exit(0 if worst <= 1.0 else 1)


if __name__ == "__main__":
    main()
