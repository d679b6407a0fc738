"""Section 6: computation in superposition. The abs model y = ReLU(W_out ReLU(W_in x) + b),
target |x| for x in [-1, 1]: each |x_i| needs two neurons (ReLU(x) + ReLU(-x)). Dense
features: it computes about m/2 of them with monosemantic neurons; sparse features: it
computes more, with neurons that respond to several features (polysemantic).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from unsuperpose.generate.paper.common import (
    Check,
    Echo,
    Section,
    WeightedDistribution,
    save_csv,
    save_figure,
    save_tensors,
    sparsity_label,
    train_grid,
)
from unsuperpose.generate.paper.config import PaperConfig
from unsuperpose.generate.paper.privileged import neuron_kinds

N, M, DECAY = 100, 40, 0.8
PROBABILITIES = (1.0, 0.1, 0.01)  # S = 0, 0.9, 0.99
COMPUTED_FVE = 0.5  # a feature is computed when the model explains half the variance of |x_i|
PARTIAL_FVE = 0.25  # ... in part (one sign only, ReLU(x_i) without ReLU(-x_i), explains ~0.5)
EVAL_ROWS = 32768
NAME = "computation"


@torch.no_grad()
def explained_variance(model, probabilities, seed: int, rows: int = EVAL_ROWS) -> torch.Tensor:
    """[inst, n]: per feature, 1 - E[(|x_i| - y_i)^2] / Var(|x_i|) on fresh rows; 0 is the
    baseline of predicting |x_i|'s mean, 1 a perfect computation."""
    device = model.W.device
    dist = WeightedDistribution(n_features=model.n_features, feature_probability=tuple(probabilities),
                                value="signed_uniform")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = dist.sample(rows, gen, device)
    target = x.abs()
    mse = ((target - model(x)) ** 2).mean(0)
    return (1 - mse / target.var(0).clamp_min(1e-12)).cpu()


def effective_features(fve: torch.Tensor) -> torch.Tensor:
    """sum_i max(0, explained variance_i): how many features' worth of |x| the model computes."""
    return fve.clamp_min(0).sum(-1)


def checks(fve: torch.Tensor, W_in: torch.Tensor, probabilities=PROBABILITIES, m: int = M) -> list[Check]:
    computed = (fve > COMPUTED_FVE).sum(-1).tolist()
    partial = (fve > PARTIAL_FVE).sum(-1).tolist()
    effective = effective_features(fve).tolist()
    kinds = {k: v.sum(-1).tolist() for k, v in neuron_kinds(W_in).items()}
    labels = [sparsity_label(p) for p in probabilities]
    return [
        Check("dense: a few features computed, each by its own monosemantic neurons",
              f"{computed[0]} features computed (explained variance of |x_i| > {COMPUTED_FVE}), "
              f"{effective[0]:.1f} effective; neurons mono/poly/dead {kinds['monosemantic'][0]}/"
              f"{kinds['polysemantic'][0]}/{kinds['dead'][0]}",
              kinds["polysemantic"][0] <= max(1, m // 10)),
        Check("sparse: more features computed than by the dense model, with polysemantic neurons "
              "(computation in superposition)",
              "; ".join(f"{s}: {e:.1f} effective features ({c} with explained variance > "
                        f"{COMPUTED_FVE}, {q} > {PARTIAL_FVE}), {poly} of {m} neurons polysemantic"
                        for s, e, c, q, poly in zip(labels, effective, computed, partial,
                                                    kinds["polysemantic"])),
              effective[-1] > effective[0] and kinds["polysemantic"][-1] > m // 2),
    ]


def figure(fve: torch.Tensor, W_in: torch.Tensor, probabilities=PROBABILITIES):
    k = len(probabilities)
    kinds = neuron_kinds(W_in)
    fig, axes = plt.subplots(2, k, figsize=(4.6 * k, 6.2), gridspec_kw={"height_ratios": [1, 1.4]},
                             squeeze=False)
    lim = float(W_in.abs().max())
    for j, p in enumerate(probabilities):
        ax = axes[0, j]
        values = fve[j].clamp(-0.2, 1).numpy()
        ax.bar(np.arange(len(values)), values, width=1.0,
               color=np.where(values > COMPUTED_FVE, "#0072B2", "0.7"))
        ax.axhline(COMPUTED_FVE, color="#D55E00", lw=0.8, ls="--")
        ax.set_ylim(-0.2, 1.05)
        ax.set_title(f"{sparsity_label(p)}: {int((fve[j] > COMPUTED_FVE).sum())} computed, "
                     f"{float(effective_features(fve[j])):.1f} effective", fontsize=10)
        ax.set_xlabel("feature (importance 0.8^i)", fontsize=8)
        if j == 0:
            ax.set_ylabel("explained variance of $|x_i|$", fontsize=9)
        order = torch.argsort(W_in[j].abs().argmax(dim=-1) * 1.0 + kinds["dead"][j] * 1e3)
        ax = axes[1, j]
        image = ax.imshow(W_in[j][order].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto",
                          interpolation="nearest")
        ax.set_title(f"$W_{{in}}$: mono {int(kinds['monosemantic'][j].sum())}, poly "
                     f"{int(kinds['polysemantic'][j].sum())}, dead {int(kinds['dead'][j].sum())}",
                     fontsize=10)
        ax.set_xlabel("feature", fontsize=8)
        if j == 0:
            ax.set_ylabel("neuron (sorted by its top feature)", fontsize=9)
    fig.subplots_adjust(hspace=0.35)
    fig.colorbar(image, ax=axes[1].tolist(), shrink=0.8, label="weight")
    fig.suptitle(f"abs model, target |x|: n={N} features, m={M} neurons, importance {DECAY}$^i$",
                 fontsize=11)
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    trained = train_grid("abs", N, M, PROBABILITIES, steps=config.computation_steps,
                         batch_size=config.batch_size, lr=config.lr, seed=config.seed + 50,
                         device=config.device, importance_decay=DECAY, value="signed_uniform",
                         label=NAME, echo=echo)
    fve = explained_variance(trained.model, PROBABILITIES, config.seed + 51)
    W_in = trained.W
    figure_name = save_figure(figure(fve, W_in), out, NAME)
    kinds = neuron_kinds(W_in)
    rows = [{"sparsity": round(1 - p, 6), "feature": i, "importance": DECAY ** i,
             "explained_variance": float(fve[j, i]),
             "top_neuron_weight": float(W_in[j, :, i].abs().max())}
            for j, p in enumerate(PROBABILITIES) for i in range(N)]
    data = [save_tensors(out, NAME, {"W_in": W_in, "W_out": trained.W_out, "b": trained.b,
                                     "explained_variance": fve,
                                     "feature_probability": torch.tensor(PROBABILITIES),
                                     **{k: v.to(torch.uint8) for k, v in kinds.items()}}),
            save_csv(out, NAME, rows)]
    return Section(NAME, "Computation in superposition: the absolute-value model", figure_name,
                   data, checks(fve, W_in),
                   setting=f"abs, n={N}, m={M}, importance {DECAY}^i, x in [-1, 1], "
                           f"{config.computation_steps} steps; computed: explained variance of "
                           f"|x_i| > {COMPUTED_FVE} on {EVAL_ROWS} fresh rows (0: predicting its "
                           f"mean; computing one sign only gives ~0.5); effective features: "
                           f"the sum of the explained variances; neurons classified "
                           f"from W_in's rows as in the privileged-basis section")
