"""Run a sweep's grid points, each cached by its config hash, on one machine or on Ray.

    <sweep_dir>/
      grid.json                          the grid file, as read
      generate/<generate hash>/          one stage-1 run per distinct generate config
        generate/ ...                    what `generate` writes
        done.json                        completion marker, written last
      points/<hash>/                     one run folder per grid point
        generate -> ../../generate/<generate hash>/generate   (a relative link)
        sae/ ... evaluate/ ...           what `sae` and `evaluate` write
        worker.json                      where the point ran: hostname, pid, Ray node id
        point.json                       completion marker, written last: configs + swept values
                                         (+ the same "worker")
      points/.<hash>.partial/            a point being written (points/<hash> links to it)
      .sweep.lock, .workers.lock         held by the running sweep, and by its pool workers

A folder with its marker is finished and never recomputed (unless it is a point whose
evaluate/metrics.json cannot be read: that one is recomputed, with a note); one without is
wiped and rerun, so an interrupted sweep resumes where it stopped. A task writes into a
staging folder `.<hash>.partial` beside its own, reached through its own name as a link while
it runs (so the stages record the final path), renamed into place when it ends; the marker
comes after the rename. A sweep killed mid-way therefore leaves only staging folders and
links, which the next run removes, saying so, before it starts. One sweep at a time works in
a sweep folder (.sweep.lock), and its pool workers die with it (guard.py). Work runs in two
waves: the distinct generate configs first, then the points, so no two tasks ever write the
same folder. Tasks are plain dicts of JSON values and module-level functions, so that a process pool or
a Ray worker on another machine can run them. The workers write the run folders themselves:
on a cluster the sweep folder must be on a filesystem every node sees, at the same path (the
ray backend makes it absolute). A Ray task whose node dies is re-run by Ray on another node
(RAY_MAX_RETRIES times); its staging folder is wiped first, so nothing of the lost run is kept.
"""
from __future__ import annotations

import os
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from unsuperpose.data import files
from unsuperpose.evaluate.sweep.grid import Grid, Point
from unsuperpose.evaluate.sweep.guard import init_worker, sweep_lock
from unsuperpose.evaluate.sweep.ray_address import check_reachable

# aliases of the data.files names, for the modules that import them from here
POINT_MARKER, GENERATE_MARKER, ERROR_FILE = (files.POINT_MARKER, files.GENERATE_MARKER,
                                             files.POINT_ERROR_FILE)
HASH_CHARS = 16  # folder names: the first 16 hex digits; the full hash is in the marker
BACKENDS = ("local", "ray")
WORKER_FILE = "worker.json"  # in a point folder: where it ran (written when its run starts)
RAY_MAX_RETRIES = 3  # a Ray task whose worker or node dies runs again, up to this many times


def point_dir(sweep_dir: Path, point: Point) -> Path:
    return Path(sweep_dir) / files.SWEEP_POINTS_DIR / point.hash[:HASH_CHARS]


def generate_run_dir(sweep_dir: Path, point: Point) -> Path:
    return Path(sweep_dir) / files.SWEEP_GENERATE_DIR / point.generate_hash[:HASH_CHARS]


def is_done(folder: Path, marker: str) -> bool:
    folder = Path(folder)
    return not folder.is_symlink() and (folder / marker).is_file()


def staging_dir(folder: Path) -> Path:
    return Path(folder).with_name(f".{Path(folder).name}{files.SWEEP_STAGING_SUFFIX}")


def metrics_problem(folder: Path) -> str | None:
    """Why a finished point's evaluate/metrics.json cannot be aggregated; None when it can."""
    path = files.evaluate_dir(folder) / files.METRICS_FILE
    try:
        records = files.read_json(path)["records"]
    except (OSError, ValueError) as err:  # missing, unreadable, not JSON (or not UTF-8)
        return str(err)
    except (KeyError, TypeError):
        return f"{path}: holds no 'records'"
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and {"instance", "method", "metric", "value"} <= r.keys()
            for r in records):
        return f"{path}: 'records' is not a list of metric records"
    return None


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# ---- the tasks: what one worker runs ---------------------------------------------------------
def worker_info() -> dict:
    """Where this process runs: hostname, pid, and the Ray node id inside a Ray worker (else
    None)."""
    import socket
    import sys

    node = None
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001  (a record, never a reason to fail a point)
            node = None
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "ray_node_id": node}


