"""Stage 3 through its command: what lands on disk, and the inputs a user can get wrong."""
import csv
import json
import re
import shutil

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from data import files
from evaluate.cli import main
from evaluate.pipeline import FIGURES_DIR, METRICS_CSV, METRICS_FILE, REPORT_FILE
from sae.cli import main as sae_main

METHODS = ["topk", "ksvd_nn", "mod"]
FAST_SAE = ["--methods", ",".join(METHODS), "--n-epochs", "10", "--n-iter", "3",
            "--param", "*.batch_size=256", "--device", "cpu"]
FAST = ["--max-rows", "1500"]


@pytest.fixture(scope="module")
def fitted_run(tiny_run, tmp_path_factory):
    """The shared tiny run (2 instances, n = 12, d = 4), copied, with three methods fitted."""
    run = tmp_path_factory.mktemp("eval-run") / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(sae_main, ["--run-dir", str(run)] + FAST_SAE)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def evaluated(fitted_run):
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run)] + FAST)
    assert result.exit_code == 0, result.output
    return files.evaluate_dir(fitted_run)


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(files.EVALUATE_DIR))
    return tmp_path / "run"


def test_writes_report_metrics_config_and_every_figure(evaluated):
    report = (evaluated / REPORT_FILE).read_text()
    figures = sorted(p.name for p in (evaluated / FIGURES_DIR).iterdir())
    expected = {"recovery_vs_probability.png", "feature_dimensionality.png",
                "recovery_vs_dimensionality.png"}
    for inst in ("00-p0.2", "01-p0.05"):
        expected |= {f"{inst}-toy_model.png", f"{inst}-cosine.png"}
    assert set(figures) == expected
    for name in figures:  # each decodes as a PNG, and the report links it
        image = matplotlib.image.imread(evaluated / FIGURES_DIR / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 100
        assert f"]({FIGURES_DIR}/{name})" in report
    # top to bottom: summary, comparison table, each instance, notes
    order = [report.index(s) for s in ("# Evaluation", "## Method comparison",
                                       "## Instance `00-p0.2`", "## Instance `01-p0.05`", "## Notes")]
    assert order == sorted(order) and "Nothing was skipped." in report
    config = json.loads((evaluated / files.CONFIG_FILE).read_text())
    assert config["config"]["max_rows"] == 1500 and config["config"]["seed"] == 0
    assert config["methods"] == METHODS and "torch" in config["environment"]


def test_metrics_hold_one_record_per_instance_method_metric(evaluated):
    records = json.loads((evaluated / METRICS_FILE).read_text())["records"]
    scalars = {(r["instance"], r["method"], r["metric"]): r["value"] for r in records
               if r["method"] and "feature" not in r}
    for inst in ("00-p0.2", "01-p0.05"):
        for method in METHODS:
            for key in ("mmcs", "mcc", "uniqueness", "f1", "recovered_0.99", "fvu", "l0",
                        "code_correlation", "fit_seconds"):
                assert (inst, method, key) in scalars, (inst, method, key)
            assert 0 <= scalars[inst, method, "mcc"] <= 1
            assert scalars[inst, method, "mmcs"] <= scalars[inst, method, "mmcs_abs"] + 1e-9
            assert 0 <= scalars[inst, method, "fvu"] < 1
    assert len(scalars) == len({k for k in scalars})  # no metric twice
    per_feature = [r for r in records if r["metric"] == "feature_best_cos"]
    n_represented = {i: scalars[i, "topk", "n_represented"] for i in ("00-p0.2", "01-p0.05")}
    assert len(per_feature) == len(METHODS) * sum(n_represented.values())
    with open(evaluated / METRICS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and rows[0].keys() >= {"instance", "method", "metric", "value"}


def test_a_run_without_stage_2_is_refused_naming_the_path(tiny_run):
    result = CliRunner().invoke(main, ["--run-dir", str(tiny_run)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(r"sae: not found.*run `sae --run-dir", result.output.replace("\n", " "))


def test_wrong_d_and_no_represented_feature_become_notes(fitted_run, tmp_path):
    run = _copy(fitted_run, tmp_path)
    # instance 00: the ground truth says no direction is represented
    gt_path = files.instance_dir(run, "00-p0.2") / files.GROUND_TRUTH_FILE
    gt = load_file(str(gt_path))
    gt[files.GT_REPRESENTED][:] = False
    save_file(gt, str(gt_path))
    # instance 01: one dictionary has atoms of the wrong width
    dict_path = files.sae_dir(run, "01-p0.05", "mod") / files.DICTIONARY_FILE
    save_file({files.COMPONENTS: np.eye(3, 5, dtype=np.float32)}, str(dict_path))
    result = CliRunner().invoke(main, ["--run-dir", str(run)] + FAST)
    assert result.exit_code == 0, result.output
    report = (files.evaluate_dir(run) / REPORT_FILE).read_text()
    notes = report[report.index("## Notes"):]
    assert "`00-p0.2`: the toy model represents no feature" in notes
    assert re.search(r"`01-p0.05` / mod: .*skipped: its atoms have shape \[3, 5\], but the "
                     r"instance has d=4", notes)
    records = json.loads((files.evaluate_dir(run) / METRICS_FILE).read_text())["records"]
    skipped = [r for r in records if r["metric"] == "skipped"]
    assert {(r["instance"], r["method"]) for r in skipped} == {("00-p0.2", None), ("01-p0.05", "mod")}
    metrics = {(r["instance"], r["method"], r["metric"]) for r in records}
    assert ("00-p0.2", "topk", "fvu") in metrics and ("00-p0.2", "topk", "mmcs") not in metrics
    assert ("01-p0.05", "topk", "mmcs") in metrics and ("01-p0.05", "mod", "mmcs") not in metrics


def test_a_failed_evaluation_keeps_the_previous_output(evaluated, fitted_run, monkeypatch):
    from evaluate import EvaluateConfig, report
    from evaluate.pipeline import run_evaluate

    before = (evaluated / REPORT_FILE).read_text()

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_evaluate(EvaluateConfig(max_rows=0, methods=("topk",)), fitted_run)
    assert (evaluated / REPORT_FILE).read_text() == before
    assert not list(fitted_run.glob(".evaluate.tmp-*"))


@pytest.mark.parametrize("args, message", [
    (["--methods", "pca"], "unknown method 'pca'; valid: l1, topk"),
    (["--thresholds", "0.9,1.5"], "--thresholds.*values in \\(0, 1\\]"),
    (["--max-rows", "-1"], "--max-rows.*must be >= 0"),
    (["--instance", "nope"], "no instance 'nope'; valid: 00-p0.2, 01-p0.05"),
])
def test_invalid_options_give_a_clear_error(fitted_run, args, message):
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run)] + args)
    assert result.exit_code == 2 and re.search(message, result.output, re.S), result.output
