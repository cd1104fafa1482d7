#!/usr/bin/env bats
# clip-train with OpenAI CLIP's English text tower: fine-tuning an OpenAI
# checkpoint whole (the PyTorch reference's losses, tests/fixtures/train/en,
# tests/ref/train_ref.py english), a model from scratch (--arch ...,text=clip)
# on captions tokenised with clip-tokenize --bpe, what clip-embed makes of the
# saved checkpoints, their strict load into the reference model, resuming.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    TRAIN="$BIN/clip-train"
    EN="$ROOT/tests/fixtures/train/en"
    T="$BATS_TEST_TMPDIR"
    DET=(--no-shuffle --no-augment --caption first)
    set -o pipefail
}

needs_torch() {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
}

# field NAME FILE: the values of a numeric key in a JSON-lines log, one per line
field() {
    grep -o "\"$1\":[-0-9.e]*" "$2" | cut -d: -f2
}

# the English fixture's captions as clip-tokenize --bpe gives them (OpenAI's
# BPE, 77 ids: SOT ... EOT 0...)
bpe_samples() {
    "$BIN/clip-tokenize" --bpe < "$EN/train.tar" > "$T/bpe.tar"
}

@test "--init an OpenAI checkpoint: the whole model trains, losses PyTorch's step for step (|diff| <= 2e-3)" {
    "$TRAIN" --init "$EN/init.safetensors" --train "$EN/train.tar" -b 4 --steps 5 "${DET[@]}" \
        --lr 1e-3 --warmup 2 --wd 0.1 --log "$T/log.jsonl" --quiet 2> "$T/err"
    cat "$T/err"
    run grep -c "not used by the model" "$T/err"
    [ "$output" = 0 ] # every tensor of the init trains: none left alone
    field loss "$T/log.jsonl" > "$T/got"
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["runs"]["english"]["loss"])))' \
        "$EN/expected.json" > "$T/want"
    [ "$(wc -l < "$T/got")" -eq 5 ]
    paste "$T/got" "$T/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

@test "the banner names the English tower and its recorded heads" {
    run "$TRAIN" --init "$EN/init.safetensors" --train "$EN/train.tar" -b 4 --steps 1 --quiet
    [ "$status" -eq 0 ]
    [[ "$output" == *"ViT 64x2 patch 8 @32, CLIP text 64x2 (2 heads), dim 32;"* ]]
}

@test "--arch tiny,text=clip on BPE captions: trains, saves .pth and .safetensors, clip-embed embeds with them" {
    bpe_samples
    for ext in pth safetensors; do
        "$TRAIN" --arch tiny,text=clip --train "$T/bpe.tar" -b 4 --steps 3 --lr 2e-3 --warmup 2 \
            --save "$T/m.$ext" --log "$T/log.$ext" --quiet
        [ -s "$T/m.$ext" ]
        [ -s "$T/m.$ext.state" ]
        [ "$(field loss "$T/log.$ext" | wc -l)" -eq 3 ]
        field loss "$T/log.$ext" | awk '{ if ($1 != $1 + 0 || $1 <= 0) exit 1 }'
    done
    # the same seed and data: the two formats hold the same model
    diff <(field loss "$T/log.pth") <(field loss "$T/log.safetensors")
    for ext in pth safetensors; do
        "$BIN/clip-embed" --model "$T/m.$ext" -i "$T/bpe.tar" -o "$T/emb.$ext.tar"
        "$BIN/clip-recall" -i "$T/emb.$ext.tar" > "$T/r.$ext"
        grep -q '"n_texts": 24' "$T/r.$ext"
    done
    cmp "$T/r.pth" "$T/r.safetensors"
    # English tokens past a WordPiece vocabulary: BERT's tower refuses them, naming the sample
    run "$TRAIN" --arch tiny,max_pos=77 --train "$T/bpe.tar" -b 4 --steps 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"tok.npy row"*"outside the vocabulary of 21128"* ]]
}

@test "--arch ...,text=clip: a saved .pth loads strictly into PyTorch's OpenAI CLIP, same embeddings" {
    needs_torch
    bpe_samples
    "$TRAIN" --arch tiny,text=clip,text_heads=2 --train "$T/bpe.tar" -b 4 --steps 3 --lr 1e-3 \
        --save "$T/m.pth" --quiet
    "$BIN/clip-embed" --model "$T/m.pth" -i "$T/bpe.tar" -o "$T/emb.tar"
    run /usr/bin/python3 "$ROOT/tests/ref/load_strict.py" "$T/m.pth" --arch --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"model_ref.OpenAICLIP (the English tower): strict load ok"* ]]
    [[ "$output" == *"12 samples: max abs embedding difference"* ]]
}

@test "--init an OpenAI checkpoint: the saved .pth loads strictly into the init's reference models" {
    needs_torch
    "$TRAIN" --init "$EN/init.safetensors" --train "$EN/train.tar" -b 4 --steps 3 --lr 1e-3 \
        --save "$T/m.pth" --quiet
    "$BIN/clip-embed" --model "$T/m.pth" -i "$EN/train.tar" -o "$T/emb.tar"
    run /usr/bin/python3 "$ROOT/tests/ref/load_strict.py" "$T/m.pth" --init "$EN/init.safetensors" \
        --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"the init's key contract: strict load ok"* ]]
    [[ "$output" == *"model_ref.OpenAICLIP of the init: strict load ok"* ]]
}

@test "an English run stopped and resumed with --resume ends bit-identical to an uninterrupted one" {
    args=(--init "$EN/init.safetensors" --train "$EN/train.tar" -b 4 --epochs 2 --lr 1e-3
          --warmup 2 --seed 3 --quiet)
    "$TRAIN" "${args[@]}" --save "$T/a.pth" --log "$T/a.jsonl"
    "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --stop-after 4
    "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --resume
    cmp "$T/a.pth" "$T/b.pth"
    [ "$(field loss "$T/b.jsonl" | wc -l)" -eq 6 ]
    diff <(field loss "$T/a.jsonl") <(field loss "$T/b.jsonl")
}

@test "--arch text=: bert or clip, anything else is a one-line error" {
    run "$TRAIN" --arch tiny,text=gpt --train "$EN/train.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"arch 'tiny,text=gpt'"*"text=bert|clip"* ]]
    [ "${#lines[@]}" -eq 1 ]
    run "$TRAIN" --arch tiny,text=bert --train "$EN/train.tar" -b 4 --steps 1 --quiet
    [ "$status" -eq 0 ]
    [[ "$output" == *", BERT 64x2 (1 heads),"* ]]
}
