/* model.c - per-rank weight loading: each rank copies only its shard's byte ranges of the file. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/memtrack.h"
#include "../kernels/quant.h"

#define WEIGHT_ALIGN 64

enum split { SPLIT_NONE, SPLIT_ROWS, SPLIT_COLS };

/* One weight this rank holds: which tensor, which slice, where it goes. */
struct wspec {
    const struct gguf_tensor *t;
    enum split split;
    int64_t begin, end; /* rows (SPLIT_ROWS) or columns (SPLIT_COLS) */
    bool to_f32;        /* norms, biases: stored as F32 whatever the file type */
};

static int find(const struct gguf_file *f, const char *name, bool required, const struct gguf_tensor **out, tp_err *e) {
    *out = gguf_find_tensor(f, name);
    if (!*out && required)
        return tp_errf(e, TP_EFORMAT, "%s: tensor '%s' is missing; the file is incomplete or not a supported model — re-convert it with a current llama.cpp",
                       f->path ? f->path : "model", name);
    return 0;
}

static int64_t ws_rows(const struct wspec *w) {
    int64_t rows = w->t->ne[1] * w->t->ne[2] * w->t->ne[3];
    return w->split == SPLIT_ROWS ? w->end - w->begin : rows;
}
static int64_t ws_cols(const struct wspec *w) { return w->split == SPLIT_COLS ? w->end - w->begin : w->t->ne[0]; }

static size_t ws_bytes(const struct wspec *w) {
    if (w->to_f32) return (size_t)(ws_rows(w) * ws_cols(w)) * sizeof(float);
    return (size_t)ws_rows(w) * dtype_row_bytes((enum dtype)w->t->type, ws_cols(w));
}

int model_shard_model(struct shard_model *sm, const struct model_config *c, const struct gguf_file *f, tp_err *e) {
    memset(sm, 0, sizeof *sm);
    sm->n_head = c->n_head;
    sm->n_head_kv = c->n_head_kv;
    sm->head_dim = c->head_dim;
    sm->head_dim_v = c->head_dim_v;
    sm->n_ff = c->n_ff;
    sm->n_vocab = c->n_vocab;
    sm->o_block = 1;
    sm->down_block = 1;
    char name[96];
    for (int64_t il = 0; il < c->n_layer; il++) {
        const struct gguf_tensor *t;
        snprintf(name, sizeof name, "blk.%lld.attn_output.weight", (long long)il);
        int rc = find(f, name, true, &t, e);
        if (rc) return rc;
        if (!dtype_get(t->type)) return tp_errf(e, TP_EFORMAT, "tensor '%s' has an unknown type id %d", name, t->type);
        sm->o_block = TP_MAX(sm->o_block, dtype_get(t->type)->block_size);
        snprintf(name, sizeof name, "blk.%lld.ffn_down.weight", (long long)il);
        rc = find(f, name, true, &t, e);
        if (rc) return rc;
        if (!dtype_get(t->type)) return tp_errf(e, TP_EFORMAT, "tensor '%s' has an unknown type id %d", name, t->type);
        sm->down_block = TP_MAX(sm->down_block, dtype_get(t->type)->block_size);
    }
    return 0;
}

