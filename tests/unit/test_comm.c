/* test_comm.c - the MPI communicator on one rank: creation, topology, collectives as
 * identities, argument errors, timeout settings, error agreement and comm_abort.
 * Multi-rank behaviour (sums, timeouts, dead ranks) is in tests/perf/comm_stress.c,
 * driven by tests/mpi/test_comm.sh. Each Criterion test runs in its own process, which
 * initialises MPI as a singleton in the init hook. */
#include <criterion/criterion.h>
#include <mpi.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/comm.h"
#include "testutil.h"
#include "../sanitizer_defaults.h"

static void mpi_up(void) {
    int provided = 0;
    /* Keep MCA plugins loaded at exit so that LeakSanitizer can name (and suppress) their leaks. */
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
    cr_assert_eq(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided), MPI_SUCCESS);
    unsetenv("TPLLM_COMM_TIMEOUT");
}

static void mpi_down(void) { MPI_Finalize(); }

static struct comm *make(double timeout_s) {
    struct comm *c = NULL;
    tp_err e = {0};
    int rc = comm_create_mpi(&c, timeout_s, &e);
    cr_assert_eq(rc, 0, "comm_create_mpi: %s", e.msg);
    cr_assert_not_null(c);
    return c;
}

TestSuite(comm, .init = mpi_up, .fini = mpi_down);

Test(comm, describes_the_single_rank_and_its_cpus) {
    struct comm *c = make(0);
    const struct topo *t = comm_topo(c);
    cr_assert_eq(comm_rank(c), 0);
    cr_assert_eq(comm_size(c), 1);
    cr_assert_eq(t->local_rank, 0);
    cr_assert_eq(t->local_size, 1);
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    cr_assert_eq(strncmp(t->host, host, sizeof t->host - 1), 0, "host '%s', OS says '%s'", t->host, host);
    cr_assert_str_eq(comm_peer_host(c, 0), t->host);
    cr_assert_str_eq(comm_peer_host(c, 1), "?");
    cpu_set_t mask;
    cr_assert_eq(sched_getaffinity(0, sizeof mask, &mask), 0);
    cr_assert_eq(t->n_cpus, CPU_COUNT(&mask));
    cr_assert_eq(topo_affinity_cpus(), CPU_COUNT(&mask));
    cr_assert_eq(t->node_cpus, CPU_COUNT(&mask), "one rank: the node's CPUs are its mask");
    cr_assert_eq(t->threads, t->n_cpus, "one rank uses every CPU it may run on");
    char line[256];
    topo_describe(t, line, sizeof line);
    cr_assert_not_null(strstr(line, t->host), "report line '%s'", line);
    cr_assert_not_null(strstr(line, "rank 0/1"), "report line '%s'", line);
    comm_free(c);
}

