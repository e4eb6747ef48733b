/* sampler.c - penalties, candidate merging, filtering (top_k, top_p, min_p), temperature and
 * the seeded draw, on candidate lists gathered from the ranks' vocabulary slices.
 *
 * Which candidates can be trusted. A merged list is the union of every rank's top
 * K = sampler_n_cand(p) tokens, sorted. Its first min(n, K) entries are exactly the
 * vocabulary's top min(n, K): a token y missing from the list but ranked above entry i
 * belongs to a rank that gave K tokens, all ranked above y, so all above entry i, so i > K.
 * Entries whose probability exceeds the mass not in the list (1 - S, S = sum of the
 * candidates' p) are exact too, since no missing token can outrank them. The longer of the
 * two prefixes is the certified prefix L. Each filter is decided inside it or the sampler
 * asks for the whole vocabulary (return 1).
 *
 * The draw: w_i = exp((l_i - l_0) / T) over the survivors, u uniform in [0, 1) from
 * xoshiro256**, the first i whose running sum of w exceeds u * sum(w). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* Slack on the probability comparisons that certify candidates by mass: covers the error
 * of a float log-sum-exp over a large vocabulary (about 1e-5 in practice). */
#define SAMPLER_MASS_SLACK 1e-3
/* Largest per-rank candidate count accepted from the user (the lists are gathered each step). */
#define SAMPLER_N_CAND_MAX (1 << 20)
/* History windows up to this many in-slice tokens are counted on the stack. */
#define SAMPLER_PEN_STACK 512

/* Undecided cut in sampler_cut. */
#define CUT_UNKNOWN INT64_MAX

void sampler_params_default(struct sampler_params *p) {
    *p = (struct sampler_params){
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .seed = SAMPLER_SEED_RANDOM,
        .n_cand = SAMPLER_N_CAND_DEFAULT,
    };
}

