/* comm_stress_cuda.c - multi-rank check of the device communicators (NCCL, host-staged) on
 * device buffers, run under mpirun with any number of ranks on a GPU machine; driven by
 * tests/gpu/comm_check.sh. Rank r uses CUDA device (local rank % devices).
 *
 *   comm_stress_cuda [--transport device|nccl|staged]   correctness + latency; exit 0 when
 *                                                        every check passes (default: device,
 *                                                        i.e. comm_create_device's choice)
 *   comm_stress_cuda --hang-rank R --timeout T          rank R sleeps instead of joining a
 *                                                        device all-reduce: the others must
 *                                                        time out after T s, name rank R and
 *                                                        call comm_abort
 *
 * Correctness, as tests/perf/comm_stress.c checks the MPI transport: all-reduce of 1, 7,
 * 4096, 1<<20 and 3<<20 + 1 floats against a double-precision reference that every rank
 * computes from every rank's inputs (generated from a seed broadcast by rank 0), every
 * rank holding rank 0's bits and a second call repeating them; all-gather (separate and
 * in place) and broadcast from every root, on device buffers; host buffers through the
 * same communicator; stats. Latency figures are printed, never asserted.
 * Exits 77 (skipped) when built without CUDA or when this host has no CUDA device. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef TPLLM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "parallel/comm.h"
#include "../sanitizer_defaults.h"

#ifdef TPLLM_HAVE_CUDA

struct run {
    struct comm *mpi, *c;
    int rank, size;
    uint64_t seed;
    int failures;
};

#define CHECK(R, cond, ...)                                                                         \
    do {                                                                                            \
        if (!(cond) && (R)->failures++ < 20) {                                                      \
            fprintf(stderr, "comm_stress_cuda: rank %d: FAILED %s:%d: ", (R)->rank, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                                           \
            fputc('\n', stderr);                                                                    \
        }                                                                                           \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Rank r's input for case k: uniform in [-1, 1) times 2^[-6, 6], so that sums round. */
static void make_input(float *x, int64_t n, uint64_t seed, int r, int k) {
    uint64_t s = mix64(seed ^ mix64((uint64_t)r * 1000003u + (uint64_t)k + 77));
    for (int64_t i = 0; i < n; i++) {
        s = mix64(s);
        x[i] = (float)ldexp((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0, (int)((s >> 3) % 13) - 6);
    }
}

static unsigned char pattern(int r, size_t i, int k) { return (unsigned char)((size_t)r * 131u + i * 7u + (size_t)k); }

static bool cu_ok(struct run *R, cudaError_t err, const char *call) {
    CHECK(R, err == cudaSuccess, "%s: %s", call, cudaGetErrorString(err));
    return err == cudaSuccess;
}
#define CU(R, call) cu_ok((R), (call), #call)

static void check_all_reduce(struct run *R, int64_t n, int k) {
    tp_err e = {0};
    size_t bytes = (size_t)n * sizeof(float);
    float *x = malloc(bytes), *mine = malloc(bytes), *got = malloc(bytes), *again = malloc(bytes),
          *rank0 = malloc(bytes);
    double *ref = calloc((size_t)n, sizeof *ref), *mag = calloc((size_t)n, sizeof *mag);
    float *d = NULL;
    if (!x || !mine || !got || !again || !rank0 || !ref || !mag || !CU(R, cudaMalloc((void **)&d, bytes))) {
        CHECK(R, 0, "out of memory for %lld floats", (long long)n);
        goto out;
    }
    for (int r = 0; r < R->size; r++) {
        make_input(x, n, R->seed, r, k);
        for (int64_t i = 0; i < n; i++) {
            ref[i] += x[i];
            mag[i] += fabs(x[i]);
        }
        if (r == R->rank) memcpy(mine, x, bytes);
    }
    /* Twice on the same inputs: the second result must repeat the first bit for bit. */
    float *result[2] = {got, again};
    for (int pass = 0; pass < 2; pass++) {
        if (!CU(R, cudaMemcpy(d, mine, bytes, cudaMemcpyHostToDevice))) goto out;
        int rc = comm_all_reduce_sum(R->c, d, n, &e);
        CHECK(R, rc == 0, "all-reduce of %lld floats (pass %d): %s", (long long)n, pass, e.msg);
        if (rc || !CU(R, cudaMemcpy(result[pass], d, bytes, cudaMemcpyDeviceToHost))) goto out;
    }
    CHECK(R, memcmp(got, again, bytes) == 0, "all-reduce of %lld floats is not repeatable", (long long)n);
    double u = ldexp(1.0, -24), worst = 0;
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]), tol = (R->size - 1) * u * mag[i] * (1 + 1e-6);
        if (err > tol && bad++ == 0) first = i;
        if (mag[i] > 0) worst = fmax(worst, err / mag[i]);
    }
    CHECK(R, bad == 0, "all-reduce of %lld floats: %lld sums outside (P-1)*2^-24*sum|x| of the fp64 reference; first "
          "at [%lld]: got %.9g want %.9g", (long long)n, (long long)bad, (long long)first,
          first >= 0 ? got[first] : 0.0, first >= 0 ? ref[first] : 0.0);
    memcpy(rank0, got, bytes);
    int rc = comm_bcast(R->mpi, rank0, bytes, 0, &e); /* rank 0's bits, over plain MPI */
    CHECK(R, rc == 0, "broadcast of rank 0's sums: %s", e.msg);
    CHECK(R, rc || memcmp(got, rank0, bytes) == 0, "all-reduce of %lld floats: bits differ from rank 0's",
          (long long)n);
    if (R->rank == 0)
        printf("all-reduce %8lld floats: ok (max |err|/sum|x| = %.3g, bound %.3g)\n", (long long)n, worst,
               (R->size - 1) * u);
