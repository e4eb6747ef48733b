/* test_cuda_ops.c - every CUDA op against the CPU backend's op (the reference, itself tested
 * against double precision and gguf in test_matmul.c / test_cpu_ops.c) on fresh random
 * inputs, for every weight type. Label gpu: without a CUDA build or device it prints
 * "skipped: no CUDA device" and exits 77 before Criterion starts.
 *
 * Tolerances, and why they are what they are:
 *  - matmul, decode path (n_tok <= 8) and float weights: the GPU quantizes activations to
 *    the same bytes as the CPU (same reference rounding, IEEE intrinsics) and forms the
 *    same integer block sums; only the float scaling and summation order differ. Each side
 *    is within (n_in/16 + 32) 2^-23 S of the exact value (test_matmul.c's bound, S =
 *    sum_i (|w_i| + |min term_i|) |a_i|, a = the quantized activations), so
 *    |gpu - cpu| <= (n_in/8 + 64) 2^-23 S. A single wrong element moves the result by
 *    about S / n_in, far above this.
 *  - matmul_f64: per granule as the decode path, so (granule/8 + 64) 2^-23 S; and the
 *    partial sums of two column slices add up to the whole row's within double rounding
 *    (2^-40 S), which is the property tensor parallelism relies on. reduce_f64: identical.
 *  - matmul, cuBLAS path (n_tok > 8): quantized weights and the q8 activations are
 *    rounded to f16 (error <= 2^-11 (|v| + 2^-14) each, subnormals included), products
 *    are exact in f32 and summed in f32: add 2^-10 1.01 sum_i (|w_i| + 2^-14)(|a_i| + 2^-14)
 *    and n_in 2^-24 S; for Q4_1/Q5_1 also sum_b |m_w| |s_a - d_a sum q_a| (the CPU uses
 *    Q8_1's fp16 block sum s_a, cuBLAS the f16 activations themselves). F16/BF16/F32 weights stay exact there (same activation rounding as
 *    the CPU), so only the summation term is added.
 *  - get_rows, kv_store, add, scale, add_bias: bit-identical.
 *  - rmsnorm, gated_act (SiLU and GELU), attention (f16 and f32 caches, windows, spans
 *    longer than the chunk) and topk (indices, values and lse): bit-identical to the CPU
 *    backend's scalar level (.simd = 0; every CPU level gives the same bits) by
 *    construction - the CUDA kernels repeat the CPU's operations in the CPU's order with
 *    exact IEEE operations (kernels/cuda/ieee.cuh), GELU uses the CPU's f16 table and the
 *    exps and logs are the CPU's own code (cpu_exp1, act.h) - so they are compared with
 *    memcmp. Inputs include subnormals (nothing may be flushed), values past the exp
 *    clamps, f16 rounding ties and the shapes where the CPU switches paths.
 *  - rope: the angle sequence is the same float arithmetic; cos/sin are correctly rounded
 *    on the GPU and within 1 ulp on the CPU: |diff| <= 2^-20 (|x0| + |x1|) per pair. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef TPLLM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "testutil.h"
#include "testweights.h"

/* Defined by the CUDA backend (and its stub); not yet declared in kernels.h. */
int kbackend_cuda_status(struct kbackend *b, tp_err *e);

enum { MAX_TOK = 32, MAX_IN = 4096 };

static const enum dtype wtypes[] = {
    DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
    DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K,
};

/* ------------------------------------------------------------------ helpers */

static tu_rng rng_new(void) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    return r;
}

static struct kbackend_opts test_opts(void) {
    return (struct kbackend_opts){.n_threads = 2, .max_tokens = MAX_TOK, .max_in = MAX_IN, .max_ctx = 256,
                                  .max_heads = 16, .simd = -1, .device = 0};
}

static struct kbackend *gpu_new(void) {
    struct kbackend_opts o = test_opts();
    struct kbackend *b = NULL;
    tp_err e = {0};
    cr_assert_eq(kbackend_cuda_create(&b, &o, &e), 0, "cuda create: %s", e.msg);
    return b;
}

static struct kbackend *cpu_new(void) {
    struct kbackend_opts o = test_opts();
    struct kbackend *b = NULL;
    tp_err e = {0};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), 0, "cpu create: %s", e.msg);
    return b;
}

/* The reference of the bit-exact comparisons: the CPU backend's scalar level, with
 * attention chunks of max_ctx positions (0: the default); gpu_ctx is the CUDA backend with
 * the same options. */
static struct kbackend *cpu_ref(int64_t max_ctx) {
    struct kbackend_opts o = test_opts();
    o.simd = KSIMD_SCALAR;
    o.max_ctx = max_ctx;
    struct kbackend *b = NULL;
    tp_err e = {0};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), 0, "cpu create: %s", e.msg);
    return b;
}

static struct kbackend *gpu_ctx(int64_t max_ctx) {
    struct kbackend_opts o = test_opts();
    o.max_ctx = max_ctx;
    struct kbackend *b = NULL;
    tp_err e = {0};
    cr_assert_eq(kbackend_cuda_create(&b, &o, &e), 0, "cuda create: %s", e.msg);
    return b;
}

/* gpu and cpu hold the same bits; else fails naming the first element that differs. */
static void same_bits(const void *gpu, const void *cpu, size_t n, size_t esz, const char *what) {
    if (memcmp(gpu, cpu, n * esz) == 0) return;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *pg = (const unsigned char *)gpu + i * esz, *pc = (const unsigned char *)cpu + i * esz;
        if (memcmp(pg, pc, esz) == 0) continue;
        if (esz == 4) {
            float fg, fc;
            uint32_t ug, uc;
            memcpy(&fg, pg, 4), memcpy(&fc, pc, 4), memcpy(&ug, pg, 4), memcpy(&uc, pc, 4);
            cr_assert_fail("%s: element %zu of %zu differs: gpu %.9g (%08x) cpu %.9g (%08x)", what, i, n, (double)fg, ug,
                           (double)fc, uc);
        }
        cr_assert_fail("%s: element %zu of %zu differs", what, i, n);
    }
}

/* Fails the test if an op of g recorded an error. */
static void gpu_ok(struct kbackend *g, const char *what) {
    tp_err e = {0};
    g->ops->sync(g);
    cr_assert_eq(kbackend_cuda_status(g, &e), 0, "%s: %s", what, e.msg);
}

static void *dev_copy(struct kbackend *g, const void *host, size_t bytes) {
    void *d = g->ops->alloc(g, bytes);
    cr_assert_not_null(d, "device alloc of %zu bytes", bytes);
    if (bytes) g->ops->upload(g, d, host, bytes);
    return d;
}

static void dev_get(struct kbackend *g, void *host, const void *dev, size_t bytes) {
    g->ops->download(g, host, dev, bytes);
    gpu_ok(g, "download");
}

