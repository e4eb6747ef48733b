/* quant.c - scalar reference (de)quantization of every ggml block format tpllm reads.
 *
 * Dequantization computes each value with the same float operations, in the same order,
 * as ggml's dequantize_row_* and the gguf Python package (e.g. Q4_K: (d*sc)*q - dmin*m),
 * so results are bit-exact. The legacy quantizers (Q4_0 .. Q8_0, Q8_1) and Q8_K follow
 * ggml's quantize_row_*_ref rounding step for step. The K-quant quantizers are simple and
 * conservative, not ggml's search: each sub-block's range is covered by rounding its
 * scale up, so every value is within half a decoded step of the input.
 *
 * Contraction of a*b+c into one fused multiply-add would change results by one rounding
 * (ggml's reference and numpy round the product first), so it is off for this file. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "quant.h"

#include "base.h"

#include <math.h>
#include <stdbool.h>

#include "cpu/simd_blocks.h"

float fp16_to_f32(uint16_t h) { return qb_fp16_to_f32(h); }
uint16_t f32_to_fp16(float f) { return qb_f32_to_fp16(f); }
float bf16_to_f32(uint16_t h) { return qb_bf16_to_f32(h); }
uint16_t f32_to_bf16(float f) { return qb_f32_to_bf16(f); }

/* ggml's nearest_int: round to nearest even through the 1.5 * 2^23 magic number
 * (valid for |v| <= 2^22, which every caller's value is). */
static inline int q_nearest_int(float v) {
    float t = v + 12582912.f;
    return (int)(qb_f32_bits(t) & 0x007fffffu) - 0x00400000;
}

/* ---------------------------------------------------------------- dequantization */

static void deq_q4_0(const blk_q4_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((x[i].qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const blk_q4_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d), m = qb_fp16_to_f32(x[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(x[i].qs[j] & 0xF) * d + m;
            y[j + 16] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

static inline uint32_t q_load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void deq_q5_0(const blk_q5_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d);
        const uint32_t qh = q_load_u32(x[i].qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) & 1u) << 4, h1 = (int)((qh >> (j + 16)) & 1u) << 4;
            y[j] = (float)(((x[i].qs[j] & 0xF) | h0) - 16) * d;
            y[j + 16] = (float)(((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void deq_q5_1(const blk_q5_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d), m = qb_fp16_to_f32(x[i].m);
        const uint32_t qh = q_load_u32(x[i].qh);
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) & 1u) << 4, h1 = (int)((qh >> (j + 16)) & 1u) << 4;
            y[j] = (float)((x[i].qs[j] & 0xF) | h0) * d + m;
            y[j + 16] = (float)((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void deq_q8_0(const blk_q8_0 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d);
        for (int j = 0; j < 32; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

static void deq_q8_1(const blk_q8_1 *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        const float d = qb_fp16_to_f32(x[i].d);
        for (int j = 0; j < 32; j++) y[j] = (float)x[i].qs[j] * d;
    }
}

static void deq_q2_K(const blk_q2_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qb_fp16_to_f32(x[i].d), dmin = qb_fp16_to_f32(x[i].dmin);
        for (int n = 0; n < 256; n++, y++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            uint8_t sc = x[i].scales[n / 16];
            const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
            *y = dl * (float)((x[i].qs[32 * h + l] >> (2 * s)) & 3) - ml;
        }
    }
}

static void deq_q3_K(const blk_q3_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qb_fp16_to_f32(x[i].d);
        int8_t sc[16];
        qb_q3k_scales(x[i].scales, sc);
        for (int n = 0; n < 256; n++, y++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            int lo = (x[i].qs[32 * h + l] >> (2 * s)) & 3;
            int hi = (x[i].hmask[l] >> (4 * h + s)) & 1;
            const float dl = d * (float)sc[n / 16];
            *y = dl * (float)(lo - (hi ? 0 : 4));
        }
    }
}

/* One Q4_K / Q5_K super-block: 8 sub-blocks of 32 with 6-bit scales and mins; qh (Q5_K
 * only, else NULL) holds the fifth bit of each value. */
static void deq_k45_block(uint16_t dh, uint16_t dminh, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                          float *y) {
    const float d = qb_fp16_to_f32(dh), dmin = qb_fp16_to_f32(dminh);
    for (int p = 0; p < 4; p++) {
        for (int half = 0; half < 2; half++, y += 32) {
            uint8_t sc, m;
            qb_scale_min_k4(2 * p + half, scales, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                int q = half ? qs[32 * p + l] >> 4 : qs[32 * p + l] & 0xF;
                if (qh) q |= ((qh[l] >> (2 * p + half)) & 1) << 4;
                y[l] = dl * (float)q - ml;
            }
        }
    }
}

static void deq_q4_K(const blk_q4_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 256) deq_k45_block(x[i].d, x[i].dmin, x[i].scales, x[i].qs, NULL, y);
}

static void deq_q5_K(const blk_q5_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 256) deq_k45_block(x[i].d, x[i].dmin, x[i].scales, x[i].qs, x[i].qh, y);
}

static void deq_q6_K(const blk_q6_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = qb_fp16_to_f32(x[i].d);
        for (int n = 0; n < 256; n++, y++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            uint8_t b = x[i].ql[64 * h + l + 32 * (s & 1)];
            int lo = s >= 2 ? b >> 4 : b & 0xF;
            int hi = (x[i].qh[32 * h + l] >> (2 * s)) & 3;
            const float dl = d * (float)x[i].scales[n / 16];
            *y = dl * (float)((lo | (hi << 4)) - 32);
        }
    }
}

static void deq_q8_K(const blk_q8_K *x, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 256)
        for (int j = 0; j < 256; j++) y[j] = x[i].d * (float)x[i].qs[j];
}

