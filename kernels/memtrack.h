/* memtrack.h - the per-rank memory tracker: every byte a backend hands out has an owner.
 *
 * Allocations made through memtrack_alloc are counted against their owner and the
 * rank's budget; the tracker reports used and peak bytes per owner at any moment and
 * refuses an allocation that would exceed the budget (the process never dies of
 * out-of-memory: the caller gets NULL and reports it). */
#ifndef TPLLM_MEMTRACK_H
#define TPLLM_MEMTRACK_H

#include "kernels.h"

enum mem_owner {
    MEM_WEIGHTS = 0,
    MEM_KV = 1,
    MEM_ACTIVATIONS = 2,
    MEM_COMM = 3,
    MEM_WORKSPACE = 4, /* backend / library scratch (matmul activations, cuBLAS) */
    MEM_OTHER = 5,
    MEM_OWNER_COUNT
};

struct memtrack {
    int64_t budget;                   /* bytes; <= 0: unlimited */
    size_t used[MEM_OWNER_COUNT];
    size_t peak[MEM_OWNER_COUNT];
    size_t total, total_peak;
};

const char *mem_owner_name(enum mem_owner o);

/* Allocate `bytes` of backend memory for `owner`; NULL when the budget would be exceeded
 * or the backend is out of memory (nothing is counted then). */
void *memtrack_alloc(struct memtrack *t, struct kbackend *be, enum mem_owner owner, size_t bytes);
/* Release p (NULL is a no-op); bytes must be what was allocated. */
void memtrack_free(struct memtrack *t, struct kbackend *be, enum mem_owner owner, void *p, size_t bytes);
/* Count memory allocated elsewhere (a backend's own scratch, host buffers). */
void memtrack_note(struct memtrack *t, enum mem_owner owner, size_t bytes);
void memtrack_unnote(struct memtrack *t, enum mem_owner owner, size_t bytes);
/* Budget left (budget - total); INT64_MAX when unlimited. */
int64_t memtrack_left(const struct memtrack *t);

#endif
