/* forward.c - the transformer forward pass (llama, qwen2, gemma3) on one rank's shard.
 *
 * Per layer (DESIGN.md): norm -> Q,K,V (column-parallel: this rank's heads) -> [bias]
 * -> [QK-norm] -> RoPE -> store K,V in the paged cache -> attention over local heads ->
 * O projection (row-parallel) -> all-reduce -> [post-norm] -> residual -> norm ->
 * gate/up (column-parallel) -> activation -> down (row-parallel) -> all-reduce ->
 * [post-norm] -> residual. Then the final norm and this rank's vocabulary slice of the
 * LM head for the requested rows. Exactly two reductions per layer; each adds
 * double-precision partial sums in rank order (project_reduce: an all-gather, or for large
 * steps a reduce-scatter and an all-gather), so that every TP size computes the same
 * activations (docs/parallel.md). */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/memtrack.h"
#include "../kernels/quant.h"

#define STATE_ALIGN 64
/* Slices of a reduce-scatter are whole multiples of this many values (64 bytes of doubles). */
#define RS_ALIGN 8
/* Reductions of at least this many bytes of partials per rank are a reduce-scatter and an
 * all-gather (fewer bytes, two latencies); smaller ones one all-gather (one latency).
 * TPLLM_REDUCE=gather|scatter|auto overrides (benchmarks; the bits are the same). */
#define RS_MIN_BYTES ((size_t)64 << 10)

size_t kv_cache_bytes(const struct model_config *c, int64_t n_kv_l, int64_t n_blocks, int64_t block_size, enum dtype type) {
    size_t per_layer = (size_t)n_blocks * (size_t)block_size * (size_t)n_kv_l * (size_t)c->head_dim *
                       dtype_get(type)->type_size;
    return 2 * TP_ALIGN_UP(per_layer, STATE_ALIGN) * (size_t)c->n_layer;
}

int kv_cache_create(struct kv_cache *kv, struct kbackend *be, const struct model_config *c, int64_t n_kv_l,
                    int64_t n_blocks, int64_t block_size, enum dtype type, tp_err *e) {
    memset(kv, 0, sizeof *kv);
    if (type != DTYPE_F16 && type != DTYPE_F32)
        return tp_errf(e, TP_EINVAL, "KV cache type %s is not supported; use f16 or f32", dtype_name(type));
    if (c->head_dim_v != c->head_dim)
        return tp_errf(e, TP_EUNSUPPORTED, "models whose value heads (%lld) differ from key heads (%lld) are not supported yet",
                       (long long)c->head_dim_v, (long long)c->head_dim);
    size_t per_layer = TP_ALIGN_UP((size_t)n_blocks * (size_t)block_size * (size_t)n_kv_l * (size_t)c->head_dim *
                                       dtype_get(type)->type_size, STATE_ALIGN);
    kv->bytes = kv_cache_bytes(c, n_kv_l, n_blocks, block_size, type);
    kv->layers = calloc((size_t)c->n_layer, sizeof *kv->layers);
    kv->bytes = TP_MAX(kv->bytes, (size_t)STATE_ALIGN);
    kv->mem = memtrack_alloc(be->track, be, MEM_KV, kv->bytes);
    if (!kv->layers || !kv->mem) {
        kv_cache_free(kv, be);
        return tp_errf(e, TP_ENOMEM, "cannot allocate the KV cache (%.1f MiB for %lld blocks of %lld tokens); lower --ctx or --kv-blocks",
                       (double)kv->bytes / (1 << 20), (long long)n_blocks, (long long)block_size);
    }
    uint8_t *cur = kv->mem;
    for (int64_t il = 0; il < c->n_layer; il++) {
        kv->layers[il] = (struct kv_layer){.k = cur, .v = cur + per_layer, .type = type, .n_blocks = n_blocks,
                                           .block_size = block_size, .n_kv = n_kv_l, .head_dim = c->head_dim};
        cur += 2 * per_layer;
    }
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    return 0;
}

void kv_cache_free(struct kv_cache *kv, struct kbackend *be) {
    if (!kv) return;
    if (kv->mem) memtrack_free(be->track, be, MEM_KV, kv->mem, kv->bytes);
    free(kv->layers);
    memset(kv, 0, sizeof *kv);
}

