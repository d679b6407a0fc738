"""Batch OMP against scikit-learn's orthogonal_mp_gram and against naive per-sample versions."""
import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from sklearn.linear_model import orthogonal_mp_gram

import unsuperpose.sae.omp_native as omp_native
from unsuperpose.sae.nnls import nnls_gram
from unsuperpose.sae.omp import batch_omp, omp_encode, sparse_reconstruct, sparse_to_dense


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Run a test on the C kernel (where a compiler builds it) and on the torch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(omp_native, "_native", [None])
    elif omp_native.native_lib() is None:
        pytest.skip("no C compiler: the native OMP kernel is not built")
    return request.param


def random_problem(n_samples, d, n_components, seed):
    """Unit-norm Gaussian atoms D [n_components, d] (float64) and Gaussian H [n_samples, d]."""
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_components, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return D, rng.standard_normal((n_samples, d))


def ours(D, H, k=None, **kwargs):
    """Dense codes [n_samples, n_components] from batch_omp in float64."""
    G, DH = torch.from_numpy(D @ D.T), torch.from_numpy(H @ D.T)
    if kwargs.get("tol") is not None:
        kwargs["norms_squared"] = torch.from_numpy((H ** 2).sum(1))
    idx, val = batch_omp(G, DH, k, **kwargs)
    return sparse_to_dense(idx, val, D.shape[0]).numpy()


def naive_nonnegative_omp(D, h, k, tol=None):
    """Greedy: add the atom most positively correlated with the residual, NNLS on the chosen
    atoms with scipy; stop at k atoms, when no correlation is positive, or at ||r||^2 <= tol."""
    support, coef = [], np.zeros(0)
    residual = h.copy()
    while len(support) < k and (tol is None or residual @ residual > tol):
        corr = D @ residual
        corr[support] = -np.inf
        best = int(np.argmax(corr))
        if corr[best] <= 0:
            break
        support.append(best)
        coef, _ = nnls(D[support].T, h)
        residual = h - coef @ D[support]
    out = np.zeros(D.shape[0])
    out[support] = coef
    return out


@pytest.mark.parametrize("n_samples, d, n_components, k", [(300, 20, 50, 5), (200, 64, 256, 12),
                                                           (100, 10, 10, 10)])
def test_matches_sklearn_at_fixed_sparsity(n_samples, d, n_components, k, backend):
    D, H = random_problem(n_samples, d, n_components, seed=k)
    expected = orthogonal_mp_gram(D @ D.T, (H @ D.T).T, n_nonzero_coefs=k).T
    got = ours(D, H, k, chunk_size=64)
    np.testing.assert_array_equal(got != 0, expected != 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert ((got != 0).sum(1) == k).all()


def test_matches_sklearn_at_tolerance(backend):
    D, H = random_problem(400, 20, 50, seed=1)
    norms = (H ** 2).sum(1)
    tol = 0.3 * norms.mean()
    expected = orthogonal_mp_gram(D @ D.T, (H @ D.T).T, tol=tol, norms_squared=norms).T
    got = ours(D, H, None, tol=tol, chunk_size=64)
    # sklearn always takes a first atom; a sample already within tol gets none here
    small = norms <= tol
    assert small.sum() > 0 and (got[small] == 0).all()
    np.testing.assert_array_equal(got[~small] != 0, expected[~small] != 0)
    np.testing.assert_allclose(got[~small], expected[~small], rtol=0, atol=1e-5)
    # the stop is per sample: supports of many sizes in one batch, each residual within tol
    sizes = (got != 0).sum(1)
    assert sizes.min() <= 2 and sizes.max() >= 6
    assert (((H - got @ D) ** 2).sum(1) <= tol * (1 + 1e-9)).all()


def test_sparsity_caps_the_tolerance_stop(backend):
    D, H = random_problem(300, 20, 50, seed=2)
    norms = (H ** 2).sum(1)
    tol = 0.1 * norms.mean()
    got = ours(D, H, 4, tol=tol)
    free = ours(D, H, None, tol=tol)
    sizes, free_sizes = (got != 0).sum(1), (free != 0).sum(1)
    np.testing.assert_array_equal(sizes, np.minimum(free_sizes, 4))
    # where the tolerance came first, the two runs are the same path
    same = free_sizes <= 4
    np.testing.assert_allclose(got[same], free[same], atol=1e-12)


def test_orthonormal_atoms_give_the_largest_correlations():
    # hand-checkable: for orthonormal atoms OMP keeps the k largest |h . d_j|, coefficient h . d_j
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((8, 8)))
    h = np.array([[0.5, -3.0, 0.1, 2.0, 0.0, -0.2, 1.0, 0.3]]) @ Q.T  # coefficients on Q's columns
    got = ours(Q.T, h, 3)
    np.testing.assert_allclose(got, [[0, -3.0, 0, 2.0, 0, 0, 1.0, 0]], atol=1e-12)


