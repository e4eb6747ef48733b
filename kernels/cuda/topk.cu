/* topk.cu - the CUDA backend's sampling reduction: per row of logits, the k largest values
 * (descending, ties to the lower index) with their indices, and lse = log(sum e^x), with
 * the CPU's rules: NaN ranks as -inf (and is reported as -inf), a NaN anywhere makes lse
 * NaN, +inf makes it +inf, an all -inf row gives -inf; k > n pads with (-1, -inf).
 *
 * One block per row, k <= CUDA_TOPK_MAX_K:
 *   1. lse in kernels/cpu/topk.c's order, bit for bit (below).
 *   2. keys: each float maps to an unsigned key in the same order (NaN -> key(-inf),
 *      -0 -> key(+0), since the CPU's comparisons treat -0 == +0).
 *   3. radix select, 4 passes of 8 bits (shared-memory histograms of the keys that match
 *      the digits chosen so far): the key K of the k-th largest value; c_gt = number of
 *      keys > K (< k), and k - c_gt keys == K are needed.
 *   4. collect every key > K (any order) and the first k - c_gt keys == K in index order
 *      (block-wide ballot prefix sums over index-ordered chunks).
 *   5. rank sort of the k candidates by (value desc, index asc); distinct indices make
 *      the ranks a permutation.
 * Results go to device scratch in the [n_rows][k] layout and then to the caller's host
 * arrays; the op returns when they are there. A larger k is served on the host from the
 * downloaded rows (rare: samplers ask for k <= a few hundred), its lse still by the kernel.
 *
 * lse. The CPU reads a row as units: its first min(k, n) values one at a time, then
 * blocks of 32, then the last values one at a time. A block of 32 finite values is one
 * step (m = max(m, block max), s *= act_exp_f64(m_old - m) if m grew, s += the block's
 * cpu_exp1(x - m) summed in 4 double lanes and cpu_hsum4d); any other block is taken one
 * value at a time, with s e + 1 fused. One value x: NaN and +inf set flags, -inf adds
 * nothing, x > m rescales (s = s e + 1, e = act_exp_f64((double)m - (double)x), m = x),
 * else s += (double)cpu_exp1(x - m). The result is (float)((double)m + act_log_f64(s)).
 * Here, per round of TK_LSE_UNITS units: each warp loads its units and finds each one's
 * maximum of the finite values and whether it is a finite block (1); one thread sets the
 * running maximum before each unit (2); the warps compute every unit's terms in parallel
 * (3): a block's lane sums (lanes l < 4 add e_l, e_l+4, ..., e_l+28 in order, as the CPU's
 * j-loop does) and rescale factor, or each value's e (the maximum before a value is the
 * unit's maximum before it and the finite values ahead of it, a warp prefix max); then one
 * thread applies the steps to s in the CPU's order (4). Every operation is the CPU's
 * (ieee.cuh: dev_exp1 = cpu_exp1, dev_exp_f64 / dev_log_f64 = act.h's bodies, _rn f64),
 * and maxima are exact, so s, m and lse are the CPU's bits. (A maximum of equal values
 * may take either zero's sign: -0 and +0 compare equal, and x - (+-0), e^(+-0) and
 * m + log s do not depend on it, so no step does.) The serial part is one or two double
 * operations per unit (n / 32 + the one-at-a-time values). */
#include "cuda_internal.cuh"
#include "ieee.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr int TK_THREADS = 512;
constexpr int TK_WARPS = TK_THREADS / 32;

