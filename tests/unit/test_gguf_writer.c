/* test_gguf_writer.c - the GGUF writer: every value type and tensor source round-trips
 * through llama.cpp's own Python reader (PyPI gguf, via tests/golden/gguf_dump_json.py) and
 * through tpllm's reader; bad shapes, duplicates and failed writes are refused by name. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/quant.h"
#include "runtime/gguf.h"
#include "runtime/gguf_writer.h"
#include "testutil.h"

/* ---- the reference reader ---- */

/* Path of the Python with the gguf package, or NULL (the test is then skipped). */
static char *python_path(void) {
    const char *p = getenv("TPLLM_PYTHON");
    char *s = p ? strdup(p) : tu_src_path(".pydeps/bin/python");
    if (access(s, X_OK) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* Run gguf_dump_json.py on path and parse its output; skips the test without Python. */
static json_t *py_dump(const char *path, int values) {
    char *py = python_path();
    if (!py) cr_skip_test("no Python with the gguf package (set TPLLM_PYTHON or create .pydeps)");
    char *script = tu_src_path("tests/golden/gguf_dump_json.py");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' --values %d", py, script, path, values);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "cannot run %s", cmd);
    json_error_t je;
    json_t *j = json_loadf(p, 0, &je);
    int st = pclose(p);
    cr_assert_eq(st, 0, "'%s' failed (status %d)", cmd, st);
    cr_assert_not_null(j, "bad JSON from %s: %s", cmd, je.text);
    free(py);
    free(script);
    return j;
}

static json_t *py_tensor(json_t *dump, const char *name) {
    json_t *ts = json_object_get(dump, "tensors"), *t;
    size_t i;
    json_array_foreach(ts, i, t) if (!strcmp(json_string_value(json_object_get(t, "name")), name)) return t;
    cr_assert_fail("the gguf package does not list tensor '%s'", name);
    return NULL;
}

static json_t *py_kv(json_t *dump, const char *key, const char *type) {
    json_t *kv = json_object_get(json_object_get(dump, "kv"), key);
    cr_assert_not_null(kv, "the gguf package does not list key '%s'", key);
    cr_assert_str_eq(json_string_value(json_object_get(kv, "type")), type, "key '%s'", key);
    return json_object_get(kv, "value");
}

/* ---- a file with everything ---- */

struct everything {
    uint8_t u8;
    int8_t i8;
    uint16_t u16;
    int16_t i16;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    int32_t arr_i32[5];
    float arr_f32[4];
    uint8_t arr_bool[3];
    const char *strs[4];
    float *w_f32, *w_q;   /* [rows][cols] sources */
    uint16_t raw_f16[64]; /* raw bytes tensor */
    int64_t rows, cols;
};

static void fill(struct everything *x, tu_rng *r) {
    x->u8 = (uint8_t)tu_next(r);
    x->i8 = (int8_t)tu_next(r);
    x->u16 = (uint16_t)tu_next(r);
    x->i16 = (int16_t)tu_next(r);
    x->u32 = (uint32_t)tu_next(r);
    x->i32 = (int32_t)tu_next(r);
    x->u64 = tu_next(r) >> 1; /* JSON integers are signed 64-bit in jansson */
    x->i64 = -(int64_t)(tu_next(r) >> 2);
    x->f32 = tu_uniform(r, -1e6f, 1e6f);
    x->f64 = (double)tu_uniform(r, -1, 1) * 1e-300;
    x->b = tu_next(r) & 1;
    for (int i = 0; i < 5; i++) x->arr_i32[i] = (int32_t)tu_next(r);
    for (int i = 0; i < 4; i++) x->arr_f32[i] = tu_normal(r);
    for (int i = 0; i < 3; i++) x->arr_bool[i] = tu_next(r) & 1;
    x->strs[0] = "";
    x->strs[1] = "\xe2\x96\x81the";
    x->strs[2] = "<0x0A>";
    x->strs[3] = "a longer piece with spaces";
    x->rows = 3 + (int64_t)(tu_next(r) % 5);
    x->cols = 256 * (1 + (int64_t)(tu_next(r) % 3));
    size_t n = (size_t)(x->rows * x->cols);
    x->w_f32 = malloc(n * sizeof(float));
    x->w_q = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        x->w_f32[i] = tu_normal(r);
        x->w_q[i] = tu_normal(r) * 0.05f;
    }
    for (int i = 0; i < 64; i++) x->raw_f16[i] = f32_to_fp16(tu_normal(r));
}

/* Generator: value = row * 1000 + column, exactly representable in F32. */
static int gen_index(void *ctx, float *dst, int64_t row0, int64_t n_rows, int64_t row_len, tp_err *e) {
    int *calls = ctx;
    (*calls)++;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < row_len; i++) dst[r * row_len + i] = (float)((row0 + r) * 1000 + i);
    return 0;
}

