/* test_gguf.c - the GGUF reader: valid files round-trip through the getters, every kind of
 * malformed file is refused with a message naming the problem, real files match GGUFReader. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/gguf.h"
#include "testutil.h"

/* ---- a little GGUF byte builder ------------------------------------------------------ */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    if (n) memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void zeros(struct buf *b, size_t n) {
    for (size_t i = 0; i < n; i++) u8(b, 0);
}
static void strn(struct buf *b, const char *s, size_t n) {
    u64(b, n);
    put(b, s, n);
}
static void str(struct buf *b, const char *s) { strn(b, s, strlen(s)); }
static void header(struct buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    put(b, "GGUF", 4);
    u32(b, version);
    u64(b, n_tensors);
    u64(b, n_kv);
}
static void kv_u32(struct buf *b, const char *key, uint32_t v) {
    str(b, key);
    u32(b, GGUF_VT_UINT32);
    u32(b, v);
}
static void kv_str(struct buf *b, const char *key, const char *v) {
    str(b, key);
    u32(b, GGUF_VT_STRING);
    str(b, v);
}
/* A tensor info record; ne in GGUF order (ne[0] first). */
static void tinfo(struct buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    str(b, name);
    u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) u64(b, ne[i]);
    u32(b, type);
    u64(b, off);
}
static void pad_to(struct buf *b, size_t align) {
    while (b->n % align) u8(b, 0);
}
#define NE(...) ((const uint64_t[]){__VA_ARGS__})

/* Header + key general.architecture = "test" + 100-byte description, so that the counts of
 * one or two tensors pass the early count bound and the tensor infos are what gets read. */
static void prelude(struct buf *b, uint64_t n_tensors) {
    header(b, 3, n_tensors, 2);
    kv_str(b, "general.architecture", "test");
    char d[101];
    memset(d, 'd', 100);
    d[100] = 0;
    kv_str(b, "general.description", d);
}

/* A file of one tensor with the given info and `data` bytes of data after the padding. */
static void one_tensor(struct buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                       uint64_t off, size_t data) {
    prelude(b, 1);
    tinfo(b, name, n_dims, ne, type, off);
    pad_to(b, 32);
    zeros(b, data);
}

/* The reference valid file: tensors w0 F32 [8] at 0 and w1 F32 [4, 2] at 32, holding
 * 0..15 as floats. */
static void valid(struct buf *b, uint32_t version) {
    prelude(b, 2);
    b->p[4] = (uint8_t)version;
    tinfo(b, "w0", 1, NE(8), DTYPE_F32, 0);
    tinfo(b, "w1", 2, NE(4, 2), DTYPE_F32, 32);
    pad_to(b, 32);
    for (int i = 0; i < 16; i++) {
        float x = (float)i;
        put(b, &x, 4);
    }
}

static struct gguf_file *open_ok(const struct buf *b, uint8_t **img) {
    *img = malloc(b->n ? b->n : 1); /* exact size, so that ASan sees any read past the end */
    if (b->n) memcpy(*img, b->p, b->n);
    struct gguf_file *f = NULL;
    tp_err e = {0};
    int rc = gguf_open_memory(&f, *img, b->n, &e);
    cr_assert_eq(rc, 0, "open failed: %s", e.msg);
    cr_assert_not_null(f);
    return f;
}

/* Open b from memory (exact-size copy), expect TP_EFORMAT with every substring. */
static void expect_bad_(struct buf *b, const char *const *subs) {
    uint8_t *img = malloc(b->n ? b->n : 1);
    if (b->n) memcpy(img, b->p, b->n);
    struct gguf_file *f = (struct gguf_file *)img;
    tp_err e = {0};
    int rc = gguf_open_memory(&f, img, b->n, &e);
    cr_assert_eq(rc, TP_EFORMAT, "expected TP_EFORMAT, got %d: %s", rc, e.msg);
    cr_assert_null(f);
    cr_assert_eq(e.code, TP_EFORMAT);
    cr_assert(strncmp(e.msg, "<memory>: ", 10) == 0, "message does not start with the file name: %s", e.msg);
    for (; *subs; subs++) cr_assert(strstr(e.msg, *subs), "message lacks \"%s\": %s", *subs, e.msg);
    free(img);
    free(b->p);
}
#define expect_bad(b, ...) expect_bad_((b), (const char *const[]){__VA_ARGS__, NULL})

/* ---- malformed: the header ----------------------------------------------------------- */

Test(gguf_malformed, an_empty_image_is_too_short) {
    struct buf b = {0};
    expect_bad(&b, "only 0 bytes long", "truncated");
}

Test(gguf_malformed, three_bytes_are_too_short) {
    struct buf b = {0};
    put(&b, "GGU", 3);
    expect_bad(&b, "only 3 bytes long");
}

Test(gguf_malformed, a_wrong_magic_is_not_gguf) {
    struct buf b = {0};
    header(&b, 3, 0, 0);
    b.p[3] = 'X';
    expect_bad(&b, "not a GGUF file", "47 47 55 58");
}

Test(gguf_malformed, an_elf_file_is_not_gguf) {
    struct buf b = {0};
    put(&b, "\x7f" "ELF", 4);
    zeros(&b, 60);
    expect_bad(&b, "not a GGUF file", "7f 45 4c 46");
}

Test(gguf_malformed, a_legacy_ggjt_file_is_named) {
    struct buf b = {0};
    put(&b, "tjgg", 4);
    zeros(&b, 60);
    expect_bad(&b, "legacy GGML/GGJT", "convert");
}

Test(gguf_malformed, version_1_asks_to_reconvert) {
    struct buf b = {0};
    header(&b, 1, 0, 0);
    expect_bad(&b, "version 1", "re-convert", "newer llama.cpp");
}

Test(gguf_malformed, version_0_is_refused) {
    struct buf b = {0};
    header(&b, 0, 0, 0);
    expect_bad(&b, "version 0 at byte 4 is not supported");
}

Test(gguf_malformed, version_4_is_refused) {
    struct buf b = {0};
    header(&b, 4, 0, 0);
    expect_bad(&b, "version 4", "supports versions 2 and 3", "upgrade tpllm");
}

Test(gguf_malformed, a_huge_version_is_refused) {
    struct buf b = {0};
    header(&b, 0xdeadbeef, 0, 0);
    expect_bad(&b, "version 3735928559");
}

Test(gguf_malformed, a_big_endian_file_is_named) {
    struct buf b = {0};
    header(&b, 0x03000000, 0, 0);
    expect_bad(&b, "big-endian");
}

Test(gguf_malformed, truncated_in_the_version) {
    struct buf b = {0};
    put(&b, "GGUF\3\0", 6);
    expect_bad(&b, "the version at byte 4 needs 4 bytes", "truncated");
}

Test(gguf_malformed, truncated_in_the_tensor_count) {
    struct buf b = {0};
    header(&b, 3, 0, 0);
    b.n = 12;
    expect_bad(&b, "the tensor count at byte 8 needs 8 bytes", "the file ends at byte 12");
}

