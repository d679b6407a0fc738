"""Helpers the stage commands share: progress bars, list options, CPU threads."""
from __future__ import annotations

import contextlib

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


def set_cpu_threads(threads: int | None) -> int:
    """torch CPU threads for a command: None leaves torch's default.

    The toy problems are small matrices; on a 2-core machine that something else also uses,
    two OpenMP threads wait on each other at every small op (measured 10x slower), so the
    commands take --threads to pin it.
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