out:
    cudaFree(d);
    free(x);
    free(mine);
    free(got);
    free(again);
    free(rank0);
    free(ref);
    free(mag);
}

static void check_all_gather(struct run *R, size_t bytes, int k, bool in_place) {
    tp_err e = {0};
    size_t total = bytes * (size_t)R->size;
    unsigned char *h = malloc(total + 1), *send = NULL, *recv = NULL;
    if (!h || !CU(R, cudaMalloc((void **)&send, bytes)) || !CU(R, cudaMalloc((void **)&recv, total + 1))) goto out;
    for (size_t i = 0; i < bytes; i++) h[i] = pattern(R->rank, i, k);
    unsigned char *mine = in_place ? recv + (size_t)R->rank * bytes : send;
    if (!CU(R, cudaMemset(recv, 0xAA, total + 1)) || !CU(R, cudaMemcpy(mine, h, bytes, cudaMemcpyHostToDevice)))
        goto out;
    int rc = comm_all_gather(R->c, mine, recv, bytes, &e);
    CHECK(R, rc == 0, "all-gather of %zu bytes: %s", bytes, e.msg);
    if (rc || !CU(R, cudaMemcpy(h, recv, total + 1, cudaMemcpyDeviceToHost))) goto out;
    size_t bad = 0;
    for (int r = 0; r < R->size; r++)
        for (size_t i = 0; i < bytes; i++) bad += h[(size_t)r * bytes + i] != pattern(r, i, k);
    CHECK(R, bad == 0, "all-gather of %zu bytes%s: %zu wrong bytes", bytes, in_place ? " (in place)" : "", bad);
    CHECK(R, h[total] == 0xAA, "all-gather of %zu bytes wrote past the end", bytes);
out:
    cudaFree(send);
    cudaFree(recv);
    free(h);
}

static void check_bcast(struct run *R, size_t bytes, int root, int k) {
    tp_err e = {0};
    unsigned char *h = malloc(bytes + 1), *d = NULL;
    if (!h || !CU(R, cudaMalloc((void **)&d, bytes + 1))) goto out;
    for (size_t i = 0; i <= bytes; i++) h[i] = R->rank == root && i < bytes ? pattern(root, i, k) : 0xAA;
    if (!CU(R, cudaMemcpy(d, h, bytes + 1, cudaMemcpyHostToDevice))) goto out;
    int rc = comm_bcast(R->c, d, bytes, root, &e);
    CHECK(R, rc == 0, "broadcast of %zu bytes from rank %d: %s", bytes, root, e.msg);
    if (rc || !CU(R, cudaMemcpy(h, d, bytes + 1, cudaMemcpyDeviceToHost))) goto out;
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) bad += h[i] != pattern(root, i, k);
    CHECK(R, bad == 0, "broadcast of %zu bytes from rank %d: %zu wrong bytes", bytes, root, bad);
    CHECK(R, h[bytes] == 0xAA, "broadcast of %zu bytes wrote past the end", bytes);
out:
    cudaFree(d);
    free(h);
}

