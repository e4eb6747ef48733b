/* gguf_writer.c - streaming GGUF v3 writer: KVs serialized as added, tensor data streamed at finish. */
#include "gguf_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/quant.h"

#define GW_DEFAULT_ALIGN 32
#define GW_MAX_NAME 64          /* ggml's GGML_MAX_NAME, including the NUL */
#define GW_CHUNK (1u << 20)     /* bytes per write() of zeros; floats per generated chunk */

enum gw_src { GW_ZEROS, GW_BYTES, GW_F32, GW_GEN };

struct gw_tensor {
    char name[GW_MAX_NAME];
    int n_dims;
    int64_t ne[4];
    enum dtype type;
    uint64_t nbytes;
    uint64_t offset; /* in the data section, set by finish */
    enum gw_src src;
    const void *data;
    gguf_writer_rows_fn fn;
    void *ctx;
};

/* A growable byte buffer; `failed` latches the first allocation failure. */
struct gw_buf {
    uint8_t *p;
    size_t n, cap;
    bool failed;
};

struct gguf_writer {
    char *path;
    unsigned flags;
    struct gw_buf kv;  /* serialized KV records */
    uint64_t n_kv;
    char **keys;       /* for duplicate detection */
    size_t keys_cap;
    uint32_t alignment;
    bool has_alignment_kv;
    struct gw_tensor *tensors;
    uint64_t n_tensors;
    size_t tensors_cap;
    bool finished;
};

/* ---- byte buffer ---- */

static void buf_put(struct gw_buf *b, const void *p, size_t n) {
    if (b->failed || n == 0) return;
    if (n > SIZE_MAX - b->n) {
        b->failed = true;
        return;
    }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) {
            if (cap > SIZE_MAX / 2) {
                b->failed = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

/* Integers are stored little-endian; tpllm only builds on little-endian hosts (x86-64,
 * aarch64), so native byte order is written as is. */
static void buf_u32(struct gw_buf *b, uint32_t v) { buf_put(b, &v, 4); }
static void buf_u64(struct gw_buf *b, uint64_t v) { buf_put(b, &v, 8); }
static void buf_str(struct gw_buf *b, const char *s, size_t n) {
    buf_u64(b, n);
    buf_put(b, s, n);
}

static size_t vtype_size(enum gguf_vtype t) {
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

/* ---- lifecycle ---- */

int gguf_writer_create(struct gguf_writer **out, const char *path, unsigned flags, tp_err *e) {
    *out = NULL;
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return tp_errf(e, TP_ENOMEM, "out of memory creating the GGUF writer for '%s'", path);
    }
    w->flags = flags;
    w->alignment = GW_DEFAULT_ALIGN;
    *out = w;
    return 0;
}

void gguf_writer_free(struct gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv.p);
    free(w->tensors);
    free(w->path);
    free(w);
}

/* ---- metadata ---- */

/* Check the key and append "key | type" to the KV buffer. */
static int kv_begin(struct gguf_writer *w, const char *key, enum gguf_vtype type, tp_err *e) {
    if (w->finished) return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': KV '%s' added after finish", w->path, key);
    if (!key || !key[0]) return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': empty metadata key", w->path);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': metadata key '%s' added twice", w->path, key);
    if (w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? w->keys_cap * 2 : 64;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return tp_errf(e, TP_ENOMEM, "out of memory adding KV '%s'", key);
        w->keys = k;
        w->keys_cap = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key))) return tp_errf(e, TP_ENOMEM, "out of memory adding KV '%s'", key);
    w->n_kv++;
    buf_str(&w->kv, key, strlen(key));
    buf_u32(&w->kv, (uint32_t)type);
    return 0;
}

static int kv_end(struct gguf_writer *w, const char *key, tp_err *e) {
    if (w->kv.failed) return tp_errf(e, TP_ENOMEM, "out of memory adding KV '%s' to '%s'", key, w->path);
    return 0;
}

static int add_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype t, const void *v, tp_err *e) {
    int rc = kv_begin(w, key, t, e);
    if (rc) return rc;
    buf_put(&w->kv, v, vtype_size(t));
    return kv_end(w, key, e);
}

