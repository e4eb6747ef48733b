/* simd_avx2.h - helpers shared by the AVX2 matmul kernels (dot_avx2.c, dot_avx2_k.c):
 * the per-function target attributes, horizontal sums, software prefetch, and the macro
 * that instantiates a kernel for each tile width. x86-64 only. */
#ifndef TPLLM_CPU_SIMD_AVX2_H
#define TPLLM_CPU_SIMD_AVX2_H

#include "simd_blocks.h"
#include "simd_dot.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Weights are read this many bytes ahead with software prefetches: for one token the
 * kernels stream weights from memory, and the hardware prefetcher alone leaves part of
 * the bandwidth unused (measured on Zen 3; 0 disables). */
#ifndef KDOT_PREFETCH
#define KDOT_PREFETCH 2048
#endif
#define A2 __attribute__((target("avx2,fma,f16c")))
#define A2I static inline __attribute__((always_inline, target("avx2,fma,f16c")))

A2I float a2_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

A2I int32_t a2_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

A2I int32_t a2_hsum_i32_128(__m128i s) {
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

A2I float a2_h2f(uint16_t h) { return _cvtsh_ss(h); }

/* Prefetches the lines KDOT_PREFETCH bytes past [p, p + bytes). */
A2I void a2_prefetch(const char *p, size_t bytes) {
#if KDOT_PREFETCH
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(p + KDOT_PREFETCH + o, _MM_HINT_T0);
#else
    (void)p, (void)bytes;
#endif
}

/* Kernel entry points with the AVX2 target (KDOT_KERNEL). */
#define A2_KERNEL(name, body) KDOT_KERNEL(A2, name, body)

/* The K-quant kernels (dot_avx2_k.c); NULL for other types. */
kdot_fn kdot_avx2_k(enum dtype t);

#endif /* __x86_64__ */

#endif
