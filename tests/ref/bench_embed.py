#!/usr/bin/python3
"""bench_embed.py CKPT C_BENCH: images/s (ViT-B/16, B=32) and texts/s
(BERT-base, B=32, L=52) of the C towers (C_BENCH, tests/bench/bench_embed.c)
and of PyTorch at its best here (reference_env.py) on the same checkpoint and
inputs, in one table; then how far clip-embed's fp32, --amp and --int8
embeddings of the first ACC_N cn_val images and captions (of $DATA, a
Flickr8k-CN folder; without it the 8 images of tests/fixtures/flickr8k-mini)
are from PyTorch's fp32 ones (cosine)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_env  # noqa: E402

reference_env.ensure()  # before numpy and torch load their BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model_ref import ChineseCLIP, bert_config, encode_image  # noqa: E402

B_IMG, B_TXT, L, REPS = 32, 32, 52, 2
ACC_N = 64
MINI = "tests/fixtures/flickr8k-mini"
DATA = os.environ.get("DATA") or MINI
VIT_GFLOP_PER_IMAGE = 35.1


def c_bench(ckpt, exe):
    out = subprocess.run([exe, ckpt, str(B_IMG), str(B_TXT), str(L), str(REPS)], check=True,
                         capture_output=True, text=True, env=reference_env.ours_env()).stdout
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
    torch.set_num_threads(reference_env.THREADS)
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
    # PyTorch's own int8: dynamic quantisation of every nn.Linear (fbgemm). The ViT's
    # attention in/out projections (nn.MultiheadAttention) stay fp32 there.
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    q_img = timed(lambda: encode_image(q, pixels), REPS)
    q_txt = timed(lambda: q.encode_text(ids), REPS)
    return B_IMG / s_img, B_TXT / s_txt, B_IMG / a_img, B_IMG / q_img, B_TXT / q_txt, model


def accuracy(ckpt, model):
    """min and mean cosine of clip-embed's embeddings to PyTorch fp32's, per mode"""
    import io
    import json
    import tarfile
    import tempfile
    from model_ref import normalize
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = f"{DATA}/cn_val.json" if DATA != MINI else f"{MINI}/cn_mini.json"
        if not os.path.exists(ann_file):
            sys.exit(f"bench_embed.py: DATA={DATA}: no cn_val.json (a Flickr8k-CN folder)")
        ann = json.load(open(ann_file))[:ACC_N]
        json.dump(ann, open(f"{tmp}/ann.json", "w"))
        ours = reference_env.ours_env()
        subprocess.run(f"bin/clip-prep --annotations {tmp}/ann.json --root {DATA} | bin/clip-tokenize "
                       f"> {tmp}/in.tar", shell=True, check=True, env=ours)
        rows = []
        for flag in ("", "--amp", "--int8"):
            subprocess.run(f"bin/clip-embed --model {ckpt} {flag} < {tmp}/in.tar > {tmp}/out.tar",
                           shell=True, check=True, env=ours)
            ci, ct = [], []
            with tarfile.open(f"{tmp}/out.tar") as tf, torch.no_grad():
                s = {}
                for m in tf:
                    key, field = m.name.split(".", 1)
                    if field.endswith(".npy"):
                        s.setdefault(key, {})[field] = np.load(io.BytesIO(tf.extractfile(m).read()))
                px = np.stack([v["img.npy"] for v in s.values()])
                ref_img = normalize(encode_image(model, px))
                for i, v in enumerate(s.values()):
                    ci.append(float(ref_img[i] @ v["img_emb.npy"]))
                    ref_txt = normalize(model.encode_text(torch.from_numpy(v["tok.npy"]).long()))
                    ct += [float(a @ b) for a, b in zip(ref_txt, v["txt_emb.npy"])]
            rows.append((flag or "fp32", min(ci), np.mean(ci), min(ct), np.mean(ct), len(ci), len(ct)))
    return rows


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ckpt, exe = sys.argv[1], sys.argv[2]
    c = c_bench(ckpt, exe)
    t_img, t_txt, t_img_amp, t_img_q, t_txt_q, model = torch_bench(ckpt)
    peak = c["sgemm_gflops"]
    print(f"C: OpenBLAS {c['blas']}; sgemm 4096^3: {peak:.0f} GFLOP/s")
    print(reference_env.describe())
    print(f"{'':24}{'C':>10}{'PyTorch':>10}{'C/PyTorch':>11}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'in GEMM':>9}{'attention':>10}")

    def row(what, tower, sfx, tv):
        """tower: image or text; sfx: the C mode's key suffix; tv: PyTorch's rate"""
        rate = c[("images_per_s" if tower == "image" else "texts_per_s") + sfx]
        g = c[f"{tower}_gflops{sfx}"]
        print(f"{what:24}{rate:10.2f}{tv:10.2f}{rate / tv:10.2f}x{g:9.0f}{g / peak:9.0%}"
              f"{c[f'{tower}_gemm_share{sfx}']:9.0%}{c[f'{tower}_attention_share{sfx}']:10.0%}")

    row(f"ViT-B/16 images/s B={B_IMG}", "image", "", t_img)
    row(f"BERT-base texts/s L={L}", "text", "", t_txt)
    print("C in bf16 (clip-embed --amp) against PyTorch's torch.autocast(bfloat16) (its BERT "
          "head does not run under CPU autocast in 1.13) and fp32")
    row("ViT-B/16 vs PyTorch bf16", "image", "_bf16", t_img_amp)
    row("ViT-B/16 vs PyTorch fp32", "image", "_bf16", t_img)
    row("BERT-base vs PyTorch fp32", "text", "_bf16", t_txt)
    print("C in int8 (clip-embed --int8) against PyTorch's quantize_dynamic(nn.Linear, qint8) "
          "and fp32; GFLOP/s counts the int8 multiply-adds as flops")
    row("ViT-B/16 vs PyTorch int8", "image", "_int8", t_img_q)
    row("ViT-B/16 vs PyTorch fp32", "image", "_int8", t_img)
    row("BERT-base vs PyTorch int8", "text", "_int8", t_txt_q)
    row("BERT-base vs PyTorch fp32", "text", "_int8", t_txt)

    rows = accuracy(ckpt, model)
    where = "cn_val" if DATA != MINI else f"{MINI} (DATA= unset)"
    print(f"cosine to PyTorch fp32 on the first {rows[0][5]} images of {where} and their "
          f"{rows[0][6]} captions (random weights of the real shapes)")
    print(f"{'clip-embed':24}{'img min':>10}{'img mean':>10}{'txt min':>10}{'txt mean':>10}")
    for flag, a, b, c, d, _, _ in rows:
        print(f"{flag:24}{a:10.5f}{b:10.5f}{c:10.5f}{d:10.5f}")


if __name__ == "__main__":
    main()
