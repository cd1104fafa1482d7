#!/usr/bin/env bats
# clip-prep: annotations + images (folder, zip, tar.gz, bare paths) -> sample stream.

MINI=tests/fixtures/flickr8k-mini

setup() {
    T=$(mktemp -d)
    PREP="${CLIP_BIN:-bin}/clip-prep"
}

teardown() {
    rm -rf "$T"
}

# keys, fields, shapes and captions of a stream, one line per sample
summary() {
    /usr/bin/python3 -c '
import io, json, sys, tarfile
import numpy as np
samples = {}
order = []
with tarfile.open(sys.argv[1]) as t:
    for m in t.getmembers():
        key, field = m.name.split(".", 1)
        if key not in samples:
            samples[key] = {}
            order.append(key)
        samples[key][field] = t.extractfile(m).read()
for k in order:
    s = samples[k]
    a = np.load(io.BytesIO(s["img.npy"]))
    meta = json.loads(s["json"])
    print(k, ",".join(sorted(s)), a.dtype, "x".join(map(str, a.shape)), meta["image"],
          len(meta["captions"]), int(a.astype(np.int64).sum()))
' "$1"
}

@test "--help" {
    run $PREP --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--annotations"* ]]
    [[ "$output" == *"--skip-bad"* ]]
}

@test "folder root: one sample per image in annotation order, uint8 [224,224,3], captions" {
    $PREP --annotations $MINI/cn_mini.json --root $MINI > "$T/out.tar"
    run summary "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 8 ]
    [[ "${lines[0]}" == "2090545563_a4e66ec76b img.npy,json uint8 224x224x3 flickr8k-images/2090545563_a4e66ec76b.jpg 5 "* ]]
    [[ "${lines[7]}" == "2596619849_7b635dd310 "* ]]
    # captions are the annotation's, UTF-8 intact
    /usr/bin/python3 -c '
import json, sys, tarfile
t = tarfile.open(sys.argv[1])
meta = json.loads(t.extractfile("2090545563_a4e66ec76b.json").read())
ann = json.load(open(sys.argv[2]))[0]
assert meta["captions"] == ann["caption"], meta
' "$T/out.tar" $MINI/cn_mini.json
}

@test "sizes and resize modes" {
    for mode in crop letterbox squash; do
        $PREP --annotations $MINI/cn_mini.json --root $MINI --size 160 --resize $mode -o "$T/$mode.tar"
        run summary "$T/$mode.tar"
        [ "$status" -eq 0 ]
        [ "${#lines[@]}" -eq 8 ]
        [[ "${lines[0]}" == *" uint8 160x160x3 "* ]]
    done
    run $PREP --annotations $MINI/cn_mini.json --root $MINI --resize stretch
    [ "$status" -eq 2 ] # a usage error, as in every tool
    [[ "$output" == *"--resize"* ]]
}

@test "zip root with a top-level folder, and tar.gz root: same samples as the folder" {
    $PREP --annotations $MINI/cn_mini.json --root $MINI > "$T/dir.tar"
    summary "$T/dir.tar" > "$T/dir.txt"
    mkdir -p "$T/src/flickr8k-cn"
    cp -r $MINI/flickr8k-images "$T/src/flickr8k-cn/"
    if command -v zip > /dev/null; then
        (cd "$T/src" && zip -qr ../images.zip flickr8k-cn)
    else
        (cd "$T/src" && /usr/bin/python3 -c '
import os, zipfile
with zipfile.ZipFile("../images.zip", "w") as z:
    for d, _, fs in os.walk("flickr8k-cn"):
        for f in fs: z.write(os.path.join(d, f))')
    fi
    tar -C $MINI -czf "$T/images.tar.gz" flickr8k-images
    $PREP --annotations $MINI/cn_mini.json --root "$T/images.zip" --threads 2 > "$T/zip.tar"
    $PREP --annotations $MINI/cn_mini.json --root "$T/images.tar.gz" --threads 1 > "$T/tgz.tar"
    [ "$(wc -l < "$T/dir.txt")" -eq 8 ]
    # not `summary | diff -`: the pipeline's status would be diff's alone
    summary "$T/zip.tar" > "$T/zip.txt"
    summary "$T/tgz.tar" > "$T/tgz.txt"
    diff "$T/zip.txt" "$T/dir.txt"
    diff "$T/tgz.txt" "$T/dir.txt"
}

@test "--keep-original stores the original bytes by type" {
    $PREP --annotations $MINI/cn_mini.json --root $MINI --keep-original > "$T/out.tar"
    tar -xf "$T/out.tar" -C "$T" 2090545563_a4e66ec76b.jpg
    cmp "$T/2090545563_a4e66ec76b.jpg" $MINI/flickr8k-images/2090545563_a4e66ec76b.jpg
}

@test "bare image paths: key from the file name, dots -> _, no captions" {
    cp $MINI/flickr8k-images/2090545563_a4e66ec76b.jpg "$T/my.photo.jpg"
    $PREP "$T/my.photo.jpg" $MINI/flickr8k-images/3393035454_2d2370ffd4.jpg > "$T/out.tar"
    run summary "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[0]}" == "my_photo img.npy,json uint8 224x224x3 $T/my.photo.jpg 0 "* ]]
    [[ "${lines[1]}" == "3393035454_2d2370ffd4 "* ]]
}

