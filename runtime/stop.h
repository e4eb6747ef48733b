/* stop.h - incremental stop-string matching over streamed, detokenized text.
 *
 * Generated text arrives one token piece at a time, and a stop string may span several
 * pieces ("<|im" + "_end|>"), or a piece may end halfway through a UTF-8 character (byte
 * tokens). The matcher holds back exactly what might still turn out to be the start of a
 * stop string or an unfinished character, releases the rest, and when a stop string
 * appears releases only the text before it (OpenAI semantics: the stop string itself is
 * not returned) and reports the end of generation.
 *
 * The stop string that ends first wins (on a tie, the longer), exactly as if the text came
 * one byte at a time, so the result never depends on how the text is cut into pieces.
 * Matching is bytewise; for UTF-8 stop strings in UTF-8 text this finds exactly the
 * character-aligned occurrences. Usage per sequence:
 *   stop_init(&m, stops, n, e);
 *   for each piece: stop_feed(m, piece, len, &o, e); send o.text[0..o.len); if o.stopped: end
 *   at EOS / length limit: stop_flush(m, &o); send o.text[0..o.len)
 *   stop_free(m); */
#ifndef TPLLM_STOP_H
#define TPLLM_STOP_H

#include "../kernels/base.h"

struct stop_matcher;

/* What a feed or flush releases. text points into the matcher and stays valid until the
 * next call on it; it is not NUL-terminated. */
struct stop_out {
    const char *text;
    size_t len;
    bool stopped; /* a stop string matched: text is everything before it; generation ends */
    int stop;     /* index of the matched stop string in the list given to stop_init, or -1 */
};

/* A matcher for stops[0..n_stops) (copied; empty strings are ignored; n_stops may be 0,
 * and then the matcher only keeps characters whole). TP_ENOMEM or TP_EINVAL (NULL string)
 * with e filled and *out = NULL on failure. */
int stop_init(struct stop_matcher **out, const char *const *stops, size_t n_stops, tp_err *e);
void stop_free(struct stop_matcher *m);

/* Append piece[0..len) (any bytes, len may be 0) and fill *o with what is safe to emit now.
 * After a stop has matched, every further feed releases nothing and keeps o->stopped set.
 * TP_ENOMEM when the pending text cannot grow (nothing is lost: the call may be repeated). */
int stop_feed(struct stop_matcher *m, const char *piece, size_t len, struct stop_out *o, tp_err *e);

/* Generation ended for another reason (end-of-sequence token, length limit): release every
 * held byte, even an unfinished character. After a stop this releases nothing. */
void stop_flush(struct stop_matcher *m, struct stop_out *o);

/* Forget the pending text and any match, keeping the stop strings (for a new sequence). */
void stop_reset(struct stop_matcher *m);

#endif
