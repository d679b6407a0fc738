"""Recovery of known features: the toy models' ground truth, a Sharkey et al. (2022) setting
with a long tail of rare features, and how many samples an SAE needs.

    python benchmarks/bench_recovery.py toy [--run-dir runs/bench]     # (a) ~1-2 min + fits
    python benchmarks/bench_recovery.py tail [--n-features 512 --d 256 --n-samples 400000]
    python benchmarks/bench_recovery.py efficiency                     # (c)
    python benchmarks/bench_recovery.py sharkey [--sharkey-rows 100000]  # (d) ~5 min
    python benchmarks/bench_recovery.py all --json results.json

(a) toy: the default `unsuperpose generate` run (5 ReLU-output models, 40 features in d=10,
    feature probabilities 0.3 .. 0.003), generated into --run-dir unless it exists already.
    On the sparsest instance every method learns as many atoms as there are represented
    features and is scored by signed MMCS over them and the fraction recovered at cos >= 0.99;
    on the densest (antipodal pairs W_j = -W_i) we also check that both members of every pair
    get an atom of their own (signed cos >= 0.99 each).
(b) tail: n unit atoms in d dims, feature i firing with probability p_i log-uniform between
    p_max and p_min (so that sum p_i ~ 5 and a third of the features fire in < 0.1% of rows),
    magnitudes U[0.5, 1.5]; signed MMCS over all features and over the rare ones (p < 1e-3).
(c) efficiency: samples until MMCS >= 0.99 for topk and l1 on the planted problem of
    bench_dictionaries and on (b), checking every `--check-every` steps.

(d) sharkey: the `sharkey` world (data/worlds.py; generated into --run-dir/sharkey unless it
    exists), its first --sharkey-rows training rows all fitted by --sharkey-methods with
    exactly 512 atoms and the stage's k (5): once with the method's defaults (what
    `unsuperpose sae` and `build` fit), once with the plain algorithm
    (sae.sparse_coding_config.PLAIN_ALGORITHM), the reference, in the same run; signed MMCS
    against the 512 true directions and fit seconds. The target: mod_nn >= 0.99 in <= 60 s
    on one thread with the defaults.

Everything runs on one torch/BLAS thread by default (a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unsuperpose.data import files  # noqa: E402
from unsuperpose.evaluate.metrics import mmcs, per_feature_max_cosine  # noqa: E402
from unsuperpose.sae.methods import accepted, build  # noqa: E402
from unsuperpose.sae.sparse_coding_config import PLAIN_ALGORITHM  # noqa: E402

RARE = 1e-3  # a feature firing in fewer than this fraction of rows counts as rare


# ---- problems ------------------------------------------------------------------------------
def load_instance(instance_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H [rows, d], represented directions [n_rep, d], their probabilities [n_rep])."""
    from safetensors.torch import load_file

    from unsuperpose.data.rows import read_all

    H, _ = read_all(instance_dir)
    gt = load_file(str(instance_dir / files.GROUND_TRUTH_FILE))
    rep = gt[files.GT_REPRESENTED].bool()
    prob = gt[files.GT_PROBABILITY][gt[files.GT_FEATURE_INDEX]][rep]
    return H.astype(np.float32), gt[files.GT_DIRECTIONS][rep].numpy(), prob.numpy()


def tail_probabilities(n_features: int, mean_active: float = 5.0,
                       p_min: float = 2e-4) -> torch.Tensor:
    """[n_features] p_i log-uniform from p_max down to p_min (geometric decay over i), p_max
    found by bisection so that sum_i p_i = mean_active."""
    lo, hi = p_min, 1.0
    for _ in range(60):
        p_max = (lo + hi) / 2
        total = torch.logspace(math.log10(p_max), math.log10(p_min), n_features).sum()
        lo, hi = (p_max, hi) if total < mean_active else (lo, p_max)
    return torch.logspace(math.log10(p_max), math.log10(p_min), n_features)