make_bad_set() { # $T/bad: the mini set with entry 2's image truncated
    cp -r $MINI "$T/bad"
    f="$T/bad/flickr8k-images/3695064885_a6922f06b2.jpg"
    head -c 3000 "$f" > "$f.cut" && mv "$f.cut" "$f"
}

@test "corrupt (truncated) JPEG: one-line error naming the file, no output file" {
    make_bad_set
    run $PREP --annotations "$T/bad/cn_mini.json" --root "$T/bad" -o "$T/out.tar"
    [ "$status" -ne 0 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"3695064885_a6922f06b2.jpg"* ]]
    [ ! -e "$T/out.tar" ]
    [ -z "$(ls "$T" | grep part)" ]
}

@test "--skip-bad: a warning per bad image, a count, exit 0" {
    make_bad_set
    rm "$T/bad/flickr8k-images/1579798212_d30844b4c5.jpg"
    $PREP --annotations "$T/bad/cn_mini.json" --root "$T/bad" --skip-bad -o "$T/out.tar" 2> "$T/err"
    grep -q "3695064885_a6922f06b2.jpg" "$T/err"
    grep -q "1579798212_d30844b4c5.jpg" "$T/err"
    grep -q "2 bad images skipped" "$T/err"
    run summary "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 6 ]
}

@test "missing image: error naming it" {
    cp -r $MINI "$T/m"
    rm "$T/m/flickr8k-images/3393035454_2d2370ffd4.jpg"
    run $PREP --annotations "$T/m/cn_mini.json" --root "$T/m"
    [ "$status" -ne 0 ]
    [[ "${lines[-1]}" == *"3393035454_2d2370ffd4.jpg"* ]]
    tar -C $MINI -cf "$T/m.tar" flickr8k-images/2090545563_a4e66ec76b.jpg
    run $PREP --annotations $MINI/cn_mini.json --root "$T/m.tar"
    [ "$status" -ne 0 ]
    [[ "${lines[-1]}" == *"3393035454_2d2370ffd4.jpg: not found in $T/m.tar"* ]]
}

@test "malformed JSON and a non-string caption: errors naming the file and entry" {
    printf '[{"image": "flickr8k-images/a.jpg", "caption": ["x"]' > "$T/bad.json"
    run $PREP --annotations "$T/bad.json" --root $MINI
    [ "$status" -ne 0 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *"$T/bad.json"*"malformed JSON"* ]]
    printf '[{"image": "flickr8k-images\\\\2090545563_a4e66ec76b.jpg", "caption": ["x", 7]}]' > "$T/cap.json"
    run $PREP --annotations "$T/cap.json" --root $MINI
    [ "$status" -ne 0 ]
    [[ "$output" == *"entry 0"*"flickr8k-images/2090545563_a4e66ec76b.jpg"*"not a string"* ]]
}

@test "Windows separators in annotations are accepted" {
    printf '[{"image": "flickr8k-images\\\\2090545563_a4e66ec76b.jpg", "caption": ["x"]}]' > "$T/win.json"
    $PREP --annotations "$T/win.json" --root $MINI > "$T/out.tar"
    run summary "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "${lines[0]}" == *" flickr8k-images/2090545563_a4e66ec76b.jpg 1 "* ]]
}

# captions KEY STREAM: the key's caption list in the stream, as JSON
captions() {
    /usr/bin/python3 -c '
import json, sys, tarfile
print(json.dumps(json.loads(tarfile.open(sys.argv[2]).extractfile(sys.argv[1] + ".json").read())["captions"], ensure_ascii=False))
' "$1" "$2"
}

