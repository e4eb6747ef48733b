/* attention.cu - the CUDA backend's paged KV cache ops: storing a step's K/V rows in their
 * slots (F16 or F32) and grouped-query attention over the paged cache.
 *
 * Math, for query token t and head h (kv head g = h / (n_head / n_kv)), over positions p in
 * [lo, pos[t]], lo = max(0, pos[t] - window + 1) (0 when window <= 0), as the CPU:
 *   s_p = (q[t][h] . K[slot(p)][g]) * scale
 *   out[t][h] = sum_p e^(s_p - m) V[slot(p)][g] / sum_p e^(s_p - m)
 *   slot(p) = block_tables[seq[t] * max_blocks + p / block_size] * block_size + p % block_size
 *
 * The kernel follows kernels/cpu/attention.c step by step (its top comment has the order),
 * with ieee.cuh's exact operations, so the output has the CPU's bits by construction:
 *   - the chunk of positions is the CPU's: opts.max_ctx (CUDA_ATT_DEFAULT_CTX when 0);
 *   - f16 cache: q rounded to f16; if the span fits one chunk, the two-pass softmax with
 *     probabilities normalised and rounded to f16 (positions whose weight is 0 skipped);
 *     otherwise, and for an f32 cache, the chunked online softmax;
 *   - q.k: thread l of a 16-thread group sums q_i k_i (fmaf) over i = 16j + l of the first
 *     hd - hd % 16 dims - the CPU's lanes a0[l] (l < 8) and a1[l - 8] - and threads l < 8 one
 *     more dim n16 + l when hd % 16 >= 8; then a0 + a1 and cpu_hsum8's tree by shuffles,
 *     the last hd % 8 products fused into the sum in order by the group's first thread;
 *     times scale;
 *   - max: one thread, m = m > s ? m : s in position order;
 *   - exp: dev_exp1 (= cpu_exp1) of s - m;
 *   - sums: two-pass: one thread adds the e in double in position order, w =
 *     f16((e * (float)(1 / l))); chunked: 8 threads add the chunk's first cn - cn % 8 e in
 *     float lanes (lane l: e_{8i + l}), one thread combines them by cpu_hsum8's tree, adds
 *     the last cn % 8 in order and adds that to l; a chunk that raises the maximum first
 *     rescales l and the output by cpu_exp1(m_old - m_new) (when l > 0); 1 / l at the end;
 *   - V: thread d keeps o[d] and adds w_p V_p[d] with fmaf over the positions in order.
 * Work: one block of ATT_THREADS per (token, head); 16 positions' dot products at a time;
 * scores and slots go to device scratch [att_slots][chunk] (items beyond att_slots are
 * run by further launches). The max, the double sum and the chunk's lane sums are
 * sequential (one thread, or 8): cn dependent operations per (token, head) and chunk,
 * the price of the CPU's order; the V sum is cn dependent fmaf per thread.
 * A token with a negative position (or sequence) gets zeros; positions whose block-table
 * entry is outside the cache are skipped - no score, weight 0 (the CPU would read out of
 * bounds there). */
#include "cuda_internal.cuh"
#include "ieee.cuh"

#include <math.h>

namespace {

constexpr int ATT_THREADS = 256;
constexpr int ATT_GROUPS = ATT_THREADS / 16; /* positions whose q.k run at once */
constexpr int ATT_DPT = CUDA_ATT_MAX_HEAD_DIM / ATT_THREADS; /* output dims per thread */
constexpr int KVS_THREADS = 256;
constexpr size_t ATT_SCRATCH_MAX = (size_t)64 << 20; /* bytes of score/slot scratch, at most */

static_assert(CUDA_ATT_MAX_HEAD_DIM % ATT_THREADS == 0, "head dims per thread");

template <bool F16> __device__ __forceinline__ float kv_at(const void *base, int64_t i) {
    if (F16) return ie_h2f(static_cast<const uint16_t *>(base)[i]);
    return static_cast<const float *>(base)[i];
}

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
            static_cast<uint16_t *>(kc)[dst] = ie_f2h(k[i]);
            static_cast<uint16_t *>(vc)[dst] = ie_f2h(v[i]);
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
    float *sc;     /* scratch: [launch items][chunk] scores, then weights */
    int32_t *sl;   /* scratch: [launch items][chunk] cache slots (-1: outside the cache) */
    int64_t chunk; /* the CPU's chunk of positions */
    int64_t item0; /* (token, head) of block 0 */
};

/* Cache slot of position `pos` (>= 0) of the sequence whose block table is `table`, or -1
 * where the table entry is outside the cache. Slots fit int32 (cuda_attention checks). */
