/* dot_avx512.c - AVX-512 (F, BW, VL, VNNI) matmul kernels for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
 * and the K-quants Q2_K .. Q6_K, giving the same bits as the AVX2 kernels of these types
 * (dot_avx2.c, dot_avx2_k.c, dot_avx2_blocks.h); the float types (F32/F16/BF16: one FMA
 * per value either way, no integer work to save) use the AVX2 kernels on these CPUs.
 *
 * AVX2's arithmetic is the canonical one (the golden tests against llama.cpp check it;
 * dot_scalar.c repeats it too). Integer sums are exact in any grouping, float sums are
 * not, so each kernel here forms the int32 lanes that AVX2 converts to float with fewer
 * instructions, and then runs AVX2's float operations on them in 256-bit registers, in
 * AVX2's order (same accumulators, fused multiply-adds, min terms, horizontal sum):
 *
 *   32-value blocks (a block pair per step, activation pair order of simd_dot.h): AVX2's
 *     lane L sums the products of bytes 4L..4L+3 of the low-value register (lo) and the
 *     high-value one (hi). Two chained 256-bit vpdpbusd (u8 x s8, 4 products summed into
 *     each s32 lane), lo then hi, give that lane directly, in place of AVX2's vpmaddubsw
 *     x2, vpaddw and vpmaddwd. None of AVX2's 16-bit intermediates can overflow for any
 *     input (codes <= 31: a vpaddw of two pair sums stays within 4 x 31 x 128; Q8_0's
 *     |w| <= 128 times a sign-applied int8: a pair sum stays within [-32768, 32512]), so
 *     the lanes are equal for every input. Q8_0 keeps AVX2's sign trick (vpsignb: |w| x
 *     sign(a, w)); Q5's fifth bits come from the qh bits as a byte mask (vmovdqu8 {z}) in
 *     place of AVX2's shuffle/compare expansion.
 *   K-quants (two 32-value chunks per 512-bit register): vpmaddubsw (u8 x s8 pairs, codes
 *     <= 63: no saturation), then vpdpwssd by the 16-bit group scales (vpermw picks each
 *     chunk's two group scales) accumulates: lanes 0-7 hold AVX2's lanes of the first
 *     chunk, 8-15 the second's. Two such accumulators (even and odd chunk pairs) keep the
 *     chains short; added, and their 256-bit halves added, they are AVX2's int32 lanes of
 *     the super-block. Offsets, scaling and min terms then follow AVX2.
 *
 * Compiled per function with the avx512 target attribute; matmul.c calls these only when
 * cpu_simd_detect() reports KSIMD_AVX512. Building with -DTPLLM_SIMDE_AVX512 (and SIMDe's
 * headers) compiles the same code with AVX-512 emulated in portable C, to check it on CPUs
 * without AVX-512 (tests/unit/test_simd_avx512.c: built with -mavx2 -mfma -mf16c so that
 * the 256-bit float instructions, whose roundings matter, are the real ones). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* AVX2's roundings: no fused multiply-adds AVX2 lacks */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "simd_blocks.h"
#include "simd_dot.h"

#if defined(__x86_64__) || defined(TPLLM_SIMDE_AVX512)

#if defined(TPLLM_SIMDE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#define A5
#define A5I static inline
#else
#include <immintrin.h>
#define A5 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define A5I static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif

/* Weights are prefetched this many bytes ahead, as in simd_avx2.h. */
#ifndef KDOT_PREFETCH
#define KDOT_PREFETCH 2048
#endif

A5I void a5_prefetch(const char *p, size_t bytes) {
#if KDOT_PREFETCH
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(p + KDOT_PREFETCH + o, _MM_HINT_T0);
#else
    (void)p, (void)bytes;
#endif
}

/* a2_hsum of simd_avx2.h: ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)). */
A5I float a5_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}


#define A5_KERNEL(name, body) KDOT_KERNEL(A5, name, body)

/* ------------------------------------------------------------ 32-value block weights */

struct a5_tok32 {
    const int8_t *q;
    const float *dv, *s;
    const int32_t *sv;
};

/* The weight codes of blocks i and i+1 (B absent when `one`) as w32_pair_unpack of
 * dot_avx2_blocks.h: lo = A[0..15] B[0..15], hi = A[16..31] B[16..31], dwv = dA x4, dB x4,
 * mw = (mA, mB) for Q4_1/Q5_1. */
