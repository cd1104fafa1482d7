#!/usr/bin/env bats
# clip-query: text -> image and image -> caption search over an index built
# with clip-prep | clip-tokenize | clip-embed from the tiny fixture model,
# zero-shot labels, and one-line errors.

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    FIX="$ROOT/tests/fixtures"
    MODEL="$FIX/model/joint.pth"
    T="$BATS_TEST_TMPDIR"
    # the fixture BERT has 256 ids and 32 positions
    head -256 "$ROOT/share/clip-tools/bert-chinese-vocab.txt" > "$T/vocab.txt"
    IMG="$FIX/flickr8k-mini/flickr8k-images/2090545563_a4e66ec76b.jpg"
    Q="$BIN/clip-query -m $MODEL --vocab $T/vocab.txt -t 1"
}

teardown() {
    [ -z "${SPID:-}" ] || kill "$SPID" 2>/dev/null || true
}

mkindex() {
    set -o pipefail # a failing clip-prep or clip-tokenize fails the test, not an empty index
    "$BIN/clip-prep" --annotations "$FIX/flickr8k-mini/cn_mini.json" --root "$FIX/flickr8k-mini" \
        --size 32 --threads 1 |
        "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --context-length 32 -q |
        "$BIN/clip-embed" --model "$MODEL" -t 1 -o "$T/idx.tar"
}

@test "help" {
    run $BIN/clip-query --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--labels"* ]]
}

@test "text query: k lines, sorted, top score is the cosine numpy computes" {
    mkindex
    run $Q --index "$T/idx.tar" --text '! # [MASK]' -k 3
    [ "$status" -eq 0 ]
    echo "$output" > "$T/out.txt"
    [ "$(wc -l < "$T/out.txt")" -eq 3 ]
    # the text's embedding from clip-embed on a one-sample stream of its ids
    printf '! # [MASK]\n' > "$T/q.txt"
    "$BIN/clip-tokenize" --vocab "$T/vocab.txt" --lines -i "$T/q.txt" -o "$T/q.ids" -q
    /usr/bin/python3 - "$T" <<'PY'
import io, sys, tarfile
import numpy as np
t = sys.argv[1]
ids = [int(x) for x in open(f"{t}/q.ids").read().split()]
tok = np.zeros((1, 32), np.int32); tok[0, :len(ids)] = ids
b = io.BytesIO(); np.save(b, tok)
with tarfile.open(f"{t}/q.tar", "w") as tf:
    ti = tarfile.TarInfo("q.tok.npy"); ti.size = len(b.getvalue()); tf.addfile(ti, io.BytesIO(b.getvalue()))
PY
    "$BIN/clip-embed" --model "$MODEL" -t 1 -i "$T/q.tar" -o "$T/qe.tar"
    /usr/bin/python3 - "$T" <<'PY'
import io, sys, tarfile
import numpy as np
t = sys.argv[1]
q = np.load(io.BytesIO(tarfile.open(f"{t}/qe.tar").extractfile("q.txt_emb.npy").read()))[0]
embs = {}
with tarfile.open(f"{t}/idx.tar") as tf:
    for m in tf.getmembers():
        if m.name.endswith(".img_emb.npy"):
            embs[m.name[:-len(".img_emb.npy")]] = np.load(io.BytesIO(tf.extractfile(m).read()))
cos = {k: float(q @ v / np.linalg.norm(q) / np.linalg.norm(v)) for k, v in embs.items()}
best = sorted(cos.items(), key=lambda kv: -kv[1])[:3]
lines = [l.split() for l in open(f"{t}/out.txt")]
scores = [float(l[1]) for l in lines]
assert scores == sorted(scores, reverse=True), scores
assert [l[0] for l in lines] == ["1", "2", "3"]
assert lines[0][2] == best[0][0], (lines[0], best)
assert abs(scores[0] - best[0][1]) < 1e-4, (scores[0], best[0])
assert lines[0][3].startswith("flickr8k-images/"), lines[0]
PY
}

@test "image query: caption json with k entries sorted" {
    mkindex
    run $Q --index "$T/idx.tar" --image "$IMG" -k 4 --json
    [ "$status" -eq 0 ]
    echo "$output" | /usr/bin/python3 -c '
import json, sys
a = json.load(sys.stdin)
assert len(a) == 4, a
s = [x["score"] for x in a]
assert s == sorted(s, reverse=True)
assert all("key" in x and "caption" in x for x in a)'
}

@test "zero-shot labels: probabilities sum to 1, sorted" {
    run $Q --image "$IMG" --labels '!,#,$' --json
    [ "$status" -eq 0 ]
    echo "$output" | /usr/bin/python3 -c '
import json, sys
a = json.load(sys.stdin)
assert [x["label"] for x in a if True].__len__() == 3
p = [x["prob"] for x in a]
assert abs(sum(p) - 1) < 1e-6 and p == sorted(p, reverse=True), p'
}

