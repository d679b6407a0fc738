"""The one estimator contract (sae/base.py), for every method of the registry: construction,
get_params / set_params / clone as in scikit-learn, validation, docs, progress."""
import dataclasses
import inspect
import json
import re

import numpy as np
import pytest
import sklearn.base

from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.data.planted import planted_problem
from unsuperpose.sae.base import DictionaryEstimator, param_docs
from unsuperpose.sae.methods import METHODS

# small fits: a few SAE steps, k-SVD/MOD iterations, one sklearn pass
FAST = {"l1": {"n_steps": 20, "batch_size": 64, "log_every": 5},
        "topk": {"n_steps": 20, "batch_size": 64, "log_every": 5, "k": 2},
        "batchtopk": {"n_steps": 20, "batch_size": 64, "log_every": 5, "k": 2},
        "ksvd": {"n_iter": 3, "k": 2}, "ksvd_nn": {"n_iter": 3, "k": 2},
        "mod": {"n_iter": 3, "k": 2}, "mod_nn": {"n_iter": 3, "k": 2},
        "sklearn": {"max_iter": 1, "k": 2},
        "matryoshka": {"n_steps": 20, "batch_size": 64, "log_every": 5, "k": 2},
        "jumprelu": {"n_steps": 20, "batch_size": 64, "log_every": 5},
        "matryoshka_mod": {"n_iter": 3, "k": 2, "init_sae_steps": 20}}
# a valid value other than the default, per parameter kind, for the round trips
OTHER = {"l1": {"lr": 3e-3, "l1_coefficient": 0.05}, "topk": {"k": 3, "aux_k": 4},
         "batchtopk": {"threshold_rate": 0.1}, "ksvd": {"approximate": True, "tol": 1e-3},
         "ksvd_nn": {"n_swaps": 0}, "mod": {"ridge": 1e-3}, "mod_nn": {"reseed": "cluster"},
         "sklearn": {"alpha": 0.5, "fit_algorithm": "lars"},
         "matryoshka": {"prefixes": (0.25, 6), "threshold_rate": 0.1},
         "jumprelu": {"l0_coefficient": 0.5, "bandwidth": 0.2},
         "matryoshka_mod": {"init_sae_steps": 50, "fit_k_cap": 0.5}}


def make(method: str, **params):
    cls, fixed = METHODS[method]
    device = {"device": "cpu"} if "device" in param_names(cls) else {}
    return cls(**{"n_components": 12, **device, **fixed, **FAST[method], **params})


def param_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.config_class)]


@pytest.fixture(scope="module")
def H() -> np.ndarray:
    H, _ = planted_problem(n_samples=400, n_features=12, d=8, active=2, seed=3)
    return H.numpy()


@pytest.mark.parametrize("method", list(METHODS))
def test_get_params_are_the_constructor_arguments(method):
    cls, fixed = METHODS[method]
    given = {"n_components": 12, **fixed, **FAST[method], **OTHER[method]}
    est = cls(**given)
    params = est.get_params()
    assert list(params) == param_names(cls)  # every parameter, in the config's order
    for name, value in given.items():
        assert params[name] is value  # stored as given: what sklearn.base.clone checks
    defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
    for name in set(params) - set(given):
        assert params[name] == defaults[name]
    assert params["random_state"] == 0  # the one default of every method
    assert est.get_params(deep=False) == params
    assert est.get_config() == cls.config_class(**params)


@pytest.mark.parametrize("method", list(METHODS))
def test_set_params_round_trips_and_refuses_unknown_or_invalid_values(method):
    est = make(method)
    before = est.get_params()
    assert est.set_params(**OTHER[method]) is est
    assert est.get_params() == {**before, **OTHER[method]}
    with pytest.raises(ConfigError, match="has no parameter 'no_such_parameter'") as err:
        est.set_params(no_such_parameter=1)
    assert err.value.field == "no_such_parameter"
    with pytest.raises(ConfigError, match="^n_components: must be an integer >= 1, got 0$"):
        est.set_params(n_components=0, random_state=5)
    assert est.get_params() == {**before, **OTHER[method]}  # a refused call changes nothing


@pytest.mark.parametrize("method", list(METHODS))
def test_construction_is_validated_by_the_config(method):
    cls, _ = METHODS[method]
    with pytest.raises(ConfigError, match="^random_state: must be None or an integer >= 0, "
                                          "got -1$"):
        make(method, random_state=-1)
    with pytest.raises(ConfigError, match=f"^n_components: {cls.__name__}\\(\\) missing 1 "
                                          "required keyword-only argument: 'n_components'$"):
        cls(**({"k": 2} if method.endswith("topk") or method == "matryoshka" else {}))
    with pytest.raises(TypeError):
        cls(12)  # keyword only, as scikit-learn's newer estimators


