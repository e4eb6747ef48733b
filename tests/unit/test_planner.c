/* test_planner.c - the memory plan: hand-computed sizes, refusal and fit at the budget's edge,
 * and the tracker's measured usage against the plan on a CPU rank. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/memtrack.h"
#include "runtime/engine.h"
#include "runtime/planner.h"
#include "testutil.h"

/* A synthetic llama model written by `tpllm synth` (the binary CTest names in TPLLM_BIN). */
static char *synth(const char *args) {
    const char *bin = getenv("TPLLM_BIN");
    cr_assert(bin, "TPLLM_BIN is not set (run through ctest)");
    char *path = tu_tmp_path(".gguf");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s synth %s -o %s > /dev/null", bin, args, path);
    cr_assert_eq(system(cmd), 0, "%s failed", cmd);
    return path;
}

#define SMALL_LLAMA                                                                                              \
    "--arch llama --dim 256 --layers 2 --heads 8 --kv-heads 4 --ff 640 --vocab 1024 --ctx 1024 --type q8_0 " \
    "--embd-type q8_0 --output-type q8_0 --seed 7"

static struct plan_opts opts(int tp, int64_t budget) {
    return (struct plan_opts){.tp = tp, .backend = PLAN_CPU, .budget = budget, .ctx = 256, .max_batch_tokens = 64,
                              .max_seqs = 1, .block_size = 16, .kv_type = DTYPE_F16, .n_cand = 64, .n_threads = 1};
}

Test(planner, weight_and_kv_bytes_match_hand_computed_values) {
    char *path = synth(SMALL_LLAMA);
    struct gguf_file *f = NULL;
    struct model_config c;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
    struct plan p;
    /* tp=1, per layer (Q8_0: 34 bytes per 32 values, rows of 256 -> 272 bytes, of 640 -> 680 bytes):
     * norms 2 x 1024, wq 256x272, wk 128x272, wv 128x272, wo 256x272, gate/up 640x272, down 256x680
     * = 733184; two layers, output_norm 1024, output 1024x272 -> 1745920. */
    struct plan_opts o = opts(1, (int64_t)1 << 30);
    cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0, "%s", e.msg);
    cr_assert_eq(p.ranks[0].weights, 1745920u);
    /* KV per block: K and V x 2 layers x 16 tokens x 4 heads x 32 dims x 2 bytes */
    cr_assert_eq(p.ranks[0].kv_per_block, 16384u);
    cr_assert_eq(p.blocks_per_seq, 16);
    plan_free(&p);
    /* tp=2: each rank holds 4 heads (2 KV) and 512 vocabulary rows; the FFN goes in chunks of
     * 256 columns (3 chunks of 640): rank 0 holds 512 columns, rank 1 holds 128.
     * rank 0 per layer: 2048 + 128x272 + 64x272 + 64x272 + 256x136 + 512x272 x2 + 256x544 = 524288
     * rank 1 per layer: 2048 + 34816 + 17408 + 17408 + 34816 + 128x272 x2 + 256x136 = 210944
     * plus output_norm 1024 and 512x272 of the LM head on each; the sum exceeds tp=1's by the
     * replicated norms (5 x 1024). */
    o = opts(2, (int64_t)1 << 30);
    cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0, "%s", e.msg);
    cr_assert_eq(p.ranks[0].weights, 1188864u, "rank 0: %zu", p.ranks[0].weights);
    cr_assert_eq(p.ranks[1].weights, 562176u, "rank 1: %zu", p.ranks[1].weights);
    cr_assert_eq(p.ranks[0].weights + p.ranks[1].weights, 1745920u + 5 * 1024u);
    for (int r = 0; r < 2; r++) cr_assert_eq(p.ranks[r].kv_per_block, 8192u);
    plan_free(&p);
    gguf_close(f);
    remove(path);
    free(path);
}

