#!/usr/bin/env bats
# Hostile inputs (issue 10): each crafted here by tests/hostile/craft.py,
# small; each once crashed, overflowed or committed unbounded memory, and is
# now refused with a message naming the file and the limit. make check-asan
# runs them against an ASan+UBSan build (CLIP_BIN=bin-asan CLIP_SANITIZED=1:
# ASan's shadow memory does not fit under ulimit -v, so the caps are left off).

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    CRAFT="/usr/bin/python3 $ROOT/tests/hostile/craft.py"
    T="$BATS_TEST_TMPDIR"
}

# cap_memory KB: ulimit -v, except under ASan
cap_memory() {
    [ -n "${CLIP_SANITIZED:-}" ] || ulimit -v "$1"
}

# load_model CKPT: clip-query loads the model and fails at the text query
load_model() {
    run timeout 60 "$BIN/clip-query" --model "$1" --text x --index /dev/null
    echo "$output"
}

@test "a storage of 2^62 elements: refused naming the sizes, no overflow" {
    $CRAFT storage-2e62 "$T/s.pth"
    load_model "$T/s.pth"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/s.pth"* ]]
    [[ "$output" == *"4611686018427387904 x 4 bytes, member archive/data/0 has 8"* ]]
}

@test "a storage offset of -8: refused before any offset arithmetic" {
    $CRAFT offset-neg "$T/o.pth"
    load_model "$T/o.pth"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/o.pth: tensor 'w' has a negative storage offset -8"* ]]
}

@test "one element viewed as [2^30] with stride 0: refused, not materialised as 4 GB" {
    $CRAFT stride0 "$T/z.pth"
    cap_memory 2000000
    load_model "$T/z.pth"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/z.pth: tensor 'w' [1073741824] repeats the 1 elements"* ]]
    [[ "$output" == *"larger than the file's"* ]]
}

@test "a ViT of width 0: refused at load, naming the width and its range" {
    $CRAFT vit-width0 "$T/w0.safetensors"
    load_model "$T/w0.safetensors"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/w0.safetensors: visual.conv1.weight: the width is 0, outside 64..16384"* ]]
}

@test "3000 ViT layers named by ln_1.weight alone: refused by the layer limit" {
    $CRAFT vit-3000 "$T/l3000.safetensors"
    load_model "$T/l3000.safetensors"
    [ "$status" -eq 1 ]
    [[ "$output" == *"more than 1024 layers"* ]]
}

@test "1000 ViT layers named by ln_1.weight alone: refused before the 3 GB table is allocated" {
    $CRAFT vit-1000 "$T/l1000.safetensors"
    cap_memory 1500000
    load_model "$T/l1000.safetensors"
    [ "$status" -eq 1 ]
    [[ "$output" == *"no tensor 'visual.transformer.resblocks.1.ln_1.bias': the configuration needs it as [256]"* ]]
}

@test "1000 BERT layers implied by one [1] tensor each: refused before the 3 GB table is allocated" {
    $CRAFT bert-1000 "$T/b.safetensors"
    cap_memory 1500000
    load_model "$T/b.safetensors"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/b.safetensors: transformer.encoder.layer.1.attention.self.query.weight: mis-shaped, expected [256, 256]"* ]]
}

# bert_dir CONFIG_JSON_OVERRIDES: a copy of the fixture BERT directory whose
# config.json has the given keys changed
bert_dir() {
    cp -r "$ROOT/tests/fixtures/model/bert" "$T/bert"
    $CRAFT bert-config "$T/bert/config.json" "$1"
}

load_with_bert() {
    run timeout 60 "$BIN/clip-query" --model "$ROOT/tests/fixtures/model/joint.pth" \
        --text-model "$T/bert" --text x --index /dev/null
    echo "$output"
}

@test "config.json num_attention_heads 2^32: refused with its range, no SIGFPE" {
    bert_dir '{"num_attention_heads": 4294967296}'
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: num_attention_heads is not an integer in 1..16384"* ]]
}

@test "config.json hidden_size 2^31: refused with its range, not wrapped negative" {
    bert_dir '{"hidden_size": 2147483648}'
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: hidden_size is not an integer in 1..16384"* ]]
}

@test "config.json num_hidden_layers 12000: refused before allocating" {
    bert_dir '{"num_hidden_layers": 12000}'
    cap_memory 2000000
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: num_hidden_layers is not an integer in 1..1024"* ]]
}

@test "config.json num_hidden_layers 3 for a 2-layer checkpoint: refused, naming both" {
    bert_dir '{"num_hidden_layers": 3}'
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: num_hidden_layers is 3 but the checkpoint's tensors have 2"* ]]
}

@test "config.json layer_norm_eps 1e75 (inf as float32), 0, -1e-12 or a string: refused, not NaN embeddings" {
    for eps in 1e75 1e-50 0 -1e-12 '"1e-12"'; do
        rm -rf "$T/bert"
        bert_dir "{\"layer_norm_eps\": $eps}"
        load_with_bert
        [ "$status" -eq 1 ]
        [[ "$output" == *"$T/bert/config.json: layer_norm_eps is not a number in (0, 1) (as float32)"* ]]
    done
    rm -rf "$T/bert"
    bert_dir '{"layer_norm_eps": 1e-5}'
    load_with_bert   # past config.json, to the vocabulary check
    [[ "$output" == *"vocabulary of 21128 ids, the text tower of"* ]]
}

