/* matmul.cu - y[t][o] = sum_i W[o][i] x[t][i] on the GPU for every weight type, numerically
 * following the CPU backend (ggml's vec_dot scheme).
 *
 * Math. The activation rows are first converted to the weight type's dot-product format,
 * exactly as the CPU backend does it (kernels/cpu/simd_dot.h; bit-identical quants and scales):
 *   F32 -> F32, F16 -> F16, BF16 -> BF16,
 *   Q4_0/Q5_0/Q8_0 -> Q8_0: d = amax/127, q = rint(x*(127/amax)), d stored as fp16,
 *   Q4_1/Q5_1      -> Q8_1: as Q8_0, plus s = fp16(d * sum(q)),
 *   K-quants       -> Q8_K: d = max/-127 per 256 (max: the value of largest |x|),
 *                           q = min(127, rint(x * -127/max)), bsums per 16, d as float.
 * Division and rounding use the IEEE intrinsics (__fdiv_rn, __frcp_rn, __fmul_rn), so
 * --use_fast_math does not change a single quant. The dot products then use the same
 * integer sums as ggml (dp4a over int8 weights/activations, quant_blocks.cuh); only the
 * float combination of per-32-element partial sums is in a different order, so the GPU
 * result differs from the CPU's by float rounding alone (about 1e-7 relative to the sum of
 * |terms|).
 *
 * Decode (n_tok <= CUDA_MATVEC_MAX_TOK): one warp per output row computes all n_tok dot
 * products, so each weight byte is read once. The warp streams its row through shared
 * memory in segments of 64 units (32-element pieces): every lane issues its 16-byte loads
 * of the next segment (aligned window around the segment's bytes, any block size and row
 * alignment) before computing the current one from shared memory, keeping several loads
 * in flight per lane. F32/F16/BF16 weights use plain 16-byte vector loads instead.
 *
 * Prompts (n_tok > CUDA_MATVEC_MAX_TOK): cuBLAS GemmEx with f32 output and f32 compute.
 * F32, F16 and BF16 weights are used in place (activations converted to the weight's
 * format as above, so products are exact in f32, like the CPU). Quantized weights are
 * dequantized to f16 tiles of up to 64 MiB and the activations go through the same
 * q8 quantization as the CPU and are then expanded to f16: the difference to the CPU is
 * the f16 rounding of both operands (relative 2^-11 each, random sign). */
#include "cuda_internal.cuh"
#include "quant_blocks.cuh"

#include <limits.h>
#include <stdio.h>

namespace {

constexpr int MV_WARPS = 4;
constexpr int MV_THREADS = 32 * MV_WARPS;
constexpr int QUANT_THREADS = 256;
constexpr size_t TILE_BYTES = (size_t)64 << 20;    /* budget of the f16 weight tile */
constexpr size_t BLAS_WS_BYTES = (size_t)32 << 20; /* cuBLAS workspace (Hopper wants 32 MiB) */

/* ---- activation conversion ---- */

/* Q8_0 (Q81 false) or Q8_1 (Q81 true) of rows of n_in floats: one warp per 32-block. */
template <bool Q81>
__global__ void __launch_bounds__(QUANT_THREADS)
quant_q8_32_kernel(int8_t *__restrict__ q, float *__restrict__ dd, float *__restrict__ ss,
                   const float *__restrict__ x, int64_t n_blocks) {
    const int lane = threadIdx.x & 31;
    const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t blk = w0; blk < n_blocks; blk += nw) {
        const float v = x[blk * 32 + lane];
        float amax = fabsf(v);
#pragma unroll
        for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = __fdiv_rn(amax, 127.0f);
        const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        const int qi = __float2int_rn(__fmul_rn(v, id)); /* halves to even, as the CPU */
        q[blk * 32 + lane] = (int8_t)qi;
        if (Q81) {
            int sum = qi;
#pragma unroll
            for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane == 0) ss[blk] = __half2float(__float2half_rn(__fmul_rn((float)sum, d)));
        }
        if (lane == 0) dd[blk] = __half2float(__float2half_rn(d));
    }
}

/* Q8_K of rows of n_in floats: one warp per 256-element super-block; lane l holds
 * elements 32i + l, so a half-warp holds one group of 16 for the bsums. */
