"""The resolved configuration of stage 1; what `generate/config.json` records."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from unsuperpose.data.configs import ConfigError, JSONConfig, check_number  # noqa: F401 (re-exported)
from unsuperpose.generate.worlds import PRESETS, WORLD_VALUES, World, WorldFields
from unsuperpose.models import MODEL_KINDS

SOURCES = ("toy", "synthetic")
# upper bounds of values no run can mean (the sizes themselves are checked against memory and
# disk before work, generate/pipeline.py check_sizes)
MAX_LR = 10.0            # Adam steps of this size leave float32's range within a few steps
MAX_SCALE = 1e6          # magnitudes, noise, copula scale: h**2 stays far inside float32
MAX_HIERARCHY_DEPTH = 16  # generations below the roots; branching**depth features past it
MAX_STEPS = 10 ** 9      # training / orthogonalisation steps (years of compute past it)


@dataclass(frozen=True)
class GenerateConfig(JSONConfig, WorldFields):
    """Stage 1's fields; the benchmark-world fields of the synthetic source (probability
    schedule, copula, hierarchy, magnitudes) come from generate.worlds.WorldFields."""

    source: str = dataclasses.field(default="toy", metadata={"choices": SOURCES})
    """toy: train toy models; synthetic: a random unit-norm ground-truth dictionary with sparse
    nonnegative codes, no training."""
    model_kind: str = dataclasses.field(default="relu_output", metadata={"choices": MODEL_KINDS})
    """Toy model: linear x' = WᵀWx + b; relu_output x' = ReLU(WᵀWx + b); relu_hidden
    h = ReLU(Wx); abs h = ReLU(W_in x) with target |x|."""
    n_features: int = 40
    """Number of true features n."""
    d_hidden: int = 10
    """Width d of the hidden layer, i.e. of the activations written to disk."""
    feature_probability: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.003)
    """One instance per value: the probability 1 - S that each feature is nonzero (the p_max of
    a non-constant probability_schedule)."""
    importance_decay: float = 1.0
    """Feature importance I_i = decay ** i (toy models only)."""
    value: str = dataclasses.field(default="auto", metadata={"choices": ("auto",) + WORLD_VALUES})
    """Value of a firing feature: uniform [0, 1], signed_uniform [-1, 1], folded_normal
    |N(mean, std)| (synthetic source), or auto (signed_uniform for the abs model, else uniform)."""
    n_correlated_sets: int = 0
    """Correlated feature sets (all members fire together)."""
    n_anticorrelated_sets: int = 0
    """Anticorrelated feature sets (at most one member fires)."""
    set_size: int = 2
    """Features per correlated/anticorrelated set."""
    steps: int = 2000
    """Training steps of the toy models (all instances train together)."""
    batch_size: int = 1024
    """Training batch size."""
    lr: float = 3e-3
    """Adam learning rate (cosine decay to 5% over the run)."""
    rows: int = 262144
    """Activation rows written per instance."""
    heldout_rows: int = 32768
    """Held-out rows per instance, written to their own shards (heldout/) from a separate
    random stream: `sae` never reads them, `evaluate` scores on them only."""
    rows_per_shard: int = 65536
    """Rows per safetensors shard."""
    represented_threshold: float = 0.5
    """A true direction counts as represented when its norm exceeds this."""
    noise_std: float = 0.0
    """Gaussian noise added to synthetic activations (synthetic source only)."""
    orthogonalize_steps: int = 0
    """Synthetic source: steps of descent on the off-diagonal |cos| of the random unit
    directions (generate.worlds.spread_directions), lowering their mean max |cos| (the report's
    interference); 0: plain random unit vectors."""
    world: str = ""
    """The named preset the fields started from (generate/worlds.py PRESETS); a label only."""
    seed: int = 0
    """Seeds model init, training batches, the synthetic dictionary and the dumped rows."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""

    def _check_numbers(self) -> None:
        """Every number field's type (a bool is not an int, 40.5 is not one, nor is a string)
        and the range no run can mean (nan, inf, past int64 or float32, the MAX_* bounds);
        the lower bounds and the fields' relations are the checks of __post_init__."""
        for name in ("feature_probability", "magnitude_mean"):
            value = getattr(self, name)
            values = value if isinstance(value, (list, tuple)) else (value,)
            for v in values:
                check_number(name, v, high=MAX_SCALE if name == "magnitude_mean" else None)
            object.__setattr__(self, name, tuple(float(v) for v in values))
        for name in ("n_features", "d_hidden", "n_correlated_sets", "n_anticorrelated_sets",
                     "set_size", "batch_size", "rows", "heldout_rows", "rows_per_shard",
                     "hierarchy_roots", "hierarchy_branching", "seed"):
            check_number(name, getattr(self, name), integer=True)
        check_number("seed", self.seed, low=0, integer=True)
        check_number("set_size", self.set_size, low=2, integer=True)
        for name in ("n_correlated_sets", "n_anticorrelated_sets"):
            check_number(name, getattr(self, name), low=0, integer=True)
        for name in ("steps", "orthogonalize_steps"):
            check_number(name, getattr(self, name), high=MAX_STEPS, integer=True)
        check_number("hierarchy_depth", self.hierarchy_depth, high=MAX_HIERARCHY_DEPTH, integer=True)
        check_number("correlation_rank", self.correlation_rank, integer=True, optional=True)
        check_number("lr", self.lr, high=MAX_LR)
        for name in ("importance_decay", "p_min", "hierarchy_child_share", "represented_threshold"):
            check_number(name, getattr(self, name))
        check_number("zipf_exponent", self.zipf_exponent, high=100)
        for name in ("noise_std", "correlation_scale", "magnitude_std", "magnitude_std_spread"):
            check_number(name, getattr(self, name), high=MAX_SCALE)
        for name in ("source", "model_kind", "value", "world", "probability_schedule", "device"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.hierarchy_exclusive, bool):
            raise ConfigError("hierarchy_exclusive",
                              f"must be true or false, got {self.hierarchy_exclusive!r}")
        sets = (self.n_correlated_sets + self.n_anticorrelated_sets) * self.set_size
        if sets > max(self.n_features, 0):
            raise ConfigError("n_correlated_sets", f"{self.n_correlated_sets} correlated + "
                              f"{self.n_anticorrelated_sets} anticorrelated sets of {self.set_size} "
                              f"need {sets} features, but n_features is {self.n_features}")

    def __post_init__(self):
        self._check_numbers()
        checks = [
            ("source", self.source in SOURCES, f"must be one of {', '.join(SOURCES)}, got {self.source!r}"),
            ("model_kind", self.model_kind in MODEL_KINDS,
             f"must be one of {', '.join(MODEL_KINDS)}, got {self.model_kind!r}"),
            ("n_features", self.n_features >= 1, f"must be >= 1, got {self.n_features}"),
            ("d_hidden", self.d_hidden >= 1, f"must be >= 1, got {self.d_hidden}"),
            ("feature_probability", len(self.feature_probability) >= 1, "needs at least one value"),
            ("feature_probability", all(0 < p <= 1 for p in self.feature_probability),
             f"every value must lie in (0, 1], got {list(self.feature_probability)}"),
            ("importance_decay", 0 < self.importance_decay <= 1,
             f"must lie in (0, 1], got {self.importance_decay}"),
            ("value", self.value in ("auto",) + WORLD_VALUES,
             f"must be one of auto, {', '.join(WORLD_VALUES)}, got {self.value!r}"),
            ("world", self.world in ("",) + tuple(PRESETS),
             f"unknown preset {self.world!r}; valid: {', '.join(PRESETS)}"),
            ("steps", self.steps >= 0, f"must be >= 0, got {self.steps}"),
            ("batch_size", self.batch_size >= 1, f"must be >= 1, got {self.batch_size}"),
            ("lr", self.lr > 0, f"must be > 0, got {self.lr}"),
            ("rows", self.rows >= 1, f"must be >= 1, got {self.rows}"),
            ("heldout_rows", self.heldout_rows >= 0, f"must be >= 0, got {self.heldout_rows}"),
            ("rows_per_shard", self.rows_per_shard >= 1, f"must be >= 1, got {self.rows_per_shard}"),
            ("represented_threshold", self.represented_threshold >= 0,
             f"must be >= 0, got {self.represented_threshold}"),
            ("noise_std", self.noise_std >= 0, f"must be >= 0, got {self.noise_std}"),
            ("orthogonalize_steps", self.orthogonalize_steps >= 0,
             f"must be >= 0, got {self.orthogonalize_steps}"),
            ("orthogonalize_steps", self.source == "synthetic" or not self.orthogonalize_steps,
             "spreads the synthetic dictionary, so it needs --source synthetic"),
        ]
        for field, ok, message in checks:
            if not ok:
                raise ConfigError(field, message)
        if self.source == "toy" and self.model_kind == "abs" and self.resolved_value != "signed_uniform":
            raise ConfigError("value", "the abs model needs signed inputs (signed_uniform)")
        world = self.world_spec  # validates the world fields
        field = world.first_world_field
        if field is not None:
            if self.source != "synthetic":
                raise ConfigError(field, "benchmark worlds need --source synthetic")
            if self.n_correlated_sets or self.n_anticorrelated_sets:
                raise ConfigError("n_correlated_sets", f"correlated/anticorrelated sets do not combine "
                                  f"with a benchmark world ({field} is set); use correlation_rank")
            world.check_size(self.n_features, self.feature_probability)

    @property
    def world_spec(self) -> World:
        """The benchmark-world fields as a generate.worlds.World."""
        return World(value=self.resolved_value,
                     **{f.name: getattr(self, f.name) for f in dataclasses.fields(WorldFields)})

    @property
    def resolved_value(self) -> str:
        if self.value != "auto":
            return self.value
        return "signed_uniform" if self.source == "toy" and self.model_kind == "abs" else "uniform"

    @property
    def instance_ids(self) -> list[str]:
        return [f"{j:02d}-p{p:g}" for j, p in enumerate(self.feature_probability)]
