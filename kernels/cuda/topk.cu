/* topk.cu - the CUDA backend's sampling reduction: per row of logits, the k largest values
 * (descending, ties to the lower index) with their indices, and lse = log(sum e^x), with
 * the CPU's rules: NaN ranks as -inf (and is reported as -inf), a NaN anywhere makes lse
 * NaN, +inf makes it +inf, an all -inf row gives -inf; k > n pads with (-1, -inf).
 *
 * One block per row, k <= CUDA_TOPK_MAX_K:
 *   1. keys: each float maps to an unsigned key in the same order (NaN -> key(-inf),
 *      -0 -> key(+0), since the CPU's comparisons treat -0 == +0).
 *   2. lse: block max M of the finite values, then sum e^(x - M) in double.
 *   3. radix select, 4 passes of 8 bits (shared-memory histograms of the keys that match
 *      the digits chosen so far): the key K of the k-th largest value; c_gt = number of
 *      keys > K (< k), and k - c_gt keys == K are needed.
 *   4. collect every key > K (any order) and the first k - c_gt keys == K in index order
 *      (block-wide ballot prefix sums over index-ordered chunks).
 *   5. rank sort of the k candidates by (value desc, index asc); distinct indices make
 *      the ranks a permutation.
 * Results go to device scratch in the [n_rows][k] layout and then to the caller's host
 * arrays; the op returns when they are there. A larger k is served on the host from the
 * downloaded rows (rare: samplers ask for k <= a few hundred). */
#include "cuda_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int TK_THREADS = 512;
constexpr int TK_WARPS = TK_THREADS / 32;

