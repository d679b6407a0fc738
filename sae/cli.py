"""`sae`: fit dictionaries (SAEs, k-SVD, MOD, scikit-learn) to a run's activations."""
from __future__ import annotations

import json
from pathlib import Path

import click

from data.cli import (click_progress, optional_options, os_error_line, read_config_file,
                      set_cpu_threads)
from sae.config import DEFAULT_METHODS, ConfigError, SAEStageConfig

# options that set one hyperparameter of every method that has it
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


def _csv(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder written by `generate`.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON stage config (a saved sae/config.json works).")
@click.option("--methods", default=None,
              help=f"Comma-separated, from: {', '.join(DEFAULT_METHODS)} [default: all].")
@click.option("--instance", "instances", default=None,
              help="Comma-separated instance ids [default: every instance].")
@click.option("--dict-ratio", type=float, default=None, help="Atoms per true direction [1.0].")
@click.option("--size-basis", type=click.Choice(["represented", "features"]), default=None,
              help="What --dict-ratio multiplies [represented].")
@click.option("--n-components", type=int, default=None, help="Absolute dictionary size.")
@click.option("--k", type=int, default=None,
              help="Active atoms per row [expected active features, rounded up].")
@click.option("--max-rows", type=_MaxRows(), default=None,
              help="Fit on at most this many rows; 0 or none: every row (SAEs stream) [32768].")
@click.option("--on-nonfinite", type=click.Choice(["error", "drop"]), default=None,
              help="A row with NaN/inf: stop naming shard and row, or drop and count it [error].")
@click.option("--target-l0", type=float, default=None,
              help="L0 the L1 SAE's coefficient is calibrated to [the k TopK gets].")
@click.option("--drop-zero-rows/--keep-zero-rows", default=None,
              help="Leave out rows where no feature fired [drop].")
@click.option("--seed", type=int, default=None, help="random_state of every method [0].")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N [auto].")
@click.option("--param", "raw_params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Any method hyperparameter, e.g. topk.aux_coefficient=0.5 or *.lr=0.003.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [torch's default].")
@optional_options(_SHARED_PARAMS)
def main(run_dir, config_file, methods, instances, raw_params, threads, **options):
    """Fit dictionaries to every instance's activations in RUN_DIR/generate and write them to
    RUN_DIR/sae/<instance>/<method>/."""
    from data.environment import resolve_device
    from data.shards import ShardError
    from data.staging import StageWriteError
    from sae.pipeline import StageInputError, run_sae

    set_cpu_threads(threads)

    values = read_config_file(config_file) if config_file is not None else {}
    shared = {flag[2:].replace("-", "_"): options.pop(flag[2:].replace("-", "_"))
              for flag, _, _ in _SHARED_PARAMS}
    for key in ("dict_ratio", "size_basis", "n_components", "k", "max_rows", "drop_zero_rows",
                "seed", "device", "on_nonfinite", "target_l0"):
        if options.get(key) is not None:
            values[key] = options[key]
    if methods is not None:
        values["methods"] = _csv(methods)
    if instances is not None:
        values["instances"] = _csv(instances)
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
    try:
        config = SAEStageConfig.from_dict(values, source=str(config_file or "options"))
    except ConfigError as err:
        raise click.BadParameter(err.message, param_hint=_hint(err.field)) from None
    except (TypeError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None
    try:
        out = run_sae(config, run_dir, progress=click_progress, echo=click.echo)
    except ConfigError as err:
        raise click.BadParameter(err.message, param_hint=_hint(err.field)) from None
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except (StageInputError, ShardError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    except ValueError as err:  # a method refused the data while fitting
        raise click.ClickException(f"{err}") from None
    click.echo(f"wrote {out}")


def _hint(field: str) -> str:
    return "--param" if field == "params" else f"--{field.replace('_', '-')}"


if __name__ == "__main__":
    main()
