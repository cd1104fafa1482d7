#!/usr/bin/env bats
# clip-tokenize: --lines against the reference vectors, stream mode, errors.

setup() {
    REPO="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
    TOK="${CLIP_BIN:-$REPO/bin}/clip-tokenize"
    VOCAB="$REPO/share/clip-tools/bert-chinese-vocab.txt"
    BPE="$REPO/share/clip-tools/bpe_simple_vocab_16e6.txt.gz"
    VECTORS="$REPO/tests/fixtures/tokenize"
    T="$BATS_TEST_TMPDIR"
}

# texts.txt and want.txt from a vector file (texts without newlines)
split_vectors() {
    /usr/bin/python3 -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as f, \
     open(sys.argv[2], "w", encoding="utf-8") as t, open(sys.argv[3], "w") as w:
    for line in f:
        v = json.loads(line)
        if "\n" in v["text"]:
            continue
        t.write(v["text"] + "\n")
        w.write(" ".join(map(str, v["ids"])) + "\n")
' "$1" "$T/texts.txt" "$T/want.txt"
}

# a sample stream: a (two captions + jpg), b (no captions)
make_stream() {
    mkdir -p "$T/in"
    cd "$T/in"
    printf '{"image": "a.jpg", "captions": ["%s", "狗"]}' "$1" > a.json
    printf 'not really a jpeg' > a.jpg
    printf '{"image": "b.jpg", "captions": []}' > b.json
    tar cf "$T/in.tar" a.json a.jpg b.json
    cd - > /dev/null
}

