/* dot_avx2_k.c - AVX2 kernels of the K-quant weights (Q2_K .. Q6_K) against Q8_K
 * activations: each 256-value super-block is unpacked to unsigned codes 32 values at a
 * time and multiplied with each token's activations (vpmaddubsw, then vpmaddwd by the
 * 16-bit sub-block scales); integer lane sums are scaled once per super-block.
 *
 *   sum = d_w d_a sum_g sc_g sum_i u_i a_i  -  offset terms:
 *     Q2_K, Q4_K, Q5_K: dmin_w d_a sum_g m_g bsum_g     (mins, from the Q8_K bsums)
 *     Q3_K, Q6_K: codes are q + 4 / q + 32, so d_w d_a 4 (32) sum_g sc_g bsum_g
 * The integer sums equal dot_scalar.c's. */
#include "simd_avx2.h"

#if defined(__x86_64__)

#include "dot_avx2_blocks.h"

/* ------------------------------------------------------------------ K-quant weights */

/* Per-token state of the K kernels: activation pointers and a float accumulator (the
 * min terms of Q2_K/Q4_K/Q5_K are accumulated into it with the negated factor). */
A2I void k_tokens(const struct kact_rows *a, int64_t t0, const int NT, struct a2_tokK *tk, __m256 *acc) {
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct a2_tokK){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_bsums(a, t0 + k)};
        acc[k] = _mm256_setzero_ps();
    }
}

/* Q4_K and Q5_K: 4 pairs of 32-value sub-blocks sharing 32 bytes of nibbles. */
A2I void q45k_body(const bool five, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT,
                   float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)w + (size_t)i * (five ? 176 : 144), five ? 176 : 144);
        q45k_sblock(five, w, i, tk, NT, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]);
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
    k_tokens(a, t0, NT, tk, acc);
    for (int64_t i = 0; i < n / 256; i++) {
        a2_prefetch((const char *)((const blk_q6_K *)w + i), 210);
        q6k_sblock(w, i, tk, NT, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]);
}
A2_KERNEL(a2_dot_q6_K, q6k_body)

/* Q3_K scales as 16 signed bytes (the 6-bit fields minus 32). */
A2I __m128i a2_q3k_scales(const uint8_t *s) {
    uint32_t r[4];
    qb_q3k_scale_words(s, r);
    const __m128i v = _mm_set_epi64x((int64_t)((uint64_t)r[3] << 32 | r[2]), (int64_t)((uint64_t)r[1] << 32 | r[0]));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

A2I void q3k_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    struct a2_tokK tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    k_tokens(a, t0, NT, tk, acc);
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
    k_tokens(a, t0, NT, tk, acc);
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
        const float dmin = a2_h2f(x->dmin);
        for (int k = 0; k < NT; k++) { /* the min term first, as llama.cpp's AVX2 kernel */
            const __m256i mp = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(tk[k].bs + 16 * i)), mins);
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * tk[k].d[i]), _mm256_cvtepi32_ps(mp), acc[k]);
        }
        k_finish(NT, tk, i, a2_h2f(x->d), iacc, acc);
    }
    for (int k = 0; k < NT; k++) out[k] = a2_hsum(acc[k]);
}
A2_KERNEL(a2_dot_q2_K, q2k_body)

kdot_fn kdot_avx2_k(enum dtype t) {
    switch (t) {
    case DTYPE_Q2_K: return a2_dot_q2_K;
    case DTYPE_Q3_K: return a2_dot_q3_K;
    case DTYPE_Q4_K: return a2_dot_q4_K;
    case DTYPE_Q5_K: return a2_dot_q5_K;
    case DTYPE_Q6_K: return a2_dot_q6_K;
    default: return NULL;
    }
}

#endif
