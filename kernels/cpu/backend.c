/* backend.c - the CPU backend's op table, its creation (threads, SIMD level, scratch) and
 * the backend-independent kbackend_free / kbackend_describe. */
#include "cpu.h"
#include "q4_0x8.h"

#include "../act.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Attention's per-thread score buffer when opts.max_ctx is not given; longer spans are
 * still handled (cpu_attention works through them in chunks of this many positions). */
enum { CPU_DEFAULT_ATT_CTX = 4096 };

static struct cpu_backend *cpu_of(struct kbackend *b) { return b->impl; }

/* Host memory, 64-byte aligned so that SIMD loads never straddle cache lines needlessly. */
static void *cpu_alloc(struct kbackend *b, size_t bytes) {
    size_t sz;
    if (!tp_add_size(bytes, 63, &sz)) return NULL;
    sz = sz / 64 * 64;
    return aligned_alloc(64, sz ? sz : 64);
}

static void cpu_free(struct kbackend *b, void *p) { free(p); }

static void cpu_copy_in(struct kbackend *b, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}

static void cpu_sync(struct kbackend *b) {}

static void cpu_destroy(struct kbackend *b) {
    if (!b) return;
    struct cpu_backend *c = cpu_of(b);
    if (c) {
        tpool_free(c->pool);
        free(c->act_q);
        free(c->att_scores);
        free(c);
    }
    free(b);
}

static const struct kops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy_in,
    .download = cpu_copy_in,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .matmul_f64 = cpu_matmul_f64,
    .prepare_weight = cpu_prepare_weight,
    .matmul_n = cpu_matmul_n,
    .reduce_f64 = cpu_reduce_f64,
    .get_rows = cpu_get_rows,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .gated_act = cpu_gated_act,
    .add = cpu_add,
    .scale = cpu_scale,
    .add_bias = cpu_add_bias,
    .topk = cpu_topk,
};

/* CPUs this process may run on (its affinity mask, e.g. as mpirun --bind-to sets it). */
static int cpu_count_usable(void) {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Creates the CPU backend: a pool of o->n_threads threads (0: one per CPU in the
 * affinity mask), the SIMD level o->simd (-1: the best this CPU supports), and scratch
 * sized from o. The stored b->opts are the resolved options (n_threads, simd and max_ctx
 * filled in). Returns 0 and *out, or a negative status with `e` filled and *out NULL.
 * Release with kbackend_free. */
int kbackend_cpu_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e) {
    *out = NULL;
    if (o->n_threads < 0 || o->max_tokens < 0 || o->max_in < 0 || o->max_ctx < 0 || o->max_heads < 0)
        return tp_errf(e, TP_EINVAL,
                       "cpu backend: negative size in options (threads %d, tokens %lld, in %lld, ctx %lld, "
                       "heads %lld); give sizes >= 0",
                       o->n_threads, (long long)o->max_tokens, (long long)o->max_in,
                       (long long)o->max_ctx, (long long)o->max_heads);
    enum ksimd best = cpu_simd_detect();
    int level = o->simd;
    bool is_auto = level == -1;
    const char *from = "opts.simd";
    if (is_auto) {
        const char *env = getenv("TPLLM_SIMD");
        if (env && *env) {
            level = kbackend_simd_parse(env);
            if (level == -2)
                return tp_errf(e, TP_EINVAL, "TPLLM_SIMD='%s' is not a SIMD level; set it to auto, scalar, avx2 or "
                               "avx512 (or unset it)", env);
            from = "TPLLM_SIMD";
            is_auto = level == -1;
        }
        if (level == -1) level = kbackend_simd_default();
    } else {
        from = "--simd";
    }
    if (level < 0 || level > KSIMD_AVX512)
        return tp_errf(e, TP_EINVAL, "cpu backend: unknown SIMD level %d; use -1 (auto), 0 (scalar), "
                       "1 (avx2) or 2 (avx512)", o->simd);
    if (level > (int)best)
        return tp_errf(e, TP_EUNSUPPORTED, "%s %s: this CPU (or this build) supports at most %s; ask for %s or "
                       "less, or auto", from, cpu_simd_name((enum ksimd)level), cpu_simd_name(best),
                       cpu_simd_name(best));

    struct kbackend_opts r = *o;
    r.n_threads = o->n_threads > 0 ? o->n_threads : cpu_count_usable();
    r.simd = level;
    if (r.max_ctx == 0) r.max_ctx = CPU_DEFAULT_ATT_CTX;

    size_t att_floats;
    if (!tp_mul_size((size_t)r.n_threads * CPU_ATT_GROUP, (size_t)r.max_ctx, &att_floats) ||
        att_floats > SIZE_MAX / sizeof(float))
        return tp_errf(e, TP_ENOMEM, "cpu backend: attention scratch of %d threads x %lld positions overflows; "
                       "lower the context length", r.n_threads, (long long)r.max_ctx);

    struct kbackend *b = calloc(1, sizeof *b);
    struct cpu_backend *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return tp_errf(e, TP_ENOMEM, "cpu backend: out of memory");
    }
    b->ops = &cpu_ops;
    b->impl = c;
    c->opts = r;
    c->n_threads = r.n_threads;
    c->simd = (enum ksimd)r.simd;
    c->simd_auto = is_auto;
    c->simd_best = best;

    int rc = tpool_create(&c->pool, r.n_threads, e);
    if (rc) {
        cpu_destroy(b);
        return rc;
    }
    c->act_q_bytes = cpu_matmul_scratch_bytes(&r);
    if (c->act_q_bytes) {
        c->act_q = cpu_alloc(b, c->act_q_bytes);
        if (!c->act_q) {
            cpu_destroy(b);
            return tp_errf(e, TP_ENOMEM, "cpu backend: out of memory for %zu bytes of matmul scratch "
                           "(max_tokens %lld, max_in %lld); lower the batch size",
                           c->act_q_bytes, (long long)r.max_tokens, (long long)r.max_in);
        }
    }
    c->att_scores = cpu_alloc(b, att_floats * sizeof(float));
    if (!c->att_scores) {
        cpu_destroy(b);
        return tp_errf(e, TP_ENOMEM, "cpu backend: out of memory for attention scratch (%d threads x %lld "
                       "positions); lower the context length", r.n_threads, (long long)r.max_ctx);
    }
    /* GELU's table: one read-only copy per process (built by the first backend, 65536 tanhf),
     * like a constant table, so it is not this backend's workspace (runtime/planner.c mirrors
     * workspace_bytes exactly) */
    c->gelu_tab = act_gelu_table_shared();
    b->workspace_bytes = c->act_q_bytes + att_floats * sizeof(float);
    *out = b;
    return 0;
}

