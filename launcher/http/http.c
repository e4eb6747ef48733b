/* http.c - the OpenAI-compatible HTTP front end (http.h) on libmicrohttpd: routing, keys,
 * body limits, completions and chat completions (JSON or Server-Sent Events), models,
 * health and Prometheus metrics. */
#include "http.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "launcher/serve/request.h"

struct http_srv {
    struct MHD_Daemon *d;
    struct hub *hub;
    _Atomic(const struct front_model *) model;
    struct http_opts o;
    char key[512];
    int port;
    atomic_uint_fast64_t next_id;
};

/* A request being received: its body. */
struct conn {
    char *body;
    size_t len, cap;
    bool too_big;
};

/* ------------------------------------------------------------------ responses */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, const char *text,
                                 size_t len, int retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Sends j (stolen) as the body. */
static enum MHD_Result send_json(struct http_srv *s, struct MHD_Connection *c, unsigned status, json_t *j,
                                 int retry_after) {
    char *t = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    if (!t) return send_text(c, 500, "text/plain", "out of memory\n", 14, 0);
    hub_count_http(s->hub, status >= 400);
    enum MHD_Result ok = send_text(c, status, "application/json", t, strlen(t), retry_after);
    free(t);
    return ok;
}

/* OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result send_error(struct http_srv *s, struct MHD_Connection *c, unsigned status, const char *msg,
                                  const char *param, const char *code) {
    const char *type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error" :
                       status == 429 ? "rate_limit_error" : status >= 500 ? "server_error" : "invalid_request_error";
    json_t *err = json_pack("{s:s, s:s, s:s?, s:s?}", "message", msg, "type", type, "param", param, "code", code);
    int retry = status == 429 || status == 503 ? 1 : 0;
    return send_json(s, c, status, json_pack("{s:o}", "error", err), retry);
}

/* The HTTP status of a refusal. */
static unsigned status_of(int rc) {
    switch (rc) {
    case TP_EINVAL: return 400;
    case TP_ENOTFOUND: return 404;
    case TP_EFIT: return 429;
    case TP_EUNSUPPORTED: return 400;
    case -1: return 503;
    default: return 500;
    }
}

static const char *finish_name(enum sched_finish f) {
    switch (f) {
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_CANCEL: return "cancelled";
    case SCHED_FINISH_ERROR: return "error";
    default: return "stop";
    }
}

static json_t *usage_json(const struct hub_job *j) {
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)j->n_prompt, "completion_tokens",
                     (json_int_t)j->n_gen, "total_tokens", (json_int_t)(j->n_prompt + j->n_gen));
}

/* t[0..n) as valid UTF-8 (a token may hold part of a character: each invalid byte becomes
 * U+FFFD, as the detokenizer does for text), into out (cap >= 3 n + 1); its length. */
static size_t utf8_clean(const char *t, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char c = (unsigned char)t[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = ((unsigned char)t[i + k] & 0xC0) == 0x80;
        if (ok && len == 2) ok = c >= 0xC2;                                    /* overlong */
        if (ok && len == 3) ok = !(c == 0xE0 && (unsigned char)t[i + 1] < 0xA0) && /* overlong */
                                 !(c == 0xED && (unsigned char)t[i + 1] >= 0xA0);  /* surrogate */
        if (ok && len == 4) ok = c <= 0xF4 && !(c == 0xF0 && (unsigned char)t[i + 1] < 0x90) &&
                                 !(c == 0xF4 && (unsigned char)t[i + 1] >= 0x90);
        if (ok) {
            memcpy(out + o, t + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return o;
}

/* A token's text for the API: valid UTF-8 in buf (cap >= 769), raw bytes in raw. */
static size_t token_str(const struct front_model *m, int32_t id, char *buf, char *raw, size_t *n_raw) {
    *n_raw = front_token_text(m, id, raw, 256);
    return utf8_clean(raw, *n_raw, buf);
}

/* The bytes of a token's text as a JSON list (OpenAI's chat logprobs "bytes"). */
static json_t *bytes_json(const char *t, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)t[i]));
    return a;
}

