"""`sae`: fit dictionaries (SAEs, k-SVD, MOD, scikit-learn) to a run's activations."""
from __future__ import annotations

import json
from pathlib import Path

import click

from unsuperpose.data.cli import (
    click_progress,
    config_file_option,
    optional_options,
    os_error_line,
    read_config_file,
    set_cpu_threads,
    threads_option,
)
from unsuperpose.data.config_cli import ConfigOptions
from unsuperpose.sae.config import ConfigError, SAEStageConfig

# options that set one hyperparameter of every method that has it (under "*" in params)
_SHARED_PARAMS = [
    ("--l1-coefficient", float, "l1: weight of the decoder-norm-weighted L1 penalty."),
    ("--lr", float, "SAEs: Adam learning rate."),
    ("--n-epochs", int, "SAEs: passes over the rows."),
    ("--batch-size", int, "SAEs and sklearn: rows per step."),
    ("--n-iter", int, "k-SVD/MOD: coding + update iterations."),
    ("--alpha", float, "sklearn: lasso weight while fitting."),
]


class _MaxRows(click.ParamType):
    """An integer >= 0, or none/all (every row)."""

    name = "INTEGER|none"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() in ("none", "all"):
            return 0
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or none", param, ctx)


# one option per config field (help, type and choices from sae/config.py); `params` is
# --param and the shared hyperparameter options
OPTIONS = ConfigOptions(SAEStageConfig, skip=("params",), names={"instances": "--instance"},
                        types={"max_rows": _MaxRows()}, off={"drop_zero_rows": "--keep-zero-rows"},
                        hints={"params": "--param"})


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder written by `generate`.")
@config_file_option("JSON stage config (a saved sae/config.json works); options override it.")
@OPTIONS
@click.option("--param", "raw_params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Any method hyperparameter, e.g. topk.aux_coefficient=0.5 or *.lr=0.003 "
                   "(--list-params lists them).")
@threads_option
@optional_options(_SHARED_PARAMS)
@click.option("--list-params", metavar="[METHOD]", is_flag=False, flag_value="*", default=None,
              expose_value=False, is_eager=True, callback=lambda ctx, _, method: _list_params(ctx, method),
              help="Print every method's parameters (name, default, doc), or METHOD's in full, and exit.")
def main(run_dir, config_file, raw_params, threads, **options):
    """Fit dictionaries to every instance's activations in RUN_DIR/generate and write them to
    RUN_DIR/sae/<instance>/<method>/."""
    from unsuperpose.data.environment import resolve_device
    from unsuperpose.data.errors import ShardError
    from unsuperpose.data.staging import StageWriteError
    from unsuperpose.sae.pipeline import StageInputError, run_sae

    set_cpu_threads(threads)

    values = read_config_file(config_file) if config_file is not None else {}
    values.update(OPTIONS.given(options))
    shared = {flag[2:].replace("-", "_"): options.pop(flag[2:].replace("-", "_"))
              for flag, _, _ in _SHARED_PARAMS}
    if not isinstance(values.get("params", {}), dict) or not all(
            isinstance(p, dict) for p in values.get("params", {}).values()):
        raise click.BadParameter("params must map a method to an object of parameters",
                                 param_hint="--config")
    params = {m: dict(p) for m, p in values.get("params", {}).items()}
    star = params.setdefault("*", {})
    star.update({k: v for k, v in shared.items() if v is not None})
    for raw in raw_params:
        try:
            target, value = raw.split("=", 1)
            method, key = target.split(".", 1)
        except ValueError:
            raise click.BadParameter(f"{raw!r}: expected METHOD.KEY=VALUE", param_hint="--param") from None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        params.setdefault(method, {})[key] = parsed
    values["params"] = {m: p for m, p in params.items() if p}
    config = OPTIONS.build(values, source=str(config_file or "options"))
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    try:
        out = run_sae(config, run_dir, progress=click_progress, echo=click.echo)
    except ConfigError as err:
        raise _bad_parameter(err) from None
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except (StageInputError, ShardError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    except ValueError as err:  # a method refused the data while fitting
        raise click.ClickException(f"{err}") from None
    click.echo(f"wrote {out}")


def _list_params(ctx: click.Context, method: str | None) -> None:
    """--list-params [METHOD]: sae.methods.list_params, then exit 0."""
    if method is None or ctx.resilient_parsing:
        return
    from unsuperpose.sae.methods import list_params

    try:
        click.echo(list_params(None if method == "*" else method))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--list-params") from None
    ctx.exit(0)


def _bad_parameter(err: ConfigError) -> click.BadParameter:
    """A refusal while fitting, naming its option: a method's hyperparameter (topk.lr) is a
    --param, a stage field the option of that field."""
    if "." in err.field:
        return click.BadParameter(str(err), param_hint="--param")
    return OPTIONS.bad_parameter(err)


if __name__ == "__main__":
    main()
