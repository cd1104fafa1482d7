#!/usr/bin/python3
"""Writes the fuzzers' seed inputs, tests/fuzz/corpus/NAME/ (committed; rerun after changing
this file: /usr/bin/python3 tests/fuzz/make_seeds.py). Each seed is small (the fuzzers copy
and mutate it every iteration) and valid, so that mutants start from inputs the parsers
accept; a few are refused as they stand, to start from an error path too."""

import gzip
import io
import json
import os
import struct
import sys
import tarfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def npy(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a, allow_pickle=False)
    else:
        np.lib.format.write_array(b, a, version=version, allow_pickle=False)
    return b.getvalue()


def npy_seeds():
    r = np.random.default_rng(1)
    put("npy", "u8_img.npy", npy(r.integers(0, 255, (4, 4, 3), dtype=np.uint8)))
    put("npy", "i32_tok.npy", npy(r.integers(0, 21128, (2, 8), dtype=np.int32)))
    put("npy", "i64.npy", npy(np.arange(5, dtype=np.int64)))
    put("npy", "f32_emb.npy", npy(r.standard_normal(16).astype(np.float32)))
    put("npy", "f16.npy", npy(r.standard_normal((2, 3)).astype(np.float16)))
    put("npy", "f32_scalar.npy", npy(np.float32(1.5)))
    put("npy", "i32_empty.npy", npy(np.zeros((0, 16), dtype=np.int32)))
    put("npy", "v2_u8.npy", npy(np.ones((2, 2, 3), dtype=np.uint8), version=(2, 0)))
    put("npy", "u8_8dims.npy", npy(np.ones((1,) * 8, dtype=np.uint8)))
    # written by hand: double quotes, '<u1', no spaces (refused as it stands: 'fortran_order')
    hdr = b'{"descr":"<u1","shape":(3,),}'
    hdr += b" " * (63 - (10 + len(hdr)) % 64) + b"\n"
    put("npy", "hand_u8.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + b"abc")
    put("npy", "fortran.npy", npy(np.asfortranarray(np.ones((2, 3), dtype=np.float32))))
    # found by the fuzzers (each also a unit test): an unknown dtype that ends the input
    hdr = b"{'descr': '<x4'"
    put("npy", "found_dtype_at_end.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr)
    # ... and a header that ends at "'shape':"
    hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape':"
    put("npy", "found_shape_at_end.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr)


def member(t, name, data, fmt_type=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.type = fmt_type
    info.mtime = 0
    t.addfile(info, io.BytesIO(data))


def sample_fields(i, img_side=2, n_caps=2):
    r = np.random.default_rng(i)
    caps = ["一只狗 %d" % i, "a dog"][:n_caps]
    return [
        ("json", json.dumps({"image": "img/%d.jpg" % i, "captions": caps},
                            ensure_ascii=False).encode()),
        ("img.npy", npy(r.integers(0, 255, (img_side, img_side, 3), dtype=np.uint8))),
        ("tok.npy", npy(r.integers(0, 100, (n_caps, 4), dtype=np.int32))),
    ]


def tar_bytes(samples, fmt=tarfile.PAX_FORMAT, extra=None):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for key, fields in samples:
            for field, data in fields:
                member(t, key + "." + field, data)
        if extra:
            extra(t)
        end = t.offset  # where the members end
    # no padding to tarfile's 10 KB record: the members, then the 1 KB end-of-archive marker
    return b.getvalue()[:end] + b"\0" * 1024


def tar_seeds():
    two = [("s%d" % i, sample_fields(i)) for i in range(2)]
    put("tar", "pax_two_samples.tar", tar_bytes(two))
    put("tar", "ustar_one_sample.tar", tar_bytes(two[:1], fmt=tarfile.USTAR_FORMAT))
    put("tar", "gnu_long_key.tar",
        tar_bytes([("k" * 120, sample_fields(3, n_caps=1))], fmt=tarfile.GNU_FORMAT))
    put("tar", "folder_keys.tar",
        tar_bytes([("a/b/s4", sample_fields(4)), ("a/b/s5", sample_fields(5))],
                  extra=lambda t: member(t, "a/b", b"", tarfile.DIRTYPE)))
    put("tar", "embedded.tar", tar_bytes([("e", [
        ("img_emb.npy", npy(np.ones(4, dtype=np.float32) / 2)),
        ("txt_emb.npy", npy(np.ones((1, 4), dtype=np.float32) / 2)),
        ("json", b'{"captions": ["x"]}')])]))
    put("tar", "empty.tar", tar_bytes([]))
    put("tar", "two_samples.tar.gz", gzip.compress(tar_bytes(two), mtime=0))
    # refused as they stand: a key with no field, a field twice, no end-of-archive marker
    put("tar", "no_field.tar", tar_bytes([("nofield", [])],
                                         extra=lambda t: member(t, "nofield", b"x")))
    put("tar", "field_twice.tar",
        tar_bytes([("d", [("json", b"{}"), ("json", b"{}")])]))
    put("tar", "truncated.tar", tar_bytes(two)[:-1024])  # at a member boundary


def safetensors(tensors, metadata=None, align=8, pad=b" "):
    header, blobs, off = {}, [], 0
    for name, a, dtype in tensors:
        raw = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += pad * (-len(h) % align)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def bf16(a):
    return (np.asarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def safetensors_seeds():
    r = np.random.default_rng(2)
    f32 = r.standard_normal((2, 3)).astype(np.float32)
    put("safetensors", "f32_meta.safetensors",
        safetensors([("w", f32, "F32"), ("b", np.zeros(3, np.float32), "F32")],
                    {"format": "pt", "clip-tools": "{\"arch\": \"small\"}"}))
    put("safetensors", "dtypes.safetensors", safetensors([
        ("h", r.standard_normal(4).astype(np.float16), "F16"),
        ("bf", bf16(r.standard_normal(4)), "BF16"),
        ("d", r.standard_normal(2), "F64"),
        ("l", np.arange(3, dtype=np.int64), "I64"),
        ("i", np.arange(3, dtype=np.int32), "I32"),
        ("s", np.arange(3, dtype=np.int16), "I16"),
        ("c", np.arange(3, dtype=np.int8), "I8"),
        ("u", np.arange(3, dtype=np.uint8), "U8"),
        ("t", np.array([True, False]), "BOOL")]))
    put("safetensors", "scalar_empty.safetensors", safetensors([
        ("scalar", np.array(2.0, np.float32), "F32"),
        ("empty", np.zeros((0, 4), np.float32), "F32"),
        ("big_rank", np.ones((1,) * 8, np.float32), "F32")]))
    # misaligned data (a 1-byte tensor first), no padding
    put("safetensors", "misaligned.safetensors",
        safetensors([("u", np.array([7], np.uint8), "U8"), ("w", f32, "F32")], align=1))
    put("safetensors", "vit_names.safetensors", safetensors([
        ("visual.conv1.weight", np.zeros((4, 3, 2, 2), np.float32), "F32"),
        ("visual.transformer.resblocks.0.ln_1.weight", np.ones(4, np.float32), "F32"),
        ("logit_scale", np.array(4.6, np.float32), "F32")]))
    # refused as they stand: overlapping offsets, an unknown dtype
    ov = bytearray(safetensors([("a", f32, "F32"), ("b", f32, "F32")]))
    ov = ov.replace(b'"data_offsets":[24,48]', b'"data_offsets":[12,36]')
    put("safetensors", "overlap.safetensors", bytes(ov))
    put("safetensors", "dtype_c64.safetensors",
        safetensors([("z", np.zeros(2, np.complex64), "C64")]))


def bert_config_seeds():
    base = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "vocab_size": 21128, "max_position_embeddings": 512, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "model_type": "bert", "pad_token_id": 0}
    put("bert_config", "bert_base_chinese.json", json.dumps(base, indent=2).encode())
    put("bert_config", "tiny.json", json.dumps(dict(base, hidden_size=64, num_attention_heads=4,
                                                    intermediate_size=128, vocab_size=256,
                                                    num_hidden_layers=2)).encode())
    put("bert_config", "some_keys.json", b'{"num_attention_heads": 16, "layer_norm_eps": 1e-5}')
    put("bert_config", "empty_object.json", b"{}")
    put("bert_config", "relu.json", json.dumps(dict(base, hidden_act="relu")).encode())
    put("bert_config", "heads_2e32.json", b'{"num_attention_heads": 4294967296}')


def annotation_seeds():
    put("annotations", "flickr_style.json", json.dumps([
        {"image": "flickr8k-images/2090545563_a4e66ec76b.jpg",
         "caption": ["在玩滑板的两个女孩。", "小孩趴在滑板车上。"]},
        {"image": "flickr8k-images/3393035454_2d2370ffd4.jpg", "caption": ["一个男孩在跳跃。"]},
    ], ensure_ascii=False, indent=1).encode())
    put("annotations", "duplicates.json", json.dumps([
        {"image": "a.jpg", "caption": ["1", "2"]}, {"image": "b.jpg", "caption": "3"},
        {"image": "./a.jpg", "captions": ["4"]}, {"image": "d\\a.jpg"}, {"image": "/a.jpg",
                                                                         "caption": []}]).encode())
    put("annotations", "paths.json", json.dumps([
        {"image": "../outside/x.jpg"}, {"image": "in/../a.jpg"}, {"image": "out/etc/x"},
        {"image": "/abs/a.jpg"}, {"image": "a/./b/../../c.jpg"}, {"image": ""},
        {"image": "in/a.jpg"}]).encode())
    put("annotations", "bad_caption.json", b'[{"image": "a.jpg", "caption": ["x", 7]}]')
    put("annotations", "empty_list.json", b"[]")
    # found by fuzz_annotations (libFuzzer, UBSan): an empty path first, an empty strmap key
    put("annotations", "found_empty_image_first.json", b'[{"image": ""}, {"image": ""}]')


def main():
    npy_seeds()
    tar_seeds()
    safetensors_seeds()
    bert_config_seeds()
    annotation_seeds()
    for d in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, d))
        size = sum(os.path.getsize(os.path.join(OUT, d, f)) for f in files)
        print("%s: %d seeds, %d bytes" % (d, len(files), size), file=sys.stderr)


if __name__ == "__main__":
    main()
