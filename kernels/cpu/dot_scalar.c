/* dot_scalar.c - portable matmul kernels: activation quantization and the block dot
 * products of every weight type, in plain C, giving the same bits as the AVX2 kernels
 * (dot_avx2.c, dot_avx2_k.c, dot_avx2_blocks.h): the AVX2 arithmetic is the canonical
 * one (the golden tests against llama.cpp check it), and this file repeats it operation
 * for operation on CPUs without AVX2, so a result never depends on the SIMD level.
 *
 * The math per block (32 values) or sub-block (16/32 values of a 256-value super-block):
 *   Q4_0 x Q8_0:  d_w d_a * sum (q_w - 8) q_a           Q8_0 x Q8_0: d_w d_a * sum q_w q_a
 *   Q5_0 x Q8_0:  d_w d_a * sum (q_w - 16) q_a
 *   Q4_1 x Q8_1:  d_w d_a * sum q_w q_a + m_w s_a       (Q5_1 alike)
 *   K x Q8_K:     d_w d_a * sum_g sc_g sum q_w q_a - dmin_w d_a * sum_g m_g bsum_g
 * Integer sums are exact in any order, but float sums are not: to give AVX2's bits the
 * kernels below keep AVX2's 8 float lanes (one __m256 accumulator = float[8]) and feed
 * each lane the same int32 partial sum, converted to float, scaled and added with the
 * same roundings in the same order. The lane layout (what lands in lane L):
 *
 *   F32/F16/BF16  two accumulators acc0/acc1: values 16j + L go to acc0 lane L, 16j + 8 + L
 *     to acc1 lane L, one fused multiply-add each; values past the last multiple of 16 go
 *     to a scalar tail (product rounded, then added). out = hsum(acc0 + acc1) + tail.
 *   Q4_0          row-sequential, not AVX2's lanes (q4_0x8.c: the AVX2 kernels keep one output
 *     row per lane, 8 rows at a time): per block the exact integer sum_j (q_j - 8) a_j,
 *     then acc = fma(d_w * d_a, (float) isum, acc), block after block from acc = 0.
 *   Q5_0 .. Q8_0  a block pair (A = block 2p, B = 2p + 1) per step, lanes 0-3 block A's,
 *     4-7 block B's: lane L sums the 8 products of values 4(L%4) + {0..3} and 16 +
 *     4(L%4) + {0..3} of its block (the activation pair layout of simd_dot.h). Q4_0
 *     subtracts its offset as 2 sum_a per lane (sv), Q5_0 4 sum_a; Q8_0 multiplies
 *     |w| by a with w's sign applied in int8 (vpsignb: -(-128) stays -128). Then per lane
 *     acc = fma(d_w * d_a, (float)lane, acc): of each four blocks the first pair goes to
 *     acc0 and the second to acc1, a trailing lone pair to acc0 and a last odd block (B
 *     lanes zero) to acc1. Q4_1/Q5_1 add m_w s_a by fma into a 2-lane accumulator accm
 *     (lane 0 block A, 1 block B), one for all pairs. out = hsum(acc0 + acc1) + (accm[0]
 *     + accm[1]), or + 0.0f for the types without min.
 *   K-quants  per super-block an int32 lane accumulator: chunk c (values 32c .. 32c+31,
 *     as unsigned codes: Q3_K q + 4, Q6_K q + 32) adds to lane L the products of values
 *     32c + 4L + {0..3} times the scale of their group of 16 (2c + L/4). Q3_K/Q6_K take
 *     out the code offset per lane: 4 (32) (bsum_2L sc_2L + bsum_2L+1 sc_2L+1). Then
 *     acc = fma(d_w * d_a, (float)lane, acc) in one float accumulator; the min terms of
 *     Q2_K (before), Q4_K/Q5_K (after) as acc = fma(-dmin_w * d_a, (float)m_L, acc) with
 *     Q2_K's m_L = bsum_2L min_2L + bsum_2L+1 min_2L+1, Q4_K/Q5_K's from the pair sums of
 *     the bsums times the 8 sub-block mins in lanes 0-3 (4-7 add 0). out = hsum(acc).
 *   hsum (a2_hsum of simd_avx2.h): ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)).
 *
 * No 16-bit intermediate of the AVX2 kernels (vpmaddubsw pair sums, their vpaddw) can
 * overflow for any input (codes <= 63, or Q8_0's |w| <= 128 times int8), so the lane sums
 * here are plain int arithmetic. fmaf() is the fused multiply-add where AVX2 uses
 * _mm256_fmadd_ps; everything else rounds each operation (fp-contract off below, so the
 * compiler never fuses a multiply and an add that AVX2 rounds separately). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* AVX2's roundings, and the activation rounding of quant.c */
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