@pytest.mark.slow
def test_chunking_does_not_change_the_result(backend):
    D, H = random_problem(250, 16, 40, seed=4)
    norms = (H ** 2).sum(1)
    whole = ours(D, H, 6, tol=0.2 * norms.mean())
    for chunk in (1, 7, 100):
        np.testing.assert_array_equal(ours(D, H, 6, tol=0.2 * norms.mean(), chunk_size=chunk),
                                      whole)


@pytest.mark.slow
@pytest.mark.parametrize("nonnegative", [False, True])
def test_dropping_stopped_rows_does_not_change_the_result(nonnegative, backend):
    # rows stop at different steps under tol, so the batch of 120 drops its stopped rows
    # (the live-set compaction) several times; one row per chunk never does
    D, H = random_problem(120, 16, 40, seed=8)
    tol = 0.3 * (H ** 2).sum(1).mean()
    whole = ours(D, H, 12, tol=tol, nonnegative=nonnegative)
    assert len(set((whole != 0).sum(1))) >= 4
    np.testing.assert_array_equal(ours(D, H, 12, tol=tol, nonnegative=nonnegative, chunk_size=1),
                                  whole)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_tol", [False, True])
def test_native_kernel_equals_torch_fallback(dtype, atol, with_tol, monkeypatch):
    if omp_native.native_lib() is None:
        pytest.skip("no C compiler: the native OMP kernel is not built")
    D, H = random_problem(300, 24, 70, seed=12)
    G, DH = torch.from_numpy(D @ D.T).to(dtype), torch.from_numpy(H @ D.T).to(dtype)
    kwargs = {}
    if with_tol:
        norms = torch.from_numpy((H ** 2).sum(1)).to(dtype)
        kwargs = {"tol": 0.3 * float(norms.mean()), "norms_squared": norms}
    idx, val = batch_omp(G, DH, 10, **kwargs)
    monkeypatch.setattr(omp_native, "_native", [None])
    idx_t, val_t = batch_omp(G, DH, 10, **kwargs)
    assert val.dtype == dtype
    torch.testing.assert_close(idx, idx_t, rtol=0, atol=0)
    torch.testing.assert_close(val, val_t, rtol=0, atol=atol)


def nonnegative_problem(kind, seed):
    """(D, H, k) for comparing the nonnegative kernels: planted nonnegative codes plus noise,
    Gaussian data, or fewer atoms than d with k = all of them (the positively correlated
    atoms run out before k; the atoms stay independent)."""
    if kind == "few atoms":
        D, H = random_problem(300, 32, 20, seed)
        return D, H, 20
    D, H = random_problem(300, 32, 96, seed)
    if kind == "planted":
        rng = np.random.default_rng(seed)
        support = np.argsort(rng.random((300, 96)), axis=1)[:, :5]
        H = np.einsum("nk,nkd->nd", rng.uniform(0.5, 1.5, (300, 5)), D[support])
        H += 0.05 * rng.standard_normal(H.shape)
    return D, H, 8


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("with_tol", [False, True])
@pytest.mark.parametrize("kind", ["planted", "gaussian", "few atoms"])
def test_native_nonnegative_kernel_equals_torch_fallback(kind, dtype, rtol, with_tol,
                                                         monkeypatch):
    if omp_native.native_lib() is None:
        pytest.skip("no C compiler: the native OMP kernel is not built")
    D, H, k = nonnegative_problem(kind, seed=13)
    G, DH = torch.from_numpy(D @ D.T).to(dtype), torch.from_numpy(H @ D.T).to(dtype)
    kwargs = {}
    if with_tol:
        norms = torch.from_numpy((H ** 2).sum(1)).to(dtype)
        kwargs = {"tol": 0.2 * float(norms.mean()), "norms_squared": norms}
    idx, val = batch_omp(G, DH, k, nonnegative=True, **kwargs)
    monkeypatch.setattr(omp_native, "_native", [None])
    idx_t, val_t = batch_omp(G, DH, k, nonnegative=True, **kwargs)
    assert val.dtype == dtype
    sizes = (idx >= 0).sum(1)
    if with_tol:  # samples stop at many steps
        assert len(set(sizes.tolist())) >= 3
    if kind == "few atoms":  # no sample found k positively correlated atoms
        assert sizes.max() < k
    torch.testing.assert_close(idx, idx_t, rtol=0, atol=0)
    torch.testing.assert_close(val, val_t, rtol=rtol, atol=rtol * float(val_t.abs().max()))


