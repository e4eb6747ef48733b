/* dot_avx2.c - AVX2 + FMA + F16C matmul kernels: activation quantization and the block
 * dot products of every weight type (same integer sums as dot_scalar.c).
 *
 * Each kernel takes one weight row and up to KDOT_NT tokens: a weight block (for the
 * 32-value types a pair of blocks, matching the interleaved activation rows of
 * simd_dot.h) is loaded and unpacked to unsigned bytes once, then multiplied with each
 * token's int8 activations by vpmaddubsw (u8 x s8 -> pairs of s16) and vpmaddwd (-> s32,
 * times a sub-block scale or 1). Offsets of the unsigned codes are taken out with the activation block sums:
 *   Q4_0: sum (q - 8) a = sum q a - 8 sum a      Q5_0: ... - 16 sum a
 *   Q3_K: sum_g sc_g sum (u - 4) a = sum_g sc_g sum u a - 4 sum_g sc_g bsum_g  (Q6_K: 32)
 * Q8_0 uses the sign trick (|w| x sign(a, w)). Integer lane sums are converted to float
 * once per block pair (legacy) or super-block (K) and accumulated with FMA; the 32-value
 * block types alternate two accumulators per token so that consecutive FMAs do not wait
 * on each other. Compiled per function for avx2,fma,f16c: the library itself needs no -m
 * flags and matmul.c only calls these after checking the CPU. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* activation rounding must equal dot_scalar.c's */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "simd_blocks.h"
#include "simd_dot.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Weights are read this many bytes ahead with software prefetches: for one token the
 * kernels stream weights from memory, and the hardware prefetcher alone leaves part of
 * the bandwidth unused (measured on Zen 3; 0 disables). */
#ifndef KDOT_PREFETCH
#define KDOT_PREFETCH 1024
#endif
#define A2 __attribute__((target("avx2,fma,f16c")))
#define A2I static inline __attribute__((always_inline, target("avx2,fma,f16c")))

A2I float a2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

A2I int32_t a2_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

A2I int32_t a2_hsum_i32_128(__m128i s) {
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

A2I float a2_h2f(uint16_t h) { return _cvtsh_ss(h); }

/* Prefetches the lines KDOT_PREFETCH bytes past [p, p + bytes). */
A2I void a2_prefetch(const char *p, size_t bytes) {
#if KDOT_PREFETCH
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(p + KDOT_PREFETCH + o, _MM_HINT_T0);
#else
    (void)p, (void)bytes;
#endif
}

/* ------------------------------------------------------------ activation quantization */

/* Packs 4 x 8 int32 (each within int8 range) into 32 int8 in order. */
A2I __m256i a2_pack_i32x32(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* roundf(v) (halves away from zero) for |v| < 2^23, as int32. */
A2I __m256i a2_round_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_andnot_ps(sign, v);
    __m256 f = _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m256 up = _mm256_cmp_ps(_mm256_sub_ps(a, f), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    f = _mm256_add_ps(f, _mm256_and_ps(up, _mm256_set1_ps(1.0f)));
    return _mm256_cvttps_epi32(_mm256_or_ps(f, _mm256_and_ps(v, sign)));
}

static A2 void a2_act_q8_32(const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    float *dd = (float *)(row + lay->off_d), *ss = (float *)(row + lay->off_s), *dv = (float *)(row + lay->off_dv);
    int32_t *sums = (int32_t *)(row + lay->off_sum), *sv = (int32_t *)(row + lay->off_sv);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float d = _mm_cvtss_f32(h) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = a2_round_away(_mm256_mul_ps(v[k], vid));
        const __m256i packed = a2_pack_i32x32(q[0], q[1], q[2], q[3]);
        uint8_t *dst = row + kact_pos32(b, 0);
        _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(packed));
        _mm_storeu_si128((__m128i *)(dst + 32), _mm256_extracti128_si256(packed, 1));
        const int sum = a2_hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        dd[b] = qb_fp16_to_f32(qb_f32_to_fp16(d));
        sums[b] = sum;
        ss[b] = qb_fp16_to_f32(qb_f32_to_fp16((float)sum * d));
        _mm_storeu_ps(dv + 8 * (b / 2) + 4 * (b & 1), _mm_set1_ps(dd[b]));
        _mm_storeu_si128((__m128i *)(sv + 8 * (b / 2) + 4 * (b & 1)), _mm_set1_epi32(sum));
    }
    if (nb & 1) { /* the missing partner of the last block */
        uint8_t *dst = row + kact_pos32(nb, 0);
        _mm_storeu_si128((__m128i *)dst, _mm_setzero_si128());
        _mm_storeu_si128((__m128i *)(dst + 32), _mm_setzero_si128());
        _mm_storeu_ps(dv + 8 * (nb / 2) + 4, _mm_setzero_ps());
        _mm_storeu_si128((__m128i *)(sv + 8 * (nb / 2) + 4), _mm_setzero_si128());
    }
}

