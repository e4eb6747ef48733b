/* act.c - the host side of act.h: the GELU table and the double exp/log of topk.
 *
 * FP contraction is off for this file: every multiply and add below is rounded on its
 * own unless it is written as fmaf/fma, as the device instantiation (kernels/cuda/ieee.cuh,
 * _rn intrinsics) computes them. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#include "act.h"

#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* gelu_ggml of kernels/cpu/ops.c between its clamps, for an input already rounded to f16:
 * f = h widened (fp16_to_f32 is exact), 0.5 f (1 + tanhf(c f fmaf(a f, f, 1))), the
 * result rounded to nearest even f16 (f32_to_fp16, which maps every NaN to 0x7e00). */
uint16_t act_gelu_f16(uint16_t h) {
    const float f = fp16_to_f32(h);
    const float y = 0.5f * f * (1.0f + tanhf(GELU_C * f * fmaf(GELU_A * f, f, 1.0f)));
    return f32_to_fp16(y);
}

void act_gelu_table(uint16_t tab[ACT_GELU_TABLE_LEN]) {
    for (uint32_t h = 0; h < ACT_GELU_TABLE_LEN; h++) tab[h] = act_gelu_f16((uint16_t)h);
}

static uint16_t act_gelu_tab[ACT_GELU_TABLE_LEN];
static pthread_once_t act_gelu_once = PTHREAD_ONCE_INIT;

static void act_gelu_build(void) { act_gelu_table(act_gelu_tab); }

const uint16_t *act_gelu_table_shared(void) {
    pthread_once(&act_gelu_once, act_gelu_build);
    return act_gelu_tab;
}

static inline uint64_t act_d2u(double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double act_u2d(uint64_t u) {
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* nearbyint in the default rounding mode (round to nearest even), as the device's rint */
#define ACT_F64_FN
#define ACT_F64_NAME(name) act_##name##_f64
#define ACT_DADD(a, b) ((a) + (b))
#define ACT_DSUB(a, b) ((a) - (b))
#define ACT_DMUL(a, b) ((a) * (b))
#define ACT_DDIV(a, b) ((a) / (b))
#define ACT_DFMA(a, b, c) fma((a), (b), (c))
#define ACT_DRINT(x) nearbyint(x)
#define ACT_D2U(x) act_d2u(x)
#define ACT_U2D(u) act_u2d(u)
#define ACT_F64_DEFINE
#include "act.h"
