"""Section 3: phase diagrams. One extra feature of relative importance r beside features of
importance 1, all firing with density p = 1 - S; the extra feature ends up not represented,
with a dimension of its own, or in superposition (antipodal to another feature).

Each cell of the (r, p) grid is an instance (the importance per instance comes in through
WeightedDistribution); several random inits per cell, the lowest held-out loss kept.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap

from unsuperpose.generate.paper.common import (
    Check,
    Echo,
    Section,
    interference,
    represented,
    save_csv,
    save_figure,
    save_tensors,
    train_grid,
    SUPERPOSITION_INTERFERENCE,
)
from unsuperpose.generate.paper.config import PaperConfig

NOT_REPRESENTED, DEDICATED, SUPERPOSITION = 0, 1, 2
CLASSES = ("not represented", "dedicated dimension", "superposition")
SETTINGS = ((2, 1), (3, 2))  # (n, m); the extra feature is the last one
IMPORTANCE_RANGE = (0.1, 10.0)
DENSITY_RANGE = (0.01, 1.0)
NAME = "phase"


def classify(W: torch.Tensor, extra: int = -1) -> torch.Tensor:
    """The phase of feature `extra` of each W [..., d, n]: NOT_REPRESENTED (||W_e|| <= 0.5),
    SUPERPOSITION (represented, sum_{j != e} (W^_e . W_j)^2 > 0.1) or DEDICATED."""
    rep = represented(W)[..., extra]
    sup = interference(W)[..., extra] > SUPERPOSITION_INTERFERENCE
    code = torch.where(sup, SUPERPOSITION, DEDICATED)
    return torch.where(rep, code, torch.full_like(code, NOT_REPRESENTED))


def reference_phase(r: float, p: float) -> int:
    """The approximate shape of the paper's n=2, m=1 diagram, which we draw as the reference
    (its figure also has this shape for n=3, m=2): at high density the extra feature takes
    the dimension when r > 1 and is dropped when r < 1; at low density a superposition wedge
    opens around r = 1 and widens as density falls. The wedge's edges here come from comparing
    the losses of the three configurations for x ~ U[0, 1] with unit weights and no bias:
    dropping a feature costs I * (p/3 - p^2/4), an antipodal pair (1 + r) p^2 / 6, so
    superposition wins below p = 4r / (2 + 5r) (against dropping it, r < 1) and below
    p = 4 / (5 + 2r) (against giving it the dimension, r > 1): a vertex near p = 0.57 at r = 1,
    arms p ~ 2r and p ~ 2/r."""
    if p < min(4 * r / (2 + 5 * r), 4 / (5 + 2 * r)):
        return SUPERPOSITION
    return DEDICATED if r > 1 else NOT_REPRESENTED


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(relative importances, densities), log-spaced, `size` each."""
    return (np.logspace(*np.log10(IMPORTANCE_RANGE), size),
            np.logspace(*np.log10(DENSITY_RANGE), size))


def reference_curve(r: np.ndarray) -> np.ndarray:
    """The density below which the reference puts superposition, per relative importance."""
    return np.minimum(4 * r / (2 + 5 * r), 4 / (5 + 2 * r))


def checks(phases: dict[tuple[int, int], np.ndarray], rs: np.ndarray, ps: np.ndarray) -> list[Check]:
    """phases: {(n, m): [len(rs), len(ps)] class codes}."""
    out = []
    reference = np.array([[reference_phase(r, p) for p in ps] for r in rs])
    dense = int(np.argmax(ps))
    sparse = int(np.argmin(ps))
    middle = int(np.argmin(np.abs(np.log(rs))))
    for (n, m), phase in phases.items():
        off_one = np.abs(np.log10(rs)) > 0.15  # rows clearly away from r = 1
        want = np.where(rs > 1, DEDICATED, NOT_REPRESENTED)
        dense_ok = phase[off_one, dense] == want[off_one]
        agree = float((phase == reference).mean())
        out += [
            Check(f"n={n}, m={m}, dense (p=1): the extra feature gets a dimension when r > 1 "
                  f"and is not represented when r < 1",
                  f"{int(dense_ok.sum())}/{int(off_one.sum())} cells away from r=1 agree",
                  bool(dense_ok.all())),
            Check(f"n={n}, m={m}, sparse (p={ps[sparse]:g}): superposition near r = 1",
                  f"r={rs[middle]:.2g} is {CLASSES[phase[middle, sparse]]}; superposition "
                  f"in {int((phase[:, sparse] == SUPERPOSITION).sum())}/{len(rs)} cells of that column",
                  bool(phase[middle, sparse] == SUPERPOSITION)),
            Check(f"n={n}, m={m}: the regions follow the reference boundary drawn",
                  f"{agree:.0%} of cells in the reference's region", None),
        ]
    return out


