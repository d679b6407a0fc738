"""What k-SVD and MOD share: the config fields and the fit loop.

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
and the mixtures the spare atoms make redundant are what gets dropped. When to prune and
when to stop replacing atoms is `schedule`, a pure function of the iteration number; the
maintenance itself is in sae/atom_maintenance.py.
"""
from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from data import files
from data.configs import ConfigError
from data.measures import column_mean, fvu_of_residual, sum_squares
from sae.atom_maintenance import (
    INITS,
    atom_usage,
    duplicate_atoms,
    init_atoms,
    orient_atoms,
    prune_atoms,
    purify_atoms,
    removal_cost,
    replace_atoms,
)
from sae.base import (
    ArrayLike,
    DictionaryEstimator,
    Progress,
    as_tensor_2d,
    check_param,
    resolve_device,
    torch_generator,
)
from sae.omp import omp_encode, sparse_reconstruct, sparse_to_dense

RESEEDS = ("pca", "cluster")
SWAP_GRACE_ITERATIONS = 3  # iterations a new atom has to gather samples before a swap


@dataclass(frozen=True, kw_only=True)
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
    fit_k_ratio: float = 1.0
    """while fitting, code each sample with up to ceil(fit_k_ratio * k) atoms, but not more
    than d / (2 ln n_atoms), the support OMP still finds on random atoms (and never fewer
    than k); transform keeps k. With k the mean L0, a row with more active features than k
    otherwise leaves part of them in its residual, and the atom update follows that
    leftover (512 atoms in d = 256: k 5 -> 10; 40 in d = 10: k stays 3)"""
    fit_tol: float | None = None
    """while fitting, also stop coding a sample once its squared residual is at most fit_tol
    times the mean squared norm of the rows (scale-free; transform keeps `tol`): with
    fit_k_ratio > 1, the extra atoms then go only to the rows that need them"""
    prefix_fractions: tuple[float, ...] = ()
    """code each sample in passes, in fit and transform: pass i takes up to prefix_ks[i]
    atoms among the most-used prefix_fractions[i] of the atoms (atoms are kept sorted by
    usage, most used first), on the residual of the passes before it; a last pass over all
    atoms takes the rest of k (empty: one OMP pass). On hierarchical worlds a parent fires
    with each of its children, and one pass at a fixed k favours an atom that holds parent +
    child; coding the frequent atoms first leaves the child alone in the residual.
    Fractions strictly increasing in (0, 1)"""
    prefix_ks: tuple[int, ...] = ()
    """atoms of each prefix pass (one per prefix_fractions entry), each >= 1, summing to < k"""
    start_rows: int | None = None
    """code and update on a random subset of this many rows in the first iteration, doubled
    each iteration until every row is used (None: every row from the start): the first
    alternations find the frequent features, which a subset shows as well as all rows"""
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
    fit_offset: bool = False
    """learn an offset b [d] beside the atoms, h ~ c D + b: b starts at the data mean and
    after each update moves by the mean residual (its least-squares value for fixed codes and atoms);
    the codes of transform are those of h - b. Activations with a nonzero mean otherwise
    spend atoms, or parts of every atom, on the mean"""
    random_state: int | None = 0
    """seed of the one generator used by fit (init, atom order, replacements); None: fresh
    entropy"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."""

    def __post_init__(self):
        check_param("n_components", self.n_components, low=1, integer=True)
        check_param("k", self.k, low=1, integer=True, at_most=("n_components", self.n_components))
        check_param("tol", self.tol, low=0, optional=True)
        check_param("n_iter", self.n_iter, low=1, integer=True)
        check_param("fit_k_ratio", self.fit_k_ratio, low=1)
        check_param("fit_tol", self.fit_tol, low=0, optional=True)
        check_param("start_rows", self.start_rows, low=1, integer=True, optional=True)
        self._check_prefixes()
        check_param("nonnegative", self.nonnegative, boolean=True)
        check_param("init", self.init, choices=INITS)
        check_param("batch_size", self.batch_size, low=1, integer=True, optional=True)
        check_param("max_coherence", self.max_coherence, low=0, high=1, low_open=True)
        check_param("n_swaps", self.n_swaps, low=0, integer=True)
        check_param("swap_gain_factor", self.swap_gain_factor, low=0)
        check_param("reseed", self.reseed, choices=RESEEDS)
        check_param("overcomplete", self.overcomplete, low=0, high=4)
        if n_spare_atoms(self.overcomplete, self.n_components):
            check_param("n_iter", self.n_iter, low=min_iterations_to_prune(), integer=True,
                        when=f"overcomplete={self.overcomplete} (to settle after pruning)")
        check_param("purify", self.purify, boolean=True)
        check_param("fit_offset", self.fit_offset, boolean=True)
        check_param("random_state", self.random_state, low=0, integer=True, optional=True)
        check_param("device", self.device, device=True)

    def _check_prefixes(self) -> None:
        fractions = _as_tuple("prefix_fractions", self.prefix_fractions, (int, float), "number")
        ks = _as_tuple("prefix_ks", self.prefix_ks, int, "integer")
        object.__setattr__(self, "prefix_fractions", tuple(float(f) for f in fractions))
        object.__setattr__(self, "prefix_ks", ks)
        if len(fractions) != len(ks):
            raise ConfigError("prefix_ks", f"needs one entry per prefix_fractions entry "
                                           f"({len(fractions)}), got {len(ks)}")
        if any(not 0 < f < 1 for f in fractions) or any(
                a >= b for a, b in zip(fractions, fractions[1:])):
            raise ConfigError("prefix_fractions", f"must be strictly increasing in (0, 1), "
                                                  f"got {list(fractions)}")
        if any(k < 1 for k in ks) or (ks and sum(ks) >= self.k):
            raise ConfigError("prefix_ks", f"must be >= 1 each and sum to < k={self.k}, "
                                           f"got {list(ks)}")


