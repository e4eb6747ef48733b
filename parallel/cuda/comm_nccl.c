/* comm_nccl.c - the NCCL transport of comm.h: collectives on device buffers over one NCCL
 * communicator per TP group (the ranks of the MPI communicator it is created from).
 *
 * Creation: rank 0's ncclGetUniqueId travels to every rank by an MPI broadcast, then
 * ncclCommInitRankConfig runs with config.blocking = 0 and is polled through
 * ncclCommGetAsyncError until it reports ncclSuccess, an error, or the timeout (then the
 * communicator is aborted and the message names the rank, the host and the missing
 * peers). Every rank leaves creation with the same status (comm_any_error over MPI).
 *
 * A collective: count it on the MPI communicator (so a timed-out peer can be told which
 * one we are in), record a start event, call NCCL on the communicator's stream; with a
 * non-blocking communicator NCCL may answer ncclInProgress, meaning it is still queueing
 * the work: poll ncclCommGetAsyncError until ncclSuccess before touching the stream.
 * Then record the done event and poll it (comm_dev_wait), checking NCCL's asynchronous
 * error on the way. The time counted in the stats is the device time between the events:
 * the collective itself (waiting for peers included), not the kernels queued before it.
 *
 * Failure: any NCCL error, CUDA error or timeout aborts the NCCL communicator
 * (ncclCommAbort, never ncclCommDestroy) and breaks the comm with TP_ECOMM. A healthy
 * communicator is finalized (ncclCommFinalize, polled with the timeout) and destroyed. */
#include "comm_cuda.h"

#include <stdio.h>
#include <string.h>

static const struct comm_ops nccl_ops;

/* Probe: the communicator's background work (creation, queueing, finalization) is done. */
static int probe_ready(struct comm_dev *d, void *arg, const char *what, tp_err *e) {
    ncclResult_t st = ncclInProgress, r = ncclCommGetAsyncError(d->nccl, &st);
    if (r != ncclSuccess) return comm_dev_nccl_fail(d, e, r, what);
    if (st == ncclInProgress) return COMM_POLL_PENDING;
    if (st != ncclSuccess) return comm_dev_nccl_fail(d, e, st, what);
    return COMM_POLL_DONE;
}

/* A call on the non-blocking communicator returned r: ncclInProgress means NCCL finishes
 * it in the background, and nothing else may touch the communicator or its stream
 * before it has. */
static int nccl_issued(struct comm_dev *d, ncclResult_t r, const char *what, tp_err *e) {
    if (r == ncclSuccess) return 0;
    if (r != ncclInProgress) return comm_dev_nccl_fail(d, e, r, what);
    return comm_dev_poll(d, probe_ready, NULL, what, e);
}

static int nccl_begin(struct comm_dev *d, const char *what, tp_err *e) {
    comm_mpi_note_collective(d->mpi);
    COMM_CUDA_TRY(d, e, what, cudaEventRecord(d->ev_start, d->stream));
    return 0;
}

/* After the NCCL call: let it be queued, wait for it, and time it on the device. */
static int nccl_end(struct comm_dev *d, ncclResult_t r, const char *what, tp_err *e) {
    int rc = nccl_issued(d, r, what, e);
    if (rc == 0) rc = comm_dev_wait(d, what, e);
    if (rc) return rc;
    float ms = 0;
    if (cudaEventElapsedTime(&ms, d->ev_start, d->ev_done) == cudaSuccess) d->c.op_seconds = 1e-3 * (double)ms;
    else (void)cudaGetLastError(); /* no timing: comm.c counts the wall time */
    return 0;
}

static int nccl_all_reduce_sum(struct comm *c, float *buf, int64_t n, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (n == 0) return 0;
    if (!comm_dev_is_device_ptr(buf)) return comm_dev_host_all_reduce(d, buf, n, e);
    char what[96];
    snprintf(what, sizeof what, "NCCL all-reduce of %lld floats", (long long)n);
    int rc = nccl_begin(d, what, e);
    if (rc) return rc;
    return nccl_end(d, ncclAllReduce(buf, buf, (size_t)n, ncclFloat32, ncclSum, d->nccl, d->stream), what, e);
}

static int nccl_all_gather(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (bytes == 0) return 0;
    bool device = false;
    int rc = comm_dev_kinds(send, recv, bytes, &device, e);
    if (rc) return rc;
    if (!device) return comm_dev_host_all_gather(d, send, recv, bytes, e);
    char what[96];
    snprintf(what, sizeof what, "NCCL all-gather of %zu bytes per rank", bytes);
    if ((rc = nccl_begin(d, what, e))) return rc;
    /* In place when send == recv + rank * bytes, as comm.h allows and NCCL expects. */
    return nccl_end(d, ncclAllGather(send, recv, bytes, ncclUint8, d->nccl, d->stream), what, e);
}

static int nccl_bcast(struct comm *c, void *buf, size_t bytes, int root, tp_err *e) {
    struct comm_dev *d = comm_dev_of(c);
    if (bytes == 0) return 0;
    if (!comm_dev_is_device_ptr(buf)) return comm_dev_host_bcast(d, buf, bytes, root, e);
    char what[96];
    snprintf(what, sizeof what, "NCCL broadcast of %zu bytes from rank %d", bytes, root);
    int rc = nccl_begin(d, what, e);
    if (rc) return rc;
    return nccl_end(d, ncclBroadcast(buf, buf, bytes, ncclUint8, root, d->nccl, d->stream), what, e);
}

