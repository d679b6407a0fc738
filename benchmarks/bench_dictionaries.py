"""Dictionary methods on a planted problem: wall time and recovery of the true atoms.

`bench_classic()` times k-SVD and MOD (and their variants) against scikit-learn's
MiniBatchDictionaryLearning on noiseless synthetic data whose atoms are known, and scores
each by MMCS (mean over true atoms of the max signed cosine with a learned atom) and by the
fraction of variance unexplained of its OMP codes. Other methods (SAEs) can be added as
more entries of `methods` in `bench_classic`, each a name and a zero-argument factory.

    python benchmarks/bench_dictionaries.py                     # 20k samples, 512 atoms, d=256
    python benchmarks/bench_dictionaries.py --n-samples 5000 --n-components 128 --d 64
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.ksvd import KSVD  # noqa: E402
from sae.mod import MOD  # noqa: E402


def planted_problem(n_samples: int = 20_000, n_features: int = 512, d: int = 256,
                    active: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless H = C A [n_samples, d] float32 from unit atoms A [n_features, d]: `active`
    distinct features per sample with magnitudes uniform in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    A = torch.nn.functional.normalize(torch.randn(n_features, d, generator=g), dim=1)
    support = torch.rand(n_samples, n_features, generator=g).argsort(1)[:, :active]
    C = torch.zeros(n_samples, n_features).scatter_(
        1, support, 0.5 + torch.rand(n_samples, active, generator=g))
    return (C @ A).numpy(), A.numpy()


def mmcs(true: np.ndarray, learned: np.ndarray) -> float:
    """Mean over true atoms [n_true, d] of the max signed cosine with a learned atom."""
    t = true / np.linalg.norm(true, axis=1, keepdims=True)
    a = learned / np.maximum(np.linalg.norm(learned, axis=1, keepdims=True), 1e-12)
    return float((t @ a.T).max(1).mean())


def fvu(H: np.ndarray, reconstruction: np.ndarray) -> float:
    return float(((H - reconstruction) ** 2).sum() / ((H - H.mean(0)) ** 2).sum())


class _SklearnDictionary:
    """MiniBatchDictionaryLearning with OMP codes (k nonzeros) for the FVU, as a baseline."""

    def __init__(self, n_components: int, k: int, random_state: int, **kwargs):
        from sklearn.decomposition import MiniBatchDictionaryLearning

        self.model = MiniBatchDictionaryLearning(
            n_components=n_components, transform_algorithm="omp",
            transform_n_nonzero_coefs=k, random_state=random_state, **kwargs)

    def fit(self, H):
        self.model.fit(H)
        self.components_ = self.model.components_
        return self

    def transform(self, H):
        return self.model.transform(H)


def bench_classic(n_samples: int = 20_000, d: int = 256, n_components: int = 512, k: int = 5,
                  n_iter: int = 30, seed: int = 0, device: str = "auto",
                  sklearn_kwargs: dict | None = None,
                  methods: dict[str, Callable] | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Fit each method to one planted problem; one result dict per method.

    The problem has n_components true atoms in d dims, k of them active per sample; every
    method learns n_components atoms and is scored with k-sparse OMP codes.
    """
    H, A = planted_problem(n_samples, n_components, d, k, seed)
    common = dict(n_components=n_components, k=k, n_iter=n_iter, random_state=seed,
                  device=device)
    if methods is None:
        methods = {
            "ksvd": lambda: KSVD(**common),
            "ksvd-nonnegative": lambda: KSVD(nonnegative=True, **common),
            "ksvd-approximate": lambda: KSVD(approximate=True, **common),
            "mod": lambda: MOD(**common),
            "mod-nonnegative": lambda: MOD(nonnegative=True, **common),
            "sklearn": lambda: _SklearnDictionary(n_components, k, seed,
                                                  **(sklearn_kwargs or {})),
        }
    results = []
    for name, make in methods.items():
        est = make()
        t0 = time.perf_counter()
        est.fit(H)
        seconds = time.perf_counter() - t0
        codes = est.transform(H)
        row = {"method": name, "fit_seconds": seconds, "mmcs": mmcs(A, est.components_),
               "fvu": fvu(H, codes @ est.components_),
               "l0": float((codes != 0).sum(1).mean())}
        if hasattr(est, "log_"):
            row["iterations"] = len(est.log_)
            row["fvu_by_iteration"] = [round(e["fvu"], 5) for e in est.log_]
        results.append(row)
        log(f"{name:18s} fit {seconds:8.1f} s   MMCS {row['mmcs']:.4f}   FVU {row['fvu']:.5f}"
            f"   L0 {row['l0']:.2f}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n-components", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--n-iter", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads; 0: as the libraries set them. 1 by "
                             "default: on a shared 2-core machine, torch's 2 threads wait on "
                             "each other at every small kernel (measured 10x slower under load)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threads = args.threads or None
    if threads is not None:
        torch.set_num_threads(threads)
    print(f"planted: {args.n_samples} samples, {args.n_components} unit atoms in "
          f"d={args.d}, {args.k} active per sample, noiseless; torch threads "
          f"{torch.get_num_threads()}")
    with threadpool_limits(threads):
        results = bench_classic(args.n_samples, args.d, args.n_components, args.k, args.n_iter,
                                args.seed, args.device)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
