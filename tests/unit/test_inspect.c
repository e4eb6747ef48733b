/* test_inspect.c - the `tpllm synth` and `tpllm inspect` commands, run as a user runs them:
 * inspect's report agrees with the gguf package's view of the same file, synth is
 * deterministic and writes models the config reader accepts, and bad input gets the
 * documented exit status and a message. Needs the tpllm binary ($TPLLM_BIN, set by CTest). */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/config.h"
#include "testutil.h"

static char *tpllm_bin(void) {
    const char *b = getenv("TPLLM_BIN");
    char *p;
    if (b) {
        p = strdup(b);
    } else {
        p = malloc(4096);
        snprintf(p, 4096, "%s/tpllm", TPLLM_BINARY_DIR);
    }
    if (access(p, X_OK) != 0) cr_skip_test("tpllm binary not found at %s (set TPLLM_BIN)", p);
    return p;
}

/* Reads a file into a NUL-terminated string. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Run "tpllm ARGS" through the shell; stdout and stderr are returned (caller frees). */
static int run(const char *args, char **out, char **err) {
    char *bin = tpllm_bin(), *o = tu_tmp_path(".out"), *e = tu_tmp_path(".err");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>'%s'", bin, args, o, e);
    int st = system(cmd);
    char *so = read_text(o), *se = read_text(e);
    unlink(o);
    unlink(e);
    free(o);
    free(e);
    free(bin);
    if (out) *out = so; else free(so);
    if (err) *err = se; else free(se);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *py_dump(const char *path) {
    const char *env = getenv("TPLLM_PYTHON");
    char *py = env ? strdup(env) : tu_src_path(".pydeps/bin/python");
    if (access(py, X_OK) != 0) cr_skip_test("no Python with the gguf package (set TPLLM_PYTHON)");
    char *script = tu_src_path("tests/golden/gguf_dump_json.py"), *tmp = tu_tmp_path(".json");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' --max-array 0 > '%s'", py, script, path, tmp);
    cr_assert_eq(system(cmd), 0, "%s failed", cmd);
    json_error_t je;
    json_t *j = json_load_file(tmp, 0, &je);
    cr_assert_not_null(j, "%s", je.text);
    unlink(tmp);
    free(tmp);
    free(script);
    free(py);
    return j;
}

/* Compare inspect --json with the gguf package's dump of the same file. */
static void check_against_gguf_package(const char *path, json_t *ins, json_t *ref, int top) {
    json_t *ts = json_object_get(ref, "tensors"), *t;
    size_t i, n = json_array_size(ts);
    cr_assert_eq(json_integer_value(json_object_get(ins, "n_tensors")), (json_int_t)n, "%s", path);
    json_int_t total = 0;
    json_array_foreach(ts, i, t) total += json_integer_value(json_object_get(t, "n_bytes"));
    cr_assert_eq(json_integer_value(json_object_get(ins, "tensor_bytes")), total, "%s", path);
    /* Per type: count and bytes. */
    json_t *types = json_object_get(ins, "types"), *ty;
    size_t k;
    json_int_t seen = 0;
    json_array_foreach(types, k, ty) {
        const char *name = json_string_value(json_object_get(ty, "type"));
        json_int_t c = 0, b = 0;
        json_array_foreach(ts, i, t) if (!strcmp(json_string_value(json_object_get(t, "type")), name)) {
            c++;
            b += json_integer_value(json_object_get(t, "n_bytes"));
        }
        cr_assert_eq(json_integer_value(json_object_get(ty, "count")), c, "%s: %s count", path, name);
        cr_assert_eq(json_integer_value(json_object_get(ty, "bytes")), b, "%s: %s bytes", path, name);
        seen += c;
    }
    cr_assert_eq(seen, (json_int_t)n, "%s: the type table misses tensors", path);
    /* The largest tensors: sizes must be the top sizes in the reference, in order. */
    json_t *lg = json_object_get(ins, "largest");
    cr_assert_eq(json_array_size(lg), (size_t)top < n ? (size_t)top : n);
    json_int_t prev = -1;
    json_array_foreach(lg, k, ty) {
        const char *name = json_string_value(json_object_get(ty, "name"));
        json_int_t b = json_integer_value(json_object_get(ty, "bytes")), larger = 0;
        bool found = false;
        json_array_foreach(ts, i, t) {
            json_int_t tb = json_integer_value(json_object_get(t, "n_bytes"));
            if (tb > b) larger++;
            if (!strcmp(json_string_value(json_object_get(t, "name")), name)) {
                found = true;
                cr_assert_eq(tb, b, "%s: %s bytes", path, name);
            }
        }
        cr_assert(found, "%s: inspect lists '%s', unknown to the gguf package", path, name);
        cr_assert_leq(larger, (json_int_t)k, "%s: '%s' is listed at %zu but %lld tensors are larger", path, name, k,
                      (long long)larger);
        cr_assert(prev < 0 || b <= prev);
        prev = b;
    }
    const char *arch = json_string_value(json_object_get(ins, "architecture"));
    json_t *kv = json_object_get(ref, "kv");
    cr_assert_str_eq(arch, json_string_value(json_object_get(json_object_get(kv, "general.architecture"), "value")));
    json_t *h = json_object_get(ins, "hyperparameters");
    cr_assert(json_is_object(h), "%s: %s", path, json_string_value(json_object_get(ins, "config_error")));
    char key[128];
#define KV_INT(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), \
                        json_integer_value(json_object_get(json_object_get(kv, key), "value")))
    cr_assert_eq(json_integer_value(json_object_get(h, "n_layer")), KV_INT("block_count"));
    cr_assert_eq(json_integer_value(json_object_get(h, "n_embd")), KV_INT("embedding_length"));
    cr_assert_eq(json_integer_value(json_object_get(h, "n_head")), KV_INT("attention.head_count"));
    cr_assert_eq(json_integer_value(json_object_get(h, "n_head_kv")), KV_INT("attention.head_count_kv"));
    cr_assert_eq(json_integer_value(json_object_get(h, "n_ff")), KV_INT("feed_forward_length"));
#undef KV_INT
    json_t *toks = json_object_get(kv, "tokenizer.ggml.tokens");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(ins, "tokenizer"), "n_vocab")),
                 json_integer_value(json_object_get(toks, "n")));
}

