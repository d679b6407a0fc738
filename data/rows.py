"""Which rows of an instance a stage uses: read shard by shard, never the instance whole;
zero rows left out on request; a row holding NaN or inf an error naming its shard and row, or
dropped and counted."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError
from unsuperpose.data.manifest import read_manifest, shard_entries, shard_paths, verify_instance
from unsuperpose.data.shards import csr_to_dense, read_shard

NONFINITE_POLICIES = ("error", "drop")


def iter_shards(instance_dir: str | os.PathLike, verify: bool = True,
                split: str = "train") -> Iterator[dict[str, np.ndarray]]:
    """The direct read: each shard's tensors (memory-mapped), in order."""
    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    for path in shard_paths(instance_dir, manifest, split):
        yield read_shard(path, d=manifest["d"])


def read_all(instance_dir: str | os.PathLike, with_x: bool = False,
             verify: bool = True, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """Every row of an instance's split in memory: h [rows, d] and optionally dense x [rows, n]."""
    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    hs, xs = [np.zeros((0, manifest["d"]), np.float32)], [np.zeros((0, manifest["n_features"]), np.float32)]
    for t in iter_shards(instance_dir, verify=False, split=split):
        hs.append(np.asarray(t[files.H]))
        if with_x:
            xs.append(csr_to_dense(t[files.X_INDPTR], t[files.X_INDICES], t[files.X_VALUES],
                                   manifest["n_features"]))
    return np.concatenate(hs), (np.concatenate(xs) if with_x else None)


ROW_CHUNK = 65536


def usable_rows(path: Path, h: np.ndarray, drop_zero_rows: bool, on_nonfinite: str,
                need: int | None = None) -> tuple[np.ndarray, int]:
    """(mask of the rows of one shard to use [rows] bool, how many non-finite rows it dropped).

    A row with NaN or inf is an error naming the shard and the row (on_nonfinite="error"), or
    left out and counted ("drop"); it is never mistaken for a zero row. Reads in chunks, so
    the shard's pages are touched once. With `need`, reading stops at the need-th usable row:
    the rows after it are neither used (False in the mask) nor checked nor counted."""
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {on_nonfinite!r}")
    keep = np.zeros(len(h), dtype=bool)
    have = dropped = 0
    for lo in range(0, len(h), ROW_CHUNK):
        block = np.asarray(h[lo:lo + ROW_CHUNK])
        finite = np.isfinite(block).all(axis=1)
        mask = finite.copy()
        if drop_zero_rows:
            mask &= np.abs(np.where(finite[:, None], block, 0)).max(axis=1, initial=0) > 0
        end = len(block)
        if need is not None and have + mask.sum() >= need:  # stop at the need-th usable row
            end = int(np.flatnonzero(mask)[need - have - 1]) + 1
        bad = np.flatnonzero(~finite[:end])
        if len(bad) and on_nonfinite == "error":
            total = int((~np.isfinite(np.asarray(h))).any(axis=1).sum())
            raise ShardError(f"{path}: row {lo + int(bad[0])} holds NaN or inf ({total} such "
                             f"rows in this shard); pass --on-nonfinite drop to leave them out")
        dropped += len(bad)
        keep[lo:lo + end] = mask[:end]
        have += int(mask[:end].sum())
        if need is not None and have >= need:
            break
    return keep, dropped


def shard_masks(instance_dir: str | os.PathLike, manifest: dict, split: str, drop_zero_rows: bool,
                on_nonfinite: str) -> tuple[list[tuple[dict, np.ndarray]], dict[str, int]]:
    """Every shard of a split with the mask of its usable rows ([(manifest entry, mask [rows]
    bool)], in order), and {shard file: non-finite rows dropped} for the shards that had any;
    one shard in memory at a time."""
    masks, dropped = [], {}
    for entry in shard_entries(manifest, split):
        path = Path(instance_dir) / entry["file"]
        mask, bad = usable_rows(path, read_shard(path, d=manifest["d"])[files.H], drop_zero_rows,
                                on_nonfinite)
        masks.append((entry, mask))
        if bad:
            dropped[entry["file"]] = bad
    return masks, dropped


def take_rows(instance_dir: str | os.PathLike, manifest: dict, max_rows: int | None,
              drop_zero_rows: bool = True, on_nonfinite: str = "error",
              split: str = "train") -> tuple[np.ndarray, dict[str, int]]:
    """The first `max_rows` usable rows of a split, in file order, read shard by shard
    (only the rows kept are copied; no instance is concatenated whole).

    Returns (H [rows, d] float32, {shard file: non-finite rows dropped} for shards that had any).
    """
    d = manifest["d"]
    out, dropped, have = [np.zeros((0, d), np.float32)], {}, 0
    for entry in shard_entries(manifest, split):
        if max_rows is not None and have >= max_rows:
            break
        path = Path(instance_dir) / entry["file"]
        h = read_shard(path, d=d)[files.H]
        keep, n_bad = usable_rows(path, h, drop_zero_rows, on_nonfinite,
                                  None if max_rows is None else max_rows - have)
        rows = np.flatnonzero(keep)
        if n_bad:
            dropped[entry["file"]] = n_bad
        out.append(np.asarray(h[rows], dtype=np.float32))
        have += len(rows)
        del h
    return np.concatenate(out), dropped
