"""How a stage makes its output folder visible: built in staging, then swapped in whole.

A stage (`generate/`, `sae/`, `evaluate/`) is written under `.<name>.tmp-XXXX` beside its
final folder. When everything is written, a marker (`.complete`) goes in last and the folder
is exchanged with the old one in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`; where
the kernel or the file system lacks it, two renames, which the recovery below completes).
So a reader sees the whole old stage or the whole new one, never a mixture.

A command killed halfway leaves a `.tmp-*` (and, between the two fallback renames, an
`.old-*`) folder behind. `recover(final)` runs at the start of every stage command, under
the run's lock: it finishes a swap that was cut short, brings back an old folder whose
replacement never completed, removes the rest, and says what it did.

A stage never replaces what it did not write: `check_replaceable(final, stage)` refuses, before
any work, a `final` that is a file or link, the current folder (or one above it), or a folder
holding anything but the stage's own config.json and the files it records (or `known` lists).

`run_lock(run_dir)` is an exclusive `fcntl.flock` on `<run_dir>/.lock`, so that two
commands never write the same run at once; the second is refused with the pid of the first.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from unsuperpose.data import files

COMPLETE_MARKER = files.COMPLETE_MARKER  # an alias, for the modules that import it from here

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class StageWriteError(OSError):
    """A stage cannot write its folder (read-only, locked by another command, ...)."""


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where renameat2 is not available here."""
    fn = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _leftovers(final: Path, kind: str) -> list[Path]:
    if not final.parent.is_dir():
        return []
    return sorted(final.parent.glob(files.staging_prefix(final.name, kind) + "*"))


def recover(final: str | os.PathLike) -> list[str]:
    """Clean up after a stage command that was killed; returns one line per thing done.

    - final missing, a complete staging folder present: the kill fell between the two
      renames of a swap; the new folder is moved into place.
    - final missing, an old folder present: it is moved back.
    - everything else left over (incomplete staging, old copies) is removed.
    """
    final = Path(final)
    done = []
    tmps, olds = _leftovers(final, files.STAGING_TMP), _leftovers(final, files.STAGING_OLD)
    if not final.exists():
        complete = [t for t in tmps if (t / files.COMPLETE_MARKER).is_file()]
        if complete:
            newest = max(complete, key=lambda t: (t / files.COMPLETE_MARKER).stat().st_mtime_ns)
            os.replace(newest, final)
            tmps.remove(newest)
            done.append(f"{final}: completed the swap of a run that was interrupted "
                        f"after it had finished writing")
        elif olds:
            newest = max(olds, key=lambda t: t.stat().st_mtime_ns)
            os.replace(newest, final)
            olds.remove(newest)
            done.append(f"{final}: restored the previous folder, whose replacement was "
                        f"interrupted")
    for path in tmps + olds:
        if path.is_symlink() or not path.is_dir():  # not a folder a stage stages in: not ours
            done.append(f"{path}: not a staging folder, left as it is (move it away)")
            continue
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"{path}: removed, left over from an interrupted run")
    return done


def _recorded(saved: dict) -> set[str] | None:
    """The files a stage's config.json says it wrote ("files": a list, or {path: ...})."""
    listed = saved.get("files")
    if isinstance(listed, dict):
        listed = list(listed)
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        return None
    return set(listed)


