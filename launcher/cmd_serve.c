/* cmd_serve.c - `tpllm serve`: load the model once across the ranks and serve many
 * clients (OpenAI-compatible HTTP, optionally ZeroMQ) with continuous batching. Rank 0
 * runs the front ends' threads and the coordinator loop; the other ranks follow the
 * engine's steps. SIGTERM or SIGINT stops it cleanly (running requests are cancelled). */
#include <errno.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "boot.h"
#include "commands.h"
#include "http/http.h"
#include "serve/front.h"
#include "serve/hub.h"
#include "zmq/zmq_front.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: [mpirun -np N] tpllm serve -m FILE [options]\n\n"
            "Serves the model over an OpenAI-compatible HTTP API (docs/serving.md): POST /v1/completions,\n"
            "POST /v1/chat/completions (stream: true for Server-Sent Events), GET /v1/models, GET /health,\n"
            "GET /metrics (Prometheus). Requests are batched continuously; the KV cache is the memory plan's,\n"
            "and sequences are preempted (recomputed later) rather than allocated past it.\n\n"
            "  --host ADDR             address to bind (default 127.0.0.1; 0.0.0.0 for every interface)\n"
            "  --port N                TCP port (default 8080; 0: any free port, printed at start)\n"
            "  --api-key KEY           require 'Authorization: Bearer KEY' on every route but /health\n"
            "  --api-key-file FILE     the key from the first line of FILE (keeps it out of ps)\n"
            "  --zmq ENDPOINT          also serve the ZeroMQ protocol (docs/api.md), e.g. tcp://127.0.0.1:5555\n"
            "  --max-seqs N            sequences in one batch (default 8)\n"
            "  --max-queue N           requests waiting beyond those (default 256; then 429)\n"
            "  --n-cand N              sampling candidates per rank: the largest top_k allowed (default 64)\n"
            "  --max-body BYTES        largest request body (default 1MiB; then 413)\n"
            "  --max-conns N           connections at once (default 64)\n"
            "  --timeout S             idle connection timeout in seconds (default 60)\n"
            "  --model-name NAME       the model id clients use (default: the file name without .gguf)\n"
            "  --chat-format NAME      chat template for /v1/chat/completions: gemma, llama3 or chatml (default: the\n"
            "                          model's own, recognised from tokenizer.chat_template)\n%s",
            boot_opts_usage);
}

struct serve_args {
    struct boot_opts bo;
    struct http_opts ho;
    const char *key_file, *zmq, *model_name, *chat_format;
    int64_t max_queue;
};

