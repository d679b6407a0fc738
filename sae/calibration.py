"""Matched sparsity: choose the L1 SAE's lambda so that its L0 meets a target.

An L1 SAE has no k: its L0 (nonzero codes per row) follows from lambda, and one lambda gives
different L0s on different data. To compare it with TopK at the same L0, lambda is calibrated
by a search in log lambda (L0 falls as lambda grows) over probe fits, each one
`sae.methods.build("l1", {**params, "l1_coefficient": lam})` fitted and its mean L0 measured.

What a probe costs is its optimiser steps, not its rows (a step is one minibatch whatever the
data size), and a probe cannot be much shorter than the full fit: an L1 SAE's L0 keeps falling,
in plateaus, for the first ~1000-1500 steps, so on the toy instances fits of 250-500 steps
overstated the full fit's L0 by 2-4x at the lambda that matters and calibrated lambda too high.
Hence the default (`subsample_rows=None`, `probe_steps=None`): every probe *is* the full fit
(all rows, the full fit's steps, L0 measured on those rows), and `result.estimator` is the
fitted SAE at the chosen lambda, its L0 exactly `achieved_l0`, so the caller need not refit.
With `subsample_rows` set, a probe trains on that many seeded rows and is measured on
`eval_rows` held-aside ones; the full fit's L0 then differs from the probe's by some percent.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import torch

from unsuperpose.sae.base import as_tensor_2d, resolve_device, torch_generator
from unsuperpose.sae.sae_configs import L1SAEConfig

DEFAULT_MAX_FITS = 10
DEFAULT_EVAL_ROWS = 4096  # held-aside rows a probe's L0 is measured on, when subsampling
GROWTH = 2.0              # the least factor on lambda per step while looking for a bracket
MAX_GROWTH = 8.0          # the most
_INTERPOLATION_CLAMP = 0.2  # inside a bracket, probe no closer than this share to its ends
_MIN_BRACKET_RATIO = 1.01   # stop when the bracket is narrower (L0 jumps across the band)


@dataclasses.dataclass
class CalibrationResult:
    """What `calibrate_l1_coefficient` found.

    coefficient: the probe's lambda whose L0 was within tolerance, else the probe's closest
        to the target in |log(L0 / target)|; `coefficient_name` says which parameter it is
        (l1_coefficient for the L1 SAE, l0_coefficient for JumpReLU), `method` of which SAE.
    achieved_l0: that probe's mean L0 (on the fit rows, or on the held-aside rows when
        subsampling).
    history: (lambda, L0) of every probe, in the order run.
    estimator: that probe's fitted L1SAE (the full fit itself unless subsampled/shortened).
    """

    coefficient: float
    achieved_l0: float
    target_l0: float
    tolerance: float
    within_tolerance: bool
    history: list[tuple[float, float]]
    fit_rows: int
    eval_rows: int
    probe_steps: int
    is_full_fit: bool
    seconds: float
    method: str = "l1"
    coefficient_name: str = "l1_coefficient"
    estimator: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def n_fits(self) -> int:
        return len(self.history)

    @property
    def l1_coefficient(self) -> float:
        """The calibrated coefficient, under the name the L1 SAE gives it."""
        return self.coefficient

    def to_dict(self) -> dict:
        """JSON-ready, without the estimator."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "estimator"}
        out["history"] = [[lam, l0] for lam, l0 in self.history]
        out["n_fits"] = self.n_fits
        out[self.coefficient_name] = self.coefficient  # e.g. "l1_coefficient": 0.3
        return out


def full_fit_steps(params: dict, n_rows: int) -> int:
    """Optimiser steps an L1 SAE built from `params` takes on `n_rows` in-memory rows."""
    defaults = L1SAEConfig(n_components=1)
    if params.get("n_steps") is not None:
        return int(params["n_steps"])
    batch = int(params.get("batch_size", defaults.batch_size))
    return math.ceil(n_rows / batch) * int(params.get("n_epochs", defaults.n_epochs))


def mean_l0(est, H: torch.Tensor) -> float:
    """Mean number of nonzero codes per row of H [rows, d] under a fitted estimator."""
    codes = torch.as_tensor(est.transform(H))
    return float((codes > 0).sum(dim=1, dtype=torch.float64).mean())


