/* quant_blocks.cuh - device-side ggml block formats: per weight type its block geometry,
 * the activation format its dot product takes, the exact dequantization of one 32-element
 * unit, and the integer (dp4a) dot product of one unit with quantized activations.
 *
 * A "unit" is 32 consecutive elements of a row: a whole block for the 32-element formats,
 * one of the 8 sub-blocks of a 256-element K-quant super-block. Byte layouts (offsets in a
 * block; fp16 d/m; all blocks are only 2-byte aligned inside a row, so 32-bit words are
 * read with ld_u32, which accepts any alignment):
 *   Q4_0  18 B: d@0 qs[16]@2            x[j] = (qs[j]&15)-8, x[j+16] = (qs[j]>>4)-8; *d
 *   Q4_1  20 B: d@0 m@2 qs[16]@4        x = q*d + m
 *   Q5_0  22 B: d@0 qh[4]@2 qs[16]@6    5th bit of x[j] = bit j of qh; (q-16)*d
 *   Q5_1  24 B: d@0 m@2 qh[4]@4 qs@8    q*d + m
 *   Q8_0  34 B: d@0 qs[32]@2            q*d
 *   Q2_K  84 B: scales[16]@0 qs[64]@16 d@80 dmin@82
 *               x[128n+32j+l] = d*(sc&15)*((qs[32n+l]>>2j)&3) - dmin*(sc>>4), sc = scales[(128n+32j+l)/16]
 *   Q3_K 110 B: hmask[32]@0 qs[64]@32 scales[12]@96 d@108 (6-bit scales, -32)
 *               q = ((qs[32n+l]>>2j)&3) - (hmask[l] bit (4n+j) ? 0 : 4)
 *   Q4_K 144 B: d@0 dmin@2 scales[12]@4 qs[128]@16; sub-block u: nibble (u&1) of qs[32(u/2)+l]
 *   Q5_K 176 B: d@0 dmin@2 scales[12]@4 qh[32]@16 qs[128]@48; 5th bit = bit u of qh[l]
 *   Q6_K 210 B: ql[128]@0 qh[64]@128 scales[16] (int8)@192 d@208; q-32
 * Activation formats (ggml's vec_dot types; values bit-identical to quant.c's reference
 * quantizers, see matmul.cu): Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
 * K-quants. On the device they are split into arrays: int8 quants [tok][n_in], per-32 d
 * (and Q8_1's s) as floats, per-256 d and per-16 bsums for Q8_K.
 *
 * Dequantization uses __fmul_rn/__fadd_rn/__fsub_rn so that --use_fast_math cannot
 * contract it into FMAs: results are bit-identical to ggml's dequantize_row_* (and to
 * kernels/quant.c). The dot products follow ggml's vec_dot_*_q8_* integer sums exactly;
 * only the float combination of per-unit results differs in order. */
#ifndef TPLLM_CUDA_QUANT_BLOCKS_CUH
#define TPLLM_CUDA_QUANT_BLOCKS_CUH

#include <cuda_fp16.h>
#include <stdint.h>

extern "C" {
#include "../dtype.h"
}

enum act_fmt { AF_F32, AF_F16, AF_BF16, AF_Q8_0, AF_Q8_1, AF_Q8_K };

/* The activation format of weight type t's dot product (kernels/cpu/matmul.c's kact_fmt_of). */
static inline act_fmt act_fmt_of(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return AF_F32;
    case DTYPE_F16: return AF_F16;
    case DTYPE_BF16: return AF_BF16;
    case DTYPE_Q4_1:
    case DTYPE_Q5_1: return AF_Q8_1;
    case DTYPE_Q2_K:
    case DTYPE_Q3_K:
    case DTYPE_Q4_K:
    case DTYPE_Q5_K:
    case DTYPE_Q6_K: return AF_Q8_K;
    default: return AF_Q8_0;
    }
}

struct cuda_backend;
struct kmat;
/* Queue the conversion of x [n_tok][n_in] (device) into the backend's activation scratch
 * in format af (F32: nothing to do); failures go to the sticky error (matmul.cu). */
void cuda_convert_activations(struct cuda_backend *cb, act_fmt af, const float *x, int64_t n_tok, int64_t n_in);
/* Argument checks shared by matmul and matmul_f64 (type, shape, scratch bounds, alignment);
 * records EINVAL naming `op` and returns false on a violation (matmul.cu). */
bool cuda_matmul_args_ok(struct cuda_backend *cb, const struct kmat *w, const float *x, int64_t n_tok, const char *op);

