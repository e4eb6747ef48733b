/* hub.c - jobs between the front-end threads and the coordinator loop (see hub.h). */
#include "hub.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct hub {
    pthread_mutex_t mu; /* inbox, flags */
    pthread_cond_t cv;  /* wakes the coordinator */
    struct hub_job *inbox_head, *inbox_tail;
    bool serving;
    atomic_bool stopping;
    /* the coordinator's active jobs (its thread only) */
    struct hub_job **active;
    int64_t n_active, cap_active;
    /* metrics, under mmu */
    pthread_mutex_t mmu;
    struct hub_metrics m;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void hist_init(struct hub_hist *h, const double *le) {
    memset(h, 0, sizeof *h);
    memcpy(h->le, le, sizeof h->le);
}

static void hist_observe(struct hub_hist *h, double v) {
    int b = 0;
    while (b < HUB_HIST_BUCKETS && v > h->le[b]) b++;
    h->count[b]++;
    h->sum += v;
    h->n++;
}

int hub_create(struct hub **out, tp_err *e) {
    *out = NULL;
    struct hub *h = calloc(1, sizeof *h);
    if (!h) return tp_errf(e, TP_ENOMEM, "out of host memory");
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    pthread_mutex_init(&h->mmu, NULL);
    atomic_init(&h->stopping, false);
    static const double ttft_le[HUB_HIST_BUCKETS] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160};
    static const double itl_le[HUB_HIST_BUCKETS] = {0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15,
                                                    0.2,   0.3,  0.5,  1,    2.5,  5};
    hist_init(&h->m.ttft, ttft_le);
    hist_init(&h->m.itl, itl_le);
    hist_init(&h->m.e2e, ttft_le);
    *out = h;
    return 0;
}

void hub_free(struct hub *h) {
    if (!h) return;
    while (h->inbox_head) {
        struct hub_job *j = h->inbox_head;
        h->inbox_head = j->next;
        hub_job_put(h, j);
    }
    free(h->active);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mmu);
    free(h);
}

struct hub_job *hub_job_new(void) {
    struct hub_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&j->cancel, false);
    j->max_tokens = -1;
    j->refs = 1;
    return j;
}

static void job_free(struct hub_job *j) {
    free(j->prompt);
    for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->text);
    free(j->pieces);
    free(j->tops);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void hub_job_put(struct hub *h, struct hub_job *j) {
    if (!j) return;
    pthread_mutex_lock(&h->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&h->mu);
    if (left == 0) job_free(j);
}

