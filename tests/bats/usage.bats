#!/usr/bin/env bats
# Every program's usage errors (tests/cases/usage_errors.txt): one line on stderr naming what
# is wrong, exit status 2, nothing on stdout.

setup() {
    REPO="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
    BIN="${CLIP_BIN:-$REPO/bin}"
    SHARE="$REPO/share/clip-tools"
    T="$BATS_TEST_TMPDIR"
}

@test "each usage error of tests/cases/usage_errors.txt: its one line, exit 2, empty stdout" {
    n=0
    while IFS= read -r row; do
        if [[ -z "$row" || "$row" == "#"* ]]; then continue; fi
        cmd="${row%% -> *}"
        want="${row#* -> }"
        cmd="${cmd//@VOCAB@/$SHARE/bert-chinese-vocab.txt}"
        cmd="${cmd//@BPE@/$SHARE/bpe_simple_vocab_16e6.txt.gz}"
        read -ra argv <<< "$cmd"
        status=0
        (cd "$T" && "$BIN/${argv[0]}" "${argv[@]:1}" < /dev/null > "$T/out" 2> "$T/err") || status=$?
        got="$(cat "$T/err")"
        if [ "$status" -ne 2 ] || [ "$got" != "$want" ] || [ -s "$T/out" ]; then
            printf 'row: %s\nexit %s, stderr:\n%s\n' "$row" "$status" "$got"
            return 1
        fi
        n=$((n + 1))
    done < "$REPO/tests/cases/usage_errors.txt"
    [ "$n" -ge 20 ]
}
