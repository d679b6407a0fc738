"""Faults and their messages in evaluate/: a dictionary that cannot be loaded, damaged or stale
inputs, non-finite and missing held-out rows."""
import json
import shutil

from click.testing import CliRunner

from tests.stage_faults import _evaluate, _instance, _manifest, _one_line_error, _poison_row, _write_manifest
from unsuperpose.data import files


def test_evaluate_exits_1_naming_a_damaged_dictionary_unless_keep_going(tiny_run, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from unsuperpose.data import files
    from unsuperpose.evaluate.cli import main as evaluate_main
    from unsuperpose.sae.cli import main as sae_main

    run_dir = tmp_path / "run"  # a copy: tiny_run is shared read-only
    shutil.copytree(tiny_run, run_dir)
    fit = CliRunner().invoke(sae_main, ["--run-dir", str(run_dir), "--methods", "mod",
                                        "--n-iter", "2", "--device", "cpu"])
    assert fit.exit_code == 0, fit.output
    folder = files.sae_dir(run_dir, "01-p0.05", "mod")
    (folder / files.DICTIONARY_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    args = ["--run-dir", str(run_dir), "--max-rows", "200", "--no-figures"]
    result = CliRunner().invoke(evaluate_main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert line.startswith(f"Error: 1 dictionary could not be loaded or applied: {folder} (")
    result = CliRunner().invoke(evaluate_main, args + ["--keep-going"])
    assert result.exit_code == 0, result.output
    out = files.evaluate_dir(run_dir)
    records = json.loads((out / "metrics.json").read_text())["records"]
    (err,) = [r for r in records if r["metric"] == "error"]
    assert err["folder"] == str(folder) and err["note"].startswith(f"{folder}: unreadable: ")
    assert "## Errors" in (out / "report.md").read_text()


def test_a_nonfinite_held_out_row_is_an_error_in_evaluate_unless_dropped(run):
    inst = _instance(run)
    _poison_row(inst, "heldout/shard-00000.safetensors", 5, float("nan"))
    out = _one_line_error(_evaluate(run), 1)
    assert f"{inst / 'heldout/shard-00000.safetensors'}: row 5 holds NaN or inf" in out
    result = _evaluate(run, "--on-nonfinite", "drop")
    assert result.exit_code == 0, result.output
    report = (files.evaluate_dir(run) / "report.md").read_text()
    assert "1 evaluation rows with NaN or inf left out of heldout/shard-00000.safetensors" in report


def test_invalid_manifest_json_is_one_line_in_evaluate(run):
    path = _instance(run) / files.MANIFEST_FILE
    path.write_text("{not json")
    out = _one_line_error(_evaluate(run), 2)
    assert f"{path}: not valid JSON" in out


def test_evaluate_refuses_a_sae_stage_fitted_on_a_different_generate(run):
    from unsuperpose.generate.cli import main as generate_main
    config = run / "saved-generate.json"
    shutil.copy(files.generate_dir(run) / files.CONFIG_FILE, config)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--config", str(config),
                                                "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = _one_line_error(_evaluate(run), 2)
    assert f"{files.sae_root(run)}: fitted on a different generate/" in out


def test_evaluate_records_the_held_out_split_and_warns_on_a_run_without_one(run):
    result = _evaluate(run)
    assert result.exit_code == 0, result.output
    saved = json.loads((files.evaluate_dir(run) / files.CONFIG_FILE).read_text())
    assert set(saved["splits"].values()) == {"heldout"}
    for inst_id in files.list_instances(run):  # make it a run from before the split existed
        inst = _instance(run, inst_id)
        manifest = _manifest(inst)
        manifest.pop("heldout")
        _write_manifest(inst, manifest)
        shutil.rmtree(inst / "heldout")
    result = _evaluate(run)
    assert result.exit_code == 0, result.output
    assert "WARNING: this instance has no held-out split" in result.output
    saved = json.loads((files.evaluate_dir(run) / files.CONFIG_FILE).read_text())
    assert set(saved["splits"].values()) == {"train"}
