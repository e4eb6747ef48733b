/* base.h - error records, status codes and checked size arithmetic shared by every layer. */
#ifndef TPLLM_BASE_H
#define TPLLM_BASE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Status codes: 0 is success, every failure is negative. */
enum tp_status {
    TP_OK = 0,
    TP_EIO = -1,          /* the OS refused: open, read, mmap */
    TP_EFORMAT = -2,      /* a file or message is malformed */
    TP_EUNSUPPORTED = -3, /* well-formed but not supported (yet) */
    TP_ENOMEM = -4,       /* an allocation failed or a budget is exceeded */
    TP_EINVAL = -5,       /* bad argument, flag or request */
    TP_ECOMM = -6,        /* a collective failed or timed out */
    TP_EFIT = -7,         /* the memory plan does not fit */
    TP_ENOTFOUND = -8,    /* a key, tensor or file is missing */
};

/* An error record: the first failure's code and message. Library code fills it and
 * returns the code; only launcher/ decides to print and exit. */
typedef struct tp_err {
    int code;
    char msg[1024];
} tp_err;

/* Record a failure in `e` (may be NULL) unless one is already recorded, and return
 * `code` so that callers can write `return tp_errf(e, TP_EFORMAT, ...)`. */
int tp_errf(tp_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefix the recorded message with context ("while loading X: ..."). Returns e->code. */
int tp_err_wrap(tp_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tp_err_clear(tp_err *e);
const char *tp_status_name(int code);

/* Fault injection for the error-path tests: true when the environment variable
 * TPLLM_FAULT names `site` for this rank ("site" on every rank, "site@R" on rank R only;
 * several separated by commas), e.g. TPLLM_FAULT=gather_full@1. Sites are the rare
 * allocations whose failure must not leave other ranks waiting in a collective. */
bool tp_fault(const char *site, int rank);

/* Checked arithmetic: return false on overflow (result untouched). */
static inline bool tp_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool tp_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline bool tp_mul_i64(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

#define TP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TP_MAX(a, b) ((a) > (b) ? (a) : (b))
#define TP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define TP_ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

#endif
