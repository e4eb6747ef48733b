/* fuzz_gguf.c - libFuzzer target for the GGUF reader: any byte string must either open, with
 * every getter, string array and tensor staying inside the image, or fail with TP_EFORMAT. */

/* The reader is compiled into this target rather than taken from tpllm_core, because
 * tpllm_core is built without -fsanitize=fuzzer-no-link: libFuzzer would get no coverage
 * from it and ASan would not check its reads. All of gguf.c's external symbols are defined
 * here, so the linker never pulls gguf.c.o out of the archive. */
#include "../../runtime/gguf.c"

#include <stdint.h>
#include <string.h>

#define CHECK(c)                     \
    do {                             \
        if (!(c)) __builtin_trap();  \
    } while (0)

static bool inside(const struct gguf_file *f, const void *p, uint64_t n) {
    const uint8_t *b = p;
    return b >= f->map && b <= f->map + f->size && n <= (uint64_t)(f->map + f->size - b);
}

/* Read every byte of s so that ASan checks them. */
static unsigned touch(const struct gguf_file *f, struct gguf_str s) {
    CHECK(s.len == 0 || inside(f, s.ptr, s.len));
    unsigned h = 0;
    for (uint64_t i = 0; i < s.len; i++) h = h * 31 + (unsigned char)s.ptr[i];
    return h;
}

static unsigned exercise_kv(const struct gguf_file *f, uint64_t k) {
    const struct gguf_kv *kv = &f->kv[k];
    unsigned h = touch(f, kv->key);
    char key[256];
    if (kv->key.len >= sizeof key) return h;
    gguf_str_copy(kv->key, key, sizeof key);
    CHECK(gguf_find_key(f, key) == (int64_t)k); /* keys are unique and NUL-free */
    tp_err e = {0};
    int64_t i;
    float x;
    bool b;
    struct gguf_str s;
    int rc = gguf_get_i64(f, key, &i, &e);
    CHECK(rc == 0 || (rc == TP_EFORMAT && e.code == TP_EFORMAT && strstr(e.msg, key)));
    tp_err e2 = {0};
    rc = gguf_get_f32(f, key, &x, &e2);
    CHECK(rc == 0 || (rc == TP_EFORMAT && e2.msg[0]));
    tp_err e3 = {0};
    rc = gguf_get_bool(f, key, &b, &e3);
    CHECK((rc == 0) == (kv->type == GGUF_VT_BOOL));
    tp_err e4 = {0};
    rc = gguf_get_str(f, key, &s, &e4);
    CHECK((rc == 0) == (kv->type == GGUF_VT_STRING));
    if (rc == 0) h += touch(f, s);
    enum gguf_vtype t;
    uint64_t n;
    const struct gguf_kv *akv;
    tp_err e5 = {0};
    rc = gguf_get_arr(f, key, &t, &n, &akv, &e5);
    CHECK((rc == 0) == (kv->type == GGUF_VT_ARRAY));
    if (rc != 0) return h;
    CHECK(akv == kv && t == kv->arr_type && n == kv->arr_n);
    for (uint64_t j = 0; j <= n; j++) { /* one past the end on purpose: must be harmless */
        if (t == GGUF_VT_STRING) h += touch(f, gguf_arr_str(kv, j));
        else h += (unsigned)gguf_arr_i64(kv, j) + (unsigned)(gguf_arr_f64(kv, j) == 0.0);
    }
    return h;
}

static unsigned exercise_tensor(const struct gguf_file *f, uint64_t k) {
    const struct gguf_tensor *t = &f->tensors[k];
    CHECK(gguf_find_tensor(f, t->name) == t);
    CHECK(t->n_dims >= 1 && t->n_dims <= 4 && strlen(t->name) <= GGUF_MAX_NAME);
    CHECK(t->offset % f->alignment == 0 && inside(f, t->data, t->nbytes));
    CHECK(t->data >= f->map + f->data_offset);
    tp_err e = {0};
    int rc = gguf_check_supported(t, &e);
    CHECK(rc == 0 || (rc == TP_EUNSUPPORTED && strstr(e.msg, "does not support yet")));
    return t->nbytes ? t->data[0] + t->data[t->nbytes - 1] : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct gguf_file *f = NULL;
    tp_err e = {0};
    int rc = gguf_open_memory(&f, data, size, &e);
    if (rc != 0) {
        /* every refusal is a format error whose message names the image */
        CHECK(rc == TP_EFORMAT && e.code == rc && f == NULL && strncmp(e.msg, "<memory>: ", 10) == 0);
        return 0;
    }
    CHECK(f->version == 2 || f->version == 3);
    CHECK(f->alignment && (f->alignment & (f->alignment - 1)) == 0 && f->data_offset % f->alignment == 0);
    volatile unsigned sink = 0;
    for (uint64_t k = 0; k < f->n_kv; k++) sink += exercise_kv(f, k);
    for (uint64_t k = 0; k < f->n_tensors; k++) sink += exercise_tensor(f, k);
    CHECK(gguf_find_key(f, "") == -1 && gguf_find_tensor(f, "") == NULL);
    (void)sink;
    gguf_close(f);
    return 0;
}
