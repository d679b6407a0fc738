"""Writing an instance's shards: `ShardWriter` cuts a stream of (h, x) batches into shards
(data/shards.py) and, on `close`, writes the manifest that lists them (data/manifest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from unsuperpose.data import files, shards  # shards.write_shard looked up when called: tests stub it
from unsuperpose.data.manifest import write_manifest


class ShardWriter:
    """Cut a stream of (h, x) batches into shards of `rows_per_shard` under
    `instance_dir/<subdir>` (activations/ for the training split, heldout/ for the other)."""

    def __init__(self, instance_dir: str | os.PathLike, d: int, n_features: int,
                 rows_per_shard: int, subdir: str = files.ACTIVATIONS_DIR):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.dir = Path(instance_dir)
        self.subdir = subdir
        self.d, self.n_features, self.rows_per_shard = d, n_features, rows_per_shard
        self.entries: list[dict] = []
        self._h: list[torch.Tensor] = []
        self._x: list[torch.Tensor] = []
        self._pending = 0

    def add(self, h: torch.Tensor, x: torch.Tensor) -> None:
        """h: [rows, d], x: [rows, n_features] (dense, any device)."""
        self._h.append(h.detach().to("cpu", torch.float32))
        self._x.append(x.detach().to("cpu", torch.float32))
        self._pending += h.shape[0]
        while self._pending >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, rows: int) -> None:
        h, x = torch.cat(self._h), torch.cat(self._x)
        self._h, self._x = [h[rows:]], [x[rows:]]
        self._pending -= rows
        name = files.shard_name(len(self.entries))
        entry = shards.write_shard(self.dir / self.subdir / name, h[:rows].numpy(),
                                   shards.dense_to_csr(x[:rows]))
        self.entries.append({"file": f"{self.subdir}/{name}", **entry})

    def finish(self) -> list[dict]:
        """Flush the remainder; returns the manifest entries of the shards written."""
        if self._pending:
            self._flush(self._pending)
        return self.entries

    def close(self, **manifest_fields) -> dict:
        """Flush the remainder and write manifest.json; returns the manifest."""
        return write_manifest(self.dir, self.d, self.n_features, self.finish(), **manifest_fields)
