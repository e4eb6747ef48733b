/* simd_dot.h - private interface of the CPU matmul (matmul.c) and its dot-product
 * kernels (dot_scalar.c, dot_avx2.c, dot_avx512.c): the layout activations are quantized
 * into, and the per-type kernels of each SIMD level.
 *
 * As in llama.cpp, the activations of a matmul are first converted to the weight type's
 * "vec_dot type" and the block dot products are then integer:
 *   weights F32 -> F32, F16 -> F16, BF16 -> BF16,
 *   Q4_0/Q5_0/Q8_0 -> Q8_0 (sumi * d_w * d_a),
 *   Q4_1/Q5_1 -> Q8_1 (sumi * d_w * d_a + m_w * s_a),
 *   Q2_K..Q6_K -> Q8_K (d_w * d_a * sum_j sc_j sumi_j - dmin_w * d_a * sum_j m_j bsum_j).
 * Q8_K activations equal quant_quantize_row's (ggml's _ref rounding); Q8_0/Q8_1 ones follow
 * llama.cpp's x86 backend instead of its portable reference: q = x * (127 / amax) rounded
 * half to even (the reference divides by d = amax / 127 and rounds halves away, which
 * changes about one value in 300 by one step). They are stored planar, one row per token, rather than as ggml blocks, so that SIMD
 * loads of the int8 values are contiguous (see struct kact_rows). */
#ifndef TPLLM_CPU_SIMD_DOT_H
#define TPLLM_CPU_SIMD_DOT_H

#include "cpu.h"

/* The most tokens one kernel call handles (the batched path's tile width). */
#define KDOT_NT 4

enum kact_fmt {
    KACT_F32 = 0, /* the caller's x itself */
    KACT_F16,     /* u16 h[n] */
    KACT_BF16,    /* u16 h[n] */
    KACT_Q8_32,   /* Q8_0 / Q8_1 values, block pairs interleaved (below) */
    KACT_Q8_K,    /* i8 qs[n] | f32 d[n/256] | i16 bsums[n/16] */
};

/* Activation rows of one matmul call: token t's row starts at base + t * stride; inside a
 * row each section starts at a 64-byte boundary at the offsets below (0 where unused).
 *
 * KACT_Q8_32 rows hold the values of blocks 2p and 2p+1 (A, B) interleaved in 64 bytes,
 *   qs[64p ..] = A[0..15] B[0..15] A[16..31] B[16..31]   (B zero past the last block),
 * so that the low and high nibbles of two weight blocks side by side in one register meet
 * their activations with plain loads. Per pair, pre-broadcast for the SIMD kernels:
 *   dv[8p ..] = dA dA dA dA dB dB dB dB (f32)    sv[8p ..] = 2sA x4, 2sB x4 (i32)
 * (2 sum: Q4_0's offset 8 sum spread over a block's 4 lanes of AVX2 sums), and per
 * block: d (f32, the fp16-rounded scale ggml stores), sum (i32, sum of the block's
 * values), s (f32, the Q8_1 sum field fp16(d_unrounded * sum)). */
struct kact_rows {
    const uint8_t *base;
    size_t stride;
    size_t off_d, off_sum, off_s, off_dv, off_sv;
};

/* Bytes of one activation row of n values, and the section offsets (kact_layout fills
 * off_* of r and returns the row size, a multiple of 64). */
size_t kact_layout(enum kact_fmt f, int64_t n, struct kact_rows *r);
enum kact_fmt kact_fmt_of(enum dtype weight);

/* Position in a KACT_Q8_32 row of value j (0..31) of block b. */
static inline size_t kact_pos32(int64_t b, int j) {
    return (size_t)(b / 2) * 64 + (size_t)(b & 1) * 16 + (size_t)(j & 15) + (size_t)(j >> 4) * 32;
}

