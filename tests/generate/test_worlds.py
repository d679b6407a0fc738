"""Benchmark worlds: schedules, the Gaussian copula, hierarchies, magnitudes and presets."""
import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from unsuperpose.data import files
from unsuperpose.data.configs import ConfigError
from unsuperpose.data.rows import read_all
from unsuperpose.evaluate.metrics import interference
from unsuperpose.generate.cli import main
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.firing import (
    Correlation,
    Hierarchy,
    copula_fires,
    correlation_from_matrix,
    probability_schedule,
    random_correlation,
)
from unsuperpose.generate.worlds import PRESETS, World, WorldDistribution, preset, spread_directions


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _within_4_sigma(rate: torch.Tensor, p: torch.Tensor, n: int) -> bool:
    """Empirical rates of n Bernoulli draws within 4 binomial standard deviations of p."""
    return bool(((rate - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-9).all())


# ---- schedules -------------------------------------------------------------------------------
def test_schedules_hit_their_endpoints_and_decrease():
    n, p_max, p_min = 50, 0.4, 5e-4
    for kind in ("linear", "exponential", "zipf"):
        p = probability_schedule(kind, n, p_max, p_min, exponent=0.5)
        assert p[0].item() == pytest.approx(p_max) and p[-1].item() == pytest.approx(p_min)
        assert bool((p[1:] < p[:-1]).all()), kind
    assert torch.equal(probability_schedule("constant", n, 0.1, 5e-4), torch.full((n,), 0.1))
    linear = probability_schedule("linear", n, p_max, p_min).double()
    assert torch.allclose(linear.diff(), torch.full((n - 1,), (p_min - p_max) / (n - 1), dtype=torch.float64),
                          atol=1e-7)
    exponential = probability_schedule("exponential", n, p_max, p_min).double()
    ratio = exponential[1:] / exponential[:-1]
    assert torch.allclose(ratio, torch.full_like(ratio, (p_min / p_max) ** (1 / (n - 1))), rtol=1e-5)


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_zipf_schedule_is_the_power_law_rescaled(exponent):
    n, p_max, p_min = 1000, 0.4, 5e-4
    p = probability_schedule("zipf", n, p_max, p_min, exponent=exponent).double()
    # (p_i - p_min) / (p_max - p_min) = ((i+1)^-a - n^-a) / (1 - n^-a)
    i = torch.arange(n, dtype=torch.float64)
    expected = ((i + 1) ** -exponent - n ** -exponent) / (1 - n ** -exponent)
    assert torch.allclose((p - p_min) / (p_max - p_min), expected, atol=1e-6)
    # the exponent shows as the log-log slope of p - p_min + (p_max - p_min) n^-a / (1 - n^-a)
    shifted = p - p_min + (p_max - p_min) * n ** -exponent / (1 - n ** -exponent)
    slope = (shifted[99].log() - shifted[9].log()) / (math.log(100) - math.log(10))
    assert slope.item() == pytest.approx(-exponent, rel=1e-3)


def test_sharkey_preset_decays_by_0_99_with_five_active_on_average():
    cfg = PRESETS["sharkey"]
    p = probability_schedule("exponential", 512, cfg["feature_probability"][0], cfg["p_min"])
    assert p.sum().item() == pytest.approx(5.0, rel=1e-4)
    assert torch.allclose(p[1:] / p[:-1], torch.full((511,), 0.99), rtol=1e-4)


# ---- Gaussian copula -------------------------------------------------------------------------
def test_copula_keeps_marginals_and_gives_the_orthant_probability():
    rho, n_rows = 0.6, 200_000
    sigma = torch.eye(4)
    sigma[0, 1] = sigma[1, 0] = rho
    sigma[2, 3] = sigma[3, 2] = -0.5
    p = torch.tensor([[0.5, 0.5, 0.2, 0.03]])
    fires = copula_fires(p, correlation_from_matrix(sigma), n_rows, _gen())[:, 0].float()  # [rows, 4]
    assert _within_4_sigma(fires.mean(0), p[0], n_rows)
    # bivariate normal orthant: P(z0 < 0, z1 < 0) = 1/4 + arcsin(rho) / (2 pi)
    both = (fires[:, 0] * fires[:, 1]).mean().item()
    expected = 0.25 + math.asin(rho) / (2 * math.pi)
    assert both == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n_rows))
    phi = torch.corrcoef(fires.T)
    assert phi[0, 1] > 0.3 and phi[2, 3] < 0  # asked-for signs, and none between the pairs
    assert abs(phi[0, 2]) < 0.02 and abs(phi[1, 3]) < 0.02


