"""Stage 2: dictionary methods behind one scikit-learn-style estimator interface."""
from __future__ import annotations

import importlib

_EXPORTS = {"METHODS": "methods", "build": "methods", "load": "methods", "KSVD": "ksvd",
            "MOD": "mod", "L1SAE": "sae_estimators", "TopKSAE": "sae_estimators",
            "BatchTopKSAE": "sae_estimators", "SparseAutoencoder": "sae_module",
            "SklearnDictionary": "sklearn_baseline", "batch_omp": "omp", "omp_encode": "omp"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` on first use (PEP 562): the package's commands
    read its configs for `--help` without loading torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
