/* The batch OMP kernels of sae/omp_native.py: the one file it compiles (with omp_signed.c and
 * omp_nonnegative.c beside it), into a library that exports, for float32 and float64,
 *
 *   int omp_<dtype>(G, DH, n_samples, M, n_steps, use_tol, tol, norms2, idx_out, val_out)
 *   int omp_nn_<dtype>(...)   the same arguments, nonnegative coefficients
 *
 * G [M, M] and DH [n_samples, M] row-major; norms2 [n_samples] (read only when use_tol);
 * idx_out [n_samples, n_steps] (-1 where no atom) and val_out [n_samples, n_steps] written.
 * Each returns 0, or 1 where it could not allocate its workspace.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define BLK 128

/* a float's bit pattern, unsigned (|x| as an integer: integer maxima vectorise without
 * fast-math) and signed (the order of the positive floats) */
static inline uint32_t bits_float(float x) { uint32_t u; memcpy(&u, &x, sizeof u); return u; }
static inline float unbits_float(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }
static inline int32_t sbits_float(float x) { int32_t v; memcpy(&v, &x, sizeof v); return v; }
static inline float unsbits_float(int32_t v) { float x; memcpy(&x, &v, sizeof x); return x; }
static inline uint64_t bits_double(double x) { uint64_t u; memcpy(&u, &x, sizeof u); return u; }
static inline double unbits_double(uint64_t u) { double x; memcpy(&x, &u, sizeof x); return x; }
static inline int64_t sbits_double(double x) { int64_t v; memcpy(&v, &x, sizeof v); return v; }
static inline double unsbits_double(int64_t v) { double x; memcpy(&x, &v, sizeof x); return x; }

#define T float
#define UT uint32_t
#define ST int32_t
#define SMIN INT32_MIN
#define ABSM 0x7fffffffu
#define UB bits_float
#define UNB unbits_float
#define SB sbits_float
#define UNSB unsbits_float
#define EPS 1.1920928955078125e-07f
#define TINY FLT_MIN
#define NAME omp_float32
#define NN_NAME omp_nn_float32
#include "omp_signed.c"
#include "omp_nonnegative.c"
#undef T
#undef UT
#undef ST
#undef SMIN
#undef ABSM
#undef UB
#undef UNB
#undef SB
#undef UNSB
#undef EPS
#undef TINY
#undef NAME
#undef NN_NAME

#define T double
#define UT uint64_t
#define ST int64_t
#define SMIN INT64_MIN
#define ABSM 0x7fffffffffffffffull
#define UB bits_double
#define UNB unbits_double
#define SB sbits_double
#define UNSB unsbits_double
#define EPS 2.220446049250313e-16
#define TINY DBL_MIN
#define NAME omp_float64
#define NN_NAME omp_nn_float64
#include "omp_signed.c"
#include "omp_nonnegative.c"
