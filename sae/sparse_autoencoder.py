"""Sparse autoencoders: the L1 SAE, the TopK SAE (Gao et al. 2024) and BatchTopK (Bussmann et
al. 2024), as one `nn.Module` (the learned object) and three estimators that fit it.

    pre = (h - b_dec) W_enc + b_enc          [batch, n_components]
    f   = act(pre)                           relu | topk | batchtopk
    h^  = f W_dec^T + b_dec                  [batch, d]

Both W_enc and W_dec are stored [d, n_components]: W_dec holds the atoms as columns (DESIGN.md)
and W_enc is then the encoder of SAELens's layout, so tying them at start is a copy.
"""
from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import os
from pathlib import Path
from typing import Callable, ClassVar, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from data import files
from sae.base import (ArrayLike, ConfigError, DictionaryEstimator, as_tensor_2d,
                      check_number, resolve_device, rows_to_columns, torch_generator,
                      unit_norm_rows)
from sae.losses import auxk_loss, decoder_weighted_l1, reconstruction_mse

ACTIVATIONS = ("relu", "topk", "batchtopk")
INITS = ("data", "random")
B_DEC_INITS = ("mean", "median", "zeros")

# Tensor keys of our dictionary.safetensors (components_ carries W_dec) and SAELens's files.
W_ENC, B_ENC, B_DEC, THRESHOLD = "W_enc", "b_enc", "b_dec", "threshold"
SAELENS_CFG_FILE = files.SAELENS_CFG_FILE  # re-exported; data/files.py owns file names
SAELENS_WEIGHTS_FILE = files.SAELENS_WEIGHTS_FILE
# SAELens reads a cfg without this as pre-6.0 and rewrites its keys; ours is the 6.x schema.
SAELENS_SCHEMA_VERSION = "6.0.0"

SPARSE_DECODE_RATIO = 64  # TopK decodes sparsely when k * this <= n_components
_TRANSFORM_CHUNK = 16384  # rows per forward pass in transform, to bound [rows, n] memory


class SAEOutput(NamedTuple):
    h_hat: torch.Tensor     # [batch, d]
    codes: torch.Tensor     # [batch, n_components]
    pre_acts: torch.Tensor  # [batch, n_components]


