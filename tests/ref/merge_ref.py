#!/usr/bin/env python3
"""NumPy reference for clip-merge (WiSE-FT), independent of the C code: writes
two safetensors checkpoints and checks a merged one against
(1 - alpha) * zero + alpha * fine computed here.

  merge_ref.py make DIR            DIR/zero.safetensors, DIR/fine.safetensors and
                                   mismatched variants for the error tests
  merge_ref.py check ALPHA OUT ZERO FINE

Exactness: alpha 0 and 1 must give ZERO and FINE bit for bit. alpha 0.5 must
equal the element-wise mean bit for bit: in float32, 0.5*x and 0.5*y are exact
and their sum is rounded once, which is the mean rounded once (for float16 and
bfloat16, the float32 mean rounded once more to the dtype, computed here as
(x + y) / 2 in float32 then cast). Other alphas: float32 arithmetic rounds the
two weights, the two products and the sum (5 roundings of relative size
u = 2^-24 on terms at most |wa x| + |wb y|), then the cast to the dtype rounds
by at most half its ulp: |ours - exact| <= 5 u (|wa x| + |wb y|) + ulp_t(exact).
"""
import json
import struct
import sys

import numpy as np

CODES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "BF16": np.uint16}


def write_st(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (code, arr) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_st(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + end], dtype=CODES[e["dtype"]])
        out[name] = (e["dtype"], arr.reshape(e["shape"]))
    return out, meta


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f):
    """Round to nearest even by choosing the nearer of the two bf16 neighbours."""
    bits = f.astype(np.float32).view(np.uint32)
    lo = bits & np.uint32(0xFFFF0000)
    hi = lo + np.uint32(0x10000)
    flo, fhi = lo.view(np.float32).astype(np.float64), hi.view(np.float32).astype(np.float64)
    x = f.astype(np.float64)
    dlo, dhi = np.abs(x - flo), np.abs(fhi - x)  # lo is the neighbour nearer zero
    up = (dhi < dlo) | ((dhi == dlo) & ((lo >> 16) & 1 == 1))
    return np.where(up, hi, lo).astype(np.uint32) >> 16


def make(d):
    rng = np.random.default_rng(7)
    def weights(scale):
        return {
            "visual.proj": ("F32", (rng.standard_normal((6, 5)) * scale).astype(np.float32)),
            "visual.conv1.weight": ("F16", (rng.standard_normal((4, 3)) * scale).astype(np.float16)),
            "bert.embeddings.weight": ("BF16", f32_to_bf16((rng.standard_normal((3, 7)) * scale).astype(np.float32)).astype(np.uint16)),
            "text_projection": ("F64", rng.standard_normal((5,)) * scale),
            "logit_scale": ("F32", np.array(4.6 * scale, dtype=np.float32)),
            "bert.embeddings.position_ids": ("I64", np.arange(6, dtype=np.int64).reshape(1, 6)),
        }
    zero, fine = weights(1.0), weights(0.7)
    cfg = {"clip_config": '{"vision_heads": 2}'}
    write_st(f"{d}/zero.safetensors", zero, cfg)
    write_st(f"{d}/fine.safetensors", fine, cfg)
    missing = dict(fine)
    del missing["text_projection"]
    write_st(f"{d}/missing.safetensors", missing, cfg)
    shaped = dict(fine)
    shaped["visual.proj"] = ("F32", np.zeros((5, 6), np.float32))
    write_st(f"{d}/shape.safetensors", shaped, cfg)
    typed = dict(fine)
    typed["visual.proj"] = ("F64", np.zeros((6, 5)))
    write_st(f"{d}/dtype.safetensors", typed, cfg)
    ints = dict(fine)
    ints["bert.embeddings.position_ids"] = ("I64", np.arange(1, 7, dtype=np.int64).reshape(1, 6))
    write_st(f"{d}/ints.safetensors", ints, cfg)
    write_st(f"{d}/config.safetensors", fine, {"clip_config": '{"vision_heads": 4}'})


def as_f64(code, arr):
    if code == "BF16":
        return bf16_to_f32(arr).astype(np.float64)
    return arr.astype(np.float64)


def check(alpha, out, zero_path, fine_path):
    ours, meta = read_st(out)
    zero, zmeta = read_st(zero_path)
    fine, _ = read_st(fine_path)
    bad = 0
    if list(ours) != list(zero):
        print(f"names differ: {list(ours)} vs {list(zero)}")
        return 1
    if meta != zmeta:
        print(f"metadata {meta} is not ZERO's {zmeta}")
        bad += 1
    for name, (code, x) in zero.items():
        ocode, o = ours[name]
        y = fine[name][1]
        if ocode != code or o.shape != x.shape:
            print(f"{name}: {ocode} {o.shape}, expected {code} {x.shape}")
            bad += 1
            continue
        if code == "I64" or alpha in (0.0, 1.0):
            want = x if code == "I64" or alpha == 0.0 else y
            if o.tobytes() != want.tobytes():
                print(f"{name}: not bit for bit the {'ZERO' if alpha == 0 else 'FINE'} tensor")
                bad += 1
            continue
        if alpha == 0.5:
            if code == "F64":
                want = (x + y) / 2
            elif code == "BF16":
                want = f32_to_bf16((bf16_to_f32(x) + bf16_to_f32(y)) / np.float32(2)).astype(np.uint16)
            else:
                want = ((x.astype(np.float32) + y.astype(np.float32)) / np.float32(2)).astype(x.dtype)
            if o.tobytes() != want.tobytes():
                print(f"{name}: not the element-wise mean: {o.ravel()[:4]} vs {want.ravel()[:4]}")
                bad += 1
            continue
        xf, yf, of = as_f64(code, x), as_f64(code, y), as_f64(code, o)
        exact = (1 - alpha) * xf + alpha * yf
        terms = np.abs((1 - alpha) * xf) + np.abs(alpha * yf)
        mant = {"F32": 24, "F16": 11, "BF16": 8, "F64": 53}[code]
        ulp_t = np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - (mant - 1))
        u = 2.0 ** -53 if code == "F64" else 2.0 ** -24
        bound = 5 * u * terms + ulp_t
        err = np.abs(of - exact)
        if (err > bound).any():
            i = int(np.argmax(err / bound))
            print(f"{name}: error {err.ravel()[i]:.3g} > bound {bound.ravel()[i]:.3g}")
            bad += 1
    print(f"{len(zero)} tensors checked, {bad} wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(check(float(sys.argv[2]), *sys.argv[3:6]))
