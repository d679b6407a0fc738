"""Recovery metrics on cases with known answers."""
import numpy as np
import pytest

from evaluate.metrics import cosine_matrix, hungarian_match, mmcs, per_feature_max_cosine


def _unit_rows(n, d, seed=0):
    A = np.random.default_rng(seed).normal(size=(n, d))
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def test_permuted_rescaled_copy_scores_one():
    G = _unit_rows(20, 8)
    A = G[np.random.default_rng(1).permutation(20)] * np.linspace(0.5, 3, 20)[:, None]
    assert mmcs(G, A) == pytest.approx(1.0)
    rows, cols, cos = hungarian_match(G, A)
    assert np.allclose(cos, 1.0) and len(rows) == 20


def test_sign_flipped_atoms_score_low_signed_and_one_absolute():
    G = _unit_rows(10, 16)
    assert mmcs(G, -G, signed=False) == pytest.approx(1.0)
    assert mmcs(G, -G) < 0.5


def test_half_the_features_missing_halves_the_recovered_fraction():
    G = _unit_rows(10, 32)
    A = np.vstack([G[:5], _unit_rows(5, 32, seed=9)])
    _, _, cos = hungarian_match(G, A)
    assert (cos >= 0.99).mean() == pytest.approx(0.5)
    assert (per_feature_max_cosine(G, A) >= 0.99).sum() == 5


def test_random_atoms_score_near_the_random_baseline():
    d, n = 64, 256
    score = mmcs(_unit_rows(100, d, 3), _unit_rows(n, d, 4), signed=False)
    assert 0.25 < score < np.sqrt(2 * np.log(2 * n) / d) + 0.05


def test_zero_rows_have_cosine_zero():
    C = cosine_matrix(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert C.tolist() == [[0.0], [1.0]]
