/* planner.c - the memory plan per rank: weights, activations, communication, overhead, KV blocks. */
#include "planner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cpu/cpu.h"
#include "engine.h"
#include "model.h"

/* Measured constants (docs/memory.md): what a CUDA rank loses before tpllm allocates
 * anything (context, module images), cuBLAS workspace, NCCL buffers per peer. */
#define CUDA_CONTEXT_BYTES ((size_t)600 << 20)
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
#define NCCL_BYTES_PER_PEER ((size_t)8 << 20)

size_t plan_overhead_bytes(enum plan_backend b, int tp) {
    if (b == PLAN_CPU) return 0;
    return CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES + (tp > 1 ? NCCL_BYTES_PER_PEER * (size_t)(tp - 1) : 0);
}

int64_t plan_host_available(int local_ranks) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    fclose(f);
    if (kb < 0) return -1;
    return (int64_t)kb * 1024 / TP_MAX(local_ranks, 1);
}

/* Workspace the backend allocates for itself (mirrors kbackend_*_create). */
static size_t workspace_bytes(const struct plan_opts *o, const struct model_config *c) {
    struct kbackend_opts ko = {.n_threads = TP_MAX(o->n_threads, 1), .max_tokens = o->max_batch_tokens,
                               .max_in = model_config_max_in(c), .max_ctx = o->ctx, .max_heads = c->n_head};
    if (o->backend == PLAN_CPU)
        return cpu_matmul_scratch_bytes(&ko) + cpu_attention_scratch_bytes(&ko);
    /* CUDA: q8 activations (as the CPU layout), the 64 MiB dequantized f16 weight tile for
     * cuBLAS, attention's score and slot scratch (at most 64 MiB: kernels/cuda/attention.cu)
     * and the 128 KiB GELU table */
    return cpu_matmul_scratch_bytes(&ko) + ((size_t)64 << 20) + ((size_t)64 << 20) + ((size_t)128 << 10);
}

static struct engine_opts engine_opts_of(const struct plan_opts *o) {
    struct engine_opts eo;
    engine_opts_default(&eo);
    eo.ctx = o->ctx;
    eo.max_batch_tokens = o->max_batch_tokens;
    eo.max_seqs = o->max_seqs;
    eo.block_size = o->block_size;
    eo.kv_type = o->kv_type;
    eo.n_cand = o->n_cand;
    eo.max_logits = o->max_logits;
    return eo;
}

int plan_compute(struct plan *p, const struct model_config *c, const struct gguf_file *f, const struct plan_opts *o,
                 tp_err *e) {
    memset(p, 0, sizeof *p);
    p->o = *o;
    struct shard_model sm;
    struct shard_plan sp;
    int rc = model_shard_model(&sm, c, f, e);
    if (rc) return rc;
    if ((rc = shard_plan_build(&sp, &sm, o->tp, e))) return rc;
    p->ranks = calloc((size_t)o->tp, sizeof *p->ranks);
    if (!p->ranks) {
        shard_plan_free(&sp);
        return tp_errf(e, TP_ENOMEM, "out of memory");
    }
    p->blocks_per_seq = (o->ctx + o->block_size - 1) / o->block_size;
    p->kv_blocks = INT64_MAX;
    p->fits = true;
    struct engine_opts eo = engine_opts_of(o);
    for (int r = 0; r < o->tp; r++) {
        struct plan_rank *R = &p->ranks[r];
        struct model_shard sh = {.rank = r, .tp = o->tp, .n_head_l = shard_len(sp.q_heads[r]),
                                 .n_kv_l = shard_len(sp.kv_heads[r]), .n_ff_l = shard_len(sp.ff[r]),
                                 .n_vocab_l = shard_len(sp.vocab[r])};
        if ((rc = model_weight_bytes(c, f, &sp, r, &R->weights, e))) break;
        int64_t max_logits = engine_opts_max_logits(&eo);
        R->activations = run_state_bytes(c, &sh, o->max_batch_tokens, max_logits, o->max_seqs, p->blocks_per_seq) +
                         workspace_bytes(o, c);
        if (o->backend == PLAN_CPU) R->activations += (size_t)o->max_batch_tokens * (size_t)c->n_embd * sizeof(float);
        R->comm = engine_host_bytes(&eo, sh.n_vocab_l, o->tp);
        R->overhead = plan_overhead_bytes(o->backend, o->tp);
        R->kv_per_block = kv_cache_bytes(c, sh.n_kv_l, 1, o->block_size, o->kv_type);
        R->fixed = R->weights + R->activations + R->comm + R->overhead;
        int64_t left = o->budget - (int64_t)R->fixed;
        /* kv_cache_bytes aligns each layer's K and V to 64 bytes: solve exactly by stepping down */
        int64_t nb = left > 0 && R->kv_per_block > 0 ? left / (int64_t)R->kv_per_block : 0;
        while (nb > 0 && (int64_t)kv_cache_bytes(c, sh.n_kv_l, nb, o->block_size, o->kv_type) > left) nb--;
        if (R->kv_per_block == 0) nb = left >= 0 ? INT64_MAX / 4 : 0; /* a rank without KV heads holds no cache */
        R->kv_blocks = nb;
        if (nb < p->kv_blocks) {
            p->kv_blocks = nb;
            p->worst_rank = r;
        }
    }
    if (rc == 0) {
        for (int r = 0; r < o->tp; r++) {
            struct plan_rank *R = &p->ranks[r];
            int64_t nb = p->kv_blocks; /* every rank holds the same block ids */
            struct model_shard sh = {.n_kv_l = shard_len(sp.kv_heads[r])};
            R->kv = nb > 0 ? kv_cache_bytes(c, sh.n_kv_l, nb, o->block_size, o->kv_type) : 0;
            R->kv_blocks = nb;
            R->kv_tokens = nb * o->block_size;
            R->free_bytes = o->budget - (int64_t)R->fixed - (int64_t)R->kv;
        }
        p->fits = p->kv_blocks >= p->blocks_per_seq && p->ranks[p->worst_rank].free_bytes >= 0;
    }
    shard_plan_free(&sp);
    if (rc) plan_free(p);
    return rc;
}

