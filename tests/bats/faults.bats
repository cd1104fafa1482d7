#!/usr/bin/env bats
# Faults on the output side (issue "hostile input and faults"): a signal, a
# file size limit or a full disk leaves no output file and no temporary file
# (FILE.tmp-PID), and says so; the next run removes what a killed one left;
# a resumed clip-train logs each step once; -t N is OpenBLAS's count too.
# The signals land mid-stream deterministically: the tools read a fifo that
# this shell holds open and never finishes, and are signalled once their
# temporary output exists.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    FIX="$ROOT/tests/fixtures"
    MINI="$FIX/flickr8k-mini"
    MODEL="$FIX/model/joint.pth"
    IMG="$MINI/flickr8k-images/2090545563_a4e66ec76b.jpg"
    T="$BATS_TEST_TMPDIR"
    # the fixture BERT has 256 ids and 32 positions
    head -256 "$ROOT/share/clip-tools/bert-chinese-vocab.txt" > "$T/vocab.txt"
    pid=
}

teardown() {
    # TERM, not KILL: timeout passes it on to the tool it runs
    [ -z "${pid:-}" ] || kill -TERM "$pid" 2>/dev/null || true
    exec 7>&- || true
}

# samples: $T/p.tar (img.npy 32x32 + json), $T/pt.tar (and tok.npy), small
samples() {
    "$BIN/clip-prep" --annotations "$MINI/cn_mini.json" --root "$MINI" --size 32 --threads 1 \
        -o "$T/p.tar"
    "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --context-length 32 -q -i "$T/p.tar" -o "$T/pt.tar"
}

# temps OUT: the temporary files of OUT (OUT.tmp-PID), one a line
temps() {
    ls -a "$(dirname "$1")" | grep -F "$(basename "$1").tmp-" || true
}

# slow_input FILE BYTES: $T/in, a fifo held open here (fd 7) holding the
# first BYTES of FILE (no more ever comes, nor its end)
slow_input() {
    rm -f "$T/in"
    mkfifo "$T/in"
    exec 7<> "$T/in" # read-write: opening does not wait for a reader
    if [ "$2" -gt 0 ]; then head -c "$2" "$1" >&7; fi
}

# kill_midway SIG OUT CMD...: runs CMD in the background (under timeout),
# waits until OUT's temporary file exists, sends SIG; sets st (its status)
kill_midway() {
    local sig=$1 out=$2
    shift 2
    timeout 60 "$@" 2> "$T/err" 3>&- &
    pid=$!
    for _ in $(seq 400); do
        if [ -n "$(temps "$out")" ]; then break; fi
        sleep 0.025
    done
    echo "temporary file while running: $(temps "$out")"
    [ -n "$(temps "$out")" ]
    kill -"$sig" "$pid"
    st=0
    wait "$pid" || st=$?
    pid=
    exec 7>&-
    cat "$T/err"
}

# dead_pid: a PID that no process has now (a child that has exited)
dead_pid() {
    sh -c 'echo $$'
}

@test "clip-tokenize -o FILE: SIGTERM and SIGINT mid-stream exit 143/130, no FILE, no temporary file" {
    samples
    for sig in TERM INT; do
        slow_input "$T/p.tar" 20000
        kill_midway "$sig" "$T/out.tar" "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q \
            -i "$T/in" -o "$T/out.tar"
        [ "$st" -eq "$((128 + $(kill -l "$sig")))" ]
        [ ! -e "$T/out.tar" ]
        [ -z "$(temps "$T/out.tar")" ]
    done
}

@test "clip-tokenize --lines -o FILE: SIGTERM mid-input exits 143, no FILE, no temporary file" {
    printf '一只狗\n' > "$T/lines.txt"
    slow_input "$T/lines.txt" 10
    kill_midway TERM "$T/ids.txt" "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines \
        -i "$T/in" -o "$T/ids.txt"
    [ "$st" -eq 143 ]
    [ ! -e "$T/ids.txt" ]
    [ -z "$(temps "$T/ids.txt")" ]
}

