/* test_simd_avx512.c - the AVX-512 kernels (kernels/cpu/dot_avx512.c) on any x86-64 CPU
 * with AVX2: tests/CMakeLists.txt compiles dot_avx512.c a second time with
 * -DTPLLM_SIMDE_AVX512 (AVX-512 emulated in portable C by SIMDe; the 256-bit float
 * instructions, whose roundings matter, native through -mavx2 -mfma -mf16c) under the
 * entry point kdot_avx512_simde. Each of its kernels must give the same bits as the AVX2
 * kernel and the scalar kernel of its type (memcmp of the float outputs) for random sizes
 * (odd block counts, a last odd block of a pair), random and quantized-gaussian weights,
 * quantized and (sometimes) uniformly random int8 activations, every tile width nt = 1..4
 * and tile start, and its per-granule loop must equal the AVX2
 * fused granule kernels (which cpu_matmul_f64 uses at the AVX-512 level). On a CPU with
 * AVX-512 the native kernels are compared too.
 *
 * Skipped (exit 77, testmain.c) when SIMDe's headers were not found at configure time
 * (libsimde-dev) or the CPU has no AVX2: never a pass without the comparison. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dot_gran.h"
#include "kernels/quant.h"
#include "testutil.h"
#include "testweights.h"

#if defined(TPLLM_HAVE_SIMDE)
kdot_fn kdot_avx512_simde(enum dtype t); /* dot_avx512.c through SIMDe */
#endif

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static kdot_fn simde_kernel(enum dtype t) {
#if defined(TPLLM_HAVE_SIMDE)
    return kdot_avx512_simde(t);
#else
    (void)t;
    return NULL;
#endif
}

#if defined(TPLLM_HAVE_SIMDE)
#define SKIP_WITHOUT_SIMDE()                                                                                \
    do {                                                                                                    \
        if (cpu_simd_detect() < KSIMD_AVX2)                                                                 \
            cr_skip_test("no AVX2 on this CPU: the SIMDe build of the AVX-512 kernels runs AVX2 float code"); \
    } while (0)
#else
#define SKIP_WITHOUT_SIMDE() cr_skip_test("SIMDe's headers (libsimde-dev) were not found when configuring: skipped")
#endif

static const enum dtype types[] = {DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
                                   DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K};

/* Weights of n_out rows of n values and n_tok activation rows in the type's format. */
struct kcase {
    enum dtype t;
    int64_t n, n_out;
    int n_tok;
    struct tu_wmat w;
    float *x;
    uint8_t *rows;
    struct kact_rows act;
};

static void kcase_make(struct kcase *c, tu_rng *r, enum dtype t, int64_t n, int64_t n_out, int n_tok, bool random_bytes) {
    memset(c, 0, sizeof *c);
    c->t = t, c->n = n, c->n_out = n_out, c->n_tok = n_tok;
    tu_wmat_make(&c->w, r, t, n_out, n, 0, 0, random_bytes);
    c->x = tu_xmalloc((size_t)(n * n_tok) * sizeof *c->x);
    const float scale = powf(10.0f, tu_uniform(r, -1.5f, 1.5f));
    for (int64_t i = 0; i < n * n_tok; i++) c->x[i] = scale * tu_normal(r) * (i % 61 == 7 ? 9.0f : 1.0f);
    if (n >= 64 && (tu_next(r) & 1)) memset(c->x + 32, 0, 32 * sizeof *c->x); /* a zero block (amax 0) */
    const enum kact_fmt fmt = kact_fmt_of(t);
    const size_t rb = kact_layout(fmt, n, &c->act);
    c->rows = aligned_alloc(64, TP_ALIGN_UP(rb * (size_t)n_tok + 64, 64));
    if (fmt == KACT_F32) {
        c->act.base = (const uint8_t *)c->x;
        c->act.stride = (size_t)n * sizeof(float);
    } else {
        c->act.base = c->rows;
        c->act.stride = rb;
        for (int k = 0; k < n_tok; k++) kact_quantize_avx2(fmt, c->x + k * n, n, c->rows + (size_t)k * rb, &c->act);
        /* sometimes every int8 activation value at random, -128 included (the quantizers
         * never give it, but the kernels must agree on any bytes: Q8_0's sign trick) */
        const size_t qbytes = fmt == KACT_Q8_32 ? c->act.off_dv : fmt == KACT_Q8_K ? (size_t)n : 0;
        if (qbytes && tu_next(r) % 3 == 0)
            for (int k = 0; k < n_tok; k++)
                for (size_t j = 0; j < qbytes; j++) c->rows[(size_t)k * rb + j] = (uint8_t)tu_next(r);
    }
}