class SparseAutoencoder(nn.Module):
    """The learned object: parameters, encode/decode, and in-place constraint helpers.

    forward has no side effects; BatchTopK's inference threshold is a buffer that the training
    loop moves with `update_threshold_`. In train mode batchtopk keeps the k * batch largest
    activations of the batch; in eval mode it keeps those above `threshold` (a JumpReLU).
    """

    def __init__(self, d: int, n_components: int, activation: str = "relu", k: int | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; valid: {list(ACTIVATIONS)}")
        if activation != "relu" and (k is None or not 1 <= k <= n_components):
            raise ValueError(f"{activation} needs 1 <= k <= n_components={n_components}, got k={k}")
        self.d, self.n_components, self.activation, self.k = d, n_components, activation, k
        # TopK's forward can decode only the k chosen atoms per row (a gather). Per training
        # step on this CPU (d = 256, k = 32, one thread) that was 1.6-1.7x faster than the
        # dense decoder at k/n = 1/64 and 1/128, and no faster at 1/32 (slower with two
        # threads): the gather's backward sorts indices and scatters rows.
        self.sparse_decode = activation == "topk" and k * SPARSE_DECODE_RATIO <= n_components
        # zeros until `initialize_` or `load_state_dict`: a fresh module is inert, not random
        self.W_enc = nn.Parameter(torch.zeros(d, n_components))
        self.b_enc = nn.Parameter(torch.zeros(n_components))
        self.W_dec = nn.Parameter(torch.zeros(d, n_components))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.zeros(()))  # 0 = plain ReLU at inference

    @torch.no_grad()
    def initialize_(self, atoms: torch.Tensor, b_dec: torch.Tensor,
                    encoder_atoms: torch.Tensor | None = None) -> None:
        """atoms: [n_components, d] (any norm) become unit decoder columns; the encoder starts
        tied to them (W_enc = W_dec, each latent reads along its own atom) unless
        `encoder_atoms` [n_components, d] are given, normalised the same way. b_enc = 0,
        b_dec = `b_dec` [d]."""
        self.W_dec.copy_(rows_to_columns(unit_norm_rows(atoms)))
        self.W_enc.copy_(self.W_dec if encoder_atoms is None else
                         rows_to_columns(unit_norm_rows(encoder_atoms)))
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec)

    def pre_activations(self, h: torch.Tensor) -> torch.Tensor:
        """h: [batch, d] -> (h - b_dec) W_enc + b_enc, [batch, n_components].

        Computed as h W_enc + (b_enc - b_dec W_enc): the same map, but b_dec's gradient then
        comes from a [n] x [n, d] product instead of a [batch, n] x [n, d] one (autograd would
        otherwise form the gradient of h - b_dec, a sixth batch-sized matmul per step).
        """
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, h, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """pre: [batch, n_components] -> codes f, same shape, nonnegative."""
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)  # [batch, k]
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        if not self.training:
            return pre.relu() * (pre > self.threshold)
        # ReLU after the selection, as for TopK: the same codes (a kept negative becomes the
        # 0 that a kept ReLU'd zero would be) without a pass and its backward over [batch, n]
        flat = pre.flatten()                                           # [batch * n]
        values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values.relu()).view_as(pre)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """h: [batch, d] -> codes f [batch, n_components]."""
        return self.activate(self.pre_activations(h))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [batch, n_components] -> h^ [batch, d]."""
        return torch.addmm(self.b_dec, codes, self.W_dec.T)

    def forward(self, h: torch.Tensor) -> SAEOutput:
        pre = self.pre_activations(h)
        if not self.sparse_decode:
            codes = self.activate(pre)
            return SAEOutput(self.decode(codes), codes, pre)
        # embedding_bag = gather the k atoms of each row + weighted sum; the dense codes are
        # for the caller (statistics, penalties) and cost no backward unless a loss uses them
        values, indices = pre.topk(self.k, dim=-1, sorted=False)       # [batch, k]
        values = values.relu()
        # atoms as contiguous rows for the gather: a 4 * d * n byte copy, where gathering
        # strided columns made the CPU kernel and its backward an order of magnitude slower
        atoms = rows_to_columns(self.W_dec)                            # [n_components, d]
        h_hat = nn.functional.embedding_bag(indices, atoms, per_sample_weights=values,
                                            mode="sum") + self.b_dec   # [batch, d]
        codes = torch.zeros_like(pre).scatter(-1, indices, values)
        return SAEOutput(h_hat, codes, pre)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder atom (column of W_dec) to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the part of W_dec.grad along each (unit) atom, before the optimiser step.

        With atoms renormalised after every step that part only changes their length, which the
        renormalisation undoes; left in, it still feeds Adam's moment estimates (Gao et al.).
        """
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(dim=0, keepdim=True)  # [1, n_components]
            self.W_dec.grad.sub_(along * self.W_dec)

    @torch.no_grad()
    def update_threshold_(self, codes: torch.Tensor, rate: float) -> None:
        """Move BatchTopK's inference threshold toward this batch's smallest kept activation
        (an exponential running mean with weight `rate`; the first batch sets it outright).

        codes: [batch, n_components] from a train-mode forward.
        """
        smallest = codes.masked_fill(codes <= 0, float("inf")).amin()  # no compaction pass
        if not torch.isfinite(smallest):  # nothing kept
            return
        if self.threshold <= 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, rate)

    def components(self) -> torch.Tensor:
        """The decoder atoms as rows, [n_components, d]."""
        return rows_to_columns(self.W_dec.detach())


