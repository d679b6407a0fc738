"""The k-SVD and MOD atom updates, the row weights and the atom maintenance of the fit, against
dense algebra and by hand (sae/ksvd.py, sae/mod.py, sae/atom_maintenance.py)."""
import math

import numpy as np
import pytest
import torch

from tests.sae.test_ksvd_mod import planted
from unsuperpose.sae.atom_maintenance import duplicate_atoms, prune_atoms, removal_cost
from unsuperpose.sae.ksvd import ksvd_sweep
from unsuperpose.sae.mod import MOD, mod_update, residual_weights, row_weights
from unsuperpose.sae.omp import omp_encode, sparse_reconstruct


# ---- the atom updates against dense algebra ---------------------------------------------
def test_ksvd_sweep_on_one_atom_is_the_top_singular_pair():
    # with one atom every sample's residual-without-the-atom is the sample itself
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    D = torch.nn.functional.normalize(torch.randn(1, 6, generator=g, dtype=torch.float64))
    idx = torch.tensor([[0]] * 30 + [[-1]] * 10)
    val = torch.cat([torch.randn(30, 1, generator=g, dtype=torch.float64),
                     torch.zeros(10, 1, dtype=torch.float64)])
    new_D, new_val = ksvd_sweep(X, D, idx, val, torch.tensor([0]))
    U, S, Vt = np.linalg.svd(X[:30].numpy())
    sign = np.sign(new_D[0].numpy() @ Vt[0])
    np.testing.assert_allclose(new_D[0].numpy(), sign * Vt[0], atol=1e-10)
    np.testing.assert_allclose(new_val[:30, 0].numpy(), sign * S[0] * U[:, 0], atol=1e-10)
    assert (new_val[30:] == 0).all()

    approx_D, approx_val = ksvd_sweep(X, D, idx, val, torch.tensor([0]), approximate=True)
    direction = X[:30].T @ val[:30, 0]
    torch.testing.assert_close(approx_D[0], direction / direction.norm())
    torch.testing.assert_close(approx_val[:30, 0], X[:30] @ approx_D[0])


def test_ksvd_sweep_never_increases_the_error():
    H, _ = planted(2000, 16, 12, seed=1)
    X = torch.from_numpy(H).double()
    g = torch.Generator().manual_seed(2)
    D = torch.nn.functional.normalize(torch.randn(16, 12, generator=g, dtype=torch.float64))
    for approximate in (False, True):
        for nonnegative in (False, True):
            idx, val = omp_encode(X, D, 3, nonnegative=nonnegative)
            before = (X - sparse_reconstruct(idx, val, D)).pow(2).sum()
            D2, val2 = ksvd_sweep(X, D, idx, val, torch.randperm(16, generator=g),
                                  approximate=approximate, nonnegative=nonnegative)
            after = (X - sparse_reconstruct(idx, val2, D2)).pow(2).sum()
            assert after <= before * (1 + 1e-12)
            torch.testing.assert_close(D2.norm(dim=1), torch.ones(16, dtype=torch.float64))
            if nonnegative:
                assert (val2 >= 0).all()


def _coding_problem(seed: int, n: int = 200, M: int = 10, d: int = 6, k: int = 3):
    """Random rows X [n, d], codes (idx, val) [n, k] on M atoms D [M, d], float64, and the
    generator, for checking atom updates against dense algebra."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    idx = torch.rand(n, M, generator=g).argsort(1)[:, :k]
    val = torch.randn(n, k, generator=g, dtype=torch.float64)
    D = torch.nn.functional.normalize(torch.randn(M, d, generator=g, dtype=torch.float64))
    return X, idx, val, D, g


def _assert_weighted_least_squares(update, X, D, idx, val, weight):
    """update(X, D, idx, val) -> (D', val') must give the unit rows of the least-squares atoms
    with each row's squared error weighted by weight [n], and codes with C' D' = C D_wls."""
    C = torch.zeros(len(X), len(D), dtype=torch.float64).scatter_(1, idx, val)
    sw = weight.sqrt().unsqueeze(1)
    D_wls = torch.linalg.lstsq(sw * C, sw * X).solution                    # [M, d]
    new_D, new_val = update(X, D, idx, val)
    torch.testing.assert_close(new_D, D_wls / D_wls.norm(dim=1, keepdim=True))
    new_C = torch.zeros_like(C).scatter_(1, idx, new_val)
    torch.testing.assert_close(new_C @ new_D, C @ D_wls)
    return new_val


def test_mod_update_is_least_squares():
    X, idx, val, D, _ = _coding_problem(3)
    _assert_weighted_least_squares(lambda *a: mod_update(*a, ridge=0.0), X, D, idx, val,
                                   torch.ones(len(X), dtype=torch.float64))


def test_row_weights_by_hand():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(row_weights(X, 2.0), torch.tensor([[0.2], [0.0], [0.5]]))
    torch.testing.assert_close(row_weights(X, 4.0), torch.tensor([[0.04], [0.0], [0.25]]))


def test_the_weighted_update_is_weighted_least_squares():
    X, idx, val, D, g = _coding_problem(4)
    X = X * torch.rand(len(X), 1, generator=g, dtype=torch.float64)
    X[0] = 0.0  # a row of norm 0 weighs nothing and keeps codes of 0
    val[0] = 0.0
    gamma = 3.0
    weight = X.norm(dim=1).pow(-gamma).nan_to_num(posinf=0.0)             # [n]
    est = MOD(n_components=len(D), k=idx.shape[1], ridge=0.0, row_weight_exponent=gamma)

    def update(*args):
        return est._update(*args, None)

    new_val = _assert_weighted_least_squares(update, X, D, idx, val, weight)
    assert (new_val[0] == 0).all()
    # rows of equal norm weigh alike: the plain update
    U = torch.nn.functional.normalize(X[1:]) * 2.0
    plain, _ = mod_update(U, D, idx[1:], val[1:], ridge=0.0)
    torch.testing.assert_close(update(U, D, idx[1:], val[1:])[0], plain)


