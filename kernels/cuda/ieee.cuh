/* ieee.cuh - exact IEEE arithmetic for the kernels that must give the CPU backend's bits
 * (ops.cu, attention.cu, topk.cu), whatever nvcc's flags.
 *
 * The CUDA sources are built with --use_fast_math, which implies -ftz=true -fmad=true
 * -prec-div=false -prec-sqrt=false: nvcc then flushes f32 subnormals to zero in every
 * f32 instruction it emits (mul.rn.ftz, setp.ftz, cvt.ftz.f64.f32, ... - even for the
 * __fmul_rn family), may fuse a * b + c in f32 and f64, and approximates / and sqrtf.
 * The CPU does none of that. So the f32 operations here are inline PTX without .ftz
 * (PTX's add/sub/mul/fma/div/sqrt .rn.f32 are IEEE 754 round-to-nearest-even with
 * subnormals kept), and the f64 ones are the _rn intrinsics (f64 is never flushed; the
 * intrinsics are never contracted). Each function below is one IEEE operation.
 *
 * Also here: dev_exp1, the device twin of kernels/cpu/vec.h's cpu_exp1 (one lane of the
 * CPU's cpu_exp256), operation for operation; dev_exp_f64 / dev_log_f64, the device
 * instantiation of act.h's shared bodies (the host has act_exp_f64 / act_log_f64). */
#ifndef TPLLM_CUDA_IEEE_CUH
#define TPLLM_CUDA_IEEE_CUH

#include <stdint.h>

