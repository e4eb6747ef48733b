/* topk.c - the CPU backend's sampling reduction: per row of logits, the k largest values
 * (descending, ties to the lower index) with their indices, and log-sum-exp.
 *
 * One pass per row, O(n log k): the output row itself holds a k-entry min-heap whose root
 * is the worst kept entry; a value enters only if it beats the root (strictly greater,
 * since every later index loses ties), which the AVX2 path tests 8 lanes at a time. The
 * heap is sorted in place at the end. Alongside, lse = m + log(sum e^(x - m)) with a
 * running maximum m: the sum is kept in double and rescaled by e^(m_old - m_new) when m
 * grows. -inf entries add nothing; a NaN makes lse NaN; +inf makes it +inf. NaN values are
 * ranked as -inf. No libm transcendental is used, so that the CUDA backend can give the
 * same bits: float exps are cpu_exp1, the double exp and the final log are act_exp_f64 /
 * act_log_f64 (kernels/act.h: IEEE operations only, the same code on the device).
 *
 * Ordering (see vec.h): one row per thread, and the scalar level reproduces the AVX2 scan
 * bit for bit (tk_scan_scalar is tk_scan_avx2 in portable C). A row is read as: the first
 * k values one at a time (the heap fills), then blocks of 32, then the last
 * (n - k) % 32 one at a time.
 *   One at a time (tk_one): a new maximum rescales the sum by
 *     e = act_exp_f64((double)m - (double)x), s = (s e) + 1 rounded twice; any other
 *     finite x adds (double)cpu_exp1(x - m).
 *   A block of 32 finite values: m = max(m, block max) (8 lanes of _mm256_max_ps, then
 *     cpu_hmax8), s *= act_exp_f64(m_old - m) if it grew, then s += the block's cpu_exp1(x - m)
 *     summed in 4 double lanes (lane l: the values 8j + l, then 8j + l + 4, for j = 0..3)
 *     and cpu_hsum4d.
 *   A block holding -inf, +inf or NaN: one at a time, but with s e + 1 fused (fma), as
 *     the AVX2 build has always compiled it there.
 *   The result: (float)((double)m + act_log_f64(s)).
 * The heap sees the same values in the same order on every path. */
#include "vec.h"

#include "../act.h"

#include <math.h>

/* a is worse than b: lower value, or equal value and higher index. */
static inline bool tk_worse(float va, int32_t ia, float vb, int32_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static void tk_sift_down(float *val, int32_t *idx, int64_t n, int64_t i) {
    float v = val[i];
    int32_t x = idx[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && tk_worse(val[c + 1], idx[c + 1], val[c], idx[c])) c++;
        if (!tk_worse(val[c], idx[c], v, x)) break;
        val[i] = val[c];
        idx[i] = idx[c];
        i = c;
    }
    val[i] = v;
    idx[i] = x;
}

static void tk_push(float *val, int32_t *idx, int64_t n, float v, int32_t x) {
    int64_t i = n;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!tk_worse(v, x, val[p], idx[p])) break;
        val[i] = val[p];
        idx[i] = idx[p];
        i = p;
    }
    val[i] = v;
    idx[i] = x;
}

/* Running log-sum-exp state. */
struct tk_lse {
    float m;   /* running maximum of the finite values, -inf before any */
    double s;  /* sum of e^(x - m) */
    bool nan, pinf;
};

/* fused: s e + 1 in one rounding (inside a scanned block), else two (the product stored
 * through a volatile, so that no compiler contracts it; a new maximum is rare). */
static inline void tk_lse_push(struct tk_lse *st, float x, bool fused) {
    if (isnan(x)) {
        st->nan = true;
    } else if (isinf(x)) {
        if (x > 0) st->pinf = true;
    } else if (x > st->m) {
        const double e = act_exp_f64((double)st->m - (double)x);
        if (fused) {
            st->s = fma(st->s, e, 1.0);
        } else {
            volatile double se = st->s * e;
            st->s = se + 1.0;
        }
        st->m = x;
    } else {
        st->s += (double)cpu_exp1(x - st->m);
    }
}

