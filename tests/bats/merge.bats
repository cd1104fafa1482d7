#!/usr/bin/env bats
# clip-merge (WiSE-FT) against the NumPy reference tests/ref/merge_ref.py.

setup() {
    BIN=${CLIP_BIN:-bin}
    TMP=$(mktemp -d)
    /usr/bin/python3 tests/ref/merge_ref.py make "$TMP"
}

teardown() { rm -rf "$TMP"; }

merge_and_check() { # ALPHA
    run $BIN/clip-merge -q --alpha "$1" "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/m.safetensors"
    [ "$status" -eq 0 ]
    run /usr/bin/python3 tests/ref/merge_ref.py check "$1" "$TMP/m.safetensors" "$TMP/zero.safetensors" "$TMP/fine.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "clip-merge: alpha 0 and 1 give the inputs bit for bit" {
    merge_and_check 0
    merge_and_check 1
}

@test "clip-merge: alpha 0.5 is the element-wise mean, bit for bit" {
    merge_and_check 0.5
}

@test "clip-merge: other alphas within the float32 rounding bound, extrapolation too" {
    merge_and_check 0.3
    merge_and_check 1.25
}

@test "clip-merge: the default alpha is 0.5, and a .pth output holds the same tensors" {
    run $BIN/clip-merge "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/m.pth"
    [ "$status" -eq 0 ]
    [[ "$output" == *"0.5 x"* ]]
    # back to safetensors through alpha 0 (a bit-for-bit copy), then the reference's mean
    run $BIN/clip-merge -q --alpha 0 "$TMP/m.pth" "$TMP/zero.safetensors" -o "$TMP/m.safetensors"
    [ "$status" -eq 0 ]
    run /usr/bin/python3 tests/ref/merge_ref.py check 0.5 "$TMP/m.safetensors" "$TMP/zero.safetensors" "$TMP/fine.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "clip-merge: a .pth output loads in PyTorch with the interpolated tensors" {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
    run $BIN/clip-merge -q --alpha 0.5 "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/m.pth"
    [ "$status" -eq 0 ]
    run $BIN/clip-merge -q --alpha 0.5 "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/m.safetensors"
    [ "$status" -eq 0 ]
    run /usr/bin/python3 - "$TMP/m.pth" "$TMP/m.safetensors" <<'PY'
import sys, torch, numpy as np
sys.path.insert(0, "tests/ref")
from merge_ref import read_st
sd = torch.load(sys.argv[1], map_location="cpu")
st, _ = read_st(sys.argv[2])
assert list(sd) == list(st), (list(sd), list(st))
for k, v in sd.items():
    code, arr = st[k]
    got = v.view(torch.int16).numpy().view(np.uint16) if v.dtype == torch.bfloat16 else v.numpy()
    assert got.tobytes() == arr.tobytes(), k
print("same")
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "clip-merge: mismatched checkpoints are refused naming the tensor, and nothing is written" {
    for bad in missing:text_projection shape:'[5, 6]' dtype:float64 ints:'only floating' config:clip_config; do
        run $BIN/clip-merge "$TMP/zero.safetensors" "$TMP/${bad%%:*}.safetensors" -o "$TMP/out.safetensors"
        echo "$bad: $output"
        [ "$status" -eq 1 ]
        [ "${#lines[@]}" -eq 1 ]
        [[ "$output" == *"${bad#*:}"* ]]
        [[ "$output" == *"${bad%%:*}.safetensors"* ]]
        [ ! -e "$TMP/out.safetensors" ]
    done
    [ -z "$(ls -A "$TMP" | grep -v '\.safetensors$')" ]
}

@test "clip-merge: usage, a bad alpha, an unknown output format, a truncated input" {
    run $BIN/clip-merge "$TMP/zero.safetensors"
    [ "$status" -eq 2 ]
    [[ "$output" == *"usage"* ]]
    run $BIN/clip-merge --alpha half "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/o.pth"
    [ "$status" -ne 0 ]
    [[ "$output" == *"--alpha"* ]]
    run $BIN/clip-merge "$TMP/zero.safetensors" "$TMP/fine.safetensors" -o "$TMP/o.ckpt"
    [ "$status" -eq 1 ]
    [[ "$output" == *".safetensors or .pth"* ]]
    [ ! -e "$TMP/o.ckpt" ]
    head -c 200 "$TMP/fine.safetensors" > "$TMP/cut.safetensors"
    run $BIN/clip-merge "$TMP/zero.safetensors" "$TMP/cut.safetensors" -o "$TMP/o.pth"
    [ "$status" -eq 1 ]
    [[ "$output" == *"cut.safetensors"* ]]
    [ ! -e "$TMP/o.pth" ]
}
