/* tok_bpe.c - byte-level BPE (llama.cpp's llm_tokenizer_bpe): the pre-tokenizer regexes split
 * the text into words, each word's bytes map to printable code points (GPT-2), and within a
 * word the adjacent pair with the lowest merge rank is merged until no ranked pair is left. */
#include "tok_internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's \s is its own whitespace set (not PCRE2's, which adds U+180E): spell it out. */
#define WS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* The regexes llama.cpp uses (llama-vocab.cpp, llm_tokenizer_bpe), with \s, \S and [^\s...]
 * written with WS. llama.cpp runs its hand-written equivalents of GPT2/LLAMA3/QWEN2; the
 * GPT-2 one also matches a lone \s+ at the end, hence the extra alternative below. */
static const char RE_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS
                              "]+(?![^" WS "])|[" WS "]+";
static const char RE_LLAMA3[] = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                                "\\p{N}{1,3}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS
                                "])|[" WS "]+";
static const char RE_QWEN2[] = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                               "\\p{N}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS
                               "])|[" WS "]+";
static const char RE_DEFAULT_PUNCT[] = "[\\p{P}$+<=>^~|]+";
static const char RE_DEFAULT_NUM[] = "\\p{N}+";
static const char RE_DEFAULT_DIGIT3[] = "[0-9][0-9][0-9]";

enum bpe_pre { PRE_DEFAULT, PRE_LLAMA3, PRE_GPT2, PRE_QWEN2 };

struct pre_name {
    const char *name;
    enum bpe_pre pre;
    bool clean_spaces, ignore_merges, add_bos;
};

/* tokenizer.ggml.pre values and the flags llama.cpp sets for them (llama_vocab::impl::load). */
static const struct pre_name PRE_NAMES[] = {
    {"default", PRE_DEFAULT, true, false, false},
    {"llama3", PRE_LLAMA3, true, true, true},
    {"llama-v3", PRE_LLAMA3, true, true, true},
    {"llama-bpe", PRE_LLAMA3, true, true, true},
    {"falcon3", PRE_LLAMA3, true, true, true},
    {"falcon-h1", PRE_LLAMA3, true, true, true},
    {"pixtral", PRE_LLAMA3, true, true, true},
    {"midm-2.0", PRE_LLAMA3, true, true, true},
    {"lfm2", PRE_LLAMA3, true, true, true},
    {"jina-v5-nano", PRE_LLAMA3, true, true, true},
    {"dbrx", PRE_LLAMA3, true, false, false},
    {"smaug-bpe", PRE_LLAMA3, true, false, false},
    {"gpt-2", PRE_GPT2, true, false, false},
    {"phi-2", PRE_GPT2, true, false, false},
    {"jina-es", PRE_GPT2, true, false, false},
    {"jina-de", PRE_GPT2, true, false, false},
    {"gigachat", PRE_GPT2, true, false, false},
    {"jina-v2-es", PRE_GPT2, true, false, false},
    {"jina-v2-de", PRE_GPT2, true, false, false},
    {"a.x-4.0", PRE_GPT2, true, false, false},
    {"mellum", PRE_GPT2, true, false, false},
    {"modern-bert", PRE_GPT2, true, false, false},
    {"exaone4", PRE_GPT2, true, false, false},
    {"mpt", PRE_GPT2, true, false, false},
    {"olmo", PRE_GPT2, true, false, false},
    {"jais", PRE_GPT2, true, false, false},
    {"trillion", PRE_GPT2, false, false, false},
    {"granite-docling", PRE_GPT2, false, false, false},
    {"qwen2", PRE_QWEN2, false, false, false},
    {"deepseek-r1-qwen", PRE_QWEN2, false, false, false},
    {"kormo", PRE_QWEN2, false, false, false},
    {"f2llmv2", PRE_QWEN2, false, false, false},
    {"megrez", PRE_QWEN2, true, false, false},
    {"stablelm2", PRE_QWEN2, true, false, false},
};

