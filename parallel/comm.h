/* comm.h - the tensor-parallel communicator: collectives over the ranks of one TP group.
 *
 * One interface, three transports behind an op table (comm_impl.h): MPI for host buffers
 * (CPU ranks, comm_mpi.c), NCCL for device buffers (CUDA ranks, cuda/comm_nccl.c), and a
 * host-staged MPI fallback for device buffers when ranks share a GPU (cuda/comm_staged.c).
 * The forward pass never knows which one it uses.
 * Every collective has a timeout: a peer that died or hangs makes the call return
 * TP_ECOMM with a message naming the rank and host that did not arrive, so the launcher
 * can bring the job down (MPI_Abort) within seconds instead of hanging.
 *
 * Rules shared by every collective (docs/parallel.md, "Communicator and failure handling"):
 * - every rank calls the same collectives in the same order with the same sizes;
 * - one thread at a time uses a communicator (MPI_THREAD_FUNNELED is enough);
 * - after a call returns TP_ECOMM the communicator is broken: every later collective
 *   fails at once with the first message, and the caller is expected to stop the job
 *   with comm_abort (a timed-out operation may still reference its buffers). */
#ifndef TPLLM_COMM_H
#define TPLLM_COMM_H

#include "../kernels/base.h"

/* Where this rank runs. */
struct topo {
    int rank, size;             /* in the TP group (MPI_COMM_WORLD for now) */
    int local_rank, local_size; /* among the ranks on this node (MPI_Comm_split_type SHARED) */
    char host[64];
    int n_cpus;                 /* CPUs in this process's affinity mask */
    int threads;                /* CPU threads this rank should use by default: the node's CPUs
                                   divided evenly among its local ranks (at least 1) */
    int node_cpus;              /* CPUs this node's ranks may run on: the union of their
                                   affinity masks (sysconf(_SC_NPROCESSORS_ONLN) if unknown) */
};

struct comm;

/* Create the MPI communicator over MPI_COMM_WORLD (MPI must be initialised). timeout_s
 * bounds every collective (0: default 60 s; env TPLLM_COMM_TIMEOUT overrides).
 * Collective over MPI_COMM_WORLD. On success *out owns duplicated MPI communicators
 * (free with comm_free before MPI_Finalize); on failure *out is NULL and e says why.
 * Sets MPI_ERRORS_RETURN on its communicators and on MPI_COMM_WORLD (Open MPI reports
 * failed non-blocking collectives there): MPI errors come back as TP_ECOMM with
 * MPI_Error_string's text, and the launcher decides to stop (comm_abort). */
int comm_create_mpi(struct comm **out, double timeout_s, tp_err *e);
/* Release the communicator; NULL is a no-op. Must run before MPI_Finalize, and a device
 * communicator before the MPI communicator it was created from. A broken communicator
 * (after TP_ECOMM) leaks its MPI handles on purpose (a timed-out operation is still
 * pending on them); a broken NCCL communicator was already aborted (ncclCommAbort) when
 * it broke, a healthy one is finalized and destroyed. */
void comm_free(struct comm *c);
const struct topo *comm_topo(const struct comm *c);
static inline int comm_rank(const struct comm *c) { return comm_topo(c)->rank; }
static inline int comm_size(const struct comm *c) { return comm_topo(c)->size; }
/* Host name of `rank` (gathered at creation), or "?" when rank is out of range. */
const char *comm_peer_host(const struct comm *c, int rank);
/* Timeout of later collectives in seconds (> 0), e.g. longer while loading weights. */
void comm_set_timeout(struct comm *c, double seconds);
double comm_get_timeout(const struct comm *c);

/* In-place sum of n floats across ranks (every rank gets the sum). Deterministic: the
 * same inputs give bit-identical results on every rank and every run. */
int comm_all_reduce_sum(struct comm *c, float *buf, int64_t n, tp_err *e);
/* recv[r * bytes .. (r+1) * bytes) = rank r's send, on every rank. send may be
 * recv + rank * bytes (in place); bytes must fit in an int. */
int comm_all_gather(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e);
/* recv[p * bytes .. (p+1) * bytes) = block `rank` of rank p's send (send[rank * bytes ..]),
 * on every rank: each rank sends block q of its send to rank q. send and recv are distinct
 * buffers of size * bytes; bytes must fit in an int. TP_EUNSUPPORTED on transports without
 * it (see comm_has_all_to_all). With a local sum in rank order it makes a deterministic
 * reduce-scatter (runtime/forward.c's row-parallel reduction). */
int comm_all_to_all(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e);
/* Whether comm_all_to_all works on this communicator: the MPI transport (host buffers);
 * not the device transports, whose reductions all-gather instead (NVLink makes the bytes
 * cheap there, and NCCL has no all-to-all of its own). */
bool comm_has_all_to_all(const struct comm *c);
/* Rank root's buf is copied to every rank. */
int comm_bcast(struct comm *c, void *buf, size_t bytes, int root, tp_err *e);
int comm_barrier(struct comm *c, tp_err *e);
/* Logical OR / MAX of a status across ranks: every rank learns whether any failed, so
 * that all ranks leave a phase (loading, planning) together with the same outcome.
 * Returns 0 when every rank passed 0 (and sets *first_bad_rank to -1); otherwise the
 * status of the lowest failing rank, on every rank, with *first_bad_rank set to it.
 * A rank whose e is empty gets "rank R (host H) failed: <status name>" in e; a rank that
 * failed itself keeps its own message. TP_ECOMM when the exchange itself fails. */
