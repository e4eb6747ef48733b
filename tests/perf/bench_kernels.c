/* bench_kernels.c - speed of the CPU matmul against this machine's memory bandwidth.
 *
 *   bench_kernels [--types Q4_0,Q8_0,...] [--threads 1,2] [--mib 256] [--no-batch]
 *
 * 1. Read bandwidth, measured in the same run: the best of several passes of a
 *    multi-threaded sum over a 1 GiB buffer (with and without software prefetch), for
 *    each thread count.
 * 2. Matrix x vector (decode) for each weight type on a matrix of n_in = 14336 columns and
 *    enough rows to hold >= --mib MiB of weights (far past the last-level cache): GB/s of
 *    weight bytes read, and that as a % of the measured bandwidth at the same thread count;
 *    also as a % of a plain sum over the same weight buffer timed just before (the ceiling
 *    at that moment, which is what counts on a machine shared with other work).
 * 3. Batched matrix x matrix (prefill) on a 4096 x 4096 matrix, n_tok = 64 and 512: GFLOP/s
 *    (2 * n_out * n_in * n_tok per call).
 * Every timed result is checked: a few outputs are recomputed with the scalar kernels
 * (a separate scalar backend) and must agree within 1e-4 of sum |w_i x_i|.
 * Weights are random valid blocks (random codes, random finite fp16 scales). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/cpu.h"
#include "kernels/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static const enum dtype all_types[] = {
    DTYPE_F32,  DTYPE_F16,  DTYPE_BF16, DTYPE_Q4_0, DTYPE_Q4_1, DTYPE_Q5_0, DTYPE_Q5_1,
    DTYPE_Q8_0, DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K,
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static float rng_normal(uint64_t *s) {
    double u1 = ((double)(rng_next(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rng_next(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ------------------------------------------------------------------ bandwidth */

struct bw_job {
    const uint8_t *buf;
    size_t chunk, total;
    bool prefetch;
    double sums[64];
};

#if defined(__x86_64__)
/* Sum of 64-bit words with 32-byte loads; with `prefetch`, each line is also prefetched
 * 2 KiB ahead as the matmul kernels do (on this kind of machine that raises the rate a
 * single core reaches), so the ceiling is measured the way the kernels read. */
__attribute__((target("avx2"))) static double bw_sum_avx2(const uint8_t *p, size_t n, bool prefetch) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        if (prefetch) {
            _mm_prefetch((const char *)p + i + 2048, _MM_HINT_T0);
            _mm_prefetch((const char *)p + i + 2048 + 64, _MM_HINT_T0);
        }
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    int64_t v[4];
    _mm256_storeu_si256((__m256i *)v, a0);
    return (double)(v[0] + v[1] + v[2] + v[3]);
}
#endif

static double bw_sum(const uint8_t *p, size_t n, bool prefetch) {
#if defined(__x86_64__)
    if (cpu_simd_detect() >= KSIMD_AVX2) return bw_sum_avx2(p, n, prefetch);
#endif
    const uint64_t *q = (const uint64_t *)p;
    uint64_t s0 = 0, s1 = 0;
    for (size_t i = 0; i + 2 <= n / 8; i += 2) s0 += q[i], s1 += q[i + 1];
    return (double)(s0 + s1);
}

static void bw_task(void *arg, int64_t i, int64_t n) {
    struct bw_job *j = arg;
    size_t lo = (size_t)i * j->chunk, hi = TP_MIN(j->total, lo + j->chunk);
    j->sums[i] = bw_sum(j->buf + lo, hi - lo, j->prefetch);
}

/* Best GB/s of `reps` passes over buf with n_threads threads, each pass alternately with
 * and without software prefetch (the better of the two ways counts). */
