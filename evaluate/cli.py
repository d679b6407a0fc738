"""`evaluate`: score every dictionary of a run against the true features; report + figures."""
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
from unsuperpose.evaluate.config import EvaluateConfig

# one option per config field (help, type and choices from evaluate/config.py)
# `external` is --external, repeatable, below
OPTIONS = ConfigOptions(EvaluateConfig, skip=("external",), names={"instances": "--instance"},
                        off={"drop_zero_rows": "--keep-zero-rows"}, hints={"external": "--external"})


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder written by `generate` and `sae`.")
@config_file_option("JSON stage config (a saved evaluate/config.json works); options override it.")
@threads_option
@OPTIONS
@click.option("--external", "externals", multiple=True, metavar="NAME=PATH",
              help="Score a dictionary from outside the run beside its own, as ext:NAME "
                   "(repeatable): a SAELens folder (cfg.json + sae_weights.safetensors; "
                   "standard, topk, jumprelu, batchtopk/matryoshka as SAELens saves them), coded "
                   "by its encoder, or a .safetensors file with a [n_atoms, d] decoder under "
                   "W_dec or components, coded by nonnegative OMP at the stage's k.")
def main(run_dir, config_file, threads, externals, **options):
    """Score the dictionaries in RUN_DIR/sae against the ground truth in RUN_DIR/generate and
    write RUN_DIR/evaluate/ (report.md, metrics.json, metrics.csv, figures/)."""
    from unsuperpose.data.errors import ShardError
    from unsuperpose.data.staging import StageWriteError
    from unsuperpose.evaluate.external import ExternalDictionaryError, parse_spec
    from unsuperpose.evaluate.inputs import StageInputError
    from unsuperpose.evaluate.pipeline import REPORT_FILE, run_evaluate

    set_cpu_threads(threads)
    values = read_config_file(config_file) if config_file is not None else {}
    values.update(OPTIONS.given(options))
    if externals:
        given = values.get("external", {})
        if not isinstance(given, dict):
            raise click.BadParameter("external must map a name to a path", param_hint="--config")
        given, seen = dict(given), set()  # a command-line NAME overrides the config file's
        for spec in externals:
            try:
                name, path = parse_spec(spec)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--external") from None
            if name in seen:
                raise click.BadParameter(f"{name!r} is given twice", param_hint="--external")
            seen.add(name)
            given[name] = path
        values["external"] = given
    config = OPTIONS.build(values, source=str(config_file or "options"))
    try:
        out = run_evaluate(config, run_dir, progress=click_progress, echo=click.echo)
    except ExternalDictionaryError as err:
        raise click.BadParameter(str(err), param_hint="--external") from None
    except StageInputError as err:
        raise click.BadParameter(str(err), param_hint="--run-dir") from None
    except (ShardError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    click.echo(f"wrote {out}")
    errors = dictionary_errors(out)
    if errors and not config.keep_going:
        folders = ", ".join(r.get("folder") or f"{r['instance']}/{r['method']}" for r in errors)
        click.echo(f"Error: {len(errors)} dictionar{'y' if len(errors) == 1 else 'ies'} could "
                   f"not be loaded or applied: {folders} (reasons under Errors in "
                   f"{out / REPORT_FILE}; --keep-going exits 0)", err=True)
        raise SystemExit(1)


def dictionary_errors(out: Path) -> list[dict]:
    """The "error" records (a dictionary that could not be loaded or applied) of the
    metrics.json in the evaluate folder `out`."""
    from unsuperpose.data import files
    from unsuperpose.evaluate.pipeline import METRICS_FILE

    return [r for r in files.read_json(out / METRICS_FILE)["records"] if r["metric"] == "error"]


if __name__ == "__main__":
    main()
