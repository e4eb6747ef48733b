/* attention.c - the CPU backend's paged KV cache ops: storing a step's K/V rows into their
 * slots (F16 or F32) and grouped-query attention over the paged cache.
 *
 * Math, for query token t and head h (kv head g = h / (n_head / n_kv)), over the positions
 * p in [lo, pos[t]], lo = max(0, pos[t] - window + 1) (0 when window <= 0):
 *   s_p = scale * q[t][h] . K[slot(p)][g]
 *   out[t][h] = sum_p e^(s_p - m) V[slot(p)][g] / sum_p e^(s_p - m),  m = max_p s_p
 *   slot(p) = block_tables[seq[t] * max_blocks + p / block_size] * block_size + p % block_size
 * Scores go to the calling thread's scratch: CPU_ATT_GROUP rows of opts.max_ctx floats
 * (heads of one KV group go together, each K and V row read once for them; a head alone
 * uses the first row). A span longer than
 * that is processed in chunks with the usual online-softmax rescaling (m and the running
 * sums are corrected by e^(m_old - m_new) when a chunk raises the maximum), so any
 * context length works; within one chunk it is the plain two-pass softmax.
 *
 * With an F16 cache the rounding follows llama.cpp's (non-flash) attention, so that
 * logits agree with it closely: q is rounded to f16 before q.K (ggml converts the f32
 * operand of an f16 matmul to f16), and the normalised probabilities are rounded to f16
 * before they weight V (same reason). A span longer than one chunk keeps f32
 * probabilities (online softmax cannot normalise before the last chunk).
 *
 * Ordering (see vec.h): the scalar level (opts.simd = 0) gives the same bits as AVX2, and
 * no result depends on the thread count (a (token, head) is computed on one thread; the
 * grouped AVX2 kernel that takes several heads per work item repeats the one-head
 * arithmetic exactly). Per (token, head):
 *   q.k       16 lanes (lanes 0-7 take elements 16i + l, lanes 8-15 take 16i + 8 + l) with
 *             fmaf over the first n - n % 16 elements, then one more block of 8 into lanes
 *             0-7 when n % 16 >= 8; lanes l and l + 8 added, cpu_hsum8; the last n % 8
 *             products fused into the sum in order (fmaf).
 *   o += w v  fmaf per element; positions in order.
 *   softmax   exp is cpu_exp1 everywhere (cpu_exp256 in 8 lanes gives the same bits; no
 *             libm expf, whose bits the CUDA backend could not reproduce).
 *             f16 cache, span within one chunk: m = max of the scores (m = m > s ? m : s in
 *             position order), e = cpu_exp1(s - m) summed in double in position order;
 *             w = f16(e * (float)(1 / sum)); positions whose w is 0 are skipped.
 *             Otherwise (f32 cache, or chunks): per chunk, cmax as m above, then if
 *             cmax > m the earlier chunks are rescaled by cpu_exp1(m_old - cmax) (l and the
 *             output, when l > 0); e = cpu_exp1(s - m), the chunk's first cn - cn % 8
 *             summed in 8 float lanes (lane l: e_{8i + l}) and cpu_hsum8, then the last
 *             cn % 8 added in order, that sum added to l; V weighted by every e; the output
 *             scaled by 1 / l at the end.
 *   f16       cpu_f32_to_f16 / cpu_f16_to_f32 (= F16C on every input) for the cache, the
 *             rounded q and the rounded probabilities. */
#include "vec.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

static inline float h2f(uint16_t h) { return cpu_f16_to_f32(h); }

/* x rounded to f16 and back. */
static inline float f16_round1(float x) { return cpu_f16_to_f32(cpu_f32_to_f16(x)); }

/* ---- kv_store ---- */

struct kvs_ctx {
    struct kv_layer *kv;
    const float *k, *v;
    const int64_t *slots;
    int64_t row; /* n_kv * head_dim */
    int64_t n_slots;
    bool avx2;
};

#if CPU_HAVE_X86
static CPU_AVX2 void f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = cpu_f32_to_f16(src[i]);
}
#endif

