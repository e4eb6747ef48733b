/* generate.c - one sequence's generation on the coordinator: prompt chunks, decode loop, stop strings. */
#include "generate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/sched.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct gen_ctx {
    gen_emit_fn emit;
    void *user;
    struct gen_result *res;
    int32_t *tokens;
    int64_t n, cap;
    bool caller_stop, done;
    enum sched_finish finish;
    char err[256];
    double t_first;
};

static void gen_text(struct gen_ctx *g, const char *text, size_t len) {
    if (!len || !g->emit || g->caller_stop) return;
    if (g->emit(g->user, text, len)) g->caller_stop = true;
}

static void gen_event(void *user, const struct sched_event *ev) {
    struct gen_ctx *g = user;
    if (ev->kind == SCHED_EV_TOKEN) {
        if (g->n == 0) g->t_first = now_s();
        if (g->n < g->cap) g->tokens[g->n++] = ev->token;
        gen_text(g, ev->text, ev->len);
    } else {
        gen_text(g, ev->text, ev->len);
        g->finish = ev->finish;
        if (ev->error) snprintf(g->err, sizeof g->err, "%s", ev->error);
        g->done = true;
    }
}

/* One request through the scheduler, stepped until it ends: the same code path as
 * `tpllm serve`, with a single sequence. */
int gen_run(struct engine *en, const struct tokenizer *tok, const struct gen_request *r, gen_emit_fn emit, void *user,
            struct gen_result *res, tp_err *e) {
    memset(res, 0, sizeof *res);
    const int64_t ctx = engine_ctx(en);
    const int64_t cap = TP_MIN(ctx, engine_n_blocks(en) * engine_block_size(en));
    if (r->n_prompt < 1) return tp_errf(e, TP_EINVAL, "the prompt is empty; give some text (or let BOS be added)");
    if (r->n_prompt >= cap)
        return tp_errf(e, TP_EINVAL, "the prompt has %lld tokens but the context is %lld; raise --ctx or shorten the prompt",
                       (long long)r->n_prompt, (long long)cap);
    int64_t max_new = r->max_tokens < 0 ? cap - r->n_prompt : TP_MIN(r->max_tokens, cap - r->n_prompt);
    if (max_new < 1) return 0; /* -n 0: nothing to generate */
    struct gen_ctx g = {.emit = emit, .user = user, .res = res, .cap = max_new};
    g.tokens = malloc((size_t)max_new * sizeof(int32_t));
    if (!g.tokens) return tp_errf(e, TP_ENOMEM, "out of host memory for %lld token ids", (long long)max_new);
    struct sched *s = NULL;
    int rc = sched_create(&s, en, tok, 1, e);
    struct sched_req q = {.prompt = r->prompt, .n_prompt = r->n_prompt, .max_tokens = max_new, .sp = r->sp,
                          .stops = r->stops, .n_stops = r->n_stops, .ignore_eos = r->ignore_eos};
    int64_t id = 0;
    if (!rc) {
        id = sched_submit(s, &q, gen_event, &g, e);
        if (id < 0) rc = (int)id;
    }
    const double t0 = now_s();
    bool cancelled = false;
    while (!rc && !g.done) {
        if (g.caller_stop && !cancelled) {
            sched_cancel(s, (uint64_t)id);
            cancelled = true;
        }
        rc = sched_step(s, e);
    }
    const double t1 = now_s();
    sched_free(s);
    if (!rc && g.finish == SCHED_FINISH_ERROR) rc = tp_errf(e, TP_EIO, "%s", g.err);
    res->n_prompt = r->n_prompt;
    res->n_gen = g.n;
    res->t_prompt = (g.n ? g.t_first : t1) - t0;
    res->t_gen = g.n ? t1 - g.t_first : 0;
    res->finish = g.caller_stop ? GEN_FINISH_CALLER : (enum gen_finish)g.finish;
    if (rc) {
        free(g.tokens);
        return rc;
    }
    res->tokens = g.tokens;
    return 0;
}
