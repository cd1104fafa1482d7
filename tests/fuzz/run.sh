#!/usr/bin/env bash
# One fuzz target's run, summed up in one line (mk/fuzz.mk):
#   run.sh builtin ITERATIONS NAME BINARY SEED_FILE...   the built-in driver (FUZZ_SEED: its seed)
#   run.sh libfuzzer SECONDS NAME BINARY SEED_FILE...    libFuzzer, on a copy of the seeds
# prints "NAME: N executions, 0 crashes" or the crash, its input and the log's tail; exits
# non-zero on a crash. Logs and crash inputs: build-asan/fuzz/ and build-fuzz/.
set -uo pipefail
mode=$1 amount=$2 name=$3 bin=$4
shift 4
[ $# -gt 0 ] || { echo "fuzz $name: no seeds (tests/fuzz/corpus/$name/)" >&2; exit 1; }
case $mode in
builtin)
    dir=build-asan/fuzz
    mkdir -p "$dir/artifacts"
    log=$dir/$name.log
    { FUZZ_ARTIFACTS=$dir/artifacts timeout $((600 + amount / 100)) "$bin" "$amount" \
          "${FUZZ_SEED:-1}" "$@" > "$log" 2>&1; } 2>/dev/null # not bash's "Aborted" line
    rc=$?
    runs=$(sed -n 's/^fuzz_[a-z_0-9]*: \([0-9]*\) iterations.*/\1/p' "$log")
    ;;
libfuzzer)
    dir=build-fuzz
    mkdir -p "$dir/corpus/$name" "$dir/artifacts"
    cp "$@" "$dir/corpus/$name/"
    log=$dir/$name.log
    "$bin" -max_total_time="$amount" -timeout=10 -max_len=32768 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/$name-" "$dir/corpus/$name" > "$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log")
    ;;
*) echo "run.sh: mode builtin or libfuzzer, not $mode" >&2; exit 2 ;;
esac
if [ "$rc" -eq 0 ]; then
    echo "fuzz $name: ${runs:-?} executions, 0 crashes"
    exit 0
fi
echo "fuzz $name: CRASH (exit $rc) after ${runs:-?} executions; from the log, $log:"
# the report's head: the error and its stack (a sanitizer's, or the target's own message)
awk '/ERROR: |runtime error|^fuzz_[a-z_0-9]*: |^==[0-9]*== *ERROR/ { p = 1 } p' "$log" | head -30 |
    grep . || tail -30 "$log"
ls "$dir"/artifacts/*"$name"* 2>/dev/null | sed 's/^/  input: /'
exit 1