static void nccl_describe(const struct comm *c, char *buf, size_t size) {
    int v = ((const struct comm_dev *)c)->nccl_version;
    /* NCCL_VERSION(X,Y,Z): X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z from 2.9 on. */
    if (v >= 10000) snprintf(buf, size, "nccl %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    else snprintf(buf, size, "nccl %d.%d.%d", v / 1000, v / 100 % 10, v % 100);
}

static void nccl_destroy(struct comm *c) {
    struct comm_dev *d = comm_dev_of(c);
    if (d->nccl && !c->broken) {
        /* Flush and quiesce, bounded by the timeout; an error or timeout there aborts it
         * (comm_dev_break) instead. */
        tp_err le = {0};
        if (nccl_issued(d, ncclCommFinalize(d->nccl), "NCCL communicator finalization", &le) == 0) {
            ncclCommDestroy(d->nccl);
            d->nccl = NULL;
        } else {
            fprintf(stderr, "tpllm: warning: %s\n", le.msg);
        }
    }
    if (d->nccl) ncclCommAbort(d->nccl); /* defensive: breaking already aborted it */
    d->nccl = NULL;
    comm_dev_release(d);
}

static const struct comm_ops nccl_ops = {
    .kind = "nccl",
    .all_reduce_sum = nccl_all_reduce_sum,
    .all_gather = nccl_all_gather,
    .bcast = nccl_bcast,
    .barrier = comm_dev_barrier,
    .set_stream = comm_dev_set_stream,
    .describe = nccl_describe,
    .destroy = nccl_destroy,
};

/* This rank's half of ncclCommInitRankConfig, non-blocking, polled to the timeout. */
static int nccl_init(struct comm_dev *d, const ncclUniqueId *id, tp_err *e) {
    char what[128];
    snprintf(what, sizeof what, "NCCL communicator creation over %d ranks (CUDA device %d)", d->c.topo.size,
             d->device);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    comm_mpi_note_collective(d->mpi);
    COMM_CUDA_TRY(d, e, what, cudaSetDevice(d->device));
    ncclResult_t r = ncclCommInitRankConfig(&d->nccl, d->c.topo.size, *id, d->c.topo.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) return comm_dev_nccl_fail(d, e, r, what);
    if (!d->nccl) return comm_dev_break(d, e, "%s returned no communicator — the job will stop", what);
    return comm_dev_poll(d, probe_ready, NULL, what, e);
}

int comm_nccl_create(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    *out = NULL;
    struct comm_dev *d = NULL;
    int rc = comm_dev_check_mpi(mpi, "comm_create_nccl", e);
    if (rc) return rc;
    rc = comm_dev_alloc(&d, &nccl_ops, mpi, device, timeout_s, "comm_create_nccl", e);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (rc == 0) {
        ncclResult_t r = ncclGetVersion(&d->nccl_version);
        if (r == ncclSuccess && mpi->topo.rank == 0) r = ncclGetUniqueId(&id);
        if (r != ncclSuccess)
            rc = tp_errf(e, TP_ECOMM,
                         "comm_create_nccl: rank %d on host %s: %s failed: %s: %s; check that NCCL can find a network "
                         "interface (NCCL_SOCKET_IFNAME) and run with NCCL_DEBUG=WARN for its reason",
                         mpi->topo.rank, mpi->topo.host, mpi->topo.rank == 0 ? "ncclGetUniqueId" : "ncclGetVersion",
                         ncclGetErrorString(r), ncclGetLastError(NULL));
    }
    if ((rc = comm_any_error(mpi, rc, NULL, e))) goto fail;
    if ((rc = comm_bcast(mpi, &id, sizeof id, 0, e))) goto fail;
    rc = nccl_init(d, &id, e);
    if ((rc = comm_any_error(mpi, rc, NULL, e))) goto fail;
    comm_reset_stats(&d->c);
    *out = &d->c;
    return 0;
fail:
    /* Some rank failed: peers may hold half-made communicators, so abort, never destroy. */
    if (d && d->nccl) {
        ncclCommAbort(d->nccl);
        d->nccl = NULL;
    }
    comm_dev_release(d);
    return rc;
}

int comm_create_nccl(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    if (!out) return tp_errf(e, TP_EINVAL, "comm_create_nccl: NULL output pointer");
    *out = NULL;
    int rc = comm_dev_check_mpi(mpi, "comm_create_nccl", e);
    if (rc) return rc;
    struct comm_gpu_share sh;
    if ((rc = comm_dev_find_shared(mpi, device, &sh, e))) return rc;
    if (sh.n_shared)
        return tp_errf(e, TP_EUNSUPPORTED,
                       "comm_create_nccl: ranks %d and %d share GPU %s on host %s: NCCL cannot run two ranks on one "
                       "GPU; give each rank its own GPU, or use comm_create_device (host-staged fallback)",
                       sh.r1, sh.r2, sh.bus, sh.host);
    return comm_nccl_create(out, mpi, device, timeout_s, e);
}
