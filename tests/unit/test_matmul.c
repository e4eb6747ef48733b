/* test_matmul.c - the CPU matmul (every weight type x every SIMD level this CPU has)
 * against double-precision references, plus the embedding lookup.
 *
 * Reference: the weights dequantized by quant_dequantize_row (bit-exact with gguf, see
 * test_quant.c) and the activations as the kernel sees them, i.e. quantized by
 * quant_quantize_row to the weight type's vec_dot type (Q8_0, Q8_1, Q8_K, F16, BF16 or
 * F32) and dequantized; their dot product in double. Bounds:
 *  - against those activations: float rounding only, |y - ref| <= (n_in/16 + 32) 2^-23 S,
 *    S = sum_i (|w_i| + |min term_i|) |a_i| (the min term of Q4_1/Q5_1/Q2_K/Q4_K/Q5_K
 *    rows is cancelled inside the kernel's sums, so it counts in the magnitude). For
 *    Q4_1/Q5_1 the reference adds m_w (s_a - d_a sum q_a): llama.cpp's Q8_1 carries the
 *    block sum s_a as fp16, and the kernel uses it as llama.cpp does.
 *  - against the unquantized activations x (looser): the above plus sum_i |w_i| e_i with
 *    e_i the activation rounding bound: 0.6 amax_block/127 for Q8_0/Q8_1/Q8_K (half a
 *    step plus the fp16 rounding of the scale), |x_i| 2^-11 + 2^-25 for F16, |x_i| 2^-8
 *    for BF16, 0 for F32.
 * Also against llama.cpp's own CPU dot products (golden files, see the test below).
 * And: thread count and scratch size (chunking) do not change a single bit, a token's
 * result does not depend on how many tokens share the call, n_out = 0 / n_tok = 0 write
 * nothing, column slices (row_stride larger than the slice's bytes) read only their
 * blocks. Every SIMD level this CPU runs (scalar, AVX2, AVX-512) gives the same bits as
 * every other (memcmp, no tolerance), kernel by kernel for every tile width and through
 * cpu_matmul's batched path: the scalar and AVX-512 kernels repeat the AVX2 arithmetic. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/base.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dot_gran.h"
#include "kernels/cpu/q4_0x8.h"
#include "kernels/quant.h"
#include "testutil.h"
#include "testweights.h"

static const enum dtype wtypes[] = {
    DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
    DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K,
};

/* ------------------------------------------------------------ a hand-built backend */

struct tback {
    struct kbackend kb;
    struct cpu_backend cb;
};

static void tback_init(struct tback *b, enum ksimd simd, struct tpool *pool, int n_threads, size_t scratch) {
    memset(b, 0, sizeof *b);
    b->cb.pool = pool;
    b->cb.n_threads = n_threads;
    b->cb.simd = simd;
    b->cb.act_q_bytes = scratch;
    b->cb.act_q = scratch ? aligned_alloc(64, TP_ALIGN_UP(scratch, 64)) : NULL;
    b->kb.impl = &b->cb;
}

static void tback_free(struct tback *b) { free(b->cb.act_q); }

static size_t scratch_for(int64_t tokens, int64_t n_in) {
    struct kbackend_opts o = {.max_tokens = tokens, .max_in = n_in};
    return cpu_matmul_scratch_bytes(&o);
}

