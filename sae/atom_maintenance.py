"""Atom maintenance for the OMP-coded dictionaries (k-SVD, MOD): pure functions of tensors
that the fit loop (sae/sparse_coding.py) calls between its updates.

Atoms D are unit-norm rows [n_atoms, d]; sparse codes are (idx, val) [n_samples, k] as OMP
returns them (index -1 / value 0 = an empty slot); R = H - C D are the residuals. Here:
initial atoms; usage, energy and orientation; near-copies; what dropping an atom would cost
(`removal_cost`) and pruning by it; replacing atoms by the directions the dictionary misses
most (`replace_atoms`, seeded by principal directions or by `cluster_directions`); and
turning an atom that mixes rare features into one of them (`purify_atoms`).
"""
from __future__ import annotations

import torch

from unsuperpose.sae.base import unit_norm_rows
from unsuperpose.sae.nnls import nnls_gram

INITS = ("data", "random")
REMOVAL_SPAN = 4  # atoms that may stand in for a removed one (`removal_cost`)


def init_atoms(X: torch.Tensor, n_components: int, init: str,
               gen: torch.Generator) -> torch.Tensor:
    """Initial unit-norm atoms [n_components, d] from X [n_samples, d]."""
    n_samples, d = X.shape
    A = torch.randn(n_components, d, generator=gen, device=X.device, dtype=X.dtype)
    if init == "data":
        pick = torch.randperm(n_samples, generator=gen, device=X.device)[:n_components]
        rows = X[pick]                                             # [min(n, n_components), d]
        # zero samples carry no direction; those atoms stay Gaussian
        ok = rows.norm(dim=1) > 0
        A[:len(pick)] = torch.where(ok.unsqueeze(1), rows, A[:len(pick)])
    elif init != "random":
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return unit_norm_rows(A)


def atom_usage(idx: torch.Tensor, val: torch.Tensor, n_components: int) -> torch.Tensor:
    """[n_components] int64: how many samples use each atom with a nonzero coefficient."""
    return torch.bincount(idx[val != 0], minlength=n_components)


def duplicate_atoms(D: torch.Tensor, usage: torch.Tensor, max_coherence: float,
                    signed: bool) -> torch.Tensor:
    """[n_components] bool: atoms with cos > max_coherence to a more-used atom.

    Of a group of near-copies only the most-used atom (lowest index on ties) is kept.
    signed: compare |cos|, since with signed codes d and -d are the same atom; with
    nonnegative codes they are two (an antipodal pair), so only cos counts.
    """
    coh = D @ D.T                                                  # [M, M]
    if signed:
        coh = coh.abs()
    coh.fill_diagonal_(0)
    order = torch.arange(D.shape[0], device=D.device)
    ranks_above = (usage.unsqueeze(0) > usage.unsqueeze(1)) | (
        (usage.unsqueeze(0) == usage.unsqueeze(1)) & (order.unsqueeze(0) < order.unsqueeze(1)))
    # [j, i]: atom i outranks atom j
    return ((coh > max_coherence) & ranks_above).any(1)


