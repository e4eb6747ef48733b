/* cmd_inspect.c - `tpllm inspect`: a GGUF model's architecture, hyperparameters, tokenizer and tensors. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kernels/kernels.h"
#include "runtime/config.h"
#include "runtime/gguf.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tpllm inspect FILE [--json] [--top N]\n"
            "\n"
            "Print a GGUF model's architecture, hyperparameters, tokenizer, tensor count and bytes per\n"
            "type, and its largest tensors. Reads only the header: nothing is loaded.\n"
            "\n"
            "  --json     print the same as one JSON object\n"
            "  --top N    list the N largest tensors (default 10; 0: none)\n");
}

/* llama.cpp's enum llama_ftype names (general.file_type), indexed by id; NULL for gaps. */
static const char *ftype_name(int64_t id) {
    static const char *const names[] = {
        [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [7] = "Q8_0", [8] = "Q5_0", [9] = "Q5_1",
        [10] = "Q2_K", [11] = "Q3_K_S", [12] = "Q3_K_M", [13] = "Q3_K_L", [14] = "Q4_K_S", [15] = "Q4_K_M",
        [16] = "Q5_K_S", [17] = "Q5_K_M", [18] = "Q6_K", [19] = "IQ2_XXS", [20] = "IQ2_XS", [21] = "Q2_K_S",
        [22] = "IQ3_XS", [23] = "IQ3_XXS", [24] = "IQ1_S", [25] = "IQ4_NL", [26] = "IQ3_S", [27] = "IQ3_M",
        [28] = "IQ2_S", [29] = "IQ2_M", [30] = "IQ4_XS", [31] = "IQ1_M", [32] = "BF16", [36] = "TQ1_0",
        [37] = "TQ2_0", [38] = "MXFP4_MOE",
    };
    if (id < 0 || id >= (int64_t)TP_ARRAY_LEN(names) || !names[id]) return "unknown";
    return names[id];
}

/* Everything inspect reports, gathered once and printed as text or JSON. */
struct report {
    const struct gguf_file *f;
    char arch[64], name[128], tok_model[32], tok_pre[64];
    int64_t file_type;            /* -1: absent */
    bool has_config;
    struct model_config cfg;
    char config_err[1024];        /* why tpllm cannot run it, when !has_config */
    int64_t n_tokens, n_merges;   /* -1: absent */
    struct { int64_t count; uint64_t bytes; } types[DTYPE_COUNT + 1]; /* last: unknown ids */
    size_t *order;                /* tensor indices, largest first */
    int64_t top;
};

static void str_key(const struct gguf_file *f, const char *key, char *buf, size_t n) {
    struct gguf_str s;
    buf[0] = '\0';
    if (gguf_get_str(f, key, &s, NULL) == 0) gguf_str_copy(s, buf, n);
}

/* qsort_r comparator: tensor indices by size, largest first, then by name. */
static int by_size(const void *a, const void *b, void *ctx) {
    const struct gguf_file *f = ctx;
    const struct gguf_tensor *x = &f->tensors[*(const size_t *)a], *y = &f->tensors[*(const size_t *)b];
    if (x->nbytes != y->nbytes) return x->nbytes > y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int report_build(struct report *r, const struct gguf_file *f, int64_t top) {
    memset(r, 0, sizeof *r);
    r->f = f;
    r->top = top;
    str_key(f, "general.architecture", r->arch, sizeof r->arch);
    str_key(f, "general.name", r->name, sizeof r->name);
    str_key(f, "tokenizer.ggml.model", r->tok_model, sizeof r->tok_model);
    str_key(f, "tokenizer.ggml.pre", r->tok_pre, sizeof r->tok_pre);
    if (gguf_get_i64(f, "general.file_type", &r->file_type, NULL)) r->file_type = -1;
    uint64_t n;
    r->n_tokens = gguf_get_arr(f, "tokenizer.ggml.tokens", NULL, &n, NULL, NULL) == 0 ? (int64_t)n : -1;
    r->n_merges = gguf_get_arr(f, "tokenizer.ggml.merges", NULL, &n, NULL, NULL) == 0 ? (int64_t)n : -1;
    tp_err e = {0};
    r->has_config = model_config_load(&r->cfg, f, &e) == 0;
    if (!r->has_config) snprintf(r->config_err, sizeof r->config_err, "%s", e.msg);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        int k = dtype_get(t->type) ? t->type : DTYPE_COUNT;
        r->types[k].count++;
        r->types[k].bytes += t->nbytes;
    }
    r->order = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *r->order);
    if (!r->order) return -1;
    for (uint64_t i = 0; i < f->n_tensors; i++) r->order[i] = (size_t)i;
    qsort_r(r->order, (size_t)f->n_tensors, sizeof *r->order, by_size, (void *)f);
    if (r->top > (int64_t)f->n_tensors) r->top = (int64_t)f->n_tensors;
    return 0;
}

