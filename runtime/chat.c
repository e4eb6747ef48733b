/* chat.c - built-in chat formatters (gemma, llama3, chatml) and template recognition.
 *
 * Each formatter is a transcription of its Jinja template; the comments quote the parts
 * that decide the bytes. Jinja's `trim` is Python's str.strip(): it removes Unicode
 * whitespace (str.isspace), not only ASCII, so utf8_trim does the same. */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

static const char *const chat_names[] = {
    [CHAT_GEMMA] = "gemma",
    [CHAT_LLAMA3] = "llama3",
    [CHAT_CHATML] = "chatml",
    [CHAT_UNKNOWN] = "unknown",
};
_Static_assert(TP_ARRAY_LEN(chat_names) == CHAT_FORMAT_COUNT, "chat_names covers enum chat_format");

#define CHAT_BUILTIN "gemma, llama3, chatml"

const char *chat_format_name(enum chat_format f) { return (unsigned)f < CHAT_FORMAT_COUNT ? chat_names[f] : "unknown"; }

const char *chat_default_bos(enum chat_format f) {
    switch (f) {
    case CHAT_GEMMA: return "<bos>";
    case CHAT_LLAMA3: return "<|begin_of_text|>";
    default: return NULL;
    }
}

int chat_format_parse(const char *name, struct chat_template *out, tp_err *e) {
    memset(out, 0, sizeof *out);
    out->format = CHAT_UNKNOWN;
    for (int f = 0; f < CHAT_UNKNOWN; f++) {
        if (name && strcmp(name, chat_names[f]) == 0) {
            out->format = (enum chat_format)f;
            return 0;
        }
    }
    return tp_errf(e, TP_EINVAL, "unknown chat format \"%s\"; --chat-format takes one of: " CHAT_BUILTIN,
                   name ? name : "(null)");
}

/* ---- recognition ---- */

static const char *find(const char *t, size_t len, const char *needle) {
    return memmem(t, len, needle, strlen(needle));
}

/* The literal default system prompt of a ChatML template: the text between
 * "<|im_start|>system" + newline (raw or the escape \n) and "<|im_end|>", when that text
 * is a plain literal (no quotes or template code inside). Jinja escapes are undone. */
static void chatml_default_system(const char *t, size_t len, char *out, size_t cap) {
    static const char head[] = "<|im_start|>system";
    static const char tail[] = "<|im_end|>";
    out[0] = '\0';
    const char *p = t, *end = t + len;
    while ((p = memmem(p, (size_t)(end - p), head, sizeof head - 1))) {
        p += sizeof head - 1;
        const char *q = p;
        if (q < end && *q == '\n')
            q++;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        size_t n = 0;
        bool ok = false;
        while (q < end) {
            if ((size_t)(end - q) >= sizeof tail - 1 && memcmp(q, tail, sizeof tail - 1) == 0) {
                ok = n > 0;
                break;
            }
            char c = *q++;
            if (c == '\'' || c == '"' || c == '{' || c == '}') break;
            if (c == '\\' && q < end) {
                char x = *q++;
                c = x == 'n' ? '\n' : x == 't' ? '\t' : x;
            }
            if (n + 1 >= cap) break;
            out[n++] = c;
        }
        out[ok ? n : 0] = '\0';
        if (ok) return;
    }
}

int chat_detect(const char *tmpl, size_t len, struct chat_template *out, tp_err *e) {
    memset(out, 0, sizeof *out);
    out->format = CHAT_UNKNOWN;
    if (!tmpl || len == 0)
        return tp_errf(e, TP_EUNSUPPORTED,
                       "the model has no chat template (tokenizer.chat_template); force one of the built-in formats "
                       "(" CHAT_BUILTIN ") with --chat-format NAME, or send raw prompts to /v1/completions");
    if (find(tmpl, len, "<start_of_turn>")) {
        out->format = CHAT_GEMMA;
    } else if (find(tmpl, len, "<|start_header_id|>")) {
        out->format = CHAT_LLAMA3;
    } else if (find(tmpl, len, "<|im_start|>")) {
        out->format = CHAT_CHATML;
        chatml_default_system(tmpl, len, out->default_system, sizeof out->default_system);
    } else {
        return tp_errf(e, TP_EUNSUPPORTED,
                       "the model's chat template is not one tpllm knows (built in: " CHAT_BUILTIN
                       "); force one with --chat-format NAME if the model uses it, or send raw prompts to "
                       "/v1/completions");
    }
    return 0;
}

/* ---- output buffer ---- */

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    size_t need;
    if (!tp_add_size(b->len, n, &need) || !tp_add_size(need, 1, &need)) {
        b->oom = true;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* ---- Python's str.strip() on UTF-8 ---- */

static bool py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decode the well-formed character at s[0..n); its length, or 0 if malformed. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0 || len > n) return 0;
    uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    *cp = v;
    return len;
}

/* The whitespace-free middle of s: [*b, *e). */
static void utf8_trim(const char *s, const char **b, const char **e) {
    const unsigned char *p = (const unsigned char *)s, *q = p + strlen(s);
    uint32_t cp;
    size_t k;
    while (p < q && (k = utf8_decode(p, (size_t)(q - p), &cp)) && py_isspace(cp)) p += k;
    while (q > p) {
        const unsigned char *r = q - 1;
        while (r > p && q - r < 4 && (*r & 0xC0) == 0x80) r--;
        k = utf8_decode(r, (size_t)(q - r), &cp);
        if (k != (size_t)(q - r) || !py_isspace(cp)) break;
        q = r;
    }
    *b = (const char *)p;
    *e = (const char *)q;
}

