"""Sparse-autoencoder losses as pure functions (no module state, no side effects).

Conventions: `batch` rows, activation width `d`, `n_components` latents. Every loss is a
0-d tensor, a sum over the feature axis and a mean over the batch, so that the numbers do not
change with the batch size and the L1 term is not silently rescaled by the dictionary size.
"""
from __future__ import annotations

import torch

from unsuperpose.sae.base import rows_to_columns


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


# ---- JumpReLU (Rajamanoharan et al. 2024): straight-through estimators -----------------------
def rectangle_kernel(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre - theta) / epsilon) / epsilon with the rectangle K(u) = 1 for |u| < 1/2, else 0:
    1 / epsilon where |pre - theta| < epsilon / 2, zero elsewhere. [batch, n_components]."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        mask = pre > threshold
        ctx.save_for_backward(pre, threshold, mask)
        ctx.bandwidth = bandwidth
        return pre * mask

    @staticmethod
    def backward(ctx, grad):
        pre, threshold, mask = ctx.saved_tensors
        grad_pre = grad * mask
        grad_theta = -(grad * threshold * rectangle_kernel(pre, threshold, ctx.bandwidth)).sum(dim=0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_theta = -(grad * rectangle_kernel(pre, threshold, ctx.bandwidth)).sum(dim=0)
        return torch.zeros_like(pre), grad_theta, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU_theta(pre) = pre * H(pre - theta), with the paper's pseudo-derivatives:
    d/d pre = H(pre - theta) (the jump passes no gradient to pre), and
    d/d theta = -(theta / epsilon) K((pre - theta) / epsilon), K the rectangle kernel.

    pre: [batch, n_components]; threshold: [n_components] theta > 0; bandwidth: epsilon."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def jumprelu_l0(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """mean_b sum_i H(pre_bi - theta_i), the L0 of the JumpReLU codes, with the pseudo-derivative
    d/d theta_i = -(1 / epsilon) K((pre - theta_i) / epsilon) (summed over the batch, / batch)
    and none to pre: the L0 penalty trains only the thresholds."""
    return _Step.apply(pre, threshold, bandwidth).sum(dim=-1).mean()


# ---- Matryoshka (Bussmann et al. 2025): nested prefixes -------------------------------------
def prefix_reconstruction_mses(h: torch.Tensor, codes: torch.Tensor, W_dec: torch.Tensor,
                               b_dec: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """[len(widths)] the reconstruction MSE (`reconstruction_mse`) of each prefix's decode:
    entry j is mean_b || h_b - (b_dec + sum_{i < widths[j]} f_bi W_dec,i) ||^2, the codes f
    the same for every prefix (the batch-top-k codes of the whole dictionary, restricted).

    h: [batch, d]; codes: [batch, n_components]; W_dec: [d, n_components] atoms as columns;
    b_dec: [d]; widths: strictly increasing latent counts, the last at most n_components.
    Built as a running sum over the segments between consecutive widths (one decode in all).
    """
    mses, h_hat, start = [], b_dec.expand_as(h), 0
    for width in widths:
        h_hat = h_hat + codes[:, start:width] @ W_dec[:, start:width].T  # [batch, d]
        mses.append(reconstruction_mse(h, h_hat))
        start = width
    return torch.stack(mses)
