"""Prefix coding for k-SVD and MOD (`prefix_fractions` / `prefix_ks`): OMP in passes, each
over the leading atoms of a dictionary kept sorted by usage, on the residual of the passes
before it. On hierarchical worlds a parent fires with each of its children, and one pass at
a fixed k favours an atom that holds parent + child; coding the frequent atoms first leaves
the child alone in the residual."""
from __future__ import annotations

import torch

from unsuperpose.sae.omp import omp_encode, sparse_reconstruct


def prefix_omp(X: torch.Tensor, D: torch.Tensor, k: int, tol: float | None,
               fractions: tuple[float, ...], ks: tuple[int, ...], nonnegative: bool,
               chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP codes (idx, val) [n, k] of X [n, d] on the atoms D [n_atoms, d] in passes: pass i
    codes up to ks[i] atoms among D's leading round(fractions[i] * n_atoms) rows (at least
    1) on the residual of the passes before; a last pass over all atoms takes the rest of k.
    No fractions: one OMP pass at k. An atom an earlier pass left at 0 and a later one picks
    keeps one slot (the later value added to it), so no row lists an atom twice."""
    passes = [(max(1, round(f * D.shape[0])), n) for f, n in zip(fractions, ks)]
    passes.append((D.shape[0], k - sum(ks)))
    idx, val, R = [], [], X
    for n, (width, n_atoms) in enumerate(passes):
        i, v = omp_encode(R, D[:width], min(n_atoms, width), tol=tol,
                          nonnegative=nonnegative, chunk_size=chunk_size)
        if idx:
            i, v = _merge_repeats(idx, val, i, v)
        idx.append(i)
        val.append(v)
        if n + 1 < len(passes):
            R = X - sparse_reconstruct(torch.cat(idx, 1), torch.cat(val, 1), D)
    return torch.cat(idx, 1), torch.cat(val, 1)


def _merge_repeats(idx: list[torch.Tensor], val: list[torch.Tensor], i: torch.Tensor,
                   v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds the values of atoms in (i, v) [n, m] that the earlier passes' slots (idx, val,
    lists of [n, m_j], updated in place) already hold to those slots; returns (i, v) with
    those slots emptied, so no row lists an atom twice."""
    for prev_i, prev_v in zip(idx, val):
        same = (i.unsqueeze(2) == prev_i.unsqueeze(1)) & (i >= 0).unsqueeze(2)  # [n, m, m_j]
        prev_v += (same * v.unsqueeze(2)).sum(1)
        again = same.any(2)
        i, v = i.masked_fill(again, -1), v.masked_fill(again, 0.0)
    return i, v
