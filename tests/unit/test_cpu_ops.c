/* test_cpu_ops.c - the CPU backend's ops other than matmul/get_rows, each against a
 * double-precision reference written here, on fresh random inputs, on the scalar path and
 * (when this CPU has it) the AVX2 path; each op's output compared bit for bit between the
 * scalar and AVX2 paths and across thread counts (1, 2, 3: different splits of the
 * range); the scalar forms of the shared math (exp, f16 conversions) against their AVX2
 * forms; plus backend creation and the op table. */
#include <criterion/criterion.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vec.h"
#include "kernels/quant.h"
#include "testutil.h"
#include "testweights.h"

/* ---- helpers ---- */

/* SIMD levels to test: scalar always, AVX2 where the CPU supports it. */
static int simd_levels(int out[2]) {
    int n = 0;
    out[n++] = KSIMD_SCALAR;
    if (cpu_simd_detect() >= KSIMD_AVX2) out[n++] = KSIMD_AVX2;
    return n;
}

static struct kbackend *backend_new(int simd, int threads, int64_t max_ctx) {
    struct kbackend_opts o = {.n_threads = threads, .max_tokens = 64, .max_in = 256, .max_ctx = max_ctx,
                              .max_heads = 16, .simd = simd};
    struct kbackend *b = NULL;
    tp_err e = {0};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), 0, "create (simd %d, %d threads): %s", simd, threads, e.msg);
    return b;
}

static tu_rng rng_new(void) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    return r;
}

/* f32 -> f16 -> f32 with the compiler's IEEE binary16 (round to nearest even). */
static float f16_round(float x) { return (float)(_Float16)x; }

static uint16_t f16_bits(float x) {
    _Float16 h = (_Float16)x;
    uint16_t u;
    memcpy(&u, &h, sizeof u);
    return u;
}

/* The runs of a bit-identity test: the scalar level and (where the CPU has it) AVX2,
 * each with 1, 2 and 3 threads (different splits of every parallel range). Run 0, scalar
 * with 1 thread, is the reference the others must equal bit for bit. */
struct runs {
    int n;
    int simd[6], threads[6];
};

static struct runs runs_all(void) {
    struct runs r = {0};
    int lv[2], nl = simd_levels(lv);
    for (int l = 0; l < nl; l++)
        for (int t = 1; t <= 3; t++) r.simd[r.n] = lv[l], r.threads[r.n++] = t;
    return r;
}

/* Fails unless got equals ref byte for byte, naming the first differing element. */
static void same_bits(const void *ref, const void *got, size_t n, size_t esz, const char *what, int simd, int threads) {
    if (n == 0 || memcmp(ref, got, n * esz) == 0) return;
    size_t i = 0;
    while (memcmp((const char *)ref + i * esz, (const char *)got + i * esz, esz) == 0) i++;
    uint32_t a = 0, b = 0;
    memcpy(&a, (const char *)ref + i * esz, esz < 4 ? esz : 4);
    memcpy(&b, (const char *)got + i * esz, esz < 4 ? esz : 4);
    float fa, fb;
    memcpy(&fa, &a, 4), memcpy(&fb, &b, 4);
    cr_assert_fail("%s: simd %d with %d threads differs from scalar with 1 thread at element %zu of %zu: bits %08x vs "
                   "%08x (as floats %.9g vs %.9g)", what, simd, threads, i, n, b, a, fb, fa);
}

/* ---- backend ---- */

Test(cpu_ops, backend_creates_with_resolved_threads_and_describes_itself) {
    struct kbackend *b = backend_new(-1, 2, 0);
    char buf[128];
    kbackend_describe(b, buf, sizeof buf);
    cr_assert(strncmp(buf, "cpu: ", 5) == 0 && strstr(buf, ", 2 threads"), "describe: '%s'", buf);
    cr_assert_str_eq(b->ops->name, "cpu");
    kbackend_free(b);

    b = backend_new(KSIMD_SCALAR, 0, 0);
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    char want[64];
    int n = CPU_COUNT(&set);
    snprintf(want, sizeof want, ", %d thread%s", n, n == 1 ? "" : "s");
    kbackend_describe(b, buf, sizeof buf);
    cr_assert(strstr(buf, want), "describe '%s' lacks '%s' (threads from the affinity mask)", buf, want);
    cr_assert_eq(((struct cpu_backend *)b->impl)->n_threads, n);
    kbackend_free(b);
    kbackend_free(NULL);
}

Test(cpu_ops, backend_refuses_bad_options_with_a_message) {
    struct kbackend *b = NULL;
    tp_err e = {0};
    struct kbackend_opts o = {.n_threads = 1, .simd = 9};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), TP_EINVAL);
    cr_assert_null(b);
    cr_assert_neq(e.msg[0], '\0');
    tp_err_clear(&e);
    o = (struct kbackend_opts){.n_threads = -2, .simd = -1};
    cr_assert_eq(kbackend_cpu_create(&b, &o, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "threads"), "%s", e.msg);
    if (cpu_simd_detect() < KSIMD_AVX512) {
        tp_err_clear(&e);
        o = (struct kbackend_opts){.n_threads = 1, .simd = KSIMD_AVX512};
        cr_assert_eq(kbackend_cpu_create(&b, &o, &e), TP_EUNSUPPORTED);
        cr_assert_null(b);
    }
}

Test(cpu_ops, memory_ops_copy_host_bytes) {
    struct kbackend *b = backend_new(-1, 1, 16);
    unsigned char src[100], dst[100];
    for (int i = 0; i < 100; i++) src[i] = (unsigned char)(i * 7 + 3);
    void *d = b->ops->alloc(b, sizeof src);
    cr_assert_not_null(d);
    cr_assert_eq((uintptr_t)d % 64, 0);
    b->ops->upload(b, d, src, sizeof src);
    b->ops->sync(b);
    b->ops->download(b, dst, d, sizeof dst);
    cr_assert_arr_eq(src, dst, sizeof src);
    b->ops->free(b, d);
    b->ops->free(b, NULL);
    d = b->ops->alloc(b, 0);
    cr_assert_not_null(d);
    b->ops->free(b, d);
    kbackend_free(b);
}

/* ---- rmsnorm ---- */

Test(cpu_ops, rmsnorm_matches_double_with_weights_offset_and_no_weights) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    static const int64_t ns[] = {0, 1, 7, 8, 33, 256, 1031};
    static const int64_t rows[] = {0, 1, 5};
    const float eps = 1e-6f;
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 3, 16);
        for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++)
            for (size_t c = 0; c < TP_ARRAY_LEN(rows); c++)
                for (int variant = 0; variant < 3; variant++) {
                    int64_t n = ns[a], nr = rows[c];
                    size_t tot = (size_t)(n * nr);
                    float *x = tu_rand_floats(&r, tot, -3.0f, 3.0f);
                    float *w = variant == 2 ? NULL : tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
                    float off = variant == 1 ? 1.0f : 0.0f;
                    float *y = tu_rand_floats(&r, tot, 0.0f, 1.0f);
                    b->ops->rmsnorm(b, y, x, w, off, nr, n, eps);
                    for (int64_t i = 0; i < nr; i++) {
                        double ss = 0;
                        for (int64_t j = 0; j < n; j++) ss += (double)x[i * n + j] * x[i * n + j];
                        double inv = 1.0 / sqrt(ss / (double)n + eps);
                        for (int64_t j = 0; j < n; j++) {
                            double ref = x[i * n + j] * inv * (w ? (double)w[j] + off : 1.0);
                            double got = y[i * n + j];
                            cr_assert(fabs(got - ref) <= 1e-6 * fabs(ref) + 1e-7,
                                      "simd %d n %lld row %lld col %lld variant %d: %.9g vs %.9g", lv[l],
                                      (long long)n, (long long)i, (long long)j, variant, got, ref);
                        }
                    }
                    /* in place (y aliasing x) gives the same result */
                    float *z = tu_xmalloc(tot * sizeof(float));
                    memcpy(z, x, tot * sizeof(float));
                    b->ops->rmsnorm(b, z, z, w, off, nr, n, eps);
                    cr_assert(tot == 0 || memcmp(z, y, tot * sizeof(float)) == 0, "in-place rmsnorm differs");
                    free(x), free(w), free(y), free(z);
                }
        kbackend_free(b);
    }
}

/* ---- rope ---- */

