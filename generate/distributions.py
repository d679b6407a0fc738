"""Synthetic sparse feature distributions, batched over toy-model instances.

A feature i of instance j is zero with probability S = 1 - p_j (p is the *feature
probability*; we never call it sparsity in code) and otherwise drawn from the value
distribution. Correlated and anticorrelated sets follow Elhage et al. (2022):

- a correlated set's features are all zero or all nonzero together (one coin per set);
- an anticorrelated set has at most one feature nonzero: the set fires with probability
  min(1, size * p) and then exactly one member, chosen uniformly, is nonzero, so each
  member keeps (for size * p <= 1) the marginal probability p.

Sets occupy the first features (correlated sets, then anticorrelated sets); the rest are
independent. All sampling takes an explicit `torch.Generator`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

VALUE_DISTRIBUTIONS = ("uniform", "signed_uniform")


@dataclass(frozen=True)
class FeatureDistribution:
    """What the toy models are trained on and what the shards record as truth."""

    n_features: int
    """Number of true features n."""
    feature_probability: tuple[float, ...]
    """Per instance, the probability 1 - S that a feature is nonzero."""
    importance_decay: float = 1.0
    """Importance I_i = decay ** i; 1.0 means all features equally important."""
    value: str = "uniform"
    """Value of a nonzero feature: 'uniform' on [0, 1], 'signed_uniform' on [-1, 1]."""
    n_correlated_sets: int = 0
    """Number of correlated sets (members fire together)."""
    n_anticorrelated_sets: int = 0
    """Number of anticorrelated sets (at most one member fires)."""
    set_size: int = 2
    """Features per correlated or anticorrelated set."""

    def __post_init__(self):
        object.__setattr__(self, "feature_probability", tuple(float(p) for p in self.feature_probability))
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if not self.feature_probability:
            raise ValueError("feature_probability needs at least one value (one per instance)")
        for p in self.feature_probability:
            if not 0.0 < p <= 1.0:
                raise ValueError(f"feature_probability must lie in (0, 1], got {p}")
        if not 0.0 < self.importance_decay <= 1.0:
            raise ValueError(f"importance_decay must lie in (0, 1], got {self.importance_decay}")
        if self.value not in VALUE_DISTRIBUTIONS:
            raise ValueError(f"value must be one of {VALUE_DISTRIBUTIONS}, got {self.value!r}")
        if self.n_correlated_sets < 0 or self.n_anticorrelated_sets < 0:
            raise ValueError("numbers of correlated/anticorrelated sets must be >= 0")
        if self.set_size < 2:
            raise ValueError(f"set_size must be >= 2, got {self.set_size}")
        if self.n_set_features > self.n_features:
            raise ValueError(
                f"{self.n_correlated_sets} correlated + {self.n_anticorrelated_sets} anticorrelated "
                f"sets of {self.set_size} need {self.n_set_features} features, "
                f"but n_features is {self.n_features}")

    @property
    def n_instances(self) -> int:
        return len(self.feature_probability)

    @property
    def n_set_features(self) -> int:
        return (self.n_correlated_sets + self.n_anticorrelated_sets) * self.set_size

    @property
    def signed(self) -> bool:
        return self.value == "signed_uniform"

    def importance(self, device=None) -> torch.Tensor:
        """[n_features] I_i = decay ** i."""
        return self.importance_decay ** torch.arange(self.n_features, device=device, dtype=torch.float32)

    def probability(self, device=None) -> torch.Tensor:
        """[n_instances, n_features] marginal firing probability of each feature."""
        p = torch.tensor(self.feature_probability, device=device, dtype=torch.float32)
        p = p[:, None].expand(self.n_instances, self.n_features).clone()
        lo = self.n_correlated_sets * self.set_size
        hi = self.n_set_features
        if hi > lo:
            # an anticorrelated set fires with min(1, size * p), then one member of `size`
            p[:, lo:hi] = (p[:, lo:hi] * self.set_size).clamp(max=1.0) / self.set_size
        return p

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sample(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """Draw x: [batch, n_instances, n_features]."""
        device = device if device is not None else generator.device
        shape = (batch, self.n_instances, self.n_features)
        p = torch.tensor(self.feature_probability, device=device, dtype=torch.float32)[:, None]
        # One uniform draw u gives both events: fires iff u < p, and then u / p is again
        # uniform on [0, 1), so the value costs no second draw (halves the RNG time).
        u = torch.rand(shape, generator=generator, device=device)  # [batch, inst, n]
        fires = u < p
        values = u / p
        if self.n_set_features:
            fires[:, :, : self.n_set_features] = self._set_firing(batch, p, generator, device)
            values[:, :, : self.n_set_features] = torch.rand(
                (batch, self.n_instances, self.n_set_features), generator=generator, device=device)
        if self.signed:
            values = values * 2.0 - 1.0
        return torch.where(fires, values, torch.zeros((), device=device))

    def _set_firing(self, batch, p, generator, device) -> torch.Tensor:
        """[batch, n_instances, n_set_features] bool firing pattern of the set features."""
        k, n_inst = self.set_size, self.n_instances
        parts = []
        if self.n_correlated_sets:
            coin = torch.rand((batch, n_inst, self.n_correlated_sets), generator=generator, device=device) < p
            parts.append(coin.repeat_interleave(k, dim=2))
        if self.n_anticorrelated_sets:
            n_sets = self.n_anticorrelated_sets
            coin = (torch.rand((batch, n_inst, n_sets), generator=generator, device=device)
                    < (p * k).clamp(max=1.0))
            member = torch.randint(k, (batch, n_inst, n_sets), generator=generator, device=device)
            onehot = torch.nn.functional.one_hot(member, k).bool() & coin[..., None]
            parts.append(onehot.reshape(batch, n_inst, n_sets * k))
        if not parts:
            return torch.zeros((batch, n_inst, 0), dtype=torch.bool, device=device)
        return torch.cat(parts, dim=2)
