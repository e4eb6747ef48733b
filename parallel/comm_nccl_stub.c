/* comm_nccl_stub.c - the device communicators of comm.h in a build without CUDA/NCCL:
 * each create function refuses with TP_EUNSUPPORTED and says how to get them. */
#include "comm.h"

#include <stddef.h>

#ifndef TPLLM_HAVE_CUDA
static int comm_no_device(struct comm **out, const char *fn, tp_err *e) {
    if (out) *out = NULL;
    return tp_errf(e, TP_EUNSUPPORTED,
                   "%s: tpllm was built without CUDA/NCCL; rebuild with -DTPLLM_CUDA=ON (needs nvcc and NCCL), "
                   "or run on the CPU with the MPI communicator",
                   fn);
}

int comm_create_nccl(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    return comm_no_device(out, "comm_create_nccl", e);
}

int comm_create_staged(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    return comm_no_device(out, "comm_create_staged", e);
}

int comm_create_device(struct comm **out, struct comm *mpi, int device, double timeout_s, tp_err *e) {
    return comm_no_device(out, "comm_create_device", e);
}
#endif
