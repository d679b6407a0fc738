"""Batched nonnegative least squares in Gram form (Lawson-Hanson), warm-started: the
coefficient solve of nonnegative OMP (`sae.omp`) and the cone distances of
`sae.atom_maintenance.distance_to_neighbours`."""
from __future__ import annotations

import torch


def nnls_gram(Gss: torch.Tensor, b: torch.Tensor, c: torch.Tensor, passive: torch.Tensor,
              floor: torch.Tensor, todo: torch.Tensor,
              max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lawson-Hanson: min_{c >= 0} c^T Gss c - 2 b^T c for every row, warm-started.

    Gss [A, m, m] symmetric positive definite; b [A, m]; c [A, m] a feasible start (>= 0,
    zero outside `passive`); passive [A, m] bool, the slots allowed to be positive (a newly
    added slot starts passive at value 0); floor [A]: a gradient must exceed it to re-enter;
    todo [T] int64: the rows to solve (the others are returned as given). Rows that have
    converged leave the working batch. Returns (c, passive).
    """
    c, passive = c.clone(), passive.clone()
    eye = torch.eye(c.shape[1], dtype=c.dtype, device=c.device)
    for _ in range(max_iter):
        if todo.numel() == 0:
            break
        G_t, b_t, c_t, p_t = Gss[todo], b[todo], c[todo], passive[todo]
        T = todo.numel()
        # least squares on the passive set: the system is G_PP there, identity elsewhere
        pp = p_t.unsqueeze(2) & p_t.unsqueeze(1)
        s = torch.linalg.solve(torch.where(pp, G_t, eye), (b_t * p_t).unsqueeze(2)).squeeze(2)
        s = s * p_t                                                # [T, m]
        blocked = p_t & (s <= 0)
        feasible = ~blocked.any(1)
        # infeasible rows: walk from c towards s until the first coefficient reaches zero
        ratio = torch.where(blocked, c_t / (c_t - s).clamp_min(torch.finfo(c.dtype).tiny),
                            torch.inf)
        t, j_block = ratio.min(1)                                  # [T]
        t = torch.where(feasible, 1.0, t.clamp(0.0, 1.0))
        new_c = c_t + t.unsqueeze(1) * (s - c_t)
        new_p = p_t & (new_c > 0)
        new_p[torch.arange(T, device=c.device), j_block] &= feasible
        new_c = new_c * new_p
        # feasible rows are optimal on P; a slot off P with a positive gradient re-enters
        grad = b_t - (G_t @ new_c.unsqueeze(2)).squeeze(2)
        gmax, j_enter = torch.where(new_p, -torch.inf, grad).max(1)
        enter = feasible & (gmax > floor[todo])
        new_p[torch.arange(T, device=c.device)[enter], j_enter[enter]] = True
        c[todo], passive[todo] = new_c, new_p
        todo = todo[~feasible | enter]
    return c, passive
