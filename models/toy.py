"""Toy models of superposition (Elhage et al. 2022), batched over an instance axis.

One forward pass trains many independent models at once: every parameter has a leading
`n_instances` axis and instances never mix. Shapes use n = n_features, d = d_hidden.

    linear       h = W x              x' = W^T h + b
    relu_output  h = W x              x' = ReLU(W^T h + b)          (the paper's main model)
    relu_hidden  h = ReLU(W x)        x' = ReLU(W^T h + b)
    abs          h = ReLU(W_in x)     y' = ReLU(W_out h + b)        target |x|, x in [-1, 1]
"""
from __future__ import annotations

import math

import torch
from torch import nn

from unsuperpose.models import MODEL_KINDS  # defined there, without torch, for the configs


class ToyModel(nn.Module):
    def __init__(self, kind: str, n_instances: int, n_features: int, d_hidden: int,
                 generator: torch.Generator | None = None, device=None):
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")
        self.kind, self.n_instances = kind, n_instances
        self.n_features, self.d_hidden = n_features, d_hidden

        def xavier(rows, cols):  # [n_instances, rows, cols], xavier-normal per instance
            std = math.sqrt(2.0 / (rows + cols))
            return torch.randn((n_instances, rows, cols), generator=generator, device=device) * std

        self.W = nn.Parameter(xavier(d_hidden, n_features))  # [inst, d, n]
        if kind == "abs":
            self.W_out = nn.Parameter(xavier(n_features, d_hidden))  # [inst, n, d]
        self.b_final = nn.Parameter(torch.zeros((n_instances, n_features), device=device))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, inst, n] -> h: [batch, inst, d]."""
        h = torch.bmm(x.transpose(0, 1), self.W.transpose(1, 2))  # [inst, batch, d]
        h = torch.relu(h) if self.kind in ("relu_hidden", "abs") else h
        return h.transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, inst, n] -> reconstruction (or |x| for `abs`): [batch, inst, n]."""
        h = self.hidden(x).transpose(0, 1)  # [inst, batch, d]
        W_out = self.W_out.transpose(1, 2) if self.kind == "abs" else self.W  # [inst, d, n]
        # bmm over the instance axis: einsum's planning costs more than the math at these sizes
        out = torch.baddbmm(self.b_final[:, None, :], h, W_out).transpose(0, 1)
        return out if self.kind == "linear" else torch.relu(out)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() if self.kind == "abs" else x
