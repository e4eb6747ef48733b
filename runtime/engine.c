/* engine.c - the step loop shared by every rank: step descriptors broadcast from rank 0,
 * the forward pass on each shard, and distributed sampling over vocabulary slices. */
#include "engine.h"

#include "../kernels/memtrack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum step_cmd { CMD_STEP = 1, CMD_SCORE = 2, CMD_LOGITS = 3, CMD_SHUTDOWN = 4, CMD_PING = 5 };

/* Fixed-size header broadcast first; the payload (sizes from the header) follows. */
struct step_hdr {
    int32_t cmd;
    int32_t n_tok, n_seq, max_blocks, n_rows, n_hist;
    int32_t n_delta; /* block-table changes since the last step; -1: the whole tables follow */
};

/* One change of a block table: sequence slot seq's logical block idx is now blk (-1: none). */
struct tbl_delta {
    int32_t seq, idx, blk;
};

/* Per-row penalty request inside the payload. */
struct row_pen {
    float repeat, presence, frequency;
    int32_t repeat_last_n;
    int32_t hist_off, hist_len;
};

/* A candidate as exchanged between ranks. */
struct cand {
    int32_t id;
    float val;
};

struct engine {
    struct model *m;
    struct comm *comm;
    int rank, tp;
    struct engine_opts o;
    struct run_state rs;
    struct kv_cache kv;
    int64_t max_blocks_seq;  /* blocks one sequence can need: ceil(ctx / block_size) */
    int64_t nv_max;          /* largest vocabulary slice of any rank */
    int k;                   /* candidates per rank per row */
    /* coordinator: block allocator and per-sequence block tables */
    int32_t *free_blocks;
    int64_t n_free;
    int32_t *tables;         /* [max_seqs][max_blocks_seq], -1 = none (workers: a mirror kept by the deltas) */
    struct tbl_delta *dlog;  /* rank 0: changes of `tables` not yet sent to the workers */
    int64_t n_dlog, dlog_cap;
    bool dlog_full;          /* more changes than dlog holds: the next step sends the whole tables */
    int64_t *seq_blocks;     /* blocks held per sequence */
    bool *seq_used;
    /* step payload (both sides) */
    uint8_t *payload;
    size_t payload_cap;
    /* sampling scratch (host) */
    int32_t *cidx;
    float *cval, *clse, *host_logits;
    struct cand *send, *recv;
    float *full;             /* [tp][n_rows][nv_max] gathered logits (full-vocabulary sampling), grown once */
    size_t full_cap;         /* bytes of full */
    struct cand *m_cand;     /* rank 0's merge buffers: tp * (n_cand + 1) + n_vocab entries, made at the first step */
    int32_t *m_ids;
    float *m_vals;
    size_t host_bytes;       /* host buffers above, as planned (engine_host_bytes) */
};

void engine_opts_default(struct engine_opts *o) {
    *o = (struct engine_opts){.ctx = 2048, .max_batch_tokens = 512, .max_seqs = 8, .block_size = 16, .n_blocks = 0,
                              .kv_type = DTYPE_F16, .n_cand = 64};
}

static int bcast(struct engine *en, void *buf, size_t bytes, tp_err *e) {
    if (en->tp == 1 || bytes == 0) return 0;
    return comm_bcast(en->comm, buf, bytes, 0, e);
}

/* The payload a step broadcasts: per token slot, token, position, sequence; per row
 * index, target and penalties; the penalty histories; the step's sequence slots and the
 * block-table changes (n_delta of them, or the whole tables: n_delta -1). Behind it, not
 * sent, each rank assembles the step's tables from its own copy. */
static size_t payload_sent_bytes(int64_t n_tok, int64_t n_seq, int64_t n_rows, int64_t n_hist, int64_t n_delta,
                                 int64_t all_tables) {
    return (size_t)n_tok * (3 * sizeof(int32_t) + sizeof(int64_t)) +
           (size_t)n_rows * (2 * sizeof(int32_t) + sizeof(struct row_pen)) + (size_t)n_hist * sizeof(int32_t) +
           (size_t)n_seq * sizeof(int32_t) +
           (n_delta >= 0 ? (size_t)n_delta * sizeof(struct tbl_delta) : (size_t)all_tables * sizeof(int32_t)) + 64;
}

static size_t payload_bytes(int64_t n_tok, int64_t n_seq, int64_t max_blocks, int64_t n_rows, int64_t n_hist) {
    /* room for the larger of the two table encodings, and the step's own tables */
    const int64_t all = n_seq * max_blocks;
    return payload_sent_bytes(n_tok, n_seq, n_rows, n_hist, 0, 0) +
           TP_MAX((size_t)all * sizeof(int32_t), (size_t)all * sizeof(struct tbl_delta)) +
           (size_t)all * sizeof(int32_t) + 64;
}

