#!/bin/sh
# The binaries run on any x86-64 (lib/core/util.h): outside the functions that
# carry a CLIP_TARGET_* attribute, no object may hold an instruction beyond
# x86-64's baseline (SSE2): no VEX or EVEX encoding (AVX, AVX2, FMA, BMI,
# AVX-512), no SSSE3/SSE4 (the 0f 38 and 0f 3a opcode maps), no SSE3,
# POPCNT, LZCNT, MOVBE... And cpu_has() is the only dispatch: no cpuid,
# __builtin_cpu_supports, target_clones or #ifdef __AVX* elsewhere in lib/
# and tools/.
#   tests/check_isa.sh OBJECT_OR_BINARY...     (make check-isa; run from the root)
# Each function is named by objdump; GCC's clones (.part.N, .constprop.N,
# ._omp_fn.N, .cold...) count as the function they come from.
set -eu
[ $# -gt 0 ] || { echo "usage: $0 OBJECT..." >&2; exit 2; }

# the functions defined with a CLIP_TARGET_* attribute: "CLIP_TARGET_X ... name("
allowed=$(grep -ho '^CLIP_TARGET_[A-Z0-9_]* [^(;]*(' lib/*/*.c | sed 's/($//; s/.*[^A-Za-z0-9_]//' |
          sort -u | tr '\n' ' ')

status=0
others=$(grep -nE '__builtin_cpu_supports|target_clones|__get_cpuid|__cpuid|xgetbv|#if.*__AVX' \
         lib/*/*.c lib/*/*.h tools/*.c | grep -v '^lib/core/util\.c:' || true)
if [ -n "$others" ]; then
    echo "check-isa: CPU features tested outside cpu_has() (lib/core/util.c):"
    echo "$others"
    status=1
fi

for f in "$@"; do
    echo "@@ $f"
    objdump -d "$f" || echo "@@ objdump failed"
done | awk -v allowed="$allowed" '
    BEGIN { n = split(allowed, a, " "); for (i = 1; i <= n; i++) ok[a[i]] = 1 }
    /^@@ objdump failed$/ { failed = 1; next }
    /^@@ / { file = $2; files++; next }
    /^[0-9a-f]+ <.*>:$/ {
        fn = $2; sub(/^</, "", fn); sub(/>:$/, "", fn)
        base = fn; sub(/\..*/, "", base)
        funcs++
        next
    }
    /^ *[0-9a-f]+:\t/ {
        nf = split($0, col, "\t")
        if (nf < 3 || col[3] == "") next # the rest of a long instruction
        nb = split(col[2], b, " ")
        i = 1
        while (i <= nb && b[i] ~ /^(26|2e|36|3e|64|65|66|67|f0|f2|f3|4[0-9a-f])$/) i++
        why = ""
        if (b[i] == "c4" || b[i] == "c5" || b[i] == "62") why = "VEX/EVEX"
        else if (b[i] == "0f" && (b[i + 1] == "38" || b[i + 1] == "3a")) why = "SSSE3/SSE4"
        else if (col[3] ~ /(^|[ \t])(haddp[sd]|hsubp[sd]|addsubp[sd]|movshdup|movsldup|movddup|lddqu|fisttp[a-z]*|popcnt|lzcnt|movbe|crc32[a-z]*|cmpxchg16b|lahf|sahf)([ \t]|$)/)
            why = "beyond SSE2"
        if (why == "") next
        if (base in ok) { marked[file " " fn] = 1; next }
        if (!((file " " fn) in bad)) {
            bad[file " " fn] = 1
            insn = col[3]; gsub(/  +/, " ", insn)
            printf "check-isa: %s: %s: %s instruction outside a CLIP_TARGET_* function: %s\n", file, fn, why, insn
        }
    }
    END {
        nbad = 0; for (k in bad) nbad++
        nmarked = 0; for (k in marked) nmarked++
        printf "check-isa: %d files, %d functions; with code beyond SSE2: %d marked CLIP_TARGET_*, %d not\n", files, funcs, nmarked, nbad
        exit nbad > 0 || failed
    }' || status=1

# the scan itself must see the kernels: none found means it is broken
if ! objdump -d build/lib/kernels/ops.o 2>/dev/null | grep -q '%zmm'; then
    echo "check-isa: no zmm register in build/lib/kernels/ops.o: the AVX-512 variants are missing"
    status=1
fi
exit $status