/* Reference rotation of one token in double; pure math (no float angle recurrence). */
static void rope_ref(double *out, double *tol, const float *x, int32_t pos, int64_t n_head, int64_t hd,
                     const struct rope_params *p) {
    const int64_t half = p->n_rot / 2;
    double lo = 0, hi = 0;
    if (p->ext_factor != 0.0f) {
        double cf = p->n_rot * log(p->n_ctx_orig / (p->beta_fast * 2 * M_PI)) / (2 * log(p->base));
        double cs = p->n_rot * log(p->n_ctx_orig / (p->beta_slow * 2 * M_PI)) / (2 * log(p->base));
        lo = fmax(0.0, floor(cf));
        hi = fmin((double)(p->n_rot - 1), ceil(cs));
    }
    for (int64_t h = 0; h < n_head; h++) {
        const float *xh = x + h * hd;
        double *oh = out + h * hd, *th = tol + h * hd;
        for (int64_t i = 0; i < hd; i++) oh[i] = xh[i], th[i] = 0;
        for (int64_t i = 0; i < half; i++) {
            double ff = p->freq_factors ? p->freq_factors[i] : 1.0;
            double extrap = pos * pow(p->base, -2.0 * (double)i / (double)p->n_rot) / ff;
            double theta = p->freq_scale * extrap, ms = p->attn_factor;
            if (p->ext_factor != 0.0f) {
                double ramp = 1.0 - fmin(1.0, fmax(0.0, ((double)i - lo) / fmax(0.001, hi - lo)));
                double mix = ramp * p->ext_factor;
                theta = theta * (1 - mix) + extrap * mix;
                ms *= 1.0 + 0.1 * log(1.0 / p->freq_scale);
            }
            int64_t i0 = p->mode == ROPE_NEOX ? i : 2 * i, i1 = p->mode == ROPE_NEOX ? i + half : 2 * i + 1;
            double x0 = xh[i0], x1 = xh[i1];
            oh[i0] = ms * (x0 * cos(theta) - x1 * sin(theta));
            oh[i1] = ms * (x0 * sin(theta) + x1 * cos(theta));
            /* the float angle (theta *= theta_scale, as llama.cpp) drifts by ~(i+3) ulps of
             * its size; plus a few roundings of the products */
            double dt = (double)(i + 4) * 1.2e-7 * fabs(extrap);
            th[i0] = th[i1] = ms * (fabs(x0) + fabs(x1)) * (dt + 1e-6);
        }
    }
}

static void rope_case(struct kbackend *b, tu_rng *r, const struct rope_params *p, int64_t hd, int32_t max_pos,
                      const char *what) {
    const int64_t n_tok = 5, n_head = 3, row = n_head * hd;
    float *x = tu_rand_floats(r, (size_t)(n_tok * row), -1.0f, 1.0f);
    float *y = tu_xmalloc((size_t)(n_tok * row) * sizeof(float));
    memcpy(y, x, (size_t)(n_tok * row) * sizeof(float));
    int32_t pos[5];
    for (int t = 0; t < n_tok; t++) pos[t] = (int32_t)(tu_next(r) % (uint64_t)max_pos);
    pos[0] = 0;
    b->ops->rope(b, y, pos, n_tok, n_head, hd, p);
    double *ref = tu_xmalloc((size_t)row * sizeof(double)), *tol = tu_xmalloc((size_t)row * sizeof(double));
    for (int64_t t = 0; t < n_tok; t++) {
        rope_ref(ref, tol, x + t * row, pos[t], n_head, hd, p);
        for (int64_t i = 0; i < row; i++) {
            double got = y[t * row + i];
            if (tol[i] == 0)
                cr_assert_eq(got, ref[i], "%s: dim %lld beyond n_rot changed", what, (long long)(i % hd));
            else
                cr_assert(fabs(got - ref[i]) <= tol[i], "%s: pos %d head %lld dim %lld: %.9g vs %.9g (tol %.3g)",
                          what, pos[t], (long long)(i / hd), (long long)(i % hd), got, ref[i], tol[i]);
        }
    }
    free(x), free(y), free(ref), free(tol);
}

Test(cpu_ops, rope_matches_double_in_both_modes_with_freq_factors_and_yarn) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    struct {
        int64_t hd, n_rot;
        float base;
    } shapes[] = {{64, 64, 10000.0f}, {80, 32, 1000000.0f}, {6, 6, 10000.0f}};
    float ff[64];
    tu_fill_uniform(&r, ff, 64, 1.0f, 8.0f);
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 2, 16);
        for (size_t s = 0; s < TP_ARRAY_LEN(shapes); s++)
            for (int mode = 0; mode < 2; mode++)
                for (int use_ff = 0; use_ff < 2; use_ff++)
                    for (int yarn = 0; yarn < 3; yarn++)
                        for (int big = 0; big < 2; big++) {
                            struct rope_params p = {
                                .mode = mode ? ROPE_NEOX : ROPE_NORMAL,
                                .n_rot = shapes[s].n_rot,
                                .base = shapes[s].base,
                                .freq_scale = yarn == 1 ? 0.5f : yarn == 2 ? 0.25f : 1.0f, /* 1: linear */
                                .freq_factors = use_ff ? ff : NULL,
                                .ext_factor = yarn == 2 ? 1.0f : 0.0f,
                                .attn_factor = yarn == 2 ? 0.9f : 1.0f,
                                .beta_fast = 32.0f,
                                .beta_slow = 1.0f,
                                .n_ctx_orig = 4096,
                            };
                            char what[128];
                            snprintf(what, sizeof what, "simd %d hd %lld rot %lld %s ff %d yarn %d big %d", lv[l],
                                     (long long)shapes[s].hd, (long long)shapes[s].n_rot, mode ? "neox" : "normal",
                                     use_ff, yarn, big);
                            rope_case(b, &r, &p, shapes[s].hd, big ? 40000 : 300, what);
                        }
        kbackend_free(b);
    }
}

/* With llama.cpp's angle (theta = pos, theta *= base^(-2/n_rot) in float per pair), the
 * result agrees to float rounding even at positions in the tens of thousands, where
 * a double angle would differ by ~1e-3. */
Test(cpu_ops, rope_angles_follow_llama_cpp_float_recurrence_at_large_positions) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    const int64_t hd = 128, n_rot = 128, n_tok = 4;
    float ff[64];
    tu_fill_uniform(&r, ff, 64, 1.0f, 4.0f);
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 2, 16);
        for (int mode = 0; mode < 2; mode++)
            for (int use_ff = 0; use_ff < 2; use_ff++) {
                struct rope_params p = {.mode = mode ? ROPE_NEOX : ROPE_NORMAL, .n_rot = n_rot, .base = 500000.0f,
                                        .freq_scale = 1.0f, .freq_factors = use_ff ? ff : NULL, .attn_factor = 1.0f};
                float *x = tu_rand_floats(&r, (size_t)(n_tok * hd), -1.0f, 1.0f);
                float *y = tu_xmalloc((size_t)(n_tok * hd) * sizeof(float));
                memcpy(y, x, (size_t)(n_tok * hd) * sizeof(float));
                int32_t pos[4] = {65535, 30001, 12345, 8191};
                b->ops->rope(b, y, pos, n_tok, 1, hd, &p);
                const float ts = powf(p.base, -2.0f / (float)n_rot);
                for (int64_t t = 0; t < n_tok; t++) {
                    float theta = (float)pos[t];
                    for (int64_t i = 0; i < n_rot / 2; i++) {
                        float th = use_ff ? theta / ff[i] : theta;
                        int64_t i0 = mode ? i : 2 * i, i1 = mode ? i + n_rot / 2 : 2 * i + 1;
                        double x0 = x[t * hd + i0], x1 = x[t * hd + i1];
                        double r0 = x0 * cos((double)th) - x1 * sin((double)th);
                        double r1 = x0 * sin((double)th) + x1 * cos((double)th);
                        double tol = 1e-6 * (fabs(x0) + fabs(x1));
                        cr_assert(fabs(y[t * hd + i0] - r0) <= tol && fabs(y[t * hd + i1] - r1) <= tol,
                                  "simd %d mode %d ff %d pos %d pair %lld: (%.9g, %.9g) vs (%.9g, %.9g)", lv[l], mode,
                                  use_ff, pos[t], (long long)i, y[t * hd + i0], y[t * hd + i1], r0, r1);
                        theta *= ts;
                    }
                }
                free(x), free(y);
            }
        kbackend_free(b);
    }
}

/* ---- kv_store and attention ---- */

enum { BS = 16 }; /* block size */

struct att_setup {
    int n_seq;
    int lens[6];  /* stored positions per sequence */
    int n_new[6]; /* query tokens per sequence: the last n_new positions */
    int64_t n_head, n_kv, hd, window;
    float scale;
};