/* One matmul of a random (sliced) weight on both backends, checked with the bounds above. */
static void check_matmul(struct kbackend *g, struct kbackend *c, tu_rng *r, enum dtype t, int64_t n_out,
                         int64_t n_in, int64_t before, int64_t after, int64_t n_tok) {
    struct tu_wmat w;
    tu_wmat_make(&w, r, t, n_out, n_in, before, after, true);
    float *x = tu_rand_floats(r, (size_t)(n_tok * n_in), -2.0f, 2.0f);
    float *yc = tu_xmalloc((size_t)(n_tok * n_out) * sizeof(float)), *yg = tu_xmalloc((size_t)(n_tok * n_out) * sizeof(float));
    c->ops->matmul(c, yc, &w.m, x, n_tok);

    uint8_t *dw = dev_copy(g, w.buf, w.bytes);
    float *dx = dev_copy(g, x, (size_t)(n_tok * n_in) * sizeof(float));
    float *dy = g->ops->alloc(g, (size_t)(n_tok * n_out) * sizeof(float));
    struct kmat mg = w.m;
    mg.data = dw + ((const uint8_t *)w.m.data - w.buf);
    g->ops->matmul(g, dy, &mg, dx, n_tok);
    gpu_ok(g, dtype_name(t));
    dev_get(g, yg, dy, (size_t)(n_tok * n_out) * sizeof(float));

    const enum dtype vt = tu_vec_dot_type(t);
    const bool gemm = n_tok > 8, quant = !tu_is_float_type(t);
    uint8_t *aq = tu_xmalloc(dtype_row_bytes(vt, n_in) + 64);
    float *a = tu_xmalloc((size_t)n_in * sizeof *a);
    for (int64_t tk = 0; tk < n_tok; tk++) {
        tu_act_quantize_row(vt, x + tk * n_in, aq, n_in);
        quant_dequantize_row(vt, aq, a, n_in);
        for (int64_t o = 0; o < n_out; o++) {
            double s = 0, gsum = 0, q81 = 0;
            for (int64_t i = 0; i < n_in; i++) {
                s += (double)w.mag[o * n_in + i] * fabs((double)a[i]);
                gsum += (fabs((double)w.deq[o * n_in + i]) + 0x1p-14) * (fabs((double)a[i]) + 0x1p-14);
            }
            if (vt == DTYPE_Q8_1) {
                /* the CPU uses Q8_1's fp16 block sum s_a where cuBLAS sees d_a sum q_a */
                const uint8_t *wrow = (const uint8_t *)w.m.data + (size_t)o * w.m.row_stride;
                const size_t ts = dtype_get(t)->type_size;
                for (int64_t b = 0; b < n_in / 32; b++) {
                    uint16_t mh, dh, sh;
                    memcpy(&mh, wrow + (size_t)b * ts + 2, 2);
                    memcpy(&dh, aq + 36 * b, 2);
                    memcpy(&sh, aq + 36 * b + 2, 2);
                    int sumq = 0;
                    for (int j = 0; j < 32; j++) sumq += (int8_t)aq[36 * b + 4 + j];
                    q81 += fabs((double)fp16_to_f32(mh)) *
                           fabs((double)fp16_to_f32(sh) - (double)fp16_to_f32(dh) * sumq);
                }
            }
            double tol = ((double)n_in / 8 + 64) * 0x1p-23 * s;
            if (gemm) tol += (double)n_in * 0x1p-24 * s + (quant ? 0x1p-10 * 1.01 * gsum + 1.01 * q81 : 0.0);
            const double d = fabs((double)yg[tk * n_out + o] - (double)yc[tk * n_out + o]);
            cr_assert(d <= tol, "matmul %s n_in %lld n_tok %lld: y[%lld][%lld] gpu %.9g cpu %.9g (|diff| %.3g > tol %.3g)",
                      dtype_name(t), (long long)n_in, (long long)n_tok, (long long)tk, (long long)o,
                      (double)yg[tk * n_out + o], (double)yc[tk * n_out + o], d, tol);
        }
    }
    g->ops->free(g, dw);
    g->ops->free(g, dx);
    g->ops->free(g, dy);
    free(aq);
    free(a);
    free(x);
    free(yc);
    free(yg);
    tu_wmat_free(&w);
}

/* ------------------------------------------------------------------ backend */

Test(cuda_ops, backend_creates_describes_and_copies_memory) {
    struct kbackend *g = gpu_new();
    char buf[256];
    kbackend_describe(g, buf, sizeof buf);
    cr_assert(strncmp(buf, "cuda: ", 6) == 0 && strstr(buf, "sm_"), "describe: '%s'", buf);
    cr_assert_str_eq(g->ops->name, "cuda");
    cr_assert_gt(g->workspace_bytes, 0);
    int64_t fr = 0, tot = 0;
    cr_assert_eq(g->ops->mem_info(g, &fr, &tot), 0);
    cr_assert(fr > 0 && tot >= fr, "mem_info %lld / %lld", (long long)fr, (long long)tot);

    unsigned char src[1000], dst[1000];
    for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 7 + 3);
    void *d = dev_copy(g, src, sizeof src);
    cr_assert_eq((uintptr_t)d % 256, 0);
    g->ops->sync(g);
    dev_get(g, dst, d, sizeof dst);
    cr_assert_arr_eq(src, dst, sizeof src);
    g->ops->free(g, d);
    g->ops->free(g, NULL);
    d = g->ops->alloc(g, 0);
    cr_assert_not_null(d);
    g->ops->free(g, d);
    kbackend_free(g);
}

Test(cuda_ops, backend_refuses_a_missing_device_and_bad_sizes_with_a_message) {
    struct kbackend *b = NULL;
    tp_err e = {0};
    struct kbackend_opts o = test_opts();
    o.device = 4096;
    cr_assert_eq(kbackend_cuda_create(&b, &o, &e), TP_EINVAL);
    cr_assert_null(b);
    cr_assert(strstr(e.msg, "device 4096"), "%s", e.msg);
    tp_err_clear(&e);
    o = test_opts();
    o.max_tokens = -1;
    cr_assert_eq(kbackend_cuda_create(&b, &o, &e), TP_EINVAL);
    cr_assert_neq(e.msg[0], '\0');
}

Test(cuda_ops, op_errors_are_recorded_not_fatal) {
    struct kbackend *g = gpu_new();
    tu_rng r = rng_new();
    struct tu_wmat w;
    tu_wmat_make(&w, &r, DTYPE_Q8_0, 4, 64, 0, 0, true);
    uint8_t *dw = dev_copy(g, w.buf, w.bytes);
    float *dx = g->ops->alloc(g, (size_t)(MAX_TOK + 1) * 64 * sizeof(float));
    float *dy = g->ops->alloc(g, (size_t)(MAX_TOK + 1) * 4 * sizeof(float));
    struct kmat mg = w.m;
    mg.data = dw;
    g->ops->matmul(g, dy, &mg, dx, MAX_TOK + 1); /* more tokens than the scratch holds */
    tp_err e = {0};
    cr_assert_eq(kbackend_cuda_status(g, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "max_tokens"), "%s", e.msg);
    g->ops->free(g, dw);
    g->ops->free(g, dx);
    g->ops->free(g, dy);
    tu_wmat_free(&w);
    kbackend_free(g);
}

/* ------------------------------------------------------------------ matmul */

