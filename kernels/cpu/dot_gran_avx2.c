/* dot_gran_avx2.c - fused AVX2 granule kernels (dot_gran.h) for the float, 32-value
 * block and Q4_K/Q5_K/Q6_K weights: the per-granule results equal the kdot_avx2 kernels'
 * (dot_avx2.c, dot_avx2_k.c) called on each granule alone, bit for bit.
 *
 * Inside a granule each function below repeats the matching kdot_avx2 kernel step by
 * step: the same unpacking, the same accumulators fed in the same order (the 32-value
 * block kernels alternate block pairs between two accumulators from the granule's first
 * block; a trailing single block goes to the second), and the same horizontal sum at the
 * granule's end, whose float result is then added to a double. The block steps are
 * copies of the kdot_avx2 ones and must change with them; test_matmul_f64.c compares
 * every fused kernel with the per-granule loop. Software prefetches (which do not change
 * results) run along the whole row, one per weight line, so short granules stream too. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* as dot_avx2.c: no fused multiply-adds the kernels lack */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "dot_gran.h"
#include "simd_avx2.h"

#if defined(__x86_64__)

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

/* Bit j of the 32-bit word h as 0x10 in byte j, 0 elsewhere (as dot_avx2.c). */
A2I __m256i g2_bits_to_0x10(uint32_t h) {
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                    _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    v = _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

A2I uint32_t g2_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

struct g2_tok32 {
    const int8_t *q;
    const float *dv, *s;
    const int32_t *sv;
};

/* w32_pair_unpack of dot_avx2.c: the codes of blocks i, i+1 in activation pair order. */
A2I void g2_pair_unpack(const enum dtype T, const void *w, int64_t i, const bool one, __m256i *lo, __m256i *hi,
                        __m256 *dwv, __m128 *mw) {
    uint16_t dA, dB = 0, mA = 0, mB = 0;
    const uint8_t *qa, *qb = NULL;
    uint32_t ha = 0, hb = 0;
    switch (T) {
    case DTYPE_Q4_0: {
        const blk_q4_0 *x = (const blk_q4_0 *)w + i;
        dA = x[0].d, qa = x[0].qs;
        if (!one) dB = x[1].d, qb = x[1].qs;
        break;
    }
    case DTYPE_Q4_1: {
        const blk_q4_1 *x = (const blk_q4_1 *)w + i;
        dA = x[0].d, mA = x[0].m, qa = x[0].qs;
        if (!one) dB = x[1].d, mB = x[1].m, qb = x[1].qs;
        break;
    }
    case DTYPE_Q5_0: {
        const blk_q5_0 *x = (const blk_q5_0 *)w + i;
        dA = x[0].d, qa = x[0].qs, ha = g2_u32(x[0].qh);
        if (!one) dB = x[1].d, qb = x[1].qs, hb = g2_u32(x[1].qh);
        break;
    }
    case DTYPE_Q5_1: {
        const blk_q5_1 *x = (const blk_q5_1 *)w + i;
        dA = x[0].d, mA = x[0].m, qa = x[0].qs, ha = g2_u32(x[0].qh);
        if (!one) dB = x[1].d, mB = x[1].m, qb = x[1].qs, hb = g2_u32(x[1].qh);
        break;
    }
    default: {
        const blk_q8_0 *x = (const blk_q8_0 *)w + i;
        dA = x[0].d, qa = (const uint8_t *)x[0].qs;
        if (!one) dB = x[1].d, qb = (const uint8_t *)x[1].qs;
        break;
    }
    }
    const __m128i z = _mm_setzero_si128();
    if (T == DTYPE_Q8_0) {
        *lo = _mm256_set_m128i(one ? z : _mm_loadu_si128((const __m128i *)qb), _mm_loadu_si128((const __m128i *)qa));
        *hi = _mm256_set_m128i(one ? z : _mm_loadu_si128((const __m128i *)(qb + 16)),
                               _mm_loadu_si128((const __m128i *)(qa + 16)));
    } else {
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        __m256i v = _mm256_set_m128i(one ? z : _mm_loadu_si128((const __m128i *)qb),
                                     _mm_loadu_si128((const __m128i *)qa));
        *lo = _mm256_and_si256(v, m4);
        *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (T == DTYPE_Q5_0 || T == DTYPE_Q5_1) {
            *lo = _mm256_or_si256(*lo, g2_bits_to_0x10((ha & 0xFFFFu) | (hb << 16)));
            *hi = _mm256_or_si256(*hi, g2_bits_to_0x10((ha >> 16) | (hb & 0xFFFF0000u)));
        }
    }
    const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)dA | (uint32_t)dB << 16)));
    *dwv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1)
        *mw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)mA | (uint32_t)mB << 16)));
}

