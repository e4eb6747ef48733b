/* cmd_bench.c - `tpllm bench`: offline throughput sweeps, as llama-bench does them, through
 * the same scheduler `tpllm serve` uses.
 *
 *   ppN      prompt processing: one N-token prompt (chunked by --max-batch-tokens), tok/s
 *   tgN@bB   decode: B sequences at once, each generating N tokens after a short prompt;
 *            aggregate tok/s of the decode steps (the prompts' time excluded)
 *   tgN@dD   the same after a D-token prompt (llama-bench's -d): decode at depth D
 *            (tgN@bB@dD for B > 1)
 *
 * Every test runs --repeat times (mean and standard deviation); every repetition's tokens
 * are checked (valid ids, and the same greedy tokens at every repetition: a benchmark that
 * produced different output would be measuring something else). Decode figures come with
 * their roofline: the bytes a step reads on this rank (the weights once, plus each
 * sequence's KV cache up to its position) over the memory bandwidth measured here (CPU: a
 * threaded read of a 256 MiB buffer; GPU: not measured here). Under mpirun the job's TP
 * size is part of every row, and decode rows give the time rank 0 spends inside
 * collectives per step. Output: a Markdown table (default), --json or --csv. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_serve.h"
#include "boot.h"
#include "commands.h"
#include "runtime/serve/sched.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: [mpirun -np N] tpllm bench -m FILE [-p LIST] [-n LIST] [-b LIST] [-d LIST] [--repeat R]\n"
            "                             [--json|--csv] [--plot FILE.png]\n"
            "       tpllm bench serve --url URL ...   (online load test of a running server: see its --help)\n\n"
            "  -p, --n-prompt LIST     prompt lengths to time (default 512); 0 for none\n"
            "  -n, --n-gen LIST        generated tokens per sequence for the decode tests (default 128); 0 for none\n"
            "  -b, --batch LIST        sequences decoding at once (default 1); e.g. 1,4,16,64\n"
            "  -d, --depth LIST        decode after a prompt of D tokens (default 0: a 16-token prompt); e.g. 0,1024,4096\n"
            "                          (the context grows to fit; the model's trained context is the limit)\n"
            "  -r, --repeat R          repetitions of each test (default 3): mean and stddev\n"
            "  --json, --csv           machine-readable output instead of the Markdown table\n"
            "  --plot FILE.png         also draw decode tok/s against batch size (with the roofline) and prompt\n"
            "                          tok/s against prompt length (needs gnuplot: apt-get install gnuplot-nox)\n%s",
            boot_opts_usage);
}

#define BENCH_MAX_LIST 16

struct bench_args {
    struct boot_opts bo;
    int64_t pp[BENCH_MAX_LIST], tg[BENCH_MAX_LIST], batch[BENCH_MAX_LIST], depth[BENCH_MAX_LIST];
    int n_pp, n_tg, n_batch, n_depth, repeat;
    int64_t ctx_needed; /* the longest sequence of the sweep (prompt + generated) */
    enum { OUT_MD, OUT_JSON, OUT_CSV } out;
    const char *plot; /* --plot FILE.png */
};

