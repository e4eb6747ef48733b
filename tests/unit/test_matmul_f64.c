/* test_matmul_f64.c - the row-parallel matmul: agrees with matmul, and its partial sums
 * over column slices (tensor-parallel shards) add up to the full result, for every type. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "testutil.h"

static const enum dtype types[] = {DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
                                   DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K};

Test(matmul_f64, partial_sums_over_shards_add_up_to_the_full_product_for_every_type) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const int64_t n_out = 37, n_in = 1536, n_tok = 5, granule = 256;
    struct kbackend *b = NULL;
    struct kbackend_opts o = {.n_threads = 2, .max_tokens = 8, .max_in = n_in, .max_ctx = 16, .max_heads = 1, .simd = -1};
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
            cr_assert(fabs(full[i] - y[i]) <= 2e-5 * (1.0 + fabs(y[i])), "%s: f64 %.9g vs matmul %.9g", dtype_name(t), full[i], y[i]);
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
                cr_assert(fabs(sum[i] - full[i]) <= 1e-12 * (1.0 + fabs(full[i])), "%s, %d shards: %.17g vs %.17g",
                          dtype_name(t), ncuts[c] - 1, sum[i], full[i]);
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
}
