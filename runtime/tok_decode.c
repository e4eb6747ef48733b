/* tok_decode.c - ids back to text: llama_token_to_piece, llama_detokenize (with its space
 * clean-up), and the streaming detokenizer that only ever emits valid UTF-8. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *piece_of(const struct tokenizer *t, int32_t id, bool special, size_t *n) {
    if (!special && (t->attr[id] & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL))) {
        *n = 0;
        return "";
    }
    *n = (size_t)(t->piece.off[id + 1] - t->piece.off[id]);
    return t->piece.blob + t->piece.off[id];
}

int64_t tokenizer_piece(const struct tokenizer *t, int32_t id, bool special, char *buf, size_t cap) {
    if (id < 0 || id >= t->n_vocab) return TP_EINVAL;
    size_t n;
    const char *p = piece_of(t, id, special, &n);
    if (n <= cap && n > 0) memcpy(buf, p, n);
    return (int64_t)n;
}

/* llama_vocab::impl::detokenize's clean_up_tokenization_spaces passes, in place; returns the
 * new length. */
static size_t clean_spaces(char *s, size_t total) {
    /* " ?", " !", " .", " ," lose the space */
    size_t n1 = total, k = total ? 1 : 0;
    for (size_t i = 1; i < n1; i++) {
        char x = s[i];
        if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) k--;
        s[k++] = x;
    }
    /* " ' " loses both spaces */
    size_t n2 = k;
    k = n2 ? 1 : 0;
    for (size_t i = 1; i < n2; i++) {
        char x = s[i];
        if (x == '\'' && i + 1 < n2 && s[i - 1] == ' ' && s[i + 1] == ' ') {
            k--;
            s[++i] = '\0';
        }
        s[k++] = x;
    }
    /* " 's", " 'm", " 're", " 've" lose the space */
    size_t n3 = k;
    k = n3 ? 1 : 0;
    for (size_t i = 1; i < n3; i++) {
        char x = s[i];
        if (s[i - 1] == ' ' && x == '\'' && i + 1 < n3) {
            char x1 = s[i + 1];
            if (x1 == 's' || x1 == 'm') k--;
            else if (i + 2 < n3 && ((x1 == 'r' && s[i + 2] == 'e') || (x1 == 'v' && s[i + 2] == 'e'))) k--;
        }
        s[k++] = x;
    }
    return k;
}

int tokenizer_detokenize(const struct tokenizer *t, const int32_t *ids, int64_t n, bool remove_special,
                         bool unparse_special, char *buf, size_t cap, size_t *n_out, tp_err *e) {
    *n_out = 0;
    bool remove_space = t->add_space_prefix;
    if (remove_special && t->add_bos && n > 0 && ids[0] == t->bos) {
        remove_space = false;
        ids++;
        n--;
    }
    if (remove_special && t->add_eos && n > 0 && ids[n - 1] == t->eos) n--;
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return tp_errf(e, TP_EINVAL, "tokenizer_detokenize: token %lld is %d, outside the vocabulary of %d",
                           (long long)i, (int)ids[i], (int)t->n_vocab);
        size_t k;
        piece_of(t, ids[i], unparse_special, &k);
        total += k;
    }
    char *s = malloc(total ? total : 1);
    if (!s) return tp_errf(e, TP_ENOMEM, "tokenizer_detokenize: out of memory for %zu bytes", total);
    size_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t pn;
        const char *p = piece_of(t, ids[i], unparse_special, &pn);
        if (remove_space && pn > 0 && p[0] == ' ') {
            p++;
            pn--;
        }
        remove_space = false;
        memcpy(s + k, p, pn);
        k += pn;
    }
    if (t->clean_spaces) k = clean_spaces(s, k);
    *n_out = k;
    int rc = 0;
    if (k > cap || (k > 0 && !buf))
        rc = tp_errf(e, TP_EINVAL, "tokenizer_detokenize: the text needs %zu bytes but the buffer holds %zu; retry "
                     "with a buffer of *n_out bytes", k, cap);
    else if (k > 0)
        memcpy(buf, s, k);
    free(s);
    return rc;
}

/* ---- streaming ---- */

void detok_init(struct detok *d, const struct tokenizer *t, bool special) {
    memset(d, 0, sizeof *d);
    d->t = t;
    d->special = special;
}

void detok_free(struct detok *d) {
    if (!d) return;
    free(d->buf);
    d->buf = NULL;
    d->cap = 0;
}

static int reserve(struct detok *d, size_t need, tp_err *e) {
    if (need <= d->cap) return 0;
    size_t cap = d->cap ? d->cap : 64;
    while (cap < need) cap *= 2;
    char *b = realloc(d->buf, cap);
    if (!b) return tp_errf(e, TP_ENOMEM, "detok: out of memory for %zu bytes", need);
    d->buf = b;
    d->cap = cap;
    return 0;
}

static size_t put_fffd(char *o) {
    memcpy(o, "\xef\xbf\xbd", 3);
    return 3;
}

int detok_push_bytes(struct detok *d, const char *bytes, size_t len, const char **out, size_t *n_out, tp_err *e) {
    *out = "";
    *n_out = 0;
    size_t n = d->n_tail + len, worst;
    /* every byte may become a 3-byte U+FFFD */
    if (!tp_mul_size(n, 3, &worst)) return tp_errf(e, TP_EINVAL, "detok: piece of %zu bytes is too long", len);
    int rc = reserve(d, worst + n + 1, e);
    if (rc) return rc;
    /* Stage tail + bytes at the end of the buffer; the output is written from the start and
     * never overtakes the read position (it grows at most 3x of what was read). */
    char *in = d->buf + worst;
    memcpy(in, d->tail, d->n_tail);
    if (len) memcpy(in + d->n_tail, bytes, len);
    d->n_tail = 0;
    size_t i = 0, k = 0;
    while (i < n) {
        int c = tok_utf8_check((const uint8_t *)in + i, n - i);
        if (c > 0) {
            memmove(d->buf + k, in + i, (size_t)c);
            k += (size_t)c;
            i += (size_t)c;
        } else if (c == 0) { /* incomplete: hold back until more bytes arrive */
            d->n_tail = n - i;
            memcpy(d->tail, in + i, d->n_tail);
            break;
        } else {
            k += put_fffd(d->buf + k);
            i++;
        }
    }
    *out = d->buf;
    *n_out = k;
    return 0;
}

int detok_push(struct detok *d, int32_t id, const char **out, size_t *n_out, tp_err *e) {
    *out = "";
    *n_out = 0;
    if (id < 0 || id >= d->t->n_vocab)
        return tp_errf(e, TP_EINVAL, "detok: token %d is outside the vocabulary of %d", (int)id, (int)d->t->n_vocab);
    size_t n;
    const char *p = piece_of(d->t, id, d->special, &n);
    return detok_push_bytes(d, p, n, out, n_out, e);
}

int detok_flush(struct detok *d, const char **out, size_t *n_out, tp_err *e) {
    *out = "";
    *n_out = 0;
    if (d->n_tail == 0) return 0;
    int rc = reserve(d, 3, e);
    if (rc) return rc;
    d->n_tail = 0;
    *n_out = put_fffd(d->buf);
    *out = d->buf;
    return 0;
}
