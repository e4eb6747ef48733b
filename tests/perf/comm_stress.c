/* comm_stress.c - multi-rank check of the MPI communicator (run under mpirun with any
 * number of ranks; tests/mpi/test_comm.sh drives it at 1-4 ranks).
 *
 *   comm_stress                         correctness + latency figures; exit 0 when every check passes
 *   comm_stress --die-rank R            rank R _exit(3)s before a collective: the job must end by itself
 *   comm_stress --hang-rank R --timeout T
 *                                       rank R sleeps instead of joining: the others time out after
 *                                       T s, name the missing rank and call comm_abort
 *   comm_stress --mismatch              rank 0 broadcasts more bytes than the others expect: MPI's
 *                                       error comes back as a status and the job stops
 *
 * Correctness: all-reduce of 0, 1, 7, 4096 and 1<<20 floats against a double-precision
 * reference that every rank computes from every rank's inputs (they are generated from
 * a seed broadcast by rank 0); every rank must hold the same bits as rank 0, and a second
 * call must repeat them. All-gather, all-to-all, broadcast (every root), barrier and the
 * error agreement are checked too. Latency figures are printed, never asserted. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "parallel/comm.h"
#include "../sanitizer_defaults.h"

struct opts {
    int die_rank, hang_rank; /* -1: off */
    double timeout_s;        /* 0: communicator default */
    int iters;               /* latency loop */
    bool mismatch;           /* broadcast with sizes that differ between ranks */
};

struct run {
    struct comm *c;
    int rank, size;
    uint64_t seed;
    int failures; /* on this rank */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64: independent streams from (seed, rank, case). */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Rank r's all-reduce input for case k: uniform in [-1, 1) scaled by 2^[-6, 6], so that
 * sums of mixed magnitudes round. */
static void make_input(float *x, int64_t n, uint64_t seed, int r, int k) {
    uint64_t s = mix64(seed ^ mix64((uint64_t)r * 1000003u + (uint64_t)k));
    for (int64_t i = 0; i < n; i++) {
        s = mix64(s);
        double u = (double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0;
        int ex = (int)((s >> 3) % 13) - 6;
        x[i] = (float)ldexp(u, ex);
    }
}

#define CHECK(run, cond, ...)                                                                       \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            if ((run)->failures++ < 20) {                                                           \
                fprintf(stderr, "comm_stress: rank %d: FAILED %s:%d: ", (run)->rank, __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__);                                                       \
                fputc('\n', stderr);                                                                \
            }                                                                                       \
        }                                                                                           \
    } while (0)

static void check_all_reduce(struct run *R, int64_t n, int k) {
    tp_err e = {0};
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    float *got = malloc(bytes), *again = malloc(bytes), *rank0 = malloc(bytes), *x = malloc(bytes);
    double *ref = calloc((size_t)(n > 0 ? n : 1), sizeof *ref), *mag = calloc((size_t)(n > 0 ? n : 1), sizeof *mag);
    if (!got || !again || !rank0 || !x || !ref || !mag) {
        CHECK(R, 0, "out of memory for %lld floats", (long long)n);
        goto out;
    }
    for (int r = 0; r < R->size; r++) {
        make_input(x, n, R->seed, r, k);
        for (int64_t i = 0; i < n; i++) {
            ref[i] += x[i];
            mag[i] += fabs(x[i]);
        }
        if (r == R->rank) {
            memcpy(got, x, (size_t)n * sizeof(float));
            memcpy(again, x, (size_t)n * sizeof(float));
        }
    }
    int rc = comm_all_reduce_sum(R->c, got, n, &e);
    CHECK(R, rc == 0, "all-reduce of %lld floats: %s", (long long)n, e.msg);
    rc = comm_all_reduce_sum(R->c, again, n, &e);
    CHECK(R, rc == 0, "second all-reduce of %lld floats: %s", (long long)n, e.msg);
    if (rc) goto out;
    /* A float sum of P terms is within (P-1) u sum|x| of the exact sum (u = 2^-24). */
    double u = ldexp(1.0, -24), worst = 0;
    int64_t bad = 0, first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]), tol = (R->size - 1) * u * mag[i] * (1 + 1e-6);
        if (err > tol) {
            if (first_bad < 0) first_bad = i;
            bad++;
        }
        if (mag[i] > 0) worst = fmax(worst, err / mag[i]);
    }
    CHECK(R, bad == 0, "all-reduce of %lld floats: %lld sums outside (P-1)*2^-24*sum|x| of the fp64 reference; "
          "first at [%lld]: got %.9g want %.9g", (long long)n, (long long)bad, (long long)first_bad,
          first_bad >= 0 ? got[first_bad] : 0.0, first_bad >= 0 ? ref[first_bad] : 0.0);
    CHECK(R, n == 0 || memcmp(got, again, (size_t)n * sizeof(float)) == 0,
          "all-reduce of %lld floats is not repeatable: two calls on the same inputs differ", (long long)n);
    if (n > 0) memcpy(rank0, got, (size_t)n * sizeof(float));
    rc = comm_bcast(R->c, rank0, (size_t)n * sizeof(float), 0, &e);
    CHECK(R, rc == 0, "broadcast of rank 0's sums: %s", e.msg);
    int64_t diff = 0;
    for (int64_t i = 0; rc == 0 && i < n; i++) diff += memcmp(&got[i], &rank0[i], sizeof(float)) != 0;
    CHECK(R, diff == 0, "all-reduce of %lld floats: %lld sums differ in their bits from rank 0's", (long long)n,
          (long long)diff);
    if (R->rank == 0)
        printf("all-reduce %8lld floats: ok (max |err|/sum|x| = %.3g, bound %.3g)\n", (long long)n, worst,
               (R->size - 1) * u);
