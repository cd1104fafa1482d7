#!/usr/bin/env bats
# clip-train data-parallel under Open MPI's mpirun, as a user runs it: 2 ranks x -b 4
# against 1 process x -b 8 and against --accum-freq 2 -b 4 (the global-batch loss of the
# PyTorch reference, tests/ref/train_ref.py dist), weights in sync, signals, a rank
# killed, resume, sharded evaluation, shards in brace notation. Tiny models, 5 steps.

setup() {
    command -v mpirun > /dev/null || skip "no mpirun (make deps: openmpi-bin)"
    ROOT="$BATS_TEST_DIRNAME/../.."
    BIN="${CLIP_BIN:-$ROOT/bin}"
    TRAIN="$BIN/clip-train"
    FIX="$ROOT/tests/fixtures/train"
    T="$BATS_TEST_TMPDIR"
    INIT=(--init "$FIX/init.pth" --text-model "$FIX/bert")
    # the recipe of the reference's run (expected_dist.json): --eps 1, see tests/ref/dist_parity.py
    RECIPE=(--no-shuffle --no-augment --caption first --steps 5 --lr 1e-3 --warmup 2 --eps 1 -t 1
            --quiet)
    # Open MPI refuses root unless told; CI runs as root. For the tests only, not the user.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    MPIRUN=(timeout 120 mpirun --oversubscribe -np 2)
    # make check-asan: Open MPI leaks at MPI_Finalize, much of it inside its plugins, which it
    # has dlclose'd by then, so LeakSanitizer can neither name nor suppress those stacks. This
    # file's runs are checked for memory errors and undefined behaviour, not for leaks; the
    # one-process runs of the other files (train.bats: the same trainer) still are.
    if [ -n "${CLIP_SANITIZED:-}" ]; then
        export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
    fi
}

teardown() {
    [ -z "${pid:-}" ] || kill -9 "$pid" 2>/dev/null || true
    if [ -n "${NS:-}" ]; then
        ip netns del "${NS}1" 2>/dev/null || true
        ip netns del "${NS}2" 2>/dev/null || true
    fi
}

# field NAME FILE: the values of a numeric key in a JSON-lines log, one per line
field() {
    grep -o "\"$1\":[-0-9.e]*" "$2" | cut -d: -f2
}

# within TOL A B: the per-step values of files A and B differ by at most TOL
within() {
    [ "$(wc -l < "$2")" -eq "$(wc -l < "$3")" ]
    paste "$2" "$3" | awk -v tol="$1" '{ d = $1 - $2; if (d < 0) d = -d; if (d > tol) { print "step " NR ": " $1 " vs " $2; bad = 1 } } END { exit bad }'
}

reference_losses() {
    /usr/bin/python3 -c 'import json,sys; print("\n".join(map(str, json.load(open(sys.argv[1]))["loss"])))' \
        "$FIX/expected_dist.json"
}

# rank_pid PID R: the pid of rank R among the children of mpirun, PID's child (PID: timeout)
rank_pid() {
    local c
    for c in $(pgrep -P "$(pgrep -P "$1" | head -1)"); do
        if tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# wait_log FILE N: until FILE has N lines (at most 30 s)
wait_log() {
    for _ in $(seq 600); do
        if [ -s "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ]; then return 0; fi
        sleep 0.05
    done
    return 1
}

@test "2 ranks x -b 4 equal 1 process x -b 8: the reference's global-batch losses, weights within the rounding bound" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 8 "${RECIPE[@]}" --log "$T/one.jsonl" \
        --save "$T/one.safetensors"
    run "${MPIRUN[@]}" "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 "${RECIPE[@]}" \
        --check-sync 1 --log "$T/two.jsonl" --save "$T/two.safetensors"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 8 (2 ranks x 1 micro-batch x 4)"* ]]
    field loss "$T/one.jsonl" > "$T/one.loss"
    field loss "$T/two.jsonl" > "$T/two.loss"
    [ "$(wc -l < "$T/two.loss")" -eq 5 ]
    within 1e-5 "$T/one.loss" "$T/two.loss"
    # the reference in PyTorch: within test_train.c's step-1 loss bound (1.4e-4)
    reference_losses > "$T/ref.loss"
    within 1.4e-4 "$T/ref.loss" "$T/two.loss"
    [ "$(field global_batch "$T/two.jsonl" | sort -u)" = 8 ]
    /usr/bin/python3 "$ROOT/tests/ref/dist_parity.py" "$T/one.safetensors" "$T/two.safetensors" "$T/one.jsonl"
}

