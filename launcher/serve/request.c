/* request.c - OpenAI-style request JSON into a hub_job (request.h). */
#include "request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

#define BAD(field, ...) (*param = (field), tp_errf(e, TP_EINVAL, __VA_ARGS__))

/* A number field in [lo, hi] (open at lo when lo_open); absent or null keeps *out. */
static int get_num(const json_t *root, const char *f, double lo, bool lo_open, double hi, float *out,
                   const char **param, tp_err *e) {
    const json_t *v = json_object_get(root, f);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(f, "'%s' must be a number, got %s", f, type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
        return BAD(f, "'%s' must be in %s%g, %g], got %g", f, lo_open ? "(" : "[", lo, hi, x);
    *out = (float)x;
    return 0;
}

static int get_int(const json_t *root, const char *f, long long lo, long long hi, long long *out, bool *given,
                   const char **param, tp_err *e) {
    const json_t *v = json_object_get(root, f);
    if (given) *given = false;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return BAD(f, "'%s' must be an integer, got %s", f, type_name(v));
    long long x = (long long)json_integer_value(v);
    if (x < lo || x > hi) return BAD(f, "'%s' must be in [%lld, %lld], got %lld", f, lo, hi, x);
    *out = x;
    if (given) *given = true;
    return 0;
}

static int get_bool(const json_t *root, const char *f, bool *out, const char **param, tp_err *e) {
    const json_t *v = json_object_get(root, f);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(f, "'%s' must be true or false, got %s", f, type_name(v));
    *out = json_is_true(v);
    return 0;
}

static int take_stop(struct hub_job *j, const json_t *s, const char **param, tp_err *e) {
    if (!json_is_string(s)) return BAD("stop", "'stop' must be a string or a list of strings, got %s in it", type_name(s));
    size_t n = json_string_length(s);
    if (n == 0) return 0;
    if (n > 256) return BAD("stop", "a stop string is %zu bytes; at most 256", n);
    if (j->n_stops == HUB_MAX_STOPS) return BAD("stop", "at most %d stop strings", HUB_MAX_STOPS);
    char *c = malloc(n + 1);
    if (!c) return tp_errf(e, TP_ENOMEM, "out of host memory");
    memcpy(c, json_string_value(s), n + 1);
    j->stops[j->n_stops++] = c;
    return 0;
}

/* "prompt": a string, [string], [ids] or [[ids]]. */
static int take_prompt(const json_t *root, const struct front_model *m, struct hub_job *j, const char **param,
                       tp_err *e) {
    const json_t *p = json_object_get(root, "prompt");
    if (!p || json_is_null(p)) return BAD("prompt", "'prompt' is required (a string, or a list of token ids)");
    if (json_is_array(p) && json_array_size(p) == 1 && !json_is_integer(json_array_get(p, 0)))
        p = json_array_get(p, 0); /* a batch of one */
    if (json_is_string(p)) {
        if (json_string_length(p) == 0) return BAD("prompt", "'prompt' is empty; give some text");
        return front_encode_text(m, json_string_value(p), json_string_length(p), &j->prompt, &j->n_prompt, e);
    }
    if (!json_is_array(p)) return BAD("prompt", "'prompt' must be a string or a list of token ids, got %s", type_name(p));
    size_t n = json_array_size(p);
    if (n == 0) return BAD("prompt", "'prompt' is empty; give some text");
    if (!json_is_integer(json_array_get(p, 0)))
        return BAD("prompt", "'prompt' with %zu entries: one prompt per request (n and batches of prompts are not "
                   "supported; send one request each)", n);
    if ((int64_t)n >= m->ctx) return BAD("prompt", "'prompt' has %zu tokens; the context is %lld", n, (long long)m->ctx);
    j->prompt = malloc(n * sizeof(int32_t));
    if (!j->prompt) return tp_errf(e, TP_ENOMEM, "out of host memory");
    const int32_t V = tokenizer_n_vocab(m->tok);
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_array_get(p, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= V)
            return BAD("prompt", "'prompt'[%zu] must be a token id in [0, %d)", i, V);
        j->prompt[i] = (int32_t)json_integer_value(t);
    }
    j->n_prompt = (int64_t)n;
    return 0;
}

