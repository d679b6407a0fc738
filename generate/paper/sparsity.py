"""Section 2: superposition as a function of sparsity, linear model against ReLU output.

The linear model keeps the m most important features, orthogonal (PCA), whatever the
sparsity; the ReLU-output model does the same when features are dense and packs more than
m features in superposition as they get sparser.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.gridspec import GridSpec

from unsuperpose.generate.paper.common import (
    Check,
    Echo,
    Section,
    in_superposition,
    interference,
    represented,
    save_csv,
    save_figure,
    save_tensors,
    sparsity_label,
    train_grid,
)
from unsuperpose.generate.paper.config import PaperConfig

N, M, DECAY = 20, 5, 0.7
PROBABILITIES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.001)  # S = 0, 0.7, 0.9, 0.97, 0.99, 0.999
KINDS = ("linear", "relu_output")
NAME = "sparsity"


def counts(W: torch.Tensor) -> tuple[list[int], list[int]]:
    """W [inst, d, n] -> (represented, in superposition) per instance."""
    return represented(W).sum(-1).tolist(), in_superposition(W).sum(-1).tolist()


def checks(W_linear: torch.Tensor, W_relu: torch.Tensor, m: int = M) -> list[Check]:
    lin_rep, lin_sup = counts(W_linear)
    relu_rep, relu_sup = counts(W_relu)
    return [
        Check(f"the linear model never represents more than m={m} features (it keeps the top m, "
              f"orthogonal, at every sparsity)",
              f"represented {lin_rep}, in superposition {lin_sup} (S from dense to sparse)",
              max(lin_rep) <= m),
        Check(f"the ReLU-output model represents m={m} orthogonal features when dense and more "
              f"than m, in superposition, when sparse",
              f"represented {relu_rep}, in superposition {relu_sup}",
              relu_rep[0] <= m and relu_rep[-1] > m and relu_sup[-1] > 0),
    ]


def figure(results: dict[str, tuple[torch.Tensor, torch.Tensor]], probabilities=PROBABILITIES):
    k = len(probabilities)
    fig = plt.figure(figsize=(2.3 * k, 2.3 * 2 * len(results)))
    grid = GridSpec(2 * len(results), 2 * k, figure=fig, width_ratios=[12, 1] * k,
                    height_ratios=[3, 2] * len(results), wspace=0.15, hspace=0.55)
    for r, (kind, (W, b)) in enumerate(results.items()):
        sup, norms = interference(W), W.norm(dim=-2)
        for c, p in enumerate(probabilities):
            ax = fig.add_subplot(grid[2 * r, 2 * c])
            ax.imshow((W[c].T @ W[c]).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{kind}\n{sparsity_label(p)}", fontsize=9)
            if c == 0:
                ax.set_ylabel("$W^TW$", fontsize=9)
            axb = fig.add_subplot(grid[2 * r, 2 * c + 1])
            axb.imshow(b[c][:, None].numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            axb.set_xticks([])
            axb.set_yticks([])
            if c == 0 and r == 0:
                axb.set_title("b", fontsize=9)
            axn = fig.add_subplot(grid[2 * r + 1, 2 * c:2 * c + 2])
            colors = plt.cm.plasma(np.clip(sup[c].numpy(), 0, 1) * 0.9)
            colors[~represented(W[c]).numpy()] = (0.7, 0.7, 0.7, 1.0)  # grey: not represented
            axn.bar(np.arange(W.shape[-1]), norms[c].numpy(), color=colors, width=0.8)
            axn.axhline(0.5, color="0.6", lw=0.7, ls=":")
            axn.set_ylim(0, 1.3)
            axn.set_xticks([])
            n_rep, n_sup = int(represented(W[c]).sum()), int(in_superposition(W[c]).sum())
            axn.set_title(f"{n_rep} represented, {n_sup} in sup.", fontsize=8)
            if c == 0:
                axn.set_ylabel("$\\|W_i\\|$", fontsize=9)
            else:
                axn.set_yticklabels([])
    fig.suptitle(f"n={N} features, m={M} dims, importance {DECAY}$^i$. Bars: $\\|W_i\\|$ per "
                 f"feature, colour = $\\sum_{{j\\neq i}}(\\hat W_i\\cdot W_j)^2$ "
                 f"(dark: none, yellow: superposition, grey: not represented)", fontsize=10)
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    results = {}
    for offset, kind in enumerate(KINDS):
        trained = train_grid(kind, N, M, PROBABILITIES, steps=config.sparsity_steps,
                             batch_size=config.batch_size, lr=config.lr,
                             seed=config.seed + 10 + offset, device=config.device,
                             inits=config.inits, importance_decay=DECAY,
                             label=f"{NAME} {kind}", echo=echo)
        results[kind] = (trained.W, trained.b)
    figure_name = save_figure(figure(results), out, NAME)
    tensors = {"feature_probability": torch.tensor(PROBABILITIES)}
    rows = []
    for kind, (W, b) in results.items():
        tensors[f"{kind}.W"], tensors[f"{kind}.b"] = W, b
        rep, sup = counts(W)
        rows += [{"model": kind, "sparsity": round(1 - p, 6), "feature_probability": p,
                  "represented": r, "in_superposition": s}
                 for p, r, s in zip(PROBABILITIES, rep, sup)]
    data = [save_tensors(out, NAME, tensors), save_csv(out, NAME, rows)]
    return Section(NAME, "Superposition across sparsity: linear against ReLU output",
                   figure_name, data, checks(results["linear"][0], results["relu_output"][0]),
                   setting=f"n={N}, m={M}, importance {DECAY}^i, {config.inits} inits per "
                           f"sparsity, {config.sparsity_steps} steps; represented: "
                           f"||W_i|| > 0.5; in superposition: represented and "
                           f"sum_(j!=i) (W^_i . W_j)^2 > 0.1")