/* The weights of `rank` in load order; returns the count (specs may be NULL to count). */
static int plan_specs(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p, int rank,
                      struct wspec *specs, int *n_out, tp_err *e) {
    int n = 0, rc;
    const struct gguf_tensor *t;
    char name[96];
    int64_t hd = c->head_dim, hdv = c->head_dim_v;
    struct shard_range qh = p->q_heads[rank], kvh = p->kv_heads[rank], ff = p->ff[rank], voc = p->vocab[rank];
#define ADD(tensor, sp, b, en, f32)                                                                         \
    do {                                                                                                    \
        if (specs) specs[n] = (struct wspec){.t = (tensor), .split = (sp), .begin = (b), .end = (en), .to_f32 = (f32)}; \
        n++;                                                                                                \
    } while (0)
#define NEED(fmt, ...)                                   \
    do {                                                 \
        snprintf(name, sizeof name, fmt, __VA_ARGS__);   \
        if ((rc = find(f, name, true, &t, e))) return rc; \
    } while (0)
#define MAYBE(fmt, ...)                                   \
    do {                                                  \
        snprintf(name, sizeof name, fmt, __VA_ARGS__);    \
        if ((rc = find(f, name, false, &t, e))) return rc; \
    } while (0)
    for (int64_t il = 0; il < c->n_layer; il++) {
        long long l = (long long)il;
        NEED("blk.%lld.attn_norm.weight", l);
        ADD(t, SPLIT_NONE, 0, 0, true);
        NEED("blk.%lld.attn_q.weight", l);
        ADD(t, SPLIT_ROWS, qh.begin * hd, qh.end * hd, false);
        NEED("blk.%lld.attn_k.weight", l);
        ADD(t, SPLIT_ROWS, kvh.begin * hd, kvh.end * hd, false);
        NEED("blk.%lld.attn_v.weight", l);
        ADD(t, SPLIT_ROWS, kvh.begin * hdv, kvh.end * hdv, false);
        if (c->has_qkv_bias) {
            NEED("blk.%lld.attn_q.bias", l);
            ADD(t, SPLIT_COLS, qh.begin * hd, qh.end * hd, true);
            NEED("blk.%lld.attn_k.bias", l);
            ADD(t, SPLIT_COLS, kvh.begin * hd, kvh.end * hd, true);
            NEED("blk.%lld.attn_v.bias", l);
            ADD(t, SPLIT_COLS, kvh.begin * hdv, kvh.end * hdv, true);
        }
        if (c->has_qk_norm) {
            NEED("blk.%lld.attn_q_norm.weight", l);
            ADD(t, SPLIT_NONE, 0, 0, true);
            NEED("blk.%lld.attn_k_norm.weight", l);
            ADD(t, SPLIT_NONE, 0, 0, true);
        }
        NEED("blk.%lld.attn_output.weight", l);
        ADD(t, SPLIT_COLS, qh.begin * hdv, qh.end * hdv, false);
        if (c->has_post_norms) {
            NEED("blk.%lld.post_attention_norm.weight", l);
            ADD(t, SPLIT_NONE, 0, 0, true);
        }
        NEED("blk.%lld.ffn_norm.weight", l);
        ADD(t, SPLIT_NONE, 0, 0, true);
        NEED("blk.%lld.ffn_gate.weight", l);
        ADD(t, SPLIT_ROWS, ff.begin, ff.end, false);
        NEED("blk.%lld.ffn_up.weight", l);
        ADD(t, SPLIT_ROWS, ff.begin, ff.end, false);
        NEED("blk.%lld.ffn_down.weight", l);
        ADD(t, SPLIT_COLS, ff.begin, ff.end, false);
        if (c->has_post_norms) {
            NEED("blk.%lld.post_ffw_norm.weight", l);
            ADD(t, SPLIT_NONE, 0, 0, true);
        }
    }
    NEED("%s", "output_norm.weight");
    ADD(t, SPLIT_NONE, 0, 0, true);
    MAYBE("%s", "output.weight");
    if (!t || c->tied_embeddings) NEED("%s", "token_embd.weight");
    ADD(t, SPLIT_ROWS, voc.begin, voc.end, false);
#undef ADD
#undef NEED
#undef MAYBE
    *n_out = n;
    return 0;
}

