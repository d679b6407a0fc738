"""k-SVD/MOD started from a Matryoshka SAE's decoder (`init='matryoshka'`).

On hierarchical worlds (a parent fires with each of its children, practically never alone)
reconstruction at a sparsity budget does not tell the true atoms from ones that absorb a
parent into its children, and alternating sparse coding with dictionary updates from random
atoms settles on the absorbed ones (interference rung: mod_nn mcc 0.68, uniqueness 0.63).
Matryoshka's nested prefixes make a parent's latent reconstruct without its children, which
keeps its atoms near the true ones (mcc 0.80 there, but each hedged by its siblings); MOD
started from them, with rows coded by up to d / 5 atoms while fitting (`fit_k_cap=0.2`;
the default cap d / (2 ln n) is below k there), then removes the hedging: mcc 0.88 on that
rung.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sae.atom_maintenance import init_atoms
from sae.base import unit_norm_rows

if TYPE_CHECKING:
    from sae.sparse_coding_config import SparseCodingConfig


def matryoshka_atoms(X: torch.Tensor, n_atoms: int, cfg: "SparseCodingConfig",
                     gen: torch.Generator) -> torch.Tensor:
    """Unit atoms [n_atoms, d]: the first cfg.n_components the decoder rows of a Matryoshka
    SAE fitted to X [n_samples, d] (cfg.n_components latents, L0 cfg.k, cfg.init_sae_steps
    steps at cfg.init_sae_lr, seeded by cfg.random_state), the rest (spares) distinct
    samples as init='data' draws them."""
    from sae.sae_estimators import MatryoshkaSAE  # the SAEs import nothing from here

    sae = MatryoshkaSAE(n_components=cfg.n_components, k=cfg.k, n_steps=cfg.init_sae_steps,
                        lr=cfg.init_sae_lr, random_state=cfg.random_state,
                        device=str(X.device)).fit(X)
    D = init_atoms(X, n_atoms, "data", gen)                        # [n_atoms, d]
    decoder = torch.as_tensor(sae.components_, device=X.device, dtype=X.dtype)
    D[:cfg.n_components] = unit_norm_rows(decoder)
    return D
