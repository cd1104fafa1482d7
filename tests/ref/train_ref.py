#!/usr/bin/python3
"""PyTorch reference for clip-train: the training recipe in plain torch.

  train_ref.py fixtures OUTDIR
      tiny seeded model + train/val tars + per-step losses, lrs, logit
      scales and gradient norms of two short runs, the step-1 gradients and
      the final weights (step-for-step parity fixtures for the C trainer)
  train_ref.py english OUTDIR
      the same for the English model (OpenAI CLIP: ViT + the causal text
      transformer, EOT pooling), one run: init.safetensors (float16, with the
      head counts in its clip_config record), train.tar (SOT ... EOT token
      rows), expected.json, grads_step1.pth, final.pth
  train_ref.py dist OUTFILE
      the global-batch loss of data-parallel training (open_clip's --local-loss
      --gather-with-grad) over the fixtures: every emulated rank's rows against
      all the gathered columns; checks that the ranks' parts sum to the loss
      and its gradients of one process on the whole batch, and writes the
      per-step losses of run DIST_RUN (tests/fixtures/train/expected_dist.json)
  train_ref.py mask OUTDIR
      the fixtures' 'cosine'-like run with patch dropout (--mask-ratio 0.5):
      each image keeps the patches of clip-train's seeded generator
      (kept_patches, reimplemented here from lib/train/patch_mask.h), open_clip's
      PatchDropout applied to them; expected.json (per-step losses etc. and the
      kept indices), grads_step1.pth
  train_ref.py lock OUTFILE
      5 AdamW steps of the tiny Chinese model with locked towers (open_clip's
      VisionTransformer.lock groups for --lock-image [--lock-image-unlocked-
      groups N]; --lock-text: every text parameter, head included): per run
      the trainable tensors' names, losses, lrs, logit scales and gradient
      norms (tests/fixtures/train/expected_lock.json). The step-1 gradients of
      the trainable tensors are those of grads_step1.pth (checked here).
  train_ref.py bench --arch base|small --batch N --steps K [--amp] [--threads T]
                     [--grad-checkpointing] [--mask-ratio X] [--lock | --cached]
      K timed training steps (after one warm-up) of a random-weight model
      (every block through torch.utils.checkpoint with --grad-checkpointing;
      with X: open_clip's patch dropout, noise top-k; --lock: the visual tower
      frozen, its forward under no_grad; --cached: precomputed image features,
      the text tower only); prints one JSON line

The recipe (clip-train implements exactly this):
  batch     B consecutive samples in file order (no shuffle), last incomplete
            batch of an epoch dropped; caption = first row of tok.npy; pixels
            as stored (already at the model resolution), /255, CLIP mean/std
  loss      logits = exp(logit_scale) * img_n @ txt_n.T;
            CE(logits, arange B) + CE(logits.T, arange B)  (a sum, not a mean)
  optimiser AdamW betas (0.9, 0.999), eps 1e-8; weight decay wd on parameters
            with ndim >= 2, 0 on the rest; optional clip_grad_norm_ after
            backward (the pre-clip norm is reported)
  lr        for step s: s < W: base*(s+1)/W; else cosine from base to
            0.01*base over S-W steps (`constant`: base)
  after     logit_scale clamped to [0, ln 100]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_env  # noqa: E402

reference_env.ensure()  # PyTorch at its best: before torch loads its BLAS

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model_ref import (CLIP_MEAN, CLIP_STD, ChineseCLIP, OpenAICLIP, bert_config,  # noqa: E402
                       encode_image, randomise, save_safetensors, set_grad_checkpointing)
import recall_ref  # noqa: E402

LOGIT_SCALE_MAX = math.log(100)


# ---- the recipe ----

def lr_at(s, base, warmup, total, schedule):
    if s < warmup:
        return base * (s + 1) / warmup
    if schedule == "constant":
        return base
    min_lr = 0.01 * base
    p = (s - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * p))


def make_optimizer(model, lr, wd, eps=1e-8):
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=eps)


def clip_loss(img, txt, logit_scale):
    img_n = img / img.norm(dim=-1, keepdim=True)
    txt_n = txt / txt.norm(dim=-1, keepdim=True)
    logits = logit_scale.exp() * img_n @ txt_n.t()
    labels = torch.arange(logits.shape[0])
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def local_loss(img, txt, logit_scale, rank, ranks):
    """Rank `rank`'s part of the loss of a global batch split over `ranks`
    (open_clip's --local-loss --gather-with-grad): its own images against all
    the gathered texts and its own texts against all the images, each
    cross-entropy summed over its rows and divided by the global batch. Every
    feature keeps its graph, as torch.distributed.nn.all_gather gives them, so
    the gradients of the columns reach the ranks that produced them. (open_clip
    halves the sum and DDP averages over ranks: the same gradient up to that
    factor 2; clip-train's loss is the sum of the two means.)"""
    G = img.shape[0]
    b = G // ranks
    img_n = img / img.norm(dim=-1, keepdim=True)
    txt_n = txt / txt.norm(dim=-1, keepdim=True)
    own = slice(rank * b, (rank + 1) * b)
    labels = torch.arange(rank * b, (rank + 1) * b)
    s = logit_scale.exp()
    return (F.cross_entropy(s * img_n[own] @ txt_n.t(), labels, reduction="sum") +
            F.cross_entropy(s * txt_n[own] @ img_n.t(), labels, reduction="sum")) / G


def grad_norm(model):
    """The total L2 norm as clip_grad_norm_ computes it (over the parameters with a gradient)."""
    return torch.norm(torch.stack([torch.norm(p.grad.detach(), 2) for p in model.parameters()
                                   if p.grad is not None]), 2)


def train_step(model, opt, pixels, ids, lr, grad_clip=0.0, amp=False, on_grads=None, kept=None):
    """One optimizer step on pixels uint8 [B,R,R,3] (numpy), ids int [B,L]
    (torch); kept: patch dropout's kept patches, long [B, keep] (None: all).
    Returns (loss, pre-clip grad norm) as floats."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        img = encode_image(model, pixels) if kept is None else encode_image_masked(model, pixels, kept)
        txt = model.encode_text(ids)
        loss = clip_loss(img, txt, model.logit_scale)
    loss.backward()
    if on_grads:
        on_grads(model)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = grad_norm(model)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    return loss.item(), norm.item()


# ---- patch dropout ----

M64 = (1 << 64) - 1
GOLDEN = 0x9e3779b97f4a7c15
PATCH_MASK_SALT = 0x70617463686d736b  # lib/train/patch_mask.h


def splitmix64(state):
    """(new state, output), as lib/core/util.c"""
    state = (state + GOLDEN) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return state, z ^ (z >> 31)


def mix(a, b):
    return splitmix64(((a * GOLDEN) & M64) ^ b)[1]


def mask_keep(patches, ratio):
    """open_clip's num_patches_keep"""
    return max(1, int(patches * (1 - ratio)))


def kept_patches(seed, step, position, patches, keep):
    """clip-train's kept patches of the image at `position` of the global
    batch in optimizer step `step` (0-based): the keep largest of per-patch
    noise (open_clip's topk; ties to the lower index), in increasing order"""
    state = mix(mix(seed ^ PATCH_MASK_SALT, step), position)
    noise = []
    for _ in range(patches):
        state, z = splitmix64(state)
        noise.append(z)
    best = sorted(range(patches), key=lambda p: (-noise[p], p))[:keep]
    return sorted(best)


def encode_image_masked(model, pixels, kept):
    """model.visual's forward with open_clip's PatchDropout: after the
    positional embeddings, before ln_pre, image b keeps the class token and
    its patches kept[b] (long [B, keep], in that order)"""
    v = model.visual
    x = torch.from_numpy(pixels).float().div(255).permute(0, 3, 1, 2)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = v.conv1((x - mean) / std)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding
    rows = torch.arange(x.shape[0]).unsqueeze(-1)
    x = torch.cat([x[:, :1], x[:, 1:][rows, kept]], dim=1)
    x = v.ln_pre(x).permute(1, 0, 2)
    x = v.transformer(x).permute(1, 0, 2)
    return v.ln_post(x[:, 0, :]) @ v.proj


def batches(samples, B, steps):
    """No-shuffle order: consecutive samples, incomplete tail dropped, epochs
    restart at sample 0. Yields (pixels uint8 [B,R,R,3], ids long [B,L])."""
    per_epoch = len(samples) // B
    for s in range(steps):
        chunk = samples[(s % per_epoch) * B:(s % per_epoch + 1) * B]
        pixels = np.stack([x["img"] for x in chunk])
        ids = torch.from_numpy(np.stack([x["tok"][0] for x in chunk]).astype(np.int64))
        yield pixels, ids


# ---- sample streams ----

def read_tar(path):
    """[{"key", "json", "img", "tok"}] in stream order."""
    out, index = [], {}
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, field = m.name.split(".", 1)
            if key not in index:
                index[key] = len(out)
                out.append({"key": key})
            data = tf.extractfile(m).read()
            s = out[index[key]]
            if field == "json":
                s["json"] = json.loads(data)
            elif field == "img.npy":
                s["img"] = np.load(io.BytesIO(data))
            elif field == "tok.npy":
                s["tok"] = np.load(io.BytesIO(data))
    return out


def write_tar(path, samples):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for s in samples:
            fields = [("json", json.dumps(s["json"], ensure_ascii=False).encode("utf-8"))]
            for field, a in (("img.npy", s["img"]), ("tok.npy", s["tok"])):
                b = io.BytesIO()
                np.save(b, a)
                fields.append((field, b.getvalue()))
            for field, data in fields:
                ti = tarfile.TarInfo(f"{s['key']}.{field}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tf.addfile(ti, io.BytesIO(data))


CAPTIONS = ["一只狗在草地上奔跑。", "两个孩子在海边玩耍。", "一个穿红衣服的女人站在街上。",
            "一群人在公园里散步。", "一只猫躺在沙发上。", "一个男人骑着自行车过桥。"]


def make_samples(rs, n, R=32, L=12):
    """n samples with blob images and [CLS] ids [SEP] [PAD].. token rows of
    lengths 3..12; in every group of 4, one sample's first row is full."""
    yy, xx = np.mgrid[0:R, 0:R].astype(np.float64)
    ids_pool = np.array([i for i in range(1, 256) if i not in (101, 102)])
    out = []
    for i in range(n):
        img = np.broadcast_to(rs.uniform(0, 255, 3), (R, R, 3)).copy()
        for _ in range(3):
            cy, cx = rs.uniform(0, R, 2)
            r = rs.uniform(3, 10)
            w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + w * rs.uniform(0, 255, 3)
        img = np.clip(np.rint(img + rs.normal(0, 4, img.shape)), 0, 255).astype(np.uint8)
        lens = rs.randint(3, L + 1, 2)
        tok = np.zeros((2, L), np.int32)
        for row, m in enumerate(lens):
            tok[row, :m] = [101] + list(rs.choice(ids_pool, m - 2)) + [102]
        caps = [CAPTIONS[rs.randint(len(CAPTIONS))] for _ in range(2)]
        out.append({"key": f"s{i:02d}", "json": {"image": f"s{i:02d}.jpg", "captions": caps},
                    "img": img, "tok": tok})
    for g in range(0, n, 4):  # force one full-length first caption per batch of 4
        s = out[g + rs.randint(min(4, n - g))]
        s["tok"][0] = [101] + list(rs.choice(ids_pool, L - 2)) + [102]
    return out


# ---- fixtures ----

def tiny_model():
    torch.manual_seed(0)
    vit = dict(resolution=32, patch=8, width=128, layers=2, heads=2, mlp=256, out_dim=32)
    cfg = bert_config(64, 2, 2, 128, 256, 32)
    model = ChineseCLIP(vit, cfg, 32).train()
    randomise(model, torch.Generator().manual_seed(1))
    return model, cfg


def val_recall(model, samples):
    with torch.no_grad():
        img = encode_image(model, np.stack([s["img"] for s in samples]))
        ids = torch.from_numpy(np.concatenate([s["tok"] for s in samples]).astype(np.int64))
        txt = model.encode_text(ids)
    img, txt = img.double().numpy(), txt.double().numpy()
    rows = [(s["key"], img[i], txt[2 * i:2 * i + 2]) for i, s in enumerate(samples)]
    img_rank, txt_rank, S, own = recall_ref.ranks(rows)
    margin = recall_ref.min_margin(S, own, img_rank, txt_rank)
    return recall_ref.metrics(img_rank, txt_rank), margin


RUNS = OrderedDict([
    ("cosine", dict(lr=1e-3, wd=0.01, warmup=2, steps=6, schedule="cosine", grad_clip=0)),
    ("clip", dict(lr=2e-3, wd=0.1, warmup=0, steps=4, schedule="constant", grad_clip=0.5)),
])
B_FIXTURE = 4


def fixtures(out):
    torch.set_num_threads(1)
    os.makedirs(os.path.join(out, "bert"), exist_ok=True)
    model, cfg = tiny_model()
    init = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    torch.save(init, os.path.join(out, "init.pth"))
    with open(os.path.join(out, "bert", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    rs = np.random.RandomState(2024)
    write_tar(os.path.join(out, "train.tar"), make_samples(rs, 12))
    write_tar(os.path.join(out, "val.tar"), make_samples(rs, 8))
    train = read_tar(os.path.join(out, "train.tar"))
    val = read_tar(os.path.join(out, "val.tar"))

    expected = OrderedDict(batch=B_FIXTURE, runs=OrderedDict())
    for name, r in RUNS.items():
        model.load_state_dict(init)
        opt = make_optimizer(model, r["lr"], r["wd"])
        rec = OrderedDict(r, loss=[], lr_used=[], logit_scale=[], grad_norm=[])
        for s, (pixels, ids) in enumerate(batches(train, B_FIXTURE, r["steps"])):
            lr = lr_at(s, r["lr"], r["warmup"], r["steps"], r["schedule"])
            hook = None
            if name == "cosine" and s == 0:
                def hook(m):
                    torch.save(OrderedDict((k, p.grad.detach().clone()) for k, p in m.named_parameters()),
                               os.path.join(out, "grads_step1.pth"))
            loss, norm = train_step(model, opt, pixels, ids, lr, r["grad_clip"], on_grads=hook)
            rec["loss"].append(loss)
            rec["lr_used"].append(lr)
            rec["logit_scale"].append(model.logit_scale.item())
            rec["grad_norm"].append(norm)
            print(f"{name} step {s}: loss {loss:.6f} lr {lr:.3e} grad_norm {norm:.6f} "
                  f"logit_scale {model.logit_scale.item():.6f}", file=sys.stderr)
        expected["runs"][name] = rec
        if name == "cosine":
            torch.save(OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()),
                       os.path.join(out, "final.pth"))
            final_recall, final_margin = val_recall(model, val)

    model.load_state_dict(init)
    expected["val_recall_init"], margin = val_recall(model, val)
    expected["val_recall_final"] = final_recall
    print(f"val recall score margins: init {margin:.2e}, final {final_margin:.2e}", file=sys.stderr)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

    total = 0
    for root, _, files in sorted(os.walk(out)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"{p}: {os.path.getsize(p)} bytes")
    print(f"total: {total} bytes")


# ---- fixtures of the English model ----

EN_VIT = dict(resolution=32, patch=8, width=64, layers=2, heads=2, mlp=256, out_dim=32)
EN_TEXT = dict(vocab=512, context=16, width=64, layers=2, heads=2, mlp=256, out_dim=32)
EN_RUN = dict(lr=1e-3, wd=0.1, warmup=2, steps=5, schedule="cosine", grad_clip=0)
EN_CAPTIONS = ["a dog runs on the grass.", "two children play by the sea.",
               "a woman in red stands in the street.", "people walk in the park.",
               "a cat lies on the sofa.", "a man rides a bicycle over a bridge."]


def english_samples(rs, n, R=32, L=12):
    """make_samples' images with English captions and OpenAI-style token rows:
    SOT (vocab - 2) ids EOT (vocab - 1, the largest: the pooled position)
    then 0-padding; ids drawn from 0..vocab-3, 0 included (BPE's "!")."""
    sot, eot = EN_TEXT["vocab"] - 2, EN_TEXT["vocab"] - 1
    out = make_samples(rs, n, R, L)
    for s in out:
        s["json"]["captions"] = [EN_CAPTIONS[rs.randint(len(EN_CAPTIONS))] for _ in range(2)]
        for row in range(s["tok"].shape[0]):
            m = int(np.count_nonzero(s["tok"][row]))  # make_samples' length, kept
            s["tok"][row] = 0
            s["tok"][row, :m] = [sot] + list(rs.randint(0, sot, m - 2)) + [eot]
    return out


def english(out):
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(20)
    model = OpenAICLIP(EN_VIT, EN_TEXT).train()
    randomise(model, torch.Generator().manual_seed(21))
    with torch.no_grad():
        model.half().float()  # the init is the float16 file's values exactly
    init = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    record = {"image": {"heads": EN_VIT["heads"]}, "clip_text": {"heads": EN_TEXT["heads"]}}
    save_safetensors(os.path.join(out, "init.safetensors"), init,
                     {"format": "pt", "clip_config": json.dumps(record)})
    write_tar(os.path.join(out, "train.tar"), english_samples(np.random.RandomState(2025), 12))
    train = read_tar(os.path.join(out, "train.tar"))

    r = EN_RUN
    opt = make_optimizer(model, r["lr"], r["wd"])
    rec = OrderedDict(r, loss=[], lr_used=[], logit_scale=[], grad_norm=[])
    for s, (pixels, ids) in enumerate(batches(train, B_FIXTURE, r["steps"])):
        lr = lr_at(s, r["lr"], r["warmup"], r["steps"], r["schedule"])
        hook = None
        if s == 0:
            def hook(m):
                torch.save(OrderedDict((k, p.grad.detach().clone()) for k, p in m.named_parameters()),
                           os.path.join(out, "grads_step1.pth"))
        loss, norm = train_step(model, opt, pixels, ids, lr, r["grad_clip"], on_grads=hook)
        for k, v in (("loss", loss), ("lr_used", lr), ("logit_scale", model.logit_scale.item()),
                     ("grad_norm", norm)):
            rec[k].append(v)
        print(f"english step {s}: loss {loss:.6f} lr {lr:.3e} grad_norm {norm:.6f}", file=sys.stderr)
    torch.save(OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items()),
               os.path.join(out, "final.pth"))
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(OrderedDict(batch=B_FIXTURE, runs=OrderedDict(english=rec)), f, indent=1)
        f.write("\n")
    total = 0
    for fn in sorted(os.listdir(out)):
        total += os.path.getsize(os.path.join(out, fn))
        print(f"{os.path.join(out, fn)}: {os.path.getsize(os.path.join(out, fn))} bytes")
    print(f"total: {total} bytes")

# ---- the global-batch loss of data-parallel training ----

# 2 ranks x 4 = 1 process x 8 = --accum-freq 2 x 4; eps 1 keeps AdamW's update
# near-linear in the gradient (see tests/bats/dist.bats for why)
DIST_RUN = OrderedDict(batch=8, ranks=2, steps=5, lr=1e-3, wd=0.01, warmup=2, schedule="cosine",
                       eps=1.0)


def dist(outfile):
    torch.set_num_threads(1)
    fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train")
    model, _ = tiny_model()
    model.load_state_dict(torch.load(os.path.join(fix, "init.pth")))
    train = read_tar(os.path.join(fix, "train.tar"))
    r = DIST_RUN
    opt = make_optimizer(model, r["lr"], r["wd"], r["eps"])
    rec = OrderedDict(r, loss=[], grad_norm=[], parts_vs_whole=[])
    for s, (pixels, ids) in enumerate(batches(train, r["batch"], r["steps"])):
        # the parts of the emulated ranks against the loss of one process, in float64
        model64 = ChineseCLIP(*tiny_model_config()).double()
        model64.load_state_dict(model.state_dict())
        img = model64.visual(encode_image(ImageInput(), pixels).double())
        txt = model64.encode_text(ids)
        whole = clip_loss(img, txt, model64.logit_scale)
        g_whole = torch.autograd.grad(whole, list(model64.parameters()), retain_graph=True)
        parts = [local_loss(img, txt, model64.logit_scale, k, r["ranks"]) for k in range(r["ranks"])]
        g_parts = torch.autograd.grad(sum(parts), list(model64.parameters()))
        scale = max(float(a.abs().max()) for a in g_whole)
        gdiff = max(float((a - b).abs().max()) for a, b in zip(g_whole, g_parts)) / scale
        ldiff = abs(float(sum(parts)) - float(whole))
        assert ldiff < 1e-12 and gdiff < 1e-10, (s, ldiff, gdiff)
        rec["parts_vs_whole"].append([ldiff, gdiff])
        lr = lr_at(s, r["lr"], r["warmup"], r["steps"], r["schedule"])
        loss, norm = train_step(model, opt, pixels, ids, lr)
        rec["loss"].append(loss)
        rec["grad_norm"].append(norm)
        print(f"dist step {s}: loss {loss:.6f} grad_norm {norm:.4f}; ranks' parts vs whole: "
              f"loss {ldiff:.1e}, gradients {gdiff:.1e} of the largest", file=sys.stderr)
    with open(outfile, "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")


# ---- patch dropout ----

# the fixtures' model and data (tests/fixtures/train), first captions, no
# shuffle; --seed 7 --mask-ratio 0.5: 8 of the 16 patches of each image
MASK_RUN = OrderedDict(batch=B_FIXTURE, ratio=0.5, seed=7, lr=1e-3, wd=0.01, warmup=2, steps=5,
                       schedule="cosine", grad_clip=0)


def mask(out):
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train")
    model, _ = tiny_model()
    model.load_state_dict(torch.load(os.path.join(fix, "init.pth")))
    train = read_tar(os.path.join(fix, "train.tar"))
    r = MASK_RUN
    P = model.visual.conv1.weight.shape[-1]
    patches = (train[0]["img"].shape[0] // P) ** 2
    keep = mask_keep(patches, r["ratio"])
    opt = make_optimizer(model, r["lr"], r["wd"])
    rec = OrderedDict(r, keep=keep, loss=[], lr_used=[], logit_scale=[], grad_norm=[], kept=[])
    for s, (pixels, ids) in enumerate(batches(train, r["batch"], r["steps"])):
        kept = [kept_patches(r["seed"], s, i, patches, keep) for i in range(len(pixels))]
        lr = lr_at(s, r["lr"], r["warmup"], r["steps"], r["schedule"])
        hook = None
        if s == 0:
            def hook(m):
                torch.save(OrderedDict((k, p.grad.detach().clone()) for k, p in m.named_parameters()),
                           os.path.join(out, "grads_step1.pth"))
        loss, norm = train_step(model, opt, pixels, ids, lr, r["grad_clip"], on_grads=hook,
                                kept=torch.tensor(kept))
        for k, v in (("loss", loss), ("lr_used", lr), ("logit_scale", model.logit_scale.item()),
                     ("grad_norm", norm), ("kept", kept)):
            rec[k].append(v)
        print(f"mask step {s}: loss {loss:.6f} lr {lr:.3e} grad_norm {norm:.6f}; image 0 keeps "
              f"{kept[0]}", file=sys.stderr)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(OrderedDict(batch=r["batch"], runs=OrderedDict(mask=rec)), f)
        f.write("\n")
    for fn in sorted(os.listdir(out)):
        print(f"{os.path.join(out, fn)}: {os.path.getsize(os.path.join(out, fn))} bytes")


class ImageInput:
    """encode_image's normalised pixels themselves (its model.visual the identity)"""
    def visual(self, x):
        return x


def tiny_model_config():
    vit = dict(resolution=32, patch=8, width=128, layers=2, heads=2, mlp=256, out_dim=32)
    return vit, bert_config(64, 2, 2, 128, 256, 32), 32


# ---- locked towers ----

def lock_image(visual, unlocked_groups=0):
    """open_clip's VisionTransformer.lock: every parameter frozen, then the
    last `unlocked_groups` of the groups below trainable again."""
    for p in visual.parameters():
        p.requires_grad = False
    if unlocked_groups == 0:
        return
    groups = [[visual.conv1, visual.class_embedding, visual.positional_embedding, visual.ln_pre],
              *visual.transformer.resblocks[:-1],
              [visual.transformer.resblocks[-1], visual.ln_post],
              visual.proj]

    def unlock(x):
        if isinstance(x, (list, tuple)):
            for g in x:
                unlock(g)
        elif isinstance(x, torch.nn.Parameter):
            x.requires_grad = True
        else:
            for p in x.parameters():
                p.requires_grad = True
    unlock(groups[-unlocked_groups:])


def lock_text(model):
    """clip-train's --lock-text: the whole text tower, its head (ln_final,
    text_projection) included, so that its features are fixed."""
    for m in (model.transformer, model.ln_final):
        for p in m.parameters():
            p.requires_grad = False
    model.text_projection.requires_grad = False


LOCK_RUNS = OrderedDict([
    ("image", dict(lock_image=True, unlocked_groups=0)),
    ("image2", dict(lock_image=True, unlocked_groups=2)),
    ("text", dict(lock_text=True)),
])
LOCK_RUN = dict(lr=1e-3, wd=0.01, warmup=2, steps=5, schedule="cosine")


def lock(outfile):
    torch.set_num_threads(1)
    fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "train")
    init = torch.load(os.path.join(fix, "init.pth"))
    full_grads = torch.load(os.path.join(fix, "grads_step1.pth"))
    train = read_tar(os.path.join(fix, "train.tar"))
    out = OrderedDict(batch=B_FIXTURE, runs=OrderedDict())
    r = LOCK_RUN
    for name, spec in LOCK_RUNS.items():
        model, _ = tiny_model()
        model.load_state_dict(init)
        if spec.get("lock_image"):
            lock_image(model.visual, spec["unlocked_groups"])
        if spec.get("lock_text"):
            lock_text(model)
        trainable = [k for k, p in model.named_parameters() if p.requires_grad]
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["wd"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=r["lr"], betas=(0.9, 0.999), eps=1e-8)
        rec = OrderedDict(spec, **r, trainable=trainable, loss=[], lr_used=[], logit_scale=[],
                          grad_norm=[])
        for s, (pixels, ids) in enumerate(batches(train, B_FIXTURE, r["steps"])):
            lr = lr_at(s, r["lr"], r["warmup"], r["steps"], r["schedule"])
            hook = None
            if s == 0:
                def hook(m):
                    # a locked tower changes no trainable tensor's gradient: the full run's
                    for k, p in m.named_parameters():
                        assert (p.grad is not None) == p.requires_grad, k
                        if p.grad is not None:
                            d = float((p.grad - full_grads[k]).abs().max())
                            assert d <= 1e-6 * max(1.0, float(full_grads[k].abs().max())), (k, d)
            loss, norm = train_step(model, opt, pixels, ids, lr, on_grads=hook)
            for k, v in (("loss", loss), ("lr_used", lr), ("logit_scale", model.logit_scale.item()),
                         ("grad_norm", norm)):
                rec[k].append(v)
            print(f"lock {name} step {s}: loss {loss:.6f} grad_norm {norm:.6f}", file=sys.stderr)
        for k, v in model.state_dict().items():  # the locked tensors did not move
            if k in dict(model.named_parameters()) and k not in trainable:
                assert torch.equal(v, init[k]), k
        out["runs"][name] = rec
    with open(outfile, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


# ---- bench ----

ARCHS = {
    "base": (dict(resolution=224, patch=16, width=768, layers=12, heads=12, mlp=3072, out_dim=512),
             bert_config(768, 12, 12, 3072, 21128, 512), 512),
    "small": (dict(resolution=112, patch=16, width=256, layers=6, heads=4, mlp=1024, out_dim=256),
              bert_config(256, 4, 4, 1024, 21128, 512), 256),
}


def bench(argv):
    ap = argparse.ArgumentParser(prog="train_ref.py bench")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="base")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--lock", action="store_true", help="--lock-image: the visual tower frozen, "
                    "its forward under no_grad")
    ap.add_argument("--cached", action="store_true", help="a cached --lock-image epoch: "
                    "precomputed image features, the text tower only")
    ap.add_argument("--threads", type=int, default=reference_env.THREADS)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--mask-ratio", type=float, default=0.0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vit, cfg, out_dim = ARCHS[a.arch]
    model = ChineseCLIP(vit, cfg, out_dim).train()
    set_grad_checkpointing(model, a.grad_checkpointing)
    if a.lock or a.cached:
        for p in model.visual.parameters():
            p.requires_grad = False
    opt = make_optimizer(model, 1e-5, 0.01)
    if a.amp:
        # CUDA autocast runs layer_norm in fp32; torch 1.13's CPU autocast leaves
        # it alone and then fails on a bf16 input with fp32 weights (ln_final)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.register_forward_pre_hook(lambda mod, inp: tuple(x.float() for x in inp))

    rs = np.random.RandomState(0)
    R, L, B = vit["resolution"], 52, a.batch
    pixels = rs.randint(0, 256, (B, R, R, 3)).astype(np.uint8)
    ids = np.zeros((B, L), np.int64)
    for b in range(B):
        n = rs.randint(10, 31)
        ids[b, :n] = [101] + list(rs.randint(103, cfg["vocab_size"], n - 2)) + [102]
    ids = torch.from_numpy(ids)

    patches = (R // vit["patch"]) ** 2
    feats = None
    if a.cached:
        with torch.no_grad():
            feats = encode_image(model, pixels)

    def locked_step():
        opt.zero_grad(set_to_none=True)
        if feats is None:
            with torch.no_grad():
                img = encode_image(model, pixels)
        else:
            img = feats
        loss = clip_loss(img, model.encode_text(ids), model.logit_scale)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        return loss.item(), 0.0

    times = []
    for s in range(a.steps + 1):
        t0 = time.perf_counter()
        kept = None
        if a.mask_ratio > 0:  # open_clip's PatchDropout: the top-k of random noise, in its order
            kept = torch.randn(B, patches).topk(mask_keep(patches, a.mask_ratio), dim=-1).indices
        if a.lock or a.cached:
            loss, _ = locked_step()
        else:
            loss, _ = train_step(model, opt, pixels, ids, 1e-5, amp=a.amp, kept=kept)
        dt = time.perf_counter() - t0
        print(f"step {s}{' (warm-up)' if s == 0 else ''}: {dt:.3f} s, loss {loss:.4f}", file=sys.stderr)
        if s:
            times.append(dt)
    print(json.dumps({"impl": "pytorch", "arch": a.arch, "batch": B, "amp": a.amp,
                      "grad_checkpointing": a.grad_checkpointing,
                      "mask_ratio": a.mask_ratio,
                      "mode": "lock" if a.lock else "cached" if a.cached else "full",
                      "sec_per_step": statistics.median(times), "steps": a.steps,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch": torch.__version__, "reference": reference_env.describe()}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "english":
        english(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "dist":
        dist(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "mask":
        mask(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "lock":
        lock(sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == "bench":
        bench(sys.argv[2:])
    else:
        sys.exit(__doc__)
