"""Inertia for the OMP-coded dictionaries' fit: each update's atoms carry on along the step
the atoms took the iteration before.

Alternating sparse coding and a least-squares atom update (MOD, k-SVD) crawls along the
directions the data barely fix. On a hierarchy whose parent never fires without a child, the
atoms p + v and c_j - v code every row almost as well as p and c_j. Only the independent
jitter of parent and child magnitudes tells them apart, so every iteration moves the atoms
only a little of the way back to p and c_j. A heavy-ball step after each exact update (cf.
the inertial alternating minimisation of iPALM, Pock & Sabach 2016) follows such a valley
faster: D' = D_update + beta (D_t - D_{t-1}), where D_t are the atoms the update started from.
"""
from __future__ import annotations

import torch

from unsuperpose.sae.base import unit_norm_rows


def extrapolate_atoms(updated: torch.Tensor, start: torch.Tensor, previous: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Unit rows [n_atoms, d]: updated + beta u (start - s previous), renormalised.

    updated: the atoms the update returned; start: the atoms it started from; previous: the
    atoms the update before started from, row for row (a replaced atom's row holds its new
    direction, so it carries nothing on). Signs are not steps: s = sign(start . previous)
    per row (an atom flipped between the two, by orientation) and u = sign(updated . start)
    (an update that returned an atom's negative, as nonnegative k-SVD may). All
    [n_atoms, d], unit rows, beta in [0, 1). No row can vanish or turn around: with the
    signs aligned, out . updated = 1 + beta (|updated . start| - u s updated . previous)
    >= 1 - beta > 0."""
    def sign(a, b):                                                 # [n_atoms, 1]
        return torch.where((a * b).sum(1, keepdim=True) < 0, -1.0, 1.0).to(a.dtype)

    step = sign(updated, start) * (start - sign(start, previous) * previous)  # [n_atoms, d]
    return unit_norm_rows(updated + beta * step)
