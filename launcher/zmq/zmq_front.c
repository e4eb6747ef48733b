/* zmq_front.c - the ZeroMQ front end (zmq_front.h; protocol in docs/api.md, "ZeroMQ").
 *
 * One thread owns the ROUTER socket. Its loop: zmq_poll the socket (2 ms while jobs are in
 * flight, 50 ms otherwise), take up to 64 waiting messages, then forward what is new in
 * every in-flight job (its mutex held only to copy the new pieces). Sends never block
 * (ZMQ_DONTWAIT): when a client's queue is full (EAGAIN) the job's pieces stay where they
 * are and are sent at a later turn; a client that is gone (EHOSTUNREACH, which
 * ZMQ_ROUTER_MANDATORY reports) has its jobs cancelled. */
#include "zmq_front.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "launcher/serve/request.h"

#define POLL_BUSY_MS 2
#define POLL_IDLE_MS 50
#define RECV_PER_TURN 64
#define PIECES_PER_COPY 32
#define HARD_MAX_MSG (16 << 20) /* libzmq drops peers that send more (ZMQ_MAXMSGSIZE) */
#ifndef ZMQ_FRONT_SNDHWM
#define ZMQ_FRONT_SNDHWM 100000 /* messages queued per client before sends wait (EAGAIN) */
#endif

/* Where a reply goes: the client's identity, and whether it used an empty delimiter
 * frame (REQ-style envelope) that the reply repeats. */
struct env {
    uint8_t ident[256];
    size_t ident_len;
    bool delim;
};

struct zjob {
    struct hub_job *j; /* NULL: a free slot */
    struct env to;
    char id[ZMQ_FRONT_MAX_ID + 1];
    int64_t sent;      /* pieces sent */
    size_t text_sent;  /* bytes of j->text sent */
    bool cancelled;    /* the client asked */
    bool orphan;       /* the client went away: cancelled, nothing more is sent */
};

struct zmq_front {
    void *ctx, *sock;
    struct hub *h;
    const struct front_model *m;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    char endpoint[512];
    struct zjob jobs[ZMQ_FRONT_MAX_JOBS];
    int n_jobs;
    char *buf; /* text copied out of a job */
    size_t buf_cap;
};

/* ---- replies ---- */

/* A JSON string of s[0..n); bytes that are not UTF-8 become U+FFFD (the hub promises
 * UTF-8, this is the belt to its braces). */
static json_t *jstr(const char *s, size_t n) {
    json_t *v = json_stringn(s, n);
    if (v) return v;
    char *c = malloc(3 * n + 1);
    if (!c) return NULL;
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = u[i] < 0x80 ? 1 : (u[i] >> 5) == 6 ? 2 : (u[i] >> 4) == 14 ? 3 : (u[i] >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) ok = (u[i + k] & 0xC0) == 0x80;
        if (ok && len > 1) {
            json_t *t = json_stringn(s + i, len); /* rejects overlongs and surrogates */
            ok = t != NULL;
            json_decref(t);
        }
        if (ok) {
            memcpy(c + o, s + i, len);
            o += len, i += len;
        } else {
            memcpy(c + o, "\xEF\xBF\xBD", 3);
            o += 3, i++;
        }
    }
    v = json_stringn(c, o);
    free(c);
    return v;
}