def test_random_low_rank_correlation_is_a_correlation_matrix_and_keeps_marginals():
    n, rank = 40, 3
    corr = random_correlation(n, rank, 0.5, _gen(1))
    sigma = corr.matrix()
    assert corr.factor.shape == (n, rank)
    assert torch.allclose(sigma.diagonal(), torch.ones(n), atol=1e-6)
    assert torch.linalg.eigvalsh(sigma).min() > 0
    # rank * scale^2 well below 1: the factor is scale * N(0, 1) unchanged (SAELens' construction)
    small = random_correlation(n, rank, 0.1, _gen(2))
    assert torch.allclose(small.factor, 0.1 * torch.randn((n, rank), generator=_gen(2)))
    p = probability_schedule("zipf", n, 0.4, 0.01, exponent=0.5)[None]  # [1, n]
    fires = copula_fires(p, corr, 100_000, _gen(3))[:, 0].float()
    assert _within_4_sigma(fires.mean(0), p[0], 100_000)
    # a rank-1 factor of equal loadings asks for positive correlation between every pair
    equal = Correlation(torch.full((n, 1), math.sqrt(0.5)), torch.full((n,), 0.5))
    phi = torch.corrcoef(copula_fires(p, equal, 100_000, _gen(4))[:, 0].float().T)
    assert phi[~torch.eye(n, dtype=torch.bool)].min() > 0.05


# ---- hierarchy -------------------------------------------------------------------------------
def _hierarchy_samples(exclusive: bool, schedule: str, correlation_rank=None, rows=100_000):
    world = World(probability_schedule=schedule, p_min=0.02, zipf_exponent=0.5,
                  hierarchy_roots=2, hierarchy_branching=3, hierarchy_depth=2,
                  hierarchy_exclusive=exclusive, correlation_rank=correlation_rank,
                  correlation_scale=0.5)
    dist = WorldDistribution(world, 30, (0.3,), _gen())
    fires = dist.sample(rows, _gen(1))[:, 0] != 0  # [rows, 30]
    return dist, fires


def test_hierarchy_layout_is_breadth_first():
    parent = Hierarchy(2, 3, 2, True).parent(30)
    assert parent[:2].tolist() == [-1, -1]
    assert parent[2:8].tolist() == [0, 0, 0, 1, 1, 1]  # level 1: 3 children per root
    assert parent[8:26].tolist() == [p for p in range(2, 8) for _ in range(3)]
    assert bool((parent[26:] == -1).all())  # free features after the trees


@pytest.mark.parametrize("correlation_rank", [None, 2])
def test_exclusive_children_fire_only_with_their_parent_and_one_at_a_time(correlation_rank):
    dist, fires = _hierarchy_samples(True, "constant", correlation_rank)
    parent = Hierarchy(2, 3, 2, True).parent(30)
    child = parent >= 0
    assert not bool((fires[:, child] & ~fires[:, parent[child]]).any())  # no child without parent
    siblings = fires[:, 2:26].reshape(-1, 8, 3).sum(-1)  # [rows, parents, 3 children]
    assert siblings.max().item() == 1
    # constant p = 0.3: each parent's three q = 1 are scaled to 1/3, so the realised marginal
    # is 0.3 for roots and free features, 0.1 on level 1, 0.1 / 3 on level 2
    expected = torch.cat([torch.full((2,), 0.3), torch.full((6,), 0.1),
                          torch.full((18,), 0.1 / 3), torch.full((4,), 0.3)])
    assert torch.allclose(dist.probability()[0], expected)
    assert _within_4_sigma(fires.float().mean(0), expected, fires.shape[0])
    # every row where a parent fires has exactly one child firing: the q sum to 1
    level1_parents = fires[:, :2]
    assert torch.equal(fires[:, 2:8].reshape(-1, 2, 3).sum(-1) == 1, level1_parents)


def test_non_exclusive_children_keep_their_stated_marginal():
    dist, fires = _hierarchy_samples(False, "zipf")
    stated = probability_schedule("zipf", 30, 0.3, 0.02, exponent=0.5)
    # children are rarer than their parents here, so the stated marginal is kept exactly
    assert torch.allclose(dist.probability()[0], stated)
    assert _within_4_sigma(fires.float().mean(0), stated, fires.shape[0])
    parent = Hierarchy(2, 3, 2, False).parent(30)
    child = parent >= 0
    assert not bool((fires[:, child] & ~fires[:, parent[child]]).any())
    assert fires[:, 2:8].reshape(-1, 2, 3).sum(-1).max().item() > 1  # siblings may co-fire


