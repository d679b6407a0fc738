"""scikit-learn's MiniBatchDictionaryLearning behind our estimator interface: the baseline.

It is the reference that every other method is compared against, so it runs as scikit-learn
ships it (CPU, float64 inside); only the atoms are renormalised to exact unit norm, and
`transform` codes with OMP at the same sparsity `k` as k-SVD and MOD use.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from unsuperpose.data.measures import fvu
from unsuperpose.sae.base import ArrayLike, DictionaryEstimator, Progress, as_tensor_2d, check_param

FIT_ALGORITHMS = ("lars", "cd")


@dataclass(frozen=True, kw_only=True)
class SklearnDictionaryConfig:
    """scikit-learn's MiniBatchDictionaryLearning's parameters, and OMP's k for transform."""

    n_components: int
    """number of atoms"""
    k: int = 3
    """nonzero coefficients per sample when coding with OMP (transform)"""
    alpha: float = 0.1
    """sparsity weight of the lasso coding used while fitting"""
    batch_size: int = 256
    """samples per minibatch"""
    max_iter: int = 3
    """passes over the data (a baseline: three keep it from dominating a run's time; ten
    took 60 s of a 3-minute default run)"""
    fit_algorithm: str = "cd"
    """lasso solver during fit: 'lars' or 'cd' (cd allows positive codes)"""
    positive_code: bool = False
    """nonnegative codes while fitting"""
    random_state: int | None = 0
    """seed passed to scikit-learn (None: fresh entropy)"""

    def __post_init__(self):
        check_param("n_components", self.n_components, low=1, integer=True)
        check_param("k", self.k, low=1, integer=True)
        check_param("alpha", self.alpha, low=0)
        check_param("batch_size", self.batch_size, low=1, integer=True)
        check_param("max_iter", self.max_iter, low=1, integer=True)
        check_param("random_state", self.random_state, low=0, integer=True, optional=True)
        check_param("positive_code", self.positive_code, boolean=True)
        check_param("fit_algorithm", self.fit_algorithm,
                    choices=("cd",) if self.positive_code else FIT_ALGORITHMS,
                    when="positive_code=True" if self.positive_code else None)


class SklearnDictionary(DictionaryEstimator):
    """scikit-learn's MiniBatchDictionaryLearning (CPU, float64 inside), atoms renormalised
    to unit norm; transform codes by OMP with k nonzeros."""

    method = "sklearn"
    config_class = SklearnDictionaryConfig

    def fit(self, H: ArrayLike, y=None, progress: Progress | None = None) -> "SklearnDictionary":
        """Fit on H [n_samples, d] in one call to scikit-learn; `progress(1, 1, log_entry)`
        at the end."""
        from sklearn.decomposition import MiniBatchDictionaryLearning
        from sklearn.exceptions import ConvergenceWarning

        config = self.get_config()  # validates
        X = as_tensor_2d(H, device=torch.device("cpu")).numpy()
        if config.k > X.shape[1]:
            raise ValueError(f"k={config.k} exceeds d={X.shape[1]}: OMP cannot use more atoms "
                             f"than dimensions")
        started = time.perf_counter()
        learner = MiniBatchDictionaryLearning(
            n_components=config.n_components, alpha=config.alpha, batch_size=config.batch_size,
            max_iter=config.max_iter, fit_algorithm=config.fit_algorithm,
            positive_code=config.positive_code, random_state=config.random_state)
        with warnings.catch_warnings(record=True) as caught:
            # cd's per-batch lasso rarely reaches its tolerance; one line per batch would
            # bury the progress bar, so they are counted into the log instead
            warnings.simplefilter("always", ConvergenceWarning)
            learner.fit(X)
        n_unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        atoms = learner.components_.astype(np.float32)
        self.components_ = atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)
        self.n_iter_ = int(learner.n_iter_)
        self.fitted_device_ = "cpu"
        codes = self._encode(X)
        self.log_ = [{"iteration": self.n_iter_, "seconds": time.perf_counter() - started,
                      "fvu": fvu(X, codes @ self.components_),
                      "l0": float((codes != 0).sum(1).mean()),
                      "lasso_not_converged": n_unconverged}]
        if progress is not None:
            progress(1, 1, self.log_[-1])
        return self

    def _encode(self, X: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import sparse_encode

        with warnings.catch_warnings():
            # sklearn warns when OMP stops early on an exactly explained row; that is fine here
            warnings.filterwarnings("ignore", "Orthogonal matching pursuit ended prematurely")
            return sparse_encode(X, self.components_, algorithm="omp",
                                 n_nonzero_coefs=min(self.k, X.shape[1])).astype(np.float32)

    def transform(self, H: ArrayLike) -> ArrayLike:
        self._check_fitted()
        X = as_tensor_2d(H, d=self.components_.shape[1], device=torch.device("cpu")).numpy()
        codes = self._encode(X)
        return torch.from_numpy(codes) if isinstance(H, torch.Tensor) else codes

    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        self._check_fitted()
        if isinstance(codes, torch.Tensor):
            return codes.float() @ torch.from_numpy(self.components_).to(codes.device)
        return np.asarray(codes, dtype=np.float32) @ self.components_