static void f32_to_f16_row(uint16_t *dst, const float *src, int64_t n, bool avx2) {
#if CPU_HAVE_X86
    if (avx2) {
        f32_to_f16_avx2(dst, src, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = cpu_f32_to_f16(src[i]);
}

static void kvs_rows(void *vctx, int64_t lo, int64_t hi) {
    const struct kvs_ctx *c = vctx;
    const int64_t row = c->row;
    for (int64_t t = lo; t < hi; t++) {
        int64_t s = c->slots[t];
        if (s < 0 || s >= c->n_slots) continue;
        const float *ks = c->k + t * row, *vs = c->v + t * row;
        if (c->kv->type == DTYPE_F16) {
            f32_to_f16_row((uint16_t *)c->kv->k + s * row, ks, row, c->avx2);
            f32_to_f16_row((uint16_t *)c->kv->v + s * row, vs, row, c->avx2);
        } else {
            memcpy((float *)c->kv->k + s * row, ks, (size_t)row * sizeof(float));
            memcpy((float *)c->kv->v + s * row, vs, (size_t)row * sizeof(float));
        }
    }
}

/* Tokens whose slot is negative (padding) or outside the cache are skipped. */
void cpu_kv_store(struct kbackend *b, struct kv_layer *kv, const float *k, const float *v,
                  const struct attn_batch *batch) {
    int64_t row = kv->n_kv * kv->head_dim;
    if (batch->n_tok <= 0 || row <= 0) return;
    struct kvs_ctx c = {kv, k, v, batch->slots, row, kv->n_blocks * kv->block_size, cpu_use_avx2(b)};
    cpu_parallel_for(b, batch->n_tok, TP_MAX(1, 16384 / row), kvs_rows, &c);
}

/* ---- attention ---- */

struct att_ctx {
    float *out;
    const float *q;
    const struct kv_layer *kv;
    const struct attn_batch *batch;
    int64_t n_head, group, window;
    float scale;
    float *scores; /* [tasks][chunk] */
    int64_t chunk;
    int64_t heads;   /* heads per work item (1, or up to CPU_ATT_GROUP) */
    int64_t unit;    /* heads of an item that share a KV head and go through q.K together (<= 4) */
    int64_t n_items; /* n_tok * n_head / heads */
    _Atomic int64_t next;
    bool avx2;
};

/* Row of KV head g at position p of the token's sequence, as an element offset. */
static inline int64_t att_kv_off(const struct kv_layer *kv, const int32_t *bt, int64_t p, int64_t g) {
    int64_t slot = (int64_t)bt[p / kv->block_size] * kv->block_size + p % kv->block_size;
    return (slot * kv->n_kv + g) * kv->head_dim;
}

/* Scalar kernels: q.k and o += w v over one row of the cache, in dot_avx2's and
 * axpy_avx2's order (see the top comment). */
static inline float kv_elem(const void *k, enum dtype t, int64_t i) {
    return t == DTYPE_F16 ? h2f(((const uint16_t *)k)[i]) : ((const float *)k)[i];
}

static float dot_scalar(const float *q, const void *k, enum dtype t, int64_t n) {
    float a0[8] = {0}, a1[8] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 8; l++) {
            a0[l] = fmaf(q[i + l], kv_elem(k, t, i + l), a0[l]);
            a1[l] = fmaf(q[i + 8 + l], kv_elem(k, t, i + 8 + l), a1[l]);
        }
    if (i + 8 <= n) {
        for (int l = 0; l < 8; l++) a0[l] = fmaf(q[i + l], kv_elem(k, t, i + l), a0[l]);
        i += 8;
    }
    for (int l = 0; l < 8; l++) a0[l] += a1[l];
    float s = cpu_hsum8(a0);
    for (; i < n; i++) s = fmaf(q[i], kv_elem(k, t, i), s);
    return s;
}

static void axpy_scalar(float *o, float w, const void *v, enum dtype t, int64_t n) {
    for (int64_t i = 0; i < n; i++) o[i] = fmaf(w, kv_elem(v, t, i), o[i]);
}

#if CPU_HAVE_X86
static CPU_AVX2 float dot_avx2(const float *q, const void *k, enum dtype t, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    float s;
    if (t == DTYPE_F16) {
        const uint16_t *kh = k;
        for (; i + 16 <= n; i += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i))), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8),
                                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i + 8))), a1);
        }
        for (; i + 8 <= n; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i))), a0);
        s = cpu_hsum256(_mm256_add_ps(a0, a1));
        for (; i < n; i++) s = fmaf(q[i], h2f(kh[i]), s);
    } else {
        const float *kf = k;
        for (; i + 16 <= n; i += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kf + i), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(kf + i + 8), a1);
        }
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kf + i), a0);
        s = cpu_hsum256(_mm256_add_ps(a0, a1));
        for (; i < n; i++) s = fmaf(q[i], kf[i], s);
    }
    return s;
}

