/* base.c - error records shared by every layer. */
#include "base.h"

#include <stdio.h>
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
    char prefix[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
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
