"""A planted dictionary problem: noiseless data whose atoms are known, for tests and benchmarks."""
from __future__ import annotations

import torch


def planted_problem(n_samples: int = 20_000, n_features: int = 64, d: int = 32, active: int = 3,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """H = C A with unit atoms A [n_features, d] and exactly `active` distinct features per
    sample, magnitudes uniform in [0.5, 1.5]. Returns (H [n_samples, d], A), float32."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=1)
    which = torch.rand(n_samples, n_features, generator=gen).argsort(dim=1)[:, :active]
    codes = torch.zeros(n_samples, n_features).scatter_(
        1, which, 0.5 + torch.rand(n_samples, active, generator=gen))
    return codes @ atoms, atoms
