"""Dictionary-recovery metrics: pure functions of arrays.

G: true directions [n_true, d]; A: learned atoms [n_atoms, d]. Neither needs unit norm:
every metric works on cosines, so it is invariant to rescaling rows of either and to
permuting them. A zero row has cosine 0 with everything.
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
    """
    C = cosine_matrix(G, A)
    return float((C if signed else np.abs(C)).max(axis=1).mean())


def per_feature_max_cosine(G: np.ndarray, A: np.ndarray, signed: bool = True) -> np.ndarray:
    """[n_true]: the best cosine each true direction gets from any atom."""
    C = cosine_matrix(G, A)
    return (C if signed else np.abs(C)).max(axis=1)


def hungarian_match(G: np.ndarray, A: np.ndarray, signed: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of true directions to atoms maximising the summed cosine
    (scipy's linear_sum_assignment). Returns (true_index, atom_index, cosine) of the
    min(n_true, n_atoms) matched pairs. Unlike MMCS, one atom cannot serve two features.
    """
    from scipy.optimize import linear_sum_assignment

    C = cosine_matrix(G, A)
    score = C if signed else np.abs(C)
    rows, cols = linear_sum_assignment(score, maximize=True)
    return rows, cols, score[rows, cols]
