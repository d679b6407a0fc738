"""SAELens out: `unsuperpose sae --export saelens` writes SAELens folders inside the stage, and
SAELens itself loads them (in CI, in the side venv of `make saelens-venv`)."""
import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.conftest import EXPORT_INSTANCE as INSTANCE
from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.sae.cli import main as sae_main
from unsuperpose.sae.saelens_export import REFINE_STEPS_KEY, SAELENS_DIR, export_estimator


# ---- sae --export saelens -------------------------------------------------------------------
def test_export_writes_a_saelens_folder_per_sae_and_records_it(exported_run):
    root = files.sae_root(exported_run)
    for method, arch in (("topk", "topk"), ("jumprelu", "jumprelu")):
        folder = root / INSTANCE / method / SAELENS_DIR
        cfg = json.loads((folder / files.SAELENS_CFG_FILE).read_text())
        assert cfg["architecture"] == arch and cfg["d_in"] == 4
        assert cfg["metadata"]["unsuperpose_method"] == method
        assert cfg["metadata"]["unsuperpose_instance_id"] == INSTANCE
        assert REFINE_STEPS_KEY not in cfg["metadata"]
        weights = load_file(str(folder / files.SAELENS_WEIGHTS_FILE))
        assert weights["W_enc"].shape == (4, cfg["d_sae"]) == weights["W_dec"].T.shape
        saved = json.loads((root / INSTANCE / method / files.CONFIG_FILE).read_text())
        assert saved["exports"] == {"saelens": SAELENS_DIR}
    assert cfg.get("k") is None and json.loads(
        (root / INSTANCE / "topk" / SAELENS_DIR / files.SAELENS_CFG_FILE).read_text())["k"] >= 1
    assert not (root / INSTANCE / "mod" / SAELENS_DIR).exists()  # not an SAE
    stage = json.loads((root / files.CONFIG_FILE).read_text())
    assert stage["config"]["export"] == ["saelens"]
    exports = {f["method"]: f.get("exports") for f in stage["fits"]}
    assert exports == {"topk": {"saelens": f"{INSTANCE}/topk/saelens"},
                       "jumprelu": {"saelens": f"{INSTANCE}/jumprelu/saelens"}, "mod": None}
    assert not list(exported_run.glob(".sae.tmp-*"))  # written inside the stage, swapped in


def test_an_unknown_export_format_is_refused_naming_the_option(tiny_run):
    result = CliRunner().invoke(sae_main, ["--run-dir", str(tiny_run), "--export", "hf"])
    assert result.exit_code == 2 and "--export" in result.output and "'hf'" in result.output
    with pytest.raises(ConfigError, match="^export: unknown format"):
        from unsuperpose.sae.config import SAEStageConfig
        SAEStageConfig(export=("saelens", "x"))


def test_a_refined_encoder_is_exported_with_its_steps_and_a_warning(exported_run, tmp_path):
    from unsuperpose.sae import load

    est = load(files.sae_dir(exported_run, INSTANCE, "topk"))
    _, warning = export_estimator(est, tmp_path / "plain")
    assert warning is None
    est.refine_steps = 3  # the encoder-refinement option SAELens cannot represent
    folder, warning = export_estimator(est, tmp_path / "refined", metadata={"x": 1})
    cfg = json.loads((folder / files.SAELENS_CFG_FILE).read_text())
    assert cfg["metadata"][REFINE_STEPS_KEY] == 3 and cfg["metadata"]["x"] == 1
    assert "\n" not in warning and "refine_steps=3" in warning and "unrefined encoder" in warning
    # the weights are the unrefined encoder's, as the plain export's
    assert (folder / files.SAELENS_WEIGHTS_FILE).read_bytes() == (
        tmp_path / "plain" / files.SAELENS_WEIGHTS_FILE).read_bytes()


def test_the_stage_warns_once_when_an_sae_refines_its_codes(tiny_run, tmp_path):
    from unsuperpose.sae.methods import param_names

    if "refine_steps" not in param_names("topk"):
        pytest.skip("the SAEs have no refine_steps option")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(sae_main, [
        "--run-dir", str(run), "--instance", INSTANCE, "--methods", "topk", "--n-epochs", "2",
        "--device", "cpu", "--export", "saelens", "--param", "topk.refine_steps=2"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"sae/{INSTANCE}/topk/saelens" in warnings[0]
    assert "unrefined encoder" in warnings[0]
    cfg = json.loads((files.sae_dir(run, INSTANCE, "topk") / SAELENS_DIR /
                      files.SAELENS_CFG_FILE).read_text())
    assert cfg["metadata"][REFINE_STEPS_KEY] == 2


# the SAELens check runs in CI, in the side venv `make saelens-venv` builds (`make test` runs it
# there): where CI is set, or UNSUPERPOSE_REQUIRE_SAELENS is, a missing sae_lens fails the test
REQUIRE_SAELENS = "UNSUPERPOSE_REQUIRE_SAELENS"


def _sae_lens():
    """The sae_lens module; outside CI, a skip where it is not installed."""
    required = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if not (required or os.environ.get(REQUIRE_SAELENS)):
        return pytest.importorskip("sae_lens")
    try:
        import sae_lens
    except ImportError as error:
        problem = error
    else:
        return sae_lens
    pytest.fail(f"sae_lens cannot be imported ({problem}), and CI (or {REQUIRE_SAELENS}) asks for "
                f"this test to run: `make test` runs it in the side venv `make saelens-venv` builds",
                pytrace=False)


def _fitted_in_process(method, H):
    from unsuperpose.sae import build
    from unsuperpose.sae.methods import accepted

    params = {"n_components": 8, "k": 2, "n_epochs": 2, "batch_size": 128, "device": "cpu",
              "random_state": 0}
    return build(method, accepted(method, params)).fit(H)  # l1: no k


@pytest.mark.parametrize("method", ["topk", "jumprelu", "l1", "batchtopk", "matryoshka"])
def test_our_export_loads_in_saelens(exported_run, method, tmp_path):
    """SAELens itself loads the export of every SAE architecture we write and encodes, decodes
    and reconstructs as our estimator does: topk and jumprelu exported by the stage, the others
    fitted here and exported with export_estimator."""
    sae_lens = _sae_lens()
    from unsuperpose.sae import load
    from unsuperpose.sae.saelens_export import ARCHITECTURES

    torch.manual_seed(0)
    H = torch.rand(256, 4) * (torch.rand(256, 4) < 0.5)  # sparse nonnegative rows, as the toys'
    if method in ("topk", "jumprelu"):
        folder = files.sae_dir(exported_run, INSTANCE, method)
        ours, exported = load(folder), folder / SAELENS_DIR
    else:
        ours = _fitted_in_process(method, H.numpy())
        exported, warning = export_estimator(ours, tmp_path / method)
        assert warning is None
    theirs = sae_lens.SAE.load_from_disk(str(exported), device="cpu")
    n = ours.sae_.n_components
    assert (theirs.cfg.d_in, theirs.cfg.d_sae) == (4, n)
    assert theirs.cfg.architecture() == ARCHITECTURES[ours.sae_.activation]
    with torch.no_grad():
        codes = torch.as_tensor(ours.transform(H.numpy()))
        assert (codes > 0).any(dim=1).float().mean() > 0.5  # a comparison of codes, not of zeros
        reconstruction = torch.as_tensor(ours.inverse_transform(codes.numpy()))
        torch.testing.assert_close(theirs.encode(H), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), reconstruction, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(H), reconstruction, atol=1e-5, rtol=1e-5)