static json_t *jnum(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* Sends o (consumed) to `to`. Returns 0 or the errno: EAGAIN (the client's queue is full),
 * EHOSTUNREACH (the client is gone), ETERM. */
static int send_json(struct zmq_front *z, const struct env *to, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) return ENOMEM;
    int err = 0;
    if (zmq_send(z->sock, to->ident, to->ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) err = errno;
    /* once the first frame is accepted the rest of the message is too */
    else if (to->delim && zmq_send(z->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) err = errno;
    else if (zmq_send(z->sock, s, strlen(s), ZMQ_DONTWAIT) < 0) err = errno;
    free(s);
    return err;
}

static bool same_client(const struct env *a, const struct env *b) {
    return a->ident_len == b->ident_len && memcmp(a->ident, b->ident, a->ident_len) == 0;
}

/* The client behind `to` is gone: cancel its jobs; their slots are freed when they end. */
static void drop_client(struct zmq_front *z, const struct env *to) {
    for (int i = 0; i < ZMQ_FRONT_MAX_JOBS; i++) {
        struct zjob *s = &z->jobs[i];
        if (s->j && !s->orphan && same_client(&s->to, to)) {
            hub_cancel(s->j);
            s->orphan = true;
        }
    }
}

/* A reply that is not part of a job's stream: dropped when the client's queue is full. */
static void reply(struct zmq_front *z, const struct env *to, json_t *o) {
    if (send_json(z, to, o) == EHOSTUNREACH) drop_client(z, to);
}

static json_t *error_event(const char *id, int code, const char *param, const char *msg) {
    json_t *o = json_object();
    json_object_set_new(o, "id", id ? json_string(id) : json_null());
    json_object_set_new(o, "event", json_string("error"));
    json_object_set_new(o, "code", json_integer(code));
    json_object_set_new(o, "message", jstr(msg, strlen(msg)));
    json_object_set_new(o, "param", param ? json_string(param) : json_null());
    return o;
}

static void reply_error(struct zmq_front *z, const struct env *to, const char *id, int code, const char *param,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void reply_error(struct zmq_front *z, const struct env *to, const char *id, int code, const char *param,
                        const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply(z, to, error_event(id, code, param, msg));
}

/* ---- streaming a job's pieces ---- */

static void slot_release(struct zmq_front *z, struct zjob *s) {
    hub_job_put(z->h, s->j);
    memset(s, 0, sizeof *s);
    z->n_jobs--;
}

static int ensure_buf(struct zmq_front *z, size_t n) {
    if (n <= z->buf_cap) return 0;
    size_t cap = TP_MAX(n, z->buf_cap * 2);
    char *p = realloc(z->buf, cap);
    if (!p) return -1;
    z->buf = p;
    z->buf_cap = cap;
    return 0;
}

static const char *finish_name(enum sched_finish f) {
    switch (f) {
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_EOG:
    case SCHED_FINISH_STOP: return "stop";
    case SCHED_FINISH_CANCEL: return "cancelled";
    case SCHED_FINISH_ERROR: break;
    }
    return "error";
}

/* The code of a job the coordinator refused (hub.h: j->status). */
static int refusal_code(int status) {
    switch (status) {
    case TP_EINVAL: return 400;
    case TP_EFIT: return 429; /* the scheduler's queue is full */
    case TP_EIO: return 503;  /* the server stopped before the job started */
    default: return 500;
    }
}

/* What the end of a job says, copied under its lock. */
struct job_end {
    int status;
    enum sched_finish finish;
    char error[sizeof(((struct hub_job *)0)->error)];
    int64_t n_prompt, n_gen;
    double t_queue, t_first, t_total;
    size_t text_end; /* j->text_len */
};

/* The last message of a job: "done", or "error" for a refused or failed one. */
static json_t *end_event(const struct zjob *s, const struct job_end *d, const char *rest, size_t rest_len) {
    if (d->status)
        return error_event(s->id, refusal_code(d->status), NULL, d->error[0] ? d->error : "the request was refused");
    if (d->finish == SCHED_FINISH_ERROR || (d->finish == SCHED_FINISH_CANCEL && d->error[0] && !s->cancelled))
        return error_event(s->id, 500, NULL, d->error[0] ? d->error : "generation failed");
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(s->id));
    json_object_set_new(o, "event", json_string("done"));
    json_object_set_new(o, "finish_reason", json_string(finish_name(d->finish)));
    json_object_set_new(o, "text", jstr(rest, rest_len));
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(d->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(d->n_gen));
    json_object_set_new(u, "total_tokens", json_integer(d->n_prompt + d->n_gen));
    json_object_set_new(o, "usage", u);
    json_t *t = json_object();
    json_object_set_new(t, "queue_s", jnum(d->t_queue));
    json_object_set_new(t, "first_token_s", jnum(d->t_first));
    json_object_set_new(t, "total_s", jnum(d->t_total));
    json_object_set_new(o, "timing", t);
    return o;
}

/* A token's alternatives: [{"token", "text", "logprob"}], most likely first. */
static json_t *top_json(const struct zmq_front *z, const struct sampler_logprob *t, int n) {
    json_t *a = json_array();
    char buf[256];
    for (int k = 0; k < n && t[k].id >= 0; k++) {
        size_t len = front_token_text(z->m, t[k].id, buf, sizeof buf);
        json_t *o = json_object();
        json_object_set_new(o, "token", json_integer(t[k].id));
        json_object_set_new(o, "text", jstr(buf, len));
        json_object_set_new(o, "logprob", jnum(t[k].logprob));
        json_array_append_new(a, o);
    }
    return a;
}

/* Sends what is new in job s; frees the slot once its end is sent (or its client is gone). */
static void stream_job(struct zmq_front *z, struct zjob *s) {
    struct hub_job *j = s->j;
    if (s->orphan) {
        pthread_mutex_lock(&j->mu);
        bool done = j->done;
        pthread_mutex_unlock(&j->mu);
        if (done) slot_release(z, s);
        return;
    }
    for (;;) {
        struct hub_piece p[PIECES_PER_COPY];
        struct sampler_logprob tops[PIECES_PER_COPY * SCHED_MAX_TOP];
        const int nt = TP_MAX(0, TP_MIN(j->top_logprobs, SCHED_MAX_TOP));
        struct job_end d;
        bool end = false;
        pthread_mutex_lock(&j->mu);
        const int64_t k = TP_MIN(j->n_pieces - s->sent, (int64_t)PIECES_PER_COPY);
        if (k > 0) memcpy(p, j->pieces + s->sent, (size_t)k * sizeof *p);
        if (k > 0 && nt > 0) /* j->tops is [piece][j->top_logprobs] */
            for (int64_t i = 0; i < k; i++)
                memcpy(tops + i * nt, j->tops + (s->sent + i) * j->top_logprobs, (size_t)nt * sizeof *tops);
        const size_t start = k > 0 ? p[0].text_off : s->text_sent;
        size_t stop = k > 0 ? p[k - 1].text_off + p[k - 1].text_len : start;
        if (j->done && s->sent + k == j->n_pieces) {
            end = true;
            d.status = j->status;
            d.finish = j->finish;
            memcpy(d.error, j->error, sizeof d.error);
            d.error[sizeof d.error - 1] = '\0';
            d.n_prompt = j->n_prompt_used ? j->n_prompt_used : j->n_prompt;
            d.n_gen = j->n_gen;
            d.t_queue = j->t_queue, d.t_first = j->t_first, d.t_total = j->t_total;
            d.text_end = TP_MAX(j->text_len, stop);
            stop = d.text_end;
        }
        if (stop > start && ensure_buf(z, stop - start)) {
            pthread_mutex_unlock(&j->mu);
            return; /* out of memory: try again at the next turn */
        }
        if (stop > start) memcpy(z->buf, j->text + start, stop - start);
        pthread_mutex_unlock(&j->mu);

        for (int64_t i = 0; i < k; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "id", json_string(s->id));
            json_object_set_new(o, "event", json_string("token"));
            json_object_set_new(o, "token", json_integer(p[i].token));
            json_object_set_new(o, "text", p[i].text_len ? jstr(z->buf + (p[i].text_off - start), p[i].text_len)
                                                         : json_string(""));
            if (j->logprobs) json_object_set_new(o, "logprob", jnum(p[i].logprob));
            if (j->logprobs && nt > 0) json_object_set_new(o, "top_logprobs", top_json(z, tops + i * nt, nt));
            int err = send_json(z, &s->to, o);
            if (err == EHOSTUNREACH) {
                drop_client(z, &s->to);
                return; /* the slot goes when the coordinator is done with it */
            }
            if (err) return; /* EAGAIN: the rest at a later turn */
            s->sent++;
            s->text_sent = p[i].text_off + p[i].text_len;
        }
        if (end) {
            const size_t from = TP_MAX(s->text_sent, start);
            const size_t rest = d.text_end - from;
            int err = send_json(z, &s->to, end_event(s, &d, rest ? z->buf + (from - start) : "", rest));
            if (err == EAGAIN) return;
            slot_release(z, s); /* sent, or nobody to send it to */
            return;
        }
        if (k < PIECES_PER_COPY) return;
    }
}

/* ---- requests ---- */

static struct zjob *find_job(struct zmq_front *z, const struct env *from, const char *id) {
    for (int i = 0; i < ZMQ_FRONT_MAX_JOBS; i++) {
        struct zjob *s = &z->jobs[i];
        if (s->j && !s->orphan && same_client(&s->to, from) && strcmp(s->id, id) == 0) return s;
    }
    return NULL;
}

/* The code of a request req_parse refused. */
static int parse_code(int rc) {
    switch (rc) {
    case TP_EINVAL:
    case TP_EUNSUPPORTED: return 400; /* a chat request to a model without a template */
    case TP_ENOTFOUND: return 404;
    case TP_EFIT: return 429;
    default: return 500;
    }
}

static void do_submit(struct zmq_front *z, const struct env *from, const json_t *root, const char *id) {
    if (find_job(z, from, id)) {
        reply_error(z, from, id, 400, "id",
                    "a job with id '%s' is already in flight from this client; give every submit its own id", id);
        return;
    }
    if (z->n_jobs >= ZMQ_FRONT_MAX_JOBS) {
        reply_error(z, from, id, 429, NULL,
                    "%d jobs are in flight on this ZeroMQ endpoint, the most it takes; retry when some are done",
                    ZMQ_FRONT_MAX_JOBS);
        return;
    }
    const json_t *prompt = json_object_get(root, "prompt"), *msgs = json_object_get(root, "messages");
    if (prompt && msgs) {
        reply_error(z, from, id, 400, "messages",
                    "give either \"prompt\" (a completion) or \"messages\" (a chat), not both");
        return;
    }
    if (!prompt && !msgs) {
        reply_error(z, from, id, 400, "prompt",
                    "a submit needs \"prompt\" (a string or a list of token ids) or \"messages\" (a list of "
                    "{\"role\", \"content\"})");
        return;
    }
    struct hub_job *j = hub_job_new();
    if (!j) {
        reply_error(z, from, id, 500, NULL, "out of host memory");
        return;
    }
    struct req_extra x;
    const char *param = NULL;
    tp_err e = {0};
    int rc = req_parse(root, msgs ? REQ_CHAT : REQ_COMPLETION, z->m, j, &x, &param, &e);
    if (rc) {
        if (rc == TP_EUNSUPPORTED && !param) param = msgs ? "messages" : "prompt";
        reply_error(z, from, id, parse_code(rc), param, "%s", e.msg[0] ? e.msg : "the request was refused");
        hub_job_put(z->h, j);
        return;
    }
    if (hub_submit(z->h, j)) {
        reply_error(z, from, id, 503, NULL, "%s", j->error[0] ? j->error : "the server is not serving");
        hub_job_put(z->h, j);
        return;
    }
    struct zjob *s = NULL;
    for (int i = 0; i < ZMQ_FRONT_MAX_JOBS && !s; i++)
        if (!z->jobs[i].j) s = &z->jobs[i];
    memset(s, 0, sizeof *s);
    s->j = j;
    s->to = *from;
    snprintf(s->id, sizeof s->id, "%s", id);
    z->n_jobs++;
}

static void do_cancel(struct zmq_front *z, const struct env *from, const char *id) {
    struct zjob *s = find_job(z, from, id);
    if (!s) {
        reply_error(z, from, id, 404, "id", "no job with id '%s' is in flight from this client (it may have ended)", id);
        return;
    }
    s->cancelled = true;
    hub_cancel(s->j); /* its "done" (finish_reason "cancelled") follows */
}

static void do_health(struct zmq_front *z, const struct env *from, const char *id) {
    struct hub_metrics hm;
    hub_metrics_get(z->h, &hm);
    json_t *o = json_object();
    if (id) json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "event", json_string("health"));
    json_object_set_new(o, "ok", json_boolean(hm.ready && hm.healthy));
    reply(z, from, o);
}

#define HINT "send one JSON object per message, e.g. {\"op\":\"submit\",\"id\":\"a1\",\"prompt\":\"Hello\"}"

static void handle(struct zmq_front *z, const struct env *from, const char *data, size_t len) {
    if (len > ZMQ_FRONT_MAX_MSG) {
        reply_error(z, from, NULL, 400, NULL, "the message is %zu bytes; at most %u (1 MiB)", len, ZMQ_FRONT_MAX_MSG);
        return;
    }
    json_error_t je;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        reply_error(z, from, NULL, 400, NULL, "malformed JSON (line %d, column %d: %s); " HINT, je.line, je.column,
                    je.text);
        return;
    }
    if (!json_is_object(root)) {
        reply_error(z, from, NULL, 400, NULL, "the message must be a JSON object; " HINT);
        json_decref(root);
        return;
    }
    const json_t *jid = json_object_get(root, "id"), *jop = json_object_get(root, "op");
    const char *id = NULL;
    const char *id_problem = NULL;
    if (!jid || json_is_null(jid)) id_problem = "is missing";
    else if (!json_is_string(jid)) id_problem = "must be a string";
    else if (json_string_length(jid) == 0) id_problem = "is empty";
    else if (json_string_length(jid) > ZMQ_FRONT_MAX_ID) id_problem = "is longer than 64 bytes";
    else if (strlen(json_string_value(jid)) != json_string_length(jid)) id_problem = "contains a NUL character";
    else id = json_string_value(jid);
    const char *op = json_is_string(jop) ? json_string_value(jop) : NULL;
    if (!op) {
        reply_error(z, from, id, 400, "op", "\"op\" %s; it must be \"submit\", \"cancel\" or \"health\"",
                    jop ? "must be a string" : "is missing");
    } else if (!strcmp(op, "health")) {
        do_health(z, from, id);
    } else if (strcmp(op, "submit") && strcmp(op, "cancel")) {
        reply_error(z, from, id, 400, "op", "unknown op '%.64s'; it must be \"submit\", \"cancel\" or \"health\"", op);
    } else if (!id) {
        reply_error(z, from, NULL, 400, "id",
                    "\"id\" %s: a %s needs an \"id\", a string of 1 to 64 bytes that names the job in the replies",
                    id_problem, op);
    } else if (!strcmp(op, "submit")) {
        do_submit(z, from, root, id);
    } else {
        do_cancel(z, from, id);
    }
    json_decref(root);
}