/* Checks y[t][o] of a matmul of w with x (n_tok rows) against both references. */
static void check_result(const struct tu_wmat *w, const float *x, int64_t n_tok, const float *y, const char *what) {
    const enum dtype t = w->m.type, vt = tu_vec_dot_type(t);
    const int64_t n_in = w->m.n_in, n_out = w->m.n_out;
    const size_t qbytes = dtype_row_bytes(vt, n_in);
    uint8_t *aq = malloc(qbytes + 64);
    float *a = malloc((size_t)n_in * sizeof *a), *e = malloc((size_t)n_in * sizeof *e);
    for (int64_t tk = 0; tk < n_tok; tk++) {
        const float *xt = x + tk * n_in;
        tu_act_quantize_row(vt, xt, aq, n_in);
        quant_dequantize_row(vt, aq, a, n_in);
        for (int64_t i = 0; i < n_in; i++) { /* activation rounding bound */
            if (vt == DTYPE_F32) e[i] = 0;
            else if (vt == DTYPE_F16) e[i] = fabsf(xt[i]) * 0x1p-11f + 0x1p-25f;
            else if (vt == DTYPE_BF16) e[i] = fabsf(xt[i]) * 0x1p-8f;
            else {
                int64_t bl = vt == DTYPE_Q8_K ? 256 : 32, b0 = i / bl * bl;
                float amax = 0;
                for (int64_t j = b0; j < b0 + bl; j++) amax = fmaxf(amax, fabsf(xt[j]));
                e[i] = 0.6f * amax / 127;
            }
        }
        for (int64_t o = 0; o < n_out; o++) {
            const float *wd = w->deq + o * n_in, *wm = w->mag + o * n_in;
            double ref = 0, ref_x = 0, s = 0, ew = 0;
            for (int64_t i = 0; i < n_in; i++) {
                ref += (double)wd[i] * a[i];
                ref_x += (double)wd[i] * xt[i];
                s += (double)wm[i] * fabs((double)a[i]);
                ew += fabs((double)wd[i]) * e[i];
            }
            if (vt == DTYPE_Q8_1) { /* the fp16 block sums the kernel uses */
                const uint8_t *wrow = (const uint8_t *)w->m.data + (size_t)o * w->m.row_stride;
                size_t ts = dtype_get(t)->type_size;
                for (int64_t b = 0; b < n_in / 32; b++) {
                    uint16_t mh, dh, sh;
                    memcpy(&mh, wrow + b * ts + 2, 2);
                    memcpy(&dh, aq + b * 36, 2);
                    memcpy(&sh, aq + b * 36 + 2, 2);
                    int sq = 0;
                    for (int j = 0; j < 32; j++) sq += (int8_t)aq[b * 36 + 4 + j];
                    ref += (double)fp16_to_f32(mh) * ((double)fp16_to_f32(sh) - (double)fp16_to_f32(dh) * sq);
                    s += fabs((double)fp16_to_f32(mh) * fp16_to_f32(sh));
                }
            }
            const double tol = ((double)n_in / 16 + 32) * 0x1p-23 * s + 1e-30;
            const double got = y[tk * n_out + o];
            cr_assert(fabs(got - ref) <= tol, "%s %s: y[%lld][%lld] = %.9g, reference %.9g (diff %.3g > %.3g)",
                      dtype_name(t), what, (long long)tk, (long long)o, got, ref, fabs(got - ref), tol);
            cr_assert(fabs(got - ref_x) <= tol + ew * 1.001, "%s %s: y[%lld][%lld] = %.9g, float reference %.9g "
                      "(diff %.3g > %.3g)", dtype_name(t), what, (long long)tk, (long long)o, got, ref_x,
                      fabs(got - ref_x), tol + ew);
        }
    }
    free(aq);
    free(a);
    free(e);
}

/* SIMD levels to test: every one this CPU runs. */
static int levels_available(enum ksimd *out) {
    enum ksimd best = cpu_simd_detect();
    int n = 0;
    for (int l = KSIMD_SCALAR; l <= (int)best; l++) out[n++] = (enum ksimd)l;
    if (best < KSIMD_AVX512)
        fprintf(stderr, "[test_matmul] AVX-512 (F/BW/VL/VNNI) kernels skipped: this CPU supports up to %s\n",
                cpu_simd_name(best));
    return n;
}

static float *random_x(tu_rng *r, int64_t n) {
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    float scale = powf(10.0f, tu_uniform(r, -1.0f, 1.0f));
    for (int64_t i = 0; i < n; i++) x[i] = scale * tu_normal(r) * (i % 97 == 3 ? 8.0f : 1.0f);
    return x;
}

/* ------------------------------------------------------------------ tests */

Test(matmul, every_type_and_simd_level_matches_the_double_reference) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    const int64_t toks[] = {0, 1, 3, 7, 33};
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        const enum dtype t = wtypes[k];
        const int64_t bs = dtype_get(t)->block_size;
        const int64_t n_in = tu_is_float_type(t) ? 771 : 768, n_out = 37;
        for (int mode = 0; mode < 2; mode++) {
            struct tu_wmat w;
            /* mode 1: a column slice one block in from both ends, random block bytes */
            tu_wmat_make(&w, &r, t, n_out, n_in, mode ? bs * (bs == 1 ? 5 : 1) : 0, mode ? bs : 0, mode == 1);
            for (int l = 0; l < n_lv; l++) {
                struct tback b;
                tback_init(&b, lv[l], NULL, 1, scratch_for(33, n_in));
                for (size_t ti = 0; ti < TP_ARRAY_LEN(toks); ti++) {
                    const int64_t n_tok = toks[ti];
                    float *x = random_x(&r, n_tok * n_in);
                    float *y = malloc((size_t)(n_tok * n_out + 1) * sizeof *y);
                    y[n_tok * n_out] = 12345.0f; /* sentinel past the end */
                    cpu_matmul(&b.kb, y, &w.m, x, n_tok);
                    char what[96];
                    snprintf(what, sizeof what, "(%s, %s, n_tok %lld)", cpu_simd_name(lv[l]),
                             mode ? "column slice of random blocks" : "quantized gaussians", (long long)n_tok);
                    check_result(&w, x, n_tok, y, what);
                    cr_assert_eq(y[n_tok * n_out], 12345.0f, "%s %s wrote past y", dtype_name(t), what);
                    free(x);
                    free(y);
                }
                tback_free(&b);
            }
            tu_wmat_free(&w);
        }
    }
}

