/* q4_0x8.c - Q4_0 weights in groups of 8 rows (KMAT_Q4_0X8, kernels.h) and their AVX2
 * kernels: 8 output rows per register, one lane each.
 *
 * The arithmetic of a Q4_0 row (every SIMD level, every layout: dot_scalar.c is the
 * reference) is row-sequential: per block b the exact integer sum
 *     isum_b = sum_j (q_j - 8) a_j           (q: 4-bit codes, a: the Q8_0 activations)
 * then  acc = fma(d_w,b * d_a,b, (float) isum_b, acc)  for b = 0, 1, ... from acc = 0, and the
 * row's result is acc. Granules of a row-parallel matmul (matmul_f64) are the same from
 * acc = 0 at each granule's first block, each granule's float added in double.
 *
 * A register lane holds one output row, so the float work is one multiply, one convert and
 * one FMA per block for 8 rows, and there is no horizontal float sum at the end; the
 * integer sums of the 8 rows are reduced to their lanes with three vphaddd. For that the
 * rows of a group are stored per block as [8 fp16 scales | rows 0,4 | rows 1,5 | rows 2,6 |
 * rows 3,7] (16 code bytes per row: value j in the low nibble of byte j, value j + 16 in its
 * high nibble, as in GGUF), so that one 32-byte load unpacks to two rows and the scales to
 * the lanes in row order. Repacked once at load, in place (the same bytes), by
 * cpu_prepare_weight; rows past the last whole group keep the GGUF layout and go through
 * the single-row kernel of the level, which has the same arithmetic. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdlib.h>
#include <string.h>

#include "../quant.h"
#include "q4_0x8.h"
#include "simd_avx2.h"

/* Bytes of one block of a group: 8 scales and 8 x 16 code bytes (= 8 Q4_0 blocks). */
enum { Q4X8_BLOCK = 8 * 18 };

void cpu_prepare_weight(struct kbackend *b, struct kmat *w) {
    struct cpu_backend *c = b->impl;
    if (w->type != DTYPE_Q4_0 || w->layout != KMAT_ROWS || c->simd < KSIMD_AVX2 || w->n_out < 8 || w->n_in % 32 ||
        w->row_stride != (size_t)(w->n_in / 32) * 18)
        return;
    const int64_t nb = w->n_in / 32, groups = w->n_out / 8;
    const size_t gbytes = 8 * w->row_stride;
    uint8_t *tmp = malloc(gbytes);
    if (!tmp) return; /* stays in the GGUF layout: same results, slower */
    for (int64_t g = 0; g < groups; g++) {
        uint8_t *grp = (uint8_t *)w->data + (size_t)g * gbytes;
        memcpy(tmp, grp, gbytes);
        for (int64_t bl = 0; bl < nb; bl++) {
            uint8_t *dst = grp + (size_t)bl * Q4X8_BLOCK;
            for (int r = 0; r < 8; r++) {
                const blk_q4_0 *x = (const blk_q4_0 *)(tmp + (size_t)r * w->row_stride) + bl;
                memcpy(dst + 2 * r, &x->d, 2);
                memcpy(dst + 16 + 32 * (r % 4) + 16 * (r / 4), x->qs, 16);
            }
        }
    }
    free(tmp);
    w->layout = KMAT_Q4_0X8;
}

#if defined(__x86_64__)

/* The integer sums isum_b of the 8 rows for one token, lane r = row r. lo/hi: the low and
 * high nibbles of the 4 row-pair registers; al/ah: the token's values 0..15 and 16..31 of
 * the block in both 128-bit halves; s8: 8 sum_a in every lane. */
A2I __m256i q4x8_isum(const __m256i *lo, const __m256i *hi, __m256i al, __m256i ah, __m256i s8) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i m[4];
    for (int k = 0; k < 4; k++)
        m[k] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo[k], al), _mm256_maddubs_epi16(hi[k], ah)),
                                 ones);
    /* m[k]: lanes 0-3 row k, 4-7 row k + 4; after three pairwise sums: rows 0..7 */
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(m[0], m[1]), _mm256_hadd_epi32(m[2], m[3]));
    return _mm256_sub_epi32(h, s8);
}

