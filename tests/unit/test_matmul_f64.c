/* test_matmul_f64.c - the row-parallel matmul: agrees with matmul, and its partial sums
 * over column slices (tensor-parallel shards) add up to the full result, for every type
 * and SIMD level; its fused granule kernels equal the per-granule kernel loop bit for bit;
 * every SIMD level this CPU runs gives the same doubles (memcmp), and the scalar kernels'
 * per-granule loop equals the AVX2 fused kernels. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dot_gran.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "testutil.h"

static const enum dtype types[] = {DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
                                   DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K};

static void check_shards(tu_rng *rng, int simd) {
    tu_rng r = *rng;
    const int64_t n_out = 37, n_in = 1536, n_tok = 5, granule = 256;
    struct kbackend *b = NULL;
    struct kbackend_opts o = {.n_threads = 2, .max_tokens = 8, .max_in = n_in, .max_ctx = 16, .max_heads = 1, .simd = simd};
    tp_err e = {0};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), 0, "%s", e.msg);
    float *wf = malloc((size_t)(n_out * n_in) * sizeof(float)), *x = malloc((size_t)(n_tok * n_in) * sizeof(float));
    tu_fill_uniform(&r, wf, (size_t)(n_out * n_in), -1.0f, 1.0f);
    tu_fill_uniform(&r, x, (size_t)(n_tok * n_in), -1.0f, 1.0f);
    float *y = malloc((size_t)(n_tok * n_out) * sizeof(float));
    double *full = malloc((size_t)(n_tok * n_out) * sizeof(double)), *part = malloc((size_t)(n_tok * n_out) * sizeof(double));
    double *sum = malloc((size_t)(n_tok * n_out) * sizeof(double));
    for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
        enum dtype t = types[ti];
        size_t rb = dtype_row_bytes(t, n_in);
        uint8_t *w = malloc(rb * (size_t)n_out);
        cr_assert(quant_can_quantize(t), "cannot quantize %s", dtype_name(t));
        for (int64_t i = 0; i < n_out; i++) quant_quantize_row(t, wf + i * n_in, w + (size_t)i * rb, n_in);
        struct kmat m = {.data = w, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = rb};
        b->ops->matmul(b, y, &m, x, n_tok);
        b->ops->matmul_f64(b, full, &m, x, n_tok, granule);
        for (int64_t i = 0; i < n_tok * n_out; i++)
            cr_assert(fabs(full[i] - y[i]) <= 2e-5 * (1.0 + fabs(y[i])), "%s, simd %d: f64 %.9g vs matmul %.9g", dtype_name(t), simd, full[i], y[i]);
        /* shards at granule boundaries, as the shard plan cuts them: 1, 2, 3 and 6 slices */
        static const int cuts[][7] = {{0, 6}, {0, 3, 6}, {0, 1, 4, 6}, {0, 1, 2, 3, 4, 5, 6}};
        static const int ncuts[] = {2, 3, 4, 7};
        for (int c = 0; c < 4; c++) {
            memset(sum, 0, (size_t)(n_tok * n_out) * sizeof(double));
            for (int s = 0; s + 1 < ncuts[c]; s++) {
                int64_t c0 = cuts[c][s] * granule, c1 = cuts[c][s + 1] * granule;
                float *xs = malloc((size_t)(n_tok * (c1 - c0)) * sizeof(float));
                for (int64_t k = 0; k < n_tok; k++) memcpy(xs + k * (c1 - c0), x + k * n_in + c0, (size_t)(c1 - c0) * sizeof(float));
                struct kmat ms = {.data = w + dtype_row_bytes(t, c0), .type = t, .n_out = n_out, .n_in = c1 - c0, .row_stride = rb};
                b->ops->matmul_f64(b, part, &ms, xs, n_tok, granule);
                for (int64_t i = 0; i < n_tok * n_out; i++) sum[i] += part[i];
                free(xs);
            }
            for (int64_t i = 0; i < n_tok * n_out; i++) {
                cr_assert(fabs(sum[i] - full[i]) <= 1e-12 * (1.0 + fabs(full[i])), "%s, simd %d, %d shards: %.17g vs %.17g",
                          dtype_name(t), simd, ncuts[c] - 1, sum[i], full[i]);
            }
        }
        free(w);
    }
    /* reduce_f64 adds parts in order and rounds once */
    double parts[3] = {1.0, 1e-8, -1.0};
    float out;
    b->ops->reduce_f64(b, &out, parts, 3, 1);
    cr_assert_float_eq(out, 1e-8f, 1e-15);
    free(wf), free(x), free(y), free(full), free(part), free(sum);
    kbackend_free(b);
    *rng = r;
}

