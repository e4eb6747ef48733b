/* dot_gran_avx2.c - fused AVX2 granule kernels (dot_gran.h) for the float, 32-value
 * block and Q4_K/Q5_K/Q6_K weights: the per-granule results equal the kdot_avx2 kernels'
 * (dot_avx2.c, dot_avx2_k.c) called on each granule alone, bit for bit.
 *
 * Inside a granule each function below repeats the matching kdot_avx2 kernel step by
 * step: the same unpacking, the same accumulators fed in the same order (the 32-value
 * block kernels alternate block pairs between two accumulators from the granule's first
 * block; a trailing single block goes to the second), and the same horizontal sum at the
 * granule's end, whose float result is then added to a double. The block steps are the
 * kdot_avx2 kernels' own (dot_avx2_blocks.h); test_matmul_f64.c compares every fused
 * kernel with the per-granule loop. Software prefetches (which do not change
 * results) run along the whole row, one per weight line, so short granules stream too. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* as dot_avx2.c: no fused multiply-adds the kernels lack */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "dot_gran.h"
#include "simd_avx2.h"

#if defined(__x86_64__)

#include "dot_avx2_blocks.h"

/* Instantiates a granule kernel for each tile width (as A2_KERNEL). */
#define G2_KERNEL(name, body)                                                                             \
    static A2 void name(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, \
                        int nt, double *out) {                                                            \
        switch (nt) {                                                                                     \
        case 1: body(w, n, granule, a, t0, 1, out); break;                                                \
        case 2: body(w, n, granule, a, t0, 2, out); break;                                                \
        case 3: body(w, n, granule, a, t0, 3, out); break;                                                \
        default: body(w, n, granule, a, t0, 4, out); break;                                               \
        }                                                                                                 \
    }

/* Prefetches, KDOT_PREFETCH bytes ahead, the weight lines from *next up to `end` (each
 * line once, however short the granules) and advances *next. */
A2I void g2_prefetch_to(const char **next, const char *end) {
#if KDOT_PREFETCH
    for (; *next < end; *next += 64) _mm_prefetch(*next + KDOT_PREFETCH, _MM_HINT_T0);
#else
    (void)next, (void)end;
#endif
}

/* ------------------------------------------------------------------ float weights */

enum g2_float { G2_F32, G2_F16, G2_BF16 };

