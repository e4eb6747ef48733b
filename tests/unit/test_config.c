/* test_config.c - the model config reader: Gemma 3 270M matches what the gguf package reports
 * (tests/golden/gemma3_config.json), synthetic llama / qwen2 / gemma3 files written here with
 * the GGUF writer load with the values written, and every kind of metadata/tensor mismatch
 * is refused with a message naming the tensor or key, the values and the fix. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "runtime/config.h"
#include "runtime/gguf_writer.h"
#include "testutil.h"

/* ---- synthetic models ---- */

struct spec {
    const char *arch;
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    int64_t key_length;       /* 0: no key_length/value_length keys (head_dim = n_embd / n_head) */
    int64_t swa;              /* gemma3 sliding window */
    bool tied, rope_freqs;
    const char *rope_type;    /* NULL: no scaling keys */
    float rope_factor;
    int64_t rope_orig_ctx;    /* 0: no key */
    float rope_base;
    /* mutations */
    int64_t meta_heads;       /* != 0: head_count written to the metadata instead of n_head */
    const char *skip_tensor;  /* a tensor left out */
    const char *bad_tensor;   /* a tensor whose ne[1] becomes bad_ne1 */
    int64_t bad_ne1;
    const char *skip_key;     /* an <arch>. key suffix left out */
    bool block_count_str;     /* block_count written as a string */
    int32_t eot_id;           /* >= 0: tokenizer.ggml.eot_token_id */
};

static void key(char *buf, const struct spec *s, const char *suffix) {
    snprintf(buf, 128, "%s.%s", s->arch, suffix);
}

static void add_t(struct gguf_writer *w, const struct spec *s, const char *name, int64_t ne0, int64_t ne1) {
    if (s->skip_tensor && !strcmp(name, s->skip_tensor)) return;
    if (s->bad_tensor && !strcmp(name, s->bad_tensor)) ne1 = s->bad_ne1;
    int64_t ne[2] = {ne0, ne1};
    tp_err e = {0};
    cr_assert_eq(gguf_writer_add_tensor(w, name, ne1 > 1 ? 2 : 1, ne, DTYPE_F32, NULL, &e), 0, "%s", e.msg);
}