def _split(H: torch.Tensor, fit_rows: int, eval_rows: int,
           random_state: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of H's rows cut into (probe training rows, held-aside rows)."""
    n = H.shape[0]
    if n < 2:
        return H, H
    gen = torch_generator(random_state, torch.device("cpu"))
    order = torch.randperm(n, generator=gen).to(H.device)
    if n >= fit_rows + eval_rows:
        n_fit, n_eval = fit_rows, eval_rows
    else:  # too few rows: keep the proportions
        n_eval = min(n - 1, max(1, round(n * eval_rows / (fit_rows + eval_rows))))
        n_fit = n - n_eval
    return H[order[:n_fit]], H[order[n_fit:n_fit + n_eval]]


def _log_l0(l0: float) -> float:
    return math.log(l0) if l0 > 0 else -math.inf


def _expansion(points: list[tuple[float, float]], target: float) -> float:
    """The factor (>= 1) to move lambda by, away from the last probe, while not yet bracketed:
    log-log extrapolation through the last two probes (on the same side), clamped to
    [GROWTH, MAX_GROWTH]; GROWTH without two usable points."""
    if len(points) >= 2:
        (lam_a, l0_a), (lam_b, l0_b) = points[-2:]
        if l0_a > 0 and l0_b > 0 and lam_a != lam_b:
            slope = (math.log(l0_b) - math.log(l0_a)) / (math.log(lam_b) - math.log(lam_a))
            if slope < 0:  # L0 falls with lambda, as it should
                # clamped in log space: a near-flat slope would overflow math.exp
                log_factor = min(abs((math.log(target) - math.log(l0_b)) / slope),
                                 math.log(MAX_GROWTH))
                return max(GROWTH, math.exp(log_factor))
    return GROWTH


def _inside(dense: tuple[float, float], sparse: tuple[float, float], target: float) -> float:
    """The next lambda inside the bracket (dense: L0 above the band, sparse: below): log-log
    interpolation of L0 to the target, kept away from the ends; the log midpoint when the
    sparse end has L0 = 0."""
    (lam_d, l0_d), (lam_s, l0_s) = dense, sparse
    t = 0.5
    if l0_s > 0:
        t = (math.log(l0_d) - math.log(target)) / (math.log(l0_d) - math.log(l0_s))
        t = min(1 - _INTERPOLATION_CLAMP, max(_INTERPOLATION_CLAMP, t))
    return math.exp(math.log(lam_d) + t * (math.log(lam_s) - math.log(lam_d)))


def calibrate_l1_coefficient(
        H, params: dict, target_l0: float, *, tolerance: float = 0.1,
        max_fits: int = DEFAULT_MAX_FITS, subsample_rows: int | None = None,
        eval_rows: int = DEFAULT_EVAL_ROWS, probe_steps: int | None = None,
        initial_l1_coefficient: float | None = None,
        progress: Callable[[int, int, dict], None] | None = None,
        method: str = "l1") -> CalibrationResult:
    """Search lambda (in log) until a probe's mean L0 is within target_l0 * (1 +- tolerance).

    method: the SAE whose penalty coefficient is searched, the one its class names in
        `calibrated_coefficient` (l1: l1_coefficient; jumprelu: l0_coefficient); its warm-up
        (l1_warmup_steps, l0_warmup_steps) is scaled with shortened probes.

    H: [rows, d] array or tensor, the rows of the full fit.
    params: the parameters of the full fit (n_components, random_state, device, lr, ...):
        only names `method` takes, since `sae.methods.build` refuses any other (pass
        `sae.methods.accepted(method, values)` for values meant for several methods). Every
        probe uses them, seed included, with its own coefficient.
    target_l0: in (0, n_components].
    subsample_rows: None: probes train on all of H and are measured on it (each probe is the
        full fit). Else probes train on this many seeded rows and are measured on `eval_rows`
        other ones (fewer rows: the same proportions).
    probe_steps: None: the full fit's steps; else n_steps of each probe, an l1_warmup_steps
        scaled by probe_steps / the full fit's steps.
    initial_l1_coefficient: the first lambda; None: params' l1_coefficient (or L1's default).
    progress: called as progress(probes done, max_fits, {"l1_coefficient", "l0"}) after each
        probe (the estimators' progress signature).

    Lambda moves by 2-8x (log-log extrapolation of the last two probes) until the target is
    bracketed, then by log-log interpolation inside the bracket, kept away from its ends, and
    by bisection in log lambda after two interpolated probes in a row on one side.
    Stops at a probe within tolerance, after max_fits probes, or when the bracket is under 1%
    wide (L0 jumps across the band). Deterministic for an int random_state.
    """
    from unsuperpose.sae.methods import build

    started = time.perf_counter()
    n_components = params.get("n_components")
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"params needs n_components, an integer >= 1; got {n_components!r}")
    if (isinstance(target_l0, bool) or not isinstance(target_l0, (int, float))
            or not math.isfinite(target_l0) or not 0 < target_l0 <= n_components):
        raise ValueError(f"target_l0={target_l0!r}: expected a number in "
                         f"(0, n_components={n_components}]")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance!r}: expected a number in (0, 1)")
    if max_fits < 1:
        raise ValueError(f"max_fits={max_fits!r}: expected an integer >= 1")
    if subsample_rows is not None and subsample_rows < 1:
        raise ValueError(f"subsample_rows={subsample_rows!r}: expected an integer >= 1 or None")
    if eval_rows < 1:
        raise ValueError(f"eval_rows={eval_rows!r}: expected an integer >= 1")
    if probe_steps is not None and probe_steps < 1:
        raise ValueError(f"probe_steps={probe_steps!r}: expected an integer >= 1 or None")
    from unsuperpose.sae.methods import METHODS

    cls = METHODS[method][0] if method in METHODS else None
    name = getattr(cls, "calibrated_coefficient", None)
    if name is None:
        raise ValueError(f"method {method!r} has no penalty coefficient to calibrate")
    warmup = name.replace("_coefficient", "_warmup_steps")
    field_defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
    defaults = L1SAEConfig(n_components=1)
    lam = float(initial_l1_coefficient if initial_l1_coefficient is not None
                else params.get(name, field_defaults[name]))
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"initial {name}={lam!r}: expected a number > 0")

    H = as_tensor_2d(H, device=resolve_device(params.get("device", defaults.device)))
    if subsample_rows is None:
        fit_H = eval_H = H
    else:
        fit_H, eval_H = _split(H, subsample_rows, eval_rows, params.get("random_state"))
    full_steps = full_fit_steps(params, H.shape[0])
    probe_params = dict(params)
    steps = full_fit_steps(params, fit_H.shape[0])
    if probe_steps is not None or subsample_rows is not None:
        steps = probe_steps if probe_steps is not None else full_steps
        probe_params["n_steps"] = steps
        if params.get(warmup):
            probe_params[warmup] = max(1, round(params[warmup] * steps / full_steps))
    is_full_fit = fit_H is H and probe_params == params

    low, high = target_l0 * (1 - tolerance), target_l0 * (1 + tolerance)
    history: list[tuple[float, float]] = []
    best: tuple[float, float, float, Any] | None = None  # (miss, lambda, L0, estimator)

    def miss(l0: float) -> float:  # distance from the target in log L0 (L0 = 0: infinite)
        return abs(_log_l0(l0) - math.log(target_l0))

    dense: tuple[float, float] | None = None   # (lambda, L0) with L0 above the band
    sparse: tuple[float, float] | None = None  # ... below it
    same_side: list[tuple[float, float]] = []  # probes while not bracketed
    last_side: str | None = None               # the side of the last interpolated probe
    while len(history) < max_fits:
        est = build(method, {**probe_params, name: lam}).fit(fit_H)
        l0 = mean_l0(est, eval_H)
        history.append((lam, l0))
        if best is None or miss(l0) < best[0]:
            best = (miss(l0), lam, l0, est)
        if progress is not None:
            progress(len(history), max_fits, {name: lam, "coefficient": lam, "l0": l0})
        if low <= l0 <= high:
            break
        was_bracketed = dense is not None and sparse is not None
        side = "dense" if l0 > high else "sparse"
        if side == "dense":
            dense = (lam, l0)
        else:
            sparse = (lam, l0)
        if dense is not None and sparse is not None:
            # lambda only moves toward the band, so dense[0] < sparse[0] throughout
            if sparse[0] / dense[0] < _MIN_BRACKET_RATIO:
                break
            # interpolation that keeps landing on one side stalls (regula falsi): bisect then
            stalled = was_bracketed and side == last_side
            lam = (math.sqrt(dense[0] * sparse[0]) if stalled
                   else _inside(dense, sparse, target_l0))
            last_side = None if stalled else side
        else:
            same_side.append((lam, l0))
            factor = _expansion(same_side, target_l0)
            lam = lam * factor if l0 > high else lam / factor
    _, best_lam, best_l0, best_est = best
    return CalibrationResult(
        coefficient=best_lam, achieved_l0=best_l0, target_l0=float(target_l0),
        tolerance=tolerance, within_tolerance=low <= best_l0 <= high, history=history,
        fit_rows=int(fit_H.shape[0]), eval_rows=int(eval_H.shape[0]), probe_steps=int(steps),
        is_full_fit=is_full_fit, seconds=time.perf_counter() - started, method=method,
        coefficient_name=name, estimator=best_est)