size_t engine_host_bytes(const struct engine_opts *o, int64_t n_vocab_l, int tp) {
    int64_t max_logits = engine_opts_max_logits(o);
    int64_t max_blocks_seq = (o->ctx + o->block_size - 1) / o->block_size;
    int64_t n_blocks = o->n_blocks > 0 ? o->n_blocks : max_blocks_seq * o->max_seqs;
    size_t kmax = (size_t)TP_MAX(o->n_cand, 1);
    size_t b = payload_bytes(o->max_batch_tokens, o->max_seqs, max_blocks_seq, max_logits, o->max_seqs * o->ctx);
    b += (size_t)max_logits * kmax * (sizeof(int32_t) + sizeof(float)) + (size_t)max_logits * sizeof(float);
    b += (size_t)n_vocab_l * sizeof(float);
    b += (size_t)max_logits * (kmax + 1) * sizeof(struct cand) * (size_t)(tp + 1);
    b += (size_t)n_blocks * sizeof(int32_t) + (size_t)(o->max_seqs * max_blocks_seq) * sizeof(int32_t) +
         (size_t)o->max_seqs * (sizeof(int64_t) + sizeof(bool));
    /* full-vocabulary sampling: the gathered logits of every row, and rank 0's merge
     * buffers (counted on every rank, so that every rank plans the same) */
    b += (size_t)max_logits * (size_t)n_vocab_l * (size_t)(tp + 1) * sizeof(float) + 1;
    b += ((size_t)tp * (kmax + 1) + (size_t)n_vocab_l * (size_t)tp) * (sizeof(struct cand) + sizeof(int32_t) + sizeof(float));
    return b;
}

int engine_create(struct engine **out, struct model *m, struct comm *comm, const struct engine_opts *o, tp_err *e) {
    *out = NULL;
    struct engine *en = calloc(1, sizeof *en);
    if (!en) return tp_errf(e, TP_ENOMEM, "out of host memory");
    en->m = m;
    en->comm = comm;
    en->rank = comm ? comm_rank(comm) : 0;
    en->tp = comm ? comm_size(comm) : 1;
    en->o = *o;
    int rc;
    if (o->ctx < 1 || o->block_size < 1 || o->max_batch_tokens < 1 || o->max_seqs < 1) {
        rc = tp_errf(e, TP_EINVAL, "engine: --ctx, --max-batch-tokens and the sequence count must be positive");
        goto error;
    }
    if (o->n_cand < 1 || o->n_cand > ENGINE_MAX_CAND) {
        rc = tp_errf(e, TP_EINVAL, "engine: %d sampling candidates per rank; give 1..%d (at least the largest top-k "
                     "a request uses)", o->n_cand, ENGINE_MAX_CAND);
        goto error;
    }
    en->max_blocks_seq = (o->ctx + o->block_size - 1) / o->block_size;
    if (en->o.n_blocks <= 0) en->o.n_blocks = en->max_blocks_seq * o->max_seqs;
    en->nv_max = (m->cfg.n_vocab + en->tp - 1) / en->tp;
    en->k = (int)TP_MIN((int64_t)TP_MAX(o->n_cand, 1), m->sh.n_vocab_l);
    if (en->k < 1) en->k = 1;
    int64_t max_logits = engine_opts_max_logits(o);
    rc = run_state_create(&en->rs, m, o->max_batch_tokens, max_logits, o->max_seqs, en->max_blocks_seq, e);
    if (rc) goto error;
    rc = kv_cache_create(&en->kv, m->be, &m->cfg, m->sh.n_kv_l, en->o.n_blocks, o->block_size, o->kv_type, e);
    if (rc) goto error;
    en->payload_cap = payload_bytes(o->max_batch_tokens, o->max_seqs, en->max_blocks_seq, max_logits,
                                    o->max_seqs * o->ctx);
    en->payload = malloc(en->payload_cap);
    int kmax = TP_MAX(o->n_cand, 1);
    en->cidx = malloc((size_t)max_logits * (size_t)kmax * sizeof(int32_t));
    en->cval = malloc((size_t)max_logits * (size_t)kmax * sizeof(float));
    en->clse = malloc((size_t)max_logits * sizeof(float));
    en->host_logits = malloc((size_t)m->sh.n_vocab_l * sizeof(float));
    en->send = malloc((size_t)max_logits * (size_t)(kmax + 1) * sizeof(struct cand));
    en->recv = malloc((size_t)en->tp * (size_t)max_logits * (size_t)(kmax + 1) * sizeof(struct cand));
    if (!en->payload || !en->cidx || !en->cval || !en->clse || !en->host_logits || !en->send || !en->recv) {
        rc = tp_errf(e, TP_ENOMEM, "out of host memory for the engine's buffers");
        goto error;
    }
    en->host_bytes = engine_host_bytes(&en->o, m->sh.n_vocab_l, en->tp);
    memtrack_note(m->be->track, MEM_COMM, en->host_bytes);
    {
        /* block tables live on every rank so that every rank plans the same memory */
        en->dlog_cap = o->max_seqs * en->max_blocks_seq;
        en->dlog = malloc((size_t)en->dlog_cap * sizeof *en->dlog);
        en->free_blocks = malloc((size_t)en->o.n_blocks * sizeof(int32_t));
        en->tables = malloc((size_t)(o->max_seqs * en->max_blocks_seq) * sizeof(int32_t));
        en->seq_blocks = calloc((size_t)o->max_seqs, sizeof(int64_t));
        en->seq_used = calloc((size_t)o->max_seqs, sizeof(bool));
        if (!en->free_blocks || !en->tables || !en->seq_blocks || !en->seq_used || !en->dlog) {
            rc = tp_errf(e, TP_ENOMEM, "out of host memory for the block tables");
            goto error;
        }
        /* hand out low block ids first: free list is a stack with block 0 on top */
        for (int64_t i = 0; i < en->o.n_blocks; i++) en->free_blocks[i] = (int32_t)(en->o.n_blocks - 1 - i);
        en->n_free = en->o.n_blocks;
        for (int64_t i = 0; i < o->max_seqs * en->max_blocks_seq; i++) en->tables[i] = -1;
    }
    *out = en;
    return 0;
error:
    engine_free(en);
    return rc;
}

