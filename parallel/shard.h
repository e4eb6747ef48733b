/* shard.h - the tensor-parallel sharding plan: which heads, FFN columns and vocabulary
 * rows each rank owns (DESIGN.md, "Sharding rules").
 *
 * Column-parallel (split output rows): attn_q/k/v (by head), ffn_gate/up (by FFN
 * column), output (by vocabulary row). Row-parallel (split the input width, then
 * all-reduce): attn_output (by head), ffn_down (by FFN column). Everything else is
 * replicated. Splits follow quantization blocks of the row-parallel tensors, may be
 * uneven, and may leave a rank with nothing of a tensor. */
#ifndef TPLLM_SHARD_H
#define TPLLM_SHARD_H

#include "../kernels/base.h"

/* Half-open range [begin, end) of heads, columns or rows. */
struct shard_range {
    int64_t begin, end;
};
static inline int64_t shard_len(struct shard_range r) { return r.end - r.begin; }

/* What the plan needs to know about the model (from its config and tensor types). */
struct shard_model {
    int64_t n_head, n_head_kv, head_dim, head_dim_v;
    int64_t n_ff, n_vocab;
    int64_t o_block;    /* largest quant block size among attn_output tensors (input width) */
    int64_t down_block; /* largest quant block size among ffn_down tensors */
};

struct shard_plan {
    int tp;
    int64_t head_unit;  /* query heads are assigned in chunks of this many */
    int64_t ff_unit;    /* FFN columns are assigned in chunks of this many (the last may be shorter); also
                           the reduction granule of ffn_down, the same at every TP size */
    int64_t o_granule;  /* reduction granule of attn_output's input columns: every rank boundary
                           falls on a multiple of it, at every TP size */
    /* per rank r < tp (arrays of tp entries, owned) */
    struct shard_range *q_heads;  /* query heads */
    struct shard_range *kv_heads; /* KV heads: those the rank's query heads use (replicated when tp > n_head_kv) */
    struct shard_range *ff;       /* FFN columns */
    struct shard_range *vocab;    /* LM-head rows */
};

/* Build the plan for tp ranks. TP_EINVAL when tp cannot work (a rank would own no head
 * and no FFN column), with a message listing the sizes that can. */
int shard_plan_build(struct shard_plan *p, const struct shard_model *m, int tp, tp_err *e);
void shard_plan_free(struct shard_plan *p);
/* The TP sizes in [1, max_tp] that work, written to buf as "1-4, 6, 8". */
void shard_plan_valid_sizes(const struct shard_model *m, int max_tp, char *buf, size_t n);

/* Split n units into tp nearly equal parts (the first n % tp get one more). */
struct shard_range shard_split(int64_t n, int tp, int rank);

#endif
