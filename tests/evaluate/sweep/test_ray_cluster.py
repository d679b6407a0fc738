"""The sweep's ray backend on a real, if local, Ray cluster: a head node and a worker node
started with `ray start` as a user would (each its own session and temp dir), the sweep
joining them with `--backend ray --address`. Points run on both nodes and aggregate to the
local backend's numbers; a worker node killed while it runs a point does not lose the point:
Ray runs it again on the head, and the aggregate is still the local one.

Teardown kills the processes of the sessions these tests started, never `ray stop` (which
stops every Ray on the machine)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("ray")

from unsuperpose.evaluate.sweep.aggregate import AGGREGATE_CSV, read_csv  # noqa: E402
from unsuperpose.evaluate.sweep.cli import main  # noqa: E402
from unsuperpose.evaluate.sweep.runner import POINT_MARKER, WORKER_FILE  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).with_name("ray")
# two points (dictionary ratios) over one generate run, as small as test_sweep's
GRID = {"base": {"generate": {"n_features": 6, "d_hidden": 3, "steps": 100, "batch_size": 256,
                              "rows": 2000, "rows_per_shard": 2000, "device": "cpu",
                              "feature_probability": 0.05},
                 "sae": {"methods": ["topk", "mod"], "device": "cpu",
                         "params": {"*": {"n_epochs": 5, "n_iter": 3, "batch_size": 256}}},
                 "evaluate": {"max_rows": 500, "figures": False}},
        "axes": {"sae.dict_ratio": [1, 2]}}
# a loopback test cluster: no token auth (Ray enables it when ~/.ray/auth_token exists, and
# then wants the token in every process), no usage report, and a dead node noticed in seconds
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
START_S, SWEEP_S = 90, 150


def _env():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **RAY_ENV, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """The live processes of session `sid` (field 6 of /proc/PID/stat; zombies, state Z,
    left out; the name, field 2, may hold spaces and parentheses, so the fields are counted
    after its last ')')."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # exited meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


