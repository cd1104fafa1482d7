#!/usr/bin/python3
"""Small checkpoint fixtures for tests/unit/test_checkpoint.c.

Writes into tests/fixtures/ckpt/ (or argv[1]):
  small.pth            torch.save zip format (shared storages, views, f16/bf16/f64, int64 ...)
  small_legacy.pth     the same dict, _use_new_zipfile_serialization=False
  small.safetensors    the same tensors, written by hand (no safetensors package here)
  small_be.pth         small.pth rewritten with byteorder "big" and byte-swapped storages
  nested.pth           {'epoch': 3, 'state_dict': {...}, 'note': 'x'} as a training checkpoint
  meta.pth             small.pth + the member archive/clip-tools/metadata.json that
                       ckpt_save_pth writes (a JSON object of strings; torch.load ignores it)
  bad_meta_json.pth    the same member holding no JSON
  bad_meta_value.pth   ... holding a non-string value
  evil_global.pth      a zip checkpoint whose pickle calls posix.system (must be refused)
  evil_legacy.pth      a bare pickle doing the same
  expected.json        per set: name, dtype, shape, raw little-endian bytes (hex) and the
                       float32 conversion (hex)
Run with /usr/bin/python3 (Debian's, with torch).
"""
import collections
import json
import os
import struct
import sys
import zipfile

import numpy as np
import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures", "ckpt")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)

ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"}
NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
        torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
        torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().tobytes()  # little-endian host


def small_state_dict():
    r = lambda *s: torch.randn(*s)
    sd = collections.OrderedDict()
    sd["visual.conv1.weight"] = r(4, 3, 2, 2)
    sd["visual.class_embedding"] = r(4)
    sd["visual.positional_embedding"] = r(5, 4)
    sd["visual.transformer.resblocks.0.attn.in_proj_weight"] = r(12, 4)
    sd["visual.transformer.resblocks.0.attn.in_proj_bias"] = r(12)
    sd["visual.proj"] = r(4, 3)
    sd["logit_scale"] = torch.nn.Parameter(torch.tensor(2.6592600345611572))  # 0-dim Parameter
    sd["bert.embeddings.word_embeddings.weight"] = r(10, 4)
    sd["bert.embeddings.position_ids"] = torch.arange(6).unsqueeze(0)  # int64 buffer
    sd["bert.encoder.layer.0.attention.self.query.weight"] = r(4, 4).half()
    sd["half.special"] = torch.tensor([0.0, -0.0, 1.0, 65504.0, 6e-8, -3e-5, float("inf"), float("-inf"),
                                       float("nan")], dtype=torch.float16)
    sd["bf16.weight"] = r(2, 3).bfloat16()
    sd["f64.bias"] = torch.tensor([1.0, -2.5, 1e-40, 3.4e38, 1e300], dtype=torch.float64)
    # two tensors sharing one storage at different offsets, and a strided view of it
    base = r(40)
    sd["shared.a"] = base[2:8].view(2, 3)
    sd["shared.b"] = base[10:22].view(3, 4)
    sd["shared.strided"] = base[1:40:5]
    sd["transposed"] = r(4, 5).t()  # non-contiguous, stride (1, 5)
    sd["expanded"] = r(3, 1).expand(3, 4)  # stride 0
    sd["ints.i32"] = torch.tensor([-2**31, 7, 2**31 - 1], dtype=torch.int32)
    sd["ints.i16"] = torch.tensor([-32768, 5, 32767], dtype=torch.int16)
    sd["ints.i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["ints.u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 3)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as Module.state_dict() has
    return sd


def expected(sd, prefix=""):
    out = []
    for k, v in sd.items():
        if isinstance(v, dict):
            out += expected(v, prefix + k + ".")
        elif isinstance(v, torch.Tensor):
            out.append({"name": prefix + k, "dtype": NAME[v.dtype], "shape": list(v.shape),
                        "raw": raw_bytes(v).hex(),
                        "f32": v.detach().float().contiguous().numpy().astype("<f4").tobytes().hex()})
    return out


