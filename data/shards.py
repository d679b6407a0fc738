"""Activation shards on disk: safetensors files plus an instance's manifest.json.

A shard holds `h` [rows, d] float32 and the true feature values of the same rows as CSR
(`x_indptr` [rows + 1] int64, `x_indices` [nnz] int64, `x_values` [nnz] float32). The
manifest lists every shard with its rows and sha256, so a reader can refuse a file that was
truncated, swapped or edited. Readers memory-map the tensors (the safetensors layout is an
8-byte header length, a JSON header, then raw little-endian arrays), so no shard is copied
into memory until its rows are used.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from data import files

SHARD_DTYPES = {files.H: "float32", files.X_INDPTR: "int64", files.X_INDICES: "int64",
                files.X_VALUES: "float32"}
_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "F16": np.float16}


class ShardError(ValueError):
    """A shard or manifest on disk does not match what it should hold."""


# ---- CSR ------------------------------------------------------------------------------------
def dense_to_csr(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: [rows, n_features] -> (indptr [rows+1] int64, indices [nnz] int64, values [nnz] f32)."""
    x = x.detach().to("cpu", torch.float32)
    rows, cols = (x != 0).nonzero(as_tuple=True)  # row-major order, as CSR needs
    counts = torch.bincount(rows, minlength=x.shape[0])
    indptr = torch.zeros(x.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    return indptr.numpy(), cols.numpy().astype(np.int64), x[rows, cols].numpy()


def csr_to_dense(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                 n_features: int) -> np.ndarray:
    """The inverse of `dense_to_csr`: [rows, n_features] float32."""
    rows = len(indptr) - 1
    out = np.zeros((rows, n_features), dtype=np.float32)
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    out[row_of, indices] = values
    return out


# ---- one shard ------------------------------------------------------------------------------
def write_shard(path: str | os.PathLike, h: np.ndarray,
                csr: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry (without the folder)."""
    from safetensors.numpy import save

    indptr, indices, values = csr
    h = np.ascontiguousarray(h, dtype=np.float32)
    if h.ndim != 2 or len(indptr) != h.shape[0] + 1:
        raise ValueError(f"h {h.shape} and x_indptr {indptr.shape} disagree on the number of rows")
    tensors = {files.H: h, files.X_INDPTR: np.ascontiguousarray(indptr, dtype=np.int64),
               files.X_INDICES: np.ascontiguousarray(indices, dtype=np.int64),
               files.X_VALUES: np.ascontiguousarray(values, dtype=np.float32)}
    payload = save(tensors, metadata={"format_version": str(files.FORMAT_VERSION)})
    files.atomic_write_bytes(path, payload)
    import hashlib
    return {"rows": int(h.shape[0]), "nnz": int(len(values)), "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ShardError(f"{path}: truncated ({size} bytes), not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ShardError(f"{path}: truncated: header says {n} header bytes, file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ShardError(f"{path}: corrupt safetensors header") from None
    return header, 8 + n


def mmap_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy views, no copy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    header, start = _read_header(path)
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if start + end > size:
            raise ShardError(f"{path}: truncated: tensor {name!r} ends at byte {start + end}, "
                             f"file has {size} bytes")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end == begin:
            out[name] = np.zeros(shape, dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return out


def read_shard(path: str | os.PathLike, d: int | None = None) -> dict[str, np.ndarray]:
    """Memory-map one shard and check its keys, dtypes and shapes; errors name the file."""
    path = Path(path)
    tensors = mmap_safetensors(path)
    missing = [k for k in files.SHARD_KEYS if k not in tensors]
    if missing:
        raise ShardError(f"{path}: missing tensors {missing}; a shard holds {list(files.SHARD_KEYS)}")
    for key, dtype in SHARD_DTYPES.items():
        if tensors[key].dtype != np.dtype(dtype):
            raise ShardError(f"{path}: {key} is {tensors[key].dtype}, expected {dtype}")
    h, indptr = tensors[files.H], tensors[files.X_INDPTR]
    if h.ndim != 2 or (d is not None and h.shape[1] != d):
        raise ShardError(f"{path}: h has shape {h.shape}, expected [rows, {d}]")
    if indptr.shape != (h.shape[0] + 1,) or len(tensors[files.X_INDICES]) != len(tensors[files.X_VALUES]):
        raise ShardError(f"{path}: CSR arrays do not fit h of {h.shape[0]} rows")
    return tensors


# ---- the manifest ---------------------------------------------------------------------------
class ShardWriter:
    """Cut a stream of (h, x) batches into shards of `rows_per_shard` under `instance_dir`."""

    def __init__(self, instance_dir: str | os.PathLike, d: int, n_features: int,
                 rows_per_shard: int):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
        self.dir = Path(instance_dir)
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
        entry = write_shard(files.activations_dir(self.dir) / name, h[:rows].numpy(),
                            dense_to_csr(x[:rows]))
        self.entries.append({"file": f"{files.ACTIVATIONS_DIR}/{name}", **entry})

    def close(self, **manifest_fields) -> dict:
        """Flush the remainder and write manifest.json; returns the manifest."""
        if self._pending:
            self._flush(self._pending)
        manifest = {
            "format_version": files.FORMAT_VERSION,
            "rows": sum(e["rows"] for e in self.entries),
            "d": self.d,
            "n_features": self.n_features,
            "dtypes": SHARD_DTYPES,
            "shards": self.entries,
            **manifest_fields,
        }
        files.atomic_write_json(self.dir / files.MANIFEST_FILE, manifest)
        return manifest


def read_manifest(instance_dir: str | os.PathLike) -> dict:
    """Load and sanity-check manifest.json of one instance."""
    path = Path(instance_dir) / files.MANIFEST_FILE
    if not Path(instance_dir).is_dir():
        raise FileNotFoundError(f"{instance_dir}: instance folder not found")
    manifest = files.read_json(path)
    for key in ("rows", "d", "n_features", "shards"):
        if key not in manifest:
            raise ShardError(f"{path}: missing field {key!r}")
    if manifest.get("format_version") != files.FORMAT_VERSION:
        raise ShardError(f"{path}: format_version {manifest.get('format_version')!r}, "
                         f"this code reads {files.FORMAT_VERSION}")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise ShardError(f"{path}: shard rows do not add up to rows={manifest['rows']}")
    return manifest


def shard_paths(instance_dir: str | os.PathLike, manifest: dict | None = None) -> list[Path]:
    manifest = manifest or read_manifest(instance_dir)
    return [Path(instance_dir) / s["file"] for s in manifest["shards"]]


def verify_instance(instance_dir: str | os.PathLike, check_sha256: bool = True) -> dict:
    """Check every shard against the manifest (existence, size, sha256, shapes); returns it."""
    manifest = read_manifest(instance_dir)
    for entry, path in zip(manifest["shards"], shard_paths(instance_dir, manifest)):
        if not path.is_file():
            raise ShardError(f"{path}: listed in {files.MANIFEST_FILE} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ShardError(f"{path}: {size} bytes on disk, manifest says {entry['bytes']} "
                             f"(truncated or replaced)")
        if check_sha256 and files.sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {files.MANIFEST_FILE}; the file changed")
        tensors = read_shard(path, d=manifest["d"])
        if tensors[files.H].shape[0] != entry["rows"]:
            raise ShardError(f"{path}: holds {tensors[files.H].shape[0]} rows, manifest says "
                             f"{entry['rows']}")
    return manifest


def iter_shards(instance_dir: str | os.PathLike, verify: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """The direct read: each shard's tensors (memory-mapped), in order."""
    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    for path in shard_paths(instance_dir, manifest):
        yield read_shard(path, d=manifest["d"])


def read_all(instance_dir: str | os.PathLike, with_x: bool = False,
             verify: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Every row of an instance in memory: h [rows, d] and optionally dense x [rows, n]."""
    manifest = verify_instance(instance_dir) if verify else read_manifest(instance_dir)
    hs, xs = [], []
    for t in iter_shards(instance_dir, verify=False):
        hs.append(np.asarray(t[files.H]))
        if with_x:
            xs.append(csr_to_dense(t[files.X_INDPTR], t[files.X_INDICES], t[files.X_VALUES],
                                   manifest["n_features"]))
    return np.concatenate(hs), (np.concatenate(xs) if with_x else None)