__global__ void __launch_bounds__(QUANT_THREADS)
quant_q8k_kernel(int8_t *__restrict__ q, float *__restrict__ dd, int16_t *__restrict__ bs,
                 const float *__restrict__ x, int64_t n_blocks) {
    const int lane = threadIdx.x & 31;
    const int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t blk = w0; blk < n_blocks; blk += nw) {
        const float *xb = x + blk * 256;
        float v[8], amax = 0.0f, mx = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            v[i] = xb[32 * i + lane];
            const float ax = fabsf(v[i]);
            if (ax > amax) {
                amax = ax;
                mx = v[i];
            }
        }
        /* (amax, max) pairs reduced in one total order so every lane agrees; which of +a
         * and -a wins a tie does not matter: q and d both flip sign, products do not. */
#pragma unroll
        for (int o = 16; o; o >>= 1) {
            const float oa = __shfl_xor_sync(0xffffffffu, amax, o), om = __shfl_xor_sync(0xffffffffu, mx, o);
            if (oa > amax || (oa == amax && om > mx)) {
                amax = oa;
                mx = om;
            }
        }
        int8_t *qb = q + blk * 256;
        int16_t *bb = bs + blk * 16;
        if (amax == 0.0f) {
#pragma unroll
            for (int i = 0; i < 8; i++) qb[32 * i + lane] = 0;
            if (lane < 16) bb[lane] = 0;
            if (lane == 0) dd[blk] = 0.0f;
            continue;
        }
        const float iscale = __fdiv_rn(-127.0f, mx);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int qi = min(127, __float2int_rn(__fmul_rn(iscale, v[i])));
            qb[32 * i + lane] = (int8_t)qi;
            int s = qi;
#pragma unroll
            for (int o = 8; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if ((lane & 15) == 0) bb[2 * i + (lane >> 4)] = (int16_t)s;
        }
        if (lane == 0) dd[blk] = __frcp_rn(iscale);
    }
}

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u); /* quiet NaN, as ggml */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* out[i] = x[i] as f16 (BF16 false) or bf16 (true), round to nearest even. */
template <bool BF16>
__global__ void __launch_bounds__(QUANT_THREADS)
to_half_kernel(uint16_t *__restrict__ out, const float *__restrict__ x, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        if (BF16) {
            out[i] = f32_to_bf16_bits(x[i]);
        } else {
            const __half h = __float2half_rn(x[i]);
            out[i] = *reinterpret_cast<const uint16_t *>(&h);
        }
    }
}

/* The q8 activations expanded back to f16 for cuBLAS: q * d (saturated to the f16 range). */
template <bool QK>
__global__ void __launch_bounds__(QUANT_THREADS)
q8_to_f16_kernel(__half *__restrict__ out, const int8_t *__restrict__ q, const float *__restrict__ dd, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = __fmul_rn((float)q[i], dd[QK ? i / 256 : i / 32]);
        out[i] = __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f));
    }
}

/* ---- decode: quantized weights ---- */

/* Segment geometry of a weight type: B blocks (64 units) per segment, whose bytes span at
 * most CHUNKS aligned 16-byte chunks (B*TS bytes plus up to 15 before and after), loaded
 * in LOADS rounds of 32 lanes; each warp's shared buffer holds one segment. */
template <int T> struct mvgeom {
    using Q = qtraits<T>;
    static constexpr int B = 64 / Q::UPB;
    static constexpr int CHUNKS = (B * Q::TS + 30) / 16;
    static constexpr int LOADS = (CHUNKS + 31) / 32;
    static constexpr int WARP_SMEM = LOADS * 32 * 16 + 16;
    static constexpr size_t SMEM = (size_t)WARP_SMEM * MV_WARPS;
};

/* Lane's share of segment s of row rp: 16-byte chunks lane, lane + 32, ... of the aligned
 * window [begin & ~15, end rounded up to 16). Chunks past the window read as zeros. */
