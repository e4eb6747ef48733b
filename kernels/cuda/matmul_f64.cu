/* matmul_f64.cu - the row-parallel matmul whose partial sums add up across tensor-parallel
 * ranks exactly (kernels.h's matmul_f64), and the double reduction that follows it.
 *
 * Math (as kernels/cpu/matmul_f64.c):
 *   y[t][o] = sum_g (double) dot_g(t, o),  dot_g = sum over granule g's columns of W x,
 *   granules of `granule` values from the start of the (sliced) row, the last one shorter;
 *   reduce: y[i] = (float) sum_p parts[p][i], in order p = 0, 1, ...
 * Each granule's dot product is computed the way the decode matmul computes a row (same
 * activation quantization, same integer unit sums, quant_blocks.cuh) and in an order that
 * depends only on the granule's own contents: unit j of the granule (32 values) goes to
 * lane j % 32, lanes accumulate in float and the warp sums by a fixed butterfly. So a
 * granule gives the same float on every rank that holds it, whatever the TP size, and
 * the double sums over granules (and then over ranks) differ only by double rounding.
 *
 * One warp per output row, up to 8 tokens per warp (blockIdx.y takes the next 8), weights
 * read straight from global memory (no 16-byte staging: this path favours determinism;
 * prompts re-read the weights once per 8 tokens from L2). */
#include "cuda_internal.cuh"
#include "quant_blocks.cuh"

namespace {

constexpr int F64_WARPS = 4;
constexpr int F64_THREADS = 32 * F64_WARPS;
constexpr int F64_NT = 8; /* tokens per warp */
constexpr int RED_THREADS = 256;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int T>
__global__ void __launch_bounds__(F64_THREADS)
f64_quant_kernel(double *__restrict__ y, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_out,
                 int64_t n_in, int64_t granule, act_q8 act, int64_t n_tok) {
    using Q = qtraits<T>;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * F64_WARPS + warp;
    if (row >= n_out) return;
    const int64_t t0 = (int64_t)blockIdx.y * F64_NT;
    const int nt = (int)min((int64_t)F64_NT, n_tok - t0);
    const uint8_t *rp = w + row * (int64_t)row_stride;
    double accd[F64_NT];
#pragma unroll
    for (int t = 0; t < F64_NT; t++) accd[t] = 0.0;
    for (int64_t g0 = 0; g0 < n_in; g0 += granule) {
        const int64_t u0 = g0 / 32, units = min(granule, n_in - g0) / 32;
        float acc[F64_NT];
#pragma unroll
        for (int t = 0; t < F64_NT; t++) acc[t] = 0.0f;
        for (int64_t j = lane; j < units; j += 32) {
            const int64_t gu = u0 + j;
            const uint8_t *blk = rp + (gu / Q::UPB) * Q::TS;
            const int sub = (int)(gu % Q::UPB);
#pragma unroll
            for (int t = 0; t < F64_NT; t++) {
                if (t < nt) {
                    aunit a;
                    load_aunit<Q::AF>(act, t0 + t, gu, &a);
                    acc[t] += unit_dot<T>(blk, sub, a);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < F64_NT; t++) accd[t] += (double)warp_sum(acc[t]);
    }
    if (lane == 0)
        for (int t = 0; t < nt; t++) y[(t0 + t) * n_out + row] = accd[t];
}

template <act_fmt AF> __device__ __forceinline__ float elem_of(const void *p, int64_t i) {
    if (AF == AF_F32) return static_cast<const float *>(p)[i];
    const uint16_t h = static_cast<const uint16_t *>(p)[i];
    if (AF == AF_F16) return __half2float(__ushort_as_half(h));
    return __uint_as_float((uint32_t)h << 16);
}

/* Float weights: xa holds the activations in the weight's format ([n_tok][n_in]). */
template <act_fmt AF>
__global__ void __launch_bounds__(F64_THREADS)
f64_float_kernel(double *__restrict__ y, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_out,
                 int64_t n_in, int64_t granule, const void *__restrict__ xa, int64_t n_tok) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * F64_WARPS + warp;
    if (row >= n_out) return;
    const int64_t t0 = (int64_t)blockIdx.y * F64_NT;
    const int nt = (int)min((int64_t)F64_NT, n_tok - t0);
    const uint8_t *rp = w + row * (int64_t)row_stride;
    double accd[F64_NT];
#pragma unroll
    for (int t = 0; t < F64_NT; t++) accd[t] = 0.0;
    for (int64_t g0 = 0; g0 < n_in; g0 += granule) {
        const int64_t g1 = min(g0 + granule, n_in);
        float acc[F64_NT];
#pragma unroll
        for (int t = 0; t < F64_NT; t++) acc[t] = 0.0f;
        for (int64_t i = g0 + lane; i < g1; i += 32) {
            const float wf = elem_of<AF>(rp, i);
#pragma unroll
            for (int t = 0; t < F64_NT; t++)
                if (t < nt) acc[t] += wf * elem_of<AF>(xa, (t0 + t) * n_in + i);
        }
#pragma unroll
        for (int t = 0; t < F64_NT; t++) accd[t] += (double)warp_sum(acc[t]);
    }
    if (lane == 0)
        for (int t = 0; t < nt; t++) y[(t0 + t) * n_out + row] = accd[t];
}

__global__ void __launch_bounds__(RED_THREADS)
reduce_f64_kernel(float *__restrict__ y, const double *__restrict__ parts, int64_t n_parts, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int64_t p = 0; p < n_parts; p++) s += parts[p * n + i];
        y[i] = __double2float_rn(s);
    }
}