/* Write a model described by s (all weights zero) to a fresh temp path; caller frees it. */
static char *write_model(const struct spec *s) {
    char *path = tu_tmp_path(".gguf");
    struct gguf_writer *w;
    tp_err e = {0};
    char k[128];
    bool g3 = !strcmp(s->arch, "gemma3"), q2 = !strcmp(s->arch, "qwen2");
    int64_t hd = s->key_length ? s->key_length : s->n_embd / s->n_head;
    cr_assert_eq(gguf_writer_create(&w, path, 0, &e), 0, "%s", e.msg);
#define OK(x) cr_assert_eq((x), 0, "%s", e.msg)
#define U32(suffix, v) \
    if (!s->skip_key || strcmp(s->skip_key, suffix)) { key(k, s, suffix); OK(gguf_writer_add_u32(w, k, (uint32_t)(v), &e)); }
    OK(gguf_writer_add_str(w, "general.architecture", s->arch, &e));
    OK(gguf_writer_add_str(w, "general.name", "test model", &e));
    if (s->block_count_str) {
        key(k, s, "block_count");
        OK(gguf_writer_add_str(w, k, "7", &e));
    } else {
        U32("block_count", s->n_layer);
    }
    U32("context_length", s->n_ctx);
    U32("embedding_length", s->n_embd);
    U32("feed_forward_length", s->n_ff);
    U32("attention.head_count", s->meta_heads ? s->meta_heads : s->n_head);
    U32("attention.head_count_kv", s->n_head_kv);
    if (s->key_length) {
        U32("attention.key_length", s->key_length);
        U32("attention.value_length", s->key_length);
    }
    if (g3) U32("attention.sliding_window", s->swa);
    key(k, s, "attention.layer_norm_rms_epsilon");
    OK(gguf_writer_add_f32(w, k, g3 ? 1e-6f : 1e-5f, &e));
    key(k, s, "rope.freq_base");
    OK(gguf_writer_add_f32(w, k, s->rope_base, &e));
    if (s->rope_type) {
        key(k, s, "rope.scaling.type");
        OK(gguf_writer_add_str(w, k, s->rope_type, &e));
        key(k, s, "rope.scaling.factor");
        OK(gguf_writer_add_f32(w, k, s->rope_factor, &e));
    }
    if (s->rope_orig_ctx) U32("rope.scaling.original_context_length", s->rope_orig_ctx);
    OK(gguf_writer_add_str(w, "tokenizer.ggml.model", "llama", &e));
    char **toks = malloc((size_t)s->n_vocab * sizeof *toks);
    for (int64_t i = 0; i < s->n_vocab; i++) {
        toks[i] = malloc(32);
        snprintf(toks[i], 32, "t%lld", (long long)i);
    }
    OK(gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (uint64_t)s->n_vocab, &e));
    OK(gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1, &e));
    OK(gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2, &e));
    if (s->eot_id >= 0) OK(gguf_writer_add_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)s->eot_id, &e));

    int64_t q = s->n_head * hd, kv = s->n_head_kv * hd;
    char n[64];
    add_t(w, s, "token_embd.weight", s->n_embd, s->n_vocab);
    if (s->rope_freqs) add_t(w, s, "rope_freqs.weight", hd / 2, 1);
    for (int64_t il = 0; il < s->n_layer; il++) {
#define T(suffix, a, b) snprintf(n, sizeof n, "blk.%lld." suffix, (long long)il), add_t(w, s, n, a, b)
        T("attn_norm.weight", s->n_embd, 1);
        T("attn_q.weight", s->n_embd, q);
        T("attn_k.weight", s->n_embd, kv);
        T("attn_v.weight", s->n_embd, kv);
        if (q2) {
            T("attn_q.bias", q, 1);
            T("attn_k.bias", kv, 1);
            T("attn_v.bias", kv, 1);
        }
        if (g3) {
            T("attn_q_norm.weight", hd, 1);
            T("attn_k_norm.weight", hd, 1);
            T("post_attention_norm.weight", s->n_embd, 1);
            T("post_ffw_norm.weight", s->n_embd, 1);
        }
        T("attn_output.weight", q, s->n_embd);
        T("ffn_norm.weight", s->n_embd, 1);
        T("ffn_gate.weight", s->n_embd, s->n_ff);
        T("ffn_up.weight", s->n_embd, s->n_ff);
        T("ffn_down.weight", s->n_ff, s->n_embd);
#undef T
    }
    add_t(w, s, "output_norm.weight", s->n_embd, 1);
    if (!s->tied) add_t(w, s, "output.weight", s->n_embd, s->n_vocab);
    OK(gguf_writer_finish(w, &e));
#undef OK
#undef U32
    gguf_writer_free(w);
    for (int64_t i = 0; i < s->n_vocab; i++) free(toks[i]);
    free(toks);
    return path;
}

static struct spec base_spec(const char *arch) {
    struct spec s = {.arch = arch, .n_embd = 128, .n_layer = 2, .n_head = 4, .n_head_kv = 2, .n_ff = 256,
                     .n_vocab = 300, .n_ctx = 4096, .swa = 64, .rope_base = 10000.0f, .eot_id = -1};
    if (!strcmp(arch, "gemma3")) {
        s.n_layer = 7;
        s.key_length = 64;
        s.tied = true;
        s.rope_base = 1e6f;
    }
    return s;
}

/* Load a model written from s: returns the status, with c and e filled. */
static int load(const struct spec *s, struct model_config *c, tp_err *e) {
    char *path = write_model(s);
    struct gguf_file *f;
    cr_assert_eq(gguf_open(&f, path, e), 0, "%s", e->msg);
    int rc = model_config_load(c, f, e);
    gguf_close(f);
    unlink(path);
    free(path);
    return rc;
}

static void expect_error(const struct spec *s, int code, const char *needle) {
    struct model_config c;
    tp_err e = {0};
    int rc = load(s, &c, &e);
    cr_assert_eq(rc, code, "expected %s, got %d: %s", tp_status_name(code), rc, e.msg);
    cr_assert_not_null(strstr(e.msg, needle), "message:\n  %s\nlacks:\n  %s", e.msg, needle);
}

/* ---- the real model ---- */