@pytest.mark.parametrize("method", list(METHODS))
def test_clone_gives_an_unfitted_estimator_with_equal_params(method, H):
    est = make(method, **OTHER[method]).fit(H)
    for copy in (sklearn.base.clone(est), est.clone()):
        assert type(copy) is type(est) and copy is not est
        assert copy.get_params() == est.get_params()
        assert getattr(copy, "components_", None) is None
        with pytest.raises(RuntimeError, match="not fitted"):
            copy.transform(H)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_fitted_clone_gives_the_same_components(method, H):
    est = make(method, random_state=4).fit(H)
    again = sklearn.base.clone(est).fit(H)
    np.testing.assert_array_equal(again.components_, est.components_)
    other_seed = est.clone().set_params(random_state=5).fit(H)
    assert not np.array_equal(other_seed.components_, est.components_)


@pytest.mark.parametrize("method", list(METHODS))
def test_progress_is_done_total_info(method, H):
    calls = []
    est = make(method).fit(H, progress=lambda done, total, info: calls.append((done, total, info)))
    expected_total = {"sklearn": 1}.get(method, FAST[method].get("n_steps", FAST[method].get("n_iter")))
    assert [done for done, _, _ in calls] == list(range(1, expected_total + 1))
    assert {total for _, total, _ in calls} == {expected_total}
    # info: the log entry written at that unit of work ({} where none was), fvu in each
    assert [info for _, _, info in calls if info] == est.log_
    assert all("fvu" in entry for entry in est.log_)


@pytest.mark.parametrize("method", list(METHODS))
def test_parameters_are_documented_once_on_the_config(method):
    cls, _ = METHODS[method]
    docs = param_docs(cls.config_class)
    assert list(docs) == param_names(cls)  # every field has its docstring
    assert all(docs.values())
    signature = inspect.signature(cls)
    assert list(signature.parameters) == param_names(cls)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in signature.parameters.values())
    assert signature.parameters["random_state"].default == 0
    # help(cls) shows them, from the same text
    first_line = docs["random_state"].splitlines()[0]
    assert f"    random_state: int | None, default 0\n        {first_line}" in cls.__doc__


def test_the_field_docs_are_the_strings_after_the_fields():
    from unsuperpose.sae.ksvd import KSVDConfig
    from unsuperpose.sae.sae_configs import TopKSAEConfig

    assert param_docs(KSVDConfig)["approximate"] == ("the approximate atom update (Rubinstein "
                                                     "et al. 2008) instead of the rank-1 SVD")
    assert param_docs(TopKSAEConfig)["aux_k"] == "dead latents the AuxK loss may use; None: d // 2"
    # a multi-line docstring keeps its lines, dedented
    assert param_docs(TopKSAEConfig)["dead_steps_threshold"].splitlines() == [
        "a latent silent this many steps counts as dead; keep steps * batch_size well above",
        "1 / (the rarest feature's probability), or AuxK pulls healthy rare latents"]


def test_every_registered_method_is_a_dictionary_estimator():
    for cls, _ in METHODS.values():
        assert issubclass(cls, DictionaryEstimator)
        # constructed by the base class, the same way
        assert [k for k in cls.__mro__ if "__init__" in vars(k)][0] is DictionaryEstimator


@pytest.mark.parametrize("method, removed, needed", [
    ("topk", {"tilt": 0.5, "resample_every": 10, "k_start": 4, "refine_with": "decoder"},
     ("refine_with", "encoder")),
    ("mod", {"inertia": 0.5, "prefix_fractions": [], "prefix_ks": []}, ("prefix_fractions", [0.5]))])
def test_a_run_saved_with_a_removed_option_still_loads(method, removed, needed, H, tmp_path):
    # config.json of an older run records the options removed since; those that only steered
    # the fit are dropped, those that changed transform load only where they were off
    est = make(method).fit(H)
    est.save(tmp_path)
    path = tmp_path / files.CONFIG_FILE
    saved = json.loads(path.read_text())
    saved["config"].update(removed)
    path.write_text(json.dumps(saved))
    back = type(est).load(tmp_path)
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.transform(H), est.transform(H))
    name, value = needed
    saved["config"][name] = value
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=re.escape(f"config.json: fitted with {name}={value!r}, "
                                                   "an option that was removed")):
        type(est).load(tmp_path)
