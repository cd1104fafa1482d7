#!/usr/bin/env bats
# clip-train as a user runs it: the PyTorch reference's losses through the
# CLI (tests/fixtures/train, tests/ref/train_ref.py), the saved checkpoints
# read back by clip-embed | clip-recall, resume after a stop, from-scratch
# models, streams, and one-line errors.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    TRAIN="$BIN/clip-train"
    FIX="$ROOT/tests/fixtures/train"
    T="$BATS_TEST_TMPDIR"
    INIT=(--init "$FIX/init.pth" --text-model "$FIX/bert")
    DET=(--no-shuffle --no-augment --caption first)
    set -o pipefail # clip-embed | clip-recall: a failing clip-embed fails the test
}

teardown() {
    [ -z "${pid:-}" ] || kill "$pid" 2>/dev/null || true
}

# field NAME FILE: the values of a numeric key in a JSON-lines log, one per line
field() {
    grep -o "\"$1\":[-0-9.e]*" "$2" | cut -d: -f2
}

@test "--help: usage on stdout, exit 0" {
    run "$TRAIN" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: clip-train"* ]]
    [[ "$output" == *"--resume"* ]]
}

@test "the logged losses are PyTorch's, step for step (run 'cosine', |diff| <= 2e-3)" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 6 "${DET[@]}" --lr 1e-3 \
        --warmup 2 --wd 0.01 --log "$T/log.jsonl" --quiet
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["cosine"]["loss"])))' \
        "$FIX/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 6 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "gradient clipping + constant schedule match PyTorch's run 'clip'" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 "${DET[@]}" --lr 2e-3 \
        --warmup 0 --wd 0.1 --schedule constant --grad-clip 0.5 --log "$T/log.jsonl" --quiet
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["clip"]["loss"])))' \
        "$FIX/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 4 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "--mask-ratio 0.5: the losses of PyTorch's patch dropout given the same kept patches (--seed 7)" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 5 "${DET[@]}" --lr 1e-3 \
        --warmup 2 --wd 0.01 --seed 7 --mask-ratio 0.5 --log "$T/log.jsonl" 2> "$T/err"
    grep -q "patch dropout: each training image keeps 8 of its 16 patches" "$T/err"
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["mask"]["loss"])))' \
        "$FIX/mask/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 5 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
    # another seed, other patches: another first loss
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" --seed 8 \
        --mask-ratio 0.5 --log "$T/seed8.jsonl" --quiet
    [ "$(field loss "$T/seed8.jsonl")" != "$(head -1 "$T/got")" ]
}

@test "--mask-ratio: a value outside [0, 1) or not a number is a one-line usage error, exit 2" {
    for v in 1 1.0 1.5 -0.1 abc '' 0.5x nan; do
        run "$TRAIN" --arch tiny --train "$FIX/train.tar" --mask-ratio "$v"
        [ "$status" -eq 2 ]
        [ "${#lines[@]}" -eq 1 ]
        [[ "$output" == "clip-train: --mask-ratio: '$v' is not a number in [0, 1)"* ]]
    done
}

@test "--val: recall before training equals the reference's; after each epoch it is logged" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" --val "$FIX/val.tar" --eval-at-start -b 4 \
        --epochs 2 --log "$T/log.jsonl" --quiet
    [ "$(grep -c '"val"' "$T/log.jsonl")" -eq 3 ]
    head -1 "$T/log.jsonl" | grep -q '"txt_r1":37.5,"txt_r5":62.5,"txt_r10":87.5'
    head -1 "$T/log.jsonl" | grep -q '"img_r1":6.25,"img_r5":62.5,"img_r10":100'
}

