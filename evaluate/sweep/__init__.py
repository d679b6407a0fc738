"""Sweeps: a grid over the three stages' config fields, each point run end to end and cached
by the hash of its resolved configs; one aggregate table and figures over all points."""
from unsuperpose.evaluate.sweep.aggregate import write_aggregate
from unsuperpose.evaluate.sweep.grid import Grid, GridError, Point, load_grid
from unsuperpose.evaluate.sweep.runner import run_sweep

__all__ = ["Grid", "GridError", "Point", "load_grid", "run_sweep", "write_aggregate"]