/* Logprobs of pieces [from, to) of j: chat's {"content": [...]} or completions'
 * {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; the alternatives are the
 * top-k of the whole-vocabulary distribution (after penalties, temperature 1). */
static json_t *logprobs_json(const struct front_model *m, const struct hub_job *j, int64_t from, int64_t to, bool chat,
                             int top, size_t text_base) {
    char buf[800], raw[256], tb[800], traw[256];
    size_t nr, tnr;
    const int nt = TP_MIN(top, j->top_logprobs);
    if (chat) {
        json_t *content = json_array();
        for (int64_t i = from; i < to; i++) {
            size_t n = token_str(m, j->pieces[i].token, buf, raw, &nr);
            json_t *tops = json_array();
            for (int k = 0; k < nt; k++) {
                const struct sampler_logprob *t = &j->tops[i * j->top_logprobs + k];
                if (t->id < 0) break;
                size_t tn = token_str(m, t->id, tb, traw, &tnr);
                json_array_append_new(tops, json_pack("{s:s%, s:f, s:o}", "token", tb, tn, "logprob", (double)t->logprob,
                                                      "bytes", bytes_json(traw, tnr)));
            }
            json_array_append_new(content, json_pack("{s:s%, s:f, s:o, s:o}", "token", buf, n, "logprob",
                                                     (double)j->pieces[i].logprob, "bytes", bytes_json(raw, nr),
                                                     "top_logprobs", tops));
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int64_t i = from; i < to; i++) {
        size_t n = token_str(m, j->pieces[i].token, buf, raw, &nr);
        json_array_append_new(toks, json_stringn(buf, n));
        json_array_append_new(lps, json_real(j->pieces[i].logprob));
        json_t *t = json_object();
        for (int k = 0; k < nt; k++) {
            const struct sampler_logprob *a = &j->tops[i * j->top_logprobs + k];
            if (a->id < 0) break;
            token_str(m, a->id, tb, traw, &tnr);
            /* tokens of the same text share a key: keep the most likely (they come first) */
            if (!json_object_get(t, tb)) json_object_set_new(t, tb, json_real(a->logprob));
        }
        json_array_append_new(tops, t);
        json_array_append_new(offs, json_integer((json_int_t)(j->pieces[i].text_off - text_base)));
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs", tops,
                     "text_offset", offs);
}

/* ------------------------------------------------------------------ streaming */

struct sse {
    struct http_srv *s;
    const struct front_model *m;
    struct hub_job *j;
    enum req_kind kind;
    struct req_extra x;
    char id[48];
    int64_t created;
    int64_t sent;     /* pieces sent */
    size_t text_sent; /* bytes of j->text sent */
    int phase;        /* 0 tokens, 1 all sent, 2 ended */
    bool role_sent;
    char *buf;
    size_t len, off, cap;
};

static void sse_put(struct sse *q, json_t *obj) {
    char *t = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(obj);
    if (!t) return;
    size_t n = strlen(t), need = q->len + n + 8;
    if (need > q->cap) {
        size_t cap = TP_MAX(need, q->cap * 2);
        char *b = realloc(q->buf, cap);
        if (!b) {
            free(t);
            return;
        }
        q->buf = b;
        q->cap = cap;
    }
    memcpy(q->buf + q->len, "data: ", 6);
    memcpy(q->buf + q->len + 6, t, n);
    memcpy(q->buf + q->len + 6 + n, "\n\n", 2);
    q->len += n + 8;
    free(t);
}

static json_t *chunk(struct sse *q, json_t *choice) {
    json_t *choices = json_array();
    if (choice) json_array_append_new(choices, choice);
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", q->id, "object",
                     q->kind == REQ_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)q->created, "model", q->x.model, "choices", choices);
}

