"""Checked readers of one instance's ground truth and model weights.

Both files are listed in the instance's manifest with their size and sha256; each reader
checks those first, then every key, dtype and shape against the manifest's n_features and
d, so one flipped byte or a file from another run is an error naming the file and the key
instead of a silently different score.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError
from unsuperpose.data.manifest import verify_files
from unsuperpose.data.safetensors_io import read_checked

# key -> dtype; "gt" entries have one row per true direction (n or 2n of them), "n" per feature
_GT_KEYS = {
    files.GT_DIRECTIONS: ("float32", "gt"), files.GT_FEATURE_INDEX: ("int64", "gt"),
    files.GT_SIGN: ("int8", "gt"), files.GT_REPRESENTED: ("bool", "gt"),
    files.GT_DIMENSIONALITY: ("float32", "gt"), files.GT_NORMS: ("float32", "gt"),
    files.GT_IMPORTANCE: ("float32", "n"), files.GT_PROBABILITY: ("float32", "n"),
}


def _listed_file(instance_dir: str | os.PathLike, manifest: dict, name: str) -> Path:
    """The path of `name` in the instance, after checking it against the manifest."""
    path = Path(instance_dir) / name
    if not path.is_file():
        raise ShardError(f"{path}: missing; rerun `generate`")
    verify_files(instance_dir, manifest, names=(name,))
    return path


def read_ground_truth(instance_dir: str | os.PathLike, manifest: dict) -> dict[str, np.ndarray]:
    """ground_truth.safetensors of one instance, checked; arrays copied into memory."""
    path = _listed_file(instance_dir, manifest, files.GROUND_TRUTH_FILE)
    n, d = manifest["n_features"], manifest["d"]
    raw = read_checked(path, {files.GT_DIRECTIONS: ("float32", (None, d))})
    n_gt = raw[files.GT_DIRECTIONS].shape[0]
    if n_gt not in (n, 2 * n):
        raise ShardError(f"{path}: tensor {files.GT_DIRECTIONS!r} has {n_gt} rows; with "
                         f"n_features={n} in the manifest it must have {n} or {2 * n}")
    spec = {key: (dtype, (n_gt, d) if key == files.GT_DIRECTIONS else (n_gt if rows == "gt" else n,))
            for key, (dtype, rows) in _GT_KEYS.items()}
    gt = {k: np.array(v) for k, v in read_checked(path, spec).items() if k in spec}
    index = gt[files.GT_FEATURE_INDEX]
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise ShardError(f"{path}: tensor {files.GT_FEATURE_INDEX!r} holds values outside "
                         f"[0, {n}); n_features={n} in the manifest")
    if not np.isfinite(gt[files.GT_DIRECTIONS]).all():
        raise ShardError(f"{path}: tensor {files.GT_DIRECTIONS!r} holds NaN or inf")
    return gt


def read_model(instance_dir: str | os.PathLike, manifest: dict) -> dict[str, np.ndarray]:
    """model.safetensors of one instance, checked: W [d, n] always; b_final [n] when present."""
    path = _listed_file(instance_dir, manifest, files.MODEL_FILE)
    n, d = manifest["n_features"], manifest["d"]
    spec = {files.MODEL_W: ("float32", (d, n))}
    tensors = read_checked(path, spec)
    if files.MODEL_B_FINAL in tensors:
        spec[files.MODEL_B_FINAL] = ("float32", (n,))
        tensors = read_checked(path, spec)
    return {k: np.array(v) for k, v in tensors.items()}
