/* comm_staged.c - the host-staged transport of comm.h: collectives on device buffers
 * through pinned host memory and the MPI communicator, for when NCCL cannot run (two
 * ranks on one GPU) or is switched off (TPLLM_NCCL=0).
 *
 * One collective, per chunk of at most COMM_STAGE_MAX_BYTES: copy the device buffer to
 * the pinned buffer on the communicator's stream and wait for it (comm_dev_wait, timed),
 * run the MPI collective on the pinned buffer, copy the result back and wait again, so
 * the device buffer holds the result and the pinned buffer is free when the call
 * returns. The chunk size depends only on the call's size and the rank count, never on
 * what a rank has allocated, so every rank runs the same sequence of MPI collectives.
 * The all-reduce is MPI's, so its bits are the MPI transport's (same on every rank).
 * Stats count from the moment the work queued before the call has finished: the first
 * wait covers that work and is not the collective's time. */
#include "comm_cuda.h"

#include <stdio.h>
#include <string.h>

#define COMM_STAGE_MAX_BYTES ((size_t)64 << 20)  /* largest chunk, and pinned buffer */
#define COMM_STAGE_INIT_BYTES ((size_t)4 << 20)  /* pinned at creation */

static const struct comm_ops staged_ops;

/* Grow the pinned buffer to at least bytes (contents are not kept). */
static cudaError_t stage_grow(struct comm_dev *d, size_t bytes) {
    if (bytes <= d->pinned_bytes) return cudaSuccess;
    size_t want = TP_MAX(bytes, TP_MIN(2 * d->pinned_bytes, COMM_STAGE_MAX_BYTES));
    if (d->pinned) {
        cudaError_t err = cudaFreeHost(d->pinned); /* idle: every staged call waits for its copies */
        d->pinned = NULL;
        d->pinned_bytes = 0;
        if (err != cudaSuccess) return err;
    }
    void *p = NULL;
    cudaError_t err = cudaHostAlloc(&p, want, cudaHostAllocDefault);
    if (err != cudaSuccess) return err;
    d->pinned = p;
    d->pinned_bytes = want;
    return cudaSuccess;
}

/* The pinned buffer for one chunk; a rank that cannot get it breaks the communicator
 * (its peers are about to enter the MPI collective). */
static int stage_reserve(struct comm_dev *d, size_t bytes, const char *what, tp_err *e) {
    cudaError_t err = stage_grow(d, bytes);
    if (err == cudaSuccess) return 0;
    (void)cudaGetLastError();
    return comm_dev_break(d, e, "cannot pin %zu bytes of host memory for %s: %s — the job will stop", bytes, what,
                          cudaGetErrorString(err));
}

/* Wait for the work queued before the call; the collective's time starts after it. */
static int stage_start(struct comm_dev *d, size_t chunk, const char *what, double *t0, tp_err *e) {
    int rc = stage_reserve(d, chunk, what, e);
    if (rc == 0) rc = comm_dev_wait(d, what, e);
    *t0 = comm_now();
    return rc;
}

static int staged_all_reduce_sum(struct comm *c, float *buf, int64_t n, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (n == 0) return 0;
    if (!comm_dev_is_device_ptr(buf)) return comm_dev_host_all_reduce(d, buf, n, e);
    char what[96];
    snprintf(what, sizeof what, "host-staged all-reduce of %lld floats", (long long)n);
    const size_t total = (size_t)n * sizeof(float), chunk = TP_MIN(total, COMM_STAGE_MAX_BYTES);
    double t0;
    int rc = stage_start(d, chunk, what, &t0, e);
    if (rc) return rc;
    float *host = (float *)d->pinned;
    const int64_t per = (int64_t)(chunk / sizeof(float));
    for (int64_t off = 0; off < n; off += per) {
        int64_t cnt = TP_MIN(per, n - off);
        size_t bytes = (size_t)cnt * sizeof(float);
        COMM_CUDA_TRY(d, e, what, cudaMemcpyAsync(host, buf + off, bytes, cudaMemcpyDeviceToHost, d->stream));
        if ((rc = comm_dev_wait(d, what, e))) return rc;
        if ((rc = comm_dev_host_all_reduce(d, host, cnt, e))) return rc;
        COMM_CUDA_TRY(d, e, what, cudaMemcpyAsync(buf + off, host, bytes, cudaMemcpyHostToDevice, d->stream));
        if ((rc = comm_dev_wait(d, what, e))) return rc;
    }
    d->c.op_seconds = comm_now() - t0;
    return 0;
}

