/* dtype.h - the ggml tensor type table: ids as stored in GGUF files, block and byte sizes.
 *
 * A tensor row of n elements of type t occupies n / block_size(t) blocks of
 * type_size(t) bytes each; n must be a multiple of the block size. The ids are the
 * ones llama.cpp writes (ggml.h); ids that ggml retired are present as gaps so that a
 * file using them is recognised and refused by name. */
#ifndef TPLLM_DTYPE_H
#define TPLLM_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dtype {
    DTYPE_F32 = 0,
    DTYPE_F16 = 1,
    DTYPE_Q4_0 = 2,
    DTYPE_Q4_1 = 3,
    DTYPE_Q5_0 = 6,
    DTYPE_Q5_1 = 7,
    DTYPE_Q8_0 = 8,
    DTYPE_Q8_1 = 9,
    DTYPE_Q2_K = 10,
    DTYPE_Q3_K = 11,
    DTYPE_Q4_K = 12,
    DTYPE_Q5_K = 13,
    DTYPE_Q6_K = 14,
    DTYPE_Q8_K = 15,
    DTYPE_IQ2_XXS = 16,
    DTYPE_IQ2_XS = 17,
    DTYPE_IQ3_XXS = 18,
    DTYPE_IQ1_S = 19,
    DTYPE_IQ4_NL = 20,
    DTYPE_IQ3_S = 21,
    DTYPE_IQ2_S = 22,
    DTYPE_IQ4_XS = 23,
    DTYPE_I8 = 24,
    DTYPE_I16 = 25,
    DTYPE_I32 = 26,
    DTYPE_I64 = 27,
    DTYPE_F64 = 28,
    DTYPE_IQ1_M = 29,
    DTYPE_BF16 = 30,
    DTYPE_TQ1_0 = 34,
    DTYPE_TQ2_0 = 35,
    DTYPE_MXFP4 = 39,
    DTYPE_COUNT = 40,
};

struct dtype_info {
    const char *name;   /* NULL for ids ggml never used or retired */
    int64_t block_size; /* elements per block */
    size_t type_size;   /* bytes per block */
    bool weight_ok;     /* tpllm can compute with it as a weight */
};

/* Info for `t`, or NULL when t is outside the table or an unused id. */
const struct dtype_info *dtype_get(int t);
/* Name of `t` ("Q4_K"), or "type#N" for an unknown id (buf must hold 24 bytes). */
const char *dtype_name(int t);
static inline int64_t dtype_block(enum dtype t) { return dtype_get(t)->block_size; }
/* Bytes of a row of n elements (n must be a multiple of the block size). */
size_t dtype_row_bytes(enum dtype t, int64_t n);
/* Whether t is one of the weight types tpllm computes with. */
bool dtype_supported(int t);

#endif
