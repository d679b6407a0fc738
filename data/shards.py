"""Activation shards on disk: safetensors files plus an instance's manifest.json.

A shard holds `h` [rows, d] float32 and the true feature values of the same rows as CSR
(`x_indptr` [rows + 1] int64, `x_indices` [nnz] int64, `x_values` [nnz] float32). The
manifest lists every shard with its rows and sha256, so a reader can refuse a file that was
truncated, swapped or edited. Readers memory-map the tensors (the safetensors layout is an
8-byte header length, a JSON header, then raw little-endian arrays), so no shard is copied
into memory until its rows are used.
"""
from __future__ import annotations

import hashlib
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


# ---- deterministic bytes -------------------------------------------------------------------
def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of `tensors` (torch or numpy) + `metadata`, byte for byte a
    function of them, so a sha256 comparison across runs means something.

    safetensors writes the metadata in a hash map's order, which changes from call to call;
    here the JSON header is rewritten with sorted keys (and padded to 8 bytes, as safetensors
    pads it). The data section, and so every offset in the header, is unchanged."""
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if all(isinstance(t, np.ndarray) for t in tensors.values()):
        from safetensors.numpy import save
    else:
        from safetensors.torch import save
    raw = save(tensors, metadata=meta)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


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
    if not isinstance(header, dict):
        raise ShardError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def _tensor_layout(path: Path, name: str, info, data_bytes: int) -> tuple[np.dtype, tuple, int, int]:
    """(dtype, shape, begin, end) of one header entry, after checking that its byte range
    is exactly shape x dtype and lies inside the data section."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ShardError(f"{path}: tensor {name!r}: header entry lacks dtype/shape/data_offsets")
    if info["dtype"] not in _ST_DTYPES:
        raise ShardError(f"{path}: tensor {name!r}: unsupported dtype {info['dtype']!r}")
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    shape, offsets = info["shape"], info["data_offsets"]
    if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)):
        raise ShardError(f"{path}: tensor {name!r}: malformed shape {shape!r} or "
                         f"data_offsets {offsets!r}")
    begin, end = offsets
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end or end - begin != expected:
        raise ShardError(f"{path}: tensor {name!r}: data_offsets {offsets} hold {end - begin} "
                         f"bytes, shape {shape} x {dtype} needs {expected}")
    if end > data_bytes:
        raise ShardError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data, "
                         f"which has {data_bytes} bytes")
    return dtype, tuple(shape), begin, end


