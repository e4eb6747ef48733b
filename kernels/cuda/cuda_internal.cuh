/* cuda_internal.cuh - internals of the CUDA backend shared by its .cu files: the backend
 * state (stream, cuBLAS handle, scratch sized at creation, sticky error), the one device
 * allocation function, the launch-limit check and the per-op entry points of the table.
 *
 * Memory contract (as the forward pass uses it): every pointer an op receives lives in
 * device memory - float buffers, weights, the KV cache and the integer index arrays (ids,
 * pos, batch->pos/seq/block_tables/slots) alike - except topk's outputs, which are host
 * arrays. All work is queued on one stream in call order; upload/download/sync/topk return
 * only when their work is done. */
#ifndef TPLLM_CUDA_INTERNAL_CUH
#define TPLLM_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "../kernels.h"
}

#include "cuda_check.cuh"

/* Matmul: up to this many tokens use the dequantizing matrix x vector kernels (weights read
 * once for all tokens); more go through dequantized f16 tiles and cuBLAS. */
#define CUDA_MATVEC_MAX_TOK 8
/* Largest k of the GPU top-k (a larger k is served on the host from a downloaded row). */
#define CUDA_TOPK_MAX_K 256
/* Longest head the attention kernel handles (q in shared memory, 2 output dims a thread). */
#define CUDA_ATT_MAX_HEAD_DIM 512
/* Attention's chunk of positions when opts.max_ctx is 0: the CPU backend's default
 * (CPU_DEFAULT_ATT_CTX in kernels/cpu/backend.c; the two must stay equal, since the chunk
 * decides where the softmax is rescaled and whether f16 probabilities are rounded). */
#define CUDA_ATT_DEFAULT_CTX 4096

struct cuda_backend {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    struct kbackend_opts opts;

    /* device facts, for describe and the limit checks */
    char dev_name[256];
    int cc_major, cc_minor, n_sm;
    size_t smem_per_block;       /* default limit of a block's shared memory */
    size_t smem_per_block_optin; /* limit after cudaFuncSetAttribute */
    size_t total_mem;
    int runtime_version, driver_version, cublas_version;

    /* matmul scratch: the activation rows in the format the weight type's dot product
     * takes (see matmul.cu), and the f16 weight tile of the cuBLAS path */
    int8_t *act_q;   /* [max_tokens][max_in] int8 quants (Q8_0, Q8_1, Q8_K) */
    float *act_d;    /* [max_tokens][max_in/32] per-block scale (Q8_K: [max_in/256]) */
    float *act_s;    /* [max_tokens][max_in/32] Q8_1's d * sum(q), fp16-rounded */
    int16_t *act_bs; /* [max_tokens][max_in/16] Q8_K's sums of 16 quants */
    void *act_h;     /* [max_tokens][max_in] 16-bit activations (F16, BF16, cuBLAS input) */
    void *w_tile;    /* tile_elems f16 values: dequantized weight rows for cuBLAS */
    int64_t tile_elems;
    void *blas_ws; /* cuBLAS workspace */
    size_t blas_ws_bytes;

    /* topk scratch: results of up to max_tokens rows before they go to the host */
    int32_t *tk_idx; /* [max_tokens][CUDA_TOPK_MAX_K] */
    float *tk_val;   /* [max_tokens][CUDA_TOPK_MAX_K] */
    float *tk_lse;   /* [max_tokens] */

    /* gated_act: act_gelu_table_shared() uploaded (GELU of every f16 input) */
    uint16_t *gelu_tab;

    /* attention: scores and cache slots of one chunk of positions for each of att_slots
     * (token, head) items at a time; the chunk is the CPU's (opts.max_ctx, or
     * CUDA_ATT_DEFAULT_CTX) */
    float *att_sc;   /* [att_slots][att_chunk] */
    int32_t *att_sl; /* [att_slots][att_chunk] */
    int64_t att_chunk, att_slots;

    size_t scratch_bytes; /* device memory allocated for the scratch above */

    tp_err err;       /* first failure inside an op (ops return void) */
    bool err_printed; /* whether it went to stderr already */
};

static inline struct cuda_backend *cuda_of(const struct kbackend *b) {
    return (struct cuda_backend *)b->impl;
}

/* Entry of every op: the backend's state, with its device made current for the calling
 * thread (cheap when it already is; a thread other than the creator would otherwise
 * queue work on device 0). */
