/* cuda_check.cuh - check macros for CUDA runtime and cuBLAS calls: each failure becomes a
 * tp_err naming the call, the error and file:line, and is returned (creation paths) or
 * recorded as the backend's sticky error (ops, which return void).
 *
 * Two families:
 *   CUDA_TRY(e, call) / CUBLAS_TRY(e, call)     in functions returning a status: fill `e`
 *                                               and return the negative status.
 *   CUDA_OP(cb, call) / CUBLAS_OP(cb, call)     in ops: record into cb->err (first failure
 *                                               wins) and return from the void op.
 *   CUDA_LAUNCHED(cb)                           after every kernel launch in an op: checks
 *                                               cudaGetLastError (bad configuration, too
 *                                               many resources) the same way. */
#ifndef TPLLM_CUDA_CHECK_CUH
#define TPLLM_CUDA_CHECK_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "../base.h"
}

struct cuda_backend;

/* Record a failed call in e; returns TP_ENOMEM for allocation failures, TP_EIO otherwise. */
int cuda_fail(tp_err *e, cudaError_t err, const char *call, const char *file, int line);
int cublas_fail(tp_err *e, cublasStatus_t st, const char *call, const char *file, int line);
/* Record a failure inside an op as the backend's sticky error (first one kept, printed
 * once to stderr, since ops have no status to return it through). */
void cuda_op_failf(struct cuda_backend *cb, int code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
const char *cublas_status_name(cublasStatus_t st);

#define CUDA_TRY(e, call)                                                                   \
    do {                                                                                    \
        cudaError_t err_ = (call);                                                          \
        if (err_ != cudaSuccess) return cuda_fail((e), err_, #call, __FILE__, __LINE__);    \
    } while (0)

#define CUBLAS_TRY(e, call)                                                                 \
    do {                                                                                    \
        cublasStatus_t st_ = (call);                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS) return cublas_fail((e), st_, #call, __FILE__, __LINE__); \
    } while (0)

#define CUDA_OP(cb, call)                                                                   \
    do {                                                                                    \
        cudaError_t err_ = (call);                                                          \
        if (err_ != cudaSuccess) {                                                          \
            cuda_op_failf((cb), err_ == cudaErrorMemoryAllocation ? TP_ENOMEM : TP_EIO,     \
                          __FILE__, __LINE__, "%s: %s (%s)", #call, cudaGetErrorName(err_), \
                          cudaGetErrorString(err_));                                        \
            return;                                                                         \
        }                                                                                   \
    } while (0)

#define CUBLAS_OP(cb, call)                                                                 \
    do {                                                                                    \
        cublasStatus_t st_ = (call);                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                 \
            cuda_op_failf((cb), TP_EIO, __FILE__, __LINE__, "%s: %s", #call,                \
                          cublas_status_name(st_));                                         \
            return;                                                                         \
        }                                                                                   \
    } while (0)

#define CUDA_LAUNCHED(cb) CUDA_OP((cb), cudaGetLastError())

/* An op's precondition: on failure record TP_EINVAL with the message and return. */
#define CUDA_REQUIRE(cb, cond, ...)                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            cuda_op_failf((cb), TP_EINVAL, __FILE__, __LINE__, __VA_ARGS__);                \
            return;                                                                         \
        }                                                                                   \
    } while (0)

#endif
