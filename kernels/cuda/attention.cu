/* attention.cu - the CUDA backend's paged KV cache ops: storing a step's K/V rows in their
 * slots (F16 or F32) and grouped-query attention over the paged cache.
 *
 * Math, for query token t and head h (kv head g = h / (n_head / n_kv)), over positions p in
 * [lo, pos[t]], lo = max(0, pos[t] - window + 1) (0 when window <= 0), as the CPU:
 *   s_p = (q[t][h] . K[slot(p)][g]) * scale
 *   out[t][h] = sum_p e^(s_p - m) V[slot(p)][g] / sum_p e^(s_p - m)
 *   slot(p) = block_tables[seq[t] * max_blocks + p / block_size] * block_size + p % block_size
 * One block of ATT_WARPS warps per (token, head). Warp w takes positions lo + w, lo + w +
 * ATT_WARPS, ...: its lanes split the head's dims (q in registers), reduce the dot product
 * with shuffles and keep an online softmax (running max m, sum l, accumulator) in registers.
 * The warps' partial results are merged at the end through shared memory with the usual
 * e^(m_w - M) rescaling. e^x is computed in double and rounded (fast-math __expf loses
 * accuracy for large |x|); the result differs from the CPU's two-pass softmax by float
 * rounding in a different order (~1e-6 relative).
 * A token with a negative position gets zeros; positions whose block-table entry is outside
 * the cache are skipped (the CPU would read out of bounds there). */
#include "cuda_internal.cuh"

#include <math.h>

namespace {

constexpr int ATT_WARPS = 4;
constexpr int ATT_THREADS = 32 * ATT_WARPS;
constexpr int KVS_THREADS = 256;

template <bool F16> __device__ __forceinline__ float kv_at(const void *base, int64_t i) {
    if (F16) return __half2float(static_cast<const __half *>(base)[i]);
    return static_cast<const float *>(base)[i];
}

__device__ __forceinline__ float exp_acc(float v) { return (float)exp((double)v); }

/* Store K and V rows of n_tok tokens ([n_tok][row], row = n_kv * head_dim) in their slots. */
template <bool F16>
__global__ void __launch_bounds__(KVS_THREADS)
kv_store_kernel(void *kc, void *vc, const float *__restrict__ k, const float *__restrict__ v,
                const int64_t *__restrict__ slots, int64_t n_tok, int64_t row, int64_t n_slots) {
    const int64_t total = n_tok * row;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / row, c = i % row;
        const int64_t s = slots[t];
        if (s < 0 || s >= n_slots) continue;
        const int64_t dst = s * row + c;
        if (F16) {
            static_cast<__half *>(kc)[dst] = __float2half_rn(k[i]);
            static_cast<__half *>(vc)[dst] = __float2half_rn(v[i]);
        } else {
            static_cast<float *>(kc)[dst] = k[i];
            static_cast<float *>(vc)[dst] = v[i];
        }
    }
}

struct att_k {
    const int32_t *pos, *seq, *tables;
    int64_t max_blocks;
    const void *kc, *vc;
    int64_t n_head, group, n_kv, head_dim, block_size, n_blocks;
    float scale;
    int64_t window;
};

/* DPL dims per lane: head_dim <= 32 * DPL. */
template <int DPL, bool F16>
__global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(float *__restrict__ out, const float *__restrict__ q, att_k p) {
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][32 * DPL];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t item = blockIdx.x; /* t * n_head + h */
    const int64_t t = item / p.n_head, h = item % p.n_head, g = h / p.group;
    const int64_t hd = p.head_dim;

    float qr[DPL], acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        const int64_t d = lane + 32 * i;
        qr[i] = d < hd ? q[item * hd + d] : 0.0f;
        acc[i] = 0.0f;
    }
    const int64_t hi = p.pos[t];
    const int64_t lo = p.window > 0 ? max((int64_t)0, hi - p.window + 1) : 0;
    const int64_t sq = p.seq[t];
    const int32_t *table = p.tables + (sq < 0 ? 0 : sq) * p.max_blocks;
    float m = -INFINITY, l = 0.0f;
    if (sq >= 0) {
        for (int64_t pp = lo + warp; pp <= hi; pp += ATT_WARPS) { /* warp-uniform loop */
            const int64_t bi = pp / p.block_size;
            const int64_t blk = bi < p.max_blocks ? (int64_t)table[bi] : -1;
            if (blk < 0 || blk >= p.n_blocks) continue;
            const int64_t off = ((blk * p.block_size + pp % p.block_size) * p.n_kv + g) * hd;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int64_t d = lane + 32 * i;
                if (d < hd) s += qr[i] * kv_at<F16>(p.kc, off + d);
            }
#pragma unroll
            for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            s = __fmul_rn(s, p.scale);
            const float mn = fmaxf(m, s);
            const float c = exp_acc(m - mn), e = exp_acc(s - mn);
            l = l * c + e;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                const int64_t d = lane + 32 * i;
                if (d < hd) acc[i] = acc[i] * c + e * kv_at<F16>(p.vc, off + d);
            }
            m = mn;
        }
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) wacc[warp][lane + 32 * i] = acc[i];
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, wm[w]);
    float L = 0.0f, f[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) {
        f[w] = M == -INFINITY || wm[w] == -INFINITY ? 0.0f : exp_acc(wm[w] - M);
        L += wl[w] * f[w];
    }
    const float inv = L > 0.0f ? __fdiv_rn(1.0f, L) : 0.0f;
    for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) o += wacc[w][d] * f[w];
        out[item * hd + d] = o * inv;
    }
}

