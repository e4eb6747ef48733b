/* dot_avx512.c - AVX-512 (F, BW, VL, VNNI) matmul kernels for Q4_0, Q8_0, Q4_K and Q6_K;
 * the other types use the AVX2 kernels on these CPUs.
 *
 * Same integer block sums as dot_scalar.c, on 64 values per instruction:
 *   Q8_0, Q4_0: a block pair per register, in the interleaved order of the activation
 *     rows (simd_dot.h); vpdpbusd (u8 x s8, 4 products summed into each s32 lane) needs
 *     unsigned weights, so Q8_0 codes are biased by 128 (w ^ 0x80) and Q4_0 nibbles stay
 *     0..15; the bias times the block's activation sum is subtracted from the block's 8
 *     lanes (16 sum each for Q8_0, sum each for Q4_0).
 *   Q4_K, Q6_K: a 64-value chunk per register; vpmaddubsw pairs, then vpdpwssd
 *     multiplies the pair sums by the 16-bit sub-block scales and accumulates. Q6_K's
 *     codes are q + 32: 32 sum_g sc_g bsum_g is subtracted per super-block.
 * Compiled per function with the avx512 target attribute; matmul.c calls these only when
 * cpu_simd_detect() reports KSIMD_AVX512. Building with -DTPLLM_SIMDE_AVX512 (and SIMDe's
 * headers) compiles the same code as portable C, to check it on CPUs without AVX-512. */
#include "simd_blocks.h"
#include "simd_dot.h"

#if defined(__x86_64__) || defined(TPLLM_SIMDE_AVX512)

#if defined(TPLLM_SIMDE_AVX512)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define A5
#define A5I static inline
#else
#include <immintrin.h>
#define A5 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define A5I static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif

A5I float a5_h2f(uint16_t h) { return qb_fp16_to_f32(h); }

/* Software prefetch of the weights 2 KiB ahead, as in simd_avx2.h. */
A5I void a5_prefetch(const char *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(p + 2048 + o, _MM_HINT_T0);
}

A5I float a5_hsum(__m512 v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}

A5I int32_t a5_hsum_i32_128(__m128i s) {
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* [a x 16 lanes, b x 16 lanes] of 16 bits */
A5I __m512i a5_pair_i16(int16_t a, int16_t b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(a)), _mm256_set1_epi16(b), 1);
}

#define A5_KERNEL(name, body) KDOT_KERNEL(A5, name, body)

/* ------------------------------------------------------------------ Q8_0, Q4_0 */

struct a5_tok32 {
    const int8_t *q;
    const float *dv;
    const int32_t *sv;
};

/* 8 values broadcast to both 256-bit halves. */
A5I __m512 a5_bcast8_ps(const float *p) {
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
}
A5I __m512i a5_bcast8_i32(const int32_t *p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
}

/* Blocks i and i+1 (i even; only i when `one`, the activation pair then holds zeros for
 * the missing block) against NT tokens. The register holds the pair in the activation
 * order A[0..15] B[0..15] A[16..31] B[16..31], so lanes 0-3 and 8-11 sum block A. */
