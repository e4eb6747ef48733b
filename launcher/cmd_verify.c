/* cmd_verify.c - `tpllm verify`: the job's configuration (its TP size and backend) against
 * a one-rank CPU reference on the same prompt: logit differences and greedy-token agreement. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: [mpirun -np N] tpllm verify -m FILE [-p PROMPT] [-n N] [--tolerance X] [options]\n\n"
            "Runs the prompt through the job as configured (N ranks, --backend) and through a one-rank\n"
            "CPU reference built on rank 0, and compares the last prompt position's logits and N greedy\n"
            "tokens. Exit status 0 when the tokens agree and the logits are within the tolerance, 1 when not.\n\n"
            "  -p, --prompt TEXT       (default \"The capital of France is\")\n"
            "  -n N                    greedy tokens to compare (default 16)\n"
            "  --tolerance X           largest allowed |logit difference| (default 1e-3; the CPU at any TP size is exact)\n%s",
            boot_opts_usage);
}

/* The reference: the whole model on one CPU rank, in this process. */
struct ref {
    struct gguf_file *f;
    struct model_config c;
    struct shard_plan sp;
    struct kbackend *be;
    struct model m;
    bool loaded;
    struct engine *en;
};

static int ref_up(struct ref *r, const char *path, const struct engine_opts *eo, tp_err *e) {
    memset(r, 0, sizeof *r);
    struct shard_model sm;
    int rc = gguf_open(&r->f, path, e);
    if (!rc) rc = model_config_load(&r->c, r->f, e);
    if (!rc) rc = model_shard_model(&sm, &r->c, r->f, e);
    if (!rc) rc = shard_plan_build(&r->sp, &sm, 1, e);
    struct kbackend_opts ko = {.n_threads = 0, .max_tokens = eo->max_batch_tokens, .max_in = model_config_max_in(&r->c),
                               .max_ctx = eo->ctx, .max_heads = r->c.n_head, .simd = -1};
    if (!rc) rc = kbackend_cpu_create(&r->be, &ko, e);
    if (!rc) rc = model_load(&r->m, r->f, &r->c, &r->sp, 0, r->be, e);
    if (!rc) r->loaded = true;
    if (!rc) rc = engine_create(&r->en, &r->m, NULL, eo, e);
    return rc;
}

static void ref_down(struct ref *r) {
    engine_free(r->en);
    if (r->loaded) model_free(&r->m);
    kbackend_free(r->be);
    shard_plan_free(&r->sp);
    gguf_close(r->f);
}

/* Last-position logits of ids and n greedy tokens after it, through engine en. */
static int run(struct engine *en, int64_t V, const int32_t *ids, int64_t n, int64_t n_gen, float *logits, int32_t *gen,
               tp_err *e) {
    int64_t chunk = engine_max_batch(en);
    int32_t *pos = malloc((size_t)chunk * sizeof(int32_t)), *sq = malloc((size_t)chunk * sizeof(int32_t));
    int32_t *hist = malloc((size_t)(n + n_gen + 1) * sizeof(int32_t));
    int rc = 0, seq = -1;
    if (!pos || !sq || !hist) rc = tp_errf(e, TP_ENOMEM, "out of memory");
    if (!rc && (seq = engine_seq_open(en, n + n_gen + 1, e)) < 0) rc = seq;
    for (int64_t s = 0; !rc && s < n; s += chunk) {
        int64_t m = TP_MIN(chunk, n - s);
        for (int64_t i = 0; i < m; i++) pos[i] = (int32_t)(s + i), sq[i] = seq;
        int32_t row = (int32_t)(m - 1);
        rc = engine_logits(en, m, ids + s, pos, sq, s + m == n ? 1 : 0, &row, logits, e);
    }
    if (!rc) {
        /* greedy continuation from the logits (argmax, lowest id on ties), one token per step */
        int32_t tok = 0;
        for (int64_t i = 1; i < V; i++)
            if (logits[i] > logits[tok]) tok = (int32_t)i;
        float *row_logits = malloc((size_t)V * sizeof(float));
        if (!row_logits) rc = tp_errf(e, TP_ENOMEM, "out of memory");
        for (int64_t g = 0; !rc && g < n_gen; g++) {
            gen[g] = tok;
            int32_t p = (int32_t)(n + g), r0 = 0;
            sq[0] = seq;
            rc = engine_logits(en, 1, &tok, &p, sq, 1, &r0, row_logits, e);
            tok = 0;
            for (int64_t i = 1; !rc && i < V; i++)
                if (row_logits[i] > row_logits[tok]) tok = (int32_t)i;
        }
        free(row_logits);
    }
    if (seq >= 0) engine_seq_close(en, seq);
    free(pos);
    free(sq);
    free(hist);
    return rc;
}

