"""What k-SVD and MOD share: the fit loop (their config is sae/sparse_coding_config.py, the
schedule of its iterations sae/fit_schedule.py).

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
import time
from typing import ClassVar

import torch

from unsuperpose.data import files
from unsuperpose.data.measures import column_mean, fvu_of_residual, sum_squares
from unsuperpose.sae.anchors import cofiring_counts, find_anchors, hold_anchor_parts
from unsuperpose.sae.atom_maintenance import (
    atom_usage,
    duplicate_atoms,
    init_atoms,
    orient_atoms,
    prune_atoms,
    purify_atoms,
    removal_cost,
    replace_atoms,
)
from unsuperpose.sae.base import (
    ArrayLike,
    DictionaryEstimator,
    Progress,
    as_tensor_2d,
    resolve_device,
    torch_generator,
)
from unsuperpose.sae.fit_schedule import (
    SWAP_GRACE_ITERATIONS,
    fit_sparsity,
    n_spare_atoms,
    rows_in_iteration,
    schedule,
)
from unsuperpose.sae.incoherence import decohere_atoms, random_coherence
from unsuperpose.sae.omp import omp_encode, sparse_reconstruct, sparse_to_dense
from unsuperpose.sae.sparse_coding_config import SparseCodingConfig
from unsuperpose.sae.warm_start import matryoshka_atoms


class SparseCodingDictionary(DictionaryEstimator):
    """Base of KSVD and MOD. Subclasses set `method`, `config_class` and `_update`.

    Fitted state: `components_` [n_components, d] float32 numpy, unit-norm rows; `offset_`
    [d] float32 numpy with fit_offset, else None; `log_`, one
    dict per iteration: iteration, rows (how many rows it coded, `start_rows`), fvu
    (`data.measures.fvu` of those rows and C D with the codes and atoms at the end of the
    iteration, before atoms are replaced), l0 (mean nonzeros per
    sample), n_unused_atoms (atoms no sample used), n_duplicate_atoms (atoms with
    cos > max_coherence to a more-used one), n_swapped_atoms (see `n_swaps`): the atoms
    replaced after this iteration; n_purified_atoms (with purify); n_decohered_atoms (with
    incoherence: atom moves onto the bound, `sae.incoherence`); seconds (wall time of the
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
        n_spare = n_spare_atoms(cfg.overcomplete, cfg.n_components, cfg.n_iter)
        fit_k = fit_sparsity(cfg.k, cfg.fit_k_ratio, d, cfg.n_components + n_spare,
                             cap=cfg.fit_k_cap)
        signed = not cfg.nonnegative
        D = self._initial_atoms(X, cfg.n_components + n_spare, gen)  # [n_atoms, d]
        age = torch.full((D.shape[0],), SWAP_GRACE_ITERATIONS, device=device)
        max_cos = (1.0 if cfg.incoherence is None
                   else cfg.incoherence * random_coherence(D.shape[0], d))
        # the mean starts closer to a sparse signal's offset than 0 does (off by the mean
        # code's part, sum_i p_i E[c_i] d_i, where 0 is off by the whole offset)
        offset = X.mean(dim=0) if cfg.fit_offset else X.new_zeros(d)  # [d]
        tol = None if cfg.fit_tol is None else cfg.fit_tol * sum_squares(X) / n_samples
        variances = {}                                             # rows -> fvu denominator
        self.log_ = []
        for iteration in range(1, cfg.n_iter + 1):
            t0 = time.perf_counter()
            phase = schedule(iteration, cfg.n_iter, n_spare)
            rows = rows_in_iteration(iteration, n_samples, cfg.start_rows)
            Xi = X[:rows]                                          # [rows, d]
            if rows not in variances:
                variances[rows] = sum_squares(Xi, column_mean(Xi))
            Xc = Xi - offset if cfg.fit_offset else Xi             # [rows, d]
            if phase.prune:
                # judged on the codes of the atoms as they are now, after the last replacements
                keep = prune_atoms(D, *self._code(Xc, D, fit_k, tol), cfg.n_components,
                                   signed=signed)
                D, age = D[keep], age[keep]
            idx, val = self._code(Xc, D, fit_k, tol)               # [rows, fit_k] each
            D, val = self._update_atoms(Xc, D, idx, val, gen)
            usage = atom_usage(idx, val, D.shape[0])               # [n_atoms]
            n_moved = 0
            # only once the spares are pruned: while they are there, a spare that shares a
            # feature with its atom can outnumber it and push the true atom off
            if max_cos < 1 and D.shape[0] == cfg.n_components:
                D, n_moved = decohere_atoms(D, usage, max_cos, leave_above=cfg.max_coherence)
            D, val = orient_atoms(D, idx, val)  # flips signs only: usage stays
            R = Xc - sparse_reconstruct(idx, val, D)               # [rows, d]
            if cfg.fit_offset:
                shift = R.mean(dim=0)                              # [d]
                offset, R = offset + shift, R - shift
            unused = usage == 0
            duplicate = duplicate_atoms(D, usage, cfg.max_coherence, signed=signed) & ~unused
            # R = X - C D (- offset): the fvu of data.measures.fvu without a copy
            entry = {"iteration": iteration, "rows": rows,
                     "fvu": fvu_of_residual(sum_squares(R), variances[rows]),
                     "l0": float((val != 0).sum(1).float().mean()),
                     "n_unused_atoms": int(unused.sum()),
                     "n_duplicate_atoms": int(duplicate.sum())}
            if max_cos < 1:
                entry["n_decohered_atoms"] = n_moved  # 0 while there are spares
            D, age, counts = self._replace_atoms(D, age, R, idx, val, unused | duplicate,
                                                 phase.settling, gen)
            entry.update(counts)
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

    def _initial_atoms(self, X: torch.Tensor, n_atoms: int, gen: torch.Generator) -> torch.Tensor:
        """The atoms [n_atoms, d] the fit starts from (`init`), X [n_samples, d] its rows."""
        if self.init == "matryoshka":
            return matryoshka_atoms(X, n_atoms, self.get_config())
        return init_atoms(X, n_atoms, self.init, gen)

    def _update_atoms(self, X: torch.Tensor, D: torch.Tensor, idx: torch.Tensor,
                      val: torch.Tensor, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_update`; with anchor_share, each atom's part along its co-firing anchors is then
        put back as it was, so the update moves only the rest (sae/anchors.py)."""
        start = D
        D, val = self._update(X, D, idx, val, gen)
        if self.anchor_share is not None:
            anchors = find_anchors(cofiring_counts(idx, val, D.shape[0]), X.shape[0],
                                   self.anchor_share)
            D = hold_anchor_parts(D, start, *anchors)
        return D, val

    def _replace_atoms(self, D: torch.Tensor, age: torch.Tensor, R: torch.Tensor,
                       idx: torch.Tensor, val: torch.Tensor, forced: torch.Tensor,
                       settling: bool, gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """After an update: give the `forced` atoms [n_atoms] (unused, duplicates) and, unless
        `settling`, up to n_swaps cheap ones new directions from the residuals R [rows, d] of
        the codes (idx, val) [rows, k]; then, with purify and unless settling, an atom whose
        rows point several ways takes the direction of its strongest group (`purify_atoms`).
        Returns the atoms, their ages (iterations since a new direction), the log's counts."""
        signed = not self.nonnegative
        # a new atom needs a few iterations to gather its samples before it is judged
        cost = removal_cost(D, idx, val, signed=signed)
        cost = cost.masked_fill(age < SWAP_GRACE_ITERATIONS, torch.inf)
        D, new = replace_atoms(D, forced, cost, R, gen, n_swaps=0 if settling else self.n_swaps,
                               nonnegative=self.nonnegative, gain_factor=self.swap_gain_factor,
                               reseed=self.reseed)
        counts = {"n_swapped_atoms": int((new & ~forced).sum())}
        if self.purify and not settling:
            pure = purify_atoms(D, R, idx, val, eligible=~new & (age >= SWAP_GRACE_ITERATIONS),
                                nonnegative=self.nonnegative)
            purified = pure.isfinite().all(1)                      # [n_atoms]
            D = torch.where(purified.unsqueeze(1), pure, D)
            counts["n_purified_atoms"] = int(purified.sum())
        return D, torch.where(new, 0, age + 1), counts

    @abc.abstractmethod
    def _update(self, X: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """New unit-norm atoms [n_components, d] and codes `val` on the same support."""

    def _code(self, X: torch.Tensor, D: torch.Tensor, k: int | None = None,
              tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """OMP codes (idx, val) [n, k] of X [n, d] on D: with k and tol of the fit when given,
        else of transform."""
        k, tol = (self.k, self.tol) if k is None else (k, tol)
        return omp_encode(X, D, min(k, D.shape[0]), tol=tol, nonnegative=self.nonnegative,
                          chunk_size=self.batch_size)

    def transform(self, H: ArrayLike) -> ArrayLike:
        """OMP codes [n_samples, n_components] of H on the fitted atoms (same kind as H)."""
        self._check_fitted()
        device = resolve_device(self.device)
        D = torch.as_tensor(self.components_, device=device)
        X = as_tensor_2d(H, "H", d=D.shape[1], device=device)
        offset = self._offset(device, X.dtype)
        if offset is not None:
            X = X - offset
        if self.rel_tol is None:
            codes = sparse_to_dense(*self._code(X, D), D.shape[0])
        else:
            # each row at unit norm, so one scalar tolerance is relative to every row
            norms = X.norm(dim=1, keepdim=True)                        # [n_samples, 1]
            unit = X / norms.clamp_min(torch.finfo(X.dtype).tiny)
            codes = sparse_to_dense(*self._code(unit, D, self.k, self.rel_tol),
                                    D.shape[0]) * norms
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


def _like(result: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    if isinstance(reference, torch.Tensor):
        return result.to(reference.device)
    return result.cpu().numpy()