static float tk_lse_result(const struct tk_lse *st) {
    if (st->nan) return NAN;
    if (st->pinf) return INFINITY;
    if (st->m == -INFINITY) return -INFINITY;
    return (float)((double)st->m + act_log_f64(st->s));
}

/* Scalar handling of x[i]: heap insertion (heap of `*fill` entries, capacity k) and lse. */
static inline void tk_one(float *val, int32_t *idx, int64_t k, int64_t *fill, struct tk_lse *st,
                          float x, int64_t i, bool fused) {
    tk_lse_push(st, x, fused);
    float v = isnan(x) ? -INFINITY : x;
    if (*fill < k) {
        tk_push(val, idx, *fill, v, (int32_t)i);
        (*fill)++;
    } else if (k > 0 && v > val[0]) {
        val[0] = v;
        idx[0] = (int32_t)i;
        tk_sift_down(val, idx, k, 0);
    }
}

enum { TK_BLOCK = 32 };

/* x[lo, hi) after the heap is full, in blocks of TK_BLOCK: tk_scan_avx2's arithmetic in
 * portable C. Returns where the blocks end. */
static int64_t tk_scan_scalar(float *val, int32_t *idx, int64_t k, int64_t *fill, struct tk_lse *st,
                              const float *x, int64_t lo, int64_t hi) {
    int64_t i = lo;
    for (; i + TK_BLOCK <= hi; i += TK_BLOCK) {
        const float *v = x + i;
        bool finite = true;
        for (int j = 0; j < TK_BLOCK; j++) finite &= fabsf(v[j]) < INFINITY;
        if (!finite) { /* -inf, +inf or NaN inside: the scalar rules */
            for (int64_t j = i; j < i + TK_BLOCK; j++) tk_one(val, idx, k, fill, st, x[j], j, true);
            continue;
        }
        /* heap entries that this block beats (the root only grows, so testing each value
         * against the current root is what the AVX2 lane masks amount to) */
        if (k > 0)
            for (int j = 0; j < TK_BLOCK; j++)
                if (v[j] > val[0]) {
                    val[0] = v[j];
                    idx[0] = (int32_t)(i + j);
                    tk_sift_down(val, idx, k, 0);
                }
        float mx[8];
        for (int l = 0; l < 8; l++) {
            mx[l] = -INFINITY;
            for (int j = 0; j < 4; j++) mx[l] = cpu_max1(mx[l], v[8 * j + l]); /* _mm256_max_ps(mx, v[j]) */
        }
        const float bm = cpu_hmax8(mx);
        if (bm > st->m) {
            st->s *= act_exp_f64((double)st->m - (double)bm);
            st->m = bm;
        }
        double acc[4] = {0};
        for (int j = 0; j < 4; j++) {
            float e[8];
            for (int l = 0; l < 8; l++) e[l] = cpu_exp1(v[8 * j + l] - st->m);
            for (int l = 0; l < 4; l++) acc[l] += (double)e[l];
            for (int l = 0; l < 4; l++) acc[l] += (double)e[l + 4];
        }
        st->s += cpu_hsum4d(acc);
    }
    return i;
}

#if CPU_HAVE_X86