static void attention_case(int simd, int threads, int64_t max_ctx, enum dtype type, const struct att_setup *s,
                           tu_rng *r) {
    struct kbackend *b = backend_new(simd, threads, max_ctx);
    char what[160];
    snprintf(what, sizeof what, "simd %d thr %d ctx %lld %s heads %lld/%lld hd %lld win %lld scale %g", simd, threads,
             (long long)max_ctx, type == DTYPE_F16 ? "f16" : "f32", (long long)s->n_head, (long long)s->n_kv,
             (long long)s->hd, (long long)s->window, s->scale);
    int max_len = 0;
    for (int q = 0; q < s->n_seq; q++) max_len = TP_MAX(max_len, s->lens[q]);
    const int64_t max_blocks = (max_len + BS - 1) / BS, n_blocks = s->n_seq * max_blocks + 3;
    const int64_t row = s->n_kv * s->hd, n_slots = n_blocks * BS;
    const size_t esz = type == DTYPE_F16 ? 2 : 4;

    /* scattered block tables: a shuffled permutation of the physical blocks */
    int32_t *perm = tu_xmalloc((size_t)n_blocks * sizeof(int32_t));
    for (int64_t i = 0; i < n_blocks; i++) perm[i] = (int32_t)i;
    for (int64_t i = n_blocks - 1; i > 0; i--) {
        int64_t j = (int64_t)(tu_next(r) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int32_t *tables = tu_xmalloc((size_t)(s->n_seq * max_blocks) * sizeof(int32_t));
    for (int64_t i = 0; i < s->n_seq * max_blocks; i++) tables[i] = perm[i];

    /* cache full of NaN bytes, so that reading a slot never stored shows up */
    struct kv_layer kv = {.k = tu_xmalloc((size_t)(n_slots * row) * esz), .v = tu_xmalloc((size_t)(n_slots * row) * esz),
                          .type = type, .n_blocks = n_blocks, .block_size = BS, .n_kv = s->n_kv, .head_dim = s->hd};
    memset(kv.k, 0xff, (size_t)(n_slots * row) * esz);
    memset(kv.v, 0xff, (size_t)(n_slots * row) * esz);

    /* store every position of every sequence in one batch, plus a padding token (slot -1) */
    int64_t n_store = 1;
    for (int q = 0; q < s->n_seq; q++) n_store += s->lens[q];
    float *kf = tu_rand_floats(r, (size_t)(n_store * row), -1.0f, 1.0f);
    float *vf = tu_rand_floats(r, (size_t)(n_store * row), -1.0f, 1.0f);
    int64_t *slots = tu_xmalloc((size_t)n_store * sizeof(int64_t));
    int64_t *base = tu_xmalloc((size_t)s->n_seq * sizeof(int64_t)); /* store-batch index of (q, 0) */
    int64_t t = 0;
    for (int q = 0; q < s->n_seq; q++) {
        base[q] = t;
        for (int p = 0; p < s->lens[q]; p++, t++)
            slots[t] = (int64_t)tables[q * max_blocks + p / BS] * BS + p % BS;
    }
    slots[t] = -1;
    struct attn_batch sb = {.n_tok = n_store, .slots = slots};
    b->ops->kv_store(b, &kv, kf, vf, &sb);

    /* kv_store: exact f16 rounding (or copy), and nothing written outside the slots */
    unsigned char *written = calloc((size_t)n_slots, 1);
    for (int64_t i = 0; i + 1 < n_store; i++) {
        written[slots[i]] = 1;
        for (int64_t e = 0; e < row; e++) {
            size_t at = (size_t)(slots[i] * row + e);
            if (type == DTYPE_F16) {
                uint16_t gk = ((uint16_t *)kv.k)[at], gv = ((uint16_t *)kv.v)[at];
                cr_assert(gk == f16_bits(kf[i * row + e]) && gv == f16_bits(vf[i * row + e]),
                          "%s: kv_store f16 bits %04x/%04x vs %04x/%04x", what, gk, gv, f16_bits(kf[i * row + e]),
                          f16_bits(vf[i * row + e]));
                kf[i * row + e] = f16_round(kf[i * row + e]);
                vf[i * row + e] = f16_round(vf[i * row + e]);
            } else {
                cr_assert(((float *)kv.k)[at] == kf[i * row + e] && ((float *)kv.v)[at] == vf[i * row + e],
                          "%s: kv_store f32 copy", what);
            }
        }
    }
    for (int64_t sl = 0; sl < n_slots; sl++) {
        if (written[sl]) continue;
        const unsigned char *pk = (const unsigned char *)kv.k + (size_t)(sl * row) * esz;
        for (size_t e = 0; e < (size_t)row * esz; e++) cr_assert_eq(pk[e], 0xff, "%s: slot %lld overwritten", what, (long long)sl);
    }
    free(written);

    /* the query batch */
    int64_t n_q = 0;
    for (int q = 0; q < s->n_seq; q++) n_q += s->n_new[q];
    int32_t *pos = tu_xmalloc((size_t)n_q * sizeof(int32_t)), *seq = tu_xmalloc((size_t)n_q * sizeof(int32_t));
    t = 0;
    for (int q = 0; q < s->n_seq; q++)
        for (int j = 0; j < s->n_new[q]; j++, t++) seq[t] = q, pos[t] = s->lens[q] - s->n_new[q] + j;
    /* interleave tokens of different sequences: reverse the order */
    for (int64_t i = 0; i < n_q / 2; i++) {
        int32_t a = pos[i], c = seq[i];
        pos[i] = pos[n_q - 1 - i], seq[i] = seq[n_q - 1 - i];
        pos[n_q - 1 - i] = a, seq[n_q - 1 - i] = c;
    }
    const int64_t qrow = s->n_head * s->hd;
    float *qv = tu_rand_floats(r, (size_t)(n_q * qrow), -1.0f, 1.0f);
    float *out = tu_rand_floats(r, (size_t)(n_q * qrow), 5.0f, 6.0f);
    struct attn_batch ab = {.n_tok = n_q, .pos = pos, .seq = seq, .block_tables = tables, .max_blocks = max_blocks};
    b->ops->attention(b, out, qv, &kv, &ab, s->n_head, s->scale, s->window);

    const int64_t group = s->n_head / s->n_kv;
    double *w = tu_xmalloc((size_t)max_len * sizeof(double));
    const double tol = 3e-5 + 2e-7 * s->scale * (double)s->hd;
    for (int64_t i = 0; i < n_q; i++)
        for (int64_t h = 0; h < s->n_head; h++) {
            const float *qh = qv + (i * s->n_head + h) * s->hd;
            const int64_t g = h / group;
            const int q = seq[i];
            int lo = s->window > 0 ? TP_MAX(0, pos[i] - (int)s->window + 1) : 0;
            double m = -INFINITY, sum = 0;
            /* an f16 cache follows llama.cpp's rounding: q rounded to f16, and (when the span
             * fits one scratch chunk) the normalised probabilities rounded to f16 */
            const bool f16 = type == DTYPE_F16;
            const bool f16_p = f16 && pos[i] - lo + 1 <= max_ctx;
            for (int p = lo; p <= pos[i]; p++) {
                const float *kr = kf + (base[q] + p) * row + g * s->hd;
                double d = 0;
                for (int64_t e = 0; e < s->hd; e++) d += (double)(f16 ? f16_round(qh[e]) : qh[e]) * kr[e];
                w[p] = s->scale * d;
                m = fmax(m, w[p]);
            }
            for (int p = lo; p <= pos[i]; p++) sum += (w[p] = exp(w[p] - m));
            if (f16_p)
                for (int p = lo; p <= pos[i]; p++) w[p] = f16_round((float)(w[p] / sum));
            /* an f16 probability may round the other way than in float: one f16 ulp of it */
            const double tol_i = f16_p ? tol + 1e-3 : tol;
            for (int64_t e = 0; e < s->hd; e++) {
                double ref = 0;
                for (int p = lo; p <= pos[i]; p++) ref += w[p] * vf[(base[q] + p) * row + g * s->hd + e];
                if (!f16_p) ref /= sum;
                double got = out[(i * s->n_head + h) * s->hd + e];
                cr_assert(fabs(got - ref) <= tol_i, "%s: token %lld (seq %d pos %d) head %lld dim %lld: %.9g vs %.9g",
                          what, (long long)i, q, pos[i], (long long)h, (long long)e, got, ref);
            }
        }
    free(w), free(qv), free(out), free(pos), free(seq), free(base), free(slots), free(kf), free(vf);
    free(kv.k), free(kv.v), free(tables), free(perm);
    kbackend_free(b);
}

static void attention_all_paths(const struct att_setup *s, int threads, int64_t max_ctx) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    for (int l = 0; l < nl; l++) {
        attention_case(lv[l], threads, max_ctx, DTYPE_F16, s, &r);
        attention_case(lv[l], threads, max_ctx, DTYPE_F32, s, &r);
    }
}

Test(cpu_ops, attention_decodes_one_token_per_sequence_with_gqa) {
    tu_rng r = rng_new();
    struct att_setup s = {.n_seq = 5, .n_head = 8, .n_kv = 2, .hd = 64, .scale = 0.125f};
    for (int q = 0; q < s.n_seq; q++) s.lens[q] = 1 + (int)(tu_next(&r) % 90), s.n_new[q] = 1;
    s.lens[0] = 1;
    attention_all_paths(&s, 3, 256);
}

Test(cpu_ops, attention_over_a_prompt_is_causal) {
    struct att_setup s = {.n_seq = 1, .lens = {45}, .n_new = {45}, .n_head = 4, .n_kv = 4, .hd = 37, .scale = 0.3f};
    attention_all_paths(&s, 2, 64);
}

Test(cpu_ops, attention_mixes_prompt_and_decode_tokens_with_one_kv_head) {
    struct att_setup s = {.n_seq = 3, .lens = {70, 33, 16}, .n_new = {20, 1, 1}, .n_head = 4, .n_kv = 1, .hd = 64,
                          .scale = 0.125f};
    attention_all_paths(&s, 3, 128);
    attention_all_paths(&s, 1, 128);
}

Test(cpu_ops, attention_honours_a_sliding_window_shorter_and_longer_than_the_context) {
    struct att_setup s = {.n_seq = 3, .lens = {70, 33, 5}, .n_new = {20, 1, 5}, .n_head = 8, .n_kv = 2, .hd = 32,
                          .scale = 0.2f, .window = 7};
    attention_all_paths(&s, 3, 128);
    s.window = 1000;
    attention_all_paths(&s, 3, 128);
}

Test(cpu_ops, attention_is_stable_for_large_scores) {
    /* scores up to ~ +-300: e^300 overflows float without the max subtraction */
    struct att_setup s = {.n_seq = 2, .lens = {40, 17}, .n_new = {3, 1}, .n_head = 3, .n_kv = 1, .hd = 8,
                          .scale = 40.0f};
    attention_all_paths(&s, 2, 64);
}

Test(cpu_ops, attention_spans_longer_than_the_scratch_are_processed_in_chunks) {
    struct att_setup s = {.n_seq = 2, .lens = {75, 9}, .n_new = {30, 1}, .n_head = 4, .n_kv = 2, .hd = 16,
                          .scale = 1.5f};
    attention_all_paths(&s, 3, 7);
    s.window = 16;
    attention_all_paths(&s, 2, 7);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* The f16 round trip of x through F16C (what the AVX2 attention kernels use). */
__attribute__((target("avx2,f16c"))) static void f16c_round_trip(const float *x, float *y, int n) {
    for (int i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
}

/* F16C's rounding equals f32_to_fp16's (nearest even; subnormals, overflow, ties) over
 * every float whose bits are a multiple of 61 (all exponents, a dense sample of the
 * mantissas, ties included) and over every exact f16 tie in [0, 65520]. */
Test(cpu_ops, f16c_rounding_equals_f32_to_fp16) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("no AVX2 on this CPU");
    enum { N = 4096 };
    static float x[N], y[N];
    uint64_t bits = 0;
    int64_t checked = 0;
    while (bits <= 0xffffffffull) {
        int n = 0;
        for (; n < N && bits <= 0xffffffffull; n++, bits += 61) {
            uint32_t b32 = (uint32_t)bits;
            memcpy(&x[n], &b32, 4);
            if (x[n] != x[n]) x[n] = 0.0f; /* NaN payloads may differ: not compared */
        }
        for (int k = n; k < N; k++) x[k] = 0.0f;
        f16c_round_trip(x, y, N);
        for (int k = 0; k < n; k++) {
            float want = fp16_to_f32(f32_to_fp16(x[k]));
            cr_assert(memcmp(&want, &y[k], 4) == 0, "f16 rounding of %a: F16C %a, f32_to_fp16 %a", x[k], y[k], want);
        }
        checked += n;
    }
    for (uint32_t h = 0; h < 0x7bff; h++) { /* halfway between consecutive f16 values */
        float a = fp16_to_f32((uint16_t)h), b2 = fp16_to_f32((uint16_t)(h + 1));
        x[0] = (a + b2) / 2;
        for (int k = 1; k < 8; k++) x[k] = -x[0];
        f16c_round_trip(x, y, 8);
        float want = fp16_to_f32(f32_to_fp16(x[0]));
        cr_assert(memcmp(&want, &y[0], 4) == 0, "tie %a: F16C %a, f32_to_fp16 %a", x[0], y[0], want);
    }
    cr_assert_gt(checked, 70000000);
}
#endif

/* The AVX2 kernel that takes several heads in one work item (units of up to 4 heads of a
 * KV group whose K/V rows are widened once, several KV heads per item) gives the same
 * bits as the one-head path. The grouping depends on the thread count (a work item for
 * every thread), so 1 thread (all heads of a token in one item) is compared with as many
 * threads as (token, head) pairs (one head per item), for KV groups of 4, 2 and 1 (plain
 * multi-head), on an f16 cache, for head
 * sizes that are multiples of 16 and of 8, with a sliding window and with a span longer
 * than the scratch chunk (which falls back to one head at a time). */
Test(cpu_ops, attention_grouped_heads_give_the_same_bits_as_one_head_at_a_time) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("no AVX2 on this CPU");
    tu_rng r = rng_new();
    const int64_t lens[3] = {50, 9, 1}, n_new[3] = {3, 1, 1};
    const int64_t hds[2] = {64, 40}, windows[2] = {0, 6}, ctxs[2] = {256, 30};
    /* KV groups of 4 (units of 4 heads, 2 KV heads per item), of 2, and plain multi-head */
    const int64_t heads[3][2] = {{8, 2}, {6, 3}, {5, 5}};
    for (int ki = 0; ki < 3; ki++)
    for (int hi = 0; hi < 2; hi++)
        for (int wi = 0; wi < 2; wi++)
            for (int ci = 0; ci < 2; ci++) {
                const int64_t n_head = heads[ki][0], n_kv = heads[ki][1];
                const int64_t hd = hds[hi], row = n_kv * hd, max_blocks = 4, n_blocks = 3 * max_blocks;
                int32_t tables[3 * 4];
                for (int i = 0; i < 12; i++) tables[i] = 11 - i;
                struct kv_layer kv = {.k = tu_xmalloc((size_t)(n_blocks * BS * row) * 2),
                                      .v = tu_xmalloc((size_t)(n_blocks * BS * row) * 2), .type = DTYPE_F16,
                                      .n_blocks = n_blocks, .block_size = BS, .n_kv = n_kv, .head_dim = hd};
                int64_t n_store = 0, slots[64];
                for (int q = 0; q < 3; q++)
                    for (int64_t p = 0; p < lens[q]; p++) slots[n_store++] = (int64_t)tables[q * max_blocks + p / BS] * BS + p % BS;
                float *kf = tu_rand_floats(&r, (size_t)(n_store * row), -1.0f, 1.0f);
                float *vf = tu_rand_floats(&r, (size_t)(n_store * row), -1.0f, 1.0f);
                struct attn_batch sb = {.n_tok = n_store, .slots = slots};
                struct kbackend *b1 = backend_new(KSIMD_AVX2, 1, ctxs[ci]),
                                *bn = backend_new(KSIMD_AVX2, (int)(5 * n_head), ctxs[ci]);
                b1->ops->kv_store(b1, &kv, kf, vf, &sb);
                int32_t pos[5], seq[5];
                int t = 0;
                for (int q = 0; q < 3; q++)
                    for (int64_t j = 0; j < n_new[q]; j++, t++) seq[t] = q, pos[t] = (int32_t)(lens[q] - n_new[q] + j);
                float *qv = tu_rand_floats(&r, (size_t)(5 * n_head * hd), -2.0f, 2.0f);
                float *o1 = tu_xmalloc((size_t)(5 * n_head * hd) * sizeof(float)), *on = tu_xmalloc((size_t)(5 * n_head * hd) * sizeof(float));
                struct attn_batch ab = {.n_tok = 5, .pos = pos, .seq = seq, .block_tables = tables, .max_blocks = max_blocks};
                /* a large scale spreads the scores: tiny (f16 subnormal) and zero probabilities */
                const float scale = ci ? 6.0f : 0.125f;
                b1->ops->attention(b1, o1, qv, &kv, &ab, n_head, scale, windows[wi]);
                bn->ops->attention(bn, on, qv, &kv, &ab, n_head, scale, windows[wi]);
                for (int64_t i = 0; i < 5 * n_head * hd; i++)
                    cr_assert(memcmp(&o1[i], &on[i], sizeof(float)) == 0,
                              "heads %lld/%lld hd %lld window %lld ctx %lld: value %lld grouped %.9g vs one head %.9g",
                              (long long)n_head, (long long)n_kv, (long long)hd,
                              (long long)windows[wi], (long long)ctxs[ci], (long long)i, o1[i], on[i]);
                kbackend_free(b1), kbackend_free(bn);
                free(kf), free(vf), free(qv), free(o1), free(on), free(kv.k), free(kv.v);
            }
}

/* ---- gated activation ---- */

Test(cpu_ops, gated_act_silu_and_gelu_tanh_match_double) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    static const int64_t ns[] = {0, 1, 7, 8, 1000, 70001};
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 3, 16);
        for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++)
            for (int act = 0; act < ACT_COUNT; act++) {
                int64_t n = ns[a];
                float *g = tu_rand_floats(&r, (size_t)n, -12.0f, 12.0f);
                float *u = tu_rand_floats(&r, (size_t)n, -3.0f, 3.0f);
                if (n > 10) g[3] = -100.0f, g[4] = 100.0f, g[5] = 0.0f, g[6] = -30.0f;
                float *o = tu_rand_floats(&r, (size_t)n, 0.0f, 1.0f);
                b->ops->gated_act(b, o, g, u, n, (enum act_kind)act);
                for (int64_t i = 0; i < n; i++) {
                    double x = g[i], ref, rel = 1e-5;
                    if (act == ACT_SILU) {
                        ref = x / (1.0 + exp(-x)) * u[i];
                    } else if (x <= -10.0) {
                        ref = 0.0;
                    } else if (x >= 10.0) {
                        ref = x * u[i];
                    } else {
                        /* llama.cpp's GELU: f16 input, f16 result (one f16 ulp of slack) */
                        double xr = f16_round((float)x);
                        ref = f16_round((float)(0.5 * xr * (1.0 + tanh(sqrt(2.0 / M_PI) * (xr + 0.044715 * xr * xr * xr))))) * u[i];
                        rel = 1e-3;
                    }
                    cr_assert(fabs(o[i] - ref) <= rel * fabs(ref) + 1e-6 * fmax(1.0, fabs(u[i])),
                              "simd %d act %d n %lld i %lld: g %g u %g: %.9g vs %.9g", lv[l], act, (long long)n,
                              (long long)i, g[i], u[i], o[i], ref);
                }
                free(g), free(u), free(o);
            }
        kbackend_free(b);
    }
}