void engine_free(struct engine *en) {
    if (!en) return;
    memtrack_unnote(en->m->be->track, MEM_COMM, en->host_bytes);
    run_state_free(&en->rs, en->m->be);
    kv_cache_free(&en->kv, en->m->be);
    free(en->payload);
    free(en->cidx);
    free(en->cval);
    free(en->clse);
    free(en->host_logits);
    free(en->send);
    free(en->recv);
    free(en->full);
    free(en->m_cand);
    free(en->m_ids);
    free(en->m_vals);
    free(en->free_blocks);
    free(en->tables);
    free(en->dlog);
    free(en->seq_blocks);
    free(en->seq_used);
    free(en);
}

int64_t engine_n_blocks(const struct engine *en) { return en->o.n_blocks; }
int64_t engine_block_size(const struct engine *en) { return en->o.block_size; }
int64_t engine_free_blocks(const struct engine *en) { return en->n_free; }
int64_t engine_ctx(const struct engine *en) { return en->o.ctx; }
int64_t engine_max_batch(const struct engine *en) { return en->o.max_batch_tokens; }
int64_t engine_max_seqs(const struct engine *en) { return en->o.max_seqs; }
int engine_n_cand(const struct engine *en) { return en->o.n_cand; }
int engine_rank(const struct engine *en) { return en->rank; }

/* Rank 0: remember a table change for the workers (sent with the next step). */
static void dlog_add(struct engine *en, int seq, int64_t idx, int32_t blk) {
    if (en->tp == 1) return;
    if (en->n_dlog == en->dlog_cap || tp_fault("table_full_sync", 0)) {
        en->dlog_full = true; /* the next step carries the whole tables instead */
        return;
    }
    en->dlog[en->n_dlog++] = (struct tbl_delta){seq, (int32_t)idx, blk};
}

int engine_seq_reserve(struct engine *en, int seq, int64_t n_tokens, tp_err *e) {
    if (seq < 0 || seq >= en->o.max_seqs || !en->seq_used[seq])
        return tp_errf(e, TP_EINVAL, "sequence %d is not open (slots 0..%lld); open it with engine_seq_open", seq,
                       (long long)en->o.max_seqs - 1);
    if (n_tokens < 0) return tp_errf(e, TP_EINVAL, "sequence %d: cannot reserve %lld tokens", seq, (long long)n_tokens);
    if (n_tokens > en->o.ctx)
        return tp_errf(e, TP_EINVAL, "sequence of %lld tokens exceeds the context of %lld; raise --ctx or shorten the prompt",
                       (long long)n_tokens, (long long)en->o.ctx);
    int64_t need = (n_tokens + en->o.block_size - 1) / en->o.block_size;
    int64_t have = en->seq_blocks[seq];
    if (need - have > en->n_free)
        return tp_errf(e, TP_ENOMEM, "no free KV blocks: need %lld more, %lld free", (long long)(need - have),
                       (long long)en->n_free);
    int32_t *t = en->tables + (int64_t)seq * en->max_blocks_seq;
    for (int64_t b = have; b < need; b++) {
        t[b] = en->free_blocks[--en->n_free];
        dlog_add(en, seq, b, t[b]);
    }
    if (need > have) en->seq_blocks[seq] = need;
    return 0;
}

int engine_seq_open(struct engine *en, int64_t n_tokens, tp_err *e) {
    for (int s = 0; s < en->o.max_seqs; s++) {
        if (en->seq_used[s]) continue;
        en->seq_used[s] = true;
        int rc = engine_seq_reserve(en, s, n_tokens, e);
        if (rc) {
            engine_seq_close(en, s);
            return rc;
        }
        return s;
    }
    return tp_errf(e, TP_ENOMEM, "all %lld sequence slots are busy", (long long)en->o.max_seqs);
}

void engine_seq_close(struct engine *en, int seq) {
    if (seq < 0 || seq >= en->o.max_seqs || !en->seq_used[seq]) return;
    int32_t *t = en->tables + (int64_t)seq * en->max_blocks_seq;
    for (int64_t b = en->seq_blocks[seq] - 1; b >= 0; b--) {
        en->free_blocks[en->n_free++] = t[b];
        t[b] = -1;
        dlog_add(en, seq, b, -1);
    }
    en->seq_blocks[seq] = 0;
    en->seq_used[seq] = false;
}

/* Views of the payload's arrays, laid out in this order. */
struct step_view {
    int32_t *tokens, *pos, *seq, *tables, *rows, *targets, *history, *seq_ids;
    uint8_t *deltas;
    int64_t *slots;
    struct row_pen *pen;
};

