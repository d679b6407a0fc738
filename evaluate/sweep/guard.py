"""One sweep per sweep folder, and no process-pool worker outliving its sweep.

- `sweep_lock(sweep_dir)`: an exclusive, non-blocking flock on `<sweep_dir>/.sweep.lock`
  (which holds the pid of its holder), for as long as a sweep writes there; a second sweep
  on the same folder gets a `SweepBusy` naming the folder and that pid. The kernel drops the
  lock when its holder dies, however it dies.
- `init_worker`, the initializer of the sweep's process pool: the worker ignores Ctrl-C (the
  sweep stops it), asks Linux to SIGKILL it when its parent dies (prctl PR_SET_PDEATHSIG),
  and, on every platform, watches os.getppid() and exits once its parent is gone. It also
  holds a shared flock on `<sweep_dir>/.workers.lock` (and appends its pid there) until it
  ends, so that a sweep that starts while a worker of a killed one still runs waits for it,
  and refuses, naming the pids, if it does not end: a resumed sweep never races a leftover
  worker over the same folders.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from unsuperpose.data import files

try:
    import fcntl
except ImportError:  # not POSIX: no locks (one sweep per folder is then up to the user)
    fcntl = None

LEFTOVER_WAIT_S = 10.0  # how long a new sweep waits for a killed sweep's workers to end
WATCH_PARENT_S = 0.5
PR_SET_PDEATHSIG = 1


class SweepBusy(RuntimeError):
    """Another sweep, or a leftover worker of one, works in this sweep folder."""


@contextmanager
def sweep_lock(sweep_dir: str | Path, leftover_wait: float = LEFTOVER_WAIT_S):
    """Hold the sweep folder for this process (creating the folder); raises SweepBusy when
    another sweep holds it, or a worker of an earlier sweep still runs there."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(sweep_dir / files.SWEEP_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SweepBusy(f"sweep folder {sweep_dir} is in use by another sweep (pid {holder}); "
                            "wait for it to end, or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            _wait_for_leftover_workers(sweep_dir, leftover_wait)
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _wait_for_leftover_workers(sweep_dir: Path, wait: float) -> None:
    fd = os.open(sweep_dir / files.WORKERS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SweepBusy(f"sweep folder {sweep_dir}: worker processes of an earlier "
                                    f"sweep still run (pids {_live_pids(fd) or 'unknown'}); "
                                    "stop them, then run again") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)  # the pids of workers that have all ended
    finally:
        os.close(fd)


def _live_pids(fd: int) -> str:
    pids = []
    for word in os.pread(fd, 1 << 16, 0).decode(errors="replace").split():
        try:
            os.kill(int(word), 0)
            pids.append(word)
        except (ValueError, OSError):
            pass
    return ", ".join(pids)


# ---- in each worker of the process pool ------------------------------------------------------
_held: list[int] = []  # the worker's fd on the workers lock, kept open for its lifetime


def init_worker(parent_pid: int, threads: int, sweep_dir: str | None = None) -> None:
    """The process pool's initializer (runs first in every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep, which stops us
    die_with_parent(parent_pid)
    if sweep_dir is not None and fcntl is not None:
        fd = os.open(Path(sweep_dir) / files.WORKERS_LOCK_FILE,
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held.append(fd)
    import torch

    torch.set_num_threads(threads)


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid`, its parent, ends: at once on Linux (the kernel
    sends SIGKILL), within WATCH_PARENT_S elsewhere (a thread polls os.getppid())."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still ends us
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="watch-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_PARENT_S)
    os._exit(1)
