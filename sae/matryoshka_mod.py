"""`matryoshka_mod`: nonnegative MOD started from a Matryoshka SAE's decoder, the project's
method for recovering true features on hierarchical and correlated worlds.

On a hierarchy (a parent fires with each of its children) reconstruction at a sparsity
budget does not tell the true atoms from atoms that absorb a parent into its children, so
sparse coding alternated with atom updates from random atoms settles on absorbed ones. A
Matryoshka SAE's nested prefixes make a parent's latent reconstruct without its children,
which puts its decoder near the true directions but leaves each child hedged by its
siblings; MOD started there removes the hedging. The other defaults keep the refinement from
drifting back into absorption: rows coded with up to 3k atoms (at most 0.17 d) so that a
row's whole chain is in its code, spare atoms pruned before the end, no two atoms closer
than a bound, rows weighted so the strongest and the badly coded ones do not dominate the
update, and each atom's part along its parents held. docs/methods.md explains each choice
with its measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

from unsuperpose.sae.mod import MOD, MODConfig


@dataclass(frozen=True, kw_only=True)
class MatryoshkaMODConfig(MODConfig):
    """MOD's fields; those below are where matryoshka_mod's defaults differ from MOD's (see
    the module docstring)."""

    nonnegative: bool = True
    """nonnegative codes (nonnegative OMP, sign-consistent updates); atoms stay signed"""
    init: str = "matryoshka"
    """initial atoms: 'matryoshka' = the decoder of a Matryoshka SAE fitted first to the same
    rows at L0 k, one latent per atom (spares included), for init_sae_steps steps at
    init_sae_lr; 'data' or 'random' as for MOD"""
    fit_k_ratio: float = 3.0
    """while fitting, code each sample with up to ceil(fit_k_ratio * k) atoms (at most
    fit_k_cap * d, never fewer than k); transform keeps k"""
    fit_k_cap: float | None = 0.17
    """the most atoms a row takes while fitting, as a fraction of d (None: d / (2 ln n_atoms))"""
    fit_tol: float | None = 1e-3
    """while fitting, stop coding a sample once its squared residual is at most fit_tol times
    the mean squared norm of the rows"""
    n_swaps: int = 0
    """per iteration, at most this many cheap atoms swapped for a missed direction (0: never)"""
    start_rows: int | None = None
    """code and update on a random subset of this many rows in the first iteration, doubled
    each iteration (None: every row from the start)"""
    purify: bool = False
    """split atoms whose samples point several ways (see MOD)"""
    swap_gain_factor: float = 2.0
    """a swap happens only if the new direction carries more than this times the atom's
    removal cost"""
    reseed: str = "pca"
    """new directions for replaced atoms: 'pca' or 'cluster' (see MOD)"""
    incoherence: float | None = 0.8
    """keep every two atoms at |cos| <= incoherence x sqrt(2 ln n_atoms / d) after each update
    once the spares are pruned (None: no bound)"""
    row_weight_exponent: float = 3.0
    """gamma: the atom update weights each row's squared error by ||h||^-gamma"""
    residual_weight_scale: float | None = 0.01
    """tau: the atom update also weights each row's squared error by exp(-rho / tau), rho its
    relative squared residual under its codes (None: no such factor)"""
    anchor_share: float | None = 0.5
    """hold each atom's part along its co-firing anchors (atoms in at least this share of its
    rows: a parent for its child) through every update (None: off)"""


class MatryoshkaMOD(MOD):
    """Nonnegative MOD refining a Matryoshka SAE's decoder (module docstring)."""

    method = "matryoshka_mod"
    config_class = MatryoshkaMODConfig
