/* dot_gran_avx2.c - fused AVX2 granule kernels (dot_gran.h) for the float, 32-value
 * block and Q4_K/Q5_K/Q6_K weights: the per-granule results equal the kdot_avx2 kernels'
 * (dot_avx2.c, dot_avx2_k.c) called on each granule alone, bit for bit.
 *
 * Inside a granule each function below repeats the matching kdot_avx2 kernel step by
 * step: the same unpacking, the same accumulators fed in the same order (the 32-value
 * block kernels alternate block pairs between two accumulators from the granule's first
 * block; a trailing single block goes to the second), and the same horizontal sum at the
 * granule's end (for several tokens side by side, each lane's additions in a2_hsum's
 * order: g2_hsum4), whose float result is then added to a double. The block steps are the
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
        sum[k] = out[k];
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

/* The floats a2_hsum(v[k]) + (m[0] + m[1] of accm[k], Q4_1/Q5_1) of NT = 2..4 tokens
 * (token k in lane k): the horizontal sums of the tokens done side by side, each lane's
 * additions in a2_hsum's order, so each float is bit-identical to a2_hsum's:
 * ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)). Lanes past NT hold 0. */
A2I __m128 g2_hsum4(const enum dtype T, const __m256 *v, const __m128 *accm, const int NT) {
    const __m256 z = _mm256_setzero_ps();
    const __m256 v0 = v[0], v1 = NT > 1 ? v[1] : z, v2 = NT > 2 ? v[2] : z, v3 = NT > 3 ? v[3] : z;
    /* s01 = (v0 lo + v0 hi | v1 lo + v1 hi), s23 likewise */
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20), _mm256_permute2f128_ps(v2, v3, 0x31));
    /* per half: (s0 + s2, s'0 + s'2, s1 + s3, s'1 + s'3), s of token 0 | 1 and s' of 2 | 3 */
    const __m256 h = _mm256_add_ps(_mm256_unpacklo_ps(s01, s23), _mm256_unpackhi_ps(s01, s23));
    const __m256 f = _mm256_add_ps(h, _mm256_shuffle_ps(h, h, _MM_SHUFFLE(3, 2, 3, 2)));
    /* tokens 0, 1, 2, 3 sit in lanes 0, 4, 1, 5 */
    __m128 r = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)));
    if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) {
        const __m128 zm = _mm_setzero_ps();
        const __m128 p01 = _mm_unpacklo_ps(accm[0], NT > 1 ? accm[1] : zm);
        const __m128 p23 = _mm_unpacklo_ps(NT > 2 ? accm[2] : zm, NT > 3 ? accm[3] : zm);
        r = _mm_add_ps(r, _mm_add_ps(_mm_movelh_ps(p01, p23), _mm_movehl_ps(p23, p01)));
    }
    return r;
}

/* The lane sums of one granule, blocks [b0, b1), as w32_body of dot_avx2.c computes a
 * row: block pairs alternate between two accumulators (a trailing single block goes to
 * the second), which are then added; v[k] and (Q4_1/Q5_1) m[k] for each token. Block
 * indices are the row's (a granule starts at an even block, so the activation pairs line
 * up as in a view). */
A2I void g2_w32_granule(const enum dtype T, const void *w, int64_t b0, int64_t b1, const struct a2_tok32 *tk,
                        const int NT, __m256 *v, __m128 *m) {
    __m256 acc0[KDOT_NT], acc1[KDOT_NT];
    __m128 accm[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        accm[k] = _mm_setzero_ps();
    }
    int64_t i = b0;
    /* whole granules have a constant block count (g2_w32_body): unrolled, an FFN granule of
     * 8 blocks is straight-line code (GCC does not peel a body this long by itself; batched
     * ffn_down Q4_0 / Q8_0 measured about 5% faster, one token unchanged) */
#pragma GCC unroll 4
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
        v[k] = _mm256_add_ps(acc0[k], acc1[k]);
        if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) m[k] = accm[k];
    }
}

enum { G2_GROUP = 8 };

/* Adds the float sums of ng buffered granules to the double sums, granule by granule in
 * order. One token: four granules' horizontal sums side by side (g2_hsum4 with granules
 * in place of tokens), then added one at a time to sum1; more tokens: the tokens side by
 * side, one granule after the other, into sumv. */
