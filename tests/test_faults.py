"""Faults and their messages: what each part of the project refuses, and how it says so."""
import pytest

# ---- dictionaries: devices, reproducible bytes, hyperparameter errors (sae/) ---------------
_DICT_METHODS = ("l1", "topk", "batchtopk", "ksvd", "ksvd_nn", "mod", "mod_nn", "sklearn")


def _dict_fit(method: str, seed: int = 0):
    """A small fit of `method` on a planted problem, on CPU; (estimator, H)."""
    import torch

    from unsuperpose.data.planted import planted_problem
    from unsuperpose.sae.methods import build

    torch.set_num_threads(1)
    H, _ = planted_problem(n_samples=400, n_features=12, d=8, active=2, seed=3)
    params = {"n_components": 12, "k": 2, "random_state": seed, "device": "cpu",
              "n_steps": 30, "batch_size": 64, "log_every": 10, "n_iter": 4, "max_iter": 1}
    return build(method, params).fit(H.numpy()), H.numpy()


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


def test_the_safetensors_header_is_sorted_and_aligned():
    import json

    import torch
    from safetensors.torch import load

    from unsuperpose.data.safetensors_io import safetensors_bytes

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2), "c": torch.tensor(0.5)}
    keys = [f"k{i}" for i in range(12)]
    forward = safetensors_bytes(tensors, {k: k.upper() for k in keys})
    backward = safetensors_bytes(tensors, {k: k.upper() for k in reversed(keys)})
    assert forward == backward
    n = int.from_bytes(forward[:8], "little")
    assert (8 + n) % 8 == 0
    header = json.loads(forward[8:8 + n])
    assert list(header) == sorted(header)
    assert list(header["__metadata__"]) == sorted(keys)
    back = load(forward)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


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
    from unsuperpose.sae.methods import METHODS, build

    cls, _ = METHODS[method]
    floats = {f.name for f in dataclasses.fields(cls.config_class)
              if f.type in ("float", "float | None")}
    assert floats == _FLOAT_FIELDS[method]
    base = {"n_components": 8, "k": 2}
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
    from unsuperpose.sae.methods import build

    cases = [("ksvd", "n_iter", 2.5, "ksvd.n_iter: must be an integer >= 1, got 2.5"),
             ("topk", "batch_size", "64", "topk.batch_size: must be an integer >= 1, "
                                          "got '64' (a str)"),
             ("sklearn", "max_iter", True, "sklearn.max_iter: must be an integer >= 1, "
                                           "got True (a bool)"),
             ("l1", "n_steps", 0, "l1.n_steps: must be None or an integer >= 1, got 0")]
    for method, name, value, message in cases:
        with pytest.raises(ConfigError) as err:
            build(method, {"n_components": 8, "k": 2, name: value})
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


# ---- evaluate: a dictionary that cannot be loaded or applied (evaluate/) --------------------
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


# ---- stages: whole-stage commits, locks, checked inputs, non-finite rows, held-out rows ----
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from unsuperpose.data import files  # noqa: E402

_FAST_SAE = ["--methods", "topk,mod_nn", "--n-epochs", "3", "--n-iter", "3", "--device", "cpu",
             "--threads", "1"]
_INST = "00-p0.2"


def _sae(run, *args):
    from unsuperpose.sae.cli import main
    return CliRunner().invoke(main, ["--run-dir", str(run), *args])


def _evaluate(run, *args):
    from unsuperpose.evaluate.cli import main
    return CliRunner().invoke(main, ["--run-dir", str(run), "--no-figures", "--threads", "1", *args])


