"""Orthogonal matching pursuit for a whole batch at once, from the Gram matrix.

Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): with the Gram matrix G = D D^T and the
correlations DH = H D^T computed once, OMP never needs the signals again, and each step costs
O(n_components * step) per sample. Here every sample of a chunk advances in lockstep: one
Python iteration per sparsity step, batched torch kernels over the samples.

Conventions: atoms are the rows of D [n_components, d] and H ~ C D with codes
C [n_samples, n_components]. Sparse codes are returned as `(indices, values)`, both
[n_samples, n_steps]: slot j holds the j-th atom chosen; index -1 with value 0 marks an
empty slot (the sample stopped early, or a nonnegative coefficient ended at exactly 0).

How the signed variant keeps its state (per sample, support I of size n, L L^T = G[I, I]):
    Q = G[:, I] L^{-T}   [n_components, n]   correlations of every atom with the
                                             orthonormalised support (Gram-Schmidt in the
                                             correlation domain)
    z = L^{-1} DH[I]     [n]                 the signal's coordinates on that orthonormal basis
A new atom k appends one column to each: the new Cholesky row w = L^{-1} G[I, k] is the row
Q[k, :] (so no triangular solve per step), q = (G[:, k] - Q w) / L_kk, z_n = alpha_k / L_kk,
and the correlations with the residual update as alpha -= q z_n, the squared residual norm
as ||r||^2 -= z_n^2. The coefficients come from one triangular solve L^T gamma = z at the end.
This is the same arithmetic as Batch-OMP's progressive Cholesky, in fewer kernel launches.
On the CPU in float32/float64, both variants (signed and nonnegative) run in a small C
kernel (sae/omp_native.py, compiled on first use), one sample at a time with its state in
cache; the torch code is the fallback (no C compiler, other devices, UNSUPERPOSE_OMP_NATIVE=0)
and the reference.
"""
from __future__ import annotations


import torch

from unsuperpose.sae.nnls import nnls_gram
from unsuperpose.sae.omp_native import native_lib, native_omp

# Chunk sizing: each step makes ~6 passes over [chunk, n_components] arrays, fastest when
# one of them stays in a core's L2 cache (measured on CPU: 2-3x faster than 8x larger
# chunks), while fewer, larger chunks amortise the per-step Python overhead. The
# [chunk, n_steps, n_components] workspace is capped as well (n_steps is large with tol).
_ROW_BLOCK_BYTES = 2 * 2**20
_WORKSPACE_BYTES = 64 * 2**20
_MIN_CHUNK = 64