void plan_free(struct plan *p) {
    if (!p) return;
    free(p->ranks);
    p->ranks = NULL;
}

static double gib(double b) { return b / (1024.0 * 1024.0 * 1024.0); }

void plan_advice(const struct plan *p, const struct model_config *c, const struct gguf_file *f, char *buf, size_t n) {
    const struct plan_rank *R = &p->ranks[p->worst_rank];
    int64_t need = (int64_t)R->fixed + (int64_t)(p->blocks_per_seq > 0 ? R->kv_per_block * (size_t)p->blocks_per_seq : 0);
    size_t used = (size_t)snprintf(buf, n,
                                   "rank %d needs %.2f GiB (weights %.2f, activations %.2f, communication %.2f, overhead %.2f, "
                                   "KV for one %lld-token sequence %.2f) but its budget is %.2f GiB: %.2f GiB short.",
                                   p->worst_rank, gib((double)need), gib((double)R->weights), gib((double)R->activations),
                                   gib((double)R->comm), gib((double)R->overhead), (long long)p->o.ctx,
                                   gib((double)R->kv_per_block * (double)p->blocks_per_seq), gib((double)p->o.budget),
                                   gib((double)(need - p->o.budget)));
    if (used >= n) return;
    if (p->kv_blocks > 0)
        used += (size_t)snprintf(buf + used, n - used, " The largest context that fits at --tp %d is %lld tokens (--ctx %lld).",
                                 p->o.tp, (long long)(p->kv_blocks * p->o.block_size),
                                 (long long)(p->kv_blocks * p->o.block_size));
    else if (used < n)
        used += (size_t)snprintf(buf + used, n - used, " Even the weights do not fit at --tp %d.", p->o.tp);
    if (used >= n) return;
    for (int tp = p->o.tp + 1; tp <= 64; tp++) {
        struct plan q;
        struct plan_opts o = p->o;
        o.tp = tp;
        if (plan_compute(&q, c, f, &o, NULL)) continue;
        bool ok = q.fits;
        plan_free(&q);
        if (ok) {
            used += (size_t)snprintf(buf + used, n - used, " --tp %d fits this context.", tp);
            break;
        }
    }
    if (used >= n) return;
    /* a smaller quantization: scale the weights by bits per weight */
    double q4 = 4.5 / 16.0, q8 = 8.5 / 16.0;
    double cur_bits = 0, elems = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        const struct dtype_info *d = dtype_get(t->type);
        if (!d) continue;
        double ne = (double)t->ne[0] * (double)t->ne[1] * (double)t->ne[2] * (double)t->ne[3];
        elems += ne;
        cur_bits += (double)t->nbytes * 8.0;
    }
    double cur_bpw = elems > 0 ? cur_bits / elems : 16.0;
    const char *names[2] = {"Q8_0", "Q4_0"};
    double bpws[2] = {q8 * 16.0, q4 * 16.0};
    for (int i = 0; i < 2; i++) {
        if (bpws[i] >= cur_bpw - 0.1) continue;
        double w = (double)R->weights * bpws[i] / cur_bpw;
        double total = (double)need - (double)R->weights + w;
        if (total <= (double)p->o.budget) {
            snprintf(buf + used, n - used, " A %s file (about %.2f GiB of weights on rank %d) would fit at --tp %d.", names[i],
                     gib(w), p->worst_rank, p->o.tp);
            return;
        }
    }
}