@contextmanager
def _staged(folder: Path):
    """Build `folder` as its staging folder, reached through `folder` (a link to it) meanwhile;
    then, finished or failed, rename the staging folder into place. Whatever `folder` held
    (an unfinished run) is removed first."""
    staging = staging_dir(folder)
    _remove(folder)
    _remove(staging)
    staging.mkdir(parents=True)
    folder.symlink_to(staging.name)
    try:
        yield folder
    finally:  # a failed task's folder keeps what it wrote, for its error.txt to explain
        folder.unlink()
        os.replace(staging, folder)


def run_generate_task(task: dict) -> None:
    from unsuperpose.generate.config import GenerateConfig
    from unsuperpose.generate.pipeline import run_generate

    folder = Path(task["folder"])
    config = GenerateConfig.from_dict(task["configs"]["generate"])
    with _staged(folder):
        run_generate(config, folder)
    files.atomic_write_json(folder / files.GENERATE_MARKER, {
        "hash": task["hash"], "config": config.to_dict(), "worker": worker_info()})


def run_point_task(task: dict) -> None:
    from unsuperpose.evaluate.config import EvaluateConfig
    from unsuperpose.evaluate.pipeline import run_evaluate
    from unsuperpose.sae.config import SAEStageConfig
    from unsuperpose.sae.pipeline import run_sae

    folder = Path(task["folder"])
    started = time.perf_counter()
    worker = worker_info()
    with _staged(folder):
        files.atomic_write_json(folder / WORKER_FILE, worker)
        link = files.generate_dir(folder)
        link.symlink_to(os.path.relpath(files.generate_dir(task["generate_run"]), folder))
        run_sae(SAEStageConfig.from_dict(task["configs"]["sae"]), folder)
        run_evaluate(EvaluateConfig.from_dict(task["configs"]["evaluate"]), folder)
    files.atomic_write_json(folder / files.POINT_MARKER, {
        "hash": task["hash"], "generate_hash": task["generate_hash"], "values": task["values"],
        "configs": task["configs"], "seconds": round(time.perf_counter() - started, 3),
        "worker": worker})


TASKS = {"generate": run_generate_task, "point": run_point_task}


