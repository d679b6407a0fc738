"""Benchmark worlds for the synthetic source: a `World` (the config fields), the
`WorldDistribution` built from it (what the pipeline samples), and the named presets.

The parts (schedules, copula, hierarchy, magnitudes) and the sources they follow are
documented in generate/firing.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a world is drawn, not for its fields (`--help`)
    import torch

from unsuperpose.data.configs import ConfigError
from unsuperpose.generate.firing import (
    SCHEDULES,
    Hierarchy,
    copula_fires,
    exponential_endpoints,
    probability_schedule,
    random_correlation,
)

WORLD_VALUES = ("uniform", "signed_uniform", "folded_normal")

# ---- the world -------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldFields:
    """The benchmark-world fields, shared by `World` and generate's GenerateConfig."""

    probability_schedule: str = dataclasses.field(default="constant", metadata={"choices": SCHEDULES})
    """Synthetic source: feature i's probability, constant or a linear, exponential or zipf
    schedule from p_max (feature_probability) down to p_min."""
    p_min: float = 1e-3
    """Synthetic source: probability of the rarest feature (non-constant schedules)."""
    zipf_exponent: float = 1.0
    """Synthetic source, zipf schedule: p_i ∝ (i+1)^-exponent before rescaling to [p_min, p_max]."""
    correlation_rank: int | None = None
    """Synthetic source: a Gaussian copula between parentless features with a rank-r factor
    (every feature keeps its marginal); none: independent firing."""
    correlation_scale: float = 0.1
    """Synthetic source: entries of the copula factor ~ scale · N(0, 1) (before the rows are
    normalised)."""
    hierarchy_roots: int = 0
    """Synthetic source: number of parent/child trees, where a child fires only with its
    parent; 0: no hierarchy."""
    hierarchy_branching: int = 4
    """Synthetic source: children per parent of the hierarchy."""
    hierarchy_depth: int = 3
    """Synthetic source: generations below the roots (3: root, child, grandchild,
    great-grandchild)."""
    hierarchy_exclusive: bool = True
    """Synthetic source: at most one child of a parent fires."""
    hierarchy_child_share: float = 1.0
    """Synthetic source: the most a parent's children may take of its firings (exclusive: the
    children's conditional probabilities are scaled to sum to at most this; otherwise each
    is capped at it). 1: the recipe, where children whose stated probabilities sum above
    their parent's leave it never firing alone; 0.5: a parent fires alone at least half
    the time."""
    magnitude_mean: tuple[float, ...] = (1.0,)
    """Synthetic source, folded_normal: one mean for all, or first,last linear over the feature
    index."""
    magnitude_std: float = 0.0
    """Synthetic source, folded_normal: the std of a feature's magnitude (its mean over features)."""
    magnitude_std_spread: float = 0.0
    """Synthetic source, folded_normal: per-feature std = |N(magnitude_std, spread)|, drawn once."""


