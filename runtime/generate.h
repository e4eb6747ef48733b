/* generate.h - one sequence's generation on the coordinator: prompt processing in chunks,
 * the decode loop, streaming detokenization with stop strings, and timing. */
#ifndef TPLLM_GENERATE_H
#define TPLLM_GENERATE_H

#include "engine.h"
#include "tokenizer.h"

struct gen_request {
    const int32_t *prompt;      /* token ids (BOS included if wanted) */
    int64_t n_prompt;
    int64_t max_tokens;         /* generated tokens at most (-1: until the context is full) */
    struct sampler_params sp;
    const char *const *stops;   /* stop strings (may be NULL) */
    size_t n_stops;
    bool ignore_eos;            /* keep going past end-of-generation tokens */
};

enum gen_finish { GEN_FINISH_LENGTH = 0, GEN_FINISH_EOG = 1, GEN_FINISH_STOP = 2, GEN_FINISH_CALLER = 3 };

struct gen_result {
    int64_t n_prompt, n_gen;
    double t_prompt, t_gen;     /* seconds of prompt processing and of decoding */
    enum gen_finish finish;
    int32_t *tokens;            /* generated ids (owned: free()) */
};

/* Called with each newly complete piece of text (valid UTF-8); return non-zero to stop. */
typedef int (*gen_emit_fn)(void *user, const char *text, size_t len);

/* Rank 0 only, while the workers are in engine_worker_loop. Opens a sequence, runs it to
 * completion and closes it. TP_EINVAL for a prompt longer than the context; TP_ECOMM
 * from the collectives (the caller aborts the job). */
int gen_run(struct engine *en, const struct tokenizer *tok, const struct gen_request *r, gen_emit_fn emit, void *user,
            struct gen_result *res, tp_err *e);

#endif