int hub_submit(struct hub *h, struct hub_job *j) {
    pthread_mutex_lock(&h->mu);
    if (!h->serving || atomic_load(&h->stopping)) {
        snprintf(j->error, sizeof j->error, "%s", h->serving ? "the server is shutting down" :
                 "the model is still loading; retry in a few seconds (GET /health says when it is ready)");
        pthread_mutex_unlock(&h->mu);
        return -1;
    }
    j->refs++;
    j->next = NULL;
    if (h->inbox_tail) h->inbox_tail->next = j;
    else h->inbox_head = j;
    h->inbox_tail = j;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

void hub_cancel(struct hub_job *j) { atomic_store(&j->cancel, true); }

void hub_job_wait_locked(struct hub_job *j, int64_t n_pieces, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + timeout_s;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    while (!j->done && j->n_pieces <= n_pieces)
        if (pthread_cond_timedwait(&j->cv, &j->mu, &ts) == ETIMEDOUT) break;
}

void hub_job_wait_accepted_locked(struct hub_job *j) {
    while (!j->accepted && !j->done) pthread_cond_wait(&j->cv, &j->mu);
}

void hub_stop(struct hub *h) {
    atomic_store(&h->stopping, true);
    /* no lock: this may run in a signal handler; the coordinator wakes within its poll */
}

void hub_metrics_get(struct hub *h, struct hub_metrics *out) {
    pthread_mutex_lock(&h->mmu);
    *out = h->m;
    pthread_mutex_unlock(&h->mmu);
    out->since_contact = out->ready ? now_s() - out->since_contact : 0;
    out->healthy = out->ready && out->since_contact < 5.0;
}

void hub_count_http(struct hub *h, bool error) {
    pthread_mutex_lock(&h->mmu);
    h->m.http_requests++;
    if (error) h->m.http_errors++;
    pthread_mutex_unlock(&h->mmu);
}

/* ---- coordinator ---- */

static int text_append(struct hub_job *j, const char *t, size_t n) {
    if (!n) return 0;
    if (j->text_len + n > j->text_cap) {
        size_t cap = TP_MAX(j->text_cap * 2, j->text_len + n + 256);
        char *p = realloc(j->text, cap);
        if (!p) return -1;
        j->text = p;
        j->text_cap = cap;
    }
    memcpy(j->text + j->text_len, t, n);
    j->text_len += n;
    return 0;
}

static void active_remove(struct hub *h, struct hub_job *j) {
    for (int64_t i = 0; i < h->n_active; i++)
        if (h->active[i] == j) {
            h->active[i] = h->active[--h->n_active];
            return;
        }
}

/* The scheduler's events of one job (coordinator thread). */
static void on_event(void *user, const struct sched_event *ev) {
    struct hub_job *j = user;
    struct hub *h = j->hub;
    const double t = now_s();
    pthread_mutex_lock(&j->mu);
    if (ev->kind == SCHED_EV_TOKEN) {
        if (j->n_pieces == j->cap_pieces) {
            int64_t cap = TP_MAX(j->cap_pieces * 2, (int64_t)16);
            struct hub_piece *p = realloc(j->pieces, (size_t)cap * sizeof *p);
            struct sampler_logprob *t =
                j->top_logprobs ? realloc(j->tops, (size_t)cap * (size_t)j->top_logprobs * sizeof *t) : NULL;
            if (p) j->pieces = p;
            if (t) j->tops = t;
            if (p && (t || !j->top_logprobs)) j->cap_pieces = cap;
        }
        if (j->n_pieces < j->cap_pieces && j->top_logprobs) {
            struct sampler_logprob *t = j->tops + j->n_pieces * j->top_logprobs;
            for (int k = 0; k < j->top_logprobs; k++)
                t[k] = k < ev->n_top && ev->top ? ev->top[k] : (struct sampler_logprob){-1, -INFINITY};
        }
        size_t off = j->text_len;
        if (j->n_pieces < j->cap_pieces && text_append(j, ev->text, ev->len) == 0)
            j->pieces[j->n_pieces++] = (struct hub_piece){ev->token, ev->logprob, off, ev->len};
        else
            atomic_store(&j->cancel, true), snprintf(j->error, sizeof j->error, "out of host memory streaming");
        j->n_gen = ev->n_gen;
    } else {
        /* trailing text (held by the detokenizer or the stop matcher) joins the last piece */
        if (ev->len && j->n_pieces > 0 && text_append(j, ev->text, ev->len) == 0)
            j->pieces[j->n_pieces - 1].text_len += ev->len;
        j->done = true;
        j->finish = ev->finish;
        if (ev->error && !j->error[0]) snprintf(j->error, sizeof j->error, "%s", ev->error);
        j->n_prompt_used = ev->n_prompt;
        j->n_gen = ev->n_gen;
        j->t_queue = ev->t_queue;
        j->t_first = ev->t_first;
        j->t_total = ev->t_total;
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&h->mmu);
    if (ev->kind == SCHED_EV_TOKEN) {
        if (ev->n_gen == 1) hist_observe(&h->m.ttft, t - (j->t_last));
        else hist_observe(&h->m.itl, t - j->t_last);
    } else if (ev->finish != SCHED_FINISH_CANCEL && ev->finish != SCHED_FINISH_ERROR) {
        hist_observe(&h->m.e2e, ev->t_total);
    }
    pthread_mutex_unlock(&h->mmu);
    j->t_last = t;
    if (ev->kind == SCHED_EV_DONE) {
        active_remove(h, j);
        hub_job_put(h, j);
    }
}

static void metrics_update(struct hub *h, struct sched *s, struct engine *en, const struct memtrack *ranks, bool contact) {
    pthread_mutex_lock(&h->mmu);
    h->m.st = sched_get_stats(s);
    h->m.kv_blocks_total = engine_n_blocks(en);
    h->m.kv_blocks_free = engine_free_blocks(en);
    h->m.block_size = engine_block_size(en);
    if (ranks) memcpy(h->m.ranks, ranks, (size_t)h->m.n_ranks * sizeof *ranks);
    if (contact) h->m.since_contact = now_s(); /* stored as the time; hub_metrics_get turns it into an age */
    pthread_mutex_unlock(&h->mmu);
}

int hub_run(struct hub *h, struct sched *s, struct engine *en, int64_t plan_budget, tp_err *e) {
    const int tp = engine_tp(en);
    struct memtrack *ranks = calloc((size_t)tp, sizeof *ranks);
    if (!ranks) return tp_errf(e, TP_ENOMEM, "out of host memory");
    int rc = engine_ping(en, ranks, e);
    if (rc) {
        free(ranks);
        return rc;
    }
    pthread_mutex_lock(&h->mmu);
    h->m.n_ranks = TP_MIN(tp, 64);
    h->m.plan_budget = plan_budget;
    h->m.ready = true;
    pthread_mutex_unlock(&h->mmu);
    metrics_update(h, s, en, ranks, true);
    pthread_mutex_lock(&h->mu);
    h->serving = true;
    pthread_mutex_unlock(&h->mu);
    double last_contact = now_s();
    while (!atomic_load(&h->stopping)) {
        pthread_mutex_lock(&h->mu);
        if (!h->inbox_head && !sched_busy(s)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&h->cv, &h->mu, &ts);
        }
        struct hub_job *in = h->inbox_head;
        h->inbox_head = h->inbox_tail = NULL;
        pthread_mutex_unlock(&h->mu);
        while (in) {
            struct hub_job *j = in;
            in = in->next;
            struct sched_req q = {.prompt = j->prompt, .n_prompt = j->n_prompt, .max_tokens = j->max_tokens,
                                  .sp = j->sp, .stops = (const char *const *)j->stops, .n_stops = j->n_stops,
                                  .ignore_eos = j->ignore_eos, .logprobs = j->logprobs,
                                  .top_logprobs = j->top_logprobs};
            tp_err se = {0};
            if (h->n_active == h->cap_active) {
                int64_t cap = TP_MAX(h->cap_active * 2, (int64_t)64);
                struct hub_job **a = realloc(h->active, (size_t)cap * sizeof *a);
                if (a) h->active = a, h->cap_active = cap;
            }
            int64_t id = h->n_active < h->cap_active ? sched_submit(s, &q, on_event, j, &se)
                                                     : tp_errf(&se, TP_ENOMEM, "out of host memory");
            if (id < 0) {
                pthread_mutex_lock(&j->mu);
                j->status = (int)id;
                snprintf(j->error, sizeof j->error, "%s", se.msg);
                j->done = true;
                pthread_cond_broadcast(&j->cv);
                pthread_mutex_unlock(&j->mu);
                hub_job_put(h, j);
                continue;
            }
            j->sched_id = (uint64_t)id;
            j->t_last = now_s();
            pthread_mutex_lock(&j->mu);
            j->accepted = true;
            pthread_cond_broadcast(&j->cv);
            pthread_mutex_unlock(&j->mu);
            j->hub = h;
            h->active[h->n_active++] = j;
        }
        for (int64_t i = 0; i < h->n_active; i++)
            if (atomic_load(&h->active[i]->cancel)) sched_cancel(s, h->active[i]->sched_id);
        if (sched_busy(s)) {
            rc = sched_step(s, e);
            if (rc == TP_ECOMM) break;
            rc = 0; /* other failures ended that step's requests with their error */
            last_contact = now_s();
            metrics_update(h, s, en, NULL, true);
        } else if (now_s() - last_contact >= 1.0) {
            if ((rc = engine_ping(en, ranks, e))) break;
            last_contact = now_s();
            metrics_update(h, s, en, ranks, true);
        } else {
            metrics_update(h, s, en, NULL, false);
        }
    }
    pthread_mutex_lock(&h->mu);
    h->serving = false;
    pthread_mutex_unlock(&h->mu);
    /* jobs still queued: refused; running ones: cancelled by sched_free (the caller's) */
    pthread_mutex_lock(&h->mu);
    struct hub_job *in = h->inbox_head;
    h->inbox_head = h->inbox_tail = NULL;
    pthread_mutex_unlock(&h->mu);
    while (in) {
        struct hub_job *j = in;
        in = in->next;
        pthread_mutex_lock(&j->mu);
        j->status = TP_EIO;
        snprintf(j->error, sizeof j->error, "the server is shutting down");
        j->done = true;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
        hub_job_put(h, j);
    }
    pthread_mutex_lock(&h->mmu);
    h->m.ready = false;
    pthread_mutex_unlock(&h->mmu);
    free(ranks);
    return rc;
}
