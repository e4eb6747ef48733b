/* request.h - a generation request from JSON (OpenAI's field names, shared by the HTTP and
 * ZeroMQ front ends) into a hub_job: the prompt or messages, max_tokens and the sampling
 * fields, each checked with a message that names the field and what is allowed. */
#ifndef TPLLM_REQUEST_H
#define TPLLM_REQUEST_H

#include <jansson.h>

#include "front.h"
#include "hub.h"

enum req_kind { REQ_COMPLETION = 0, REQ_CHAT = 1 };

/* What the front end needs besides the job. */
struct req_extra {
    bool stream, include_usage;
    int top_logprobs; /* 0..20 */
    char model[256];  /* the "model" field, or the server's model name */
};

/* Fills j (prompt tokens, max_tokens, sampling, stops, logprobs) from the request object
 * `root`. kind says which prompt field is expected: "prompt" (a string, a list of one
 * string, or a list of token ids) or "messages" (a list of {role, content}; content a
 * string or a list of text parts). Defaults as OpenAI's: temperature 1, top_p 1, no top-k
 * or min-p, max_tokens 16 for completions and the rest of the context for chat.
 * Returns 0, or TP_EINVAL with e naming the field and *param set to its name (for the
 * error JSON's "param"), TP_ENOTFOUND for a model the server does not serve,
 * TP_EUNSUPPORTED for a chat request to a model without a known template. */
int req_parse(const json_t *root, enum req_kind kind, const struct front_model *m, struct hub_job *j,
              struct req_extra *x, const char **param, tp_err *e);

#endif
