/* cuda_backend.cu - the CUDA backend: creation on one device (stream, cuBLAS handle,
 * scratch sized from kbackend_opts, every kernel's launch settings checked against the
 * device's limits), its op table, memory functions, description and sticky op errors. */
#include "cuda_internal.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors ---- */

const char *cublas_status_name(cublasStatus_t st) {
    switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_(unknown)";
    }
}

int cuda_fail(tp_err *e, cudaError_t err, const char *call, const char *file, int line) {
    const int code = err == cudaErrorMemoryAllocation ? TP_ENOMEM : TP_EIO;
    return tp_errf(e, code, "%s:%d: %s: %s (%s)", file, line, call, cudaGetErrorName(err), cudaGetErrorString(err));
}

int cublas_fail(tp_err *e, cublasStatus_t st, const char *call, const char *file, int line) {
    const int code = st == CUBLAS_STATUS_ALLOC_FAILED ? TP_ENOMEM : TP_EIO;
    return tp_errf(e, code, "%s:%d: %s: %s", file, line, call, cublas_status_name(st));
}

void cuda_op_failf(struct cuda_backend *cb, int code, const char *file, int line, const char *fmt, ...) {
    if (cb->err.code) return; /* the first failure is the informative one */
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tp_errf(&cb->err, code, "cuda backend (device %d): %s:%d: %s", cb->device, file, line, msg);
    if (!cb->err_printed) {
        /* Ops return void, so nothing else would tell the user until kbackend_cuda_status. */
        fprintf(stderr, "tpllm: %s\n", cb->err.msg);
        cb->err_printed = true;
    }
}

/* ---- memory ---- */

void *cuda_mem_alloc(struct cuda_backend *cb, size_t bytes) {
    if (bytes == 0) return NULL;
    size_t sz;
    if (!tp_add_size(bytes, 255, &sz)) return NULL;
    sz &= ~(size_t)255;
    void *p = NULL;
    if (cudaSetDevice(cb->device) != cudaSuccess) return NULL;
    if (cudaMalloc(&p, sz) != cudaSuccess) {
        (void)cudaGetLastError(); /* an allocation failure is not sticky; keep later calls clean */
        return NULL;
    }
    return p;
}

void *cuda_scratch_alloc(struct cuda_backend *cb, size_t bytes) {
    void *p = cuda_mem_alloc(cb, bytes);
    if (p) cb->scratch_bytes += TP_ALIGN_UP(bytes, (size_t)256);
    return p;
}

void cuda_mem_free(struct cuda_backend *cb, void *p) {
    if (!p) return;
    (void)cudaSetDevice(cb->device);
    cudaFree(p); /* synchronizes the device: nothing queued can still use p */
}

int cuda_kernel_check(struct cuda_backend *cb, const void *func, int threads, size_t dyn_smem, const char *name,
                      tp_err *e) {
    cudaFuncAttributes a;
    const cudaError_t err = cudaFuncGetAttributes(&a, func);
    if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
        (void)cudaGetLastError();
        return tp_errf(e, TP_EUNSUPPORTED, "cuda backend: this build has no kernels for %s (sm_%d%d); rebuild with "
                       "-DTPLLM_CUDA_ARCHS=%d%d (or use --backend cpu)", cb->dev_name, cb->cc_major, cb->cc_minor,
                       cb->cc_major, cb->cc_minor);
    }
    if (err != cudaSuccess) return cuda_fail(e, err, "cudaFuncGetAttributes", __FILE__, __LINE__);
    if (threads > a.maxThreadsPerBlock)
        return tp_errf(e, TP_EUNSUPPORTED, "cuda backend: kernel %s needs %d threads per block but %s (sm_%d%d) "
                       "allows it %d (%d registers per thread); this build does not fit the device",
                       name, threads, cb->dev_name, cb->cc_major, cb->cc_minor, a.maxThreadsPerBlock, a.numRegs);
    const size_t total = a.sharedSizeBytes + dyn_smem;
    if (total > cb->smem_per_block_optin)
        return tp_errf(e, TP_EUNSUPPORTED, "cuda backend: kernel %s needs %zu bytes of shared memory per block but "
                       "%s allows %zu; this build does not fit the device", name, total, cb->dev_name,
                       cb->smem_per_block_optin);
    if (dyn_smem > 48 * 1024 || total > cb->smem_per_block)
        CUDA_TRY(e, cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn_smem));
    return 0;
}

/* ---- the op table ---- */

namespace {

/* NULL on failure, which is not sticky: the caller decides what an allocation failure means. */
void *op_alloc(struct kbackend *b, size_t bytes) { return cuda_mem_alloc(cuda_of(b), bytes ? bytes : 1); }

void op_free(struct kbackend *b, void *p) { cuda_mem_free(cuda_of(b), p); }

void op_upload(struct kbackend *b, void *dst, const void *src, size_t bytes) {
    cuda_backend *cb = cuda_enter(b);
    if (!bytes) return;
    CUDA_OP(cb, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream));
    CUDA_OP(cb, cudaStreamSynchronize(cb->stream)); /* src may be reused on return */
}