__device__ __forceinline__ uint32_t tk_key(float x) {
    uint32_t u = __float_as_uint(x);
    if (ie_isnan(x)) u = 0xff800000u; /* -inf */
    if ((u << 1) == 0u) u = 0u;       /* -0 -> +0 (bit tests: no flush of subnormals) */
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int TK_LSE_UPW = 4;                         /* units per warp per round */
constexpr int TK_LSE_UNITS = TK_WARPS * TK_LSE_UPW; /* units per round */

enum { TK_OP_NONE = 0, TK_OP_ADD = 1, TK_OP_MAX = 2 };

struct tk_lse_shared {
    double val[TK_LSE_UNITS][32]; /* a value's term: its e, or the rescale factor of a new maximum */
    double bsum[TK_LSE_UNITS];    /* a finite block: cpu_hsum4d of its lanes */
    double bres[TK_LSE_UNITS];    /* a finite block: its rescale factor (bflag 2) */
    float umax[TK_LSE_UNITS];     /* the unit's maximum of its finite values (-inf: none) */
    float mpre[TK_LSE_UNITS];     /* the running maximum before the unit */
    unsigned char op[TK_LSE_UNITS][32];
    unsigned char bflag[TK_LSE_UNITS]; /* 1: a finite block; 2: one that rescales */
    unsigned char len[TK_LSE_UNITS];
};

/* Unit u of a row (see the top comment): its first index, length, and whether it lies in
 * the CPU's scan of 32-value blocks (its values one at a time are then fused). */
__device__ __forceinline__ void tk_unit(int64_t u, int64_t kh, int64_t hu, int64_t nb, int64_t n, int64_t *start,
                                        int *len, bool *scan) {
    if (u < hu) {
        *start = 32 * u;
        *len = (int)min((int64_t)32, kh - 32 * u);
        *scan = false;
    } else if (u < hu + nb) {
        *start = kh + 32 * (u - hu);
        *len = 32;
        *scan = true;
    } else {
        *start = kh + 32 * nb;
        *len = (int)(n - *start);
        *scan = false;
    }
}

/* warp max of v (exact; which zero a tie of zeros keeps does not matter, see the top) */
__device__ __forceinline__ float tk_warp_max(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v = ie_max1(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* lse of row x[0..n) as cpu_topk computes it with heap size kh = min(k, n). All threads
 * call it; the result is valid on thread 0. */
__device__ float tk_lse_row(tk_lse_shared &sh, const float *__restrict__ x, int64_t n, int64_t kh) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t hu = (kh + 31) / 32, nb = (n - kh) / 32;
    const int64_t units = hu + nb + ((n - kh) % 32 != 0 ? 1 : 0);
    float m = -INFINITY; /* thread 0's running state */
    double s = 0.0;
    int flags = 0; /* 1: NaN seen, 2: +inf seen */
    for (int64_t u0 = 0; u0 < units; u0 += TK_LSE_UNITS) {
        /* 1. load, flags, each unit's maximum and kind */
        float v[TK_LSE_UPW];
#pragma unroll
        for (int i = 0; i < TK_LSE_UPW; i++) {
            const int q = i * TK_WARPS + warp;
            const int64_t u = u0 + q;
            v[i] = -INFINITY;
            if (u >= units) continue; /* warp-uniform */
            int64_t start;
            int len;
            bool scan;
            tk_unit(u, kh, hu, nb, n, &start, &len, &scan);
            const bool present = lane < len;
            const float xv = present ? x[start + lane] : -INFINITY;
            v[i] = xv;
            if (present && ie_isnan(xv)) flags |= 1;
            else if (present && __float_as_uint(xv) == 0x7f800000u) flags |= 2;
            const bool fin = present && ie_finite(xv);
            const bool block = scan && __all_sync(0xffffffffu, fin);
            const float mx = tk_warp_max(fin ? xv : -INFINITY);
            if (lane == 0) {
                sh.umax[q] = mx;
                sh.bflag[q] = block ? 1 : 0;
                sh.len[q] = (unsigned char)len;
            }
        }
        __syncthreads();
        const int nq = (int)min((int64_t)TK_LSE_UNITS, units - u0);
        /* 2. the running maximum before each unit */
        if (tid == 0) {
            for (int q = 0; q < nq; q++) {
                sh.mpre[q] = m;
                if (ie_gt(sh.umax[q], m)) m = sh.umax[q];
            }
        }
        __syncthreads();
        /* 3. every unit's terms */
#pragma unroll
        for (int i = 0; i < TK_LSE_UPW; i++) {
            const int q = i * TK_WARPS + warp;
            if (q >= nq) continue; /* warp-uniform */
            const float mp = sh.mpre[q], xv = v[i];
            if (sh.bflag[q]) { /* tk_scan: one step for the block */
                const float bm = sh.umax[q];
                const bool grows = ie_gt(bm, mp);
                const float mb = grows ? bm : mp;
                const double e = ie_f2d(dev_exp1(ie_sub(xv, mb)));
                double acc = 0.0; /* lane l < 4: e_l, e_l+4, e_l+8, ..., e_l+28 in order */
#pragma unroll
                for (int r = 0; r < 8; r++) acc = __dadd_rn(acc, __shfl_sync(0xffffffffu, e, (lane & 3) + 4 * r));
                const double a1 = __shfl_sync(0xffffffffu, acc, 1), a2 = __shfl_sync(0xffffffffu, acc, 2);
                const double a3 = __shfl_sync(0xffffffffu, acc, 3);
                if (lane == 0) {
                    sh.bsum[q] = __dadd_rn(__dadd_rn(acc, a2), __dadd_rn(a1, a3)); /* cpu_hsum4d */
                    if (grows) {
                        sh.bres[q] = dev_exp_f64(__dsub_rn(ie_f2d(mp), ie_f2d(bm)));
                        sh.bflag[q] = 2;
                    }
                }
            } else { /* tk_one per value: the maximum before it is mp and the finite values ahead */
                const bool fin = ie_finite(xv);
                float pm = fin ? xv : -INFINITY; /* inclusive prefix max over lanes */
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const float w = __shfl_up_sync(0xffffffffu, pm, o);
                    if (lane >= o) pm = ie_max1(pm, w);
                }
                float before = __shfl_up_sync(0xffffffffu, pm, 1);
                before = lane == 0 ? mp : ie_max1(mp, before);
                unsigned char op = TK_OP_NONE;
                double term = 0.0;
                if (fin && lane < sh.len[q]) {
                    if (ie_gt(xv, before)) {
                        op = TK_OP_MAX;
                        term = dev_exp_f64(__dsub_rn(ie_f2d(before), ie_f2d(xv)));
                    } else {
                        op = TK_OP_ADD;
                        term = ie_f2d(dev_exp1(ie_sub(xv, before)));
                    }
                }
                sh.op[q][lane] = op;
                sh.val[q][lane] = term;
            }
        }
        __syncthreads();
        /* 4. the steps, in the CPU's order */
        if (tid == 0) {
            for (int q = 0; q < nq; q++) {
                const int64_t u = u0 + q;
                if (sh.bflag[q]) {
                    if (sh.bflag[q] == 2) s = __dmul_rn(s, sh.bres[q]);
                    s = __dadd_rn(s, sh.bsum[q]);
                    continue;
                }
                const bool fused = u >= hu && u < hu + nb; /* a non-finite block of the scan */
                const int len = sh.len[q];
                for (int j = 0; j < len; j++) {
                    const int op = sh.op[q][j];
                    if (op == TK_OP_ADD) s = __dadd_rn(s, sh.val[q][j]);
                    else if (op == TK_OP_MAX) s = fused ? __fma_rn(s, sh.val[q][j], 1.0) : __dadd_rn(__dmul_rn(s, sh.val[q][j]), 1.0);
                }
            }
        }
        __syncthreads(); /* the next round rewrites sh */
    }
    const int nan = __syncthreads_or(flags & 1), pinf = __syncthreads_or(flags & 2);
    if (nan) return NAN;
    if (pinf) return INFINITY;
    if (__float_as_uint(m) == 0xff800000u) return -INFINITY; /* no finite value */
    return ie_d2f(__dadd_rn(ie_f2d(m), dev_log_f64(s)));
}

/* k_lse: the k of the CPU's reading order for lse (the caller's k); k: how many to select
 * here (0 when the host selects). */
__global__ void __launch_bounds__(TK_THREADS)
topk_kernel(int32_t *__restrict__ out_idx, float *__restrict__ out_val, float *__restrict__ out_lse,
            const float *__restrict__ logits, int64_t n, int64_t k, int64_t k_lse) {
    __shared__ unsigned hist[256];
    __shared__ int32_t cidx[CUDA_TOPK_MAX_K];
    __shared__ float cval[CUDA_TOPK_MAX_K];
    __shared__ unsigned warp_cnt[TK_WARPS];
    __shared__ uint32_t prefix_s;
    __shared__ int64_t remaining_s, base_s;
    __shared__ int n_gt;
    __shared__ tk_lse_shared lse_sh;

    const int64_t r = blockIdx.x;
    const float *x = logits + r * n;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t kk = min(k, n);

    /* ---- lse ---- */
    const float lse = tk_lse_row(lse_sh, x, n, min(k_lse, n));
    if (tid == 0) out_lse[r] = lse;
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
                cval[slot] = ie_isnan(v) ? -INFINITY : v;
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
                cval[c_gt + at] = ie_isnan(v) ? -INFINITY : v;
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
        for (int64_t c = 0; c < kk; c++) rank += ie_gt(cval[c], v) || (ie_eq(cval[c], v) && cidx[c] < ix);
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

/* Indices and values of k > CUDA_TOPK_MAX_K, from the downloaded rows (lse: the kernel). */
void topk_host(cuda_backend *cb, int32_t *idx, float *val, const float *logits, int64_t n_rows, int64_t n, int64_t k) {
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
        for (int64_t i = 0; i < n; i++) {
            const float v = row[i];
            p[i].v = isnan(v) ? -INFINITY : (v == 0.0f ? 0.0f : v);
            p[i].i = (int32_t)i;
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

/* The kernel over n_rows rows, max_tokens rows at a time (the scratch's): the first k_sel
 * entries of each row to idx/val (none when 0) and lse in the order of a top-k_lse (when
 * lse is not NULL). Synchronous. */
void topk_run(cuda_backend *cb, int32_t *idx, float *val, float *lse, const float *logits, int64_t n_rows, int64_t n,
              int64_t k_sel, int64_t k_lse) {
    const int64_t chunk = TP_MAX(cb->opts.max_tokens, (int64_t)1);
    for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
        const int64_t rows = TP_MIN(chunk, n_rows - r0);
        topk_kernel<<<(unsigned)rows, TK_THREADS, 0, cb->stream>>>(cb->tk_idx, cb->tk_val, cb->tk_lse, logits + r0 * n,
                                                                    n, k_sel, k_lse);
        CUDA_LAUNCHED(cb);
        if (k_sel > 0) {
            CUDA_OP(cb, cudaMemcpyAsync(idx + r0 * k_sel, cb->tk_idx, (size_t)(rows * k_sel) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, cb->stream));
            CUDA_OP(cb, cudaMemcpyAsync(val + r0 * k_sel, cb->tk_val, (size_t)(rows * k_sel) * sizeof(float),
                                        cudaMemcpyDeviceToHost, cb->stream));
        }
        if (lse)
            CUDA_OP(cb, cudaMemcpyAsync(lse + r0, cb->tk_lse, (size_t)rows * sizeof(float), cudaMemcpyDeviceToHost,
                                        cb->stream));
        CUDA_OP(cb, cudaStreamSynchronize(cb->stream));
    }
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
        if (lse) topk_run(cb, NULL, NULL, lse, logits, n_rows, n, 0, k);
        topk_host(cb, idx, val, logits, n_rows, n, k);
        return;
    }
    topk_run(cb, idx, val, lse, logits, n_rows, n, k, k);
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
