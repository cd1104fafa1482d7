"""The reference (PyTorch / NumPy) at its best on this machine, for every benchmark.

Imported by each bench script before numpy or torch: `reference_env.ensure()` re-executes the
script once in the fastest configuration found on these 2-core AVX-512 machines, and
`reference_env.describe()` says what the reference then ran with, including the BLAS library it
actually loaded. Our own programs are started with `ours_env()`: the environment the user had,
so that they pick their kernels themselves, as they do outside a benchmark.

The configuration, and why:
  OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset   OpenBLAS picks its own AVX-512 kernel (the
                                              environment may force Haswell: half speed)
  libopenblas0-pthread as libblas.so.3        faster for PyTorch than the OpenMP build, whose
                                              pool competes with PyTorch's own (LD_LIBRARY_PATH
                                              selects it for this process only)
  OMP_WAIT_POLICY=PASSIVE                     idle OpenMP threads sleep instead of spinning
                                              against the BLAS threads
  GLIBC_TUNABLES mmap_max=0, trim 64 GiB      freed tensors stay mapped: no page faults on reuse
  torch.set_num_threads(2)                    one thread per core
"""
import json
import os
import sys

PTHREAD_BLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread"
BEST_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREADS = 2
_ORIGINAL = "CLIP_BENCH_ORIGINAL_ENV"


def _best(env):
    want = dict(env)
    for k in UNSET:
        want.pop(k, None)
    want.update(BEST_ENV)
    if os.path.isdir(PTHREAD_BLAS):
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != PTHREAD_BLAS]
        want["LD_LIBRARY_PATH"] = ":".join([PTHREAD_BLAS] + rest)
    return want


def ensure():
    """Re-execute this script in the best configuration unless it already runs in it."""
    if _ORIGINAL in os.environ:
        return
    env = _best(os.environ)
    env[_ORIGINAL] = json.dumps(dict(os.environ))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def ours_env():
    """The environment the benchmark was started with: for running our programs."""
    raw = os.environ.get(_ORIGINAL)
    return json.loads(raw) if raw else dict(os.environ)


def _loaded_blas():
    """(path, config, core) of the OpenBLAS this process mapped, or the path of another BLAS."""
    paths = []
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if ("blas" in p or "mkl" in p) and p.startswith("/") and p not in paths:
                paths.append(p)
    for p in paths:
        if "openblas" in os.path.basename(p):
            try:
                import ctypes
                lib = ctypes.CDLL(p)
                lib.openblas_get_config.restype = ctypes.c_char_p
                lib.openblas_get_corename.restype = ctypes.c_char_p
                return p, lib.openblas_get_config().decode(), lib.openblas_get_corename().decode()
            except (OSError, AttributeError):
                return p, "?", "?"
    return (", ".join(paths) or "none found"), "", ""


def describe(what="reference"):
    """One line: the reference's versions, threads, environment and the BLAS it loaded."""
    parts = []
    if "torch" in sys.modules:
        import torch
        parts.append(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    if "numpy" in sys.modules:
        import numpy
        parts.append(f"NumPy {numpy.__version__}")
    env = ", ".join(f"{k}={os.environ.get(k, '')}" for k in BEST_ENV)
    unset = ", ".join(f"{k} {'unset' if k not in os.environ else '=' + os.environ[k]}" for k in UNSET)
    path, config, core = _loaded_blas()
    blas = f"{os.path.realpath(path)} ({config}; kernel {core})" if config else path
    return f"{what}: {'; '.join(parts)}; {env}; {unset}; BLAS {blas}"
