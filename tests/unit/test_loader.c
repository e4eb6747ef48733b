/* test_loader.c - per-rank loading reads only the rank's byte ranges: at tp = 1..4 the
 * bytes all ranks read add up to the file's tensor bytes (plus replicated tensors), not
 * tp times the file; and every rank's weights equal the matching slice of the file. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model.h"
#include "testutil.h"

static void check_file(const char *path) {
    struct gguf_file *f = NULL;
    struct model_config c;
    struct shard_model sm;
    tp_err e = {0};
    cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
    cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
    cr_assert_eq(model_shard_model(&sm, &c, f, &e), 0, "%s", e.msg);
    struct kbackend_opts ko = {.n_threads = 1, .max_tokens = 1, .max_in = model_config_max_in(&c), .max_ctx = 16,
                               .max_heads = c.n_head, .simd = -1};
    struct kbackend *be = NULL;
    cr_assert_eq(kbackend_cpu_create(&be, &ko, &e), 0, "%s", e.msg);
    /* replicated: every tensor tpllm does not split (norms, rope factors); K/V projections
     * in proportion to the KV heads a rank holds beyond its share (tp > n_kv_heads).
     * Not loaded at all: an untied token_embd, which is looked up row by row in the mapping. */
    uint64_t replicated = 0, weights = 0, kv_bytes = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        if (!strcmp(t->name, "token_embd.weight") && gguf_find_tensor(f, "output.weight")) continue;
        if (t->n_dims == 1) replicated += t->nbytes;
        if (strstr(t->name, "attn_k.weight") || strstr(t->name, "attn_v.weight")) kv_bytes += t->nbytes;
        weights += t->nbytes;
    }
    /* with tied embeddings the token table is read once, as the vocabulary-parallel LM head */
    for (int tp = 1; tp <= 4; tp++) {
        struct shard_plan sp;
        if (shard_plan_build(&sp, &sm, tp, NULL)) continue;
        uint64_t total = 0;
        for (int r = 0; r < tp; r++) {
            struct model m;
            cr_assert_eq(model_load(&m, f, &c, &sp, r, be, &e), 0, "tp %d rank %d: %s", tp, r, e.msg);
            total += m.bytes_read;
            /* the LM head slice equals the file's rows */
            const struct gguf_tensor *out = gguf_find_tensor(f, c.tied_embeddings ? "token_embd.weight" : "output.weight");
            if (!out) out = gguf_find_tensor(f, "token_embd.weight");
            size_t rb = m.output.row_stride;
            cr_assert_eq(memcmp(m.output.data, out->data + (size_t)m.sh.vocab0 * rb, (size_t)m.sh.n_vocab_l * rb), 0);
            model_free(&m);
        }
        int64_t kv_held = 0;
        for (int r = 0; r < tp; r++) kv_held += shard_len(sp.kv_heads[r]);
        uint64_t kv_extra = (uint64_t)((double)kv_bytes * (double)(kv_held - c.n_head_kv) / (double)c.n_head_kv);
        uint64_t expect = weights + (uint64_t)(tp - 1) * replicated + kv_extra;
        double rel = ((double)total - (double)expect) / (double)expect;
        fprintf(stderr, "[loader] %s tp=%d: ranks read %llu bytes in all; file tensors %llu + replicated norms (tp-1) x %llu "
                        "+ replicated KV heads %llu -> %+.3f%%\n",
                path, tp, (unsigned long long)total, (unsigned long long)weights, (unsigned long long)replicated,
                (unsigned long long)kv_extra, 100 * rel);
        cr_assert_leq(rel < 0 ? -rel : rel, 0.02, "tp=%d: read %llu bytes, expected about %llu", tp,
                      (unsigned long long)total, (unsigned long long)expect);
        shard_plan_free(&sp);
    }
    kbackend_free(be);
    gguf_close(f);
}

Test(loader, synthetic_llama_is_read_once_in_total_at_every_tp) {
    const char *bin = getenv("TPLLM_BIN");
    cr_assert(bin, "TPLLM_BIN is not set (run through ctest)");
    char *path = tu_tmp_path(".gguf");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s synth --arch llama --dim 512 --layers 2 --heads 8 --kv-heads 4 --ff 1536 --vocab 2048 "
                              "--type q4_k --embd-type q8_0 --output-type q6_k --seed 2 -o %s > /dev/null", bin, path);
    cr_assert_eq(system(cmd), 0);
    check_file(path);
    remove(path);
    free(path);
}

Test(loader, gemma3_270m_is_read_once_in_total_at_every_tp, .timeout = 300) {
    const char *env = getenv("TPLLM_GEMMA");
    char *path = env ? strdup(env) : tu_src_path("models/gemma-3-270m-q4_k_m.gguf");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        free(path);
        cr_skip_test("Gemma 3 270M not present (make models)");
    }
    fclose(fp);
    check_file(path);
    free(path);
}