/* w32_pair of dot_avx2.c: blocks i, i+1 (i even) into acc (and the min terms into accm). */
A2I void g2_pair(const enum dtype T, const void *w, int64_t i, const bool one, const struct g2_tok32 *tk, const int NT,
                 __m256 *acc, __m128 *accm) {
    __m256i lo, hi;
    __m256 dwv;
    __m128 mw = _mm_setzero_ps();
    g2_pair_unpack(T, w, i, one, &lo, &hi, &dwv, &mw);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i alo = T == DTYPE_Q8_0 ? _mm256_sign_epi8(lo, lo) : lo;
    const __m256i ahi = T == DTYPE_Q8_0 ? _mm256_sign_epi8(hi, hi) : hi;
    for (int k = 0; k < NT; k++) {
        const __m256i yl = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i));
        const __m256i yh = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i + 32));
        __m256i p;
        if (T == DTYPE_Q8_0) {
            p = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(yl, lo)), ones),
                                 _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(yh, hi)), ones));
        } else {
            p = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, yl), _mm256_maddubs_epi16(hi, yh)), ones);
        }
        const __m256i sv = _mm256_loadu_si256((const __m256i *)(tk[k].sv + 4 * i));
        if (T == DTYPE_Q4_0) p = _mm256_sub_epi32(p, sv);
        if (T == DTYPE_Q5_0) p = _mm256_sub_epi32(p, _mm256_slli_epi32(sv, 1));
        const __m256 sc = _mm256_mul_ps(dwv, _mm256_loadu_ps(tk[k].dv + 4 * i));
        acc[k] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[k]);
        if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) {
            const __m128 s2 = one ? _mm_load_ss(tk[k].s + i)
                                  : _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(tk[k].s + i)));
            accm[k] = _mm_fmadd_ps(mw, s2, accm[k]);
        }
    }
}

/* As w32_body of dot_avx2.c per granule of blocks [b0, b1); block indices are the row's
 * (a granule starts at an even block, so the activation pairs line up as in a view). */
A2I void g2_w32_body(const enum dtype T, const void *w, int64_t n, int64_t granule, const struct kact_rows *a,
                     int64_t t0, const int NT, double *out) {
    struct g2_tok32 tk[KDOT_NT];
    double sum[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct g2_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_s(a, t0 + k), kact_sv(a, t0 + k)};
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
            g2_pair(T, w, i, false, tk, NT, acc0, accm);
            g2_pair(T, w, i + 2, false, tk, NT, acc1, accm);
        }
        if (i + 2 <= b1) {
            g2_pair(T, w, i, false, tk, NT, acc0, accm);
            i += 2;
        }
        if (i < b1) g2_pair(T, w, i, true, tk, NT, acc1, accm);
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

struct g2_tokK {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
};

/* k_chunk of dot_avx2_k.c: chunk c of super-block i times each token's activations. */
A2I void g2_k_chunk(__m256i u, __m256i sv, int64_t i, int c, const struct g2_tokK *tk, const int NT, __m256i *iacc) {
    for (int k = 0; k < NT; k++) {
        __m256i y = _mm256_loadu_si256((const __m256i *)(tk[k].q + 256 * i + 32 * c));
        iacc[k] = _mm256_add_epi32(iacc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), sv));
    }
}

A2I void g2_k_finish(const int NT, const struct g2_tokK *tk, int64_t i, float d, const __m256i *iacc, __m256 *acc) {
    for (int k = 0; k < NT; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * tk[k].d[i]), _mm256_cvtepi32_ps(iacc[k]), acc[k]);
}

/* a2_k4_scales of dot_avx2_k.c: Q4_K/Q5_K scales in bytes 0..7, mins in 8..15. */
A2I __m128i g2_k4_scales(const uint8_t *s) {
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
    const uint32_t mins03 = u[1] & m6;
    u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
    u[2] = mins03;
    u[0] &= m6;
    return _mm_set_epi64x((int64_t)((uint64_t)u[3] << 32 | u[2]), (int64_t)((uint64_t)u[1] << 32 | u[0]));
}

