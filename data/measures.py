"""Measures that every stage reports the same way, as pure functions of numpy arrays or
torch tensors (so the training logs of stage 2 and the scores of stage 3 agree)."""
from __future__ import annotations

# rows summed at a time in float64: small enough that the temporaries stay in cache, where
# casting a whole [100k, 256] tensor to float64 costs more than the OMP iteration it logs
_CHUNK_ROWS = 4096


def sum_squares(R, centre=None) -> float:
    """sum_{rows, cols} (R - centre)^2 in float64, in row chunks.

    R: [rows, d], a numpy array or torch tensor; centre: [d] or None. Range [0, inf).
    """
    torch_like = hasattr(R, "double")
    if not torch_like:
        import numpy as np
        R = np.asarray(R)
    if centre is not None:
        centre = centre.double() if torch_like else centre.astype("float64")
    total = 0.0
    for start in range(0, len(R), _CHUNK_ROWS):
        block = R[start:start + _CHUNK_ROWS]
        block = block.double() if torch_like else block.astype("float64")
        if centre is not None:
            block = block - centre
        total += float((block * block).sum())
    return total


def column_mean(H):
    """[d] float64 mean of the rows of H [rows, d] (numpy or torch), in row chunks."""
    if hasattr(H, "double"):
        total = H.new_zeros(H.shape[1], dtype=H.new_zeros(0).double().dtype)
        for start in range(0, len(H), _CHUNK_ROWS):
            total += H[start:start + _CHUNK_ROWS].double().sum(0)
    else:
        import numpy as np
        H = np.asarray(H)
        total = np.zeros(H.shape[1])
        for start in range(0, len(H), _CHUNK_ROWS):
            total += H[start:start + _CHUNK_ROWS].astype(np.float64).sum(0)
    return total / len(H)


def fvu_of_residual(residual_sum_squares: float, variance_sum_squares: float) -> float:
    """sum ||h - h^||^2 / sum ||h - mean(h)||^2 from the two sums; 0 when the variance is
    zero and the reconstruction exact, inf when only the variance is zero."""
    if variance_sum_squares < 1e-12:
        return 0.0 if residual_sum_squares < 1e-12 else float("inf")
    return residual_sum_squares / variance_sum_squares


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
        residual = 0.0
        for start in range(0, len(H), _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            residual += sum_squares(H[sl].double() - H_hat[sl].double())
    else:
        import numpy as np
        H, H_hat = np.asarray(H), np.asarray(H_hat)
        residual = 0.0
        for start in range(0, len(H), _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            residual += sum_squares(H[sl].astype(np.float64) - H_hat[sl].astype(np.float64))
    return fvu_of_residual(residual, sum_squares(H, column_mean(H)))
