#!/usr/bin/python3
"""PyTorch reference for the C model (lib/model/vit.c, lib/model/bert.c, lib/model/clip_text.c,
lib/model/clip_model.c): the OpenAI CLIP ViT and text transformer and the Hugging
Face BertModel, written out in plain torch (Debian has no `transformers`).

  model_ref.py fixtures OUTDIR   tiny random models in the real checkpoint
                                 formats + inputs + expected embeddings
                                 (the heads ones included)
  model_ref.py heads OUTDIR      only OUTDIR/heads/: head counts other than
                                 width / 64, recorded in the checkpoint
  model_ref.py bench OUTDIR      full-size ViT-B/16 + BERT-base random
                                 checkpoint (bench only, never committed)
"""
import json
import math
import os
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---- OpenAI CLIP (as in openai/CLIP model.py) ----

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, mlp):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(mlp, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask=None):  # x: [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


def run_block(owner, block, *args):
    """block(*args); with owner.grad_checkpointing (set_grad_checkpointing) under
    autograd, through torch.utils.checkpoint: only the block's input is kept and
    the backward recomputes it, in the forward's autocast state."""
    if not (getattr(owner, "grad_checkpointing", False) and torch.is_grad_enabled()):
        return block(*args)
    amp = torch.is_autocast_cpu_enabled()

    def recomputable(*a):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return block(*a)
    return torch.utils.checkpoint.checkpoint(recomputable, *args)


def set_grad_checkpointing(model, on=True):
    """Every block of the model's towers checkpointed (clip-train --grad-checkpointing)."""
    for m in model.modules():
        if isinstance(m, (Transformer, BertModel)):
            m.grad_checkpointing = on


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp) for _ in range(layers)])

    def forward(self, x, mask=None):
        for b in self.resblocks:
            x = run_block(self, b, x, mask)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch, width, layers, heads, mlp, out_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class TextTransformer(nn.Module):
    """OpenAI's text tower; its keys sit at the top level of the CLIP model."""

    def __init__(self, vocab, context, width, layers, heads, mlp, out_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context, width))
        self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, out_dim))
        self.transformer = Transformer(width, layers, heads, mlp)
        self.token_embedding = nn.Embedding(vocab, width)
        self.ln_final = nn.LayerNorm(width)

    def forward(self, ids):
        L = ids.shape[1]
        mask = torch.full((L, L), float("-inf")).triu_(1)
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection


# ---- Hugging Face BertModel (modeling_bert.py, eval mode) ----