# header dict and int32 values of member $2 of tar $1
npy_header() { tar xOf "$1" "$2" | head -c 128 | tail -c +11 | tr -d '\n'; }
npy_values() { tar xOf "$1" "$2" | od -An -v -t d4 -j 128 | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'; }

@test "--help prints usage and exits 0" {
    run "$TOK" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage:"* ]]
    [[ "$output" == *"--vocab"* && "$output" == *"--bpe"* && "$output" == *"--lines"* ]]
}

@test "unknown option is an error" {
    run "$TOK" --vocab "$VOCAB" --no-such-option
    [ "$status" -ne 0 ]
    [[ "$output" == *"no-such-option"* ]]
}

@test "--vocab and --bpe together are an error" {
    run "$TOK" --vocab "$VOCAB" --bpe "$BPE" --lines < /dev/null
    [ "$status" -ne 0 ]
    [[ "$output" == *"--vocab"*"--bpe"* ]]
}

@test "without --vocab the shipped Chinese vocabulary is used; --bpe alone the shipped merges" {
    run bash -c "echo 一只狗 | '$TOK' --lines"
    [ "$status" -eq 0 ]
    [ "$output" = "101 671 1372 4318 102" ]
    run bash -c "echo 'a black dog' | '$TOK' --bpe --lines"
    [ "$status" -eq 0 ]
    [ "$output" = "49406 320 1449 1929 49407" ]
    # the file may follow --bpe as its own word or after '='
    run bash -c "echo 'a black dog' | '$TOK' --bpe '$BPE' --lines"
    [ "$output" = "49406 320 1449 1929 49407" ]
    run bash -c "echo 'a black dog' | '$TOK' --bpe='$BPE' --lines"
    [ "$output" = "49406 320 1449 1929 49407" ]
}

@test "an installed tree finds its vocabularies wherever it was installed" {
    make -s -C "$REPO" install PREFIX="$T/prefix" > /dev/null
    [ -f "$T/prefix/share/clip-tools/bert-chinese-vocab.txt" ]
    [ -f "$T/prefix/share/clip-tools/bpe_simple_vocab_16e6.txt.gz" ]
    mv "$T/prefix" "$T/moved"   # relocated after installation
    cd "$T"
    run bash -c "echo 一只狗 | '$T/moved/bin/clip-tokenize' --lines"
    [ "$status" -eq 0 ]
    [ "$output" = "101 671 1372 4318 102" ]
}

@test "CLIP_TOOLS_DATA overrides where the vocabularies are looked for" {
    mkdir "$T/data" "$T/empty"
    head -1000 "$VOCAB" > "$T/data/bert-chinese-vocab.txt"
    run bash -c "echo 一只狗 | CLIP_TOOLS_DATA='$T/data' '$TOK' --lines"
    [ "$status" -eq 0 ]
    [ "$output" = "101 671 100 100 102" ]   # 只 (1372) and 狗 (4318) are past line 1000: [UNK]
    run bash -c "echo 一只狗 | CLIP_TOOLS_DATA='$T/empty' '$TOK' --lines"
    [ "$status" -ne 0 ]
    [[ "$output" == *"bert-chinese-vocab.txt"*"CLIP_TOOLS_DATA"*"$T/empty"* ]]
    [ "${#lines[@]}" -eq 1 ]
}

@test "missing vocabulary file is named" {
    run "$TOK" --vocab "$T/nope.txt" --lines < /dev/null
    [ "$status" -ne 0 ]
    [[ "$output" == *"nope.txt"* ]]
}

@test "bad --context-length is an error" {
    run "$TOK" --vocab "$VOCAB" --context-length 1 --lines < /dev/null
    [ "$status" -ne 0 ]
    [[ "$output" == *"--context-length"* ]]
}

@test "--lines WordPiece matches the BERT reference vectors" {
    split_vectors "$VECTORS/bert-chinese-tokens.jsonl"
    "$TOK" --vocab "$VOCAB" --lines < "$T/texts.txt" > "$T/got.txt"
    [ "$(wc -l < "$T/got.txt")" -gt 5000 ]
    diff "$T/want.txt" "$T/got.txt"
}

@test "--lines BPE matches the CLIP reference vectors" {
    split_vectors "$VECTORS/clip-bpe-tokens.jsonl"
    "$TOK" --bpe "$BPE" --lines -i "$T/texts.txt" -o "$T/got.txt"
    [ "$(wc -l < "$T/got.txt")" -gt 5000 ]
    diff "$T/want.txt" "$T/got.txt"
}

@test "--lines truncates to --context-length keeping the end token" {
    run bash -c "echo '一只黑狗在雪地里' | '$TOK' --vocab '$VOCAB' --lines --context-length 4"
    [ "$status" -eq 0 ]
    [ "$output" = "101 671 1372 102" ]
    run bash -c "echo 'a black dog in the snow' | '$TOK' --bpe '$BPE' --lines --context-length 4"
    [ "$status" -eq 0 ]
    [ "$output" = "49406 320 1449 49407" ]
}

@test "--lines: invalid UTF-8 names the line" {
    run bash -c "printf 'good\n\xff bad\n' | '$TOK' --vocab '$VOCAB' --lines"
    [ "$status" -ne 0 ]
    [[ "$output" == *"line 2"* && "$output" == *"UTF-8"* ]]
}

@test "stream mode adds tok.npy int32 [n_captions, 52] and passes fields through" {
    make_stream "一只黑狗在雪地里追着一只白狗。"
    "$TOK" --vocab "$VOCAB" < "$T/in.tar" > "$T/out.tar"
    run tar tf "$T/out.tar"
    [ "$output" = "$(printf 'a.json\na.jpg\na.tok.npy\nb.json\nb.tok.npy')" ]
    tar xOf "$T/out.tar" a.jpg | cmp - "$T/in/a.jpg"
    tar xOf "$T/out.tar" a.json | cmp - "$T/in/a.json"
    [[ "$(npy_header "$T/out.tar" a.tok.npy)" == *"'descr': '<i4'"*"'shape': (2, 52)"* ]]
    [ "$(tar xOf "$T/out.tar" a.tok.npy | wc -c)" -eq $((128 + 2 * 52 * 4)) ]
    want="101 671 1372 7946 4318 1762 7434 1765 7027 6841 4708 671 1372 4635 4318 511 102"
    want="$want$(printf ' 0%.0s' $(seq 35)) 101 4318 102$(printf ' 0%.0s' $(seq 49))"
    [ "$(npy_values "$T/out.tar" a.tok.npy)" = "$want" ]
    [[ "$(npy_header "$T/out.tar" b.tok.npy)" == *"'shape': (0, 52)"* ]]
}

@test "stream mode BPE: [n_captions, 77], --field and file endpoints" {
    make_stream "A black dog is running after a white dog in the snow ."
    "$TOK" --bpe "$BPE" --field bpe.npy -i "$T/in.tar" -o "$T/out.tar"
    [[ "$(npy_header "$T/out.tar" a.bpe.npy)" == *"'descr': '<i4'"*"'shape': (2, 77)"* ]]
    vals=($(npy_values "$T/out.tar" a.bpe.npy))
    [ "${#vals[@]}" -eq 154 ]
    [ "${vals[*]:0:16}" = "49406 320 1449 1929 533 2761 953 320 1579 1929 530 518 2583 269 49407 0" ]
    [ "${vals[*]:77:6}" = "49406 163 233 501 49407 0" ]
}

@test "stream mode: invalid UTF-8 in a caption names the sample" {
    make_stream "$(printf 'bad \xff text')"
    run bash -c "'$TOK' --vocab '$VOCAB' < '$T/in.tar' > '$T/out.tar'"
    [ "$status" -ne 0 ]
    [[ "$output" == *"sample a"* ]]
}

@test "stream mode: a sample without captions is an error naming it" {
    make_stream "x"
    cd "$T/in"
    printf '{"image": "c.jpg"}' > c.json
    printf 'jpeg' > d.jpg
    tar cf "$T/c.tar" c.json
    tar cf "$T/d.tar" d.jpg
    cd - > /dev/null
    run bash -c "'$TOK' --vocab '$VOCAB' < '$T/c.tar' > /dev/null"
    [ "$status" -ne 0 ]
    [[ "$output" == *"sample c"*"captions"* ]]
    run bash -c "'$TOK' --vocab '$VOCAB' < '$T/d.tar' > /dev/null"
    [ "$status" -ne 0 ]
    [[ "$output" == *"sample d"*"json"* ]]
}