static const enum dtype quant_types[] = {DTYPE_F16, DTYPE_BF16, DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_Q4_1,
                                         DTYPE_Q5_0, DTYPE_Q5_1, DTYPE_Q4_K, DTYPE_Q6_K};

static void write_everything(const char *path, const struct everything *x, int *gen_calls) {
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, path, 0, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_u8(w, "t.u8", x->u8, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_i8(w, "t.i8", x->i8, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_u16(w, "t.u16", x->u16, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_i16(w, "t.i16", x->i16, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_u32(w, "t.u32", x->u32, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_i32(w, "t.i32", x->i32, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_u64(w, "t.u64", x->u64, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_i64(w, "t.i64", x->i64, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_f32(w, "t.f32", x->f32, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_f64(w, "t.f64", x->f64, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_bool(w, "t.bool", x->b, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_str(w, "t.str", "h\xc3\xa9llo", &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_arr(w, "t.arr_i32", GGUF_VT_INT32, x->arr_i32, 5, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_arr(w, "t.arr_f32", GGUF_VT_FLOAT32, x->arr_f32, 4, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_arr(w, "t.arr_bool", GGUF_VT_BOOL, x->arr_bool, 3, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_arr(w, "t.arr_empty", GGUF_VT_UINT32, NULL, 0, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_arr_str(w, "t.arr_str", x->strs, 4, &e), 0, "%s", e.msg);

    int64_t ne[2] = {x->cols, x->rows};
    cr_assert_eq(gguf_writer_add_tensor_f32(w, "w.f32", 2, ne, DTYPE_F32, x->w_f32, &e), 0, "%s", e.msg);
    for (size_t i = 0; i < TP_ARRAY_LEN(quant_types); i++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", dtype_name(quant_types[i]));
        cr_assert_eq(gguf_writer_add_tensor_f32(w, name, 2, ne, quant_types[i], x->w_q, &e), 0, "%s", e.msg);
    }
    int64_t ne_raw[3] = {16, 2, 2};
    cr_assert_eq(gguf_writer_add_tensor(w, "raw.f16", 3, ne_raw, DTYPE_F16, x->raw_f16, &e), 0, "%s", e.msg);
    int64_t ne_z[1] = {96};
    cr_assert_eq(gguf_writer_add_tensor(w, "zeros.q8_0", 1, ne_z, DTYPE_Q8_0, NULL, &e), 0, "%s", e.msg);
    /* More rows than one generator chunk (2^18 floats): the writer must stitch chunks. */
    int64_t ne_g[2] = {300, 1000};
    cr_assert_eq(gguf_writer_add_tensor_gen(w, "gen.f32", 2, ne_g, DTYPE_F32, gen_index, gen_calls, &e), 0, "%s",
                 e.msg);
    uint64_t planned = gguf_writer_file_size(w);
    cr_assert_eq(gguf_writer_finish(w, &e), 0, "%s", e.msg);
    gguf_writer_free(w);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, planned, "file has %lld bytes, the writer planned %llu",
                 (long long)st.st_size, (unsigned long long)planned);
}

/* Largest |dequantized - source| the type may show for the w_q values (std 0.05, |x| < ~0.25). */
static float tolerance(enum dtype t) {
    switch (t) {
    case DTYPE_F16: return 1e-4f;
    case DTYPE_BF16: return 2e-3f;
    case DTYPE_Q8_0: return 2e-3f;
    case DTYPE_Q6_K: return 6e-3f;
    case DTYPE_Q5_0: case DTYPE_Q5_1: return 1e-2f;
    default: return 2.5e-2f; /* 4-bit */
    }
}

Test(gguf_writer, every_value_type_and_tensor_source_reads_back_through_the_gguf_package) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    struct everything x;
    fill(&x, &r);
    char *path = tu_tmp_path(".gguf");
    int calls = 0;
    write_everything(path, &x, &calls);
    cr_assert_gt(calls, 1, "the generator was called %d times: the tensor was not chunked", calls);
    json_t *d = py_dump(path, 300000);

    cr_assert_eq(json_integer_value(json_object_get(d, "version")), 3);
    cr_assert_eq(json_integer_value(json_object_get(d, "alignment")), 32);
    cr_assert_eq(json_integer_value(py_kv(d, "general.alignment", "UINT32")), 32);
    cr_assert_eq(json_integer_value(py_kv(d, "t.u8", "UINT8")), x.u8);
    cr_assert_eq(json_integer_value(py_kv(d, "t.i8", "INT8")), x.i8);
    cr_assert_eq(json_integer_value(py_kv(d, "t.u16", "UINT16")), x.u16);
    cr_assert_eq(json_integer_value(py_kv(d, "t.i16", "INT16")), x.i16);
    cr_assert_eq(json_integer_value(py_kv(d, "t.u32", "UINT32")), x.u32);
    cr_assert_eq(json_integer_value(py_kv(d, "t.i32", "INT32")), x.i32);
    cr_assert_eq(json_integer_value(py_kv(d, "t.u64", "UINT64")), (json_int_t)x.u64);
    cr_assert_eq(json_integer_value(py_kv(d, "t.i64", "INT64")), x.i64);
    cr_assert_eq((float)json_number_value(py_kv(d, "t.f32", "FLOAT32")), x.f32);
    cr_assert_eq(json_number_value(py_kv(d, "t.f64", "FLOAT64")), x.f64);
    cr_assert_eq(json_is_true(py_kv(d, "t.bool", "BOOL")), x.b);
    cr_assert_str_eq(json_string_value(py_kv(d, "t.str", "STRING")), "h\xc3\xa9llo");
    json_t *a = py_kv(d, "t.arr_i32", "ARRAY");
    cr_assert_eq(json_array_size(a), 5);
    for (size_t i = 0; i < 5; i++) cr_assert_eq(json_integer_value(json_array_get(a, i)), x.arr_i32[i]);
    a = py_kv(d, "t.arr_f32", "ARRAY");
    for (size_t i = 0; i < 4; i++) cr_assert_eq((float)json_number_value(json_array_get(a, i)), x.arr_f32[i]);
    a = py_kv(d, "t.arr_bool", "ARRAY");
    for (size_t i = 0; i < 3; i++) cr_assert_eq(json_is_true(json_array_get(a, i)), x.arr_bool[i] != 0);
    cr_assert_eq(json_array_size(py_kv(d, "t.arr_empty", "ARRAY")), 0);
    a = py_kv(d, "t.arr_str", "ARRAY");
    for (size_t i = 0; i < 4; i++) cr_assert_str_eq(json_string_value(json_array_get(a, i)), x.strs[i]);

    int64_t n = x.rows * x.cols;
    json_t *t = py_tensor(d, "w.f32"), *v = json_object_get(t, "values");
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(t, "shape"), 0)), x.cols);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(t, "shape"), 1)), x.rows);
    for (int64_t i = 0; i < n; i++) cr_assert_eq((float)json_number_value(json_array_get(v, (size_t)i)), x.w_f32[i]);
    for (size_t k = 0; k < TP_ARRAY_LEN(quant_types); k++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", dtype_name(quant_types[k]));
        t = py_tensor(d, name);
        cr_assert_str_eq(json_string_value(json_object_get(t, "type")), dtype_name(quant_types[k]));
        cr_assert_eq(json_integer_value(json_object_get(t, "n_bytes")),
                     (json_int_t)(dtype_row_bytes(quant_types[k], x.cols) * (size_t)x.rows));
        cr_assert_eq(json_integer_value(json_object_get(t, "offset")) % 32, 0, "%s is not aligned", name);
        v = json_object_get(t, "values");
        cr_assert_eq(json_array_size(v), (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            float got = (float)json_number_value(json_array_get(v, (size_t)i));
            cr_assert_leq(fabsf(got - x.w_q[i]), tolerance(quant_types[k]),
                          "%s[%lld]: the gguf package dequantizes %g, the source was %g", name, (long long)i,
                          (double)got, (double)x.w_q[i]);
        }
    }
    v = json_object_get(py_tensor(d, "raw.f16"), "values");
    for (int i = 0; i < 64; i++)
        cr_assert_eq((float)json_number_value(json_array_get(v, (size_t)i)), fp16_to_f32(x.raw_f16[i]));
    v = json_object_get(py_tensor(d, "zeros.q8_0"), "values");
    for (size_t i = 0; i < 96; i++) cr_assert_eq(json_number_value(json_array_get(v, i)), 0.0);
    v = json_object_get(py_tensor(d, "gen.f32"), "values");
    cr_assert_eq(json_array_size(v), 300000);
    for (size_t i = 0; i < 300000; i += 7)
        cr_assert_eq(json_number_value(json_array_get(v, i)), (double)((i / 300) * 1000 + i % 300));
    json_decref(d);
    unlink(path);
    free(path);
    free(x.w_f32);
    free(x.w_q);
}

Test(gguf_writer, tpllm_reader_sees_the_same_values_and_quantized_bytes) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    struct everything x;
    fill(&x, &r);
    char *path = tu_tmp_path(".gguf");
    int calls = 0;
    write_everything(path, &x, &calls);
    struct gguf_file *f;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    int64_t i64;
    cr_assert_eq(gguf_get_i64(f, "t.i64", &i64, &e), 0, "%s", e.msg);
    cr_assert_eq(i64, x.i64);
    cr_assert_eq(gguf_get_i64(f, "t.u32", &i64, &e), 0, "%s", e.msg);
    cr_assert_eq(i64, x.u32);
    struct gguf_str s;
    cr_assert_eq(gguf_get_str(f, "t.str", &s, &e), 0, "%s", e.msg);
    cr_assert(gguf_str_eq(s, "h\xc3\xa9llo"));
    const struct gguf_kv *kv;
    uint64_t n;
    enum gguf_vtype t;
    cr_assert_eq(gguf_get_arr(f, "t.arr_str", &t, &n, &kv, &e), 0, "%s", e.msg);
    cr_assert_eq(t, GGUF_VT_STRING);
    for (uint64_t i = 0; i < n; i++) cr_assert(gguf_str_eq(gguf_arr_str(kv, i), x.strs[i]));
    /* Stored bytes are exactly quant_quantize_row of each source row. */
    for (size_t k = 0; k < TP_ARRAY_LEN(quant_types); k++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", dtype_name(quant_types[k]));
        const struct gguf_tensor *gt = gguf_find_tensor(f, name);
        cr_assert_not_null(gt, "%s", name);
        size_t rb = dtype_row_bytes(quant_types[k], x.cols);
        uint8_t *row = malloc(rb);
        for (int64_t rr = 0; rr < x.rows; rr++) {
            quant_quantize_row(quant_types[k], x.w_q + rr * x.cols, row, x.cols);
            cr_assert_eq(memcmp(gt->data + (size_t)rr * rb, row, rb), 0, "%s row %lld differs", name, (long long)rr);
        }
        free(row);
    }
    gguf_close(f);
    unlink(path);
    free(path);
    free(x.w_f32);
    free(x.w_q);
}

Test(gguf_writer, sparse_zero_tensors_cost_no_disk) {
    char *path = tu_tmp_path(".gguf");
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, path, GGUF_WRITER_SPARSE, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_str(w, "general.architecture", "llama", &e), 0, "%s", e.msg);
    int64_t ne[2] = {4096, 65536}; /* 512 MiB of F16 */
    cr_assert_eq(gguf_writer_add_tensor(w, "big.weight", 2, ne, DTYPE_F16, NULL, &e), 0, "%s", e.msg);
    int64_t ne1[1] = {32};
    float tail[32];
    for (int i = 0; i < 32; i++) tail[i] = (float)i;
    cr_assert_eq(gguf_writer_add_tensor_f32(w, "tail.weight", 1, ne1, DTYPE_F32, tail, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_tensor(w, "last.weight", 1, ne1, DTYPE_F32, NULL, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_finish(w, &e), 0, "%s", e.msg);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, gguf_writer_file_size(w));
    cr_assert_lt((long long)st.st_blocks * 512, 16ll << 20, "a sparse 512 MiB file occupies %lld bytes",
                 (long long)st.st_blocks * 512);
    gguf_writer_free(w);
    struct gguf_file *f;
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    const struct gguf_tensor *t = gguf_find_tensor(f, "tail.weight");
    cr_assert_not_null(t);
    for (int i = 0; i < 32; i++) cr_assert_eq(((const float *)t->data)[i], (float)i);
    t = gguf_find_tensor(f, "big.weight");
    cr_assert_eq(t->nbytes, 4096ull * 65536 * 2);
    cr_assert_eq(t->data[t->nbytes - 1], 0);
    gguf_close(f);
    unlink(path);
    free(path);
}

Test(gguf_writer, refuses_a_row_length_that_is_not_a_multiple_of_the_block_and_names_sizes_that_work) {
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, "/nonexistent/never-written.gguf", 0, &e), 0, "%s", e.msg);
    int64_t ne[2] = {700, 4};
    cr_assert_eq(gguf_writer_add_tensor(w, "blk.0.ffn_down.weight", 2, ne, DTYPE_Q4_K, NULL, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "blk.0.ffn_down.weight") && strstr(e.msg, "700") && strstr(e.msg, "512 or 768"),
              "message: %s", e.msg);
    tp_err_clear(&e);
    int64_t ne2[1] = {48};
    cr_assert_eq(gguf_writer_add_tensor(w, "x", 1, ne2, DTYPE_Q8_0, NULL, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "'x'") && strstr(e.msg, "32 or 64"), "message: %s", e.msg);
    gguf_writer_free(w);
}

Test(gguf_writer, refuses_duplicate_keys_and_tensor_names_and_bad_names) {
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, "/tmp/unused.gguf", 0, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_add_u32(w, "a.b", 1, &e), 0);
    cr_assert_eq(gguf_writer_add_str(w, "a.b", "x", &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "'a.b'") && strstr(e.msg, "twice"), "message: %s", e.msg);
    tp_err_clear(&e);
    int64_t ne[1] = {32};
    cr_assert_eq(gguf_writer_add_tensor(w, "t", 1, ne, DTYPE_F32, NULL, &e), 0);
    cr_assert_eq(gguf_writer_add_tensor(w, "t", 1, ne, DTYPE_F32, NULL, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "'t'") && strstr(e.msg, "twice"), "message: %s", e.msg);
    tp_err_clear(&e);
    char longname[80];
    memset(longname, 'n', 79);
    longname[79] = 0;
    cr_assert_eq(gguf_writer_add_tensor(w, longname, 1, ne, DTYPE_F32, NULL, &e), TP_EINVAL);
    tp_err_clear(&e);
    cr_assert_eq(gguf_writer_add_u32(w, "general.alignment", 48, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "power of two"), "message: %s", e.msg);
    gguf_writer_free(w);
    gguf_writer_free(NULL);
}

Test(gguf_writer, a_missing_directory_names_the_path_and_leaves_nothing) {
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, "/nonexistent-dir/model.gguf", 0, &e), 0, "%s", e.msg);
    cr_assert_eq(gguf_writer_finish(w, &e), TP_EIO);
    cr_assert(strstr(e.msg, "/nonexistent-dir/model.gguf") && strstr(e.msg, "No such file"), "message: %s", e.msg);
    gguf_writer_free(w);
}

Test(gguf_writer, a_write_that_fails_midway_says_why_and_removes_the_partial_file) {
    /* RLIMIT_FSIZE makes write() fail with EFBIG past 64 KiB, as a full disk would midway. */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {64 << 10, 64 << 10};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    char *path = tu_tmp_path(".gguf");
    struct gguf_writer *w;
    tp_err e = {0};
    cr_assert_eq(gguf_writer_create(&w, path, 0, &e), 0, "%s", e.msg);
    int64_t ne[2] = {256, 1024};
    cr_assert_eq(gguf_writer_add_tensor(w, "w", 2, ne, DTYPE_F32, NULL, &e), 0);
    cr_assert_eq(gguf_writer_finish(w, &e), TP_EIO);
    cr_assert(strstr(e.msg, path) && strstr(e.msg, "File too large"), "message: %s", e.msg);
    char partial[4200];
    snprintf(partial, sizeof partial, "%s.partial", path);
    cr_assert_neq(access(partial, F_OK), 0, "the partial file was left behind");
    cr_assert_neq(access(path, F_OK), 0, "a truncated file exists under the final name");
    gguf_writer_free(w);
    free(path);
}

Test(gguf_writer, the_same_inputs_give_byte_identical_files) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    struct everything x;
    fill(&x, &r);
    char *p1 = tu_tmp_path(".gguf"), *p2 = tu_tmp_path(".gguf");
    int calls = 0;
    write_everything(p1, &x, &calls);
    write_everything(p2, &x, &calls);
    size_t n1, n2;
    void *b1 = tu_read_file(p1, &n1), *b2 = tu_read_file(p2, &n2);
    cr_assert(b1 && b2 && n1 == n2 && !memcmp(b1, b2, n1));
    free(b1);
    free(b2);
    unlink(p1);
    unlink(p2);
    free(p1);
    free(p2);
    free(x.w_f32);
    free(x.w_q);
}
