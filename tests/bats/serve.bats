#!/usr/bin/env bats
# clip-query --serve against hostile clients: a device as the image, oversize
# requests, a peer sending random bytes, malformed JSON, requests over the time
# budget. Each is answered (or dropped) on its own and the server goes on
# serving. The servers run the tiny fixture model without an index: zero-shot
# label requests are the real ones.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    FIX="$ROOT/tests/fixtures"
    T="$BATS_TEST_TMPDIR"
    # the fixture BERT has 256 ids
    head -256 "$ROOT/share/clip-tools/bert-chinese-vocab.txt" > "$T/vocab.txt"
    IMG="$FIX/flickr8k-mini/flickr8k-images/2090545563_a4e66ec76b.jpg"
    Q="$BIN/clip-query -m $FIX/model/joint.pth --vocab $T/vocab.txt -t 1"
    LABELS='{"image": "'"$IMG"'", "labels": ["!", "#"]}'
}

teardown() {
    [ -z "${SPID:-}" ] || kill "$SPID" 2>/dev/null || true
}

# ask JSON [SEC]: one request to $ADDR, the reply waited for SEC (default 20) s
ask() {
    run timeout 60 "$BIN/clip-query" --request "$ADDR" --timeout "${2:-20}" "$1"
}

# start_server ADDR [OPTION...]: a server, once it has answered a label request
start_server() {
    ADDR="$1"
    shift
    $Q --serve "$ADDR" "$@" 2> "$T/serve.err" &
    SPID=$!
    ask "$LABELS"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

@test "serve: /dev/zero as the image is an error naming it, at once; the server goes on" {
    start_server "ipc://$T/s.sock"
    ask '{"image": "/dev/zero", "labels": ["a"]}' 5
    [ "$status" -eq 1 ]
    [[ "$output" == '{"error":"/dev/zero: not a regular file or a pipe (an image must be one)"}' ]]
    ask "$LABELS"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
}

@test "serve: a request over --max-request is refused naming the limit; twice that is not read" {
    start_server "ipc://$T/s.sock" --max-request 1000
    ask "{\"text\": \"$(head -c 1200 /dev/zero | tr '\0' a)\"}"
    [ "$status" -eq 1 ]
    [[ "$output" == *'"error":"request: 1212 bytes, more than the limit of 1000 (--max-request BYTES)"'* ]]
    # over ZMQ_MAXMSGSIZE (twice the limit): the peer is dropped, no reply
    ask "{\"text\": \"$(head -c 2100 /dev/zero | tr '\0' a)\"}" 1
    [ "$status" -eq 1 ]
    [[ "$output" == *"no reply within 1 s"* ]]
    ask "$LABELS"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
}

@test "serve: a TCP peer sending random bytes holds up no concurrent request (4 tries)" {
    PORT=$(free_port)
    start_server "tcp://127.0.0.1:$PORT"
    for try in 1 2 3 4; do
        head -c 100000 /dev/urandom > "$T/garbage"
        timeout 10 bash -c 'cat "$1" > "/dev/tcp/127.0.0.1/$2"' garbage "$T/garbage" "$PORT" &
        GPID=$!
        ask "$LABELS" 5
        echo "try $try: $output"
        [ "$status" -eq 0 ]
        [[ "$output" == *'"label"'* ]]
        wait "$GPID" || true
    done
    # and one right after a garbage peer has gone
    timeout 10 bash -c 'cat "$1" > "/dev/tcp/127.0.0.1/$2"' garbage "$T/garbage" "$PORT" || true
    ask "$LABELS" 5
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
}

# refused JSON WANT: an error reply that contains WANT
refused() {
    ask "$1" 5
    echo "$1 -> $output"
    [ "$status" -eq 1 ]
    [[ "$output" == '{"error":"request: '*"$2"*'"}' ]]
}

@test "serve: malformed requests get an error reply naming the problem; the server goes on" {
    start_server "ipc://$T/s.sock"
    refused 'not json' "not JSON: '[' or '{' expected near 'not'"
    refused '["text", "a"]' 'not a JSON object'
    refused '{"txt": "a"}' 'unknown key \"txt\"'
    refused '{"text": "a", "k": 100000000}' '\"k\" must be an integer in 1..10000'
    refused '{}' 'give one of \"text\" or \"image\"'
    refused $'{"text": "\xff\xfe"}' 'not JSON: unable to decode byte 0xff'
    refused '{"text": 42}' '\"text\" must be a string'
    refused '{"image": "x.jpg", "labels": []}' '\"labels\" must be a non-empty array of strings'
    refused '{"image": "x.jpg", "labels": ["a", 1]}' '\"labels\"[1] is not a string'
    refused '{"quit": "now"}' '\"quit\" must be true or false'
    ask "$LABELS"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
    ask '{"quit": true}'
    [ "$status" -eq 0 ]
    [ "$output" = '{"ok":true}' ]
    st=0
    timeout 10 tail --pid="$SPID" -s 0.1 -f /dev/null
    wait "$SPID" || st=$?
    SPID=
    [ "$st" -eq 0 ]
}

@test "serve: a request over --time-budget is answered with its error; others meanwhile and after are answered" {
    start_server "ipc://$T/s.sock" --time-budget 4
    mkfifo "$T/never.fifo" # no one ever writes it
    timeout 60 "$BIN/clip-query" --request "$ADDR" --timeout 20 \
        '{"image": "'"$T/never.fifo"'", "labels": ["a"]}' > "$T/slow.json" &
    CPID=$!
    # once the server has the FIFO open, the slow request is being answered
    for i in $(seq 100); do
        ls -l "/proc/$SPID/fd" | grep -q never.fifo && break
        sleep 0.1
    done
    ls -l "/proc/$SPID/fd" | grep -q never.fifo
    ask "$LABELS" 2 # answered long before the slow one's budget is out
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
    st=0
    wait "$CPID" || st=$?
    cat "$T/slow.json"
    [ "$st" -eq 1 ]
    grep -qF '"error":"request: over the time budget of 4 s while reading '"$T/never.fifo"' (a pipe)' "$T/slow.json"
    ask "$LABELS"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"label"'* ]]
}

@test "serve: a budget no request fits in: each is answered with the budget's error, quit still works" {
    ADDR="ipc://$T/s.sock"
    $Q --serve "$ADDR" --time-budget 0.000001 2> "$T/serve.err" &
    SPID=$!
    ask "$LABELS"
    [ "$status" -eq 1 ]
    [[ "$output" == '{"error":"request: over the time budget of 1e-06 s while '*' (--time-budget SEC)"}' ]]
    ask "$LABELS"
    [ "$status" -eq 1 ]
    [[ "$output" == *'over the time budget of 1e-06 s'* ]]
    ask '{"quit": true}'
    [ "$status" -eq 0 ]
    [ "$output" = '{"ok":true}' ]
}

@test "serve: the server's options are checked" {
    run $Q --serve "ipc://$T/s.sock" --time-budget 0
    [ "$status" -eq 2 ] # usage errors
    [[ "$output" == *"--time-budget: '0' is not a number in [1e-09, 1e+06]"* ]]
    run $Q --serve "ipc://$T/s.sock" --max-request 10
    [ "$status" -eq 2 ] # usage errors
    [[ "$output" == *"--max-request"* ]]
    run $Q --serve "ipc://$T/s.sock" --workers 0
    [ "$status" -eq 2 ] # usage errors
    [[ "$output" == *"--workers"* ]]
}

# sockets SPID: how many sockets the process has open
sockets() {
    ls -l "/proc/$1/fd" | grep -c 'socket:'
}

@test "serve: SIGTERM: a queued request is answered 'stopping', the one being answered gets its reply" {
    start_server "ipc://$T/s.sock" --workers 1 --time-budget 3
    mkfifo "$T/never.fifo"
    timeout 60 "$BIN/clip-query" --request "$ADDR" --timeout 20 \
        '{"image": "'"$T/never.fifo"'", "labels": ["a"]}' > "$T/slow.json" &
    C1=$!
    for i in $(seq 100); do
        ls -l "/proc/$SPID/fd" | grep -q never.fifo && break
        sleep 0.1
    done
    ls -l "/proc/$SPID/fd" | grep -q never.fifo # the only worker is on it
    before=$(sockets "$SPID")
    timeout 60 "$BIN/clip-query" --request "$ADDR" --timeout 20 "$LABELS" > "$T/queued.json" &
    C2=$!
    for i in $(seq 100); do
        if [ "$(sockets "$SPID")" -gt "$before" ]; then break; fi
        sleep 0.1
    done
    sleep 0.5 # connected: its request is read at once
    kill -TERM "$SPID"
    st=0
    wait "$C2" || st=$?
    cat "$T/queued.json"
    [ "$st" -eq 1 ]
    grep -qF '{"error":"request: the server is stopping"}' "$T/queued.json"
    st=0
    wait "$C1" || st=$?
    cat "$T/slow.json"
    [ "$st" -eq 1 ]
    grep -qF 'over the time budget of 3 s while reading' "$T/slow.json"
    st=0
    timeout 10 tail --pid="$SPID" -s 0.1 -f /dev/null
    wait "$SPID" || st=$?
    SPID=
    [ "$st" -eq 143 ]
}
