"""Train a batch of toy models together: one loop, every instance at once."""
from __future__ import annotations

import math
from typing import Callable

import torch

from unsuperpose.generate.distributions import FeatureDistribution
from unsuperpose.models.toy import ToyModel


def lr_at(step: int, steps: int, lr: float, warmup: int = 0, final_fraction: float = 0.05) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay from lr to final_fraction * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_toy_models(model: ToyModel, dist: FeatureDistribution, steps: int, batch_size: int,
                     lr: float, generator: torch.Generator,
                     on_step: Callable[[int, float], None] | None = None,
                     log_every: int = 100) -> list[dict]:
    """Adam on the importance-weighted MSE; returns a log of per-instance losses."""
    device = model.W.device
    importance = dist.importance(device)  # [n]
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one kernel per step
    log = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        x = dist.sample(batch_size, generator, device)  # [batch, inst, n]
        out = model(x)
        per_instance = (importance * (model.target(x) - out) ** 2).mean(dim=(0, 2))  # [inst]
        loss = per_instance.sum()  # summed: an instance's gradient ignores how many train beside it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            values = per_instance.detach().cpu().tolist()
            log.append({"step": step, "lr": lr_at(step, steps, lr), "loss": sum(values),
                        "loss_per_instance": values})
            if on_step is not None:
                on_step(step, sum(values))
    if log and not all(map(math.isfinite, log[-1]["loss_per_instance"])):
        raise FloatingPointError(f"toy-model training diverged (losses {log[-1]['loss_per_instance']}); "
                                 f"lower the learning rate (now {lr})")
    return log