@test "a saved .pth and .safetensors embed with clip-embed to the recall training measured" {
    for ext in pth safetensors; do
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" --val "$FIX/val.tar" -b 4 --steps 5 \
            --lr 1e-3 --save "$T/m.$ext" --log "$T/log.$ext" --quiet
        [ -f "$T/m.$ext" ]
        [ -f "$T/m.$ext.state" ]
    done
    # both formats record the text tower's 2 heads: no --text-model needed (width/64 gives 1)
    "$BIN/clip-embed" --model "$T/m.pth" -i "$FIX/val.tar" |
        "$BIN/clip-recall" > "$T/r.pth"
    "$BIN/clip-embed" --model "$T/m.safetensors" -i "$FIX/val.tar" | "$BIN/clip-recall" > "$T/r.st"
    want=$(tail -1 "$T/log.pth" | grep -o '"r_mean":[0-9.]*' | cut -d: -f2)
    got=$(grep -o '"r_mean": *[0-9.]*' "$T/r.pth" | tr -d ' ' | cut -d: -f2)
    [ -n "$want" ]
    [ -n "$got" ]
    awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; exit !(d < 1e-3 && d > -1e-3) }'
    cmp <(grep -v '^$' "$T/r.pth") <(grep -v '^$' "$T/r.st")
}

@test "a stopped run resumed with --resume ends bit-identical to an uninterrupted one" {
    args=("${INIT[@]}" --train "$FIX/train.tar" -b 4 --epochs 3 --lr 1e-3 --warmup 2 --seed 7 --quiet)
    "$TRAIN" "${args[@]}" --save "$T/a.pth" --log "$T/a.jsonl"
    run "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --stop-after 4
    [ "$status" -eq 0 ]
    [[ "$output" == *"--resume continues"* ]]
    "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --resume
    cmp "$T/a.pth" "$T/b.pth"
    field loss "$T/a.jsonl" > "$T/a.loss"
    field loss "$T/b.jsonl" > "$T/b.loss"
    [ "$(wc -l < "$T/a.loss")" -eq 9 ] # 3 epochs of 3 batches
    diff "$T/a.loss" "$T/b.loss"
}

@test "SIGTERM: exit 143 after saving the state; --resume continues from that step to the end" {
    args=(--arch tiny --train "$FIX/train.tar" -b 4 --steps 400 --quiet --save "$T/m.safetensors"
          --log "$T/log.jsonl")
    "$TRAIN" "${args[@]}" 2> "$T/err" &
    pid=$!
    # signal once a step is logged: the handler is installed and training is under way
    for _ in $(seq 600); do
        if [ -s "$T/log.jsonl" ]; then break; fi
        sleep 0.05
    done
    [ -s "$T/log.jsonl" ]
    kill -TERM "$pid"
    st=0
    wait "$pid" || st=$?
    pid=
    cat "$T/err"
    [ "$st" -eq 143 ] # clip-train(1): 128 + the signal number
    n=$(sed -n 's/^clip-train: Terminated at step \([0-9]*\): saved; the same command with --resume continues$/\1/p' "$T/err")
    [ -n "$n" ]
    [ "$n" -lt 400 ]
    [ "$(tail -1 "$T/log.jsonl" | grep -o '"step":[0-9]*')" = "\"step\":$n" ]
    [ -s "$T/m.safetensors" ]
    [ -s "$T/m.safetensors.state" ]
    run "$TRAIN" "${args[@]}" --resume
    [ "$status" -eq 0 ]
    [[ "$output" == *"resuming $T/m.safetensors.state at step $n "* ]]
    # the log, appended to: steps 1 to 400, each once
    field step "$T/log.jsonl" > "$T/steps"
    seq 400 | diff - "$T/steps"
}

@test "--arch: a from-scratch model trains with augmentation, loss finite and falling" {
    "$TRAIN" --arch tiny,embed_dim=64 --train "$FIX/train.tar" -b 12 --steps 30 --lr 2e-3 \
        --warmup 3 --log "$T/log.jsonl" --save "$T/s.safetensors" --quiet
    field loss "$T/log.jsonl" | awk 'NR <= 3 { a += $1 } NR > 27 { b += $1 } END { exit !(b < a) }'
    "$BIN/clip-embed" --model "$T/s.safetensors" -i "$FIX/val.tar" | "$BIN/clip-recall" | grep -q r_mean
}