template <int T>
__device__ __forceinline__ void mv_load_segment(uint4 *reg, const uint8_t *rp, int64_t s, int64_t nb, int lane) {
    using Q = qtraits<T>;
    using G = mvgeom<T>;
    const int64_t b0 = s * G::B;
    const int64_t nblk = min((int64_t)G::B, nb - b0);
    const uintptr_t begin = reinterpret_cast<uintptr_t>(rp + b0 * Q::TS);
    const uintptr_t a0 = begin & ~(uintptr_t)15;
    const int nchunks = (int)((begin + (uintptr_t)(nblk * Q::TS) + 15 - a0) >> 4);
    const uint4 *src = reinterpret_cast<const uint4 *>(a0);
#pragma unroll
    for (int i = 0; i < G::LOADS; i++) {
        const int c = lane + 32 * i;
        reg[i] = c < nchunks ? __ldg(src + c) : make_uint4(0, 0, 0, 0);
    }
}

/* y[t][row] for t < NT: warp `row` of the grid; nb blocks per row. */
template <int T, int NT>
__global__ void __launch_bounds__(MV_THREADS)
mv_quant_kernel(float *__restrict__ y, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_out,
                int64_t nb, act_q8 act) {
    using Q = qtraits<T>;
    using G = mvgeom<T>;
    extern __shared__ uint4 mv_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * MV_WARPS + warp;
    if (row >= n_out) return; /* whole warps leave; the kernel has no block-wide barrier */
    uint4 *buf = mv_smem + warp * (G::WARP_SMEM / 16);
    const uint8_t *rp = w + row * (int64_t)row_stride;
    const int64_t nseg = (nb + G::B - 1) / G::B;

    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;

    uint4 reg[G::LOADS];
    mv_load_segment<T>(reg, rp, 0, nb, lane);
    for (int64_t s = 0; s < nseg; s++) {
        __syncwarp(); /* the previous segment is no longer being read */
#pragma unroll
        for (int i = 0; i < G::LOADS; i++) buf[lane + 32 * i] = reg[i];
        __syncwarp();
        if (s + 1 < nseg) mv_load_segment<T>(reg, rp, s + 1, nb, lane); /* in flight during the math */

        const int64_t b0 = s * G::B;
        const int nunits = (int)min((int64_t)G::B, nb - b0) * Q::UPB;
        const uint8_t *base = reinterpret_cast<const uint8_t *>(buf) + (reinterpret_cast<uintptr_t>(rp + b0 * Q::TS) & 15);
        for (int u = lane; u < nunits; u += 32) {
            const int bl = u / Q::UPB, sub = u % Q::UPB;
            const uint8_t *blk = base + bl * Q::TS;
            const int64_t gu = (b0 + bl) * Q::UPB + sub;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                aunit a;
                load_aunit<Q::AF>(act, t, gu, &a);
                acc[t] += unit_dot<T>(blk, sub, a);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = acc[t];
#pragma unroll
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[t * n_out + row] = v;
    }
}

/* ---- decode: F32 / F16 / BF16 weights ---- */

template <act_fmt AF> __device__ __forceinline__ float elem_f(const void *p, int64_t i) {
    if (AF == AF_F32) return static_cast<const float *>(p)[i];
    const uint16_t h = static_cast<const uint16_t *>(p)[i];
    if (AF == AF_F16) return __half2float(__ushort_as_half(h));
    return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float2 pair_f(uint32_t u, act_fmt af) {
    if (af == AF_F16) return __half22float2(*reinterpret_cast<const __half2 *>(&u));
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

/* Dot product of two 16-byte vectors of the format. */
template <act_fmt AF> __device__ __forceinline__ float dot16(const uint4 &a, const uint4 &b) {
    if (AF == AF_F32) {
        return __uint_as_float(a.x) * __uint_as_float(b.x) + __uint_as_float(a.y) * __uint_as_float(b.y) +
               __uint_as_float(a.z) * __uint_as_float(b.z) + __uint_as_float(a.w) * __uint_as_float(b.w);
    }
    const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 p = pair_f(av[k], AF), q = pair_f(bv[k], AF);
        s += p.x * q.x + p.y * q.y;
    }
    return s;
}

/* Weights and activations of the same float format (xa: [NT][n_in]); vec: rows, activation
 * rows and n_in allow 16-byte loads. */
template <act_fmt AF, int NT>
__global__ void __launch_bounds__(MV_THREADS)
mv_float_kernel(float *__restrict__ y, const uint8_t *__restrict__ w, size_t row_stride, int64_t n_out,
                int64_t n_in, const void *__restrict__ xa, int vec) {
    constexpr int ES = AF == AF_F32 ? 4 : 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * MV_WARPS + warp;
    if (row >= n_out) return;
    const uint8_t *rp = w + row * (int64_t)row_stride;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    if (vec) {
        constexpr int EPV = 16 / ES;
        const int64_t nv = n_in / EPV;
        const uint4 *wr = reinterpret_cast<const uint4 *>(rp);
        const uint4 *xr = static_cast<const uint4 *>(xa);
        for (int64_t v0 = lane; v0 < nv; v0 += 32 * 4) {
            uint4 wv[4];
#pragma unroll
            for (int u = 0; u < 4; u++) wv[u] = v0 + 32 * u < nv ? __ldg(wr + v0 + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                if (v0 + 32 * u >= nv) break;
#pragma unroll
                for (int t = 0; t < NT; t++) acc[t] += dot16<AF>(wv[u], xr[t * nv + v0 + 32 * u]);
            }
        }
    } else {
        for (int64_t i = lane; i < n_in; i += 32) {
            const float wf = elem_f<AF>(rp, i);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wf * elem_f<AF>(xa, t * n_in + i);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = acc[t];
#pragma unroll
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[t * n_out + row] = v;
    }
}

/* ---- host side ---- */

} // namespace

/* Queue the conversion of x [n_tok][n_in] to format af in the scratch buffers. */
void cuda_convert_activations(cuda_backend *cb, act_fmt af, const float *x, int64_t n_tok, int64_t n_in) {
    const int64_t n = n_tok * n_in;
    switch (af) {
    case AF_F32: return;
    case AF_F16:
    case AF_BF16: {
        uint16_t *out = static_cast<uint16_t *>(cb->act_h);
        if (af == AF_F16) to_half_kernel<false><<<cuda_grid_1d(n, QUANT_THREADS), QUANT_THREADS, 0, cb->stream>>>(out, x, n);
        else to_half_kernel<true><<<cuda_grid_1d(n, QUANT_THREADS), QUANT_THREADS, 0, cb->stream>>>(out, x, n);
        break;
    }
    case AF_Q8_0:
    case AF_Q8_1: {
        const int64_t nblk = n / 32;
        const unsigned grid = cuda_grid_1d(nblk, QUANT_THREADS / 32);
        if (af == AF_Q8_0)
            quant_q8_32_kernel<false><<<grid, QUANT_THREADS, 0, cb->stream>>>(cb->act_q, cb->act_d, cb->act_s, x, nblk);
        else
            quant_q8_32_kernel<true><<<grid, QUANT_THREADS, 0, cb->stream>>>(cb->act_q, cb->act_d, cb->act_s, x, nblk);
        break;
    }
    case AF_Q8_K: {
        const int64_t nblk = n / 256;
        quant_q8k_kernel<<<cuda_grid_1d(nblk, QUANT_THREADS / 32), QUANT_THREADS, 0, cb->stream>>>(
            cb->act_q, cb->act_d, cb->act_bs, x, nblk);
        break;
    }
    }
    CUDA_LAUNCHED(cb);
}

namespace {

/* Launches mv_quant_kernel<T, n_tok> (n_tok in 1..CUDA_MATVEC_MAX_TOK). */
struct mv_quant_launch {
    cuda_backend *cb;
    float *y;
    const kmat *w;
    int64_t n_tok;
    template <int T, int NT = 1> void launch() {
        if (n_tok == NT) {
            const act_q8 act{cb->act_q, cb->act_d, cb->act_s, cb->act_bs, w->n_in};
            const unsigned grid = (unsigned)((w->n_out + MV_WARPS - 1) / MV_WARPS);
            mv_quant_kernel<T, NT><<<grid, MV_THREADS, mvgeom<T>::SMEM, cb->stream>>>(
                y, static_cast<const uint8_t *>(w->data), w->row_stride, w->n_out, w->n_in / qtraits<T>::QK, act);
        } else if constexpr (NT < CUDA_MATVEC_MAX_TOK) {
            launch<T, NT + 1>();
        }
    }
    template <int T> void run() { launch<T>(); }
};

template <act_fmt AF, int NT = 1>
void mv_float_launch(cuda_backend *cb, float *y, const kmat *w, const void *xa, int64_t n_tok, int vec) {
    if (n_tok == NT) {
        const unsigned grid = (unsigned)((w->n_out + MV_WARPS - 1) / MV_WARPS);
        mv_float_kernel<AF, NT><<<grid, MV_THREADS, 0, cb->stream>>>(y, static_cast<const uint8_t *>(w->data),
                                                                     w->row_stride, w->n_out, w->n_in, xa, vec);
    } else if constexpr (NT < CUDA_MATVEC_MAX_TOK) {
        mv_float_launch<AF, NT + 1>(cb, y, w, xa, n_tok, vec);
    }
}

/* C[m][n] (col-major, ldc) = A^T B: A is k x m col-major (rows of W), B is k x n (rows of x). */
void gemm(cuda_backend *cb, float *c, int64_t ldc, const void *a, cudaDataType at, int64_t lda, const void *bm,
          cudaDataType bt, int64_t ldb, int64_t m, int64_t n, int64_t k) {
    CUDA_REQUIRE(cb, m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
                 "matmul: sizes %lld x %lld x %lld exceed cuBLAS's int range", (long long)m, (long long)n, (long long)k);
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_OP(cb, cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, (int)n, (int)k, &alpha, a, at, (int)lda,
                               bm, bt, (int)ldb, &beta, c, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void matmul_float(cuda_backend *cb, float *y, const kmat *w, const float *x, int64_t n_tok, act_fmt af) {
    const int es = af == AF_F32 ? 4 : 2;
    const void *xa = af == AF_F32 ? static_cast<const void *>(x) : cb->act_h;
    if (n_tok <= CUDA_MATVEC_MAX_TOK) {
        const int vec = (((uintptr_t)w->data | w->row_stride | (uintptr_t)xa) & 15) == 0 && (w->n_in * es) % 16 == 0;
        if (af == AF_F32) mv_float_launch<AF_F32>(cb, y, w, xa, n_tok, vec);
        else if (af == AF_F16) mv_float_launch<AF_F16>(cb, y, w, xa, n_tok, vec);
        else mv_float_launch<AF_BF16>(cb, y, w, xa, n_tok, vec);
        CUDA_LAUNCHED(cb);
        return;
    }
    const cudaDataType dt = af == AF_F32 ? CUDA_R_32F : af == AF_F16 ? CUDA_R_16F : CUDA_R_16BF;
    gemm(cb, y, w->n_out, w->data, dt, (int64_t)(w->row_stride / es), xa, dt, w->n_in, w->n_out, n_tok, w->n_in);
}

void matmul_quant(cuda_backend *cb, float *y, const kmat *w, int64_t n_tok, act_fmt af) {
    if (n_tok <= CUDA_MATVEC_MAX_TOK) {
        mv_quant_launch l{cb, y, w, n_tok};
        qtype_dispatch(w->type, l);
        CUDA_LAUNCHED(cb);
        return;
    }
    const int64_t n = n_tok * w->n_in;
    __half *xh = static_cast<__half *>(cb->act_h);
    if (af == AF_Q8_K) q8_to_f16_kernel<true><<<cuda_grid_1d(n, QUANT_THREADS), QUANT_THREADS, 0, cb->stream>>>(xh, cb->act_q, cb->act_d, n);
    else q8_to_f16_kernel<false><<<cuda_grid_1d(n, QUANT_THREADS), QUANT_THREADS, 0, cb->stream>>>(xh, cb->act_q, cb->act_d, n);
    CUDA_LAUNCHED(cb);
    const int64_t tile = cb->tile_elems / w->n_in; /* >= 64: the tile holds 64 rows of max_in */
    __half *wt = static_cast<__half *>(cb->w_tile);
    for (int64_t o0 = 0; o0 < w->n_out; o0 += tile) {
        const int64_t rows = TP_MIN(tile, w->n_out - o0);
        cuda_dequant_rows_f16(cb, wt, w, o0, rows);
        gemm(cb, y + o0, w->n_out, wt, CUDA_R_16F, w->n_in, xh, CUDA_R_16F, w->n_in, rows, n_tok, w->n_in);
        if (cb->err.code) return;
    }
}

/* Checks of every kernel of this file against the device's limits. */
struct mv_quant_check {
    cuda_backend *cb;
    tp_err *e;
    int rc;
    template <int T, int NT = 1> void each() {
        if (rc) return;
        rc = cuda_kernel_check(cb, (const void *)mv_quant_kernel<T, NT>, MV_THREADS, mvgeom<T>::SMEM, "mv_quant", e);
        if constexpr (NT < CUDA_MATVEC_MAX_TOK) each<T, NT + 1>();
    }
    template <int T> void run() { each<T>(); }
};

template <act_fmt AF, int NT = 1> int mv_float_check(cuda_backend *cb, tp_err *e) {
    int rc = cuda_kernel_check(cb, (const void *)mv_float_kernel<AF, NT>, MV_THREADS, 0, "mv_float", e);
    if constexpr (NT < CUDA_MATVEC_MAX_TOK) {
        if (!rc) rc = mv_float_check<AF, NT + 1>(cb, e);
    }
    return rc;
}

int alloc_scratch(cuda_backend *cb, void **p, size_t bytes, const char *what, tp_err *e) {
    if (bytes == 0) return 0;
    *p = cuda_scratch_alloc(cb, bytes);
    if (!*p)
        return tp_errf(e, TP_ENOMEM, "cuda backend: out of device memory for %zu bytes of %s (max_tokens %lld, "
                       "max_in %lld); lower the batch size", bytes, what, (long long)cb->opts.max_tokens,
                       (long long)cb->opts.max_in);
    return 0;
}

} // namespace

/* Checks shared by matmul and matmul_f64; records EINVAL and returns false on a violation. */
bool cuda_matmul_args_ok(cuda_backend *cb, const struct kmat *w, const float *x, int64_t n_tok, const char *op) {
    const dtype_info *di = dtype_get(w->type);
    if (!di || !dtype_supported(w->type)) {
        cuda_op_failf(cb, TP_EINVAL, __FILE__, __LINE__, "%s: weight type %s is not supported by the CUDA backend", op,
                      dtype_name(w->type));
        return false;
    }
    const char *why = NULL;
    char buf[256];
    if (w->n_in % di->block_size != 0) {
        snprintf(buf, sizeof buf, "row of %lld elements is not a whole number of %s blocks", (long long)w->n_in, di->name);
        why = buf;
    } else if (w->row_stride < dtype_row_bytes(w->type, w->n_in)) {
        snprintf(buf, sizeof buf, "row stride %zu is shorter than a row of %lld %s elements", w->row_stride,
                 (long long)w->n_in, di->name);
        why = buf;
    } else if (n_tok > cb->opts.max_tokens || w->n_in > cb->opts.max_in) {
        snprintf(buf, sizeof buf, "%lld tokens x %lld inputs exceed the backend's scratch (max_tokens %lld, max_in "
                 "%lld); create the backend with larger limits", (long long)n_tok, (long long)w->n_in,
                 (long long)cb->opts.max_tokens, (long long)cb->opts.max_in);
        why = buf;
    } else if ((((uintptr_t)w->data | w->row_stride) & (w->type == DTYPE_F32 ? 3u : 1u)) != 0) {
        snprintf(buf, sizeof buf, "%s weights at %p with row stride %zu are misaligned", di->name, w->data, w->row_stride);
        why = buf;
    } else if (((uintptr_t)x & 3) != 0) {
        snprintf(buf, sizeof buf, "input %p is not float-aligned", (const void *)x);
        why = buf;
    }
    if (why) cuda_op_failf(cb, TP_EINVAL, __FILE__, __LINE__, "%s: %s", op, why);
    return why == NULL;
}

/* y: [n_tok][n_out], x: [n_tok][n_in], W: device memory; n_tok <= opts.max_tokens and
 * n_in <= opts.max_in (the scratch bounds; violations are recorded as EINVAL). An empty
 * input (n_in == 0) gives zeros. */
void cuda_matmul(struct kbackend *b, float *y, const struct kmat *w, const float *x, int64_t n_tok) {
    cuda_backend *cb = cuda_enter(b);
    if (n_tok <= 0 || w->n_out <= 0) return;
    if (w->n_in <= 0) {
        CUDA_OP(cb, cudaMemsetAsync(y, 0, (size_t)n_tok * (size_t)w->n_out * sizeof(float), cb->stream));
        return;
    }
    if (!cuda_matmul_args_ok(cb, w, x, n_tok, "matmul")) return;
    const act_fmt af = act_fmt_of(w->type);
    cuda_convert_activations(cb, af, x, n_tok, w->n_in);
    if (cb->err.code) return;
    if (af == AF_F32 || af == AF_F16 || af == AF_BF16) matmul_float(cb, y, w, x, n_tok, af);
    else matmul_quant(cb, y, w, n_tok, af);
}

/* Scratch for the activation formats and the cuBLAS path, sized from opts; launch checks. */
int cuda_matmul_init(struct cuda_backend *cb, tp_err *e) {
    const int64_t T = cb->opts.max_tokens, N = TP_ALIGN_UP(cb->opts.max_in, 256);
    size_t elems;
    if (!tp_mul_size((size_t)T, (size_t)N, &elems) || elems > SIZE_MAX / 4)
        return tp_errf(e, TP_ENOMEM, "cuda backend: matmul scratch of %lld tokens x %lld inputs overflows; lower "
                       "the batch size", (long long)T, (long long)N);
    int rc;
    if ((rc = alloc_scratch(cb, (void **)&cb->act_q, elems, "int8 activations", e))) return rc;
    if ((rc = alloc_scratch(cb, (void **)&cb->act_d, elems / 32 * sizeof(float), "activation scales", e))) return rc;
    if ((rc = alloc_scratch(cb, (void **)&cb->act_s, elems / 32 * sizeof(float), "activation sums", e))) return rc;
    if ((rc = alloc_scratch(cb, (void **)&cb->act_bs, elems / 16 * sizeof(int16_t), "activation block sums", e))) return rc;
    if ((rc = alloc_scratch(cb, &cb->act_h, elems * 2, "16-bit activations", e))) return rc;
    if (N > 0) {
        const int64_t rows = TP_MAX((int64_t)64, (int64_t)(TILE_BYTES / 2 / (size_t)N) / 64 * 64);
        cb->tile_elems = rows * N;
        if ((rc = alloc_scratch(cb, &cb->w_tile, (size_t)cb->tile_elems * 2, "f16 weight tile", e))) return rc;
    }
    cb->blas_ws_bytes = BLAS_WS_BYTES;
    if ((rc = alloc_scratch(cb, &cb->blas_ws, cb->blas_ws_bytes, "cuBLAS workspace", e))) return rc;
    CUBLAS_TRY(e, cublasSetWorkspace(cb->blas, cb->blas_ws, cb->blas_ws_bytes));

    mv_quant_check qc{cb, e, 0};
    for (int t = 0; t < DTYPE_COUNT && !qc.rc; t++) qtype_dispatch((enum dtype)t, qc);
    if (qc.rc) return qc.rc;
    if ((rc = mv_float_check<AF_F32>(cb, e)) || (rc = mv_float_check<AF_F16>(cb, e)) ||
        (rc = mv_float_check<AF_BF16>(cb, e)))
        return rc;
    const struct {
        const void *f;
        const char *name;
    } k[] = {
        {(const void *)quant_q8_32_kernel<false>, "quant_q8_0"}, {(const void *)quant_q8_32_kernel<true>, "quant_q8_1"},
        {(const void *)quant_q8k_kernel, "quant_q8_k"},          {(const void *)to_half_kernel<false>, "to_f16"},
        {(const void *)to_half_kernel<true>, "to_bf16"},         {(const void *)q8_to_f16_kernel<false>, "q8_to_f16"},
        {(const void *)q8_to_f16_kernel<true>, "q8k_to_f16"},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(k); i++)
        if ((rc = cuda_kernel_check(cb, k[i].f, QUANT_THREADS, 0, k[i].name, e))) return rc;
    return 0;
}