/* Geometry per weight type: QK elements and TS bytes per block, UPB units per block. */
template <int T> struct qtraits;
#define QTRAITS(T_, QK_, TS_, AF_)                                                          \
    template <> struct qtraits<T_> {                                                        \
        static constexpr int QK = QK_, TS = TS_, UPB = QK_ / 32;                            \
        static constexpr act_fmt AF = AF_;                                                  \
    };
QTRAITS(DTYPE_Q4_0, 32, 18, AF_Q8_0)
QTRAITS(DTYPE_Q4_1, 32, 20, AF_Q8_1)
QTRAITS(DTYPE_Q5_0, 32, 22, AF_Q8_0)
QTRAITS(DTYPE_Q5_1, 32, 24, AF_Q8_1)
QTRAITS(DTYPE_Q8_0, 32, 34, AF_Q8_0)
QTRAITS(DTYPE_Q2_K, 256, 84, AF_Q8_K)
QTRAITS(DTYPE_Q3_K, 256, 110, AF_Q8_K)
QTRAITS(DTYPE_Q4_K, 256, 144, AF_Q8_K)
QTRAITS(DTYPE_Q5_K, 256, 176, AF_Q8_K)
QTRAITS(DTYPE_Q6_K, 256, 210, AF_Q8_K)
#undef QTRAITS

/* ---- byte access ---- */

/* 32-bit little-endian word at any byte address; reads only the aligned words holding
 * p[0..3] (never a word past p + 3). */
__device__ __forceinline__ uint32_t ld_u32(const uint8_t *p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t *w = reinterpret_cast<const uint32_t *>(a & ~(uintptr_t)3);
    const uint32_t sh = (uint32_t)(a & 3) * 8;
    const uint32_t lo = w[0];
    if (sh == 0) return lo;
    return __funnelshift_r(lo, w[1], sh);
}

