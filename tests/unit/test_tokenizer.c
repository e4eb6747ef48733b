/* test_tokenizer.c - the tokenizer against llama.cpp's own output (tests/golden/tokenizer/,
 * made by make_tokenizer_golden.py with llama-cpp-python), the streaming detokenizer, and
 * robustness on random and malformed input. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer.h"
#include "testutil.h"

/* ---- helpers ---- */

struct tk {
    struct gguf_file *f;
    struct tokenizer *t;
};

static char *gemma_path(void) {
    const char *env = getenv("TPLLM_GEMMA");
    return env ? strdup(env) : tu_src_path("models/gemma-3-270m-q4_k_m.gguf");
}

/* Open a tokenizer; false (and a message) when the model file is absent. */
static bool tk_open(struct tk *k, const char *path) {
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skip: %s not found (set TPLLM_GEMMA to the Gemma 3 270M GGUF)\n", path);
        return false;
    }
    tp_err e = {0};
    cr_assert_eq(gguf_open(&k->f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(tokenizer_load(&k->t, k->f, &e), 0, "%s", e.msg);
    return true;
}

static void tk_close(struct tk *k) {
    tokenizer_free(k->t);
    gguf_close(k->f);
}

static bool fixture(struct tk *k, const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/%s.gguf", name);
    char *p = tu_src_path(rel);
    bool ok = tk_open(k, p);
    free(p);
    cr_assert(ok, "fixture %s missing: run tests/golden/make_bpe_vocab.py", name);
    return ok;
}

struct bytes {
    char *p;
    size_t n;
};

static struct bytes *load_strings(size_t *n) {
    char *path = tu_src_path("tests/golden/strings.json");
    json_error_t err;
    json_t *arr = json_load_file(path, JSON_ALLOW_NUL, &err);
    cr_assert_not_null(arr, "%s: %s", path, err.text);
    free(path);
    *n = json_array_size(arr);
    struct bytes *s = calloc(*n, sizeof *s);
    for (size_t i = 0; i < *n; i++) {
        json_t *v = json_array_get(arr, i);
        if (json_is_string(v)) {
            s[i].n = json_string_length(v);
            s[i].p = malloc(s[i].n + 1);
            memcpy(s[i].p, json_string_value(v), s[i].n);
        } else {
            const char *hex = json_string_value(json_object_get(v, "hex"));
            cr_assert_not_null(hex);
            s[i].n = strlen(hex) / 2;
            s[i].p = malloc(s[i].n + 1);
            for (size_t j = 0; j < s[i].n; j++) {
                unsigned b;
                sscanf(hex + 2 * j, "%2x", &b);
                s[i].p[j] = (char)b;
            }
        }
    }
    json_decref(arr);
    return s;
}

static void free_strings(struct bytes *s, size_t n) {
    for (size_t i = 0; i < n; i++) free(s[i].p);
    free(s);
}

/* A printable rendering of bytes for failure messages. */
static const char *show(const char *s, size_t n, char *buf, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\') buf[k++] = (char)c;
        else k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", c);
    }
    buf[k] = 0;
    return buf;
}

static const char *show_ids(const int32_t *v, int64_t n, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (int64_t i = 0; i < n && k + 16 < cap; i++) k += (size_t)snprintf(buf + k, cap - k, "%s%d", i ? "," : "", v[i]);
    return buf;
}

static int64_t encode(const struct tokenizer *t, const char *s, size_t n, bool add, bool parse, int32_t **out) {
    tp_err e = {0};
    int64_t need = 0;
    int rc = tokenizer_encode(t, s, n, add, parse, NULL, 0, &need, &e);
    if (need > 0) cr_assert_eq(rc, TP_EINVAL, "asking for the size must fail with TP_EINVAL");
    *out = malloc((size_t)(need + 1) * sizeof **out);
    int64_t got = -1;
    e = (tp_err){0};
    cr_assert_eq(tokenizer_encode(t, s, n, add, parse, *out, need, &got, &e), 0, "%s", e.msg);
    cr_assert_eq(got, need);
    return got;
}

