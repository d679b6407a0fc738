"""Faults around generate: rerunning it with the same config keeps the later stages current."""
import json
import shutil

import pytest
from click.testing import CliRunner

from tests.stage_faults import _evaluate, _snapshot
from unsuperpose.data import files


def test_rerunning_generate_with_the_same_config_keeps_the_dictionaries_current(run):
    from unsuperpose.generate.cli import main as generate_main
    config = run / "saved-generate.json"
    shutil.copy(files.generate_dir(run) / files.CONFIG_FILE, config)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = _evaluate(run)
    assert result.exit_code == 0, result.output


# ---- an output folder holding what the command did not write (issue 28, item 6) -------------
class _OneSection:
    """A stand-in for the paper's sections: one figure file, so run_paper takes no time."""

    NAME = "one"

    @staticmethod
    def run(config, stage, echo):
        from unsuperpose.generate.paper.common import Section
        (stage / "one.png").write_bytes(b"png")
        return Section("one", "One", "one.png", [], [])


def _kept(folder) -> dict:
    """Every file's bytes but the run's lock file (which names the last command)."""
    return {k: v for k, v in _snapshot(folder).items() if k != files.RUN_LOCK_FILE}


def _paper(monkeypatch, *args):
    import unsuperpose.generate.paper.report
    from unsuperpose.generate.paper.cli import main as paper_main
    monkeypatch.setattr(unsuperpose.generate.paper.report, "SECTIONS", (_OneSection,))
    return CliRunner().invoke(paper_main, ["--device", "cpu", "--threads", "1", *args])


def _no_work(monkeypatch):
    """Fail the test if a section starts: the refusals come before any work."""
    def boom(*args):
        raise AssertionError("work started")
    monkeypatch.setattr(_OneSection, "run", staticmethod(boom))


def test_paper_out_with_the_users_files_is_refused_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("\\begin{document}")
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = _snapshot(tmp_path)
    _no_work(monkeypatch)
    result = _paper(monkeypatch, "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{out}: holds files that `paper` did not write (sub/data.csv, thesis.tex)" in result.output
    assert _snapshot(tmp_path) == before


def test_paper_out_pointed_at_a_run_folder_keeps_the_run(run, monkeypatch):
    before = _snapshot(run)
    _no_work(monkeypatch)
    result = _paper(monkeypatch, "--out", str(run))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{run}: holds files that `paper` did not write" in result.output
    assert _snapshot(run) == before


def test_paper_result_with_a_users_file_added_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "paper"
    assert _paper(monkeypatch, "--out", str(out)).exit_code == 0
    (out / "notes.md").write_text("mine")
    before = _snapshot(tmp_path)
    result = _paper(monkeypatch, "--out", str(out), "--force")
    assert result.exit_code == 1, result.output
    assert f"{out}: holds files that `paper` did not write (notes.md)" in result.output
    assert _snapshot(tmp_path) == before


def test_paper_replaces_its_own_previous_result_and_an_empty_folder(tmp_path, monkeypatch):
    out = tmp_path / "paper"
    out.mkdir()                                                   # empty: used
    assert _paper(monkeypatch, "--out", str(out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "one.png", "report.md"]
    result = _paper(monkeypatch, "--out", str(out), "--force")  # its own result: replaced
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper"]


@pytest.mark.parametrize("where", [".", "..", "cwd-absolute"])
def test_paper_out_dot_is_refused_by_name_before_any_work(tmp_path, monkeypatch, where):
    (tmp_path / "keep.txt").write_text("x")
    inner = tmp_path / "inner"
    inner.mkdir()
    monkeypatch.chdir(inner)
    out = str(inner) if where == "cwd-absolute" else where
    before = _snapshot(tmp_path)
    _no_work(monkeypatch)
    result = _paper(monkeypatch, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{out}: is the current folder or holds it" in result.output
    assert _snapshot(tmp_path) == before


def test_paper_out_that_is_a_file_or_a_link_is_refused(tmp_path, monkeypatch):
    (tmp_path / "report").write_text("a file")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    before = _snapshot(tmp_path)
    _no_work(monkeypatch)
    for name, kind in (("report", "file"), ("link", "link")):
        result = _paper(monkeypatch, "--out", str(tmp_path / name))
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        if result.exit_code == 1:
            assert f"{tmp_path / name}: is a {kind}" in result.output
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("stage", [files.GENERATE_DIR, files.SAE_DIR, files.EVALUATE_DIR])
def test_a_stage_path_that_is_a_regular_file_is_refused_and_kept(tmp_path, stage):
    from unsuperpose.data.staging import StageWriteError, stage_transaction
    (tmp_path / stage).write_text("the user's file")
    before = _snapshot(tmp_path)
    with pytest.raises(StageWriteError, match=f"{tmp_path / stage}: is a file, not a folder"):
        with stage_transaction(tmp_path, stage, "test"):
            raise AssertionError("work started")
    assert _kept(tmp_path) == {k: v for k, v in before.items() if k != files.RUN_LOCK_FILE}


def test_generate_over_a_stage_folder_holding_the_users_files_is_refused(run):
    from unsuperpose.generate.cli import main as generate_main
    (files.generate_dir(run) / "notes.txt").write_text("mine")
    (files.instance_dir(run, "00-p0.2") / "extra.npy").write_bytes(b"123")
    before = _kept(run)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--rows", "64",
                                                "--heldout-rows", "0", "--steps", "0",
                                                "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (f"{files.generate_dir(run)}: holds files that `generate` did not write "
            f"(instances/00-p0.2/extra.npy, notes.txt)") in result.output
    assert _kept(run) == before


def test_sae_over_a_folder_it_did_not_write_is_refused(run):
    from tests.stage_faults import _FAST_SAE, _one_line_error, _sae
    shutil.rmtree(files.sae_root(run))
    files.sae_root(run).mkdir()
    (files.sae_root(run) / "draft.txt").write_text("mine")
    before = _kept(run)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{files.sae_root(run)}: holds files that `sae` did not write (draft.txt)" in out
    assert _kept(run) == before


# ---- every number has a range: options, --config values, sizes (issue 28, item 6) -----------
_BIG = "99999999999999999999"  # past int64


def _generate(tmp_path, *args):
    from unsuperpose.generate.cli import main as generate_main
    (tmp_path / "keep.txt").write_text("x")
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(tmp_path / "run"), "--device",
                                                "cpu", "--threads", "1", *args])
    assert "Traceback" not in result.output, result.output
    assert _snapshot(tmp_path) == before and not (tmp_path / "run").exists()  # no work
    return result


