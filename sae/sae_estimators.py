"""The estimators that fit a sparse autoencoder (sae/sae_module.py): the L1 SAE, the TopK
SAE (Gao et al. 2024), BatchTopK (Bussmann et al. 2024), Matryoshka BatchTopK (Bussmann et
al. 2025) and JumpReLU (Rajamanoharan et al. 2024). One training loop; a method names its
activation and its sparsity penalty. Parameters: sae/sae_configs.py.
"""
from __future__ import annotations

import abc
import itertools
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from unsuperpose.data import files
from unsuperpose.data.measures import fvu
from unsuperpose.sae.base import (
    ArrayLike,
    DictionaryEstimator,
    Progress,
    as_tensor_2d,
    resolve_device,
    rows_to_columns,
    torch_generator,
)
from unsuperpose.sae.losses import (
    auxk_loss,
    decoder_weighted_l1,
    jumprelu_l0,
    prefix_reconstruction_mses,
    reconstruction_mse,
)
from unsuperpose.sae.minibatches import training_batches
from unsuperpose.sae.sae_configs import (
    BatchTopKSAEConfig,
    JumpReLUSAEConfig,
    L1SAEConfig,
    MatryoshkaSAEConfig,
    SAEConfig,
    TopKSAEConfig,
    resolve_prefixes,
)
from unsuperpose.sae.sae_module import K_ACTIVATIONS, SAEOutput, SparseAutoencoder
from unsuperpose.sae.saelens_export import export_saelens

REFINE_THRESHOLD = files.SAE_REFINE_THRESHOLD  # also the SparseAutoencoder buffer's name
_TRANSFORM_CHUNK = 16384  # rows per forward pass in transform, to bound [rows, n] memory


# ---- pure helpers --------------------------------------------------------------------------
def lr_multiplier(step: int, total_steps: int | None, warmup_steps: int,
                  decay_fraction: float) -> float:
    """The factor on the base lr at 0-based `step`: linear warm-up over `warmup_steps`
    ((step + 1) / warmup_steps, so never 0), then flat, then linear decay over the last
    `decay_fraction` of `total_steps`, reaching 1 / (steps in the decay) at the last step."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_fraction > 0 and total_steps:
        decay_steps = max(1, round(decay_fraction * total_steps))
        factor *= min(1.0, (total_steps - step) / decay_steps)
    return factor


def geometric_median(X: torch.Tensor, n_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_y sum_i ||x_i - y|| by Weiszfeld's iteration, started at the mean.

    X: [n_samples, d] -> [d]. Robust to outlying rows where the mean is not.
    """
    y = X.mean(dim=0)
    for _ in range(n_iter):
        w = 1.0 / (X - y).norm(dim=1).clamp_min(1e-12)  # [n_samples]
        y_next = (w @ X) / w.sum()
        if (y_next - y).norm() <= tol * (1.0 + y.norm()):
            return y_next
        y = y_next
    return y