Test(cuda_ops, matmul_matches_cpu_for_every_weight_type_decode_and_prompt) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    const int64_t toks[] = {1, 2, 5, 8, 9, 24};
    for (size_t i = 0; i < TP_ARRAY_LEN(wtypes); i++) {
        const enum dtype t = wtypes[i];
        const int64_t bs = dtype_get(t)->block_size, unit = bs == 1 ? 32 : bs;
        for (size_t k = 0; k < TP_ARRAY_LEN(toks); k++) {
            /* a column slice one block in from the row start (unaligned rows) */
            check_matmul(g, c, &r, t, 67, 3 * TP_MAX(unit, (int64_t)256), bs == 1 ? 3 : bs, bs, toks[k]);
        }
        check_matmul(g, c, &r, t, 5, MAX_IN, 0, 0, 1);
        check_matmul(g, c, &r, t, 1, unit, 0, 0, 3);
        if (bs == 1) check_matmul(g, c, &r, t, 9, 333, 1, 2, 4); /* odd lengths: the scalar loads */
    }
    kbackend_free(g);
    kbackend_free(c);
}

/* matmul_f64 of a random (sliced) weight on both backends; then the same on two column
 * slices at a granule boundary, whose partial sums must add up to the whole row's. */
static void check_matmul_f64(struct kbackend *g, struct kbackend *c, tu_rng *r, enum dtype t, int64_t n_out,
                             int64_t n_in, int64_t granule, int64_t n_tok) {
    struct tu_wmat w;
    const int64_t bs = dtype_get(t)->block_size;
    tu_wmat_make(&w, r, t, n_out, n_in, bs == 1 ? 1 : bs, 0, true);
    const size_t ny = (size_t)(n_tok * n_out);
    float *x = tu_rand_floats(r, (size_t)(n_tok * n_in), -2.0f, 2.0f);
    double *yc = tu_xmalloc(ny * sizeof(double)), *yg = tu_xmalloc(ny * sizeof(double));
    double *y1 = tu_xmalloc(ny * sizeof(double)), *y2 = tu_xmalloc(ny * sizeof(double));
    c->ops->matmul_f64(c, yc, &w.m, x, n_tok, granule);

    uint8_t *dw = dev_copy(g, w.buf, w.bytes);
    float *dx = dev_copy(g, x, (size_t)(n_tok * n_in) * sizeof(float));
    double *dy = g->ops->alloc(g, ny * sizeof(double));
    struct kmat mg = w.m;
    mg.data = dw + ((const uint8_t *)w.m.data - w.buf);
    g->ops->matmul_f64(g, dy, &mg, dx, n_tok, granule);
    gpu_ok(g, "matmul_f64");
    dev_get(g, yg, dy, ny * sizeof(double));

    /* the same columns as two slices: [0, k) and [k, n_in), k a granule boundary */
    const int64_t k = (n_in / granule / 2) * granule;
    float *xs = tu_xmalloc((size_t)(n_tok * n_in) * sizeof(float));
    float *dxs = g->ops->alloc(g, (size_t)(n_tok * n_in) * sizeof(float));
    for (int part = 0; part < 2; part++) {
        const int64_t c0 = part ? k : 0, cn = part ? n_in - k : k;
        for (int64_t tk = 0; tk < n_tok; tk++) memcpy(xs + tk * cn, x + tk * n_in + c0, (size_t)cn * sizeof(float));
        g->ops->upload(g, dxs, xs, (size_t)(n_tok * cn) * sizeof(float));
        struct kmat ms = mg;
        ms.data = (const uint8_t *)mg.data + dtype_row_bytes(t, c0);
        ms.n_in = cn;
        g->ops->matmul_f64(g, dy, &ms, dxs, n_tok, granule);
        dev_get(g, part ? y2 : y1, dy, ny * sizeof(double));
    }

    const enum dtype vt = tu_vec_dot_type(t);
    uint8_t *aq = tu_xmalloc(dtype_row_bytes(vt, n_in) + 64);
    float *a = tu_xmalloc((size_t)n_in * sizeof *a);
    for (int64_t tk = 0; tk < n_tok; tk++) {
        tu_act_quantize_row(vt, x + tk * n_in, aq, n_in);
        quant_dequantize_row(vt, aq, a, n_in);
        for (int64_t o = 0; o < n_out; o++) {
            double sm = 0;
            for (int64_t i = 0; i < n_in; i++) sm += (double)w.mag[o * n_in + i] * fabs((double)a[i]);
            const size_t at = (size_t)(tk * n_out + o);
            const double tol = ((double)granule / 8 + 64) * 0x1p-23 * sm;
            cr_assert(fabs(yg[at] - yc[at]) <= tol, "matmul_f64 %s granule %lld: y[%lld][%lld] gpu %.12g cpu %.12g",
                      dtype_name(t), (long long)granule, (long long)tk, (long long)o, yg[at], yc[at]);
            cr_assert(fabs(yg[at] - (y1[at] + y2[at])) <= 0x1p-40 * sm,
                      "matmul_f64 %s: slices %.17g + %.17g != whole %.17g", dtype_name(t), y1[at], y2[at], yg[at]);
        }
    }
    g->ops->free(g, dw);
    g->ops->free(g, dx);
    g->ops->free(g, dxs);
    g->ops->free(g, dy);
    void *host[] = {x, xs, yc, yg, y1, y2, aq, a};
    for (size_t i = 0; i < TP_ARRAY_LEN(host); i++) free(host[i]);
    tu_wmat_free(&w);
}

Test(cuda_ops, matmul_f64_matches_cpu_and_its_slices_add_up_to_the_whole) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    const int64_t toks[] = {1, 3, 11};
    for (size_t i = 0; i < TP_ARRAY_LEN(wtypes); i++) {
        const enum dtype t = wtypes[i];
        for (size_t k = 0; k < TP_ARRAY_LEN(toks); k++) check_matmul_f64(g, c, &r, t, 37, 2048, 512, toks[k]);
        check_matmul_f64(g, c, &r, t, 5, 1536, 256, 2);
    }
    kbackend_free(g);
    kbackend_free(c);
}

Test(cuda_ops, reduce_f64_is_bit_identical_to_cpu) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    const int64_t n = 1000, parts = 3;
    double *p = tu_xmalloc((size_t)(n * parts) * sizeof(double));
    for (int64_t i = 0; i < n * parts; i++) p[i] = (double)tu_uniform(&r, -1e3f, 1e3f) * (1.0 + 1e-9 * (double)i);
    float *yc = tu_xmalloc((size_t)n * sizeof(float)), *yg = tu_xmalloc((size_t)n * sizeof(float));
    double *dp = dev_copy(g, p, (size_t)(n * parts) * sizeof(double));
    float *dy = g->ops->alloc(g, (size_t)n * sizeof(float));
    c->ops->reduce_f64(c, yc, p, parts, n);
    g->ops->reduce_f64(g, dy, dp, parts, n);
    dev_get(g, yg, dy, (size_t)n * sizeof(float));
    cr_assert(memcmp(yc, yg, (size_t)n * sizeof(float)) == 0, "reduce_f64 differs");
    g->ops->free(g, dp);
    g->ops->free(g, dy);
    free(p);
    free(yc);
    free(yg);
    kbackend_free(g);
    kbackend_free(c);
}

