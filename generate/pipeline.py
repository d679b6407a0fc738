"""Stage 1 end to end: train (or draw) the instances, dump activations, write ground truth.

Everything is written into a staging folder and swapped into `<run>/generate` only when
complete, so an interrupted run leaves the previous one as it was.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from unsuperpose.data import files
from unsuperpose.data.cli import silent_progress
from unsuperpose.data.environment import environment, resolve_device
from unsuperpose.data.manifest import file_entry, write_manifest
from unsuperpose.data.safetensors_io import safetensors_bytes
from unsuperpose.data.shard_writer import ShardWriter
from unsuperpose.data.staging import StageWriteError, stage_transaction
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.distributions import FeatureDistribution
from unsuperpose.generate.train import train_toy_models
from unsuperpose.generate.worlds import WorldDistribution, spread_directions
from unsuperpose.models.ground_truth import feature_dimensionality, hidden_responses
from unsuperpose.models.toy import ToyModel

DUMP_BATCH = 65536
DUMP_ELEMENTS = 1 << 25  # rows * instances * n_features per dump batch (128 MB per float tensor)


def distribution(config: GenerateConfig) -> FeatureDistribution:
    return FeatureDistribution(
        n_features=config.n_features, feature_probability=config.feature_probability,
        importance_decay=config.importance_decay if config.source == "toy" else 1.0,
        value=config.resolved_value, n_correlated_sets=config.n_correlated_sets,
        n_anticorrelated_sets=config.n_anticorrelated_sets, set_size=config.set_size)


class SyntheticGenerator:
    """No trained model: h = x @ atoms (+ noise), atoms random unit vectors, one set per instance.

    The setting of Sharkey, Braun and Millidge (2022). Exposes the same `hidden` and ground
    truth as a toy model, so both sources are dumped by the same code.
    """

    def __init__(self, n_instances: int, n_features: int, d: int, noise_std: float,
                 generator: torch.Generator, device, orthogonalize_steps: int = 0):
        atoms = torch.randn((n_instances, n_features, d), generator=generator, device=device)
        self.atoms = spread_directions(atoms, orthogonalize_steps)  # [inst, n, d], unit rows
        self.noise_std = noise_std

    def hidden(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: [batch, inst, n] -> h: [batch, inst, d]."""
        h = torch.einsum("bin,ind->bid", x, self.atoms)
        if self.noise_std > 0:
            h = h + self.noise_std * torch.randn(h.shape, generator=generator, device=h.device)
        return h


def ground_truth_tensors(directions: torch.Tensor, feature_index: torch.Tensor, sign: torch.Tensor,
                         importance: torch.Tensor, probability: torch.Tensor,
                         threshold: float) -> dict[str, torch.Tensor]:
    """One instance's ground_truth.safetensors; directions: [n_gt, d]."""
    norms = directions.norm(dim=-1)
    return {
        files.GT_DIRECTIONS: directions.float(),
        files.GT_FEATURE_INDEX: feature_index.long(),
        files.GT_SIGN: sign.to(torch.int8),
        files.GT_REPRESENTED: norms > threshold,
        files.GT_DIMENSIONALITY: _dimensionality(directions).float(),
        files.GT_NORMS: norms.float(),
        files.GT_IMPORTANCE: importance.float(),
        files.GT_PROBABILITY: probability.float(),
    }


def toy_model_tensors(model: ToyModel, instance: int) -> dict[str, torch.Tensor]:
    """One instance's model.safetensors: its weights W [d, n], W_out [n, d] (the `abs` model
    only) and b_final [n], detached, on the CPU."""
    params = {files.MODEL_W: model.W, files.MODEL_W_OUT: getattr(model, "W_out", None),
              files.MODEL_B_FINAL: model.b_final}
    return {key: p[instance].detach().cpu().contiguous() for key, p in params.items()
            if p is not None}


DENSE_DIMENSIONALITY = 4096  # above this many directions, D_i goes through the [d, d] Gram


