"""The sweep's figures, drawn from the aggregate table's rows: recovery against feature
probability (the phase-diagram view of Approach 2), recovery against dictionary ratio, and
the FVU-L0 frontier; one line per method in the report's colours, seeds as mean ± std bars,
one panel per combination of the other swept settings; and, where settings other than the
probability are swept, a phase diagram: per method, recovery over probability x setting."""
from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from unsuperpose.data import files
from unsuperpose.evaluate.figures import DPI, method_style, plt
from unsuperpose.evaluate.sweep.grid import Grid
from unsuperpose.evaluate.sweep.table import group_stats, recovered_columns, setting_columns

SWEEP_FIGURES = (files.SWEEP_PROBABILITY_FIGURE, files.SWEEP_PHASE_FIGURE,
                 files.SWEEP_DICT_RATIO_FIGURE, files.SWEEP_FRONTIER_FIGURE)
# aliases of the data.files names, for the modules that import them from here
PROBABILITY_FIGURE, PHASE_FIGURE, DICT_RATIO_FIGURE, FRONTIER_FIGURE = SWEEP_FIGURES
AXES_SIZE = (3.4, 2.6)  # inches, one panel's plotting area


def _panels(rows: list[dict], keys: list[str]) -> list[tuple]:
    return sorted({tuple(str(r.get(k)) for k in keys) for r in rows})


def _grid(n: int, axes_size: tuple[float, float] = AXES_SIZE,
          left: float = 0.8) -> tuple[Figure, list]:
    """n panels, up to 3 a row, room on the right for a legend or colorbar; margins set in
    inches (constrained layout took 40% of the sweep's drawing time)."""
    cols, gap_w, gap_h, right, bottom, top = min(3, n), 0.9, 0.9, 1.7, 0.6, 0.7
    nrows = -(-n // cols)
    w = left + cols * axes_size[0] + (cols - 1) * gap_w + right
    h = bottom + nrows * axes_size[1] + (nrows - 1) * gap_h + top
    fig, axes = plt.subplots(nrows, cols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=gap_w / axes_size[0], hspace=gap_h / axes_size[1])
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


def plot_phase_diagram(rows: list[dict], settings: list[str], metric: str, label: str) -> Figure:
    """Per method a heatmap of `metric` (mean over seeds): columns the instances' feature
    probabilities, rows every combination of the other swept `settings`."""
    methods = _methods(rows)
    stats = group_stats(rows, ["method", "feature_probability"] + settings, metric)
    xs = sorted({k[1] for k in stats})
    ys = sorted({k[2:] for k in stats}, key=lambda y: tuple(map(str, y)))
    ylabels = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(settings, y)) for y in ys]
    fig, axes = _grid(len(methods), (max(2.4, 0.6 * len(xs)), max(1.8, 0.35 * len(ys))),
                      left=0.3 + 0.075 * max(map(len, ylabels)))
    for ax, method in zip(axes, methods):
        cells = [[stats.get((method, x, *y), (math.nan,))[0] for x in xs] for y in ys]
        image = ax.imshow(cells, cmap="cividis", vmin=0, vmax=1, aspect="auto", origin="lower")
        for i, row in enumerate(cells):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.5 else "white")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=8)
        ax.set_yticks(range(len(ys)), ylabels, fontsize=8)
        ax.set_xlabel("feature probability 1 − S")
        ax.set_title(method, color=method_style(method)["color"], fontweight="bold")
    w, h = fig.get_size_inches()
    fig.colorbar(image, cax=fig.add_axes((1 - 1.2 / w, 0.6 / h, 0.15 / w, 1 - 1.3 / h)), label=label)
    fig.suptitle("Phase diagram: recovery by feature probability and setting")
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
    for name in SWEEP_FIGURES:  # none left from before
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
        save(files.SWEEP_PROBABILITY_FIGURE, plot_metric_vs(
            rows, "feature_probability", recovered, settings,
            "feature probability 1 − S (log scale)", label,
            "Recovery against feature probability, per method", logx=True))
    varying = [c for c in settings if len({str(r.get(c)) for r in rows}) > 1]
    if len({r["feature_probability"] for r in rows}) > 1 and varying:
        save(files.SWEEP_PHASE_FIGURE, plot_phase_diagram(
            rows, varying, recovered, f"recovered at cos ≥ {recovered.split('_', 1)[1]}"))
    if len({r["dict_ratio"] for r in rows}) > 1:
        save(files.SWEEP_DICT_RATIO_FIGURE, plot_metric_vs(
            rows, "dict_ratio", recovered,
            [c for c in settings if c != "sae.dict_ratio"] + ["feature_probability"],
            "dictionary ratio (atoms per represented true direction)", label,
            "Recovery against dictionary size, per method", logx=False))
    if any(r.get("l0") is not None for r in rows):
        save(files.SWEEP_FRONTIER_FIGURE, plot_frontier(rows, settings))
    return written
