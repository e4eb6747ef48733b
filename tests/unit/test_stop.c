/* test_stop.c - the incremental stop-string matcher: stops spanning pieces, partial matches,
 * several stops, UTF-8 held whole, and random streams against a brute-force reference. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/stop.h"
#include "testutil.h"

/* Accumulates what the matcher releases. */
struct sink {
    char buf[8192];
    size_t len;
};

static struct stop_out feed(struct stop_matcher *m, struct sink *s, const char *piece) {
    struct stop_out o;
    tp_err e = {0};
    cr_assert_eq(stop_feed(m, piece, strlen(piece), &o, &e), 0, "%s", e.msg);
    cr_assert_lt(s->len + o.len, sizeof s->buf);
    memcpy(s->buf + s->len, o.text, o.len);
    s->len += o.len;
    s->buf[s->len] = '\0';
    return o;
}

static void flush(struct stop_matcher *m, struct sink *s) {
    struct stop_out o;
    stop_flush(m, &o);
    memcpy(s->buf + s->len, o.text, o.len);
    s->len += o.len;
    s->buf[s->len] = '\0';
}

static struct stop_matcher *make(const char *const *stops, size_t n) {
    struct stop_matcher *m;
    tp_err e = {0};
    cr_assert_eq(stop_init(&m, stops, n, &e), 0, "%s", e.msg);
    return m;
}

Test(stop, a_stop_string_spanning_three_pieces_ends_generation) {
    const char *stops[] = {"<|im_end|>"};
    struct stop_matcher *m = make(stops, 1);
    struct sink s = {0};
    struct stop_out o = feed(m, &s, "Hello <|im");
    cr_assert_str_eq(s.buf, "Hello ");
    cr_assert_not(o.stopped);
    o = feed(m, &s, "_end");
    cr_assert_eq(o.len, 0, "everything is a prefix of the stop string");
    o = feed(m, &s, "|> world");
    cr_assert(o.stopped);
    cr_assert_eq(o.stop, 0);
    cr_assert_str_eq(s.buf, "Hello ");
    o = feed(m, &s, "more");
    cr_assert(o.stopped);
    cr_assert_eq(o.len, 0);
    flush(m, &s);
    cr_assert_str_eq(s.buf, "Hello ");
    stop_free(m);
}

Test(stop, a_partial_match_that_breaks_off_is_released) {
    const char *stops[] = {"STOP"};
    struct stop_matcher *m = make(stops, 1);
    struct sink s = {0};
    feed(m, &s, "go ST");
    cr_assert_str_eq(s.buf, "go ");
    feed(m, &s, "ART");
    cr_assert_str_eq(s.buf, "go START");
    feed(m, &s, "STO");
    cr_assert_str_eq(s.buf, "go START");
    flush(m, &s);
    cr_assert_str_eq(s.buf, "go STARTSTO", "generation ended otherwise: the held text is released");
    stop_free(m);
}

Test(stop, the_stop_that_completes_first_wins_whatever_the_pieces) {
    const char *stops[] = {"abcd", "bc", "zz"};
    const char *text = "xxabcdyy";
    for (size_t cut = 1; cut <= strlen(text); cut++) { /* pieces of `cut` bytes */
        struct stop_matcher *m = make(stops, 3);
        struct sink s = {0};
        struct stop_out o = {0};
        for (size_t i = 0; i < strlen(text) && !o.stopped; i += cut) {
            char piece[16] = {0};
            memcpy(piece, text + i, TP_MIN(cut, strlen(text) - i));
            o = feed(m, &s, piece);
        }
        cr_assert(o.stopped);
        cr_assert_eq(o.stop, 1, "pieces of %zu: \"bc\" ends first", cut);
        cr_assert_str_eq(s.buf, "xxa");
        stop_free(m);
    }
}

Test(stop, unfinished_utf8_characters_are_held_until_complete) {
    struct stop_matcher *m = make(NULL, 0);
    struct sink s = {0};
    feed(m, &s, "caf\xC3");
    cr_assert_str_eq(s.buf, "caf");
    feed(m, &s, "\xA9 ");
    cr_assert_str_eq(s.buf, "caf\xC3\xA9 ");
    const char emoji[] = "\xF0\x9F\xA4\x94"; /* U+1F914, fed one byte at a time */
    for (int i = 0; i < 4; i++) {
        char b[2] = {emoji[i], 0};
        struct stop_out o = feed(m, &s, b);
        cr_assert_eq(o.len, i == 3 ? 4u : 0u, "byte %d", i);
    }
    cr_assert_str_eq(s.buf, "caf\xC3\xA9 \xF0\x9F\xA4\x94");
    feed(m, &s, "\xE6\x9D"); /* half of U+6771, then the generation ends */
    flush(m, &s);
    cr_assert_str_eq(s.buf, "caf\xC3\xA9 \xF0\x9F\xA4\x94\xE6\x9D");
    stop_free(m);
}