# ---- pure helpers --------------------------------------------------------------------------
def lr_multiplier(step: int, total_steps: int | None, warmup_steps: int,
                  decay_fraction: float) -> float:
    """The factor on the base lr at 0-based `step`: linear warm-up over `warmup_steps`
    ((step + 1) / warmup_steps, so never 0), then flat, then linear decay over the last
    `decay_fraction` of `total_steps`, reaching 1 / (steps in the decay) at the last step."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_fraction > 0 and total_steps:
        decay_steps = max(1, round(decay_fraction * total_steps))
        factor *= min(1.0, (total_steps - step) / decay_steps)
    return factor


def geometric_median(X: torch.Tensor, n_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_y sum_i ||x_i - y|| by Weiszfeld's iteration, started at the mean.

    X: [n_samples, d] -> [d]. Robust to outlying rows where the mean is not.
    """
    y = X.mean(dim=0)
    for _ in range(n_iter):
        w = 1.0 / (X - y).norm(dim=1).clamp_min(1e-12)  # [n_samples]
        y_next = (w @ X) / w.sum()
        if (y_next - y).norm() <= tol * (1.0 + y.norm()):
            return y_next
        y = y_next
    return y


def _batch_tensor(batch, d: int | None, device: torch.device) -> torch.Tensor:
    """One minibatch from an iterable -> [batch, d] float32 on `device`.

    batch: a [batch, d] tensor or array, a dict holding one at "h", or a pyarrow Table with an
    "h" column of (fixed- or variable-size) lists, as `datasets` yields in the "arrow" format.
    """
    if hasattr(batch, "column_names") and hasattr(batch, "num_rows"):  # a pyarrow Table
        if files.H not in batch.column_names:
            raise ValueError(f"a minibatch table has columns {batch.column_names}, "
                             f"expected {files.H!r}")
        column = batch.column(files.H).combine_chunks()
        # flatten() respects slice offsets; the copy makes the read-only Arrow buffer ours
        flat = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        if batch.num_rows == 0 or flat.size % batch.num_rows:
            raise ValueError(f"the {files.H!r} column is ragged: {flat.size} values in "
                             f"{batch.num_rows} rows")
        batch = flat.reshape(batch.num_rows, -1)
    elif isinstance(batch, dict):
        if files.H not in batch:
            raise ValueError(f"a minibatch dict has keys {sorted(batch)}, expected {files.H!r}")
        batch = batch[files.H]
    return as_tensor_2d(batch, name="minibatch", d=d, device=device)


