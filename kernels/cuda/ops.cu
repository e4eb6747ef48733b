/* ops.cu - the CUDA backend's row-wise and element-wise ops: RMS norm, rotary embedding,
 * gated activation, add, scale and bias. Each follows kernels/cpu/ops.c operation by
 * operation, in the same order. rmsnorm and gated_act use ieee.cuh's exact operations
 * (inline PTX without .ftz, f64 _rn intrinsics), so that --use_fast_math neither flushes,
 * contracts nor approximates anything, and give the CPU's bits by construction:
 *   rmsnorm   the CPU's sum of squares: x^2 in double (exact) in 8 lanes, lane l summing
 *             the elements 8i + l of the first n - n % 8 in order (one thread per lane),
 *             combined as (s0 + s4, s1 + s5, s2 + s6, s3 + s7) and cpu_hsum4d's tree, the
 *             last n % 8 squares added in order (one thread); then
 *             scale = 1 / sqrtf((float)(ss / n) + eps) and y = (x * scale) * (w + w_offset)
 *             (y = x * scale without w), each an IEEE operation. The lane sums are
 *             sequential (n / 8 dependent adds per row): the cost of the CPU's order.
 *   gated_act silu: g / (1 + cpu_exp1(-g)) * u with dev_exp1 (cpu_exp1's operations);
 *             gelu_tanh: 0 for g <= -10, g for g >= 10, else g rounded to f16 (IEEE
 *             nearest even, = cpu_f32_to_f16 on every non-NaN input) and looked up in
 *             act_gelu_table_shared() (kernels/act.c, the CPU's table, uploaded at
 *             creation), widened; then times u.
 *   rope      per token, theta = pos, then theta *= base^(-2/n_rot) after each pair (ggml's
 *             rope cache, sequential, in float - done by one thread per token, which keeps the
 *             exact float sequence); extrap = theta / ff[i]; interp = freq_scale * extrap;
 *             YaRN: th = interp (1 - mix) + extrap mix, mix = ramp(i) * ext_factor, magnitude
 *             mscale_ext; (a, b) -> (a c - b s, a s + b c), c = cos(th) m, s = sin(th) m.
 *             cos/sin are evaluated in double and rounded (fast-math sinf is not accurate for
 *             large angles): within 1 ulp of glibc's cosf/sinf (not bit-identical: glibc's
 *             cosf/sinf are not correctly rounded).
 *   add, scale, add_bias: one IEEE operation per element (ieee.cuh: subnormals kept), the
 *             CPU's bits. */
#include "cuda_internal.cuh"
#include "ieee.cuh"

#include "../act.h"

#include <math.h>

namespace {

constexpr int EW_THREADS = 256;
constexpr int NORM_THREADS = 256;
constexpr int ROPE_THREADS = 256;
constexpr int ROPE_MAX_PAIRS = 1024; /* head_dim up to 2048 */

/* ---- rmsnorm: one block per row ---- */

__global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(float *y, const float *x, const float *__restrict__ w, float off, int64_t n, float eps) {
    __shared__ double lane_s[8];
    __shared__ float scale_s;
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    const int64_t n8 = n - n % 8;
    if (threadIdx.x < 8) { /* lane l: the squares of x[8i + l], i < n / 8, in order */
        double a = 0.0;
#pragma unroll 4
        for (int64_t i = threadIdx.x; i < n8; i += 8) {
            const double v = ie_f2d(xr[i]);
            a = __fma_rn(v, v, a); /* v * v is exact in double: = a + v * v */
        }
        lane_s[threadIdx.x] = a;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const double *a = lane_s;
        const double h0 = __dadd_rn(a[0], a[4]), h1 = __dadd_rn(a[1], a[5]);
        const double h2 = __dadd_rn(a[2], a[6]), h3 = __dadd_rn(a[3], a[7]);
        double ss = __dadd_rn(__dadd_rn(h0, h2), __dadd_rn(h1, h3)); /* cpu_hsum4d */
        for (int64_t i = n8; i < n; i++) {
            const double v = ie_f2d(xr[i]);
            ss = __fma_rn(v, v, ss);
        }
        const float mean = ie_d2f(__ddiv_rn(ss, (double)n));
        scale_s = ie_div(1.0f, ie_sqrt(ie_add(mean, eps)));
    }
    __syncthreads();
    const float scale = scale_s;
    if (w) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = ie_mul(ie_mul(xr[i], scale), ie_add(w[i], off));
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = ie_mul(xr[i], scale);
    }
}

/* ---- rope: one block per token ---- */

struct rope_k {
    int64_t n_head, head_dim, half; /* half = n_rot / 2 pairs */
    int neox;
    float theta_scale, freq_scale, ext_factor, mscale, mscale_ext, corr0, corr1;
    const float *freq_factors; /* device, [half], or NULL */
};

