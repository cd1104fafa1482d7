#!/usr/bin/python3
"""Strict loads of a .pth written by clip-train into the PyTorch reference.

  load_strict.py SAVED.pth --init CKPT [--text-model DIR] [--embedded EMB.tar]
  load_strict.py SAVED.pth --arch [--position-ids] [--embedded EMB.tar]

--init: the reference model of that init, built from the init's files alone
as the reference fine-tuning builds it (the ViT and logit_scale of CKPT;
BERT from CKPT's `transformer.*` or from DIR/pytorch_model.bin, with
DIR/config.json; ln_final and text_projection; the English tower of an
OpenAI checkpoint left out). SAVED must load with load_state_dict(strict=True)
into both of:
  1. the init's key contract: a module holding exactly the init's keys and
     shapes (BERT names as from_pretrained maps them: `bert.` stripped,
     LayerNorm gamma/beta -> weight/bias) plus the head; position_ids is in
     it exactly when the init's BERT weights have it
  2. model_ref.ChineseCLIP of the init's configuration, its position_ids
     buffer persistent exactly when the init's BERT weights have it (as
     transformers < 4.31 wrote them) and not otherwise (current
     transformers); the init's own weights load into it strictly first, so it
     is the init's model
An English init (OpenAI CLIP: token_embedding.weight, no BERT, no
--text-model; .pth or .safetensors) trains whole: SAVED must load strictly
into 1. a module of exactly the init's keys and shapes and 2.
model_ref.OpenAICLIP of the init's configuration (head counts from its
clip_config record, else width / 64), which the init loads into strictly
first.
--arch (a model from scratch): model_ref.ChineseCLIP as current transformers
builds it (no position_ids in the state dict) or, with --position-ids, as
older ones; model_ref.OpenAICLIP when SAVED has the English tower
(token_embedding.weight); dimensions from SAVED's shapes, head counts from
its clip-tools metadata (archive/clip-tools/metadata.json).
--embedded: clip-embed's output (img.npy, tok.npy, img_emb.npy, txt_emb.npy
samples); the embeddings of model 2 with SAVED's weights must agree within
1e-5, which checks the head counts clip-embed used.
Exits 0 when all holds, 1 with torch's message ("Unexpected key(s) ...").
"""
import argparse
import io
import json
import os
import struct
import sys
import tarfile
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_ref  # noqa: E402

def recorded_config(path):
    """clip-tools' clip_config record of a .pth, {} when it has none."""
    with zipfile.ZipFile(path) as z:
        name = [n for n in z.namelist() if n.endswith("/clip-tools/metadata.json")]
        if not name:
            return {}
        meta = json.loads(z.read(name[0]))
    return json.loads(meta.get("clip_config", "{}"))