def _as_tuple(name: str, value, kind: type | tuple[type, ...], kind_name: str) -> tuple:
    """value (a list or tuple of `kind`, booleans excluded) as a tuple; else ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError(name, f"must be a list of {kind_name}s, got {value!r}")
    return tuple(value)


def min_iterations_to_prune() -> int:
    """The fewest n_iter that leave iterations after the pruning of spare atoms."""
    return SWAP_GRACE_ITERATIONS + 2


def n_spare_atoms(overcomplete: float, n_components: int) -> int:
    """Atoms fitted beyond n_components until the pruning."""
    return round(overcomplete * n_components)


def fit_sparsity(k: int, ratio: float, d: int, n_atoms: int) -> int:
    """Atoms per sample while fitting: ceil(ratio * k), capped at d / (2 ln n_atoms) (the
    sparsity up to which OMP recovers supports on random atoms), never below k."""
    cap = math.floor(d / (2 * math.log(max(n_atoms, 2))))
    return max(k, min(math.ceil(ratio * k), cap, n_atoms))


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


class SparseCodingDictionary(DictionaryEstimator):
    """Base of KSVD and MOD. Subclasses set `method`, `config_class` and `_update`.

    Fitted state: `components_` [n_components, d] float32 numpy, unit-norm rows; `offset_`
    [d] float32 numpy with fit_offset, else None; `log_`, one
    dict per iteration: iteration, rows (how many rows it coded, `start_rows`), fvu
    (`data.measures.fvu` of those rows and C D with the codes and atoms at the end of the
    iteration, before atoms are replaced), l0 (mean nonzeros per
    sample), n_unused_atoms (atoms no sample used), n_duplicate_atoms (atoms with
    cos > max_coherence to a more-used one), n_swapped_atoms (see `n_swaps`): the atoms
    replaced after this iteration; n_purified_atoms (with purify); seconds (wall time of the
    iteration).
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = SparseCodingConfig

    def fit(self, H: ArrayLike, y=None, progress: Progress | None = None):
        """Fit the atoms to H [n_samples, d]; `progress(iteration, n_iter, log_entry)` after
        each iteration."""
        cfg = self.get_config()
        device = resolve_device(cfg.device)
        X = as_tensor_2d(H, "H", device=device)                    # [n_samples, d]
        n_samples, d = X.shape
        if cfg.k > d:
            raise ValueError(f"k={cfg.k} nonzeros per sample exceeds d={d}: more than d atoms "
                             f"are linearly dependent, so OMP cannot place them")
        gen = torch_generator(cfg.random_state, device)
        if cfg.start_rows is not None and cfg.start_rows < n_samples:
            # the growing subsets are prefixes of one shuffle: file order may not be random
            X = X[torch.randperm(n_samples, generator=gen, device=device)]
        n_spare = n_spare_atoms(cfg.overcomplete, cfg.n_components)
        fit_k = fit_sparsity(cfg.k, cfg.fit_k_ratio, d, cfg.n_components + n_spare)
        signed = not cfg.nonnegative
        D = init_atoms(X, cfg.n_components + n_spare, cfg.init, gen)  # [n_atoms, d]

        age = torch.full((D.shape[0],), SWAP_GRACE_ITERATIONS, device=device)
        # the mean starts closer to a sparse signal's offset than 0 does (off by the mean
        # code's part, sum_i p_i E[c_i] d_i, where 0 is off by the whole offset)
        offset = X.mean(dim=0) if cfg.fit_offset else X.new_zeros(d)  # [d]
        tol = None if cfg.fit_tol is None else cfg.fit_tol * sum_squares(X) / n_samples
        variances = {}                                             # rows -> fvu denominator
        usage = None                                               # [n_atoms], per iteration
        self.log_ = []
        for iteration in range(1, cfg.n_iter + 1):
            t0 = time.perf_counter()
            phase = schedule(iteration, cfg.n_iter, n_spare)
            rows = rows_in_iteration(iteration, n_samples, cfg.start_rows)
            Xi = X[:rows]                                          # [rows, d]
            if rows not in variances:
                variances[rows] = sum_squares(Xi, column_mean(Xi))
            Xc = Xi - offset if cfg.fit_offset else Xi             # [rows, d]
            if cfg.prefix_fractions and usage is not None:
                # most used first: the prefix pass codes with the leading atoms
                order = torch.argsort(usage, descending=True, stable=True)
                D, age = D[order], age[order]
            if phase.prune:
                # judged on the codes of the atoms as they are now, after the last replacements
                keep = prune_atoms(D, *self._code(Xc, D, fit_k, tol), cfg.n_components,
                                   signed=signed)
                D, age = D[keep], age[keep]
            idx, val = self._code(Xc, D, fit_k, tol)               # [rows, fit_k] each
            D, val = self._update(Xc, D, idx, val, gen)
            D, val = orient_atoms(D, idx, val)
            R = Xc - sparse_reconstruct(idx, val, D)               # [rows, d]
            if cfg.fit_offset:
                shift = R.mean(dim=0)                              # [d]
                offset, R = offset + shift, R - shift
            usage = atom_usage(idx, val, D.shape[0])               # [n_atoms]
            unused = usage == 0
            duplicate = duplicate_atoms(D, usage, cfg.max_coherence, signed=signed) & ~unused
            # R = X - C D (- offset): the fvu of data.measures.fvu without a copy
            entry = {"iteration": iteration, "rows": rows,
                     "fvu": fvu_of_residual(sum_squares(R), variances[rows]),
                     "l0": float((val != 0).sum(1).float().mean()),
                     "n_unused_atoms": int(unused.sum()),
                     "n_duplicate_atoms": int(duplicate.sum())}
            # a new atom needs a few iterations to gather its samples before it is judged
            cost = removal_cost(D, idx, val, signed=signed)
            cost = cost.masked_fill(age < SWAP_GRACE_ITERATIONS, torch.inf)
            forced = unused | duplicate
            D, new = replace_atoms(D, forced, cost, R, gen,
                                   n_swaps=0 if phase.settling else cfg.n_swaps,
                                   nonnegative=cfg.nonnegative,
                                   gain_factor=cfg.swap_gain_factor, reseed=cfg.reseed)
            entry["n_swapped_atoms"] = int((new & ~forced).sum())
            if cfg.purify and not phase.settling:
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
                progress(iteration, cfg.n_iter, entry)
        self.components_ = D.to("cpu", torch.float32).numpy()
        self.offset_ = offset.to("cpu", torch.float32).numpy() if cfg.fit_offset else None
        self.fitted_device_ = str(device)
        return self

    @abc.abstractmethod
    def _update(self, X: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """New unit-norm atoms [n_components, d] and codes `val` on the same support."""

    def _code(self, X: torch.Tensor, D: torch.Tensor, k: int | None = None,
              tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """OMP codes [n, k] of X on D: with k and tol of the fit when given, else of
        transform; in passes with prefix_fractions (each prefix is D's leading rows)."""
        k, tol = (self.k, self.tol) if k is None else (k, tol)
        passes = [(max(1, round(f * D.shape[0])), n) for f, n in
                  zip(self.prefix_fractions, self.prefix_ks)]
        passes.append((D.shape[0], k - sum(self.prefix_ks)))
        idx, val, R = [], [], X
        for n, (width, n_atoms) in enumerate(passes):
            i, v = omp_encode(R, D[:width], min(n_atoms, width), tol=tol,
                              nonnegative=self.nonnegative, chunk_size=self.batch_size)
            if idx:  # an atom an earlier pass left at 0 and this one picks: one slot
                i, v = _merge_repeats(idx, val, i, v)
            idx.append(i)
            val.append(v)
            if n + 1 < len(passes):
                R = X - sparse_reconstruct(torch.cat(idx, 1), torch.cat(val, 1), D)
        return torch.cat(idx, 1), torch.cat(val, 1)

    def transform(self, H: ArrayLike) -> ArrayLike:
        """OMP codes [n_samples, n_components] of H on the fitted atoms (same kind as H)."""
        self._check_fitted()
        device = resolve_device(self.device)
        D = torch.as_tensor(self.components_, device=device)
        X = as_tensor_2d(H, "H", d=D.shape[1], device=device)
        offset = self._offset(device, X.dtype)
        if offset is not None:
            X = X - offset
        codes = sparse_to_dense(*self._code(X, D), D.shape[0])
        return _like(codes, H)

    def _offset(self, device, dtype) -> torch.Tensor | None:
        """The learned offset [d], or None for a dictionary fitted without one."""
        offset = getattr(self, "offset_", None)
        return None if offset is None else torch.as_tensor(offset, device=device, dtype=dtype)

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        if not self.fit_offset:  # byte-identical files for dictionaries without an offset
            return {}
        return {files.DICTIONARY_OFFSET: torch.as_tensor(self.offset_)}

    def _load_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        offset = tensors.get(files.DICTIONARY_OFFSET)
        if self.fit_offset and offset is None:
            raise ValueError(f"{files.DICTIONARY_FILE} lacks the {files.DICTIONARY_OFFSET!r} "
                             "tensor that fit_offset=True fits")
        if offset is not None and tuple(offset.shape) != (self.components_.shape[1],):
            raise ValueError(f"{files.DICTIONARY_FILE}: tensor {files.DICTIONARY_OFFSET!r} has "
                             f"shape {list(offset.shape)}, expected [{self.components_.shape[1]}]")
        self.offset_ = None if offset is None else offset.numpy()

    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """codes [n_samples, n_components] @ components_ -> [n_samples, d] (same kind)."""
        self._check_fitted()
        device = resolve_device(self.device)
        D = torch.as_tensor(self.components_, device=device)
        C = as_tensor_2d(codes, "codes", device=device)
        if C.shape[1] != D.shape[0]:
            raise ValueError(f"codes has {C.shape[1]} columns, but this dictionary has "
                             f"n_components={D.shape[0]}")
        offset = self._offset(device, D.dtype)
        return _like(C @ D if offset is None else C @ D + offset, codes)


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


def _like(result: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        return result.to(reference.device)
    return result.cpu().numpy()