static void view_of(struct engine *en, const struct step_hdr *h, struct step_view *v) {
    uint8_t *p = en->payload;
    v->slots = (int64_t *)p;
    p += (size_t)h->n_tok * sizeof(int64_t);
    v->pen = (struct row_pen *)p;
    p += (size_t)h->n_rows * sizeof(struct row_pen);
    v->tokens = (int32_t *)p;
    p += (size_t)h->n_tok * sizeof(int32_t);
    v->pos = (int32_t *)p;
    p += (size_t)h->n_tok * sizeof(int32_t);
    v->seq = (int32_t *)p;
    p += (size_t)h->n_tok * sizeof(int32_t);
    v->rows = (int32_t *)p;
    p += (size_t)h->n_rows * sizeof(int32_t);
    v->targets = (int32_t *)p;
    p += (size_t)h->n_rows * sizeof(int32_t);
    v->history = (int32_t *)p;
    p += (size_t)h->n_hist * sizeof(int32_t);
    v->seq_ids = (int32_t *)p;
    p += (size_t)h->n_seq * sizeof(int32_t);
    v->deltas = p; /* tbl_delta[n_delta], or int32 tables[max_seqs][max_blocks] when n_delta < 0 */
    /* not sent: the step's tables, after the largest table encoding */
    const int64_t all = en->o.max_seqs * en->max_blocks_seq;
    p += TP_MAX((size_t)all * sizeof(int32_t), (size_t)all * sizeof(struct tbl_delta));
    v->tables = (int32_t *)p;
}

/* Bytes of the payload buffer a step with header h uses (what view_of lays out). */
static size_t payload_need(const struct engine *en, const struct step_hdr *h) {
    const int64_t all = en->o.max_seqs * en->max_blocks_seq;
    return payload_sent_bytes(h->n_tok, h->n_seq, h->n_rows, h->n_hist, 0, 0) +
           TP_MAX((size_t)all * sizeof(int32_t), (size_t)all * sizeof(struct tbl_delta)) +
           (size_t)h->n_seq * (size_t)en->max_blocks_seq * sizeof(int32_t);
}

/* Bytes of h's payload that are broadcast. */
static size_t sent_bytes(const struct engine *en, const struct step_hdr *h) {
    return payload_sent_bytes(h->n_tok, h->n_seq, h->n_rows, h->n_hist, h->n_delta, en->o.max_seqs * en->max_blocks_seq);
}

/* Workers: apply the step's table changes to this rank's copy, then assemble the step's
 * tables (rank 0 assembles them from its own). */
static int tables_for_step(struct engine *en, const struct step_hdr *h, const struct step_view *v, tp_err *e) {
    const int64_t mb = en->max_blocks_seq, all = en->o.max_seqs * mb;
    if (en->rank != 0) {
        if (h->n_delta < 0) {
            memcpy(en->tables, v->deltas, (size_t)all * sizeof(int32_t));
        } else {
            for (int32_t i = 0; i < h->n_delta; i++) {
                struct tbl_delta d;
                memcpy(&d, v->deltas + (size_t)i * sizeof d, sizeof d);
                if (d.seq < 0 || d.seq >= en->o.max_seqs || d.idx < 0 || d.idx >= mb || d.blk < -1 ||
                    d.blk >= en->o.n_blocks)
                    return tp_errf(e, TP_ECOMM, "rank %d received an invalid block-table change", en->rank);
                en->tables[(int64_t)d.seq * mb + d.idx] = d.blk;
            }
        }
    }
    for (int32_t k = 0; k < h->n_seq; k++) {
        const int32_t s = v->seq_ids[k];
        if (s < 0 || s >= en->o.max_seqs) return tp_errf(e, TP_ECOMM, "rank %d received an invalid sequence slot", en->rank);
        memcpy(v->tables + (int64_t)k * mb, en->tables + (int64_t)s * mb, (size_t)mb * sizeof(int32_t));
    }
    return 0;
}

/* Rank 0: fill the header and payload for a step; sequences are renumbered 0..n_seq-1
 * in the order they appear, with their block tables. */
