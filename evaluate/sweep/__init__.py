"""Sweeps: a grid over the three stages' config fields, each point run end to end and cached
by the hash of its resolved configs; one aggregate table and figures over all points."""
from __future__ import annotations

from unsuperpose.lazy_exports import lazy_exports

_EXPORTS = {"Grid": "grid", "GridError": "grid", "Point": "grid", "load_grid": "grid",
            "run_sweep": "runner", "write_aggregate": "aggregate"}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