Test(config, gemma3_270m_matches_what_the_gguf_package_reports) {
    const char *env = getenv("TPLLM_GEMMA");
    char *model = env ? strdup(env) : tu_src_path("models/gemma-3-270m-q4_k_m.gguf");
    if (access(model, R_OK) != 0) cr_skip_test("Gemma 3 270M not found at %s (set TPLLM_GEMMA)", model);
    char *gpath = tu_src_path("tests/golden/gemma3_config.json");
    json_error_t je;
    json_t *g = json_load_file(gpath, 0, &je);
    cr_assert_not_null(g, "%s: %s", gpath, je.text);
    struct gguf_file *f;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, model, &e), 0, "%s", e.msg);
    struct model_config c;
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
#define I(field) cr_assert_eq(c.field, json_integer_value(json_object_get(g, #field)), #field ": %lld", (long long)c.field)
#define F(field) cr_assert_float_eq(c.field, json_number_value(json_object_get(g, #field)), 1e-6 * fabs(json_number_value(json_object_get(g, #field))) + 1e-12, #field ": %g", (double)c.field)
#define B(field) cr_assert_eq(c.field, json_is_true(json_object_get(g, #field)), #field)
    cr_assert_eq(c.arch, ARCH_GEMMA3);
    cr_assert_str_eq(c.arch_name, json_string_value(json_object_get(g, "arch_name")));
    cr_assert_str_eq(c.name, json_string_value(json_object_get(g, "name")));
    I(n_embd); I(n_layer); I(n_head); I(n_head_kv); I(head_dim); I(head_dim_v); I(n_ff); I(n_vocab);
    I(n_ctx_train); I(n_rot); I(sliding_window); I(swa_period);
    I(bos_id); I(eos_id); I(eot_id); I(pad_id); I(unk_id);
    F(norm_eps); F(rope_base); F(rope_base_local); F(rope_scale); F(norm_offset); F(embd_scale); F(attn_scale);
    B(tied_embeddings); B(has_qkv_bias); B(has_qk_norm); B(has_post_norms); B(add_bos); B(add_eos);
#undef I
#undef F
#undef B
    cr_assert_eq(c.rope_scaling, ROPE_SCALING_NONE);
    cr_assert_str_eq(json_string_value(json_object_get(g, "rope_scaling")), "none");
    cr_assert_eq(c.act, ACT_GELU_TANH);
    cr_assert_eq(c.rope_mode, ROPE_NEOX);
    json_t *swa = json_object_get(g, "swa_layers");
    for (int64_t il = 0, k = 0; il < c.n_layer; il++) {
        bool want = (size_t)k < json_array_size(swa) && json_integer_value(json_array_get(swa, (size_t)k)) == il;
        if (want) k++;
        cr_assert_eq(model_config_layer_is_swa(&c, il), want, "layer %lld", (long long)il);
    }
    int64_t ne[2];
    cr_assert(model_config_tensor_shape(&c, "attn_k.weight", ne));
    json_t *ks = json_object_get(g, "attn_k_shape");
    cr_assert_eq(ne[0], json_integer_value(json_array_get(ks, 0)));
    cr_assert_eq(ne[1], json_integer_value(json_array_get(ks, 1)));
    cr_assert(model_config_tensor_shape(&c, "attn_q.weight", ne));
    cr_assert_eq(ne[1], json_integer_value(json_array_get(json_object_get(g, "attn_q_shape"), 1)));
    gguf_close(f);
    json_decref(g);
    free(gpath);
    free(model);
}

/* ---- synthetic models ---- */

