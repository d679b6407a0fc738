"""k-SVD/MOD started from a Matryoshka SAE (sae/warm_start.py) and fitted without the
d / (2 ln n) cap on the atoms per row (`fit_k_cap`): known answers on planted problems."""
import numpy as np
import pytest
import torch

from unsuperpose.data.configs import ConfigError
from unsuperpose.data.planted import planted_problem
from unsuperpose.evaluate.metrics import mmcs
from unsuperpose.sae.config import SAEStageConfig
from unsuperpose.sae.fit_schedule import fit_sparsity
from unsuperpose.sae.methods import build
from unsuperpose.sae.mod import MOD
from unsuperpose.sae.sae_estimators import MatryoshkaSAE
from unsuperpose.sae.sparse_coding_config import PLAIN_ALGORITHM
from unsuperpose.sae.warm_start import matryoshka_atoms


def test_the_fit_k_cap_is_d_over_2_ln_n_or_a_fraction_of_d():
    # the interference rung: d = 160, 2048 atoms, k = 11
    assert fit_sparsity(11, 3.0, 160, 2048) == 11             # d / (2 ln n) = 10.5 < k
    assert fit_sparsity(11, 3.0, 160, 2048, cap=0.2) == 32    # floor(0.2 * 160), below 3k
    assert fit_sparsity(11, 3.0, 96, 2048, cap=0.2) == 19     # synthsaebench-small, d = 96
    assert fit_sparsity(11, 3.0, 160, 20, cap=1.0) == 20      # never above the atoms
    assert fit_sparsity(11, 3.0, 40, 2048, cap=0.2) == 11     # never below k


def test_the_warm_start_atoms_are_the_decoder_of_a_matryoshka_sae_with_a_latent_per_atom():
    H, _ = planted_problem(n_samples=600, n_features=12, d=10, active=2, seed=1)
    cfg = MOD(n_components=12, k=2, init="matryoshka", init_sae_steps=40,
              init_sae_lr=1e-2, device="cpu").get_config()
    D = matryoshka_atoms(H, 15, cfg)          # 12 atoms and 3 spares: 15 latents
    sae = MatryoshkaSAE(n_components=15, k=2, n_steps=40, lr=1e-2, random_state=0,
                        device="cpu").fit(H)
    A = torch.as_tensor(sae.components_)
    assert D.shape == (15, 10)
    assert torch.allclose(D, A / A.norm(dim=1, keepdim=True), atol=1e-6)


@pytest.mark.slow
def test_mod_from_a_matryoshka_start_recovers_a_planted_dictionary_a_data_start_misses():
    H, G = planted_problem(n_samples=3000, n_features=24, d=16, active=3, seed=2)
    plain = {**PLAIN_ALGORITHM, "n_iter": 8}  # the start alone makes the difference
    fits = {init: MOD(n_components=24, k=3, nonnegative=True, init=init, init_sae_steps=1500,
                      device="cpu", **plain).fit(H) for init in ("matryoshka", "data")}
    warm, cold = (mmcs(np.asarray(G), fits[i].components_) for i in ("matryoshka", "data"))
    assert warm > 0.999          # measured 0.9999
    assert cold < 0.98           # measured 0.963: eight iterations from samples are not enough


def test_matryoshka_mod_is_the_same_algorithm_from_build_the_stage_and_its_class():
    from unsuperpose.sae.matryoshka_mod import MatryoshkaMOD

    stage = SAEStageConfig().method_params("matryoshka_mod")
    assert stage == {}                        # the stage adds nothing to the estimator's defaults
    built = build("matryoshka_mod", {"n_components": 8, "k": 2})
    assert type(built) is MatryoshkaMOD and built.method == "matryoshka_mod"
    assert built.get_params() == MatryoshkaMOD(n_components=8, k=2).get_params()
    cfg = built.get_config()
    assert cfg.init == "matryoshka" and cfg.nonnegative and cfg.fit_k_cap == 0.17
    assert cfg.n_iter == 20 and cfg.fit_k_ratio == 3.0 and cfg.fit_tol == 1e-3 and cfg.n_swaps == 0
    assert cfg.incoherence == 0.8 and cfg.row_weight_exponent == 3.0
    assert cfg.residual_weight_scale == 0.01
    assert cfg.anchor_share == 0.5           # a child's part along its parent held
    assert cfg.overcomplete is None          # a quarter more atoms when n_iter leaves time
    assert not cfg.purify and cfg.start_rows is None and cfg.reseed == "pca"


@pytest.mark.parametrize("field, value", [("init_sae_steps", 0), ("init_sae_lr", 0.0),
                                          ("fit_k_cap", 1.5), ("init", "sae")])
def test_a_bad_warm_start_setting_is_refused_by_name(field, value):
    with pytest.raises(ConfigError) as err:
        MOD(n_components=8, k=2, **{field: value})
    assert err.value.field == field


def test_every_registered_method_is_a_choice_of_the_methods_option():
    from unsuperpose.sae.config import METHOD_NAMES
    from unsuperpose.sae.methods import METHODS

    assert METHOD_NAMES == tuple(METHODS)


def test_the_sae_command_fits_matryoshka_mod_with_its_cap_from_the_command_line(tiny_run,
                                                                               tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from unsuperpose.data import files
    from unsuperpose.sae.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(files.SAE_DIR))
    result = CliRunner().invoke(main, [
        "--run-dir", str(run), "--methods", "matryoshka_mod", "--k", "2",
        "--param", "matryoshka_mod.init_sae_steps=20", "--param", "matryoshka_mod.n_iter=2",
        "--param", "matryoshka_mod.fit_k_cap=0.5"])
    assert result.exit_code == 0, result.output
    for instance in files.list_instances(run):
        folder = files.sae_dir(run, instance, "matryoshka_mod")
        saved = json.loads((folder / files.CONFIG_FILE).read_text())
        assert saved["method_name"] == "matryoshka_mod"
        cfg = saved["config"]
        assert (cfg["fit_k_cap"], cfg["init"], cfg["init_sae_steps"]) == (0.5, "matryoshka", 20)
        assert cfg["nonnegative"] and cfg["n_swaps"] == 0   # the rest from the stage defaults