out:
    free(got);
    free(again);
    free(rank0);
    free(x);
    free(ref);
    free(mag);
}

static unsigned char pattern(int r, size_t i, int k) { return (unsigned char)((size_t)r * 131u + i * 7u + (size_t)k); }

static void check_all_gather(struct run *R, size_t bytes, int k, int in_place) {
    tp_err e = {0};
    unsigned char *send = malloc(bytes ? bytes : 1), *recv = malloc(bytes * (size_t)R->size + 1);
    if (!send || !recv) {
        CHECK(R, 0, "out of memory");
        goto out;
    }
    memset(recv, 0xAA, bytes * (size_t)R->size + 1);
    unsigned char *mine = in_place ? recv + (size_t)R->rank * bytes : send;
    for (size_t i = 0; i < bytes; i++) mine[i] = pattern(R->rank, i, k);
    int rc = comm_all_gather(R->c, mine, recv, bytes, &e);
    CHECK(R, rc == 0, "all-gather of %zu bytes: %s", bytes, e.msg);
    size_t bad = 0;
    for (int r = 0; rc == 0 && r < R->size; r++)
        for (size_t i = 0; i < bytes; i++) bad += recv[(size_t)r * bytes + i] != pattern(r, i, k);
    CHECK(R, bad == 0, "all-gather of %zu bytes%s: %zu wrong bytes", bytes, in_place ? " (in place)" : "", bad);
    CHECK(R, recv[bytes * (size_t)R->size] == 0xAA, "all-gather of %zu bytes wrote past the end", bytes);
out:
    free(send);
    free(recv);
}

/* Rank r sends block q (pattern(r, q * bytes + i)) to rank q; rank r must receive block r
 * of every rank p at recv[p * bytes]. */
static void check_all_to_all(struct run *R, size_t bytes, int k) {
    tp_err e = {0};
    const size_t total = bytes * (size_t)R->size;
    unsigned char *send = malloc(total + 1), *recv = malloc(total + 1);
    if (!send || !recv) {
        CHECK(R, 0, "out of memory");
        goto out;
    }
    memset(recv, 0xAA, total + 1);
    for (size_t i = 0; i < total; i++) send[i] = pattern(R->rank, i, k);
    int rc = comm_all_to_all(R->c, send, recv, bytes, &e);
    CHECK(R, rc == 0, "all-to-all of %zu bytes per pair: %s", bytes, e.msg);
    size_t bad = 0;
    for (int p = 0; rc == 0 && p < R->size; p++)
        for (size_t i = 0; i < bytes; i++)
            bad += recv[(size_t)p * bytes + i] != pattern(p, (size_t)R->rank * bytes + i, k);
    CHECK(R, bad == 0, "all-to-all of %zu bytes per pair: %zu wrong bytes", bytes, bad);
    CHECK(R, recv[total] == 0xAA, "all-to-all of %zu bytes per pair wrote past the end", bytes);
    CHECK(R, comm_all_to_all(R->c, send, send, bytes, &e) == (bytes ? TP_EINVAL : 0),
          "all-to-all with one buffer for send and receive was not refused");
out:
    free(send);
    free(recv);
}

