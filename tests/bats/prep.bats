#!/usr/bin/env bats
# clip-prep: annotations + images (folder, zip, tar.gz, bare paths) -> sample stream.

MINI=tests/fixtures/flickr8k-mini

setup() {
    T=$(mktemp -d)
    PREP=bin/clip-prep
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
    [ "$status" -ne 0 ]
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