static int collect_specs(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p, int rank,
                         struct wspec **out, int *n, tp_err *e) {
    int rc = plan_specs(c, f, p, rank, NULL, n, e);
    if (rc) return rc;
    *out = calloc((size_t)*n, sizeof **out);
    if (!*out) return tp_errf(e, TP_ENOMEM, "out of host memory planning weights");
    rc = plan_specs(c, f, p, rank, *out, n, e);
    if (rc) return rc;
    for (int i = 0; i < *n; i++) {
        const struct gguf_tensor *t = (*out)[i].t;
        if (!dtype_supported(t->type))
            return tp_errf(e, TP_EUNSUPPORTED, "tensor %s has type %s, which tpllm does not support yet; "
                           "use a file quantized to F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q2_K..Q6_K",
                           t->name, dtype_name(t->type));
        if ((*out)[i].split == SPLIT_COLS && !(*out)[i].to_f32) {
            int64_t blk = dtype_block((enum dtype)t->type);
            if ((*out)[i].begin % blk || (*out)[i].end % blk)
                return tp_errf(e, TP_EINVAL, "tensor %s: column slice [%lld, %lld) of rank %d does not fall on %s block "
                               "boundaries (%lld); choose another --tp",
                               t->name, (long long)(*out)[i].begin, (long long)(*out)[i].end, rank,
                               dtype_name(t->type), (long long)blk);
        }
    }
    return 0;
}

int model_weight_bytes(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p, int rank,
                       size_t *bytes, tp_err *e) {
    struct wspec *specs = NULL;
    int n = 0;
    int rc = collect_specs(c, f, p, rank, &specs, &n, e);
    size_t total = 0;
    for (int i = 0; rc == 0 && i < n; i++) total += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN);
    if (c->rope_scaling == ROPE_SCALING_LLAMA3 && gguf_find_tensor(f, "rope_freqs.weight"))
        total += TP_ALIGN_UP((size_t)(c->n_rot / 2) * sizeof(float), WEIGHT_ALIGN);
    free(specs);
    *bytes = total;
    return rc;
}

int model_slices(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *p, int rank,
                 struct model_slice **out, int *n, tp_err *e) {
    struct wspec *specs = NULL;
    *out = NULL;
    int rc = collect_specs(c, f, p, rank, &specs, n, e);
    if (rc == 0) {
        *out = calloc((size_t)TP_MAX(*n, 1), sizeof **out);
        if (!*out) rc = tp_errf(e, TP_ENOMEM, "out of memory");
    }
    for (int i = 0; rc == 0 && i < *n; i++) {
        const struct wspec *w = &specs[i];
        (*out)[i] = (struct model_slice){.name = w->t->name, .type = w->to_f32 ? DTYPE_F32 : w->t->type,
                                         .split = w->split == SPLIT_ROWS ? 'r' : w->split == SPLIT_COLS ? 'c' : '-',
                                         .begin = w->split == SPLIT_NONE ? 0 : w->begin,
                                         .end = w->split == SPLIT_NONE ? 0 : w->end,
                                         .rows = ws_rows(w), .cols = ws_cols(w), .bytes = ws_bytes(w)};
    }
    free(specs);
    return rc;
}

/* Copy one weight slice into backend memory at dst, staging through host memory when the
 * slice is not contiguous in the file or needs conversion to F32. */
static void load_one(struct model *m, const struct wspec *w, void *dst, void *stage) {
    const struct gguf_tensor *t = w->t;
    struct kbackend *be = m->be;
    enum dtype type = (enum dtype)t->type;
    size_t row_bytes = dtype_row_bytes(type, t->ne[0]);
    int64_t rows = ws_rows(w), cols = ws_cols(w);
    size_t bytes = ws_bytes(w);
    if (bytes == 0) return;
    if (w->to_f32) {
        /* norms and biases: small 1-D tensors; the slice is columns of a single row */
        int64_t blk = dtype_block(type);
        int64_t c0 = w->split == SPLIT_COLS ? w->begin : 0;
        int64_t b0 = c0 / blk * blk;
        int64_t n_conv = TP_ALIGN_UP(c0 - b0 + cols, blk);
        float *tmp = stage;
        quant_dequantize_row(type, t->data + dtype_row_bytes(type, b0), tmp, n_conv);
        be->ops->upload(be, dst, tmp + (c0 - b0), (size_t)cols * sizeof(float));
        m->bytes_read += dtype_row_bytes(type, n_conv);
        return;
    }
    if (w->split != SPLIT_COLS) {
        int64_t r0 = w->split == SPLIT_ROWS ? w->begin : 0;
        be->ops->upload(be, dst, t->data + (size_t)r0 * row_bytes, bytes);
    } else {
        size_t off = dtype_row_bytes(type, w->begin), len = dtype_row_bytes(type, cols);
        uint8_t *s = stage;
        for (int64_t r = 0; r < rows; r++) memcpy(s + (size_t)r * len, t->data + (size_t)r * row_bytes + off, len);
        be->ops->upload(be, dst, stage, bytes);
    }
    m->bytes_read += bytes;
    if (m->progress) m->progress(m->progress_user, m->bytes_read, m->weights_bytes);
}

