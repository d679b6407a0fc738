"""sae.inertia: the heavy-ball step of the k-SVD/MOD fit."""
import math

import torch

from unsuperpose.sae.inertia import extrapolate_atoms


def test_extrapolation_by_hand():
    updated = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    start = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    previous = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = extrapolate_atoms(updated, start, previous, 0.5)
    # row 0: (1, 0) + 0.5 (0.6, -0.2) = (1.3, -0.1); row 1 did not move: stays
    expected0 = torch.tensor([1.3, -0.1]) / math.hypot(1.3, 0.1)
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1.0]))


def test_a_sign_flip_between_iterations_is_not_a_step():
    updated = torch.tensor([[0.0, 1.0]])
    start = torch.tensor([[0.6, 0.8]])
    out = extrapolate_atoms(updated, start, -start, 0.9)
    torch.testing.assert_close(out, updated)


def test_an_update_that_returns_the_negative_atom_gets_the_step_in_its_orientation():
    start = torch.tensor([[0.6, 0.8]])
    previous = torch.tensor([[0.0, 1.0]])
    forward = extrapolate_atoms(torch.tensor([[1.0, 0.0]]), start, previous, 0.5)
    negated = extrapolate_atoms(torch.tensor([[-1.0, 0.0]]), start, previous, 0.5)
    torch.testing.assert_close(negated, -forward)


def test_no_step_turns_an_atom_around_for_beta_below_one():
    # unnormalised, out . updated >= 1 - beta, and |out| <= 1 + 2 beta (the step is at most 2
    # long): so after normalising, out . updated >= (1 - beta) / (1 + 2 beta) for any rows
    gen = torch.Generator().manual_seed(0)
    updated, start, previous = (
        torch.nn.functional.normalize(torch.randn(4096, 3, generator=gen, dtype=torch.float64),
                                      dim=1) for _ in range(3))
    beta = 0.99
    out = extrapolate_atoms(updated, start, previous, beta)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4096, dtype=torch.float64))
    assert float((out * updated).sum(1).min()) >= (1 - beta) / (1 + 2 * beta)
