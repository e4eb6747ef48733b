/* mpi_linkbench.c - the link figures that tests/perf/scaling_model.py needs for "this
 * machine": MPI point-to-point latency and bandwidth, and the per-call cost of the three
 * row-parallel reduction schemes of docs/scaling.md at the sizes of the synthetic 1B model.
 *
 * Not part of the CMake build: it needs nothing of tpllm, and it lives in tests/perf/standalone/
 * so that tests/CMakeLists.txt, which builds every .c file directly in tests/perf, does not pick
 * it up. Build and run it by hand:
 *
 *   mpicc -O2 -o /tmp/mpi_linkbench tests/perf/standalone/mpi_linkbench.c
 *   tests/mpi/mpirun.sh -np 2 /tmp/mpi_linkbench                       # shared memory (vader)
 *   cluster/localhosts.sh mpirun -np 2 /tmp/mpi_linkbench              # TCP between namespaces
 *
 * Options: --embd N (hidden size, default 2048), --tokens T (prompt-step tokens, default 300),
 * --iters N (default 2000 for small messages; large ones scale it down), --poll backoff (default:
 * as tpllm, below) | spin (MPI_Test in a tight loop) | blocking (MPI_Allgather etc.).
 *
 * Every collective is posted non-blocking and completed by polling MPI_Test with the same
 * backoff as parallel/comm_mpi.c (64 back-to-back tests, then test + sched_yield for 1 ms
 * plus the received bytes at 200 MB/s, then nanosleep from 10 us doubling to 1 ms), so the
 * per-call figures include what tpllm's own polling adds. Scheme (b) is done as tpllm does
 * it (runtime/forward.c, project_reduce): an all-to-all of n / size doubles per rank pair,
 * a local sum in rank order, an all-gather of n / size floats. Ranks do nothing else
 * meanwhile: these are link costs, not the waiting for the slower rank that a real forward
 * pass adds. Figures are medians of
 * per-call times (rank 0's clock; each timed call starts after a barrier). */
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) { return MPI_Wtime(); }

enum poll { POLL_BACKOFF, POLL_SPIN, POLL_BLOCKING };
static enum poll g_poll = POLL_BACKOFF;