@test "an image listed twice: one sample, every entry's captions in list order, a note with the count" {
    A=flickr8k-images/2090545563_a4e66ec76b.jpg
    B=flickr8k-images/3393035454_2d2370ffd4.jpg
    # "./" and "\" name the same file, and "caption" may be one string
    printf '[{"image": "%s", "caption": ["a1", "a2"]}, {"image": "%s", "caption": ["b1"]},
             {"image": ".\\\\%s", "caption": ["a3"]}, {"image": "%s", "caption": "a4"}]' \
        "$A" "$B" "${A//\//\\\\}" "$A" > "$T/dup.json"
    run $PREP --annotations "$T/dup.json" --root $MINI --size 32 -o "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "$output" = "clip-prep: $T/dup.json: 2 entries named an image listed before: their captions joined its sample" ]
    run summary "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[0]}" == "2090545563_a4e66ec76b img.npy,json uint8 32x32x3 $A 4 "* ]]
    [[ "${lines[1]}" == "3393035454_2d2370ffd4 img.npy,json uint8 32x32x3 $B 1 "* ]]
    run captions 2090545563_a4e66ec76b "$T/out.tar"
    [ "$output" = '["a1", "a2", "a3", "a4"]' ]
    # a reader takes the stream: no sample key twice
    run bash -c "set -o pipefail; '${CLIP_BIN:-bin}/clip-tokenize' < '$T/out.tar' | tar t"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 6 ]
}

@test "one duplicate: the note says 1 entry" {
    A=flickr8k-images/2090545563_a4e66ec76b.jpg
    printf '[{"image": "%s", "caption": "x"}, {"image": "%s", "caption": "y"}]' "$A" "$A" > "$T/dup.json"
    run $PREP --annotations "$T/dup.json" --root $MINI --size 32 -o "$T/out.tar"
    [ "$status" -eq 0 ]
    [ "$output" = "clip-prep: $T/dup.json: 1 entry named an image listed before: its captions joined its sample" ]
}

# a root folder $T/root (img/a.jpg) and a JPEG outside it, $T/outside/x.jpg
outside_setup() {
    mkdir -p "$T/root/img" "$T/outside"
    cp $MINI/flickr8k-images/2090545563_a4e66ec76b.jpg "$T/root/img/a.jpg"
    cp $MINI/flickr8k-images/3393035454_2d2370ffd4.jpg "$T/outside/x.jpg"
}

# ann IMAGE...: an annotations file listing the images, one caption each
ann() {
    local sep='' e=''
    for i in "$@"; do e="$e$sep{\"image\": \"$i\", \"caption\": \"c\"}"; sep=', '; done
    printf '[%s]' "$e" > "$T/ann.json"
}

@test "an annotation path with '..' out of --root is refused naming the entry; none is read" {
    outside_setup
    for p in ../outside/x.jpg img/../../outside/x.jpg /../outside/x.jpg ./../outside/x.jpg \
             '..\\outside\\x.jpg' ../outside/missing.jpg; do
        ann img/a.jpg "$p"
        run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 -o "$T/out.tar"
        [ "$status" -eq 1 ]
        [ "${#lines[@]}" -eq 1 ]
        [[ "$output" == "clip-prep: $T/ann.json: entry 1 ("*"): its \"..\" leads out of the root folder $T/root" ]]
        [ ! -e "$T/out.tar" ]
    done
    # --skip-bad skips bad images, not bad annotations
    ann ../outside/x.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 --skip-bad -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"entry 0 (../outside/x.jpg): its \"..\" leads out of the root folder"* ]]
    # '..' that stays inside is fine
    ann img/../img/a.jpg img/./a.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 -o "$T/out.tar"
    [ "$status" -eq 0 ]
    [ -s "$T/out.tar" ]
}

@test "a symbolic link under --root to a file or folder outside it is refused, naming the entry and the real path" {
    outside_setup
    ln -s "$T/outside/x.jpg" "$T/root/img/link.jpg"
    ln -s ../outside "$T/root/out"
    ann img/a.jpg img/link.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [ "$output" = "clip-prep: $T/ann.json: entry 1 (img/link.jpg): resolves to $(realpath "$T/outside/x.jpg"), outside the root folder $T/root (a symbolic link?)" ]
    [ ! -e "$T/out.tar" ]
    ann out/x.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"entry 0 (out/x.jpg): resolves to $(realpath "$T/outside/x.jpg"), outside the root folder $T/root"* ]]
    # a folder beside the root whose name starts with the root's is outside too
    mkdir "$T/root2"
    cp "$T/outside/x.jpg" "$T/root2/x.jpg"
    ln -s ../../root2/x.jpg "$T/root/img/sibling.jpg"
    ann img/sibling.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root" --size 32 -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"entry 0 (img/sibling.jpg): resolves to $(realpath "$T/root2/x.jpg"), outside"* ]]
    # links that stay inside, and a root that is itself a link, are fine
    ln -s a.jpg "$T/root/img/alias.jpg"
    ln -s root "$T/root-link"
    ann img/alias.jpg img/a.jpg
    run $PREP --annotations "$T/ann.json" --root "$T/root-link" --size 32 -o "$T/out.tar"
    [ "$status" -eq 0 ]
    run summary "$T/out.tar"
    [ "${#lines[@]}" -eq 2 ]
}
