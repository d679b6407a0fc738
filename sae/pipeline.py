"""Stage 2 end to end: fit every chosen method to every chosen instance of a run.

Reads only what stage 1 wrote (shards, manifest, ground truth); writes
`sae/<instance>/<method>/` per DESIGN.md, each folder swapped in atomically when complete.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from data import files
from data.cli import silent_progress
from data.shards import read_all
from data.environment import environment, resolve_device
from sae.config import SAEStageConfig
from sae.methods import SAE_METHODS, build


class StageInputError(ValueError):
    """Stage 1's output is missing or does not fit the request."""


def instance_facts(instance_path: Path) -> dict:
    """What the dictionary size and k are derived from: counts from the ground truth."""
    path = instance_path / files.GROUND_TRUTH_FILE
    if not path.is_file():
        raise StageInputError(f"{path}: ground truth missing; rerun `generate`")
    gt = load_file(str(path))
    represented = gt[files.GT_REPRESENTED]
    probability = gt[files.GT_PROBABILITY][gt[files.GT_FEATURE_INDEX]]  # [n_gt]
    # a signed feature fires with p; each of its +e_i, -e_i directions is active half of that
    share = 0.5 if bool((gt[files.GT_SIGN] < 0).any()) else 1.0
    active = float(probability[represented].sum()) * share
    return {"n_gt": int(represented.numel()), "n_represented": int(represented.sum()),
            "expected_active": active, "d": int(gt[files.GT_DIRECTIONS].shape[1])}


def resolve_sizes(config: SAEStageConfig, facts: dict) -> tuple[int, int]:
    """(n_components, k) for one instance."""
    if config.n_components is not None:
        n_components = config.n_components
    else:
        basis = facts["n_represented"] if config.size_basis == "represented" else facts["n_gt"]
        if basis == 0:
            raise StageInputError("the instance represents no feature (every true direction has "
                                  "norm below the threshold): use --size-basis features or "
                                  "--n-components")
        n_components = max(1, round(config.dict_ratio * basis))
    if config.k is not None:  # asked for explicitly: a k > d is refused by the method itself
        return n_components, config.k
    k = max(1, math.ceil(facts["expected_active"] - 1e-9))
    return n_components, min(k, facts["d"], n_components)


def expected_steps(method: str, est, n_rows: int) -> int:
    if method in SAE_METHODS:
        return est.n_steps or math.ceil(n_rows / est.batch_size) * est.n_epochs
    return getattr(est, "n_iter", 1) if method != "sklearn" else 1


def run_sae(config: SAEStageConfig, run_dir: str | Path,
            progress: Callable | None = None, echo: Callable[[str], None] = lambda s: None) -> Path:
    """Fit and write every (instance, method); returns `<run_dir>/sae`."""
    progress = progress or silent_progress
    run_dir = Path(run_dir)
    gen_config_path = files.generate_dir(run_dir) / files.CONFIG_FILE
    if not gen_config_path.is_file():
        raise StageInputError(f"{gen_config_path}: not found; run `generate --run-dir {run_dir}` first")
    generate_hash = files.sha256_file(gen_config_path)[:16]
    available = files.list_instances(run_dir)
    instances = list(config.instances) or available
    missing = [i for i in instances if i not in available]
    if missing:
        raise StageInputError(f"{files.instances_dir(run_dir)}: no instance {missing[0]!r}; "
                              f"valid: {', '.join(available)}")
    device = resolve_device(config.device)
    env = environment(str(device))
    summary = []
    for instance_id in instances:
        inst = files.instance_dir(run_dir, instance_id)
        facts = instance_facts(inst)
        n_components, k = resolve_sizes(config, facts)
        H, _ = read_all(inst)  # verifies every shard against the manifest
        if config.drop_zero_rows:
            H = H[np.abs(H).max(axis=1) > 0]
        if len(H) == 0:
            raise StageInputError(f"{inst}: no nonzero activation row to fit")
        if config.max_rows is not None:
            H = H[: config.max_rows]
        H = torch.from_numpy(np.ascontiguousarray(H)).to(device)  # [rows, d]
        for method in config.methods:
            params = {"n_components": n_components, "k": k, "random_state": config.seed,
                      "device": str(device), **config.method_params(method)}
            est = build(method, params)
            label = f"{instance_id} {method:9s} n={est.n_components}"
            started = time.perf_counter()
            with progress(label, expected_steps(method, est, len(H))) as bar:
                est.fit(H, progress=_progress_adapter(bar))
            seconds = time.perf_counter() - started
            out = files.sae_dir(run_dir, instance_id, method)
            with files.StagingDir(out) as stage:
                est.save(stage, metadata={"instance_id": instance_id, "method_name": method,
                                          "generate_config_hash": generate_hash})
                saved = json.loads((stage / files.CONFIG_FILE).read_text())
                files.atomic_write_json(stage / files.CONFIG_FILE, {
                    **saved, "method": est.method, "method_name": method,
                    "instance_id": instance_id, "stage_config": config.to_dict(),
                    "n_components": int(est.n_components), "k": k, "rows": len(H),
                    "fit_seconds": round(seconds, 3), "device": str(device), "environment": env,
                    "generate_config_hash": generate_hash, "instance_facts": facts})
                (stage / files.TRAIN_LOG_FILE).write_text(
                    "".join(json.dumps(_jsonable(r)) + "\n" for r in getattr(est, "log_", [])))
            last = (getattr(est, "log_", None) or [{}])[-1]
            summary.append({"instance": instance_id, "method": method, "seconds": seconds,
                            "fvu": last.get("fvu"), "l0": last.get("l0")})
            echo(f"  {instance_id} {method}: {seconds:.1f} s, FVU {_fmt(last.get('fvu'))}, "
                 f"L0 {_fmt(last.get('l0'))}")
    root = run_dir / files.SAE_DIR
    files.atomic_write_json(root / files.CONFIG_FILE, {
        "stage": "sae", "config": config.to_dict(), "device": str(device), "environment": env,
        "generate_config_hash": generate_hash, "fits": summary})
    return root


def _progress_adapter(bar):
    """SAEs call progress(step, total), k-SVD/MOD/sklearn progress(log_entry)."""
    state = {"done": 0}

    def update(*args):
        if len(args) == 2:
            step, _ = args
            bar.update(step - state["done"], "")
            state["done"] = step
        else:
            entry = args[0]
            bar.update(1, f"FVU {_fmt(entry.get('fvu'))}")
    return update


def _jsonable(row: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"