A5I void a5_w32_unpack(const enum dtype T, const void *w, int64_t i, const bool one, __m256i *lo, __m256i *hi,
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
        const __m256i v = _mm256_set_m128i(one ? z : _mm_loadu_si128((const __m128i *)qb),
                                           _mm_loadu_si128((const __m128i *)qa));
        *lo = _mm256_and_si256(v, m4);
        *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (T == DTYPE_Q5_0 || T == DTYPE_Q5_1) { /* 0x10 or-ed into the bytes whose qh bit is set */
            const __m256i b4 = _mm256_set1_epi8(0x10);
            *lo = _mm256_or_si256(*lo, _mm256_maskz_mov_epi8((ha & 0xFFFFu) | (hb << 16), b4));
            *hi = _mm256_or_si256(*hi, _mm256_maskz_mov_epi8((ha >> 16) | (hb & 0xFFFF0000u), b4));
        }
    }
    const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)dA | (uint32_t)dB << 16)));
    *dwv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1)
        *mw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)mA | (uint32_t)mB << 16)));
}

/* w32_pair of dot_avx2_blocks.h: blocks i, i+1 against NT tokens into acc (and accm). */
A5I void a5_w32_pair(const enum dtype T, const void *w, int64_t i, const bool one, const struct a5_tok32 *tk,
                     const int NT, __m256 *acc, __m128 *accm) {
    __m256i lo, hi;
    __m256 dwv;
    __m128 mw = _mm_setzero_ps();
    a5_w32_unpack(T, w, i, one, &lo, &hi, &dwv, &mw);
    const __m256i alo = T == DTYPE_Q8_0 ? _mm256_sign_epi8(lo, lo) : lo;
    const __m256i ahi = T == DTYPE_Q8_0 ? _mm256_sign_epi8(hi, hi) : hi;
    const __m256i zero = _mm256_setzero_si256();
    for (int k = 0; k < NT; k++) {
        __m256i yl = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i));
        __m256i yh = _mm256_loadu_si256((const __m256i *)(tk[k].q + 32 * i + 32));
        if (T == DTYPE_Q8_0) yl = _mm256_sign_epi8(yl, lo), yh = _mm256_sign_epi8(yh, hi);
        __m256i p = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(zero, alo, yl), ahi, yh);
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

/* w32_body of dot_avx2.c: block pairs alternate between two accumulators per token. */
A5I void a5_w32_body(const enum dtype T, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT,
                     float *out) {
    struct a5_tok32 tk[KDOT_NT];
    __m256 acc0[KDOT_NT], acc1[KDOT_NT];
    __m128 accm[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a5_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_s(a, t0 + k), kact_sv(a, t0 + k)};
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        accm[k] = _mm_setzero_ps();
    }
    const int64_t nb = n / 32;
    const size_t bsz = T == DTYPE_Q4_0 ? 18 : T == DTYPE_Q4_1 ? 20 : T == DTYPE_Q5_0 ? 22 : T == DTYPE_Q5_1 ? 24 : 34;
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        a5_prefetch((const char *)w + (size_t)i * bsz, 4 * bsz);
        a5_w32_pair(T, w, i, false, tk, NT, acc0, accm);
        a5_w32_pair(T, w, i + 2, false, tk, NT, acc1, accm);
    }
    if (i + 2 <= nb) {
        a5_w32_pair(T, w, i, false, tk, NT, acc0, accm);
        i += 2;
    }
    if (i < nb) a5_w32_pair(T, w, i, true, tk, NT, acc1, accm);
    for (int k = 0; k < NT; k++) {
        float m = 0.0f;
        if (T == DTYPE_Q4_1 || T == DTYPE_Q5_1) m = _mm_cvtss_f32(_mm_add_ss(accm[k], _mm_movehdup_ps(accm[k])));
        out[k] = a5_hsum(_mm256_add_ps(acc0[k], acc1[k])) + m;
    }
}

