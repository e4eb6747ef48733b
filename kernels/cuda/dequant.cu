/* dequant.cu - dequantizing whole weight rows on the device: get_rows (embedding lookup,
 * float output) and the f16 weight tiles of matmul's cuBLAS path.
 *
 * Math: out[r][i] = dequant(W[row(r)])[i], row(r) = ids[r] (get_rows) or o0 + r (tiles),
 * with ggml's dequantize_row_* arithmetic (quant_blocks.cuh), so get_rows is bit-identical
 * to the CPU. Tiles are rounded to f16 (values beyond the f16 range saturate at +-65504).
 * One thread per 32-element unit: adjacent threads read adjacent blocks and write
 * adjacent 64/128-byte pieces of the output. */
#include "cuda_internal.cuh"
#include "quant_blocks.cuh"

namespace {

constexpr int DQ_THREADS = 256;

__device__ __forceinline__ void store_unit(float *dst, const float *v) {
    float4 *d4 = reinterpret_cast<float4 *>(dst);
#pragma unroll
    for (int k = 0; k < 8; k++) d4[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

__device__ __forceinline__ __half f16_sat(float v) {
    return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
}

__device__ __forceinline__ void store_unit(__half *dst, const float *v) {
    uint4 *d4 = reinterpret_cast<uint4 *>(dst);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        __half2 h[4];
#pragma unroll
        for (int j = 0; j < 4; j++) h[j] = __halves2half2(f16_sat(v[8 * k + 2 * j]), f16_sat(v[8 * k + 2 * j + 1]));
        uint4 u;
        u.x = *reinterpret_cast<uint32_t *>(&h[0]);
        u.y = *reinterpret_cast<uint32_t *>(&h[1]);
        u.z = *reinterpret_cast<uint32_t *>(&h[2]);
        u.w = *reinterpret_cast<uint32_t *>(&h[3]);
        d4[k] = u;
    }
}

/* out[r][0..n_in) = dequantized row (ids ? ids[r] : o0 + r) of w, for r < rows. A row id
 * outside [0, n_rows) gives zeros. out's rows are n_in long (n_in % 32 == 0, out aligned). */
template <int T, class OutT>
__global__ void __launch_bounds__(DQ_THREADS)
dequant_rows_kernel(OutT *__restrict__ out, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_rows,
                    const int32_t *__restrict__ ids, int64_t o0, int64_t rows, int64_t n_in) {
    using Q = qtraits<T>;
    const int64_t upr = n_in / 32, total = rows * upr;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / upr, ur = i % upr;
        const int64_t src = ids ? (int64_t)ids[r] : o0 + r;
        float v[32];
        if (src >= 0 && src < n_rows) {
            const uint8_t *blk = w + src * row_stride + (ur / Q::UPB) * Q::TS;
            unit_dequant<T>(blk, (int)(ur % Q::UPB), v);
        } else {
#pragma unroll
            for (int j = 0; j < 32; j++) v[j] = 0.0f;
        }
        store_unit(out + r * n_in + ur * 32, v);
    }
}

/* get_rows for the float formats: element-wise conversion to f32 (exact). */
template <int T>
__global__ void __launch_bounds__(DQ_THREADS)
float_rows_kernel(float *__restrict__ out, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_rows,
                  const int32_t *__restrict__ ids, int64_t rows, int64_t n_in) {
    const int64_t total = rows * n_in;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / n_in, c = i % n_in;
        const int64_t src = ids[r];
        float v = 0.0f;
        if (src >= 0 && src < n_rows) {
            const uint8_t *row = w + src * row_stride;
            if (T == DTYPE_F32) v = reinterpret_cast<const float *>(row)[c];
            else if (T == DTYPE_F16) v = __half2float(reinterpret_cast<const __half *>(row)[c]);
            else v = __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(row)[c] << 16);
        }
        out[i] = v;
    }
}

template <class OutT> struct dq_launch {
    cuda_backend *cb;
    OutT *out;
    const kmat *w;
    const int32_t *ids;
    int64_t o0, rows;
    template <int T> void run() {
        const int64_t units = rows * (w->n_in / 32);
        dequant_rows_kernel<T, OutT><<<cuda_grid_1d(units, DQ_THREADS), DQ_THREADS, 0, cb->stream>>>(
            out, static_cast<const uint8_t *>(w->data), w->row_stride, w->n_out, ids, o0, rows, w->n_in);
    }
};