class BertEmbeddings(nn.Module):
    """position_ids: whether the position_ids buffer is in the state dict, as
    transformers kept it before 4.31 (persistent); later versions register it
    with persistent=False, and a strict load_state_dict refuses the key."""

    def __init__(self, c, position_ids=True):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=0)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(c["max_position_embeddings"]).expand((1, -1)),
                             persistent=position_ids)

    def forward(self, ids):
        L = ids.shape[1]
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        x = x + self.position_embeddings(self.position_ids[:, :L])
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        H = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)

    def forward(self, x, ext_mask):
        B, L, H = x.shape
        split = lambda t: t.view(B, L, self.heads, H // self.heads).permute(0, 2, 1, 3)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        s = q @ k.transpose(-1, -2) / math.sqrt(H // self.heads) + ext_mask
        return (s.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, L, H)


class BertSelfOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, h, inp):
        return self.LayerNorm(self.dense(h) + inp)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertSelfOutput(c)

    def forward(self, x, ext_mask):
        return self.output(self.self(x, ext_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["intermediate_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, h, inp):
        return self.LayerNorm(self.dense(h) + inp)


class BertLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c)

    def forward(self, x, ext_mask):
        a = self.attention(x, ext_mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(c) for _ in range(c["num_hidden_layers"])])


class BertPooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    def __init__(self, c, position_ids=True):
        super().__init__()
        self.embeddings = BertEmbeddings(c, position_ids)
        self.encoder = BertEncoder(c)
        self.pooler = BertPooler(c)

    def forward(self, ids, mask):  # returns pooler_output
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = run_block(self, layer, x, ext)
        return self.pooler(x)


# ---- the joint models ----

class ChineseCLIP(nn.Module):
    """ViT image tower + BERT under `transformer.` + ln_final + text_projection.
    position_ids: see BertEmbeddings (the default, True, is the older
    transformers that wrote bert-from-clip-chinese-1M)."""

    def __init__(self, vit, bert_cfg, out_dim, position_ids=True):
        super().__init__()
        self.visual = VisionTransformer(**vit)
        self.transformer = BertModel(bert_cfg, position_ids)
        H = bert_cfg["hidden_size"]
        self.ln_final = nn.LayerNorm(H)
        self.text_projection = nn.Parameter(H ** -0.5 * torch.randn(H, out_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids):
        return self.ln_final(self.transformer(ids, ids != 0)) @ self.text_projection


class OpenAICLIP(TextTransformer):
    def __init__(self, vit, text):
        super().__init__(**text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.visual = VisionTransformer(**vit)

    def encode_text(self, ids):
        return TextTransformer.forward(self, ids)


def encode_image(model, pixels):
    x = torch.from_numpy(pixels).float().div(255).permute(0, 3, 1, 2)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return model.visual((x - mean) / std)


def randomise(model, gen):
    """Non-trivial LayerNorm and bias parameters (PyTorch inits them to 1/0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight") or name.endswith(("ln_1.weight", "ln_2.weight",
                                                                   "ln_pre.weight", "ln_post.weight",
                                                                   "ln_final.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def normalize(x):
    return (x / x.norm(dim=-1, keepdim=True)).numpy().astype(np.float32)


# ---- writing ----

def bert_config(hidden, layers, heads, inter, vocab, max_pos):
    return {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": inter,
            "vocab_size": vocab, "max_position_embeddings": max_pos, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "model_type": "bert", "pad_token_id": 0}


def seeded_normal(n, std, seed=42):
    """lib/model/clip_model.c's fill_normal: splitmix64 + Box-Muller."""
    M = (1 << 64) - 1
    s, out = seed, np.empty(n, np.float32)

    def nxt():
        nonlocal s
        s = (s + 0x9E3779B97F4A7C15) & M
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)
    for i in range(0, n, 2):
        u1 = ((nxt() >> 11) + 1.0) * 2.0 ** -53
        u2 = (nxt() >> 11) * 2.0 ** -53
        r = math.sqrt(-2.0 * math.log(u1))
        out[i] = std * r * math.cos(2 * math.pi * u2)
        if i + 1 < n:
            out[i + 1] = std * r * math.sin(2 * math.pi * u2)
    return out


def fixtures(out):
    os.makedirs(os.path.join(out, "bert"), exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    rs = np.random.RandomState(0)
    vit = dict(resolution=32, patch=8, width=64, layers=2, heads=1, mlp=128, out_dim=32)

    pixels = rs.randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    ids_bert = np.zeros((3, 12), np.int32)
    for row, n in enumerate((12, 7, 3)):  # [CLS] ... [SEP] [PAD]...
        ids_bert[row, :n] = [101] + list(rs.randint(1, 256, n - 2)) + [102]
    ids_clip = np.zeros((3, 16), np.int32)
    for row, n in enumerate((16, 9, 2)):  # SOT ... EOT 0...
        ids_clip[row, :n] = [510] + list(rs.randint(1, 510, n - 2)) + [511]
    np.save(os.path.join(out, "pixels.npy"), pixels)
    np.save(os.path.join(out, "ids_bert.npy"), ids_bert)
    np.save(os.path.join(out, "ids_clip.npy"), ids_clip)

    # 1. the joint Chinese model as training writes it: float32, BERT under transformer.
    cfg = bert_config(64, 2, 1, 128, 256, 32)
    joint = ChineseCLIP(vit, cfg, 32).eval()
    randomise(joint, gen)
    with torch.no_grad():
        joint.logit_scale.fill_(3.0)
        sd = OrderedDict((k, v) for k, v in joint.state_dict().items())
        torch.save(sd, os.path.join(out, "joint.pth"))
        ib = torch.from_numpy(ids_bert).long()
        np.save(os.path.join(out, "joint_img.npy"), normalize(encode_image(joint, pixels)))
        np.save(os.path.join(out, "joint_txt.npy"), normalize(joint.encode_text(ib)))

    # 2. an OpenAI-style English checkpoint, float16 like the released ones
    text = dict(vocab=512, context=77, width=64, layers=2, heads=1, mlp=256, out_dim=32)
    oa = OpenAICLIP(vit, text).eval()
    randomise(oa, gen)
    with torch.no_grad():
        oa.logit_scale.fill_(math.log(100))
        oa.half().float()  # compute with the weights the fp16 file holds
        torch.save(OrderedDict((k, v.half()) for k, v in oa.state_dict().items()),
                   os.path.join(out, "openai.pth"))
        ic = torch.from_numpy(ids_clip).long()
        np.save(os.path.join(out, "openai_img.npy"), normalize(encode_image(oa, pixels)))
        np.save(os.path.join(out, "openai_txt.npy"), normalize(oa.encode_text(ic)))

    # 3. a Hugging Face BERT directory (bert. prefix, position_ids buffer,
    #    TensorFlow-era gamma/beta names, 4 heads from config.json) loaded
    #    beside openai.pth: its head is ones/zeros + the seeded projection
    bcfg = bert_config(64, 2, 4, 128, 256, 32)
    bert = BertModel(bcfg).eval()
    randomise(bert, gen)
    with open(os.path.join(out, "bert", "config.json"), "w") as f:
        json.dump(bcfg, f, indent=2)

    def hf_name(k):
        k = "bert." + k
        return k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    torch.save(OrderedDict((hf_name(k), v) for k, v in bert.state_dict().items()),
               os.path.join(out, "bert", "pytorch_model.bin"))
    with torch.no_grad():
        proj = torch.from_numpy(seeded_normal(64 * 32, np.float32(1 / np.sqrt(np.float32(64))))).view(64, 32)
        pooled = bert(ib, ib != 0)
        feat = F.layer_norm(pooled, (64,)) @ proj
        np.save(os.path.join(out, "bertdir_txt.npy"), normalize(feat))
    for name in sorted(os.listdir(out)) + ["bert/" + n for n in sorted(os.listdir(os.path.join(out, "bert")))]:
        p = os.path.join(out, name)
        if os.path.isfile(p):
            print(f"{p}: {os.path.getsize(p)} bytes")
    heads_fixtures(out)


def save_safetensors(path, state, metadata):
    """A safetensors file (F16 here, the dtype of the released OpenAI
    checkpoints) with a __metadata__ record, written by hand: Debian has no
    `safetensors`."""
    header, blobs, off = {}, [], 0
    for name, t in state.items():
        b = t.detach().contiguous().half().numpy().astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def heads_fixtures(out):
    """An OpenAI-style English model whose head counts are not width / 64:
    a ViT of width 64 with 8 heads of 8 and a text transformer of width 64
    with 4 heads of 16, as the clip_config record of its safetensors file
    says ("image" and "clip_text"); the expected embeddings of pixels.npy and
    ids_clip.npy (written by `fixtures` beside OUTDIR/heads)."""
    d = os.path.join(out, "heads")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(3)
    vit = dict(resolution=32, patch=8, width=64, layers=2, heads=8, mlp=128, out_dim=32)
    text = dict(vocab=512, context=77, width=64, layers=2, heads=4, mlp=256, out_dim=32)
    model = OpenAICLIP(vit, text).eval()
    randomise(model, gen)
    pixels = np.load(os.path.join(out, "pixels.npy"))
    ids = torch.from_numpy(np.load(os.path.join(out, "ids_clip.npy"))).long()
    with torch.no_grad():
        model.half().float()  # compute with the weights the F16 file holds
        record = {"image": {"heads": 8}, "clip_text": {"heads": 4}}
        save_safetensors(os.path.join(d, "model.safetensors"), model.state_dict(),
                         {"format": "pt", "clip_config": json.dumps(record)})
        np.save(os.path.join(d, "img.npy"), normalize(encode_image(model, pixels)))
        np.save(os.path.join(d, "txt.npy"), normalize(model.encode_text(ids)))
    for name in sorted(os.listdir(d)):
        print(f"{os.path.join(d, name)}: {os.path.getsize(os.path.join(d, name))} bytes")


def bench(out):
    """ViT-B/16 + BERT-base (the Chinese joint model) with random weights."""
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    vit = dict(resolution=224, patch=16, width=768, layers=12, heads=12, mlp=3072, out_dim=512)
    model = ChineseCLIP(vit, bert_config(768, 12, 12, 3072, 21128, 512), 512).eval()
    randomise(model, torch.Generator().manual_seed(1))
    torch.save(model.state_dict(), os.path.join(out, "vit-b-16-bert-base.pth"))
    print(os.path.join(out, "vit-b-16-bert-base.pth"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("fixtures", "heads", "bench"):
        sys.exit(__doc__)
    torch.set_grad_enabled(False)
    {"fixtures": fixtures, "heads": heads_fixtures, "bench": bench}[sys.argv[1]](sys.argv[2])
