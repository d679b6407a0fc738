"""`sweep`: run a grid of (generate, sae, evaluate) configs end to end, cached per point,
then aggregate every point's metrics into one table, a summary and figures."""
from __future__ import annotations

import os
from pathlib import Path

import click

from evaluate.sweep.runner import BACKENDS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("grid_file", metavar="GRID", type=click.Path(path_type=Path))
@click.option("--sweep-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the points and the aggregate go [runs/sweeps/<grid file name>].")
@click.option("--backend", type=click.Choice(BACKENDS), default="local",
              help="local: a process pool on this machine; ray: one Ray task per point.")
@click.option("--workers", type=int, default=None,
              help="local backend: points run at once [CPU cores / --threads]; 1 runs them "
                   "in this process.")
@click.option("--threads", type=int, default=1,
              help="torch CPU threads per point (and the CPUs a Ray task asks for).")
@click.option("--ray-address", default=None,
              help="ray backend: the cluster to join [RAY_ADDRESS, else a local Ray].")
@click.option("--dry-run", is_flag=True, help="List the points and whether each is done; run nothing.")
def main(grid_file, sweep_dir, backend, workers, threads, ray_address, dry_run):
    """Run every point of the grid file GRID (its generate, sae and evaluate stages) into
    SWEEP_DIR/points/<hash>/, skipping the points already finished, then write
    SWEEP_DIR/aggregate.csv, summary.md and figures/."""
    from evaluate.sweep.aggregate import AGGREGATE_CSV, write_aggregate
    from evaluate.sweep.grid import GridError, load_grid
    from evaluate.sweep.runner import POINT_MARKER, point_dir, run_sweep

    try:
        grid = load_grid(grid_file)
    except GridError as err:
        raise click.BadParameter(str(err), param_hint="GRID") from None
    if threads < 1:
        raise click.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // threads)
    if workers < 1:
        raise click.BadParameter(f"must be >= 1, got {workers}", param_hint="--workers")
    sweep_dir = sweep_dir or Path("runs/sweeps") / grid_file.stem
    if dry_run:
        for point in grid.points:
            folder = point_dir(sweep_dir, point)
            state = "done" if (folder / POINT_MARKER).is_file() else "todo"
            click.echo(f"{folder.name} {state} {point.values}")
        return
    if workers == 1 and backend == "local":
        from data.cli import set_cpu_threads

        set_cpu_threads(threads)
    try:
        status = run_sweep(grid, sweep_dir, backend, workers, threads, ray_address, echo=click.echo)
    except RuntimeError as err:  # ray missing
        raise click.ClickException(str(err)) from None
    rows = write_aggregate(grid, sweep_dir, status)
    click.echo(f"wrote {sweep_dir / AGGREGATE_CSV} ({len(rows)} rows), summary.md, figures/")
    if status["failed"]:
        listed = "; ".join(f"{k}: {e}" for k, e in status["failed"].items())
        raise click.ClickException(f"{len(status['failed'])} point(s) failed ({listed}); the "
                                   f"tracebacks are in their error.txt; run again to retry them")


if __name__ == "__main__":
    main()