def _edges(v: np.ndarray) -> np.ndarray:
    """Cell edges of a log-spaced grid (midpoints in log, half a step beyond the ends)."""
    lv = np.log(v)
    step = np.diff(lv)
    return np.exp(np.concatenate([[lv[0] - step[0] / 2], lv[:-1] + step / 2, [lv[-1] + step[-1] / 2]]))


def figure(phases: dict[tuple[int, int], np.ndarray], rs: np.ndarray, ps: np.ndarray):
    cmap = ListedColormap(["#d9d9d9", "#0072B2", "#D55E00"])
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    fig, axes = plt.subplots(1, len(phases), figsize=(5.2 * len(phases), 4.4), squeeze=False)
    r_edges, p_edges = _edges(rs), _edges(ps)
    r_fine = np.logspace(np.log10(r_edges[0]), np.log10(r_edges[-1]), 200)
    for ax, ((n, m), phase) in zip(axes[0], phases.items()):
        ax.pcolormesh(p_edges, r_edges, phase, cmap=cmap, norm=norm)
        curve = reference_curve(r_fine)
        ax.plot(curve, r_fine, "k--", lw=1.5)
        ax.plot([reference_curve(np.array([1.0]))[0], p_edges[-1]], [1, 1], "k--", lw=1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(p_edges[-1], p_edges[0])  # dense on the left, as in the paper
        ax.set_xlabel("feature density 1 - S")
        ax.set_ylabel("relative importance of the extra feature")
        ax.set_title(f"n={n}, m={m}: the extra feature (last)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="reference boundary"))
    fig.legend(handles, list(CLASSES) + ["approx. paper boundary"], loc="lower center", ncol=4,
               frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def run(config: PaperConfig, out: Path, echo: Echo = lambda s: None) -> Section:
    rs, ps = grid(config.phase_grid)
    cells_r = np.repeat(rs, len(ps))  # cell = ri * len(ps) + pi
    cells_p = np.tile(ps, len(rs))
    phases, tensors, rows = {}, {"relative_importance": torch.tensor(rs),
                                 "feature_density": torch.tensor(ps)}, []
    for offset, (n, m) in enumerate(SETTINGS):
        importance = [[1.0] * (n - 1) + [float(r)] for r in cells_r]
        trained = train_grid("relu_output", n, m, cells_p.tolist(), steps=config.phase_steps,
                             batch_size=config.phase_batch_size, lr=config.lr,
                             seed=config.seed + 20 + offset, device=config.device,
                             inits=config.phase_inits, importance=importance,
                             label=f"{NAME} n={n} m={m}", echo=echo)
        phase = classify(trained.W).view(len(rs), len(ps)).numpy()
        phases[(n, m)] = phase
        tensors[f"n{n}m{m}.W"] = trained.W.view(len(rs), len(ps), m, n)
        tensors[f"n{n}m{m}.b"] = trained.b.view(len(rs), len(ps), n)
        tensors[f"n{n}m{m}.phase"] = torch.from_numpy(phase)
        rows += [{"n": n, "m": m, "relative_importance": float(r), "feature_density": float(p),
                  "phase": CLASSES[int(c)], "reference": CLASSES[reference_phase(r, p)],
                  "extra_norm": float(w[:, -1].norm()), "loss": float(loss)}
                 for r, p, c, w, loss in zip(cells_r, cells_p, phase.reshape(-1), trained.W,
                                             trained.loss)]
    figure_name = save_figure(figure(phases, rs, ps), out, NAME)
    data = [save_tensors(out, NAME, tensors), save_csv(out, NAME, rows)]
    return Section(NAME, "Phase diagrams: not represented, dedicated, superposition",
                   figure_name, data, checks(phases, rs, ps),
                   setting=f"relu_output, {config.phase_grid}x{config.phase_grid} cells "
                           f"(r in [0.1, 10], density in [0.01, 1], log grids), "
                           f"{config.phase_inits} inits per cell (lowest loss kept), "
                           f"{config.phase_steps} steps, batch {config.phase_batch_size}")
