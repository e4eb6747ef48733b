/* generate.c - one sequence's generation on the coordinator: prompt chunks, decode loop, stop strings. */
#include "generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stop.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int gen_run(struct engine *en, const struct tokenizer *tok, const struct gen_request *r, gen_emit_fn emit, void *user,
            struct gen_result *res, tp_err *e) {
    memset(res, 0, sizeof *res);
    int64_t ctx = engine_ctx(en), chunk = engine_max_batch(en);
    if (r->n_prompt < 1) return tp_errf(e, TP_EINVAL, "the prompt is empty; give some text (or let BOS be added)");
    if (r->n_prompt >= ctx)
        return tp_errf(e, TP_EINVAL, "the prompt has %lld tokens but the context is %lld; raise --ctx or shorten the prompt",
                       (long long)r->n_prompt, (long long)ctx);
    int64_t max_new = r->max_tokens < 0 ? ctx - r->n_prompt : TP_MIN(r->max_tokens, ctx - r->n_prompt);
    struct sampler smp;
    int rc = sampler_init(&smp, &r->sp, e);
    if (rc) return rc;
    struct stop_matcher *stop = NULL;
    if ((rc = stop_init(&stop, r->stops, r->n_stops, e))) return rc;
    int32_t *hist = malloc((size_t)(r->n_prompt + max_new + 1) * sizeof(int32_t));
    int32_t *pos = malloc((size_t)chunk * sizeof(int32_t));
    int32_t *seqv = calloc((size_t)chunk, sizeof(int32_t));
    struct detok dt;
    detok_init(&dt, tok, false);
    int seq = -1;
    if (!hist || !pos || !seqv) {
        rc = tp_errf(e, TP_ENOMEM, "out of host memory");
        goto done;
    }
    memcpy(hist, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    seq = engine_seq_open(en, r->n_prompt + 1, e);
    if (seq < 0) {
        rc = seq;
        goto done;
    }
    for (int64_t i = 0; i < chunk; i++) seqv[i] = seq;
    struct engine_row row = {.seq = seq, .params = &smp.p, .smp = &smp, .history = hist};
    res->n_prompt = r->n_prompt;
    double t0 = now_s();
    int32_t next = -1;
    /* prompt: chunks of up to `chunk` tokens; the last chunk samples the first token */
    for (int64_t s = 0; s < r->n_prompt; s += chunk) {
        int64_t n = TP_MIN(chunk, r->n_prompt - s);
        for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(s + i);
        bool last = s + n == r->n_prompt;
        int32_t row_idx = (int32_t)(n - 1);
        row.n_history = s + n;
        if (last) rc = engine_step(en, n, r->prompt + s, pos, seqv, 1, &row_idx, &row, &next, NULL, e);
        else rc = engine_step(en, n, r->prompt + s, pos, seqv, 0, NULL, NULL, NULL, NULL, e);
        if (rc) goto done;
    }
    res->t_prompt = now_s() - t0;
    t0 = now_s();
    int64_t n_hist = r->n_prompt;
    res->finish = GEN_FINISH_LENGTH;
    for (int64_t g = 0; g < max_new; g++) {
        hist[n_hist++] = next;
        res->n_gen++;
        if (!r->ignore_eos && tokenizer_is_eog(tok, next)) {
            res->finish = GEN_FINISH_EOG;
            break;
        }
        /* detokenize to valid UTF-8 first (split characters held, invalid bytes -> U+FFFD), then stops */
        const char *text;
        size_t len;
        struct stop_out so;
        if ((rc = detok_push(&dt, next, &text, &len, e))) goto done;
        if ((rc = stop_feed(stop, text, len, &so, e))) goto done;
        if (so.len && emit && emit(user, so.text, so.len)) {
            res->finish = GEN_FINISH_CALLER;
            break;
        }
        if (so.stopped) {
            res->finish = GEN_FINISH_STOP;
            break;
        }
        if (g + 1 == max_new) break;
        if ((rc = engine_seq_reserve(en, seq, n_hist + 1, e))) goto done;
        int32_t p = (int32_t)(n_hist - 1), row_idx = 0;
        row.n_history = n_hist;
        if ((rc = engine_step(en, 1, &next, &p, seqv, 1, &row_idx, &row, &next, NULL, e))) goto done;
    }
    if (res->finish != GEN_FINISH_STOP && res->finish != GEN_FINISH_CALLER) {
        struct stop_out so;
        const char *text;
        size_t len;
        if ((rc = detok_flush(&dt, &text, &len, e))) goto done;
        if ((rc = stop_feed(stop, text, len, &so, e))) goto done;
        if (so.len && emit) emit(user, so.text, so.len);
        stop_flush(stop, &so);
        if (so.len && emit) emit(user, so.text, so.len);
    }
    res->t_gen = now_s() - t0;
    res->tokens = malloc((size_t)TP_MAX(res->n_gen, (int64_t)1) * sizeof(int32_t));
    if (!res->tokens) {
        rc = tp_errf(e, TP_ENOMEM, "out of host memory for the %lld generated token ids", (long long)res->n_gen);
        goto done;
    }
    memcpy(res->tokens, hist + r->n_prompt, (size_t)res->n_gen * sizeof(int32_t));
done:
    if (seq >= 0) engine_seq_close(en, seq);
    stop_free(stop);
    free(hist);
    free(pos);
    free(seqv);
    detok_free(&dt);
    return rc;
}
