"""Dead-latent resampling for the SAEs (Bricken et al. 2023, "Towards Monosemanticity"): a
latent that has stopped firing is given a new direction, the residual of a row the SAE
reconstructs badly, instead of waiting for the AuxK loss to pull it back.

AuxK (sae/losses.py) moves a dead latent toward what the live ones miss, but only by the
gradient of an auxiliary loss; on worlds with many co-firing, overlapping features (the
hierarchical synthsaebench worlds) a fifth to a third of the latents stayed dead with it alone.
"""
from __future__ import annotations

import torch

from sae.base import unit_norm_rows
from sae.sae_module import SparseAutoencoder


@torch.no_grad()
def resample_dead_(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer | None,
                   h: torch.Tensor, h_hat: torch.Tensor, dead: torch.Tensor,
                   gen: torch.Generator) -> torch.Tensor:
    """Give dead latents the directions of poorly reconstructed rows, in place.

    h, h_hat: [batch, d] a minibatch and its reconstruction; dead: [n_components] bool.
    Rows are drawn without replacement with probability proportional to their squared
    residual ||h - h^||^2, at most one per dead latent (so at most `batch` latents per call;
    the dead latents taken are the first in index order). Each chosen latent j gets
    W_dec[:, j] = r / ||r|| (r that row's residual), W_enc[:, j] = the same direction times
    the mean norm of the live latents' encoder columns (so it competes on their scale),
    b_enc[j] = 0; Adam's first moment of these entries is zeroed and its second set to the
    live latents' mean (a zeroed second moment would make the first update ~3x lr).
    Returns the indices of the resampled latents ([m], possibly empty).
    """
    dead_idx = dead.nonzero().squeeze(1)                                # [n_dead]
    err = (h - h_hat).pow(2).sum(dim=1)                                 # [batch]
    n = min(len(dead_idx), int((err > 0).sum()))
    if n == 0:
        return dead_idx[:0]
    latents = dead_idx[:n]
    rows = torch.multinomial(err, n, replacement=False, generator=gen)  # [n]
    directions = unit_norm_rows(h[rows] - h_hat[rows])                  # [n, d]
    live = ~dead
    enc_norm = (sae.W_enc[:, live].norm(dim=0).mean() if live.any()
                else sae.W_enc.new_ones(()))
    sae.W_dec[:, latents] = directions.T
    sae.W_enc[:, latents] = directions.T * enc_norm
    sae.b_enc[latents] = 0
    if optimizer is not None:
        for param, axis in ((sae.W_dec, 1), (sae.W_enc, 1), (sae.b_enc, 0)):
            state = optimizer.state.get(param, {})
            if "exp_avg" not in state:
                continue
            state["exp_avg"].index_fill_(axis, latents, 0)
            sq = state["exp_avg_sq"]
            fill = sq.index_select(axis, live.nonzero().squeeze(1)).mean() if live.any() else 0
            sq.index_fill_(axis, latents, float(fill))
    return latents