int gguf_writer_add_u8(struct gguf_writer *w, const char *key, uint8_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_UINT8, &v, e);
}
int gguf_writer_add_i8(struct gguf_writer *w, const char *key, int8_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_INT8, &v, e);
}
int gguf_writer_add_u16(struct gguf_writer *w, const char *key, uint16_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_UINT16, &v, e);
}
int gguf_writer_add_i16(struct gguf_writer *w, const char *key, int16_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_INT16, &v, e);
}
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v, tp_err *e) {
    if (!strcmp(key, "general.alignment")) {
        if (v == 0 || (v & (v - 1)))
            return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': general.alignment = %u is not a power of two",
                           w->path, v);
        int rc = add_scalar(w, key, GGUF_VT_UINT32, &v, e);
        if (rc) return rc;
        w->alignment = v;
        w->has_alignment_kv = true;
        return 0;
    }
    return add_scalar(w, key, GGUF_VT_UINT32, &v, e);
}
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_INT32, &v, e);
}
int gguf_writer_add_u64(struct gguf_writer *w, const char *key, uint64_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_UINT64, &v, e);
}
int gguf_writer_add_i64(struct gguf_writer *w, const char *key, int64_t v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_INT64, &v, e);
}
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_FLOAT32, &v, e);
}
int gguf_writer_add_f64(struct gguf_writer *w, const char *key, double v, tp_err *e) {
    return add_scalar(w, key, GGUF_VT_FLOAT64, &v, e);
}
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, bool v, tp_err *e) {
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, GGUF_VT_BOOL, &b, e);
}

int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v, tp_err *e) {
    int rc = kv_begin(w, key, GGUF_VT_STRING, e);
    if (rc) return rc;
    buf_str(&w->kv, v, strlen(v));
    return kv_end(w, key, e);
}

int gguf_writer_add_arr(struct gguf_writer *w, const char *key, enum gguf_vtype type, const void *data,
                        uint64_t n, tp_err *e) {
    size_t sz = vtype_size(type), bytes;
    if (!sz)
        return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': array '%s' of element type %s is not a scalar array",
                       w->path, key, gguf_vtype_name(type));
    if (n > SIZE_MAX || !tp_mul_size(sz, (size_t)n, &bytes))
        return tp_errf(e, TP_EINVAL, "GGUF writer for '%s': array '%s' of %llu elements is too large", w->path,
                       key, (unsigned long long)n);
    int rc = kv_begin(w, key, GGUF_VT_ARRAY, e);
    if (rc) return rc;
    buf_u32(&w->kv, (uint32_t)type);
    buf_u64(&w->kv, n);
    buf_put(&w->kv, data, bytes);
    return kv_end(w, key, e);
}

int gguf_writer_add_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n,
                            tp_err *e) {
    int rc = kv_begin(w, key, GGUF_VT_ARRAY, e);
    if (rc) return rc;
    buf_u32(&w->kv, GGUF_VT_STRING);
    buf_u64(&w->kv, n);
    for (uint64_t i = 0; i < n && !w->kv.failed; i++) buf_str(&w->kv, v[i], strlen(v[i]));
    return kv_end(w, key, e);
}