/* Dequantizes n values of type t from src into y. n must be a multiple of the type's
 * block size; src holds n / block_size blocks (2-byte aligned, 4 for F32 and Q8_K).
 * Types: every dtype_supported() type plus Q8_1 and Q8_K; others leave y untouched. */
void quant_dequantize_row(enum dtype t, const void *src, float *y, int64_t n) {
    if (n <= 0) return;
    const int64_t nb32 = n / 32, nbk = n / 256;
    switch (t) {
    case DTYPE_F32: memcpy(y, src, (size_t)n * sizeof(float)); break;
    case DTYPE_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) y[i] = qb_fp16_to_f32(h[i]);
        break;
    }
    case DTYPE_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) y[i] = qb_bf16_to_f32(h[i]);
        break;
    }
    case DTYPE_Q4_0: deq_q4_0(src, y, nb32); break;
    case DTYPE_Q4_1: deq_q4_1(src, y, nb32); break;
    case DTYPE_Q5_0: deq_q5_0(src, y, nb32); break;
    case DTYPE_Q5_1: deq_q5_1(src, y, nb32); break;
    case DTYPE_Q8_0: deq_q8_0(src, y, nb32); break;
    case DTYPE_Q8_1: deq_q8_1(src, y, nb32); break;
    case DTYPE_Q2_K: deq_q2_K(src, y, nbk); break;
    case DTYPE_Q3_K: deq_q3_K(src, y, nbk); break;
    case DTYPE_Q4_K: deq_q4_K(src, y, nbk); break;
    case DTYPE_Q5_K: deq_q5_K(src, y, nbk); break;
    case DTYPE_Q6_K: deq_q6_K(src, y, nbk); break;
    case DTYPE_Q8_K: deq_q8_K(src, y, nbk); break;
    default: break;
    }
}

/* ---------------------------------------------------- legacy quantizers (ggml _ref) */

/* The value of largest magnitude (the first one on ties), as ggml's q4_0/q5_0 search. */
static float q_signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