Test(cuda_ops, matmul_of_empty_input_gives_zeros_and_of_empty_output_nothing) {
    struct kbackend *g = gpu_new();
    float junk[6] = {1, 2, 3, 4, 5, 6}, y[6];
    float *dy = dev_copy(g, junk, sizeof junk);
    uint8_t wbyte = 0;
    void *dw = dev_copy(g, &wbyte, 1);
    struct kmat m = {.data = dw, .type = DTYPE_Q8_0, .n_out = 3, .n_in = 0, .row_stride = 0};
    g->ops->matmul(g, dy, &m, dy, 2);
    dev_get(g, y, dy, sizeof y);
    for (int i = 0; i < 6; i++) cr_assert_eq(y[i], 0.0f);
    g->ops->upload(g, dy, junk, sizeof junk);
    m.n_out = 0;
    m.n_in = 32;
    g->ops->matmul(g, dy, &m, dy, 2);
    dev_get(g, y, dy, sizeof y);
    cr_assert_arr_eq(y, junk, sizeof y);
    g->ops->free(g, dy);
    g->ops->free(g, dw);
    kbackend_free(g);
}

Test(cuda_ops, get_rows_is_bit_identical_to_cpu_for_every_type) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    for (size_t i = 0; i < TP_ARRAY_LEN(wtypes); i++) {
        const enum dtype t = wtypes[i];
        const int64_t n_in = 512, n_out = 37, n = 11;
        struct tu_wmat w;
        tu_wmat_make(&w, &r, t, n_out, n_in, 0, 0, true);
        int32_t ids[11];
        for (int k = 0; k < n; k++) ids[k] = (int32_t)(tu_next(&r) % (uint64_t)n_out);
        ids[3] = ids[7]; /* a repeat */
        float *oc = tu_xmalloc((size_t)(n * n_in) * sizeof(float)), *og = tu_xmalloc((size_t)(n * n_in) * sizeof(float));
        c->ops->get_rows(c, oc, &w.m, ids, n);
        uint8_t *dw = dev_copy(g, w.buf, w.bytes);
        int32_t *di = dev_copy(g, ids, sizeof ids);
        float *dout = g->ops->alloc(g, (size_t)(n * n_in) * sizeof(float));
        struct kmat mg = w.m;
        mg.data = dw;
        g->ops->get_rows(g, dout, &mg, di, n);
        gpu_ok(g, dtype_name(t));
        dev_get(g, og, dout, (size_t)(n * n_in) * sizeof(float));
        cr_assert(memcmp(oc, og, (size_t)(n * n_in) * sizeof(float)) == 0, "get_rows %s differs from the CPU",
                  dtype_name(t));
        g->ops->free(g, dw);
        g->ops->free(g, di);
        g->ops->free(g, dout);
        free(oc);
        free(og);
        tu_wmat_free(&w);
    }
    kbackend_free(g);
    kbackend_free(c);
}

/* ------------------------------------------------------------------ row-wise ops */

/* Rows on which the order of the sum of squares shows in the result (test_cpu_ops.c's
 * rms_tie_rows; random rows almost never show it: the squares are exact and summed in
 * double), for n a power of two >= 64: two large values in lanes j and j + 4 whose
 * squares add up to an odd integer exactly between two floats, tiny values elsewhere
 * whose lanes tip the mean up only when added in the CPU's tree order. Rows r0, r0 + 4, ... */
static void rms_tie_rows(tu_rng *r, float *x, int64_t n, int64_t r0, int64_t nr) {
    if (n < 64 || (n & (n - 1))) return;
    const float tiny = sqrtf(ldexpf(0.78f, -30) * 8.0f / (float)n);
    for (int64_t row = r0; row < nr; row += 4) {
        float *xr = x + row * n;
        for (int64_t i = 0; i < n; i++) xr[i] = tu_next(r) % 2 ? tiny : -tiny;
        const int64_t j = (int64_t)(tu_next(r) % 4);
        xr[j] = (float)(2901 + 2 * (int)(tu_next(r) % 550));
        xr[j + 4] = (float)(2900 + 2 * (int)(tu_next(r) % 551));
    }
}

/* rmsnorm: row lengths around the 8 lanes (n % 8 tails, n < 8), rows of ordinary values,
 * of subnormals (their squares count only if the GPU keeps them, and y = x * scale is
 * normal), of huge values (the mean overflows float: scale 0), of zeros, and rows whose
 * result shows the order of the double sum. */
Test(cuda_ops, rmsnorm_is_bit_identical_to_cpu_with_weight_offset_in_place_and_without_weight) {
    struct kbackend *g = gpu_new(), *c = cpu_ref(0);
    tu_rng r = rng_new();
    const int64_t ns[] = {1, 5, 8, 13, 64, 256, 640, 4096, 4099};
    for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++) {
        const int64_t n = ns[a], rows = 6 + 48;
        const size_t bytes = (size_t)(rows * n) * sizeof(float);
        float *x = tu_rand_floats(&r, (size_t)(rows * n), -30.0f, 30.0f), *w = tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
        for (int64_t i = 0; i < n; i++) {
            x[2 * n + i] *= 1e-40f / 30.0f;     /* subnormals */
            x[3 * n + i] *= 1e36f;              /* huge: sum of squares / n overflows float */
            x[4 * n + i] = 0.0f;                /* zeros: scale 1 / sqrt(eps) */
            x[5 * n + i] *= (float)(i % 3) * 1e-21f; /* tiny, some zero */
        }
        rms_tie_rows(&r, x, n, 6, rows);
        float *yc = tu_xmalloc(bytes), *yg = tu_xmalloc(bytes);
        float *dx = dev_copy(g, x, bytes), *dw = dev_copy(g, w, (size_t)n * sizeof(float));
        float *dy = g->ops->alloc(g, bytes);
        for (int variant = 0; variant < 3; variant++) {
            const float *wc = variant == 2 ? NULL : w, *wg = variant == 2 ? NULL : dw;
            const float off = variant == 0 ? 1.0f : 0.0f;
            float *outg = variant == 1 ? dx : dy;
            g->ops->upload(g, dx, x, bytes);
            c->ops->rmsnorm(c, yc, x, wc, off, rows, n, 1e-6f);
            g->ops->rmsnorm(g, outg, dx, wg, off, rows, n, 1e-6f);
            gpu_ok(g, "rmsnorm");
            dev_get(g, yg, outg, bytes);
            char what[96];
            snprintf(what, sizeof what, "rmsnorm n %lld variant %d", (long long)n, variant);
            same_bits(yg, yc, (size_t)(rows * n), 4, what);
        }
        g->ops->free(g, dx);
        g->ops->free(g, dw);
        g->ops->free(g, dy);
        free(x), free(w), free(yc), free(yg);
    }
    kbackend_free(g);
    kbackend_free(c);
}

