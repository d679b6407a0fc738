"""Stage 3 end to end: score every dictionary of a run against its instance's ground truth.

Reads what stages 1 and 2 wrote; writes `<run>/evaluate/` (config.json, metrics.json,
metrics.csv, report.md, figures/) into a staging folder swapped in only when complete, so a
failed run leaves the previous evaluation as it was.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from unsuperpose.data import files
from unsuperpose.data.cli import silent_progress
from unsuperpose.data.environment import environment
from unsuperpose.data.manifest import read_manifest
from unsuperpose.data.errors import StageInputError
from unsuperpose.data.staging import stage_transaction
from unsuperpose.evaluate import metrics as gm
from unsuperpose.evaluate import report  # render_report looked up when called: tests stub it
from unsuperpose.evaluate.chance import CHANCE, chance_generator, chance_size, score_chance
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.evaluate.evaluation import Evaluation, InstanceResult
from unsuperpose.evaluate.external import DecoderDictionary, check_width, is_external, load_external
from unsuperpose.evaluate.figures import save_figures
from unsuperpose.evaluate.inputs import (
    Instance,
    check_dictionary,
    check_run,
    find_dictionaries,
    read_instance,
    registry_order,
    sae_stage_config,
)
from unsuperpose.evaluate.oracle import ORACLE, f1_vs_oracle, oracle_k, score_oracle
from unsuperpose.evaluate.scoring import score_dictionary

# aliases of the data.files names, for the modules that import them from here (evaluate.cli)
REPORT_FILE, METRICS_FILE = files.REPORT_FILE, files.METRICS_FILE


def toy_model_view(inst: Instance) -> dict[str, float]:
    """||W||_F^2, d / ||W||_F^2, how many directions are represented, their mean D_i, and
    their interference (mean max |cos| among the represented directions, metrics.interference)."""
    D = inst.gt[files.GT_DIMENSIONALITY][inst.represented]
    return {"d": inst.d, "n_features": int(inst.W.shape[1]),
            "n_true_directions": int(len(inst.represented)),
            "n_represented": int(inst.represented.sum()),
            "frobenius_norm_sq": gm.frobenius_norm_sq(inst.W),
            "dimensions_per_feature": gm.dimensions_per_feature(inst.W),
            "mean_dimensionality": float(D.mean()) if len(D) else float("nan"),
            "interference": gm.interference(inst.G),
            "rows": int(len(inst.H)), "candidate_rows": inst.candidate_rows}


def _apply(est, H: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atoms [n_atoms, d], codes [rows, n_atoms], reconstructions [rows, d]) of a fitted
    dictionary (ours or an external one) on the evaluation rows H."""
    A = np.asarray(est.components_, dtype=np.float32)  # [n_atoms, d]
    if not len(H):
        return A, np.zeros((0, len(A)), np.float32), H
    codes = np.asarray(est.transform(H))               # [rows, n_atoms]
    return A, codes, np.asarray(est.inverse_transform(codes))


