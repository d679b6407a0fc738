"""Measures that every stage reports the same way, as pure functions of numpy arrays or
torch tensors (so the training logs of stage 2 and the scores of stage 3 agree)."""
from __future__ import annotations


def fvu(H, H_hat) -> float:
    """Fraction of variance unexplained: sum ||h - h^||^2 / sum ||h - mean(h)||^2.

    H, H_hat: [rows, d], numpy arrays or torch tensors (summed in float64). Range [0, inf): 0
    for a perfect reconstruction, 1 for predicting the mean row. Invariant to permuting rows
    and to a common rescaling of H and H_hat. NaN with no row; with zero variance, 0 if the
    reconstruction is exact, else inf.
    """
    if len(H) == 0:
        return float("nan")
    if hasattr(H, "double"):  # torch
        H, H_hat = H.double(), H_hat.double()
    else:
        import numpy as np
        H, H_hat = np.asarray(H, dtype=np.float64), np.asarray(H_hat, dtype=np.float64)
    residual = float(((H - H_hat) ** 2).sum())
    variance = float(((H - H.mean(0)) ** 2).sum())
    if variance < 1e-12:
        return 0.0 if residual < 1e-12 else float("inf")
    return residual / variance
