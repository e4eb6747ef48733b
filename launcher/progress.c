/* progress.c - loading progress of every rank on rank 0's terminal: ranks > 0 send small
 * updates to rank 0 as they load; rank 0 draws one bar per rank when stderr is a terminal
 * and prints a line per rank and quarter otherwise. */
#include "progress.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { TAG_PROGRESS = 77 };

struct rank_state {
    double done, total;
    int final, shown; /* shown: last percentage (TTY) or quarter (log) printed */
};

struct progress {
    MPI_Comm comm; /* a duplicate of MPI_COMM_WORLD: never mixed with the job's messages */
    int rank, size;
    bool tty, drawn;
    double t0;
    int last_sent;
    uint64_t done, total;  /* this rank's last counts */
    struct rank_state *st; /* rank 0 only: [size] */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct progress *progress_begin(int rank, int size, bool quiet) {
    int q = quiet;
    MPI_Allreduce(MPI_IN_PLACE, &q, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD); /* all ranks agree */
    if (q) return NULL;
    struct progress *p = calloc(1, sizeof *p);
    if (p && rank == 0) p->st = calloc((size_t)size, sizeof *p->st);
    int ok = p && (rank != 0 || p->st);
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!ok || MPI_Comm_dup(MPI_COMM_WORLD, &p->comm) != MPI_SUCCESS) {
        if (p) free(p->st);
        free(p);
        return NULL;
    }
    p->rank = rank;
    p->size = size;
    p->tty = isatty(STDERR_FILENO);
    p->t0 = now_s();
    p->last_sent = -1;
    for (int r = 0; rank == 0 && r < size; r++) p->st[r].shown = -1;
    return p;
}

/* Rank 0: show what changed. */
static void draw(struct progress *p) {
    double dt = now_s() - p->t0;
    if (p->tty) {
        if (p->drawn) fprintf(stderr, "\033[%dA", p->size);
        for (int r = 0; r < p->size; r++) {
            const struct rank_state *s = &p->st[r];
            int pct = s->total > 0 ? (int)(100.0 * s->done / s->total) : 0, w = pct * 30 / 100;
            fprintf(stderr, "\r\033[Kloading rank %-3d [%.*s%*s] %3d%% %8.1f / %.1f MiB %5.2f GB/s\n", r, w,
                    "##############################", 30 - w, "", pct, s->done / (1 << 20), s->total / (1 << 20),
                    dt > 0 ? s->done / dt / 1e9 : 0.0);
        }
        p->drawn = true;
        return;
    }
    for (int r = 0; r < p->size; r++) {
        struct rank_state *s = &p->st[r];
        int quarter = s->total > 0 ? (int)(4.0 * s->done / s->total) : 0;
        if (quarter <= s->shown) continue;
        s->shown = quarter;
        fprintf(stderr, "loading rank %d: %3d%% %.1f / %.1f MiB, %.2f GB/s\n", r, quarter * 25, s->done / (1 << 20),
                s->total / (1 << 20), dt > 0 ? s->done / dt / 1e9 : 0.0);
    }
}

/* Rank 0: take every update that has arrived (without waiting). */
static bool drain(struct progress *p) {
    bool any = false;
    for (;;) {
        int flag = 0;
        MPI_Status stt;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_PROGRESS, p->comm, &flag, &stt);
        if (!flag) return any;
        double msg[3];
        MPI_Recv(msg, 3, MPI_DOUBLE, stt.MPI_SOURCE, TAG_PROGRESS, p->comm, MPI_STATUS_IGNORE);
        struct rank_state *s = &p->st[stt.MPI_SOURCE];
        s->done = msg[0], s->total = msg[1], s->final = (int)msg[2];
        any = true;
    }
}

static void send_state(struct progress *p, uint64_t done, uint64_t total, int final) {
    double msg[3] = {(double)done, (double)total, (double)final};
    MPI_Send(msg, 3, MPI_DOUBLE, 0, TAG_PROGRESS, p->comm); /* 24 bytes: sent eagerly, never blocks long */
}

void progress_update(void *vp, uint64_t done, uint64_t total) {
    struct progress *p = vp;
    if (!p || total == 0) return;
    int pct = (int)(100.0 * (double)done / (double)total);
    p->done = done;
    p->total = total;
    if (p->rank != 0) {
        if (pct >= p->last_sent + 2 || done >= total) {
            p->last_sent = pct;
            send_state(p, done, total, 0);
        }
        return;
    }
    p->st[0].done = (double)done;
    p->st[0].total = (double)total;
    bool changed = drain(p) || pct != p->last_sent;
    p->last_sent = pct;
    if (changed) draw(p);
}

void progress_end(struct progress *p) {
    if (!p) return;
    if (p->rank != 0) {
        send_state(p, p->done, p->total, 1);
    } else {
        p->st[0].final = 1;
        for (;;) {
            drain(p);
            int waiting = 0;
            for (int r = 1; r < p->size; r++) waiting += !p->st[r].final;
            if (!waiting) break;
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
        draw(p);
        free(p->st);
    }
    MPI_Comm_free(&p->comm);
    free(p);
}