/* The run state's buffers in order, with their element counts and sizes. */
struct rs_layout {
    size_t off[16];
    size_t total;
};

static void rs_layout(struct rs_layout *L, const struct model_config *c, const struct model_shard *sh, int64_t T,
                      int64_t NL, int64_t S, int64_t B) {
    size_t d = (size_t)c->n_embd, hd = (size_t)c->head_dim;
    /* o and o64 hold tp equal slices of a reduce-scatter: up to RS_ALIGN * tp values past T * d */
    size_t pad = sh->tp > 1 ? (size_t)RS_ALIGN * (size_t)sh->tp : 0;
    size_t sizes[16] = {
        T * d * 4, T * d * 4, T * sh->n_head_l * hd * 4, T * sh->n_kv_l * hd * 4, T * sh->n_kv_l * hd * 4,
        T * sh->n_head_l * hd * 4, (T * d + pad) * 4, T * sh->n_ff_l * 4, T * sh->n_ff_l * 4,
        (size_t)NL * sh->n_vocab_l * 4, T * 4, T * 4, (size_t)(S * B) * 4, T * 8,
        (T * d + pad) * 8, (sh->tp > 1 ? (size_t)sh->tp : 0) * T * d * 8,
    };
    size_t cur = 0;
    for (int i = 0; i < 16; i++) {
        L->off[i] = cur;
        cur += TP_ALIGN_UP(sizes[i], STATE_ALIGN);
    }
    L->total = cur;
}

size_t run_state_bytes(const struct model_config *c, const struct model_shard *sh, int64_t max_tok, int64_t max_logits,
                       int64_t max_seq, int64_t max_blocks) {
    struct rs_layout L;
    rs_layout(&L, c, sh, max_tok, max_logits, max_seq, max_blocks);
    return L.total;
}

int run_state_create(struct run_state *rs, const struct model *m, int64_t max_tok, int64_t max_logits, int64_t max_seq,
                     int64_t max_blocks, tp_err *e) {
    memset(rs, 0, sizeof *rs);
    struct kbackend *be = m->be;
    struct rs_layout L;
    rs_layout(&L, &m->cfg, &m->sh, max_tok, max_logits, max_seq, max_blocks);
    rs->bytes = L.total;
    rs->mem = memtrack_alloc(be->track, be, MEM_ACTIVATIONS, L.total);
    rs->host_x = malloc((size_t)max_tok * (size_t)m->cfg.n_embd * sizeof(float));
    if (!rs->mem || !rs->host_x) {
        run_state_free(rs, be);
        return tp_errf(e, TP_ENOMEM, "cannot allocate %.1f MiB of activations for %lld tokens per step; lower --max-batch-tokens",
                       (double)L.total / (1 << 20), (long long)max_tok);
    }
    /* on a CPU rank the host staging area is part of the rank's (host) budget */
    rs->host_bytes = strcmp(be->ops->name, "cpu") ? 0 : (size_t)max_tok * (size_t)m->cfg.n_embd * sizeof(float);
    memtrack_note(be->track, MEM_ACTIVATIONS, rs->host_bytes);
    uint8_t *base = rs->mem;
    rs->x = (float *)(base + L.off[0]);
    rs->xn = (float *)(base + L.off[1]);
    rs->q = (float *)(base + L.off[2]);
    rs->k = (float *)(base + L.off[3]);
    rs->v = (float *)(base + L.off[4]);
    rs->att = (float *)(base + L.off[5]);
    rs->o = (float *)(base + L.off[6]);
    rs->gate = (float *)(base + L.off[7]);
    rs->up = (float *)(base + L.off[8]);
    rs->logits = (float *)(base + L.off[9]);
    rs->d_pos = (int32_t *)(base + L.off[10]);
    rs->d_seq = (int32_t *)(base + L.off[11]);
    rs->d_tables = (int32_t *)(base + L.off[12]);
    rs->d_slots = (int64_t *)(base + L.off[13]);
    rs->o64 = (double *)(base + L.off[14]);
    rs->o64_all = (double *)(base + L.off[15]);
    rs->bytes = L.total;
    rs->max_tok = max_tok;
    rs->max_logits = max_logits;
    rs->max_seq = max_seq;
    rs->max_blocks = max_blocks;
    return 0;
}