def test_child_more_frequent_than_its_parent_is_capped_at_the_parent():
    q, realised = Hierarchy(1, 2, 1, False).conditionals(torch.tensor([[0.1, 0.3, 0.05]]))
    assert torch.allclose(q, torch.tensor([[0.1, 1.0, 0.5]]))
    assert torch.allclose(realised, torch.tensor([[0.1, 0.1, 0.05]]))


def test_child_share_leaves_a_parent_firing_alone():
    # stated (0.1, 0.3, 0.3): the children's q = 3 each sum to 6; share 0.5 scales them to
    # 0.25 each (exclusive), so the parent fires alone half the time; not exclusive: each q
    # capped at 0.5
    p = torch.tensor([[0.1, 0.3, 0.3]])
    q, realised = Hierarchy(1, 2, 1, True, child_share=0.5).conditionals(p)
    assert torch.allclose(q, torch.tensor([[0.1, 0.25, 0.25]]))
    assert torch.allclose(realised, torch.tensor([[0.1, 0.025, 0.025]]))
    q, _ = Hierarchy(1, 2, 1, False, child_share=0.5).conditionals(p)
    assert torch.allclose(q, torch.tensor([[0.1, 0.5, 0.5]]))
    # drawn: with constant p = 0.3 every level-1 parent of _hierarchy_samples would always
    # have a child at share 1 (the test above); at 0.4 it has one 40% of the time
    world = World(probability_schedule="constant", hierarchy_roots=2, hierarchy_branching=3,
                  hierarchy_depth=2, hierarchy_exclusive=True, hierarchy_child_share=0.4)
    fires = WorldDistribution(world, 30, (0.3,), _gen()).sample(100_000, _gen(1))[:, 0] != 0
    roots, kids = fires[:, :2], fires[:, 2:8].reshape(-1, 2, 3).any(-1)  # [rows, 2] each
    with_child = (kids & roots).sum(0).float() / roots.sum(0)
    assert torch.allclose(with_child, torch.tensor([0.4, 0.4]), atol=0.01)
    with pytest.raises(ConfigError, match="^hierarchy_child_share: must be in"):
        World(hierarchy_roots=2, hierarchy_child_share=0.0)


# ---- magnitudes ------------------------------------------------------------------------------
def test_folded_normal_magnitudes_follow_the_per_feature_mean():
    world = World(value="folded_normal", magnitude_mean=(5.0, 4.0), probability_schedule="linear",
                  p_min=0.5)
    dist = WorldDistribution(world, 3, (0.5,), _gen())
    x = dist.sample(1000, _gen(1))[:, 0]  # std 0: every firing value is its feature's mean
    assert torch.equal(x.unique(), torch.tensor([0.0, 4.0, 4.5, 5.0]))
    spread = WorldDistribution(World(value="folded_normal", magnitude_mean=(5.0,), magnitude_std=0.5,
                                     magnitude_std_spread=0.5, correlation_rank=1), 200, (0.5,), _gen())
    assert bool((spread.std >= 0).all()) and spread.std.std().item() > 0.2  # one std per feature
    fired = spread.sample(2000, _gen(2))[:, 0]
    assert bool((fired >= 0).all()) and fired[fired != 0].mean().item() == pytest.approx(5.0, abs=0.05)


# ---- presets through the command -------------------------------------------------------------
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("synthsaebench-small", "interference", "simple", "sharkey")
                                  else n for n in PRESETS if n != "synthsaebench-16k"])
