#!/usr/bin/env bats
# clip-train --grad-checkpointing through the real program: each block keeps
# only its input and is recomputed in the backward, the same arithmetic, so a
# run logs the plain run's losses and saves its weights bit for bit (BERT and
# the English tower, fp32 and bf16, with --accum-freq), PyTorch's losses
# (tests/fixtures/train), and the banner reports the smaller activations.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    TRAIN="$BIN/clip-train"
    FIX="$ROOT/tests/fixtures/train"
    T="$BATS_TEST_TMPDIR"
    DET=(--no-shuffle --no-augment --caption first)
}

# field NAME FILE: the values of a numeric key in a JSON-lines log, one per line
field() {
    grep -o "\"$1\":[-0-9.e]*" "$2" | cut -d: -f2
}

# same_as_plain ARGS...: with and without --grad-checkpointing, the same
# logged losses and gradient norms and the same saved weights, bit for bit
same_as_plain() {
    "$TRAIN" "$@" --save "$T/plain.safetensors" --log "$T/plain.jsonl" --quiet
    "$TRAIN" "$@" --grad-checkpointing --save "$T/ckpt.safetensors" --log "$T/ckpt.jsonl" --quiet
    [ "$(field loss "$T/ckpt.jsonl" | wc -l)" -ge 3 ]
    diff <(field loss "$T/plain.jsonl") <(field loss "$T/ckpt.jsonl")
    diff <(field grad_norm "$T/plain.jsonl") <(field grad_norm "$T/ckpt.jsonl")
    cmp "$T/plain.safetensors" "$T/ckpt.safetensors"
}

@test "--grad-checkpointing is in --help" {
    run "$TRAIN" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--grad-checkpointing"* ]]
}

@test "--grad-checkpointing: BERT, the plain run's losses and weights bit for bit" {
    same_as_plain --init "$FIX/init.pth" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 4 \
        --steps 4 --lr 1e-3 --warmup 2
}

@test "--grad-checkpointing: the English tower, bit for bit" {
    same_as_plain --init "$FIX/en/init.safetensors" --train "$FIX/en/train.tar" -b 4 --steps 4 \
        --lr 1e-3 --warmup 2
}

@test "--grad-checkpointing --amp --accum-freq 2: bit for bit" {
    same_as_plain --init "$FIX/init.pth" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 2 \
        --accum-freq 2 --steps 3 --amp --lr 1e-3 --warmup 2
}

@test "--grad-checkpointing --mask-ratio 0.5: the recompute over the kept patches, bit for bit" {
    same_as_plain --init "$FIX/init.pth" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 4 \
        --steps 3 --mask-ratio 0.5 --lr 1e-3 --warmup 2
}

@test "--grad-checkpointing with partly locked towers and --mask-ratio: bit for bit" {
    same_as_plain --init "$FIX/init.pth" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 4 \
        --steps 3 --lock-image-unlocked-groups 3 --lock-text-unlocked-layers 1 --mask-ratio 0.5 \
        --lr 1e-3 --warmup 2
}

@test "--grad-checkpointing from scratch (--arch tiny): bit for bit" {
    same_as_plain --arch tiny --train "$FIX/train.tar" -b 4 --steps 3 --seed 3
}

@test "--grad-checkpointing: the logged losses are PyTorch's run 'cosine' (|diff| <= 2e-3)" {
    "$TRAIN" --init "$FIX/init.pth" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 4 \
        --steps 6 "${DET[@]}" --lr 1e-3 --warmup 2 --wd 0.01 --grad-checkpointing \
        --log "$T/log.jsonl" --quiet
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["cosine"]["loss"])))' \
        "$FIX/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 6 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "the banner reports the activations kept: fewer with --grad-checkpointing, the rest the same" {
    args=(--arch small,resolution=64 --train "$FIX/train.tar" -b 4 --steps 1 --quiet)
    run "$TRAIN" "${args[@]}"
    [ "$status" -eq 0 ]
    plain=$(sed -n 's/^clip-train: memory: activations \([0-9.]*\) MiB, .*/\1/p' <<< "$output")
    rest=$(sed -n 's/^clip-train: memory: activations [0-9.]* MiB, //p' <<< "$output")
    run "$TRAIN" "${args[@]}" --grad-checkpointing
    [ "$status" -eq 0 ]
    ckpt=$(sed -n 's/^clip-train: memory: activations \([0-9.]*\) MiB (gradient checkpointing: block inputs), .*/\1/p' <<< "$output")
    [ -n "$plain" ]
    [ -n "$ckpt" ]
    [ -n "$rest" ]
    [[ "$output" == *"(gradient checkpointing: block inputs), $rest"* ]]
    # 6 ViT and 4 BERT layers: at most half the plain run's
    awk -v c="$ckpt" -v p="$plain" 'BEGIN { exit !(c > 0 && c <= p / 2) }'
}

@test "--grad-checkpointing takes no value: usage error, exit 2" {
    run "$TRAIN" --arch tiny --train "$FIX/train.tar" --grad-checkpointing=1
    [ "$status" -eq 2 ]
    [[ "$output" == *"grad-checkpointing"* ]]
}
