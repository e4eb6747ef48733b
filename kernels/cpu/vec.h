/* vec.h - helpers private to the CPU op files (ops.c, attention.c, topk.c): splitting a
 * range over the thread pool, the SIMD dispatch test, and AVX2 math used by several ops.
 *
 * AVX2 code is compiled per function with CPU_AVX2 (target attribute), so the library
 * builds for any x86-64 and picks the path at run time from cpu_backend.simd. */
#ifndef TPLLM_CPU_VEC_H
#define TPLLM_CPU_VEC_H

#include "cpu.h"

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

#if CPU_HAVE_X86
/* exp(x) in 8 lanes, within 2 ulp of expf for x in [-87.3, 88.3]; inputs outside are
 * clamped to that range (so the result is always finite and positive). Range reduction
 * x = n ln2 + r with ln2 split in two, then Cephes' degree-6 polynomial for e^r. */
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
