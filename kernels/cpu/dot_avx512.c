/* dot_avx512.c - AVX-512 (F, BW, VL, VNNI) matmul kernels (placeholder while written). */
#include "simd_dot.h"

kdot_fn kdot_avx512(enum dtype t) { return NULL; }