/* fp16 at a 2-byte aligned address. */
__device__ __forceinline__ float ld_f16(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

/* 4 bits b0..b3 -> bit 4 of bytes 0..3. */
__device__ __forceinline__ uint32_t spread4_bit4(uint32_t b) {
    return ((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25);
}

/* Q3_K's 6-bit scale i (0..15) from its 12 packed bytes, minus 32. */
__device__ __forceinline__ int q3k_scale(const uint8_t *sc, int i) {
    const int lo = i < 8 ? (sc[i] & 15) : (sc[i - 8] >> 4);
    const int hi = (sc[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Q4_K/Q5_K's 6-bit scale and min of sub-block j (ggml's get_scale_min_k4). */
__device__ __forceinline__ void k4_scale_min(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* ---- dequantization of one unit: out[0..32) = elements 32*sub .. 32*sub+31 of the block ---- */

template <int T> __device__ __forceinline__ void unit_dequant(const uint8_t *blk, int sub, float *out);

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q4_0>(const uint8_t *blk, int, float *out) {
    const float d = ld_f16(blk);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int b = blk[2 + j];
        out[j] = __fmul_rn((float)((b & 15) - 8), d);
        out[j + 16] = __fmul_rn((float)((b >> 4) - 8), d);
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q4_1>(const uint8_t *blk, int, float *out) {
    const float d = ld_f16(blk), m = ld_f16(blk + 2);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int b = blk[4 + j];
        out[j] = __fadd_rn(__fmul_rn((float)(b & 15), d), m);
        out[j + 16] = __fadd_rn(__fmul_rn((float)(b >> 4), d), m);
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q5_0>(const uint8_t *blk, int, float *out) {
    const float d = ld_f16(blk);
    const uint32_t qh = ld_u32(blk + 2);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int b = blk[6 + j];
        const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
        out[j] = __fmul_rn((float)(((b & 15) | h0) - 16), d);
        out[j + 16] = __fmul_rn((float)(((b >> 4) | h1) - 16), d);
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q5_1>(const uint8_t *blk, int, float *out) {
    const float d = ld_f16(blk), m = ld_f16(blk + 2);
    const uint32_t qh = ld_u32(blk + 4);
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int b = blk[8 + j];
        const int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
        out[j] = __fadd_rn(__fmul_rn((float)((b & 15) | h0), d), m);
        out[j + 16] = __fadd_rn(__fmul_rn((float)((b >> 4) | h1), d), m);
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q8_0>(const uint8_t *blk, int, float *out) {
    const float d = ld_f16(blk);
#pragma unroll
    for (int j = 0; j < 32; j++) out[j] = __fmul_rn((float)(int8_t)blk[2 + j], d);
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q2_K>(const uint8_t *blk, int sub, float *out) {
    const float d = ld_f16(blk + 80), dmin = ld_f16(blk + 82);
    const uint8_t *q = blk + 16 + (sub >> 2) * 32;
    const int shift = 2 * (sub & 3);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int sc = blk[2 * sub + half];
        const float dl = __fmul_rn(d, (float)(sc & 15)), ml = __fmul_rn(dmin, (float)(sc >> 4));
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int v = (q[16 * half + l] >> shift) & 3;
            out[16 * half + l] = __fsub_rn(__fmul_rn(dl, (float)v), ml);
        }
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q3_K>(const uint8_t *blk, int sub, float *out) {
    const float d = ld_f16(blk + 108);
    const uint8_t *q = blk + 32 + (sub >> 2) * 32;
    const int shift = 2 * (sub & 3);
    const int hbit = sub; /* 4n + j */
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const float dl = __fmul_rn(d, (float)q3k_scale(blk + 96, 2 * sub + half));
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int ll = 16 * half + l;
            const int v = ((q[ll] >> shift) & 3) - (((blk[ll] >> hbit) & 1) ? 0 : 4);
            out[ll] = __fmul_rn(dl, (float)v);
        }
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q4_K>(const uint8_t *blk, int sub, float *out) {
    const float d = ld_f16(blk), dmin = ld_f16(blk + 2);
    int sc, m;
    k4_scale_min(blk + 4, sub, &sc, &m);
    const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
    const uint8_t *q = blk + 16 + (sub >> 1) * 32;
    const int shift = 4 * (sub & 1);
#pragma unroll
    for (int l = 0; l < 32; l++) out[l] = __fsub_rn(__fmul_rn(d1, (float)((q[l] >> shift) & 15)), m1);
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q5_K>(const uint8_t *blk, int sub, float *out) {
    const float d = ld_f16(blk), dmin = ld_f16(blk + 2);
    int sc, m;
    k4_scale_min(blk + 4, sub, &sc, &m);
    const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
    const uint8_t *qh = blk + 16, *q = blk + 48 + (sub >> 1) * 32;
    const int shift = 4 * (sub & 1);
#pragma unroll
    for (int l = 0; l < 32; l++) {
        const int v = ((q[l] >> shift) & 15) + (((qh[l] >> sub) & 1) ? 16 : 0);
        out[l] = __fsub_rn(__fmul_rn(d1, (float)v), m1);
    }
}

template <> __device__ __forceinline__ void unit_dequant<DTYPE_Q6_K>(const uint8_t *blk, int sub, float *out) {
    const float d = ld_f16(blk + 208);
    const int n = sub >> 2, k = sub & 3;
    const uint8_t *ql = blk + n * 64 + 32 * (k & 1), *qh = blk + 128 + n * 32;
    const int sl = 4 * (k >> 1), sh = 2 * k;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const float ds = __fmul_rn(d, (float)(int8_t)blk[192 + 2 * sub + half]);
#pragma unroll
        for (int l = 0; l < 16; l++) {
            const int ll = 16 * half + l;
            const int v = (((ql[ll] >> sl) & 15) | (((qh[ll] >> sh) & 3) << 4)) - 32;
            out[ll] = __fmul_rn(ds, (float)v);
        }
    }
}

/* ---- quantized activations ---- */

/* Activation rows of n_in elements quantized for the integer dot products. */
struct act_q8 {
    const int8_t *q;     /* [n_tok][n_in] */
    const float *d;      /* Q8_0/Q8_1: [n_tok][n_in/32]; Q8_K: [n_tok][n_in/256] */
    const float *s;      /* Q8_1: [n_tok][n_in/32] */
    const int16_t *bs;   /* Q8_K: [n_tok][n_in/16] */
    int64_t n_in;
};

/* One unit (32 elements) of one activation row, as the dot products take it. */
struct aunit {
    int w[8];   /* the 32 int8 quants, 4 per word */
    float d, s; /* scale (Q8_0/1: of this block; Q8_K: of the super-block); Q8_1 sum term */
    int bs0, bs1; /* Q8_K: sums of the unit's two groups of 16 quants */
};

template <act_fmt AF>
__device__ __forceinline__ void load_aunit(const act_q8 &a, int64_t t, int64_t gu, aunit *u) {
    const int4 *p = reinterpret_cast<const int4 *>(a.q + t * a.n_in + gu * 32);
    const int4 v0 = p[0], v1 = p[1];
    u->w[0] = v0.x; u->w[1] = v0.y; u->w[2] = v0.z; u->w[3] = v0.w;
    u->w[4] = v1.x; u->w[5] = v1.y; u->w[6] = v1.z; u->w[7] = v1.w;
    if (AF == AF_Q8_K) {
        u->d = a.d[t * (a.n_in / 256) + gu / 8];
        const int16_t *bs = a.bs + t * (a.n_in / 16) + gu * 2;
        u->bs0 = bs[0];
        u->bs1 = bs[1];
        u->s = 0.0f;
    } else {
        u->d = a.d[t * (a.n_in / 32) + gu];
        u->s = AF == AF_Q8_1 ? a.s[t * (a.n_in / 32) + gu] : 0.0f;
        u->bs0 = u->bs1 = 0;
    }
}

/* ---- unit dot products: sum over the unit of weight * activation, as a float ---- */

template <int T> __device__ __forceinline__ float unit_dot(const uint8_t *blk, int sub, const aunit &a);

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q4_0>(const uint8_t *blk, int, const aunit &a) {
    const uint8_t *qs = blk + 2;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t q = ld_u32(qs + 4 * k);
        s = __dp4a((int)__vsub4(q & 0x0F0F0F0Fu, 0x08080808u), a.w[k], s);
        s = __dp4a((int)__vsub4((q >> 4) & 0x0F0F0F0Fu, 0x08080808u), a.w[4 + k], s);
    }
    return (float)s * (ld_f16(blk) * a.d);
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q4_1>(const uint8_t *blk, int, const aunit &a) {
    const uint8_t *qs = blk + 4;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t q = ld_u32(qs + 4 * k);
        s = __dp4a((int)(q & 0x0F0F0F0Fu), a.w[k], s);
        s = __dp4a((int)((q >> 4) & 0x0F0F0F0Fu), a.w[4 + k], s);
    }
    return (ld_f16(blk) * a.d) * (float)s + ld_f16(blk + 2) * a.s;
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q5_0>(const uint8_t *blk, int, const aunit &a) {
    const uint32_t qh = ld_u32(blk + 2);
    const uint8_t *qs = blk + 6;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t q = ld_u32(qs + 4 * k);
        const uint32_t lo = (q & 0x0F0F0F0Fu) | spread4_bit4((qh >> (4 * k)) & 15u);
        const uint32_t hi = ((q >> 4) & 0x0F0F0F0Fu) | spread4_bit4((qh >> (16 + 4 * k)) & 15u);
        s = __dp4a((int)__vsub4(lo, 0x10101010u), a.w[k], s);
        s = __dp4a((int)__vsub4(hi, 0x10101010u), a.w[4 + k], s);
    }
    return (float)s * (ld_f16(blk) * a.d);
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q5_1>(const uint8_t *blk, int, const aunit &a) {
    const uint32_t qh = ld_u32(blk + 4);
    const uint8_t *qs = blk + 8;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t q = ld_u32(qs + 4 * k);
        const uint32_t lo = (q & 0x0F0F0F0Fu) | spread4_bit4((qh >> (4 * k)) & 15u);
        const uint32_t hi = ((q >> 4) & 0x0F0F0F0Fu) | spread4_bit4((qh >> (16 + 4 * k)) & 15u);
        s = __dp4a((int)lo, a.w[k], s);
        s = __dp4a((int)hi, a.w[4 + k], s);
    }
    return (ld_f16(blk) * a.d) * (float)s + ld_f16(blk + 2) * a.s;
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q8_0>(const uint8_t *blk, int, const aunit &a) {
    const uint8_t *qs = blk + 2;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) s = __dp4a((int)ld_u32(qs + 4 * k), a.w[k], s);
    return (float)s * (ld_f16(blk) * a.d);
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q2_K>(const uint8_t *blk, int sub, const aunit &a) {
    const uint8_t *q = blk + 16 + (sub >> 2) * 32;
    const int shift = 2 * (sub & 3);
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        s0 = __dp4a((int)((ld_u32(q + 4 * k) >> shift) & 0x03030303u), a.w[k], s0);
        s1 = __dp4a((int)((ld_u32(q + 16 + 4 * k) >> shift) & 0x03030303u), a.w[4 + k], s1);
    }
    const int sc0 = blk[2 * sub], sc1 = blk[2 * sub + 1];
    const int isum = (sc0 & 15) * s0 + (sc1 & 15) * s1;
    const int msum = (sc0 >> 4) * a.bs0 + (sc1 >> 4) * a.bs1;
    return (ld_f16(blk + 80) * a.d) * (float)isum - (ld_f16(blk + 82) * a.d) * (float)msum;
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q3_K>(const uint8_t *blk, int sub, const aunit &a) {
    const uint8_t *q = blk + 32 + (sub >> 2) * 32;
    const int shift = 2 * (sub & 3);
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const uint32_t lo = (ld_u32(q + 4 * k) >> shift) & 0x03030303u;
        const uint32_t hm = (ld_u32(blk + 4 * k) >> sub) & 0x01010101u;
        const int v = (int)__vsub4(lo, (hm ^ 0x01010101u) << 2);
        if (k < 4) s0 = __dp4a(v, a.w[k], s0);
        else s1 = __dp4a(v, a.w[k], s1);
    }
    const int isum = q3k_scale(blk + 96, 2 * sub) * s0 + q3k_scale(blk + 96, 2 * sub + 1) * s1;
    return (ld_f16(blk + 108) * a.d) * (float)isum;
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q4_K>(const uint8_t *blk, int sub, const aunit &a) {
    const uint8_t *q = blk + 16 + (sub >> 1) * 32;
    const int shift = 4 * (sub & 1);
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) s = __dp4a((int)((ld_u32(q + 4 * k) >> shift) & 0x0F0F0F0Fu), a.w[k], s);
    int sc, m;
    k4_scale_min(blk + 4, sub, &sc, &m);
    return (ld_f16(blk) * a.d) * (float)(sc * s) - (ld_f16(blk + 2) * a.d) * (float)(m * (a.bs0 + a.bs1));
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q5_K>(const uint8_t *blk, int sub, const aunit &a) {
    const uint8_t *qh = blk + 16, *q = blk + 48 + (sub >> 1) * 32;
    const int shift = 4 * (sub & 1);
    int s = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const uint32_t lo = (ld_u32(q + 4 * k) >> shift) & 0x0F0F0F0Fu;
        const uint32_t hi = ((ld_u32(qh + 4 * k) >> sub) & 0x01010101u) << 4;
        s = __dp4a((int)(lo | hi), a.w[k], s);
    }
    int sc, m;
    k4_scale_min(blk + 4, sub, &sc, &m);
    return (ld_f16(blk) * a.d) * (float)(sc * s) - (ld_f16(blk + 2) * a.d) * (float)(m * (a.bs0 + a.bs1));
}

template <> __device__ __forceinline__ float unit_dot<DTYPE_Q6_K>(const uint8_t *blk, int sub, const aunit &a) {
    const int n = sub >> 2, k4 = sub & 3;
    const uint8_t *ql = blk + n * 64 + 32 * (k4 & 1), *qh = blk + 128 + n * 32;
    const int sl = 4 * (k4 >> 1), sh = 2 * k4;
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const uint32_t lo = (ld_u32(ql + 4 * k) >> sl) & 0x0F0F0F0Fu;
        const uint32_t hi = ((ld_u32(qh + 4 * k) >> sh) & 0x03030303u) << 4;
        const int v = (int)__vsub4(lo | hi, 0x20202020u);
        if (k < 4) s0 = __dp4a(v, a.w[k], s0);
        else s1 = __dp4a(v, a.w[k], s1);
    }
    const int isum = (int)(int8_t)blk[192 + 2 * sub] * s0 + (int)(int8_t)blk[192 + 2 * sub + 1] * s1;
    return (ld_f16(blk + 208) * a.d) * (float)isum;
}

/* Call f.template run<T>() for the weight type t (quantized types only); false if t is not one. */
template <class F> __host__ bool qtype_dispatch(enum dtype t, F &f) {
    switch (t) {
    case DTYPE_Q4_0: f.template run<DTYPE_Q4_0>(); return true;
    case DTYPE_Q4_1: f.template run<DTYPE_Q4_1>(); return true;
    case DTYPE_Q5_0: f.template run<DTYPE_Q5_0>(); return true;
    case DTYPE_Q5_1: f.template run<DTYPE_Q5_1>(); return true;
    case DTYPE_Q8_0: f.template run<DTYPE_Q8_0>(); return true;
    case DTYPE_Q2_K: f.template run<DTYPE_Q2_K>(); return true;
    case DTYPE_Q3_K: f.template run<DTYPE_Q3_K>(); return true;
    case DTYPE_Q4_K: f.template run<DTYPE_Q4_K>(); return true;
    case DTYPE_Q5_K: f.template run<DTYPE_Q5_K>(); return true;
    case DTYPE_Q6_K: f.template run<DTYPE_Q6_K>(); return true;
    default: return false;
    }
}

#endif
