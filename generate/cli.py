"""`generate`: train toy models of superposition and write their activations + ground truth."""
from __future__ import annotations

from pathlib import Path

import click

from unsuperpose.data.cli import (
    click_progress,
    config_file_option,
    os_error_line,
    read_config_file,
    set_cpu_threads,
    threads_option,
)
from unsuperpose.data.config_cli import ConfigOptions
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.worlds import PRESETS, preset

# one option per config field (help, type and choices from generate/config.py and
# generate/worlds.py); `world` is the --world option below, which also sets the preset's fields;
# --hierarchy-exclusive has always taken a value (true/false), so it stays one
OPTIONS = ConfigOptions(GenerateConfig, skip=("world",), hints={"world": "--world"},
                        types={"hierarchy_exclusive": click.BOOL})


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder; writes <run-dir>/generate/.")
@config_file_option("JSON config (a saved config.json works); options override it.")
@threads_option
@click.option("--world", type=click.Choice(list(PRESETS)), default=None,
              help="Synthetic source: start from the fields of a named benchmark world "
                   "(generate/worlds.py); the other options override them.")
@click.option("--mean-active", type=float, default=None,
              help="Synthetic source: expected active features per row; sets the one "
                   "feature probability to mean_active / n_features.")
@OPTIONS
def main(run_dir: Path, config_file: Path | None, threads: int | None, world: str | None,
         mean_active: float | None, **options) -> None:
    """Train toy models of superposition (or draw a synthetic dictionary) and write their
    hidden activations, true feature values and ground-truth directions to RUN_DIR/generate."""
    # heavy imports inside the command keep --help fast
    from unsuperpose.data.environment import resolve_device
    from unsuperpose.generate.pipeline import run_generate

    values = read_config_file(config_file) if config_file is not None else {}
    if world is not None:  # a command-line option, so over the file's fields it names
        values.update(preset(world))
    values.update(OPTIONS.given(options))
    if mean_active is not None:
        if values.get("probability_schedule", "constant") != "constant":
            raise click.BadParameter("sets one probability for every feature, so it needs the "
                                     "constant --probability-schedule", param_hint="--mean-active")
        n = values.get("n_features", GenerateConfig.n_features)
        if not isinstance(n, int) or isinstance(n, bool):
            OPTIONS.build(values, source=str(config_file or "options"))  # refuses n_features
        if not 0 < mean_active <= n:
            raise click.BadParameter(f"must lie in (0, n_features={n}], got {mean_active}",
                                     param_hint="--mean-active")
        values["feature_probability"] = (mean_active / n,)
    config = OPTIONS.build(values, source=str(config_file or "options"))
    # the toy models' step: [batch, instances, n_features] @ [n_features, d_hidden]
    set_cpu_threads(threads, work=float(config.batch_size) * len(config.instance_ids)
                    * config.n_features * config.d_hidden)
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None

    click.echo(f"generate: {len(config.instance_ids)} instance(s) -> {run_dir / 'generate'}")
    from unsuperpose.data.staging import StageWriteError

    try:
        out = run_generate(config, run_dir, progress=click_progress, echo=click.echo)
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