@dataclass(frozen=True)
class World(WorldFields):
    """How the synthetic source draws x, validated."""

    value: str = "uniform"
    """Magnitude of a firing feature: uniform, signed_uniform, folded_normal."""

    def __post_init__(self):
        object.__setattr__(self, "magnitude_mean", tuple(float(m) for m in self.magnitude_mean))
        checks = [
            ("probability_schedule", self.probability_schedule in SCHEDULES,
             f"must be one of {', '.join(SCHEDULES)}, got {self.probability_schedule!r}"),
            ("p_min", 0 < self.p_min <= 1, f"must lie in (0, 1], got {self.p_min}"),
            ("zipf_exponent", self.zipf_exponent > 0, f"must be > 0, got {self.zipf_exponent}"),
            ("correlation_rank", self.correlation_rank is None or self.correlation_rank >= 1,
             f"must be >= 1 (or unset for independent firing), got {self.correlation_rank}"),
            ("correlation_scale", self.correlation_scale >= 0, f"must be >= 0, got {self.correlation_scale}"),
            ("hierarchy_roots", self.hierarchy_roots >= 0, f"must be >= 0, got {self.hierarchy_roots}"),
            ("hierarchy_branching", self.hierarchy_branching >= 1,
             f"must be >= 1, got {self.hierarchy_branching}"),
            ("hierarchy_depth", self.hierarchy_depth >= 1, f"must be >= 1, got {self.hierarchy_depth}"),
            ("hierarchy_child_share", 0 < self.hierarchy_child_share <= 1,
             f"must be in (0, 1], got {self.hierarchy_child_share}"),
            ("value", self.value in WORLD_VALUES,
             f"must be one of {', '.join(WORLD_VALUES)}, got {self.value!r}"),
            ("magnitude_mean",
             len(self.magnitude_mean) in (1, 2) and all(m >= 0 for m in self.magnitude_mean),
             f"needs one or two values >= 0 (first, last), got {list(self.magnitude_mean)}"),
            ("magnitude_std", self.magnitude_std >= 0, f"must be >= 0, got {self.magnitude_std}"),
            ("magnitude_std_spread", self.magnitude_std_spread >= 0,
             f"must be >= 0, got {self.magnitude_std_spread}"),
        ]
        for field, ok, message in checks:
            if not ok:
                raise ConfigError(field, message)

    @property
    def first_world_field(self) -> str | None:
        """The first field that asks for more than FeatureDistribution's independent,
        constant-probability, uniform features; None when the world is that plain case."""
        asks = [("probability_schedule", self.probability_schedule != "constant"),
                ("correlation_rank", self.correlation_rank is not None),
                ("hierarchy_roots", self.hierarchy_roots > 0),
                ("value", self.value not in ("uniform", "signed_uniform"))]
        return next((field for field, on in asks if on), None)

    @property
    def hierarchy(self) -> Hierarchy | None:
        if not self.hierarchy_roots:
            return None
        return Hierarchy(self.hierarchy_roots, self.hierarchy_branching, self.hierarchy_depth,
                         self.hierarchy_exclusive, self.hierarchy_child_share)

    def check_size(self, n_features: int, p_max: tuple[float, ...]) -> None:
        """Errors that need n_features and the p_max of every instance."""
        tree = self.hierarchy
        if tree is not None and tree.n_tree > n_features:
            raise ConfigError("hierarchy_roots", f"{self.hierarchy_roots} trees of branching "
                              f"{self.hierarchy_branching} and depth {self.hierarchy_depth} need "
                              f"{tree.n_tree} features, but n_features is {n_features}")
        n_free = n_features - (tree.n_tree - tree.n_roots if tree else 0)
        if self.correlation_rank is not None and self.correlation_rank > n_free:
            raise ConfigError("correlation_rank", f"must be <= the {n_free} features without a "
                              f"parent, got {self.correlation_rank}")
        if self.probability_schedule != "constant" and self.p_min > min(p_max):
            raise ConfigError("p_min", f"must be <= p_max (every feature_probability value), "
                              f"got p_min={self.p_min} > p_max={min(p_max)}")