__device__ __forceinline__ uint32_t tk_key(float x) {
    if (isnan(x)) x = -INFINITY;
    if (x == 0.0f) x = 0.0f; /* -0 -> +0 */
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(TK_THREADS)
topk_kernel(int32_t *__restrict__ out_idx, float *__restrict__ out_val, float *__restrict__ out_lse,
            const float *__restrict__ logits, int64_t n, int64_t k) {
    __shared__ unsigned hist[256];
    __shared__ int32_t cidx[CUDA_TOPK_MAX_K];
    __shared__ float cval[CUDA_TOPK_MAX_K];
    __shared__ float red_f[TK_WARPS];
    __shared__ double red_d[TK_WARPS];
    __shared__ int red_i[TK_WARPS];
    __shared__ unsigned warp_cnt[TK_WARPS];
    __shared__ uint32_t prefix_s;
    __shared__ int64_t remaining_s, base_s;
    __shared__ int n_gt;
    __shared__ float max_s;
    __shared__ int flags_s;

    const int64_t r = blockIdx.x;
    const float *x = logits + r * n;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t kk = min(k, n);

    /* ---- lse ---- */
    float mx = -INFINITY;
    int flags = 0; /* 1: NaN seen, 2: +inf seen */
    for (int64_t i = tid; i < n; i += TK_THREADS) {
        const float v = x[i];
        if (isnan(v)) flags |= 1;
        else if (isinf(v)) flags |= v > 0.0f ? 2 : 0;
        else mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        flags |= __shfl_xor_sync(0xffffffffu, flags, o);
    }
    if (lane == 0) {
        red_f[warp] = mx;
        red_i[warp] = flags;
    }
    __syncthreads();
    if (tid == 0) {
        float m = -INFINITY;
        int f = 0;
        for (int w = 0; w < TK_WARPS; w++) {
            m = fmaxf(m, red_f[w]);
            f |= red_i[w];
        }
        max_s = m;
        flags_s = f;
    }
    __syncthreads();
    const float M = max_s;
    double s = 0.0;
    if (M != -INFINITY) {
        for (int64_t i = tid; i < n; i += TK_THREADS) {
            const float v = x[i];
            if (isfinite(v)) s += exp((double)v - (double)M);
        }
    }
#pragma unroll
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red_d[warp] = s;
    __syncthreads();
    if (tid == 0) {
        double t = 0.0;
        for (int w = 0; w < TK_WARPS; w++) t += red_d[w];
        float lse;
        if (flags_s & 1) lse = NAN;
        else if (flags_s & 2) lse = INFINITY;
        else if (M == -INFINITY) lse = -INFINITY;
        else lse = (float)((double)M + log(t));
        out_lse[r] = lse;
    }
    if (kk <= 0) {
        for (int64_t j = tid; j < k; j += TK_THREADS) {
            out_idx[r * k + j] = -1;
            out_val[r * k + j] = -INFINITY;
        }
        return;
    }

    /* ---- radix select of the kk-th largest key ---- */
    if (tid == 0) {
        prefix_s = 0;
        remaining_s = kk;
    }
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int i = tid; i < 256; i += TK_THREADS) hist[i] = 0;
        __syncthreads();
        const uint32_t prefix = prefix_s;
        for (int64_t i = tid; i < n; i += TK_THREADS) {
            const uint32_t key = tk_key(x[i]);
            if (pass == 0 || (key >> (shift + 8)) == (prefix >> (shift + 8))) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            int64_t need = remaining_s, above = 0;
            int dg = 255;
            for (; dg > 0; dg--) {
                if (above + (int64_t)hist[dg] >= need) break;
                above += hist[dg];
            }
            remaining_s = need - above;
            prefix_s = prefix | ((uint32_t)dg << shift);
        }
        __syncthreads();
    }
    const uint32_t K = prefix_s;
    const int64_t need_eq = remaining_s, c_gt = kk - need_eq;

    /* ---- collect: keys > K anywhere, then the first need_eq keys == K ---- */
    if (tid == 0) {
        n_gt = 0;
        base_s = 0;
    }
    __syncthreads();
    for (int64_t i = tid; i < n; i += TK_THREADS) {
        const float v = x[i];
        if (tk_key(v) > K) {
            const int slot = atomicAdd(&n_gt, 1);
            if (slot < c_gt) {
                cidx[slot] = (int32_t)i;
                cval[slot] = isnan(v) ? -INFINITY : v;
            }
        }
    }
    for (int64_t c0 = 0; c0 < n; c0 += TK_THREADS) {
        __syncthreads();
        const int64_t base = base_s;
        if (base >= need_eq) break; /* block-uniform: base_s was written before the barrier */
        const int64_t i = c0 + tid;
        const float v = i < n ? x[i] : 0.0f;
        const bool pred = i < n && tk_key(v) == K;
        const unsigned ballot = __ballot_sync(0xffffffffu, pred);
        if (lane == 0) warp_cnt[warp] = __popc(ballot);
        __syncthreads();
        unsigned before = 0, total = 0;
        for (int w = 0; w < TK_WARPS; w++) {
            if (w < warp) before += warp_cnt[w];
            total += warp_cnt[w];
        }
        if (pred) {
            const int64_t at = base + before + __popc(ballot & ((1u << lane) - 1u));
            if (at < need_eq) {
                cidx[c_gt + at] = (int32_t)i;
                cval[c_gt + at] = isnan(v) ? -INFINITY : v;
            }
        }
        __syncthreads();
        if (tid == 0) base_s = base + total;
    }
    __syncthreads();

    /* ---- rank sort and output ---- */
    for (int64_t j = tid; j < kk; j += TK_THREADS) {
        const float v = cval[j];
        const int32_t ix = cidx[j];
        int64_t rank = 0;
        for (int64_t c = 0; c < kk; c++) rank += (cval[c] > v) || (cval[c] == v && cidx[c] < ix);
        out_idx[r * k + rank] = ix;
        out_val[r * k + rank] = v;
    }
    for (int64_t j = kk + tid; j < k; j += TK_THREADS) {
        out_idx[r * k + j] = -1;
        out_val[r * k + j] = -INFINITY;
    }
}

/* ---- host fallback for k > CUDA_TOPK_MAX_K ---- */

struct tk_pair {
    float v;
    int32_t i;
};