/* Builds the next events into q->buf: new pieces, then the end. */
static void sse_produce(struct sse *q) {
    struct hub_job *j = q->j;
    pthread_mutex_lock(&j->mu);
    hub_job_wait_locked(j, q->sent, 1.0);
    const int64_t to = j->n_pieces;
    const bool done = j->done;
    for (int64_t i = q->sent; i < to; i++) {
        const struct hub_piece *p = &j->pieces[i];
        /* a piece's text may grow at the end (the flushed tail): send what is new of it */
        size_t end = p->text_off + p->text_len;
        size_t from = q->text_sent > p->text_off ? q->text_sent : p->text_off;
        const char *txt = j->text ? j->text + from : ""; /* no text at all yet: json_pack needs a pointer */
        json_t *lp = j->logprobs ? logprobs_json(q->m, j, i, i + 1, q->kind == REQ_CHAT, q->x.top_logprobs,
                                                 0) : json_null();
        json_t *choice;
        if (q->kind == REQ_CHAT) {
            json_t *delta = json_pack("{s:s%}", "content", txt, end - from);
            if (!q->role_sent) {
                json_object_set_new(delta, "role", json_string("assistant"));
                q->role_sent = true;
            }
            choice = json_pack("{s:i, s:o, s:o, s:n}", "index", 0, "delta", delta, "logprobs", lp, "finish_reason");
        } else {
            choice = json_pack("{s:i, s:s%, s:o, s:n}", "index", 0, "text", txt, end - from, "logprobs", lp,
                               "finish_reason");
        }
        sse_put(q, chunk(q, choice));
        q->text_sent = end;
    }
    q->sent = to;
    if (done) {
        /* text appended to the last piece after it was sent (the flushed tail) */
        if (q->text_sent < j->text_len) {
            json_t *choice = q->kind == REQ_CHAT
                                 ? json_pack("{s:i, s:{s:s%}, s:n, s:n}", "index", 0, "delta", "content",
                                             j->text + q->text_sent, j->text_len - q->text_sent, "logprobs",
                                             "finish_reason")
                                 : json_pack("{s:i, s:s%, s:n, s:n}", "index", 0, "text", j->text + q->text_sent,
                                             j->text_len - q->text_sent, "logprobs", "finish_reason");
            sse_put(q, chunk(q, choice));
            q->text_sent = j->text_len;
        }
        if (j->status || j->finish == SCHED_FINISH_ERROR) {
            sse_put(q, json_pack("{s:{s:s, s:s}}", "error", "message", j->error[0] ? j->error : "generation failed",
                                 "type", "server_error"));
        } else {
            json_t *choice = q->kind == REQ_CHAT
                                 ? json_pack("{s:i, s:{}, s:n, s:s}", "index", 0, "delta", "logprobs", "finish_reason",
                                             finish_name(j->finish))
                                 : json_pack("{s:i, s:s, s:n, s:s}", "index", 0, "text", "", "logprobs",
                                             "finish_reason", finish_name(j->finish));
            sse_put(q, chunk(q, choice));
            if (q->x.include_usage) {
                json_t *u = chunk(q, NULL);
                json_object_set_new(u, "usage", usage_json(j));
                sse_put(q, u);
            }
        }
        pthread_mutex_unlock(&j->mu);
        const char *end = "data: [DONE]\n\n";
        size_t n = strlen(end);
        if (q->len + n > q->cap) {
            char *b = realloc(q->buf, q->len + n);
            if (!b) {
                q->phase = 2;
                return;
            }
            q->buf = b;
            q->cap = q->len + n;
        }
        memcpy(q->buf + q->len, end, n);
        q->len += n;
        q->phase = 2;
        return;
    }
    pthread_mutex_unlock(&j->mu);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct sse *q = cls;
    (void)pos;
    while (q->off == q->len) {
        if (q->phase == 2) return MHD_CONTENT_READER_END_OF_STREAM;
        q->off = q->len = 0;
        sse_produce(q);
    }
    size_t n = TP_MIN(max, q->len - q->off);
    memcpy(buf, q->buf + q->off, n);
    q->off += n;
    return (ssize_t)n;
}

static void sse_free(void *cls) {
    struct sse *q = cls;
    pthread_mutex_lock(&q->j->mu);
    bool done = q->j->done;
    pthread_mutex_unlock(&q->j->mu);
    if (!done) hub_cancel(q->j); /* the client went away: free its blocks */
    hub_job_put(q->s->hub, q->j);
    free(q->buf);
    free(q);
}