def mmap_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only numpy views, no copy).

    Every tensor's byte range is checked against its shape and dtype, the file's size and the
    other tensors' ranges (no overlaps), so a damaged header is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    header, start = _read_header(path)
    data_bytes = path.stat().st_size - start
    layouts = {name: _tensor_layout(path, name, info, data_bytes)
               for name, info in header.items() if name != "__metadata__"}
    spans = sorted((b, e, name) for name, (_, _, b, e) in layouts.items() if e > b)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ShardError(f"{path}: tensors {first!r} and {second!r} overlap in the file")
    out = {}
    for name, (dtype, shape, begin, end) in layouts.items():
        if end == begin:
            out[name] = np.zeros(shape, dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return out


def read_checked(path: str | os.PathLike, spec: dict[str, tuple[str, tuple]]) -> dict[str, np.ndarray]:
    """A safetensors file whose keys, dtypes and shapes must match `spec`
    ({key: (dtype, shape)}, a shape entry None for any size); errors name the file and key."""
    path = Path(path)
    tensors = mmap_safetensors(path)
    for key, (dtype, shape) in spec.items():
        if key not in tensors:
            raise ShardError(f"{path}: missing tensor {key!r} (holds {sorted(tensors)})")
        t = tensors[key]
        if t.dtype != np.dtype(dtype):
            raise ShardError(f"{path}: tensor {key!r} is {t.dtype}, expected {dtype}")
        if len(t.shape) != len(shape) or any(s is not None and s != a for s, a in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ShardError(f"{path}: tensor {key!r} has shape {list(t.shape)}, expected {want}")
    return tensors


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
SPLITS = ("train", "heldout")  # train: what `sae` fits; heldout: what `evaluate` scores
NONFINITE_POLICIES = ("error", "drop")


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
        entry = write_shard(self.dir / self.subdir / name, h[:rows].numpy(), dense_to_csr(x[:rows]))
        self.entries.append({"file": f"{self.subdir}/{name}", **entry})

    def finish(self) -> list[dict]:
        """Flush the remainder; returns the manifest entries of the shards written."""
        if self._pending:
            self._flush(self._pending)
        return self.entries

    def close(self, **manifest_fields) -> dict:
        """Flush the remainder and write manifest.json; returns the manifest."""
        return write_manifest(self.dir, self.d, self.n_features, self.finish(), **manifest_fields)


def write_manifest(instance_dir: str | os.PathLike, d: int, n_features: int, shards: list[dict],
                   heldout: list[dict] | None = None, **fields) -> dict:
    """manifest.json: the training shards, the held-out shards (when given) and `fields`
    (e.g. `files`: {name: {bytes, sha256}} of the ground truth and model)."""
    manifest = {"format_version": files.FORMAT_VERSION,
                "rows": sum(e["rows"] for e in shards), "d": d, "n_features": n_features,
                "dtypes": SHARD_DTYPES, "shards": shards}
    if heldout is not None:
        manifest["heldout"] = {"rows": sum(e["rows"] for e in heldout), "shards": heldout}
    manifest.update(fields)
    files.atomic_write_json(Path(instance_dir) / files.MANIFEST_FILE, manifest)
    return manifest


def file_entry(path: str | os.PathLike) -> dict:
    """{bytes, sha256} of a file, as the manifest lists it."""
    return {"bytes": Path(path).stat().st_size, "sha256": files.sha256_file(path)}


def _check_entries(path: Path, instance: Path, entries, where: str) -> None:
    if not isinstance(entries, list):
        raise ShardError(f"{path}: {where} must be a list of shard entries")
    root = instance.resolve()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ShardError(f"{path}: {where}[{i}] is not an object")
        for key, kind in (("file", str), ("rows", int), ("bytes", int), ("sha256", str)):
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                raise ShardError(f"{path}: {where}[{i}] lacks {key!r} (a {kind.__name__})")
        target = (instance / entry["file"]).resolve()
        if Path(entry["file"]).is_absolute() or root not in target.parents:
            raise ShardError(f"{path}: {where}[{i}] file {entry['file']!r} points outside "
                             f"the instance folder {instance}")


def read_manifest(instance_dir: str | os.PathLike) -> dict:
    """Load and check manifest.json of one instance: its fields, types and shard paths."""
    instance = Path(instance_dir)
    path = instance / files.MANIFEST_FILE
    if not instance.is_dir():
        raise FileNotFoundError(f"{instance_dir}: instance folder not found")
    try:
        manifest = files.read_json(path)
    except ValueError as err:
        raise ShardError(str(err)) from None
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: not a JSON object")
    for key in ("rows", "d", "n_features", "shards"):
        if key not in manifest:
            raise ShardError(f"{path}: missing field {key!r}")
    for key in ("rows", "d", "n_features"):
        if not isinstance(manifest[key], int) or manifest[key] < (0 if key == "rows" else 1):
            raise ShardError(f"{path}: field {key!r} must be a positive integer, got {manifest[key]!r}")
    if manifest.get("format_version") != files.FORMAT_VERSION:
        raise ShardError(f"{path}: format_version {manifest.get('format_version')!r}, "
                         f"this code reads {files.FORMAT_VERSION}")
    _check_entries(path, instance, manifest["shards"], "shards")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise ShardError(f"{path}: shard rows do not add up to rows={manifest['rows']}")
    heldout = manifest.get("heldout")
    if heldout is not None:
        if not isinstance(heldout, dict) or "shards" not in heldout:
            raise ShardError(f"{path}: heldout must be an object with its shards")
        _check_entries(path, instance, heldout["shards"], "heldout.shards")
        if sum(s["rows"] for s in heldout["shards"]) != heldout.get("rows"):
            raise ShardError(f"{path}: heldout shard rows do not add up to "
                             f"heldout.rows={heldout.get('rows')}")
    listed = [e["file"] for split in (manifest["shards"], (heldout or {}).get("shards", []))
              for e in split]
    twice = sorted({f for f in listed if listed.count(f) > 1})
    if twice:
        raise ShardError(f"{path}: {twice[0]} is listed twice (a held-out shard must not be a "
                         f"training shard)")
    if not isinstance(manifest.get("files", {}), dict):
        raise ShardError(f"{path}: files must be an object of {{name: {{bytes, sha256}}}}")
    for name, entry in manifest.get("files", {}).items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int)):
            raise ShardError(f"{path}: files[{name!r}] needs bytes and sha256")
    return manifest