@test "--accum-freq 2 -b 4 equals -b 8: losses within 1e-5, weights within the rounding bound" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 8 "${RECIPE[@]}" --log "$T/one.jsonl" \
        --save "$T/one.safetensors"
    run "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 --accum-freq 2 "${RECIPE[@]}" \
        --log "$T/acc.jsonl" --save "$T/acc.safetensors"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 8 (1 rank x 2 micro-batches x 4)"* ]]
    field loss "$T/one.jsonl" > "$T/one.loss"
    field loss "$T/acc.jsonl" > "$T/acc.loss"
    within 1e-5 "$T/one.loss" "$T/acc.loss"
    reference_losses > "$T/ref.loss"
    within 1.4e-4 "$T/ref.loss" "$T/acc.loss"
    /usr/bin/python3 "$ROOT/tests/ref/dist_parity.py" "$T/one.safetensors" "$T/acc.safetensors" "$T/one.jsonl"
}

@test "--accum-freq 2 under 2 ranks: a contrastive batch of 12, the loss of 1 process x -b 12" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 12 "${RECIPE[@]}" --log "$T/one.jsonl"
    run "${MPIRUN[@]}" "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 3 --accum-freq 2 \
        "${RECIPE[@]}" --log "$T/two.jsonl"
    [ "$status" -eq 0 ]
    [[ "$output" == *"batch 12 (2 ranks x 2 micro-batches x 3)"* ]]
    field loss "$T/one.jsonl" > "$T/one.loss"
    field loss "$T/two.jsonl" > "$T/two.loss"
    within 1e-5 "$T/one.loss" "$T/two.loss"
}

@test "--check-sync: ranks whose weights diverge stop with an error naming the rank" {
    # MPMD: rank 1 decays its weights, rank 0 does not: same gradients, other updates
    run timeout 120 mpirun --oversubscribe -np 1 "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 2 \
        --steps 6 --wd 0 --check-sync 2 -t 1 --quiet : -np 1 "$TRAIN" --arch tiny \
        --train "$FIX/train.tar" -b 2 --steps 6 --wd 1 --check-sync 2 -t 1 --quiet
    [ "$status" -ne 0 ]
    [[ "$output" == *"--check-sync: after step 2 the weights of rank 1 differ from rank 0's"* ]]
}

@test "--resume with the same ranks ends bit-identical to an uninterrupted run" {
    args=("${INIT[@]}" --train "$FIX/train.tar" -b 2 --epochs 2 --lr 1e-3 --warmup 2 --seed 7 -t 1
          --quiet)
    "${MPIRUN[@]}" "$TRAIN" "${args[@]}" --save "$T/a.pth" --log "$T/a.jsonl"
    run "${MPIRUN[@]}" "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --stop-after 2
    [ "$status" -eq 0 ]
    [[ "$output" == *"--resume continues"* ]]
    "${MPIRUN[@]}" "$TRAIN" "${args[@]}" --save "$T/b.pth" --log "$T/b.jsonl" --resume
    cmp "$T/a.pth" "$T/b.pth"
    field loss "$T/a.jsonl" > "$T/a.loss"
    field loss "$T/b.jsonl" > "$T/b.loss"
    [ "$(wc -l < "$T/a.loss")" -eq 6 ] # 2 epochs of 3 global batches of 4
    diff "$T/a.loss" "$T/b.loss"
    # another global batch is refused: the saved data position counts its batches
    run "${MPIRUN[@]}" "$TRAIN" "${args[@]}" -b 3 --save "$T/b.pth" --resume
    [ "$status" -ne 0 ]
    [[ "$output" == *"saved at a global batch of 4, this run's is 6"* ]]
}

