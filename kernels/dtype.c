/* dtype.c - the ggml type table (block sizes and bytes per block, from ggml's type traits). */
#include "dtype.h"

#include <assert.h>

static const struct dtype_info table[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 1, 4, true},
    [DTYPE_F16] = {"F16", 1, 2, true},
    [DTYPE_Q4_0] = {"Q4_0", 32, 18, true},
    [DTYPE_Q4_1] = {"Q4_1", 32, 20, true},
    [DTYPE_Q5_0] = {"Q5_0", 32, 22, true},
    [DTYPE_Q5_1] = {"Q5_1", 32, 24, true},
    [DTYPE_Q8_0] = {"Q8_0", 32, 34, true},
    [DTYPE_Q8_1] = {"Q8_1", 32, 36, false},
    [DTYPE_Q2_K] = {"Q2_K", 256, 84, true},
    [DTYPE_Q3_K] = {"Q3_K", 256, 110, true},
    [DTYPE_Q4_K] = {"Q4_K", 256, 144, true},
    [DTYPE_Q5_K] = {"Q5_K", 256, 176, true},
    [DTYPE_Q6_K] = {"Q6_K", 256, 210, true},
    [DTYPE_Q8_K] = {"Q8_K", 256, 292, false},
    [DTYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66, false},
    [DTYPE_IQ2_XS] = {"IQ2_XS", 256, 74, false},
    [DTYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98, false},
    [DTYPE_IQ1_S] = {"IQ1_S", 256, 50, false},
    [DTYPE_IQ4_NL] = {"IQ4_NL", 32, 18, false},
    [DTYPE_IQ3_S] = {"IQ3_S", 256, 110, false},
    [DTYPE_IQ2_S] = {"IQ2_S", 256, 82, false},
    [DTYPE_IQ4_XS] = {"IQ4_XS", 256, 136, false},
    [DTYPE_I8] = {"I8", 1, 1, false},
    [DTYPE_I16] = {"I16", 1, 2, false},
    [DTYPE_I32] = {"I32", 1, 4, false},
    [DTYPE_I64] = {"I64", 1, 8, false},
    [DTYPE_F64] = {"F64", 1, 8, false},
    [DTYPE_IQ1_M] = {"IQ1_M", 256, 56, false},
    [DTYPE_BF16] = {"BF16", 1, 2, true},
    [DTYPE_TQ1_0] = {"TQ1_0", 256, 54, false},
    [DTYPE_TQ2_0] = {"TQ2_0", 256, 66, false},
    [DTYPE_MXFP4] = {"MXFP4", 32, 17, false},
};
_Static_assert(sizeof table / sizeof table[0] == DTYPE_COUNT, "dtype table must cover DTYPE_COUNT");

const struct dtype_info *dtype_get(int t) {
    if (t < 0 || t >= DTYPE_COUNT || table[t].name == NULL) return NULL;
    return &table[t];
}

const char *dtype_name(int t) {
    const struct dtype_info *d = dtype_get(t);
    return d ? d->name : "unknown";
}

size_t dtype_row_bytes(enum dtype t, int64_t n) {
    const struct dtype_info *d = dtype_get(t);
    assert(d && n % d->block_size == 0);
    return (size_t)(n / d->block_size) * d->type_size;
}

bool dtype_supported(int t) {
    const struct dtype_info *d = dtype_get(t);
    return d && d->weight_ok;
}
