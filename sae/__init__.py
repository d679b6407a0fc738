"""Stage 2: dictionary methods behind one scikit-learn-style estimator interface."""
from unsuperpose.sae.ksvd import KSVD
from unsuperpose.sae.methods import METHODS, build, load
from unsuperpose.sae.mod import MOD
from unsuperpose.sae.omp import batch_omp, omp_encode
from unsuperpose.sae.sae_estimators import L1SAE, BatchTopKSAE, TopKSAE
from unsuperpose.sae.sae_module import SparseAutoencoder
from unsuperpose.sae.sklearn_baseline import SklearnDictionary

__all__ = ["METHODS", "build", "load", "KSVD", "MOD", "L1SAE", "TopKSAE", "BatchTopKSAE",
           "SparseAutoencoder", "SklearnDictionary", "batch_omp", "omp_encode"]