@test "SIGTERM to one rank: every rank stops after the same step, rank 0 saves once, exit 143; --resume finishes" {
    args=(--arch tiny,vocab=256 --train "$FIX/train.tar" -b 2 --steps 80 -t 1 --quiet
          --save "$T/m.safetensors" --log "$T/log.jsonl")
    timeout 120 mpirun --oversubscribe -np 2 "$TRAIN" "${args[@]}" 2> "$T/err" &
    pid=$!
    wait_log "$T/log.jsonl" 1
    r1=$(rank_pid "$pid" 1)
    kill -TERM "$r1"
    st=0
    wait "$pid" || st=$?
    pid=
    cat "$T/err"
    [ "$st" -eq 143 ]
    n=$(sed -n 's/^clip-train: Terminated at step \([0-9]*\): saved; the same command with --resume continues$/\1/p' "$T/err")
    [ -n "$n" ]
    [ "$(grep -c 'Terminated at step' "$T/err")" -eq 1 ]
    [ "$(tail -1 "$T/log.jsonl" | grep -o '"step":[0-9]*')" = "\"step\":$n" ]
    run timeout 120 mpirun --oversubscribe -np 2 "$TRAIN" "${args[@]}" --resume
    [ "$status" -eq 0 ]
    [[ "$output" == *"resuming $T/m.safetensors.state at step $n "* ]]
    field step "$T/log.jsonl" > "$T/steps"
    seq 80 | diff - "$T/steps"
}

@test "SIGTERM to mpirun: its SIGTERM reaches the ranks, rank 0 saves once, the ranks exit 143" {
    # mpirun answers a signal by SIGTERM to the ranks after odls_base_sigkill_timeout and
    # SIGKILL one timeout later (clip-train(1)); 3 s leave the time of a step and a save
    timeout 120 mpirun --mca odls_base_sigkill_timeout 3 --oversubscribe -np 2 "$TRAIN" --arch tiny,vocab=256 \
        --train "$FIX/train.tar" -b 2 --steps 2000 -t 1 --quiet --save "$T/m.safetensors" \
        --log "$T/log.jsonl" 2> "$T/err" &
    pid=$!
    wait_log "$T/log.jsonl" 1
    kill -TERM "$(pgrep -P "$pid" | head -1)" # mpirun, timeout's child
    st=0
    wait "$pid" || st=$?
    pid=
    cat "$T/err"
    [ "$st" -ne 0 ] # Open MPI's own status: 1
    [ "$(grep -c '^clip-train: Terminated at step [0-9]*: saved' "$T/err")" -eq 1 ]
    [ -s "$T/m.safetensors.state" ]
}

@test "kill -9 of one rank: the job ends non-zero within 30 s naming the rank; the last checkpoint resumes" {
    args=(--arch tiny,vocab=256 --train "$FIX/train.tar" -b 2 --steps 60 -t 1 --quiet
          --save "$T/m.safetensors" --save-every 2 --log "$T/log.jsonl")
    timeout 120 mpirun --oversubscribe -np 2 "$TRAIN" "${args[@]}" 2> "$T/err" &
    pid=$!
    wait_log "$T/log.jsonl" 3
    r1=$(rank_pid "$pid" 1)
    kill -9 "$r1"
    t0=$(date +%s)
    st=0
    wait "$pid" || st=$?
    pid=
    cat "$T/err"
    [ "$st" -ne 0 ]
    [ $(($(date +%s) - t0)) -le 30 ]
    grep -q "process rank 1 .* exited on signal 9" "$T/err"
    # the checkpoint is whole (written atomically): the reference loader reads it, resume finishes
    "$BIN/clip-embed" --model "$T/m.safetensors" -i "$FIX/val.tar" -o "$T/emb.tar"
    run timeout 120 mpirun --oversubscribe -np 2 "$TRAIN" "${args[@]}" --resume
    [ "$status" -eq 0 ]
    # from the last save before the kill: every --save-every 2 steps, and at each epoch's end
    # (12 samples, a global batch of 4: 3 steps an epoch); at least the second step's
    n=$(echo "$output" | sed -n 's/^clip-train: resuming .*m.safetensors.state at step \([0-9]*\) .*/\1/p')
    [ -n "$n" ]
    [ "$n" -ge 2 ]
    [ $((n % 2)) -eq 0 ] || [ $((n % 3)) -eq 0 ]
    [ "$(tail -1 "$T/log.jsonl" | grep -o '"step":[0-9]*')" = '"step":60' ]
}

