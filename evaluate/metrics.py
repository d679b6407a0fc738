"""Dictionary-recovery metrics: pure functions of arrays.

G: true directions [n_true, d]; A: learned atoms [n_atoms, d]. Neither needs unit norm:
every metric works on cosines, so it is invariant to rescaling rows of either and to
permuting them. A zero row has cosine 0 with everything.

Three families, by source:
- Sharkey, Braun & Millidge (2022), "Taking features out of superposition with sparse
  autoencoders": MMCS, the mean over true features of the best cosine with any atom.
- one-to-one matching (Hungarian, scipy's linear_sum_assignment): the matched cosine per true
  feature and the fraction recovered above a threshold.
- SynthSAEBench (Chanin & Garriga-Alonso 2026), as implemented in SAELens
  `sae_lens/synthetic/evals.py`: `mcc` (`mean_correlation_coefficient`) and `uniqueness`
  (`feature_uniqueness`), both on absolute cosines, so that numbers compare with its tables.
And the toy-model view of Elhage et al. (2022): ||W||_F^2 and d / ||W||_F^2.
"""
from __future__ import annotations

import numpy as np


def cosine_matrix(G: np.ndarray, A: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """C[i, j] = cos(G_i, A_j), shape [n_true, n_atoms], values in [-1, 1]."""
    G = np.asarray(G, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    Gn = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), eps)
    An = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), eps)
    return Gn @ An.T


def mmcs(G: np.ndarray, A: np.ndarray, signed: bool = True) -> float:
    """Mean max cosine similarity (Sharkey, Braun & Millidge 2022):
    (1 / n_true) sum_i max_j cos(G_i, A_j); with signed=False, |cos|.

    Range [-1, 1] signed, [0, 1] absolute; 1 iff every true direction has an atom pointing
    its way. Invariant to permuting/rescaling atoms; a sign-flipped atom only counts when
    signed=False. Random unit atoms in d dims score about sqrt(2 log n_atoms / d) (absolute).
    `mmcs(A, G)` is the reverse direction: how well each atom is explained by a true feature.
    """
    C = cosine_matrix(G, A)
    return float((C if signed else np.abs(C)).max(axis=1).mean())


def per_feature_max_cosine(G: np.ndarray, A: np.ndarray, signed: bool = True) -> np.ndarray:
    """[n_true]: the best cosine each true direction gets from any atom."""
    C = cosine_matrix(G, A)
    return (C if signed else np.abs(C)).max(axis=1)


Match = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A Hungarian matching: (true_index, atom_index, score) of its matched pairs."""


def hungarian_match(G: np.ndarray, A: np.ndarray, signed: bool = True,
                    C: np.ndarray | None = None) -> Match:
    """One-to-one matching of true directions to atoms maximising the summed cosine (|cos|
    with signed=False; scipy's linear_sum_assignment). Returns (true_index, atom_index,
    cosine) of the min(n_true, n_atoms) matched pairs, the cosine as |cos| when not signed.
    Unlike MMCS, one atom cannot serve two features. C: `cosine_matrix(G, A)`, where the
    caller has it already.
    """
    from scipy.optimize import linear_sum_assignment

    C = cosine_matrix(G, A) if C is None else C
    score = C if signed else np.abs(C)
    rows, cols = linear_sum_assignment(score, maximize=True)
    return rows, cols, score[rows, cols]


def matched_cosines(G: np.ndarray, A: np.ndarray, signed: bool = True,
                    match: Match | None = None) -> np.ndarray:
    """[n_true]: the cosine of each true direction with its Hungarian-matched atom; NaN for a
    true direction left without one (possible only when n_atoms < n_true). match: the
    `hungarian_match(G, A, signed)` the caller computed already (`signed` is then its own).

    Its mean with NaN counted as 0 is the "mean matched cosine" (range [-1, 1] signed): unlike
    MMCS it cannot reach 1 by pointing one atom at two features.
    """
    out = np.full(len(G), np.nan)
    rows, _, cos = hungarian_match(G, A, signed=signed) if match is None else match
    out[rows] = cos
    return out


def recovered_fraction(matched: np.ndarray, threshold: float) -> float:
    """(1 / n_true) #{i : matched_i >= threshold}, from `matched_cosines`; an unmatched
    (NaN) feature is not recovered. Range [0, 1]; NaN when there is no true feature."""
    matched = np.asarray(matched, dtype=np.float64)
    if matched.size == 0:
        return float("nan")
    return float(np.mean(np.nan_to_num(matched, nan=-np.inf) >= threshold))


def mcc(G: np.ndarray, A: np.ndarray, abs_match: Match | None = None) -> float:
    """SynthSAEBench's mean correlation coefficient: the mean |cos| over the min(n_true,
    n_atoms) pairs of the Hungarian matching on |cos| (SAELens `mean_correlation_coefficient`,
    after O'Neill et al. 2025); abs_match: that matching, `hungarian_match(G, A, signed=False)`,
    where the caller computed it already.

    Range [0, 1], 1 iff every matched pair is parallel or antiparallel. Invariant to
    permuting, rescaling and sign-flipping atoms. Surplus atoms (or surplus true features) do
    not lower it: it averages over matched pairs only.
    """
    if len(G) == 0 or len(A) == 0:
        return float("nan")
    match = hungarian_match(G, A, signed=False) if abs_match is None else abs_match
    return float(match[2].mean())


def best_true_feature(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """[n_atoms]: the index of each atom's best true feature by |cos| (many atoms may share
    one), the matching of SynthSAEBench's uniqueness and per-latent classification."""
    return np.abs(cosine_matrix(A, G)).argmax(axis=1)


