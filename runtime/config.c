/* config.c - model hyperparameters from GGUF metadata (llama, qwen2, gemma3), cross-checked
 * against the shape of every tensor the forward pass will use.
 *
 * Keys and defaults follow llama.cpp's loader (llama-model.cpp) for these architectures;
 * where llama.cpp hard-codes a value instead of storing it (gemma3's sliding-window
 * pattern, local rope base, embedding scale) the same constant is used here. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../kernels/kernels.h"

#define HINT_RECONVERT "the file may have been converted by an older tool — re-convert it with a current llama.cpp"

static const char *const arch_names[ARCH_COUNT] = {"llama", "qwen2", "gemma3"};
_Static_assert(TP_ARRAY_LEN(arch_names) == ARCH_COUNT, "arch_names must cover ARCH_COUNT");

const char *model_arch_name(enum model_arch a) {
    return a >= 0 && a < ARCH_COUNT ? arch_names[a] : "unknown";
}

bool model_config_layer_is_swa(const struct model_config *c, int64_t il) {
    /* llama.cpp's set_swa_pattern(n): layer il uses the window when il % n < n - 1, so
     * every n-th layer (5, 11, 17, ... for n = 6) is global. */
    if (c->sliding_window <= 0 || c->swa_period <= 0) return false;
    return il % c->swa_period < c->swa_period - 1;
}

/* ---- metadata ---- */

/* What the loader knows while reading keys: the file and the architecture prefix. */
struct cfg_reader {
    const struct gguf_file *f;
    const char *arch;
    tp_err *e;
};

static const char *akey(const struct cfg_reader *r, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", r->arch, suffix);
    return buf;
}

/* <arch>.<suffix> as an integer >= lo: required when def is NULL, else *def when absent.
 * Sets *present when given (may be NULL). */
static int get_int(const struct cfg_reader *r, const char *suffix, int64_t lo, const int64_t *def, int64_t *out,
                   bool *present) {
    char key[128];
    akey(r, suffix, key, sizeof key);
    int rc = gguf_get_i64(r->f, key, out, r->e);
    if (present) *present = rc == 0;
    if (rc == TP_ENOTFOUND) {
        if (def) {
            *out = *def;
            return 0;
        }
        return tp_errf(r->e, TP_EFORMAT, "%s: key '%s' is missing; every %s model has it — %s", r->f->path, key,
                       r->arch, HINT_RECONVERT);
    }
    if (rc) return rc;
    if (*out < lo)
        return tp_errf(r->e, TP_EFORMAT, "%s: key '%s' is %lld, expected at least %lld; the file is corrupt — %s",
                       r->f->path, key, (long long)*out, (long long)lo, HINT_RECONVERT);
    return 0;
}

static int get_float(const struct cfg_reader *r, const char *suffix, float def, float *out) {
    char key[128];
    akey(r, suffix, key, sizeof key);
    int rc = gguf_get_f32(r->f, key, out, r->e);
    if (rc == TP_ENOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc) return rc;
    if (!(*out > 0) || !isfinite(*out))
        return tp_errf(r->e, TP_EFORMAT, "%s: key '%s' is %g, expected a positive number — %s", r->f->path, key,
                       (double)*out, HINT_RECONVERT);
    return 0;
}

/* A token id key: -1 when absent or negative (some converters store -1 for "none"). */
static int get_token_id(const struct gguf_file *f, const char *key, int32_t *out, tp_err *e) {
    int64_t v;
    int rc = gguf_get_i64(f, key, &v, e);
    if (rc == TP_ENOTFOUND || (rc == 0 && (v < 0 || v > INT32_MAX))) {
        *out = -1;
        return 0;
    }
    if (rc) return rc;
    *out = (int32_t)v;
    return 0;
}

static int get_flag(const struct gguf_file *f, const char *key, bool def, bool *out, tp_err *e) {
    int rc = gguf_get_bool(f, key, out, e);
    if (rc == TP_ENOTFOUND) {
        *out = def;
        return 0;
    }
    return rc;
}

