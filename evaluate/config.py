"""The resolved configuration of stage 3; what `evaluate/config.json` records."""
from __future__ import annotations

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

    def __post_init__(self):
        from sae import METHODS

        for name in ("methods", "instances"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "thresholds",
                           tuple(sorted(float(t) for t in self.thresholds)))
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError("methods", f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if self.max_rows < 0:
            raise ConfigError("max_rows", f"must be >= 0, got {self.max_rows}")
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise ConfigError("thresholds", f"needs values in (0, 1], got {list(self.thresholds)}")
        if not -1 <= self.duplicate_cosine <= 1:
            raise ConfigError("duplicate_cosine", f"must lie in [-1, 1], got {self.duplicate_cosine}")

