"""Safetensors files, read and written by hand where it matters for trust.

The layout is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
data_offsets}, "__metadata__": {...}}), then the raw arrays. The reader memory-maps every
tensor after checking each byte range against its shape and dtype, the file size and the other
tensors' ranges; the writer sorts the header so that the same tensors give the same bytes.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from unsuperpose.data.errors import ShardError

_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "F16": np.float16}


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