/* ------------------------------------------------------------------ generation routes */

static enum MHD_Result do_generate(struct http_srv *s, struct MHD_Connection *c, struct conn *cn, enum req_kind kind) {
    const struct front_model *m = atomic_load(&s->model);
    if (!m) return send_error(s, c, 503, "the model is still loading; retry shortly (GET /health)", NULL, NULL);
    if (cn->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds %zu bytes", s->o.max_body);
        return send_error(s, c, 413, msg, NULL, NULL);
    }
    json_error_t je;
    json_t *root = json_loadb(cn->body ? cn->body : "", cn->len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char msg[400];
        snprintf(msg, sizeof msg, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return send_error(s, c, 400, msg, NULL, NULL);
    }
    struct hub_job *j = hub_job_new();
    if (!j) {
        json_decref(root);
        return send_error(s, c, 500, "out of host memory", NULL, NULL);
    }
    struct req_extra x;
    const char *param = NULL;
    tp_err e = {0};
    int rc = req_parse(root, kind, m, j, &x, &param, &e);
    json_decref(root);
    if (rc) {
        enum MHD_Result r = send_error(s, c, status_of(rc), e.msg, param, rc == TP_ENOTFOUND ? "model_not_found" : NULL);
        hub_job_put(s->hub, j);
        return r;
    }
    if (hub_submit(s->hub, j)) {
        enum MHD_Result r = send_error(s, c, 503, j->error, NULL, NULL);
        hub_job_put(s->hub, j);
        return r;
    }
    pthread_mutex_lock(&j->mu);
    hub_job_wait_accepted_locked(j);
    if (!j->accepted) { /* refused by the scheduler: its limits, or a full queue */
        int st = j->status;
        char msg[1024];
        memcpy(msg, j->error, sizeof msg);
        pthread_mutex_unlock(&j->mu);
        hub_job_put(s->hub, j);
        return send_error(s, c, status_of(st), msg, st == TP_EINVAL ? "max_tokens" : NULL, NULL);
    }
    pthread_mutex_unlock(&j->mu);
    char id[48];
    snprintf(id, sizeof id, "%s-%llu", kind == REQ_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    const int64_t created = (int64_t)time(NULL);

    if (x.stream) {
        struct sse *q = calloc(1, sizeof *q);
        if (!q) {
            hub_cancel(j);
            hub_job_put(s->hub, j);
            return send_error(s, c, 500, "out of host memory", NULL, NULL);
        }
        *q = (struct sse){.s = s, .m = m, .j = j, .kind = kind, .x = x, .created = created};
        snprintf(q->id, sizeof q->id, "%s", id);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, q, sse_free);
        if (!r) {
            sse_free(q);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        hub_count_http(s->hub, false);
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ok;
    }

    /* the whole answer: wait for the end */
    pthread_mutex_lock(&j->mu);
    while (!j->done) hub_job_wait_locked(j, j->n_pieces, 1.0);
    json_t *out;
    unsigned status = 200;
    if (j->status || j->finish == SCHED_FINISH_ERROR) {
        status = 500;
        out = json_pack("{s:{s:s, s:s}}", "error", "message", j->error[0] ? j->error : "generation failed", "type",
                        "server_error");
    } else {
        json_t *lp = j->logprobs ? logprobs_json(m, j, 0, j->n_pieces, kind == REQ_CHAT, x.top_logprobs, 0)
                                 : json_null();
        json_t *choice =
            kind == REQ_CHAT
                ? json_pack("{s:i, s:{s:s, s:s%}, s:o, s:s}", "index", 0, "message", "role", "assistant", "content",
                            j->text ? j->text : "", j->text_len, "logprobs", lp, "finish_reason",
                            finish_name(j->finish))
                : json_pack("{s:i, s:s%, s:o, s:s}", "index", 0, "text", j->text ? j->text : "", j->text_len,
                            "logprobs", lp, "finish_reason", finish_name(j->finish));
        out = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", id, "object",
                        kind == REQ_CHAT ? "chat.completion" : "text_completion", "created", (json_int_t)created,
                        "model", x.model, "choices", choice, "usage", usage_json(j));
    }
    pthread_mutex_unlock(&j->mu);
    hub_job_put(s->hub, j);
    return send_json(s, c, status, out, 0);
}

/* ------------------------------------------------------------------ metrics, health */

struct strbuf {
    char *p;
    size_t n, cap;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct strbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (b->p && b->n + (size_t)n < b->cap) {
            b->n += (size_t)n;
            return;
        }
        size_t cap = TP_MAX(b->cap * 2, b->n + (size_t)n + 4096);
        char *q = realloc(b->p, cap);
        if (!q) return;
        b->p = q;
        b->cap = cap;
    }
}