/* "messages": [{role, content}], content a string or [{type: "text", text}]. */
static int take_messages(const json_t *root, const struct front_model *m, struct hub_job *j, const char **param,
                         tp_err *e) {
    const json_t *a = json_object_get(root, "messages");
    if (!a || !json_is_array(a) || json_array_size(a) == 0)
        return BAD("messages", "'messages' is required: a non-empty list of {\"role\", \"content\"}");
    const size_t n = json_array_size(a);
    if (n > 1024) return BAD("messages", "%zu messages; at most 1024", n);
    struct chat_message *msgs = calloc(n, sizeof *msgs);
    char **owned = calloc(n, sizeof *owned);
    int rc = msgs && owned ? 0 : tp_errf(e, TP_ENOMEM, "out of host memory");
    for (size_t i = 0; !rc && i < n; i++) {
        const json_t *o = json_array_get(a, i), *role = json_object_get(o, "role"), *c = json_object_get(o, "content");
        if (!json_is_object(o)) {
            rc = BAD("messages", "messages[%zu] must be an object with \"role\" and \"content\", got %s", i, type_name(o));
            break;
        }
        if (!json_is_string(role)) {
            rc = BAD("messages", "messages[%zu].role must be a string (system, user or assistant)", i);
            break;
        }
        msgs[i].role = json_string_value(role);
        if (json_is_string(c)) {
            msgs[i].content = json_string_value(c);
        } else if (json_is_array(c)) { /* text parts, joined */
            size_t len = 0;
            for (size_t k = 0; k < json_array_size(c); k++) {
                const json_t *part = json_array_get(c, k), *ty = json_object_get(part, "type"),
                             *tx = json_object_get(part, "text");
                if (!json_is_string(ty) || strcmp(json_string_value(ty), "text") || !json_is_string(tx)) {
                    rc = BAD("messages", "messages[%zu].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts "
                             "are supported", i, k);
                    break;
                }
                len += json_string_length(tx);
            }
            if (rc) break;
            owned[i] = malloc(len + 1);
            if (!owned[i]) {
                rc = tp_errf(e, TP_ENOMEM, "out of host memory");
                break;
            }
            size_t off = 0;
            for (size_t k = 0; k < json_array_size(c); k++) {
                const json_t *tx = json_object_get(json_array_get(c, k), "text");
                memcpy(owned[i] + off, json_string_value(tx), json_string_length(tx));
                off += json_string_length(tx);
            }
            owned[i][off] = '\0';
            msgs[i].content = owned[i];
        } else if (json_is_null(c) && !strcmp(msgs[i].role, "assistant")) {
            msgs[i].content = "";
        } else {
            rc = BAD("messages", "messages[%zu].content must be a string or a list of text parts, got %s", i,
                     c ? type_name(c) : "nothing");
            break;
        }
    }
    if (!rc) {
        rc = front_encode_chat(m, msgs, n, &j->prompt, &j->n_prompt, e);
        if (rc == TP_EINVAL) *param = "messages";
    }
    if (owned)
        for (size_t i = 0; i < n; i++) free(owned[i]);
    free(owned);
    free(msgs);
    return rc;
}