Test(matmul_f64, partial_sums_over_shards_add_up_to_the_full_product_for_every_type) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (int simd = KSIMD_SCALAR; simd <= (int)cpu_simd_detect(); simd++) check_shards(&r, simd);
}

/* One weight row of n values of type t against n_tok activation rows at SIMD level
 * `level`: the fused kernel and the per-granule loop, tiled as cpu_matmul_f64 tiles. */
static void check_fused(tu_rng *r, enum ksimd level, enum dtype t, int64_t n, int64_t granule, int64_t n_tok) {
    kdot_gran_fn fused = kdot_gran_fused(level, t);
    kdot_fn dot = kdot_for(level, t);
    cr_assert(dot, "%s: no kernel", dtype_name(t));
    float *wf = malloc((size_t)n * sizeof(float)), *x = malloc((size_t)(n * n_tok) * sizeof(float));
    tu_fill_uniform(r, wf, (size_t)n, -1.0f, 1.0f);
    tu_fill_uniform(r, x, (size_t)(n * n_tok), -2.0f, 2.0f);
    uint8_t *w = malloc(dtype_row_bytes(t, n));
    quant_quantize_row(t, wf, w, n);
    enum kact_fmt fmt = kact_fmt_of(t);
    struct kact_rows act;
    size_t row_bytes = kact_layout(fmt, n, &act);
    uint8_t *rows = aligned_alloc(64, row_bytes * (size_t)n_tok);
    if (fmt == KACT_F32) {
        act.base = (const uint8_t *)x;
        act.stride = (size_t)n * sizeof(float);
    } else {
        act.base = rows;
        act.stride = row_bytes;
        kact_quant_fn quant = level >= KSIMD_AVX2 ? kact_quantize_avx2 : kact_quantize_scalar;
        for (int64_t k = 0; k < n_tok; k++) quant(fmt, x + k * n, n, rows + (size_t)k * row_bytes, &act);
    }
    int64_t n_gran = (n + granule - 1) / granule;
    struct kact_rows *views = malloc((size_t)n_gran * sizeof *views);
    size_t *w_off = malloc((size_t)n_gran * sizeof *w_off);
    for (int64_t g = 0; g < n_gran; g++) {
        views[g] = kact_view(&act, fmt, g * granule);
        w_off[g] = dtype_row_bytes(t, g * granule);
    }
    /* the row in two slices at a granule boundary, the sums carried from one to the next */
    const int64_t gs = n_gran / 2, cut = gs * granule;
    for (int64_t t0 = 0; t0 < n_tok; t0 += KDOT_NT) {
        int nt = (int)(n_tok - t0 < KDOT_NT ? n_tok - t0 : KDOT_NT);
        double want[KDOT_NT] = {0}, got[KDOT_NT] = {0}, sliced[KDOT_NT] = {0}, one[KDOT_NT] = {0};
        kdot_gran_loop(dot, w, n, granule, views, w_off, t0, nt, want);
        if (fused) {
            fused(w, n, granule, &act, t0, nt, got);
            fused(w, cut, granule, &act, t0, nt, sliced);
            fused(w + w_off[gs], n - cut, granule, &views[gs], t0, nt, sliced);
        } else {
            memcpy(got, want, sizeof got);
            kdot_gran_loop(dot, w, cut, granule, views, w_off, t0, nt, sliced);
            kdot_gran_loop(dot, w, n - cut, granule, views + gs, w_off + gs, t0, nt, sliced);
        }
        for (int k = 0; k < nt; k++) {
            cr_assert(memcmp(&got[k], &want[k], sizeof got[k]) == 0,
                      "%s, simd %d, n %lld, granule %lld, token %lld of %lld: fused %.17g vs loop %.17g",
                      dtype_name(t), (int)level, (long long)n, (long long)granule, (long long)(t0 + k),
                      (long long)n_tok, got[k], want[k]);
            cr_assert(memcmp(&sliced[k], &want[k], sizeof got[k]) == 0,
                      "%s, simd %d, n %lld, granule %lld, token %lld: in 2 slices %.17g vs whole %.17g",
                      dtype_name(t), (int)level, (long long)n, (long long)granule, (long long)(t0 + k), sliced[k],
                      want[k]);
            /* a token alone (the decode tile) gives the same bits as in a tile of nt */
            if (fused) fused(w, n, granule, &act, t0 + k, 1, one);
            else kdot_gran_loop(dot, w, n, granule, views, w_off, t0 + k, 1, one);
            cr_assert(memcmp(&one[0], &want[k], sizeof one[0]) == 0,
                      "%s, simd %d, n %lld, granule %lld, token %lld: alone %.17g vs in a tile %.17g",
                      dtype_name(t), (int)level, (long long)n, (long long)granule, (long long)(t0 + k), one[0],
                      want[k]);
            one[0] = 0.0;
        }
    }
    free(views), free(w_off), free(rows), free(w), free(wf), free(x);
}