static A2 void a2_act_q8_K(const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    float *dd = (float *)(row + lay->off_d);
    int16_t *bsums = (int16_t *)(row + lay->off_sum);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        int8_t *qs = (int8_t *)row + 256 * b;
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * k)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        if (amax == 0.0f) {
            memset(qs, 0, 256);
            memset(bsums + 16 * b, 0, 16 * sizeof *bsums);
            dd[b] = 0.0f;
            continue;
        }
        /* the first value of largest magnitude keeps its sign, as the scalar search */
        const __m256 vamax = _mm256_set1_ps(amax);
        float max = amax;
        for (int k = 0; k < 32; k++) {
            __m256 xv = _mm256_loadu_ps(xb + 8 * k);
            int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, xv), vamax, _CMP_EQ_OQ));
            if (hit) {
                max = xb[8 * k + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vis = _mm256_set1_ps(iscale);
        const __m256i q127 = _mm256_set1_epi32(127);
        for (int g = 0; g < 8; g++) { /* 32 values: two bsums groups */
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(q127, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * g + 8 * k), vis)));
            _mm256_storeu_si256((__m256i *)(qs + 32 * g), a2_pack_i32x32(q[0], q[1], q[2], q[3]));
            bsums[16 * b + 2 * g] = (int16_t)a2_hsum_i32(_mm256_add_epi32(q[0], q[1]));
            bsums[16 * b + 2 * g + 1] = (int16_t)a2_hsum_i32(_mm256_add_epi32(q[2], q[3]));
        }
        dd[b] = 1 / iscale;
    }
}

static A2 void a2_act_f16(const float *x, int64_t n, uint16_t *h) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = qb_f32_to_fp16(x[i]);
}

void kact_quantize_avx2(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    switch (f) {
    case KACT_Q8_32: a2_act_q8_32(x, n, row, lay); break;
    case KACT_Q8_K: a2_act_q8_K(x, n, row, lay); break;
    case KACT_F16: a2_act_f16(x, n, (uint16_t *)row); break;
    default: kact_quantize_scalar(f, x, n, row, lay); break;
    }
}

/* Kernel entry points: `body` is instantiated for each tile width so that the per-token
 * accumulators live in registers. */
#define A2_KERNEL(name, body)                                                                                \
    static A2 void name(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) { \
        switch (nt) {                                                                                        \
        case 1: body(w, n, a, t0, 1, out); break;                                                            \
        case 2: body(w, n, a, t0, 2, out); break;                                                            \
        case 3: body(w, n, a, t0, 3, out); break;                                                            \
        default: body(w, n, a, t0, 4, out); break;                                                           \
        }                                                                                                    \
    }

/* ------------------------------------------------------------------ float weights */

A2I void f32_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    const float *x = w;
    const float *y[KDOT_NT];
    __m256 acc0[KDOT_NT], acc1[KDOT_NT];
    float tail[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        y[k] = (const float *)kact_qs(a, t0 + k);
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        tail[k] = 0.0f;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a2_prefetch((const char *)(x + i), 64);
        __m256 w0 = _mm256_loadu_ps(x + i), w1 = _mm256_loadu_ps(x + i + 8);
        for (int k = 0; k < NT; k++) {
            acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(y[k] + i), acc0[k]);
            acc1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(y[k] + i + 8), acc1[k]);
        }
    }
    for (; i < n; i++)
        for (int k = 0; k < NT; k++) tail[k] += x[i] * y[k][i];
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(_mm256_add_ps(acc0[k], acc1[k])) + tail[k];
}
A2_KERNEL(a2_dot_f32, f32_body)

/* 8 F16 or BF16 values widened to float. */
A2I __m256 a2_load_h8(const uint16_t *p, bool bf16) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

