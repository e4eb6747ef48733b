/* test_threadpool.c - the CPU backend's persistent pool: every task index runs exactly
 * once per run, whatever the task count against the thread count, over many runs. */
#include <criterion/criterion.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/cpu/cpu.h"
#include "testutil.h"

struct count_arg {
    _Atomic int *counts;
    int64_t expect_n;
    _Atomic int bad_n;
};

static void count_task(void *argp, int64_t i, int64_t n) {
    struct count_arg *a = argp;
    if (n != a->expect_n || i < 0 || i >= n) {
        atomic_fetch_add(&a->bad_n, 1);
        return;
    }
    atomic_fetch_add(&a->counts[i], 1);
}

/* Runs `runs` rounds of n tasks and checks that each index ran once per round. */
static void check_counts(struct tpool *p, int64_t n, int runs) {
    struct count_arg a = {.counts = calloc((size_t)n + 1, sizeof(_Atomic int)), .expect_n = n};
    cr_assert_not_null(a.counts);
    for (int r = 0; r < runs; r++) {
        tpool_run(p, count_task, &a, n);
        for (int64_t i = 0; i < n; i++) {
            int c = atomic_load(&a.counts[i]);
            cr_assert_eq(c, r + 1, "threads %d, n %lld, run %d: task %lld ran %d times, expected %d",
                         tpool_threads(p), (long long)n, r, (long long)i, c, r + 1);
        }
    }
    cr_assert_eq(atomic_load(&a.bad_n), 0, "a task saw a wrong index or count");
    free(a.counts);
}

Test(threadpool, runs_every_task_exactly_once_for_task_counts_below_and_above_the_threads) {
    static const int threads[] = {1, 2, 3, 5};
    static const int64_t tasks[] = {1, 2, 3, 4, 7, 64, 1001};
    for (size_t t = 0; t < TP_ARRAY_LEN(threads); t++) {
        struct tpool *p = NULL;
        tp_err e = {0};
        cr_assert_eq(tpool_create(&p, threads[t], &e), 0, "%s", e.msg);
        cr_assert_eq(tpool_threads(p), threads[t]);
        for (size_t k = 0; k < TP_ARRAY_LEN(tasks); k++) check_counts(p, tasks[k], tasks[k] > 100 ? 50 : 400);
        tpool_free(p);
    }
}

Test(threadpool, many_short_runs_in_a_row_lose_no_task) {
    struct tpool *p = NULL;
    tp_err e = {0};
    cr_assert_eq(tpool_create(&p, 4, &e), 0, "%s", e.msg);
    check_counts(p, 4, 20000);
    tpool_free(p);
}

Test(threadpool, a_null_pool_or_zero_tasks_run_inline_or_not_at_all) {
    check_counts(NULL, 9, 3);
    cr_assert_eq(tpool_threads(NULL), 1);
    struct tpool *p = NULL;
    tp_err e = {0};
    cr_assert_eq(tpool_create(&p, 3, &e), 0, "%s", e.msg);
    struct count_arg a = {.counts = calloc(1, sizeof(_Atomic int)), .expect_n = 0};
    tpool_run(p, count_task, &a, 0);
    tpool_run(NULL, count_task, &a, 0);
    cr_assert_eq(atomic_load(&a.counts[0]) + atomic_load(&a.bad_n), 0);
    free(a.counts);
    tpool_free(p);
}

/* Each task waits until all of them have started: only finishes if the caller and every
 * worker run tasks at the same time (a bounded wait turns a hang into a failure). */
struct rendezvous {
    _Atomic int arrived;
    int64_t want;
    _Atomic int timed_out;
};

static void rendezvous_task(void *argp, int64_t i, int64_t n) {
    struct rendezvous *r = argp;
    atomic_fetch_add(&r->arrived, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&r->arrived) < r->want) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 20) {
            atomic_store(&r->timed_out, 1);
            return;
        }
        sched_yield();
    }
}

Test(threadpool, the_caller_and_all_workers_take_part) {
    struct tpool *p = NULL;
    tp_err e = {0};
    cr_assert_eq(tpool_create(&p, 4, &e), 0, "%s", e.msg);
    for (int round = 0; round < 20; round++) {
        struct rendezvous r = {.want = 4};
        tpool_run(p, rendezvous_task, &r, 4);
        cr_assert_eq(atomic_load(&r.timed_out), 0, "round %d: the 4 tasks never ran together", round);
        cr_assert_eq(atomic_load(&r.arrived), 4);
    }
    tpool_free(p);
}

Test(threadpool, rejects_a_pool_of_no_threads_and_frees_null) {
    struct tpool *p = (struct tpool *)1;
    tp_err e = {0};
    cr_assert_lt(tpool_create(&p, 0, &e), 0);
    cr_assert_null(p);
    cr_assert_neq(e.msg[0], '\0');
    tpool_free(NULL);
}