int gguf_writer_copy_kv(struct gguf_writer *w, const struct gguf_file *f, uint64_t i, tp_err *e) {
    if (i >= f->n_kv) return tp_errf(e, TP_EINVAL, "KV index %llu out of range", (unsigned long long)i);
    const struct gguf_kv *kv = &f->kv[i];
    char key[512];
    if (kv->key.len >= sizeof key)
        return tp_errf(e, TP_EUNSUPPORTED, "'%s': a metadata key of %llu bytes is too long to copy", f->path,
                       (unsigned long long)kv->key.len);
    gguf_str_copy(kv->key, key, sizeof key);
    int rc;
    if (kv->type == GGUF_VT_STRING) {
        struct gguf_str s;
        if ((rc = gguf_get_str(f, key, &s, e))) return rc;
        if ((rc = kv_begin(w, key, GGUF_VT_STRING, e))) return rc;
        buf_str(&w->kv, s.ptr, (size_t)s.len);
        return kv_end(w, key, e);
    }
    if (kv->type != GGUF_VT_ARRAY) {
        if (!vtype_size(kv->type))
            return tp_errf(e, TP_EUNSUPPORTED, "'%s': KV '%s' has value type %d, which cannot be copied", f->path,
                           key, (int)kv->type);
        if (!strcmp(key, "general.alignment") && kv->type == GGUF_VT_UINT32) {
            uint32_t v;
            memcpy(&v, kv->data, 4);
            return gguf_writer_add_u32(w, key, v, e);
        }
        return add_scalar(w, key, kv->type, kv->data, e);
    }
    if ((rc = kv_begin(w, key, GGUF_VT_ARRAY, e))) return rc;
    buf_u32(&w->kv, (uint32_t)kv->arr_type);
    buf_u64(&w->kv, kv->arr_n);
    if (kv->arr_type == GGUF_VT_STRING) {
        for (uint64_t j = 0; j < kv->arr_n && !w->kv.failed; j++) {
            struct gguf_str s = gguf_arr_str(kv, j);
            buf_str(&w->kv, s.ptr, (size_t)s.len);
        }
    } else if (vtype_size(kv->arr_type)) {
        /* The reader validated that the payload of arr_n elements lies inside the file. */
        buf_put(&w->kv, kv->data, (size_t)kv->arr_n * vtype_size(kv->arr_type));
    } else {
        return tp_errf(e, TP_EUNSUPPORTED, "'%s': array KV '%s' of element type %s cannot be copied", f->path, key,
                       gguf_vtype_name(kv->arr_type));
    }
    return kv_end(w, key, e);
}

/* ---- tensors ---- */

/* Name the sizes that would work for a row length that is not a multiple of the block. */
static int bad_row(const char *name, int64_t n, enum dtype type, int64_t blk, tp_err *e) {
    int64_t lo = n / blk * blk, hi = lo + blk;
    if (lo == 0)
        return tp_errf(e, TP_EINVAL,
                       "tensor '%s': row length %lld is not a multiple of %s's block of %lld values; use a "
                       "multiple of %lld (e.g. %lld) or a type with a smaller block (F16, Q8_0 and Q4_0 take "
                       "any multiple of 32)",
                       name, (long long)n, dtype_name(type), (long long)blk, (long long)blk, (long long)hi);
    return tp_errf(e, TP_EINVAL,
                   "tensor '%s': row length %lld is not a multiple of %s's block of %lld values; use a multiple "
                   "of %lld (e.g. %lld or %lld) or a type with a smaller block (F16, Q8_0 and Q4_0 take any "
                   "multiple of 32)",
                   name, (long long)n, dtype_name(type), (long long)blk, (long long)blk, (long long)lo,
                   (long long)hi);
}

