"""Compatibility re-exports: the SAE code now lives in sae/sae_module.py (the torch module),
sae/sae_configs.py (parameters), sae/sae_estimators.py (fit/transform), sae/minibatches.py
and sae/saelens_export.py. New code imports from those."""
from sae.sae_configs import B_DEC_INITS, INITS, BatchTopKSAEConfig, L1SAEConfig, SAEConfig, TopKSAEConfig  # noqa: F401
from sae.sae_estimators import L1SAE, BatchTopKSAE, TopKSAE, geometric_median, lr_multiplier  # noqa: F401
from sae.sae_module import ACTIVATIONS, SPARSE_DECODE_RATIO, SAEOutput, SparseAutoencoder  # noqa: F401
from sae.saelens_export import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE  # noqa: F401
