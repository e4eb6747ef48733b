/* threadpool.c - the CPU backend's persistent worker pool: threads created once, woken
 * per tpool_run with a short spin and then a condition variable, the caller taking part.
 *
 * Protocol. A run publishes (fn, arg, n), resets the task counter `next` and sets
 * `pending` to the number of workers, then bumps the generation `gen`. Every worker
 * notices the new generation (spinning briefly, else sleeping on `wake`), takes task
 * indices from `next` until none remain, and decrements `pending`. The caller takes tasks
 * the same way and returns once `pending` reaches zero, so no worker can still be reading
 * (fn, arg, n) when the next run overwrites them. Tasks are handed out dynamically, so
 * uneven tasks balance themselves; a task index is run exactly once per run.
 *
 * Sleeping without lost wake-ups: a worker increments `sleepers` and re-checks `gen`
 * under `lock` before waiting; the caller bumps `gen` and then reads `sleepers` (both
 * sequentially consistent) and only takes the lock and broadcasts when someone sleeps.
 * The caller's wait for `pending` works the same way with `caller_sleeping`/`done`. */
#include "cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TPOOL_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define TPOOL_PAUSE() __asm__ __volatile__("yield")
#else
#define TPOOL_PAUSE() ((void)0)
#endif

/* Polls before sleeping. A few tens of microseconds: long enough to catch the next op of
 * a forward pass, short enough not to steal a shared core for long. */
enum { TPOOL_SPIN = 4096 };

struct tpool {
    int n_threads;      /* including the caller */
    pthread_t *workers; /* n_threads - 1 */
    int n_started;

    pthread_mutex_t lock;
    pthread_cond_t wake; /* workers wait here for a new generation */
    pthread_cond_t done; /* the caller waits here for pending == 0 */

    _Atomic uint32_t gen;
    _Atomic int sleepers;
    _Atomic int caller_sleeping;
    _Atomic int pending;  /* workers that have not finished this generation */
    _Atomic int64_t next; /* next task index to hand out */
    _Atomic bool stop;

    /* The current run; written by the caller before `gen` is bumped. */
    tpool_fn fn;
    void *arg;
    int64_t n;
};

/* One poll of a wait loop: a pause, and now and then a yield so that on an oversubscribed
 * machine the thread being waited for gets the core. */
static inline void tpool_relax(int s) {
    if ((s & 63) == 63)
        sched_yield();
    else
        TPOOL_PAUSE();
}

static void tpool_take_tasks(struct tpool *p) {
    tpool_fn fn = p->fn;
    void *arg = p->arg;
    int64_t n = p->n;
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= n) break;
        fn(arg, i, n);
    }
}

/* Wait until gen != seen; returns the new generation. */
static uint32_t tpool_wait_gen(struct tpool *p, uint32_t seen) {
    for (int s = 0; s < TPOOL_SPIN; s++) {
        uint32_t g = atomic_load(&p->gen);
        if (g != seen) return g;
        tpool_relax(s);
    }
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->sleepers, 1);
    uint32_t g;
    while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->wake, &p->lock);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->lock);
    return g;
}

static void *tpool_worker(void *argp) {
    struct tpool *p = argp;
    uint32_t seen = 0;
    for (;;) {
        seen = tpool_wait_gen(p, seen);
        if (atomic_load(&p->stop)) break;
        tpool_take_tasks(p);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

/* Publish a new generation and wake sleeping workers. */
static void tpool_bump(struct tpool *p) {
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
}

/* Stops and joins the started workers, then releases everything. */
void tpool_free(struct tpool *p) {
    if (!p) return;
    if (p->n_started > 0) {
        atomic_store(&p->stop, true);
        tpool_bump(p);
        for (int i = 0; i < p->n_started; i++) pthread_join(p->workers[i], NULL);
    }
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
}

/* Creates a pool of n_threads threads counting the caller (n_threads - 1 workers are
 * started now and live until tpool_free). On failure returns a negative status, fills
 * `e` and leaves *out NULL. */
int tpool_create(struct tpool **out, int n_threads, tp_err *e) {
    *out = NULL;
    if (n_threads < 1)
        return tp_errf(e, TP_EINVAL, "thread pool: %d threads requested; give at least 1", n_threads);
    struct tpool *p = calloc(1, sizeof *p);
    if (!p) return tp_errf(e, TP_ENOMEM, "thread pool: out of memory");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            tpool_free(p);
            return tp_errf(e, TP_ENOMEM, "thread pool: out of memory for %d threads", n_threads);
        }
        for (int i = 0; i < n_threads - 1; i++) {
            int rc = pthread_create(&p->workers[i], NULL, tpool_worker, p);
            if (rc != 0) {
                tpool_free(p);
                return tp_errf(e, TP_ENOMEM,
                               "thread pool: could not start thread %d of %d (%s); use fewer threads",
                               i + 1, n_threads, strerror(rc));
            }
            p->n_started++;
        }
    }
    *out = p;
    return 0;
}

int tpool_threads(const struct tpool *p) { return p ? p->n_threads : 1; }

/* Runs fn(arg, i, n) for every i in [0, n) and returns when all calls have returned.
 * p == NULL, a single-thread pool or n == 1 run everything on the caller. Not reentrant:
 * one run at a time per pool, and a task must not call tpool_run on the same pool. */
void tpool_run(struct tpool *p, tpool_fn fn, void *arg, int64_t n) {
    if (n <= 0) return;
    if (!p || p->n_threads == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++) fn(arg, i, n);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store(&p->next, 0);
    atomic_store(&p->pending, p->n_threads - 1);
    tpool_bump(p);
    tpool_take_tasks(p);

    for (int s = 0; s < TPOOL_SPIN; s++) {
        if (atomic_load(&p->pending) == 0) return;
        tpool_relax(s);
    }
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->caller_sleeping, 1);
    while (atomic_load(&p->pending) != 0) pthread_cond_wait(&p->done, &p->lock);
    atomic_store(&p->caller_sleeping, 0);
    pthread_mutex_unlock(&p->lock);
}
