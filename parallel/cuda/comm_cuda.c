/* comm_cuda.c - what the device transports (NCCL, host-staged) share: creation of the
 * stream and events, the timed wait on the device, host buffers handed to the MPI
 * communicator, and breaking the communicator (which aborts NCCL, never destroys it).
 *
 * Waiting: a device collective is queued on the communicator's stream, then an event is
 * recorded behind it and polled (cudaEventQuery) with the MPI transport's backoff: 64
 * back-to-back queries, then queries between sched_yield() for 1 ms, then nanosleep from
 * 10 us doubling to 1 ms, answering peers' "which collective are you in?" meanwhile. Each
 * step also reads NCCL's asynchronous error (a peer that vanished, a network failure), so
 * such an error ends the wait at once instead of at the deadline. */
#include "comm_cuda.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMM_DEV_SPIN 64u             /* back-to-back queries before yielding */
#define COMM_DEV_YIELD_S 1e-3         /* then query + sched_yield for this long */
#define COMM_DEV_SLEEP_MIN_NS 10000L  /* then sleep, doubling from 10 us ... */
#define COMM_DEV_SLEEP_MAX_NS 1000000L /* ... to 1 ms */

static const char *base_name(const char *file) {
    const char *slash = strrchr(file, '/');
    return slash ? slash + 1 : file;
}

int comm_dev_check_mpi(const struct comm *mpi, const char *fn, tp_err *e) {
    if (!mpi)
        return tp_errf(e, TP_EINVAL, "%s: the MPI communicator is NULL: create it first with comm_create_mpi", fn);
    if (!comm_is_mpi(mpi))
        return tp_errf(e, TP_EINVAL, "%s: builds on the MPI communicator from comm_create_mpi, not on a %s one", fn,
                       mpi->ops->kind);
    if (mpi->broken)
        return tp_errf(e, TP_ECOMM, "%s refused: the MPI communicator failed earlier: %s", fn, mpi->broken_err.msg);
    return 0;
}

/* A CUDA call failed outside any collective (creation): TP_EIO naming call and device. */
static int dev_setup_fail(const struct comm *mpi, int device, tp_err *e, cudaError_t err, const char *call,
                          const char *fn) {
    (void)cudaGetLastError(); /* keep the runtime's last error clean for the backend's checks */
    return tp_errf(e, err == cudaErrorMemoryAllocation ? TP_ENOMEM : TP_EIO,
                   "%s: rank %d on host %s, CUDA device %d: %s failed: %s (%s)", fn, mpi->topo.rank, mpi->topo.host,
                   device, call, cudaGetErrorString(err), cudaGetErrorName(err));
}

