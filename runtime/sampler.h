/* sampler.h - token sampling over candidate lists, built for a vocabulary split across ranks.
 *
 * With tensor parallelism each rank holds the logits of one vocabulary slice. A step goes:
 *   1. every rank: sampler_penalize on its slice (repetition / presence / frequency);
 *   2. every rank: the kernels' `topk` op reduces the slice to its sampler_n_cand(p)
 *      largest logits (global ids) and the slice's log-sum-exp;
 *   3. rank 0: gathers them, sampler_merge builds one sorted list and the vocabulary's
 *      log-sum-exp, sampler_sample draws the token.
 * When the candidates cannot prove which tokens survive the filters (top_k off with a
 * wide top-p nucleus or a low min_p), sampler_sample answers 1 ("need more candidates")
 * and the caller gathers the whole vocabulary and calls again with complete = true.
 * The sampler never silently approximates. docs/sampling.md describes the flags and order.
 *
 * Filter order (llama.cpp's default chain): top_k -> top_p -> min_p -> temperature -> draw.
 * top_p and min_p use the whole-vocabulary probabilities p_i = exp(logit_i - lse) at
 * temperature 1 (after penalties); temperature only shapes the final draw. */
#ifndef TPLLM_SAMPLER_H
#define TPLLM_SAMPLER_H

#include "../kernels/base.h"

/* The seed value that asks sampler_init for a random seed (llama.cpp's default is random too). */
#define SAMPLER_SEED_RANDOM UINT64_MAX
/* Candidates a rank contributes unless top_k asks for more. */
#define SAMPLER_N_CAND_DEFAULT 64

struct sampler_params {
    float temperature;       /* <= 0: greedy (argmax, ties: lowest id) */
    int32_t top_k;           /* keep the k most likely tokens; 0 = off */
    float top_p;             /* keep the smallest prefix of mass >= top_p; 1 = off */
    float min_p;             /* keep tokens with p >= min_p * p_max; 0 = off */
    float repeat_penalty;    /* divide positive / multiply negative logits of seen tokens; 1 = off */
    int32_t repeat_last_n;   /* history window for all penalties; -1 = whole history, 0 = off */
    float presence_penalty;  /* subtracted once from every seen token; 0 = off */
    float frequency_penalty; /* subtracted once per occurrence; 0 = off */
    uint64_t seed;           /* PRNG seed; SAMPLER_SEED_RANDOM = pick one */
    int32_t n_cand;          /* candidates per rank; the effective count is max(n_cand, top_k) */
};

/* llama.cpp-like defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no
 * penalties (repeat_penalty 1, window 64), random seed, 64 candidates per rank. */
void sampler_params_default(struct sampler_params *p);

/* 0 when every field is in range; otherwise TP_EINVAL with a message naming the field,
 * its command-line flag, its valid range and the value given, e.g.
 * "top_p must be in (0, 1], got 1.5 (--top-p / request field \"top_p\"; 1 turns it off)". */
int sampler_params_validate(const struct sampler_params *p, tp_err *e);

/* Candidates each rank must contribute: max(n_cand, top_k), at least 1. A rank whose
 * slice is smaller contributes its whole slice. */
int64_t sampler_n_cand(const struct sampler_params *p);

/* Apply the penalties to logits[0..n), the slice [vocab_begin, vocab_begin + n) of the
 * vocabulary, in place, like llama.cpp's penalties sampler: each token of the slice that
 * occurs c > 0 times in the last repeat_last_n entries of history[0..n_hist) gets
 *   logit = logit > 0 ? logit / repeat_penalty : logit * repeat_penalty
 *   logit -= c * frequency_penalty + presence_penalty
 * History entries outside the slice are ignored, so every rank penalizes only its own
 * tokens and the result equals the full-vocabulary one. Never fails (large windows use
 * a heap buffer and fall back to a slower scan if it cannot be allocated). */
void sampler_penalize(const struct sampler_params *p, float *logits, int64_t vocab_begin, int64_t n,
                      const int32_t *history, int64_t n_hist);

