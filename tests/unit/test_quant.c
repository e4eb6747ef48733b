/* test_quant.c - kernels/quant.c against the gguf Python package (golden files made by
 * tests/golden/make_quant_golden.py), the CPU's own F16C conversion, and error bounds of
 * the K-quant quantizers on fresh random inputs. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/base.h"
#include "kernels/cpu/cpu.h"
#include "kernels/quant.h"
#include "testutil.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static const enum dtype golden_types[] = {
    DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
    DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K,
};

struct golden {
    uint8_t *file;
    uint32_t type, n_deq, n_q;
    const uint8_t *raw;   /* section A blocks */
    const float *deq;     /* section A reference values (unaligned: copy before use) */
    const uint8_t *x;     /* section B input floats */
    const uint8_t *q;     /* section B reference blocks */
};

/* Loads tests/golden/quant/<name>.bin and checks its header and size. */
static struct golden golden_load(enum dtype t) {
    struct golden g = {0};
    char rel[128];
    snprintf(rel, sizeof rel, "tests/golden/quant/%s.bin", dtype_name(t));
    char *path = tu_src_path(rel);
    size_t size = 0;
    g.file = tu_read_file(path, &size);
    cr_assert_not_null(g.file, "cannot read %s; regenerate with tests/golden/make_quant_golden.py", path);
    free(path);
    cr_assert(size >= 20 && !memcmp(g.file, "TPQG", 4), "%s: bad golden header", rel);
    uint32_t hdr[4];
    memcpy(hdr, g.file + 4, sizeof hdr);
    cr_assert_eq(hdr[0], 1u, "%s: golden version %u", rel, hdr[0]);
    g.type = hdr[1];
    g.n_deq = hdr[2];
    g.n_q = hdr[3];
    cr_assert_eq(g.type, (uint32_t)t, "%s: type id %u", rel, g.type);
    size_t a = dtype_row_bytes(t, g.n_deq), b = g.n_q ? dtype_row_bytes(t, g.n_q) : 0;
    cr_assert_eq(size, 20 + a + 4 * (size_t)g.n_deq + 4 * (size_t)g.n_q + b, "%s: size %zu", rel, size);
    g.raw = g.file + 20;
    g.deq = (const float *)(g.raw + a);
    g.x = g.raw + a + 4 * (size_t)g.n_deq;
    g.q = g.x + 4 * (size_t)g.n_q;
    return g;
}

Test(quant, dequantize_is_bit_exact_with_gguf_for_every_type) {
    for (size_t k = 0; k < TP_ARRAY_LEN(golden_types); k++) {
        enum dtype t = golden_types[k];
        struct golden g = golden_load(t);
        size_t bytes = dtype_row_bytes(t, g.n_deq);
        void *src = aligned_alloc(64, TP_ALIGN_UP(bytes, 64));
        memcpy(src, g.raw, bytes);
        float *y = calloc(g.n_deq, sizeof *y), *ref = malloc(g.n_deq * sizeof *ref);
        memcpy(ref, g.deq, g.n_deq * sizeof *ref);
        quant_dequantize_row(t, src, y, g.n_deq);
        for (uint32_t i = 0; i < g.n_deq; i++)
            cr_assert(!memcmp(&y[i], &ref[i], 4), "%s: value %u is %a, gguf says %a", dtype_name(t), i, (double)y[i],
                      (double)ref[i]);
        free(src);
        free(y);
        free(ref);
        free(g.file);
    }
}

