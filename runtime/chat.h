/* chat.h - chat formatting: recognise a model's chat template and render conversations
 * exactly as its Jinja template does (as transformers' apply_chat_template renders it).
 *
 * tpllm does not run Jinja. It recognises the template families by robust signatures and
 * renders them with built-in formatters, checked byte for byte against the real templates
 * rendered by jinja2 (tests/golden/make_chat_golden.py):
 *   gemma   "<start_of_turn>"      Gemma 2/3: a leading system message is prepended to the
 *                                  first user turn; assistant is called "model"; contents
 *                                  are trimmed; roles must alternate user/assistant.
 *   llama3  "<|start_header_id|>"  Llama 3: header per message, contents trimmed, BOS before
 *                                  the first message. (Llama 3.1+ templates also add a
 *                                  "Cutting Knowledge Date" system header; tpllm renders
 *                                  them as Llama 3, as llama.cpp's built-in formatter does.)
 *   chatml  "<|im_start|>"         ChatML (Qwen2, Qwen2.5, SmolLM, ...): contents verbatim;
 *                                  the default system prompt a template inserts when the
 *                                  conversation has none (Qwen2's "You are a helpful
 *                                  assistant.") is read from the template text. */
#ifndef TPLLM_CHAT_H
#define TPLLM_CHAT_H

#include "../kernels/base.h"

enum chat_format { CHAT_GEMMA = 0, CHAT_LLAMA3, CHAT_CHATML, CHAT_UNKNOWN, CHAT_FORMAT_COUNT };

/* A recognised template: the format and what the formatter needs from the template text. */
struct chat_template {
    enum chat_format format;
    char default_system[512]; /* chatml: system prompt inserted when messages[0] is not "system"; "" = none */
};

/* One message; both strings NUL-terminated UTF-8 (any role string is rendered as given). */
struct chat_message {
    const char *role;
    const char *content;
};

/* "gemma", "llama3", "chatml", "unknown". */
const char *chat_format_name(enum chat_format f);

/* The format named on the command line (--chat-format NAME). TP_EINVAL listing the names
 * for anything else. The default system prompt of a forced chatml is empty. */
int chat_format_parse(const char *name, struct chat_template *out, tp_err *e);

/* Recognise tmpl[0..len) (a model's tokenizer.chat_template). TP_EUNSUPPORTED when it is
 * missing (tmpl NULL or len 0) or matches no built-in format, with a message naming the
 * built-in formats and --chat-format; out->format is then CHAT_UNKNOWN. */
int chat_detect(const char *tmpl, size_t len, struct chat_template *out, tp_err *e);

/* The text of the BOS token the format's template writes ("<bos>", "<|begin_of_text|>"),
 * or NULL when its template writes none (chatml). */
const char *chat_default_bos(enum chat_format f);

/* Render msgs[0..n) as the template does, with the assistant turn opened when
 * add_generation_prompt. bos is the model's BOS token text (NULL: chat_default_bos).
 * On success *out is a malloc'd NUL-terminated string (the caller frees it), *out_len its
 * length, and *bos_in_text says whether the text already begins with the BOS token: then
 * tokenize it without adding BOS (parse special tokens); otherwise add BOS as the
 * tokenizer's metadata says. TP_EINVAL (naming the message) for no messages, a NULL role
 * or content, or roles the template refuses (gemma: not alternating); TP_ENOMEM; on
 * failure *out = NULL. */
int chat_apply(const struct chat_template *t, const struct chat_message *msgs, size_t n, bool add_generation_prompt,
               const char *bos, char **out, size_t *out_len, bool *bos_in_text, tp_err *e);

#endif
