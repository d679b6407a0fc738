"""Code-level metrics and the scoring of one dictionary, on hand-set cases with known answers."""
import numpy as np
import pytest

from unsuperpose.evaluate.code_metrics import (
    code_correlation,
    dead_latents,
    explained_variance,
    firing_classification,
    fvu,
    l0,
    shrinkage,
)
from unsuperpose.evaluate.scoring import recovered_key, score_dictionary


def _centered(rows=50, d=4, seed=0):
    H = np.random.default_rng(seed).normal(size=(rows, d))
    return H - H.mean(axis=0)


def test_fvu_and_explained_variance_by_hand():
    H = _centered()
    assert fvu(H, H) == 0.0 and explained_variance(H, H) == pytest.approx(1.0)
    mean = np.broadcast_to(H.mean(axis=0), H.shape)
    assert fvu(H, mean) == pytest.approx(1.0) and explained_variance(H, mean) == pytest.approx(0.0)
    assert fvu(H, 0.5 * H) == pytest.approx(0.25)  # H has zero mean: residual 0.25 ||H||^2
    assert explained_variance(H, 0.5 * H) == pytest.approx(0.75)
    assert np.isnan(fvu(H[:0], H[:0])) and np.isnan(explained_variance(H[:0], H[:0]))


def test_shrinkage_is_the_mean_norm_ratio_and_skips_zero_rows():
    H = np.vstack([_centered(), np.zeros((5, 4))])
    assert shrinkage(H, 0.5 * H) == pytest.approx(0.5)
    assert np.isnan(shrinkage(np.zeros((3, 4)), np.zeros((3, 4))))


def test_l0_and_dead_latents_count_nonzero_codes_of_either_sign():
    codes = np.array([[0.0, 2.0, 0.0], [-1.0, 3.0, 0.0]])
    assert l0(codes) == 1.5 and dead_latents(codes) == 1
    assert np.isnan(l0(np.zeros((0, 3))))


def test_firing_classification_by_hand():
    G = np.eye(2)                         # two true directions
    A = np.array([[1.0, 0.1], [0.1, 1.0]])  # latent j best matches feature j
    true_acts = np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    codes = np.array([[0.7, 0.0], [0.2, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # latent 0: TP = row 0, FP = row 1, FN = row 2 -> P = R = F1 = 1/2; latent 1 never fires -> 0
    out = firing_classification(codes, true_acts, A, G)
    assert out == pytest.approx({"precision": 0.25, "recall": 0.25, "f1": 0.25})
    # a sign-flipped atom with sign-flipped codes detects the same feature
    assert firing_classification(codes * [-1, 1], true_acts, A * [[-1], [1]], G) == out


def test_code_correlation_is_one_for_an_affine_code_and_zero_for_a_dead_atom():
    x = np.random.default_rng(0).uniform(size=(100, 2))
    codes = np.column_stack([3 * x[:, 1] + 1, np.zeros(100)])
    r = code_correlation(codes, x, atom_index=np.array([0, 1]), true_index=np.array([1, 0]))
    assert r == pytest.approx([1.0, 0.0])


def test_a_planted_dictionary_scores_perfectly():
    """G recovered exactly (permuted, rescaled atoms) and codes equal to the true values:
    every recovery metric is 1 and the reconstruction exact."""
    rng = np.random.default_rng(0)
    G = rng.normal(size=(6, 5))
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    true_acts = rng.uniform(size=(400, 6)) * (rng.uniform(size=(400, 6)) < 0.3)
    perm = rng.permutation(6)
    A = G[perm] * 2.0
    codes = true_acts[:, perm] / 2.0
    H = true_acts @ G
    s = score_dictionary(G, A, H, codes @ A, codes, true_acts, (0.9, 0.99), 0.95)
    for key in ("mmcs", "mmcs_abs", "reverse_mmcs", "matched_cos", "mcc", "uniqueness",
                recovered_key(0.9), recovered_key(0.99), "precision", "recall", "f1",
                "code_correlation", "explained_variance", "shrinkage"):
        assert s.scalars[key] == pytest.approx(1.0), key
    assert s.scalars["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert s.scalars["l0"] == pytest.approx(s.scalars["true_l0"])
    assert s.scalars["dead_latents"] == 0 and s.scalars["duplicate_fraction"] == 0.0
    assert np.array_equal(s.atom_order, np.argsort(perm))  # atom of true direction i first


def test_scoring_with_no_true_direction_or_no_rows_leaves_those_metrics_out():
    A = np.eye(3)
    H = np.random.default_rng(0).normal(size=(20, 3))
    s = score_dictionary(np.zeros((0, 3)), A, H, H, H, np.zeros((20, 0)), (0.9,), 0.95)
    assert "mmcs" not in s.scalars and "f1" not in s.scalars and s.scalars["fvu"] == 0.0
    s = score_dictionary(A, A, H[:0], H[:0], H[:0], np.zeros((0, 3)), (0.9,), 0.95)
    assert s.scalars["mcc"] == 1.0 and "fvu" not in s.scalars and "code_correlation" not in s.scalars