/* ------------------------------------------------------------ the AVX2 register model */

/* a2_hsum of simd_avx2.h: the halves added lane by lane, then lanes 0 + 2 and 1 + 3, then
 * those two. */
static inline float sd_hsum(const float v[8]) {
    const float s0 = v[0] + v[4], s1 = v[1] + v[5], s2 = v[2] + v[6], s3 = v[3] + v[7];
    return (s0 + s2) + (s1 + s3);
}

/* hsum(a + b), the sum of two accumulators added lane by lane first. */
static inline float sd_hsum2(const float a[8], const float b[8]) {
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = a[l] + b[l];
    return sd_hsum(s);
}

/* ------------------------------------------------------------------ float weights */

enum sd_float { SD_F32, SD_F16, SD_BF16 };

static inline float sd_load(const void *p, int64_t i, enum sd_float f) {
    if (f == SD_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return f == SD_BF16 ? qb_bf16_to_f32(h) : qb_fp16_to_f32(h);
}

/* f32_body / h16_body of dot_avx2.c. */
static inline void dot_float(enum sd_float f, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt,
                             float *out) {
    const void *y[KDOT_NT];
    float acc0[KDOT_NT][8], acc1[KDOT_NT][8], tail[KDOT_NT];
    memset(acc0, 0, sizeof acc0), memset(acc1, 0, sizeof acc1), memset(tail, 0, sizeof tail);
    for (int k = 0; k < nt; k++) y[k] = kact_qs(a, t0 + k);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float wv[16];
        for (int l = 0; l < 16; l++) wv[l] = sd_load(w, i + l, f);
        for (int k = 0; k < nt; k++)
            for (int l = 0; l < 8; l++) {
                acc0[k][l] = fmaf(wv[l], sd_load(y[k], i + l, f), acc0[k][l]);
                acc1[k][l] = fmaf(wv[8 + l], sd_load(y[k], i + 8 + l, f), acc1[k][l]);
            }
    }
    for (; i < n; i++) {
        const float wv = sd_load(w, i, f);
        for (int k = 0; k < nt; k++) tail[k] += wv * sd_load(y[k], i, f);
    }
    for (int k = 0; k < nt; k++) out[k] = sd_hsum2(acc0[k], acc1[k]) + tail[k];
}

static void dot_f32(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    dot_float(SD_F32, w, n, a, t0, nt, out);
}
static void dot_f16(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    dot_float(SD_F16, w, n, a, t0, nt, out);
}
static void dot_bf16(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    dot_float(SD_BF16, w, n, a, t0, nt, out);
}

/* ------------------------------------------------------------ 32-value block weights */

/* Blocks i (A) and i + 1 (B, absent when `one`) as w32_pair_unpack of dot_avx2_blocks.h
 * holds them, in the activation pair order: lo = A's values 0..15, then B's 0..15; hi =
 * values 16..31 of A, then of B (B's bytes zero when absent). Unsigned codes, Q8_0's
 * signed values as their bytes. d and m: the fp16 scales and mins of A and B (0 for an
 * absent B, as F16C converts the zero half). */
struct sd_pair {
    uint8_t lo[32], hi[32];
    float d[2], m[2];
};

