/* comm_mpi.c - the MPI transport of comm.h: timed non-blocking collectives on host
 * buffers, node topology, and the fail-fast path (comm_abort). comm.c checks arguments
 * and keeps the stats; the ops here run the exchange.
 *
 * Every collective is posted non-blocking (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast,
 * MPI_Ibarrier) and completed by polling MPI_Test with a backoff: a few back-to-back
 * tests, then tests between sched_yield() for up to 1 ms, then nanosleep() from 10 us
 * doubling to 1 ms. Spinning alone would starve peers when ranks outnumber cores
 * (mpirun --oversubscribe); sleeping alone would add latency to every small reduce.
 *
 * When the deadline passes, the rank asks every peer, on a second communicator kept for
 * this, which collective it is waiting in (ranks answer while they poll), and names
 * the peers that did not answer or are behind: those died or hang. The communicator is
 * then broken for good; the launcher calls comm_abort, which ends the job.
 *
 * Determinism: the all-reduce is MPI_SUM on MPI_FLOAT, in place. Open MPI's libnbc
 * (the provider of MPI_Iallreduce) always uses its binomial algorithm for in-place
 * calls: a fixed reduction tree to rank 0, then a broadcast of rank 0's result. So every
 * rank gets the same bits, and a run repeats them for a given number of ranks and
 * message size. tests/perf/comm_stress.c checks both. */
#include "comm_impl.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define COMM_TAG_QUERY 7101                     /* "which collective are you in?" (int64 seq) */
#define COMM_TAG_REPLY 7102                     /* the answer (int64 seq) */
#define COMM_SPIN_TESTS 64u                     /* back-to-back MPI_Test calls before yielding */
#define COMM_YIELD_S 1e-3                       /* then test + sched_yield for this long */
#define COMM_YIELD_BYTES_PER_S 2e8              /* ... plus the bytes received at this rate */
#define COMM_SLEEP_MIN_NS 10000L                /* then sleep, doubling from 10 us ... */
#define COMM_SLEEP_MAX_NS 1000000L              /* ... to 1 ms */
#define COMM_CHUNK_BYTES ((size_t)1 << 30)      /* larger calls are split: MPI counts are int */

/* The MPI transport's state; starts with the common head (comm_impl.h). */
struct comm_mpi {
    struct comm c;
    MPI_Comm world; /* dup of MPI_COMM_WORLD: every collective */
    MPI_Comm ctl;   /* second dup: timeout queries only, never a collective */
    MPI_Comm node;  /* the ranks on this host (MPI_COMM_TYPE_SHARED) */
    int64_t seq;    /* MPI collectives posted; the same on every rank */
};

static const struct comm_ops comm_mpi_ops;

static struct comm_mpi *mpi_of(struct comm *c) { return (struct comm_mpi *)c; }

static const char *comm_host(const struct comm *c) { return c->topo.host; }

/* An MPI call returned rc (the communicators use MPI_ERRORS_RETURN). */
static int comm_mpi_fail(struct comm *c, tp_err *e, int rc, const char *call, const char *what, const char *file,
                         int line) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error code %d", rc);
    const char *slash = strrchr(file, '/');
    file = slash ? slash + 1 : file;
    return comm_break(c, e, "rank %d on host %s: %s failed during %s (%s:%d): %s; the job will stop", c->topo.rank,
                      comm_host(c), call, what, file, line, s);
}

#define COMM_TRY(c, e, what, name, call)                                                                      \
    do {                                                                                                      \
        int rc_ = (call);                                                                                     \
        if (rc_ != MPI_SUCCESS) return comm_mpi_fail((c), (e), rc_, (name), (what), __FILE__, __LINE__);   \
    } while (0)

/* Answer every pending "which collective are you in?" from peers that timed out. */
static void comm_answer_queries(struct comm *c) {
    struct comm_mpi *m = mpi_of(c);
    if (m->ctl == MPI_COMM_NULL) return;
    for (;;) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, COMM_TAG_QUERY, m->ctl, &flag, &st) != MPI_SUCCESS || !flag) return;
        int64_t q, mine = m->seq;
        if (MPI_Recv(&q, 1, MPI_INT64_T, st.MPI_SOURCE, COMM_TAG_QUERY, m->ctl, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return;
        if (MPI_Send(&mine, 1, MPI_INT64_T, st.MPI_SOURCE, COMM_TAG_REPLY, m->ctl) != MPI_SUCCESS) return;
    }
}