# ---- estimators ----------------------------------------------------------------------------
class _SAEEstimator(DictionaryEstimator):
    """The shared fit/transform of the SAEs; a subclass names its activation and penalty.

    Fitted: `sae_` (a SparseAutoencoder), `components_` [n_components, d], `log_` (a dict
    every `log_every` steps), `n_steps_`, `n_samples_seen_`.
    """

    config_class: ClassVar[type] = SAEConfig
    activation: ClassVar[str] = ""
    # the penalty coefficient a target-L0 calibration searches (None: none, the L0 is set by k)
    calibrated_coefficient: ClassVar[str | None] = None

    # -- what differs between methods --------------------------------------------------------
    @abc.abstractmethod
    def _penalty(self, sae: SparseAutoencoder, h: torch.Tensor, out: SAEOutput, step: int,
                 dead: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sparsity term added to the MSE, and its parts for the log."""

    def _after_step(self, sae: SparseAutoencoder, out: SAEOutput) -> None:
        pass

    def _new_module(self, d: int, n_components: int) -> SparseAutoencoder:
        return SparseAutoencoder(d, n_components, self.activation, getattr(self, "k", None),
                                 getattr(self, "bandwidth", 0.1), self.refine_steps,
                                 self.refine_step_size)

    def _setup(self, sae: SparseAutoencoder) -> None:
        """After `initialize_`, before the first step: a method's own initial state."""

    def _initial_tensors(self, X: torch.Tensor, cfg, gen: torch.Generator):
        """X: [rows, d] the data seen at init (all of it in memory, else the first minibatch)
        -> (atoms [n_components, d], b_dec [d], encoder atoms [n_components, d] or None)."""
        n, d = cfg.n_components, X.shape[1]
        order = torch.randperm(X.shape[0], generator=gen, device=X.device)
        b_dec = {"mean": lambda: X.mean(dim=0), "zeros": lambda: X.new_zeros(d),
                 "median": lambda: geometric_median(X[order[:65536]])}[cfg.b_dec_init]()
        atoms = torch.randn(n, d, generator=gen, device=X.device)   # [n_components, d]
        if cfg.init == "data":
            # distinct rows, so no two atoms start equal (then random directions for the
            # rest, if the rows run out); a row equal to b_dec keeps its random direction
            rows = X[order[:n]] - b_dec
            usable = rows.norm(dim=1) > 1e-6 * (1 + X.norm(dim=1).max())
            atoms[:rows.shape[0]][usable] = rows[usable]
        encoder = None if cfg.tied_init else torch.randn(n, d, generator=gen, device=X.device)
        return atoms, b_dec, encoder

    # -- fit ---------------------------------------------------------------------------------
    def fit(self, H, y=None, progress: Progress | None = None):
        """H: [n_samples, d] array/tensor (shuffled per epoch), a `datasets` Dataset or
        IterableDataset with an "h" column, or any iterable of [batch, d] minibatches (or of
        dicts holding them at "h"). `progress(step, total_steps, info)` after every step
        (total_steps None when unknown; info the log_ row of that step, or {}); `sae_`
        exists by then, so a callback may watch it.
        """
        cfg = self.get_config()
        device = resolve_device(cfg.device)
        gen = torch_generator(cfg.random_state, device)
        if isinstance(H, (np.ndarray, torch.Tensor)):
            H = as_tensor_2d(H, device=device)                         # [n_samples, d]
        batches, total = training_batches(H, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
                                          n_steps=cfg.n_steps, gen=gen, device=device)
        if total is None and cfg.lr_decay_fraction > 0:
            raise ValueError("H is an iterable of unknown length, so the lr decay cannot be "
                             "placed; set n_steps (or lr_decay_fraction=0)")
        first = next(batches)                                          # [batch, d]
        d = first.shape[1]
        init_data = H if isinstance(H, torch.Tensor) else first
        if self.activation in K_ACTIVATIONS and cfg.k > d:
            raise ValueError(f"k={cfg.k} exceeds d={d}: more active latents per row than "
                             "dimensions cannot give a unique sparse code")
        sae = self._new_module(d, cfg.n_components).to(device)
        sae.initialize_(*self._initial_tensors(init_data, cfg, gen))
        self._setup(sae)
        self.sae_, self.log_ = sae, []
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
        since_fired = torch.zeros(cfg.n_components, dtype=torch.long, device=device)
        samples = 0
        for step, h in enumerate(itertools.chain([first], batches)):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_multiplier(step, total, cfg.lr_warmup_steps,
                                                     cfg.lr_decay_fraction)
            out = sae(h)
            mse = reconstruction_mse(h, out.h_hat)
            dead = since_fired >= cfg.dead_steps_threshold             # [n_components]
            penalty, terms = self._penalty(sae, h, out, step, dead)
            loss = mse + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad_()
            if cfg.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip_norm)
            opt.step()
            sae.normalize_decoder_()
            self._after_step(sae, out)
            fired = out.codes.detach().amax(dim=0) > 0                 # [n_components]
            since_fired = torch.where(fired, 0, since_fired + 1)
            samples += h.shape[0]
            row = {}
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                row = self._log_row(step + 1, samples, opt, h, out, loss, mse, terms,
                                    since_fired >= cfg.dead_steps_threshold)
                self.log_.append(row)
            if progress is not None:
                progress(step + 1, total, row)
        self.components_ = sae.components().cpu().numpy()
        self.n_steps_, self.n_samples_seen_ = step + 1, samples
        self.fitted_device_ = str(device)
        return self

    @torch.no_grad()
    def _log_row(self, step, samples, opt, h, out: SAEOutput, loss, mse, terms, dead) -> dict:
        return {"step": step, "samples": samples, "lr": opt.param_groups[0]["lr"],
                "loss": loss.item(), "mse": mse.item(),
                **{key: value.item() for key, value in terms.items()},
                "l0": (out.codes > 0).sum(dim=-1).float().mean().item(),
                "fvu": fvu(h, out.h_hat),  # of this minibatch
                "dead": dead.float().mean().item()}

    # -- inference ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        super()._check_fitted()
        if getattr(self, "sae_", None) is None:
            raise RuntimeError(f"this {type(self).__name__} has components_ but no sae_; "
                               "fit it or load it with .load(directory)")

    @torch.no_grad()
    def transform(self, H: ArrayLike) -> ArrayLike:
        """H: [n_samples, d] -> codes f [n_samples, n_components], numpy in numpy out."""
        self._check_fitted()
        sae = self.sae_.eval()
        X = as_tensor_2d(H, d=sae.d, device=sae.W_enc.device)
        codes = torch.cat([sae.encode(chunk) for chunk in X.split(_TRANSFORM_CHUNK)])
        return codes.to(H.device) if isinstance(H, torch.Tensor) else codes.cpu().numpy()

    @torch.no_grad()
    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """codes: [n_samples, n_components] -> W_dec f + b_dec [n_samples, d]."""
        self._check_fitted()
        sae = self.sae_
        C = as_tensor_2d(codes, name="codes", device=sae.W_dec.device)  # [n_samples, n]
        if C.shape[1] != sae.n_components:
            raise ValueError(f"codes has {C.shape[1]} columns, but this SAE has "
                             f"n_components={sae.n_components}")
        H = sae.decode(C)
        return H.to(codes.device) if isinstance(codes, torch.Tensor) else H.cpu().numpy()

    # -- persistence -------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        sae = self.sae_
        tensors = {files.SAE_W_ENC: sae.W_enc.detach(), files.SAE_B_ENC: sae.b_enc.detach(),
                   files.SAE_B_DEC: sae.b_dec.detach(), files.SAE_THRESHOLD: sae.threshold}
        if hasattr(sae, REFINE_THRESHOLD):
            tensors[REFINE_THRESHOLD] = sae.refine_threshold
        return tensors

    def _move_fitted(self, device: torch.device) -> None:
        if getattr(self, "sae_", None) is not None:
            self.sae_ = self.sae_.to(device)

    def _load_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(files.SAE_TENSOR_KEYS) - set(tensors)
        if missing:
            raise ValueError(f"{files.DICTIONARY_FILE} lacks the {self.method} tensors "
                             f"{sorted(missing)}")
        n_components, d = self.components_.shape
        sae = self._new_module(d, n_components)
        state = {"W_enc": tensors[files.SAE_W_ENC], "b_enc": tensors[files.SAE_B_ENC],
                 "W_dec": rows_to_columns(torch.from_numpy(self.components_)),
                 "b_dec": tensors[files.SAE_B_DEC], "threshold": tensors[files.SAE_THRESHOLD]}
        if self.activation == "jumprelu":  # inference reads `threshold`, saved exactly
            state["log_threshold"] = tensors[files.SAE_THRESHOLD].log()
        if hasattr(sae, REFINE_THRESHOLD):
            # saved before per-pass thresholds: every pass used the one threshold
            state[REFINE_THRESHOLD] = tensors.get(
                REFINE_THRESHOLD, tensors[files.SAE_THRESHOLD].expand(sae.refine_steps))
        sae.load_state_dict(state)
        self.sae_ = sae.to(resolve_device(self.device)).eval()

    def export_saelens(self, directory):
        """SAELens's cfg.json + sae_weights.safetensors in `directory` (sae/saelens_export.py)."""
        self._check_fitted()
        return export_saelens(self.sae_, self.method, directory)


