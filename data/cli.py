"""Helpers the stage commands share: progress bars, list options, config files, CPU threads."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import click


class FloatList(click.ParamType):
    """A comma-separated list of numbers: 0.3,0.1,0.03."""

    name = "FLOAT[,FLOAT...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(float(v) for v in value)
        try:
            return tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


class NameList(click.ParamType):
    """A comma-separated list of names: topk,ksvd_nn."""

    name = "NAME[,NAME...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


def read_config_file(path) -> dict:
    """The fields of a `--config` JSON file: a bare field dict or a saved stage config.json
    (whose fields sit under "config"). The one reader of every stage's --config: a missing,
    unreadable or malformed file is a usage error naming the option (one line, exit 2)."""
    from unsuperpose.data.files import read_json

    path = Path(path)
    if not path.is_file():
        raise click.BadParameter(f"{path}: file not found", param_hint="--config")
    try:
        saved = read_json(path)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    except OSError as err:
        raise click.BadParameter(os_error_line(err), param_hint="--config") from None
    values = saved.get("config", saved) if isinstance(saved, dict) else saved
    if not isinstance(values, dict):
        raise click.BadParameter(f"{path}: expected a JSON object of config fields",
                                 param_hint="--config")
    return dict(values)


def config_file_option(help_text: str):
    """The `--config FILE` option of a stage command (read with read_config_file)."""
    return click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help=help_text)


class Threads(click.ParamType):
    """`--threads`: auto or an integer >= 1 (data/threads.py)."""

    name = "auto|INTEGER"

    def convert(self, value, param, ctx):
        from unsuperpose.data.threads import parse_threads

        try:
            return parse_threads(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


threads_option = click.option(
    "--threads", type=Threads(), default="auto",
    help="torch CPU threads: auto picks 1 for small problems and the free cores for large "
         "ones (per fit), with OpenMP waiting passively; N: exactly N.")


LOG_INTERVAL = 30.0  # seconds between the progress lines of a long job in a log


@contextlib.contextmanager
def click_progress(label: str, total: int, interval: float | None = None,
                   clock: Callable[[], float] = time.monotonic):
    """A progress display with `.update(n, text)`; the shape the stage pipelines expect.
    On a terminal, click's progress bar. Anywhere else (a log file, a pipe, nohup): the label
    when the job starts, then a line at least every `interval` seconds, also while one step
    runs (a timer thread), and one at the end when there were any: position, the latest
    text (FVU, loss), elapsed time and an estimate of the time left. `interval` defaults to
    LOG_INTERVAL."""
    if _is_terminal():
        info = {"text": ""}
        with click.progressbar(length=max(total, 1), label=label, show_pos=True, show_eta=True,
                               item_show_func=lambda _: info["text"]) as bar:
            class Bar:
                def update(self, n: int, text: str = "") -> None:
                    info["text"] = text
                    bar.update(n)
            yield Bar()
        return
    log = _ProgressLog(label, max(total, 1), LOG_INTERVAL if interval is None else interval, clock)
    stop = threading.Event()
    timer = threading.Thread(target=log.beat, args=(stop,), daemon=True)
    timer.start()
    try:
        yield log
    finally:
        stop.set()
        timer.join()
        log.finish()


class _ProgressLog:
    """click_progress away from a terminal: plain lines, printed under a lock (the timer
    thread and the job both print)."""

    def __init__(self, label: str, total: int, interval: float, clock: Callable[[], float]):
        self.label, self.total, self.interval, self.clock = label, total, interval, clock
        self.pos, self.text, self.lines = 0, "", 0
        self.started = self.last = clock()
        self.lock = threading.Lock()
        click.echo(label)

    def update(self, n: int, text: str = "") -> None:
        with self.lock:
            self.pos += n
            self.text = text or self.text
            if self.clock() - self.last >= self.interval:
                self._line()

    def beat(self, stop: threading.Event) -> None:
        """The timer thread: a line whenever `interval` passed without one."""
        while not stop.wait(self.interval / 4):
            with self.lock:
                if self.clock() - self.last >= self.interval:
                    self._line()

    def finish(self) -> None:
        with self.lock:
            if self.lines:  # a job long enough to have shown its progress: say it ended
                self._line(done=True)

    def _line(self, done: bool = False) -> None:
        now = self.clock()
        elapsed = now - self.started
        parts = [f"{self.pos}/{self.total}" + ("" if done else f" ({self.pos / self.total:.0%})")]
        if self.text:
            parts.append(self.text)
        parts.append(f"{_seconds(elapsed)} elapsed")
        if not done and 0 < self.pos < self.total:
            parts.append(f"~{_seconds(elapsed * (self.total - self.pos) / self.pos)} left")
        click.echo(f"  {self.label}: {'done, ' if done else ''}{', '.join(parts)}")
        self.last, self.lines = now, self.lines + 1


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s // 60:.0f} min {s % 60:02.0f} s"


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def optional_options(specs):
    """Decorator adding `(flag, type, help)` options that default to None, so a command can
    tell an option that was given from one left to the config file or the defaults."""
    def decorate(func):
        for flag, kind, help_text in reversed(specs):
            func = click.option(flag, type=kind, default=None, help=help_text)(func)
        return func
    return decorate


class _SilentBar:
    def update(self, n: int, text: str = "") -> None:
        pass


def silent_progress(label: str, total: int):
    """The `click_progress` shape that shows nothing: for library callers and tests."""
    return contextlib.nullcontext(_SilentBar())


def set_cpu_threads(threads="auto", work: float | None = None) -> int:
    """torch CPU threads for a command (call it before the command imports torch): "auto"
    (None too) chooses from `work`, the multiply-adds of the command's typical op, and the
    free cores, and lets the estimators choose per fit; an integer is obeyed exactly. The
    rule: data/threads.py. Returns torch's count."""
    from unsuperpose.data.threads import AUTO, set_threads

    try:
        return set_threads(AUTO if threads is None else threads, work)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--threads") from None


def os_error_line(err: OSError) -> str:
    """One line for an operating-system error a stage hit while reading or writing (disk
    full, read-only mount, a folder in the way): the path and the reason, no traceback."""
    if err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return err.strerror or str(err)