/* Append "rank r on host h" lists to out. */
static size_t comm_list(const struct comm *c, char *out, size_t size, size_t at, const char *label,
                        const signed char *state, int want) {
    int count = 0;
    for (int r = 0; r < c->topo.size; r++)
        if (state[r] == want) count++;
    if (count == 0 || at >= size) return at;
    at += (size_t)snprintf(out + at, size - at, "%s%s:", at ? "; " : "", label);
    int shown = 0;
    for (int r = 0; r < c->topo.size && at < size; r++) {
        if (state[r] != want) continue;
        if (shown == 16) {
            at += (size_t)snprintf(out + at, size - at, " and %d more", count - shown);
            break;
        }
        at += (size_t)snprintf(out + at, size - at, "%s rank %d on host %s", shown ? "," : "", r, c->hosts[r]);
        shown++;
    }
    return TP_MIN(at, size);
}

/* After a timeout: ask every peer which collective it is in, for up to a grace period
 * (answering their questions meanwhile), and describe who is missing. */
static void comm_find_missing(struct comm *c, char *out, size_t size) {
    struct comm_mpi *m = mpi_of(c);
    int n = c->topo.size, me = c->topo.rank;
    out[0] = '\0';
    if (m->ctl == MPI_COMM_NULL || !c->hosts) {
        snprintf(out, size, "expected ranks 0-%d; which one is missing is unknown this early", n - 1);
        return;
    }
    enum { ST_NO_ANSWER, ST_BEHIND, ST_WAITING, ST_AHEAD, ST_SELF };
    int64_t *seen = calloc((size_t)n, sizeof *seen);
    MPI_Request *rreq = malloc((size_t)n * sizeof *rreq), *sreq = malloc((size_t)n * sizeof *sreq);
    signed char *state = calloc((size_t)n, 1);
    if (!seen || !rreq || !sreq || !state) {
        snprintf(out, size, "expected ranks 0-%d; out of memory while asking which one is missing", n - 1);
        goto done;
    }
    int64_t q = m->seq;
    for (int r = 0; r < n; r++) {
        rreq[r] = sreq[r] = MPI_REQUEST_NULL;
        if (r == me) continue;
        if (MPI_Irecv(&seen[r], 1, MPI_INT64_T, r, COMM_TAG_REPLY, m->ctl, &rreq[r]) != MPI_SUCCESS)
            rreq[r] = MPI_REQUEST_NULL;
        else if (MPI_Isend(&q, 1, MPI_INT64_T, r, COMM_TAG_QUERY, m->ctl, &sreq[r]) != MPI_SUCCESS)
            sreq[r] = MPI_REQUEST_NULL;
    }
    /* Waiting peers answer within a sleep quantum (1 ms); the grace only has to cover
     * ranks that are descheduled on an oversubscribed node. */
    double grace = TP_MIN(1.0, TP_MAX(0.25, c->timeout_s / 8)), deadline = comm_now() + grace;
    for (;;) {
        comm_answer_queries(c);
        int pending = 0;
        for (int r = 0; r < n; r++) {
            if (rreq[r] == MPI_REQUEST_NULL) continue;
            int done = 0;
            if (MPI_Test(&rreq[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) continue;
            if (done)
                state[r] = seen[r] < q ? ST_BEHIND : seen[r] == q ? ST_WAITING : ST_AHEAD;
            else
                pending++;
        }
        if (!pending || comm_now() >= deadline) break;
        struct timespec ts = {0, COMM_SLEEP_MAX_NS};
        nanosleep(&ts, NULL);
    }
    for (int r = 0; r < n; r++) {
        if (rreq[r] != MPI_REQUEST_NULL) {
            MPI_Cancel(&rreq[r]);
            MPI_Request_free(&rreq[r]);
        }
        if (sreq[r] != MPI_REQUEST_NULL) MPI_Request_free(&sreq[r]);
    }
    state[me] = ST_SELF;
    size_t at = comm_list(c, out, size, 0, "not arrived (no answer)", state, ST_NO_ANSWER);
    at = comm_list(c, out, size, at, "not arrived (still in an earlier collective)", state, ST_BEHIND);
    at = comm_list(c, out, size, at, "waiting here too", state, ST_WAITING);
    comm_list(c, out, size, at, "already past it", state, ST_AHEAD);
done:
    free(seen);
    free(rreq);
    free(sreq);
    free(state);
}

/* Complete req by polling with backoff, or fail with TP_ECOMM at the deadline. `bytes`
 * (what this rank receives) lengthens the phase without sleeps: Open MPI moves a large
 * message in fragments, each only as MPI_Test progresses it, so a 1 ms sleep between tests
 * would cap a 5 MB all-gather at a few hundred fragments per second (it took 72 ms instead
 * of a few). The phase covers the transfer at COMM_YIELD_BYTES_PER_S. */
static int comm_wait(struct comm *c, MPI_Request *req, const char *what, size_t bytes, tp_err *e) {
    double start = comm_now(), deadline = start + c->timeout_s;
    const double yield_s = COMM_YIELD_S + (double)bytes / COMM_YIELD_BYTES_PER_S;
    long sleep_ns = COMM_SLEEP_MIN_NS;
    for (unsigned i = 0;; i++) {
        int done = 0;
        COMM_TRY(c, e, what, "MPI_Test", MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return 0;
        if (i < COMM_SPIN_TESTS) continue;
        double t = comm_now();
        if (t - start < yield_s) {
            sched_yield();
            continue;
        }
        if (t >= deadline) {
            char missing[640];
            comm_find_missing(c, missing, sizeof missing);
            return comm_break(c, e,
                              "rank %d on host %s: %s did not complete within %g s — a peer rank died or hangs; "
                              "the job will stop (%s)",
                              c->topo.rank, comm_host(c), what, c->timeout_s, missing);
        }
        comm_answer_queries(c);
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        sleep_ns = TP_MIN(sleep_ns * 2, COMM_SLEEP_MAX_NS);
    }
}

static int mpi_all_reduce_sum(struct comm *c, float *buf, int64_t n, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    char what[96];
    snprintf(what, sizeof what, "all-reduce of %lld floats", (long long)n);
    const int64_t chunk = (int64_t)(COMM_CHUNK_BYTES / sizeof(float));
    for (int64_t off = 0; off < n && c->topo.size > 1; off += chunk) {
        MPI_Request req;
        int count = (int)TP_MIN(n - off, chunk), rc;
        m->seq++;
        COMM_TRY(c, e, what, "MPI_Iallreduce",
                 MPI_Iallreduce(MPI_IN_PLACE, buf + off, count, MPI_FLOAT, MPI_SUM, m->world, &req));
        if ((rc = comm_wait(c, &req, what, 2 * (size_t)count * sizeof(float), e))) return rc;
    }
    return 0;
}

static int mpi_all_gather(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    if (bytes > INT_MAX)
        return tp_errf(e, TP_EINVAL, "all-gather of %zu bytes per rank: more than MPI's int count; split the call",
                       bytes);
    if (bytes == 0) return 0;
    char what[96];
    snprintf(what, sizeof what, "all-gather of %zu bytes per rank", bytes);
    char *mine = (char *)recv + (size_t)c->topo.rank * bytes;
    const void *sbuf = send == mine ? MPI_IN_PLACE : send;
    if (c->topo.size == 1) {
        if (sbuf != MPI_IN_PLACE) memmove(recv, send, bytes);
        return 0;
    }
    MPI_Request req;
    m->seq++;
    COMM_TRY(c, e, what, "MPI_Iallgather",
             MPI_Iallgather(sbuf, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->world, &req));
    return comm_wait(c, &req, what, bytes * (size_t)(c->topo.size - 1), e);
}

static int mpi_all_to_all(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    if (bytes > INT_MAX)
        return tp_errf(e, TP_EINVAL, "all-to-all of %zu bytes per rank pair: more than MPI's int count; split the call",
                       bytes);
    if (bytes == 0) return 0;
    if (c->topo.size == 1) {
        memmove(recv, send, bytes);
        return 0;
    }
    char what[96];
    snprintf(what, sizeof what, "all-to-all of %zu bytes per rank pair", bytes);
    MPI_Request req;
    m->seq++;
    COMM_TRY(c, e, what, "MPI_Ialltoall",
             MPI_Ialltoall(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->world, &req));
    return comm_wait(c, &req, what, bytes * (size_t)(c->topo.size - 1), e);
}

static int mpi_bcast(struct comm *c, void *buf, size_t bytes, int root, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    char what[96];
    snprintf(what, sizeof what, "broadcast of %zu bytes from rank %d", bytes, root);
    for (size_t off = 0; off < bytes && c->topo.size > 1; off += COMM_CHUNK_BYTES) {
        MPI_Request req;
        int count = (int)TP_MIN(bytes - off, COMM_CHUNK_BYTES), rc;
        m->seq++;
        COMM_TRY(c, e, what, "MPI_Ibcast", MPI_Ibcast((char *)buf + off, count, MPI_BYTE, root, m->world, &req));
        if ((rc = comm_wait(c, &req, what, (size_t)count, e))) return rc;
    }
    return 0;
}

static int mpi_barrier(struct comm *c, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    if (c->topo.size == 1) return 0;
    MPI_Request req;
    m->seq++;
    COMM_TRY(c, e, "barrier", "MPI_Ibarrier", MPI_Ibarrier(m->world, &req));
    return comm_wait(c, &req, "barrier", 0, e);
}

/* Node topology: local rank/size, host names of every rank, union of the node's masks. */
static int comm_discover(struct comm *c, tp_err *e) {
    struct comm_mpi *m = mpi_of(c);
    struct topo *t = &c->topo;
    COMM_TRY(c, e, "topology discovery", "MPI_Comm_split_type",
             MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, t->rank, MPI_INFO_NULL, &m->node));
    COMM_TRY(c, e, "topology discovery", "MPI_Comm_set_errhandler",
             MPI_Comm_set_errhandler(m->node, MPI_ERRORS_RETURN));
    COMM_TRY(c, e, "topology discovery", "MPI_Comm_rank", MPI_Comm_rank(m->node, &t->local_rank));
    COMM_TRY(c, e, "topology discovery", "MPI_Comm_size", MPI_Comm_size(m->node, &t->local_size));

    c->hosts = calloc((size_t)t->size, sizeof *c->hosts);
    cpu_set_t *masks = calloc((size_t)t->local_size, sizeof *masks);
    int rc = 0;
    if (!c->hosts || !masks) {
        rc = tp_errf(e, TP_ENOMEM, "rank %d: cannot allocate the topology of %d ranks", t->rank, t->size);
        goto out;
    }
    memcpy(c->hosts[t->rank], t->host, COMM_HOST_LEN);
    if ((rc = comm_all_gather(c, c->hosts[t->rank], c->hosts, COMM_HOST_LEN, e))) goto out;

    cpu_set_t mine;
    CPU_ZERO(&mine);
    if (sched_getaffinity(0, sizeof mine, &mine) != 0 || CPU_COUNT(&mine) == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < online && i < CPU_SETSIZE; i++) CPU_SET((int)i, &mine);
    }
    t->n_cpus = TP_MAX(1, CPU_COUNT(&mine));
    masks[t->local_rank] = mine;
    m->seq++; /* on every rank, whatever the size of its node, to keep seq equal */
    if (t->local_size > 1) {
        MPI_Request req;
        const char *what = "topology discovery (CPU masks of this node)";
        rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, masks, (int)sizeof mine, MPI_BYTE, m->node, &req);
        if (rc != MPI_SUCCESS) {
            rc = comm_mpi_fail(c, e, rc, "MPI_Iallgather", what, __FILE__, __LINE__);
            goto out;
        }
        if ((rc = comm_wait(c, &req, what, 0, e))) goto out;
    }
    cpu_set_t all;
    CPU_ZERO(&all);
    for (int r = 0; r < t->local_size; r++) CPU_OR(&all, &all, &masks[r]);
    t->node_cpus = TP_MAX(1, CPU_COUNT(&all));
    t->threads = topo_default_threads(t->node_cpus, t->local_size, t->n_cpus);
out:
    free(masks);
    return rc;
}

