/* front.c - prompt and message encoding shared by the front ends (front.h). */
#include "front.h"

#include <stdlib.h>
#include <string.h>

static int encode(const struct front_model *m, const char *text, size_t len, bool add_special, bool parse_special,
                  int32_t **ids, int64_t *n, tp_err *e) {
    *ids = NULL;
    *n = 0;
    int64_t need = 0;
    tokenizer_encode(m->tok, text, len, add_special, parse_special, NULL, 0, &need, NULL);
    int32_t *out = malloc((size_t)(need + 1) * sizeof(int32_t));
    if (!out) return tp_errf(e, TP_ENOMEM, "out of host memory tokenizing %zu bytes", len);
    int rc = tokenizer_encode(m->tok, text, len, add_special, parse_special, out, need + 1, n, e);
    if (rc) {
        free(out);
        return rc;
    }
    *ids = out;
    return 0;
}

int front_encode_text(const struct front_model *m, const char *text, size_t len, int32_t **ids, int64_t *n,
                      tp_err *e) {
    return encode(m, text, len, true, false, ids, n, e);
}

int front_encode_chat(const struct front_model *m, const struct chat_message *msgs, size_t n, int32_t **ids,
                      int64_t *n_ids, tp_err *e) {
    *ids = NULL;
    *n_ids = 0;
    if (!m->has_tmpl) return tp_errf(e, TP_EUNSUPPORTED, "%s", m->tmpl_err);
    char *text = NULL;
    size_t len = 0;
    bool bos_in_text = false;
    int rc = chat_apply(&m->tmpl, msgs, n, true, m->bos_text[0] ? m->bos_text : NULL, &text, &len, &bos_in_text, e);
    if (rc) return rc;
    rc = encode(m, text, len, !bos_in_text, true, ids, n_ids, e);
    free(text);
    return rc;
}

size_t front_token_text(const struct front_model *m, int32_t id, char *buf, size_t cap) {
    size_t n = 0;
    if (cap == 0) return 0;
    if (tokenizer_detokenize(m->tok, &id, 1, false, true, buf, cap - 1, &n, NULL) != 0 || n >= cap) n = 0;
    buf[n] = '\0';
    return n;
}
