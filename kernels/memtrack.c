/* memtrack.c - the per-rank memory tracker: used and peak bytes per owner, budget enforcement. */
#include "memtrack.h"

#include <stdio.h>

static const char *const owner_names[MEM_OWNER_COUNT] = {"weights", "kv-cache", "activations", "communication",
                                                         "workspace", "other"};
_Static_assert(sizeof owner_names / sizeof owner_names[0] == MEM_OWNER_COUNT, "owner names must cover MEM_OWNER_COUNT");

const char *mem_owner_name(enum mem_owner o) { return (unsigned)o < MEM_OWNER_COUNT ? owner_names[o] : "?"; }

void memtrack_note(struct memtrack *t, enum mem_owner owner, size_t bytes) {
    if (!t) return;
    t->used[owner] += bytes;
    t->total += bytes;
    if (t->used[owner] > t->peak[owner]) t->peak[owner] = t->used[owner];
    if (t->total > t->total_peak) t->total_peak = t->total;
}

void memtrack_unnote(struct memtrack *t, enum mem_owner owner, size_t bytes) {
    if (!t) return;
    t->used[owner] -= TP_MIN(bytes, t->used[owner]);
    t->total -= TP_MIN(bytes, t->total);
}

int64_t memtrack_left(const struct memtrack *t) {
    if (!t || t->budget <= 0) return INT64_MAX;
    return t->budget - (int64_t)t->total;
}

void *memtrack_alloc(struct memtrack *t, struct kbackend *be, enum mem_owner owner, size_t bytes) {
    if (t && t->budget > 0 && (int64_t)bytes > memtrack_left(t)) return NULL;
    void *p = be->ops->alloc(be, bytes);
    if (p) memtrack_note(t, owner, bytes);
    return p;
}

void memtrack_free(struct memtrack *t, struct kbackend *be, enum mem_owner owner, void *p, size_t bytes) {
    if (!p) return;
    be->ops->free(be, p);
    memtrack_unnote(t, owner, bytes);
}

int kbackend_mem_info(const struct kbackend *b, int64_t *free_bytes, int64_t *total_bytes) {
    if (b && b->ops->mem_info) return b->ops->mem_info((struct kbackend *)b, free_bytes, total_bytes);
    /* host memory */
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return TP_EIO;
    char line[256];
    long long avail = -1, total = -1, v;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %lld kB", &v) == 1) avail = v;
        else if (sscanf(line, "MemTotal: %lld kB", &v) == 1) total = v;
    }
    fclose(f);
    if (avail < 0 || total < 0) return TP_EIO;
    if (free_bytes) *free_bytes = (int64_t)avail * 1024;
    if (total_bytes) *total_bytes = (int64_t)total * 1024;
    return 0;
}
