"""Metrics of a dictionary's codes and reconstructions on sample rows: pure functions of arrays.

H: activations [rows, d]; H_hat: reconstructions [rows, d]; codes [rows, n_atoms];
true_acts: the true directions' activations [rows, n_true] (>= 0; 0 where it did not fire).
A latent *fires* where its code is nonzero: SAE codes are ReLU outputs, so this is
SynthSAEBench's `> 0` for them, and it also counts the negative codes of signed methods
(k-SVD, MOD, scikit-learn), which use the atom as much as positive ones.

The SynthSAEBench definitions follow SAELens `sae_lens/synthetic/evals.py` (Chanin &
Garriga-Alonso 2026): `explained_variance` (ExplainedVarianceCalculator), `shrinkage`
(ShrinkageCalculator), `dead_latents` (DeadLatentsCalculator), and `firing_classification`
(ClassificationMetricsCalculator: each latent scored as a detector of its best-matching true
feature, precision/recall/F1 averaged over latents).
"""
from __future__ import annotations

import numpy as np

from unsuperpose.data.measures import fvu  # noqa: F401 (the one FVU, scored here too)
from unsuperpose.evaluate.metrics import best_true_feature


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def explained_variance(H: np.ndarray, H_hat: np.ndarray) -> float:
    """SynthSAEBench's explained variance (R^2): 1 - E||h - h^||^2 / (E||h||^2 - ||E h||^2),
    i.e. 1 - FVU on the same rows. Range (-inf, 1]; with zero variance, 1 if the residual is
    zero, else 0 (SAELens's convention). NaN with no row."""
    H, H_hat = _f64(H), _f64(H_hat)
    if len(H) == 0:
        return float("nan")
    variance = float(np.mean(np.sum(H ** 2, axis=1)) - np.sum(H.mean(axis=0) ** 2))
    mse = float(np.mean(np.sum((H - H_hat) ** 2, axis=1)))
    if variance < 1e-10:
        return 1.0 if mse < 1e-10 else 0.0
    return 1.0 - mse / variance


def shrinkage(H: np.ndarray, H_hat: np.ndarray, min_norm: float = 1e-6) -> float:
    """SynthSAEBench's shrinkage: mean over rows of ||h^|| / ||h||, skipping rows with
    ||h|| <= min_norm. 1 = no shrinkage; an L1 penalty pulls it below 1. Invariant to a
    common rescaling. NaN when no row is left."""
    norms = np.linalg.norm(_f64(H), axis=1)
    keep = norms > min_norm
    if not keep.any():
        return float("nan")
    return float(np.mean(np.linalg.norm(_f64(H_hat)[keep], axis=1) / norms[keep]))


def l0(codes: np.ndarray) -> float:
    """Mean number of firing (nonzero) latents per row. Range [0, n_atoms]; NaN with no row."""
    codes = np.asarray(codes)
    return float(np.count_nonzero(codes, axis=1).mean()) if len(codes) else float("nan")


def dead_latents(codes: np.ndarray) -> int:
    """SynthSAEBench's dead latents: how many latents never fire on these rows."""
    return int(np.sum(~np.any(np.asarray(codes) != 0, axis=0)))


def firing_classification(codes: np.ndarray, true_acts: np.ndarray, A: np.ndarray,
                          G: np.ndarray, best: np.ndarray | None = None) -> dict[str, float]:
    """SynthSAEBench's per-latent classification metrics.

    Latent j is matched to its best true feature m(j) = argmax_i |cos(A_j, G_i)| (the
    decoder direction decides, not the codes) and read as a detector of it over the rows:
    TP = #(fires_j and true_acts[:, m(j)] > 0), likewise FP, FN. Per latent
    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R), each 0 where
    undefined (so a dead latent scores 0); returned as means over latents, range [0, 1].
    Invariant to permuting latents together with their codes, and to rescaling atoms.
    best: m, i.e. `evaluate.metrics.best_true_feature(A, G)`, where the caller has it already.
    """
    codes, true_acts = np.asarray(codes), np.asarray(true_acts)
    if len(A) == 0 or len(G) == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    best = best_true_feature(A, G) if best is None else best  # [n_atoms]
    fires = codes != 0                                   # [rows, n_atoms]
    truth = true_acts[:, best] > 0                       # [rows, n_atoms]
    tp = np.sum(fires & truth, axis=0).astype(np.float64)
    fp = np.sum(fires & ~truth, axis=0)
    fn = np.sum(~fires & truth, axis=0)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()),
            "f1": float(f1.mean())}


def code_correlation(codes: np.ndarray, true_acts: np.ndarray, atom_index: np.ndarray,
                     true_index: np.ndarray) -> np.ndarray:
    """[n_pairs]: Pearson correlation over rows between the code of atom_index[p] and the
    activation of true direction true_index[p] (the pairs of a matching).

    Range [-1, 1]; 1 when the atom's code is an increasing affine function of the true
    feature's value (so invariant to rescaling either). 0 where either is constant over the
    rows (a dead atom, or a feature that never fired): there is nothing to correlate.
    """
    C = _f64(np.asarray(codes)[:, atom_index])
    T = _f64(np.asarray(true_acts)[:, true_index])
    if len(C) == 0:
        return np.zeros(len(atom_index))
    C -= C.mean(axis=0)
    T -= T.mean(axis=0)
    denom = np.sqrt(np.sum(C ** 2, axis=0) * np.sum(T ** 2, axis=0))
    return np.divide(np.sum(C * T, axis=0), denom, out=np.zeros(len(denom)), where=denom > 1e-12)
