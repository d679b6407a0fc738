"""The method registry's `build`: it refuses a parameter it does not know, with the message the
classes give, and the stage hands each method only the values it takes."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.methods import METHODS, accepted, build, param_names
from unsuperpose.sae.sae_estimators import TopKSAE


def test_an_unknown_parameter_is_refused_with_the_class_message_named_method_dot_param():
    # the case: a typo used to be dropped, n_epochs silently staying at its default
    with pytest.raises(ConfigError) as err:
        build("topk", {"n_components": 8, "k": 2, "n_epoch": 3, "learning_rate": 5})
    assert err.value.field == "topk.n_epoch"
    with pytest.raises(ConfigError) as direct:
        TopKSAE(n_components=8, k=2, n_epoch=3)
    assert err.value.message == direct.value.message      # the class's own words
    assert str(err.value).startswith("topk.n_epoch: TopKSAE has no parameter 'n_epoch'; valid: ")
    assert "n_epochs" in err.value.message and "lr" in err.value.message  # lists the valid names


@pytest.mark.parametrize("method, name", [("l1", "k"), ("jumprelu", "k"), ("sklearn", "device"),
                                          ("mod", "n_epochs"), ("ksvd", "ridge")])
def test_a_run_value_a_method_does_not_take_is_refused(method, name):
    # the values the stage used to pass to every method: l1 and jumprelu have no k, sklearn no device
    assert name not in param_names(method)
    with pytest.raises(ConfigError, match=f"^{method}.{name}: .* has no parameter '{name}'; valid: "):
        build(method, {"n_components": 8, name: 2 if name != "device" else "cpu"})


def test_a_parameter_that_defines_the_variant_is_taken_only_at_its_value():
    assert build("mod_nn", {"n_components": 8, "k": 2, "nonnegative": True}).nonnegative is True
    assert build("mod", {"n_components": 8, "k": 2}).nonnegative is False
    with pytest.raises(ConfigError, match=r"^mod_nn.nonnegative: is True for mod_nn .*got False"):
        build("mod_nn", {"n_components": 8, "k": 2, "nonnegative": False})


def test_accepted_keeps_exactly_the_names_a_method_takes():
    run = {"n_components": 8, "k": 2, "random_state": 1, "device": "cpu", "max_iter": 3}
    assert accepted("l1", run) == {"n_components": 8, "random_state": 1, "device": "cpu"}
    assert accepted("sklearn", run) == {"n_components": 8, "k": 2, "random_state": 1, "max_iter": 3}
    for method in METHODS:  # whatever accepted keeps, build takes
        build(method, accepted(method, {**run, "max_iter": 1}))


def test_the_stage_fits_l1_jumprelu_and_sklearn_with_star_params(tiny_run, tmp_path):
    from unsuperpose.sae.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # "*" values go to the methods that take them: batch_size to all three, n_epochs to the
    # SAEs, max_iter to sklearn; the run's k to sklearn only, its device to the SAEs only
    result = CliRunner().invoke(main, [
        "--run-dir", str(run), "--instance", "00-p0.2", "--methods", "l1,jumprelu,sklearn",
        "--param", "*.batch_size=256", "--param", "*.n_epochs=2", "--param", "*.max_iter=1",
        "--param", "l1.l1_coefficient=0.05", "--param", "jumprelu.l0_coefficient=0.02",
        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = {m: files.read_json(files.sae_dir(run, "00-p0.2", m) / files.CONFIG_FILE)["config"]
             for m in ("l1", "jumprelu", "sklearn")}
    assert all(cfg["batch_size"] == 256 for cfg in saved.values())
    assert saved["l1"]["n_epochs"] == saved["jumprelu"]["n_epochs"] == 2
    assert saved["sklearn"]["max_iter"] == 1 and saved["sklearn"]["k"] >= 1
    assert "k" not in saved["l1"] and "device" not in saved["sklearn"]
    assert saved["l1"]["l1_coefficient"] == 0.05 and saved["jumprelu"]["l0_coefficient"] == 0.02


def test_the_stage_still_refuses_an_explicit_parameter_a_method_lacks(tiny_run, tmp_path):
    from unsuperpose.sae.cli import main

    result = CliRunner().invoke(main, ["--run-dir", str(tmp_path / "none"), "--methods", "topk",
                                       "--param", "topk.bad=1"])
    assert result.exit_code == 2
    assert "topk has no parameter 'bad'" in result.output
