/* cmd_generate.c - `tpllm generate`: stream a completion of a prompt to stdout. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "boot.h"
#include "commands.h"
#include "runtime/chat.h"
#include "runtime/generate.h"
#include "sampling_opts.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: [mpirun -np N] tpllm generate -m FILE -p PROMPT [options]\n\n"
            "  -p, --prompt TEXT       the prompt\n"
            "  -f, --file PATH         read the prompt from a file\n"
            "  -n, --n-predict N       tokens to generate (default 128; -1 = until the context is full)\n"
            "  --chat                  format the prompt as a user message with the model's chat template\n"
            "  --system TEXT           system message (with --chat)\n"
            "  --chat-format F         force a chat format: gemma, llama3, chatml\n"
            "  --ignore-eos            do not stop at end-of-generation tokens\n"
            "  --no-bos                do not add BOS even if the model asks for it\n"
            "  --show-tokens           print the prompt and generated token ids to stderr\n"
            "  --dump-logits FILE      write the full logits (float32, n_vocab values) of the last prompt position\n"
            "%s%s",
            boot_opts_usage, sampling_opts_usage);
}

static int emit_stdout(void *user, const char *text, size_t len) {
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            } else {
                buf = nb;
            }
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

struct gen_args {
    struct boot_opts bo;
    struct sampling_opts so;
    const char *prompt, *prompt_file, *system, *chat_format, *dump_logits;
    int64_t n_predict;
    bool chat, ignore_eos, no_bos, show_tokens;
};

static int parse(struct gen_args *a, int argc, char **argv) {
    boot_opts_default(&a->bo);
    sampling_opts_default(&a->so);
    a->n_predict = 128;
    for (int i = 1; i < argc; i++) {
        boot_config_at(argv[i]);
        int r = boot_parse_opt(&a->bo, argc, argv, &i);
        if (r == 0) r = sampling_parse_opt(&a->so, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(o, "--chat")) a->chat = true;
        else if (!strcmp(o, "--ignore-eos")) a->ignore_eos = true;
        else if (!strcmp(o, "--no-bos")) a->no_bos = true;
        else if (!strcmp(o, "--show-tokens")) a->show_tokens = true;
        else if (v && (!strcmp(o, "-p") || !strcmp(o, "--prompt"))) a->prompt = argv[++i];
        else if (v && (!strcmp(o, "-f") || !strcmp(o, "--file"))) a->prompt_file = argv[++i];
        else if (v && !strcmp(o, "--system")) a->system = argv[++i];
        else if (v && !strcmp(o, "--chat-format")) a->chat_format = argv[++i];
        else if (v && !strcmp(o, "--dump-logits")) a->dump_logits = argv[++i];
        else if (v && (!strcmp(o, "-n") || !strcmp(o, "--n-predict"))) {
            char *end;
            long long n = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || n < -1) {
                fprintf(stderr, "tpllm generate: -n expects an integer >= -1, got '%s'\n", argv[i]);
                return 2;
            }
            a->n_predict = n;
        } else {
            fprintf(stderr, "tpllm generate: unknown or incomplete option '%s'. Run 'tpllm generate --help'.\n", o);
            return 2;
        }
    }
    boot_config_at(NULL);
    if (!a->bo.model) {
        fprintf(stderr, "tpllm generate: no model given; pass -m FILE.gguf (see 'tpllm generate --help')\n");
        return 2;
    }
    if (!a->prompt && !a->prompt_file) {
        fprintf(stderr, "tpllm generate: no prompt given; pass -p TEXT or -f FILE\n");
        return 2;
    }
    return 0;
}

/* The chat template to use: --chat-format when given, else the one the model ships. */
static int pick_template(const struct gen_args *a, const struct gguf_file *f, struct chat_template *t, tp_err *e) {
    if (a->chat_format) return chat_format_parse(a->chat_format, t, e);
    struct gguf_str tmpl = {0};
    int rc = gguf_get_str(f, "tokenizer.chat_template", &tmpl, e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    return chat_detect(tmpl.ptr, rc ? 0 : (size_t)tmpl.len, t, e);
}

/* Rank 0: the prompt's token ids (chat-formatted when asked). */
static int build_prompt(const struct gen_args *a, struct boot *b, const char *text, int32_t **ids, int64_t *n, tp_err *e) {
    char *formatted = NULL;
    bool add_special = !a->no_bos;
    int rc;
    if (a->chat) {
        struct chat_template t;
        struct chat_message msgs[2];
        size_t nm = 0;
        if (a->system) msgs[nm++] = (struct chat_message){.role = "system", .content = a->system};
        msgs[nm++] = (struct chat_message){.role = "user", .content = text};
        size_t flen = 0;
        bool bos_in_text = false;
        int32_t bos = tokenizer_bos(b->tok);
        size_t bos_len = 0;
        const char *bos_text = bos >= 0 ? tokenizer_token_text(b->tok, bos, &bos_len) : NULL;
        char bos_buf[64] = {0};
        if (bos_text && bos_len < sizeof bos_buf) memcpy(bos_buf, bos_text, bos_len);
        if ((rc = pick_template(a, b->file, &t, e))) return rc;
        rc = chat_apply(&t, msgs, nm, true, bos_text ? bos_buf : NULL, &formatted, &flen, &bos_in_text, e);
        if (rc) return rc;
        if (bos_in_text) add_special = false;
        text = formatted;
    }
    int64_t need = 0;
    size_t len = strlen(text);
    rc = tokenizer_encode(b->tok, text, len, add_special, a->chat, NULL, 0, &need, NULL);
    *ids = malloc((size_t)(need + 1) * sizeof(int32_t));
    if (!*ids) rc = tp_errf(e, TP_ENOMEM, "out of memory");
    else rc = tokenizer_encode(b->tok, text, len, add_special, a->chat, *ids, need + 1, n, e);
    free(formatted);
    return rc;
}

/* Rank 0: the logits of the prompt's last position, gathered from every rank, to a file. */
static int dump_logits(struct boot *b, const char *path, const int32_t *ids, int64_t n, tp_err *e) {
    int64_t V = b->cfg.n_vocab, chunk = engine_max_batch(b->engine);
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *pos = malloc((size_t)chunk * sizeof(int32_t)), *seqv = malloc((size_t)chunk * sizeof(int32_t));
    int rc = 0, seq = -1;
    if (!logits || !pos || !seqv) rc = tp_errf(e, TP_ENOMEM, "out of memory");
    if (rc == 0 && (seq = engine_seq_open(b->engine, n, e)) < 0) rc = seq;
    for (int64_t s = 0; rc == 0 && s < n; s += chunk) {
        int64_t m = TP_MIN(chunk, n - s);
        for (int64_t i = 0; i < m; i++) {
            pos[i] = (int32_t)(s + i);
            seqv[i] = seq;
        }
        int32_t row = (int32_t)(m - 1);
        rc = engine_logits(b->engine, m, ids + s, pos, seqv, s + m == n ? 1 : 0, &row, logits, e);
    }
    if (seq >= 0) engine_seq_close(b->engine, seq);
    if (rc == 0) {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)V, f) != (size_t)V)
            rc = tp_errf(e, TP_EIO, "cannot write the logits to '%s'; check the path and free space", path);
        if (f) fclose(f);
    }
    free(logits);
    free(pos);
    free(seqv);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    struct gen_args a;
    memset(&a, 0, sizeof a);
    int prc = parse(&a, argc, argv);
    if (prc) return prc == 1 ? 0 : prc;
    tp_err e = {0};
    if (sampler_params_validate(&a.so.sp, &e)) {
        fprintf(stderr, "tpllm generate: %s\n", e.msg);
        return 2;
    }
    char *file_prompt = NULL;
    if (a.prompt_file) {
        file_prompt = read_file(a.prompt_file);
        if (!file_prompt) {
            fprintf(stderr, "tpllm generate: cannot read the prompt file '%s'; check the path\n", a.prompt_file);
            return 2;
        }
    }
    a.bo.eng.n_cand = (int)TP_MAX((int64_t)a.bo.eng.n_cand, sampler_n_cand(&a.so.sp));
    if (boot_mpi_init(&argc, &argv)) return 1;
    struct boot b;
    int rc = boot_start(&b, &a.bo, &e);
    if (rc) {
        if (b.rank == 0) fprintf(stderr, "tpllm: %s\n", e.msg);
        boot_finish(&b);
        boot_mpi_finalize();
        free(file_prompt);
        return 1;
    }
    int status = 0;
    if (b.rank != 0) {
        rc = engine_worker_loop(b.engine, &e);
        if (rc) comm_abort(b.comm, 1, e.msg);
    } else {
        int32_t *ids = NULL;
        int64_t n = 0;
        struct gen_result res = {0};
        rc = build_prompt(&a, &b, file_prompt ? file_prompt : a.prompt, &ids, &n, &e);
        if (rc == 0 && a.show_tokens) {
            fprintf(stderr, "prompt tokens:");
            for (int64_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
        }
        if (rc == 0 && a.dump_logits) {
            rc = dump_logits(&b, a.dump_logits, ids, n, &e);
            if (rc == TP_ECOMM) comm_abort(b.comm, 1, e.msg);
        }
        if (rc == 0) {
            struct gen_request req = {.prompt = ids, .n_prompt = n, .max_tokens = a.n_predict, .sp = a.so.sp,
                                      .stops = a.so.stops, .n_stops = a.so.n_stops, .ignore_eos = a.ignore_eos};
            rc = gen_run(b.engine, b.tok, &req, emit_stdout, NULL, &res, &e);
            if (rc == TP_ECOMM) comm_abort(b.comm, 1, e.msg);
        }
        if (rc == 0) {
            printf("\n");
            fflush(stdout);
            if (a.show_tokens) {
                fprintf(stderr, "tokens:");
                for (int64_t i = 0; i < res.n_gen; i++) fprintf(stderr, " %d", res.tokens[i]);
                fprintf(stderr, "\n");
            }
            fprintf(stderr, "prompt: %lld tokens in %.3f s (%.2f tok/s) | generation: %lld tokens in %.3f s (%.2f tok/s)\n",
                    (long long)res.n_prompt, res.t_prompt, res.t_prompt > 0 ? (double)res.n_prompt / res.t_prompt : 0.0,
                    (long long)res.n_gen, res.t_gen, res.t_gen > 0 ? (double)res.n_gen / res.t_gen : 0.0);
            if (b.size > 1) {
                struct comm_stats cs = comm_get_stats(b.comm);
                int64_t steps = res.n_gen + (res.n_prompt + engine_max_batch(b.engine) - 1) / engine_max_batch(b.engine);
                fprintf(stderr, "collectives on rank 0: %.3f s in %lld calls, %.2f ms per step\n", cs.seconds,
                        (long long)cs.calls, steps > 0 ? 1e3 * cs.seconds / (double)steps : 0.0);
            }
        } else {
            fprintf(stderr, "tpllm generate: %s\n", e.msg);
            status = 1;
        }
        free(res.tokens);
        free(ids);
        tp_err e2 = {0};
        if (engine_shutdown(b.engine, &e2)) comm_abort(b.comm, 1, e2.msg);
    }
    boot_finish(&b);
    boot_mpi_finalize();
    free(file_prompt);
    return status;
}