@test "a stream on stdin trains for --steps; without --steps it is refused" {
    "$TRAIN" --arch tiny --train - -b 4 --steps 3 --log "$T/log.jsonl" --quiet < "$FIX/train.tar"
    [ "$(grep -c loss "$T/log.jsonl")" -eq 3 ]
    run "$TRAIN" --arch tiny --train - -b 4 < "$FIX/train.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"give --steps"* ]]
    run "$TRAIN" --arch tiny --train - -b 4 --steps 5 --log "$T/log2.jsonl" < "$FIX/train.tar"
    [ "$status" -eq 0 ]
    [[ "$output" == *"stream ended after 3 steps"* ]]
}

@test "a NaN loss stops with a message naming the step, and saves" {
    "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 4 --steps 1 --save "$T/ok.safetensors" --quiet
    # poison visual.proj with NaN (safetensors: 8-byte header length, JSON header, data)
    /usr/bin/python3 - "$T/ok.safetensors" "$T/nan.safetensors" <<'PY'
import json, struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
n, = struct.unpack("<Q", data[:8])
b, e = json.loads(data[8:8 + n])["visual.proj"]["data_offsets"]
data[8 + n + b:8 + n + e] = struct.pack("<f", float("nan")) * ((e - b) // 4)
open(sys.argv[2], "wb").write(data)
PY
    run "$TRAIN" --init "$T/nan.safetensors" --train "$FIX/train.tar" -b 4 --steps 3 --save "$T/after.pth"
    [ "$status" -ne 0 ]
    [[ "$output" == *"step 1 (epoch 1): the loss is NaN"* ]]
    [ -f "$T/after.pth" ]
    [ -f "$T/after.pth.state" ]
}

@test "bad input: one-line errors naming the file or sample, non-zero exit" {
    run "$TRAIN" --train "$FIX/train.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"no model"* ]]
    run "$TRAIN" --arch tiny
    [ "$status" -ne 0 ]
    [[ "$output" == *"no training data"* ]]
    run "$TRAIN" --arch huge --train "$FIX/train.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"arch 'huge'"* ]]
    run "$TRAIN" --arch tiny --train "$FIX/train.tar" --device sdaa:0
    [ "$status" -ne 0 ]
    [[ "$output" == *"no sdaa backend"* ]]
    run "$TRAIN" --arch tiny,vocab=100 --train "$FIX/train.tar" -b 4 --steps 2
    [ "$status" -ne 0 ]
    [[ "$output" == *"tok.npy row"*"outside the vocabulary of 100"* ]]
    run "$TRAIN" --arch tiny --train "$T/missing.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"missing.tar"* ]]
    run "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 64
    [ "$status" -ne 0 ]
    [[ "$output" == *"fewer than one batch"* ]]
    run "$TRAIN" --init "$ROOT/tests/fixtures/model/bert/config.json" --train "$FIX/train.tar" -b 4
    [ "$status" -ne 0 ]
    [[ "$output" == *"config.json"* ]]
    # truncated data: the sample file index fails naming the file
    head -c 30000 "$FIX/train.tar" > "$T/cut.tar"
    run "$TRAIN" --arch tiny --train "$T/cut.tar" -b 4 --steps 2
    [ "$status" -ne 0 ]
    [[ "$output" == *"cut.tar"* ]]
    # a sample without tok.npy
    tar -cf "$T/notok.tar" -C "$T" --files-from /dev/null
    /usr/bin/python3 - "$FIX/train.tar" "$T/notok.tar" <<'PY'
import sys, tarfile
src, dst = tarfile.open(sys.argv[1]), tarfile.open(sys.argv[2], "w", format=tarfile.USTAR_FORMAT)
for m in src.getmembers():
    if m.name != "s05.tok.npy":
        dst.addfile(m, src.extractfile(m))
dst.close()
PY
    run "$TRAIN" --arch tiny --train "$T/notok.tar" -b 4 --steps 3 --no-shuffle
    [ "$status" -ne 0 ]
    [[ "$output" == *"s05"* ]]
    [[ "$output" == *"tok.npy"* ]]
    [ "${#lines[@]}" -le 3 ]
}

@test "a saved .pth loads strictly into the PyTorch reference model, same embeddings" {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 3 --save "$T/m.pth" --quiet
    "$BIN/clip-embed" --model "$T/m.pth" --text-model "$FIX/bert" -i "$FIX/val.tar" -o "$T/emb.tar"
    /usr/bin/python3 "$ROOT/tests/ref/load_trained.py" "$T/m.pth" "$FIX/bert/config.json" "$T/emb.tar"
}

@test "--amp: bf16 matrix products stay within 2e-2 of PyTorch's fp32 losses" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 6 "${DET[@]}" --lr 1e-3 \
        --warmup 2 --amp --log "$T/log.jsonl" --quiet
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["cosine"]["loss"])))' \
        "$FIX/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 6 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-2) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
    run cmp -s "$T/got" "$T/want"
    [ "$status" -eq 1 ] # they differ: bf16 really is in use
}