@test "errors: one line naming the problem" {
    mkindex
    run $Q --index "$T/missing.tar" --text a
    [ "$status" -ne 0 ]; [[ "$output" == *missing.tar* ]]
    run $BIN/clip-query --vocab "$T/vocab.txt" --index "$T/idx.tar" --text a
    [ "$status" -ne 0 ]; [[ "$output" == *--model* ]]
    # without --vocab: the shipped vocabulary of the tower's kind, refused when the model is smaller
    run $BIN/clip-query -m "$MODEL" --index "$T/idx.tar" --text a
    [ "$status" -ne 0 ]; [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"bert-chinese-vocab.txt: vocabulary of 21128 ids"*"has 256"*--vocab* ]]
    run $BIN/clip-query -m "$FIX/model/openai.pth" --image "$IMG" --labels a,b
    [ "$status" -ne 0 ]; [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"bpe_simple_vocab_16e6.txt.gz: vocabulary of 49408 ids"*"has 512"* ]]
    run $Q --index "$T/idx.tar" --image /etc/passwd
    [ "$status" -ne 0 ]; [[ "$output" == */etc/passwd* ]]; [ "${#lines[@]}" -eq 1 ]
    # an index without img_emb.npy: name the sample
    "$BIN/clip-prep" --annotations "$FIX/flickr8k-mini/cn_mini.json" --root "$FIX/flickr8k-mini" \
        --size 32 --threads 1 -o "$T/noemb.tar"
    run $Q --index "$T/noemb.tar" --text a
    [ "$status" -ne 0 ]; [[ "$output" == *"sample 2090545563_a4e66ec76b"*img_emb.npy* ]]
}

@test "serve: text, image and label requests; errors keep it serving; quit exits 0" {
    mkindex
    PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    ADDR="tcp://127.0.0.1:$PORT"
    $Q --index "$T/idx.tar" --serve "$ADDR" 2> "$T/serve.err" &
    SPID=$!
    R="timeout 60 $BIN/clip-query --request $ADDR"
    $Q --index "$T/idx.tar" --text '! # [MASK]' -k 3 --json > "$T/cli.json"
    run $R '{"text": "! # [MASK]", "k": 3}'
    [ "$status" -eq 0 ]
    echo "$output" > "$T/srv.json"
    run $R '{"image": "/nonexistent/x.jpg"}'
    [ "$status" -eq 1 ]; [[ "$output" == *'"error"'*/nonexistent/x.jpg* ]]
    run $R 'not json'
    [ "$status" -eq 1 ]; [[ "$output" == *'"error"'* ]]
    run $R "{\"image\": \"$IMG\", \"k\": 4}"
    [ "$status" -eq 0 ]; echo "$output" > "$T/img.json"
    $Q --index "$T/idx.tar" --image "$IMG" -k 4 --json > "$T/cli-img.json"
    run $R "{\"image\": \"$IMG\", \"labels\": [\"!\", \"#\", \"\$\"]}"
    [ "$status" -eq 0 ]; echo "$output" > "$T/lab.json"
    $Q --image "$IMG" --labels '!,#,$' --json > "$T/cli-lab.json"
    run $R '{"quit": true}'
    [ "$status" -eq 0 ]; [[ "$output" == *'"ok": true'* || "$output" == *'"ok":true'* ]]
    wait $SPID
    SPID=
    /usr/bin/python3 - "$T" <<'PY'
import json, sys
t = sys.argv[1]
for a, b in [("cli.json", "srv.json"), ("cli-img.json", "img.json"), ("cli-lab.json", "lab.json")]:
    x, y = json.load(open(f"{t}/{a}")), json.load(open(f"{t}/{b}"))
    assert len(x) == len(y) > 0, (a, x, y)
    for p, q in zip(x, y):
        assert p.keys() == q.keys(), (p, q)
        for key in p:
            if isinstance(p[key], float): assert abs(p[key] - q[key]) < 1e-6, (p, q)
            else: assert p[key] == q[key], (p, q)
PY
}

@test "request: no server answering gives a one-line error" {
    run timeout 20 $BIN/clip-query --request tcp://127.0.0.1:1 --timeout 1 '{"quit": true}'
    [ "$status" -eq 1 ]; [[ "$output" == *"tcp://127.0.0.1:1: no reply"* ]]; [ "${#lines[@]}" -eq 1 ]
}