#define A5_W32(T, name)                                                                                 \
    A5I void name##_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, \
                         float *out) {                                                                  \
        a5_w32_body(T, w, n, a, t0, NT, out);                                                           \
    }                                                                                                   \
    A5_KERNEL(a5_dot_##name, name##_body)
A5_W32(DTYPE_Q4_1, q4_1)
A5_W32(DTYPE_Q5_0, q5_0)
A5_W32(DTYPE_Q5_1, q5_1)
A5_W32(DTYPE_Q8_0, q8_0)

/* ------------------------------------------------------------------ K-quant weights */

struct a5_tokK {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
};

/* The 16-bit scales of chunk pair j (values 64j .. 64j+63 of a super-block) for vpdpwssd:
 * word m takes scale (base + m / per) of `sc` (words 0..15): per = 8 with one scale per
 * group of 16 values (base 4j), per = 16 with one per 32-value sub-block (base 2j). */
A5I __m512i a5_pair_scales(__m512i sc, int base, int per) {
    const __m512i idx = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
                                         12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i g = per == 8 ? _mm512_srli_epi16(idx, 3) : _mm512_srli_epi16(idx, 4);
    return _mm512_permutexvar_epi16(_mm512_add_epi16(g, _mm512_set1_epi16((short)base)), sc);
}

/* Chunk pair j (u: the 64 unsigned codes of values 64j ..) of super-block i against each
 * token's activations, into iacc. */
A5I void a5_k_pair(__m512i u, __m512i sv, int64_t i, int j, const struct a5_tokK *tk, const int NT, __m512i *iacc) {
    for (int k = 0; k < NT; k++) {
        const __m512i y = _mm512_loadu_si512((const void *)(tk[k].q + 256 * i + 64 * j));
        iacc[k] = _mm512_dpwssd_epi32(iacc[k], _mm512_maddubs_epi16(u, y), sv);
    }
}

/* AVX2's int32 lanes of the super-block: the two accumulators, then their halves, added. */
A5I __m256i a5_k_lanes(__m512i i0, __m512i i1) {
    const __m512i s = _mm512_add_epi32(i0, i1);
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

/* k_finish of dot_avx2_blocks.h. */
A5I __m256 a5_k_finish(__m256 acc, float d, float dy, __m256i lanes) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d * dy), _mm256_cvtepi32_ps(lanes), acc);
}

/* The 6-bit scales and mins of a Q4_K/Q5_K super-block: bytes 0..7 scales, 8..15 mins
 * (a2_k4_scales of dot_avx2_blocks.h). */
A5I __m128i a5_k4_scales(const uint8_t *s) {
    uint32_t u[4];
    qb_k4_scale_words(s, u);
    return _mm_set_epi64x((int64_t)((uint64_t)u[3] << 32 | u[2]), (int64_t)((uint64_t)u[1] << 32 | u[0]));
}

