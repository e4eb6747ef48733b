/* cmd_plan.c - `tpllm plan`: the shard table and memory plan per rank, from the GGUF header alone. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot.h"
#include "commands.h"
#include "runtime/model.h"
#include "runtime/planner.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: tpllm plan -m FILE [--tp N] [--device-mem SIZE] [options]\n\n"
            "Says, before anything is loaded, how the model splits across N ranks and whether each\n"
            "rank fits its memory budget, and how many tokens of KV cache each gets.\n\n"
            "  -m, --model FILE        GGUF model\n"
            "  --tp N                  tensor-parallel size (default 1)\n"
            "  --device-mem SIZE       budget per rank, e.g. 12GiB, 24GB (default: free memory x --mem-fraction)\n"
            "  --mem-fraction F        share of free memory to use when --device-mem is not given (default 0.90)\n"
            "  --backend B             cuda or cpu: which overheads to count (default cuda)\n"
            "  -c, --ctx N             context length per sequence (default 4096)\n"
            "  --max-batch-tokens N    tokens per forward step (default 512)\n"
            "  --max-seqs N            sequences in flight (default 1)\n"
            "  --kv-type T             f16 (default) or f32\n"
            "  -t, --threads N         CPU threads per rank (CPU scratch scales with it; default 1)\n"
            "  --tensors               list every tensor slice of every rank\n"
            "  --json                  print the plan as JSON\n"
            "Exit status: 0 when every rank fits, 1 when not (with what would fit), 2 for bad arguments.\n");
}

static double mib(double b) { return b / (1024.0 * 1024.0); }

static void print_tensors(const struct model_config *c, const struct gguf_file *f, const struct shard_plan *sp, int r) {
    struct model_slice *sl = NULL;
    int n = 0;
    tp_err e = {0};
    if (model_slices(c, f, sp, r, &sl, &n, &e)) {
        fprintf(stderr, "tpllm plan: %s\n", e.msg);
        return;
    }
    printf("rank %d tensors:\n  %-32s %-5s %-6s %-17s %-14s %12s\n", r, "tensor", "type", "split", "owned", "shape", "bytes");
    for (int i = 0; i < n; i++) {
        char owned[40], shape[40];
        if (sl[i].split == '-') snprintf(owned, sizeof owned, "all");
        else snprintf(owned, sizeof owned, "%s %lld-%lld", sl[i].split == 'r' ? "rows" : "cols", (long long)sl[i].begin,
                      (long long)sl[i].end);
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)sl[i].rows, (long long)sl[i].cols);
        printf("  %-32s %-5s %-6s %-17s %-14s %12zu\n", sl[i].name, dtype_name(sl[i].type),
               sl[i].split == 'r' ? "column" : sl[i].split == 'c' ? "row" : "repl", owned, shape, sl[i].bytes);
    }
    free(sl);
}

int cmd_plan(int argc, char **argv) {
    const char *model = NULL;
    struct plan_opts o = {.tp = 1, .backend = PLAN_CUDA, .budget = 0, .ctx = 4096, .max_batch_tokens = 512,
                          .max_seqs = 1, .block_size = 16, .kv_type = DTYPE_F16, .n_cand = 64, .n_threads = 1};
    double fraction = 0.90;
    bool json = false, tensors = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "--tensors")) tensors = true;
        else if (!v) {
            fprintf(stderr, "tpllm plan: unknown option '%s' or missing value. Run 'tpllm plan --help'.\n", a);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = argv[++i];
        else if (!strcmp(a, "--device-mem")) {
            o.budget = boot_parse_size(v);
            if (o.budget <= 0) {
                fprintf(stderr, "tpllm plan: --device-mem expects a size such as 12GiB or 24GB, got '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--mem-fraction")) {
            fraction = strtod(v, &end);
            if (*end || fraction <= 0 || fraction > 1) {
                fprintf(stderr, "tpllm plan: --mem-fraction expects a number in (0, 1], got '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "cpu")) o.backend = PLAN_CPU;
            else if (!strcmp(v, "cuda")) o.backend = PLAN_CUDA;
            else {
                fprintf(stderr, "tpllm plan: --backend must be cpu or cuda, got '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--kv-type")) {
            if (!strcmp(v, "f16")) o.kv_type = DTYPE_F16;
            else if (!strcmp(v, "f32")) o.kv_type = DTYPE_F32;
            else {
                fprintf(stderr, "tpllm plan: --kv-type must be f16 or f32, got '%s'\n", v);
                return 2;
            }
            i++;
        } else {
            long long x = strtoll(v, &end, 10);
            int64_t *dst = NULL;
            long long lo = 1, hi = 1LL << 30;
            int tmp;
            if (!strcmp(a, "--tp")) dst = NULL, hi = 4096;
            else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) dst = &o.ctx;
            else if (!strcmp(a, "--max-batch-tokens")) dst = &o.max_batch_tokens;
            else if (!strcmp(a, "--max-seqs")) dst = &o.max_seqs;
            else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) dst = NULL, hi = 1024;
            else {
                fprintf(stderr, "tpllm plan: unknown option '%s'. Run 'tpllm plan --help'.\n", a);
                return 2;
            }
            if (*end || x < lo || x > hi) {
                fprintf(stderr, "tpllm plan: %s expects an integer in [%lld, %lld], got '%s'\n", a, lo, hi, v);
                return 2;
            }
            tmp = (int)x;
            if (dst) *dst = x;
            else if (!strcmp(a, "--tp")) o.tp = tmp;
            else o.n_threads = tmp;
            i++;
        }
    }
    if (!model) {
        fprintf(stderr, "tpllm plan: no model given; pass -m FILE.gguf\n");
        return 2;
    }
    const char *budget_src = "--device-mem";
    if (o.budget == 0) {
        if (o.backend == PLAN_CUDA) {
            fprintf(stderr, "tpllm plan: give the budget per GPU with --device-mem SIZE (e.g. 12GiB), or plan CPU ranks "
                            "with --backend cpu (free host memory is used then)\n");
            return 2;
        }
        int64_t avail = plan_host_available(o.tp);
        if (avail <= 0) {
            fprintf(stderr, "tpllm plan: cannot read /proc/meminfo; give the budget with --device-mem SIZE\n");
            return 2;
        }
        o.budget = (int64_t)((double)avail * fraction);
        budget_src = "free host memory x --mem-fraction / ranks";
    }
    tp_err e = {0};
    struct gguf_file *f = NULL;
    struct model_config c;
    struct plan p = {0};
    struct shard_plan sp = {0};
    struct shard_model sm;
    int status = 1;
    if (gguf_open(&f, model, &e) || model_config_load(&c, f, &e) || model_shard_model(&sm, &c, f, &e) ||
        shard_plan_build(&sp, &sm, o.tp, &e) || plan_compute(&p, &c, f, &o, &e)) {
        fprintf(stderr, "tpllm plan: %s\n", e.msg);
        status = e.code == TP_EINVAL ? 2 : 1;
        goto done;
    }
    char advice[2048] = "";
    if (!p.fits) plan_advice(&p, &c, f, advice, sizeof advice);
    if (json) {
        json_t *root = json_object(), *ranks = json_array();
        json_object_set_new(root, "model", json_string(model));
        json_object_set_new(root, "tp", json_integer(o.tp));
        json_object_set_new(root, "backend", json_string(o.backend == PLAN_CPU ? "cpu" : "cuda"));
        json_object_set_new(root, "budget_bytes", json_integer(o.budget));
        json_object_set_new(root, "ctx", json_integer(o.ctx));
        json_object_set_new(root, "block_size", json_integer(o.block_size));
        json_object_set_new(root, "kv_blocks", json_integer(p.kv_blocks));
        json_object_set_new(root, "fits", json_boolean(p.fits));
        if (!p.fits) json_object_set_new(root, "advice", json_string(advice));
        for (int r = 0; r < o.tp; r++) {
            const struct plan_rank *R = &p.ranks[r];
            json_t *j = json_object();
            json_object_set_new(j, "rank", json_integer(r));
            json_object_set_new(j, "heads", json_pack("[I,I]", (json_int_t)sp.q_heads[r].begin, (json_int_t)sp.q_heads[r].end));
            json_object_set_new(j, "kv_heads", json_pack("[I,I]", (json_int_t)sp.kv_heads[r].begin, (json_int_t)sp.kv_heads[r].end));
            json_object_set_new(j, "ffn", json_pack("[I,I]", (json_int_t)sp.ff[r].begin, (json_int_t)sp.ff[r].end));
            json_object_set_new(j, "vocab", json_pack("[I,I]", (json_int_t)sp.vocab[r].begin, (json_int_t)sp.vocab[r].end));
            json_object_set_new(j, "weights_bytes", json_integer((json_int_t)R->weights));
            json_object_set_new(j, "activations_bytes", json_integer((json_int_t)R->activations));
            json_object_set_new(j, "comm_bytes", json_integer((json_int_t)R->comm));
            json_object_set_new(j, "overhead_bytes", json_integer((json_int_t)R->overhead));
            json_object_set_new(j, "kv_bytes", json_integer((json_int_t)R->kv));
            json_object_set_new(j, "kv_bytes_per_block", json_integer((json_int_t)R->kv_per_block));
            json_object_set_new(j, "free_bytes", json_integer(R->free_bytes));
            json_object_set_new(j, "kv_tokens", json_integer(R->kv_tokens));
            json_array_append_new(ranks, j);
        }
        json_object_set_new(root, "ranks", ranks);
        char *s = json_dumps(root, JSON_INDENT(2));
        printf("%s\n", s);
        free(s);
        json_decref(root);
    } else {
        printf("%s: %s, %lld layers, tp=%d, %s ranks, budget %.0f MiB per rank (%s), ctx %lld, kv %s\n\n", model,
               c.arch_name, (long long)c.n_layer, o.tp, o.backend == PLAN_CPU ? "CPU" : "CUDA", mib((double)o.budget),
               budget_src, (long long)o.ctx, dtype_name(o.kv_type));
        printf("%-5s %-9s %-9s %-13s %-15s %10s %10s %10s %10s %10s %10s %10s\n", "rank", "heads", "kv-heads", "ffn cols",
               "vocab rows", "weights", "activ.", "comm", "overhead", "kv", "free", "kv tokens");
        for (int r = 0; r < o.tp; r++) {
            const struct plan_rank *R = &p.ranks[r];
            char h[24], kv[24], ff[24], vb[32];
            snprintf(h, sizeof h, "%lld-%lld", (long long)sp.q_heads[r].begin, (long long)sp.q_heads[r].end);
            snprintf(kv, sizeof kv, "%lld-%lld", (long long)sp.kv_heads[r].begin, (long long)sp.kv_heads[r].end);
            snprintf(ff, sizeof ff, "%lld-%lld", (long long)sp.ff[r].begin, (long long)sp.ff[r].end);
            snprintf(vb, sizeof vb, "%lld-%lld", (long long)sp.vocab[r].begin, (long long)sp.vocab[r].end);
            printf("%-5d %-9s %-9s %-13s %-15s %9.1fM %9.1fM %9.1fM %9.1fM %9.1fM %9.1fM %10lld\n", r, h, kv, ff, vb,
                   mib((double)R->weights), mib((double)R->activations), mib((double)R->comm), mib((double)R->overhead),
                   mib((double)R->kv), mib((double)R->free_bytes), (long long)R->kv_tokens);
        }
        printf("\nKV cache: %lld blocks of %lld tokens per rank = %lld tokens (%.1f sequences of %lld)\n",
               (long long)p.kv_blocks, (long long)o.block_size, (long long)(p.kv_blocks * o.block_size),
               p.blocks_per_seq ? (double)p.kv_blocks / (double)p.blocks_per_seq : 0.0, (long long)o.ctx);
        printf("%s\n", p.fits ? "fits: yes" : "fits: NO");
        if (!p.fits) printf("%s\n", advice);
        if (tensors)
            for (int r = 0; r < o.tp; r++) print_tensors(&c, f, &sp, r);
    }
    status = p.fits ? 0 : 1;
done:
    plan_free(&p);
    shard_plan_free(&sp);
    gguf_close(f);
    return status;
}
