"""Co-firing anchors: the part of a rare atom that its frequent companions could trade with it.

On hierarchical worlds a child fires only with its parent (and its parent's parent). Given
rows whose supports hold the whole chain, an atom for child + a x parent reconstructs them as
well as the child's own direction does: the parent's code drops by a x the child's, and
nothing in reconstruction or sparsity tells the two apart. So that part of a child's atom is
not fixed by the data, and an atom update moves it wherever the rows with an incomplete
support pull, which is towards absorbing the parent (on synthsaebench-small MOD takes the
leaves' atoms from 0.22 to 0.43 of their ancestors' directions over 20 iterations while it
removes their hedging against their siblings, and their matched |cos| peaks at iteration 7).

An atom's anchors are found from the codes alone: the atoms used in at least `share` of the
rows that use it, at least ANCHOR_LIFT times as often as in rows at large, and used at least
ANCHOR_USAGE_RATIO times as often as it (a parent is, its child is not); at most MAX_ANCHORS
of them. `hold_anchor_parts` then gives each atom back the least-squares coefficients it had
on its anchors' atoms before the update, relative to the rest of it, so that the update moves
only the rest.
"""
from __future__ import annotations

import torch

from unsuperpose.sae.base import unit_norm_rows
from unsuperpose.sae.omp import gram_of_sparse_codes

ANCHOR_LIFT = 2.0
"""an anchor fires with the atom at least this many times as often as in rows at large (a
frequent atom, p = 0.4, fires beside anything in 40% of its rows)"""
ANCHOR_USAGE_RATIO = 2.0
"""an anchor is used at least this many times as often as the atom it anchors"""
MAX_ANCHORS = 4
"""anchors per atom at most (the most co-firing first): a leaf has three ancestors"""
RIDGE = 1e-6
"""keeps the anchors' Gram matrix solvable when two anchors are near-parallel"""


def cofiring_counts(idx: torch.Tensor, val: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """[n_atoms, n_atoms] float64: in how many rows each pair of atoms is used together (a
    nonzero code each); the diagonal is each atom's usage. idx, val: [n_rows, k] sparse
    codes (index -1 / value 0 = an empty slot)."""
    return gram_of_sparse_codes(idx, (val != 0).to(torch.float64), n_atoms)


def find_anchors(counts: torch.Tensor, n_rows: int, share: float, *,
                 lift: float = ANCHOR_LIFT, usage_ratio: float = ANCHOR_USAGE_RATIO,
                 most: int = MAX_ANCHORS) -> tuple[torch.Tensor, torch.Tensor]:
    """counts [M, M] from `cofiring_counts` of n_rows rows -> (anchors [M, most] int64, valid
    [M, most] bool): row j lists the atoms i with counts[i, j] >= share * usage_j, >= lift *
    usage_j * usage_i / n_rows, and usage_i >= usage_ratio * usage_j, most co-firing first;
    `valid` marks the real entries (the rest are padding)."""
    usage = counts.diagonal()                                        # [M]
    cond = counts / usage.clamp_min(1).unsqueeze(0)                  # [i, j]: P(i used | j used)
    base = (usage / max(n_rows, 1)).unsqueeze(1)                     # [i, 1]: P(i used)
    ok = ((cond >= share) & (cond >= lift * base)
          & (usage.unsqueeze(1) >= usage_ratio * usage.unsqueeze(0)) & (usage.unsqueeze(0) > 0))
    ok.fill_diagonal_(False)
    most = min(most, counts.shape[0])
    top = torch.where(ok, cond, -1.0).topk(most, dim=0)              # over i, for each j
    return top.indices.T, (top.values > 0).T                         # [M, most] each


def hold_anchor_parts(D_new: torch.Tensor, D_old: torch.Tensor, anchors: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
    """D_new, D_old [M, d] unit atoms after and before an update -> [M, d] unit atoms: each
    atom j with anchors keeps the rest of D_new_j (its part outside the span of its anchors'
    new atoms), and takes the least-squares coefficients D_old_j had on its anchors' old
    atoms, relative to the norm of its rest then and now: atom j = rest + sum_i a_i anchor_i
    keeps every a_i / ||rest||, so its angle to each anchor's direction within the span is
    the one it had (signs followed: an atom or anchor that the update turned around keeps
    its coefficients in its new orientation). Atoms without anchors are D_new's."""
    new, old = D_new.double(), D_old.double()
    flip = torch.where((new * old).sum(1) < 0, -1.0, 1.0).to(new.dtype)   # [M]
    mask = valid.to(new.dtype).unsqueeze(2)                               # [M, s, 1]
    eye = RIDGE * torch.eye(anchors.shape[1], dtype=new.dtype, device=new.device)

    def coefficients(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S = D[anchors] * mask                                             # [M, s, d]
        gram = S @ S.transpose(1, 2) + eye                                # [M, s, s]
        return torch.linalg.solve(gram, S @ D.unsqueeze(2)).squeeze(2), S  # [M, s]

    held, S_old = coefficients(old)
    now, S_new = coefficients(new)
    rest_old = (old - (held.unsqueeze(2) * S_old).sum(1)).norm(dim=1)      # [M]
    rest_new = new - (now.unsqueeze(2) * S_new).sum(1)                    # [M, d]
    # the anchors' coefficients relative to the rest of the atom, in the new signs
    scale = rest_new.norm(dim=1) / rest_old.clamp_min(1e-12)              # [M]
    held = held * (flip * scale).unsqueeze(1) * flip[anchors]
    out = unit_norm_rows(rest_new + (held.unsqueeze(2) * S_new).sum(1))   # [M, d]
    return torch.where(valid.any(1, keepdim=True), out, new).to(D_new.dtype)