/* Takes the messages waiting on the socket (at most RECV_PER_TURN). Returns ETERM when the
 * context is gone, else 0. */
static int receive(struct zmq_front *z) {
    for (int n = 0; n < RECV_PER_TURN; n++) {
        zmq_msg_t f[3];
        int nf = 0, extra = 0;
        bool more = true;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) < 0) {
                int err = errno;
                zmq_msg_close(&m);
                for (int i = 0; i < nf; i++) zmq_msg_close(&f[i]);
                if (err == ETERM) return ETERM;
                return 0; /* EAGAIN: nothing more (a message's frames arrive together) */
            }
            more = zmq_msg_more(&m);
            if (nf < 3) f[nf++] = m;
            else zmq_msg_close(&m), extra++;
        }
        struct env from = {0};
        from.ident_len = TP_MIN(zmq_msg_size(&f[0]), sizeof from.ident);
        memcpy(from.ident, zmq_msg_data(&f[0]), from.ident_len);
        const int parts = nf - 1 + extra;
        if (parts == 1) {
            handle(z, &from, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]));
        } else if (parts == 2 && zmq_msg_size(&f[1]) == 0) {
            from.delim = true;
            handle(z, &from, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]));
        } else if (parts > 0) {
            from.delim = zmq_msg_size(&f[1]) == 0;
            reply_error(z, &from, NULL, 400, NULL,
                        "the message has %d frames; %s", parts - (from.delim ? 1 : 0), HINT " in a single frame");
        }
        for (int i = 0; i < nf; i++) zmq_msg_close(&f[i]);
    }
    return 0;
}