static void q_min_max(const float *x, int n, float *mn, float *mx) {
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

static void quant_q4_0(const float *x, blk_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = q_signed_absmax(x, 32) / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            const int q0 = TP_MIN(15, (int8_t)(x0 + 8.5f)), q1 = TP_MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q4_1(const float *x, blk_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float min, max;
        q_min_max(x, 32, &min, &max);
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        y[i].m = qb_f32_to_fp16(min);
        for (int j = 0; j < 16; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
            const int q0 = TP_MIN(15, (int8_t)(x0 + 0.5f)), q1 = TP_MIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q5_0(const float *x, blk_q5_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = q_signed_absmax(x, 32) / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            const int q0 = TP_MIN(31, (int8_t)(x0 + 16.5f)), q1 = TP_MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quant_q5_1(const float *x, blk_q5_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float min, max;
        q_min_max(x, 32, &min, &max);
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        y[i].m = qb_f32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
            const int q0 = (uint8_t)(x0 + 0.5f), q1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static float q_absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) amax = TP_MAX(amax, fabsf(x[j]));
    return amax;
}

static void quant_q8_0(const float *x, blk_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = q_absmax(x, 32) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        for (int j = 0; j < 32; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quant_q8_1(const float *x, blk_q8_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        const float d = q_absmax(x, 32) / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = qb_f32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = qb_f32_to_fp16((float)sum * d);
    }
}

static void quant_q8_K(const float *x, blk_q8_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        const float max = q_signed_absmax(x, 256);
        if (max == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < 256; j++) y[i].qs[j] = (int8_t)TP_MIN(127, q_nearest_int(iscale * x[j]));
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[i].qs[16 * g + j];
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

/* ----------------------------------------------------- simple K-quant quantizers */

/* The smallest fp16 value >= v (v >= 0 and finite below 65504): the super-block scales
 * are rounded up so that sub-block scales derived from them never need to exceed their
 * field's maximum. */
static uint16_t q_fp16_up(float v) {
    uint16_t h = qb_f32_to_fp16(v);
    if (qb_fp16_to_f32(h) < v && h < 0x7bff) h++;
    return h;
}

/* Asymmetric sub-blocks (Q2_K, Q4_K, Q5_K): values dl*q - ml with q in [0, qmax],
 * dl = d*ls, ml = dmin*lm, and ls, lm in [0, smax]. For nsub sub-blocks of len values
 * of x this picks d, dmin (fp16 bits), ls[], lm[] and the quants L[]: the offset ml covers
 * the sub-block's minimum (clamped to <= 0) and dl*qmax - ml reaches its maximum, both by
 * rounding up, so each value is within dl/2 of its dequantization. */
static void q_asym_search(const float *x, int nsub, int len, int qmax, int smax, uint16_t *d_out,
                          uint16_t *dmin_out, uint8_t *ls, uint8_t *lm, uint8_t *L) {
    float lo[16], hi[16], max_m = 0.0f;
    for (int j = 0; j < nsub; j++) {
        q_min_max(x + j * len, len, &lo[j], &hi[j]);
        if (lo[j] > 0.0f) lo[j] = 0.0f;
        max_m = TP_MAX(max_m, -lo[j]);
    }
    const uint16_t dmin_h = q_fp16_up(max_m / (float)smax);
    const float dmin = qb_fp16_to_f32(dmin_h);
    float ml[16], max_top = 0.0f;
    for (int j = 0; j < nsub; j++) {
        int m = dmin > 0.0f ? (int)ceilf(-lo[j] / dmin) : 0;
        lm[j] = (uint8_t)TP_MIN(m, smax);
        ml[j] = dmin * (float)lm[j];
        max_top = TP_MAX(max_top, hi[j] + ml[j]);
    }
    const uint16_t d_h = q_fp16_up(max_top / (float)(qmax * smax));
    const float d = qb_fp16_to_f32(d_h);
    for (int j = 0; j < nsub; j++) {
        int s = d > 0.0f ? (int)ceilf((hi[j] + ml[j]) / (d * (float)qmax)) : 0;
        ls[j] = (uint8_t)TP_MIN(s, smax);
        const float dl = d * (float)ls[j];
        for (int l = 0; l < len; l++) {
            int q = dl > 0.0f ? q_nearest_int((x[j * len + l] + ml[j]) / dl) : 0;
            L[j * len + l] = (uint8_t)TP_MAX(0, TP_MIN(qmax, q));
        }
    }
    *d_out = d_h;
    *dmin_out = dmin_h;
}

/* Symmetric sub-blocks (Q3_K, Q6_K): values d*sc*q with q in [-qmax, qmax] and sc in
 * [0, smax]; stores q + bias in L. */
static uint16_t q_sym_search(const float *x, int nsub, int len, int qmax, int smax, int bias, int8_t *sc,
                             uint8_t *L) {
    float s[16], max_s = 0.0f;
    for (int j = 0; j < nsub; j++) {
        s[j] = q_absmax(x + j * len, len) / (float)qmax;
        max_s = TP_MAX(max_s, s[j]);
    }
    const uint16_t d_h = q_fp16_up(max_s / (float)smax);
    const float d = qb_fp16_to_f32(d_h);
    for (int j = 0; j < nsub; j++) {
        int v = d > 0.0f ? (int)ceilf(s[j] / d) : 0;
        sc[j] = (int8_t)TP_MIN(v, smax);
        const float dl = d * (float)sc[j];
        for (int l = 0; l < len; l++) {
            int q = dl > 0.0f ? q_nearest_int(x[j * len + l] / dl) : 0;
            L[j * len + l] = (uint8_t)(TP_MAX(-qmax, TP_MIN(qmax, q)) + bias);
        }
    }
    return d_h;
}

static void quant_q2_K(const float *x, blk_q2_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        uint8_t ls[16], lm[16], L[256];
        q_asym_search(x, 16, 16, 3, 15, &y[i].d, &y[i].dmin, ls, lm, L);
        for (int j = 0; j < 16; j++) y[i].scales[j] = (uint8_t)(ls[j] | (lm[j] << 4));
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *q = L + 128 * h + l;
                y[i].qs[32 * h + l] = (uint8_t)(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
            }
    }
}

static void quant_q3_K(const float *x, blk_q3_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        int8_t sc[16];
        uint8_t L[256]; /* q + 4, in [1, 7] */
        y[i].d = q_sym_search(x, 16, 16, 3, 31, 4, sc, L);
        memset(y[i].scales, 0, sizeof y[i].scales);
        for (int j = 0; j < 16; j++) {
            int l = sc[j] + 32;
            if (j < 8)
                y[i].scales[j] |= (uint8_t)(l & 0xF);
            else
                y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            y[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        memset(y[i].qs, 0, sizeof y[i].qs);
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            y[i].qs[32 * h + l] |= (uint8_t)((L[n] & 3) << (2 * s));
            y[i].hmask[l] |= (uint8_t)((L[n] >> 2) << (4 * h + s));
        }
    }
}

static void quant_k4_scales(uint8_t *scales, const uint8_t *ls, const uint8_t *lm) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

static void quant_q4_K(const float *x, blk_q4_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        uint8_t ls[8], lm[8], L[256];
        q_asym_search(x, 8, 32, 15, 63, &y[i].d, &y[i].dmin, ls, lm, L);
        quant_k4_scales(y[i].scales, ls, lm);
        for (int p = 0; p < 4; p++)
            for (int l = 0; l < 32; l++) y[i].qs[32 * p + l] = (uint8_t)(L[64 * p + l] | (L[64 * p + 32 + l] << 4));
    }
}

static void quant_q5_K(const float *x, blk_q5_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        uint8_t ls[8], lm[8], L[256];
        q_asym_search(x, 8, 32, 31, 63, &y[i].d, &y[i].dmin, ls, lm, L);
        quant_k4_scales(y[i].scales, ls, lm);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int p = 0; p < 4; p++)
            for (int l = 0; l < 32; l++) {
                int a = L[64 * p + l], b = L[64 * p + 32 + l];
                y[i].qs[32 * p + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
                y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * p)) | ((b >> 4) << (2 * p + 1)));
            }
    }
}

