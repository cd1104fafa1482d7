#!/usr/bin/python3
"""Reads a checkpoint written by ckpt_save_pth / ckpt_save_safetensors (a copy of
tests/fixtures/ckpt/small.pth, see `test_checkpoint --write`) and compares every
tensor with expected.json bit for bit: .pth with torch.load (also with
weights_only=True, and with the clip-tools metadata member present, which
torch must ignore), .safetensors by hand."""
import json
import os
import struct
import sys


FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ckpt")


def raw(t):
    import torch
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def main(path):
    exp = json.load(open(os.path.join(FIX, "expected.json")))["small"]
    if path.endswith(".safetensors"):
        data = open(path, "rb").read()
        n, = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        got = {k: (v["dtype"], v["shape"], data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
               for k, v in header.items() if k != "__metadata__"}
        names = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                 "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
        want = {e["name"]: (names[e["dtype"]], e["shape"], bytes.fromhex(e["raw"])) for e in exp}
    else:
        import torch
        import zipfile
        names = zipfile.ZipFile(path).namelist()
        assert "archive/clip-tools/metadata.json" in names, names
        meta = json.loads(zipfile.ZipFile(path).read("archive/clip-tools/metadata.json"))
        assert meta == {"note": "test_checkpoint --write"}, meta
        sd = torch.load(path)
        assert type(sd).__name__ == "OrderedDict", type(sd)
        safe = torch.load(path, weights_only=True)
        assert list(safe) == list(sd) and all(raw(safe[k]) == raw(sd[k]) for k in sd), "weights_only"
        got = {k: (str(v.dtype).replace("torch.", ""), list(v.shape), raw(v)) for k, v in sd.items()}
        want = {e["name"]: (e["dtype"], e["shape"], bytes.fromhex(e["raw"])) for e in exp}
        assert list(sd.keys()) == [e["name"] for e in exp], "key order differs"
    bad = [k for k in want if got.get(k) != want[k]]
    if bad or len(got) != len(want):
        sys.exit("%s: %d tensors differ: %s" % (path, len(bad), ", ".join(bad[:5])))
    print("%s: %d tensors match" % (path, len(got)))


if __name__ == "__main__":
    main(sys.argv[1])
