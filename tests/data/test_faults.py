"""Faults that data/ catches for every stage: whole-stage commits and locks (data/staging.py),
checksums of the files a stage reads, safetensors headers, non-finite rows past those read."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.stage_faults import _FAST_SAE, _INST, _evaluate, _instance, _one_line_error, _sae, _snapshot
from unsuperpose.data import files


# ---- whole-stage commits and locks (data/staging.py) -----------------------------------------
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


def test_a_leftover_that_is_a_file_is_kept_and_said_once_per_command(tmp_path):
    from unsuperpose.data.staging import recover
    stray = tmp_path / ".sae.tmp-abc"          # a file an older version moved there
    stray.write_text("the user's sae file")
    lines = recover(tmp_path / "sae")
    assert lines == [f"{stray}: not a staging folder, left as it is (move it away)"]
    assert stray.read_text() == "the user's sae file"


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


def test_a_read_only_run_folder_is_one_line(run, monkeypatch):
    import unsuperpose.data.staging

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(unsuperpose.data.staging.tempfile, "mkdtemp", refuse)
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert f"{run}: cannot write here (Permission denied)" in out


# ---- files every stage checks: checksums, safetensors headers, rows --------------------------
@pytest.mark.parametrize("name", [files.GROUND_TRUTH_FILE, files.MODEL_FILE])
def test_a_flipped_byte_in_ground_truth_or_model_is_refused_naming_the_file(run, name):
    path = _instance(run) / name
    payload = bytearray(path.read_bytes())
    payload[-2] ^= 0x01
    path.write_bytes(bytes(payload))
    for result in (_sae(run, *_FAST_SAE), _evaluate(run)):
        assert f"{path}: sha256 differs from manifest.json; the file changed" in result.output
        assert result.exit_code in (1, 2) and "Traceback" not in result.output


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


# ---- shard paths resolved before they are compared (data/manifest.py) ------------------------
_HELD = "heldout/shard-00000.safetensors"
_TRAIN = "activations/shard-00000.safetensors"


def _listing(run, change) -> tuple[str, dict]:
    """Change the manifest's shard lists of _INST (rows kept adding up); returns sae's output
    (asserted one line, exit 1) and the run's files before, to compare after."""
    from tests.stage_faults import _manifest, _write_manifest
    inst = _instance(run)
    manifest = _manifest(inst)
    change(manifest)
    manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
    _write_manifest(inst, manifest)
    before = _snapshot(files.sae_root(run))
    out = _one_line_error(_sae(run, *_FAST_SAE), 1)
    assert _snapshot(files.sae_root(run)) == before
    return out


def _held_entry(manifest, name) -> dict:
    return {**manifest["heldout"]["shards"][0], "file": name}


def test_a_held_out_shard_listed_through_dot_among_the_training_shards_is_refused(run):
    out = _listing(run, lambda m: m["shards"].append(_held_entry(m, "./" + _HELD)))
    assert f"{_HELD} is listed twice (shards[" in out and "and heldout.shards[0] name one file" in out


def test_a_training_shard_listed_again_through_dotdot_is_refused(run):
    def twice(m):
        m["shards"].append({**m["shards"][0], "file": "activations/../" + _TRAIN})
    out = _listing(run, twice)
    assert f"activations/../{_TRAIN} is listed twice (shards[0] and shards[" in out


@pytest.mark.parametrize("name, reason", [
    ("activations/shard\x00-00000.safetensors", "holds a NUL byte"),
    ("activations/\udc80.safetensors", "is not valid UTF-8"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("/etc/passwd", "is an absolute path"),
    ("../../generate/config.json", "points outside the instance folder"),
    (".", "points outside the instance folder"),
])
def test_an_unusable_shard_name_is_refused_naming_the_entry(run, name, reason):
    out = _listing(run, lambda m: m["heldout"]["shards"].__setitem__(0, _held_entry(m, name)))
    assert "heldout.shards[0] file " in out and reason in out
    assert "\x00" not in out and "embedded null byte" not in out


def test_a_shard_that_is_a_symlink_loop_is_refused_naming_the_entry(run):
    inst = _instance(run)
    (inst / "activations" / "loop.safetensors").symlink_to(inst / "activations" / "loop.safetensors")
    try:
        out = _listing(run, lambda m: m["shards"].__setitem__(
            0, {**m["shards"][0], "file": "activations/loop.safetensors"}))
    finally:
        (inst / "activations" / "loop.safetensors").unlink()
    assert "shards[0] file 'activations/loop.safetensors' cannot be resolved" in out


@pytest.mark.parametrize("name, reason", [
    ("ground_truth\x00.safetensors", "holds a NUL byte"),
    ("../model.safetensors", "is not a file of the instance folder")])
def test_a_manifest_file_name_with_a_nul_byte_or_outside_is_refused(run, name, reason):
    def rename(m):
        m["files"][name] = m["files"].pop(files.GROUND_TRUTH_FILE)
    out = _listing(run, rename)
    assert "files[" in out and reason in out


def test_a_manifest_whose_d_is_a_bool_is_refused(run):
    out = _listing(run, lambda m: m.__setitem__("d", True))
    assert "field 'd' must be a positive integer, got True" in out


# ---- every number has a range (data/configs.py, for every config and estimator) -------------
@pytest.mark.parametrize("value, rules, message", [
    (10 ** 20, dict(integer=True), "must be an integer, got 100000000000000000000 (past the range of int64)"),
    (2 ** 63, dict(integer=True, low=0), "(past the range of int64)"),
    (10 ** 400, dict(low=0), "got a number of 401 digits (past the range of int64)"),
    (1e300, dict(), "must be finite, got 1e+300 (past the range of float32)"),
    (-1e39, dict(), "(past the range of float32)"),
    (float("nan"), dict(), "must be finite, got nan"),
    (True, dict(integer=True), "must be an integer, got True (a bool)"),
])
def test_check_number_refuses_past_int64_float32_and_non_numbers(value, rules, message):
    from unsuperpose.data.configs import ConfigError, check_number
    with pytest.raises(ConfigError) as err:
        check_number("x", value, **rules)
    assert err.value.field == "x" and message in err.value.message
    check_number("x", 2 ** 63 - 1, integer=True)  # int64's largest is fine
    check_number("x", 3e38)


@pytest.mark.parametrize("values, field, message", [
    ({"dict_ratio": 1e30}, "dict_ratio", "must be <= 1024 (no dictionary can mean more), got 1e+30"),
    ({"dict_ratio": 1e300}, "dict_ratio", "past the range of float32"),
    ({"n_components": 10 ** 20}, "n_components", "past the range of int64"),
    ({"n_components": 2 ** 25}, "n_components", "must be <= 16777216"),
    ({"methods": "topk"}, "methods", "must be a list of str, got 'topk'"),
    ({"seed": True}, "seed", "must be an integer >= 0, got True (a bool)"),
])
def test_the_sae_stage_config_bounds_its_sizes(values, field, message):
    from unsuperpose.data.configs import ConfigError
    from unsuperpose.sae.config import SAEStageConfig
    with pytest.raises(ConfigError) as err:
        SAEStageConfig.from_dict(values)
    assert err.value.field == field and message in err.value.message


def test_an_iteration_count_no_fit_can_mean_is_refused():
    from unsuperpose.data.configs import ConfigError
    from unsuperpose.sae.base import check_param
    with pytest.raises(ConfigError, match=r"^n_iter: must be <= 1000000 \(no fit can mean "
                                          r"more\), got 10000000000$"):
        check_param("n_iter", 10 ** 10, low=1, integer=True)
    check_param("n_iter", 10 ** 6, low=1, integer=True)
