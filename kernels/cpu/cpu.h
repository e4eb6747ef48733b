/* cpu.h - internals of the CPU backend shared by its files: the thread pool, the
 * SIMD level, scratch space, and the per-op entry points the op table points at. */
#ifndef TPLLM_CPU_H
#define TPLLM_CPU_H

#include "../kernels.h"

/* A persistent pool of worker threads. tpool_run calls fn(arg, i, n) for i in [0, n) on
 * the pool's threads (the caller's thread takes part) and returns when all are done.
 * n may exceed the thread count; with n_threads == 1 everything runs on the caller. */
struct tpool;
typedef void (*tpool_fn)(void *arg, int64_t i, int64_t n);
int tpool_create(struct tpool **out, int n_threads, tp_err *e);
void tpool_free(struct tpool *p);
int tpool_threads(const struct tpool *p);
void tpool_run(struct tpool *p, tpool_fn fn, void *arg, int64_t n);

/* Heads the CPU attention takes in one work item (their scores side by side in the
 * thread's scratch, which holds this many rows of max_ctx scores). */
#define CPU_ATT_GROUP 16

/* Attention scratch bytes of a CPU backend with these options (kbackend_cpu_create). */
size_t cpu_attention_scratch_bytes(const struct kbackend_opts *o);

struct cpu_backend {
    struct tpool *pool;
    int n_threads;
    enum ksimd simd;           /* chosen at creation (opts.simd, TPLLM_SIMD or the default) */
    bool simd_auto;            /* simd was the automatic choice, not asked for */
    enum ksimd simd_best;      /* the best level this CPU supports */
    struct kbackend_opts opts;
    void *act_q;               /* scratch: activations quantized for integer dot products */
    size_t act_q_bytes;
    float *att_scores;         /* scratch: [n_threads][CPU_ATT_GROUP * max_ctx] attention scores */
    const uint16_t *gelu_tab;  /* GELU of every f16 input: act_gelu_table_shared (kernels/act.h) */
};

/* Best SIMD level this CPU and this build support. */
enum ksimd cpu_simd_detect(void);
const char *cpu_simd_name(enum ksimd s);

/* Op implementations (signatures of struct kops). */
void cpu_matmul(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok);
void cpu_matmul_n(struct kbackend *b, int n, float *const ys[], const struct kmat *const ws[], const float *x,
                  int64_t n_tok);
void cpu_matmul_f64(struct kbackend *b, double *y, const struct kmat *w, const float *x, int64_t n_tok,
                    int64_t granule);
void cpu_reduce_f64(struct kbackend *b, float *y, const double *parts, int64_t n_parts, int64_t n);
void cpu_get_rows(struct kbackend *b, float *out, const struct kmat *table, const int32_t *ids, int64_t n);
void cpu_rmsnorm(struct kbackend *b, float *y, const float *x, const float *w, float w_offset,
                 int64_t n_rows, int64_t n, float eps);
void cpu_rope(struct kbackend *b, float *x, const int32_t *pos, int64_t n_tok, int64_t n_head,
              int64_t head_dim, const struct rope_params *p);
void cpu_kv_store(struct kbackend *b, struct kv_layer *kv, const float *k, const float *v,
                  const struct attn_batch *batch);
void cpu_attention(struct kbackend *b, float *out, const float *q, const struct kv_layer *kv,
                   const struct attn_batch *batch, int64_t n_head, float scale, int64_t window);
void cpu_gated_act(struct kbackend *b, float *out, const float *gate, const float *up, int64_t n,
                   enum act_kind act);
void cpu_add(struct kbackend *b, float *y, const float *a, const float *bb, int64_t n);
void cpu_scale(struct kbackend *b, float *x, float s, int64_t n);
void cpu_add_bias(struct kbackend *b, float *x, const float *bias, int64_t n_rows, int64_t n);
void cpu_topk(struct kbackend *b, int32_t *idx, float *val, float *lse, const float *logits,
              int64_t n_rows, int64_t n, int64_t k);

/* Bytes of scratch cpu_matmul needs for the given sizes (allocated by the backend). */
size_t cpu_matmul_scratch_bytes(const struct kbackend_opts *o);

#endif