def tail_problem(n_features: int = 512, d: int = 256, n_samples: int = 400_000,
                 mean_active: float = 5.0, p_min: float = 2e-4, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H [n_samples, d], unit atoms [n_features, d], probabilities [n_features]).

    p_i log-uniform on [p_min, p_max], sum p_i = mean_active (`tail_probabilities`): at 512
    features p_max ~ 0.055 and ~29% of features have p < 1e-3, at 256 p_max ~ 0.13 and ~26%.
    Magnitudes U[0.5, 1.5]; noiseless.
    """
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_features, d, generator=g), dim=1)
    p = tail_probabilities(n_features, mean_active, p_min)
    H = torch.empty(n_samples, d)
    for start in range(0, n_samples, 20_000):  # bounded [chunk, n_features] memory
        m = min(20_000, n_samples - start)
        fire = torch.rand(m, n_features, generator=g) < p
        x = fire * (0.5 + torch.rand(m, n_features, generator=g))
        H[start:start + m] = x @ atoms
    return H.numpy(), atoms.numpy(), p.numpy()


# ---- method settings -----------------------------------------------------------------------
def method_params(method: str, n_components: int, k: int, n_samples: int, seed: int,
                  passes: float = 1.0) -> dict:
    """The settings every experiment here uses, by method. k: nonzeros per row for OMP
    (k-SVD, MOD, sklearn's transform) and TopK. SAE passes are sized to ~2-4M samples seen."""
    epochs = max(1, round(passes * max(2, 3_000_000 // max(n_samples, 1))))
    common = dict(n_components=n_components, random_state=seed, device="cpu")
    if method in ("ksvd", "ksvd_nn", "mod", "mod_nn"):
        # tol: stop coding a row once it is explained (noiseless data; rows with fewer
        # active features than k do not pick up spurious atoms)
        return {**common, **PLAIN_ALGORITHM, "k": k, "n_iter": 20, "tol": 1e-6, "n_swaps": 4}
    if method in ("topk", "batchtopk"):
        return {**common, "k": k, "lr": 3e-3, "batch_size": 128, "n_epochs": epochs,
                "b_dec_init": "zeros"}
    if method == "l1":
        return {**common, "l1_coefficient": 0.1, "lr": 3e-3, "batch_size": 128,
                "n_epochs": epochs, "b_dec_init": "zeros", "init": "data", "l1_warmup_steps": 0}
    if method == "sklearn":
        return {**common, "k": k, "max_iter": 10}
    raise ValueError(f"unknown method {method!r}")


def fit_and_score(method: str, params: dict, H: np.ndarray, G: np.ndarray,
                  rare: np.ndarray | None = None,
                  progress: Callable | None = None) -> tuple[dict, np.ndarray]:
    """Fit one method; signed MMCS and recovered fraction against G [n_true, d]."""
    params = {k: v for k, v in params.items() if k != "device" or method != "sklearn"}
    est = build(method, params)
    t0 = time.perf_counter()
    est.fit(H) if progress is None else est.fit(H, progress=progress(est))
    seconds = time.perf_counter() - t0
    A = np.asarray(est.components_)
    best = per_feature_max_cosine(G, A)
    row = {"method": method, "fit_seconds": round(seconds, 2), "mmcs": mmcs(G, A),
           "recovered_099": float((best >= 0.99).mean()),
           "abs_mmcs": mmcs(G, A, signed=False)}
    if rare is not None and rare.any():
        row["mmcs_rare"] = float(best[rare].mean())
        row["recovered_099_rare"] = float((best[rare] >= 0.99).mean())
        row["mmcs_common"] = float(best[~rare].mean())
    return row, A


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = [k for k in ("fit_seconds", "mmcs", "abs_mmcs", "recovered_099", "mmcs_common",
                        "mmcs_rare", "recovered_099_rare", "pairs_both")
            if any(k in r for r in rows)]
    print(f"{'method':10s}" + "".join(f"{k:>20s}" for k in keys))
    for r in rows:
        cells = [(f"{r[k]:20.4f}" if isinstance(r.get(k), float) else f"{str(r.get(k, '')):>20s}")
                 for k in keys]
        print(f"{r['method']:10s}" + "".join(cells))


# ---- (a) the toy models --------------------------------------------------------------------
def antipodal_pairs(G: np.ndarray, cos: float = -0.99) -> list[tuple[int, int]]:
    """Pairs (i, j) of represented directions with cos(G_i, G_j) <= `cos`."""
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    C = Gn @ Gn.T
    return [(i, j) for i in range(len(G)) for j in range(i + 1, len(G)) if C[i, j] <= cos]


def toy(run_dir: Path, methods: list[str], seed: int = 0, drop_zero_rows: bool = True) -> dict:
    instances = files.instances_dir(run_dir)
    if not instances.is_dir():
        print(f"generating the default toy run into {run_dir} ...", flush=True)
        subprocess.run([sys.executable, "-m", "unsuperpose.generate", "--run-dir", str(run_dir)],
                       check=True, cwd=Path(__file__).resolve().parents[1])
    out = {}
    for name in sorted(p.name for p in instances.iterdir()):
        if name not in ("04-p0.003", "00-p0.3"):
            continue
        H, G, prob = load_instance(instances / name)
        zero = np.linalg.norm(H, axis=1) == 0
        if drop_zero_rows:  # all-zero rows carry no direction; they only pull b_dec and
            H = H[~zero]    # data-initialised SAE atoms toward 0
        k = math.ceil(float(prob.sum()) - 1e-6)  # expected active represented features per row
        pairs = antipodal_pairs(G)
        print(f"\n{name}: {len(G)} represented features, {len(pairs)} antipodal pairs, "
              f"{zero.mean():.1%} zero rows ({'dropped' if drop_zero_rows else 'kept'}), "
              f"{len(H)} rows fitted, k={k}", flush=True)
        rows = []
        for method in methods:
            params = method_params(method, len(G), k, len(H), seed)
            row, A = fit_and_score(method, params, H, G)
            if pairs:
                best = per_feature_max_cosine(G, A)
                atom = (G / np.linalg.norm(G, axis=1, keepdims=True) @ A.T).argmax(1)
                both = sum(best[i] >= 0.99 and best[j] >= 0.99 and atom[i] != atom[j]
                           for i, j in pairs)
                row["pairs_both"] = f"{both}/{len(pairs)}"
            row["params"] = params
            rows.append(row)
            print(f"  {method:10s} {row['fit_seconds']:7.1f} s  MMCS {row['mmcs']:.4f}  "
                  f"cos>=0.99 {row['recovered_099']:.1%}  {row.get('pairs_both', '')}",
                  flush=True)
        print_table(f"{name} (signed; n_components = {len(G)})", rows)
        out[name] = rows
    return out


# ---- (b) the rare-feature tail -------------------------------------------------------------
def tail(n_features: int, d: int, n_samples: int, methods: list[str], seed: int = 0,
         k: int | None = None) -> dict:
    H, G, p = tail_problem(n_features, d, n_samples, seed=seed)
    rare = p < RARE
    active = float(p.sum())
    k = k or math.ceil(active + 2 * math.sqrt(active))  # covers ~95% of rows' supports
    print(f"\ntail: {n_features} atoms in d={d}, {n_samples} rows, mean active {active:.2f}, "
          f"{int(rare.sum())} rare features (p < {RARE}; rarest p={p.min():.1e}, "
          f"~{p.min() * n_samples:.0f} rows), k={k}", flush=True)
    rows = []
    for method in methods:
        params = method_params(method, n_features, k, n_samples, seed)
        if method in ("ksvd", "ksvd_nn", "mod", "mod_nn"):
            # a rare tail: start with 25% spare atoms so rare features need not displace
            # learned ones, swap up to 8 atoms an iteration for seeds that each follow one
            # group of unexplained residuals (when the seed carries more than the atom's
            # removal cost), stop coding a row at 1% of its energy (no filler atoms), and
            # prune the spares (mixtures that the clean atoms span) for the last 10 iterations;
            # purify: an atom whose samples point several ways takes the strongest one
            params.update(n_iter=40, n_swaps=8, swap_gain_factor=1.0, reseed="cluster",
                          tol=1e-2, overcomplete=0.25, purify=True)
        row, _ = fit_and_score(method, params, H, G, rare)
        row["params"] = params
        rows.append(row)
        print(f"  {method:10s} {row['fit_seconds']:7.1f} s  MMCS {row['mmcs']:.4f}  "
              f"rare {row['mmcs_rare']:.4f}", flush=True)
    print_table(f"tail (signed; n_components = {n_features})", rows)
    return {"problem": dict(n_features=n_features, d=d, n_samples=n_samples, k=k,
                            mean_active=active, n_rare=int(rare.sum())), "rows": rows}


# ---- (c) SAE sample efficiency -------------------------------------------------------------
def samples_to_target(method: str, params: dict, H: np.ndarray, G: np.ndarray,
                      target: float = 0.99, check_every: int = 50) -> dict:
    """Samples seen when the decoder's MMCS first reaches `target` (None if never)."""
    reached: list[int] = []

    def watcher(est):
        def check(step: int, total, info) -> None:
            if not reached and step % check_every == 0 and \
                    mmcs(G, est.sae_.components().numpy()) >= target:
                reached.append(step * est.batch_size)
        return check

    row, _ = fit_and_score(method, params, H, G, progress=watcher)
    row["samples_to_target"] = reached[0] if reached else None
    row["params"] = {k: v for k, v in params.items() if k not in ("device",)}
    return row


def efficiency(tail_size: tuple[int, int, int], seed: int = 0, check_every: int = 50) -> dict:
    from benchmarks.bench_dictionaries import planted_problem

    problems = {"planted 512 in 256, 5 active, 20k": planted_problem(20_000, 512, 256, 5, seed)
                + (5,)}
    n, d, m = tail_size
    Ht, Gt, p = tail_problem(n, d, m, seed=seed)
    problems[f"tail {n} in {d}, {m} rows"] = (Ht, Gt, math.ceil(p.sum() + 2 * math.sqrt(p.sum())))
    out = {}
    for label, (H, G, k) in problems.items():
        rows = []
        for method in ("topk", "l1"):
            variants = {"recipe": {}, "random init": {"init": "random", "tied_init": False},
                        "lr 1e-3": {"lr": 1e-3}}
            for variant, change in variants.items():
                params = {**method_params(method, len(G), k, len(H), seed), **change}
                row = samples_to_target(method, params, H, G, check_every=check_every)
                row["method"] = f"{method}/{variant}"
                rows.append(row)
                print(f"  {label}: {row['method']:18s} samples to 0.99: "
                      f"{row['samples_to_target']}  final {row['mmcs']:.4f} after "
                      f"{row['fit_seconds']:.0f} s", flush=True)
        out[label] = rows
    return out


# ---- (d) the sharkey world with the methods' defaults ----------------------------------------
def sharkey(run_dir: Path, methods: list[str], n_rows: int, seed: int = 0) -> dict:
    from unsuperpose.data.manifest import verify_instance
    from unsuperpose.data.rows import take_rows
    from unsuperpose.evaluate.inputs import read_instance

    world = run_dir / "sharkey"
    if not files.instances_dir(world).is_dir():
        subprocess.run([sys.executable, "-m", "unsuperpose.generate", "--source", "synthetic", "--world",
                        "sharkey", "--run-dir", str(world), "--threads", "1", "--device", "cpu"],
                       check=True, cwd=Path(__file__).resolve().parents[1])
    (instance_id,) = files.list_instances(world)
    folder = files.instance_dir(world, instance_id)
    H, _ = take_rows(folder, verify_instance(folder), n_rows)
    G = read_instance(world, instance_id, 16, drop_zero_rows=True, seed=seed).G  # [512, d]
    k = 5  # the stage's k: the expected number of active features per row, rounded up
    rows = []
    for method in methods:
        plain = method in ("ksvd", "ksvd_nn", "mod", "mod_nn")
        for settings, params in (("defaults", {}), *((("plain algorithm", PLAIN_ALGORITHM),)
                                                     if plain else ())):
            run = {"n_components": G.shape[0], "k": k, "random_state": seed, "device": "cpu"}
            est = build(method, {**accepted(method, run), **params})  # l1: no k; sklearn: no device
            t0 = time.perf_counter()
            est.fit(H)
            seconds = time.perf_counter() - t0
            row = {"method": method, "settings": settings, "mmcs": mmcs(G, est.components_),
                   "fit_seconds": seconds, "params": params}
            print(f"sharkey {method:8s} {settings:18s} MMCS {row['mmcs']:.4f} in {seconds:.1f} s",
                  flush=True)
            rows.append(row)
    return {"rows_fitted": int(H.shape[0]), "n_atoms": int(G.shape[0]), "k": k, "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("toy", "tail", "efficiency", "sharkey", "all"))
    p.add_argument("--run-dir", type=Path, default=Path("runs/bench"))
    p.add_argument("--methods", nargs="+",
                   default=["ksvd", "ksvd_nn", "mod", "mod_nn", "topk", "l1", "sklearn"])
    p.add_argument("--keep-zero-rows", action="store_true",
                   help="toy: fit on all rows, the all-zero ones included")
    p.add_argument("--n-features", type=int, default=512)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=400_000,
                   help="tail rows: at 400k the rarest feature fires on ~80 (at 200k, ~40: MMCS 0.985)")
    p.add_argument("--k", type=int, default=None, help="tail: OMP/TopK k (default mean+2sd)")
    p.add_argument("--check-every", type=int, default=50)
    p.add_argument("--sharkey-rows", type=int, default=100_000)
    p.add_argument("--sharkey-methods", nargs="+", default=["mod_nn"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    result = {}
    with threadpool_limits(args.threads):
        if args.experiment in ("toy", "all"):
            result["toy"] = toy(args.run_dir, args.methods, args.seed, not args.keep_zero_rows)
        if args.experiment in ("tail", "all"):
            result["tail"] = tail(args.n_features, args.d, args.n_samples, args.methods,
                                  args.seed, args.k)
        if args.experiment in ("efficiency", "all"):
            result["efficiency"] = efficiency((args.n_features, args.d, args.n_samples),
                                              args.seed, args.check_every)
        if args.experiment in ("sharkey", "all"):
            result["sharkey"] = sharkey(args.run_dir, args.sharkey_methods, args.sharkey_rows,
                                        args.seed)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