/* tests/golden/quant/<TYPE>.dot.bin (tests/golden/make_quant_golden.py): llama.cpp's own CPU
 * dot products (its from_float and vec_dot, called through llama-cpp-python's libggml-cpu)
 * of weight rows with activations. They agree within float rounding, plus, for each
 * activation value that the two quantizers round to different steps, that step times the
 * weight: llama.cpp's x86 Q8_0/Q8_1 quantizer computes 127/amax and rounds half to even,
 * ggml's reference (ours) 1/(amax/127) and half away from zero, so a value on a rounding
 * edge can land one step apart (the test counts those exactly; usually there are none). */
Test(matmul, every_type_matches_llama_cpps_own_cpu_dot_products) {
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        const enum dtype t = wtypes[k];
        char rel[128];
        snprintf(rel, sizeof rel, "tests/golden/quant/%s.dot.bin", dtype_name(t));
        char *path = tu_src_path(rel);
        size_t size = 0;
        uint8_t *file = tu_read_file(path, &size);
        cr_assert_not_null(file, "cannot read %s; regenerate with tests/golden/make_quant_golden.py", path);
        free(path);
        uint32_t h[5];
        cr_assert(size >= 24 && !memcmp(file, "TPQD", 4), "%s: bad header", rel);
        memcpy(h, file + 4, sizeof h);
        cr_assert(h[0] == 1 && h[1] == (uint32_t)t, "%s: version %u type %u", rel, h[0], h[1]);
        const int64_t n_in = h[2], n_out = h[3], n_tok = h[4];
        const size_t wbytes = dtype_row_bytes(t, n_in) * (size_t)n_out;
        cr_assert_eq(size, 24 + wbytes + 4 * (size_t)(n_tok * n_in + n_tok * n_out), "%s: size", rel);
        struct tu_wmat w = {.buf = aligned_alloc(64, TP_ALIGN_UP(wbytes, 64))};
        memcpy(w.buf, file + 24, wbytes);
        w.m = (struct kmat){
            .data = w.buf, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = wbytes / (size_t)n_out};
        tu_wmat_decode(&w);
        float *x = malloc((size_t)(n_tok * n_in) * sizeof *x), *want = malloc((size_t)(n_tok * n_out) * sizeof *want);
        float *y = malloc((size_t)(n_tok * n_out) * sizeof *y);
        memcpy(x, file + 24 + wbytes, (size_t)(n_tok * n_in) * sizeof *x);
        memcpy(want, file + 24 + wbytes + (size_t)(n_tok * n_in) * 4, (size_t)(n_tok * n_out) * sizeof *want);
        for (int l = 0; l < n_lv; l++) {
            struct tback b;
            tback_init(&b, lv[l], NULL, 1, scratch_for(n_tok, n_in));
            cpu_matmul(&b.kb, y, &w.m, x, n_tok);
            for (int64_t tk = 0; tk < n_tok; tk++)
                for (int64_t o = 0; o < n_out; o++) {
                    const float *xt = x + tk * n_in, *wm = w.mag + o * n_in;
                    const bool q8_32 = tu_vec_dot_type(t) == DTYPE_Q8_0 || tu_vec_dot_type(t) == DTYPE_Q8_1;
                    double s = 0, flips = 0;
                    for (int64_t i = 0; i < n_in; i++) {
                        s += (double)wm[i] * fabs((double)xt[i]);
                        if (q8_32) { /* the two roundings of x[i] (see above) */
                            float amax = 0;
                            for (int64_t j = i / 32 * 32; j < i / 32 * 32 + 32; j++) amax = fmaxf(amax, fabsf(xt[j]));
                            const float d = amax / 127, id_ref = d != 0 ? 1.0f / d : 0;
                            const float id_x86 = amax != 0 ? 127.f / amax : 0;
                            const float q_ref = roundf(xt[i] * id_ref), q_x86 = nearbyintf(xt[i] * id_x86);
                            flips += (double)wm[i] * fp16_to_f32(f32_to_fp16(d)) * fabs(q_ref - q_x86);
                        }
                    }
                    const double tol = ((double)n_in / 16 + 32) * 0x1p-23 * s + 1.01 * flips + 1e-30;
                    const double got = y[tk * n_out + o], ref = want[tk * n_out + o];
                    cr_assert(fabs(got - ref) <= tol,
                              "%s (%s): y[%lld][%lld] = %.9g, llama.cpp %.9g (diff %.3g > %.3g)", dtype_name(t),
                              cpu_simd_name(lv[l]), (long long)tk, (long long)o, got, ref, fabs(got - ref), tol);
                }
            tback_free(&b);
        }
        free(x), free(want), free(y), free(file);
        tu_wmat_free(&w);
    }
}