void run_state_free(struct run_state *rs, struct kbackend *be) {
    if (!rs) return;
    if (rs->mem) memtrack_free(be->track, be, MEM_ACTIVATIONS, rs->mem, rs->bytes);
    memtrack_unnote(be->track, MEM_ACTIVATIONS, rs->host_bytes);
    free(rs->host_x);
    memset(rs, 0, sizeof *rs);
}

static struct rope_params layer_rope(const struct model *m, int64_t il) {
    const struct model_config *c = &m->cfg;
    bool swa = model_config_layer_is_swa(c, il);
    struct rope_params p = {.mode = (enum rope_mode)c->rope_mode, .n_rot = c->n_rot, .base = c->rope_base,
                            .freq_scale = 1.0f, .freq_factors = NULL, .ext_factor = 0.0f, .attn_factor = 1.0f,
                            .beta_fast = 32.0f, .beta_slow = 1.0f, .n_ctx_orig = c->rope_n_ctx_orig};
    if (swa) {
        p.base = c->rope_base_local;
        return p;
    }
    switch (c->rope_scaling) {
    case ROPE_SCALING_LINEAR: p.freq_scale = 1.0f / c->rope_scale; break;
    case ROPE_SCALING_YARN:
        p.freq_scale = 1.0f / c->rope_scale;
        p.ext_factor = 1.0f;
        break;
    case ROPE_SCALING_LLAMA3: p.freq_factors = m->rope_freqs_dev; break;
    case ROPE_SCALING_NONE: break;
    }
    return p;
}

/* How reductions run: 0 auto (by size), 1 always all-gather, 2 always reduce-scatter. */
static int reduce_mode(void) {
    static int mode = -1;
    if (mode < 0) {
        const char *v = getenv("TPLLM_REDUCE");
        mode = v && !strcmp(v, "gather") ? 1 : v && !strcmp(v, "scatter") ? 2 : 0;
    }
    return mode;
}

/* Row-parallel projection and its reduction: out = sum over ranks of W_r x_r, identical
 * (to within double rounding) at every TP size. Each rank's partial sums are kept in
 * double (matmul_f64) and added in rank order, p = 0, 1, ..., tp - 1, in one of two ways
 * that give the same bits:
 *   all-gather: every rank receives every partial ((tp - 1) n doubles) and sums all n;
 *   reduce-scatter + all-gather: the n values are cut into tp equal slices; an all-to-all
 *     gives rank r slice r of every partial ((tp - 1) n / tp doubles), it sums that slice
 *     in rank order into floats, and an all-gather of the float slices ((tp - 1) n / tp
 *     floats) gives everyone the whole: 12 (tp - 1) / tp instead of 8 (tp - 1) bytes per
 *     value, and 1 / tp of the summing, for a second collective's latency.
 * Without an all-to-all (device transports) it is always the all-gather. */
static int project_reduce(struct model *m, struct run_state *rs, struct comm *comm, float *out, const struct kmat *w,
                          const float *x, int64_t T, int64_t granule, tp_err *e) {
    const struct kops *K = m->be->ops;
    int64_t n = T * m->cfg.n_embd;
    K->matmul_f64(m->be, rs->o64, w, x, T, granule);
    if (!comm || comm_size(comm) == 1) {
        K->reduce_f64(m->be, out, rs->o64, 1, n);
        return 0;
    }
    const int tp = comm_size(comm), me = comm_rank(comm), mode = reduce_mode();
    const bool scatter = comm_has_all_to_all(comm) &&
                         (mode == 2 || (mode == 0 && (size_t)n * sizeof(double) >= RS_MIN_BYTES));
    int rc;
    if (!scatter) {
        if ((rc = comm_all_gather(comm, rs->o64, rs->o64_all, (size_t)n * sizeof(double), e))) return rc;
        K->reduce_f64(m->be, out, rs->o64_all, tp, n);
        return 0;
    }
    /* slice r = values [r * s, (r + 1) * s); the last may run past n into the padding
     * rs_layout leaves, whose sums are never read */
    const int64_t s = TP_ALIGN_UP((n + tp - 1) / tp, RS_ALIGN);
    /* (host memory: the all-to-all exists only on the MPI transport of CPU ranks) */
    memset(rs->o64 + n, 0, (size_t)(tp * s - n) * sizeof(double));
    if ((rc = comm_all_to_all(comm, rs->o64, rs->o64_all, (size_t)s * sizeof(double), e))) return rc;
    K->reduce_f64(m->be, out + (int64_t)me * s, rs->o64_all, tp, s);
    return comm_all_gather(comm, out + (int64_t)me * s, out, (size_t)s * sizeof(float), e);
}

