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
    head -256 "$ROOT/../shared/data/vocab/bert-chinese-vocab.txt" > "$T/vocab.txt"
    IMG="$FIX/flickr8k-mini/flickr8k-images/2090545563_a4e66ec76b.jpg"
    Q="$BIN/clip-query -m $MODEL --vocab $T/vocab.txt -t 1"
}

teardown() {
    [ -z "${SPID:-}" ] || kill "$SPID" 2>/dev/null || true
}

mkindex() {
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
    run $BIN/clip-query -m "$MODEL" --index "$T/idx.tar" --text a
    [ "$status" -ne 0 ]; [[ "$output" == *--vocab* ]]
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
