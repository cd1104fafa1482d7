#!/usr/bin/env bats
# clip-embed: embeddings of the tiny fixture model against PyTorch's
# (tests/ref/model_ref.py), batching, chaining into clip-recall, and one-line
# errors naming the sample.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    EMBED="$BIN/clip-embed"
    FIX="$ROOT/tests/fixtures/model"
    MODEL="$FIX/joint.pth"
    T="$BATS_TEST_TMPDIR"
    set -o pipefail # clip-embed | clip-recall: a failing clip-embed fails the test
}

# mkstream OUT [MODE]: one sample a fixture image (32x32) with its caption
# (ids_bert row i) and a json field; MODE: "small" (16x16 images),
# "float" (float32 pixels), "bare" (a sample with only a json field),
# "oov" (a token id outside the 256-id vocabulary).
mkstream() {
    /usr/bin/python3 - "$1" "$FIX" "${2:-}" <<'PY'
import io, sys, tarfile
import numpy as np
out, fix, mode = sys.argv[1:]
px = np.load(f"{fix}/pixels.npy")
ids = np.load(f"{fix}/ids_bert.npy")
def add(tf, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))
def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()
with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tf:
    for i in range(len(px)):
        key = f"s{i:03d}"
        img = px[i]
        if mode == "small": img = img[:16, :16]
        if mode == "float": img = img.astype(np.float32)
        tok = ids[i:i + 1].copy()
        if mode == "oov" and i == 1: tok[0, 2] = 300
        add(tf, f"{key}.json", b'{"captions": ["x"]}')
        if not (mode == "bare" and i == 2):
            add(tf, f"{key}.img.npy", npy(img))
            add(tf, f"{key}.tok.npy", npy(tok))
PY
}

# check_against_ref STREAM [MIN_COS]: img_emb/txt_emb of every sample vs the
# fixture's PyTorch embeddings, cosine >= MIN_COS (0.9999); json passed
# through, order kept.
check_against_ref() {
    /usr/bin/python3 - "$1" "$FIX" "${2:-0.9999}" <<'PY'
import io, sys, tarfile
import numpy as np
path, fix, min_cos = sys.argv[1:]
min_cos = float(min_cos)
want_img = np.load(f"{fix}/joint_img.npy")
want_txt = np.load(f"{fix}/joint_txt.npy")
fields = {}
keys = []
with tarfile.open(path) as tf:
    for m in tf:
        key, field = m.name.split(".", 1)
        if key not in keys: keys.append(key)
        fields[(key, field)] = tf.extractfile(m).read()
assert keys == [f"s{i:03d}" for i in range(len(want_img))], keys
cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
for i, key in enumerate(keys):
    assert fields[(key, "json")] == b'{"captions": ["x"]}'
    img = np.load(io.BytesIO(fields[(key, "img_emb.npy")]))
    txt = np.load(io.BytesIO(fields[(key, "txt_emb.npy")]))
    assert img.dtype == np.float32 and img.shape == (32,), (img.dtype, img.shape)
    assert txt.dtype == np.float32 and txt.shape == (1, 32), (txt.dtype, txt.shape)
    ci, ct = cos(img, want_img[i]), cos(txt[0], want_txt[i])
    assert ci >= min_cos and ct >= min_cos, (key, ci, ct)
    worst = min(worst, ci, ct) if i else min(ci, ct)
print(f"worst cosine {worst:.6f}")
PY
}

@test "clip-embed --help" {
    run "$EMBED" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: clip-embed"*"--model"*"--batch-size"*"--no-texts"* ]]
}

@test "clip-embed: embeddings match PyTorch (cosine >= 0.9999), stdin to stdout" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" < "$T/in.tar" > "$T/out.tar"
    check_against_ref "$T/out.tar"
}

@test "clip-embed: the same in batches of 2 and 1, files, one thread, progress" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" --batch-size 2 -i "$T/in.tar" -o "$T/b2.tar"
    check_against_ref "$T/b2.tar"
    run "$EMBED" --model "$MODEL" --batch-size 1 --threads 1 --progress -i "$T/in.tar" -o "$T/b1.tar"
    [ "$status" -eq 0 ]
    [[ "$output" == *"clip-embed"* ]]
    check_against_ref "$T/b1.tar"
}

