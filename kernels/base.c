/* base.c - error records shared by every layer. */
#include "base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tp_errf(tp_err *e, int code, const char *fmt, ...) {
    if (e && e->code == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int tp_err_wrap(tp_err *e, const char *fmt, ...) {
    if (!e) return TP_EINVAL;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0) return e->code;
    size_t plen = strlen(prefix), old = strlen(e->msg);
    if (plen + 2 >= sizeof e->msg) return e->code;
    /* shift the old message right to make room for "prefix: " (truncating its end) */
    size_t keep = TP_MIN(old, sizeof e->msg - 1 - plen - 2);
    memmove(e->msg + plen + 2, e->msg, keep);
    e->msg[plen + 2 + keep] = '\0';
    memcpy(e->msg, prefix, plen);
    e->msg[plen] = ':';
    e->msg[plen + 1] = ' ';
    return e->code;
}

void tp_err_clear(tp_err *e) {
    if (!e) return;
    e->code = 0;
    e->msg[0] = '\0';
}

const char *tp_status_name(int code) {
    switch (code) {
    case TP_OK: return "ok";
    case TP_EIO: return "I/O error";
    case TP_EFORMAT: return "malformed input";
    case TP_EUNSUPPORTED: return "unsupported";
    case TP_ENOMEM: return "out of memory";
    case TP_EINVAL: return "invalid argument";
    case TP_ECOMM: return "communication failure";
    case TP_EFIT: return "does not fit";
    case TP_ENOTFOUND: return "not found";
    default: return "unknown error";
    }
}

bool tp_fault(const char *site, int rank) {
    const char *spec = getenv("TPLLM_FAULT");
    if (!spec || !*spec || !site) return false;
    size_t n = strlen(site);
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len >= n && !strncmp(p, site, n)) {
            if (len == n) return true;
            if (p[n] == '@' && atoi(p + n + 1) == rank) return true;
        }
        p += len;
        if (*p == ',') p++;
    }
    return false;
}
