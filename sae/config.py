"""The resolved configuration of stage 2; what `sae/config.json` records."""
from __future__ import annotations

from dataclasses import dataclass, field

from unsuperpose.data.configs import ConfigError, JSONConfig, check_number  # noqa: F401 (re-exported)
from unsuperpose.data.rows import NONFINITE_POLICIES

SIZE_BASES = ("represented", "features")
DEFAULT_METHODS = ("l1", "topk", "batchtopk", "ksvd", "ksvd_nn", "mod", "mod_nn", "sklearn")
# every method `--methods` takes (sae.methods.METHODS, which imports the estimators, in order):
# the defaults, then the ones a user asks for by name
METHOD_NAMES = (*DEFAULT_METHODS, "matryoshka", "jumprelu", "matryoshka_mod")
EXPORT_FORMATS = ("saelens",)
MAX_DICT_RATIO, MAX_COMPONENTS = 1024, 2 ** 24  # past them no dictionary fits in memory


@dataclass(frozen=True)
class SAEStageConfig(JSONConfig):
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={"choices": METHOD_NAMES})
    """Dictionary methods to fit, in this order (the default leaves out matryoshka, jumprelu
    and matryoshka_mod)."""
    instances: tuple[str, ...] = ()
    """Instance ids to fit; empty means every instance of the run."""
    dict_ratio: float = 1.0
    """Dictionary size as a multiple of the size basis (ignored when n_components is set); at
    most 1024."""
    size_basis: str = field(default="represented", metadata={"choices": SIZE_BASES})
    """What dict_ratio multiplies: represented, the true directions the model represents; or
    features, all true directions."""
    n_components: int | None = None
    """Absolute dictionary size, at most 2**24 atoms; overrides dict_ratio (none: dict_ratio
    sets it)."""
    k: int | None = None
    """Active atoms per row for topk/batchtopk/ksvd/mod/sklearn; none: the expected number of
    active represented features per row of the instance, rounded up (at most d)."""
    max_rows: int | None = 32768
    """Fit on at most this many rows of each instance (the first ones in file order, after
    dropping zero rows); 0 or none: every row. The SAEs then stream the shards through
    `datasets` (one shard in memory at a time); k-SVD, MOD and sklearn read them all."""
    drop_zero_rows: bool = True
    """Leave out rows where no feature fired (h = 0): they hold no direction to learn, and at
    feature probability 0.003 they are 88% of the rows."""
    on_nonfinite: str = field(default="error", metadata={"choices": NONFINITE_POLICIES})
    """A row holding NaN or inf: "error" (stop, naming the shard and the row) or "drop" (leave
    it out; the count per shard goes into config.json and the evaluation report)."""
    target_l0: float | None = None
    """The L0 (active latents per row) every method is compared at, and the L1 SAE's
    coefficient is calibrated to (a search in log lambda over fits, sae/calibration.py);
    none: the k that TopK gets on the instance. Set l1.l1_coefficient to fix it instead."""
    seed: int = 0
    """random_state of every method."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    params: dict = field(default_factory=dict)
    """Per-method hyperparameters: {"l1": {"l1_coefficient": 0.1}, "*": {"lr": 3e-3}}."""
    export: tuple[str, ...] = field(default=(), metadata={"choices": EXPORT_FORMATS})
    """Also write every SAE (l1, topk, batchtopk, matryoshka, jumprelu) in another library's
    format, inside the same stage: saelens writes SAELens 6's cfg.json +
    sae_weights.safetensors to sae/<instance>/<method>/saelens/ (`SAE.load_from_disk` reads
    it); k-SVD, MOD and sklearn get none. Empty: no export."""

    def __post_init__(self):
        from unsuperpose.sae.methods import ALL_METHODS as METHODS  # the defaults and the extra ones
        from unsuperpose.sae.methods import param_names

        for name in ("methods", "instances"):  # a bare string is not a list of names
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(name, f"must be a list of str, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.methods:
            raise ConfigError("methods", "needs at least one method")
        if isinstance(self.export, str) or not isinstance(self.export, (tuple, list)) or not all(
                isinstance(e, str) for e in self.export):
            raise ConfigError("export", f"must be a list of formats, got {self.export!r}")
        for fmt in self.export:
            if fmt not in EXPORT_FORMATS:
                raise ConfigError("export", f"unknown format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
        object.__setattr__(self, "export", tuple(dict.fromkeys(self.export)))
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError("methods", f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        # checked when given: None means "not set" here, a word no option takes
        for name, low in (("max_rows", 0), ("n_components", 1), ("k", 1)):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), low=low, integer=True)
        if self.max_rows == 0:
            object.__setattr__(self, "max_rows", None)
        check_number("dict_ratio", self.dict_ratio, low=0, low_open=True)
        for name, most in (("dict_ratio", MAX_DICT_RATIO), ("n_components", MAX_COMPONENTS)):
            if getattr(self, name) is not None and getattr(self, name) > most:
                raise ConfigError(name, f"must be <= {most} (no dictionary can mean more), "
                                        f"got {getattr(self, name)}")
        if self.target_l0 is not None:
            check_number("target_l0", self.target_l0, low=0, low_open=True)
        check_number("seed", self.seed, low=0, integer=True)
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError("on_nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}, "
                                              f"got {self.on_nonfinite!r}")
        if self.size_basis not in SIZE_BASES:
            raise ConfigError("size_basis",
                              f"must be one of {', '.join(SIZE_BASES)}, got {self.size_basis!r}")
        if not isinstance(self.drop_zero_rows, bool):
            raise ConfigError("drop_zero_rows", f"must be true or false, got {self.drop_zero_rows!r}")
        if not isinstance(self.params, dict) or not all(isinstance(v, dict) for v in self.params.values()):
            raise ConfigError("params", "must map a method (or *) to a dict of parameters")
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
        """The parameters the user gave `method` (through `params`: the "*" ones that it
        takes, then its own); everything else is the estimator's default, so the stage fits
        what `build(method, ...)` fits."""
        from unsuperpose.sae.methods import accepted

        return {**accepted(method, self.params.get("*", {})), **self.params.get(method, {})}
