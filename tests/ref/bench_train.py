#!/usr/bin/python3
"""bench_train.py C_BENCH [--arch base] [--configs 8,8amp,32,32amp,32ckpt] [--steps K]

A configuration is the batch, then `amp` (bf16), then `mask` (patch dropout
0.5: clip-train --mask-ratio 0.5 beside open_clip's PatchDropout in torch),
e.g. 32, 32amp, 32mask.

Seconds per training step of the C trainer (C_BENCH, tests/bench/bench_train.c)
and of PyTorch at its best here (tests/ref/train_ref.py bench, configured by
tests/ref/reference_env.py), each configuration in a fresh
process of each so that the peak RSS is its own, printed side by side.
A configuration is the batch, then "amp" (bf16) and/or "ckpt" (gradient
checkpointing: clip-train --grad-checkpointing, torch.utils.checkpoint on
every block): 32ckpt, 128ampckpt. "act MiB" is the activations the C trainer
reserves (trainer_memory), exactly."""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEAK = 445.0  # GFLOP/s: 2 cores x 3.5 GHz x 2 AVX-512 FMA x 16 lanes x 2


def run(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("c_bench")
    ap.add_argument("--arch", default="base")
    ap.add_argument("--configs", default="8,8amp,32,32amp,32ckpt,32mask")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    rows = []
    for cfg in a.configs.split(","):
        digits = len(cfg) - len(cfg.lstrip("0123456789"))
        batch, flags = int(cfg[:digits]), cfg[digits:]
        amp, ckpt, mask = "amp" in flags, "ckpt" in flags, 0.5 if "mask" in flags else 0.0
        if flags.replace("amp", "", 1).replace("ckpt", "", 1).replace("mask", "", 1):
            sys.exit(f"bench_train.py: configuration '{cfg}': expected BATCH[amp][ckpt][mask]")
        print(f"bench_train: {a.arch} batch {batch}{' amp' if amp else ''}{' ckpt' if ckpt else ''}"
              f"{f' mask {mask}' if mask else ''} ...", file=sys.stderr)
        c = run([a.c_bench, a.arch, str(batch), str(a.steps)] + (["amp"] if amp else []) +
                (["ckpt"] if ckpt else []) + ([f"mask={mask}"] if mask else []))
        t = run(["/usr/bin/python3", os.path.join(HERE, "train_ref.py"), "bench", "--arch", a.arch,
                 "--batch", str(batch), "--steps", str(a.steps)] + (["--amp"] if amp else []) +
                (["--grad-checkpointing"] if ckpt else []) +
                (["--mask-ratio", str(mask)] if mask else []))
        rows.append((batch, amp, c, t))
    print(f"\nclip-train step, {a.arch} (ViT + BERT), median of {a.steps} steps after a warm-up; "
          f"C: {rows[0][2]['blas']}")
    print(rows[0][3]["reference"])
    print(f"{'batch':>5} {'mode':>12} | {'C s/step':>9} {'PyTorch':>9} {'speed-up':>8} | "
          f"{'C GFLOP/s':>9} {'of peak':>7} | {'C RSS MiB':>9} {'PyTorch':>9} {'ratio':>6} | {'act MiB':>7} | "
          f"C parts: image/text/optim s")
    for batch, amp, c, t in rows:
        mode = (("bf16" if amp else "fp32") + ("+ck" if c.get("grad_checkpointing") else "") +
                (f" mask{c['mask_ratio']:g}" if c.get("mask_ratio") else ""))
        print(f"{batch:>5} {mode:>12} | {c['sec_per_step']:>9.2f} {t['sec_per_step']:>9.2f} "
              f"{t['sec_per_step'] / c['sec_per_step']:>7.2f}x | {c['gflops']:>9.0f} {c['gflops'] / PEAK:>7.0%} | "
              f"{c['peak_rss_mib']:>9.0f} {t['peak_rss_mib']:>9.0f} {c['peak_rss_mib'] / t['peak_rss_mib']:>6.2f} | "
              f"{c['activation_bytes'] / 2**20:>7.0f} | "
              f"{c['image_s']:.2f}/{c['text_s']:.2f}/{c['optim_s']:.2f}")


if __name__ == "__main__":
    main()
