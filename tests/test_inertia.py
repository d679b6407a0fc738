"""sae.inertia: the heavy-ball step of the k-SVD/MOD fit."""
import math

import torch

from sae.inertia import extrapolate_atoms


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


def test_a_step_that_cancels_the_update_keeps_the_updated_direction():
    # start and previous at angles +-a with sin a = 0.625: the step is (0, 1.25), and 0.8 of
    # it cancels the updated atom (0, -1) exactly
    c = math.sqrt(1 - 0.625 ** 2)
    start, previous = torch.tensor([[c, 0.625]]), torch.tensor([[c, -0.625]])
    updated = torch.tensor([[0.0, -1.0]])
    out = extrapolate_atoms(updated, start, previous, 0.8)
    torch.testing.assert_close(out, updated)
