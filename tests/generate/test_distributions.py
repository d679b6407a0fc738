"""Feature distributions: marginals, values, and the correlated / anticorrelated sets."""
import pytest
import torch

from unsuperpose.generate.distributions import FeatureDistribution


def _sample(dist, n=200_000, seed=0):
    return dist.sample(n, torch.Generator().manual_seed(seed))


def test_firing_rate_and_values_follow_the_probability_per_instance():
    dist = FeatureDistribution(6, (0.5, 0.1, 0.01))
    x = _sample(dist)  # [batch, inst, n]
    rate = (x != 0).float().mean(dim=(0, 2))
    assert torch.allclose(rate, torch.tensor([0.5, 0.1, 0.01]), rtol=0.03)
    fired = x[x != 0]
    assert fired.min() >= 0 and fired.max() <= 1
    assert fired.mean().item() == pytest.approx(0.5, abs=0.01)  # uniform [0, 1]


def test_signed_values_are_uniform_on_minus_one_one():
    x = _sample(FeatureDistribution(4, (0.5,), value="signed_uniform"))
    fired = x[x != 0]
    assert fired.min() >= -1 and fired.max() <= 1
    assert fired.mean().item() == pytest.approx(0.0, abs=0.01)
    assert (fired < 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_correlated_sets_fire_together_and_keep_the_marginal():
    dist = FeatureDistribution(8, (0.2,), n_correlated_sets=2, set_size=3)
    fires = _sample(dist)[:, 0] != 0  # [batch, n]
    for s in range(2):
        members = fires[:, 3 * s: 3 * s + 3]
        assert bool((members.all(1) | ~members.any(1)).all())  # all or none
    assert torch.allclose(fires.float().mean(0), torch.full((8,), 0.2), rtol=0.03)
    # different sets and the independent features are independent of each other
    both = (fires[:, 0] & fires[:, 3]).float().mean().item()
    assert both == pytest.approx(0.04, abs=0.003)


def test_anticorrelated_sets_never_co_fire_and_keep_the_marginal():
    dist = FeatureDistribution(6, (0.1,), n_anticorrelated_sets=2, set_size=2)
    fires = _sample(dist)[:, 0] != 0
    assert int((fires[:, 0] & fires[:, 1]).sum()) == 0
    assert int((fires[:, 2] & fires[:, 3]).sum()) == 0
    assert torch.allclose(fires.float().mean(0), torch.full((6,), 0.1), rtol=0.05)
    assert torch.allclose(dist.probability(), torch.full((1, 6), 0.1))


def test_anticorrelated_set_saturates_when_size_times_p_exceeds_one():
    dist = FeatureDistribution(3, (0.6,), n_anticorrelated_sets=1, set_size=3)
    fires = _sample(dist, 50_000)[:, 0] != 0
    assert bool((fires.sum(1) == 1).all())  # the set always fires, exactly one member
    assert torch.allclose(dist.probability(), torch.full((1, 3), 1 / 3))


def test_sampling_is_reproducible_from_the_generator():
    dist = FeatureDistribution(5, (0.3, 0.1), n_correlated_sets=1)
    assert torch.equal(_sample(dist, 1000, seed=7), _sample(dist, 1000, seed=7))
    assert not torch.equal(_sample(dist, 1000, seed=7), _sample(dist, 1000, seed=8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_features=4, feature_probability=(0.0,)), r"feature_probability must lie in \(0, 1\]"),
    (dict(n_features=4, feature_probability=(1.5,)), r"feature_probability must lie in \(0, 1\]"),
    (dict(n_features=0, feature_probability=(0.5,)), "n_features must be >= 1"),
    (dict(n_features=3, feature_probability=(0.5,), n_correlated_sets=2), "need 4 features"),
    (dict(n_features=3, feature_probability=(0.5,), value="gauss"), "value must be one of"),
])
def test_invalid_distributions_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureDistribution(**kwargs)