/* Two or three projections of the same input (Q, K, V; gate, up): one matmul_n pass where
 * the backend has it (the same bits as separate matmuls), else one matmul each. */
static void matmul3(struct kbackend *be, float *y0, const struct kmat *w0, float *y1, const struct kmat *w1, float *y2,
                    const struct kmat *w2, const float *x, int64_t T) {
    const struct kops *K = be->ops;
    const int n = w2 ? 3 : 2;
    if (K->matmul_n) {
        float *const ys[3] = {y0, y1, y2};
        const struct kmat *const ws[3] = {w0, w1, w2};
        K->matmul_n(be, n, ys, ws, x, T);
        return;
    }
    K->matmul(be, y0, w0, x, T);
    K->matmul(be, y1, w1, x, T);
    if (w2) K->matmul(be, y2, w2, x, T);
}

/* Embedding rows: dequantized on the host straight from the mapped file, then uploaded. */
static int embed(struct model *m, struct run_state *rs, const struct fwd_batch *b, tp_err *e) {
    const struct kmat *t = &m->tok_embd;
    int64_t d = m->cfg.n_embd;
    for (int64_t i = 0; i < b->n_tok; i++) {
        int32_t id = b->tokens[i];
        if (id < 0 || id >= t->n_out)
            return tp_errf(e, TP_EINVAL, "token id %d at batch row %lld is outside the vocabulary [0, %lld)", id,
                           (long long)i, (long long)t->n_out);
        quant_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)id * t->row_stride, rs->host_x + i * d, d);
    }
    m->be->ops->upload(m->be, rs->x, rs->host_x, (size_t)(b->n_tok * d) * sizeof(float));
    if (m->cfg.embd_scale != 1.0f) m->be->ops->scale(m->be, rs->x, m->cfg.embd_scale, b->n_tok * d);
    return 0;
}

