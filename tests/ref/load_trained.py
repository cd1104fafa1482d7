#!/usr/bin/python3
"""Loads a checkpoint written by clip-train into the reference model
(model_ref.ChineseCLIP) with a strict load_state_dict, then recomputes the
embeddings of an embedded stream (clip-embed's img_emb.npy / txt_emb.npy over
img.npy / tok.npy) with PyTorch and prints the largest difference.

  load_trained.py CKPT.pth BERT_CONFIG.json EMBEDDED.tar
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref  # noqa: E402
from load_strict import embeddings_diff  # noqa: E402


def main(ckpt, bert_cfg_path, stream):
    sd = torch.load(ckpt)
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[2]
    tokens = sd["visual.positional_embedding"].shape[0]
    layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    vit = dict(resolution=int(round((tokens - 1) ** 0.5)) * patch, patch=patch, width=width,
               layers=layers, heads=width // 64, mlp=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
               out_dim=sd["visual.proj"].shape[1])
    cfg = json.load(open(bert_cfg_path))
    model = model_ref.ChineseCLIP(vit, cfg, vit["out_dim"]).eval()
    model.load_state_dict(sd, strict=True)
    n, worst = embeddings_diff(model, stream)
    print(f"strict load ok; {n} samples; max abs embedding difference {worst:.3g}")
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