static void hex_decode(const char *hex, struct bytes *b) {
    b->n = strlen(hex) / 2;
    b->p = malloc(b->n + 1);
    for (size_t j = 0; j < b->n; j++) {
        unsigned v;
        sscanf(hex + 2 * j, "%2x", &v);
        b->p[j] = (char)v;
    }
}

/* ---- golden comparison against llama.cpp ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static void check_meta(const struct tokenizer *t, json_t *doc, const char *name) {
    int32_t nv = tokenizer_n_vocab(t);
    cr_assert_eq(nv, json_integer_value(json_object_get(doc, "n_vocab")), "%s: n_vocab", name);
    cr_assert_eq(tokenizer_bos(t), json_integer_value(json_object_get(doc, "bos")), "%s: bos", name);
    cr_assert_eq(tokenizer_eos(t), json_integer_value(json_object_get(doc, "eos")), "%s: eos", name);
    cr_assert_eq(tokenizer_eot(t), json_integer_value(json_object_get(doc, "eot")), "%s: eot", name);
    cr_assert_eq(tokenizer_add_bos(t), json_is_true(json_object_get(doc, "add_bos")), "%s: add_bos", name);
    cr_assert_eq(tokenizer_add_eos(t), json_is_true(json_object_get(doc, "add_eos")), "%s: add_eos", name);

    char *eog = calloc((size_t)nv, 1);
    json_t *a = json_object_get(doc, "eog");
    for (size_t i = 0; i < json_array_size(a); i++) eog[json_integer_value(json_array_get(a, i))] = 1;
    for (int32_t id = 0; id < nv; id++)
        cr_assert_eq(tokenizer_is_eog(t, id), eog[id] != 0, "%s: is_eog(%d) should be %d", name, id, eog[id]);
    free(eog);

    unsigned *attr = malloc((size_t)nv * sizeof *attr);
    for (int32_t id = 0; id < nv; id++) attr[id] = TOKENIZER_ATTR_NORMAL;
    a = json_object_get(doc, "attrs");
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *p = json_array_get(a, i);
        attr[json_integer_value(json_array_get(p, 0))] = (unsigned)json_integer_value(json_array_get(p, 1));
    }
    for (int32_t id = 0; id < nv; id++)
        cr_assert_eq(tokenizer_token_attr(t, id), attr[id], "%s: attr of token %d: got %u, llama.cpp %u", name, id,
                     tokenizer_token_attr(t, id), attr[id]);
    free(attr);

    /* every piece, both ways, through one hash; the sample pins down a mismatch */
    size_t cap = tokenizer_max_piece(t) + 1;
    char *buf = malloc(cap);
    json_t *sample = json_object_get(doc, "pieces_sample");
    for (size_t i = 0; i < json_array_size(sample); i++) {
        json_t *p = json_array_get(sample, i);
        int32_t id = (int32_t)json_integer_value(json_array_get(p, 0));
        for (int sp = 0; sp < 2; sp++) {
            struct bytes want;
            hex_decode(json_string_value(json_array_get(p, sp ? 1 : 2)), &want);
            int64_t n = tokenizer_piece(t, id, sp, buf, cap);
            char s1[256], s2[256];
            cr_assert(n == (int64_t)want.n && memcmp(buf, want.p, want.n) == 0,
                      "%s: piece(%d, special=%d) = '%s', llama.cpp '%s'", name, id, sp,
                      show(buf, n > 0 ? (size_t)n : 0, s1, sizeof s1), show(want.p, want.n, s2, sizeof s2));
            free(want.p);
        }
    }
    uint64_t hs = 0xCBF29CE484222325ull, hp = hs;
    for (int32_t id = 0; id < nv; id++) {
        for (int sp = 0; sp < 2; sp++) {
            int64_t n = tokenizer_piece(t, id, sp, buf, cap);
            cr_assert(n >= 0 && (size_t)n < cap);
            uint8_t len[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
            uint64_t *h = sp ? &hs : &hp;
            *h = fnv(fnv(*h, len, 4), buf, (size_t)n);
        }
    }
    free(buf);
    char want_s[32], want_p[32];
    json_t *h = json_object_get(doc, "pieces_fnv");
    snprintf(want_s, sizeof want_s, "%016llx", (unsigned long long)hs);
    snprintf(want_p, sizeof want_p, "%016llx", (unsigned long long)hp);
    cr_assert_str_eq(want_s, json_string_value(json_object_get(h, "special")), "%s: pieces (special) differ", name);
    cr_assert_str_eq(want_p, json_string_value(json_object_get(h, "plain")), "%s: pieces (plain) differ", name);
}

