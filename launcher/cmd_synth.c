/* cmd_synth.c - `tpllm synth`: write a synthetic llama / qwen2 / gemma3 GGUF model with random weights.
 *
 * Chapters: options, the built-in SentencePiece-style vocabulary, the weights (seeded
 * generators), the metadata and tensor list per architecture, the command.
 *
 * The metadata keys and tensor names/shapes are those llama.cpp's convert_hf_to_gguf.py
 * writes for each architecture, so llama.cpp (and llama-cpp-python) can load the file.
 * Every random value is a function of (--seed, tensor name, row), so the same flags
 * always give a byte-identical file, whatever the chunking of the writer. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "runtime/gguf.h"
#include "runtime/gguf_writer.h"

/* ---- options ---- */

enum synth_arch { SYN_LLAMA, SYN_QWEN2, SYN_GEMMA3 };
enum synth_rope { SYN_ROPE_NONE, SYN_ROPE_LINEAR, SYN_ROPE_YARN, SYN_ROPE_LLAMA3 };

struct synth_opts {
    enum synth_arch arch;
    const char *arch_name;
    const char *out;
    int64_t dim, layers, heads, kv_heads, head_dim, ff, vocab, ctx, swa;
    enum dtype type, embd_type, output_type;
    bool embd_type_set, output_type_set;
    uint64_t seed;
    bool zeros, tied, untied;
    float rope_base, rope_factor, norm_eps;
    int64_t rope_orig_ctx;
    enum synth_rope rope;
    const char *vocab_from;
};

static void usage(FILE *f) {
    fprintf(f,
            "usage: tpllm synth --arch llama|qwen2|gemma3 -o FILE [options]\n"
            "\n"
            "Write a synthetic model with random (or zero) weights, shaped and labelled as llama.cpp\n"
            "expects for the architecture.\n"
            "\n"
            "shape:\n"
            "  --dim N            hidden size (default 256)\n"
            "  --layers N         transformer blocks (default 2; gemma3: 6)\n"
            "  --heads N          query heads (default 8; gemma3: 4)\n"
            "  --kv-heads N       key/value heads, dividing --heads (default 4; qwen2: 2; gemma3: 1)\n"
            "  --head-dim N       per-head width (default dim/heads)\n"
            "  --ff N             FFN hidden size (default 768)\n"
            "  --vocab N          vocabulary size, at least 259 (default 1024)\n"
            "  --ctx N            training context length (default 2048)\n"
            "  --sliding-window N gemma3 sliding-window length (default 128)\n"
            "types (f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k):\n"
            "  --type T           matrices (default f16)\n"
            "  --embd-type T      token_embd.weight (default: --type)\n"
            "  --output-type T    output.weight (default: --type)\n"
            "weights:\n"
            "  --seed N           random seed (default 1); the same seed gives the same file\n"
            "  --zeros            all weights zero, written sparsely (no disk, for memory planning)\n"
            "  --tied             no output.weight: the LM head is token_embd (default for gemma3)\n"
            "  --untied           write output.weight (default for llama and qwen2)\n"
            "rope:\n"
            "  --rope-base F      rope theta (default 10000; gemma3: 1000000)\n"
            "  --rope-scaling S   none | linear | yarn | llama3 (default none)\n"
            "  --rope-factor F    scaling factor (default 8 for llama3, 2 otherwise)\n"
            "  --rope-orig-ctx N  original context for yarn / llama3 (default 8192 for llama3, ctx/factor)\n"
            "other:\n"
            "  --norm-eps F       RMSNorm epsilon (default 1e-5; gemma3: 1e-6)\n"
            "  --vocab-from GGUF  copy the tokenizer of another model (sets --vocab to its size)\n");
}