/* Reads "a,b,c" into out[]; zeros are dropped ("0 for none") unless keep_zero. */
static int parse_list(const char *flag, const char *v, int64_t lo, int64_t hi, bool keep_zero, int64_t *out, int *n) {
    *n = 0;
    const char *p = v;
    while (*p) {
        char *end;
        long long x = strtoll(p, &end, 10);
        if (end == p || x < lo || x > hi || (*end && *end != ',') || *n == BENCH_MAX_LIST) {
            fprintf(stderr, "tpllm bench: %s expects a comma-separated list of up to %d integers in [%lld, %lld], "
                    "got '%s'\n", flag, BENCH_MAX_LIST, (long long)lo, (long long)hi, v);
            return -1;
        }
        if (x > 0 || keep_zero) out[(*n)++] = x;
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* The prompt a decode test at depth d runs after: d tokens, or the short default of 16. */
static int64_t decode_prompt(int64_t depth) { return depth > 0 ? depth : 16; }

static int parse(struct bench_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    boot_opts_default(&a->bo);
    a->pp[0] = 512, a->n_pp = 1;
    a->tg[0] = 128, a->n_tg = 1;
    a->batch[0] = 1, a->n_batch = 1;
    a->depth[0] = 0, a->n_depth = 1;
    a->repeat = 3;
    for (int i = 1; i < argc; i++) {
        boot_config_at(argv[i]);
        int r = boot_parse_opt(&a->bo, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(o, "--json")) {
            a->out = OUT_JSON;
        } else if (!strcmp(o, "--csv")) {
            a->out = OUT_CSV;
        } else if (v && !strcmp(o, "--plot")) {
            a->plot = argv[++i];
        } else if (v && (!strcmp(o, "-p") || !strcmp(o, "--n-prompt"))) {
            if (parse_list(o, argv[++i], 0, 1 << 20, false, a->pp, &a->n_pp)) return 2;
        } else if (v && (!strcmp(o, "-n") || !strcmp(o, "--n-gen"))) {
            if (parse_list(o, argv[++i], 0, 1 << 20, false, a->tg, &a->n_tg)) return 2;
        } else if (v && (!strcmp(o, "-b") || !strcmp(o, "--batch"))) {
            if (parse_list(o, argv[++i], 1, 1024, false, a->batch, &a->n_batch)) return 2;
            if (a->n_batch == 0) {
                fprintf(stderr, "tpllm bench: -b needs at least one batch size >= 1\n");
                return 2;
            }
        } else if (v && (!strcmp(o, "-d") || !strcmp(o, "--depth"))) {
            if (parse_list(o, argv[++i], 0, 1 << 20, true, a->depth, &a->n_depth)) return 2;
            if (a->n_depth == 0) {
                fprintf(stderr, "tpllm bench: -d needs at least one depth (0 for the short default prompt)\n");
                return 2;
            }
        } else if (v && (!strcmp(o, "-r") || !strcmp(o, "--repeat"))) {
            char *end;
            long r2 = strtol(argv[++i], &end, 10);
            if (*end || r2 < 1 || r2 > 100) {
                fprintf(stderr, "tpllm bench: --repeat expects an integer in [1, 100], got '%s'\n", argv[i]);
                return 2;
            }
            a->repeat = (int)r2;
        } else {
            fprintf(stderr, "tpllm bench: unknown or incomplete option '%s'. Run 'tpllm bench --help'.\n", o);
            return 2;
        }
    }
    boot_config_at(NULL);
    if (!a->bo.model) {
        fprintf(stderr, "tpllm bench: no model given; pass -m FILE.gguf\n");
        return 2;
    }
    int64_t max_b = 1, max_ctx = 64;
    for (int k = 0; k < a->n_batch; k++) max_b = TP_MAX(max_b, a->batch[k]);
    for (int k = 0; k < a->n_pp; k++) max_ctx = TP_MAX(max_ctx, a->pp[k] + 1);
    for (int k = 0; k < a->n_tg; k++)
        for (int d = 0; d < a->n_depth; d++) max_ctx = TP_MAX(max_ctx, decode_prompt(a->depth[d]) + a->tg[k]);
    a->ctx_needed = max_ctx;
    a->bo.eng.max_seqs = max_b;
    if (a->bo.eng.ctx < max_ctx) a->bo.eng.ctx = max_ctx;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- memory bandwidth: a threaded read of a buffer larger than the caches ---- */

struct bw_part {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *bw_read(void *arg) {
    struct bw_part *b = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= b->n; i += 4) s0 += b->p[i], s1 += b->p[i + 1], s2 += b->p[i + 2], s3 += b->p[i + 3];
    b->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* GB/s of reading 256 MiB with `threads` threads (the best of 5 passes); 0 when it cannot run.
 * tests/perf/bwprobe is the same loop over 1 GiB, for measurements outside a run. */
static double measure_bandwidth(int threads) {
    const size_t bytes = (size_t)256 << 20, n = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    threads = TP_MAX(1, TP_MIN(threads, 64));
    struct bw_part parts[64];
    pthread_t th[64];
    double best = 0;
    uint64_t check = 0;
    for (int pass = 0; pass < 5; pass++) {
        double t0 = now_s();
        for (int t = 0; t < threads; t++) {
            parts[t] = (struct bw_part){buf + n / threads * t, t + 1 == threads ? n - n / threads * t : n / threads, 0};
            pthread_create(&th[t], NULL, bw_read, &parts[t]);
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(th[t], NULL);
            check += parts[t].sum;
        }
        double gbs = (double)bytes / (now_s() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return check ? best : 0;
}

/* ---- one test ---- */

struct run_ctx {
    int64_t n_done, n_seq;
    int32_t *toks; /* [n_seq][cap] */
    int64_t *n_tok, cap;
    uint64_t *ids;
    double t_first_all; /* when the last sequence got its first token */
    int64_t firsts;
    bool failed;
    char err[256];
};

static void on_event(void *user, const struct sched_event *ev) {
    struct run_ctx *c = user;
    int64_t k = -1;
    for (int64_t i = 0; i < c->n_seq; i++)
        if (c->ids[i] == ev->id) k = i;
    if (k < 0) return;
    if (ev->kind == SCHED_EV_TOKEN) {
        if (ev->n_gen == 1 && ++c->firsts == c->n_seq) c->t_first_all = now_s();
        if (c->n_tok[k] < c->cap) c->toks[k * c->cap + c->n_tok[k]++] = ev->token;
    } else {
        if (ev->finish == SCHED_FINISH_ERROR) {
            c->failed = true;
            snprintf(c->err, sizeof c->err, "%s", ev->error ? ev->error : "step failed");
        }
        c->n_done++;
    }
}

/* n_seq sequences of prompt length n_prompt generating n_gen each; returns tok/s of the
 * phase asked (prompt: n_prompt / time to the first token; decode: (n_gen - 1) * n_seq over
 * the time from the last first token to the end). tokens get the generated ids; *coll_ms
 * the milliseconds rank 0 spent inside collectives per decode step (those same steps). */
static int run_once(struct boot *b, int64_t n_seq, int64_t n_prompt, int64_t n_gen, bool decode, double *tps,
                    double *coll_ms, int32_t *tokens, tp_err *e) {
    struct sched *s = NULL;
    int rc = sched_create(&s, b->engine, b->tok, n_seq, e);
    if (rc) return rc;
    struct run_ctx c = {.n_seq = n_seq, .cap = n_gen};
    c.toks = tokens;
    c.n_tok = calloc((size_t)n_seq, sizeof *c.n_tok);
    c.ids = calloc((size_t)n_seq, sizeof *c.ids);
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    if (!c.n_tok || !c.ids || !prompt) rc = tp_errf(e, TP_ENOMEM, "out of host memory");
    const int32_t V = tokenizer_n_vocab(b->tok);
    for (int64_t i = 0; !rc && i < n_seq; i++) {
        /* distinct prompts: ids spread over the vocabulary (BOS first where the model has one) */
        for (int64_t t = 0; t < n_prompt; t++) prompt[t] = (int32_t)((1000 + 7919 * (i * n_prompt + t)) % V);
        if (tokenizer_bos(b->tok) >= 0) prompt[0] = tokenizer_bos(b->tok);
        struct sampler_params sp;
        sampler_params_default(&sp);
        sp.temperature = 0;
        struct sched_req q = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = n_gen, .sp = sp, .ignore_eos = true};
        int64_t id = sched_submit(s, &q, on_event, &c, e);
        if (id < 0) rc = (int)id;
        else c.ids[i] = (uint64_t)id;
    }
    const double t0 = now_s();
    struct comm_stats cs0 = {0};
    int64_t decode_steps = 0;
    while (!rc && c.n_done < n_seq) {
        /* every step after the last sequence's first token is a decode step */
        if (c.firsts == n_seq && decode_steps++ == 0) cs0 = comm_get_stats(b->comm);
        rc = sched_step(s, e);
    }
    const double t1 = now_s();
    const struct comm_stats cs1 = comm_get_stats(b->comm);
    *coll_ms = decode_steps > 0 ? 1e3 * (cs1.seconds - cs0.seconds) / (double)decode_steps : 0;
    if (!rc && c.failed) rc = tp_errf(e, TP_EIO, "%s", c.err);
    for (int64_t i = 0; !rc && i < n_seq; i++)
        if (c.n_tok[i] != n_gen) rc = tp_errf(e, TP_EIO, "sequence %lld generated %lld tokens, not %lld", (long long)i,
                                              (long long)c.n_tok[i], (long long)n_gen);
    for (int64_t i = 0; !rc && i < n_seq * n_gen; i++)
        if (tokens[i] < 0 || tokens[i] >= V) rc = tp_errf(e, TP_EIO, "generated an invalid token id %d", tokens[i]);
    if (!rc) {
        if (decode) *tps = n_gen > 1 ? (double)(n_gen - 1) * (double)n_seq / (t1 - c.t_first_all) : 0;
        else *tps = (double)n_prompt * (double)n_seq / (c.t_first_all - t0);
    }
    sched_free(s);
    free(c.n_tok);
    free(c.ids);
    free(prompt);
    return rc;
}

struct result {
    char name[32];
    bool decode;               /* a tg row (else pp) */
    int64_t n_prompt, n_gen, batch, depth;
    double mean, sd, roofline; /* tok/s; roofline 0 when not computed */
    double kv_bytes;           /* decode: KV-cache bytes rank 0 reads per step (all B sequences, mean over the steps) */
    double coll_ms;            /* decode: ms rank 0 spends inside collectives per step (mean over the repeats) */
};

/* KV-cache bytes one sequence's decode steps read on this rank, the mean over the timed
 * steps: step j (1 .. n_gen - 1) attends over n_prompt + j positions, K and V of every
 * local KV head in every layer, sliding-window layers at most the window. */
static double kv_step_bytes(const struct boot *b, enum dtype kv_type, int64_t n_prompt, int64_t n_gen) {
    const struct model_config *c = &b->cfg;
    const double per_pos = (double)b->model.sh.n_kv_l *
                           (double)(dtype_row_bytes(kv_type, c->head_dim) + dtype_row_bytes(kv_type, c->head_dim_v));
    double sum = 0;
    for (int64_t j = 1; j < n_gen; j++)
        for (int64_t il = 0; il < c->n_layer; il++) {
            int64_t ctx = n_prompt + j;
            if (model_config_layer_is_swa(c, il)) ctx = TP_MIN(ctx, c->sliding_window);
            sum += (double)ctx * per_pos;
        }
    return n_gen > 1 ? sum / (double)(n_gen - 1) : 0;
}

static int run_test(struct boot *b, const struct bench_args *a, int64_t n_seq, int64_t n_prompt, int64_t n_gen,
                    bool decode, struct result *r, tp_err *e) {
    double v[100], coll[100], coll_warm;
    int32_t *ref = malloc((size_t)(n_seq * n_gen) * sizeof(int32_t)), *got = malloc((size_t)(n_seq * n_gen) * sizeof(int32_t));
    int rc = ref && got ? 0 : tp_errf(e, TP_ENOMEM, "out of host memory");
    /* a warm-up run (page cache, thread pools), checked like the others */
    if (!rc) rc = run_once(b, n_seq, n_prompt, n_gen, decode, &v[0], &coll_warm, ref, e);
    for (int k = 0; !rc && k < a->repeat; k++) {
        rc = run_once(b, n_seq, n_prompt, n_gen, decode, &v[k], &coll[k], got, e);
        if (!rc && memcmp(ref, got, (size_t)(n_seq * n_gen) * sizeof(int32_t)))
            rc = tp_errf(e, TP_EIO, "repetition %d generated other greedy tokens than the first: the run is not "
                         "deterministic (a bug; please report it)", k + 1);
    }
    if (!rc) {
        double m = 0, s2 = 0, cm = 0;
        for (int k = 0; k < a->repeat; k++) m += v[k], cm += coll[k];
        m /= a->repeat;
        for (int k = 0; k < a->repeat; k++) s2 += (v[k] - m) * (v[k] - m);
        r->mean = m;
        r->sd = a->repeat > 1 ? sqrt(s2 / (a->repeat - 1)) : 0;
        r->n_prompt = n_prompt;
        r->n_gen = n_gen;
        r->batch = n_seq;
        r->decode = decode;
        r->coll_ms = decode ? cm / a->repeat : 0;
        r->kv_bytes = decode ? (double)n_seq * kv_step_bytes(b, a->bo.eng.kv_type, n_prompt, n_gen) : 0;
    }
    free(ref);
    free(got);
    return rc;
}

/* "pp512", "tg128@b4"; at a depth "tg128@d1024" (batch 1) or "tg128@b4@d1024". */
static void result_name(struct result *r, bool decode) {
    if (!decode) snprintf(r->name, sizeof r->name, "pp%lld", (long long)r->n_prompt);
    else if (r->depth == 0) snprintf(r->name, sizeof r->name, "tg%lld@b%lld", (long long)r->n_gen, (long long)r->batch);
    else if (r->batch == 1) snprintf(r->name, sizeof r->name, "tg%lld@d%lld", (long long)r->n_gen, (long long)r->depth);
    else
        snprintf(r->name, sizeof r->name, "tg%lld@b%lld@d%lld", (long long)r->n_gen, (long long)r->batch,
                 (long long)r->depth);
}

/* The KV cache type as --kv-type spells it. */
static const char *kv_name(enum dtype t) { return t == DTYPE_F32 ? "f32" : "f16"; }

/* A JSON number, or null for a figure that does not apply (collectives at tp = 1, prompt rows). */
static void json_num(char *buf, size_t size, bool have, double v) {
    if (have) snprintf(buf, size, "%.3f", v);
    else snprintf(buf, size, "null");
}

static void print_results(const struct bench_args *a, struct boot *b, const struct result *r, int n, double bw,
                          const char *backend) {
    const char *name = strrchr(a->bo.model, '/') ? strrchr(a->bo.model, '/') + 1 : a->bo.model;
    const double gib = (double)b->model.weights_bytes / (1 << 30);
    const int host_ranks = comm_topo(b->comm)->local_size;
    if (a->out == OUT_JSON) {
        printf("{\"model\": \"%s\", \"tp\": %d, \"backend\": \"%s\", \"weights_gib_rank0\": %.4f, "
               "\"weights_bytes_rank0\": %zu, \"kv_type\": \"%s\", \"host_ranks\": %d, \"bandwidth_gbs\": %.2f, "
               "\"results\": [", name, b->size, backend, gib, b->model.weights_bytes, kv_name(a->bo.eng.kv_type),
               host_ranks, bw);
        for (int i = 0; i < n; i++) {
            char coll[32];
            json_num(coll, sizeof coll, b->size > 1 && r[i].decode, r[i].coll_ms);
            printf("%s{\"test\": \"%s\", \"n_prompt\": %lld, \"n_gen\": %lld, \"batch\": %lld, \"depth\": %lld, "
                   "\"repeat\": %d, \"tok_s\": %.3f, \"stddev\": %.3f, \"roofline_tok_s\": %.3f, "
                   "\"kv_bytes_per_step_rank0\": %.0f, \"comm_ms_per_step\": %s}", i ? ", " : "", r[i].name,
                   (long long)r[i].n_prompt, (long long)r[i].n_gen, (long long)r[i].batch, (long long)r[i].depth,
                   a->repeat, r[i].mean, r[i].sd, r[i].roofline, r[i].kv_bytes, coll);
        }
        printf("]}\n");
        return;
    }
    if (a->out == OUT_CSV) {
        printf("model,tp,backend,test,n_prompt,n_gen,batch,depth,repeat,tok_s,stddev,roofline_tok_s,"
               "kv_bytes_per_step_rank0,comm_ms_per_step\n");
        for (int i = 0; i < n; i++) {
            char coll[32] = "";
            if (b->size > 1 && r[i].decode) snprintf(coll, sizeof coll, "%.3f", r[i].coll_ms);
            printf("%s,%d,\"%s\",%s,%lld,%lld,%lld,%lld,%d,%.3f,%.3f,%.3f,%.0f,%s\n", name, b->size, backend, r[i].name,
                   (long long)r[i].n_prompt, (long long)r[i].n_gen, (long long)r[i].batch, (long long)r[i].depth,
                   a->repeat, r[i].mean, r[i].sd, r[i].roofline, r[i].kv_bytes, coll);
        }
        return;
    }
    printf("| model | weights/rank | tp | backend | test | t/s | roofline t/s | collectives ms/step |\n");
    printf("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++) {
        char roof[64] = "", coll[32] = "";
        if (r[i].roofline > 0)
            snprintf(roof, sizeof roof, "%.1f (%.0f%%)", r[i].roofline, 100 * r[i].mean / r[i].roofline);
        if (b->size > 1 && r[i].decode) snprintf(coll, sizeof coll, "%.2f", r[i].coll_ms);
        printf("| %s | %.2f GiB | %d | %s | %s | %.2f ± %.2f | %s | %s |\n", name, gib, b->size, backend, r[i].name,
               r[i].mean, r[i].sd, roof, coll);
    }
    if (bw > 0)
        printf("\nroofline: a decode step reads the weights once (%.2f GiB on rank 0) and each sequence's KV cache "
               "(%s) up to its position, times the %d rank(s) on this host, which share its memory; read bandwidth "
               "measured here %.1f GB/s; B sequences per step: B x bandwidth / (weight bytes + B x KV bytes)\n", gib,
               kv_name(a->bo.eng.kv_type), host_ranks, bw);
}

/* Draws the sweep with gnuplot into a PNG: decode tok/s (mean and stddev) against the
 * batch size with the roofline, one line per generated length, at the first depth of -d;
 * prompt tok/s against the prompt length. 0, or -1 with a message (no gnuplot, or it failed). */
static int plot(const struct bench_args *a, const struct result *r, int n, const char *title) {
    FILE *g = popen("gnuplot 2>&1", "w");
    if (!g) {
        fprintf(stderr, "tpllm bench: --plot needs gnuplot (apt-get install gnuplot-nox)\n");
        return -1;
    }
    fprintf(g, "set terminal pngcairo noenhanced size 1200,480 font ',10'\nset output '%s'\n", a->plot);
    fprintf(g, "set multiplot layout 1,2 title \"%s\"\nset grid\nset key top left\n", title);
    const int64_t depth = a->depth[0];
    fprintf(g, "set title 'decode: aggregate tok/s vs batch (depth %lld)'\nset xlabel 'sequences decoding at once'\n"
               "set ylabel 'tok/s'\nset logscale x 2\nset yrange [0:*]\n", (long long)depth);
    /* the ceiling: the weights' memory roofline, but a batch cannot decode faster than the
     * same build processes a prompt (the same matmuls, compute bound) */
    double pp_best = 0;
    for (int i = 0; i < n; i++)
        if (!r[i].decode) pp_best = TP_MAX(pp_best, r[i].mean);
    fprintf(g, "plot '-' using 1:2:3 with yerrorlines title 'tpllm (mean, stddev)', '-' using 1:2 with lines dt 2 "
               "title '%s'\n", pp_best > 0 ? "ceiling: min(memory roofline, prompt tok/s)" : "memory roofline");
    for (int i = 0; i < n; i++)
        if (r[i].decode && r[i].depth == depth)
            fprintf(g, "%lld %g %g\n", (long long)r[i].batch, r[i].mean, r[i].sd);
    fprintf(g, "e\n");
    for (int i = 0; i < n; i++)
        if (r[i].decode && r[i].depth == depth)
            fprintf(g, "%lld %g\n", (long long)r[i].batch, pp_best > 0 ? TP_MIN(r[i].roofline, pp_best) : r[i].roofline);
    fprintf(g, "e\nunset logscale x\nset title 'prompt processing: tok/s vs prompt length'\n"
               "set xlabel 'prompt tokens'\nplot '-' using 1:2:3 with yerrorlines title 'tpllm (mean, stddev)'\n");
    for (int i = 0; i < n; i++)
        if (!r[i].decode) fprintf(g, "%lld %g %g\n", (long long)r[i].n_prompt, r[i].mean, r[i].sd);
    fprintf(g, "e\nunset multiplot\n");
    int st = pclose(g);
    if (st != 0) {
        fprintf(stderr, "tpllm bench: gnuplot failed (status %d) drawing '%s'; is gnuplot-nox installed with the "
                "pngcairo terminal?\n", st, a->plot);
        return -1;
    }
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "serve")) return cmd_bench_serve(argc - 1, argv + 1);
    struct bench_args a;
    int prc = parse(&a, argc, argv);
    if (prc) return prc == 1 ? 0 : prc;
    if (boot_mpi_init(&argc, &argv)) return 1;
    a.bo.quiet = a.out != OUT_MD || a.bo.quiet;
    tp_err e = {0};
    struct boot b;
    if (boot_start(&b, &a.bo, &e)) {
        if (b.rank == 0) fprintf(stderr, "tpllm: %s\n", e.msg);
        boot_finish(&b);
        boot_mpi_finalize();
        return 1;
    }
    int status = 0;
    if (b.rank != 0) {
        if (engine_worker_loop(b.engine, &e)) comm_abort(b.comm, 1, e.msg);
    } else {
        char backend[256];
        kbackend_describe(b.be, backend, sizeof backend);
        const bool cpu = !strcmp(b.be->ops->name, "cpu");
        /* every rank of this host reads at once during a step: measure with all their threads
         * (the other ranks wait in the engine meanwhile) */
        const int rank_threads = a.bo.threads ? a.bo.threads : comm_topo(b.comm)->threads;
        const double bw = cpu ? measure_bandwidth(rank_threads * comm_topo(b.comm)->local_size) : 0;
        /* the ranks of one host share its memory bandwidth: the ceiling is the bytes they
         * read together (about this rank's times the ranks on the host) */
        const double host_ranks = (double)comm_topo(b.comm)->local_size;
        const size_t n_res = (size_t)a.n_pp + (size_t)a.n_batch * (size_t)a.n_depth * (size_t)a.n_tg;
        struct result *res = calloc(n_res, sizeof *res);
        int n = 0, rc = res ? 0 : tp_errf(&e, TP_ENOMEM, "out of host memory");
        if (!rc && engine_ctx(b.engine) < a.ctx_needed)
            rc = tp_errf(&e, TP_EINVAL, "the sweep needs sequences of %lld tokens (the longest prompt, or depth + "
                         "generated tokens) but the context is %lld (the model was trained for %lld); pass smaller "
                         "-p / -d / -n, or use a model with a longer context", (long long)a.ctx_needed,
                         (long long)engine_ctx(b.engine), (long long)b.cfg.n_ctx_train);
        for (int i = 0; !rc && i < a.n_pp; i++) {
            rc = run_test(&b, &a, 1, a.pp[i], 1, false, &res[n], &e);
            result_name(&res[n++], false);
        }
        for (int j = 0; !rc && j < a.n_batch; j++)
            for (int d = 0; !rc && d < a.n_depth; d++)
                for (int i = 0; !rc && i < a.n_tg; i++) {
                    struct result *r = &res[n++];
                    rc = run_test(&b, &a, a.batch[j], decode_prompt(a.depth[d]), a.tg[i], true, r, &e);
                    r->depth = a.depth[d];
                    result_name(r, true);
                    /* the ranks of one host share its memory bandwidth: the ceiling is the
                     * bytes they read together (about this rank's times the ranks on the host) */
                    const double step_bytes = ((double)b.model.weights_bytes + r->kv_bytes) * host_ranks;
                    if (!rc && bw > 0 && step_bytes > 0) r->roofline = (double)r->batch * bw * 1e9 / step_bytes;
                }
        if (rc) {
            fprintf(stderr, "tpllm bench: %s\n", e.msg);
            if (rc == TP_ECOMM) comm_abort(b.comm, 1, e.msg);
            status = 1;
        } else {
            print_results(&a, &b, res, n, bw, backend);
            if (a.plot) {
                char title[512];
                const char *nm = strrchr(a.bo.model, '/') ? strrchr(a.bo.model, '/') + 1 : a.bo.model;
                snprintf(title, sizeof title, "tpllm bench: %s, tp=%d, %s", nm, b.size, backend);
                if (plot(&a, res, n, title)) status = 1;
                else if (a.out == OUT_MD) printf("\nplot: %s\n", a.plot);
            }
        }
        free(res);
        tp_err e2 = {0};
        if (engine_shutdown(b.engine, &e2)) comm_abort(b.comm, 1, e2.msg);
    }
    boot_finish(&b);
    boot_mpi_finalize();
    return status;
}
