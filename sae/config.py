"""The resolved configuration of stage 2; what `sae/config.json` records."""
from __future__ import annotations

from dataclasses import dataclass, field

from data.configs import ConfigError, JSONConfig  # noqa: F401 (re-exported)

SIZE_BASES = ("represented", "features")
DEFAULT_METHODS = ("l1", "topk", "batchtopk", "ksvd", "ksvd_nn", "mod", "mod_nn", "sklearn")


# Defaults of the stage that differ from an estimator's own: the toy activations have norms
# near 0.5, so the L1 weight tuned for unit-scale planted problems (0.3) kills every latent.
STAGE_METHOD_DEFAULTS = {"l1": {"l1_coefficient": 0.03},
                         # the baseline at 10 passes took 60 s of a 3-minute default run
                         "sklearn": {"max_iter": 3}}


@dataclass(frozen=True)
class SAEStageConfig(JSONConfig):
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Dictionary methods to fit, in this order."""
    instances: tuple[str, ...] = ()
    """Instance ids to fit; empty means every instance of the run."""
    dict_ratio: float = 1.0
    """Dictionary size as a multiple of the size basis (ignored when n_components is set)."""
    size_basis: str = "represented"
    """'represented': true directions the model represents; 'features': all true directions."""
    n_components: int | None = None
    """Absolute dictionary size; overrides dict_ratio."""
    k: int | None = None
    """Active atoms per row for topk/batchtopk/ksvd/mod/sklearn; None: the expected number of
    active represented features per row of the instance, rounded up (at most d)."""
    max_rows: int | None = 32768
    """Fit on at most this many rows of each instance, after dropping zero rows (None: all)."""
    drop_zero_rows: bool = True
    """Leave out rows where no feature fired (h = 0): they hold no direction to learn, and at
    feature probability 0.003 they are 88% of the rows."""
    seed: int = 0
    """random_state of every method."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    params: dict = field(default_factory=dict)
    """Per-method hyperparameters: {"l1": {"l1_coefficient": 0.1}, "*": {"lr": 3e-3}}."""

    def __post_init__(self):
        from sae.methods import METHODS, param_names

        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "instances", tuple(self.instances))
        if not self.methods:
            raise ConfigError("methods", "needs at least one method")
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError("methods", f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if self.dict_ratio <= 0:
            raise ConfigError("dict_ratio", f"must be > 0, got {self.dict_ratio}")
        if self.size_basis not in SIZE_BASES:
            raise ConfigError("size_basis", f"must be one of {', '.join(SIZE_BASES)}, got {self.size_basis!r}")
        if self.n_components is not None and self.n_components < 1:
            raise ConfigError("n_components", f"must be >= 1, got {self.n_components}")
        if self.k is not None and self.k < 1:
            raise ConfigError("k", f"must be >= 1, got {self.k}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError("max_rows", f"must be >= 1, got {self.max_rows}")
        for method, values in self.params.items():
            if method != "*" and method not in METHODS:
                raise ConfigError("params", f"unknown method {method!r}; valid: *, {', '.join(METHODS)}")
            names = (set().union(*(param_names(m) for m in METHODS)) if method == "*"
                     else param_names(method))
            for key in values:
                if key not in names:
                    raise ConfigError("params", f"{method} has no parameter {key!r}; "
                                                f"valid: {', '.join(sorted(names))}")

    def method_params(self, method: str) -> dict:
        return {**STAGE_METHOD_DEFAULTS.get(method, {}), **self.params.get("*", {}),
                **self.params.get(method, {})}