A2I void h16_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out,
                  bool bf16) {
    const uint16_t *x = w;
    const uint16_t *y[KDOT_NT];
    __m256 acc0[KDOT_NT], acc1[KDOT_NT];
    float tail[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        y[k] = (const uint16_t *)kact_qs(a, t0 + k);
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        tail[k] = 0.0f;
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a2_prefetch((const char *)(x + i), 32);
        __m256 w0 = a2_load_h8(x + i, bf16), w1 = a2_load_h8(x + i + 8, bf16);
        for (int k = 0; k < NT; k++) {
            acc0[k] = _mm256_fmadd_ps(w0, a2_load_h8(y[k] + i, bf16), acc0[k]);
            acc1[k] = _mm256_fmadd_ps(w1, a2_load_h8(y[k] + i + 8, bf16), acc1[k]);
        }
    }
    for (; i < n; i++)
        for (int k = 0; k < NT; k++) {
            float wv = bf16 ? qb_bf16_to_f32(x[i]) : qb_fp16_to_f32(x[i]);
            float yv = bf16 ? qb_bf16_to_f32(y[k][i]) : qb_fp16_to_f32(y[k][i]);
            tail[k] += wv * yv;
        }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(_mm256_add_ps(acc0[k], acc1[k])) + tail[k];
}
A2I void f16_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    h16_body(w, n, a, t0, NT, out, false);
}
A2I void bf16_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    h16_body(w, n, a, t0, NT, out, true);
}
A2_KERNEL(a2_dot_f16, f16_body)
A2_KERNEL(a2_dot_bf16, bf16_body)

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

A2I uint32_t a2_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
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
        dA = x[0].d, qa = x[0].qs, ha = a2_u32(x[0].qh);
        if (!one) dB = x[1].d, qb = x[1].qs, hb = a2_u32(x[1].qh);
        break;
    }
    case DTYPE_Q5_1: {
        const blk_q5_1 *x = (const blk_q5_1 *)w + i;
        dA = x[0].d, mA = x[0].m, qa = x[0].qs, ha = a2_u32(x[0].qh);
        if (!one) dB = x[1].d, mB = x[1].m, qb = x[1].qs, hb = a2_u32(x[1].qh);
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
        __m256i v = _mm256_set_m128i(one ? z : _mm_loadu_si128((const __m128i *)qb), _mm_loadu_si128((const __m128i *)qa));
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
    if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) *mw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)mA | (uint32_t)mB << 16)));
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
        /* 4 lanes per block: the offset 8 (Q4_0) or 16 (Q5_0) times sum, a quarter each */
        const __m256i sv = _mm256_loadu_si256((const __m256i *)(tk[k].sv + 4 * i));
        if (T == DTYPE_Q4_0) p = _mm256_sub_epi32(p, _mm256_slli_epi32(sv, 1));
        if (T == DTYPE_Q5_0) p = _mm256_sub_epi32(p, _mm256_slli_epi32(sv, 2));
        const __m256 sc = _mm256_mul_ps(dwv, _mm256_loadu_ps(tk[k].dv + 4 * i));
        acc[k] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[k]);
        if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) {
            const __m128 s2 = one ? _mm_load_ss(tk[k].s + i) : _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(tk[k].s + i)));
            accm[k] = _mm_fmadd_ps(mw, s2, accm[k]);
        }
    }
}

A2I void w32_body(const enum dtype T, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT,
                  float *out) {
    struct a2_tok32 tk[KDOT_NT];
    __m256 acc0[KDOT_NT], acc1[KDOT_NT];
    __m128 accm[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a2_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_s(a, t0 + k), kact_sv(a, t0 + k)};
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        accm[k] = _mm_setzero_ps();
    }
    const int64_t nb = n / 32;
    const size_t bsz = T == DTYPE_Q4_0 ? 18 : T == DTYPE_Q4_1 ? 20 : T == DTYPE_Q5_0 ? 22 : T == DTYPE_Q5_1 ? 24 : 34;
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) { /* two pairs into two accumulators: independent FMA chains */
        a2_prefetch((const char *)w + (size_t)i * bsz, 4 * bsz);
        w32_pair(T, w, i, false, tk, NT, acc0, accm);
        w32_pair(T, w, i + 2, false, tk, NT, acc1, accm);
    }
    if (i + 2 <= nb) {
        w32_pair(T, w, i, false, tk, NT, acc0, accm);
        i += 2;
    }
    if (i < nb) w32_pair(T, w, i, true, tk, NT, acc1, accm);
    for (int k = 0; k < NT; k++) {
        float m = 0.0f;
        if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) m = _mm_cvtss_f32(_mm_add_ss(accm[k], _mm_movehdup_ps(accm[k])));
        out[k] = a2_hsum(_mm256_add_ps(acc0[k], acc1[k])) + m;
    }
}