/* The two ways runtime/forward.c reduces n double partial sums (same bits, other costs):
 * an all-gather of every rank's n doubles, or an all-to-all of n / size doubles per rank
 * pair then an all-gather of n / size floats. Figures only, never asserted. */
static void reduce_schemes(struct run *R, int64_t n, int iters) {
    tp_err e = {0};
    const int P = R->size;
    const int64_t s = (n + P - 1) / P;
    double *part = calloc((size_t)(s * P), sizeof *part), *all = calloc((size_t)(n * P), sizeof *all);
    float *out = calloc((size_t)(s * P), sizeof *out);
    if (!part || !all || !out) goto out;
    int rc = comm_barrier(R->c, &e);
    double t0 = now_s();
    for (int it = 0; it < iters && rc == 0; it++) rc = comm_all_gather(R->c, part, all, (size_t)n * 8, &e);
    double t1 = now_s();
    for (int it = 0; it < iters && rc == 0; it++) {
        rc = comm_all_to_all(R->c, part, all, (size_t)s * 8, &e);
        if (!rc) rc = comm_all_gather(R->c, out + (int64_t)R->rank * s, out, (size_t)s * 4, &e);
    }
    double t2 = now_s();
    CHECK(R, rc == 0, "reduction schemes: %s", e.msg);
    if (R->rank == 0 && rc == 0)
        printf("latency: reduction of %lld doubles on %d ranks: all-gather %.1f us (%.0f KB in per rank), "
               "all-to-all + all-gather %.1f us (%.0f KB in)\n", (long long)n, P, 1e6 * (t1 - t0) / iters,
               (double)(P - 1) * (double)n * 8 / 1e3, 1e6 * (t2 - t1) / iters, (double)(P - 1) * (double)s * 12 / 1e3);
out:
    free(part);
    free(all);
    free(out);
}

static void check_bcast(struct run *R, size_t bytes, int root, int k) {
    tp_err e = {0};
    unsigned char *buf = malloc(bytes + 1);
    if (!buf) {
        CHECK(R, 0, "out of memory");
        return;
    }
    for (size_t i = 0; i <= bytes; i++) buf[i] = R->rank == root && i < bytes ? pattern(root, i, k) : 0xAA;
    int rc = comm_bcast(R->c, buf, bytes, root, &e);
    CHECK(R, rc == 0, "broadcast of %zu bytes from rank %d: %s", bytes, root, e.msg);
    size_t bad = 0;
    for (size_t i = 0; rc == 0 && i < bytes; i++) bad += buf[i] != pattern(root, i, k);
    CHECK(R, bad == 0, "broadcast of %zu bytes from rank %d: %zu wrong bytes", bytes, root, bad);
    CHECK(R, buf[bytes] == 0xAA, "broadcast of %zu bytes wrote past the end", bytes);
    free(buf);
}

/* Ranks size/2 (when size > 2) and size-1 fail; every rank must agree on the lowest. */
static void check_any_error(struct run *R) {
    tp_err e = {0};
    int bad = 7;
    int rc = comm_any_error(R->c, 0, &bad, &e);
    CHECK(R, rc == 0 && bad == -1, "error agreement with no failure: rc %d, first bad rank %d (%s)", rc, bad, e.msg);
    int P = R->size, mid = P > 2 ? P / 2 : -1;
    int mine = R->rank == mid ? TP_EFORMAT : R->rank == P - 1 ? TP_EIO : 0;
    int want_rank = mid >= 0 ? mid : P - 1, want_rc = mid >= 0 ? TP_EFORMAT : TP_EIO;
    tp_err_clear(&e);
    if (mine) tp_errf(&e, mine, "rank %d's own failure", R->rank);
    rc = comm_any_error(R->c, mine, &bad, &e);
    CHECK(R, rc == want_rc && bad == want_rank, "error agreement: rc %d first bad rank %d, want %d and rank %d", rc,
          bad, want_rc, want_rank);
    char want[64];
    snprintf(want, sizeof want, mine ? "rank %d's own failure" : "rank %d (host ", mine ? R->rank : want_rank);
    CHECK(R, strstr(e.msg, want) != NULL, "error agreement message '%s' lacks '%s'", e.msg, want);
}

