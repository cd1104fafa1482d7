#!/usr/bin/env bats
# ZeroMQ sample streams under faults: every fault ends in a non-zero exit and a
# message saying what is missing, never a hang or a silent loss (clip-stream(5)).
#
# A producer the test controls is clip-tokenize reading a fifo: it streams what
# the test writes there. A fifo is opened read-write (<>) so that opening it
# never blocks; what writes to it runs under timeout. Background programs get
# 3>&- so that bats does not wait for them.

setup() {
    BIN=${CLIP_BIN:-bin}
    TMP=$(mktemp -d)
    MINI=tests/fixtures/flickr8k-mini
    VOCAB=share/clip-tools/bert-chinese-vocab.txt
    ADDR=tcp://127.0.0.1:$((20000 + RANDOM % 20000))
}

teardown() {
    exec 7>&- 8>&-
    rm -rf "$TMP"
}

prep() { $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI "$@"; }

# 8 samples of ~153 KB; the first 400000 bytes hold two of them and part of a
# third, so a producer fed that much has sent (at least) its first sample
stream_of_8() { prep -o "$TMP/p.tar"; }
first_part() { timeout 10 head -c 400000 "$TMP/p.tar"; }
the_rest() { timeout 10 tail -c +400001 "$TMP/p.tar"; }

# the program that `timeout` (pid $1) runs
child_of() { timeout 5 bash -c "until pgrep -P $1; do sleep 0.05; done"; }

@test "a producer killed mid-stream fails the reader, saying how many producers ended" {
    stream_of_8
    mkfifo "$TMP/in"
    timeout 15 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?producers=2" -o "$TMP/out.tar" \
        2> "$TMP/reader.err" 3>&- &
    reader=$!
    run timeout 20 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR"
    [ "$status" -eq 0 ]
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in" -o "$ADDR" 3>&- &
    producer=$(child_of $!)
    exec 7<> "$TMP/in"
    first_part >&7
    kill -9 $producer
    status=0
    wait $reader || status=$?
    # 1, not 124: the reader found out itself, well inside the 15 s
    [ "$status" -eq 1 ]
    grep -Eq "producer .* disconnected after [0-9]+ samples? without ending its stream" "$TMP/reader.err"
    grep -q "1 of 2 producers ended their streams, 1 disconnected" "$TMP/reader.err"
    [ ! -e "$TMP/out.tar" ]
}

@test "producers=2 with one arriving: the reader fails after its timeout, saying so" {
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?producers=2&timeout=2" \
        -o "$TMP/out.tar" 2> "$TMP/reader.err" 3>&- &
    reader=$!
    run timeout 20 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR"
    # the one producer was served in full
    [ "$status" -eq 0 ]
    status=0
    wait $reader || status=$?
    [ "$status" -eq 1 ]
    grep -q "nothing arrived for 2 s: 1 of 2 producers ended their streams, 1 never connected" \
        "$TMP/reader.err"
}

@test "a killed reader fails every producer with its count of unacknowledged samples" {
    stream_of_8
    mkfifo "$TMP/in1" "$TMP/in2"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?producers=2" -o "$TMP/out.tar" 3>&- &
    reader=$(child_of $!)
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in1" -o "$ADDR" 2> "$TMP/p1.err" 3>&- &
    p1=$!
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in2" -o "$ADDR" 2> "$TMP/p2.err" 3>&- &
    p2=$!
    exec 7<> "$TMP/in1" 8<> "$TMP/in2"
    first_part >&7
    first_part >&8
    # stopped, the reader passes nothing on: the rest of both streams is sent
    # and not acknowledged when it dies
    kill -STOP $reader
    the_rest >&7
    the_rest >&8
    exec 7>&- 8>&-
    kill -9 $reader
    s1=0
    wait $p1 || s1=$?
    s2=0
    wait $p2 || s2=$?
    [ "$s1" -eq 1 ]
    [ "$s2" -eq 1 ]
    grep -Eq "lost the reader.*\(8 samples sent, [1-9][0-9]* not acknowledged\)" "$TMP/p1.err"
    grep -Eq "lost the reader.*\(8 samples sent, [1-9][0-9]* not acknowledged\)" "$TMP/p2.err"
}

@test "a writer whose reader never comes fails after its timeout" {
    run timeout 20 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR?timeout=2"
    [ "$status" -eq 1 ]
    [[ "$output" == *"no reader answered for 2 s"* ]]
    [[ "$output" == *"(0 samples sent, 0 not acknowledged)"* ]]
}