__device__ __forceinline__ int32_t att_slot(const att_k &p, const int32_t *table, int64_t pos) {
    const uint32_t bs = (uint32_t)p.block_size, bi = (uint32_t)pos / bs;
    if ((int64_t)bi >= p.max_blocks) return -1;
    const int64_t blk = table[bi];
    if (blk < 0 || blk >= p.n_blocks) return -1;
    return (int32_t)(blk * p.block_size + ((uint32_t)pos - bi * bs));
}

/* Scores of positions c0 .. c0 + cn - 1 (cn <= chunk): sc[j] = (q . K[slot]) * scale in
 * dot_scalar's order (see the top comment), sl[j] = the slot. Called by the whole block. */
template <bool F16>
__device__ __forceinline__ void att_scores(const att_k &p, const float *qs, float *sc, int32_t *sl,
                                           const int32_t *table, int64_t c0, int64_t cn, int64_t g) {
    const int grp = threadIdx.x >> 4, gl = threadIdx.x & 15;
    const int64_t hd = p.head_dim, n16 = hd - hd % 16, n8 = hd - hd % 8, rs = p.n_kv * hd;
    const bool extra = hd - n16 >= 8;
    for (int64_t j0 = 0; j0 < cn; j0 += ATT_GROUPS) { /* block-uniform: the shuffles see every lane */
        const int64_t j = j0 + grp;
        const int32_t slot = j < cn ? att_slot(p, table, c0 + j) : -1;
        const int64_t kb = (int64_t)slot * rs + g * hd;
        float a = 0.0f; /* lane gl: a0[gl] (gl < 8) or a1[gl - 8] */
        if (slot >= 0) {
            for (int64_t i = gl; i < n16; i += 16) a = ie_fma(qs[i], kv_at<F16>(p.kc, kb + i), a);
            if (extra && gl < 8) a = ie_fma(qs[n16 + gl], kv_at<F16>(p.kc, kb + n16 + gl), a);
        }
        a = ie_add(a, __shfl_down_sync(0xffffffffu, a, 8, 16)); /* gl < 8: v = a0 + a1 */
        a = ie_add(a, __shfl_down_sync(0xffffffffu, a, 4, 16)); /* gl < 4: v_gl + v_gl+4 */
        a = ie_add(a, __shfl_down_sync(0xffffffffu, a, 2, 16)); /* gl < 2: (v0+v4)+(v2+v6), (v1+v5)+(v3+v7) */
        a = ie_add(a, __shfl_down_sync(0xffffffffu, a, 1, 16)); /* gl 0: cpu_hsum8 */
        if (gl == 0 && j < cn) {
            if (slot >= 0) {
                for (int64_t i = n8; i < hd; i++) a = ie_fma(qs[i], kv_at<F16>(p.kc, kb + i), a);
                sc[j] = ie_mul(a, p.scale);
            }
            sl[j] = slot;
        }
    }
}

/* o[d] += w_j V[slot_j][d] with fmaf, positions j < cn in order (SKIP0: zero weights
 * skipped, as att_one_f16 does). */
template <bool F16, bool SKIP0>
__device__ __forceinline__ void att_weigh_v(const att_k &p, const float *sc, const int32_t *sl, int64_t cn, int64_t g,
                                            float (&o)[ATT_DPT]) {
    const int64_t hd = p.head_dim, rs = p.n_kv * hd;
#pragma unroll 4
    for (int64_t j = 0; j < cn; j++) {
        const int32_t s = sl[j];
        const float w = sc[j];
        if (s < 0 || (SKIP0 && ie_is_zero(w))) continue; /* block-uniform */
        const int64_t vb = (int64_t)s * rs + g * hd;
#pragma unroll
        for (int k = 0; k < ATT_DPT; k++) {
            const int64_t d = threadIdx.x + (int64_t)k * ATT_THREADS;
            if (d < hd) o[k] = ie_fma(w, kv_at<F16>(p.vc, vb + d), o[k]);
        }
    }
}

/* cpu_hsum8 */
__device__ __forceinline__ float att_hsum8(const float *v) {
    return ie_add(ie_add(ie_add(v[0], v[4]), ie_add(v[2], v[6])), ie_add(ie_add(v[1], v[5]), ie_add(v[3], v[7])));
}

