/* cmd_perplexity.c - `tpllm perplexity`: llama.cpp-compatible perplexity of a text file.
 *
 * As llama.cpp's perplexity tool: the text is tokenized once (BOS as the model says), cut
 * into chunks of --ctx tokens, the first token of each chunk replaced by BOS, and only the
 * second half of each chunk is scored: PPL = exp(mean over scored positions of -log p). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: [mpirun -np N] tpllm perplexity -m FILE -f TEXT [--ctx N] [--chunks N] [options]\n\n"
            "  -f, --file PATH         the text to score\n"
            "  --chunks N              score at most N chunks (default: all)\n"
            "  (--ctx is the chunk length; default 512)\n%s",
            boot_opts_usage);
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long n = ftell(f);
    rewind(f);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = (size_t)n;
    }
    return buf;
}

/* Rank 0: score every chunk; prints llama.cpp-style running estimates. */
static int run(struct boot *b, const char *text, size_t len, int64_t n_ctx, int64_t max_chunks, double *ppl_out, tp_err *e) {
    int64_t n_tok = 0;
    tokenizer_encode(b->tok, text, len, true, false, NULL, 0, &n_tok, NULL);
    int32_t *toks = malloc((size_t)(n_tok + 1) * sizeof(int32_t));
    if (!toks) return tp_errf(e, TP_ENOMEM, "out of memory");
    int rc = tokenizer_encode(b->tok, text, len, true, false, toks, n_tok + 1, &n_tok, e);
    if (rc) {
        free(toks);
        return rc;
    }
    int64_t n_chunk = n_tok / n_ctx;
    if (max_chunks > 0) n_chunk = TP_MIN(n_chunk, max_chunks);
    if (n_chunk < 1) {
        free(toks);
        return tp_errf(e, TP_EINVAL, "the text has %lld tokens, fewer than one chunk of --ctx %lld; use a longer text or a smaller --ctx",
                       (long long)n_tok, (long long)n_ctx);
    }
    int64_t first = n_ctx / 2, chunk = engine_max_batch(b->engine);
    int32_t bos = tokenizer_bos(b->tok);
    int32_t *batch = malloc((size_t)n_ctx * sizeof(int32_t)), *pos = malloc((size_t)chunk * sizeof(int32_t));
    int32_t *seqv = malloc((size_t)chunk * sizeof(int32_t)), *rows = malloc((size_t)chunk * sizeof(int32_t));
    int32_t *tgt = malloc((size_t)chunk * sizeof(int32_t));
    double *nll = malloc((size_t)chunk * sizeof(double));
    if (!batch || !pos || !seqv || !rows || !tgt || !nll) rc = tp_errf(e, TP_ENOMEM, "out of memory");
    double sum = 0, sum2 = 0;
    int64_t count = 0;
    fprintf(stderr, "perplexity: %lld tokens, %lld chunks of %lld, scoring positions %lld..%lld of each\n", (long long)n_tok,
            (long long)n_chunk, (long long)n_ctx, (long long)first, (long long)(n_ctx - 2));
    for (int64_t c = 0; rc == 0 && c < n_chunk; c++) {
        const int32_t *src = toks + c * n_ctx;
        memcpy(batch, src, (size_t)n_ctx * sizeof(int32_t));
        if (bos >= 0 && tokenizer_add_bos(b->tok)) batch[0] = bos;
        int seq = engine_seq_open(b->engine, n_ctx, e);
        if (seq < 0) {
            rc = seq;
            break;
        }
        for (int64_t s = 0; rc == 0 && s < n_ctx; s += chunk) {
            int64_t m = TP_MIN(chunk, n_ctx - s), nr = 0;
            for (int64_t i = 0; i < m; i++) {
                pos[i] = (int32_t)(s + i);
                seqv[i] = seq;
                int64_t j = s + i;
                if (j >= first && j < n_ctx - 1) {
                    rows[nr] = (int32_t)i;
                    tgt[nr++] = src[j + 1];
                }
            }
            rc = engine_score(b->engine, m, batch + s, pos, seqv, nr, rows, tgt, nll, e);
            for (int64_t r = 0; rc == 0 && r < nr; r++) {
                sum += nll[r];
                sum2 += nll[r] * nll[r];
                count++;
            }
        }
        engine_seq_close(b->engine, seq);
        if (rc == 0) fprintf(stdout, "[%lld]%.4f,", (long long)(c + 1), exp(sum / (double)count));
        fflush(stdout);
    }
    if (rc == 0) {
        double mean = sum / (double)count, var = sum2 / (double)count - mean * mean;
        double ppl = exp(mean), err = ppl * sqrt(TP_MAX(var, 0.0) / (double)TP_MAX(count - 1, (int64_t)1));
        printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, err);
        *ppl_out = ppl;
    }
    free(toks);
    free(batch);
    free(pos);
    free(seqv);
    free(rows);
    free(tgt);
    free(nll);
    return rc;
}

int cmd_perplexity(int argc, char **argv) {
    struct boot_opts bo;
    boot_opts_default(&bo);
    bo.eng.ctx = 512;
    bo.eng.max_logits = -1; /* set below to the batch size: every scored row needs logits */
    const char *path = NULL;
    int64_t max_chunks = 0;
    for (int i = 1; i < argc; i++) {
        boot_config_at(argv[i]);
        int r = boot_parse_opt(&bo, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (i + 1 < argc && (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--file"))) {
            path = argv[++i];
        } else if (i + 1 < argc && !strcmp(argv[i], "--chunks")) {
            char *end;
            max_chunks = strtoll(argv[++i], &end, 10);
            if (*end || max_chunks < 1) {
                fprintf(stderr, "tpllm perplexity: --chunks expects a positive integer, got '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "tpllm perplexity: unknown or incomplete option '%s'. Run 'tpllm perplexity --help'.\n", argv[i]);
            return 2;
        }
    }
    boot_config_at(NULL);
    bo.eng.max_logits = bo.eng.max_batch_tokens;
    if (!bo.model || !path) {
        fprintf(stderr, "tpllm perplexity: give the model (-m FILE.gguf) and the text (-f FILE)\n");
        return 2;
    }
    size_t len = 0;
    char *text = slurp(path, &len);
    if (!text) {
        fprintf(stderr, "tpllm perplexity: cannot read '%s'; check the path\n", path);
        return 2;
    }
    if (boot_mpi_init(&argc, &argv)) {
        free(text);
        return 1;
    }
    tp_err e = {0};
    struct boot b;
    int status = 0;
    int rc = boot_start(&b, &bo, &e);
    if (rc) {
        if (b.rank == 0) fprintf(stderr, "tpllm: %s\n", e.msg);
        status = 1;
    } else if (b.rank != 0) {
        if (engine_worker_loop(b.engine, &e)) comm_abort(b.comm, 1, e.msg);
    } else {
        double ppl = 0;
        rc = run(&b, text, len, engine_ctx(b.engine), max_chunks, &ppl, &e);
        if (rc == TP_ECOMM) comm_abort(b.comm, 1, e.msg);
        if (rc) {
            fprintf(stderr, "tpllm perplexity: %s\n", e.msg);
            status = 1;
        }
        tp_err e2 = {0};
        if (engine_shutdown(b.engine, &e2)) comm_abort(b.comm, 1, e2.msg);
    }
    boot_finish(&b);
    boot_mpi_finalize();
    free(text);
    return status;
}
