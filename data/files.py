"""The one place that knows the on-disk layout: file names, folder names and tensor keys.

Every stage builds paths and reads tensors through these names, so that a reader of the
artifacts (ours or anyone's) needs only this module and DESIGN.md.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

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
TRAIN_LOG_FILE = "train_log.jsonl"    # one JSON line per logged step (generate/, each sae/ fit)
SHARD_PATTERN = "shard-{index:05d}.safetensors"
STAGE_DIRS = (GENERATE_DIR, SAE_DIR, EVALUATE_DIR)   # in pipeline order

# ---- tensor keys: activation shards -------------------------------------------------------
H = "h"                    # [rows, d] float32 hidden activations
X_INDPTR = "x_indptr"      # [rows + 1] int64, CSR row pointers of the true feature values
X_INDICES = "x_indices"    # [nnz] int64, feature index of each stored value
X_VALUES = "x_values"      # [nnz] float32
SHARD_KEYS = (H, X_INDPTR, X_INDICES, X_VALUES)
X_DENSE = "x"              # [rows, n_features] float32: the dense x column of data.loader's views

# ---- tensor keys: ground truth ------------------------------------------------------------
GT_DIRECTIONS = "directions"          # [n_gt, d] raw hidden response, not normalised
GT_FEATURE_INDEX = "feature_index"    # [n_gt] int64, which input feature
GT_SIGN = "sign"                      # [n_gt] int8, +1 for e_i, -1 for -e_i
GT_REPRESENTED = "represented"        # [n_gt] bool, norm above the threshold
GT_DIMENSIONALITY = "dimensionality"  # [n_gt] float32, D_i
GT_NORMS = "norms"                    # [n_gt] float32, ||directions||
GT_IMPORTANCE = "importance"          # [n_features] float32
GT_PROBABILITY = "probability"        # [n_features] float32, firing probability 1 - S_i

# ---- tensor keys: model.safetensors (the toy model's parameters; synthetic: W only) --------
MODEL_W = "W"                         # [d, n] the (first) weight matrix; h = W x
MODEL_W_OUT = "W_out"                 # [n, d] the output weights of the `abs` model
MODEL_B_FINAL = "b_final"             # [n] the output bias (toy models only)

# ---- tensor keys: dictionaries ------------------------------------------------------------
COMPONENTS = "components"             # [n_components, d] unit-norm rows

DICTIONARY_OFFSET = "offset"           # [d] k-SVD/MOD's learned offset (fit_offset), h ~ c D + offset

# ---- tensor keys: SAE estimators (beside COMPONENTS, which holds W_dec's columns as rows) ---
SAE_W_ENC = "W_enc"                   # [d, n_components] encoder
SAE_B_ENC = "b_enc"                   # [n_components]
SAE_B_DEC = "b_dec"                   # [d]
SAE_THRESHOLD = "threshold"           # [] BatchTopK's inference threshold (0: plain ReLU)
# [refine_steps] BatchTopK's inference thresholds of the refinement passes, only with
# refine_steps > 0 (SAE_THRESHOLD is then the encoder pass's)
SAE_REFINE_THRESHOLD = "refine_threshold"
SAE_TENSOR_KEYS = (SAE_W_ENC, SAE_B_ENC, SAE_B_DEC, SAE_THRESHOLD)

# ---- SAELens's export format (`SAE.load_from_disk`) ----------------------------------------
SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"   # W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d]

# ---- evaluate/: what stage 3 writes --------------------------------------------------------
METRICS_FILE = "metrics.json"         # every record: instance x method x metric (x feature)
METRICS_CSV = "metrics.csv"           # the same records as a table (METRICS_CSV_COLUMNS)
METRICS_CSV_COLUMNS = ("instance", "method", "metric", "feature", "sign", "value", "note")
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"               # figures/*.png, linked from report.md (a sweep's too)
HEADLINE_FIGURE = "recovery_vs_probability.png"
DIMENSIONALITY_FIGURE = "feature_dimensionality.png"
RECOVERY_VS_DIMENSIONALITY_FIGURE = "recovery_vs_dimensionality.png"
TOY_MODEL_FIGURE = "{instance}-toy_model.png"   # one per toy-model instance
COSINE_FIGURE = "{instance}-cosine.png"         # one per instance with a scored dictionary

# ---- staging (data/staging.py): how a stage folder is swapped in ---------------------------
RUN_LOCK_FILE = ".lock"               # <run_dir>/.lock: held by the command writing the run
COMPLETE_MARKER = ".complete"         # written last into a staging folder, removed after the swap
STAGING_TMP = "tmp"                   # .<stage>.tmp-XXXX: a stage folder being written
STAGING_OLD = "old"                   # .<stage>.old-<pid>: the previous one, between two renames

# ---- a sweep folder (evaluate/sweep/) ------------------------------------------------------
SWEEP_GRID_FILE = "grid.json"         # the grid file, as read
SWEEP_POINTS_DIR = "points"           # points/<hash>/: one run folder per grid point
SWEEP_GENERATE_DIR = "generate"       # generate/<hash>/: one stage-1 run per generate config
POINT_MARKER = "point.json"           # a finished point (written last): configs + swept values
GENERATE_MARKER = "done.json"         # a finished generate run (written last)
POINT_ERROR_FILE = "error.txt"        # the traceback of a failed point
SWEEP_STAGING_SUFFIX = ".partial"     # points/.<hash>.partial: a point being written
SWEEP_LOCK_FILE = ".sweep.lock"       # held by the running sweep (pid inside)
WORKERS_LOCK_FILE = ".workers.lock"   # shared by its pool workers (their pids appended)
AGGREGATE_CSV = "aggregate.csv"       # a row per finished point x instance x method
SUMMARY_FILE = "summary.md"
COUNTING_CSV = "counting.csv"         # feature-counting estimates, one row per size curve
COUNTING_FIGURE = "feature_counting.png"
SWEEP_PROBABILITY_FIGURE = "recovery_vs_probability.png"
SWEEP_PHASE_FIGURE = "phase_diagram.png"
SWEEP_DICT_RATIO_FIGURE = "recovery_vs_dict_ratio.png"
SWEEP_FRONTIER_FIGURE = "fvu_l0_frontier.png"


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


def staging_prefix(name: str, kind: str) -> str:
    """`.<name>.<kind>-`: how a staging (STAGING_TMP) or previous (STAGING_OLD) copy of the
    stage folder `name` begins, beside it."""
    return f".{name}.{kind}-"


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


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write `rows` as a CSV table of `columns` (a header line, then one line per row; keys
    outside `columns` left out), atomically. A missing value, None, NaN or inf is an empty
    cell; a list or tuple is its items joined by commas."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def _csv_cell(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def read_csv(path: str | os.PathLike) -> list[dict]:
    """A `write_csv` table back as dicts of strings (empty string: no value)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def config_sha256(config: dict) -> str:
    """sha256 of a resolved config (canonical JSON: sorted keys, no spaces), which is the same
    for the same settings whatever the timings or the file's formatting."""
    payload = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_stage_config(path: str | os.PathLike, stage: str) -> dict:
    """A stage's config.json with `config_sha256` (of its resolved config) added; a
    StageInputError names the file when it is not JSON or holds no "config" object."""
    from unsuperpose.data.errors import StageInputError

    try:
        saved = read_json(path)
    except ValueError as err:
        raise StageInputError(str(err)) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise StageInputError(f"{path}: holds no 'config' object; rerun `{stage}`")
    return {**saved, "config_sha256": config_sha256(saved["config"])}


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None

