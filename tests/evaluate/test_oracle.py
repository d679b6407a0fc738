"""The oracle row (evaluate/oracle.py): known answers on planted data."""
import math

import numpy as np
import pytest
from click.testing import CliRunner

from tests.stage_faults import _evaluate, _metric, _sae
from unsuperpose.evaluate.oracle import f1_vs_oracle, oracle_codes, oracle_k, score_oracle, unit_rows

THRESHOLDS = (0.9, 0.99)


def planted(n=8, d=12, k=3, rows=1500, seed=0, dtype=np.float32):
    """Orthogonal true directions of norms in [0.5, 2] (n <= d), 1..k of them active per row
    with values in [0.2, 1]: h = x @ G exactly, as a toy model's ReLU-free hidden layer."""
    rng = np.random.default_rng(seed)
    G = (np.linalg.qr(rng.normal(size=(d, n)))[0].T * rng.uniform(0.5, 2, size=(n, 1))
         ).astype(np.float32)
    X = np.zeros((rows, n))
    for r in range(rows):
        active = rng.choice(n, size=rng.integers(1, k + 1), replace=False)
        X[r, active] = rng.uniform(0.2, 1, size=len(active))
    return G, (X @ G.astype(np.float64)).astype(dtype), X.astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noiseless_planted_rows_are_reconstructed_exactly_with_f1_1(dtype):
    G, H, X = planted(dtype=dtype)
    s = score_oracle(G, H, X, 3, THRESHOLDS, 0.95).scalars
    assert s["fvu"] < 1e-10
    assert s["f1"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["l0"] == s["true_l0"] == pytest.approx(np.count_nonzero(X, axis=1).mean())
    assert s["code_correlation"] == pytest.approx(1.0, abs=1e-6)
    for m in ("mmcs", "mcc", "matched_cos", "recovered_0.99", "uniqueness"):
        assert s[m] == pytest.approx(1.0), m
    assert s["k"] == 3 and s["f1_vs_oracle"] == 1.0 and s["dead_latents"] == 0


def test_the_codes_are_the_true_values_times_the_direction_norms():
    G, H, X = planted(rows=200)
    atoms, codes, H_hat = oracle_codes(G, H, 3)
    assert np.allclose(np.linalg.norm(atoms, axis=1), 1)
    assert np.allclose(codes, X * np.linalg.norm(G, axis=1), atol=1e-5)
    assert np.allclose(H_hat, H, atol=1e-5) and (codes >= 0).all()


def test_too_small_a_k_leaves_exactly_the_smaller_features_unexplained():
    # two orthonormal directions, both active in every row: k = 1 keeps the larger value
    G = np.eye(2, 3, dtype=np.float32)
    X = np.array([[1.0, 0.5], [0.25, 1.0], [0.75, 0.5], [0.5, 1.0]], dtype=np.float32)
    H = X @ G
    s = score_oracle(G, H, X, 1, THRESHOLDS, 0.95).scalars
    residual = float(np.sum(np.min(X, axis=1) ** 2))
    variance = float(np.sum((H - H.mean(axis=0)) ** 2))
    assert s["fvu"] == pytest.approx(residual / variance, rel=1e-6)
    assert s["l0"] == 1.0 and s["true_l0"] == 2.0
    # each latent fires on the rows where its value is the larger: recall 2/4, precision 1
    assert s["recall"] == pytest.approx(0.5) and s["precision"] == 1.0
    assert s["f1"] == pytest.approx(2 / 3)


def test_k_above_the_number_of_directions_is_capped_and_a_negative_row_gets_no_code():
    G = np.eye(2, 3, dtype=np.float32) * 3
    H = np.array([[-1.0, 0, 0], [2.0, 0, 0]], dtype=np.float32)  # -G_0 is no nonnegative mix
    atoms, codes, H_hat = oracle_codes(G, H, 5)
    assert np.array_equal(codes, [[0, 0], [2, 0]]) and np.array_equal(H_hat[0], [0, 0, 0])
    X = np.array([[0, 0], [2 / 3, 0]], dtype=np.float32)
    assert score_oracle(G, H, X, 5, THRESHOLDS, 0.95).scalars["k"] == 2


def test_the_oracle_ignores_the_norms_of_the_true_directions():
    G, H, X = planted(rows=300)
    a = score_oracle(G, H, X, 2, THRESHOLDS, 0.95).scalars
    b = score_oracle(unit_rows(G) * 7, H, X, 2, THRESHOLDS, 0.95).scalars
    assert a == pytest.approx(b, rel=1e-6)


def test_without_rows_only_the_direction_metrics_are_scored():
    G, _, _ = planted()
    atoms, codes, H_hat = oracle_codes(G, np.zeros((0, 12), np.float32), 3)
    assert codes.shape == (0, 8) and H_hat.shape == (0, 12)
    s = score_oracle(G, np.zeros((0, 12), np.float32), np.zeros((0, 8)), 3, THRESHOLDS, 0.95)
    assert s.scalars["mmcs"] == pytest.approx(1.0) and "fvu" not in s.scalars
    assert "f1_vs_oracle" not in s.scalars
    with pytest.raises(ValueError, match="at least one represented true direction"):
        score_oracle(G[:0], np.zeros((3, 12)), np.zeros((3, 0)), 3, THRESHOLDS, 0.95)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        oracle_codes(G, np.zeros((3, 12)), 0)


def test_the_k_comes_from_the_dictionaries_and_disagreement_is_noted():
    assert oracle_k([3, 3, 3]) == (3, None)
    assert oracle_k([None, 2]) == (2, None)
    k, note = oracle_k([1, 4, 2])
    assert k == 4 and note == ("the dictionaries record different k (1, 2, 4): the oracle "
                               "uses the largest, k = 4")
    assert oracle_k([])[0] is None and oracle_k([None, "x", 0, True])[0] is None


def test_f1_as_a_fraction_of_the_oracle():
    assert f1_vs_oracle(0.5, 0.8) == 0.625
    assert math.isnan(f1_vs_oracle(0.5, 0.0)) and math.isnan(f1_vs_oracle(None, 0.8))
    assert math.isnan(f1_vs_oracle(float("nan"), 0.8))


def test_in_superposition_one_active_feature_per_row_is_still_exact():
    # 12 directions in d = 4 (no two parallel): nonnegative OMP at k = 1 picks the active one
    rng = np.random.default_rng(1)
    G = rng.normal(size=(12, 4)).astype(np.float32)
    X = np.zeros((600, 12), np.float32)
    X[np.arange(600), rng.integers(0, 12, 600)] = rng.uniform(0.2, 1, 600)
    H = X @ G
    s = score_oracle(G, H, X, 1, THRESHOLDS, 0.95).scalars
    assert s["fvu"] < 1e-10 and s["f1"] == 1.0 and s["l0"] == 1.0
    # two active features at k = 1 are not: the oracle's FVU is then a real floor
    X2 = X + np.roll(X, 1, axis=1)
    s2 = score_oracle(G, X2 @ G, X2, 1, THRESHOLDS, 0.95).scalars
    assert s2["fvu"] > 0.1 and s2["l0"] == 1.0


# ---- through the stages ----------------------------------------------------------------------
def test_the_oracle_of_noiseless_planted_data_has_fvu_0_and_f1_1(tmp_path):
    from unsuperpose.generate.cli import main as generate_main
    run = tmp_path / "run"
    result = CliRunner().invoke(generate_main, [
        "--run-dir", str(run), "--source", "synthetic", "--n-features", "16", "--d-hidden", "32",
        "--mean-active", "1", "--rows", "3000", "--heldout-rows", "2000", "--device", "cpu"])
    # 16 random directions in 32 dimensions: nearly orthogonal, so greedy OMP finds every
    # row's true support (in 8 dimensions, 2x overcomplete, it misses some: F1 0.93)
    assert result.exit_code == 0, result.output
    assert _sae(run, "--methods", "topk", "--k", "8", "--n-epochs", "1", "--device", "cpu").exit_code == 0
    assert _evaluate(run).exit_code == 0
    assert _metric(run, "oracle", "fvu")[0] < 1e-10
    assert _metric(run, "oracle", "f1") == [1.0]
    assert _metric(run, "oracle", "l0") == pytest.approx(_metric(run, "oracle", "true_l0"))
