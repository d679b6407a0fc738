"""What k-SVD and MOD share: the config fields, the fit loop, coding and atom replacement.

Both alternate two steps on H ~ C D (codes C [n_samples, n_components], atoms D as rows):
sparse coding of every sample by batch OMP with the current atoms (`sae.omp`), then a
dictionary update that is the only thing the two methods do differently (`_update`).
After each update, atoms that no sample uses and near-copies of a more-used atom (the
"dictionary clearing" of Rubinstein's K-SVD box), and at most `n_swaps` atoms whose removal
would cost less than what a new direction would gain, are replaced by the directions that
the dictionary explains worst: this is how the fit leaves the local minima where one atom
mixes two features while two others split one. Every atom is then oriented so that its
codes sum to >= 0. With `overcomplete` > 0 the fit starts with spare atoms and prunes the
cheapest away before the end, so a long tail of rare features is learned with room to spare
and the mixtures the spare atoms make redundant are what gets dropped.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from sae.base import (ArrayLike, DictionaryEstimator, as_tensor_2d, check_number,
                      resolve_device, torch_generator, unit_norm_rows)
from sae.omp import omp_encode, sparse_reconstruct, sparse_to_dense

INITS = ("data", "random")
RESEEDS = ("pca", "cluster")
SWAP_GRACE_ITERATIONS = 3  # iterations a new atom has to gather samples before a swap
REMOVAL_SPAN = 4  # atoms that may stand in for a removed one (`removal_cost`)


@dataclass(frozen=True)
class SparseCodingConfig:
    """Fields common to every OMP-coded dictionary method (k-SVD, MOD)."""

    n_components: int
    """number of atoms (rows of components_)"""
    k: int = 3
    """most nonzero coefficients per sample, for OMP during fit and in transform"""
    tol: float | None = None
    """also stop coding a sample once its squared residual norm ||h - c D||^2 <= tol"""
    n_iter: int = 30
    """alternations of sparse coding and dictionary update"""
    nonnegative: bool = False
    """nonnegative codes (nonnegative OMP, sign-consistent updates); atoms stay signed"""
    init: str = "data"
    """initial atoms: 'data' = distinct random samples, normalised; 'random' = Gaussian"""
    batch_size: int | None = None
    """samples per OMP chunk (None: sized to a fixed workspace)"""
    max_coherence: float = 0.99
    """after each update, an atom whose cosine (|cos| for signed codes) with a more-used
    atom exceeds this is replaced"""
    n_swaps: int = 1
    """per iteration, at most this many of the atoms whose removal would cost least are
    swapped for a direction the dictionary misses, if that carries more (0: never)"""
    swap_gain_factor: float = 2.0
    """a swap happens only if the new direction carries more than this times the atom's
    removal cost (0: the n_swaps cheapest atoms are swapped every iteration)"""
    reseed: str = "pca"
    """new directions for replaced atoms: 'pca' = principal directions of the worst residuals;
    'cluster' = one per group of worst residuals that point the same way (|cos| > 0.5),
    strongest sample first, so each seed follows one missing feature rather than a mix"""
    overcomplete: float = 0.0
    """fit with this fraction more atoms at first (0.25: 1.25 x n_components), then drop
    the cheapest (`removal_cost`) down to n_components for the last quarter of n_iter:
    spare atoms let rare features be learned instead of being fought over"""
    purify: bool = False
    """each iteration, an atom whose samples point several ways (its part of them plus their
    residuals fall into groups, `cluster_directions`) and that no group agrees with (cos <
    0.95) takes its strongest group's direction: a mixture of rare features becomes one of
    them, and the rest show up in the residuals for re-seeding"""
    random_state: int | None = 0
    """seed of the one generator used by fit (init, atom order, replacements)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."""

    def __post_init__(self):
        check_number("n_components", self.n_components, low=1, integer=True)
        check_number("k", self.k, low=1, integer=True)
        if self.k > self.n_components:
            raise ValueError(f"k={self.k} nonzeros per sample exceeds "
                             f"n_components={self.n_components}")
        check_number("tol", self.tol, low=0, optional=True)
        check_number("n_iter", self.n_iter, low=1, integer=True)
        if not isinstance(self.nonnegative, bool):
            raise ValueError(f"nonnegative must be True or False, got {self.nonnegative!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        check_number("max_coherence", self.max_coherence, low=0, high=1, low_open=True)
        check_number("n_swaps", self.n_swaps, low=0, integer=True)
        check_number("overcomplete", self.overcomplete, low=0, high=4)
        check_number("swap_gain_factor", self.swap_gain_factor, low=0)
        if self.reseed not in RESEEDS:
            raise ValueError(f"reseed must be one of {RESEEDS}, got {self.reseed!r}")
        check_number("batch_size", self.batch_size, low=1, integer=True, optional=True)
        check_number("random_state", self.random_state, low=0, integer=True, optional=True)
        if not isinstance(self.purify, bool):
            raise ValueError(f"purify must be True or False, got {self.purify!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                 f"got {self.device!r}") from None


Progress = Callable[[dict], None]


class SparseCodingDictionary(DictionaryEstimator):
    """Base of KSVD and MOD. Subclasses set `method`, `config_class` and `_update`.

    Fitted state: `components_` [n_components, d] float32 numpy, unit-norm rows; `log_`, one
    dict per iteration: iteration, fvu (||H - C D||^2 / ||H - mean(H)||^2 with the codes and
    atoms at the end of the iteration, before atoms are replaced), l0 (mean nonzeros per
    sample), n_unused_atoms (atoms no sample used), n_duplicate_atoms (atoms with
    cos > max_coherence to a more-used one), n_swapped_atoms (see `n_swaps`): the atoms
    replaced after this iteration; seconds (wall time of the iteration).
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = SparseCodingConfig

    def fit(self, H: ArrayLike, y=None, progress: Progress | None = None):
        """Fit the atoms to H [n_samples, d]; `progress(log_entry)` after each iteration."""
        cfg = self.get_config()
        device = resolve_device(cfg.device)
        X = as_tensor_2d(H, "H", device=device)                    # [n_samples, d]
        n_samples, d = X.shape
        if cfg.k > d:
            raise ValueError(f"k={cfg.k} nonzeros per sample exceeds d={d}: more than d atoms "
                             f"are linearly dependent, so OMP cannot place them")
        gen = torch_generator(cfg.random_state, device)
        total = (X - X.mean(0)).pow(2).sum()
        n_spare = round(cfg.overcomplete * cfg.n_components)
        prune_after = cfg.n_iter - max(SWAP_GRACE_ITERATIONS + 1, cfg.n_iter // 4)
        if n_spare and prune_after < 1:
            raise ValueError(f"overcomplete={cfg.overcomplete} needs n_iter >= "
                             f"{SWAP_GRACE_ITERATIONS + 2} (got {cfg.n_iter}) to settle after pruning")
        D = init_atoms(X, cfg.n_components + n_spare, cfg.init, gen)  # [n_atoms, d]

        age = torch.full((D.shape[0],), SWAP_GRACE_ITERATIONS, device=device)
        self.log_ = []
        for iteration in range(1, cfg.n_iter + 1):
            t0 = time.perf_counter()
            if n_spare and iteration == prune_after + 1:
                keep = prune_atoms(D, idx, val, cfg.n_components, signed=not cfg.nonnegative)
                D, age = D[keep], age[keep]
            idx, val = self._code(X, D)                            # [n_samples, k] each
            D, val = self._update(X, D, idx, val, gen)
            D, val = orient_atoms(D, idx, val)
            R = X - sparse_reconstruct(idx, val, D)                # [n_samples, d]
            usage = atom_usage(idx, val, D.shape[0])               # [n_atoms]
            unused = usage == 0
            duplicate = duplicate_atoms(D, usage, cfg.max_coherence,
                                        signed=not cfg.nonnegative) & ~unused
            entry = {"iteration": iteration,
                     "fvu": float(R.pow(2).sum() / total) if total > 0 else float("nan"),
                     "l0": float((val != 0).sum(1).float().mean()),
                     "n_unused_atoms": int(unused.sum()),
                     "n_duplicate_atoms": int(duplicate.sum())}
            # a new atom needs a few iterations to gather its samples before it is judged
            cost = removal_cost(D, idx, val, signed=not cfg.nonnegative)
            cost = cost.masked_fill(age < SWAP_GRACE_ITERATIONS, torch.inf)
            forced = unused | duplicate
            # no swaps near the end: an atom swapped in must be updated before it is returned
            settling = iteration > cfg.n_iter - SWAP_GRACE_ITERATIONS or (
                n_spare and prune_after - SWAP_GRACE_ITERATIONS < iteration <= prune_after)
            n_swaps = 0 if settling else cfg.n_swaps
            D, new = replace_atoms(D, forced, cost, R, gen, n_swaps=n_swaps,
                                   nonnegative=cfg.nonnegative,
                                   gain_factor=cfg.swap_gain_factor, reseed=cfg.reseed)
            entry["n_swapped_atoms"] = int((new & ~forced).sum())
            if cfg.purify and not settling:
                pure = purify_atoms(D, R, idx, val, eligible=~new & (age >= SWAP_GRACE_ITERATIONS),
                                    nonnegative=cfg.nonnegative)
                purified = pure.isfinite().all(1)                 # [n_atoms]
                D = torch.where(purified.unsqueeze(1), pure, D)
                entry["n_purified_atoms"] = int(purified.sum())
            age = torch.where(new, 0, age + 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            entry["seconds"] = time.perf_counter() - t0
            self.log_.append(entry)
            if progress is not None:
                progress(entry)
        self.components_ = D.to("cpu", torch.float32).numpy()
        self.fitted_device_ = str(device)
        return self

    @abc.abstractmethod
    def _update(self, X: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """New unit-norm atoms [n_components, d] and codes `val` on the same support."""

    def _code(self, X: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return omp_encode(X, D, self.k, tol=self.tol, nonnegative=self.nonnegative,
                          chunk_size=self.batch_size)

    def transform(self, H: ArrayLike) -> ArrayLike:
        """OMP codes [n_samples, n_components] of H on the fitted atoms (same kind as H)."""
        self._check_fitted()
        device = resolve_device(self.device)
        D = torch.as_tensor(self.components_, device=device)
        X = as_tensor_2d(H, "H", d=D.shape[1], device=device)
        codes = sparse_to_dense(*self._code(X, D), D.shape[0])
        return _like(codes, H)

    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """codes [n_samples, n_components] @ components_ -> [n_samples, d] (same kind)."""
        self._check_fitted()
        device = resolve_device(self.device)
        D = torch.as_tensor(self.components_, device=device)
        C = as_tensor_2d(codes, "codes", device=device)
        if C.shape[1] != D.shape[0]:
            raise ValueError(f"codes has {C.shape[1]} columns, but this dictionary has "
                             f"n_components={D.shape[0]}")
        return _like(C @ D, codes)


def _like(result: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        return result.to(reference.device)
    return result.cpu().numpy()


# ---- pieces of the loop, pure functions of tensors ---------------------------------------
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
        from sae.omp import _nnls_gram

        coef, _ = _nnls_gram(gram, b, torch.zeros_like(b), torch.zeros_like(b, dtype=torch.bool),
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
        a = torch.linalg.eigh(E.T @ E).eigenvectors[:, -1]
        a = -a if a @ pool[seed] < 0 else a
        proj = E @ a
        gains.append((proj.clamp_min(0) if nonnegative else proj).pow(2).sum())
        directions.append(a)
        alive &= ~member
    if not directions:
        return R.new_zeros(0, R.shape[1]), R.new_zeros(0)
    return torch.stack(directions), torch.stack(gains)


def sparse_codes_as_matrix(idx: torch.Tensor, val: torch.Tensor,
                           n_components: int) -> torch.Tensor:
    """The codes as a sparse COO matrix [n_samples, n_components] (MOD's normal equations)."""
    n_samples, k = idx.shape
    keep = (val != 0).flatten()
    rows = torch.arange(n_samples, device=idx.device).repeat_interleave(k)[keep]
    # indices are built in range here, so skip torch's invariant checks (and their warning)
    return torch.sparse_coo_tensor(torch.stack([rows, idx.flatten()[keep]]), val.flatten()[keep],
                                   (n_samples, n_components), check_invariants=False).coalesce()