/* Q3_K scales as 16 signed bytes (a2_q3k_scales of dot_avx2_k.c). */
A5I __m128i a5_q3k_scales(const uint8_t *s) {
    uint32_t r[4];
    qb_q3k_scale_words(s, r);
    const __m128i v = _mm_set_epi64x((int64_t)((uint64_t)r[3] << 32 | r[2]), (int64_t)((uint64_t)r[1] << 32 | r[0]));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

A5I __m512i a5_join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

enum a5_ktype { A5_Q2_K, A5_Q3_K, A5_Q4_K, A5_Q5_K, A5_Q6_K };

/* One super-block i of every token into acc, as the matching kdot_avx2 kernel. */
A5I void a5_k_sblock(const enum a5_ktype K, const void *w, int64_t i, const struct a5_tokK *tk, const int NT,
                     __m256 *acc) {
    __m512i iacc0[KDOT_NT], iacc1[KDOT_NT];
    for (int k = 0; k < NT; k++) iacc0[k] = iacc1[k] = _mm512_setzero_si512();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    float d, dmin = 0.0f;
    __m256i sc16 = _mm256_setzero_si256(); /* Q2_K/Q3_K/Q6_K: the 16 group scales, for the offsets */
    __m256i mins2 = _mm256_setzero_si256(); /* Q2_K: the 16 group mins */
    __m128i mins4 = _mm_setzero_si128();    /* Q4_K/Q5_K: the 8 sub-block mins */
    if (K == A5_Q4_K || K == A5_Q5_K) {
        const uint8_t *scales, *qs, *qh = NULL;
        if (K == A5_Q5_K) {
            const blk_q5_K *x = (const blk_q5_K *)w + i;
            scales = x->scales, qs = x->qs, qh = x->qh, d = qb_fp16_to_f32(x->d), dmin = qb_fp16_to_f32(x->dmin);
        } else {
            const blk_q4_K *x = (const blk_q4_K *)w + i;
            scales = x->scales, qs = x->qs, d = qb_fp16_to_f32(x->d), dmin = qb_fp16_to_f32(x->dmin);
        }
        const __m128i sm = a5_k4_scales(scales);
        const __m512i sc = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_zextsi128_si256(_mm_cvtepu8_epi16(sm)), 0);
        mins4 = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        __m256i hbits = K == A5_Q5_K ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
        for (int p = 0; p < 4; p++) { /* sub-blocks 2p (low nibbles), 2p + 1 (high) */
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
            __m512i u = _mm512_and_si512(a5_join(q, _mm256_srli_epi16(q, 4)), m4);
            if (K == A5_Q5_K) {
                const __m512i hb = a5_join(_mm256_slli_epi16(hbits, 4), _mm256_slli_epi16(hbits, 3));
                u = _mm512_or_si512(u, _mm512_and_si512(hb, _mm512_set1_epi8(0x10)));
                hbits = _mm256_srli_epi16(hbits, 2);
            }
            a5_k_pair(u, a5_pair_scales(sc, 2 * p, 16), i, p, tk, NT, p & 1 ? iacc1 : iacc0);
        }
    } else if (K == A5_Q6_K) {
        const blk_q6_K *x = (const blk_q6_K *)w + i;
        d = qb_fp16_to_f32(x->d);
        sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
        const __m512i sc = _mm512_inserti64x4(_mm512_setzero_si512(), sc16, 0), m30 = _mm512_set1_epi8(0x30);
        for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512((const void *)(x->ql + 64 * h)); /* ql0 | ql1 */
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
            /* chunks 4h, 4h+1: low nibbles, qh bits 0-1 | 2-3; chunks 4h+2, 4h+3: high
             * nibbles, qh bits 4-5 | 6-7 (each moved to bits 4-5) */
            const __m512i u01 = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(a5_join(_mm256_slli_epi16(qh, 4), _mm256_slli_epi16(qh, 2)), m30));
            const __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                                _mm512_and_si512(a5_join(qh, _mm256_srli_epi16(qh, 2)), m30));
            a5_k_pair(u01, a5_pair_scales(sc, 8 * h, 8), i, 2 * h, tk, NT, iacc0);
            a5_k_pair(u23, a5_pair_scales(sc, 8 * h + 4, 8), i, 2 * h + 1, tk, NT, iacc1);
        }
    } else if (K == A5_Q3_K) {
        const blk_q3_K *x = (const blk_q3_K *)w + i;
        d = qb_fp16_to_f32(x->d);
        sc16 = _mm256_cvtepi8_epi16(a5_q3k_scales(x->scales));
        const __m512i sc = _mm512_inserti64x4(_mm512_setzero_si512(), sc16, 0);
        const __m512i m3 = _mm512_set1_epi8(3), m4b = _mm512_set1_epi8(4);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
            const __m512i lo01 = a5_join(qs, _mm256_srli_epi16(qs, 2)), lo23 = _mm512_srli_epi16(lo01, 4);
            /* high bit 4h + s of hmask moved to bit 2 (value 4), as q3k_body */
            const __m512i hb01 = h ? a5_join(_mm256_srli_epi16(hm, 2), _mm256_srli_epi16(hm, 3))
                                   : a5_join(_mm256_slli_epi16(hm, 2), _mm256_slli_epi16(hm, 1));
            const __m512i hb23 = h ? a5_join(_mm256_srli_epi16(hm, 4), _mm256_srli_epi16(hm, 5))
                                   : a5_join(hm, _mm256_srli_epi16(hm, 1));
            const __m512i u01 = _mm512_or_si512(_mm512_and_si512(lo01, m3), _mm512_and_si512(hb01, m4b));
            const __m512i u23 = _mm512_or_si512(_mm512_and_si512(lo23, m3), _mm512_and_si512(hb23, m4b));
            a5_k_pair(u01, a5_pair_scales(sc, 8 * h, 8), i, 2 * h, tk, NT, iacc0);
            a5_k_pair(u23, a5_pair_scales(sc, 8 * h + 4, 8), i, 2 * h + 1, tk, NT, iacc1);
        }
    } else { /* Q2_K */
        const blk_q2_K *x = (const blk_q2_K *)w + i;
        d = qb_fp16_to_f32(x->d), dmin = qb_fp16_to_f32(x->dmin);
        const __m128i raw = _mm_loadu_si128((const __m128i *)x->scales);
        sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
        mins2 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
        const __m512i sc = _mm512_inserti64x4(_mm512_setzero_si512(), sc16, 0), m3 = _mm512_set1_epi8(3);
        for (int h = 0; h < 2; h++) {
            const __m256i qs = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
            const __m512i lo01 = a5_join(qs, _mm256_srli_epi16(qs, 2));
            a5_k_pair(_mm512_and_si512(lo01, m3), a5_pair_scales(sc, 8 * h, 8), i, 2 * h, tk, NT, iacc0);
            a5_k_pair(_mm512_and_si512(_mm512_srli_epi16(lo01, 4), m3), a5_pair_scales(sc, 8 * h + 4, 8), i,
                      2 * h + 1, tk, NT, iacc1);
        }
    }
    for (int k = 0; k < NT; k++) {
        const float dy = tk[k].d[i];
        __m256i lanes = a5_k_lanes(iacc0[k], iacc1[k]);
        if (K == A5_Q3_K || K == A5_Q6_K) { /* codes are q + 4 / q + 32 */
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
            lanes = _mm256_sub_epi32(lanes, _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), K == A5_Q3_K ? 2 : 5));
        }
        if (K == A5_Q2_K) { /* the min term first, as q2k_body */
            const __m256i mp = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i)), mins2);
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * dy), _mm256_cvtepi32_ps(mp), acc[k]);
        }
        acc[k] = a5_k_finish(acc[k], d, dy, lanes);
        if (K == A5_Q4_K || K == A5_Q5_K) { /* as q45k_sblock */
            const __m128i *bp = (const __m128i *)(tk[k].bs + 16 * i);
            const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(bp), _mm_loadu_si128(bp + 1));
            const __m256i mp = _mm256_zextsi128_si256(_mm_madd_epi16(pairs, mins4));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * dy), _mm256_cvtepi32_ps(mp), acc[k]);
        }
    }
}

