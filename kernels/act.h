/* act.h - numerics the CPU and CUDA backends share, so that both compute the same bits by
 * construction where a libm function would differ between glibc and CUDA:
 *
 *   GELU (gated_act ACT_GELU_TANH) as llama.cpp computes it (GGML_GELU_FP16): the input
 *   rounded to f16, the tanh form evaluated in float with libm's tanhf, the result rounded
 *   to f16. act_gelu_f16 is that function of one f16 input; act_gelu_table tabulates it
 *   for all 65536 inputs. Both backends take the table from this host code (the CPU
 *   backend reads act_gelu_table_shared, the CUDA backend uploads it at creation), so the
 *   GPU never evaluates tanh: it clamps, rounds to f16 and looks up, as the CPU does.
 *
 *   exp and log in double (topk's log-sum-exp), from IEEE operations only: every step is
 *   one of + - * / fma, a bit cast or rint (exact), each rounded to nearest and never
 *   contracted, so the host and the device give the same bits. Both are within about 1
 *   ulp of the exact value (exp: Cody-Waite reduction by ln 2 and the degree-13 Taylor
 *   polynomial; log: fdlibm's e_log.c reduction and polynomial). The bodies are written
 *   once, below, in terms of operation macros; act.c instantiates them for the host (with
 *   FP contraction off) and kernels/cuda/ieee.cuh for the device (with _rn intrinsics). */
#ifndef TPLLM_ACT_H
#define TPLLM_ACT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GELU inputs at or below ACT_GELU_LO give 0, at or above ACT_GELU_HI the input itself
 * (llama.cpp's clamps); inputs between go through the f16 table. */
#define ACT_GELU_LO (-10.0f)
#define ACT_GELU_HI 10.0f
#define ACT_GELU_TABLE_LEN 65536

/* GELU of the f16 value h (bits), rounded to f16 (bits): 0.5 f (1 + tanhf(c f (1 + a f f)))
 * with f = h widened, 1 + a f f one fused multiply-add (llama.cpp builds its table with FMA
 * contraction). A NaN input gives 0x7e00. */
uint16_t act_gelu_f16(uint16_t h);
/* tab[h] = act_gelu_f16(h) for every h. */
void act_gelu_table(uint16_t tab[ACT_GELU_TABLE_LEN]);
/* The process's one copy of that table (128 KiB), built by the first call (65536 tanhf,
 * about a millisecond; thread-safe), read-only afterwards. The CPU backend points at it,
 * the CUDA backend uploads it. */
const uint16_t *act_gelu_table_shared(void);

/* e^x: NaN for NaN, +inf above 709.8, 0 below -746 (and -inf), else within ~1 ulp
 * (subnormal results rounded once). */
double act_exp_f64(double x);
/* ln x: NaN for NaN and x < 0, -inf for 0, +inf for +inf, else within ~1 ulp. */
double act_log_f64(double x);

#ifdef __cplusplus
}
#endif

#endif

/* ---- the shared bodies ----
 * Included a second time with ACT_F64_DEFINE set, after these macros are defined:
 *   ACT_F64_FN          the functions' storage / target qualifiers
 *   ACT_F64_NAME(name)  the name to define for act_<name>_f64 (exp, log)
 *   ACT_DADD, ACT_DSUB, ACT_DMUL, ACT_DDIV (a, b); ACT_DFMA (a, b, c) = a b + c rounded once:
 *                       one IEEE double operation each, round to nearest, never fused
 *                       with another
 *   ACT_DRINT(x)        x rounded to an integer, ties to even (exact)
 *   ACT_D2U(x), ACT_U2D(u)  bit casts between double and uint64_t
 * Comparisons and int <-> double conversions of small integers are exact anywhere. */
#if defined(ACT_F64_DEFINE) && !defined(ACT_F64_DEFINED)
#define ACT_F64_DEFINED

