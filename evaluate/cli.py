"""`evaluate`: score every dictionary of a run against the true features; report + figures."""
from __future__ import annotations

from pathlib import Path

import click

from data.cli import (FloatList, NameList, click_progress, optional_options, os_error_line,
                      read_config_file, set_cpu_threads)

# every option defaults to None so that --config FILE values are only overridden on purpose
_OPTIONS = [
    ("--methods", NameList(), "Methods to score [every one stage 2 fitted]."),
    ("--instance", NameList(), "Instance ids to score [every instance]."),
    ("--max-rows", int, "Rows per instance for the code-level metrics; 0: directions only [32768]."),
    ("--thresholds", FloatList(), "Matched cosines that count as recovered [0.9,0.99]."),
    ("--duplicate-cosine", float, "Atoms closer than this cosine are duplicates [0.95]."),
    ("--seed", int, "Seeds the choice of evaluation rows [0]."),
    ("--on-nonfinite", click.Choice(["error", "drop"]),
     "An evaluation row with NaN/inf: stop naming shard and row, or drop and count it [error]."),
]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder written by `generate` and `sae`.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON stage config (a saved evaluate/config.json works).")
@click.option("--drop-zero-rows/--keep-zero-rows", default=None,
              help="Leave out rows where no feature fired [drop].")
@click.option("--figures/--no-figures", default=None, help="Draw figures/*.png [draw].")
@click.option("--keep-going/--no-keep-going", default=None,
              help="Exit 0 even when a dictionary cannot be loaded or applied (it is still "
                   "listed under Errors in report.md) [exit 1].")
@click.option("--threads", type=int, default=None, help="torch CPU threads [torch's default].")
@optional_options(_OPTIONS)
def main(run_dir, config_file, drop_zero_rows, figures, keep_going, threads, **options):
    """Score the dictionaries in RUN_DIR/sae against the ground truth in RUN_DIR/generate and
    write RUN_DIR/evaluate/ (report.md, metrics.json, metrics.csv, figures/)."""
    from data.shards import ShardError
    from data.staging import StageWriteError
    from evaluate.config import ConfigError, EvaluateConfig
    from evaluate.inputs import StageInputError
    from evaluate.pipeline import REPORT_FILE, run_evaluate

    set_cpu_threads(threads)
    values = read_config_file(config_file) if config_file is not None else {}
    options["instances"] = options.pop("instance")
    options["drop_zero_rows"], options["figures"] = drop_zero_rows, figures
    options["keep_going"] = keep_going
    values.update({k: v for k, v in options.items() if v is not None})
    try:
        config = EvaluateConfig.from_dict(values, source=str(config_file or "options"))
    except ConfigError as err:
        hint = "--instance" if err.field == "instances" else f"--{err.field.replace('_', '-')}"
        raise click.BadParameter(err.message, param_hint=hint) from None
    try:
        out = run_evaluate(config, run_dir, progress=click_progress, echo=click.echo)
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
    from data import files
    from evaluate.pipeline import METRICS_FILE

    return [r for r in files.read_json(out / METRICS_FILE)["records"] if r["metric"] == "error"]


if __name__ == "__main__":
    main()