A5I void a5_k_body(const enum a5_ktype K, const void *w, int64_t n, const struct kact_rows *a, int64_t t0,
                   const int NT, float *out) {
    struct a5_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a5_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        acc[k] = _mm256_setzero_ps();
    }
    const size_t bsz = K == A5_Q2_K ? 84 : K == A5_Q3_K ? 110 : K == A5_Q4_K ? 144 : K == A5_Q5_K ? 176 : 210;
    for (int64_t i = 0; i < n / 256; i++) {
        a5_prefetch((const char *)w + (size_t)i * bsz, bsz);
        a5_k_sblock(K, w, i, tk, NT, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a5_hsum(acc[k]);
}

#define A5_K(K, name)                                                                                   \
    A5I void name##_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, \
                         float *out) {                                                                  \
        a5_k_body(K, w, n, a, t0, NT, out);                                                             \
    }                                                                                                   \
    A5_KERNEL(a5_dot_##name, name##_body)
A5_K(A5_Q2_K, q2_K)
A5_K(A5_Q3_K, q3_K)
A5_K(A5_Q4_K, q4_K)
A5_K(A5_Q5_K, q5_K)
A5_K(A5_Q6_K, q6_K)

kdot_fn kdot_avx512(enum dtype t) {
    switch (t) {
    case DTYPE_Q4_0: return NULL; /* row-sequential arithmetic: the AVX2 kernels (q4_0x8.c) */
    case DTYPE_Q4_1: return a5_dot_q4_1;
    case DTYPE_Q5_0: return a5_dot_q5_0;
    case DTYPE_Q5_1: return a5_dot_q5_1;
    case DTYPE_Q8_0: return a5_dot_q8_0;
    case DTYPE_Q2_K: return a5_dot_q2_K;
    case DTYPE_Q3_K: return a5_dot_q3_K;
    case DTYPE_Q4_K: return a5_dot_q4_K;
    case DTYPE_Q5_K: return a5_dot_q5_K;
    case DTYPE_Q6_K: return a5_dot_q6_K;
    default: return NULL; /* F32/F16/BF16: the AVX2 kernels */
    }
}

#else /* not x86-64 */

kdot_fn kdot_avx512(enum dtype t) { return NULL; }

#endif