Test(gguf_malformed, truncated_in_the_metadata_count) {
    struct buf b = {0};
    header(&b, 3, 0, 0);
    b.n = 23;
    expect_bad(&b, "the metadata count at byte 16", "truncated");
}

Test(gguf_malformed, a_metadata_count_of_2_pow_63_is_refused_before_allocating) {
    struct buf b = {0};
    header(&b, 3, 0, 1ull << 63);
    zeros(&b, 100);
    expect_bad(&b, "claims 9223372036854775808 metadata entries", "can hold at most 7");
}

Test(gguf_malformed, a_metadata_count_of_u64_max_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, UINT64_MAX);
    expect_bad(&b, "claims 18446744073709551615 metadata entries");
}

Test(gguf_malformed, a_tensor_count_of_2_pow_63_is_refused_before_allocating) {
    struct buf b = {0};
    header(&b, 3, 1ull << 63, 0);
    zeros(&b, 1000);
    expect_bad(&b, "claims 9223372036854775808 tensors", "at most 30 tensor infos");
}

Test(gguf_malformed, a_tensor_count_beyond_the_bytes_is_refused) {
    struct buf b = {0};
    header(&b, 3, 3, 1);
    kv_u32(&b, "a", 1);
    zeros(&b, 40); /* room for one tensor info at most, not three */
    expect_bad(&b, "claims 3 tensors");
}

/* ---- malformed: metadata ------------------------------------------------------------- */

Test(gguf_malformed, a_key_length_of_2_pow_63_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    u64(&b, 1ull << 63);
    zeros(&b, 16);
    expect_bad(&b, "key #0", "length of the key at byte 24 says 9223372036854775808 bytes", "only 16 bytes remain");
}

Test(gguf_malformed, a_key_cut_short_is_truncated) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    u64(&b, 100);
    put(&b, "general.architec", 16);
    expect_bad(&b, "key #0", "says 100 bytes, but only 16 bytes remain", "truncated");
}

Test(gguf_malformed, truncated_in_a_key_length) {
    struct buf b = {0};
    header(&b, 3, 0, 2);
    kv_str(&b, "first", "a value long enough for the count bound..");
    zeros(&b, 4); /* half of key #1's length */
    expect_bad(&b, "key #1", "the length of the key at byte 90 needs 8 bytes");
}

Test(gguf_malformed, an_empty_key_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    kv_u32(&b, "", 5);
    zeros(&b, 8);
    expect_bad(&b, "key #0 at byte 24 has an empty name");
}

Test(gguf_malformed, a_nul_inside_a_key_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    strn(&b, "gen\0ral", 7);
    u32(&b, GGUF_VT_UINT32);
    u32(&b, 1);
    expect_bad(&b, "key 'gen\\x00ral'", "NUL byte at position 3");
}

Test(gguf_malformed, value_type_13_is_unknown) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "a.key");
    u32(&b, 13);
    u32(&b, 0);
    expect_bad(&b, "key 'a.key' has unknown value type 13 at byte 37", "expected 0 to 12");
}

Test(gguf_malformed, value_type_u32_max_is_unknown) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "a.key");
    u32(&b, UINT32_MAX);
    u64(&b, 0);
    expect_bad(&b, "unknown value type 4294967295");
}

Test(gguf_malformed, truncated_in_a_value_type) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "a.long.key.name");
    u8(&b, GGUF_VT_UINT8);
    expect_bad(&b, "key 'a.long.key.name': the value type at byte 47 needs 4 bytes");
}

Test(gguf_malformed, truncated_in_a_u32_value) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "a.long.key");
    u32(&b, GGUF_VT_UINT32);
    u8(&b, 1);
    u8(&b, 2);
    expect_bad(&b, "key 'a.long.key': the UINT32 at byte 46 needs 4 bytes", "the file ends at byte 48");
}

Test(gguf_malformed, truncated_in_a_f64_value) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "a.long.key");
    u32(&b, GGUF_VT_FLOAT64);
    u32(&b, 0);
    expect_bad(&b, "the FLOAT64 at byte 46 needs 8 bytes");
}

Test(gguf_malformed, a_bool_of_2_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "flag.key");
    u32(&b, GGUF_VT_BOOL);
    u8(&b, 2);
    expect_bad(&b, "key 'flag.key': the bool value at byte 44 is 2, expected 0 or 1");
}

Test(gguf_malformed, a_string_value_length_of_2_pow_63_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "general.name");
    u32(&b, GGUF_VT_STRING);
    u64(&b, 1ull << 63);
    put(&b, "abc", 3);
    expect_bad(&b, "key 'general.name': the length of the string value at byte 48 says 9223372036854775808 bytes",
               "only 3 bytes remain");
}

Test(gguf_malformed, a_string_value_cut_short_is_truncated) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "general.name");
    u32(&b, GGUF_VT_STRING);
    u64(&b, 10);
    put(&b, "abcdefghi", 9);
    expect_bad(&b, "says 10 bytes, but only 9 bytes remain", "truncated");
}

Test(gguf_malformed, an_array_of_arrays_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "nested");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_ARRAY);
    u64(&b, 1);
    u32(&b, GGUF_VT_UINT8);
    u64(&b, 1);
    u8(&b, 7);
    expect_bad(&b, "key 'nested' is an array of arrays", "nested arrays are not supported");
}

Test(gguf_malformed, an_array_of_unknown_element_type_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "arr");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, 99);
    u64(&b, 0);
    expect_bad(&b, "key 'arr' has an array of unknown element type 99 at byte 39");
}

Test(gguf_malformed, truncated_in_an_array_element_type) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "arr.long.key");
    u32(&b, GGUF_VT_ARRAY);
    u8(&b, 5);
    u8(&b, 0);
    expect_bad(&b, "the array element type at byte 48 needs 4 bytes");
}

Test(gguf_malformed, an_array_length_of_2_pow_63_is_refused_before_allocating) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "arr");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_UINT32);
    u64(&b, 1ull << 63);
    zeros(&b, 16);
    expect_bad(&b, "array length at byte 43 says 9223372036854775808 UINT32 elements", "only 16 bytes remain");
}

Test(gguf_malformed, a_string_array_length_of_2_pow_63_is_refused_before_allocating) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "tokenizer.ggml.tokens");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_STRING);
    u64(&b, 1ull << 63);
    str(&b, "a");
    expect_bad(&b, "key 'tokenizer.ggml.tokens'", "9223372036854775808 STRING elements");
}

Test(gguf_malformed, an_array_one_element_short_is_truncated) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "arr");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_INT16);
    u64(&b, 3);
    u32(&b, 0); /* two INT16, not three */
    expect_bad(&b, "says 3 INT16 elements", "only 4 bytes remain");
}

Test(gguf_malformed, a_bool_array_element_of_5_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "flags");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_BOOL);
    u64(&b, 3);
    u8(&b, 1);
    u8(&b, 5);
    u8(&b, 0);
    expect_bad(&b, "key 'flags': bool element 1 at byte 54 is 5");
}