def test_residual_weights_by_hand():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    R = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # rho = 0, 0 (a row of norm 0), 1/4, 1; weights on the squared error exp(-rho / tau)
    w = residual_weights(X, R, 0.25)
    torch.testing.assert_close(w.pow(2), torch.tensor([[1.0], [1.0], [math.exp(-1.0)],
                                                       [math.exp(-4.0)]]))
    # one factor for all rows is taken out: the best-explained row weighs 1
    torch.testing.assert_close(residual_weights(X[2:], R[2:], 0.25).pow(2),
                               torch.tensor([[1.0], [math.exp(-3.0)]]))


def test_the_residual_weighted_update_is_weighted_least_squares():
    X, idx, val, D, _ = _coding_problem(5)
    M, k = D.shape[0], idx.shape[1]
    C = torch.zeros(len(X), M, dtype=torch.float64).scatter_(1, idx, val)
    gamma, tau = 2.0, 0.5
    rho = (X - C @ D).pow(2).sum(1) / X.pow(2).sum(1)                     # [n]
    weight = X.norm(dim=1).pow(-gamma) * torch.exp(-rho / tau)             # [n]
    est = MOD(n_components=M, k=k, ridge=0.0, row_weight_exponent=gamma,
              residual_weight_scale=tau)
    _assert_weighted_least_squares(lambda *a: est._update(*a, None), X, D, idx, val, weight)
    # codes that explain every row alike leave the plain (or norm-weighted) update
    exact = C @ D
    plain, _ = mod_update(exact, D, idx, val, ridge=0.0)
    alone = MOD(n_components=M, k=k, ridge=0.0, residual_weight_scale=tau)
    torch.testing.assert_close(alone._update(exact, D, idx, val, None)[0], plain)


def test_near_copies_and_their_cost():
    D = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.01, 0], [0, 1.0, 0],
                                                    [0, -1.0, 0]]))
    usage = torch.tensor([5, 9, 4, 4])
    # atom 0 copies the more-used atom 1; atoms 2 and 3 are an antipodal pair, one atom only
    # when codes may be negative
    assert duplicate_atoms(D, usage, 0.99, signed=True).tolist() == [True, False, False, True]
    assert duplicate_atoms(D, usage, 0.99, signed=False).tolist() == [True, False, False, False]
    idx = torch.tensor([[0, 2], [1, 3]])
    val = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    # span=1: energies 4, 1, 1, 9 times 1 - cos^2 to the closest other atom (cos < 0 does
    # not count with nonnegative codes)
    cost = removal_cost(D, idx, val, signed=False, span=1)
    cos01, cos12 = float(D[0] @ D[1]), float(D[1] @ D[2])
    torch.testing.assert_close(cost, torch.tensor([4 * (1 - cos01 ** 2), 1 * (1 - cos01 ** 2),
                                                   1 - cos12 ** 2, 9.0]))


def test_removal_cost_sees_an_atom_that_mixes_two_others():
    e = torch.eye(4)
    mix = torch.nn.functional.normalize(e[0] + e[1], dim=0)
    D = torch.stack([e[0], e[1], mix, e[2]])                       # atom 2 = (e0 + e1) / sqrt 2
    idx = torch.tensor([[0, 2], [1, 3], [2, 3]])
    val = torch.tensor([[1.0, 2.0], [1.0, 1.0], [1.0, 1.0]])       # energies 1, 1, 5, 2
    for signed in (True, False):
        # the mixture is in the span (and the cone) of atoms 0 and 1: dropping it is free
        cost = removal_cost(D, idx, val, signed=signed, span=3)
        assert float(cost[2]) == pytest.approx(0.0, abs=1e-4)
        assert float(cost[3]) == pytest.approx(2.0, abs=1e-4)      # alone in its direction
        # e0 from mix and e1 needs a negative weight on e1: free when signed, not in the cone
        assert float(cost[0]) == pytest.approx(0.0 if signed else 0.5, abs=1e-4)
    # span=1 would only see cos(mix, e0)^2 = 1/2 of the mixture's energy as covered
    assert float(removal_cost(D, idx, val, signed=True, span=1)[2]) == pytest.approx(2.5, abs=1e-4)


def test_pruning_drops_one_of_two_copies_and_the_mixture():
    e = torch.eye(5)
    copy = torch.nn.functional.normalize(e[3] + 1e-3 * e[4], dim=0)
    mix = torch.nn.functional.normalize(e[0] + e[1], dim=0)
    D = torch.stack([e[0], e[1], e[2], e[3], copy, mix])
    idx = torch.arange(6).unsqueeze(1)                              # every atom used once
    val = torch.ones(6, 1)
    keep = prune_atoms(D, idx, val, 4, signed=False)
    kept = D[keep]
    assert len(keep) == 4
    assert (kept @ e[3]).max() > 0.999                               # one of the copies stays
    for i in range(3):
        assert (kept @ e[i]).max() > 0.999                           # every feature keeps an atom
    assert (kept @ mix).max() < 0.72