def test_preset_generates_through_the_cli_with_its_schedule_as_ground_truth(tmp_path, name):
    result = CliRunner().invoke(main, ["--world", name, "--rows", "2000", "--rows-per-shard", "1000",
                                       "--device", "cpu", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cfg = PRESETS[name]
    (instance_id,) = files.list_instances(tmp_path)
    inst = files.instance_dir(tmp_path, instance_id)
    gt = load_file(str(inst / files.GROUND_TRUTH_FILE))
    n = cfg["n_features"]
    assert gt[files.GT_DIRECTIONS].shape == (n, cfg["d_hidden"])
    stated = probability_schedule(cfg["probability_schedule"], n, cfg["feature_probability"][0],
                                  cfg.get("p_min", 1e-3), cfg.get("zipf_exponent", 1.0))
    probability = gt[files.GT_PROBABILITY]
    roots = cfg.get("hierarchy_roots", 0)
    free = Hierarchy(roots, 4, 3, True).parent(n) < 0 if roots else torch.ones(n, dtype=torch.bool)
    assert torch.allclose(probability[free], stated[free])  # parentless: the schedule itself
    assert bool((probability <= stated + 1e-7).all())  # children: at most the schedule
    saved = json.loads((files.generate_dir(tmp_path) / files.CONFIG_FILE).read_text())["config"]
    assert saved["world"] == name  # the resolved config: the preset, then the options
    assert saved == GenerateConfig(**{**preset(name), "rows": 2000, "rows_per_shard": 1000,
                                      "device": "cpu"}).to_dict()
    manifest = json.loads((inst / files.MANIFEST_FILE).read_text())
    assert manifest["distribution"]["probability_schedule"] == cfg["probability_schedule"]
    _, x = read_all(inst, with_x=True)
    assert (x != 0).sum(1).mean() == pytest.approx(probability.sum().item(), rel=0.1)


# ---- the ladder: simple, interference, synthsaebench-16k -----------------------------------
_SYNTHSAEBENCH = dict(feature_probability=(0.4,), probability_schedule="zipf", p_min=5e-4,
                      zipf_exponent=0.5, correlation_rank=25, correlation_scale=0.1,
                      hierarchy_branching=4, hierarchy_depth=3, hierarchy_exclusive=True,
                      value="folded_normal", magnitude_mean=(5.0, 4.0), magnitude_std=0.5,
                      magnitude_std_spread=0.5)


@pytest.mark.parametrize("name, fields", [
    ("simple", dict(n_features=1024, d_hidden=256, feature_probability=(0.01,),
                    probability_schedule="constant", value="folded_normal", magnitude_mean=(1.0,),
                    magnitude_std=0.0, magnitude_std_spread=0.0, orthogonalize_steps=50,
                    hierarchy_roots=0, correlation_rank=None)),
    ("interference", dict(n_features=2048, d_hidden=160, hierarchy_roots=16,
                          orthogonalize_steps=50, **_SYNTHSAEBENCH)),
    ("synthsaebench-16k", dict(n_features=16384, d_hidden=768, hierarchy_roots=128,
                               orthogonalize_steps=0, **_SYNTHSAEBENCH)),
])
def test_ladder_presets_resolve_to_their_documented_fields(name, fields):
    config = GenerateConfig(**preset(name))
    assert config.source == "synthetic" and config.world == name
    for field, value in fields.items():
        assert getattr(config, field) == value, field
    if config.hierarchy_roots:  # SynthSAEBench's share of features in trees: 2/3
        assert config.world_spec.hierarchy.n_tree / config.n_features == pytest.approx(0.664, abs=0.01)


def test_simple_preset_draws_unit_magnitudes_with_p_0_01():
    config = GenerateConfig(**preset("simple"))
    world = WorldDistribution(config.world_spec, config.n_features, config.feature_probability, _gen())
    x = world.sample(4000, _gen(1))[:, 0]
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert (x != 0).float().mean().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.slow
def test_spreading_lowers_the_interference_of_the_simple_world():
    atoms = torch.randn((1, 1024, 256), generator=_gen())
    plain = interference(spread_directions(atoms, 0)[0].numpy())
    spread = spread_directions(atoms, PRESETS["simple"]["orthogonalize_steps"])
    assert torch.allclose(spread.norm(dim=-1), torch.ones(1, 1024), atol=1e-5)
    assert plain == pytest.approx(0.212, abs=0.01)  # random: about sqrt(2 ln n / d) territory
    assert interference(spread[0].numpy()) < 0.10  # measured 0.096
    assert torch.equal(spread, spread_directions(atoms, 50))  # deterministic
    square = spread_directions(torch.randn((64, 64), generator=_gen()), 200)  # n = d
    assert interference(square.numpy()) < 0.05  # towards an orthonormal basis


@pytest.mark.slow
def test_interference_preset_has_the_benchmarks_interference():
    cfg = PRESETS["interference"]
    atoms = torch.randn((1, cfg["n_features"], cfg["d_hidden"]), generator=_gen())
    spread = spread_directions(atoms, cfg["orthogonalize_steps"])[0].numpy()
    assert interference(spread) == pytest.approx(0.15, abs=0.01)  # measured 0.153


def test_interference_on_hand_built_directions():
    assert interference(np.eye(5)) == 0.0
    at_60 = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    assert interference(at_60) == pytest.approx(0.5)
    assert interference(np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])) == pytest.approx(2 / 3)
    assert interference(np.vstack([np.eye(3), at_60 @ np.eye(2, 3)]), chunk_entries=5) == pytest.approx(
        interference(np.vstack([np.eye(3), at_60 @ np.eye(2, 3)])))  # blocks change nothing
    assert math.isnan(interference(np.eye(1))) and math.isnan(interference(np.zeros((0, 3))))