/* ---- add, scale, add_bias: exact in float ---- */

Test(cpu_ops, add_scale_and_add_bias_are_exact) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    static const int64_t ns[] = {0, 1, 7, 9, 33, 100003};
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 3, 16);
        for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++) {
            int64_t n = ns[a];
            float *x = tu_rand_floats(&r, (size_t)n, -100.0f, 100.0f);
            float *y = tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
            float *o = tu_xmalloc((size_t)n * sizeof(float));
            b->ops->add(b, o, x, y, n);
            for (int64_t i = 0; i < n; i++) cr_assert_eq(o[i], (float)((double)x[i] + y[i]), "add n %lld", (long long)n);
            memcpy(o, x, (size_t)n * sizeof(float));
            b->ops->add(b, o, o, y, n); /* y aliases a */
            for (int64_t i = 0; i < n; i++) cr_assert_eq(o[i], (float)((double)x[i] + y[i]));
            memcpy(o, x, (size_t)n * sizeof(float));
            b->ops->scale(b, o, 0.37f, n);
            for (int64_t i = 0; i < n; i++) cr_assert_eq(o[i], (float)((double)x[i] * 0.37f), "scale");
            free(x), free(y), free(o);
        }
        static const int64_t rows[] = {0, 1, 4, 300};
        static const int64_t cols[] = {1, 5, 64, 257};
        for (size_t a = 0; a < TP_ARRAY_LEN(rows); a++)
            for (size_t c = 0; c < TP_ARRAY_LEN(cols); c++) {
                int64_t nr = rows[a], n = cols[c];
                float *x = tu_rand_floats(&r, (size_t)(nr * n), -10.0f, 10.0f);
                float *bias = tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
                float *o = tu_xmalloc((size_t)(nr * n) * sizeof(float));
                memcpy(o, x, (size_t)(nr * n) * sizeof(float));
                b->ops->add_bias(b, o, bias, nr, n);
                for (int64_t i = 0; i < nr * n; i++)
                    cr_assert_eq(o[i], (float)((double)x[i] + bias[i % n]), "add_bias %lldx%lld", (long long)nr,
                                 (long long)n);
                free(x), free(bias), free(o);
            }
        kbackend_free(b);
    }
}

