/* comm.c - the transport-independent half of comm.h: argument checks, the broken state,
 * stats, timeouts, accessors and error agreement, then dispatch to the transport's ops. */
#include "comm_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int comm_break(struct comm *c, tp_err *e, const char *fmt, ...) {
    if (!c->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->broken_err.msg, sizeof c->broken_err.msg, fmt, ap);
        va_end(ap);
        c->broken_err.code = TP_ECOMM;
        c->broken = true;
    }
    return tp_errf(e, TP_ECOMM, "%s", c->broken_err.msg);
}

int comm_resolve_timeout(double arg, double *out, tp_err *e) {
    if (!(arg >= 0) || !isfinite(arg))
        return tp_errf(e, TP_EINVAL, "communicator timeout %g s: must be a finite number >= 0 (0 means 60 s)", arg);
    *out = arg > 0 ? arg : COMM_DEFAULT_TIMEOUT_S;
    const char *env = getenv("TPLLM_COMM_TIMEOUT");
    if (!env || !*env) return 0;
    char *end = NULL;
    double v = strtod(env, &end);
    if (end == env || *end != '\0' || !(v > 0) || !isfinite(v))
        return tp_errf(e, TP_EINVAL,
                       "TPLLM_COMM_TIMEOUT='%s' is not a number of seconds > 0: set it to e.g. 60, or unset it", env);
    *out = v;
    return 0;
}

/* Common entry of every public collective. */
static int comm_enter(struct comm *c, tp_err *e, const char *op) {
    if (!c) return tp_errf(e, TP_EINVAL, "%s: the communicator is NULL (create it with comm_create_mpi)", op);
    if (c->broken)
        return tp_errf(e, TP_ECOMM, "%s refused: the communicator failed earlier: %s", op, c->broken_err.msg);
    c->op_seconds = -1;
    return 0;
}

static void comm_account(struct comm *c, double t0, size_t bytes) {
    c->stats.seconds += c->op_seconds >= 0 ? c->op_seconds : comm_now() - t0;
    c->stats.calls++;
    c->stats.bytes += (int64_t)TP_MIN(bytes, (size_t)INT64_MAX);
}

int comm_all_reduce_sum(struct comm *c, float *buf, int64_t n, tp_err *e) {
    int rc = comm_enter(c, e, "all-reduce");
    if (rc) return rc;
    if (n < 0 || (n > 0 && !buf))
        return tp_errf(e, TP_EINVAL, "all-reduce: bad buffer (%p) or count (%lld floats)", (void *)buf, (long long)n);
    if ((uint64_t)n > SIZE_MAX / sizeof(float))
        return tp_errf(e, TP_EINVAL, "all-reduce of %lld floats overflows size_t", (long long)n);
    double t0 = comm_now();
    if ((rc = c->ops->all_reduce_sum(c, buf, n, e))) return rc;
    comm_account(c, t0, (size_t)n * sizeof(float));
    return 0;
}

int comm_all_gather(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    int rc = comm_enter(c, e, "all-gather");
    if (rc) return rc;
    size_t total;
    if (!tp_mul_size(bytes, (size_t)c->topo.size, &total))
        return tp_errf(e, TP_EINVAL, "all-gather of %zu bytes from %d ranks overflows size_t", bytes, c->topo.size);
    if (bytes > 0 && (!send || !recv))
        return tp_errf(e, TP_EINVAL, "all-gather of %zu bytes per rank: NULL send or receive buffer", bytes);
    double t0 = comm_now();
    if ((rc = c->ops->all_gather(c, send, recv, bytes, e))) return rc;
    comm_account(c, t0, total);
    return 0;
}

