"""The resolved configuration of `unsuperpose paper`; what `<out>/config.json` records."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from unsuperpose.data.configs import ConfigError, JSONConfig, check_number

DEVICES = ("auto", "cpu", "cuda")
CPU_INSTANCES, CUDA_INSTANCES = 20, 100


@dataclass(frozen=True)
class PaperConfig(JSONConfig):
    """Every setting of the reproduction; the section sizes (n, m, importances, sparsities)
    are the paper's and fixed in the section modules."""

    seed: int = 0
    """Seeds every model's init and training batches (each section adds its own offset)."""
    device: str = dataclasses.field(default="auto", metadata={"choices": DEVICES})
    """auto (cuda when available), cpu or cuda; the resolved config records cpu or cuda."""
    instances: int = 0
    """Feature-geometry instances (one per density: half log-spaced in 1/(1-S) from 1 to 1000,
    half over the plateau at 1/2); 0: 20 on the cpu, 100 on cuda."""
    lr: float = 3e-3
    """Adam learning rate of every section (cosine decay to 5% over the run)."""
    batch_size: int = 1024
    """Training batch of the small sections (intro, sparsity, privileged, computation)."""
    inits: int = 3
    """Random inits per setting in the intro, sparsity and privileged sections; the one
    with the lowest held-out loss is kept (the paper does this)."""
    intro_steps: int = 1500
    """Training steps of the intro figure (n=5, m=2)."""
    sparsity_steps: int = 2000
    """Training steps of the superposition-across-sparsity figure (n=20, m=5)."""
    phase_steps: int = 2000
    """Training steps of the phase diagrams."""
    phase_batch_size: int = 256
    """Training batch of the phase diagrams."""
    phase_grid: int = 9
    """Cells per axis of each phase diagram (relative importance x feature density)."""
    phase_inits: int = 3
    """Random inits per phase-diagram cell; the lowest held-out loss is kept."""
    geometry_steps: int = 3000
    """Training steps of the feature-geometry instances."""
    geometry_batch_size: int = 256
    """Training batch of the feature-geometry instances."""
    geometry_n_features: int = 400
    """Features n of the feature-geometry models (the paper: 400)."""
    geometry_d_hidden: int = 30
    """Hidden dimensions m of the feature-geometry models (the paper: 30)."""
    privileged_steps: int = 8000
    """Training steps of the privileged-basis (relu_hidden) models. Dense, the monosemantic
    optimum and rotated (polysemantic) near-optima differ by ~0.5% of the loss: a short run
    stops in the rotated one."""
    privileged_lr: float = 1e-2
    """Adam learning rate of the privileged-basis models (higher than `lr`: the rotation
    towards the neuron basis is slow at 3e-3)."""
    privileged_batch_size: int = 256
    """Training batch of the privileged-basis models."""
    computation_steps: int = 3000
    """Training steps of the computation-in-superposition (abs) models."""

    def __post_init__(self):
        check_number("seed", self.seed, low=0, integer=True)
        if self.device not in DEVICES:
            raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check_number("instances", self.instances, low=0, integer=True)
        if self.instances == 1:
            raise ConfigError("instances", "needs at least 2 densities (or 0 for the default)")
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("privileged_lr", self.privileged_lr, low=0, low_open=True)
        for name in ("batch_size", "inits", "phase_batch_size", "phase_inits",
                     "geometry_batch_size", "privileged_batch_size", "geometry_n_features",
                     "geometry_d_hidden"):
            check_number(name, getattr(self, name), low=1, integer=True)
        check_number("phase_grid", self.phase_grid, low=2, integer=True)
        for name in ("intro_steps", "sparsity_steps", "phase_steps", "geometry_steps",
                     "privileged_steps", "computation_steps"):
            check_number(name, getattr(self, name), low=1, integer=True)

    def resolved(self) -> "PaperConfig":
        """The device named (cpu or cuda) and the instance count filled in."""
        from unsuperpose.data.environment import resolve_device

        device = resolve_device(self.device).type
        instances = self.instances or (CUDA_INSTANCES if device == "cuda" else CPU_INSTANCES)
        return dataclasses.replace(self, device=device, instances=instances)
