/* stop.c - incremental stop-string matcher: a pending buffer of not-yet-released bytes.
 *
 * Invariant between calls: the pending text (after the released prefix is dropped) holds
 * no complete stop string, and is exactly the longest suffix that is a proper prefix of
 * some stop string or an unfinished UTF-8 character (whichever is longer). A stop that
 * starts in released text is impossible: its start would have been in that suffix. */
#include "stop.h"

#include <stdlib.h>
#include <string.h>

struct stop_matcher {
    char **stops; /* the non-empty stop strings (owned) */
    size_t *stop_len;
    int *stop_index; /* index in the caller's list */
    size_t n_stops;
    char *buf; /* pending bytes: buf[drop..len) */
    size_t len, cap;
    size_t drop; /* bytes released by the previous call, dropped at the next */
    bool stopped;
    int stop;
};

void stop_free(struct stop_matcher *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_stops; i++) free(m->stops[i]);
    free(m->stops);
    free(m->stop_len);
    free(m->stop_index);
    free(m->buf);
    free(m);
}

int stop_init(struct stop_matcher **out, const char *const *stops, size_t n_stops, tp_err *e) {
    *out = NULL;
    struct stop_matcher *m = calloc(1, sizeof *m);
    if (!m) return tp_errf(e, TP_ENOMEM, "stop strings: out of memory");
    m->stop = -1;
    m->cap = 64;
    m->buf = malloc(m->cap);
    if (!m->buf) goto nomem;
    if (n_stops > 0) {
        if (!stops) {
            stop_free(m);
            return tp_errf(e, TP_EINVAL, "stop strings: %zu announced but no list given", n_stops);
        }
        m->stops = calloc(n_stops, sizeof *m->stops);
        m->stop_len = calloc(n_stops, sizeof *m->stop_len);
        m->stop_index = calloc(n_stops, sizeof *m->stop_index);
        if (!m->stops || !m->stop_len || !m->stop_index) goto nomem;
    }
    for (size_t i = 0; i < n_stops; i++) {
        if (!stops[i]) {
            stop_free(m);
            return tp_errf(e, TP_EINVAL, "stop string %zu is missing (NULL); give a string or leave it out", i);
        }
        size_t n = strlen(stops[i]);
        if (n == 0) continue;
        char *c = malloc(n + 1);
        if (!c) goto nomem;
        memcpy(c, stops[i], n + 1);
        m->stops[m->n_stops] = c;
        m->stop_len[m->n_stops] = n;
        m->stop_index[m->n_stops] = (int)i;
        m->n_stops++;
    }
    *out = m;
    return 0;
nomem:
    stop_free(m);
    return tp_errf(e, TP_ENOMEM, "stop strings: out of memory copying %zu strings", n_stops);
}

void stop_reset(struct stop_matcher *m) {
    m->len = m->drop = 0;
    m->stopped = false;
    m->stop = -1;
}

/* Bytes at the end of t[0..n) that begin a UTF-8 character not finished yet. Invalid
 * sequences are not held (they will never complete). */
static size_t utf8_unfinished(const unsigned char *t, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = t[n - k];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

/* Longest suffix of t[0..n) that is a proper prefix of some stop string. */
static size_t stop_prefix_suffix(const struct stop_matcher *m, const char *t, size_t n) {
    size_t best = 0;
    for (size_t s = 0; s < m->n_stops; s++) {
        size_t h = TP_MIN(m->stop_len[s] - 1, n);
        for (; h > best; h--)
            if (memcmp(t + n - h, m->stops[s], h) == 0) break;
        if (h > best) best = h;
    }
    return best;
}

int stop_feed(struct stop_matcher *m, const char *piece, size_t len, struct stop_out *o, tp_err *e) {
    if (m->drop) {
        memmove(m->buf, m->buf + m->drop, m->len - m->drop);
        m->len -= m->drop;
        m->drop = 0;
    }
    *o = (struct stop_out){.text = m->buf, .len = 0, .stopped = m->stopped, .stop = m->stop};
    if (m->stopped) return 0;
    size_t need;
    if (!tp_add_size(m->len, len, &need)) return tp_errf(e, TP_ENOMEM, "stop strings: pending text too long");
    if (need > m->cap) {
        size_t cap = TP_MAX(need, m->cap * 2);
        cap = TP_MAX(cap, (size_t)64);
        char *b = realloc(m->buf, cap);
        if (!b) return tp_errf(e, TP_ENOMEM, "stop strings: out of memory holding %zu bytes", need);
        m->buf = b;
        m->cap = cap;
    }
    if (len) memcpy(m->buf + m->len, piece, len);
    m->len = need;
    o->text = m->buf;

    /* The stop string that completes first (earliest end; on a tie the longer one), as if
     * the text had arrived one byte at a time: the result does not depend on how the text
     * is cut into pieces. */
    size_t at = SIZE_MAX, at_end = SIZE_MAX;
    int which = -1;
    for (size_t s = 0; s < m->n_stops; s++) {
        const char *hit = memmem(m->buf, m->len, m->stops[s], m->stop_len[s]);
        if (!hit) continue;
        size_t pos = (size_t)(hit - m->buf), end = pos + m->stop_len[s];
        if (end < at_end || (end == at_end && pos < at)) {
            at = pos;
            at_end = end;
            which = m->stop_index[s];
        }
    }
    if (which >= 0) {
        m->stopped = true;
        m->stop = which;
        m->len = at;
        m->drop = at;
        *o = (struct stop_out){.text = m->buf, .len = at, .stopped = true, .stop = which};
        return 0;
    }
    size_t hold = stop_prefix_suffix(m, m->buf, m->len);
    hold = TP_MAX(hold, utf8_unfinished((const unsigned char *)m->buf, m->len));
    o->len = m->len - hold;
    m->drop = o->len;
    return 0;
}

void stop_flush(struct stop_matcher *m, struct stop_out *o) {
    if (m->stopped) {
        *o = (struct stop_out){.text = m->buf, .len = 0, .stopped = true, .stop = m->stop};
        m->len = m->drop = 0;
        return;
    }
    *o = (struct stop_out){.text = m->buf, .len = m->len - m->drop, .stopped = false, .stop = -1};
    o->text = m->buf + m->drop;
    m->drop = m->len; /* released: dropped at the next call */
}
