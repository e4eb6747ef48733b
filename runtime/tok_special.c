/* tok_special.c - the special tokens: llama.cpp's guesses from token texts (eot, fim, unused,
 * end of generation) and the longest-first list plus trie used to split them out of text. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

static bool text_is(const struct tokenizer *t, int32_t id, const char *z) {
    size_t n;
    const char *s = tok_text(t, id, &n);
    return n == strlen(z) && memcmp(s, z, n) == 0;
}

/* The lowest id among the tokens whose text is in `list` (each text looked up in the map,
 * so a text shadowed by a later duplicate counts with the later id), or -1. */
static int32_t first_of(const struct tokenizer *t, const char *const *list) {
    int32_t best = -1;
    for (; *list; list++) {
        int32_t id = tok_lookup(t, *list, strlen(*list));
        if (id >= 0 && (best < 0 || id < best)) best = id;
    }
    return best;
}

static const char *const EOT_TEXTS[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                        "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
                                        "<end_of_utterance>", NULL};
static const char *const EOM_TEXTS[] = {"<|eom_id|>", NULL};
static const char *const FIM_PRE_TEXTS[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>",
                                            "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const FIM_SUF_TEXTS[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>", "<SUF>",
                                            "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const FIM_MID_TEXTS[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>",
                                            "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const FIM_PAD_TEXTS[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const FIM_REP_TEXTS[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
                                            NULL};
static const char *const FIM_SEP_TEXTS[] = {"<|file_sep|>", NULL};
static const char *const EOG_TEXTS[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                        "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                        "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                                        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                                        "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
                                        "[e~[", NULL};
static const char *const ALWAYS_USER_TEXTS[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};

static int eog_add(struct tokenizer *t, int32_t id) {
    if (id < 0) return 0;
    for (int32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return 0;
    int32_t *v = realloc(t->eog, (size_t)(t->n_eog + 1) * sizeof *v);
    if (!v) return TP_ENOMEM;
    t->eog = v;
    t->eog[t->n_eog++] = id;
    return 0;
}

static void eog_remove(struct tokenizer *t, int32_t id) {
    for (int32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) {
            t->eog[i] = t->eog[--t->n_eog];
            return;
        }
}

/* The part of llama_vocab::impl::load that guesses special tokens from their texts. llama.cpp
 * walks its text -> id unordered_map, whose order decides which of several candidates
 * becomes eot/eom/fim; tpllm takes the lowest id (docs/tokenizers.md). */
static int detect_specials(struct tokenizer *t) {
    const char *const *guess[8] = {EOT_TEXTS, EOM_TEXTS, FIM_PRE_TEXTS, FIM_SUF_TEXTS,
                                   FIM_MID_TEXTS, FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS};
    int32_t found[8];
    for (int k = 0; k < 8; k++) {
        int32_t *have = k == 0 ? &t->eot : k == 1 ? &t->eom : &t->fim[k - 2]; /* ids set by keys win */
        if (*have < 0 && (*have = first_of(t, guess[k])) >= 0) t->attr[*have] |= TOKENIZER_ATTR_CONTROL;
        found[k] = *have;
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->attr[id] & TOKENIZER_ATTR_CONTROL)) continue;
        size_t n;
        const char *s = tok_text(t, id, &n);
        if (tok_lookup(t, s, n) == id && memmem(s, n, "unused", 6)) t->attr[id] |= TOKENIZER_ATTR_UNUSED;
    }
    int rc = eog_add(t, found[5]) || eog_add(t, found[6]) || eog_add(t, found[7]);
    for (const char *const *p = EOG_TEXTS; *p && !rc; p++) {
        int32_t id = tok_lookup(t, *p, strlen(*p));
        if (id < 0) continue;
        rc = eog_add(t, id);
        t->attr[id] |= TOKENIZER_ATTR_CONTROL;
    }
    for (const char *const *p = ALWAYS_USER_TEXTS; *p; p++) {
        int32_t id = tok_lookup(t, *p, strlen(*p));
        if (id >= 0) t->attr[id] = TOKENIZER_ATTR_USER_DEFINED;
    }
    if (rc || eog_add(t, t->eos) || eog_add(t, t->eot) || eog_add(t, t->eom)) return TP_ENOMEM;
    /* gpt-oss / solar-open: <|end|> is no end of generation when <|return|>/<|call|> exist;
     * gemma4 / plamo: </s> is a normal token. */
    bool has_return = false, has_call = false, has_flush = false, has_marker = false;
    int32_t end_id = -1, s_id = -1;
    for (int32_t i = 0; i < t->n_eog; i++) {
        int32_t id = t->eog[i];
        if (text_is(t, id, "<|return|>")) has_return = true;
        else if (text_is(t, id, "<|call|>") || text_is(t, id, "<|calls|>")) has_call = true;
        else if (text_is(t, id, "<|flush|>")) has_flush = true;
        else if (text_is(t, id, "<|end|>")) end_id = id;
        if (text_is(t, id, "<|tool_response>") || text_is(t, id, "<|plamo:eos|>")) has_marker = true;
        else if (text_is(t, id, "</s>")) s_id = id;
    }
    if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
        eog_remove(t, end_id);
        t->attr[end_id] = TOKENIZER_ATTR_USER_DEFINED;
    }
    if (has_marker && s_id >= 0) {
        eog_remove(t, s_id);
        t->attr[s_id] = TOKENIZER_ATTR_NORMAL;
    }
    return 0;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Special-token order for matching: longest text first (llama.cpp sorts with std::sort, which
 * leaves equal lengths in an unspecified order; tpllm breaks ties by id). */