int comm_create_mpi(struct comm **out, double timeout_s, tp_err *e) {
    if (!out) return tp_errf(e, TP_EINVAL, "comm_create_mpi: NULL output pointer");
    *out = NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized)
        return tp_errf(e, TP_EINVAL, "comm_create_mpi: MPI is %s: call MPI_Init_thread first (the launcher does)",
                       finalized ? "already finalised" : "not initialised");
    struct comm_mpi *m = calloc(1, sizeof *m);
    if (!m) return tp_errf(e, TP_ENOMEM, "comm_create_mpi: out of memory");
    struct comm *c = &m->c;
    c->ops = &comm_mpi_ops;
    m->world = m->ctl = m->node = MPI_COMM_NULL;
    c->timeout_s = COMM_DEFAULT_TIMEOUT_S;
    struct topo *t = &c->topo;
    if (gethostname(t->host, sizeof t->host - 1) != 0) snprintf(t->host, sizeof t->host, "unknown-host");
    t->host[sizeof t->host - 1] = '\0';
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->size);
    double timeout = COMM_DEFAULT_TIMEOUT_S;
    tp_err terr = {0};
    int local = comm_resolve_timeout(timeout_s, &timeout, &terr);

    /* Open MPI 4.1 reports the failure of a non-blocking collective, found by MPI_Test,
     * through MPI_COMM_WORLD's handler rather than the request's communicator: WORLD
     * must return errors too, or a truncated broadcast would kill the job without our
     * message. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    /* Duplicate WORLD without blocking, so that a rank that never arrives is reported. */
    MPI_Request req;
    int rc = MPI_Comm_idup(MPI_COMM_WORLD, &m->world, &req);
    if (rc != MPI_SUCCESS) {
        rc = comm_mpi_fail(c, e, rc, "MPI_Comm_idup", "communicator creation", __FILE__, __LINE__);
        goto fail;
    }
    if ((rc = comm_wait(c, &req, "communicator creation (MPI_Comm_idup of MPI_COMM_WORLD)", 0, e))) goto fail;
    if ((rc = MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_dup(m->world, &m->ctl)) != MPI_SUCCESS) {
        rc = comm_mpi_fail(c, e, rc, "MPI_Comm_dup", "communicator creation", __FILE__, __LINE__);
        goto fail;
    }
    if ((rc = comm_discover(c, e))) goto fail;
    /* Every rank leaves with the same outcome, even if only one has a bad environment. */
    int bad = -1;
    if ((rc = comm_any_error(c, local, &bad, &terr))) {
        tp_errf(e, rc, "%s", terr.msg);
        goto fail;
    }
    c->timeout_s = timeout;
    comm_reset_stats(c);
    *out = c;
    return 0;