def uniqueness(G: np.ndarray, A: np.ndarray, best: np.ndarray | None = None) -> float:
    """SynthSAEBench's uniqueness (SAELens `feature_uniqueness`): give every atom its best
    true feature by |cos|; the number of distinct true features so chosen, over n_atoms.
    best: `best_true_feature(A, G)`, where the caller computed it already.

    Range (0, 1]: 1 when no two atoms chase the same feature; k atoms that all point at one
    feature give 1/k. Invariant to permuting, rescaling and sign-flipping atoms. 0 for an
    empty dictionary, NaN with no true feature.
    """
    if len(G) == 0:
        return float("nan")
    if len(A) == 0:
        return 0.0
    best = best_true_feature(A, G) if best is None else best  # [n_atoms]
    return len(np.unique(best)) / len(A)


def duplicate_fraction(A: np.ndarray, threshold: float = 0.95) -> float:
    """Share of atoms that have another atom with cos > threshold (signed, so an antipodal
    pair is not a duplicate: a nonnegative code needs both). Range [0, 1]; invariant to
    permuting and rescaling atoms. 0 for fewer than two atoms."""
    if len(A) < 2:
        return 0.0
    C = cosine_matrix(A, A)
    np.fill_diagonal(C, -np.inf)
    return float(np.mean(C.max(axis=1) > threshold))


# ---- the toy model's own view (Elhage et al. 2022) ----------------------------------------
def frobenius_norm_sq(W: np.ndarray) -> float:
    """||W||_F^2 = sum_i ||W_i||^2 for W [d, n]: roughly how many features the model gives a
    dimension's worth of room. A linear model at best reaches d; a ReLU-output model in
    superposition exceeds it."""
    return float(np.sum(np.asarray(W, dtype=np.float64) ** 2))


def dimensions_per_feature(W: np.ndarray) -> float:
    """d / ||W||_F^2 for W [d, n] (the paper's "dimensions per feature"): 1 when each
    represented feature has its own dimension, 1/2 for antipodal pairs, inf for W = 0."""
    norm = frobenius_norm_sq(W)
    return float(np.asarray(W).shape[0] / norm) if norm > 0 else float("inf")


def superposition(W: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """[n]: sum_{j != i} (W^_i . W_j)^2 for the columns of W [d, n], how much the other
    features interfere along feature i's direction (the colour of the paper's norm bars).
    0 for an orthogonal feature; 0 for a zero column."""
    W = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=0)
    unit = W / np.maximum(norms, eps)
    overlap = (unit.T @ W) ** 2  # [n, n]
    np.fill_diagonal(overlap, 0.0)
    return np.where(norms > eps, overlap.sum(axis=1), 0.0)


def interference(G: np.ndarray, chunk_entries: int = 1 << 23) -> float:
    """Mean max |cos| among the true directions G [n_true, d]:
    (1 / n_true) sum_i max_{j != i} |cos(G_i, G_j)|.

    Range [0, 1]: 0 when the directions are mutually orthogonal, 1 when every direction has
    a parallel or antipodal partner; two directions at 60 degrees give 0.5. n random unit
    directions in d dims score a little under sqrt(2 ln n / d): 0.21 for 1,024 in 256, 0.15 for
    SynthSAEBench-16k's 16,384 in 768. Invariant to permuting, rescaling and sign-flipping
    rows; a zero row has cosine 0 with everything. NaN for fewer than two directions. The
    |cos| matrix is formed a block of rows (about chunk_entries entries) at a time, never
    [n_true, n_true] whole.
    """
    G = np.asarray(G, dtype=np.float64)
    if len(G) < 2:
        return float("nan")
    unit = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    best = np.empty(len(G))
    chunk = max(1, chunk_entries // len(G))
    for lo in range(0, len(G), chunk):
        C = np.abs(unit[lo:lo + chunk] @ unit.T)  # [chunk, n_true]
        C[np.arange(len(C)), lo + np.arange(len(C))] = -np.inf
        best[lo:lo + chunk] = C.max(axis=1)
    return float(best.mean())
