"""Encoder refinement (ISTA steps after the encoder): by hand on tiny problems, and on a
planted dictionary."""
from __future__ import annotations

import pytest
import torch

from unsuperpose.data.planted import planted_problem
from unsuperpose.evaluate.metrics import mmcs
from unsuperpose.sae.methods import build
from unsuperpose.sae.sae_module import SparseAutoencoder


def orthonormal_relu_sae(refine_steps: int, step: float = 1.0):
    sae = SparseAutoencoder(2, 2, "relu", refine_steps=refine_steps, refine_step_size=step)
    sae.initialize_(torch.eye(2), torch.zeros(2), encoder_atoms=torch.eye(2) * 0.5)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2) * 0.5)  # the encoder reads half of each coordinate
    return sae


def test_ista_step_by_hand():
    # W_dec = I, W_enc = I/2: the encoder gives f0 = h/2 = (0.5, 1); one ISTA step with
    # eta = 1 adds the residual h - f0 = (0.5, 1): f1 = relu(f0 + r) = (1, 2) = h exactly
    h = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(orthonormal_relu_sae(0).encode(h), torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(orthonormal_relu_sae(1).encode(h), torch.tensor([[1.0, 2.0]]))
    # eta = 0.5: f1 = f0 + r / 2 = (0.75, 1.5); a second step halves the rest: (0.875, 1.75)
    assert torch.allclose(orthonormal_relu_sae(1, step=0.5).encode(h), torch.tensor([[0.75, 1.5]]))
    assert torch.allclose(orthonormal_relu_sae(2, step=0.5).encode(h), torch.tensor([[0.875, 1.75]]))


def test_refinement_keeps_topk_sparsity_and_reports_both_pre_activations():
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(8, 32, "topk", k=3, refine_steps=2)
    sae.initialize_(torch.randn(32, 8, generator=gen), torch.zeros(8))
    h = torch.randn(16, 8, generator=gen)
    out = sae(h)
    assert ((out.codes > 0).sum(dim=1) <= 3).all()
    assert torch.allclose(out.pre_acts, sae.pre_activations(h))    # the encoder's, for AuxK
    assert out.last_pre is not None and not torch.allclose(out.last_pre, out.pre_acts)
    assert torch.allclose(sae.encode(h), out.codes)                 # inference refines too


def test_refinement_lowers_reconstruction_error_on_a_fixed_dictionary():
    H, atoms = planted_problem(n_samples=512, n_features=32, d=16, active=2, seed=1)
    errors = []
    for steps in (0, 1, 3):
        sae = SparseAutoencoder(16, 32, "topk", k=2, refine_steps=steps, refine_step_size=0.5)
        sae.initialize_(atoms, torch.zeros(16))
        with torch.no_grad():
            errors.append(((sae.decode(sae.encode(H)) - H) ** 2).sum(dim=1).mean().item())
    assert errors[1] < errors[0] and errors[2] < errors[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["topk", "jumprelu"])
def test_refined_saes_recover_a_planted_dictionary(method):
    H, atoms = planted_problem(n_samples=20_000, n_features=64, d=32, active=3, seed=0)
    params = dict(n_components=64, n_steps=3000, batch_size=128, lr=3e-3, refine_steps=1,
                  random_state=0)
    if method != "jumprelu":
        params["k"] = 3
    else:
        params.update(l0_coefficient=0.05)
    est = build(method, params).fit(H)
    assert mmcs(torch.as_tensor(est.components_), atoms) > 0.97


# ---- BatchTopK with refinement: one inference threshold per pass -----------------------------
def test_batchtopk_refinement_learns_one_threshold_per_pass():
    # train mode: the encoder pass and the refinement are each a batch top-k (k * batch kept);
    # update_threshold_ takes the encoder pass's smallest kept code into `threshold` and the
    # refinement's into refine_threshold[0]; eval mode applies each to its own pass
    gen = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(8, 32, "batchtopk", k=3, refine_steps=1).train()
    sae.initialize_(torch.randn(32, 8, generator=gen), torch.zeros(8))
    h = torch.randn(16, 8, generator=gen)
    out = sae(h)
    (first,) = out.earlier_codes
    assert torch.equal(first, sae.activate(sae.pre_activations(h)))
    assert int((first > 0).sum()) == int((out.codes > 0).sum()) == 3 * 16
    sae.update_threshold_(out.codes, rate=0.5, earlier=out.earlier_codes)
    assert sae.threshold.item() == first[first > 0].min().item()
    assert sae.refine_threshold.tolist() == [out.codes[out.codes > 0].min().item()]
    sae.eval()
    codes0 = sae.activate(sae.pre_activations(h))
    assert torch.equal(codes0, torch.where(sae.pre_activations(h) > sae.threshold,
                                           sae.pre_activations(h), 0.0))
    refined, last_pre, _ = sae.refine(h, codes0)
    assert torch.equal(refined, torch.where(last_pre > sae.refine_threshold[0], last_pre, 0.0))
    assert torch.equal(sae.encode(h), refined)
    with pytest.raises(ValueError, match="2 passes of codes for refine_steps=2"):
        SparseAutoencoder(8, 32, "batchtopk", k=3, refine_steps=2).update_threshold_(
            out.codes, 0.5, out.earlier_codes)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["batchtopk", "matryoshka"])
def test_refined_batchtopk_keeps_its_inference_l0_near_k(method):
    # refined codes are larger than the encoder's, so one threshold learned on them let the
    # encoder pass keep too few and the refinement add more (L0 13.3 at k = 11 on
    # synthsaebench-small; here 4.19 and 4.47 at k = 4); a threshold per pass keeps it at k
    H, _ = planted_problem(n_samples=8192, n_features=64, d=32, active=4, seed=0)
    est = build(method, dict(n_components=64, k=4, n_steps=800, batch_size=128, lr=3e-3,
                             refine_steps=1, random_state=0)).fit(H)
    l0 = (est.transform(H[:2048]) > 0).sum(dim=1).float().mean().item()
    assert abs(l0 - 4) <= 0.15
    assert est.sae_.refine_threshold.item() != est.sae_.threshold.item()


def test_refined_batchtopk_save_load_keeps_both_thresholds(tmp_path):
    H, _ = planted_problem(n_samples=1024, n_features=16, d=8, active=2, seed=0)
    est = build("batchtopk", dict(n_components=16, k=2, n_steps=40, batch_size=64,
                                  refine_steps=1, random_state=0)).fit(H)
    est.save(tmp_path)
    loaded = type(est).load(tmp_path)
    assert torch.equal(loaded.sae_.refine_threshold, est.sae_.refine_threshold)
    assert torch.equal(loaded.transform(H), est.transform(H))
    # a save from before per-pass thresholds (no refine_threshold) used its one threshold
    # for every pass, and loads that way
    tensors = est._extra_tensors()
    del tensors["refine_threshold"]
    old = type(est).load(tmp_path)
    old._load_extra(tensors)
    assert old.sae_.refine_threshold.tolist() == [est.sae_.threshold.item()]