static void sb_hist(struct strbuf *b, const char *name, const char *help, const struct hub_hist *h) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    int64_t cum = 0;
    for (int i = 0; i < HUB_HIST_BUCKETS; i++) {
        cum += h->count[i];
        sb_printf(b, "%s_bucket{le=\"%g\"} %lld\n", name, h->le[i], (long long)cum);
    }
    cum += h->count[HUB_HIST_BUCKETS];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %lld\n%s_sum %.6f\n%s_count %lld\n", name, (long long)cum, name, h->sum, name,
              (long long)h->n);
}

static void sb_metric(struct strbuf *b, const char *name, const char *type, const char *help, double v) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

static enum MHD_Result do_metrics(struct http_srv *s, struct MHD_Connection *c) {
    struct hub_metrics m;
    hub_metrics_get(s->hub, &m);
    struct strbuf b = {0};
    sb_metric(&b, "tpllm_ready", "gauge", "1 when the model is loaded and the coordinator serves", m.ready);
    sb_metric(&b, "tpllm_healthy", "gauge", "1 when every rank answered within 5 s", m.healthy);
    sb_metric(&b, "tpllm_requests_running", "gauge", "Sequences in the running batch", (double)m.st.running);
    sb_metric(&b, "tpllm_requests_waiting", "gauge", "Requests queued (new or preempted)", (double)m.st.waiting);
    sb_metric(&b, "tpllm_requests_submitted_total", "counter", "Requests accepted by the scheduler",
              (double)m.st.submitted);
    sb_metric(&b, "tpllm_requests_finished_total", "counter", "Requests ended (any reason)", (double)m.st.finished);
    sb_metric(&b, "tpllm_requests_refused_total", "counter", "Requests refused by the scheduler (limits, full queue)",
              (double)m.st.refused);
    sb_metric(&b, "tpllm_requests_cancelled_total", "counter", "Requests cancelled (client gone)", (double)m.st.cancelled);
    sb_metric(&b, "tpllm_preemptions_total", "counter", "Sequences preempted to free KV blocks (recomputed later)",
              (double)m.st.preemptions);
    sb_metric(&b, "tpllm_prompt_tokens_total", "counter", "Prompt tokens processed (first time)", (double)m.st.prompt_tokens);
    sb_metric(&b, "tpllm_generation_tokens_total", "counter", "Tokens generated", (double)m.st.gen_tokens);
    sb_metric(&b, "tpllm_recomputed_tokens_total", "counter", "Tokens recomputed after preemptions",
              (double)m.st.recomputed_tokens);
    sb_metric(&b, "tpllm_steps_total", "counter", "Engine steps", (double)m.st.steps);
    sb_metric(&b, "tpllm_forward_seconds_total", "counter", "Seconds in the forward passes and sampling",
              m.st.t_forward);
    sb_metric(&b, "tpllm_scheduler_seconds_total", "counter", "Seconds in the scheduler around the forward passes",
              m.st.t_sched);
    sb_metric(&b, "tpllm_kv_blocks_total", "gauge", "KV cache blocks per rank (the number in force)",
              (double)m.kv_blocks_total);
    sb_metric(&b, "tpllm_kv_blocks_used", "gauge", "KV cache blocks held by sequences",
              (double)(m.kv_blocks_total - m.kv_blocks_free));
    sb_metric(&b, "tpllm_kv_block_tokens", "gauge", "Tokens per KV block", (double)m.block_size);
    sb_printf(&b, "# HELP tpllm_memory_used_bytes Tracked memory per rank and owner\n# TYPE tpllm_memory_used_bytes gauge\n");
    for (int r = 0; r < m.n_ranks; r++)
        for (int o = 0; o < MEM_OWNER_COUNT; o++)
            sb_printf(&b, "tpllm_memory_used_bytes{rank=\"%d\",owner=\"%s\"} %zu\n", r, mem_owner_name((enum mem_owner)o),
                      m.ranks[r].used[o]);
    sb_printf(&b, "# HELP tpllm_memory_peak_bytes Peak tracked memory per rank and owner\n# TYPE tpllm_memory_peak_bytes gauge\n");
    for (int r = 0; r < m.n_ranks; r++)
        for (int o = 0; o < MEM_OWNER_COUNT; o++)
            sb_printf(&b, "tpllm_memory_peak_bytes{rank=\"%d\",owner=\"%s\"} %zu\n", r, mem_owner_name((enum mem_owner)o),
                      m.ranks[r].peak[o]);
    sb_printf(&b, "# HELP tpllm_memory_total_peak_bytes Peak of all tracked memory per rank\n# TYPE tpllm_memory_total_peak_bytes gauge\n");
    for (int r = 0; r < m.n_ranks; r++)
        sb_printf(&b, "tpllm_memory_total_peak_bytes{rank=\"%d\"} %zu\n", r, m.ranks[r].total_peak);
    sb_printf(&b, "# HELP tpllm_memory_budget_bytes The memory plan's budget per rank\n# TYPE tpllm_memory_budget_bytes gauge\n");
    for (int r = 0; r < m.n_ranks; r++)
        sb_printf(&b, "tpllm_memory_budget_bytes{rank=\"%d\"} %lld\n", r, (long long)m.ranks[r].budget);
    sb_hist(&b, "tpllm_time_to_first_token_seconds", "Time from arrival to the first generated token", &m.ttft);
    sb_hist(&b, "tpllm_inter_token_latency_seconds", "Time between consecutive tokens of a sequence", &m.itl);
    sb_hist(&b, "tpllm_request_seconds", "Time from arrival to the last token of finished requests", &m.e2e);
    sb_metric(&b, "tpllm_http_requests_total", "counter", "HTTP requests answered", (double)m.http_requests);
    sb_metric(&b, "tpllm_http_errors_total", "counter", "HTTP requests answered with 4xx/5xx", (double)m.http_errors);
    if (!b.p) return send_text(c, 500, "text/plain", "out of memory\n", 14, 0);
    enum MHD_Result ok = send_text(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.n, 0);
    free(b.p);
    return ok;
}

