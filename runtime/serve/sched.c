/* sched.c - continuous batching over the engine: admission, chunked prefill, decode,
 * preemption by recompute, streaming detokenization and stop strings per sequence. */
#include "sched.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One request's state. Its tokens are the prompt then the generated ids; the first
 * n_done of them have their K/V in the cache (0 while waiting, also after a preemption). */
struct seq {
    uint64_t id;
    sched_cb cb;
    void *user;
    int32_t *tok;
    int64_t n_tok, cap, n_prompt;
    int64_t n_done;
    int64_t max_new; /* generated tokens at most (resolved against the context) */
    int64_t n_gen;
    int slot;        /* engine sequence slot while running, else -1 */
    uint64_t order;  /* admission order: the largest running one is preempted first */
    struct sampler smp;
    struct stop_matcher *stop;
    struct detok dt;
    bool ignore_eos, logprobs, cancel;
    int n_top;
    struct sampler_logprob top[SCHED_MAX_TOP];
    double t_submit, t_start, t_first;
    struct seq *next; /* waiting list */
};

struct sched {
    struct engine *en;
    const struct tokenizer *tok;
    int64_t max_waiting;
    struct seq *wait_head, *wait_tail;
    int64_t n_waiting;
    struct seq **run; /* running sequences in admission order */
    int64_t n_run, max_run;
    uint64_t next_id, next_order;
    struct sched_stats st;
    /* step buffers, sized at creation (max_batch_tokens tokens, max_seqs rows) */
    int32_t *b_tok, *b_pos, *b_seq, *b_row, *b_out;
    float *b_lp;
    struct engine_row *b_rows;
    struct seq **b_rs;   /* the sequence of each row */
    struct seq **b_part; /* the sequences of the step, with their token count */
    int64_t *b_cnt;
};

static int64_t blocks_for(const struct sched *s, int64_t n_tok) {
    int64_t bs = engine_block_size(s->en);
    return (n_tok + bs - 1) / bs;
}

static void seq_free(struct seq *q) {
    if (!q) return;
    stop_free(q->stop);
    detok_free(&q->dt);
    free(q->tok);
    free(q);
}

/* The end of a sequence: release its slot, flush its text, tell the client, free it. */
static void seq_finish(struct sched *s, struct seq *q, enum sched_finish why, const char *error) {
    struct sched_event ev = {.kind = SCHED_EV_DONE, .id = q->id, .finish = why, .error = error,
                             .n_prompt = q->n_prompt, .n_gen = q->n_gen};
    if (q->slot >= 0) engine_seq_close(s->en, q->slot);
    q->slot = -1;
    struct stop_out so = {0};
    char *tail = NULL;
    size_t tail_len = 0;
    if (why == SCHED_FINISH_LENGTH || why == SCHED_FINISH_EOG) {
        /* what the detokenizer and the stop matcher still hold is text of the answer */
        const char *t;
        size_t n;
        tp_err e = {0};
        if (detok_flush(&q->dt, &t, &n, &e) == 0 && stop_feed(q->stop, t, n, &so, &e) == 0 && so.len) {
            tail = malloc(so.len);
            if (tail) memcpy(tail, so.text, so.len), tail_len = so.len;
        }
        if (!so.stopped) {
            stop_flush(q->stop, &so);
            if (so.len) {
                char *t2 = realloc(tail, tail_len + so.len);
                if (t2) {
                    memcpy(t2 + tail_len, so.text, so.len);
                    tail = t2;
                    tail_len += so.len;
                }
            }
        }
    }
    ev.text = tail;
    ev.len = tail_len;
    double t = now_s();
    ev.t_queue = (q->t_start > 0 ? q->t_start : t) - q->t_submit;
    ev.t_first = q->t_first > 0 ? q->t_first - q->t_submit : 0;
    ev.t_total = t - q->t_submit;
    s->st.finished++;
    if (why == SCHED_FINISH_CANCEL) s->st.cancelled++;
    q->cb(q->user, &ev);
    free(tail);
    seq_free(q);
}