static double measure_bandwidth(const uint8_t *buf, size_t bytes, int n_threads, int reps) {
    tp_err e = {0};
    struct tpool *pool = NULL;
    if (tpool_create(&pool, n_threads, &e)) {
        fprintf(stderr, "bench_kernels: %s\n", e.msg);
        return 0;
    }
    struct bw_job j = {.buf = buf, .total = bytes, .chunk = TP_ALIGN_UP(bytes / (size_t)n_threads, 4096)};
    double best = 1e30, check = 0;
    for (int r = 0; r < reps; r++) {
        j.prefetch = r & 1;
        double t = now_s();
        tpool_run(pool, bw_task, &j, n_threads);
        t = now_s() - t;
        best = TP_MIN(best, t);
        for (int i = 0; i < n_threads; i++) check += j.sums[i];
    }
    tpool_free(pool);
    if (check == 42.0) fprintf(stderr, "(unlikely checksum)\n"); /* keeps the sums alive */
    return (double)bytes / best / 1e9;
}

/* ------------------------------------------------------------------ weights */

static bool is_float_type(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

/* Offsets of fp16 scale fields in a block (-1: none). */
static void scale_fields(enum dtype t, int *h0, int *h1) {
    *h0 = *h1 = -1;
    switch (t) {
    case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0: *h0 = 0; break;
    case DTYPE_Q4_1: case DTYPE_Q5_1: case DTYPE_Q4_K: case DTYPE_Q5_K: *h0 = 0, *h1 = 2; break;
    case DTYPE_Q2_K: *h0 = 80, *h1 = 82; break;
    case DTYPE_Q3_K: *h0 = 108; break;
    case DTYPE_Q6_K: *h0 = 208; break;
    default: break;
    }
}

static void fill_weights(uint8_t *buf, size_t bytes, enum dtype t, uint64_t *s) {
    if (is_float_type(t)) {
        size_t n = bytes / (t == DTYPE_F32 ? 4 : 2);
        for (size_t i = 0; i < n; i++) {
            float v = 0.02f * (float)((int64_t)(rng_next(s) >> 40) - (1 << 23)) / (float)(1 << 23);
            if (t == DTYPE_F32) memcpy(buf + 4 * i, &v, 4);
            else {
                uint16_t h = t == DTYPE_F16 ? f32_to_fp16(v) : f32_to_bf16(v);
                memcpy(buf + 2 * i, &h, 2);
            }
        }
        return;
    }
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t r = rng_next(s);
        memcpy(buf + i, &r, 8);
    }
    const size_t ts = dtype_get(t)->type_size;
    int h[2];
    scale_fields(t, &h[0], &h[1]);
    for (size_t b = 0; b < bytes / ts; b++)
        for (int k = 0; k < 2; k++)
            if (h[k] >= 0) {
                uint16_t v = f32_to_fp16(1e-3f * (float)(1 + (rng_next(s) & 7)));
                memcpy(buf + b * ts + (size_t)h[k], &v, 2);
            }
}

/* ------------------------------------------------------------------ checking */

/* Recomputes outputs (token tok, rows rows[]) with the scalar backend; returns the worst
 * |diff| / sum|w x| (dequantized weights, unquantized x). */
static double check_rows(struct kbackend *scalar, const struct kmat *w, const float *x, const float *y, int64_t n_tok,
                         const int64_t *rows, int n_rows, int64_t tok) {
    double worst = 0;
    float *deq = malloc((size_t)w->n_in * sizeof *deq);
    for (int i = 0; i < n_rows; i++) {
        struct kmat one = *w;
        one.data = (const uint8_t *)w->data + (size_t)rows[i] * w->row_stride;
        one.n_out = 1;
        float ys;
        scalar->ops->matmul(scalar, &ys, &one, x + tok * w->n_in, 1);
        quant_dequantize_row(w->type, one.data, deq, w->n_in);
        double s = 0;
        for (int64_t k = 0; k < w->n_in; k++) s += fabs((double)deq[k] * x[tok * w->n_in + k]);
        double d = fabs((double)y[tok * w->n_out + rows[i]] - ys) / (s > 0 ? s : 1);
        worst = TP_MAX(worst, d);
    }
    free(deq);
    (void)n_tok;
    return worst;
}

/* ------------------------------------------------------------------ main */