int comm_any_error(struct comm *c, int local_status, int *first_bad_rank, tp_err *e);

/* Device communicators (parallel/cuda; without -DTPLLM_CUDA=ON each create function
 * returns TP_EUNSUPPORTED "built without CUDA/NCCL").
 *
 * Each is created from an MPI communicator `mpi` (comm_create_mpi) over the same ranks,
 * which it borrows for its whole life (free the device communicator first): its topology
 * and host names, the exchanges on host memory, and the diagnosis of a missing peer.
 * `device` is this rank's CUDA ordinal (the backend's); timeout_s bounds every collective
 * and the creation (0: mpi's timeout; TPLLM_COMM_TIMEOUT wins, as for MPI). Every create
 * function is collective over mpi's ranks and every rank returns the same status; on
 * failure *out is NULL and e says why (TP_ECOMM: creation failed or timed out, naming
 * the rank and host).
 *
 * Buffers: each collective accepts device memory (cudaMalloc, managed) or host memory
 * (anything else), decided per call with cudaPointerGetAttributes; every rank must pass
 * the same kind. Device buffers go through NCCL (or the staging copies), host buffers
 * through mpi, so the engine's host exchanges and the forward pass's device all-reduces
 * share one communicator. Device collectives are queued on the communicator's stream
 * (comm_set_stream) after the work already queued there, and return when they have
 * completed, polling with the MPI transport's backoff and failing with TP_ECOMM at the
 * timeout or on an NCCL error (the NCCL communicator is then aborted). comm_barrier and
 * comm_any_error run on mpi. The all-reduce gives the same bits on every rank (NCCL's
 * ring and tree reduce once and broadcast the result) and repeats them run to run for a
 * fixed NCCL version, topology and NCCL_ALGO/NCCL_PROTO. */

/* NCCL over mpi's ranks: rank 0's ncclGetUniqueId is broadcast over mpi, then
 * ncclCommInitRankConfig runs non-blocking (config.blocking = 0), polled until ready or
 * the timeout. TP_EUNSUPPORTED when two ranks use one GPU (NCCL refuses it; see
 * comm_create_device). */
int comm_create_nccl(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e);
/* Host-staged MPI for device buffers: each collective copies the device buffer to a
 * pinned host buffer, runs mpi's collective on it and copies the result back. Slower than
 * NCCL, but works for any placement of ranks on GPUs. */
int comm_create_staged(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e);
/* The device communicator to use: NCCL, unless two ranks share a GPU (same UUID, or the
 * same PCI bus id on the same host, gathered over mpi) or some rank sets TPLLM_NCCL=0;
 * then host-staged, with a warning on rank 0's stderr naming the ranks and the GPU. */
int comm_create_device(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e);
/* The CUDA stream (cudaStream_t) device collectives are queued on. NULL: the stream the
 * communicator created for itself, a blocking stream, so ordered after work on the legacy
 * default stream (plain cudaMemcpy, kernels launched without a stream) but not after work
 * on non-blocking streams. Give the backend's stream so that a collective follows the
 * kernels that produced its buffer without a device-wide synchronisation; otherwise the
 * caller must make the buffer ready first. The stream must belong to the communicator's
 * device and outlive its use here. No effect on MPI communicators. */
void comm_set_stream(struct comm *c, void *cuda_stream);
/* The transport in one phrase: "mpi", "nccl 2.28.9", "mpi host-staged (GPU shared)". */
void comm_describe(const struct comm *c, char *buf, size_t size);

/* Time spent inside collectives since creation (seconds) and the number of calls. */
struct comm_stats { double seconds; int64_t calls; int64_t bytes; };
struct comm_stats comm_get_stats(const struct comm *c);
void comm_reset_stats(struct comm *c);

/* Stop the whole job: print "tpllm: rank R (host H) failed: msg" to stderr and call
 * MPI_Abort(code). The ONE place that ends the job from inside the library, meant for
 * launcher/ (never call it from kernels or runtime code: return a status instead).
 * c may be NULL (rank and host are then read from MPI_COMM_WORLD and the OS); without
 * MPI initialised it exits the process with `code`. Does not return. */
void comm_abort(struct comm *c, int code, const char *msg) __attribute__((noreturn));

/* Topology helpers (parallel/topo.c), without MPI. */
/* CPUs in this process's affinity mask; sysconf(_SC_NPROCESSORS_ONLN) if it cannot be read. */
int topo_affinity_cpus(void);
/* Default threads per rank: node_cpus / local_size, at least 1 and at most own_cpus
 * (a rank bound to fewer CPUs cannot use more threads). */
int topo_default_threads(int node_cpus, int local_size, int own_cpus);
/* One line for the startup report: "rank 1/4 on host h (local 1/2): 2 CPUs, 1 thread". */
void topo_describe(const struct topo *t, char *buf, size_t size);

#endif
