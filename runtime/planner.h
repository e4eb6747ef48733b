/* planner.h - the memory plan: before anything loads, each rank's weights, activations,
 * communication buffers and overhead, and how many KV-cache blocks fit the budget.
 *
 * Everything is computed from the GGUF header and the shard plan; the loader and the
 * engine allocate exactly these sizes, so the tracker's measured peak agrees with it. */
#ifndef TPLLM_PLANNER_H
#define TPLLM_PLANNER_H

#include "config.h"
#include "../parallel/shard.h"

enum plan_backend { PLAN_CPU = 0, PLAN_CUDA = 1 };

struct plan_opts {
    int tp;
    enum plan_backend backend;
    int64_t budget;           /* bytes per rank (device memory, or host memory for CPU ranks) */
    int64_t ctx;              /* tokens per sequence */
    int64_t max_batch_tokens; /* tokens per step */
    int64_t max_seqs;         /* sequences in flight */
    int64_t block_size;       /* KV tokens per block */
    enum dtype kv_type;
    int n_cand;               /* sampling candidates per rank */
    int64_t max_logits;       /* logit rows per step (0: max_seqs) */
    int n_threads;            /* CPU threads (scratch scales with it) */
};

struct plan_rank {
    size_t weights, activations, comm, overhead, kv_per_block;
    size_t fixed;             /* weights + activations + comm + overhead */
    int64_t kv_blocks;        /* blocks that fit what is left (0 if nothing is left) */
    size_t kv;                /* kv_blocks * kv_per_block */
    int64_t free_bytes;       /* budget - fixed - kv (negative: over budget) */
    int64_t kv_tokens;        /* kv_blocks * block_size */
};

struct plan {
    struct plan_opts o;
    struct plan_rank *ranks;  /* [tp] (owned) */
    int64_t blocks_per_seq;   /* ceil(ctx / block_size) */
    int64_t kv_blocks;        /* the engine's block count: min over ranks (every rank holds the same blocks) */
    bool fits;                /* every rank holds at least one full-context sequence */
    int worst_rank;           /* the rank with the fewest KV blocks */
};

/* Compute the plan. TP_EINVAL for a TP size that cannot work (the shard plan's message). */
int plan_compute(struct plan *p, const struct model_config *c, const struct gguf_file *f, const struct plan_opts *o,
                 tp_err *e);
void plan_free(struct plan *p);

/* When !p->fits: a message naming the rank, the shortfall, and what would fit (the
 * largest context at this TP, the smallest TP that fits this context, a smaller
 * quantization). Written to buf. */
void plan_advice(const struct plan *p, const struct model_config *c, const struct gguf_file *f, char *buf, size_t n);

/* Constant overheads (measured; docs/memory.md says how): CUDA context and cuBLAS/NCCL
 * workspaces per rank. */
size_t plan_overhead_bytes(enum plan_backend b, int tp);

/* Host memory available to one rank of this node: MemAvailable / local ranks. */
int64_t plan_host_available(int local_ranks);

#endif
