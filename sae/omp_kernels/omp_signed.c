/* Signed batch OMP, one sample at a time: the same arithmetic as sae/omp.py's `_omp_chunk`.
 *
 * The whole per-sample state (alpha [M], the orthonormalised support Q [n_steps, M], L, z)
 * stays in L1/L2 across all steps, and each step is one fused pass over M (new Q column, alpha
 * update, block maxima of |alpha|), where the batched torch kernels make ~10 passes over
 * [chunk, M] arrays that live in L3. The argmax takes the first index of the largest |alpha|
 * (as numpy's argmax in scikit-learn).
 *
 * Not compiled on its own: batch_omp.c includes it once per float type, with the macros
 * T (the float type), UT (its bits as an unsigned integer), UB/UNB (float <-> bits), ABSM
 * (the mask that clears the sign bit), EPS (machine epsilon) and NAME (the exported symbol).
 */
int NAME(const T *G, const T *DH, int64_t n_samples, int64_t M, int64_t n_steps,
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
            UT bu = 0;
            for (int64_t m = 0; m < len; m++) {
                UT u = UB(dh[m0 + m]) & ABSM; bu = u > bu ? u : bu;
            }
            T bm = UNB(bu);
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
                UT bu = 0;
                for (int64_t m = 0; m < len; m++) {
                    T v = tmp[m] * inv; qo[m] = v;
                    T a = ci[m] + nz * v; al[m] = a;
                    UT u = UB(a) & ABSM; bu = u > bu ? u : bu;
                }
                bmax[b] = UNB(bu);
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