def score_instance(inst: Instance, dictionaries: list[tuple[str, Path]], config: EvaluateConfig,
                   generate_hash: str, notes: list[dict], bar, externals: list = (),
                   stage: dict | None = None) -> InstanceResult:
    """Score the stage's dictionaries of one instance, then the external ones; `stage` is
    what sae/config.json says of the instance ({"k", "target_l0"}): a bare external decoder
    is coded at that k, and every external is compared at that target L0."""
    from unsuperpose.sae import load

    res = InstanceResult(inst, toy_model_view(inst))
    if res.view["n_represented"] == 0:
        notes.append({"instance": inst.id, "method": None, "note": (
            "the toy model represents no feature (every true direction has a norm below the "
            "represented threshold): only reconstruction metrics are scored")})
    if len(inst.H) == 0:
        notes.append({"instance": inst.id, "method": None, "note": (
            f"no evaluation rows (max_rows={config.max_rows}, {inst.candidate_rows} candidate "
            "rows): only the dictionaries' directions are scored")})
    G, true_acts = inst.G, inst.true_activations()
    ks = []  # the k each dictionary was fitted with, for the oracle
    for method, folder in dictionaries:
        bar.update(1, f"{inst.id} {method}")
        saved, reason = check_dictionary(folder, inst.d, generate_hash)
        # a damaged file, or one that fails to load or apply, is an error (the run exits 1
        # unless keep_going); a dictionary fitted to other activations is only skipped
        error = reason is not None and reason.startswith("unreadable")
        if reason is None:
            try:
                est = load(folder)
                A, codes, H_hat = _apply(est, inst.H)
            except Exception as err:  # noqa: BLE001  (one broken dictionary must not stop the rest)
                reason = f"could not be loaded or applied: {type(err).__name__}: {err}"
                error = True
        if error:
            notes.append({"instance": inst.id, "method": method, "kind": "error",
                          "folder": str(folder), "note": f"{folder}: {reason}"})
            continue
        if reason is not None:
            notes.append({"instance": inst.id, "method": method, "note": f"{folder}: skipped: {reason}"})
            continue
        sc = score_dictionary(G, A, inst.H, H_hat, codes, true_acts, config.thresholds,
                              config.duplicate_cosine)
        if saved.get("fit_seconds") is not None:
            sc.scalars["fit_seconds"] = float(saved["fit_seconds"])
        target = saved.get("target_l0") or saved.get("k")
        if target is not None:
            sc.scalars["target_l0"] = float(target)
        for shard, count in (saved.get("nonfinite_dropped") or {}).items():
            notes.append({"instance": inst.id, "method": method, "note": (
                f"fitted without {count} rows with NaN or inf of {shard} (--on-nonfinite drop)")})
        res.scores[method], res.atoms[method] = sc, A
        ks.append(saved.get("k"))  # the oracle's sparsity, from the dictionaries scored
        res.fit_rows[method] = saved.get("rows")
        res.devices.add(str(getattr(est, "device", "cpu")))
    stage = stage or {}
    for ext in externals:  # read and checked against the run before any instance was scored
        bar.update(1, f"{inst.id} {ext.method}")
        try:
            if isinstance(ext, DecoderDictionary):
                if stage.get("k") is None:
                    raise ValueError(f"sae/config.json records no k for instance {inst.id}, "
                                     f"which a bare decoder is coded at")
                ext = ext.with_k(stage["k"])
            A, codes, H_hat = _apply(ext, inst.H)
        except Exception as err:  # noqa: BLE001  (one broken dictionary must not stop the rest)
            notes.append({"instance": inst.id, "method": ext.method, "kind": "error",
                          "folder": str(ext.path), "note": f"{ext.path}: could not be applied: "
                                                           f"{type(err).__name__}: {err}"})
            continue
        sc = score_dictionary(G, A, inst.H, H_hat, codes, true_acts, config.thresholds,
                              config.duplicate_cosine)
        if stage.get("target_l0") is not None:
            sc.scalars["target_l0"] = float(stage["target_l0"])
        res.scores[ext.method], res.atoms[ext.method] = sc, A
    k, note = oracle_k(ks)
    if note is not None and dictionaries:
        notes.append({"instance": inst.id, "method": ORACLE, "note": note})
    if k is not None and len(G):
        res.oracle = score_oracle(G, inst.H, true_acts, k, config.thresholds,
                                  config.duplicate_cosine)
        _add_chance(res, k, true_acts, config, notes)
        for sc in [*res.scores.values(), *([res.chance] if res.chance is not None else [])]:
            if "f1" in sc.scalars:
                sc.scalars["f1_vs_oracle"] = f1_vs_oracle(sc.scalars["f1"],
                                                          res.oracle.scalars.get("f1"))
    return res


def _add_chance(res: InstanceResult, k: int, true_acts: np.ndarray, config: EvaluateConfig,
                notes: list[dict]) -> None:
    """The chance row of one instance (evaluate/chance.py): random unit directions as many as
    the run's dictionaries have atoms (the externals' count where the run has none), coded at
    the oracle's k, from a generator of its own seeded by the evaluate seed and the instance."""
    inst = res.instance
    ours = [sc.scalars["n_components"] for m, sc in res.scores.items() if not is_external(m)]
    n_atoms, note = chance_size(ours or [sc.scalars["n_components"] for sc in res.scores.values()])
    if note is not None:
        notes.append({"instance": inst.id, "method": CHANCE, "note": note})
    if n_atoms is not None:
        res.chance = score_chance(inst.G, inst.H, true_acts, k, n_atoms,
                                  config.thresholds, config.duplicate_cosine,
                                  chance_generator(config.seed, inst.id))