/* ---- the thread ---- */

static void *front_main(void *arg) {
    struct zmq_front *z = arg;
    while (!atomic_load(&z->stop)) {
        zmq_pollitem_t it = {.socket = z->sock, .events = ZMQ_POLLIN};
        int r = zmq_poll(&it, 1, z->n_jobs ? POLL_BUSY_MS : POLL_IDLE_MS);
        if (r < 0 && errno == ETERM) break;
        if (r > 0 && (it.revents & ZMQ_POLLIN) && receive(z) == ETERM) break;
        for (int i = 0; i < ZMQ_FRONT_MAX_JOBS && z->n_jobs; i++)
            if (z->jobs[i].j) stream_job(z, &z->jobs[i]);
    }
    /* stopping: send what the jobs have, tell the clients of unfinished ones, let them go */
    for (int i = 0; i < ZMQ_FRONT_MAX_JOBS; i++)
        if (z->jobs[i].j) stream_job(z, &z->jobs[i]);
    for (int i = 0; i < ZMQ_FRONT_MAX_JOBS; i++) {
        struct zjob *s = &z->jobs[i];
        if (!s->j) continue;
        hub_cancel(s->j);
        if (!s->orphan)
            send_json(z, &s->to, error_event(s->id, 503, NULL, "the server is shutting down; the job was cancelled"));
        slot_release(z, s);
    }
    int linger = 200; /* ms for those last messages to leave */
    zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(z->sock);
    z->sock = NULL;
    return NULL;
}

