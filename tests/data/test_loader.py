"""The `datasets` views yield exactly the rows on disk."""
import datasets
import numpy as np
import torch

from unsuperpose.data import files
from unsuperpose.data.loader import iter_batches, load_activations, stream_activations
from unsuperpose.data.rows import read_all


def _first_instance(run_dir):
    return files.instance_dir(run_dir, files.list_instances(run_dir)[0])


def test_dataset_yields_every_row_in_order_with_x(tiny_run):
    inst = _first_instance(tiny_run)
    h, x = read_all(inst, with_x=True)
    ds = load_activations(inst, with_x=True)
    assert isinstance(ds, datasets.Dataset) and len(ds) == len(h) == 5000
    batches = list(ds.iter(batch_size=1024))
    assert isinstance(batches[0][files.H], torch.Tensor)
    assert batches[0][files.H].shape == (1024, 4) and batches[0][files.X_DENSE].shape == (1024, 12)
    assert np.array_equal(torch.cat([b[files.H] for b in batches]).numpy(), h)
    assert np.array_equal(torch.cat([b[files.X_DENSE] for b in batches]).numpy(), x)
    assert np.array_equal(ds[1234][files.H].numpy(), h[1234])


def test_streaming_dataset_yields_every_row_in_order_one_shard_at_a_time(tiny_run):
    inst = _first_instance(tiny_run)
    h, x = read_all(inst, with_x=True)
    stream = stream_activations(inst, with_x=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert stream.num_shards == 3  # 5000 rows in shards of 2000
    got = list(stream.iter(batch_size=700))
    assert np.array_equal(torch.cat([b[files.H] for b in got]).numpy(), h)
    assert np.array_equal(torch.cat([b[files.X_DENSE] for b in got]).numpy(), x)


def test_shuffled_stream_is_a_permutation_of_the_rows(tiny_run):
    inst = _first_instance(tiny_run)
    h, _ = read_all(inst)
    shuffled = stream_activations(inst).shuffle(seed=0, buffer_size=1000)
    got = torch.cat([b[files.H] for b in shuffled.iter(batch_size=500)]).numpy()
    assert not np.array_equal(got, h)
    assert np.array_equal(np.sort(got, axis=0), np.sort(h, axis=0))


def test_fast_batches_equal_the_torch_formatted_ones(tiny_run):
    inst = _first_instance(tiny_run)
    h, _ = read_all(inst)
    for ds in (load_activations(inst), stream_activations(inst)):
        got = torch.cat(list(iter_batches(ds, 999)))
        assert got.dtype == torch.float32 and np.array_equal(got.numpy(), h)
    sliced = load_activations(inst).select(range(100, 300))
    assert np.array_equal(torch.cat(list(iter_batches(sliced, 64))).numpy(), h[100:300])
