"""The batch OMP of sae/omp.py in a small C kernel, signed and nonnegative, for
float32/float64 on the CPU.

One sample at a time: its whole state (alpha [M], the orthonormalised support Q [n_steps, M],
L, z) stays in L1/L2 across all steps, and each step is one fused pass over the M atoms, where
the batched torch kernels make ~10 passes over [chunk, M] arrays that live in L3 (measured:
138-165x scikit-learn's orthogonal_mp_gram against 24-30x for the torch code, one thread).
The nonnegative kernel keeps `_nonnegative_omp_chunk`'s state the same way (G[I, I], L, the
coefficients and Lawson-Hanson's passive set) and runs its algorithm step for step: 13-20x
the torch code on bench_omp's problems, one thread (50k samples, 1024 atoms, k=8: 0.38 s
against 5.0 s; 100k samples, 512 atoms, k=5: 0.28 s against 5.6 s).
The source is compiled on first use with the system C compiler (about 0.5 s) and cached in
$XDG_CACHE_HOME/unsuperpose (~/.cache by default), keyed by source, compiler and CPU; without
a compiler, or with UNSUPERPOSE_OMP_NATIVE=0, `native_lib()` is None and omp.py runs its torch
code, which stays the reference. Same arithmetic as omp.py's `_omp_chunk` and
`_nonnegative_omp_chunk`; the argmax takes the first index of the largest |alpha| (alpha for
nonnegative), as numpy's argmax in scikit-learn. The outputs equal the torch code's up to
rounding: the indices differ only where rounding decides, as a near-tie between two atoms'
correlations, an atom in the span of a support of rank d (Schur complement ~1 ulp against
the eps * G[k, k] threshold), or a coefficient at rounding-noise level.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# The signed, fixed-dtype CPU case runs one sample at a time in C: the whole per-sample state
# (alpha [M], the orthonormalised support Q [n_steps, M], L, z) stays in L1/L2 across all
# steps, and each step is one fused pass over M (new Q column, alpha update, block maxima of
# |alpha|), where the batched torch kernels make ~10 passes over [chunk, M] arrays that live
# in L3. It is compiled on first use with the system C compiler (a few hundred ms) and cached
# in $XDG_CACHE_HOME/unsuperpose (~/.cache by default), keyed by source, compiler and CPU;
# without a compiler, batch_omp falls back to the torch implementation (`_omp_chunk`,
# `_nonnegative_omp_chunk`). Set UNSUPERPOSE_OMP_NATIVE=0 to force the fallback. Same
# arithmetic as `_omp_chunk`; the argmax takes the first index of the largest |alpha| (as
# numpy's argmax in scikit-learn).
_C_TEMPLATE = r"""int NAME(const T *G, const T *DH, int64_t n_samples, int64_t M, int64_t n_steps,
         int use_tol, double tol, const T *norms2, int64_t *idx_out, T *val_out) {
    T *Q = malloc(sizeof(T) * (size_t)(n_steps * M));
    T *alpha = malloc(sizeof(T) * (size_t)M);
    T *L = malloc(sizeof(T) * (size_t)(n_steps * n_steps));
    T *z = malloc(sizeof(T) * (size_t)n_steps);
    T *bmax = malloc(sizeof(T) * (size_t)(M / BLK + 1));
    if (!Q || !alpha || !L || !z || !bmax) {
        free(Q); free(alpha); free(L); free(z); free(bmax); return 1;
    }
    int64_t nblk = (M + BLK - 1) / BLK;
    for (int64_t s = 0; s < n_samples; s++) {
        const T *dh = DH + s * M;
        int64_t *idx = idx_out + s * n_steps;
        T *val = val_out + s * n_steps;
        for (int64_t j = 0; j < n_steps; j++) { idx[j] = -1; val[j] = 0; }
        T amax0 = 0;
        for (int64_t b = 0; b < nblk; b++) {
            int64_t m0 = b * BLK, len = M - m0 < BLK ? M - m0 : BLK;
            U bu = 0;
            for (int64_t m = 0; m < len; m++) {
                U u = bits(dh[m0 + m]) & ABS; bu = u > bu ? u : bu;
            }
            T bm = unbits(bu);
            bmax[b] = bm; amax0 = bm > amax0 ? bm : amax0;
        }
        T floor_ = 10 * EPS * amax0;
        T resid2 = use_tol ? norms2[s] : 0;
        if (use_tol && !(resid2 > (T)tol)) continue;
        int64_t n = 0;
        for (; n < n_steps; n++) {
            /* the support's correlations are rounding noise: never pick an atom twice */
            for (int64_t j = 0; j < n; j++) alpha[idx[j]] = 0;
            const T *cur = n ? alpha : dh;  /* alpha = DH until the first update */
            T amax = 0; int64_t k = M;
            for (int pass = 0; pass < 2 && k == M; pass++) {
                if (pass) /* the largest was on the support: block maxima without it */
                    for (int64_t b = 0; b < nblk; b++) {
                        int64_t m0 = b * BLK, len = M - m0 < BLK ? M - m0 : BLK;
                        T bm = 0;
                        for (int64_t m = 0; m < len; m++) {
                            T a = fabs(cur[m0 + m]); bm = a > bm ? a : bm;
                        }
                        bmax[b] = bm;
                    }
                amax = 0; int64_t best = 0;
                for (int64_t b = 0; b < nblk; b++) if (bmax[b] > amax) { amax = bmax[b]; best = b; }
                int64_t end = (best + 1) * BLK < M ? (best + 1) * BLK : M;
                for (k = best * BLK; k < end; k++) if (fabs(cur[k]) == amax) break;
                if (k == end) k = M;
            }
            if (!(amax > floor_)) break;
            const T *restrict gk = G + k * M;
            T dk = gk[k], ww = 0;
            T *Ln = L + n * n_steps;
            for (int64_t j = 0; j < n; j++) { T w = Q[j * M + k]; Ln[j] = w; ww += w * w; }
            T lkk2 = dk - ww;
            if (!(lkk2 > EPS * dk)) break;
            T lkk = sqrt(lkk2), inv = 1 / lkk;
            Ln[n] = lkk;
            T zn = cur[k] * inv, nz = -zn;
            z[n] = zn; idx[n] = k;
            if (use_tol) { resid2 -= zn * zn; if (!(resid2 > (T)tol)) { n++; break; } }
            if (n == n_steps - 1) { n++; break; }  /* no further step needs Q or alpha */
            T *restrict q = Q + n * M;
            for (int64_t b = 0; b < nblk; b++) {
                int64_t m0 = b * BLK, len = M - m0 < BLK ? M - m0 : BLK;
                T tmp[BLK];
                for (int64_t m = 0; m < len; m++) tmp[m] = gk[m0 + m];
                for (int64_t j = 0; j < n; j++) {
                    const T *restrict qj = Q + j * M + m0; T w = Ln[j];
                    for (int64_t m = 0; m < len; m++) tmp[m] -= w * qj[m];
                }
                const T *ci = cur + m0;  /* may be alpha itself: read, then written */
                T *al = alpha + m0, *restrict qo = q + m0;
                U bu = 0;
                for (int64_t m = 0; m < len; m++) {
                    T v = tmp[m] * inv; qo[m] = v;
                    T a = ci[m] + nz * v; al[m] = a;
                    U u = bits(a) & ABS; bu = u > bu ? u : bu;
                }
                bmax[b] = unbits(bu);
            }
        }
        /* coefficients: L^T gamma = z on the n chosen atoms */
        for (int64_t i = n - 1; i >= 0; i--) {
            T acc = z[i];
            for (int64_t j = i + 1; j < n; j++) acc -= L[j * n_steps + i] * val[j];
            val[i] = acc / L[i * n_steps + i];
        }
    }
    free(Q); free(alpha); free(L); free(z); free(bmax);
    return 0;
}
"""

# The nonnegative case: the same per-sample layout, with the state of `_nonnegative_omp_chunk`
# (G[I, I], DH[I], the Cholesky L of G[I, I], the coefficients c and Lawson-Hanson's passive
# set). A step picks the first index of the largest alpha off the support (block maxima of
# the float bits read as signed integers: the order is right wherever the maximum is
# positive, and a maximum <= 0 stops the sample anyway), rejects a dependent atom via L, runs
# `nnls_gram`'s iteration warm-started (solving on the passive set with L itself while every
# slot is passive, with a fresh Cholesky of G[P, P] otherwise), and recomputes
# alpha = DH - c G[I, :] in one pass over M. Written once with macros, included per type.
_C_NN_TEMPLATE = r"""int NN_NAME(const T *G, const T *DH, int64_t n_samples, int64_t M, int64_t K,
            int use_tol, double tol, const T *norms2, int64_t *idx_out, T *val_out) {
    int64_t nblk = (M + BLK - 1) / BLK;
    T *alpha = malloc(sizeof(T) * (size_t)M);
    T *bmax = malloc(sizeof(T) * (size_t)nblk);
    T *L = malloc(sizeof(T) * (size_t)(K * K));   /* Cholesky of G[I, I], row-major */
    T *Gs = malloc(sizeof(T) * (size_t)(K * K));  /* G[I, I] */
    T *Lp = malloc(sizeof(T) * (size_t)(K * K));  /* Cholesky of G[P, P] */
    T *wk = malloc(sizeof(T) * (size_t)(5 * K));
    int64_t *pl = malloc(sizeof(int64_t) * (size_t)K);
    char *pas = malloc((size_t)(2 * K));
    const T **rows = malloc(sizeof(T *) * (size_t)K);
    if (!alpha || !bmax || !L || !Gs || !Lp || !wk || !pl || !pas || !rows) {
        free(alpha); free(bmax); free(L); free(Gs); free(Lp); free(wk); free(pl); free(pas);
        free(rows); return 1;
    }
    T *bs = wk, *c = wk + K, *sv = wk + 2 * K, *y = wk + 3 * K, *nc = wk + 4 * K;
    char *npas = pas + K;
    const T tiny = TINY;
    for (int64_t s = 0; s < n_samples; s++) {
        const T *dh = DH + s * M;
        int64_t *idx = idx_out + s * K;
        T *val = val_out + s * K;
        for (int64_t j = 0; j < K; j++) { idx[j] = -1; val[j] = 0; }
        T amax0 = 0;
        for (int64_t b = 0; b < nblk; b++) {
            int64_t m0 = b * BLK, len = M - m0 < BLK ? M - m0 : BLK;
            UT bu = 0; ST bsg = SMIN;
            for (int64_t q = 0; q < len; q++) {
                T x = dh[m0 + q];
                UT u = UB(x) & ABSM; bu = u > bu ? u : bu;
                ST v = SB(x); bsg = v > bsg ? v : bsg;
            }
            T bm = UNB(bu);
            amax0 = bm > amax0 ? bm : amax0;
            bmax[b] = UNSB(bsg);
        }
        T floor_ = 10 * EPS * amax0;
        if (use_tol && !(norms2[s] > (T)tol)) continue;
        const T *cur = dh;  /* alpha = DH until the first update */
        int64_t n = 0;
        for (; n < K; n++) {
            T amax = -INFINITY; int64_t best = 0;
            for (int64_t b = 0; b < nblk; b++) if (bmax[b] > amax) { amax = bmax[b]; best = b; }
            if (!(amax > floor_)) break;
            int64_t end = (best + 1) * BLK < M ? (best + 1) * BLK : M, k;
            for (k = best * BLK; k < end - 1; k++) if (cur[k] == amax) break;
            /* w = L^-1 G[I, k], the new row of L */
            T dk = G[k * M + k], ww = 0;
            T *Ln = L + n * K;
            for (int64_t j = 0; j < n; j++) {
                T gj = G[idx[j] * M + k];
                Gs[n * K + j] = gj; Gs[j * K + n] = gj;
                T acc = gj;
                for (int64_t i = 0; i < j; i++) acc -= L[j * K + i] * Ln[i];
                acc /= L[j * K + j];
                Ln[j] = acc; ww += acc * acc;
            }
            T lkk2 = dk - ww;
            if (!(lkk2 > EPS * dk)) break;
            Ln[n] = sqrt(lkk2);
            Gs[n * K + n] = dk;
            bs[n] = dh[k]; idx[n] = k; c[n] = 0; pas[n] = 1;
            int64_t m = n + 1;
            /* Lawson-Hanson on the m slots, as nnls_gram */
            for (int64_t it = 0; it < 3 * m + 10; it++) {
                int64_t np = 0;
                for (int64_t j = 0; j < m; j++) { sv[j] = 0; if (pas[j]) pl[np++] = j; }
                const T *Lc = L;
                if (np < m) {  /* Cholesky of G[P, P] */
                    for (int64_t i = 0; i < np; i++) {
                        const T *gi = Gs + pl[i] * K;
                        for (int64_t j = 0; j <= i; j++) {
                            T acc = gi[pl[j]];
                            for (int64_t q = 0; q < j; q++) acc -= Lp[i * K + q] * Lp[j * K + q];
                            if (j < i) Lp[i * K + j] = acc / Lp[j * K + j];
                            else Lp[i * K + i] = sqrt(acc > 0 ? acc : EPS * gi[pl[i]]);
                        }
                    }
                    Lc = Lp;
                }
                /* s_P = G[P, P]^-1 b_P: forward, then backward substitution */
                for (int64_t i = 0; i < np; i++) {
                    T acc = bs[pl[i]];
                    for (int64_t j = 0; j < i; j++) acc -= Lc[i * K + j] * y[j];
                    y[i] = acc / Lc[i * K + i];
                }
                for (int64_t i = np - 1; i >= 0; i--) {
                    T acc = y[i];
                    for (int64_t j = i + 1; j < np; j++) acc -= Lc[j * K + i] * y[j];
                    y[i] = acc / Lc[i * K + i];
                }
                for (int64_t i = 0; i < np; i++) sv[pl[i]] = y[i];
                /* infeasible: walk from c towards s until the first coefficient reaches 0 */
                int feasible = 1; T t = INFINITY; int64_t jb = 0;
                for (int64_t j = 0; j < m; j++)
                    if (pas[j] && sv[j] <= 0) {
                        feasible = 0;
                        T den = c[j] - sv[j]; den = den > tiny ? den : tiny;
                        T r = c[j] / den;
                        if (r < t) { t = r; jb = j; }
                    }
                t = feasible ? 1 : (t < 0 ? 0 : (t > 1 ? 1 : t));
                for (int64_t j = 0; j < m; j++) {
                    T v = c[j] + t * (sv[j] - c[j]);
                    nc[j] = v; npas[j] = pas[j] && v > 0;
                }
                if (!feasible) npas[jb] = 0;
                for (int64_t j = 0; j < m; j++) if (!npas[j]) nc[j] = 0;
                /* feasible: optimal on P; the slot off P with the largest gradient re-enters */
                int enter = 0;
                if (feasible) {
                    T gmax = -INFINITY; int64_t je = 0;
                    for (int64_t j = 0; j < m; j++)
                        if (!npas[j]) {
                            T gc = 0;
                            for (int64_t i = 0; i < m; i++) gc += Gs[j * K + i] * nc[i];
                            T g = bs[j] - gc;
                            if (g > gmax) { gmax = g; je = j; }
                        }
                    if (gmax > floor_) { enter = 1; npas[je] = 1; }
                }
                for (int64_t j = 0; j < m; j++) { c[j] = nc[j]; pas[j] = npas[j]; }
                if (feasible && !enter) break;
            }
            if (use_tol) {  /* ||h - c D_I||^2 = ||h||^2 - 2 c.DH[I] + c^T G[I,I] c */
                T cb = 0, cgc = 0;
                for (int64_t j = 0; j < m; j++) {
                    T gc = 0;
                    for (int64_t i = 0; i < m; i++) gc += Gs[j * K + i] * c[i];
                    cb += c[j] * bs[j]; cgc += c[j] * gc;
                }
                if (!(norms2[s] - 2 * cb + cgc > (T)tol)) { n++; break; }
            }
            if (m == K) { n++; break; }  /* no further step needs alpha */
            /* alpha = DH - c G[I, :] (zero coefficients add nothing), the support masked */
            int64_t nr = 0;
            for (int64_t j = 0; j < m; j++)
                if (c[j] != 0) { rows[nr] = G + idx[j] * M; y[nr] = c[j]; nr++; }
            for (int64_t b = 0; b < nblk; b++) {
                int64_t m0 = b * BLK, len = M - m0 < BLK ? M - m0 : BLK;
                T tmp[BLK];
                for (int64_t q = 0; q < len; q++) tmp[q] = dh[m0 + q];
                for (int64_t r = 0; r < nr; r++) {
                    const T *restrict gr = rows[r] + m0; T cv = y[r];
                    for (int64_t q = 0; q < len; q++) tmp[q] -= cv * gr[q];
                }
                for (int64_t j = 0; j < m; j++) {
                    int64_t o = idx[j] - m0;
                    if (o >= 0 && o < len) tmp[o] = -INFINITY;
                }
                ST bsg = SMIN;
                T *restrict al = alpha + m0;
                for (int64_t q = 0; q < len; q++) {
                    al[q] = tmp[q]; ST v = SB(tmp[q]); bsg = v > bsg ? v : bsg;
                }
                bmax[b] = UNSB(bsg);
            }
            cur = alpha;
        }
        for (int64_t j = 0; j < n; j++) {
            if (c[j] > 0) val[j] = c[j];
            else idx[j] = -1;
        }
    }
    free(alpha); free(bmax); free(L); free(Gs); free(Lp); free(wk); free(pl); free(pas);
    free(rows);
    return 0;
}
"""

_C_HEADER = """#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define BLK 128
"""
_C_TYPES = (("float", "omp_float32", "1.1920928955078125e-07f"),
            ("double", "omp_float64", "2.220446049250313e-16"))
_C_NN_NAMES = ("omp_nn_float32", "omp_nn_float64")
_native: list = []  # [ctypes library or None], once tried


def _c_source() -> str:
    out = _C_HEADER
    for (T, name, eps), nn_name, (U, S, absmask, tiny) in zip(
            _C_TYPES, _C_NN_NAMES, (("uint32_t", "int32_t", "0x7fffffffu", "FLT_MIN"),
                                    ("uint64_t", "int64_t", "0x7fffffffffffffffull", "DBL_MIN"))):
        # |x| of a float as its bit pattern: integer maxima vectorise without fast-math
        out += (f"typedef {U} U_{T};\n"
                f"static inline {U} bits_{T}({T} x) {{ {U} u; memcpy(&u, &x, sizeof u); return u; }}\n"
                f"static inline {T} unbits_{T}({U} u) {{ {T} x; memcpy(&x, &u, sizeof x); return x; }}\n")
        out += (_C_TEMPLATE.replace("unbits(", f"unbits_{T}(").replace("bits(", f"bits_{T}(")
                .replace("U ", f"U_{T} ").replace("ABS", absmask).replace("NAME", name)
                .replace("EPS", eps).replace("const T ", f"const {T} ").replace("T *", f"{T} *")
                .replace(" T ", f" {T} ").replace("(T)", f"({T})").replace("    T ", f"    {T} "))
        # the nonnegative kernel: its types and helpers as macros around one template
        out += (f"static inline {S} sbits_{T}({T} x) {{ {S} v; memcpy(&v, &x, sizeof v); return v; }}\n"
                f"static inline {T} unsbits_{T}({S} v) {{ {T} x; memcpy(&x, &v, sizeof x); return x; }}\n")
        macros = {"T": T, "UT": U, "ST": S, "SMIN": f"INT{S[3:5]}_MIN", "ABSM": absmask,
                  "UB": f"bits_{T}", "UNB": f"unbits_{T}", "SB": f"sbits_{T}",
                  "UNSB": f"unsbits_{T}", "EPS": eps, "TINY": tiny, "NN_NAME": nn_name}
        out += "".join(f"#define {k} {v}\n" for k, v in macros.items())
        out += _C_NN_TEMPLATE + "".join(f"#undef {k}\n" for k in macros)
    return out


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def native_lib():
    """The compiled kernel (ctypes), or None where it is disabled or cannot be built."""
    if _native:
        return _native[0]
    lib = None
    if os.environ.get("UNSUPERPOSE_OMP_NATIVE", "1") != "0":
        source = _c_source()
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        key = hashlib.sha256((source + _cpu_key() + str(cc)).encode()).hexdigest()[:16]
        try:
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unsuperpose"
            so = cache / f"omp_{key}.so"
            if not so.exists() and cc is not None:
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    c_file, tmp_so = Path(tmp) / "omp.c", Path(tmp) / "omp.so"
                    c_file.write_text(source)
                    for arch in (["-march=native"], []):
                        done = subprocess.run([cc, "-O3", *arch, "-shared", "-fPIC", "-o",
                                               str(tmp_so), str(c_file), "-lm"],
                                              capture_output=True)
                        if done.returncode == 0:
                            os.replace(tmp_so, so)  # atomic: concurrent builders agree
                            break
            if so.exists():
                lib = ctypes.CDLL(str(so))
                for name in [t[1] for t in _C_TYPES] + list(_C_NN_NAMES):
                    fn = getattr(lib, name)
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        except (OSError, RuntimeError):  # no home, unwritable cache, unloadable library
            lib = None
    _native.append(lib)
    return lib


def native_omp(lib, G: torch.Tensor, DH: torch.Tensor, n_steps: int, tol: float | None,
                norms2: torch.Tensor | None,
                nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_omp in C (signed, or nonnegative as `_nonnegative_omp_chunk`); G, DH contiguous
    on the CPU, float32 or float64. The samples are split over torch's thread count (ctypes
    calls release the GIL)."""
    n_samples, M = DH.shape
    single = DH.dtype == torch.float32
    if nonnegative:
        fn = lib.omp_nn_float32 if single else lib.omp_nn_float64
    else:
        fn = lib.omp_float32 if single else lib.omp_float64
    indices = torch.empty(n_samples, n_steps, dtype=torch.long)
    values = DH.new_empty(n_samples, n_steps)
    norms2 = norms2.contiguous() if tol is not None else None

    def part(lo: int, hi: int) -> int:
        return fn(G.data_ptr(), DH[lo].data_ptr(), hi - lo, M, n_steps, int(tol is not None),
                  float(tol or 0.0), norms2[lo].data_ptr() if norms2 is not None else None,
                  indices[lo].data_ptr(), values[lo].data_ptr())

    n_parts = max(1, min(torch.get_num_threads(), n_samples // 256))
    bounds = [n_samples * i // n_parts for i in range(n_parts + 1)]
    ranges = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    if len(ranges) == 1:
        codes = [part(*ranges[0])]
    else:
        with ThreadPoolExecutor(len(ranges)) as pool:
            codes = list(pool.map(lambda r: part(*r), ranges))
    if any(codes):
        raise MemoryError("batch_omp: the native kernel could not allocate its workspace")
    return indices, values