static json_t *inspect_json(const char *path, int top) {
    char args[4200], *out, *err;
    snprintf(args, sizeof args, "inspect '%s' --json --top %d", path, top);
    int st = run(args, &out, &err);
    cr_assert_eq(st, 0, "tpllm %s exited %d: %s", args, st, err);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    cr_assert_not_null(j, "inspect --json printed invalid JSON (%s): %s", je.text, out);
    free(out);
    free(err);
    return j;
}

Test(inspect, json_report_of_a_synthetic_model_agrees_with_the_gguf_package) {
    char *path = tu_tmp_path(".gguf"), args[4200];
    snprintf(args, sizeof args,
             "synth --arch qwen2 -o '%s' --dim 320 --heads 5 --kv-heads 5 --head-dim 64 --ff 640 --type q8_0 "
             "--embd-type q4_0 --vocab 700 --seed %llu",
             path, (unsigned long long)(tu_seed() % 1000));
    char *err;
    cr_assert_eq(run(args, NULL, &err), 0, "%s", err);
    free(err);
    json_t *ins = inspect_json(path, 4), *ref = py_dump(path);
    check_against_gguf_package(path, ins, ref, 4);
    json_t *h = json_object_get(ins, "hyperparameters");
    cr_assert_eq(json_integer_value(json_object_get(h, "n_head")), 5);
    cr_assert_eq(json_integer_value(json_object_get(h, "head_dim")), 64);
    cr_assert(json_is_true(json_object_get(h, "qkv_bias")));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ins, "tokenizer"), "kind")), "SPM");
    json_decref(ins);
    json_decref(ref);
    unlink(path);
    free(path);
}