ACT_F64_FN double ACT_F64_NAME(exp)(double x) {
    if (x != x) return x;
    if (x > 709.8) return ACT_U2D(0x7ff0000000000000ull);
    if (x < -746.0) return 0.0;
    /* x = n ln2 + r, |r| <= ln2 / 2 (+ rounding): ln2 in two parts (fdlibm's split: n ln2_hi
     * is exact and x - n ln2_hi too, so r carries one rounding) */
    const double n = ACT_DRINT(ACT_DMUL(x, 0x1.71547652b82fep+0));
    double r = ACT_DFMA(-n, 0x1.62e42feep-1, x);
    r = ACT_DFMA(-n, 0x1.a39ef35793c76p-33, r);
    /* e^r = sum_k r^k / k!, k <= 13 (truncation below 2^-52 for |r| <= 0.35), Horner */
    double p = 0x1.6124613a86d09p-33;
    p = ACT_DFMA(p, r, 0x1.1eed8eff8d898p-29);
    p = ACT_DFMA(p, r, 0x1.ae64567f544e4p-26);
    p = ACT_DFMA(p, r, 0x1.27e4fb7789f5cp-22);
    p = ACT_DFMA(p, r, 0x1.71de3a556c734p-19);
    p = ACT_DFMA(p, r, 0x1.a01a01a01a01ap-16);
    p = ACT_DFMA(p, r, 0x1.a01a01a01a01ap-13);
    p = ACT_DFMA(p, r, 0x1.6c16c16c16c17p-10);
    p = ACT_DFMA(p, r, 0x1.1111111111111p-7);
    p = ACT_DFMA(p, r, 0x1.5555555555555p-5);
    p = ACT_DFMA(p, r, 0x1.5555555555555p-3);
    p = ACT_DFMA(p, r, 0x1p-1);
    p = ACT_DFMA(p, r, 1.0);
    p = ACT_DFMA(p, r, 1.0);
    /* p 2^n, n in [-1077, 1024]: one exact scaling, or two where 2^n is not a normal
     * double (the second rounds once into the subnormals, or overflows) */
    const int k = (int)n;
    if (k >= -1022 && k <= 1023) return ACT_DMUL(p, ACT_U2D((uint64_t)(k + 1023) << 52));
    if (k > 1023) return ACT_DMUL(ACT_DMUL(p, ACT_U2D((uint64_t)(k - 1 + 1023) << 52)), 2.0);
    return ACT_DMUL(ACT_DMUL(p, ACT_U2D((uint64_t)(k + 1000 + 1023) << 52)), 0x1p-1000);
}

ACT_F64_FN double ACT_F64_NAME(log)(double x) {
    if (x != x) return x;
    if (x < 0.0) return ACT_U2D(0x7ff8000000000000ull);
    if (x == 0.0) return ACT_U2D(0xfff0000000000000ull);
    uint64_t u = ACT_D2U(x);
    if (u == 0x7ff0000000000000ull) return x;
    int k = 0;
    if (u < 0x0010000000000000ull) { /* subnormal: scale into the normals (exact) */
        u = ACT_D2U(ACT_DMUL(x, 0x1p54));
        k = -54;
    }
    k += (int)(u >> 52) - 1023;
    /* x = 2^k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2)) */
    uint64_t mant = u & 0x000fffffffffffffull;
    if (mant >= 0x6a09e667f3bcdull) { /* 1.mant >= sqrt(2): halve it */
        mant |= 0x3fe0000000000000ull;
        k += 1;
    } else {
        mant |= 0x3ff0000000000000ull;
    }
    const double f = ACT_DSUB(ACT_U2D(mant), 1.0); /* exact (Sterbenz) */
    /* fdlibm: log(1 + f) = f - (hfsq - s (hfsq + R)), s = f / (2 + f), R ~ the series in s^2 */
    const double s = ACT_DDIV(f, ACT_DADD(2.0, f));
    const double z = ACT_DMUL(s, s), w = ACT_DMUL(z, z);
    const double t1 = ACT_DMUL(w, ACT_DADD(0x1.999999997fa04p-2,
                                           ACT_DMUL(w, ACT_DADD(0x1.c71c51d8e78afp-3, ACT_DMUL(w, 0x1.39a09d078c69fp-3)))));
    const double t2 = ACT_DMUL(z, ACT_DADD(0x1.5555555555593p-1,
                                           ACT_DMUL(w, ACT_DADD(0x1.2492494229359p-2,
                                                                ACT_DMUL(w, ACT_DADD(0x1.7466496cb03dep-3,
                                                                                     ACT_DMUL(w, 0x1.2f112df3e5244p-3)))))));
    const double R = ACT_DADD(t2, t1);
    const double hfsq = ACT_DMUL(ACT_DMUL(0.5, f), f);
    const double dk = (double)k;
    /* k ln2_hi - ((hfsq - (s (hfsq + R) + k ln2_lo)) - f); k ln2_hi is exact */
    const double lo = ACT_DADD(ACT_DMUL(s, ACT_DADD(hfsq, R)), ACT_DMUL(dk, 0x1.a39ef35793c76p-33));
    return ACT_DSUB(ACT_DMUL(dk, 0x1.62e42feep-1), ACT_DSUB(ACT_DSUB(hfsq, lo), f));
}

#endif