Test(gguf_malformed, a_string_array_element_length_of_2_pow_63_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "toks");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_STRING);
    u64(&b, 3);
    str(&b, "a");
    str(&b, "bb");
    u64(&b, 1ull << 63);
    zeros(&b, 8);
    expect_bad(&b, "key 'toks': the length of string element 2 at byte 71 says 9223372036854775808 bytes");
}

Test(gguf_malformed, a_string_array_cut_inside_an_element_is_truncated) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "toks");
    u32(&b, GGUF_VT_ARRAY);
    u32(&b, GGUF_VT_STRING);
    u64(&b, 2);
    str(&b, "hello");
    u64(&b, 6);
    put(&b, "worl", 4);
    expect_bad(&b, "length of string element 1", "says 6 bytes, but only 4 bytes remain");
}

Test(gguf_malformed, a_duplicate_key_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 3);
    kv_u32(&b, "x.dup", 1);
    kv_u32(&b, "x.other", 2);
    kv_u32(&b, "x.dup", 3);
    expect_bad(&b, "key 'x.dup' appears twice", "#0 at byte 24 and #2 at byte 68");
}

Test(gguf_malformed, an_alignment_of_type_u64_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    str(&b, "general.alignment");
    u32(&b, GGUF_VT_UINT64);
    u64(&b, 32);
    expect_bad(&b, "'general.alignment'", "has type UINT64, expected UINT32");
}

Test(gguf_malformed, an_alignment_given_as_a_string_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    kv_str(&b, "general.alignment", "32");
    expect_bad(&b, "has type STRING, expected UINT32");
}

Test(gguf_malformed, an_alignment_of_0_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    kv_u32(&b, "general.alignment", 0);
    expect_bad(&b, "'general.alignment' (value at byte 53) is 0, expected a non-zero power of two");
}

Test(gguf_malformed, an_alignment_of_48_is_refused) {
    struct buf b = {0};
    header(&b, 3, 0, 1);
    kv_u32(&b, "general.alignment", 48);
    expect_bad(&b, "is 48, expected a non-zero power of two");
}

/* ---- malformed: tensor infos --------------------------------------------------------- */

Test(gguf_malformed, a_65_byte_tensor_name_is_refused) {
    char name[66];
    memset(name, 'n', 65);
    name[65] = 0;
    struct buf b = {0};
    one_tensor(&b, name, 1, NE(8), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor #0: the name at byte 207 is 65 bytes long; GGUF allows at most 64");
}

Test(gguf_malformed, a_tensor_name_length_of_2_pow_63_is_refused) {
    struct buf b = {0};
    prelude(&b, 1);
    u64(&b, 1ull << 63);
    zeros(&b, 40);
    expect_bad(&b, "tensor #0", "is 9223372036854775808 bytes long");
}

Test(gguf_malformed, an_empty_tensor_name_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "", 1, NE(8), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor #0 at byte 207 has an empty name");
}

Test(gguf_malformed, a_nul_inside_a_tensor_name_is_refused) {
    struct buf b = {0};
    prelude(&b, 1);
    strn(&b, "blk\0.0", 6);
    u32(&b, 1);
    u64(&b, 8);
    u32(&b, DTYPE_F32);
    u64(&b, 0);
    pad_to(&b, 32);
    zeros(&b, 32);
    expect_bad(&b, "tensor 'blk\\x00.0' (at byte 207) contains a NUL byte at position 3");
}

Test(gguf_malformed, a_tensor_name_cut_short_is_truncated) {
    struct buf b = {0};
    prelude(&b, 1);
    u64(&b, 20);
    put(&b, "blk.0.a", 7);
    expect_bad(&b, "tensor #0: the name at byte 215 needs 20 bytes", "truncated");
}

Test(gguf_malformed, n_dims_0_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "t0", 0, NE(0), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor 't0' has n_dims 0 at byte 217, expected 1 to 4");
}

Test(gguf_malformed, n_dims_5_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "t5", 5, NE(1, 1, 1, 1, 1), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor 't5' has n_dims 5");
}

Test(gguf_malformed, truncated_in_n_dims) {
    struct buf b = {0};
    prelude(&b, 1);
    str(&b, "w");
    u8(&b, 2);
    expect_bad(&b, "tensor 'w': the n_dims at byte 216 needs 4 bytes");
}

Test(gguf_malformed, truncated_in_a_dimension) {
    struct buf b = {0};
    prelude(&b, 1);
    str(&b, "w");
    u32(&b, 2);
    u64(&b, 8);
    u32(&b, 4);
    expect_bad(&b, "tensor 'w': the dimension at byte 228 needs 8 bytes");
}

Test(gguf_malformed, a_dimension_above_int64_max_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "big", 2, NE(8, 1ull << 63), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor 'big' has ne[1] = 9223372036854775808 at byte 230, larger than INT64_MAX");
}

Test(gguf_malformed, an_element_count_overflowing_int64_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "ovf", 3, NE(1ull << 32, 1ull << 30, 2), DTYPE_F32, 0, 32);
    expect_bad(&b, "tensor 'ovf' has ne[2] = 2", "element count overflow int64");
}

Test(gguf_malformed, a_byte_size_overflowing_u64_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "huge", 2, NE(1ull << 31, 1ull << 31), DTYPE_F64, 0, 32); /* 2^62 x 8 bytes */
    expect_bad(&b, "tensor 'huge' of shape [2147483648, 2147483648, 1, 1] and type F64 has a byte size that overflows");
}

Test(gguf_malformed, ggml_type_77_is_unknown) {
    struct buf b = {0};
    one_tensor(&b, "X", 1, NE(32), 77, 0, 128);
    expect_bad(&b, "tensor 'X' has unknown ggml type id 77");
}

Test(gguf_malformed, a_retired_ggml_type_4_is_unknown) {
    struct buf b = {0};
    one_tensor(&b, "q4_2", 1, NE(32), 4, 0, 128);
    expect_bad(&b, "tensor 'q4_2' has unknown ggml type id 4");
}

Test(gguf_malformed, ggml_type_u32_max_is_unknown) {
    struct buf b = {0};
    one_tensor(&b, "t", 1, NE(32), UINT32_MAX, 0, 128);
    expect_bad(&b, "unknown ggml type id 4294967295");
}

Test(gguf_malformed, a_row_not_a_multiple_of_the_block_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "q", 2, NE(33, 2), DTYPE_Q4_0, 0, 128);
    expect_bad(&b, "tensor 'q' has ne[0] = 33, which is not a multiple of the Q4_0 block size 32");
}

Test(gguf_malformed, truncated_in_the_ggml_type) {
    struct buf b = {0};
    prelude(&b, 1);
    str(&b, "w");
    u32(&b, 1);
    u64(&b, 8);
    u8(&b, 0);
    zeros(&b, 0);
    expect_bad(&b, "tensor 'w': the ggml type at byte 228 needs 4 bytes");
}

Test(gguf_malformed, truncated_in_the_data_offset) {
    struct buf b = {0};
    prelude(&b, 1);
    str(&b, "w");
    u32(&b, 1);
    u64(&b, 8);
    u32(&b, DTYPE_F32);
    u32(&b, 0);
    expect_bad(&b, "tensor 'w': the data offset at byte 232 needs 8 bytes");
}

