"""The one place that knows the on-disk layout: file names, folder names and tensor keys.

Every stage builds paths and reads tensors through these names, so that a reader of the
artifacts (ours or anyone's) needs only this module and DESIGN.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1

# ---- run layout ---------------------------------------------------------------------------
CONFIG_FILE = "config.json"
GENERATE_DIR = "generate"
SAE_DIR = "sae"
EVALUATE_DIR = "evaluate"
INSTANCES_DIR = "instances"
ACTIVATIONS_DIR = "activations"
HELDOUT_DIR = "heldout"           # held-out rows: written by generate, read only by evaluate
MODEL_FILE = "model.safetensors"
GROUND_TRUTH_FILE = "ground_truth.safetensors"
MANIFEST_FILE = "manifest.json"
DICTIONARY_FILE = "dictionary.safetensors"
TRAIN_LOG_FILE = "train_log.jsonl"
SHARD_PATTERN = "shard-{index:05d}.safetensors"

# ---- tensor keys: activation shards -------------------------------------------------------
H = "h"                    # [rows, d] float32 hidden activations
X_INDPTR = "x_indptr"      # [rows + 1] int64, CSR row pointers of the true feature values
X_INDICES = "x_indices"    # [nnz] int64, feature index of each stored value
X_VALUES = "x_values"      # [nnz] float32
SHARD_KEYS = (H, X_INDPTR, X_INDICES, X_VALUES)

# ---- tensor keys: ground truth ------------------------------------------------------------
GT_DIRECTIONS = "directions"          # [n_gt, d] raw hidden response, not normalised
GT_FEATURE_INDEX = "feature_index"    # [n_gt] int64, which input feature
GT_SIGN = "sign"                      # [n_gt] int8, +1 for e_i, -1 for -e_i
GT_REPRESENTED = "represented"        # [n_gt] bool, norm above the threshold
GT_DIMENSIONALITY = "dimensionality"  # [n_gt] float32, D_i
GT_NORMS = "norms"                    # [n_gt] float32, ||directions||
GT_IMPORTANCE = "importance"          # [n_features] float32
GT_PROBABILITY = "probability"        # [n_features] float32, firing probability 1 - S_i

# ---- tensor keys: dictionaries ------------------------------------------------------------
COMPONENTS = "components"             # [n_components, d] unit-norm rows

# ---- SAELens's export format (`SAE.load_from_disk`) ----------------------------------------
SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"   # W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d]


# ---- paths ---------------------------------------------------------------------------------
def generate_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / GENERATE_DIR


def instances_dir(run_dir: str | os.PathLike) -> Path:
    return generate_dir(run_dir) / INSTANCES_DIR


def instance_dir(run_dir: str | os.PathLike, instance_id: str) -> Path:
    return instances_dir(run_dir) / instance_id


def activations_dir(instance_path: str | os.PathLike) -> Path:
    return Path(instance_path) / ACTIVATIONS_DIR


def heldout_dir(instance_path: str | os.PathLike) -> Path:
    return Path(instance_path) / HELDOUT_DIR


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


def sae_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SAE_DIR


def sae_dir(run_dir: str | os.PathLike, instance_id: str, method: str) -> Path:
    return sae_root(run_dir) / instance_id / method


def evaluate_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / EVALUATE_DIR


def list_instances(run_dir: str | os.PathLike) -> list[str]:
    """Instance ids of a generated run, sorted; raises FileNotFoundError naming the folder,
    or the first instance folder without its manifest (never silently skipped)."""
    root = instances_dir(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no generated instances here; run `generate --run-dir {run_dir}` first")
    ids = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not ids:
        raise FileNotFoundError(f"{root}: holds no instance")
    for i in ids:
        if not (root / i / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{root / i / MANIFEST_FILE}: missing; this instance is "
                                    f"incomplete: rerun `generate --run-dir {run_dir}`")
    return ids


def select_instances(run_dir: str | os.PathLike, wanted: tuple[str, ...] | list[str] = ()) -> list[str]:
    """`wanted` (every instance when empty), after checking each exists; a ValueError names
    the first unknown id and lists the valid ones."""
    available = list_instances(run_dir)
    missing = [i for i in wanted if i not in available]
    if missing:
        raise ValueError(f"{instances_dir(run_dir)}: no instance {missing[0]!r}; "
                         f"valid: {', '.join(available)}")
    return list(wanted) or available


# ---- atomic writes -------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; artifacts are for every reader
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def config_sha256(config: dict) -> str:
    """sha256 of a resolved config (canonical JSON: sorted keys, no spaces), which is the same
    for the same settings whatever the timings or the file's formatting."""
    payload = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_stage_config(path: str | os.PathLike, stage: str) -> dict:
    """A stage's config.json with `config_sha256` (of its resolved config) added; a
    ValueError names the file when it is not JSON or holds no "config" object."""
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path}: holds no 'config' object; rerun `{stage}`")
    return {**saved, "config_sha256": config_sha256(saved["config"])}


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None