static void quant_q6_K(const float *x, blk_q6_K *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 256) {
        uint8_t L[256]; /* q + 32, in [1, 63] */
        y[i].d = q_sym_search(x, 16, 16, 31, 127, 32, y[i].scales, L);
        memset(y[i].ql, 0, sizeof y[i].ql);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            y[i].ql[64 * h + l + 32 * (s & 1)] |= (uint8_t)((L[n] & 0xF) << (s >= 2 ? 4 : 0));
            y[i].qh[32 * h + l] |= (uint8_t)((L[n] >> 4) << (2 * s));
        }
    }
}

bool quant_can_quantize(enum dtype t) {
    switch (t) {
    case DTYPE_F32: case DTYPE_F16: case DTYPE_BF16:
    case DTYPE_Q4_0: case DTYPE_Q4_1: case DTYPE_Q5_0: case DTYPE_Q5_1:
    case DTYPE_Q8_0: case DTYPE_Q8_1: case DTYPE_Q8_K:
    case DTYPE_Q2_K: case DTYPE_Q3_K: case DTYPE_Q4_K: case DTYPE_Q5_K: case DTYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

/* Quantizes x[0..n) into dst as type t and returns the bytes written (0, writing
 * nothing, when quant_can_quantize(t) is false). n must be a multiple of the block size.
 * Besides the types quant.h lists, Q2_K..Q6_K are produced by the simple quantizers above
 * (valid blocks, not ggml's optimal ones). x must be finite for the block formats. */
size_t quant_quantize_row(enum dtype t, const float *x, void *dst, int64_t n) {
    if (!quant_can_quantize(t) || n <= 0) return 0;
    const int64_t nb32 = n / 32, nbk = n / 256;
    switch (t) {
    case DTYPE_F32: memcpy(dst, x, (size_t)n * sizeof(float)); break;
    case DTYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = qb_f32_to_fp16(x[i]);
        break;
    }
    case DTYPE_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = qb_f32_to_bf16(x[i]);
        break;
    }
    case DTYPE_Q4_0: quant_q4_0(x, dst, nb32); break;
    case DTYPE_Q4_1: quant_q4_1(x, dst, nb32); break;
    case DTYPE_Q5_0: quant_q5_0(x, dst, nb32); break;
    case DTYPE_Q5_1: quant_q5_1(x, dst, nb32); break;
    case DTYPE_Q8_0: quant_q8_0(x, dst, nb32); break;
    case DTYPE_Q8_1: quant_q8_1(x, dst, nb32); break;
    case DTYPE_Q8_K: quant_q8_K(x, dst, nbk); break;
    case DTYPE_Q2_K: quant_q2_K(x, dst, nbk); break;
    case DTYPE_Q3_K: quant_q3_K(x, dst, nbk); break;
    case DTYPE_Q4_K: quant_q4_K(x, dst, nbk); break;
    case DTYPE_Q5_K: quant_q5_K(x, dst, nbk); break;
    case DTYPE_Q6_K: quant_q6_K(x, dst, nbk); break;
    default: return 0;
    }
    return dtype_row_bytes(t, n);
}
