"""Hugging Face `datasets` views of an instance's activation shards.

Both views are built from Arrow arrays made zero-copy over the memory-mapped shard tensors,
so rows are read from the page cache only when used:

- `load_activations` -> `datasets.Dataset` (random access, `.shuffle`, `.iter(batch_size)`)
- `stream_activations` -> `datasets.IterableDataset`, one shard per Arrow table, the shard
  list as its `num_shards` so `.shuffle(buffer_size=...)`, `.shard`, and a torch DataLoader
  with several workers split the shards between them. It never holds more than one shard.

Both are torch-formatted: `h` comes as a [batch, d] float32 tensor; with `with_x=True` the
dense true feature values `x` [batch, n_features] come too (built per shard from the CSR).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from unsuperpose.data import files
from unsuperpose.data.manifest import read_manifest, shard_paths, verify_instance
from unsuperpose.data.rows import usable_rows
from unsuperpose.data.shards import csr_to_dense, read_shard


def _features(d: int, n_features: int, with_x: bool):
    import datasets

    feats = {files.H: datasets.Sequence(datasets.Value("float32"), length=d)}
    if with_x:
        feats[files.X_DENSE] = datasets.Sequence(datasets.Value("float32"), length=n_features)
    return datasets.Features(feats)


def _fixed_size(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """[rows, k] float32 -> Arrow fixed-size lists over the same memory (no copy)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _shard_table(path: Path, d: int, n_features: int, with_x: bool,
                 rows: RowFilter | None = None) -> pa.Table:
    tensors = read_shard(path, d=d)
    h = tensors[files.H]
    keep = None
    if rows is not None:
        mask, _ = usable_rows(path, h, rows.drop_zero_rows, rows.on_nonfinite)
        if not mask.all():
            keep = np.flatnonzero(mask)
            h = np.asarray(h[keep])
    columns = {files.H: _fixed_size(h)}
    if with_x:
        x = csr_to_dense(tensors[files.X_INDPTR], tensors[files.X_INDICES],
                         tensors[files.X_VALUES], n_features)
        columns[files.X_DENSE] = _fixed_size(x if keep is None else x[keep])
    return pa.table(columns)


@dataclass(frozen=True)
class RowFilter:
    """Which rows a view yields: without the all-zero rows (no feature fired), and what to do
    with a row holding NaN or inf ("error": an error naming the shard and row; "drop")."""

    drop_zero_rows: bool = True
    on_nonfinite: str = "error"


def load_activations(instance_dir: str | os.PathLike, with_x: bool = False,
                     verify: bool = True):
    """All shards of one instance as a torch-formatted `datasets.Dataset`, rows in order.

    with_x materialises dense x [rows, n_features] in memory; h stays memory-mapped.
    """
    import datasets
    from datasets.table import InMemoryTable

    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    d, n = manifest["d"], manifest["n_features"]
    paths = shard_paths(instance_dir, manifest)
    if not paths:
        raise ValueError(f"{Path(instance_dir) / files.MANIFEST_FILE}: lists no shards")
    table = pa.concat_tables([_shard_table(p, d, n, with_x) for p in paths])
    info = datasets.DatasetInfo(features=_features(d, n, with_x),
                                description=f"activations of {instance_dir}")
    return datasets.Dataset(InMemoryTable(table), info=info).with_format("torch")


def stream_activations(instance_dir: str | os.PathLike, with_x: bool = False,
                       verify: bool = True, rows: RowFilter | None = None,
                       shuffle_seed: int | None = None):
    """A torch-formatted streaming `datasets.IterableDataset` over the shards, in order
    (the training split; `rows` leaves out zero and non-finite rows per shard).

    shuffle_seed: each pass over the stream visits the shards in a new order and the rows of
    each shard in a new order, drawn from (seed, pass). Rows are drawn i.i.d. by `generate`,
    so this mixes as well as a global shuffle, at the memory of one shard; `datasets`' own
    `.shuffle(buffer_size=...)` holds its buffer as Python rows (~0.5 GB at 8192 rows)."""
    import datasets
    from datasets.iterable_dataset import ArrowExamplesIterable, IterableDataset

    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    d, n = manifest["d"], manifest["n_features"]
    paths = [str(p) for p in shard_paths(instance_dir, manifest)]
    if not paths:
        raise ValueError(f"{Path(instance_dir) / files.MANIFEST_FILE}: lists no shards")

    passes = itertools.count()

    def tables(shard_paths: list[str]):
        # `shard_paths` is a list so that datasets splits it between workers (num_shards)
        rng = None if shuffle_seed is None else np.random.default_rng([shuffle_seed, next(passes)])
        order = range(len(shard_paths)) if rng is None else rng.permutation(len(shard_paths))
        for i in order:
            table = _shard_table(Path(shard_paths[i]), d, n, with_x, rows)
            if rng is not None:
                table = table.take(rng.permutation(table.num_rows))
            yield shard_paths[i], table

    info = datasets.DatasetInfo(features=_features(d, n, with_x))
    iterable = ArrowExamplesIterable(tables, kwargs={"shard_paths": paths})
    return IterableDataset(iterable, info=info).with_format("torch")


def iter_batches(dataset, batch_size: int, column: str = files.H):
    """Yield [batch, width] float32 tensors of one column of a `load_activations` or
    `stream_activations` dataset through the Arrow format, which skips the per-batch
    conversion that torch formatting costs (~50x faster here; see benchmarks/bench_loader.py).

    Honors the dataset's shuffling/sharding, since it iterates the dataset itself.
    """
    import torch

    for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
        col = batch[column]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        width = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)  # respects slicing offsets
        yield torch.from_numpy(np.array(flat, dtype=np.float32).reshape(-1, width))
