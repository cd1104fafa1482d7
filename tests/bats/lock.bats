#!/usr/bin/env bats
# clip-train --lock-image / --lock-text through the real program: the saved
# checkpoint's locked tensors are the init's bit for bit (compared by
# SHA-256, tests/ref/tensor_digest.py, against the init written out by
# clip-merge --alpha 0, which reproduces it bit for bit), the trainable ones
# moved; the state round-trips with the same locks and refuses others; bad
# counts are usage errors. Parity with PyTorch: tests/unit/test_train.c.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    TRAIN="$BIN/clip-train"
    FIX="$ROOT/tests/fixtures/train"
    DIGEST="$ROOT/tests/ref/tensor_digest.py"
    T="$BATS_TEST_TMPDIR"
    INIT=(--init "$FIX/init.pth" --text-model "$FIX/bert")
    DET=(--no-shuffle --no-augment --caption first --lr 1e-3 --warmup 0 --quiet)
    [ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
}

# the locks as data: options ; tensors that must stay the init's ; tensors that must move
LOCKS=(
    "--lock-image;^visual\.;^text_projection$"
    "--freeze-vision;^visual\.;^transformer\.encoder\.layer\.0\.output\.dense\.weight$"
    "--lock-image-unlocked-groups 1;^visual\.(conv1|class_emb|positional|ln_pre|ln_post|transformer\.);^visual\.proj$"
    "--lock-image-unlocked-groups 2;^visual\.(conv1|class_emb|positional|ln_pre|transformer\.resblocks\.0\.);^visual\.(proj|ln_post\.weight|transformer\.resblocks\.1\.mlp\.c_fc\.weight)$"
    "--lock-text;^(transformer\.|ln_final\.|text_projection);^visual\.(proj|conv1\.weight)$"
    "--lock-text-unlocked-layers 1;^transformer\.(embeddings|encoder\.layer\.0\.);^(text_projection|transformer\.pooler\.dense\.weight|transformer\.encoder\.layer\.1\.intermediate\.dense\.weight)$"
    "--lock-image --lock-text;^(visual\.|transformer\.|ln_final\.|text_projection);^logit_scale$"
)

@test "locked tensors are saved bit-identical to the init, trainable ones move (every mode)" {
    "$BIN/clip-merge" --alpha 0 "$FIX/init.pth" "$FIX/init.pth" -o "$T/init.safetensors"
    for row in "${LOCKS[@]}"; do
        IFS=';' read -r opts locked moved <<< "$row"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 3 "${DET[@]}" $opts \
            --save "$T/m.safetensors"
        /usr/bin/python3 "$DIGEST" "$T/init.safetensors" "$locked" > "$T/want"
        /usr/bin/python3 "$DIGEST" "$T/m.safetensors" "$locked" > "$T/got"
        [ "$(wc -l < "$T/want")" -gt 0 ]
        diff "$T/want" "$T/got" || { echo "$opts: a locked tensor moved"; false; }
        /usr/bin/python3 "$DIGEST" "$T/init.safetensors" "$moved" > "$T/before"
        /usr/bin/python3 "$DIGEST" "$T/m.safetensors" "$moved" > "$T/after"
        [ -z "$(comm -12 "$T/before" "$T/after")" ] || { echo "$opts: a trainable tensor did not move"; false; }
    done
}

@test "--resume with the locks continues; with other locks it is refused naming both" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 --stop-after 2 "${DET[@]}" \
        --lock-image-unlocked-groups 2 --save "$T/m.safetensors"
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 "${DET[@]}" \
        --lock-image-unlocked-groups 2 --save "$T/whole.safetensors"
    cp "$T/m.safetensors.state" "$T/saved.state"
    run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 "${DET[@]}" --lock-image \
        --save "$T/m.safetensors" --resume
    [ "$status" -eq 1 ]
    [[ "$output" == *"m.safetensors.state: saved with image locked, 2 groups unlocked"* ]]
    [[ "$output" == *"this run has image locked, 0 groups unlocked"* ]]
    run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 "${DET[@]}" \
        --save "$T/m.safetensors" --resume
    [ "$status" -eq 1 ]
    [[ "$output" == *"this run has image trained; text trained"* ]]
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 4 "${DET[@]}" \
        --lock-image-unlocked-groups 2 --save "$T/m.safetensors" --resume
    /usr/bin/python3 "$DIGEST" "$T/whole.safetensors" . > "$T/want"
    /usr/bin/python3 "$DIGEST" "$T/m.safetensors" . > "$T/got"
    diff "$T/want" "$T/got"
}

@test "the state holds AdamW moments of the trainable tensors only" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" --lock-image \
        --save "$T/m.safetensors"
    run /usr/bin/python3 "$DIGEST" "$T/m.safetensors.state" '^adam_m\.visual\.'
    [ "$status" -ne 0 ]
    /usr/bin/python3 "$DIGEST" "$T/m.safetensors.state" '^adam_m\.text_projection$'
    /usr/bin/python3 "$DIGEST" "$T/m.safetensors.state" '^adam_v\.logit_scale$'
}

# bad counts: option | what the one-line error says
BAD=(
    "--lock-image-unlocked-groups 5|the image tower has 4 groups"
    "--lock-image-unlocked-groups -1|--lock-image-unlocked-groups"
    "--lock-image-unlocked-groups x|--lock-image-unlocked-groups"
    "--lock-text-unlocked-layers 3|the text tower has 2 layers"
)

@test "lock counts out of range are one-line usage errors (exit 2)" {
    for row in "${BAD[@]}"; do
        IFS='|' read -r opts msg <<< "$row"
        # shellcheck disable=SC2086
        run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" $opts
        [ "$status" -eq 2 ] || { echo "$opts: status $status"; false; }
        [[ "$output" == *"$msg"* ]] || { echo "$opts: $output"; false; }
        [ "${#lines[@]}" -eq 1 ] || { echo "$opts: $output"; false; }
    done
}
