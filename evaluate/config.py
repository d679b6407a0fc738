"""The resolved configuration of stage 3; what `evaluate/config.json` records."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from data.configs import ConfigError, JSONConfig  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class EvaluateConfig(JSONConfig):
    methods: tuple[str, ...] = ()
    """Methods to score; empty means every method stage 2 wrote."""
    instances: tuple[str, ...] = ()
    """Instance ids to score; empty means every instance of the run."""
    max_rows: int = 32768
    """Rows per instance for the code-level metrics (FVU, L0, F1, code correlation), drawn
    at random from the instance; 0 scores the dictionaries' directions only."""
    drop_zero_rows: bool = True
    """Leave out rows where h = 0 (no feature fired), as stage 2 does when fitting."""
    thresholds: tuple[float, ...] = (0.9, 0.99)
    """Matched cosine at or above which a true feature counts as recovered."""
    duplicate_cosine: float = 0.95
    """Two atoms with a cosine above this are duplicates."""
    seed: int = 0
    """Seeds the choice of evaluation rows."""
    figures: bool = True
    """Draw figures/*.png (3 s a run on a toy problem; a sweep of many points may skip them)."""
    on_nonfinite: str = "error"
    """An evaluation row holding NaN or inf: "error" (stop, naming the shard and the row) or
    "drop" (leave it out; the count per shard is a note in the report)."""
    keep_going: bool = False
    """Exit 0 even when a dictionary could not be loaded or applied; it is reported under
    "Errors" in report.md (metric "error" in metrics.json) either way, and without keep_going
    the `evaluate` command exits 1 after writing the report."""

    def __post_init__(self):
        from sae import METHODS

        for name in ("methods", "instances"):
            value = getattr(self, name)
            if isinstance(value, str) or not _is_sequence(value) or not all(
                    isinstance(v, str) for v in value):
                raise ConfigError(name, f"must be a list of names, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("drop_zero_rows", "figures", "keep_going"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError("methods", f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if not _is_int(self.max_rows) or self.max_rows < 0:
            raise ConfigError("max_rows", f"must be an integer >= 0, got {self.max_rows!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        if self.on_nonfinite not in ("error", "drop"):
            raise ConfigError("on_nonfinite", f"must be error or drop, got {self.on_nonfinite!r}")
        thresholds = self.thresholds
        if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
            thresholds = (thresholds,)
        if (isinstance(thresholds, str) or not _is_sequence(thresholds) or not thresholds
                or not all(_is_number(t) and 0 < t <= 1 for t in thresholds)):
            shown = list(thresholds) if _is_sequence(thresholds) else thresholds
            raise ConfigError("thresholds", f"needs values in (0, 1], got {shown!r}")
        object.__setattr__(self, "thresholds", tuple(sorted(float(t) for t in thresholds)))
        if not _is_number(self.duplicate_cosine) or not -1 <= self.duplicate_cosine <= 1:
            raise ConfigError("duplicate_cosine",
                              f"must be a number in [-1, 1], got {self.duplicate_cosine!r}")


def _is_sequence(value) -> bool:
    return isinstance(value, (tuple, list))


def _is_int(value) -> bool:
    """An int (numpy's too), not a bool and not a float such as 1.5, nan or inf."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number (not a bool, not nan or inf)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))

