/* test_cuda_comm.c - the device communicators on one rank (parallel/cuda): NCCL and the
 * host-staged fallback, on device buffers (from cudaMalloc) and on host buffers, which
 * they hand to MPI. One rank makes every collective an identity, so the expected result
 * is the input itself, bit for bit; sums across ranks are checked by
 * tests/perf/comm_stress_cuda.c under tests/gpu/comm_check.sh. Label gpu: without a CUDA
 * build or device it prints "skipped: no CUDA device" and exits 77 before Criterion
 * starts. Each test runs in its own process and starts MPI as a singleton. */
#include <criterion/criterion.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef TPLLM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "parallel/comm.h"
#include "testutil.h"
#include "../sanitizer_defaults.h"

#ifdef TPLLM_HAVE_CUDA

static void mpi_up(void) {
    int provided = 0;
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
    cr_assert_eq(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided), MPI_SUCCESS);
    unsetenv("TPLLM_COMM_TIMEOUT");
    unsetenv("TPLLM_NCCL");
}

static void mpi_down(void) { MPI_Finalize(); }

static struct comm *make_mpi(void) {
    struct comm *c = NULL;
    tp_err e = {0};
    cr_assert_eq(comm_create_mpi(&c, 0, &e), 0, "comm_create_mpi: %s", e.msg);
    return c;
}

