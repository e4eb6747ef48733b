/* vec.h - helpers private to the CPU op files (ops.c, attention.c, topk.c): splitting a
 * range over the thread pool, the SIMD dispatch test, and the math used by several ops in
 * two forms that give the same bits: 8-lane AVX2 and portable scalar C.
 *
 * AVX2 code is compiled per function with CPU_AVX2 (target attribute), so the library
 * builds for any x86-64 and picks the path at run time from cpu_backend.simd.
 *
 * The ordering rule of the CPU ops: the AVX2 arithmetic is the definition, and every
 * scalar path (opts.simd = 0, other architectures, AVX2 tails) reproduces it exactly:
 *   - a vector accumulator is an array of 8 lanes (lane l sums elements 8i + l), reduced
 *     by the same tree as the AVX2 horizontal op: cpu_hsum8 = cpu_hsum256,
 *     cpu_hmax8 = cpu_hmax256, cpu_hsum4d = cpu_hsum256d;
 *   - where AVX2 fuses a multiply-add (_mm256_fmadd_ps, or the compiler contracting a
 *     scalar tail inside a CPU_AVX2 function), the scalar form calls fmaf/fma (libm's
 *     are correctly rounded, so they equal the instruction), and where it does not, the
 *     scalar form has no fusible product (or an exact one);
 *   - exp is cpu_exp1, one lane of cpu_exp256, unless the op's own comment says libm;
 *   - f16 <-> f32 is cpu_f32_to_f16 / cpu_f16_to_f32, which equal F16C's
 *     _mm256_cvtps_ph (round to nearest even) / _mm256_cvtph_ps on every input, NaNs
 *     included (the project's f32_to_fp16 agrees on every non-NaN float but returns
 *     0x7e00 for every NaN; F16C keeps the payload's top bits; test_cpu_ops checks it).
 * Where an op splits work over threads, a value never depends on which thread or path
 * computed it: element-wise ops apply one per-element function (vector and scalar forms
 * equal), and reductions run over a whole row or (token, head) on one thread. */
#ifndef TPLLM_CPU_VEC_H
#define TPLLM_CPU_VEC_H

#include "cpu.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#define CPU_HAVE_X86 1
#include <immintrin.h>
#define CPU_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define CPU_HAVE_X86 0
#endif

static inline struct cpu_backend *cpu_impl(const struct kbackend *b) {
    return (struct cpu_backend *)b->impl;
}

/* Whether the AVX2 kernels may run (AVX-512 machines use them too). */
static inline bool cpu_use_avx2(const struct kbackend *b) {
    return CPU_HAVE_X86 && cpu_impl(b)->simd >= KSIMD_AVX2;
}

/* body(ctx, lo, hi) over [0, total) split into at most n_threads contiguous pieces of at
 * least `grain` items (one piece, on the caller, when the work is small). */
typedef void (*cpu_range_fn)(void *ctx, int64_t lo, int64_t hi);

struct cpu_pfor {
    cpu_range_fn body;
    void *ctx;
    int64_t total;
    int64_t chunk;
};

static inline void cpu_pfor_task(void *arg, int64_t i, int64_t n) {
    const struct cpu_pfor *f = arg;
    int64_t lo = i * f->chunk;
    int64_t hi = TP_MIN(lo + f->chunk, f->total);
    if (lo < hi) f->body(f->ctx, lo, hi);
}

static inline void cpu_parallel_for(const struct kbackend *b, int64_t total, int64_t grain,
                                    cpu_range_fn body, void *ctx) {
    if (total <= 0) return;
    if (grain < 1) grain = 1;
    struct cpu_backend *c = cpu_impl(b);
    int64_t tasks = TP_MIN((int64_t)c->n_threads, (total + grain - 1) / grain);
    if (tasks <= 1) {
        body(ctx, 0, total);
        return;
    }
    struct cpu_pfor f = {body, ctx, total, (total + tasks - 1) / tasks};
    tpool_run(c->pool, cpu_pfor_task, &f, (total + f.chunk - 1) / f.chunk);
}

static inline uint32_t cpu_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float cpu_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* max as _mm256_max_ps / _mm_max_ss compute it: a > b ? a : b (the second operand when
 * they are equal, e.g. -0 and +0, or when either is NaN). */
static inline float cpu_max1(float a, float b) { return a > b ? a : b; }

