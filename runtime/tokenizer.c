/* tokenizer.c - loading a tokenizer from GGUF metadata the way llama.cpp's llama_vocab::load
 * does (defaults, special ids, attribute fix-ups, end-of-generation set), hash maps, accessors. */
#include "tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_PREFIX "tokenizer.ggml."

/* ---- hashing ---- */

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

uint64_t tok_hash(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t k;
        memcpy(&k, s + i, 8);
        h = (h ^ mix64(k)) * 0x100000001b3ull;
    }
    uint64_t k = 0;
    for (size_t j = 0; i < n; i++, j++) k |= (uint64_t)(uint8_t)s[i] << (8 * j);
    return mix64(h ^ k);
}

static uint64_t pair_hash(const char *l, size_t ln, const char *r, size_t rn) {
    return mix64(tok_hash(l, ln) ^ (tok_hash(r, rn) * 0x9E3779B97F4A7C15ull));
}

static int map_init(struct tok_map *m, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap *= 2;
    if (cap > ((uint64_t)1 << 40)) return TP_ENOMEM;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return TP_ENOMEM;
    memset(m->slot, 0xFF, cap * sizeof *m->slot); /* -1 */
    m->mask = cap - 1;
    return 0;
}

/* Insert vocabulary id; a later id with the same text replaces the earlier (token_to_id[w] = i). */
static void map_put_token(struct tokenizer *t, int32_t id) {
    size_t n;
    const char *s = tok_text(t, id, &n);
    for (uint64_t i = tok_hash(s, n) & t->map.mask;; i = (i + 1) & t->map.mask) {
        int32_t o = t->map.slot[i];
        if (o < 0) {
            t->map.slot[i] = id;
            return;
        }
        size_t on;
        const char *os = tok_text(t, o, &on);
        if (on == n && memcmp(os, s, n) == 0) {
            t->map.slot[i] = id;
            return;
        }
    }
}

int32_t tok_lookup(const struct tokenizer *t, const char *s, size_t n) {
    for (uint64_t i = tok_hash(s, n) & t->map.mask;; i = (i + 1) & t->map.mask) {
        int32_t o = t->map.slot[i];
        if (o < 0) return -1;
        size_t on;
        const char *os = tok_text(t, o, &on);
        if (on == n && memcmp(os, s, n) == 0) return o;
    }
}

static void merge_parts(const struct tokenizer *t, int32_t m, const char **l, size_t *ln, const char **r,
                        size_t *rn) {
    const char *s = t->merges.blob + t->merges.off[m];
    size_t n = (size_t)(t->merges.off[m + 1] - t->merges.off[m]), sp = t->merge_split[m];
    *l = s;
    *ln = sp;
    *r = s + sp + 1;
    *rn = n - sp - 1;
}

int32_t tok_merge_rank(const struct tokenizer *t, const char *l, size_t ln, const char *r, size_t rn) {
    if (!t->merge_map.slot) return -1;
    for (uint64_t i = pair_hash(l, ln, r, rn) & t->merge_map.mask;; i = (i + 1) & t->merge_map.mask) {
        int32_t o = t->merge_map.slot[i];
        if (o < 0) return -1;
        const char *ml, *mr;
        size_t mln, mrn;
        merge_parts(t, o, &ml, &mln, &mr, &mrn);
        if (mln == ln && mrn == rn && memcmp(ml, l, ln) == 0 && memcmp(mr, r, rn) == 0) return o;
    }
}

/* Insert merge m unless the pair is already ranked (emplace keeps the first rank). */
static void merge_put(struct tokenizer *t, int32_t m) {
    const char *l, *r;
    size_t ln, rn;
    merge_parts(t, m, &l, &ln, &r, &rn);
    for (uint64_t i = pair_hash(l, ln, r, rn) & t->merge_map.mask;; i = (i + 1) & t->merge_map.mask) {
        int32_t o = t->merge_map.slot[i];
        if (o < 0) {
            t->merge_map.slot[i] = m;
            return;
        }
        const char *ml, *mr;
        size_t mln, mrn;
        merge_parts(t, o, &ml, &mln, &mr, &mrn);
        if (mln == ln && mrn == rn && memcmp(ml, l, ln) == 0 && memcmp(mr, r, rn) == 0) return;
    }
}