static void sd_pair_unpack(enum dtype t, const void *w, int64_t i, bool one, struct sd_pair *p) {
    memset(p, 0, sizeof *p);
    for (int b = 0; b < (one ? 1 : 2); b++) {
        const uint8_t *qs;
        uint32_t h = 0;
        uint16_t d, m = 0;
        switch (t) {
        case DTYPE_Q4_0: {
            const blk_q4_0 *x = (const blk_q4_0 *)w + i + b;
            qs = x->qs, d = x->d;
            break;
        }
        case DTYPE_Q4_1: {
            const blk_q4_1 *x = (const blk_q4_1 *)w + i + b;
            qs = x->qs, d = x->d, m = x->m;
            break;
        }
        case DTYPE_Q5_0: {
            const blk_q5_0 *x = (const blk_q5_0 *)w + i + b;
            qs = x->qs, d = x->d;
            memcpy(&h, x->qh, 4);
            break;
        }
        case DTYPE_Q5_1: {
            const blk_q5_1 *x = (const blk_q5_1 *)w + i + b;
            qs = x->qs, d = x->d, m = x->m;
            memcpy(&h, x->qh, 4);
            break;
        }
        default: {
            const blk_q8_0 *x = (const blk_q8_0 *)w + i + b;
            qs = (const uint8_t *)x->qs, d = x->d;
            break;
        }
        }
        uint8_t *lo = p->lo + 16 * b, *hi = p->hi + 16 * b;
        if (t == DTYPE_Q8_0) {
            memcpy(lo, qs, 16);
            memcpy(hi, qs + 16, 16);
        } else { /* nibbles; Q5's bit 4 of value j is bit j of qh (0 for Q4) */
            for (int j = 0; j < 16; j++) {
                lo[j] = (uint8_t)((qs[j] & 0xF) | ((h >> j) & 1) << 4);
                hi[j] = (uint8_t)((qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
            }
        }
        p->d[b] = qb_fp16_to_f32(d);
        p->m[b] = qb_fp16_to_f32(m);
    }
}

/* |w| x sign(a, w) of vpmaddubsw(vpsignb(w, w), vpsignb(a, w)): w x a, except that a =
 * -128 against a negative w stays -128 (int8 negation wraps): then -(w x a), as in the
 * AVX2 kernel. (|w| = 128 for w = -128 is exact: vpmaddubsw reads |w| unsigned.) */
static inline int sd_sign_mul(uint8_t wb, int8_t a) {
    const int p = (int8_t)wb * a;
    return a == -128 && (int8_t)wb < 0 ? -p : p;
}

/* Per token: the activation pointers and AVX2's accumulators. */
struct sd_tok32 {
    const int8_t *q;
    const float *dv, *s;
    const int32_t *sv;
    float acc0[8], acc1[8], accm[2];
};

/* w32_pair of dot_avx2_blocks.h for one token: the pair p (blocks i, i + 1) into the
 * lanes of acc (the token's acc0 or acc1) and its min terms into accm. */
static inline void sd_pair_dot(enum dtype t, const struct sd_pair *p, int64_t i, bool one, struct sd_tok32 *tk,
                               float *acc) {
    const int8_t *yl = tk->q + 32 * i, *yh = yl + 32;
    const int32_t *sv = tk->sv + 4 * i;
    const float *dv = tk->dv + 4 * i;
    for (int l = 0; l < 8; l++) {
        int32_t s = 0;
        for (int b = 4 * l; b < 4 * l + 4; b++) {
            if (t == DTYPE_Q8_0) s += sd_sign_mul(p->lo[b], yl[b]) + sd_sign_mul(p->hi[b], yh[b]);
            else s += p->lo[b] * yl[b] + p->hi[b] * yh[b];
        }
        if (t == DTYPE_Q4_0) s -= sv[l];     /* 8 sum_a, a quarter per lane */
        if (t == DTYPE_Q5_0) s -= 2 * sv[l]; /* 16 sum_a */
        const float sc = p->d[l / 4] * dv[l];
        acc[l] = fmaf(sc, (float)s, acc[l]);
    }
    if (t == DTYPE_Q4_1 || t == DTYPE_Q5_1) {
        tk->accm[0] = fmaf(p->m[0], tk->s[i], tk->accm[0]);
        tk->accm[1] = fmaf(p->m[1], one ? 0.0f : tk->s[i + 1], tk->accm[1]);
    }
}

/* w32_body of dot_avx2.c. */
static inline void dot_w32(enum dtype t, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt,
                           float *out) {
    struct sd_tok32 tk[KDOT_NT];
    memset(tk, 0, sizeof tk);
    for (int k = 0; k < nt; k++)
        tk[k].q = kact_qs(a, t0 + k), tk[k].dv = kact_dv(a, t0 + k), tk[k].s = kact_s(a, t0 + k),
        tk[k].sv = kact_sv(a, t0 + k);
    const int64_t nb = n / 32;
    struct sd_pair p;
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) { /* two pairs into the two accumulators */
        sd_pair_unpack(t, w, i, false, &p);
        for (int k = 0; k < nt; k++) sd_pair_dot(t, &p, i, false, &tk[k], tk[k].acc0);
        sd_pair_unpack(t, w, i + 2, false, &p);
        for (int k = 0; k < nt; k++) sd_pair_dot(t, &p, i + 2, false, &tk[k], tk[k].acc1);
    }
    if (i + 2 <= nb) {
        sd_pair_unpack(t, w, i, false, &p);
        for (int k = 0; k < nt; k++) sd_pair_dot(t, &p, i, false, &tk[k], tk[k].acc0);
        i += 2;
    }
    if (i < nb) {
        sd_pair_unpack(t, w, i, true, &p);
        for (int k = 0; k < nt; k++) sd_pair_dot(t, &p, i, true, &tk[k], tk[k].acc1);
    }
    for (int k = 0; k < nt; k++) {
        const float m = t == DTYPE_Q4_1 || t == DTYPE_Q5_1 ? tk[k].accm[0] + tk[k].accm[1] : 0.0f;
        out[k] = sd_hsum2(tk[k].acc0, tk[k].acc1) + m;
    }
}

#define SD_W32(name, T)                                                                                  \
    static void name(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) { \
        dot_w32(T, w, n, a, t0, nt, out);                                                                \
    }

/* Q4_0, row-sequential (q4_0x8.c says why): per block the exact integer sum
 * sum_j (q_j - 8) a_j, then acc = fma(d_w * d_a, (float) isum, acc), block after block from
 * acc = 0. The reference of every Q4_0 kernel and layout. */
static void dot_q4_0(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) {
    const blk_q4_0 *x = w;
    const int64_t nb = n / 32;
    for (int k = 0; k < nt; k++) {
        const int8_t *q = kact_qs(a, t0 + k);
        const float *d = kact_d(a, t0 + k);
        const int32_t *sum = kact_sum(a, t0 + k);
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *yl = q + kact_pos32(b, 0), *yh = q + kact_pos32(b, 16);
            int32_t s = 0;
            for (int j = 0; j < 16; j++) s += (x[b].qs[j] & 0xF) * yl[j] + (x[b].qs[j] >> 4) * yh[j];
            s -= 8 * sum[b];
            const float sc = qb_fp16_to_f32(x[b].d) * d[b];
            acc = fmaf(sc, (float)s, acc);
        }
        out[k] = acc;
    }
}
SD_W32(dot_q4_1, DTYPE_Q4_1)
SD_W32(dot_q5_0, DTYPE_Q5_0)
SD_W32(dot_q5_1, DTYPE_Q5_1)
SD_W32(dot_q8_0, DTYPE_Q8_0)