Test(cuda_ops, rope_matches_cpu_in_both_modes_with_freq_factors_and_yarn) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    const int64_t n_tok = 5, n_head = 3, hd = 64;
    int32_t pos[5];
    for (int i = 0; i < n_tok; i++) pos[i] = (int32_t)(tu_next(&r) % 9000);
    pos[0] = 0;
    float ff[32];
    for (int i = 0; i < 32; i++) ff[i] = tu_uniform(&r, 1.0f, 8.0f);
    int32_t *dpos = dev_copy(g, pos, sizeof pos);
    float *dff = dev_copy(g, ff, sizeof ff);
    const size_t bytes = (size_t)(n_tok * n_head * hd) * sizeof(float);
    float *xg = tu_xmalloc(bytes), *xc = tu_xmalloc(bytes);
    float *dx = g->ops->alloc(g, bytes);
    for (int cfg = 0; cfg < 6; cfg++) {
        struct rope_params p = {.mode = (cfg & 1) ? ROPE_NEOX : ROPE_NORMAL, .n_rot = cfg >= 4 ? 32 : 64,
                                .base = 10000.0f, .freq_scale = 1.0f, .attn_factor = 1.0f};
        struct rope_params pg = p;
        if (cfg == 2 || cfg == 3) { /* YaRN */
            p.freq_scale = 0.25f;
            p.ext_factor = 1.0f;
            p.attn_factor = 1.0f;
            p.beta_fast = 32.0f;
            p.beta_slow = 1.0f;
            p.n_ctx_orig = 4096;
            p.base = 500000.0f;
            pg = p;
        }
        if (cfg >= 4) { /* Llama 3 style frequency factors over a partial rotation */
            p.freq_factors = ff;
            pg = p;
            pg.freq_factors = dff;
        }
        tu_fill_uniform(&r, xc, bytes / sizeof(float), -3.0f, 3.0f);
        memcpy(xg, xc, bytes);
        g->ops->upload(g, dx, xg, bytes);
        c->ops->rope(c, xc, pos, n_tok, n_head, hd, &p);
        g->ops->rope(g, dx, dpos, n_tok, n_head, hd, &pg);
        gpu_ok(g, "rope");
        dev_get(g, xg, dx, bytes);
        for (int64_t i = 0; i < n_tok * n_head * hd; i++)
            cr_assert(fabsf(xg[i] - xc[i]) <= 0x1p-20f * 8.0f, "rope cfg %d [%lld] (pos %d): gpu %.9g cpu %.9g", cfg,
                      (long long)i, pos[i / (n_head * hd)], (double)xg[i], (double)xc[i]);
    }
    g->ops->free(g, dpos);
    g->ops->free(g, dff);
    g->ops->free(g, dx);
    free(xg);
    free(xc);
    kbackend_free(g);
    kbackend_free(c);
}

/* ------------------------------------------------------------------ element-wise */

/* One gated_act of n elements on both backends, compared bit for bit. */
static void check_act(struct kbackend *g, struct kbackend *c, const float *gate, const float *up, int64_t n,
                      enum act_kind act, const char *what) {
    const size_t bytes = (size_t)n * sizeof(float);
    float *oc = tu_xmalloc(bytes), *og = tu_xmalloc(bytes);
    float *dg = dev_copy(g, gate, bytes), *du = dev_copy(g, up, bytes), *dout = g->ops->alloc(g, bytes);
    c->ops->gated_act(c, oc, gate, up, n, act);
    g->ops->gated_act(g, dout, dg, du, n, act);
    gpu_ok(g, "gated_act");
    dev_get(g, og, dout, bytes);
    same_bits(og, oc, (size_t)n, 4, what);
    g->ops->gated_act(g, dg, dg, du, n, act); /* in place over gate */
    dev_get(g, og, dg, bytes);
    same_bits(og, oc, (size_t)n, 4, what);
    g->ops->free(g, dg);
    g->ops->free(g, du);
    g->ops->free(g, dout);
    free(oc);
    free(og);
}

/* Random gates over GELU's and exp's clamps, plus the edges: +-10 and the floats next to
 * them, values that round to f16 +-10, zeros, subnormals, f16 subnormals, the exp clamps
 * (-g beyond -87.3 / 88.3), huge values; ups include subnormals (products that stay
 * subnormal must not be flushed). */
Test(cuda_ops, gated_act_silu_and_gelu_are_bit_identical_to_cpu) {
    struct kbackend *g = gpu_new(), *c = cpu_ref(0);
    tu_rng r = rng_new();
    const int64_t n = 3001;
    float *gate = tu_rand_floats(&r, (size_t)n, -12.0f, 12.0f), *up = tu_rand_floats(&r, (size_t)n, -2.0f, 2.0f);
    const float edges[] = {-100.0f, 100.0f, -10.0f, 10.0f, nextafterf(-10.0f, 0.0f), nextafterf(10.0f, 0.0f),
                           nextafterf(-10.0f, -20.0f), nextafterf(10.0f, 20.0f), 9.998f, -9.998f, 0.0f, -0.0f,
                           1e-40f, -1e-40f, 3e-8f, -3e-8f, 6e-5f, -6e-5f, -87.29f, -87.31f, 88.29f, 88.31f, -88.4f,
                           -90.0f, 90.0f, 1e30f, -1e30f, 3.4e38f, -3.4e38f, 1.0f, -1.0f, 0.5f};
    for (size_t i = 0; i < TP_ARRAY_LEN(edges); i++) gate[i] = edges[i];
    for (int64_t i = 0; i < n; i += 97) up[i] = 1e-39f; /* subnormal products */
    up[1] = 3e-39f;
    check_act(g, c, gate, up, n, ACT_SILU, "silu");
    check_act(g, c, gate, up, n, ACT_GELU_TANH, "gelu");
    kbackend_free(g);
    kbackend_free(c);
}

/* Every f16 rounding decision of GELU: a sweep of the floats in (-10.5, 10.5) (bits step
 * 997, both signs), every midpoint between adjacent f16 values there (exact ties, which
 * round to even) and the floats next to each midpoint; up = 1, so out = GELU(g) itself.
 * The same gates and a sweep of all finite floats (bits step 4099) through SiLU check
 * dev_exp1 = cpu_exp1 densely. */
Test(cuda_ops, gelu_f16_rounding_and_silu_exp_match_cpu_on_dense_sweeps) {
    struct kbackend *g = gpu_new(), *c = cpu_ref(0);
    const uint32_t top = 0x41280000u; /* 10.5f */
    int64_t cap = 2 * (int64_t)(top / 997 + 1) + 6 * 65536 + 2 * (int64_t)(0x7f800000u / 4099 + 1), n = 0;
    float *gate = tu_xmalloc((size_t)cap * sizeof(float));
    for (uint32_t b = 0; b < top; b += 997) {
        float f;
        memcpy(&f, &b, 4);
        gate[n++] = f;
        gate[n++] = -f;
    }
    for (uint32_t h = 0; h < 0x7c00u; h++) { /* positive finite halves */
        const float lo = fp16_to_f32((uint16_t)h), hi = fp16_to_f32((uint16_t)(h + 1));
        if (hi > 10.5f) break;
        const float mid = lo + (hi - lo) * 0.5f; /* exact: halves have 11 significant bits */
        const float v[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, 20.0f)};
        for (int k = 0; k < 3; k++) {
            gate[n++] = v[k];
            gate[n++] = -v[k];
        }
    }
    const int64_t n_gelu = n;
    float *up = tu_xmalloc((size_t)cap * sizeof(float));
    for (int64_t i = 0; i < cap; i++) up[i] = 1.0f;
    check_act(g, c, gate, up, n_gelu, ACT_GELU_TANH, "gelu sweep");
    for (uint32_t b = 0; b < 0x7f800000u; b += 4099) {
        float f;
        memcpy(&f, &b, 4);
        gate[n++] = f;
        gate[n++] = -f;
    }
    cr_assert_leq(n, cap);
    check_act(g, c, gate, up, n, ACT_SILU, "silu sweep");
    free(gate);
    free(up);
    kbackend_free(g);
    kbackend_free(c);
}

