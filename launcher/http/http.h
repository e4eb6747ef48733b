/* http.h - the OpenAI-compatible HTTP front end of `tpllm serve` (libmicrohttpd).
 *
 * Routes: POST /v1/completions, POST /v1/chat/completions (stream: true as Server-Sent
 * Events ending in "data: [DONE]"), GET /v1/models, GET /health (no key needed; 503 while
 * the model loads or when a rank stopped answering), GET /metrics (Prometheus text).
 * Errors are OpenAI's error JSON with the 4xx/5xx code. One thread per connection (bounded
 * by max_conns); the handlers never call MPI: they hand jobs to the coordinator through
 * the hub and wait for its pieces. docs/serving.md and docs/api.md describe it. */
#ifndef TPLLM_HTTP_H
#define TPLLM_HTTP_H

#include "launcher/serve/front.h"
#include "launcher/serve/hub.h"

struct http_opts {
    const char *host;    /* address to bind (default 127.0.0.1) */
    int port;            /* 0: any free port (http_port says which) */
    const char *api_key; /* NULL: none; else "Authorization: Bearer KEY" on every route but /health */
    size_t max_body;     /* request bodies above this get 413 */
    int max_conns;       /* connections at once (more are refused by the listener) */
    int timeout_s;       /* idle connection timeout */
};

struct http_srv;

/* Starts listening (before the model is loaded: /health answers 503 until
 * http_set_model). TP_EIO naming the address when it cannot bind. */
int http_start(struct http_srv **out, const struct http_opts *o, struct hub *h, tp_err *e);
/* The model the handlers serve; m must outlive the server. */
void http_set_model(struct http_srv *s, const struct front_model *m);
int http_port(const struct http_srv *s);
/* Stops listening and waits for the connection threads (they end once their jobs end). */
void http_stop(struct http_srv *s);

#endif