static struct kmat mat_of(const struct wspec *w, void *dst) {
    enum dtype type = (enum dtype)w->t->type;
    return (struct kmat){.data = dst, .type = type, .n_out = ws_rows(w), .n_in = ws_cols(w),
                         .row_stride = dtype_row_bytes(type, ws_cols(w))};
}

/* The backend's own layout for a loaded weight (kops.prepare_weight), if it has one. */
static void prepare_mat(struct model *m, struct kmat *w) {
    if (m->be->ops->prepare_weight && w->n_out > 0 && w->n_in > 0) m->be->ops->prepare_weight(m->be, w);
}

int model_load(struct model *m, const struct gguf_file *f, const struct model_config *c, const struct shard_plan *p,
               int rank, struct kbackend *be, tp_err *e) {
    return model_load_progress(m, f, c, p, rank, be, NULL, NULL, e);
}

int model_load_progress(struct model *m, const struct gguf_file *f, const struct model_config *c,
                        const struct shard_plan *p, int rank, struct kbackend *be,
                        void (*progress)(void *user, uint64_t done, uint64_t total), void *user, tp_err *e) {
    memset(m, 0, sizeof *m);
    m->progress = progress;
    m->progress_user = user;
    m->cfg = *c;
    m->file = f;
    m->be = be;
    m->sh = (struct model_shard){.rank = rank, .tp = p->tp,
                                 .q_head0 = p->q_heads[rank].begin, .n_head_l = shard_len(p->q_heads[rank]),
                                 .kv_head0 = p->kv_heads[rank].begin, .n_kv_l = shard_len(p->kv_heads[rank]),
                                 .ff0 = p->ff[rank].begin, .n_ff_l = shard_len(p->ff[rank]),
                                 .vocab0 = p->vocab[rank].begin, .n_vocab_l = shard_len(p->vocab[rank]),
                                 .o_granule = p->o_granule, .ff_granule = p->ff_unit};
    struct wspec *specs = NULL;
    int n = 0;
    void *stage = NULL;
    int rc = collect_specs(c, f, p, rank, &specs, &n, e);
    if (rc) goto error;
    const struct gguf_tensor *embd = gguf_find_tensor(f, "token_embd.weight");
    if (!embd) {
        rc = tp_errf(e, TP_EFORMAT, "tensor 'token_embd.weight' is missing; re-convert the model with a current llama.cpp");
        goto error;
    }
    if (!dtype_supported(embd->type)) {
        rc = tp_errf(e, TP_EUNSUPPORTED, "tensor token_embd.weight has type %s, which tpllm does not support yet", dtype_name(embd->type));
        goto error;
    }
    m->tok_embd = (struct kmat){.data = embd->data, .type = (enum dtype)embd->type, .n_out = embd->ne[1],
                                .n_in = embd->ne[0], .row_stride = dtype_row_bytes((enum dtype)embd->type, embd->ne[0])};

    size_t total = 0, stage_bytes = 0;
    for (int i = 0; i < n; i++) {
        total += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN);
        size_t sb = specs[i].to_f32 ? (size_t)(specs[i].t->ne[0] + 256) * sizeof(float) : ws_bytes(&specs[i]);
        stage_bytes = TP_MAX(stage_bytes, sb);
    }
    const struct gguf_tensor *rf = c->rope_scaling == ROPE_SCALING_LLAMA3 ? gguf_find_tensor(f, "rope_freqs.weight") : NULL;
    if (rf) total += TP_ALIGN_UP((size_t)(c->n_rot / 2) * sizeof(float), WEIGHT_ALIGN);
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    stage = malloc(TP_MAX(stage_bytes, (size_t)64));
    m->weights_bytes = TP_MAX(total, (size_t)WEIGHT_ALIGN);
    m->weights_mem = memtrack_alloc(be->track, be, MEM_WEIGHTS, m->weights_bytes);
    if (!m->layers || !stage || !m->weights_mem) {
        rc = tp_errf(e, TP_ENOMEM, "rank %d: cannot allocate %.1f MiB for its weights; use a larger --tp or a smaller quantization",
                     rank, (double)total / (1 << 20));
        goto error;
    }
    uint8_t *cursor = m->weights_mem;
    int i = 0;
    for (int64_t il = 0; il < c->n_layer; il++) {
        struct layer_weights *L = &m->layers[il];
#define NEXT_F32(field)                              \
    do {                                             \
        load_one(m, &specs[i], cursor, stage);       \
        L->field = (float *)cursor;                  \
        cursor += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN); \
        i++;                                         \
    } while (0)