static void check_ids(const char *name, const struct bytes *s, size_t idx, const char *mode, json_t *want,
                      const int32_t *got, int64_t n) {
    bool same = (int64_t)json_array_size(want) == n;
    for (int64_t i = 0; same && i < n; i++) same = json_integer_value(json_array_get(want, (size_t)i)) == got[i];
    if (same) return;
    char sb[600], g[2000], w[2000];
    int32_t *wv = malloc((json_array_size(want) + 1) * sizeof *wv);
    for (size_t i = 0; i < json_array_size(want); i++) wv[i] = (int32_t)json_integer_value(json_array_get(want, i));
    show_ids(wv, (int64_t)json_array_size(want), w, sizeof w);
    free(wv);
    cr_assert_fail("%s: string %zu '%s' (%s):\n  llama.cpp [%s]\n  tpllm     [%s]", name, idx, show(s->p, s->n, sb, sizeof sb),
                   mode, w, show_ids(got, n, g, sizeof g));
}

static void check_text(const char *name, const struct bytes *s, size_t idx, const char *mode, const char *hex,
                       const char *got, size_t n) {
    struct bytes want;
    hex_decode(hex, &want);
    if (want.n != n || memcmp(want.p, got, n) != 0) {
        char sb[600], g[1200], w[1200];
        cr_assert_fail("%s: string %zu '%s' (%s):\n  llama.cpp '%s'\n  tpllm     '%s'", name, idx,
                       show(s->p, s->n, sb, sizeof sb), mode, show(want.p, want.n, w, sizeof w),
                       show(got, n, g, sizeof g));
    }
    free(want.p);
}

static void detok_all(const struct tokenizer *t, const int32_t *ids, int64_t n, bool rm, bool un, char **out,
                      size_t *len) {
    tp_err e = {0};
    size_t need = 0;
    int rc = tokenizer_detokenize(t, ids, n, rm, un, NULL, 0, &need, &e);
    cr_assert(rc == 0 || rc == TP_EINVAL, "%s", e.msg);
    *out = malloc(need + 1);
    e = (tp_err){0};
    cr_assert_eq(tokenizer_detokenize(t, ids, n, rm, un, *out, need, len, &e), 0, "%s", e.msg);
}

