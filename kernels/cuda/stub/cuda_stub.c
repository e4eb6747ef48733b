/* cuda_stub.c - the CUDA entry points of a build without CUDA: creation fails with a
 * message that says how to get a CUDA build, and nothing claims CUDA support. */
#include "../../kernels.h"

#include <stdio.h>

/* Always TP_EUNSUPPORTED: this library has no CUDA backend. *out is set to NULL. */
int kbackend_cuda_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e) {
    (void)o;
    *out = NULL;
    return tp_errf(e, TP_EUNSUPPORTED,
                   "this tpllm was built without CUDA; rebuild with nvcc on PATH (cmake -DTPLLM_CUDA=ON) or use "
                   "--backend cpu");
}

bool kbackend_cuda_compiled(void) { return false; }

/* Same contract as the CUDA build's: a CUDA backend cannot exist here, so any backend is
 * described by its table name. */
void kbackend_cuda_describe(const struct kbackend *b, char *buf, size_t n) {
    if (!buf || n == 0) return;
    snprintf(buf, n, "%s", b ? b->ops->name : "none");
}

/* No CUDA backend, no CUDA failures: always 0. */
int kbackend_cuda_status(struct kbackend *b, tp_err *e) {
    (void)b;
    (void)e;
    return 0;
}
