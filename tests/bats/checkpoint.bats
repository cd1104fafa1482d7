#!/usr/bin/env bats
# Checkpoints we write must be readable by the reference tools: the format
# (torch.load, safetensors), and the key set of clip-train's saves, which
# must load with a strict load_state_dict into the reference model of what
# they were trained from (tests/ref/load_strict.py).

setup() {
    cd "$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-bin}"
    T="$BATS_TEST_TMPDIR"
    # the seed format of the real run (ViT-B-16-OpenAI.pth + the Hugging Face
    # directory bert-from-clip-chinese-1M): an OpenAI-style fp16 checkpoint
    # with the English tower, and a BERT directory (bert. names, gamma/beta,
    # position_ids, 4 heads in config.json)
    SEED=tests/fixtures/model
    # tests/ref's joint model (train_ref.py) and the training samples
    FIX=tests/fixtures/train
}

needs_torch() {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
}

# fine_tune INIT_ARGS...: 3 steps of clip-train from the init, saved to
# $T/m.pth, and clip-embed's embeddings of the validation samples ($T/emb.tar)
# from the .pth alone: its recorded head counts (4 and 2 text heads in the
# fixtures, where hidden / 64 would give 1), no --text-model
fine_tune() {
    "$BIN/clip-train" "$@" --train "$FIX/train.tar" -b 4 --steps 3 --lr 1e-3 --warmup 1 \
        --save "$T/m.pth" --quiet
    "$BIN/clip-embed" --model "$T/m.pth" -i "$FIX/val.tar" -o "$T/emb.tar"
}

@test "torch.load reads a .pth written by ckpt_save_pth, bit for bit" {
    /usr/bin/python3 -c 'import torch' 2>/dev/null || skip "PyTorch not installed (make deps-reference)"
    build/tests/test_checkpoint --write "$BATS_TEST_TMPDIR/ours.pth"
    run /usr/bin/python3 tests/ref/check_saved.py "$BATS_TEST_TMPDIR/ours.pth"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a .safetensors written by ckpt_save_safetensors matches the format, bit for bit" {
    [ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
    build/tests/test_checkpoint --write "$BATS_TEST_TMPDIR/ours.safetensors"
    run /usr/bin/python3 tests/ref/check_saved.py "$BATS_TEST_TMPDIR/ours.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a .pth fine-tuned from a seed-format init (BERT with position_ids) loads strictly into the init's reference models" {
    needs_torch
    fine_tune --init "$SEED/openai.pth" --text-model "$SEED/bert"
    run /usr/bin/python3 tests/ref/load_strict.py "$T/m.pth" --init "$SEED/openai.pth" \
        --text-model "$SEED/bert" --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"BERT weights with embeddings.position_ids"* ]]
    [[ "$output" == *"model_ref.ChineseCLIP of the init (position_ids persistent): strict load ok"* ]]
}

@test "a .pth fine-tuned from a seed-format init without position_ids (transformers >= 4.31) loads strictly into its reference models" {
    needs_torch
    /usr/bin/python3 tests/ref/without_position_ids.py "$SEED/bert" "$T/bert"
    fine_tune --init "$SEED/openai.pth" --text-model "$T/bert"
    run /usr/bin/python3 tests/ref/load_strict.py "$T/m.pth" --init "$SEED/openai.pth" \
        --text-model "$T/bert" --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"BERT weights without embeddings.position_ids"* ]]
    [[ "$output" == *"the init's key contract: strict load ok"* ]]
    [[ "$output" == *"(position_ids persistent=False): strict load ok"* ]]
}

@test "a .pth fine-tuned from tests/ref's joint model, with and without position_ids, loads strictly into it" {
    needs_torch
    /usr/bin/python3 tests/ref/without_position_ids.py "$FIX/init.pth" "$T/init_new.pth"
    for init in "$FIX/init.pth" "$T/init_new.pth"; do
        fine_tune --init "$init" --text-model "$FIX/bert"
        run /usr/bin/python3 tests/ref/load_strict.py "$T/m.pth" --init "$init" \
            --text-model "$FIX/bert" --embedded "$T/emb.tar"
        echo "$output"
        [ "$status" -eq 0 ]
        [[ "$output" == *"model_ref.ChineseCLIP <- the init itself: strict load ok"* ]]
        [[ "$output" == *"model_ref.ChineseCLIP of the init"*": strict load ok"* ]]
    done
}

@test "a resumed run keeps saving the key set of its init" {
    needs_torch
    /usr/bin/python3 tests/ref/without_position_ids.py "$FIX/init.pth" "$T/init_new.pth"
    for init in "$FIX/init.pth" "$T/init_new.pth"; do
        rm -f "$T/m.pth" "$T/m.pth.state"
        args=(--init "$init" --text-model "$FIX/bert" --train "$FIX/train.tar" -b 4 --steps 4
              --save "$T/m.pth" --quiet)
        "$BIN/clip-train" "${args[@]}" --stop-after 2
        "$BIN/clip-train" "${args[@]}" --resume
        run /usr/bin/python3 tests/ref/load_strict.py "$T/m.pth" --init "$init" --text-model "$FIX/bert"
        echo "$output"
        [ "$status" -eq 0 ]
    done
}

@test "--arch saves follow current transformers (no position_ids); --position-ids adds the buffer" {
    needs_torch
    "$BIN/clip-train" --arch tiny,text_heads=4 --train "$FIX/train.tar" -b 4 --steps 2 \
        --save "$T/new.pth" --quiet
    "$BIN/clip-embed" --model "$T/new.pth" -i "$FIX/val.tar" -o "$T/emb.tar"
    run /usr/bin/python3 tests/ref/load_strict.py "$T/new.pth" --arch --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    run /usr/bin/python3 tests/ref/load_strict.py "$T/new.pth" --arch --position-ids
    [ "$status" -ne 0 ]
    [[ "$output" == *"Missing key(s) in state_dict: \"transformer.embeddings.position_ids\""* ]]

    "$BIN/clip-train" --arch tiny --position-ids --train "$FIX/train.tar" -b 4 --steps 2 \
        --save "$T/old.pth" --quiet
    run /usr/bin/python3 tests/ref/load_strict.py "$T/old.pth" --arch --position-ids
    echo "$output"
    [ "$status" -eq 0 ]
    run /usr/bin/python3 tests/ref/load_strict.py "$T/old.pth" --arch
    [ "$status" -ne 0 ]
    [[ "$output" == *"Unexpected key(s) in state_dict: \"transformer.embeddings.position_ids\""* ]]
}

@test "--position-ids goes with --arch only" {
    run "$BIN/clip-train" --init "$FIX/init.pth" --text-model "$FIX/bert" --position-ids \
        --train "$FIX/train.tar" -b 4 --steps 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"--position-ids goes with --arch"* ]]
    run "$BIN/clip-train" --help
    [[ "$output" == *"--position-ids"* ]]
}

@test "--arch image_heads=2: the record's head count builds PyTorch's model, same embeddings" {
    needs_torch
    "$BIN/clip-train" --arch tiny,image_heads=2,text_heads=4 --train "$FIX/train.tar" -b 4 \
        --steps 2 --save "$T/h.pth" --quiet
    "$BIN/clip-embed" --model "$T/h.pth" -i "$FIX/val.tar" -o "$T/emb.tar"
    run /usr/bin/python3 tests/ref/load_strict.py "$T/h.pth" --arch --embedded "$T/emb.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    run "$BIN/clip-train" --arch tiny,image_heads=3 --train "$FIX/train.tar" -b 4 --steps 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"image_width must be a positive multiple of image_heads"*"heads 3"* ]]
}