void op_download(struct kbackend *b, void *dst, const void *src, size_t bytes) {
    cuda_backend *cb = cuda_enter(b);
    if (!bytes) return;
    CUDA_OP(cb, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream));
    CUDA_OP(cb, cudaStreamSynchronize(cb->stream));
}

int op_mem_info(struct kbackend *b, int64_t *free_bytes, int64_t *total_bytes) {
    cuda_backend *cb = cuda_of(b);
    size_t f = 0, t = 0;
    cudaError_t err = cudaSetDevice(cb->device);
    if (err == cudaSuccess) err = cudaMemGetInfo(&f, &t);
    if (err != cudaSuccess) {
        cuda_op_failf(cb, TP_EIO, __FILE__, __LINE__, "cudaMemGetInfo: %s (%s)", cudaGetErrorName(err),
                      cudaGetErrorString(err));
        return TP_EIO;
    }
    if (free_bytes) *free_bytes = (int64_t)f;
    if (total_bytes) *total_bytes = (int64_t)t;
    return 0;
}

void op_sync(struct kbackend *b) {
    cuda_backend *cb = cuda_enter(b);
    CUDA_OP(cb, cudaStreamSynchronize(cb->stream));
}

void op_destroy(struct kbackend *b) {
    if (!b) return;
    cuda_backend *cb = cuda_of(b);
    if (cb) {
        cudaSetDevice(cb->device);
        if (cb->stream) cudaStreamSynchronize(cb->stream);
        if (cb->blas) cublasDestroy(cb->blas);
        void *bufs[] = {cb->act_q, cb->act_d, cb->act_s, cb->act_bs, cb->act_h, cb->w_tile,
                        cb->blas_ws, cb->tk_idx, cb->tk_val, cb->tk_lse, cb->gelu_tab, cb->att_sc, cb->att_sl};
        for (size_t i = 0; i < TP_ARRAY_LEN(bufs); i++) cuda_mem_free(cb, bufs[i]);
        if (cb->stream) cudaStreamDestroy(cb->stream);
        free(cb);
    }
    free(b);
}

/* "cuda: NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB), device 0, runtime 13.0, driver 13.0, cuBLAS 130000" */
void op_describe(const struct kbackend *b, char *buf, size_t n) {
    if (!buf || n == 0) return;
    const cuda_backend *cb = cuda_of(b);
    snprintf(buf, n, "cuda: %s (sm_%d%d, %d SMs, %.1f GiB), device %d, runtime %d.%d, driver %d.%d, cuBLAS %d",
             cb->dev_name, cb->cc_major, cb->cc_minor, cb->n_sm, (double)cb->total_mem / (1 << 30), cb->device,
             cb->runtime_version / 1000, cb->runtime_version % 1000 / 10, cb->driver_version / 1000,
             cb->driver_version % 1000 / 10, cb->cublas_version);
}

const struct kops cuda_ops = {
    .name = "cuda",
    .destroy = op_destroy,
    .describe = op_describe,
    .alloc = op_alloc,
    .free = op_free,
    .upload = op_upload,
    .download = op_download,
    .sync = op_sync,
    .matmul = cuda_matmul,
    .matmul_n = nullptr, /* one cuda_matmul per weight */
    .matmul_f64 = cuda_matmul_f64,
    .prepare_weight = nullptr, /* weights stay in the GGUF layout on the GPU */
    .reduce_f64 = cuda_reduce_f64,
    .get_rows = cuda_get_rows,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .gated_act = cuda_gated_act,
    .add = cuda_add,
    .scale = cuda_scale,
    .add_bias = cuda_add_bias,
    .mem_info = op_mem_info,
    .topk = cuda_topk,
};

