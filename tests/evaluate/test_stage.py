"""Stage 3 through its command: what lands on disk, and the inputs a user can get wrong."""
import csv
import json
import re
import shutil

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from unsuperpose.data import files
from unsuperpose.data.files import FIGURES_DIR, METRICS_CSV, METRICS_FILE, REPORT_FILE
from unsuperpose.evaluate.cli import main
from unsuperpose.sae.cli import main as sae_main

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
    """fitted_run evaluated, every figure drawn: seconds, so the tests that read it are slow."""
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run)] + FAST)
    assert result.exit_code == 0, result.output
    return files.evaluate_dir(fitted_run)


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(files.EVALUATE_DIR))
    return tmp_path / "run"


@pytest.mark.slow
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


@pytest.mark.slow
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
    # each (instance, method) holds exactly these scalar metrics, each once
    keys = [(r["instance"], r["method"], r["metric"]) for r in records
            if r["method"] and "feature" not in r]
    assert len(keys) == len(set(keys)) == 2 * (len(METHODS) * 26 + 25 + 26)  # + oracle, random
    expected = {"n_components", "n_represented", "duplicate_fraction", "fvu", "explained_variance",
                "shrinkage", "l0", "dead_latents", "dead_fraction", "mmcs", "mmcs_abs",
                "reverse_mmcs", "reverse_mmcs_abs", "matched_cos", "mcc", "uniqueness",
                "recovered_0.9", "recovered_0.99", "true_l0", "precision", "recall", "f1",
                "code_correlation", "f1_vs_oracle", "fit_seconds", "target_l0"}
    for inst in ("00-p0.2", "01-p0.05"):
        for method in METHODS + ["oracle", "random"]:
            reference = expected - {"fit_seconds", "target_l0"} | {"k"}
            want = {"oracle": reference, "random": reference | {"draws"}}.get(method, expected)
            assert {m for i, me, m in keys if (i, me) == (inst, method)} == want, (inst, method)
    per_feature = [r for r in records if r["metric"] == "feature_best_cos"]
    n_represented = {i: scalars[i, "topk", "n_represented"] for i in ("00-p0.2", "01-p0.05")}
    assert len(per_feature) == (len(METHODS) + 2) * sum(n_represented.values())  # + oracle, random
    with open(evaluated / METRICS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and rows[0].keys() >= {"instance", "method", "metric", "value"}


def test_a_run_without_stage_2_is_refused_naming_the_path(tiny_run):
    result = CliRunner().invoke(main, ["--run-dir", str(tiny_run)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(r"sae: not found.*run `sae --run-dir", result.output.replace("\n", " "))


@pytest.mark.slow
def test_wrong_d_and_no_represented_feature_become_notes(fitted_run, tmp_path, monkeypatch):
    from unsuperpose.evaluate.inputs import Instance

    run = _copy(fitted_run, tmp_path)
    # instance 00: the ground truth says no direction is represented (patched as read: the
    # sae stage refuses a run whose ground truth changed after the fit)
    represented = Instance.represented.fget
    monkeypatch.setattr(Instance, "represented", property(
        lambda self: represented(self) & (self.id != "00-p0.2")))
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
    # no represented direction, no oracle; the other instance keeps its oracle
    assert not {m for m in metrics if m[:2] == ("00-p0.2", "oracle")}
    assert ("01-p0.05", "oracle", "fvu") in metrics
    assert ("01-p0.05", "topk", "f1_vs_oracle") in metrics


@pytest.mark.slow
def test_a_failed_evaluation_keeps_the_previous_output(evaluated, fitted_run, monkeypatch):
    from unsuperpose.evaluate import EvaluateConfig, report
    from unsuperpose.evaluate.pipeline import run_evaluate

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
    (["--max-rows", "-1"], "--max-rows.*must be an integer >= 0"),
    (["--instance", "nope"], "no instance 'nope'; valid: 00-p0.2, 01-p0.05"),
])
def test_invalid_options_give_a_clear_error(fitted_run, args, message):
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run)] + args)
    assert result.exit_code == 2 and re.search(message, result.output, re.S), result.output


# ---- the oracle row ---------------------------------------------------------------------------

def _scalars(evaluate_dir):
    records = json.loads((evaluate_dir / METRICS_FILE).read_text())["records"]
    return {(r["instance"], r["method"], r["metric"]): r["value"] for r in records
            if r["method"] and "feature" not in r and r["metric"] not in ("skipped", "error")}