static int compile_re(struct tokenizer *t, const char *pattern, tp_err *e) {
    int err;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &err, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return tp_errf(e, TP_EUNSUPPORTED,
                       "tokenizer: PCRE2 cannot compile the '%s' pre-tokenizer regex (at %zu: %s); PCRE2 needs "
                       "Unicode support (libpcre2-8 built with --enable-unicode)",
                       t->pre, (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is used when JIT is unavailable */
    t->re[t->n_re++] = re;
    return 0;
}

int tok_bpe_setup(struct tokenizer *t, const char *pre, tp_err *e) {
    const struct pre_name *p = NULL;
    const char *name = pre[0] ? pre : "default"; /* llama.cpp warns and uses 'default' */
    for (size_t i = 0; i < TP_ARRAY_LEN(PRE_NAMES); i++)
        if (strcmp(PRE_NAMES[i].name, name) == 0) p = &PRE_NAMES[i];
    if (!p)
        return tp_errf(e, TP_EUNSUPPORTED,
                       "tokenizer: pre-tokenizer '%s' (tokenizer.ggml.pre) is not supported; tpllm implements "
                       "default, llama3/llama-bpe, qwen2, gpt-2 and their aliases (see docs/tokenizers.md)",
                       name);
    snprintf(t->pre, sizeof t->pre, "%s", name);
    t->clean_spaces = p->clean_spaces;
    t->ignore_merges = p->ignore_merges;
    if (p->add_bos) t->add_bos = true;
    t->byte_encode = true;
    int rc = 0;
    switch (p->pre) {
    case PRE_DEFAULT:
        rc = compile_re(t, RE_DEFAULT_PUNCT, e);
        if (!rc) rc = compile_re(t, RE_GPT2, e);
        if (!rc) rc = compile_re(t, RE_DEFAULT_NUM, e);
        if (!rc) rc = compile_re(t, RE_DEFAULT_DIGIT3, e);
        break;
    case PRE_LLAMA3: rc = compile_re(t, RE_LLAMA3, e); break;
    case PRE_GPT2: rc = compile_re(t, RE_GPT2, e); break;
    case PRE_QWEN2: rc = compile_re(t, RE_QWEN2, e); break;
    }
    return rc;
}

void tok_bpe_free(struct tokenizer *t) {
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    t->n_re = 0;
}

/* Byte ranges [a, b) of the cleaned text. */
struct span {
    size_t a, b;
};

struct spans {
    struct span *v;
    size_t n, cap;
};

static int spans_push(struct spans *s, size_t a, size_t b) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return TP_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (struct span){a, b};
    return 0;
}

/* Split every span of `in` by regex `re`: matches and the gaps between them become spans
 * (as llama.cpp's unicode_regex_split: unmatched text is kept, not dropped). Each span is
 * matched as if it were the whole subject, so lookaheads see its end. */
static int split_by(const pcre2_code *re, const char *subj, const struct spans *in, struct spans *out,
                    pcre2_match_data *md) {
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t a = in->v[k].a, len = in->v[k].b - a, pos = 0;
        while (pos < len) {
            int rc = pcre2_match(re, (PCRE2_SPTR)(subj + a), len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (rc < 0) {
                if (rc == PCRE2_ERROR_NOMATCH) break;
                return TP_EINVAL;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) { /* empty match: none of our patterns can, but never loop */
                me = ms + tok_utf8_len((uint8_t)subj[a + ms]);
                if (me > len) me = len;
            }
            if (ms > pos && spans_push(out, a + pos, a + ms)) return TP_ENOMEM;
            if (spans_push(out, a + ms, a + me)) return TP_ENOMEM;
            pos = me;
        }
        if (pos < len && spans_push(out, a + pos, a + len)) return TP_ENOMEM;
    }
    return 0;
}

struct bpe_sym {
    int32_t prev, next;
    size_t start, n; /* bytes of the encoded word; n = 0 once merged into its left */
};

struct bpe_bigram {
    int32_t rank, left, right;
    size_t size;
};

struct bpe_work {
    char *word; /* the byte-encoded word */
    size_t word_cap;
    struct bpe_sym *sym;
    size_t sym_cap;
    struct bpe_bigram *heap;
    size_t heap_n, heap_cap;
};

/* Pop order: lowest rank first, then leftmost (llama.cpp's llm_bigram_bpe::comparator). */
static bool bpe_before(const struct bpe_bigram *a, const struct bpe_bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int bpe_heap_push(struct bpe_work *w, struct bpe_bigram b) {
    if (w->heap_n == w->heap_cap) {
        size_t cap = w->heap_cap ? w->heap_cap * 2 : 64;
        struct bpe_bigram *v = realloc(w->heap, cap * sizeof *v);
        if (!v) return TP_ENOMEM;
        w->heap = v;
        w->heap_cap = cap;
    }
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bpe_before(&b, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = b;
    return 0;
}

static struct bpe_bigram bpe_heap_pop(struct bpe_work *w) {
    struct bpe_bigram top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= w->heap_n) break;
        if (c + 1 < w->heap_n && bpe_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bpe_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (w->heap_n > 0) w->heap[i] = last;
    return top;
}

static int bpe_try_pair(const struct tokenizer *t, struct bpe_work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    const struct bpe_sym *a = &w->sym[l], *b = &w->sym[r];
    int32_t rank = tok_merge_rank(t, w->word + a->start, a->n, w->word + b->start, b->n);
    if (rank < 0) return 0;
    return bpe_heap_push(w, (struct bpe_bigram){rank, l, r, a->n + b->n});
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return TP_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* Merge one pre-token (clean UTF-8 bytes) and append its tokens. */
static int bpe_word(const struct tokenizer *t, const char *s, size_t n, struct bpe_work *w, struct tok_ids *out) {
    size_t wn = 0;
    if (t->byte_encode) {
        if (grow((void **)&w->word, &w->word_cap, 2 * n, 1)) return TP_ENOMEM;
        for (size_t i = 0; i < n; i++) wn += tok_utf8_put(tok_byte_to_cp((uint8_t)s[i]), w->word + wn);
    } else {
        if (grow((void **)&w->word, &w->word_cap, n, 1)) return TP_ENOMEM;
        memcpy(w->word, s, n);
        wn = n;
    }
    if (t->ignore_merges) {
        int32_t id = tok_lookup(t, w->word, wn);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (grow((void **)&w->sym, &w->sym_cap, wn, sizeof *w->sym)) return TP_ENOMEM;
    int32_t n_sym = 0;
    for (size_t off = 0; off < wn;) {
        size_t k = TP_MIN(tok_utf8_len((uint8_t)w->word[off]), wn - off);
        w->sym[n_sym] = (struct bpe_sym){n_sym - 1, off + k == wn ? -1 : n_sym + 1, off, k};
        off += k;
        n_sym++;
    }
    w->heap_n = 0;
    for (int32_t i = 1; i < n_sym; i++)
        if (bpe_try_pair(t, w, i - 1, i)) return TP_ENOMEM;
    while (w->heap_n > 0) {
        struct bpe_bigram b = bpe_heap_pop(w);
        struct bpe_sym *l = &w->sym[b.left], *r = &w->sym[b.right];
        /* Outdated entry: one side was merged since it was queued. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = b.left;
        if (bpe_try_pair(t, w, l->prev, b.left) || bpe_try_pair(t, w, b.left, l->next)) return TP_ENOMEM;
    }
    for (int32_t i = 0; i < n_sym; i++) {
        const struct bpe_sym *y = &w->sym[i];
        if (y->n == 0) continue;
        int32_t id = tok_lookup(t, w->word + y->start, y->n);
        if (id >= 0) {
            if (tok_ids_push(out, id)) return TP_ENOMEM;
            continue;
        }
        /* llama.cpp's fallback: each byte of the symbol as a one-byte token, if there is one. */
        for (size_t j = 0; j < y->n; j++) {
            int32_t b = tok_lookup(t, w->word + y->start + j, 1);
            if (b >= 0 && tok_ids_push(out, b)) return TP_ENOMEM;
        }
    }
    return 0;
}

int tok_bpe_encode(const struct tokenizer *t, const char *text, size_t len, struct tok_ids *out, tp_err *e) {
    if (len == 0) return 0;
    int rc = 0;
    size_t cap;
    char *clean = NULL, *proxy = NULL;
    struct spans a = {0}, b = {0};
    struct bpe_work w = {0};
    pcre2_match_data *md = NULL;
    if (!tp_mul_size(len, 3, &cap)) return tp_errf(e, TP_EINVAL, "tokenizer: text of %zu bytes is too long", len);
    clean = malloc(cap);
    proxy = malloc(cap);
    md = pcre2_match_data_create(1, NULL);
    if (!clean || !proxy || !md) goto nomem;

    /* The text as llama.cpp sees it: malformed bytes become U+FFFD. The regexes run on a
     * proxy of the same byte length in which surrogate code points (accepted by llama.cpp's
     * decoder, refused by PCRE2) are replaced by U+E000, of the same class for every regex. */
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp = tok_utf8_decode((const uint8_t *)text, len, &i);
        size_t k = tok_utf8_put(cp, clean + n);
        if (cp >= 0xD800 && cp <= 0xDFFF) tok_utf8_put(0xE000, proxy + n);
        else memcpy(proxy + n, clean + n, k);
        n += k;
    }
    if (spans_push(&a, 0, n)) goto nomem;
    for (int r = 0; r < t->n_re; r++) {
        rc = split_by(t->re[r], proxy, &a, &b, md);
        if (rc == TP_ENOMEM) goto nomem;
        if (rc) {
            rc = tp_errf(e, TP_EINVAL, "tokenizer: the '%s' pre-tokenizer regex failed on the text (PCRE2 error)",
                         t->pre);
            goto done;
        }
        struct spans tmp = a;
        a = b;
        b = tmp;
    }
    for (size_t k = 0; k < a.n; k++)
        if (bpe_word(t, clean + a.v[k].a, a.v[k].b - a.v[k].a, &w, out)) goto nomem;
    goto done;
nomem:
    rc = tp_errf(e, TP_ENOMEM, "tokenizer: out of memory tokenizing %zu bytes", len);
done:
    free(clean);
    free(proxy);
    free(a.v);
    free(b.v);
    free(w.word);
    free(w.sym);
    free(w.heap);
    pcre2_match_data_free(md);
    return rc;
}

int tok_bpe_decode_text(const char *text, size_t n, char **out, size_t *out_n) {
    /* Worst case: every code point is unknown and expands to "[UNK_BYTE_0x" + 8 hex + text + "]". */
    size_t cap = 1, per;
    if (!tp_add_size(n, 21, &per) || !tp_mul_size(per, n, &cap) || !tp_add_size(cap, 1, &cap)) return TP_ENOMEM;
    char *o = malloc(cap);
    if (!o) return TP_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp = tok_utf8_decode((const uint8_t *)text, n, &i);
        int b = tok_cp_to_byte(cp);
        if (b >= 0) {
            o[k++] = (char)b;
            continue;
        }
        /* llama_decode_text's marker for a code point that is no byte, quirks included. */
        char u[4];
        size_t un = tok_utf8_put(cp, u);
        k += (size_t)sprintf(o + k, "[UNK_BYTE_0x");
        for (size_t j = 0; j < un; j++) k += (size_t)sprintf(o + k, "%02x", (uint8_t)u[j]);
        memcpy(o + k, text, n);
        k += n;
        o[k++] = ']';
    }
    *out = o;
    *out_n = k;
    return 0;
}