__global__ void __launch_bounds__(ROPE_THREADS)
rope_kernel(float *x, const int32_t *__restrict__ pos, rope_k p) {
    __shared__ float th_s[ROPE_MAX_PAIRS];
    __shared__ float cs_s[ROPE_MAX_PAIRS], sn_s[ROPE_MAX_PAIRS];
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) {
        float theta = (float)pos[t];
        for (int64_t i = 0; i < p.half; i++) {
            th_s[i] = theta;
            theta = __fmul_rn(theta, p.theta_scale);
        }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < p.half; i += blockDim.x) {
        const float theta = th_s[i];
        const float extrap = p.freq_factors ? __fdiv_rn(theta, p.freq_factors[i]) : theta;
        const float interp = __fmul_rn(p.freq_scale, extrap);
        float th = interp, ms = p.mscale;
        if (p.ext_factor != 0.0f) {
            const float yv = __fdiv_rn(__fsub_rn((float)i, p.corr0), fmaxf(0.001f, __fsub_rn(p.corr1, p.corr0)));
            const float ramp = __fsub_rn(1.0f, fminf(1.0f, fmaxf(0.0f, yv)));
            const float mix = __fmul_rn(ramp, p.ext_factor);
            th = __fadd_rn(__fmul_rn(interp, __fsub_rn(1.0f, mix)), __fmul_rn(extrap, mix));
            ms = p.mscale_ext;
        }
        double sd, cd;
        sincos((double)th, &sd, &cd);
        cs_s[i] = __fmul_rn((float)cd, ms);
        sn_s[i] = __fmul_rn((float)sd, ms);
    }
    __syncthreads();
    const int64_t work = p.n_head * p.half;
    for (int64_t j = threadIdx.x; j < work; j += blockDim.x) {
        const int64_t h = j / p.half, i = j % p.half;
        float *xh = x + (t * p.n_head + h) * p.head_dim;
        float *a = p.neox ? xh + i : xh + 2 * i;
        float *b = p.neox ? xh + i + p.half : xh + 2 * i + 1;
        const float x0 = *a, x1 = *b, c = cs_s[i], s = sn_s[i];
        *a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        *b = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

/* ---- element-wise ---- */

/* gelu_ggml of kernels/cpu/ops.c: the clamps, then the f16 table */
__device__ __forceinline__ float gelu_tab(const uint16_t *__restrict__ tab, float g) {
    if (ie_le(g, ACT_GELU_LO)) return 0.0f;
    if (ie_ge(g, ACT_GELU_HI)) return g;
    return ie_h2f(__ldg(tab + ie_f2h(g)));
}

template <int ACT>
__global__ void __launch_bounds__(EW_THREADS)
gated_act_kernel(float *out, const float *gate, const float *up, const uint16_t *__restrict__ tab, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i], u = up[i];
        if (ACT == ACT_GELU_TANH) {
            out[i] = ie_mul(gelu_tab(tab, g), u);
        } else { /* silu1: g / (1 + cpu_exp1(-g)) * u */
            out[i] = ie_mul(ie_div(g, ie_add(1.0f, dev_exp1(ie_neg(g)))), u);
        }
    }
}

__global__ void __launch_bounds__(EW_THREADS) add_kernel(float *y, const float *a, const float *b, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = ie_add(a[i], b[i]);
}

__global__ void __launch_bounds__(EW_THREADS) scale_kernel(float *x, float s, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = ie_mul(x[i], s);
}

__global__ void __launch_bounds__(EW_THREADS)
add_bias_kernel(float *x, const float *__restrict__ bias, int64_t total, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = ie_add(x[i], bias[i % n]);
}

/* ggml_rope_yarn_corr_dim, in float on the host exactly as the CPU backend computes it. */
float rope_corr_dim(int64_t n_dims, int64_t n_ctx_orig, float n_rot, float base) {
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2 * (float)M_PI)) / (2 * logf(base));
}

} // namespace

/* y may alias x (in place). w may be NULL (no weight, no offset). */
void cuda_rmsnorm(struct kbackend *b, float *y, const float *x, const float *w, float w_offset, int64_t n_rows,
                  int64_t n, float eps) {
    cuda_backend *cb = cuda_enter(b);
    if (n_rows <= 0 || n <= 0) return;
    CUDA_REQUIRE(cb, n_rows <= INT32_MAX, "rmsnorm: %lld rows exceed the grid", (long long)n_rows);
    rmsnorm_kernel<<<(unsigned)n_rows, NORM_THREADS, 0, cb->stream>>>(y, x, w, w_offset, n, eps);
    CUDA_LAUNCHED(cb);
}

/* As cpu_rope: n_rot clamped to head_dim and made even; zero freq_scale / attn_factor mean 1.
 * pos and freq_factors are device memory. */
