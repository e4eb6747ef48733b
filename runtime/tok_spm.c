/* tok_spm.c - SentencePiece-style tokenization (llama.cpp's llm_tokenizer_spm): start from one
 * symbol per UTF-8 character, repeatedly merge the adjacent pair whose concatenation is the
 * vocabulary token with the highest score, and spell leftovers with <0xNN> byte tokens. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

struct spm_sym {
    int32_t prev, next; /* neighbours in the current segmentation, -1 at the ends */
    size_t start, n;    /* bytes text[start .. start + n); n = 0 once merged into its left */
};

struct spm_bigram {
    float score;
    int32_t left, right;
    size_t size; /* bytes of the pair when it was queued: stale entries no longer match */
};

struct spm_heap {
    struct spm_bigram *v;
    size_t n, cap;
};

/* Pop order: highest score first; equal scores: leftmost first (llama.cpp's comparator). */
static bool spm_before(const struct spm_bigram *a, const struct spm_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int spm_heap_push(struct spm_heap *h, struct spm_bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct spm_bigram *v = realloc(h->v, cap * sizeof *v);
        if (!v) return TP_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!spm_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static struct spm_bigram spm_heap_pop(struct spm_heap *h) {
    struct spm_bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && spm_before(&h->v[c + 1], &h->v[c])) c++;
        if (!spm_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

/* Queue the pair (left, right) if its concatenation is a token. */
static int spm_try_pair(const struct tokenizer *t, const char *text, const struct spm_sym *sym, int32_t left,
                        int32_t right, struct spm_heap *h) {
    if (left < 0 || right < 0) return 0;
    size_t n = sym[left].n + sym[right].n;
    int32_t id = tok_lookup(t, text + sym[left].start, n);
    if (id < 0) return 0;
    struct spm_bigram b = {t->score[id], left, right, n};
    return spm_heap_push(h, b);
}

/* The byte-fallback token of byte c: "<0xNN>", else the one-byte token, else unk. (llama.cpp
 * throws when neither exists; tpllm uses unk, or skips the byte when there is none.) */
static int32_t spm_byte_token(const struct tokenizer *t, uint8_t c) {
    static const char hex[] = "0123456789ABCDEF";
    char buf[6] = {'<', '0', 'x', hex[c >> 4], hex[c & 15], '>'};
    int32_t id = tok_lookup(t, buf, 6);
    if (id < 0) id = tok_lookup(t, (const char *)&c, 1);
    if (id < 0) id = t->unk;
    return id;
}

int tok_spm_encode(const struct tokenizer *t, const char *text, size_t len, struct tok_ids *out, tp_err *e) {
    if (len == 0) return 0;
    struct spm_sym *sym = malloc(len * sizeof *sym);
    struct spm_heap h = {0};
    int rc = 0;
    if (!sym) {
        rc = tp_errf(e, TP_ENOMEM, "tokenizer: out of memory for %zu bytes of text", len);
        goto done;
    }
    int32_t n_sym = 0;
    for (size_t off = 0; off < len;) {
        size_t n = TP_MIN(tok_utf8_len((uint8_t)text[off]), len - off);
        sym[n_sym] = (struct spm_sym){n_sym - 1, off + n == len ? -1 : n_sym + 1, off, n};
        off += n;
        n_sym++;
    }
    for (int32_t i = 1; i < n_sym && rc == 0; i++) rc = spm_try_pair(t, text, sym, i - 1, i, &h);
    while (rc == 0 && h.n > 0) {
        struct spm_bigram b = spm_heap_pop(&h);
        struct spm_sym *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        rc = spm_try_pair(t, text, sym, l->prev, b.left, &h);
        if (rc == 0) rc = spm_try_pair(t, text, sym, b.left, l->next, &h);
    }
    if (rc) {
        rc = tp_errf(e, TP_ENOMEM, "tokenizer: out of memory while merging %d symbols", (int)n_sym);
        goto done;
    }
    for (int32_t i = 0; i != -1 && rc == 0; i = sym[i].next) {
        int32_t id = tok_lookup(t, text + sym[i].start, sym[i].n);
        if (id >= 0) {
            rc = tok_ids_push(out, id);
            continue;
        }
        for (size_t j = 0; j < sym[i].n && rc == 0; j++) {
            int32_t b = spm_byte_token(t, (uint8_t)text[sym[i].start + j]);
            if (b >= 0) rc = tok_ids_push(out, b);
        }
    }
    if (rc) rc = tp_errf(e, TP_ENOMEM, "tokenizer: out of memory for the output tokens");
done:
    free(sym);
    free(h.v);
    return rc;
}
