#!/bin/sh
# bench_prep.sh N SIZE...: clip-prep vs the PyTorch/PIL reference (prep_ref.py bench) on the
# first N cn_val images of $DATA (a Flickr8k-CN folder: cn_val.json, flickr8k-images/), the same files, crop mode, output discarded. Wall rates are the best
# of 3 runs (clip-prep's include process start-up); cpu/s = images per CPU-second (user+sys),
# the per-core figure that holds up when the machine is shared. The last lines give the
# ceiling: libjpeg-turbo decoding the same files from memory on one core
# (build/bench/bench_decode, the settings of clip-prep and PIL), which every pipeline that
# decodes them must pay.
set -e
n=${1:-1000}; shift
data=${DATA:-}
[ -f "$data/cn_val.json" ] || { echo "bench-prep: DATA='$data' has no cn_val.json: set DATA to a Flickr8k-CN folder (make bench-prep DATA=...)" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -c "
import json
ann = json.load(open('$data/cn_val.json'))[:$n]
json.dump(ann, open('$tmp/ann.json', 'w'))
open('$tmp/files', 'w').write('\n'.join('$data/' + a['image'] for a in ann) + '\n')"
cat "$data"/flickr8k-images/* > /dev/null  # page cache, as for the reference

# timed FILE CMD...: run CMD, write "WALL_S CPU_S" (its user+sys) to FILE, to the microsecond
# (/usr/bin/time rounds to 10 ms, 3% of a run here)
timed() {
    /usr/bin/python3 -c '
import os, sys, time
t = time.time()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
if status:
    sys.exit("bench_prep.sh: %s failed" % sys.argv[2])
open(sys.argv[1], "w").write("%f %f\n" % (time.time() - t, ru.ru_utime + ru.ru_stime))' "$@"
}

rate() { # threads size -> "wall_rate cpu_rate", best of 3
    for r in 1 2 3; do
        timed "$tmp/time" bin/clip-prep --annotations "$tmp/ann.json" --root "$data" --size "$2" \
            --threads "$1" > /dev/null
        awk -v n="$n" '{print n / $1, n / $2}' "$tmp/time"
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
# best of 3 passes, images per CPU-second of the decoding thread
dec=$(build/bench/bench_decode -r 3 $(cat "$tmp/files") | awk '{print $2}')
while read -r size ref1 ref2 refcpu; do
    echo "$size $dec $refcpu" | awk '{printf "size %s: libjpeg-turbo decode alone (in memory, 1 core): %.0f img/s = %.2fx the reference per core; 3x would need %.0f img/s\n", $1, $2, $2/$3, 3*$3}'
done < "$tmp/ref.txt"