@test "make plots draws the loss and recall curves of a run's log" {
    command -v gnuplot >/dev/null || skip "no gnuplot (make deps)"
    mkdir -p "$T/run"
    "$TRAIN" --arch tiny --train "$FIX/train.tar" --val "$FIX/val.tar" --eval-at-start -b 4 \
        --epochs 3 --log "$T/run/log.jsonl" --quiet
    make -s -C "$ROOT" plots RUN="$T/run" > /dev/null
    [ "$(wc -l < "$T/run/recall.dat")" -eq 4 ]
    [ "$(wc -l < "$T/run/loss.dat")" -eq 9 ]
    head -c 8 "$T/run/loss.png" | od -An -c | grep -q 'P   N   G'
    head -c 8 "$T/run/recall.png" | od -An -c | grep -q 'P   N   G'
}

@test "--init: what loading noticed (no text_projection, unused tensors) is a warning on stderr" {
    SEED="$ROOT/tests/fixtures/model"
    run "$TRAIN" --init "$SEED/openai.pth" --text-model "$SEED/bert" --train "$FIX/train.tar" \
        -b 4 --steps 1 --quiet
    [ "$status" -eq 0 ]
    [[ "$output" == *"clip-train: no text_projection for the BERT tower: initialising [64, 32] from N(0, 64^-0.5)"* ]]
    [[ "$output" == *"clip-train: $SEED/openai.pth: 26 tensors not used by the model, left alone (positional_embedding, "* ]]
}

@test "--train shards in brace notation: the same steps as the one file they were cut from" {
    # cut train.tar at sample boundaries into 2 shards with Python's tarfile
    /usr/bin/python3 - "$FIX/train.tar" "$T" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m, _ in members))
half = set(keys[: len(keys) // 2 + 1])
outs = [tarfile.open(f"{sys.argv[2]}/part-{i}.tar", "w", format=tarfile.PAX_FORMAT) for i in range(2)]
for m, data in members:
    outs[0 if m.name.split(".", 1)[0] in half else 1].addfile(m, io.BytesIO(data))
for o in outs:
    o.close()
PY
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 3 "${DET[@]}" --lr 1e-3 \
        --log "$T/one.jsonl" --quiet
    "$TRAIN" "${INIT[@]}" --train "$T/part-{0..1}.tar" -b 4 --steps 3 "${DET[@]}" --lr 1e-3 \
        --log "$T/shards.jsonl" --quiet
    field loss "$T/one.jsonl" > "$T/one"
    field loss "$T/shards.jsonl" > "$T/shards"
    [ "$(wc -l < "$T/one")" -eq 3 ]
    run diff "$T/one" "$T/shards"
    [ "$status" -eq 0 ]
}