static int staged_all_gather(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (bytes == 0) return 0;
    bool device = false;
    int rc = comm_dev_kinds(send, recv, bytes, &device, e);
    if (rc) return rc;
    if (!device) return comm_dev_host_all_gather(d, send, recv, bytes, e);
    char what[96];
    snprintf(what, sizeof what, "host-staged all-gather of %zu bytes per rank", bytes);
    const size_t P = (size_t)c->topo.size, me = (size_t)c->topo.rank;
    const size_t per = TP_MIN(bytes, TP_MAX((size_t)1, COMM_STAGE_MAX_BYTES / P));
    double t0;
    if ((rc = stage_start(d, per * P, what, &t0, e))) return rc;
    /* Chunk [off, off + cnt) of every rank's slice: host layout [rank][cnt]. In place
     * works: this rank's chunk is read before the results are written back over it. */
    for (size_t off = 0; off < bytes; off += per) {
        size_t cnt = TP_MIN(per, bytes - off);
        unsigned char *host = d->pinned;
        COMM_CUDA_TRY(d, e, what,
                      cudaMemcpyAsync(host + me * cnt, (const unsigned char *)send + off, cnt, cudaMemcpyDeviceToHost,
                                      d->stream));
        if ((rc = comm_dev_wait(d, what, e))) return rc;
        if ((rc = comm_dev_host_all_gather(d, host + me * cnt, host, cnt, e))) return rc;
        for (size_t r = 0; r < P; r++)
            COMM_CUDA_TRY(d, e, what,
                          cudaMemcpyAsync((unsigned char *)recv + r * bytes + off, host + r * cnt, cnt,
                                          cudaMemcpyHostToDevice, d->stream));
        if ((rc = comm_dev_wait(d, what, e))) return rc;
    }
    d->c.op_seconds = comm_now() - t0;
    return 0;
}

static int staged_bcast(struct comm *c, void *buf, size_t bytes, int root, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (bytes == 0) return 0;
    if (!comm_dev_is_device_ptr(buf)) return comm_dev_host_bcast(d, buf, bytes, root, e);
    char what[96];
    snprintf(what, sizeof what, "host-staged broadcast of %zu bytes from rank %d", bytes, root);
    const size_t chunk = TP_MIN(bytes, COMM_STAGE_MAX_BYTES);
    const bool is_root = c->topo.rank == root;
    double t0;
    int rc = stage_start(d, chunk, what, &t0, e);
    if (rc) return rc;
    unsigned char *host = d->pinned, *dev = buf;
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t cnt = TP_MIN(chunk, bytes - off);
        if (is_root) {
            COMM_CUDA_TRY(d, e, what, cudaMemcpyAsync(host, dev + off, cnt, cudaMemcpyDeviceToHost, d->stream));
            if ((rc = comm_dev_wait(d, what, e))) return rc;
        }
        if ((rc = comm_dev_host_bcast(d, host, cnt, root, e))) return rc;
        if (!is_root) {
            COMM_CUDA_TRY(d, e, what, cudaMemcpyAsync(dev + off, host, cnt, cudaMemcpyHostToDevice, d->stream));
            if ((rc = comm_dev_wait(d, what, e))) return rc;
        }
    }
    d->c.op_seconds = comm_now() - t0;
    return 0;
}

static void staged_describe(const struct comm *c, char *buf, size_t size) {
    snprintf(buf, size, "mpi host-staged (%s)", ((const struct comm_dev *)c)->label);
}

static void staged_destroy(struct comm *c) { comm_dev_release(comm_dev_of(c)); }

static const struct comm_ops staged_ops = {
    .kind = "staged",
    .all_reduce_sum = staged_all_reduce_sum,
    .all_gather = staged_all_gather,
    .bcast = staged_bcast,
    .barrier = comm_dev_barrier,
    .set_stream = comm_dev_set_stream,
    .describe = staged_describe,
    .destroy = staged_destroy,
};

int comm_staged_create(struct comm **out, struct comm *mpi, int device, double timeout_s, const char *label,
                       tp_err *e) {
    *out = NULL;
    struct comm_dev *d = NULL;
    int rc = comm_dev_check_mpi(mpi, "comm_create_staged", e);
    if (rc) return rc;
    rc = comm_dev_alloc(&d, &staged_ops, mpi, device, timeout_s, "comm_create_staged", e);
    if (rc == 0) {
        cudaError_t err = stage_grow(d, COMM_STAGE_INIT_BYTES);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            rc = tp_errf(e, TP_ENOMEM,
                         "comm_create_staged: rank %d on host %s: cannot pin %zu bytes of host memory: %s",
                         mpi->topo.rank, mpi->topo.host, COMM_STAGE_INIT_BYTES, cudaGetErrorString(err));
        }
        snprintf(d->label, sizeof d->label, "%s", label);
    }
    if ((rc = comm_any_error(mpi, rc, NULL, e))) {
        comm_dev_release(d);
        return rc;
    }
    *out = &d->c;
    return 0;
}

int comm_create_staged(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    if (!out) return tp_errf(e, TP_EINVAL, "comm_create_staged: NULL output pointer");
    return comm_staged_create(out, mpi, device, timeout_s, "requested", e);
}