def check_replaceable(final: str | os.PathLike, stage: str,
                      known: Callable[[Path, dict], set[str]] | None = None) -> None:
    """Refuse (StageWriteError, one line naming `final`) to swap out a `final` that this
    command did not write: a regular file or a link; the current folder or one above it (it
    cannot be renamed away); a folder holding files unless its config.json is `stage`'s and
    every file is that config.json, one its "files" lists or one `known(final, config)` names
    (when neither lists anything, a folder whose config.json is `stage`'s is the stage's). A
    missing or empty folder is fine."""
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise StageWriteError(errno.ENOTDIR, (
            f"{final}: is a {'link' if final.is_symlink() else 'file'}, not a folder that "
            f"`{stage}` wrote; it is left as it is: move it away or choose another path"))
    here, target = Path.cwd().resolve(), final.resolve()
    if target == here or target in here.parents:
        raise StageWriteError(errno.EBUSY, (
            f"{final}: is the current folder or holds it, which a new result cannot replace; "
            f"give a folder inside it (e.g. {final / stage})"))
    present = sorted(str(p.relative_to(final)) for p in final.rglob("*")
                     if p.is_file() or p.is_symlink())
    if not present:
        return
    try:
        saved = files.read_json(final / files.CONFIG_FILE)
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("stage") == stage:
        allowed = _recorded(saved)
        if known is not None:
            allowed = (allowed or set()) | known(final, saved)
        if allowed is None:
            return
        foreign = [p for p in present if p != files.CONFIG_FILE and p not in allowed]
    else:
        foreign = present
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StageWriteError(errno.ENOTEMPTY, (
            f"{final}: holds files that `{stage}` did not write ({shown}); it is not replaced: "
            f"move them away or choose another folder"))


class StagingDir:
    """Build a stage's output folder under a temporary name, then swap it into place.

        with StagingDir(run_dir / "sae") as tmp:
            ... write everything under tmp ...
        # on clean exit: tmp has replaced run_dir / "sae"; on an exception: tmp is removed
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.path: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(
                prefix=files.staging_prefix(self.final.name, files.STAGING_TMP), dir=self.final.parent))
        except OSError as err:  # read-only, read-only mount, disk full, a file in the way
            raise StageWriteError(err.errno, f"{self.final.parent}: cannot write here "
                                             f"({err.strerror})") from None
        os.chmod(self.path, 0o755)  # mkdtemp makes it 0700; a stage folder is for everyone
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.path is not None
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        _fsync_tree(self.path)
        (self.path / files.COMPLETE_MARKER).touch()
        if not self.final.exists():
            os.replace(self.path, self.final)
        elif exchange(self.path, self.final):  # self.path now holds the old folder
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            old = self.final.with_name(files.staging_prefix(self.final.name, files.STAGING_OLD)
                                       + str(os.getpid()))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
            os.replace(self.path, self.final)  # a kill before this line: recover() finishes it
            shutil.rmtree(old, ignore_errors=True)
        (self.final / files.COMPLETE_MARKER).unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    """Flush what the stage wrote (files, then their folders' entries), so a crash after the
    swap cannot leave empty or missing files."""
    for folder, _, names in os.walk(root, topdown=False):
        for path in [os.path.join(folder, name) for name in names] + [folder]:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str, create: bool = True) -> Iterator[None]:
    """Hold `<run_dir>/.lock` exclusively; a second writer is refused, naming the first.
    create=False: a missing run folder is a FileNotFoundError (no folder made for a typo)."""
    run_dir = Path(run_dir)
    if not create and not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder; run `generate --run-dir "
                                f"{run_dir}` first")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / files.RUN_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise StageWriteError(err.errno, f"{run_dir}: cannot write here ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StageWriteError(errno.EWOULDBLOCK, (
                f"{run_dir}: another command is writing this run ({holder}); "
                f"wait for it to finish, then run `{command}` again")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def stage_transaction(run_dir: str | os.PathLike, stage: str, command: str,
                      echo: Callable[[str], None] = lambda s: None,
                      known: Callable[[Path, dict], set[str]] | None = None) -> Iterator[Path]:
    """Lock the run, recover any stage folder a killed command left, refuse a `<run_dir>/<stage>`
    this stage did not write (`check_replaceable`, with `known`), and yield a staging folder
    that replaces it when the block ends without an exception."""
    run_dir = Path(run_dir)
    with run_lock(run_dir, command, create=stage == files.GENERATE_DIR):
        for name in files.STAGE_DIRS:
            for line in recover(run_dir / name):
                echo(f"  recovered: {line}")
        check_replaceable(run_dir / stage, stage, known)
        with StagingDir(run_dir / stage) as staging:
            yield staging