static int tensor_add(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne, enum dtype type,
                      enum gw_src src, tp_err *e, struct gw_tensor **out) {
    if (w->finished) return tp_errf(e, TP_EINVAL, "tensor '%s' added after the GGUF file was written", name);
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= GW_MAX_NAME)
        return tp_errf(e, TP_EINVAL, "tensor name '%s' must have 1 to %d bytes", name ? name : "",
                       GW_MAX_NAME - 1);
    if (n_dims < 1 || n_dims > 4)
        return tp_errf(e, TP_EINVAL, "tensor '%s': %d dimensions (GGUF allows 1 to 4)", name, n_dims);
    const struct dtype_info *d = dtype_get(type);
    if (!d) return tp_errf(e, TP_EINVAL, "tensor '%s': unknown ggml type %d", name, (int)type);
    int64_t nel = 1;
    for (int i = 0; i < n_dims; i++) {
        if (ne[i] < 1) return tp_errf(e, TP_EINVAL, "tensor '%s': dimension %d is %lld", name, i, (long long)ne[i]);
        if (!tp_mul_i64(nel, ne[i], &nel))
            return tp_errf(e, TP_EINVAL, "tensor '%s': element count overflows", name);
    }
    if (ne[0] % d->block_size) return bad_row(name, ne[0], type, d->block_size, e);
    if ((src == GW_F32 || src == GW_GEN) && type != DTYPE_F32 && !quant_can_quantize(type)) {
        char ok[256] = "";
        for (int t = 0; t < DTYPE_COUNT; t++)
            if (dtype_supported(t) && (t == DTYPE_F32 || quant_can_quantize((enum dtype)t)))
                snprintf(ok + strlen(ok), sizeof ok - strlen(ok), "%s%s", ok[0] ? ", " : "", dtype_name(t));
        return tp_errf(e, TP_EUNSUPPORTED, "tensor '%s': tpllm cannot quantize to %s; choose one of %s", name,
                       d->name, ok);
    }
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return tp_errf(e, TP_EINVAL, "tensor '%s' added twice to '%s'", name, w->path);
    if (w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        struct gw_tensor *t = realloc(w->tensors, cap * sizeof *t);
        if (!t) return tp_errf(e, TP_ENOMEM, "out of memory adding tensor '%s'", name);
        w->tensors = t;
        w->tensors_cap = cap;
    }
    struct gw_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, len + 1);
    t->n_dims = n_dims;
    for (int i = 0; i < 4; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->type = type;
    uint64_t rows = (uint64_t)(nel / ne[0]), nbytes;
    if (__builtin_mul_overflow(rows, (uint64_t)dtype_row_bytes(type, ne[0]), &nbytes)) {
        w->n_tensors--;
        return tp_errf(e, TP_EINVAL, "tensor '%s': byte size overflows", name);
    }
    t->nbytes = nbytes;
    t->src = src;
    *out = t;
    return 0;
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                           enum dtype type, const void *data, tp_err *e) {
    struct gw_tensor *t;
    int rc = tensor_add(w, name, n_dims, ne, type, data ? GW_BYTES : GW_ZEROS, e, &t);
    if (rc) return rc;
    t->data = data;
    return 0;
}

int gguf_writer_add_tensor_f32(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                               enum dtype type, const float *src, tp_err *e) {
    struct gw_tensor *t;
    int rc = tensor_add(w, name, n_dims, ne, type, GW_F32, e, &t);
    if (rc) return rc;
    t->data = src;
    return 0;
}

int gguf_writer_add_tensor_gen(struct gguf_writer *w, const char *name, int n_dims, const int64_t *ne,
                               enum dtype type, gguf_writer_rows_fn fn, void *ctx, tp_err *e) {
    struct gw_tensor *t;
    int rc = tensor_add(w, name, n_dims, ne, type, GW_GEN, e, &t);
    if (rc) return rc;
    t->fn = fn;
    t->ctx = ctx;
    return 0;
}

/* ---- layout ---- */

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Header bytes before the padding, including the general.alignment KV finish appends. */
static uint64_t header_size(const struct gguf_writer *w) {
    uint64_t n = 4 + 4 + 8 + 8 + w->kv.n;
    if (!w->has_alignment_kv) n += 8 + strlen("general.alignment") + 4 + 4;
    for (uint64_t i = 0; i < w->n_tensors; i++)
        n += 8 + strlen(w->tensors[i].name) + 4 + 8 * (uint64_t)w->tensors[i].n_dims + 4 + 8;
    return n;
}

uint64_t gguf_writer_file_size(const struct gguf_writer *w) {
    uint64_t n = align_up(header_size(w), w->alignment);
    for (uint64_t i = 0; i < w->n_tensors; i++) n += align_up(w->tensors[i].nbytes, w->alignment);
    return n;
}

/* ---- output ---- */

/* The open output file and what has been written, for messages. */
struct gw_out {
    int fd;
    const char *path;   /* final path, for messages */
    uint64_t pos;       /* bytes written or skipped so far */
    uint64_t total;     /* the file's final size */
    bool sparse;
    uint8_t *zeros;     /* GW_CHUNK zero bytes */
};