Test(comm, divides_node_cpus_among_local_ranks) {
    /* node CPUs, local ranks, CPUs in own mask -> threads */
    static const int cases[][4] = {
        {2, 2, 1, 1},   /* np 2 on 2 cores, mpirun binds each to a core */
        {2, 2, 2, 1},   /* np 2 on 2 cores, --bind-to none */
        {2, 1, 2, 2},   /* np 1 */
        {2, 4, 2, 1},   /* np 4 oversubscribed on 2 cores: at least one */
        {64, 4, 64, 16},
        {64, 4, 8, 8},  /* bound to 8 CPUs: no more threads than that */
        {1, 1, 0, 1},   /* own mask unknown */
        {0, 0, 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_eq(topo_default_threads(cases[i][0], cases[i][1], cases[i][2]), cases[i][3],
                     "topo_default_threads(%d, %d, %d)", cases[i][0], cases[i][1], cases[i][2]);
}

Test(comm, collectives_on_one_rank_are_identities_and_are_counted) {
    struct comm *c = make(0);
    tp_err e = {0};
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    float x[1000], orig[1000];
    tu_fill_uniform(&rng, x, 1000, -10, 10);
    memcpy(orig, x, sizeof x);
    cr_assert_eq(comm_all_reduce_sum(c, x, 1000, &e), 0, "%s", e.msg);
    cr_assert_eq(memcmp(x, orig, sizeof x), 0, "a one-rank sum changes nothing");
    cr_assert_eq(comm_all_reduce_sum(c, NULL, 0, &e), 0, "%s", e.msg);

    unsigned char send[37], recv[37];
    for (int i = 0; i < 37; i++) send[i] = (unsigned char)tu_next(&rng);
    cr_assert_eq(comm_all_gather(c, send, recv, sizeof send, &e), 0, "%s", e.msg);
    cr_assert_eq(memcmp(send, recv, sizeof send), 0);
    cr_assert_eq(comm_all_gather(c, recv, recv, sizeof recv, &e), 0, "in place: %s", e.msg);
    cr_assert_eq(memcmp(send, recv, sizeof send), 0);
    cr_assert_eq(comm_bcast(c, recv, sizeof recv, 0, &e), 0, "%s", e.msg);
    cr_assert_eq(memcmp(send, recv, sizeof send), 0);
    cr_assert_eq(comm_barrier(c, &e), 0, "%s", e.msg);

    struct comm_stats s = comm_get_stats(c);
    cr_assert_eq(s.calls, 6);
    cr_assert_eq(s.bytes, 1000 * 4 + 37 * 3);
    cr_assert(s.seconds >= 0 && s.seconds < 10, "seconds %g", s.seconds);
    comm_reset_stats(c);
    s = comm_get_stats(c);
    cr_assert(s.calls == 0 && s.bytes == 0 && s.seconds == 0);
    comm_free(c);
}

Test(comm, rejects_bad_arguments_with_a_message) {
    struct comm *c = make(0);
    tp_err e = {0};
    char b[4];
    cr_assert_eq(comm_bcast(c, b, sizeof b, 1, &e), TP_EINVAL);
    cr_assert_not_null(strstr(e.msg, "root rank 1"), "%s", e.msg);
    tp_err_clear(&e);
    cr_assert_eq(comm_bcast(c, b, sizeof b, -1, &e), TP_EINVAL);
    tp_err_clear(&e);
    cr_assert_eq(comm_bcast(c, NULL, 4, 0, &e), TP_EINVAL);
    tp_err_clear(&e);
    cr_assert_eq(comm_all_reduce_sum(c, NULL, 3, &e), TP_EINVAL);
    tp_err_clear(&e);
    float f = 1;
    cr_assert_eq(comm_all_reduce_sum(c, &f, -1, &e), TP_EINVAL);
    tp_err_clear(&e);
    cr_assert_eq(comm_all_gather(c, b, b, (size_t)1 << 31, &e), TP_EINVAL);
    cr_assert_not_null(strstr(e.msg, "split the call"), "%s", e.msg);
    tp_err_clear(&e);
    cr_assert_eq(comm_all_reduce_sum(NULL, &f, 1, &e), TP_EINVAL);
    cr_assert_not_null(strstr(e.msg, "NULL"), "%s", e.msg);
    /* Argument errors do not break the communicator. */
    tp_err_clear(&e);
    cr_assert_eq(comm_all_reduce_sum(c, &f, 1, &e), 0, "%s", e.msg);
    comm_free(c);
}

Test(comm, agrees_on_errors_and_names_the_first_bad_rank) {
    struct comm *c = make(0);
    tp_err e = {0};
    int bad = 42;
    cr_assert_eq(comm_any_error(c, 0, &bad, &e), 0, "%s", e.msg);
    cr_assert_eq(bad, -1);
    cr_assert_eq(comm_any_error(c, TP_EIO, &bad, &e), TP_EIO);
    cr_assert_eq(bad, 0);
    cr_assert_not_null(strstr(e.msg, "rank 0 (host "), "%s", e.msg);
    cr_assert_not_null(strstr(e.msg, tp_status_name(TP_EIO)), "%s", e.msg);
    tp_err_clear(&e);
    tp_errf(&e, TP_EFORMAT, "tensor blk.0.attn_q.weight: bad shape");
    cr_assert_eq(comm_any_error(c, TP_EFORMAT, &bad, &e), TP_EFORMAT);
    cr_assert_str_eq(e.msg, "tensor blk.0.attn_q.weight: bad shape", "a rank keeps its own message");
    comm_free(c);
}

Test(comm, timeout_comes_from_the_argument_then_the_environment) {
    struct comm *c = make(0);
    cr_assert_float_eq(comm_get_timeout(c), 60.0, 1e-12, "default");
    comm_set_timeout(c, 7.5);
    cr_assert_float_eq(comm_get_timeout(c), 7.5, 1e-12);
    comm_set_timeout(c, -1);
    cr_assert_float_eq(comm_get_timeout(c), 7.5, 1e-12, "a bad value is ignored");
    comm_free(c);
    c = make(5);
    cr_assert_float_eq(comm_get_timeout(c), 5.0, 1e-12);
    comm_free(c);
    setenv("TPLLM_COMM_TIMEOUT", "3.25", 1);
    c = make(5);
    cr_assert_float_eq(comm_get_timeout(c), 3.25, 1e-12, "the environment wins");
    comm_free(c);
}

Test(comm, refuses_a_bad_timeout_with_the_fix) {
    struct comm *c = (struct comm *)&c; /* must be reset to NULL on failure */
    tp_err e = {0};
    setenv("TPLLM_COMM_TIMEOUT", "soon", 1);
    cr_assert_eq(comm_create_mpi(&c, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    cr_assert_not_null(strstr(e.msg, "TPLLM_COMM_TIMEOUT='soon'"), "%s", e.msg);
    unsetenv("TPLLM_COMM_TIMEOUT");
    tp_err_clear(&e);
    cr_assert_eq(comm_create_mpi(&c, -2, &e), TP_EINVAL);
    cr_assert_null(c);
    /* MPI is still usable after a refused creation. */
    c = make(0);
    comm_free(c);
}

Test(comm, null_handles_are_harmless) {
    comm_free(NULL);
    cr_assert_null(comm_topo(NULL));
    struct comm_stats s = comm_get_stats(NULL);
    cr_assert_eq(s.calls, 0);
    comm_reset_stats(NULL);
    comm_set_timeout(NULL, 1);
    cr_assert_str_eq(comm_peer_host(NULL, 0), "?");
}

Test(comm, aborts_the_job_with_the_given_code, .exit_code = 5) {
    struct comm *c = make(0);
    comm_abort(c, 5, "simulated failure");
}

Test(comm_without_mpi, refuses_to_start_before_mpi_init) {
    struct comm *c = NULL;
    tp_err e = {0};
    cr_assert_eq(comm_create_mpi(&c, 0, &e), TP_EINVAL);
    cr_assert_null(c);
    cr_assert_not_null(strstr(e.msg, "MPI_Init_thread"), "%s", e.msg);
}

Test(comm_without_mpi, abort_without_mpi_exits_with_the_code, .exit_code = 9) {
    comm_abort(NULL, 9, "no MPI here");
}