def execute(task: dict, threads: int | None = None) -> dict:
    """Run one task; never raises (a failed point must not stop the others): returns
    {"kind", "key", "ok", "error", "seconds", "worker"} and leaves the traceback in the
    folder's error.txt."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        TASKS[task["kind"]](task)
        error = None
    except Exception as err:  # noqa: BLE001  (reported per point, the sweep goes on)
        error = f"{type(err).__name__}: {err}"
        folder = Path(task["folder"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / files.POINT_ERROR_FILE).write_text(traceback.format_exc())
    return {"kind": task["kind"], "key": task["key"], "ok": error is None, "error": error,
            "seconds": round(time.perf_counter() - started, 3), "worker": worker_info()}


# ---- backends: run a list of tasks, report each result as it comes ---------------------------
class LocalBackend:
    """workers == 1, or a single task: in this process. Otherwise a process pool, started on
    first need and kept for both waves (a spawned worker spends seconds importing torch);
    spawned, so that no OpenMP state is forked; each worker pinned to `threads` torch threads,
    and bound to die with this process (guard.init_worker)."""

    def __init__(self, workers: int, threads: int, sweep_dir: Path | None = None):
        self.workers, self.threads, self.pool = workers, threads, None
        self.sweep_dir = None if sweep_dir is None else str(sweep_dir)

    def run(self, tasks: list[dict], on_result: Callable) -> None:
        if self.workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                on_result(execute(task, self.threads))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, initializer=init_worker,
                                            mp_context=multiprocessing.get_context("spawn"),
                                            initargs=(os.getpid(), self.threads, self.sweep_dir))
        futures = [self.pool.submit(execute, task, self.threads) for task in tasks]
        for future in as_completed(futures):
            on_result(future.result())

    def close(self, abort: bool = False) -> None:
        """Wait for the workers to end; with `abort` (the sweep is interrupted), kill them."""
        if self.pool is None:
            return
        if abort:
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.kill()
        self.pool.shutdown(wait=not abort, cancel_futures=True)


class RayBackend:
    """Each task a Ray task asking for `threads` CPUs, and a GPU where its stage runs on cuda,
    spread over the cluster's nodes (Ray's default prefers the driver's node while it has
    room, and short points queued there while another node sat idle). Joins the running Ray
    instance if there is one, else `ray.init(address)` (None: a local instance, or the
    cluster named by RAY_ADDRESS). A task whose worker process or node dies
    is run again by Ray, up to `max_retries` times (on a node still alive; the task wipes
    what the lost run staged); one that still does not come back is a failed point, and the
    sweep goes on."""

    def __init__(self, threads: int, address: str | None = None,
                 max_retries: int = RAY_MAX_RETRIES):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--backend ray needs the ray package: pip install "
                               "'unsuperpose[ray]' (or pip install ray)") from None
        if not ray.is_initialized():
            check_reachable(address)  # one line within a stated time, not minutes of retries
            ray.init(address=address)
        self.ray, self.threads = ray, threads
        # execute() never raises: only system failures (a dead worker or node) are retried
        self.remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(execute)

    def run(self, tasks: list[dict], on_result: Callable) -> None:
        refs = {self.remote.options(num_cpus=self.threads, num_gpus=task["gpus"],
                                    scheduling_strategy="SPREAD")
                .remote(task, self.threads): task for task in tasks}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                result = self.ray.get(done[0])
            except self.ray.exceptions.RayError as err:  # retries spent: its node kept dying
                task = refs[done[0]]
                result = {"kind": task["kind"], "key": task["key"], "ok": False,
                          "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
                          "seconds": 0.0, "worker": None}
            on_result(result)

    def close(self, abort: bool = False) -> None:
        pass  # a Ray instance started here ends with this process; one joined is not ours


# ---- the sweep ---------------------------------------------------------------------------------
def _gpus(config) -> int:
    return 1 if str(config.device).startswith("cuda") else 0


def clean_leftovers(grid: Grid, sweep_dir: Path) -> list[str]:
    """Remove what unfinished tasks left (staging folders, links to them, this grid's folders
    without their marker); returns the folders that will run again, as points/<hash>."""
    sweep_dir = Path(sweep_dir)
    removed = []
    suffix = files.SWEEP_STAGING_SUFFIX
    for parent in (sweep_dir / files.SWEEP_POINTS_DIR, sweep_dir / files.SWEEP_GENERATE_DIR):
        for staging in sorted(parent.glob(f".*{suffix}")):
            _remove(staging)
            removed.append(f"{parent.name}/{staging.name[1:-len(suffix)]}")
    for point in grid.points:
        for folder, marker in ((generate_run_dir(sweep_dir, point), files.GENERATE_MARKER),
                               (point_dir(sweep_dir, point), files.POINT_MARKER)):
            if (folder.exists() or folder.is_symlink()) and not is_done(folder, marker):
                _remove(folder)
                removed.append(f"{folder.parent.name}/{folder.name}")
    return list(dict.fromkeys(removed))


def plan(grid: Grid, sweep_dir: Path, notes: list[str] | None = None
         ) -> tuple[list[dict], list[dict], int]:
    """(generate tasks, point tasks, points already done) for the unfinished part of the grid;
    a finished point whose metrics cannot be read is planned again, with a line in `notes`."""
    generate_tasks, point_tasks, done, seen = [], [], 0, set()
    for point in grid.points:
        gen_dir = generate_run_dir(sweep_dir, point)
        configs = point.config_dicts()
        if not is_done(gen_dir, files.GENERATE_MARKER) and point.generate_hash not in seen:
            seen.add(point.generate_hash)
            generate_tasks.append({
                "kind": "generate", "key": point.generate_hash[:HASH_CHARS], "folder": str(gen_dir),
                "hash": point.generate_hash, "configs": configs,
                "gpus": _gpus(point.configs["generate"])})
        folder = point_dir(sweep_dir, point)
        if is_done(folder, files.POINT_MARKER):
            problem = metrics_problem(folder)
            if problem is None:
                done += 1
                continue
            if notes is not None:
                notes.append(f"point {folder.name} was finished but its metrics are unreadable "
                             f"({problem}): recomputed")
        point_tasks.append({
            "kind": "point", "key": point.hash[:HASH_CHARS], "folder": str(folder),
            "hash": point.hash, "generate_hash": point.generate_hash, "generate_run": str(gen_dir),
            "values": point.values, "configs": configs, "gpus": _gpus(point.configs["sae"])})
    return generate_tasks, point_tasks, done


def run_sweep(grid: Grid, sweep_dir: str | Path, backend: str = "local", workers: int = 1,
              threads: int = 1, ray_address: str | None = None,
              echo: Callable[[str], None] = lambda s: None, lock: bool = True) -> dict:
    """Run every unfinished point of `grid` under `sweep_dir`; returns {"done": points cached
    before, "ran": points computed now, "failed": {point key: error}, "notes": [what was
    redone, and why]}. Holds the sweep folder's lock meanwhile (guard.SweepBusy if another
    sweep does) unless `lock` is False: the caller holds it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if lock:
        with sweep_lock(sweep_dir):
            return run_sweep(grid, sweep_dir, backend, workers, threads, ray_address, echo, False)
    sweep_dir = Path(sweep_dir)
    if backend == "ray":  # the workers' current folder is not ours: give them whole paths
        sweep_dir = sweep_dir.absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_bytes(sweep_dir / files.SWEEP_GRID_FILE, grid.path.read_bytes())
    notes: list[str] = []
    removed = clean_leftovers(grid, sweep_dir)
    if removed:
        shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
        echo(f"sweep: removed {len(removed)} unfinished folder(s) an interrupted or failed run "
             f"left ({shown}); they run again")
    generate_tasks, point_tasks, done = plan(grid, sweep_dir, notes)
    for note in notes:
        echo(f"sweep: note: {note}")
    echo(f"sweep: {len(grid.points)} points, {done} done, {len(point_tasks)} to run "
         f"({len(generate_tasks)} generate runs first) on {backend}")
    failed: dict[str, str] = {}

    def on_result(result: dict) -> None:
        status = "ok" if result["ok"] else f"FAILED: {result['error']}"
        node = (result.get("worker") or {}).get("ray_node_id")
        where = f" on node {node[:12]}" if node else ""
        echo(f"  {result['kind']:8s} {result['key']}: {result['seconds']:.1f} s{where} {status}")
        if not result["ok"]:
            failed[result["key"]] = result["error"]

    runner = (RayBackend(threads, ray_address) if backend == "ray"
              else LocalBackend(workers, threads, sweep_dir))
    try:
        runner.run(generate_tasks, on_result)
        blocked = {t["key"] for t in generate_tasks} & set(failed)
        for task in point_tasks:
            if task["generate_hash"][:HASH_CHARS] in blocked:
                failed[task["key"]] = f"its generate run {task['generate_hash'][:HASH_CHARS]} failed"
        runner.run([t for t in point_tasks if t["key"] not in failed], on_result)
    except BaseException:  # Ctrl-C, SIGTERM: stop the workers now, not after their points
        runner.close(abort=True)
        raise
    runner.close()
    return {"done": done, "ran": sum(t["key"] not in failed for t in point_tasks),
            "failed": failed, "notes": notes}