static void run_golden(const char *name, const char *model_path) {
    struct tk k;
    if (!tk_open(&k, model_path)) {
        cr_skip_test("model %s not available", model_path);
        return;
    }
    char rel[256];
    snprintf(rel, sizeof rel, "tests/golden/tokenizer/%s.json", name);
    char *gp = tu_src_path(rel);
    json_error_t err;
    json_t *doc = json_load_file(gp, 0, &err);
    cr_assert_not_null(doc, "%s: %s (run tests/golden/make_tokenizer_golden.py)", gp, err.text);
    free(gp);
    size_t n_str;
    struct bytes *s = load_strings(&n_str);
    json_t *cases = json_object_get(doc, "cases");
    cr_assert_eq(json_array_size(cases), n_str, "%s: golden file has %zu cases for %zu strings; regenerate it", name,
                 json_array_size(cases), n_str);
    for (size_t i = 0; i < n_str; i++) {
        json_t *c = json_array_get(cases, i);
        int32_t *ids;
        int64_t n = encode(k.t, s[i].p, s[i].n, true, false, &ids);
        check_ids(name, &s[i], i, "add_special, no parse_special", json_object_get(c, "ts"), ids, n);
        char *txt;
        size_t tn;
        detok_all(k.t, ids, n, false, false, &txt, &tn);
        check_text(name, &s[i], i, "detokenize", json_string_value(json_object_get(c, "dt")), txt, tn);
        free(txt);
        free(ids);

        n = encode(k.t, s[i].p, s[i].n, true, true, &ids);
        check_ids(name, &s[i], i, "add_special, parse_special", json_object_get(c, "tt"), ids, n);
        detok_all(k.t, ids, n, true, true, &txt, &tn);
        check_text(name, &s[i], i, "detokenize remove_special unparse_special", json_string_value(json_object_get(c, "dr")),
                   txt, tn);
        free(txt);
        free(ids);

        n = encode(k.t, s[i].p, s[i].n, false, false, &ids);
        check_ids(name, &s[i], i, "no add_special, no parse_special", json_object_get(c, "ff"), ids, n);
        free(ids);
    }
    check_meta(k.t, doc, name);
    free_strings(s, n_str);
    json_decref(doc);
    tk_close(&k);
}

Test(tokenizer, gemma3_matches_llama_cpp_on_every_test_string) {
    char *p = gemma_path();
    run_golden("gemma3", p);
    free(p);
}

Test(tokenizer, byte_level_bpe_with_qwen2_pretokenizer_matches_llama_cpp) {
    char *p = tu_src_path("tests/fixtures/tok_bpe_qwen2.gguf");
    run_golden("bpe_qwen2", p);
    free(p);
}

Test(tokenizer, byte_level_bpe_with_llama3_pretokenizer_matches_llama_cpp) {
    char *p = tu_src_path("tests/fixtures/tok_bpe_llama3.gguf");
    run_golden("bpe_llama3", p);
    free(p);
}

Test(tokenizer, byte_level_bpe_with_gpt2_pretokenizer_matches_llama_cpp) {
    char *p = tu_src_path("tests/fixtures/tok_bpe_gpt2.gguf");
    run_golden("bpe_gpt2", p);
    free(p);
}

Test(tokenizer, byte_level_bpe_with_the_default_pretokenizer_matches_llama_cpp) {
    char *p = tu_src_path("tests/fixtures/tok_bpe_default.gguf");
    run_golden("bpe_default", p);
    free(p);
}

Test(tokenizer, sentencepiece_with_space_prefix_and_byte_fallback_matches_llama_cpp) {
    char *p = tu_src_path("tests/fixtures/tok_spm.gguf");
    run_golden("spm", p);
    free(p);
}

/* ---- accessors and errors ---- */