int forward(struct model *m, struct run_state *rs, struct kv_cache *kv, struct comm *comm, const struct fwd_batch *b,
            tp_err *e) {
    const struct model_config *c = &m->cfg;
    const struct kops *K = m->be->ops;
    struct kbackend *be = m->be;
    int64_t T = b->n_tok, d = c->n_embd, hd = c->head_dim;
    int64_t nh = m->sh.n_head_l, nkv = m->sh.n_kv_l, ff = m->sh.n_ff_l;
    if (T < 1 || T > rs->max_tok || b->n_logits > rs->max_logits || b->n_seq > rs->max_seq ||
        b->max_blocks > rs->max_blocks || b->n_logits < 0)
        return tp_errf(e, TP_EINVAL, "step of %lld tokens / %lld logit rows / %lld sequences exceeds the run state "
                       "(%lld / %lld / %lld); raise --max-batch-tokens",
                       (long long)T, (long long)b->n_logits, (long long)b->n_seq, (long long)rs->max_tok,
                       (long long)rs->max_logits, (long long)rs->max_seq);
    int rc = embed(m, rs, b, e);
    if (rc) return rc;

    K->upload(be, rs->d_pos, b->pos, (size_t)T * sizeof(int32_t));
    K->upload(be, rs->d_seq, b->seq, (size_t)T * sizeof(int32_t));
    K->upload(be, rs->d_tables, b->block_tables, (size_t)(b->n_seq * b->max_blocks) * sizeof(int32_t));
    K->upload(be, rs->d_slots, b->slots, (size_t)T * sizeof(int64_t));
    struct attn_batch ab = {.n_tok = T, .pos = rs->d_pos, .seq = rs->d_seq, .block_tables = rs->d_tables,
                            .max_blocks = b->max_blocks, .slots = rs->d_slots};

    for (int64_t il = 0; il < c->n_layer; il++) {
        const struct layer_weights *L = &m->layers[il];
        struct rope_params rp = layer_rope(m, il);
        int64_t window = model_config_layer_is_swa(c, il) ? c->sliding_window : 0;

        /* attention block */
        K->rmsnorm(be, rs->xn, rs->x, L->attn_norm, c->norm_offset, T, d, c->norm_eps);
        matmul3(be, rs->q, &L->wq, rs->k, &L->wk, rs->v, &L->wv, rs->xn, T);
        if (L->bq) {
            K->add_bias(be, rs->q, L->bq, T, nh * hd);
            K->add_bias(be, rs->k, L->bk, T, nkv * hd);
            K->add_bias(be, rs->v, L->bv, T, nkv * hd);
        }
        if (L->q_norm) {
            K->rmsnorm(be, rs->q, rs->q, L->q_norm, c->norm_offset, T * nh, hd, c->norm_eps);
            K->rmsnorm(be, rs->k, rs->k, L->k_norm, c->norm_offset, T * nkv, hd, c->norm_eps);
        }
        K->rope(be, rs->q, rs->d_pos, T, nh, hd, &rp);
        K->rope(be, rs->k, rs->d_pos, T, nkv, hd, &rp);
        K->kv_store(be, &kv->layers[il], rs->k, rs->v, &ab);
        /* Gemma scales q itself before attention (as its reference and llama.cpp do); the
         * others scale the scores. Not the same under f16 rounding of q (small values of
         * q * scale are f16 subnormals), so follow each model's own order. */
        float att_scale = c->attn_scale;
        if (c->arch == ARCH_GEMMA3) {
            K->scale(be, rs->q, c->attn_scale, T * nh * hd);
            att_scale = 1.0f;
        }
        K->attention(be, rs->att, rs->q, &kv->layers[il], &ab, nh, att_scale, window);
        if ((rc = project_reduce(m, rs, comm, rs->o, &L->wo, rs->att, T, m->sh.o_granule, e)))
            return tp_err_wrap(e, "layer %lld attention", (long long)il);
        if (L->post_attn_norm) K->rmsnorm(be, rs->o, rs->o, L->post_attn_norm, c->norm_offset, T, d, c->norm_eps);
        K->add(be, rs->x, rs->x, rs->o, T * d);

        /* feed-forward block */
        K->rmsnorm(be, rs->xn, rs->x, L->ffn_norm, c->norm_offset, T, d, c->norm_eps);
        matmul3(be, rs->gate, &L->w_gate, rs->up, &L->w_up, NULL, NULL, rs->xn, T);
        K->gated_act(be, rs->gate, rs->gate, rs->up, T * ff, (enum act_kind)c->act);
        if ((rc = project_reduce(m, rs, comm, rs->o, &L->w_down, rs->gate, T, m->sh.ff_granule, e)))
            return tp_err_wrap(e, "layer %lld feed-forward", (long long)il);
        if (L->post_ffn_norm) K->rmsnorm(be, rs->o, rs->o, L->post_ffn_norm, c->norm_offset, T, d, c->norm_eps);
        K->add(be, rs->x, rs->x, rs->o, T * d);
    }

    /* final norm and LM head, for runs of consecutive requested rows */
    int64_t nv = m->sh.n_vocab_l;
    for (int64_t j = 0; j < b->n_logits;) {
        int64_t row = b->logit_rows[j], run = 1;
        if (row < 0 || row >= T) return tp_errf(e, TP_EINVAL, "logit row %lld outside the batch of %lld", (long long)row, (long long)T);
        while (j + run < b->n_logits && b->logit_rows[j + run] == row + run) run++;
        K->rmsnorm(be, rs->xn + row * d, rs->x + row * d, m->output_norm, c->norm_offset, run, d, c->norm_eps);
        K->matmul(be, rs->logits + j * nv, &m->output, rs->xn + row * d, run);
        j += run;
    }
    return 0;
}
