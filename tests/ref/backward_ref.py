#!/usr/bin/python3
"""PyTorch reference gradients for the C backward passes (lib/model/vit.c,
lib/model/bert.c, lib/model/clip_text.c, lib/model/resblock.c, lib/kernels/ops.c),
checked by tests/unit/test_backward.c.

  backward_ref.py OUTDIR             everything below
  backward_ref.py --english OUTDIR   only the English tower's en_* files

Writes a tiny joint Chinese CLIP model (ViT + BERT + ln_final/text_projection)
as joint.pth, its inputs, the random R of the scalar loss
    sum(encode_image(pixels) * r_img) + sum(encode_text(ids) * r_txt)
and every parameter's gradient of that loss (grads.pth, float32, checkpoint
key names); plus a direct case for attention_backward with a causal mask and
with a key mask (attn_*.npy).

The English tower (OpenAI CLIP's causal text transformer, en_*): a text-only
checkpoint en_text.pth (token_embedding, positional_embedding of 16
positions, 2 blocks of 2 heads, ln_final, text_projection; float16), its ids
en_ids.npy (SOT 126 ... EOT 127, the largest id, then 0-padding; id 0 also
inside a text, where it is a real token) and R en_r_txt.npy of the loss
sum(encode_text(ids) * r_txt), and every tensor's gradient (en_grads.pth).

The weights are stored as float16 (and the reference computes with the
rounded values), and the towers are small (64 wide, 16 px images in 4 px
patches, a vocabulary of 128), to keep the fixtures under 1 MB. Both towers
have 2 heads: the C side sets heads = 2 (from shapes it infers width / 64).
"""
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref as mr  # noqa: E402

VIT = dict(resolution=16, patch=4, width=64, layers=2, heads=2, mlp=128, out_dim=32)
BERT = mr.bert_config(64, 2, 2, 128, 128, 16)
OUT_DIM = 32


def attention_ref(qkv, B, T, C, NH, causal, key_valid):
    """lib/kernels/ops.c attention_forward: a sequence with no valid key is unmasked."""
    hs = C // NH
    x = qkv.view(B, T, 3, NH, hs).permute(2, 0, 3, 1, 4)  # [3, B, NH, T, hs]
    s = x[0] @ x[1].transpose(-1, -2) / math.sqrt(hs)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    if key_valid is not None:
        kv = key_valid.view(B, T).bool()
        masked = ~kv & kv.any(dim=1, keepdim=True)
        s = s.masked_fill(masked[:, None, None, :], float("-inf"))
    return (s.softmax(-1) @ x[2]).permute(0, 2, 1, 3).reshape(B * T, C)


def attention_cases(out, rs):
    B, T, C, NH = 2, 5, 16, 2
    qkv = rs.standard_normal((B * T, 3 * C)).astype(np.float32)
    dout = rs.standard_normal((B * T, C)).astype(np.float32)
    key_valid = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], np.uint8)  # sequence 1: no valid key
    np.save(os.path.join(out, "attn_qkv.npy"), qkv)
    np.save(os.path.join(out, "attn_dout.npy"), dout)
    np.save(os.path.join(out, "attn_key_valid.npy"), key_valid)
    for name, causal, kv in (("causal", True, None), ("masked", False, torch.from_numpy(key_valid))):
        x = torch.from_numpy(qkv).requires_grad_()
        y = attention_ref(x, B, T, C, NH, causal, kv)
        (y * torch.from_numpy(dout)).sum().backward()
        np.save(os.path.join(out, f"attn_out_{name}.npy"), y.detach().numpy())
        np.save(os.path.join(out, f"attn_dqkv_{name}.npy"), x.grad.numpy())


TEXT = dict(vocab=128, context=16, width=64, layers=2, heads=2, mlp=128, out_dim=OUT_DIM)


def english(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(10)
    gen = torch.Generator().manual_seed(11)
    rs = np.random.RandomState(12)
    L, sot, eot = 12, TEXT["vocab"] - 2, TEXT["vocab"] - 1
    ids = np.zeros((3, L), np.int32)
    for row, n in enumerate((L, 7, 3)):  # ids repeat across rows
        ids[row, :n] = [sot] + list(rs.randint(0, 24, n - 2)) + [eot]
    ids[1, 2] = 0  # "!" in BPE: a token like any other, not padding
    r_txt = rs.standard_normal((3, OUT_DIM)).astype(np.float32)

    model = mr.TextTransformer(**TEXT)
    mr.randomise(model, gen)
    with torch.no_grad():
        model.half().float()  # compute with the weights the fp16 file holds
    torch.save(OrderedDict((k, v.half()) for k, v in model.state_dict().items()),
               os.path.join(out, "en_text.pth"))
    txt = model(torch.from_numpy(ids).long())
    (txt * torch.from_numpy(r_txt)).sum().backward()
    grads = OrderedDict((k, p.grad.detach().clone()) for k, p in model.named_parameters())
    assert all(g is not None for g in grads.values())
    torch.save(grads, os.path.join(out, "en_grads.pth"))
    np.save(os.path.join(out, "en_ids.npy"), ids)
    np.save(os.path.join(out, "en_r_txt.npy"), r_txt)
    for name in sorted(n for n in os.listdir(out) if n.startswith("en_")):
        print(f"{os.path.join(out, name)}: {os.path.getsize(os.path.join(out, name))} bytes")
    print(f"{len(grads)} English gradient tensors")


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    rs = np.random.RandomState(0)

    pixels = rs.randint(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    L = 12
    ids = np.zeros((3, L), np.int32)
    for row, n in enumerate((L, 7, 3)):  # [CLS] ... [SEP] [PAD]...; ids repeat across rows
        ids[row, :n] = [101] + list(rs.randint(1, 24, n - 2)) + [102]
    r_img = rs.standard_normal((3, OUT_DIM)).astype(np.float32)
    r_txt = rs.standard_normal((3, OUT_DIM)).astype(np.float32)

    model = mr.ChineseCLIP(VIT, BERT, OUT_DIM)
    mr.randomise(model, gen)
    with torch.no_grad():
        model.half().float()  # compute with the weights the fp16 file holds
    torch.save(OrderedDict((k, v.half() if v.is_floating_point() else v)
                           for k, v in model.state_dict().items()),
               os.path.join(out, "joint.pth"))

    img = mr.encode_image(model, pixels)
    txt = model.encode_text(torch.from_numpy(ids).long())
    loss = (img * torch.from_numpy(r_img)).sum() + (txt * torch.from_numpy(r_txt)).sum()
    loss.backward()
    grads = OrderedDict((k, p.grad.detach().clone()) for k, p in model.named_parameters()
                        if p.grad is not None)
    assert "logit_scale" not in grads and len(grads) == len(list(model.parameters())) - 1
    torch.save(grads, os.path.join(out, "grads.pth"))

    np.save(os.path.join(out, "pixels.npy"), pixels)
    np.save(os.path.join(out, "ids.npy"), ids)
    np.save(os.path.join(out, "r_img.npy"), r_img)
    np.save(os.path.join(out, "r_txt.npy"), r_txt)
    attention_cases(out, rs)
    english(out)

    total = 0
    for name in sorted(os.listdir(out)):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"{os.path.join(out, name)}: {size} bytes")
    print(f"{len(grads)} gradient tensors, {total} bytes in all")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--english":
        english(sys.argv[2])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