@pytest.mark.parametrize("with_tol", [False, True])
def test_nonnegative_codes_have_no_negative_values(with_tol, backend):
    D, H = random_problem(200, 16, 48, seed=14)
    tol = 0.2 * (H ** 2).sum(1).mean() if with_tol else None
    G, DH = torch.from_numpy(D @ D.T).float(), torch.from_numpy(H @ D.T).float()
    norms = torch.from_numpy((H ** 2).sum(1)).float() if with_tol else None
    idx, val = batch_omp(G, DH, 16, tol=tol, norms_squared=norms, nonnegative=True)
    assert (val >= 0).all()
    # an empty slot and only an empty slot has value 0
    torch.testing.assert_close(idx < 0, val == 0, rtol=0, atol=0)
    assert (idx < 0).any() and (idx >= 0).sum(1).min() >= 1


def test_planted_nonnegative_codes_are_recovered_exactly(backend):
    D, _ = random_problem(1, 64, 128, seed=15)
    rng = np.random.default_rng(15)
    codes = np.zeros((200, 128))
    for row in codes:
        row[rng.choice(128, 3, replace=False)] = rng.uniform(0.5, 1.5, 3)
    got = ours(D, codes @ D, 3, nonnegative=True)
    np.testing.assert_array_equal(got > 0, codes > 0)
    np.testing.assert_allclose(got, codes, rtol=0, atol=1e-10)


def test_nnls_gram_matches_scipy():
    rng = np.random.default_rng(9)
    A = rng.standard_normal((6, 12, 5))                              # 6 problems, [12, 5] each
    h = rng.standard_normal((6, 12))
    gram = torch.from_numpy(np.einsum("aij,aik->ajk", A, A))        # [6, 5, 5] A^T A
    b = torch.from_numpy(np.einsum("aij,ai->aj", A, h))              # [6, 5] A^T h
    start = torch.zeros(6, 5, dtype=torch.float64)
    coef, passive = nnls_gram(gram, b, start, torch.zeros(6, 5, dtype=torch.bool),
                              torch.full((6,), 1e-12, dtype=torch.float64),
                              torch.arange(6), max_iter=50)
    expected = np.stack([nnls(A[i], h[i])[0] for i in range(6)])
    np.testing.assert_allclose(coef.numpy(), expected, atol=1e-10)
    assert torch.equal(passive, coef > 0)
    assert ((expected > 0).sum(1) < 5).any()  # some bound is active: not plain least squares
    # rows not in todo come back as given
    untouched, _ = nnls_gram(gram, b, start, torch.zeros(6, 5, dtype=torch.bool),
                             torch.full((6,), 1e-12, dtype=torch.float64),
                             torch.tensor([1, 4]), max_iter=50)
    assert torch.equal(untouched[[0, 2, 3, 5]], start[[0, 2, 3, 5]])
    np.testing.assert_allclose(untouched[[1, 4]].numpy(), expected[[1, 4]], atol=1e-10)