/* ---- topk ---- */

struct vi {
    float v;
    int32_t i;
};

static int vi_cmp(const void *pa, const void *pb) {
    const struct vi *a = pa, *b = pb;
    if (a->v != b->v) return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static void topk_case(struct kbackend *b, tu_rng *r, int64_t n_rows, int64_t n, int64_t k, int kind, int simd) {
    float *x = tu_xmalloc((size_t)(n_rows * n) * sizeof(float));
    for (int64_t i = 0; i < n_rows * n; i++) {
        if (kind == 0) x[i] = tu_uniform(r, -20.0f, 20.0f);                    /* distinct */
        else if (kind == 1) x[i] = (float)(tu_next(r) % 6);                    /* many ties */
        else x[i] = tu_next(r) % 4 == 0 ? -INFINITY : tu_uniform(r, -5.0f, 5.0f); /* masked */
    }
    if (kind == 2 && n_rows > 1)
        for (int64_t i = 0; i < n; i++) x[i] = -INFINITY; /* a row with everything masked */
    int32_t *idx = tu_xmalloc((size_t)(n_rows * k) * sizeof(int32_t));
    float *val = tu_xmalloc((size_t)(n_rows * k) * sizeof(float));
    float *lse = tu_xmalloc((size_t)n_rows * sizeof(float));
    b->ops->topk(b, idx, val, lse, x, n_rows, n, k);
    struct vi *ref = tu_xmalloc((size_t)n * sizeof(struct vi));
    for (int64_t rr = 0; rr < n_rows; rr++) {
        const float *xr = x + rr * n;
        for (int64_t i = 0; i < n; i++) ref[i] = (struct vi){xr[i], (int32_t)i};
        qsort(ref, (size_t)n, sizeof *ref, vi_cmp);
        for (int64_t j = 0; j < k; j++)
            cr_assert(idx[rr * k + j] == ref[j].i && val[rr * k + j] == ref[j].v,
                      "simd %d n %lld k %lld kind %d row %lld rank %lld: (%d, %g) vs (%d, %g)", simd, (long long)n,
                      (long long)k, kind, (long long)rr, (long long)j, idx[rr * k + j], val[rr * k + j], ref[j].i,
                      ref[j].v);
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < n; i++) m = fmax(m, xr[i]);
        if (m > -INFINITY)
            for (int64_t i = 0; i < n; i++) s += exp((double)xr[i] - m);
        double want = m > -INFINITY ? m + log(s) : -INFINITY;
        if (want == -INFINITY)
            cr_assert(lse[rr] == -INFINITY, "lse of a masked row: %g", lse[rr]);
        else
            cr_assert(fabs(lse[rr] - want) <= 3e-6 * fmax(1.0, fabs(want)), "simd %d n %lld kind %d lse %.9g vs %.9g",
                      simd, (long long)n, kind, lse[rr], want);
    }
    b->ops->topk(b, idx, val, NULL, x, n_rows, n, k); /* lse may be NULL */
    free(ref), free(x), free(idx), free(val), free(lse);
}

Test(cpu_ops, topk_returns_the_k_largest_descending_with_ties_to_lower_index_and_lse) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    struct {
        int64_t rows, n, k;
    } cases[] = {{1, 1, 1},    {3, 7, 0},     {3, 7, 3},    {3, 7, 7},       {2, 100, 5},
                 {33, 100, 3}, {2, 1000, 40}, {2, 1000, 1000}, {3, 5003, 64}, {1, 100003, 40}};
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 3, 16);
        for (size_t c = 0; c < TP_ARRAY_LEN(cases); c++)
            for (int kind = 0; kind < 3; kind++) topk_case(b, &r, cases[c].rows, cases[c].n, cases[c].k, kind, lv[l]);
        kbackend_free(b);
    }
}

/* ---- the shared math: scalar forms equal the AVX2 lanes ---- */

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void exp256_of(const float *x, float *y, int n) {
    for (int i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, cpu_exp256(_mm256_loadu_ps(x + i)));
}

/* cpu_exp1 (scalar, built here for plain x86-64: libm fmaf and nearbyintf) equals a lane
 * of cpu_exp256 over a sample of every float (bits a multiple of 193: all exponents, both
 * signs, NaNs, infinities), densely around the clamps and the rounding points of n, and
 * it stays within 2 ulp of exp inside the clamps. */