static int io_fail(struct gw_out *o, const char *what, int err, tp_err *e) {
    if (err == ENOSPC || err == EDQUOT)
        return tp_errf(e, TP_EIO,
                       "%s '%s': %s after %llu of %llu bytes; free disk space (the model needs %.2f GiB) or "
                       "write it to another file system",
                       what, o->path, strerror(err), (unsigned long long)o->pos, (unsigned long long)o->total,
                       (double)o->total / (1024.0 * 1024.0 * 1024.0));
    if (err == EFBIG)
        return tp_errf(e, TP_EIO, "%s '%s': %s at byte %llu; the file system or 'ulimit -f' limits the file size",
                       what, o->path, strerror(err), (unsigned long long)o->pos);
    return tp_errf(e, TP_EIO, "%s '%s': %s at byte %llu of %llu; check the disk and the directory", what, o->path,
                   strerror(err), (unsigned long long)o->pos, (unsigned long long)o->total);
}

static int out_write(struct gw_out *o, const void *p, size_t n, tp_err *e) {
    const uint8_t *c = p;
    while (n > 0) {
        ssize_t k = write(o->fd, c, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return io_fail(o, "writing", errno, e);
        }
        if (k == 0) return io_fail(o, "writing", ENOSPC, e);
        c += k;
        n -= (size_t)k;
        o->pos += (uint64_t)k;
    }
    return 0;
}

/* n zero bytes: a hole when sparse, written zeros otherwise. */
static int out_zeros(struct gw_out *o, uint64_t n, tp_err *e) {
    if (o->sparse) {
        if (lseek(o->fd, (off_t)n, SEEK_CUR) < 0) return io_fail(o, "seeking in", errno, e);
        o->pos += n;
        return 0;
    }
    while (n > 0) {
        size_t k = n < GW_CHUNK ? (size_t)n : GW_CHUNK;
        int rc = out_write(o, o->zeros, k, e);
        if (rc) return rc;
        n -= k;
    }
    return 0;
}

static int out_pad(struct gw_out *o, uint32_t align, tp_err *e) {
    return out_zeros(o, align_up(o->pos, align) - o->pos, e);
}

/* Quantize F32 rows (from memory or a generator) chunk by chunk and write them. */
static int out_rows(struct gw_out *o, const struct gw_tensor *t, tp_err *e) {
    int64_t row_len = t->ne[0];
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    size_t row_bytes = dtype_row_bytes(t->type, row_len);
    int64_t chunk = (int64_t)(GW_CHUNK / 4) / row_len;
    if (chunk < 1) chunk = 1;
    if (chunk > rows) chunk = rows;
    float *fbuf = NULL;
    uint8_t *qbuf = NULL;
    int rc = 0;
    if (t->src == GW_GEN && !(fbuf = malloc((size_t)(chunk * row_len) * sizeof *fbuf))) goto oom;
    if (t->type != DTYPE_F32 && !(qbuf = malloc((size_t)chunk * row_bytes))) goto oom;
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += chunk) {
        int64_t nr = TP_MIN(chunk, rows - r0);
        const float *x;
        if (t->src == GW_GEN) {
            if ((rc = t->fn(t->ctx, fbuf, r0, nr, row_len, e))) {
                tp_err_wrap(e, "generating tensor '%s'", t->name);
                break;
            }
            x = fbuf;
        } else {
            x = (const float *)t->data + r0 * row_len;
        }
        if (t->type == DTYPE_F32) {
            rc = out_write(o, x, (size_t)(nr * row_len) * sizeof *x, e);
            continue;
        }
        for (int64_t r = 0; r < nr; r++) {
            size_t k = quant_quantize_row(t->type, x + r * row_len, qbuf + (size_t)r * row_bytes, row_len);
            if (k != row_bytes) {
                rc = tp_errf(e, TP_EUNSUPPORTED, "tensor '%s': quantizing a row to %s gave %zu bytes, not %zu",
                             t->name, dtype_name(t->type), k, row_bytes);
                break;
            }
        }
        if (!rc) rc = out_write(o, qbuf, (size_t)nr * row_bytes, e);
    }
    free(fbuf);
    free(qbuf);
    return rc;
oom:
    free(fbuf);
    free(qbuf);
    return tp_errf(e, TP_ENOMEM, "out of memory writing tensor '%s'", t->name);
}

