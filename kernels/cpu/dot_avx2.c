/* dot_avx2.c - AVX2 + FMA + F16C matmul kernels: activation quantization, and the dot
 * products of the float and 32-value block weight types (K-quants: dot_avx2_k.c), with
 * the same integer block sums as dot_scalar.c.
 *
 * Each kernel takes one weight row and up to KDOT_NT tokens. Two weight blocks side by
 * side, in the interleaved order of the activation rows (simd_dot.h), are loaded and
 * unpacked to bytes once, then multiplied with each token's int8 activations by
 * vpmaddubsw (u8 x s8 -> pairs of s16) and vpmaddwd (-> s32): lanes 0-3 sum block A,
 * 4-7 block B. Offsets of the unsigned codes are taken out with the activation block
 * sums (Q4_0: sum (q - 8) a = sum q a - 8 sum a; Q5_0: - 16 sum a); Q8_0 uses the sign
 * trick (|w| x sign(a, w)). Lane sums are converted to float once per block pair and
 * accumulated with FMA, alternating two accumulators per token so that consecutive FMAs
 * do not wait on each other. Compiled per function for avx2,fma,f16c: the library needs
 * no -m flags, and matmul.c calls these only after checking the CPU. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* activation rounding must equal dot_scalar.c's */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "simd_avx2.h"

#if defined(__x86_64__)

#include "dot_avx2_blocks.h"
#include "q4_0x8.h"

/* ------------------------------------------------------------ activation quantization */

/* Packs 4 x 8 int32 (each within int8 range) into 32 int8 in order. */
A2I __m256i a2_pack_i32x32(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
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
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f; /* as llama.cpp's x86 backend */
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid)); /* halves to even */
        const __m256i packed = a2_pack_i32x32(q[0], q[1], q[2], q[3]);
        uint8_t *dst = row + kact_pos32(b, 0);
        _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(packed));
        _mm_storeu_si128((__m128i *)(dst + 32), _mm256_extracti128_si256(packed, 1));
        const int sum = a2_hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        dd[b] = qb_fp16_to_f32(qb_f32_to_fp16(d));
        sums[b] = sum;
        ss[b] = qb_fp16_to_f32(qb_f32_to_fp16((float)sum * d));
        _mm_storeu_ps(dv + 8 * (b / 2) + 4 * (b & 1), _mm_set1_ps(dd[b]));
        _mm_storeu_si128((__m128i *)(sv + 8 * (b / 2) + 4 * (b & 1)), _mm_set1_epi32(2 * sum));
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
                q[k] = _mm256_min_epi32(
                    q127, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * g + 8 * k), vis)));
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
A2_W32(DTYPE_Q4_1, q4_1)
A2_W32(DTYPE_Q5_0, q5_0)
A2_W32(DTYPE_Q5_1, q5_1)
A2_W32(DTYPE_Q8_0, q8_0)

kdot_fn kdot_avx2(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return a2_dot_f32;
    case DTYPE_F16: return a2_dot_f16;
    case DTYPE_BF16: return a2_dot_bf16;
    case DTYPE_Q4_0: return kdot_avx2_q4_0(); /* row-sequential: q4_0x8.c */
    case DTYPE_Q4_1: return a2_dot_q4_1;
    case DTYPE_Q5_0: return a2_dot_q5_0;
    case DTYPE_Q5_1: return a2_dot_q5_1;
    case DTYPE_Q8_0: return a2_dot_q8_0;
    default: return kdot_avx2_k(t);
    }
}

#else /* not x86-64 */

void kact_quantize_avx2(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    kact_quantize_scalar(f, x, n, row, lay);
}
kdot_fn kdot_avx2(enum dtype t) { return NULL; }

#endif