def evaluate_run(config: EvaluateConfig, run_dir: str | Path,
                 progress: Callable | None = None) -> Evaluation:
    """Read and score a run (no writing)."""
    from unsuperpose.sae import METHODS

    progress = progress or silent_progress
    run_dir = Path(run_dir)
    generate_hash = check_run(run_dir)
    # every external dictionary is read and checked before anything is scored: a bad one
    # stops the stage with one line naming its file
    externals = [load_external(name, path) for name, path in config.external.items()]
    try:
        ids = files.select_instances(run_dir, config.instances)
    except ValueError as err:
        raise StageInputError(str(err)) from None
    if externals:
        for instance_id in ids:
            d = read_manifest(files.instance_dir(run_dir, instance_id))["d"]
            for ext in externals:
                check_width(ext, d, instance_id)
    stage_facts = _stage_facts(sae_stage_config(run_dir))
    notes: list[dict] = []
    found = {}
    for instance_id in ids:
        found[instance_id], absent = find_dictionaries(run_dir, instance_id, config.methods,
                                                       tuple(METHODS))
        notes += [{"instance": instance_id, "method": None, "note": n} for n in absent]
    if not any(found.values()) and not externals:
        raise StageInputError(f"{files.sae_root(run_dir)}: holds no dictionary for "
                              f"{', '.join(ids)}; run `sae --run-dir {run_dir}` first")
    results = []
    with progress("scoring dictionaries",
                  sum(map(len, found.values())) + len(ids) * len(externals)) as bar:
        for instance_id in ids:
            inst = read_instance(run_dir, instance_id, config.max_rows, config.drop_zero_rows,
                                 config.seed, config.on_nonfinite)
            if inst.split != "heldout":
                notes.append({"instance": instance_id, "method": None, "note": (
                    "WARNING: this instance has no held-out split (generated with "
                    "--heldout-rows 0, or before the split existed), so it is scored on the rows "
                    "the dictionaries were fitted on (training-set numbers); rerun `generate` "
                    "to get one")})
            if not inst.checksummed:
                notes.append({"instance": instance_id, "method": None, "note": (
                    "WARNING: its manifest lists no sha256 of the ground truth and model (an "
                    "older generate): they were read unchecked; rerun `generate`")})
            for shard, count in inst.nonfinite_dropped.items():
                notes.append({"instance": instance_id, "method": None, "note": (
                    f"{count} evaluation rows with NaN or inf left out of {shard} "
                    f"(--on-nonfinite drop)")})
            results.append(score_instance(inst, found[instance_id], config, generate_hash,
                                          notes, bar, externals, stage_facts.get(instance_id)))
    scored = {m for r in results for m in r.scores}
    methods = registry_order({m for m in scored if not is_external(m)}, tuple(METHODS))
    methods += [e.method for e in externals if e.method in scored]
    return Evaluation(run_dir, config, results, notes, methods, externals)


def _stage_facts(sae_config: dict) -> dict[str, dict]:
    """{instance: {"k", "target_l0"}} from sae/config.json: the sparsity the stage fitted
    each instance at, which the external dictionaries are coded and compared at."""
    target = (sae_config.get("config") or {}).get("target_l0")
    out = {}
    for instance_id, facts in (sae_config.get("instances") or {}).items():
        k = facts.get("k") if isinstance(facts, dict) else None
        out[instance_id] = {"k": k, "target_l0": target if target is not None else k}
    return out


def run_evaluate(config: EvaluateConfig, run_dir: str | Path, progress: Callable | None = None,
                 echo: Callable[[str], None] = lambda s: None) -> Path:
    """Score the run and write `<run_dir>/evaluate/`; returns that folder."""
    started = time.perf_counter()
    out = files.evaluate_dir(run_dir)
    with stage_transaction(run_dir, files.EVALUATE_DIR, f"evaluate --run-dir {run_dir}",
                           echo) as stage:
        ev = evaluate_run(config, run_dir, progress)
        sae_config = sae_stage_config(ev.run_dir)
        figures = save_figures(ev, stage / files.FIGURES_DIR) if config.figures else {}
        records = ev.records()
        files.atomic_write_json(stage / files.METRICS_FILE, {
            "format_version": files.FORMAT_VERSION, "run_dir": str(ev.run_dir),
            "methods": ev.methods, "instances": [r.instance.id for r in ev.results],
            "records": records})
        files.write_csv(stage / files.METRICS_CSV, records, files.METRICS_CSV_COLUMNS)
        (stage / files.REPORT_FILE).write_text(report.render_report(ev, figures))
        files.atomic_write_json(stage / files.CONFIG_FILE, {
            "stage": "evaluate", "config": config.to_dict(),
            "config_sha256": files.config_sha256(config.to_dict()), "run_dir": str(ev.run_dir),
            "generate_config_sha256": sae_config.get("generate_config_sha256"),
            "sae_config_sha256": sae_config["config_sha256"],
            "upstream_files": {f"{r.instance.id}/{m}/{files.DICTIONARY_FILE}": files.sha256_file(
                files.sae_dir(ev.run_dir, r.instance.id, m) / files.DICTIONARY_FILE)
                for r in ev.results for m in r.scores if not is_external(m)},
            # each external dictionary: where it was read from, what it is, its files' sha256
            "external": {e.name: {**e.record(), "method": e.method} for e in ev.externals},
            "splits": {r.instance.id: r.instance.split for r in ev.results},
            "instances": [r.instance.id for r in ev.results], "methods": ev.methods,
            "environment": environment("cpu"),
            "transform_devices": sorted(set().union(*(r.devices for r in ev.results))),
            "seconds": round(time.perf_counter() - started, 3)})
    for n in ev.notes:
        echo(f"  note: {n['instance']}{' ' + n['method'] if n['method'] else ''}: {n['note']}")
    return out
