/* topo.c - where a rank runs: affinity CPU count, default thread count, report line. */
#include "comm.h"

#include <sched.h>
#include <stdio.h>
#include <unistd.h>

int topo_affinity_cpus(void) {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof mask, &mask) == 0) {
        int n = CPU_COUNT(&mask);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)TP_MIN(n, 1L << 20) : 1;
}

/* Why node CPUs / local ranks and not the own mask: mpirun binds each rank to one core
 * when np <= cores (the mask then says 1) and to nothing with --oversubscribe or
 * --bind-to none (the mask then says every CPU, for every rank). Dividing the node's
 * CPUs among its ranks gives the same answer in both cases; capping by the own mask
 * keeps a rank bound to one core from starting threads that would share it. */
int topo_default_threads(int node_cpus, int local_size, int own_cpus) {
    if (local_size < 1) local_size = 1;
    int t = node_cpus / local_size;
    if (own_cpus > 0 && t > own_cpus) t = own_cpus;
    return t < 1 ? 1 : t;
}

void topo_describe(const struct topo *t, char *buf, size_t size) {
    if (!buf || size == 0) return;
    if (!t) {
        snprintf(buf, size, "(no topology)");
        return;
    }
    snprintf(buf, size, "rank %d/%d on host %s (local %d/%d): %d CPU%s in mask, %d on node, %d thread%s",
             t->rank, t->size, t->host, t->local_rank, t->local_size, t->n_cpus, t->n_cpus == 1 ? "" : "s",
             t->node_cpus, t->threads, t->threads == 1 ? "" : "s");
}
