"""Section 1, the paper's first figure: five features in two dimensions.

Dense features: the model keeps the two most important, orthogonal, and drops the rest; as
the features get sparser it packs more of them in, until all five sit on a pentagon.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from unsuperpose.generate.paper.common import (
    Check,
    Echo,
    Section,
    represented,
    save_csv,
    save_figure,
    save_tensors,
    sparsity_label,
    train_grid,
)
from unsuperpose.generate.paper.config import PaperConfig

N, M, DECAY = 5, 2, 0.9
PROBABILITIES = (1.0, 0.3, 0.2, 0.1, 0.05)  # S = 0, 0.7, 0.8, 0.9, 0.95
NAME = "intro"


def adjacent_angles(W: torch.Tensor) -> list[float]:
    """Degrees between angularly adjacent represented columns of W [2, n], in angle order
    (they sum to 360 when the represented features go all the way round)."""
    cols = W[:, represented(W)].T  # [k, 2]
    if len(cols) < 2:
        return []
    theta = np.sort(np.degrees(np.arctan2(cols[:, 1].numpy(), cols[:, 0].numpy())))
    gaps = np.diff(np.concatenate([theta, theta[:1] + 360.0]))
    return [float(g) for g in gaps]


def pair_angle(W: torch.Tensor) -> float:
    """Degrees between the two longest columns of W [2, n]."""
    i, j = W.norm(dim=0).argsort(descending=True)[:2].tolist()
    cos = float(W[:, i] @ W[:, j] / (W[:, i].norm() * W[:, j].norm()).clamp_min(1e-8))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def checks(W: torch.Tensor, probabilities=PROBABILITIES) -> list[Check]:
    """W [inst, 2, n] with instance 0 dense and the last the sparsest."""
    dense, sparse = W[0], W[-1]
    n_dense = int(represented(dense).sum())
    angle = pair_angle(dense)
    gaps = adjacent_angles(sparse)
    n_sparse = int(represented(sparse).sum())
    pentagon = n_sparse == N and all(abs(g - 72.0) <= 10.0 for g in gaps)
    return [
        Check("dense features (S=0): only the 2 most important are represented, orthogonally",
              f"{n_dense} represented, {angle:.1f}° apart",
              n_dense == 2 and abs(angle - 90.0) <= 10.0),
        Check(f"sparse features ({sparsity_label(probabilities[-1])}): all 5 on a pentagon, "
              f"adjacent angles 72°",
              f"{n_sparse} represented, adjacent angles " + ", ".join(f"{g:.1f}°" for g in gaps),
              pentagon),
    ]


def figure(W: torch.Tensor, probabilities=PROBABILITIES):
    k = len(probabilities)
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 3.0))
    colors = plt.cm.viridis(np.linspace(0, 0.9, W.shape[-1]))
    for ax, w, p in zip(np.atleast_1d(axes), W, probabilities):
        for i in range(w.shape[1]):
            ax.plot([0, w[0, i]], [0, w[1, i]], color=colors[i], lw=2)
            ax.plot(w[0, i], w[1, i], "o", color=colors[i], ms=5)
        lim = max(1.2, float(w.norm(dim=0).max()) * 1.15)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{sparsity_label(p)}\n$\\|W\\|_F^2$ = {float((w ** 2).sum()):.2f}", fontsize=10)
    handles = [plt.Line2D([], [], color=colors[i], lw=2, label=f"feature {i} (I={DECAY ** i:.2f})")
               for i in range(W.shape[-1])]
    fig.legend(handles=handles, loc="lower center", ncol=W.shape[-1], fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.05))
    fig.suptitle(f"Columns $W_i$ of the ReLU-output model, n={N}, m={M}, importance {DECAY}$^i$",
                 fontsize=11)
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    trained = train_grid("relu_output", N, M, PROBABILITIES, steps=config.intro_steps,
                         batch_size=config.batch_size, lr=config.lr, seed=config.seed + 1,
                         device=config.device, inits=config.inits, importance_decay=DECAY,
                         label=NAME, echo=echo)
    W = trained.W
    figure_name = save_figure(figure(W), out, NAME)
    data = [save_tensors(out, NAME, {"W": W, "b": trained.b, "loss": trained.loss,
                                     "feature_probability": torch.tensor(PROBABILITIES)}),
            save_csv(out, NAME, [{"sparsity": round(1 - p, 6), "feature_probability": p,
                                  "frobenius_sq": float((w ** 2).sum()),
                                  "represented": int(represented(w).sum()),
                                  "adjacent_angles_deg": [round(a, 2) for a in adjacent_angles(w)],
                                  "loss": float(loss)}
                                 for p, w, loss in zip(PROBABILITIES, W, trained.loss)])]
    return Section(NAME, "Five features in two dimensions", figure_name, data, checks(W),
                   setting=f"relu_output, n={N}, m={M}, importance {DECAY}^i, "
                           f"{config.inits} inits per sparsity (lowest loss kept), "
                           f"{config.intro_steps} steps")
