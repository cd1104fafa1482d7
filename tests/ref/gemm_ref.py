#!/usr/bin/python3
"""PyTorch reference for gemm_bf16: gemm_ref.py DIR writes a tiny fixture.

a.npy [5, 7], b.npy [7, 6]      float32 inputs, some exactly halfway between
                                two bf16 values (ties round to even)
a_bf16.npy, b_bf16.npy          A.bfloat16().float(), B.bfloat16().float()
c.npy [5, 6]                    a_bf16 @ b_bf16 in float32: what an autocast
                                (bfloat16) matmul computes before its output
                                is rounded to bf16
"""
import os
import sys

import numpy as np
import torch


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(5, 7, generator=g) * 3.0
    b = torch.randn(7, 6, generator=g) * 0.25
    # ties: 1 + 2^-8 -> 1 (even), 1 + 3*2^-8 -> 1 + 2^-6, and their negatives
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), -(1 + 3 * 2**-8), 3 + 2**-7])
    a[0, :5] = ties
    b[1, :5] = ties * 0.5
    ar, br = a.bfloat16().float(), b.bfloat16().float()
    c = ar @ br
    for name, t in (("a", a), ("b", b), ("a_bf16", ar), ("b_bf16", br), ("c", c)):
        np.save(os.path.join(out, name + ".npy"), t.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
