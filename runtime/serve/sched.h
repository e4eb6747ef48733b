/* sched.h - the coordinator's scheduler: many sequences, one engine step at a time.
 *
 * Continuous batching (as vLLM and llama-server do): each sched_step packs, under the
 * engine's max_batch_tokens, one decode token of every running sequence and then chunks
 * of the waiting prompts (chunked prefill), first come first served, up to the engine's
 * sequence slots. New requests join at the next step; finished ones leave at once.
 *
 * Memory: a sequence holds the paged KV blocks of the tokens it has computed. Before a
 * step, every running sequence that decodes gets the block its next token needs; when
 * none is free the newest running sequence is preempted: its blocks are freed and it
 * goes back to the front of the queue, to be recomputed from its tokens later (vLLM's
 * RECOMPUTE). Nothing is ever allocated past the engine's blocks, which the memory plan
 * sized. A request that could never fit one sequence (prompt + max_tokens beyond the
 * context or the whole cache) is refused by sched_submit.
 *
 * Determinism: a token's forward pass does not depend on the other tokens of its step
 * (the kernels' per-token arithmetic is fixed, the reductions are ordered), and a
 * recomputed sequence gets back the same cache bits; the sampler state lives in the
 * sequence. So a request gives the same tokens whatever else is running, and the same as
 * `tpllm generate`.
 *
 * Rank 0 only, on one thread (the one that drives the engine). Front ends hand requests
 * over through their own queue and learn results through the sequence's callback. */
#ifndef TPLLM_SCHED_H
#define TPLLM_SCHED_H

#include "../engine.h"
#include "../generate.h"
#include "../stop.h"
#include "../tokenizer.h"

/* What one request asks for (copied by sched_submit). */
struct sched_req {
    const int32_t *prompt;    /* token ids, BOS included if wanted */
    int64_t n_prompt;
    int64_t max_tokens;       /* -1: until the context is full */
    struct sampler_params sp; /* validated by sched_submit */
    const char *const *stops;
    size_t n_stops;
    bool ignore_eos;
    bool logprobs;            /* report each generated token's log-probability */
    int top_logprobs;         /* and the this many most likely tokens at each step (0..SCHED_MAX_TOP) */
};
#define SCHED_MAX_TOP 20

enum sched_finish {
    SCHED_FINISH_LENGTH = GEN_FINISH_LENGTH, /* max_tokens or the context */
    SCHED_FINISH_EOG = GEN_FINISH_EOG,       /* an end-of-generation token */
    SCHED_FINISH_STOP = GEN_FINISH_STOP,     /* a stop string */
    SCHED_FINISH_CANCEL = GEN_FINISH_CALLER, /* cancelled (the client went away) */
    SCHED_FINISH_ERROR = 4,                  /* the step failed; the message says why */
};

/* Events of one sequence, called on the scheduler's thread:
 *   SCHED_EV_TOKEN   a generated token: id, its log-probability (when asked), and the text
 *                    it completes (valid UTF-8, stop strings held back; may be empty);
 *   SCHED_EV_DONE    the end: finish reason, counts, timings; nothing follows.
 * The callback must not call back into the scheduler. */
enum sched_ev_kind { SCHED_EV_TOKEN = 1, SCHED_EV_DONE = 2 };
struct sched_event {
    enum sched_ev_kind kind;
    uint64_t id;
    int32_t token;
    float logprob;
    const struct sampler_logprob *top; /* n_top most likely tokens of this step (logprobs asked) */
    int n_top;
    const char *text;         /* not NUL-terminated; valid during the call */
    size_t len;
    enum sched_finish finish;
    const char *error;        /* SCHED_FINISH_ERROR: what failed */
    int64_t n_prompt, n_gen;
    double t_queue, t_first, t_total; /* seconds: waiting before the first step, to the first token, in all */
};
typedef void (*sched_cb)(void *user, const struct sched_event *ev);

/* Counters for /metrics and the benchmark. Monotonic except running/waiting. */
struct sched_stats {
    int64_t running, waiting;
    int64_t submitted, finished, refused, preemptions, cancelled;
    int64_t prompt_tokens, gen_tokens, recomputed_tokens;
    int64_t steps;
    double t_forward, t_sched; /* seconds in engine_step, and in the scheduler around it */
};

struct sched;

/* A scheduler over engine en (rank 0, workers in engine_worker_loop) and tokenizer tok,
 * holding at most max_waiting queued requests (sched_submit refuses more). */
int sched_create(struct sched **out, struct engine *en, const struct tokenizer *tok, int64_t max_waiting, tp_err *e);
/* Cancels what is left (SCHED_EV_DONE with SCHED_FINISH_CANCEL) and frees. NULL is a no-op. */
void sched_free(struct sched *s);

/* Queues a request. Returns its id (> 0) or a negative status with e naming the problem:
 * TP_EINVAL (empty prompt, bad sampling field, prompt + max_tokens beyond the context or
 * the cache: the sizes are in the message), TP_EFIT when the queue is full (try later).
 * cb receives the sequence's events until SCHED_EV_DONE. */
int64_t sched_submit(struct sched *s, const struct sched_req *r, sched_cb cb, void *user, tp_err *e);
/* Ends request id at the next step (its blocks freed); unknown ids are ignored. */
void sched_cancel(struct sched *s, uint64_t id);

/* Whether any request is running or waiting. */
bool sched_busy(const struct sched *s);
/* One engine step over the current batch (nothing when idle). Finished sequences get
 * their SCHED_EV_DONE during the call. Returns 0, or the engine's status when the step
 * failed: TP_ECOMM means the job is broken (abort); other failures end the sequences
 * of that step with SCHED_FINISH_ERROR and the scheduler goes on. */
int sched_step(struct sched *s, tp_err *e);
struct sched_stats sched_get_stats(const struct sched *s);

#endif
