"""Section 5: superposition in a privileged basis. With a ReLU on the hidden layer the basis
is privileged: dense features get one neuron each (monosemantic neurons); sparse features are
packed into neurons that each respond to several features (polysemantic neurons).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from unsuperpose.generate.paper.common import (
    Check,
    Echo,
    Section,
    save_csv,
    save_figure,
    save_tensors,
    sparsity_label,
    train_grid,
)
from unsuperpose.generate.paper.config import PaperConfig

N, M, DECAY = 10, 5, 0.75
PROBABILITIES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.001)
MONOSEMANTIC_SHARE = 0.9
DEAD_NORM = 0.1
NAME = "privileged"


def neuron_kinds(W: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per neuron (row) of W [..., neurons, features]: `dead` (||row|| < 0.1), `monosemantic`
    (alive, and its largest-|weight| feature holds > 90% of the row's squared norm) or
    `polysemantic` (alive, the rest). Boolean masks [..., neurons]."""
    sq = W ** 2
    norm_sq = sq.sum(-1)
    dead = norm_sq.sqrt() < DEAD_NORM
    share = sq.max(dim=-1).values / norm_sq.clamp_min(1e-12)
    mono = ~dead & (share > MONOSEMANTIC_SHARE)
    return {"dead": dead, "monosemantic": mono, "polysemantic": ~dead & ~mono}


def kind_counts(W: torch.Tensor) -> dict[str, list[int]]:
    return {k: v.sum(-1).tolist() for k, v in neuron_kinds(W).items()}


DENSE_MONOSEMANTIC = 4
"""Dense (S=0): at least this many of the m=5 neurons monosemantic, each on a distinct one of
the m most important features."""
SPARSE_POLYSEMANTIC = 4
"""Sparse (S >= 0.99): at least this many neurons polysemantic at each such sparsity."""


def checks(W: torch.Tensor, probabilities=PROBABILITIES) -> list[Check]:
    counts = kind_counts(W)
    poly, mono, dead = counts["polysemantic"], counts["monosemantic"], counts["dead"]
    per_s = ", ".join(f"{sparsity_label(p)}: {a}/{b}/{c}" for p, a, b, c in
                      zip(probabilities, mono, poly, dead))
    d = W.shape[-2]
    mono_dense = neuron_kinds(W[0])["monosemantic"]
    top = W[0].abs().argmax(dim=-1)[mono_dense].tolist()  # the feature of each monosemantic neuron
    dense_ok = (mono[0] >= DENSE_MONOSEMANTIC and len(set(top)) == len(top)
                and all(f < d for f in top))
    sparse = [j for j, p in enumerate(probabilities) if p <= 0.01]   # S >= 0.99
    middle = [j for j, p in enumerate(probabilities) if 0.01 < p < 1]
    sparse_ok = bool(sparse) and all(poly[j] >= SPARSE_POLYSEMANTIC for j in sparse)
    falling = (max(mono[j] for j in sparse) < mono[0]
               and all(mono[j] <= mono[0] for j in middle))
    represented = (W.norm(dim=-2) > 0.5).sum(-1).tolist()
    return [
        Check(f"dense features (S=0) each get a monosemantic neuron: the m={d} most important "
              f"features on a neuron of their own",
              f"{mono[0]} of {len(W[0])} neurons monosemantic at S=0, on features "
              f"{sorted(top)} (need >= {DENSE_MONOSEMANTIC}, distinct, among the top {d})",
              dense_ok),
        Check("as features get sparser, polysemantic neurons appear (superposition in the "
              "neuron basis) and the monosemantic ones give way",
              f"monosemantic/polysemantic/dead per sparsity: {per_s} (need >= "
              f"{SPARSE_POLYSEMANTIC} polysemantic at every S >= 0.99, fewer monosemantic there "
              f"than at S=0, never more than at S=0)",
              dense_ok and sparse_ok and falling),
        Check("(note) sparse, the 5 neurons represent more than 5 features",
              f"features with ||W_i|| > 0.5 per sparsity: {represented}", None),
    ]


def figure(W: torch.Tensor, probabilities=PROBABILITIES):
    k = len(probabilities)
    counts = kind_counts(W)
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.4), squeeze=False)
    for j, (ax, p) in enumerate(zip(axes[0], probabilities)):
        lim = float(W[j].abs().max())  # per panel: the sparse models' weights are larger
        ax.imshow(W[j].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{sparsity_label(p)}, max |w| {lim:.2g}\nmono {counts['monosemantic'][j]}, "
                     f"poly {counts['polysemantic'][j]}, dead {counts['dead'][j]}", fontsize=9)
        ax.set_xlabel("feature", fontsize=8)
        ax.set_xticks(range(0, W.shape[-1], 2))
        ax.set_yticks(range(W.shape[-2]))
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.set_ylabel("neuron", fontsize=8)
    fig.suptitle(f"relu_hidden model h = ReLU(Wx): W (neurons x features), n={N}, m={M}, "
                 f"importance {DECAY}$^i$ (red +, blue -, scaled per panel)", fontsize=10, y=1.08)
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    trained = train_grid("relu_hidden", N, M, PROBABILITIES, steps=config.privileged_steps,
                         batch_size=config.privileged_batch_size, lr=config.privileged_lr,
                         seed=config.seed + 40,
                         device=config.device, inits=config.inits, importance_decay=DECAY,
                         label=NAME, echo=echo)
    W = trained.W
    figure_name = save_figure(figure(W), out, NAME)
    kinds = neuron_kinds(W)
    rows = [{"sparsity": round(1 - p, 6), "feature_probability": p,
             **{k: int(v[j].sum()) for k, v in kinds.items()},
             "features_represented": int((W[j].norm(dim=0) > 0.5).sum())}
            for j, p in enumerate(PROBABILITIES)]
    data = [save_tensors(out, NAME, {"W": W, "b": trained.b,
                                     "feature_probability": torch.tensor(PROBABILITIES),
                                     **{k: v.to(torch.uint8) for k, v in kinds.items()}}),
            save_csv(out, NAME, rows)]
    return Section(NAME, "Superposition in a privileged basis (ReLU hidden layer)", figure_name,
                   data, checks(W),
                   setting=f"relu_hidden, n={N}, m={M}, importance {DECAY}^i, {config.inits} "
                           f"inits per sparsity, {config.privileged_steps} steps (lr "
                           f"{config.privileged_lr:g}, batch {config.privileged_batch_size}); "
                           f"monosemantic: "
                           f"a live neuron whose largest-|weight| feature holds > "
                           f"{MONOSEMANTIC_SHARE:.0%} of its squared weight norm; dead: norm < "
                           f"{DEAD_NORM}")

