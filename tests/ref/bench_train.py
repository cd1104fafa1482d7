#!/usr/bin/python3
"""bench_train.py C_BENCH [--arch base] [--configs 32,32amp,32lock,...] [--steps K]

Seconds per training step of the C trainer (C_BENCH, tests/bench/bench_train.c)
and of PyTorch at its best here (tests/ref/train_ref.py bench, configured by
tests/ref/reference_env.py), each configuration in a fresh process of each so
that the peak RSS is its own, printed side by side.

A configuration is the batch, then any of these modes:
  amp     bf16 matrix products (PyTorch: CPU autocast bf16)
  ckpt    clip-train --grad-checkpointing (torch.utils.checkpoint on every block)
  mask    clip-train --mask-ratio 0.5 (open_clip's PatchDropout in torch)
  lock    --lock-image, epoch 1: the image tower's forward only (PyTorch:
          requires_grad False on the visual tower, its forward under no_grad)
  cached  a cached epoch of --lock-image: precomputed image features, the
          text tower only
e.g. 32, 32amp, 32ckpt, 128ampckpt, 32lock. "act MiB" is the activations the
C trainer reserves (trainer_memory), exactly."""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEAK = 445.0  # GFLOP/s: 2 cores x 3.5 GHz x 2 AVX-512 FMA x 16 lanes x 2
MASK = 0.5
# mode: (bench_train.c's argument, train_ref.py bench's)
MODES = {"amp": (["amp"], ["--amp"]),
         "ckpt": (["ckpt"], ["--grad-checkpointing"]),
         "mask": ([f"mask={MASK}"], ["--mask-ratio", str(MASK)]),
         "lock": (["lock"], ["--lock"]),
         "cached": (["cached"], ["--cached"])}


def run(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def parse(cfg):
    m = re.fullmatch(r"(\d+)((?:amp|ckpt|mask|lock|cached)*)", cfg)
    modes = re.findall("amp|ckpt|mask|lock|cached", m.group(2)) if m else None
    if not m or len(set(modes)) != len(modes) or {"lock", "cached"} <= set(modes):
        sys.exit(f"bench_train.py: configuration '{cfg}': expected BATCH[amp][ckpt][mask][lock|cached]")
    return int(m.group(1)), modes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("c_bench")
    ap.add_argument("--arch", default="base")
    ap.add_argument("--configs", default="32,32amp,32lock,32cached,32mask,32ckpt")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    rows = []
    for cfg in a.configs.split(","):
        batch, modes = parse(cfg)
        print(f"bench_train: {a.arch} batch {batch} {' '.join(modes) or 'fp32'} ...", file=sys.stderr)
        c = run([a.c_bench, a.arch, str(batch), str(a.steps)] + [x for m in modes for x in MODES[m][0]])
        t = run(["/usr/bin/python3", os.path.join(HERE, "train_ref.py"), "bench", "--arch", a.arch,
                 "--batch", str(batch), "--steps", str(a.steps)] +
                [x for m in modes for x in MODES[m][1]])
        rows.append((batch, modes, c, t))
    print(f"\nclip-train step, {a.arch} (ViT + BERT), median of {a.steps} steps after a warm-up; "
          f"C: {rows[0][2]['blas']}")
    print(rows[0][3]["reference"])
    print(f"{'batch':>5} {'mode':>12} | {'C s/step':>9} {'PyTorch':>9} {'speed-up':>8} | "
          f"{'C GFLOP/s':>9} {'of peak':>7} | {'C RSS MiB':>9} {'PyTorch':>9} {'ratio':>6} | {'act MiB':>7} | "
          f"C parts: image/text/optim s")
    for batch, modes, c, t in rows:
        mode = "+".join(["bf16" if "amp" in modes else "fp32"] + [m for m in modes if m != "amp"])
        print(f"{batch:>5} {mode:>12} | {c['sec_per_step']:>9.2f} {t['sec_per_step']:>9.2f} "
              f"{t['sec_per_step'] / c['sec_per_step']:>7.2f}x | {c['gflops']:>9.0f} {c['gflops'] / PEAK:>7.0%} | "
              f"{c['peak_rss_mib']:>9.0f} {t['peak_rss_mib']:>9.0f} {c['peak_rss_mib'] / t['peak_rss_mib']:>6.2f} | "
              f"{c['activation_bytes'] / 2**20:>7.0f} | "
              f"{c['image_s']:.2f}/{c['text_s']:.2f}/{c['optim_s']:.2f}")
    full = next((r for r in rows if not r[1]), None)
    cached = next((r for r in rows if r[1] == ["cached"] and full and r[0] == full[0]), None)
    if full and cached:
        print(f"a cached --lock-image step against a full step (batch {full[0]}): "
              f"{full[2]['sec_per_step'] / cached[2]['sec_per_step']:.1f}x (C), "
              f"{full[3]['sec_per_step'] / cached[3]['sec_per_step']:.1f}x (PyTorch)")


if __name__ == "__main__":
    main()
