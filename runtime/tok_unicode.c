/* tok_unicode.c - UTF-8 decoding the way llama.cpp does it, strict UTF-8 checking for streamed
 * output, and GPT-2's byte <-> printable code point map. */
#include "tok_internal.h"

static bool is_cont(uint8_t c) { return (c & 0xC0) == 0x80; }

uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t *i) {
    size_t k = *i;
    uint8_t c = s[k];
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
        *i = k + 1;
        return c;
    }
    if (!(c & 0x40)) goto invalid; /* stray continuation byte */
    if (!(c & 0x20)) {
        if (k + 1 >= n || !is_cont(s[k + 1])) goto invalid;
        cp = ((uint32_t)(c & 0x1F) << 6) | (s[k + 1] & 0x3F);
        len = 2;
    } else if (!(c & 0x10)) {
        if (k + 2 >= n || !is_cont(s[k + 1]) || !is_cont(s[k + 2])) goto invalid;
        cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[k + 1] & 0x3F) << 6) | (s[k + 2] & 0x3F);
        len = 3;
    } else if (!(c & 0x08)) {
        if (k + 3 >= n || !is_cont(s[k + 1]) || !is_cont(s[k + 2]) || !is_cont(s[k + 3])) goto invalid;
        cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[k + 1] & 0x3F) << 12) | ((uint32_t)(s[k + 2] & 0x3F) << 6) |
             (s[k + 3] & 0x3F);
        /* llama.cpp decodes these but then throws when re-encoding (an abort through the C
         * API); tpllm treats the lead byte as invalid instead. */
        if (cp > 0x10FFFF) goto invalid;
        len = 4;
    } else {
        goto invalid;
    }
    *i = k + len;
    return cp;
invalid:
    *i = k + 1;
    return 0xFFFD;
}

size_t tok_utf8_put(uint32_t cp, char *out) {
    uint8_t *o = (uint8_t *)out;
    if (cp <= 0x7F) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp <= 0x7FF) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp <= 0xFFFF) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | ((cp >> 18) & 0x07));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2's bytes_to_unicode(): the printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand
 * for themselves; the other 68 bytes, in increasing order, get U+0100.. U+0143. */
static bool byte_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_byte_to_cp(uint8_t b) {
    if (byte_printable(b)) return b;
    if (b <= 0x20) return 256u + b;               /* 0x00..0x20: 33 bytes */
    if (b >= 0x7F && b <= 0xA0) return 256u + 33 + (b - 0x7Fu); /* 0x7F..0xA0: 34 bytes */
    return 256u + 67;                               /* 0xAD */
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_printable(cp) ? (int)cp : -1;
    if (cp < 256 + 33) return (int)(cp - 256);
    if (cp < 256 + 67) return (int)(0x7F + (cp - 256 - 33));
    if (cp == 256 + 67) return 0xAD;
    return -1;
}

int tok_utf8_check(const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return -1;
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t b = s[k];
        if (k == 1 ? (b < lo || b > hi) : !is_cont(b)) return -1;
    }
    return len;
}