@pytest.mark.slow
def test_the_oracle_is_scored_at_the_dictionaries_k_and_bounds_them(evaluated, fitted_run):
    scalars = _scalars(evaluated)
    for inst, k in (("00-p0.2", 3), ("01-p0.05", 1)):  # k as stage 2 recorded it
        assert json.loads((files.sae_dir(fitted_run, inst, "topk") / files.CONFIG_FILE)
                          .read_text())["k"] == k
        oracle = {m: v for (i, meth, m), v in scalars.items() if (i, meth) == (inst, "oracle")}
        assert oracle["k"] == k and oracle["l0"] <= k + 1e-9
        # the true directions themselves: every direction metric is exactly 1
        for m in ("mmcs", "matched_cos", "mcc", "uniqueness", "recovered_0.99"):
            assert oracle[m] == pytest.approx(1.0), m
        assert oracle["f1_vs_oracle"] == 1.0
        for method in METHODS:
            assert scalars[inst, method, "fvu"] > oracle["fvu"] - 1e-3, (inst, method)
            assert scalars[inst, method, "f1_vs_oracle"] == pytest.approx(
                scalars[inst, method, "f1"] / oracle["f1"], rel=1e-12)
    # the tiny fixture's oracle (n = 12 in d = 4): k = 3 nearly reconstructs, k = 1 cannot
    assert scalars["00-p0.2", "oracle", "fvu"] == pytest.approx(0.004, abs=0.002)
    assert scalars["01-p0.05", "oracle", "fvu"] == pytest.approx(0.089, abs=0.01)
    assert scalars["01-p0.05", "oracle", "l0"] == 1.0
    config = json.loads((evaluated / files.CONFIG_FILE).read_text())
    assert "oracle" not in config["methods"]  # a reference, not a scored method


@pytest.mark.slow
def test_the_oracle_is_the_last_row_of_every_table_in_italics_and_never_bold(evaluated):
    report = (evaluated / REPORT_FILE).read_text()
    tables = [block for block in report.split("\n\n") if block.startswith("| method |")]
    assert len(tables) == 3  # comparison + one per instance
    for block in tables:
        rows = block.splitlines()
        assert [r.split(" | ")[0] for r in rows[2:]] == ["| " + m for m in METHODS] + [
            "| *oracle (reference)*", "| *random (chance)*"]
        for row in rows[-2:]:
            cells = row.strip("| ").split(" | ")[1:]
            assert all(c == "–" or re.fullmatch(r"\*[0-9.]+\*", c) for c in cells), cells
            assert "**" not in row
        assert "F1/oracle" in rows[0]
    assert re.search(r"Oracle \(the true directions coded at the dictionaries' k\): FVU 0\.0\d\d",
                     report)
    assert "Best one-to-one recovery: **oracle" not in report
    assert "**random" not in report


# ---- dictionaries that cannot be loaded or applied ---------------------------------------------

def _break_config(run, instance, method):
    """A config.json that sae.load refuses (an unknown estimator key)."""
    path = files.sae_dir(run, instance, method) / files.CONFIG_FILE
    saved = json.loads(path.read_text())
    saved["config"]["no_such_key"] = 1
    path.write_text(json.dumps(saved))
    return files.sae_dir(run, instance, method)