static CPU_AVX2 void axpy_avx2(float *o, float w, const void *v, enum dtype t, int64_t n) {
    const __m256 vw = _mm256_set1_ps(w);
    int64_t i = 0;
    if (t == DTYPE_F16) {
        const uint16_t *vh = v;
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vh + i)));
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(vw, x, _mm256_loadu_ps(o + i)));
        }
        for (; i < n; i++) o[i] = fmaf(w, h2f(vh[i]), o[i]);
    } else {
        const float *vf = v;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(vw, _mm256_loadu_ps(vf + i), _mm256_loadu_ps(o + i)));
        for (; i < n; i++) o[i] = fmaf(w, vf[i], o[i]);
    }
}

/* s[j] = cpu_exp1(s[j] - m) for j < n, 8 at a time with cpu_exp256 (the same bits). */
static CPU_AVX2 void exp_sub_avx2(float *s, int64_t n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, cpu_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm)));
    for (; j < n; j++) s[j] = cpu_exp1(s[j] - m);
}

/* s[j] = e^(s[j] - m) for j < n; returns their sum (cpu_exp256 over blocks of 8, summed in
 * 8 lanes, then cpu_exp1 for the last n % 8, added in order). */
static CPU_AVX2 float exp_shift_avx2(float *s, int64_t n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = cpu_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = cpu_hsum256(acc);
    for (; j < n; j++) {
        s[j] = cpu_exp1(s[j] - m);
        sum += s[j];
    }
    return sum;
}
#endif

/* exp_shift_avx2 in portable C: the same lanes, exp and sums. */
static float exp_shift_scalar(float *s, int64_t n, float m) {
    float acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) {
            const float e = cpu_exp1(s[j + l] - m);
            s[j + l] = e;
            acc[l] += e;
        }
    float sum = cpu_hsum8(acc);
    for (; j < n; j++) {
        s[j] = cpu_exp1(s[j] - m);
        sum += s[j];
    }
    return sum;
}

/* Heads wider than this skip the f16 rounding of q (a stack buffer holds the rounded q). */
enum { ATT_MAX_HD = 1024 };

/* One (token, head) over an f16 cache whose span fits one chunk: two-pass softmax with the
 * probabilities normalised and rounded to f16 before weighting V, as llama.cpp does. */
static void att_one_f16(const struct att_ctx *c, const float *qh, float *oh, const int32_t *table, int64_t lo,
                        int64_t hi, int64_t g, float *sc) {
    const struct kv_layer *kv = c->kv;
    const int64_t hd = kv->head_dim, cn = hi - lo + 1;
    const char *kbase = kv->k, *vbase = kv->v;
    float m = -INFINITY;
    for (int64_t j = 0; j < cn; j++) {
        const void *kp = kbase + (size_t)att_kv_off(kv, table, lo + j, g) * 2;
#if CPU_HAVE_X86
        float s = c->avx2 ? dot_avx2(qh, kp, kv->type, hd) : dot_scalar(qh, kp, kv->type, hd);
#else
        float s = dot_scalar(qh, kp, kv->type, hd);
#endif
        sc[j] = s * c->scale;
        m = TP_MAX(m, sc[j]);
    }
#if CPU_HAVE_X86
    if (c->avx2) exp_sub_avx2(sc, cn, m);
    else
#endif
        for (int64_t j = 0; j < cn; j++) sc[j] = cpu_exp1(sc[j] - m);
    double l = 0;
    for (int64_t j = 0; j < cn; j++) l += sc[j];
    const float inv = (float)(1.0 / l);
    for (int64_t j = 0; j < cn; j++) {
        const float w = f16_round1(sc[j] * inv);
        if (w == 0.0f) continue;
        const void *vp = vbase + (size_t)att_kv_off(kv, table, lo + j, g) * 2;
#if CPU_HAVE_X86
        if (c->avx2) {
            axpy_avx2(oh, w, vp, kv->type, hd);
            continue;
        }
#endif
        axpy_scalar(oh, w, vp, kv->type, hd);
    }
}

