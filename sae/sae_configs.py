"""The parameters of the sparse autoencoders: one frozen dataclass per method, each field
documented by the string after it (`sae.base.param_docs`) and checked by `check_param`."""
from __future__ import annotations

import dataclasses

from unsuperpose.sae.base import ConfigError, check_param

INITS = ("data", "random")
B_DEC_INITS = ("mean", "median", "zeros")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Fields shared by every SAE; each method's config adds its own."""

    n_components: int
    """number of latents (dictionary atoms)"""
    lr: float = 1e-2
    """Adam's base learning rate"""
    lr_warmup_steps: int = 100
    """linear lr warm-up from lr / lr_warmup_steps to lr"""
    lr_decay_fraction: float = 0.2
    """linear lr decay to ~0 over this last fraction of the steps"""
    grad_clip_norm: float | None = 1.0
    """clip the global gradient norm to this (None: no clipping)"""
    batch_size: int = 128
    """rows per optimiser step"""
    n_epochs: int = 10
    """passes over the data (ignored when n_steps is set)"""
    n_steps: int | None = None
    """optimiser steps; overrides n_epochs, cycling the data"""
    init: str = "data"
    """decoder atoms from random centred data rows ('data'), or random directions ('random')"""
    tied_init: bool = True
    """start with W_enc = W_dec; else a random unit encoder"""
    b_dec_init: str = "mean"
    """b_dec from the data mean, the geometric median, or zeros"""
    dead_steps_threshold: int = 100
    """a latent silent this many steps counts as dead; keep steps * batch_size well above
    1 / (the rarest feature's probability), or AuxK pulls healthy rare latents"""
    random_state: int | None = 0
    """seeds the one torch.Generator of a fit (None: fresh entropy)"""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    log_every: int = 100
    """append a row to log_ every this many steps (and at the last)"""
    refine_steps: int = 0
    """ISTA steps after the encoder, in training and inference: f <- act(f + eta (h - h^)
    W_dec), the activation as the proximal step (0: the plain encoder)"""
    refine_step_size: float = 1.0
    """eta, the step of each refinement (atoms are unit norm, so 1 is a full gradient step
    on a near-orthogonal support)"""

    def __post_init__(self):
        check_param("n_components", self.n_components, low=1, integer=True)
        check_param("lr", self.lr, low=0, low_open=True)
        check_param("lr_warmup_steps", self.lr_warmup_steps, low=0, integer=True)
        check_param("lr_decay_fraction", self.lr_decay_fraction, low=0, high=1)
        check_param("grad_clip_norm", self.grad_clip_norm, low=0, low_open=True, optional=True)
        check_param("batch_size", self.batch_size, low=1, integer=True)
        check_param("n_epochs", self.n_epochs, low=1, integer=True)
        check_param("n_steps", self.n_steps, low=1, integer=True, optional=True)
        check_param("init", self.init, choices=INITS)
        check_param("tied_init", self.tied_init, boolean=True)
        check_param("b_dec_init", self.b_dec_init, choices=B_DEC_INITS)
        check_param("dead_steps_threshold", self.dead_steps_threshold, low=1, integer=True)
        check_param("random_state", self.random_state, low=0, integer=True, optional=True)
        check_param("log_every", self.log_every, low=1, integer=True)
        check_param("device", self.device, device=True)
        check_param("refine_steps", self.refine_steps, low=0, integer=True)
        check_param("refine_step_size", self.refine_step_size, low=0, low_open=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class L1SAEConfig(SAEConfig):
    """The L1 SAE: SAEConfig plus the penalty."""

    l1_coefficient: float = 0.3
    """lambda on sum_i f_i ||W_dec,i|| (a batch mean); the stage calibrates it to the target
    L0, starting here"""
    l1_warmup_steps: int = 1000
    """ramp lambda linearly from ~0 over this many steps"""
    init: str = "random"
    """decoder atoms from random directions ('random') or random centred data rows ('data'):
    with the penalty's ramp, random atoms keep one latent per feature at L0 ~ 1 where data
    rows split rare features (docs/methods.md)"""

    def __post_init__(self):
        super().__post_init__()
        check_param("l1_coefficient", self.l1_coefficient, low=0)
        check_param("l1_warmup_steps", self.l1_warmup_steps, low=0, integer=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKSAEConfig(SAEConfig):
    """The TopK SAE: SAEConfig plus k and the AuxK loss."""

    k: int
    """latents kept per row (on average over a batch, for BatchTopK)"""
    aux_k: int | None = None
    """dead latents the AuxK loss may use; None: d // 2"""
    aux_coefficient: float = 1.0
    """alpha, the AuxK weight; Gao et al.'s 1/32 was tuned on millions of latents, too weak
    to revive the dead latents of small dictionaries"""

    def __post_init__(self):
        super().__post_init__()
        check_param("k", self.k, low=1, integer=True,
                    at_most=("n_components", self.n_components))
        check_param("aux_k", self.aux_k, low=0, integer=True, optional=True)
        check_param("aux_coefficient", self.aux_coefficient, low=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchTopKSAEConfig(TopKSAEConfig):
    """BatchTopK: TopKSAEConfig plus the inference threshold's running mean."""

    threshold_rate: float = 0.01
    """weight of each batch in the running mean that sets the inference threshold (with
    refine_steps > 0, one threshold per pass, each from that pass's batch top-k)"""

    def __post_init__(self):
        super().__post_init__()
        check_param("threshold_rate", self.threshold_rate, low=0, high=1, low_open=True)


def default_prefixes(n_components: int) -> tuple[int, ...]:
    """Matryoshka's default nested widths: n/16, n/8, n/4, n/2, n (rounded, at least 1,
    duplicates dropped), e.g. (4, 8, 16, 32, 64) for n = 64 and (1, 2, 3, 6) for n = 6."""
    widths = [max(1, round(n_components / div)) for div in (16, 8, 4, 2)] + [n_components]
    return tuple(sorted(set(widths)))


def resolve_prefixes(prefixes, n_components: int) -> tuple[int, ...]:
    """The nested widths (latent counts) of `prefixes`: None -> `default_prefixes`; else each
    entry an int size in [1, n_components] or a float fraction in (0, 1] of n_components
    (rounded, at least 1). Strictly increasing; n_components is appended when the last is
    smaller, so the whole dictionary is always the outermost prefix. A ValueError when bad."""
    if prefixes is None:
        return default_prefixes(n_components)
    if isinstance(prefixes, (str, bytes)) or not hasattr(prefixes, "__iter__"):
        raise ValueError(f"must be None or a sequence of sizes or fractions, got {prefixes!r}")
    widths = []
    for entry in prefixes:
        if isinstance(entry, bool) or not isinstance(entry, (int, float)):
            raise ValueError(f"entries must be sizes (int) or fractions (float), got {entry!r}")
        if isinstance(entry, int):
            if not 1 <= entry <= n_components:
                raise ValueError(f"a size must be in [1, n_components={n_components}], "
                                 f"got {entry!r}")
            widths.append(entry)
        else:
            if not 0 < entry <= 1:
                raise ValueError(f"a fraction must be in (0, 1], got {entry!r}")
            widths.append(max(1, round(entry * n_components)))
    if not widths:
        raise ValueError("needs at least one width")
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"widths must be strictly increasing, got {widths} "
                         f"(n_components={n_components})")
    if widths[-1] < n_components:
        widths.append(n_components)
    return tuple(widths)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatryoshkaSAEConfig(BatchTopKSAEConfig):
    """Matryoshka BatchTopK: BatchTopKSAEConfig plus the nested prefixes."""

    prefixes: tuple | None = None
    """nested widths, each prefix of the dictionary trained to reconstruct alone: sizes
    (ints) or fractions of n_components (floats), strictly increasing; n_components is added
    as the last when missing. None: n/16, n/8, n/4, n/2, n"""

    def __post_init__(self):
        super().__post_init__()
        try:
            resolve_prefixes(self.prefixes, self.n_components)
        except ValueError as err:
            raise ConfigError("prefixes", str(err)) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class JumpReLUSAEConfig(SAEConfig):
    """JumpReLU (Rajamanoharan et al. 2024): SAEConfig plus the threshold and the L0 penalty."""

    l0_coefficient: float = 0.1
    """lambda on the batch-mean L0 (its gradient reaches only the thresholds, through the
    straight-through estimator); the stage calibrates it to the target L0 like L1's lambda"""
    l0_warmup_steps: int = 0
    """ramp lambda linearly from ~0 over this many steps"""
    bandwidth: float = 0.1
    """epsilon, the width of the rectangle kernel in the thresholds' pseudo-derivative (in
    the units of the pre-activations)"""
    init_threshold: float = 0.1
    """theta of every latent at the start (theta = exp(log_theta) is what is trained)"""

    def __post_init__(self):
        super().__post_init__()
        check_param("l0_coefficient", self.l0_coefficient, low=0)
        check_param("l0_warmup_steps", self.l0_warmup_steps, low=0, integer=True)
        check_param("bandwidth", self.bandwidth, low=0, low_open=True)
        check_param("init_threshold", self.init_threshold, low=0, low_open=True)