static int build_step(struct engine *en, struct step_hdr *h, struct step_view *v, int cmd, int64_t n_tok,
                      const int32_t *tokens, const int32_t *pos, const int32_t *seq, int64_t n_rows,
                      const int32_t *row_idx, const struct engine_row *rows, const int32_t *targets, tp_err *e) {
    if (n_tok < 1 || n_tok > en->o.max_batch_tokens)
        return tp_errf(e, TP_EINVAL, "step of %lld tokens: must be 1..%lld (--max-batch-tokens)", (long long)n_tok,
                       (long long)en->o.max_batch_tokens);
    if (n_rows < 0 || n_rows > en->rs.max_logits)
        return tp_errf(e, TP_EINVAL, "step asks for %lld logit rows, at most %lld", (long long)n_rows, (long long)en->rs.max_logits);
    int32_t map[512];
    int64_t n_seq = 0;
    int64_t n_hist = 0;
    for (int64_t j = 0; j < n_rows; j++)
        if (rows && rows[j].params) n_hist += TP_MIN(rows[j].n_history, (int64_t)(rows[j].params->repeat_last_n < 0 ? rows[j].n_history : rows[j].params->repeat_last_n));
    *h = (struct step_hdr){.cmd = cmd, .n_tok = (int32_t)n_tok, .n_rows = (int32_t)n_rows,
                           .max_blocks = (int32_t)en->max_blocks_seq, .n_hist = (int32_t)n_hist};
    h->n_seq = 0;
    /* count distinct sequences first (bounded by max_seqs) */
    for (int64_t i = 0; i < n_tok; i++) {
        int32_t s = seq[i];
        if (s < 0 || s >= en->o.max_seqs || !en->seq_used[s])
            return tp_errf(e, TP_EINVAL, "batch row %lld names sequence %d, which is not open", (long long)i, s);
        int64_t k;
        for (k = 0; k < n_seq; k++)
            if (map[k] == s) break;
        if (k == n_seq) {
            if (n_seq == (int64_t)TP_ARRAY_LEN(map)) return tp_errf(e, TP_EINVAL, "too many sequences in one step");
            map[n_seq++] = s;
        }
    }
    h->n_seq = (int32_t)n_seq;
    h->n_delta = en->dlog_full ? -1 : (int32_t)en->n_dlog;
    if (payload_need(en, h) > en->payload_cap)
        return tp_errf(e, TP_EINVAL, "step descriptor too large");
    view_of(en, h, v);
    for (int64_t k = 0; k < n_seq; k++) v->seq_ids[k] = map[k];
    if (h->n_delta < 0) memcpy(v->deltas, en->tables, (size_t)(en->o.max_seqs * en->max_blocks_seq) * sizeof(int32_t));
    else memcpy(v->deltas, en->dlog, (size_t)en->n_dlog * sizeof *en->dlog);
    int rct = tables_for_step(en, h, v, e);
    if (rct) return rct;
    for (int64_t i = 0; i < n_tok; i++) {
        int64_t k;
        for (k = 0; k < n_seq; k++)
            if (map[k] == seq[i]) break;
        int32_t p = pos[i];
        if (p < 0 || p >= en->o.ctx) return tp_errf(e, TP_EINVAL, "position %d outside the context of %lld", p, (long long)en->o.ctx);
        int32_t blk = v->tables[k * h->max_blocks + p / en->o.block_size];
        if (blk < 0)
            return tp_errf(e, TP_EINVAL, "position %d of sequence %d has no KV block reserved (engine_seq_reserve)", p, seq[i]);
        v->tokens[i] = tokens[i];
        v->pos[i] = p;
        v->seq[i] = (int32_t)k;
        v->slots[i] = (int64_t)blk * en->o.block_size + p % en->o.block_size;
    }
    int64_t off = 0;
    for (int64_t j = 0; j < n_rows; j++) {
        v->rows[j] = row_idx[j];
        if (row_idx[j] < 0 || row_idx[j] >= n_tok || (j > 0 && row_idx[j] <= row_idx[j - 1]))
            return tp_errf(e, TP_EINVAL, "logit rows must be ascending batch rows");
        v->targets[j] = targets ? targets[j] : -1;
        struct row_pen rp = {.repeat = 1.0f, .presence = 0.0f, .frequency = 0.0f, .repeat_last_n = 0};
        if (rows && rows[j].params) {
            const struct sampler_params *sp = rows[j].params;
            int64_t take = sp->repeat_last_n < 0 ? rows[j].n_history : TP_MIN(rows[j].n_history, (int64_t)sp->repeat_last_n);
            rp = (struct row_pen){.repeat = sp->repeat_penalty, .presence = sp->presence_penalty,
                                  .frequency = sp->frequency_penalty, .repeat_last_n = (int32_t)take,
                                  .hist_off = (int32_t)off, .hist_len = (int32_t)take};
            memcpy(v->history + off, rows[j].history + rows[j].n_history - take, (size_t)take * sizeof(int32_t));
            off += take;
        }
        v->pen[j] = rp;
    }
    return 0;
}

static int run_forward(struct engine *en, const struct step_hdr *h, const struct step_view *v, tp_err *e) {
    struct fwd_batch b = {.n_tok = h->n_tok, .tokens = v->tokens, .pos = v->pos, .seq = v->seq,
                          .block_tables = v->tables, .n_seq = h->n_seq, .max_blocks = h->max_blocks,
                          .slots = v->slots, .n_logits = h->n_rows, .logit_rows = v->rows};
    int rc = forward(en->m, &en->rs, &en->kv, en->comm, &b, e);
    /* a GPU op that failed recorded its error (ops return void): surface it here */
    if (rc == 0) rc = kbackend_cuda_status(en->m->be, e);
    return rc;
}

/* Apply each row's penalties to this rank's vocabulary slice (in backend memory). */
static void penalize(struct engine *en, const struct step_hdr *h, const struct step_view *v) {
    struct kbackend *be = en->m->be;
    int64_t nv = en->m->sh.n_vocab_l;
    for (int64_t j = 0; j < h->n_rows; j++) {
        const struct row_pen *rp = &v->pen[j];
        if (rp->hist_len == 0 || (rp->repeat == 1.0f && rp->presence == 0.0f && rp->frequency == 0.0f)) continue;
        struct sampler_params sp;
        sampler_params_default(&sp);
        sp.repeat_penalty = rp->repeat;
        sp.presence_penalty = rp->presence;
        sp.frequency_penalty = rp->frequency;
        sp.repeat_last_n = rp->hist_len;
        float *row = en->rs.logits + j * nv;
        be->ops->download(be, en->host_logits, row, (size_t)nv * sizeof(float));
        sampler_penalize(&sp, en->host_logits, en->m->sh.vocab0, nv, v->history + rp->hist_off, rp->hist_len);
        be->ops->upload(be, row, en->host_logits, (size_t)nv * sizeof(float));
    }
}

/* Every rank: gather all ranks' full vocabulary slices of the step's rows into en->full
 * ([tp][n_rows][nv_max], padded with -inf). */
