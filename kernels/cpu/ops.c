/* ops.c - the CPU backend's row-wise and element-wise ops: RMS norm, rotary embedding,
 * gated activation, add, scale and bias. Scalar code plus AVX2 variants picked at run time.
 *
 * Math:
 *   rmsnorm   y = x / sqrt(mean(x^2) + eps) * (w + w_offset)   (sum of squares in double)
 *   rope      (a, b) -> (a cos t - b sin t, a sin t + b cos t) per pair i < n_rot/2, with
 *             t = pos * freq_scale * base^(-2i/n_rot) / ff[i] (YaRN-mixed when
 *             ext_factor != 0), cos/sin scaled by attn_factor (and YaRN's magnitude term).
 *             The angle follows ggml's rope cache: theta = pos, then theta *= base^(-2/n_rot)
 *             per pair, all in float, so that large positions agree with llama.cpp.
 *   silu      g / (1 + e^-g) * u
 *   gelu_tanh 0.5 g (1 + tanh(y)) * u = g / (1 + e^(-2y)) * u, y = sqrt(2/pi)(g + 0.044715 g^3)
 *             (the sigmoid form is the same function without the cancellation of 1 + tanh).
 *
 * Ordering (see vec.h): the scalar level (opts.simd = 0) gives the same bits as AVX2, and
 * no result depends on the thread count:
 *   rmsnorm   one row per thread; x^2 summed in double (products exact) in 8 lanes, lane l
 *             taking the elements 8i + l of the row's first n - n % 8, the lanes combined as
 *             (s0 + s4, s1 + s5, s2 + s6, s3 + s7) and then by cpu_hsum4d, then the last
 *             n % 8 squares added in order; y = (x * scale) * (w + w_offset) per element.
 *   rope      scalar only (libm cosf/sinf), one token per thread.
 *   silu      per element g / (1 + cpu_exp1(-g)) * u (AVX2: cpu_exp256, the same bits), so
 *             where a thread's piece of the range starts or ends does not matter.
 *   gelu_tanh per element on both levels: 0 for g <= -10, g for g >= 10, else the f16
 *             rounding of g (cpu_f32_to_f16) looked up in the GELU table (kernels/act.c:
 *             llama.cpp's gelu with libm tanhf, result rounded to f16; built once per
 *             process, cpu_backend.gelu_tab points at it); then times u. The CUDA backend
 *             uploads the same table, so GELU needs no tanh on the GPU.
 *   add, scale, add_bias: one IEEE operation per element. */
#include "vec.h"

#include "../act.h"

#include <math.h>

/* ---- rmsnorm ---- */

struct rms_ctx {
    float *y;
    const float *x, *w;
    float off, eps;
    int64_t n;
    bool avx2;
};

/* The sum of x^2 over a row in rms_row_avx2's order (the squares of floats are exact in
 * double, so fusing or not does not matter). */
static double rms_sumsq_scalar(const float *x, int64_t n) {
    double a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += (double)x[i + l] * (double)x[i + l];
    const double h[4] = {a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]};
    double ss = cpu_hsum4d(h);
    for (; i < n; i++) ss += (double)x[i] * (double)x[i];
    return ss;
}

static void rms_row_scalar(float *y, const float *x, const float *w, float off, int64_t n, float eps) {
    const double ss = rms_sumsq_scalar(x, n);
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (w) {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * (w[i] + off);
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
    }
}

#if CPU_HAVE_X86
static CPU_AVX2 void rms_row_avx2(float *y, const float *x, const float *w, float off, int64_t n, float eps) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    double ss = cpu_hsum256d(_mm256_add_pd(a0, a1));
    for (; i < n; i++) ss += (double)x[i] * (double)x[i];
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    __m256 vs = _mm256_set1_ps(scale);
    i = 0;
    if (w) {
        __m256 vo = _mm256_set1_ps(off);
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
            _mm256_storeu_ps(y + i, _mm256_mul_ps(v, _mm256_add_ps(_mm256_loadu_ps(w + i), vo)));
        }
        for (; i < n; i++) y[i] = x[i] * scale * (w[i] + off);
    } else {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        for (; i < n; i++) y[i] = x[i] * scale;
    }
}
#endif