/* 8 weight or activation values of the float format widened to float. */
A2I __m256 g2_load8(const void *p, int64_t i, const enum g2_float F) {
    if (F == G2_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (F == G2_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

A2I float g2_load1(const void *p, int64_t i, const enum g2_float F) {
    if (F == G2_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return F == G2_BF16 ? qb_bf16_to_f32(h) : qb_fp16_to_f32(h);
}

/* As f32_body / h16_body of dot_avx2.c per granule. */
A2I void g2_float_body(const enum g2_float F, const void *w, int64_t n, int64_t granule, const struct kact_rows *a,
                       int64_t t0, const int NT, double *out) {
    const size_t esz = F == G2_F32 ? 4 : 2;
    const void *y[KDOT_NT];
    double sum[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        y[k] = kact_qs(a, t0 + k);
        sum[k] = 0.0;
    }
    const char *pf = w;
    for (int64_t g0 = 0; g0 < n; g0 += granule) {
        const int64_t g1 = TP_MIN(n, g0 + granule);
        __m256 acc0[KDOT_NT], acc1[KDOT_NT];
        float tail[KDOT_NT];
        for (int k = 0; k < NT; k++) {
            acc0[k] = acc1[k] = _mm256_setzero_ps();
            tail[k] = 0.0f;
        }
        g2_prefetch_to(&pf, (const char *)w + (size_t)g1 * esz);
        int64_t i = g0;
        for (; i + 16 <= g1; i += 16) {
            __m256 w0 = g2_load8(w, i, F), w1 = g2_load8(w, i + 8, F);
            for (int k = 0; k < NT; k++) {
                acc0[k] = _mm256_fmadd_ps(w0, g2_load8(y[k], i, F), acc0[k]);
                acc1[k] = _mm256_fmadd_ps(w1, g2_load8(y[k], i + 8, F), acc1[k]);
            }
        }
        for (; i < g1; i++)
            for (int k = 0; k < NT; k++) tail[k] += g2_load1(w, i, F) * g2_load1(y[k], i, F);
        for (int k = 0; k < NT; k++) sum[k] += (double)(a2_hsum(_mm256_add_ps(acc0[k], acc1[k])) + tail[k]);
    }
    for (int k = 0; k < NT; k++) out[k] = sum[k];
}

#define G2_FLOAT(F, name)                                                                                   \
    A2I void name##_gbody(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, \
                          const int NT, double *out) {                                                      \
        g2_float_body(F, w, n, granule, a, t0, NT, out);                                                    \
    }                                                                                                       \
    G2_KERNEL(g2_gran_##name, name##_gbody)
G2_FLOAT(G2_F32, f32)
G2_FLOAT(G2_F16, f16)
G2_FLOAT(G2_BF16, bf16)

/* ------------------------------------------------------------ 32-value block weights */

/* As w32_body of dot_avx2.c per granule of blocks [b0, b1); block indices are the row's
 * (a granule starts at an even block, so the activation pairs line up as in a view). */
A2I void g2_w32_body(const enum dtype T, const void *w, int64_t n, int64_t granule, const struct kact_rows *a,
                     int64_t t0, const int NT, double *out) {
    struct a2_tok32 tk[KDOT_NT];
    double sum[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a2_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_s(a, t0 + k), kact_sv(a, t0 + k)};
        sum[k] = 0.0;
    }
    const int64_t nb = n / 32, gb = granule / 32;
    const size_t bsz = T == DTYPE_Q4_0 ? 18 : T == DTYPE_Q4_1 ? 20 : T == DTYPE_Q5_0 ? 22 : T == DTYPE_Q5_1 ? 24 : 34;
    const char *pf = w;
    for (int64_t b0 = 0; b0 < nb; b0 += gb) {
        const int64_t b1 = TP_MIN(nb, b0 + gb);
        __m256 acc0[KDOT_NT], acc1[KDOT_NT];
        __m128 accm[KDOT_NT];
        for (int k = 0; k < NT; k++) {
            acc0[k] = acc1[k] = _mm256_setzero_ps();
            accm[k] = _mm_setzero_ps();
        }
        g2_prefetch_to(&pf, (const char *)w + (size_t)b1 * bsz);
        int64_t i = b0;
        for (; i + 4 <= b1; i += 4) {
            w32_pair(T, w, i, false, tk, NT, acc0, accm);
            w32_pair(T, w, i + 2, false, tk, NT, acc1, accm);
        }
        if (i + 2 <= b1) {
            w32_pair(T, w, i, false, tk, NT, acc0, accm);
            i += 2;
        }
        if (i < b1) w32_pair(T, w, i, true, tk, NT, acc1, accm);
        for (int k = 0; k < NT; k++) {
            float m = 0.0f;
            if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) m = _mm_cvtss_f32(_mm_add_ss(accm[k], _mm_movehdup_ps(accm[k])));
            sum[k] += (double)(a2_hsum(_mm256_add_ps(acc0[k], acc1[k])) + m);
        }
    }
    for (int k = 0; k < NT; k++) out[k] = sum[k];
}

#define G2_W32(T, name)                                                                                     \
    A2I void name##_gbody(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, \
                          const int NT, double *out) {                                                      \
        g2_w32_body(T, w, n, granule, a, t0, NT, out);                                                      \
    }                                                                                                       \
    G2_KERNEL(g2_gran_##name, name##_gbody)
G2_W32(DTYPE_Q4_0, q4_0)
G2_W32(DTYPE_Q4_1, q4_1)
G2_W32(DTYPE_Q5_0, q5_0)
G2_W32(DTYPE_Q5_1, q5_1)
G2_W32(DTYPE_Q8_0, q8_0)

/* ------------------------------------------------------------------ K-quant weights */

enum g2_ktype { G2_Q4_K, G2_Q5_K, G2_Q6_K };

/* Granules of whole super-blocks [s0, s1), each summed from zero and reduced by a2_hsum
 * as the kdot_avx2 K kernels reduce a row. */
A2I void g2_k_body(const enum g2_ktype K, const void *w, int64_t n, int64_t granule, const struct kact_rows *a,
                   int64_t t0, const int NT, double *out) {
    struct a2_tokK tk[KDOT_NT];
    double sum[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a2_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        sum[k] = 0.0;
    }
    const int64_t ns = n / 256, gs = granule / 256;
    const size_t bsz = K == G2_Q4_K ? 144 : K == G2_Q5_K ? 176 : 210;
    for (int64_t s0 = 0; s0 < ns; s0 += gs) {
        const int64_t s1 = TP_MIN(ns, s0 + gs);
        __m256 acc[KDOT_NT];
        for (int k = 0; k < NT; k++) acc[k] = _mm256_setzero_ps();
        for (int64_t i = s0; i < s1; i++) {
            a2_prefetch((const char *)w + (size_t)i * bsz, bsz);
            if (K == G2_Q6_K) q6k_sblock(w, i, tk, NT, acc);
            else q45k_sblock(K == G2_Q5_K, w, i, tk, NT, acc);
        }
        for (int k = 0; k < NT; k++) sum[k] += (double)a2_hsum(acc[k]);
    }
    for (int k = 0; k < NT; k++) out[k] = sum[k];
}

#define G2_K(K, name)                                                                                       \
    A2I void name##_gbody(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, \
                          const int NT, double *out) {                                                      \
        g2_k_body(K, w, n, granule, a, t0, NT, out);                                                        \
    }                                                                                                       \
    G2_KERNEL(g2_gran_##name, name##_gbody)
G2_K(G2_Q4_K, q4_K)
G2_K(G2_Q5_K, q5_K)
G2_K(G2_Q6_K, q6_K)

kdot_gran_fn kdot_gran_avx2(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return g2_gran_f32;
    case DTYPE_F16: return g2_gran_f16;
    case DTYPE_BF16: return g2_gran_bf16;
    case DTYPE_Q4_0: return g2_gran_q4_0;
    case DTYPE_Q4_1: return g2_gran_q4_1;
    case DTYPE_Q5_0: return g2_gran_q5_0;
    case DTYPE_Q5_1: return g2_gran_q5_1;
    case DTYPE_Q8_0: return g2_gran_q8_0;
    case DTYPE_Q4_K: return g2_gran_q4_K;
    case DTYPE_Q5_K: return g2_gran_q5_K;
    case DTYPE_Q6_K: return g2_gran_q6_K;
    default: return NULL;
    }
}

#else /* not x86-64 */

kdot_gran_fn kdot_gran_avx2(enum dtype t) {
    (void)t;
    return NULL;
}

#endif