Test(cuda_ops, add_scale_and_add_bias_are_bit_identical_to_cpu) {
    struct kbackend *g = gpu_new(), *c = cpu_new();
    tu_rng r = rng_new();
    const int64_t rows = 5, n = 777, tot = rows * n;
    const size_t bytes = (size_t)tot * sizeof(float);
    float *a = tu_rand_floats(&r, (size_t)tot, -100.0f, 100.0f), *b = tu_rand_floats(&r, (size_t)tot, -1.0f, 1.0f);
    float *bias = tu_rand_floats(&r, (size_t)n, -5.0f, 5.0f), *og = tu_xmalloc(bytes);
    float *da = dev_copy(g, a, bytes), *db = dev_copy(g, b, bytes), *dbias = dev_copy(g, bias, (size_t)n * sizeof(float));
    c->ops->add(c, a, a, b, tot); /* y aliases a */
    g->ops->add(g, da, da, db, tot);
    dev_get(g, og, da, bytes);
    cr_assert(memcmp(og, a, bytes) == 0, "add");
    c->ops->scale(c, a, 0.3f, tot);
    g->ops->scale(g, da, 0.3f, tot);
    dev_get(g, og, da, bytes);
    cr_assert(memcmp(og, a, bytes) == 0, "scale");
    c->ops->add_bias(c, a, bias, rows, n);
    g->ops->add_bias(g, da, dbias, rows, n);
    dev_get(g, og, da, bytes);
    cr_assert(memcmp(og, a, bytes) == 0, "add_bias");
    g->ops->free(g, da);
    g->ops->free(g, db);
    g->ops->free(g, dbias);
    free(a);
    free(b);
    free(bias);
    free(og);
    kbackend_free(g);
    kbackend_free(c);
}

/* ------------------------------------------------------------------ KV cache and attention */

struct att_case {
    enum dtype kvt;
    int64_t hd, window, n_head, n_kv;
    float scale;
};

/* Two sequences (75 and 10 positions) in a paged cache of shuffled blocks: all positions
 * stored at once (plus a padding token), then the last tokens of each attend, plus a token
 * at position -1 (zeros). g and c were created with the same max_ctx, the attention chunk:
 * spans within it take the CPU's two-pass f16 path, longer ones the chunked softmax. */
static void check_attention(struct kbackend *g, struct kbackend *c, tu_rng *r, const struct att_case *ac,
                            int64_t max_ctx) {
    const enum dtype kvt = ac->kvt;
    const int64_t hd = ac->hd, n_kv = ac->n_kv, n_head = ac->n_head, bsz = 4;
    const int64_t len[2] = {75, 10}, max_blocks = (75 + bsz - 1) / bsz, n_blocks = max_blocks + 3 + 2;
    int32_t tables[2 * 19];
    int32_t perm[24];
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = (int)n_blocks - 1; i > 0; i--) {
        int j = (int)(tu_next(r) % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int i = 0; i < 2 * max_blocks; i++) tables[i] = -1;
    for (int s = 0, used = 0; s < 2; s++)
        for (int64_t b = 0; b < (len[s] + bsz - 1) / bsz; b++) tables[s * max_blocks + b] = perm[used++];

    /* store: every position of both sequences, and one padding token (slot -1) */
    const int64_t n_st = len[0] + len[1] + 1, row = n_kv * hd;
    int32_t *spos = tu_xmalloc((size_t)n_st * sizeof(int32_t)), *sseq = tu_xmalloc((size_t)n_st * sizeof(int32_t));
    int64_t *slots = tu_xmalloc((size_t)n_st * sizeof(int64_t));
    int64_t m = 0;
    for (int s = 0; s < 2; s++)
        for (int64_t p = 0; p < len[s]; p++, m++) {
            spos[m] = (int32_t)p;
            sseq[m] = s;
            slots[m] = (int64_t)tables[s * max_blocks + p / bsz] * bsz + p % bsz;
        }
    spos[m] = 0, sseq[m] = 0, slots[m] = -1;
    float *k = tu_rand_floats(r, (size_t)(n_st * row), -1.0f, 1.0f), *v = tu_rand_floats(r, (size_t)(n_st * row), -1.0f, 1.0f);

    const size_t es = kvt == DTYPE_F16 ? 2 : 4, cache_bytes = (size_t)(n_blocks * bsz * row) * es;
    void *kc = tu_xmalloc(cache_bytes), *vc = tu_xmalloc(cache_bytes), *kg = tu_xmalloc(cache_bytes), *vg = tu_xmalloc(cache_bytes);
    memset(kc, 0, cache_bytes);
    memset(vc, 0, cache_bytes);
    struct kv_layer lc = {kc, vc, kvt, n_blocks, bsz, n_kv, hd};
    struct kv_layer lg = {dev_copy(g, kc, cache_bytes), dev_copy(g, vc, cache_bytes), kvt, n_blocks, bsz, n_kv, hd};
    const size_t tbytes = (size_t)(2 * max_blocks) * sizeof(int32_t);
    struct attn_batch bc = {.n_tok = n_st, .pos = spos, .seq = sseq, .block_tables = tables, .max_blocks = max_blocks,
                            .slots = slots};
    struct attn_batch bg = {.n_tok = n_st, .pos = dev_copy(g, spos, (size_t)n_st * 4), .seq = dev_copy(g, sseq, (size_t)n_st * 4),
                            .block_tables = dev_copy(g, tables, tbytes), .max_blocks = max_blocks,
                            .slots = dev_copy(g, slots, (size_t)n_st * 8)};
    float *dk = dev_copy(g, k, (size_t)(n_st * row) * sizeof(float)), *dv = dev_copy(g, v, (size_t)(n_st * row) * sizeof(float));
    c->ops->kv_store(c, &lc, k, v, &bc);
    g->ops->kv_store(g, &lg, dk, dv, &bg);
    gpu_ok(g, "kv_store");
    dev_get(g, kg, lg.k, cache_bytes);
    dev_get(g, vg, lg.v, cache_bytes);
    cr_assert(memcmp(kg, kc, cache_bytes) == 0 && memcmp(vg, vc, cache_bytes) == 0, "kv_store %s differs",
              dtype_name(kvt));

    /* attend: the last 3 positions of sequence 0, the last 2 of sequence 1, position -1 */
    const int64_t n_q = 6;
    int32_t qpos[6] = {72, 73, 74, 8, 9, -1}, qseq[6] = {0, 0, 0, 1, 1, 0};
    int64_t qslots[6] = {0};
    float *q = tu_rand_floats(r, (size_t)(n_q * n_head * hd), -1.0f, 1.0f);
    const size_t obytes = (size_t)(n_q * n_head * hd) * sizeof(float);
    float *oc = tu_xmalloc(obytes), *og = tu_xmalloc(obytes);
    struct attn_batch qc = {.n_tok = n_q, .pos = qpos, .seq = qseq, .block_tables = tables, .max_blocks = max_blocks,
                            .slots = qslots};
    struct attn_batch qg = {.n_tok = n_q, .pos = dev_copy(g, qpos, sizeof qpos), .seq = dev_copy(g, qseq, sizeof qseq),
                            .block_tables = bg.block_tables, .max_blocks = max_blocks,
                            .slots = dev_copy(g, qslots, sizeof qslots)};
    float *dq = dev_copy(g, q, obytes), *dout = g->ops->alloc(g, obytes);
    c->ops->attention(c, oc, q, &lc, &qc, n_head, ac->scale, ac->window);
    g->ops->attention(g, dout, dq, &lg, &qg, n_head, ac->scale, ac->window);
    gpu_ok(g, "attention");
    dev_get(g, og, dout, obytes);
    char what[160];
    snprintf(what, sizeof what, "attention %s hd %lld heads %lld/%lld window %lld scale %g chunk %lld", dtype_name(kvt),
             (long long)hd, (long long)n_head, (long long)n_kv, (long long)ac->window, (double)ac->scale,
             (long long)max_ctx);
    same_bits(og, oc, (size_t)(n_q * n_head * hd), 4, what);
    for (int64_t i = (n_q - 1) * n_head * hd; i < n_q * n_head * hd; i++) cr_assert_eq(oc[i], 0.0f, "%s: position -1", what);
    void *dev[] = {lg.k, lg.v, (void *)bg.pos, (void *)bg.seq, (void *)bg.block_tables, (void *)bg.slots, dk, dv,
                   (void *)qg.pos, (void *)qg.seq, (void *)qg.slots, dq, dout};
    for (size_t i = 0; i < TP_ARRAY_LEN(dev); i++) g->ops->free(g, dev[i]);
    void *host[] = {spos, sseq, slots, k, v, kc, vc, kg, vg, q, oc, og};
    for (size_t i = 0; i < TP_ARRAY_LEN(host); i++) free(host[i]);
}

