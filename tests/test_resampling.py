"""Dead-latent resampling: by hand on a tiny SAE, and in a fit that would leave latents dead."""
from __future__ import annotations

import numpy as np
import torch

from unsuperpose.data.planted import planted_problem
from unsuperpose.evaluate.metrics import mmcs
from unsuperpose.sae.methods import build
from unsuperpose.sae.resampling import resample_dead_
from unsuperpose.sae.sae_module import SparseAutoencoder


def tiny_sae_with_adam_state():
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(4, 6, "topk", k=2)
    sae.initialize_(torch.randn(6, 4, generator=gen), torch.zeros(4))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    h = torch.randn(8, 4, generator=gen)
    (h - sae(h).h_hat).pow(2).sum().backward()
    opt.step()
    return sae, opt, h


def test_dead_latents_take_unit_residual_directions_and_live_ones_are_untouched():
    sae, opt, h = tiny_sae_with_adam_state()
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    # one row carries all the error: every resampled direction must be its residual
    h_hat = h.clone()
    h_hat[3] -= torch.tensor([3.0, 0.0, 4.0, 0.0])
    dead = torch.tensor([False, True, False, False, False, False])
    revived = resample_dead_(sae, opt, h, h_hat, dead, torch.Generator().manual_seed(0))
    assert revived.tolist() == [1]
    assert torch.allclose(sae.W_dec[:, 1], torch.tensor([0.6, 0.0, 0.8, 0.0]))
    live_norm = before["W_enc"][:, [0, 2, 3, 4, 5]].norm(dim=0).mean()
    assert torch.allclose(sae.W_enc[:, 1], torch.tensor([0.6, 0.0, 0.8, 0.0]) * live_norm)
    assert sae.b_enc[1] == 0
    for name in ("W_enc", "W_dec", "b_enc"):
        keep = [0, 2, 3, 4, 5]
        after, old = getattr(sae, name).detach(), before[name]
        assert torch.equal(after[..., keep], old[..., keep]), name
    for param, column in ((sae.W_dec, lambda t: t[:, 1]), (sae.W_enc, lambda t: t[:, 1]),
                          (sae.b_enc, lambda t: t[1:2])):
        state = opt.state[param]
        live = state["exp_avg_sq"][:, [0, 2, 3, 4, 5]] if param.dim() == 2 else \
            state["exp_avg_sq"][[0, 2, 3, 4, 5]]
        assert torch.all(column(state["exp_avg"]) == 0)
        assert live.mean() > 0
        assert torch.allclose(column(state["exp_avg_sq"]), live.mean().expand_as(column(param)))


def test_with_every_latent_dead_each_row_seeds_one_and_adam_keeps_its_scale():
    sae, opt, h = tiny_sae_with_adam_state()
    sq_before = opt.state[sae.W_dec]["exp_avg_sq"].mean()
    h_hat = h.clone()
    h_hat[[2, 5]] += 1.0                     # two rows with an error: two latents reseeded
    revived = resample_dead_(sae, opt, h, h_hat, torch.ones(6, dtype=torch.bool),
                             torch.Generator().manual_seed(0))
    assert revived.tolist() == [0, 1]
    direction = -torch.ones(4) / 2           # both residuals are -(1, 1, 1, 1)
    assert torch.allclose(sae.W_dec[:, :2], direction[:, None].expand(4, 2))
    assert torch.allclose(sae.W_enc[:, :2], sae.W_dec[:, :2])   # no live norm: unit
    sq = opt.state[sae.W_dec]["exp_avg_sq"][:, :2]
    assert torch.allclose(sq, sq_before.expand_as(sq))


def test_a_jumprelu_latent_takes_the_live_latents_mean_threshold():
    sae = SparseAutoencoder(4, 3, "jumprelu")
    sae.initialize_(torch.eye(4)[:3], torch.zeros(4))
    with torch.no_grad():
        sae.log_threshold.copy_(torch.tensor([0.0, 5.0, 1.0]))
    h = torch.ones(2, 4)
    resample_dead_(sae, None, h, torch.zeros(2, 4), torch.tensor([False, True, False]),
                   torch.Generator().manual_seed(0))
    assert torch.allclose(sae.log_threshold, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(sae.threshold, sae.log_threshold.exp())


def test_no_dead_latent_or_no_error_changes_nothing():
    sae, opt, h = tiny_sae_with_adam_state()
    before = [p.detach().clone() for p in sae.parameters()]
    none_dead = torch.zeros(6, dtype=torch.bool)
    assert len(resample_dead_(sae, opt, h, h + 1, none_dead, torch.Generator())) == 0
    all_dead = torch.ones(6, dtype=torch.bool)
    assert len(resample_dead_(sae, opt, h, h.clone(), all_dead, torch.Generator())) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, sae.parameters()))


def test_resampling_revives_latents_that_auxk_is_not_there_to_revive():
    # aux_coefficient 0: a TopK latent that loses every row gets no gradient again, so without
    # resampling a random start leaves a share of the 48 latents dead for good
    H, atoms = planted_problem(n_samples=4096, n_features=48, d=24, active=2, seed=3)
    fires, recovered = {}, {}
    for every in (None, 100):
        est = build("topk", {"n_components": 48, "k": 2, "aux_coefficient": 0.0,
                             "init": "random", "n_steps": 1500, "batch_size": 64,
                             "dead_steps_threshold": 50, "resample_every": every,
                             "resample_until": 0.6, "random_state": 0})
        est.fit(H)
        fires[every] = int((np.asarray(est.transform(H)) > 0).any(axis=0).sum())
        recovered[every] = mmcs(atoms.numpy(), est.components_)
    assert fires[None] < 48 - 4 and recovered[None] < 0.95, (fires, recovered)   # 40, 0.933
    assert fires[100] >= 47 and recovered[100] > 0.98, (fires, recovered)        # 47, 0.987
