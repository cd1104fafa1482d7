#!/usr/bin/env bats
# The stream format through the real programs: pipes, files and ZeroMQ.

setup() {
    BIN=${CLIP_BIN:-bin}
    TMP=$(mktemp -d)
    MINI=tests/fixtures/flickr8k-mini
    VOCAB=share/clip-tools/bert-chinese-vocab.txt
}

teardown() { rm -rf "$TMP"; }

@test "samples pass through ZeroMQ from two producers exactly once" {
    port=$((20000 + RANDOM % 20000))
    # timeouts: a writer waits for its reader forever, so a reader that died
    # (bad vocabulary path, port taken) must fail the test, not hang it
    timeout 60 $BIN/clip-tokenize --vocab $VOCAB -i "tcp://127.0.0.1:$port?producers=2" -o "$TMP/all.tar" &
    consumer=$!
    timeout 60 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "tcp://127.0.0.1:$port" &
    timeout 60 $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "tcp://127.0.0.1:$port"
    wait %2
    wait $consumer
    run bash -c "tar tf $TMP/all.tar | grep -c 'tok.npy$'"
    [ "$output" = 16 ]
    run bash -c "tar tf $TMP/all.tar | grep 'img.npy$' | sort | uniq -c | awk '{print \$1}' | sort -u"
    [ "$output" = 2 ]
}

@test "a pipe and a file give the same samples, readable by tarfile + numpy" {
    $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI | $BIN/clip-tokenize --vocab $VOCAB > "$TMP/a.tar"
    $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$TMP/p.tar"
    $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/p.tar" -o "$TMP/b.tar"
    run /usr/bin/python3 - "$TMP/a.tar" "$TMP/b.tar" <<'PY'
import io, sys, tarfile, numpy as np
def load(p):
    with tarfile.open(p) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
a, b = load(sys.argv[1]), load(sys.argv[2])
assert [n for n, _ in a] == [n for n, _ in b] and all(x == y for (_, x), (_, y) in zip(a, b))
imgs = [np.load(io.BytesIO(d)) for n, d in a if n.endswith('.img.npy')]
toks = [np.load(io.BytesIO(d)) for n, d in a if n.endswith('.tok.npy')]
assert len(imgs) == 8 and all(i.shape == (224, 224, 3) and i.dtype == np.uint8 for i in imgs)
assert all(t.shape == (5, 52) and t.dtype == np.int32 and (t[:, 0] == 101).all() for t in toks)
print("ok")
PY
    [ "$status" -eq 0 ]
    [ "$output" = ok ]
}

@test "a truncated stream is an error naming the last good sample" {
    $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$TMP/p.tar"
    head -c 400000 "$TMP/p.tar" > "$TMP/cut.tar"
    run $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/cut.tar" -o "$TMP/out.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"truncated"* ]]
    [[ "$output" == *"sample"* ]]
    [ ! -e "$TMP/out.tar" ]
    [ -z "$(ls $TMP | grep tmp-)" ]
}

@test "a failed run leaves no output file and keeps an old one" {
    echo old > "$TMP/out.tar"
    run $BIN/clip-prep --annotations $MINI/cn_mini.json --root /nonexistent -o "$TMP/out.tar"
    [ "$status" -ne 0 ]
    [ "$(cat $TMP/out.tar)" = old ]
    [ -z "$(ls $TMP | grep tmp-)" ]
}

@test "an empty stream is empty, not an error" {
    # (not `clip-tokenize | wc -c`: that status is wc's)
    run bash -c ": | $BIN/clip-tokenize --vocab $VOCAB > $TMP/out.tar"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    run tar tf "$TMP/out.tar"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "shards in brace notation read as one stream, in order; a missing shard fails at once" {
    $BIN/clip-prep --annotations $MINI/cn_mini.json --root $MINI -o "$TMP/all.tar"
    # split into 3 shards at sample boundaries (3, 1 and 4 samples) with Python's tarfile
    /usr/bin/python3 - "$TMP" <<'PY'
import sys, tarfile
d = sys.argv[1]
with tarfile.open(f"{d}/all.tar") as t:
    members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
keys = []
for m, _ in members:
    k = m.name.split(".", 1)[0]
    if k not in keys:
        keys.append(k)
cut = {k: (0 if i < 3 else 1 if i < 4 else 2) for i, k in enumerate(keys)}
import io
outs = [tarfile.open(f"{d}/part-{i:02d}.tar", "w", format=tarfile.PAX_FORMAT) for i in range(3)]
for m, data in members:
    outs[cut[m.name.split(".", 1)[0]]].addfile(m, io.BytesIO(data))
for o in outs:
    o.close()
PY
    $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/all.tar" -o "$TMP/ref.tar"
    $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/part-{00..02}.tar" -o "$TMP/sharded.tar"
    run bash -c "tar tf '$TMP/ref.tar' > '$TMP/ref.txt' && tar tf '$TMP/sharded.tar' | diff '$TMP/ref.txt' -"
    [ "$status" -eq 0 ]
    run bash -c "tar xOf '$TMP/ref.tar' | cmp - <(tar xOf '$TMP/sharded.tar')"
    [ "$status" -eq 0 ]
    run $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/part-{00..03}.tar" -o "$TMP/bad.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"part-03.tar"*"shard 4 of 4"* ]]
    [ ! -e "$TMP/bad.tar" ]
    run $BIN/clip-tokenize --vocab $VOCAB -i "$TMP/part-{00..02.tar" -o "$TMP/bad.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"'{' without '}'"* ]]
}
