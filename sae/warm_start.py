"""k-SVD/MOD started from a Matryoshka SAE's decoder (`init='matryoshka'`).

On hierarchical worlds (a parent fires with each of its children, practically never alone)
reconstruction at a sparsity budget does not tell the true atoms from ones that absorb a
parent into its children, and alternating sparse coding with dictionary updates from random
atoms settles on the absorbed ones. Matryoshka's nested prefixes make a parent's latent
reconstruct without its children, which keeps its atoms near the true ones (each hedged by
its siblings); the sparse-coding fit started from them removes the hedging (measurements:
docs/methods.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unsuperpose.sae.base import unit_norm_rows

if TYPE_CHECKING:
    from unsuperpose.sae.sparse_coding_config import SparseCodingConfig


def matryoshka_atoms(X: torch.Tensor, n_atoms: int, cfg: "SparseCodingConfig") -> torch.Tensor:
    """Unit atoms [n_atoms, d]: the decoder rows of a Matryoshka SAE fitted to X
    [n_samples, d] with n_atoms latents (the spare atoms of `overcomplete` too, so that the
    fit prunes among the SAE's atoms), L0 cfg.k, cfg.init_sae_steps steps at
    cfg.init_sae_lr, seeded by cfg.random_state."""
    from unsuperpose.sae.sae_estimators import MatryoshkaSAE  # the SAEs import nothing from here

    sae = MatryoshkaSAE(n_components=n_atoms, k=cfg.k, n_steps=cfg.init_sae_steps,
                        lr=cfg.init_sae_lr, random_state=cfg.random_state,
                        device=str(X.device)).fit(X)
    decoder = torch.as_tensor(sae.components_, device=X.device, dtype=X.dtype)
    return unit_norm_rows(decoder)                                  # [n_atoms, d]
