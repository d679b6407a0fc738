"""Sparse autoencoders: hand-set weights, losses by hand, planted recovery, round trips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unsuperpose.data.planted import planted_problem
from unsuperpose.evaluate.metrics import mmcs
from unsuperpose.sae.base import rows_to_columns
from unsuperpose.sae.losses import auxk_loss, decoder_weighted_l1, reconstruction_mse
from unsuperpose.sae.sae_estimators import L1SAE, BatchTopKSAE, TopKSAE, geometric_median, lr_multiplier
from unsuperpose.sae.sae_module import SparseAutoencoder
from unsuperpose.sae.saelens_export import SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE


def hand_set(activation: str = "relu", k: int | None = None) -> SparseAutoencoder:
    """d = 2, two latents: atoms (0.6, 0.8) and (1, 0) as W_dec columns, b_dec = (0.5, 0)."""
    sae = SparseAutoencoder(2, 2, activation, k)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5]))
        sae.W_dec.copy_(torch.tensor([[0.6, 1.0], [0.8, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    return sae


# ---- the module with hand-set weights -------------------------------------------------------
def test_relu_encode_decode_by_hand():
    sae = hand_set()
    h = torch.tensor([[1.5, 1.0], [0.0, 0.0]])
    # h - b_dec = (1, 1) -> pre (1, 0.5); (-0.5, 0) -> pre (-0.5, -0.5) -> codes 0
    codes = sae.encode(h)
    assert torch.allclose(codes, torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    # 1 * (0.6, 0.8) + 0.5 * (1, 0) + (0.5, 0)
    assert torch.allclose(sae.decode(codes), torch.tensor([[1.6, 0.8], [0.5, 0.0]]))
    out = sae(h)
    assert torch.allclose(out.h_hat, sae.decode(codes)) and torch.equal(out.codes, codes)
    assert torch.allclose(out.pre_acts, torch.tensor([[1.0, 0.5], [-0.5, -0.5]]))


def test_topk_keeps_exactly_the_k_largest():
    sae = SparseAutoencoder(8, 16, "topk", 3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 16, generator=gen))
        sae.W_dec.copy_(torch.randn(8, 16, generator=gen))
        sae.b_enc.fill_(100.0)  # every pre-activation positive, so ReLU removes none
    h = torch.randn(32, 8, generator=gen)
    pre, codes = sae.pre_activations(h), sae.encode(h)
    assert ((codes > 0).sum(dim=1) == 3).all()
    top = pre.topk(3, dim=1)
    assert torch.equal(codes.gather(1, top.indices), top.values)
    assert torch.allclose(pre, (h - sae.b_dec) @ sae.W_enc + sae.b_enc, atol=1e-4)


def test_topk_sparse_decode_matches_dense_with_gradients():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(32, 8, generator=gen)
    grads = []
    for sparse in (True, False):
        sae = SparseAutoencoder(8, 256, "topk", 3)  # 3 * 64 <= 256: sparse by default
        sae.initialize_(torch.randn(256, 8, generator=torch.Generator().manual_seed(1)),
                        torch.full((8,), 0.1))
        sae.sparse_decode = sparse
        out = sae(h)
        reconstruction_mse(h, out.h_hat).backward()
        grads.append((out.h_hat.detach(), out.codes.detach(),
                      *(p.grad.clone() for p in sae.parameters())))
    for fast, naive in zip(*grads):
        assert torch.allclose(fast, naive, atol=1e-5)


def test_topk_relu_drops_negative_winners():
    sae = hand_set("topk", k=2)
    codes = sae.encode(torch.tensor([[0.5, 1.0]]))  # h - b_dec = (0, 1) -> pre (0, 0.5)
    assert torch.equal(codes, torch.tensor([[0.0, 0.5]]))


def test_batchtopk_keeps_k_times_batch_in_training_and_thresholds_in_eval():
    sae = SparseAutoencoder(8, 16, "batchtopk", 2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 16, generator=gen))
        sae.b_enc.fill_(100.0)
    h = torch.randn(10, 8, generator=gen)
    pre = sae.pre_activations(h)
    codes = sae.train().encode(h)
    assert int((codes > 0).sum()) == 2 * 10
    kept = pre.flatten().topk(20).values
    assert torch.equal(codes[codes > 0].sort().values, kept.sort().values)
    assert (codes > 0).sum(dim=1).tolist() != [2] * 10  # per row it varies: not TopK

    sae.update_threshold_(codes, rate=0.5)  # the first estimate is taken as it is
    assert sae.threshold.item() == pytest.approx(kept.min().item())
    sae.update_threshold_(torch.tensor([[0.0, 2 * kept.min().item()]]), rate=0.5)
    assert sae.threshold.item() == pytest.approx(1.5 * kept.min().item())
    threshold = sae.threshold.item()
    eval_codes = sae.eval().encode(h)
    assert torch.equal(eval_codes, torch.where(pre > threshold, pre, 0.0))

    # fewer positive pre-activations than k * batch: the kept negatives become zeros
    small = hand_set("batchtopk", k=1).train()
    h = torch.tensor([[3.5, -0.5], [-1.5, -4.5]])  # pre = h - (0.5, 0.5) = [[3, -1], [-2, -5]]
    assert torch.equal(small.encode(h), torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    small.update_threshold_(torch.zeros(2, 2), rate=0.5)  # nothing kept: no estimate
    assert small.threshold.item() == 0.0


def test_normalize_decoder_and_remove_parallel_grad_by_hand():
    sae = SparseAutoencoder(2, 2)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 0.0], [4.0, 2.0]]))  # columns (3, 4) and (0, 2)
    sae.normalize_decoder_()
    assert torch.allclose(sae.W_dec, torch.tensor([[0.6, 0.0], [0.8, 1.0]]))
    sae.W_dec.grad = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    sae.remove_parallel_grad_()
    # (1, 0) - 0.6 (0.6, 0.8) = (0.64, -0.48); (1, 1) - 1 (0, 1) = (1, 0)
    assert torch.allclose(sae.W_dec.grad, torch.tensor([[0.64, 1.0], [-0.48, 0.0]]))


def test_orientation_is_converted_once():
    W_dec = torch.arange(6.0).reshape(2, 3)  # [d=2, n_components=3], atoms as columns
    rows = rows_to_columns(W_dec)
    assert rows.shape == (3, 2) and torch.equal(rows[1], W_dec[:, 1])
    # the atoms (0, 3), (1, 4), (2, 5) as rows, in memory order (gathered by embedding_bag)
    assert torch.equal(rows, torch.tensor([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]))
    assert rows.is_contiguous() and rows.stride() == (2, 1)
    sae = hand_set()
    assert torch.equal(sae.components(), torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    # initialize_ takes atoms as rows, stores unit columns, and ties the encoder to them
    sae.initialize_(torch.tensor([[3.0, 4.0], [0.0, -2.0]]), torch.tensor([1.0, 2.0]))
    assert torch.allclose(sae.W_dec, torch.tensor([[0.6, 0.0], [0.8, -1.0]]))
    assert torch.equal(sae.W_enc, sae.W_dec) and not sae.b_enc.any()
    assert torch.equal(sae.b_dec, torch.tensor([1.0, 2.0]))
    sae.initialize_(torch.eye(2), torch.zeros(2), encoder_atoms=torch.tensor([[0, 2.0], [5, 0]]))
    assert torch.equal(sae.W_enc, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(sae.W_dec, torch.eye(2))


# ---- losses against hand computations ------------------------------------------------------
def test_losses_by_hand():
    h = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    h_hat = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert reconstruction_mse(h, h_hat).item() == pytest.approx((1 + 4 + 1 + 1) / 2)
    codes = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    norms = torch.tensor([1.0, 2.0, 0.5])
    assert decoder_weighted_l1(codes, norms).item() == pytest.approx((1 + 1 + 6) / 2)


def test_auxk_loss_by_hand():
    W_dec = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.6]])  # [d=2, 3 latents]
    pre = torch.tensor([[5.0, 2.0, 1.0], [5.0, -1.0, 3.0]])
    residual = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    dead = torch.tensor([False, True, True])
    # k_aux = 1 among latents 1 and 2: row 0 keeps latent 1 (2.0) -> (0, 2), error (0, -1);
    # row 1 keeps latent 2 (3.0) -> (0, 1.8), error (1, -0.8). mean: (1 + 1.64) / 2
    loss = auxk_loss(residual, pre, dead, W_dec, k_aux=1, coefficient=0.5)
    assert loss.item() == pytest.approx(0.5 * (1 + 1.64) / 2)
    # k_aux above the number dead is capped: row 0 uses 2 (2) + 1 (0.6) -> (0, 2.6)
    capped = auxk_loss(residual, pre, dead, W_dec, k_aux=5, coefficient=1.0)
    assert capped.item() == pytest.approx((1.6 ** 2 + 1 + 0.8 ** 2) / 2)
    none_dead = auxk_loss(residual, pre, torch.zeros(3, dtype=torch.bool), W_dec, 1, 0.5)
    assert none_dead.item() == 0.0


def test_lr_schedule_and_geometric_median_by_hand():
    assert lr_multiplier(0, 100, warmup_steps=10, decay_fraction=0.5) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10, 0.5) == 1.0
    assert lr_multiplier(50, 100, 10, 0.5) == 1.0
    assert lr_multiplier(75, 100, 10, 0.5) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 10, 0.5) == pytest.approx(1 / 50)
    assert lr_multiplier(5, None, 0, 0.5) == 1.0
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, -1.0], [100.0, 100.0]])
    median = geometric_median(X, n_iter=1000, tol=1e-9)
    # optimal: the unit vectors from the median to the points sum to zero
    pull = torch.nn.functional.normalize(X - median, dim=1).sum(dim=0)
    assert pull.norm().item() < 1e-4
    assert median.norm().item() < 2.0 and X.mean(dim=0).norm().item() > 20  # not the mean


# ---- planted recovery ----------------------------------------------------------------------
# Tuned on this problem; benchmarks/bench_saes.py runs them on seeds 0-3. TopK reaches 0.99 on
# all four: it needs the short dead window and the strong AuxK to revive the latents starved
# by merged features. L1 reaches it on three: it has no cure for a duplicated atom, and its
# optimum sits near 0.99 (0.992 when started at the true atoms), so seed 0 is a lucky one.
RECOVERY = {
    "l1": (L1SAE, dict(l1_coefficient=0.4, lr=2e-2, batch_size=128, n_epochs=20)),
    "topk": (TopKSAE, dict(k=3, lr=1e-2, batch_size=128, n_epochs=10, dead_steps_threshold=10,
                           aux_coefficient=1.0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RECOVERY))
def test_planted_recovery(method):
    H, atoms = planted_problem()
    cls, params = RECOVERY[method]
    est = cls(n_components=64, random_state=0, **params).fit(H.numpy())
    assert est.components_.dtype == np.float32 and est.components_.shape == (64, 32)
    assert np.allclose(np.linalg.norm(est.components_, axis=1), 1.0, atol=1e-5)
    assert mmcs(atoms, est.components_) >= 0.99
    assert est.log_[-1]["fvu"] < 0.15 and est.log_[-1]["samples"] == est.n_samples_seen_


# ---- data paths, determinism, persistence --------------------------------------------------
def small_fit(cls, H, **params):
    defaults = dict(n_components=16, random_state=0, batch_size=64, n_steps=30, log_every=10)
    if cls is not L1SAE:
        defaults["k"] = 2
    return cls(**{**defaults, **params}).fit(H)


@pytest.mark.parametrize("cls", [L1SAE, TopKSAE, BatchTopKSAE])
def test_save_load_gives_the_same_transform(cls, tmp_path):
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    est = small_fit(cls, H.numpy())
    est.save(tmp_path)
    loaded = cls.load(tmp_path)
    assert np.array_equal(loaded.components_, est.components_)
    assert np.array_equal(loaded.transform(H.numpy()), est.transform(H.numpy()))
    codes = est.transform(H)
    assert isinstance(codes, torch.Tensor) and codes.shape == (512, 16)
    assert torch.equal(loaded.inverse_transform(codes), est.inverse_transform(codes))
    if cls is BatchTopKSAE:
        assert loaded.sae_.threshold.item() == est.sae_.threshold.item() > 0


def test_transform_inverse_transform_kinds_and_reproducibility():
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    state = torch.get_rng_state()
    a, b = small_fit(TopKSAE, H.numpy()), small_fit(TopKSAE, H)
    assert torch.equal(torch.get_rng_state(), state)  # no global seeding
    assert np.array_equal(a.components_, b.components_)  # numpy and torch input alike
    codes = a.transform(H.numpy())
    assert isinstance(codes, np.ndarray) and codes.dtype == np.float32
    assert ((codes > 0).sum(axis=1) <= 2).all()
    recon = a.inverse_transform(codes)  # W_dec f + b_dec, with the atoms as rows
    expected = codes @ a.components_ + a.sae_.b_dec.detach().numpy()
    assert isinstance(recon, np.ndarray) and np.allclose(recon, expected, atol=1e-5)
    # components_ are the decoder columns, as rows
    assert np.array_equal(a.components_, a.sae_.W_dec.detach().T.numpy())


def test_training_log_and_progress_callback():
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    calls = []
    est = TopKSAE(n_components=16, k=2, random_state=0, batch_size=64, n_steps=25, lr=1e-2,
                  lr_warmup_steps=5, lr_decay_fraction=0.4, log_every=10)
    est.fit(H, progress=lambda step, total, info: calls.append((step, total, info)))
    assert [(step, total) for step, total, _ in calls] == [(step, 25) for step in range(1, 26)]
    assert [row["step"] for row in est.log_] == [10, 20, 25]
    # info is the log row written at that step, {} at the others
    assert [info for _, _, info in calls if info] == est.log_
    assert [step for step, _, info in calls if info] == [10, 20, 25]
    assert [row["samples"] for row in est.log_] == [640, 1280, 1600]
    # the lr of a logged step is that of its last update: 0-based steps 9, 19, 24
    assert [row["lr"] for row in est.log_] == pytest.approx(
        [1e-2 * lr_multiplier(s, 25, 5, 0.4) for s in (9, 19, 24)])
    for row in est.log_:
        assert row["l0"] == 2.0 and 0.0 <= row["dead"] <= 1.0 and row["aux"] >= 0.0
        assert row["loss"] == pytest.approx(row["mse"] + row["aux"], rel=1e-6)
        assert 0.0 < row["fvu"] < 2.0


def test_fit_on_iterables_of_minibatches():
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    batches = list(H.split(64))  # 8 minibatches
    est = small_fit(L1SAE, batches, n_steps=None, n_epochs=3)
    assert est.n_steps_ == 24 and est.n_samples_seen_ == 3 * 512
    dicts = small_fit(L1SAE, [{"h": b.numpy()} for b in batches], n_steps=None, n_epochs=3)
    assert np.allclose(dicts.components_, est.components_)
    once = small_fit(L1SAE, iter(batches), n_steps=None, n_epochs=1, lr_decay_fraction=0.0)
    assert once.n_steps_ == 8
    with pytest.raises(ValueError, match="one-shot iterator"):
        small_fit(L1SAE, iter(batches), n_steps=None, n_epochs=2)
    with pytest.raises(ValueError, match="unknown length.*set n_steps"):
        small_fit(L1SAE, (b for b in batches), n_steps=None, n_epochs=1)


def test_fit_on_a_hugging_face_dataset():
    datasets = pytest.importorskip("datasets")
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    ds = datasets.Dataset.from_dict({"h": H.numpy()}).with_format("torch")
    est = small_fit(TopKSAE, ds, n_steps=None, n_epochs=2)
    assert est.n_steps_ == 2 * 8 and est.n_samples_seen_ == 1024
    ref = small_fit(TopKSAE, list(H.split(64)), n_steps=None, n_epochs=2)
    assert np.allclose(est.components_, ref.components_)  # the same rows in the same order


# ---- SAELens export ------------------------------------------------------------------------
@pytest.mark.parametrize("cls, architecture", [(L1SAE, "standard"), (TopKSAE, "topk"),
                                               (BatchTopKSAE, "jumprelu")])
def test_export_saelens(cls, architecture, tmp_path):
    H, _ = planted_problem(n_samples=512, n_features=16, d=8, active=2)
    est = small_fit(cls, H.numpy())
    est.export_saelens(tmp_path)
    cfg = json.loads((tmp_path / SAELENS_CFG_FILE).read_text())
    weights = load_file(str(tmp_path / SAELENS_WEIGHTS_FILE))
    assert cfg["architecture"] == architecture and (cfg["d_in"], cfg["d_sae"]) == (8, 16)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["dtype"] == "float32" and cfg["metadata"]["sae_lens_version"].startswith("6.")
    shapes = {name: tuple(t.shape) for name, t in weights.items()}
    expected = {"W_enc": (8, 16), "b_enc": (16,), "W_dec": (16, 8), "b_dec": (8,)}
    if cls is BatchTopKSAE:
        expected["threshold"] = (16,)
    assert shapes == expected
    # SAELens's forward, written out from its layout, gives our reconstruction
    pre = (H - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if architecture == "standard":
        codes = pre.relu()
    elif architecture == "topk":
        assert cfg["k"] == 2
        top = pre.topk(cfg["k"], dim=1)
        codes = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    else:
        codes = pre.relu() * (pre > weights["threshold"])
    ours = est.inverse_transform(est.transform(H))
    assert torch.allclose(codes @ weights["W_dec"] + weights["b_dec"], ours, atol=1e-5)


# ---- bad input -----------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    H, _ = planted_problem(n_samples=256, n_features=16, d=8, active=2)
    bad = H.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        L1SAE(n_components=4).fit(bad)
    with pytest.raises(ValueError, match=r"^n_components: must be an integer >= 1, got 0$"):
        L1SAE(n_components=0)
    with pytest.raises(ValueError, match=r"k=9 exceeds d=8"):
        TopKSAE(n_components=16, k=9, n_steps=1).fit(H)
    with pytest.raises(ValueError, match=r"^k: must be <= n_components=16, got 20$"):
        TopKSAE(n_components=16, k=20)
    with pytest.raises(ValueError, match="has no parameter.*'l1_coefficient'"):
        TopKSAE(n_components=16, l1_coefficient=0.1)
    with pytest.raises(ValueError, match="init: must be one of .*, got 'pca'"):
        L1SAE(n_components=4, init="pca")
    est = small_fit(L1SAE, H)
    with pytest.raises(ValueError, match="d=5 columns, but this dictionary has d=8"):
        est.transform(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="codes has 3 columns.*n_components=16"):
        est.inverse_transform(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="minibatch has d=5 columns"):
        small_fit(L1SAE, [H[:64], torch.zeros(64, 5)], n_steps=None, n_epochs=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        TopKSAE(n_components=4, k=2).transform(H)
    with pytest.raises(ValueError, match="missing 1 required keyword-only argument: 'k'"):
        TopKSAE(n_components=4)