int tok_ids_push(struct tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        int64_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return TP_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ---- loading ---- */

/* Copy a GGUF string array into a string table; `fix_empty` renames empty strings
 * "[EMPTY_i]" as llama.cpp does for token texts. */
static int strs_load(struct tok_strs *s, const struct gguf_kv *kv, uint64_t n, bool fix_empty) {
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str g = gguf_arr_str(kv, i);
        size_t len = g.len ? (size_t)g.len : (fix_empty ? 32 : 0);
        if (!tp_add_size(total, len, &total)) return TP_ENOMEM;
    }
    s->blob = malloc(total ? total : 1);
    s->off = malloc((size_t)(n + 1) * sizeof *s->off);
    if (!s->blob || !s->off) return TP_ENOMEM;
    uint64_t at = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str g = gguf_arr_str(kv, i);
        s->off[i] = at;
        if (g.len) {
            memcpy(s->blob + at, g.ptr, (size_t)g.len);
            at += g.len;
        } else if (fix_empty) {
            at += (uint64_t)snprintf(s->blob + at, 32, "[EMPTY_%llu]", (unsigned long long)i);
        }
    }
    s->off[n] = at;
    s->n = (int64_t)n;
    return 0;
}

static void strs_free(struct tok_strs *s) {
    free(s->blob);
    free(s->off);
}

/* Optional special-token id key: a value outside the vocabulary keeps the default (llama.cpp
 * warns "bad special token"). */
static int read_id(const struct gguf_file *f, const char *key, int32_t n_vocab, int32_t *id, tp_err *e) {
    int64_t v;
    int rc = gguf_get_i64(f, key, &v, e);
    if (rc == TP_ENOTFOUND) return 0;
    if (rc) return rc;
    if (v >= 0 && v < n_vocab) *id = (int32_t)v;
    return 0;
}

static int read_bool(const struct gguf_file *f, const char *key, bool *out, tp_err *e) {
    int rc = gguf_get_bool(f, key, out, e);
    return rc == TP_ENOTFOUND ? 0 : rc;
}

/* Piece with special = true, as llama_vocab::impl::token_to_piece builds its cache. */
static int make_piece(const struct tokenizer *t, int32_t id, char **out, size_t *n, char *small) {
    uint32_t a = t->attr[id];
    size_t tn;
    const char *s = tok_text(t, id, &tn);
    *out = small;
    *n = 0;
    if (a & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED)) {
        *out = (char *)s;
        *n = tn;
    } else if (a & TOKENIZER_ATTR_NORMAL) {
        if (t->kind == TOKENIZER_BPE && !t->escape_whitespace) return tok_bpe_decode_text(s, tn, out, n);
        char *o = malloc(tn ? tn : 1); /* U+2581 (3 bytes) -> ' ' only shrinks */
        if (!o) return TP_ENOMEM;
        size_t k = 0;
        for (size_t i = 0; i < tn;) {
            if (i + 3 <= tn && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                o[k++] = ' ';
                i += 3;
            } else {
                o[k++] = s[i++];
            }
        }
        *out = o;
        *n = k;
    } else if (a & TOKENIZER_ATTR_BYTE) {
        /* strtol(text.substr(3, 2), 16): leading hex digits of at most two characters. */
        unsigned v = 0;
        for (size_t i = 3; i < 5 && i < tn; i++) {
            char c = s[i];
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0) break;
            v = v * 16 + (unsigned)d;
        }
        small[0] = (char)v;
        *n = 1;
    }
    return 0;
}

