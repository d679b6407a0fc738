"""The batch OMP of sae/omp.py in a small C kernel, signed and nonnegative, for
float32/float64 on the CPU.

One sample at a time: its whole state (alpha [M], the orthonormalised support Q [n_steps, M],
L, z) stays in L1/L2 across all steps, and each step is one fused pass over the M atoms, where
the batched torch kernels make ~10 passes over [chunk, M] arrays that live in L3 (measured:
138-165x scikit-learn's orthogonal_mp_gram against 24-30x for the torch code, one thread).
The nonnegative kernel keeps `_nonnegative_omp_chunk`'s state the same way (G[I, I], L, the
coefficients and Lawson-Hanson's passive set) and runs its algorithm step for step: 13-20x
the torch code on bench_omp's problems, one thread (50k samples, 1024 atoms, k=8: 0.38 s
against 5.0 s; 100k samples, 512 atoms, k=5: 0.28 s against 5.6 s).
The C source is omp_kernels/ beside this file (batch_omp.c, which includes omp_signed.c and
omp_nonnegative.c once per float type). It is compiled on first use with the system C compiler
(about 0.5 s) and cached in $XDG_CACHE_HOME/unsuperpose (~/.cache by default), keyed by the
source text, compiler and CPU; without a compiler, or with UNSUPERPOSE_OMP_NATIVE=0,
`native_lib()` is None and omp.py runs its torch code, which stays the reference. Same
arithmetic as omp.py's `_omp_chunk` and `_nonnegative_omp_chunk`; the argmax takes the first
index of the largest |alpha| (alpha for nonnegative), as numpy's argmax in scikit-learn. The
outputs equal the torch code's up to rounding: the indices differ only where rounding decides,
as a near-tie between two atoms' correlations, an atom in the span of a support of rank d
(Schur complement ~1 ulp against the eps * G[k, k] threshold), or a coefficient at
rounding-noise level.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# batch_omp.c is the one file compiled; it includes the two kernels once per float type
_KERNEL_DIR = Path(__file__).with_name("omp_kernels")
_KERNEL_MAIN = "batch_omp.c"
_SYMBOLS = ("omp_float32", "omp_float64", "omp_nn_float32", "omp_nn_float64")
_native: list = []  # [ctypes library or None], once tried


def _c_sources() -> dict[str, str]:
    """The kernels' C files by name; their text keys the build cache, so an edit rebuilds."""
    return {f.name: f.read_text() for f in sorted(_KERNEL_DIR.glob("*.c"))}


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def native_lib():
    """The compiled kernel (ctypes), or None where it is disabled or cannot be built."""
    if _native:
        return _native[0]
    lib = None
    if os.environ.get("UNSUPERPOSE_OMP_NATIVE", "1") != "0":
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        try:
            sources = _c_sources()
            text = "".join(name + "\n" + src for name, src in sources.items())
            key = hashlib.sha256((text + _cpu_key() + str(cc)).encode()).hexdigest()[:16]
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unsuperpose"
            so = cache / f"omp_{key}.so"
            if not so.exists() and cc is not None:
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    # compile the text that was hashed, not whatever the files hold by now
                    for name, src in sources.items():
                        (Path(tmp) / name).write_text(src)
                    c_file, tmp_so = Path(tmp) / _KERNEL_MAIN, Path(tmp) / "omp.so"
                    for arch in (["-march=native"], []):
                        done = subprocess.run([cc, "-O3", *arch, "-shared", "-fPIC", "-o",
                                               str(tmp_so), str(c_file), "-lm"],
                                              capture_output=True)
                        if done.returncode == 0:
                            os.replace(tmp_so, so)  # atomic: concurrent builders agree
                            break
            if so.exists():
                lib = ctypes.CDLL(str(so))
                for name in _SYMBOLS:
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        except (OSError, RuntimeError):  # no home, unwritable cache, unloadable library
            lib = None
    _native.append(lib)
    return lib


def native_omp(lib, G: torch.Tensor, DH: torch.Tensor, n_steps: int, tol: float | None,
                norms2: torch.Tensor | None,
                nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_omp in C (signed, or nonnegative as `_nonnegative_omp_chunk`); G, DH contiguous
    on the CPU, float32 or float64. The samples are split over torch's thread count (ctypes
    calls release the GIL)."""
    n_samples, M = DH.shape
    single = DH.dtype == torch.float32
    if nonnegative:
        fn = lib.omp_nn_float32 if single else lib.omp_nn_float64
    else:
        fn = lib.omp_float32 if single else lib.omp_float64
    indices = torch.empty(n_samples, n_steps, dtype=torch.long)
    values = DH.new_empty(n_samples, n_steps)
    norms2 = norms2.contiguous() if tol is not None else None

    def part(lo: int, hi: int) -> int:
        return fn(G.data_ptr(), DH[lo].data_ptr(), hi - lo, M, n_steps, int(tol is not None),
                  float(tol or 0.0), norms2[lo].data_ptr() if norms2 is not None else None,
                  indices[lo].data_ptr(), values[lo].data_ptr())

    n_parts = max(1, min(torch.get_num_threads(), n_samples // 256))
    bounds = [n_samples * i // n_parts for i in range(n_parts + 1)]
    ranges = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    if len(ranges) == 1:
        codes = [part(*ranges[0])]
    else:
        with ThreadPoolExecutor(len(ranges)) as pool:
            codes = list(pool.map(lambda r: part(*r), ranges))
    if any(codes):
        raise MemoryError("batch_omp: the native kernel could not allocate its workspace")
    return indices, values


