/* boot.c - bring a rank up: MPI, communicator, backend, model file, shard plan, weights,
 * engine, tokenizer; print the startup report on rank 0. */
#include "boot.h"
#include "progress.h"

#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *boot_opts_usage =
    "  -m, --model FILE        GGUF model (required)\n"
    "  --tp N                  tensor-parallel size; must equal the number of MPI ranks (default: all ranks)\n"
    "  -t, --threads N         CPU threads per rank (default: the node's cores divided among its ranks)\n"
    "  --backend B             cpu, cuda or auto (default auto: cuda when compiled in and a GPU is visible)\n"
    "  --simd L                CPU SIMD level: auto (default), scalar, avx2 or avx512; every level gives the\n"
    "                          same bits, they differ in speed (env TPLLM_SIMD sets the default)\n"
    "  -c, --ctx N             context length per sequence (default 2048, at most the model's)\n"
    "  --max-batch-tokens N    tokens per forward step; prompts are processed in chunks of this (default 512)\n"
    "  --kv-type T             KV cache type: f16 (default) or f32\n"
    "  --kv-blocks N           KV cache blocks of 16 tokens per rank (default: all the memory plan allows)\n"
    "  --device-mem SIZE       memory budget per rank, e.g. 12GiB (default: free memory x --mem-fraction)\n"
    "  --mem-fraction F        share of free memory a rank may use (default 0.90)\n"
    "  -q, --quiet             no loading progress and no startup report\n"
    "  --config FILE           options from FILE, 'option = value' lines (configs/README.md); the command line\n"
    "                          wins over the file; repeatable (later files win over earlier ones)\n";

void boot_opts_default(struct boot_opts *o) {
    memset(o, 0, sizeof *o);
    o->backend = "auto";
    o->simd = -1;
    engine_opts_default(&o->eng);
    o->eng.max_seqs = 1;
    o->mem_fraction = 0.90;
}

static int parse_i64(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v ? v : "", &end, 10);
    if (!v || *v == '\0' || *end != '\0' || errno || x < lo || x > hi) {
        fprintf(stderr, "tpllm: %s expects an integer in [%lld, %lld], got '%s'\n", flag, (long long)lo, (long long)hi,
                v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

int64_t boot_parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mul = 1;
    if (!strcasecmp(end, "") || !strcasecmp(end, "b")) mul = 1;
    else if (!strcasecmp(end, "k") || !strcasecmp(end, "kib")) mul = 1024.0;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib")) mul = 1024.0 * 1024;
    else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib")) mul = 1024.0 * 1024 * 1024;
    else if (!strcasecmp(end, "t") || !strcasecmp(end, "tib")) mul = 1024.0 * 1024 * 1024 * 1024;
    else if (!strcasecmp(end, "kb")) mul = 1e3;
    else if (!strcasecmp(end, "mb")) mul = 1e6;
    else if (!strcasecmp(end, "gb")) mul = 1e9;
    else if (!strcasecmp(end, "tb")) mul = 1e12;
    else return -1;
    double b = v * mul;
    if (b > 9.0e18) return -1;
    return (int64_t)b;
}

int boot_parse_opt(struct boot_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    int64_t x;
#define TAKES_VALUE                                                                     \
    do {                                                                                \
        if (!v) {                                                                       \
            fprintf(stderr, "tpllm: %s needs a value (see --help)\n", a);               \
            return -1;                                                                  \
        }                                                                               \
        (*i)++;                                                                         \
    } while (0)
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
        TAKES_VALUE;
        o->model = v;
    } else if (!strcmp(a, "--tp")) {
        TAKES_VALUE;
        if (parse_i64(a, v, 1, 4096, &x)) return -1;
        o->tp = (int)x;
    } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
        TAKES_VALUE;
        if (parse_i64(a, v, 1, 1024, &x)) return -1;
        o->threads = (int)x;
    } else if (!strcmp(a, "--backend")) {
        TAKES_VALUE;
        if (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "auto")) {
            fprintf(stderr, "tpllm: --backend must be cpu, cuda or auto, got '%s'\n", v);
            return -1;
        }
        o->backend = v;
    } else if (!strcmp(a, "--simd")) {
        TAKES_VALUE;
        int l = kbackend_simd_parse(v);
        if (l == -2) {
            fprintf(stderr, "tpllm: --simd must be auto, scalar, avx2 or avx512, got '%s'\n", v);
            return -1;
        }
        o->simd = l;
    } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
        TAKES_VALUE;
        if (parse_i64(a, v, 1, 1 << 24, &o->eng.ctx)) return -1;
    } else if (!strcmp(a, "--max-batch-tokens")) {
        TAKES_VALUE;
        if (parse_i64(a, v, 1, 65536, &o->eng.max_batch_tokens)) return -1;
    } else if (!strcmp(a, "--kv-blocks")) {
        TAKES_VALUE;
        if (parse_i64(a, v, 1, (int64_t)1 << 30, &o->eng.n_blocks)) return -1;
    } else if (!strcmp(a, "--kv-type")) {
        TAKES_VALUE;
        if (!strcmp(v, "f16")) o->eng.kv_type = DTYPE_F16;
        else if (!strcmp(v, "f32")) o->eng.kv_type = DTYPE_F32;
        else {
            fprintf(stderr, "tpllm: --kv-type must be f16 or f32, got '%s'\n", v);
            return -1;
        }
    } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
        o->quiet = true;
    } else if (!strcmp(a, "--device-mem")) {
        TAKES_VALUE;
        o->device_mem = boot_parse_size(v);
        if (o->device_mem <= 0) {
            fprintf(stderr, "tpllm: --device-mem expects a size such as 12GiB or 24GB, got '%s'\n", v);
            return -1;
        }
    } else if (!strcmp(a, "--mem-fraction")) {
        TAKES_VALUE;
        char *end;
        o->mem_fraction = strtod(v, &end);
        if (*end || !(o->mem_fraction > 0 && o->mem_fraction <= 1)) {
            fprintf(stderr, "tpllm: --mem-fraction expects a number in (0, 1], got '%s'\n", v);
            return -1;
        }
    } else {
        return 0;
    }