static void att_one(const struct att_ctx *c, int64_t item, float *sc) {
    const struct kv_layer *kv = c->kv;
    const struct attn_batch *bt = c->batch;
    const int64_t hd = kv->head_dim;
    const int64_t t = item / c->n_head, h = item % c->n_head, g = h / c->group;
    const float *qh = c->q + item * hd;
    float *oh = c->out + item * hd;
    const size_t esz = kv->type == DTYPE_F16 ? 2 : 4;
    const char *kbase = kv->k, *vbase = kv->v;
    const int32_t *table = bt->block_tables + (int64_t)bt->seq[t] * bt->max_blocks;

    memset(oh, 0, (size_t)hd * sizeof(float));
    int64_t hi = bt->pos[t];
    int64_t lo = c->window > 0 ? TP_MAX(0, hi - c->window + 1) : 0;
    float qr[ATT_MAX_HD];
    const bool f16 = kv->type == DTYPE_F16 && hd <= ATT_MAX_HD;
    if (f16) {
        for (int64_t i = 0; i < hd; i++) qr[i] = f16_round1(qh[i]);
        qh = qr;
        if (hi - lo + 1 <= c->chunk) {
            att_one_f16(c, qh, oh, table, lo, hi, g, sc);
            return;
        }
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t c0 = lo; c0 <= hi; c0 += c->chunk) {
        int64_t cn = TP_MIN(c->chunk, hi - c0 + 1);
        float cmax = -INFINITY;
        for (int64_t j = 0; j < cn; j++) {
            const void *kp = kbase + (size_t)att_kv_off(kv, table, c0 + j, g) * esz;
#if CPU_HAVE_X86
            float s = c->avx2 ? dot_avx2(qh, kp, kv->type, hd) : dot_scalar(qh, kp, kv->type, hd);
#else
            float s = dot_scalar(qh, kp, kv->type, hd);
#endif
            s *= c->scale;
            sc[j] = s;
            cmax = TP_MAX(cmax, s);
        }
        if (cmax > m) {
            if (l > 0.0f) { /* an earlier chunk: bring its sums to the new maximum */
                float corr = cpu_exp1(m - cmax);
                l *= corr;
                for (int64_t i = 0; i < hd; i++) oh[i] *= corr;
            }
            m = cmax;
        }
#if CPU_HAVE_X86
        l += c->avx2 ? exp_shift_avx2(sc, cn, m) : exp_shift_scalar(sc, cn, m);
#else
        l += exp_shift_scalar(sc, cn, m);
#endif
        for (int64_t j = 0; j < cn; j++) {
            const void *vp = vbase + (size_t)att_kv_off(kv, table, c0 + j, g) * esz;
#if CPU_HAVE_X86
            if (c->avx2) {
                axpy_avx2(oh, sc[j], vp, kv->type, hd);
                continue;
            }
#endif
            axpy_scalar(oh, sc[j], vp, kv->type, hd);
        }
    }
    if (l > 0.0f) {
        float inv = 1.0f / l;
        for (int64_t i = 0; i < hd; i++) oh[i] *= inv;
    }
}

#if CPU_HAVE_X86

/* The horizontal sums of v[0..3], each added in cpu_hsum256's order
 * (((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))), side by side: lane k holds v[k]'s. */
static inline CPU_AVX2 __m128 att_hsum4(const __m256 *v) {
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20), _mm256_permute2f128_ps(v[0], v[1], 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v[2], v[3], 0x20), _mm256_permute2f128_ps(v[2], v[3], 0x31));
    const __m256 h = _mm256_add_ps(_mm256_unpacklo_ps(s01, s23), _mm256_unpackhi_ps(s01, s23));
    const __m256 f = _mm256_add_ps(h, _mm256_shuffle_ps(h, h, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_castps256_ps128(_mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)));
}

/* x rounded to f16 and back, f16_round1 in 8 lanes (cpu_f32_to_f16 and cpu_f16_to_f32
 * equal F16C on every input: test_cpu_ops checks it). */
