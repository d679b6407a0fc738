"""The schedule of a k-SVD/MOD fit (sae/sparse_coding.py), as pure functions of the
iteration number and the config: how many rows an iteration codes (`start_rows`), how many
atoms a row may take while fitting (`fit_k_ratio`), and when the spare atoms are pruned and
replacements stop (`schedule`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

SWAP_GRACE_ITERATIONS = 3  # iterations a new atom has to gather samples before a swap


def min_iterations_to_prune() -> int:
    """The fewest n_iter that leave iterations after the pruning of spare atoms."""
    return SWAP_GRACE_ITERATIONS + 2


DEFAULT_OVERCOMPLETE = 0.25  # overcomplete=None: a quarter more atoms, when there is time


def n_spare_atoms(overcomplete: float | None, n_components: int, n_iter: int) -> int:
    """Atoms fitted beyond n_components until the pruning. overcomplete None:
    DEFAULT_OVERCOMPLETE when n_iter leaves iterations after the pruning, else none (a short
    fit asked for, n_iter=3 for a quick look, then fits without spares rather than failing)."""
    if overcomplete is None:
        overcomplete = DEFAULT_OVERCOMPLETE if n_iter >= min_iterations_to_prune() else 0.0
    return round(overcomplete * n_components)


def fit_sparsity(k: int, ratio: float, d: int, n_atoms: int, cap: float | None = None) -> int:
    """Atoms per sample while fitting: ceil(ratio * k), capped at floor(cap * d) or, with cap
    None, at d / (2 ln n_atoms) (the sparsity up to which OMP recovers supports on random
    atoms); never below k nor above n_atoms."""
    most = (math.floor(d / (2 * math.log(max(n_atoms, 2)))) if cap is None
            else math.floor(cap * d))
    return max(k, min(math.ceil(ratio * k), most, n_atoms))


def rows_in_iteration(iteration: int, n_samples: int, start_rows: int | None) -> int:
    """Rows coded in 1-based `iteration`: start_rows doubled each iteration, at most all."""
    if start_rows is None:
        return n_samples
    return min(n_samples, start_rows << min(iteration - 1, 62))


@dataclass(frozen=True)
class Phase:
    """What one iteration of the fit does besides coding and updating."""

    prune: bool
    """drop the spare atoms (the cheapest by `removal_cost`) before coding"""
    settling: bool
    """no swaps and no purification: an atom swapped in now would not be updated enough
    before the end of the fit, or before the pruning judges it"""


def prune_iteration(n_iter: int) -> int:
    """The last iteration with the spare atoms: pruning leaves the last quarter of n_iter
    (at least SWAP_GRACE_ITERATIONS + 1 iterations) to the atoms kept."""
    return n_iter - max(SWAP_GRACE_ITERATIONS + 1, n_iter // 4)


def schedule(iteration: int, n_iter: int, n_spare: int) -> Phase:
    """The phase of 1-based `iteration` of `n_iter`, with `n_spare` atoms to prune."""
    last_spare = prune_iteration(n_iter)
    before_pruning = bool(n_spare) and last_spare - SWAP_GRACE_ITERATIONS < iteration <= last_spare
    return Phase(prune=bool(n_spare) and iteration == last_spare + 1,
                 settling=iteration > n_iter - SWAP_GRACE_ITERATIONS or before_pruning)
