"""Toy models of superposition (torch modules batched over instances) and their ground truth."""
from __future__ import annotations

from unsuperpose.lazy_exports import lazy_exports

MODEL_KINDS = ("linear", "relu_output", "relu_hidden", "abs")  # no torch: configs name them

_EXPORTS = {"ToyModel": "toy", "hidden_responses": "ground_truth",
            "feature_dimensionality": "ground_truth"}
__all__ = ["MODEL_KINDS", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