static inline const int8_t *kact_qs(const struct kact_rows *a, int64_t t) {
    return (const int8_t *)(a->base + (size_t)t * a->stride);
}
static inline const float *kact_d(const struct kact_rows *a, int64_t t) {
    return (const float *)(a->base + (size_t)t * a->stride + a->off_d);
}
static inline const int32_t *kact_sum(const struct kact_rows *a, int64_t t) {
    return (const int32_t *)(a->base + (size_t)t * a->stride + a->off_sum);
}
static inline const int16_t *kact_bsums(const struct kact_rows *a, int64_t t) {
    return (const int16_t *)(a->base + (size_t)t * a->stride + a->off_sum);
}
static inline const float *kact_s(const struct kact_rows *a, int64_t t) {
    return (const float *)(a->base + (size_t)t * a->stride + a->off_s);
}
static inline const float *kact_dv(const struct kact_rows *a, int64_t t) {
    return (const float *)(a->base + (size_t)t * a->stride + a->off_dv);
}
static inline const int32_t *kact_sv(const struct kact_rows *a, int64_t t) {
    return (const int32_t *)(a->base + (size_t)t * a->stride + a->off_sv);
}

/* How cpu_matmul and cpu_matmul_f64 split a weight's rows over the thread pool: at least
 * 16 rows and at most 4 tasks per thread, rows in blocks whose weights stay in L2 (256 KiB);
 * KMAT_Q4_0X8 weights in whole groups of 8 rows per task and per block. Sets *rows_per_task
 * and *row_block and returns the number of tasks. */
static inline int64_t kmat_row_tasks(const struct kmat *w, int n_threads, int64_t *rows_per_task, int64_t *row_block) {
    int64_t tasks = n_threads <= 1 ? 1 : TP_MIN((w->n_out + 15) / 16, (int64_t)n_threads * 4);
    tasks = TP_MAX(tasks, 1);
    *rows_per_task = (w->n_out + tasks - 1) / tasks;
    *row_block = TP_MAX((int64_t)1, (int64_t)((256 * 1024) / TP_MAX(w->row_stride, (size_t)1)));
    if (w->layout == KMAT_Q4_0X8) {
        *rows_per_task = TP_ALIGN_UP(*rows_per_task, 8);
        *row_block = TP_ALIGN_UP(*row_block, 8);
    }
    return (w->n_out + *rows_per_task - 1) / *rows_per_task;
}

/* Quantizes x[0..n) into one activation row at `row` (laid out as kact_layout says).
 * The scalar and AVX2 versions give identical bytes. */
typedef void (*kact_quant_fn)(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay);
void kact_quantize_scalar(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay);
void kact_quantize_avx2(enum kact_fmt f, const float *x, int64_t n, uint8_t *row, const struct kact_rows *lay);

/* out[k] = dot(weight row w of n values, activation row t0 + k) for k < nt <= KDOT_NT.
 * The arithmetic per token does not depend on nt or t0, so a token's result is the same
 * whichever tile it is computed in. */
typedef void (*kdot_fn)(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out);

/* The kernel for weight type t at each level; NULL where the level has none for t (the
 * caller then uses a lower level's). */
kdot_fn kdot_scalar(enum dtype t);
kdot_fn kdot_avx2(enum dtype t);
kdot_fn kdot_avx512(enum dtype t);

/* A kernel entry point with attributes `attrs` (a target): `body` is instantiated for each
 * tile width (1..KDOT_NT tokens) so that the per-token accumulators live in registers. */
#define KDOT_KERNEL(attrs, name, body)                                                                      \
    static attrs void name(const void *w, int64_t n, const struct kact_rows *a, int64_t t0, int nt, float *out) { \
        switch (nt) {                                                                                       \
        case 1: body(w, n, a, t0, 1, out); break;                                                           \
        case 2: body(w, n, a, t0, 2, out); break;                                                           \
        case 3: body(w, n, a, t0, 3, out); break;                                                           \
        default: body(w, n, a, t0, 4, out); break;                                                          \
        }                                                                                                   \
    }

#endif