/* ------------------------------------------------------------------ K-quant weights */

/* A super-block as the AVX2 kernels unpack it: the 256 unsigned codes (Q3_K q + 4, Q6_K
 * q + 32), the scale of each group of 16 values (Q4_K/Q5_K: their sub-block's, twice),
 * the mins (Q2_K: per group; Q4_K/Q5_K: per sub-block, mn[0..7]), and the fp16 factors. */
struct sd_ksb {
    uint8_t u[256];
    int16_t sc[16], mn[16];
    float d, dmin;
};

static void sd_k_unpack(enum dtype t, const void *w, int64_t i, struct sd_ksb *k) {
    memset(k->mn, 0, sizeof k->mn);
    k->dmin = 0.0f;
    switch (t) {
    case DTYPE_Q2_K: {
        const blk_q2_K *x = (const blk_q2_K *)w + i;
        for (int n = 0; n < 256; n++) k->u[n] = (uint8_t)((x->qs[32 * (n / 128) + n % 32] >> (2 * ((n / 32) % 4))) & 3);
        for (int g = 0; g < 16; g++) k->sc[g] = x->scales[g] & 0xF, k->mn[g] = x->scales[g] >> 4;
        k->d = qb_fp16_to_f32(x->d), k->dmin = qb_fp16_to_f32(x->dmin);
        break;
    }
    case DTYPE_Q3_K: {
        const blk_q3_K *x = (const blk_q3_K *)w + i;
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            int lo = (x->qs[32 * h + l] >> (2 * s)) & 3, hi = (x->hmask[l] >> (4 * h + s)) & 1;
            k->u[n] = (uint8_t)(lo | hi << 2);
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
            k->u[n] = (uint8_t)q;
        }
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            qb_scale_min_k4(j, scales, &sc, &m);
            k->sc[2 * j] = k->sc[2 * j + 1] = sc;
            k->mn[j] = m;
        }
        k->d = qb_fp16_to_f32(d), k->dmin = qb_fp16_to_f32(dmin);
        break;
    }
    default: { /* Q6_K */
        const blk_q6_K *x = (const blk_q6_K *)w + i;
        for (int n = 0; n < 256; n++) {
            int h = n / 128, s = (n / 32) % 4, l = n % 32;
            uint8_t b = x->ql[64 * h + l + 32 * (s & 1)];
            int lo = s >= 2 ? b >> 4 : b & 0xF, hi = (x->qh[32 * h + l] >> (2 * s)) & 3;
            k->u[n] = (uint8_t)(lo | hi << 4);
        }
        for (int g = 0; g < 16; g++) k->sc[g] = x->scales[g];
        k->d = qb_fp16_to_f32(x->d);
        break;
    }
    }
}