Test(quant, quantize_is_byte_exact_with_gguf_where_gguf_quantizes) {
    int checked = 0;
    for (size_t k = 0; k < TP_ARRAY_LEN(golden_types); k++) {
        enum dtype t = golden_types[k];
        struct golden g = golden_load(t);
        if (g.n_q) {
            cr_assert(quant_can_quantize(t), "%s", dtype_name(t));
            float *x = malloc(g.n_q * sizeof *x);
            memcpy(x, g.x, g.n_q * sizeof *x);
            size_t bytes = dtype_row_bytes(t, g.n_q);
            uint8_t *q = calloc(1, bytes);
            cr_assert_eq(quant_quantize_row(t, x, q, g.n_q), bytes, "%s: bytes written", dtype_name(t));
            int64_t bs = dtype_get(t)->block_size;
            size_t ts = dtype_get(t)->type_size;
            for (size_t i = 0; i < bytes; i++)
                cr_assert_eq(q[i], g.q[i], "%s: byte %zu (block %zu, element base %lld) is 0x%02x, gguf says 0x%02x",
                             dtype_name(t), i, i / ts, (long long)(i / ts * bs), q[i], g.q[i]);
            checked++;
            free(x);
            free(q);
        }
        free(g.file);
    }
    cr_assert_geq(checked, 7, "golden files cover F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0");
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_f32_to_fp16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
__attribute__((target("f16c"))) static float hw_fp16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
#endif

Test(quant, fp16_conversions_agree_with_the_cpus_f16c_instructions) {
#if defined(__x86_64__)
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("this CPU has no F16C");
    for (uint32_t h = 0; h < 65536; h++) {
        float a = fp16_to_f32((uint16_t)h), b = hw_fp16_to_f32((uint16_t)h);
        bool nan = ((h & 0x7c00) == 0x7c00) && (h & 0x3ff);
        if (nan)
            cr_assert(isnan(a), "0x%04x must decode to NaN", h);
        else
            cr_assert(!memcmp(&a, &b, 4), "fp16 0x%04x decodes to %a, F16C says %a", h, (double)a, (double)b);
        if (!nan) cr_assert_eq(f32_to_fp16(a), h, "fp16 0x%04x does not round-trip", h);
    }
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (int i = 0; i < 2000000; i++) {
        /* random bit patterns concentrated on the fp16 range, its edges and ties */
        uint32_t u = (uint32_t)tu_next(&r);
        if (i & 1) u = (u & 0x80000000u) | (((u >> 23) % 48 + 96) << 23) | (u & 0x7fffffu);
        if (i % 5 == 0) u &= ~0xfffu, u |= 0x1000u * (i % 3 == 0); /* exact ties and neighbours */
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        cr_assert_eq(f32_to_fp16(f), hw_f32_to_fp16(f), "%a (0x%08x) rounds to 0x%04x, F16C says 0x%04x", (double)f, u,
                     f32_to_fp16(f), hw_f32_to_fp16(f));
    }
#else
    cr_skip_test("not an x86-64 CPU");
#endif
}

Test(quant, bf16_conversions_round_to_nearest_even_and_keep_nan_quiet) {
    cr_assert_eq(f32_to_bf16(1.0f), 0x3f80);
    float tie_down, tie_up;
    uint32_t u1 = 0x3f808000u, u2 = 0x3f818000u; /* halfway cases: to even */
    memcpy(&tie_down, &u1, 4);
    memcpy(&tie_up, &u2, 4);
    cr_assert_eq(f32_to_bf16(tie_down), 0x3f80);
    cr_assert_eq(f32_to_bf16(tie_up), 0x3f82);
    cr_assert_eq(f32_to_bf16(NAN) & 0x7fc0, 0x7fc0);
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue;
        cr_assert_eq(f32_to_bf16(bf16_to_f32((uint16_t)h)), h, "bf16 0x%04x round trip", h);
    }
}

/* Fresh random rows in several shapes: gaussian, uniform all-positive, a heavy outlier
 * per sub-block, tiny magnitudes, all zero. */
static void fill_case(tu_rng *r, float *x, int64_t n, int kind) {
    float scale = powf(10.0f, tu_uniform(r, -3.0f, 1.0f));
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case 0: x[i] = scale * tu_normal(r); break;
        case 1: x[i] = scale * tu_uniform(r, 0.1f, 1.0f); break;
        case 2: x[i] = scale * tu_normal(r) * (i % 37 == 5 ? 30.0f : 1.0f); break;
        case 3: x[i] = 1e-6f * tu_normal(r); break;
        case 4: x[i] = -scale * tu_uniform(r, 0.0f, 1.0f); break;
        default: x[i] = 0.0f; break;
        }
    }
}