@test "clip-embed --amp: bf16 products, within cosine 0.999 of PyTorch's fp32, not identical" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" --amp -i "$T/in.tar" -o "$T/amp.tar"
    check_against_ref "$T/amp.tar" 0.999
    "$EMBED" --model "$MODEL" -i "$T/in.tar" -o "$T/fp32.tar"
    run cmp -s "$T/amp.tar" "$T/fp32.tar"
    [ "$status" -eq 1 ] # they differ (2, a missing file, does not count)
}

@test "clip-embed --int8: int8 Linear layers, within cosine 0.99 of PyTorch's fp32, not identical" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" --int8 -i "$T/in.tar" -o "$T/int8.tar"
    check_against_ref "$T/int8.tar" 0.99
    "$EMBED" --model "$MODEL" --amp -i "$T/in.tar" -o "$T/amp.tar"
    run cmp -s "$T/int8.tar" "$T/amp.tar"
    [ "$status" -eq 1 ] # they differ (2, a missing file, does not count)
}

@test "clip-embed --no-images / --no-texts leave those fields alone" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" --no-images -i "$T/in.tar" -o "$T/t.tar"
    "$EMBED" --model "$MODEL" --no-texts -i "$T/in.tar" -o "$T/i.tar"
    run tar tf "$T/t.tar"
    [ "$status" -eq 0 ]
    [[ "$output" == *"s000.txt_emb.npy"* && "$output" == *"s000.img.npy"* && "$output" != *"img_emb"* ]]
    run tar tf "$T/i.tar"
    [ "$status" -eq 0 ]
    [[ "$output" == *"s000.img_emb.npy"* && "$output" == *"s000.tok.npy"* && "$output" != *"txt_emb"* ]]
}

@test "clip-embed | clip-recall prints the 11 keys" {
    mkstream "$T/in.tar"
    "$EMBED" --model "$MODEL" < "$T/in.tar" | "$BIN/clip-recall" > "$T/r.json"
    /usr/bin/python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); assert list(j) == "txt_r1 txt_r5 txt_r10 txt_r_mean img_r1 img_r5 img_r10 img_r_mean r_mean n_images n_texts".split() and j["n_images"] == 3 and j["n_texts"] == 3, j' "$T/r.json"
}

@test "clip-embed: an empty stream gives an empty stream" {
    : > "$T/empty.tar"
    run "$EMBED" --model "$MODEL" -i "$T/empty.tar" -o "$T/out.tar"
    [ "$status" -eq 0 ]
    run tar tf "$T/out.tar"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "clip-embed: a wrong image size names the sample and both sizes" {
    mkstream "$T/in.tar" small
    run "$EMBED" --model "$MODEL" -i "$T/in.tar" -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"s000"*"16x16"*"32x32"*"clip-prep --size 32"* ]]
    [ ! -e "$T/out.tar" ]
}

@test "clip-embed: wrong dtype, a sample with nothing to embed, an id outside the vocabulary" {
    mkstream "$T/f.tar" float
    run "$EMBED" --model "$MODEL" -i "$T/f.tar" -o /dev/null
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample s000"*"uint8"*"float32"* ]]
    mkstream "$T/b.tar" bare
    run "$EMBED" --model "$MODEL" -i "$T/b.tar" -o /dev/null
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample s002"*"img.npy"*"tok.npy"* ]]
    mkstream "$T/o.tar" oov
    run "$EMBED" --model "$MODEL" -i "$T/o.tar" -o /dev/null
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample s001"*"300"*"vocabulary"* ]]
}

@test "clip-embed: a missing model file, no --model, another device" {
    run "$EMBED" --model "$T/no-such.pth" -i /dev/null
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"no-such.pth"* ]]
    run "$EMBED" -i /dev/null
    [ "$status" -eq 2 ] # a usage error, as in every tool
    [[ "$output" == *"--model"* ]]
    run "$EMBED" --model "$MODEL" --device cuda
    [ "$status" -eq 1 ]
    [[ "$output" == *"device 'cuda': this build has no cuda backend (available: cpu)"* ]]
}

@test "clip-embed: what loading noticed is a warning on stderr, and the run goes on" {
    mkstream "$T/in.tar"
    # the English checkpoint + a BERT directory: no text_projection for BERT
    run "$EMBED" --model "$FIX/openai.pth" --text-model "$FIX/bert" --no-images -i "$T/in.tar" \
        -o "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "${lines[0]}" == "clip-embed: no text_projection for the BERT tower: initialising [64, 32] from N(0, 64^-0.5)" ]]
    [ -s "$T/out.tar" ]
}