/* x[lo, hi) after the heap is full: AVX2 filter against the root and blocked lse. */
static CPU_AVX2 int64_t tk_scan_avx2(float *val, int32_t *idx, int64_t k, int64_t *fill, struct tk_lse *st,
                                     const float *x, int64_t lo, int64_t hi) {
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int64_t i = lo;
    for (; i + TK_BLOCK <= hi; i += TK_BLOCK) {
        __m256 v[4];
        __m256 mx = _mm256_set1_ps(-INFINITY);
        int finite = 0xff;
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + i + 8 * j);
            mx = _mm256_max_ps(mx, v[j]);
            finite &= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(v[j], absmask), inf, _CMP_LT_OQ));
        }
        if (finite != 0xff) { /* -inf, +inf or NaN inside: the scalar rules */
            for (int64_t j = i; j < i + TK_BLOCK; j++) tk_one(val, idx, k, fill, st, x[j], j, true);
            continue;
        }
        /* heap entries that this block beats */
        if (k > 0) {
            for (int j = 0; j < 4; j++) {
                int mask = _mm256_movemask_ps(_mm256_cmp_ps(v[j], _mm256_set1_ps(val[0]), _CMP_GT_OQ));
                while (mask) {
                    int lane = __builtin_ctz((unsigned)mask);
                    mask &= mask - 1;
                    int64_t at = i + 8 * j + lane;
                    if (x[at] > val[0]) {
                        val[0] = x[at];
                        idx[0] = (int32_t)at;
                        tk_sift_down(val, idx, k, 0);
                    }
                }
            }
        }
        float bm = cpu_hmax256(mx);
        if (bm > st->m) {
            st->s *= act_exp_f64((double)st->m - (double)bm);
            st->m = bm;
        }
        __m256 vm = _mm256_set1_ps(st->m);
        __m256d acc = _mm256_setzero_pd();
        for (int j = 0; j < 4; j++) {
            __m256 e = cpu_exp256(_mm256_sub_ps(v[j], vm));
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        st->s += cpu_hsum256d(acc);
    }
    return i;
}
#endif

struct tk_ctx {
    int32_t *idx;
    float *val, *lse;
    const float *x;
    int64_t n, k;
    bool avx2;
};

static void tk_rows(void *vctx, int64_t lo, int64_t hi) {
    const struct tk_ctx *c = vctx;
    const int64_t n = c->n, kk = c->k, k = TP_MIN(c->k, c->n);
    for (int64_t r = lo; r < hi; r++) {
        struct tk_lse st = {-INFINITY, 0.0, false, false};
        if (n == 0 && kk == 0) { /* nothing to read or write but lse (pointers may be NULL) */
            if (c->lse) c->lse[r] = -INFINITY;
            continue;
        }
        const float *x = c->x + r * n;
        float *val = c->val + r * kk;
        int32_t *idx = c->idx + r * kk;
        int64_t fill = 0, i = 0;
        for (; i < k; i++) tk_one(val, idx, k, &fill, &st, x[i], i, false);
#if CPU_HAVE_X86
        if (c->avx2) i = tk_scan_avx2(val, idx, k, &fill, &st, x, i, n);
        else
#endif
            i = tk_scan_scalar(val, idx, k, &fill, &st, x, i, n);
        for (; i < n; i++) tk_one(val, idx, k, &fill, &st, x[i], i, false);
        /* heap sort: the worst goes last each round, leaving the row best-first */
        for (int64_t m = k - 1; m > 0; m--) {
            float tv = val[0];
            int32_t ti = idx[0];
            val[0] = val[m];
            idx[0] = idx[m];
            val[m] = tv;
            idx[m] = ti;
            tk_sift_down(val, idx, m, 0);
        }
        for (int64_t j = k; j < kk; j++) { /* k > n: not in the contract, but leave no garbage */
            val[j] = -INFINITY;
            idx[j] = -1;
        }
        if (c->lse) c->lse[r] = tk_lse_result(&st);
    }
}

/* k <= n per the op table; a larger k pads each row with (-1, -inf). */
void cpu_topk(struct kbackend *b, int32_t *idx, float *val, float *lse, const float *logits,
              int64_t n_rows, int64_t n, int64_t k) {
    if (n_rows <= 0) return;
    if (k < 0) k = 0;
    struct tk_ctx c = {idx, val, lse, logits, TP_MAX(n, 0), k, cpu_use_avx2(b)};
    cpu_parallel_for(b, n_rows, TP_MAX(1, 65536 / TP_MAX(n, 1)), tk_rows, &c);
}
