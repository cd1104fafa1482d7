#!/bin/sh
# bench_prep.sh N SIZE...: clip-prep vs the PyTorch/PIL reference (prep_ref.py bench) on the
# first N cn_val images, the same files, crop mode, output discarded. Wall rates are the best
# of 3 runs (clip-prep's include process start-up); cpu/s = images per CPU-second (user+sys),
# the per-core figure that holds up when the machine is shared.
set -e
n=${1:-500}; shift
data=../shared/data/flickr8k-cn
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -c "import json; json.dump(json.load(open('$data/cn_val.json'))[:$n], open('$tmp/ann.json','w'))"
cat "$data"/flickr8k-images/* > /dev/null  # page cache, as for the reference

rate() { # threads size -> "wall_rate cpu_rate", best of 3
    for r in 1 2 3; do
        /usr/bin/time -f "%e %U %S" -o "$tmp/time" \
            bin/clip-prep --annotations "$tmp/ann.json" --root "$data" --size "$2" --threads "$1" > /dev/null
        awk -v n="$n" '{print n / $1, n / ($2 + $3)}' "$tmp/time"
    done | sort -n | tail -1
}

/usr/bin/python3 tests/ref/prep_ref.py bench "$n" "$@" > "$tmp/ref.txt"
echo "first $n images of cn_val.json (224x224 JPEGs), crop mode, images/s; load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %9s %9s %9s | %9s %9s %9s | %7s %7s %7s\n' size prep-1t prep-2t prep-cpu \
    ref-1p ref-2p ref-cpu x1 x2 xcpu
while read -r size ref1 ref2 refcpu; do
    set -- $(rate 1 "$size") $(rate 2 "$size")
    echo "$size $1 $3 $2 $ref1 $ref2 $refcpu" | awk '{printf "%-5s %9.0f %9.0f %9.0f | %9.0f %9.0f %9.0f | %6.2fx %6.2fx %6.2fx\n", $1, $2, $3, $4, $5, $6, $7, $2/$5, $3/$6, $4/$7}'
done < "$tmp/ref.txt"
