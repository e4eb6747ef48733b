/* dot_gran.h - private interface of the granule dot products behind cpu_matmul_f64
 * (matmul_f64.c): one weight row against up to KDOT_NT tokens, cut into granules whose
 * float dot products are summed in double.
 *
 * The reference is the per-granule loop (kdot_gran_loop): the level's kdot kernel called
 * on each granule alone, with the weight pointer advanced to the granule and the
 * activation view shifted by kact_view. A fused kernel (kdot_gran_fused) gives the same
 * doubles bit for bit: inside a granule it repeats the kdot kernel's float operations in
 * the same order (lane accumulators, horizontal sum at the granule's end), then adds the
 * granule's float to the double accumulator and starts the next granule from zero. It
 * saves the per-granule call, prologue and token setup, which dominate short granules. */
#ifndef TPLLM_CPU_DOT_GRAN_H
#define TPLLM_CPU_DOT_GRAN_H

#include "simd_dot.h"

/* out[k] += sum_g (double) dot_g(row w, activation row t0 + k) for k < nt <= KDOT_NT over
 * the granules [g * granule, min(n, (g + 1) * granule)) of a row of n values, added to
 * out[k] one at a time, g in order (the caller sets out[k] = 0.0 before a row's first
 * granule). So a row may be done in slices at granule boundaries, w and `a` advanced to
 * each slice (kact_view), with the same result as one call. granule is a positive
 * multiple of the type's granule unit (kdot_gran_unit). */
typedef void (*kdot_gran_fn)(const void *w, int64_t n, int64_t granule, const struct kact_rows *a, int64_t t0, int nt,
                             double *out);

/* The granule unit of weight type t: its block, or a block pair for the KACT_Q8_32 layout
 * (whose activation blocks are stored in interleaved pairs). */
int64_t kdot_gran_unit(enum dtype t);

/* The activation rows `a` (laid out for format f) restricted to columns [g0, ...); g0 a
 * multiple of the format's granule unit. */
struct kact_rows kact_view(const struct kact_rows *a, enum kact_fmt f, int64_t g0);

/* The kdot kernel cpu_matmul uses for type t at SIMD level `level` (NULL: t is not a
 * weight type). */
kdot_fn kdot_for(enum ksimd level, enum dtype t);

/* The fused granule kernel equal to the per-granule loop of kdot_for(level, t), or NULL
 * where there is none (the caller then runs kdot_gran_loop). */
kdot_gran_fn kdot_gran_fused(enum ksimd level, enum dtype t);

/* The reference: kdot_for(level, t) called once per granule, the results added to out
 * in double as kdot_gran_fn says. views[g] is kact_view(a, kact_fmt_of(t), g * granule) and
 * w_off[g] the byte offset of granule g in a weight row (the caller precomputes both). */
void kdot_gran_loop(kdot_fn dot, const void *w, int64_t n, int64_t granule, const struct kact_rows *views,
                    const size_t *w_off, int64_t t0, int nt, double *out);

/* The AVX2 fused kernels (dot_gran_avx2.c); NULL for types without one. */
kdot_gran_fn kdot_gran_avx2(enum dtype t);

#endif
