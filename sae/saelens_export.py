"""A fitted SparseAutoencoder in SAELens's format (`SAE.load_from_disk`, the 6.x schema)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from unsuperpose.data import files

SAELENS_CFG_FILE = files.SAELENS_CFG_FILE  # re-exported; data/files.py owns file names
SAELENS_WEIGHTS_FILE = files.SAELENS_WEIGHTS_FILE
# SAELens reads a cfg without this as pre-6.0 and rewrites its keys; ours is the 6.x schema.
SAELENS_SCHEMA_VERSION = "6.0.0"
ARCHITECTURES = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu",
                 "jumprelu": "jumprelu"}
SAELENS_DIR = "saelens"  # sae/<instance>/<method>/saelens/, written by `sae --export saelens`
REFINE_STEPS_KEY = "unsuperpose_refine_steps"  # cfg.json metadata: ISTA steps SAELens skips


def export_saelens(sae, method: str, directory: str | os.PathLike,
                   metadata: dict | None = None) -> Path:
    """Write SAELens's `cfg.json` + `sae_weights.safetensors` for `sae` (a SparseAutoencoder
    fitted by the estimator `method`) to `directory`.

    L1 -> "standard", TopK -> "topk" (with k), BatchTopK and Matryoshka -> "jumprelu" with
    their inference threshold on every latent, which is how SAELens itself saves a trained
    (Matryoshka) BatchTopK SAE; JumpReLU -> "jumprelu" with its per-latent thresholds.
    `metadata`: extra keys for cfg.json's "metadata" (SAELens keeps unknown ones).
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
                        "unsuperpose_method": method, **(metadata or {})}}
    if sae.activation == "topk":
        cfg["k"] = sae.k
    if sae.activation in ("batchtopk", "jumprelu"):
        tensors["threshold"] = sae.threshold.expand(sae.n_components)  # [d_sae]
    tensors = {key: t.to("cpu", torch.float32).contiguous() for key, t in tensors.items()}
    files.atomic_write_bytes(directory / SAELENS_WEIGHTS_FILE, save(tensors))
    files.atomic_write_json(directory / SAELENS_CFG_FILE, cfg)
    return directory


def export_estimator(est, directory: str | os.PathLike,
                     metadata: dict | None = None) -> tuple[Path, str | None]:
    """Export a fitted SAE estimator (its `sae_`) to `directory`; (the folder, a warning or
    None). An estimator that refines its codes after the encoder (`refine_steps` > 0, ISTA
    steps SAELens has no counterpart for) is still exported, with the step count in cfg.json's
    metadata under REFINE_STEPS_KEY, and the warning says SAELens will use the unrefined
    encoder."""
    refine = int(getattr(est, "refine_steps", 0) or getattr(est.sae_, "refine_steps", 0) or 0)
    extra = dict(metadata or {})
    warning = None
    if refine > 0:
        extra[REFINE_STEPS_KEY] = refine
        warning = (f"{est.method} refines its codes with refine_steps={refine} ISTA steps after "
                   f"the encoder, which SAELens cannot represent: its SAELens export records "
                   f"the steps in cfg.json (metadata.{REFINE_STEPS_KEY}), but SAELens will use "
                   f"the unrefined encoder")
    return export_saelens(est.sae_, est.method, directory, metadata=extra), warning
