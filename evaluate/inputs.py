"""What stage 3 reads: a run's instances (ground truth, toy-model weights, sample rows) and the
dictionaries stage 2 wrote for them. Everything comes from disk through `data.files` names;
nothing here imports `generate` or `models`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open

from unsuperpose.data import files
from unsuperpose.data.errors import ShardError, StageInputError
from unsuperpose.data.instance_files import read_ground_truth, read_model
from unsuperpose.data.manifest import (
    has_heldout,
    lists_checksums,
    manifest_checksums,
    read_manifest,
    verify_instance,
)
from unsuperpose.data.rows import shard_masks
from unsuperpose.data.shards import read_shard


@dataclass
class Instance:
    """One generated instance, as stage 3 needs it."""

    id: str
    d: int
    gt: dict[str, np.ndarray]        # ground_truth.safetensors, keys from data.files
    W: np.ndarray                    # [d, n] the toy model's (first) weight matrix
    b: np.ndarray | None             # [n] its output bias; None for the synthetic source
    H: np.ndarray                    # [rows, d] the evaluation rows
    X: np.ndarray                    # [rows, n_features] true feature values of those rows
    candidate_rows: int              # rows the evaluation rows were drawn from
    model_kind: str
    split: str = "heldout"           # which rows: "heldout", or "train" for a run without a split
    nonfinite_dropped: dict = field(default_factory=dict)   # shard file -> rows left out
    checksummed: bool = True         # the manifest lists the ground truth's and model's sha256

    @property
    def represented(self) -> np.ndarray:
        return self.gt[files.GT_REPRESENTED].astype(bool)

    @property
    def G(self) -> np.ndarray:
        """[n_true, d]: the represented true directions, the set every recovery metric uses."""
        return self.gt[files.GT_DIRECTIONS][self.represented]

    def true_activations(self) -> np.ndarray:
        """[rows, n_true]: the activation of each represented true direction, ReLU(sign * x_i)
        (for unsigned features just x_i; for the abs model the -e_i direction is active when
        x_i < 0)."""
        index = self.gt[files.GT_FEATURE_INDEX][self.represented]
        sign = self.gt[files.GT_SIGN][self.represented].astype(np.float32)
        return np.maximum(self.X[:, index] * sign, 0.0)


def check_run(run_dir: Path) -> str:
    """Refuse a run without stage 1 or 2 output, or whose `sae/` was fitted on another
    `generate/` (a different resolved config, or instance files whose sha256 changed since);
    returns the generate config's sha256."""
    gen_config = files.generate_dir(run_dir) / files.CONFIG_FILE
    if not gen_config.is_file():
        raise StageInputError(f"{gen_config}: not found; run `generate --run-dir {run_dir}` "
                              f"and then `sae --run-dir {run_dir}` first")
    root = files.sae_root(run_dir)
    if not root.is_dir():
        raise StageInputError(f"{root}: not found; this run has no stage-2 dictionaries: "
                              f"run `sae --run-dir {run_dir}` first")
    generate_sha = files.read_stage_config(gen_config, "generate")["config_sha256"]
    sae_config = root / files.CONFIG_FILE
    if not sae_config.is_file():
        raise StageInputError(f"{sae_config}: not found; {root} is not a complete stage: "
                              f"run `sae --run-dir {run_dir}` again")
    saved = files.read_stage_config(sae_config, "sae")
    fitted_on = saved.get("generate_config_sha256")
    if fitted_on != generate_sha:
        raise StageInputError(
            f"{root}: fitted on a different generate/ (its generate config sha256 is "
            f"{str(fitted_on)[:16]}, {gen_config}'s is {generate_sha[:16]}); rerun "
            f"`sae --run-dir {run_dir}`")
    for instance_id, facts in saved.get("instances", {}).items():
        inst = files.instance_dir(run_dir, instance_id)
        try:
            now = read_manifest(inst)
        except (FileNotFoundError, ShardError) as err:
            raise StageInputError(f"{root}: fitted on instance {instance_id}, which is gone or "
                                  f"broken ({err}); rerun `sae --run-dir {run_dir}`") from None
        current = manifest_checksums(now)
        for name, sha in facts.get("upstream_files", {}).items():
            if current.get(name) != sha:
                raise StageInputError(f"{root}: fitted on another {inst / name} (its sha256 "
                                      f"changed since); rerun `sae --run-dir {run_dir}`")
    return generate_sha


def sae_stage_config(run_dir: Path) -> dict:
    """sae/config.json (after check_run accepted it)."""
    return files.read_stage_config(files.sae_root(run_dir) / files.CONFIG_FILE, "sae")