/* Block bl of a group: the code nibbles of the 8 rows and their scales (lane r = row r). */
A2I __m256 q4x8_unpack(const uint8_t *grp, int64_t bl, __m256i *lo, __m256i *hi) {
    const uint8_t *p = grp + (size_t)bl * Q4X8_BLOCK;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int k = 0; k < 4; k++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k));
        lo[k] = _mm256_and_si256(v, m4);
        hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* One token's per-block operands. */
struct q4x8_tok {
    const int8_t *q;
    const float *d;
    const int32_t *sum;
};

A2I void q4x8_block(const __m256i *lo, const __m256i *hi, __m256 dw, const struct q4x8_tok *t, int64_t bl,
                    __m256 *acc) {
    const int8_t *y = t->q + kact_pos32(bl, 0);
    const __m256i al = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)y));
    const __m256i ah = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(y + 32)));
    const __m256i s8 = _mm256_set1_epi32(8 * t->sum[bl]);
    const __m256i is = q4x8_isum(lo, hi, al, ah, s8);
    const __m256 sc = _mm256_mul_ps(dw, _mm256_set1_ps(t->d[bl]));
    *acc = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(is), *acc);
}

A2I void q4x8_dot_body(const uint8_t *grp, int64_t nb, const struct kact_rows *a, int64_t t0, const int NT, float *y,
                       int64_t ldy) {
    struct q4x8_tok tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct q4x8_tok){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_sum(a, t0 + k)};
        acc[k] = _mm256_setzero_ps();
    }
    for (int64_t bl = 0; bl < nb; bl++) {
        a2_prefetch((const char *)grp + (size_t)bl * Q4X8_BLOCK, Q4X8_BLOCK);
        __m256i lo[4], hi[4];
        const __m256 dw = q4x8_unpack(grp, bl, lo, hi);
        for (int k = 0; k < NT; k++) q4x8_block(lo, hi, dw, &tk[k], bl, &acc[k]);
    }
    for (int k = 0; k < NT; k++) _mm256_storeu_ps(y + k * ldy, acc[k]);
}

A2 void q4x8_dot_avx2(const uint8_t *grp, int64_t nb, const struct kact_rows *a, int64_t t0, int nt, float *y,
                      int64_t ldy) {
    switch (nt) {
    case 1: q4x8_dot_body(grp, nb, a, t0, 1, y, ldy); break;
    case 2: q4x8_dot_body(grp, nb, a, t0, 2, y, ldy); break;
    case 3: q4x8_dot_body(grp, nb, a, t0, 3, y, ldy); break;
    default: q4x8_dot_body(grp, nb, a, t0, 4, y, ldy); break;
    }
}

A2I void q4x8_gran_body(const uint8_t *grp, int64_t b0, int64_t b1, int64_t gb, const struct kact_rows *a,
                        int64_t t0, const int NT, double *acc8) {
    struct q4x8_tok tk[KDOT_NT];
    __m256 acc[KDOT_NT];
    __m256d dlo[KDOT_NT], dhi[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct q4x8_tok){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_sum(a, t0 + k)};
        acc[k] = _mm256_setzero_ps();
        dlo[k] = _mm256_loadu_pd(acc8 + 8 * k);
        dhi[k] = _mm256_loadu_pd(acc8 + 8 * k + 4);
    }
    for (int64_t bl = b0; bl < b1; bl++) {
        a2_prefetch((const char *)grp + (size_t)bl * Q4X8_BLOCK, Q4X8_BLOCK);
        __m256i lo[4], hi[4];
        const __m256 dw = q4x8_unpack(grp, bl, lo, hi);
        for (int k = 0; k < NT; k++) q4x8_block(lo, hi, dw, &tk[k], bl, &acc[k]);
        if ((bl + 1) % gb == 0 || bl + 1 == b1) { /* a granule ends: its float into the double sums */
            for (int k = 0; k < NT; k++) {
                dlo[k] = _mm256_add_pd(dlo[k], _mm256_cvtps_pd(_mm256_castps256_ps128(acc[k])));
                dhi[k] = _mm256_add_pd(dhi[k], _mm256_cvtps_pd(_mm256_extractf128_ps(acc[k], 1)));
                acc[k] = _mm256_setzero_ps();
            }
        }
    }
    for (int k = 0; k < NT; k++) {
        _mm256_storeu_pd(acc8 + 8 * k, dlo[k]);
        _mm256_storeu_pd(acc8 + 8 * k + 4, dhi[k]);
    }
}

