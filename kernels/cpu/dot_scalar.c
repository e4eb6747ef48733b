/* dot_scalar.c - portable matmul kernels: activation quantization and the block dot
 * products of every weight type, in plain C. This is the path on CPUs without AVX2 and
 * the arithmetic the SIMD kernels reproduce (same integer block sums, float scaling).
 *
 * Per block (32 values) or sub-block (16/32 values of a 256-value super-block):
 *   Q4_0 x Q8_0:  d_w d_a * sum (q_w - 8) q_a           Q8_0 x Q8_0: d_w d_a * sum q_w q_a
 *   Q5_0 x Q8_0:  d_w d_a * sum (q_w - 16) q_a
 *   Q4_1 x Q8_1:  d_w d_a * sum q_w q_a + m_w s_a       (Q5_1 alike)
 *   K x Q8_K:     d_w d_a * sum_g sc_g sum q_w q_a - dmin_w d_a * sum_g m_g bsum_g
 * Float weights: the float (F16/BF16: the widened) products summed in double, as
 * ggml's scalar ggml_vec_dot_f16/f32. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* the activation rounding must equal quant.c's */
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>

#include "simd_blocks.h"
#include "simd_dot.h"

/* ------------------------------------------------------------ activation quantization */

static inline int sd_nearest_int(float v) {
    float t = v + 12582912.f;
    return (int)(qb_f32_bits(t) & 0x007fffffu) - 0x00400000;
}

static void act_q8_32(const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    int8_t *qs = (int8_t *)row;
    float *dd = (float *)(row + lay->off_d), *ss = (float *)(row + lay->off_s), *dv = (float *)(row + lay->off_dv);
    int32_t *sums = (int32_t *)(row + lay->off_sum), *sv = (int32_t *)(row + lay->off_sv);
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = TP_MAX(amax, fabsf(xb[j]));
        /* as llama.cpp's x86 CPU backend quantizes activations: x * (127 / amax), rounded
         * half to even (its portable reference uses x / d and rounds halves away) */
        const float d = amax / 127;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = sd_nearest_int(xb[j] * id);
            qs[kact_pos32(b, j)] = (int8_t)q;
            sum += q;
        }
        dd[b] = qb_fp16_to_f32(qb_f32_to_fp16(d));
        sums[b] = sum;
        ss[b] = qb_fp16_to_f32(qb_f32_to_fp16((float)sum * d));
        for (int k = 0; k < 4; k++) {
            dv[8 * (b / 2) + 4 * (b & 1) + k] = dd[b];
            sv[8 * (b / 2) + 4 * (b & 1) + k] = 2 * sum;
        }
    }
    if (nb & 1) { /* the missing partner of the last block */
        for (int j = 0; j < 32; j++) qs[kact_pos32(nb, j)] = 0;
        for (int k = 0; k < 4; k++) dv[8 * (nb / 2) + 4 + k] = 0.0f, sv[8 * (nb / 2) + 4 + k] = 0;
    }
}

static void act_q8_K(const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    int8_t *qs = (int8_t *)row;
    float *dd = (float *)(row + lay->off_d);
    int16_t *bsums = (int16_t *)(row + lay->off_sum);
    for (int64_t b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 256; j++)
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        int8_t *q = qs + 256 * b;
        if (amax == 0.0f) {
            memset(q, 0, 256);
            memset(bsums + 16 * b, 0, 16 * sizeof *bsums);
            dd[b] = 0.0f;
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < 256; j++) q[j] = (int8_t)TP_MIN(127, sd_nearest_int(iscale * xb[j]));
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[16 * g + j];
            bsums[16 * b + g] = (int16_t)s;
        }
        dd[b] = 1 / iscale;
    }
}

void kact_quantize_scalar(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay) {
    uint16_t *h = (uint16_t *)row;
    switch (f) {
    case KACT_F16:
        for (int64_t i = 0; i < n; i++) h[i] = qb_f32_to_fp16(x[i]);
        break;
    case KACT_BF16:
        for (int64_t i = 0; i < n; i++) h[i] = qb_f32_to_bf16(x[i]);
        break;
    case KACT_Q8_32: act_q8_32(x, n, row, lay); break;
    case KACT_Q8_K: act_q8_K(x, n, row, lay); break;
    case KACT_F32: break;
    }
}

/* ------------------------------------------------------------------ float weights */

static void dot_f32(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    const float *x = w;
    for (int k = 0; k < nt; k++) {
        const float *y = (const float *)kact_qs(a, t0 + k);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)(x[i] * y[i]);
        out[k] = (float)s;
    }
}

static void dot_f16(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    const uint16_t *x = w;
    for (int k = 0; k < nt; k++) {
        const uint16_t *y = (const uint16_t *)kact_qs(a, t0 + k);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)(qb_fp16_to_f32(x[i]) * qb_fp16_to_f32(y[i]));
        out[k] = (float)s;
    }
}

