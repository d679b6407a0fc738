"""The method registry, the one place that names a method: a name on the command line or in
`build` -> its estimator class and the parameters that define the variant. Everything else a
method fits with is its estimator's defaults, so `build(name, {...})` and `unsuperpose sae
--methods name` fit the same algorithm."""
from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.ksvd import KSVD
from unsuperpose.sae.matryoshka_mod import MatryoshkaMOD
from unsuperpose.sae.mod import MOD
from unsuperpose.sae.param_docs import params_listing
from unsuperpose.sae.sae_estimators import L1SAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, TopKSAE
from unsuperpose.sae.sklearn_baseline import SklearnDictionary

# name -> (estimator class, parameters that define the variant)
METHODS = {
    "l1": (L1SAE, {}),
    "topk": (TopKSAE, {}),
    "batchtopk": (BatchTopKSAE, {}),
    "ksvd": (KSVD, {"nonnegative": False}),
    "ksvd_nn": (KSVD, {"nonnegative": True}),
    "mod": (MOD, {"nonnegative": False}),
    "mod_nn": (MOD, {"nonnegative": True}),
    "sklearn": (SklearnDictionary, {}),
    "matryoshka": (MatryoshkaSAE, {}),
    "jumprelu": (JumpReLUSAE, {}),
    # nonnegative MOD refining a Matryoshka SAE's decoder (sae/matryoshka_mod.py)
    "matryoshka_mod": (MatryoshkaMOD, {}),
}
# every method of the stage; the default run fits sae.config.DEFAULT_METHODS, which leaves out
# the two frontier SAEs (matryoshka, jumprelu) and their hybrid with MOD (matryoshka_mod) so
# that its table stays comparable across runs
ALL_METHODS = METHODS
SAE_METHODS = ("l1", "topk", "batchtopk", "matryoshka", "jumprelu")


def param_names(method: str) -> set[str]:
    cls, _ = ALL_METHODS[method]
    return {f.name for f in dataclasses.fields(cls.config_class)}


def accepted(method: str, params: dict) -> dict:
    """The items of `params` that `method` takes: for a caller that holds values meant for
    several methods (the stage's n_components, k, random_state, device and its "*" params),
    which it must filter before `build`, since `build` refuses a parameter it does not know."""
    names = param_names(method)
    return {name: value for name, value in params.items() if name in names}


def build(method: str, params: dict):
    """An unfitted estimator of `method` with `params`, validated now: an unknown parameter
    or a bad value is refused before any fit, named as `method.param` (ConfigError
    "topk.n_epoch: TopKSAE has no parameter 'n_epoch'; valid: ...", "topk.lr: must be finite
    and > 0, got nan"), as the classes refuse them. A parameter that defines the variant
    (mod_nn's nonnegative=True) may be given only at that value. A caller with values meant
    for several methods passes `accepted(method, values)`."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(ALL_METHODS)}")
    cls, fixed = ALL_METHODS[method]
    for name, value in fixed.items():
        if name in params and params[name] != value:
            raise ConfigError(f"{method}.{name}", f"is {value!r} for {method} (it defines the "
                                                  f"variant), got {params[name]!r}")
    try:
        est = cls(**{**params, **fixed})  # validates: unknown names first, then each value
    except ConfigError as err:
        raise ConfigError(f"{method}.{err.field}", err.message) from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{method}: {err}") from None
    return est


# what the stage sets from the run for every method that takes it (sae/pipeline.py)
SET_BY_STAGE = ("n_components", "k", "random_state", "device")


def list_params(method: str | None = None) -> str:
    """Every method's parameters (or `method`'s, with their whole docs): name, default and
    doc, from the config field docstrings; what `unsuperpose sae --list-params` prints."""
    if method is not None and method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(ALL_METHODS)}")
    head = ("Each method's parameters: name, default, what it does. Defaults are the estimators' "
            "own; set one with --param METHOD.NAME=VALUE, or *.NAME=VALUE for every method that "
            f"has it. {', '.join(SET_BY_STAGE)} are set by the stage from the run.")
    blocks = [params_listing(name, cls.config_class, fixed, SET_BY_STAGE, full=method is not None)
              for name, (cls, fixed) in ALL_METHODS.items() if method in (None, name)]
    return "\n\n".join([textwrap.fill(head, 100), *blocks])


def load(directory: str | os.PathLike, device: str | None = None):
    """The fitted estimator saved in `directory` (dictionary.safetensors + config.json), of
    whichever class the saved config names; errors name the file and the valid methods.

    device: None = where it was fitted when this machine has that device, else cpu; a
    string is resolved strictly (see `DictionaryEstimator.load`)."""
    path = Path(directory) / files.CONFIG_FILE
    saved = files.read_json(path)
    method = saved.get("method") if isinstance(saved, dict) else None
    classes = {cls.method: cls for cls, _ in ALL_METHODS.values()}
    if method not in classes:
        raise ValueError(f"{path}: method {method!r} is none of {', '.join(classes)}")
    return classes[method].load(directory, device=device)