/* Merge the candidates of n_ranks ranks into one list sorted by logit descending, ties
 * by lower id. Rank r contributed counts[r] entries (0 for an empty slice), stored one
 * rank after another in ids[] / logits[] (any order within a rank), and its slice's
 * log-sum-exp lses[r] (-INFINITY for an empty slice). Writes the sum of counts entries
 * to ids_out / logits_out (they may not alias the inputs), *n_out, and
 * *lse_out = log(sum_r exp(lses[r])) computed in double. TP_EINVAL (naming the rank and
 * token) for a NaN logit or lse, a negative count or an empty total. */
int sampler_merge(int32_t *ids_out, float *logits_out, int64_t *n_out, float *lse_out, const int32_t *ids,
                  const float *logits, const int64_t *counts, const float *lses, int n_ranks, tp_err *e);

/* Per-sequence sampling state: the parameters and the PRNG (xoshiro256**). A plain value
 * that holds no resources: embed it, copy it, drop it. */
struct sampler {
    struct sampler_params p;
    uint64_t seed; /* the seed actually used (random seeds are resolved here) */
    uint64_t rng[4];
};

/* Validate p (TP_EINVAL as sampler_params_validate) and seed the PRNG: the same seed
 * gives the same draws on every machine. SAMPLER_SEED_RANDOM draws a seed from the OS. */
int sampler_init(struct sampler *s, const struct sampler_params *p, tp_err *e);

/* The distribution the sampler draws from, for candidates ids/logits[0..n) sorted by
 * logit descending (ties by lower id; checked) with lse the log-sum-exp over the whole
 * vocabulary. complete says the list is the whole vocabulary; otherwise it must be the
 * union of every rank's top sampler_n_cand(p) tokens (sampler_merge's output).
 * Returns 0 with *n_kept (the survivors are the first *n_kept candidates) and, when probs
 * is not NULL (room for n), probs[0..n_kept) = their final probabilities (temperature
 * applied, summing to 1; greedy: 1 for the argmax). Returns 1 when !complete and the
 * candidates cannot prove which tokens survive ("need more candidates": gather the whole
 * vocabulary and call again with complete = true). TP_EINVAL for unsorted, NaN or empty input. */
int sampler_dist(const struct sampler_params *p, const int32_t *ids, const float *logits, int64_t n, float lse,
                 bool complete, int64_t *n_kept, double *probs, tp_err *e);

/* Draw one token from the candidates (same contract as sampler_dist) into *token.
 * Returns 0, 1 (need more candidates: nothing drawn, the PRNG did not advance) or
 * TP_EINVAL. Greedy (temperature <= 0) never needs more candidates. */
int sampler_sample(struct sampler *s, const int32_t *ids, const float *logits, int64_t n, float lse, bool complete,
                   int32_t *token, tp_err *e);

/* One entry of an API logprobs answer. */
struct sampler_logprob {
    int32_t id;
    float logprob; /* log p under the whole-vocabulary distribution after penalties, temperature 1 */
};

/* Log-probabilities for the API (OpenAI "logprobs"): *token_logprob = logit(token) - lse,
 * and top[0..n_top) = the n_top most likely candidates. The candidates are sorted as for
 * sampler_dist; n_top must be <= n (and the first sampler_n_cand entries of a merged list
 * are exact, so n_top <= 20 is always safe). TP_EINVAL when token is not a candidate or
 * n_top is out of range. */
int sampler_logprobs(const int32_t *ids, const float *logits, int64_t n, float lse, int32_t token, int64_t n_top,
                     struct sampler_logprob *top, float *token_logprob, tp_err *e);

/* The chosen token's log-probability alone (logit - lse, as above), for callers that keep
 * the logits and ids side by side; -INFINITY when token is not among the n candidates.
 * s is unused today (kept so that post-temperature logprobs can be added without a new
 * signature) and may be NULL. */
float sampler_logprob(const struct sampler *s, const float *logits, const int32_t *ids, int64_t n, float lse,
                      int32_t token);

#endif