A5I void w32_pair(const bool q4, const void *w, int64_t i, const bool one, const struct a5_tok32 *tk, const int NT,
                  __m512 *acc) {
    __m512i wu;
    float dA, dB = 0.0f;
    if (q4) {
        const blk_q4_0 *x = (const blk_q4_0 *)w + i;
        __m128i a = _mm_loadu_si128((const __m128i *)x[0].qs);
        __m128i b = one ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)x[1].qs);
        __m256i ab = _mm256_set_m128i(b, a);
        wu = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(ab), _mm256_srli_epi16(ab, 4), 1),
                              _mm512_set1_epi8(0x0F));
        dA = a5_h2f(x[0].d);
        if (!one) dB = a5_h2f(x[1].d);
    } else {
        const blk_q8_0 *x = (const blk_q8_0 *)w + i;
        __m256i a = _mm256_loadu_si256((const __m256i *)x[0].qs);
        __m256i b = one ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)x[1].qs);
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);  /* A.lo A.hi B.lo B.hi */
        z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));           /* A.lo B.lo A.hi B.hi */
        wu = _mm512_xor_si512(z, _mm512_set1_epi8((char)0x80));            /* w + 128 */
        dA = a5_h2f(x[0].d);
        if (!one) dB = a5_h2f(x[1].d);
    }
    const __m512 dwv = _mm512_castpd_ps(_mm512_broadcast_f64x4(
        _mm256_castps_pd(_mm256_set_m128(_mm_set1_ps(dB), _mm_set1_ps(dA)))));
    for (int k = 0; k < NT; k++) {
        const __m512i y = _mm512_loadu_si512((const void *)(tk[k].q + 32 * i));
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, y);
        /* 8 lanes per block: the bias (8 for Q4_0, 128 for Q8_0) times sum, an eighth each
         * (sv holds 2 sum) */
        __m512i corr = a5_bcast8_i32(tk[k].sv + 4 * i);
        if (q4)
            corr = _mm512_srai_epi32(corr, 1);
        else
            corr = _mm512_slli_epi32(corr, 3);
        p = _mm512_sub_epi32(p, corr);
        acc[k] = _mm512_fmadd_ps(_mm512_mul_ps(dwv, a5_bcast8_ps(tk[k].dv + 4 * i)), _mm512_cvtepi32_ps(p), acc[k]);
    }
}

A5I void w32_body(const bool q4, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT,
                  float *out) {
    struct a5_tok32 tk[KDOT_NT];
    __m512 acc[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a5_tok32){kact_qs(a, t0 + k), kact_dv(a, t0 + k), kact_sv(a, t0 + k)};
        acc[k] = _mm512_setzero_ps();
    }
    const int64_t nb = n / 32;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        a5_prefetch((const char *)w + (size_t)i * (q4 ? 18 : 34), q4 ? 36 : 68);
        w32_pair(q4, w, i, false, tk, NT, acc);
    }
    if (i < nb) w32_pair(q4, w, i, true, tk, NT, acc);
    for (int k = 0; k < NT; k++) out[k] = a5_hsum(acc[k]);
}

A5I void q4_0_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    w32_body(true, w, n, a, t0, NT, out);
}
A5I void q8_0_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    w32_body(false, w, n, a, t0, NT, out);
}
A5_KERNEL(a5_dot_q4_0, q4_0_body)
A5_KERNEL(a5_dot_q8_0, q8_0_body)

/* ------------------------------------------------------------------ Q4_K, Q6_K */

struct a5_tokK {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
};

/* Q4_K scales (bytes 0..7) and mins (8..15) from the 12 packed bytes (see dot_avx2.c). */
A5I __m128i a5_k4_scales(const uint8_t *s) {
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4);
    const uint32_t mins03 = u[1] & m6;
    u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);
    u[2] = mins03;
    u[0] &= m6;
    /* from registers: a 16-byte load of the four 4-byte stores would stall (no forwarding) */
    return _mm_set_epi64x((int64_t)((uint64_t)u[3] << 32 | u[2]), (int64_t)((uint64_t)u[1] << 32 | u[0]));
}