static void kcase_free(struct kcase *c) {
    tu_wmat_free(&c->w);
    free(c->x);
    free(c->rows);
}

/* Every row against every tile (nt = 1..4 tokens from every start t0), outputs in order. */
static size_t kcase_outputs(const struct kcase *c) {
    size_t n = 0;
    for (int nt = 1; nt <= KDOT_NT; nt++)
        for (int t0 = 0; t0 + nt <= c->n_tok; t0++) n += (size_t)nt;
    return n * (size_t)c->n_out;
}

static void kcase_run(const struct kcase *c, kdot_fn dot, float *out) {
    for (int64_t o = 0; o < c->n_out; o++) {
        const uint8_t *wrow = (const uint8_t *)c->w.m.data + (size_t)o * c->w.m.row_stride;
        for (int nt = 1; nt <= KDOT_NT; nt++)
            for (int t0 = 0; t0 + nt <= c->n_tok; t0++) {
                dot(wrow, c->n, &c->act, t0, nt, out);
                out += nt;
            }
    }
}

/* memcmp of two kernels' outputs; on a difference, the first one (row, tile, token). */
static void expect_same(const struct kcase *c, const float *a, const float *b, const char *what, bool random_bytes) {
    const size_t total = kcase_outputs(c);
    if (!memcmp(a, b, total * sizeof *a)) return;
    size_t idx = 0;
    for (int64_t o = 0; o < c->n_out; o++)
        for (int nt = 1; nt <= KDOT_NT; nt++)
            for (int t0 = 0; t0 + nt <= c->n_tok; t0++)
                for (int k = 0; k < nt; k++, idx++)
                    cr_assert(!memcmp(&a[idx], &b[idx], sizeof *a),
                              "%s, n %lld (%s weights), row %lld, tile of %d from token %d, token %d: %s %.9g (0x%08x) "
                              "vs %.9g (0x%08x)",
                              dtype_name(c->t), (long long)c->n, random_bytes ? "random-byte" : "gaussian",
                              (long long)o, nt, t0, t0 + k, what, a[idx], f32_bits(a[idx]), b[idx],
                              f32_bits(b[idx]));
    cr_assert_fail("%s: outputs differ (%s)", dtype_name(c->t), what);
}

/* Lengths to try for type t: odd and even block counts (one block, a last odd block of a
 * pair, whole groups of four), and random ones; float types any length. */
static int64_t pick_n(tu_rng *r, enum dtype t, int i) {
    static const int64_t fixed_blocks[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 16, 17, 31, 33};
    const int64_t blk = dtype_block(t);
    const int nf = (int)TP_ARRAY_LEN(fixed_blocks);
    if (blk == 1) return i < nf ? fixed_blocks[i] * 17 + i : 1 + (int64_t)(tu_next(r) % 1500);
    const int64_t maxb = blk == 256 ? 24 : 96;
    return blk * (i < nf ? fixed_blocks[i] : 1 + (int64_t)(tu_next(r) % (uint64_t)maxb));
}