Test(cpu_ops, exp_scalar_equals_one_lane_of_exp256) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("no AVX2 on this CPU");
    enum { N = 4096 };
    static float x[N], y[N];
    int64_t checked = 0;
    uint64_t bits = 0;
    tu_rng r = rng_new();
    for (int phase = 0; phase < 2; phase++) {
        for (int64_t done = 0; phase == 0 ? bits <= 0xffffffffull : done < 400000; done += N) {
            for (int n = 0; n < N; n++) {
                if (phase == 0) {
                    uint32_t b = (uint32_t)bits;
                    memcpy(&x[n], &b, 4);
                    bits += 193;
                } else if (n % 4 == 0) { /* near the clamps */
                    static const float edges[4] = {-87.3f, 88.3f, -87.33654f, 88.72284f};
                    x[n] = nextafterf(edges[n / 4 % 4], 0.0f) + (float)((int)(tu_next(&r) % 64) - 32) * 1e-5f;
                } else if (n % 4 == 1) { /* (k + 1/2) ln2, where n rounds either way */
                    x[n] = ((float)((int)(tu_next(&r) % 253) - 126) + 0.5f) * 0.6931472f;
                    uint32_t b;
                    memcpy(&b, &x[n], 4);
                    b += (uint32_t)(tu_next(&r) % 9) - 4u;
                    memcpy(&x[n], &b, 4);
                } else {
                    x[n] = tu_uniform(&r, -90.0f, 90.0f);
                }
            }
            exp256_of(x, y, N);
            for (int n = 0; n < N; n++) {
                const float s = cpu_exp1(x[n]);
                cr_assert(memcmp(&s, &y[n], 4) == 0, "exp of %a: scalar %a, AVX2 %a", x[n], s, y[n]);
                if (x[n] >= -87.3f && x[n] <= 88.3f) {
                    const double want = exp((double)x[n]);
                    cr_assert(fabs(s - want) <= 2.0 * ldexp(1.0, ilogb(want) - 23), "exp(%a) = %a vs %a", x[n], s, want);
                }
            }
            checked += N;
        }
    }
    cr_assert_gt(checked, 22000000);
}

__attribute__((target("avx2,f16c"))) static void f16c_to_f16(const float *x, uint16_t *h, int n) {
    for (int i = 0; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
}

__attribute__((target("avx2,f16c"))) static void f16c_to_f32(const uint16_t *h, float *x, int n) {
    for (int i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
}

/* The scalar f16 conversions of the CPU ops equal F16C's on every f16 and on a sample of
 * every float (bits a multiple of 61, plus NaNs of every payload class), NaNs included:
 * quiet, sign and top payload bits kept (f32_to_fp16 would give 0x7e00 for any NaN). */
Test(cpu_ops, scalar_f16_conversions_equal_f16c_on_every_input) {
    if (cpu_simd_detect() < KSIMD_AVX2) cr_skip_test("no AVX2 on this CPU");
    enum { N = 4096 };
    static float x[N], y[N];
    static uint16_t h[N];
    for (uint32_t base = 0; base < 65536; base += N) {
        for (int k = 0; k < N; k++) h[k] = (uint16_t)(base + (uint32_t)k);
        f16c_to_f32(h, y, N);
        for (int k = 0; k < N; k++) {
            const float s = cpu_f16_to_f32(h[k]);
            cr_assert(memcmp(&s, &y[k], 4) == 0, "f16 %04x: scalar %08x, F16C %08x", h[k], cpu_f32_bits(s), cpu_f32_bits(y[k]));
        }
    }
    tu_rng r = rng_new();
    uint64_t bits = 0;
    int64_t nans = 0;
    for (int phase = 0; phase < 2; phase++)
        for (int64_t done = 0; phase == 0 ? bits <= 0xffffffffull : done < (1 << 20); done += N) {
            for (int k = 0; k < N; k++) {
                uint32_t b;
                if (phase == 0) {
                    b = (uint32_t)bits;
                    bits += 61;
                } else { /* NaNs: random sign and payload, quiet or signalling, small payloads too */
                    b = 0x7f800000u | (uint32_t)(tu_next(&r) & 0x807fffffu);
                    if (k % 3 == 0) b = (b & 0xffc00000u) | (uint32_t)(tu_next(&r) % 0x4000u);
                    if ((b & 0x7fffffu) == 0) b |= 1u;
                }
                memcpy(&x[k], &b, 4);
            }
            f16c_to_f16(x, h, N);
            for (int k = 0; k < N; k++) {
                const uint16_t s = cpu_f32_to_f16(x[k]);
                nans += x[k] != x[k];
                cr_assert_eq(s, h[k], "f32 %08x: scalar %04x, F16C %04x", cpu_f32_bits(x[k]), s, h[k]);
            }
        }
    cr_assert_gt(nans, 1 << 20);
}
#endif

/* ---- bit identity across SIMD levels and thread counts ---- */

/* Rows on which the order of the sum of squares shows in the result (random rows almost
 * never show it: the squares are exact and summed in double), for n a power of two >= 64:
 * two large values, odd m1 and even m2 in lanes j and j + 4 of the first block, whose
 * squares add up to an odd integer S in [2^24, 2^25), exactly between two floats (and so
 * is the mean S / n; ties go down); tiny values elsewhere, each lane of them summing to
 * about 0.78 * 2^-30, so that S plus one square, one lane or two lanes rounds back to S
 * (under half an ulp in double) but S plus four lanes does not. In the AVX2 tree the last
 * addition brings four lanes to S and the mean rounds up; summed one by one, or lane by
 * lane into S, it rounds down (and the scale differs in about a third of such rows).
 * One row in 4. */
static void rms_tie_rows(tu_rng *r, float *x, int64_t n, int64_t nr) {
    if (n < 64 || (n & (n - 1))) return;
    const float tiny = sqrtf(ldexpf(0.78f, -30) * 8.0f / (float)n);
    for (int64_t row = 0; row < nr; row += 4) {
        float *xr = x + row * n;
        for (int64_t i = 0; i < n; i++) xr[i] = tu_next(r) % 2 ? tiny : -tiny;
        const int64_t j = (int64_t)(tu_next(r) % 4);
        xr[j] = (float)(2901 + 2 * (int)(tu_next(r) % 550));
        xr[j + 4] = (float)(2900 + 2 * (int)(tu_next(r) % 551));
    }
}

Test(cpu_ops, rmsnorm_gives_the_same_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    static const int64_t ns[] = {1, 3, 7, 8, 9, 15, 16, 17, 33, 64, 100, 256, 1031, 4096};
    for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++)
        for (int variant = 0; variant < 3; variant++) {
            /* enough rows for 3 pieces (a piece is at least 16384 / n rows) */
            const int64_t n = ns[a], nr = 3 * TP_MAX(1, 16384 / n) + 1;
            const size_t tot = (size_t)(n * nr);
            float *x = tu_rand_floats(&r, tot, -3.0f, 3.0f);
            for (size_t i = 0; i < tot; i += 97) x[i] *= 1e4f; /* a wide spread of squares */
            for (size_t i = 5; i < tot; i += 101) x[i] *= 1e-5f;
            rms_tie_rows(&r, x, n, nr);
            float *w = variant == 2 ? NULL : tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
            const float off = variant == 1 ? 1.0f : 0.0f;
            float *ref = tu_xmalloc(tot * sizeof(float)), *y = tu_xmalloc(tot * sizeof(float));
            for (int k = 0; k < rn.n; k++) {
                struct kbackend *b = backend_new(rn.simd[k], rn.threads[k], 16);
                b->ops->rmsnorm(b, k ? y : ref, x, w, off, nr, n, 1e-6f);
                char what[64];
                snprintf(what, sizeof what, "rmsnorm n %lld variant %d", (long long)n, variant);
                if (k) same_bits(ref, y, tot, 4, what, rn.simd[k], rn.threads[k]);
                kbackend_free(b);
            }
            free(x), free(w), free(ref), free(y);
        }
}

Test(cpu_ops, gated_act_gives_the_same_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    /* a piece is at least 8192 elements: n past 2 and 3 pieces, starts not multiples of 8 */
    static const int64_t ns[] = {1, 5, 7, 8, 13, 1000, 8191, 8193, 16390, 24579, 70001};
    for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++)
        for (int act = 0; act < ACT_COUNT; act++) {
            const int64_t n = ns[a];
            float *g = tu_rand_floats(&r, (size_t)n, -12.0f, 12.0f);
            float *u = tu_rand_floats(&r, (size_t)n, -3.0f, 3.0f);
            static const float special[] = {-100.0f, 100.0f, 0.0f, -0.0f, -30.0f, 87.5f, -87.5f, 89.0f, -89.0f,
                                            INFINITY, -INFINITY, 1e-30f, -1e-30f};
            for (int64_t i = 0; i < n; i++)
                if (tu_next(&r) % 16 == 0) g[i] = special[tu_next(&r) % TP_ARRAY_LEN(special)];
            float *ref = tu_xmalloc((size_t)n * sizeof(float)), *o = tu_xmalloc((size_t)n * sizeof(float));
            for (int k = 0; k < rn.n; k++) {
                struct kbackend *b = backend_new(rn.simd[k], rn.threads[k], 16);
                b->ops->gated_act(b, k ? o : ref, g, u, n, (enum act_kind)act);
                char what[64];
                snprintf(what, sizeof what, "gated_act %d n %lld", act, (long long)n);
                if (k) same_bits(ref, o, (size_t)n, 4, what, rn.simd[k], rn.threads[k]);
                kbackend_free(b);
            }
            free(g), free(u), free(ref), free(o);
        }
}

