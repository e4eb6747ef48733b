/* comm_impl.h - inside the communicator: the state every transport shares and the op table
 * each transport fills (MPI: comm_mpi.c; NCCL and host-staged: cuda/). Only parallel/
 * includes this; everyone else sees struct comm as opaque through comm.h.
 *
 * comm.c owns what is common to every transport: argument checks, the broken state, the
 * stats, timeouts, topology accessors and comm_any_error. A transport's ops see only
 * valid arguments on a communicator that is not broken; they return 0 or a negative
 * status, and break the communicator (comm_break) on any failure of the exchange. */
#ifndef TPLLM_COMM_IMPL_H
#define TPLLM_COMM_IMPL_H

#include "comm.h"

#define COMM_HOST_LEN 64
#define COMM_DEFAULT_TIMEOUT_S 60.0

struct comm_ops {
    const char *kind; /* "mpi", "nccl", "staged" */
    /* The collectives of comm.h, after comm.c's checks. An op that measures its own time
     * (device transports time the collective itself, not the queued work before it) sets
     * c->op_seconds; otherwise comm.c counts the wall time of the call. */
    int (*all_reduce_sum)(struct comm *c, float *buf, int64_t n, tp_err *e);
    int (*all_gather)(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e);
    /* NULL where the transport has none (comm_has_all_to_all says so). */
    int (*all_to_all)(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e);
    int (*bcast)(struct comm *c, void *buf, size_t bytes, int root, tp_err *e);
    int (*barrier)(struct comm *c, tp_err *e);
    /* NULL: streams do not apply (host transport) and comm_set_stream does nothing. */
    void (*set_stream)(struct comm *c, void *cuda_stream);
    void (*describe)(const struct comm *c, char *buf, size_t size);
    /* Release the transport's resources and c itself; a broken c is aborted, not
     * destroyed (its handles may still be in use by a timed-out operation). */
    void (*destroy)(struct comm *c);
};

/* The head of every transport's state (each transport's struct starts with it). */
struct comm {
    const struct comm_ops *ops;
    struct topo topo;
    char (*hosts)[COMM_HOST_LEN]; /* [size]: host of every rank; owned by the MPI transport,
                                     borrowed by device transports from their MPI comm */
    double timeout_s;             /* deadline of one collective */
    bool broken;                  /* a collective failed: refuse every later one */
    tp_err broken_err;            /* that failure's message, repeated to later callers */
    struct comm_stats stats;
    double op_seconds;            /* set by an op that timed itself (< 0: not set) */
};

/* Monotonic clock in seconds. */
double comm_now(void);
/* Record the failure that breaks c (the first one wins), copy it into e, return TP_ECOMM. */
int comm_break(struct comm *c, tp_err *e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Timeout of every collective: arg (> 0), else 60 s; the environment variable
 * TPLLM_COMM_TIMEOUT wins. TP_EINVAL with the fix for a bad value. */
int comm_resolve_timeout(double arg, double *out, tp_err *e);

/* MPI transport internals that device transports use, so that a peer missing from a
 * device collective is named the same way as one missing from an MPI collective. */
bool comm_is_mpi(const struct comm *c);
/* Answer peers' "which collective are you in?" (call while polling). */
void comm_mpi_answer_queries(struct comm *c);
/* After a timeout: ask every peer which collective it is in and describe who is missing. */
void comm_mpi_find_missing(struct comm *c, char *out, size_t size);
/* Count a collective that runs on another transport over the same ranks (every rank
 * counts the same ones), so that the answers above compare like with like. */
void comm_mpi_note_collective(struct comm *c);

#endif
