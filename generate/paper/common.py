"""What the paper's sections share: training a grid of toy models (several random inits per
cell, the lowest held-out loss kept), per-instance importance, the superposition measures,
and writing a figure with its data beside it."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from unsuperpose.data import files  # noqa: E402
from unsuperpose.data.safetensors_io import safetensors_bytes  # noqa: E402
from unsuperpose.data.threads import fit_threads  # noqa: E402
from unsuperpose.generate.distributions import FeatureDistribution  # noqa: E402
from unsuperpose.generate.train import train_toy_models  # noqa: E402
from unsuperpose.models.toy import ToyModel  # noqa: E402

REPRESENTED_NORM = 0.5
"""A feature is represented when its column ||W_i|| exceeds this (the paper's figures)."""
SUPERPOSITION_INTERFERENCE = 0.1
"""A represented feature is in superposition when sum_{j != i} (W^_i . W_j)^2 exceeds this."""
STICKY_FRACTIONS = (1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3)
"""The feature dimensionalities the paper found features sticking to."""
EVAL_ROWS = 8192
DPI = 110
Echo = Callable[[str], None]


@dataclass(frozen=True)
class WeightedDistribution(FeatureDistribution):
    """A FeatureDistribution whose importance may differ per instance (the phase diagrams
    vary the extra feature's importance from cell to cell). train_toy_models multiplies
    `importance()` into the [batch, inst, n] squared error, so an [inst, n] tensor works."""

    instance_importance: tuple[tuple[float, ...], ...] = ()
    """Per instance, the importance of each feature; empty: importance_decay ** i."""

    def __post_init__(self):
        super().__post_init__()
        rows = tuple(tuple(float(v) for v in row) for row in self.instance_importance)
        object.__setattr__(self, "instance_importance", rows)
        if rows and (len(rows) != self.n_instances or any(len(r) != self.n_features for r in rows)):
            raise ValueError(f"instance_importance must be [{self.n_instances}, {self.n_features}]")

    def importance(self, device=None) -> torch.Tensor:
        if not self.instance_importance:
            return super().importance(device)
        return torch.tensor(self.instance_importance, device=device, dtype=torch.float32)


@dataclass
class Trained:
    """The best init of each cell: weights and held-out loss, all [cells, ...] on the cpu."""

    kind: str
    W: torch.Tensor          # [cells, d, n]
    b: torch.Tensor          # [cells, n]
    W_out: torch.Tensor | None  # [cells, n, d] (abs model only)
    loss: torch.Tensor       # [cells] held-out importance-weighted MSE of the kept init
    model: ToyModel          # the kept inits, as one model with `cells` instances


def train_grid(kind: str, n: int, d: int, probability: Sequence[float], *, steps: int,
               batch_size: int, lr: float, seed: int, device, inits: int = 1,
               importance_decay: float = 1.0,
               importance: Sequence[Sequence[float]] | None = None,
               value: str = "uniform", label: str = "", echo: Echo = lambda s: None) -> Trained:
    """Train one toy model per cell (`probability[c]`, `importance[c]`) from `inits` random
    inits each, in one batched run (instance = cell * inits + init), and keep per cell the
    init with the lowest loss on fresh rows."""
    cells = len(probability)
    rep = lambda seq: tuple(v for v in seq for _ in range(inits))  # noqa: E731
    dist = WeightedDistribution(
        n_features=n, feature_probability=rep(probability), importance_decay=importance_decay,
        value=value, instance_importance=rep([tuple(r) for r in importance]) if importance else ())
    gen = torch.Generator(device=device).manual_seed(seed)
    model = ToyModel(kind, cells * inits, n, d, generator=gen, device=device)
    every = max(1, steps // 4)

    def on_step(step: int, loss: float) -> None:
        if step % every == 0 or step == steps - 1:
            echo(f"  [{label}] step {step + 1}/{steps}  loss {loss / (cells * inits):.4g} per model")

    echo(f"  [{label}] {cells * inits} {kind} models (n={n}, m={d}, {inits} init(s) per cell)")
    with fit_threads(float(batch_size) * cells * inits * n * d):  # [batch, inst, n] @ [n, d]
        train_toy_models(model, dist, steps, batch_size, lr, gen, on_step=on_step, log_every=every)
    loss = heldout_loss(model, dist, gen).view(cells, inits)
    best = loss.argmin(dim=1) + torch.arange(cells, device=loss.device) * inits
    kept = ToyModel(kind, cells, n, d, device=device)
    with torch.no_grad():
        for name, p in kept.named_parameters():
            p.copy_(getattr(model, name)[best])
    cpu = lambda t: t.detach()[best].cpu()  # noqa: E731
    return Trained(kind, cpu(model.W), cpu(model.b_final),
                   cpu(model.W_out) if kind == "abs" else None,
                   loss.min(dim=1).values.cpu(), kept)


@torch.no_grad()
def heldout_loss(model: ToyModel, dist: FeatureDistribution, gen: torch.Generator,
                 rows: int = EVAL_ROWS) -> torch.Tensor:
    """[inst] importance-weighted MSE on `rows` fresh rows."""
    x = dist.sample(rows, gen, model.W.device)
    err = dist.importance(model.W.device) * (model.target(x) - model(x)) ** 2
    return err.mean(dim=(0, 2))


def interference(W: torch.Tensor) -> torch.Tensor:
    """The paper's superposition measure sum_{j != i} (W^_i . W_j)^2: W [..., d, n] -> [..., n]."""
    cols = W.transpose(-1, -2)  # [..., n, d]
    norms = cols.norm(dim=-1, keepdim=True)
    unit = cols / norms.clamp_min(1e-8)
    overlaps = (unit @ cols.transpose(-1, -2)) ** 2  # [..., n, n]
    off = overlaps.sum(-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)
    return torch.where(norms[..., 0] > 1e-8, off, torch.zeros_like(off))


def represented(W: torch.Tensor) -> torch.Tensor:
    """[..., d, n] -> [..., n] bool: ||W_i|| > REPRESENTED_NORM."""
    return W.norm(dim=-2) > REPRESENTED_NORM


def in_superposition(W: torch.Tensor) -> torch.Tensor:
    """[..., d, n] -> [..., n] bool: represented and interfering with another feature."""
    return represented(W) & (interference(W) > SUPERPOSITION_INTERFERENCE)


def sparsity_label(p: float) -> str:
    return f"S={1 - p:.3g}"


def save_figure(fig, out: Path, name: str) -> str:
    """Write `name`.png; returns the file name."""
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return f"{name}.png"


def save_tensors(out: Path, name: str, tensors: dict, metadata: dict | None = None) -> str:
    """Write `name`.safetensors (the figure's data); returns the file name."""
    tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in tensors.items()}
    files.atomic_write_bytes(out / f"{name}.safetensors",
                             safetensors_bytes(tensors, {k: str(v) for k, v in (metadata or {}).items()}))
    return f"{name}.safetensors"


def save_csv(out: Path, name: str, rows: list[dict]) -> str:
    files.write_csv(out / f"{name}.csv", rows, list(rows[0]) if rows else [])
    return f"{name}.csv"


@dataclass
class Check:
    """One line of the report: what the paper found, our number, and whether it agrees."""

    claim: str
    ours: str
    passed: bool | None = None  # None: a number to look at, no pass/fail

    def line(self) -> str:
        verdict = "" if self.passed is None else (" **PASS**" if self.passed else " **FAIL**")
        return f"paper: {self.claim}; ours: {self.ours}.{verdict}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Section:
    """What a section hands the report: its title, figure, data files and checks."""

    key: str
    title: str
    figure: str
    data: list[str]
    checks: list[Check]
    setting: str = ""


def fmt(values, digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}g}" if isinstance(v, float) and math.isfinite(v) else str(v)
                           for v in values) + "]"
