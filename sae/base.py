"""The estimator contract shared by every dictionary method.

scikit-learn's conventions: `__init__` only stores parameters, `fit(H) -> self`,
`transform(H) -> codes`, `inverse_transform(codes) -> H`, fitted atoms in `components_`
as unit-norm **rows** [n_components, d], `random_state` turned into a generator once in `fit`.
Each method also has a frozen config dataclass (`config_class`) with one field per
`__init__` parameter; it validates in `__post_init__` (numbers through `check_number`, so
nan, inf and out-of-range values are refused alike, by name) and is what `save` writes to
config.json.
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
from data.shards import safetensors_bytes
from data.configs import ConfigError, check_number  # noqa: F401 (re-exported)
from data.environment import load_device, resolve_device  # noqa: F401 (re-exported)

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

    def _move_fitted(self, device: torch.device) -> None:
        """Move fitted tensors kept on a device (an SAE's module) to `device`."""

    def to(self, device: str | torch.device) -> "DictionaryEstimator":
        """Compute transform / inverse_transform on `device` from now on (checked by
        `resolve_device`; a method that computes on CPU only keeps doing so)."""
        dev = resolve_device(str(device))
        if "device" in {f.name for f in dataclasses.fields(self.config_class)}:
            self.device = str(dev)
        self._move_fitted(dev)
        return self

    def _fitted_device(self) -> str:
        fitted = getattr(self, "fitted_device_", None)
        if fitted is not None:
            return str(fitted)
        device = getattr(self, "device", "cpu")
        try:
            return str(resolve_device(device))
        except ValueError:
            return str(device)

    def save(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write dictionary.safetensors + config.json into `directory` (atomically).

        The same fitted state and metadata always give the same dictionary.safetensors bytes
        (`safetensors_bytes`). config.json records the config and, beside it, the device the
        fit ran on (`fitted_device`): a record, not a constraint on where `load` puts it.
        """
        self._check_fitted()
        directory = Path(directory)
        config = dataclasses.asdict(self.get_config())
        tensors = {files.COMPONENTS: torch.as_tensor(np.asarray(self.components_),
                                                    dtype=torch.float32).contiguous()}
        for key, value in self._extra_tensors().items():
            tensors[key] = value.detach().to("cpu").contiguous()
        meta = {"method": self.method, "config_hash": config_hash(config),
                "format_version": str(files.FORMAT_VERSION), **(metadata or {})}
        files.atomic_write_bytes(directory / files.DICTIONARY_FILE,
                                 safetensors_bytes(tensors, meta))
        files.atomic_write_json(directory / files.CONFIG_FILE,
                                {"method": self.method, "config": config,
                                 "fitted_device": self._fitted_device(), **(metadata or {})})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike,
             device: str | None = None) -> "DictionaryEstimator":
        """The estimator saved in `directory`, ready to transform on `device`.

        device: None = where it was fitted (config.json's `fitted_device`) when this machine
        has that device, else cpu, so a dictionary fitted on cuda loads anywhere; a string
        (cpu, cuda, cuda:1, auto) is resolved strictly and refused if missing. The loaded
        estimator's `device` parameter is the device chosen; `fitted_device_` keeps the record.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / files.DICTIONARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no dictionary here")
        saved = files.read_json(directory / files.CONFIG_FILE)
        if saved.get("method") != cls.method:
            raise ValueError(f"{directory / files.CONFIG_FILE}: method is "
                             f"{saved.get('method')!r}, expected {cls.method!r}")
        config = dict(saved["config"])
        fitted = saved.get("fitted_device") or config.get("device")
        chosen = load_device(device, fitted)
        if "device" in config and not (device is None and _names(config["device"], chosen)):
            config["device"] = str(chosen)  # kept as saved when it still means `chosen`
        est = cls.from_config(config)
        est.fitted_device_ = fitted if fitted is not None else "cpu"
        tensors = load_file(str(path))
        est.components_ = tensors.pop(files.COMPONENTS).numpy()
        est._load_extra(tensors)
        return est


def _names(device: str, target: torch.device) -> bool:
    """Whether the device string `device` resolves to `target` on this machine."""
    try:
        return resolve_device(device) == target
    except ValueError:
        return False