static void front_free(struct zmq_front *z) {
    if (z->sock) zmq_close(z->sock);
    if (z->ctx) zmq_ctx_term(z->ctx);
    free(z->buf);
    free(z);
}

int zmq_front_start(struct zmq_front **out, const char *endpoint, struct hub *h, const struct front_model *m,
                    tp_err *e) {
    *out = NULL;
    struct zmq_front *z = calloc(1, sizeof *z);
    if (!z) return tp_errf(e, TP_ENOMEM, "out of host memory");
    z->h = h;
    z->m = m;
    atomic_init(&z->stop, false);
    z->ctx = zmq_ctx_new();
    if (!z->ctx) {
        int err = errno;
        free(z);
        return tp_errf(e, TP_EIO, "cannot create a ZeroMQ context: %s", zmq_strerror(err));
    }
    z->sock = zmq_socket(z->ctx, ZMQ_ROUTER);
    if (!z->sock) {
        int err = errno;
        front_free(z);
        return tp_errf(e, TP_EIO, "cannot create a ZeroMQ ROUTER socket: %s", zmq_strerror(err));
    }
    const int one = 1, zero = 0, sndhwm = ZMQ_FRONT_SNDHWM;
    const int64_t maxmsg = HARD_MAX_MSG;
    zmq_setsockopt(z->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(z->sock, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
    zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (zmq_bind(z->sock, endpoint) != 0) {
        int err = errno;
        front_free(z);
        return tp_errf(e, TP_EIO, "cannot bind the ZeroMQ endpoint '%s': %s%s", endpoint, zmq_strerror(err),
                       err == EINVAL || err == EPROTONOSUPPORT
                           ? " (give an endpoint such as tcp://127.0.0.1:5555 or ipc:///tmp/tpllm.sock)"
                       : err == EADDRINUSE ? " (another process listens there; pick another port)"
                                           : "");
    }
    size_t len = sizeof z->endpoint;
    if (zmq_getsockopt(z->sock, ZMQ_LAST_ENDPOINT, z->endpoint, &len) != 0)
        snprintf(z->endpoint, sizeof z->endpoint, "%s", endpoint);
    int rc = pthread_create(&z->thread, NULL, front_main, z);
    if (rc) {
        front_free(z);
        return tp_errf(e, TP_EIO, "cannot start the ZeroMQ front end's thread: %s", strerror(rc));
    }
    z->thread_started = true;
    *out = z;
    return 0;
}

const char *zmq_front_endpoint(const struct zmq_front *z) { return z ? z->endpoint : ""; }

void zmq_front_stop(struct zmq_front *z) {
    if (!z) return;
    atomic_store(&z->stop, true);
    if (z->thread_started) pthread_join(z->thread, NULL);
    front_free(z);
}
