"""Faults of sweeps: a killed sweep, broken metrics, two sweeps on one folder."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.evaluate.sweep.test_sweep import BASE, _invoke, write_grid
from unsuperpose.evaluate.pipeline import METRICS_FILE
from unsuperpose.evaluate.sweep import load_grid
from unsuperpose.evaluate.sweep.aggregate import AGGREGATE_CSV, SUMMARY_FILE, read_csv, write_aggregate
from unsuperpose.evaluate.sweep.guard import SweepBusy, sweep_lock
from unsuperpose.evaluate.sweep.runner import POINT_MARKER, point_dir

ROOT = Path(__file__).resolve().parents[3]


GUARD = ROOT / "evaluate" / "sweep" / "guard.py"


# one instance, topk only; the axis over seeds: 1 generate run, points of a second or two
FAST_BASE = {**BASE, "generate": {**BASE["generate"], "feature_probability": 0.1},
             "sae": {**BASE["sae"], "methods": ["topk"]}}


SEEDS = {"sae.seed": [0, 1, 2]}


@pytest.fixture
def no_sweep_figures(monkeypatch):
    """The sweep figures (most of an aggregate's time) are tested above; skip them here."""
    import unsuperpose.evaluate.sweep.figures

    monkeypatch.setattr(unsuperpose.evaluate.sweep.figures, "save_sweep_figures", lambda *args: [])


def _load_guard_code():
    # python -c code that loads guard.py alone (no torch, no evaluate package: starts fast)
    return ("import importlib.util, sys; spec = importlib.util.spec_from_file_location("
            f"'guard', {str(GUARD)!r}); g = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(g)\n")


def _children(pid):
    """The pids whose parent is `pid`, read from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _running(pid):
    """True while `pid` runs (a zombie has ended: here nobody may reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_killed_sweeps_workers_die_with_it_and_the_resumed_sweep_completes(tmp_path,
                                                                            no_sweep_figures):
    grid = write_grid(tmp_path / "grid.json", SEEDS, FAST_BASE)
    sweep_dir = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "unsuperpose.evaluate.sweep", str(grid), "--sweep-dir", str(sweep_dir),
         "--workers", "2", "--threads", "1"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((sweep_dir / "points").glob(".*.partial")):  # a point runs
            assert sweep.poll() is None, sweep.communicate()[0]
            assert time.monotonic() < deadline, "no point started"
            time.sleep(0.02)
        workers = _children(sweep.pid)
        assert len(workers) >= 2  # the two pool workers (and the resource tracker)
        sweep.kill()
    finally:
        sweep.kill()
        sweep.communicate()
    assert _wait_gone(workers, 5.0) == []

    half_written = sorted(f"points/{p.name[1:-len('.partial')]}"
                          for p in (sweep_dir / "points").glob(".*.partial"))
    assert half_written
    done = len(list(sweep_dir.glob(f"points/*/{POINT_MARKER}")))  # the points it finished
    resumed = _invoke(grid, sweep_dir, "--workers", "1")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.splitlines()[0] == (
        f"sweep: removed {len(half_written)} unfinished folder(s) an interrupted or failed run "
        f"left ({', '.join(half_written)}); they run again")
    assert (f"3 points, {done} done, {3 - done} to run (0 generate runs first)"
            in resumed.output.splitlines()[1])
    folders = {point_dir(sweep_dir, p) for p in load_grid(grid).points}
    assert set((sweep_dir / "points").iterdir()) == folders  # no staging folder left
    assert all(not f.is_symlink() and (f / POINT_MARKER).is_file() for f in folders)
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert {r["point"] for r in rows if r["method"] == "topk"} == {f.name for f in folders}


@pytest.fixture(scope="module")
def two_points(tmp_path_factory):
    """A finished 2-point sweep (one worker, in this process)."""
    root = tmp_path_factory.mktemp("two")
    grid = write_grid(root / "grid.json", {"sae.seed": [0, 1]}, FAST_BASE)
    with pytest.MonkeyPatch.context() as mp:
        import unsuperpose.evaluate.sweep.figures

        mp.setattr(unsuperpose.evaluate.sweep.figures, "save_sweep_figures", lambda *args: [])
        result = _invoke(grid, root / "out", "--workers", "1")
    assert result.exit_code == 0, result.output
    return grid, root / "out"


BREAKAGES = {
    "invalid json": lambda path: path.write_text("{not json"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "missing": lambda path: path.unlink(),
}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_finished_point_with_unreadable_metrics_is_recomputed_with_a_note(
        two_points, tmp_path, no_sweep_figures, breakage):
    grid, original = two_points
    sweep_dir = tmp_path / "out"
    shutil.copytree(original, sweep_dir, symlinks=True)
    broken, intact = (point_dir(sweep_dir, p) for p in load_grid(grid).points)
    metrics = broken / "evaluate" / METRICS_FILE
    BREAKAGES[breakage](metrics)
    kept = (intact / POINT_MARKER).stat().st_mtime_ns

    dry = _invoke(grid, sweep_dir, "--dry-run")
    assert [line.split()[:2] for line in dry.output.splitlines()] == [
        [broken.name, "redo"], [intact.name, "done"]]
    result = _invoke(grid, sweep_dir, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    note = f"point {broken.name} was finished but its metrics are unreadable ({metrics}"
    assert f"sweep: note: {note}" in result.output and "): recomputed\n" in result.output
    assert "2 points, 1 done, 1 to run (0 generate runs first)" in result.output
    assert json.loads(metrics.read_text())["records"]  # computed again
    assert (intact / POINT_MARKER).stat().st_mtime_ns == kept
    assert f"- note: {note}" in (sweep_dir / SUMMARY_FILE).read_text()
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert {r["point"] for r in rows if r["method"] == "topk"} == {broken.name, intact.name}
    dry = _invoke(grid, sweep_dir, "--dry-run")
    assert [line.split()[1] for line in dry.output.splitlines()] == ["done", "done"]


@pytest.mark.slow
def test_the_aggregate_leaves_out_a_point_whose_metrics_are_unreadable_with_a_note(
        two_points, tmp_path, no_sweep_figures):
    grid, original = two_points
    sweep_dir = tmp_path / "out"
    shutil.copytree(original, sweep_dir, symlinks=True)
    broken, intact = (point_dir(sweep_dir, p) for p in load_grid(grid).points)
    (broken / "evaluate" / METRICS_FILE).write_text("[1, 2")
    echoed = []
    rows = write_aggregate(load_grid(grid), sweep_dir, {"failed": {}}, echo=echoed.append)
    assert {r["point"] for r in rows} == {intact.name}
    assert len(echoed) == 1 and echoed[0].startswith(f"aggregate: note: point {broken.name} left "
                                                     "out: its metrics are unreadable (")
    summary = (sweep_dir / SUMMARY_FILE).read_text()
    assert "1 finished, 0 failed" in summary
    assert f"- note: point {broken.name} left out: its metrics are unreadable" in summary


def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_folder_and_the_pid(tmp_path):
    grid = write_grid(tmp_path / "grid.json", SEEDS, FAST_BASE)
    sweep_dir = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _load_guard_code() + "import time\nwith g.sweep_lock(sys.argv[1]):"
         "\n    print('held', flush=True)\n    time.sleep(60)", str(sweep_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = _invoke(grid, sweep_dir, "--workers", "1")
    finally:
        holder.kill()
        holder.communicate()
    assert result.exit_code == 1
    assert result.output == (f"Error: sweep folder {sweep_dir} is in use by another sweep (pid "
                             f"{holder.pid}); wait for it to end, or stop it, then run again\n")
    assert {p.name for p in sweep_dir.iterdir()} <= {".sweep.lock", ".workers.lock"}  # no run
    with sweep_lock(sweep_dir):  # the holder is gone: free again
        pass


@pytest.mark.slow
def test_a_sweep_refuses_to_start_while_a_leftover_worker_holds_its_folder(tmp_path):
    worker = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(os.path.join(sys.argv[1], '.workers.lock'), os.O_WRONLY | os.O_APPEND | os.O_CREAT)"
         "\nfcntl.flock(fd, fcntl.LOCK_SH)\nos.write(fd, b'%d\\n' % os.getpid())\n"
         "print('held', flush=True)\ntime.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(SweepBusy) as refused:
            with sweep_lock(tmp_path, leftover_wait=0.5):
                pass
        assert time.monotonic() - started >= 0.5  # it waited for the worker to end first
    finally:
        worker.kill()
        worker.communicate()
    assert str(refused.value) == (f"sweep folder {tmp_path}: worker processes of an earlier sweep "
                                  f"still run (pids {worker.pid}); stop them, then run again")
    with sweep_lock(tmp_path, leftover_wait=0.5):  # the worker is gone: free again
        assert (tmp_path / ".workers.lock").read_text() == ""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_a_worker_whose_parent_dies_exits_even_without_the_parent_death_signal(tmp_path):
    # the parent starts a child that only watches its parent pid (no prctl), then dies
    child = (_load_guard_code() + "import os, threading, time\n"
             "threading.Thread(target=g._watch_parent, args=(os.getppid(),), daemon=True).start()"
             "\nprint(os.getpid(), flush=True)\ntime.sleep(60)")
    parent = ("import subprocess, sys, os\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True)"
              "\nprint(p.stdout.readline().strip(), flush=True)\ntime_to_die = sys.stdin.readline()"
              "\nos._exit(0)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    assert _running(grandchild)
    proc.communicate("die\n")
    assert _wait_gone([grandchild], 3.0) == []


# ---- grid sizes and Ray addresses, checked before anything starts (issue 28, item 6) --------
def test_a_grid_above_the_stated_size_is_refused_naming_its_count_unless_forced(tmp_path):
    from unsuperpose.evaluate.sweep.grid import MAX_POINTS, GridError
    axes = {"sae.seed": list(range(100)), "evaluate.seed": list(range(100)),
            "generate.seed": list(range(100)), "sae.dict_ratio": list(range(1, 101))}
    grid = write_grid(tmp_path / "huge.json", axes=axes, base=FAST_BASE)
    start = time.time()
    result = _invoke(grid, tmp_path / "sweep")
    assert time.time() - start < 10  # refused from the count, no point built
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "100,000,000 points, more than 10,000" in " ".join(result.output.split())
    assert "--force" in result.output and not (tmp_path / "sweep").exists()
    small = write_grid(tmp_path / "small.json", axes={"sae.seed": list(range(MAX_POINTS + 1))},
                       base=FAST_BASE)
    with pytest.raises(GridError, match="10,001 points"):
        load_grid(small)


@pytest.mark.slow
def test_a_grid_above_the_stated_size_is_built_when_forced(tmp_path):
    from unsuperpose.evaluate.sweep.grid import MAX_POINTS
    small = write_grid(tmp_path / "small.json", axes={"sae.seed": list(range(MAX_POINTS + 1))},
                       base=FAST_BASE)
    assert len(load_grid(small, force=True).points) == MAX_POINTS + 1


@pytest.mark.parametrize("address", ["not an address", "localhost", "host:port", "host:0",
                                     "host:70000", "http://host:6379", ":6379", "ray://"])
def test_a_ray_address_that_is_not_one_is_refused_before_anything_starts(tmp_path, address):
    grid = write_grid(tmp_path / "grid.json", axes=SEEDS, base=FAST_BASE)
    result = _invoke(grid, tmp_path / "sweep", "--backend", "ray", "--address", address)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Invalid value for --address: {address!r} is not a Ray address" in result.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("address", ["10.0.0.1:6379", "ray://head.example:10001", "[::1]:6379",
                                     "auto", "local"])
def test_the_known_forms_of_a_ray_address_pass(address):
    from unsuperpose.evaluate.sweep.ray_address import address_problem
    assert address_problem(address) is None


def test_a_head_that_does_not_answer_gives_up_after_the_stated_time(monkeypatch):
    import socket

    from unsuperpose.evaluate.sweep.ray_address import check_reachable
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    with pytest.raises(RuntimeError, match=rf"--address 127.0.0.1:{port}: nothing answers at "
                                           rf"127.0.0.1:{port} within 2 s"):
        check_reachable(f"127.0.0.1:{port}", timeout=2)
    assert time.time() - start < 5
    waited = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda addr, timeout: waited.append(timeout) or (_ for _ in ()).throw(
                            TimeoutError("timed out")))
    with pytest.raises(RuntimeError, match="within 15 s"):
        check_reachable("10.255.255.1:6379")  # the default, stated timeout
    assert waited == [15.0]