def _dimensionality(directions: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """models.ground_truth.feature_dimensionality of directions [n_gt, d]; for more than
    DENSE_DIMENSIONALITY directions the same D_i = ||W_i||^2 / (W^_i S W^_i), S = sum_j W_j W_jᵀ
    [d, d], so that no [n_gt, n_gt] matrix is formed (SynthSAEBench-16k: 16,384 directions)."""
    if len(directions) <= DENSE_DIMENSIONALITY:
        return feature_dimensionality(directions, eps)
    w = directions.double()
    norms_sq = (w ** 2).sum(-1)
    unit = w / norms_sq.clamp_min(eps).sqrt()[:, None]
    overlap = ((unit @ (w.T @ w)) * unit).sum(-1)  # sum_j (W^_i . W_j)^2
    dim = norms_sq / overlap.clamp_min(eps)
    return torch.where(norms_sq > eps, dim, torch.zeros_like(dim)).float()


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    files.atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def run_generate(config: GenerateConfig, run_dir: str | Path,
                 progress: Callable | None = None,
                 echo: Callable[[str], None] = lambda s: None) -> Path:
    """Write `<run_dir>/generate/` as one stage (the run's lock is taken before any training,
    so a second command is refused at once); returns that folder.

    progress(label, total) must return a context manager whose `.update(n, info)` advances
    a bar (the CLI passes click's progress bar); None runs silently.
    """
    check_sizes(config, run_dir)
    with stage_transaction(run_dir, files.GENERATE_DIR, f"generate --run-dir {run_dir}",
                           echo, known=written_files) as stage:
        _build(config, stage, progress or silent_progress)
    return files.generate_dir(run_dir)


class TooLarge(StageWriteError):
    """The run would not fit in memory or on disk; raised before any work."""


def _free_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _free_disk(path: Path) -> int | None:
    """Free bytes on the file system that would hold `path` (its nearest existing folder)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_sizes(config: GenerateConfig, run_dir: str | Path) -> tuple[int, int]:
    """Refuse, before any work and naming the option and the bytes, a run whose shards
    cannot fit on the disk (rows x d x 4 bytes of h, plus 8 bytes of CSR row pointer, per row
    of each instance and split: a lower bound, so nothing that fits is refused) or whose
    models, ground truth, training batches or shard buffers cannot fit in free memory
    (n_features x d x 4 bytes per instance, 4 copies in training: weights, gradient, Adam's
    two moments). Returns (bytes of shards, bytes of memory) that were checked."""
    n_inst, n, d = len(config.feature_probability), config.n_features, config.d_hidden
    shards = n_inst * (config.rows + config.heldout_rows) * (d * 4 + 8)
    free = _free_disk(Path(run_dir))
    if free is not None and shards > free:
        raise TooLarge(errno.ENOSPC, (
            f"--rows: {n_inst} instance(s) x {config.rows + config.heldout_rows} rows (with "
            f"--heldout-rows) x d={d} need {shards:,} bytes of shards, but {run_dir} has "
            f"{free:,} bytes free"))
    needs = {"--n-features": n_inst * n * d * 4 * 4,                      # model / ground truth
             "--batch-size and --n-features": n_inst * config.batch_size * n * 4 * 4,  # x, x', grads
             "--rows-per-shard": n_inst * min(config.rows_per_shard, config.rows) * (d * 4 + 8)}
    free = _free_memory()
    if free is not None and sum(needs.values()) > free:
        option = max(needs, key=needs.get)
        raise TooLarge(errno.ENOMEM, (
            f"{option}: {n_inst} instance(s) of n_features={n}, d={d}, batch {config.batch_size}, "
            f"{config.rows_per_shard} rows per shard need {sum(needs.values()):,} bytes of memory "
            f"({needs[option]:,} of them for {option.replace('--', '')}), but {free:,} bytes "
            f"are free"))
    return shards, sum(needs.values())


def written_files(folder: Path, saved: dict) -> set[str]:
    """What a previous generate/ wrote, relative to it: its train log, and each instance's
    manifest.json with every shard and file that manifest lists (what `check_replaceable`
    lets a new generate/ replace; anything else in the folder is the user's)."""
    out = {files.TRAIN_LOG_FILE}
    instances = saved.get("instances")
    for instance_id in instances if isinstance(instances, list) else []:
        if not isinstance(instance_id, str):
            continue
        inst = f"{files.INSTANCES_DIR}/{instance_id}"
        out.add(f"{inst}/{files.MANIFEST_FILE}")
        try:
            manifest = files.read_json(folder / inst / files.MANIFEST_FILE)
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict):
            continue
        heldout = manifest.get("heldout")
        entries = list(manifest.get("shards") or []) + list(
            (heldout.get("shards") or []) if isinstance(heldout, dict) else [])
        names = [e.get("file") for e in entries if isinstance(e, dict)]
        names += list(manifest.get("files") or {}) if isinstance(manifest.get("files"), dict) else []
        out.update(os.path.normpath(f"{inst}/{n}") for n in names if isinstance(n, str))
    return out


def _build(config: GenerateConfig, stage: Path, progress: Callable) -> None:
    """Train (or draw) every instance and write the whole stage into the staging folder."""
    device = resolve_device(config.device)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    ids = config.instance_ids
    n_inst = len(ids)
    started = time.time()
    train_log: list[dict] = []

    if config.source == "toy":
        dist = distribution(config)
        model = ToyModel(config.model_kind, n_inst, config.n_features, config.d_hidden,
                         generator=gen, device=device)
        with progress(f"training {n_inst} {config.model_kind} toy models", config.steps) as bar:
            last = [0]

            def on_step(step: int, loss: float) -> None:
                bar.update(step + 1 - last[0], f"loss {loss:.3g}")
                last[0] = step + 1

            if config.steps:
                train_log = train_toy_models(model, dist, config.steps, config.batch_size,
                                             config.lr, gen, on_step=on_step)
        hidden = lambda x, _gen: model.hidden(x)  # noqa: E731
        directions, feature_index, sign = hidden_responses(model, dist.signed)
    else:
        model = SyntheticGenerator(n_inst, config.n_features, config.d_hidden, config.noise_std,
                                   gen, device, config.orthogonalize_steps)
        hidden = model.hidden
        world = config.world_spec
        dist = (distribution(config) if world.first_world_field is None  # the plain case
                else WorldDistribution(world, config.n_features, config.feature_probability, gen, device))
        directions = model.atoms
        feature_index = torch.arange(config.n_features)
        sign = torch.ones(config.n_features, dtype=torch.int8)
    train_seconds = time.time() - started

    inst_root = stage / files.INSTANCES_DIR
    probability = dist.probability(device)  # [inst, n]
    importance = dist.importance(device)
    train = _dump(ids, inst_root, config, dist, hidden, gen, device, progress,
                  config.rows, files.ACTIVATIONS_DIR, "dumping")
    # the held-out rows come from a generator of their own, so the training rows are the
    # same whatever heldout_rows is, and no held-out row repeats a training row's draw
    held_gen = torch.Generator(device=device).manual_seed(heldout_seed(config.seed))
    heldout = _dump(ids, inst_root, config, dist, hidden, held_gen, device, progress,
                    config.heldout_rows, files.HELDOUT_DIR, "held-out")
    for j, instance_id in enumerate(ids):
        folder = inst_root / instance_id
        model_kind = config.model_kind if config.source == "toy" else "synthetic"
        meta = {"instance_id": instance_id, "source": config.source, "model_kind": model_kind}
        gt = ground_truth_tensors(directions[j], feature_index, sign, importance,
                                  probability[j], config.represented_threshold)
        _save(folder / files.GROUND_TRUTH_FILE, gt, meta)
        weights = (toy_model_tensors(model, j) if config.source == "toy"
                   else {files.MODEL_W: directions[j].T.contiguous()})  # h = W x, W: [d, n]
        _save(folder / files.MODEL_FILE, weights, meta)
        write_manifest(
            folder, config.d_hidden, config.n_features, train[j].finish(),
            heldout=heldout[j].finish(), instance_id=instance_id, source=config.source,
            model_kind=model_kind,
            distribution={**dist.to_dict(), "feature_probability": dist.feature_probability[j]},
            seed=config.seed, heldout_seed=heldout_seed(config.seed),
            files={name: file_entry(folder / name)
                   for name in (files.GROUND_TRUTH_FILE, files.MODEL_FILE)})
    files.atomic_write_json(stage / files.CONFIG_FILE, {
        "stage": "generate",
        "config": config.to_dict(),
        "config_sha256": files.config_sha256(config.to_dict()),
        "instances": ids,
        "environment": environment(str(device)),
        "train_seconds": round(train_seconds, 3),
        "total_seconds": round(time.time() - started, 3),
        "final_loss_per_instance": train_log[-1]["loss_per_instance"] if train_log else None,
    })
    if train_log:
        (stage / files.TRAIN_LOG_FILE).write_text("".join(
            json.dumps(r) + "\n" for r in train_log))


def heldout_seed(seed: int) -> int:
    """The seed of the held-out rows' generator: derived from the run's seed, but a stream of
    its own (sha256, so no small offset makes it collide with another run's seed)."""
    return int.from_bytes(hashlib.sha256(f"heldout:{seed}".encode()).digest()[:7], "little")


def _dump(ids, inst_root: Path, config: GenerateConfig, dist, hidden, gen, device, progress,
          rows: int, subdir: str, label: str) -> list[ShardWriter]:
    """Draw `rows` rows per instance into shards under <instance>/<subdir>/."""
    writers = [ShardWriter(inst_root / i, config.d_hidden, config.n_features,
                           config.rows_per_shard, subdir=subdir) for i in ids]
    with torch.no_grad(), progress(f"{label} {rows} rows x {len(ids)} instances", rows) as bar:
        done = 0
        batch_rows = max(1, min(DUMP_BATCH, DUMP_ELEMENTS // (len(ids) * config.n_features)))
        while done < rows:
            n = min(batch_rows, rows - done)
            x = dist.sample(n, gen, device)  # [n, inst, n_features]
            h = hidden(x, gen)  # [n, inst, d]
            for j, writer in enumerate(writers):
                writer.add(h[:, j], x[:, j])
            done += n
            bar.update(n, "")
    return writers
