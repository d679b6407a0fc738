"""An instance's manifest.json: what it lists (the training and held-out shards with rows,
bytes and sha256; the ground truth and model with bytes and sha256; d, n_features, dtypes,
distribution, seed) and the checks every reader makes against it."""
from __future__ import annotations

import os
from pathlib import Path

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError
from unsuperpose.data.shards import SHARD_DTYPES, read_shard

SPLITS = ("train", "heldout")  # train: what `sae` fits; heldout: what `evaluate` scores


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


def _unusable(name: str) -> str | None:
    """Why a shard entry's file name cannot be a path inside the instance, or None."""
    if not name.strip():
        return "is empty"
    if "\0" in name:
        return "holds a NUL byte"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if os.path.isabs(name):
        return "is an absolute path"
    return None


def _check_entries(path: Path, instance: Path, entries, where: str,
                   seen: dict[Path, str]) -> None:
    """Each entry's keys and types, and its file: a usable relative name that resolves (links
    and `..` followed) inside the instance, to a file no other entry of either split names.
    `seen`: resolved path -> the entry that listed it, shared by both splits."""
    if not isinstance(entries, list):
        raise ShardError(f"{path}: {where} must be a list of shard entries")
    root = instance.resolve()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ShardError(f"{path}: {where}[{i}] is not an object")
        for key, kind in (("file", str), ("rows", int), ("bytes", int), ("sha256", str)):
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                raise ShardError(f"{path}: {where}[{i}] lacks {key!r} (a {kind.__name__})")
        name = entry["file"]
        shown = ascii(name) if not name.isprintable() else repr(name)
        reason = _unusable(name)
        if reason is not None:
            raise ShardError(f"{path}: {where}[{i}] file {shown} {reason}; a shard is named "
                             f"by its path inside the instance folder")
        try:
            target = (instance / name).resolve()
        except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
            raise ShardError(f"{path}: {where}[{i}] file {shown} cannot be resolved "
                             f"({getattr(err, 'strerror', None) or err})") from None
        if root not in target.parents:
            raise ShardError(f"{path}: {where}[{i}] file {shown} points outside "
                             f"the instance folder {instance}")
        if target in seen:
            raise ShardError(f"{path}: {name if name.isprintable() else shown} is listed "
                             f"twice ({seen[target]} and {where}[{i}] name one file; a shard "
                             f"appears once, in one split: a held-out shard must not be a "
                             f"training shard)")
        seen[target] = f"{where}[{i}]"


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
        if (not isinstance(manifest[key], int) or isinstance(manifest[key], bool)
                or manifest[key] < (0 if key == "rows" else 1)):
            raise ShardError(f"{path}: field {key!r} must be a positive integer, got {manifest[key]!r}")
    if manifest.get("format_version") != files.FORMAT_VERSION:
        raise ShardError(f"{path}: format_version {manifest.get('format_version')!r}, "
                         f"this code reads {files.FORMAT_VERSION}")
    seen: dict[Path, str] = {}
    _check_entries(path, instance, manifest["shards"], "shards", seen)
    if sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise ShardError(f"{path}: shard rows do not add up to rows={manifest['rows']}")
    heldout = manifest.get("heldout")
    if heldout is not None:
        if not isinstance(heldout, dict) or "shards" not in heldout:
            raise ShardError(f"{path}: heldout must be an object with its shards")
        _check_entries(path, instance, heldout["shards"], "heldout.shards", seen)
        if sum(s["rows"] for s in heldout["shards"]) != heldout.get("rows"):
            raise ShardError(f"{path}: heldout shard rows do not add up to "
                             f"heldout.rows={heldout.get('rows')}")
    if not isinstance(manifest.get("files", {}), dict):
        raise ShardError(f"{path}: files must be an object of {{name: {{bytes, sha256}}}}")
    for name, entry in manifest.get("files", {}).items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int)):
            raise ShardError(f"{path}: files[{name!r}] needs bytes and sha256")
        reason = _unusable(name)
        if reason is None:
            try:
                inside = (instance / name).resolve().parent == instance.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                inside = False
            reason = None if inside else "is not a file of the instance folder"
        if reason is not None:
            raise ShardError(f"{path}: files[{ascii(name)}] {reason}")
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
