"""Stage 1: activation shards with ground truth, from toy models of superposition or from a
synthetic world (worlds.py with firing.py; distributions.py for the toy models' features)."""
from __future__ import annotations

import importlib

_EXPORTS = {"GenerateConfig": "config", "run_generate": "pipeline"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (PEP 562): the package's commands
    read its configs for `--help` without loading torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