int sampler_params_validate(const struct sampler_params *p, tp_err *e) {
    if (!p) return tp_errf(e, TP_EINVAL, "sampler parameters missing");
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return tp_errf(e, TP_EINVAL,
                       "temperature must be a finite number >= 0, got %g (--temp / request field \"temperature\"; "
                       "0 means greedy)",
                       (double)p->temperature);
    if (p->top_k < 0)
        return tp_errf(e, TP_EINVAL, "top_k must be >= 0, got %d (--top-k / request field \"top_k\"; 0 turns it off)",
                       (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return tp_errf(e, TP_EINVAL,
                       "top_p must be in (0, 1], got %g (--top-p / request field \"top_p\"; 1 turns it off)",
                       (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return tp_errf(e, TP_EINVAL,
                       "min_p must be in [0, 1], got %g (--min-p / request field \"min_p\"; 0 turns it off)",
                       (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return tp_errf(e, TP_EINVAL,
                       "repeat_penalty must be a finite number > 0, got %g (--repeat-penalty / request field "
                       "\"repeat_penalty\"; 1 turns it off)",
                       (double)p->repeat_penalty);
    if (p->repeat_last_n < -1)
        return tp_errf(e, TP_EINVAL,
                       "repeat_last_n must be >= -1, got %d (--repeat-last-n / request field \"repeat_last_n\"; "
                       "-1 = whole history, 0 = no penalties)",
                       (int)p->repeat_last_n);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return tp_errf(e, TP_EINVAL,
                       "presence_penalty must be in [-2, 2], got %g (--presence-penalty / request field "
                       "\"presence_penalty\"; 0 turns it off)",
                       (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return tp_errf(e, TP_EINVAL,
                       "frequency_penalty must be in [-2, 2], got %g (--frequency-penalty / request field "
                       "\"frequency_penalty\"; 0 turns it off)",
                       (double)p->frequency_penalty);
    if (p->n_cand < 1 || p->n_cand > SAMPLER_N_CAND_MAX)
        return tp_errf(e, TP_EINVAL, "n_cand (candidates per rank) must be in [1, %d], got %d; the default is %d",
                       SAMPLER_N_CAND_MAX, (int)p->n_cand, SAMPLER_N_CAND_DEFAULT);
    return 0;
}

int64_t sampler_n_cand(const struct sampler_params *p) {
    int64_t k = TP_MAX((int64_t)p->n_cand, (int64_t)p->top_k);
    return TP_MAX(k, (int64_t)1);
}

/* ---- penalties ---- */

static void pen_apply(const struct sampler_params *p, float *logit, int64_t count) {
    float x = *logit;
    x = x <= 0.0f ? x * p->repeat_penalty : x / p->repeat_penalty;
    x -= (float)count * p->frequency_penalty + (float)(count > 0) * p->presence_penalty;
    *logit = x;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void sampler_penalize(const struct sampler_params *p, float *logits, int64_t vocab_begin, int64_t n,
                      const int32_t *history, int64_t n_hist) {
    if (!p || !logits || !history || n <= 0 || n_hist <= 0 || p->repeat_last_n == 0) return;
    if (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f) return;
    int64_t w = p->repeat_last_n < 0 ? n_hist : TP_MIN(n_hist, (int64_t)p->repeat_last_n);
    const int32_t *h = history + (n_hist - w);
    int64_t end = vocab_begin + n;

    int64_t m = 0;
    for (int64_t i = 0; i < w; i++) m += h[i] >= vocab_begin && h[i] < end;
    if (m == 0) return;

    int32_t stack[SAMPLER_PEN_STACK];
    int32_t *buf = m <= SAMPLER_PEN_STACK ? stack : malloc((size_t)m * sizeof(int32_t));
    if (!buf) {
        /* No memory for the sort: count each token at its first occurrence, O(w^2). */
        for (int64_t i = 0; i < w; i++) {
            if (h[i] < vocab_begin || h[i] >= end) continue;
            bool seen = false;
            for (int64_t j = 0; j < i && !seen; j++) seen = h[j] == h[i];
            if (seen) continue;
            int64_t c = 0;
            for (int64_t j = i; j < w; j++) c += h[j] == h[i];
            pen_apply(p, &logits[h[i] - vocab_begin], c);
        }
        return;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < w; i++)
        if (h[i] >= vocab_begin && h[i] < end) buf[k++] = (int32_t)(h[i] - vocab_begin);
    qsort(buf, (size_t)m, sizeof(int32_t), cmp_i32);
    for (int64_t i = 0; i < m;) {
        int64_t j = i;
        while (j < m && buf[j] == buf[i]) j++;
        pen_apply(p, &logits[buf[i]], j - i);
        i = j;
    }
    if (buf != stack) free(buf);
}

/* ---- merging ---- */

struct cand {
    float logit;
    int32_t id;
};

/* Descending by logit, ties by lower id. NaN never reaches here. */
static int cmp_cand(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int sampler_merge(int32_t *ids_out, float *logits_out, int64_t *n_out, float *lse_out, const int32_t *ids,
                  const float *logits, const int64_t *counts, const float *lses, int n_ranks, tp_err *e) {
    if (n_ranks < 1 || !counts || !lses) return tp_errf(e, TP_EINVAL, "sampler_merge: no ranks given");
    int64_t total = 0;
    double m = -INFINITY;
    for (int r = 0; r < n_ranks; r++) {
        if (counts[r] < 0 || __builtin_add_overflow(total, counts[r], &total))
            return tp_errf(e, TP_EINVAL, "sampler_merge: rank %d sent %lld candidates", r, (long long)counts[r]);
        if (isnan(lses[r]))
            return tp_errf(e, TP_EINVAL, "sampler_merge: rank %d's log-sum-exp is NaN (its logits hold a NaN)", r);
        if (lses[r] > m) m = lses[r];
    }
    if (total == 0 || m == -INFINITY)
        return tp_errf(e, TP_EINVAL, "sampler_merge: the ranks sent no candidates with finite probability");
    size_t bytes;
    struct cand *c = tp_mul_size((size_t)total, sizeof *c, &bytes) ? malloc(bytes) : NULL;
    if (!c) return tp_errf(e, TP_ENOMEM, "sampler_merge: no memory for %lld candidates", (long long)total);
    int64_t k = 0;
    for (int r = 0; r < n_ranks; r++) {
        for (int64_t i = 0; i < counts[r]; i++, k++) {
            if (isnan(logits[k])) {
                free(c);
                return tp_errf(e, TP_EINVAL, "sampler_merge: rank %d's logit of token %d is NaN", r, (int)ids[k]);
            }
            c[k] = (struct cand){logits[k], ids[k]};
        }
    }
    qsort(c, (size_t)total, sizeof *c, cmp_cand);
    for (int64_t i = 0; i < total; i++) {
        ids_out[i] = c[i].id;
        logits_out[i] = c[i].logit;
    }
    free(c);
    double s = 0.0;
    if (isinf(m)) {
        *lse_out = (float)m; /* +inf: some logit was +inf; sampler_dist refuses it */
    } else {
        for (int r = 0; r < n_ranks; r++) s += exp((double)lses[r] - m);
        *lse_out = (float)(m + log(s));
    }
    *n_out = total;
    return 0;
}

/* ---- filtering ---- */

/* Check the candidate list: non-empty, sorted, no NaN, finite best logit and lse. */
static int cand_check(const int32_t *ids, const float *logits, int64_t n, float lse, tp_err *e) {
    if (n < 1 || !ids || !logits) return tp_errf(e, TP_EINVAL, "sampler: empty candidate list");
    if (!isfinite(logits[0]))
        return tp_errf(e, TP_EINVAL,
                       "sampler: the best candidate's logit is %g (token %d); the model produced no usable logits",
                       (double)logits[0], (int)ids[0]);
    if (!isfinite(lse)) return tp_errf(e, TP_EINVAL, "sampler: the vocabulary's log-sum-exp is %g", (double)lse);
    for (int64_t i = 1; i < n; i++) {
        if (isnan(logits[i]) || logits[i] > logits[i - 1] || (logits[i] == logits[i - 1] && ids[i] <= ids[i - 1]))
            return tp_errf(e, TP_EINVAL,
                           "sampler: candidates not sorted by logit descending (ties by id) at entry %lld (token %d, "
                           "logit %g); merge them with sampler_merge",
                           (long long)i, (int)ids[i], (double)logits[i]);
    }
    return 0;
}

/* Length of the certified prefix of an incomplete list (see the top of this file). */
static int64_t certified_prefix(const struct sampler_params *p, const float *logits, int64_t n, double lse) {
    int64_t l_struct = TP_MIN(n, sampler_n_cand(p));
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += exp((double)logits[i] - lse);
    double tail = (s < 1.0 ? 1.0 - s : 0.0) + SAMPLER_MASS_SLACK;
    int64_t l_mass = 0;
    while (l_mass < n && exp((double)logits[l_mass] - lse) > tail) l_mass++;
    return TP_MAX(l_struct, l_mass);
}

/* The survivors of top_k -> top_p -> min_p: the first *n_kept candidates. Returns 0, or 1
 * when a cut falls outside what the candidates can prove. Inputs already checked. */
static int sampler_cut(const struct sampler_params *p, const float *logits, int64_t n, double lse, bool complete,
                       int64_t *n_kept) {
    int64_t limit = complete ? n : certified_prefix(p, logits, n, lse);
    int64_t open_end = complete ? n : CUT_UNKNOWN; /* where a filter that cuts nothing ends */

    int64_t j = open_end;
    if (p->top_k > 0) j = p->top_k <= limit ? p->top_k : open_end;

    if (p->top_p < 1.0f) {
        double cum = 0.0;
        int64_t end = TP_MIN(j, limit);
        for (int64_t i = 0; i < end; i++) {
            cum += exp((double)logits[i] - lse);
            if (cum >= (double)p->top_p) {
                j = i + 1;
                break;
            }
        }
    }

    if (p->min_p > 0.0f) {
        double thr = (double)logits[0] + log((double)p->min_p);
        int64_t end = TP_MIN(j, limit);
        for (int64_t i = 1; i < end; i++) {
            if ((double)logits[i] < thr) {
                j = i;
                break;
            }
        }
    }

    if (j == CUT_UNKNOWN) return 1;
    *n_kept = j;
    return 0;
}

int sampler_dist(const struct sampler_params *p, const int32_t *ids, const float *logits, int64_t n, float lse,
                 bool complete, int64_t *n_kept, double *probs, tp_err *e) {
    int rc = cand_check(ids, logits, n, lse, e);
    if (rc) return rc;
    if (p->temperature <= 0.0f) {
        *n_kept = 1;
        if (probs) probs[0] = 1.0;
        return 0;
    }
    int64_t k;
    if ((rc = sampler_cut(p, logits, n, lse, complete, &k))) return rc;
    *n_kept = k;
    if (!probs) return 0;
    double inv_t = 1.0 / (double)p->temperature, sum = 0.0;
    for (int64_t i = 0; i < k; i++) sum += probs[i] = exp(((double)logits[i] - (double)logits[0]) * inv_t);
    for (int64_t i = 0; i < k; i++) probs[i] /= sum;
    return 0;
}

/* ---- the PRNG: xoshiro256**, seeded through splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static uint64_t random_seed(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ (uint64_t)(uintptr_t)&ts;
        v = splitmix64(&x);
    }
    return v == SAMPLER_SEED_RANDOM ? v - 1 : v;
}

int sampler_init(struct sampler *s, const struct sampler_params *p, tp_err *e) {
    int rc = sampler_params_validate(p, e);
    if (rc) return rc;
    s->p = *p;
    s->seed = p->seed == SAMPLER_SEED_RANDOM ? random_seed() : p->seed;
    uint64_t x = s->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return 0;
}

int sampler_sample(struct sampler *s, const int32_t *ids, const float *logits, int64_t n, float lse, bool complete,
                   int32_t *token, tp_err *e) {
    if (!s) return tp_errf(e, TP_EINVAL, "sampler_sample: no sampler");
    int rc = cand_check(ids, logits, n, lse, e);
    if (rc) return rc;
    const struct sampler_params *p = &s->p;
    if (p->temperature <= 0.0f) {
        *token = ids[0];
        return 0;
    }
    int64_t k;
    if ((rc = sampler_cut(p, logits, n, lse, complete, &k))) return rc;
    /* Two passes over the survivors instead of a buffer: the sum, then the walk. */
    double inv_t = 1.0 / (double)p->temperature, sum = 0.0;
    for (int64_t i = 0; i < k; i++) sum += exp(((double)logits[i] - (double)logits[0]) * inv_t);
    double target = rng_uniform(s->rng) * sum, acc = 0.0;
    int64_t pick = 0;
    for (int64_t i = 0; i < k; i++) {
        double w = exp(((double)logits[i] - (double)logits[0]) * inv_t);
        if (w <= 0.0) break; /* -inf logits and underflow: the rest weigh nothing either */
        pick = i;
        acc += w;
        if (acc > target) break;
    }
    *token = ids[pick];
    return 0;
}

/* ---- logprobs ---- */

int sampler_logprobs(const int32_t *ids, const float *logits, int64_t n, float lse, int32_t token, int64_t n_top,
                     struct sampler_logprob *top, float *token_logprob, tp_err *e) {
    if (n < 1 || !ids || !logits) return tp_errf(e, TP_EINVAL, "logprobs: empty candidate list");
    if (n_top < 0 || n_top > n || (n_top > 0 && !top))
        return tp_errf(e, TP_EINVAL, "logprobs: asked for %lld top entries but only %lld candidates exist",
                       (long long)n_top, (long long)n);
    int64_t at = -1;
    for (int64_t i = 0; i < n && at < 0; i++)
        if (ids[i] == token) at = i;
    if (at < 0)
        return tp_errf(e, TP_EINVAL, "logprobs: token %d is not among the %lld candidates", (int)token, (long long)n);
    if (token_logprob) *token_logprob = (float)((double)logits[at] - (double)lse);
    for (int64_t i = 0; i < n_top; i++)
        top[i] = (struct sampler_logprob){ids[i], (float)((double)logits[i] - (double)lse)};
    return 0;
}

float sampler_logprob(const struct sampler *s, const float *logits, const int32_t *ids, int64_t n, float lse,
                      int32_t token) {
    (void)s;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] == token) return (float)((double)logits[i] - (double)lse);
    return -INFINITY;
}