struct kspec {
    enum dtype t;
    int sub;  /* values per sub-block */
    int qmax; /* asymmetric: quants 0..qmax; symmetric: -qmax..qmax used by the quantizer */
    int smax; /* largest sub-block scale */
    bool sym;
};

static const struct kspec kspecs[] = {
    {DTYPE_Q2_K, 16, 3, 15, false},  {DTYPE_Q3_K, 16, 3, 31, true}, {DTYPE_Q4_K, 32, 15, 63, false},
    {DTYPE_Q5_K, 32, 31, 63, false}, {DTYPE_Q6_K, 16, 31, 127, true},
};

/* Bound on the largest error of the simple K quantizers, from the input alone: the
 * decoded step of a sub-block is its range over qmax (plus the rounding up of the
 * sub-block scale and min to the super-block's grid); every value is within half a step. */
static void check_k_roundtrip(const struct kspec *k, const float *x, const float *y, int kind) {
    const int nsub = 256 / k->sub;
    double lo[16], hi[16], amax[16], max_m = 0, max_top = 0, max_s = 0;
    for (int j = 0; j < nsub; j++) {
        lo[j] = 0, hi[j] = -INFINITY, amax[j] = 0;
        for (int l = 0; l < k->sub; l++) {
            double v = x[j * k->sub + l];
            lo[j] = fmin(lo[j], v);
            hi[j] = fmax(hi[j], v);
            amax[j] = fmax(amax[j], fabs(v));
        }
        max_m = fmax(max_m, -lo[j]);
        max_s = fmax(max_s, amax[j] / k->qmax);
    }
    /* fp16 rounding up of the super-block scales: a relative 2^-10 for normal values, one
     * subnormal step 2^-24 below 2^-14 */
    const double grid = 1.0 + 1.0 / 512, ulp = 0x1p-24;
    const double dmin = max_m / k->smax * grid + ulp;
    for (int j = 0; j < nsub; j++) max_top = fmax(max_top, hi[j] - lo[j] + dmin);
    const double d = (k->sym ? max_s / k->smax : max_top / (k->qmax * k->smax)) * grid + ulp;
    for (int j = 0; j < nsub; j++) {
        double step = k->sym ? amax[j] / k->qmax + d : (hi[j] - lo[j] + dmin) / k->qmax + d;
        double bound = 0.5 * step * (1 + 1e-5) + 1e-30;
        for (int l = 0; l < k->sub; l++) {
            int i = j * k->sub + l;
            double err = fabs((double)x[i] - (double)y[i]);
            cr_assert(err <= bound, "%s (input kind %d): value %d is %g, decodes to %g: error %g > bound %g",
                      dtype_name(k->t), kind, i, (double)x[i], (double)y[i], err, bound);
        }
    }
}

Test(quant, k_quant_quantizers_round_trip_within_half_a_step) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    enum { NB = 8, N = NB * 256 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    uint8_t *q = malloc(NB * 210 + 64);
    for (size_t k = 0; k < TP_ARRAY_LEN(kspecs); k++) {
        const struct kspec *ks = &kspecs[k];
        cr_assert(quant_can_quantize(ks->t), "%s", dtype_name(ks->t));
        double se = 0, sx = 0;
        for (int kind = 0; kind < 6; kind++) {
            fill_case(&r, x, N, kind);
            cr_assert_eq(quant_quantize_row(ks->t, x, q, N), dtype_row_bytes(ks->t, N));
            quant_dequantize_row(ks->t, q, y, N);
            for (int b = 0; b < NB; b++) check_k_roundtrip(ks, x + b * 256, y + b * 256, kind);
            if (kind == 0)
                for (int i = 0; i < N; i++) se += (double)(x[i] - y[i]) * (x[i] - y[i]), sx += (double)x[i] * x[i];
        }
        /* On gaussian data the relative RMS error is that of ~qmax levels per sub-block. */
        double rel = sqrt(se / sx), limit = ks->sym ? 0.8 / ks->qmax : 1.4 / ks->qmax;
        cr_assert(rel < limit, "%s: relative RMS error %g >= %g on gaussian input", dtype_name(ks->t), rel, limit);
    }
    free(x);
    free(y);
    free(q);
}