class WorldDistribution:
    """A world built for n features and one p_max per instance: the random parts (copula
    factor, per-feature magnitude std) drawn once; `sample` then draws x like
    FeatureDistribution.sample does, so the pipeline treats both alike."""

    def __init__(self, world: World, n_features: int, feature_probability: tuple[float, ...],
                 generator: torch.Generator, device=None):
        import torch
        world.check_size(n_features, feature_probability)
        self.world, self.n_features = world, n_features
        self.feature_probability = tuple(float(p) for p in feature_probability)
        device = device if device is not None else generator.device
        target = torch.stack([probability_schedule(world.probability_schedule, n_features, p,
                                                   world.p_min, world.zipf_exponent)
                              for p in self.feature_probability]).to(device)  # [inst, n]
        self.tree = world.hierarchy
        if self.tree is None:
            self.q, self.marginal = target, target
            self.free = torch.arange(n_features, device=device)
        else:
            self.q, self.marginal = self.tree.conditionals(target)
            self.free = (self.tree.parent(n_features) < 0).nonzero().squeeze(1).to(device)
        self.correlation = (None if world.correlation_rank is None else random_correlation(
            len(self.free), world.correlation_rank, world.correlation_scale, generator, device))
        mean = torch.tensor(world.magnitude_mean, dtype=torch.float64)
        self.mean = (mean[0] + (mean[-1] - mean[0]) * torch.linspace(0, 1, n_features,
                                                                     dtype=torch.float64)).float().to(device)
        self.std = torch.full((n_features,), world.magnitude_std, device=device)
        if world.value == "folded_normal" and world.magnitude_std_spread > 0:
            self.std = (self.std + world.magnitude_std_spread * torch.randn(
                n_features, generator=generator, device=device)).abs()

    @property
    def n_instances(self) -> int:
        return len(self.feature_probability)

    @property
    def signed(self) -> bool:
        return self.world.value == "signed_uniform"

    def importance(self, device=None) -> torch.Tensor:
        """[n_features] all ones: the synthetic source has no loss to weight."""
        import torch
        return torch.ones(self.n_features, device=device)

    def probability(self, device=None) -> torch.Tensor:
        """[n_instances, n_features] realised marginal firing probability."""
        return self.marginal.to(device)

    def to_dict(self) -> dict:
        return {"n_features": self.n_features, "feature_probability": list(self.feature_probability),
                **{k: list(v) if isinstance(v, tuple) else v
                   for k, v in dataclasses.asdict(self.world).items()}}

    def sample(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """Draw x: [batch, n_instances, n_features]."""
        import torch
        device = self.q.device
        q_free = self.q[:, self.free]  # [inst, n_free]
        if self.correlation is None:
            free_fires = torch.rand((batch, *q_free.shape), generator=generator, device=device) < q_free
        else:
            free_fires = copula_fires(q_free, self.correlation, batch, generator)
        fires = torch.zeros((batch, self.n_instances, self.n_features), dtype=torch.bool, device=device)
        fires[:, :, self.free] = free_fires
        if self.tree is not None:
            self.tree.apply(fires, self.q, generator)
        shape = fires.shape
        if self.world.value == "folded_normal":
            values = (self.mean + self.std * torch.randn(shape, generator=generator, device=device)).abs()
        else:
            values = torch.rand(shape, generator=generator, device=device)
            if self.signed:
                values = values * 2.0 - 1.0
        return torch.where(fires, values, torch.zeros((), device=device))


# ---- the dictionary -------------------------------------------------------------------------
SPREAD_POWER = 8  # the |cos| power each step weights the other directions by
SPREAD_STEP = 1.0  # a step moves u_i by at most SPREAD_STEP x its largest |cos| with another
_SPREAD_CHUNK = 1 << 22  # rows x n_features Gram entries formed at once


def spread_directions(atoms: torch.Tensor, steps: int) -> torch.Tensor:
    """Unit directions [..., n, d] moved apart by `steps` steps of descent on the off-diagonal
    Gram entries; returns unit rows of the same shape (steps = 0: the rows normalised).

    One step, from the current unit rows u_i: w_ij = sign(g_ij) |g_ij|^(p-1) for j != i with
    g_ij = u_i . u_j and p = SPREAD_POWER, i.e. the gradient of sum_j |g_ij|^p / p, rescaled
    so that sum_j |w_ij| = max_j |g_ij| (the step shrinks as the overlaps do); then
    u_i <- normalise(u_i - SPREAD_STEP sum_j w_ij u_j), for every row at once. The high
    power makes each direction move mainly away from its nearest neighbours, so the max |cos|
    (what `evaluate.metrics.interference` averages) falls, not just the mean square: n <= d
    rows approach an orthonormal set, n > d rows a spread frame (the Welch bound
    sqrt((n - d) / (d (n - 1))) bounds the largest |cos| from below). Deterministic (no
    random draw); the Gram matrix is formed a block of rows at a time, never [n, n] whole.
    """
    import torch
    u = atoms / atoms.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if steps <= 0:
        return u
    flat = u.reshape(-1, *u.shape[-2:])  # [inst, n, d]
    out = []
    for v in flat:
        n = v.shape[0]
        chunk = max(1, _SPREAD_CHUNK // n)
        for _ in range(steps):
            step = torch.empty_like(v)
            for lo in range(0, n, chunk):
                g = v[lo:lo + chunk] @ v.T  # [chunk, n]
                rows = torch.arange(lo, min(lo + chunk, n), device=v.device)
                g[rows - lo, rows] = 0.0
                w = g.abs().pow(SPREAD_POWER - 1) * g.sign()
                w = w * (g.abs().amax(1, keepdim=True) / w.abs().sum(1, keepdim=True).clamp(min=1e-30))
                step[lo:lo + chunk] = w @ v
            v = v - SPREAD_STEP * step
            v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        out.append(v)
    return torch.stack(out).reshape(u.shape)


# ---- presets ---------------------------------------------------------------------------------
_SHARKEY_P_MAX, _SHARKEY_P_MIN = exponential_endpoints(512, 0.99, 5.0)

PRESETS: dict[str, dict] = {
    # Sharkey, Braun & Millidge (2022), as their public replication (HoagyC/sparse_coding,
    # RandomDatasetGenerator) draws it: 512 features in 256 dims, p_i ∝ 0.99^i scaled to 5
    # active features per row on average, uniform [0, 1] magnitudes. Their correlated variant
    # (one Gaussian draw per batch modulating every probability) is not reproduced.
    "sharkey": dict(source="synthetic", n_features=512, d_hidden=256,
                    feature_probability=(round(_SHARKEY_P_MAX, 6),),
                    probability_schedule="exponential", p_min=round(_SHARKEY_P_MIN, 8),
                    value="uniform"),
    # SynthSAEBench-16k (Chanin & Garriga-Alonso 2026; SAELens docs/synthsaebench.md) scaled by
    # 1/8 in features and roots: 16384 features in 768 dims -> 2048 in 96 (21.3x), 128 roots ->
    # 16 (the same 2/3 of features in trees), branching 4, depth 3, all children mutually
    # exclusive; Zipf exponent 0.5 on [5e-4, 0.4]; low-rank correlation rank 25, scale 0.1;
    # magnitude mean 5.0 -> 4.0, std |N(0.5, 0.5)|. Not followed: the 100-step
    # orthogonalisation of the dictionary, the bias, and scaling children by their parent.
    "synthsaebench-small": dict(source="synthetic", n_features=2048, d_hidden=96,
                                feature_probability=(0.4,), probability_schedule="zipf",
                                p_min=5e-4, zipf_exponent=0.5, correlation_rank=25,
                                correlation_scale=0.1, hierarchy_roots=16, hierarchy_branching=4,
                                hierarchy_depth=3, hierarchy_exclusive=True, value="folded_normal",
                                magnitude_mean=(5.0, 4.0), magnitude_std=0.5,
                                magnitude_std_spread=0.5, rows=131072),
    # The ladder from easy to the real benchmark: simple, interference, synthsaebench-16k.
    # simple: like SAELens' "simple" synthetic setting: 1,024 independent features in 256 dims,
    # each firing with p = 0.01 at magnitude exactly 1 (|N(1, 0)|); the directions spread by 50
    # steps of spread_directions, which lowers the mean max |cos| from 0.21 (random) to 0.096.
    "simple": dict(source="synthetic", n_features=1024, d_hidden=256, feature_probability=(0.01,),
                   probability_schedule="constant", value="folded_normal", magnitude_mean=(1.0,),
                   magnitude_std=0.0, magnitude_std_spread=0.0, orthogonalize_steps=50),
    # interference: SynthSAEBench-16k's interference (mean max |cos| 0.15: 16,384 random
    # directions in 768 dims measure 0.1485) at a size that trains on a CPU: 2048 features in
    # 160 dims spread by 50 steps measure 0.153 (seed 0); otherwise synthsaebench-small's recipe
    # (zipf 0.5 on [5e-4, 0.4], 16 trees of branching 4 and depth 3, exclusive children, copula
    # rank 25 scale 0.1, magnitudes |N(5.0 -> 4.0, |N(0.5, 0.5)|)|).
    "interference": dict(source="synthetic", n_features=2048, d_hidden=160,
                         feature_probability=(0.4,), probability_schedule="zipf", p_min=5e-4,
                         zipf_exponent=0.5, correlation_rank=25, correlation_scale=0.1,
                         hierarchy_roots=16, hierarchy_branching=4, hierarchy_depth=3,
                         hierarchy_exclusive=True, value="folded_normal", magnitude_mean=(5.0, 4.0),
                         magnitude_std=0.5, magnitude_std_spread=0.5, orthogonalize_steps=50,
                         rows=131072),
    # synthsaebench-16k: the full SynthSAEBench-16k recipe, unscaled (meant for a GPU): 16,384
    # features in 768 dims, 128 trees of branching 4 and depth 3 (10,880 features), exclusive
    # children, zipf 0.5 on [5e-4, 0.4], copula rank 25 scale 0.1 (low rank: only the
    # [n, 25] factor is ever formed), magnitudes as synthsaebench-small. Random unit
    # directions already measure the benchmark's 0.15 (0.1485), so they are not spread
    # (spread_directions is stronger than the benchmark's orthogonalisation and would push it
    # lower). Rows are drawn 2,048 at a time (generate.pipeline.DUMP_ELEMENTS).
    "synthsaebench-16k": dict(source="synthetic", n_features=16384, d_hidden=768,
                              feature_probability=(0.4,), probability_schedule="zipf", p_min=5e-4,
                              zipf_exponent=0.5, correlation_rank=25, correlation_scale=0.1,
                              hierarchy_roots=128, hierarchy_branching=4, hierarchy_depth=3,
                              hierarchy_exclusive=True, value="folded_normal",
                              magnitude_mean=(5.0, 4.0), magnitude_std=0.5,
                              magnitude_std_spread=0.5),
}


def preset(name: str) -> dict:
    """The generate-config fields of a named world (a copy)."""
    if name not in PRESETS:
        raise ConfigError("world", f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return {**PRESETS[name], "world": name}