/* Integers up to 2^31 - 1: every size is stored as u32 in the file. */
static int parse_i64(const char *flag, const char *s, int64_t lo, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > INT32_MAX) {
        fprintf(stderr, "tpllm synth: %s expects an integer from %lld to %d, got '%s'\n", flag, (long long)lo,
                INT32_MAX, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_f32(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || !isfinite(v)) {
        fprintf(stderr, "tpllm synth: %s expects a positive number, got '%s'\n", flag, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_type(const char *flag, const char *s, enum dtype *out) {
    static const struct { const char *name; enum dtype t; } types[] = {
        {"f32", DTYPE_F32},   {"f16", DTYPE_F16},   {"bf16", DTYPE_BF16}, {"q8_0", DTYPE_Q8_0},
        {"q4_0", DTYPE_Q4_0}, {"q4_1", DTYPE_Q4_1}, {"q5_0", DTYPE_Q5_0}, {"q5_1", DTYPE_Q5_1},
        {"q2_k", DTYPE_Q2_K}, {"q3_k", DTYPE_Q3_K}, {"q4_k", DTYPE_Q4_K}, {"q5_k", DTYPE_Q5_K},
        {"q6_k", DTYPE_Q6_K},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(types); i++)
        if (!strcasecmp(s, types[i].name)) {
            *out = types[i].t;
            return 0;
        }
    fprintf(stderr, "tpllm synth: %s '%s' is not a type tpllm writes; use one of f32 f16 bf16 q8_0 q4_0 q4_1 "
                    "q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k\n", flag, s);
    return -1;
}

/* Fill o from argv. Returns 0, 1 for --help, or -1 after printing what is wrong. */
static int parse_args(int argc, char **argv, struct synth_opts *o) {
    enum { O_DIM = 256, O_LAYERS, O_HEADS, O_KV, O_HD, O_FF, O_VOCAB, O_CTX, O_SWA, O_TYPE, O_ETYPE, O_OTYPE,
           O_SEED, O_ZEROS, O_TIED, O_UNTIED, O_RBASE, O_RSCALE, O_RFACTOR, O_RORIG, O_EPS, O_VFROM, O_ARCH };
    static const struct option lo[] = {
        {"arch", 1, 0, O_ARCH},         {"output", 1, 0, 'o'},        {"dim", 1, 0, O_DIM},
        {"layers", 1, 0, O_LAYERS},     {"heads", 1, 0, O_HEADS},     {"kv-heads", 1, 0, O_KV},
        {"head-dim", 1, 0, O_HD},       {"ff", 1, 0, O_FF},           {"vocab", 1, 0, O_VOCAB},
        {"ctx", 1, 0, O_CTX},           {"sliding-window", 1, 0, O_SWA}, {"type", 1, 0, O_TYPE},
        {"embd-type", 1, 0, O_ETYPE},   {"output-type", 1, 0, O_OTYPE}, {"seed", 1, 0, O_SEED},
        {"zeros", 0, 0, O_ZEROS},       {"tied", 0, 0, O_TIED},       {"untied", 0, 0, O_UNTIED},
        {"rope-base", 1, 0, O_RBASE},   {"rope-scaling", 1, 0, O_RSCALE}, {"rope-factor", 1, 0, O_RFACTOR},
        {"rope-orig-ctx", 1, 0, O_RORIG}, {"norm-eps", 1, 0, O_EPS},  {"vocab-from", 1, 0, O_VFROM},
        {"help", 0, 0, 'h'},            {0, 0, 0, 0},
    };
    int64_t v = 0;
    float f = 0;
    const char *rscale = "none";
    memset(o, 0, sizeof *o);
    o->dim = o->layers = o->heads = o->kv_heads = o->head_dim = o->ff = o->vocab = o->ctx = o->swa = -1;
    o->rope_orig_ctx = -1;
    o->type = DTYPE_F16;
    o->seed = 1;
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "o:h", lo, NULL)) != -1;) {
        int bad = 0;
        switch (c) {
        case 'h': usage(stdout); return 1;
        case 'o': o->out = optarg; break;
        case O_ARCH: o->arch_name = optarg; break;
        case O_DIM: bad = parse_i64("--dim", optarg, 1, &o->dim); break;
        case O_LAYERS: bad = parse_i64("--layers", optarg, 1, &o->layers); break;
        case O_HEADS: bad = parse_i64("--heads", optarg, 1, &o->heads); break;
        case O_KV: bad = parse_i64("--kv-heads", optarg, 1, &o->kv_heads); break;
        case O_HD: bad = parse_i64("--head-dim", optarg, 2, &o->head_dim); break;
        case O_FF: bad = parse_i64("--ff", optarg, 1, &o->ff); break;
        case O_VOCAB: bad = parse_i64("--vocab", optarg, 1, &o->vocab); break;
        case O_CTX: bad = parse_i64("--ctx", optarg, 1, &o->ctx); break;
        case O_SWA: bad = parse_i64("--sliding-window", optarg, 1, &o->swa); break;
        case O_TYPE: bad = parse_type("--type", optarg, &o->type); break;
        case O_ETYPE: bad = parse_type("--embd-type", optarg, &o->embd_type); o->embd_type_set = true; break;
        case O_OTYPE: bad = parse_type("--output-type", optarg, &o->output_type); o->output_type_set = true; break;
        case O_SEED: bad = parse_i64("--seed", optarg, 0, &v); o->seed = (uint64_t)v; break;
        case O_ZEROS: o->zeros = true; break;
        case O_TIED: o->tied = true; break;
        case O_UNTIED: o->untied = true; break;
        case O_RBASE: bad = parse_f32("--rope-base", optarg, &o->rope_base); break;
        case O_RSCALE: rscale = optarg; break;
        case O_RFACTOR: bad = parse_f32("--rope-factor", optarg, &o->rope_factor); break;
        case O_RORIG: bad = parse_i64("--rope-orig-ctx", optarg, 1, &o->rope_orig_ctx); break;
        case O_EPS: bad = parse_f32("--norm-eps", optarg, &f); o->norm_eps = f; break;
        case O_VFROM: o->vocab_from = optarg; break;
        case ':':
            fprintf(stderr, "tpllm synth: %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "tpllm synth: unknown option '%s'\n", argv[optind - 1]);
            return -1;
        }
        if (bad) return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "tpllm synth: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->arch_name || !o->out) {
        fprintf(stderr, "tpllm synth: --arch and -o are required\n");
        return -1;
    }
    if (!strcmp(o->arch_name, "llama")) o->arch = SYN_LLAMA;
    else if (!strcmp(o->arch_name, "qwen2")) o->arch = SYN_QWEN2;
    else if (!strcmp(o->arch_name, "gemma3")) o->arch = SYN_GEMMA3;
    else {
        fprintf(stderr, "tpllm synth: --arch '%s' is not supported; use llama, qwen2 or gemma3\n", o->arch_name);
        return -1;
    }
    if (!strcmp(rscale, "none")) o->rope = SYN_ROPE_NONE;
    else if (!strcmp(rscale, "linear")) o->rope = SYN_ROPE_LINEAR;
    else if (!strcmp(rscale, "yarn")) o->rope = SYN_ROPE_YARN;
    else if (!strcmp(rscale, "llama3")) o->rope = SYN_ROPE_LLAMA3;
    else {
        fprintf(stderr, "tpllm synth: --rope-scaling '%s' is not one of none, linear, yarn, llama3\n", rscale);
        return -1;
    }
    if (o->tied && o->untied) {
        fprintf(stderr, "tpllm synth: --tied and --untied contradict each other; give one\n");
        return -1;
    }
    return 0;
}

/* Apply per-architecture defaults and check that the shape can be written. */
static int finish_opts(struct synth_opts *o) {
    bool g = o->arch == SYN_GEMMA3;
#define DEF(field, val) if (o->field < 0) o->field = (val)
    DEF(dim, 256);
    DEF(layers, g ? 6 : 2);
    DEF(heads, g ? 4 : 8);
    DEF(kv_heads, g ? 1 : o->arch == SYN_QWEN2 ? 2 : 4);
    DEF(ff, 768);
    DEF(vocab, 1024);
    DEF(ctx, 2048);
    DEF(swa, 128);
#undef DEF
    if (o->heads % o->kv_heads) {
        fprintf(stderr, "tpllm synth: --heads %lld is not a multiple of --kv-heads %lld; use a divisor of %lld\n",
                (long long)o->heads, (long long)o->kv_heads, (long long)o->heads);
        return -1;
    }
    if (o->head_dim < 0) {
        if (o->dim % o->heads) {
            fprintf(stderr, "tpllm synth: --dim %lld is not divisible by --heads %lld; give --head-dim too\n",
                    (long long)o->dim, (long long)o->heads);
            return -1;
        }
        o->head_dim = o->dim / o->heads;
    }
    if (o->head_dim % 2) {
        fprintf(stderr, "tpllm synth: the head width %lld is odd; rope needs an even --head-dim\n",
                (long long)o->head_dim);
        return -1;
    }
    if (!o->embd_type_set) o->embd_type = o->type;
    if (!o->output_type_set) o->output_type = o->type;
    if (!o->tied && !o->untied) o->tied = g;
    if (o->rope_base == 0) o->rope_base = g ? 1000000.0f : 10000.0f;
    if (o->norm_eps == 0) o->norm_eps = g ? 1e-6f : 1e-5f;
    if (o->rope_factor == 0) o->rope_factor = o->rope == SYN_ROPE_LLAMA3 ? 8.0f : 2.0f;
    if (o->rope_orig_ctx < 0)
        o->rope_orig_ctx = o->rope == SYN_ROPE_LLAMA3 ? 8192 : TP_MAX((int64_t)1, (int64_t)(o->ctx / o->rope_factor));
    if (o->rope == SYN_ROPE_LLAMA3 && o->arch != SYN_LLAMA) {
        fprintf(stderr, "tpllm synth: --rope-scaling llama3 exists only for --arch llama\n");
        return -1;
    }
    /* Row lengths: token_embd, attn_q/k/v, ffn_gate/up and output hold --dim values per
     * row; attn_output holds heads*head_dim; ffn_down holds --ff. */
    struct { const char *what; int64_t n; enum dtype t; } rows[] = {
        {"--dim (row length of token_embd.weight)", o->dim, o->embd_type},
        {"--dim (row length of attn_q/k/v and ffn_gate/up)", o->dim, o->type},
        {"--heads x --head-dim (row length of attn_output.weight)", o->heads * o->head_dim, o->type},
        {"--ff (row length of ffn_down.weight)", o->ff, o->type},
        {"--dim (row length of output.weight)", o->dim, o->tied ? o->embd_type : o->output_type},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(rows); i++) {
        int64_t b = dtype_block(rows[i].t);
        if (rows[i].n % b) {
            long long lo = (long long)(rows[i].n / b * b), hi = lo + (long long)b;
            char eg[64];
            if (lo) snprintf(eg, sizeof eg, "%lld or %lld", lo, hi);
            else snprintf(eg, sizeof eg, "%lld", hi);
            fprintf(stderr,
                    "tpllm synth: %s = %lld is not a multiple of %lld, the block size of %s; use a multiple of "
                    "%lld (e.g. %s), or a type with 32-value blocks (q8_0, q4_0, f16, ...)\n",
                    rows[i].what, (long long)rows[i].n, (long long)b, dtype_name(rows[i].t), (long long)b, eg);
            return -1;
        }
    }
    return 0;
}

/* ---- the built-in vocabulary ----
 *
 * A SentencePiece-style ("llama") vocabulary: <unk>, <s>, </s>, the 256 byte tokens
 * <0x00>..<0xFF>, then "▁" and the printable ASCII characters (most frequent in the
 * corpus first), then pieces learned by byte-pair merging on the paragraph below (each
 * merge joins the most frequent adjacent pair; a piece's score is minus its rank, so
 * earlier merges win), then <unusedN> fillers up to --vocab entries. Words carry SentencePiece's "▁" prefix,
 * so "the cat" tokenizes into "▁the" and "▁cat" once those merges exist. */

static const char corpus[] =
    "The river runs past the old mill and through the small town, where people have lived for a long "
    "time. In the morning the market opens early, and farmers bring bread, cheese, apples and fresh "
    "milk from the hills. Children walk to school along the water while their parents start the day's "
    "work. There is a library near the bridge with books about history, science, music and the stars; "
    "it is one of the places that everyone in the town likes to visit. When the weather is good, the "
    "teacher takes the class outside to read under the trees and to talk about what they have learned. "
    "Many of the houses were built more than a hundred years ago, but some are new, and the streets "
    "between them are quiet at night. The first question a visitor asks is often about the mill: who "
    "built it, why it stopped working, and whether it will ever turn again. Nobody knows the whole "
    "story. Some say that a family from the north came here with very little money and a great deal of "
    "hope, and that they made the wheel themselves. Others believe the town council paid for it after "
    "a hard winter, because the people needed work and flour. Both stories may be true. What is certain "
    "is that the mill gave the town its name, its first school and its first road to the city. Today "
    "the building holds a small museum, a cafe and a room where young artists show their paintings. On "
    "a summer evening you can sit by the open window, drink a cup of tea, and watch the light change "
    "over the water. It is a simple thing, but it is one of the reasons people come back. The town is "
    "not rich, and it is not famous, yet it has something that larger places often lose: the time to "
    "listen, to help a neighbour, and to remember. If you ask an old man at the station how long he has "
    "lived there, he will smile and say that he was born in the house by the river, that his father and "
    "his grandfather worked in the mill, and that he has never wanted to live anywhere else. Then he "
    "will tell you the way to the bridge, and he will probably tell you a story as well.";

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's word boundary */
enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_UNUSED = 5, TOK_BYTE = 6 };

struct vocab {
    char **text;     /* [n] NUL-terminated pieces */
    float *score;    /* [n] */
    int32_t *type;   /* [n] */
    int64_t n, cap;
};

static int vocab_add(struct vocab *v, const char *s, size_t len, float score, int32_t type) {
    if (v->n == v->cap) return 0; /* full: the caller stops adding */
    char *t = malloc(len + 1);
    if (!t) return -1;
    memcpy(t, s, len);
    t[len] = '\0';
    v->text[v->n] = t;
    v->score[v->n] = score;
    v->type[v->n] = type;
    v->n++;
    return 0;
}

static int64_t vocab_find(const struct vocab *v, const char *s, int64_t from) {
    for (int64_t i = from; i < v->n; i++)
        if (!strcmp(v->text[i], s)) return i;
    return -1;
}

static void vocab_free(struct vocab *v) {
    for (int64_t i = 0; i < v->n; i++) free(v->text[i]);
    free(v->text);
    free(v->score);
    free(v->type);
}

/* A distinct word of the corpus as a sequence of piece ids, with its count. */
struct bpe_word {
    int64_t *sym;
    int64_t n;
    int64_t count;
};

struct bpe_pair {
    int64_t a, b, count;
};

static int pair_cmp(const void *x, const void *y) {
    const struct bpe_pair *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    if (p->b != q->b) return p->b < q->b ? -1 : 1;
    return 0;
}

/* Split the corpus into distinct words with counts, each as character pieces. A word is a
 * run of letters, digits and apostrophes, with the "▁" prefix when a space (or the start)
 * precedes it; punctuation stays a piece of its own, so "cheese," is "▁cheese" + ",". */
static int bpe_words(struct vocab *v, int64_t first_piece, struct bpe_word **out, int64_t *n_out) {
    struct bpe_word *w = NULL;
    int64_t n = 0;
    char **seen = NULL;
    const char *p = corpus;
    int rc = -1;
    while (*p) {
        bool space = p == corpus || p[-1] == ' ';
        size_t len = 0;
        while (p[len] && (isalnum((unsigned char)p[len]) || p[len] == '\'')) len++;
        if (!len) {
            p++;
            continue;
        }
        char word[64];
        size_t wl = len < sizeof word - 4 ? len : sizeof word - 4, pre = space ? 3 : 0;
        memcpy(word, SPM_SPACE, pre);
        memcpy(word + pre, p, wl);
        word[pre + wl] = '\0';
        p += len;
        int64_t k = 0;
        while (k < n && strcmp(seen[k], word)) k++;
        if (k < n) {
            w[k].count++;
            continue;
        }
        struct bpe_word *nw = realloc(w, (size_t)(n + 1) * sizeof *w);
        char **ns = realloc(seen, (size_t)(n + 1) * sizeof *ns);
        if (nw) w = nw;
        if (ns) seen = ns;
        if (!nw || !ns || !(seen[n] = strdup(word))) goto done;
        w[n].sym = malloc((pre + wl + 1) * sizeof *w[n].sym);
        w[n].count = 1;
        w[n].n = 0;
        if (!w[n].sym) {
            free(seen[n]);
            goto done;
        }
        n++;
        /* "▁" then one piece per ASCII character; a character missing from the
         * vocabulary (it was full) ends the word's pieces there. */
        int64_t id = pre ? vocab_find(v, SPM_SPACE, first_piece) : -1;
        if (id >= 0) w[n - 1].sym[w[n - 1].n++] = id;
        for (size_t i = pre; i < pre + wl; i++) {
            char c[2] = {word[i], 0};
            id = vocab_find(v, c, first_piece);
            if (id < 0) break;
            w[n - 1].sym[w[n - 1].n++] = id;
        }
    }
    rc = 0;
done:
    for (int64_t i = 0; i < n; i++) free(seen[i]);
    free(seen);
    *out = w;
    *n_out = n;
    return rc;
}

/* Merge the most frequent adjacent pair until the vocabulary is full or no pair is left. */
static int bpe_learn(struct vocab *v, int64_t first_piece) {
    struct bpe_word *w;
    int64_t n_words;
    int rc = bpe_words(v, first_piece, &w, &n_words);
    int64_t max_pairs = 0;
    for (int64_t i = 0; i < n_words; i++) max_pairs += w[i].n;
    struct bpe_pair *pairs = malloc((size_t)(max_pairs + 1) * sizeof *pairs);
    if (!pairs) rc = -1;
    while (!rc && v->n < v->cap) {
        int64_t np = 0;
        for (int64_t i = 0; i < n_words; i++)
            for (int64_t j = 0; j + 1 < w[i].n; j++)
                pairs[np++] = (struct bpe_pair){w[i].sym[j], w[i].sym[j + 1], w[i].count};
        if (!np) break;
        qsort(pairs, (size_t)np, sizeof *pairs, pair_cmp);
        /* The best pair: highest count, ties broken by the merged text (deterministic). */
        int64_t best = -1, best_count = 0;
        char best_text[128] = "", text[128];
        for (int64_t i = 0; i < np;) {
            int64_t j = i, c = 0;
            while (j < np && !pair_cmp(&pairs[i], &pairs[j])) c += pairs[j++].count;
            snprintf(text, sizeof text, "%s%s", v->text[pairs[i].a], v->text[pairs[i].b]);
            if (c > best_count || (c == best_count && strcmp(text, best_text) < 0)) {
                best = i;
                best_count = c;
                memcpy(best_text, text, sizeof text);
            }
            i = j;
        }
        int64_t a = pairs[best].a, b = pairs[best].b;
        int64_t id = vocab_find(v, best_text, first_piece);
        if (id < 0) {
            id = v->n;
            if (vocab_add(v, best_text, strlen(best_text), (float)-(v->n - first_piece), TOK_NORMAL)) rc = -1;
        }
        for (int64_t i = 0; i < n_words; i++) {
            int64_t k = 0;
            for (int64_t j = 0; j < w[i].n; j++) {
                if (j + 1 < w[i].n && w[i].sym[j] == a && w[i].sym[j + 1] == b) {
                    w[i].sym[k++] = id;
                    j++;
                } else {
                    w[i].sym[k++] = w[i].sym[j];
                }
            }
            w[i].n = k;
        }
    }
    for (int64_t i = 0; i < n_words; i++) free(w[i].sym);
    free(w);
    free(pairs);
    return rc;
}

/* Build the default vocabulary of exactly n_vocab entries (n_vocab >= 259). */
static int vocab_build(struct vocab *v, int64_t n_vocab) {
    memset(v, 0, sizeof *v);
    v->text = calloc((size_t)n_vocab, sizeof *v->text);
    v->score = calloc((size_t)n_vocab, sizeof *v->score);
    v->type = calloc((size_t)n_vocab, sizeof *v->type);
    if (!v->text || !v->score || !v->type) return -1;
    v->cap = n_vocab;
    int rc = vocab_add(v, "<unk>", 5, 0, TOK_UNKNOWN);
    rc |= vocab_add(v, "<s>", 3, 0, TOK_CONTROL);
    rc |= vocab_add(v, "</s>", 4, 0, TOK_CONTROL);
    for (int b = 0; b < 256 && !rc; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        rc = vocab_add(v, s, 6, 0, TOK_BYTE);
    }
    int64_t first_piece = v->n;
    /* "▁", then printable ASCII by corpus frequency (then by code). */
    int64_t freq[128] = {0};
    for (const char *p = corpus; *p; p++) freq[(unsigned char)*p & 127]++;
    if (!rc) rc = vocab_add(v, SPM_SPACE, 3, 0, TOK_NORMAL);
    for (int k = 0; k < 94 && !rc; k++) {
        int best = -1;
        for (int c = 33; c < 127; c++) {
            char s[2] = {(char)c, 0};
            if (vocab_find(v, s, first_piece) >= 0) continue;
            if (best < 0 || freq[c] > freq[best]) best = c;
        }
        char s[2] = {(char)best, 0};
        rc = vocab_add(v, s, 1, (float)-(v->n - first_piece), TOK_NORMAL);
    }
    if (!rc) rc = bpe_learn(v, first_piece);
    for (int64_t i = 0; !rc && v->n < v->cap; i++) {
        char s[32];
        int len = snprintf(s, sizeof s, "<unused%lld>", (long long)i);
        rc = vocab_add(v, s, (size_t)len, -1e9f, TOK_UNUSED);
    }
    return rc;
}

/* ---- weights ----
 *
 * Value j of row r of a tensor is a normal draw from a stream seeded by
 * (--seed, hash of the tensor name, r), so a tensor does not depend on the others nor
 * on how the writer chunks it. Scales keep activations O(1) through the layers:
 * projections read by a matmul get std 1/sqrt(fan_in) (a normalized input of RMS 1 gives
 * outputs of RMS ~1), the projections that write into the residual stream (attn_output,
 * ffn_down) are further scaled by 1/sqrt(2 * layers) so that the sum over layers stays
 * O(1), norms are 1 + N(0, 0.1^2), biases N(0, 0.1^2). Embeddings have std 1, or
 * 1/sqrt(dim) when they are multiplied by sqrt(dim) (gemma3) or double as the LM head
 * (tied), so that logits are O(1). */

struct gen {
    uint64_t seed;
    float mean, std;
};

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Uniform in (0, 1]: 53 random bits, never 0 (log is taken). */
static double unit(uint64_t *s) { return ((double)(splitmix64(s) >> 11) + 1.0) / 9007199254740992.0; }

static int gen_rows(void *ctx, float *dst, int64_t row0, int64_t n_rows, int64_t row_len, tp_err *e) {
    const struct gen *g = ctx;
    for (int64_t r = 0; r < n_rows; r++) {
        uint64_t s = g->seed ^ ((uint64_t)(row0 + r) * 0xD1B54A32D192ED03ull);
        splitmix64(&s);
        float *y = dst + r * row_len;
        for (int64_t i = 0; i < row_len; i += 2) { /* Box-Muller: two normals per two uniforms */
            double rad = sqrt(-2.0 * log(unit(&s))), ang = 6.283185307179586 * unit(&s);
            y[i] = g->mean + g->std * (float)(rad * cos(ang));
            if (i + 1 < row_len) y[i + 1] = g->mean + g->std * (float)(rad * sin(ang));
        }
    }
    (void)e;
    return 0;
}

/* Everything the tensors reference until gguf_writer_finish: generator contexts and the
 * rope_freqs values. */
struct synth_model {
    const struct synth_opts *o;
    struct gguf_writer *w;
    struct gen *gens;
    size_t n_gens, cap_gens;
    float *rope_freqs;
};

/* Add a tensor of random values (mean, std), or of zeros under --zeros. */
static int add_rand(struct synth_model *m, const char *name, int n_dims, int64_t ne0, int64_t ne1, enum dtype t,
                    float mean, float std, tp_err *e) {
    int64_t ne[2] = {ne0, ne1};
    if (m->o->zeros) return gguf_writer_add_tensor(m->w, name, n_dims, ne, t, NULL, e);
    if (m->n_gens == m->cap_gens) return tp_errf(e, TP_ENOMEM, "internal: too many tensors");
    struct gen *g = &m->gens[m->n_gens++];
    uint64_t s = m->o->seed ^ fnv1a(name);
    g->seed = splitmix64(&s);
    g->mean = mean;
    g->std = std;
    return gguf_writer_add_tensor_gen(m->w, name, n_dims, ne, t, gen_rows, g, e);
}

/* Llama 3 rope frequency factors as convert_hf_to_gguf.py computes them for rope_type
 * "llama3" (low_freq_factor 1, high_freq_factor 4): 1 for short wavelengths, the factor
 * for long ones, a smooth blend between. */
static void llama3_rope_freqs(float *out, int64_t head_dim, float base, float factor, int64_t orig_ctx) {
    const double low = 1.0, high = 4.0, lo_wavelen = (double)orig_ctx / low, hi_wavelen = (double)orig_ctx / high;
    for (int64_t i = 0; i < head_dim / 2; i++) {
        double freq = 1.0 / pow(base, (double)(2 * i) / (double)head_dim);
        double wavelen = 2 * M_PI / freq;
        if (wavelen < hi_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > lo_wavelen) {
            out[i] = factor;
        } else {
            double smooth = ((double)orig_ctx / wavelen - low) / (high - low);
            out[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
        }
    }
}

static int add_tensors(struct synth_model *m, tp_err *e) {
    const struct synth_opts *o = m->o;
    const int64_t d = o->dim, q = o->heads * o->head_dim, kv = o->kv_heads * o->head_dim, L = o->layers;
    const float s_in = 1.0f / sqrtf((float)d), res = 1.0f / sqrtf(2.0f * (float)L);
    const bool g3 = o->arch == SYN_GEMMA3;
    const float embd_std = (g3 || o->tied) ? s_in : 1.0f;
    char n[64];
    int rc = add_rand(m, "token_embd.weight", 2, d, o->vocab, o->embd_type, 0, embd_std, e);
    if (!rc && o->rope == SYN_ROPE_LLAMA3) {
        int64_t ne[1] = {o->head_dim / 2};
        m->rope_freqs = malloc((size_t)ne[0] * sizeof *m->rope_freqs);
        if (!m->rope_freqs) return tp_errf(e, TP_ENOMEM, "out of memory for rope_freqs");
        llama3_rope_freqs(m->rope_freqs, o->head_dim, o->rope_base, o->rope_factor, o->rope_orig_ctx);
        rc = gguf_writer_add_tensor_f32(m->w, "rope_freqs.weight", 1, ne, DTYPE_F32, m->rope_freqs, e);
    }
#define T(suffix, nd, a, b, type, mean, std) \
    if (!rc) { \
        snprintf(n, sizeof n, "blk.%lld." suffix, (long long)il); \
        rc = add_rand(m, n, nd, a, b, type, mean, std, e); \
    }
    for (int64_t il = 0; il < L && !rc; il++) {
        T("attn_norm.weight", 1, d, 1, DTYPE_F32, 1.0f, 0.1f);
        T("attn_q.weight", 2, d, q, o->type, 0, s_in);
        T("attn_k.weight", 2, d, kv, o->type, 0, s_in);
        T("attn_v.weight", 2, d, kv, o->type, 0, s_in);
        if (o->arch == SYN_QWEN2) {
            T("attn_q.bias", 1, q, 1, DTYPE_F32, 0, 0.1f);
            T("attn_k.bias", 1, kv, 1, DTYPE_F32, 0, 0.1f);
            T("attn_v.bias", 1, kv, 1, DTYPE_F32, 0, 0.1f);
        }
        if (g3) {
            T("attn_q_norm.weight", 1, o->head_dim, 1, DTYPE_F32, 1.0f, 0.1f);
            T("attn_k_norm.weight", 1, o->head_dim, 1, DTYPE_F32, 1.0f, 0.1f);
        }
        T("attn_output.weight", 2, q, d, o->type, 0, res / sqrtf((float)q));
        if (g3) T("post_attention_norm.weight", 1, d, 1, DTYPE_F32, 1.0f, 0.1f);
        T("ffn_norm.weight", 1, d, 1, DTYPE_F32, 1.0f, 0.1f);
        T("ffn_gate.weight", 2, d, o->ff, o->type, 0, s_in);
        T("ffn_up.weight", 2, d, o->ff, o->type, 0, s_in);
        T("ffn_down.weight", 2, o->ff, d, o->type, 0, res / sqrtf((float)o->ff));
        if (g3) T("post_ffw_norm.weight", 1, d, 1, DTYPE_F32, 1.0f, 0.1f);
    }
#undef T
    if (!rc) rc = add_rand(m, "output_norm.weight", 1, d, 1, DTYPE_F32, 1.0f, 0.1f, e);
    if (!rc && !o->tied) rc = add_rand(m, "output.weight", 2, d, o->vocab, o->output_type, 0, s_in, e);
    return rc;
}

/* ---- metadata ---- */

/* llama.cpp's general.file_type (enum llama_ftype) for a model whose matrices are `t`. */
static uint32_t file_type(enum dtype t) {
    switch (t) {
    case DTYPE_F32: return 0;
    case DTYPE_F16: return 1;
    case DTYPE_Q4_0: return 2;
    case DTYPE_Q4_1: return 3;
    case DTYPE_Q8_0: return 7;
    case DTYPE_Q5_0: return 8;
    case DTYPE_Q5_1: return 9;
    case DTYPE_Q2_K: return 10;
    case DTYPE_Q3_K: return 11; /* Q3_K_S: every matrix Q3_K */
    case DTYPE_Q4_K: return 14; /* Q4_K_S */
    case DTYPE_Q5_K: return 16; /* Q5_K_S */
    case DTYPE_Q6_K: return 18;
    case DTYPE_BF16: return 32;
    default: return 0;
    }
}

static int add_tokenizer(struct gguf_writer *w, const struct vocab *v, const struct gguf_file *from, tp_err *e) {
    int rc = 0;
    if (from) {
        for (uint64_t i = 0; i < from->n_kv && !rc; i++)
            if (from->kv[i].key.len > 10 && !memcmp(from->kv[i].key.ptr, "tokenizer.", 10))
                rc = gguf_writer_copy_kv(w, from, i, e);
        return rc;
    }
    rc = gguf_writer_add_str(w, "tokenizer.ggml.model", "llama", e);
    if (!rc) rc = gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, (uint64_t)v->n, e);
    if (!rc) rc = gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, v->score, (uint64_t)v->n, e);
    if (!rc) rc = gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, v->type, (uint64_t)v->n, e);
    if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1, e);
    if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2, e);
    if (!rc) rc = gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0, e);
    if (!rc) rc = gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true, e);
    if (!rc) rc = gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false, e);
    return rc;
}

