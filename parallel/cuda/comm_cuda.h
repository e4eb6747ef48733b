/* comm_cuda.h - internals shared by the device transports of comm.h (comm_nccl.c,
 * comm_staged.c, comm_device.c): their state, the timed wait on the device, the
 * hand-off of host buffers to the MPI communicator, and the failure helpers. Compiled
 * only with CUDA (CMake builds parallel/cuda/ when TPLLM_HAVE_CUDA). */
#ifndef TPLLM_COMM_CUDA_H
#define TPLLM_COMM_CUDA_H

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "../comm_impl.h"

/* A device communicator: the common head, then what both device transports need. */
struct comm_dev {
    struct comm c;
    struct comm *mpi;        /* borrowed MPI communicator over the same ranks */
    int device;              /* CUDA ordinal */
    cudaStream_t own_stream; /* created here (blocking); the default stream of the collectives */
    cudaStream_t stream;     /* where collectives are queued: own_stream or comm_set_stream's */
    cudaEvent_t ev_start;    /* recorded before a collective (timing) */
    cudaEvent_t ev_done;     /* recorded after it: polled for completion */
    ncclComm_t nccl;         /* NCCL transport; NULL for staged, and after an abort */
    int nccl_version;        /* ncclGetVersion's code */
    unsigned char *pinned;   /* staged transport: cudaHostAlloc'd staging buffer */
    size_t pinned_bytes;
    char label[48];          /* staged transport: why it was chosen, for comm_describe */
};

static inline struct comm_dev *comm_dev_of(struct comm *c) { return (struct comm_dev *)c; }

/* 0 when mpi is a healthy MPI communicator (what device transports build on). */
int comm_dev_check_mpi(const struct comm *mpi, const char *fn, tp_err *e);
/* The local half of creation: validate mpi, copy its topology, resolve the timeout, select
 * the device, create the stream and events. No collective; on failure *out is NULL. */
int comm_dev_alloc(struct comm_dev **out, const struct comm_ops *ops, struct comm *mpi, int device,
                   double timeout_s, const char *fn, tp_err *e);
/* Release what comm_dev_alloc and the transports made (CUDA resources are leaked on
 * purpose when d is broken: the device may be hung), then d. */
void comm_dev_release(struct comm_dev *d);
/* ops->set_stream of both transports. */
void comm_dev_set_stream(struct comm *c, void *cuda_stream);
/* ops->barrier of both transports: a host barrier on mpi. */
int comm_dev_barrier(struct comm *c, tp_err *e);

/* Whether p is device memory (cudaMemoryTypeDevice or Managed); host otherwise. */
bool comm_dev_is_device_ptr(const void *p);
/* All-gather buffers: both device (*device = true) or both host; TP_EINVAL if mixed. */
int comm_dev_kinds(const void *send, const void *recv, size_t bytes, bool *device, tp_err *e);

/* Break d (comm_break's message, "rank R on host H: ..."), aborting its NCCL communicator. */
int comm_dev_break(struct comm_dev *d, tp_err *e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A CUDA runtime call failed during `what`: break d with the call, file:line and error. */
int comm_dev_cuda_fail(struct comm_dev *d, tp_err *e, cudaError_t err, const char *call, const char *what,
                       const char *file, int line);
/* An NCCL call or NCCL's asynchronous state reported r during `what`: break d with
 * ncclGetErrorString and ncclGetLastError. */
int comm_dev_nccl_fail(struct comm_dev *d, tp_err *e, ncclResult_t r, const char *what);
#define COMM_CUDA_TRY(d, e, what, call)                                                                     \
    do {                                                                                                    \
        cudaError_t err_ = (call);                                                                          \
        if (err_ != cudaSuccess) return comm_dev_cuda_fail((d), (e), err_, #call, (what), __FILE__, __LINE__); \
    } while (0)

/* What a poll step found: done, not yet, or (a negative status) failed with d broken. */
enum { COMM_POLL_PENDING = 0, COMM_POLL_DONE = 1 };
typedef int (*comm_dev_probe)(struct comm_dev *d, void *arg, const char *what, tp_err *e);
/* Call probe with the MPI transport's backoff (spin, yield, sleep 10 us..1 ms; peers'
 * queries answered while sleeping) until it is done or fails, or until d's timeout: then
 * the peers are asked which collective they are in and d breaks with "rank R on host H:
 * <what> did not complete within T s - a peer rank died or hangs; the job will stop (...)". */
int comm_dev_poll(struct comm_dev *d, comm_dev_probe probe, void *arg, const char *what, tp_err *e);
/* Record ev_done on d->stream and poll it (plus NCCL's asynchronous error, if any). */
int comm_dev_wait(struct comm_dev *d, const char *what, tp_err *e);

/* Host buffers: run the collective on mpi under d's timeout. A failure of mpi's exchange
 * breaks d too; argument errors pass through. */
int comm_dev_host_all_reduce(struct comm_dev *d, float *buf, int64_t n, tp_err *e);
int comm_dev_host_all_gather(struct comm_dev *d, const void *send, void *recv, size_t bytes, tp_err *e);
int comm_dev_host_bcast(struct comm_dev *d, void *buf, size_t bytes, int root, tp_err *e);
int comm_dev_host_barrier(struct comm_dev *d, tp_err *e);

/* Rank pairs that would put two NCCL ranks on one GPU, gathered over mpi (collective;
 * the same answer on every rank). */
struct comm_gpu_share {
    int n_shared;  /* ranks whose GPU an earlier rank uses too (0: every GPU is its rank's own) */
    int r1, r2;    /* the first such pair */
    char bus[32];  /* their GPU's PCI bus id */
    char host[COMM_HOST_LEN];
    int no_nccl;   /* ranks that set TPLLM_NCCL=0 */
};
int comm_dev_find_shared(struct comm *mpi, int device, struct comm_gpu_share *out, tp_err *e);

/* The transports' creation after the shared-GPU check (comm_nccl.c, comm_staged.c). */
int comm_nccl_create(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e);
int comm_staged_create(struct comm **out, struct comm *mpi, int device, double timeout_s, const char *label,
                       tp_err *e);

#endif