static int gather_full(struct engine *en, int64_t n_rows, tp_err *e) {
    int64_t nv = en->m->sh.n_vocab_l, nvm = en->nv_max;
    size_t per_rank = (size_t)n_rows * (size_t)nvm * sizeof(float);
    const size_t need = per_rank * (size_t)(en->tp + 1) + 1;
    if (need > en->full_cap) {
        /* every rank grows at the same step (same rows, same history), and all learn
         * whether any failed before anyone enters the all-gather */
        float *p = tp_fault("gather_full", en->rank) ? NULL : realloc(en->full, need);
        int rc = p ? 0
                   : tp_errf(e, TP_ENOMEM, "rank %d: out of host memory for %zu bytes gathering the full logits of %lld rows",
                             en->rank, need, (long long)n_rows);
        if (p) en->full = p, en->full_cap = need;
        if (en->tp > 1) {
            int bad = -1;
            rc = comm_any_error(en->comm, rc, &bad, e);
        }
        if (rc) return rc;
    }
    float *mine = en->full + (size_t)en->tp * (size_t)n_rows * (size_t)nvm;
    for (int64_t j = 0; j < n_rows; j++) {
        en->m->be->ops->download(en->m->be, mine + j * nvm, en->rs.logits + j * nv, (size_t)nv * sizeof(float));
        for (int64_t i = nv; i < nvm; i++) mine[j * nvm + i] = -INFINITY;
    }
    if (en->tp == 1) {
        memcpy(en->full, mine, per_rank);
        return 0;
    }
    return comm_all_gather(en->comm, mine, en->full, per_rank, e);
}

/* The global logit of token id of row j from the gathered slices. */
static float full_at(struct engine *en, int64_t n_rows, int64_t j, int32_t id) {
    for (int r = 0; r < en->tp; r++) {
        struct shard_range vr = shard_split(en->m->cfg.n_vocab, en->tp, r);
        if (id >= vr.begin && id < vr.end)
            return en->full[((size_t)r * (size_t)n_rows + (size_t)j) * (size_t)en->nv_max + (size_t)(id - vr.begin)];
    }
    return -INFINITY;
}

static int cmp_cand(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->val != y->val) return x->val > y->val ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

static float logsumexp2(float a, float b) {
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    float m = a > b ? a : b;
    return m + logf(expf(a - m) + expf(b - m));
}

/* Every rank: reduce its slice to k candidates per row, exchange them. After this every
 * rank holds en->recv: [tp][n_rows][k + 1] with the row's lse in the last entry's val. */
static int exchange_candidates(struct engine *en, int64_t n_rows, tp_err *e) {
    struct kbackend *be = en->m->be;
    int k = en->k, stride = en->o.n_cand + 1;
    int64_t nv = en->m->sh.n_vocab_l;
    be->ops->topk(be, en->cidx, en->cval, en->clse, en->rs.logits, n_rows, nv, k);
    for (int64_t j = 0; j < n_rows; j++) {
        struct cand *c = en->send + j * stride;
        for (int i = 0; i < stride - 1; i++) {
            if (i < k) c[i] = (struct cand){en->cidx[j * k + i] + (int32_t)en->m->sh.vocab0, en->cval[j * k + i]};
            else c[i] = (struct cand){-1, -INFINITY};
        }
        c[stride - 1] = (struct cand){-1, en->clse[j]};
    }
    size_t bytes = (size_t)n_rows * (size_t)stride * sizeof(struct cand);
    if (en->tp == 1) {
        memcpy(en->recv, en->send, bytes);
        return 0;
    }
    return comm_all_gather(en->comm, en->send, en->recv, bytes, e);
}

/* Merge row j's candidates of all ranks into out (sorted), return the count and global lse. */
static int64_t merge_row(struct engine *en, int64_t n_rows, int64_t j, struct cand *out, float *lse) {
    int stride = en->o.n_cand + 1;
    int64_t n = 0;
    float l = -INFINITY;
    for (int r = 0; r < en->tp; r++) {
        const struct cand *c = en->recv + ((size_t)r * (size_t)n_rows + (size_t)j) * (size_t)stride;
        for (int i = 0; i < stride - 1; i++)
            if (c[i].id >= 0) out[n++] = c[i];
        l = logsumexp2(l, c[stride - 1].val);
    }
    qsort(out, (size_t)n, sizeof *out, cmp_cand);
    *lse = l;
    return n;
}

