/* zmq_front.h - the ZeroMQ front end of `tpllm serve --zmq ENDPOINT`.
 *
 * A ZMQ_ROUTER socket bound on the endpoint, served by one thread of its own. Clients
 * (DEALER sockets; REQ for one-answer messages such as health) send single-frame JSON
 * messages: {"op": "submit" | "cancel" | "health", ...}. A submit is turned into a hub
 * job (req_parse: the OpenAI completion fields with "prompt", the chat fields with
 * "messages") and every generated token is streamed back as its own message as soon as
 * the coordinator produces it, then a "done" (or "error") message. docs/api.md, section
 * "ZeroMQ", is the protocol's reference.
 *
 * The thread only calls hub_* (never MPI or the scheduler), the tokenizer (read-only)
 * and libzmq/jansson. At most ZMQ_FRONT_MAX_JOBS jobs are in flight per front end; a
 * client whose identity disappears (its socket closed) has its jobs cancelled. */
#ifndef TPLLM_ZMQ_FRONT_H
#define TPLLM_ZMQ_FRONT_H

#include "launcher/serve/front.h"
#include "launcher/serve/hub.h"

#define ZMQ_FRONT_MAX_JOBS 256             /* in flight per front end; more: error 429 */
#define ZMQ_FRONT_MAX_MSG (1u << 20)       /* larger messages: error 400 */
#define ZMQ_FRONT_MAX_ID 64                /* bytes of a client's job id */

struct zmq_front;

/* Binds a ROUTER socket on endpoint (e.g. "tcp://127.0.0.1:5555", "ipc:///tmp/tpllm.sock";
 * "tcp://127.0.0.1:*" picks a free port, see zmq_front_endpoint) and starts its thread.
 * h and m must outlive the front end. Returns 0, or TP_EIO naming the endpoint and the
 * reason when the bind fails (TP_ENOMEM, TP_EIO for the context or the thread). */
int zmq_front_start(struct zmq_front **out, const char *endpoint, struct hub *h, const struct front_model *m,
                    tp_err *e);
/* The endpoint actually bound (ZMQ_LAST_ENDPOINT: the port chosen for "*"). */
const char *zmq_front_endpoint(const struct zmq_front *z);
/* Stops the thread (within a few milliseconds), tells clients of unfinished jobs that the
 * server is shutting down (best effort), cancels and releases those jobs, closes the
 * socket and the context. Call before hub_free. NULL is a no-op. */
void zmq_front_stop(struct zmq_front *z);

#endif