A5I void q4k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a5_tokK tk[KDOT_NT];
    __m512 acc[KDOT_NT];
    float accm[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a5_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        acc[k] = _mm512_setzero_ps();
        accm[k] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < n / 256; i++) {
        const blk_q4_K *x = (const blk_q4_K *)w + i;
        a5_prefetch((const char *)x, sizeof *x);
        const __m128i sm = a5_k4_scales(x->scales);
        uint8_t sc[16];
        _mm_storeu_si128((__m128i *)sc, sm);
        const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        __m512i iacc[KDOT_NT];
        for (int k = 0; k < NT; k++) iacc[k] = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * p));
            const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                                                 _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), 1);
            const __m512i sv = a5_pair_i16((int16_t)sc[2 * p], (int16_t)sc[2 * p + 1]);
            for (int k = 0; k < NT; k++) {
                __m512i y = _mm512_loadu_si512((const void *)(tk[k].q + 256 * i + 64 * p));
                iacc[k] = _mm512_dpwssd_epi32(iacc[k], _mm512_maddubs_epi16(u, y), sv);
            }
        }
        const float d = a5_h2f(x->d), dmin = a5_h2f(x->dmin);
        for (int k = 0; k < NT; k++) {
            const float dy = tk[k].d[i];
            acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(d * dy), _mm512_cvtepi32_ps(iacc[k]), acc[k]);
            const __m128i *bp = (const __m128i *)(tk[k].bs + 16 * i);
            __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128(bp), _mm_loadu_si128(bp + 1));
            accm[k] += dmin * dy * (float)a5_hsum_i32_128(_mm_madd_epi16(pairs, mins));
        }
    }
    for (int k = 0; k < NT; k++) out[k] = a5_hsum(acc[k]) - accm[k];
}
A5_KERNEL(a5_dot_q4_K, q4k_body)

A5I void q6k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a5_tokK tk[KDOT_NT];
    __m512 acc[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a5_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        acc[k] = _mm512_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    /* lane j of a 64-value chunk's pair sums belongs to group j/8 of the chunk */
    const __m512i grp = _mm512_cvtepu8_epi16(_mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                                              2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    for (int64_t i = 0; i < n / 256; i++) {
        const blk_q6_K *x = (const blk_q6_K *)w + i;
        a5_prefetch((const char *)x, sizeof *x);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x->scales));
        const __m512i sc512 = _mm512_castsi256_si512(sc16);
        __m512i iacc[KDOT_NT];
        for (int k = 0; k < NT; k++) iacc[k] = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
            const __m256i u0 =
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            const __m256i u1 =
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            const __m256i u2 =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
            const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            const __m512i z[2] = {_mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1),
                                  _mm512_inserti64x4(_mm512_castsi256_si512(u2), u3, 1)};
            for (int c = 0; c < 2; c++) { /* values 128h + 64c .. +63: groups 8h + 4c .. +3 */
                const __m512i sv =
                    _mm512_permutexvar_epi16(_mm512_add_epi16(grp, _mm512_set1_epi16((int16_t)(8 * h + 4 * c))), sc512);
                for (int k = 0; k < NT; k++) {
                    __m512i y = _mm512_loadu_si512((const void *)(tk[k].q + 256 * i + 128 * h + 64 * c));
                    iacc[k] = _mm512_dpwssd_epi32(iacc[k], _mm512_maddubs_epi16(z[c], y), sv);
                }
            }
        }
        const float d = a5_h2f(x->d);
        for (int k = 0; k < NT; k++) {
            __m256i bs = _mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i));
            __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            __m512i v = _mm512_sub_epi32(iacc[k], _mm512_inserti64x4(_mm512_setzero_si512(), off, 0));
            acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(d * tk[k].d[i]), _mm512_cvtepi32_ps(v), acc[k]);
        }
    }
    for (int k = 0; k < NT; k++) out[k] = a5_hsum(acc[k]);
}
A5_KERNEL(a5_dot_q6_K, q6k_body)

kdot_fn kdot_avx512(enum dtype t) {
    switch (t) {
    case DTYPE_Q4_0: return a5_dot_q4_0;
    case DTYPE_Q8_0: return a5_dot_q8_0;
    case DTYPE_Q4_K: return a5_dot_q4_K;
    case DTYPE_Q6_K: return a5_dot_q6_K;
    default: return NULL;
    }
}

#else /* not x86-64 */

kdot_fn kdot_avx512(enum dtype t) { return NULL; }

#endif