Test(config, synthetic_models_of_each_architecture_load_with_the_values_written) {
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    static const char *const archs[] = {"llama", "qwen2", "gemma3"};
    for (int rep = 0; rep < 4; rep++) {
        for (size_t a = 0; a < 3; a++) {
            struct spec s = base_spec(archs[a]);
            s.n_head = 1 + (int64_t)(tu_next(&r) % 6);       /* any head count, e.g. 5 */
            int64_t divs[6], nd = 0;
            for (int64_t d = 1; d <= s.n_head; d++)
                if (s.n_head % d == 0) divs[nd++] = d;
            s.n_head_kv = divs[tu_next(&r) % (uint64_t)nd];
            s.key_length = 8 * (1 + (int64_t)(tu_next(&r) % 8));
            s.n_embd = 32 * (1 + (int64_t)(tu_next(&r) % 8));
            if (strcmp(archs[a], "gemma3") && (tu_next(&r) & 1)) { /* head_dim from n_embd / n_head */
                s.key_length = 0;
                s.n_embd = s.n_head * 2 * (1 + (int64_t)(tu_next(&r) % 16));
            }
            s.n_ff = 32 * (1 + (int64_t)(tu_next(&r) % 10));
            s.n_layer = 1 + (int64_t)(tu_next(&r) % 8);
            s.n_vocab = 260 + (int64_t)(tu_next(&r) % 200);
            s.tied = tu_next(&r) & 1;
            s.eot_id = (tu_next(&r) & 1) ? 3 : -1;
            struct model_config c;
            tp_err e = {0};
            cr_assert_eq(load(&s, &c, &e), 0, "%s", e.msg);
            int64_t hd = s.key_length ? s.key_length : s.n_embd / s.n_head;
            cr_assert_eq(c.arch, (enum model_arch)a);
            cr_assert_str_eq(c.arch_name, archs[a]);
            cr_assert_str_eq(c.name, "test model");
            cr_assert_eq(c.n_embd, s.n_embd);
            cr_assert_eq(c.n_layer, s.n_layer);
            cr_assert_eq(c.n_head, s.n_head);
            cr_assert_eq(c.n_head_kv, s.n_head_kv);
            cr_assert_eq(c.head_dim, hd, "%s: head_dim %lld, expected %lld", archs[a], (long long)c.head_dim,
                         (long long)hd);
            cr_assert_eq(c.head_dim_v, hd);
            cr_assert_eq(c.n_rot, hd);
            cr_assert_eq(c.n_ff, s.n_ff);
            cr_assert_eq(c.n_vocab, s.n_vocab);
            cr_assert_eq(c.n_ctx_train, s.n_ctx);
            cr_assert_eq(c.rope_base, s.rope_base);
            cr_assert_eq(c.tied_embeddings, s.tied);
            cr_assert_eq(c.bos_id, 1);
            cr_assert_eq(c.eos_id, 2);
            cr_assert_eq(c.eot_id, s.eot_id);
            cr_assert_eq(c.unk_id, -1);
            cr_assert(c.add_bos, "SentencePiece vocabularies add BOS by default");
            cr_assert_float_eq(c.attn_scale, 1.0 / sqrt((double)hd), 1e-6);
            cr_assert_eq(c.norm_offset, 0.0f);
            cr_assert_eq(c.rope_scaling, ROPE_SCALING_NONE);
            if (a == ARCH_GEMMA3) {
                cr_assert_eq(c.act, ACT_GELU_TANH);
                cr_assert_eq(c.rope_mode, ROPE_NEOX);
                cr_assert_eq(c.sliding_window, s.swa);
                cr_assert_eq(c.rope_base_local, 10000.0f);
                cr_assert_float_eq(c.embd_scale, sqrt((double)s.n_embd), 1e-5);
                cr_assert(c.has_qk_norm && c.has_post_norms && !c.has_qkv_bias);
                for (int64_t il = 0; il < 13; il++)
                    cr_assert_eq(model_config_layer_is_swa(&c, il), il % 6 < 5, "layer %lld", (long long)il);
            } else {
                cr_assert_eq(c.act, ACT_SILU);
                cr_assert_eq(c.rope_mode, a == ARCH_QWEN2 ? ROPE_NEOX : ROPE_NORMAL);
                cr_assert_eq(c.has_qkv_bias, a == ARCH_QWEN2);
                cr_assert(!c.has_qk_norm && !c.has_post_norms);
                cr_assert_eq(c.embd_scale, 1.0f);
                cr_assert_eq(c.rope_base_local, c.rope_base);
                cr_assert(!model_config_layer_is_swa(&c, 0) && !model_config_layer_is_swa(&c, 5));
            }
            int64_t ne[2];
            cr_assert(model_config_tensor_shape(&c, "attn_k.weight", ne));
            cr_assert(ne[0] == s.n_embd && ne[1] == s.n_head_kv * hd);
            cr_assert(model_config_tensor_shape(&c, "attn_output.weight", ne));
            cr_assert(ne[0] == s.n_head * hd && ne[1] == s.n_embd);
            cr_assert(model_config_tensor_shape(&c, "ffn_down.weight", ne));
            cr_assert(ne[0] == s.n_ff && ne[1] == s.n_embd);
            cr_assert_eq(model_config_tensor_shape(&c, "attn_q.bias", ne), a == ARCH_QWEN2);
            cr_assert_eq(model_config_tensor_shape(&c, "attn_q_norm.weight", ne), a == ARCH_GEMMA3);
            cr_assert(!model_config_tensor_shape(&c, "no_such.weight", ne));
        }
    }
}

