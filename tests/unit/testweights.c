/* testweights.c - random weight matrices for the matmul tests (testweights.h). */
#include "testweights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quant.h"

void *tu_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory for %zu bytes\n", n);
        abort();
    }
    return p;
}

float *tu_rand_floats(tu_rng *r, size_t n, float lo, float hi) {
    float *x = tu_xmalloc(n * sizeof(float));
    tu_fill_uniform(r, x, n, lo, hi);
    return x;
}

bool tu_is_float_type(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

enum dtype tu_vec_dot_type(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return DTYPE_F32;
    case DTYPE_F16: return DTYPE_F16;
    case DTYPE_BF16: return DTYPE_BF16;
    case DTYPE_Q4_1: case DTYPE_Q5_1: return DTYPE_Q8_1;
    case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0: return DTYPE_Q8_0;
    default: return DTYPE_Q8_K;
    }
}

/* Byte offsets of the fp16 scale fields inside a block (-1: none) and the byte range of
 * its quant codes [q0, q1) for the types whose min term is separate (zeroing the codes
 * leaves it). */
static void block_fields(enum dtype t, int *h0, int *h1, int *q0, int *q1) {
    *h0 = *h1 = -1;
    *q0 = *q1 = 0;
    switch (t) {
    case DTYPE_Q4_0: case DTYPE_Q5_0: case DTYPE_Q8_0: *h0 = 0; break;
    case DTYPE_Q4_1: *h0 = 0, *h1 = 2, *q0 = 4, *q1 = 20; break;
    case DTYPE_Q5_1: *h0 = 0, *h1 = 2, *q0 = 4, *q1 = 24; break;
    case DTYPE_Q2_K: *h0 = 80, *h1 = 82, *q0 = 16, *q1 = 80; break;
    case DTYPE_Q3_K: *h0 = 108; break;
    case DTYPE_Q4_K: *h0 = 0, *h1 = 2, *q0 = 16, *q1 = 144; break;
    case DTYPE_Q5_K: *h0 = 0, *h1 = 2, *q0 = 16, *q1 = 176; break;
    case DTYPE_Q6_K: *h0 = 208; break;
    default: break;
    }
}

void tu_wmat_decode(struct tu_wmat *w) {
    const enum dtype t = w->m.type;
    const int64_t n_out = w->m.n_out, n_in = w->m.n_in;
    const size_t ts = dtype_get(t)->type_size, nbytes = dtype_row_bytes(t, n_in);
    int h0, h1, q0, q1;
    block_fields(t, &h0, &h1, &q0, &q1);
    free(w->deq);
    free(w->mag);
    w->deq = tu_xmalloc((size_t)(n_out * n_in) * sizeof(float));
    w->mag = tu_xmalloc((size_t)(n_out * n_in) * sizeof(float));
    uint8_t *tmp = tu_xmalloc(nbytes);
    float *mt = tu_xmalloc((size_t)n_in * sizeof *mt);
    for (int64_t o = 0; o < n_out; o++) {
        const uint8_t *src = (const uint8_t *)w->m.data + (size_t)o * w->m.row_stride;
        quant_dequantize_row(t, src, w->deq + o * n_in, n_in);
        for (int64_t i = 0; i < n_in; i++) w->mag[o * n_in + i] = fabsf(w->deq[o * n_in + i]);
        if (q1 > q0) { /* the min term: the row with its codes zeroed */
            memcpy(tmp, src, nbytes);
            for (size_t b = 0; b < nbytes / ts; b++) memset(tmp + b * ts + q0, 0, (size_t)(q1 - q0));
            quant_dequantize_row(t, tmp, mt, n_in);
            for (int64_t i = 0; i < n_in; i++) w->mag[o * n_in + i] += fabsf(mt[i]);
        }
    }
    free(tmp);
    free(mt);
}

void tu_wmat_make(struct tu_wmat *w, tu_rng *r, enum dtype t, int64_t n_out, int64_t n_in, int64_t before,
                  int64_t after, bool random_bytes) {
    const int64_t full = before + n_in + after;
    const size_t row = dtype_row_bytes(t, full), ts = dtype_get(t)->type_size;
    memset(w, 0, sizeof *w);
    w->bytes = row * (size_t)n_out;
    w->buf = aligned_alloc(64, TP_ALIGN_UP(w->bytes ? w->bytes : 1, 64));
    if (!w->buf) abort();
    float *x = tu_xmalloc((size_t)full * sizeof *x);
    int h0, h1, q0, q1;
    block_fields(t, &h0, &h1, &q0, &q1);
    for (int64_t o = 0; o < n_out; o++) {
        uint8_t *dst = w->buf + (size_t)o * row;
        if (random_bytes && !tu_is_float_type(t)) {
            for (size_t i = 0; i < row; i++) dst[i] = (uint8_t)tu_next(r);
            for (size_t b = 0; b < row / ts; b++) {
                const int offs[2] = {h0, h1};
                for (int k = 0; k < 2; k++) {
                    if (offs[k] < 0) continue;
                    float v = powf(10.0f, tu_uniform(r, -3.0f, 0.0f)) * ((tu_next(r) & 1) ? 1.0f : -1.0f);
                    uint16_t h = f32_to_fp16(v);
                    memcpy(dst + b * ts + (size_t)offs[k], &h, 2);
                }
            }
            continue;
        }
        if (random_bytes) {
            tu_fill_uniform(r, x, (size_t)full, -1.0f, 1.0f);
        } else {
            const float scale = powf(10.0f, tu_uniform(r, -2.0f, 0.5f));
            for (int64_t i = 0; i < full; i++) x[i] = scale * tu_normal(r);
        }
        if (quant_quantize_row(t, x, dst, full) != row) {
            fprintf(stderr, "test: cannot quantize a row to %s\n", dtype_name(t));
            abort();
        }
    }
    const size_t off = dtype_row_bytes(t, before);
    w->m = (struct kmat){.data = w->buf + off, .type = t, .n_out = n_out, .n_in = n_in, .row_stride = row};
    tu_wmat_decode(w);
    free(x);
}

void tu_wmat_free(struct tu_wmat *w) {
    free(w->buf);
    free(w->deq);
    free(w->mag);
    memset(w, 0, sizeof *w);
}
