"""Stage 1 end to end: what lands on disk, reproducibility, and the command's errors."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from unsuperpose.data import files
from unsuperpose.data.rows import read_all
from unsuperpose.generate.cli import main
from unsuperpose.generate.pipeline import run_generate
from tests.conftest import tiny_config


@pytest.mark.parametrize("kind", ["linear", "relu_output"])
def test_activations_on_disk_equal_W_x(tmp_path, kind):
    run_generate(tiny_config(model_kind=kind, steps=50), tmp_path)
    for instance_id in files.list_instances(tmp_path):
        inst = files.instance_dir(tmp_path, instance_id)
        W = load_file(str(inst / files.MODEL_FILE))["W"]  # [d, n]
        h, x = read_all(inst, with_x=True)
        assert np.allclose(h, x @ W.numpy().T, atol=1e-5)
        gt = load_file(str(inst / files.GROUND_TRUTH_FILE))
        assert torch.equal(gt[files.GT_DIRECTIONS], W.T)


def test_ground_truth_marks_represented_by_norm_and_gives_hand_computed_dimensionality():
    from unsuperpose.generate.pipeline import ground_truth_tensors
    # e1 at norm 0.4 (below the 0.5 threshold), an antipodal pair at norm 1 on e2, e3 at 0.5
    directions = torch.tensor([[0.4, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 0.5]])
    gt = ground_truth_tensors(directions, torch.arange(4), torch.ones(4), torch.ones(4),
                              torch.full((4,), 0.1), threshold=0.5)
    assert gt[files.GT_REPRESENTED].tolist() == [False, True, True, False]  # 0.5 is not above
    assert gt[files.GT_NORMS].tolist() == pytest.approx([0.4, 1.0, 1.0, 0.5])
    # D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2: alone on its axis 1; each of the pair 1/2
    assert gt[files.GT_DIMENSIONALITY].tolist() == pytest.approx([1.0, 0.5, 0.5, 1.0])


def test_ground_truth_file_holds_the_documented_tensors(tiny_run):
    inst = files.instance_dir(tiny_run, "01-p0.05")
    gt = load_file(str(inst / files.GROUND_TRUTH_FILE))
    n = 12
    assert gt[files.GT_DIRECTIONS].shape == (n, 4)
    assert gt[files.GT_FEATURE_INDEX].dtype == torch.int64 and gt[files.GT_SIGN].dtype == torch.int8
    assert torch.allclose(gt[files.GT_PROBABILITY], torch.full((n,), 0.05))
    assert torch.allclose(gt[files.GT_IMPORTANCE], torch.ones(n))
    assert gt[files.GT_DIMENSIONALITY].shape == (n,)
    manifest = json.loads((inst / files.MANIFEST_FILE).read_text())
    assert manifest["distribution"]["feature_probability"] == 0.05 and manifest["rows"] == 5000
    x_rate = (read_all(inst, with_x=True)[1] != 0).mean()
    assert x_rate == pytest.approx(0.05, abs=0.005)


def test_config_json_records_the_resolved_config_and_versions(tiny_run):
    saved = json.loads((files.generate_dir(tiny_run) / files.CONFIG_FILE).read_text())
    assert saved["config"] == tiny_config().to_dict()
    assert saved["environment"]["device"] == "cpu" and "torch" in saved["environment"]
    assert saved["instances"] == ["00-p0.2", "01-p0.05"]


def test_same_config_gives_identical_files(tmp_path, tiny_run):
    cfg = tmp_path / "cfg.json"
    cfg.write_text((files.generate_dir(tiny_run) / files.CONFIG_FILE).read_text())
    result = CliRunner().invoke(main, ["--config", str(cfg), "--run-dir", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    for instance_id in ["00-p0.2", "01-p0.05"]:
        a = files.instance_dir(tiny_run, instance_id)
        b = files.instance_dir(tmp_path / "again", instance_id)
        # the manifest holds each shard's sha256, so equal manifests mean equal shards
        assert (a / files.MANIFEST_FILE).read_text() == (b / files.MANIFEST_FILE).read_text()
        for name in (files.GROUND_TRUTH_FILE, files.MODEL_FILE):
            ta, tb = load_file(str(a / name)), load_file(str(b / name))
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_synthetic_source_writes_the_same_format(tmp_path):
    result = CliRunner().invoke(main, ["--source", "synthetic", "--n-features", "16", "--d-hidden", "8",
                                       "--mean-active", "2", "--rows", "3000", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (instance_id,) = files.list_instances(tmp_path)
    inst = files.instance_dir(tmp_path, instance_id)
    gt = load_file(str(inst / files.GROUND_TRUTH_FILE))
    atoms = gt[files.GT_DIRECTIONS]
    assert atoms.shape == (16, 8) and torch.allclose(atoms.norm(dim=1), torch.ones(16))
    assert bool(gt[files.GT_REPRESENTED].all())
    h, x = read_all(inst, with_x=True)
    assert np.allclose(h, x @ atoms.numpy(), atol=1e-5)
    assert (x != 0).sum(1).mean() == pytest.approx(2.0, abs=0.1)
    assert (x >= 0).all()


@pytest.mark.parametrize("args, message", [
    (["--feature-probability", "0.5,1.5"], "--feature-probability.*every value must lie in (0, 1]"),
    (["--feature-probability", "0"], "--feature-probability.*every value must lie in (0, 1]"),
    (["--d-hidden", "0"], "--d-hidden.*must be >= 1, got 0"),
    (["--feature-probability", "a,b"], "not a comma-separated list of numbers"),
    (["--model-kind", "tanh"], "'tanh' is not one of"),
    (["--model-kind", "abs", "--value", "uniform"], "--value.*the abs model needs signed inputs"),
    (["--config", "missing.json"], "missing.json: file not found"),
])
def test_invalid_options_give_a_clear_error(tmp_path, args, message):
    result = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    import re
    assert re.search(message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\["),
                     result.output, re.S), result.output
    assert not (tmp_path / "generate").exists()


def test_config_file_with_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"n_features": 10, "sparsity": 0.9}))
    result = CliRunner().invoke(main, ["--config", str(cfg), "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "sparsity: unknown key in" in result.output


def test_interrupted_generate_keeps_the_previous_run(tmp_path, monkeypatch):
    run_generate(tiny_config(steps=20), tmp_path)
    before = {p: p.read_bytes() for p in files.generate_dir(tmp_path).rglob("*") if p.is_file()}

    import unsuperpose.data.shards  # write_shard lives there
    calls = {"n": 0}
    real_write = unsuperpose.data.shards.write_shard

    def dying_write(*args, **kwargs):  # die after a few shards, as a Ctrl-C would
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(unsuperpose.data.shards, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_generate(tiny_config(steps=20, seed=1), tmp_path)
    after = {p: p.read_bytes() for p in files.generate_dir(tmp_path).rglob("*") if p.is_file()}
    assert after == before
    # no staging folder left; the run's lock file stays (an flock is released, not deleted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "generate"]


def _synthetic(tmp_path, *args):
    result = CliRunner().invoke(main, ["--source", "synthetic", "--n-features", "20", "--d-hidden", "8",
                                       "--rows", "4000", "--heldout-rows", "500", "--device", "cpu",
                                       "--run-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    saved = json.loads((files.generate_dir(tmp_path) / files.CONFIG_FILE).read_text())["config"]
    (instance_id,) = files.list_instances(tmp_path)
    return saved, files.instance_dir(tmp_path, instance_id)


def test_mean_active_sets_the_feature_probability_to_mean_active_over_n(tmp_path):
    saved, inst = _synthetic(tmp_path, "--mean-active", "3", "--feature-probability", "0.5,0.9")
    assert saved["feature_probability"] == [3 / 20]
    assert inst.name == "00-p0.15"
    x = read_all(inst, with_x=True)[1]
    assert (x != 0).sum(1).mean() == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("args, message", [
    (["--mean-active", "0"], "--mean-active: must lie in (0, n_features=20], got 0.0"),
    (["--mean-active", "21"], "--mean-active: must lie in (0, n_features=20], got 21.0"),
])
def test_mean_active_outside_0_n_is_refused(tmp_path, args, message):
    result = CliRunner().invoke(main, ["--source", "synthetic", "--n-features", "20", *args,
                                       "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_noise_std_adds_gaussian_noise_of_that_std_to_h(tmp_path):
    saved, inst = _synthetic(tmp_path, "--noise-std", "0.05", "--mean-active", "2")
    assert saved["noise_std"] == 0.05
    atoms = load_file(str(inst / files.GROUND_TRUTH_FILE))[files.GT_DIRECTIONS].numpy()
    h, x = read_all(inst, with_x=True)
    noise = h - x @ atoms  # 4000 x 8 draws
    assert noise.std() == pytest.approx(0.05, rel=0.03)
    assert abs(noise.mean()) < 0.002
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.1  # independent per dimension


@pytest.mark.parametrize("text, message", [
    ("{not json", "--config: .*not valid JSON"),
    ('["n_features"]', "--config: .*expected a JSON object of config fields"),
    ('{"n_features": "many"}', "--n-features: must be an integer, got 'many' \\(a str\\)"),
    ('{"d_hidden": 0}', "--d-hidden: must be >= 1, got 0"),
    ('{"world": "giant"}', "--world: unknown preset 'giant'"),
])
def test_a_bad_config_file_is_one_line_naming_the_option(tmp_path, text, message):
    import re
    path = tmp_path / "cfg.json"
    path.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "run").exists()


def test_options_override_the_config_file_and_world_sits_between(tmp_path, monkeypatch):
    import unsuperpose.generate.pipeline

    seen = []
    monkeypatch.setattr(unsuperpose.generate.pipeline, "run_generate",
                        lambda config, run_dir, **kw: seen.append(config) or run_dir)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"config": {"n_features": 64, "rows": 999, "seed": 3,
                                           "correlation_rank": 2}}))
    result = CliRunner().invoke(main, ["--config", str(path), "--world", "sharkey", "--rows", "777",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (config,) = seen
    # the file, then the preset's fields over it, then the options over both
    assert (config.n_features, config.rows, config.seed, config.world) == (512, 777, 3, "sharkey")
    assert config.correlation_rank == 2 and config.hierarchy_exclusive is True
    # `none` unsets an optional field the file set; a bool option takes true/false
    result = CliRunner().invoke(main, ["--config", str(path), "--correlation-rank", "none",
                                       "--source", "synthetic", "--hierarchy-exclusive", "false",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert seen[1].correlation_rank is None and seen[1].hierarchy_exclusive is False


def test_orthogonalize_steps_spreads_the_seeds_directions_and_h_follows(tmp_path):
    from unsuperpose.generate.worlds import spread_directions
    from unsuperpose.evaluate.metrics import interference

    args = ["--source", "synthetic", "--n-features", "48", "--d-hidden", "16", "--mean-active", "2",
            "--rows", "500", "--heldout-rows", "0", "--device", "cpu"]
    atoms = {}
    for steps in (0, 40):
        out = tmp_path / str(steps)
        result = CliRunner().invoke(main, args + ["--orthogonalize-steps", str(steps), "--run-dir", str(out)])
        assert result.exit_code == 0, result.output
        inst = files.instance_dir(out, files.list_instances(out)[0])
        atoms[steps] = load_file(str(inst / files.GROUND_TRUTH_FILE))[files.GT_DIRECTIONS]
        h, x = read_all(inst, with_x=True)
        assert np.allclose(h, x @ atoms[steps].numpy(), atol=1e-5)
    assert torch.allclose(atoms[40].norm(dim=1), torch.ones(48), atol=1e-5)
    assert torch.allclose(atoms[40], spread_directions(atoms[0][None], 40)[0], atol=1e-5)
    plain, spread = interference(atoms[0].numpy()), interference(atoms[40].numpy())
    assert spread < plain - 0.1, (plain, spread)


def test_dimensionality_through_the_d_by_d_gram_equals_the_dense_one(monkeypatch):
    from unsuperpose.generate import pipeline
    from unsuperpose.models.ground_truth import feature_dimensionality

    w = torch.randn((300, 20), generator=torch.Generator().manual_seed(0))
    w[5] = 0.0  # a zero direction gets 0 either way
    monkeypatch.setattr(pipeline, "DENSE_DIMENSIONALITY", 100)
    assert torch.allclose(pipeline._dimensionality(w), feature_dimensionality(w), rtol=1e-4)
    assert pipeline._dimensionality(w)[5] == 0.0
