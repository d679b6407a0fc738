"""Stage 2 through its command: what lands on disk, and the errors a user can trigger."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

from unsuperpose.data import files
from unsuperpose.data.rows import read_all
from unsuperpose.sae.cli import main
from unsuperpose.sae.config import DEFAULT_METHODS
from unsuperpose.sae.methods import METHODS
from unsuperpose.sae.sklearn_baseline import SklearnDictionary

# l1 at a fixed coefficient (its calibration to the stage's L0 is tested in test_faults.py)
FAST = ["--n-epochs", "20", "--n-iter", "3", "--param", "sklearn.max_iter=1",
        "--param", "*.batch_size=256", "--param", "l1.l1_coefficient=0.03"]


@pytest.fixture(scope="module")
def fitted_run(tiny_run, tmp_path_factory):
    """The shared tiny run, copied, with every method fitted to its sparser instance."""
    import shutil
    run = tmp_path_factory.mktemp("sae-run") / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(main, ["--run-dir", str(run), "--instance", "01-p0.05",
                                       "--device", "cpu"] + FAST)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("method", list(DEFAULT_METHODS))
def test_every_method_writes_a_dictionary_config_and_log(fitted_run, method):
    out = files.sae_dir(fitted_run, "01-p0.05", method)
    with safe_open(str(out / files.DICTIONARY_FILE), "np") as f:
        atoms = f.get_tensor(files.COMPONENTS)
        meta = f.metadata()
    config = json.loads((out / files.CONFIG_FILE).read_text())
    n_represented = config["instance_facts"]["n_represented"]
    assert atoms.shape == (n_represented, 4)  # dict_ratio 1 of the represented set, d = 4
    assert np.allclose(np.linalg.norm(atoms, axis=1), 1.0, atol=1e-5)
    assert meta["instance_id"] == "01-p0.05" and meta["method_name"] == method
    assert config["method_name"] == method and config["fit_seconds"] > 0
    log = [json.loads(line) for line in (out / files.TRAIN_LOG_FILE).read_text().splitlines()]
    assert log and "fvu" in log[-1] and 0 <= log[-1]["fvu"] < 1.5


def test_saved_dictionaries_load_and_reconstruct_the_activations(fitted_run):
    inst = files.instance_dir(fitted_run, "01-p0.05")
    H, _ = read_all(inst)
    H = H[np.abs(H).max(1) > 0]  # the stage fits on the rows where some feature fired
    for method in DEFAULT_METHODS:
        cls, _ = METHODS[method]
        est = cls.load(files.sae_dir(fitted_run, "01-p0.05", method))
        codes = est.transform(H[:500])
        fvu = ((est.inverse_transform(codes) - H[:500]) ** 2).sum() / ((H[:500] - H[:500].mean(0)) ** 2).sum()
        assert fvu < 0.5, method


def test_sklearn_baseline_save_load_gives_the_same_transform(tmp_path):
    rng = np.random.default_rng(0)
    H = rng.normal(size=(400, 6)).astype(np.float32)
    est = SklearnDictionary(n_components=8, k=2, max_iter=1, random_state=0).fit(H)
    est.save(tmp_path)
    again = SklearnDictionary.load(tmp_path)
    assert np.array_equal(est.transform(H), again.transform(H))
    assert (np.count_nonzero(est.transform(H), axis=1) <= 2).all()


@pytest.mark.parametrize("args, message", [
    (["--methods", "pca"], "unknown method 'pca'; valid: l1, topk"),
    (["--dict-ratio", "0"], "--dict-ratio.*must be finite and > 0, got 0.0"),
    (["--k", "0"], "--k.*must be an integer >= 1, got 0"),
    (["--param", "topk.beta=1"], "topk has no parameter 'beta'"),
    (["--param", "topk"], "expected METHOD.KEY=VALUE"),
])
def test_invalid_options_give_a_clear_error(tiny_run, args, message):
    import re
    result = CliRunner().invoke(main, ["--run-dir", str(tiny_run)] + args)
    assert result.exit_code == 2 and re.search(message, result.output, re.S), result.output


def test_run_without_stage_1_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["--run-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "generate/config.json: not found; run `generate" in result.output


def test_a_mistyped_run_folder_is_refused_without_creating_it(tmp_path):
    result = CliRunner().invoke(main, ["--run-dir", str(tmp_path / "typo")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'typo'}: no such run folder; run `generate --run-dir" in result.output
    assert not (tmp_path / "typo").exists()


def test_unknown_instance_lists_the_valid_ones(tiny_run):
    result = CliRunner().invoke(main, ["--run-dir", str(tiny_run), "--instance", "07-p1"])
    assert result.exit_code == 1 and "no instance '07-p1'; valid: 00-p0.2, 01-p0.05" in result.output


def test_k_larger_than_d_is_refused_naming_both(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(main, ["--run-dir", str(run), "--methods", "ksvd", "--k", "9",
                                       "--n-components", "12", "--instance", "00-p0.2"])
    assert result.exit_code == 2 and "--k" in result.output
    assert "k=9" in result.output and "d=4" in result.output
    assert not (run / "sae" / "00-p0.2" / "ksvd").exists()



def test_sae_config_records_package_versions(fitted_run):
    import sklearn
    import torch

    import unsuperpose

    for path in [files.sae_dir(fitted_run, "01-p0.05", "l1") / files.CONFIG_FILE,
                 fitted_run / files.SAE_DIR / files.CONFIG_FILE]:
        env = json.loads(path.read_text())["environment"]
        assert env["unsuperpose"] == unsuperpose.__version__
        assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
        assert env["scikit-learn"] == sklearn.__version__ and env["device"] == "cpu"


def test_a_saved_sae_config_given_as_config_reproduces_the_config(fitted_run, monkeypatch):
    import unsuperpose.sae.pipeline
    from unsuperpose.sae.config import SAEStageConfig

    saved = json.loads((fitted_run / files.SAE_DIR / files.CONFIG_FILE).read_text())
    seen = []
    monkeypatch.setattr(unsuperpose.sae.pipeline, "run_sae", lambda config, run_dir, **kw: seen.append(config)
                        or run_dir / files.SAE_DIR)
    config_file = str(fitted_run / files.SAE_DIR / files.CONFIG_FILE)
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run), "--config", config_file])
    assert result.exit_code == 0, result.output
    assert seen[0].to_dict() == saved["config"] == SAEStageConfig.from_dict(saved["config"]).to_dict()
    # an option over the file changes only its own field
    result = CliRunner().invoke(main, ["--run-dir", str(fitted_run), "--config", config_file,
                                       "--methods", "mod", "--k", "2", "--n-iter", "5"])
    assert result.exit_code == 0, result.output
    params = {**saved["config"]["params"]}
    params["*"] = {**params["*"], "n_iter": 5}
    assert seen[1].to_dict() == {**saved["config"], "methods": ["mod"], "k": 2, "params": params}


def test_a_saved_sae_config_refits_the_same_stage(fitted_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted_run, run, ignore=shutil.ignore_patterns(files.SAE_DIR))
    saved = fitted_run / files.SAE_DIR / files.CONFIG_FILE
    result = CliRunner().invoke(main, ["--run-dir", str(run), "--config", str(saved),
                                       "--methods", "topk,mod"])
    assert result.exit_code == 0, result.output
    again = json.loads((run / files.SAE_DIR / files.CONFIG_FILE).read_text())["config"]
    assert again == {**json.loads(saved.read_text())["config"], "methods": ["topk", "mod"]}
    for method in ("topk", "mod"):  # the same fit: same seed, rows and hyperparameters
        a = files.sae_dir(fitted_run, "01-p0.05", method)
        b = files.sae_dir(run, "01-p0.05", method)
        weights = sorted(p.name for p in a.iterdir() if p.suffix == ".safetensors")
        assert weights and all((a / n).read_bytes() == (b / n).read_bytes() for n in weights)


@pytest.mark.parametrize("text, message", [
    ("{not json", "--config: .*not valid JSON"),
    ("[1, 2]", "--config: .*expected a JSON object of config fields"),
    ('{"dict_ratio": 2, "sparsity": 1}', "--config: sparsity: unknown key in"),
    ('{"max_rows": -1}', "--max-rows: must be an integer >= 0, got -1"),
    ('{"params": {"topk": 3}}', "--config: params must map a method"),
])
def test_a_bad_config_file_is_one_line_naming_the_option(tiny_run, tmp_path, text, message):
    import re
    path = tmp_path / "sae.json"
    path.write_text(text)
    result = CliRunner().invoke(main, ["--run-dir", str(tiny_run), "--config", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
