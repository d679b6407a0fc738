"""Every dictionary method on the scaled SynthSAEBench-like world, at one width and one L0.

    python benchmarks/bench_worlds.py                          # ~13 min on 1 thread
    python benchmarks/bench_worlds.py --methods topk l1 --json worlds.json

The world is the `synthsaebench-small` preset (data/worlds.py: 2048 features in d=96, Zipf
firing on [5e-4, 0.4], depth-3 exclusive hierarchy, rank-25 copula, folded-normal magnitudes),
written by `python -m generate --source synthetic --world synthsaebench-small` into --run-dir
(reused when present). Rows with h = 0 (~2%) are dropped as the sae and evaluate stages do;
of the rest, --fit-rows are fitted and the next --eval-rows (disjoint) are scored.

Every method learns n_components = 2048 atoms (the number of true features) and is held to the
same L0: k = the world's expected L0 (sum of the marginal firing probabilities, ~11.2) rounded,
for topk, batchtopk, and the OMP coding of ksvd(_nn), mod(_nn) and sklearn (fit and
transform). The L1 SAE has no k: its l1_coefficient is found by bisection in log space over
short fits (`tune_l1`, L1_TUNE_STEPS steps each), aiming the L0 on a held-in slice of the fit
rows at k. A full fit runs ~10x longer and ends sparser (the first run: 6.9 for a coefficient
whose short fit gave ~10.5), so when the full fit misses k by more than 15% we fit once more
(`recalibrate_l1`): the short fits' log L0 against log coefficient is a line, and the new
coefficient is where that line gives k / (full L0 / short L0). The refit is what is reported.

Budget choices (one thread, 65536 rows, 2048 atoms; timed in the same setting):
- SAEs: ~7 s an epoch at batch 128; SAE_EPOCHS passes, lr 3e-3 (bench_recovery's recipe).
- k-SVD / MOD: one alternation costs ~10 s, mostly the batched OMP over 65536 rows with 2048
  atoms (k-SVD's per-atom loop is ~1-2 s of it), so N_ITER alternations each, exact k-SVD
  update; the nonnegative variants' OMP timed up to ~4x slower in a probe (~40 s an
  alternation; ~17 s in the full run), so N_ITER_NN.
- sklearn MiniBatchDictionaryLearning is the one method that cannot take the full fit: its
  per-row lasso (coordinate descent over 2048 atoms) ran at ~6 s a batch of 256 rows, so one
  pass over 65536 rows would take ~25 min, and its OMP (sparse_encode) codes only ~250 rows/s
  with 2048 atoms. Rather than shrink every method's width for it, it keeps n_components =
  2048 and fits one pass (max_iter=1) over the first SKLEARN_ROWS rows only; alpha =
  SKLEARN_ALPHA (rows have norm ~16, magnitudes ~4.5: alpha 0.1 gives dense lasso codes).

Scores come from evaluate.scoring.score_dictionary (SynthSAEBench/SAELens definitions): mcc
(Hungarian on |cos|), F1/precision/recall (each latent read as a detector of its best true
feature), uniqueness, explained variance, L0 and dead fraction on the held-out rows.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import files  # noqa: E402
from data.manifest import verify_instance  # noqa: E402
from data.rows import take_rows  # noqa: E402
from evaluate.code_metrics import l0  # noqa: E402
from evaluate.inputs import read_instance  # noqa: E402
from evaluate.scoring import score_dictionary  # noqa: E402
from sae.methods import METHODS, build  # noqa: E402

WORLD = "synthsaebench-small"
SAE_EPOCHS = 10
N_ITER = 8
N_ITER_NN = 4
SKLEARN_ROWS = 2048
SKLEARN_ALPHA = 1.0
L1_TUNE_STEPS = 500
L1_BRACKET = (0.01, 30.0)
L1_BISECTIONS = 7
COLUMNS = ("mcc", "f1", "precision", "recall", "uniqueness", "explained_variance", "l0",
           "dead_fraction", "fit_seconds")


# ---- data ----------------------------------------------------------------------------------
def load_world(run_dir: Path, fit_rows: int, eval_rows: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(H_fit [fit_rows, d], H_eval [eval_rows, d], true activations of the eval rows
    [eval_rows, n_true], G [n_true, d], expected L0), generating the world if needed."""
    instances = files.instances_dir(run_dir)
    if not instances.is_dir():
        print(f"generating {WORLD} into {run_dir} ...", flush=True)
        subprocess.run([sys.executable, "-m", "generate", "--source", "synthetic", "--world",
                        WORLD, "--run-dir", str(run_dir), "--threads", "1"],
                       check=True, cwd=Path(__file__).resolve().parents[1])
    (instance_id,) = sorted(p.name for p in instances.iterdir())
    # fit on the first non-zero training rows; score on rows drawn at random from the
    # held-out split, which no method sees while fitting
    folder = files.instance_dir(run_dir, instance_id)
    H_fit, _ = take_rows(folder, verify_instance(folder), fit_rows)
    inst = read_instance(run_dir, instance_id, eval_rows, drop_zero_rows=True, seed=seed)
    if len(H_fit) < fit_rows or len(inst.H) < eval_rows:
        raise SystemExit(f"{run_dir}: {len(H_fit)} non-zero training rows and {len(inst.H)} "
                         f"held-out ones, fewer than --fit-rows {fit_rows} / --eval-rows {eval_rows}")
    if inst.split != "heldout":
        raise SystemExit(f"{run_dir}: generated without a held-out split; delete it to regenerate")
    expected_l0 = float(inst.gt[files.GT_PROBABILITY].sum())
    return H_fit, inst.H, inst.true_activations(), inst.G, expected_l0


