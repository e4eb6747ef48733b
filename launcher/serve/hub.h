/* hub.h - the bridge between the front ends (HTTP and ZeroMQ threads) and the coordinator
 * loop on rank 0's main thread, which alone drives the engine and its MPI collectives.
 *
 * A front end fills a hub_job (token ids, sampling, stops), hub_submit()s it, and waits on
 * the job (hub_job_wait) for the pieces the coordinator appends: one per generated token,
 * with its text (valid UTF-8, stop strings already held back) and log-probability, then
 * the end (finish reason, counts, or the error that refused it). Jobs are reference
 * counted: the front end and the coordinator each hold one. A front end that loses its
 * client calls hub_cancel; the sequence's blocks are freed at the next step.
 *
 * The coordinator (hub_run) takes new jobs and cancellations between steps, steps the
 * scheduler while there is work, and otherwise sends a heartbeat to the workers every
 * second (which also gathers every rank's memory tracker for /metrics and /health). */
#ifndef TPLLM_HUB_H
#define TPLLM_HUB_H

#include <pthread.h>

#include "kernels/memtrack.h"
#include "runtime/serve/sched.h"

#define HUB_MAX_STOPS 16

/* One generated token: its id, log-probability, and the text it completed, at
 * job->text[text_off .. text_off + text_len). */
struct hub_piece {
    int32_t token;
    float logprob;
    size_t text_off, text_len;
};

struct hub_job {
    /* the request (set before hub_submit, then read-only) */
    int32_t *prompt; /* malloc'd; freed with the job */
    int64_t n_prompt;
    int64_t max_tokens; /* -1: to the end of the context */
    struct sampler_params sp;
    char *stops[HUB_MAX_STOPS]; /* malloc'd */
    size_t n_stops;
    bool ignore_eos, logprobs;
    int top_logprobs; /* 0..SCHED_MAX_TOP alternatives per token (with logprobs) */

    /* the answer, under mu (cv signals every change) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *text; /* all pieces' text, in order */
    size_t text_len, text_cap;
    struct hub_piece *pieces;
    int64_t n_pieces, cap_pieces;
    struct sampler_logprob *tops; /* [cap_pieces][top_logprobs]: piece i's alternatives, most likely first */
    bool accepted;   /* the scheduler took it (its limits checked): the answer is a 200 */
    bool done;
    int status;      /* 0, or the refusal: TP_EINVAL (400), TP_EFIT (queue full: 429), other (500) */
    char error[1024]; /* what refused or failed it */
    enum sched_finish finish;
    int64_t n_prompt_used, n_gen;
    double t_queue, t_first, t_total;

    /* the coordinator's */
    _Atomic bool cancel;
    struct hub *hub; /* set while the coordinator holds the job */
    uint64_t sched_id;
    double t_last; /* time of the last token: inter-token latency */
    int refs;      /* under the hub's lock */
    struct hub_job *next;
};

/* Histogram with fixed upper bounds (Prometheus: cumulative when exported). */
#define HUB_HIST_BUCKETS 14
struct hub_hist {
    double le[HUB_HIST_BUCKETS]; /* upper bounds, seconds */
    int64_t count[HUB_HIST_BUCKETS + 1]; /* per bucket, the last is +Inf */
    double sum;
    int64_t n;
};

/* A copy of what /metrics and /health show. */
struct hub_metrics {
    bool ready;            /* the model is loaded and the coordinator runs */
    bool healthy;          /* every rank answered the last heartbeat or step within 5 s */
    double since_contact;  /* seconds since all ranks last answered */
    struct sched_stats st;
    int64_t kv_blocks_total, kv_blocks_free, block_size;
    int n_ranks;
    struct memtrack ranks[64]; /* the first n_ranks (up to 64) */
    int64_t plan_budget;
    struct hub_hist ttft, itl, e2e;
    int64_t http_requests, http_errors;
};

struct hub;

int hub_create(struct hub **out, tp_err *e);
void hub_free(struct hub *h);

/* A job with one reference (the caller's). NULL when out of memory. */
struct hub_job *hub_job_new(void);
void hub_job_put(struct hub *h, struct hub_job *j);

/* Queue j for the coordinator (the hub takes its own reference). Returns 0, or -1 when
 * the hub is not serving (still loading, or stopping): j->error says which. */
int hub_submit(struct hub *h, struct hub_job *j);
/* Ask the coordinator to end j (a client that went away). */
void hub_cancel(struct hub_job *j);
/* Wait (at most timeout_s) until j has more than n_pieces pieces or is done. Call with
 * j->mu held (pthread_cond_timedwait). */
void hub_job_wait_locked(struct hub_job *j, int64_t n_pieces, double timeout_s);
/* Wait until the coordinator accepted or refused j (j->mu held). */
void hub_job_wait_accepted_locked(struct hub_job *j);

/* Coordinator side (rank 0's main thread). hub_run serves until hub_stop; returns 0, or
 * TP_ECOMM (with e) when a collective failed: the job must be aborted. */
int hub_run(struct hub *h, struct sched *s, struct engine *en, int64_t plan_budget, tp_err *e);
/* From any thread or a signal handler: hub_run returns after the current step. */
void hub_stop(struct hub *h);

void hub_metrics_get(struct hub *h, struct hub_metrics *out);
void hub_count_http(struct hub *h, bool error);

#endif