@test "errors: an index embedded in another dimension names the file, sample and both dims" {
    # sample a is right (32, the fixture model's dimension), sample b has 16
    /usr/bin/python3 - "$T" <<'PY'
import io, json, sys, tarfile
import numpy as np
t = sys.argv[1]
def add(tf, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
def npy(a):
    b = io.BytesIO(); np.save(b, a); return b.getvalue()
with tarfile.open(f"{t}/dim.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
    for key, d in [("a", 32), ("b", 16)]:
        add(tf, f"{key}.json", json.dumps({"image": f"{key}.jpg", "captions": ["x", "y"]}).encode())
        add(tf, f"{key}.img_emb.npy", npy(np.ones(d, np.float32) / d ** 0.5))
        add(tf, f"{key}.txt_emb.npy", npy(np.ones((2, d), np.float32) / d ** 0.5))
PY
    run $Q --index "$T/dim.tar" --text a
    [ "$status" -eq 1 ]; [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"$T/dim.tar: sample b: img_emb.npy has dimension 16 but the model embeds in 32" ]]
    run $Q --index "$T/dim.tar" --image "$IMG"
    [ "$status" -eq 1 ]; [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"$T/dim.tar: sample b: txt_emb.npy has dimension 16 but the model embeds in 32" ]]
    # a server reads its index before it binds: the same error, nothing served
    run timeout 60 $Q --index "$T/dim.tar" --serve "ipc://$T/dim.sock"
    [ "$status" -eq 1 ]; [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"$T/dim.tar: sample b: img_emb.npy has dimension 16 but the model embeds in 32" ]]
    [ ! -e "$T/dim.sock" ]
}

# a server on ipc:// in $T, once it has answered a request
start_server() {
    ADDR="ipc://$T/q.sock"
    $Q --serve "$ADDR" 2> "$T/serve.err" &
    SPID=$!
    run timeout 60 $BIN/clip-query --request "$ADDR" '{"image": "'"$IMG"'", "labels": ["!", "#"]}'
    [ "$status" -eq 0 ]; [[ "$output" == *'"label"'* ]]
}

# the server's exit status in $st; fails unless it exits within 5 s
reap() {
    timeout 5 tail --pid="$SPID" -s 0.1 -f /dev/null || { kill -9 "$SPID"; false; }
    st=0
    wait "$SPID" || st=$?
    SPID=
}

@test "serve: SIGTERM stops it with status 143, one line, the ipc socket file removed" {
    start_server
    [ -S "$T/q.sock" ]
    kill -TERM "$SPID"
    reap
    [ "$st" -eq 143 ]
    [ "$(tail -n 1 "$T/serve.err")" = "clip-query: stopped by SIGTERM" ]
    [ "$(wc -l < "$T/serve.err")" -eq 2 ] # "serving on ...", then that
    [ ! -e "$T/q.sock" ]
}

@test "serve: SIGINT stops it with status 130" {
    start_server
    kill -INT "$SPID"
    reap
    [ "$st" -eq 130 ]
    [ "$(tail -n 1 "$T/serve.err")" = "clip-query: stopped by SIGINT" ]
    [ ! -e "$T/q.sock" ]
}

@test "serve: SIGTERM while a request is being answered: its reply goes out, then it stops" {
    start_server
    mkfifo "$T/img.fifo"
    timeout 60 $BIN/clip-query --request "$ADDR" \
        '{"image": "'"$T/img.fifo"'", "labels": ["!", "#"]}' > "$T/reply.json" &
    CPID=$!
    # the server blocks opening the fifo: once a writer can open it, the request is being
    # answered; let it block reading, signal it, and only then give it the image
    /usr/bin/python3 - "$T/img.fifo" "$SPID" "$IMG" <<'PY'
import errno, os, signal, sys, time
fifo, pid, img = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(1200):
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        break
    except OSError as e:
        if e.errno != errno.ENXIO: raise
        time.sleep(0.05)
else:
    sys.exit("the server never opened the fifo")
time.sleep(0.3)
os.kill(pid, signal.SIGTERM)
time.sleep(0.3)
os.set_blocking(fd, True)
with os.fdopen(fd, "wb") as f: f.write(open(img, "rb").read())
PY
    wait "$CPID" # the client got a reply, and not an error
    grep -q '"label"' "$T/reply.json"
    reap
    [ "$st" -eq 143 ]
    [ "$(tail -n 1 "$T/serve.err")" = "clip-query: stopped by SIGTERM" ]
}

@test "what loading the model noticed is a warning on stderr, and the query goes on" {
    mkindex
    # the English checkpoint + a BERT directory: no text_projection for BERT
    run "$BIN/clip-query" -m "$FIX/model/openai.pth" --text-model "$FIX/model/bert" \
        --vocab "$T/vocab.txt" -t 1 --index "$T/idx.tar" --text '! # [MASK]' -k 1
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "clip-query: no text_projection for the BERT tower: initialising [64, 32] from N(0, 64^-0.5)" ]]
    [ "${#lines[@]}" -eq 2 ]
}
