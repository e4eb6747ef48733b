/* gguf_writer.h - streaming writer of GGUF v3 files (metadata, tensor infos, aligned tensor data).
 *
 * Byte layout written (little-endian; the reader's gguf.h describes the same format):
 *   u32 magic "GGUF" | u32 version 3 | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   zero padding to the alignment | tensor data, each tensor padded to the alignment
 *
 * Use: gguf_writer_create, then any number of gguf_writer_add_* (KVs and tensors keep the
 * order they were added in), then gguf_writer_finish, then gguf_writer_free. Values of KVs
 * are copied when added; tensor data is only read during gguf_writer_finish, so the
 * pointers (and generator contexts) handed to the add_tensor calls must stay valid until
 * then. Nothing is written to disk before gguf_writer_finish: it writes "<path>.partial"
 * and renames it to path once every byte is written, so a failed or interrupted write
 * never leaves a truncated model under the final name.
 *
 * The alignment is general.alignment when the caller adds it (u32, a power of two),
 * otherwise 32, and the writer then appends general.alignment = 32 itself. */
#ifndef TPLLM_GGUF_WRITER_H
#define TPLLM_GGUF_WRITER_H

#include "gguf.h"

struct gguf_writer;

/* Options for gguf_writer_create. */
enum gguf_writer_flags {
    /* Zero tensors become holes (lseek + ftruncate) instead of written zeros: a 16 GB
     * all-zero model then costs no disk and takes no time. For memory planning only. */
    GGUF_WRITER_SPARSE = 1u << 0,
};

/* Start a file to be written at `path` (nothing is created yet). Returns 0, or TP_ENOMEM
 * with e filled; *out is NULL on failure. */
int gguf_writer_create(struct gguf_writer **out, const char *path, unsigned flags, tp_err *e);
/* Release the writer; free(NULL) is a no-op. Does not remove a finished file. */
void gguf_writer_free(struct gguf_writer *w);

/* Metadata. Each returns 0, or TP_EINVAL for a duplicate or empty key (naming it), or
 * TP_ENOMEM. The value is copied. */
int gguf_writer_add_u8(struct gguf_writer *w, const char *key, uint8_t v, tp_err *e);
int gguf_writer_add_i8(struct gguf_writer *w, const char *key, int8_t v, tp_err *e);
int gguf_writer_add_u16(struct gguf_writer *w, const char *key, uint16_t v, tp_err *e);
int gguf_writer_add_i16(struct gguf_writer *w, const char *key, int16_t v, tp_err *e);
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v, tp_err *e);
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v, tp_err *e);
int gguf_writer_add_u64(struct gguf_writer *w, const char *key, uint64_t v, tp_err *e);
int gguf_writer_add_i64(struct gguf_writer *w, const char *key, int64_t v, tp_err *e);
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v, tp_err *e);
int gguf_writer_add_f64(struct gguf_writer *w, const char *key, double v, tp_err *e);
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v, tp_err *e);
/* A NUL-terminated string. */
int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v, tp_err *e);
/* An array of n scalars of type `type` (any scalar type but STRING; BOOL elements are one
 * byte each), read from `data` in the file's little-endian layout. */
int gguf_writer_add_arr(struct gguf_writer *w, const char *key, enum gguf_vtype type, const void *data,
                        uint64_t n, tp_err *e);
/* An array of n NUL-terminated strings. */
int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n,
                            tp_err *e);
/* Copy KV number i of an open file (any type, arrays included) under its own key. */
int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_file *f, uint64_t i, tp_err *e);

/* Produces rows row0 .. row0+n_rows-1 of a tensor as F32, each row_len values, into dst
 * ([n_rows][row_len]). Returns 0 or a negative status with e filled. */
typedef int (*gguf_writer_rows_fn)(void *ctx, float *dst, int64_t row0, int64_t n_rows, int64_t row_len,
                                   tp_err *e);

/* Tensors. ne[0] is the row length; 1 <= n_dims <= 4; every ne[i] >= 1; the name must be
 * shorter than 64 bytes and unique; ne[0] must be a multiple of the type's block size
 * (the error says which sizes work). Each returns 0 or TP_EINVAL / TP_EUNSUPPORTED /
 * TP_ENOMEM with e naming the tensor. */

/* Raw data of the stored type (dtype_row_bytes(type, ne[0]) * rows bytes), or NULL for an
 * all-zero tensor. */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                           enum dtype type, const void *data, tp_err *e);
/* F32 values (ne[0] * rows floats) quantized to `type` with quant_quantize_row while writing. */
int gguf_writer_add_tensor_f32(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                               enum dtype type, const float *src, tp_err *e);
/* F32 rows produced on demand by fn(ctx, ...) and quantized to `type` while writing, so that
 * a large tensor never sits in memory whole. */
int gguf_writer_add_tensor_gen(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                               enum dtype type, gguf_writer_rows_fn fn, void *ctx, tp_err *e);

/* Bytes the finished file will have (header, padding and data); valid after the adds. */
uint64_t gguf_writer_file_size(const struct gguf_writer *w);

/* Write the whole file. Returns 0, or TP_EIO (naming the path and the OS reason, with the
 * fix: free disk space, another directory, permissions), or a generator's status; on
 * failure the partial file is removed. May be called once. */
int gguf_writer_finish(struct gguf_writer *w, tp_err *e);

#endif