static int parse_num(const char *flag, const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (*v == '\0' || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "tpllm serve: %s expects an integer in [%lld, %lld], got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* 0, 1 (--help) or 2 (bad arguments). */
static int parse(struct serve_args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    boot_opts_default(&a->bo);
    a->bo.eng.max_seqs = 8;
    a->ho = (struct http_opts){.host = "127.0.0.1", .port = 8080, .max_body = 1 << 20, .max_conns = 64, .timeout_s = 60};
    a->max_queue = 256;
    for (int i = 1; i < argc; i++) {
        boot_config_at(argv[i]);
        int r = boot_parse_opt(&a->bo, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long x;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!v) {
            fprintf(stderr, "tpllm serve: unknown or incomplete option '%s'. Run 'tpllm serve --help'.\n", o);
            return 2;
        }
        i++;
        if (!strcmp(o, "--host")) a->ho.host = v;
        else if (!strcmp(o, "--port")) {
            if (parse_num(o, v, 0, 65535, &x)) return 2;
            a->ho.port = (int)x;
        } else if (!strcmp(o, "--api-key")) a->ho.api_key = v;
        else if (!strcmp(o, "--api-key-file")) a->key_file = v;
        else if (!strcmp(o, "--zmq")) a->zmq = v;
        else if (!strcmp(o, "--model-name")) a->model_name = v;
        else if (!strcmp(o, "--chat-format")) {
            struct chat_template t;
            tp_err ce = {0};
            if (chat_format_parse(v, &t, &ce)) {
                fprintf(stderr, "tpllm serve: %s\n", ce.msg);
                return 2;
            }
            a->chat_format = v;
        }
        else if (!strcmp(o, "--max-seqs")) {
            if (parse_num(o, v, 1, 1024, &x)) return 2;
            a->bo.eng.max_seqs = x;
        } else if (!strcmp(o, "--max-queue")) {
            if (parse_num(o, v, 1, 1 << 20, &x)) return 2;
            a->max_queue = x;
        } else if (!strcmp(o, "--n-cand")) {
            if (parse_num(o, v, 1, ENGINE_MAX_CAND, &x)) return 2;
            a->bo.eng.n_cand = (int)x;
        } else if (!strcmp(o, "--max-body")) {
            int64_t b = boot_parse_size(v);
            if (b < 1024) {
                fprintf(stderr, "tpllm serve: --max-body expects a size of at least 1KiB such as 1MiB, got '%s'\n", v);
                return 2;
            }
            a->ho.max_body = (size_t)b;
        } else if (!strcmp(o, "--max-conns")) {
            if (parse_num(o, v, 1, 100000, &x)) return 2;
            a->ho.max_conns = (int)x;
        } else if (!strcmp(o, "--timeout")) {
            if (parse_num(o, v, 1, 86400, &x)) return 2;
            a->ho.timeout_s = (int)x;
        } else {
            fprintf(stderr, "tpllm serve: unknown option '%s'. Run 'tpllm serve --help'.\n", o);
            return 2;
        }
    }
    boot_config_at(NULL);
    if (!a->bo.model) {
        fprintf(stderr, "tpllm serve: no model given; pass -m FILE.gguf (see 'tpllm serve --help')\n");
        return 2;
    }
    return 0;
}

/* The key of --api-key-file: its first line. NULL with a message when unreadable or empty. */
static char *read_key(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tpllm serve: cannot read --api-key-file '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    char buf[512] = {0};
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    if (!ok || !buf[0]) {
        fprintf(stderr, "tpllm serve: --api-key-file '%s' is empty; put the key on its first line\n", path);
        return NULL;
    }
    return strdup(buf);
}

/* The signal handler's way to the hub (the only process-wide state of serve). */
static struct hub *g_hub;
static void on_signal(int sig) {
    (void)sig;
    if (g_hub) hub_stop(g_hub);
}

/* The model id: --model-name, or the file name without directories and ".gguf". */
static void model_id(const char *path, const char *given, char *out, size_t n) {
    if (given) {
        snprintf(out, n, "%s", given);
        return;
    }
    const char *b = strrchr(path, '/');
    snprintf(out, n, "%s", b ? b + 1 : path);
    size_t l = strlen(out);
    if (l > 5 && !strcmp(out + l - 5, ".gguf")) out[l - 5] = '\0';
}

static void fill_model(struct front_model *m, struct boot *b, const struct serve_args *a, char *name_buf) {
    memset(m, 0, sizeof *m);
    m->name = name_buf;
    m->tok = b->tok;
    m->ctx = engine_ctx(b->engine);
    m->n_cand = engine_n_cand(b->engine);
    m->created = (int64_t)time(NULL);
    int32_t bos = tokenizer_bos(b->tok);
    size_t bl = 0;
    const char *bt = bos >= 0 ? tokenizer_token_text(b->tok, bos, &bl) : NULL;
    if (bt && bl < sizeof m->bos_text) memcpy(m->bos_text, bt, bl);
    tp_err e = {0};
    if (a->chat_format) {
        m->has_tmpl = chat_format_parse(a->chat_format, &m->tmpl, &e) == 0;
        return;
    }
    struct gguf_str tmpl = {0};
    int rc = gguf_get_str(b->file, "tokenizer.chat_template", &tmpl, &e);
    if (rc && rc != TP_ENOTFOUND) {
        snprintf(m->tmpl_err, sizeof m->tmpl_err, "%.400s", e.msg);
        return;
    }
    tp_err_clear(&e);
    if (chat_detect(tmpl.ptr, rc ? 0 : (size_t)tmpl.len, &m->tmpl, &e) == 0) m->has_tmpl = true;
    else snprintf(m->tmpl_err, sizeof m->tmpl_err, "%.400s", e.msg);
}

int cmd_serve(int argc, char **argv) {
    struct serve_args a;
    int prc = parse(&a, argc, argv);
    if (prc) return prc == 1 ? 0 : prc;
    char *key = NULL;
    if (a.key_file) {
        if (!(key = read_key(a.key_file))) return 2;
        a.ho.api_key = key;
    }
    if (boot_mpi_init(&argc, &argv)) {
        free(key);
        return 1;
    }
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    tp_err e = {0};
    struct hub *hub = NULL;
    struct http_srv *http = NULL;
    int status = 0;
    /* rank 0 listens before loading, so that /health says "loading" meanwhile */
    int rc = 0;
    if (rank == 0) {
        rc = hub_create(&hub, &e);
        if (!rc) rc = http_start(&http, &a.ho, hub, &e);
        if (rc) fprintf(stderr, "tpllm serve: %s\n", e.msg);
        else fprintf(stderr, "tpllm serve: listening on http://%s:%d (loading the model)\n", a.ho.host, http_port(http));
    }
    /* SIGTERM / SIGINT (mpirun forwards them to every rank) stop rank 0's coordinator,
     * which then releases the workers; a worker ignores them and leaves when told */
    if (rank != 0) {
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
    }
    /* every rank learns whether rank 0 could listen */
    int bad = rc != 0;
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (bad) {
        hub_free(hub);
        boot_mpi_finalize();
        free(key);
        return 1;
    }
    struct boot b;
    rc = boot_start(&b, &a.bo, &e);
    if (rc) {
        if (b.rank == 0) fprintf(stderr, "tpllm: %s\n", e.msg);
        http_stop(http);
        hub_free(hub);
        boot_finish(&b);
        boot_mpi_finalize();
        free(key);
        return 1;
    }
    if (b.rank != 0) {
        if (engine_worker_loop(b.engine, &e)) comm_abort(b.comm, 1, e.msg);
    } else {
        char name[256];
        model_id(a.bo.model, a.model_name, name, sizeof name);
        struct front_model fm;
        fill_model(&fm, &b, &a, name);
        struct sched *s = NULL;
        struct zmq_front *zf = NULL;
        rc = sched_create(&s, b.engine, b.tok, a.max_queue, &e);
        if (!rc && a.zmq) rc = zmq_front_start(&zf, a.zmq, hub, &fm, &e);
        if (!rc) {
            http_set_model(http, &fm);
            g_hub = hub;
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_signal;
            sigaction(SIGTERM, &sa, NULL);
            sigaction(SIGINT, &sa, NULL);
            signal(SIGPIPE, SIG_IGN);
            fprintf(stderr, "tpllm serve: serving http://%s:%d%s%s (model '%s', tp=%d, %lld sequences per batch, %lld KV "
                    "blocks of %lld tokens per rank; pid %d: SIGTERM stops it)\n", a.ho.host, http_port(http),
                    zf ? " and " : "", zf ? zmq_front_endpoint(zf) : "", name, b.size, (long long)engine_max_seqs(b.engine), (long long)engine_n_blocks(b.engine),
                    (long long)engine_block_size(b.engine), (int)getpid());
            rc = hub_run(hub, s, b.engine, b.track.budget, &e);
            if (rc == TP_ECOMM) {
                fprintf(stderr, "tpllm serve: %s\n", e.msg);
                comm_abort(b.comm, 1, e.msg);
            }
            fprintf(stderr, "tpllm serve: stopping\n");
        } else {
            fprintf(stderr, "tpllm serve: %s\n", e.msg);
            status = 1;
        }
        zmq_front_stop(zf);
        sched_free(s); /* what still runs ends as cancelled: the front ends' waits return */
        http_stop(http);
        http = NULL;
        tp_err e2 = {0};
        if (engine_shutdown(b.engine, &e2)) comm_abort(b.comm, 1, e2.msg);
    }
    http_stop(http);
    boot_finish(&b);
    hub_free(hub);
    g_hub = NULL;
    boot_mpi_finalize();
    free(key);
    return status;
}
