/* tok_internal.h - the tokenizer's private state, shared by tokenizer.c and the tok_*.c files.
 * Not part of the API: include runtime/tokenizer.h instead. */
#ifndef TPLLM_TOK_INTERNAL_H
#define TPLLM_TOK_INTERNAL_H

#include "tokenizer.h"

#define TOK_MAX_REGEX 4

/* A growable array of token ids (the output of one encode call). */
struct tok_ids {
    int32_t *v;
    int64_t n, cap;
};

/* A string table: string i is blob[off[i] .. off[i+1]). */
struct tok_strs {
    char *blob;
    uint64_t *off; /* n + 1 entries */
    int64_t n;
};

/* Open-addressing hash set of string-table indices (slot -1 = empty), keyed by the string. */
struct tok_map {
    int32_t *slot;
    uint64_t mask; /* capacity - 1, capacity a power of two >= 2 n */
};

/* Trie over the texts of the special (control / user-defined / unknown) tokens, used to find
 * which of them occur in a text without scanning the text once per special token. */
struct tok_trie_node {
    int32_t child;   /* first child, -1 if none */
    int32_t sibling; /* next sibling, -1 if none */
    int32_t token;   /* token whose text ends here, -1 if none */
    uint8_t byte;
};

struct tok_trie {
    struct tok_trie_node *node; /* node 0 is the root */
    int64_t n, cap;
};

struct tokenizer {
    enum tokenizer_kind kind;
    int32_t n_vocab;
    struct tok_strs text;  /* vocabulary texts */
    struct tok_strs piece; /* llama_token_to_piece(id, special = true) of every token */
    float *score;          /* [n_vocab] */
    uint32_t *attr;        /* [n_vocab] enum tokenizer_attr bits */
    struct tok_map map;    /* text -> id (a later duplicate wins, as in llama.cpp) */
    size_t max_piece;

    int32_t bos, eos, eot, eom, unk, pad, sep;
    int32_t fim[6]; /* fill-in-the-middle: pre, suf, mid, pad, rep, sep */
    bool add_bos, add_eos;
    bool add_space_prefix;  /* SPM: prefix a space to text at the start / after a special token */
    bool escape_whitespace; /* replace ' ' by U+2581 before tokenizing */
    bool clean_spaces;      /* detokenize: "a ." -> "a." etc. */
    bool ignore_merges;     /* BPE: a pre-token that is a whole token is not merged */

    int32_t *special; /* control / user-defined / unknown ids, longest text first */
    int32_t n_special;
    struct tok_trie trie;
    int32_t *eog; /* sorted */
    int32_t n_eog;

    /* BPE only */
    struct tok_strs merges;     /* "left right" strings */
    uint32_t *merge_split;      /* [n merges] byte index of the separating space */
    struct tok_map merge_map;   /* (left, right) -> rank = index of the first such merge */
    void *re[TOK_MAX_REGEX];    /* pcre2_code_8 *: pre-tokenizer regexes, applied in order */
    int n_re;
    bool byte_encode;
    char pre[64];               /* tokenizer.ggml.pre */
};

/* tok_ids */
int tok_ids_push(struct tok_ids *a, int32_t id);

/* hashing and maps (tokenizer.c) */
uint64_t tok_hash(const char *s, size_t n);
int32_t tok_lookup(const struct tokenizer *t, const char *s, size_t n); /* id or -1 */
/* Merge rank of (left, right) or -1. */
int32_t tok_merge_rank(const struct tokenizer *t, const char *l, size_t ln, const char *r, size_t rn);
static inline const char *tok_text(const struct tokenizer *t, int32_t id, size_t *n) {
    *n = (size_t)(t->text.off[id + 1] - t->text.off[id]);
    return t->text.blob + t->text.off[id];
}

/* Special tokens (tok_special.c): attribute fix-ups, eot/eom/fim guesses, end-of-generation
 * set (sorted), and the longest-first special list with its trie. */
int tok_special_setup(struct tokenizer *t);

/* UTF-8 (tok_unicode.c) */
/* Sequence length from the lead byte as llama.cpp's unicode_len_utf8: 1 for ASCII and stray
 * continuation bytes, 2/3/4 by the high bits. */
static inline size_t tok_utf8_len(uint8_t c) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}
/* Decode one code point at s[*i] the way llama.cpp's unicode_cpts_from_utf8 does (overlong
 * forms and surrogates are accepted; a malformed or truncated sequence yields U+FFFD and
 * consumes one byte). Values above U+10FFFF, which make llama.cpp throw, also give U+FFFD. */
uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t *i);
/* Append the UTF-8 form of cp (<= 0x10FFFF) to out; returns bytes written (1..4). */
size_t tok_utf8_put(uint32_t cp, char *out);
/* GPT-2 byte-level map: byte -> code point, and back (-1 for code points that are no byte). */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);
/* Length of the well-formed UTF-8 sequence at s[0..n) (Unicode Table 3-7): > 0 complete,
 * 0 a valid but incomplete prefix that needs more bytes, -1 ill-formed (one byte to replace). */
int tok_utf8_check(const uint8_t *s, size_t n);

/* SPM (tok_spm.c): tokenize one fragment (already escaped), appending to out. */
int tok_spm_encode(const struct tokenizer *t, const char *text, size_t len, struct tok_ids *out, tp_err *e);

/* BPE (tok_bpe.c) */
int tok_bpe_setup(struct tokenizer *t, const char *pre, tp_err *e); /* pre-tokenizer regexes */
void tok_bpe_free(struct tokenizer *t);
int tok_bpe_encode(const struct tokenizer *t, const char *text, size_t len, struct tok_ids *out, tp_err *e);
/* The piece of a NORMAL BPE token: byte-level text decoded back to bytes. */
int tok_bpe_decode_text(const char *text, size_t n, char **out, size_t *out_n);

#endif