@test "a reader that passes nothing on holds its producer to the credit" {
    # nobody reads the reader's output: it blocks writing its first sample
    mkfifo "$TMP/out"
    exec 7<> "$TMP/out"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?credit=2" -o - > "$TMP/out" 3>&- &
    reader=$!
    run timeout 20 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR?timeout=2"
    kill $reader
    [ "$status" -eq 1 ]
    [[ "$output" == *"the reader acknowledged nothing for 2 s"* ]]
    [[ "$output" == *"(2 samples sent, 2 not acknowledged)"* ]]
}

@test "a stopped reader is found by heartbeats, before any timeout" {
    stream_of_8
    mkfifo "$TMP/in"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR" -o "$TMP/out.tar" 3>&- &
    reader=$(child_of $!)
    # the timeout (60 s) would come after the test's own 20 s
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in" -o "$ADDR?heartbeat=1" \
        2> "$TMP/p.err" 3>&- &
    producer=$!
    exec 7<> "$TMP/in"
    first_part >&7
    kill -STOP $reader
    the_rest >&7
    exec 7>&-
    status=0
    wait $producer || status=$?
    kill -9 $reader
    [ "$status" -eq 1 ]
    grep -q "lost the reader: it went away, or did not answer heartbeats for 1 s" "$TMP/p.err"
}

@test "a stopped producer is found by the reader's heartbeats" {
    stream_of_8
    mkfifo "$TMP/in"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?heartbeat=1" -o "$TMP/out.tar" \
        2> "$TMP/reader.err" 3>&- &
    reader=$!
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in" -o "$ADDR" 3>&- &
    producer=$(child_of $!)
    exec 7<> "$TMP/in"
    first_part >&7
    kill -STOP $producer
    status=0
    wait $reader || status=$?
    kill -9 $producer
    [ "$status" -eq 1 ]
    grep -Eq "disconnected after [0-9]+ samples? without ending its stream \(it died, or its heartbeats stopped for 1 s\)" \
        "$TMP/reader.err"
}

@test "a producer that fails mid-stream fails its reader at once" {
    /usr/bin/python3 -c 'import json, sys
a = json.load(open(sys.argv[1]))
a.insert(2, {"image": "flickr8k-images/missing.jpg", "caption": ["x"]})
json.dump(a, open(sys.argv[2], "w"), ensure_ascii=False)' $MINI/cn_mini.json "$TMP/bad.json"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR" -o "$TMP/out.tar" 2> "$TMP/reader.err" 3>&- &
    reader=$!
    run timeout 20 $BIN/clip-prep --annotations "$TMP/bad.json" --root $MINI -o "$ADDR"
    [ "$status" -eq 1 ]
    status=0
    wait $reader || status=$?
    [ "$status" -eq 1 ]
    grep -q "aborted its stream after 2 samples" "$TMP/reader.err"
}

@test "a producer beyond producers=N is refused, the others are served" {
    stream_of_8
    mkfifo "$TMP/in"
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?producers=1" -o "$TMP/out.tar" 3>&- &
    reader=$!
    timeout 20 $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/in" -o "$ADDR" 3>&- &
    producer=$!
    exec 7<> "$TMP/in"
    # the first producer has connected once its first sample is sent
    first_part >&7
    run timeout 20 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR"
    the_rest >&7
    exec 7>&-
    [ "$status" -eq 1 ]
    [[ "$output" == *"the reader refused this stream: it takes 1 producer and all of them have connected"* ]]
    wait $producer
    wait $reader
    run bash -c "tar tf $TMP/out.tar | grep -c 'tok.npy$'"
    [ "$output" = 8 ]
}

@test "three producers, one sample of credit: every sample exactly once" {
    timeout 60 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?producers=3&credit=1" -o "$TMP/all.tar" 3>&- &
    reader=$!
    for k in 1 2 3; do
        timeout 60 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$ADDR" 3>&- &
    done
    wait %2
    wait %3
    wait %4
    wait $reader
    run bash -c "tar tf $TMP/all.tar | grep -c 'tok.npy$'"
    [ "$output" = 24 ]
    run bash -c "tar tf $TMP/all.tar | grep 'img.npy$' | sort | uniq -c | awk '{print \$1}' | sort -u"
    [ "$output" = 3 ]
}

@test "endpoint options are checked" {
    run timeout 10 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?timeout=soon" -o "$TMP/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"endpoint option 'timeout=soon' wants a whole number from 0 to 604800"* ]]
    run timeout 10 $BIN/clip-tokenize --vocab $VOCAB -i "$ADDR?credits=2" -o "$TMP/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"unknown endpoint option 'credits=2'"* ]]
}
