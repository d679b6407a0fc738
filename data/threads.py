"""How many CPU threads torch uses: the one rule for the commands and the estimators.

The toy problems are small matrices. torch's default (one OpenMP thread per core) makes
every small op wait for a thread team, and on a machine that other processes also use, the
team's threads spin against them: measured 11-19x slower than one thread (issue 28). So:

- **OpenMP does not spin.** `quiet_openmp()` sets OMP_WAIT_POLICY=PASSIVE (and Intel's
  KMP_BLOCKTIME=0) unless already set. OpenMP reads them once, when torch loads it, so the
  package root calls it on import: it takes effect wherever `unsuperpose` is imported before
  torch (every command; a script's `import unsuperpose...` before `import torch`).
- **`auto`: one thread unless the problem is large and cores are free.** `choose_threads(work)`
  gives 1 when `work` (multiply-adds of the fit's typical op, e.g. batch x d x n_components)
  is under SMALL_WORK or unknown, else the free cores: those this process may run on
  (os.sched_getaffinity) less the other runnable work now (/proc/loadavg's running count,
  read a few times; os.getloadavg elsewhere), at least 1. Were a neighbour to start later, the
  passive waiting keeps two threads on one free core close to one thread's speed.
- **Explicit counts win.** `--threads N` sets N exactly; the estimators' `fit`/`transform` run
  under `fit_threads(work)`, which chooses for that call and restores the count after, unless
  the user chose it: `--threads N`, an OMP_NUM_THREADS / MKL_NUM_THREADS in the environment,
  or a `torch.set_num_threads` call (seen as a count other than the one torch started with,
  read when `unsuperpose.sae` is imported, and the one unsuperpose last set).
"""
from __future__ import annotations

import contextlib
import math
import os
import time

AUTO = "auto"
THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # a user's count when set
# multiply-adds per op under which one thread is fastest on the measured 2-core machine, quiet
# and loaded (benchmarks/bench_threads.py): a (1024 x 64) @ (64 x 512) product still is, and
# so are MOD on 16k rows, d 32, 128 atoms and the paper's geometry models (6-7e7), within noise
SMALL_WORK = 1e8
_QUIET = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

_state = {"default": None, "ours": None, "explicit": False, "depth": 0, "last": None}


def quiet_openmp() -> None:
    """Passive OpenMP waiting (threads sleep, not spin, between parallel regions), unless the
    user set the variables; effective only before torch is first imported."""
    for key, value in _QUIET.items():
        os.environ.setdefault(key, value)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_load(samples: int = 5, pause: float = 0.002) -> float:
    """Runnable work besides this process now: the most of `samples` reads of /proc/loadavg's
    running count, less this process (a CPU-bound neighbour is runnable in every read). The
    1-minute load average where that file is missing: it lags, and counts this process's own
    recent work, so it is the fallback, not the rule."""
    try:
        running = []
        for i in range(samples):
            with open("/proc/loadavg") as f:
                running.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(pause)
        return float(max(0, max(running)))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def free_cores() -> int:
    """Cores no other process is using now, at least 1."""
    return max(1, usable_cores() - math.floor(other_load() + 0.5))


def choose_threads(work: float | None = None) -> int:
    """The `auto` count for a problem of `work` multiply-adds per op (module docstring)."""
    if work is None or work < SMALL_WORK:
        return 1
    return free_cores()


def parse_threads(value) -> int | str:
    """`--threads` as given: "auto" or an integer >= 1 (ValueError otherwise)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected auto or an integer >= 1, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"expected auto or an integer >= 1, got {value!r}")
    if not 1 <= number <= 4096:
        raise ValueError(f"must lie in [1, 4096] (or auto), got {value!r}")
    return number


def set_threads(value, work: float | None = None) -> int:
    """A command's threads, before it imports torch: "auto" (choose_threads(work), which the
    estimators may change per fit) or an explicit count that nothing changes. Returns the
    count torch now uses."""
    value = parse_threads(value)
    import torch

    torch_default_threads()
    if value == AUTO:
        if not _user_chose(torch):
            _set(torch, choose_threads(work))
    else:
        torch.set_num_threads(value)
        _state["explicit"] = True
    return torch.get_num_threads()


@contextlib.contextmanager
def fit_threads(work: float | None):
    """torch's threads chosen for one fit or transform of `work` multiply-adds per op and
    restored after; left alone when the user chose them (module docstring). Nested calls
    (a fit inside a fit) keep the outer choice."""
    import torch

    torch_default_threads()
    if _state["depth"] or _user_chose(torch):
        _state["depth"] += 1
        if not _state["depth"] - 1:
            _state["last"] = torch.get_num_threads()
        try:
            yield torch.get_num_threads()
        finally:
            _state["depth"] -= 1
        return
    before = torch.get_num_threads()
    _set(torch, choose_threads(work))
    _state["last"] = torch.get_num_threads()
    _state["depth"] += 1
    try:
        yield torch.get_num_threads()
    finally:
        _state["depth"] -= 1
        _set(torch, before)


def last_fit_threads() -> int | None:
    """The count the latest outermost fit or transform ran with (None before any)."""
    return _state["last"]


def torch_default_threads() -> int:
    """torch's count as it was the first time this was called (sae/base.py calls it on
    import), before unsuperpose changed it."""
    if _state["default"] is None:
        import torch

        _state["default"] = torch.get_num_threads()
    return _state["default"]


def _user_chose(torch) -> bool:
    if _state["explicit"] or any(os.environ.get(key) for key in THREADS_ENV):
        return True
    now = torch.get_num_threads()
    return now != _state["default"] and now != _state["ours"]


def _set(torch, n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _state["ours"] = n