@pytest.fixture(scope="module")
def _stage_template(tiny_run, tmp_path_factory):
    """The shared tiny run with topk and mod_nn fitted; each test works on a copy."""
    run = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(tiny_run, run)
    result = _sae(run, *_FAST_SAE)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(_stage_template, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(_stage_template, dst)
    return dst


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _instance(run, instance_id=_INST) -> Path:
    return files.instance_dir(run, instance_id)


def _manifest(inst: Path) -> dict:
    return json.loads((inst / files.MANIFEST_FILE).read_text())


def _write_manifest(inst: Path, manifest: dict) -> None:
    (inst / files.MANIFEST_FILE).write_text(json.dumps(manifest))


def _relist(inst: Path, relpath: str) -> None:
    """Make the manifest agree with the file now at `relpath` (size, sha256), so that the
    checks after the checksum are the ones that see the change."""
    manifest, path = _manifest(inst), inst / relpath
    entry = {"bytes": path.stat().st_size, "sha256": files.sha256_file(path)}
    for split in (manifest["shards"], manifest.get("heldout", {}).get("shards", [])):
        for e in split:
            if e["file"] == relpath:
                e.update(entry)
    if relpath in manifest.get("files", {}):
        manifest["files"][relpath] = entry
    _write_manifest(inst, manifest)


def _poison_row(inst: Path, relpath: str, row: int, value: float) -> None:
    from safetensors.numpy import load_file

    from unsuperpose.data.shards import write_shard
    t = load_file(str(inst / relpath))
    h = t[files.H].copy()
    h[row, 1] = value
    write_shard(inst / relpath, h, (t[files.X_INDPTR], t[files.X_INDICES], t[files.X_VALUES]))
    _relist(inst, relpath)


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.slow
def test_sae_killed_between_two_methods_leaves_the_previous_stage_whole(run):
    before = _snapshot(files.sae_root(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unsuperpose.sae", "--run-dir", str(run), "--instance", _INST,
         "--device", "cpu", "--methods", "mod_nn,topk", "--n-iter", "3", "--param", "topk.n_steps=100000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(run.glob(f".sae.tmp-*/{_INST}/mod_nn/{files.TRAIN_LOG_FILE}")):
            assert proc.poll() is None and time.time() < deadline, "sae ended before the kill"
            time.sleep(0.05)
        time.sleep(0.3)  # inside the second method's fit
    finally:
        proc.kill()
        proc.wait()
    assert _snapshot(files.sae_root(run)) == before  # the complete old stage, byte for byte
    assert list(run.glob(".sae.tmp-*"))               # the killed run's staging, not visible
    result = _evaluate(run)
    assert result.exit_code == 0, result.output
    assert "removed, left over from an interrupted run" in result.output
    assert not list(run.glob(".sae.tmp-*"))


def test_the_next_command_completes_a_swap_cut_between_its_two_renames(tmp_path):
    from unsuperpose.data.staging import COMPLETE_MARKER, recover
    final = tmp_path / "sae"
    new = tmp_path / ".sae.tmp-abc"
    new.mkdir()
    (new / "a.txt").write_text("new")
    (new / COMPLETE_MARKER).touch()
    old = tmp_path / ".sae.old-123"
    old.mkdir()
    (old / "a.txt").write_text("old")
    lines = recover(final)  # final missing: killed after the first rename
    assert (final / "a.txt").read_text() == "new"
    assert any("completed the swap" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_a_replacement_that_never_completed_gives_the_old_folder_back(tmp_path):
    from unsuperpose.data.staging import recover
    final = tmp_path / "sae"
    (tmp_path / ".sae.tmp-abc").mkdir()                    # incomplete: no marker
    (tmp_path / ".sae.old-123").mkdir()
    (tmp_path / ".sae.old-123" / "a.txt").write_text("old")
    lines = recover(final)
    assert (final / "a.txt").read_text() == "old"
    assert any("restored the previous folder" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


def test_staging_without_renameat2_swaps_by_two_renames(tmp_path, monkeypatch):
    import unsuperpose.data.staging
    monkeypatch.setattr(unsuperpose.data.staging, "exchange", lambda a, b: False)
    final = tmp_path / "out"
    for text in ("first", "second"):
        with unsuperpose.data.staging.StagingDir(final) as stage:
            (stage / "a.txt").write_text(text)
    assert (final / "a.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]  # no marker left in place


def test_a_second_writer_is_refused_naming_the_run(run):
    from unsuperpose.data.staging import run_lock
    before = _snapshot(files.sae_root(run))
    with run_lock(run, "sae --run-dir elsewhere"):
        out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{run}: another command is writing this run (sae --run-dir elsewhere pid {os.getpid()})" in out
    assert _snapshot(files.sae_root(run)) == before


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


@pytest.mark.parametrize("name", [files.GROUND_TRUTH_FILE, files.MODEL_FILE])
def test_a_flipped_byte_in_ground_truth_or_model_is_refused_naming_the_file(run, name):
    path = _instance(run) / name
    payload = bytearray(path.read_bytes())
    payload[-2] ^= 0x01
    path.write_bytes(bytes(payload))
    for result in (_sae(run, *_FAST_SAE), _evaluate(run)):
        assert f"{path}: sha256 differs from manifest.json; the file changed" in result.output
        assert result.exit_code in (1, 2) and "Traceback" not in result.output


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


def test_a_safetensors_header_whose_offsets_disagree_with_the_shape_is_refused(tmp_path):
    import struct

    from unsuperpose.data.errors import ShardError
    from unsuperpose.data.safetensors_io import mmap_safetensors
    header = json.dumps({"h": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ShardError, match=r"bad\.safetensors: tensor 'h': data_offsets \[0, 12\] "
                                         r"hold 12 bytes, shape \[2, 2\] x float32 needs 16"):
        mmap_safetensors(path)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    with pytest.raises(ShardError, match="tensors 'a' and 'b' overlap"):
        mmap_safetensors(path)


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


def test_a_nonfinite_held_out_row_is_an_error_in_evaluate_unless_dropped(run):
    inst = _instance(run)
    _poison_row(inst, "heldout/shard-00000.safetensors", 5, float("nan"))
    out = _one_line_error(_evaluate(run), 1)
    assert f"{inst / 'heldout/shard-00000.safetensors'}: row 5 holds NaN or inf" in out
    result = _evaluate(run, "--on-nonfinite", "drop")
    assert result.exit_code == 0, result.output
    report = (files.evaluate_dir(run) / "report.md").read_text()
    assert "1 evaluation rows with NaN or inf left out of heldout/shard-00000.safetensors" in report


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


def test_invalid_manifest_json_is_one_line_in_evaluate(run):
    path = _instance(run) / files.MANIFEST_FILE
    path.write_text("{not json")
    out = _one_line_error(_evaluate(run), 2)
    assert f"{path}: not valid JSON" in out


def test_a_read_only_run_folder_is_one_line(run, monkeypatch):
    import unsuperpose.data.staging

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(unsuperpose.data.staging.tempfile, "mkdtemp", refuse)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{run}: cannot write here (Permission denied)" in out


def test_rerunning_generate_with_the_same_config_keeps_the_dictionaries_current(run):
    from unsuperpose.generate.cli import main as generate_main
    config = run / "saved-generate.json"
    shutil.copy(files.generate_dir(run) / files.CONFIG_FILE, config)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = _evaluate(run)
    assert result.exit_code == 0, result.output


def test_evaluate_refuses_a_sae_stage_fitted_on_a_different_generate(run):
    from unsuperpose.generate.cli import main as generate_main
    config = run / "saved-generate.json"
    shutil.copy(files.generate_dir(run) / files.CONFIG_FILE, config)
    result = CliRunner().invoke(generate_main, ["--run-dir", str(run), "--config", str(config),
                                                "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = _one_line_error(_evaluate(run), 2)
    assert f"{files.sae_root(run)}: fitted on a different generate/" in out


def test_sae_never_reads_the_held_out_split_and_evaluate_scores_only_on_it(run):
    inst = _instance(run)
    shard = inst / "heldout" / "shard-00000.safetensors"
    payload = bytearray(shard.read_bytes())
    payload[-1] ^= 0xFF
    shard.write_bytes(bytes(payload))
    assert _sae(run, *_FAST_SAE).exit_code == 0        # the held-out rows are not its input
    out = _one_line_error(_evaluate(run), 1)            # but they are evaluate's
    assert f"{shard}: sha256 differs" in out


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


# ---- matched sparsity and the oracle, through the stages -----------------------------------
def _metric(run, method, metric, instance=None):
    records = json.loads((files.evaluate_dir(run) / "metrics.json").read_text())["records"]
    return [r["value"] for r in records if r["method"] == method and r["metric"] == metric
            and "feature" not in r and (instance is None or r["instance"] == instance)]


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


# ---- sweeps: a killed sweep, broken metrics, two sweeps on one folder --------------------
from unsuperpose.evaluate.pipeline import METRICS_FILE  # noqa: E402
from unsuperpose.evaluate.sweep import load_grid  # noqa: E402
from unsuperpose.evaluate.sweep.aggregate import AGGREGATE_CSV, SUMMARY_FILE, read_csv, write_aggregate  # noqa: E402
from unsuperpose.evaluate.sweep.guard import SweepBusy, sweep_lock  # noqa: E402
from unsuperpose.evaluate.sweep.runner import POINT_MARKER, point_dir  # noqa: E402
from tests.evaluate.sweep.test_sweep import BASE, _invoke, write_grid  # noqa: E402

GUARD = Path(__file__).resolve().parents[1] / "evaluate" / "sweep" / "guard.py"
# one instance, topk only; the axis over seeds: 1 generate run, points of a second or two
FAST_BASE = {**BASE, "generate": {**BASE["generate"], "feature_probability": 0.1},
             "sae": {**BASE["sae"], "methods": ["topk"]}}
SEEDS = {"sae.seed": [0, 1, 2]}


@pytest.fixture
def no_sweep_figures(monkeypatch):
    """The sweep figures (most of an aggregate's time) are tested above; skip them here."""
    import unsuperpose.evaluate.sweep.figures

    monkeypatch.setattr(unsuperpose.evaluate.sweep.figures, "save_sweep_figures", lambda *args: [])


def _load_guard_code():
    # python -c code that loads guard.py alone (no torch, no evaluate package: starts fast)
    return ("import importlib.util, sys; spec = importlib.util.spec_from_file_location("
            f"'guard', {str(GUARD)!r}); g = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(g)\n")


def _children(pid):
    """The pids whose parent is `pid`, read from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _running(pid):
    """True while `pid` runs (a zombie has ended: here nobody may reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_killed_sweeps_workers_die_with_it_and_the_resumed_sweep_completes(tmp_path,
                                                                            no_sweep_figures):
    grid = write_grid(tmp_path / "grid.json", SEEDS, FAST_BASE)
    sweep_dir = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "unsuperpose.evaluate.sweep", str(grid), "--sweep-dir", str(sweep_dir),
         "--workers", "2", "--threads", "1"], cwd=Path(__file__).parent.parent, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((sweep_dir / "points").glob(".*.partial")):  # a point runs
            assert sweep.poll() is None, sweep.communicate()[0]
            assert time.monotonic() < deadline, "no point started"
            time.sleep(0.02)
        workers = _children(sweep.pid)
        assert len(workers) >= 2  # the two pool workers (and the resource tracker)
        sweep.kill()
    finally:
        sweep.kill()
        sweep.communicate()
    assert _wait_gone(workers, 5.0) == []

    half_written = sorted(f"points/{p.name[1:-len('.partial')]}"
                          for p in (sweep_dir / "points").glob(".*.partial"))
    assert half_written
    done = len(list(sweep_dir.glob(f"points/*/{POINT_MARKER}")))  # the points it finished
    resumed = _invoke(grid, sweep_dir, "--workers", "1")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.splitlines()[0] == (
        f"sweep: removed {len(half_written)} unfinished folder(s) an interrupted or failed run "
        f"left ({', '.join(half_written)}); they run again")
    assert (f"3 points, {done} done, {3 - done} to run (0 generate runs first)"
            in resumed.output.splitlines()[1])
    folders = {point_dir(sweep_dir, p) for p in load_grid(grid).points}
    assert set((sweep_dir / "points").iterdir()) == folders  # no staging folder left
    assert all(not f.is_symlink() and (f / POINT_MARKER).is_file() for f in folders)
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert {r["point"] for r in rows if r["method"] == "topk"} == {f.name for f in folders}


@pytest.fixture(scope="module")
def two_points(tmp_path_factory):
    """A finished 2-point sweep (one worker, in this process)."""
    root = tmp_path_factory.mktemp("two")
    grid = write_grid(root / "grid.json", {"sae.seed": [0, 1]}, FAST_BASE)
    with pytest.MonkeyPatch.context() as mp:
        import unsuperpose.evaluate.sweep.figures

        mp.setattr(unsuperpose.evaluate.sweep.figures, "save_sweep_figures", lambda *args: [])
        result = _invoke(grid, root / "out", "--workers", "1")
    assert result.exit_code == 0, result.output
    return grid, root / "out"


BREAKAGES = {
    "invalid json": lambda path: path.write_text("{not json"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "missing": lambda path: path.unlink(),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_finished_point_with_unreadable_metrics_is_recomputed_with_a_note(
        two_points, tmp_path, no_sweep_figures, breakage):
    grid, original = two_points
    sweep_dir = tmp_path / "out"
    shutil.copytree(original, sweep_dir, symlinks=True)
    broken, intact = (point_dir(sweep_dir, p) for p in load_grid(grid).points)
    metrics = broken / "evaluate" / METRICS_FILE
    BREAKAGES[breakage](metrics)
    kept = (intact / POINT_MARKER).stat().st_mtime_ns

    dry = _invoke(grid, sweep_dir, "--dry-run")
    assert [line.split()[:2] for line in dry.output.splitlines()] == [
        [broken.name, "redo"], [intact.name, "done"]]
    result = _invoke(grid, sweep_dir, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    note = f"point {broken.name} was finished but its metrics are unreadable ({metrics}"
    assert f"sweep: note: {note}" in result.output and "): recomputed\n" in result.output
    assert "2 points, 1 done, 1 to run (0 generate runs first)" in result.output
    assert json.loads(metrics.read_text())["records"]  # computed again
    assert (intact / POINT_MARKER).stat().st_mtime_ns == kept
    assert f"- note: {note}" in (sweep_dir / SUMMARY_FILE).read_text()
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert {r["point"] for r in rows if r["method"] == "topk"} == {broken.name, intact.name}
    dry = _invoke(grid, sweep_dir, "--dry-run")
    assert [line.split()[1] for line in dry.output.splitlines()] == ["done", "done"]


def test_the_aggregate_leaves_out_a_point_whose_metrics_are_unreadable_with_a_note(
        two_points, tmp_path, no_sweep_figures):
    grid, original = two_points
    sweep_dir = tmp_path / "out"
    shutil.copytree(original, sweep_dir, symlinks=True)
    broken, intact = (point_dir(sweep_dir, p) for p in load_grid(grid).points)
    (broken / "evaluate" / METRICS_FILE).write_text("[1, 2")
    echoed = []
    rows = write_aggregate(load_grid(grid), sweep_dir, {"failed": {}}, echo=echoed.append)
    assert {r["point"] for r in rows} == {intact.name}
    assert len(echoed) == 1 and echoed[0].startswith(f"aggregate: note: point {broken.name} left "
                                                     "out: its metrics are unreadable (")
    summary = (sweep_dir / SUMMARY_FILE).read_text()
    assert "1 finished, 0 failed" in summary
    assert f"- note: point {broken.name} left out: its metrics are unreadable" in summary


def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_folder_and_the_pid(tmp_path):
    grid = write_grid(tmp_path / "grid.json", SEEDS, FAST_BASE)
    sweep_dir = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _load_guard_code() + "import time\nwith g.sweep_lock(sys.argv[1]):"
         "\n    print('held', flush=True)\n    time.sleep(60)", str(sweep_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = _invoke(grid, sweep_dir, "--workers", "1")
    finally:
        holder.kill()
        holder.communicate()
    assert result.exit_code == 1
    assert result.output == (f"Error: sweep folder {sweep_dir} is in use by another sweep (pid "
                             f"{holder.pid}); wait for it to end, or stop it, then run again\n")
    assert {p.name for p in sweep_dir.iterdir()} <= {".sweep.lock", ".workers.lock"}  # no run
    with sweep_lock(sweep_dir):  # the holder is gone: free again
        pass


def test_a_sweep_refuses_to_start_while_a_leftover_worker_holds_its_folder(tmp_path):
    worker = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(os.path.join(sys.argv[1], '.workers.lock'), os.O_WRONLY | os.O_APPEND | os.O_CREAT)"
         "\nfcntl.flock(fd, fcntl.LOCK_SH)\nos.write(fd, b'%d\\n' % os.getpid())\n"
         "print('held', flush=True)\ntime.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(SweepBusy) as refused:
            with sweep_lock(tmp_path, leftover_wait=0.5):
                pass
        assert time.monotonic() - started >= 0.5  # it waited for the worker to end first
    finally:
        worker.kill()
        worker.communicate()
    assert str(refused.value) == (f"sweep folder {tmp_path}: worker processes of an earlier sweep "
                                  f"still run (pids {worker.pid}); stop them, then run again")
    with sweep_lock(tmp_path, leftover_wait=0.5):  # the worker is gone: free again
        assert (tmp_path / ".workers.lock").read_text() == ""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_worker_whose_parent_dies_exits_even_without_the_parent_death_signal(tmp_path):
    # the parent starts a child that only watches its parent pid (no prctl), then dies
    child = (_load_guard_code() + "import os, threading, time\n"
             "threading.Thread(target=g._watch_parent, args=(os.getppid(),), daemon=True).start()"
             "\nprint(os.getpid(), flush=True)\ntime.sleep(60)")
    parent = ("import subprocess, sys, os\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True)"
              "\nprint(p.stdout.readline().strip(), flush=True)\ntime_to_die = sys.stdin.readline()"
              "\nos._exit(0)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    assert _running(grandchild)
    proc.communicate("die\n")
    assert _wait_gone([grandchild], 3.0) == []


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


def test_a_held_out_shard_listed_as_a_training_shard_is_refused(run):
    inst = _instance(run)
    manifest = _manifest(inst)
    manifest["heldout"]["shards"][0] = dict(manifest["shards"][0])
    manifest["heldout"]["rows"] = manifest["shards"][0]["rows"]
    _write_manifest(inst, manifest)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert "activations/shard-00000.safetensors is listed twice" in out


def test_nonfinite_rows_past_the_rows_fitted_are_neither_read_nor_counted(tmp_path):
    import torch

    from unsuperpose.data.manifest import read_manifest
    from unsuperpose.data.rows import take_rows
    from unsuperpose.data.shard_writer import ShardWriter
    h = torch.ones(100, 3)
    h[60] = float("nan")
    writer = ShardWriter(tmp_path, d=3, n_features=2, rows_per_shard=100)
    writer.add(h, torch.zeros(100, 2))
    writer.close()
    manifest = read_manifest(tmp_path)
    H, dropped = take_rows(tmp_path, manifest, 50)          # row 60 is never reached
    assert len(H) == 50 and dropped == {}
    H, dropped = take_rows(tmp_path, manifest, 80, on_nonfinite="drop")
    assert len(H) == 80 and dropped == {"activations/shard-00000.safetensors": 1}


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
