"""The estimator contract shared by every dictionary method.

scikit-learn's conventions: `__init__` only stores parameters, `fit(H) -> self`,
`transform(H) -> codes`, `inverse_transform(codes) -> H`, fitted atoms in `components_`
as unit-norm **rows** [n_components, d], `random_state` turned into a generator once in `fit`.
Each method also has a frozen config dataclass (`config_class`) with one field per
`__init__` parameter; it validates in `__post_init__` and is what `save` writes to config.json.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data import files
from data.environment import resolve_device  # noqa: F401 (re-exported for the estimators)

ArrayLike = Any  # np.ndarray | torch.Tensor


def torch_generator(random_state: int | None, device: torch.device) -> torch.Generator:
    """One generator per fit, seeded from `random_state` (fresh entropy when None)."""
    gen = torch.Generator(device=device)
    if random_state is None:
        gen.seed()
    else:
        gen.manual_seed(int(random_state))
    return gen


def as_tensor_2d(H: ArrayLike, name: str = "H", d: int | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Check a [n_samples, d] input once at the boundary; float32 tensor on `device`."""
    t = torch.as_tensor(np.asarray(H) if not isinstance(H, torch.Tensor) else H)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, d], got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name} has d={t.shape[1]} columns, but this dictionary has d={d}")
    t = t.to(device=device, dtype=torch.float32)
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has {int(bad.sum())} rows with NaN or inf (first: {rows})")
    return t


def rows_to_columns(components: torch.Tensor) -> torch.Tensor:
    """[n_components, d] rows (components_) <-> [d, n_components] columns (an SAE's W_dec).

    The one place where orientation changes; it is its own inverse.
    """
    return components.T.contiguous()


def unit_norm_rows(A: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return A / A.norm(dim=1, keepdim=True).clamp_min(eps)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class DictionaryEstimator(abc.ABC):
    """Base class: subclasses set `method`, `config_class`, implement `_fit`, `_encode`.

    Fitted state: `components_` [n_components, d] float32 numpy, unit-norm rows.
    Subclasses may keep more fitted tensors and list them in `_extra_tensors()` /
    restore them in `_load_extra(tensors)` so that save -> load gives the same transform.
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    # -- config ---------------------------------------------------------------------------
    def get_config(self):
        fields = [f.name for f in dataclasses.fields(self.config_class)]
        return self.config_class(**{name: getattr(self, name) for name in fields})

    def get_params(self, deep: bool = True) -> dict:
        return dataclasses.asdict(self.get_config())

    def set_params(self, **params) -> "DictionaryEstimator":
        valid = {f.name for f in dataclasses.fields(self.config_class)}
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {key!r}; "
                                 f"valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    @classmethod
    def from_config(cls, config: dict | Any) -> "DictionaryEstimator":
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        valid = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = set(config) - valid
        if unknown:
            raise ValueError(f"unknown {cls.method} config keys {sorted(unknown)}; "
                             f"valid: {sorted(valid)}")
        cls.config_class(**config)  # validates
        return cls(**config)

    # -- the estimator API ------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, H: ArrayLike, y=None) -> "DictionaryEstimator":
        """Learn components_ from H [n_samples, d]; returns self."""

    @abc.abstractmethod
    def transform(self, H: ArrayLike) -> ArrayLike:
        """Codes [n_samples, n_components] of H [n_samples, d]."""

    @abc.abstractmethod
    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """Reconstruction [n_samples, d] of codes [n_samples, n_components]."""

    def fit_transform(self, H: ArrayLike, y=None) -> ArrayLike:
        return self.fit(H).transform(H)

    def _check_fitted(self) -> None:
        if getattr(self, "components_", None) is None:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(H) first")

    # -- persistence ------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_extra(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def save(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write dictionary.safetensors + config.json into `directory` (atomically)."""
        from safetensors.torch import save

        self._check_fitted()
        directory = Path(directory)
        config = dataclasses.asdict(self.get_config())
        tensors = {files.COMPONENTS: torch.as_tensor(np.asarray(self.components_),
                                                    dtype=torch.float32).contiguous()}
        for key, value in self._extra_tensors().items():
            tensors[key] = value.detach().to("cpu").contiguous()
        meta = {"method": self.method, "config_hash": config_hash(config),
                "format_version": str(files.FORMAT_VERSION), **(metadata or {})}
        files.atomic_write_bytes(directory / files.DICTIONARY_FILE, save(tensors, metadata=meta))
        files.atomic_write_json(directory / files.CONFIG_FILE,
                                {"method": self.method, "config": config, **(metadata or {})})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DictionaryEstimator":
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / files.DICTIONARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no dictionary here")
        saved = files.read_json(directory / files.CONFIG_FILE)
        if saved.get("method") != cls.method:
            raise ValueError(f"{directory / files.CONFIG_FILE}: method is "
                             f"{saved.get('method')!r}, expected {cls.method!r}")
        est = cls.from_config(saved["config"])
        tensors = load_file(str(path))
        est.components_ = tensors.pop(files.COMPONENTS).numpy()
        est._load_extra(tensors)
        return est
