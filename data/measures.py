"""Measures that every stage reports the same way, as pure functions of numpy arrays or
torch tensors (so the training logs of stage 2 and the scores of stage 3 agree)."""
from __future__ import annotations

# rows summed at a time in float64: small enough that the temporaries stay in cache, where
# casting a whole [100k, 256] tensor to float64 costs more than the OMP iteration it logs
_CHUNK_ROWS = 4096


def _float64(x):
    """x (numpy array or torch tensor) in float64, of the same kind."""
    return x.double() if hasattr(x, "double") else x.astype("float64")


def _float64_blocks(A):
    """(start, block) over A [rows, d] (numpy or torch), each block of _CHUNK_ROWS rows in
    float64."""
    if not hasattr(A, "double"):
        import numpy as np
        A = np.asarray(A)
    for start in range(0, len(A), _CHUNK_ROWS):
        yield start, _float64(A[start:start + _CHUNK_ROWS])


def sum_squares(R, minus=None) -> float:
    """sum_{rows, cols} (R - minus)^2 in float64, in row chunks.

    R: [rows, d], a numpy array or torch tensor; minus: None, a centre [d], or rows
    [rows, d] of the same kind as R. Range [0, inf).
    """
    rowwise = minus is not None and minus.ndim == 2
    centre = None if minus is None or rowwise else _float64(minus)  # [d]
    total = 0.0
    for start, block in _float64_blocks(R):
        if rowwise:
            block = block - _float64(minus[start:start + _CHUNK_ROWS])
        elif centre is not None:
            block = block - centre
        total += float((block * block).sum())
    return total


def column_mean(H):
    """[d] float64 mean of the rows of H [rows, d] (numpy or torch), in row chunks."""
    total = 0.0
    for _, block in _float64_blocks(H):
        total = total + block.sum(0)
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
    if not hasattr(H, "double"):
        import numpy as np
        H, H_hat = np.asarray(H), np.asarray(H_hat)
    residual = sum_squares(H, H_hat)
    return fvu_of_residual(residual, sum_squares(H, column_mean(H)))
