/* comm_device.c - choose the device transport of comm.h: NCCL when every rank has a GPU
 * of its own, host-staged MPI when two ranks share one (NCCL refuses duplicate GPUs) or
 * a rank sets TPLLM_NCCL=0.
 *
 * Every rank sends its GPU's UUID and PCI bus id over the MPI communicator; two ranks
 * share a GPU when the UUIDs match, or when the bus ids match on the same host (NCCL's
 * own rule, which also catches MIG instances of one board). All ranks see the same table
 * and so make the same choice. */
#include "comm_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One rank's GPU, as exchanged (fixed layout, zero-padded). */
struct gpu_rec {
    char bus[32];
    unsigned char uuid[16];
    int32_t no_nccl; /* TPLLM_NCCL=0 on this rank */
    int32_t pad;
};

static bool uuid_set(const unsigned char *u) {
    for (int i = 0; i < 16; i++)
        if (u[i]) return true;
    return false;
}

static bool same_gpu(const struct comm *mpi, const struct gpu_rec *a, int ra, const struct gpu_rec *b, int rb) {
    if (uuid_set(a->uuid) && memcmp(a->uuid, b->uuid, sizeof a->uuid) == 0) return true;
    return a->bus[0] && strcmp(a->bus, b->bus) == 0 && strcmp(comm_peer_host(mpi, ra), comm_peer_host(mpi, rb)) == 0;
}

/* This rank's record; TP_EIO/EINVAL with the reason when the device cannot be queried. */
static int gpu_local(const struct comm *mpi, int device, struct gpu_rec *me, tp_err *e) {
    memset(me, 0, sizeof *me);
    const char *env = getenv("TPLLM_NCCL");
    me->no_nccl = env && strcmp(env, "0") == 0;
    int n_dev = 0;
    cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err == cudaSuccess && (device < 0 || device >= n_dev))
        return tp_errf(e, TP_EINVAL,
                       "comm_create_device: rank %d on host %s: CUDA device %d does not exist (this host has %d); give "
                       "each rank a device in 0..%d, e.g. local rank %% %d",
                       mpi->topo.rank, mpi->topo.host, device, n_dev, n_dev - 1, n_dev > 0 ? n_dev : 1);
    struct cudaDeviceProp prop;
    if (err == cudaSuccess) err = cudaDeviceGetPCIBusId(me->bus, (int)sizeof me->bus, device);
    if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, device);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return tp_errf(e, TP_EIO, "comm_create_device: rank %d on host %s: cannot query CUDA device %d: %s (%s)",
                       mpi->topo.rank, mpi->topo.host, device, cudaGetErrorString(err), cudaGetErrorName(err));
    }
    me->bus[sizeof me->bus - 1] = '\0';
    memcpy(me->uuid, prop.uuid.bytes, sizeof me->uuid);
    return 0;
}

int comm_dev_find_shared(struct comm *mpi, int device, struct comm_gpu_share *out, tp_err *e) {
    memset(out, 0, sizeof *out);
    out->r1 = out->r2 = -1;
    struct gpu_rec me;
    int rc = gpu_local(mpi, device, &me, e);
    if ((rc = comm_any_error(mpi, rc, NULL, e))) return rc;
    int n = mpi->topo.size;
    struct gpu_rec *all = calloc((size_t)n, sizeof *all);
    rc = all ? 0 : tp_errf(e, TP_ENOMEM, "comm_create_device: cannot allocate the GPU table of %d ranks", n);
    if ((rc = comm_any_error(mpi, rc, NULL, e))) {
        free(all);
        return rc;
    }
    all[mpi->topo.rank] = me;
    if ((rc = comm_all_gather(mpi, &all[mpi->topo.rank], all, sizeof *all, e))) {
        free(all);
        return rc;
    }
    for (int b = 0; b < n; b++) {
        out->no_nccl += all[b].no_nccl != 0;
        for (int a = 0; a < b; a++) {
            if (!same_gpu(mpi, &all[a], a, &all[b], b)) continue;
            if (out->n_shared++ == 0) {
                out->r1 = a;
                out->r2 = b;
                snprintf(out->bus, sizeof out->bus, "%s", all[a].bus);
                snprintf(out->host, sizeof out->host, "%s", comm_peer_host(mpi, a));
            }
            break;
        }
    }
    free(all);
    return 0;
}

int comm_create_device(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    if (!out) return tp_errf(e, TP_EINVAL, "comm_create_device: NULL output pointer");
    *out = NULL;
    int rc = comm_dev_check_mpi(mpi, "comm_create_device", e);
    if (rc) return rc;
    struct comm_gpu_share sh;
    if ((rc = comm_dev_find_shared(mpi, device, &sh, e))) return rc;
    if (sh.n_shared == 0 && sh.no_nccl == 0) return comm_nccl_create(out, mpi, device, timeout_s, e);
    bool warn = mpi->topo.rank == 0;
    if (sh.n_shared) {
        if (warn) {
            char more[64] = "";
            if (sh.n_shared > 1) snprintf(more, sizeof more, " (and %d more ranks share a GPU)", sh.n_shared - 1);
            fprintf(stderr,
                    "tpllm: warning: ranks %d and %d share GPU %s on host %s%s: NCCL cannot run two ranks on one GPU; "
                    "using host-staged MPI collectives (slower) so tensor parallelism still works\n",
                    sh.r1, sh.r2, sh.bus, sh.host, more);
        }
        return comm_staged_create(out, mpi, device, timeout_s, "GPU shared", e);
    }
    if (warn)
        fprintf(stderr,
                "tpllm: warning: TPLLM_NCCL=0 on %d rank%s: using host-staged MPI collectives (slower) instead of "
                "NCCL\n",
                sh.no_nccl, sh.no_nccl == 1 ? "" : "s");
    return comm_staged_create(out, mpi, device, timeout_s, "TPLLM_NCCL=0", e);
}