/* The reference for the real model: tests/golden/gemma3_tensors.tsv (the tensor table as the
 * gguf package lists it) and gemma3_config.json, both committed with the scripts that made
 * them (reading the 262144-token vocabulary with the gguf package takes about a minute). */
static json_t *gemma_reference(void) {
    char *tsv = tu_src_path("tests/golden/gemma3_tensors.tsv"), *cfg = tu_src_path("tests/golden/gemma3_config.json");
    char *text = read_text(tsv);
    json_error_t je;
    json_t *c = json_load_file(cfg, 0, &je);
    cr_assert_not_null(c, "%s: %s", cfg, je.text);
    json_t *ts = json_array(), *kv = json_object();
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char name[128], dims[128];
        int type;
        long long off, bytes;
        cr_assert_eq(sscanf(line, "%127s %d %127s %lld %lld", name, &type, dims, &off, &bytes), 5, "%s", line);
        json_t *t = json_object();
        json_object_set_new(t, "name", json_string(name));
        json_object_set_new(t, "type", json_string(dtype_name(type)));
        json_object_set_new(t, "n_bytes", json_integer(bytes));
        json_array_append_new(ts, t);
    }
    /* The keys check_against_gguf_package compares, from the config golden. */
#define SET(k, field) { json_t *v = json_object(); \
        json_object_set(v, "value", json_object_get(c, field)); json_object_set_new(kv, k, v); }
    SET("general.architecture", "arch_name");
    SET("gemma3.block_count", "n_layer");
    SET("gemma3.embedding_length", "n_embd");
    SET("gemma3.attention.head_count", "n_head");
    SET("gemma3.attention.head_count_kv", "n_head_kv");
    SET("gemma3.feed_forward_length", "n_ff");
#undef SET
    json_t *tok = json_object();
    json_object_set(tok, "n", json_object_get(c, "n_vocab"));
    json_object_set_new(kv, "tokenizer.ggml.tokens", tok);
    json_t *ref = json_object();
    json_object_set_new(ref, "tensors", ts);
    json_object_set_new(ref, "kv", kv);
    json_decref(c);
    free(text);
    free(tsv);
    free(cfg);
    return ref;
}

Test(inspect, json_report_of_gemma3_270m_agrees_with_the_gguf_package) {
    const char *env = getenv("TPLLM_GEMMA");
    char *model = env ? strdup(env) : tu_src_path("models/gemma-3-270m-q4_k_m.gguf");
    if (access(model, R_OK) != 0) cr_skip_test("Gemma 3 270M not found at %s (set TPLLM_GEMMA)", model);
    json_t *ins = inspect_json(model, 10), *ref = gemma_reference();
    check_against_gguf_package(model, ins, ref, 10);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(ins, "file_type"), "name")), "Q4_K_M");
    json_decref(ins);
    json_decref(ref);
    free(model);
}

Test(inspect, text_report_names_architecture_tokenizer_and_largest_tensors) {
    char *path = tu_tmp_path(".gguf"), args[4200], *out, *err;
    snprintf(args, sizeof args, "synth --arch gemma3 -o '%s' --type q8_0", path);
    cr_assert_eq(run(args, NULL, &err), 0, "%s", err);
    free(err);
    snprintf(args, sizeof args, "inspect '%s' --top 2", path);
    cr_assert_eq(run(args, &out, &err), 0, "%s", err);
    static const char *const want[] = {"architecture:  gemma3", "sliding window  128 tokens on 5 of every 6 layers",
                                       "tokenizer:     SPM", "1024 tokens", "Q8_0", "largest tensors:",
                                       "token_embd.weight", "tied to token_embd"};
    for (size_t i = 0; i < TP_ARRAY_LEN(want); i++)
        cr_assert_not_null(strstr(out, want[i]), "inspect output lacks '%s':\n%s", want[i], out);
    free(out);
    free(err);
    unlink(path);
    free(path);
}