/* After the forward pass of a CMD_STEP: penalties, candidates, and (rank 0) the draw. */
static int sample_step(struct engine *en, const struct step_hdr *h, const struct step_view *v,
                       const struct engine_row *rows, int32_t *out, float *logprob, tp_err *e) {
    int64_t n_rows = h->n_rows;
    penalize(en, h, v);
    int rc = exchange_candidates(en, n_rows, e);
    if (rc) return rc;
    int32_t need_full = 0;
    struct cand *merged = NULL;
    int32_t *ids = NULL;
    float *vals = NULL;
    if (en->rank == 0) {
        size_t cap = (size_t)en->tp * (size_t)(en->o.n_cand + 1) + (size_t)en->m->cfg.n_vocab;
        if (!en->m_cand && !tp_fault("sample_alloc", 0)) { /* once: nothing per step in proportion to the vocabulary */
            en->m_cand = malloc(cap * sizeof *en->m_cand);
            en->m_ids = malloc(cap * sizeof *en->m_ids);
            en->m_vals = malloc(cap * sizeof *en->m_vals);
            if (!en->m_cand || !en->m_ids || !en->m_vals) {
                free(en->m_cand), free(en->m_ids), free(en->m_vals);
                en->m_cand = NULL, en->m_ids = NULL, en->m_vals = NULL;
            }
        }
        merged = en->m_cand, ids = en->m_ids, vals = en->m_vals;
        if (!merged) {
            /* not `goto done`: the workers wait in the broadcast below */
            rc = tp_errf(e, TP_ENOMEM, "rank 0: out of host memory for %zu sampling candidates", cap);
            need_full = -1;
        }
        for (int64_t j = 0; !rc && j < n_rows; j++) {
            float lse;
            int64_t n = merge_row(en, n_rows, j, merged, &lse);
            for (int64_t i = 0; i < n; i++) {
                ids[i] = merged[i].id;
                vals[i] = merged[i].val;
            }
            bool complete = n >= en->m->cfg.n_vocab;
            int r = sampler_sample(rows[j].smp, ids, vals, n, lse, complete, &out[j], e);
            if (r < 0) {
                rc = r;
                need_full = -1; /* tell the workers: the step ends here, no gather follows */
                break;
            }
            if (r > 0) {
                out[j] = -1; /* resolved below with the full vocabulary */
                need_full = 1;
            } else if (logprob) {
                sampler_logprobs(ids, vals, n, lse, out[j], TP_MIN((int64_t)rows[j].n_top, n), rows[j].top, &logprob[j],
                                 NULL);
            }
        }
    }
    /* every rank takes part in this broadcast, also after a sampling error on rank 0,
     * so that the ranks stay in step for the next command */
    {
        tp_err ce = {0};
        int brc = bcast(en, &need_full, sizeof need_full, rc ? &ce : e);
        if (brc) {
            if (rc) tp_errf(e, brc, "%s", ce.msg);
            rc = brc;
            goto done;
        }
    }
    if (rc || need_full < 0) goto done;
    if (need_full) {
        if ((rc = gather_full(en, n_rows, e))) goto done;
        if (en->rank == 0) {
            int64_t V = en->m->cfg.n_vocab;
            for (int64_t j = 0; j < n_rows; j++) {
                if (out[j] >= 0) continue;
                for (int32_t id = 0; id < V; id++) merged[id] = (struct cand){id, full_at(en, n_rows, j, id)};
                qsort(merged, (size_t)V, sizeof *merged, cmp_cand);
                float lse = -INFINITY;
                for (int64_t i = 0; i < V; i++) {
                    ids[i] = merged[i].id;
                    vals[i] = merged[i].val;
                    lse = logsumexp2(lse, vals[i]);
                }
                int r = sampler_sample(rows[j].smp, ids, vals, V, lse, true, &out[j], e);
                if (r != 0) {
                    rc = r < 0 ? r : tp_errf(e, TP_EINVAL, "sampler asked for more candidates than the vocabulary");
                    goto done;
                }
                if (logprob)
                    sampler_logprobs(ids, vals, V, lse, out[j], TP_MIN((int64_t)rows[j].n_top, V), rows[j].top,
                                     &logprob[j], NULL);
            }
        }
    }
done:
    return rc;
}

/* After the forward pass of a CMD_SCORE: -log p(target) per row, on rank 0. */
static int score_step(struct engine *en, const struct step_hdr *h, const struct step_view *v, double *nll, tp_err *e) {
    struct kbackend *be = en->m->be;
    int64_t n_rows = h->n_rows, nv = en->m->sh.n_vocab_l, v0 = en->m->sh.vocab0;
    /* per row: this rank's lse and the target's logit (or -inf when outside the slice) */
    be->ops->topk(be, en->cidx, en->cval, en->clse, en->rs.logits, n_rows, nv, 1);
    for (int64_t j = 0; j < n_rows; j++) {
        float tgt = -INFINITY;
        int32_t t = v->targets[j];
        if (t >= v0 && t < v0 + nv) be->ops->download(be, &tgt, en->rs.logits + j * nv + (t - v0), sizeof(float));
        en->send[2 * j] = (struct cand){t, en->clse[j]};
        en->send[2 * j + 1] = (struct cand){t, tgt};
    }
    size_t bytes = (size_t)n_rows * 2 * sizeof(struct cand);
    int rc = en->tp == 1 ? (memcpy(en->recv, en->send, bytes), 0) : comm_all_gather(en->comm, en->send, en->recv, bytes, e);
    if (rc || en->rank != 0) return rc;
    for (int64_t j = 0; j < n_rows; j++) {
        float lse = -INFINITY, tgt = -INFINITY;
        for (int r = 0; r < en->tp; r++) {
            const struct cand *c = en->recv + ((size_t)r * (size_t)n_rows + (size_t)j) * 2;
            lse = logsumexp2(lse, c[0].val);
            if (c[1].val > tgt) tgt = c[1].val;
        }
        nll[j] = (double)lse - (double)tgt;
    }
    return 0;
}

/* Worker and coordinator both: the part of a command after its header and payload arrived. */
static int execute(struct engine *en, const struct step_hdr *h, const struct engine_row *rows, int32_t *out,
                   float *logprob, double *nll, float *logits_out, tp_err *e) {
    struct step_view v;
    view_of(en, h, &v);
    int rc = run_forward(en, h, &v, e);
    if (rc) return rc;
    switch (h->cmd) {
    case CMD_STEP: return sample_step(en, h, &v, rows, out, logprob, e);
    case CMD_SCORE: return score_step(en, h, &v, nll, e);
    case CMD_LOGITS:
        rc = gather_full(en, h->n_rows, e);
        if (rc || en->rank != 0) return rc;
        for (int64_t j = 0; j < h->n_rows; j++)
            for (int32_t id = 0; id < en->m->cfg.n_vocab; id++)
                logits_out[j * en->m->cfg.n_vocab + id] = full_at(en, h->n_rows, j, id);
        return 0;
    default: return tp_errf(e, TP_EINVAL, "unknown step command %d", h->cmd);
    }
}