def test_zero_sample_gets_no_atom(backend):
    D, H = random_problem(5, 12, 30, seed=5)
    H[2] = 0
    for nonnegative in (False, True):
        got = ours(D, H, 4, nonnegative=nonnegative)
        assert (got[2] == 0).all()
        assert ((got != 0).sum(1)[[0, 1, 3, 4]] >= 1).all()


@pytest.mark.parametrize("d, n_components, k", [(20, 50, 5), (20, 50, 12), (20, 50, 19),
                                                (32, 64, 3)])
def test_nonnegative_matches_naive_reference(d, n_components, k):
    # k = 12, 19 on d = 20 make NNLS drop atoms from the support along the way
    D, H = random_problem(200, d, n_components, seed=k)
    expected = np.stack([naive_nonnegative_omp(D, h, k) for h in H])
    got = ours(D, H, k, nonnegative=True, chunk_size=64)
    assert (got >= 0).all()
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)


def test_nonnegative_tolerance_matches_naive_reference():
    D, H = random_problem(200, 20, 50, seed=6)
    norms = (H ** 2).sum(1)
    tol = 0.4 * norms.mean()
    expected = np.stack([naive_nonnegative_omp(D, h, 50, tol=tol) for h in H])
    got = ours(D, H, None, tol=tol, nonnegative=True, chunk_size=32)
    np.testing.assert_array_equal(got > 0, expected > 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-8)
    assert len(set((got > 0).sum(1))) > 3


def test_nonnegative_code_of_a_nonnegative_combination_is_exact():
    D, _ = random_problem(1, 32, 64, seed=7)
    c = np.zeros((1, 64))
    c[0, [3, 17, 40]] = [0.7, 1.2, 0.9]
    got = ours(D, c @ D, 3, nonnegative=True)
    np.testing.assert_allclose(got, c, atol=1e-10)


def test_float32_agrees_with_float64():
    D, H = random_problem(500, 32, 128, seed=8)
    exact = ours(D, H, 6)
    idx, val = omp_encode(torch.from_numpy(H).float(), torch.from_numpy(D).float(), 6)
    got = sparse_to_dense(idx, val, 128).double().numpy()
    assert val.dtype == torch.float32
    same_support = ((got != 0) == (exact != 0)).all(1)
    assert same_support.mean() >= 0.99
    np.testing.assert_allclose(got[same_support], exact[same_support], atol=1e-4)


def test_omp_encode_equals_batch_omp_on_gram():
    D, H = random_problem(100, 16, 32, seed=9)
    Dt, Ht = torch.from_numpy(D), torch.from_numpy(H)
    idx, val = omp_encode(Ht, Dt, 4, tol=1.0, chunk_size=33)
    idx2, val2 = batch_omp(Dt @ Dt.T, Ht @ Dt.T, 4, tol=1.0, norms_squared=(Ht ** 2).sum(1))
    torch.testing.assert_close(sparse_to_dense(idx, val, 32), sparse_to_dense(idx2, val2, 32))


def test_sparse_helpers_equal_dense_algebra():
    idx = torch.tensor([[2, 0, -1], [1, 2, 3]])
    val = torch.tensor([[1.5, -2.0, 0.0], [0.5, 1.0, 2.0]], dtype=torch.float64)
    dense = sparse_to_dense(idx, val, 4)
    torch.testing.assert_close(dense, torch.tensor([[-2.0, 0, 1.5, 0], [0, 0.5, 1.0, 2.0]],
                                                   dtype=torch.float64))
    D = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sparse_reconstruct(idx, val, D), dense @ D)


def test_bad_arguments_are_named():
    G, DH = torch.eye(4), torch.ones(3, 4)
    with pytest.raises(ValueError, match="n_nonzero_coefs must be in"):
        batch_omp(G, DH, 5)
    with pytest.raises(ValueError, match="norms_squared"):
        batch_omp(G, DH, 2, tol=0.1)
    with pytest.raises(ValueError, match="give n_nonzero_coefs, tol, or both"):
        batch_omp(G, DH)
    with pytest.raises(ValueError, match="G must be square"):
        batch_omp(torch.ones(4, 3), DH, 2)
    with pytest.raises(ValueError, match=r"DH must be \[n_samples, 4\]"):
        batch_omp(G, torch.ones(3, 5), 2)