def sample_rows(instance_path: Path, manifest: dict, max_rows: int, drop_zero_rows: bool,
                rng: np.random.Generator, split: str = "heldout",
                on_nonfinite: str = "error") -> tuple[np.ndarray, np.ndarray, int, dict[str, int]]:
    """Up to `max_rows` rows drawn without replacement (kept in file order) from a split's
    rows, or from those with h != 0. Reads one shard at a time, so memory is bounded by the
    rows kept. Returns (H [rows, d], X [rows, n_features], candidate rows,
    {shard file: non-finite rows dropped})."""
    d, n = manifest["d"], manifest["n_features"]
    masks, dropped = shard_masks(instance_path, manifest, split, drop_zero_rows, on_nonfinite)
    total = int(sum(mask.sum() for _, mask in masks))
    chosen = np.sort(rng.choice(total, size=min(max_rows, total), replace=False))
    Hs, Xs, start = [np.zeros((0, d), np.float32)], [np.zeros((0, n), np.float32)], 0
    for entry, mask in masks:
        local = np.flatnonzero(mask)
        pick = local[chosen[(chosen >= start) & (chosen < start + len(local))] - start]
        start += len(local)
        if len(pick) == 0:
            continue
        shard = read_shard(instance_path / entry["file"], d=d)
        Hs.append(np.asarray(shard[files.H][pick]))
        Xs.append(_csr_rows(shard[files.X_INDPTR], shard[files.X_INDICES],
                            shard[files.X_VALUES], pick, n))
    return np.concatenate(Hs), np.concatenate(Xs), total, dropped


def _csr_rows(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, rows: np.ndarray,
              n_features: int) -> np.ndarray:
    """Dense [len(rows), n_features] float32 of the chosen rows of a CSR matrix."""
    counts = indptr[rows + 1] - indptr[rows]
    out_row = np.repeat(np.arange(len(rows)), counts)
    # position of each stored value: its row's start plus its rank within the row
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    position = np.repeat(indptr[rows], counts) + offset
    out = np.zeros((len(rows), n_features), dtype=np.float32)
    out[out_row, indices[position]] = values[position]
    return out


def read_instance(run_dir: Path, instance_id: str, max_rows: int, drop_zero_rows: bool,
                  seed: int, on_nonfinite: str = "error") -> Instance:
    """Ground truth, toy-model weights and evaluation rows of one instance, every file checked
    against the manifest first. The rows come from the held-out split that `sae` never
    reads; a run generated before there was one is scored on its training rows, and
    `Instance.split` says so."""
    path = files.instance_dir(run_dir, instance_id)
    manifest = verify_instance(path, check_files=False)  # the two readers check their file
    gt = read_ground_truth(path, manifest)
    model = read_model(path, manifest)
    split = "heldout" if has_heldout(manifest) else "train"
    H, X, total, dropped = sample_rows(path, manifest, max_rows, drop_zero_rows,
                                       np.random.default_rng(seed), split, on_nonfinite)
    return Instance(id=instance_id, d=manifest["d"], gt=gt, W=model[files.MODEL_W],
                    b=model.get(files.MODEL_B_FINAL), H=H, X=X, candidate_rows=total,
                    model_kind=manifest.get("model_kind", "?"), split=split,
                    nonfinite_dropped=dropped, checksummed=lists_checksums(manifest))


def registry_order(methods, known: tuple[str, ...]) -> list[str]:
    """`methods` in the order of `known` (the sae registry), unknown names after, sorted."""
    methods = set(methods)
    return [m for m in known if m in methods] + sorted(methods - set(known))


def find_dictionaries(run_dir: Path, instance_id: str, methods: tuple[str, ...],
                      known: tuple[str, ...]) -> tuple[list[tuple[str, Path]], list[str]]:
    """The (method, folder) pairs stage 2 wrote for one instance, in the order of `known`
    (unknown folder names last), restricted to `methods` when given; plus notes on methods
    asked for but absent."""
    root = files.sae_root(run_dir) / instance_id
    found = registry_order([p.name for p in root.iterdir() if (p / files.DICTIONARY_FILE).is_file()]
                           if root.is_dir() else [], known)
    notes = [f"no dictionary for method {m!r} in {root}" for m in methods if m not in found]
    chosen = [m for m in found if not methods or m in methods]
    return [(m, files.sae_dir(run_dir, instance_id, m)) for m in chosen], notes


def check_dictionary(folder: Path, d: int, generate_hash: str) -> tuple[dict, str | None]:
    """(its config.json, None) when the dictionary in `folder` can be scored against an
    instance of width d from this generate run; else a reason to skip it."""
    try:
        saved = files.read_json(folder / files.CONFIG_FILE)
        with safe_open(str(folder / files.DICTIONARY_FILE), "np") as f:
            shape = f.get_slice(files.COMPONENTS).get_shape()
    except Exception as err:  # noqa: BLE001  (a damaged file is a note, never a crash)
        return {}, f"unreadable: {type(err).__name__}: {err}"
    if len(shape) != 2 or shape[1] != d:
        return saved, (f"its atoms have shape {list(shape)}, but the instance has d={d}: "
                       f"fitted to different activations")
    fitted_on = saved.get("generate_config_sha256")
    if fitted_on != generate_hash:
        return saved, (f"fitted to another `generate` (generate config sha256 {str(fitted_on)[:16]}, "
                       f"this run's is {generate_hash[:16]}); rerun `sae`")
    return saved, None