static void rms_rows(void *vctx, int64_t lo, int64_t hi) {
    const struct rms_ctx *c = vctx;
    for (int64_t r = lo; r < hi; r++) {
        float *y = c->y + r * c->n;
        const float *x = c->x + r * c->n;
#if CPU_HAVE_X86
        if (c->avx2) {
            rms_row_avx2(y, x, c->w, c->off, c->n, c->eps);
            continue;
        }
#endif
        rms_row_scalar(y, x, c->w, c->off, c->n, c->eps);
    }
}

void cpu_rmsnorm(struct kbackend *b, float *y, const float *x, const float *w, float w_offset,
                 int64_t n_rows, int64_t n, float eps) {
    if (n_rows <= 0 || n <= 0) return;
    struct rms_ctx c = {y, x, w, w_offset, eps, n, cpu_use_avx2(b)};
    cpu_parallel_for(b, n_rows, TP_MAX(1, 16384 / n), rms_rows, &c);
}

/* ---- rope ---- */

enum { ROPE_BLOCK = 64 }; /* pairs whose cos/sin are computed at once, then applied to every head */

struct rope_ctx {
    float *x;
    const int32_t *pos;
    int64_t n_head, head_dim, n_rot;
    enum rope_mode mode;
    float theta_scale, freq_scale, ext_factor, mscale, mscale_ext;
    const float *freq_factors;
    float corr[2];
};

/* ggml_rope_yarn_corr_dim: the dimension at which n_ctx_orig positions make `n_rot` turns. */
static float rope_corr_dim(int64_t n_dims, int64_t n_ctx_orig, float n_rot, float base) {
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2 * (float)M_PI)) / (2 * logf(base));
}

static float rope_ramp(float low, float high, int64_t i) {
    float y = ((float)i - low) / TP_MAX(0.001f, high - low);
    return 1 - TP_MIN(1.0f, TP_MAX(0.0f, y));
}

static void rope_rows(void *vctx, int64_t lo, int64_t hi) {
    const struct rope_ctx *c = vctx;
    const int64_t half = c->n_rot / 2;
    float cs[ROPE_BLOCK], sn[ROPE_BLOCK];
    for (int64_t t = lo; t < hi; t++) {
        float theta = (float)c->pos[t];
        for (int64_t i0 = 0; i0 < half; i0 += ROPE_BLOCK) {
            int64_t m = TP_MIN((int64_t)ROPE_BLOCK, half - i0);
            for (int64_t j = 0; j < m; j++) {
                int64_t i = i0 + j;
                float extrap = c->freq_factors ? theta / c->freq_factors[i] : theta;
                float interp = c->freq_scale * extrap;
                float th = interp, ms = c->mscale;
                if (c->ext_factor != 0.0f) {
                    float mix = rope_ramp(c->corr[0], c->corr[1], i) * c->ext_factor;
                    th = interp * (1 - mix) + extrap * mix;
                    ms = c->mscale_ext;
                }
                cs[j] = cosf(th) * ms;
                sn[j] = sinf(th) * ms;
                theta *= c->theta_scale;
            }
            for (int64_t h = 0; h < c->n_head; h++) {
                float *xh = c->x + (t * c->n_head + h) * c->head_dim;
                if (c->mode == ROPE_NEOX) {
                    float *a = xh + i0, *bb = xh + i0 + half;
                    for (int64_t j = 0; j < m; j++) {
                        float x0 = a[j], x1 = bb[j];
                        a[j] = x0 * cs[j] - x1 * sn[j];
                        bb[j] = x0 * sn[j] + x1 * cs[j];
                    }
                } else {
                    float *a = xh + 2 * i0;
                    for (int64_t j = 0; j < m; j++) {
                        float x0 = a[2 * j], x1 = a[2 * j + 1];
                        a[2 * j] = x0 * cs[j] - x1 * sn[j];
                        a[2 * j + 1] = x0 * sn[j] + x1 * cs[j];
                    }
                }
            }
        }
    }
}

