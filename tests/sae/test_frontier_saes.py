"""The frontier SAEs: Matryoshka BatchTopK and JumpReLU. Losses and pseudo-derivatives by
hand, planted recovery, save/load, SAELens export, and the estimator contract."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unsuperpose.data.configs import ConfigError
from unsuperpose.data.planted import planted_problem
from unsuperpose.evaluate.metrics import mmcs
from unsuperpose.sae import methods
from unsuperpose.sae.config import SAEStageConfig
from unsuperpose.sae.losses import jumprelu, jumprelu_l0, prefix_reconstruction_mses
from unsuperpose.sae.sae_configs import default_prefixes, resolve_prefixes
from unsuperpose.sae.sae_estimators import JumpReLUSAE, MatryoshkaSAE
from unsuperpose.sae.sae_module import SAEOutput, SparseAutoencoder
from unsuperpose.sae.saelens_export import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE

FRONTIER = {"matryoshka": MatryoshkaSAE, "jumprelu": JumpReLUSAE}
# small fits, as tests/sae/test_estimator_contract.py's FAST
FAST = {"matryoshka": {"n_steps": 20, "batch_size": 64, "log_every": 5, "k": 2},
        "jumprelu": {"n_steps": 20, "batch_size": 64, "log_every": 5}}
OTHER = {"matryoshka": {"prefixes": (0.25, 6), "threshold_rate": 0.1},
         "jumprelu": {"l0_coefficient": 0.5, "bandwidth": 0.2}}


# ---- Matryoshka: the prefixes and their loss -------------------------------------------------
def test_prefix_widths_resolve_as_documented():
    assert default_prefixes(64) == (4, 8, 16, 32, 64)
    assert default_prefixes(6) == (1, 2, 3, 6)
    assert resolve_prefixes(None, 32) == (2, 4, 8, 16, 32)
    assert resolve_prefixes((0.25, 0.5), 32) == (8, 16, 32)    # n appended
    assert resolve_prefixes([3, 0.5, 32], 32) == (3, 16, 32)   # sizes and fractions mixed
    assert MatryoshkaSAE(n_components=12, k=2, prefixes=(0.25, 6)).prefix_widths() == (3, 6, 12)
    for bad, message in [((8, 4), "strictly increasing"), ((0,), "a size must be in"),
                         ((1.5,), "a fraction must be in"), ("8", "a sequence"),
                         ((), "at least one"), ((True,), "sizes \\(int\\)")]:
        with pytest.raises(ConfigError, match=f"^prefixes: .*{message}") as err:
            MatryoshkaSAE(n_components=32, k=2, prefixes=bad)
        assert err.value.field == "prefixes"


def test_matryoshka_prefix_loss_by_hand():
    # d = 2, three atoms as W_dec columns: (1, 0), (0, 1), (0.6, 0.8); b_dec = (0.1, 0)
    W_dec = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]])
    b_dec = torch.tensor([0.1, 0.0])
    h = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    codes = torch.tensor([[0.5, 1.0, 0.5], [0.0, 0.0, 0.0]])
    # row 0, prefix 1: (0.1, 0) + 0.5 (1, 0) = (0.6, 0), error (0.4, 1) -> 1.16
    #        prefix 3: + 1 (0, 1) + 0.5 (0.6, 0.8) = (0.9, 1.4), error (0.1, -0.4) -> 0.17
    # row 1: b_dec alone, error (-0.1, 0) -> 0.01 at both widths; means over the two rows
    mses = prefix_reconstruction_mses(h, codes, W_dec, b_dec, (1, 3))
    assert torch.allclose(mses, torch.tensor([0.585, 0.09]))
    assert torch.allclose(prefix_reconstruction_mses(h, codes, W_dec, b_dec, (1, 2, 3))[1],
                          torch.tensor((0.4 ** 2 + 0 + 0.01) / 2))  # (0.6, 1) -> (0.4, 0)

    # the estimator's penalty is the inner widths' sum (the full width is the loop's MSE),
    # from the same codes, plus AuxK (zero: no latent dead)
    sae = SparseAutoencoder(2, 3, "batchtopk", k=1)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    est = MatryoshkaSAE(n_components=3, k=1, prefixes=(1,))
    out = SAEOutput(sae.decode(codes), codes, codes)
    penalty, terms = est._penalty(sae, h, out, 0, torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(penalty, torch.tensor(0.585)) and set(terms) == {"aux", "prefix_mse"}
    est2 = MatryoshkaSAE(n_components=3, k=1, prefixes=(1, 2))
    penalty2, _ = est2._penalty(sae, h, out, 0, torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(penalty2, torch.tensor(0.585 + 0.085))
    # one prefix (the whole dictionary): BatchTopK's loss
    est3 = MatryoshkaSAE(n_components=3, k=1, prefixes=(3,))
    assert est3._penalty(sae, h, out, 0, torch.zeros(3, dtype=torch.bool))[0] == 0


def test_matryoshka_without_its_prefix_loss_trains_exactly_as_batchtopk():
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2, seed=2)
    params = dict(n_components=16, k=2, n_steps=60, batch_size=32, random_state=0)
    plain = methods.build("batchtopk", params).fit(H)
    # one prefix, the whole dictionary: no inner term
    unnested = methods.build("matryoshka", {**params, "prefixes": (16,)}).fit(H)
    nested = methods.build("matryoshka", params).fit(H)
    assert np.array_equal(plain.components_, unnested.components_)
    assert not np.allclose(plain.components_, nested.components_)


# ---- JumpReLU: the straight-through estimators ------------------------------------------------
def test_jumprelu_threshold_gradient_is_the_documented_pseudo_derivative():
    eps = 0.1
    pre = torch.tensor([[0.30, 0.62], [0.48, 0.10]], requires_grad=True)
    log_theta = torch.tensor([0.5, 0.6]).log().requires_grad_(True)
    theta = log_theta.exp()
    # |pre - theta| < eps / 2 only at (0, 1) (0.02, above theta) and (1, 0) (0.02, below)
    f = jumprelu(pre, theta, eps)
    assert torch.allclose(f, torch.tensor([[0.0, 0.62], [0.0, 0.0]]))
    g_pre, g_theta = torch.autograd.grad(f.sum(), (pre, theta), retain_graph=True)
    assert torch.equal(g_pre, torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # H(pre - theta)
    # -(theta / eps) K: one row in the window per latent -> -(0.5 / 0.1), -(0.6 / 0.1)
    assert torch.allclose(g_theta, torch.tensor([-5.0, -6.0]))
    # L0 = mean_b sum_i H = (1 + 0) / 2; d/d theta = -(1 / eps) (rows in the window) / batch
    l0 = jumprelu_l0(pre, theta, eps)
    assert l0.item() == 0.5
    g_pre, g_theta, g_log = torch.autograd.grad(l0, (pre, theta, log_theta))
    assert torch.equal(g_pre, torch.zeros(2, 2))  # the L0 trains only the thresholds
    assert torch.allclose(g_theta, torch.tensor([-5.0, -5.0]))
    assert torch.allclose(g_log, torch.tensor([-5.0 * 0.5, -5.0 * 0.6]))  # theta d/d theta


def test_jumprelu_module_trains_and_infers_with_the_same_thresholds():
    sae = SparseAutoencoder(2, 2, "jumprelu", bandwidth=0.1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.log_threshold.copy_(torch.tensor([0.5, 0.2]).log())
    sae.sync_threshold_()
    h = torch.tensor([[0.6, 0.1], [0.4, 0.3]])
    expected = torch.tensor([[0.6, 0.0], [0.0, 0.3]])
    assert torch.allclose(sae.train()(h).codes, expected)
    assert torch.allclose(sae.eval().encode(h), expected)
    assert torch.allclose(sae.threshold, torch.tensor([0.5, 0.2]))


# ---- planted recovery --------------------------------------------------------------------------
# 32 unit atoms, 2 active per row. JumpReLU in d = 16 with as many latents as atoms; Matryoshka in
# d = 32 with twice as many: its inner prefixes reconstruct alone, so their atoms also carry
# part of the features that co-occur with them (feature "hedging"), in d = 16 at n = 32 that
# left MMCS at 0.89 (BatchTopK: 0.96); in d = 32 the later latents recover the atoms.
RECOVERY = {
    "jumprelu": (dict(d=16), dict(n_components=32, n_epochs=10)),
    "matryoshka": (dict(d=32), dict(n_components=64, k=2, n_epochs=10)),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RECOVERY))
def test_planted_recovery(method):
    problem, params = RECOVERY[method]
    H, atoms = planted_problem(n_samples=8000, n_features=32, active=2, seed=0, **problem)
    started = time.perf_counter()
    est = FRONTIER[method](device="cpu", random_state=0, **params).fit(H.numpy())
    seconds = time.perf_counter() - started
    assert mmcs(atoms, est.components_) >= 0.95
    assert seconds < 30  # ~1-3 s alone on this CPU
    codes = est.transform(H.numpy())
    assert abs((codes > 0).sum(axis=1).mean() - 2) < 0.3  # L0 near the planted 2
    assert est.log_[-1]["fvu"] < 0.15


# ---- persistence and export --------------------------------------------------------------------
def small_fit(method, H, **params):
    defaults = dict(n_components=16, random_state=0, batch_size=64, n_steps=30, log_every=10,
                    device="cpu", **({"k": 2} if method == "matryoshka" else {}))
    return FRONTIER[method](**{**defaults, **params}).fit(H)


@pytest.mark.parametrize("method", sorted(FRONTIER))
def test_save_load_gives_the_same_transform(method, tmp_path):
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    est = small_fit(method, H.numpy(), **({"prefixes": (0.25, 0.5)}
                                          if method == "matryoshka" else {}))
    est.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == method
    for loaded in (FRONTIER[method].load(tmp_path), methods.load(tmp_path)):
        assert type(loaded) is FRONTIER[method]
        assert np.array_equal(loaded.components_, est.components_)
        assert np.array_equal(loaded.transform(H.numpy()), est.transform(H.numpy()))
        codes = est.transform(H)
        assert torch.equal(loaded.inverse_transform(codes), est.inverse_transform(codes))
        assert torch.equal(loaded.sae_.threshold, est.sae_.threshold)
    if method == "jumprelu":
        assert est.sae_.threshold.shape == (16,) and (est.sae_.threshold > 0).all()
        # the inference threshold is the trained one
        assert torch.allclose(est.sae_.threshold, est.sae_.log_threshold.detach().exp())
    else:
        assert FRONTIER[method].load(tmp_path).prefix_widths() == (4, 8, 16)


@pytest.mark.parametrize("method", sorted(FRONTIER))
def test_export_saelens_as_jumprelu_with_thresholds(method, tmp_path):
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    est = small_fit(method, H.numpy())
    est.export_saelens(tmp_path)
    cfg = json.loads((tmp_path / SAELENS_CFG_FILE).read_text())
    weights = load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))
    assert cfg["architecture"] == "jumprelu" and (cfg["d_in"], cfg["d_sae"]) == (8, 16)
    assert cfg["metadata"]["unsuperpose_method"] == method
    assert {name: tuple(t.shape) for name, t in weights.items()} == {
        "W_enc": (8, 16), "b_enc": (16,), "W_dec": (16, 8), "b_dec": (8,), "threshold": (16,)}
    assert torch.allclose(weights["threshold"], est.sae_.threshold.expand(16))
    # SAELens's JumpReLU forward, written out from its layout, gives our reconstruction
    pre = (H - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    codes = pre.relu() * (pre > weights["threshold"])
    ours = est.inverse_transform(est.transform(H))
    assert torch.allclose(codes @ weights["W_dec"] + weights["b_dec"], ours, atol=1e-5)


# ---- registry and the estimator contract -------------------------------------------------------
def test_registered_for_build_load_and_the_stage_but_not_the_default_run():
    assert set(FRONTIER) <= set(methods.METHODS)
    assert not set(FRONTIER) & set(SAEStageConfig().methods)  # the default run's methods
    assert set(FRONTIER) <= set(methods.SAE_METHODS)
    est = methods.build("jumprelu", {"n_components": 8, "l0_coefficient": 0.2})
    assert isinstance(est, JumpReLUSAE) and est.l0_coefficient == 0.2
    with pytest.raises(ConfigError, match="^jumprelu.k: JumpReLUSAE has no parameter 'k'"):
        methods.build("jumprelu", {"n_components": 8, "k": 3})  # k: not its parameter
    with pytest.raises(ConfigError, match="^matryoshka.prefixes: "):
        methods.build("matryoshka", {"n_components": 8, "k": 2, "prefixes": (4, 2)})
    config = SAEStageConfig(methods=("topk", "matryoshka", "jumprelu"),
                            params={"jumprelu": {"bandwidth": 0.05}})
    assert config.method_params("jumprelu") == {"bandwidth": 0.05}
    assert JumpReLUSAE.calibrated_coefficient == "l0_coefficient"
    assert MatryoshkaSAE.calibrated_coefficient is None


# the estimator contract (get/set_params, clone, progress, docs) is checked for these methods by
# tests/sae/test_estimator_contract.py, which iterates the registry
@pytest.mark.parametrize("method", sorted(FRONTIER))
def test_construction_is_validated_by_the_config(method):
    cls = FRONTIER[method]
    with pytest.raises(ConfigError, match="^random_state: must be None or an integer >= 0, "
                                          "got -1$"):
        cls(n_components=12, random_state=-1, **FAST[method])
    missing = ("2 required keyword-only arguments: 'n_components', 'k'" if method == "matryoshka"
               else "1 required keyword-only argument: 'n_components'")
    with pytest.raises(ConfigError, match=f"^n_components: {cls.__name__}\\(\\) missing {missing}$"):
        cls()
    with pytest.raises(TypeError):
        cls(12)
    for name, value in [("bandwidth", 0), ("l0_coefficient", -1), ("init_threshold", 0)]:
        if method == "jumprelu":
            with pytest.raises(ConfigError, match=f"^{name}: "):
                cls(n_components=12, **{name: value})


# ---- Matryoshka on a hierarchical world ------------------------------------------------------
def hierarchical_problem(seed: int = 0, rows: int = 32768):
    """128 features in d = 48, 104 of them in 8 trees (branching 3, depth 2, exclusive
    children), zipf firing from 0.3, magnitudes ~5: parents and children co-fire."""
    from unsuperpose.generate.worlds import World, WorldDistribution

    world = World(probability_schedule="zipf", p_min=5e-3, zipf_exponent=0.5, hierarchy_roots=8,
                  hierarchy_branching=3, hierarchy_depth=2, hierarchy_exclusive=True,
                  value="folded_normal", magnitude_mean=(5.0, 4.0), magnitude_std=0.5,
                  magnitude_std_spread=0.5)
    gen = torch.Generator().manual_seed(seed)
    dist = WorldDistribution(world, 128, (0.3,), gen)
    x = dist.sample(rows, gen)[:, 0]                                  # [rows, 128]
    G = torch.nn.functional.normalize(torch.randn(128, 48, generator=gen), dim=1)
    H = x @ G                                                         # [rows, 48]
    return H[H.norm(dim=1) > 0], G, max(1, round(float(dist.marginal.sum())))


@pytest.mark.slow
def test_matryoshka_keeps_one_latent_per_feature_where_topk_absorbs_children():
    # measured: matryoshka uniqueness 0.92, topk 0.66, mod_nn 0.57 (atoms mixing a parent
    # with a child: the k-sparse objective prefers one atom for two co-firing features)
    from unsuperpose.evaluate.metrics import uniqueness

    H, G, k = hierarchical_problem()
    params = dict(n_components=128, k=k, n_steps=2000, lr=3e-3, random_state=0)
    scores = {m: uniqueness(G.numpy(), methods.build(m, params).fit(H).components_)
              for m in ("matryoshka", "topk")}
    assert scores["matryoshka"] > 0.88
    assert scores["topk"] < 0.75