static int build_pieces(struct tokenizer *t) {
    struct tok_strs *p = &t->piece;
    size_t cap = (size_t)(t->text.off[t->n_vocab]) + 16, at = 0;
    p->blob = malloc(cap);
    p->off = malloc((size_t)(t->n_vocab + 1) * sizeof *p->off);
    if (!p->blob || !p->off) return TP_ENOMEM;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        char small[4], *s;
        size_t n;
        if (make_piece(t, id, &s, &n, small)) return TP_ENOMEM;
        size_t tn;
        const char *txt = tok_text(t, id, &tn);
        bool owned = s != small && s != txt;
        if (at + n > cap) {
            size_t nc = cap;
            while (at + n > nc) nc *= 2;
            char *b = realloc(p->blob, nc);
            if (!b) {
                if (owned) free(s);
                return TP_ENOMEM;
            }
            p->blob = b;
            cap = nc;
        }
        memcpy(p->blob + at, s, n);
        p->off[id] = at;
        at += n;
        if (n > t->max_piece) t->max_piece = n;
        if (owned) free(s);
    }
    p->off[t->n_vocab] = at;
    p->n = t->n_vocab;
    return 0;
}

static int load_merges(struct tokenizer *t, const struct gguf_file *f, tp_err *e) {
    enum gguf_vtype type;
    uint64_t n;
    const struct gguf_kv *kv;
    int rc = gguf_get_arr(f, KEY_PREFIX "merges", &type, &n, &kv, e);
    if (rc == TP_ENOTFOUND)
        return tp_errf(e, TP_EFORMAT, "%s: BPE vocabulary without " KEY_PREFIX "merges; convert the model again with "
                       "llama.cpp's convert_hf_to_gguf.py", f->path);
    if (rc) return rc;
    if (type != GGUF_VT_STRING || n > INT32_MAX)
        return tp_errf(e, TP_EFORMAT, "%s: " KEY_PREFIX "merges must be an array of at most 2^31 strings; convert the "
                       "model again", f->path);
    if (strs_load(&t->merges, kv, n, false)) return TP_ENOMEM;
    t->merge_split = malloc((size_t)(n ? n : 1) * sizeof *t->merge_split);
    if (!t->merge_split || map_init(&t->merge_map, (int64_t)n)) return TP_ENOMEM;
    for (int32_t m = 0; m < (int32_t)n; m++) {
        const char *s = t->merges.blob + t->merges.off[m];
        size_t len = (size_t)(t->merges.off[m + 1] - t->merges.off[m]);
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL; /* word.find(' ', 1) */
        if (!sp) continue; /* ranks ("", ""): can never match a symbol pair */
        t->merge_split[m] = (uint32_t)(sp - s);
        merge_put(t, m);
    }
    return 0;
}