int sched_create(struct sched **out, struct engine *en, const struct tokenizer *tok, int64_t max_waiting, tp_err *e) {
    *out = NULL;
    struct sched *s = calloc(1, sizeof *s);
    if (!s) return tp_errf(e, TP_ENOMEM, "scheduler: out of host memory");
    s->en = en;
    s->tok = tok;
    s->max_waiting = max_waiting > 0 ? max_waiting : 1;
    s->next_id = 1;
    const int64_t nb = engine_max_batch(en), nr = engine_max_seqs(en);
    s->max_run = nr;
    s->run = calloc((size_t)nr, sizeof *s->run);
    s->b_tok = malloc((size_t)nb * sizeof(int32_t));
    s->b_pos = malloc((size_t)nb * sizeof(int32_t));
    s->b_seq = malloc((size_t)nb * sizeof(int32_t));
    s->b_row = malloc((size_t)nr * sizeof(int32_t));
    s->b_out = malloc((size_t)nr * sizeof(int32_t));
    s->b_lp = malloc((size_t)nr * sizeof(float));
    s->b_rows = calloc((size_t)nr, sizeof *s->b_rows);
    s->b_rs = calloc((size_t)nr, sizeof *s->b_rs);
    s->b_part = calloc((size_t)nr, sizeof *s->b_part);
    s->b_cnt = calloc((size_t)nr, sizeof *s->b_cnt);
    if (!s->run || !s->b_tok || !s->b_pos || !s->b_seq || !s->b_row || !s->b_out || !s->b_lp || !s->b_rows ||
        !s->b_rs || !s->b_part || !s->b_cnt) {
        sched_free(s);
        return tp_errf(e, TP_ENOMEM, "scheduler: out of host memory for %lld-token steps", (long long)nb);
    }
    *out = s;
    return 0;
}

void sched_free(struct sched *s) {
    if (!s) return;
    while (s->n_run > 0) seq_finish(s, s->run[--s->n_run], SCHED_FINISH_CANCEL, NULL);
    while (s->wait_head) {
        struct seq *q = s->wait_head;
        s->wait_head = q->next;
        seq_finish(s, q, SCHED_FINISH_CANCEL, NULL);
    }
    free(s->run);
    free(s->b_tok);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_row);
    free(s->b_out);
    free(s->b_lp);
    free(s->b_rows);
    free(s->b_rs);
    free(s->b_part);
    free(s->b_cnt);
    free(s);
}

/* The most tokens one sequence can ever hold: the context, or the whole cache. */
static int64_t seq_capacity(const struct sched *s) {
    return TP_MIN(engine_ctx(s->en), engine_n_blocks(s->en) * engine_block_size(s->en));
}

