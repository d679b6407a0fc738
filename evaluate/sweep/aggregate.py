"""One table over a sweep: a row per finished point x instance x method, with the swept
values and the key metrics of that point's evaluate/metrics.json; and its summary.md."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from unsuperpose.data import files
from unsuperpose.data.files import read_csv  # noqa: F401 (an alias, for importers: reads aggregate.csv back)
from unsuperpose.evaluate.chance import CHANCE
from unsuperpose.evaluate.figures import plt
from unsuperpose.evaluate.oracle import ORACLE
from unsuperpose.evaluate.sweep import figures as sweep_figures  # looked up when called: tests stub it
from unsuperpose.evaluate.sweep.counting import ESTIMATORS, count_features, counting_table, plot_counting
from unsuperpose.evaluate.sweep.grid import Grid
from unsuperpose.evaluate.sweep.runner import is_done, metrics_problem, point_dir
from unsuperpose.evaluate.sweep.table import (
    group_stats,
    metric_columns,
    recovered_columns,
    setting_columns,
    table_columns,
)

AGGREGATE_CSV, SUMMARY_FILE = files.AGGREGATE_CSV, files.SUMMARY_FILE  # aliases, for importers
REFERENCES = (ORACLE, CHANCE)  # the reference rows of every point's metrics: never counted


def point_rows(grid: Grid, sweep_dir: Path, notes: list[str] | None = None) -> list[dict]:
    """The table's rows for every finished point of `grid`, in grid order; a finished point
    whose metrics cannot be read is left out, with a line in `notes`."""
    rows = []
    metrics = metric_columns(grid)
    for point in grid.points:
        folder = point_dir(sweep_dir, point)
        if not is_done(folder, files.POINT_MARKER):
            continue
        problem = metrics_problem(folder)
        if problem is not None:
            if notes is not None:
                notes.append(f"point {folder.name} left out: its metrics are unreadable ({problem})")
            continue
        gen = point.configs["generate"]
        probability = dict(zip(gen.instance_ids, gen.feature_probability))
        records = files.read_json(files.evaluate_dir(folder) / files.METRICS_FILE)["records"]
        by_key: dict[tuple, dict] = defaultdict(dict)
        for rec in records:
            if rec["method"] is not None and "feature" not in rec and rec["metric"] in metrics:
                by_key[rec["instance"], rec["method"]][rec["metric"]] = rec["value"]
        for (instance, method), values in by_key.items():
            row = {"point": folder.name, **point.columns, "instance": instance, "method": method,
                   "feature_probability": probability.get(instance),
                   "dict_ratio": point.configs["sae"].dict_ratio}
            row.update({m: values.get(m) for m in metrics})
            rows.append(row)
    return rows


def render_summary(grid: Grid, rows: list[dict], figures: list[str], status: dict,
                   counts: list[dict] = ()) -> str:
    """Markdown: what ran, the figures, and per setting x method the key metrics as mean ± std
    over seeds."""
    keys = setting_columns(grid) + ["feature_probability", "method"]
    keys = list(dict.fromkeys(keys))
    shown = recovered_columns(grid)[-1:] + ["mmcs", "mcc", "fvu", "l0"]
    stats = {m: group_stats(rows, keys, m) for m in shown}
    lines = [f"# Sweep summary: {grid.path.name}", "",
             f"{len(grid.points)} grid points: {status.get('finished', 0)} finished, "
             f"{len(status.get('failed', {}))} failed. Every row of `{files.AGGREGATE_CSV}` is one "
             "point x instance x method; below, rows that differ only in their seed are "
             f"averaged (mean ± std over seeds; n = seeds).", ""]
    for key, error in status.get("failed", {}).items():
        lines.append(f"- failed point `{key}`: {error}")
    for note in status.get("notes", ()):
        lines.append(f"- note: {note}")
    lines += [f"![{f}]({files.FIGURES_DIR}/{f})" for f in figures] + [""]
    header = keys + shown + ["n"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = set().union(*(s.keys() for s in stats.values()))
    for group in sorted(groups, key=lambda g: tuple(map(str, g))):
        cells = [str(v) for v in group]
        for m in shown:
            mean, std, n = stats[m].get(group, (math.nan, math.nan, 0))
            cells.append(f"{mean:.3g} ± {std:.2g}" if n else "–")
        cells.append(str(max(stats[m].get(group, (0, 0, 0))[2] for m in shown)))
        lines.append("| " + " | ".join(cells) + " |")
    if counts:
        estimators = [k for k in counts[0] if k not in ("instance", "method", "curve", "true_count")]
        lines += ["", "## Feature counting (Sharkey et al. 2022)", "",
                  "Estimated number of features from the sweep over dictionary size, next to the "
                  f"true count (represented directions); `{files.COUNTING_CSV}` has every curve. "
                  "`dead_latents` assumes latents die once the dictionary outgrows the "
                  "features, as they do in an L1 SAE; TopK's auxiliary loss and k-SVD/MOD's "
                  "re-seeding keep latents alive, so for those methods it overcounts.", "",
                  "| curve | true count | " + " | ".join(estimators) + " |",
                  "|" + "---|" * (len(estimators) + 2)]
        lines += [f"| {c['curve']} | {c['true_count']} | " +
                  " | ".join("–" if not math.isfinite(c[e]) else f"{c[e]:g}" for e in estimators) + " |"
                  for c in counts]
    return "\n".join(lines) + "\n"


def write_aggregate(grid: Grid, sweep_dir: str | Path, status: dict | None = None,
                    echo=lambda s: None) -> list[dict]:
    """Write `<sweep_dir>/aggregate.csv`, `figures/*.png` and `summary.md` from the finished
    points of `grid`; returns the table's rows. The notes of `status` go into summary.md,
    with those of the aggregate (points left out), which are also echoed."""
    sweep_dir = Path(sweep_dir)
    notes = list((status or {}).get("notes", ()))
    known = len(notes)
    rows = point_rows(grid, sweep_dir, notes)
    for note in notes[known:]:
        echo(f"aggregate: note: {note}")
    status = {**(status or {}), "finished": len({r["point"] for r in rows}), "notes": notes}
    files.write_csv(sweep_dir / files.AGGREGATE_CSV, rows, table_columns(grid))
    figures = sweep_figures.save_sweep_figures(grid, rows, sweep_dir / files.FIGURES_DIR)
    counts = counting_table(write_counting(grid, rows, sweep_dir, figures))
    files.atomic_write_bytes(sweep_dir / files.SUMMARY_FILE,
                             render_summary(grid, rows, figures, status, counts).encode())
    return rows


def write_counting(grid: Grid, rows: list[dict], sweep_dir: Path, figures: list[str]) -> list[dict]:
    """Where the grid sweeps dictionary size: counting.csv and the counting figure (appended
    to `figures`); returns the estimator records."""
    figure = sweep_dir / files.FIGURES_DIR / files.COUNTING_FIGURE
    figure.unlink(missing_ok=True)
    # the references (oracle, random) have no dictionary on disk to count features with
    records = count_features(grid, [r for r in rows if r["method"] not in REFERENCES], sweep_dir)
    if not records:
        return []
    files.write_csv(sweep_dir / files.COUNTING_CSV, counting_table(records),
                    ["instance", "method", "curve", "true_count", *ESTIMATORS])
    fig = plot_counting(records)
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    figures.append(files.COUNTING_FIGURE)
    return records
