"""Helpers the stage commands share: progress bars, list options, config files, CPU threads."""
from __future__ import annotations

import contextlib
from pathlib import Path

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


@contextlib.contextmanager
def click_progress(label: str, total: int):
    """A click progress bar with `.update(n, text)`; the shape the stage pipelines expect."""
    info = {"text": ""}
    with click.progressbar(length=max(total, 1), label=label, show_pos=True, show_eta=True,
                           item_show_func=lambda _: info["text"]) as bar:
        class Bar:
            def update(self, n: int, text: str = "") -> None:
                info["text"] = text
                bar.update(n)
        yield Bar()


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