static enum MHD_Result do_health(struct http_srv *s, struct MHD_Connection *c) {
    struct hub_metrics m;
    hub_metrics_get(s->hub, &m);
    const struct front_model *md = atomic_load(&s->model);
    if (!m.ready || !md)
        return send_json(s, c, 503, json_pack("{s:s, s:s}", "status", "loading", "message",
                                              "the model is loading on every rank"), 1);
    if (!m.healthy)
        return send_json(s, c, 503, json_pack("{s:s, s:s, s:f}", "status", "unhealthy", "message",
                                              "a rank has not answered for more than 5 s", "since_contact_s",
                                              m.since_contact), 1);
    return send_json(s, c, 200, json_pack("{s:s, s:i, s:I, s:I}", "status", "ok", "ranks", m.n_ranks, "running",
                                          (json_int_t)m.st.running, "waiting", (json_int_t)m.st.waiting), 0);
}

static enum MHD_Result do_models(struct http_srv *s, struct MHD_Connection *c) {
    const struct front_model *m = atomic_load(&s->model);
    if (!m) return send_error(s, c, 503, "the model is still loading; retry shortly (GET /health)", NULL, NULL);
    json_t *d = json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", m->name, "object", "model", "created", (json_int_t)m->created,
                          "owned_by", "tpllm", "max_model_len", (json_int_t)m->ctx);
    return send_json(s, c, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", d), 0);
}