class Node:
    """`ray start ... --block` in a session of its own: its raylet, agents and workers are
    that session's processes, killed together. (Not one process group: Ray puts each task
    worker in a group of its own, so a worker killed only with its node's group lived on,
    finished its point and committed it on the dead node.)"""

    def __init__(self, temp_dir: Path, args: list[str]):
        self.temp_dir = temp_dir
        self.log = temp_dir.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(RAY), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                 "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                 "--temp-dir", str(temp_dir), "--block"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
                start_new_session=True)
        self.sid = self.proc.pid

    def wait_started(self) -> str:
        """This node's Ray node id, once it runs."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text()[-3000:]}")
            ports = list((self.temp_dir / "session_latest").glob("metrics_export_port_*"))
            if ports and "Ray runtime started" in self.log.read_text(errors="replace"):
                return ports[0].name.rsplit("_", 1)[1]
            time.sleep(0.2)
        raise AssertionError(f"ray start did not start in {START_S} s:\n"
                             f"{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return bool(_session_pids(self.sid))

    def kill(self) -> None:
        for _ in range(5):  # again, for a worker the raylet started meanwhile
            for pid in _session_pids(self.sid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:  # children reaped by init
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    nodes = []
    try:
        port = _free_port()
        head = Node(root / "head", [
            "--head", "--port", str(port), "--include-dashboard", "false",
            "--dashboard-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port())])
        nodes.append(head)
        # started at once: a joining node waits for the head's GCS to answer
        worker = Node(root / "worker", [
            "--address", f"127.0.0.1:{port}",
            "--dashboard-agent-listen-port", str(_free_port())])
        nodes.append(worker)
        head_id, worker_id = head.wait_started(), worker.wait_started()
        assert head_id != worker_id
        yield {"address": f"127.0.0.1:{port}", "head": head, "worker": worker,
               "head_id": head_id, "worker_id": worker_id}
    finally:
        for node in reversed(nodes):
            node.kill()
        leftover = [n.sid for n in nodes if n.alive()]
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"sessions {leftover} outlived the cluster"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.json"
    path.write_text(json.dumps(GRID))
    return path


@pytest.fixture(scope="module")
def local_rows(grid):
    """The local backend's aggregate of the same grid, by (point, method)."""
    sweep_dir = grid.parent / "local"
    result = CliRunner().invoke(main, [str(grid), "--sweep-dir", str(sweep_dir), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return {(r["point"], r["method"]): r for r in read_csv(sweep_dir / AGGREGATE_CSV)}


def _sweep(grid, sweep_dir, address):
    return subprocess.Popen(
        [sys.executable, "-m", "unsuperpose.evaluate.sweep", str(grid), "--sweep-dir", str(sweep_dir),
         "--backend", "ray", "--address", address, "--threads", "1"],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def _finish(proc):
    try:
        output, _ = proc.communicate(timeout=SWEEP_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the sweep did not end in {SWEEP_S} s:\n{output}") from None
    assert proc.returncode == 0, output
    return output


def _assert_same_aggregate(sweep_dir, local_rows):
    rows = read_csv(sweep_dir / AGGREGATE_CSV)
    assert len(rows) == len(local_rows) == 2 * (2 + 2)  # points x (methods + oracle, random)
    for row in rows:
        expected = local_rows[row["point"], row["method"]]
        assert row.keys() == expected.keys()
        for key in row:
            if key != "fit_seconds":  # a timing
                assert row[key] == expected[key], (row["point"], row["method"], key)


def _ran_on(sweep_dir):
    """{point folder name: the Ray node id its finished run recorded}."""
    out = {}
    for marker in sorted(Path(sweep_dir).glob(f"points/*/{POINT_MARKER}")):
        recorded = json.loads(marker.read_text())["worker"]
        assert recorded == json.loads((marker.parent / WORKER_FILE).read_text())
        out[marker.parent.name] = recorded["ray_node_id"]
    return out


def test_a_sweep_on_a_two_node_cluster_uses_both_nodes_and_matches_the_local_one(
        cluster, grid, local_rows, tmp_path):
    sweep_dir = tmp_path / "ray"
    output = _finish(_sweep(grid, sweep_dir, cluster["address"]))
    ran_on = _ran_on(sweep_dir)
    assert len(ran_on) == 2
    # one CPU a node, one CPU a point: the two points ran at once, one on each node
    assert set(ran_on.values()) == {cluster["head_id"], cluster["worker_id"]}, output
    _assert_same_aggregate(sweep_dir, local_rows)


def _sweep_killing_the_worker(grid, sweep_dir, cluster):
    """(the sweep's output, the point running on the worker node when that node was killed,
    or None where no point ran there)."""
    proc = _sweep(grid, sweep_dir, cluster["address"])
    killed = None
    try:
        deadline = time.monotonic() + SWEEP_S
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            for record in sweep_dir.glob(f"points/.*.partial/{WORKER_FILE}"):
                try:
                    node = json.loads(record.read_text())["ray_node_id"]
                except (OSError, ValueError):  # renamed into place meanwhile
                    continue
                if node == cluster["worker_id"]:  # a point is running on the worker node
                    cluster["worker"].kill()
                    # still staged when its node died (Ray takes seconds to notice): unfinished
                    assert record.parent.is_dir() and not record.parent.is_symlink()
                    killed = record.parent.name[1:-len(".partial")]
                    break
            time.sleep(0.02)
    finally:
        if killed is None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return _finish(proc), killed


def test_a_point_whose_node_dies_mid_run_is_run_again_elsewhere(
        cluster, grid, local_rows, tmp_path):
    # where Ray still put both points on the head (scheduling is Ray's), sweep again afresh
    for attempt in range(3):
        sweep_dir = tmp_path / f"ray{attempt}"
        output, killed = _sweep_killing_the_worker(grid, sweep_dir, cluster)
        if killed is not None:
            break
    assert killed is not None, f"no point ran on the worker node in 3 sweeps:\n{output}"
    assert not cluster["worker"].alive()
    assert "FAILED" not in output and "point(s) failed" not in output, output
    ran_on = _ran_on(sweep_dir)
    assert len(ran_on) == 2
    assert ran_on[killed] == cluster["head_id"], output  # re-run on the node still alive
    assert not list(sweep_dir.glob("points/.*")), "a staging folder was left"
    _assert_same_aggregate(sweep_dir, local_rows)