/* n_rot is clamped to head_dim and rounded down to even. A zero attn_factor or freq_scale
 * is read as 1 ("none"), so that a zero-initialised rope_params rotates plainly. */
void cpu_rope(struct kbackend *b, float *x, const int32_t *pos, int64_t n_tok, int64_t n_head,
              int64_t head_dim, const struct rope_params *p) {
    int64_t n_rot = TP_MIN(p->n_rot, head_dim) / 2 * 2;
    if (n_tok <= 0 || n_head <= 0 || n_rot <= 0) return;
    struct rope_ctx c = {
        .x = x,
        .pos = pos,
        .n_head = n_head,
        .head_dim = head_dim,
        .n_rot = n_rot,
        .mode = p->mode,
        .theta_scale = powf(p->base, -2.0f / (float)n_rot),
        .freq_scale = p->freq_scale != 0.0f ? p->freq_scale : 1.0f,
        .ext_factor = p->ext_factor,
        .mscale = p->attn_factor != 0.0f ? p->attn_factor : 1.0f,
        .freq_factors = p->freq_factors,
    };
    c.mscale_ext = c.mscale * (1.0f + 0.1f * logf(1.0f / c.freq_scale));
    if (c.ext_factor != 0.0f) {
        float start = floorf(rope_corr_dim(n_rot, p->n_ctx_orig, p->beta_fast, p->base));
        float end = ceilf(rope_corr_dim(n_rot, p->n_ctx_orig, p->beta_slow, p->base));
        c.corr[0] = TP_MAX(0.0f, start);
        c.corr[1] = TP_MIN((float)(n_rot - 1), end);
    }
    cpu_parallel_for(b, n_tok, TP_MAX(1, 2048 / (n_head * n_rot)), rope_rows, &c);
}

/* ---- gated activation ---- */

struct act_ctx {
    float *out;
    const float *gate, *up;
    const uint16_t *gelu_tab; /* act_gelu_table_shared() */
    enum act_kind act;
    bool avx2;
};

/* GELU as llama.cpp's CPU backend computes it (GGML_GELU_FP16): zero at or below -10,
 * identity at or above 10, between them the input rounded to f16 and looked up in the
 * table of act_gelu_f16 (the tanh form evaluated in float on the f16 value, the result
 * rounded to f16). Matching this keeps Gemma's logits within float noise of llama.cpp's.
 * cpu_f32_to_f16 equals the f32_to_fp16 llama.cpp's rounding was first written with on
 * every non-NaN input, and a NaN input reads a NaN entry (0x7e00) as before. */
static inline float gelu_ggml(const uint16_t *tab, float x) {
    if (x <= ACT_GELU_LO) return 0.0f;
    if (x >= ACT_GELU_HI) return x;
    return cpu_f16_to_f32(tab[cpu_f32_to_f16(x)]);
}

/* SiLU of one element; silu_avx2 below is the same in 8 lanes. */
static inline float silu1(float g, float u) { return g / (1.0f + cpu_exp1(-g)) * u; }

static void act_scalar(float *out, const float *g, const float *u, const uint16_t *tab, int64_t lo, int64_t hi,
                       enum act_kind act) {
    if (act == ACT_GELU_TANH) {
        for (int64_t i = lo; i < hi; i++) out[i] = gelu_ggml(tab, g[i]) * u[i];
    } else {
        for (int64_t i = lo; i < hi; i++) out[i] = silu1(g[i], u[i]);
    }
}