/* ------------------------------------------------------------------ routing */

static bool key_ok(const struct http_srv *s, struct MHD_Connection *c) {
    if (!s->key[0]) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return false;
    h += 7;
    size_t a = strlen(h), b = strlen(s->key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned)(h[i] ^ s->key[i]); /* no early exit */
    return diff == 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    struct http_srv *s = cls;
    (void)version;
    if (!*con_cls) {
        struct conn *cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        return MHD_YES;
    }
    struct conn *cn = *con_cls;
    if (*upload_size) {
        if (!cn->too_big) {
            if (cn->len + *upload_size > s->o.max_body) {
                cn->too_big = true;
            } else {
                if (cn->len + *upload_size + 1 > cn->cap) {
                    size_t cap = TP_MAX(cn->cap * 2, cn->len + *upload_size + 1);
                    char *p = realloc(cn->body, cap);
                    if (!p) return MHD_NO;
                    cn->body = p;
                    cn->cap = cap;
                }
                memcpy(cn->body + cn->len, upload, *upload_size);
                cn->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    const bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) return get ? do_health(s, c) : send_error(s, c, 405, "use GET /health", NULL, NULL);
    if (!key_ok(s, c))
        return send_error(s, c, 401, "missing or wrong API key: send 'Authorization: Bearer KEY' (the server's --api-key)",
                          NULL, "invalid_api_key");
    if (!strcmp(url, "/metrics")) return get ? do_metrics(s, c) : send_error(s, c, 405, "use GET /metrics", NULL, NULL);
    if (!strcmp(url, "/v1/models")) return get ? do_models(s, c) : send_error(s, c, 405, "use GET /v1/models", NULL, NULL);
    if (!strcmp(url, "/v1/completions"))
        return post ? do_generate(s, c, cn, REQ_COMPLETION) : send_error(s, c, 405, "use POST /v1/completions", NULL, NULL);
    if (!strcmp(url, "/v1/chat/completions"))
        return post ? do_generate(s, c, cn, REQ_CHAT) : send_error(s, c, 405, "use POST /v1/chat/completions", NULL, NULL);
    char msg[400];
    snprintf(msg, sizeof msg, "no route %.200s; this server has POST /v1/completions, POST /v1/chat/completions, GET "
             "/v1/models, GET /health, GET /metrics", url);
    return send_error(s, c, 404, msg, NULL, NULL);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    struct conn *cn = *con_cls;
    if (cn) {
        free(cn->body);
        free(cn);
    }
    *con_cls = NULL;
}

int http_start(struct http_srv **out, const struct http_opts *o, struct hub *h, tp_err *e) {
    *out = NULL;
    struct http_srv *s = calloc(1, sizeof *s);
    if (!s) return tp_errf(e, TP_ENOMEM, "out of host memory");
    s->hub = h;
    s->o = *o;
    atomic_init(&s->model, NULL);
    atomic_init(&s->next_id, 1);
    if (o->api_key) snprintf(s->key, sizeof s->key, "%s", o->api_key);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    const char *host = o->host ? o->host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        free(s);
        return tp_errf(e, TP_EINVAL, "--host '%s' is not an IPv4 address (use 127.0.0.1, 0.0.0.0 or an interface's "
                       "address)", host);
    }
    s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG,
                            (uint16_t)o->port, NULL, NULL, handle, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_conns > 0 ? o->max_conns : 64),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s > 0 ? o->timeout_s : 60),
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_END);
    if (!s->d) {
        free(s);
        return tp_errf(e, TP_EIO, "cannot listen on %s:%d (in use, or not allowed); pick another --port or --host",
                       host, o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    *out = s;
    return 0;
}

void http_set_model(struct http_srv *s, const struct front_model *m) { atomic_store(&s->model, m); }

int http_port(const struct http_srv *s) { return s->port; }

void http_stop(struct http_srv *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    free(s);
}