__device__ __forceinline__ float ie_add(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float ie_sub(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float ie_mul(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

/* a b + c, rounded once (fmaf) */
__device__ __forceinline__ float ie_fma(float a, float b, float c) {
    float r;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
}

__device__ __forceinline__ float ie_div(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float ie_sqrt(float a) {
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}

/* -a: the sign bit flipped (no instruction that could flush a subnormal) */
__device__ __forceinline__ float ie_neg(float a) { return __uint_as_float(__float_as_uint(a) ^ 0x80000000u); }

/* a rounded to an integer, ties to even (nearbyintf / _MM_FROUND_TO_NEAREST_INT) */
__device__ __forceinline__ float ie_rint(float a) {
    float r;
    asm("cvt.rni.f32.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}

/* (int32_t)a for an integral a, exact */
__device__ __forceinline__ int32_t ie_f2i(float a) {
    int32_t r;
    asm("cvt.rzi.s32.f32 %0, %1;" : "=r"(r) : "f"(a));
    return r;
}

/* a > b and a < b as IEEE comparisons (false when either is NaN; subnormals compared as
 * they are) */
__device__ __forceinline__ bool ie_gt(float a, float b) {
    unsigned r;
    asm("{\n\t.reg .pred p;\n\tsetp.gt.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}" : "=r"(r) : "f"(a), "f"(b));
    return r != 0;
}

__device__ __forceinline__ bool ie_lt(float a, float b) { return ie_gt(b, a); }

__device__ __forceinline__ bool ie_ge(float a, float b) {
    unsigned r;
    asm("{\n\t.reg .pred p;\n\tsetp.ge.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}" : "=r"(r) : "f"(a), "f"(b));
    return r != 0;
}

__device__ __forceinline__ bool ie_le(float a, float b) { return ie_ge(b, a); }

__device__ __forceinline__ bool ie_eq(float a, float b) {
    unsigned r;
    asm("{\n\t.reg .pred p;\n\tsetp.eq.f32 p, %1, %2;\n\tselp.u32 %0, 1, 0, p;\n\t}" : "=r"(r) : "f"(a), "f"(b));
    return r != 0;
}

/* cpu_max1: a > b ? a : b (b when they are equal or either is NaN) */
__device__ __forceinline__ float ie_max1(float a, float b) { return ie_gt(a, b) ? a : b; }

/* whether a is +-0 */
__device__ __forceinline__ bool ie_is_zero(float a) { return (__float_as_uint(a) << 1) == 0u; }

/* |a| < inf */
__device__ __forceinline__ bool ie_finite(float a) { return (__float_as_uint(a) & 0x7fffffffu) < 0x7f800000u; }

__device__ __forceinline__ bool ie_isnan(float a) { return (__float_as_uint(a) & 0x7fffffffu) > 0x7f800000u; }

/* (double)a, exact (subnormals kept) */
__device__ __forceinline__ double ie_f2d(float a) {
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(a));
    return r;
}

/* (float)a, rounded to nearest even (subnormal results kept) */
__device__ __forceinline__ float ie_d2f(double a) {
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(a));
    return r;
}

/* f32 -> f16 bits, round to nearest even, subnormal halves and overflow to inf as IEEE
 * (= cpu_f32_to_f16 on every non-NaN input; a NaN becomes a NaN, payload not kept) */
__device__ __forceinline__ uint16_t ie_f2h(float a) {
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(a));
    return r;
}

/* f16 bits -> f32, exact (= cpu_f16_to_f32 on every non-NaN input) */
__device__ __forceinline__ float ie_h2f(uint16_t h) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"((unsigned short)h));
    return r;
}

/* x rounded to f16 and back (f16_round1 of the CPU) */
__device__ __forceinline__ float ie_f16_round(float x) { return ie_h2f(ie_f2h(x)); }

/* cpu_exp1 (kernels/cpu/vec.h), operation for operation: the clamps with cpu_max1's NaN
 * rule (NaN -> -87.3), n = nearbyintf(x log2(e)), the two-part ln2 reduction and the
 * polynomial with fmaf where the CPU fuses, the exponent bits of n + 127, the product.
 * The constants are the CPU's decimal literals as float (hex here, checked against the
 * C compiler's conversion). */
__device__ __forceinline__ float dev_exp1(float x) {
    x = ie_max1(x, -0x1.5d3334p+6f);               /* -87.3f */
    x = ie_lt(x, 0x1.613334p+6f) ? x : 0x1.613334p+6f; /* 88.3f */
    const float n = ie_rint(ie_mul(x, 0x1.715476p+0f)); /* 1.44269504088896341f */
    const float nn = ie_neg(n);
    float r = ie_fma(nn, 0x1.63p-1f, x);           /* 0.693359375f */
    r = ie_fma(nn, -0x1.bd0106p-13f, r);           /* -2.12194440e-4f */
    float p = 0x1.a0d2cep-13f;                     /* 1.9875691500e-4f */
    p = ie_fma(p, r, 0x1.6e879cp-10f);             /* 1.3981999507e-3f */
    p = ie_fma(p, r, 0x1.11121p-7f);               /* 8.3334519073e-3f */
    p = ie_fma(p, r, 0x1.555382p-5f);              /* 4.1665795894e-2f */
    p = ie_fma(p, r, 0x1.555554p-3f);              /* 1.6666665459e-1f */
    p = ie_fma(p, r, 0x1p-1f);                     /* 5.0000001201e-1f */
    p = ie_fma(p, ie_mul(r, r), ie_add(r, 1.0f));
    return ie_mul(p, __uint_as_float((uint32_t)(ie_f2i(n) + 127) << 23));
}

/* act.h's double exp and log, for the device */
#define ACT_F64_FN static __device__ __forceinline__
#define ACT_F64_NAME(name) dev_##name##_f64
#define ACT_DADD(a, b) __dadd_rn((a), (b))
#define ACT_DSUB(a, b) __dsub_rn((a), (b))
#define ACT_DMUL(a, b) __dmul_rn((a), (b))
#define ACT_DDIV(a, b) __ddiv_rn((a), (b))
#define ACT_DFMA(a, b, c) __fma_rn((a), (b), (c))
#define ACT_DRINT(x) rint(x)
#define ACT_D2U(x) ((uint64_t)__double_as_longlong(x))
#define ACT_U2D(u) __longlong_as_double((long long)(u))
#define ACT_F64_DEFINE
#include "../act.h"
#undef ACT_F64_FN
#undef ACT_F64_NAME
#undef ACT_DADD
#undef ACT_DSUB
#undef ACT_DMUL
#undef ACT_DDIV
#undef ACT_DFMA
#undef ACT_DRINT
#undef ACT_D2U
#undef ACT_U2D
#undef ACT_F64_DEFINE

#endif