Test(matmul, threads_scratch_chunks_and_tile_width_do_not_change_a_bit) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    tp_err e = {0};
    struct tpool *pool = NULL;
    cr_assert_eq(tpool_create(&pool, 3, &e), 0, "tpool_create: %s", e.msg);
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    const int64_t n_tok = 13, n_out = 101;
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        const enum dtype t = wtypes[k];
        const int64_t n_in = tu_is_float_type(t) ? 515 : 512;
        struct tu_wmat w;
        tu_wmat_make(&w, &r, t, n_out, n_in, 0, 0, false);
        float *x = random_x(&r, n_tok * n_in);
        for (int l = 0; l < n_lv; l++) {
            struct tback one, many, tiny, none;
            tback_init(&one, lv[l], NULL, 1, scratch_for(n_tok, n_in));
            tback_init(&many, lv[l], pool, 3, scratch_for(n_tok, n_in));
            tback_init(&tiny, lv[l], pool, 3, scratch_for(2, n_in)); /* 2 tokens per chunk */
            tback_init(&none, lv[l], NULL, 1, 0);                    /* no scratch: allocates */
            const size_t ybytes = (size_t)(n_tok * n_out) * sizeof(float);
            float *y1 = malloc(ybytes), *y2 = malloc(ybytes), *y3 = malloc(ybytes), *y4 = malloc(ybytes);
            float *yt = malloc((size_t)n_out * sizeof *yt);
            cpu_matmul(&one.kb, y1, &w.m, x, n_tok);
            cpu_matmul(&many.kb, y2, &w.m, x, n_tok);
            cpu_matmul(&tiny.kb, y3, &w.m, x, n_tok);
            cpu_matmul(&none.kb, y4, &w.m, x, n_tok);
            cr_assert(!memcmp(y1, y2, ybytes), "%s %s: 3 threads differ from 1", dtype_name(t), cpu_simd_name(lv[l]));
            cr_assert(!memcmp(y1, y3, ybytes), "%s %s: chunked tokens differ", dtype_name(t), cpu_simd_name(lv[l]));
            cr_assert(!memcmp(y1, y4, ybytes), "%s %s: allocated scratch differs", dtype_name(t),
                      cpu_simd_name(lv[l]));
            for (int64_t tk = 0; tk < n_tok; tk++) { /* one token alone: the decode path */
                cpu_matmul(&many.kb, yt, &w.m, x + tk * n_in, 1);
                cr_assert(!memcmp(yt, y1 + tk * n_out, (size_t)n_out * sizeof *yt),
                          "%s %s: token %lld alone differs from the batch", dtype_name(t), cpu_simd_name(lv[l]),
                          (long long)tk);
            }
            check_result(&w, x, n_tok, y2, "(3 threads)");
            free(y1), free(y2), free(y3), free(y4), free(yt);
            tback_free(&one), tback_free(&many), tback_free(&tiny), tback_free(&none);
        }
        free(x);
        tu_wmat_free(&w);
    }
    tpool_free(pool);
}

/* Large enough that a task's rows span several L2 row blocks (cpu_matmul walks a block
 * per token tile): the blocking must not change a bit either, batched or alone. */
Test(matmul, row_blocks_do_not_change_a_bit) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    tp_err e = {0};
    struct tpool *pool = NULL;
    cr_assert_eq(tpool_create(&pool, 2, &e), 0, "tpool_create: %s", e.msg);
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    const int64_t n_tok = 6, n_out = 700, n_in = 4096;
    static const enum dtype types[] = {DTYPE_Q4_0, DTYPE_Q8_0, DTYPE_Q4_K, DTYPE_F16};
    for (size_t k = 0; k < TP_ARRAY_LEN(types); k++) {
        const enum dtype t = types[k];
        struct tu_wmat w;
        tu_wmat_make(&w, &r, t, n_out, n_in, 0, 0, false);
        float *x = random_x(&r, n_tok * n_in);
        const size_t ybytes = (size_t)(n_tok * n_out) * sizeof(float);
        float *y1 = malloc(ybytes), *y2 = malloc(ybytes), *yt = malloc((size_t)n_out * sizeof *yt);
        for (int l = 0; l < n_lv; l++) {
            struct tback one, two;
            tback_init(&one, lv[l], NULL, 1, scratch_for(n_tok, n_in));
            tback_init(&two, lv[l], pool, 2, scratch_for(n_tok, n_in));
            cpu_matmul(&one.kb, y1, &w.m, x, n_tok);
            cpu_matmul(&two.kb, y2, &w.m, x, n_tok);
            cr_assert(!memcmp(y1, y2, ybytes), "%s %s: 2 threads differ from 1", dtype_name(t), cpu_simd_name(lv[l]));
            for (int64_t tk = 0; tk < n_tok; tk++) {
                cpu_matmul(&one.kb, yt, &w.m, x + tk * n_in, 1);
                cr_assert(!memcmp(yt, y1 + tk * n_out, (size_t)n_out * sizeof *yt),
                          "%s %s: token %lld alone differs from the batch", dtype_name(t), cpu_simd_name(lv[l]),
                          (long long)tk);
            }
            check_result(&w, x, n_tok, y1, "(row blocks)");
            tback_free(&one), tback_free(&two);
        }
        free(y1), free(y2), free(yt), free(x);
        tu_wmat_free(&w);
    }
    tpool_free(pool);
}

