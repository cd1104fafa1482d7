#!/usr/bin/python3
"""bench_train.py C_BENCH [--arch base] [--configs 8,8amp,32,32amp,32lock,32cached] [--steps K]

Seconds per training step of the C trainer (C_BENCH, tests/bench/bench_train.c)
and of PyTorch at its best here (tests/ref/train_ref.py bench, configured by
tests/ref/reference_env.py), each configuration in a fresh
process of each so that the peak RSS is its own, printed side by side.
A configuration is a batch size and a mode: amp (bf16), lock (--lock-image:
the image tower's forward only; PyTorch: requires_grad False on the visual
tower and its forward under torch.no_grad) or cached (a cached epoch of
--lock-image: precomputed image features, the text tower only)."""
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
    ap.add_argument("--configs", default="8,8amp,32,32amp")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    rows = []
    for cfg in a.configs.split(","):
        mode = next((m for m in ("amp", "lock", "cached") if cfg.endswith(m)), "")
        batch = int(cfg[:len(cfg) - len(mode)])
        amp = mode == "amp"
        print(f"bench_train: {a.arch} batch {batch} {mode or 'fp32'} ...", file=sys.stderr)
        c = run([a.c_bench, a.arch, str(batch), str(a.steps)] + ([mode] if mode else []))
        t = run(["/usr/bin/python3", os.path.join(HERE, "train_ref.py"), "bench", "--arch", a.arch,
                 "--batch", str(batch), "--steps", str(a.steps)] + ([f"--{mode}"] if mode else []))
        rows.append((batch, mode or "fp32", c, t))
    print(f"\nclip-train step, {a.arch} (ViT + BERT), median of {a.steps} steps after a warm-up; "
          f"C: {rows[0][2]['blas']}")
    print(rows[0][3]["reference"])
    print(f"{'batch':>5} {'mode':>6} | {'C s/step':>9} {'PyTorch':>9} {'speed-up':>8} | "
          f"{'C GFLOP/s':>9} {'of peak':>7} | {'C RSS MiB':>9} {'PyTorch':>9} {'ratio':>6} | C parts: image/text/optim s")
    for batch, mode, c, t in rows:
        mode = "bf16" if mode == "amp" else mode
        print(f"{batch:>5} {mode:>6} | {c['sec_per_step']:>9.2f} {t['sec_per_step']:>9.2f} "
              f"{t['sec_per_step'] / c['sec_per_step']:>7.2f}x | {c['gflops']:>9.0f} {c['gflops'] / PEAK:>7.0%} | "
              f"{c['peak_rss_mib']:>9.0f} {t['peak_rss_mib']:>9.0f} {c['peak_rss_mib'] / t['peak_rss_mib']:>6.2f} | "
              f"{c['image_s']:.2f}/{c['text_s']:.2f}/{c['optim_s']:.2f}")


if __name__ == "__main__":
    main()