int cmd_verify(int argc, char **argv) {
    struct boot_opts bo;
    boot_opts_default(&bo);
    bo.eng.ctx = 512;
    const char *prompt = "The capital of France is";
    int64_t n_gen = 16;
    double tol = 1e-3;
    for (int i = 1; i < argc; i++) {
        boot_config_at(argv[i]);
        int r = boot_parse_opt(&bo, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *a = argv[i];
        char *end;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (i + 1 < argc && (!strcmp(a, "-p") || !strcmp(a, "--prompt"))) {
            prompt = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "-n")) {
            n_gen = strtoll(argv[++i], &end, 10);
            if (*end || n_gen < 0 || n_gen > 4096) {
                fprintf(stderr, "tpllm verify: -n expects an integer in [0, 4096], got '%s'\n", argv[i]);
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--tolerance")) {
            tol = strtod(argv[++i], &end);
            if (*end || !(tol >= 0)) {
                fprintf(stderr, "tpllm verify: --tolerance expects a non-negative number, got '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "tpllm verify: unknown or incomplete option '%s'. Run 'tpllm verify --help'.\n", a);
            return 2;
        }
    }
    boot_config_at(NULL);
    if (!bo.model) {
        fprintf(stderr, "tpllm verify: no model given; pass -m FILE.gguf\n");
        return 2;
    }
    bo.eng.max_logits = 1;
    if (boot_mpi_init(&argc, &argv)) return 1;
    tp_err e = {0};
    struct boot b;
    int status = 0;
    if (boot_start(&b, &bo, &e)) {
        if (b.rank == 0) fprintf(stderr, "tpllm: %s\n", e.msg);
        boot_finish(&b);
        boot_mpi_finalize();
        return 1;
    }
    if (b.rank != 0) {
        if (engine_worker_loop(b.engine, &e)) comm_abort(b.comm, 1, e.msg);
    } else {
        int64_t V = b.cfg.n_vocab, n = 0;
        int32_t ids[1024], *gen_job = calloc((size_t)n_gen + 1, sizeof(int32_t)), *gen_ref = calloc((size_t)n_gen + 1, sizeof(int32_t));
        float *l_job = malloc((size_t)V * sizeof(float)), *l_ref = malloc((size_t)V * sizeof(float));
        struct ref r = {0}; /* ref_down is safe on it when an error comes before ref_up */
        int rc = !gen_job || !gen_ref || !l_job || !l_ref ? tp_errf(&e, TP_ENOMEM, "out of memory") : 0;
        if (!rc) rc = tokenizer_encode(b.tok, prompt, strlen(prompt), true, false, ids, 1024, &n, &e);
        if (!rc) rc = run(b.engine, V, ids, n, n_gen, l_job, gen_job, &e);
        if (rc == TP_ECOMM) comm_abort(b.comm, 1, e.msg);
        struct engine_opts eo = bo.eng;
        eo.ctx = engine_ctx(b.engine);
        eo.n_blocks = 0;
        if (!rc) rc = ref_up(&r, bo.model, &eo, &e);
        if (!rc) rc = run(r.en, V, ids, n, n_gen, l_ref, gen_ref, &e);
        if (rc) {
            fprintf(stderr, "tpllm verify: %s\n", e.msg);
            status = 1;
        } else {
            double maxd = 0;
            int64_t top_job = 0, top_ref = 0, agree = 0;
            for (int64_t i = 0; i < V; i++) {
                maxd = fmax(maxd, fabs((double)l_job[i] - (double)l_ref[i]));
                if (l_job[i] > l_job[top_job]) top_job = i;
                if (l_ref[i] > l_ref[top_ref]) top_ref = i;
            }
            while (agree < n_gen && gen_job[agree] == gen_ref[agree]) agree++;
            char desc[160];
            kbackend_describe(b.be, desc, sizeof desc);
            printf("verify: job (tp=%d, %s) vs reference (tp=1, cpu)\n", b.size, desc);
            printf("  last-position logits: max |difference| %.3g over %lld values (tolerance %.3g); top-1 %lld vs %lld\n",
                   maxd, (long long)V, tol, (long long)top_job, (long long)top_ref);
            printf("  greedy tokens: %lld of %lld identical\n", (long long)agree, (long long)n_gen);
            bool ok = maxd <= tol && top_job == top_ref && agree == n_gen;
            printf("  %s\n", ok ? "PASS" : "FAIL");
            status = ok ? 0 : 1;
        }
        ref_down(&r);
        free(gen_job);
        free(gen_ref);
        free(l_job);
        free(l_ref);
        tp_err e2 = {0};
        if (engine_shutdown(b.engine, &e2)) comm_abort(b.comm, 1, e2.msg);
    }
    boot_finish(&b);
    boot_mpi_finalize();
    return status;
}