/* ------------------------------------------------------------ the same bits at every level */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Lengths for type t: block types odd and even block counts (so n is often not a multiple
 * of 64 or 256: one block, a last odd block of a pair, groups of four and not), float
 * types lengths with and without a tail past the last 16; then random ones. */
static int64_t level_test_n(tu_rng *r, enum dtype t, int i) {
    static const int64_t fixed[] = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 17, 33};
    const int64_t blk = dtype_block(t);
    const int nf = (int)TP_ARRAY_LEN(fixed);
    if (blk == 1) {
        static const int64_t fn[] = {1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 257, 771};
        return i < nf ? fn[i] : 1 + (int64_t)(tu_next(r) % 2000);
    }
    return blk * (i < nf ? fixed[i] : 1 + (int64_t)(tu_next(r) % (blk == 256 ? 20 : 80)));
}

/* The kernel of every level on the same weights and inputs, each level with its own
 * activation quantizer, every tile of nt = 1..4 tokens from every start: all outputs of
 * every level equal the scalar level's bit for bit. */
Test(matmul, every_simd_level_gives_the_same_bits_kernel_by_kernel) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    const int n_tok = 6;
    const int64_t n_out = 3;
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        const enum dtype t = wtypes[k];
        const enum kact_fmt fmt = kact_fmt_of(t);
        for (int i = 0; i < 24; i++) {
            const int64_t n = level_test_n(&r, t, i);
            const bool random_bytes = i & 1;
            struct tu_wmat w;
            tu_wmat_make(&w, &r, t, n_out, n, 0, 0, random_bytes);
            float *x = random_x(&r, n * n_tok);
            if (n >= 64 && i % 4 == 2) memset(x + 32, 0, 32 * sizeof *x); /* a block of zeros */
            struct kact_rows act;
            const size_t rb = kact_layout(fmt, n, &act);
            uint8_t *rows = aligned_alloc(64, TP_ALIGN_UP(rb * n_tok + 64, 64));
            float *want = NULL, *got = malloc((size_t)(n_out * 16 * n_tok) * sizeof *got);
            for (int l = 0; l < n_lv; l++) {
                if (fmt == KACT_F32) {
                    act.base = (const uint8_t *)x;
                    act.stride = (size_t)n * sizeof(float);
                } else {
                    act.base = rows;
                    act.stride = rb;
                    kact_quant_fn quant = lv[l] >= KSIMD_AVX2 ? kact_quantize_avx2 : kact_quantize_scalar;
                    for (int tk = 0; tk < n_tok; tk++) quant(fmt, x + tk * n, n, rows + (size_t)tk * rb, &act);
                }
                const kdot_fn dot = kdot_for(lv[l], t);
                size_t m = 0;
                for (int64_t o = 0; o < n_out; o++)
                    for (int nt = 1; nt <= KDOT_NT; nt++)
                        for (int t0 = 0; t0 + nt <= n_tok; t0++) {
                            dot((const uint8_t *)w.m.data + (size_t)o * w.m.row_stride, n, &act, t0, nt, got + m);
                            m += (size_t)nt;
                        }
                if (l == 0) {
                    want = got;
                    got = malloc((size_t)(n_out * 16 * n_tok) * sizeof *got);
                    continue;
                }
                if (!memcmp(got, want, m * sizeof *got)) continue;
                size_t j = 0;
                for (int64_t o = 0; o < n_out; o++)
                    for (int nt = 1; nt <= KDOT_NT; nt++)
                        for (int t0 = 0; t0 + nt <= n_tok; t0++)
                            for (int q = 0; q < nt; q++, j++)
                                cr_assert(!memcmp(&got[j], &want[j], sizeof *got),
                                          "%s, n %lld (%s), row %lld, tile of %d from token %d, token %d: %s %.9g "
                                          "(0x%08x) vs scalar %.9g (0x%08x)",
                                          dtype_name(t), (long long)n, random_bytes ? "random blocks" : "gaussians",
                                          (long long)o, nt, t0, t0 + q, cpu_simd_name(lv[l]), got[j],
                                          f32_bits(got[j]), want[j], f32_bits(want[j]));
                cr_assert_fail("%s: %s differs from scalar", dtype_name(t), cpu_simd_name(lv[l]));
            }
            free(want), free(got), free(rows), free(x);
            tu_wmat_free(&w);
        }
    }
}

