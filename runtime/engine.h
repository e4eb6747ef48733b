/* engine.h - the engine step loop: rank 0 (the coordinator) describes each step, every
 * rank runs the forward pass on its shard, and sampling is distributed: each rank
 * reduces its vocabulary slice to candidates, rank 0 draws the tokens.
 *
 * Ranks other than 0 sit in engine_worker_loop, receiving step descriptors by broadcast
 * until rank 0 calls engine_shutdown. */
#ifndef TPLLM_ENGINE_H
#define TPLLM_ENGINE_H

#include "forward.h"
#include "sampler.h"

/* The most candidates a rank may contribute per row (engine_opts.n_cand). */
#define ENGINE_MAX_CAND 4096

struct engine_opts {
    int64_t ctx;              /* tokens per sequence (prompt + generation) */
    int64_t max_batch_tokens; /* tokens per step (prompts are processed in chunks of this) */
    int64_t max_seqs;         /* sequences in flight */
    int64_t block_size;       /* KV tokens per block */
    int64_t n_blocks;         /* KV blocks per rank; 0: enough for max_seqs full contexts */
    enum dtype kv_type;       /* F16 (default) or F32 */
    int n_cand;               /* candidates each rank contributes per row (>= top_k; 1..ENGINE_MAX_CAND) */
    int64_t max_logits;       /* logit rows per step (0: max_seqs; scoring sets it to max_batch_tokens) */
};
/* The logit rows per step these options give. */
static inline int64_t engine_opts_max_logits(const struct engine_opts *o) {
    return o->max_logits > 0 ? o->max_logits : (o->max_seqs > 0 ? o->max_seqs : 1);
}
void engine_opts_default(struct engine_opts *o);
/* Host bytes an engine with these options allocates for its own buffers (planned and tracked as communication). */
size_t engine_host_bytes(const struct engine_opts *o, int64_t n_vocab_l, int tp);

/* Per-row sampling request of a step. */
struct engine_row {
    int32_t seq;                 /* sequence slot */
    const struct sampler_params *params;
    struct sampler *smp;         /* the sequence's sampler (its seeded RNG) */
    const int32_t *history;      /* the sequence's tokens so far (for penalties) */
    int64_t n_history;
    int n_top;                   /* > 0: the n_top most likely tokens (<= 20) go to top[] (with logprob != NULL) */
    struct sampler_logprob *top;
};

struct engine;

/* Create on every rank after the model is loaded (collective: all ranks must call it). */
int engine_create(struct engine **out, struct model *m, struct comm *comm, const struct engine_opts *o, tp_err *e);
void engine_free(struct engine *en);
int64_t engine_n_blocks(const struct engine *en);
int64_t engine_block_size(const struct engine *en);
int64_t engine_ctx(const struct engine *en);
int64_t engine_max_batch(const struct engine *en);
int64_t engine_max_seqs(const struct engine *en); /* sequence slots */
int engine_n_cand(const struct engine *en);       /* sampling candidates per rank (the largest top_k) */
int engine_rank(const struct engine *en);

/* ---- coordinator side (rank 0) ---- */

/* A sequence slot with its block table; returns the slot or TP_ENOMEM when no slot or
 * not enough free KV blocks for n_tokens (the caller waits or preempts). */
int engine_seq_open(struct engine *en, int64_t n_tokens, tp_err *e);
/* Make sure seq can hold n_tokens in total (allocating blocks). TP_ENOMEM if none free. */
int engine_seq_reserve(struct engine *en, int seq, int64_t n_tokens, tp_err *e);
void engine_seq_close(struct engine *en, int seq);
int64_t engine_free_blocks(const struct engine *en);

/* One step over `n_tok` tokens: tokens[i] of sequence seq[i] at position pos[i]. For the
 * rows listed in `rows` (batch row index + sampling request), the sampled token is
 * written to out[j] (and its log-probability to logprob[j] when logprob != NULL).
 * Rank 0 only; workers follow in engine_worker_loop. */
int engine_step(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                int64_t n_rows, const int32_t *row_idx, const struct engine_row *rows, int32_t *out,
                float *logprob, tp_err *e);

/* Teacher-forced scoring: for each row_idx[j], -log p(target[j]) under the model. Rank 0 only. */
int engine_score(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                 int64_t n_rows, const int32_t *row_idx, const int32_t *target, double *nll, tp_err *e);

/* Full logits of the listed rows, gathered on rank 0: out[j][n_vocab]. Rank 0 only. */
int engine_logits(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                  int64_t n_rows, const int32_t *row_idx, float *out, tp_err *e);

/* Rank 0: a heartbeat while idle (workers wait in a collective with a timeout) that also
 * gathers every rank's memory tracker into all[0 .. tp). TP_ECOMM when a rank is gone. */
struct memtrack;
int engine_ping(struct engine *en, struct memtrack *all, tp_err *e);
int engine_tp(const struct engine *en);

/* Rank 0: release the workers from their loop (they return 0). */
int engine_shutdown(struct engine *en, tp_err *e);

/* ---- worker side (ranks > 0) ---- */
int engine_worker_loop(struct engine *en, tp_err *e);

#endif