# ---- configs -------------------------------------------------------------------------------
def _check(ok: bool, field: str, value, expected: str) -> None:
    """For the fields that are not numbers (numbers go through `check_number`)."""
    if not ok:
        raise ConfigError(field, f"must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Fields shared by every SAE; each method's config adds its own."""

    n_components: int                   # number of latents (dictionary atoms)
    lr: float = 1e-2                    # Adam's base learning rate
    lr_warmup_steps: int = 100          # linear lr warm-up from lr / lr_warmup_steps to lr
    lr_decay_fraction: float = 0.2      # linear lr decay to ~0 over this last fraction of steps
    grad_clip_norm: float | None = 1.0  # clip the global gradient norm to this (None: no clip)
    batch_size: int = 128               # rows per optimiser step
    n_epochs: int = 10                  # passes over the data (ignored when n_steps is set)
    n_steps: int | None = None          # optimiser steps; overrides n_epochs, cycling the data
    init: str = "data"                  # decoder atoms from random centred data rows, or random
    tied_init: bool = True              # start with W_enc = W_dec; else a random unit encoder
    b_dec_init: str = "mean"            # b_dec from the data mean, geometric median, or zeros
    dead_steps_threshold: int = 100     # a latent silent this many steps counts as dead; keep
    #                                     steps * batch_size well above 1 / (rarest feature's
    #                                     probability), or AuxK pulls healthy rare latents
    random_state: int | None = None     # seeds the one torch.Generator of a fit
    device: str = "auto"                # "auto" = cuda when available, else cpu
    log_every: int = 100                # append a row to log_ every this many steps

    def __post_init__(self):
        check_number("n_components", self.n_components, low=1, integer=True)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("lr_warmup_steps", self.lr_warmup_steps, low=0, integer=True)
        check_number("lr_decay_fraction", self.lr_decay_fraction, low=0, high=1)
        check_number("grad_clip_norm", self.grad_clip_norm, low=0, low_open=True, optional=True)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("n_epochs", self.n_epochs, low=1, integer=True)
        check_number("n_steps", self.n_steps, low=1, integer=True, optional=True)
        _check(self.init in INITS, "init", self.init, f"one of {list(INITS)}")
        _check(isinstance(self.tied_init, bool), "tied_init", self.tied_init, "True or False")
        _check(self.b_dec_init in B_DEC_INITS, "b_dec_init", self.b_dec_init,
               f"one of {list(B_DEC_INITS)}")
        check_number("dead_steps_threshold", self.dead_steps_threshold, low=1, integer=True)
        check_number("random_state", self.random_state, low=0, integer=True, optional=True)
        check_number("log_every", self.log_every, low=1, integer=True)
        resolve_device(self.device)  # a ValueError that names the device


@dataclasses.dataclass(frozen=True, kw_only=True)
class L1SAEConfig(SAEConfig):
    l1_coefficient: float = 0.3         # lambda on sum_i f_i ||W_dec,i|| (batch mean)
    l1_warmup_steps: int = 0            # ramp lambda linearly from ~0 over this many steps

    def __post_init__(self):
        super().__post_init__()
        check_number("l1_coefficient", self.l1_coefficient, low=0)
        check_number("l1_warmup_steps", self.l1_warmup_steps, low=0, integer=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKSAEConfig(SAEConfig):
    k: int                              # latents kept per row (on average, for BatchTopK)
    aux_k: int | None = None            # dead latents the AuxK loss may use; None = d // 2
    aux_coefficient: float = 1.0        # alpha, the AuxK weight; Gao et al.'s 1/32 (tuned on
    #                                     millions of latents) left the planted 64-latent
    #                                     problem at MMCS 0.98 with 3% dead, 1.0 reached 0.994+

    def __post_init__(self):
        super().__post_init__()
        check_number("k", self.k, low=1, integer=True)
        _check(self.k <= self.n_components, "k", self.k,
               f"<= n_components={self.n_components}")
        check_number("aux_k", self.aux_k, low=0, integer=True, optional=True)
        check_number("aux_coefficient", self.aux_coefficient, low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchTopKSAEConfig(TopKSAEConfig):
    threshold_rate: float = 0.01        # weight of each batch in the inference threshold's mean

    def __post_init__(self):
        super().__post_init__()
        check_number("threshold_rate", self.threshold_rate, low=0, high=1, low_open=True)


# ---- estimators ----------------------------------------------------------------------------
class _SAEEstimator(DictionaryEstimator):
    """The shared fit/transform of the SAEs; a subclass names its activation and penalty.

    Parameters: the fields of `config_class`. Fitted: `sae_` (a SparseAutoencoder),
    `components_` [n_components, d], `log_` (a dict every `log_every` steps).
    """

    activation: ClassVar[str] = ""

    def __init__(self, **params):
        valid = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = set(params) - valid
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter(s) {sorted(unknown)}; "
                             f"valid: {sorted(valid)}")
        try:
            config = self.config_class(**params)  # validates; fills the defaults
        except TypeError as err:  # a required parameter is missing
            raise ValueError(f"{type(self).__name__}: {err}") from None
        for name in valid:
            setattr(self, name, getattr(config, name))

    # -- what differs between methods --------------------------------------------------------
    @abc.abstractmethod
    def _penalty(self, sae: SparseAutoencoder, h: torch.Tensor, out: SAEOutput, step: int,
                 dead: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sparsity term added to the MSE, and its parts for the log."""

    def _after_step(self, sae: SparseAutoencoder, out: SAEOutput) -> None:
        pass

    # -- data --------------------------------------------------------------------------------
    def _batches(self, H, cfg, gen: torch.Generator,
                 device: torch.device) -> tuple[Iterator[torch.Tensor], int | None]:
        """An iterator over every training minibatch (all epochs) and its length if known.

        H: a checked [n_samples, d] tensor (shuffled per epoch with `gen`), or an iterable.
        """
        if isinstance(H, torch.Tensor):
            per_epoch = math.ceil(H.shape[0] / cfg.batch_size)

            def epoch(_: int) -> Iterator[torch.Tensor]:
                order = torch.randperm(H.shape[0], generator=gen, device=device)
                return (H[idx] for idx in order.split(cfg.batch_size))
        else:
            per_epoch, epoch = self._iterable_epochs(H, cfg.batch_size, device)
            if iter(H) is H and cfg.n_steps is None and cfg.n_epochs > 1:
                raise ValueError(f"H is a one-shot iterator, so it cannot give n_epochs="
                                 f"{cfg.n_epochs} passes; pass n_epochs=1, n_steps, or an "
                                 "iterable that can be iterated again (a list, a Dataset)")
        total = cfg.n_steps or (per_epoch * cfg.n_epochs if per_epoch is not None else None)
        if total is None and cfg.lr_decay_fraction > 0:
            raise ValueError("H is an iterable of unknown length, so the lr decay cannot be "
                             "placed; set n_steps (or lr_decay_fraction=0)")
        epochs = itertools.count() if cfg.n_steps else range(cfg.n_epochs)
        stream = itertools.chain.from_iterable(map(epoch, epochs))
        return itertools.islice(stream, total), total

    @staticmethod
    def _iterable_epochs(H, batch_size: int, device: torch.device):
        """(batches per epoch or None, epoch -> iterator of [batch, d] tensors) for a
        `datasets` Dataset/IterableDataset (batched by us) or any iterable of minibatches."""
        is_hf = hasattr(H, "with_format") and hasattr(H, "iter")
        d = None  # set by the first minibatch; every later one must match it

        def epoch(index: int) -> Iterator[torch.Tensor]:
            nonlocal d
            if is_hf:
                if hasattr(H, "set_epoch"):  # reshuffles a shuffled IterableDataset
                    H.set_epoch(index)
                # Arrow batches cost nothing to cut; "torch" formatting runs at ~0.1M rows/s
                source = H.with_format("arrow").iter(batch_size=batch_size)
            else:
                source = iter(H)
            n = 0
            for n, batch in enumerate(source, 1):
                t = _batch_tensor(batch, d, device)
                d = t.shape[1]
                yield t
            if n == 0:
                raise ValueError(f"H yielded no minibatches in epoch {index}")

        if is_hf:
            n_rows = getattr(H, "num_rows", None)
            per_epoch = math.ceil(n_rows / batch_size) if n_rows is not None else None
        else:
            per_epoch = len(H) if hasattr(H, "__len__") else None
        return per_epoch, epoch

    def _initial_tensors(self, X: torch.Tensor, cfg, gen: torch.Generator):
        """X: [rows, d] the data seen at init (all of it in memory, else the first minibatch)
        -> (atoms [n_components, d], b_dec [d], encoder atoms [n_components, d] or None)."""
        n, d = cfg.n_components, X.shape[1]
        order = torch.randperm(X.shape[0], generator=gen, device=X.device)
        b_dec = {"mean": lambda: X.mean(dim=0), "zeros": lambda: X.new_zeros(d),
                 "median": lambda: geometric_median(X[order[:65536]])}[cfg.b_dec_init]()
        atoms = torch.randn(n, d, generator=gen, device=X.device)   # [n_components, d]
        if cfg.init == "data":
            # distinct rows, so no two atoms start equal (then random directions for the
            # rest, if the rows run out); a row equal to b_dec keeps its random direction
            rows = X[order[:n]] - b_dec
            usable = rows.norm(dim=1) > 1e-6 * (1 + X.norm(dim=1).max())
            atoms[:rows.shape[0]][usable] = rows[usable]
        encoder = None if cfg.tied_init else torch.randn(n, d, generator=gen, device=X.device)
        return atoms, b_dec, encoder

    # -- fit ---------------------------------------------------------------------------------
    def fit(self, H, y=None, progress: Callable[[int, int | None], None] | None = None):
        """H: [n_samples, d] array/tensor (shuffled per epoch), a `datasets` Dataset or
        IterableDataset with an "h" column, or any iterable of [batch, d] minibatches (or of
        dicts holding them at "h"). `progress(step, total_steps)` is called after every step
        (total_steps None when unknown); `sae_` exists by then, so a callback may watch it.
        """
        cfg = self.get_config()
        device = resolve_device(cfg.device)
        gen = torch_generator(cfg.random_state, device)
        if isinstance(H, (np.ndarray, torch.Tensor)):
            H = as_tensor_2d(H, device=device)                         # [n_samples, d]
        batches, total = self._batches(H, cfg, gen, device)
        first = next(batches)                                          # [batch, d]
        d = first.shape[1]
        init_data = H if isinstance(H, torch.Tensor) else first
        if self.activation != "relu" and cfg.k > d:
            raise ValueError(f"k={cfg.k} exceeds d={d}: more active latents per row than "
                             "dimensions cannot give a unique sparse code")
        sae = SparseAutoencoder(d, cfg.n_components, self.activation,
                                getattr(cfg, "k", None)).to(device)
        sae.initialize_(*self._initial_tensors(init_data, cfg, gen))
        self.sae_, self.log_ = sae, []
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
        since_fired = torch.zeros(cfg.n_components, dtype=torch.long, device=device)
        samples = 0
        for step, h in enumerate(itertools.chain([first], batches)):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_multiplier(step, total, cfg.lr_warmup_steps,
                                                     cfg.lr_decay_fraction)
            out = sae(h)
            mse = reconstruction_mse(h, out.h_hat)
            dead = since_fired >= cfg.dead_steps_threshold             # [n_components]
            penalty, terms = self._penalty(sae, h, out, step, dead)
            loss = mse + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad_()
            if cfg.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
            opt.step()
            sae.normalize_decoder_()
            self._after_step(sae, out)
            fired = out.codes.detach().amax(dim=0) > 0                 # [n_components]
            since_fired = torch.where(fired, 0, since_fired + 1)
            samples += h.shape[0]
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                self.log_.append(self._log_row(step + 1, samples, opt, h, out, loss, mse, terms,
                                               since_fired >= cfg.dead_steps_threshold))
            if progress is not None:
                progress(step + 1, total)
        self.components_ = sae.components().cpu().numpy()
        self.n_steps_, self.n_samples_seen_ = step + 1, samples
        self.fitted_device_ = str(device)
        return self

    @torch.no_grad()
    def _log_row(self, step, samples, opt, h, out: SAEOutput, loss, mse, terms, dead) -> dict:
        variance = (h - h.mean(dim=0)).pow(2).sum(dim=-1).mean()
        row = {"step": step, "samples": samples, "lr": opt.param_groups[0]["lr"],
               "loss": loss.item(), "mse": mse.item(),
               **{key: value.item() for key, value in terms.items()},
               "l0": (out.codes > 0).sum(dim=-1).float().mean().item(),
               "fvu": (mse / variance.clamp_min(1e-12)).item(),
               "dead": dead.float().mean().item()}
        return row

    # -- inference ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        super()._check_fitted()
        if getattr(self, "sae_", None) is None:
            raise RuntimeError(f"this {type(self).__name__} has components_ but no sae_; "
                               "fit it or load it with .load(directory)")

    @torch.no_grad()
    def transform(self, H: ArrayLike) -> ArrayLike:
        """H: [n_samples, d] -> codes f [n_samples, n_components], numpy in numpy out."""
        self._check_fitted()
        sae = self.sae_.eval()
        X = as_tensor_2d(H, d=sae.d, device=sae.W_enc.device)
        codes = torch.cat([sae.encode(chunk) for chunk in X.split(_TRANSFORM_CHUNK)])
        return codes.to(H.device) if isinstance(H, torch.Tensor) else codes.cpu().numpy()

    @torch.no_grad()
    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """codes: [n_samples, n_components] -> W_dec f + b_dec [n_samples, d]."""
        self._check_fitted()
        sae = self.sae_
        C = as_tensor_2d(codes, name="codes", device=sae.W_dec.device)  # [n_samples, n]
        if C.shape[1] != sae.n_components:
            raise ValueError(f"codes has {C.shape[1]} columns, but this SAE has "
                             f"n_components={sae.n_components}")
        H = sae.decode(C)
        return H.to(codes.device) if isinstance(codes, torch.Tensor) else H.cpu().numpy()

    # -- persistence -------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        sae = self.sae_
        return {W_ENC: sae.W_enc.detach(), B_ENC: sae.b_enc.detach(),
                B_DEC: sae.b_dec.detach(), THRESHOLD: sae.threshold}

    def _move_fitted(self, device: torch.device) -> None:
        if getattr(self, "sae_", None) is not None:
            self.sae_ = self.sae_.to(device)

    def _load_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = {W_ENC, B_ENC, B_DEC, THRESHOLD} - set(tensors)
        if missing:
            raise ValueError(f"{files.DICTIONARY_FILE} lacks the {self.method} tensors "
                             f"{sorted(missing)}")
        n_components, d = self.components_.shape
        sae = SparseAutoencoder(d, n_components, self.activation, getattr(self, "k", None))
        sae.load_state_dict({"W_enc": tensors[W_ENC], "b_enc": tensors[B_ENC],
                             "W_dec": rows_to_columns(torch.from_numpy(self.components_)),
                             "b_dec": tensors[B_DEC], "threshold": tensors[THRESHOLD]})
        self.sae_ = sae.to(resolve_device(self.device)).eval()

    def export_saelens(self, directory: str | os.PathLike) -> Path:
        """Write SAELens's `cfg.json` + `sae_weights.safetensors` (6.x schema) to `directory`.

        L1 -> "standard", TopK -> "topk" (with k), BatchTopK -> "jumprelu" with its inference
        threshold on every latent, which is how SAELens itself saves a trained BatchTopK SAE.
        """
        from safetensors.torch import save

        self._check_fitted()
        sae, directory = self.sae_, Path(directory)
        tensors = {"W_enc": sae.W_enc.detach(),                       # [d_in, d_sae]
                   "b_enc": sae.b_enc.detach(),                       # [d_sae]
                   "W_dec": sae.components(),                         # [d_sae, d_in]
                   "b_dec": sae.b_dec.detach()}                       # [d_in]
        cfg = {"architecture": {"relu": "standard", "topk": "topk",
                                "batchtopk": "jumprelu"}[self.activation],
               "d_in": sae.d, "d_sae": sae.n_components, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True,  # we encode h - b_dec
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"sae_lens_version": SAELENS_SCHEMA_VERSION,
                            "model_name": None, "hook_name": None,
                            "unsuperpose_method": self.method}}
        if self.activation == "topk":
            cfg["k"] = sae.k
        if self.activation == "batchtopk":
            tensors["threshold"] = sae.threshold.expand(sae.n_components)  # [d_sae]
        tensors = {key: t.to("cpu", torch.float32).contiguous() for key, t in tensors.items()}
        files.atomic_write_bytes(directory / SAELENS_WEIGHTS_FILE, save(tensors))
        files.atomic_write_json(directory / SAELENS_CFG_FILE, cfg)
        return directory


class L1SAE(_SAEEstimator):
    """The L1 SAE: f = ReLU(W_enc^T (h - b_dec) + b_enc), loss ||h - h^||^2 +
    lambda sum_i f_i ||W_dec,i|| (lambda ramped over l1_warmup_steps). See L1SAEConfig."""

    method = "l1"
    config_class = L1SAEConfig
    activation = "relu"

    def _penalty(self, sae, h, out, step, dead):
        ramp = min(1.0, (step + 1) / self.l1_warmup_steps) if self.l1_warmup_steps else 1.0
        l1 = decoder_weighted_l1(out.codes, sae.W_dec.norm(dim=0))
        return self.l1_coefficient * ramp * l1, {"l1": l1}


class TopKSAE(_SAEEstimator):
    """The TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each row, plus the
    AuxK loss on latents dead for dead_steps_threshold steps. See TopKSAEConfig."""

    method = "topk"
    config_class = TopKSAEConfig
    activation = "topk"

    def _penalty(self, sae, h, out, step, dead):
        aux_k = self.aux_k if self.aux_k is not None else max(1, sae.d // 2)
        aux = auxk_loss(h - out.h_hat, out.pre_acts, dead, sae.W_dec, aux_k,
                        self.aux_coefficient)
        return aux, {"aux": aux}


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): keep the k * batch largest activations of the batch in
    training; at inference keep those above a threshold, the running mean of the smallest
    activation kept in training. See BatchTopKSAEConfig."""

    method = "batchtopk"
    config_class = BatchTopKSAEConfig
    activation = "batchtopk"

    def _after_step(self, sae, out):
        sae.update_threshold_(out.codes, self.threshold_rate)
