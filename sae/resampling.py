"""Dead-latent resampling for the SAEs (after Bricken et al. 2023, "Towards Monosemanticity"):
a latent that has stopped firing is given a new direction, the residual of a row the SAE
reconstructs badly, instead of waiting for the AuxK loss (TopK family) to pull it back.

On the hierarchical interference world it revived latents while it ran but did not beat
AuxK alone (README, "Three more SAE options"); on a planted problem without AuxK it keeps
latents alive that would stay dead.
"""
from __future__ import annotations

import torch

from unsuperpose.sae.base import unit_norm_rows
from unsuperpose.sae.sae_module import LATENT_AXIS, SparseAutoencoder


@torch.no_grad()
def resample_dead_(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer | None,
                   h: torch.Tensor, h_hat: torch.Tensor, dead: torch.Tensor,
                   gen: torch.Generator) -> torch.Tensor:
    """Give dead latents the directions of poorly reconstructed rows, in place.

    h, h_hat: [batch, d] a minibatch and its reconstruction; dead: [n_components] bool;
    gen: a generator on h's device. Rows are drawn without replacement with probability
    proportional to their squared residual ||h - h^||^2, at most one per dead latent (so at
    most `batch` latents per call, the dead latents taken in index order). Each chosen
    latent j gets W_dec[:, j] = r / ||r|| (r that row's residual), W_enc[:, j] the same
    direction times the mean norm of the live latents' encoder columns (Bricken et al. use
    0.2 of it; at 1 the new latent competes for TopK's places on the live latents' scale),
    b_enc[j] = 0, and for JumpReLU the live latents' mean log threshold. Adam's first moment
    of these entries is zeroed and its second set to that parameter's live mean (all
    latents' mean before the reset when none is live): a zeroed second moment would make the
    first update ~3x lr. Returns the indices of the resampled latents ([m], possibly empty).
    """
    dead_idx = dead.nonzero().squeeze(1)                                # [n_dead]
    residual = h - h_hat                                                # [batch, d]
    err = residual.pow(2).sum(dim=1)                                    # [batch]
    n = min(len(dead_idx), int((err > 0).sum()))
    if n == 0:
        return dead_idx[:0]
    latents = dead_idx[:n]
    rows = torch.multinomial(err, n, replacement=False, generator=gen)  # [n]
    directions = unit_norm_rows(residual[rows])                         # [n, d]
    live = (~dead).nonzero().squeeze(1)                                 # [n_live]
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if len(live) else sae.W_enc.new_ones(())
    sae.W_dec[:, latents] = directions.T
    sae.W_enc[:, latents] = directions.T * enc_norm
    sae.b_enc[latents] = 0
    if hasattr(sae, "log_threshold") and len(live):
        sae.log_threshold[latents] = sae.log_threshold[live].mean()
        sae.sync_threshold_()
    if optimizer is None:
        return latents
    for name, param in sae.named_parameters():
        state = optimizer.state.get(param, {})
        if name not in LATENT_AXIS or "exp_avg" not in state:
            continue
        axis, sq = LATENT_AXIS[name], state["exp_avg_sq"]
        fill = (sq.index_select(axis, live) if len(live) else sq).mean()
        state["exp_avg"].index_fill_(axis, latents, 0)
        sq.index_fill_(axis, latents, float(fill))
    return latents