#undef TAKES_VALUE
    return 1;
}

int boot_mpi_init(int *argc, char ***argv) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "tpllm: MPI_Init failed; is Open MPI installed (make deps)?\n");
        return -1;
    }
    return 0;
}

void boot_mpi_finalize(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The memory plan for this job, from the header alone, before any weight is loaded. The
 * budget is --device-mem or this rank's share of free memory; the engine gets the KV
 * blocks the plan allows (or --kv-blocks, if it fits), and the tracker enforces it. */
static int plan_memory(struct boot *b, const struct boot_opts *o, const struct kbackend_opts *ko, tp_err *e) {
    bool cpu = !strcmp(b->be->ops->name, "cpu");
    int64_t budget = o->device_mem;
    if (budget == 0) {
        int64_t avail = -1;
        if (cpu) avail = plan_host_available(comm_topo(b->comm)->local_size);
        else kbackend_mem_info(b->be, &avail, NULL);
        if (avail <= 0) return tp_errf(e, TP_EINVAL, "cannot tell how much memory rank %d has; give --device-mem SIZE", b->rank);
        budget = (int64_t)((double)avail * o->mem_fraction);
    }
    struct plan_opts po = {.tp = b->size, .backend = cpu ? PLAN_CPU : PLAN_CUDA, .budget = budget,
                           .ctx = TP_MIN(o->eng.ctx, b->cfg.n_ctx_train > 0 ? b->cfg.n_ctx_train : o->eng.ctx),
                           .max_batch_tokens = o->eng.max_batch_tokens, .max_seqs = o->eng.max_seqs,
                           .block_size = o->eng.block_size, .kv_type = o->eng.kv_type, .n_cand = o->eng.n_cand,
                           .max_logits = o->eng.max_logits,
                           .n_threads = ko->n_threads};
    int rc = plan_compute(&b->plan_mem, &b->cfg, b->file, &po, e);
    if (rc) return rc;
    if (!b->plan_mem.fits) {
        char advice[2048];
        plan_advice(&b->plan_mem, &b->cfg, b->file, advice, sizeof advice);
        return tp_errf(e, TP_EFIT, "the model does not fit: %s", advice);
    }
    b->track.budget = budget;
    b->be->track = &b->track;
    memtrack_note(&b->track, MEM_WORKSPACE, b->be->workspace_bytes);
    memtrack_note(&b->track, MEM_OTHER, b->plan_mem.ranks[b->rank].overhead);
    return 0;
}

/* The backend of --backend `which`: cuda, cpu, or auto (CUDA when it is compiled in and a
 * device can be created, else the CPU; the startup report names what was chosen). Only
 * the choice differs between auto and an explicit name: the caller runs the same setup
 * after it. */
static int create_backend(struct boot *b, const char *which, const struct kbackend_opts *ko, tp_err *e) {
    bool use_cuda = !strcmp(which, "cuda");
    if (!strcmp(which, "auto") && kbackend_cuda_compiled()) {
        tp_err probe = {0};
        if (kbackend_cuda_create(&b->be, ko, &probe) == 0) return 0;
        use_cuda = false; /* no usable GPU here */
    }
    int rc;
    if (use_cuda) {
        if ((rc = kbackend_cuda_create(&b->be, ko, e))) return tp_err_wrap(e, "--backend cuda on rank %d", b->rank);
        return 0;
    }
    if ((rc = kbackend_cpu_create(&b->be, ko, e))) return tp_err_wrap(e, "CPU backend on rank %d", b->rank);
    return 0;
}

/* This rank's part: everything up to and including the weights. */
static int start_local(struct boot *b, const struct boot_opts *o, tp_err *e) {
    int rc;
    if (!o->model) return tp_errf(e, TP_EINVAL, "no model given; pass -m FILE.gguf");
    if (o->tp && o->tp != b->size)
        return tp_errf(e, TP_EINVAL, "--tp %d but the job has %d MPI ranks; start it with mpirun -np %d (tpllm runs one rank per tensor-parallel shard)",
                       o->tp, b->size, o->tp);
    if ((rc = gguf_open(&b->file, o->model, e))) return rc;
    if ((rc = model_config_load(&b->cfg, b->file, e))) return rc;
    struct shard_model sm;
    if ((rc = model_shard_model(&sm, &b->cfg, b->file, e))) return rc;
    if ((rc = shard_plan_build(&b->plan, &sm, b->size, e))) return rc;

    struct kbackend_opts ko = {.n_threads = o->threads ? o->threads : comm_topo(b->comm)->threads,
                               .max_tokens = o->eng.max_batch_tokens,
                               .max_in = model_config_max_in(&b->cfg),
                               .max_ctx = o->eng.ctx,
                               .max_heads = b->cfg.n_head,
                               .simd = o->simd,
                               .device = 0};
    int n_dev = kbackend_cuda_device_count();
    if (n_dev > 0) ko.device = comm_topo(b->comm)->local_rank % n_dev; /* more ranks than GPUs: they share */
    if ((rc = create_backend(b, o->backend, &ko, e))) return rc;
    /* Whatever the backend and however it was chosen, the same lines follow: the memory
     * plan, then (CUDA ranks at tp > 1) the device communicator. */
    if ((rc = plan_memory(b, o, &ko, e))) return rc;
    if (strcmp(b->be->ops->name, "cpu") && b->size > 1) {
        if ((rc = comm_create_device(&b->dev_comm, b->comm, ko.device, 0, e))) return rc;
        comm_set_stream(b->dev_comm, kbackend_cuda_stream(b->be));
    }
    return 0;
}

static int load_weights(struct boot *b, tp_err *e) {
    double t0 = now_s();
    struct progress *pg = progress_begin(b->rank, b->size, b->quiet);
    int rc = model_load_progress(&b->model, b->file, &b->cfg, &b->plan, b->rank, b->be, pg ? progress_update : NULL,
                                 pg, e);
    progress_end(pg);
    if (rc == 0) b->model_loaded = true;
    b->load_seconds = now_s() - t0;
    return rc;
}

/* Collect one line per rank on rank 0 and print them. */
static int report(struct boot *b, const struct boot_opts *o, tp_err *e) {
    char line[640], desc[256];
    kbackend_describe(b->be, desc, sizeof desc);
    const struct model_shard *sh = &b->model.sh;
    char cdesc[64];
    comm_describe(b->dev_comm ? b->dev_comm : b->comm, cdesc, sizeof cdesc);
    snprintf(line, sizeof line,
             "rank %d/%d host %s | %s | %s | heads %lld-%lld kv %lld-%lld ffn %lld-%lld vocab %lld-%lld | weights %.1f MiB read %.1f MiB in %.2f s",
             b->rank, b->size, comm_topo(b->comm)->host, desc, cdesc, (long long)sh->q_head0,
             (long long)(sh->q_head0 + sh->n_head_l), (long long)sh->kv_head0, (long long)(sh->kv_head0 + sh->n_kv_l),
             (long long)sh->ff0, (long long)(sh->ff0 + sh->n_ff_l), (long long)sh->vocab0,
             (long long)(sh->vocab0 + sh->n_vocab_l), (double)b->model.weights_bytes / (1 << 20),
             (double)b->model.bytes_read / (1 << 20), b->load_seconds);
    char *all = b->rank == 0 ? malloc(sizeof line * (size_t)b->size) : NULL;
    char *dst = all ? all : malloc(sizeof line * (size_t)b->size);
    if (!dst) return tp_errf(e, TP_ENOMEM, "out of host memory");
    int rc = comm_all_gather(b->comm, line, dst, sizeof line, e);
    if (rc == 0 && b->rank == 0 && !o->quiet) {
#ifdef TPLLM_HAVE_CUDA
        const char *built = "cpu + cuda (sm " TPLLM_CUDA_ARCHS_STR ")";
#else
        const char *built = "cpu only (no CUDA toolkit at build time)";
#endif
        fprintf(stderr, "tpllm %s [built: %s]: %s (%s), %lld layers, tp=%d, ctx %lld, kv %s, %lld KV blocks of %lld tokens per rank\n",
                TPLLM_VERSION, built, o->model, b->cfg.arch_name, (long long)b->cfg.n_layer, b->size,
                (long long)engine_ctx(b->engine), dtype_name(o->eng.kv_type), (long long)engine_n_blocks(b->engine),
                (long long)engine_block_size(b->engine));
        for (int r = 0; r < b->size; r++) fprintf(stderr, "  %s\n", dst + (size_t)r * sizeof line);
    }
    free(dst);
    return rc;
}

/* Agree on failure across ranks. The first failing rank, when it is not rank 0, prints
 * its own message (rank 0 only learns which rank failed and prints that). */
static int agree(struct boot *b, int rc, tp_err *e) {
    tp_err mine = *e;
    int bad = -1;
    int all = comm_any_error(b->comm, rc, &bad, e);
    if (all && bad == b->rank && b->rank != 0)
        fprintf(stderr, "tpllm: rank %d (host %s): %s\n", b->rank, comm_topo(b->comm)->host, mine.msg);
    return all;
}

int boot_start(struct boot *b, const struct boot_opts *o, tp_err *e) {
    memset(b, 0, sizeof *b);
    b->quiet = o->quiet;
    int rc = comm_create_mpi(&b->comm, 0, e);
    if (rc) return rc;
    b->rank = comm_rank(b->comm);
    b->size = comm_size(b->comm);
    rc = start_local(b, o, e);
    if ((rc = agree(b, rc, e))) return rc;
    double old = comm_get_timeout(b->comm);
    comm_set_timeout(b->comm, TP_MAX(old, 600.0)); /* loading a large shard may take minutes */
    if (b->dev_comm) comm_set_timeout(b->dev_comm, TP_MAX(old, 600.0));
    rc = load_weights(b, e);
    if ((rc = agree(b, rc, e))) return rc;
    struct engine_opts eo = o->eng;
    eo.ctx = b->plan_mem.o.ctx;
    if (eo.n_blocks == 0 && !strcmp(b->be->ops->name, "cpu")) /* host RAM: hold what the sequences need */
        eo.n_blocks = TP_MIN(b->plan_mem.kv_blocks, b->plan_mem.blocks_per_seq * eo.max_seqs);
    if (eo.n_blocks == 0 || eo.n_blocks > b->plan_mem.kv_blocks) {
        if (eo.n_blocks > b->plan_mem.kv_blocks && b->rank == 0)
            fprintf(stderr, "tpllm: --kv-blocks %lld does not fit the budget; using %lld\n", (long long)eo.n_blocks,
                    (long long)b->plan_mem.kv_blocks);
        eo.n_blocks = b->plan_mem.kv_blocks;
    }
    rc = engine_create(&b->engine, &b->model, b->dev_comm ? b->dev_comm : b->comm, &eo, e);
    if (rc == 0 && b->rank == 0) rc = tokenizer_load(&b->tok, b->file, e);
    if ((rc = agree(b, rc, e))) return rc;
    comm_set_timeout(b->comm, old);
    if (b->dev_comm) comm_set_timeout(b->dev_comm, old);
    return report(b, o, e);
}

void boot_finish(struct boot *b) {
    engine_free(b->engine);
    tokenizer_free(b->tok);
    if (b->model_loaded) model_free(&b->model);
    kbackend_free(b->be);
    comm_free(b->dev_comm);
    shard_plan_free(&b->plan);
    plan_free(&b->plan_mem);
    gguf_close(b->file);
    comm_free(b->comm);
    memset(b, 0, sizeof *b);
}

/* ---- --config FILE ----
 *
 * A config file holds options of the model-running commands, one `option = value` per line:
 * the long option name without its dashes, `#` comments (a `#` at the start of a value or
 * after a blank), blank lines, values in double quotes when they hold a `#` or start or end
 * with a blank (`\"` and `\\` inside). Switches take true/false (yes/no, on/off, 1/0).
 * boot_config_expand() turns every `--config FILE` of the command line into the options of
 * FILE, placed before the rest of the command line, so the command's own parser reads them
 * first and the command line, read later, wins. The parser checks the values as it checks
 * the command line's; this loader checks that each option exists for the command, from the
 * table below (tests/mpi/test_configs.sh checks it against every command's --help). */

enum { CF_GEN = 1, CF_SERVE = 2, CF_BENCH = 4, CF_PPL = 8, CF_VERIFY = 16, CF_ALL = 31 };

static const struct {
    const char *name;
    unsigned bit;
} cfg_cmds[] = {{"generate", CF_GEN}, {"serve", CF_SERVE}, {"bench", CF_BENCH}, {"perplexity", CF_PPL}, {"verify", CF_VERIFY}};

struct cfg_opt {
    const char *name;  /* the key in a file */
    const char *flag;  /* what it becomes on the command line */
    const char *alias; /* its short form on the command line, or NULL */
    bool value;        /* takes a value; else a switch */
    unsigned cmds;     /* the commands that have it */
};

static const struct cfg_opt cfg_opts[] = {
    /* boot_parse_opt: every model-running command */
    {"model", "--model", "-m", true, CF_ALL},
    {"tp", "--tp", NULL, true, CF_ALL},
    {"threads", "--threads", "-t", true, CF_ALL},
    {"backend", "--backend", NULL, true, CF_ALL},
    {"simd", "--simd", NULL, true, CF_ALL},
    {"ctx", "--ctx", "-c", true, CF_ALL},
    {"max-batch-tokens", "--max-batch-tokens", NULL, true, CF_ALL},
    {"kv-type", "--kv-type", NULL, true, CF_ALL},
    {"kv-blocks", "--kv-blocks", NULL, true, CF_ALL},
    {"device-mem", "--device-mem", NULL, true, CF_ALL},
    {"mem-fraction", "--mem-fraction", NULL, true, CF_ALL},
    {"quiet", "--quiet", "-q", false, CF_ALL},
    /* sampling_parse_opt: generate */
    {"temp", "--temp", NULL, true, CF_GEN},
    {"top-k", "--top-k", NULL, true, CF_GEN},
    {"top-p", "--top-p", NULL, true, CF_GEN},
    {"min-p", "--min-p", NULL, true, CF_GEN},
    {"repeat-penalty", "--repeat-penalty", NULL, true, CF_GEN},
    {"repeat-last-n", "--repeat-last-n", NULL, true, CF_GEN},
    {"presence-penalty", "--presence-penalty", NULL, true, CF_GEN},
    {"frequency-penalty", "--frequency-penalty", NULL, true, CF_GEN},
    {"seed", "--seed", "-s", true, CF_GEN},
    {"stop", "--stop", NULL, true, CF_GEN},
    /* generate */
    {"prompt", "--prompt", "-p", true, CF_GEN | CF_VERIFY},
    {"file", "--file", "-f", true, CF_GEN | CF_PPL},
    {"n-predict", "--n-predict", "-n", true, CF_GEN},
    {"chat", "--chat", NULL, false, CF_GEN},
    {"system", "--system", NULL, true, CF_GEN},
    {"chat-format", "--chat-format", NULL, true, CF_GEN | CF_SERVE},
    {"ignore-eos", "--ignore-eos", NULL, false, CF_GEN},
    {"no-bos", "--no-bos", NULL, false, CF_GEN},
    {"show-tokens", "--show-tokens", NULL, false, CF_GEN},
    {"dump-logits", "--dump-logits", NULL, true, CF_GEN},
    /* serve */
    {"host", "--host", NULL, true, CF_SERVE},
    {"port", "--port", NULL, true, CF_SERVE},
    {"api-key", "--api-key", NULL, true, CF_SERVE},
    {"api-key-file", "--api-key-file", NULL, true, CF_SERVE},
    {"zmq", "--zmq", NULL, true, CF_SERVE},
    {"max-seqs", "--max-seqs", NULL, true, CF_SERVE},
    {"max-queue", "--max-queue", NULL, true, CF_SERVE},
    {"n-cand", "--n-cand", NULL, true, CF_SERVE},
    {"max-body", "--max-body", NULL, true, CF_SERVE},
    {"max-conns", "--max-conns", NULL, true, CF_SERVE},
    {"timeout", "--timeout", NULL, true, CF_SERVE},
    {"model-name", "--model-name", NULL, true, CF_SERVE},
    /* bench */
    {"n-prompt", "--n-prompt", "-p", true, CF_BENCH},
    {"n-gen", "--n-gen", "-n", true, CF_BENCH},
    {"batch", "--batch", "-b", true, CF_BENCH},
    {"depth", "--depth", "-d", true, CF_BENCH},
    {"repeat", "--repeat", "-r", true, CF_BENCH},
    {"json", "--json", NULL, false, CF_BENCH},
    {"csv", "--csv", NULL, false, CF_BENCH},
    {"plot", "--plot", NULL, true, CF_BENCH},
    /* perplexity */
    {"chunks", "--chunks", NULL, true, CF_PPL},
    /* verify */
    {"n", "-n", NULL, true, CF_VERIFY},
    {"tolerance", "--tolerance", NULL, true, CF_VERIFY},
};
#define CFG_N_OPTS (sizeof cfg_opts / sizeof cfg_opts[0])

/* Where an argument from a file came from, found by its pointer (each one is a copy). */
struct cfg_origin {
    const char *arg;
    const char *path;
    int line;
    const char *name, *value;
};
static struct cfg_origin *cfg_orig;
static size_t cfg_n_orig, cfg_cap_orig;
static const char *cfg_at; /* the argument the command's parser is at */
static char **cfg_argv;    /* the expanded argv, kept for the life of the process */

struct cfg_vec {
    char **v;
    size_t n, cap;
};

static int vec_push(struct cfg_vec *a, char *s) {
    if (a->n + 1 >= a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 32;
        char **nv = realloc(a->v, cap * sizeof *nv);
        if (!nv) return -1;
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = s;
    a->v[a->n] = NULL; /* argv[argc] is NULL */
    return 0;
}

static int note_origin(const char *arg, const char *path, int line, const char *name, const char *value) {
    if (cfg_n_orig == cfg_cap_orig) {
        size_t cap = cfg_cap_orig ? cfg_cap_orig * 2 : 32;
        struct cfg_origin *n = realloc(cfg_orig, cap * sizeof *n);
        if (!n) return -1;
        cfg_orig = n;
        cfg_cap_orig = cap;
    }
    cfg_orig[cfg_n_orig++] = (struct cfg_origin){arg, path, line, name, value};
    return 0;
}

static unsigned cfg_cmd_bit(const char *cmd) {
    for (size_t i = 0; i < sizeof cfg_cmds / sizeof cfg_cmds[0]; i++)
        if (!strcmp(cmd, cfg_cmds[i].name)) return cfg_cmds[i].bit;
    return 0;
}

static const struct cfg_opt *cfg_by_name(const char *name, unsigned bit) {
    for (size_t i = 0; i < CFG_N_OPTS; i++)
        if ((cfg_opts[i].cmds & bit) && !strcmp(cfg_opts[i].name, name)) return &cfg_opts[i];
    return NULL;
}

static const struct cfg_opt *cfg_by_flag(const char *arg, unsigned bit) {
    for (size_t i = 0; i < CFG_N_OPTS; i++)
        if ((cfg_opts[i].cmds & bit) &&
            (!strcmp(cfg_opts[i].flag, arg) || (cfg_opts[i].alias && !strcmp(cfg_opts[i].alias, arg))))
            return &cfg_opts[i];
    return NULL;
}

/* Edit distance of two short strings (for "did you mean"). */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    size_t d[64], prev;
    for (size_t j = 0; j <= lb; j++) d[j] = j;
    for (size_t i = 1; i <= la; i++) {
        prev = d[0];
        d[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = d[j];
            size_t best = prev + (a[i - 1] != b[j - 1]);
            if (d[j] + 1 < best) best = d[j] + 1;
            if (d[j - 1] + 1 < best) best = d[j - 1] + 1;
            d[j] = best;
            prev = cur;
        }
    }
    return d[lb];
}

/* The message for a key that `cmd` does not have: another command's option, or a near miss. */
static void cfg_unknown(const char *cmd, unsigned bit, const char *path, int line, const char *name) {
    unsigned other = 0;
    for (size_t i = 0; i < CFG_N_OPTS; i++)
        if (!strcmp(cfg_opts[i].name, name)) other |= cfg_opts[i].cmds;
    if (other) {
        char owners[128] = "";
        for (size_t i = 0; i < sizeof cfg_cmds / sizeof cfg_cmds[0]; i++)
            if (other & cfg_cmds[i].bit)
                snprintf(owners + strlen(owners), sizeof owners - strlen(owners), "%s'tpllm %s'", owners[0] ? " or " : "",
                         cfg_cmds[i].name);
        fprintf(stderr, "%s:%d: '%s' is an option of %s, not of 'tpllm %s': use this file with %s, or remove the line\n",
                path, line, name, owners, cmd, owners);
        return;
    }
    const char *best = NULL;
    size_t bd = 99;
    for (size_t i = 0; i < CFG_N_OPTS; i++) {
        if (!(cfg_opts[i].cmds & bit)) continue;
        size_t d = edit_distance(name, cfg_opts[i].name);
        if (d < bd) bd = d, best = cfg_opts[i].name;
    }
    size_t ln = strlen(name);
    if (best && ((bd <= 2 && 2 * bd <= ln) || (strlen(best) > 6 && (!strncmp(name, best, 4) || bd <= strlen(best) / 3))))
        fprintf(stderr, "%s:%d: unknown option '%s' for 'tpllm %s'; did you mean '%s'? (see 'tpllm %s --help': "
                "the long names, without the dashes)\n", path, line, name, cmd, best, cmd);
    else
        fprintf(stderr, "%s:%d: unknown option '%s' for 'tpllm %s' (see 'tpllm %s --help': the long names, without the "
                "dashes)\n", path, line, name, cmd, cmd);
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

/* One line, NUL-terminated, without its newline: 0 (a blank or comment line: *name NULL),
 * 1 with name and value (pointers into the line, which is modified), -1 with a message. */
static int cfg_split(char *s, const char *path, int line, char **name, char **value) {
    *name = *value = NULL;
    char *p = s;
    while (is_blank(*p)) p++;
    if (*p == '\0' || *p == '#') return 0;
    char *n = p;
    while (*p && *p != '=' && !is_blank(*p)) p++;
    char *n_end = p;
    while (is_blank(*p)) p++;
    if (*p != '=') {
        char *e = n + strlen(n);
        while (e > n && is_blank(e[-1])) *--e = '\0';
        if (*p) fprintf(stderr, "%s:%d: expected 'option = value', got '%s'\n", path, line, n);
        else fprintf(stderr, "%s:%d: expected 'option = value', got '%s' (a switch is written '%s = true')\n", path, line, n, n);
        return -1;
    }
    *n_end = '\0';
    if (n == n_end) {
        fprintf(stderr, "%s:%d: expected 'option = value': the option name is missing\n", path, line);
        return -1;
    }
    if (n[0] == '-') {
        const char *bare = n;
        while (*bare == '-') bare++;
        fprintf(stderr, "%s:%d: write option names without their dashes: '%s', not '%s'\n", path, line, bare, n);
        return -1;
    }
    p++;
    while (is_blank(*p)) p++;
    char *v = p;
    if (*p == '"') { /* quoted: up to the closing quote, \" and \\ escaped */
        char *w = v;
        p++;
        while (*p && *p != '"') {
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
            *w++ = *p++;
        }
        if (*p != '"') {
            fprintf(stderr, "%s:%d: the value of '%s' has no closing '\"'\n", path, line, n);
            return -1;
        }
        p++;
        while (is_blank(*p)) p++;
        if (*p && *p != '#') {
            fprintf(stderr, "%s:%d: unexpected text after the quoted value of '%s': '%s'\n", path, line, n, p);
            return -1;
        }
        *w = '\0';
    } else { /* up to a '#' that starts the value or follows a blank; trailing blanks dropped */
        char *e = p;
        while (*e && !(*e == '#' && (e == v || is_blank(e[-1])))) e++;
        while (e > v && is_blank(e[-1])) e--;
        *e = '\0';
    }
    *name = n;
    *value = v;
    return 1;
}

static int cfg_switch(const char *v) {
    static const char *on[] = {"true", "yes", "on", "1"}, *off[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(v, on[i])) return 1;
        if (!strcasecmp(v, off[i])) return 0;
    }
    return -1;
}

static char *dup_or_die(const char *s) {
    char *d = strdup(s);
    if (!d) {
        fprintf(stderr, "tpllm: out of memory reading a config file\n");
        exit(1);
    }
    return d;
}

/* The options of one file, appended to out. 0, or -1 with a message. */
static int cfg_load(const char *cmd, unsigned bit, const char *path, struct cfg_vec *out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tpllm %s: --config %s: cannot read it: %s\n", cmd, path, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    int line = 0, rc = 0;
    while (rc == 0 && (len = getline(&buf, &cap, f)) >= 0) {
        line++;
        if ((size_t)len != strlen(buf)) {
            fprintf(stderr, "%s:%d: a NUL byte: this is not a text file\n", path, line);
            rc = -1;
            break;
        }
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = '\0';
        char *name, *value;
        int s = cfg_split(buf, path, line, &name, &value);
        if (s <= 0) {
            rc = s;
            continue;
        }
        if (!strcmp(name, "config")) {
            fprintf(stderr, "%s:%d: a config file cannot name another (config = ...); give both with --config\n", path, line);
            rc = -1;
            break;
        }
        const struct cfg_opt *o = cfg_by_name(name, bit);
        if (!o) {
            cfg_unknown(cmd, bit, path, line, name);
            rc = -1;
            break;
        }
        int on = o->value ? 1 : cfg_switch(value);
        if (on < 0) {
            fprintf(stderr, "%s:%d: '%s' is a switch: its value is true or false, got '%s'\n", path, line, name, value);
            rc = -1;
            break;
        }
        if (o->value && !value[0]) {
            fprintf(stderr, "%s:%d: '%s' needs a value\n", path, line, name);
            rc = -1;
            break;
        }
        if (!on) continue; /* a switch set to false: nothing to pass */
        char *flag = dup_or_die(o->flag), *sname = dup_or_die(name), *svalue = dup_or_die(value);
        if (vec_push(out, flag) || note_origin(flag, path, line, sname, svalue)) rc = -1;
        if (rc == 0 && o->value && (vec_push(out, svalue) || note_origin(svalue, path, line, sname, svalue))) rc = -1;
        if (rc) fprintf(stderr, "tpllm %s: out of memory reading %s\n", cmd, path);
    }
    if (ferror(f) && rc == 0) {
        fprintf(stderr, "tpllm %s: --config %s: read error: %s\n", cmd, path, strerror(errno));
        rc = -1;
    }
    free(buf);
    fclose(f);
    return rc;
}

int boot_config_expand(const char *cmd, int *argc, char ***argv) {
    unsigned bit = cfg_cmd_bit(cmd);
    if (!bit) return 0;
    int n = *argc;
    char **av = *argv;
    /* the --config options of the command line (a value such as `-p --config` is not one) */
    bool any = false;
    for (int i = 1; i < n; i++) {
        if (!strcmp(av[i], "--config")) {
            if (i + 1 >= n) {
                fprintf(stderr, "tpllm %s: --config needs a FILE (see configs/README.md)\n", cmd);
                return -1;
            }
            any = true;
            i++;
        } else if (!strncmp(av[i], "--config=", 9)) {
            any = true;
        } else {
            const struct cfg_opt *o = cfg_by_flag(av[i], bit);
            if (o && o->value) i++;
        }
    }
    if (!any) return 0;
    struct cfg_vec out = {0};
    if (vec_push(&out, av[0])) goto oom;
    for (int i = 1; i < n; i++) {
        const char *path = NULL;
        if (!strcmp(av[i], "--config")) path = av[++i];
        else if (!strncmp(av[i], "--config=", 9)) path = av[i] + 9;
        else {
            const struct cfg_opt *o = cfg_by_flag(av[i], bit);
            if (o && o->value) i++;
            continue;
        }
        if (!path[0]) {
            fprintf(stderr, "tpllm %s: --config needs a FILE (see configs/README.md)\n", cmd);
            goto fail;
        }
        if (cfg_load(cmd, bit, path, &out)) goto fail;
    }
    /* then the command line without its --config options: read last, it wins */
    for (int i = 1; i < n; i++) {
        if (!strcmp(av[i], "--config")) {
            i++;
            continue;
        }
        if (!strncmp(av[i], "--config=", 9)) continue;
        const struct cfg_opt *o = cfg_by_flag(av[i], bit);
        if (vec_push(&out, av[i])) goto oom;
        if (o && o->value && i + 1 < n && vec_push(&out, av[++i])) goto oom;
    }
    *argc = (int)out.n;
    *argv = cfg_argv = out.v;
    return 0;
oom:
    fprintf(stderr, "tpllm %s: out of memory expanding --config\n", cmd);
fail:
    free(out.v); /* the strings stay: the origins table points at them */
    return -1;
}

void boot_config_at(const char *arg) { cfg_at = arg; }

void boot_config_blame(void) {
    if (!cfg_at) return;
    for (size_t i = 0; i < cfg_n_orig; i++)
        if (cfg_orig[i].arg == cfg_at) {
            fprintf(stderr, "%s:%d: that is this line of the config file: %s = %s\n", cfg_orig[i].path, cfg_orig[i].line,
                    cfg_orig[i].name, cfg_orig[i].value);
            return;
        }
}