def manifest_checksums(manifest: dict) -> dict[str, str]:
    """sha256 of every training shard and listed file of an instance, by relative path: what
    `sae` records of the inputs it fitted on, and `evaluate` compares with the run's now."""
    out = {e["file"]: e["sha256"] for e in shard_entries(manifest, "train")}
    out.update({name: e["sha256"] for name, e in manifest.get("files", {}).items()})
    return out


def lists_checksums(manifest: dict) -> bool:
    """Whether the manifest lists the ground truth and model with their sha256 (manifests
    written before it did are still read, with a warning: those files are then unchecked)."""
    return {files.GROUND_TRUTH_FILE, files.MODEL_FILE} <= set(manifest.get("files", {}))


def has_heldout(manifest: dict) -> bool:
    return bool(manifest.get("heldout", {}).get("shards"))


def shard_entries(manifest: dict, split: str = "train") -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return manifest["shards"] if split == "train" else manifest.get("heldout", {}).get("shards", [])


def shard_paths(instance_dir: str | os.PathLike, manifest: dict | None = None,
                split: str = "train") -> list[Path]:
    manifest = manifest or read_manifest(instance_dir)
    return [Path(instance_dir) / s["file"] for s in shard_entries(manifest, split)]


def _check_file(path: Path, entry: dict, check_sha256: bool) -> None:
    if not path.is_file():
        raise ShardError(f"{path}: listed in {files.MANIFEST_FILE} but missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(f"{path}: {size} bytes on disk, manifest says {entry['bytes']} "
                         f"(truncated or replaced)")
    if check_sha256 and files.sha256_file(path) != entry["sha256"]:
        raise ShardError(f"{path}: sha256 differs from {files.MANIFEST_FILE}; the file changed")


def verify_files(instance_dir: str | os.PathLike, manifest: dict, names=None,
                 check_sha256: bool = True) -> None:
    """Check the non-shard files the manifest lists (ground truth, model): size and sha256."""
    for name, entry in manifest.get("files", {}).items():
        if names is None or name in names:
            _check_file(Path(instance_dir) / name, entry, check_sha256)


def verify_instance(instance_dir: str | os.PathLike, check_sha256: bool = True,
                    splits: tuple[str, ...] = SPLITS, check_files: bool = True) -> dict:
    """Check every shard of `splits` against the manifest (existence, size, sha256, shapes),
    that no shard on disk is missing from it, and (check_files) the other files it lists;
    returns it. The checked readers of data.instance_files check their own file."""
    instance = Path(instance_dir)
    manifest = read_manifest(instance)
    listed = {(instance / e["file"]).resolve() for split in SPLITS for e in shard_entries(manifest, split)}
    for folder in (files.activations_dir(instance), files.heldout_dir(instance)):
        for extra in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            if extra.resolve() not in listed:
                raise ShardError(f"{extra}: a shard on disk that {instance / files.MANIFEST_FILE} "
                                 f"does not list; rerun `generate`")
    for split in splits:
        for entry in shard_entries(manifest, split):
            path = instance / entry["file"]
            _check_file(path, entry, check_sha256)
            tensors = read_shard(path, d=manifest["d"])
            if tensors[files.H].shape[0] != entry["rows"]:
                raise ShardError(f"{path}: holds {tensors[files.H].shape[0]} rows, manifest says "
                                 f"{entry['rows']}")
    if check_files:
        verify_files(instance, manifest, check_sha256=check_sha256)
    return manifest


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


# ---- which rows to use -------------------------------------------------------------------------
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
