"""`unsuperpose paper --out runs/paper`: reproduce Toy Models of Superposition."""
from __future__ import annotations

from pathlib import Path

import click

from unsuperpose.data.cli import os_error_line, set_cpu_threads, threads_option
from unsuperpose.data.config_cli import ConfigOptions
from unsuperpose.generate.paper.config import PaperConfig

OPTIONS = ConfigOptions(PaperConfig)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/paper"),
              help="Output folder: report.md, the figures, their data and config.json.")
@click.option("--force", is_flag=True, default=False,
              help="Retrain even when OUT holds a complete result of the same config.")
@threads_option
@OPTIONS
def main(out: Path, force: bool, threads: int | None, **options) -> None:
    """Train the toy models of Elhage et al. (2022) and write OUT/report.md: each figure with
    the paper's finding and our number that checks it."""
    from unsuperpose.data.environment import resolve_device
    from unsuperpose.data.staging import StageWriteError
    from unsuperpose.generate.paper.report import run_paper

    set_cpu_threads(threads)
    config = OPTIONS.build(OPTIONS.given(options))
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    try:
        path, reused = run_paper(config, out, echo=lambda s: click.echo(s), force=force)
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    click.echo(f"{'reused' if reused else 'wrote'} {path / 'report.md'}")