@test "--val sharded over 2 ranks: the figures of one process" {
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" --val "$FIX/val.tar" --eval-at-start -b 4 \
        --steps 3 -t 1 --log "$T/one.jsonl" --quiet
    "${MPIRUN[@]}" "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" --val "$FIX/val.tar" \
        --eval-at-start -b 2 --steps 3 -t 1 --log "$T/two.jsonl" --quiet
    grep '"val"' "$T/one.jsonl" | sed 's/"step":[0-9]*,//' > "$T/one.val"
    grep '"val"' "$T/two.jsonl" | sed 's/"step":[0-9]*,//' > "$T/two.val"
    [ "$(wc -l < "$T/two.val")" -eq 2 ]
    head -1 "$T/two.val" | grep -q '"txt_r1":37.5,"txt_r5":62.5,"txt_r10":87.5'
    diff <(head -1 "$T/one.val") <(head -1 "$T/two.val")
}

@test "shards in brace notation: the ranks read 'train-{0..2}.tar' as the one file" {
    /usr/bin/python3 - "$FIX/train.tar" "$T" <<'PY'
import sys, tarfile
src = tarfile.open(sys.argv[1])
members = [m for m in src.getmembers() if m.isfile()]
keys = sorted({m.name.split(".")[0] for m in members})
for s in range(3):
    with tarfile.open(f"{sys.argv[2]}/train-{s}.tar", "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in members:
            if m.name.split(".")[0] in keys[4 * s:4 * s + 4]:
                dst.addfile(m, src.extractfile(m))
PY
    "${MPIRUN[@]}" "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 2 --steps 4 -t 1 --log "$T/one.jsonl" --quiet
    "${MPIRUN[@]}" "$TRAIN" "${INIT[@]}" --train "$T/train-{0..2}.tar" -b 2 --steps 4 -t 1 \
        --log "$T/shards.jsonl" --quiet
    field loss "$T/one.jsonl" > "$T/one.loss"
    field loss "$T/shards.jsonl" > "$T/shards.loss"
    [ "$(wc -l < "$T/one.loss")" -eq 4 ]
    diff "$T/one.loss" "$T/shards.loss"
}

@test "errors under mpirun: stdin split over ranks, fewer samples than a global batch" {
    run "${MPIRUN[@]}" "$TRAIN" --arch tiny --train - -b 2 --steps 2 -t 1 < "$FIX/train.tar"
    [ "$status" -ne 0 ]
    [[ "$output" == *"a stream is one process's; with 2 ranks give a FILE.tar"* ]]
    run "${MPIRUN[@]}" "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 8 -t 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"12 samples, fewer than one batch of 16 (2 ranks x 1 micro-batch x 8)"* ]]
    # ranks started with other batches or lengths: refused before a collective of those sizes
    run timeout 120 mpirun --oversubscribe -np 1 "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 2 \
        --steps 2 -t 1 : -np 1 "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 3 --steps 2 -t 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"clip-train: the ranks' models or batches differ (from 1578560 to 1578560 parameters, 2 to 3 samples a step)"* ]]
    run timeout 120 mpirun --oversubscribe -np 1 "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 2 \
        --steps 2 -t 1 : -np 1 "$TRAIN" --arch tiny --train "$FIX/train.tar" -b 2 --steps 3 -t 1
    [ "$status" -ne 0 ]
    [[ "$output" == *"clip-train: the number of steps differs between the ranks (from 2 to 3)"* ]]
}