/* Super-block i of one token into its 8-lane accumulator acc, as the kdot_avx2 K kernels
 * (q2k_body, q3k_body, q45k_sblock, q6k_sblock). */
static inline void sd_k_sblock(enum dtype t, const struct sd_ksb *k, const int8_t *q, const int16_t *bs, float dy,
                               float *acc) {
    int32_t iacc[8] = {0};
    for (int c = 0; c < 8; c++) /* k_chunk: vpmaddubsw, then vpmaddwd by the group scales */
        for (int l = 0; l < 8; l++) {
            const int o = 32 * c + 4 * l;
            int32_t s = 0;
            for (int b = 0; b < 4; b++) s += k->u[o + b] * q[o + b];
            iacc[l] += k->sc[2 * c + l / 4] * s;
        }
    if (t == DTYPE_Q3_K || t == DTYPE_Q6_K) { /* codes are q + 4 / q + 32 */
        const int32_t off = t == DTYPE_Q3_K ? 4 : 32;
        for (int l = 0; l < 8; l++) iacc[l] -= off * (bs[2 * l] * k->sc[2 * l] + bs[2 * l + 1] * k->sc[2 * l + 1]);
    }
    const float cm = -k->dmin * dy;
    if (t == DTYPE_Q2_K) /* the min term first */
        for (int l = 0; l < 8; l++)
            acc[l] = fmaf(cm, (float)(bs[2 * l] * k->mn[2 * l] + bs[2 * l + 1] * k->mn[2 * l + 1]), acc[l]);
    const float cd = k->d * dy;
    for (int l = 0; l < 8; l++) acc[l] = fmaf(cd, (float)iacc[l], acc[l]); /* k_finish */
    if (t == DTYPE_Q4_K || t == DTYPE_Q5_K) { /* bsums summed in pairs (one per sub-block), times the mins */
        int32_t pr[8];
        for (int j = 0; j < 8; j++) pr[j] = (int16_t)(bs[2 * j] + bs[2 * j + 1]);
        for (int l = 0; l < 8; l++) {
            const int32_t m = l < 4 ? pr[2 * l] * k->mn[2 * l] + pr[2 * l + 1] * k->mn[2 * l + 1] : 0;
            acc[l] = fmaf(cm, (float)m, acc[l]);
        }
    }
}

static inline void dot_wk(enum dtype t, const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt,
                          float *out) {
    float acc[KDOT_NT][8];
    memset(acc, 0, sizeof acc);
    struct sd_ksb k;
    for (int64_t i = 0; i < n / 256; i++) {
        sd_k_unpack(t, w, i, &k);
        for (int j = 0; j < nt; j++)
            sd_k_sblock(t, &k, kact_qs(a, t0 + j) + 256 * i, kact_bsums(a, t0 + j) + 16 * i, kact_d(a, t0 + j)[i],
                        acc[j]);
    }
    for (int j = 0; j < nt; j++) out[j] = sd_hsum(acc[j]);
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