static void latency(struct run *R, int64_t n, int iters) {
    tp_err e = {0};
    float *buf = malloc((size_t)n * sizeof *buf);
    if (!buf) return;
    comm_barrier(R->c, &e);
    struct comm_stats s0 = comm_get_stats(R->c);
    double t0 = now_s();
    int rc = 0;
    for (int it = 0; it < iters && rc == 0; it++) {
        for (int64_t i = 0; i < n; i++) buf[i] = (float)(R->rank + 1);
        rc = comm_all_reduce_sum(R->c, buf, n, &e);
    }
    double dt = now_s() - t0;
    struct comm_stats s1 = comm_get_stats(R->c);
    CHECK(R, rc == 0, "latency loop: %s", e.msg);
    CHECK(R, rc || buf[n - 1] == (float)(R->size * (R->size + 1) / 2), "latency loop: sum %g, want %d", buf[n - 1],
          R->size * (R->size + 1) / 2);
    CHECK(R, s1.calls - s0.calls == iters, "stats counted %lld calls, want %d", (long long)(s1.calls - s0.calls),
          iters);
    CHECK(R, s1.bytes - s0.bytes == (int64_t)iters * n * 4, "stats counted %lld bytes", (long long)(s1.bytes - s0.bytes));
    CHECK(R, s1.seconds - s0.seconds <= dt * 1.001 + 1e-6, "stats say %.3f s in collectives, the loop took %.3f s",
          s1.seconds - s0.seconds, dt);
    if (R->rank == 0)
        printf("latency: %d all-reduces of %lld floats on %d ranks: %.1f us per call (%.1f us of it in MPI)\n", iters,
               (long long)n, R->size, 1e6 * dt / iters, 1e6 * (s1.seconds - s0.seconds) / iters);
    free(buf);
}

/* --die-rank / --hang-rank: one rank leaves or stalls before a collective; the others are
 * in it and must not hang. */
static int failure_mode(struct run *R, const struct opts *o) {
    tp_err e = {0};
    float x[1024];
    for (int i = 0; i < 1024; i++) x[i] = 1.0f;
    if (comm_all_reduce_sum(R->c, x, 1024, &e)) comm_abort(R->c, 2, e.msg); /* warm-up: all alive */
    int victim = o->die_rank >= 0 ? o->die_rank : o->hang_rank;
    if (R->rank == victim && o->die_rank >= 0) {
        fprintf(stderr, "comm_stress: rank %d (host %s) exits abruptly with status 3 (simulated crash)\n", R->rank,
                comm_topo(R->c)->host);
        fflush(stderr);
        _exit(3);
    }
    if (R->rank == victim) {
        fprintf(stderr, "comm_stress: rank %d (host %s) sleeps instead of joining the all-reduce (simulated hang)\n",
                R->rank, comm_topo(R->c)->host);
        fflush(stderr);
        for (;;) pause();
    }
    double t0 = now_s();
    int rc = comm_all_reduce_sum(R->c, x, 1024, &e);
    if (rc == 0) {
        fprintf(stderr, "comm_stress: rank %d: the all-reduce completed without rank %d: impossible\n", R->rank, victim);
        return 1;
    }
    char msg[sizeof e.msg + 64];
    snprintf(msg, sizeof msg, "%s [after %.2f s]", e.msg, now_s() - t0);
    comm_abort(R->c, 4, msg);
}

/* --mismatch: rank 0 broadcasts more bytes than the others expect (a programming error).
 * MPI reports it (MPI_ERRORS_RETURN): the receivers must fail with MPI's own text and
 * stop the job rather than go on with a short message. */
static int mismatch_mode(struct run *R) {
    tp_err e = {0};
    char buf[4096] = {0};
    int rc = comm_bcast(R->c, buf, R->rank == 0 ? sizeof buf : 16, 0, &e);
    if (rc == 0) rc = comm_barrier(R->c, &e);
    if (rc) comm_abort(R->c, 5, e.msg);
    fprintf(stderr, "comm_stress: rank %d: a broadcast of mismatched sizes was not reported\n", R->rank);
    return 1;
}

static int parse(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.die_rank = -1, .hang_rank = -1, .timeout_s = 0, .iters = 1000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--die-rank") && v) o->die_rank = atoi(argv[++i]);
        else if (!strcmp(a, "--hang-rank") && v) o->hang_rank = atoi(argv[++i]);
        else if (!strcmp(a, "--timeout") && v) o->timeout_s = atof(argv[++i]);
        else if (!strcmp(a, "--iters") && v) o->iters = atoi(argv[++i]);
        else if (!strcmp(a, "--mismatch")) o->mismatch = true;
        else {
            fprintf(stderr, "usage: comm_stress [--die-rank R | --hang-rank R | --mismatch] [--timeout SECONDS] [--iters N]\n");
            return -1;
        }
    }
    if (o->iters < 1) o->iters = 1;
    return 0;
}