/* One Q4_K/Q5_K super-block i into acc, as q45k_body of dot_avx2_k.c. */
A2I void g2_q45k_sblock(const bool five, const void *w, int64_t i, const struct g2_tokK *tk, const int NT,
                        __m256 *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m10 = _mm256_set1_epi8(0x10);
    const uint8_t *scales, *qs, *qh = NULL;
    float d, dmin;
    if (five) {
        const blk_q5_K *x = (const blk_q5_K *)w + i;
        scales = x->scales, qs = x->qs, qh = x->qh, d = a2_h2f(x->d), dmin = a2_h2f(x->dmin);
    } else {
        const blk_q4_K *x = (const blk_q4_K *)w + i;
        scales = x->scales, qs = x->qs, d = a2_h2f(x->d), dmin = a2_h2f(x->dmin);
    }
    const __m128i sm = g2_k4_scales(scales);
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
    __m256i iacc[KDOT_NT];
    for (int k = 0; k < NT; k++) iacc[k] = _mm256_setzero_si256();
    __m256i hbits = five ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    for (int p = 0; p < 4; p++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (five) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hbits, 4), m10));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hbits, 3), m10));
            hbits = _mm256_srli_epi16(hbits, 2);
        }
        const __m256i slo = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)((4 * p + 1) << 8 | 4 * p)));
        const __m256i shi = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)((4 * p + 3) << 8 | (4 * p + 2))));
        g2_k_chunk(lo, slo, i, 2 * p, tk, NT, iacc);
        g2_k_chunk(hi, shi, i, 2 * p + 1, tk, NT, iacc);
    }
    g2_k_finish(NT, tk, i, d, iacc, acc);
    for (int k = 0; k < NT; k++) {
        const __m128i *bp = (const __m128i *)(tk[k].bs + 16 * i);
        __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(bp), _mm_loadu_si128(bp + 1));
        const __m256i mp = _mm256_zextsi128_si256(_mm_madd_epi16(pairs, mins));
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * tk[k].d[i]), _mm256_cvtepi32_ps(mp), acc[k]);
    }
}

/* a2_scale_pair of dot_avx2_k.c for signed scales: scale pair of chunk c as s16 lanes. */
A2I __m256i g2_scale_pair_s(__m256i b, int c) {
    const char lo = (char)(2 * c), hi = (char)(2 * c + 1), z = (char)0x80;
    __m256i ctrl = _mm256_setr_epi8(z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, hi, z, hi, z, hi, z,
                                    hi, z, hi, z, hi, z, hi, z, hi);
    return _mm256_srai_epi16(_mm256_shuffle_epi8(b, ctrl), 8);
}

/* One Q6_K super-block i into acc, as q6k_body of dot_avx2_k.c. */
A2I void g2_q6k_sblock(const void *w, int64_t i, const struct g2_tokK *tk, const int NT, __m256 *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const blk_q6_K *x = (const blk_q6_K *)w + i;
    const __m128i s8 = _mm_loadu_si128((const __m128i *)x->scales);
    const __m256i sb = _mm256_broadcastsi128_si256(s8), sc16 = _mm256_cvtepi8_epi16(s8);
    __m256i iacc[KDOT_NT];
    for (int k = 0; k < NT; k++) iacc[k] = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
        __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
        __m256i u0 = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        __m256i u1 = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        __m256i u2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
        __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                     _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        g2_k_chunk(u0, g2_scale_pair_s(sb, 4 * h + 0), i, 4 * h + 0, tk, NT, iacc);
        g2_k_chunk(u1, g2_scale_pair_s(sb, 4 * h + 1), i, 4 * h + 1, tk, NT, iacc);
        g2_k_chunk(u2, g2_scale_pair_s(sb, 4 * h + 2), i, 4 * h + 2, tk, NT, iacc);
        g2_k_chunk(u3, g2_scale_pair_s(sb, 4 * h + 3), i, 4 * h + 3, tk, NT, iacc);
    }
    for (int k = 0; k < NT; k++) {
        __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
        iacc[k] = _mm256_sub_epi32(iacc[k], _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
    }
    g2_k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
}

enum g2_ktype { G2_Q4_K, G2_Q5_K, G2_Q6_K };

/* Granules of whole super-blocks [s0, s1), each summed from zero and reduced by a2_hsum
 * as the kdot_avx2 K kernels reduce a row. */
A2I void g2_k_body(const enum g2_ktype K, const void *w, int64_t n, int64_t granule, const struct kact_rows *a,
                   int64_t t0, const int NT, double *out) {
    struct g2_tokK tk[KDOT_NT];
    double sum[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct g2_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
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
            if (K == G2_Q6_K) g2_q6k_sblock(w, i, tk, NT, acc);
            else g2_q45k_sblock(K == G2_Q5_K, w, i, tk, NT, acc);
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
