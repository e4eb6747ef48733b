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
 * A row's granules go through the type's fused granule kernel where the SIMD level has
 * one (dot_gran.h: bit-identical to a kernel call per granule, without the per-call
 * overhead that dominates short granules), else through the per-granule loop.
 *
 * Batched (prefill) calls are blocked for the caches: a task's rows go in blocks whose
 * weights stay in L2, and the columns in slices of whole granules whose activations of
 * KDOT_NT tokens stay in L1; for each slice, each tile of KDOT_NT tokens meets every row of
 * the block. The double sums are carried through y from slice to slice, granules added in
 * order, so the result is that of one pass over the row (dot_gran.h). */
#include <stdlib.h>
#include <string.h>

#include "dot_gran.h"
#include "q4_0x8.h"

/* The granule table's size, and the cache budget of a column slice of KDOT_NT tokens'
 * activations (L1); rows are split as cpu_matmul splits them (kmat_row_tasks). */
enum {
    F64_MAX_GRANULES = 256,
    F64_L1_BUDGET = 32 * 1024,
};

struct f64_job {
    const struct kmat *w;
    double *y;
    const float *x;
    int64_t n_tok, granule, rows_per_task, toks_per_task, n_gran;
    int64_t row_block, slice_gran; /* rows per L2 block, granules per column slice */
    struct kact_rows act;
    enum kact_fmt fmt;
    kact_quant_fn quant;
    kdot_fn dot;
    kdot_gran_fn fused;                       /* the fused granule kernel, or NULL: the per-granule loop */
    struct kact_rows views[F64_MAX_GRANULES]; /* activation view of each granule */
    size_t w_off[F64_MAX_GRANULES];           /* byte offset of each granule in a weight row */
};

static void f64_quant(void *arg, int64_t i, int64_t n) {
    (void)n;
    const struct f64_job *j = arg;
    const int64_t t1 = TP_MIN(j->n_tok, (i + 1) * j->toks_per_task);
    for (int64_t t = i * j->toks_per_task; t < t1; t++)
        j->quant(j->fmt, j->x + t * j->w->n_in, j->w->n_in, (uint8_t *)j->act.base + (size_t)t * j->act.stride,
                 &j->act);
}

static void f64_rows(void *arg, int64_t i, int64_t n) {
    (void)n;
    const struct f64_job *j = arg;
    const struct kmat *w = j->w;
    const int64_t r0 = i * j->rows_per_task, r1 = TP_MIN(w->n_out, r0 + j->rows_per_task);
    const int64_t grouped = w->layout == KMAT_Q4_0X8 ? w->n_out / 8 * 8 : 0;
    for (int64_t rb = r0; rb < r1; rb += j->row_block) {
        const int64_t re = TP_MIN(r1, rb + j->row_block);
        for (int64_t g0 = 0; g0 < j->n_gran; g0 += j->slice_gran) {
            const int64_t g1 = TP_MIN(j->n_gran, g0 + j->slice_gran);
            const int64_t c0 = g0 * j->granule, c1 = TP_MIN(w->n_in, g1 * j->granule);
            for (int64_t t = 0; t < j->n_tok; t += KDOT_NT) {
                const int nt = (int)TP_MIN(KDOT_NT, j->n_tok - t);
                int64_t r = rb;
                for (; r + 8 <= TP_MIN(re, grouped); r += 8) { /* KMAT_Q4_0X8: 8 rows at a time */
                    double acc8[KDOT_NT * 8];
                    for (int k = 0; k < nt; k++)
                        for (int l = 0; l < 8; l++) acc8[8 * k + l] = g0 ? j->y[(t + k) * w->n_out + r + l] : 0.0;
                    q4x8_gran_avx2((const uint8_t *)w->data + (size_t)r * w->row_stride, c0 / 32, c1 / 32,
                                   j->granule / 32, &j->act, t, nt, acc8);
                    for (int k = 0; k < nt; k++)
                        for (int l = 0; l < 8; l++) j->y[(t + k) * w->n_out + r + l] = acc8[8 * k + l];
                }
                for (; r < re; r++) {
                    const uint8_t *wrow = (const uint8_t *)w->data + (size_t)r * w->row_stride;
                    double acc[KDOT_NT];
                    for (int k = 0; k < nt; k++) acc[k] = g0 ? j->y[(t + k) * w->n_out + r] : 0.0;
                    if (j->fused)
                        j->fused(wrow + j->w_off[g0], c1 - c0, j->granule, &j->views[g0], t, nt, acc);
                    else
                        kdot_gran_loop(j->dot, wrow, c1 - c0, j->granule, j->views + g0, j->w_off + g0, t, nt, acc);
                    for (int k = 0; k < nt; k++) j->y[(t + k) * w->n_out + r] = acc[k];
                }
            }
        }
    }
}

static void f64_run(struct cpu_backend *c, tpool_fn fn, struct f64_job *j, int64_t n) {
    if (c->pool && n > 1) tpool_run(c->pool, fn, j, n);
    else
        for (int64_t i = 0; i < n; i++) fn(j, i, n);
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
    j->quant = level >= KSIMD_AVX2 ? kact_quantize_avx2 : kact_quantize_scalar;
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
    const int64_t n_tasks = kmat_row_tasks(w, n_threads, &j->rows_per_task, &j->row_block);
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        j->n_tok = TP_MIN(chunk, n_tok - t0);
        j->x = x + t0 * w->n_in;
        j->y = y + t0 * w->n_out;
        if (j->fmt == KACT_F32) {
            j->act.base = (const uint8_t *)j->x;
            j->act.stride = (size_t)w->n_in * sizeof(float);
        } else {
            j->act.base = scratch;
            int64_t qtasks = j->n_tok >= 8 ? TP_MIN((int64_t)n_threads, j->n_tok) : 1;
            j->toks_per_task = (j->n_tok + qtasks - 1) / qtasks;
            f64_run(c, f64_quant, j, (j->n_tok + j->toks_per_task - 1) / j->toks_per_task);
        }
        for (int64_t g = 0; g < n_gran; g++) j->views[g] = kact_view(&j->act, j->fmt, g * granule);
        /* one slice when a single tile is done (decode): nothing to keep in L1 across rows */
        const size_t tile_bytes = (size_t)KDOT_NT * j->act.stride * (size_t)granule / (size_t)w->n_in;
        j->slice_gran = j->n_tok <= 1 ? n_gran : TP_MAX((int64_t)1, (int64_t)(F64_L1_BUDGET / TP_MAX(tile_bytes, (size_t)1)));
        f64_run(c, f64_rows, j, n_tasks);
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