/* cpu_matmul's batched path (token tiles of up to KDOT_NT, 1 and 2 threads) at every level:
 * n_tok 1..9 tokens, the outputs of every level equal the scalar level's bit for bit. */
Test(matmul, every_simd_level_gives_the_same_bits_through_cpu_matmul) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    tp_err e = {0};
    struct tpool *pool = NULL;
    cr_assert_eq(tpool_create(&pool, 2, &e), 0, "tpool_create: %s", e.msg);
    enum ksimd lv[3];
    const int n_lv = levels_available(lv);
    const int64_t n_out = 29;
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        const enum dtype t = wtypes[k];
        for (int i = 0; i < 4; i++) {
            const int64_t n_in = level_test_n(&r, t, i == 3 ? 100 : 3 * i + 4);
            const bool random_bytes = i & 1;
            struct tu_wmat w;
            tu_wmat_make(&w, &r, t, n_out, n_in, 0, 0, random_bytes);
            for (int64_t n_tok = 1; n_tok <= 9; n_tok++) {
                float *x = random_x(&r, n_tok * n_in);
                const size_t ybytes = (size_t)(n_tok * n_out) * sizeof(float);
                float *want = malloc(ybytes), *got = malloc(ybytes);
                for (int l = 0; l < n_lv; l++) {
                    struct tback b;
                    tback_init(&b, lv[l], l % 2 ? pool : NULL, l % 2 ? 2 : 1, scratch_for(9, n_in));
                    cpu_matmul(&b.kb, l ? got : want, &w.m, x, n_tok);
                    tback_free(&b);
                    if (!l || !memcmp(got, want, ybytes)) continue;
                    for (int64_t q = 0; q < n_tok * n_out; q++)
                        cr_assert(!memcmp(&got[q], &want[q], sizeof *got),
                                  "%s, n_in %lld (%s), n_tok %lld: y[%lld][%lld] %s %.9g (0x%08x) vs scalar %.9g "
                                  "(0x%08x)",
                                  dtype_name(t), (long long)n_in, random_bytes ? "random blocks" : "gaussians",
                                  (long long)n_tok, (long long)(q / n_out), (long long)(q % n_out),
                                  cpu_simd_name(lv[l]), got[q], f32_bits(got[q]), want[q], f32_bits(want[q]));
                }
                free(want), free(got), free(x);
            }
            tu_wmat_free(&w);
        }
    }
    tpool_free(pool);
}

/* Q4_0 weights repacked into groups of 8 rows (KMAT_Q4_0X8, kernels/cpu/q4_0x8.c) give the
 * bits of the GGUF layout at the scalar level, through cpu_matmul (n_tok 1..9, 1 and 2
 * threads, row counts with and without a tail of rows outside the groups) and through
 * cpu_matmul_f64 (granules of 64 and 128 values and one of 3 blocks pairs). */