@test "config.json vocab_size 1e8: refused with its range, not 'out of memory'" {
    bert_dir '{"vocab_size": 100000000}'
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: vocab_size is not an integer in 1..4194304"* ]]
}

@test "clip-embed: a valid tok.npy of shape [0, 16] gives txt_emb [0, D], no memcpy(NULL) (UBSan)" {
    $CRAFT tok-0-captions "$T/t0.tar"
    run "$BIN/clip-embed" --model "$ROOT/tests/fixtures/model/joint.pth" -i "$T/t0.tar" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"runtime error"* ]]
    run /usr/bin/python3 -c 'import io, sys, tarfile, numpy as np
t = tarfile.open(sys.argv[1])
print(np.load(io.BytesIO(t.extractfile("s000.txt_emb.npy").read())).shape)' "$T/out.tar"
    echo "$output"
    [ "$output" = "(0, 32)" ]
}

@test "clip-tokenize --bpe --lines: one 10 MB word takes seconds, not quadratic time" {
    /usr/bin/python3 -c 'import random, sys
random.seed(1)
sys.stdout.write("".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10**7)) + "\n")' > "$T/word.txt"
    run timeout 30 "$BIN/clip-tokenize" --bpe --lines -i "$T/word.txt"
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | wc -w)" -eq 77 ]
}

@test "clip-prep: an annotation path that reaches /dev/zero is refused as not a regular file or pipe" {
    printf '[{"image": "dev/zero", "caption": ["x"]}]' > "$T/ann.json"
    cap_memory 2000000
    run timeout 30 "$BIN/clip-prep" --annotations "$T/ann.json" --root / -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"//dev/zero: not a regular file or a pipe (an image must be one)"* ]]
    # through a link under another root, it is outside that root (prep.bats)
    ln -s /dev/zero "$T/zero.jpg"
    printf '[{"image": "zero.jpg", "caption": ["x"]}]' > "$T/ann.json"
    run timeout 30 "$BIN/clip-prep" --annotations "$T/ann.json" --root "$T" -o "$T/out.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"entry 0 (zero.jpg): resolves to /dev/zero, outside the root folder $T"* ]]
}

@test "clip-prep: an image from a pipe is read only up to the 256 MiB limit" {
    cap_memory 2000000
    run timeout 30 "$BIN/clip-prep" <(head -c 300M /dev/zero) -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"more than the limit of 268435456 bytes for a file of kind image"* ]]
}

@test "clip-prep: an image file over 256 MiB is refused before it is read" {
    truncate -s 300M "$T/big.jpg"
    cap_memory 2000000
    run timeout 30 "$BIN/clip-prep" "$T/big.jpg" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/big.jpg: 314572800 bytes, more than the limit of 268435456 for an image"* ]]
}

@test "clip-query --image /dev/zero: refused as not a regular file" {
    cap_memory 2000000
    head -256 "$ROOT/share/clip-tools/bert-chinese-vocab.txt" > "$T/vocab.txt"
    run timeout 30 "$BIN/clip-query" --model "$ROOT/tests/fixtures/model/joint.pth" \
        --vocab "$T/vocab.txt" --image /dev/zero --labels a,b
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"/dev/zero: not a regular file or a pipe (an image must be one)"* ]]
}

@test "a vocabulary that is /dev/zero is refused, naming the file" {
    run timeout 30 "$BIN/clip-tokenize" --vocab /dev/zero --lines -i /dev/null
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"/dev/zero: not a regular file or a pipe (a vocabulary must be one)"* ]]
}

@test "clip-prep: a 600-byte baseline JPEG claiming 16000x16000 is refused from its header" {
    $CRAFT jpeg-baseline "$T/b.jpg" 16000 16000 || skip "no PIL to make the JPEG"
    cap_memory 1000000
    run timeout 30 "$BIN/clip-prep" "$T/b.jpg" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/b.jpg: image of 16000x16000 = 256000000 pixels, more than the limit of 89478485"* ]]
}

@test "clip-prep: a progressive JPEG claiming 65500x65500 is refused before any coefficient buffer" {
    $CRAFT jpeg-progressive "$T/p.jpg" 65500 65500 || skip "no PIL to make the JPEG"
    cap_memory 1000000
    run timeout 30 "$BIN/clip-prep" "$T/p.jpg" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/p.jpg: image of 65500x65500 = 4290250000 pixels, more than the limit of 89478485"* ]]
}

