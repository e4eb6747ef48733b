/* kernels.h - the op table: every compute op the forward pass uses, behind one signature
 * per op, implemented by the CPU backend (kernels/cpu) and the CUDA backend (kernels/cuda).
 *
 * All float buffers passed to an op live in the backend's memory (host memory for the
 * CPU, device memory for CUDA). Shapes are row-major; "[n_tok][n]" means n_tok rows of n
 * contiguous floats. Every op accepts empty extents (n_tok == 0, n_out == 0, ...) and
 * then does nothing. Ops never fail on valid arguments; they do not allocate on the hot
 * path (scratch space is sized at backend creation from `kbackend_opts`). */
#ifndef TPLLM_KERNELS_H
#define TPLLM_KERNELS_H

#include "base.h"
#include "dtype.h"

/* A weight matrix (or a tensor-parallel slice of one) in its stored quantized format:
 * n_out rows, each holding n_in elements starting at data + o * row_stride. A column
 * slice (a range of blocks within each row) is data advanced to the first block with the
 * full row's stride; n_in must be a multiple of the type's block size. */
/* The most weights one matmul_n call takes. */
#define KOPS_MATMUL_N 4

/* How a weight matrix's rows are stored in backend memory. */
enum kmat_layout {
    KMAT_ROWS = 0,  /* the GGUF layout: row r at data + r * row_stride */
    KMAT_Q4_0X8,    /* Q4_0 rows in groups of 8 (CPU backend, kernels/cpu/q4_0x8.c): group g
                       (rows 8g..8g+7) takes the bytes of its 8 rows; per block: the 8 fp16
                       scales, then 4 x 32 bytes [row k's 16 code bytes | row k+4's]; the
                       n_out % 8 last rows stay in the GGUF layout after the groups */
};

struct kmat {
    const void *data;
    enum dtype type;
    int64_t n_out;
    int64_t n_in;
    size_t row_stride; /* bytes between consecutive rows (of the GGUF layout) */
    enum kmat_layout layout;
};

enum rope_mode {
    ROPE_NORMAL = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): llama */
    ROPE_NEOX = 2,   /* rotate halves (x[i], x[i + n_rot/2]): qwen2, gemma3 */
};

/* theta_i = pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]  (YaRN mixing when
 * ext_factor != 0, as llama.cpp's rope_yarn). */
struct rope_params {
    enum rope_mode mode;
    int64_t n_rot;              /* rotated dims per head (<= head_dim) */
    float base;                 /* rope_theta */
    float freq_scale;           /* 1 / linear scaling factor; 1 for none */
    const float *freq_factors;  /* [n_rot/2] per-frequency divisors (Llama 3), or NULL */
    float ext_factor;           /* YaRN extrapolation mix; 0 for none */
    float attn_factor;          /* YaRN magnitude scale; 1 for none */
    float beta_fast, beta_slow; /* YaRN ramp */
    int64_t n_ctx_orig;         /* YaRN original context */
};

enum act_kind { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_COUNT };

/* One layer of the paged KV cache on this rank: n_blocks blocks of block_size token
 * slots, each slot holding n_kv heads of head_dim values, of type F16 or F32.
 * Slot s of the cache is k + s * n_kv * head_dim elements. */
struct kv_layer {
    void *k;
    void *v;
    enum dtype type;
    int64_t n_blocks;
    int64_t block_size;
    int64_t n_kv;
    int64_t head_dim;
};

/* Where each token of a step sits in the paged cache. Token t belongs to sequence
 * seq[t] at position pos[t]; the sequence's logical block b is physical block
 * block_tables[seq[t] * max_blocks + b]. A token attends to positions
 * max(0, pos[t] - window + 1) .. pos[t] of its own sequence (window <= 0: no window);
 * all those positions must already be stored (this step's K/V are stored first). */
struct attn_batch {
    int64_t n_tok;
    const int32_t *pos;
    const int32_t *seq;
    const int32_t *block_tables;
    int64_t max_blocks;
    const int64_t *slots; /* [n_tok] physical slot of token t: where its K/V go */
};