class L1SAE(_SAEEstimator):
    """The L1 SAE: f = ReLU(W_enc^T (h - b_dec) + b_enc), loss ||h - h^||^2 +
    lambda sum_i f_i ||W_dec,i|| (lambda ramped over l1_warmup_steps)."""

    method = "l1"
    config_class = L1SAEConfig
    activation = "relu"
    calibrated_coefficient = "l1_coefficient"

    def _penalty(self, sae, h, out, step, dead):
        ramp = min(1.0, (step + 1) / self.l1_warmup_steps) if self.l1_warmup_steps else 1.0
        l1 = decoder_weighted_l1(out.codes, sae.W_dec.norm(dim=0))
        return self.l1_coefficient * ramp * l1, {"l1": l1}


class TopKSAE(_SAEEstimator):
    """The TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each row, plus the
    AuxK loss on latents dead for dead_steps_threshold steps."""

    method = "topk"
    config_class = TopKSAEConfig
    activation = "topk"

    def _penalty(self, sae, h, out, step, dead):
        aux_k = self.aux_k if self.aux_k is not None else max(1, sae.d // 2)
        aux = auxk_loss(h - out.h_hat, out.pre_acts, dead, sae.W_dec, aux_k,
                        self.aux_coefficient)
        return aux, {"aux": aux}


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): keep the k * batch largest activations of the batch in
    training; at inference keep those above a threshold, the running mean of the smallest
    activation kept in training. With refine_steps > 0 each pass (the encoder's, each
    refinement's) is a batch top-k in training with its own threshold at inference."""

    method = "batchtopk"
    config_class = BatchTopKSAEConfig
    activation = "batchtopk"

    def _after_step(self, sae, out):
        sae.update_threshold_(out.codes, self.threshold_rate, out.earlier_codes)


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK whose nested prefixes of the
    dictionary (latents 0..m-1 for each width m of `prefixes`) are each trained to
    reconstruct alone.

    Loss: the whole dictionary's MSE plus the sum over the inner widths m < n_components of
    mean_b ||h_b - (b_dec + sum_{i < m} f_bi W_dec,i)||^2, with f the batch-top-k codes of
    the whole dictionary restricted to the prefix, plus AuxK as for BatchTopK. The log's
    `prefix_mse` is the sum of the inner terms.

    Latent order: the index order is the prefix order. The nested loss sends the features
    that most reduce the error, the frequent and general ones, to the early latents (the
    gradient of every inner term reaches only its prefix), as in the paper. Inference as
    BatchTopK: the codes above one learned threshold (a running mean of the smallest kept
    activation).
    """

    method = "matryoshka"
    config_class = MatryoshkaSAEConfig

    def prefix_widths(self) -> tuple[int, ...]:
        """The nested widths, resolved (`sae.sae_configs.resolve_prefixes`)."""
        return resolve_prefixes(self.prefixes, self.n_components)

    def _penalty(self, sae, h, out, step, dead):
        aux, terms = super()._penalty(sae, h, out, step, dead)
        inner = self.prefix_widths()[:-1]
        if not inner:
            return aux, {**terms, "prefix_mse": h.new_zeros(())}
        prefix = prefix_reconstruction_mses(h, out.codes, sae.W_dec, sae.b_dec, inner).sum()
        return aux + prefix, {**terms, "prefix_mse": prefix}


class JumpReLUSAE(_SAEEstimator):
    """JumpReLU (Rajamanoharan et al. 2024): f_i = pre_i * [pre_i > theta_i], one threshold per
    latent, theta = exp(log_theta) trained by straight-through estimators with a rectangle
    kernel of width epsilon (`bandwidth`); loss ||h - h^||^2 + lambda * mean_b L0(f_b), lambda
    ramped over l0_warmup_steps. The L0's pseudo-derivative is -(1/epsilon) K((pre - theta) /
    epsilon) in theta (none in pre); the codes' is -(theta/epsilon) K(...) (sae/losses.py)."""

    method = "jumprelu"
    config_class = JumpReLUSAEConfig
    activation = "jumprelu"
    calibrated_coefficient = "l0_coefficient"

    def _setup(self, sae):
        with torch.no_grad():
            sae.log_threshold.fill_(float(np.log(self.init_threshold)))
        sae.sync_threshold_()

    def _penalty(self, sae, h, out, step, dead):
        ramp = min(1.0, (step + 1) / self.l0_warmup_steps) if self.l0_warmup_steps else 1.0
        pre = out.pre_acts if out.last_pre is None else out.last_pre  # what the codes came from
        l0 = jumprelu_l0(pre, sae.log_threshold.exp(), self.bandwidth)
        return self.l0_coefficient * ramp * l0, {"l0_penalty": l0}

    def _after_step(self, sae, out):
        sae.sync_threshold_()