/* Chunks of the default 4096 (every span two-pass for f16), 16 and 7 positions (the long
 * sequence chunked, the short one not); head sizes around the 16- and 8-lane blocks of
 * q.k (1, 8, 13, 24, 40, 64, 80, 128, 256, 512); GQA, MHA and MQA; windows shorter and
 * longer than a chunk; a large scale (probabilities that underflow to f16 zero and are
 * skipped). */
Test(cuda_ops, kv_store_and_paged_attention_are_bit_identical_to_cpu_for_both_caches_windows_and_chunks) {
    tu_rng r = rng_new();
    const int64_t ctxs[] = {0, 16, 7};
    const int64_t hds[] = {1, 8, 13, 24, 40, 64, 80, 128, 256, 512};
    const int64_t heads[3][2] = {{4, 2}, {3, 3}, {4, 1}};
    const int64_t windows[] = {0, 5, 30};
    for (size_t ci = 0; ci < TP_ARRAY_LEN(ctxs); ci++) {
        struct kbackend *g = gpu_ctx(ctxs[ci]), *c = cpu_ref(ctxs[ci]);
        int n = 0;
        for (size_t hi = 0; hi < TP_ARRAY_LEN(hds); hi++)
            for (int t = 0; t < 2; t++)
                for (size_t wi = 0; wi < TP_ARRAY_LEN(windows); wi++, n++) {
                    const int64_t *hk = heads[n % 3];
                    struct att_case ac = {t ? DTYPE_F32 : DTYPE_F16, hds[hi], windows[wi], hk[0], hk[1],
                                          n % 4 == 3 ? 6.0f : 1.0f / sqrtf((float)hds[hi])};
                    check_attention(g, c, &r, &ac, ctxs[ci]);
                }
        kbackend_free(g);
        kbackend_free(c);
    }
}

/* The default chunk (max_ctx 0) is the same on both backends (4096: CPU_DEFAULT_ATT_CTX,
 * CUDA_ATT_DEFAULT_CTX): one sequence of 4200 positions, queries whose spans are 4096 (one
 * chunk: the f16 two-pass path), 4097 and 4200 (two chunks), for both caches. */
Test(cuda_ops, attention_default_chunk_matches_cpu_around_4096_positions) {
    struct kbackend *g = gpu_ctx(0), *c = cpu_ref(0);
    tu_rng r = rng_new();
    const int64_t len = 4200, bsz = 16, n_blocks = (len + bsz - 1) / bsz, hd = 32, n_kv = 1, n_head = 2;
    int32_t *tables = tu_xmalloc((size_t)n_blocks * sizeof(int32_t));
    for (int64_t i = 0; i < n_blocks; i++) tables[i] = (int32_t)((i * 37 + 5) % n_blocks); /* 37 is prime to 263 */
    int64_t *slots = tu_xmalloc((size_t)len * sizeof(int64_t));
    for (int64_t p = 0; p < len; p++) slots[p] = (int64_t)tables[p / bsz] * bsz + p % bsz;
    float *k = tu_rand_floats(&r, (size_t)(len * hd), -1.0f, 1.0f), *v = tu_rand_floats(&r, (size_t)(len * hd), -1.0f, 1.0f);
    int32_t qpos[3] = {4095, 4096, 4199}, qseq[3] = {0, 0, 0};
    int64_t qslots[3] = {0};
    float *q = tu_rand_floats(&r, (size_t)(3 * n_head * hd), -1.0f, 1.0f);
    const size_t obytes = (size_t)(3 * n_head * hd) * sizeof(float);
    float *oc = tu_xmalloc(obytes), *og = tu_xmalloc(obytes);
    struct attn_batch sc = {.n_tok = len, .slots = slots};
    struct attn_batch sg = {.n_tok = len, .slots = dev_copy(g, slots, (size_t)len * sizeof(int64_t))};
    struct attn_batch qc = {.n_tok = 3, .pos = qpos, .seq = qseq, .block_tables = tables, .max_blocks = n_blocks,
                            .slots = qslots};
    struct attn_batch qg = {.n_tok = 3, .pos = dev_copy(g, qpos, sizeof qpos), .seq = dev_copy(g, qseq, sizeof qseq),
                            .block_tables = dev_copy(g, tables, (size_t)n_blocks * sizeof(int32_t)),
                            .max_blocks = n_blocks, .slots = dev_copy(g, qslots, sizeof qslots)};
    float *dk = dev_copy(g, k, (size_t)(len * hd) * sizeof(float)), *dv = dev_copy(g, v, (size_t)(len * hd) * sizeof(float));
    float *dq = dev_copy(g, q, obytes), *dout = g->ops->alloc(g, obytes);
    for (int t = 0; t < 2; t++) {
        const enum dtype kvt = t ? DTYPE_F32 : DTYPE_F16;
        const size_t cache_bytes = (size_t)(n_blocks * bsz * n_kv * hd) * (t ? 4 : 2);
        struct kv_layer lc = {tu_xmalloc(cache_bytes), tu_xmalloc(cache_bytes), kvt, n_blocks, bsz, n_kv, hd};
        struct kv_layer lg = {g->ops->alloc(g, cache_bytes), g->ops->alloc(g, cache_bytes), kvt, n_blocks, bsz, n_kv, hd};
        c->ops->kv_store(c, &lc, k, v, &sc);
        g->ops->kv_store(g, &lg, dk, dv, &sg);
        c->ops->attention(c, oc, q, &lc, &qc, n_head, 0.5f, 0);
        g->ops->attention(g, dout, dq, &lg, &qg, n_head, 0.5f, 0);
        gpu_ok(g, "attention");
        dev_get(g, og, dout, obytes);
        same_bits(og, oc, (size_t)(3 * n_head * hd), 4, t ? "attention f32, default chunk" : "attention f16, default chunk");
        free(lc.k), free(lc.v);
        g->ops->free(g, lg.k), g->ops->free(g, lg.v);
    }
    void *dev[] = {(void *)sg.slots, (void *)qg.pos, (void *)qg.seq, (void *)qg.block_tables, (void *)qg.slots, dk, dv, dq, dout};
    for (size_t i = 0; i < TP_ARRAY_LEN(dev); i++) g->ops->free(g, dev[i]);
    free(tables), free(slots), free(k), free(v), free(q), free(oc), free(og);
    kbackend_free(g);
    kbackend_free(c);
}