/* The keys convert_hf_to_gguf.py writes for the architecture, in its order. */
static int add_metadata(struct gguf_writer *w, const struct synth_opts *o, const struct vocab *v,
                        const struct gguf_file *from, tp_err *e) {
    const char *a = o->arch_name;
    char key[96], name[96];
    bool quant = dtype_block(o->type) > 1 || dtype_block(o->embd_type) > 1 || dtype_block(o->output_type) > 1;
    bool explicit_hd = o->head_dim * o->heads != o->dim || o->arch == SYN_GEMMA3;
    snprintf(name, sizeof name, "tpllm synthetic %s", a);
    int rc = gguf_writer_add_str(w, "general.architecture", a, e);
    if (!rc) rc = gguf_writer_add_str(w, "general.type", "model", e);
    if (!rc) rc = gguf_writer_add_str(w, "general.name", name, e);
#define K(suffix) (snprintf(key, sizeof key, "%s." suffix, a), key)
#define U32(suffix, val) if (!rc) rc = gguf_writer_add_u32(w, K(suffix), (uint32_t)(val), e)
#define F32(suffix, val) if (!rc) rc = gguf_writer_add_f32(w, K(suffix), (val), e)
    U32("block_count", o->layers);
    U32("context_length", o->ctx);
    U32("embedding_length", o->dim);
    U32("feed_forward_length", o->ff);
    U32("attention.head_count", o->heads);
    U32("attention.head_count_kv", o->kv_heads);
    F32("rope.freq_base", o->rope_base);
    F32("attention.layer_norm_rms_epsilon", o->norm_eps);
    if (explicit_hd) {
        U32("attention.key_length", o->head_dim);
        U32("attention.value_length", o->head_dim);
    }
    if (o->arch == SYN_GEMMA3) U32("attention.sliding_window", o->swa);
    if (!rc) rc = gguf_writer_add_u32(w, "general.file_type", file_type(o->type), e);
    if (o->arch == SYN_LLAMA) {
        U32("vocab_size", o->vocab);
        U32("rope.dimension_count", o->head_dim);
    }
    if (o->rope == SYN_ROPE_LINEAR || o->rope == SYN_ROPE_YARN) {
        if (!rc) rc = gguf_writer_add_str(w, K("rope.scaling.type"), o->rope == SYN_ROPE_LINEAR ? "linear" : "yarn", e);
        F32("rope.scaling.factor", o->rope_factor);
        if (o->rope == SYN_ROPE_YARN) U32("rope.scaling.original_context_length", o->rope_orig_ctx);
    }
#undef K
#undef U32
#undef F32
    if (!rc && quant) rc = gguf_writer_add_u32(w, "general.quantization_version", 2, e);
    if (!rc) rc = add_tokenizer(w, v, from, e);
    return rc;
}