template <int DPL, bool F16> void att_launch(cuda_backend *cb, float *out, const float *q, const att_k &p, int64_t items) {
    attention_kernel<DPL, F16><<<(unsigned)items, ATT_THREADS, 0, cb->stream>>>(out, q, p);
}

template <bool F16> void att_dispatch(cuda_backend *cb, float *out, const float *q, const att_k &p, int64_t items) {
    if (p.head_dim <= 64) att_launch<2, F16>(cb, out, q, p, items);
    else if (p.head_dim <= 128) att_launch<4, F16>(cb, out, q, p, items);
    else if (p.head_dim <= 256) att_launch<8, F16>(cb, out, q, p, items);
    else att_launch<16, F16>(cb, out, q, p, items);
}

} // namespace

/* Tokens whose slot is negative (padding) or outside the cache are skipped. */
void cuda_kv_store(struct kbackend *b, struct kv_layer *kv, const float *k, const float *v,
                   const struct attn_batch *batch) {
    cuda_backend *cb = cuda_enter(b);
    const int64_t row = kv->n_kv * kv->head_dim;
    if (batch->n_tok <= 0 || row <= 0) return;
    CUDA_REQUIRE(cb, kv->type == DTYPE_F16 || kv->type == DTYPE_F32, "kv_store: cache type %s is not F16 or F32",
                 dtype_name(kv->type));
    const int64_t total = batch->n_tok * row, n_slots = kv->n_blocks * kv->block_size;
    if (kv->type == DTYPE_F16)
        kv_store_kernel<true><<<cuda_grid_1d(total, KVS_THREADS), KVS_THREADS, 0, cb->stream>>>(
            kv->k, kv->v, k, v, batch->slots, batch->n_tok, row, n_slots);
    else
        kv_store_kernel<false><<<cuda_grid_1d(total, KVS_THREADS), KVS_THREADS, 0, cb->stream>>>(
            kv->k, kv->v, k, v, batch->slots, batch->n_tok, row, n_slots);
    CUDA_LAUNCHED(cb);
}

/* n_head must be a multiple of kv->n_kv and head_dim at most CUDA_ATT_MAX_HEAD_DIM. */
void cuda_attention(struct kbackend *b, float *out, const float *q, const struct kv_layer *kv,
                    const struct attn_batch *batch, int64_t n_head, float scale, int64_t window) {
    cuda_backend *cb = cuda_enter(b);
    if (batch->n_tok <= 0 || n_head <= 0 || kv->head_dim <= 0) return;
    CUDA_REQUIRE(cb, kv->type == DTYPE_F16 || kv->type == DTYPE_F32, "attention: cache type %s is not F16 or F32",
                 dtype_name(kv->type));
    CUDA_REQUIRE(cb, kv->n_kv > 0 && n_head % kv->n_kv == 0,
                 "attention: %lld query heads are not a multiple of %lld KV heads", (long long)n_head,
                 (long long)kv->n_kv);
    CUDA_REQUIRE(cb, kv->head_dim <= CUDA_ATT_MAX_HEAD_DIM, "attention: head_dim %lld exceeds the kernel's %d",
                 (long long)kv->head_dim, CUDA_ATT_MAX_HEAD_DIM);
    CUDA_REQUIRE(cb, kv->block_size > 0, "attention: cache block size %lld", (long long)kv->block_size);
    const int64_t items = batch->n_tok * n_head;
    CUDA_REQUIRE(cb, items <= INT32_MAX, "attention: %lld (token, head) pairs exceed the grid", (long long)items);
    att_k p;
    p.pos = batch->pos;
    p.seq = batch->seq;
    p.tables = batch->block_tables;
    p.max_blocks = batch->max_blocks;
    p.kc = kv->k;
    p.vc = kv->v;
    p.n_head = n_head;
    p.group = n_head / kv->n_kv;
    p.n_kv = kv->n_kv;
    p.head_dim = kv->head_dim;
    p.block_size = kv->block_size;
    p.n_blocks = kv->n_blocks;
    p.scale = scale;
    p.window = window;
    if (kv->type == DTYPE_F16) att_dispatch<true>(cb, out, q, p, items);
    else att_dispatch<false>(cb, out, q, p, items);
    CUDA_LAUNCHED(cb);
}

int cuda_attention_init(struct cuda_backend *cb, tp_err *e) {
    const struct {
        const void *f;
        int threads;
    } k[] = {
        {(const void *)kv_store_kernel<true>, KVS_THREADS},       {(const void *)kv_store_kernel<false>, KVS_THREADS},
        {(const void *)attention_kernel<2, true>, ATT_THREADS},   {(const void *)attention_kernel<4, true>, ATT_THREADS},
        {(const void *)attention_kernel<8, true>, ATT_THREADS},   {(const void *)attention_kernel<16, true>, ATT_THREADS},
        {(const void *)attention_kernel<2, false>, ATT_THREADS},  {(const void *)attention_kernel<4, false>, ATT_THREADS},
        {(const void *)attention_kernel<8, false>, ATT_THREADS},  {(const void *)attention_kernel<16, false>, ATT_THREADS},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(k); i++) {
        int rc = cuda_kernel_check(cb, k[i].f, k[i].threads, 0, "attention", e);
        if (rc) return rc;
    }
    return 0;
}
