/* dot_avx2_blocks.h - AVX2 block steps shared by the row kernels (dot_avx2.c,
 * dot_avx2_k.c) and the fused granule kernels (dot_gran_avx2.c). One definition, so that
 * a granule computed by the fused kernels is bit-identical to the row kernels on that
 * granule (test_matmul_f64.c checks it). Private to kernels/cpu; include after
 * simd_avx2.h, inside #if defined(__x86_64__). */
#ifndef TPLLM_DOT_AVX2_BLOCKS_H
#define TPLLM_DOT_AVX2_BLOCKS_H

#include <string.h>

#include "simd_avx2.h"

/* ------------------------------------------------------------ 32-value block weights */

/* Bit j of the 32-bit word h as 0x10 in byte j, 0 elsewhere. */
A2I __m256i a2_bits_to_0x10(uint32_t h) {
    /* byte j takes byte j/8 of h, is or-ed with all bits but bit j%8, and compared to 0xff */
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                    _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    v = _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}


struct a2_tok32 {
    const int8_t *q;
    const float *dv, *s;
    const int32_t *sv;
};

/* The weight codes of blocks i and i+1 (B = i+1, absent when `one`) in the activation
 * pair order: lo = A[0..15] B[0..15], hi = A[16..31] B[16..31]; unsigned except Q8_0's.
 * dwv = dA x4, dB x4; mw = (mA, mB) for Q4_1/Q5_1. */
A2I void w32_pair_unpack(const enum dtype T, const void *w, int64_t i, const bool one, __m256i *lo, __m256i *hi,
                         __m256 *dwv, __m128 *mw) {
    const struct qb_pair f = qb_pair_fields(T, w, i, one);
    const uint16_t dA = f.dA, dB = f.dB, mA = f.mA, mB = f.mB;
    const uint8_t *qa = f.qa, *qb = f.qb;
    const uint32_t ha = f.ha, hb = f.hb;
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
            *lo = _mm256_or_si256(*lo, a2_bits_to_0x10((ha & 0xFFFFu) | (hb << 16)));
            *hi = _mm256_or_si256(*hi, a2_bits_to_0x10((ha >> 16) | (hb & 0xFFFF0000u)));
        }
    }
    /* both fp16 scales converted at once, then spread to dA x4, dB x4 */
    const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)dA | (uint32_t)dB << 16)));
    *dwv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1)
        *mw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)mA | (uint32_t)mB << 16)));
}

/* Blocks i, i+1 (i even) against NT tokens, into accumulators acc (and the Q4_1/Q5_1
 * min terms m_w s_a into accm). Lanes 0..3 of the sums are block A's, 4..7 block B's. */
A2I void w32_pair(const enum dtype T, const void *w, int64_t i, const bool one, const struct a2_tok32 *tk, const int NT,
                  __m256 *acc, __m128 *accm) {
    __m256i lo, hi;
    __m256 dwv;
    __m128 mw = _mm_setzero_ps();
    w32_pair_unpack(T, w, i, one, &lo, &hi, &dwv, &mw);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i alo = T == DTYPE_Q8_0 ? _mm256_sign_epi8(lo, lo) : lo;
    const __m256i ahi = T == DTYPE_Q8_0 ? _mm256_sign_epi8(hi, hi) : hi;
    for (int k = 0; k < NT; k++) {
        const __m256i yl = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i));
        const __m256i yh = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i + 32));
        __m256i p;
        if (T == DTYPE_Q8_0) { /* |w| x sign(a, w); pairs of up to 2*128*127 cannot be added in 16 bits */
            p = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(yl, lo)), ones),
                                 _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(yh, hi)), ones));
        } else {
            p = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, yl), _mm256_maddubs_epi16(hi, yh)), ones);
        }
        /* 4 lanes per block: the offset 8 (Q4_0) or 16 (Q5_0) times sum, a quarter each;
         * sv holds 2 sum, Q4_0's quarter, so that it is subtracted straight from memory */
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

/* ------------------------------------------------------------------ K-quant weights */

struct a2_tokK {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
};

