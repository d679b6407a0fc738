"""The config of k-SVD and MOD (sae/sparse_coding.py): one frozen dataclass whose fields are
documented by the string after each and checked in __post_init__."""
from __future__ import annotations

from dataclasses import dataclass

from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.atom_maintenance import INITS as ATOM_INITS
from unsuperpose.sae.base import check_param
from unsuperpose.sae.fit_schedule import min_iterations_to_prune, n_spare_atoms

RESEEDS = ("pca", "cluster")
# k-SVD/MOD as the papers state them: every row from the start, k atoms per row while fitting,
# no spare atoms, no purification, one swap at a time: `MOD(n_components=..., **PLAIN_ALGORITHM)`
PLAIN_ALGORITHM = {"n_iter": 30, "start_rows": None, "fit_k_ratio": 1.0, "fit_tol": None,
                   "overcomplete": 0.0, "purify": False, "n_swaps": 1, "swap_gain_factor": 2.0,
                   "reseed": "pca"}
INITS = (*ATOM_INITS, "matryoshka")


@dataclass(frozen=True, kw_only=True)
class SparseCodingConfig:
    """Fields common to every OMP-coded dictionary method (k-SVD, MOD).

    The defaults are the rare-tail recipe (rows coded with up to 2k atoms while fitting, a
    growing subset of rows, spare atoms pruned at the end, purification and swaps with
    clustered re-seeding): on worlds with a long tail of rare features the plain alternation
    leaves mixtures of rare features that it never undoes (docs/methods.md has the
    measurements). `PLAIN_ALGORITHM` holds the settings of the plain alternation."""

    n_components: int
    """number of atoms (rows of components_)"""
    k: int = 3
    """most nonzero coefficients per sample, for OMP during fit and in transform"""
    tol: float | None = None
    """also stop coding a sample once its squared residual norm ||h - c D||^2 <= tol"""
    n_iter: int = 20
    """alternations of sparse coding and dictionary update"""
    fit_k_ratio: float = 2.0
    """while fitting, code each sample with up to ceil(fit_k_ratio * k) atoms (at most
    fit_k_cap allows, never fewer than k); transform keeps k. With k the mean L0, a row with
    more active features than k otherwise leaves part of them in its residual, and the atom
    update follows that leftover"""
    fit_k_cap: float | None = None
    """the most atoms a row takes while fitting (see fit_k_ratio), as a fraction of d; None:
    d / (2 ln n_atoms), the support OMP recovers on random atoms. Rows that carry far more
    features than k (a hierarchy's chains fire together) need a looser cap; too loose a cap
    lets rows be coded by wrong atoms (docs/methods.md)"""
    rel_tol: float | None = None
    """in transform, stop coding a row once its squared residual is at most rel_tol times
    its own squared norm (None: code every row with k atoms, unless `tol`): learned atoms
    are never exact, so without it every row takes k atoms and a row with fewer active
    features gains false firings (the oracle stops at rounding noise). Exclusive with tol"""
    fit_tol: float | None = 0.006
    """while fitting, also stop coding a sample once its squared residual is at most fit_tol
    times the mean squared norm of the rows (scale-free; transform keeps `tol`): with
    fit_k_ratio > 1, the extra atoms then go only to the rows that need them"""
    start_rows: int | None = 16384
    """code and update on a random subset of this many rows in the first iteration, doubled
    each iteration until every row is used (None: every row from the start): the first
    alternations find the frequent features, which a subset shows as well as all rows"""
    nonnegative: bool = False
    """nonnegative codes (nonnegative OMP, sign-consistent updates); atoms stay signed"""
    init: str = "data"
    """initial atoms: 'data' = distinct random samples, normalised; 'random' = Gaussian;
    'matryoshka' = the decoder of a Matryoshka SAE fitted first to the same rows at L0 k
    with a latent per atom (the spares of `overcomplete` included), for init_sae_steps
    steps at init_sae_lr: close to the true atoms on hierarchical worlds, where
    reconstruction alone settles on absorbed ones (sae/warm_start.py)"""
    init_sae_steps: int = 8000
    """with init='matryoshka': the SAE's training steps, 128 rows each"""
    init_sae_lr: float = 3e-3
    """with init='matryoshka': the SAE's Adam learning rate"""
    batch_size: int | None = None
    """samples per OMP chunk (None: sized to a fixed workspace)"""
    max_coherence: float = 0.99
    """after each update, an atom whose cosine (|cos| for signed codes) with a more-used
    atom exceeds this is replaced"""
    incoherence: float | None = None
    """after each update, keep every two atoms at |cos| <= incoherence x sqrt(2 ln n_atoms / d)
    (`sae.incoherence.random_coherence`, n_atoms counting the spares of `overcomplete`),
    moving the less used atom of a pair onto the bound in their plane, from the first
    update after the spares are pruned (None: no bound). It keeps an atom from holding a
    parent and its child at once; features closer than the bound cannot be learnt exactly"""
    anchor_share: float | None = None
    """hold each atom's part along its co-firing anchors through every update (None: off):
    its anchors are the atoms used in at least this share of the rows that use it, at least
    twice as often there as in rows at large and used at least twice as often as it (a
    parent for its child; `sae.anchors`). Given supports that hold parent and child, an atom
    for child + a x parent reconstructs their rows as well as the child's own direction
    does, so the data leave that part free and an update drifts it towards absorbing the
    parent; with this the update moves only the rest of the atom"""
    n_swaps: int = 8
    """per iteration, at most this many of the atoms whose removal would cost least are
    swapped for a direction the dictionary misses, if that carries more (0: never)"""
    swap_gain_factor: float = 1.0
    """a swap happens only if the new direction carries more than this times the atom's
    removal cost (0: the n_swaps cheapest atoms are swapped every iteration)"""
    reseed: str = "cluster"
    """new directions for replaced atoms: 'pca' = principal directions of the worst residuals;
    'cluster' = one per group of worst residuals that point the same way (|cos| > 0.5),
    strongest sample first, so each seed follows one missing feature rather than a mix"""
    overcomplete: float | None = None
    """fit with this fraction more atoms at first (0.25: 1.25 x n_components), then drop
    the cheapest (`removal_cost`) down to n_components for the last quarter of n_iter:
    spare atoms let rare features be learned instead of being fought over (None: 0.25 when
    n_iter >= 5 leaves iterations after the pruning, else 0)"""
    purify: bool = True
    """each iteration, an atom whose samples point several ways (its part of them plus their
    residuals fall into groups, `cluster_directions`) and that no group agrees with (cos <
    0.95) takes its strongest group's direction: a mixture of rare features becomes one of
    them, and the rest show up in the residuals for re-seeding"""
    fit_offset: bool = False
    """learn an offset b [d] beside the atoms, h ~ c D + b: b starts at the data mean and
    after each update moves by the mean residual (its least-squares value for fixed codes and atoms);
    the codes of transform are those of h - b. Activations with a nonzero mean otherwise
    spend atoms, or parts of every atom, on the mean"""
    random_state: int | None = 0
    """seed of the one generator used by fit (init, atom order, replacements); None: fresh
    entropy"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."""

    def __post_init__(self):
        check_param("n_components", self.n_components, low=1, integer=True)
        check_param("k", self.k, low=1, integer=True, at_most=("n_components", self.n_components))
        check_param("tol", self.tol, low=0, optional=True)
        check_param("n_iter", self.n_iter, low=1, integer=True)
        check_param("fit_k_ratio", self.fit_k_ratio, low=1)
        check_param("rel_tol", self.rel_tol, low=0, optional=True)
        if self.rel_tol is not None and self.tol is not None:
            raise ConfigError("rel_tol", f"set tol or rel_tol, not both (tol={self.tol}, "
                                         f"rel_tol={self.rel_tol})")
        check_param("fit_tol", self.fit_tol, low=0, optional=True)
        check_param("start_rows", self.start_rows, low=1, integer=True, optional=True)
        check_param("nonnegative", self.nonnegative, boolean=True)
        check_param("init", self.init, choices=INITS)
        check_param("init_sae_steps", self.init_sae_steps, low=1, integer=True)
        check_param("init_sae_lr", self.init_sae_lr, low=0, low_open=True)
        check_param("fit_k_cap", self.fit_k_cap, low=0, high=1, low_open=True, optional=True)
        check_param("batch_size", self.batch_size, low=1, integer=True, optional=True)
        check_param("max_coherence", self.max_coherence, low=0, high=1, low_open=True)
        check_param("incoherence", self.incoherence, low=0, low_open=True, optional=True)
        check_param("anchor_share", self.anchor_share, low=0, high=1, low_open=True,
                    optional=True)
        check_param("n_swaps", self.n_swaps, low=0, integer=True)
        check_param("swap_gain_factor", self.swap_gain_factor, low=0)
        check_param("reseed", self.reseed, choices=RESEEDS)
        check_param("overcomplete", self.overcomplete, low=0, high=4, optional=True)
        if self.overcomplete is not None and n_spare_atoms(self.overcomplete, self.n_components,
                                                           self.n_iter):
            check_param("n_iter", self.n_iter, low=min_iterations_to_prune(), integer=True,
                        when=f"overcomplete={self.overcomplete} (to settle after pruning)")
        check_param("purify", self.purify, boolean=True)
        check_param("fit_offset", self.fit_offset, boolean=True)
        check_param("random_state", self.random_state, low=0, integer=True, optional=True)
        check_param("device", self.device, device=True)
