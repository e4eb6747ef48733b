/* shard.c - the tensor-parallel sharding plan: heads, FFN columns and vocabulary rows per rank. */
#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shard_range shard_split(int64_t n, int tp, int rank) {
    int64_t base = n / tp, extra = n % tp;
    int64_t begin = rank * base + TP_MIN((int64_t)rank, extra);
    int64_t len = base + (rank < extra ? 1 : 0);
    return (struct shard_range){begin, begin + len};
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int64_t lcm64(int64_t a, int64_t b) { return a / gcd64(a, b) * b; }

/* Chunk sizes: heads must be grouped so that (a) each chunk's attn_output columns start
 * on a block boundary, and (b) when tp <= n_head_kv, a chunk is whole KV groups so no
 * KV head is replicated. */
/* Column alignment of row-parallel slices: whole quantization blocks, and at least 256
 * columns: matmul_f64 sums granules that follow the slices, and granules much shorter
 * than that cost more in kernel calls than they compute. */
static int64_t col_align(int64_t block) { return lcm64(block > 0 ? block : 1, 64); }

static int64_t head_unit(const struct shard_model *m, int tp) {
    int64_t group = m->n_head / m->n_head_kv;
    int64_t blk = col_align(m->o_block);
    int64_t width = m->head_dim_v > 0 ? m->head_dim_v : m->head_dim;
    int64_t align = blk / gcd64(blk, width);
    int64_t u = tp <= m->n_head_kv ? lcm64(group, align) : align;
    return TP_MIN(u, m->n_head);
}

static int check_model(const struct shard_model *m, tp_err *e) {
    if (m->n_head <= 0 || m->n_head_kv <= 0 || m->n_head % m->n_head_kv != 0 || m->n_ff <= 0 ||
        m->n_vocab <= 0 || m->head_dim <= 0)
        return tp_errf(e, TP_EINVAL, "shard plan: inconsistent model (heads %lld, kv heads %lld, ffn %lld, vocab %lld)",
                       (long long)m->n_head, (long long)m->n_head_kv, (long long)m->n_ff, (long long)m->n_vocab);
    return 0;
}

/* FFN chunk: whole ffn_down blocks, at least 256 columns, so that the row-parallel
 * reduction works on granules of a useful size (matmul_f64). */
static int64_t ff_unit(const struct shard_model *m) {
    return lcm64(col_align(m->down_block), 256);
}

/* Whether every rank owns at least one head or one FFN chunk at this tp. */
static bool tp_works(const struct shard_model *m, int tp) {
    int64_t hu = head_unit(m, tp);
    int64_t n_hchunks = (m->n_head + hu - 1) / hu;
    int64_t fu = ff_unit(m);
    int64_t n_fchunks = (m->n_ff + fu - 1) / fu;
    return tp <= TP_MAX(n_hchunks, n_fchunks) && tp <= m->n_vocab;
}

void shard_plan_valid_sizes(const struct shard_model *m, int max_tp, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    int run_start = -1;
    for (int tp = 1; tp <= max_tp + 1; tp++) {
        bool ok = tp <= max_tp && tp_works(m, tp);
        if (ok && run_start < 0) run_start = tp;
        if (!ok && run_start >= 0) {
            int last = tp - 1;
            int w = last == run_start ? snprintf(buf + used, n - used, "%s%d", used ? ", " : "", run_start)
                                      : snprintf(buf + used, n - used, "%s%d-%d", used ? ", " : "", run_start, last);
            if (w < 0 || (size_t)w >= n - used) return;
            used += (size_t)w;
            run_start = -1;
        }
    }
}

int shard_plan_build(struct shard_plan *p, const struct shard_model *m, int tp, tp_err *e) {
    memset(p, 0, sizeof *p);
    int rc = check_model(m, e);
    if (rc) return rc;
    if (tp < 1 || !tp_works(m, tp)) {
        char sizes[256];
        shard_plan_valid_sizes(m, 4096, sizes, sizeof sizes);
        return tp_errf(e, TP_EINVAL,
                       "tensor-parallel size %d cannot work for this model (%lld heads, %lld KV heads, FFN %lld "
                       "in chunks of %lld): some rank would own no attention head and no FFN chunk. "
                       "TP sizes that work: %s",
                       tp, (long long)m->n_head, (long long)m->n_head_kv, (long long)m->n_ff,
                       (long long)ff_unit(m), sizes);
    }
    p->tp = tp;
    p->head_unit = head_unit(m, tp);
    p->ff_unit = ff_unit(m);
    {
        int64_t width = m->head_dim_v > 0 ? m->head_dim_v : m->head_dim;
        p->o_granule = lcm64(col_align(m->o_block), width);
    }
    p->q_heads = calloc((size_t)tp, sizeof *p->q_heads);
    p->kv_heads = calloc((size_t)tp, sizeof *p->kv_heads);
    p->ff = calloc((size_t)tp, sizeof *p->ff);
    p->vocab = calloc((size_t)tp, sizeof *p->vocab);
    if (!p->q_heads || !p->kv_heads || !p->ff || !p->vocab) {
        shard_plan_free(p);
        return tp_errf(e, TP_ENOMEM, "shard plan: out of memory");
    }
    int64_t group = m->n_head / m->n_head_kv;
    int64_t n_hchunks = (m->n_head + p->head_unit - 1) / p->head_unit;
    int64_t n_fchunks = (m->n_ff + p->ff_unit - 1) / p->ff_unit;
    for (int r = 0; r < tp; r++) {
        struct shard_range hc = shard_split(n_hchunks, tp, r);
        p->q_heads[r].begin = TP_MIN(hc.begin * p->head_unit, m->n_head);
        p->q_heads[r].end = TP_MIN(hc.end * p->head_unit, m->n_head);
        if (shard_len(p->q_heads[r]) > 0) {
            p->kv_heads[r].begin = p->q_heads[r].begin / group;
            p->kv_heads[r].end = (p->q_heads[r].end - 1) / group + 1;
        } else {
            p->kv_heads[r] = (struct shard_range){0, 0};
        }
        struct shard_range fc = shard_split(n_fchunks, tp, r);
        p->ff[r] = (struct shard_range){TP_MIN(fc.begin * p->ff_unit, m->n_ff), TP_MIN(fc.end * p->ff_unit, m->n_ff)};
        p->vocab[r] = shard_split(m->n_vocab, tp, r);
    }
    return 0;
}

void shard_plan_free(struct shard_plan *p) {
    if (!p) return;
    free(p->q_heads);
    free(p->kv_heads);
    free(p->ff);
    free(p->vocab);
    memset(p, 0, sizeof *p);
}