Test(gguf_malformed, a_duplicate_tensor_name_is_refused) {
    struct buf b = {0};
    prelude(&b, 2);
    tinfo(&b, "w", 1, NE(8), DTYPE_F32, 0);
    tinfo(&b, "w", 1, NE(8), DTYPE_F32, 32);
    pad_to(&b, 32);
    zeros(&b, 64);
    expect_bad(&b, "tensor 'w' appears twice", "#0 at byte 207 and #1 at byte 240");
}

/* ---- malformed: data placement ------------------------------------------------------- */

Test(gguf_malformed, an_unaligned_data_offset_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "w", 1, NE(8), DTYPE_F32, 4, 64);
    expect_bad(&b, "tensor 'w' has data offset 4", "not a multiple of the alignment 32");
}

Test(gguf_malformed, an_offset_unaligned_for_a_custom_alignment_is_refused) {
    struct buf b = {0};
    header(&b, 3, 1, 1);
    kv_u32(&b, "general.alignment", 64);
    tinfo(&b, "w", 1, NE(8), DTYPE_F32, 32);
    pad_to(&b, 64);
    zeros(&b, 128);
    expect_bad(&b, "tensor 'w' has data offset 32", "alignment 64");
}

Test(gguf_malformed, tensor_data_past_the_end_is_truncated) {
    struct buf b = {0};
    one_tensor(&b, "blk.0.attn_q.weight", 2, NE(64, 4), DTYPE_F32, 0, 1000);
    expect_bad(&b, "tensor 'blk.0.attn_q.weight' data [288, 1312) extends past the end of the file (1288 bytes)",
               "the file is truncated — download it again");
}

Test(gguf_malformed, a_data_offset_of_2_pow_63_is_out_of_the_file) {
    struct buf b = {0};
    one_tensor(&b, "w", 1, NE(8), DTYPE_F32, 1ull << 63, 64);
    expect_bad(&b, "tensor 'w' data [9223372036854776064, 9223372036854776096) extends past the end of the file");
}

Test(gguf_malformed, a_data_offset_that_wraps_around_is_refused) {
    struct buf b = {0};
    one_tensor(&b, "w", 1, NE(8), DTYPE_F32, UINT64_MAX - 31, 64);
    expect_bad(&b, "tensor 'w' has data offset 18446744073709551584 and 32 bytes", "overflows");
}

Test(gguf_malformed, overlapping_tensors_are_refused) {
    struct buf b = {0};
    prelude(&b, 2);
    tinfo(&b, "a", 1, NE(16), DTYPE_F32, 0);  /* [0, 64) */
    tinfo(&b, "b", 1, NE(16), DTYPE_F32, 32); /* [32, 96) */
    pad_to(&b, 32);
    zeros(&b, 128);
    expect_bad(&b, "tensors 'a' data [288, 352) and 'b' data [320, 384) overlap");
}

Test(gguf_malformed, a_tensor_nested_inside_another_is_refused) {
    struct buf b = {0};
    prelude(&b, 3);
    tinfo(&b, "big", 1, NE(64), DTYPE_F32, 0);     /* [0, 256) */
    tinfo(&b, "mid", 1, NE(8), DTYPE_F32, 256);    /* [256, 288): fine */
    tinfo(&b, "inner", 1, NE(8), DTYPE_F32, 128);  /* inside big */
    pad_to(&b, 32);
    zeros(&b, 320);
    expect_bad(&b, "tensors 'big'", "and 'inner'", "overlap");
}

Test(gguf_malformed, a_file_ending_before_the_data_section_is_truncated) {
    struct buf b = {0};
    prelude(&b, 1);
    tinfo(&b, "w", 1, NE(8), DTYPE_F32, 0); /* header ends at byte 240; no padding, no data */
    expect_bad(&b, "the tensor data section starts at byte 256", "the header ends at byte 240",
               "past the end of the file (240 bytes)");
}

Test(gguf_malformed, a_file_named_on_disk_is_named_in_the_message) {
    struct buf b = {0};
    valid(&b, 3);
    char *path = tu_tmp_path(".gguf");
    cr_assert_eq(tu_write_file(path, b.p, b.n - 8), 0);
    struct gguf_file *f = NULL;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), TP_EFORMAT);
    cr_assert_null(f);
    cr_assert(strncmp(e.msg, path, strlen(path)) == 0, "%s", e.msg);
    cr_assert(strstr(e.msg, "tensor 'w1' data [320, 352) extends past the end of the file (344 bytes)"), "%s", e.msg);
    unlink(path);
    free(path);
    free(b.p);
}

Test(gguf_open, a_missing_file_is_an_io_error_naming_it) {
    struct gguf_file *f = NULL;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, "/nonexistent/dir/model.gguf", &e), TP_EIO);
    cr_assert_null(f);
    cr_assert(strstr(e.msg, "/nonexistent/dir/model.gguf: cannot open") && strstr(e.msg, "No such file"), "%s", e.msg);
}

Test(gguf_open, a_directory_is_refused) {
    struct gguf_file *f = NULL;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, "/tmp", &e), TP_EIO);
    cr_assert(strstr(e.msg, "is a directory"), "%s", e.msg);
}

Test(gguf_open, an_empty_file_is_refused) {
    char *path = tu_tmp_path(".gguf");
    cr_assert_eq(tu_write_file(path, "", 0), 0);
    struct gguf_file *f = NULL;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), TP_EFORMAT);
    cr_assert(strstr(e.msg, "empty"), "%s", e.msg);
    unlink(path);
    free(path);
}

/* ---- valid files ------------------------------------------------------------------- */

Test(gguf_valid, the_reference_file_opens_with_its_tensors_and_data) {
    for (uint32_t v = 2; v <= 3; v++) {
        struct buf b = {0};
        valid(&b, v);
        uint8_t *img;
        struct gguf_file *f = open_ok(&b, &img);
        cr_assert_eq(f->version, v);
        cr_assert_eq(f->n_kv, 2);
        cr_assert_eq(f->n_tensors, 2);
        cr_assert_eq(f->alignment, 32);
        cr_assert_eq(f->data_offset, 288);
        cr_assert_eq(f->data_bytes, 64);
        const struct gguf_tensor *w1 = gguf_find_tensor(f, "w1");
        cr_assert_not_null(w1);
        cr_assert_eq(w1->n_dims, 2);
        cr_assert(w1->ne[0] == 4 && w1->ne[1] == 2 && w1->ne[2] == 1 && w1->ne[3] == 1);
        cr_assert_eq(w1->type, DTYPE_F32);
        cr_assert_eq(w1->offset, 32);
        cr_assert_eq(w1->nbytes, 32);
        cr_assert_eq(w1->data, img + 320);
        float x[8];
        memcpy(x, w1->data, sizeof x);
        for (int i = 0; i < 8; i++) cr_assert_eq(x[i], (float)(8 + i));
        cr_assert_null(gguf_find_tensor(f, "w2"));
        cr_assert_null(gguf_find_tensor(f, "w"));
        struct gguf_str s;
        tp_err e = {0};
        cr_assert_eq(gguf_get_str(f, "general.architecture", &s, &e), 0);
        cr_assert(gguf_str_eq(s, "test"));
        gguf_close(f);
        free(img);
        free(b.p);
    }
}

