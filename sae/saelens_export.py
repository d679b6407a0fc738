"""A fitted SparseAutoencoder in SAELens's format (`SAE.load_from_disk`, the 6.x schema)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from data import files

SAELENS_CFG_FILE = files.SAELENS_CFG_FILE  # re-exported; data/files.py owns file names
SAELENS_WEIGHTS_FILE = files.SAELENS_WEIGHTS_FILE
# SAELens reads a cfg without this as pre-6.0 and rewrites its keys; ours is the 6.x schema.
SAELENS_SCHEMA_VERSION = "6.0.0"
ARCHITECTURES = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu",
                 "jumprelu": "jumprelu"}


def export_saelens(sae, method: str, directory: str | os.PathLike) -> Path:
    """Write SAELens's `cfg.json` + `sae_weights.safetensors` for `sae` (a SparseAutoencoder
    fitted by the estimator `method`) to `directory`.

    L1 -> "standard", TopK -> "topk" (with k), BatchTopK and Matryoshka -> "jumprelu" with
    their inference threshold on every latent, which is how SAELens itself saves a trained
    (Matryoshka) BatchTopK SAE; JumpReLU -> "jumprelu" with its per-latent thresholds.
    """
    from safetensors.torch import save

    directory = Path(directory)
    tensors = {"W_enc": sae.W_enc.detach(),                       # [d_in, d_sae]
               "b_enc": sae.b_enc.detach(),                       # [d_sae]
               "W_dec": sae.components(),                         # [d_sae, d_in]
               "b_dec": sae.b_dec.detach()}                       # [d_in]
    cfg = {"architecture": ARCHITECTURES[sae.activation],
           "d_in": sae.d, "d_sae": sae.n_components, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True,  # we encode h - b_dec
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_SCHEMA_VERSION,
                        "model_name": None, "hook_name": None,
                        "unsuperpose_method": method}}
    if sae.activation == "topk":
        cfg["k"] = sae.k
    if sae.activation in ("batchtopk", "jumprelu"):
        tensors["threshold"] = sae.threshold.expand(sae.n_components)  # [d_sae]
    tensors = {key: t.to("cpu", torch.float32).contiguous() for key, t in tensors.items()}
    files.atomic_write_bytes(directory / SAELENS_WEIGHTS_FILE, save(tensors))
    files.atomic_write_json(directory / SAELENS_CFG_FILE, cfg)
    return directory
