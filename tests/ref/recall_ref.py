#!/usr/bin/python3
"""Independent NumPy reference of the recall definition (clip-recall(1), lib/search/recall.h).

  recall_ref.py STREAM.tar            print the metrics JSON clip-recall prints
  recall_ref.py --ranks STREAM.tar    ... plus "img_rank" and "txt_rank" lists
  recall_ref.py --make-fixture DIR    write DIR/embedded.tar and DIR/expected.json

Full score matrix (float64 cosine similarities), images x all captions. Rank of
a query = 1 + number of wrong candidates scoring strictly higher than the true
one: image->text uses the image's best own caption and counts captions of other
images; text->image counts images other than the caption's own. An image with
no captions is a text->image candidate only. txt_* = image->text, img_* =
text->image, in percent.
"""
import io
import json
import sys
import tarfile

import numpy as np

KS = (1, 5, 10)


def read_stream(path):
    """[(key, img_emb [D], txt_emb [n, D])] in stream order."""
    samples, order = {}, []
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            dot = base.index(".")
            key = m.name[: len(m.name) - len(base) + dot]
            field = base[dot + 1 :]
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][field] = tf.extractfile(m).read()
    out = []
    for key in order:
        f = samples[key]
        img = np.load(io.BytesIO(f["img_emb.npy"])).astype(np.float64)
        txt = np.load(io.BytesIO(f["txt_emb.npy"])).astype(np.float64)
        out.append((key, img, txt.reshape(-1, img.shape[0])))
    return out


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ranks(samples):
    img = unit(np.stack([s[1] for s in samples]))
    txt = unit(np.concatenate([s[2] for s in samples]))
    owner = np.concatenate([np.full(len(s[2]), i) for i, s in enumerate(samples)])
    S = img @ txt.T  # [n_images, n_texts]
    own = owner[None, :] == np.arange(len(img))[:, None]

    img_rank = np.zeros(len(img), dtype=np.int64)
    for i in range(len(img)):
        if own[i].any():
            best = S[i, own[i]].max()
            img_rank[i] = 1 + np.sum(S[i, ~own[i]] > best)

    true = S[owner, np.arange(len(txt))]
    txt_rank = 1 + np.sum((S > true[None, :]) & ~own, axis=0)
    return img_rank, txt_rank, S, own


def metrics(img_rank, txt_rank):
    q = img_rank[img_rank > 0]
    m = {}
    for k in KS:
        m[f"txt_r{k}"] = 100.0 * np.sum(q <= k) / len(q)
    m["txt_r_mean"] = (m["txt_r1"] + m["txt_r5"] + m["txt_r10"]) / 3
    for k in KS:
        m[f"img_r{k}"] = 100.0 * np.sum(txt_rank <= k) / len(txt_rank)
    m["img_r_mean"] = (m["img_r1"] + m["img_r5"] + m["img_r10"]) / 3
    m["r_mean"] = (m["txt_r_mean"] + m["img_r_mean"]) / 2
    m["n_images"] = int(len(img_rank))
    m["n_texts"] = int(len(txt_rank))
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in m.items()}


def min_margin(S, own, img_rank, txt_rank):
    """Smallest |wrong score - true score|: how far the data is from a tie."""
    gaps = []
    for i in range(S.shape[0]):
        if own[i].any():
            gaps.append(np.abs(S[i, ~own[i]] - S[i, own[i]].max()).min())
    owner = own.argmax(axis=0)
    true = S[owner, np.arange(S.shape[1])]
    gaps.append(np.abs(np.where(own, np.inf, S - true[None, :])).min())
    return min(gaps)


def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, np.ascontiguousarray(a, dtype="<f4"))
    return b.getvalue()


def write_stream(path, samples):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, img, txt in samples:
            for field, a in (("img_emb.npy", img), ("txt_emb.npy", txt)):
                data = npy_bytes(a)
                ti = tarfile.TarInfo(f"{key}.{field}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tf.addfile(ti, io.BytesIO(data))


def make_fixture(outdir):
    """50 images, 4-6 captions each, D=16: captions are noisy copies of their
    image so that recall is neither 0 nor 100; the seed is the first whose
    scores keep every comparison at least 1e-4 away from a tie, so float32
    rounding cannot change a rank."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        n, d = 50, 16
        img = unit(rng.standard_normal((n, d))).astype(np.float32)
        samples = []
        for i in range(n):
            nc = int(rng.integers(4, 7))
            txt = unit(img[i] + 2.5 * unit(rng.standard_normal((nc, d)))).astype(np.float32)
            samples.append((f"fx/{i:03d}", img[i], txt))
        img_rank, txt_rank, S, own = ranks(samples)
        if min_margin(S, own, img_rank, txt_rank) >= 1e-4:
            break
    else:
        sys.exit("no seed without near ties")
    write_stream(f"{outdir}/embedded.tar", samples)
    expected = {"metrics": metrics(img_rank, txt_rank),
                "img_rank": img_rank.tolist(), "txt_rank": txt_rank.tolist()}
    with open(f"{outdir}/expected.json", "w") as f:
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}"
                                   for k, v in expected.items()) + "\n}\n")
    print(json.dumps(expected["metrics"]))


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--make-fixture":
        return make_fixture(args[1])
    with_ranks = bool(args) and args[0] == "--ranks"
    if with_ranks:
        args = args[1:]
    if len(args) != 1:
        sys.exit(__doc__)
    img_rank, txt_rank, _, _ = ranks(read_stream(args[0]))
    out = metrics(img_rank, txt_rank)
    if with_ranks:
        out["img_rank"], out["txt_rank"] = img_rank.tolist(), txt_rank.tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
