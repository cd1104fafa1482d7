#!/usr/bin/python3
"""Data-parallel clip-train against one process at the same global batch.

  bench_dist.py BIN_DIR --arch small|base|SPEC --global-batch G --steps K [--workdir DIR]

Writes a tar of random samples at the model's resolution (captions of 10..30
tokens in a context of 52), then runs K + 1 steps (the first warms up) of

  1 process x 2 threads   clip-train -b G -t 2
  2 ranks x 1 thread      mpirun -np 2 clip-train -b G/2 -t 1

and prints one JSON line per configuration: seconds per step (median), the
share of the step rank 0 waited for the collectives (comm_time / step_time:
what the overlap did not hide), and the bytes all-reduced per step (4 per
parameter), from clip-train's own log. Only our programs run: no PyTorch.
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile

import numpy as np

RESOLUTION = {"tiny": 32, "small": 112, "base": 224}


def write_data(path, n, res, vocab=21128, L=52, seed=0):
    rs = np.random.RandomState(seed)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            tok = np.zeros((1, L), np.int32)
            m = rs.randint(10, 31)
            tok[0, :m] = [101] + list(rs.randint(103, vocab, m - 2)) + [102]
            for field, a in (("img.npy", rs.randint(0, 256, (res, res, 3)).astype(np.uint8)),
                             ("tok.npy", tok)):
                b = io.BytesIO()
                np.save(b, a)
                ti = tarfile.TarInfo(f"s{i:05d}.{field}")
                ti.size = len(b.getvalue())
                tf.addfile(ti, io.BytesIO(b.getvalue()))


def run(cmd, log, env):
    if os.path.exists(log):
        os.remove(log)
    subprocess.run(cmd, check=True, env=env)
    steps = [json.loads(line) for line in open(log) if '"loss"' in line]
    timed = steps[1:] if len(steps) > 1 else steps
    sec = statistics.median(s["step_time"] for s in timed)
    comm = statistics.median(s.get("comm_time", 0.0) for s in timed)
    return {"sec_per_step": sec, "comm_share": comm / sec if sec > 0 else 0.0,
            "allreduce_bytes_per_step": statistics.median(s.get("allreduce_bytes", 0) for s in timed),
            "steps": len(timed)}


def main():
    ap = argparse.ArgumentParser(prog="bench_dist.py")
    ap.add_argument("bin")
    ap.add_argument("--arch", default="small")
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workdir", default="build/bench-dist")
    a = ap.parse_args()
    if a.global_batch % 2:
        sys.exit("bench_dist.py: the global batch must be even (2 ranks)")
    res = RESOLUTION.get(a.arch.split(",")[0], 224)
    for kv in a.arch.split(",")[1:]:
        if kv.startswith("resolution="):
            res = int(kv.split("=")[1])
    os.makedirs(a.workdir, exist_ok=True)
    data = os.path.join(a.workdir, f"data-{res}.tar")
    n = a.global_batch * (a.steps + 1)
    write_data(data, n, res, vocab=256 if a.arch.startswith("tiny") else 21128)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    train = os.path.join(a.bin, "clip-train")
    common = ["--arch", a.arch, "--train", data, "--steps", str(a.steps + 1), "--no-shuffle",
              "--no-augment", "--caption", "first", "--lr", "1e-5", "--warmup", "0", "--quiet"]
    configs = [
        ("1 process x 2 threads", [train] + common + ["-b", str(a.global_batch), "-t", "2"]),
        ("2 ranks x 1 thread", ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", train]
         + common + ["-b", str(a.global_batch // 2), "-t", "1"]),
    ]
    for name, cmd in configs:
        log = os.path.join(a.workdir, "log.jsonl")
        r = run(cmd + ["--log", log], log, env)
        print(json.dumps({"impl": "clip-train", "config": name, "arch": a.arch,
                          "global_batch": a.global_batch, **r}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