static const char *tok_kind(const char *model) {
    if (!strcmp(model, "llama")) return "SPM";
    if (!strcmp(model, "gpt2")) return "BPE";
    if (!strcmp(model, "bert")) return "WPM";
    if (!strcmp(model, "t5")) return "UGM";
    if (!strcmp(model, "rwkv")) return "RWKV";
    return model[0] ? "other" : "none";
}

static const char *rope_scaling_name(enum rope_scaling s) {
    switch (s) {
    case ROPE_SCALING_LINEAR: return "linear";
    case ROPE_SCALING_YARN: return "yarn";
    case ROPE_SCALING_LLAMA3: return "llama3";
    default: return "none";
    }
}

static const char *human(uint64_t b, char *buf, size_t n) {
    if (b >= (1ull << 30)) snprintf(buf, n, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
    else if (b >= 1024) snprintf(buf, n, "%.1f KiB", (double)b / 1024.0);
    else snprintf(buf, n, "%llu B", (unsigned long long)b);
    return buf;
}

static const char *shape(const struct gguf_tensor *t, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (uint32_t d = 0; d < t->n_dims && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

/* ---- text ---- */

static void print_text(const struct report *r) {
    const struct gguf_file *f = r->f;
    const struct model_config *c = &r->cfg;
    char b1[32], b2[32];
    printf("file:          %s (%s, GGUF v%u, %llu keys, %llu tensors)\n", f->path, human(f->size, b1, sizeof b1),
           f->version, (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors);
    printf("architecture:  %s\n", r->arch[0] ? r->arch : "(none)");
    printf("name:          %s\n", r->name[0] ? r->name : "(none)");
    if (r->file_type >= 0) printf("file type:     %s (%lld)\n", ftype_name(r->file_type), (long long)r->file_type);
    if (r->has_config) {
        printf("hyperparameters:\n");
        printf("  layers          %lld\n", (long long)c->n_layer);
        printf("  embedding       %lld\n", (long long)c->n_embd);
        printf("  heads           %lld query, %lld key/value (head width %lld", (long long)c->n_head,
               (long long)c->n_head_kv, (long long)c->head_dim);
        if (c->head_dim_v != c->head_dim) printf(", value width %lld", (long long)c->head_dim_v);
        printf(")\n");
        printf("  feed-forward    %lld\n", (long long)c->n_ff);
        printf("  vocabulary      %lld\n", (long long)c->n_vocab);
        printf("  context         %lld (trained)\n", (long long)c->n_ctx_train);
        printf("  rope            base %g, %lld dims, %s, scaling %s", (double)c->rope_base, (long long)c->n_rot,
               c->rope_mode == ROPE_NEOX ? "neox" : "normal", rope_scaling_name(c->rope_scaling));
        if (c->rope_scaling == ROPE_SCALING_LINEAR || c->rope_scaling == ROPE_SCALING_YARN)
            printf(" x%g (original context %lld)", (double)c->rope_scale, (long long)c->rope_n_ctx_orig);
        printf("\n");
        if (c->sliding_window > 0)
            printf("  sliding window  %lld tokens on %lld of every %lld layers (local rope base %g)\n",
                   (long long)c->sliding_window, (long long)(c->swa_period - 1), (long long)c->swa_period,
                   (double)c->rope_base_local);
        printf("  norm epsilon    %g\n", (double)c->norm_eps);
        printf("  output          %s\n", c->tied_embeddings ? "tied to token_embd" : "output.weight");
        if (c->has_qkv_bias) printf("  attention bias  q, k, v\n");
        if (c->has_qk_norm) printf("  q/k norm        yes\n");
    } else {
        printf("note:          tpllm cannot run this model: %s\n", r->config_err);
    }
    printf("tokenizer:     ");
    if (r->n_tokens < 0 && !r->tok_model[0]) {
        printf("(none)\n");
    } else {
        printf("%s (tokenizer.ggml.model = %s", tok_kind(r->tok_model), r->tok_model[0] ? r->tok_model : "?");
        if (r->tok_pre[0]) printf(", pre = %s", r->tok_pre);
        printf("), %lld tokens", (long long)r->n_tokens);
        if (r->n_merges >= 0) printf(", %lld merges", (long long)r->n_merges);
        if (r->has_config)
            printf(", bos %d, eos %d%s", c->bos_id, c->eos_id, c->add_bos ? ", adds bos" : "");
        printf("\n");
    }
    printf("tensors:       %llu, %s of data\n", (unsigned long long)f->n_tensors, human(f->data_bytes, b1, sizeof b1));
    printf("  %-8s %6s %14s\n", "type", "count", "bytes");
    for (int k = 0; k <= DTYPE_COUNT; k++) {
        if (!r->types[k].count) continue;
        printf("  %-8s %6lld %14llu  (%s)%s\n", k < DTYPE_COUNT ? dtype_name(k) : "unknown",
               (long long)r->types[k].count, (unsigned long long)r->types[k].bytes,
               human(r->types[k].bytes, b2, sizeof b2),
               k < DTYPE_COUNT && dtype_supported(k) ? "" : "  not supported by tpllm");
    }
    printf("  %-8s %6llu %14llu  (%s)\n", "total", (unsigned long long)f->n_tensors,
           (unsigned long long)f->data_bytes, human(f->data_bytes, b1, sizeof b1));
    if (r->top > 0) {
        printf("largest tensors:\n");
        for (int64_t i = 0; i < r->top; i++) {
            const struct gguf_tensor *t = &f->tensors[r->order[i]];
            char s[96];
            printf("  %-32s %-6s %-16s %s\n", t->name, dtype_name(t->type), shape(t, s, sizeof s),
                   human(t->nbytes, b1, sizeof b1));
        }
    }
}

/* ---- JSON ---- */

static json_t *config_json(const struct model_config *c) {
    json_t *h = json_object();
    json_object_set_new(h, "n_layer", json_integer(c->n_layer));
    json_object_set_new(h, "n_embd", json_integer(c->n_embd));
    json_object_set_new(h, "n_head", json_integer(c->n_head));
    json_object_set_new(h, "n_head_kv", json_integer(c->n_head_kv));
    json_object_set_new(h, "head_dim", json_integer(c->head_dim));
    json_object_set_new(h, "head_dim_v", json_integer(c->head_dim_v));
    json_object_set_new(h, "n_ff", json_integer(c->n_ff));
    json_object_set_new(h, "n_vocab", json_integer(c->n_vocab));
    json_object_set_new(h, "n_ctx_train", json_integer(c->n_ctx_train));
    json_object_set_new(h, "norm_eps", json_real(c->norm_eps));
    json_object_set_new(h, "rope_base", json_real(c->rope_base));
    json_object_set_new(h, "rope_base_local", json_real(c->rope_base_local));
    json_object_set_new(h, "n_rot", json_integer(c->n_rot));
    json_object_set_new(h, "rope_mode", json_string(c->rope_mode == ROPE_NEOX ? "neox" : "normal"));
    json_object_set_new(h, "rope_scaling", json_string(rope_scaling_name(c->rope_scaling)));
    json_object_set_new(h, "rope_scale", json_real(c->rope_scale));
    json_object_set_new(h, "rope_n_ctx_orig", json_integer(c->rope_n_ctx_orig));
    json_object_set_new(h, "sliding_window", json_integer(c->sliding_window));
    json_object_set_new(h, "swa_period", json_integer(c->swa_period));
    json_object_set_new(h, "tied_embeddings", json_boolean(c->tied_embeddings));
    json_object_set_new(h, "qkv_bias", json_boolean(c->has_qkv_bias));
    json_object_set_new(h, "qk_norm", json_boolean(c->has_qk_norm));
    json_object_set_new(h, "post_norms", json_boolean(c->has_post_norms));
    json_object_set_new(h, "embd_scale", json_real(c->embd_scale));
    json_object_set_new(h, "attn_scale", json_real(c->attn_scale));
    json_object_set_new(h, "activation", json_string(c->act == ACT_GELU_TANH ? "gelu_tanh" : "silu"));
    return h;
}

static int print_json(const struct report *r) {
    const struct gguf_file *f = r->f;
    json_t *o = json_object();
    json_object_set_new(o, "file", json_string(f->path));
    json_object_set_new(o, "file_size", json_integer((json_int_t)f->size));
    json_object_set_new(o, "version", json_integer(f->version));
    json_object_set_new(o, "n_kv", json_integer((json_int_t)f->n_kv));
    json_object_set_new(o, "architecture", json_string(r->arch));
    json_object_set_new(o, "name", json_string(r->name));
    if (r->file_type >= 0) {
        json_t *ft = json_object();
        json_object_set_new(ft, "id", json_integer(r->file_type));
        json_object_set_new(ft, "name", json_string(ftype_name(r->file_type)));
        json_object_set_new(o, "file_type", ft);
    }
    json_object_set_new(o, "hyperparameters", r->has_config ? config_json(&r->cfg) : json_null());
    if (!r->has_config) json_object_set_new(o, "config_error", json_string(r->config_err));
    json_t *tok = json_object();
    json_object_set_new(tok, "model", json_string(r->tok_model));
    json_object_set_new(tok, "kind", json_string(tok_kind(r->tok_model)));
    json_object_set_new(tok, "pre", json_string(r->tok_pre));
    json_object_set_new(tok, "n_vocab", r->n_tokens >= 0 ? json_integer(r->n_tokens) : json_null());
    if (r->n_merges >= 0) json_object_set_new(tok, "n_merges", json_integer(r->n_merges));
    if (r->has_config) {
        json_object_set_new(tok, "bos_id", json_integer(r->cfg.bos_id));
        json_object_set_new(tok, "eos_id", json_integer(r->cfg.eos_id));
        json_object_set_new(tok, "eot_id", json_integer(r->cfg.eot_id));
        json_object_set_new(tok, "add_bos", json_boolean(r->cfg.add_bos));
    }
    json_object_set_new(o, "tokenizer", tok);
    json_object_set_new(o, "n_tensors", json_integer((json_int_t)f->n_tensors));
    json_object_set_new(o, "tensor_bytes", json_integer((json_int_t)f->data_bytes));
    json_t *types = json_array();
    for (int k = 0; k <= DTYPE_COUNT; k++) {
        if (!r->types[k].count) continue;
        json_t *t = json_object();
        json_object_set_new(t, "type", json_string(k < DTYPE_COUNT ? dtype_name(k) : "unknown"));
        json_object_set_new(t, "count", json_integer(r->types[k].count));
        json_object_set_new(t, "bytes", json_integer((json_int_t)r->types[k].bytes));
        json_object_set_new(t, "supported", json_boolean(k < DTYPE_COUNT && dtype_supported(k)));
        json_array_append_new(types, t);
    }
    json_object_set_new(o, "types", types);
    json_t *largest = json_array();
    for (int64_t i = 0; i < r->top; i++) {
        const struct gguf_tensor *t = &f->tensors[r->order[i]];
        json_t *j = json_object(), *s = json_array();
        for (uint32_t d = 0; d < t->n_dims; d++) json_array_append_new(s, json_integer(t->ne[d]));
        json_object_set_new(j, "name", json_string(t->name));
        json_object_set_new(j, "type", json_string(dtype_name(t->type)));
        json_object_set_new(j, "shape", s);
        json_object_set_new(j, "bytes", json_integer((json_int_t)t->nbytes));
        json_array_append_new(largest, j);
    }
    json_object_set_new(o, "largest", largest);
    int rc = json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    putchar('\n');
    json_decref(o);
    return rc;
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    bool json = false;
    int64_t top = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--top") || !strncmp(a, "--top=", 6)) {
            const char *v = a[5] == '=' ? a + 6 : (i + 1 < argc ? argv[++i] : NULL);
            char *end;
            errno = 0;
            long long n = v ? strtoll(v, &end, 10) : -1;
            if (!v || errno || end == v || *end || n < 0) {
                fprintf(stderr, "tpllm inspect: --top expects a count >= 0, got '%s'\n", v ? v : "");
                usage(stderr);
                return 2;
            }
            top = n;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "tpllm inspect: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "tpllm inspect: one FILE only ('%s' and '%s' given)\n", path, a);
            usage(stderr);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        fprintf(stderr, "tpllm inspect: FILE is missing\n");
        usage(stderr);
        return 2;
    }
    struct gguf_file *f;
    tp_err e = {0};
    if (gguf_open(&f, path, &e)) {
        fprintf(stderr, "tpllm inspect: %s\n", e.msg);
        return 1;
    }
    struct report r;
    int status = 0;
    if (report_build(&r, f, top)) {
        fprintf(stderr, "tpllm inspect: out of memory\n");
        status = 1;
    } else if (json) {
        status = print_json(&r) ? 1 : 0;
    } else {
        print_text(&r);
    }
    free(r.order);
    gguf_close(f);
    return status;
}
