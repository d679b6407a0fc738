"""Stage 2: dictionary methods behind one scikit-learn-style estimator interface."""
from sae.ksvd import KSVD
from sae.methods import METHODS, build, load
from sae.mod import MOD
from sae.omp import batch_omp, omp_encode
from sae.sae_estimators import L1SAE, BatchTopKSAE, TopKSAE
from sae.sae_module import SparseAutoencoder
from sae.sklearn_baseline import SklearnDictionary

__all__ = ["METHODS", "build", "load", "KSVD", "MOD", "L1SAE", "TopKSAE", "BatchTopKSAE",
           "SparseAutoencoder", "SklearnDictionary", "batch_omp", "omp_encode"]