/* A long row (several column slices of the batched path, several L2 row blocks) gives the
 * same bits with 1 and 2 threads, batched and token by token. */
Test(matmul_f64, column_slices_row_blocks_and_threads_do_not_change_a_bit) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const int64_t n_out = 300, n_in = 16384, n_tok = 6, granule = 256;
    static const enum dtype ts[] = {DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q8_0, DTYPE_Q6_K, DTYPE_F16};
    float *wf = malloc((size_t)n_in * sizeof(float)), *x = malloc((size_t)(n_tok * n_in) * sizeof(float));
    tu_fill_uniform(&r, x, (size_t)(n_tok * n_in), -1.0f, 1.0f);
    double *y1 = malloc((size_t)(n_tok * n_out) * sizeof(double)), *y2 = malloc((size_t)(n_tok * n_out) * sizeof(double));
    double *yt = malloc((size_t)n_out * sizeof(double));
    for (int simd = KSIMD_SCALAR; simd <= (int)cpu_simd_detect(); simd++) {
        struct kbackend *b1 = NULL, *b2 = NULL;
        struct kbackend_opts o = {.n_threads = 1, .max_tokens = 8, .max_in = n_in, .max_ctx = 16, .max_heads = 1, .simd = simd};
        tp_err e = {0};
        cr_assert_eq(kbackend_cpu_create(&b1, &o, &e), 0, "%s", e.msg);
        o.n_threads = 2;
        cr_assert_eq(kbackend_cpu_create(&b2, &o, &e), 0, "%s", e.msg);
        for (size_t ti = 0; ti < TP_ARRAY_LEN(ts); ti++) {
            enum dtype t = ts[ti];
            size_t rb = dtype_row_bytes(t, n_in);
            uint8_t *w = malloc(rb * (size_t)n_out);
            for (int64_t i = 0; i < n_out; i++) {
                tu_fill_uniform(&r, wf, (size_t)n_in, -1.0f, 1.0f);
                quant_quantize_row(t, wf, w + (size_t)i * rb, n_in);
            }
            struct kmat m = {.data = w, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = rb};
            b1->ops->matmul_f64(b1, y1, &m, x, n_tok, granule);
            b2->ops->matmul_f64(b2, y2, &m, x, n_tok, granule);
            cr_assert(!memcmp(y1, y2, (size_t)(n_tok * n_out) * sizeof(double)), "%s, simd %d: 2 threads differ from 1",
                      dtype_name(t), simd);
            for (int64_t k = 0; k < n_tok; k++) {
                b2->ops->matmul_f64(b2, yt, &m, x + k * n_in, 1, granule);
                cr_assert(!memcmp(yt, y1 + k * n_out, (size_t)n_out * sizeof(double)),
                          "%s, simd %d: token %lld alone differs from the batch", dtype_name(t), simd, (long long)k);
            }
            free(w);
        }
        kbackend_free(b1);
        kbackend_free(b2);
    }
    free(wf), free(x), free(y1), free(y2), free(yt);
}