Test(config, rope_scaling_linear_yarn_and_llama3_are_recognised) {
    struct spec s = base_spec("llama");
    struct model_config c;
    tp_err e = {0};
    s.rope_type = "linear";
    s.rope_factor = 4.0f;
    cr_assert_eq(load(&s, &c, &e), 0, "%s", e.msg);
    cr_assert_eq(c.rope_scaling, ROPE_SCALING_LINEAR);
    cr_assert_eq(c.rope_scale, 4.0f);
    s.rope_type = "yarn";
    s.rope_orig_ctx = 1024;
    cr_assert_eq(load(&s, &c, &e), 0, "%s", e.msg);
    cr_assert_eq(c.rope_scaling, ROPE_SCALING_YARN);
    cr_assert_eq(c.rope_n_ctx_orig, 1024);
    s = base_spec("llama");
    s.rope_freqs = true;
    cr_assert_eq(load(&s, &c, &e), 0, "%s", e.msg);
    cr_assert_eq(c.rope_scaling, ROPE_SCALING_LLAMA3);
    cr_assert_eq(c.rope_n_ctx_orig, s.n_ctx);
    s = base_spec("llama");
    s.rope_type = "longrope";
    s.rope_factor = 2;
    expect_error(&s, TP_EUNSUPPORTED, "'llama.rope.scaling.type' is 'longrope'");
}

/* ---- mismatches ---- */

Test(config, a_tensor_shape_that_contradicts_the_metadata_names_tensor_shapes_and_keys) {
    struct spec s = base_spec("gemma3");
    s.n_embd = 640;
    s.n_head = 4;
    s.n_head_kv = 1;
    s.key_length = 256;
    s.n_layer = 4;
    s.bad_tensor = "blk.3.attn_k.weight";
    s.bad_ne1 = 128;
    expect_error(&s, TP_EFORMAT,
                 "tensor 'blk.3.attn_k.weight' has shape [640, 128] but the metadata (gemma3.attention.head_count_kv "
                 "= 1, key_length = 256) implies [640, 256]; the file may have been converted by an older tool — "
                 "re-convert it with a current llama.cpp");
}

Test(config, a_wrong_head_count_is_reported_at_the_first_tensor_it_breaks) {
    struct spec s = base_spec("llama");
    s.key_length = 32;
    s.meta_heads = 6; /* tensors are for 4 heads of 32 */
    expect_error(&s, TP_EFORMAT,
                 "tensor 'blk.0.attn_q.weight' has shape [128, 128] but the metadata (llama.attention.head_count = "
                 "6, key_length = 32) implies [128, 192]");
}

Test(config, a_missing_tensor_is_named) {
    struct spec s = base_spec("qwen2");
    s.skip_tensor = "blk.1.attn_v.bias";
    expect_error(&s, TP_EFORMAT, "tensor 'blk.1.attn_v.bias' is missing (the metadata says qwen2.block_count = 2)");
    s = base_spec("gemma3");
    s.skip_tensor = "blk.6.post_ffw_norm.weight";
    expect_error(&s, TP_EFORMAT, "tensor 'blk.6.post_ffw_norm.weight' is missing");
}

Test(config, a_key_of_the_wrong_type_names_the_key_and_both_types) {
    struct spec s = base_spec("llama");
    s.block_count_str = true;
    expect_error(&s, TP_EFORMAT, "key 'llama.block_count'");
    expect_error(&s, TP_EFORMAT, "has type STRING, expected an integer type");
}

Test(config, a_missing_key_is_named) {
    struct spec s = base_spec("qwen2");
    s.skip_key = "embedding_length";
    expect_error(&s, TP_EFORMAT, "key 'qwen2.embedding_length' is missing");
    s = base_spec("gemma3");
    s.skip_key = "attention.sliding_window";
    expect_error(&s, TP_EFORMAT, "key 'gemma3.attention.sliding_window' is missing");
}

Test(config, heads_that_are_not_a_multiple_of_the_kv_heads_are_refused) {
    struct spec s = base_spec("llama");
    s.n_head = 5;
    s.n_head_kv = 2;
    s.key_length = 32;
    expect_error(&s, TP_EFORMAT, "llama.attention.head_count = 5 is not a multiple of head_count_kv = 2");
}

Test(config, another_architecture_is_unsupported_and_the_supported_ones_are_listed) {
    struct spec s = base_spec("llama");
    s.arch = "phi3";
    expect_error(&s, TP_EUNSUPPORTED, "architecture 'phi3' is not supported; tpllm runs llama");
    expect_error(&s, TP_EUNSUPPORTED, "qwen2 and gemma3");
}
