"""Stage 2: dictionary methods behind one scikit-learn-style estimator interface."""
from sae.ksvd import KSVD
from sae.methods import METHODS, build, load
from sae.mod import MOD
from sae.omp import batch_omp, omp_encode
from sae.sklearn_baseline import SklearnDictionary
from sae.sparse_autoencoder import BatchTopKSAE, L1SAE, SparseAutoencoder, TopKSAE

__all__ = ["METHODS", "build", "load", "KSVD", "MOD", "L1SAE", "TopKSAE", "BatchTopKSAE",
           "SparseAutoencoder", "SklearnDictionary", "batch_omp", "omp_encode"]