/* cpu_exp256 of one lane, in portable C: the same clamps (NaN becomes -87.3), n rounded
 * to nearest even (nearbyintf in the default rounding mode = _MM_FROUND_TO_NEAREST_INT),
 * the same two-part ln2 reduction and polynomial with fmaf where cpu_exp256 fuses, the
 * same exponent bits. The final product p * 2^n is exact: n >= -126, and n = -126 only
 * for x in [-87.3, -125.5 ln2), where r > 0 and p > 1, so the result is a normal float;
 * hence an addition after it gives the same bits whether or not a compiler fuses the two. */
static inline float cpu_exp1(float x) {
    x = cpu_max1(x, -87.3f);
    x = x < 88.3f ? x : 88.3f; /* _mm256_min_ps(x, 88.3f) */
    const float n = nearbyintf(x * 1.44269504088896341f);
    float r = fmaf(-n, 0.693359375f, x); /* fnmadd: -(n c) + x */
    r = fmaf(-n, -2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    return p * cpu_bits_f32((uint32_t)((int32_t)n + 127) << 23);
}

/* cpu_hsum256's tree over 8 lanes: ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)). */
static inline float cpu_hsum8(const float v[8]) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

/* cpu_hmax256's tree, with cpu_max1 (its operand order matters only for signed zeros). */
static inline float cpu_hmax8(const float v[8]) {
    const float a = cpu_max1(cpu_max1(v[0], v[4]), cpu_max1(v[2], v[6]));
    const float b = cpu_max1(cpu_max1(v[1], v[5]), cpu_max1(v[3], v[7]));
    return cpu_max1(a, b);
}

/* cpu_hsum256d's tree over 4 double lanes: (v0 + v2) + (v1 + v3). */
static inline double cpu_hsum4d(const double v[4]) { return (v[0] + v[2]) + (v[1] + v[3]); }

/* f32 -> f16 as F16C's _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT): nearest even,
 * overflow to inf, subnormals exact; a NaN stays a NaN with its sign and the top 10 bits
 * of its payload, made quiet. */
static inline uint16_t cpu_f32_to_f16(float f) {
    const uint32_t x = cpu_f32_bits(f), ax = x & 0x7fffffffu;
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds past 65504 */
    if (ax < 0x38800000u) {
        /* below 2^-14: a subnormal half, value / 2^-24 rounded to an even integer by the
         * magic-number addition (the product is exact, the sum rounds to nearest even) */
        const float r = cpu_bits_f32(ax) * 0x1p24f + 0x1p23f;
        return (uint16_t)(sign | (cpu_f32_bits(r) - 0x4b000000u));
    }
    uint32_t m = ax + 0x0fffu + ((ax >> 13) & 1u); /* round the 13 dropped bits to even */
    m -= 112u << 23;                               /* exponent bias 127 -> 15 */
    return (uint16_t)(sign | (m >> 13));
}

/* f16 -> f32 as F16C's _mm256_cvtph_ps: exact; a NaN keeps its sign and payload and is
 * made quiet. (On AArch64 the hardware conversion does the same, with FPCR.DN clear.) */
static inline float cpu_f16_to_f32(uint16_t h) {
#if defined(__aarch64__)
    __fp16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    if (em > 0x7c00u) return cpu_bits_f32(sign | 0x7fc00000u | ((em & 0x3ffu) << 13)); /* NaN, quiet */
    if (em == 0x7c00u) return cpu_bits_f32(sign | 0x7f800000u);
    if (em >= 0x0400u) return cpu_bits_f32(sign | ((em + ((127u - 15u) << 10)) << 13));
    return cpu_bits_f32(sign | cpu_f32_bits((float)em * 0x1p-24f)); /* zero or subnormal: exact */
#endif
}

#if CPU_HAVE_X86
/* exp(x) in 8 lanes, within 2 ulp of expf for x in [-87.3, 88.3]; inputs outside are
 * clamped to that range (so the result is always finite and positive; NaN gives
 * e^-87.3). Range reduction x = n ln2 + r with ln2 split in two, then Cephes' degree-6
 * polynomial for e^r. cpu_exp1 is one lane of it, bit for bit. */
static inline CPU_AVX2 __m256 cpu_exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline CPU_AVX2 float cpu_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline CPU_AVX2 float cpu_hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline CPU_AVX2 double cpu_hsum256d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
#endif

#endif