static inline CPU_AVX2 __m256 att_f16_round8(__m256 x) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* Prefetches the rows (row_bytes from base + slot * stride halves) of the cache block
 * holding position p, if p <= hi: the next block's rows are requested while the current
 * block is summed (blocks are scattered, so the hardware prefetchers lose the stream at
 * every block boundary, and one KV head's row is a short piece of each cache line run). */
static inline CPU_AVX2 void att_prefetch_block(const struct kv_layer *kv, const int32_t *table, int64_t p, int64_t hi,
                                               const uint16_t *base, int64_t stride, int64_t row_bytes) {
    if (p > hi) return;
    const int64_t bs = kv->block_size, off = p % bs, n = TP_MIN(bs - off, hi - p + 1);
    const char *r = (const char *)(base + ((int64_t)table[p / bs] * bs + off) * stride);
    for (int64_t u = 0; u < n; u++, r += stride * 2)
        for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
}

/* Runs the statements after `j` with `slot` the cache slot of position lo + j, for j = 0 ..
 * cn - 1, walking the sequence's block table a block at a time (no division per
 * position), and prefetching the next block's rows of `pbase` as each block starts. */
#define ATT_FOR_SLOTS(kv, table, lo, cn, pbase, stride, row_bytes, slot, j, ...)              \
    for (int64_t j = 0, p_ = (lo); j < (cn);) {                                             \
        const int64_t off_ = p_ % (kv)->block_size;                                         \
        const int64_t run_ = TP_MIN((kv)->block_size - off_, (cn) - j);                     \
        const int64_t s0_ = (int64_t)(table)[p_ / (kv)->block_size] * (kv)->block_size + off_; \
        att_prefetch_block(kv, table, p_ + run_, (lo) + (cn) - 1, pbase, stride, row_bytes);  \
        for (int64_t u_ = 0; u_ < run_; u_++, j++) {                                        \
            const int64_t slot = s0_ + u_;                                                  \
            __VA_ARGS__                                                                     \
        }                                                                                   \
        p_ += run_;                                                                         \
    }

/* Heads h0 .. h0 + H - 1 of token t, in units of S heads that share a KV head (S <= 4,
 * H a multiple of S, H <= CPU_ATT_GROUP), over an f16 cache whose span fits one scratch
 * chunk: for each head exactly the arithmetic of att_one_f16 (q rounded to f16, q.K as
 * dot_avx2 sums it, two-pass softmax with cpu_exp1 and a double sum, probabilities
 * normalised and rounded to f16, V weighted as axpy_avx2 does), so the outputs are the
 * same bits (test_cpu_ops checks it). But each K and V row is loaded and widened once for
 * its S heads; the KV heads of a position sit side by side in the cache, so an item of
 * several KV heads reads one contiguous piece per position (prefetched a block ahead);
 * the horizontal sums and softmax chains run side by side; and nothing goes through a
 * call per position. */
static inline __attribute__((always_inline)) CPU_AVX2 void
att_heads_f16_body(const struct att_ctx *c, int64_t t, int64_t h0, int H, const int S, const int32_t *table,
                   int64_t lo, int64_t hi, float *sc) {
    const struct kv_layer *kv = c->kv;
    const int64_t hd = kv->head_dim, cn = hi - lo + 1, rs = kv->n_kv * hd, g0 = h0 / c->group;
    const int n_units = H / S;
    const int64_t row_bytes = ((h0 + H - 1) / c->group - g0 + 1) * hd * 2; /* this item's K (V) bytes per position */
    const uint16_t *kbase = (const uint16_t *)kv->k + g0 * hd, *vbase = (const uint16_t *)kv->v + g0 * hd;
    float qr[CPU_ATT_GROUP][ATT_MAX_HD];
    float *oh[CPU_ATT_GROUP], m[CPU_ATT_GROUP];
    int64_t koff[CPU_ATT_GROUP]; /* unit u: its KV head's offset in the item's piece of a position */
    for (int u = 0; u < n_units; u++) koff[u] = ((h0 + (int64_t)u * S) / c->group - g0) * hd;
    for (int h = 0; h < H; h++) {
        const float *qh = c->q + (t * c->n_head + h0 + h) * hd;
        for (int64_t i = 0; i < hd; i += 8) _mm256_storeu_ps(qr[h] + i, att_f16_round8(_mm256_loadu_ps(qh + i)));
        oh[h] = c->out + (t * c->n_head + h0 + h) * hd;
        memset(oh[h], 0, (size_t)hd * sizeof(float));
        m[h] = -INFINITY;
    }
    att_prefetch_block(kv, table, lo, hi, kbase, rs, row_bytes);
    ATT_FOR_SLOTS(kv, table, lo, cn, kbase, rs, row_bytes, slot, j, {
        const uint16_t *krow = kbase + slot * rs;
        for (int u = 0; u < n_units; u++) {
            const uint16_t *kh = krow + koff[u];
            float(*q)[ATT_MAX_HD] = qr + u * S;
            __m256 a0[4], a1[4];
            for (int s = 0; s < 4; s++) a0[s] = a1[s] = _mm256_setzero_ps();
            int64_t i = 0;
            for (; i + 16 <= hd; i += 16) {
                const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i)));
                const __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i + 8)));
                for (int s = 0; s < S; s++) {
                    a0[s] = _mm256_fmadd_ps(_mm256_loadu_ps(q[s] + i), k0, a0[s]);
                    a1[s] = _mm256_fmadd_ps(_mm256_loadu_ps(q[s] + i + 8), k1, a1[s]);
                }
            }
            if (i + 8 <= hd) {
                const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i)));
                for (int s = 0; s < S; s++) a0[s] = _mm256_fmadd_ps(_mm256_loadu_ps(q[s] + i), k0, a0[s]);
            }
            for (int s = 0; s < 4; s++) a0[s] = _mm256_add_ps(a0[s], a1[s]);
            float d[4];
            _mm_storeu_ps(d, att_hsum4(a0));
            for (int s = 0; s < S; s++) {
                const int h = u * S + s;
                const float v = d[s] * c->scale;
                sc[h * cn + j] = v;
                m[h] = TP_MAX(m[h], v);
            }
        }
    })
    for (int h = 0; h < H; h++) exp_sub_avx2(sc + h * cn, cn, m[h]); /* e = cpu_exp1(s - m) */
    double l[CPU_ATT_GROUP] = {0};
    for (int64_t j = 0; j < cn; j++) /* the heads' sums are independent chains: side by side */
        for (int h = 0; h < H; h++) l[h] += sc[h * cn + j];
    for (int h = 0; h < H; h++) {
        float *ss = sc + h * cn;
        const float inv = (float)(1.0 / l[h]);
        const __m256 vinv = _mm256_set1_ps(inv);
        int64_t j = 0;
        for (; j + 8 <= cn; j += 8) _mm256_storeu_ps(ss + j, att_f16_round8(_mm256_mul_ps(_mm256_loadu_ps(ss + j), vinv)));
        for (; j < cn; j++) ss[j] = f16_round1(ss[j] * inv);
    }
    /* V, unit by unit and 16 values of the head at a time: o[h][i..] = sum over positions in
     * order of w[h][j] v[j][i..], in registers across the positions (the same fused
     * multiply-adds in the same order as axpy_avx2 into o; a zero weight leaves the sum
     * as it is, as att_one_f16 skips it, even against an infinite f16 value) */
    const __m256 zero = _mm256_setzero_ps();
    for (int u = 0; u < n_units; u++) {
        const float *ws[4];
        for (int s = 0; s < S; s++) ws[s] = sc + (int64_t)(u * S + s) * cn;
        const uint16_t *vb = vbase + koff[u];
        for (int64_t i = 0; i < hd; i += 16) {
            const bool two = i + 16 <= hd;
            __m256 acc0[4], acc1[4];
            for (int s = 0; s < 4; s++) acc0[s] = acc1[s] = zero;
            if (i == 0) att_prefetch_block(kv, table, lo, hi, vb, rs, hd * 2);
            ATT_FOR_SLOTS(kv, table, lo, cn, vb, rs, i == 0 ? hd * 2 : 0, slot, j, {
                const uint16_t *vh = vb + slot * rs + i;
                const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)vh));
                const __m256 x1 = two ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vh + 8))) : zero;
                for (int s = 0; s < S; s++) {
                    const __m256 w = _mm256_broadcast_ss(ws[s] + j);
                    const __m256 keep = _mm256_cmp_ps(w, zero, _CMP_EQ_OQ);
                    acc0[s] = _mm256_blendv_ps(_mm256_fmadd_ps(w, x0, acc0[s]), acc0[s], keep);
                    if (two) acc1[s] = _mm256_blendv_ps(_mm256_fmadd_ps(w, x1, acc1[s]), acc1[s], keep);
                }
            })
            for (int s = 0; s < S; s++) {
                _mm256_storeu_ps(oh[u * S + s] + i, acc0[s]);
                if (two) _mm256_storeu_ps(oh[u * S + s] + i + 8, acc1[s]);
            }
        }
    }
}