int req_parse(const json_t *root, enum req_kind kind, const struct front_model *m, struct hub_job *j,
              struct req_extra *x, const char **param, tp_err *e) {
    *param = NULL;
    memset(x, 0, sizeof *x);
    if (!json_is_object(root)) return BAD(NULL, "the request body must be a JSON object");
    const json_t *model = json_object_get(root, "model");
    snprintf(x->model, sizeof x->model, "%s", m->name);
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return BAD("model", "'model' must be a string, got %s", type_name(model));
        if (strcmp(json_string_value(model), m->name)) {
            *param = "model";
            return tp_errf(e, TP_ENOTFOUND, "the model '%.200s' does not exist; this server serves '%s' (GET /v1/models)",
                           json_string_value(model), m->name);
        }
    }
    /* fields a client may send that this server does not do: refused, not ignored */
    static const char *const unsupported[] = {"suffix", "logit_bias", "best_of", "tools", "functions", "response_format"};
    for (size_t i = 0; i < TP_ARRAY_LEN(unsupported); i++) {
        const json_t *v = json_object_get(root, unsupported[i]);
        if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0) &&
            !(json_is_array(v) && json_array_size(v) == 0) && !(json_is_integer(v) && json_integer_value(v) == 1))
            return BAD(unsupported[i], "'%s' is not supported by this server; leave it out", unsupported[i]);
    }
    const json_t *echo = json_object_get(root, "echo");
    if (echo && json_is_true(echo)) return BAD("echo", "'echo' is not supported by this server; leave it out");
    long long nn = 1;
    int rc = get_int(root, "n", 1, 1, &nn, NULL, param, e);
    if (rc) {
        tp_err_clear(e);
        return BAD("n", "'n' must be 1 (several choices per request are not supported; send several requests)");
    }

    /* sampling: OpenAI's defaults (temperature 1, nucleus off), not the command line's */
    struct sampler_params *sp = &j->sp;
    sampler_params_default(sp);
    sp->temperature = 1.0f;
    sp->top_p = 1.0f;
    sp->top_k = 0;
    sp->min_p = 0.0f;
    sp->seed = SAMPLER_SEED_RANDOM;
    if ((rc = get_num(root, "temperature", 0, false, 2, &sp->temperature, param, e))) return rc;
    if ((rc = get_num(root, "top_p", 0, true, 1, &sp->top_p, param, e))) return rc;
    if ((rc = get_num(root, "min_p", 0, false, 1, &sp->min_p, param, e))) return rc;
    if ((rc = get_num(root, "presence_penalty", -2, false, 2, &sp->presence_penalty, param, e))) return rc;
    if ((rc = get_num(root, "frequency_penalty", -2, false, 2, &sp->frequency_penalty, param, e))) return rc;
    if ((rc = get_num(root, "repetition_penalty", 0, true, 10, &sp->repeat_penalty, param, e))) return rc;
    long long v;
    bool given;
    if ((rc = get_int(root, "top_k", -1, m->n_cand, &v, &given, param, e))) {
        if (strstr(e->msg, "must be in")) {
            tp_err_clear(e);
            return BAD("top_k", "'top_k' must be -1 or 0 (off) or at most %d (the server's --n-cand)", m->n_cand);
        }
        return rc;
    }
    if (given) sp->top_k = v < 0 ? 0 : (int32_t)v;
    if ((rc = get_int(root, "seed", INT64_MIN, INT64_MAX, &v, &given, param, e))) return rc;
    if (given) sp->seed = (uint64_t)v == SAMPLER_SEED_RANDOM ? 0 : (uint64_t)v;
    sp->repeat_last_n = -1; /* penalties over the whole history, as OpenAI's */
    if (sampler_params_validate(sp, e)) {
        *param = "temperature";
        return TP_EINVAL;
    }

    /* length */
    j->max_tokens = kind == REQ_COMPLETION ? 16 : -1;
    const char *mt = json_object_get(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((rc = get_int(root, mt, 1, INT32_MAX, &v, &given, param, e))) return rc;
    if (given) j->max_tokens = v;
    if ((rc = get_bool(root, "ignore_eos", &j->ignore_eos, param, e))) return rc;

    /* stop strings */
    const json_t *st = json_object_get(root, "stop");
    if (st && !json_is_null(st)) {
        if (json_is_array(st)) {
            for (size_t i = 0; i < json_array_size(st); i++)
                if ((rc = take_stop(j, json_array_get(st, i), param, e))) return rc;
        } else if ((rc = take_stop(j, st, param, e))) {
            return rc;
        }
    }

    /* streaming and log-probabilities */
    if ((rc = get_bool(root, "stream", &x->stream, param, e))) return rc;
    const json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return BAD("stream_options", "'stream_options' must be an object");
        if ((rc = get_bool(so, "include_usage", &x->include_usage, param, e))) return rc;
    }
    const json_t *lp = json_object_get(root, "logprobs");
    if (kind == REQ_CHAT) {
        if ((rc = get_bool(root, "logprobs", &j->logprobs, param, e))) return rc;
        if ((rc = get_int(root, "top_logprobs", 0, 20, &v, &given, param, e))) return rc;
        if (given) {
            if (!j->logprobs) return BAD("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
            x->top_logprobs = (int)v;
            j->top_logprobs = (int)v;
        }
    } else if (lp && !json_is_null(lp)) {
        if (!json_is_integer(lp) || json_integer_value(lp) < 0 || json_integer_value(lp) > 20)
            return BAD("logprobs", "'logprobs' must be an integer in [0, 20] for completions");
        j->logprobs = true;
        x->top_logprobs = (int)json_integer_value(lp);
        j->top_logprobs = x->top_logprobs;
    }

    /* the prompt last: it is the expensive part */
    if (kind == REQ_CHAT) return take_messages(root, m, j, param, e);
    return take_prompt(root, m, j, param, e);
}
