"""Stage 2: dictionary methods behind one scikit-learn-style estimator interface."""
from __future__ import annotations

from unsuperpose.lazy_exports import lazy_exports

_EXPORTS = {"METHODS": "methods", "build": "methods", "load": "methods", "KSVD": "ksvd",
            "MOD": "mod", "L1SAE": "sae_estimators", "TopKSAE": "sae_estimators",
            "BatchTopKSAE": "sae_estimators", "SparseAutoencoder": "sae_module",
            "SklearnDictionary": "sklearn_baseline", "batch_omp": "omp", "omp_encode": "omp"}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
