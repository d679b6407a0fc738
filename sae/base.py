"""The estimator contract shared by every dictionary method.

scikit-learn's conventions: `fit(H) -> self`, `transform(H) -> codes`,
`inverse_transform(codes) -> H`, fitted atoms in `components_` as unit-norm **rows**
[n_components, d], `random_state` turned into a generator once in `fit`.

Every estimator is built the same way, from keyword arguments only: `KSVD(n_components=64)`.
Its parameters are the fields of one frozen config dataclass (`config_class`), documented
once there, by the string literal after each field (`param_docs` reads them; they also make
the estimator's `help()` and `inspect.signature`). `__init__` and `set_params` validate
through that dataclass, whose `__post_init__` checks every field with `check_param` (numbers
through `data.configs.check_number`), so a bad value is a `ConfigError` naming the field,
the same for every method, before any fit. `get_params` / `set_params` / `clone` behave as in
scikit-learn (`sklearn.base.clone` works); the config is what `save` writes to config.json.

`random_state` defaults to 0 for every method, not None: a fit is then reproducible by
default, and the config that config.json records (and hashes) is enough to redo it, which a
None (fresh entropy) would not be. Pass None to draw a seed from the OS. The stage passes
random_state=config.seed in any case.

Progress: `fit(H, progress=callback)` calls `callback(done, total, info)` after each unit of
work (an SAE's optimiser step, a k-SVD/MOD iteration, sklearn's whole fit): `done` units so
far, `total` of them (None when unknown, as for an SAE on an iterable of unknown length),
`info` the `log_` entry written at that unit ({} when none was).

Threads: every subclass's `fit` and `transform` run under `data.threads.fit_threads`, which
picks torch's CPU threads for the call from its size (`_thread_work`) and the free cores and
restores them after, unless the user chose a count (the rule: data/threads.py).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError, check_number  # noqa: F401 (re-exported)
from unsuperpose.data.environment import load_device, resolve_device  # noqa: F401 (re-exported)
from unsuperpose.data.safetensors_io import safetensors_bytes
from unsuperpose.data.threads import fit_threads, torch_default_threads
from unsuperpose.sae.param_docs import (
    field_default,
    param_docs,  # noqa: F401 (re-exported)
    parameters_section,
)

ArrayLike = Any  # np.ndarray | torch.Tensor
Progress = Callable[[int, "int | None", dict], None]  # progress(done, total, info)

# Parameters removed for want of a measured benefit (docs/experiments/) that the config.json of
# an older run may still hold. Those that only steered the fit are dropped on load: the fitted
# state transforms as before. Those that changed transform are dropped only at the value that
# left them off (given here); any other value is refused.
REMOVED_FIT_PARAMS = ("tilt", "resample_every", "resample_until", "k_start", "k_anneal_fraction",
                      "sort_every", "prefix_loss_weight", "inertia")
REMOVED_TRANSFORM_PARAMS = {"refine_with": "decoder", "prefix_fractions": (), "prefix_ks": ()}


# iteration counts no fit can mean: each k-SVD/MOD iteration or SAE epoch is a pass over the
# rows, each SAE step a batch; above these a fit would run for years (or overflow a counter)
MAX_ITERATIONS = {"n_iter": 10 ** 6, "n_epochs": 10 ** 6, "n_steps": 10 ** 9, "max_iter": 10 ** 6}


def check_param(name: str, value, *, choices=None, when: str | None = None,
                boolean: bool = False, device: bool = False,
                at_most: tuple[str, Any] | None = None, **number) -> None:
    """The one check of an estimator config field: a ConfigError naming `name` unless `value`
    is valid. With `number` rules (low, high, low_open, high_open, integer, optional) it must
    be such a number (`check_number`); `at_most=(field, bound)`: also <= another field's value;
    `choices`: one of them; `boolean`: True or False; `device`: a torch device this machine
    has ("auto" = cuda when available, else cpu). `when`: the condition (on other fields)
    that made the rule stricter, shown in the message."""
    if number or at_most is not None:
        try:
            check_number(name, value, **number)
        except ConfigError as err:
            if not when:
                raise
            raise ConfigError(name, err.message.replace(", got ", f" when {when}, got ", 1)) from None
        if name in MAX_ITERATIONS and value is not None and value > MAX_ITERATIONS[name]:
            raise ConfigError(name, f"must be <= {MAX_ITERATIONS[name]} (no fit can mean more), "
                                    f"got {value}")
        if at_most is not None and value is not None and value > at_most[1]:
            raise ConfigError(name, f"must be <= {at_most[0]}={at_most[1]}, got {value!r}")
    if choices is not None and value not in choices:
        condition = f" when {when}" if when else ""
        raise ConfigError(name, f"must be one of {list(choices)}{condition}, got {value!r}")
    if boolean and not isinstance(value, bool):
        raise ConfigError(name, f"must be True or False, got {value!r}")
    if device:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a device name (auto, cpu, cuda, cuda:N), got {value!r}")
        try:
            resolve_device(value)
        except ValueError as err:
            raise ConfigError(name, str(err)) from None


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
    """Base class: subclasses set `method`, `config_class`, implement `fit`, `transform`,
    `inverse_transform`.

    Parameters: the fields of `config_class`, as keyword arguments (see the module docstring).
    Fitted state: `components_` [n_components, d] float32 numpy, unit-norm rows.
    Subclasses may keep more fitted tensors and list them in `_extra_tensors()` /
    restore them in `_load_extra(tensors)` so that save -> load gives the same transform.
    """

    method: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("fit", "transform"):
            if name in vars(cls):
                setattr(cls, name, _under_fit_threads(vars(cls)[name]))
        if not dataclasses.is_dataclass(cls.config_class):
            return
        try:
            types = typing.get_type_hints(cls.config_class)
        except (NameError, TypeError):  # an annotation that does not resolve: show it as text
            types = {}
        cls.__signature__ = inspect.Signature(
            [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=field_default(f),
                               annotation=types.get(f.name, f.type))
             for f in dataclasses.fields(cls.config_class)])
        if "__doc__" in vars(cls) and cls.__doc__:
            cls.__doc__ = inspect.cleandoc(cls.__doc__) + "\n\n" + parameters_section(cls.config_class)

    def __init__(self, **params):
        config = self._validated(params)
        for name in self._param_names():
            setattr(self, name, params[name] if name in params else getattr(config, name))

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.config_class)]

    @classmethod
    def _validated(cls, params: dict):
        """The config of `params`; a ConfigError for an unknown, missing or invalid one."""
        names = cls._param_names()
        for name in params:
            if name not in names:
                raise ConfigError(name, f"{cls.__name__} has no parameter {name!r}; "
                                        f"valid: {', '.join(names)}")
        required = [f.name for f in dataclasses.fields(cls.config_class)
                    if field_default(f) is inspect.Parameter.empty and f.name not in params]
        if required:
            listed = ", ".join(repr(name) for name in required)
            raise ConfigError(required[0], f"{cls.__name__}() missing {len(required)} required "
                                           f"keyword-only argument{'s' * (len(required) > 1)}: "
                                           f"{listed}")
        return cls.config_class(**params)

    def get_config(self):
        """The parameters as the (validated) config dataclass."""
        return self.config_class(**self.get_params())

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments, {name: value} (`deep` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "DictionaryEstimator":
        """Set some parameters (validated together with the others first); returns self."""
        self._validated({**self.get_params(), **params})
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def clone(self) -> "DictionaryEstimator":
        """An unfitted estimator with the same parameters (as `sklearn.base.clone`)."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        """The parameters that differ from their defaults, as scikit-learn shows them."""
        shown = []
        for field in dataclasses.fields(self.config_class):
            default, value = field_default(field), getattr(self, field.name)
            if default is inspect.Parameter.empty or value != default:
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_config(cls, config: dict | Any) -> "DictionaryEstimator":
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        return cls(**config)

    # -- the estimator API ------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, H: ArrayLike, y=None, progress: Progress | None = None) -> "DictionaryEstimator":
        """Learn components_ from H [n_samples, d]; returns self. `progress(done, total, info)`
        is called after each unit of work (the module docstring)."""

    @abc.abstractmethod
    def transform(self, H: ArrayLike) -> ArrayLike:
        """Codes [n_samples, n_components] of H [n_samples, d]."""

    @abc.abstractmethod
    def inverse_transform(self, codes: ArrayLike) -> ArrayLike:
        """Reconstruction [n_samples, d] of codes [n_samples, n_components]."""

    def fit_transform(self, H: ArrayLike, y=None, progress: Progress | None = None) -> ArrayLike:
        return self.fit(H, progress=progress).transform(H)

    def _thread_work(self, H) -> float | None:
        """Multiply-adds of one typical op of a fit or transform of H (rows per op x d x
        n_components; rows per op: batch_size where the method has one), None if unknown."""
        shape = getattr(H, "shape", None)
        n_components = getattr(self, "n_components", None)
        if shape is None or len(shape) != 2 or not n_components:
            return None
        rows = min(shape[0], getattr(self, "batch_size", None) or shape[0])
        return float(rows) * shape[1] * n_components

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
        config = _without_removed_params(dict(saved["config"]), directory / files.CONFIG_FILE)
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


def _under_fit_threads(method):
    """`method(self, H, ...)` run under fit_threads, sized by `self._thread_work(H)`."""
    @functools.wraps(method)
    def wrapper(self, H, *args, **kwargs):
        with fit_threads(self._thread_work(H)):
            return method(self, H, *args, **kwargs)
    return wrapper


torch_default_threads()  # torch's own count, before a user or a fit changes it


def _without_removed_params(config: dict, path: Path) -> dict:
    """`config` (read from `path`) less the REMOVED_* parameters; a ValueError for a removed
    parameter that changed transform and was on."""
    for name in REMOVED_FIT_PARAMS:
        config.pop(name, None)
    for name, off in REMOVED_TRANSFORM_PARAMS.items():
        value = config.pop(name, off)
        if (tuple(value) if isinstance(value, list) else value) != off:
            raise ValueError(f"{path}: fitted with {name}={value!r}, an option that was removed "
                             f"and that its transform needs; refit it")
    return config


def _names(device: str, target: torch.device) -> bool:
    """Whether the device string `device` resolves to `target` on this machine."""
    try:
        return resolve_device(device) == target
    except ValueError:
        return False