/* ---- the command ---- */

int cmd_synth(int argc, char **argv) {
    struct synth_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc > 0) return 0;
    if (rc < 0) {
        fprintf(stderr, "Run 'tpllm synth --help' for the options.\n");
        return 2;
    }
    bool vocab_given = o.vocab > 0;
    tp_err e = {0};
    struct gguf_file *from = NULL;
    struct vocab v = {0};
    struct synth_model m = {.o = &o};
    int status = 1;
    if (o.vocab_from) {
        const struct gguf_kv *kv;
        enum gguf_vtype t;
        uint64_t n;
        if ((rc = gguf_open(&from, o.vocab_from, &e))) goto fail;
        if ((rc = gguf_get_arr(from, "tokenizer.ggml.tokens", &t, &n, &kv, &e))) {
            if (rc == TP_ENOTFOUND)
                tp_errf(&e, rc, "'%s' has no tokenizer.ggml.tokens; --vocab-from needs a model with a tokenizer",
                        o.vocab_from);
            goto fail;
        }
        if (vocab_given && (uint64_t)o.vocab != n) {
            fprintf(stderr, "tpllm synth: --vocab %lld differs from the %llu tokens of '%s'; drop --vocab\n",
                    (long long)o.vocab, (unsigned long long)n, o.vocab_from);
            status = 2;
            goto out;
        }
        o.vocab = (int64_t)n;
    }
    if (finish_opts(&o)) {
        status = 2;
        goto out;
    }
    if (!o.vocab_from) {
        if (o.vocab < 259) {
            fprintf(stderr, "tpllm synth: --vocab %lld is too small for the built-in vocabulary (3 special and 256 "
                            "byte tokens); use at least 259\n", (long long)o.vocab);
            status = 2;
            goto out;
        }
        if (vocab_build(&v, o.vocab)) {
            tp_errf(&e, TP_ENOMEM, "out of memory building a vocabulary of %lld tokens", (long long)o.vocab);
            goto fail;
        }
    }
    m.cap_gens = (size_t)(8 + 20 * o.layers);
    if (!(m.gens = calloc(m.cap_gens, sizeof *m.gens))) {
        tp_errf(&e, TP_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = gguf_writer_create(&m.w, o.out, o.zeros ? GGUF_WRITER_SPARSE : 0, &e))) goto fail;
    if ((rc = add_metadata(m.w, &o, &v, from, &e))) goto fail;
    if ((rc = add_tensors(&m, &e))) goto fail;
    if ((rc = gguf_writer_finish(m.w, &e))) goto fail;
    printf("wrote %s: %s, %lld layers, dim %lld, %lld/%lld heads x %lld, ff %lld, vocab %lld, %s%s; %.1f MiB%s\n",
           o.out, o.arch_name, (long long)o.layers, (long long)o.dim, (long long)o.heads, (long long)o.kv_heads,
           (long long)o.head_dim, (long long)o.ff, (long long)o.vocab, dtype_name(o.type), o.tied ? ", tied" : "",
           (double)gguf_writer_file_size(m.w) / (1024.0 * 1024.0), o.zeros ? " (sparse zeros)" : "");
    status = 0;
    goto out;
fail:
    fprintf(stderr, "tpllm synth: %s\n", e.msg);
out:
    gguf_writer_free(m.w);
    free(m.gens);
    free(m.rope_freqs);
    vocab_free(&v);
    gguf_close(from);
    return status;
}
