/* simd_blocks.h - the byte layouts of ggml's quantized blocks (ggml-common.h) and the
 * fp16/bf16 bit conversions, shared by kernels/quant.c and the CPU dot-product kernels.
 *
 * Every struct below is the exact on-disk block of a GGUF tensor (sizes checked against
 * dtype.c by static assertions). fp16 fields are raw IEEE binary16 bits. Blocks inside a
 * tensor row sit back to back, so a block is only 2-byte aligned (4 for Q8_K, which is an
 * activation format and never read from a file).
 *
 * Element order inside a block (n = element index):
 *   Q4_0/Q4_1  qs[j] low nibble is n = j, high nibble n = j + 16.
 *   Q5_0/Q5_1  as Q4_x for the low 4 bits; bit n of the little-endian u32 qh is bit 4.
 *   Q8_0/Q8_1  qs[n]. Q8_1.s = fp16(d * sum(qs)).
 *   Q2_K       n = 128h + 32s + l: 2 bits at shift 2s of qs[32h + l]; 16 sub-blocks of
 *              16 with scales[n/16] = scale (low nibble) | min (high nibble).
 *   Q3_K       n = 128h + 32s + l: low 2 bits at shift 2s of qs[32h + l], high bit is bit
 *              4h + s of hmask[l]; value (low | high << 2) - 4; 16 6-bit scales minus 32.
 *   Q4_K       n = 64p + l (l < 32): low nibble of qs[32p + l]; n = 64p + 32 + l: high
 *              nibble; 8 sub-blocks of 32 with 6-bit scale and min (qb_scale_min_k4).
 *   Q5_K       as Q4_K, bit 4 is bit 2p (low nibbles) or 2p + 1 (high) of qh[l].
 *   Q6_K       n = 128h + 32s + l: 4 low bits from ql[64h + l + 32(s & 1)] (low nibble
 *              for s < 2, high for s >= 2), 2 high bits at shift 2s of qh[32h + l];
 *              value - 32; scale int8 scales[n/16].
 *   Q8_K       qs[n]; bsums[g] = sum of qs[16g .. 16g+15]; d is a float. */
#ifndef TPLLM_CPU_SIMD_BLOCKS_H
#define TPLLM_CPU_SIMD_BLOCKS_H

#include <stdint.h>
#include <string.h>

#include "../dtype.h"

#define QB_QK 32   /* elements per block of the legacy formats */
#define QB_QK_K 256 /* elements per super-block of the K formats */

typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } blk_q8_1;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } blk_q2_K;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } blk_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } blk_q8_K;