int64_t sched_submit(struct sched *s, const struct sched_req *r, sched_cb cb, void *user, tp_err *e) {
    if (!r->prompt || r->n_prompt < 1) {
        s->st.refused++;
        return tp_errf(e, TP_EINVAL, "the prompt is empty; give some text");
    }
    const int64_t cap = seq_capacity(s);
    if (r->max_tokens < -1 || r->max_tokens == 0) {
        s->st.refused++;
        return tp_errf(e, TP_EINVAL, "max_tokens must be at least 1, got %lld", (long long)r->max_tokens);
    }
    if (r->n_prompt >= cap || (r->max_tokens > 0 && r->n_prompt + r->max_tokens > cap)) {
        s->st.refused++;
        return tp_errf(e, TP_EINVAL,
                       "this server holds at most %lld tokens per sequence (context %lld, KV cache %lld tokens), but "
                       "the request needs %lld (%lld in the prompt, max_tokens %lld); shorten the prompt or lower "
                       "max_tokens",
                       (long long)cap, (long long)engine_ctx(s->en),
                       (long long)(engine_n_blocks(s->en) * engine_block_size(s->en)),
                       (long long)(r->n_prompt + (r->max_tokens > 0 ? r->max_tokens : 1)), (long long)r->n_prompt,
                       (long long)r->max_tokens);
    }
    if (sampler_n_cand(&r->sp) > engine_n_cand(s->en)) {
        s->st.refused++;
        return tp_errf(e, TP_EINVAL, "top_k %d exceeds the %d candidates per rank this server was started with "
                       "(--n-cand); lower top_k", r->sp.top_k, engine_n_cand(s->en));
    }
    if (s->n_waiting >= s->max_waiting) {
        s->st.refused++;
        return tp_errf(e, TP_EFIT, "the queue is full (%lld requests waiting); retry later", (long long)s->n_waiting);
    }
    struct seq *q = calloc(1, sizeof *q);
    if (!q) return tp_errf(e, TP_ENOMEM, "out of host memory for a request");
    q->max_new = r->max_tokens > 0 ? r->max_tokens : cap - r->n_prompt;
    q->cap = r->n_prompt + q->max_new + 1;
    q->tok = malloc((size_t)q->cap * sizeof(int32_t));
    int rc = q->tok ? 0 : tp_errf(e, TP_ENOMEM, "out of host memory for a request of %lld tokens", (long long)q->cap);
    detok_init(&q->dt, s->tok, false);
    if (!rc) rc = sampler_init(&q->smp, &r->sp, e);
    if (!rc) rc = stop_init(&q->stop, r->stops, r->n_stops, e);
    if (rc) {
        s->st.refused++;
        seq_free(q);
        return rc;
    }
    memcpy(q->tok, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    q->n_tok = q->n_prompt = r->n_prompt;
    q->slot = -1;
    q->cb = cb;
    q->user = user;
    q->ignore_eos = r->ignore_eos;
    q->logprobs = r->logprobs;
    q->n_top = r->logprobs ? TP_MAX(0, TP_MIN(r->top_logprobs, SCHED_MAX_TOP)) : 0;
    q->t_submit = now_s();
    q->id = s->next_id++;
    if (s->wait_tail) s->wait_tail->next = q;
    else s->wait_head = q;
    s->wait_tail = q;
    s->n_waiting++;
    s->st.submitted++;
    return (int64_t)q->id;
}

void sched_cancel(struct sched *s, uint64_t id) {
    for (int64_t i = 0; i < s->n_run; i++)
        if (s->run[i]->id == id) s->run[i]->cancel = true;
    for (struct seq *q = s->wait_head; q; q = q->next)
        if (q->id == id) q->cancel = true;
}

bool sched_busy(const struct sched *s) { return s->n_run > 0 || s->wait_head != NULL; }

struct sched_stats sched_get_stats(const struct sched *s) {
    struct sched_stats st = s->st;
    st.running = s->n_run;
    st.waiting = s->n_waiting;
    return st;
}

/* Running sequence i goes back to the front of the queue, its blocks freed. */
static void preempt(struct sched *s, int64_t i) {
    struct seq *q = s->run[i];
    memmove(s->run + i, s->run + i + 1, (size_t)(s->n_run - i - 1) * sizeof *s->run);
    s->n_run--;
    engine_seq_close(s->en, q->slot);
    q->slot = -1;
    s->st.recomputed_tokens += q->n_done;
    q->n_done = 0;
    q->next = s->wait_head;
    s->wait_head = q;
    if (!s->wait_tail) s->wait_tail = q;
    s->n_waiting++;
    s->st.preemptions++;
}

/* Drop cancelled sequences, running or waiting. */
static void reap_cancelled(struct sched *s) {
    for (int64_t i = 0; i < s->n_run;) {
        if (s->run[i]->cancel) {
            struct seq *q = s->run[i];
            memmove(s->run + i, s->run + i + 1, (size_t)(s->n_run - i - 1) * sizeof *s->run);
            s->n_run--;
            seq_finish(s, q, SCHED_FINISH_CANCEL, NULL);
        } else {
            i++;
        }
    }
    struct seq **pp = &s->wait_head, *last = NULL;
    while (*pp) {
        struct seq *q = *pp;
        if (q->cancel) {
            *pp = q->next;
            s->n_waiting--;
            seq_finish(s, q, SCHED_FINISH_CANCEL, NULL);
        } else {
            last = q;
            pp = &q->next;
        }
    }
    s->wait_tail = last;
}

/* Append a sampled token to q and stream what it completes; returns true when q ended
 * (the caller finishes it with *why). */
static bool seq_take(struct sched *s, struct seq *q, int32_t t, float lp, enum sched_finish *why) {
    q->tok[q->n_tok++] = t;
    q->n_gen++;
    s->st.gen_tokens++;
    if (q->n_gen == 1) q->t_first = now_s();
    struct sched_event ev = {.kind = SCHED_EV_TOKEN, .id = q->id, .token = t, .logprob = lp, .n_prompt = q->n_prompt,
                             .n_gen = q->n_gen, .top = q->top, .n_top = q->n_top};
    if (!q->ignore_eos && tokenizer_is_eog(s->tok, t)) {
        q->cb(q->user, &ev);
        *why = SCHED_FINISH_EOG;
        return true;
    }
    const char *text;
    size_t len;
    struct stop_out so = {0};
    tp_err e = {0};
    if (detok_push(&q->dt, t, &text, &len, &e) == 0 && stop_feed(q->stop, text, len, &so, &e) == 0) {
        ev.text = so.text;
        ev.len = so.len;
    }
    q->cb(q->user, &ev);
    if (so.stopped) {
        *why = SCHED_FINISH_STOP;
        return true;
    }
    if (q->n_gen >= q->max_new || q->n_tok >= seq_capacity(s)) {
        *why = SCHED_FINISH_LENGTH;
        return true;
    }
    return false;
}

int sched_step(struct sched *s, tp_err *e) {
    const double t0 = now_s();
    reap_cancelled(s);
    const int64_t bs = engine_block_size(s->en);
    (void)bs;
    /* 1. every decoding sequence gets the block its next token needs, preempting the
     *    newest running sequences while none is free */
    for (int64_t i = 0; i < s->n_run;) {
        struct seq *q = s->run[i];
        if (q->n_done < q->n_tok - 1) { /* still in prefill: its blocks were reserved at admission */
            i++;
            continue;
        }
        tp_err re = {0};
        if (engine_seq_reserve(s->en, q->slot, q->n_done + 1, &re) == 0) {
            i++;
            continue;
        }
        preempt(s, s->n_run - 1); /* the newest; possibly q itself */
    }
    /* 2. the batch: running sequences first (a decode token, or the next prompt chunk) */
    int64_t budget = engine_max_batch(s->en), n = 0, n_rows = 0, n_part = 0;
    for (int64_t i = 0; i < s->n_run && budget > 0; i++) {
        struct seq *q = s->run[i];
        int64_t c = TP_MIN(budget, q->n_tok - q->n_done);
        for (int64_t k = 0; k < c; k++) {
            s->b_tok[n] = q->tok[q->n_done + k];
            s->b_pos[n] = (int32_t)(q->n_done + k);
            s->b_seq[n] = q->slot;
            n++;
        }
        budget -= c;
        s->b_part[n_part] = q;
        s->b_cnt[n_part++] = c;
        if (q->n_done + c == q->n_tok) {
            s->b_row[n_rows] = (int32_t)(n - 1);
            s->b_rs[n_rows] = q;
            s->b_rows[n_rows] = (struct engine_row){.seq = q->slot, .params = &q->smp.p, .smp = &q->smp,
                                                    .history = q->tok, .n_history = q->n_tok, .n_top = q->n_top,
                                                    .top = q->top};
            n_rows++;
        }
    }
    /* 3. waiting sequences join while there is room in the step, a free slot and the
     *    blocks for their whole token list (so that a prefill never waits for blocks) */
    while (budget > 0 && s->wait_head && s->n_run < s->max_run) {
        struct seq *q = s->wait_head;
        if (blocks_for(s, q->n_tok + 1) > engine_free_blocks(s->en)) break;
        tp_err oe = {0};
        int slot = engine_seq_open(s->en, q->n_tok + 1, &oe);
        if (slot < 0) break;
        s->wait_head = q->next;
        if (!s->wait_head) s->wait_tail = NULL;
        q->next = NULL;
        s->n_waiting--;
        q->slot = slot;
        q->order = s->next_order++;
        if (q->t_start == 0) q->t_start = now_s();
        s->run[s->n_run++] = q;
        int64_t c = TP_MIN(budget, q->n_tok);
        for (int64_t k = 0; k < c; k++) {
            s->b_tok[n] = q->tok[k];
            s->b_pos[n] = (int32_t)k;
            s->b_seq[n] = slot;
            n++;
        }
        budget -= c;
        s->b_part[n_part] = q;
        s->b_cnt[n_part++] = c;
        if (c == q->n_tok) {
            s->b_row[n_rows] = (int32_t)(n - 1);
            s->b_rs[n_rows] = q;
            s->b_rows[n_rows] = (struct engine_row){.seq = slot, .params = &q->smp.p, .smp = &q->smp,
                                                    .history = q->tok, .n_history = q->n_tok, .n_top = q->n_top,
                                                    .top = q->top};
            n_rows++;
        }
    }
    if (n == 0) {
        s->st.t_sched += now_s() - t0;
        return 0;
    }
    /* 4. the forward pass and the draws */
    bool want_lp = false;
    for (int64_t j = 0; j < n_rows; j++) want_lp |= s->b_rs[j]->logprobs;
    const double tf = now_s();
    int rc = engine_step(s->en, n, s->b_tok, s->b_pos, s->b_seq, n_rows, s->b_row, s->b_rows, s->b_out,
                         want_lp ? s->b_lp : NULL, e);
    const double tf1 = now_s();
    s->st.t_forward += tf1 - tf;
    s->st.steps++;
    if (rc) {
        /* the step's sequences end with the error; a broken job (TP_ECOMM) is the caller's */
        for (int64_t p = 0; p < n_part; p++) {
            for (int64_t i = 0; i < s->n_run; i++)
                if (s->run[i] == s->b_part[p]) {
                    memmove(s->run + i, s->run + i + 1, (size_t)(s->n_run - i - 1) * sizeof *s->run);
                    s->n_run--;
                    break;
                }
            seq_finish(s, s->b_part[p], SCHED_FINISH_ERROR, e->msg);
        }
        s->st.t_sched += (tf - t0) + (now_s() - tf1);
        return rc;
    }
    for (int64_t p = 0; p < n_part; p++) {
        struct seq *q = s->b_part[p];
        if (q->n_done < q->n_prompt) s->st.prompt_tokens += TP_MIN(s->b_cnt[p], q->n_prompt - q->n_done);
        q->n_done += s->b_cnt[p];
    }
    for (int64_t j = 0; j < n_rows; j++) {
        struct seq *q = s->b_rs[j];
        enum sched_finish why;
        if (seq_take(s, q, s->b_out[j], want_lp ? s->b_lp[j] : 0.0f, &why)) {
            for (int64_t i = 0; i < s->n_run; i++)
                if (s->run[i] == q) {
                    memmove(s->run + i, s->run + i + 1, (size_t)(s->n_run - i - 1) * sizeof *s->run);
                    s->n_run--;
                    break;
                }
            seq_finish(s, q, why, NULL);
        }
    }
    s->st.t_sched += (tf - t0) + (now_s() - tf1);
    return 0;
}