void cuda_rope(struct kbackend *b, float *x, const int32_t *pos, int64_t n_tok, int64_t n_head, int64_t head_dim,
               const struct rope_params *p) {
    cuda_backend *cb = cuda_enter(b);
    const int64_t n_rot = TP_MIN(p->n_rot, head_dim) / 2 * 2;
    if (n_tok <= 0 || n_head <= 0 || n_rot <= 0) return;
    CUDA_REQUIRE(cb, n_rot / 2 <= ROPE_MAX_PAIRS, "rope: %lld rotated dims exceed the kernel's %d",
                 (long long)n_rot, 2 * ROPE_MAX_PAIRS);
    CUDA_REQUIRE(cb, n_tok <= INT32_MAX, "rope: %lld tokens exceed the grid", (long long)n_tok);
    rope_k k;
    k.n_head = n_head;
    k.head_dim = head_dim;
    k.half = n_rot / 2;
    k.neox = p->mode == ROPE_NEOX;
    k.theta_scale = powf(p->base, -2.0f / (float)n_rot);
    k.freq_scale = p->freq_scale != 0.0f ? p->freq_scale : 1.0f;
    k.ext_factor = p->ext_factor;
    k.mscale = p->attn_factor != 0.0f ? p->attn_factor : 1.0f;
    k.mscale_ext = k.mscale * (1.0f + 0.1f * logf(1.0f / k.freq_scale));
    k.corr0 = k.corr1 = 0.0f;
    if (k.ext_factor != 0.0f) {
        const float start = floorf(rope_corr_dim(n_rot, p->n_ctx_orig, p->beta_fast, p->base));
        const float end = ceilf(rope_corr_dim(n_rot, p->n_ctx_orig, p->beta_slow, p->base));
        k.corr0 = TP_MAX(0.0f, start);
        k.corr1 = TP_MIN((float)(n_rot - 1), end);
    }
    k.freq_factors = p->freq_factors;
    rope_kernel<<<(unsigned)n_tok, ROPE_THREADS, 0, cb->stream>>>(x, pos, k);
    CUDA_LAUNCHED(cb);
}

/* out may alias gate or up. */
void cuda_gated_act(struct kbackend *b, float *out, const float *gate, const float *up, int64_t n, enum act_kind act) {
    cuda_backend *cb = cuda_enter(b);
    if (n <= 0) return;
    CUDA_REQUIRE(cb, act == ACT_SILU || act == ACT_GELU_TANH, "gated_act: unknown activation %d", (int)act);
    if (act == ACT_GELU_TANH)
        gated_act_kernel<ACT_GELU_TANH><<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, cb->stream>>>(out, gate, up,
                                                                                                 cb->gelu_tab, n);
    else
        gated_act_kernel<ACT_SILU><<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, cb->stream>>>(out, gate, up,
                                                                                            cb->gelu_tab, n);
    CUDA_LAUNCHED(cb);
}

void cuda_add(struct kbackend *b, float *y, const float *a, const float *bb, int64_t n) {
    cuda_backend *cb = cuda_enter(b);
    if (n <= 0) return;
    add_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, cb->stream>>>(y, a, bb, n);
    CUDA_LAUNCHED(cb);
}

void cuda_scale(struct kbackend *b, float *x, float s, int64_t n) {
    cuda_backend *cb = cuda_enter(b);
    if (n <= 0) return;
    scale_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, cb->stream>>>(x, s, n);
    CUDA_LAUNCHED(cb);
}

void cuda_add_bias(struct kbackend *b, float *x, const float *bias, int64_t n_rows, int64_t n) {
    cuda_backend *cb = cuda_enter(b);
    if (n_rows <= 0 || n <= 0) return;
    add_bias_kernel<<<cuda_grid_1d(n_rows * n, EW_THREADS), EW_THREADS, 0, cb->stream>>>(x, bias, n_rows * n, n);
    CUDA_LAUNCHED(cb);
}

/* Uploads GELU's table (the CPU backend's, act_gelu_table_shared) and checks the kernels. */
int cuda_ops_init(struct cuda_backend *cb, tp_err *e) {
    const size_t tab_bytes = ACT_GELU_TABLE_LEN * sizeof(uint16_t);
    cb->gelu_tab = static_cast<uint16_t *>(cuda_scratch_alloc(cb, tab_bytes));
    if (!cb->gelu_tab)
        return tp_errf(e, TP_ENOMEM, "cuda backend: out of device memory for the GELU table (%zu bytes)", tab_bytes);
    CUDA_TRY(e, cudaMemcpy(cb->gelu_tab, act_gelu_table_shared(), tab_bytes, cudaMemcpyHostToDevice));
    const struct {
        const void *f;
        int threads;
        const char *name;
    } k[] = {
        {(const void *)rmsnorm_kernel, NORM_THREADS, "rmsnorm"},
        {(const void *)rope_kernel, ROPE_THREADS, "rope"},
        {(const void *)gated_act_kernel<ACT_SILU>, EW_THREADS, "gated_act_silu"},
        {(const void *)gated_act_kernel<ACT_GELU_TANH>, EW_THREADS, "gated_act_gelu"},
        {(const void *)add_kernel, EW_THREADS, "add"},
        {(const void *)scale_kernel, EW_THREADS, "scale"},
        {(const void *)add_bias_kernel, EW_THREADS, "add_bias"},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(k); i++) {
        int rc = cuda_kernel_check(cb, k[i].f, k[i].threads, 0, k[i].name, e);
        if (rc) return rc;
    }
    return 0;
}