/* Host buffers through the device communicator go to MPI. */
static void check_host_path(struct run *R) {
    tp_err e = {0};
    float x[640];
    for (int i = 0; i < 640; i++) x[i] = (float)(R->rank + 1);
    int rc = comm_all_reduce_sum(R->c, x, 640, &e);
    CHECK(R, rc == 0 && x[639] == (float)(R->size * (R->size + 1) / 2), "host all-reduce: rc %d sum %g (%s)", rc,
          x[639], e.msg);
    int bad = 5;
    rc = comm_any_error(R->c, 0, &bad, &e);
    CHECK(R, rc == 0 && bad == -1, "error agreement: rc %d, bad %d (%s)", rc, bad, e.msg);
}

static void latency(struct run *R, int64_t n, int iters) {
    tp_err e = {0};
    float *d = NULL, last = 0;
    if (!CU(R, cudaMalloc((void **)&d, (size_t)n * sizeof *d))) return;
    comm_barrier(R->c, &e);
    struct comm_stats s0 = comm_get_stats(R->c);
    double t0 = now_s();
    int rc = 0;
    for (int it = 0; it < iters && rc == 0; it++) {
        float one = 1.0f;
        CU(R, cudaMemcpy(d + n - 1, &one, sizeof one, cudaMemcpyHostToDevice));
        rc = comm_all_reduce_sum(R->c, d, n, &e);
    }
    double dt = now_s() - t0;
    struct comm_stats s1 = comm_get_stats(R->c);
    CHECK(R, rc == 0, "latency loop: %s", e.msg);
    CU(R, cudaMemcpy(&last, d + n - 1, sizeof last, cudaMemcpyDeviceToHost));
    CHECK(R, rc || last == (float)R->size, "latency loop: sum %g, want %d", last, R->size);
    CHECK(R, s1.calls - s0.calls == iters, "stats counted %lld calls, want %d", (long long)(s1.calls - s0.calls),
          iters);
    if (R->rank == 0)
        printf("latency: %d device all-reduces of %lld floats on %d ranks: %.1f us per call including a 4-byte "
               "upload (%.1f us of it in the collective)\n",
               iters, (long long)n, R->size, 1e6 * dt / iters, 1e6 * (s1.seconds - s0.seconds) / iters);
    cudaFree(d);
}

/* --hang-rank: one rank stalls before a device all-reduce; the others must not hang. */
static int hang_mode(struct run *R, int victim) {
    tp_err e = {0};
    float *d = NULL, ones[1024];
    for (int i = 0; i < 1024; i++) ones[i] = 1.0f;
    if (cudaMalloc((void **)&d, sizeof ones) != cudaSuccess ||
        cudaMemcpy(d, ones, sizeof ones, cudaMemcpyHostToDevice) != cudaSuccess)
        comm_abort(R->c, 2, "cannot allocate the test buffer");
    if (comm_all_reduce_sum(R->c, d, 1024, &e)) comm_abort(R->c, 2, e.msg); /* warm-up: all alive */
    if (R->rank == victim) {
        fprintf(stderr,
                "comm_stress_cuda: rank %d (host %s) sleeps instead of joining the all-reduce (simulated hang)\n",
                R->rank, comm_topo(R->c)->host);
        fflush(stderr);
        for (;;) pause();
    }
    double t0 = now_s();
    int rc = comm_all_reduce_sum(R->c, d, 1024, &e);
    if (rc == 0) {
        fprintf(stderr, "comm_stress_cuda: rank %d: the all-reduce completed without rank %d: impossible\n", R->rank,
                victim);
        return 1;
    }
    char msg[sizeof e.msg + 64];
    snprintf(msg, sizeof msg, "%s [after %.2f s]", e.msg, now_s() - t0);
    comm_abort(R->c, 4, msg);
}

