"""The parameters of the sparse autoencoders: one frozen dataclass per method, each field
documented by the string after it (`sae.base.param_docs`) and checked by `check_param`."""
from __future__ import annotations

import dataclasses

from sae.base import check_param

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class L1SAEConfig(SAEConfig):
    """The L1 SAE: SAEConfig plus the penalty."""

    l1_coefficient: float = 0.3
    """lambda on sum_i f_i ||W_dec,i|| (a batch mean)"""
    l1_warmup_steps: int = 0
    """ramp lambda linearly from ~0 over this many steps"""

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
    """alpha, the AuxK weight; Gao et al.'s 1/32 (tuned on millions of latents) left the
    planted 64-latent problem at MMCS 0.98 with 3% dead, 1.0 reached 0.994+"""

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
    """weight of each batch in the running mean that sets the inference threshold"""

    def __post_init__(self):
        super().__post_init__()
        check_param("threshold_rate", self.threshold_rate, low=0, high=1, low_open=True)