A2 void q4x8_gran_avx2(const uint8_t *grp, int64_t b0, int64_t b1, int64_t gb, const struct kact_rows *a, int64_t t0,
                       int nt, double *acc8) {
    switch (nt) {
    case 1: q4x8_gran_body(grp, b0, b1, gb, a, t0, 1, acc8); break;
    case 2: q4x8_gran_body(grp, b0, b1, gb, a, t0, 2, acc8); break;
    case 3: q4x8_gran_body(grp, b0, b1, gb, a, t0, 3, acc8); break;
    default: q4x8_gran_body(grp, b0, b1, gb, a, t0, 4, acc8); break;
    }
}

/* One GGUF-layout row (the rows after the last group, or weights that were not repacked),
 * the same arithmetic with 128-bit integer sums and a scalar FMA per block. */
A2I void q4_0_row_body(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, const int NT, float *out) {
    const blk_q4_0 *x = w;
    const int64_t nb = n / 32;
    const __m128i m4 = _mm_set1_epi8(0x0F), ones = _mm_set1_epi16(1);
    float acc[KDOT_NT];
    struct q4x8_tok tk[KDOT_NT];
    for (int k = 0; k < NT; k++) {
        tk[k] = (struct q4x8_tok){kact_qs(a, t0 + k), kact_d(a, t0 + k), kact_sum(a, t0 + k)};
        acc[k] = 0.0f;
    }
    for (int64_t bl = 0; bl < nb; bl++) {
        const __m128i v = _mm_loadu_si128((const __m128i *)x[bl].qs);
        const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
        const float dw = a2_h2f(x[bl].d);
        for (int k = 0; k < NT; k++) {
            const int8_t *y = tk[k].q + kact_pos32(bl, 0);
            const __m128i p = _mm_madd_epi16(
                _mm_add_epi16(_mm_maddubs_epi16(lo, _mm_loadu_si128((const __m128i *)y)),
                              _mm_maddubs_epi16(hi, _mm_loadu_si128((const __m128i *)(y + 32)))),
                ones);
            const int32_t is = a2_hsum_i32_128(p) - 8 * tk[k].sum[bl];
            acc[k] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(dw * tk[k].d[bl]), _mm_set_ss((float)is), _mm_set_ss(acc[k])));
        }
    }
    for (int k = 0; k < NT; k++) out[k] = acc[k];
}
A2_KERNEL(a2_dot_q4_0_rows, q4_0_row_body)

kdot_fn kdot_avx2_q4_0(void) { return a2_dot_q4_0_rows; }

#else

void q4x8_dot_avx2(const uint8_t *grp, int64_t nb, const struct kact_rows *a, int64_t t0, int nt, float *y,
                   int64_t ldy) {
    (void)grp, (void)nb, (void)a, (void)t0, (void)nt, (void)y, (void)ldy;
}
void q4x8_gran_avx2(const uint8_t *grp, int64_t b0, int64_t b1, int64_t gb, const struct kact_rows *a, int64_t t0,
                    int nt, double *acc8) {
    (void)grp, (void)b0, (void)b1, (void)gb, (void)a, (void)t0, (void)nt, (void)acc8;
}
kdot_fn kdot_avx2_q4_0(void) { return NULL; }

#endif
