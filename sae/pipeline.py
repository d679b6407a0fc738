"""Stage 2 end to end: fit every chosen method to every chosen instance of a run.

Reads only what stage 1 wrote for training (the training shards, manifest, ground truth;
never the held-out split) and writes `sae/` as one stage: everything that can be refused
(every instance's inputs, every method's config, k <= d) is checked before the first fit,
every dictionary is written into a staging folder, and the folder replaces the old `sae/`
in one step at the end. A failure or a kill at any point leaves the previous `sae/` whole.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from unsuperpose.data import files
from unsuperpose.data.cli import silent_progress
from unsuperpose.data.environment import environment, resolve_device
from unsuperpose.data.errors import ShardError, StageInputError
from unsuperpose.data.instance_files import read_ground_truth
from unsuperpose.data.loader import RowFilter, stream_activations
from unsuperpose.data.manifest import lists_checksums, manifest_checksums, verify_files, verify_instance
from unsuperpose.data.rows import shard_masks, take_rows
from unsuperpose.data.staging import stage_transaction
from unsuperpose.sae.calibration import calibrate_l1_coefficient, mean_l0
from unsuperpose.sae.config import ConfigError, SAEStageConfig
from unsuperpose.sae.methods import METHODS, SAE_METHODS, accepted, build
from unsuperpose.sae.saelens_export import SAELENS_DIR, export_estimator


def instance_facts(gt: dict[str, np.ndarray]) -> dict:
    """What the dictionary size and k are derived from: counts from the ground truth."""
    represented = gt[files.GT_REPRESENTED].astype(bool)
    probability = gt[files.GT_PROBABILITY][gt[files.GT_FEATURE_INDEX]]  # [n_gt]
    # a signed feature fires with p; each of its +e_i, -e_i directions is active half of that
    share = 0.5 if bool((gt[files.GT_SIGN] < 0).any()) else 1.0
    active = float(probability[represented].sum()) * share
    return {"n_gt": int(represented.size), "n_represented": int(represented.sum()),
            "expected_active": active, "d": int(gt[files.GT_DIRECTIONS].shape[1])}


def resolve_sizes(config: SAEStageConfig, facts: dict) -> tuple[int, int]:
    """(n_components, k) for one instance; an explicit k above d is refused here."""
    if config.n_components is not None:
        n_components = config.n_components
    else:
        basis = facts["n_represented"] if config.size_basis == "represented" else facts["n_gt"]
        if basis == 0:
            raise StageInputError("the instance represents no feature (every true direction has "
                                  "norm below the threshold): use --size-basis features or "
                                  "--n-components")
        n_components = max(1, round(config.dict_ratio * basis))
    if config.k is not None:
        if config.k > facts["d"]:
            raise ConfigError("k", f"k={config.k} exceeds the activation width d={facts['d']}: "
                                   "more active atoms than dimensions has no unique sparse code")
        return n_components, config.k
    # float32 probabilities sum to a hair above an integer (20 x 0.3f = 6.0000002): not a 7th atom
    k = max(1, math.ceil(facts["expected_active"] - 1e-4))
    return n_components, min(k, facts["d"], n_components)


def expected_steps(method: str, est, n_rows: int) -> int:
    if method in SAE_METHODS:
        return est.n_steps or math.ceil(n_rows / est.batch_size) * est.n_epochs
    return getattr(est, "n_iter", 1) if method != "sklearn" else 1


@dataclass
class InstancePlan:
    """One instance, checked and ready to fit: its rows (in memory, or a stream), sizes, the
    estimators to fit, and what the stage records about it."""

    instance_id: str
    facts: dict
    n_components: int
    k: int
    n_rows: int                                   # rows fitted (per epoch)
    nonfinite_dropped: dict[str, int]             # shard file -> rows left out
    upstream_files: dict[str, str]                # file -> sha256, from the manifest
    run_dir: Path | None = None
    manifest: dict | None = None
    H: torch.Tensor | None = None                 # [rows, d]; None when only streamed
    streamed: bool = False                        # the SAEs fit a stream of every row
    checksummed: bool = True                      # the manifest lists gt/model sha256
    methods: dict[str, object] = field(default_factory=dict)   # name -> unfitted estimator


def _count_rows(inst: Path, manifest: dict, config: SAEStageConfig) -> tuple[int, dict[str, int]]:
    """Usable rows of the training split and non-finite rows dropped per shard (a full pass,
    one shard at a time, which also refuses a non-finite row before anything is fitted)."""
    masks, dropped = shard_masks(inst, manifest, "train", config.drop_zero_rows, config.on_nonfinite)
    return int(sum(mask.sum() for _, mask in masks)), dropped


def plan_instance(run_dir: Path, instance_id: str, config: SAEStageConfig,
                  device: torch.device) -> InstancePlan:
    """Check one instance's inputs and every method's config; read the rows to fit."""
    inst = files.instance_dir(run_dir, instance_id)
    # sizes, sha256 and shapes of the training shards, no unlisted shard; the model is
    # checked though not read, so that a damaged instance is refused before any fit
    manifest = verify_instance(inst, splits=("train",), check_files=False)
    verify_files(inst, manifest, names=(files.MODEL_FILE,))
    facts = instance_facts(read_ground_truth(inst, manifest))
    try:
        n_components, k = resolve_sizes(config, facts)
    except StageInputError as err:
        raise StageInputError(f"{inst}: {err}") from None
    if config.target_l0 is not None and config.target_l0 > n_components:
        raise ConfigError("target_l0", f"{config.target_l0:g} exceeds the {n_components} atoms "
                                       f"of instance {instance_id}")
    streamed = config.max_rows is None and any(m in SAE_METHODS for m in config.methods)
    if streamed:
        n_rows, dropped = _count_rows(inst, manifest, config)
        H = None
        if any(m not in SAE_METHODS for m in config.methods):  # full-batch methods need them all
            H = torch.from_numpy(take_rows(inst, manifest, None, config.drop_zero_rows,
                                           config.on_nonfinite)[0])
    else:
        H_np, dropped = take_rows(inst, manifest, config.max_rows, config.drop_zero_rows,
                                  config.on_nonfinite)
        n_rows, H = len(H_np), torch.from_numpy(H_np)
    if n_rows == 0:
        raise StageInputError(f"{inst}: no nonzero activation row to fit")
    plan = InstancePlan(instance_id, facts, n_components, k, n_rows, dropped,
                        manifest_checksums(manifest), run_dir=run_dir, manifest=manifest, H=H,
                        streamed=streamed, checksummed=lists_checksums(manifest))
    for method in config.methods:
        # the run's values go to the methods that take them (l1 has no k, sklearn no device);
        # method_params holds only names the method takes, and build refuses any other
        params = {**accepted(method, {"n_components": n_components, "k": k,
                                      "random_state": config.seed, "device": str(device)}),
                  **config.method_params(method)}
        try:
            if streamed and method in SAE_METHODS and params.get("n_steps") is None:
                # a stream has no length: the steps of n_epochs passes over the counted rows
                plain = build(method, params)
                params["n_steps"] = math.ceil(n_rows / plain.batch_size) * plain.n_epochs
            est = build(method, params)
            est.get_config()  # validates every hyperparameter now, not after the first fits
        except ConfigError as err:  # its field is already "method.parameter"
            raise ConfigError("params", str(err)) from None
        except (ValueError, TypeError) as err:
            raise ConfigError("params", f"{method}: {err}") from None
        plan.methods[method] = est
    return plan


def training_stream(plan: InstancePlan, config: SAEStageConfig):
    """A fresh `datasets` stream of the instance's usable training rows, shuffled per pass
    from the stage's seed: one per fit, so that a method's row order does not depend on the
    methods fitted before it."""
    inst = files.instance_dir(plan.run_dir, plan.instance_id)
    return stream_activations(inst, verify=False, rows=RowFilter(
        config.drop_zero_rows, config.on_nonfinite), shuffle_seed=config.seed)


CALIBRATION_ROWS = 32768  # rows the L1 calibration fits on when the stage streams every row
# half the report's +-10%: the L0 is calibrated on the training rows and scored on held-out ones
CALIBRATION_TOLERANCE = 0.05


def calibrates(method: str, config: SAEStageConfig) -> bool:
    """Whether a penalty SAE's coefficient (the L1 SAE's l1_coefficient, JumpReLU's
    l0_coefficient: its class's `calibrated_coefficient`) is calibrated to the target L0:
    always with an explicit --target-l0; by default unless the user fixed the coefficient."""
    name = getattr(METHODS[method][0], "calibrated_coefficient", None)
    if name is None:
        return False
    fixed = name in config.params.get(method, {}) or name in config.params.get("*", {})
    return config.target_l0 is not None or not fixed


def _fit_one(plan: InstancePlan, method: str, est, config: SAEStageConfig, device, progress):
    """Fit one method (the L1 SAE through its calibration); (fitted estimator, seconds)."""
    started = time.perf_counter()
    streamed = plan.streamed and method in SAE_METHODS
    if calibrates(method, config):
        est = _calibrated(plan, est, config, device, progress)
        if est.calibration_["is_full_fit"]:  # the chosen probe is the fit itself
            return est, time.perf_counter() - started
    data = training_stream(plan, config) if streamed else plan.H.to(device)
    with progress(f"{plan.instance_id} {method:9s} n={est.n_components}",
                  expected_steps(method, est, plan.n_rows)) as bar:
        est.fit(data, progress=_progress_adapter(bar))
    if hasattr(est, "calibration_"):  # calibrated on CALIBRATION_ROWS, fitted on the stream
        est.calibration_["saved_fit_l0"] = mean_l0(est, est.calibration_.pop("rows"))
    return est, time.perf_counter() - started


def _calibrated(plan: InstancePlan, est, config: SAEStageConfig, device, progress):
    """The penalty SAE (l1, jumprelu) at the coefficient whose L0 meets the target (the
    stage's k by default), found by a search over fits (sae/calibration.py). With the rows
    in memory the chosen probe is the full fit and is returned fitted. When the rows are only streamed,
    the search fits the first CALIBRATION_ROWS rows, and an unfitted SAE at the chosen
    coefficient is returned; its calibration record says so (is_full_fit false)."""
    target = config.target_l0 if config.target_l0 is not None else plan.k
    params = est.get_params()
    if plan.H is not None:  # every row to fit is in memory (n_steps: the same passes)
        H = plan.H
    else:
        inst = files.instance_dir(plan.run_dir, plan.instance_id)
        H = torch.from_numpy(take_rows(inst, plan.manifest, CALIBRATION_ROWS,
                                       config.drop_zero_rows, config.on_nonfinite)[0])
        params.pop("n_steps", None)  # the stream's steps; these probes fit H in memory
    with progress(f"{plan.instance_id} {est.method} calibrating to L0 {target:g}", 10) as bar:
        result = calibrate_l1_coefficient(H.to(device), params, target, method=est.method,
                                          tolerance=CALIBRATION_TOLERANCE,
                                          progress=lambda done, total, info: bar.update(
                                              1, f"L0 {info['l0']:.3g}"))
    record = result.to_dict()
    if plan.H is not None:
        result.estimator.calibration_ = record
        return result.estimator
    fresh = build(est.method, {**est.get_params(), result.coefficient_name: result.coefficient})
    fresh.calibration_ = {**record, "is_full_fit": False, "rows": H.to(device),
                          "note": f"calibrated on the first {len(H)} training rows; the "
                                  f"saved SAE streams all {plan.n_rows}"}
    return fresh


def run_sae(config: SAEStageConfig, run_dir: str | Path,
            progress: Callable | None = None, echo: Callable[[str], None] = lambda s: None) -> Path:
    """Fit every (instance, method) and write `<run_dir>/sae` whole; returns that folder."""
    progress = progress or silent_progress
    run_dir = Path(run_dir)
    with stage_transaction(run_dir, files.SAE_DIR, f"sae --run-dir {run_dir}", echo) as stage:
        generate = read_generate_config(run_dir)
        try:
            instances = files.select_instances(run_dir, config.instances)
        except ValueError as err:
            raise StageInputError(str(err)) from None
        device = resolve_device(config.device)
        env = environment(str(device))
        plans = [plan_instance(run_dir, i, config, device) for i in instances]
        for plan in plans:
            if not plan.checksummed:
                echo(f"  WARNING: {files.instance_dir(run_dir, plan.instance_id)}: its manifest "
                     f"lists no sha256 of the ground truth and model (an older generate): they "
                     f"are read unchecked; rerun `generate` to get them")
        summary = []
        for plan in plans:
            for method, est in plan.methods.items():
                est, seconds = _fit_one(plan, method, est, config, device, progress)
                exports = _write_dictionary(stage / plan.instance_id / method, plan, method, est,
                                            seconds, config, generate, env, echo)
                last = (getattr(est, "log_", None) or [{}])[-1]
                summary.append({"instance": plan.instance_id, "method": method,
                                "seconds": round(seconds, 3), "fvu": last.get("fvu"),
                                "l0": last.get("l0"),
                                **({"exports": {fmt: f"{plan.instance_id}/{method}/{sub}"
                                                for fmt, sub in exports.items()}}
                                   if exports else {})})
                echo(f"  {plan.instance_id} {method}: {seconds:.1f} s, FVU {_fmt(last.get('fvu'))}, "
                     f"L0 {_fmt(last.get('l0'))}")
                if hasattr(est, "calibration_"):
                    c = est.calibration_
                    echo(f"    {c['coefficient_name']} {c['coefficient']:.3g} from {c['n_fits']} fits: "
                         f"L0 {c['achieved_l0']:.3g}, target {c['target_l0']:g}"
                         + ("" if c["within_tolerance"] else
                            f" (NOT within {c['tolerance']:.0%}: off target)"))
        files.atomic_write_json(stage / files.CONFIG_FILE, {
            "stage": "sae", "config": config.to_dict(),
            "config_sha256": files.config_sha256(config.to_dict()),
            "device": str(device), "environment": env,
            "generate_config_sha256": generate["config_sha256"],
            "instances": {p.instance_id: {"rows": p.n_rows, "n_components": p.n_components,
                                          "k": p.k, "nonfinite_dropped": p.nonfinite_dropped,
                                          "upstream_files": p.upstream_files} for p in plans},
            "fits": summary})
    return run_dir / files.SAE_DIR


def read_generate_config(run_dir: Path) -> dict:
    """generate/config.json and the sha256 of its resolved config (not of the file, which
    holds timings): the identity every sae/ records of the generate/ it was fitted on."""
    path = files.generate_dir(run_dir) / files.CONFIG_FILE
    if not path.is_file():
        raise StageInputError(f"{path}: not found; run `generate --run-dir {run_dir}` first")
    return files.read_stage_config(path, "generate")


def _write_dictionary(out: Path, plan: InstancePlan, method: str, est, seconds: float,
                      config: SAEStageConfig, generate: dict, env: dict,
                      echo: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """Save one fitted method to `out` (in the staging folder), with the exports the config
    asks for; returns {format: its subfolder of `out`}."""
    est.save(out, metadata={"instance_id": plan.instance_id, "method_name": method,
                            "generate_config_sha256": generate["config_sha256"]})
    exports = {}
    if "saelens" in config.export and method in SAE_METHODS:
        _, warning = export_estimator(est, out / SAELENS_DIR, metadata={
            "unsuperpose_method_name": method, "unsuperpose_instance_id": plan.instance_id,
            "unsuperpose_generate_config_sha256": generate["config_sha256"]})
        if warning is not None:
            echo(f"  WARNING: {files.SAE_DIR}/{plan.instance_id}/{method}/{SAELENS_DIR}: {warning}")
        exports["saelens"] = SAELENS_DIR
    saved = files.read_json(out / files.CONFIG_FILE)
    files.atomic_write_json(out / files.CONFIG_FILE, {
        **saved, "method": est.method, "method_name": method,
        "instance_id": plan.instance_id, "stage_config": config.to_dict(),
        "n_components": int(est.n_components), "k": plan.k, "rows": plan.n_rows,
        # the sparsity every method is compared at; a method away from it is marked off target
        "target_l0": config.target_l0 if config.target_l0 is not None else plan.k,
        "nonfinite_dropped": plan.nonfinite_dropped,
        "fit_seconds": round(seconds, 3), "environment": env,
        "generate_config_sha256": generate["config_sha256"], "instance_facts": plan.facts,
        **({"calibration": est.calibration_} if hasattr(est, "calibration_") else {}),
        **({"exports": exports} if exports else {})})
    (out / files.TRAIN_LOG_FILE).write_text(
        "".join(json.dumps(_jsonable(r)) + "\n" for r in getattr(est, "log_", [])))
    return exports


def _progress_adapter(bar):
    """An estimator's progress(done, total, info) -> the bar: moved to `done`, showing the
    FVU of the latest log entry (info is {} at a step that wrote none)."""
    state = {"done": 0, "text": ""}

    def update(done: int, total: int | None, info: dict) -> None:
        if "fvu" in info:
            state["text"] = f"FVU {_fmt(info['fvu'])}"
        bar.update(done - state["done"], state["text"])
        state["done"] = done
    return update


def _jsonable(row: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"


__all__ = ["StageInputError", "ShardError", "run_sae", "instance_facts", "resolve_sizes"]