Test(tokenizer, gemma3_special_tokens_are_found_by_text_and_end_generation) {
    struct tk k;
    char *p = gemma_path();
    bool ok = tk_open(&k, p);
    free(p);
    if (!ok) cr_skip_test("Gemma 3 not available");
    int32_t eot = tokenizer_find(k.t, "<end_of_turn>", 13);
    cr_assert_eq(eot, 106);
    cr_assert_eq(tokenizer_find(k.t, "<start_of_turn>", 15), 105);
    cr_assert_eq(tokenizer_find(k.t, "no such token at all", 20), -1);
    cr_assert(tokenizer_is_eog(k.t, eot));
    cr_assert(tokenizer_is_eog(k.t, tokenizer_eos(k.t)));
    cr_assert(!tokenizer_is_eog(k.t, tokenizer_bos(k.t)));
    cr_assert(!tokenizer_is_eog(k.t, -1));
    cr_assert_eq(tokenizer_n_vocab(k.t), 262144);
    cr_assert_eq(tokenizer_kind(k.t), TOKENIZER_SPM);
    size_t n;
    const char *txt = tokenizer_token_text(k.t, eot, &n);
    cr_assert(n == 13 && memcmp(txt, "<end_of_turn>", 13) == 0);
    cr_assert_null(tokenizer_token_text(k.t, 262144, &n));
    char buf[32];
    cr_assert_eq(tokenizer_piece(k.t, eot, false, buf, sizeof buf), 0, "control tokens are empty unless special");
    cr_assert_eq(tokenizer_piece(k.t, eot, true, buf, sizeof buf), 13);
    cr_assert_eq(tokenizer_piece(k.t, -1, true, buf, sizeof buf), TP_EINVAL);
    tk_close(&k);
}

Test(tokenizer, a_too_small_output_buffer_reports_the_needed_count) {
    struct tk k;
    fixture(&k, "tok_bpe_qwen2");
    const char *s = "Hello world, this needs several tokens.";
    int32_t out[2];
    int64_t n = 0;
    tp_err e = {0};
    cr_assert_eq(tokenizer_encode(k.t, s, strlen(s), false, false, out, 2, &n, &e), TP_EINVAL);
    cr_assert_gt(n, 2);
    cr_assert(strstr(e.msg, "buffer"), "%s", e.msg);
    int32_t *big = malloc((size_t)n * sizeof *big);
    int64_t n2 = 0;
    cr_assert_eq(tokenizer_encode(k.t, s, strlen(s), false, false, big, n, &n2, &e), 0);
    cr_assert_eq(n2, n);
    free(big);
    tk_close(&k);
}

/* A GGUF with only the given tokenizer keys (strings), built byte by byte. */
static void *mini_gguf(const char *model, const char *pre, size_t *size) {
    size_t cap = 4096, n = 0;
    uint8_t *b = calloc(1, cap);
#define PUT(p, len) (memcpy(b + n, (p), (len)), n += (len))
    uint32_t u32;
    uint64_t u64;
    PUT("GGUF", 4);
    u32 = 3;
    PUT(&u32, 4);
    u64 = 0;
    PUT(&u64, 8);
    u64 = pre ? 3 : 2;
    PUT(&u64, 8);
    const char *keys[3] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", NULL};
    const char *vals[2] = {model, pre};
    for (int i = 0; i < (pre ? 2 : 1); i++) {
        u64 = strlen(keys[i]);
        PUT(&u64, 8);
        PUT(keys[i], u64);
        u32 = GGUF_VT_STRING;
        PUT(&u32, 4);
        u64 = strlen(vals[i]);
        PUT(&u64, 8);
        PUT(vals[i], u64);
    }
    /* tokenizer.ggml.tokens = ["a", "b"] */
    const char *tk = "tokenizer.ggml.tokens";
    u64 = strlen(tk);
    PUT(&u64, 8);
    PUT(tk, u64);
    u32 = GGUF_VT_ARRAY;
    PUT(&u32, 4);
    u32 = GGUF_VT_STRING;
    PUT(&u32, 4);
    u64 = 2;
    PUT(&u64, 8);
    for (int i = 0; i < 2; i++) {
        u64 = 1;
        PUT(&u64, 8);
        PUT(i ? "b" : "a", 1);
    }
#undef PUT
    *size = n;
    return b;
}

