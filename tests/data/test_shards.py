"""Shards on disk: round trips, the manifest's checks, and errors that name the file."""
import json

import numpy as np
import pytest
import torch

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError
from unsuperpose.data.manifest import verify_instance
from unsuperpose.data.rows import read_all
from unsuperpose.data.shard_writer import ShardWriter
from unsuperpose.data.shards import csr_to_dense, dense_to_csr, read_shard, write_shard
from unsuperpose.data.staging import StagingDir


def _rows(n=1000, d=6, n_features=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, n_features), generator=gen) * (torch.rand((n, n_features), generator=gen) < 0.2)
    return torch.randn((n, d), generator=gen), x


def test_csr_round_trip_is_exact():
    _, x = _rows()
    indptr, indices, values = dense_to_csr(x)
    assert indptr[-1] == (x != 0).sum()
    assert np.array_equal(csr_to_dense(indptr, indices, values, x.shape[1]), x.numpy())


def test_shard_round_trip(tmp_path):
    h, x = _rows()
    entry = write_shard(tmp_path / "s.safetensors", h.numpy(), dense_to_csr(x))
    t = read_shard(tmp_path / "s.safetensors", d=6)
    assert entry["rows"] == 1000 and entry["sha256"] == files.sha256_file(tmp_path / "s.safetensors")
    assert np.array_equal(t[files.H], h.numpy())
    assert np.array_equal(csr_to_dense(t[files.X_INDPTR], t[files.X_INDICES], t[files.X_VALUES], 9),
                          x.numpy())


def test_writer_cuts_shards_and_keeps_every_row_in_order(tmp_path):
    h, x = _rows(1000)
    writer = ShardWriter(tmp_path, d=6, n_features=9, rows_per_shard=300)
    for lo in range(0, 1000, 170):  # batches that straddle shard boundaries
        writer.add(h[lo:lo + 170], x[lo:lo + 170])
    manifest = writer.close(instance_id="t")
    assert [s["rows"] for s in manifest["shards"]] == [300, 300, 300, 100]
    h_back, x_back = read_all(tmp_path, with_x=True)
    assert np.array_equal(h_back, h.numpy()) and np.array_equal(x_back, x.numpy())


@pytest.fixture
def instance(tmp_path):
    h, x = _rows(600)
    writer = ShardWriter(tmp_path, d=6, n_features=9, rows_per_shard=250)
    writer.add(h, x)
    writer.close()
    return tmp_path


def test_truncated_shard_is_refused_naming_the_file(instance):
    path = instance / "activations" / "shard-00001.safetensors"
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ShardError, match=r"shard-00001\.safetensors: .*bytes on disk.*truncated"):
        verify_instance(instance)
    with pytest.raises(ShardError, match=r"shard-00001\.safetensors: truncated"):
        read_shard(path)


def test_changed_shard_fails_the_sha256_check(instance):
    path = instance / "activations" / "shard-00000.safetensors"
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF
    path.write_bytes(bytes(payload))
    with pytest.raises(ShardError, match=r"shard-00000\.safetensors: sha256 differs"):
        verify_instance(instance)


def test_manifest_whose_shape_disagrees_is_refused(instance):
    manifest_path = instance / files.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["d"] = 7
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError,
                       match=r"shard-00000\.safetensors: h has shape \(250, 6\), expected \[rows, 7\]"):
        verify_instance(instance)
    manifest["d"] = 6
    manifest["rows"] = 601
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"manifest\.json: shard rows do not add up to rows=601"):
        verify_instance(instance)


def test_missing_shard_and_missing_folder_are_named(instance, tmp_path):
    (instance / "activations" / "shard-00002.safetensors").unlink()
    with pytest.raises(ShardError, match=r"shard-00002\.safetensors: listed in manifest\.json but missing"):
        verify_instance(instance)
    with pytest.raises(FileNotFoundError, match="nowhere: instance folder not found"):
        verify_instance(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"generate/instances: no generated instances"):
        files.list_instances(tmp_path / "no-run")


def test_staging_dir_keeps_the_old_folder_when_the_work_fails(tmp_path):
    final = tmp_path / "out"
    with StagingDir(final) as stage:
        (stage / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt):
        with StagingDir(final) as stage:
            (stage / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
