/* cuda_stub.c - the CUDA entry points of a build without CUDA: creation fails with a
 * message that says how to get a CUDA build, and nothing claims CUDA support. */
#include "../../kernels.h"

/* Always TP_EUNSUPPORTED: this library has no CUDA backend. *out is set to NULL. */
int kbackend_cuda_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e) {
    (void)o;
    *out = NULL;
    return tp_errf(e, TP_EUNSUPPORTED,
                   "this tpllm was built without CUDA; rebuild with nvcc on PATH (cmake -DTPLLM_CUDA=ON) or use "
                   "--backend cpu");
}

bool kbackend_cuda_compiled(void) { return false; }

/* No CUDA backend, no CUDA failures: always 0. */
int kbackend_cuda_status(struct kbackend *b, tp_err *e) {
    (void)b;
    (void)e;
    return 0;
}

/* No CUDA backend: no stream. */
void *kbackend_cuda_stream(struct kbackend *b) {
    (void)b;
    return NULL;
}

/* No CUDA: no devices. */
int kbackend_cuda_device_count(void) { return 0; }