Test(simd_avx512, simde_kernels_equal_the_avx2_and_scalar_kernels_bit_for_bit) {
    SKIP_WITHOUT_SIMDE();
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const bool native = cpu_simd_detect() >= KSIMD_AVX512;
    int n_kernels = 0;
    for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
        const enum dtype t = types[ti];
        const kdot_fn k512 = simde_kernel(t);
        cr_assert_eq(k512 == NULL, kdot_avx512(t) == NULL, "%s: the SIMDe and native AVX-512 tables differ",
                     dtype_name(t));
        if (!k512) continue; /* the AVX-512 level runs the AVX2 kernel of this type */
        n_kernels++;
        for (int i = 0; i < 40; i++) {
            const bool random_bytes = i & 1;
            struct kcase c;
            kcase_make(&c, &r, t, pick_n(&r, t, i), 3, 6, random_bytes);
            const size_t total = kcase_outputs(&c);
            float *y512 = tu_xmalloc(total * sizeof(float)), *y2 = tu_xmalloc(total * sizeof(float));
            float *y0 = tu_xmalloc(total * sizeof(float));
            kcase_run(&c, k512, y512);
            kcase_run(&c, kdot_avx2(t), y2);
            kcase_run(&c, kdot_scalar(t), y0);
            expect_same(&c, y512, y2, "AVX-512 (SIMDe) vs AVX2", random_bytes);
            expect_same(&c, y0, y2, "scalar vs AVX2", random_bytes);
            if (native) {
                kcase_run(&c, kdot_avx512(t), y0);
                expect_same(&c, y0, y2, "AVX-512 (native) vs AVX2", random_bytes);
            }
            free(y512), free(y2), free(y0);
            kcase_free(&c);
        }
    }
    cr_assert_geq(n_kernels, 8, "expected AVX-512 kernels for the 32-value block and K types, found %d", n_kernels);
}

/* cpu_matmul_f64 at the AVX-512 level runs the AVX2 fused granule kernels: they must
 * equal the per-granule loop of the AVX-512 kernels. */
Test(simd_avx512, avx2_fused_granule_kernels_equal_the_avx512_per_granule_loop) {
    SKIP_WITHOUT_SIMDE();
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    cr_assert(kdot_gran_fused(KSIMD_AVX512, DTYPE_Q4_0) == kdot_gran_avx2(DTYPE_Q4_0),
              "the AVX-512 level should use the AVX2 fused granule kernels");
    static const int64_t granules[] = {64, 128, 256, 512};
    for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
        const enum dtype t = types[ti];
        const kdot_fn k512 = simde_kernel(t);
        const kdot_gran_fn fused = kdot_gran_avx2(t);
        if (!k512 || !fused) continue;
        const int64_t unit = kdot_gran_unit(t);
        for (int i = 0; i < 12; i++) {
            struct kcase c;
            kcase_make(&c, &r, t, pick_n(&r, t, 3 * i + 1), 2, 5, i & 1);
            const int64_t g = TP_MAX(unit, granules[i % 4] / unit * unit), ng = (c.n + g - 1) / g;
            struct kact_rows *views = tu_xmalloc((size_t)ng * sizeof *views);
            size_t *w_off = tu_xmalloc((size_t)ng * sizeof *w_off);
            for (int64_t q = 0; q < ng; q++) {
                views[q] = kact_view(&c.act, kact_fmt_of(t), q * g);
                w_off[q] = dtype_row_bytes(t, q * g);
            }
            for (int64_t o = 0; o < c.n_out; o++) {
                const uint8_t *wrow = (const uint8_t *)c.w.m.data + (size_t)o * c.w.m.row_stride;
                for (int nt = 1; nt <= KDOT_NT; nt++)
                    for (int t0 = 0; t0 + nt <= c.n_tok; t0++) {
                        double want[KDOT_NT] = {0}, got[KDOT_NT] = {0};
                        kdot_gran_loop(k512, wrow, c.n, g, views, w_off, t0, nt, want);
                        fused(wrow, c.n, g, &c.act, t0, nt, got);
                        for (int k = 0; k < nt; k++)
                            cr_assert(!memcmp(&got[k], &want[k], sizeof got[k]),
                                      "%s, n %lld, granule %lld, tile of %d from %d, token %d: AVX2 fused %.17g vs "
                                      "AVX-512 (SIMDe) per-granule loop %.17g",
                                      dtype_name(t), (long long)c.n, (long long)g, nt, t0, t0 + k, got[k], want[k]);
                    }
            }
            free(views), free(w_off);
            kcase_free(&c);
        }
    }
}