/* recv_bytes: what this rank receives; the no-sleep phase covers it at 200 MB/s (comm_mpi.c) */
static void wait_req(MPI_Request *r, double recv_bytes) {
    int flag = 0;
    if (g_poll != POLL_BACKOFF) { /* spin (blocking calls do not come here) */
        while (!flag) MPI_Test(r, &flag, MPI_STATUS_IGNORE);
        return;
    }
    for (unsigned i = 0; i < 64u; i++) {
        MPI_Test(r, &flag, MPI_STATUS_IGNORE);
        if (flag) return;
    }
    double t0 = now_s();
    while (now_s() - t0 < 1e-3 + recv_bytes / 2e8) {
        MPI_Test(r, &flag, MPI_STATUS_IGNORE);
        if (flag) return;
        sched_yield();
    }
    long ns = 10000;
    for (;;) {
        MPI_Test(r, &flag, MPI_STATUS_IGNORE);
        if (flag) return;
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 1000000) ns *= 2;
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int rank_of(void) {
    int r;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

enum scheme { ALLGATHER_F64, RS_F64_AG_F32, ALLREDUCE_F32, ALLGATHER_BYTES, BCAST_BYTES };

/* One call of a scheme over n values (or n bytes for the last two), timed on this rank. */
static double one_call(enum scheme s, int64_t n, int size, void *a, void *b, void *c) {
    MPI_Request r;
    double t0 = now_s();
    if (g_poll == POLL_BLOCKING) {
        int64_t part = n / size;
        switch (s) {
        case ALLGATHER_F64: MPI_Allgather(a, (int)n, MPI_DOUBLE, b, (int)n, MPI_DOUBLE, MPI_COMM_WORLD); break;
        case RS_F64_AG_F32: {
            MPI_Alltoall(a, (int)part, MPI_DOUBLE, b, (int)part, MPI_DOUBLE, MPI_COMM_WORLD);
            float *mine = (float *)c + (int64_t)rank_of() * part;
            for (int64_t i = 0; i < part; i++) {
                double acc = 0;
                for (int p = 0; p < size; p++) acc += ((const double *)b)[(int64_t)p * part + i];
                mine[i] = (float)acc;
            }
            MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, c, (int)part, MPI_FLOAT, MPI_COMM_WORLD);
            break;
        }
        case ALLREDUCE_F32: MPI_Allreduce(MPI_IN_PLACE, a, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); break;
        case ALLGATHER_BYTES: MPI_Allgather(a, (int)n, MPI_BYTE, b, (int)n, MPI_BYTE, MPI_COMM_WORLD); break;
        case BCAST_BYTES: MPI_Bcast(a, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD); break;
        }
        return now_s() - t0;
    }
    const double f = (double)(size - 1);
    switch (s) {
    case ALLGATHER_F64: /* (a): every rank's n double partials to every rank */
        MPI_Iallgather(a, (int)n, MPI_DOUBLE, b, (int)n, MPI_DOUBLE, MPI_COMM_WORLD, &r);
        wait_req(&r, f * n * 8);
        break;
    case RS_F64_AG_F32: { /* (b): all-to-all of n / size doubles per pair, sum, all-gather of floats */
        int64_t part = n / size;
        MPI_Ialltoall(a, (int)part, MPI_DOUBLE, b, (int)part, MPI_DOUBLE, MPI_COMM_WORLD, &r);
        wait_req(&r, f * part * 8);
        float *mine = (float *)c + (int64_t)rank_of() * part;
        const double *got = (const double *)b;
        for (int64_t i = 0; i < part; i++) {
            double acc = 0;
            for (int p = 0; p < size; p++) acc += got[(int64_t)p * part + i];
            mine[i] = (float)acc;
        }
        MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, c, (int)part, MPI_FLOAT, MPI_COMM_WORLD, &r);
        wait_req(&r, f * part * 4);
        break;
    }
    case ALLREDUCE_F32: /* (c): float all-reduce (what NCCL would do on GPUs) */
        MPI_Iallreduce(MPI_IN_PLACE, a, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
        wait_req(&r, 2 * f / size * n * 4);
        break;
    case ALLGATHER_BYTES:
        MPI_Iallgather(a, (int)n, MPI_BYTE, b, (int)n, MPI_BYTE, MPI_COMM_WORLD, &r);
        wait_req(&r, f * n);
        break;
    case BCAST_BYTES:
        MPI_Ibcast(a, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD, &r);
        wait_req(&r, (double)n);
        break;
    }
    return now_s() - t0;
}

static double time_scheme(enum scheme s, int64_t n, int size, int iters, void *a, void *b, void *c) {
    double *t = malloc((size_t)iters * sizeof *t);
    for (int w = 0; w < 5; w++) one_call(s, n, size, a, b, c);
    for (int i = 0; i < iters; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        t[i] = one_call(s, n, size, a, b, c);
    }
    double m = median(t, iters);
    free(t);
    return m;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int64_t embd = 2048, tokens = 300;
    int iters = 2000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--embd") && i + 1 < argc) embd = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--poll") && i + 1 < argc) {
            const char *v = argv[++i];
            g_poll = !strcmp(v, "spin") ? POLL_SPIN : !strcmp(v, "blocking") ? POLL_BLOCKING : POLL_BACKOFF;
        } else {
            if (rank == 0) fprintf(stderr, "usage: mpi_linkbench [--embd N] [--tokens T] [--iters N] [--poll backoff|spin|blocking]\n");
            MPI_Finalize();
            return 2;
        }
    }
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "mpi_linkbench: needs at least 2 ranks\n");
        MPI_Finalize();
        return 2;
    }
    char host[MPI_MAX_PROCESSOR_NAME];
    int hl = 0;
    MPI_Get_processor_name(host, &hl);
    char *hosts = rank == 0 ? malloc((size_t)size * MPI_MAX_PROCESSOR_NAME) : NULL;
    MPI_Gather(host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, hosts, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("mpi_linkbench: %d ranks on", size);
        for (int r = 0; r < size; r++) printf(" %s", hosts + (size_t)r * MPI_MAX_PROCESSOR_NAME);
        printf("; embd %lld, prompt step %lld tokens; collectives %s\n", (long long)embd, (long long)tokens,
               g_poll == POLL_BLOCKING ? "blocking (MPI_Allgather, ...)"
               : g_poll == POLL_SPIN   ? "non-blocking, MPI_Test in a tight loop"
                                       : "non-blocking, MPI_Test with tpllm's backoff");
        free(hosts);
    }

    /* point to point: rank 0 <-> rank 1, half the round trip */
    const size_t max_pp = (size_t)16 << 20;
    char *pp = calloc(max_pp, 1);
    if (rank == 0) printf("\n| bytes | half round trip us | GB/s |\n| ---: | ---: | ---: |\n");
    for (size_t bytes = 8; bytes <= max_pp; bytes *= (bytes < 1024 ? 128 : 4)) {
        int it = bytes <= 65536 ? iters : (int)(iters * 65536.0 / (double)bytes) + 20;
        double *t = malloc((size_t)it * sizeof *t);
        for (int i = -5; i < it; i++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = now_s();
            if (rank == 0) {
                MPI_Send(pp, (int)bytes, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
                MPI_Recv(pp, (int)bytes, MPI_BYTE, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else if (rank == 1) {
                MPI_Recv(pp, (int)bytes, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(pp, (int)bytes, MPI_BYTE, 0, 2, MPI_COMM_WORLD);
            }
            if (i >= 0) t[i] = 0.5 * (now_s() - t0);
        }
        double m = median(t, it);
        if (rank == 0) printf("| %zu | %.2f | %.3f |\n", bytes, 1e6 * m, (double)bytes / m / 1e9);
        free(t);
    }
    free(pp);

    /* collectives at the sizes of a decode step (1 token) and a prompt step */
    int64_t steps[2] = {1, tokens};
    int64_t nmax = embd * tokens;
    double *a = calloc((size_t)nmax * (size_t)size, sizeof(double));
    double *b = calloc((size_t)nmax * (size_t)size, sizeof(double));
    float *c = calloc((size_t)nmax, sizeof(float));
    for (int64_t i = 0; i < nmax; i++) a[i] = (double)(i % 97) * 0.25;
    if (rank == 0)
        printf("\n| collective | values or bytes | us per call | received bytes per rank |\n| --- | ---: | ---: | ---: |\n");
    for (int k = 0; k < 2; k++) {
        int64_t n = embd * steps[k];
        int it = steps[k] == 1 ? iters : iters / 50 + 10;
        double ta = time_scheme(ALLGATHER_F64, n, size, it, a, b, c);
        double tb = time_scheme(RS_F64_AG_F32, n, size, it, a, b, c);
        double tc = time_scheme(ALLREDUCE_F32, n, size, it, a, b, c);
        double f = (double)(size - 1) / size;
        if (rank == 0) {
            printf("| (a) all-gather of double partials, %lld token(s) | %lld | %.2f | %.0f |\n", (long long)steps[k],
                   (long long)n, 1e6 * ta, (double)(size - 1) * n * 8);
            printf("| (b) all-to-all f64 + all-gather f32, %lld token(s) | %lld | %.2f | %.0f |\n", (long long)steps[k],
                   (long long)n, 1e6 * tb, f * n * 8 + f * n * 4);
            printf("| (c) all-reduce f32, %lld token(s) | %lld | %.2f | %.0f |\n", (long long)steps[k], (long long)n,
                   1e6 * tc, 2 * f * n * 4);
        }
    }
    /* the small per-step calls outside the forward pass: step header, candidates */
    double th = time_scheme(BCAST_BYTES, 28, size, iters, a, b, c);
    double tk = time_scheme(ALLGATHER_BYTES, 65 * 8, size, iters, a, b, c);
    if (rank == 0) {
        printf("| broadcast (step header) | 28 B | %.2f | 28 |\n", 1e6 * th);
        printf("| all-gather (65 sampling candidates) | 520 B | %.2f | %d |\n", 1e6 * tk, (size - 1) * 520);
    }
    free(a);
    free(b);
    free(c);
    MPI_Finalize();
    return 0;
}