/* Scale pair of chunk c (groups 2c and 2c+1 of 16 values) as s16 lanes: low 128 bits
 * group 2c, high 128 bits group 2c+1. `b` holds the 16 scale bytes in both halves;
 * signed scales sit in the high byte of each word and are shifted down arithmetically. */
A2I __m256i a2_scale_pair(__m256i b, int c, bool is_signed) {
    const char lo = (char)(2 * c), hi = (char)(2 * c + 1), z = (char)0x80;
    __m256i ctrl = is_signed ? _mm256_setr_epi8(z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, hi, z, hi, z,
                                                hi, z, hi, z, hi, z, hi, z, hi, z, hi)
                             : _mm256_setr_epi8(lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, lo, z, hi, z, hi, z,
                                                hi, z, hi, z, hi, z, hi, z, hi, z, hi, z);
    __m256i v = _mm256_shuffle_epi8(b, ctrl);
    return is_signed ? _mm256_srai_epi16(v, 8) : v;
}

/* Accumulates chunk c (values 32c..32c+31) of each token: u (unsigned codes) times the
 * token's activations, pairs summed with the scale vector sv. */
A2I void k_chunk(__m256i u, __m256i sv, int64_t i, int c, const struct a2_tokK *tk, const int NT, __m256i *iacc) {
    for (int k = 0; k < NT; k++) {
        __m256i y = _mm256_loadu_si256((const __m256i *)(tk[k].q + 256 * i + 32 * c));
        iacc[k] = _mm256_add_epi32(iacc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), sv));
    }
}

A2I void k_finish(const int NT, const struct a2_tokK *tk, int64_t i, float d, const __m256i *iacc, __m256 *acc) {
    for (int k = 0; k < NT; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * tk[k].d[i]), _mm256_cvtepi32_ps(iacc[k]), acc[k]);
}

/* The 6-bit scales and mins of a Q4_K/Q5_K super-block: bytes 0..7 scales, 8..15 mins. */
A2I __m128i a2_k4_scales(const uint8_t *s) {
    uint32_t u[4];
    qb_k4_scale_words(s, u);
    /* from registers: a 16-byte load of the four 4-byte stores would stall (no forwarding) */
    return _mm_set_epi64x((int64_t)((uint64_t)u[3] << 32 | u[2]), (int64_t)((uint64_t)u[1] << 32 | u[0]));
}

/* One Q4_K/Q5_K super-block i of every token into acc (its 4 pairs of 32-value sub-blocks
 * share 32 bytes of nibbles). */
A2I void q45k_sblock(const bool five, const void *w, int64_t i, const struct a2_tokK *tk, const int NT,
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
    const __m128i sm = a2_k4_scales(scales);
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
        k_chunk(lo, slo, i, 2 * p, tk, NT, iacc);
        k_chunk(hi, shi, i, 2 * p + 1, tk, NT, iacc);
    }
    k_finish(NT, tk, i, d, iacc, acc);
    for (int k = 0; k < NT; k++) {
        const __m128i *bp = (const __m128i *)(tk[k].bs + 16 * i);
        __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(bp), _mm_loadu_si128(bp + 1));
        const __m256i mp = _mm256_zextsi128_si256(_mm_madd_epi16(pairs, mins));
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * tk[k].d[i]), _mm256_cvtepi32_ps(mp), acc[k]);
    }
}

/* One Q6_K super-block i of every token into acc. */
A2I void q6k_sblock(const void *w, int64_t i, const struct a2_tokK *tk, const int NT, __m256 *acc) {
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
        k_chunk(u0, a2_scale_pair(sb, 4 * h + 0, true), i, 4 * h + 0, tk, NT, iacc);
        k_chunk(u1, a2_scale_pair(sb, 4 * h + 1, true), i, 4 * h + 1, tk, NT, iacc);
        k_chunk(u2, a2_scale_pair(sb, 4 * h + 2, true), i, 4 * h + 2, tk, NT, iacc);
        k_chunk(u3, a2_scale_pair(sb, 4 * h + 3, true), i, 4 * h + 3, tk, NT, iacc);
    }
    for (int k = 0; k < NT; k++) {
        __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
        iacc[k] = _mm256_sub_epi32(iacc[k], _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
    }
    k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
}

#endif
