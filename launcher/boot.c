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
    "  -q, --quiet             no loading progress and no startup report\n";

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
