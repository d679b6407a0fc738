"""The oracle row: the true directions themselves, scored as a dictionary.

The represented true directions G, each scaled to unit norm, are used as the atoms, and each
evaluation row is coded by nonnegative OMP with at most k atoms, the k the dictionaries were
fitted with. No dictionary learnt at that sparsity should beat the oracle's FVU, L0, F1 or
code correlation by more than OMP's own suboptimality (OMP is greedy, not an exact k-sparse
fit), so the oracle is a reference row for the table, not a ranked method. Every function
here is a pure function of arrays.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from unsuperpose.evaluate.scoring import Scores, score_dictionary
from unsuperpose.sae.omp import omp_encode, sparse_to_dense

ORACLE = "oracle"
"""The oracle's method name in metrics.json, metrics.csv, the report and the figures."""
RELATIVE_TOL = 1e-4
"""OMP stops coding a row once its residual norm is below this fraction of the row's norm
(float32 rounding leaves ~1e-7; a feature's share of a row is far above 1e-4)."""


def unit_rows(G: np.ndarray) -> np.ndarray:
    """G [n, d] with each row scaled to unit norm (a zero row stays zero)."""
    G = np.asarray(G, dtype=np.float64)
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    return np.divide(G, norms, out=np.zeros_like(G), where=norms > 0)


def oracle_codes(G: np.ndarray, H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Code H [rows, d] on the unit true directions by nonnegative OMP with at most k atoms
    (k is capped at len(G)). Computed on the CPU in H's precision (float32 rows in float32),
    so OMP's rounding-noise floor matches the data's: in float64, float32 rows that are exact
    k-sparse combinations leave a residual of float32 rounding that draws in spurious atoms.

    Returns (atoms [n_true, d] the unit rows of G, codes [rows, n_true] >= 0,
    H_hat [rows, d] = codes @ atoms)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    H = np.asarray(H)
    dtype = H.dtype if H.dtype in (np.float32, np.float64) else np.float64
    H = H.astype(dtype, copy=False)
    atoms = unit_rows(G).astype(dtype)
    if len(atoms) == 0 or len(H) == 0:
        return atoms, np.zeros((len(H), len(atoms)), dtype), np.zeros_like(H)
    D = torch.from_numpy(atoms)
    # each row coded at unit norm, stopping once what is left is below RELATIVE_TOL of it:
    # an exact k-sparse row leaves a residual of rounding noise whose positive correlations
    # would otherwise draw in atoms with codes of ~1e-7, each a false firing for F1
    norms = np.linalg.norm(H, axis=1, keepdims=True)                  # [rows, 1]
    unit = np.divide(H, norms, out=np.zeros_like(H), where=norms > 0)
    idx, val = omp_encode(torch.from_numpy(np.ascontiguousarray(unit)), D,
                          min(int(k), len(atoms)), tol=RELATIVE_TOL ** 2, nonnegative=True)
    codes = sparse_to_dense(idx, val, len(atoms)) * torch.from_numpy(norms)
    return atoms, codes.numpy(), (codes @ D).numpy()


def score_oracle(G: np.ndarray, H: np.ndarray, true_acts: np.ndarray, k: int,
                 thresholds: tuple[float, ...], duplicate_cosine: float) -> Scores:
    """Every metric of `score_dictionary` for the oracle dictionary (the unit true directions,
    nonnegative OMP at sparsity k), plus scalars `k` (as used, after capping at len(G)) and
    `f1_vs_oracle` = 1. G [n_true, d] represented true directions (n_true >= 1);
    H [rows, d]; true_acts [rows, n_true]."""
    if len(G) == 0:
        raise ValueError("the oracle needs at least one represented true direction")
    atoms, codes, H_hat = oracle_codes(G, H, k)
    sc = score_dictionary(G, atoms, H, H_hat, codes, true_acts, thresholds,
                          duplicate_cosine)
    sc.scalars["k"] = min(int(k), len(G))
    if "f1" in sc.scalars:
        sc.scalars["f1_vs_oracle"] = 1.0 if sc.scalars["f1"] > 0 else float("nan")
    return sc


def f1_vs_oracle(f1: float | None, oracle_f1: float | None) -> float:
    """A method's F1 as a fraction of the oracle's on the same instance and rows; NaN where
    either is missing or the oracle's F1 is 0."""
    if f1 is None or oracle_f1 is None or not (math.isfinite(f1) and math.isfinite(oracle_f1)):
        return float("nan")
    return f1 / oracle_f1 if oracle_f1 > 0 else float("nan")


def oracle_k(ks: list) -> tuple[int | None, str | None]:
    """The sparsity for the oracle from the k each dictionary of an instance recorded
    (config.json `k`; None where absent): (k, None) when they agree; the largest with a note
    when they differ (the largest k gives every dictionary a bound); (None, note) when none
    recorded one."""
    valid = sorted({int(k) for k in ks if isinstance(k, (int, float)) and not isinstance(k, bool)
                    and math.isfinite(k) and k >= 1})
    if not valid:
        return None, "no dictionary of this instance records a k (config.json `k`): no oracle row"
    if len(valid) > 1:
        return valid[-1], (f"the dictionaries record different k ({', '.join(map(str, valid))}): "
                           f"the oracle uses the largest, k = {valid[-1]}")
    return valid[0], None