#define DEV_SETUP_TRY(call)                                                                      \
    do {                                                                                         \
        cudaError_t err_ = (call);                                                               \
        if (err_ != cudaSuccess) {                                                               \
            rc = dev_setup_fail(mpi, device, e, err_, #call, fn);                                \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

int comm_dev_alloc(struct comm_dev **out, const struct comm_ops *ops, struct comm *mpi, int device,
                   double timeout_s, const char *fn, tp_err *e) {
    *out = NULL;
    int rc = comm_dev_check_mpi(mpi, fn, e);
    if (rc) return rc;
    double timeout = mpi->timeout_s;
    if (timeout_s != 0 && (rc = comm_resolve_timeout(timeout_s, &timeout, e))) return rc;
    int n_dev = 0;
    cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return tp_errf(e, TP_EUNSUPPORTED,
                       "%s: rank %d on host %s has no usable CUDA device (%s); run on the CPU instead", fn,
                       mpi->topo.rank, mpi->topo.host, err != cudaSuccess ? cudaGetErrorString(err) : "no devices");
    }
    if (device < 0 || device >= n_dev)
        return tp_errf(e, TP_EINVAL,
                       "%s: rank %d on host %s: CUDA device %d does not exist (this host has %d: 0..%d); give "
                       "each rank a device in that range, e.g. local rank %% %d",
                       fn, mpi->topo.rank, mpi->topo.host, device, n_dev, n_dev - 1, n_dev);
    struct comm_dev *d = calloc(1, sizeof *d);
    if (!d) return tp_errf(e, TP_ENOMEM, "%s: out of host memory", fn);
    d->c.ops = ops;
    d->c.topo = mpi->topo;
    d->c.hosts = mpi->hosts;
    d->c.timeout_s = timeout;
    d->c.op_seconds = -1;
    d->mpi = mpi;
    d->device = device;
    DEV_SETUP_TRY(cudaSetDevice(device));
    /* A blocking stream: ordered after work on the legacy default stream (plain cudaMemcpy,
     * which may return before its DMA lands), so callers that give no stream are safe. */
    DEV_SETUP_TRY(cudaStreamCreateWithFlags(&d->own_stream, cudaStreamDefault));
    DEV_SETUP_TRY(cudaEventCreate(&d->ev_start));
    DEV_SETUP_TRY(cudaEventCreate(&d->ev_done));
    d->stream = d->own_stream;
    *out = d;
    return 0;
fail:
    comm_dev_release(d);
    return rc;
}

void comm_dev_release(struct comm_dev *d) {
    if (!d) return;
    if (!d->c.broken) {
        bool failed = false;
        if (d->pinned) failed |= cudaFreeHost(d->pinned) != cudaSuccess;
        if (d->ev_start) failed |= cudaEventDestroy(d->ev_start) != cudaSuccess;
        if (d->ev_done) failed |= cudaEventDestroy(d->ev_done) != cudaSuccess;
        if (d->own_stream) failed |= cudaStreamDestroy(d->own_stream) != cudaSuccess;
        if (failed) (void)cudaGetLastError();
    }
    free(d);
}

void comm_dev_set_stream(struct comm *c, void *cuda_stream) {
    struct comm_dev *d = comm_dev_of(c);
    d->stream = cuda_stream ? (cudaStream_t)cuda_stream : d->own_stream;
}

bool comm_dev_is_device_ptr(const void *p) {
    struct cudaPointerAttributes a;
    memset(&a, 0, sizeof a);
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError(); /* not a pointer CUDA knows: host memory */
        return false;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* Break d with a complete message; abort its NCCL communicator (never destroy it: a
 * collective may still be running on it, and peers may be gone). */
static int dev_break_msg(struct comm_dev *d, tp_err *e, const char *msg) {
    int rc = comm_break(&d->c, e, "%s", msg);
    if (d->nccl) {
        ncclCommAbort(d->nccl);
        d->nccl = NULL;
    }
    return rc;
}

int comm_dev_break(struct comm_dev *d, tp_err *e, const char *fmt, ...) {
    char body[900], msg[sizeof body + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "rank %d on host %s: %s", d->c.topo.rank, d->c.topo.host, body);
    return dev_break_msg(d, e, msg);
}

int comm_dev_cuda_fail(struct comm_dev *d, tp_err *e, cudaError_t err, const char *call, const char *what,
                       const char *file, int line) {
    return comm_dev_break(d, e, "%s failed during %s (%s:%d): %s (%s) — the job will stop", call, what,
                          base_name(file), line, cudaGetErrorString(err), cudaGetErrorName(err));
}

int comm_dev_nccl_fail(struct comm_dev *d, tp_err *e, ncclResult_t r, const char *what) {
    const char *detail = ncclGetLastError(d->nccl);
    return comm_dev_break(d, e, "%s failed: %s%s%s — the job will stop (NCCL_DEBUG=WARN prints NCCL's own log)",
                          what, ncclGetErrorString(r), detail && *detail ? ": " : "", detail ? detail : "");
}

int comm_dev_poll(struct comm_dev *d, comm_dev_probe probe, void *arg, const char *what, tp_err *e) {
    double start = comm_now(), deadline = start + d->c.timeout_s;
    long sleep_ns = COMM_DEV_SLEEP_MIN_NS;
    for (unsigned i = 0;; i++) {
        int st = probe(d, arg, what, e);
        if (st < 0) return st;
        if (st > 0) return 0;
        if (i < COMM_DEV_SPIN) continue;
        double t = comm_now();
        if (t - start < COMM_DEV_YIELD_S) {
            sched_yield();
            continue;
        }
        if (t >= deadline) {
            char missing[640];
            comm_mpi_find_missing(d->mpi, missing, sizeof missing);
            return comm_dev_break(d, e,
                                  "%s did not complete within %g s — a peer rank died or hangs, or this GPU is stuck; "
                                  "the job will stop (%s)",
                                  what, d->c.timeout_s, missing);
        }
        comm_mpi_answer_queries(d->mpi);
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        sleep_ns = TP_MIN(sleep_ns * 2, COMM_DEV_SLEEP_MAX_NS);
    }
}

/* Probe: the work before ev_done has finished, and NCCL reports no asynchronous error. */
static int probe_event(struct comm_dev *d, void *arg, const char *what, tp_err *e) {
    cudaError_t q = cudaEventQuery(d->ev_done);
    if (q == cudaSuccess) return COMM_POLL_DONE;
    if (q != cudaErrorNotReady) return comm_dev_cuda_fail(d, e, q, "cudaEventQuery", what, __FILE__, __LINE__);
    if (d->nccl) {
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(d->nccl, &st);
        if (r != ncclSuccess) return comm_dev_nccl_fail(d, e, r, what);
        if (st != ncclSuccess && st != ncclInProgress) return comm_dev_nccl_fail(d, e, st, what);
    }
    return COMM_POLL_PENDING;
}

int comm_dev_wait(struct comm_dev *d, const char *what, tp_err *e) {
    COMM_CUDA_TRY(d, e, what, cudaEventRecord(d->ev_done, d->stream));
    int rc = comm_dev_poll(d, probe_event, NULL, what, e);
    /* Pending queries are not errors; make sure none is left for the backend's
     * cudaGetLastError checks after its launches. */
    if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
    return rc;
}

/* After a host collective ran on mpi under d's timeout: restore mpi's, and break d when
 * mpi broke (its message already names the rank and host). */
static int host_done(struct comm_dev *d, double saved_timeout, int rc, const tp_err *le, tp_err *e) {
    d->mpi->timeout_s = saved_timeout;
    if (rc == 0) return 0;
    if (rc == TP_ECOMM) return dev_break_msg(d, e, le->msg);
    return tp_errf(e, rc, "%s", le->msg);
}

int comm_dev_host_all_reduce(struct comm_dev *d, float *buf, int64_t n, tp_err *e) {
    tp_err le = {0};
    double saved = d->mpi->timeout_s;
    d->mpi->timeout_s = d->c.timeout_s;
    return host_done(d, saved, comm_all_reduce_sum(d->mpi, buf, n, &le), &le, e);
}

int comm_dev_host_all_gather(struct comm_dev *d, const void *send, void *recv, size_t bytes, tp_err *e) {
    tp_err le = {0};
    double saved = d->mpi->timeout_s;
    d->mpi->timeout_s = d->c.timeout_s;
    return host_done(d, saved, comm_all_gather(d->mpi, send, recv, bytes, &le), &le, e);
}

int comm_dev_host_bcast(struct comm_dev *d, void *buf, size_t bytes, int root, tp_err *e) {
    tp_err le = {0};
    double saved = d->mpi->timeout_s;
    d->mpi->timeout_s = d->c.timeout_s;
    return host_done(d, saved, comm_bcast(d->mpi, buf, bytes, root, &le), &le, e);
}

int comm_dev_host_barrier(struct comm_dev *d, tp_err *e) {
    tp_err le = {0};
    double saved = d->mpi->timeout_s;
    d->mpi->timeout_s = d->c.timeout_s;
    return host_done(d, saved, comm_barrier(d->mpi, &le), &le, e);
}

int comm_dev_barrier(struct comm *c, tp_err *e) { return comm_dev_host_barrier(comm_dev_of(c), e); }

int comm_dev_kinds(const void *send, const void *recv, size_t bytes, bool *device, tp_err *e) {
    bool ds = comm_dev_is_device_ptr(send), dr = comm_dev_is_device_ptr(recv);
    if (ds != dr)
        return tp_errf(e, TP_EINVAL,
                       "all-gather of %zu bytes per rank: the send buffer is %s memory but the receive buffer is %s "
                       "memory; pass two buffers of the same kind",
                       bytes, ds ? "device" : "host", dr ? "device" : "host");
    *device = ds;
    return 0;
}
