#!/usr/bin/python3
"""bench_embed.py CKPT C_BENCH: images/s (ViT-B/16, B=32) and texts/s
(BERT-base, B=32, L=52) of the C towers (C_BENCH, tests/bench/bench_embed.c)
and of PyTorch at its best here (OpenBLAS's own kernel, passive OpenMP
waits, 2 threads) on the same checkpoint and inputs, in one table."""
import os
import subprocess
import sys
import time

# PyTorch's OpenBLAS/OpenMP read these at load time
if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
    os.environ.pop("OPENBLAS_CORETYPE", None)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_ref import ChineseCLIP, bert_config, encode_image  # noqa: E402

B_IMG, B_TXT, L, REPS = 32, 32, 52, 2
VIT_GFLOP_PER_IMAGE = 35.1


def c_bench(ckpt, exe):
    out = subprocess.run([exe, ckpt, str(B_IMG), str(B_TXT), str(L), str(REPS)], check=True,
                         capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        k, v = line.split(" ", 1)
        res[k] = v if k == "blas" else float(v)
    return res


def timed(fn, reps):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def torch_bench(ckpt):
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    vit = dict(resolution=224, patch=16, width=768, layers=12, heads=12, mlp=3072, out_dim=512)
    model = ChineseCLIP(vit, bert_config(768, 12, 12, 3072, 21128, 512), 512).eval()
    model.load_state_dict(torch.load(ckpt))
    i = np.arange(B_IMG * 224 * 224 * 3, dtype=np.uint64)
    pixels = ((i * 2654435761) % (1 << 32) >> 24).astype(np.uint8).reshape(B_IMG, 224, 224, 3)
    ids = torch.tensor([[101 if t == 0 else 102 if t == L - 1 else 1000 + (b * 131 + t * 71) % 20000
                         for t in range(L)] for b in range(B_TXT)])
    s_img = timed(lambda: encode_image(model, pixels), REPS)
    s_txt = timed(lambda: model.encode_text(ids), REPS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_img = timed(lambda: encode_image(model, pixels), REPS)
    return B_IMG / s_img, B_TXT / s_txt, B_IMG / a_img


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ckpt, exe = sys.argv[1], sys.argv[2]
    c = c_bench(ckpt, exe)
    t_img, t_txt, t_img_amp = torch_bench(ckpt)
    peak = c["sgemm_gflops"]
    print(f"OpenBLAS {c['blas']}; sgemm 4096^3: {peak:.0f} GFLOP/s; "
          f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'':24}{'C':>10}{'PyTorch':>10}{'C/PyTorch':>11}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'in GEMM':>9}{'attention':>10}")
    for what, ck, tv, g, gs, at in (
            (f"ViT-B/16 images/s B={B_IMG}", "images_per_s", t_img, "image_gflops", "image_gemm_share",
             "image_attention_share"),
            (f"BERT-base texts/s L={L}", "texts_per_s", t_txt, "text_gflops", "text_gemm_share",
             "text_attention_share")):
        print(f"{what:24}{c[ck]:10.2f}{tv:10.2f}{c[ck] / tv:10.2f}x{c[g]:9.0f}{c[g] / peak:9.0%}"
              f"{c[gs]:9.0%}{c[at]:10.0%}")
    print("C in bf16 (clip-embed --amp) against PyTorch's torch.autocast(bfloat16) (its BERT "
          "head does not run under CPU autocast in 1.13) and fp32")
    for what, ck, tv, g, gs, at in (
            (f"ViT-B/16 vs PyTorch bf16", "images_per_s_bf16", t_img_amp, "image_gflops_bf16",
             "image_gemm_share_bf16", "image_attention_share_bf16"),
            (f"ViT-B/16 vs PyTorch fp32", "images_per_s_bf16", t_img, "image_gflops_bf16",
             "image_gemm_share_bf16", "image_attention_share_bf16"),
            (f"BERT-base vs PyTorch fp32", "texts_per_s_bf16", t_txt, "text_gflops_bf16",
             "text_gemm_share_bf16", "text_attention_share_bf16")):
        print(f"{what:24}{c[ck]:10.2f}{tv:10.2f}{c[ck] / tv:10.2f}x{c[g]:9.0f}{c[g] / peak:9.0%}"
              f"{c[gs]:9.0%}{c[at]:10.0%}")


if __name__ == "__main__":
    main()