Test(gguf_valid, a_file_without_tensors_or_metadata_opens) {
    struct buf b = {0};
    header(&b, 3, 0, 0);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    cr_assert_eq(f->n_kv, 0);
    cr_assert_eq(f->n_tensors, 0);
    cr_assert_eq(gguf_find_key(f, "general.architecture"), -1);
    cr_assert_null(gguf_find_tensor(f, "x"));
    gguf_close(f);
    gguf_close(NULL);
    free(img);
    free(b.p);
}

Test(gguf_valid, a_custom_alignment_places_the_data) {
    struct buf b = {0};
    header(&b, 3, 2, 1);
    kv_u32(&b, "general.alignment", 128);
    tinfo(&b, "q", 2, NE(64, 2), DTYPE_Q8_0, 0); /* 2 rows x 2 blocks x 34 bytes = 136 */
    tinfo(&b, "z", 1, NE(0), DTYPE_F32, 256);    /* an empty tensor */
    pad_to(&b, 128);
    size_t data_at = b.n;
    zeros(&b, 256);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    cr_assert_eq(f->alignment, 128);
    cr_assert_eq(f->data_offset, data_at);
    cr_assert_eq(data_at % 128, 0);
    const struct gguf_tensor *q = gguf_find_tensor(f, "q");
    cr_assert_eq(q->nbytes, 136);
    cr_assert_eq(q->data, img + data_at);
    cr_assert_eq(gguf_find_tensor(f, "z")->nbytes, 0);
    tp_err e = {0};
    cr_assert_eq(gguf_check_supported(q, &e), 0);
    gguf_close(f);
    free(img);
    free(b.p);
}

/* A file holding one key of every scalar type and an array of every element type. */
static void every_type(struct buf *b) {
    header(b, 3, 0, 26);
#define SCALAR(key, vt, ctype, val)  \
    do {                             \
        ctype v_ = (val);            \
        str(b, key);                 \
        u32(b, vt);                  \
        put(b, &v_, sizeof v_);      \
    } while (0)
    SCALAR("u8", GGUF_VT_UINT8, uint8_t, 200);
    SCALAR("i8", GGUF_VT_INT8, int8_t, -100);
    SCALAR("u16", GGUF_VT_UINT16, uint16_t, 60000);
    SCALAR("i16", GGUF_VT_INT16, int16_t, -30000);
    SCALAR("u32", GGUF_VT_UINT32, uint32_t, 4000000000u);
    SCALAR("i32", GGUF_VT_INT32, int32_t, -2000000000);
    SCALAR("f32", GGUF_VT_FLOAT32, float, 3.25f);
    SCALAR("bool_t", GGUF_VT_BOOL, uint8_t, 1);
    SCALAR("bool_f", GGUF_VT_BOOL, uint8_t, 0);
    SCALAR("u64", GGUF_VT_UINT64, uint64_t, 9000000000000000000ull);
    SCALAR("u64_big", GGUF_VT_UINT64, uint64_t, 18000000000000000000ull);
    SCALAR("i64", GGUF_VT_INT64, int64_t, INT64_MIN);
    SCALAR("f64", GGUF_VT_FLOAT64, double, -0.125);
    SCALAR("f64_big", GGUF_VT_FLOAT64, double, 1e300);
    kv_str(b, "str", "héllo");
    kv_str(b, "str_empty", "");
#define ARRAY(key, et, ctype, ...)                                  \
    do {                                                            \
        ctype a_[] = {__VA_ARGS__};                                 \
        str(b, key);                                                \
        u32(b, GGUF_VT_ARRAY);                                      \
        u32(b, et);                                                 \
        u64(b, sizeof a_ / sizeof a_[0]);                           \
        put(b, a_, sizeof a_);                                      \
    } while (0)
    ARRAY("a_u8", GGUF_VT_UINT8, uint8_t, 0, 255);
    ARRAY("a_i16", GGUF_VT_INT16, int16_t, -32768, 32767, 5);
    ARRAY("a_u32", GGUF_VT_UINT32, uint32_t, 4294967295u);
    ARRAY("a_f32", GGUF_VT_FLOAT32, float, 0.5f, -1e30f, NAN);
    ARRAY("a_bool", GGUF_VT_BOOL, uint8_t, 1, 0, 1);
    ARRAY("a_u64", GGUF_VT_UINT64, uint64_t, 18446744073709551615ull, 3);
    ARRAY("a_f64", GGUF_VT_FLOAT64, double, 1e100, -2.5);
    str(b, "a_str");
    u32(b, GGUF_VT_ARRAY);
    u32(b, GGUF_VT_STRING);
    u64(b, 4);
    str(b, "zero");
    str(b, "");
    str(b, "two");
    str(b, "three\nlines");
    str(b, "a_empty");
    u32(b, GGUF_VT_ARRAY);
    u32(b, GGUF_VT_STRING);
    u64(b, 0);
    ARRAY("a_i8", GGUF_VT_INT8, int8_t, -1);
#undef SCALAR
#undef ARRAY
}

