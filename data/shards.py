"""Activation shards on disk: one safetensors file of rows each.

A shard holds `h` [rows, d] float32 and the true feature values of the same rows as CSR
(`x_indptr` [rows + 1] int64, `x_indices` [nnz] int64, `x_values` [nnz] float32). Readers
memory-map the tensors (data/safetensors_io.py), so no shard is copied into memory until its
rows are used. The instance's manifest (data/manifest.py) lists every shard with its sha256;
data/shard_writer.py cuts a stream of rows into shards and writes that manifest.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads in dense_to_csr, not with a config that names a policy here
    import torch

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError
from unsuperpose.data.safetensors_io import mmap_safetensors, safetensors_bytes

SHARD_DTYPES = {files.H: "float32", files.X_INDPTR: "int64", files.X_INDICES: "int64",
                files.X_VALUES: "float32"}


# ---- CSR ------------------------------------------------------------------------------------
def dense_to_csr(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: [rows, n_features] -> (indptr [rows+1] int64, indices [nnz] int64, values [nnz] f32)."""
    import torch

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
    indptr, indices, values = csr
    h = np.ascontiguousarray(h, dtype=np.float32)
    if h.ndim != 2 or len(indptr) != h.shape[0] + 1:
        raise ValueError(f"h {h.shape} and x_indptr {indptr.shape} disagree on the number of rows")
    tensors = {files.H: h, files.X_INDPTR: np.ascontiguousarray(indptr, dtype=np.int64),
               files.X_INDICES: np.ascontiguousarray(indices, dtype=np.int64),
               files.X_VALUES: np.ascontiguousarray(values, dtype=np.float32)}
    payload = safetensors_bytes(tensors, {"format_version": str(files.FORMAT_VERSION)})
    files.atomic_write_bytes(path, payload)
    return {"rows": int(h.shape[0]), "nnz": int(len(values)), "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}


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