static int out_tensor(struct gw_out *o, const struct gw_tensor *t, tp_err *e) {
    switch (t->src) {
    case GW_ZEROS: return out_zeros(o, t->nbytes, e);
    case GW_BYTES: {
        const uint8_t *p = t->data;
        for (uint64_t done = 0; done < t->nbytes;) { /* bounded writes: write() caps near 2 GiB */
            size_t k = (size_t)TP_MIN(t->nbytes - done, (uint64_t)1 << 30);
            int rc = out_write(o, p + done, k, e);
            if (rc) return rc;
            done += k;
        }
        return 0;
    }
    default: return out_rows(o, t, e);
    }
}

static int write_header(struct gguf_writer *w, struct gw_out *o, tp_err *e) {
    struct gw_buf h = {0};
    buf_put(&h, "GGUF", 4);
    buf_u32(&h, 3);
    buf_u64(&h, w->n_tensors);
    buf_u64(&h, w->n_kv);
    buf_put(&h, w->kv.p, w->kv.n);
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        struct gw_tensor *t = &w->tensors[i];
        t->offset = off;
        off += align_up(t->nbytes, w->alignment);
        buf_str(&h, t->name, strlen(t->name));
        buf_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) buf_u64(&h, (uint64_t)t->ne[d]);
        buf_u32(&h, (uint32_t)t->type);
        buf_u64(&h, t->offset);
    }
    int rc = h.failed ? tp_errf(e, TP_ENOMEM, "out of memory building the header of '%s'", w->path)
                      : out_write(o, h.p, h.n, e);
    free(h.p);
    return rc;
}

int gguf_writer_finish(struct gguf_writer *w, tp_err *e) {
    if (w->finished) return tp_errf(e, TP_EINVAL, "'%s' was already written", w->path);
    if (!w->has_alignment_kv) {
        uint32_t a = w->alignment;
        int rc = add_scalar(w, "general.alignment", GGUF_VT_UINT32, &a, e);
        if (rc) return rc;
        w->has_alignment_kv = true;
    }
    w->finished = true;
    size_t plen = strlen(w->path) + sizeof ".partial";
    char *tmp = malloc(plen);
    struct gw_out o = {.fd = -1, .path = w->path, .total = gguf_writer_file_size(w),
                       .sparse = (w->flags & GGUF_WRITER_SPARSE) != 0, .zeros = calloc(1, GW_CHUNK)};
    int rc = 0;
    if (!tmp || !o.zeros) {
        rc = tp_errf(e, TP_ENOMEM, "out of memory writing '%s'", w->path);
        goto done;
    }
    snprintf(tmp, plen, "%s.partial", w->path);
    o.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o.fd < 0) {
        int err = errno;
        rc = tp_errf(e, TP_EIO, "cannot create '%s': %s; check that the directory exists and is writable, or "
                     "choose another output path", tmp, strerror(err));
        goto done;
    }
    if ((rc = write_header(w, &o, e))) goto done;
    if ((rc = out_pad(&o, w->alignment, e))) goto done;
    for (uint64_t i = 0; i < w->n_tensors && !rc; i++) {
        rc = out_tensor(&o, &w->tensors[i], e);
        if (!rc) rc = out_pad(&o, w->alignment, e);
    }
    if (rc) goto done;
    /* A trailing hole is only a seek: ftruncate gives the file its length. */
    if (ftruncate(o.fd, (off_t)o.pos) != 0) {
        rc = io_fail(&o, "setting the size of", errno, e);
        goto done;
    }
    if (o.pos != o.total) {
        rc = tp_errf(e, TP_EIO, "'%s': wrote %llu bytes but planned %llu (internal error)", w->path,
                     (unsigned long long)o.pos, (unsigned long long)o.total);
        goto done;
    }
    int fd = o.fd;
    o.fd = -1;
    if (close(fd) != 0) {
        rc = io_fail(&o, "closing", errno, e);
        goto done;
    }
    if (rename(tmp, w->path) != 0)
        rc = tp_errf(e, TP_EIO, "cannot rename '%s' to '%s': %s; check the directory's permissions", tmp,
                     w->path, strerror(errno));
done:
    if (o.fd >= 0) close(o.fd);
    if (rc && tmp) unlink(tmp);
    free(tmp);
    free(o.zeros);
    return rc;
}
