"""Sweeps: a grid over the three stages' config fields, each point run end to end and cached
by the hash of its resolved configs; one aggregate table and figures over all points."""
from __future__ import annotations

import importlib

_EXPORTS = {"Grid": "grid", "GridError": "grid", "Point": "grid", "load_grid": "grid",
            "run_sweep": "runner", "write_aggregate": "aggregate"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (PEP 562): the package's commands
    read its configs for `--help` without loading torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