/* Sizes that bound scratch space, given when a backend is created. */
struct kbackend_opts {
    int n_threads;          /* CPU threads (0: one per core this rank may use) */
    int64_t max_tokens;     /* most activation rows in one op call */
    int64_t max_in;         /* longest matmul input row */
    int64_t max_ctx;        /* longest sequence attention must cover */
    int64_t max_heads;      /* most query heads on this rank */
    int simd;               /* CPU SIMD level (KSIMD_*); -1: auto (TPLLM_SIMD if set, else
                             * kbackend_simd_default()) */
    int device;             /* CUDA device ordinal */
};

enum ksimd { KSIMD_SCALAR = 0, KSIMD_AVX2 = 1, KSIMD_AVX512 = 2 };

/* SIMD levels by name: "scalar", "avx2", "avx512" -> KSIMD_*, "auto" -> -1; anything
 * else -> -2. Every level computes the same bits (docs/simd.md); they differ in speed. */
int kbackend_simd_parse(const char *name);
const char *kbackend_simd_name(int level); /* "auto" for -1 */
/* The best level this CPU (and this build) can run. */
int kbackend_simd_best(void);
/* What auto picks: the fastest level measured on this kind of CPU (AVX2 where AVX-512
 * exists too: docs/simd.md says why). */
int kbackend_simd_default(void);

struct kbackend;
struct memtrack;

struct kops {
    const char *name; /* "cpu" or "cuda" */
    /* Release the backend's state and the struct kbackend itself. */
    void (*destroy)(struct kbackend *b);
    /* One line for the startup report (NULL: just the name). */
    void (*describe)(const struct kbackend *b, char *buf, size_t n);

    /* Memory in the backend's space. alloc returns NULL on failure; free(NULL) is a no-op. */
    void *(*alloc)(struct kbackend *b, size_t bytes);
    void (*free)(struct kbackend *b, void *p);
    void (*upload)(struct kbackend *b, void *dst, const void *src_host, size_t bytes);
    void (*download)(struct kbackend *b, void *dst_host, const void *src, size_t bytes);
    void (*sync)(struct kbackend *b);

