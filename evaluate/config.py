"""The resolved configuration of stage 3; what `evaluate/config.json` records."""
from __future__ import annotations

from dataclasses import dataclass, field

from unsuperpose.data.configs import ConfigError, JSONConfig, check_number  # noqa: F401 (re-exported)
from unsuperpose.data.rows import NONFINITE_POLICIES


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
    on_nonfinite: str = field(default="error", metadata={"choices": NONFINITE_POLICIES})
    """An evaluation row holding NaN or inf: "error" (stop, naming the shard and the row) or
    "drop" (leave it out; the count per shard is a note in the report)."""
    keep_going: bool = False
    """Exit 0 even when a dictionary could not be loaded or applied; it is reported under
    "Errors" in report.md (metric "error" in metrics.json) either way, and without keep_going
    the `evaluate` command exits 1 after writing the report."""
    external: dict = field(default_factory=dict)
    """Dictionaries from outside the run to score beside its own, {NAME: PATH}: a SAELens
    folder (cfg.json + sae_weights.safetensors; standard, topk, jumprelu, and batchtopk /
    matryoshka as SAELens saves them) coded by its own encoder, or a .safetensors file with a
    [n_atoms, d] decoder under W_dec or components, coded by the oracle's nonnegative OMP at
    the stage's k. Each appears as ext:NAME in every table and figure (evaluate/external.py)."""

    def __post_init__(self):
        from unsuperpose.sae import METHODS

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
        check_number("max_rows", self.max_rows, low=0, integer=True)
        check_number("seed", self.seed, low=0, integer=True)
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError("on_nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}, "
                                              f"got {self.on_nonfinite!r}")
        thresholds = self.thresholds
        if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
            thresholds = (thresholds,)
        if isinstance(thresholds, str) or not _is_sequence(thresholds) or not thresholds:
            raise ConfigError("thresholds", f"needs values in (0, 1], got {thresholds!r}")
        for t in thresholds:
            try:
                check_number("thresholds", t, low=0, high=1, low_open=True)
            except ConfigError:
                raise ConfigError("thresholds", f"needs values in (0, 1], got {list(thresholds)!r}") from None
        object.__setattr__(self, "thresholds", tuple(sorted(float(t) for t in thresholds)))
        check_number("duplicate_cosine", self.duplicate_cosine, low=-1, high=1)
        from unsuperpose.evaluate.external import check_name

        if not isinstance(self.external, dict):
            raise ConfigError("external", f"must map a name to a path, got {self.external!r}")
        for name, path in self.external.items():
            reason = check_name(name)
            if reason is not None:
                raise ConfigError("external", reason)
            if not isinstance(path, str) or not path.strip():
                raise ConfigError("external", f"{name}: the path must be a non-empty string, "
                                              f"got {path!r}")


def _is_sequence(value) -> bool:
    return isinstance(value, (tuple, list))
