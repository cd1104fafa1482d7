#!/usr/bin/python3
"""Small hostile inputs for tests/bats/hostile.bats (issue 10), made on the fly.

craft.py KIND OUT [ARGS]: writes one file. Needs only the standard library
(and PIL for the JPEG kinds). Pickles are written opcode by opcode, so no
torch is needed and nothing here is ever unpickled by Python.
"""
import io
import json
import pickle
import struct
import sys
import zipfile


def p_int(x):
    """The protocol-2 opcodes that push the int x."""
    return pickle.dumps(x, protocol=2)[2:-1]


def p_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_tuple(items):
    return b"(" + b"".join(items) + b"t"


def p_tensor(key, numel, offset, shape, stride):
    """torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())"""
    pid = p_tuple([p_str("storage"), b"ctorch\nFloatStorage\n", p_str(key), p_str("cpu"),
                   p_int(numel)]) + b"Q"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n" +
            p_tuple([pid, p_int(offset), p_tuple([p_int(d) for d in shape]),
                     p_tuple([p_int(d) for d in stride]), b"\x89",
                     b"ccollections\nOrderedDict\n)R"]) + b"R")


def torch_zip(path, tensors, storages):
    """tensors: [(name, key, numel, offset, shape, stride)]; storages: {key: bytes}"""
    pk = b"\x80\x02}" + b"".join(p_str(n) + p_tensor(*t) + b"s" for n, *t in tensors) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pk)
        for k, b in storages.items():
            z.writestr(f"archive/data/{k}", b)
        z.writestr("archive/version", "3\n")


def safetensors(path, tensors):
    """tensors: [(name, shape)] of float32 zeros"""
    hdr, off = {}, 0
    for name, shape in tensors:
        n = 4
        for d in shape:
            n *= d
        hdr[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(hdr).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(off))


def vit_tensors(width, layers, mlp=None, grid=2, patch=4, out=8, full_layers=None):
    """A ViT image tower's names and shapes; only `full_layers` of `layers`
    carry more than ln_1.weight (None: all)."""
    mlp = mlp if mlp is not None else 4 * width
    t = [("visual.conv1.weight", (width, 3, patch, patch)),
         ("visual.class_embedding", (width,)),
         ("visual.positional_embedding", (grid * grid + 1, width)),
         ("visual.ln_pre.weight", (width,)), ("visual.ln_pre.bias", (width,)),
         ("visual.ln_post.weight", (width,)), ("visual.ln_post.bias", (width,)),
         ("visual.proj", (width, out))]
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        t.append((p + "ln_1.weight", (width,)))
        if full_layers is not None and i >= full_layers:
            continue
        t += [(p + "ln_1.bias", (width,)), (p + "attn.in_proj_weight", (3 * width, width)),
              (p + "attn.in_proj_bias", (3 * width,)), (p + "attn.out_proj.weight", (width, width)),
              (p + "attn.out_proj.bias", (width,)), (p + "ln_2.weight", (width,)),
              (p + "ln_2.bias", (width,)), (p + "mlp.c_fc.weight", (mlp, width)),
              (p + "mlp.c_fc.bias", (mlp,)), (p + "mlp.c_proj.weight", (width, mlp)),
              (p + "mlp.c_proj.bias", (width,))]
    return t


def jpeg(path, w, h, progressive):
    """A 16x16 JPEG whose frame header claims w x h (a few hundred bytes)."""
    from PIL import Image
    b = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(b, "JPEG", progressive=progressive)
    d = bytearray(b.getvalue())
    i = 2
    while i < len(d):
        marker, seglen = d[i + 1], struct.unpack(">H", d[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC2):
            d[i + 5:i + 9] = struct.pack(">HH", h, w)
            break
        i += 2 + seglen
    open(path, "wb").write(bytes(d))


def tar_member(tf, name, data):
    import tarfile
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def npy_bytes(dtype, shape, data=b""):
    """A version-1 .npy of the given descr ('<i4') and shape, data as given."""
    dims = "".join(f"{d}, " for d in shape) if len(shape) == 1 else ", ".join(map(str, shape))
    if len(shape) == 1:
        dims = f"{shape[0]},"
    h = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': ({dims}), }}"
    h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data


def zip_lying(path):
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = c.compress(bytes(300 << 20)) + c.flush()
    name = b"x.jpg"
    crc = zlib.crc32(bytes(300 << 20))
    lfh = struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, 8, 0, 0, crc, len(data), 100,
                      len(name), 0) + name
    cdh = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, 8, 0, 0, crc, len(data), 100,
                      len(name), 0, 0, 0, 0, 0, 0) + name
    eocd = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 1, 1, len(cdh), len(lfh) + len(data), 0)
    open(path, "wb").write(lfh + data + cdh + eocd)