Test(stop, utf8_stop_strings_split_inside_characters) {
    const char *stops[] = {"終わり", "\xE2\x80\x94"
                                     "END"}; /* "終わり", "—END" */
    struct stop_matcher *m = make(stops, 2);
    struct sink s = {0};
    const char *text = "これで終わりです";
    size_t n = strlen(text);
    struct stop_out o = {0};
    for (size_t i = 0; i < n && !o.stopped; i++) {
        char b[2] = {text[i], 0};
        o = feed(m, &s, b);
        cr_assert(s.len == 0 || (s.buf[s.len - 1] & 0xC0) != 0xC0, "never ends on a lead byte");
    }
    cr_assert(o.stopped);
    cr_assert_eq(o.stop, 0);
    cr_assert_str_eq(s.buf, "これで");
    stop_free(m);
}

Test(stop, empty_stop_strings_are_ignored_and_null_ones_refused) {
    const char *stops[] = {"", "END"};
    struct stop_matcher *m = make(stops, 2);
    struct sink s = {0};
    struct stop_out o = feed(m, &s, "abc END");
    cr_assert(o.stopped);
    cr_assert_eq(o.stop, 1, "the index is the caller's");
    cr_assert_str_eq(s.buf, "abc ");
    stop_reset(m);
    s.len = 0;
    o = feed(m, &s, "again");
    cr_assert_not(o.stopped);
    flush(m, &s);
    cr_assert_str_eq(s.buf, "again");
    stop_free(m);
    stop_free(NULL);

    const char *bad[] = {"a", NULL};
    tp_err e = {0};
    cr_assert_eq(stop_init(&m, bad, 2, &e), TP_EINVAL);
    cr_assert_null(m);
    cr_assert(strstr(e.msg, "stop string 1"), "%s", e.msg);
}

/* ---- random streams against a brute-force reference ---- */

/* Characters of the random texts: ASCII and multi-byte, so stops and pieces cut characters. */
static const char *const alphabet[] = {"a", "b", "<", "|", "\xC3\xA9", "\xE2\x80\x94", "\xF0\x9F\x99\x82"};

static size_t ref_hold(const char *t, size_t n, const char *const *stops, size_t ns, const size_t *bounds, size_t nb) {
    size_t hold = 0;
    for (size_t s = 0; s < ns; s++) {
        size_t L = strlen(stops[s]);
        for (size_t h = 1; h < L && h <= n; h++)
            if (memcmp(t + n - h, stops[s], h) == 0 && h > hold) hold = h;
    }
    size_t last = 0; /* the last character boundary <= n */
    for (size_t i = 0; i < nb; i++)
        if (bounds[i] <= n) last = bounds[i];
    return TP_MAX(hold, n - last);
}

Test(stop, random_streams_release_exactly_the_reference_text) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    for (int trial = 0; trial < 400; trial++) {
        /* 1-3 stops of 1-4 characters, a text of 0-60 characters. */
        char stop_buf[3][32];
        const char *stops[3];
        size_t ns = 1 + tu_next(&rng) % 3;
        for (size_t s = 0; s < ns; s++) {
            stop_buf[s][0] = '\0';
            size_t nc = 1 + tu_next(&rng) % 4;
            for (size_t c = 0; c < nc; c++) strcat(stop_buf[s], alphabet[tu_next(&rng) % 7]);
            stops[s] = stop_buf[s];
        }
        char text[512] = {0};
        size_t bounds[80], nb = 0, n = 0;
        bounds[nb++] = 0;
        size_t nc = tu_next(&rng) % 61;
        for (size_t c = 0; c < nc; c++) {
            strcat(text, alphabet[tu_next(&rng) % 5 < 3 ? tu_next(&rng) % 2 : tu_next(&rng) % 7]);
            bounds[nb++] = n = strlen(text);
        }
        /* Reference: the stop that ends first (ties: longer); the text before it. */
        size_t best_end = SIZE_MAX, best_pos = 0;
        int best = -1;
        for (size_t s = 0; s < ns; s++) {
            const char *hit = strstr(text, stops[s]);
            if (!hit) continue;
            size_t pos = (size_t)(hit - text), end = pos + strlen(stops[s]);
            if (end < best_end || (end == best_end && pos < best_pos)) {
                best_end = end;
                best_pos = pos;
                best = (int)s;
            }
        }
        struct stop_matcher *m = make(stops, ns);
        struct sink s = {0};
        struct stop_out o = {0};
        size_t fed = 0;
        while (fed < n && !o.stopped) {
            size_t want_len = (size_t)(tu_next(&rng) % 6); /* pieces of 0-5 bytes */
            size_t len = TP_MIN(n - fed, want_len);
            char piece[8] = {0};
            memcpy(piece, text + fed, len);
            o = feed(m, &s, piece);
            fed += len;
            if (!o.stopped) {
                cr_assert(fed < best_end || best < 0, "trial %d: a stop ended at %zu but none reported by %zu", trial,
                          best_end, fed);
                size_t want = fed - ref_hold(text, fed, stops, ns, bounds, nb);
                cr_assert_eq(s.len, want, "trial %d: released %zu of %zu bytes, reference %zu", trial, s.len, fed,
                             want);
            }
        }
        if (best >= 0) {
            cr_assert(o.stopped, "trial %d: stop \"%s\" missed", trial, stops[best]);
            cr_assert_eq(o.stop, best, "trial %d", trial);
            cr_assert_eq(s.len, best_pos);
        } else {
            cr_assert_not(o.stopped);
            flush(m, &s);
            cr_assert_eq(s.len, n);
        }
        cr_assert(memcmp(s.buf, text, s.len) == 0, "trial %d: released text differs", trial);
        stop_free(m);
    }
}
