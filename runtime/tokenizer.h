/* tokenizer.h - text <-> token ids, identical to llama.cpp's llama_tokenize / llama_token_to_piece.
 *
 * Two vocabulary kinds are read from GGUF metadata (tokenizer.ggml.model):
 *   "llama" - SentencePiece-style: scores decide bigram merges, spaces become U+2581,
 *             bytes that form no token fall back to <0xNN> tokens.
 *   "gpt2"  - byte-level BPE: a pre-tokenizer regex (tokenizer.ggml.pre: default, llama3 /
 *             llama-bpe, qwen2, gpt-2, ...) splits the text, bytes map to printable code
 *             points, tokenizer.ggml.merges ranks the merges.
 * Control, unknown and user-defined tokens are matched in the text before the rest is
 * tokenized (control/unknown only when parse_special is set). docs/tokenizers.md lists the
 * places where tpllm deliberately differs (invalid UTF-8 that makes llama.cpp abort).
 *
 * A loaded tokenizer is immutable: any number of threads may encode/decode with it at once. */
#ifndef TPLLM_TOKENIZER_H
#define TPLLM_TOKENIZER_H

#include "../kernels/base.h"
#include "gguf.h"

struct tokenizer;

enum tokenizer_kind {
    TOKENIZER_SPM = 0, /* "llama" */
    TOKENIZER_BPE = 1, /* "gpt2" */
};

/* Token attributes: bit values equal llama.cpp's llama_token_attr. */
enum tokenizer_attr {
    TOKENIZER_ATTR_UNDEFINED = 0,
    TOKENIZER_ATTR_UNKNOWN = 1 << 0,
    TOKENIZER_ATTR_UNUSED = 1 << 1,
    TOKENIZER_ATTR_NORMAL = 1 << 2,
    TOKENIZER_ATTR_CONTROL = 1 << 3,
    TOKENIZER_ATTR_USER_DEFINED = 1 << 4,
    TOKENIZER_ATTR_BYTE = 1 << 5,
};

/* Build a tokenizer from the tokenizer.ggml.* keys of `f`. Everything is copied: the
 * tokenizer does not refer to `f` afterwards. An unknown tokenizer model or pre-tokenizer
 * gives TP_EUNSUPPORTED naming it; missing or malformed keys give TP_EFORMAT. On failure
 * *out = NULL and e is filled. */
int tokenizer_load(struct tokenizer **out, const struct gguf_file *f, tp_err *e);
void tokenizer_free(struct tokenizer *t);

/* Tokenize text[0..len) exactly like llama_tokenize(text, add_special, parse_special):
 * add_special adds BOS (and EOS) when the metadata asks for it; parse_special turns the
 * texts of control tokens (e.g. "<start_of_turn>") into those tokens (user-defined tokens
 * are always matched). The text may be any bytes: invalid UTF-8 never fails; texts over
 * 512 MiB are refused (TP_EINVAL).
 * *n_out receives the token count. If it exceeds cap, nothing useful is written to out
 * (out may be NULL with cap 0 to ask for the size) and TP_EINVAL is returned. */
int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                     int32_t *out, int64_t cap, int64_t *n_out, tp_err *e);

/* The bytes token `id` stands for, like llama_token_to_piece(id, lstrip = 0, special):
 * SPM turns U+2581 into ' ' and <0xNN> into the byte; BPE reverses the byte-to-code-point
 * map; control and unknown tokens are empty unless `special`. Returns the piece's length
 * and copies it to buf when it fits in cap (no NUL is added); returns TP_EINVAL for an id
 * outside the vocabulary. A piece may be an incomplete UTF-8 sequence (byte tokens). */
int64_t tokenizer_piece(const struct tokenizer *t, int32_t id, bool special, char *buf, size_t cap);

/* Concatenated pieces of ids[0..n), like llama_detokenize(remove_special, unparse_special):
 * remove_special drops a leading BOS / trailing EOS that add_special would have added, SPM
 * vocabularies with add_space_prefix drop the leading space, and BPE vocabularies whose
 * pre-tokenizer asks for it clean up spaces before punctuation. *n_out gets the length;
 * when it exceeds cap, TP_EINVAL is returned (buf may be NULL with cap 0 to ask). */
int tokenizer_detokenize(const struct tokenizer *t, const int32_t *ids, int64_t n, bool remove_special,
                         bool unparse_special, char *buf, size_t cap, size_t *n_out, tp_err *e);

/* Accessors. Ids are -1 where the vocabulary has no such token. */
enum tokenizer_kind tokenizer_kind(const struct tokenizer *t);
int32_t tokenizer_n_vocab(const struct tokenizer *t);
int32_t tokenizer_bos(const struct tokenizer *t);
int32_t tokenizer_eos(const struct tokenizer *t);
int32_t tokenizer_eot(const struct tokenizer *t);
int32_t tokenizer_unk(const struct tokenizer *t);
int32_t tokenizer_pad(const struct tokenizer *t);
bool tokenizer_add_bos(const struct tokenizer *t);
bool tokenizer_add_eos(const struct tokenizer *t);
/* End of generation: eos, eot, eom and tokens like <end_of_turn>, <|im_end|>, <|endoftext|>. */
bool tokenizer_is_eog(const struct tokenizer *t, int32_t id);
/* The id whose vocabulary text is exactly text[0..len), or -1. */
int32_t tokenizer_find(const struct tokenizer *t, const char *text, size_t len);
/* The raw vocabulary text of id (not NUL-terminated; valid while t lives), or NULL. */
const char *tokenizer_token_text(const struct tokenizer *t, int32_t id, size_t *len);
/* Attribute bits (enum tokenizer_attr) of id; 0 for an id outside the vocabulary. */
unsigned tokenizer_token_attr(const struct tokenizer *t, int32_t id);
/* Longest piece any token decodes to (special = true), for sizing buffers. */
size_t tokenizer_max_piece(const struct tokenizer *t);

/* Streaming detokenizer: feed generated ids one at a time and get back text that is always
 * valid UTF-8. Bytes of a multi-byte character split over several tokens are held back
 * until the character is complete; bytes that can never form a valid character become
 * U+FFFD. detok_flush emits U+FFFD for a held incomplete tail at the end. */
struct detok {
    const struct tokenizer *t;
    bool special;       /* render control tokens (llama_token_to_piece's `special`) */
    uint8_t tail[4];    /* held-back start of an incomplete UTF-8 sequence */
    size_t n_tail;
    char *buf;          /* output of the last call (owned) */
    size_t cap;
};

/* Start a stream. Never fails; detok_free releases the output buffer. */
void detok_init(struct detok *d, const struct tokenizer *t, bool special);
void detok_free(struct detok *d);
/* Add token `id`. *out and *n_out get the newly complete text (valid until the next call on d;
 * *n_out may be 0). TP_EINVAL for an id outside the vocabulary, TP_ENOMEM on allocation. */
int detok_push(struct detok *d, int32_t id, const char **out, size_t *n_out, tp_err *e);
/* Add raw bytes (e.g. a piece produced elsewhere) to the stream, same contract. */
int detok_push_bytes(struct detok *d, const char *bytes, size_t len, const char **out, size_t *n_out, tp_err *e);
/* End of stream: emit U+FFFD if an incomplete sequence is held, and reset. */
int detok_flush(struct detok *d, const char **out, size_t *n_out, tp_err *e);

#endif
