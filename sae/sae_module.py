"""The sparse autoencoder as a torch module: the learned object of the L1, TopK, BatchTopK,
Matryoshka and JumpReLU SAEs (the estimators that fit it are in sae/sae_estimators.py).

    pre = (h - b_dec) W_enc + b_enc          [batch, n_components]
    f   = act(pre)                           relu | topk | batchtopk | jumprelu
    refine_steps times (ISTA on the decoder, the activation as the proximal step):
        f <- act(f + eta (h - h^) W_dec)
    h^  = f W_dec^T + b_dec                  [batch, d]

Both W_enc and W_dec are stored [d, n_components]: W_dec holds the atoms as columns (DESIGN.md)
and W_enc is then the encoder of SAELens's layout, so tying them at start is a copy.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from unsuperpose.sae.base import rows_to_columns, unit_norm_rows
from unsuperpose.sae.losses import jumprelu

ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")
K_ACTIVATIONS = ("topk", "batchtopk")  # the activations that take a k
SPARSE_DECODE_RATIO = 64  # TopK decodes sparsely when k * this <= n_components



class SAEOutput(NamedTuple):
    h_hat: torch.Tensor     # [batch, d]
    codes: torch.Tensor     # [batch, n_components]
    pre_acts: torch.Tensor  # [batch, n_components], the encoder's (what AuxK reads)
    # [batch, n_components], the input of the last activation when refine_steps > 0 (what
    # JumpReLU's L0 reads); None without refinement, where it is pre_acts
    last_pre: torch.Tensor | None = None
    # the codes of the passes before the last when refine_steps > 0 (the encoder's first), each
    # [batch, n_components]: what BatchTopK's per-pass inference thresholds are learned from
    earlier_codes: tuple[torch.Tensor, ...] = ()


class SparseAutoencoder(nn.Module):
    """The learned object: parameters, encode/decode, and in-place constraint helpers.

    forward has no side effects; BatchTopK's inference threshold is a buffer that the training
    loop moves with `update_threshold_`. In train mode batchtopk keeps the k * batch largest
    activations of the batch; in eval mode it keeps those above `threshold` (a JumpReLU).
    With refine_steps > 0 every pass (the encoder's, then each refinement) is its own batch
    top-k in training, so each has its own inference threshold: `threshold` the encoder's,
    `refine_threshold` [refine_steps] the refinements' (refined codes are larger than the
    encoder's: one threshold for all passes let inference drift off k).

    jumprelu: one threshold per latent, theta = exp(log_threshold) (a parameter), f = pre *
    [pre > theta]; in train mode through the straight-through estimator of `sae.losses.jumprelu`
    with kernel width `bandwidth`. `threshold` [n_components] is the buffer inference (and
    save/load) uses, synchronised from log_threshold by `sync_threshold_` after each step.
    """

    def __init__(self, d: int, n_components: int, activation: str = "relu", k: int | None = None,
                 bandwidth: float = 0.1, refine_steps: int = 0, refine_step_size: float = 1.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; valid: {list(ACTIVATIONS)}")
        if activation in K_ACTIVATIONS and (k is None or not 1 <= k <= n_components):
            raise ValueError(f"{activation} needs 1 <= k <= n_components={n_components}, got k={k}")
        self.d, self.n_components, self.activation, self.k = d, n_components, activation, k
        self.bandwidth = bandwidth
        self.refine_steps, self.refine_step_size = refine_steps, refine_step_size
        # TopK's forward can decode only the k chosen atoms per row (a gather), faster than the
        # dense decoder once k * SPARSE_DECODE_RATIO <= n_components (the gather's backward
        # sorts indices and scatters rows, which costs more at larger k / n)
        self.sparse_decode = activation == "topk"
        # zeros until `initialize_` or `load_state_dict`: a fresh module is inert, not random
        self.W_enc = nn.Parameter(torch.zeros(d, n_components))
        self.b_enc = nn.Parameter(torch.zeros(n_components))
        self.W_dec = nn.Parameter(torch.zeros(d, n_components))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.zeros(n_components))  # theta = 1 until set
            self.register_buffer("threshold", torch.ones(n_components))
        else:
            self.register_buffer("threshold", torch.zeros(()))  # 0 = plain ReLU at inference
        if activation == "batchtopk" and refine_steps:
            self.register_buffer("refine_threshold", torch.zeros(refine_steps))  # 0 as above

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

    def activate(self, pre: torch.Tensor, step: int = 0) -> torch.Tensor:
        """pre: [batch, n_components] -> codes f, same shape, nonnegative. `step`: the pass
        (0 the encoder's, i the i-th refinement), which picks BatchTopK's inference threshold."""
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)  # [batch, k]
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        if self.activation == "jumprelu" and self.training:
            return jumprelu(pre, self.log_threshold.exp(), self.bandwidth)
        if not self.training:
            threshold = self.threshold if step == 0 or self.activation != "batchtopk" else \
                self.refine_threshold[step - 1]
            return pre.relu() * (pre > threshold)
        # ReLU after the selection, as for TopK: the same codes (a kept negative becomes the
        # 0 that a kept ReLU'd zero would be) without a pass and its backward over [batch, n]
        flat = pre.flatten()                                           # [batch * n]
        values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values.relu()).view_as(pre)

    def refine(self, h: torch.Tensor, codes: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """refine_steps ISTA steps from `codes` [batch, n_components] on rows h [batch, d]:
        pre <- f + eta (h - f W_dec^T - b_dec) W_dec, f <- act(pre): ISTA's gradient step on the
        reconstruction error, the activation as the proximal operator of the sparsity
        constraint (TopK: keep k; ReLU: the nonnegative orthant; JumpReLU: the thresholds;
        BatchTopK: k * batch in training, at inference the threshold of this pass). Returns
        (codes, the last pre-activations, the codes of the earlier passes, `codes` first)."""
        pre, earlier = codes, []
        for step in range(1, self.refine_steps + 1):
            earlier.append(codes)
            residual = h - self.decode(codes)                                   # [batch, d]
            pre = torch.addmm(codes, residual, self.W_dec, alpha=self.refine_step_size)  # [batch, n]
            codes = self.activate(pre, step)
        return codes, pre, tuple(earlier)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """h: [batch, d] -> codes f [batch, n_components] (refined when refine_steps > 0)."""
        codes = self.activate(self.pre_activations(h))
        return self.refine(h, codes)[0] if self.refine_steps else codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [batch, n_components] -> h^ [batch, d]."""
        return torch.addmm(self.b_dec, codes, self.W_dec.T)

    def forward(self, h: torch.Tensor) -> SAEOutput:
        pre = self.pre_activations(h)
        if self.refine_steps:
            codes, last_pre, earlier = self.refine(h, self.activate(pre))
            return SAEOutput(self.decode(codes), codes, pre, last_pre, earlier)
        if not (self.sparse_decode and self.k * SPARSE_DECODE_RATIO <= self.n_components):
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
    def update_threshold_(self, codes: torch.Tensor, rate: float,
                          earlier: tuple[torch.Tensor, ...] = ()) -> None:
        """Move BatchTopK's inference thresholds toward this batch's smallest kept activation
        of each pass (an exponential running mean with weight `rate`; the first batch sets it
        outright).

        codes: [batch, n_components] the codes of a train-mode forward (its last pass);
        earlier: that forward's `earlier_codes`. Without refinement (earlier empty) `codes`
        moves `threshold`; with it, earlier[0] moves `threshold` and earlier[i] and then
        `codes` move refine_threshold[i - 1].
        """
        passes = (*earlier, codes)
        if len(passes) > 1 and len(passes) != self.refine_steps + 1:
            raise ValueError(f"{len(passes)} passes of codes for refine_steps={self.refine_steps}")
        buffers = [self.threshold] + ([*self.refine_threshold] if len(passes) > 1 else [])
        for buffer, pass_codes in zip(buffers, passes):
            smallest = pass_codes.masked_fill(pass_codes <= 0, float("inf")).amin()  # no compaction
            if not torch.isfinite(smallest):  # nothing kept
                continue
            if buffer <= 0:
                buffer.copy_(smallest)
            else:
                buffer.lerp_(smallest, rate)

    @torch.no_grad()
    def sync_threshold_(self) -> None:
        """jumprelu: the inference threshold buffer <- exp(log_threshold)."""
        self.threshold.copy_(self.log_threshold.exp())

    def components(self) -> torch.Tensor:
        """The decoder atoms as rows, [n_components, d]."""
        return rows_to_columns(self.W_dec.detach())