Test(gguf_getters, every_integer_type_widens_to_int64) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    struct { const char *key; int64_t want; } cases[] = {
        {"u8", 200}, {"i8", -100}, {"u16", 60000}, {"i16", -30000}, {"u32", 4000000000ll},
        {"i32", -2000000000}, {"u64", 9000000000000000000ll}, {"i64", INT64_MIN},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(cases); i++) {
        int64_t v = 0;
        tp_err e = {0};
        cr_assert_eq(gguf_get_i64(f, cases[i].key, &v, &e), 0, "%s: %s", cases[i].key, e.msg);
        cr_assert_eq(v, cases[i].want, "%s", cases[i].key);
    }
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, floats_bools_and_strings_round_trip) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    tp_err e = {0};
    float x;
    cr_assert_eq(gguf_get_f32(f, "f32", &x, &e), 0);
    cr_assert_eq(x, 3.25f);
    cr_assert_eq(gguf_get_f32(f, "f64", &x, &e), 0);
    cr_assert_eq(x, -0.125f);
    bool t = false, fl = true;
    cr_assert_eq(gguf_get_bool(f, "bool_t", &t, &e), 0);
    cr_assert_eq(gguf_get_bool(f, "bool_f", &fl, &e), 0);
    cr_assert(t && !fl);
    struct gguf_str s;
    cr_assert_eq(gguf_get_str(f, "str", &s, &e), 0);
    cr_assert(gguf_str_eq(s, "héllo"));
    char buf[4];
    cr_assert_str_eq(gguf_str_copy(s, buf, sizeof buf), "h\xc3\xa9");
    cr_assert_eq(gguf_get_str(f, "str_empty", &s, &e), 0);
    cr_assert_eq(s.len, 0);
    cr_assert(gguf_str_eq(s, ""));
    cr_assert_eq(e.code, 0, "%s", e.msg);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, a_missing_key_is_not_found_and_leaves_the_error_alone) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    tp_err e = {0};
    strcpy(e.msg, "untouched");
    int64_t i = 42;
    float x = 1;
    bool t = true;
    struct gguf_str s = {"keep", 4};
    cr_assert_eq(gguf_get_i64(f, "nope", &i, &e), TP_ENOTFOUND);
    cr_assert_eq(gguf_get_f32(f, "nope", &x, &e), TP_ENOTFOUND);
    cr_assert_eq(gguf_get_bool(f, "nope", &t, &e), TP_ENOTFOUND);
    cr_assert_eq(gguf_get_str(f, "u8x", &s, &e), TP_ENOTFOUND);
    cr_assert_eq(gguf_get_arr(f, "a_", NULL, NULL, NULL, &e), TP_ENOTFOUND);
    cr_assert_eq(e.code, 0);
    cr_assert_str_eq(e.msg, "untouched");
    cr_assert(i == 42 && x == 1 && t && s.len == 4);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, a_wrong_type_names_key_expected_and_found) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    struct {
        int rc;
        const char *want;
    } r[7];
    tp_err e[7] = {0};
    int64_t i;
    float x;
    bool t;
    struct gguf_str s;
    r[0].rc = gguf_get_i64(f, "f32", &i, &e[0]);
    r[0].want = "key 'f32' (value at byte";
    r[1].rc = gguf_get_i64(f, "bool_t", &i, &e[1]);
    r[1].want = "has type BOOL, expected an integer type";
    r[2].rc = gguf_get_f32(f, "u32", &x, &e[2]);
    r[2].want = "key 'u32' (value at byte 103) has type UINT32, expected FLOAT32";
    r[3].rc = gguf_get_bool(f, "u8", &t, &e[3]);
    r[3].want = "has type UINT8, expected BOOL";
    r[4].rc = gguf_get_str(f, "a_str", &s, &e[4]);
    r[4].want = "key 'a_str'", r[4].want = "has type ARRAY of STRING, expected STRING";
    r[5].rc = gguf_get_arr(f, "str", NULL, NULL, NULL, &e[5]);
    r[5].want = "key 'str' (value at byte";
    r[6].rc = gguf_get_i64(f, "u64_big", &i, &e[6]);
    r[6].want = "key 'u64_big' (value at byte 225) is 18000000000000000000, which does not fit in a signed 64-bit";
    for (int k = 0; k < 7; k++) {
        cr_assert_eq(r[k].rc, TP_EFORMAT, "case %d", k);
        cr_assert_eq(e[k].code, TP_EFORMAT);
        cr_assert(strstr(e[k].msg, r[k].want), "case %d: %s", k, e[k].msg);
        cr_assert(strncmp(e[k].msg, "<memory>: ", 10) == 0);
    }
    tp_err e2 = {0};
    cr_assert_eq(gguf_get_f32(f, "f64_big", &x, &e2), TP_EFORMAT);
    cr_assert(strstr(e2.msg, "does not fit in a float"), "%s", e2.msg);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, arrays_of_every_element_type_read_back) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    tp_err e = {0};
    enum gguf_vtype t;
    uint64_t n;
    const struct gguf_kv *kv;
    cr_assert_eq(gguf_get_arr(f, "a_u8", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_UINT8 && n == 2 && gguf_arr_i64(kv, 1) == 255 && gguf_arr_f64(kv, 0) == 0);
    cr_assert_eq(gguf_get_arr(f, "a_i16", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_INT16 && n == 3 && gguf_arr_i64(kv, 0) == -32768 && gguf_arr_i64(kv, 2) == 5);
    cr_assert_eq(gguf_get_arr(f, "a_u32", &t, &n, &kv, &e), 0);
    cr_assert(gguf_arr_i64(kv, 0) == 4294967295ll);
    cr_assert_eq(gguf_get_arr(f, "a_f32", &t, &n, &kv, &e), 0);
    cr_assert(gguf_arr_f64(kv, 0) == 0.5 && gguf_arr_f64(kv, 1) == (double)-1e30f && isnan(gguf_arr_f64(kv, 2)));
    cr_assert(gguf_arr_i64(kv, 0) == 0 && gguf_arr_i64(kv, 1) == INT64_MIN && gguf_arr_i64(kv, 2) == 0);
    cr_assert_eq(gguf_get_arr(f, "a_bool", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_BOOL && gguf_arr_i64(kv, 0) == 1 && gguf_arr_i64(kv, 1) == 0);
    cr_assert_eq(gguf_get_arr(f, "a_u64", &t, &n, &kv, &e), 0);
    cr_assert(gguf_arr_i64(kv, 0) == INT64_MAX && gguf_arr_f64(kv, 0) == 18446744073709551615.0 &&
              gguf_arr_i64(kv, 1) == 3);
    cr_assert_eq(gguf_get_arr(f, "a_f64", &t, &n, &kv, &e), 0);
    cr_assert(gguf_arr_f64(kv, 0) == 1e100 && gguf_arr_i64(kv, 0) == INT64_MAX && gguf_arr_i64(kv, 1) == -2);
    cr_assert_eq(gguf_get_arr(f, "a_i8", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_INT8 && gguf_arr_i64(kv, 0) == -1);
    /* out of range and wrong kinds give the documented neutral values */
    cr_assert(isnan(gguf_arr_f64(kv, 1)) && gguf_arr_i64(kv, 1) == 0 && gguf_arr_str(kv, 0).len == 0);
    cr_assert_eq(e.code, 0, "%s", e.msg);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, string_arrays_index_every_element) {
    struct buf b = {0};
    every_type(&b);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    tp_err e = {0};
    enum gguf_vtype t;
    uint64_t n;
    const struct gguf_kv *kv;
    cr_assert_eq(gguf_get_arr(f, "a_str", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_STRING && n == 4);
    const char *want[] = {"zero", "", "two", "three\nlines"};
    for (uint64_t i = 0; i < n; i++) cr_assert(gguf_str_eq(gguf_arr_str(kv, i), want[i]), "element %d", (int)i);
    cr_assert_eq(gguf_arr_str(kv, 4).len, 0);
    cr_assert(isnan(gguf_arr_f64(kv, 0)));
    cr_assert_eq(gguf_get_arr(f, "a_empty", &t, &n, &kv, &e), 0);
    cr_assert(t == GGUF_VT_STRING && n == 0 && gguf_arr_str(kv, 0).len == 0);
    cr_assert_eq(gguf_find_key(f, "a_str"), 23);
    cr_assert_eq(f->kv[23].str_off[2], 8 + 4 + 8);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, unsupported_types_are_read_and_named_by_check_supported) {
    struct buf b = {0};
    prelude(&b, 2);
    tinfo(&b, "blk.0.ffn_down.weight", 1, NE(256), DTYPE_IQ2_XXS, 0); /* 66 bytes */
    tinfo(&b, "f64", 1, NE(2), DTYPE_F64, 96);
    pad_to(&b, 32);
    zeros(&b, 128);
    uint8_t *img;
    struct gguf_file *f = open_ok(&b, &img);
    tp_err e = {0};
    const struct gguf_tensor *t = gguf_find_tensor(f, "blk.0.ffn_down.weight");
    cr_assert_eq(t->nbytes, 66);
    cr_assert_eq(gguf_check_supported(t, &e), TP_EUNSUPPORTED);
    cr_assert(strstr(e.msg, "tensor 'blk.0.ffn_down.weight' has type IQ2_XXS, which tpllm does not support yet"),
              "%s", e.msg);
    tp_err e2 = {0};
    cr_assert_eq(gguf_check_supported(gguf_find_tensor(f, "f64"), &e2), TP_EUNSUPPORTED);
    cr_assert(strstr(e2.msg, "has type F64, which tpllm does not support yet"), "%s", e2.msg);
    gguf_close(f);
    free(img);
    free(b.p);
}

Test(gguf_getters, vtype_names_and_string_helpers) {
    cr_assert_str_eq(gguf_vtype_name(GGUF_VT_UINT32), "UINT32");
    cr_assert_str_eq(gguf_vtype_name(GGUF_VT_FLOAT64), "FLOAT64");
    cr_assert_str_eq(gguf_vtype_name(13), "unknown");
    cr_assert_str_eq(gguf_vtype_name(-1), "unknown");
    char buf[8] = "xxxxxxx";
    struct gguf_str s = {"abcdefghij", 10};
    cr_assert_str_eq(gguf_str_copy(s, buf, sizeof buf), "abcdefg");
    cr_assert_str_eq(gguf_str_copy((struct gguf_str){NULL, 0}, buf, sizeof buf), "");
    cr_assert(!gguf_str_eq(s, "abcdefghi") && gguf_str_eq(s, "abcdefghij") && !gguf_str_eq(s, "abcdefghijk"));
}

/* ---- files written by the reference writer ------------------------------------------ */

static const char *const SEEDS[] = {
    "minimal_v3.bin", "minimal_v2.bin", "all_types.bin", "all_types_v2.bin", "quantized.bin", "align256.bin",
    "align8.bin", "vocab.bin", "unsupported.bin", "shapes.bin", "llama_tiny.bin",
};

static struct gguf_file *open_seed(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "tests/fuzz/seeds/%s", name);
    char *path = tu_src_path(rel);
    struct gguf_file *f = NULL;
    tp_err e = {0};
    int rc = gguf_open(&f, path, &e);
    cr_assert_eq(rc, 0, "%s: %s", path, e.msg);
    free(path);
    return f;
}

Test(gguf_seeds, every_seed_written_by_gguf_writer_opens) {
    for (size_t i = 0; i < TP_ARRAY_LEN(SEEDS); i++) {
        struct gguf_file *f = open_seed(SEEDS[i]);
        struct gguf_str arch;
        tp_err e = {0};
        cr_assert_eq(gguf_get_str(f, "general.architecture", &arch, &e), 0, "%s", SEEDS[i]);
        cr_assert_eq(f->version, strstr(SEEDS[i], "_v2") ? 2u : 3u);
        for (uint64_t k = 0; k < f->n_tensors; k++) cr_assert_eq(gguf_find_tensor(f, f->tensors[k].name), &f->tensors[k]);
        gguf_close(f);
    }
}

/* The values make_seeds.py gave GGUFWriter for all_types.bin. */
Test(gguf_seeds, all_types_holds_what_gguf_writer_was_given) {
    struct gguf_file *f = open_seed("all_types.bin");
    tp_err e = {0};
    int64_t v;
    struct { const char *key; int64_t want; } ints[] = {
        {"t.u8", 200}, {"t.i8", -100}, {"t.u16", 60000}, {"t.i16", -30000}, {"t.u32", 4000000000ll},
        {"t.i32", -2000000000}, {"t.i64", -9000000000000000000ll},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(ints); i++) {
        cr_assert_eq(gguf_get_i64(f, ints[i].key, &v, &e), 0, "%s: %s", ints[i].key, e.msg);
        cr_assert_eq(v, ints[i].want, "%s", ints[i].key);
    }
    cr_assert_eq(gguf_get_i64(f, "t.u64", &v, &e), TP_EFORMAT); /* 1.8e19 does not fit int64 */
    tp_err e2 = {0};
    float x;
    cr_assert_eq(gguf_get_f32(f, "t.f32", &x, &e2), 0);
    cr_assert_eq(x, 3.25f);
    cr_assert_eq(gguf_get_f32(f, "t.f64", &x, &e2), TP_EFORMAT); /* -1e300 does not fit a float */
    tp_err e3 = {0};
    bool t, fl;
    cr_assert(gguf_get_bool(f, "t.bool_true", &t, &e3) == 0 && gguf_get_bool(f, "t.bool_false", &fl, &e3) == 0);
    cr_assert(t && !fl);
    struct gguf_str s;
    cr_assert_eq(gguf_get_str(f, "t.str", &s, &e3), 0);
    cr_assert(gguf_str_eq(s, "héllo, gguf"));
    const struct gguf_kv *kv;
    uint64_t n;
    enum gguf_vtype et;
    cr_assert_eq(gguf_get_arr(f, "t.arr_str", &et, &n, &kv, &e3), 0);
    cr_assert(et == GGUF_VT_STRING && n == 4);
    cr_assert(gguf_str_eq(gguf_arr_str(kv, 0), "a") && gguf_str_eq(gguf_arr_str(kv, 1), "") &&
              gguf_str_eq(gguf_arr_str(kv, 2), "ccc") && gguf_str_eq(gguf_arr_str(kv, 3), "ünï"));
    cr_assert_eq(gguf_get_arr(f, "t.arr_i64", &et, &n, &kv, &e3), 0);
    cr_assert(gguf_arr_i64(kv, 0) == INT64_MIN && gguf_arr_i64(kv, 1) == 5);
    cr_assert_eq(gguf_get_arr(f, "t.arr_f32", &et, &n, &kv, &e3), 0);
    cr_assert(gguf_arr_f64(kv, 1) == -1.5 && gguf_arr_f64(kv, 2) == (double)1e30f);
    cr_assert_eq(gguf_get_arr(f, "t.arr_bool", &et, &n, &kv, &e3), 0);
    cr_assert(gguf_arr_i64(kv, 0) == 1 && gguf_arr_i64(kv, 1) == 0 && gguf_arr_i64(kv, 2) == 1);
    const struct gguf_tensor *a = gguf_find_tensor(f, "a.f32"); /* numpy (3, 5): ne = [5, 3] */
    cr_assert(a && a->n_dims == 2 && a->ne[0] == 5 && a->ne[1] == 3 && a->type == DTYPE_F32 && a->nbytes == 60);
    cr_assert_eq(e3.code, 0, "%s", e3.msg);
    gguf_close(f);
}

Test(gguf_seeds, a_custom_alignment_from_gguf_writer_is_honoured) {
    struct gguf_file *f = open_seed("align256.bin");
    cr_assert_eq(f->alignment, 256);
    cr_assert_eq(f->data_offset % 256, 0);
    for (uint64_t i = 0; i < f->n_tensors; i++) cr_assert_eq(f->tensors[i].offset % 256, 0);
    gguf_close(f);
}

/* Every prefix of a seed must fail cleanly, except those that only drop the padding after
 * the last tensor's data (GGUFWriter pads the file to the alignment). */
Test(gguf_seeds, every_truncation_of_a_seed_fails_cleanly) {
    const char *names[] = {"all_types.bin", "quantized.bin"};
    for (size_t s = 0; s < TP_ARRAY_LEN(names); s++) {
        char rel[128];
        snprintf(rel, sizeof rel, "tests/fuzz/seeds/%s", names[s]);
        char *path = tu_src_path(rel);
        size_t size = 0;
        uint8_t *full = tu_read_file(path, &size);
        cr_assert_not_null(full, "%s", path);
        struct gguf_file *f = NULL;
        tp_err e = {0};
        cr_assert_eq(gguf_open_memory(&f, full, size, &e), 0, "%s", e.msg);
        cr_assert_gt(f->n_tensors, 0);
        size_t need = f->data_offset; /* the shortest prefix that still holds every tensor */
        for (uint64_t i = 0; i < f->n_tensors; i++)
            need = TP_MAX(need, (size_t)(f->tensors[i].data - full) + (size_t)f->tensors[i].nbytes);
        gguf_close(f);
        for (size_t len = 0; len < size; len++) {
            uint8_t *img = malloc(len ? len : 1);
            if (len) memcpy(img, full, len);
            struct gguf_file *g = NULL;
            tp_err e2 = {0};
            int rc = gguf_open_memory(&g, img, len, &e2);
            if (len >= need) {
                cr_assert_eq(rc, 0, "%s prefix %zu: %s", names[s], len, e2.msg);
            } else {
                cr_assert_eq(rc, TP_EFORMAT, "%s: prefix of %zu bytes (of %zu) gave %d", names[s], len, size, rc);
                cr_assert_null(g);
                cr_assert(strstr(e2.msg, "truncated"), "%s prefix %zu: %s", names[s], len, e2.msg);
            }
            gguf_close(g);
            free(img);
        }
        free(full);
        free(path);
    }
}

/* Random byte mutations of the seeds (fresh each run; TPLLM_TEST_SEED repeats one):
 * open either succeeds or fails with a message, never crashes (ASan build checks reads). */
Test(gguf_seeds, random_mutations_never_crash) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (size_t s = 0; s < TP_ARRAY_LEN(SEEDS); s++) {
        char rel[128];
        snprintf(rel, sizeof rel, "tests/fuzz/seeds/%s", SEEDS[s]);
        char *path = tu_src_path(rel);
        size_t size = 0;
        uint8_t *full = tu_read_file(path, &size);
        cr_assert_not_null(full);
        for (int it = 0; it < 300; it++) {
            uint8_t *img = malloc(size);
            memcpy(img, full, size);
            int flips = 1 + (int)(tu_next(&r) % 4);
            for (int k = 0; k < flips; k++) {
                size_t at = (size_t)(tu_next(&r) % (size < 512 ? size : 512)); /* mostly the header */
                if (tu_next(&r) % 4 == 0) at = (size_t)(tu_next(&r) % size);
                img[at] = (uint8_t)tu_next(&r);
            }
            struct gguf_file *g = NULL;
            tp_err e = {0};
            int rc = gguf_open_memory(&g, img, size, &e);
            if (rc == 0) {
                for (uint64_t k = 0; k < g->n_kv; k++)
                    if (g->kv[k].type == GGUF_VT_ARRAY && g->kv[k].arr_type == GGUF_VT_STRING)
                        for (uint64_t j = 0; j < g->kv[k].arr_n; j++) (void)gguf_arr_str(&g->kv[k], j);
            } else {
                cr_assert(rc == TP_EFORMAT && e.code == TP_EFORMAT && e.msg[0], "rc %d", rc);
            }
            gguf_close(g);
            free(img);
        }
        free(full);
        free(path);
    }
}

/* ---- the real model ------------------------------------------------------------------ */

Test(gguf_gemma, gemma3_270m_matches_the_tensor_table_of_gguf_reader) {
    const char *env = getenv("TPLLM_GEMMA");
    char *path = env ? strdup(env) : tu_src_path("models/gemma-3-270m-q4_k_m.gguf");
    struct stat st;
    if (stat(path, &st) != 0) {
        free(path);
        cr_skip_test("Gemma 3 270M not found (set TPLLM_GEMMA or put it at models/gemma-3-270m-q4_k_m.gguf)");
    }
    struct gguf_file *f = NULL;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    struct gguf_str arch;
    cr_assert_eq(gguf_get_str(f, "general.architecture", &arch, &e), 0);
    cr_assert(gguf_str_eq(arch, "gemma3"));

    char *tsv = tu_src_path("tests/golden/gemma3_tensors.tsv");
    FILE *g = fopen(tsv, "r");
    cr_assert_not_null(g, "%s", tsv);
    char line[512];
    uint64_t rows = 0;
    while (fgets(line, sizeof line, g)) {
        if (line[0] == '#') continue;
        char name[128], dims[128];
        int type;
        unsigned long long off, nbytes;
        cr_assert_eq(sscanf(line, "%127[^\t]\t%d\t%127[^\t]\t%llu\t%llu", name, &type, dims, &off, &nbytes), 5, "%s", line);
        cr_assert(rows < f->n_tensors);
        const struct gguf_tensor *t = &f->tensors[rows]; /* same order as the file */
        cr_assert_str_eq(t->name, name);
        cr_assert_eq(gguf_find_tensor(f, name), t);
        cr_assert_eq(t->type, type, "%s", name);
        char ours[128] = "";
        for (uint32_t d = 0; d < t->n_dims; d++)
            snprintf(ours + strlen(ours), sizeof ours - strlen(ours), "%s%lld", d ? "," : "", (long long)t->ne[d]);
        cr_assert_str_eq(ours, dims, "%s", name);
        cr_assert_eq((unsigned long long)(t->data - f->map), off, "%s", name);
        cr_assert_eq(f->data_offset + t->offset, off, "%s", name);
        cr_assert_eq(t->nbytes, nbytes, "%s", name);
        rows++;
    }
    fclose(g);
    cr_assert_eq(rows, f->n_tensors);
    /* the vocabulary is as long as the embedding table is tall */
    const struct gguf_kv *toks;
    uint64_t n_vocab;
    enum gguf_vtype vt;
    cr_assert_eq(gguf_get_arr(f, "tokenizer.ggml.tokens", &vt, &n_vocab, &toks, &e), 0);
    cr_assert_eq(vt, GGUF_VT_STRING);
    cr_assert_eq((int64_t)n_vocab, gguf_find_tensor(f, "token_embd.weight")->ne[1]);
    cr_assert(gguf_str_eq(gguf_arr_str(toks, 2), "<bos>"));
    gguf_close(f);
    free(tsv);
    free(path);
}