Test(tokenizer, an_unknown_tokenizer_model_or_pretokenizer_is_refused_by_name) {
    size_t n;
    void *img = mini_gguf("bert", NULL, &n);
    struct gguf_file *f;
    struct tokenizer *t = (struct tokenizer *)1;
    tp_err e = {0};
    cr_assert_eq(gguf_open_memory(&f, img, n, &e), 0, "%s", e.msg);
    cr_assert_eq(tokenizer_load(&t, f, &e), TP_EUNSUPPORTED);
    cr_assert_null(t);
    cr_assert(strstr(e.msg, "'bert'"), "%s", e.msg);
    gguf_close(f);
    free(img);

    img = mini_gguf("gpt2", "some-new-pre", &n);
    e = (tp_err){0};
    cr_assert_eq(gguf_open_memory(&f, img, n, &e), 0, "%s", e.msg);
    cr_assert_eq(tokenizer_load(&t, f, &e), TP_EUNSUPPORTED);
    cr_assert(strstr(e.msg, "'some-new-pre'"), "%s", e.msg);
    gguf_close(f);
    free(img);

    img = mini_gguf("gpt2", "qwen2", &n); /* BPE without merges */
    e = (tp_err){0};
    cr_assert_eq(gguf_open_memory(&f, img, n, &e), 0, "%s", e.msg);
    cr_assert_eq(tokenizer_load(&t, f, &e), TP_EFORMAT);
    cr_assert(strstr(e.msg, "merges"), "%s", e.msg);
    gguf_close(f);
    free(img);
    tokenizer_free(NULL);
}

/* ---- streaming detokenizer ---- */