Test(matmul, q4_0_groups_of_8_rows_give_the_bits_of_the_gguf_layout) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("the grouped Q4_0 kernels need AVX2, which this CPU lacks");
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    tp_err e = {0};
    struct tpool *pool = NULL;
    cr_assert_eq(tpool_create(&pool, 2, &e), 0, "tpool_create: %s", e.msg);
    static const int64_t outs[] = {8, 29, 69, 7};
    for (size_t oi = 0; oi < TP_ARRAY_LEN(outs); oi++) {
        const int64_t n_out = outs[oi];
        for (int i = 0; i < 5; i++) {
            const int64_t n_in = level_test_n(&r, DTYPE_Q4_0, i == 4 ? 100 : 2 * i + 3);
            struct tu_wmat w;
            tu_wmat_make(&w, &r, DTYPE_Q4_0, n_out, n_in, 0, 0, i & 1);
            const size_t wbytes = (size_t)n_out * w.m.row_stride;
            void *gdata = malloc(wbytes);
            memcpy(gdata, w.m.data, wbytes);
            struct kmat g = w.m;
            g.data = gdata;
            struct tback b2;
            tback_init(&b2, KSIMD_AVX2, pool, 2, scratch_for(9, n_in));
            cpu_prepare_weight(&b2.kb, &g);
            cr_assert_eq(g.layout, n_out >= 8 ? KMAT_Q4_0X8 : KMAT_ROWS, "n_out %lld: layout %d", (long long)n_out,
                         (int)g.layout);
            if (n_out >= 8)
                cr_assert(memcmp(gdata, w.m.data, wbytes) != 0, "the repacked bytes equal the GGUF bytes");
            for (int64_t n_tok = 1; n_tok <= 9; n_tok++) {
                float *x = random_x(&r, n_tok * n_in);
                const size_t ybytes = (size_t)(n_tok * n_out) * sizeof(float);
                float *want = malloc(ybytes), *got = malloc(ybytes);
                struct tback b0;
                tback_init(&b0, KSIMD_SCALAR, NULL, 1, scratch_for(9, n_in));
                cpu_matmul(&b0.kb, want, &w.m, x, n_tok);
                for (int th = 1; th <= 2; th++) {
                    struct tback b;
                    tback_init(&b, KSIMD_AVX2, th == 2 ? pool : NULL, th, scratch_for(9, n_in));
                    cpu_matmul(&b.kb, got, &g, x, n_tok);
                    for (int64_t q = 0; q < n_tok * n_out; q++)
                        cr_assert(!memcmp(&got[q], &want[q], sizeof *got),
                                  "n_out %lld, n_in %lld, n_tok %lld, %d threads: y[%lld][%lld] grouped %.9g (0x%08x) "
                                  "vs GGUF layout at the scalar level %.9g (0x%08x)",
                                  (long long)n_out, (long long)n_in, (long long)n_tok, th, (long long)(q / n_out),
                                  (long long)(q % n_out), got[q], f32_bits(got[q]), want[q], f32_bits(want[q]));
                    tback_free(&b);
                }
                const int64_t granules[] = {64, 128, 192};
                const size_t dbytes = (size_t)(n_tok * n_out) * sizeof(double);
                double *dwant = malloc(dbytes), *dgot = malloc(dbytes);
                for (size_t gi = 0; gi < TP_ARRAY_LEN(granules); gi++) {
                    cpu_matmul_f64(&b0.kb, dwant, &w.m, x, n_tok, granules[gi]);
                    struct tback b;
                    tback_init(&b, KSIMD_AVX2, pool, 2, scratch_for(9, n_in));
                    cpu_matmul_f64(&b.kb, dgot, &g, x, n_tok, granules[gi]);
                    tback_free(&b);
                    for (int64_t q = 0; q < n_tok * n_out; q++)
                        cr_assert(!memcmp(&dgot[q], &dwant[q], sizeof *dgot),
                                  "matmul_f64, granule %lld, n_out %lld, n_in %lld, n_tok %lld: y[%lld][%lld] grouped "
                                  "%.17g vs GGUF layout at the scalar level %.17g",
                                  (long long)granules[gi], (long long)n_out, (long long)n_in, (long long)n_tok,
                                  (long long)(q / n_out), (long long)(q % n_out), dgot[q], dwant[q]);
                }
                tback_free(&b0);
                free(dwant), free(dgot), free(want), free(got), free(x);
            }
            tback_free(&b2);
            free(gdata);
            tu_wmat_free(&w);
        }
    }
    tpool_free(pool);
}

/* cpu_matmul_n (Q, K, V and gate, up in one pass) gives the bits of one cpu_matmul per
 * weight: weights of one type and width (Q4_0 repacked or not, Q8_0, Q4_K, F16), of
 * different row counts, n_tok 1..9, 1 and 2 threads; and weights of different types (the
 * fallback to separate calls). */