def write_safetensors(path, sd, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for k, v in sd.items():
        b = raw_bytes(v)
        header[k] = {"dtype": ST_DTYPE[v.dtype], "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_big_endian(src, dst):
    """A byteorder=big variant of a zip checkpoint, as a big-endian host writes it."""
    import pickle

    zin = zipfile.ZipFile(src)
    prefix = zin.namelist()[0].split("/")[0]
    # storage key -> element size, from the persistent ids in data.pkl
    sizes = {}

    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            return super().find_class(mod, name)

        def persistent_load(self, pid):
            sizes[pid[2]] = pid[1](0).element_size()
            return pid[1](pid[4])

    U(__import__("io").BytesIO(zin.read(prefix + "/data.pkl"))).load()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name in zin.namelist():
            data = zin.read(name)
            key = name[len(prefix) + len("/data/"):]
            if name.startswith(prefix + "/data/") and sizes.get(key, 1) > 1:
                es = sizes[key]
                data = np.frombuffer(data, dtype="u%d" % es).byteswap().tobytes()
            z.writestr(name, data)
            if name.endswith("data.pkl"):
                z.writestr(prefix + "/byteorder", "big")


class FakeStorage:
    pass


class FakeTensor:
    """Pickles as _rebuild_tensor_v2 over FakeStorage with any offset/size/stride."""
    def __init__(self, offset, size, stride):
        self.args = (offset, size, stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (FakeStorage(), *self.args, False, collections.OrderedDict()))


def write_crafted_zip(path, obj, numel, member_bytes, storage_key="0"):
    """A zip checkpoint with a hand-made pickle: hostile offsets/sizes torch.save cannot make."""
    import io
    import pickle
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.persistent_id = lambda o: ("storage", torch.FloatStorage, storage_key, "cpu", numel) \
        if isinstance(o, FakeStorage) else None
    p.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", bytes(member_bytes))
        z.writestr("archive/version", "3\n")


def write_with_metadata(path, sd, member_bytes):
    """torch.save to memory (members under archive/) + a clip-tools metadata member."""
    import io
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as z:
        z.writestr("archive/clip-tools/metadata.json", member_bytes)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_legacy_view(path):
    """Legacy format with a storage view (older torch wrote these; 1.13 cannot)."""
    import pickle
    buf = open(path, "wb")
    for obj in (0x1950a86a20f9469cfc6c, 1001, dict(protocol_version=1001, little_endian=True,
                                                   type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(obj, buf, protocol=2)
    p = pickle.Pickler(buf, protocol=2)
    p.persistent_id = lambda o: ("storage", torch.FloatStorage, "root", "cpu", 8, ("view", 2, 4)) \
        if isinstance(o, FakeStorage) else None
    p.dump(collections.OrderedDict(w=FakeTensor(1, (2,), (1,))))
    pickle.dump(["root"], buf, protocol=2)
    buf.write(struct.pack("<q", 8) + np.arange(8, dtype="<f4").tobytes())
    buf.close()
    assert torch.load(path)["w"].tolist() == [3.0, 4.0]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def main():
    sd = small_state_dict()
    torch.save(sd, os.path.join(OUT, "small.pth"))
    torch.save(sd, os.path.join(OUT, "small_legacy.pth"), _use_new_zipfile_serialization=False)
    write_safetensors(os.path.join(OUT, "small.safetensors"), sd, {"format": "pt", "note": "fixture"})
    write_big_endian(os.path.join(OUT, "small.pth"), os.path.join(OUT, "small_be.pth"))

    torch.manual_seed(1)
    inner = collections.OrderedDict()
    inner["module.visual.proj"] = torch.randn(3, 2)
    inner["module.logit_scale"] = torch.tensor(4.6052)
    nested = {"epoch": 3, "step": 12345, "state_dict": inner, "note": "x", "lr": 1e-4, "hist": [1, 2]}
    torch.save(nested, os.path.join(OUT, "nested.pth"))

    torch.save({"w": torch.zeros(2), "evil": Evil()}, os.path.join(OUT, "evil_global.pth"))
    with open(os.path.join(OUT, "evil_legacy.pth"), "wb") as f:
        import pickle
        f.write(pickle.dumps(Evil(), protocol=2))

    od = collections.OrderedDict
    write_crafted_zip(os.path.join(OUT, "ok_crafted.pth"), od(w=FakeTensor(1, (2, 3), (3, 1))), 8, 32)
    write_crafted_zip(os.path.join(OUT, "bad_offset.pth"), od(w=FakeTensor(3, (2, 3), (3, 1))), 8, 32)
    write_crafted_zip(os.path.join(OUT, "bad_stride.pth"), od(w=FakeTensor(0, (2, 3), (8, 1))), 8, 32)
    write_crafted_zip(os.path.join(OUT, "bad_storage_size.pth"), od(w=FakeTensor(0, (2, 3), (3, 1))), 8, 20)
    write_crafted_zip(os.path.join(OUT, "bad_key.pth"), od(w=FakeTensor(0, (2,), (1,))), 8, 32, "7")
    write_crafted_zip(os.path.join(OUT, "bad_dims.pth"), od(w=FakeTensor(0, (1,) * 9, (1,) * 9)), 8, 32)
    write_crafted_zip(os.path.join(OUT, "bad_root.pth"), [FakeTensor(0, (2,), (1,))], 8, 32)

    write_legacy_view(os.path.join(OUT, "legacy_view.pth"))

    meta = os.path.join(OUT, "meta.pth")
    write_with_metadata(meta, sd, json.dumps({"note": "fixture", "format": "pt"}))
    for kw in ({}, {"weights_only": True}):  # the extra member changes nothing for torch
        back = torch.load(meta, **kw)
        assert list(back) == list(sd) and all(raw_bytes(back[k]) == raw_bytes(sd[k]) for k in sd), kw
    write_with_metadata(os.path.join(OUT, "bad_meta_json.pth"), sd, b"{not json")
    write_with_metadata(os.path.join(OUT, "bad_meta_value.pth"), sd, json.dumps({"heads": 12}))

    exp = {"small": expected(sd), "nested": expected(nested)}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(exp, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