def batch_omp(G: torch.Tensor, DH: torch.Tensor, n_nonzero_coefs: int | None = None, *,
              tol: float | None = None, norms_squared: torch.Tensor | None = None,
              nonnegative: bool = False,
              chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of all samples by OMP, from G = D D^T and DH = H D^T.

    G: [n_components, n_components], the Gram matrix of the atoms (rows of D).
    DH: [n_samples, n_components], correlations of each sample with each atom; its dtype and
        device are those of the computation and of the output (G is cast to match).
    n_nonzero_coefs: most atoms per sample (None: up to n_components, then `tol` must be set).
    tol: stop a sample once its squared residual norm ||h - c D||^2 <= tol (sklearn's
        `orthogonal_mp_gram(tol=...)`); needs `norms_squared` [n_samples] = ||h||^2. Unlike
        sklearn, `n_nonzero_coefs` still caps the support when both are given, and a sample
        with ||h||^2 <= tol gets no atom at all. Stopped samples stay fixed while others go on.
    nonnegative: only atoms with a positive correlation with the residual enter, and the
        coefficients on the support solve a nonnegative least-squares problem (below).
    chunk_size: samples per chunk; bounds the [chunk, n_steps, n_components] workspace
        (of the torch implementation; the native kernel works per sample and ignores it).

    On the CPU in float32/float64, signed and nonnegative alike run in the C kernel of
    sae/omp_native.py (split over torch's threads) where it builds, and in the torch code
    (`_omp_chunk`, `_nonnegative_omp_chunk`, the reference) otherwise or with
    UNSUPERPOSE_OMP_NATIVE=0; the two agree up to rounding.

    Returns (indices [n_samples, n_steps] int64, values [n_samples, n_steps]); n_steps is
    n_nonzero_coefs (or n_components). Every sample also stops when no atom correlates with
    its residual above rounding noise, or when the best atom is linearly dependent on its
    support (sklearn warns "Orthogonality lost" and stops there too).
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be square [n_components, n_components], got {tuple(G.shape)}")
    n_components = G.shape[0]
    if DH.ndim != 2 or DH.shape[1] != n_components:
        raise ValueError(f"DH must be [n_samples, {n_components}], got {tuple(DH.shape)}")
    if not DH.is_floating_point():
        raise ValueError(f"DH must be a floating-point tensor, got {DH.dtype}")
    if n_nonzero_coefs is None and tol is None:
        raise ValueError("give n_nonzero_coefs, tol, or both")
    if n_nonzero_coefs is not None and not 1 <= n_nonzero_coefs <= n_components:
        raise ValueError(f"n_nonzero_coefs must be in [1, n_components={n_components}], "
                         f"got {n_nonzero_coefs}")
    if tol is not None:
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if norms_squared is None or tuple(norms_squared.shape) != (DH.shape[0],):
            shape = None if norms_squared is None else tuple(norms_squared.shape)
            raise ValueError(f"tol needs norms_squared of shape ({DH.shape[0]},) "
                             f"(the squared norm of each sample), got {shape}")
        norms_squared = norms_squared.to(DH)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    n_samples = DH.shape[0]
    n_steps = n_nonzero_coefs if n_nonzero_coefs is not None else n_components
    G = G.to(DH)
    chunk = chunk_size or default_chunk_size(n_steps, n_components, DH.element_size())
    code_chunk = _nonnegative_omp_chunk if nonnegative else _omp_chunk

    lib = None if DH.device.type != "cpu" or DH.dtype not in (
        torch.float32, torch.float64) or n_samples == 0 else native_lib()
    if lib is not None:
        return native_omp(lib, G.contiguous(), DH.contiguous(), n_steps, tol, norms_squared,
                          nonnegative)
    indices = torch.empty(n_samples, n_steps, dtype=torch.long, device=DH.device)
    values = DH.new_empty(n_samples, n_steps)
    for start in range(0, n_samples, chunk):
        sl = slice(start, start + chunk)
        norms = norms_squared[sl] if tol is not None else None
        indices[sl], values[sl] = code_chunk(G, DH[sl], n_steps, tol, norms)
    return indices, values


def omp_encode(H: torch.Tensor, components: torch.Tensor, n_nonzero_coefs: int | None = None,
               *, tol: float | None = None, nonnegative: bool = False,
               chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """OMP codes of H [n_samples, d] on the atoms `components` [n_components, d].

    Computes G once and DH = H D^T one chunk at a time, so the [n_samples, n_components]
    correlation matrix never exists whole. Arguments and output as in `batch_omp`; the
    computation runs in H's dtype on H's device.
    """
    D = components.to(H)
    G = D @ D.T                                                    # [n_components, n_components]
    n_steps = n_nonzero_coefs if n_nonzero_coefs is not None else D.shape[0]
    chunk = chunk_size or default_chunk_size(n_steps, D.shape[0], H.element_size())
    parts = []
    for start in range(0, H.shape[0], chunk):
        Hc = H[start:start + chunk]                                # [chunk, d]
        norms = Hc.pow(2).sum(1) if tol is not None else None      # [chunk]
        parts.append(batch_omp(G, Hc @ D.T, n_nonzero_coefs, tol=tol, norms_squared=norms,
                               nonnegative=nonnegative, chunk_size=chunk))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def default_chunk_size(n_steps: int, n_components: int, itemsize: int) -> int:
    row = n_components * itemsize
    return max(_MIN_CHUNK, min(_ROW_BLOCK_BYTES // row, _WORKSPACE_BYTES // (n_steps * row)))


def sparse_to_dense(indices: torch.Tensor, values: torch.Tensor,
                    n_components: int) -> torch.Tensor:
    """(indices, values) [n_samples, n_steps] -> dense codes [n_samples, n_components]."""
    dense = values.new_zeros(indices.shape[0], n_components)
    # empty slots (-1) carry value 0, so sending them to column 0 adds nothing
    return dense.scatter_add_(1, indices.clamp_min(0), values)


def sparse_reconstruct(indices: torch.Tensor, values: torch.Tensor,
                       components: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] * components[indices[:, j]] -> [n_samples, d], without densifying."""
    return torch.nn.functional.embedding_bag(indices.clamp_min(0), components,
                                             per_sample_weights=values.to(components),
                                             mode="sum")


def gram_of_sparse_codes(idx: torch.Tensor, val: torch.Tensor, n_components: int,
                          chunk: int = 1 << 16) -> torch.Tensor:
    """C^T C [n_components, n_components] float64 from sparse codes [n_samples, k].

    Sums the k x k outer products of each sample's coefficients into their (i, j) cells,
    so the cost is n_samples * k^2, never n_samples * n_components.
    """
    M = n_components
    out = torch.zeros(M * M, dtype=torch.float64, device=val.device)
    for start in range(0, idx.shape[0], chunk):
        i = idx[start:start + chunk].clamp_min(0)                  # [c, k]
        v = val[start:start + chunk].double()                      # [c, k]
        cells = (i.unsqueeze(2) * M + i.unsqueeze(1)).flatten()   # [c * k * k]
        out.index_add_(0, cells, (v.unsqueeze(2) * v.unsqueeze(1)).flatten())
    return out.view(M, M)


# ---- one chunk ----------------------------------------------------------------------------
def _noise_floor(alpha0: torch.Tensor) -> torch.Tensor:
    """[B] correlation below which an atom only fits rounding error of the residual."""
    return 10 * torch.finfo(alpha0.dtype).eps * alpha0.abs().amax(dim=1)


def _omp_chunk(G: torch.Tensor, alpha0: torch.Tensor, n_steps: int, tol: float | None,
               norms2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed OMP for one chunk. alpha0 [B, M] = DH; returns indices, values [B, n_steps]."""
    B, M = alpha0.shape
    dev, dt = alpha0.device, alpha0.dtype
    eps = torch.finfo(dt).eps
    diag = G.diagonal()                                            # [M]

    # finished rows are written here when the live batch is compacted, and at the end
    L_out = torch.eye(n_steps, dtype=dt, device=dev).repeat(B, 1, 1)  # [B, n_steps, n_steps]
    z_out = alpha0.new_zeros(B, n_steps)                               # [B, n_steps]
    idx_out = torch.full((B, n_steps), -1, dtype=torch.long, device=dev)

    live = torch.arange(B, device=dev)  # rows of this chunk still in the working set
    # Q's columns are kept unnormalised, Q[:, j] = raw[j] * inv_lkk[:, j], which saves a
    # full pass over [B, M] per step; steps first so that raw[n] is contiguous
    raw = alpha0.new_empty(n_steps, B, M)                          # [n_steps, b, M]
    inv_lkk = alpha0.new_ones(B, n_steps)                          # [b, n_steps]
    L, z, idx = L_out.clone(), z_out.clone(), idx_out.clone()
    alpha = alpha0.clone()              # [b, M] correlations of atoms with the residual
    score = _score_buffer(B, M, alpha0)  # [b, M_padded] |alpha|, support masked
    floor = _noise_floor(alpha0)        # [b]
    resid2 = norms2.clone() if tol is not None else None              # [b] ||residual||^2
    active = resid2 > tol if tol is not None else torch.ones(B, dtype=torch.bool, device=dev)

    for n in range(n_steps):
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= active.shape[0] // 2:
            live, (raw,), (inv_lkk, L, z, idx, alpha, score, floor, active, resid2) = _compact(
                active, live, [(L_out, L), (z_out, z), (idx_out, idx)], (raw,),
                (inv_lkk, L, z, idx, alpha, score, floor, active, resid2))
        b = active.shape[0]

        torch.abs(alpha, out=score[:, :M])
        if n:
            # the support's correlations are rounding noise; never pick an atom twice
            score.scatter_(1, idx[:, :n].clamp_min(0), -1.0)
        amax, k = _row_argmax(score)                               # [b]
        w = raw[:n].gather(2, k.view(1, b, 1).expand(n, b, 1)).squeeze(2).T.contiguous()
        w *= inv_lkk[:, :n]                                        # [b, n] L^-1 G[I, k]
        lkk2 = diag[k] - (w * w).sum(1)                            # [b] Schur complement
        active = active & (amax > floor) & (lkk2 > eps * diag[k])
        # stopped rows get an identity row in L and z_n = 0, hence a zero coefficient
        lkk = torch.where(active, lkk2, 1.0).sqrt()
        w = w * active.unsqueeze(1)
        zn = torch.where(active, alpha.gather(1, k.unsqueeze(1)).squeeze(1) / lkk, 0.0)
        # raw[n] = G[k, :] - Q[:, :n] w
        raw[n] = _minus_combination_(G.index_select(0, k), w * inv_lkk[:, :n], raw)
        inv_lkk[:, n] = 1.0 / lkk
        alpha.addcmul_(raw[n], (zn / lkk).unsqueeze(1), value=-1)
        L[:, n, :n] = w
        L[:, n, n] = lkk
        z[:, n] = zn
        idx[:, n] = torch.where(active, k, -1)
        if resid2 is not None:
            resid2 = resid2 - zn * zn
            active = active & (resid2 > tol)

    L_out[live], z_out[live], idx_out[live] = L, z, idx
    gamma = torch.linalg.solve_triangular(L_out.transpose(1, 2), z_out.unsqueeze(2),
                                          upper=True).squeeze(2)  # [B, n_steps]
    return idx_out, gamma * (idx_out >= 0)


def _compact(active: torch.Tensor, live: torch.Tensor,
             finished: list[tuple[torch.Tensor, torch.Tensor]], steps_first: tuple,
             rows_first: tuple) -> tuple[torch.Tensor, list, list]:
    """Drop the stopped rows from a chunk's working set, once most rows have stopped, so that
    the long tail of a tol-stopped batch does not pay for the whole chunk.

    active [b] bool: the working rows still going; live [b]: their rows in the chunk.
    finished: (output [B, ...], state [b, ...]) pairs; every working row's state is written
    to output[live] first (the stopped rows' final values; the others are written again).
    steps_first: state [n_steps, b, ...], kept along dim 1; rows_first: state [b, ...] (or
    None), kept along dim 0. Returns (live, steps_first, rows_first) for the rows kept.
    """
    for output, state in finished:
        output[live] = state
    keep = active.nonzero().squeeze(1)
    return (live[keep], [t[:, keep] for t in steps_first],
            [t[keep] if t is not None else None for t in rows_first])


def _minus_combination_(base: torch.Tensor, coef: torch.Tensor,
                        rows: torch.Tensor) -> torch.Tensor:
    """base - sum_j coef[:, j] * rows[j], overwriting base (a fresh tensor from the caller).

    base: [b, M]; coef: [b, n]; rows: [>= n, b, M] (steps first). One batched [1, n] x [n, M]
    product per sample, except where torch's CPU bmm is slow: for a few terms or short rows
    it takes a per-matrix path, and n fused multiply-adds over [b, M] beat it by up to 6x.
    """
    n, M = coef.shape[1], base.shape[1]
    if n <= 3 or n * M < 2048:
        for j in range(n):
            base.addcmul_(rows[j], coef[:, j:j + 1], value=-1)
        return base
    # (torch's CPU bmm also falls back to one addmm per sample when given out= or a batch1
    # that is not contiguous, ~20x slower; hence no out= and the contiguous coef)
    return torch.baddbmm(base.unsqueeze(1), coef.contiguous().unsqueeze(1),
                         rows[:n].transpose(0, 1), alpha=-1).squeeze(1)


_ARGMAX_BLOCK = 16


def _score_buffer(B: int, M: int, like: torch.Tensor) -> torch.Tensor:
    """[B, M rounded up to _ARGMAX_BLOCK]; the padding columns hold -inf and never win."""
    Mp = -(-M // _ARGMAX_BLOCK) * _ARGMAX_BLOCK
    return torch.full((B, Mp), -torch.inf, dtype=like.dtype, device=like.device)


def _row_argmax(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (max, an argmax) of score [b, Mp], Mp a multiple of _ARGMAX_BLOCK.

    torch's max-with-indices over a long row runs ~10x slower on CPU than a vectorised amax.
    So fold each row into _ARGMAX_BLOCK strided slices [b, block, Mp / block], take the
    elementwise max across slices (contiguous, vectorised), pick the winning column, then
    the winning slice within it. Ties (measure zero for real data) may resolve to a
    different index than argmax would.
    """
    b, Mp = score.shape
    width = Mp // _ARGMAX_BLOCK
    folded = score.view(b, _ARGMAX_BLOCK, width)
    vmax, col = folded.amax(1).max(1)                              # [b]
    group = folded.gather(2, col.view(b, 1, 1).expand(b, _ARGMAX_BLOCK, 1)).squeeze(2)
    return vmax, group.argmax(1) * width + col


def _nonnegative_omp_chunk(G: torch.Tensor, alpha0: torch.Tensor, n_steps: int,
                           tol: float | None, norms2: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonnegative OMP for one chunk: alpha0 [B, M] = DH; returns indices, values [B, n_steps].

    Step n adds the atom with the largest positive correlation with the residual to the
    support I, then solves min_{c >= 0} ||h - c D[I]||^2 (in Gram form) by Lawson-Hanson,
    warm-started from the previous step's solution. Atoms whose coefficient drops to 0 stay
    in I (they may come back at a later step, as in NNLS on I from scratch).
    """
    B, M = alpha0.shape
    dev, dt = alpha0.device, alpha0.dtype
    eps = torch.finfo(dt).eps
    diag = G.diagonal()                                            # [M]
    eye = torch.eye(n_steps, dtype=dt, device=dev)

    c_out = alpha0.new_zeros(B, n_steps)
    idx_out = torch.full((B, n_steps), -1, dtype=torch.long, device=dev)

    live = torch.arange(B, device=dev)         # rows of this chunk still in the working set
    Gsel = alpha0.new_zeros(n_steps, B, M)     # [n_steps, b, M] rows G[I_j, :], steps first
    Gss = eye.repeat(B, 1, 1)                  # [b, n_steps, n_steps] G[I, I], identity off I
    L = eye.repeat(B, 1, 1)                    # Cholesky of G[I, I]: rejects dependent atoms
    b_sup = alpha0.new_zeros(B, n_steps)       # [b, n_steps] DH[I]
    c, idx = c_out.clone(), idx_out.clone()    # [b, n_steps] coefficients on I, >= 0
    passive = torch.zeros(B, n_steps, dtype=torch.bool, device=dev)  # slots free to be > 0
    a0 = alpha0                                # [b, M] DH of the live rows
    alpha = alpha0.clone()                     # [b, M] correlations with the residual
    score = _score_buffer(B, M, alpha0)        # [b, M_padded] alpha, support masked
    floor = _noise_floor(alpha0)
    n2 = norms2
    active = norms2 > tol if tol is not None else torch.ones(B, dtype=torch.bool, device=dev)

    for n in range(n_steps):
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= active.shape[0] // 2:
            live, (Gsel,), (Gss, L, b_sup, c, idx, passive, a0, alpha, score, floor, active,
                            n2) = _compact(
                active, live, [(c_out, c), (idx_out, idx)], (Gsel,),
                (Gss, L, b_sup, c, idx, passive, a0, alpha, score, floor, active, n2))
        b = active.shape[0]

        score[:, :M] = alpha
        if n:
            score.scatter_(1, idx[:, :n].clamp_min(0), -torch.inf)
        amax, k = _row_argmax(score)                               # [b]
        g = Gsel[:n].gather(2, k.view(1, b, 1).expand(n, b, 1)).squeeze(2).T.contiguous()
        w = torch.linalg.solve_triangular(L[:, :n, :n], g.unsqueeze(2),
                                          upper=False).squeeze(2)  # [b, n] L^-1 G[I, k]
        lkk2 = diag[k] - (w * w).sum(1)
        active = active & (amax > floor) & (lkk2 > eps * diag[k])
        # rows that stop now keep an identity slot with coefficient 0
        g, w = g * active.unsqueeze(1), w * active.unsqueeze(1)
        Gsel[n] = G.index_select(0, k)
        Gss[:, n, :n] = g
        Gss[:, :n, n] = g
        Gss[:, n, n] = torch.where(active, diag[k], 1.0)
        L[:, n, :n] = w
        L[:, n, n] = torch.where(active, lkk2, 1.0).sqrt()
        b_sup[:, n] = torch.where(active, a0.gather(1, k.unsqueeze(1)).squeeze(1), 0.0)
        idx[:, n] = torch.where(active, k, -1)
        passive[:, n] = active

        m = n + 1
        c[:, :m], passive[:, :m] = nnls_gram(Gss[:, :m, :m], b_sup[:, :m], c[:, :m],
                                             passive[:, :m], floor, active.nonzero().squeeze(1),
                                             max_iter=3 * m + 10)
        alpha = _minus_combination_(a0.clone(), c[:, :m], Gsel)
        if tol is not None:
            # ||h - c D_I||^2 = ||h||^2 - 2 c.DH[I] + c^T G[I,I] c
            cm = c[:, :m]
            cGc = (cm * (Gss[:, :m, :m] @ cm.unsqueeze(2)).squeeze(2)).sum(1)
            active = active & (n2 - 2 * (cm * b_sup[:, :m]).sum(1) + cGc > tol)

    c_out[live], idx_out[live] = c, idx
    return torch.where(c_out > 0, idx_out, -1), c_out * (c_out > 0)
