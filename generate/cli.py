"""`generate`: train toy models of superposition and write their activations + ground truth."""
from __future__ import annotations

from pathlib import Path

import click

from data.cli import FloatList, click_progress, optional_options, os_error_line, set_cpu_threads
from data.worlds import PRESETS, SCHEDULES, preset
from generate.config import ConfigError, GenerateConfig


# every option defaults to None so that --config FILE values are only overridden on purpose
_OPTIONS = [
    ("--source", click.Choice(["toy", "synthetic"]), "toy: train toy models; synthetic: random dictionary, no model."),
    ("--model-kind", click.Choice(["linear", "relu_output", "relu_hidden", "abs"]), "Toy model."),
    ("--n-features", int, "Number of true features n."),
    ("--d-hidden", int, "Hidden width d (activation dimension)."),
    ("--feature-probability", FloatList(), "Comma-separated; one instance per value (1 - sparsity)."),
    ("--mean-active", float, "Synthetic source: expected active features per row (sets one probability)."),
    ("--importance-decay", float, "Importance I_i = decay**i."),
    ("--value", click.Choice(["auto", "uniform", "signed_uniform", "folded_normal"]),
     "Value of a firing feature (folded_normal: |N(mean, std)|, synthetic source)."),
    ("--n-correlated-sets", int, "Correlated feature sets."),
    ("--n-anticorrelated-sets", int, "Anticorrelated feature sets."),
    ("--set-size", int, "Features per set."),
    ("--steps", int, "Training steps."),
    ("--batch-size", int, "Training batch size."),
    ("--lr", float, "Adam learning rate."),
    ("--rows", int, "Activation rows written per instance."),
    ("--heldout-rows", int, "Held-out rows per instance (own shards, own seed stream); evaluate scores on them."),
    ("--rows-per-shard", int, "Rows per shard file."),
    ("--represented-threshold", float, "Norm above which a true direction counts as represented."),
    ("--noise-std", float, "Synthetic source: Gaussian noise on the activations."),
    ("--world", click.Choice(list(PRESETS)), "Synthetic: start from a named benchmark world."),
    ("--probability-schedule", click.Choice(list(SCHEDULES)),
     "Synthetic: feature i's probability from p_max (--feature-probability) down to --p-min."),
    ("--p-min", float, "Synthetic: probability of the rarest feature (non-constant schedules)."),
    ("--zipf-exponent", float, "Synthetic, zipf: p_i ∝ (i+1)^-exponent, rescaled to [p_min, p_max]."),
    ("--correlation-rank", int, "Synthetic: Gaussian-copula correlation of this rank (unset: independent)."),
    ("--correlation-scale", float, "Synthetic: scale of the copula's random factor."),
    ("--hierarchy-roots", int, "Synthetic: number of parent/child trees (0: none)."),
    ("--hierarchy-branching", int, "Synthetic: children per parent."),
    ("--hierarchy-depth", int, "Synthetic: generations below the roots."),
    ("--hierarchy-exclusive", bool, "Synthetic: at most one child of a parent fires (true/false)."),
    ("--magnitude-mean", FloatList(), "Synthetic, folded_normal: mean, or first,last (linear)."),
    ("--magnitude-std", float, "Synthetic, folded_normal: magnitude std."),
    ("--magnitude-std-spread", float, "Synthetic, folded_normal: per-feature std = |N(std, spread)|."),
    ("--seed", int, "Random seed."),
    ("--device", str, "auto, cpu, cuda or cuda:N."),
]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/default"), help="Run folder; writes <run-dir>/generate/.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON config (a saved config.json works); options override it.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [torch's default].")
@optional_options(_OPTIONS)
def main(run_dir: Path, config_file: Path | None, threads: int | None, **options) -> None:
    """Train toy models of superposition (or draw a synthetic dictionary) and write their
    hidden activations, true feature values and ground-truth directions to RUN_DIR/generate."""
    # heavy imports inside the command keep --help fast
    from data.environment import resolve_device
    from generate.pipeline import run_generate

    set_cpu_threads(threads)

    world = options.pop("world")
    values = {}
    if config_file is not None:
        if not config_file.is_file():
            raise click.BadParameter(f"{config_file}: file not found", param_hint="--config")
        try:
            values = GenerateConfig.from_file(config_file).to_dict()
        except (ConfigError, ValueError) as err:
            raise click.BadParameter(str(err), param_hint="--config") from None
    mean_active = options.pop("mean_active")
    if world is not None:  # a command-line option, so over the file's fields it names
        values.update(preset(world))
    values.update({k: v for k, v in options.items() if v is not None})
    if mean_active is not None:
        if values.get("probability_schedule", "constant") != "constant":
            raise click.BadParameter("sets one probability for every feature, so it needs the "
                                     "constant --probability-schedule", param_hint="--mean-active")
        n = values.get("n_features", GenerateConfig.n_features)
        if not 0 < mean_active <= n:
            raise click.BadParameter(f"must lie in (0, n_features={n}], got {mean_active}",
                                     param_hint="--mean-active")
        values["feature_probability"] = (mean_active / n,)
    try:
        config = GenerateConfig(**values)
    except ConfigError as err:
        raise click.BadParameter(err.message, param_hint=f"--{err.field.replace('_', '-')}") from None
    try:
        resolve_device(config.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None

    click.echo(f"generate: {len(config.instance_ids)} instance(s) -> {run_dir / 'generate'}")
    from data.staging import StageWriteError

    try:
        out = run_generate(config, run_dir, progress=click_progress, echo=click.echo)
    except StageWriteError as err:
        raise click.ClickException(err.strerror or str(err)) from None
    except OSError as err:
        raise click.ClickException(os_error_line(err)) from None
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