Test(matmul_f64, fused_granule_kernels_equal_the_per_granule_loop_bit_for_bit) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    static const int64_t granules[] = {64, 128, 256};
    /* lengths in blocks: whole granules, a shorter last granule, odd block counts */
    static const int64_t blocks[] = {1, 2, 3, 5, 8, 9, 17, 24, 33};
    static const int64_t extra_f[] = {7, 77, 333, 1031}; /* float types: any length */
    int n_fused = 0;
    for (int level = KSIMD_SCALAR; level <= (int)cpu_simd_detect(); level++) {
        for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
            enum dtype t = types[ti];
            int64_t unit = kdot_gran_unit(t), blk = dtype_block(t);
            n_fused += kdot_gran_fused((enum ksimd)level, t) != NULL;
            for (size_t gi = 0; gi < TP_ARRAY_LEN(granules); gi++) {
                int64_t granule = granules[gi] < unit ? unit : granules[gi] / unit * unit;
                for (int64_t n_tok = 1; n_tok <= 5; n_tok++) {
                    for (size_t bi = 0; bi < TP_ARRAY_LEN(blocks); bi++)
                        check_fused(&r, (enum ksimd)level, t, blocks[bi] * blk, granule, n_tok);
                    if (blk == 1)
                        for (size_t i = 0; i < TP_ARRAY_LEN(extra_f); i++)
                            check_fused(&r, (enum ksimd)level, t, extra_f[i], granule, n_tok);
                }
            }
        }
    }
    if (cpu_simd_detect() >= KSIMD_AVX2) cr_assert_geq(n_fused, 6, "fused kernels expected for the AVX2 level");
}

/* cpu_matmul_f64 at every SIMD level this CPU runs, batched (n_tok 1..9) and in granules
 * (a block pair, a head, an FFN chunk, an odd multiple of the unit; rows with a shorter last
 * granule and odd block counts): every level's doubles equal the scalar level's bit for
 * bit. */
Test(matmul_f64, every_simd_level_gives_the_same_bits) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const int n_lv = (int)cpu_simd_detect() + 1;
    const int64_t n_out = 23, max_in = 4096;
    struct kbackend *b[3] = {NULL};
    for (int l = 0; l < n_lv; l++) {
        struct kbackend_opts o = {.n_threads = 1 + l % 2, .max_tokens = 9, .max_in = max_in, .max_ctx = 16,
                                  .max_heads = 1, .simd = l};
        tp_err e = {0};
        cr_assert_eq(kbackend_cpu_create(&b[l], &o, &e), 0, "%s", e.msg);
    }
    double *want = malloc((size_t)(9 * n_out) * sizeof(double)), *got = malloc((size_t)(9 * n_out) * sizeof(double));
    float *x = malloc((size_t)(9 * max_in) * sizeof(float));
    for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
        const enum dtype t = types[ti];
        const int64_t blk = dtype_block(t), unit = kdot_gran_unit(t);
        static const int64_t nblocks[] = {1, 3, 8, 13};
        static const int64_t nfloat[] = {1, 77, 256, 1031};
        for (int i = 0; i < 4; i++) {
            const int64_t n_in = blk == 1 ? nfloat[i] : blk * (blk == 256 ? nblocks[i] : 9 * nblocks[i]);
            const int64_t granules[] = {unit, 64 / unit * unit, 256 / unit * unit, 3 * unit};
            const int64_t granule = TP_MAX(unit, granules[(i + (int)ti) % 4]);
            const size_t rb = dtype_row_bytes(t, n_in);
            uint8_t *w = malloc(rb * (size_t)n_out);
            float *wf = malloc((size_t)n_in * sizeof(float));
            for (int64_t o = 0; o < n_out; o++) {
                tu_fill_uniform(&r, wf, (size_t)n_in, -1.0f, 1.0f);
                quant_quantize_row(t, wf, w + (size_t)o * rb, n_in);
            }
            struct kmat m = {.data = w, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = rb};
            for (int64_t n_tok = 1; n_tok <= 9; n_tok++) {
                tu_fill_uniform(&r, x, (size_t)(n_tok * n_in), -2.0f, 2.0f);
                const size_t ybytes = (size_t)(n_tok * n_out) * sizeof(double);
                for (int l = 0; l < n_lv; l++) {
                    b[l]->ops->matmul_f64(b[l], l ? got : want, &m, x, n_tok, granule);
                    if (!l || !memcmp(got, want, ybytes)) continue;
                    for (int64_t q = 0; q < n_tok * n_out; q++)
                        cr_assert(!memcmp(&got[q], &want[q], sizeof *got),
                                  "%s, n_in %lld, granule %lld, n_tok %lld: y[%lld][%lld] at simd %d %.17g vs scalar "
                                  "%.17g",
                                  dtype_name(t), (long long)n_in, (long long)granule, (long long)n_tok,
                                  (long long)(q / n_out), (long long)(q % n_out), l, got[q], want[q]);
                }
            }
            free(w), free(wf);
        }
    }
    free(want), free(got), free(x);
    for (int l = 0; l < n_lv; l++) kbackend_free(b[l]);
}