static int read_rope_scaling(struct model_config *c, const struct cfg_reader *r) {
    char key[128];
    struct gguf_str s = {"", 0};
    int rc = gguf_get_str(r->f, akey(r, "rope.scaling.type", key, sizeof key), &s, r->e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    c->rope_scaling = ROPE_SCALING_NONE;
    c->rope_scale = 1.0f;
    if (rc == 0 && !gguf_str_eq(s, "none")) {
        if (gguf_str_eq(s, "linear")) c->rope_scaling = ROPE_SCALING_LINEAR;
        else if (gguf_str_eq(s, "yarn")) c->rope_scaling = ROPE_SCALING_YARN;
        else {
            char v[64];
            return tp_errf(r->e, TP_EUNSUPPORTED,
                           "%s: key '%s' is '%s'; tpllm supports rope scaling none, linear, yarn and llama3 (the "
                           "rope_freqs tensor)",
                           r->f->path, key, gguf_str_copy(s, v, sizeof v));
        }
        if ((rc = get_float(r, "rope.scaling.factor", 1.0f, &c->rope_scale))) return rc;
    } else {
        /* Old conversions stored a linear factor as rope.scale_linear. */
        if ((rc = get_float(r, "rope.scale_linear", 1.0f, &c->rope_scale))) return rc;
        if (c->rope_scale != 1.0f) c->rope_scaling = ROPE_SCALING_LINEAR;
    }
    /* Llama 3.1+: convert_hf_to_gguf.py stores the per-frequency factors as rope_freqs.weight
     * and writes no scaling type. */
    if (c->arch == ARCH_LLAMA && c->rope_scaling == ROPE_SCALING_NONE && gguf_find_tensor(r->f, "rope_freqs.weight"))
        c->rope_scaling = ROPE_SCALING_LLAMA3;
    return get_int(r, "rope.scaling.original_context_length", 1, &c->n_ctx_train, &c->rope_n_ctx_orig, NULL);
}

static int read_special_tokens(struct model_config *c, const struct gguf_file *f, tp_err *e) {
    int rc = get_token_id(f, "tokenizer.ggml.bos_token_id", &c->bos_id, e);
    if (!rc) rc = get_token_id(f, "tokenizer.ggml.eos_token_id", &c->eos_id, e);
    /* Gemma's <end_of_turn> has no key: the tokenizer finds it by text (eot_id stays -1). */
    if (!rc) rc = get_token_id(f, "tokenizer.ggml.eot_token_id", &c->eot_id, e);
    if (!rc) rc = get_token_id(f, "tokenizer.ggml.padding_token_id", &c->pad_id, e);
    if (!rc) rc = get_token_id(f, "tokenizer.ggml.unknown_token_id", &c->unk_id, e);
    if (rc) return rc;
    /* llama.cpp's defaults when the keys are absent: SentencePiece vocabularies add BOS. */
    struct gguf_str model = {"", 0};
    rc = gguf_get_str(f, "tokenizer.ggml.model", &model, e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    bool spm = rc == 0 && gguf_str_eq(model, "llama");
    rc = get_flag(f, "tokenizer.ggml.add_bos_token", spm, &c->add_bos, e);
    if (!rc) rc = get_flag(f, "tokenizer.ggml.add_eos_token", false, &c->add_eos, e);
    return rc;
}

/* The vocabulary size: the tokenizer's token count, else <arch>.vocab_size, else the rows
 * of token_embd.weight (the tensor check then confirms the embedding's shape). */
static int read_vocab_size(struct model_config *c, const struct cfg_reader *r) {
    uint64_t n;
    enum gguf_vtype t;
    int rc = gguf_get_arr(r->f, "tokenizer.ggml.tokens", &t, &n, NULL, r->e);
    if (rc == 0) {
        if (n == 0 || n > INT32_MAX)
            return tp_errf(r->e, TP_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries — %s", r->f->path,
                           (unsigned long long)n, HINT_RECONVERT);
        c->n_vocab = (int64_t)n;
        return 0;
    }
    if (rc != TP_ENOTFOUND) return rc;
    bool present;
    int64_t none = 0;
    if ((rc = get_int(r, "vocab_size", 1, &none, &c->n_vocab, &present))) return rc;
    if (present) return 0;
    const struct gguf_tensor *te = gguf_find_tensor(r->f, "token_embd.weight");
    if (!te)
        return tp_errf(r->e, TP_EFORMAT, "%s: tensor 'token_embd.weight' is missing — %s", r->f->path, HINT_RECONVERT);
    c->n_vocab = te->n_dims >= 2 ? te->ne[1] : 1;
    return 0;
}

static int check_shape(const struct model_config *c, const struct gguf_file *f, tp_err *e);

int model_config_load(struct model_config *c, const struct gguf_file *f, tp_err *e) {
    memset(c, 0, sizeof *c);
    struct gguf_str s;
    int rc = gguf_get_str(f, "general.architecture", &s, e);
    if (rc == TP_ENOTFOUND)
        return tp_errf(e, TP_EFORMAT, "%s: key 'general.architecture' is missing; this is not a model file from "
                       "llama.cpp's converter — convert the model with a current llama.cpp", f->path);
    if (rc) return rc;
    gguf_str_copy(s, c->arch_name, sizeof c->arch_name);
    c->arch = ARCH_COUNT;
    for (int a = 0; a < ARCH_COUNT; a++)
        if (gguf_str_eq(s, arch_names[a])) c->arch = (enum model_arch)a;
    if (c->arch == ARCH_COUNT)
        return tp_errf(e, TP_EUNSUPPORTED,
                       "%s: architecture '%s' is not supported; tpllm runs llama (Llama 2/3, Mistral), qwen2 and "
                       "gemma3 models",
                       f->path, c->arch_name);
    if (gguf_get_str(f, "general.name", &s, NULL) == 0) gguf_str_copy(s, c->name, sizeof c->name);

    struct cfg_reader r = {f, c->arch_name, e};
    if ((rc = get_int(&r, "embedding_length", 1, NULL, &c->n_embd, NULL))) return rc;
    if ((rc = get_int(&r, "block_count", 1, NULL, &c->n_layer, NULL))) return rc;
    if ((rc = get_int(&r, "attention.head_count", 1, NULL, &c->n_head, NULL))) return rc;
    if ((rc = get_int(&r, "attention.head_count_kv", 1, &c->n_head, &c->n_head_kv, NULL))) return rc;
    if ((rc = get_int(&r, "feed_forward_length", 1, NULL, &c->n_ff, NULL))) return rc;
    if ((rc = get_int(&r, "context_length", 1, NULL, &c->n_ctx_train, NULL))) return rc;
    int64_t hd_def = c->n_embd / c->n_head;
    if ((rc = get_int(&r, "attention.key_length", 1, &hd_def, &c->head_dim, NULL))) return rc;
    if ((rc = get_int(&r, "attention.value_length", 1, &c->head_dim, &c->head_dim_v, NULL))) return rc;
    if ((rc = get_int(&r, "rope.dimension_count", 2, &c->head_dim, &c->n_rot, NULL))) return rc;
    char key[128];
    if ((rc = get_float(&r, "attention.layer_norm_rms_epsilon", -1.0f, &c->norm_eps))) return rc;
    if (c->norm_eps < 0)
        return tp_errf(e, TP_EFORMAT, "%s: key '%s' is missing; every %s model has it — %s", f->path,
                       akey(&r, "attention.layer_norm_rms_epsilon", key, sizeof key), c->arch_name, HINT_RECONVERT);
    if ((rc = get_float(&r, "rope.freq_base", 10000.0f, &c->rope_base))) return rc;
    if ((rc = read_rope_scaling(c, &r))) return rc;
    if ((rc = read_vocab_size(c, &r))) return rc;
    if ((rc = read_special_tokens(c, f, e))) return rc;

    if (c->n_head % c->n_head_kv)
        return tp_errf(e, TP_EFORMAT,
                       "%s: %s.attention.head_count = %lld is not a multiple of head_count_kv = %lld — %s", f->path,
                       c->arch_name, (long long)c->n_head, (long long)c->n_head_kv, HINT_RECONVERT);
    if (c->head_dim < 1)
        return tp_errf(e, TP_EFORMAT,
                       "%s: %s.embedding_length = %lld is smaller than head_count = %lld and key_length is absent — %s",
                       f->path, c->arch_name, (long long)c->n_embd, (long long)c->n_head, HINT_RECONVERT);
    if (c->n_rot > c->head_dim || c->n_rot % 2)
        return tp_errf(e, TP_EFORMAT,
                       "%s: %s.rope.dimension_count = %lld must be even and at most the head width %lld — %s", f->path,
                       c->arch_name, (long long)c->n_rot, (long long)c->head_dim, HINT_RECONVERT);
    int64_t q;
    if (!tp_mul_i64(c->n_head, c->head_dim, &q) || q > INT32_MAX || c->n_embd > INT32_MAX || c->n_ff > INT32_MAX)
        return tp_errf(e, TP_EFORMAT, "%s: the metadata's sizes are implausibly large — %s", f->path, HINT_RECONVERT);

    c->rope_base_local = c->rope_base;
    c->embd_scale = 1.0f;
    c->norm_offset = 0.0f;
    c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    c->act = ACT_SILU;
    c->rope_mode = ROPE_NORMAL;
    c->tied_embeddings = gguf_find_tensor(f, "output.weight") == NULL;
    switch (c->arch) {
    case ARCH_LLAMA:
        /* Some llama-architecture conversions carry Q/K/V biases; use them when present. */
        c->has_qkv_bias = gguf_find_tensor(f, "blk.0.attn_q.bias") != NULL;
        break;
    case ARCH_QWEN2:
        c->rope_mode = ROPE_NEOX;
        c->has_qkv_bias = true;
        break;
    case ARCH_GEMMA3:
        if ((rc = get_int(&r, "attention.sliding_window", 1, NULL, &c->sliding_window, NULL))) return rc;
        c->swa_period = 6;
        c->rope_base_local = 10000.0f; /* llama.cpp: rope_freq_base_train_swa; local layers are never scaled */
        c->embd_scale = sqrtf((float)c->n_embd);
        /* Gemma's query_pre_attn_scalar is not stored: llama.cpp uses head_dim, except for the
         * 27B model (62 layers) where it is n_embd / n_head. */
        c->attn_scale = c->n_layer == 62 ? 1.0f / sqrtf((float)(c->n_embd / c->n_head)) : c->attn_scale;
        c->act = ACT_GELU_TANH;
        c->rope_mode = ROPE_NEOX;
        c->has_qk_norm = true;
        c->has_post_norms = true;
        break;
    default: break;
    }
    return check_shape(c, f, e);
}

/* ---- tensors ---- */

/* A dimension of an expected tensor, as a function of the config. */
enum dim_kind { D_ONE, D_EMBD, D_Q, D_KV, D_KVV, D_QV, D_FF, D_HD, D_VOCAB, D_ROT2 };

struct tensor_spec {
    const char *suffix;
    enum dim_kind d0, d1;
    unsigned archs;   /* bit per enum model_arch */
    bool needs_bias;  /* only when c->has_qkv_bias */
};

#define ALL ((1u << ARCH_LLAMA) | (1u << ARCH_QWEN2) | (1u << ARCH_GEMMA3))
#define G3 (1u << ARCH_GEMMA3)

/* Per-layer tensors "blk.N.<suffix>" in the order the checks report them. */
static const struct tensor_spec layer_specs[] = {
    {"attn_norm.weight", D_EMBD, D_ONE, ALL, false},
    {"attn_q.weight", D_EMBD, D_Q, ALL, false},
    {"attn_k.weight", D_EMBD, D_KV, ALL, false},
    {"attn_v.weight", D_EMBD, D_KVV, ALL, false},
    {"attn_q.bias", D_Q, D_ONE, ALL, true},
    {"attn_k.bias", D_KV, D_ONE, ALL, true},
    {"attn_v.bias", D_KVV, D_ONE, ALL, true},
    {"attn_q_norm.weight", D_HD, D_ONE, G3, false},
    {"attn_k_norm.weight", D_HD, D_ONE, G3, false},
    {"attn_output.weight", D_QV, D_EMBD, ALL, false},
    {"post_attention_norm.weight", D_EMBD, D_ONE, G3, false},
    {"ffn_norm.weight", D_EMBD, D_ONE, ALL, false},
    {"ffn_gate.weight", D_EMBD, D_FF, ALL, false},
    {"ffn_up.weight", D_EMBD, D_FF, ALL, false},
    {"ffn_down.weight", D_FF, D_EMBD, ALL, false},
    {"post_ffw_norm.weight", D_EMBD, D_ONE, G3, false},
};

static int64_t dim_value(const struct model_config *c, enum dim_kind k) {
    switch (k) {
    case D_EMBD: return c->n_embd;
    case D_Q: return c->n_head * c->head_dim;
    case D_KV: return c->n_head_kv * c->head_dim;
    case D_KVV: return c->n_head_kv * c->head_dim_v;
    case D_QV: return c->n_head * c->head_dim_v;
    case D_FF: return c->n_ff;
    case D_HD: return c->head_dim;
    case D_VOCAB: return c->n_vocab;
    case D_ROT2: return c->n_rot / 2;
    default: return 1;
    }
}

/* The metadata behind dimension kind k, e.g. "gemma3.attention.head_count_kv = 1, key_length = 256". */
static void dim_reason(const struct model_config *c, enum dim_kind k, char *buf, size_t n) {
    const char *a = c->arch_name;
    switch (k) {
    case D_EMBD: snprintf(buf, n, "%s.embedding_length = %lld", a, (long long)c->n_embd); break;
    case D_Q:
        snprintf(buf, n, "%s.attention.head_count = %lld, key_length = %lld", a, (long long)c->n_head,
                 (long long)c->head_dim);
        break;
    case D_KV:
        snprintf(buf, n, "%s.attention.head_count_kv = %lld, key_length = %lld", a, (long long)c->n_head_kv,
                 (long long)c->head_dim);
        break;
    case D_KVV:
        snprintf(buf, n, "%s.attention.head_count_kv = %lld, value_length = %lld", a, (long long)c->n_head_kv,
                 (long long)c->head_dim_v);
        break;
    case D_QV:
        snprintf(buf, n, "%s.attention.head_count = %lld, value_length = %lld", a, (long long)c->n_head,
                 (long long)c->head_dim_v);
        break;
    case D_FF: snprintf(buf, n, "%s.feed_forward_length = %lld", a, (long long)c->n_ff); break;
    case D_HD: snprintf(buf, n, "%s.attention.key_length = %lld", a, (long long)c->head_dim); break;
    case D_VOCAB: snprintf(buf, n, "a vocabulary of %lld tokens", (long long)c->n_vocab); break;
    case D_ROT2: snprintf(buf, n, "%s.rope.dimension_count = %lld", a, (long long)c->n_rot); break;
    default: snprintf(buf, n, "a 1-D tensor"); break;
    }
}

static const char *shape_str(const int64_t *ne, int n_dims, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)ne[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

/* Check tensor `name` exists (unless optional) with shape [d0] or [d0, d1]. */
static int check_tensor(const struct model_config *c, const struct gguf_file *f, const char *name, enum dim_kind d0,
                        enum dim_kind d1, bool optional, tp_err *e) {
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        if (optional) return 0;
        return tp_errf(e, TP_EFORMAT,
                       "%s: tensor '%s' is missing (the metadata says %s.block_count = %lld); the file is incomplete "
                       "or was converted by an older tool — re-convert it with a current llama.cpp",
                       f->path, name, c->arch_name, (long long)c->n_layer);
    }
    int64_t want[2] = {dim_value(c, d0), dim_value(c, d1)};
    int nd = d1 == D_ONE ? 1 : 2;
    bool ok = t->ne[0] == want[0] && t->ne[1] == want[1] && t->ne[2] == 1 && t->ne[3] == 1;
    if (ok) return 0;
    char got[96], exp[64], why[256];
    int tnd = (int)TP_MAX(t->n_dims, 1u);
    shape_str(t->ne, tnd, got, sizeof got);
    shape_str(want, nd, exp, sizeof exp);
    /* Name the metadata behind the dimensions that differ (both when both do). */
    if (t->ne[0] != want[0] && (nd == 1 || t->ne[1] == want[1])) dim_reason(c, d0, why, sizeof why);
    else if (t->ne[0] == want[0]) dim_reason(c, d1, why, sizeof why);
    else {
        char a[120], b[120];
        dim_reason(c, d0, a, sizeof a);
        dim_reason(c, d1, b, sizeof b);
        snprintf(why, sizeof why, "%s; %s", a, b);
    }
    return tp_errf(e, TP_EFORMAT, "%s: tensor '%s' has shape %s but the metadata (%s) implies %s; %s", f->path, name,
                   got, why, exp, HINT_RECONVERT);
}

static int check_shape(const struct model_config *c, const struct gguf_file *f, tp_err *e) {
    int rc = check_tensor(c, f, "token_embd.weight", D_EMBD, D_VOCAB, false, e);
    if (!rc) rc = check_tensor(c, f, "output_norm.weight", D_EMBD, D_ONE, false, e);
    if (!rc) rc = check_tensor(c, f, "output.weight", D_EMBD, D_VOCAB, true, e);
    if (!rc) rc = check_tensor(c, f, "rope_freqs.weight", D_ROT2, D_ONE, true, e);
    char name[96];
    for (int64_t il = 0; il < c->n_layer && !rc; il++) {
        for (size_t i = 0; i < TP_ARRAY_LEN(layer_specs) && !rc; i++) {
            const struct tensor_spec *s = &layer_specs[i];
            if (!(s->archs & (1u << c->arch)) || (s->needs_bias && !c->has_qkv_bias)) continue;
            snprintf(name, sizeof name, "blk.%lld.%s", (long long)il, s->suffix);
            rc = check_tensor(c, f, name, s->d0, s->d1, false, e);
        }
    }
    if (!rc && c->arch == ARCH_LLAMA && gguf_find_tensor(f, "blk.0.attn_output.bias"))
        rc = tp_errf(e, TP_EUNSUPPORTED,
                     "%s: tensor 'blk.0.attn_output.bias' (an output-projection bias) is not supported by tpllm's "
                     "llama forward pass; use a model without it",
                     f->path);
    return rc;
}

bool model_config_tensor_shape(const struct model_config *c, const char *suffix, int64_t ne[2]) {
    if (!strcmp(suffix, "token_embd.weight") || !strcmp(suffix, "output.weight")) {
        ne[0] = c->n_embd;
        ne[1] = c->n_vocab;
        return true;
    }
    if (!strcmp(suffix, "output_norm.weight")) {
        ne[0] = c->n_embd;
        ne[1] = 1;
        return true;
    }
    for (size_t i = 0; i < TP_ARRAY_LEN(layer_specs); i++) {
        const struct tensor_spec *s = &layer_specs[i];
        if (strcmp(s->suffix, suffix)) continue;
        if (!(s->archs & (1u << c->arch)) || (s->needs_bias && !c->has_qkv_bias)) return false;
        ne[0] = dim_value(c, s->d0);
        ne[1] = dim_value(c, s->d1);
        return true;
    }
    return false;
}
