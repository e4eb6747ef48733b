/* tok_encode.c - llama_tokenize: split special-token texts out of the input (longest first,
 * leftmost occurrences), then run the SPM or BPE tokenizer on the text between them. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* A piece of the input: raw text [off, off + len) when token < 0, else one special token. */
struct frag {
    int32_t token;
    size_t off, len;
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static int frags_push(struct frags *f, int32_t token, size_t off, size_t len) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct frag *v = realloc(f->v, cap * sizeof *v);
        if (!v) return TP_ENOMEM;
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = (struct frag){token, off, len};
    return 0;
}

/* Mark (in present[], indexed like t->special) every special token whose text occurs in
 * the input. Only those can match in any fragment, so the per-token scans below run for a
 * handful of tokens instead of the thousands some vocabularies have. */
static void find_present(const struct tokenizer *t, const char *s, size_t n, uint8_t *present) {
    const struct tok_trie_node *nd = t->trie.node;
    for (size_t p = 0; p < n; p++) {
        int32_t at = 0;
        for (size_t q = p; q < n; q++) {
            int32_t c = nd[at].child;
            while (c >= 0 && nd[c].byte != (uint8_t)s[q]) c = nd[c].sibling;
            if (c < 0) break;
            at = c;
            if (nd[at].token >= 0) present[nd[at].token] = 1;
        }
    }
}

/* llama_vocab::impl::tokenizer_st_partition. */
static int partition(const struct tokenizer *t, const char *s, size_t n, bool parse_special, struct frags *out) {
    struct frags cur = {0}, next = {0};
    uint8_t *present = calloc((size_t)t->n_special + 1, 1);
    int rc = TP_ENOMEM;
    if (!present || frags_push(&cur, -1, 0, n)) goto done;
    find_present(t, s, n, present);
    for (int32_t k = 0; k < t->n_special; k++) {
        if (!present[k]) continue;
        int32_t id = t->special[k];
        if (!parse_special && (t->attr[id] & (TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_UNKNOWN))) continue;
        size_t tl;
        const char *tx = tok_text(t, id, &tl);
        next.n = 0;
        for (size_t i = 0; i < cur.n; i++) {
            struct frag f = cur.v[i];
            if (f.token >= 0) {
                if (frags_push(&next, f.token, 0, 0)) goto done;
                continue;
            }
            size_t off = f.off, len = f.len;
            while (len > 0) {
                const char *m = memmem(s + off, len, tx, tl);
                if (!m) break;
                size_t at = (size_t)(m - s);
                if (at > off && frags_push(&next, -1, off, at - off)) goto done;
                if (frags_push(&next, id, 0, 0)) goto done;
                len -= at + tl - off;
                off = at + tl;
            }
            if (len > 0 && frags_push(&next, -1, off, len)) goto done;
        }
        struct frags tmp = cur;
        cur = next;
        next = tmp;
    }
    *out = cur;
    cur.v = NULL;
    rc = 0;
done:
    free(cur.v);
    free(next.v);
    free(present);
    return rc;
}

/* SPM fragment: optional leading space, then ' ' -> U+2581 (llama_escape_whitespace). */
static int spm_fragment(const struct tokenizer *t, const char *s, size_t n, bool prefix, struct tok_ids *out,
                        tp_err *e) {
    size_t cap;
    if (!tp_mul_size(n + 1, 3, &cap)) return tp_errf(e, TP_EINVAL, "tokenizer: text too long");
    char *buf = malloc(cap);
    if (!buf) return tp_errf(e, TP_ENOMEM, "tokenizer: out of memory for %zu bytes of text", n);
    size_t k = 0;
    if (prefix) {
        memcpy(buf, "\xe2\x96\x81", 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + k, "\xe2\x96\x81", 3);
            k += 3;
        } else {
            buf[k++] = s[i];
        }
    }
    int rc = tok_spm_encode(t, buf, k, out, e);
    free(buf);
    return rc;
}

static int encode(const struct tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                  struct tok_ids *ids, tp_err *e) {
    struct frags fr = {0};
    int rc = 0;
    if (len > 0 && partition(t, text, len, parse_special, &fr))
        return tp_errf(e, TP_ENOMEM, "tokenizer: out of memory splitting special tokens");
    if (add_special && t->add_bos) {
        if (t->bos < 0) {
            rc = tp_errf(e, TP_EFORMAT, "tokenizer: the vocabulary asks for a BOS token but has none; pass "
                         "add_special = false or fix tokenizer.ggml.bos_token_id");
            goto done;
        }
        if (tok_ids_push(ids, t->bos)) goto nomem;
    }
    bool prev_special = true; /* SPM: the text at the start gets the space prefix */
    for (size_t i = 0; i < fr.n && rc == 0; i++) {
        const struct frag *f = &fr.v[i];
        if (f->token >= 0) {
            if (tok_ids_push(ids, f->token)) goto nomem;
            prev_special = true;
            continue;
        }
        if (t->kind == TOKENIZER_SPM) {
            rc = spm_fragment(t, text + f->off, f->len, t->add_space_prefix && prev_special, ids, e);
            prev_special = false;
        } else {
            rc = tok_bpe_encode(t, text + f->off, f->len, ids, e);
        }
    }
    if (rc == 0 && add_special && t->add_eos) {
        if (t->eos < 0) {
            rc = tp_errf(e, TP_EFORMAT, "tokenizer: the vocabulary asks for an EOS token but has none; pass "
                         "add_special = false or fix tokenizer.ggml.eos_token_id");
            goto done;
        }
        if (tok_ids_push(ids, t->eos)) goto nomem;
    }
    goto done;
nomem:
    rc = tp_errf(e, TP_ENOMEM, "tokenizer: out of memory for the output tokens");
done:
    free(fr.v);
    return rc;
}

int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                     int32_t *out, int64_t cap, int64_t *n_out, tp_err *e) {
    *n_out = 0;
    if (!text && len > 0) return tp_errf(e, TP_EINVAL, "tokenizer_encode: text is NULL but len is %zu", len);
    if (len > ((size_t)1 << 29))
        return tp_errf(e, TP_EINVAL, "tokenizer_encode: text of %zu bytes is over the 512 MiB limit; split it", len);
    struct tok_ids ids = {0};
    int rc = encode(t, text, len, add_special, parse_special, &ids, e);
    if (rc == 0) {
        *n_out = ids.n;
        if (ids.n > cap || (ids.n > 0 && !out))
            rc = tp_errf(e, TP_EINVAL, "tokenizer_encode: the text needs %lld tokens but the buffer holds %lld; "
                         "retry with a buffer of *n_out tokens", (long long)ids.n, (long long)cap);
        else if (ids.n > 0)
            memcpy(out, ids.v, (size_t)ids.n * sizeof *out);
    }
    free(ids.v);
    return rc;
}