A2I void g2_w32_flush(const enum dtype T, __m256 (*gv)[KDOT_NT], __m128 (*gm)[KDOT_NT], int ng, const int NT,
                      double *sum1, __m256d *sumv) {
    if (NT == 1) {
        for (int g = 0; g < ng; g += 4) {
            const int c = TP_MIN(4, ng - g);
            __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            __m128 m[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
            for (int q = 0; q < c; q++) {
                v[q] = gv[g + q][0];
                m[q] = (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) ? gm[g + q][0] : _mm_setzero_ps();
            }
            double d[4];
            _mm256_storeu_pd(d, _mm256_cvtps_pd(g2_hsum4(T, v, m, c)));
            for (int q = 0; q < c; q++) *sum1 += d[q];
        }
        return;
    }
    for (int g = 0; g < ng; g++) *sumv = _mm256_add_pd(*sumv, _mm256_cvtps_pd(g2_hsum4(T, gv[g], gm[g], NT)));
}

/* A row in granules of GB blocks, added to out[]. The lane sums of a group of granules
 * wait in gv (and gm) and are reduced after the group: a granule's horizontal sums are a
 * long dependency chain, and a short granule (one block pair for attn_output) has too
 * little other work to hide it behind, so the block steps of the next granules go first.
 * GB is a compile-time constant for the common granules, so the loop over whole granules
 * has a fixed shape (unrolled block steps, no per-granule bounds); the last, partial
 * granule of a row that is not a multiple of the granule follows it. */
A2I void g2_w32_body(const enum dtype T, const void *w, int64_t n, const int64_t GB, const struct kact_rows *a,
                     int64_t t0, const int NT, double *out) {
    struct a2_tok32 tk[KDOT_NT];
    for (int k = 0; k < NT; k++)
        tk[k] = (struct a2_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_s(a, t0 + k), kact_sv(a, t0 + k)};
    /* one token: a scalar double; more: the tokens' doubles side by side */
    double sum1 = out[0];
    __m256d sumv = _mm256_setzero_pd();
    if (NT > 1) {
        double o[4] = {0};
        for (int k = 0; k < NT; k++) o[k] = out[k];
        sumv = _mm256_loadu_pd(o);
    }
    const int64_t nb = n / 32;
    const size_t bsz = T == DTYPE_Q4_0 ? 18 : T == DTYPE_Q4_1 ? 20 : T == DTYPE_Q5_0 ? 22 : T == DTYPE_Q5_1 ? 24 : 34;
    const char *pf = w;
    __m256 gv[G2_GROUP][KDOT_NT];
    __m128 gm[G2_GROUP][KDOT_NT];
    int ng = 0;
    int64_t b0 = 0;
    for (; b0 + GB <= nb; b0 += GB) {
        g2_prefetch_to(&pf, (const char *)w + (size_t)(b0 + GB) * bsz);
        g2_w32_granule(T, w, b0, b0 + GB, tk, NT, gv[ng], gm[ng]);
        if (NT == 1 && GB <= 2) { /* one token, one block pair: straight into the double sum (measured faster) */
            float f = a2_hsum(gv[0][0]);
            if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) f += _mm_cvtss_f32(_mm_add_ss(gm[0][0], _mm_movehdup_ps(gm[0][0])));
            sum1 += (double)f;
            continue;
        }
        if (++ng == G2_GROUP) {
            g2_w32_flush(T, gv, gm, ng, NT, &sum1, &sumv);
            ng = 0;
        }
    }
    if (b0 < nb) {
        g2_prefetch_to(&pf, (const char *)w + (size_t)nb * bsz);
        g2_w32_granule(T, w, b0, nb, tk, NT, gv[ng], gm[ng]);
        ng++;
    }
    g2_w32_flush(T, gv, gm, ng, NT, &sum1, &sumv);
    if (NT == 1) {
        out[0] = sum1;
    } else {
        double o[4];
        _mm256_storeu_pd(o, sumv);
        for (int k = 0; k < NT; k++) out[k] = o[k];
    }
}

/* The common granules (a head of 64 values, an FFN chunk of 256; parallel/shard.c) are
 * instantiated with a constant block count. */
#define G2_W32(T, name)                                                                                     \
    A2I void name##_gbody(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, \
                          const int NT, double *out) {                                                      \
        if (granule == 64) g2_w32_body(T, w, n, 2, a, t0, NT, out);                                         \
        else if (granule == 256) g2_w32_body(T, w, n, 8, a, t0, NT, out);                                   \
        else g2_w32_body(T, w, n, granule / 32, a, t0, NT, out);                                            \
    }                                                                                                       \
    G2_KERNEL(g2_gran_##name, name##_gbody)
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
        sum[k] = out[k];
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
    case DTYPE_Q4_0: return NULL; /* row-sequential: the per-granule loop, or q4_0x8.c's group kernel */
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
