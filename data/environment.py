"""Where a stage runs and with what: the device it resolves and the package versions (and
source checkout) that every stage records in its config.json."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

import unsuperpose

_GIT_TIMEOUT_S = 2.0  # a stuck git (network file system, lock) must not hold up a stage


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when torch sees one, else cpu; an explicit 'cuda' on a machine without
    one (or 'cuda:N' beyond its devices) is refused here, with the value, instead of deep
    inside the first kernel."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)") from err
    if dev.type not in ("cpu", "cuda") and not device_available(dev):  # mps, xpu, meta, ...
        raise ValueError(f"device {device!r} asked for, but torch cannot use it on this machine "
                         f"(valid: auto, cpu, cuda, cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but torch sees only "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def device_available(device: str | torch.device) -> bool:
    """Whether `device` (a torch device or its name) can be used on this machine; never raises."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if dev.type == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return False


def load_device(requested: str | None, saved: str | None) -> torch.device:
    """The device to load a saved object onto.

    requested: None = the `saved` device (where it was fitted) when this machine has it, else
    cpu: a file written on a GPU machine always loads on a CPU-only one. A string is resolved
    strictly (`resolve_device`): asking for a device that is missing is an error.
    """
    if requested is not None:
        return resolve_device(requested)
    if saved == "auto":
        return resolve_device("auto")
    if saved is not None and device_available(saved):
        return torch.device(saved)
    return torch.device("cpu")


def _run_git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):  # no git, a timeout
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def source_checkout(root: str | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding this package's source, or (None, None) when
    the source is not the top of a checkout (an installed copy, a tarball) or git is missing.

    dirty: `git status --porcelain` lists anything (modified, staged or untracked files).
    Cached per process: the code a process runs does not change under it.
    """
    try:
        root_path = Path(root if root is not None else Path(unsuperpose.__file__).parent.parent).resolve()
        top = _run_git(root_path, "rev-parse", "--show-toplevel")
        # a package installed into a venv that lives inside some checkout is not that checkout
        if top is None or Path(top.strip()).resolve() != root_path:
            return None, None
    except (OSError, ValueError, TypeError):
        return None, None
    commit = _run_git(root_path, "rev-parse", "HEAD")
    if commit is None:  # a repository with no commit yet
        return None, None
    status = _run_git(root_path, "status", "--porcelain")
    return commit.strip(), (None if status is None else bool(status.strip()))


def environment(device: str) -> dict:
    """Package versions, the project's version and source commit, and the device, for
    config.json."""
    import datasets
    import numpy
    import safetensors
    import sklearn

    commit, dirty = source_checkout()
    return {"unsuperpose": unsuperpose.__version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "datasets": datasets.__version__,
            "safetensors": safetensors.__version__, "scikit-learn": sklearn.__version__,
            "device": device,
            "device_name": (torch.cuda.get_device_name(torch.device(device))
                            if device.startswith("cuda") else platform.processor() or platform.machine())}