fail:
    comm_free(c);
    return rc;
}

static void mpi_destroy(struct comm *c) {
    struct comm_mpi *m = mpi_of(c);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!c->broken && !finalized) {
        if (m->node != MPI_COMM_NULL) MPI_Comm_free(&m->node);
        if (m->ctl != MPI_COMM_NULL) MPI_Comm_free(&m->ctl);
        if (m->world != MPI_COMM_NULL) MPI_Comm_free(&m->world);
    }
    free(c->hosts);
    free(m);
}

static void mpi_describe(const struct comm *c, char *buf, size_t size) { snprintf(buf, size, "mpi"); }

static const struct comm_ops comm_mpi_ops = {
    .kind = "mpi",
    .all_reduce_sum = mpi_all_reduce_sum,
    .all_gather = mpi_all_gather,
    .all_to_all = mpi_all_to_all,
    .bcast = mpi_bcast,
    .barrier = mpi_barrier,
    .set_stream = NULL,
    .describe = mpi_describe,
    .destroy = mpi_destroy,
};

bool comm_is_mpi(const struct comm *c) { return c && c->ops == &comm_mpi_ops; }

void comm_mpi_answer_queries(struct comm *c) {
    if (comm_is_mpi(c)) comm_answer_queries(c);
}

void comm_mpi_find_missing(struct comm *c, char *out, size_t size) {
    if (size == 0) return;
    if (comm_is_mpi(c)) comm_find_missing(c, out, size);
    else snprintf(out, size, "which rank is missing is unknown: no MPI communicator to ask");
}

void comm_mpi_note_collective(struct comm *c) {
    if (comm_is_mpi(c)) mpi_of(c)->seq++;
}

void comm_abort(struct comm *c, int code, const char *msg) {
    int inited = 0, finalized = 0, rank = -1;
    char host[COMM_HOST_LEN] = "?";
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (c) {
        rank = c->topo.rank;
        memcpy(host, c->topo.host, sizeof host);
    } else {
        if (inited && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        if (gethostname(host, sizeof host - 1) != 0) snprintf(host, sizeof host, "?");
        host[sizeof host - 1] = '\0';
    }
    if (code == 0) code = 1;
    char rank_s[16] = "?";
    if (rank >= 0) snprintf(rank_s, sizeof rank_s, "%d", rank);
    fprintf(stderr, "tpllm: rank %s (host %s) failed: %s\n", rank_s, host, msg ? msg : "(no message)");
    fflush(stderr);
    /* WORLD, not c->world: the whole job goes, whatever state c is in. */
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code);
}