int kbackend_simd_parse(const char *name) {
    if (!name) return -2;
    if (!strcmp(name, "auto")) return -1;
    if (!strcmp(name, "scalar")) return KSIMD_SCALAR;
    if (!strcmp(name, "avx2")) return KSIMD_AVX2;
    if (!strcmp(name, "avx512")) return KSIMD_AVX512;
    return -2;
}

const char *kbackend_simd_name(int level) { return level == -1 ? "auto" : cpu_simd_name((enum ksimd)level); }

int kbackend_simd_best(void) { return (int)cpu_simd_detect(); }

/* AVX-512 gives the same bits as AVX2 but has not been measured faster on the machines
 * we have (issue 11: 0.5x on Zen 4 before its kernels were reworked), so auto stays on
 * AVX2 until tests/perf/bench_generate.py shows otherwise; --simd avx512 selects it. */
int kbackend_simd_default(void) { return TP_MIN((int)cpu_simd_detect(), (int)KSIMD_AVX2); }

/* Releases any backend through its own destroy; NULL is a no-op. */
void kbackend_free(struct kbackend *b) {
    if (b) b->ops->destroy(b);
}

/* Writes a one-line description into buf (always NUL-terminated when n > 0). Backends
 * other than the CPU are named only by their table name (kops has no describe hook). */
void kbackend_describe(const struct kbackend *b, char *buf, size_t n) {
    if (!buf || n == 0) return;
    if (!b) {
        snprintf(buf, n, "none");
    } else if (b->ops == &cpu_ops) {
        const struct cpu_backend *c = b->impl;
        snprintf(buf, n, "cpu: %s (%s; cpu has %s), %d thread%s", cpu_simd_name(c->simd),
                 c->simd_auto ? "auto" : "forced", cpu_simd_name(c->simd_best), c->n_threads,
                 c->n_threads == 1 ? "" : "s");
    } else if (b->ops->describe) {
        b->ops->describe(b, buf, n);
    } else {
        snprintf(buf, n, "%s", b->ops->name);
    }
}
