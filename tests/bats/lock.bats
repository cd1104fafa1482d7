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

# ---- cached features of a locked tower (--feature-cache, lib/train/feature_cache.c)

# losses FILE: the logged losses, one per line
losses() {
    grep -o '"loss":[-0-9.e]*' "$1" | cut -d: -f2
}

# within A B: the logged losses of A and B agree to 1.4e-4 a step, the bound
# of tests/unit/test_train.c's loss_tol on two fp32 evaluations of this
# model's loss (the cache computes the features in other batches than the
# step would: the same arithmetic, another grouping)
within() {
    [ "$(losses "$1" | wc -l)" -eq "$(losses "$2" | wc -l)" ]
    paste <(losses "$1") <(losses "$2") | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1.4e-4) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

# the cached modes as data: options (each run 3 epochs, shuffled)
CACHED=(
    "--lock-image --no-augment"
    "--lock-text"
    "--lock-text --caption first --no-augment"
    "--lock-image --lock-text --no-augment"
)

@test "cached epochs give the uncached losses, in memory and from a file read back" {
    for opts in "${CACHED[@]}"; do
        rm -f "$T/f.tar"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --epochs 3 --lr 1e-3 --quiet $opts \
            --no-feature-cache --log "$T/plain.jsonl"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --epochs 3 --lr 1e-3 --quiet $opts \
            --log "$T/mem.jsonl" 2> "$T/err"
        grep -q "cached the .* features of 12 samples (in memory)" "$T/err"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --epochs 3 --lr 1e-3 --quiet $opts \
            --feature-cache "$T/f.tar" --log "$T/made.jsonl"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --epochs 3 --lr 1e-3 --quiet $opts \
            --feature-cache "$T/f.tar" --log "$T/read.jsonl"
        within "$T/plain.jsonl" "$T/mem.jsonl" || { echo "$opts: in memory"; false; }
        within "$T/plain.jsonl" "$T/made.jsonl" || { echo "$opts: file"; false; }
        cmp <(losses "$T/made.jsonl") <(losses "$T/read.jsonl") || { echo "$opts: read back"; false; }
    done
}

@test "the cache file is an npy-in-tar stream: a record, then each sample's features" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" --lock-text \
        --caption random --feature-cache "$T/f.tar"
    tar tf "$T/f.tar" > "$T/list"
    [ "$(head -1 "$T/list")" = "__feature_cache__.json" ]
    [ "$(grep -c '\.txt_feat\.npy$' "$T/list")" -eq 12 ]
    tar xOf "$T/f.tar" __feature_cache__.json | grep -q '"samples":12'
    tar xOf "$T/f.tar" s00.txt_feat.npy | head -c 128 | grep -q "'shape': (2, 32)"
}

# stale caches: what made the file ; what this run changes ; what the error names
STALE=(
    "--lock-image --no-augment;--lock-image --no-augment --amp;precision differs"
    "--lock-image --no-augment;--lock-text;text (absent)"
    "--lock-text;--lock-text --train VAL;samples"
)

@test "a cache of another model, precision or data is refused, naming what differs" {
    for row in "${STALE[@]}"; do
        IFS=';' read -r made now msg <<< "$row"
        rm -f "$T/f.tar"
        # shellcheck disable=SC2086
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 --quiet $made \
            --feature-cache "$T/f.tar"
        now=${now//VAL/$FIX/val.tar}
        # shellcheck disable=SC2086
        run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 --quiet $now \
            --feature-cache "$T/f.tar"
        [ "$status" -eq 1 ] || { echo "$row: status $status"; false; }
        [[ "$output" == *"f.tar: made from another model or data"*"$msg"*"delete it"* ]] || { echo "$row: $output"; false; }
    done
}

@test "a cache cut short is refused (delete it)" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" --lock-image \
        --feature-cache "$T/f.tar"
    for bytes in 3000 7168; do
        head -c "$bytes" "$T/f.tar" > "$T/cut.tar"
        run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 "${DET[@]}" --lock-image \
            --feature-cache "$T/cut.tar"
        [ "$status" -eq 1 ]
        [[ "$output" == *"cut.tar: "*"truncated"*"delete it"* ]]
    done
}

# --feature-cache where it cannot apply: options | what the one-line usage error says
NOCACHE=(
    "--lock-image;add --no-augment"
    "--lock-image --no-augment --mask-ratio 0.5;keeps other patches every step"
    "--lock-image-unlocked-groups 1 --no-augment;no tower is locked whole"
    "--lock-text-unlocked-layers 1;no tower is locked whole"
    "--no-augment;no tower is locked whole"
    "--lock-text --no-feature-cache;exclude each other"
)

@test "--feature-cache where nothing can be cached is a one-line usage error (exit 2)" {
    for row in "${NOCACHE[@]}"; do
        IFS=';' read -r opts msg <<< "$row"
        # shellcheck disable=SC2086
        run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --steps 1 --quiet $opts \
            --feature-cache "$T/f.tar"
        [ "$status" -eq 2 ] || { echo "$opts: status $status"; false; }
        [[ "$output" == *"$msg"* ]] || { echo "$opts: $output"; false; }
        [ "${#lines[@]}" -eq 1 ] || { echo "$opts: $output"; false; }
    done
    [ ! -e "$T/f.tar" ]
}
