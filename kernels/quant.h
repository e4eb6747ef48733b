/* quant.h - scalar reference (de)quantization of every supported ggml block format.
 *
 * These are the reference the SIMD and CUDA paths are tested against; dequantization is
 * bit-exact with ggml's dequantize_row_* and quantization follows ggml's
 * quantize_row_*_ref rounding. n is always a multiple of the type's block size. */
#ifndef TPLLM_QUANT_H
#define TPLLM_QUANT_H

#include "dtype.h"

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f); /* round to nearest even, as ggml */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f); /* round to nearest even, NaN kept quiet, as ggml */

/* y[0..n) = dequantized src of type t. Types: every dtype_supported() type, and Q8_1 / Q8_K. */
void quant_dequantize_row(enum dtype t, const void *src, float *y, int64_t n);
/* Quantize x[0..n) into dst as type t; returns the bytes written. Types: F32, F16, BF16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml's _ref rounding), Q8_1, Q8_K (activation formats), and
 * Q2_K..Q6_K (simple valid quantizers for test models, not llama.cpp's optimal search).
 * Returns 0 for a type it cannot produce. */
size_t quant_quantize_row(enum dtype t, const float *x, void *dst, int64_t n);
/* Whether quant_quantize_row can produce t. */
bool quant_can_quantize(enum dtype t);

#endif
