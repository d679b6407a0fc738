"""Faults and their messages in sae/: what a dictionary and the sae stage refuse, and how they say so."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.stage_faults import (_FAST_SAE, _INST, _evaluate, _instance, _manifest,
                                _one_line_error, _poison_row, _relist, _sae, _snapshot, _write_manifest)
from unsuperpose.data import files


# ---- dictionaries: devices, reproducible bytes, hyperparameter errors ------------------------
_DICT_METHODS = ("l1", "topk", "batchtopk", "ksvd", "ksvd_nn", "mod", "mod_nn", "sklearn")


def _dict_fit(method: str, seed: int = 0):
    """A small fit of `method` on a planted problem, on CPU; (estimator, H)."""
    import torch

    from unsuperpose.data.planted import planted_problem
    from unsuperpose.sae.methods import accepted, build

    torch.set_num_threads(1)
    H, _ = planted_problem(n_samples=400, n_features=12, d=8, active=2, seed=3)
    params = {"n_components": 12, "k": 2, "random_state": seed, "device": "cpu",
              "n_steps": 30, "batch_size": 64, "log_every": 10, "n_iter": 4, "max_iter": 1}
    return build(method, accepted(method, params)).fit(H.numpy()), H.numpy()


@pytest.mark.parametrize("method", _DICT_METHODS)
def test_a_dictionary_fitted_on_cuda_loads_and_transforms_on_a_cpu_machine(method, tmp_path):
    import json

    import numpy as np
    import torch

    from unsuperpose.sae.methods import load

    est, H = _dict_fit(method)
    est.save(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    assert saved["fitted_device"] == "cpu"
    # what a fit on a second GPU writes (config.device is what the stage passed)
    saved["fitted_device"] = "cuda:1"
    if "device" in saved["config"]:
        saved["config"]["device"] = "cuda"
    path.write_text(json.dumps(saved))
    loaded = load(tmp_path)
    assert loaded.fitted_device_ == "cuda:1"
    expected_device = "cuda:1" if torch.cuda.device_count() >= 2 else "cpu"
    if "device" in saved["config"]:
        assert loaded.device == expected_device
    if expected_device == "cpu":
        assert np.array_equal(loaded.transform(H), est.transform(H))
        assert np.array_equal(loaded.components_, est.components_)
    # an explicit device is honoured, and refused by name when this machine lacks it
    on_cpu = load(tmp_path, device="cpu")
    assert np.array_equal(on_cpu.transform(H), est.transform(H))
    assert on_cpu.to("cpu") is on_cpu
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
            load(tmp_path, device="cuda")
    # saving the loaded one again keeps the record of where it was fitted
    on_cpu.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["fitted_device"] == "cuda:1"


@pytest.mark.parametrize("method", _DICT_METHODS)
def test_two_identical_fits_write_byte_identical_dictionaries(method, tmp_path):
    import hashlib

    from safetensors import safe_open

    meta = {"instance_id": "i0", "method_name": method, "generate_config_hash": "0123abcd",
            "zeta": "z", "alpha": "a"}
    digests = []
    for name in ("first", "second"):
        est, _ = _dict_fit(method, seed=5)
        est.save(tmp_path / name, metadata=meta)
        data = (tmp_path / name / "dictionary.safetensors").read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
    assert digests[0] == digests[1]
    with safe_open(str(tmp_path / "first" / "dictionary.safetensors"), "pt") as f:
        assert f.metadata() == {**meta, "method": est.method, "format_version": "1",
                                "config_hash": f.metadata()["config_hash"]}


# every float hyperparameter: (the rule its message states, an out-of-range value, shown as)
_FLOAT_RULES = {
    "lr": ("finite and > 0", -0.001, "-0.001"),
    "init_sae_lr": ("finite and > 0", -0.001, "-0.001"),
    "fit_k_cap": ("None or finite and in (0, 1]", 0.0, "0.0"),
    "lr_decay_fraction": ("finite and in [0, 1]", 1.5, "1.5"),
    "grad_clip_norm": ("None or finite and > 0", 0.0, "0.0"),
    "l1_coefficient": ("finite and >= 0", -0.1, "-0.1"),
    "aux_coefficient": ("finite and >= 0", -1.0, "-1.0"),
    "threshold_rate": ("finite and in (0, 1]", 0.0, "0.0"),
    "tol": ("None or finite and >= 0", -1.0, "-1.0"),
    "max_coherence": ("finite and in (0, 1]", 0.0, "0.0"),
    "swap_gain_factor": ("finite and >= 0", -1.0, "-1.0"),
    "overcomplete": ("None or finite and in [0, 4]", 5.0, "5.0"),
    "ridge": ("finite and >= 0", -1.0, "-1.0"),
    "row_weight_exponent": ("finite and >= 0", -1.0, "-1.0"),
    "residual_weight_scale": ("None or finite and > 0", 0.0, "0.0"),
    "fit_k_ratio": ("finite and >= 1", 0.5, "0.5"),
    "fit_tol": ("None or finite and >= 0", -1.0, "-1.0"),
    "alpha": ("finite and >= 0", -0.5, "-0.5"),
    "refine_step_size": ("finite and > 0", 0.0, "0.0"),
    "rel_tol": ("None or finite and >= 0", -1.0, "-1.0"),
    "incoherence": ("None or finite and > 0", 0.0, "0.0"),
    "anchor_share": ("None or finite and in (0, 1]", 0.0, "0.0"),
}


_FLOAT_FIELDS = {
    "l1": {"lr", "lr_decay_fraction", "grad_clip_norm", "l1_coefficient", "refine_step_size"},
    "topk": {"lr", "lr_decay_fraction", "grad_clip_norm", "aux_coefficient", "refine_step_size"},
    "batchtopk": {"lr", "lr_decay_fraction", "grad_clip_norm", "aux_coefficient",
                  "threshold_rate", "refine_step_size"},
    **{m: {"tol", "rel_tol", "fit_tol", "fit_k_ratio", "max_coherence",
           "swap_gain_factor", "overcomplete", "init_sae_lr", "fit_k_cap", "incoherence",
           "anchor_share"}
       for m in ("ksvd", "ksvd_nn")},
    **{m: {"tol", "rel_tol", "fit_tol", "fit_k_ratio", "max_coherence",
           "swap_gain_factor", "overcomplete", "ridge", "init_sae_lr", "fit_k_cap",
           "incoherence", "row_weight_exponent", "residual_weight_scale",
           "anchor_share"}
       for m in ("mod", "mod_nn", "matryoshka_mod")},
    "sklearn": {"alpha"},
}


@pytest.mark.parametrize("method", (*_DICT_METHODS, "matryoshka_mod"))
def test_every_float_hyperparameter_refuses_nan_inf_and_out_of_range_by_name(method):
    import dataclasses

    from unsuperpose.data.configs import ConfigError
    from unsuperpose.sae.methods import METHODS, accepted, build

    cls, _ = METHODS[method]
    floats = {f.name for f in dataclasses.fields(cls.config_class)
              if f.type in ("float", "float | None")}
    assert floats == _FLOAT_FIELDS[method]
    base = accepted(method, {"n_components": 8, "k": 2})  # l1: no k
    for name in sorted(floats):
        rule, out_of_range, shown = _FLOAT_RULES[name]
        bad_values = [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"),
                      ("nan", "nan"), (out_of_range, shown)]  # "nan": --param x.lr=nan
        for value, as_shown in bad_values:
            with pytest.raises(ConfigError) as err:
                build(method, {**base, name: value})
            assert str(err.value) == f"{method}.{name}: must be {rule}, got {as_shown}"
            assert err.value.field == f"{method}.{name}"


def test_integer_hyperparameters_refuse_fractions_strings_and_bools_by_name():
    from unsuperpose.data.configs import ConfigError
    from unsuperpose.sae.methods import accepted, build

    cases = [("ksvd", "n_iter", 2.5, "ksvd.n_iter: must be an integer >= 1, got 2.5"),
             ("topk", "batch_size", "64", "topk.batch_size: must be an integer >= 1, "
                                          "got '64' (a str)"),
             ("sklearn", "max_iter", True, "sklearn.max_iter: must be an integer >= 1, "
                                           "got True (a bool)"),
             ("l1", "n_steps", 0, "l1.n_steps: must be None or an integer >= 1, got 0")]
    for method, name, value, message in cases:
        with pytest.raises(ConfigError) as err:
            build(method, {**accepted(method, {"n_components": 8, "k": 2}), name: value})
        assert str(err.value) == message


def test_the_sae_command_names_a_nan_hyperparameter(tiny_run, tmp_path):
    import shutil

    from click.testing import CliRunner

    from unsuperpose.sae.cli import main

    run_dir = tmp_path / "run"  # a copy: tiny_run is shared read-only
    shutil.copytree(tiny_run, run_dir)
    result = CliRunner().invoke(main, ["--run-dir", str(run_dir), "--methods", "topk",
                                       "--device", "cpu", "--param", "topk.lr=nan"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert "topk.lr: must be finite and > 0, got nan" in result.output


# ---- the stage: refused options, checked inputs, non-finite rows, held-out rows --------------
@pytest.mark.parametrize("args, code, message", [
    (["--k", "9"], 2, "k=9 exceeds the activation width d=4"),
    (["--n-epochs", "0"], 2, "n_epochs"),
    (["--dict-ratio", "inf"], 2, "--dict-ratio: must be finite and > 0, got inf"),
    (["--dict-ratio", "nan"], 2, "--dict-ratio: must be finite and > 0, got nan"),
])
def test_a_refused_option_fits_nothing_and_keeps_the_previous_stage(run, args, code, message):
    before = _snapshot(files.sae_root(run))
    out = _one_line_error(_sae(run, *_FAST_SAE, *args), code)
    assert message in out
    assert _snapshot(files.sae_root(run)) == before
    assert not list(run.glob(".sae.*"))


def test_a_bad_shard_in_a_later_instance_is_refused_before_the_first_fit(run):
    before = _snapshot(files.sae_root(run))
    shard = _instance(run, "01-p0.05") / "activations" / "shard-00002.safetensors"
    payload = bytearray(shard.read_bytes())
    payload[-1] ^= 0xFF
    shard.write_bytes(bytes(payload))
    result = _sae(run, *_FAST_SAE)
    out = _one_line_error(result, 1)
    assert f"{shard}: sha256 differs from manifest.json" in out
    assert f"{_INST} topk" not in out  # nothing was fitted, not even the first instance
    assert _snapshot(files.sae_root(run)) == before


def _rewrite_ground_truth(run, change) -> Path:
    from safetensors.numpy import load_file, save_file
    path = _instance(run) / files.GROUND_TRUTH_FILE
    gt = load_file(str(path))
    change(gt)
    save_file(gt, str(path))
    _relist(_instance(run), files.GROUND_TRUTH_FILE)
    return path


def test_ground_truth_with_a_missing_key_is_refused_naming_file_and_key(run):
    path = _rewrite_ground_truth(run, lambda gt: gt.pop(files.GT_SIGN))
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{path}: missing tensor 'sign'" in out


def test_ground_truth_whose_d_disagrees_with_the_manifest_is_refused(run):
    def widen(gt):
        gt[files.GT_DIRECTIONS] = np.concatenate(
            [gt[files.GT_DIRECTIONS], np.zeros((len(gt[files.GT_DIRECTIONS]), 1), np.float32)], 1)
    path = _rewrite_ground_truth(run, widen)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{path}: tensor 'directions' has shape [12, 5], expected [*, 4]" in out


def test_a_truncated_ground_truth_is_refused_naming_the_file(run):
    path = _instance(run) / files.GROUND_TRUTH_FILE
    path.write_bytes(path.read_bytes()[:100])
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{path}: 100 bytes on disk, manifest says" in out


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "inf")])
def test_a_nonfinite_row_is_an_error_naming_the_shard_and_the_row(run, value, word):
    inst = _instance(run)
    _poison_row(inst, "activations/shard-00001.safetensors", 7, value)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert (f"{inst / 'activations/shard-00001.safetensors'}: row 7 holds NaN or inf (1 such rows "
            f"in this shard); pass --on-nonfinite drop") in out


def test_on_nonfinite_drop_leaves_the_rows_out_and_counts_them_per_shard(run):
    inst = _instance(run)
    for row in (3, 7):
        _poison_row(inst, "activations/shard-00000.safetensors", row, float("nan"))
    result = _sae(run, *_FAST_SAE, "--on-nonfinite", "drop")
    assert result.exit_code == 0, result.output
    saved = json.loads((files.sae_root(run) / files.CONFIG_FILE).read_text())
    assert saved["instances"][_INST]["nonfinite_dropped"] == {"activations/shard-00000.safetensors": 2}
    from unsuperpose.data.rows import read_all
    H, _ = read_all(inst)
    usable = np.isfinite(H).all(1) & (np.abs(np.nan_to_num(H)).max(1) > 0)
    assert saved["instances"][_INST]["rows"] == int(usable.sum())
    dictionary = json.loads((files.sae_dir(run, _INST, "topk") / files.CONFIG_FILE).read_text())
    assert dictionary["nonfinite_dropped"] == {"activations/shard-00000.safetensors": 2}


def test_an_instance_without_its_manifest_is_an_error_not_skipped(run):
    path = _instance(run, "01-p0.05") / files.MANIFEST_FILE
    path.unlink()
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{path}: missing; this instance is incomplete" in out


@pytest.mark.parametrize("change, message", [
    (lambda m: m["shards"][0].pop("rows"), "shards[0] lacks 'rows' (a int)"),
    (lambda m: m["shards"][0].update(file="../../../../etc/passwd"),
     "shards[0] file '../../../../etc/passwd' points outside the instance folder"),
    (lambda m: m["shards"].pop(), "activations/shard-00002.safetensors: a shard on disk that"),
])
def test_manifest_faults_are_refused_naming_the_file(run, change, message):
    inst = _instance(run)
    manifest = _manifest(inst)
    change(manifest)
    manifest["rows"] = sum(s.get("rows", 0) for s in manifest["shards"])
    _write_manifest(inst, manifest)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert message in out


def test_a_held_out_shard_listed_as_a_training_shard_is_refused(run):
    inst = _instance(run)
    manifest = _manifest(inst)
    manifest["heldout"]["shards"][0] = dict(manifest["shards"][0])
    manifest["heldout"]["rows"] = manifest["shards"][0]["rows"]
    _write_manifest(inst, manifest)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert "activations/shard-00000.safetensors is listed twice" in out


def test_sae_never_reads_the_held_out_split_and_evaluate_scores_only_on_it(run):
    inst = _instance(run)
    shard = inst / "heldout" / "shard-00000.safetensors"
    payload = bytearray(shard.read_bytes())
    payload[-1] ^= 0xFF
    shard.write_bytes(bytes(payload))
    assert _sae(run, *_FAST_SAE).exit_code == 0        # the held-out rows are not its input
    out = _one_line_error(_evaluate(run), 1)            # but they are evaluate's
    assert f"{shard}: sha256 differs" in out


def test_sae_streams_every_row_with_max_rows_0(run):
    from unsuperpose.data.rows import read_all
    result = _sae(run, "--methods", "topk", "--instance", _INST, "--max-rows", "0",
                  "--n-epochs", "1", "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    H, _ = read_all(_instance(run))
    saved = json.loads((files.sae_dir(run, _INST, "topk") / files.CONFIG_FILE).read_text())
    assert saved["rows"] == int((np.abs(H).max(1) > 0).sum()) > 4000


def test_two_identical_sae_runs_write_identical_dictionaries(run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    assert _sae(again, *_FAST_SAE).exit_code == 0
    for method in ("topk", "mod_nn"):
        a = files.sae_dir(run, _INST, method) / files.DICTIONARY_FILE
        b = files.sae_dir(again, _INST, method) / files.DICTIONARY_FILE
        assert files.sha256_file(a) == files.sha256_file(b), method


def test_a_streamed_fit_does_not_depend_on_the_methods_fitted_before_it(run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    common = ["--instance", _INST, "--max-rows", "0", "--n-epochs", "1", "--device", "cpu",
              "--threads", "1"]
    assert _sae(run, "--methods", "topk", *common).exit_code == 0
    assert _sae(again, "--methods", "batchtopk,topk", *common).exit_code == 0
    a, b = (files.sae_dir(r, _INST, "topk") / files.DICTIONARY_FILE for r in (run, again))
    assert files.sha256_file(a) == files.sha256_file(b)


def test_a_target_l0_above_the_dictionary_size_is_refused_before_any_fit(run):
    before = _snapshot(files.sae_root(run))
    out = _one_line_error(_sae(run, *_FAST_SAE, "--target-l0", "99"), 2)
    assert "--target-l0: 99 exceeds the" in out
    assert _snapshot(files.sae_root(run)) == before
