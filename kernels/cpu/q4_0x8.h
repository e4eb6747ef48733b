/* q4_0x8.h - Q4_0 weights in groups of 8 rows (KMAT_Q4_0X8) and their kernels
 * (q4_0x8.c): private to kernels/cpu, used by matmul.c and matmul_f64.c. */
#ifndef TPLLM_CPU_Q4_0X8_H
#define TPLLM_CPU_Q4_0X8_H

#include "simd_dot.h"

/* kops.prepare_weight of the CPU backend: Q4_0 weights with whole groups of 8 rows are
 * repacked in place into KMAT_Q4_0X8 when the backend's level is AVX2 or higher. */
void cpu_prepare_weight(struct kbackend *b, struct kmat *w);

/* Group `grp` (8 rows of nb blocks) against tokens t0 .. t0 + nt - 1 (nt <= KDOT_NT):
 * y[k * ldy + r] = row r's result for token t0 + k. */
void q4x8_dot_avx2(const uint8_t *grp, int64_t nb, const struct kact_rows *a, int64_t t0, int nt, float *y,
                   int64_t ldy);

/* The granule sums of blocks [b0, b1) of group `grp`: granules of gb blocks counted from
 * block 0 of the row (b0 a multiple of gb; the last may be shorter, ending at b1), each
 * granule's float added in double to acc8[k * 8 + r] in order. */
void q4x8_gran_avx2(const uint8_t *grp, int64_t b0, int64_t b1, int64_t gb, const struct kact_rows *a, int64_t t0,
                    int nt, double *acc8);

/* The single-row AVX2 kernel of Q4_0 (same arithmetic), for GGUF-layout rows. */
kdot_fn kdot_avx2_q4_0(void);

#endif