struct f64_launch {
    cuda_backend *cb;
    double *y;
    const kmat *w;
    int64_t granule, n_tok;
    template <int T> void run() {
        const act_q8 act{cb->act_q, cb->act_d, cb->act_s, cb->act_bs, w->n_in};
        const dim3 grid((unsigned)((w->n_out + F64_WARPS - 1) / F64_WARPS), (unsigned)((n_tok + F64_NT - 1) / F64_NT));
        f64_quant_kernel<T><<<grid, F64_THREADS, 0, cb->stream>>>(y, static_cast<const uint8_t *>(w->data),
                                                                 w->row_stride, w->n_out, w->n_in, granule, act, n_tok);
    }
};

struct f64_check {
    cuda_backend *cb;
    tp_err *e;
    int rc;
    template <int T> void run() {
        if (!rc) rc = cuda_kernel_check(cb, (const void *)f64_quant_kernel<T>, F64_THREADS, 0, "matmul_f64", e);
    }
};

} // namespace

/* y: [n_tok][n_out] doubles, x: [n_tok][n_in], W: device memory, with matmul's limits.
 * A granule that is not a positive multiple of the type's block is taken as one block
 * (as the CPU does). An empty input gives zeros. */
void cuda_matmul_f64(struct kbackend *b, double *y, const struct kmat *w, const float *x, int64_t n_tok,
                     int64_t granule) {
    cuda_backend *cb = cuda_enter(b);
    if (n_tok <= 0 || w->n_out <= 0) return;
    if (w->n_in <= 0) {
        CUDA_OP(cb, cudaMemsetAsync(y, 0, (size_t)n_tok * (size_t)w->n_out * sizeof(double), cb->stream));
        return;
    }
    if (!cuda_matmul_args_ok(cb, w, x, n_tok, "matmul_f64")) return;
    const int64_t blk = dtype_block(w->type);
    if (granule <= 0 || granule % blk) granule = blk;
    CUDA_REQUIRE(cb, (w->n_out + F64_WARPS - 1) / F64_WARPS <= INT32_MAX && (n_tok + F64_NT - 1) / F64_NT <= 65535,
                 "matmul_f64: %lld rows x %lld tokens exceed the grid", (long long)w->n_out, (long long)n_tok);
    const act_fmt af = act_fmt_of(w->type);
    cuda_convert_activations(cb, af, x, n_tok, w->n_in);
    if (cb->err.code) return;
    const dim3 grid((unsigned)((w->n_out + F64_WARPS - 1) / F64_WARPS), (unsigned)((n_tok + F64_NT - 1) / F64_NT));
    const uint8_t *wd = static_cast<const uint8_t *>(w->data);
    switch (af) {
    case AF_F32:
        f64_float_kernel<AF_F32><<<grid, F64_THREADS, 0, cb->stream>>>(y, wd, w->row_stride, w->n_out, w->n_in,
                                                                        granule, x, n_tok);
        break;
    case AF_F16:
        f64_float_kernel<AF_F16><<<grid, F64_THREADS, 0, cb->stream>>>(y, wd, w->row_stride, w->n_out, w->n_in,
                                                                        granule, cb->act_h, n_tok);
        break;
    case AF_BF16:
        f64_float_kernel<AF_BF16><<<grid, F64_THREADS, 0, cb->stream>>>(y, wd, w->row_stride, w->n_out, w->n_in,
                                                                         granule, cb->act_h, n_tok);
        break;
    default: {
        f64_launch l{cb, y, w, granule, n_tok};
        qtype_dispatch(w->type, l);
    }
    }
    CUDA_LAUNCHED(cb);
}

void cuda_reduce_f64(struct kbackend *b, float *y, const double *parts, int64_t n_parts, int64_t n) {
    cuda_backend *cb = cuda_enter(b);
    if (n <= 0) return;
    reduce_f64_kernel<<<cuda_grid_1d(n, RED_THREADS), RED_THREADS, 0, cb->stream>>>(y, parts, TP_MAX(n_parts, (int64_t)0), n);
    CUDA_LAUNCHED(cb);
}

int cuda_matmul_f64_init(struct cuda_backend *cb, tp_err *e) {
    f64_check c{cb, e, 0};
    for (int t = 0; t < DTYPE_COUNT && !c.rc; t++) qtype_dispatch((enum dtype)t, c);
    if (c.rc) return c.rc;
    int rc;
    if ((rc = cuda_kernel_check(cb, (const void *)f64_float_kernel<AF_F32>, F64_THREADS, 0, "matmul_f64", e)) ||
        (rc = cuda_kernel_check(cb, (const void *)f64_float_kernel<AF_F16>, F64_THREADS, 0, "matmul_f64", e)) ||
        (rc = cuda_kernel_check(cb, (const void *)f64_float_kernel<AF_BF16>, F64_THREADS, 0, "matmul_f64", e)))
        return rc;
    return cuda_kernel_check(cb, (const void *)reduce_f64_kernel, RED_THREADS, 0, "reduce_f64", e);
}