static bool valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + len > n) return false;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t j = 1; j < len; j++) {
            if ((u[i + j] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (u[i + j] & 0x3F);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* Stream ids through a detok; every chunk must be valid UTF-8; returns the concatenation. */
static char *stream(const struct tokenizer *t, const int32_t *ids, int64_t n, size_t *len) {
    struct detok d;
    detok_init(&d, t, false);
    size_t cap = 64, k = 0;
    char *all = malloc(cap);
    tp_err e = {0};
    for (int64_t i = 0; i <= n; i++) {
        const char *o;
        size_t on;
        if (i < n) cr_assert_eq(detok_push(&d, ids[i], &o, &on, &e), 0, "%s", e.msg);
        else cr_assert_eq(detok_flush(&d, &o, &on, &e), 0, "%s", e.msg);
        cr_assert(valid_utf8(o, on), "chunk after token %lld is not valid UTF-8", (long long)i);
        while (k + on + 1 > cap) all = realloc(all, cap *= 2);
        memcpy(all + k, o, on);
        k += on;
    }
    detok_free(&d);
    *len = k;
    return all;
}

Test(tokenizer, streamed_text_is_always_valid_utf8_and_reassembles_emoji) {
    static const char *texts[] = {"Hello 👋 world 👨‍👩‍👧‍👦 🇺🇸 done", "日本語のテキスト 中文 한국어",
                                  "é\u0301 😀😃😄 ∀x", "plain ascii"};
    const char *names[] = {"tok_bpe_qwen2", "tok_bpe_llama3", "tok_spm"};
    for (size_t m = 0; m < 3; m++) {
        struct tk k;
        fixture(&k, names[m]);
        for (size_t i = 0; i < TP_ARRAY_LEN(texts); i++) {
            int32_t *ids;
            int64_t n = encode(k.t, texts[i], strlen(texts[i]), false, false, &ids);
            size_t len;
            char *got = stream(k.t, ids, n, &len);
            /* tok_spm adds a leading space (add_space_prefix), the others are lossless */
            const char *want = texts[i];
            size_t skip = (m == 2 && len > 0 && got[0] == ' ') ? 1 : 0;
            cr_assert(len - skip == strlen(want) && memcmp(got + skip, want, strlen(want)) == 0,
                      "%s: streamed text differs for '%s'", names[m], want);
            free(got);
            free(ids);
        }
        tk_close(&k);
    }
}

Test(tokenizer, streaming_holds_split_sequences_and_replaces_bad_bytes) {
    struct tk k;
    fixture(&k, "tok_spm");
    /* 😀 = F0 9F 98 80 as four byte-fallback tokens */
    int32_t b[4];
    const char emoji[] = "\xf0\x9f\x98\x80";
    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", (unsigned char)emoji[i]);
        b[i] = tokenizer_find(k.t, name, 6);
        cr_assert_geq(b[i], 0, "%s missing", name);
    }
    struct detok d;
    detok_init(&d, k.t, false);
    tp_err e = {0};
    const char *o;
    size_t n;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(detok_push(&d, b[i], &o, &n, &e), 0);
        cr_assert_eq(n, 0, "byte %d of 4 must be held back", i);
    }
    cr_assert_eq(detok_push(&d, b[3], &o, &n, &e), 0);
    cr_assert(n == 4 && memcmp(o, emoji, 4) == 0);

    /* an incomplete tail at the end becomes U+FFFD */
    cr_assert_eq(detok_push(&d, b[0], &o, &n, &e), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(detok_flush(&d, &o, &n, &e), 0);
    cr_assert(n == 3 && memcmp(o, "\xef\xbf\xbd", 3) == 0);
    cr_assert_eq(detok_flush(&d, &o, &n, &e), 0);
    cr_assert_eq(n, 0);

    /* a lead byte followed by ASCII: the lead is replaced, the ASCII kept */
    cr_assert_eq(detok_push_bytes(&d, "\xe2", 1, &o, &n, &e), 0);
    cr_assert_eq(n, 0);
    cr_assert_eq(detok_push_bytes(&d, "ab\xff", 3, &o, &n, &e), 0);
    cr_assert(n == 8 && memcmp(o, "\xef\xbf\xbd" "ab" "\xef\xbf\xbd", 8) == 0);
    /* surrogates and overlong forms are never emitted */
    cr_assert_eq(detok_push_bytes(&d, "\xed\xa0\x80\xc0\x80", 5, &o, &n, &e), 0);
    cr_assert(valid_utf8(o, n));
    cr_assert_eq(detok_push(&d, -5, &o, &n, &e), TP_EINVAL);
    detok_free(&d);
    detok_free(&d);
    tk_close(&k);
}

/* ---- robustness on fresh random input ---- */

static void random_bytes(tu_rng *r, char *s, size_t n, bool utf8_only) {
    static const char *pieces[] = {"a", "Z", "7", " ", "  ", "\n", "\t", "'s", "é", "中", "😀", "👨‍👩‍👧", "\u0301", "\u00a0",
                                   "\u3000", "<b>", "<start_of_turn>", "<|im_start|>", "<|endoftext|>", "<bos>", "x1",
                                   "\r\n", "..", "ℝ", "\xd0\x96"};
    size_t k = 0;
    while (k < n) {
        uint64_t v = tu_next(r);
        if (!utf8_only && v % 4 == 0) {
            s[k++] = (char)(v >> 8); /* any byte, including F5..FF and stray continuations */
            continue;
        }
        const char *p = pieces[(v >> 8) % TP_ARRAY_LEN(pieces)];
        size_t pl = strlen(p);
        if (k + pl > n) break;
        memcpy(s + k, p, pl);
        k += pl;
    }
    while (k < n) s[k++] = 'q';
}

Test(tokenizer, random_and_malformed_bytes_never_crash_and_stay_in_the_vocabulary) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const char *names[] = {"tok_bpe_qwen2", "tok_bpe_llama3", "tok_bpe_gpt2", "tok_bpe_default", "tok_spm"};
    char s[300];
    for (size_t m = 0; m < TP_ARRAY_LEN(names); m++) {
        struct tk k;
        fixture(&k, names[m]);
        for (int it = 0; it < 300; it++) {
            size_t n = (size_t)(tu_next(&r) % sizeof s);
            random_bytes(&r, s, n, false);
            for (int mode = 0; mode < 3; mode++) {
                int32_t *ids;
                int64_t cnt = encode(k.t, s, n, mode != 2, mode == 1, &ids);
                for (int64_t i = 0; i < cnt; i++) cr_assert(ids[i] >= 0 && ids[i] < tokenizer_n_vocab(k.t));
                size_t len;
                free(stream(k.t, ids, cnt, &len));
                free(ids);
            }
        }
        /* code points above U+10FFFF (llama.cpp aborts on these) */
        const char *evil[] = {"\xf4\x90\x80\x80", "\xf5\x80\x80\x80 x", "\xf7\xbf\xbf\xbf", "a\xf4\x90"};
        for (size_t i = 0; i < TP_ARRAY_LEN(evil); i++) {
            int32_t *ids;
            encode(k.t, evil[i], strlen(evil[i]), true, true, &ids);
            free(ids);
        }
        tk_close(&k);
    }
}

Test(tokenizer, byte_level_bpe_round_trips_random_valid_utf8) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const char *names[] = {"tok_bpe_qwen2", "tok_bpe_llama3", "tok_bpe_gpt2", "tok_bpe_default"};
    char s[400];
    for (size_t m = 0; m < TP_ARRAY_LEN(names); m++) {
        struct tk k;
        fixture(&k, names[m]);
        for (int it = 0; it < 200; it++) {
            size_t n = (size_t)(tu_next(&r) % sizeof s);
            random_bytes(&r, s, n, true);
            int32_t *ids;
            int64_t cnt = encode(k.t, s, n, false, false, &ids);
            size_t len;
            char *got = stream(k.t, ids, cnt, &len);
            char sb[1200];
            cr_assert(len == n && memcmp(got, s, n) == 0, "%s: round trip differs for '%s'", names[m],
                      show(s, n, sb, sizeof sb));
            free(got);
            free(ids);
        }
        tk_close(&k);
    }
}

