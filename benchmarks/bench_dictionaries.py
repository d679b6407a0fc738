"""Dictionary methods on a planted problem: wall time and recovery of the true atoms.

`bench_classic()` times k-SVD, MOD (and their variants) and the SAEs (topk, batchtopk, l1)
against scikit-learn's MiniBatchDictionaryLearning (sae.sklearn_baseline) in one run, on
noiseless synthetic data whose atoms are known and whose magnitudes are nonnegative, and
scores each by signed MMCS (evaluate.metrics.mmcs), the fraction of true atoms matched at
cos >= 0.99, and the fraction of variance unexplained of its own codes. The target: every
method of ours reaches a higher MMCS than sklearn in less time. Other methods can be passed
as `methods`, each a name and a zero-argument factory.

    python benchmarks/bench_dictionaries.py                     # 20k samples, 512 atoms, d=256
    python benchmarks/bench_dictionaries.py --n-samples 5000 --n-components 128 --d 64
    python benchmarks/bench_dictionaries.py --methods ksvd topk sklearn
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

from unsuperpose.data import planted  # noqa: E402
from unsuperpose.data.measures import fvu  # noqa: E402
from unsuperpose.evaluate.metrics import mmcs, per_feature_max_cosine  # noqa: E402
from unsuperpose.sae.ksvd import KSVD  # noqa: E402
from unsuperpose.sae.methods import build  # noqa: E402
from unsuperpose.sae.mod import MOD  # noqa: E402
from unsuperpose.sae.sklearn_baseline import SklearnDictionary  # noqa: E402
from unsuperpose.sae.sparse_coding_config import PLAIN_ALGORITHM  # noqa: E402


def planted_problem(n_samples: int = 20_000, n_features: int = 512, d: int = 256,
                    active: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`data.planted.planted_problem` at this benchmark's size, as numpy (H, A)."""
    H, A = planted.planted_problem(n_samples, n_features, d, active, seed)
    return H.numpy(), A.numpy()


# SAE recipes for the default problem (512 atoms in d=256, 5 active, 20k samples), tuned on
# it with one thread. What makes them fast: atoms initialised from centred data rows and the
# encoder tied to them (init="data", tied_init=True, the defaults), so every latent starts on
# a direction the data takes; several passes over a small sample set rather than one pass
# over a large one; a small batch (128-256: more steps per sample) with lr 3e-3..1e-2.
SAE_RECIPES = {
    "topk": dict(lr=3e-3, batch_size=128, n_epochs=10),
    "batchtopk": dict(lr=3e-3, batch_size=128, n_epochs=10),
    "l1": dict(l1_coefficient=0.1, lr=1e-2, batch_size=256, n_epochs=20, init="data",
               l1_warmup_steps=0),
}
# k-SVD converges in fewer alternations than MOD (each sweep refits atoms one at a time)
N_ITER = {"ksvd": 10, "mod": 15}
DEFAULT_METHODS = ("ksvd", "ksvd-nonnegative", "mod", "mod-nonnegative", "topk", "batchtopk",
                   "l1", "sklearn")


def default_methods(n_components: int, k: int, seed: int, device: str,
                    n_iter: int | None = None, epochs_scale: float = 1.0,
                    sklearn_kwargs: dict | None = None) -> dict[str, Callable]:
    """name -> zero-argument factory of an unfitted estimator, for every method we compare.

    n_iter: alternations of k-SVD and MOD (None: N_ITER); epochs_scale multiplies the SAE
    recipes' passes (at least 1).
    """
    # k-SVD and MOD as the papers state them (the speed of the plain alternation)
    plain = {name: value for name, value in PLAIN_ALGORITHM.items() if name != "n_iter"}
    common = dict(n_components=n_components, k=k, random_state=seed, device=device, **plain)
    it = {m: n_iter or N_ITER[m] for m in N_ITER}

    def sae(name: str):
        recipe = dict(SAE_RECIPES[name])
        recipe["n_epochs"] = max(1, round(recipe["n_epochs"] * epochs_scale))
        params = dict(n_components=n_components, random_state=seed, device=device, **recipe)
        if name != "l1":
            params["k"] = k
        return lambda: build(name, params)

    return {
        "ksvd": lambda: KSVD(n_iter=it["ksvd"], **common),
        "ksvd-nonnegative": lambda: KSVD(n_iter=it["ksvd"], nonnegative=True, **common),
        "ksvd-approximate": lambda: KSVD(n_iter=it["ksvd"], approximate=True, **common),
        "mod": lambda: MOD(n_iter=it["mod"], **common),
        "mod-nonnegative": lambda: MOD(n_iter=it["mod"], nonnegative=True, **common),
        "topk": sae("topk"),
        "batchtopk": sae("batchtopk"),
        "l1": sae("l1"),
        # the reference, as scikit-learn ships it (lasso-cd coding, 10 passes, batch 256)
        "sklearn": lambda: SklearnDictionary(n_components=n_components, k=k, random_state=seed,
                                             **{"max_iter": 10, **(sklearn_kwargs or {})}),
    }