/* The scalar kernels called per granule (the scalar level's path) equal the AVX2 fused
 * granule kernels bit for bit, on the same activation rows. */
Test(matmul_f64, the_scalar_per_granule_loop_equals_the_avx2_fused_kernels) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("no AVX2 on this CPU");
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    static const int64_t blocks[] = {1, 2, 3, 5, 8, 9, 17, 33};
    static const int64_t gran[] = {64, 128, 256};
    int n_fused = 0;
    for (size_t ti = 0; ti < TP_ARRAY_LEN(types); ti++) {
        const enum dtype t = types[ti];
        const kdot_gran_fn fused = kdot_gran_avx2(t);
        if (!fused) continue;
        n_fused++;
        const int64_t blk = dtype_block(t), unit = kdot_gran_unit(t);
        const enum kact_fmt fmt = kact_fmt_of(t);
        for (size_t bi = 0; bi < TP_ARRAY_LEN(blocks); bi++) {
            const int64_t n = blk == 1 ? blocks[bi] * 37 + 5 : blocks[bi] * blk, n_tok = 5;
            const int64_t granule = TP_MAX(unit, gran[bi % 3] / unit * unit), n_gran = (n + granule - 1) / granule;
            float *wf = malloc((size_t)n * sizeof(float)), *x = malloc((size_t)(n * n_tok) * sizeof(float));
            tu_fill_uniform(&r, wf, (size_t)n, -1.0f, 1.0f);
            tu_fill_uniform(&r, x, (size_t)(n * n_tok), -2.0f, 2.0f);
            uint8_t *w = malloc(dtype_row_bytes(t, n));
            quant_quantize_row(t, wf, w, n);
            struct kact_rows act;
            const size_t row_bytes = kact_layout(fmt, n, &act);
            uint8_t *rows = aligned_alloc(64, row_bytes * (size_t)n_tok + 64);
            if (fmt == KACT_F32) {
                act.base = (const uint8_t *)x;
                act.stride = (size_t)n * sizeof(float);
            } else {
                act.base = rows;
                act.stride = row_bytes;
                for (int64_t k = 0; k < n_tok; k++)
                    kact_quantize_scalar(fmt, x + k * n, n, rows + (size_t)k * row_bytes, &act);
            }
            struct kact_rows *views = malloc((size_t)n_gran * sizeof *views);
            size_t *w_off = malloc((size_t)n_gran * sizeof *w_off);
            for (int64_t g = 0; g < n_gran; g++) {
                views[g] = kact_view(&act, fmt, g * granule);
                w_off[g] = dtype_row_bytes(t, g * granule);
            }
            for (int nt = 1; nt <= KDOT_NT; nt++)
                for (int64_t t0 = 0; t0 + nt <= n_tok; t0++) {
                    double want[KDOT_NT] = {0}, got[KDOT_NT] = {0};
                    kdot_gran_loop(kdot_scalar(t), w, n, granule, views, w_off, t0, nt, want);
                    fused(w, n, granule, &act, t0, nt, got);
                    for (int k = 0; k < nt; k++)
                        cr_assert(!memcmp(&got[k], &want[k], sizeof got[k]),
                                  "%s, n %lld, granule %lld, tile of %d from %lld, token %lld: AVX2 fused %.17g vs "
                                  "scalar loop %.17g",
                                  dtype_name(t), (long long)n, (long long)granule, nt, (long long)t0,
                                  (long long)(t0 + k), got[k], want[k]);
                }
            free(views), free(w_off), free(rows), free(w), free(wf), free(x);
        }
    }
    cr_assert_geq(n_fused, 6, "AVX2 fused granule kernels expected");
}
