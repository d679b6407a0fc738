"""What `evaluate` found in a run: each instance's scores (`InstanceResult`) and the whole
evaluation (`Evaluation`), which the report, the figures and metrics.json are drawn from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unsuperpose.data import files
from unsuperpose.evaluate.chance import CHANCE
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.evaluate.inputs import Instance
from unsuperpose.evaluate.oracle import ORACLE
from unsuperpose.evaluate.scoring import Scores


@dataclass
class InstanceResult:
    """One instance's inputs and every score of its dictionaries."""

    instance: Instance
    view: dict[str, float]                       # the toy model's own view
    scores: dict[str, Scores] = field(default_factory=dict)
    atoms: dict[str, np.ndarray] = field(default_factory=dict)
    fit_rows: dict[str, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)   # where the transforms ran
    oracle: Scores | None = None                     # the true directions as a dictionary
    chance: Scores | None = None                     # random directions as a dictionary

    @property
    def probability(self) -> float:
        """The instance's mean feature firing probability (1 - S)."""
        return float(self.instance.gt[files.GT_PROBABILITY].mean())


@dataclass
class Evaluation:
    """Everything the report and the figures are drawn from."""

    run_dir: Path
    config: EvaluateConfig
    results: list[InstanceResult]
    notes: list[dict]                            # {"instance", "method", "note"}
    methods: list[str]                           # every scored method, in registry order,
                                                 # then the external ones (ext:NAME)
    externals: list = field(default_factory=list)   # evaluate.external dictionaries, as given

    def records(self) -> list[dict]:
        """One record per instance x method x metric (x feature for per-feature metrics);
        the oracle's as method "oracle", the chance row's as method "random"; a note as
        metric "skipped" or "error" (its kind)."""
        out = []
        for res in self.results:
            inst = res.instance
            out += [_record(inst.id, None, k, v) for k, v in res.view.items()]
            gt = inst.gt
            for g in range(len(gt[files.GT_DIRECTIONS])):
                f, s = int(gt[files.GT_FEATURE_INDEX][g]), int(gt[files.GT_SIGN][g])
                out += [_record(inst.id, None, k, v, f, s) for k, v in (
                    ("importance", gt[files.GT_IMPORTANCE][f]),
                    ("probability", gt[files.GT_PROBABILITY][f]),
                    ("dimensionality", gt[files.GT_DIMENSIONALITY][g]),
                    ("norm", gt[files.GT_NORMS][g]),
                    ("represented", gt[files.GT_REPRESENTED][g]))]
            index = gt[files.GT_FEATURE_INDEX][inst.represented]
            sign = gt[files.GT_SIGN][inst.represented]
            scored = dict(res.scores)
            if res.oracle is not None:
                scored[ORACLE] = res.oracle
            if res.chance is not None:
                scored[CHANCE] = res.chance
            for method, sc in scored.items():
                out += [_record(inst.id, method, k, v) for k, v in sc.scalars.items()]
                for k, values in sc.per_feature.items():
                    out += [_record(inst.id, method, f"feature_{k}", v, int(f), int(s))
                            for v, f, s in zip(values, index, sign)]
        # a dictionary that could not be loaded or applied is an "error", anything else left
        # out (a mismatched dictionary, an instance without represented features) "skipped"
        for n in self.notes:
            out.append(_record(n["instance"], n["method"], n.get("kind", "skipped"), None,
                               note=n["note"]))
            if n.get("folder"):
                out[-1]["folder"] = n["folder"]
        return out


def _clean(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if value is None:
        return None
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _record(instance, method, metric, value, feature=None, sign=None, note=None) -> dict:
    rec = {"instance": instance, "method": method, "metric": metric, "value": _clean(value)}
    if feature is not None:
        rec.update(feature=feature, sign=sign)
    if note is not None:
        rec["note"] = note
    return rec