Test(planner, replicated_kv_heads_are_counted_on_every_rank) {
    char *path = synth("--arch llama --dim 256 --layers 1 --heads 4 --kv-heads 1 --ff 512 --vocab 512 --type q8_0 "
                       "--embd-type q8_0 --output-type q8_0 --seed 8");
    struct gguf_file *f = NULL;
    struct model_config c;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
    for (int tp = 1; tp <= 4; tp++) {
        struct plan p;
        struct plan_opts o = opts(tp, (int64_t)1 << 30);
        cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0, "%s", e.msg);
        /* one KV head of 64 dims on every rank: 2 x 1 layer x 16 x 1 x 64 x 2 bytes */
        for (int r = 0; r < tp; r++) cr_assert_eq(p.ranks[r].kv_per_block, 4096u, "tp %d rank %d", tp, r);
        plan_free(&p);
    }
    gguf_close(f);
    remove(path);
    free(path);
}

/* Load and build an engine in-process (tp = 1, CPU) under a tracked budget. */
static int start(const char *path, int64_t budget, const struct plan *p, struct memtrack *mt, tp_err *e) {
    struct gguf_file *f = NULL;
    struct model_config c;
    struct shard_plan sp;
    struct shard_model sm;
    struct kbackend *be = NULL;
    struct model m;
    struct engine *en = NULL;
    int rc = gguf_open(&f, path, e);
    if (!rc) rc = model_config_load(&c, f, e);
    if (!rc) rc = model_shard_model(&sm, &c, f, e);
    if (!rc) rc = shard_plan_build(&sp, &sm, 1, e);
    struct kbackend_opts ko = {.n_threads = 1, .max_tokens = p->o.max_batch_tokens, .max_in = model_config_max_in(&c),
                               .max_ctx = p->o.ctx, .max_heads = c.n_head, .simd = -1};
    memset(mt, 0, sizeof *mt);
    mt->budget = budget;
    if (!rc) rc = kbackend_cpu_create(&be, &ko, e);
    if (!rc) {
        be->track = mt;
        memtrack_note(mt, MEM_WORKSPACE, be->workspace_bytes);
        rc = model_load(&m, f, &c, &sp, 0, be, e);
        if (!rc) {
            struct engine_opts eo;
            engine_opts_default(&eo);
            eo.ctx = p->o.ctx;
            eo.max_batch_tokens = p->o.max_batch_tokens;
            eo.max_seqs = 1;
            eo.n_blocks = p->kv_blocks;
            rc = engine_create(&en, &m, NULL, &eo, e);
            engine_free(en);
            model_free(&m);
        }
    }
    kbackend_free(be);
    shard_plan_free(&sp);
    gguf_close(f);
    return rc;
}

Test(planner, refuses_just_below_the_need_and_fits_just_above_and_the_tracker_agrees) {
    char *path = synth(SMALL_LLAMA);
    struct gguf_file *f = NULL;
    struct model_config c;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
    struct plan p;
    struct plan_opts o = opts(1, (int64_t)1 << 30);
    cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0);
    int64_t need = (int64_t)p.ranks[0].fixed + (int64_t)kv_cache_bytes(&c, c.n_head_kv, p.blocks_per_seq, 16, DTYPE_F16);
    plan_free(&p);

    o.budget = need - 1;
    cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0);
    cr_assert_not(p.fits);
    char advice[2048];
    plan_advice(&p, &c, f, advice, sizeof advice);
    cr_assert(strstr(advice, "rank 0 needs"), "%s", advice);
    cr_assert(strstr(advice, "largest context that fits"), "%s", advice);
    plan_free(&p);

    o.budget = need;
    cr_assert_eq(plan_compute(&p, &c, f, &o, &e), 0);
    cr_assert(p.fits);
    cr_assert_eq(p.kv_blocks, p.blocks_per_seq);
    struct memtrack mt;
    int rc = start(path, need, &p, &mt, &e);
    cr_assert_eq(rc, 0, "start under the planned budget failed: %s", e.msg);
    double planned = (double)(p.ranks[0].fixed + p.ranks[0].kv);
    double measured = (double)mt.total_peak;
    fprintf(stderr, "plan %.0f bytes, tracker peak %.0f bytes (%.3f%%)\n", planned, measured,
            100.0 * (measured - planned) / planned);
    cr_assert_leq(measured, planned * 1.03);
    cr_assert_geq(measured, planned * 0.97);
    /* one byte less than the weights + activations alone: the tracker refuses, nothing crashes */
    tp_err e2 = {0};
    cr_assert_neq(start(path, (int64_t)p.ranks[0].weights - 1, &p, &mt, &e2), 0);
    plan_free(&p);
    gguf_close(f);
    remove(path);
    free(path);
}

