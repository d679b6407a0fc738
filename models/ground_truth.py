"""The true feature directions of a trained toy model, defined the same way for every kind.

The direction of feature i is the model's hidden response to the unit input e_i, and for
signed inputs also to -e_i as a separate feature. For `linear` and `relu_output` that is the
column W_i; for models with a hidden ReLU it is ReLU(+-W_i).
"""
from __future__ import annotations

import torch

from unsuperpose.models.toy import ToyModel


@torch.no_grad()
def hidden_responses(model: ToyModel, signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Responses to +e_i (and -e_i when `signed`).

    Returns directions [inst, n_gt, d], feature_index [n_gt] int64, sign [n_gt] int8, where
    n_gt = n for unsigned inputs and 2n (all +e_i, then all -e_i) for signed ones.
    """
    n = model.n_features
    device = model.W.device
    eye = torch.eye(n, device=device)
    inputs, index, sign = [eye], [torch.arange(n)], [torch.ones(n, dtype=torch.int8)]
    if signed:
        inputs.append(-eye)
        index.append(torch.arange(n))
        sign.append(-torch.ones(n, dtype=torch.int8))
    x = torch.cat(inputs)[:, None, :].expand(-1, model.n_instances, n)  # [n_gt, inst, n]
    h = model.hidden(x)  # [n_gt, inst, d]
    return h.transpose(0, 1).contiguous(), torch.cat(index), torch.cat(sign)


def feature_dimensionality(directions: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2  (Elhage et al. 2022, "feature dimensionality").

    directions: [..., n_gt, d] -> [..., n_gt]. A feature with its own dimension has D = 1, an
    antipodal pair 1/2 each, a pentagon 2/5 each; a direction of norm below `eps` gets 0.
    """
    norms_sq = (directions ** 2).sum(-1)  # [..., n_gt]
    unit = directions / norms_sq.clamp_min(eps).sqrt()[..., None]
    overlaps = torch.einsum("...id,...jd->...ij", unit, directions) ** 2  # [..., n_gt, n_gt]
    dim = norms_sq / overlaps.sum(-1).clamp_min(eps)
    return torch.where(norms_sq > eps, dim, torch.zeros_like(dim))