/* One (token, head) per block: the CPU's att_one / att_one_f16. */
template <bool F16>
__global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(float *__restrict__ out, const float *__restrict__ q, att_k p) {
    __shared__ float qs[CUDA_ATT_MAX_HEAD_DIM];
    __shared__ float acc8[8];
    __shared__ float bc_m, bc_corr, bc_inv;
    __shared__ int bc_flag;
    const int tid = threadIdx.x;
    const int64_t item = p.item0 + blockIdx.x; /* t * n_head + h */
    const int64_t t = item / p.n_head, h = item % p.n_head, g = h / p.group, hd = p.head_dim;
    float *sc = p.sc + (int64_t)blockIdx.x * p.chunk;
    int32_t *sl = p.sl + (int64_t)blockIdx.x * p.chunk;
    const int64_t hi = p.pos[t];
    const int64_t lo = p.window > 0 ? max((int64_t)0, hi - p.window + 1) : 0;
    const int64_t sq = p.seq[t];
    float o[ATT_DPT];
#pragma unroll
    for (int k = 0; k < ATT_DPT; k++) o[k] = 0.0f;

    if (sq >= 0 && hi >= lo) { /* block-uniform */
        const int32_t *table = p.tables + sq * p.max_blocks;
        for (int64_t d = tid; d < hd; d += ATT_THREADS) {
            const float v = q[item * hd + d];
            qs[d] = F16 ? ie_f16_round(v) : v;
        }
        __syncthreads();
        if (F16 && hi - lo + 1 <= p.chunk) {
            /* att_one_f16: two passes, probabilities normalised and rounded to f16 */
            const int64_t cn = hi - lo + 1;
            att_scores<F16>(p, qs, sc, sl, table, lo, cn, g);
            __syncthreads();
            if (tid == 0) {
                float m = -INFINITY;
#pragma unroll 8
                for (int64_t j = 0; j < cn; j++)
                    if (sl[j] >= 0) m = ie_max1(m, sc[j]); /* TP_MAX(m, s) */
                bc_m = m;
            }
            __syncthreads();
            const float m = bc_m;
            for (int64_t j = tid; j < cn; j += ATT_THREADS) sc[j] = sl[j] >= 0 ? dev_exp1(ie_sub(sc[j], m)) : 0.0f;
            __syncthreads();
            if (tid == 0) {
                double l = 0.0;
#pragma unroll 8
                for (int64_t j = 0; j < cn; j++) l = __dadd_rn(l, ie_f2d(sc[j]));
                bc_inv = ie_d2f(__ddiv_rn(1.0, l));
            }
            __syncthreads();
            const float inv = bc_inv;
            for (int64_t j = tid; j < cn; j += ATT_THREADS) sc[j] = ie_f16_round(ie_mul(sc[j], inv));
            __syncthreads();
            att_weigh_v<F16, true>(p, sc, sl, cn, g, o);
        } else {
            /* att_one: chunks of the CPU's size, online softmax across them */
            float m = -INFINITY, l = 0.0f; /* thread 0's */
            for (int64_t c0 = lo; c0 <= hi; c0 += p.chunk) {
                const int64_t cn = min(p.chunk, hi - c0 + 1), cn8 = cn - cn % 8;
                att_scores<F16>(p, qs, sc, sl, table, c0, cn, g);
                __syncthreads();
                if (tid == 0) {
                    float cmax = -INFINITY;
#pragma unroll 8
                    for (int64_t j = 0; j < cn; j++)
                        if (sl[j] >= 0) cmax = ie_max1(cmax, sc[j]);
                    int resc = 0;
                    float corr = 1.0f;
                    if (ie_gt(cmax, m)) {
                        if (ie_gt(l, 0.0f)) { /* an earlier chunk: bring its sums to the new maximum */
                            corr = dev_exp1(ie_sub(m, cmax));
                            l = ie_mul(l, corr);
                            resc = 1;
                        }
                        m = cmax;
                    }
                    bc_m = m;
                    bc_corr = corr;
                    bc_flag = resc;
                }
                __syncthreads();
                if (bc_flag) {
                    const float corr = bc_corr;
#pragma unroll
                    for (int k = 0; k < ATT_DPT; k++) o[k] = ie_mul(o[k], corr);
                }
                const float mm = bc_m;
                for (int64_t j = tid; j < cn; j += ATT_THREADS) sc[j] = sl[j] >= 0 ? dev_exp1(ie_sub(sc[j], mm)) : 0.0f;
                __syncthreads();
                if (tid < 8) { /* exp_shift's 8 float lanes */
                    float a = 0.0f;
                    for (int64_t j = tid; j < cn8; j += 8) a = ie_add(a, sc[j]);
                    acc8[tid] = a;
                }
                if (tid < 32) __syncwarp();
                if (tid == 0) {
                    float sum = att_hsum8(acc8);
                    for (int64_t j = cn8; j < cn; j++) sum = ie_add(sum, sc[j]);
                    l = ie_add(l, sum);
                }
                att_weigh_v<F16, false>(p, sc, sl, cn, g, o);
                __syncthreads(); /* sc, sl, acc8 and bc_* are reused by the next chunk */
            }
            if (tid == 0) {
                bc_flag = ie_gt(l, 0.0f);
                bc_inv = bc_flag ? ie_div(1.0f, l) : 0.0f;
            }
            __syncthreads();
            if (bc_flag) {
                const float inv = bc_inv;
#pragma unroll
                for (int k = 0; k < ATT_DPT; k++) o[k] = ie_mul(o[k], inv);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < ATT_DPT; k++) {
        const int64_t d = tid + (int64_t)k * ATT_THREADS;
        if (d < hd) out[item * hd + d] = o[k];
    }
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
    CUDA_REQUIRE(cb, kv->block_size > 0 && kv->block_size <= INT32_MAX, "attention: cache block size %lld",
                 (long long)kv->block_size);
    CUDA_REQUIRE(cb, kv->n_blocks >= 0 && kv->n_blocks <= INT32_MAX / kv->block_size,
                 "attention: %lld blocks of %lld slots exceed the kernel's int32 slots", (long long)kv->n_blocks,
                 (long long)kv->block_size);
    const int64_t items = batch->n_tok * n_head;
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
    p.sc = cb->att_sc;
    p.sl = cb->att_sl;
    p.chunk = cb->att_chunk;
    for (int64_t i0 = 0; i0 < items; i0 += cb->att_slots) { /* the scratch holds att_slots items */
        const int64_t cnt = TP_MIN(cb->att_slots, items - i0);
        p.item0 = i0;
        if (kv->type == DTYPE_F16) attention_kernel<true><<<(unsigned)cnt, ATT_THREADS, 0, cb->stream>>>(out, q, p);
        else attention_kernel<false><<<(unsigned)cnt, ATT_THREADS, 0, cb->stream>>>(out, q, p);
        CUDA_LAUNCHED(cb);
    }
}

/* Scratch of the attention kernel: scores and slots of one chunk (the CPU's: opts.max_ctx,
 * or CUDA_ATT_DEFAULT_CTX) for up to max_tokens * max_heads items, at most ATT_SCRATCH_MAX
 * bytes (at least one item); and the kernels' launch checks. */
int cuda_attention_init(struct cuda_backend *cb, tp_err *e) {
    const int64_t chunk = cb->opts.max_ctx > 0 ? cb->opts.max_ctx : CUDA_ATT_DEFAULT_CTX;
    const size_t per = sizeof(float) + sizeof(int32_t);
    size_t per_item;
    if (chunk > INT32_MAX || !tp_mul_size((size_t)chunk, per, &per_item))
        return tp_errf(e, TP_ENOMEM, "cuda backend: attention chunk of %lld positions is too large; lower the "
                       "context length", (long long)chunk);
    const int64_t want = TP_MAX(cb->opts.max_tokens, (int64_t)1) * TP_MAX(cb->opts.max_heads, (int64_t)1);
    const int64_t fit = TP_MAX((int64_t)(ATT_SCRATCH_MAX / per_item), (int64_t)1);
    cb->att_chunk = chunk;
    cb->att_slots = TP_MIN(TP_MIN(want, fit), (int64_t)INT32_MAX);
    cb->att_sc = static_cast<float *>(cuda_scratch_alloc(cb, (size_t)cb->att_slots * (size_t)chunk * sizeof(float)));
    cb->att_sl = static_cast<int32_t *>(cuda_scratch_alloc(cb, (size_t)cb->att_slots * (size_t)chunk * sizeof(int32_t)));
    if (!cb->att_sc || !cb->att_sl)
        return tp_errf(e, TP_ENOMEM, "cuda backend: out of device memory for attention scratch (%lld items x %lld "
                       "positions); lower the context length", (long long)cb->att_slots, (long long)chunk);
    const struct {
        const void *f;
        int threads;
    } k[] = {
        {(const void *)kv_store_kernel<true>, KVS_THREADS},
        {(const void *)kv_store_kernel<false>, KVS_THREADS},
        {(const void *)attention_kernel<true>, ATT_THREADS},
        {(const void *)attention_kernel<false>, ATT_THREADS},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(k); i++) {
        int rc = cuda_kernel_check(cb, k[i].f, k[i].threads, 0, "attention", e);
        if (rc) return rc;
    }
    return 0;
}
