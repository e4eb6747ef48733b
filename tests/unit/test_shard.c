/* test_shard.c - the tensor-parallel shard plan: coverage, block alignment, replication, refusal. */
#include <criterion/criterion.h>
#include <string.h>

#include "parallel/shard.h"

/* Every unit owned exactly once, in order, and ranges cover [0, total). */
static void check_partition(const struct shard_range *r, int tp, int64_t total, int64_t unit) {
    int64_t next = 0;
    for (int i = 0; i < tp; i++) {
        cr_assert_eq(r[i].begin, next, "rank %d starts at %lld, expected %lld", i, (long long)r[i].begin, (long long)next);
        cr_assert_geq(r[i].end, r[i].begin);
        if (r[i].end != total) cr_assert_eq(r[i].end % unit, 0, "rank %d ends off a unit boundary", i);
        next = r[i].end;
    }
    cr_assert_eq(next, total);
}

Test(shard, splits_units_nearly_evenly_with_the_remainder_first) {
    int64_t sizes[] = {0, 1, 5, 7, 100};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int tp = 1; tp <= 5; tp++) {
            int64_t prev = INT64_MAX;
            for (int r = 0; r < tp; r++) {
                struct shard_range x = shard_split(sizes[s], tp, r);
                cr_assert_leq(shard_len(x), prev);
                cr_assert_leq(shard_len(x) - sizes[s] / tp, 1);
                prev = shard_len(x);
            }
        }
}

Test(shard, gemma3_270m_replicates_its_single_kv_head_at_every_tp) {
    struct shard_model m = {.n_head = 4, .n_head_kv = 1, .head_dim = 256, .head_dim_v = 256, .n_ff = 2048,
                            .n_vocab = 262144, .o_block = 256, .down_block = 256};
    for (int tp = 1; tp <= 4; tp++) {
        struct shard_plan p;
        cr_assert_eq(shard_plan_build(&p, &m, tp, NULL), 0, "tp %d", tp);
        check_partition(p.q_heads, tp, 4, p.head_unit);
        check_partition(p.ff, tp, 2048, 256);
        check_partition(p.vocab, tp, 262144, 1);
        for (int r = 0; r < tp; r++) {
            cr_assert_eq(p.kv_heads[r].begin, 0);
            cr_assert_eq(p.kv_heads[r].end, 1, "rank %d must hold the one KV head", r);
        }
        shard_plan_free(&p);
    }
}

Test(shard, splits_kv_groups_without_replication_when_tp_divides_them) {
    struct shard_model m = {.n_head = 32, .n_head_kv = 8, .head_dim = 128, .head_dim_v = 128, .n_ff = 14336,
                            .n_vocab = 128256, .o_block = 32, .down_block = 32};
    struct shard_plan p;
    cr_assert_eq(shard_plan_build(&p, &m, 3, NULL), 0);
    /* 8 KV groups over 3 ranks: 3, 3, 2 groups of 4 query heads */
    cr_assert_eq(p.q_heads[0].end, 12);
    cr_assert_eq(p.q_heads[1].end, 24);
    cr_assert_eq(p.q_heads[2].end, 32);
    cr_assert_eq(p.kv_heads[0].end - p.kv_heads[0].begin, 3);
    cr_assert_eq(p.kv_heads[2].begin, 6);
    check_partition(p.ff, 3, 14336, 32);
    shard_plan_free(&p);
}

Test(shard, five_heads_and_an_odd_ffn_give_uneven_and_empty_shards) {
    /* 5 heads, FFN of 3 Q4_K blocks: at tp=4 one rank owns no FFN block */
    struct shard_model m = {.n_head = 5, .n_head_kv = 5, .head_dim = 64, .head_dim_v = 64, .n_ff = 768,
                            .n_vocab = 1000, .o_block = 32, .down_block = 256};
    struct shard_plan p;
    cr_assert_eq(shard_plan_build(&p, &m, 4, NULL), 0);
    check_partition(p.q_heads, 4, 5, 1);
    check_partition(p.ff, 4, 768, 256);
    int empty = 0;
    for (int r = 0; r < 4; r++) empty += shard_len(p.ff[r]) == 0;
    cr_assert_eq(empty, 1);
    cr_assert_eq(shard_len(p.q_heads[0]), 2);
    shard_plan_free(&p);
}

Test(shard, attn_output_blocks_force_heads_to_move_together) {
    /* head_dim 64 with a Q4_K attn_output (256 columns per block): 4 heads per chunk */
    struct shard_model m = {.n_head = 16, .n_head_kv = 16, .head_dim = 64, .head_dim_v = 64, .n_ff = 1024,
                            .n_vocab = 500, .o_block = 256, .down_block = 256};
    struct shard_plan p;
    cr_assert_eq(shard_plan_build(&p, &m, 3, NULL), 0);
    cr_assert_eq(p.head_unit, 4);
    for (int r = 0; r < 3; r++) cr_assert_eq((p.q_heads[r].begin * 64) % 256, 0);
    shard_plan_free(&p);
}

Test(shard, a_tp_size_that_cannot_work_is_refused_with_the_sizes_that_can) {
    struct shard_model m = {.n_head = 4, .n_head_kv = 1, .head_dim = 256, .head_dim_v = 256, .n_ff = 512,
                            .n_vocab = 1000, .o_block = 256, .down_block = 256};
    struct shard_plan p;
    tp_err e = {0};
    cr_assert_eq(shard_plan_build(&p, &m, 5, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "tensor-parallel size 5 cannot work"), "%s", e.msg);
    cr_assert(strstr(e.msg, "TP sizes that work: 1-4"), "%s", e.msg);
    tp_err e0 = {0};
    cr_assert_eq(shard_plan_build(&p, &m, 0, &e0), TP_EINVAL);
}
