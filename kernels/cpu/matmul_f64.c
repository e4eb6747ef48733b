/* matmul_f64.c - the row-parallel matmul whose partial sums add up across ranks exactly:
 * per-granule dot products (the same kernels as cpu_matmul) summed in double.
 *
 *   y[t][o] = sum_{g} (double) dot(W[o][g0 .. g1), x[t][g0 .. g1)),  granules [g0, g1) of
 *             `granule` values from the start of the slice
 *
 * Why: with tensor parallelism, attn_output and ffn_down are split by input columns and
 * the ranks' partial outputs are summed. Float partial sums rounded per rank would make
 * the result depend on the TP size (and greedy decoding could diverge). Granules are
 * aligned to the shard boundaries at every TP size, each granule is computed identically
 * whichever rank holds it, and the double sums differ only by double rounding.
 *
 * A row's granules go through one call of the type's fused granule kernel where the SIMD
 * level has one (dot_gran.h: bit-identical to a kernel call per granule, without the
 * per-call overhead that dominates short granules), else through the per-granule loop. */
#include <stdlib.h>
#include <string.h>

#include "dot_gran.h"

enum { F64_MIN_ROWS = 16, F64_TASKS_PER_THREAD = 4, F64_MAX_GRANULES = 256 };

struct f64_job {
    const struct kmat *w;
    double *y;
    int64_t n_tok, granule, rows_per_task, n_gran;
    struct kact_rows act;
    enum kact_fmt fmt;
    kdot_fn dot;
    kdot_gran_fn fused;                       /* the fused granule kernel, or NULL: the per-granule loop */
    struct kact_rows views[F64_MAX_GRANULES]; /* activation view of each granule */
    size_t w_off[F64_MAX_GRANULES];           /* byte offset of each granule in a weight row */
};

static void f64_rows(void *arg, int64_t i, int64_t n) {
    const struct f64_job *j = arg;
    const struct kmat *w = j->w;
    const int64_t r0 = i * j->rows_per_task, r1 = TP_MIN(w->n_out, r0 + j->rows_per_task);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wrow = (const uint8_t *)w->data + (size_t)r * w->row_stride;
        for (int64_t t = 0; t < j->n_tok; t += KDOT_NT) {
            int nt = (int)TP_MIN(KDOT_NT, j->n_tok - t);
            double acc[KDOT_NT];
            if (j->fused) j->fused(wrow, w->n_in, j->granule, &j->act, t, nt, acc);
            else kdot_gran_loop(j->dot, wrow, w->n_in, j->granule, j->views, j->w_off, t, nt, acc);
            for (int k = 0; k < nt; k++) j->y[(t + k) * w->n_out + r] = acc[k];
        }
    }
}

void cpu_matmul_f64(struct kbackend *b, double *y, const struct kmat *w, const float *x, int64_t n_tok,
                    int64_t granule) {
    if (n_tok <= 0 || w->n_out <= 0) return;
    if (w->n_in <= 0) {
        memset(y, 0, (size_t)(n_tok * w->n_out) * sizeof *y);
        return;
    }
    struct cpu_backend *c = b->impl;
    enum ksimd level = c->simd; /* chosen at creation (CPUID traps to the hypervisor under KVM: never per call) */
    /* granules are whole blocks, and whole block pairs for the Q8_32 layout */
    int64_t unit = kdot_gran_unit(w->type);
    if (granule <= 0 || granule % unit) granule = TP_MAX(unit, granule / unit * unit);
    /* bound the granule table: a very long row gets proportionally longer granules, still
     * a multiple of the caller's, so shard boundaries stay on granule boundaries */
    int64_t n_gran = (w->n_in + granule - 1) / granule;
    if (n_gran > F64_MAX_GRANULES) {
        granule *= (n_gran + F64_MAX_GRANULES - 1) / F64_MAX_GRANULES;
        n_gran = (w->n_in + granule - 1) / granule;
    }
    struct f64_job *j = malloc(sizeof *j);
    void *tmp = NULL;
    if (!j) goto fail;
    *j = (struct f64_job){.w = w, .y = y, .granule = granule, .n_gran = n_gran, .fmt = kact_fmt_of(w->type),
                          .dot = kdot_for(level, w->type), .fused = kdot_gran_fused(level, w->type)};
    if (!j->dot) goto done; /* not a weight type: callers validated types at load */
    kact_quant_fn quant = level >= KSIMD_AVX2 ? kact_quantize_avx2 : kact_quantize_scalar;
    size_t row_bytes = kact_layout(j->fmt, w->n_in, &j->act);
    j->act.stride = row_bytes;
    for (int64_t g = 0; g < n_gran; g++) j->w_off[g] = dtype_row_bytes(w->type, g * granule);
    /* activation rows: in the backend's scratch, or a temporary buffer for a larger call */
    int64_t chunk = n_tok;
    uint8_t *scratch = c->act_q;
    if (j->fmt != KACT_F32) {
        chunk = c->act_q && row_bytes ? (int64_t)TP_MIN((size_t)n_tok, c->act_q_bytes / row_bytes) : 0;
        if (chunk == 0) {
            chunk = TP_MIN(n_tok, 64);
            scratch = tmp = aligned_alloc(64, row_bytes * (size_t)chunk);
            if (!tmp) goto fail;
        }
    }
    const int n_threads = c->pool ? TP_MAX(1, c->n_threads) : 1;
    int64_t tasks = n_threads == 1 ? 1
                                   : TP_MIN((w->n_out + F64_MIN_ROWS - 1) / F64_MIN_ROWS,
                                            (int64_t)n_threads * F64_TASKS_PER_THREAD);
    tasks = TP_MAX(tasks, 1);
    j->rows_per_task = (w->n_out + tasks - 1) / tasks;
    int64_t n_tasks = (w->n_out + j->rows_per_task - 1) / j->rows_per_task;
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        j->n_tok = TP_MIN(chunk, n_tok - t0);
        const float *xc = x + t0 * w->n_in;
        j->y = y + t0 * w->n_out;
        if (j->fmt == KACT_F32) {
            j->act.base = (const uint8_t *)xc;
            j->act.stride = (size_t)w->n_in * sizeof(float);
        } else {
            j->act.base = scratch;
            for (int64_t t = 0; t < j->n_tok; t++)
                quant(j->fmt, xc + t * w->n_in, w->n_in, scratch + (size_t)t * row_bytes, &j->act);
        }
        if (!j->fused)
            for (int64_t g = 0; g < n_gran; g++) j->views[g] = kact_view(&j->act, j->fmt, g * granule);
        if (c->pool && n_tasks > 1) tpool_run(c->pool, f64_rows, j, n_tasks);
        else
            for (int64_t i = 0; i < n_tasks; i++) f64_rows(j, i, n_tasks);
    }
done:
    free(tmp);
    free(j);
    return;
fail: /* out of host memory: poison the output rather than return stale values */
    for (int64_t i = 0; i < n_tok * w->n_out; i++) y[i] = __builtin_nan("");
    free(tmp);
    free(j);
}

void cpu_reduce_f64(struct kbackend *b, float *y, const double *parts, int64_t n_parts, int64_t n) {
    (void)b;
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        for (int64_t p = 0; p < n_parts; p++) s += parts[p * n + i];
        y[i] = (float)s;
    }
}
