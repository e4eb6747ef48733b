/* bwprobe.c - memory read bandwidth of this machine: the ceiling the decode rooflines of
 * tests/perf/bench_cpu.py are measured against.
 *
 *   bwprobe [--size BYTES] [-t THREADS] [-r PASSES] [--json]
 *
 * T threads each read their own contiguous slice of one buffer (default 1 GiB, far larger
 * than any cache) as 64-bit words into four independent sums; a pass is the time from
 * starting the threads to the last one finishing; the figure is the best of N passes in
 * GB/s (1e9 bytes/s, as llama.cpp and STREAM report). Each thread first writes its own
 * slice (first touch: its pages land on its NUMA node) with buf[i] = i, and every pass's sum
 * is checked against n(n-1)/2 so that the reads cannot be optimised away. Exit status: 0,
 * 1 when it could not run (memory, threads, a wrong sum), 2 for bad arguments. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BWPROBE_MAX_THREADS 256
#define BWPROBE_MAX_PASSES 100

struct bw_slice {
    uint64_t *p;     /* first word of this thread's slice */
    size_t n;        /* words in it */
    uint64_t first;  /* the index of p[0] in the whole buffer (the value written there) */
    uint64_t sum;    /* the last pass's sum */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *slice_fill(void *arg) {
    struct bw_slice *s = arg;
    for (size_t i = 0; i < s->n; i++) s->p[i] = s->first + i;
    return NULL;
}

static void *slice_read(void *arg) {
    struct bw_slice *s = arg;
    const uint64_t *p = s->p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= s->n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    for (; i < s->n; i++) s0 += p[i];
    s->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Runs fn on every slice in its own thread; 0, or -1 when a thread could not start. */
static int run_threads(void *(*fn)(void *), struct bw_slice *sl, pthread_t *th, int t) {
    int started = 0, rc = 0;
    for (; started < t; started++)
        if (pthread_create(&th[started], NULL, fn, &sl[started])) {
            rc = -1;
            break;
        }
    for (int k = 0; k < started; k++) pthread_join(th[k], NULL);
    return rc;
}

/* "1073741824", "1GiB", "512MiB", "2G", "1.5e9": bytes, or -1. */
static int64_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return -1;
    double mul = 1;
    if (!strcmp(end, "") || !strcmp(end, "B")) mul = 1;
    else if (!strcmp(end, "K") || !strcmp(end, "KiB")) mul = 1024.0;
    else if (!strcmp(end, "M") || !strcmp(end, "MiB")) mul = 1024.0 * 1024;
    else if (!strcmp(end, "G") || !strcmp(end, "GiB")) mul = 1024.0 * 1024 * 1024;
    else return -1;
    v *= mul;
    return v < 9e18 ? (int64_t)v : -1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: bwprobe [--size BYTES] [-t THREADS] [-r PASSES] [--json]\n\n"
            "Memory read bandwidth: THREADS threads read one buffer of BYTES, best of PASSES, in GB/s.\n\n"
            "  --size BYTES     the buffer: a number with an optional K/M/G (KiB/MiB/GiB) suffix; at least 64MiB\n"
            "                   (default 1GiB: keep it well above the last-level cache)\n"
            "  -t, --threads T  reading threads (default 2), 1..%d\n"
            "  -r, --passes N   passes, the best one is reported (default 5), 1..%d\n"
            "  --json           one JSON object instead of the text line\n",
            BWPROBE_MAX_THREADS, BWPROBE_MAX_PASSES);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "bwprobe: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

int main(int argc, char **argv) {
    int64_t bytes = (int64_t)1 << 30;
    int threads = 2, passes = 5;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(o, "--json")) {
            json = true;
        } else if (v && !strcmp(o, "--size")) {
            bytes = parse_size(argv[++i]);
            if (bytes < ((int64_t)64 << 20)) {
                fprintf(stderr, "bwprobe: --size expects at least 64MiB (e.g. 1GiB, 4G, 2147483648), got '%s'\n",
                        argv[i]);
                return 2;
            }
        } else if (v && (!strcmp(o, "-t") || !strcmp(o, "--threads"))) {
            if (parse_int(o, argv[++i], 1, BWPROBE_MAX_THREADS, &threads)) return 2;
        } else if (v && (!strcmp(o, "-r") || !strcmp(o, "--passes"))) {
            if (parse_int(o, argv[++i], 1, BWPROBE_MAX_PASSES, &passes)) return 2;
        } else {
            fprintf(stderr, "bwprobe: unknown or incomplete option '%s'. Run 'bwprobe --help'.\n", o);
            return 2;
        }
    }
    const size_t n = (size_t)bytes / 8;
    uint64_t *buf = malloc(n * 8);
    struct bw_slice *sl = calloc((size_t)threads, sizeof *sl);
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    if (!buf || !sl || !th) {
        fprintf(stderr, "bwprobe: cannot allocate %.2f GiB; pass a smaller --size\n", (double)bytes / (1 << 30));
        return 1;
    }
    for (int t = 0; t < threads; t++) {
        size_t lo = n / (size_t)threads * (size_t)t, hi = t + 1 == threads ? n : n / (size_t)threads * (size_t)(t + 1);
        sl[t] = (struct bw_slice){buf + lo, hi - lo, lo, 0};
    }
    int status = 0;
    double gbs[BWPROBE_MAX_PASSES], best = 0;
    /* 0 + 1 + ... + (n - 1), modulo 2^64 like the sums */
    const uint64_t want = n % 2 == 0 ? (uint64_t)(n / 2) * (uint64_t)(n - 1) : (uint64_t)n * (uint64_t)((n - 1) / 2);
    if (run_threads(slice_fill, sl, th, threads)) {
        fprintf(stderr, "bwprobe: cannot start %d threads; pass fewer -t\n", threads);
        status = 1;
    }
    for (int p = 0; !status && p < passes; p++) {
        const double t0 = now_s();
        if (run_threads(slice_read, sl, th, threads)) {
            fprintf(stderr, "bwprobe: cannot start %d threads; pass fewer -t\n", threads);
            status = 1;
            break;
        }
        const double dt = now_s() - t0;
        uint64_t sum = 0;
        for (int t = 0; t < threads; t++) sum += sl[t].sum;
        if (sum != want) {
            fprintf(stderr, "bwprobe: pass %d read a wrong sum (%" PRIu64 ", expected %" PRIu64 "): memory or "
                    "compiler fault\n", p + 1, sum, want);
            status = 1;
            break;
        }
        gbs[p] = (double)(n * 8) / dt / 1e9;
        if (gbs[p] > best) best = gbs[p];
    }
    if (!status) {
        if (json) {
            printf("{\"bytes\": %zu, \"threads\": %d, \"passes\": %d, \"best_gbs\": %.3f, \"passes_gbs\": [", n * 8,
                   threads, passes, best);
            for (int p = 0; p < passes; p++) printf("%s%.3f", p ? ", " : "", gbs[p]);
            printf("]}\n");
        } else {
            printf("bwprobe: read %.2f GiB with %d thread%s, best of %d passes: %.2f GB/s (passes:",
                   (double)(n * 8) / (1 << 30), threads, threads == 1 ? "" : "s", passes, best);
            for (int p = 0; p < passes; p++) printf(" %.2f", gbs[p]);
            printf(")\n");
        }
    }
    free(buf);
    free(sl);
    free(th);
    return status;
}