int main(int argc, char **argv) {
    struct opts o;
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    struct run R = {0};
    tp_err e = {0};
    if (parse(argc, argv, &o) || comm_create_mpi(&R.c, o.timeout_s, &e)) {
        if (e.code) fprintf(stderr, "comm_stress: %s\n", e.msg);
        MPI_Finalize();
        return 2;
    }
    R.rank = comm_rank(R.c);
    R.size = comm_size(R.c);
    char line[256];
    topo_describe(comm_topo(R.c), line, sizeof line);
    printf("comm_stress: %s; timeout %g s\n", line, comm_get_timeout(R.c));
    fflush(stdout);

    int victim = o.die_rank >= 0 ? o.die_rank : o.hang_rank;
    if (victim >= R.size) {
        if (R.rank == 0) fprintf(stderr, "comm_stress: rank %d does not exist in %d ranks\n", victim, R.size);
        comm_free(R.c);
        MPI_Finalize();
        return 2;
    }
    if (victim >= 0) return failure_mode(&R, &o);
    if (o.mismatch) return mismatch_mode(&R);

    const char *s = getenv("TPLLM_TEST_SEED");
    R.seed = s ? strtoull(s, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    if (comm_bcast(R.c, &R.seed, sizeof R.seed, 0, &e)) comm_abort(R.c, 2, e.msg);
    if (R.rank == 0) printf("comm_stress: %d rank%s, seed %llu (set TPLLM_TEST_SEED to repeat)\n", R.size, R.size == 1 ? "" : "s",
                            (unsigned long long)R.seed);

    const int64_t sizes[] = {0, 1, 7, 4096, 1 << 20};
    for (int k = 0; k < (int)(sizeof sizes / sizeof sizes[0]); k++) check_all_reduce(&R, sizes[k], k);
    const size_t gsizes[] = {0, 1, 13, 4096, (1 << 20) + 3};
    for (int k = 0; k < (int)(sizeof gsizes / sizeof gsizes[0]); k++) {
        check_all_gather(&R, gsizes[k], k, 0);
        check_all_gather(&R, gsizes[k], k + 1, 1);
    }
    const size_t asizes[] = {0, 1, 13, 4096, (1 << 18) + 3};
    for (int k = 0; k < (int)(sizeof asizes / sizeof asizes[0]); k++) check_all_to_all(&R, asizes[k], k + 2);
    const size_t bsizes[] = {0, 1, 1000, (1 << 20) + 3};
    for (int root = 0; root < R.size; root++)
        for (int k = 0; k < (int)(sizeof bsizes / sizeof bsizes[0]); k++) check_bcast(&R, bsizes[k], root, k);
    CHECK(&R, comm_bcast(R.c, &R.seed, 1, R.size, &e) == TP_EINVAL, "broadcast from a rank that does not exist");
    tp_err_clear(&e);
    CHECK(&R, comm_barrier(R.c, &e) == 0, "barrier: %s", e.msg);
    check_any_error(&R);
    latency(&R, 1, o.iters);
    latency(&R, 640, o.iters); /* Gemma 3 270M: hidden size 640, one decode token */
    reduce_schemes(&R, 2048, o.iters);        /* 1B synthetic: one decode token */
    reduce_schemes(&R, 2048 * 16, o.iters / 10 + 1);
    reduce_schemes(&R, 2048 * 300, o.iters / 100 + 1); /* a 300-token prompt */

    struct comm_stats st = comm_get_stats(R.c);
    int bad = -1;
    tp_err_clear(&e);
    int rc = comm_any_error(R.c, R.failures ? TP_EINVAL : 0, &bad, &e);
    if (R.rank == 0) {
        printf("comm_stress: %lld collectives, %.3f s in them, %.1f MB moved on rank 0\n", (long long)st.calls,
               st.seconds, st.bytes / 1e6);
        if (rc) printf("comm_stress: FAIL: rank %d (first of the failing ranks) reported errors above\n", bad);
        else printf("comm_stress: PASS (%d rank%s)\n", R.size, R.size == 1 ? "" : "s");
    }
    comm_free(R.c);
    MPI_Finalize();
    return rc ? 1 : 0;
}
