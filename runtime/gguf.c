/* gguf.c - GGUF v2/v3 reader: maps the file, validates every field before using it and
 * indexes metadata and tensors for lookups. Byte layout and guarantees: see gguf.h. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian fields with memcpy: port it before building on a big-endian host"
#endif

/* The smallest encodings, which bound the counts a header may claim before anything is
 * allocated: a metadata entry is at least key length (8) + one key byte + value type (4)
 * + a 1-byte value; a tensor info at least name length (8) + one name byte + n_dims (4)
 * + ne[0] (8) + type (4) + offset (8). */
#define MIN_KV_BYTES 14u
#define MIN_TENSOR_BYTES 33u

#define HINT_TRUNC "the file is truncated — download it again"
#define HINT_CORRUPT "the file is corrupt — download or convert it again"

#define TRY(x)                   \
    do {                         \
        int rc_ = (x);           \
        if (rc_ < 0) return rc_; \
    } while (0)

static const char *const vt_names[GGUF_VT_COUNT] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};
_Static_assert(TP_ARRAY_LEN(vt_names) == GGUF_VT_COUNT, "vt_names must cover GGUF_VT_COUNT");

/* Bytes of one scalar of each type; 0 for the variable-length STRING and ARRAY. */
static const uint8_t vt_size[GGUF_VT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
_Static_assert(TP_ARRAY_LEN(vt_size) == GGUF_VT_COUNT, "vt_size must cover GGUF_VT_COUNT");

const char *gguf_vtype_name(int t) {
    return t >= 0 && t < GGUF_VT_COUNT ? vt_names[t] : "unknown";
}

/* ---- strings ---------------------------------------------------------------------- */

const char *gguf_str_copy(struct gguf_str s, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    size_t k = s.len < n - 1 ? (size_t)s.len : n - 1;
    if (k) memcpy(buf, s.ptr, k);
    buf[k] = '\0';
    return buf;
}

bool gguf_str_eq(struct gguf_str s, const char *z) {
    size_t zl = strlen(z);
    return s.len == zl && (zl == 0 || memcmp(s.ptr, z, zl) == 0);
}

static int str_cmp(struct gguf_str a, const char *b, size_t bl) {
    size_t m = a.len < bl ? (size_t)a.len : bl;
    int c = m ? memcmp(a.ptr, b, m) : 0;
    if (c) return c;
    return a.len < bl ? -1 : a.len > bl ? 1 : 0;
}

/* s as printable text for messages: bytes outside printable ASCII as \xNN, cut to fit
 * buf (n >= 8) with "..." when longer. */
static const char *show(struct gguf_str s, char *buf, size_t n) {
    size_t o = 0;
    for (uint64_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (o + 8 >= n) {
            memcpy(buf + o, "...", 4);
            return buf;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    }
    buf[o] = '\0';
    return buf;
}

/* ---- the parser ------------------------------------------------------------------- */

struct parser {
    struct gguf_file *f;
    tp_err *e;
    size_t pos;          /* next byte to read */
    const char *kind;    /* "key" or "tensor" while reading one, else NULL (the header) */
    uint64_t index;      /* which entry of `kind` */
    struct gguf_str name; /* its key / name once read (len 0 before) */
};

/* Record "path: msg" as TP_EFORMAT. */
static int ferr(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ferr(struct parser *ps, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return tp_errf(ps->e, TP_EFORMAT, "%s: %s", ps->f->path, msg);
}

/* Record "path: key 'k'<msg>" (or tensor 'n', key #i, ...) as TP_EFORMAT: msg continues
 * the sentence that names the entry being read. */
static int perr(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(struct parser *ps, const char *fmt, ...) {
    char msg[800], who[200], nm[120];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!ps->kind) snprintf(who, sizeof who, "the header");
    else if (ps->name.ptr) snprintf(who, sizeof who, "%s '%s'", ps->kind, show(ps->name, nm, sizeof nm));
    else snprintf(who, sizeof who, "%s #%llu", ps->kind, (unsigned long long)ps->index);
    return tp_errf(ps->e, TP_EFORMAT, "%s: %s%s", ps->f->path, who, msg);
}

static size_t remain(const struct parser *ps) { return ps->f->size - ps->pos; }

/* Check that n more bytes exist for `what`. */
static int need(struct parser *ps, uint64_t n, const char *what) {
    if (n <= remain(ps)) return 0;
    return perr(ps, ": the %s at byte %zu needs %llu bytes, but the file ends at byte %zu; " HINT_TRUNC,
                what, ps->pos, (unsigned long long)n, ps->f->size);
}

static int rd_u32(struct parser *ps, uint32_t *v, const char *what) {
    TRY(need(ps, 4, what));
    memcpy(v, ps->f->map + ps->pos, 4);
    ps->pos += 4;
    return 0;
}

static int rd_u64(struct parser *ps, uint64_t *v, const char *what) {
    TRY(need(ps, 8, what));
    memcpy(v, ps->f->map + ps->pos, 8);
    ps->pos += 8;
    return 0;
}

/* A string record; `what` names it ("key", "string value"), elem >= 0 its array index. */
static int rd_str(struct parser *ps, struct gguf_str *s, const char *what, int64_t elem) {
    char w[96];
    if (elem >= 0) snprintf(w, sizeof w, "length of %s %lld", what, (long long)elem);
    else snprintf(w, sizeof w, "length of the %s", what);
    size_t at = ps->pos;
    uint64_t len;
    TRY(rd_u64(ps, &len, w));
    if (len > remain(ps))
        return perr(ps, ": the %s at byte %zu says %llu bytes, but only %zu bytes remain in the file; " HINT_TRUNC,
                    w, at, (unsigned long long)len, remain(ps));
    s->ptr = (const char *)ps->f->map + ps->pos;
    s->len = len;
    ps->pos += (size_t)len;
    return 0;
}

/* Make room for element n of *arr (capacity *cap, never more than max elements). */
static int grow(struct parser *ps, void **arr, size_t *cap, size_t n, size_t elsize, size_t max) {
    if (n < *cap) return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    if (nc > max) nc = max;
    void *p = realloc(*arr, nc * elsize); /* nc * elsize <= a few times the file size */
    if (!p)
        return tp_errf(ps->e, TP_ENOMEM, "%s: out of memory while indexing %zu entries; free some memory and retry",
                       ps->f->path, nc);
    *arr = p;
    *cap = nc;
    return 0;
}

static int parse_header(struct parser *ps, uint64_t *n_kv, uint64_t *n_tensors) {
    struct gguf_file *f = ps->f;
    if (f->size < 4)
        return ferr(ps, "the file is only %zu bytes long, too short for a GGUF header (24 bytes); " HINT_TRUNC, f->size);
    const uint8_t *m = f->map;
    if (memcmp(m, "GGUF", 4) != 0) {
        if (!memcmp(m, "lmgg", 4) || !memcmp(m, "fmgg", 4) || !memcmp(m, "tjgg", 4) || !memcmp(m, "algg", 4))
            return ferr(ps, "this is a legacy GGML/GGJT model file (magic '%.4s'), which predates GGUF; convert the "
                            "original model to GGUF with a current llama.cpp (convert_hf_to_gguf.py)", (const char *)m);
        return ferr(ps, "not a GGUF file: it starts with bytes %02x %02x %02x %02x, expected 47 47 55 46 (\"GGUF\"); "
                        "pass a .gguf model file", m[0], m[1], m[2], m[3]);
    }
    ps->pos = 4;
    uint32_t version;
    TRY(rd_u32(ps, &version, "version"));
    f->version = version;
    if (version == 1)
        return ferr(ps, "GGUF version 1 (the first GGUF files, from August 2023) is not supported; re-convert the model "
                        "with a newer llama.cpp (convert_hf_to_gguf.py), which writes version 3");
    if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3)
        return ferr(ps, "this is a big-endian GGUF file (version field 0x%08x at byte 4); tpllm reads little-endian "
                        "files only — convert the model again without --bigendian", version);
    if (version != 2 && version != 3)
        return ferr(ps, "GGUF version %u at byte 4 is not supported (this reader supports versions 2 and 3); %s",
                    version, version > 3 ? "upgrade tpllm, or convert the model with a llama.cpp that writes version 3"
                                         : HINT_CORRUPT);
    TRY(rd_u64(ps, n_tensors, "tensor count"));
    TRY(rd_u64(ps, n_kv, "metadata count"));
    size_t rem = remain(ps);
    if (*n_kv > rem / MIN_KV_BYTES)
        return ferr(ps, "the header claims %llu metadata entries (byte 16), but the %zu bytes after the header can "
                        "hold at most %zu; the file is truncated or corrupt — download it again",
                    (unsigned long long)*n_kv, rem, rem / MIN_KV_BYTES);
    rem -= (size_t)*n_kv * MIN_KV_BYTES;
    if (*n_tensors > rem / MIN_TENSOR_BYTES)
        return ferr(ps, "the header claims %llu tensors (byte 8), but the %zu bytes left after %llu metadata entries "
                        "can hold at most %zu tensor infos; the file is truncated or corrupt — download it again",
                    (unsigned long long)*n_tensors, rem, (unsigned long long)*n_kv, rem / MIN_TENSOR_BYTES);
    return 0;
}

static int parse_array(struct parser *ps, struct gguf_kv *kv) {
    const uint8_t *m = ps->f->map;
    size_t at = ps->pos;
    uint32_t et;
    TRY(rd_u32(ps, &et, "array element type"));
    if (et == GGUF_VT_ARRAY)
        return perr(ps, " is an array of arrays (element type at byte %zu); nested arrays are not supported; " HINT_CORRUPT, at);
    if (et >= GGUF_VT_COUNT)
        return perr(ps, " has an array of unknown element type %u at byte %zu (expected 0 to %d); " HINT_CORRUPT, et, at,
                    GGUF_VT_COUNT - 1);
    at = ps->pos;
    uint64_t n;
    TRY(rd_u64(ps, &n, "array length"));
    size_t min_el = et == GGUF_VT_STRING ? 8 : vt_size[et];
    if (n > remain(ps) / min_el)
        return perr(ps, ": the array length at byte %zu says %llu %s elements (at least %zu bytes each), but only %zu "
                        "bytes remain in the file; " HINT_TRUNC,
                    at, (unsigned long long)n, vt_names[et], min_el, remain(ps));
    kv->arr_type = (enum gguf_vtype)et;
    kv->arr_n = n;
    kv->data = m + ps->pos;
    if (et != GGUF_VT_STRING) {
        if (et == GGUF_VT_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (m[ps->pos + i] > 1)
                    return perr(ps, ": bool element %llu at byte %zu is %u, expected 0 or 1; " HINT_CORRUPT,
                                (unsigned long long)i, ps->pos + (size_t)i, m[ps->pos + i]);
        ps->pos += (size_t)n * min_el;
        return 0;
    }
    if (n == 0) return 0;
    kv->str_off = malloc((size_t)n * sizeof *kv->str_off); /* n <= remaining bytes / 8 */
    if (!kv->str_off)
        return tp_errf(ps->e, TP_ENOMEM, "%s: out of memory indexing a %llu-string array; free some memory and retry",
                       ps->f->path, (unsigned long long)n);
    size_t base = ps->pos;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s;
        kv->str_off[i] = ps->pos - base;
        TRY(rd_str(ps, &s, "string element", (int64_t)i));
    }
    return 0;
}

static int parse_value(struct parser *ps, struct gguf_kv *kv) {
    const uint8_t *m = ps->f->map;
    size_t at = ps->pos;
    uint32_t t;
    TRY(rd_u32(ps, &t, "value type"));
    if (t >= GGUF_VT_COUNT)
        return perr(ps, " has unknown value type %u at byte %zu (expected 0 to %d); " HINT_CORRUPT, t, at,
                    GGUF_VT_COUNT - 1);
    kv->type = (enum gguf_vtype)t;
    kv->data = m + ps->pos;
    if (t == GGUF_VT_ARRAY) return parse_array(ps, kv);
    if (t == GGUF_VT_STRING) {
        struct gguf_str s;
        return rd_str(ps, &s, "string value", -1);
    }
    TRY(need(ps, vt_size[t], vt_names[t]));
    if (t == GGUF_VT_BOOL && m[ps->pos] > 1)
        return perr(ps, ": the bool value at byte %zu is %u, expected 0 or 1; " HINT_CORRUPT, ps->pos, m[ps->pos]);
    ps->pos += vt_size[t];
    return 0;
}

static int parse_kvs(struct parser *ps, uint64_t n_kv) {
    struct gguf_file *f = ps->f;
    size_t cap = 0;
    ps->kind = "key";
    for (uint64_t i = 0; i < n_kv; i++) {
        TRY(grow(ps, (void **)&f->kv, &cap, (size_t)i, sizeof *f->kv, (size_t)n_kv));
        struct gguf_kv *kv = &f->kv[i];
        memset(kv, 0, sizeof *kv);
        f->n_kv = i + 1; /* from here gguf_close frees what kv owns */
        ps->index = i;
        ps->name = (struct gguf_str){0};
        size_t at = ps->pos;
        TRY(rd_str(ps, &kv->key, "key", -1));
        if (kv->key.len == 0) return perr(ps, " at byte %zu has an empty name; " HINT_CORRUPT, at);
        const char *nul = memchr(kv->key.ptr, 0, (size_t)kv->key.len);
        ps->name = kv->key;
        if (nul)
            return perr(ps, " (at byte %zu) contains a NUL byte at position %zu; " HINT_CORRUPT, at,
                        (size_t)(nul - kv->key.ptr));
        TRY(parse_value(ps, kv));
    }
    ps->kind = NULL;
    return 0;
}

static int kv_order(const void *a, const void *b) {
    const struct gguf_kv *x = *(struct gguf_kv *const *)a, *y = *(struct gguf_kv *const *)b;
    int c = str_cmp(x->key, y->key.ptr, (size_t)y->key.len);
    return c ? c : (x < y ? -1 : x > y);
}

/* Sort keys for lookups; refuse duplicates. */
static int index_kvs(struct parser *ps) {
    struct gguf_file *f = ps->f;
    if (f->n_kv == 0) return 0;
    f->kv_sorted = malloc((size_t)f->n_kv * sizeof *f->kv_sorted);
    if (!f->kv_sorted) return tp_errf(ps->e, TP_ENOMEM, "%s: out of memory indexing metadata", f->path);
    for (uint64_t i = 0; i < f->n_kv; i++) f->kv_sorted[i] = &f->kv[i];
    qsort(f->kv_sorted, (size_t)f->n_kv, sizeof *f->kv_sorted, kv_order);
    for (uint64_t i = 1; i < f->n_kv; i++) {
        const struct gguf_kv *a = f->kv_sorted[i - 1], *b = f->kv_sorted[i];
        if (str_cmp(a->key, b->key.ptr, (size_t)b->key.len) == 0) {
            char nm[120];
            return ferr(ps, "key '%s' appears twice (metadata entries #%zu at byte %zu and #%zu at byte %zu); " HINT_CORRUPT,
                        show(a->key, nm, sizeof nm), (size_t)(a - f->kv), (size_t)((const uint8_t *)a->key.ptr - f->map - 8),
                        (size_t)(b - f->kv), (size_t)((const uint8_t *)b->key.ptr - f->map - 8));
        }
    }
    return 0;
}

static const struct gguf_kv *lookup(const struct gguf_file *f, const char *key) {
    if (!f || !key || !f->kv_sorted) return NULL;
    size_t kl = strlen(key), lo = 0, hi = (size_t)f->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = str_cmp(f->kv_sorted[mid]->key, key, kl);
        if (c == 0) return f->kv_sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static int read_alignment(struct parser *ps) {
    struct gguf_file *f = ps->f;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct gguf_kv *kv = lookup(f, "general.alignment");
    if (!kv) return 0;
    if (kv->type != GGUF_VT_UINT32)
        return ferr(ps, "key 'general.alignment' (value at byte %zu) has type %s, expected UINT32; " HINT_CORRUPT,
                    (size_t)(kv->data - f->map), vt_names[kv->type]);
    uint32_t a;
    memcpy(&a, kv->data, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return ferr(ps, "key 'general.alignment' (value at byte %zu) is %u, expected a non-zero power of two; " HINT_CORRUPT,
                    (size_t)(kv->data - f->map), a);
    f->alignment = a;
    return 0;
}

static int parse_tensor(struct parser *ps, struct gguf_tensor *t) {
    const uint8_t *m = ps->f->map;
    size_t at = ps->pos;
    uint64_t len;
    TRY(rd_u64(ps, &len, "length of the name"));
    if (len == 0) return perr(ps, " at byte %zu has an empty name; " HINT_CORRUPT, at);
    if (len > GGUF_MAX_NAME)
        return perr(ps, ": the name at byte %zu is %llu bytes long; GGUF allows at most %d; " HINT_CORRUPT, at,
                    (unsigned long long)len, GGUF_MAX_NAME);
    TRY(need(ps, len, "name"));
    memcpy(t->name, m + ps->pos, (size_t)len);
    t->name[len] = '\0';
    ps->name = (struct gguf_str){(const char *)m + ps->pos, len};
    ps->pos += (size_t)len;
    if (strlen(t->name) != len)
        return perr(ps, " (at byte %zu) contains a NUL byte at position %zu; " HINT_CORRUPT, at, strlen(t->name));

    at = ps->pos;
    TRY(rd_u32(ps, &t->n_dims, "n_dims"));
    if (t->n_dims < 1 || t->n_dims > 4)
        return perr(ps, " has n_dims %u at byte %zu, expected 1 to 4; " HINT_CORRUPT, t->n_dims, at);
    int64_t nel = 1;
    for (uint32_t d = 0; d < 4; d++) {
        uint64_t v = 1;
        at = ps->pos;
        if (d < t->n_dims) TRY(rd_u64(ps, &v, "dimension"));
        if (v > (uint64_t)INT64_MAX)
            return perr(ps, " has ne[%u] = %llu at byte %zu, larger than INT64_MAX; " HINT_CORRUPT, d,
                        (unsigned long long)v, at);
        t->ne[d] = (int64_t)v;
        if (!tp_mul_i64(nel, t->ne[d], &nel))
            return perr(ps, " has ne[%u] = %lld at byte %zu, which makes its element count overflow int64; " HINT_CORRUPT,
                        d, (long long)v, at);
    }
    at = ps->pos;
    uint32_t type;
    TRY(rd_u32(ps, &type, "ggml type"));
    const struct dtype_info *di = dtype_get((int)(type > INT32_MAX ? -1 : (int)type));
    if (!di)
        return perr(ps, " has unknown ggml type id %u (byte %zu); the file needs a newer tpllm, or " HINT_CORRUPT,
                    type, at);
    t->type = (int)type;
    if (t->ne[0] % di->block_size != 0)
        return perr(ps, " has ne[0] = %lld, which is not a multiple of the %s block size %lld; " HINT_CORRUPT,
                    (long long)t->ne[0], di->name, (long long)di->block_size);
    /* bytes = ne[0] / block * type_size * ne[1] * ne[2] * ne[3] */
    uint64_t bytes = (uint64_t)(t->ne[0] / di->block_size);
    bool over = __builtin_mul_overflow(bytes, (uint64_t)di->type_size, &bytes);
    for (int d = 1; d < 4; d++) over = over || __builtin_mul_overflow(bytes, (uint64_t)t->ne[d], &bytes);
    if (over)
        return perr(ps, " of shape [%lld, %lld, %lld, %lld] and type %s has a byte size that overflows; " HINT_CORRUPT,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], di->name);
    t->nbytes = bytes;
    return rd_u64(ps, &t->offset, "data offset");
}

static int tensor_name_order(const void *a, const void *b) {
    const struct gguf_tensor *x = *(struct gguf_tensor *const *)a, *y = *(struct gguf_tensor *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x < y ? -1 : x > y);
}

static int parse_tensors(struct parser *ps, uint64_t n_tensors) {
    struct gguf_file *f = ps->f;
    size_t cap = 0;
    ps->kind = "tensor";
    for (uint64_t i = 0; i < n_tensors; i++) {
        TRY(grow(ps, (void **)&f->tensors, &cap, (size_t)i, sizeof *f->tensors, (size_t)n_tensors));
        struct gguf_tensor *t = &f->tensors[i];
        memset(t, 0, sizeof *t);
        f->n_tensors = i + 1;
        ps->index = i;
        ps->name = (struct gguf_str){0};
        t->info_offset = ps->pos;
        TRY(parse_tensor(ps, t));
    }
    ps->kind = NULL;
    if (f->n_tensors == 0) return 0;
    f->tensors_sorted = malloc((size_t)f->n_tensors * sizeof *f->tensors_sorted);
    if (!f->tensors_sorted) return tp_errf(ps->e, TP_ENOMEM, "%s: out of memory indexing tensors", f->path);
    for (uint64_t i = 0; i < f->n_tensors; i++) f->tensors_sorted[i] = &f->tensors[i];
    qsort(f->tensors_sorted, (size_t)f->n_tensors, sizeof *f->tensors_sorted, tensor_name_order);
    for (uint64_t i = 1; i < f->n_tensors; i++) {
        const struct gguf_tensor *a = f->tensors_sorted[i - 1], *b = f->tensors_sorted[i];
        if (strcmp(a->name, b->name) == 0) {
            char nm[120];
            return ferr(ps, "tensor '%s' appears twice (tensor infos #%zu at byte %llu and #%zu at byte %llu); " HINT_CORRUPT,
                        show((struct gguf_str){a->name, strlen(a->name)}, nm, sizeof nm), (size_t)(a - f->tensors),
                        (unsigned long long)a->info_offset, (size_t)(b - f->tensors),
                        (unsigned long long)b->info_offset);
        }
    }
    return 0;
}

static int offset_order(const void *a, const void *b) {
    const struct gguf_tensor *x = *(struct gguf_tensor *const *)a, *y = *(struct gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Locate the data section and every tensor in it: aligned, inside the file, disjoint. */
static int place_tensors(struct parser *ps) {
    struct gguf_file *f = ps->f;
    size_t header_end = ps->pos;
    f->data_offset = TP_ALIGN_UP(header_end, f->alignment); /* <= size + 2^31: no overflow */
    if (f->n_tensors == 0) return 0;
    if (f->data_offset > f->size)
        return ferr(ps, "the tensor data section starts at byte %zu (the header ends at byte %zu, aligned to %zu), "
                        "past the end of the file (%zu bytes); " HINT_TRUNC,
                    f->data_offset, header_end, f->alignment, f->size);
    char nm[120];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        show((struct gguf_str){t->name, strlen(t->name)}, nm, sizeof nm);
        if (t->offset % f->alignment != 0)
            return ferr(ps, "tensor '%s' has data offset %llu (tensor info at byte %llu), which is not a multiple of the "
                            "alignment %zu; " HINT_CORRUPT,
                        nm, (unsigned long long)t->offset, (unsigned long long)t->info_offset, f->alignment);
        uint64_t start, end;
        if (__builtin_add_overflow((uint64_t)f->data_offset, t->offset, &start) ||
            __builtin_add_overflow(start, t->nbytes, &end))
            return ferr(ps, "tensor '%s' has data offset %llu and %llu bytes (tensor info at byte %llu), which overflows; " HINT_CORRUPT,
                        nm, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                        (unsigned long long)t->info_offset);
        if (end > f->size)
            return ferr(ps, "tensor '%s' data [%llu, %llu) extends past the end of the file (%zu bytes); " HINT_TRUNC,
                        nm, (unsigned long long)start, (unsigned long long)end, f->size);
        t->data = f->map + start;
        f->data_bytes += t->nbytes; /* each is inside the file, and overlaps are refused below */
    }
    struct gguf_tensor **by_off = malloc((size_t)f->n_tensors * sizeof *by_off);
    if (!by_off) return tp_errf(ps->e, TP_ENOMEM, "%s: out of memory checking tensor offsets", f->path);
    for (uint64_t i = 0; i < f->n_tensors; i++) by_off[i] = &f->tensors[i];
    qsort(by_off, (size_t)f->n_tensors, sizeof *by_off, offset_order);
    const struct gguf_tensor *last = NULL; /* the non-empty tensor ending furthest so far */
    int rc = 0;
    for (uint64_t i = 0; i < f->n_tensors && rc == 0; i++) {
        const struct gguf_tensor *t = by_off[i];
        if (t->nbytes == 0) continue;
        if (last && last->offset + last->nbytes > t->offset) {
            char nm2[120];
            uint64_t d = f->data_offset;
            rc = ferr(ps, "tensors '%s' data [%llu, %llu) and '%s' data [%llu, %llu) overlap; " HINT_CORRUPT,
                      show((struct gguf_str){last->name, strlen(last->name)}, nm, sizeof nm),
                      (unsigned long long)(d + last->offset), (unsigned long long)(d + last->offset + last->nbytes),
                      show((struct gguf_str){t->name, strlen(t->name)}, nm2, sizeof nm2),
                      (unsigned long long)(d + t->offset), (unsigned long long)(d + t->offset + t->nbytes));
        }
        if (!last || t->offset + t->nbytes > last->offset + last->nbytes) last = t;
    }
    free(by_off);
    return rc;
}

static int parse(struct gguf_file *f, tp_err *e) {
    struct parser ps = {.f = f, .e = e};
    uint64_t n_kv = 0, n_tensors = 0;
    TRY(parse_header(&ps, &n_kv, &n_tensors));
    TRY(parse_kvs(&ps, n_kv));
    TRY(index_kvs(&ps));
    TRY(read_alignment(&ps));
    TRY(parse_tensors(&ps, n_tensors));
    return place_tensors(&ps);
}

/* ---- open / close ----------------------------------------------------------------- */

void gguf_close(struct gguf_file *f) {
    if (!f) return;
    for (uint64_t i = 0; i < f->n_kv; i++) free(f->kv[i].str_off);
    free(f->kv);
    free(f->kv_sorted);
    free(f->tensors);
    free(f->tensors_sorted);
    if (f->owns_map && f->map) munmap((void *)f->map, f->size);
    free((char *)f->path);
    free(f);
}

static struct gguf_file *file_new(const char *path, tp_err *e) {
    struct gguf_file *f = calloc(1, sizeof *f);
    char *p = strdup(path);
    if (!f || !p) {
        free(f);
        free(p);
        tp_errf(e, TP_ENOMEM, "%s: out of memory opening the file", path);
        return NULL;
    }
    f->path = p;
    return f;
}

int gguf_open_memory(struct gguf_file **out, const void *buf, size_t size, tp_err *e) {
    *out = NULL;
    struct gguf_file *f = file_new("<memory>", e);
    if (!f) return TP_ENOMEM;
    f->map = buf;
    f->size = buf ? size : 0;
    int rc = parse(f, e);
    if (rc < 0) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open(struct gguf_file **out, const char *path, tp_err *e) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tp_errf(e, TP_EIO, "%s: cannot open the model file: %s; check the path and its permissions", path,
                       strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return tp_errf(e, TP_EIO, "%s: cannot stat the model file: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tp_errf(e, TP_EIO, "%s: is %s, not a regular file; pass the path of a .gguf model file", path,
                       S_ISDIR(st.st_mode) ? "a directory" : "a special file");
    }
    if (st.st_size == 0) {
        close(fd);
        return tp_errf(e, TP_EFORMAT, "%s: the file is empty (0 bytes); " HINT_TRUNC, path);
    }
    struct gguf_file *f = file_new(path, e);
    if (!f) {
        close(fd);
        return TP_ENOMEM;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) {
        gguf_close(f);
        return tp_errf(e, TP_EIO, "%s: cannot map the model file (%lld bytes): %s", path, (long long)st.st_size,
                       strerror(err));
    }
    f->map = m;
    f->size = (size_t)st.st_size;
    f->owns_map = true;
    int rc = parse(f, e);
    if (rc < 0) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

/* ---- lookups and typed getters ---------------------------------------------------- */

int64_t gguf_find_key(const struct gguf_file *f, const char *key) {
    const struct gguf_kv *kv = lookup(f, key);
    return kv ? (int64_t)(kv - f->kv) : -1;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name) {
    if (!f || !name || !f->tensors_sorted) return NULL;
    size_t lo = 0, hi = (size_t)f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors_sorted[mid]->name, name);
        if (c == 0) return f->tensors_sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int gguf_check_supported(const struct gguf_tensor *t, tp_err *e) {
    if (dtype_supported(t->type)) return 0;
    char ok[256] = "";
    for (int d = 0; d < DTYPE_COUNT; d++) /* the list follows the type table */
        if (dtype_supported(d))
            snprintf(ok + strlen(ok), sizeof ok - strlen(ok), "%s%s", ok[0] ? ", " : "", dtype_name(d));
    return tp_errf(e, TP_EUNSUPPORTED,
                   "tensor '%s' has type %s, which tpllm does not support yet; use a model file quantized to one of "
                   "%s (e.g. Q4_K_M)",
                   t->name, dtype_name(t->type), ok);
}

static int type_err(const struct gguf_file *f, const struct gguf_kv *kv, const char *key, const char *expected,
                    tp_err *e) {
    char found[40];
    if (kv->type == GGUF_VT_ARRAY) snprintf(found, sizeof found, "ARRAY of %s", vt_names[kv->arr_type]);
    else snprintf(found, sizeof found, "%s", vt_names[kv->type]);
    return tp_errf(e, TP_EFORMAT,
                   "%s: key '%s' (value at byte %zu) has type %s, expected %s; the file does not follow the GGUF "
                   "conventions for this key — convert the model again with a current llama.cpp",
                   f->path, key, (size_t)(kv->data - f->map), found, expected);
}

/* A numeric scalar at p of type t as int64 / double; false for non-numeric types. For
 * UINT64 *u64 is set too, so that callers can see values above INT64_MAX. */
static bool num_at(const uint8_t *p, int t, int64_t *i, double *d, bool *is_float, uint64_t *u64) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    if (t < 0 || t >= GGUF_VT_COUNT || vt_size[t] == 0) return false;
    memcpy(&v, p, vt_size[t]);
    *is_float = false;
    *u64 = 0;
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_BOOL: *i = v.u8; break;
    case GGUF_VT_INT8: *i = v.i8; break;
    case GGUF_VT_UINT16: *i = v.u16; break;
    case GGUF_VT_INT16: *i = v.i16; break;
    case GGUF_VT_UINT32: *i = v.u32; break;
    case GGUF_VT_INT32: *i = v.i32; break;
    case GGUF_VT_INT64: *i = v.i64; break;
    case GGUF_VT_UINT64:
        *u64 = v.u64;
        *i = v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.u64;
        *d = (double)v.u64;
        return true;
    case GGUF_VT_FLOAT32: *d = v.f32; *is_float = true; return true;
    case GGUF_VT_FLOAT64: *d = v.f64; *is_float = true; return true;
    default: return false;
    }
    *d = (double)*i;
    return true;
}

int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out, tp_err *e) {
    const struct gguf_kv *kv = lookup(f, key);
    if (!kv) return TP_ENOTFOUND;
    int64_t i;
    double d;
    bool is_float;
    uint64_t u;
    if (kv->type == GGUF_VT_BOOL || !num_at(kv->data, kv->type, &i, &d, &is_float, &u) || is_float)
        return type_err(f, kv, key, "an integer type", e);
    if (kv->type == GGUF_VT_UINT64 && u > (uint64_t)INT64_MAX)
        return tp_errf(e, TP_EFORMAT, "%s: key '%s' (value at byte %zu) is %llu, which does not fit in a signed 64-bit "
                                      "integer; " HINT_CORRUPT,
                       f->path, key, (size_t)(kv->data - f->map), (unsigned long long)u);
    *out = i;
    return 0;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, tp_err *e) {
    const struct gguf_kv *kv = lookup(f, key);
    if (!kv) return TP_ENOTFOUND;
    int64_t i;
    double d;
    bool is_float;
    uint64_t u;
    if (!num_at(kv->data, kv->type, &i, &d, &is_float, &u) || !is_float)
        return type_err(f, kv, key, "FLOAT32 (or FLOAT64)", e);
    if (isfinite(d) && fabs(d) > FLT_MAX)
        return tp_errf(e, TP_EFORMAT, "%s: key '%s' (value at byte %zu) is %g, which does not fit in a float; " HINT_CORRUPT,
                       f->path, key, (size_t)(kv->data - f->map), d);
    *out = (float)d;
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, tp_err *e) {
    const struct gguf_kv *kv = lookup(f, key);
    if (!kv) return TP_ENOTFOUND;
    if (kv->type != GGUF_VT_BOOL) return type_err(f, kv, key, "BOOL", e);
    *out = kv->data[0] != 0;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, tp_err *e) {
    const struct gguf_kv *kv = lookup(f, key);
    if (!kv) return TP_ENOTFOUND;
    if (kv->type != GGUF_VT_STRING) return type_err(f, kv, key, "STRING", e);
    memcpy(&out->len, kv->data, 8);
    out->ptr = (const char *)kv->data + 8;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_vtype *type, uint64_t *n,
                 const struct gguf_kv **kvp, tp_err *e) {
    const struct gguf_kv *kv = lookup(f, key);
    if (!kv) return TP_ENOTFOUND;
    if (kv->type != GGUF_VT_ARRAY) return type_err(f, kv, key, "ARRAY", e);
    if (type) *type = kv->arr_type;
    if (n) *n = kv->arr_n;
    if (kvp) *kvp = kv;
    return 0;
}

double gguf_arr_f64(const struct gguf_kv *kv, uint64_t i) {
    int64_t iv;
    double d;
    bool is_float;
    uint64_t u;
    if (!kv || kv->type != GGUF_VT_ARRAY || i >= kv->arr_n || kv->arr_type >= GGUF_VT_COUNT ||
        vt_size[kv->arr_type] == 0)
        return NAN;
    if (!num_at(kv->data + (size_t)i * vt_size[kv->arr_type], kv->arr_type, &iv, &d, &is_float, &u)) return NAN;
    return d;
}

int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i) {
    int64_t iv;
    double d;
    bool is_float;
    uint64_t u;
    if (!kv || kv->type != GGUF_VT_ARRAY || i >= kv->arr_n || kv->arr_type >= GGUF_VT_COUNT ||
        vt_size[kv->arr_type] == 0)
        return 0;
    if (!num_at(kv->data + (size_t)i * vt_size[kv->arr_type], kv->arr_type, &iv, &d, &is_float, &u)) return 0;
    if (!is_float) return iv;
    if (isnan(d)) return 0;
    if (d >= 9223372036854775807.0) return INT64_MAX; /* 2^63: the cast would be undefined */
    if (d <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)d;
}

struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i) {
    struct gguf_str s = {"", 0};
    if (!kv || kv->type != GGUF_VT_ARRAY || kv->arr_type != GGUF_VT_STRING || i >= kv->arr_n || !kv->str_off)
        return s;
    const uint8_t *p = kv->data + kv->str_off[i];
    memcpy(&s.len, p, 8);
    s.ptr = (const char *)p + 8;
    return s;
}
