/* test_cpu_ops.c - the CPU backend's ops other than matmul/get_rows, each against a
 * double-precision reference written here, on fresh random inputs, on the scalar path and
 * (when this CPU has it) the AVX2 path; plus backend creation and the op table. */
#include <criterion/criterion.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
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
