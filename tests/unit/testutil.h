/* testutil.h - helpers shared by the unit tests: seeded random data, temp paths, fixtures. */
#ifndef TPLLM_TESTUTIL_H
#define TPLLM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* xorshift64* generator: fresh seed per run unless TPLLM_TEST_SEED is set (printed on failure). */
typedef struct { uint64_t s; } tu_rng;
uint64_t tu_seed(void);             /* the run's seed, printed once to stderr */
void tu_rng_init(tu_rng *r, uint64_t seed);
uint64_t tu_next(tu_rng *r);
float tu_uniform(tu_rng *r, float lo, float hi);
float tu_normal(tu_rng *r);
void tu_fill_uniform(tu_rng *r, float *x, size_t n, float lo, float hi);
/* rows x n logits of one of 7 kinds that stress a top-k / log-sum-exp (TU_TOPK_KINDS):
 * uniform, ties, -inf runs, rising maxima, NaN/inf mixes, e^-40 terms (kind 6 with -inf). */
#define TU_TOPK_KINDS 7
void tu_fill_topk_rows(tu_rng *r, float *x, int64_t rows, int64_t n, int kind);
/* A fresh temporary file path (under $TMPDIR) with the given suffix; caller frees. */
char *tu_tmp_path(const char *suffix);
/* Path of a file under the source tree; caller frees. */
char *tu_src_path(const char *rel);
/* Read a whole file; caller frees. NULL on failure. */
void *tu_read_file(const char *path, size_t *size);
int tu_write_file(const char *path, const void *buf, size_t size);

/* An activation row quantized to vt (a dtype) in ggml block form, as the runtime's matmul
 * quantizes it (Q8_0/Q8_1: llama.cpp's x86 rounding; others: quant_quantize_row). */
void tu_act_quantize_row(int vt, const float *x, uint8_t *q, int64_t n);

/* Number of CUDA devices (0 without the CUDA backend), asked in a child process:
 * Criterion runs each test in a forked process, and a CUDA context created in the parent
 * before the fork would be unusable there. */
int tu_cuda_devices(void);

#endif
