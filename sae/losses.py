"""Sparse-autoencoder losses as pure functions (no module state, no side effects).

Conventions: `batch` rows, activation width `d`, `n_components` latents. Every loss is a
0-d tensor, a sum over the feature axis and a mean over the batch, so that the numbers do not
change with the batch size and the L1 term is not silently rescaled by the dictionary size.
"""
from __future__ import annotations

import torch

from sae.base import rows_to_columns


def reconstruction_mse(h: torch.Tensor, h_hat: torch.Tensor) -> torch.Tensor:
    """mean_b sum_j (h_bj - h^_bj)^2.

    h: [batch, d] the input activations.
    h_hat: [batch, d] the reconstruction.
    """
    return (h - h_hat).pow(2).sum(dim=-1).mean()


def decoder_weighted_l1(codes: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
    """mean_b sum_i f_bi ||W_dec,i||, the L1 penalty that does not reward shrinking the codes
    while growing the decoder atoms (the norm enters the penalty, so rescaling cancels).

    codes: [batch, n_components] the codes f, nonnegative (every SAE here ends in a ReLU), so
        f = |f| and no abs pass (and its backward) over the largest tensor of the step.
    decoder_norms: [n_components] the L2 norm of each decoder atom.
    """
    # summing the batch first makes the backward one broadcast, not an outer product
    return codes.sum(dim=0) @ decoder_norms / codes.shape[0]


def auxk_loss(residual: torch.Tensor, pre_acts: torch.Tensor, dead_mask: torch.Tensor,
              W_dec: torch.Tensor, k_aux: int, coefficient: float) -> torch.Tensor:
    """The TopK SAE's auxiliary loss (Gao et al. 2024, section A.2).

    The dead latents' top-`k_aux` activations reconstruct what the live ones missed:
    coefficient * mean_b || e_b - W_dec z_b ||^2, with e = h - h^ (no gradient) and z keeping
    the `k_aux` largest ReLU'd pre-activations among dead latents (zero elsewhere). Without it,
    a latent that stops firing under TopK never gets a gradient again. Zero when none is dead.
    No b_dec in the auxiliary reconstruction: the residual already has the bias removed.

    residual: [batch, d] h - h^ of the main reconstruction; detached here.
    pre_acts: [batch, n_components] encoder pre-activations (before TopK).
    dead_mask: [n_components] bool, True for latents that have not fired recently.
    W_dec: [d, n_components] decoder, atoms as columns.
    k_aux: how many dead latents each row may use (capped at the number dead).
    coefficient: alpha, the weight of this term (1/32 in the paper).
    """
    n_dead = int(dead_mask.sum())
    if n_dead == 0 or k_aux == 0 or coefficient == 0:
        return pre_acts.new_zeros(())
    masked = torch.where(dead_mask, pre_acts, torch.finfo(pre_acts.dtype).min)  # [batch, n]
    values, indices = masked.topk(min(k_aux, n_dead), dim=-1, sorted=False)     # [batch, k_aux]
    # embedding_bag sums W_dec[:, indices] weighted by values: a sparse decode; it gathers
    # rows, so the atoms go in as contiguous rows
    recon = torch.nn.functional.embedding_bag(indices, rows_to_columns(W_dec),
                                              per_sample_weights=values.relu(),
                                              mode="sum")                       # [batch, d]
    return coefficient * reconstruction_mse(residual.detach(), recon)
