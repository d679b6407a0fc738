import shutil

import pytest
import torch
from click.testing import CliRunner

from tests.stage_faults import _FAST_SAE, _sae
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.pipeline import run_generate
from unsuperpose.sae.cli import main as sae_main


@pytest.fixture(autouse=True, scope="session")
def _one_thread_for_shared_fixtures():
    # before the session and module fixtures that train (tiny_run, fitted runs): autouse
    # fixtures run first within their scope, and a function-scoped one comes too late
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    # the tests' problems are tiny; extra threads only add contention on a 2-core machine
    torch.set_num_threads(1)


def tiny_config(**overrides) -> GenerateConfig:
    values = dict(n_features=12, d_hidden=4, feature_probability=(0.2, 0.05), steps=300,
                  batch_size=256, lr=1e-2, rows=5000, rows_per_shard=2000, heldout_rows=2000, seed=0,
                  device="cpu")
    values.update(overrides)
    return GenerateConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A small generated run shared (read-only) by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("run")
    run_generate(tiny_config(), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def _stage_template(tiny_run, tmp_path_factory):
    """The shared tiny run with topk and mod_nn fitted; each test works on a copy. Built once a
    session, since the fault tests of data/, generate/, sae/ and evaluate/ all start from it."""
    run = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(tiny_run, run)
    result = _sae(run, *_FAST_SAE)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(_stage_template, tmp_path):
    """A copy of `_stage_template` that a test may change (tests/stage_faults.py damages it)."""
    dst = tmp_path / "run"
    shutil.copytree(_stage_template, dst)
    return dst


EXPORT_INSTANCE = "00-p0.2"
# jumprelu at a fixed coefficient: no calibration fits
EXPORT_SAE = ["--instance", EXPORT_INSTANCE, "--methods", "topk,jumprelu,mod", "--n-epochs", "10",
              "--n-iter", "3", "--param", "*.batch_size=256", "--param",
              "jumprelu.l0_coefficient=0.02", "--device", "cpu", "--export", "saelens"]


@pytest.fixture(scope="session")
def exported_run(tiny_run, tmp_path_factory):
    """The shared tiny run, copied, with topk, jumprelu and mod fitted to one instance and
    the SAEs exported to SAELens (the export tests of sae/ and the external ones of evaluate/)."""
    run = tmp_path_factory.mktemp("saelens-run") / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(sae_main, ["--run-dir", str(run)] + EXPORT_SAE)
    assert result.exit_code == 0, result.output
    return run