#define CU(call) cr_assert_eq((call), cudaSuccess, "%s: %s", #call, cudaGetErrorString(cudaGetLastError()))

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    CU(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

static void fill_bytes(tu_rng *r, unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(tu_next(r) >> 24);
}

/* All-reduce of n floats in device memory on a one-rank communicator: the input back. */
static void check_all_reduce(struct comm *c, tu_rng *r, int64_t n) {
    tp_err e = {0};
    size_t bytes = (size_t)n * sizeof(float);
    float *h = malloc(bytes), *back = malloc(bytes);
    cr_assert(h && back);
    tu_fill_uniform(r, h, (size_t)n, -100, 100);
    float *d = dev_alloc(bytes);
    CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    cr_assert_eq(comm_all_reduce_sum(c, d, n, &e), 0, "all-reduce of %lld floats: %s", (long long)n, e.msg);
    CU(cudaMemcpy(back, d, bytes, cudaMemcpyDeviceToHost));
    cr_assert_eq(memcmp(h, back, bytes), 0, "a one-rank all-reduce of %lld floats changed the buffer", (long long)n);
    CU(cudaFree(d));
    free(h);
    free(back);
}

/* All-gather of `bytes` per rank, separate buffers and in place. */
static void check_all_gather(struct comm *c, tu_rng *r, size_t bytes) {
    tp_err e = {0};
    unsigned char *h = malloc(bytes + 1), *back = malloc(bytes + 1);
    cr_assert(h && back);
    fill_bytes(r, h, bytes + 1);
    unsigned char *send = dev_alloc(bytes), *recv = dev_alloc(bytes + 1);
    CU(cudaMemcpy(send, h, bytes, cudaMemcpyHostToDevice));
    CU(cudaMemset(recv, 0xAA, bytes + 1));
    cr_assert_eq(comm_all_gather(c, send, recv, bytes, &e), 0, "all-gather of %zu bytes: %s", bytes, e.msg);
    CU(cudaMemcpy(back, recv, bytes + 1, cudaMemcpyDeviceToHost));
    cr_assert_eq(memcmp(h, back, bytes), 0, "all-gather of %zu bytes: wrong bytes", bytes);
    cr_assert_eq(back[bytes], 0xAA, "all-gather of %zu bytes wrote past the end", bytes);
    fill_bytes(r, h, bytes);
    CU(cudaMemcpy(recv, h, bytes, cudaMemcpyHostToDevice));
    cr_assert_eq(comm_all_gather(c, recv, recv, bytes, &e), 0, "in-place all-gather of %zu bytes: %s", bytes, e.msg);
    CU(cudaMemcpy(back, recv, bytes, cudaMemcpyDeviceToHost));
    cr_assert_eq(memcmp(h, back, bytes), 0, "in-place all-gather of %zu bytes: wrong bytes", bytes);
    CU(cudaFree(send));
    CU(cudaFree(recv));
    free(h);
    free(back);
}

static void check_bcast(struct comm *c, tu_rng *r, size_t bytes) {
    tp_err e = {0};
    unsigned char *h = malloc(bytes), *back = malloc(bytes);
    cr_assert(h && back);
    fill_bytes(r, h, bytes);
    unsigned char *d = dev_alloc(bytes);
    CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    cr_assert_eq(comm_bcast(c, d, bytes, 0, &e), 0, "broadcast of %zu bytes: %s", bytes, e.msg);
    CU(cudaMemcpy(back, d, bytes, cudaMemcpyDeviceToHost));
    cr_assert_eq(memcmp(h, back, bytes), 0, "broadcast of %zu bytes changed the root's buffer", bytes);
    CU(cudaFree(d));
    free(h);
    free(back);
}

/* What every device communicator must do on one rank. */
static void check_device_comm(struct comm *c, struct comm *mpi) {
    tp_err e = {0};
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    cr_assert_eq(comm_rank(c), comm_rank(mpi));
    cr_assert_eq(comm_size(c), 1);
    cr_assert_str_eq(comm_topo(c)->host, comm_topo(mpi)->host);
    cr_assert_str_eq(comm_peer_host(c, 0), comm_peer_host(mpi, 0));
    cr_assert_float_eq(comm_get_timeout(c), comm_get_timeout(mpi), 1e-12, "the MPI communicator's timeout by default");

    const int64_t counts[] = {1, 7, 640, 100003};
    for (size_t i = 0; i < TP_ARRAY_LEN(counts); i++) check_all_reduce(c, &r, counts[i]);
    const size_t gsizes[] = {1, 13, 4096, (1 << 20) + 3};
    for (size_t i = 0; i < TP_ARRAY_LEN(gsizes); i++) check_all_gather(c, &r, gsizes[i]);
    const size_t bsizes[] = {1, 1000, (1 << 20) + 3};
    for (size_t i = 0; i < TP_ARRAY_LEN(bsizes); i++) check_bcast(c, &r, bsizes[i]);
    cr_assert_eq(comm_barrier(c, &e), 0, "%s", e.msg);
    cr_assert_eq(comm_all_reduce_sum(c, NULL, 0, &e), 0, "empty all-reduce: %s", e.msg);

    /* Host buffers go through MPI on the same communicator. */
    float hx[333], horig[333];
    tu_fill_uniform(&r, hx, 333, -5, 5);
    memcpy(horig, hx, sizeof hx);
    cr_assert_eq(comm_all_reduce_sum(c, hx, 333, &e), 0, "host all-reduce: %s", e.msg);
    cr_assert_eq(memcmp(hx, horig, sizeof hx), 0);
    unsigned char hs[41], hr[41];
    fill_bytes(&r, hs, sizeof hs);
    cr_assert_eq(comm_all_gather(c, hs, hr, sizeof hs, &e), 0, "host all-gather: %s", e.msg);
    cr_assert_eq(memcmp(hs, hr, sizeof hs), 0);
    int bad = 7;
    cr_assert_eq(comm_any_error(c, 0, &bad, &e), 0, "%s", e.msg);
    cr_assert_eq(bad, -1);

    /* Mixed kinds are an argument error that leaves the communicator usable. */
    unsigned char *dbuf = dev_alloc(sizeof hs);
    cr_assert_eq(comm_all_gather(c, hs, dbuf, sizeof hs, &e), TP_EINVAL);
    cr_assert_not_null(strstr(e.msg, "same kind"), "%s", e.msg);
    tp_err_clear(&e);
    CU(cudaFree(dbuf));

    /* Stats: calls and bytes as the MPI transport counts them. */
    comm_reset_stats(c);
    float *d = dev_alloc(640 * sizeof(float));
    CU(cudaMemset(d, 0, 640 * sizeof(float)));
    for (int i = 0; i < 5; i++) cr_assert_eq(comm_all_reduce_sum(c, d, 640, &e), 0, "%s", e.msg);
    struct comm_stats s = comm_get_stats(c);
    cr_assert_eq(s.calls, 5);
    cr_assert_eq(s.bytes, 5 * 640 * 4);
    cr_assert(s.seconds >= 0 && s.seconds < 10, "seconds %g", s.seconds);

    /* A caller's stream: the collective runs after the copy queued there before it. */
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *pin = NULL;
    CU(cudaHostAlloc((void **)&pin, 640 * sizeof(float), cudaHostAllocDefault));
    tu_fill_uniform(&r, pin, 640, -1, 1);
    float want[640], got[640];
    memcpy(want, pin, sizeof want);
    comm_set_stream(c, st);
    CU(cudaMemcpyAsync(d, pin, 640 * sizeof(float), cudaMemcpyHostToDevice, st));
    cr_assert_eq(comm_all_reduce_sum(c, d, 640, &e), 0, "all-reduce on the caller's stream: %s", e.msg);
    CU(cudaMemcpyAsync(got, d, sizeof got, cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    cr_assert_eq(memcmp(got, want, sizeof got), 0, "the collective did not follow the copy on the caller's stream");
    comm_set_stream(c, NULL);
    CU(cudaStreamDestroy(st));
    CU(cudaFreeHost(pin));
    CU(cudaFree(d));
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "the communicator left a CUDA error behind");
}

TestSuite(cuda_comm, .init = mpi_up, .fini = mpi_down);

Test(cuda_comm, nccl_on_one_rank_moves_device_buffers_unchanged) {
    struct comm *mpi = make_mpi(), *c = NULL;
    tp_err e = {0};
    cr_assert_eq(comm_create_nccl(&c, mpi, 0, 0, &e), 0, "comm_create_nccl: %s", e.msg);
    char desc[64];
    comm_describe(c, desc, sizeof desc);
    cr_assert_eq(strncmp(desc, "nccl 2.", 7), 0, "describe: '%s'", desc);
    check_device_comm(c, mpi);
    comm_free(c);
    comm_free(mpi);
}

Test(cuda_comm, host_staged_on_one_rank_moves_device_buffers_unchanged) {
    struct comm *mpi = make_mpi(), *c = NULL;
    tp_err e = {0};
    cr_assert_eq(comm_create_staged(&c, mpi, 0, 0, &e), 0, "comm_create_staged: %s", e.msg);
    char desc[64];
    comm_describe(c, desc, sizeof desc);
    cr_assert_str_eq(desc, "mpi host-staged (requested)");
    check_device_comm(c, mpi);
    comm_free(c);
    comm_free(mpi);
}

Test(cuda_comm, host_staged_splits_calls_larger_than_its_buffer) {
    struct comm *mpi = make_mpi(), *c = NULL;
    tp_err e = {0};
    cr_assert_eq(comm_create_staged(&c, mpi, 0, 0, &e), 0, "comm_create_staged: %s", e.msg);
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    check_all_reduce(c, &r, (17 << 20) + 5); /* 68 MiB: two 64 MiB chunks */
    check_bcast(c, &r, ((size_t)65 << 20) + 3);
    check_all_gather(c, &r, ((size_t)65 << 20) + 1);
    comm_free(c);
    comm_free(mpi);
}

Test(cuda_comm, device_picks_nccl_unless_switched_off) {
    struct comm *mpi = make_mpi(), *c = NULL;
    tp_err e = {0};
    char desc[64];
    cr_assert_eq(comm_create_device(&c, mpi, 0, 7.5, &e), 0, "comm_create_device: %s", e.msg);
    comm_describe(c, desc, sizeof desc);
    cr_assert_eq(strncmp(desc, "nccl ", 5), 0, "one rank, one GPU: NCCL; got '%s'", desc);
    cr_assert_float_eq(comm_get_timeout(c), 7.5, 1e-12);
    comm_free(c);
    setenv("TPLLM_NCCL", "0", 1);
    cr_assert_eq(comm_create_device(&c, mpi, 0, 0, &e), 0, "comm_create_device: %s", e.msg);
    comm_describe(c, desc, sizeof desc);
    cr_assert_str_eq(desc, "mpi host-staged (TPLLM_NCCL=0)");
    comm_free(c);
    unsetenv("TPLLM_NCCL");
    comm_describe(mpi, desc, sizeof desc);
    cr_assert_str_eq(desc, "mpi");
    comm_free(mpi);
}

Test(cuda_comm, refuses_bad_arguments_and_leaves_mpi_usable) {
    struct comm *mpi = make_mpi(), *c = (struct comm *)&c;
    tp_err e = {0};
    cr_assert_eq(comm_create_nccl(&c, NULL, 0, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    cr_assert_not_null(strstr(e.msg, "comm_create_mpi"), "%s", e.msg);
    tp_err_clear(&e);
    int n = 0;
    CU(cudaGetDeviceCount(&n));
    cr_assert_eq(comm_create_device(&c, mpi, n, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    cr_assert_not_null(strstr(e.msg, "does not exist"), "%s", e.msg);
    tp_err_clear(&e);
    cr_assert_eq(comm_create_staged(&c, mpi, -1, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    tp_err_clear(&e);
    cr_assert_eq(comm_create_nccl(&c, mpi, 0, -3, &e), TP_EINVAL, "a negative timeout");
    cr_assert_null(c);
    tp_err_clear(&e);
    /* A device communicator does not build on another device communicator. */
    struct comm *d = NULL;
    cr_assert_eq(comm_create_staged(&d, mpi, 0, 0, &e), 0, "%s", e.msg);
    cr_assert_eq(comm_create_nccl(&c, d, 0, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    comm_free(d);
    tp_err_clear(&e);
    int x = 3;
    cr_assert_eq(comm_all_gather(mpi, &x, &x, sizeof x, &e), 0, "MPI still works: %s", e.msg);
    comm_free(mpi);
}

#endif /* TPLLM_HAVE_CUDA */

int main(int argc, char *argv[]) {
    if (tu_cuda_devices() == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true)) result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    return result;
}