    /* y[t][o] = sum_i W[o][i] * x[t][i] for t < n_tok; y: [n_tok][w->n_out], x: [n_tok][w->n_in]. */
    void (*matmul)(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok);
    /* ys[i] = ws[i] x for i < n (n <= KOPS_MATMUL_N) on the same input x [n_tok][n_in]: the
     * same bits as n calls of matmul, in one pass when the weights share a type and n_in
     * (the activations quantized once, the rows of all n weights in one thread-pool run:
     * Q, K and V; gate and up). NULL: the caller makes n matmul calls. */
    void (*matmul_n)(struct kbackend *b, int n, float *const ys[], const struct kmat *const ws[], const float *x,
                     int64_t n_tok);
    /* Row-parallel matmul, deterministic across tensor-parallel splits: the input width is
     * cut into granules of `granule` values (a multiple of the type's block; the last one
     * may be shorter), each granule's dot product is computed as matmul would, and the
     * granules are summed in double: y[t][o] = sum_g (double) dot_g. A rank holding a
     * slice of the granules produces the partial sum of exactly those, so the ranks'
     * partials add up (in double) to what one rank computes, to within double rounding. */
    void (*matmul_f64)(struct kbackend *b, double *y, const struct kmat *w, const float *x, int64_t n_tok,
                       int64_t granule);
    /* Called once on every matmul weight after it is loaded into backend memory: the backend
     * may rewrite w's bytes in place into a layout its matmuls read faster, and set
     * w->layout (same size; results unchanged). NULL: weights stay as loaded. */
    void (*prepare_weight)(struct kbackend *b, struct kmat *w);
    /* y[i] = (float) sum_{p < n_parts} parts[p * n + i], summed in order p = 0, 1, ... */
    void (*reduce_f64)(struct kbackend *b, float *y, const double *parts, int64_t n_parts, int64_t n);
    /* out[t][:] = dequantized row ids[t] of table (embedding lookup); out: [n][table->n_in]. */
    void (*get_rows)(struct kbackend *b, float *out, const struct kmat *table, const int32_t *ids, int64_t n);
    /* y[r][i] = x[r][i] / sqrt(mean_i(x[r]^2) + eps) * (w[i] + w_offset) over n_rows rows of n. */
    void (*rmsnorm)(struct kbackend *b, float *y, const float *x, const float *w, float w_offset,
                    int64_t n_rows, int64_t n, float eps);
    /* Rotate in place the first n_rot dims of each of n_head heads of each token: x: [n_tok][n_head][head_dim]. */
    void (*rope)(struct kbackend *b, float *x, const int32_t *pos, int64_t n_tok, int64_t n_head,
                 int64_t head_dim, const struct rope_params *p);
    /* Store k, v: [n_tok][n_kv*head_dim] into the cache slots of `batch`. */
    void (*kv_store)(struct kbackend *b, struct kv_layer *kv, const float *k, const float *v,
                     const struct attn_batch *batch);
    /* out[t][h] = softmax_j(scale * q[t][h] . K[j][h/g]) V[j][h/g], g = n_head / kv->n_kv,
     * over the positions `batch` allows (causal, sliding window). q, out: [n_tok][n_head][head_dim]. */
    void (*attention)(struct kbackend *b, float *out, const float *q, const struct kv_layer *kv,
                      const struct attn_batch *batch, int64_t n_head, float scale, int64_t window);
    /* out[i] = act(gate[i]) * up[i] for i < n. */
    void (*gated_act)(struct kbackend *b, float *out, const float *gate, const float *up, int64_t n,
                      enum act_kind act);
    /* y[i] = a[i] + b[i] (y may alias a or b). */
    void (*add)(struct kbackend *b, float *y, const float *a, const float *bb, int64_t n);
    /* x[i] *= s. */
    void (*scale)(struct kbackend *b, float *x, float s, int64_t n);
    /* x[r][i] += bias[i] over n_rows rows of n. */
    void (*add_bias)(struct kbackend *b, float *x, const float *bias, int64_t n_rows, int64_t n);
    /* Per row r < n_rows of logits [n_rows][n]: the k largest values in descending order
     * (ties: lower index first) with their indices, and lse[r] = log(sum_i exp(logits[r][i])).
     * idx/val: [n_rows][k] host arrays; lse: [n_rows] host array (may be NULL). k <= n. */
    /* Free and total bytes of the device (NULL: the host's memory is reported). */
    int (*mem_info)(struct kbackend *b, int64_t *free_bytes, int64_t *total_bytes);
    void (*topk)(struct kbackend *b, int32_t *idx, float *val, float *lse, const float *logits,
                 int64_t n_rows, int64_t n, int64_t k);
};

/* A backend instance: its op table and its private state. */
struct kbackend {
    const struct kops *ops;
    void *impl;
    struct memtrack *track; /* the rank's memory tracker (set by the runtime; may be NULL) */
    size_t workspace_bytes; /* scratch the backend allocated for itself at creation */
};

/* Create the CPU backend. Returns 0 or a negative status with `e` filled. */
int kbackend_cpu_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e);
/* Create the CUDA backend on o->device; TP_EUNSUPPORTED when built without CUDA or no device. */
int kbackend_cuda_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e);
void kbackend_free(struct kbackend *b);
/* A one-line description: "cpu: avx2, 2 threads" or "cuda: NVIDIA H100 (sm_90) ...". */
void kbackend_describe(const struct kbackend *b, char *buf, size_t n);
/* Free and total memory of the backend's device (CPU: host MemAvailable / MemTotal).
 * Either pointer may be NULL. Returns 0 or a negative status. */
int kbackend_mem_info(const struct kbackend *b, int64_t *free_bytes, int64_t *total_bytes);
/* CUDA backend only: the sticky error of its last failed op (ops return void), or 0;
 * and the stream its work is queued on (for the communicator). Both are no-ops / NULL on
 * other backends and in builds without CUDA. */
int kbackend_cuda_status(struct kbackend *b, tp_err *e);
void *kbackend_cuda_stream(struct kbackend *b);
/* CUDA devices visible to this process (0 without CUDA or without a device). */
int kbackend_cuda_device_count(void);
/* Whether CUDA support was compiled in. */
bool kbackend_cuda_compiled(void);

#endif