static int special_order(const void *a, const void *b, void *ctx) {
    const struct tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint64_t nx = t->text.off[x + 1] - t->text.off[x], ny = t->text.off[y + 1] - t->text.off[y];
    if (nx != ny) return nx > ny ? -1 : 1;
    return (x > y) - (x < y);
}

static int trie_child(struct tok_trie *tr, int32_t parent, uint8_t byte, bool create) {
    for (int32_t c = tr->node[parent].child; c >= 0; c = tr->node[c].sibling)
        if (tr->node[c].byte == byte) return c;
    if (!create) return -1;
    if (tr->n == tr->cap) {
        int64_t cap = tr->cap * 2;
        struct tok_trie_node *v = realloc(tr->node, (size_t)cap * sizeof *v);
        if (!v) return -2;
        tr->node = v;
        tr->cap = cap;
    }
    int32_t c = (int32_t)tr->n++;
    tr->node[c] = (struct tok_trie_node){-1, tr->node[parent].child, -1, byte};
    tr->node[parent].child = c;
    return c;
}

static int build_specials(struct tokenizer *t) {
    const uint32_t want = TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED | TOKENIZER_ATTR_UNKNOWN;
    int32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) n += (t->attr[id] & want) != 0;
    t->special = malloc((size_t)(n ? n : 1) * sizeof *t->special);
    if (!t->special) return TP_ENOMEM;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & want) t->special[t->n_special++] = id;
    qsort_r(t->special, (size_t)n, sizeof *t->special, special_order, t);

    struct tok_trie *tr = &t->trie;
    tr->cap = 256;
    tr->node = malloc((size_t)tr->cap * sizeof *tr->node);
    if (!tr->node) return TP_ENOMEM;
    tr->node[0] = (struct tok_trie_node){-1, -1, -1, 0};
    tr->n = 1;
    for (int32_t k = 0; k < n; k++) {
        size_t len;
        const char *s = tok_text(t, t->special[k], &len);
        int32_t at = 0;
        for (size_t i = 0; i < len; i++) {
            at = trie_child(tr, at, (uint8_t)s[i], true);
            if (at < 0) return TP_ENOMEM;
        }
        if (tr->node[at].token < 0) tr->node[at].token = k; /* index into t->special */
    }
    return 0;
}

int tok_special_setup(struct tokenizer *t) {
    if (detect_specials(t) || build_specials(t)) return TP_ENOMEM;
    qsort(t->eog, (size_t)t->n_eog, sizeof *t->eog, cmp_i32);
    return 0;
}
