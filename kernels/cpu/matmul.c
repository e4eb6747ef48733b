/* matmul.c - the CPU matmul (y[t][o] = sum_i W[o][i] x[t][i], the decode hot path), the
 * embedding lookup, and the SIMD level detection.
 *
 * One call: (1) the activations x are quantized once into the backend's scratch act_q in
 * the weight type's vec_dot format (simd_dot.h), in parallel over tokens when there are
 * many; (2) the output rows are split into contiguous ranges over the thread pool; each
 * task takes its rows in blocks whose weights stay in L2, and for each tile of KDOT_NT
 * tokens calls the kernel on every row of the block: the tile's activations stay in L1
 * while the rows pass, and each weight block is unpacked once for the tile's tokens.
 * (Walking rows outermost instead re-reads all the tokens' activations from L2 for every
 * row, about 2 bytes per value per output: the AVX2 kernels then wait on L2.) With one
 * token (decode) this is a stream over the weight rows at memory bandwidth.
 *
 * Results do not depend on the thread count: every output is computed by the same
 * kernel arithmetic whatever the partition. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant.h"
#include "q4_0x8.h"
#include "simd_dot.h"


/* ------------------------------------------------------------------ SIMD level */

#if defined(__x86_64__)
#include <cpuid.h>

/* The OS-enabled register state (XCR0): bits 1-2 SSE/AVX, 5-7 AVX-512. */
static uint64_t mm_xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

/* Best level of this CPU: AVX2 needs AVX2, FMA and F16C; AVX-512 also F, BW, VL and VNNI
 * (Ice Lake, Zen 4 and later). Read from CPUID, and only where the OS saves the wider
 * registers (XCR0). */
enum ksimd cpu_simd_detect(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KSIMD_SCALAR;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx || !fma || !f16c) return KSIMD_SCALAR;
    const uint64_t xcr0 = mm_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return KSIMD_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return KSIMD_SCALAR;
    if (!(b & (1u << 5))) return KSIMD_SCALAR; /* AVX2 */
    const bool f512 = b & (1u << 16), bw = b & (1u << 30), vl = b & (1u << 31), vnni = c & (1u << 11);
    if (f512 && bw && vl && vnni && (xcr0 & 0xe6) == 0xe6) return KSIMD_AVX512;
    return KSIMD_AVX2;
#else
    return KSIMD_SCALAR;
#endif
}

const char *cpu_simd_name(enum ksimd s) {
    switch (s) {
    case KSIMD_SCALAR: return "scalar";
    case KSIMD_AVX2: return "avx2";
    case KSIMD_AVX512: return "avx512";
    }
    return "unknown";
}

/* ------------------------------------------------------------ activation layout */

enum kact_fmt kact_fmt_of(enum dtype weight) {
    switch (weight) {
    case DTYPE_F16: return KACT_F16;
    case DTYPE_BF16: return KACT_BF16;
    case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0:
    case DTYPE_Q4_1: case DTYPE_Q5_1: return KACT_Q8_32;
    case DTYPE_Q2_K: case DTYPE_Q3_K: case DTYPE_Q4_K: case DTYPE_Q5_K: case DTYPE_Q6_K: return KACT_Q8_K;
    default: return KACT_F32;
    }
}

size_t kact_layout(enum kact_fmt f, int64_t n, struct kact_rows *r) {
    size_t un = (size_t)(n > 0 ? n : 0), a = 64;
    r->off_d = r->off_sum = r->off_s = r->off_dv = r->off_sv = 0;
    switch (f) {
    case KACT_F32: return TP_ALIGN_UP(un * 4, a);
    case KACT_F16:
    case KACT_BF16: return TP_ALIGN_UP(un * 2, a);
    case KACT_Q8_32: {
        size_t nb = un / 32, np = (nb + 1) / 2;
        r->off_dv = TP_ALIGN_UP(np * 64, a);
        r->off_sv = r->off_dv + np * 32;
        r->off_d = TP_ALIGN_UP(r->off_sv + np * 32, a);
        r->off_sum = r->off_d + TP_ALIGN_UP(nb * 4, a);
        r->off_s = r->off_sum + TP_ALIGN_UP(nb * 4, a);
        return r->off_s + TP_ALIGN_UP(nb * 4, a);
    }
    case KACT_Q8_K: {
        size_t nb = un / 256;
        r->off_d = TP_ALIGN_UP(un, a);
        r->off_sum = r->off_d + TP_ALIGN_UP(nb * 4, a);
        return r->off_sum + TP_ALIGN_UP(nb * 16 * 2, a);
    }
    }
    return 0;
}

/* Scratch for max_tokens rows of the widest format (F16/BF16 and Q8_32: about 2 bytes
 * per value). 0 when either bound is 0 (cpu_matmul then allocates). */