#define NEXT_MAT(field)                              \
    do {                                             \
        load_one(m, &specs[i], cursor, stage);       \
        L->field = mat_of(&specs[i], cursor);        \
        prepare_mat(m, &L->field);                   \
        cursor += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN); \
        i++;                                         \
    } while (0)
        NEXT_F32(attn_norm);
        NEXT_MAT(wq);
        NEXT_MAT(wk);
        NEXT_MAT(wv);
        if (c->has_qkv_bias) {
            NEXT_F32(bq);
            NEXT_F32(bk);
            NEXT_F32(bv);
        }
        if (c->has_qk_norm) {
            NEXT_F32(q_norm);
            NEXT_F32(k_norm);
        }
        NEXT_MAT(wo);
        if (c->has_post_norms) NEXT_F32(post_attn_norm);
        NEXT_F32(ffn_norm);
        NEXT_MAT(w_gate);
        NEXT_MAT(w_up);
        NEXT_MAT(w_down);
        if (c->has_post_norms) NEXT_F32(post_ffn_norm);
#undef NEXT_F32
#undef NEXT_MAT
    }
    load_one(m, &specs[i], cursor, stage);
    m->output_norm = (float *)cursor;
    cursor += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN);
    i++;
    load_one(m, &specs[i], cursor, stage);
    m->output = mat_of(&specs[i], cursor);
    prepare_mat(m, &m->output);
    cursor += TP_ALIGN_UP(ws_bytes(&specs[i]), WEIGHT_ALIGN);
    i++;
    if (rf) {
        int64_t nf = c->n_rot / 2;
        if (rf->ne[0] != nf || rf->type != DTYPE_F32) {
            rc = tp_errf(e, TP_EFORMAT, "tensor rope_freqs.weight has %lld %s values but the model needs %lld F32 values",
                         (long long)rf->ne[0], dtype_name(rf->type), (long long)nf);
            goto error;
        }
        m->rope_freqs = malloc((size_t)nf * sizeof(float));
        if (!m->rope_freqs) {
            rc = tp_errf(e, TP_ENOMEM, "out of host memory");
            goto error;
        }
        memcpy(m->rope_freqs, rf->data, (size_t)nf * sizeof(float));
        be->ops->upload(be, cursor, rf->data, (size_t)nf * sizeof(float));
        m->rope_freqs_dev = (float *)cursor;
        m->bytes_read += (size_t)nf * sizeof(float);
    }
    be->ops->sync(be);
    if (m->progress) m->progress(m->progress_user, m->weights_bytes, m->weights_bytes); /* done (alignment padding included) */
    m->progress = NULL;
    m->progress_user = NULL;
    free(stage);
    free(specs);
    return 0;
error:
    free(stage);
    free(specs);
    model_free(m);
    return rc;
}

void model_free(struct model *m) {
    if (!m) return;
    if (m->weights_mem && m->be) memtrack_free(m->be->track, m->be, MEM_WEIGHTS, m->weights_mem, m->weights_bytes);
    free(m->layers);
    free(m->rope_freqs);
    m->layers = NULL;
    m->rope_freqs = NULL;
    m->weights_mem = NULL;
}
