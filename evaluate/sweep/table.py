"""The sweep's table: its columns (the swept settings, the ids, the key metrics) and the
statistics over its rows that the summary and the figures share (mean ± std over seeds)."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from unsuperpose.evaluate.scoring import recovered_key
from unsuperpose.evaluate.sweep.grid import SEED_AXIS, Grid

# the metrics carried into the table (recovered_<t> for every threshold come after these)
KEY_METRICS = ("mmcs", "matched_cos", "mcc", "fvu", "l0", "explained_variance", "dead_fraction",
               "n_components", "n_represented", "fit_seconds")
ID_COLUMNS = ("point", "instance", "method", "feature_probability", "dict_ratio")


def recovered_columns(grid: Grid) -> list[str]:
    thresholds = sorted({t for p in grid.points for t in p.configs["evaluate"].thresholds})
    return [recovered_key(t) for t in thresholds]


def metric_columns(grid: Grid) -> list[str]:
    return list(KEY_METRICS[:2]) + recovered_columns(grid) + list(KEY_METRICS[2:])


def replicate_columns(grid: Grid) -> list[str]:
    """Swept columns that only replicate a setting (seeds): averaged over, shown as error bars."""
    return [c for c in grid.columns if c == SEED_AXIS or c.endswith(".seed")]


def setting_columns(grid: Grid) -> list[str]:
    """Swept columns that change the setting (everything swept but the seeds)."""
    return [c for c in grid.columns if c not in replicate_columns(grid)]


def table_columns(grid: Grid) -> list[str]:
    swept = [c for c in grid.columns if c not in ID_COLUMNS]
    return ["point"] + swept + list(ID_COLUMNS[1:]) + metric_columns(grid)


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def group_stats(rows: list[dict], keys: list[str], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(mean, std, n) of `metric` over the rows that share the values of `keys` (the rows
    differing only in what is left out, i.e. the seeds); std is 0 for one row."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        v = row.get(metric)
        if v is not None and math.isfinite(v):
            groups[tuple(_hashable(row.get(k)) for k in keys)].append(v)
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}
