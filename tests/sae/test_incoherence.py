"""sae/incoherence.py: the bound on the cosine between atoms, and k-SVD/MOD's `incoherence`."""
import math

import numpy as np
import pytest
import torch

from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.incoherence import decohere_atoms, random_coherence
from unsuperpose.sae.mod import MOD
from unsuperpose.sae.sparse_coding_config import PLAIN_ALGORITHM


def _unit(D):
    return D / D.norm(dim=-1, keepdim=True)


def test_random_coherence_is_sqrt_of_2_ln_n_over_d():
    assert random_coherence(2560, 160) == pytest.approx(math.sqrt(2 * math.log(2560) / 160))
    assert random_coherence(2560, 160) == pytest.approx(0.3132, abs=1e-4)
    assert random_coherence(1000, 2) == 1.0  # capped


def test_the_less_used_atom_moves_onto_the_bound_in_the_plane_of_the_pair():
    e = torch.eye(4, dtype=torch.float64)
    D = torch.stack([e[0], _unit(e[0] + e[1]), e[2], _unit(-0.9 * e[2] + 0.1 * e[3])])
    usage = torch.tensor([10, 5, 1, 7])
    out, moves = decohere_atoms(D, usage, 0.3)
    assert moves == 2
    # rows 0 and 3 are the more used of their pairs and stay where they were
    assert torch.equal(out[0], D[0]) and torch.equal(out[3], D[3])
    # row 1 keeps its direction away from row 0 (e1) and meets it at cos 0.3
    assert out[1].tolist() == pytest.approx([0.3, math.sqrt(1 - 0.09), 0, 0])
    # a negative pair stays negative: row 2 meets row 3 at cos -0.3, in their plane
    assert float(out[2] @ out[3]) == pytest.approx(-0.3)
    assert float(out[2] @ e[1]) == pytest.approx(0) and float(out[2].norm()) == pytest.approx(1)


def test_pairs_below_the_bound_are_left_exactly_alone():
    D = torch.linalg.qr(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))[0].T
    out, moves = decohere_atoms(D.contiguous(), torch.arange(6), 0.1)  # orthonormal rows
    assert moves == 0 and torch.equal(out, D)


def test_every_pair_ends_at_or_below_the_bound_and_the_most_used_atom_stays():
    gen = torch.Generator().manual_seed(1)
    D = _unit(torch.randn(24, 16, generator=gen) + 2 * torch.randn(1, 16, generator=gen))
    before = (D @ D.T).fill_diagonal_(0).abs().max()
    usage = torch.randperm(24, generator=gen)
    out, moves = decohere_atoms(D, usage, 0.6)
    cos = (out @ out.T).fill_diagonal_(0).abs()
    assert before > 0.8 and moves > 0
    assert float(cos.max()) <= 0.6 + 1e-6
    assert torch.allclose(out.norm(dim=1), torch.ones(24))
    top = int(usage.argmax())
    assert torch.equal(out[top], D[top])


def test_the_bound_must_lie_in_the_open_unit_interval():
    with pytest.raises(ValueError, match="max_cos"):
        decohere_atoms(torch.eye(3), torch.ones(3), 1.0)


def test_mod_with_incoherence_keeps_its_atoms_apart_and_logs_the_moves():
    gen = np.random.default_rng(0)
    d, n = 12, 24
    G = gen.normal(size=(n, d))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    codes = (gen.random((3000, n)) < 0.1) * np.abs(gen.normal(1, 0.2, (3000, n)))
    X = (codes @ G).astype(np.float32)
    plain = {**PLAIN_ALGORITHM, "n_iter": 6, "n_swaps": 0}
    fits = {inc: MOD(n_components=n, k=3, incoherence=inc, nonnegative=True, random_state=0,
                     device="cpu", **plain).fit(X)
            for inc in (None, 0.9)}
    bound = 0.9 * random_coherence(n, d)

    def max_cos(est):
        A = est.components_ / np.linalg.norm(est.components_, axis=1, keepdims=True)
        return float(np.abs(np.triu(A @ A.T, 1)).max())

    assert max_cos(fits[None]) > bound + 0.05  # the plain fit does not stay apart by itself
    assert max_cos(fits[0.9]) <= bound + 1e-5
    assert all(e["n_decohered_atoms"] >= 0 for e in fits[0.9].log_)
    assert sum(e["n_decohered_atoms"] for e in fits[0.9].log_) > 0
    assert "n_decohered_atoms" not in fits[None].log_[0]


def test_incoherence_must_be_positive():
    with pytest.raises(ConfigError, match="incoherence"):
        MOD(n_components=4, k=1, incoherence=0)


def test_duplicates_above_leave_above_are_left_for_replacement():
    e = torch.eye(3, dtype=torch.float64)
    D = torch.stack([e[0], _unit(e[0] + 0.05 * e[1]), e[2]])  # cos 0.9988: a duplicate
    out, moves = decohere_atoms(D, torch.tensor([2, 1, 0]), 0.3, leave_above=0.99)
    assert moves == 0 and torch.equal(out, D)
    out, moves = decohere_atoms(D, torch.tensor([2, 1, 0]), 0.3)
    assert moves == 1 and float(out[0] @ out[1]) == pytest.approx(0.3)


def test_the_bound_waits_for_the_spares_to_be_pruned():
    from unsuperpose.sae.fit_schedule import prune_iteration

    gen = np.random.default_rng(1)
    G = gen.normal(size=(24, 12))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    X = ((gen.random((2000, 24)) < 0.1) * 1.0 @ G).astype(np.float32)
    est = MOD(n_components=24, k=3, n_iter=8, n_swaps=0, overcomplete=0.5, incoherence=0.9,
              nonnegative=True, random_state=0, device="cpu").fit(X)
    last_spare = prune_iteration(8)
    assert all(e["n_decohered_atoms"] == 0 for e in est.log_[:last_spare])
    assert sum(e["n_decohered_atoms"] for e in est.log_[last_spare:]) > 0