static int run_checks(struct run *R, int iters) {
    tp_err e = {0};
    const char *s = getenv("TPLLM_TEST_SEED");
    R->seed = s ? strtoull(s, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    if (comm_bcast(R->mpi, &R->seed, sizeof R->seed, 0, &e)) comm_abort(R->c, 2, e.msg);
    if (R->rank == 0)
        printf("comm_stress_cuda: %d rank%s, seed %llu (set TPLLM_TEST_SEED to repeat)\n", R->size,
               R->size == 1 ? "" : "s", (unsigned long long)R->seed);
    const int64_t sizes[] = {1, 7, 4096, 1 << 20, (3 << 20) + 1};
    for (int k = 0; k < (int)(sizeof sizes / sizeof sizes[0]); k++) check_all_reduce(R, sizes[k], k);
    const size_t gsizes[] = {1, 13, 4096, (1 << 20) + 3};
    for (int k = 0; k < (int)(sizeof gsizes / sizeof gsizes[0]); k++) {
        check_all_gather(R, gsizes[k], k, false);
        check_all_gather(R, gsizes[k], k + 1, true);
    }
    const size_t bsizes[] = {1, 1000, (1 << 20) + 3};
    for (int root = 0; root < R->size; root++)
        for (int k = 0; k < (int)(sizeof bsizes / sizeof bsizes[0]); k++) check_bcast(R, bsizes[k], root, k);
    check_host_path(R);
    latency(R, 1, iters);
    latency(R, 640, iters);
    latency(R, 640 * 64, iters / 10 + 1); /* a 64-token prefill chunk of Gemma 3 270M */
    CHECK(R, cudaGetLastError() == cudaSuccess, "a CUDA error was left behind");

    struct comm_stats st = comm_get_stats(R->c);
    int bad = -1;
    tp_err_clear(&e);
    /* Over MPI: the device communicator may be broken by now. */
    int rc = comm_any_error(R->mpi, R->failures ? TP_EINVAL : 0, &bad, &e);
    if (R->rank == 0) {
        printf("comm_stress_cuda: %lld collectives, %.3f s in them, %.1f MB moved on rank 0\n", (long long)st.calls,
               st.seconds, st.bytes / 1e6);
        if (rc) printf("comm_stress_cuda: FAIL: rank %d (first of the failing ranks) reported errors above\n", bad);
        else printf("comm_stress_cuda: PASS (%d rank%s)\n", R->size, R->size == 1 ? "" : "s");
    }
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    const char *transport = "device";
    int hang_rank = -1, iters = 1000;
    double timeout_s = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--transport") && v) transport = argv[++i];
        else if (!strcmp(a, "--hang-rank") && v) hang_rank = atoi(argv[++i]);
        else if (!strcmp(a, "--timeout") && v) timeout_s = atof(argv[++i]);
        else if (!strcmp(a, "--iters") && v) iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: comm_stress_cuda [--transport device|nccl|staged] [--hang-rank R] "
                            "[--timeout SECONDS] [--iters N]\n");
            return 2;
        }
    }
    if (iters < 1) iters = 1;
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    struct run R = {0};
    tp_err e = {0};
    if (comm_create_mpi(&R.mpi, timeout_s, &e)) {
        fprintf(stderr, "comm_stress_cuda: %s\n", e.msg);
        MPI_Finalize();
        return 2;
    }
    R.rank = comm_rank(R.mpi);
    R.size = comm_size(R.mpi);
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess) n_dev = 0;
    int none = n_dev == 0, any_none = 0;
    MPI_Allreduce(&none, &any_none, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any_none) {
        if (R.rank == 0) printf("comm_stress_cuda: skipped: no CUDA device on some rank\n");
        comm_free(R.mpi);
        MPI_Finalize();
        return 77;
    }
    int device = comm_topo(R.mpi)->local_rank % n_dev;
    int rc;
    if (!strcmp(transport, "nccl")) rc = comm_create_nccl(&R.c, R.mpi, device, timeout_s, &e);
    else if (!strcmp(transport, "staged")) rc = comm_create_staged(&R.c, R.mpi, device, timeout_s, &e);
    else rc = comm_create_device(&R.c, R.mpi, device, timeout_s, &e);
    if (rc) {
        fprintf(stderr, "comm_stress_cuda: rank %d: creating the %s communicator: %s\n", R.rank, transport, e.msg);
        comm_free(R.mpi);
        MPI_Finalize();
        return rc == TP_EUNSUPPORTED ? 77 : 2;
    }
    char line[256], desc[64], bus[32] = "?";
    topo_describe(comm_topo(R.c), line, sizeof line);
    comm_describe(R.c, desc, sizeof desc);
    if (cudaDeviceGetPCIBusId(bus, (int)sizeof bus, device) != cudaSuccess) (void)cudaGetLastError();
    printf("comm_stress_cuda: %s; CUDA device %d (%s); transport %s; timeout %g s\n", line, device, bus, desc,
           comm_get_timeout(R.c));
    fflush(stdout);
    if (hang_rank >= R.size) {
        if (R.rank == 0) fprintf(stderr, "comm_stress_cuda: rank %d does not exist in %d ranks\n", hang_rank, R.size);
        rc = 2;
    } else if (hang_rank >= 0) {
        rc = hang_mode(&R, hang_rank);
    } else {
        rc = run_checks(&R, iters);
    }
    comm_free(R.c);
    comm_free(R.mpi);
    MPI_Finalize();
    return rc;
}

#else /* !TPLLM_HAVE_CUDA */

int main(void) {
    printf("comm_stress_cuda: skipped: built without CUDA/NCCL (configure with -DTPLLM_CUDA=ON)\n");
    return 77;
}

#endif