/* ------------------------------------------------------------------ topk */

static void check_topk(struct kbackend *g, struct kbackend *c, const float *logits, int64_t rows, int64_t n, int64_t k) {
    const size_t bytes = (size_t)(rows * n) * sizeof(float);
    float *dl = dev_copy(g, logits, bytes);
    int32_t *ic = tu_xmalloc((size_t)(rows * k) * sizeof(int32_t)), *ig = tu_xmalloc((size_t)(rows * k) * sizeof(int32_t));
    float *vc = tu_xmalloc((size_t)(rows * k) * sizeof(float)), *vg = tu_xmalloc((size_t)(rows * k) * sizeof(float));
    float *lc = tu_xmalloc((size_t)rows * sizeof(float)), *lg = tu_xmalloc((size_t)rows * sizeof(float));
    c->ops->topk(c, ic, vc, lc, logits, rows, n, k);
    g->ops->topk(g, ig, vg, lg, dl, rows, n, k);
    gpu_ok(g, "topk");
    char what[96];
    snprintf(what, sizeof what, "topk n %lld k %lld rows %lld", (long long)n, (long long)k, (long long)rows);
    same_bits(ig, ic, (size_t)(rows * k), 4, what);
    same_bits(vg, vc, (size_t)(rows * k), 4, what);
    for (int64_t i = 0; i < rows; i++)
        if (isnan(lc[i])) { /* NaN payloads are not compared */
            cr_assert(isnan(lg[i]), "%s: lse[%lld] gpu %g cpu NaN", what, (long long)i, (double)lg[i]);
            lg[i] = lc[i];
        }
    same_bits(lg, lc, (size_t)rows, 4, what);
    g->ops->topk(g, ig, vg, NULL, dl, rows, n, k); /* lse may be NULL */
    gpu_ok(g, "topk without lse");
    g->ops->free(g, dl);
    free(ic);
    free(ig);
    free(vc);
    free(vg);
    free(lc);
    free(lg);
}

Test(cuda_ops, topk_matches_cpu_with_ties_specials_and_every_k_path) {
    struct kbackend *g = gpu_new(), *c = cpu_ref(0);
    tu_rng r = rng_new();
    const int64_t ns[] = {1000, 70000};
    const int64_t ks[] = {0, 1, 10, 256, 300};
    for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++) {
        const int64_t n = ns[a], rows = 3;
        float *x = tu_xmalloc((size_t)(rows * n) * sizeof(float));
        for (int64_t i = 0; i < rows * n; i++) x[i] = roundf(tu_uniform(&r, -4.0f, 4.0f) * 8.0f) / 8.0f; /* many ties */
        x[n + 5] = INFINITY;                                   /* row 1: +inf */
        x[2 * n + 1] = NAN, x[2 * n + 2] = -INFINITY;          /* row 2: NaN */
        x[3] = -0.0f, x[4] = 0.0f, x[5] = 10.0f, x[6] = 10.0f; /* row 0: a tie at the top */
        x[7] = 1e-40f, x[8] = -1e-40f;                         /* subnormals rank as themselves */
        for (size_t b = 0; b < TP_ARRAY_LEN(ks); b++) check_topk(g, c, x, rows, n, ks[b]);
        free(x);
    }
    float small[100];
    for (int i = 0; i < 100; i++) small[i] = tu_uniform(&r, -1.0f, 1.0f);
    check_topk(g, c, small, 1, 100, 200); /* k > n pads */
    float *many = tu_rand_floats(&r, (size_t)40 * 50, -5.0f, 5.0f);
    check_topk(g, c, many, 40, 50, 7); /* more rows than max_tokens */
    for (int i = 0; i < 50; i++) many[i] = -INFINITY;
    check_topk(g, c, many, 1, 50, 5); /* all -inf */
    check_topk(g, c, many, 1, 0, 0);  /* empty row */
    free(many);
    kbackend_free(g);
    kbackend_free(c);
}

/* lse bit for bit on the rows where its order shows (as test_cpu_ops' level test): the
 * maximum rising in the first k values, inside the 32-value blocks and in the tail; rows
 * with -inf (blocks taken one value at a time, fused), NaN and +inf; e^-40-ish terms next
 * to one 0 (lse = log(1 + sum): the order of the double sum shows in the float); row
 * lengths around the blocks (31, 33, 5003) and a vocabulary-sized row; k from 0 to past
 * the GPU's 256 (the host path, whose lse is still the kernel's). */
Test(cuda_ops, topk_lse_is_bit_identical_to_cpu_in_every_reading_order) {
    struct kbackend *g = gpu_new(), *c = cpu_ref(0);
    tu_rng r = rng_new();
    static const struct {
        int64_t n, k;
    } cs[] = {{1, 1}, {7, 3}, {31, 0}, {33, 1}, {100, 5}, {1000, 40}, {1000, 256}, {5003, 64}, {5003, 300},
              {70001, 40}, {151936, 1}};
    for (size_t ci = 0; ci < TP_ARRAY_LEN(cs); ci++)
        for (int kind = 0; kind < TU_TOPK_KINDS; kind++) {
            const int64_t n = cs[ci].n, k = cs[ci].k, rows = 3;
            float *x = tu_xmalloc((size_t)(rows * n) * sizeof(float));
            tu_fill_topk_rows(&r, x, rows, n, kind);
            check_topk(g, c, x, rows, n, k);
            free(x);
        }
    kbackend_free(g);
    kbackend_free(c);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char *argv[]) {
    if (!kbackend_cuda_compiled() || tu_cuda_devices() == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    return result;
}