Test(inspect, usage_errors_exit_2_and_bad_files_exit_1_with_the_readers_message) {
    char *out, *err;
    cr_assert_eq(run("inspect", &out, &err), 2);
    cr_assert_not_null(strstr(err, "usage: tpllm inspect FILE"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(run("inspect x.gguf --frobnicate", &out, &err), 2);
    cr_assert_not_null(strstr(err, "unknown option '--frobnicate'"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(run("inspect x.gguf --top", &out, &err), 2);
    free(out);
    free(err);
    cr_assert_eq(run("inspect /nonexistent/model.gguf", &out, &err), 1);
    cr_assert_not_null(strstr(err, "/nonexistent/model.gguf"), "%s", err);
    free(out);
    free(err);
    char *path = tu_tmp_path(".gguf");
    cr_assert_eq(tu_write_file(path, "not a gguf file at all, just text\n", 35), 0);
    char args[4200];
    snprintf(args, sizeof args, "inspect '%s'", path);
    cr_assert_eq(run(args, &out, &err), 1);
    cr_assert_not_null(strstr(err, path), "the message does not name the file: %s", err);
    free(out);
    free(err);
    unlink(path);
    free(path);
}

Test(synth, the_same_seed_gives_the_same_file_and_another_seed_another) {
    char *a = tu_tmp_path(".gguf"), *b = tu_tmp_path(".gguf"), *c = tu_tmp_path(".gguf"), args[4200], *err;
    unsigned long long seed = tu_seed() % 100000;
    const char *fmt = "synth --arch llama -o '%s' --type q4_0 --layers 3 --heads 5 --kv-heads 1 --head-dim 64 "
                      "--dim 320 --ff 160 --seed %llu";
    snprintf(args, sizeof args, fmt, a, seed);
    cr_assert_eq(run(args, NULL, &err), 0, "%s", err);
    free(err);
    snprintf(args, sizeof args, fmt, b, seed);
    cr_assert_eq(run(args, NULL, &err), 0, "%s", err);
    free(err);
    snprintf(args, sizeof args, fmt, c, seed + 1);
    cr_assert_eq(run(args, NULL, &err), 0, "%s", err);
    free(err);
    size_t na, nb, nc;
    void *pa = tu_read_file(a, &na), *pb = tu_read_file(b, &nb), *pc = tu_read_file(c, &nc);
    cr_assert(na == nb && !memcmp(pa, pb, na), "same seed, different files");
    cr_assert(na == nc && memcmp(pa, pc, na), "different seeds, identical files");
    free(pa);
    free(pb);
    free(pc);
    unlink(a);
    unlink(b);
    unlink(c);
    free(a);
    free(b);
    free(c);
}

Test(synth, models_of_each_architecture_load_with_the_requested_shape) {
    static const char *const arch[] = {"llama", "qwen2", "gemma3"};
    static const char *const extra[] = {"--rope-scaling llama3 --rope-base 500000", "--rope-scaling yarn --tied",
                                        "--rope-scaling linear --rope-factor 8"};
    for (int a = 0; a < 3; a++) {
        char *path = tu_tmp_path(".gguf"), args[4200], *err;
        snprintf(args, sizeof args,
                 "synth --arch %s -o '%s' --dim 256 --heads 3 --kv-heads 3 --head-dim 256 --ff 512 --layers 7 "
                 "--vocab 400 --ctx 8192 --type q4_k %s",
                 arch[a], path, extra[a]);
        cr_assert_eq(run(args, NULL, &err), 0, "%s: %s", args, err);
    free(err);
        struct gguf_file *f;
        tp_err e = {0};
        cr_assert_eq(gguf_open(&f, path, &e), 0, "%s", e.msg);
        struct model_config c;
        cr_assert_eq(model_config_load(&c, f, &e), 0, "%s", e.msg);
        cr_assert_str_eq(c.arch_name, arch[a]);
        cr_assert(c.n_embd == 256 && c.n_head == 3 && c.n_head_kv == 3 && c.head_dim == 256 && c.n_ff == 512 &&
                  c.n_layer == 7 && c.n_vocab == 400 && c.n_ctx_train == 8192);
        cr_assert_eq(c.rope_scaling, a == 0 ? ROPE_SCALING_LLAMA3 : a == 1 ? ROPE_SCALING_YARN : ROPE_SCALING_LINEAR);
        cr_assert_eq(c.tied_embeddings, a != 0);
        cr_assert_eq(gguf_find_tensor(f, "blk.6.ffn_down.weight")->type, DTYPE_Q4_K);
        gguf_close(f);
        unlink(path);
        free(path);
    }
}

Test(synth, zeros_write_a_llama_3_8b_shaped_file_sparsely) {
    char *path = tu_tmp_path(".gguf"), args[4200], *err;
    snprintf(args, sizeof args,
             "synth --arch llama -o '%s' --dim 4096 --layers 32 --heads 32 --kv-heads 8 --ff 14336 --vocab 128256 "
             "--ctx 8192 --rope-base 500000 --rope-scaling llama3 --type f16 --zeros",
             path);
    int st_run = run(args, NULL, &err);
    /* Everything is measured before any assertion so that the 15 GiB file never outlives the test. */
    struct stat st = {0};
    int st_stat = stat(path, &st);
    struct gguf_file *f = NULL;
    struct model_config c = {0};
    tp_err e = {0};
    int st_open = st_stat == 0 ? gguf_open(&f, path, &e) : -1, st_cfg = -1;
    if (f) st_cfg = model_config_load(&c, f, &e);
    gguf_close(f);
    unlink(path);
    free(path);
    cr_assert_eq(st_run, 0, "%s", err);
    free(err);
    cr_assert_eq(st_stat, 0);
    cr_assert_gt(st.st_size, 14ll << 30, "a Llama-3-8B F16 file has %lld bytes", (long long)st.st_size);
    cr_assert_lt((long long)st.st_blocks * 512, 64ll << 20, "the sparse file occupies %lld bytes on disk",
                 (long long)st.st_blocks * 512);
    cr_assert_eq(st_open, 0, "%s", e.msg);
    cr_assert_eq(st_cfg, 0, "%s", e.msg);
    cr_assert(c.n_layer == 32 && c.n_head_kv == 8 && c.n_vocab == 128256);
}

Test(synth, a_shape_the_type_cannot_hold_exits_2_naming_the_flag_and_sizes_that_work) {
    char *err, *out;
    cr_assert_eq(run("synth --arch llama -o /tmp/never.gguf --type q4_k --ff 700", &out, &err), 2);
    cr_assert_not_null(strstr(err, "--ff"), "%s", err);
    cr_assert_not_null(strstr(err, "512 or 768"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(run("synth --arch llama -o /tmp/never.gguf --heads 6 --kv-heads 4 --head-dim 32", &out, &err), 2);
    cr_assert_not_null(strstr(err, "--heads 6 is not a multiple of --kv-heads 4"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(run("synth --arch mamba -o /tmp/never.gguf", &out, &err), 2);
    cr_assert_not_null(strstr(err, "llama, qwen2 or gemma3"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(run("synth --arch llama", &out, &err), 2);
    free(out);
    free(err);
    cr_assert_eq(run("synth --arch llama -o /nonexistent-dir/m.gguf", &out, &err), 1);
    cr_assert_not_null(strstr(err, "/nonexistent-dir/m.gguf"), "%s", err);
    free(out);
    free(err);
}