def _error_lines(output):
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_an_unloadable_dictionary_is_an_error_and_the_run_exits_1(fitted_run, tmp_path):
    run = _copy(fitted_run, tmp_path)
    folder = _break_config(run, "01-p0.05", "mod")
    result = CliRunner().invoke(main, ["--run-dir", str(run), "--max-rows", "300", "--no-figures"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert _error_lines(result.output) == [
        f"Error: 1 dictionary could not be loaded or applied: {folder} (reasons under Errors "
        f"in {files.evaluate_dir(run) / REPORT_FILE}; --keep-going exits 0)"]
    report = (files.evaluate_dir(run) / REPORT_FILE).read_text()
    errors = report[report.index("## Errors"):report.index("## Notes")]
    # the reason is the loader's own error (its type and message), naming the bad key
    assert re.search(r"`01-p0.05` / mod: .*mod: could not be loaded or applied: \w*Error: "
                     r".*no_such_key", errors)
    assert "**1 dictionary could not be loaded or applied**" in report
    assert "Nothing was skipped." in report  # an error is not a note
    records = json.loads((files.evaluate_dir(run) / METRICS_FILE).read_text())["records"]
    (err,) = [r for r in records if r["metric"] == "error"]
    assert (err["instance"], err["method"], err["folder"]) == ("01-p0.05", "mod", str(folder))
    scalars = _scalars(files.evaluate_dir(run))
    assert ("01-p0.05", "mod", "fvu") not in scalars and ("00-p0.2", "mod", "fvu") in scalars
    assert ("01-p0.05", "oracle", "fvu") in scalars  # k still comes from the loadable ones


def test_keep_going_exits_0_and_still_reports_the_error(fitted_run, tmp_path, monkeypatch):
    from unsuperpose.sae.ksvd import KSVD

    run = _copy(fitted_run, tmp_path)

    def out_of_memory(self, H):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(KSVD, "transform", out_of_memory)  # ksvd_nn fails to apply, everywhere
    args = ["--run-dir", str(run), "--max-rows", "300", "--no-figures"]
    result = CliRunner().invoke(main, args)
    folders = [files.sae_dir(run, i, "ksvd_nn") for i in ("00-p0.2", "01-p0.05")]
    assert result.exit_code == 1
    assert _error_lines(result.output)[0].startswith(
        f"Error: 2 dictionaries could not be loaded or applied: {folders[0]}, {folders[1]} (")
    result = CliRunner().invoke(main, args + ["--keep-going"])
    assert result.exit_code == 0 and not _error_lines(result.output), result.output
    report = (files.evaluate_dir(run) / REPORT_FILE).read_text()
    assert report.count("RuntimeError: CUDA out of memory") == 2
    assert json.loads((files.evaluate_dir(run) / files.CONFIG_FILE).read_text())[
        "config"]["keep_going"] is True


def test_a_truncated_dictionary_file_is_an_error_a_wrong_width_only_skipped(fitted_run, tmp_path):
    run = _copy(fitted_run, tmp_path)
    path = files.sae_dir(run, "00-p0.2", "topk") / files.DICTIONARY_FILE
    path.write_bytes(path.read_bytes()[:40])
    save_file({files.COMPONENTS: np.eye(3, 5, dtype=np.float32)},
              str(files.sae_dir(run, "01-p0.05", "mod") / files.DICTIONARY_FILE))
    result = CliRunner().invoke(main, ["--run-dir", str(run), "--max-rows", "300", "--no-figures"])
    assert result.exit_code == 1
    assert _error_lines(result.output)[0].startswith(
        f"Error: 1 dictionary could not be loaded or applied: {path.parent} (")
    records = json.loads((files.evaluate_dir(run) / METRICS_FILE).read_text())["records"]
    kinds = {(r["instance"], r["method"]): r["metric"] for r in records
             if r["metric"] in ("error", "skipped")}
    assert kinds == {("00-p0.2", "topk"): "error", ("01-p0.05", "mod"): "skipped"}


# ---- options a user can get wrong ---------------------------------------------------------------

@pytest.mark.parametrize("args, option, message", [
    (["--seed", "-1"], "--seed", "must be an integer >= 0, got -1"),
    (["--duplicate-cosine", "nan"], "--duplicate-cosine", "must be finite and in [-1, 1], got nan"),
    (["--duplicate-cosine", "1.5"], "--duplicate-cosine", "must be finite and in [-1, 1], got 1.5"),
    (["--thresholds", "0.9,nan"], "--thresholds", "needs values in (0, 1], got [0.9, nan]"),
    (["--thresholds", "inf"], "--thresholds", "needs values in (0, 1], got [inf]"),
    (["--thresholds", "0"], "--thresholds", "needs values in (0, 1], got [0.0]"),
    (["--max-rows", "-5"], "--max-rows", "must be an integer >= 0, got -5"),
])
def test_each_invalid_number_names_its_option(fitted_run, args, option, message):
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run)] + args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Invalid value for {option}: {message}" in " ".join(result.output.split())


@pytest.mark.parametrize("values, option, message", [
    ({"max_rows": 1.5}, "--max-rows", "must be an integer >= 0, got 1.5"),
    ({"max_rows": float("inf")}, "--max-rows", "must be an integer >= 0, got inf"),
    ({"seed": True}, "--seed", "must be an integer >= 0, got True"),
    ({"thresholds": "0.9"}, "--thresholds", "needs values in (0, 1], got '0.9'"),
    ({"keep_going": "yes"}, "--keep-going", "must be true or false, got 'yes'"),
    ({"figures": 1}, "--figures", "must be true or false, got 1"),
    ({"methods": "topk"}, "--methods", "must be a list of names, got 'topk'"),
])
def test_a_config_file_with_a_bad_value_names_the_option(fitted_run, tmp_path, values, option,
                                                         message):
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(values))
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run), "--config", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Invalid value for {option}: {message}" in " ".join(result.output.split())


def test_every_default_and_a_single_threshold_are_valid():
    from unsuperpose.evaluate.config import EvaluateConfig

    config = EvaluateConfig(thresholds=0.5, seed=np.int64(3))
    assert config.thresholds == (0.5,) and config.keep_going is False
    assert EvaluateConfig.from_dict(EvaluateConfig().to_dict()) == EvaluateConfig()