/* engine_create checks the candidate count; engine_seq_reserve the sequence it is given. */
Test(engine, refuses_bad_candidate_counts_and_sequences_that_are_not_open) {
    char *path = synth(SMALL_LLAMA);
    struct gguf_file *f = NULL;
    struct model_config c;
    struct shard_plan sp;
    struct shard_model sm;
    struct kbackend *be = NULL;
    struct model m;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
    cr_assert_eq(model_shard_model(&sm, &c, f, &e), 0, "%s", e.msg);
    cr_assert_eq(shard_plan_build(&sp, &sm, 1, &e), 0, "%s", e.msg);
    struct kbackend_opts ko = {.n_threads = 1, .max_tokens = 16, .max_in = model_config_max_in(&c), .max_ctx = 64,
                               .max_heads = c.n_head, .simd = -1};
    cr_assert_eq(kbackend_cpu_create(&be, &ko, &e), 0, "%s", e.msg);
    cr_assert_eq(model_load(&m, f, &c, &sp, 0, be, &e), 0, "%s", e.msg);
    struct engine_opts eo;
    engine_opts_default(&eo);
    eo.ctx = 64;
    eo.max_batch_tokens = 16;
    eo.max_seqs = 2;
    struct engine *en = NULL;
    const int bad_cand[] = {0, -3, ENGINE_MAX_CAND + 1};
    for (size_t i = 0; i < TP_ARRAY_LEN(bad_cand); i++) {
        tp_err_clear(&e);
        eo.n_cand = bad_cand[i];
        cr_assert_eq(engine_create(&en, &m, NULL, &eo, &e), TP_EINVAL, "n_cand %d accepted", bad_cand[i]);
        cr_assert_null(en);
        cr_assert(strstr(e.msg, "sampling candidates"), "%s", e.msg);
    }
    eo.n_cand = 64;
    tp_err_clear(&e);
    cr_assert_eq(engine_create(&en, &m, NULL, &eo, &e), 0, "%s", e.msg);
    const int bad_seq[] = {-1, 1, 2, 1000};
    int s = engine_seq_open(en, 8, &e);
    cr_assert_eq(s, 0, "%s", e.msg);
    for (size_t i = 0; i < TP_ARRAY_LEN(bad_seq); i++) { /* 1 is in range but not open */
        tp_err_clear(&e);
        cr_assert_eq(engine_seq_reserve(en, bad_seq[i], 8, &e), TP_EINVAL, "sequence %d accepted", bad_seq[i]);
        cr_assert(strstr(e.msg, "is not open"), "%s", e.msg);
    }
    tp_err_clear(&e);
    cr_assert_eq(engine_seq_reserve(en, s, -5, &e), TP_EINVAL);
    tp_err_clear(&e);
    cr_assert_eq(engine_seq_reserve(en, s, 40, &e), 0, "%s", e.msg);
    cr_assert_eq(engine_seq_reserve(en, s, 65, &e), TP_EINVAL, "beyond the context accepted");
    engine_seq_close(en, s);
    engine_free(en);
    model_free(&m);
    kbackend_free(be);
    shard_plan_free(&sp);
    gguf_close(f);
    remove(path);
    free(path);
}
