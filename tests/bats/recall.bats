#!/usr/bin/env bats
# clip-recall: JSON keys and values on hand-checked and reference data,
# --table, --json-out, and one-line errors for bad streams.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    RECALL="${CLIP_BIN:-$ROOT/bin}/clip-recall"
    FIXTURE="$ROOT/tests/fixtures/recall"
    T="$BATS_TEST_TMPDIR"
}

# mkstream OUT 'PYTHON LIST of (key, {field: array})': an embedded stream.
mkstream() {
    /usr/bin/python3 - "$1" "$2" <<'EOF'
import io, sys, tarfile
import numpy as np
f32 = lambda *a: np.array(a, dtype="<f4")
samples = eval(sys.argv[2], {"np": np, "f32": f32, "nan": float("nan")})
with tarfile.open(sys.argv[1], "w", format=tarfile.USTAR_FORMAT) as tf:
    for key, fields in samples:
        for name, a in fields.items():
            b = io.BytesIO()
            np.save(b, a)
            ti = tarfile.TarInfo(f"{key}.{name}")
            ti.size = len(b.getvalue())
            tf.addfile(ti, io.BytesIO(b.getvalue()))
EOF
}

# 3 images, 4 captions: image->text all at rank 1; caption b/0 ranks its image
# second (image a scores 0.894 against its 0.447), the rest first.
HAND='[("a", {"img_emb.npy": f32(1,0,0), "txt_emb.npy": f32([1,0,0])}),
       ("b", {"img_emb.npy": f32(0,1,0), "txt_emb.npy": f32([2,1,0], [0,1,0])}),
       ("c", {"img_emb.npy": f32(0,0,1), "txt_emb.npy": f32([0.2,0,1])})]'

# check_json FILE 'python expression over j (the parsed JSON) that must hold'
check_json() {
    /usr/bin/python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); assert eval(sys.argv[2]), j' "$1" "$2"
}

@test "clip-recall --help" {
    run "$RECALL" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: clip-recall"*"--table"*"--json-out"* ]]
}

@test "clip-recall: hand-checked stream from stdin, exact keys and values" {
    mkstream "$T/s.tar" "$HAND"
    "$RECALL" < "$T/s.tar" > "$T/out.json"
    check_json "$T/out.json" 'list(j) == "txt_r1 txt_r5 txt_r10 txt_r_mean img_r1 img_r5 img_r10 img_r_mean r_mean n_images n_texts".split()'
    check_json "$T/out.json" 'j["txt_r1"] == j["txt_r5"] == j["txt_r10"] == j["txt_r_mean"] == 100'
    check_json "$T/out.json" 'j["img_r1"] == 75 and j["img_r5"] == j["img_r10"] == 100'
    check_json "$T/out.json" 'abs(j["img_r_mean"] - 275 / 3) < 1e-6 and abs(j["r_mean"] - 575 / 6) < 1e-6'
    check_json "$T/out.json" 'j["n_images"] == 3 and j["n_texts"] == 4'
}

@test "clip-recall: the fixture agrees with tests/ref/recall_ref.py" {
    "$RECALL" -i "$FIXTURE/embedded.tar" > "$T/out.json"
    /usr/bin/python3 - "$T/out.json" "$FIXTURE/expected.json" <<'EOF'
import json, sys
got, want = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["metrics"]
assert list(got) == list(want), (list(got), list(want))
for k in want:
    assert abs(got[k] - want[k]) < 1e-6, (k, got[k], want[k])
EOF
}

@test "clip-recall: recall_ref.py itself reproduces the committed fixture" {
    /usr/bin/python3 -c 'import numpy' 2>/dev/null || skip "no NumPy"
    /usr/bin/python3 "$ROOT/tests/ref/recall_ref.py" "$FIXTURE/embedded.tar" > "$T/ref.json"
    check_json "$T/ref.json" "j == json.load(open('$FIXTURE/expected.json'))['metrics']"
}

@test "clip-recall --table prints the table instead of the JSON; --json-out writes the JSON" {
    mkstream "$T/s.tar" "$HAND"
    run "$RECALL" -i "$T/s.tar" --table --json-out "$T/out.json"
    [ "$status" -eq 0 ]
    [[ "$output" != *"{"* ]]
    [[ "$output" == *"R@1"*"R@5"*"R@10"*"mean"* ]]
    squeezed="$(echo "$output" | tr -s ' ')"
    [[ "$squeezed" == *"image->text 100.00 100.00 100.00 100.00"* ]]
    [[ "$squeezed" == *"text->image 75.00 100.00 100.00 91.67"* ]]
    [[ "$squeezed" == *"overall 95.83"* ]]
    [[ "$output" == *"3 images, 4 captions"* ]]
    check_json "$T/out.json" 'j["img_r1"] == 75 and len(j) == 11'
}

@test "clip-recall: a sample without txt_emb.npy is named" {
    mkstream "$T/s.tar" '[("a", {"img_emb.npy": f32(1,0), "txt_emb.npy": f32([1,0])}),
                          ("dir/b", {"img_emb.npy": f32(0,1)})]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == "clip-recall: sample dir/b: no txt_emb.npy field" ]]
}

@test "clip-recall: a sample without img_emb.npy is named" {
    mkstream "$T/s.tar" '[("a", {"txt_emb.npy": f32([1,0])})]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample a: no img_emb.npy"* ]]
}

@test "clip-recall: empty stream" {
    mkstream "$T/s.tar" '[]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"empty stream"* ]]
}

@test "clip-recall: dimension mismatch and non-finite values are named" {
    mkstream "$T/s.tar" '[("a", {"img_emb.npy": f32(1,0), "txt_emb.npy": f32([1,0])}),
                          ("b", {"img_emb.npy": f32(0,1,0), "txt_emb.npy": f32([0,1,0])})]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample b: embedding dimension 3"*"expected 2"* ]]
    mkstream "$T/s.tar" '[("a", {"img_emb.npy": f32(1,0), "txt_emb.npy": f32([1,0], [nan,1])})]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"sample a: txt_emb.npy row 1 has a non-finite value"* ]]
}

@test "clip-recall: an image without captions is a distractor only" {
    mkstream "$T/s.tar" '[("a", {"img_emb.npy": f32(1,0), "txt_emb.npy": f32([1,0])}),
                          ("b", {"img_emb.npy": f32(0.6,0.8), "txt_emb.npy": np.zeros((0, 2), "<f4")}),
                          ("c", {"img_emb.npy": f32(0,1), "txt_emb.npy": f32([0.5,1])})]'
    run "$RECALL" -i "$T/s.tar"
    [ "$status" -eq 0 ]
    [[ "$output" == *"1 of 3 images have no captions"* ]]
    # image->text: 2 queries, both rank 1; caption c/0 (0.447, 0.894) scores
    # 0.984 with distractor b, above its own image's 0.894: rank 2
    "$RECALL" -i "$T/s.tar" 2>/dev/null > "$T/out.json"
    check_json "$T/out.json" 'j["n_images"] == 3 and j["n_texts"] == 2 and j["txt_r1"] == 100'
    check_json "$T/out.json" 'j["img_r1"] == 50 and j["img_r5"] == 100'
}
