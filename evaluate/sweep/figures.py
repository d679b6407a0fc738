"""The sweep's figures, drawn from the aggregate table's rows: recovery against feature
probability (the phase-diagram view of Approach 2), recovery against dictionary ratio, and
the FVU-L0 frontier; one line per method in the report's colours, seeds as mean ± std bars,
one panel per combination of the other swept settings."""
from __future__ import annotations

import math
from pathlib import Path

from evaluate.figures import DPI, method_style, plt
from evaluate.sweep.aggregate import group_stats, recovered_columns, setting_columns
from evaluate.sweep.grid import Grid
from matplotlib.figure import Figure

PROBABILITY_FIGURE = "recovery_vs_probability.png"
DICT_RATIO_FIGURE = "recovery_vs_dict_ratio.png"
FRONTIER_FIGURE = "fvu_l0_frontier.png"
PANEL_SIZE = (4.2, 3.4)


def _panels(rows: list[dict], keys: list[str]) -> list[tuple]:
    return sorted({tuple(str(r.get(k)) for k in keys) for r in rows})


def _grid(n: int) -> tuple[Figure, list]:
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(PANEL_SIZE[0] * cols + 1.6, PANEL_SIZE[1] * nrows + 0.8),
                             squeeze=False, constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _title(keys: list[str], panel: tuple) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, panel)) or "all points"


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def plot_metric_vs(rows: list[dict], x: str, metric: str, panel_keys: list[str], xlabel: str,
                   ylabel: str, title: str, logx: bool) -> Figure:
    """Per panel (a combination of `panel_keys`), per method: mean ± std (over the rows that
    share everything else, i.e. the seeds) of `metric` against `x`."""
    panels = _panels(rows, panel_keys)
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        sub = [r for r in rows if tuple(str(r.get(k)) for k in panel_keys) == panel]
        for method in _methods(sub):
            stats = group_stats([r for r in sub if r["method"] == method], [x], metric)
            points = sorted((k[0], *v) for k, v in stats.items())
            if points:
                xs, mean, std, _ = zip(*points)
                ax.errorbar(xs, mean, yerr=std, label=method, capsize=3, lw=1.6, ms=5,
                            **method_style(method))
        if logx:
            ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(_title(panel_keys, panel), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle(title)
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (l0, fvu) points that no other point beats on both (lower is better), by l0."""
    front, best = [], math.inf
    for l0, fvu in sorted(points):
        if fvu < best:
            front.append((l0, fvu))
            best = fvu
    return front


def plot_frontier(rows: list[dict], setting_keys: list[str]) -> Figure:
    """FVU against L0, one panel per instance feature probability: a point per setting and
    method (mean ± std over seeds on both axes), each method's Pareto front as a line."""
    panels = _panels(rows, ["feature_probability"])
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        sub = [r for r in rows if str(r.get("feature_probability")) == panel[0]]
        for method in _methods(sub):
            mine = [r for r in sub if r["method"] == method]
            l0 = group_stats(mine, setting_keys, "l0")
            fvu = group_stats(mine, setting_keys, "fvu")
            both = [k for k in l0 if k in fvu]
            if not both:
                continue
            style = method_style(method)
            ax.errorbar([l0[k][0] for k in both], [fvu[k][0] for k in both],
                        xerr=[l0[k][1] for k in both], yerr=[fvu[k][1] for k in both],
                        ls="none", marker=style["marker"], color=style["color"], capsize=3,
                        label=method)
            front = pareto_front([(l0[k][0], fvu[k][0]) for k in both])
            ax.plot(*zip(*front), color=style["color"], ls=style["linestyle"], lw=1.2)
        ax.set_xlabel("L0 (active atoms per row)")
        ax.set_ylabel("FVU (fraction of variance unexplained)")
        ax.set_title(f"feature probability {panel[0]}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("FVU–L0 frontier per method (lines: Pareto front)")
    return fig


def save_sweep_figures(grid: Grid, rows: list[dict], folder: Path) -> list[str]:
    """Draw the figures the sweep has the data for; returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (PROBABILITY_FIGURE, DICT_RATIO_FIGURE, FRONTIER_FIGURE):  # none left from before
        (folder / name).unlink(missing_ok=True)
    written = []
    if not rows:
        return written
    recovered = recovered_columns(grid)[-1]
    # a method is a line and the instance's own probability a column, not a panel each
    settings = [c for c in setting_columns(grid)
                if not c.startswith("sae.methods") and c != "generate.feature_probability"]
    label = f"fraction recovered (matched cos ≥ {recovered.split('_', 1)[1]})"

    def save(name: str, fig: Figure) -> None:
        fig.savefig(folder / name, dpi=DPI)
        plt.close(fig)
        written.append(name)

    if len({r["feature_probability"] for r in rows}) > 1:
        save(PROBABILITY_FIGURE, plot_metric_vs(
            rows, "feature_probability", recovered, settings,
            "feature probability 1 − S (log scale)", label,
            "Recovery against feature probability, per method", logx=True))
    if len({r["dict_ratio"] for r in rows}) > 1:
        save(DICT_RATIO_FIGURE, plot_metric_vs(
            rows, "dict_ratio", recovered,
            [c for c in settings if c != "sae.dict_ratio"] + ["feature_probability"],
            "dictionary ratio (atoms per represented true direction)", label,
            "Recovery against dictionary size, per method", logx=False))
    if any(r.get("l0") is not None for r in rows):
        save(FRONTIER_FIGURE, plot_frontier(rows, settings))
    return written