int comm_all_to_all(struct comm *c, const void *send, void *recv, size_t bytes, tp_err *e) {
    int rc = comm_enter(c, e, "all-to-all");
    if (rc) return rc;
    if (!c->ops->all_to_all)
        return tp_errf(e, TP_EUNSUPPORTED, "all-to-all: the %s transport has none (check comm_has_all_to_all)",
                       c->ops->kind);
    size_t total;
    if (!tp_mul_size(bytes, (size_t)c->topo.size, &total))
        return tp_errf(e, TP_EINVAL, "all-to-all of %zu bytes per rank pair over %d ranks overflows size_t", bytes,
                       c->topo.size);
    if (bytes > 0 && (!send || !recv || send == recv))
        return tp_errf(e, TP_EINVAL, "all-to-all of %zu bytes per rank pair: NULL or shared send and receive buffers",
                       bytes);
    double t0 = comm_now();
    if ((rc = c->ops->all_to_all(c, send, recv, bytes, e))) return rc;
    comm_account(c, t0, total);
    return 0;
}

bool comm_has_all_to_all(const struct comm *c) { return c && c->ops->all_to_all; }

int comm_bcast(struct comm *c, void *buf, size_t bytes, int root, tp_err *e) {
    int rc = comm_enter(c, e, "broadcast");
    if (rc) return rc;
    if (root < 0 || root >= c->topo.size)
        return tp_errf(e, TP_EINVAL, "broadcast: root rank %d is not in 0..%d", root, c->topo.size - 1);
    if (bytes > 0 && !buf) return tp_errf(e, TP_EINVAL, "broadcast of %zu bytes: NULL buffer", bytes);
    double t0 = comm_now();
    if ((rc = c->ops->bcast(c, buf, bytes, root, e))) return rc;
    comm_account(c, t0, bytes);
    return 0;
}

int comm_barrier(struct comm *c, tp_err *e) {
    int rc = comm_enter(c, e, "barrier");
    if (rc) return rc;
    double t0 = comm_now();
    if ((rc = c->ops->barrier(c, e))) return rc;
    comm_account(c, t0, 0);
    return 0;
}

int comm_any_error(struct comm *c, int local_status, int *first_bad_rank, tp_err *e) {
    if (first_bad_rank) *first_bad_rank = -1;
    int rc = comm_enter(c, e, "error agreement");
    if (rc) return rc;
    int n = c->topo.size;
    int *all = malloc((size_t)n * sizeof *all);
    if (!all) return tp_errf(e, TP_ENOMEM, "error agreement: cannot allocate %d statuses", n);
    all[c->topo.rank] = local_status;
    if ((rc = comm_all_gather(c, &all[c->topo.rank], all, sizeof *all, e))) {
        free(all);
        return rc;
    }
    int bad = -1, n_bad = 0;
    for (int r = 0; r < n; r++)
        if (all[r] != 0 && n_bad++ == 0) bad = r;
    rc = bad < 0 ? 0 : all[bad];
    if (bad >= 0) {
        if (first_bad_rank) *first_bad_rank = bad;
        tp_errf(e, rc, "rank %d (host %s) failed: %s%s", bad, comm_peer_host(c, bad), tp_status_name(rc),
                n_bad > 1 ? " (and other ranks too; the lowest is named)" : "");
    }
    free(all);
    return rc;
}

void comm_free(struct comm *c) {
    if (c) c->ops->destroy(c);
}

const struct topo *comm_topo(const struct comm *c) { return c ? &c->topo : NULL; }

const char *comm_peer_host(const struct comm *c, int rank) {
    if (!c || !c->hosts || rank < 0 || rank >= c->topo.size) return "?";
    return c->hosts[rank];
}

void comm_set_timeout(struct comm *c, double seconds) {
    if (c && seconds > 0 && isfinite(seconds)) c->timeout_s = seconds;
}

double comm_get_timeout(const struct comm *c) { return c ? c->timeout_s : 0; }

void comm_set_stream(struct comm *c, void *cuda_stream) {
    if (c && c->ops->set_stream) c->ops->set_stream(c, cuda_stream);
}

void comm_describe(const struct comm *c, char *buf, size_t size) {
    if (!buf || size == 0) return;
    if (!c) snprintf(buf, size, "none");
    else c->ops->describe(c, buf, size);
}

struct comm_stats comm_get_stats(const struct comm *c) {
    struct comm_stats s = {0};
    return c ? c->stats : s;
}

void comm_reset_stats(struct comm *c) {
    if (c) memset(&c->stats, 0, sizeof c->stats);
}
