"""Recovery metrics on cases with known answers."""
import numpy as np
import pytest

from unsuperpose.evaluate.metrics import (
    best_true_feature,
    cosine_matrix,
    dimensions_per_feature,
    duplicate_fraction,
    frobenius_norm_sq,
    hungarian_match,
    matched_cosines,
    mcc,
    mmcs,
    per_feature_max_cosine,
    recovered_fraction,
    superposition,
    uniqueness,
)


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


def test_mcc_and_uniqueness_score_one_for_a_permuted_rescaled_sign_flipped_copy():
    G = _unit_rows(20, 8)
    perm = np.random.default_rng(1).permutation(20)
    A = G[perm] * np.linspace(-3, 3, 20)[:, None]  # rescaled, half of them sign-flipped
    assert mcc(G, A) == pytest.approx(1.0)
    assert uniqueness(G, A) == pytest.approx(1.0)
    assert mmcs(G, A) < 0.9  # the signed score does see the flips
    # surplus atoms do not lower mcc (it averages over the min(n_true, n_atoms) pairs)
    assert mcc(G, np.vstack([A, _unit_rows(10, 8, seed=2)])) == pytest.approx(1.0)


def test_uniqueness_of_k_atoms_on_one_feature_is_one_over_k():
    G = _unit_rows(6, 16)
    assert uniqueness(G, np.repeat(G[:1], 4, axis=0)) == pytest.approx(1 / 4)
    assert uniqueness(G, np.vstack([G[:3], G[:1]])) == pytest.approx(3 / 4)


def test_mcc_of_random_atoms_is_well_below_one():
    score = mcc(_unit_rows(40, 64, 3), _unit_rows(40, 64, 4))
    assert 0.05 < score < 0.5


def test_the_signed_and_absolute_matchings_differ_and_each_is_handed_on_as_computed():
    # e1, e2 against -e1 and (0.6, 0.8): signed, -e1 is worth less than nothing, so e1 takes
    # (0.6, 0.8) and e2 is left -e1 (cos 0); on |cos|, -e1 serves e1 and (0.6, 0.8) serves e2
    G, A = np.eye(2), np.array([[-1.0, 0.0], [0.6, 0.8]])
    signed, absolute = hungarian_match(G, A), hungarian_match(G, A, signed=False)
    assert signed[1].tolist() == [1, 0] and absolute[1].tolist() == [0, 1]
    assert np.allclose(signed[2], [0.6, 0.0]) and np.allclose(absolute[2], [1.0, 0.8])
    with_C = hungarian_match(G, A, C=cosine_matrix(G, A))
    assert all(np.array_equal(x, y) for x, y in zip(with_C, signed))
    assert np.allclose(matched_cosines(G, A, match=signed), [0.6, 0.0])
    assert mcc(G, A, abs_match=absolute) == mcc(G, A) == pytest.approx(0.9)
    best = best_true_feature(A, G)
    assert best.tolist() == [0, 1] and uniqueness(G, A, best=best) == uniqueness(G, A) == 1.0


def test_score_dictionary_reads_each_matching_where_it_belongs():
    from unsuperpose.evaluate.scoring import score_dictionary

    G, A = np.eye(2), np.array([[-1.0, 0.0], [0.6, 0.8]])
    H = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    codes = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])   # atom 1 fires with e1, atom 0 with e2
    true_acts = H.copy()
    sc = score_dictionary(G, A, H, H, codes, true_acts, (0.5,), 0.95)
    assert sc.scalars["matched_cos"] == pytest.approx(0.3)      # signed: (0.6 + 0) / 2
    assert sc.scalars["recovered_0.5"] == pytest.approx(0.5)
    assert sc.scalars["mcc"] == pytest.approx(0.9)              # |cos|: (1 + 0.8) / 2
    assert sc.scalars["uniqueness"] == 1.0
    assert sc.atom_order.tolist() == [1, 0]                     # e1's atom first
    # code r over the signed pairs: atom 1 vs e1 (rows 1, 0, 0 vs 1, 0, 1), atom 0 vs e2
    assert sc.scalars["code_correlation"] == pytest.approx(0.5)
    # latents judged against their best |cos| feature (atom 0 -> e1, atom 1 -> e2): atom 0
    # fires on row 1 only, where e1 is 0; atom 1 fires on row 0, where e2 is 0: no hit at all
    assert sc.scalars["precision"] == sc.scalars["recall"] == sc.scalars["f1"] == 0.0


def test_matched_cosines_leave_surplus_features_unmatched_and_unrecovered():
    G = _unit_rows(10, 32)
    matched = matched_cosines(G, G[:4])  # 4 atoms for 10 features
    assert np.isnan(matched).sum() == 6 and np.allclose(matched[:4], 1.0)
    assert recovered_fraction(matched, 0.99) == pytest.approx(0.4)
    assert np.isnan(recovered_fraction(np.array([]), 0.9))


def test_half_the_features_recovered_gives_half_by_matched_cosine():
    G = _unit_rows(10, 32)
    matched = matched_cosines(G, np.vstack([G[:5], _unit_rows(5, 32, seed=9)]))
    assert recovered_fraction(matched, 0.99) == pytest.approx(0.5)
    assert recovered_fraction(matched, 0.9) == pytest.approx(0.5)


def test_duplicate_fraction_counts_near_parallel_atoms_not_antipodal_ones():
    e = np.eye(3)
    assert duplicate_fraction(np.vstack([e[0], 2 * e[0], e[1]])) == pytest.approx(2 / 3)
    assert duplicate_fraction(np.vstack([e[0], -e[0], e[1]])) == 0.0
    assert duplicate_fraction(e[:1]) == 0.0


def test_toy_model_view_by_hand():
    W = np.eye(4)  # [d, n]: four features, each with its own dimension
    assert frobenius_norm_sq(W) == 4 and dimensions_per_feature(W) == 1.0
    assert np.allclose(superposition(W), 0.0)
    pairs = np.array([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])  # two antipodal pairs, d = 2
    assert frobenius_norm_sq(pairs) == 4 and dimensions_per_feature(pairs) == 0.5
    assert np.allclose(superposition(pairs), 1.0)
    assert superposition(np.zeros((2, 3))).tolist() == [0.0, 0.0, 0.0]