Test(cpu_ops, add_scale_and_add_bias_give_the_same_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    static const int64_t ns[] = {1, 7, 9, 33, 32769, 65541, 100003};
    for (size_t a = 0; a < TP_ARRAY_LEN(ns); a++) {
        const int64_t n = ns[a], cols = n % 257 + 1, rows = n / cols;
        float *x = tu_rand_floats(&r, (size_t)n, -100.0f, 100.0f), *y = tu_rand_floats(&r, (size_t)n, -1.0f, 1.0f);
        float *ref = tu_xmalloc(3 * (size_t)n * sizeof(float)), *o = tu_xmalloc(3 * (size_t)n * sizeof(float));
        for (int k = 0; k < rn.n; k++) {
            struct kbackend *b = backend_new(rn.simd[k], rn.threads[k], 16);
            float *out = k ? o : ref;
            b->ops->add(b, out, x, y, n);
            memcpy(out + n, x, (size_t)n * sizeof(float));
            b->ops->scale(b, out + n, -0.37f, n);
            memcpy(out + 2 * n, x, (size_t)n * sizeof(float));
            b->ops->add_bias(b, out + 2 * n, y, rows, cols);
            char what[64];
            snprintf(what, sizeof what, "add/scale/add_bias n %lld", (long long)n);
            if (k) same_bits(ref, o, 3 * (size_t)n, 4, what, rn.simd[k], rn.threads[k]);
            kbackend_free(b);
        }
        free(x), free(y), free(ref), free(o);
    }
}

Test(cpu_ops, rope_gives_the_same_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    float ff[64];
    tu_fill_uniform(&r, ff, 64, 1.0f, 8.0f);
    static const int64_t hds[] = {64, 6, 80};
    for (size_t s = 0; s < TP_ARRAY_LEN(hds); s++)
        for (int mode = 0; mode < 2; mode++)
            for (int yarn = 0; yarn < 2; yarn++) {
                const int64_t hd = hds[s], n_head = 3, n_tok = 40, tot = n_tok * n_head * hd;
                struct rope_params p = {.mode = mode ? ROPE_NEOX : ROPE_NORMAL, .n_rot = hd == 80 ? 32 : hd,
                                        .base = 10000.0f, .freq_scale = yarn ? 0.25f : 1.0f,
                                        .freq_factors = yarn ? ff : NULL, .ext_factor = yarn ? 1.0f : 0.0f,
                                        .attn_factor = 1.0f, .beta_fast = 32.0f, .beta_slow = 1.0f, .n_ctx_orig = 4096};
                float *x = tu_rand_floats(&r, (size_t)tot, -1.0f, 1.0f);
                int32_t pos[40];
                for (int t = 0; t < n_tok; t++) pos[t] = (int32_t)(tu_next(&r) % 40000);
                float *ref = tu_xmalloc((size_t)tot * sizeof(float)), *o = tu_xmalloc((size_t)tot * sizeof(float));
                for (int k = 0; k < rn.n; k++) {
                    struct kbackend *b = backend_new(rn.simd[k], rn.threads[k], 16);
                    float *out = k ? o : ref;
                    memcpy(out, x, (size_t)tot * sizeof(float));
                    b->ops->rope(b, out, pos, n_tok, n_head, hd, &p);
                    if (k) same_bits(ref, o, (size_t)tot, 4, "rope", rn.simd[k], rn.threads[k]);
                    kbackend_free(b);
                }
                free(x), free(ref), free(o);
            }
}

/* kv_store into an f16 cache: the same bits on every path (8-lane F16C blocks, scalar
 * tails, scalar level), for rows that are not multiples of 8 and inputs of every kind
 * (ties, subnormal halves, overflow, infinities, NaNs with payloads). */
Test(cpu_ops, kv_store_gives_the_same_f16_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    static const int64_t shapes[][2] = {{1, 37}, {2, 13}, {2, 64}, {1, 8}, {3, 5}, {1, 1}};
    for (size_t s = 0; s < TP_ARRAY_LEN(shapes); s++) {
        const int64_t n_kv = shapes[s][0], hd = shapes[s][1], row = n_kv * hd;
        const int64_t n_tok = 3 * TP_MAX(1, 16384 / row) + 1, n_blocks = (n_tok + BS - 1) / BS + 1, n_slots = n_blocks * BS;
        float *kf = tu_rand_floats(&r, (size_t)(n_tok * row), -1.0f, 1.0f);
        float *vf = tu_rand_floats(&r, (size_t)(n_tok * row), -70000.0f, 70000.0f);
        for (int64_t i = 0; i < n_tok * row; i++) {
            uint32_t b = (uint32_t)tu_next(&r);
            switch (tu_next(&r) % 8) {
            case 0: memcpy(&kf[i], &b, 4); break;                            /* any bits: NaNs, infinities */
            case 1: kf[i] = ldexpf((float)(b % 4096) + 0.5f, -34); break;   /* subnormal halves, ties */
            case 2: { /* exactly between two f16 values */
                const uint16_t h = (uint16_t)(b % 0x7bffu);
                kf[i] = (fp16_to_f32(h) + fp16_to_f32((uint16_t)(h + 1))) / 2;
                break;
            }
            default: break;
            }
        }
        int64_t *slots = tu_xmalloc((size_t)n_tok * sizeof(int64_t));
        for (int64_t t = 0; t < n_tok; t++) slots[t] = t % 17 == 5 ? -1 : n_slots - 1 - t; /* some padding */
        const size_t bytes = (size_t)(n_slots * row) * 2;
        unsigned char *ref = tu_xmalloc(2 * bytes), *got = tu_xmalloc(2 * bytes);
        for (int k = 0; k < rn.n; k++) {
            struct kbackend *b = backend_new(rn.simd[k], rn.threads[k], 16);
            unsigned char *out = k ? got : ref;
            memset(out, 0x5a, 2 * bytes);
            struct kv_layer kv = {.k = out, .v = out + bytes, .type = DTYPE_F16, .n_blocks = n_blocks,
                                  .block_size = BS, .n_kv = n_kv, .head_dim = hd};
            struct attn_batch sb = {.n_tok = n_tok, .slots = slots};
            b->ops->kv_store(b, &kv, kf, vf, &sb);
            char what[64];
            snprintf(what, sizeof what, "kv_store f16 rows of %lld", (long long)row);
            if (k) same_bits(ref, got, bytes, 2, what, rn.simd[k], rn.threads[k]);
            kbackend_free(b);
        }
        /* and each stored value is the F16C-exact conversion (f32_to_fp16 for non-NaN) */
        for (int64_t t = 0; t < n_tok; t++) {
            if (slots[t] < 0) continue;
            for (int64_t e = 0; e < row; e++) {
                uint16_t h;
                memcpy(&h, ref + (size_t)(slots[t] * row + e) * 2, 2);
                const float x = kf[t * row + e];
                cr_assert_eq(h, cpu_f32_to_f16(x), "kv_store of %a: %04x", x, h);
                if (x == x) cr_assert_eq(h, f32_to_fp16(x), "kv_store of %a: %04x", x, h);
            }
        }
        free(kf), free(vf), free(slots), free(ref), free(got);
    }
}

/* Attention on every path (f16 and f32 caches; the grouped AVX2 kernel, the one-head
 * f16 softmax and the generic chunked one; head sizes odd, multiples of 8 but not 16,
 * beyond the f16 q buffer; windows; spans longer than the scratch chunk; large scores)
 * gives the same bits at the scalar level and AVX2 and for any thread count (which
 * changes how many heads an AVX2 work item takes: 3 * n_head threads for the decode
 * batch means one head per item). */