static void dot_bf16(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    const uint16_t *x = w;
    for (int k = 0; k < nt; k++) {
        const uint16_t *y = (const uint16_t *)kact_qs(a, t0 + k);
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += (double)(qb_bf16_to_f32(x[i]) * qb_bf16_to_f32(y[i]));
        out[k] = (float)s;
    }
}

/* ------------------------------------------------------------ 32-value block weights */

/* Weight block i as 32 integers (offset applied), its scale and (Q4_1/Q5_1) its min. */
static void w32_decode(enum dtype t, const void *w, int64_t i, int8_t q[32], float *d, float *m) {
    *m = 0.0f;
    switch (t) {
    case DTYPE_Q4_0: {
        const blk_q4_0 *x = (const blk_q4_0 *)w + i;
        for (int j = 0; j < 16; j++) q[j] = (int8_t)((x->qs[j] & 0xF) - 8), q[j + 16] = (int8_t)((x->qs[j] >> 4) - 8);
        *d = qb_fp16_to_f32(x->d);
        break;
    }
    case DTYPE_Q4_1: {
        const blk_q4_1 *x = (const blk_q4_1 *)w + i;
        for (int j = 0; j < 16; j++) q[j] = (int8_t)(x->qs[j] & 0xF), q[j + 16] = (int8_t)(x->qs[j] >> 4);
        *d = qb_fp16_to_f32(x->d);
        *m = qb_fp16_to_f32(x->m);
        break;
    }
    case DTYPE_Q5_0:
    case DTYPE_Q5_1: {
        const uint8_t *qh, *qs;
        if (t == DTYPE_Q5_0) {
            const blk_q5_0 *x = (const blk_q5_0 *)w + i;
            qh = x->qh, qs = x->qs, *d = qb_fp16_to_f32(x->d);
        } else {
            const blk_q5_1 *x = (const blk_q5_1 *)w + i;
            qh = x->qh, qs = x->qs, *d = qb_fp16_to_f32(x->d), *m = qb_fp16_to_f32(x->m);
        }
        uint32_t h;
        memcpy(&h, qh, 4);
        const int off = t == DTYPE_Q5_0 ? 16 : 0;
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(((qs[j] & 0xF) | (((h >> j) & 1) << 4)) - off);
            q[j + 16] = (int8_t)(((qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4)) - off);
        }
        break;
    }
    case DTYPE_Q8_0: {
        const blk_q8_0 *x = (const blk_q8_0 *)w + i;
        memcpy(q, x->qs, 32);
        *d = qb_fp16_to_f32(x->d);
        break;
    }
    default: memset(q, 0, 32), *d = 0.0f; break;
    }
}

static inline void dot_w32(enum dtype t, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt,
                           float *out) {
    const bool has_min = t == DTYPE_Q4_1 || t == DTYPE_Q5_1;
    float acc[KDOT_NT] = {0}, accm[KDOT_NT] = {0};
    for (int64_t i = 0; i < n / 32; i++) {
        int8_t q[32];
        float dw, mw;
        w32_decode(t, w, i, q, &dw, &mw);
        for (int k = 0; k < nt; k++) {
            const int8_t *y = kact_qs(a, t0 + k);
            int sumi = 0;
            for (int j = 0; j < 32; j++) sumi += q[j] * y[kact_pos32(i, j)];
            acc[k] += dw * kact_d(a, t0 + k)[i] * (float)sumi;
            if (has_min) accm[k] += mw * kact_s(a, t0 + k)[i];
        }
    }
    for (int k = 0; k < nt; k++) out[k] = acc[k] + accm[k];
}

#define SD_W32(name, T)                                                                                  \
    static void name(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) { \
        dot_w32(T, w, n, a, t0, nt, out);                                                                \
    }
SD_W32(dot_q4_0, DTYPE_Q4_0)
SD_W32(dot_q4_1, DTYPE_Q4_1)
SD_W32(dot_q5_0, DTYPE_Q5_0)
SD_W32(dot_q5_1, DTYPE_Q5_1)
SD_W32(dot_q8_0, DTYPE_Q8_0)

/* ------------------------------------------------------------------ K-quant weights */

/* A super-block as 256 integers (offsets applied), a scale and a min per group of 16
 * (sub-blocks of 32 repeat theirs), and the two super-block factors. */
struct kdec {
    int8_t q[256];
    int16_t sc[16], mn[16];
    float d, dmin;
};