static inline struct cuda_backend *cuda_enter(const struct kbackend *b) {
    struct cuda_backend *cb = cuda_of(b);
    (void)cudaSetDevice(cb->device);
    return cb;
}

/* The only place device memory is obtained (cudaMalloc) and returned (cudaFree); sizes are
 * rounded up to 256 bytes so that a kernel's aligned 16-byte loads around the end of a
 * buffer stay inside it. NULL on failure (or for 0 bytes); free(NULL) is a no-op. */
void *cuda_mem_alloc(struct cuda_backend *cb, size_t bytes);
void cuda_mem_free(struct cuda_backend *cb, void *p);
/* cuda_mem_alloc for the backend's own scratch at creation, counted in scratch_bytes (which
 * becomes kbackend.workspace_bytes). */
void *cuda_scratch_alloc(struct cuda_backend *cb, size_t bytes);

/* Check that `func` can be launched with `threads` threads and `dyn_smem` bytes of dynamic
 * shared memory on this device, raising the function's dynamic shared-memory limit when
 * dyn_smem exceeds the default 48 KiB. Fills e naming `name` otherwise. */
int cuda_kernel_check(struct cuda_backend *cb, const void *func, int threads, size_t dyn_smem,
                      const char *name, tp_err *e);

/* Per-file creation steps: scratch allocation and launch-limit checks of the file's kernels. */
int cuda_matmul_init(struct cuda_backend *cb, tp_err *e);
int cuda_dequant_init(struct cuda_backend *cb, tp_err *e);
int cuda_matmul_f64_init(struct cuda_backend *cb, tp_err *e);
int cuda_ops_init(struct cuda_backend *cb, tp_err *e);
int cuda_attention_init(struct cuda_backend *cb, tp_err *e);
int cuda_topk_init(struct cuda_backend *cb, tp_err *e);

/* Grid size for a 1-D loop over n items with `threads` threads per block (at least 1 block,
 * capped; kernels use grid-stride loops). */
static inline unsigned cuda_grid_1d(int64_t n, int threads) {
    int64_t g = (n + threads - 1) / threads;
    if (g < 1) g = 1;
    if (g > 65535LL * 16) g = 65535LL * 16;
    return (unsigned)g;
}

/* Queue out[r][0..n_in) = f16(dequantized row o0 + r of w) for r < rows (w quantized,
 * out [rows][w->n_in] 16-byte aligned). Failures go to the sticky error. */
void cuda_dequant_rows_f16(struct cuda_backend *cb, __half *out, const struct kmat *w, int64_t o0, int64_t rows);

/* Op implementations (signatures of struct kops). */
void cuda_matmul(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok);
void cuda_matmul_f64(struct kbackend *b, double *y, const struct kmat *w, const float *x, int64_t n_tok,
                     int64_t granule);
void cuda_reduce_f64(struct kbackend *b, float *y, const double *parts, int64_t n_parts, int64_t n);
void cuda_get_rows(struct kbackend *b, float *out, const struct kmat *table, const int32_t *ids, int64_t n);
void cuda_rmsnorm(struct kbackend *b, float *y, const float *x, const float *w, float w_offset,
                  int64_t n_rows, int64_t n, float eps);
void cuda_rope(struct kbackend *b, float *x, const int32_t *pos, int64_t n_tok, int64_t n_head,
               int64_t head_dim, const struct rope_params *p);
void cuda_kv_store(struct kbackend *b, struct kv_layer *kv, const float *k, const float *v,
                   const struct attn_batch *batch);
void cuda_attention(struct kbackend *b, float *out, const float *q, const struct kv_layer *kv,
                    const struct attn_batch *batch, int64_t n_head, float scale, int64_t window);
void cuda_gated_act(struct kbackend *b, float *out, const float *gate, const float *up, int64_t n,
                    enum act_kind act);
void cuda_add(struct kbackend *b, float *y, const float *a, const float *bb, int64_t n);
void cuda_scale(struct kbackend *b, float *x, float s, int64_t n);
void cuda_add_bias(struct kbackend *b, float *x, const float *bias, int64_t n_rows, int64_t n);
void cuda_topk(struct kbackend *b, int32_t *idx, float *val, float *lse, const float *logits,
               int64_t n_rows, int64_t n, int64_t k);

#endif