Test(quant, activation_formats_q8_1_and_q8_k_hold_their_invariants) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    enum { N = 1024 };
    float x[N], y[N];
    uint8_t q[N / 256 * 292];
    for (int kind = 0; kind < 6; kind++) {
        fill_case(&r, x, N, kind);
        /* Q8_K: the value of largest magnitude maps to -127, every value within d/2,
         * bsums are the group sums. */
        cr_assert_eq(quant_quantize_row(DTYPE_Q8_K, x, q, N), sizeof q);
        quant_dequantize_row(DTYPE_Q8_K, q, y, N);
        for (int b = 0; b < N / 256; b++) {
            const uint8_t *blk = q + b * 292;
            float d;
            memcpy(&d, blk, 4);
            const int8_t *qs = (const int8_t *)(blk + 4);
            int16_t bs[16];
            memcpy(bs, blk + 260, sizeof bs);
            float amax = 0;
            int imax = 0;
            for (int i = 0; i < 256; i++)
                if (fabsf(x[b * 256 + i]) > amax) amax = fabsf(x[b * 256 + i]), imax = i;
            if (amax > 0) cr_assert_eq(qs[imax], -127, "Q8_K: largest value must map to -127");
            for (int i = 0; i < 256; i++)
                cr_assert_leq(fabs((double)x[b * 256 + i] - y[b * 256 + i]), fabs(d) * 0.5 * (1 + 1e-5) + 1e-30);
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += qs[16 * g + i];
                cr_assert_eq(bs[g], s, "Q8_K bsums[%d]", g);
            }
        }
        /* Q8_1: as Q8_0 plus s = fp16(d * sum(qs)). */
        uint8_t q1[N / 32 * 36], q0[N / 32 * 34];
        quant_quantize_row(DTYPE_Q8_1, x, q1, N);
        quant_quantize_row(DTYPE_Q8_0, x, q0, N);
        for (int b = 0; b < N / 32; b++) {
            cr_assert(!memcmp(q1 + 36 * b, q0 + 34 * b, 2) && !memcmp(q1 + 36 * b + 4, q0 + 34 * b + 2, 32),
                      "Q8_1 block %d must carry the Q8_0 quants", b);
            uint16_t dh, sh;
            memcpy(&dh, q1 + 36 * b, 2);
            memcpy(&sh, q1 + 36 * b + 2, 2);
            int s = 0;
            for (int i = 0; i < 32; i++) s += (int8_t)q1[36 * b + 4 + i];
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * b + i]));
            cr_assert_eq(dh, f32_to_fp16(amax / 127), "Q8_1 block %d: d", b);
            /* ggml scales the sum by d before d is rounded to fp16 */
            cr_assert_eq(sh, f32_to_fp16((float)s * (amax / 127)), "Q8_1 block %d: s", b);
        }
    }
}

Test(quant, types_it_cannot_produce_write_nothing) {
    float x[256] = {0};
    uint8_t q[512];
    memset(q, 0xAB, sizeof q);
    cr_assert_eq(quant_quantize_row(DTYPE_IQ2_XXS, x, q, 256), 0u);
    cr_assert_not(quant_can_quantize(DTYPE_IQ4_XS));
    for (size_t i = 0; i < sizeof q; i++) cr_assert_eq(q[i], 0xAB);
}