_Static_assert(sizeof(blk_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(blk_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(blk_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(blk_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(blk_q8_1) == 36, "q8_1 block");
_Static_assert(sizeof(blk_q2_K) == 84, "q2_K block");
_Static_assert(sizeof(blk_q3_K) == 110, "q3_K block");
_Static_assert(sizeof(blk_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(blk_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(blk_q6_K) == 210, "q6_K block");
_Static_assert(sizeof(blk_q8_K) == 292, "q8_K block");

static inline uint32_t qb_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float qb_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Exact binary16 -> binary32 (NaN payloads kept). */
static inline float qb_fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) return qb_bits_f32(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
    if (em >= 0x0400u) return qb_bits_f32(sign | ((em + ((127u - 15u) << 10)) << 13));
    /* zero or subnormal: em * 2^-24, exact in binary32 */
    return qb_bits_f32(sign | qb_f32_bits((float)em * 0x1p-24f));
}

/* binary32 -> binary16, round to nearest even; overflow to inf; NaN -> quiet 0x7e00 with
 * the sign (what ggml's software conversion returns). */
static inline uint16_t qb_f32_to_fp16(float f) {
    uint32_t x = qb_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds past 65504 */
    if (ax < 0x38800000u) {
        /* below 2^-14: a subnormal half, value / 2^-24 rounded to an even integer by the
         * magic-number addition (the product is exact, the sum rounds to nearest even) */
        float r = qb_bits_f32(ax) * 0x1p24f + 0x1p23f;
        return sign | (uint16_t)(qb_f32_bits(r) - 0x4b000000u);
    }
    uint32_t m = ax + 0x0fffu + ((ax >> 13) & 1u); /* round the 13 dropped bits to even */
    m -= 112u << 23;                               /* exponent bias 127 -> 15 */
    return sign | (uint16_t)(m >> 13);
}

static inline float qb_bf16_to_f32(uint16_t h) { return qb_bits_f32((uint32_t)h << 16); }

/* binary32 -> bfloat16 as ggml_compute_fp32_to_bf16: NaN made quiet, else nearest even. */
static inline uint16_t qb_f32_to_bf16(float f) {
    uint32_t u = qb_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block (12 packed bytes):
 * j < 4: low 6 bits of q[j] and q[j+4]; else the nibbles of q[j+4] with the top two bits
 * of q[j-4] (scale) and q[j] (min). */
static inline void qb_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The 16 signed scales (-32..31) of a Q3_K block from its 12 packed bytes: the low
 * nibble of scale j is in byte j (j < 8) or the high nibble of byte j-8, its top two bits
 * at shift 2*(j/4) of byte 8 + j%4. */
static inline void qb_q3k_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
        int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}


/* ---- block fields shared by the SIMD kernels (plain C, so every level reads them alike) ---- */

/* The fields of 32-value blocks i and i+1 (B absent when `one`: zeros) of a Q4_0, Q4_1,
 * Q5_0, Q5_1 or Q8_0 row (any other type is read as Q8_0): fp16 scales and mins, the
 * packed codes, the Q5 high-bit words. */
struct qb_pair {
    uint16_t dA, dB, mA, mB;
    const uint8_t *qa, *qb;
    uint32_t ha, hb;
};

static inline uint32_t qb_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline struct qb_pair qb_pair_fields(enum dtype t, const void *w, int64_t i, int one) {
    struct qb_pair f = {0};
    switch (t) {
    case DTYPE_Q4_0: {
        const blk_q4_0 *x = (const blk_q4_0 *)w + i;
        f.dA = x[0].d, f.qa = x[0].qs;
        if (!one) f.dB = x[1].d, f.qb = x[1].qs;
        break;
    }
    case DTYPE_Q4_1: {
        const blk_q4_1 *x = (const blk_q4_1 *)w + i;
        f.dA = x[0].d, f.mA = x[0].m, f.qa = x[0].qs;
        if (!one) f.dB = x[1].d, f.mB = x[1].m, f.qb = x[1].qs;
        break;
    }
    case DTYPE_Q5_0: {
        const blk_q5_0 *x = (const blk_q5_0 *)w + i;
        f.dA = x[0].d, f.qa = x[0].qs, f.ha = qb_u32(x[0].qh);
        if (!one) f.dB = x[1].d, f.qb = x[1].qs, f.hb = qb_u32(x[1].qh);
        break;
    }
    case DTYPE_Q5_1: {
        const blk_q5_1 *x = (const blk_q5_1 *)w + i;
        f.dA = x[0].d, f.mA = x[0].m, f.qa = x[0].qs, f.ha = qb_u32(x[0].qh);
        if (!one) f.dB = x[1].d, f.mB = x[1].m, f.qb = x[1].qs, f.hb = qb_u32(x[1].qh);
        break;
    }
    default: {
        const blk_q8_0 *x = (const blk_q8_0 *)w + i;
        f.dA = x[0].d, f.qa = (const uint8_t *)x[0].qs;
        if (!one) f.dB = x[1].d, f.qb = (const uint8_t *)x[1].qs;
        break;
    }
    }
    return f;
}

/* The 6-bit scales (words 0, 1: bytes 0..7) and mins (words 2, 3: bytes 8..15) of a
 * Q4_K/Q5_K super-block from its 12 packed bytes. */
static inline void qb_k4_scale_words(const uint8_t *s, uint32_t u[4]) {
    memcpy(u, s, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4); /* mins 4..7 */
    const uint32_t mins03 = u[1] & m6;
    u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4); /* scales 4..7 */
    u[2] = mins03;
    u[0] &= m6; /* scales 0..3 */
}

/* The 16 6-bit Q3_K scales, biased by +32 (word k holds scales 4k..4k+3: low nibbles from
 * bytes 0..7 (k < 2) or their high nibbles (k >= 2), top bits from byte 8 + j%4 at shift
 * 2*(j/4) = 2k); subtract 32 per byte for the signed scale. */
static inline void qb_q3k_scale_words(const uint8_t *s, uint32_t r[4]) {
    uint32_t u[3];
    memcpy(u, s, 12);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    r[0] = (u[0] & m4) | (((u[2] >> 0) & m2) << 4);
    r[1] = (u[1] & m4) | (((u[2] >> 2) & m2) << 4);
    r[2] = ((u[0] >> 4) & m4) | (((u[2] >> 4) & m2) << 4);
    r[3] = ((u[1] >> 4) & m4) | (((u[2] >> 6) & m2) << 4);
}

#endif