@pytest.mark.slow
def test_synthsaebench_16k_draws_rows_with_a_low_rank_copula_only(monkeypatch):
    def dense(self):
        raise AssertionError("formed the dense [n, n] copula matrix")

    monkeypatch.setattr(Correlation, "matrix", dense)
    config = GenerateConfig(**preset("synthsaebench-16k"))
    world = WorldDistribution(config.world_spec, config.n_features, config.feature_probability, _gen())
    n_free = 16384 - (10880 - 128)
    assert world.correlation.factor.shape == (n_free, 25) and world.correlation.diag.shape == (n_free,)
    x = world.sample(2048, _gen(1))  # [rows, 1, n]
    assert x.shape == (2048, 1, 16384) and bool((x >= 0).all())
    assert (x != 0).sum(-1).float().mean().item() == pytest.approx(
        world.probability().sum().item(), rel=0.05)


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--source", "synthetic", "--feature-probability", "1.5"], "--feature-probability.*(0, 1]"),
    (["--world", "synthsaebench-small", "--p-min", "0.5"], "--p-min.*p_min=0.5 > p_max=0.4"),
    (["--world", "synthsaebench-small", "--p-min", "0"], "--p-min.*must lie in (0, 1], got 0.0"),
    (["--world", "sharkey", "--correlation-rank", "0"], "--correlation-rank.*must be >= 1"),
    (["--world", "giant"], "--world.*'giant' is not one of 'sharkey', 'synthsaebench-small', "
                           "'simple', 'interference', 'synthsaebench-16k'"),
    (["--orthogonalize-steps", "5"], "--orthogonalize-steps.*needs --source synthetic"),
    (["--source", "synthetic", "--orthogonalize-steps", "-1"], "--orthogonalize-steps.*must be >= 0"),
    (["--hierarchy-roots", "2"], "--hierarchy-roots.*need --source synthetic"),
    (["--source", "synthetic", "--n-features", "20", "--hierarchy-roots", "1"],
     "--hierarchy-roots.*need 85 features, but n_features is 20"),
    (["--world", "sharkey", "--mean-active", "3"], "--mean-active.*constant --probability-schedule"),
])
def test_bad_world_options_give_a_clear_error(tmp_path, args, message):
    result = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert re.search(re.escape(message).replace(r"\.\*", ".*"), result.output, re.S), result.output
    assert not (tmp_path / "generate").exists()


def test_bad_world_values_name_the_field():
    with pytest.raises(ConfigError, match=r"world: unknown preset 'giant'; valid: sharkey"):
        preset("giant")
    with pytest.raises(ConfigError, match=r"world: unknown preset 'giant'"):
        GenerateConfig(world="giant")
    with pytest.raises(ConfigError, match=r"p_min: must lie in \(0, p_max=0.1\], got 0.2"):
        probability_schedule("zipf", 10, 0.1, 0.2)
    with pytest.raises(ConfigError, match=r"probability_schedule: must be one of constant"):
        World(probability_schedule="cubic")
    with pytest.raises(ConfigError, match=r"correlation_rank: must be >= 1, got 0"):
        random_correlation(10, 0, 0.1, _gen())
    with pytest.raises(ConfigError, match=r"correlation_rank: must be <= the 10 features"):
        GenerateConfig(source="synthetic", n_features=10, correlation_rank=11)


@pytest.mark.slow
def test_toy_model_view_and_report_give_each_instances_interference(tmp_path):
    from unsuperpose.evaluate.config import EvaluateConfig
    from unsuperpose.evaluate.evaluation import Evaluation, InstanceResult
    from unsuperpose.evaluate.inputs import read_instance
    from unsuperpose.evaluate.pipeline import toy_model_view
    from unsuperpose.evaluate.report import render_report

    result = CliRunner().invoke(main, ["--world", "simple", "--rows", "600", "--heldout-rows", "300",
                                       "--device", "cpu", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (instance_id,) = files.list_instances(tmp_path)
    inst = read_instance(tmp_path, instance_id, 1000, False, 0)
    view = toy_model_view(inst)
    assert view["interference"] == pytest.approx(interference(inst.G)) == pytest.approx(0.096, abs=0.01)
    report = render_report(Evaluation(tmp_path, EvaluateConfig(), [InstanceResult(inst, view)], [], []), {})
    assert f"interference (mean max |cos| between them) {view['interference']:.3f}" in report
