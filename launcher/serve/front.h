/* front.h - what the front ends (HTTP, ZeroMQ) share: the loaded model's facts they need
 * on rank 0 (tokenizer, chat template, names and limits) and the turning of a request's
 * prompt or messages into token ids. Filled once the model is loaded; read-only after. */
#ifndef TPLLM_FRONT_H
#define TPLLM_FRONT_H

#include "runtime/chat.h"
#include "runtime/tokenizer.h"

struct front_model {
    const char *name;              /* model id in the API ("gemma-3-270m-q4_k_m": the file name) */
    const struct tokenizer *tok;
    struct chat_template tmpl;
    bool has_tmpl;                 /* false: chat requests are refused with tmpl_err */
    char tmpl_err[512];
    char bos_text[64];             /* the BOS token's text ("" when the model has none) */
    int64_t ctx;                   /* tokens per sequence */
    int n_cand;                    /* the largest top_k a request may use */
    int64_t created;               /* Unix time the server started */
};

/* Token ids of a plain-text prompt, as `tpllm generate -p` tokenizes it (BOS added as the
 * model's metadata says, special tokens not parsed). *ids is malloc'd. */
int front_encode_text(const struct front_model *m, const char *text, size_t len, int32_t **ids, int64_t *n,
                      tp_err *e);
/* Token ids of a conversation rendered with the model's chat template, the assistant turn
 * opened (as `tpllm generate --chat`). TP_EINVAL naming the message for roles the
 * template refuses; TP_EUNSUPPORTED when the model has no known template. */
int front_encode_chat(const struct front_model *m, const struct chat_message *msgs, size_t n, int32_t **ids,
                      int64_t *n_ids, tp_err *e);
/* The text of one token as it appears in the output (detokenized, special tokens kept),
 * into buf (NUL-terminated); its length. */
size_t front_token_text(const struct front_model *m, int32_t id, char *buf, size_t cap);

#endif