#define A2_W32(T, name)                                                                                 \
    A2I void name##_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, \
                         float *out) {                                                                  \
        w32_body(T, w, n, a, t0, NT, out);                                                              \
    }                                                                                                   \
    A2_KERNEL(a2_dot_##name, name##_body)
A2_W32(DTYPE_Q4_0, q4_0)
A2_W32(DTYPE_Q4_1, q4_1)
A2_W32(DTYPE_Q5_0, q5_0)
A2_W32(DTYPE_Q5_1, q5_1)
A2_W32(DTYPE_Q8_0, q8_0)

/* ------------------------------------------------------------------ K-quant weights */

struct a2_tokK {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
};

/* Per-token state of the K kernels: float accumulator, float min term. */
A2I void k_tokens(const struct kact_rows *a, int64_t t0, const int NT, struct a2_tokK *tk, __m256 *acc, float *accm) {
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a2_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        acc[k] = _mm256_setzero_ps();
        accm[k] = 0.0f;
    }
}

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
    memcpy(u, s, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4); /* mins 4..7 */
    const uint32_t mins03 = u[1] & m6;
    u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4); /* scales 4..7 */
    u[2] = mins03;
    u[0] &= m6; /* scales 0..3 */
    return _mm_loadu_si128((const __m128i *)u);
}

/* Q4_K and Q5_K: 4 pairs of 32-value sub-blocks sharing 32 bytes of nibbles. */
A2I void q45k_body(const bool five, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT,
                   float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    float accm[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc, accm);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m10 = _mm256_set1_epi8(0x10);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)w + (size_t)i * (five ? 176 : 144), five ? 176 : 144);
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
        /* the 8 scales as s16 in both halves; sub-block j's is broadcast by one shuffle */
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
            /* bsums of the 16-groups summed in pairs give the 32-value sub-block sums */
            const __m128i *bp = (const __m128i *)(tk[k].bs + 16 * i);
            __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(bp), _mm_loadu_si128(bp + 1));
            accm[k] += dmin * tk[k].d[i] * (float)a2_hsum_i32_128(_mm_madd_epi16(pairs, mins));
        }
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]) - accm[k];
}
A2I void q4k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    q45k_body(false, w, n, a, t0, NT, out);
}
A2I void q5k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    q45k_body(true, w, n, a, t0, NT, out);
}
A2_KERNEL(a2_dot_q4_K, q4k_body)
A2_KERNEL(a2_dot_q5_K, q5k_body)

A2I void q6k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    float accm[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc, accm);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)((const blk_q6_K *)w + i), 210);
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
        for (int k = 0; k < NT; k++) { /* codes are q + 32: take out 32 sum_g sc_g bsum_g */
            __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
            iacc[k] = _mm256_sub_epi32(iacc[k], _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5));
        }
        k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]);
}
A2_KERNEL(a2_dot_q6_K, q6k_body)

/* Q3_K scales as 16 signed bytes (the 6-bit fields minus 32). */
A2I __m128i a2_q3k_scales(const uint8_t *s) {
    uint32_t u[3];
    memcpy(u, s, 12);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    /* word k of the result holds scales 4k..4k+3: low nibbles from bytes 0..7 (k < 2) or
     * their high nibbles (k >= 2), top bits from byte 8 + j%4 at shift 2*(j/4) = 2k */
    uint32_t r[4] = {
        (u[0] & m4) | (((u[2] >> 0) & m2) << 4),
        (u[1] & m4) | (((u[2] >> 2) & m2) << 4),
        ((u[0] >> 4) & m4) | (((u[2] >> 4) & m2) << 4),
        ((u[1] >> 4) & m4) | (((u[2] >> 6) & m2) << 4),
    };
    return _mm_sub_epi8(_mm_loadu_si128((const __m128i *)r), _mm_set1_epi8(32));
}

