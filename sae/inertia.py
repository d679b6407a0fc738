"""Inertia for the OMP-coded dictionaries' fit: each update's atoms carry on along the step
the atoms took the iteration before.

Alternating sparse coding and a least-squares atom update (MOD, k-SVD) crawls along the
directions the data barely fix. On a hierarchy whose parent never fires without a child, the
atoms p + v and c_j - v code every row almost as well as p and c_j. Only the independent
jitter of parent and child magnitudes tells them apart, so every iteration moves the atoms
only a little of the way back to p and c_j. The heavy-ball step of inertial alternating
minimisation (iPALM, Pock & Sabach 2016) follows such a valley faster: D' = D_update +
beta (D_t - D_{t-1}), where D_t are the atoms the update started from.
"""
from __future__ import annotations

import torch

from sae.base import unit_norm_rows


def extrapolate_atoms(updated: torch.Tensor, start: torch.Tensor, previous: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Unit rows [n_atoms, d]: updated + beta (start - s previous), renormalised.

    updated: the atoms the update returned; start: the atoms it started from; previous: the
    atoms the update before started from, row for row (a replaced atom's row holds its new
    direction, so it carries nothing on). s = sign(start . previous) per row: a sign flip of
    an atom between the two (orientation) is not a step. All [n_atoms, d], unit rows. A row
    whose sum is 0 keeps `updated`'s direction."""
    sign = torch.where((start * previous).sum(1, keepdim=True) < 0, -1.0, 1.0).to(start.dtype)
    step = start - sign * previous                                  # [n_atoms, d]
    out = updated + beta * step                                     # [n_atoms, d]
    zero = out.norm(dim=1) <= 1e-12
    out[zero] = updated[zero]
    return unit_norm_rows(out)