Test(matmul, matmul_n_gives_the_bits_of_separate_matmuls) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    tp_err e = {0};
    struct tpool *pool = NULL;
    cr_assert_eq(tpool_create(&pool, 2, &e), 0, "tpool_create: %s", e.msg);
    const enum ksimd best = cpu_simd_detect() >= KSIMD_AVX2 ? KSIMD_AVX2 : KSIMD_SCALAR;
    static const enum dtype types[] = {DTYPE_Q4_0, DTYPE_Q8_0, DTYPE_Q4_K, DTYPE_F16};
    static const int64_t outs[3] = {64, 21, 16};
    for (size_t ti = 0; ti <= TP_ARRAY_LEN(types); ti++) {
        const bool mixed = ti == TP_ARRAY_LEN(types);
        const int64_t n_in = 512;
        struct tu_wmat w[3];
        struct kmat m[3];
        void *data[3];
        struct tback bp;
        tback_init(&bp, best, NULL, 1, 0);
        for (int k = 0; k < 3; k++) {
            const enum dtype t = mixed ? types[k] : types[ti];
            tu_wmat_make(&w[k], &r, t, outs[k], n_in, 0, 0, k == 1);
            const size_t bytes = (size_t)outs[k] * w[k].m.row_stride;
            data[k] = malloc(bytes);
            memcpy(data[k], w[k].m.data, bytes);
            m[k] = w[k].m;
            m[k].data = data[k];
            cpu_prepare_weight(&bp.kb, &m[k]); /* Q4_0: grouped where the CPU has AVX2 */
        }
        for (int64_t n_tok = 1; n_tok <= 9; n_tok++) {
            float *x = random_x(&r, n_tok * n_in);
            float *want[3], *got[3];
            for (int k = 0; k < 3; k++) {
                want[k] = malloc((size_t)(n_tok * outs[k]) * sizeof(float));
                got[k] = malloc((size_t)(n_tok * outs[k]) * sizeof(float));
            }
            for (int th = 1; th <= 2; th++) {
                struct tback b;
                tback_init(&b, best, th == 2 ? pool : NULL, th, scratch_for(9, n_in));
                for (int k = 0; k < 3; k++) cpu_matmul(&b.kb, want[k], &m[k], x, n_tok);
                float *const ys[3] = {got[0], got[1], got[2]};
                const struct kmat *const ws[3] = {&m[0], &m[1], &m[2]};
                cpu_matmul_n(&b.kb, 3, ys, ws, x, n_tok);
                for (int k = 0; k < 3; k++)
                    cr_assert(!memcmp(got[k], want[k], (size_t)(n_tok * outs[k]) * sizeof(float)),
                              "%s: weight %d (%s, %lld rows), n_tok %lld, %d threads: matmul_n differs from matmul",
                              mixed ? "mixed types" : dtype_name(types[ti]), k, dtype_name(m[k].type),
                              (long long)outs[k], (long long)n_tok, th);
                tback_free(&b);
            }
            for (int k = 0; k < 3; k++) free(want[k]), free(got[k]);
            free(x);
        }
        for (int k = 0; k < 3; k++) {
            tu_wmat_free(&w[k]);
            free(data[k]);
        }
        tback_free(&bp);
    }
    tpool_free(pool);
}

Test(matmul, empty_extents_write_nothing) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    struct tu_wmat w;
    tu_wmat_make(&w, &r, DTYPE_Q4_0, 8, 64, 0, 0, false);
    struct tback b;
    tback_init(&b, cpu_simd_detect(), NULL, 1, scratch_for(4, 64));
    float x[4 * 64], y[4 * 8];
    for (int i = 0; i < 4 * 64; i++) x[i] = (float)i;
    for (int i = 0; i < 32; i++) y[i] = -7.0f;
    struct kmat empty = w.m;
    empty.n_out = 0; /* a rank owning no rows of this tensor */
    cpu_matmul(&b.kb, y, &empty, x, 4);
    cpu_matmul(&b.kb, y, &w.m, x, 0);
    for (int i = 0; i < 32; i++) cr_assert_eq(y[i], -7.0f);
    struct kmat no_in = w.m;
    no_in.n_in = 0; /* an empty input slice: the sums are 0 */
    cpu_matmul(&b.kb, y, &no_in, x, 4);
    for (int i = 0; i < 32; i++) cr_assert_eq(y[i], 0.0f);
    tback_free(&b);
    tu_wmat_free(&w);
}

Test(matmul, get_rows_returns_the_dequantized_rows_of_the_ids) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (size_t k = 0; k < TP_ARRAY_LEN(wtypes); k++) {
        struct tu_wmat w;
        tu_wmat_make(&w, &r, wtypes[k], 50, 256, 0, 256, false);
        int32_t ids[6] = {49, 0, 7, 7, 23, 1};
        float *out = malloc(6 * 256 * sizeof *out);
        struct tback b;
        tback_init(&b, cpu_simd_detect(), NULL, 1, 0);
        cpu_get_rows(&b.kb, out, &w.m, ids, 6);
        for (int i = 0; i < 6; i++)
            cr_assert(!memcmp(out + i * 256, w.deq + (int64_t)ids[i] * 256, 256 * sizeof(float)), "%s: row %d",
                      dtype_name(wtypes[k]), ids[i]);
        free(out);
        tback_free(&b);
        tu_wmat_free(&w);
    }
}

Test(matmul, simd_level_names_and_detection_are_consistent) {
    cr_assert_str_eq(cpu_simd_name(KSIMD_SCALAR), "scalar");
    cr_assert_str_eq(cpu_simd_name(KSIMD_AVX2), "avx2");
    cr_assert_str_eq(cpu_simd_name(KSIMD_AVX512), "avx512");
    enum ksimd s = cpu_simd_detect();
    cr_assert(s >= KSIMD_SCALAR && s <= KSIMD_AVX512);
#if defined(__x86_64__) && !defined(__clang__) /* clang's builtin does not know f16c */
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    cr_assert_eq(s, avx512 ? KSIMD_AVX512 : avx2 ? KSIMD_AVX2 : KSIMD_SCALAR, "CPUID says %s, gcc's builtin disagrees",
                 cpu_simd_name(s));
#endif
}
