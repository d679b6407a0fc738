"""Matched sparsity: calibrating the L1 SAE's lambda to a target L0 on a planted problem, and the
sae stage calibrating l1 and jumprelu to its k by default."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.stage_faults import _evaluate, _metric, _sae
from unsuperpose.data import files
from unsuperpose.data.planted import planted_problem
from unsuperpose.sae.calibration import calibrate_l1_coefficient, full_fit_steps, mean_l0

N_ATOMS, D = 16, 8


@pytest.fixture(scope="module")
def planted() -> torch.Tensor:
    """16 unit atoms in d = 8: 1000 rows with one active atom, 1000 with two (mean L0 1.5);
    one seed, so both halves share the atoms."""
    one, _ = planted_problem(1000, N_ATOMS, D, active=1, seed=0)
    two, _ = planted_problem(1000, N_ATOMS, D, active=2, seed=0)
    return torch.cat([one, two])


def params(**overrides) -> dict:
    # short fits keep the test fast; the search does not depend on the fit's length
    return {"n_components": N_ATOMS, "random_state": 0, "device": "cpu", "n_steps": 200,
            "lr_warmup_steps": 20, **overrides}


@pytest.mark.slow
@pytest.mark.parametrize("initial", [0.03, 3.0])  # far below and far above the answer
def test_calibration_lands_within_ten_percent_of_the_target(planted, initial):
    result = calibrate_l1_coefficient(planted, params(), 1.5, initial_l1_coefficient=initial)
    assert result.within_tolerance
    assert abs(result.achieved_l0 - 1.5) <= 0.1 * 1.5
    assert result.history[0][0] == initial and result.n_fits == len(result.history) > 1
    assert (result.l1_coefficient, result.achieved_l0) == result.history[-1]
    # each probe is the full fit here, so the returned estimator has that L0 on the rows
    assert result.is_full_fit and result.probe_steps == 200
    assert mean_l0(result.estimator, planted) == pytest.approx(result.achieved_l0, abs=1e-9)
    # L0 falls as lambda grows over the probes
    lams, l0s = zip(*sorted(result.history))
    assert l0s[0] > 1.5 > l0s[-1]


@pytest.mark.slow
def test_calibration_is_deterministic_for_a_fixed_random_state(planted):
    runs = [calibrate_l1_coefficient(planted, params(), 1.5, subsample_rows=1200,
                                     eval_rows=400) for _ in range(2)]
    assert runs[0].history == runs[1].history
    assert runs[0].l1_coefficient == runs[1].l1_coefficient
    np.testing.assert_array_equal(runs[0].estimator.components_, runs[1].estimator.components_)
    # a subsample fit on 1200 rows, measured on 400 others
    assert (runs[0].fit_rows, runs[0].eval_rows, runs[0].is_full_fit) == (1200, 400, False)
    assert runs[0].within_tolerance
    other = calibrate_l1_coefficient(planted, params(random_state=1), 1.5, subsample_rows=1200,
                                     eval_rows=400, max_fits=1)
    assert other.history != runs[0].history[:1]


@pytest.mark.parametrize("target", [0, -1.0, N_ATOMS + 1, math.nan, math.inf, True])
def test_a_refused_target_raises_naming_target_l0(planted, target):
    with pytest.raises(ValueError, match="target_l0"):
        calibrate_l1_coefficient(planted, params(), target)


def test_out_of_probes_returns_the_closest_probe_and_reports_progress(planted):
    calls = []
    result = calibrate_l1_coefficient(planted, params(), 1.0, initial_l1_coefficient=1e-3,
                                      max_fits=2, progress=lambda i, n, info: calls.append((i, n, info)))
    assert [(i, n) for i, n, _ in calls] == [(1, 2), (2, 2)]
    assert [info["l1_coefficient"] for _, _, info in calls] == [1e-3, 2e-3]
    assert not result.within_tolerance and result.n_fits == 2
    assert result.l1_coefficient == 2e-3  # the denser start moved up 2x: the closer of two
    assert result.to_dict()["history"] == [list(p) for p in result.history]


def test_full_fit_steps_follow_the_estimator():
    assert full_fit_steps({"n_steps": 7}, 10_000) == 7
    assert full_fit_steps({"batch_size": 100, "n_epochs": 3}, 1001) == 33
    assert full_fit_steps({}, 1280) == 100  # L1SAE's defaults: batch 128, 10 epochs


def test_a_near_flat_l0_curve_moves_lambda_by_the_largest_step_without_overflow():
    from unsuperpose.sae.calibration import MAX_GROWTH, _expansion
    # L0 barely moves over a 2x step of lambda: the extrapolated factor is astronomically large
    assert _expansion([(1.0, 8.0), (2.0, 7.999999)], target=1.0) == pytest.approx(MAX_GROWTH)


# ---- through the sae stage: matched sparsity by default --------------------------------------
def _one_sparse_instance(tmp_path) -> Path:
    """A toy run of one instance where the stage's k is 1: 8 features in d = 4 at p = 0.05."""
    from unsuperpose.generate.cli import main as generate_main
    run = tmp_path / "run"
    result = CliRunner().invoke(generate_main, [
        "--run-dir", str(run), "--n-features", "8", "--d-hidden", "4", "--feature-probability",
        "0.05", "--steps", "300", "--rows", "12000", "--heldout-rows", "4000", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_the_l1_coefficient_is_calibrated_to_the_stage_k_by_default(tmp_path):
    run = _one_sparse_instance(tmp_path)
    result = _sae(run, "--methods", "l1,topk", "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    (instance,) = files.list_instances(run)
    saved = json.loads((files.sae_dir(run, instance, "l1") / files.CONFIG_FILE).read_text())
    calibration = saved["calibration"]
    assert saved["k"] == 1 and saved["target_l0"] == 1 and calibration["target_l0"] == 1
    assert calibration["within_tolerance"] and abs(calibration["achieved_l0"] - 1) <= 0.1
    assert saved["config"]["l1_coefficient"] == calibration["l1_coefficient"]
    assert "from" in result.output and "target 1" in result.output
    result = _evaluate(run)
    assert result.exit_code == 0, result.output
    assert _metric(run, "l1", "target_l0") == [1.0] and _metric(run, "topk", "target_l0") == [1.0]
    # on held-out rows the calibrated L0 stays near its target
    assert abs(_metric(run, "l1", "l0")[0] - 1) <= 0.15
    # a coefficient given by the user is kept as given, and the report says it is off target
    result = _sae(run, "--methods", "l1,topk", "--device", "cpu", "--threads", "1",
                  "--l1-coefficient", "0.001")
    assert result.exit_code == 0, result.output
    saved = json.loads((files.sae_dir(run, instance, "l1") / files.CONFIG_FILE).read_text())
    assert "calibration" not in saved and saved["config"]["l1_coefficient"] == 0.001
    assert _evaluate(run).exit_code == 0
    report = (files.evaluate_dir(run) / "report.md").read_text()
    assert "Off the target sparsity on some instance" in report and "l1 (L0 " in report


@pytest.mark.slow
def test_the_jumprelu_l0_coefficient_is_calibrated_like_the_l1_one(tmp_path):
    run = _one_sparse_instance(tmp_path)
    result = _sae(run, "--methods", "jumprelu", "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    (instance,) = files.list_instances(run)
    saved = json.loads((files.sae_dir(run, instance, "jumprelu") / files.CONFIG_FILE).read_text())
    calibration = saved["calibration"]
    assert calibration["method"] == "jumprelu" and calibration["coefficient_name"] == "l0_coefficient"
    assert calibration["within_tolerance"] and abs(calibration["achieved_l0"] - 1) <= 0.05
    assert saved["config"]["l0_coefficient"] == calibration["l0_coefficient"] == calibration["coefficient"]
    assert "l0_coefficient" in result.output and "target 1" in result.output