/* Device facts, stream and cuBLAS handle. */
int cuda_backend_open(cuda_backend *cb, tp_err *e) {
    int n_dev = 0;
    cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return tp_errf(e, TP_EUNSUPPORTED, "cuda backend: no usable CUDA device (%s); check nvidia-smi and the "
                       "driver, or use --backend cpu",
                       err != cudaSuccess ? cudaGetErrorString(err) : "device count is 0");
    }
    if (cb->device < 0 || cb->device >= n_dev)
        return tp_errf(e, TP_EINVAL, "cuda backend: device %d does not exist (this node has %d); check "
                       "CUDA_VISIBLE_DEVICES and the ranks per node", cb->device, n_dev);
    CUDA_TRY(e, cudaSetDevice(cb->device));
    cudaDeviceProp prop;
    CUDA_TRY(e, cudaGetDeviceProperties(&prop, cb->device));
    snprintf(cb->dev_name, sizeof cb->dev_name, "%s", prop.name);
    cb->cc_major = prop.major;
    cb->cc_minor = prop.minor;
    cb->n_sm = prop.multiProcessorCount;
    cb->smem_per_block = prop.sharedMemPerBlock;
    cb->smem_per_block_optin = prop.sharedMemPerBlockOptin;
    cb->total_mem = prop.totalGlobalMem;
    if (prop.major < 6 || (prop.major == 6 && prop.minor < 1))
        return tp_errf(e, TP_EUNSUPPORTED, "cuda backend: %s is sm_%d%d; the kernels need sm_61 or newer (dp4a); "
                       "use --backend cpu", prop.name, prop.major, prop.minor);
    CUDA_TRY(e, cudaRuntimeGetVersion(&cb->runtime_version));
    CUDA_TRY(e, cudaDriverGetVersion(&cb->driver_version));
    CUDA_TRY(e, cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(e, cublasCreate(&cb->blas));
    CUBLAS_TRY(e, cublasSetStream(cb->blas, cb->stream)); /* before SetWorkspace: SetStream resets it */
    CUBLAS_TRY(e, cublasSetMathMode(cb->blas, CUBLAS_DEFAULT_MATH));
    CUBLAS_TRY(e, cublasGetVersion(cb->blas, &cb->cublas_version));
    return 0;
}

} // namespace

/* Creates the backend on o->device: checks the device (sm_61+), creates a stream and a
 * cuBLAS handle, allocates scratch for o->max_tokens rows of o->max_in inputs, and checks
 * every kernel's launch configuration against the device. Returns 0 and *out, or a negative
 * status (TP_EUNSUPPORTED when no device is usable) with `e` filled and *out NULL.
 * Release with kbackend_free. */
int kbackend_cuda_create(struct kbackend **out, const struct kbackend_opts *o, tp_err *e) {
    *out = NULL;
    if (o->max_tokens < 0 || o->max_in < 0 || o->max_ctx < 0 || o->max_heads < 0)
        return tp_errf(e, TP_EINVAL, "cuda backend: negative size in options (tokens %lld, in %lld, ctx %lld, heads "
                       "%lld); give sizes >= 0", (long long)o->max_tokens, (long long)o->max_in,
                       (long long)o->max_ctx, (long long)o->max_heads);
    struct kbackend *b = static_cast<struct kbackend *>(calloc(1, sizeof *b));
    cuda_backend *cb = static_cast<cuda_backend *>(calloc(1, sizeof *cb));
    if (!b || !cb) {
        free(b);
        free(cb);
        return tp_errf(e, TP_ENOMEM, "cuda backend: out of host memory");
    }
    b->ops = &cuda_ops;
    b->impl = cb;
    cb->opts = *o;
    cb->device = o->device;
    int rc = cuda_backend_open(cb, e);
    if (!rc) rc = cuda_matmul_init(cb, e);
    if (!rc) rc = cuda_dequant_init(cb, e);
    if (!rc) rc = cuda_matmul_f64_init(cb, e);
    if (!rc) rc = cuda_ops_init(cb, e);
    if (!rc) rc = cuda_attention_init(cb, e);
    if (!rc) rc = cuda_topk_init(cb, e);
    if (rc) {
        op_destroy(b);
        return rc;
    }
    b->workspace_bytes = cb->scratch_bytes;
    *out = b;
    return 0;
}

bool kbackend_cuda_compiled(void) { return true; }

/* The first failure recorded inside an op of a CUDA backend (ops return void), plus any
 * asynchronous kernel error now pending on its stream. Returns 0 when none (and for a
 * backend that is not CUDA), else the status with `e` filled. The record stays. */
extern "C" int kbackend_cuda_status(struct kbackend *b, tp_err *e) {
    if (!b || b->ops != &cuda_ops) return 0;
    cuda_backend *cb = cuda_enter(b);
    if (!cb->err.code) {
        const cudaError_t err = cudaStreamQuery(cb->stream);
        /* "not ready" is no failure, but the runtime records it as the last error: clear
         * it, or the next launch check (cudaGetLastError) would report it against an op */
        if (err == cudaErrorNotReady) (void)cudaGetLastError();
        if (err != cudaSuccess && err != cudaErrorNotReady)
            cuda_op_failf(cb, TP_EIO, __FILE__, __LINE__, "asynchronous failure: %s (%s)", cudaGetErrorName(err),
                          cudaGetErrorString(err));
    }
    if (!cb->err.code) return 0;
    return tp_errf(e, cb->err.code, "%s", cb->err.msg);
}

/* The stream every op of this backend is queued on (NULL for another backend). */
extern "C" void *kbackend_cuda_stream(struct kbackend *b) {
    if (!b || b->ops != &cuda_ops) return NULL;
    return (void *)cuda_of(b)->stream;
}

/* Devices visible to this process; 0 when the driver reports none or an error. */
extern "C" int kbackend_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: "no device" is an answer here, not a failure */
        return 0;
    }
    return n;
}