@test "clip-embed -o FILE: SIGTERM and SIGINT mid-stream exit 143/130, no FILE, no temporary file" {
    samples
    for sig in TERM INT; do
        slow_input "$T/pt.tar" 20000
        kill_midway "$sig" "$T/emb.tar" "$BIN/clip-embed" --model "$MODEL" -t 1 -i "$T/in" \
            -o "$T/emb.tar"
        [ "$st" -eq "$((128 + $(kill -l "$sig")))" ]
        [ ! -e "$T/emb.tar" ]
        [ -z "$(temps "$T/emb.tar")" ]
    done
}

@test "clip-prep -o FILE: SIGTERM and SIGINT mid-run exit 143/130, no FILE, no temporary file" {
    for sig in TERM INT; do
        slow_input /dev/null 0 # an image that never ends
        kill_midway "$sig" "$T/prep.tar" "$BIN/clip-prep" --size 32 --threads 1 "$IMG" "$T/in" \
            -o "$T/prep.tar"
        [ "$st" -eq "$((128 + $(kill -l "$sig")))" ]
        [ ! -e "$T/prep.tar" ]
        [ -z "$(temps "$T/prep.tar")" ]
    done
}

@test "a signal keeps an old FILE as it was" {
    samples
    echo old > "$T/out.tar"
    slow_input "$T/p.tar" 20000
    kill_midway TERM "$T/out.tar" "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/in" \
        -o "$T/out.tar"
    [ "$st" -eq 143 ]
    [ "$(cat "$T/out.tar")" = old ]
    [ -z "$(temps "$T/out.tar")" ]
}

# limited KB CMD...: CMD under ulimit -f KB (1024-byte blocks)
limited() {
    local kb=$1
    shift
    run timeout 60 bash -c 'ulimit -f "$1"; shift; exec "$@"' sh "$kb" "$@"
    echo "$output"
}

@test "past ulimit -f: each tool exits 1 saying 'File too large', no partial file" {
    samples
    limited 64 "$BIN/clip-prep" --annotations "$MINI/cn_mini.json" --root "$MINI" --threads 1 \
        -o "$T/big.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/big.tar: sample "*": write failed: File too large (the file size limit: ulimit -f)"* ]]
    [ ! -e "$T/big.tar" ]
    [ -z "$(temps "$T/big.tar")" ]
    limited 16 "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/p.tar" -o "$T/tok.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/tok.tar: "*"File too large"* ]]
    [ ! -e "$T/tok.tar" ]
    [ -z "$(temps "$T/tok.tar")" ]
    limited 16 "$BIN/clip-embed" --model "$MODEL" -t 1 -i "$T/pt.tar" -o "$T/emb.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/emb.tar: "*"File too large"* ]]
    [ ! -e "$T/emb.tar" ]
    [ -z "$(temps "$T/emb.tar")" ]
    seq 2000 > "$T/many.txt"
    limited 4 "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/many.txt" -o "$T/ids.txt"
    [ "$status" -eq 1 ]
    [[ "$output" == *"File too large"* ]]
    [ ! -e "$T/ids.txt" ]
    [ -z "$(temps "$T/ids.txt")" ]
}

@test "clip-train past ulimit -f: the checkpoint save fails with a message, no partial checkpoint" {
    limited 64 "$BIN/clip-train" --arch tiny,vocab=256 --train "$FIX/train/train.tar" -b 4 --steps 1 \
        --quiet --save "$T/m.safetensors"
    [ "$status" -eq 1 ]
    [[ "$output" == *"saving: $T/m.safetensors"*"File too large"* ]]
    [ ! -e "$T/m.safetensors" ]
    [ -z "$(temps "$T/m.safetensors")" ]
}

@test "a stale FILE.tmp-PID of a dead process is removed by the next run, saying so; a live one's stays" {
    samples
    dead=$(dead_pid)
    echo partial > "$T/out.tar.tmp-$dead"
    echo "still being written" > "$T/out.tar.tmp-$$"
    run "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/p.tar" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"removed $T/out.tar.tmp-$dead: the unfinished output of process $dead, which no longer runs"* ]]
    [ ! -e "$T/out.tar.tmp-$dead" ]
    [ -e "$T/out.tar.tmp-$$" ]
    [ -s "$T/out.tar" ]
}

@test "a stale FILE.tmp-PID is removed also by a next run that fails" {
    samples
    head -c 20000 "$T/p.tar" > "$T/cut.tar"
    dead=$(dead_pid)
    echo partial > "$T/out.tar.tmp-$dead"
    run "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/cut.tar" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"truncated"* ]]
    [ ! -e "$T/out.tar.tmp-$dead" ]
    [ ! -e "$T/out.tar" ]
    [ -z "$(temps "$T/out.tar")" ]
}

