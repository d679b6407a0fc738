"""generate.paper: the measures on hand-made matrices (fast), the paper's qualitative results
on small settings, and the report with every data file (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from unsuperpose.data.configs import ConfigError
from unsuperpose.generate.paper import intro, phase, privileged
from unsuperpose.generate.paper.common import WeightedDistribution, interference, represented, train_grid
from unsuperpose.generate.paper.config import PaperConfig
from unsuperpose.generate.paper.geometry import densities, dimensions_per_feature, longest_run, near_sticky


def test_classify_extra_feature_on_hand_made_matrices():
    W = torch.tensor([[[1.0, -1.0]],    # antipodal pair: superposition
                      [[0.0, 1.0]],     # the extra feature owns the dimension
                      [[1.0, 0.1]],     # the extra feature is dropped
                      [[0.05, 0.9]]])   # almost alone: dedicated
    assert phase.classify(W).tolist() == [phase.SUPERPOSITION, phase.DEDICATED,
                                          phase.NOT_REPRESENTED, phase.DEDICATED]
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    triangle = torch.stack([angles.cos(), angles.sin()])  # [2, 3]
    own = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # feature 1 dropped, 2 has its own
    assert phase.classify(torch.stack([triangle, own])).tolist() == [phase.SUPERPOSITION,
                                                                     phase.DEDICATED]


def test_reference_phase_has_the_papers_shape():
    assert phase.reference_phase(5.0, 1.0) == phase.DEDICATED
    assert phase.reference_phase(0.2, 1.0) == phase.NOT_REPRESENTED
    assert phase.reference_phase(1.0, 0.01) == phase.SUPERPOSITION
    assert phase.reference_phase(10.0, 0.5) == phase.DEDICATED  # the wedge narrows with r
    assert phase.reference_phase(0.1, 0.5) == phase.NOT_REPRESENTED


def test_interference_and_represented():
    W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.3]])
    assert interference(W).tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert represented(W).tolist() == [True, True, False]


def test_neuron_kinds_on_a_hand_made_matrix():
    W = torch.tensor([[1.0, 0.0, 0.0],    # monosemantic
                      [1.0, 0.2, 0.0],    # 1 / 1.04 = 96% in one feature: monosemantic
                      [1.0, 1.0, 0.0],    # polysemantic
                      [0.0, -0.6, 0.5],   # polysemantic
                      [0.05, 0.0, 0.0]])  # dead
    kinds = privileged.neuron_kinds(W)
    assert kinds["monosemantic"].tolist() == [True, True, False, False, False]
    assert kinds["polysemantic"].tolist() == [False, False, True, True, False]
    assert kinds["dead"].tolist() == [False, False, False, False, True]
    counts = privileged.kind_counts(W[None])
    assert counts == {"dead": [1], "monosemantic": [2], "polysemantic": [2]}


def test_privileged_checks_pass_the_papers_pattern_and_fail_a_rotated_dense_model():
    eye = torch.cat([torch.eye(5), torch.zeros(5, 5)], 1)  # dense: top 5 features, one each
    sparse = torch.ones(5, 10)  # every neuron on every feature
    W = torch.stack([eye, eye, sparse, sparse])
    probabilities = (1.0, 0.1, 0.01, 0.001)
    assert [c.passed for c in privileged.checks(W, probabilities)] == [True, True, None]
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))
    rotated = torch.stack([q @ eye, eye, sparse, sparse])  # dense but polysemantic
    assert [c.passed for c in privileged.checks(rotated, probabilities)][:2] == [False, False]
    mono_sparse = torch.stack([eye, eye, eye, sparse])  # S=0.99 still monosemantic
    assert privileged.checks(mono_sparse, probabilities)[1].passed is False


def test_geometry_densities_sample_the_plateau_and_runs():
    inv = 1 / densities(20)
    assert len(inv) == 20 and inv[0] == pytest.approx(1) and inv[-1] == pytest.approx(1000)
    assert (np.diff(inv) > 0).all() and ((inv >= 2.2 - 1e-9) & (inv <= 5 + 1e-9)).sum() >= 10
    assert len(densities(100)) == 100 and len(densities(2)) == 2
    assert longest_run(np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)) == (2, 3)
    assert longest_run(np.zeros(3, bool)) == (0, 0)


def test_pentagon_angles_and_pair_angle():
    theta = torch.arange(5) * 2 * math.pi / 5 + 0.3
    W = torch.stack([theta.cos(), theta.sin()])
    assert intro.adjacent_angles(W) == pytest.approx([72.0] * 5)
    dense = torch.tensor([[1.0, 0.0, 0.01], [0.0, 1.0, 0.0]])
    assert intro.pair_angle(dense) == pytest.approx(90.0)
    checks = intro.checks(torch.stack([torch.cat([dense, torch.zeros(2, 2)], 1), W]))
    assert [c.passed for c in checks] == [True, True]


def test_weighted_distribution_importance_per_instance():
    dist = WeightedDistribution(n_features=2, feature_probability=(1.0, 0.5),
                                instance_importance=((1.0, 3.0), (1.0, 0.1)))
    assert torch.allclose(dist.importance(), torch.tensor([[1.0, 3.0], [1.0, 0.1]]))
    assert WeightedDistribution(n_features=3, feature_probability=(1.0,),
                                importance_decay=0.5).importance().tolist() == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="instance_importance"):
        WeightedDistribution(n_features=2, feature_probability=(1.0,),
                             instance_importance=((1.0,),))


def test_geometry_measures():
    W = torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]])  # two antipodal pairs
    assert dimensions_per_feature(W).tolist() == [0.5]
    assert near_sticky(torch.tensor([0.5, 0.41, 0.6, 0.34])).tolist() == [True, True, False, True]


def test_config_resolves_and_refuses():
    config = PaperConfig(device="cpu").resolved()
    assert (config.device, config.instances) == ("cpu", 20)
    assert PaperConfig(device="cpu", instances=7).resolved().instances == 7
    for bad in ({"phase_grid": 1}, {"lr": 0.0}, {"device": "tpu"}, {"instances": 1}):
        with pytest.raises(ConfigError):
            PaperConfig(**bad)


def test_cli_help_and_bad_option():
    from unsuperpose.generate.paper.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--instances" in result.output and "--seed" in result.output
    result = CliRunner().invoke(main, ["--phase-grid", "1"])
    assert result.exit_code == 2 and "--phase-grid" in result.output


@pytest.mark.slow
def test_intro_dense_two_orthogonal_sparse_pentagon():
    trained = train_grid("relu_output", 5, 2, (1.0, 0.05), steps=1500, batch_size=1024, lr=3e-3,
                         seed=1, device="cpu", inits=3, importance_decay=0.9)
    dense, sparse = trained.W
    assert int(represented(dense).sum()) == 2
    assert intro.pair_angle(dense) == pytest.approx(90.0, abs=10.0)
    gaps = intro.adjacent_angles(sparse)
    assert len(gaps) == 5 and all(abs(g - 72.0) <= 10.0 for g in gaps), gaps


@pytest.mark.slow
def test_linear_never_exceeds_m_relu_does():
    kw = dict(steps=1500, batch_size=1024, lr=3e-3, seed=2, device="cpu", importance_decay=0.7)
    linear = train_grid("linear", 20, 5, (1.0, 0.1, 0.01), **kw)
    assert represented(linear.W).sum(-1).max() <= 5
    relu = train_grid("relu_output", 20, 5, (1.0, 0.01), **kw)
    assert represented(relu.W).sum(-1).tolist()[0] <= 5 < represented(relu.W).sum(-1).tolist()[1]


@pytest.mark.slow
def test_relu_hidden_dense_monosemantic_sparse_polysemantic():
    config = PaperConfig()
    trained = train_grid("relu_hidden", 10, 5, (1.0, 0.01), steps=config.privileged_steps,
                         batch_size=config.privileged_batch_size, lr=config.privileged_lr,
                         seed=3, device="cpu", inits=3, importance_decay=0.75)
    counts = privileged.kind_counts(trained.W)
    assert counts["monosemantic"][0] >= 4 and counts["polysemantic"][1] >= 4, counts


@pytest.mark.slow
def test_dimensions_per_feature_sticks_near_one_half():
    inv = np.array([2.8, 3.1, 3.4])  # n >> m: m / ||W||_F^2 stays near 1/2 over these densities
    trained = train_grid("relu_output", 100, 10, (1 / inv).tolist(), steps=1500, batch_size=256,
                         lr=3e-3, seed=0, device="cpu")
    dims = dimensions_per_feature(trained.W)
    assert ((dims > 0.44) & (dims < 0.57)).all(), dims.tolist()


TINY = dict(device="cpu", instances=3, inits=1, batch_size=256, intro_steps=30,
            sparsity_steps=30, phase_steps=30, phase_batch_size=64, phase_grid=3, phase_inits=1,
            geometry_steps=30, geometry_batch_size=64, geometry_n_features=40,
            geometry_d_hidden=5, privileged_steps=30, computation_steps=30)


@pytest.mark.slow
def test_report_every_file_written_and_cached(tmp_path):
    from unsuperpose.data import files
    from unsuperpose.generate.paper.report import SECTIONS, run_paper

    out = tmp_path / "paper"
    lines = []
    path, reused = run_paper(PaperConfig(**TINY), out, echo=lines.append)
    assert not reused and any("step 30/30" in line for line in lines)
    saved = files.read_json(out / "config.json")
    assert saved["config"]["instances"] == 3 and saved["environment"]["unsuperpose"]
    report = (out / "report.md").read_text()
    for module in SECTIONS:
        for suffix in (".png", ".safetensors", ".csv"):
            name = module.NAME + suffix
            assert (out / name).stat().st_size > 0 and name in saved["files"]
        assert f"]({module.NAME}.png)" in report
    assert report.count("paper: ") >= len(SECTIONS) * 2 and "ours: " in report
    assert not list(tmp_path.glob(".paper.*"))  # no staging folder left behind
    # the same config again: reused, nothing retrained
    lines.clear()
    assert run_paper(PaperConfig(**TINY), out, echo=lines.append) == (out, True)
    assert not any("step" in line for line in lines)
    # another seed: retrained, the folder replaced whole
    assert run_paper(PaperConfig(**{**TINY, "seed": 1}), out)[1] is False
    assert files.read_json(out / "config.json")["config"]["seed"] == 1