template <class OutT> struct dq_check {
    cuda_backend *cb;
    tp_err *e;
    int rc;
    template <int T> void run() {
        if (!rc) rc = cuda_kernel_check(cb, (const void *)dequant_rows_kernel<T, OutT>, DQ_THREADS, 0, "dequant_rows", e);
    }
};

} // namespace

void cuda_dequant_rows_f16(struct cuda_backend *cb, __half *out, const struct kmat *w, int64_t o0, int64_t rows) {
    if (rows <= 0) return;
    dq_launch<__half> l{cb, out, w, nullptr, o0, rows};
    if (!qtype_dispatch(w->type, l)) {
        cuda_op_failf(cb, TP_EUNSUPPORTED, __FILE__, __LINE__, "matmul: no f16 tile path for weight type %s",
                      dtype_name(w->type));
        return;
    }
    CUDA_LAUNCHED(cb);
}

/* out[r] = row ids[r] of the table, for r < n. ids, out and the table are device memory; an
 * id outside the table gives a row of zeros (the caller validates token ids). */
void cuda_get_rows(struct kbackend *b, float *out, const struct kmat *table, const int32_t *ids, int64_t n) {
    cuda_backend *cb = cuda_enter(b);
    if (n <= 0 || table->n_in <= 0) return;
    const dtype_info *di = dtype_get(table->type);
    CUDA_REQUIRE(cb, di && dtype_supported(table->type), "get_rows: table type %s is not supported",
                 dtype_name(table->type));
    CUDA_REQUIRE(cb, table->n_in % di->block_size == 0, "get_rows: row of %lld elements is not a whole number of %s blocks",
                 (long long)table->n_in, di->name);
    CUDA_REQUIRE(cb, (((uintptr_t)table->data | table->row_stride) & (table->type == DTYPE_F32 ? 3 : 1)) == 0,
                 "get_rows: %s table at %p with row stride %zu is misaligned", di->name, table->data, table->row_stride);
    CUDA_REQUIRE(cb, ((uintptr_t)out & 15) == 0 || di->block_size == 1,
                 "get_rows: output %p must be 16-byte aligned", (void *)out);
    const uint8_t *w = static_cast<const uint8_t *>(table->data);
    switch (table->type) {
    case DTYPE_F32:
        float_rows_kernel<DTYPE_F32><<<cuda_grid_1d(n * table->n_in, DQ_THREADS), DQ_THREADS, 0, cb->stream>>>(
            out, w, table->row_stride, table->n_out, ids, n, table->n_in);
        break;
    case DTYPE_F16:
        float_rows_kernel<DTYPE_F16><<<cuda_grid_1d(n * table->n_in, DQ_THREADS), DQ_THREADS, 0, cb->stream>>>(
            out, w, table->row_stride, table->n_out, ids, n, table->n_in);
        break;
    case DTYPE_BF16:
        float_rows_kernel<DTYPE_BF16><<<cuda_grid_1d(n * table->n_in, DQ_THREADS), DQ_THREADS, 0, cb->stream>>>(
            out, w, table->row_stride, table->n_out, ids, n, table->n_in);
        break;
    default: {
        dq_launch<float> l{cb, out, table, ids, 0, n};
        if (!qtype_dispatch(table->type, l)) {
            cuda_op_failf(cb, TP_EUNSUPPORTED, __FILE__, __LINE__, "get_rows: table type %s is not supported",
                          dtype_name(table->type));
            return;
        }
    }
    }
    CUDA_LAUNCHED(cb);
}

int cuda_dequant_init(struct cuda_backend *cb, tp_err *e) {
    dq_check<float> cf{cb, e, 0};
    for (int t = 0; t < DTYPE_COUNT && !cf.rc; t++) qtype_dispatch((enum dtype)t, cf);
    if (cf.rc) return cf.rc;
    dq_check<__half> ch{cb, e, 0};
    for (int t = 0; t < DTYPE_COUNT && !ch.rc; t++) qtype_dispatch((enum dtype)t, ch);
    if (ch.rc) return ch.rc;
    int rc;
    if ((rc = cuda_kernel_check(cb, (const void *)float_rows_kernel<DTYPE_F32>, DQ_THREADS, 0, "float_rows", e))) return rc;
    if ((rc = cuda_kernel_check(cb, (const void *)float_rows_kernel<DTYPE_F16>, DQ_THREADS, 0, "float_rows", e))) return rc;
    return cuda_kernel_check(cb, (const void *)float_rows_kernel<DTYPE_BF16>, DQ_THREADS, 0, "float_rows", e);
}