size_t cpu_matmul_scratch_bytes(const struct kbackend_opts *o) {
    if (!o || o->max_tokens <= 0 || o->max_in <= 0) return 0;
    struct kact_rows r;
    size_t row = TP_MAX(kact_layout(KACT_F16, o->max_in, &r), kact_layout(KACT_Q8_32, TP_ALIGN_UP(o->max_in, 32), &r));
    row = TP_MAX(row, kact_layout(KACT_Q8_K, TP_ALIGN_UP(o->max_in, 256), &r));
    size_t total;
    if (!tp_mul_size(row, (size_t)o->max_tokens, &total)) return SIZE_MAX;
    return total;
}

/* ------------------------------------------------------------------ dispatch */

static kdot_fn mm_kernel(enum ksimd level, enum dtype t) {
    kdot_fn f = NULL;
    if (level >= KSIMD_AVX512) f = kdot_avx512(t);
    if (!f && level >= KSIMD_AVX2) f = kdot_avx2(t);
    if (!f) f = kdot_scalar(t);
    return f;
}

static void run_tasks(struct cpu_backend *c, tpool_fn fn, void *arg, int64_t n) {
    if (n <= 0) return;
    if (c->pool && n > 1) {
        tpool_run(c->pool, fn, arg, n);
    } else {
        for (int64_t i = 0; i < n; i++) fn(arg, i, n);
    }
}

struct mm_job {
    const struct kmat *w;
    float *y;           /* output row of token 0 of this chunk */
    const float *x;     /* input row of token 0 of this chunk */
    int64_t n_tok;      /* tokens in this chunk */
    struct kact_rows act;
    enum kact_fmt fmt;
    kact_quant_fn quant;
    kdot_fn dot;
    int64_t rows_per_task, toks_per_task, row_block;
};

static void mm_quant_task(void *arg, int64_t i, int64_t n) {
    const struct mm_job *j = arg;
    int64_t t1 = TP_MIN(j->n_tok, (i + 1) * j->toks_per_task);
    for (int64_t t = i * j->toks_per_task; t < t1; t++)
        j->quant(j->fmt, j->x + t * j->w->n_in, j->w->n_in, (uint8_t *)j->act.base + (size_t)t * j->act.stride,
                 &j->act);
}

static void mm_rows_task(void *arg, int64_t i, int64_t n) {
    const struct mm_job *j = arg;
    const struct kmat *w = j->w;
    const int64_t r0 = i * j->rows_per_task, r1 = TP_MIN(w->n_out, r0 + j->rows_per_task);
    /* KMAT_Q4_0X8: rows below `grouped` go 8 at a time (tasks and row blocks start at
     * multiples of 8), the rest one by one */
    const int64_t grouped = w->layout == KMAT_Q4_0X8 ? w->n_out / 8 * 8 : 0;
    for (int64_t rb = r0; rb < r1; rb += j->row_block) {
        const int64_t re = TP_MIN(r1, rb + j->row_block);
        for (int64_t t = 0; t < j->n_tok; t += KDOT_NT) {
            int nt = (int)TP_MIN(KDOT_NT, j->n_tok - t);
            int64_t r = rb;
            for (; r + 8 <= TP_MIN(re, grouped); r += 8)
                q4x8_dot_avx2((const uint8_t *)w->data + (size_t)r * w->row_stride, w->n_in / 32, &j->act, t, nt,
                              j->y + t * w->n_out + r, w->n_out);
            for (; r < re; r++) {
                const uint8_t *wrow = (const uint8_t *)w->data + (size_t)r * w->row_stride;
                float out[KDOT_NT];
                j->dot(wrow, w->n_in, &j->act, t, nt, out);
                for (int k = 0; k < nt; k++) j->y[(t + k) * w->n_out + r] = out[k];
            }
        }
    }
}

/* The row tasks of up to KOPS_MATMUL_N weights on the same activations, as one run. */
struct mm_multi {
    struct mm_job *jobs;
    int64_t first[KOPS_MATMUL_N + 1]; /* task index where weight i's tasks start */
    int n;
};

static void mm_multi_task(void *arg, int64_t i, int64_t n) {
    const struct mm_multi *m = arg;
    int k = 0;
    while (i >= m->first[k + 1]) k++;
    mm_rows_task(&m->jobs[k], i - m->first[k], n);
}

/* ys[i] = ws[i] x for i < n, all of one type and n_in (checked by the callers). Activations
 * are quantized into the backend's scratch once per chunk of tokens (what the scratch
 * holds); when the scratch cannot hold even one row (opts.max_in smaller than n_in) a
 * temporary buffer is allocated, and if that fails the outputs are filled with NaN. */