@test "checkpoints of a clip-train killed while saving: the next run removes them" {
    # what a kill -9 during a save leaves: the weights' and the state's temporary files
    dead=$(dead_pid)
    echo partial > "$T/m.safetensors.tmp-$dead"
    echo partial > "$T/m.safetensors.state.tmp-$dead"
    run timeout 60 "$BIN/clip-train" --arch tiny,vocab=256 --train "$FIX/train/train.tar" -b 4 --steps 2 \
        --quiet --save "$T/m.safetensors"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"removed $T/m.safetensors.tmp-$dead"* ]]
    [[ "$output" == *"removed $T/m.safetensors.state.tmp-$dead"* ]]
    [ -z "$(temps "$T/m.safetensors")" ]
    [ -s "$T/m.safetensors" ]
    [ -s "$T/m.safetensors.state" ]
}

@test "clip-train killed (SIGKILL) in the middle of a save: the next run removes what it left" {
    # the full tiny model: a save writes 25 MB (and fsyncs it), milliseconds
    # against the microseconds of the loop of builtins below that waits for it
    args=(--arch tiny --train "$FIX/train/train.tar" -b 4 --steps 50 --save-every 1 --quiet
          --save "$T/m.safetensors")
    left=
    for attempt in 1 2 3; do # a kill can still come just after a rename: try again
        # not under timeout, which SIGKILL would end instead of clip-train; the
        # loop bounds the wait (SIGKILL cannot be caught)
        "$BIN/clip-train" "${args[@]}" 2> "$T/err" 3>&- &
        pid=$!
        end=$((SECONDS + 30))
        while [ "$SECONDS" -lt "$end" ]; do
            if compgen -G "$T/m.safetensors*.tmp-*" > /dev/null; then break; fi
        done
        kill -KILL "$pid"
        wait "$pid" || true
        pid=
        left="$(temps "$T/m.safetensors")$(temps "$T/m.safetensors.state")"
        echo "attempt $attempt: left by the kill: $left"
        if [ -n "$left" ]; then break; fi
    done
    [ -n "$left" ]
    run timeout 60 "$BIN/clip-train" "${args[@]}" --steps 1
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"removed $T/m.safetensors"*".tmp-"*"which no longer runs"* ]]
    [ -z "$(temps "$T/m.safetensors")" ]
    [ -z "$(temps "$T/m.safetensors.state")" ]
}

@test "clip-tokenize --lines -o FILE: an invalid line fails naming it and leaves no FILE" {
    printf '一只狗\n\377\376\n' > "$T/bad.txt"
    run "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/bad.txt" -o "$T/ids.txt"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bad.txt: line 2"* ]]
    [ ! -e "$T/ids.txt" ]
    [ -z "$(temps "$T/ids.txt")" ]
    echo old > "$T/ids.txt"
    run "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/bad.txt" -o "$T/ids.txt"
    [ "$status" -eq 1 ]
    [ "$(cat "$T/ids.txt")" = old ]
}

# full CMD...: CMD with stdout on /dev/full
full() {
    run timeout 60 bash -c 'exec "$@" > /dev/full' sh "$@"
    echo "$output"
}

@test "> /dev/full: every tool that writes stdout exits non-zero saying the write failed" {
    samples
    "$BIN/clip-embed" --model "$MODEL" -t 1 -i "$T/pt.tar" -o "$T/idx.tar"
    full "$BIN/clip-prep" --annotations "$MINI/cn_mini.json" --root "$MINI" --size 32
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdout>: "*"No space left on device"* ]]
    full "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/p.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdout>: "*"No space left on device"* ]]
    full "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/vocab.txt"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
    full "$BIN/clip-embed" --model "$MODEL" -t 1 -i "$T/pt.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdout>: "*"No space left on device"* ]]
    full "$BIN/clip-recall" -i "$T/idx.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed"* ]]
    full "$BIN/clip-recall" --table -i "$T/idx.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed"* ]]
    Q=("$BIN/clip-query" -m "$MODEL" --vocab "$T/vocab.txt" -t 1)
    full "${Q[@]}" --index "$T/idx.tar" --text x
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
    full "${Q[@]}" --index "$T/idx.tar" --text x --json
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
    full "${Q[@]}" --image "$IMG" --labels a,b
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
    full "${Q[@]}" --index "$T/idx.tar" --image "$IMG"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
}