@pytest.mark.parametrize("args, message", [
    (["--seed", _BIG], f"--seed: must be an integer, got {_BIG} (past the range of int64)"),
    (["--n-features", _BIG], "--n-features: must be an integer, got"),
    (["--rows", _BIG], "--rows: must be an integer, got"),
    (["--heldout-rows", "-1"], "--heldout-rows: must be >= 0, got -1"),
    (["--lr", "inf"], "--lr: must be finite and <= 10, got inf"),
    (["--lr", "1e300"], "--lr: must be finite and <= 10, got 1e+300 (past the range of float32)"),
    (["--lr", "50"], "--lr: must be finite and <= 10, got 50.0"),
    (["--source", "synthetic", "--magnitude-std", "1e300"], "--magnitude-std: must be finite and <= 1e+06"),
    (["--source", "synthetic", "--noise-std", "1e10"], "--noise-std: must be finite and <= 1e+06"),
    (["--n-correlated-sets", "-1"], "--n-correlated-sets: must be an integer >= 0, got -1"),
    (["--set-size", "0"], "--set-size: must be an integer >= 2, got 0"),
    (["--n-correlated-sets", "30", "--set-size", "2"], "--n-correlated-sets: 30 correlated"),
    (["--source", "synthetic", "--hierarchy-roots", "1", "--hierarchy-depth", "1000000"],
     "--hierarchy-depth: must be an integer <= 16, got 1000000"),
    (["--steps", "99999999999"], "--steps: must be an integer <= 1000000000, got 99999999999"),
    (["--device", "mps"], "--device: device 'mps' asked for, but torch cannot use it"),
    (["--device", "meta"], "--device: device 'meta' asked for, but torch cannot use it"),
])
def test_a_number_out_of_range_is_refused_naming_the_option(tmp_path, args, message):
    result = _generate(tmp_path, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("values, message", [
    ({"d_hidden": True}, "--d-hidden: must be an integer, got True (a bool)"),
    ({"n_features": 40.5}, "--n-features: must be an integer, got 40.5"),
    ({"lr": "fast"}, "--lr: must be finite and <= 10, got 'fast' (a str)"),
    ({"feature_probability": "abc"}, "--feature-probability: must be finite, got 'abc' (a str)"),
    ({"seed": 1e30}, "--seed: must be an integer, got 1e+30"),
    ({"rows": 10 ** 20}, "--rows: must be an integer, got 100000000000000000000 (past the range"),
    ({"hierarchy_exclusive": 1}, "--hierarchy-exclusive: must be true or false, got 1"),
    ({"source": 3}, "--source: must be a string, got 3"),
])
def test_a_config_value_of_the_wrong_type_is_refused_naming_the_option(tmp_path, values, message):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(values))
    result = _generate(tmp_path, "--config", str(path))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("args, option", [
    (["--rows", "10000000000000"], "--rows: 5 instance(s) x 10000000032768 rows"),
    (["--n-features", "100000000", "--batch-size", "1"],
     "--n-features: 5 instance(s) of n_features=100000000"),
    (["--n-features", "100000000"], "--batch-size and --n-features: 5 instance(s)"),
    (["--batch-size", "100000000000"], "--batch-size and --n-features: "),
])
def test_a_run_too_large_for_disk_or_memory_is_refused_with_its_bytes(tmp_path, args, option):
    result = _generate(tmp_path, *args)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert option in out and " bytes " in out and " free" in out


def test_the_size_checks_pass_a_run_that_fits(tmp_path):
    from unsuperpose.generate.config import GenerateConfig
    from unsuperpose.generate.pipeline import check_sizes
    config = GenerateConfig()
    shards, memory = check_sizes(config, tmp_path / "run")  # the default run: ~0.1 GB of shards
    rows = len(config.feature_probability) * (config.rows + config.heldout_rows)
    assert shards == rows * (config.d_hidden * 4 + 8) and 0 < shards < 2**30
    assert 0 < memory < 2**30