def main():
    kind, out = sys.argv[1], sys.argv[2]
    f4 = lambda n: bytes(4 * n)
    if kind == "storage-2e62":      # storage numel 2^62: numel * 4 overflows int64
        torch_zip(out, [("w", "0", 1 << 62, 0, (2,), (1,))], {"0": f4(2)})
    elif kind == "offset-neg":      # storage offset -8
        torch_zip(out, [("w", "0", 8, -8, (2, 3), (3, 1))], {"0": f4(8)})
    elif kind == "stride0":         # one element viewed as [2^30] with stride 0
        torch_zip(out, [("w", "0", 1, 0, (1 << 30,), (0,))], {"0": f4(1)})
    elif kind == "vit-width0":      # a ViT of width 0 that has every tensor
        safetensors(out, vit_tensors(0, 1, mlp=4))
    elif kind == "vit-3000":        # 3000 layers named by ln_1.weight alone
        safetensors(out, vit_tensors(64, 3000, full_layers=1))
    elif kind == "vit-1000":        # 1000 layers (within the limit) named by ln_1.weight alone
        safetensors(out, vit_tensors(256, 1000, full_layers=1))
    elif kind == "bert-1000":       # a BERT tower: layer 0 whole, layers 1..999 one [1] tensor
        H, I = 256, 1024
        t = [("transformer.embeddings.word_embeddings.weight", (16, H)),
             ("transformer.embeddings.position_embeddings.weight", (8, H)),
             ("transformer.embeddings.token_type_embeddings.weight", (2, H)),
             ("transformer.embeddings.LayerNorm.weight", (H,)),
             ("transformer.embeddings.LayerNorm.bias", (H,))]
        p = "transformer.encoder.layer.0."
        for n in ("query", "key", "value"):
            t += [(p + f"attention.self.{n}.weight", (H, H)), (p + f"attention.self.{n}.bias", (H,))]
        t += [(p + "attention.output.dense.weight", (H, H)), (p + "attention.output.dense.bias", (H,)),
              (p + "attention.output.LayerNorm.weight", (H,)),
              (p + "attention.output.LayerNorm.bias", (H,)),
              (p + "intermediate.dense.weight", (I, H)), (p + "intermediate.dense.bias", (I,)),
              (p + "output.dense.weight", (H, I)), (p + "output.dense.bias", (H,)),
              (p + "output.LayerNorm.weight", (H,)), (p + "output.LayerNorm.bias", (H,))]
        t += [(f"transformer.encoder.layer.{i}.attention.self.query.weight", (1,))
              for i in range(1, 1000)]
        safetensors(out, t)
    elif kind == "bert-config":     # config.json: ARGS is a JSON object merged in
        cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 128, "max_position_embeddings": 32, "type_vocab_size": 2,
               "vocab_size": 256, "hidden_act": "gelu"}
        cfg.update(json.loads(sys.argv[3]))
        json.dump(cfg, open(out, "w"))
    elif kind == "tok-0-captions":  # a sample whose tok.npy is int32 [0, 16]
        import tarfile
        with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tf:
            tar_member(tf, "s000.json", b"{}")
            tar_member(tf, "s000.tok.npy", npy_bytes("<i4", (0, 16)))
    elif kind == "zip-bomb":        # x.jpg: 300 MB of zeros deflated (~300 KB)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("x.jpg", bytes(300 << 20))
    elif kind == "zip-lying":       # x.jpg: 300 MB deflated, its sizes patched to say 100 bytes
        zip_lying(out)
    elif kind == "tar-2e62":        # a member whose size field says 2^62 bytes, then 1 KB
        import tarfile
        ti = tarfile.TarInfo("s000.json")
        ti.size = 1 << 62
        open(out, "wb").write(ti.tobuf(tarfile.GNU_FORMAT) + b"{}" + bytes(1022))
    elif kind == "tar-900m":        # a member whose size field says 900 MiB (under the limit), then 1 KB
        import tarfile
        ti = tarfile.TarInfo("s000.json")
        ti.size = 900 << 20
        open(out, "wb").write(ti.tobuf(tarfile.USTAR_FORMAT) + b"{}" + bytes(1022))
    elif kind == "jpeg-baseline":
        jpeg(out, int(sys.argv[3]), int(sys.argv[4]), False)
    elif kind == "jpeg-progressive":
        jpeg(out, int(sys.argv[3]), int(sys.argv[4]), True)
    else:
        sys.exit(f"craft.py: unknown kind {kind}")


if __name__ == "__main__":
    main()
