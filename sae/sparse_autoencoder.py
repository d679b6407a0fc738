"""Compatibility re-exports: the SAE code now lives in sae/sae_module.py (the torch module),
sae/sae_configs.py (parameters), sae/sae_estimators.py (fit/transform), sae/minibatches.py
and sae/saelens_export.py. New code imports from those."""
from sae.sae_configs import (B_DEC_INITS, INITS, BatchTopKSAEConfig, L1SAEConfig,  # noqa: F401
                             SAEConfig, TopKSAEConfig)
from sae.sae_estimators import (BatchTopKSAE, L1SAE, TopKSAE, geometric_median,  # noqa: F401
                                lr_multiplier)
from sae.sae_module import (ACTIVATIONS, SPARSE_DECODE_RATIO, SAEOutput,  # noqa: F401
                            SparseAutoencoder)
from sae.saelens_export import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE  # noqa: F401
