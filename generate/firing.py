"""The parts of a benchmark world (generate/worlds.py): probability schedules, correlated firing
(a Gaussian copula), parent/child hierarchies, and the documented magnitude choice.

A world says how the true feature values x [rows, n_features] are drawn; the synthetic source
then writes h = x @ atoms. Everything here keeps the stated *marginal* firing probability of
each feature, or, where a hierarchy makes that impossible, says so and reports the realised
marginal, which is what `ground_truth.safetensors` records as `probability`.

- Schedules (feature 0 is the most frequent): `constant` p_i = p_max; `linear` from p_max to
  p_min; `exponential` p_i = p_max (p_min / p_max)^(i / (n-1)), i.e. a constant decay rate
  per index; `zipf` p_i ∝ (i+1)^-exponent, rescaled affinely so that p_0 = p_max and
  p_{n-1} = p_min (as SAELens `sae_lens/synthetic/firing_probabilities.py`,
  `zipfian_firing_probabilities`, does for SynthSAEBench).
- Correlation: a Gaussian copula. z ~ N(0, Σ) with Σ = F Fᵀ + diag(δ) a correlation matrix
  (unit diagonal); feature i fires iff z_i < Φ⁻¹(p_i), so P(fire_i) = p_i exactly whatever Σ
  is. `random_correlation` draws F [n, rank] ~ scale · N(0, 1), δ = max(1 - ‖F_i‖², 0.01), then
  rescales each row to unit variance; for rank · scale² < 0.99 this is SAELens'
  `generate_random_low_rank_correlation_matrix` (SynthSAEBench-16k: rank 25, scale 0.1). A full
  Σ goes in through its Cholesky factor (`correlation_from_matrix`).
- Hierarchy: `n_roots` trees of `branching` children per node and `depth` generations below
  the roots, laid out breadth first from feature 0 (roots first, then every child of level 1,
  ...), as SAELens `generate_hierarchy` does; features after the trees are free. A child fires
  only when its parent fires, then with conditional probability q_c = p_c / P_parent, so its
  marginal is p_c when p_c <= P_parent and P_parent otherwise. With mutually exclusive children
  one uniform per parent picks at most one child (child c with probability q_c); where the
  siblings' q_c sum above 1 they are scaled to sum to 1, so each child's marginal is
  P_parent q_c / Σq < p_c. (SAELens instead draws children independently and keeps one at
  random, compensating approximately; here the realised marginal is exact and recorded.)
  `child_share` s < 1 (the world's `hierarchy_child_share`) caps the siblings' sum at s
  instead of 1 (each q_c at s when not exclusive), so a parent fires alone at least 1 - s of
  the time: with s = 1 and children that sum above their parent, it never does, and a
  parent's direction is then told from a mixture with its children only by magnitudes.
  The copula acts only between features without a parent (roots and free features): a child's
  own coin is independent, which is what keeps every marginal above exact.
- Magnitudes of a firing feature: `uniform` on [0, 1] (the toy default), `signed_uniform` on
  [-1, 1], or `folded_normal` |N(mean_i, std_i)| with mean_i linear in the feature index
  (SynthSAEBench-16k: 5.0 for the most frequent to 4.0 for the rarest) and
  std_i = |N(magnitude_std, magnitude_std_spread)| drawn once per feature (SynthSAEBench-16k:
  folded normal, mean 0.5, std 0.5). SAELens uses ReLU(mean + std·N(0, 1)); the fold keeps a
  firing feature nonzero, so "fires" and "x != 0" stay the same event in the shards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch loads when a world is drawn, not for its fields (`--help`)
    import torch

from unsuperpose.data.configs import ConfigError

SCHEDULES = ("constant", "linear", "exponential", "zipf")
_MIN_DIAG = 0.01  # the least own (unshared) variance a copula latent keeps, as SAELens


# ---- probability schedules -------------------------------------------------------------------
def probability_schedule(kind: str, n: int, p_max: float, p_min: float,
                         exponent: float = 1.0) -> torch.Tensor:
    """[n] float32 firing probabilities, p_0 = p_max (most frequent) down to p_{n-1} = p_min."""
    import torch
    if kind not in SCHEDULES:
        raise ConfigError("probability_schedule", f"must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if not 0 < p_max <= 1:
        raise ConfigError("feature_probability", f"p_max must lie in (0, 1], got {p_max}")
    if kind != "constant" and not 0 < p_min <= p_max:
        raise ConfigError("p_min", f"must lie in (0, p_max={p_max}], got {p_min}")
    if exponent <= 0:
        raise ConfigError("zipf_exponent", f"must be > 0, got {exponent}")
    i = torch.arange(n, dtype=torch.float64)
    if kind == "constant" or n == 1:
        p = torch.full((n,), p_max, dtype=torch.float64)
    elif kind == "linear":
        p = p_max + (p_min - p_max) * i / (n - 1)
    elif kind == "exponential":
        p = p_max * (p_min / p_max) ** (i / (n - 1))
    else:  # zipf: (i+1)^-a mapped affinely onto [p_min, p_max]
        r = (i + 1) ** -exponent
        p = p_min + (p_max - p_min) * (r - r[-1]) / (r[0] - r[-1])
    return p.float()


def exponential_endpoints(n: int, decay: float, mean_active: float) -> tuple[float, float]:
    """(p_max, p_min) of p_i = p_max decay^i with sum_i p_i = mean_active (Sharkey et al.)."""
    p_max = mean_active * (1 - decay) / (1 - decay ** n)
    return p_max, p_max * decay ** (n - 1)


# ---- Gaussian copula -------------------------------------------------------------------------
class Correlation(NamedTuple):
    """Σ = factor @ factorᵀ + diag(diag), a correlation matrix (unit diagonal)."""

    factor: torch.Tensor  # [n, rank]
    diag: torch.Tensor  # [n]

    def matrix(self) -> torch.Tensor:
        """[n, n] dense Σ (for checks; sampling never forms it)."""
        import torch
        return self.factor @ self.factor.T + torch.diag(self.diag)


def random_correlation(n: int, rank: int, scale: float, generator: torch.Generator,
                       device=None) -> Correlation:
    """A random low-rank-plus-diagonal correlation matrix: normalise(F Fᵀ + diag)."""
    import torch
    if rank < 1:
        raise ConfigError("correlation_rank", f"must be >= 1, got {rank}")
    if scale < 0:
        raise ConfigError("correlation_scale", f"must be >= 0, got {scale}")
    factor = scale * torch.randn((n, rank), generator=generator, device=device)  # [n, rank]
    shared = (factor ** 2).sum(1)  # [n]
    own = (1 - shared).clamp(min=_MIN_DIAG)
    norm = (shared + own).sqrt()  # rows back to unit variance
    return Correlation(factor / norm[:, None], own / norm ** 2)


def correlation_from_matrix(sigma: torch.Tensor) -> Correlation:
    """A full correlation matrix [n, n] as its Cholesky factor (diag term zero)."""
    import torch
    if not torch.allclose(sigma.diagonal(), torch.ones_like(sigma.diagonal()), atol=1e-5):
        raise ValueError("correlation matrix needs a unit diagonal")
    return Correlation(torch.linalg.cholesky(sigma), torch.zeros(sigma.shape[0], device=sigma.device))


def copula_fires(p: torch.Tensor, corr: Correlation, batch: int,
                 generator: torch.Generator) -> torch.Tensor:
    """p: [inst, n] marginals -> [batch, inst, n] bool, fire_i = z_i < Φ⁻¹(p_i), z ~ N(0, Σ)."""
    import torch
    n_inst, n = p.shape
    rank = corr.factor.shape[1]
    device = corr.factor.device
    shared = torch.randn((batch, n_inst, rank), generator=generator, device=device)
    z = shared @ corr.factor.T  # [batch, inst, n]
    z += corr.diag.sqrt() * torch.randn((batch, n_inst, n), generator=generator, device=device)
    return z < torch.special.ndtri(p)  # ndtri(1) = inf: p = 1 always fires


# ---- hierarchy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hierarchy:
    """Breadth-first trees over the first n_tree features; see the module docstring."""

    n_roots: int
    branching: int
    depth: int
    exclusive: bool
    child_share: float = 1.0  # the most of a parent's firings its children may take

    def level_sizes(self) -> list[int]:
        """Features per level, roots first: [R, R b, R b², ...]."""
        return [self.n_roots * self.branching ** level for level in range(self.depth + 1)]

    @property
    def n_tree(self) -> int:
        return sum(self.level_sizes())

    def level_ranges(self) -> list[tuple[int, int, int]]:
        """(start, count, parent_start) of each level below the roots; a level's j-th feature
        has the previous level's (j // branching)-th feature as parent."""
        sizes = self.level_sizes()
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [(starts[k], sizes[k], starts[k - 1]) for k in range(1, len(sizes))]

    def parent(self, n_features: int) -> torch.Tensor:
        """[n_features] int64 parent index, -1 for roots and free features."""
        import torch
        parent = torch.full((n_features,), -1, dtype=torch.int64)
        for start, count, parent_start in self.level_ranges():
            parent[start:start + count] = parent_start + torch.arange(count) // self.branching
        return parent

    def conditionals(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p: [inst, n] stated marginals -> (q, realised), both [inst, n]: q the probability a
        feature fires given its parent fires (p itself for features without a parent)."""
        q, realised = p.clone(), p.clone()
        n_inst = p.shape[0]
        for start, count, parent_start in self.level_ranges():
            n_par = count // self.branching
            parent_p = realised[:, parent_start:parent_start + n_par, None]  # [inst, par, 1]
            q_level = p[:, start:start + count].reshape(n_inst, n_par, self.branching) / parent_p
            share = self.child_share
            if self.exclusive:
                q_level = q_level * (share / q_level.sum(-1, keepdim=True).clamp(min=share))
            else:
                q_level = q_level.clamp(max=share)
            q[:, start:start + count] = q_level.reshape(n_inst, count)
            realised[:, start:start + count] = (parent_p * q_level).reshape(n_inst, count)
        return q, realised

    def apply(self, fires: torch.Tensor, q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """fires: [batch, inst, n] with the parentless features set -> children filled in, in
        place, level by level (a loop over levels, vectorised over rows and features)."""
        import torch
        batch, n_inst, _ = fires.shape
        b, device = self.branching, fires.device
        for start, count, parent_start in self.level_ranges():
            n_par = count // b
            parent_fires = fires[:, :, parent_start:parent_start + n_par, None]  # [B, inst, par, 1]
            q_level = q[:, start:start + count].reshape(n_inst, n_par, b)
            if self.exclusive:  # one uniform per parent picks the child whose interval holds it
                u = torch.rand((batch, n_inst, n_par, 1), generator=generator, device=device)
                hi = q_level.cumsum(-1)  # child k's interval [hi_{k-1}, hi_k): disjoint
                lo = torch.cat([torch.zeros_like(hi[..., :1]), hi[..., :-1]], -1)
                own = (u >= lo) & (u < hi)  # [B, inst, par, b]
            else:
                own = torch.rand((batch, n_inst, n_par, b), generator=generator, device=device) < q_level
            fires[:, :, start:start + count] = (own & parent_fires).reshape(batch, n_inst, count)
        return fires