def orient_atoms(D: torch.Tensor, idx: torch.Tensor,
                 val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip atoms (and their codes) whose codes sum to < 0; C D is unchanged.

    (d, c) and (-d, -c) fit equally well; pointing each atom the way it is mostly used makes
    atoms comparable with signed cosines (and is a no-op for nonnegative codes).
    """
    sums = D.new_zeros(D.shape[0]).index_add_(0, idx.clamp_min(0).flatten(), val.flatten())
    sign = torch.where(sums < 0, -1.0, 1.0).to(D.dtype)            # [n_components]
    return D * sign.unsqueeze(1), val * sign[idx.clamp_min(0)]


def atom_energy(idx: torch.Tensor, val: torch.Tensor, n_components: int) -> torch.Tensor:
    """[n_components]: sum over samples of each atom's squared coefficient."""
    return val.new_zeros(n_components).index_add_(0, idx.clamp_min(0).flatten(),
                                                  val.pow(2).flatten())


def removal_cost(D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, *,
                 signed: bool, span: int = REMOVAL_SPAN) -> torch.Tensor:
    """[n_components]: about how much ||H - C D||^2 grows if an atom is dropped.

    Its samples would re-code its part c_j d_j on the other atoms; if the `span` atoms most
    similar to d_j can combine into a + ... ~ d_j, what is lost is the atom's energy
    sum_i c_ij^2 times the squared distance from d_j to their span (their cone, with
    nonnegative codes). So an atom that matters alone costs its energy; one of two
    near-copies, or an atom that is a mixture of features other atoms already hold (what a
    fit settles into when a tail of rare features is still missing), costs almost nothing.
    span=1 is the distance to the single most similar atom, 1 - cos^2.
    """
    return atom_energy(idx, val, D.shape[0]) * distance_to_neighbours(D, span, signed=signed)


def prune_atoms(D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, n_keep: int, *,
                signed: bool) -> torch.Tensor:
    """Indices of the n_keep atoms of D [n_atoms, d] to keep: the cheapest by `removal_cost`
    is dropped one at a time, costs recomputed in between, so of two near-copies only one
    goes and an atom that a dropped one could have stood in for is judged without it."""
    energy = atom_energy(idx, val, D.shape[0])
    keep = torch.arange(D.shape[0], device=D.device)
    while len(keep) > n_keep:
        cost = energy[keep] * distance_to_neighbours(D[keep], REMOVAL_SPAN, signed=signed)
        keep = torch.cat([keep[:int(cost.argmin())], keep[int(cost.argmin()) + 1:]])
    return keep


def distance_to_neighbours(D: torch.Tensor, span: int, *, signed: bool) -> torch.Tensor:
    """[n_components] in [0, 1]: min ||d_j - sum_s a_s d_s||^2 over the `span` unit atoms
    d_s most similar to d_j (|cos| when signed; cos, and a >= 0, when not)."""
    M = D.shape[0]
    span = min(span, M - 1)
    if span < 1:
        return D.new_ones(M)
    score = D @ D.T                                                # [M, M]
    score = score.abs() if signed else score
    score.fill_diagonal_(-torch.inf)  # an atom never stands in for itself, even on ties
    near = score.topk(span, dim=1).indices                         # [M, span]
    N = D[near]                                                    # [M, span, d]
    gram = N @ N.transpose(1, 2)                                   # [M, span, span]
    b = (N @ D.unsqueeze(2)).squeeze(2)                            # [M, span]
    # near-parallel neighbours make gram singular; a tiny ridge keeps the solve defined
    gram = gram + 1e-6 * torch.eye(span, dtype=D.dtype, device=D.device)
    if signed:
        coef = torch.linalg.solve(gram, b.unsqueeze(2)).squeeze(2)
    else:
        coef, _ = nnls_gram(gram, b, torch.zeros_like(b), torch.zeros_like(b, dtype=torch.bool),
                             D.new_full((M,), 1e-9), torch.arange(M, device=D.device),
                             max_iter=4 * span)
    # ||d - N^T a||^2 = 1 - 2 a.b + a^T gram a, for unit d
    dist = 1 - 2 * (coef * b).sum(1) + (coef * (gram @ coef.unsqueeze(2)).squeeze(2)).sum(1)
    return dist.clamp(0.0, 1.0)


def replace_atoms(D: torch.Tensor, forced: torch.Tensor, cost: torch.Tensor, R: torch.Tensor,
                  gen: torch.Generator, *, n_swaps: int = 0,
                  nonnegative: bool = False, gain_factor: float = 2.0,
                  reseed: str = "pca") -> tuple[torch.Tensor, torch.Tensor]:
    """New directions for some atoms of D [n_components, d]; returns (D, which are new).

    forced [n_components] bool: atoms replaced in any case (unused, near-copies).
    cost [n_components]: what dropping each atom would lose (`removal_cost`; inf: keep it).
    After the forced ones, up to n_swaps of the cheapest other atoms are swapped, each only
    if its new direction would carry more than gain_factor times its cost: this frees atoms stuck in a
    local minimum (half of a split feature, an atom on a few samples), while an atom that
    matters is worth more than any leftover direction.

    The new directions are the principal directions of the residuals R [n_samples, d] of
    the worst-represented samples, strongest first: what the dictionary misses most, where
    the residual of any single sample would mix a missing feature with that sample's
    coding errors. A direction "carries" sum_i (r_i . a)^2 over those samples (only the
    positive parts with nonnegative codes, for which the sign is chosen to maximise it).
    reseed='cluster' (`cluster_directions`) takes one direction per group of those residuals
    instead: with many missing features (a rare tail) a principal direction mixes them.
    """
    forced_slots = forced.nonzero().squeeze(1).tolist()
    cost = cost.masked_fill(forced, torch.inf)
    cheapest = cost.argsort()[:n_swaps]
    swap_slots = cheapest[torch.isfinite(cost[cheapest])].tolist()
    new = torch.zeros_like(forced)
    if not forced_slots and not swap_slots:
        return D, new
    D = D.clone()
    norms2 = R.pow(2).sum(1)                                       # [n_samples]
    n_new = len(forced_slots) + len(swap_slots)
    if reseed == "cluster":
        directions, gain = cluster_directions(R, n_new, nonnegative=nonnegative)
    else:
        n_pool = min(R.shape[0], max(8 * n_new, 1024))
        pool = R[norms2.topk(n_pool).indices]                      # [n_pool, d]
        directions = torch.linalg.eigh(pool.T @ pool).eigenvectors.flip(1).T  # [d, d] strongest first
        proj = pool @ directions.T                                 # [n_pool, d]
        if nonnegative:
            flip = proj.clamp_min(0).norm(dim=0) < (-proj).clamp_min(0).norm(dim=0)   # [d]
            directions[flip], proj[:, flip] = -directions[flip], -proj[:, flip]
            proj = proj.clamp_min(0)
        gain = proj.pow(2).sum(0)                                  # [d]
    floor = 1e-12 * float(norms2.max())
    for n_done, slot in enumerate(forced_slots + swap_slots):
        if n_done >= len(directions) or gain[n_done] <= floor:
            # nothing left unexplained: fill the remaining forced slots at random
            rest = forced_slots[n_done:]
            D[rest] = unit_norm_rows(torch.randn(len(rest), D.shape[1], generator=gen,
                                                 device=D.device, dtype=D.dtype))
            new[rest] = True
            break
        if n_done >= len(forced_slots) and gain[n_done] <= gain_factor * cost[slot]:
            break  # swap slots come cheapest first: no later one would pass either
        D[slot] = directions[n_done]
        new[slot] = True
    return D, new


def purify_atoms(D: torch.Tensor, R: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, *,
                 eligible: torch.Tensor, nonnegative: bool, agree: float = 0.95,
                 max_groups: int = 3) -> torch.Tensor:
    """[n_components, d]: for each eligible atom used by samples pointing several ways, the
    direction of the strongest group of its samples' local signals (its part c_ij d_j plus
    their residuals r_i); nan rows for the atoms left as they are.

    Only atoms used by at most the median number of samples are looked at: the mixtures
    that hold a fit back serve a few rare features; a frequent atom is not one.
    """
    out = torch.full_like(D, torch.nan)
    used = val != 0
    rows, slots = used.nonzero(as_tuple=True)
    atom = idx[rows, slots]
    usage = torch.bincount(atom, minlength=D.shape[0])
    look = eligible & (usage >= 2) & (usage <= usage[usage > 0].median())
    order = torch.argsort(atom)
    rows, slots, atom = rows[order], slots[order], atom[order]
    start = torch.cumsum(usage, 0) - usage
    for j in look.nonzero().squeeze(1).tolist():
        take = slice(int(start[j]), int(start[j] + usage[j]))
        r, s = rows[take], slots[take]
        S = R[r] + val[r, s].unsqueeze(1) * D[j]                   # [m, d] local signals
        directions, gains = cluster_directions(S, max_groups, nonnegative=nonnegative,
                                               n_pool=len(S))
        if len(directions) < 2:
            continue
        a = directions[int(gains.argmax())]
        if float(a @ D[j]) < agree:
            out[j] = a
    return out


def cluster_directions(R: torch.Tensor, n_directions: int, *, nonnegative: bool = False,
                       min_cos: float = 0.5, n_pool: int = 4096
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n_directions unit directions [n, d] and their gains [n] from residuals R.

    Among the n_pool largest residuals, repeatedly take the largest one left, group it with
    every residual within min_cos of it (cos, or |cos| for signed codes), and return the
    group's top principal direction (pointing the seed's way); the gain is sum (r . a)^2 over
    the group (positive parts only with nonnegative codes). The group then leaves the pool,
    so the next direction follows another missing feature.
    """
    norms2 = R.pow(2).sum(1)                                       # [n_samples]
    top = norms2.topk(min(R.shape[0], max(n_pool, 8 * n_directions)))
    pool = R[top.indices]                                          # [n_pool, d]
    unit = pool / pool.norm(dim=1, keepdim=True).clamp_min(1e-30)
    alive = top.values > 1e-12 * float(norms2.max())               # [n_pool]
    directions, gains = [], []
    for _ in range(n_directions):
        if not alive.any():
            break
        seed = int(torch.where(alive, top.values, -1.0).argmax())
        cos = unit @ unit[seed]                                    # [n_pool]
        member = alive & ((cos > min_cos) if nonnegative else (cos.abs() > min_cos))
        E = pool[member]                                           # [m, d]
        a = top_principal_direction(E, start=pool[seed])
        proj = E @ a
        gains.append((proj.clamp_min(0) if nonnegative else proj).pow(2).sum())
        directions.append(a)
        alive &= ~member
    if not directions:
        return R.new_zeros(0, R.shape[1]), R.new_zeros(0)
    return torch.stack(directions), torch.stack(gains)


def top_principal_direction(E: torch.Tensor, start: torch.Tensor, max_iter: int = 100,
                            atol: float = 1e-6) -> torch.Tensor:
    """The unit top eigenvector [d] of E^T E for rows E [m, d], pointing the way of `start`.

    Power iteration from the group's mean, oriented like `start` [d]: a group of residuals
    within min_cos of one seed has one dominant direction, which a few products with E find
    (2-5 here, where eigh of the [d, d] matrix cost 20x more and ran once per group, up to a
    thousand times per iteration in `purify_atoms`). Stops when no coordinate moves by more
    than atol, or after max_iter products (near-equal top eigenvalues: any of their
    directions serves).
    """
    a = E.sum(0)
    if float(a.norm()) == 0.0:
        a = start.clone()
    a = a / a.norm().clamp_min(1e-30)
    for _ in range(max_iter):
        b = E.T @ (E @ a)                                          # [d]
        norm = b.norm()
        if float(norm) == 0.0:
            break
        b = b / norm
        done = float((b - a).abs().max()) <= atol
        a = b
        if done:
            break
    return -a if float(a @ start) < 0 else a