@test "make train NPROC=4 HOSTS=a,b: mpirun with 4 ranks, 2 a host over TCP, time to save on a signal" {
    run make -s -n -C "$ROOT" train NPROC=4 HOSTS=a,b ARCH=tiny DATA=/nonexistent THREADS=1
    [ "$status" -eq 0 ]
    [[ "$output" == *"mpirun -np 4 --mca odls_base_sigkill_timeout 60 --host a:2,b:2 --mca btl tcp,self bin/clip-train --arch tiny "*" -t 1 "* ]]
    run make -s -n -C "$ROOT" train NPROC=2 ARCH=tiny DATA=/nonexistent
    [[ "$output" == *"mpirun -np 2 --mca odls_base_sigkill_timeout 60 bin/clip-train --arch tiny "* ]]
    run make -s -n -C "$ROOT" train ARCH=tiny DATA=/nonexistent
    [[ "$output" != *"mpirun"* ]]
    [[ "$output" == *"bin/clip-train --arch tiny "* ]]
}

@test "two hosts for real: 2 ranks in two network namespaces joined by a veth pair, over TCP, the losses of one process" {
    [ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
    NS="clip$$"
    ip netns add "${NS}1" 2> /dev/null || skip "ip netns is not permitted here"
    ip netns add "${NS}2"
    ip link add "${NS}a" type veth peer name "${NS}b"
    ip link set "${NS}a" netns "${NS}1"
    ip link set "${NS}b" netns "${NS}2"
    ip -n "${NS}1" addr add 10.99.0.1/24 dev "${NS}a"
    ip -n "${NS}2" addr add 10.99.0.2/24 dev "${NS}b"
    for n in 1 2; do
        ip -n "$NS$n" link set lo up
        ip -n "$NS$n" link set "${NS}$([ $n = 1 ] && echo a || echo b)" up
    done
    # Open MPI starts its daemon on a remote host through an rsh agent: here host 10.99.0.N
    # is namespace $NS$N of this machine (one file system, two networks)
    cat > "$T/agent" <<AGENT
#!/bin/sh
host=\$1
shift
exec ip netns exec "$NS\${host##*.}" /bin/sh -c "\$*"
AGENT
    chmod +x "$T/agent"
    "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 4 "${RECIPE[@]}" --log "$T/one.jsonl"
    run timeout 120 ip netns exec "${NS}1" mpirun --host 10.99.0.1:1,10.99.0.2:1 -np 2 \
        --mca plm_rsh_agent "$T/agent" --mca btl tcp,self --mca btl_tcp_if_include 10.99.0.0/24 \
        --mca oob_tcp_if_include 10.99.0.0/24 --mca orte_keep_fqdn_hostnames 1 \
        sh -c 'echo "rank $OMPI_COMM_WORLD_RANK net $(readlink /proc/self/ns/net)"; exec "$@"' sh \
        "$TRAIN" "${INIT[@]}" --train "$FIX/train.tar" -b 2 "${RECIPE[@]}" --log "$T/two.jsonl"
    ip netns del "${NS}1"
    ip netns del "${NS}2"
    echo "$output"
    [ "$status" -eq 0 ]
    # the ranks ran in the two namespaces, neither in this one
    r0=$(echo "$output" | sed -n 's/^rank 0 net //p')
    r1=$(echo "$output" | sed -n 's/^rank 1 net //p')
    [ -n "$r0" ]
    [ -n "$r1" ]
    [ "$r0" != "$r1" ]
    [ "$r1" != "$(readlink /proc/self/ns/net)" ]
    field loss "$T/one.jsonl" > "$T/one.loss"
    field loss "$T/two.jsonl" > "$T/two.loss"
    [ "$(wc -l < "$T/two.loss")" -eq 5 ]
    within 1e-5 "$T/one.loss" "$T/two.loss"
}