static void k_decode(enum dtype t, const void *w, int64_t i, struct kdec *k) {
    memset(k->mn, 0, sizeof k->mn);
    k->dmin = 0.0f;
    switch (t) {
    case DTYPE_Q2_K: {
        const blk_q2_K *x = (const blk_q2_K *)w + i;
        for (int n = 0; n < 256; n++) k->q[n] = (int8_t)((x->qs[32 * (n / 128) + n % 32] >> (2 * ((n / 32) % 4))) & 3);
        for (int g = 0; g < 16; g++) k->sc[g] = x->scales[g] & 0xF, k->mn[g] = x->scales[g] >> 4;
        k->d = qb_fp16_to_f32(x->d), k->dmin = qb_fp16_to_f32(x->dmin);
        break;
    }
    case DTYPE_Q3_K: {
        const blk_q3_K *x = (const blk_q3_K *)w + i;
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            int lo = (x->qs[32 * h + l] >> (2 * s)) & 3, hi = (x->hmask[l] >> (4 * h + s)) & 1;
            k->q[n] = (int8_t)(lo - (hi ? 0 : 4));
        }
        int8_t sc[16];
        qb_q3k_scales(x->scales, sc);
        for (int g = 0; g < 16; g++) k->sc[g] = sc[g];
        k->d = qb_fp16_to_f32(x->d);
        break;
    }
    case DTYPE_Q4_K:
    case DTYPE_Q5_K: {
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t d, dmin;
        if (t == DTYPE_Q4_K) {
            const blk_q4_K *x = (const blk_q4_K *)w + i;
            scales = x->scales, qs = x->qs, d = x->d, dmin = x->dmin;
        } else {
            const blk_q5_K *x = (const blk_q5_K *)w + i;
            scales = x->scales, qs = x->qs, qh = x->qh, d = x->d, dmin = x->dmin;
        }
        for (int n = 0; n < 256; n++) {
            int p = n / 64, half = (n / 32) % 2, l = n % 32;
            int q = half ? qs[32 * p + l] >> 4 : qs[32 * p + l] & 0xF;
            if (qh) q |= ((qh[l] >> (2 * p + half)) & 1) << 4;
            k->q[n] = (int8_t)q;
        }
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            qb_scale_min_k4(j, scales, &sc, &m);
            k->sc[2 * j] = k->sc[2 * j + 1] = sc;
            k->mn[2 * j] = k->mn[2 * j + 1] = m;
        }
        k->d = qb_fp16_to_f32(d), k->dmin = qb_fp16_to_f32(dmin);
        break;
    }
    case DTYPE_Q6_K: {
        const blk_q6_K *x = (const blk_q6_K *)w + i;
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            uint8_t b = x->ql[64 * h + l + 32 * (s & 1)];
            int lo = s >= 2 ? b >> 4 : b & 0xF, hi = (x->qh[32 * h + l] >> (2 * s)) & 3;
            k->q[n] = (int8_t)((lo | (hi << 4)) - 32);
        }
        for (int g = 0; g < 16; g++) k->sc[g] = x->scales[g];
        k->d = qb_fp16_to_f32(x->d);
        break;
    }
    default: memset(k, 0, sizeof *k); break;
    }
}

static inline void dot_wk(enum dtype t, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt,
                          float *out) {
    float acc[KDOT_NT] = {0}, accm[KDOT_NT] = {0};
    struct kdec k;
    for (int64_t i = 0; i < n / 256; i++) {
        k_decode(t, w, i, &k);
        for (int j = 0; j < nt; j++) {
            const int8_t *y = kact_qs(a, t0 + j) + 256 * i;
            const int16_t *bs = kact_bsums(a, t0 + j) + 16 * i;
            const float dy = kact_d(a, t0 + j)[i];
            int sumi = 0, summ = 0;
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int l = 0; l < 16; l++) s += k.q[16 * g + l] * y[16 * g + l];
                sumi += k.sc[g] * s;
                summ += k.mn[g] * bs[g];
            }
            acc[j] += k.d * dy * (float)sumi;
            accm[j] += k.dmin * dy * (float)summ;
        }
    }
    for (int j = 0; j < nt; j++) out[j] = acc[j] - accm[j];
}

#define SD_WK(name, T)                                                                                   \
    static void name(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) { \
        dot_wk(T, w, n, a, t0, nt, out);                                                                 \
    }
SD_WK(dot_q2_K, DTYPE_Q2_K)
SD_WK(dot_q3_K, DTYPE_Q3_K)
SD_WK(dot_q4_K, DTYPE_Q4_K)
SD_WK(dot_q5_K, DTYPE_Q5_K)
SD_WK(dot_q6_K, DTYPE_Q6_K)

kdot_fn kdot_scalar(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return dot_f32;
    case DTYPE_F16: return dot_f16;
    case DTYPE_BF16: return dot_bf16;
    case DTYPE_Q4_0: return dot_q4_0;
    case DTYPE_Q4_1: return dot_q4_1;
    case DTYPE_Q5_0: return dot_q5_0;
    case DTYPE_Q5_1: return dot_q5_1;
    case DTYPE_Q8_0: return dot_q8_0;
    case DTYPE_Q2_K: return dot_q2_K;
    case DTYPE_Q3_K: return dot_q3_K;
    case DTYPE_Q4_K: return dot_q4_K;
    case DTYPE_Q5_K: return dot_q5_K;
    case DTYPE_Q6_K: return dot_q6_K;
    default: return NULL;
    }
}
