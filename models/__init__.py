"""Toy models of superposition (torch modules batched over instances) and their ground truth."""
from __future__ import annotations

import importlib

MODEL_KINDS = ("linear", "relu_output", "relu_hidden", "abs")  # no torch: configs name them

_EXPORTS = {"ToyModel": "toy", "hidden_responses": "ground_truth",
            "feature_dimensionality": "ground_truth"}
__all__ = ["MODEL_KINDS", *_EXPORTS]


def __getattr__(name: str):
    """Import the module that defines `name` on first use (PEP 562): the package's commands
    read its configs for `--help` without loading torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
