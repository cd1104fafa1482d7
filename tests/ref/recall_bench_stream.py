#!/usr/bin/python3
"""Write a synthetic embedded stream for timing clip-recall:
recall_bench_stream.py OUT.tar N_IMAGES CAPTIONS_PER_IMAGE DIM"""
import io
import sys
import tarfile

import numpy as np


def npy(a):
    b = io.BytesIO()
    np.save(b, a.astype("<f4"))
    return b.getvalue()


def main():
    out, n, per, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            img = rng.standard_normal(d)
            txt = img + 5.0 * rng.standard_normal((per, d))
            img /= np.linalg.norm(img)
            txt /= np.linalg.norm(txt, axis=1, keepdims=True)
            for field, a in (("img_emb.npy", img), ("txt_emb.npy", txt)):
                data = npy(a)
                ti = tarfile.TarInfo(f"{i:07d}.{field}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


if __name__ == "__main__":
    main()
