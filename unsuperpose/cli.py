"""`unsuperpose`: one command whose subcommands are the stages and the side commands.

Each subcommand is imported only when it runs, so `unsuperpose --help` stays fast and a
stage's dependencies load only for that stage."""
from __future__ import annotations

import importlib

import click

# subcommand -> "module:attribute" of its click command
SUBCOMMANDS = {
    "generate": "unsuperpose.generate.cli:main",
    "sae": "unsuperpose.sae.cli:main",
    "evaluate": "unsuperpose.evaluate.cli:main",
    "sweep": "unsuperpose.evaluate.sweep.cli:main",
    "paper": "unsuperpose.generate.paper.cli:main",
}
SHORT_HELP = {
    "generate": "Stage 1: train toy models (or draw a synthetic world), write activations + truth.",
    "sae": "Stage 2: fit dictionaries (SAEs, k-SVD, MOD, baselines) to a run's activations.",
    "evaluate": "Stage 3: score a run's dictionaries against the true features.",
    "sweep": "Run a grid of (generate, sae, evaluate) configs, cached per point, and aggregate.",
    "paper": "Reproduce the figures of Toy Models of Superposition (Elhage et al. 2022).",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module when that subcommand is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attribute = SUBCOMMANDS[name].split(":")
        command = getattr(importlib.import_module(module), attribute)
        command.short_help = SHORT_HELP[name]
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # from the table above, without importing every stage to read its docstring
        with formatter.section("Commands"):
            formatter.write_dl(list(SHORT_HELP.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unsuperpose", message="%(prog)s %(version)s")
def main() -> None:
    """Make superposition on purpose, then measure how well dictionary learning undoes it:
    `unsuperpose generate`, `unsuperpose sae`, `unsuperpose evaluate` on one --run-dir."""
