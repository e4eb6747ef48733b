/* testweights.h - random weight matrices for the matmul tests (CPU and CUDA): a column
 * slice of quantized rows, its dequantized values and per-value magnitude bounds, and the
 * activation format each weight type's dot products use. */
#ifndef TPLLM_TESTWEIGHTS_H
#define TPLLM_TESTWEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"
#include "testutil.h"

struct tu_wmat {
    uint8_t *buf; /* host rows of before + n_in + after values, 64-byte aligned */
    size_t bytes;
    struct kmat m; /* the middle column slice, host memory */
    float *deq;    /* [n_out][n_in] dequantized slice */
    float *mag;    /* [n_out][n_in] |w| + |min term| */
};

/* n_out rows of `before + n_in + after` values of type t; w->m is the middle column slice.
 * random_bytes: block types get uniformly random code bytes with random fp16 scales of
 * both signs (every code, negative scales, Q8_0's -128), float types quantized uniform
 * values in [-1, 1]; otherwise every type holds quantized scaled gaussians. */
void tu_wmat_make(struct tu_wmat *w, tu_rng *r, enum dtype t, int64_t n_out, int64_t n_in, int64_t before,
                  int64_t after, bool random_bytes);
/* Recomputes w->deq and w->mag from the rows w->m points at. */
void tu_wmat_decode(struct tu_wmat *w);
void tu_wmat_free(struct tu_wmat *w);

bool tu_is_float_type(enum dtype t);
/* The type activations are converted to for dot products with weights of type t (ggml's
 * vec_dot_type): F32/F16/BF16 themselves, Q8_1 for Q4_1/Q5_1, Q8_0 for the other 32-value
 * block types, Q8_K for the K-quants. */
enum dtype tu_vec_dot_type(enum dtype t);

/* malloc that never returns NULL (size 0 included); aborts when out of memory. */
void *tu_xmalloc(size_t n);
/* n uniform floats in [lo, hi), from tu_xmalloc. */
float *tu_rand_floats(tu_rng *r, size_t n, float lo, float hi);

#endif