@test "clip-tokenize --lines > /dev/full stops at the first failed write, not at the end" {
    # 20000 lines (more than a stdio buffer) and then an invalid one, never reached
    seq 20000 > "$T/lines.txt"
    printf '\377\376\n' >> "$T/lines.txt"
    full "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/lines.txt"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
    [[ "$output" != *"line 20001"* ]]
}

@test "a tool failing mid-stream on stdout leaves it without its end marker: the reader says truncated" {
    imgs=("$MINI"/flickr8k-images/*.jpg)
    echo "not a JPEG" > "$T/bad.jpg"
    # two 224x224 samples (300 KB: past libarchive's 64 KB block), then a bad image
    run bash -c '"$@" > "'"$T"'/cut.tar"' sh "$BIN/clip-prep" --threads 1 "${imgs[0]}" "${imgs[1]}" \
        "$T/bad.jpg"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bad.jpg"* ]]
    [ -s "$T/cut.tar" ]
    run "$BIN/clip-tokenize" --vocab "$T/vocab.txt" -q -i "$T/cut.tar" -o /dev/null
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"truncated"* ]]
}

@test "--help > /dev/full: every tool exits non-zero saying the write failed" {
    for tool in clip-prep clip-tokenize clip-embed clip-train clip-recall clip-query clip-merge; do
        full "$BIN/$tool" --help
        [ "$status" -eq 1 ]
        [[ "$output" == *"$tool: stdout: write failed: No space left on device"* ]]
    done
}

@test "clip-query --request > /dev/full: exits 1 saying the write failed" {
    addr="ipc://$T/q.ipc"
    timeout 60 "$BIN/clip-query" -m "$MODEL" --vocab "$T/vocab.txt" -t 1 --serve "$addr" \
        2> "$T/serve.err" 3>&- &
    pid=$!
    full "$BIN/clip-query" --request "$addr" --timeout 30 '{"quit": true}'
    wait "$pid" || true
    pid=
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
}

@test "a resumed clip-train logs each of 64 steps once (the redone steps' lines are dropped)" {
    args=(--arch tiny,vocab=256 --train "$FIX/train/train.tar" -b 4 --steps 64 --save-every 8 --quiet
          --save "$T/m.safetensors" --log "$T/log.jsonl")
    timeout 60 "$BIN/clip-train" "${args[@]}" --stop-after 8
    cp "$T/m.safetensors" "$T/m8"
    cp "$T/m.safetensors.state" "$T/m8.state"
    timeout 60 "$BIN/clip-train" "${args[@]}" --resume --stop-after 4
    [ "$(wc -l < "$T/log.jsonl")" -eq 12 ]
    # killed at step 12 after its last save at step 8: the state is step 8's
    cp "$T/m8" "$T/m.safetensors"
    cp "$T/m8.state" "$T/m.safetensors.state"
    printf '{"step":13,"epoch":5,"lo' >> "$T/log.jsonl" # a line the kill cut short
    run timeout 60 "$BIN/clip-train" "${args[@]}" --resume
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"$T/log.jsonl: dropped the last 5 lines, of steps after 8 that this run redoes"* ]]
    [ "$(wc -l < "$T/log.jsonl")" -eq 64 ]
    grep -o '"step":[0-9]*' "$T/log.jsonl" | cut -d: -f2 > "$T/steps"
    seq 64 | diff - "$T/steps"
}

@test "-t N sets OpenBLAS's thread count too: clip-train reports the count OpenBLAS uses" {
    run env OMP_NUM_THREADS=1 "$BIN/clip-train" --arch tiny,vocab=256 --train "$FIX/train/train.tar" \
        -b 4 --steps 1 --quiet -t 2
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *", 2 threads"* ]]
    run env OMP_NUM_THREADS=2 "$BIN/clip-train" --arch tiny,vocab=256 --train "$FIX/train/train.tar" \
        -b 4 --steps 1 --quiet -t 1
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *", 1 thread"* ]]
    [[ "$output" != *", 1 threads"* ]]
}