#if CPU_HAVE_X86
/* SiLU over [lo, hi): 8 lanes at a time, silu1 for the rest. */
static CPU_AVX2 void silu_avx2(float *out, const float *g, const float *u, int64_t lo, int64_t hi) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 e = cpu_exp256(_mm256_xor_ps(vg, neg));
        __m256 r = _mm256_div_ps(vg, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(r, _mm256_loadu_ps(u + i)));
    }
    for (; i < hi; i++) out[i] = silu1(g[i], u[i]);
}
#endif

static void act_range(void *vctx, int64_t lo, int64_t hi) {
    const struct act_ctx *c = vctx;
#if CPU_HAVE_X86
    if (c->avx2 && c->act != ACT_GELU_TANH) { /* GELU (a table lookup) stays scalar */
        silu_avx2(c->out, c->gate, c->up, lo, hi);
        return;
    }
#endif
    act_scalar(c->out, c->gate, c->up, c->gelu_tab, lo, hi, c->act);
}

void cpu_gated_act(struct kbackend *b, float *out, const float *gate, const float *up, int64_t n,
                   enum act_kind act) {
    if (n <= 0) return;
    struct act_ctx c = {out, gate, up, cpu_impl(b)->gelu_tab, act, cpu_use_avx2(b)};
    cpu_parallel_for(b, n, 8192, act_range, &c);
}

/* ---- add, scale, add_bias ---- */

struct ew_ctx {
    float *y;
    const float *a, *bb;
    float s;
    int64_t n; /* row length for add_bias */
    bool avx2;
};

#if CPU_HAVE_X86
static CPU_AVX2 void add_avx2(float *y, const float *a, const float *bb, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(bb + i)));
    for (; i < n; i++) y[i] = a[i] + bb[i];
}

static CPU_AVX2 void scale_avx2(float *x, float s, int64_t n) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) x[i] *= s;
}
#endif

static void add_vec(float *y, const float *a, const float *bb, int64_t n, bool avx2) {
#if CPU_HAVE_X86
    if (avx2) {
        add_avx2(y, a, bb, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + bb[i];
}

static void add_range(void *vctx, int64_t lo, int64_t hi) {
    const struct ew_ctx *c = vctx;
    add_vec(c->y + lo, c->a + lo, c->bb + lo, hi - lo, c->avx2);
}

static void scale_range(void *vctx, int64_t lo, int64_t hi) {
    const struct ew_ctx *c = vctx;
#if CPU_HAVE_X86
    if (c->avx2) {
        scale_avx2(c->y + lo, c->s, hi - lo);
        return;
    }
#endif
    for (int64_t i = lo; i < hi; i++) c->y[i] *= c->s;
}

static void bias_rows(void *vctx, int64_t lo, int64_t hi) {
    const struct ew_ctx *c = vctx;
    for (int64_t r = lo; r < hi; r++) {
        float *x = c->y + r * c->n;
        add_vec(x, x, c->bb, c->n, c->avx2);
    }
}

enum { EW_GRAIN = 32768 }; /* elements per thread below which threads cost more than they give */

void cpu_add(struct kbackend *b, float *y, const float *a, const float *bb, int64_t n) {
    if (n <= 0) return;
    struct ew_ctx c = {.y = y, .a = a, .bb = bb, .avx2 = cpu_use_avx2(b)};
    cpu_parallel_for(b, n, EW_GRAIN, add_range, &c);
}

void cpu_scale(struct kbackend *b, float *x, float s, int64_t n) {
    if (n <= 0) return;
    struct ew_ctx c = {.y = x, .s = s, .avx2 = cpu_use_avx2(b)};
    cpu_parallel_for(b, n, EW_GRAIN, scale_range, &c);
}

void cpu_add_bias(struct kbackend *b, float *x, const float *bias, int64_t n_rows, int64_t n) {
    if (n_rows <= 0 || n <= 0) return;
    struct ew_ctx c = {.y = x, .bb = bias, .n = n, .avx2 = cpu_use_avx2(b)};
    cpu_parallel_for(b, n_rows, TP_MAX(1, EW_GRAIN / n), bias_rows, &c);
}
