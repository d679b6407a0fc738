"""Section 4: feature geometry. n=400 equally important features in m=30 dimensions, one
instance per density: the dimensions per feature m / ||W||_F^2 fall with sparsity but stick
at 1/2 (antipodal pairs) over a range of densities, and each feature's dimensionality D_i
clusters at a few fractions (1, 3/4, 2/3, 1/2, 2/5, 1/3) instead of spreading evenly.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from unsuperpose.generate.paper.common import (
    STICKY_FRACTIONS,
    Check,
    Echo,
    Section,
    represented,
    save_csv,
    save_figure,
    save_tensors,
    train_grid,
)
from unsuperpose.generate.paper.config import PaperConfig
from unsuperpose.models.ground_truth import feature_dimensionality

MAX_INVERSE_DENSITY = 1000.0  # S up to 0.999
PLATEAU = (0.45, 0.55)  # m / ||W||_F^2 counted as "at 1/2"
PLATEAU_REGION = (2.2, 5.0)
"""1/(1-S) where n=400, m=30 sits at 1/2 (the paper's figure; ours from 2.7 to 4.2 at 2000
steps): half the instances are placed here, the other half span 1 to MAX_INVERSE_DENSITY."""
PLATEAU_RUN = 4
"""The check: at least this many consecutive densities in PLATEAU..."""
PLATEAU_SPAN = 1.35
"""...spanning at least this factor in 1/(1-S). A curve falling through 1/2 at the slope it
has elsewhere (~0.6 per e-fold of 1/(1-S)) stays within +-0.05 of it over a factor ~1.2."""
STICKY_TOLERANCE = 0.05
NAME = "geometry"


def densities(instances: int) -> np.ndarray:
    """Feature densities 1 - S, falling: half the instances log-spaced in 1/(1-S) from 1 to
    MAX_INVERSE_DENSITY (those falling in PLATEAU_REGION dropped), the rest log-spaced over
    PLATEAU_REGION, where the curve sticks at 1/2 (a plain log grid puts one or two there)."""
    coarse = np.logspace(0, np.log10(MAX_INVERSE_DENSITY), instances - instances // 2)
    low, high = PLATEAU_REGION
    coarse = coarse[(coarse < low / 1.05) | (coarse > high * 1.05)]  # the fine part covers those
    fine = np.geomspace(low, high, instances - len(coarse))
    return 1.0 / np.sort(np.concatenate([coarse, fine]))


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of consecutive True values."""
    best, start = (0, 0), None
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            best = max(best, (i - start, -start))
            start = None
    return -best[1], best[0]


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ||W||_F^2 of each W [inst, d, n]."""
    return W.shape[-2] / (W ** 2).sum(dim=(-2, -1))


def near_sticky(D: torch.Tensor, tolerance: float = STICKY_TOLERANCE) -> torch.Tensor:
    """Whether each D_i lies within `tolerance` of one of the sticky fractions."""
    fractions = torch.tensor(STICKY_FRACTIONS, dtype=D.dtype)
    return (D[..., None] - fractions).abs().min(dim=-1).values <= tolerance


def checks(W: torch.Tensor, probability: np.ndarray) -> list[Check]:
    dims = dimensions_per_feature(W).numpy()
    inv = 1 / probability
    on = (dims >= PLATEAU[0]) & (dims <= PLATEAU[1])
    D = feature_dimensionality(W.transpose(-1, -2))
    rep = represented(W)
    in_range = rep & (D >= min(STICKY_FRACTIONS) - STICKY_TOLERANCE)
    sticky = near_sticky(D)
    frac_range = float((sticky & in_range).sum() / in_range.sum().clamp_min(1))
    frac_tight = float((near_sticky(D, 0.02) & in_range).sum() / in_range.sum().clamp_min(1))
    frac_all = float((sticky & rep).sum() / rep.sum().clamp_min(1))
    start, run = longest_run(on)
    span = float(inv[start + run - 1] / inv[start]) if run else 0.0
    plateau = (f"{run} consecutive densities at m/||W||_F^2 in [{PLATEAU[0]}, {PLATEAU[1]}] "
               f"(mean {dims[start:start + run].mean():.3f}), 1/(1-S) from {inv[start]:.3g} to "
               f"{inv[start + run - 1]:.3g} (a factor {span:.2f}); {int(on.sum())} of {len(dims)} "
               f"in all (need >= {PLATEAU_RUN} consecutive over a factor >= {PLATEAU_SPAN})"
               if run else
               f"no density in [{PLATEAU[0]}, {PLATEAU[1]}]; closest "
               f"{dims[np.argmin(np.abs(dims - 0.5))]:.3f}")
    return [
        Check("m/||W||_F^2 sticks at 1/2 (antipodal pairs) over a range of density", plateau,
              run >= PLATEAU_RUN and span >= PLATEAU_SPAN),
        Check(f"feature dimensionalities D_i cluster at {', '.join(f'{f:.2g}' for f in STICKY_FRACTIONS)}",
              f"{frac_range:.0%} of the represented features with D_i >= 0.28 lie within "
              f"{STICKY_TOLERANCE} of one, {frac_tight:.0%} within 0.02 ({int(in_range.sum())} "
              f"features); {frac_all:.0%} of all "
              f"represented features (the sparsest models put every feature below 1/3)",
              frac_range >= 0.5),
    ]


def figure(W: torch.Tensor, probability: np.ndarray):
    inv = 1 / probability
    dims = dimensions_per_feature(W).numpy()
    D = feature_dimensionality(W.transpose(-1, -2))
    rep = represented(W)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 7.5), sharex=True)
    ax1.plot(inv, dims, "o-", color="#0072B2", ms=4)
    ax1.axhline(0.5, color="#D55E00", ls="--", lw=1, label="1/2")
    ax1.axhline(W.shape[-2] / W.shape[-1], color="0.5", ls=":", lw=1, label="m/n")
    ax1.set_ylabel("dimensions per feature  $m / \\|W\\|_F^2$")
    ax1.set_ylim(0, 1.1)
    ax1.legend(frameon=False)
    ax1.set_title(f"n={W.shape[-1]} equally important features, m={W.shape[-2]} dimensions")
    rng = np.random.default_rng(0)
    for j in range(len(inv)):
        d = D[j][rep[j]].numpy()
        jitter = inv[j] * np.exp(rng.uniform(-0.06, 0.06, len(d)))
        ax2.scatter(jitter, d, s=4, alpha=0.35, color="#0072B2", linewidths=0)
    for f in STICKY_FRACTIONS:
        ax2.axhline(f, color="#D55E00", lw=0.7, ls="--")
        ax2.text(1.01, f, f"{f:.2g}", va="center", fontsize=8, color="#D55E00",
                 transform=ax2.get_yaxis_transform())
    ax2.set_xscale("log")
    ax2.set_ylim(0, 1.1)
    ax2.set_xlabel("1 / (1 - S)")
    ax2.set_ylabel("feature dimensionality $D_i$ (represented features)")
    fig.tight_layout()
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    p = densities(config.instances)
    inside = (1 / p >= PLATEAU_REGION[0] * (1 - 1e-9)) & (1 / p <= PLATEAU_REGION[1] * (1 + 1e-9))
    n_coarse = int((~inside).sum())
    n, m = config.geometry_n_features, config.geometry_d_hidden
    trained = train_grid("relu_output", n, m, p.tolist(), steps=config.geometry_steps,
                         batch_size=config.geometry_batch_size, lr=config.lr,
                         seed=config.seed + 30, device=config.device, label=NAME, echo=echo)
    W = trained.W
    D = feature_dimensionality(W.transpose(-1, -2))
    figure_name = save_figure(figure(W, p), out, NAME)
    dims = dimensions_per_feature(W)
    data = [save_tensors(out, NAME, {"W": W, "b": trained.b, "feature_probability": torch.tensor(p),
                                     "dimensionality": D, "dimensions_per_feature": dims}),
            save_csv(out, NAME, [{"feature_probability": float(pj), "inverse_density": float(1 / pj),
                                  "dimensions_per_feature": float(dj),
                                  "represented": int(represented(w).sum()),
                                  "loss": float(loss)}
                                 for pj, dj, w, loss in zip(p, dims, W, trained.loss)])]
    return Section(NAME, "Feature geometry: dimensions per feature", figure_name, data,
                   checks(W, p),
                   setting=f"relu_output, n={n}, m={m}, importance 1, {config.instances} densities: "
                           f"{n_coarse} log-spaced in 1/(1-S) from 1 to "
                           f"{MAX_INVERSE_DENSITY:g}, {len(p) - n_coarse} from {PLATEAU_REGION[0]:g} "
                           f"to {PLATEAU_REGION[1]:g} (the plateau), "
                           f"{config.geometry_steps} steps, batch {config.geometry_batch_size}")