/* The first line of `path` that starts with `key` (without the key), or "" . */
static void read_line(const char *path, const char *key, char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) {
            snprintf(out, n, "%s", line + strlen(key));
            out[strcspn(out, "\n")] = 0;
            break;
        }
    fclose(f);
}

static void print_load(const char *when) {
    char load[128];
    read_line("/proc/loadavg", "", load, sizeof load);
    printf("# load average %s: %s\n", when, load[0] ? load : "unknown");
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (*s && n < max) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static struct kbackend *make_backend(int n_threads, int simd, int64_t max_tokens, int64_t max_in) {
    struct kbackend_opts o = {.n_threads = n_threads, .max_tokens = max_tokens, .max_in = max_in, .simd = simd};
    struct kbackend *b = NULL;
    tp_err e = {0};
    if (kbackend_cpu_create(&b, &o, &e)) {
        fprintf(stderr, "bench_kernels: %s\n", e.msg);
        exit(1);
    }
    return b;
}

static double time_matmul(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok,
                          double min_time, int min_reps) {
    b->ops->matmul(b, y, w, x, n_tok); /* warm up: pages, caches, pool */
    double best = 1e30, total = 0;
    for (int r = 0; r < min_reps || total < min_time; r++) {
        double t = now_s();
        b->ops->matmul(b, y, w, x, n_tok);
        t = now_s() - t;
        best = TP_MIN(best, t);
        total += t;
        if (r > 200) break;
    }
    return best;
}

int main(int argc, char **argv) {
    enum dtype types[TP_ARRAY_LEN(all_types)];
    int n_types = 0;
    int threads[8] = {1, 2}, n_thr = 2;
    size_t mib = 256;
    bool batch = true;
    for (size_t i = 0; i < TP_ARRAY_LEN(all_types); i++) types[n_types++] = all_types[i];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--types") && i + 1 < argc) {
            n_types = 0;
            char *list = strdup(argv[++i]);
            for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ","))
                for (size_t k = 0; k < TP_ARRAY_LEN(all_types); k++)
                    if (!strcmp(tok, dtype_name(all_types[k]))) types[n_types++] = all_types[k];
            free(list);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            n_thr = parse_list(argv[++i], threads, 8);
        } else if (!strcmp(argv[i], "--mib") && i + 1 < argc) {
            mib = (size_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--no-batch")) {
            batch = false;
        } else {
            fprintf(stderr, "usage: %s [--types Q4_0,Q8_0,...] [--threads 1,2] [--mib 256] [--no-batch]\n", argv[0]);
            return 2;
        }
    }
    const enum ksimd simd = cpu_simd_detect();
    char model[256];
    read_line("/proc/cpuinfo", "model name\t: ", model, sizeof model);
    printf("# bench_kernels: cpu %s, %ld logical cpus, simd %s\n", model[0] ? model : "unknown",
           sysconf(_SC_NPROCESSORS_ONLN), cpu_simd_name(simd));
    print_load("at start");

    /* 1. bandwidth */
    double bw[8] = {0};
    {
        const size_t bytes = (size_t)1 << 30;
        uint8_t *buf = aligned_alloc(4096, bytes);
        if (!buf) {
            fprintf(stderr, "bench_kernels: cannot allocate 1 GiB for the bandwidth test\n");
            return 1;
        }
        for (size_t i = 0; i < bytes; i += 64) buf[i] = (uint8_t)i;
        printf("\n| threads | read bandwidth (GB/s) |\n| ---: | ---: |\n");
        for (int k = 0; k < n_thr; k++) {
            bw[k] = measure_bandwidth(buf, bytes, threads[k], 8);
            printf("| %d | %.1f |\n", threads[k], bw[k]);
        }
        free(buf);
    }

    const int64_t n_in = 14336, bn = 4096;
    int bad = 0;
    struct kbackend *scalar = make_backend(1, KSIMD_SCALAR, 512, n_in);
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    float *x = malloc((size_t)512 * n_in * sizeof *x);
    for (int64_t i = 0; i < 512 * n_in; i++) x[i] = rng_normal(&seed);

    /* 2. matrix x vector */
    printf("\n| type | matrix | MiB | threads | ms | GB/s | %% of read bw | %% of same-buffer bw |\n"
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int k = 0; k < n_types; k++) {
        const enum dtype t = types[k];
        const size_t row = dtype_row_bytes(t, n_in);
        const int64_t n_out = (int64_t)((mib << 20) + row - 1) / (int64_t)row;
        const size_t bytes = row * (size_t)n_out;
        uint8_t *wbuf = aligned_alloc(64, TP_ALIGN_UP(bytes, 64));
        float *y = malloc((size_t)n_out * sizeof *y);
        if (!wbuf || !y) {
            fprintf(stderr, "bench_kernels: out of memory for %s\n", dtype_name(t));
            return 1;
        }
        fill_weights(wbuf, bytes, t, &seed);
        struct kmat w = {.data = wbuf, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = row};
        for (int th = 0; th < n_thr; th++) {
            struct kbackend *b = make_backend(threads[th], -1, 512, n_in);
            /* the same bytes summed just before: the ceiling under the machine's current load */
            double bw_now = measure_bandwidth(wbuf, bytes / 4096 * 4096, threads[th], 4);
            double s = time_matmul(b, y, &w, x, 1, 1.0, 5);
            int64_t rows[3] = {0, n_out / 2, n_out - 1};
            double err = check_rows(scalar, &w, x, y, 1, rows, 3, 0);
            double gbs = (double)bytes / s / 1e9;
            printf("| %s | %lld x %lld | %.0f | %d | %.2f | %.1f | %.0f%% | %.0f%% |%s\n", dtype_name(t),
                   (long long)n_out, (long long)n_in, (double)bytes / (1 << 20), threads[th], s * 1e3, gbs,
                   100 * gbs / bw[th], 100 * gbs / bw_now, err > 1e-4 ? " CHECK FAILED" : "");
            fflush(stdout);
            if (err > 1e-4) bad++;
            kbackend_free(b);
        }
        free(wbuf);
        free(y);
    }

    /* 3. batched */
    if (batch) {
        printf("\n| type | matrix | n_tok | threads | ms | GFLOP/s |\n| --- | --- | ---: | ---: | ---: | ---: |\n");
        for (int k = 0; k < n_types; k++) {
            const enum dtype t = types[k];
            const size_t row = dtype_row_bytes(t, bn);
            uint8_t *wbuf = aligned_alloc(64, TP_ALIGN_UP(row * (size_t)bn, 64));
            float *y = malloc((size_t)512 * bn * sizeof *y);
            fill_weights(wbuf, row * (size_t)bn, t, &seed);
            struct kmat w = {.data = wbuf, .type = t, .n_out = bn, .n_in = bn, .row_stride = row};
            const int64_t ntoks[2] = {64, 512};
            for (int nt = 0; nt < 2; nt++) {
                for (int th = 0; th < n_thr; th++) {
                    struct kbackend *b = make_backend(threads[th], -1, 512, n_in);
                    double s = time_matmul(b, y, &w, x, ntoks[nt], 0.5, 2);
                    int64_t rows[2] = {1, bn - 2};
                    double err = check_rows(scalar, &w, x, y, ntoks[nt], rows, 2, ntoks[nt] - 1);
                    double gf = 2.0 * (double)bn * (double)bn * (double)ntoks[nt] / s / 1e9;
                    printf("| %s | %lld x %lld | %lld | %d | %.1f | %.1f |%s\n", dtype_name(t), (long long)bn,
                           (long long)bn, (long long)ntoks[nt], threads[th], s * 1e3, gf,
                           err > 1e-4 ? " CHECK FAILED" : "");
                    fflush(stdout);
                    if (err > 1e-4) bad++;
                    kbackend_free(b);
                }
            }
            free(wbuf);
            free(y);
        }
    }
    print_load("at end");
    kbackend_free(scalar);
    free(x);
    if (bad) fprintf(stderr, "bench_kernels: %d results disagree with the scalar kernels\n", bad);
    return bad ? 1 : 0;
}