static int load(struct tokenizer *t, const struct gguf_file *f, tp_err *e) {
    struct gguf_str s;
    char model[64], pre[64] = "";
    int rc = gguf_get_str(f, KEY_PREFIX "model", &s, e);
    if (rc == TP_ENOTFOUND)
        return tp_errf(e, TP_EFORMAT, "%s: no " KEY_PREFIX "model key, so the file carries no tokenizer; use a GGUF "
                       "converted with its vocabulary", f->path);
    if (rc) return rc;
    gguf_str_copy(s, model, sizeof model);
    rc = gguf_get_str(f, KEY_PREFIX "pre", &s, e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    if (!rc) gguf_str_copy(s, pre, sizeof pre);

    t->eot = t->eom = t->sep = t->pad = -1;
    for (int i = 0; i < 6; i++) t->fim[i] = -1;
    if (strcmp(model, "llama") == 0) {
        t->kind = TOKENIZER_SPM;
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_space_prefix = true;
        t->escape_whitespace = true;
        t->add_bos = true;
    } else if (strcmp(model, "gpt2") == 0) {
        t->kind = TOKENIZER_BPE;
        t->bos = 11, t->eos = 11, t->unk = -1;
        if ((rc = tok_bpe_setup(t, pre, e))) return rc;
    } else {
        return tp_errf(e, TP_EUNSUPPORTED, "%s: tokenizer model '%s' (" KEY_PREFIX "model) is not supported; tpllm "
                       "reads 'llama' (SentencePiece) and 'gpt2' (byte-level BPE) vocabularies", f->path, model);
    }
    if ((rc = read_bool(f, KEY_PREFIX "add_space_prefix", &t->add_space_prefix, e))) return rc;

    enum gguf_vtype type;
    uint64_t n;
    const struct gguf_kv *tokens, *scores = NULL, *types = NULL;
    rc = gguf_get_arr(f, KEY_PREFIX "tokens", &type, &n, &tokens, e);
    if (rc == TP_ENOTFOUND)
        return tp_errf(e, TP_EFORMAT, "%s: no " KEY_PREFIX "tokens (the vocabulary); convert the model again",
                       f->path);
    if (rc) return rc;
    if (type != GGUF_VT_STRING || n == 0 || n > (1u << 30))
        return tp_errf(e, TP_EFORMAT, "%s: " KEY_PREFIX "tokens must be a non-empty array of strings (found %llu "
                       "elements of %s); convert the model again", f->path, (unsigned long long)n,
                       gguf_vtype_name(type));
    t->n_vocab = (int32_t)n;
    uint64_t m;
    rc = gguf_get_arr(f, KEY_PREFIX "scores", &type, &m, &scores, e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    if (!rc && ((type != GGUF_VT_FLOAT32 && type != GGUF_VT_INT32) || m < n))
        return tp_errf(e, TP_EFORMAT, "%s: " KEY_PREFIX "scores must hold %llu FLOAT32 or INT32 values (found %llu "
                       "of %s); convert the model again", f->path, (unsigned long long)n, (unsigned long long)m,
                       gguf_vtype_name(type));
    rc = gguf_get_arr(f, KEY_PREFIX "token_type", &type, &m, &types, e);
    if (rc && rc != TP_ENOTFOUND) return rc;
    if (!rc && (type != GGUF_VT_INT32 || m < n))
        return tp_errf(e, TP_EFORMAT, "%s: " KEY_PREFIX "token_type must hold %llu INT32 values (found %llu of %s); "
                       "convert the model again", f->path, (unsigned long long)n, (unsigned long long)m,
                       gguf_vtype_name(type));

    t->score = malloc((size_t)n * sizeof *t->score);
    t->attr = malloc((size_t)n * sizeof *t->attr);
    if (!t->score || !t->attr || strs_load(&t->text, tokens, n, true) || map_init(&t->map, (int64_t)n))
        return tp_errf(e, TP_ENOMEM, "%s: out of memory for a vocabulary of %llu tokens", f->path,
                       (unsigned long long)n);
    static const uint32_t type_attr[7] = {TOKENIZER_ATTR_UNDEFINED, TOKENIZER_ATTR_NORMAL, TOKENIZER_ATTR_UNKNOWN,
                                          TOKENIZER_ATTR_CONTROL, TOKENIZER_ATTR_USER_DEFINED, TOKENIZER_ATTR_UNUSED,
                                          TOKENIZER_ATTR_BYTE};
    for (int32_t i = 0; i < t->n_vocab; i++) {
        t->score[i] = scores ? (float)gguf_arr_f64(scores, (uint64_t)i) : 0.0f;
        int64_t ty = types ? gguf_arr_i64(types, (uint64_t)i) : 1;
        t->attr[i] = ty >= 0 && ty < 7 ? type_attr[ty] : TOKENIZER_ATTR_UNDEFINED;
        map_put_token(t, i);
    }
    if (t->kind == TOKENIZER_BPE && (rc = load_merges(t, f, e)))
        return rc == TP_ENOMEM ? tp_errf(e, rc, "%s: out of memory for the BPE merges", f->path) : rc;

    /* Defaults outside the vocabulary are disabled, then the keys override them. */
    int32_t *ids[] = {&t->bos, &t->eos, &t->eot, &t->eom, &t->unk, &t->sep, &t->pad,
                      &t->fim[0], &t->fim[1], &t->fim[2], &t->fim[3], &t->fim[4], &t->fim[5],
                      &t->fim[0], &t->fim[1], &t->fim[2]};
    static const char *const keys[] = {KEY_PREFIX "bos_token_id", KEY_PREFIX "eos_token_id",
                                       KEY_PREFIX "eot_token_id", KEY_PREFIX "eom_token_id",
                                       KEY_PREFIX "unknown_token_id", KEY_PREFIX "seperator_token_id",
                                       KEY_PREFIX "padding_token_id", KEY_PREFIX "fim_pre_token_id",
                                       KEY_PREFIX "fim_suf_token_id", KEY_PREFIX "fim_mid_token_id",
                                       KEY_PREFIX "fim_pad_token_id", KEY_PREFIX "fim_rep_token_id",
                                       KEY_PREFIX "fim_sep_token_id", KEY_PREFIX "prefix_token_id", /* deprecated */
                                       KEY_PREFIX "suffix_token_id", KEY_PREFIX "middle_token_id"};
    _Static_assert(TP_ARRAY_LEN(ids) == TP_ARRAY_LEN(keys), "one key per id");
    for (size_t i = 0; i < TP_ARRAY_LEN(ids); i++) {
        if (*ids[i] >= t->n_vocab) *ids[i] = -1;
        if ((rc = read_id(f, keys[i], t->n_vocab, ids[i], e))) return rc;
    }
    if ((rc = read_bool(f, KEY_PREFIX "add_bos_token", &t->add_bos, e))) return rc;
    if ((rc = read_bool(f, KEY_PREFIX "add_eos_token", &t->add_eos, e))) return rc;
    if (tok_special_setup(t) || build_pieces(t))
        return tp_errf(e, TP_ENOMEM, "%s: out of memory building the tokenizer", f->path);
    return 0;
}

int tokenizer_load(struct tokenizer **out, const struct gguf_file *f, tp_err *e) {
    *out = NULL;
    struct tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tp_errf(e, TP_ENOMEM, "tokenizer: out of memory");
    int rc = load(t, f, e);
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tokenizer_free(struct tokenizer *t) {
    if (!t) return;
    strs_free(&t->text);
    strs_free(&t->piece);
    strs_free(&t->merges);
    free(t->score);
    free(t->attr);
    free(t->map.slot);
    free(t->merge_map.slot);
    free(t->merge_split);
    free(t->special);
    free(t->trie.node);
    free(t->eog);
    tok_bpe_free(t);
    free(t);
}

/* ---- accessors ---- */

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

enum tokenizer_kind tokenizer_kind(const struct tokenizer *t) { return t->kind; }
int32_t tokenizer_n_vocab(const struct tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const struct tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const struct tokenizer *t) { return t->eos; }
int32_t tokenizer_eot(const struct tokenizer *t) { return t->eot; }
int32_t tokenizer_unk(const struct tokenizer *t) { return t->unk; }
int32_t tokenizer_pad(const struct tokenizer *t) { return t->pad; }
bool tokenizer_add_bos(const struct tokenizer *t) { return t->add_bos; }
bool tokenizer_add_eos(const struct tokenizer *t) { return t->add_eos; }
size_t tokenizer_max_piece(const struct tokenizer *t) { return t->max_piece; }

bool tokenizer_is_eog(const struct tokenizer *t, int32_t id) {
    return id >= 0 && bsearch(&id, t->eog, (size_t)t->n_eog, sizeof *t->eog, cmp_i32) != NULL;
}

int32_t tokenizer_find(const struct tokenizer *t, const char *text, size_t len) { return tok_lookup(t, text, len); }

const char *tokenizer_token_text(const struct tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    return tok_text(t, id, len);
}

unsigned tokenizer_token_attr(const struct tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->attr[id] : 0;
}