# ---- methods -------------------------------------------------------------------------------
def method_params(method: str, n_components: int, k: int, seed: int) -> dict:
    """The settings of each method here (see the module docstring for why)."""
    common = dict(n_components=n_components, random_state=seed)
    if method in ("ksvd", "ksvd_nn", "mod", "mod_nn"):
        n_iter = N_ITER_NN if method.endswith("_nn") else N_ITER
        return {**common, "device": "cpu", "k": k, "n_iter": n_iter}
    if method in ("topk", "batchtopk", "l1"):
        sae = {**common, "device": "cpu", "lr": 3e-3, "batch_size": 128,
               "n_epochs": SAE_EPOCHS}
        return {**sae, "k": k} if method != "l1" else sae
    if method == "sklearn":
        return {**common, "k": k, "max_iter": 1, "alpha": SKLEARN_ALPHA}
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def tune_l1(params: dict, H: np.ndarray, target: float, seed: int) -> tuple[float, list]:
    """l1_coefficient whose L1 SAE, after L1_TUNE_STEPS steps on H minus a held-in slice,
    fires on `target` latents per row of that slice: bisection on log(coefficient) within
    L1_BRACKET (L0 falls as the coefficient grows). Returns (coefficient, [(coef, L0)])."""
    n_check = min(4096, len(H) // 8)
    check, train = H[-n_check:], H[:-n_check]
    lo, hi = (math.log(c) for c in L1_BRACKET)
    trace = []
    for _ in range(L1_BISECTIONS):
        coef = math.exp((lo + hi) / 2)
        est = build("l1", {**params, "l1_coefficient": coef, "n_steps": L1_TUNE_STEPS,
                           "random_state": seed})
        est.fit(train)
        achieved = l0(np.asarray(est.transform(check)))
        trace.append((round(coef, 4), round(achieved, 2)))
        print(f"    l1_coefficient {coef:8.4f}: L0 {achieved:7.2f}", flush=True)
        lo, hi = (math.log(coef), hi) if achieved > target else (lo, math.log(coef))
    return math.exp((lo + hi) / 2), trace


def recalibrate_l1(coef: float, full_l0: float, trace: list, target: float) -> float:
    """The coefficient whose full fit should reach `target`, from one full fit (coef ->
    full_l0) and the short fits' trace [(coef, L0)]: a least-squares line log L0 = a log c + b
    through the short fits with L0 in [target / 4, 4 target], the full/short L0 ratio at coef
    taken as constant."""
    pts = np.array([(math.log(c), math.log(v)) for c, v in trace if target / 4 <= v <= 4 * target])
    a, b = np.polyfit(pts[:, 0], pts[:, 1], 1)
    ratio = full_l0 / math.exp(a * math.log(coef) + b)
    return math.exp((math.log(target / ratio) - b) / a)


def fit_and_score(method: str, params: dict, H: np.ndarray, H_eval: np.ndarray,
                  acts: np.ndarray, G: np.ndarray) -> dict:
    est = build(method, params)
    if method == "sklearn":
        H = H[:SKLEARN_ROWS]
    t0 = time.perf_counter()
    est.fit(H)
    seconds = time.perf_counter() - t0
    A = np.asarray(est.components_, dtype=np.float32)   # [n_components, d]
    codes = np.asarray(est.transform(H_eval))            # [eval_rows, n_components]
    H_hat = np.asarray(est.inverse_transform(codes))     # [eval_rows, d]
    s = score_dictionary(G, A, H_eval, H_hat, codes, acts, thresholds=(0.9,),
                         duplicate_cosine=0.95).scalars
    return {"method": method, **{c: s.get(c) for c in COLUMNS if c != "fit_seconds"},
            "fit_seconds": round(seconds, 1), "fit_rows": len(H), "params": params}


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    labels = ("mcc", "F1", "precision", "recall", "uniqueness", "EV", "L0", "dead frac",
              "fit s", "fit rows")
    print(f"| {'method':9s} | " + " | ".join(f"{h:>10s}" for h in labels) + " |")
    print("|" + "---|" * (len(labels) + 1))
    for r in rows:
        cells = [f"{r[c]:10.1f}" if c == "fit_seconds" else
                 f"{r[c]:10.2f}" if c == "l0" else f"{r[c]:10.3f}" for c in COLUMNS]
        cells.append(f"{r['fit_rows']:10d}")
        print(f"| {r['method']:9s} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/bench-worlds"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--n-components", type=int, default=None,
                   help="atoms for every method (default: the number of true features)")
    p.add_argument("--k", type=int, default=None,
                   help="L0 for every method (default: the world's expected L0, rounded)")
    p.add_argument("--fit-rows", type=int, default=65536)
    p.add_argument("--eval-rows", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with threadpool_limits(args.threads):
        H, H_eval, acts, G, expected_l0 = load_world(args.run_dir, args.fit_rows,
                                                     args.eval_rows, args.seed)
        n_components = args.n_components or len(G)
        k = args.k or round(expected_l0)
        true_l0 = float(np.count_nonzero(acts, axis=1).mean())
        print(f"{WORLD}: {len(G)} features in d={H.shape[1]}, expected L0 {expected_l0:.2f} "
              f"(held-out rows: {true_l0:.2f}); {len(H)} fit rows, {len(H_eval)} eval rows; "
              f"n_components={n_components}, k={k}", flush=True)
        rows, tuning = [], None
        for method in args.methods:
            params = method_params(method, n_components, k, args.seed)
            if method == "l1":
                print(f"  tuning l1_coefficient for L0 ~ {k} ({L1_TUNE_STEPS}-step fits)",
                      flush=True)
                coef, trace = tune_l1(params, H, k, args.seed)
                params["l1_coefficient"] = round(coef, 4)
                tuning = {"l1_coefficient": params["l1_coefficient"], "trace": trace}
            row = fit_and_score(method, params, H, H_eval, acts, G)
            if method == "l1" and abs(row["l0"] - k) > 0.15 * k:
                coef = recalibrate_l1(params["l1_coefficient"], row["l0"], trace, k)
                print(f"  l1 L0 {row['l0']:.2f} after the full fit with l1_coefficient "
                      f"{params['l1_coefficient']}; refitting with {coef:.4f}", flush=True)
                tuning["first_full_fit"] = {"l1_coefficient": params["l1_coefficient"],
                                            "l0": row["l0"], "fit_seconds": row["fit_seconds"]}
                params = {**params, "l1_coefficient": round(coef, 4)}
                tuning["l1_coefficient"] = params["l1_coefficient"]
                row = fit_and_score(method, params, H, H_eval, acts, G)
            rows.append(row)
            print(f"  {method:9s} {row['fit_seconds']:7.1f} s  mcc {row['mcc']:.3f}  "
                  f"F1 {row['f1']:.3f}  EV {row['explained_variance']:.3f}  "
                  f"L0 {row['l0']:.2f}", flush=True)
    total = time.perf_counter() - started
    print_table(rows, f"{WORLD}, n_components={n_components}, k={k}, "
                      f"{len(H_eval)} held-out rows (total {total / 60:.1f} min)")
    if args.json is not None:
        result = {"world": WORLD, "n_components": n_components, "k": k,
                  "expected_l0": expected_l0, "fit_rows": len(H), "eval_rows": len(H_eval),
                  "l1_tuning": tuning, "total_seconds": round(total, 1), "rows": rows}
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