static void mm_run(struct cpu_backend *c, int n, float *const ys[], const struct kmat *const ws[], const float *x,
                   int64_t n_tok) {
    const struct kmat *w0 = ws[0];
    /* the backend chose (and checked) the level at creation; CPUID is not asked per
     * call, it traps to the hypervisor in a VM */
    const enum ksimd level = c->simd;
    struct mm_job jobs[KOPS_MATMUL_N];
    struct mm_multi multi = {.jobs = jobs, .n = n};
    const int n_threads = c->pool ? TP_MAX(1, c->n_threads) : 1;
    for (int k = 0; k < n; k++) {
        jobs[k] = (struct mm_job){.w = ws[k], .fmt = kact_fmt_of(w0->type), .dot = mm_kernel(level, w0->type)};
        if (!jobs[k].dot) return; /* not a weight type: callers validated types at load */
        jobs[k].quant = level >= KSIMD_AVX2 ? kact_quantize_avx2 : kact_quantize_scalar;
        jobs[k].act.stride = kact_layout(jobs[k].fmt, w0->n_in, &jobs[k].act);
        multi.first[k + 1] = multi.first[k] + kmat_row_tasks(ws[k], n_threads, &jobs[k].rows_per_task, &jobs[k].row_block);
    }
    struct mm_job *j = &jobs[0]; /* quantizes for all */
    const size_t row_bytes = j->act.stride;

    /* tokens per chunk: what the scratch holds */
    void *tmp = NULL;
    uint8_t *scratch = c->act_q;
    int64_t chunk = n_tok;
    if (j->fmt != KACT_F32) {
        chunk = c->act_q && row_bytes ? (int64_t)TP_MIN((size_t)n_tok, c->act_q_bytes / row_bytes) : 0;
        if (chunk == 0) {
            chunk = TP_MIN(n_tok, 64);
            tmp = aligned_alloc(64, row_bytes * (size_t)chunk);
            if (!tmp) {
                for (int k = 0; k < n; k++)
                    for (int64_t i = 0; i < n_tok * ws[k]->n_out; i++) ys[k][i] = NAN;
                return;
            }
            scratch = tmp;
        }
    }

    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        j->n_tok = TP_MIN(chunk, n_tok - t0);
        j->x = x + t0 * w0->n_in;
        if (j->fmt == KACT_F32) {
            j->act.base = (const uint8_t *)j->x;
            j->act.stride = (size_t)w0->n_in * sizeof(float);
        } else {
            j->act.base = scratch;
            int64_t qtasks = j->n_tok >= 8 ? TP_MIN((int64_t)n_threads, j->n_tok) : 1;
            j->toks_per_task = (j->n_tok + qtasks - 1) / qtasks;
            run_tasks(c, mm_quant_task, j, (j->n_tok + j->toks_per_task - 1) / j->toks_per_task);
        }
        for (int k = 0; k < n; k++) {
            jobs[k].n_tok = j->n_tok, jobs[k].x = j->x, jobs[k].act = j->act;
            jobs[k].y = ys[k] + t0 * ws[k]->n_out;
        }
        run_tasks(c, mm_multi_task, &multi, multi.first[n]);
    }
    free(tmp);
}

/* y[t][o] = sum_i W[o][i] x[t][i] for t < n_tok (see kernels.h). */
void cpu_matmul(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok) {
    if (n_tok <= 0 || w->n_out <= 0) return;
    if (w->n_in <= 0) {
        for (int64_t t = 0; t < n_tok; t++) memset(y + t * w->n_out, 0, (size_t)w->n_out * sizeof *y);
        return;
    }
    float *const ys[1] = {y};
    const struct kmat *const ws[1] = {w};
    mm_run(b->impl, 1, ys, ws, x, n_tok);
}

/* kops.matmul_n: one pass when the weights share type and width, else one matmul each. */
void cpu_matmul_n(struct kbackend *b, int n, float *const ys[], const struct kmat *const ws[], const float *x,
                  int64_t n_tok) {
    bool same = n >= 1 && n <= KOPS_MATMUL_N && n_tok > 0;
    for (int k = 0; same && k < n; k++)
        same = ws[k]->type == ws[0]->type && ws[k]->n_in == ws[0]->n_in && ws[k]->n_in > 0 && ws[k]->n_out > 0;
    if (!same) {
        for (int k = 0; k < n; k++) cpu_matmul(b, ys[k], ws[k], x, n_tok);
        return;
    }
    mm_run(b->impl, n, ys, ws, x, n_tok);
}

/* out[t][:] = row ids[t] of `table` dequantized (ids already validated by the caller). */
void cpu_get_rows(struct kbackend *b, float *out, const struct kmat *table, const int32_t *ids, int64_t n) {
    for (int64_t t = 0; t < n; t++)
        quant_dequantize_row(table->type, (const uint8_t *)table->data + (size_t)ids[t] * table->row_stride,
                             out + t * table->n_in, table->n_in);
}