static void sb_put_trimmed(struct sbuf *b, const char *s) {
    const char *x, *y;
    utf8_trim(s, &x, &y);
    sb_put(b, x, (size_t)(y - x));
}

/* ---- formatters ---- */

/* Gemma 3: {{ bos_token }}; a first system message becomes first_user_prefix =
 * content + '\n\n' (untrimmed); per message: raise unless (role == 'user') == (index even);
 * '<start_of_turn>' + (assistant ? 'model' : role) + '\n' + (prefix if first) +
 * content|trim + '<end_of_turn>\n'; then '<start_of_turn>model\n' if add_generation_prompt. */
static int fmt_gemma(struct sbuf *b, const struct chat_message *m, size_t n, bool gen, const char *bos, tp_err *e) {
    sb_puts(b, bos);
    const char *prefix = NULL;
    size_t first = 0;
    if (strcmp(m[0].role, "system") == 0) {
        prefix = m[0].content;
        first = 1;
    }
    for (size_t i = first; i < n; i++) {
        size_t k = i - first;
        bool user = strcmp(m[i].role, "user") == 0;
        if (user != (k % 2 == 0))
            return tp_errf(
                e, TP_EINVAL,
                "message %zu has role \"%s\", but the Gemma chat template needs roles to alternate "
                "user/assistant/user/... after an optional first system message; merge or reorder the messages",
                i, m[i].role);
        sb_puts(b, "<start_of_turn>");
        sb_puts(b, strcmp(m[i].role, "assistant") == 0 ? "model" : m[i].role);
        sb_puts(b, "\n");
        if (k == 0 && prefix) {
            sb_puts(b, prefix);
            sb_puts(b, "\n\n");
        }
        sb_put_trimmed(b, m[i].content);
        sb_puts(b, "<end_of_turn>\n");
    }
    if (gen) sb_puts(b, "<start_of_turn>model\n");
    return 0;
}

/* Llama 3: per message '<|start_header_id|>' + role + '<|end_header_id|>\n\n' +
 * content|trim + '<|eot_id|>', with bos_token before the first; then
 * '<|start_header_id|>assistant<|end_header_id|>\n\n' if add_generation_prompt. */
static void fmt_llama3(struct sbuf *b, const struct chat_message *m, size_t n, bool gen, const char *bos) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0) sb_puts(b, bos);
        sb_puts(b, "<|start_header_id|>");
        sb_puts(b, m[i].role);
        sb_puts(b, "<|end_header_id|>\n\n");
        sb_put_trimmed(b, m[i].content);
        sb_puts(b, "<|eot_id|>");
    }
    if (gen) sb_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* ChatML (Qwen2): if the first message is not a system message and the template has a
 * default, '<|im_start|>system\n' + default + '<|im_end|>\n'; per message '<|im_start|>' +
 * role + '\n' + content + '<|im_end|>\n'; then '<|im_start|>assistant\n' if add_generation_prompt. */
static void fmt_chatml(struct sbuf *b, const struct chat_message *m, size_t n, bool gen, const char *def_system) {
    if (def_system[0] && strcmp(m[0].role, "system") != 0) {
        sb_puts(b, "<|im_start|>system\n");
        sb_puts(b, def_system);
        sb_puts(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        sb_puts(b, "<|im_start|>");
        sb_puts(b, m[i].role);
        sb_puts(b, "\n");
        sb_puts(b, m[i].content);
        sb_puts(b, "<|im_end|>\n");
    }
    if (gen) sb_puts(b, "<|im_start|>assistant\n");
}

int chat_apply(const struct chat_template *t, const struct chat_message *msgs, size_t n, bool add_generation_prompt,
               const char *bos, char **out, size_t *out_len, bool *bos_in_text, tp_err *e) {
    *out = NULL;
    if (!t || t->format >= CHAT_UNKNOWN)
        return tp_errf(e, TP_EUNSUPPORTED, "no chat format chosen; built in: " CHAT_BUILTIN " (--chat-format NAME)");
    if (n == 0 || !msgs) return tp_errf(e, TP_EINVAL, "the conversation has no messages; send at least one");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role) return tp_errf(e, TP_EINVAL, "message %zu has no role", i);
        if (!msgs[i].content) return tp_errf(e, TP_EINVAL, "message %zu (role \"%s\") has no content", i, msgs[i].role);
    }
    if (!bos) bos = chat_default_bos(t->format);
    if (!bos) bos = "";
    struct sbuf b = {0};
    bool has_bos = false;
    int rc = 0;
    switch (t->format) {
    case CHAT_GEMMA:
        rc = fmt_gemma(&b, msgs, n, add_generation_prompt, bos, e);
        has_bos = bos[0] != '\0';
        break;
    case CHAT_LLAMA3:
        fmt_llama3(&b, msgs, n, add_generation_prompt, bos);
        has_bos = bos[0] != '\0';
        break;
    default: fmt_chatml(&b, msgs, n, add_generation_prompt, t->default_system); break;
    }
    if (!rc && !b.oom) sb_put(&b, "", 0); /* an empty rendering still yields a string */
    if (!rc && b.oom) rc = tp_errf(e, TP_ENOMEM, "out of memory formatting a chat of %zu messages", n);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    if (bos_in_text) *bos_in_text = has_bos;
    return 0;
}