def load_init(path):
    """(state dict, clip_config record) of a .pth or, read by hand (Debian has
    no `safetensors`), a .safetensors file."""
    if not path.endswith(".safetensors"):
        return torch.load(path), recorded_config(path) if zipfile.is_zipfile(path) else {}
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
    sd = OrderedDict()
    for k, v in header.items():
        b, e = v["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + e], dtype=dtypes[v["dtype"]]).reshape(v["shape"])
        sd[k] = torch.from_numpy(arr.copy())
    return sd, json.loads(meta.get("clip_config", "{}"))


def text_config(sd, heads=None):
    """OpenAI's English tower (model_ref.TextTransformer) from its shapes."""
    tok = sd["token_embedding.weight"]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return dict(vocab=tok.shape[0], context=sd["positional_embedding"].shape[0], width=tok.shape[1],
                layers=layers, heads=heads or tok.shape[1] // 64,
                mlp=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                out_dim=sd["text_projection"].shape[1])


def vit_config(sd, heads=None):
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[2]
    tokens = sd["visual.positional_embedding"].shape[0]
    layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    return dict(resolution=int(round((tokens - 1) ** 0.5)) * patch, patch=patch, width=width,
                layers=layers, heads=heads or width // 64,
                mlp=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                out_dim=sd["visual.proj"].shape[1])


def bert_config(body, heads=None):
    """Config from the shapes of BERT weights named as in BertModel."""
    hidden = body["embeddings.word_embeddings.weight"].shape[1]
    layers = len({k.split(".")[2] for k in body if k.startswith("encoder.layer.")})
    return model_ref.bert_config(hidden, layers, heads or hidden // 64,
                                 body["encoder.layer.0.intermediate.dense.weight"].shape[0],
                                 body["embeddings.word_embeddings.weight"].shape[0],
                                 body["embeddings.position_embeddings.weight"].shape[0])


def bert_from_pretrained(sd):
    """BertModel's view of HF weights, as from_pretrained maps the names."""
    prefixed = any(k.startswith("bert.") for k in sd)
    out = OrderedDict()
    for k, v in sd.items():
        if prefixed:
            if not k.startswith("bert."):
                continue  # e.g. the cls.* heads of BertForPreTraining
            k = k[len("bert."):]
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k.startswith(("embeddings.", "encoder.", "pooler.")):
            out[k] = v
    return out


def contract_module(shapes):
    """A module whose state dict is exactly these (name -> (shape, dtype))."""
    root = nn.Module()
    for key, (shape, dtype) in shapes.items():
        *path, leaf = key.split(".")
        m = root
        for p in path:
            if p not in m._modules:
                m.add_module(p, nn.Module())
            m = m._modules[p]
        m.register_buffer(leaf, torch.zeros(shape, dtype=dtype))
    return root


def strict(model, sd, what):
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        sys.exit(f"{what}: {e}")
    print(f"{what}: strict load ok ({len(sd)} keys)")


def embeddings_diff(model, stream):
    samples = {}
    with tarfile.open(stream) as tf:
        for m in tf.getmembers():
            key, field = m.name.split(".", 1)
            if field.endswith(".npy"):
                samples.setdefault(key, {})[field] = np.load(io.BytesIO(tf.extractfile(m).read()))
    worst = 0.0
    with torch.no_grad():
        for s in samples.values():
            img = model_ref.normalize(model_ref.encode_image(model, s["img.npy"][None]))[0]
            txt = model_ref.normalize(model.encode_text(torch.from_numpy(s["tok.npy"]).long()))
            worst = max(worst, float(np.abs(img - s["img_emb.npy"]).max()),
                        float(np.abs(txt - s["txt_emb.npy"]).max()))
    return len(samples), worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("saved")
    ap.add_argument("--init")
    ap.add_argument("--text-model")
    ap.add_argument("--arch", action="store_true")
    ap.add_argument("--position-ids", action="store_true")
    ap.add_argument("--embedded")
    a = ap.parse_args()
    if bool(a.init) == a.arch:
        sys.exit("give --init CKPT or --arch")
    saved = torch.load(a.saved, weights_only=True)
    rec = recorded_config(a.saved)
    english = False  # an English init, trained whole

    if a.arch and "token_embedding.weight" in saved:
        vit = vit_config(saved, rec.get("image", {}).get("heads"))
        model = model_ref.OpenAICLIP(vit, text_config(saved, rec.get("clip_text", {}).get("heads"))).eval()
        strict(model, saved, "model_ref.OpenAICLIP (the English tower)")
    elif a.arch:
        body = OrderedDict((k[len("transformer."):], v) for k, v in saved.items() if k.startswith("transformer."))
        cfg = bert_config(body, rec.get("text", {}).get("heads"))
        vit = vit_config(saved, rec.get("image", {}).get("heads"))
        model = model_ref.ChineseCLIP(vit, cfg, vit["out_dim"], position_ids=a.position_ids).eval()
        strict(model, saved, "model_ref.ChineseCLIP, position_ids %s" %
               ("in the state dict (transformers < 4.31)" if a.position_ids else "left out (current transformers)"))
    else:
        init, init_rec = load_init(a.init)
        english = ("token_embedding.weight" in init and not a.text_model and
                   "transformer.embeddings.word_embeddings.weight" not in init)
    if a.init and english:
        print(f"init {a.init}: OpenAI CLIP with the English tower, trained whole")
        shapes = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in init.items())
        strict(contract_module(shapes), saved, "the init's key contract")
        model = model_ref.OpenAICLIP(vit_config(init, init_rec.get("image", {}).get("heads")),
                                     text_config(init, init_rec.get("clip_text", {}).get("heads"))).eval()
        strict(model, init, "model_ref.OpenAICLIP <- the init itself")
        strict(model, saved, "model_ref.OpenAICLIP of the init")
    elif a.init:
        if "transformer.embeddings.word_embeddings.weight" in init:
            body = OrderedDict((k[len("transformer."):], v) for k, v in init.items() if k.startswith("transformer."))
        else:
            if not a.text_model:
                sys.exit(f"{a.init} has no BERT: give --text-model DIR")
            body = bert_from_pretrained(torch.load(os.path.join(a.text_model, "pytorch_model.bin")))
        has_pos = "embeddings.position_ids" in body
        cfg_path = a.text_model and os.path.join(a.text_model, "config.json")
        cfg = json.load(open(cfg_path)) if cfg_path and os.path.exists(cfg_path) else bert_config(body)
        vit = vit_config(init)
        H, D = cfg["hidden_size"], vit["out_dim"]
        print(f"init {a.init}{' + ' + a.text_model if a.text_model else ''}: BERT weights "
              f"{'with' if has_pos else 'without'} embeddings.position_ids")

        # 1. the key contract of the init
        shapes = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in init.items() if k.startswith("visual."))
        shapes.update(("transformer." + k, (tuple(v.shape), v.dtype)) for k, v in body.items())
        shapes.update({"ln_final.weight": ((H,), torch.float32), "ln_final.bias": ((H,), torch.float32),
                       "text_projection": ((H, D), torch.float32), "logit_scale": ((), torch.float32)})
        strict(contract_module(shapes), saved, "the init's key contract")

        # 2. model_ref's model of the init, holding the init's weights first
        model = model_ref.ChineseCLIP(vit, cfg, D, position_ids=has_pos).eval()
        if "transformer.embeddings.word_embeddings.weight" in init:  # a joint checkpoint: the whole model
            strict(model, init, "model_ref.ChineseCLIP <- the init itself")
        else:  # a seed: the ViT of the checkpoint, BERT from the directory, a fresh head
            strict(model.visual, OrderedDict((k[len("visual."):], v) for k, v in init.items()
                                             if k.startswith("visual.")), "ChineseCLIP.visual <- the init's ViT")
            strict(model.transformer, body, "ChineseCLIP.transformer <- the init's BERT")
        strict(model, saved, "model_ref.ChineseCLIP of the init (position_ids %s)" %
               ("persistent" if has_pos else "persistent=False"))

    if a.embedded:
        n, worst = embeddings_diff(model, a.embedded)
        print(f"{n} samples: max abs embedding difference to clip-embed {worst:.3g}")
        if not worst <= 1e-5:
            sys.exit(1)


if __name__ == "__main__":
    main()
