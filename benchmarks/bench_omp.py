"""Batch OMP (sae.omp.batch_omp) against scikit-learn's orthogonal_mp_gram on one problem.

Both get the same Gram matrix G = D D^T and correlations DH = H D^T (computed outside the
timings) and code every sample with k atoms. Reports wall times, the speed ratio, and how
far the outputs agree (identical supports, largest coefficient difference). A second line
times nonnegative OMP (batch_omp(nonnegative=True)) on the same problem, the C kernel
against the torch reference code, both on one thread in the same run.

    python benchmarks/bench_omp.py                       # 50k samples, d=256, 1024 atoms, k=8
    python benchmarks/bench_omp.py --n-samples 5000 --threads 0   # libraries' own threads
    python benchmarks/bench_omp.py --sklearn-samples 5000   # time sklearn on a subset, per sample
    python benchmarks/bench_omp.py --nonnegative-samples 0  # skip the nonnegative comparison
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unsuperpose.sae.omp_native as omp_native  # noqa: E402
from unsuperpose.sae.omp import batch_omp, sparse_to_dense  # noqa: E402


def sparse_problem(n_samples: int, d: int, n_components: int, k: int, noise: float, seed: int,
                   dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Unit atoms D [n_components, d] and H = C D + noise [n_samples, d]: k random atoms per
    sample with magnitudes uniform in [0.5, 1.5] and random signs."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_components, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    support = np.argsort(rng.random((n_samples, n_components)), axis=1)[:, :k]
    coef = rng.uniform(0.5, 1.5, (n_samples, k)) * rng.choice([-1.0, 1.0], (n_samples, k))
    H = np.einsum("nk,nkd->nd", coef, D[support]) + noise * rng.standard_normal((n_samples, d))
    return D.astype(dtype), H.astype(dtype)


def run(n_samples: int = 50_000, d: int = 256, n_components: int = 1024, k: int = 8,
        noise: float = 0.05, sklearn_samples: int | None = None, threads: int | None = None,
        chunk_size: int | None = None, dtype: str = "float32", seed: int = 0,
        nonnegative_samples: int | None = None) -> dict:
    from sklearn.linear_model import orthogonal_mp_gram
    from threadpoolctl import threadpool_limits

    if threads is not None:
        torch.set_num_threads(threads)
    np_dtype = {"float32": np.float32, "float64": np.float64}[dtype]
    D, H = sparse_problem(n_samples, d, n_components, k, noise, seed, np_dtype)
    G, DH = D @ D.T, H @ D.T                                       # [M, M], [n, M]
    G_t, DH_t = torch.from_numpy(G), torch.from_numpy(DH)

    batch_omp(G_t, DH_t[:1000], k, chunk_size=chunk_size)         # warm-up
    t0 = time.perf_counter()
    idx, val = batch_omp(G_t, DH_t, k, chunk_size=chunk_size)
    ours_s = time.perf_counter() - t0

    m = min(sklearn_samples or n_samples, n_samples)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        expected = orthogonal_mp_gram(G, DH[:m].T, n_nonzero_coefs=k).T  # [m, M]
        sklearn_s = time.perf_counter() - t0

    got = sparse_to_dense(idx[:m], val[:m], n_components).numpy()
    same_support = ((got != 0) == (expected != 0)).all(1)
    nonnegative = nonnegative_comparison(G_t, DH_t[:nonnegative_samples], k, chunk_size) \
        if nonnegative_samples != 0 else {}
    return {
        "n_samples": n_samples, "d": d, "n_components": n_components, "k": k, "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "ours_seconds": ours_s,
        "ours_samples_per_second": n_samples / ours_s,
        "sklearn_samples": m,
        "sklearn_seconds": sklearn_s,
        "sklearn_seconds_per_sample": sklearn_s / m,
        "speedup": (sklearn_s / m) / (ours_s / n_samples),
        "support_agreement": float(same_support.mean()),
        "max_coef_diff": float(np.abs(got - expected).max()),
        "max_coef_diff_same_support": float(np.abs(got - expected)[same_support].max()),
        **nonnegative,
    }


def nonnegative_comparison(G: torch.Tensor, DH: torch.Tensor, k: int,
                           chunk_size: int | None) -> dict:
    """batch_omp(nonnegative=True) in C against the torch reference (`_nonnegative_omp_chunk`,
    what batch_omp runs without the native kernel) on the same samples, both on one thread."""
    if omp_native.native_lib() is None:
        return {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch_omp(G, DH[:1000], k, nonnegative=True)               # warm-up
        t0 = time.perf_counter()
        idx, val = batch_omp(G, DH, k, nonnegative=True)
        native_s = time.perf_counter() - t0
        saved, omp_native._native[:] = omp_native._native[:], [None]  # the torch code
        try:
            batch_omp(G, DH[:1000], k, nonnegative=True, chunk_size=chunk_size)
            t0 = time.perf_counter()
            idx_t, val_t = batch_omp(G, DH, k, nonnegative=True, chunk_size=chunk_size)
            torch_s = time.perf_counter() - t0
        finally:
            omp_native._native[:] = saved
    finally:
        torch.set_num_threads(threads)
    return {
        "nonnegative_samples": DH.shape[0],
        "nonnegative_native_seconds": native_s,
        "nonnegative_torch_seconds": torch_s,
        "nonnegative_speedup": torch_s / native_s,
        "nonnegative_identical_indices": float((idx == idx_t).all(1).double().mean()),
        "nonnegative_max_rel_value_diff": float((val - val_t).abs().max()
                                                / val_t.abs().max().clamp_min(1e-30)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n-components", type=int, default=1024)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--sklearn-samples", type=int, default=None,
                        help="time sklearn on the first N samples only (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads; 0: as the libraries set them. 1 by "
                             "default: on a shared 2-core machine, torch's 2 threads wait on "
                             "each other at every small kernel (measured 10x slower under load)")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nonnegative-samples", type=int, default=None,
                        help="compare nonnegative OMP (C kernel against the torch reference, "
                             "one thread) on the first N samples (default: all; 0: skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args(argv)
    r = run(args.n_samples, args.d, args.n_components, args.k, args.noise, args.sklearn_samples,
            args.threads or None, args.chunk_size, args.dtype, args.seed,
            args.nonnegative_samples)
    if args.json:
        print(json.dumps(r))
        return
    print(f"problem: {r['n_samples']} samples, d={r['d']}, {r['n_components']} atoms, "
          f"k={r['k']}, {r['dtype']}, torch threads={r['torch_threads']}")
    print(f"batch_omp:          {r['ours_seconds']:8.2f} s  "
          f"({r['ours_samples_per_second']:,.0f} samples/s)")
    extrapolated = r["sklearn_seconds_per_sample"] * r["n_samples"]
    note = "" if r["sklearn_samples"] == r["n_samples"] else \
        f"  (timed on {r['sklearn_samples']} samples; {extrapolated:.1f} s for all)"
    print(f"orthogonal_mp_gram: {r['sklearn_seconds']:8.2f} s{note}")
    print(f"speed-up:           {r['speedup']:8.1f}x")
    print(f"identical supports: {100 * r['support_agreement']:.3f}% of {r['sklearn_samples']} "
          f"samples; max |coef diff| {r['max_coef_diff']:.2e} "
          f"({r['max_coef_diff_same_support']:.2e} where supports agree)")
    if "nonnegative_speedup" in r:
        print(f"nonnegative, 1 thread, {r['nonnegative_samples']} samples: native "
              f"{r['nonnegative_native_seconds']:.2f} s, torch reference "
              f"{r['nonnegative_torch_seconds']:.2f} s, speed-up "
              f"{r['nonnegative_speedup']:.1f}x; identical indices "
              f"{100 * r['nonnegative_identical_indices']:.3f}%, max relative value diff "
              f"{r['nonnegative_max_rel_value_diff']:.1e}")


if __name__ == "__main__":
    main()