Test(tokenizer, gemma3_round_trips_random_text_and_survives_malformed_bytes) {
    struct tk k;
    char *p = gemma_path();
    bool ok = tk_open(&k, p);
    free(p);
    if (!ok) cr_skip_test("Gemma 3 not available");
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    char s[400];
    for (int it = 0; it < 200; it++) {
        size_t n = (size_t)(tu_next(&r) % sizeof s);
        /* Malformed bytes: no crash, ids in range. They do not round-trip in general (as in
         * llama.cpp, a stray lead byte swallows the next byte, e.g. the first of a U+2581). */
        random_bytes(&r, s, n, false);
        int32_t *ids;
        int64_t cnt = encode(k.t, s, n, true, true, &ids);
        for (int64_t i = 0; i < cnt; i++) cr_assert(ids[i] >= 0 && ids[i] < tokenizer_n_vocab(k.t));
        free(ids);
        random_bytes(&r, s, n, true);
        if (memmem(s, n, "\xe2\x96\x81", 3)) continue; /* U+2581 decodes as ' ' */
        cnt = encode(k.t, s, n, false, false, &ids);
        /* pieces (not the UTF-8-repairing stream) give back the exact bytes */
        size_t cap = 16 * n + 16, len = 0;
        char *got = malloc(cap);
        for (int64_t i = 0; i < cnt; i++) {
            int64_t pn = tokenizer_piece(k.t, ids[i], false, got + len, cap - len);
            cr_assert(pn >= 0 && (size_t)pn <= cap - len);
            len += (size_t)pn;
        }
        char sb[1200];
        cr_assert(len == n && memcmp(got, s, n) == 0, "round trip differs for '%s'", show(s, n, sb, sizeof sb));
        free(got);
        free(ids);
    }
    /* a 10 KB text encodes (speed is measured by hand, see docs/tokenizers.md) */
    size_t big = 10240;
    char *text = malloc(big);
    random_bytes(&r, text, big, true);
    int32_t *ids;
    cr_assert_gt(encode(k.t, text, big, true, false, &ids), 1000);
    free(ids);
    free(text);
    tk_close(&k);
}