/* The unit size as a compile-time constant, so that the accumulators stay in registers. */
static CPU_AVX2 void att_heads_f16_avx2(const struct att_ctx *c, int64_t t, int64_t h0, int H, int S,
                                        const int32_t *table, int64_t lo, int64_t hi, float *sc) {
    if (S == 4) att_heads_f16_body(c, t, h0, H, 4, table, lo, hi, sc);
    else if (S == 2) att_heads_f16_body(c, t, h0, H, 2, table, lo, hi, sc);
    else att_heads_f16_body(c, t, h0, H, 1, table, lo, hi, sc);
}
#endif

/* Heads h0 .. h0 + H - 1 of token t (units of S heads sharing a KV head): together where
 * the grouped kernel applies (f16 cache, head size a multiple of 8, span within one
 * scratch chunk), else one by one. */
static void att_heads(const struct att_ctx *c, int64_t t, int64_t h0, int H, int S, float *sc) {
#if CPU_HAVE_X86
    const struct kv_layer *kv = c->kv;
    const struct attn_batch *bt = c->batch;
    const int64_t hd = kv->head_dim, hi = bt->pos[t];
    const int64_t lo = c->window > 0 ? TP_MAX(0, hi - c->window + 1) : 0;
    if (c->avx2 && kv->type == DTYPE_F16 && hd % 8 == 0 && hd <= ATT_MAX_HD && hi >= lo && hi - lo + 1 <= c->chunk) {
        const int32_t *table = bt->block_tables + (int64_t)bt->seq[t] * bt->max_blocks;
        att_heads_f16_avx2(c, t, h0, H, S, table, lo, hi, sc);
        return;
    }
#else
    (void)S;
#endif
    for (int h = 0; h < H; h++) att_one(c, t * c->n_head + h0 + h, sc);
}

