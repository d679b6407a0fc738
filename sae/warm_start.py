"""k-SVD/MOD started from a Matryoshka SAE's decoder (`init='matryoshka'`).

On hierarchical worlds (a parent fires with each of its children, practically never alone)
reconstruction at a sparsity budget does not tell the true atoms from ones that absorb a
parent into its children, and alternating sparse coding with dictionary updates from random
atoms settles on the absorbed ones (interference rung: mod_nn mcc 0.68, uniqueness 0.63).
Matryoshka's nested prefixes make a parent's latent reconstruct without its children, which
keeps its atoms near the true ones (mcc 0.80 there, but each hedged by its siblings); MOD
started from them, with rows coded by up to d / 5 atoms while fitting (`fit_k_cap=0.2`;
the default cap d / (2 ln n) is below k there), then removes the hedging: mcc 0.87 on that
rung, 0.895 when the SAE has a quarter more latents than atoms and MOD prunes the least
useful away (`overcomplete=0.25`), and 0.909 when no two atoms may lie closer than the bound
of `incoherence` (sae/incoherence.py), which keeps a child's atom from absorbing its parent.
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
