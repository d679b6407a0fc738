"""`sweep`: run a grid of (generate, sae, evaluate) configs end to end, cached per point,
then aggregate every point's metrics into one table, a summary and figures."""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from unsuperpose.data.cli import Threads
from unsuperpose.evaluate.sweep.runner import BACKENDS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("grid_file", metavar="GRID", type=click.Path(path_type=Path))
@click.option("--sweep-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the points and the aggregate go [runs/sweeps/<grid file name>].")
@click.option("--backend", type=click.Choice(BACKENDS), default="local",
              help="local: a process pool on this machine; ray: one Ray task per point.")
@click.option("--workers", type=int, default=None,
              help="local backend: points run at once [CPU cores / --threads]; 1 runs them "
                   "in this process.")
@click.option("--threads", type=Threads(), default="auto",
              help="torch CPU threads per point (and the CPUs a Ray task asks for); auto: 1, "
                   "since the points run side by side.")
@click.option("--address", "--ray-address", "ray_address", default=None,
              help="ray backend: the cluster to join, HOST:PORT of its head (`ray start "
                   "--head`) [RAY_ADDRESS, else a local Ray]; SWEEP_DIR must then be a "
                   "folder every node sees at the same path.")
@click.option("--force", is_flag=True, help="Run a grid of more than 10,000 points.")
@click.option("--dry-run", is_flag=True, help="List the points and whether each is done (redo: "
              "finished, but its metrics are unreadable); run nothing.")
def main(grid_file, sweep_dir, backend, workers, threads, ray_address, force, dry_run):
    """Run every point of the grid file GRID (its generate, sae and evaluate stages) into
    SWEEP_DIR/points/<hash>/, skipping the points already finished, then write
    SWEEP_DIR/aggregate.csv, summary.md and figures/. One sweep at a time works in a
    SWEEP_DIR; a second one is refused."""
    from unsuperpose.evaluate.sweep.aggregate import AGGREGATE_CSV, write_aggregate
    from unsuperpose.evaluate.sweep.grid import GridError, load_grid
    from unsuperpose.evaluate.sweep.guard import SweepBusy, sweep_lock
    from unsuperpose.evaluate.sweep.runner import POINT_MARKER, is_done, metrics_problem, point_dir, run_sweep

    try:
        grid = load_grid(grid_file, force=force)
    except GridError as err:
        raise click.BadParameter(str(err), param_hint="GRID") from None
    from unsuperpose.evaluate.sweep.ray_address import address_problem

    if backend == "ray" and address_problem(ray_address) is not None:
        raise click.BadParameter(address_problem(ray_address), param_hint="--address")
    threads = 1 if threads == "auto" else threads
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // threads)
    if workers < 1:
        raise click.BadParameter(f"must be >= 1, got {workers}", param_hint="--workers")
    sweep_dir = sweep_dir or Path("runs/sweeps") / grid_file.stem
    if dry_run:
        for point in grid.points:
            folder = point_dir(sweep_dir, point)
            state = ("todo" if not is_done(folder, POINT_MARKER)
                     else "redo" if metrics_problem(folder) else "done")
            click.echo(f"{folder.name} {state} {point.values}")
        return
    if workers == 1 and backend == "local":
        from unsuperpose.data.cli import set_cpu_threads

        set_cpu_threads(threads)
    try:
        with sweep_lock(sweep_dir), _sigterm_interrupts():
            status = run_sweep(grid, sweep_dir, backend, workers, threads, ray_address,
                               echo=click.echo, lock=False)
            rows = write_aggregate(grid, sweep_dir, status, echo=click.echo)
    except SweepBusy as err:
        raise click.ClickException(str(err)) from None
    except RuntimeError as err:  # ray missing
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo(f"sweep interrupted; the same command resumes it from the finished points "
                   f"in {sweep_dir}", err=True)
        sys.exit(130)
    click.echo(f"wrote {sweep_dir / AGGREGATE_CSV} ({len(rows)} rows), summary.md, figures/")
    if status["failed"]:
        listed = "; ".join(f"{k}: {e}" for k, e in status["failed"].items())
        raise click.ClickException(f"{len(status['failed'])} point(s) failed ({listed}); the "
                                   f"tracebacks are in their error.txt; run again to retry them")


@contextmanager
def _sigterm_interrupts():
    """SIGTERM acts as Ctrl-C (KeyboardInterrupt), so that the sweep stops its workers."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
