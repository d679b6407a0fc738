"""Method of optimal directions (Engan, Aase & Husoy 1999).

Each iteration codes every sample by batch OMP, then refits all atoms at once by least
squares given the codes: D = (C^T C + lambda I)^{-1} C^T H, rows renormalised to unit norm
(and the codes rescaled by the same factors, so that C D is unchanged). lambda = ridge *
mean(diag(C^T C)) only keeps the system solvable when atoms are rarely or never used; an
unused atom solves to zero and is replaced like in k-SVD.

With `row_weight_exponent` gamma > 0 the update is weighted least squares: each row's squared
error counts ||h||^-gamma, so that the rows of the strongest, most frequent features do not
pull every atom towards them (gamma = 2: every row's relative error alike). With
`residual_weight_scale` tau each row also counts exp(-rho / tau), rho = ||h - c D||^2 / ||h||^2
its relative squared residual under the codes it was just given: the rows OMP cannot explain
are mostly the ones it coded wrongly, and their codes would pull the atoms towards mixtures.
docs/methods.md has the measurements behind both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unsuperpose.sae.base import check_param
from unsuperpose.sae.omp import gram_of_sparse_codes, sparse_reconstruct
from unsuperpose.sae.sparse_coding import SparseCodingDictionary
from unsuperpose.sae.sparse_coding_config import SparseCodingConfig


@dataclass(frozen=True, kw_only=True)
class MODConfig(SparseCodingConfig):
    """MOD: SparseCodingConfig plus the ridge of the normal equations."""

    ridge: float = 1e-6
    """lambda / mean(diag(C^T C)) in the least-squares atom update"""
    row_weight_exponent: float = 0.0
    """gamma: the atom update weights each row's squared error by ||h||^-gamma (rows of
    norm 0 weigh nothing); 0: plain least squares"""
    residual_weight_scale: float | None = None
    """tau: the atom update also weights each row's squared error by exp(-rho / tau), rho =
    ||h - c D||^2 / ||h||^2 the row's relative squared residual under the codes it was
    just given (rows the codes explain badly count less); None: no such factor"""

    def __post_init__(self):
        super().__post_init__()
        check_param("ridge", self.ridge, low=0)
        check_param("row_weight_exponent", self.row_weight_exponent, low=0)
        check_param("residual_weight_scale", self.residual_weight_scale, low=0, low_open=True,
                    optional=True)


class MOD(SparseCodingDictionary):
    """MOD dictionary learning with OMP coding."""

    method = "mod"
    config_class = MODConfig

    def _update(self, X, D, idx, val, gen):
        if not self.row_weight_exponent and self.residual_weight_scale is None:
            return mod_update(X, D, idx, val, ridge=self.ridge)
        w = row_weights(X, self.row_weight_exponent)               # [n_samples, 1]
        if self.residual_weight_scale is not None:
            R = X - sparse_reconstruct(idx, val, D)                # [n_samples, d]
            w = w * residual_weights(X, R, self.residual_weight_scale)
        D, val_w = mod_update(X * w, D, idx, val * w, ridge=self.ridge)
        return D, torch.where(w > 0, val_w / w.clamp_min(torch.finfo(w.dtype).tiny), 0.0)


def row_weights(X: torch.Tensor, exponent: float) -> torch.Tensor:
    """[n_samples, 1]: ||x_i||^(-exponent / 2), the factor on row i (and its codes) that
    weighs its squared error by ||x_i||^-exponent; 0 for a row of norm 0."""
    norms = X.norm(dim=1, keepdim=True)                              # [n_samples, 1]
    return torch.where(norms > 0, norms.clamp_min(torch.finfo(X.dtype).tiny)
                       .pow(-exponent / 2), 0.0)


def residual_weights(X: torch.Tensor, R: torch.Tensor, scale: float) -> torch.Tensor:
    """[n_samples, 1]: exp(-(rho_i - min rho) / (2 scale)), rho_i = ||r_i||^2 / ||x_i||^2
    in [0, inf) (0 for a row of norm 0), the factor on row i (and its codes) that weighs its
    squared error by exp(-rho_i / scale) up to one factor for all rows (which least squares
    ignores; taking out the smallest rho keeps the weights from underflowing). In (0, 1].
    X, R: [n_samples, d] rows and their residuals."""
    x2 = X.pow(2).sum(1, keepdim=True)                                # [n_samples, 1]
    rho = torch.where(x2 > 0, R.pow(2).sum(1, keepdim=True)
                      / x2.clamp_min(torch.finfo(X.dtype).tiny), 0.0)
    return torch.exp(-(rho - rho.min()) / (2 * scale))


def mod_update(X: torch.Tensor, D: torch.Tensor, idx: torch.Tensor, val: torch.Tensor, *,
               ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares atoms for fixed codes.

    X: [n_samples, d]; D: [n_components, d] current atoms (kept where an atom is unused);
    idx, val: [n_samples, k] sparse codes. Returns (D [n_components, d] unit-norm rows, val
    rescaled so that the product C D equals the least-squares fit).
    """
    n_components = D.shape[0]
    C = sparse_codes_as_matrix(idx, val, n_components)             # sparse [n_samples, M]
    # the normal equations in float64: C^T C squares the codes' condition number
    CtX = torch.sparse.mm(C.t(), X).double()                       # [M, d]
    CtC = gram_of_sparse_codes(idx, val, n_components)            # [M, M] float64
    lam = ridge * float(CtC.diagonal().mean())
    A = CtC + lam * torch.eye(n_components, dtype=CtC.dtype, device=CtC.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        D_ls = torch.cholesky_solve(CtX, L)
    else:  # only when lam == 0 and some atom is unused
        D_ls = torch.linalg.lstsq(A.cpu(), CtX.cpu()).solution.to(A.device)
    norms = D_ls.norm(dim=1)                                       # [M]
    used = norms > 0
    D_new = torch.where(used.unsqueeze(1), D_ls / norms.clamp_min(1e-300).unsqueeze(1),
                        D.double()).to(D.dtype)
    scale = torch.where(used, norms, 1.0).to(val.dtype)
    return D_new, val * scale[idx.clamp_min(0)]


def sparse_codes_as_matrix(idx: torch.Tensor, val: torch.Tensor,
                           n_components: int) -> torch.Tensor:
    """The codes as a sparse COO matrix [n_samples, n_components] (MOD's normal equations)."""
    n_samples, k = idx.shape
    keep = (val != 0).flatten()
    rows = torch.arange(n_samples, device=idx.device).repeat_interleave(k)[keep]
    # indices are built in range here, so skip torch's invariant checks (and their warning)
    return torch.sparse_coo_tensor(torch.stack([rows, idx.flatten()[keep]]), val.flatten()[keep],
                                   (n_samples, n_components), check_invariants=False).coalesce()
