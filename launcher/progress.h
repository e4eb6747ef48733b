/* progress.h - loading progress of every rank, shown on rank 0's terminal. */
#ifndef TPLLM_PROGRESS_H
#define TPLLM_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress;

/* Collective over MPI_COMM_WORLD. Returns NULL (and shows nothing) when quiet or out of memory. */
struct progress *progress_begin(int rank, int size, bool quiet);
/* The model_load_progress callback: bytes loaded so far of this rank's total. */
void progress_update(void *p, uint64_t done, uint64_t total);
/* Every rank calls it once, whether its load succeeded or not: ranks > 0 report their
 * final count, rank 0 waits for every rank's and prints the last state. NULL is a no-op. */
void progress_end(struct progress *p);

#endif
