"""Keeping atoms apart: a bound on the cosine between any two atoms of a dictionary.

On hierarchical worlds a child fires only with its parent, so an atom that holds parent and
child together (absorption) reconstructs their rows with one atom where the true dictionary
needs two, and sparse coding at a budget prefers it: on the interference rung, MOD's atom of a
level-1 feature holds 0.46 of its root's direction beside 0.43 of its own, and the root's atom
turns into a correction (-p) for the surplus. The true directions of these worlds are far
more incoherent than that (largest |cos| 0.16 on the interference rung, 0.51 on
synthsaebench-small). After each dictionary update, `decohere_atoms` moves the less used atom
of every pair above the bound to the bound, in the plane of the two, keeping the more used
one: INK-SVD's decorrelation step (Mailhe, Barchiesi & Plumbley 2012), one-sided, so that the
atom the data supports most stays where the update put it. The next coding pass then codes
parent and child with an atom each.
"""
from __future__ import annotations

import math

import torch

MAX_PASSES = 20
"""rounds of pair moves per call: a move can push an atom above the bound with a third one"""


def random_coherence(n_atoms: int, d: int) -> float:
    """sqrt(2 ln n_atoms / d): about the largest |cos| one random unit direction in d
    dimensions has with n_atoms others (0.31 for 2560 atoms in d = 160, 0.40 in d = 96);
    capped at 1."""
    return min(1.0, math.sqrt(2 * math.log(max(n_atoms, 2)) / d))


def decohere_atoms(D: torch.Tensor, usage: torch.Tensor, max_cos: float, *,
                   leave_above: float = 1.0,
                   passes: int = MAX_PASSES) -> tuple[torch.Tensor, int]:
    """D [n_atoms, d] unit rows, usage [n_atoms] (how much each atom is used; ties keep the
    lower index) -> (D' [n_atoms, d] unit rows, number of atom moves).

    Each pass pairs every atom above the bound with its most coherent partner (greedily,
    most coherent first, each atom in one pair), and replaces the less used atom b of a pair
    by s max_cos a + sqrt(1 - max_cos^2) o, o the unit part of b orthogonal to the kept atom
    a and s the sign of a.b: its cosine with a becomes exactly s max_cos, and it stays in
    the plane of a and b. |cos| counts for nonnegative codes too: there an atom near -a is
    how a fit corrects atoms that absorbed a (the root's atom above). Stops after `passes`
    passes or when no pair is above the bound; a pair that is exactly parallel is left
    alone (no plane to move in), and so is a pair above `leave_above` (a duplicate, which
    the fit replaces by a new direction instead: moved, it would survive as a mixture)."""
    if not 0 < max_cos < 1:
        raise ValueError(f"max_cos must be in (0, 1), got {max_cos}")
    out = D.double().clone()                                        # [n_atoms, d]
    uses = usage.tolist()
    n_atoms, moves = out.shape[0], 0
    for _ in range(passes):
        cos = out @ out.T                                           # [n_atoms, n_atoms]
        cos.fill_diagonal_(0)
        cos = cos.abs()
        cos = cos.masked_fill(cos > leave_above, 0)
        best, partner = (t.cpu() for t in cos.max(dim=1))          # [n_atoms] each
        over = best > max_cos * (1 + 1e-9)
        if not bool(over.any()):
            break
        # the greedy pairing is a short Python loop over the atoms above the bound, on the CPU
        order = torch.argsort(best, descending=True, stable=True)
        taken = [False] * n_atoms
        keep, move = [], []
        for i in order[over[order]].tolist():
            j = int(partner[i])
            if taken[i] or taken[j]:
                continue
            taken[i] = taken[j] = True
            more_used_i = uses[i] > uses[j] or (uses[i] == uses[j] and i < j)
            keep.append(i if more_used_i else j)
            move.append(j if more_used_i else i)
        a, b = out[keep], out[move]                                 # [pairs, d] each
        c = (a * b).sum(dim=1, keepdim=True)                        # [pairs, 1]
        ortho = b - c * a                                           # [pairs, d]
        norms = ortho.norm(dim=1, keepdim=True)
        ok = (norms > 1e-12).squeeze(1)
        s = torch.where(c >= 0, 1.0, -1.0).to(out.dtype)
        moved = s * max_cos * a + math.sqrt(1 - max_cos ** 2) * ortho / norms.clamp_min(1e-300)
        out[torch.tensor(move, device=out.device)[ok]] = moved[ok]
        moves += int(ok.sum())
        if not bool(ok.any()):
            break
    return out.to(D.dtype), moves