int tk_cmp(const void *pa, const void *pb) {
    const tk_pair *a = static_cast<const tk_pair *>(pa), *b = static_cast<const tk_pair *>(pb);
    if (a->v != b->v) return a->v > b->v ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

void topk_host(cuda_backend *cb, int32_t *idx, float *val, float *lse, const float *logits, int64_t n_rows,
               int64_t n, int64_t k) {
    float *row = static_cast<float *>(malloc((size_t)TP_MAX(n, (int64_t)1) * sizeof(float)));
    tk_pair *p = static_cast<tk_pair *>(malloc((size_t)TP_MAX(n, (int64_t)1) * sizeof(tk_pair)));
    if (!row || !p) {
        free(row);
        free(p);
        cuda_op_failf(cb, TP_ENOMEM, __FILE__, __LINE__, "topk: out of host memory for a row of %lld logits",
                      (long long)n);
        return;
    }
    for (int64_t r = 0; r < n_rows; r++) {
        if (cudaMemcpyAsync(row, logits + r * n, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost, cb->stream) !=
                cudaSuccess ||
            cudaStreamSynchronize(cb->stream) != cudaSuccess) {
            cuda_op_failf(cb, TP_EIO, __FILE__, __LINE__, "topk: download of logits row %lld failed", (long long)r);
            break;
        }
        float m = -INFINITY;
        bool nan = false, pinf = false;
        for (int64_t i = 0; i < n; i++) {
            const float v = row[i];
            if (isnan(v)) nan = true;
            else if (isinf(v)) pinf |= v > 0;
            else m = TP_MAX(m, v);
            p[i].v = isnan(v) ? -INFINITY : (v == 0.0f ? 0.0f : v);
            p[i].i = (int32_t)i;
        }
        if (lse) {
            double s = 0.0;
            if (m != -INFINITY)
                for (int64_t i = 0; i < n; i++)
                    if (isfinite(row[i])) s += exp((double)row[i] - (double)m);
            lse[r] = nan ? NAN : pinf ? INFINITY : m == -INFINITY ? -INFINITY : (float)((double)m + log(s));
        }
        qsort(p, (size_t)n, sizeof *p, tk_cmp);
        for (int64_t j = 0; j < k; j++) {
            idx[r * k + j] = j < n ? p[j].i : -1;
            val[r * k + j] = j < n ? (isnan(row[p[j].i]) ? -INFINITY : row[p[j].i]) : -INFINITY;
        }
    }
    free(row);
    free(p);
}

} // namespace

/* idx/val: [n_rows][k] host arrays, lse: [n_rows] host array or NULL; logits device memory.
 * Synchronous: the results are in place on return. */
void cuda_topk(struct kbackend *b, int32_t *idx, float *val, float *lse, const float *logits, int64_t n_rows,
               int64_t n, int64_t k) {
    cuda_backend *cb = cuda_enter(b);
    if (n_rows <= 0) return;
    if (k < 0) k = 0;
    if (n < 0) n = 0;
    if (k > CUDA_TOPK_MAX_K) {
        topk_host(cb, idx, val, lse, logits, n_rows, n, k);
        return;
    }
    const int64_t chunk = TP_MAX(cb->opts.max_tokens, (int64_t)1);
    for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
        const int64_t rows = TP_MIN(chunk, n_rows - r0);
        topk_kernel<<<(unsigned)rows, TK_THREADS, 0, cb->stream>>>(cb->tk_idx, cb->tk_val, cb->tk_lse, logits + r0 * n, n, k);
        CUDA_LAUNCHED(cb);
        if (k > 0) {
            CUDA_OP(cb, cudaMemcpyAsync(idx + r0 * k, cb->tk_idx, (size_t)(rows * k) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, cb->stream));
            CUDA_OP(cb, cudaMemcpyAsync(val + r0 * k, cb->tk_val, (size_t)(rows * k) * sizeof(float),
                                        cudaMemcpyDeviceToHost, cb->stream));
        }
        if (lse)
            CUDA_OP(cb, cudaMemcpyAsync(lse + r0, cb->tk_lse, (size_t)rows * sizeof(float), cudaMemcpyDeviceToHost,
                                        cb->stream));
        CUDA_OP(cb, cudaStreamSynchronize(cb->stream));
    }
}

int cuda_topk_init(struct cuda_backend *cb, tp_err *e) {
    const int64_t rows = TP_MAX(cb->opts.max_tokens, (int64_t)1);
    const size_t entries = (size_t)rows * CUDA_TOPK_MAX_K;
    cb->tk_idx = static_cast<int32_t *>(cuda_scratch_alloc(cb, entries * sizeof(int32_t)));
    cb->tk_val = static_cast<float *>(cuda_scratch_alloc(cb, entries * sizeof(float)));
    cb->tk_lse = static_cast<float *>(cuda_scratch_alloc(cb, (size_t)rows * sizeof(float)));
    if (!cb->tk_idx || !cb->tk_val || !cb->tk_lse)
        return tp_errf(e, TP_ENOMEM, "cuda backend: out of device memory for top-k scratch of %lld rows; lower the "
                       "batch size", (long long)rows);
    return cuda_kernel_check(cb, (const void *)topk_kernel, TK_THREADS, 0, "topk", e);
}