@test "clip-prep --max-pixels: the limit is width x height, inclusive" {
    $CRAFT jpeg-baseline "$T/s.jpg" 16 16 || skip "no PIL to make the JPEG"
    run "$BIN/clip-prep" --max-pixels 255 "$T/s.jpg" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"image of 16x16 = 256 pixels, more than the limit of 255"* ]]
    run "$BIN/clip-prep" --max-pixels 256 "$T/s.jpg" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "clip-prep: a PNG (libvips) claiming 30000x30000 is refused from its header" {
    /usr/bin/python3 - "$T/big.png" <<'PY'
import struct, sys, zlib
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
idat = zlib.compress(b"\0" * 1000)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
PY
    cap_memory 1500000
    run timeout 30 "$BIN/clip-prep" "$T/big.png" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/big.png: image of 30000x30000 = 900000000 pixels, more than the limit of 89478485"* ]]
}

@test "clip-prep --root X.zip: a member declaring 300 MB is refused before it is inflated" {
    $CRAFT zip-bomb "$T/bomb.zip"
    printf '[{"image": "x.jpg", "caption": ["x"]}]' > "$T/ann.json"
    cap_memory 1500000
    run timeout 30 "$BIN/clip-prep" --annotations "$T/ann.json" --root "$T/bomb.zip" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"x.jpg in $T/bomb.zip: declares 314572800 bytes, more than the limit of 268435456 for an image"* ]]
}

@test "clip-prep --root X.zip: a member that says 100 bytes and inflates to 300 MB stops at the limit" {
    $CRAFT zip-lying "$T/lying.zip"
    printf '[{"image": "x.jpg", "caption": ["x"]}]' > "$T/ann.json"
    cap_memory 1500000
    run timeout 30 "$BIN/clip-prep" --annotations "$T/ann.json" --root "$T/lying.zip" -o "$T/out.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"x.jpg in $T/lying.zip: inflates to more than the limit of 268435456 bytes for an image"* ]]
}

@test "a tar member whose size field says 2^62: refused naming the stream, sample, member and limit" {
    $CRAFT tar-2e62 "$T/t.tar"
    run "$BIN/clip-embed" --model "$ROOT/tests/fixtures/model/joint.pth" -o "$T/out.tar" < "$T/t.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdin>: sample s000: member s000.json claims 4611686018427387904 bytes, more than the limit of 1073741824 for one field"* ]]
}

@test "a 1.5 KB stream whose member claims 900 MiB: refused as truncated within 600 MB, not 'out of memory'" {
    # found by fuzz_tar: the reader allocated what the header claimed before any byte came
    # (600 MB: OpenBLAS needs ~400 MB of address space to start, and loops below ~300 MB)
    $CRAFT tar-900m "$T/t.tar"
    cap_memory 600000
    run timeout 60 "$BIN/clip-recall" -i "$T/t.tar"
    echo "$output"
    [ "$status" -eq 1 ]
    [ "$output" = "clip-recall: $T/t.tar: sample s000: member s000.json truncated or unreadable: Truncated tar archive" ]
    run timeout 60 "$BIN/clip-embed" --model "$ROOT/tests/fixtures/model/joint.pth" -o "$T/out.tar" < "$T/t.tar"
    [ "$status" -eq 1 ]
    [[ "$output" == *"<stdin>: sample s000: member s000.json truncated or unreadable"* ]]
}

@test "clip-query > /dev/full: exits 1 saying the write failed, not 0" {
    head -256 "$ROOT/share/clip-tools/bert-chinese-vocab.txt" > "$T/vocab.txt"
    img=$(ls "$ROOT"/tests/fixtures/flickr8k-mini/flickr8k-images/*.jpg | head -1)
    run sh -c '"$1" --model "$2" --vocab "$3" --image "$4" --labels a,b > /dev/full' sh \
        "$BIN/clip-query" "$ROOT/tests/fixtures/model/joint.pth" "$T/vocab.txt" "$img"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"stdout: write failed: No space left on device"* ]]
}

@test "clip-prep --annotations /dev/zero and a config.json that is /dev/zero: refused as devices" {
    run timeout 30 "$BIN/clip-prep" --annotations /dev/zero --root "$T"
    echo "$output"
    [ "$status" -eq 1 ]
    [[ "$output" == *"/dev/zero: not a regular file or a pipe (an annotations file must be one)"* ]]
    mkdir "$T/bert"
    cp "$ROOT/tests/fixtures/model/bert/pytorch_model.bin" "$T/bert/"
    ln -s /dev/zero "$T/bert/config.json"
    load_with_bert
    [ "$status" -eq 1 ]
    [[ "$output" == *"$T/bert/config.json: not a regular file or a pipe (a config file must be one)"* ]]
}

@test "clip-prep: an image file name that is not UTF-8 (JSON holds only UTF-8) is refused naming it" {
    img=$(ls "$ROOT"/tests/fixtures/flickr8k-mini/flickr8k-images/*.jpg | head -1)
    cp "$img" "$T/$(printf 'a\377').jpg"
    run "$BIN/clip-prep" -o "$T/out.tar" "$T/$(printf 'a\377').jpg"
    [ "$status" -eq 1 ]
    [[ "$output" == *"a"$'\377'".jpg: the image path or a caption is not valid UTF-8"* ]]
    [ ! -e "$T/out.tar" ]
}
