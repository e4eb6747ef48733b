/* forward.h - the transformer forward pass over one step's batch, on this rank's shard. */
#ifndef TPLLM_FORWARD_H
#define TPLLM_FORWARD_H

#include "../parallel/comm.h"
#include "model.h"

/* The paged KV cache of this rank: every layer's K and V blocks in one allocation. */
struct kv_cache {
    struct kv_layer *layers; /* [n_layer] */
    void *mem;
    size_t bytes;
    int64_t n_blocks, block_size;
};

/* Bytes of a KV cache of n_blocks blocks for this rank's KV heads. */
size_t kv_cache_bytes(const struct model_config *c, int64_t n_kv_l, int64_t n_blocks, int64_t block_size, enum dtype type);
int kv_cache_create(struct kv_cache *kv, struct kbackend *be, const struct model_config *c, int64_t n_kv_l,
                    int64_t n_blocks, int64_t block_size, enum dtype type, tp_err *e);
void kv_cache_free(struct kv_cache *kv, struct kbackend *be);

/* One step: n_tok tokens of one or more sequences (struct attn_batch describes where
 * each sits in the paged cache) and the rows whose logits are wanted. */
struct fwd_batch {
    int64_t n_tok;
    const int32_t *tokens;       /* [n_tok] */
    const int32_t *pos;          /* [n_tok] */
    const int32_t *seq;          /* [n_tok] row of block_tables */
    const int32_t *block_tables; /* [n_seq][max_blocks] */
    int64_t n_seq, max_blocks;
    const int64_t *slots;        /* [n_tok] */
    int64_t n_logits;
    const int32_t *logit_rows;   /* [n_logits] ascending rows of the batch whose logits are computed */
};

/* Activations for steps of up to max_tok tokens and max_logits logit rows, in one backend
 * allocation (plus a host staging area for the embedding rows and batch indices). */
struct run_state {
    int64_t max_tok, max_logits, max_seq, max_blocks;
    float *x;      /* [max_tok][d] residual stream */
    float *xn;     /* [max_tok][d] normed input of a sub-layer */
    float *q;      /* [max_tok][nh*hd] */
    float *k, *v;  /* [max_tok][nkv*hd] */
    float *att;    /* [max_tok][nh*hd] attention output */
    float *o;      /* [max_tok][d] projection output (partial sum before the all-reduce) */
    float *gate;   /* [max_tok][ff] */
    float *up;     /* [max_tok][ff] */
    float *logits; /* [max_logits][nv] this rank's vocabulary slice */
    double *o64;   /* [max_tok][d] row-parallel partial sums of this rank (double: see matmul_f64) */
    double *o64_all; /* [tp][max_tok][d] every rank's partial sums, gathered */
    int32_t *d_pos, *d_seq, *d_tables; /* batch indices in backend memory */
    int64_t *d_slots;
    void *mem;
    size_t bytes;
    float *host_x; /* [max_tok][d] host staging for embedding rows */
    size_t host_bytes; /* host_x's size when it counts against the rank's budget (CPU ranks) */
};

size_t run_state_bytes(const struct model_config *c, const struct model_shard *sh, int64_t max_tok,
                       int64_t max_logits, int64_t max_seq, int64_t max_blocks);
int run_state_create(struct run_state *rs, const struct model *m, int64_t max_tok, int64_t max_logits,
                     int64_t max_seq, int64_t max_blocks, tp_err *e);
void run_state_free(struct run_state *rs, struct kbackend *be);

/* Run the model over the batch; on success rs->logits holds [n_logits][n_vocab_l] in
 * backend memory. comm may be NULL (tp = 1). Every rank of the group must call it with
 * the same batch. Failures: TP_EINVAL for a batch that does not fit the run state or
 * names a token outside the vocabulary, TP_ECOMM from the collectives. */
int forward(struct model *m, struct run_state *rs, struct kv_cache *kv, struct comm *comm, const struct fwd_batch *b,
            tp_err *e);

#endif