Test(cpu_ops, attention_gives_the_same_bits_on_every_path_level_and_thread_count) {
    tu_rng r = rng_new();
    int lv[2], nl = simd_levels(lv);
    static const struct {
        int64_t n_head, n_kv, hd, window, ctx;
        enum dtype type;
        float scale;
    } cs[] = {
        {8, 2, 64, 0, 256, DTYPE_F16, 0.125f},  {8, 2, 64, 0, 256, DTYPE_F32, 0.125f},
        {4, 4, 37, 0, 256, DTYPE_F16, 0.3f},    {4, 4, 37, 0, 256, DTYPE_F32, 0.3f},
        {6, 3, 40, 6, 256, DTYPE_F16, 6.0f},    {6, 3, 40, 6, 256, DTYPE_F32, 6.0f},
        {4, 1, 13, 0, 9, DTYPE_F16, 1.5f},      {4, 1, 13, 0, 9, DTYPE_F32, 1.5f},
        {16, 4, 24, 0, 30, DTYPE_F16, 2.0f},    {16, 2, 128, 0, 256, DTYPE_F16, 0.09f},
        {3, 1, 8, 0, 64, DTYPE_F32, 40.0f},     {3, 1, 8, 0, 64, DTYPE_F16, 40.0f},
        {2, 1, 1, 0, 64, DTYPE_F16, 1.0f},      {5, 5, 20, 25, 256, DTYPE_F16, 0.5f},
        {2, 2, 1040, 0, 256, DTYPE_F16, 0.05f}, {4, 2, 16, 16, 7, DTYPE_F32, 1.5f},
    };
    const int n_seq = 3, lens[3] = {70, 17, 1}, n_new[2][3] = {{20, 1, 1}, {1, 1, 1}};
    const int64_t max_blocks = (70 + BS - 1) / BS, n_blocks = n_seq * max_blocks;
    int32_t tables[3 * 5];
    for (int i = 0; i < n_seq * max_blocks; i++) tables[i] = (int32_t)((i * 7 + 3) % n_blocks);
    int64_t slots[88];
    int64_t n_store = 0;
    for (int q = 0; q < n_seq; q++)
        for (int p = 0; p < lens[q]; p++) slots[n_store++] = (int64_t)tables[q * max_blocks + p / BS] * BS + p % BS;
    for (size_t c = 0; c < TP_ARRAY_LEN(cs); c++) {
        const int64_t hd = cs[c].hd, row = cs[c].n_kv * hd, qrow = cs[c].n_head * hd;
        const size_t esz = cs[c].type == DTYPE_F16 ? 2 : 4;
        struct kv_layer kv = {.k = tu_xmalloc((size_t)(n_blocks * BS * row) * esz),
                              .v = tu_xmalloc((size_t)(n_blocks * BS * row) * esz), .type = cs[c].type,
                              .n_blocks = n_blocks, .block_size = BS, .n_kv = cs[c].n_kv, .head_dim = hd};
        float *kf = tu_rand_floats(&r, (size_t)(n_store * row), -1.0f, 1.0f);
        float *vf = tu_rand_floats(&r, (size_t)(n_store * row), -1.0f, 1.0f);
        struct attn_batch sb = {.n_tok = n_store, .slots = slots};
        struct kbackend *b0 = backend_new(KSIMD_SCALAR, 1, 16);
        b0->ops->kv_store(b0, &kv, kf, vf, &sb);
        kbackend_free(b0);
        for (int batch = 0; batch < 2; batch++) {
            int32_t pos[22], seq[22];
            int n_q = 0;
            for (int q = n_seq - 1; q >= 0; q--) /* sequences interleaved in reverse */
                for (int j = 0; j < n_new[batch][q]; j++, n_q++) seq[n_q] = q, pos[n_q] = lens[q] - n_new[batch][q] + j;
            float *qv = tu_rand_floats(&r, (size_t)(n_q * qrow), -2.0f, 2.0f);
            const size_t n_out = (size_t)(n_q * qrow);
            float *ref = tu_xmalloc(n_out * sizeof(float)), *o = tu_xmalloc(n_out * sizeof(float));
            struct attn_batch ab = {.n_tok = n_q, .pos = pos, .seq = seq, .block_tables = tables, .max_blocks = max_blocks};
            const int thr[4] = {1, 2, 3, (int)(3 * cs[c].n_head)};
            bool first = true;
            for (int l = 0; l < nl; l++)
                for (int ti = 0; ti < 4; ti++) {
                    struct kbackend *b = backend_new(lv[l], thr[ti], cs[c].ctx);
                    b->ops->attention(b, first ? ref : o, qv, &kv, &ab, cs[c].n_head, cs[c].scale, cs[c].window);
                    char what[160];
                    snprintf(what, sizeof what, "attention %s heads %lld/%lld hd %lld window %lld ctx %lld scale %g, %d tokens",
                             cs[c].type == DTYPE_F16 ? "f16" : "f32", (long long)cs[c].n_head, (long long)cs[c].n_kv,
                             (long long)hd, (long long)cs[c].window, (long long)cs[c].ctx, cs[c].scale, n_q);
                    if (!first) same_bits(ref, o, n_out, 4, what, lv[l], thr[ti]);
                    first = false;
                    kbackend_free(b);
                }
            for (size_t i = 0; i < n_out; i++) cr_assert(isfinite(ref[i]), "attention output %zu: %g", i, ref[i]);
            free(qv), free(ref), free(o);
        }
        free(kf), free(vf), free(kv.k), free(kv.v);
    }
}

/* topk: indices, values and lse bit for bit on every level and thread count, for rows
 * whose maximum grows while the heap fills, inside the 32-value blocks and in the tail
 * (rising rows), rows with ties, masked rows, rows with NaN and +inf, and rows where the
 * order of the double sum shows in the float lse (a 0 among values near -40: lse =
 * log(1 + sum), the sum a few ulps of 1, so a changed order changes it by several %). */
Test(cpu_ops, topk_gives_the_same_bits_on_every_level_and_thread_count) {
    tu_rng r = rng_new();
    const struct runs rn = runs_all();
    static const struct {
        int64_t n, k;
    } cs[] = {{1, 1}, {7, 3}, {31, 0}, {33, 1}, {100, 5}, {1000, 40}, {1000, 1000}, {5003, 64}, {70001, 40}, {151936, 1}};
    for (size_t c = 0; c < TP_ARRAY_LEN(cs); c++)
        for (int kind = 0; kind < TU_TOPK_KINDS; kind++) {
            const int64_t n = cs[c].n, k = cs[c].k;
            const int64_t nr = TP_MIN(3 * TP_MAX(1, 65536 / n) + 1, 2000);
            float *x = tu_xmalloc((size_t)(nr * n) * sizeof(float));
            tu_fill_topk_rows(&r, x, nr, n, kind);
            const size_t nk = (size_t)(nr * k);
            int32_t *ri = tu_xmalloc(nk * sizeof(int32_t) + 4), *gi = tu_xmalloc(nk * sizeof(int32_t) + 4);
            float *rv = tu_xmalloc(nk * sizeof(float) + 4), *gv = tu_xmalloc(nk * sizeof(float) + 4);
            float *rl = tu_xmalloc((size_t)nr * sizeof(float)), *gl = tu_xmalloc((size_t)nr * sizeof(float));
            for (int q = 0; q < rn.n; q++) {
                struct kbackend *b = backend_new(rn.simd[q], rn.threads[q], 16);
                b->ops->topk(b, q ? gi : ri, q ? gv : rv, q ? gl : rl, x, nr, n, k);
                char what[80];
                snprintf(what, sizeof what, "topk n %lld k %lld kind %d", (long long)n, (long long)k, kind);
                if (q) {
                    same_bits(ri, gi, nk, 4, what, rn.simd[q], rn.threads[q]);
                    same_bits(rv, gv, nk, 4, what, rn.simd[q], rn.threads[q]);
                    same_bits(rl, gl, (size_t)nr, 4, what, rn.simd[q], rn.threads[q]);
                }
                kbackend_free(b);
            }
            free(x), free(ri), free(gi), free(rv), free(gv), free(rl), free(gl);
        }
}

/* ---- empty extents ---- */

Test(cpu_ops, every_op_accepts_empty_extents) {
    int lv[2], nl = simd_levels(lv);
    for (int l = 0; l < nl; l++) {
        struct kbackend *b = backend_new(lv[l], 2, 16);
        struct rope_params rp = {.mode = ROPE_NEOX, .n_rot = 64, .base = 10000.0f, .freq_scale = 1.0f,
                                 .attn_factor = 1.0f};
        struct kv_layer kv = {.type = DTYPE_F16, .block_size = 16, .n_kv = 1, .head_dim = 64};
        struct attn_batch ab = {0};
        b->ops->rmsnorm(b, NULL, NULL, NULL, 0.0f, 0, 64, 1e-6f);
        b->ops->rmsnorm(b, NULL, NULL, NULL, 0.0f, 3, 0, 1e-6f);
        b->ops->rope(b, NULL, NULL, 0, 4, 64, &rp);
        b->ops->kv_store(b, &kv, NULL, NULL, &ab);
        b->ops->attention(b, NULL, NULL, &kv, &ab, 4, 0.125f, 0);
        b->ops->gated_act(b, NULL, NULL, NULL, 0, ACT_SILU);
        b->ops->add(b, NULL, NULL, NULL, 0);
        b->ops->scale(b, NULL, 2.0f, 0);
        b->ops->add_bias(b, NULL, NULL, 0, 8);
        b->ops->add_bias(b, NULL, NULL, 8, 0);
        b->ops->topk(b, NULL, NULL, NULL, NULL, 0, 10, 3);
        float lse[2] = {1, 1};
        b->ops->topk(b, NULL, NULL, lse, NULL, 2, 0, 0);
        cr_assert(lse[0] == -INFINITY && lse[1] == -INFINITY, "lse of empty rows: %g %g", lse[0], lse[1]);
        kbackend_free(b);
    }
}
