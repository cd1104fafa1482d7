#!/usr/bin/python3
"""bench_recall.py CLIP_RECALL STREAM.tar: seconds of clip-recall and of a NumPy reference at its
best (reference_env.py; float32 score blocks through BLAS, fully vectorised ranks) on the same
embedded stream, both reading the tar themselves; best of 3 each, side by side, and the check
that both give the same figures."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_env  # noqa: E402

reference_env.ensure()  # before numpy loads its BLAS

import numpy as np  # noqa: E402

import recall_ref  # noqa: E402

ROWS = 1024  # images per score block: [ROWS, n_texts] float32 at a time


def reference(path):
    samples = recall_ref.read_stream(path)
    img = np.stack([s[1] for s in samples]).astype(np.float32)
    txt = np.concatenate([s[2] for s in samples]).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    counts = np.array([len(s[2]) for s in samples])
    owner = np.repeat(np.arange(len(samples)), counts)
    true = np.einsum("td,td->t", img[owner], txt)  # each caption against its own image
    best = np.full(len(img), -np.inf, np.float32)  # an image's best own caption
    has = counts > 0
    best[has] = np.maximum.reduceat(true, np.cumsum(counts)[has] - counts[has])
    img_rank = np.zeros(len(img), np.int64)
    above = np.zeros(len(txt), np.int64)
    for r in range(0, len(img), ROWS):
        S = img[r:r + ROWS] @ txt.T
        img_rank[r:r + ROWS] = 1 + np.sum(S > best[r:r + ROWS, None], axis=1)
        above += np.sum(S > true[None, :], axis=0)
        # own pairs are not candidates: take back what the block's rounding (not einsum's)
        # counted for them
        t = np.nonzero((owner >= r) & (owner < r + ROWS))[0]
        own = S[owner[t] - r, t]
        above[t] -= own > true[t]
        np.subtract.at(img_rank, owner[t], own > best[owner[t]])
    img_rank[~has] = 0
    return recall_ref.metrics(img_rank, 1 + above)


def best_of(n, fn):
    out, best = None, float("inf")
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    exe, path = sys.argv[1:]
    env = reference_env.ours_env()
    t_c, c = best_of(3, lambda: json.loads(subprocess.run(
        [exe, "-i", path], check=True, capture_output=True, text=True, env=env).stdout))
    t_ref, ref = best_of(3, lambda: reference(path))
    print(reference_env.describe())
    print(f"{ref['n_images']} images, {ref['n_texts']} captions: clip-recall {t_c:.2f} s "
          f"(process, tar included), NumPy reference {t_ref:.2f} s (tar included): "
          f"{t_ref / t_c:.2f}x")
    # float32 scores rounded in another order can flip a near-tie: a rank by one, a figure by
    # a few hundredths of a point; anything larger is a real disagreement
    diff = max(abs(c[k] - ref[k]) for k in ref)
    print(f"largest difference of the figures: {diff:.3g} percentage points")
    if diff > 0.1:
        sys.exit("bench_recall.py: clip-recall and the reference disagree")


if __name__ == "__main__":
    main()