A2I void q3k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    float accm[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc, accm);
    const __m256i m3 = _mm256_set1_epi8(3), m4b = _mm256_set1_epi8(4);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)((const blk_q3_K *)w + i), 110);
        const blk_q3_K *x = (const blk_q3_K *)w + i;
        const __m128i s8 = a2_q3k_scales(x->scales);
        const __m256i sb = _mm256_broadcastsi128_si256(s8), sc16 = _mm256_cvtepi8_epi16(s8);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
        __m256i iacc[KDOT_NT];
        for (int k = 0; k < NT; k++) iacc[k] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
            /* high bit 4h+s of hmask moved to bit 2 (value 4) */
            const __m256i hb[4] = {
                h ? _mm256_srli_epi16(hm, 2) : _mm256_slli_epi16(hm, 2),
                h ? _mm256_srli_epi16(hm, 3) : _mm256_slli_epi16(hm, 1),
                h ? _mm256_srli_epi16(hm, 4) : hm,
                h ? _mm256_srli_epi16(hm, 5) : _mm256_srli_epi16(hm, 1),
            };
            const __m256i lo[4] = {qs, _mm256_srli_epi16(qs, 2), _mm256_srli_epi16(qs, 4), _mm256_srli_epi16(qs, 6)};
            for (int s = 0; s < 4; s++) {
                __m256i u = _mm256_or_si256(_mm256_and_si256(lo[s], m3), _mm256_and_si256(hb[s], m4b));
                k_chunk(u, a2_scale_pair(sb, 4 * h + s, true), i, 4 * h + s, tk, NT, iacc);
            }
        }
        for (int k = 0; k < NT; k++) { /* codes are q + 4 */
            __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
            iacc[k] = _mm256_sub_epi32(iacc[k], _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 2));
        }
        k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]);
}
A2_KERNEL(a2_dot_q3_K, q3k_body)

A2I void q2k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    float accm[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc, accm);
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)((const blk_q2_K *)w + i), 84);
        const blk_q2_K *x = (const blk_q2_K *)w + i;
        const __m128i raw = _mm_loadu_si128((const __m128i *)x->scales);
        const __m128i s8 = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
        const __m256i sb = _mm256_broadcastsi128_si256(s8);
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
        __m256i iacc[KDOT_NT];
        for (int k = 0; k < NT; k++) iacc[k] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
            const __m256i lo[4] = {qs, _mm256_srli_epi16(qs, 2), _mm256_srli_epi16(qs, 4), _mm256_srli_epi16(qs, 6)};
            for (int s = 0; s < 4; s++)
                k_chunk(_mm256_and_si256(lo[s], m3), a2_scale_pair(sb, 4 * h + s, false), i, 4 * h + s, tk, NT, iacc);
        }
        k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
        const float dmin = a2_h2f(x->dmin);
        for (int k = 0; k < NT; k++) {
            __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
            accm[k] += dmin * tk[k].d[i] * (float)a2_hsum_i32(_mm256_madd_epi16(bs, mins));
        }
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]) - accm[k];
}
A2_KERNEL(a2_dot_q2_K, q2k_body)

kdot_fn kdot_avx2(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return a2_dot_f32;
    case DTYPE_F16: return a2_dot_f16;
    case DTYPE_BF16: return a2_dot_bf16;
    case DTYPE_Q4_0: return a2_dot_q4_0;
    case DTYPE_Q4_1: return a2_dot_q4_1;
    case DTYPE_Q5_0: return a2_dot_q5_0;
    case DTYPE_Q5_1: return a2_dot_q5_1;
    case DTYPE_Q8_0: return a2_dot_q8_0;
    case DTYPE_Q2_K: return a2_dot_q2_K;
    case DTYPE_Q3_K: return a2_dot_q3_K;
    case DTYPE_Q4_K: return a2_dot_q4_K;
    case DTYPE_Q5_K: return a2_dot_q5_K;
    case DTYPE_Q6_K: return a2_dot_q6_K;
    default: return NULL;
    }
}

#else /* not x86-64 */

void kact_quantize_avx2(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    kact_quantize_scalar(f, x, n, row, lay);
}
kdot_fn kdot_avx2(enum dtype t) { return NULL; }

#endif
