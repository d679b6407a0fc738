"""The sanity checks of Elhage et al. (2022) on trained toy models, and the model kinds."""
import pytest
import torch

from unsuperpose.generate.distributions import FeatureDistribution
from unsuperpose.generate.train import lr_at, train_toy_models
from unsuperpose.models import ToyModel, feature_dimensionality, hidden_responses


def _train(kind: str, p: float, steps: int = 2000):
    dist = FeatureDistribution(20, (p,), importance_decay=0.7)
    gen = torch.Generator().manual_seed(0)
    model = ToyModel(kind, 1, 20, 5, generator=gen)
    train_toy_models(model, dist, steps, 1024, 1e-2, gen)
    return model


@pytest.mark.slow
def test_linear_model_represents_exactly_d_hidden_features():
    W = _train("linear", 0.05).W[0].detach()  # [d, n]
    norms = W.norm(dim=0)
    assert torch.allclose(norms[:5], torch.ones(5), atol=0.03)  # the 5 most important
    assert norms[5:].max() < 0.05
    assert (W ** 2).sum().item() == pytest.approx(5.0, abs=0.05)


@pytest.mark.slow
def test_relu_output_model_at_high_sparsity_represents_more_than_d_hidden():
    W = _train("relu_output", 0.05).W[0].detach()
    assert (W ** 2).sum().item() > 5.0 + 1.0
    assert (W.norm(dim=0) > 0.5).sum().item() > 5


def test_ground_truth_is_the_column_of_W_for_linear_and_relu_output():
    gen = torch.Generator().manual_seed(1)
    for kind in ("linear", "relu_output"):
        model = ToyModel(kind, 3, 7, 4, generator=gen)
        directions, index, sign = hidden_responses(model, signed=False)
        assert torch.equal(directions, model.W.detach().transpose(1, 2))
        assert torch.equal(index, torch.arange(7)) and bool((sign == 1).all())


def test_relu_hidden_ground_truth_is_relu_of_the_column_of_W():
    model = ToyModel("relu_hidden", 1, 3, 2)
    with torch.no_grad():  # a hand-built W [d=2, n=3]: columns (1, -1), (-2, 3), (0.5, -0.5)
        model.W.copy_(torch.tensor([[[1.0, -2.0, 0.5], [-1.0, 3.0, -0.5]]]))
    directions, index, sign = hidden_responses(model, signed=False)
    # ReLU(W e_i): the negative coordinate of each column is cut to 0
    assert torch.equal(directions[0], torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.5, 0.0]]))
    assert index.tolist() == [0, 1, 2] and sign.tolist() == [1, 1, 1]
    directions, _, sign = hidden_responses(model, signed=True)  # -e_i too: ReLU(-W e_i)
    assert torch.equal(directions[0, 3:], torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5]]))
    assert sign.tolist() == [1, 1, 1, -1, -1, -1]


def test_abs_model_ground_truth_has_plus_and_minus_responses():
    gen = torch.Generator().manual_seed(2)
    model = ToyModel("abs", 2, 5, 3, generator=gen)
    directions, index, sign = hidden_responses(model, signed=True)
    assert directions.shape == (2, 10, 3)
    W = model.W.detach().transpose(1, 2)  # [inst, n, d]
    assert torch.allclose(directions[:, :5], torch.relu(W))
    assert torch.allclose(directions[:, 5:], torch.relu(-W))
    assert sign.tolist() == [1] * 5 + [-1] * 5 and index.tolist() == list(range(5)) * 2


@pytest.mark.slow
def test_abs_model_learns_absolute_value():
    dist = FeatureDistribution(4, (0.3,), value="signed_uniform")
    gen = torch.Generator().manual_seed(0)
    model = ToyModel("abs", 1, 4, 8, generator=gen)
    train_toy_models(model, dist, 3000, 512, 1e-2, gen)
    x = dist.sample(2000, gen)
    err = ((model(x) - x.abs()) ** 2).mean().item()
    assert err < 0.01 * (x.abs() ** 2).mean().item()  # 8 = 2n units: exact is possible


def test_feature_dimensionality_known_geometries():
    # a lone feature, an antipodal pair, a pentagon, and an unrepresented feature
    pentagon = torch.stack([torch.tensor([torch.cos(a), torch.sin(a)])
                            for a in torch.arange(5) * 2 * torch.pi / 5])
    assert torch.allclose(feature_dimensionality(pentagon), torch.full((5,), 0.4), atol=1e-5)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(feature_dimensionality(dirs), torch.tensor([1.0, 0.5, 0.5, 0.0]))


def test_unknown_model_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: linear, relu_output, relu_hidden, abs"):
        ToyModel("tanh", 1, 3, 2)


def test_lr_schedule_decays_from_lr_to_five_percent():
    assert lr_at(0, 100, 1.0) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0) == pytest.approx(0.05)
    assert lr_at(50, 100, 1.0) == pytest.approx(0.525)


@pytest.mark.slow
def test_default_config_sparsest_instance_represents_over_1_5_d_hidden():
    from unsuperpose.generate.config import GenerateConfig
    from unsuperpose.generate.pipeline import distribution

    cfg = GenerateConfig()
    assert len(cfg.feature_probability) >= 5
    dist = distribution(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(cfg.model_kind, len(cfg.feature_probability), cfg.n_features, cfg.d_hidden, gen)
    train_toy_models(model, dist, cfg.steps, cfg.batch_size, cfg.lr, gen)
    directions, _, _ = hidden_responses(model, signed=False)
    represented = (directions.norm(dim=-1) > cfg.represented_threshold).sum(dim=1)  # [inst]
    sparsest = min(range(len(cfg.feature_probability)), key=lambda j: cfg.feature_probability[j])
    assert represented[sparsest] > 1.5 * cfg.d_hidden
    # ... and d / ||W||_F^2 sits near 1/2 where the model stores antipodal pairs (p = 0.3)
    W = model.W.detach()
    assert cfg.d_hidden / (W[0] ** 2).sum().item() == pytest.approx(0.5, abs=0.03)