static int coordinate(struct engine *en, int cmd, int64_t n_tok, const int32_t *tokens, const int32_t *pos,
                      const int32_t *seq, int64_t n_rows, const int32_t *row_idx, const struct engine_row *rows,
                      const int32_t *targets, int32_t *out, float *logprob, double *nll, float *logits_out, tp_err *e) {
    struct step_hdr h;
    struct step_view v;
    int rc = build_step(en, &h, &v, cmd, n_tok, tokens, pos, seq, n_rows, row_idx, rows, targets, e);
    if (rc) return rc; /* nothing was sent: workers still wait for a valid command */
    if ((rc = bcast(en, &h, sizeof h, e))) return rc;
    if ((rc = bcast(en, en->payload, sent_bytes(en, &h), e))) return rc;
    en->n_dlog = 0; /* the workers have the changes now */
    en->dlog_full = false;
    return execute(en, &h, rows, out, logprob, nll, logits_out, e);
}

int engine_step(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                int64_t n_rows, const int32_t *row_idx, const struct engine_row *rows, int32_t *out, float *logprob,
                tp_err *e) {
    for (int64_t j = 0; j < n_rows; j++) {
        if (!rows[j].smp || !rows[j].params) return tp_errf(e, TP_EINVAL, "engine_step: row %lld has no sampler", (long long)j);
        /* the sampler's proofs assume every rank sent at least sampler_n_cand candidates */
        if (sampler_n_cand(rows[j].params) > en->o.n_cand)
            return tp_errf(e, TP_EINVAL, "top_k %d needs %lld candidates per rank but the engine was started with %d; "
                           "use a smaller top_k or start with a larger candidate count",
                           rows[j].params->top_k, (long long)sampler_n_cand(rows[j].params), en->o.n_cand);
    }
    return coordinate(en, CMD_STEP, n_tok, tokens, pos, seq, n_rows, row_idx, rows, NULL, out, logprob, NULL, NULL, e);
}

int engine_score(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                 int64_t n_rows, const int32_t *row_idx, const int32_t *target, double *nll, tp_err *e) {
    for (int64_t j = 0; j < n_rows; j++)
        if (target[j] < 0 || target[j] >= en->m->cfg.n_vocab)
            return tp_errf(e, TP_EINVAL, "target token %d outside the vocabulary", target[j]);
    return coordinate(en, CMD_SCORE, n_tok, tokens, pos, seq, n_rows, row_idx, NULL, target, NULL, NULL, nll, NULL, e);
}

int engine_logits(struct engine *en, int64_t n_tok, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                  int64_t n_rows, const int32_t *row_idx, float *out, tp_err *e) {
    return coordinate(en, CMD_LOGITS, n_tok, tokens, pos, seq, n_rows, row_idx, NULL, NULL, NULL, NULL, NULL, out, e);
}

/* Every rank's memory tracker, gathered: the workers answer from their loop. */
static int ping_gather(struct engine *en, struct memtrack *all, tp_err *e) {
    struct memtrack mine = {0};
    if (en->m->be->track) mine = *en->m->be->track;
    if (en->tp == 1) {
        all[0] = mine;
        return 0;
    }
    return comm_all_gather(en->comm, &mine, all, sizeof mine, e);
}

int engine_ping(struct engine *en, struct memtrack *all, tp_err *e) {
    struct step_hdr h = {.cmd = CMD_PING};
    int rc = bcast(en, &h, sizeof h, e);
    if (rc) return rc;
    return ping_gather(en, all, e);
}

int engine_tp(const struct engine *en) { return en->tp; }

int engine_shutdown(struct engine *en, tp_err *e) {
    struct step_hdr h = {.cmd = CMD_SHUTDOWN};
    return bcast(en, &h, sizeof h, e);
}

int engine_worker_loop(struct engine *en, tp_err *e) {
    for (;;) {
        struct step_hdr h;
        int rc = bcast(en, &h, sizeof h, e);
        if (rc) return rc;
        if (h.cmd == CMD_SHUTDOWN) return 0;
        if (h.cmd == CMD_PING) {
            struct memtrack *all = malloc((size_t)en->tp * sizeof *all);
            /* a rank that cannot take part ends its loop; rank 0's gather then times out
             * and the job ends naming the rank */
            if (!all) return tp_errf(e, TP_ENOMEM, "rank %d: out of host memory answering a ping", en->rank);
            rc = ping_gather(en, all, e);
            free(all);
            if (rc) return rc;
            continue;
        }
        if (h.n_tok < 1 || h.n_tok > en->o.max_batch_tokens || h.n_rows < 0 || h.n_rows > en->rs.max_logits ||
            h.n_seq < 0 || h.n_seq > en->o.max_seqs || h.max_blocks != en->max_blocks_seq || h.n_hist < 0 ||
            h.n_delta < -1 || h.n_delta > en->dlog_cap || payload_need(en, &h) > en->payload_cap)
            return tp_errf(e, TP_ECOMM, "rank %d received an invalid step descriptor (cmd %d, %d tokens)", en->rank, h.cmd, h.n_tok);
        if ((rc = bcast(en, en->payload, sent_bytes(en, &h), e))) return rc;
        struct step_view v;
        view_of(en, &h, &v);
        if ((rc = tables_for_step(en, &h, &v, e))) return rc;
        if ((rc = execute(en, &h, NULL, NULL, NULL, NULL, NULL, e))) return rc;
    }
}
