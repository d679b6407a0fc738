/* Nonnegative batch OMP, one sample at a time: sae/omp.py's `_nonnegative_omp_chunk` step for
 * step.
 *
 * The same per-sample layout as omp_signed.c, with the state of `_nonnegative_omp_chunk`
 * (G[I, I], DH[I], the Cholesky L of G[I, I], the coefficients c and Lawson-Hanson's passive
 * set). A step picks the first index of the largest alpha off the support (block maxima of
 * the float bits read as signed integers: the order is right wherever the maximum is
 * positive, and a maximum <= 0 stops the sample anyway), rejects a dependent atom via L, runs
 * `nnls_gram`'s iteration warm-started (solving on the passive set with L itself while every
 * slot is passive, with a fresh Cholesky of G[P, P] otherwise), and recomputes
 * alpha = DH - c G[I, :] in one pass over M.
 *
 * Not compiled on its own: batch_omp.c includes it once per float type, with the macros of
 * omp_signed.c plus ST (the bits as a signed integer), SMIN (its minimum), SB/UNSB
 * (float <-> signed bits), TINY (the smallest normal float) and NN_NAME (the exported symbol).
 */
int NN_NAME(const T *G, const T *DH, int64_t n_samples, int64_t M, int64_t K,
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