/* Task i of the pool: takes work items (a token and `heads` heads) one at a time until
 * none are left, using scratch row i (task indices are unique within a run, so rows are
 * never shared). */
static void att_task(void *arg, int64_t i, int64_t n) {
    struct att_ctx *c = arg;
    float *sc = c->scores + i * CPU_ATT_GROUP * c->chunk;
    const int64_t per_tok = c->n_head / c->heads;
    for (;;) {
        int64_t item = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (item >= c->n_items) break;
        if (c->heads == 1) att_one(c, item, sc);
        else att_heads(c, item / per_tok, item % per_tok * c->heads, (int)c->heads, (int)c->unit, sc);
    }
}

size_t cpu_attention_scratch_bytes(const struct kbackend_opts *o) {
    return (size_t)TP_MAX(o->n_threads, 1) * CPU_ATT_GROUP * (size_t)TP_MAX(o->max_ctx, 0) * sizeof(float);
}

/* A token whose position is negative gets zeros. n_head must be a multiple of kv->n_kv. */
void cpu_attention(struct kbackend *b, float *out, const float *q, const struct kv_layer *kv,
                   const struct attn_batch *batch, int64_t n_head, float scale, int64_t window) {
    if (batch->n_tok <= 0 || n_head <= 0 || kv->head_dim <= 0) return;
    struct cpu_backend *cb = cpu_impl(b);
    struct att_ctx c = {
        .out = out,
        .q = q,
        .kv = kv,
        .batch = batch,
        .n_head = n_head,
        .group = kv->n_kv > 0 && n_head >= kv->n_kv ? n_head / kv->n_kv : 1,
        .window = window,
        .scale = scale,
        .scores = cb->att_scores,
        .chunk = cb->opts.max_ctx,
        .avx2 = cpu_use_avx2(b),
    };
    /* Work items of several heads: units of up to 4 heads of one KV group (their K and V
     * rows widened once), and several KV heads per item (each position's rows of the
     * item's KV heads adjacent in the cache), as long as every thread gets an item. */
    c.heads = c.unit = 1;
#if CPU_HAVE_X86
    for (int64_t H = CPU_ATT_GROUP; H > 1; H--)
        if (n_head % H == 0 && batch->n_tok * (n_head / H) >= cb->n_threads) {
            c.heads = H;
            c.unit = c.group % 4 == 0 && H % 4 == 0 ? 4 : c.group % 2 == 0 && H % 2 == 0 ? 2 : 1;
            break;
        }
#endif
    c.n_items = batch->n_tok * n_head / c.heads;
    atomic_init(&c.next, 0);
    tpool_run(cb->pool, att_task, &c, TP_MIN((int64_t)cb->n_threads, c.n_items));
}
