/* gguf.h - bounded, validating reader of GGUF v2/v3 model files, mapped read-only.
 *
 * Byte layout (little-endian):
 *   u32 magic "GGUF" | u32 version (2 or 3) | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
 *   string = u64 len | len bytes (not NUL-terminated)
 *   value  = scalar of value_type | string | array: u32 elem_type | u64 n | n elements
 *
 * Everything the file claims is checked before use: lengths against the bytes that
 * remain, counts, n_dims <= 4, element and byte counts without overflow, rows a multiple
 * of the type's block, data offsets aligned, inside the file and not overlapping,
 * duplicate keys and tensor names. A malformed file yields TP_EFORMAT with a message
 * naming the offending key/tensor and byte offset; a tensor of a type tpllm cannot
 * compute with is accepted by the reader (the loader refuses it by name). */
#ifndef TPLLM_GGUF_H
#define TPLLM_GGUF_H

#include "../kernels/base.h"
#include "../kernels/dtype.h"

/* Longest tensor name GGUF allows, in bytes. */
#define GGUF_MAX_NAME 64
/* Data alignment when the file has no `general.alignment`. */
#define GGUF_DEFAULT_ALIGNMENT 32

enum gguf_vtype {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
    GGUF_VT_COUNT,
};

/* A string inside the mapped file: not NUL-terminated. */
struct gguf_str {
    const char *ptr;
    uint64_t len;
};

struct gguf_kv {
    struct gguf_str key;
    enum gguf_vtype type;     /* GGUF_VT_ARRAY for arrays */
    enum gguf_vtype arr_type; /* element type when type == GGUF_VT_ARRAY */
    uint64_t arr_n;           /* element count when type == GGUF_VT_ARRAY */
    const uint8_t *data;      /* the value's bytes (scalar, string record, or array payload) */
    uint64_t *str_off;        /* string arrays: byte offset of element i's string record
                               * (u64 len | bytes) from data (owned; NULL otherwise) */
};

struct gguf_tensor {
    char name[128];       /* NUL-terminated copy (GGUF limits names to 64 bytes; longer is refused) */
    uint32_t n_dims;
    int64_t ne[4];        /* ne[0] is the row length (contiguous), unused dims are 1 */
    int type;             /* ggml type id (enum dtype when known) */
    uint64_t offset;      /* relative to the data section */
    uint64_t nbytes;
    const uint8_t *data;  /* inside the mapping */
    uint64_t info_offset; /* byte offset of this tensor's info record in the file */
};

struct gguf_file {
    const char *path;       /* as opened (copy owned by this struct) */
    const uint8_t *map;     /* whole file */
    size_t size;
    bool owns_map;          /* false when opened from memory */
    uint32_t version;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    size_t alignment;
    size_t data_offset;     /* start of the tensor data section (header end rounded up to
                             * alignment; may lie past the end when there are no tensors) */
    uint64_t data_bytes;    /* sum of tensor byte sizes */
    struct gguf_kv **kv_sorted;          /* kv sorted by key, for lookups (owned) */
    struct gguf_tensor **tensors_sorted; /* tensors sorted by name, for lookups (owned) */
};

/* Open and validate `path`. On failure returns a negative status, *out = NULL, e filled. */
int gguf_open(struct gguf_file **out, const char *path, tp_err *e);
/* Validate a file image already in memory (not copied; must outlive the result). */
int gguf_open_memory(struct gguf_file **out, const void *buf, size_t size, tp_err *e);
/* Unmap and free everything; pointers obtained from f die with it. NULL is a no-op. */
void gguf_close(struct gguf_file *f);

/* Index of key in f->kv, or -1 (O(log n_kv)). */
int64_t gguf_find_key(const struct gguf_file *f, const char *key);
/* Tensor named `name`, or NULL (O(log n_tensors)). */
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);
/* 0 when tpllm computes with t's type; otherwise TP_EUNSUPPORTED and the message
 * "tensor 'T' has type IQ2_XXS, which tpllm does not support yet; ..." (e filled). */
int gguf_check_supported(const struct gguf_tensor *t, tp_err *e);

/* Typed getters. Integers convert between widths when the value fits; a missing key
 * returns TP_ENOTFOUND (e untouched, so callers can apply defaults); a wrong type or an
 * out-of-range value returns TP_EFORMAT naming the key, expected and found types. */
int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out, tp_err *e);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, tp_err *e);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, tp_err *e);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, tp_err *e);
/* Array: element type and count; elements through gguf_arr_* below. Any of type, n,
 * kv may be NULL when not wanted. */
int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype *type, uint64_t *n,
                 const struct gguf_kv **kv, tp_err *e);
/* Element i of a numeric (or bool) array as double / int64. i out of range or a
 * non-numeric array gives NaN / 0; floats convert to int64 truncated and saturated,
 * UINT64 values above INT64_MAX saturate to INT64_MAX. */
double gguf_arr_f64(const struct gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i);
/* Element i of a string array. O(1) after open (string offsets are indexed once).
 * i out of range or a non-string array gives {"", 0}. */
struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i);

/* "UINT32", "STRING", ... or "unknown". */
const char *gguf_vtype_name(int t);
/* Copy a gguf_str into buf as a NUL-terminated string (truncated to n-1 bytes). */
const char *gguf_str_copy(struct gguf_str s, char *buf, size_t n);
bool gguf_str_eq(struct gguf_str s, const char *z);

#endif