def bench_classic(n_samples: int = 20_000, d: int = 256, n_components: int = 512, k: int = 5,
                  n_iter: int | None = None, seed: int = 0, device: str = "auto",
                  sklearn_kwargs: dict | None = None,
                  methods: dict[str, Callable] | None = None,
                  names: tuple[str, ...] = DEFAULT_METHODS, epochs_scale: float = 1.0,
                  log: Callable[[str], None] = print) -> list[dict]:
    """Fit each method to one planted problem; one result dict per method.

    The problem has n_components true atoms in d dims, k of them active per sample with
    nonnegative magnitudes; every method learns n_components atoms. MMCS is signed
    (evaluate.metrics.mmcs); FVU and L0 come from each method's own transform (k-sparse OMP
    for k-SVD, MOD and sklearn; the encoder for the SAEs).
    """
    H, A = planted_problem(n_samples, n_components, d, k, seed)
    if methods is None:
        every = default_methods(n_components, k, seed, device, n_iter, epochs_scale,
                                sklearn_kwargs)
        unknown = set(names) - set(every)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; valid: {', '.join(every)}")
        methods = {name: every[name] for name in names}
    results = []
    for name, make in methods.items():
        est = make()
        t0 = time.perf_counter()
        est.fit(H)
        seconds = time.perf_counter() - t0
        codes = np.asarray(est.transform(H))
        row = {"method": name, "fit_seconds": seconds, "mmcs": mmcs(A, est.components_),
               "fraction_099": float((per_feature_max_cosine(A, est.components_) >= 0.99)
                                     .mean()),
               "fvu": fvu(H, np.asarray(est.inverse_transform(codes))),
               "l0": float((codes != 0).sum(1).mean()),
               "params": {k_: v for k_, v in est.get_params().items()
                          if k_ not in ("n_components", "device", "random_state")}}
        if hasattr(est, "log_") and est.log_ and "fvu" in est.log_[-1]:
            row["iterations"] = len(est.log_)
        results.append(row)
        log(f"{name:18s} fit {seconds:7.1f} s   MMCS {row['mmcs']:.4f}   "
            f"cos>=0.99 {row['fraction_099']:6.1%}   FVU {row['fvu']:.5f}   L0 {row['l0']:.2f}")
    base = next((r for r in results if r["method"] == "sklearn"), None)
    if base is not None:
        for r in results:
            if r is not base:
                r["beats_sklearn"] = bool(r["mmcs"] > base["mmcs"]
                                          and r["fit_seconds"] < base["fit_seconds"])
        log("beats sklearn (higher MMCS in less time): " + ", ".join(
            f"{r['method']} {'yes' if r['beats_sklearn'] else 'NO'}"
            for r in results if r is not base))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n-components", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--n-iter", type=int, default=None,
                        help="k-SVD and MOD alternations (default: 10 for k-SVD, 15 for MOD)")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply the SAE recipes' passes over the data")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="subset of: ksvd ksvd-nonnegative ksvd-approximate mod "
                             "mod-nonnegative topk batchtopk l1 sklearn")
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
                                args.seed, args.device, names=tuple(args.methods),
                                epochs_scale=args.epochs_scale)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
