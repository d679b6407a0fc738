"""Counting features when their number is unknown: the three estimators of Sharkey, Braun and
Millidge (2022), read off a sweep over dictionary size (`sae.dict_ratio` or `sae.n_components`).

For every curve (one instance x method x the other swept settings, seeds included), with the
dictionary sizes n_1 < n_2 < ...:
- dead latents: latents start dying once the dictionary has more atoms than features; the
  estimate is the number of live latents at the first size whose dead fraction exceeds `tol`
  (the largest size's live count when none does: a lower bound).
- loss knee: FVU against log2(size) falls steeply until the size reaches the count and slowly
  after; the estimate is the size farthest below the chord from the first to the last point.
- consecutive MMCS: MMCS(D_i, D_i+1), how well a dictionary's atoms reappear in the next larger
  one, peaks where both hold the true features; the estimate is the size with the highest.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from unsuperpose.data import files
from unsuperpose.evaluate.sweep.grid import Grid

SIZE_AXES = ("sae.dict_ratio", "sae.n_components")
COUNTING_CSV, COUNTING_FIGURE = files.COUNTING_CSV, files.COUNTING_FIGURE  # aliases, for importers
ESTIMATORS = ("dead_latents", "loss_knee", "consecutive_mmcs")
DEAD_TOL = 0.05


def dead_latent_estimate(sizes: np.ndarray, dead: np.ndarray, tol: float = DEAD_TOL) -> float:
    """sizes, dead: [n_sizes], sizes increasing. Live latents at the first size whose dead
    fraction exceeds tol; else the live latents of the largest."""
    live = sizes - dead
    over = np.flatnonzero(dead / sizes > tol)
    return float(live[over[0]] if len(over) else live[-1])


def knee_estimate(sizes: np.ndarray, loss: np.ndarray) -> float:
    """The size whose (log2 size, loss) point lies farthest below the chord between the first
    and last points, both axes scaled to [0, 1] (the Kneedle idea); NaN with < 3 sizes."""
    if len(sizes) < 3 or not np.all(np.isfinite(loss)):
        return math.nan
    x = np.log2(sizes)
    x = (x - x[0]) / (x[-1] - x[0])
    span = loss.max() - loss.min()
    y = (loss - loss.min()) / span if span > 0 else np.zeros_like(loss)
    chord = y[0] + (y[-1] - y[0]) * x
    return float(sizes[int(np.argmax(chord - y))])


def consecutive_mmcs_estimate(sizes: np.ndarray, mmcs_next: np.ndarray) -> float:
    """mmcs_next: [n_sizes - 1], MMCS of each dictionary against the next larger one; the size
    with the highest. NaN with < 2 sizes."""
    if len(mmcs_next) == 0:
        return math.nan
    return float(sizes[int(np.nanargmax(mmcs_next))])


def curves(grid: Grid, rows: list[dict]) -> dict[tuple, list[dict]]:
    """The aggregate rows grouped into size curves, each sorted by size; keys are the values of
    every swept column but the size axes, then instance and method."""
    keys = [c for c in grid.columns if c not in SIZE_AXES] + ["instance", "method"]
    out: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        out[tuple(f"{k.split('.')[-1]}={row.get(k)}" for k in keys)].append(row)
    return {k: sorted(v, key=lambda r: r["n_components"]) for k, v in out.items()
            if len({r["n_components"] for r in v}) > 1}


def _components(sweep_dir: Path, row: dict) -> np.ndarray:
    from unsuperpose.sae import load

    point = Path(sweep_dir) / files.SWEEP_POINTS_DIR / row["point"]
    folder = files.sae_dir(point, row["instance"], row["method"])
    return np.asarray(load(folder).components_, dtype=np.float32)


def count_features(grid: Grid, rows: list[dict], sweep_dir: Path) -> list[dict]:
    """One record per curve: the true count (represented directions), every estimate, and the
    per-size values the figure draws."""
    from unsuperpose.evaluate.metrics import mmcs

    if not any(axis in grid.columns for axis in SIZE_AXES):
        return []
    records = []
    for key, curve in curves(grid, rows).items():
        sizes = np.array([r["n_components"] for r in curve], dtype=float)
        dead = np.array([(r["dead_fraction"] or 0.0) * r["n_components"] for r in curve])
        fvu = np.array([math.nan if r["fvu"] is None else r["fvu"] for r in curve])
        atoms = [_components(sweep_dir, r) for r in curve]
        mmcs_next = np.array([mmcs(a, b) for a, b in zip(atoms, atoms[1:])])
        records.append({
            "curve": key, "instance": curve[0]["instance"], "method": curve[0]["method"],
            "true_count": curve[0]["n_represented"],
            "dead_latents": dead_latent_estimate(sizes, dead),
            "loss_knee": knee_estimate(sizes, fvu),
            "consecutive_mmcs": consecutive_mmcs_estimate(sizes, mmcs_next),
            "sizes": sizes, "dead": dead, "fvu": fvu, "mmcs_next": mmcs_next})
    return records


def plot_counting(records: list[dict]):
    """Three panels against dictionary size: dead latents, FVU, MMCS with the next size; a line
    per curve in its method's colour, stars at the estimates, dotted lines at the true counts."""
    from unsuperpose.evaluate.figures import method_style, plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    fig.subplots_adjust(left=0.06, right=0.86, bottom=0.16, top=0.84, wspace=0.3)
    panels = [("dead", "dead_latents", "dead latents"), ("fvu", "loss_knee", "FVU"),
              ("mmcs_next", "consecutive_mmcs", "MMCS with the next larger dictionary")]
    for ax, (values, estimator, label) in zip(axes, panels):
        seen = set()
        for rec in records:
            style = method_style(rec["method"])
            x = rec["sizes"][: len(rec[values])]
            ax.plot(x, rec[values], color=style["color"], ls=style["linestyle"], marker=style["marker"],
                    ms=4, lw=1.2, alpha=0.8, label=rec["method"] if rec["method"] not in seen else None)
            seen.add(rec["method"])
            estimate = rec[estimator]
            if math.isfinite(estimate) and np.all(np.isfinite(rec[values])):
                ax.plot(estimate, np.interp(estimate, x, rec[values]), "*", ms=13,
                        color=style["color"], mec="black", mew=0.5)
        for true in sorted({r["true_count"] for r in records}):
            ax.axvline(true, color="0.4", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dictionary size (atoms); dotted: true count")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("Counting features from a sweep over dictionary size (stars: estimates)")
    return fig


def counting_table(records: list[dict]) -> list[dict]:
    """The CSV rows: curve key fields, the true count and each estimate."""
    return [{"instance": r["instance"], "method": r["method"], "curve": ", ".join(r["curve"]),
             "true_count": r["true_count"], **{e: r[e] for e in ESTIMATORS}} for r in records]
