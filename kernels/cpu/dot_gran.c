/* dot_gran.c - the granule dot products of cpu_matmul_f64 (dot_gran.h): kernel choice per
 * SIMD level, activation views of a granule, and the per-granule reference loop. */
#include "dot_gran.h"

int64_t kdot_gran_unit(enum dtype t) {
    int64_t blk = dtype_block(t);
    return kact_fmt_of(t) == KACT_Q8_32 ? 2 * blk : blk;
}

struct kact_rows kact_view(const struct kact_rows *a, enum kact_fmt f, int64_t g0) {
    struct kact_rows v = *a;
    size_t u = (size_t)g0;
    switch (f) {
    case KACT_F32: v.base += u * 4; break;
    case KACT_F16:
    case KACT_BF16: v.base += u * 2; break;
    case KACT_Q8_32: /* qs: 64 bytes per block pair | dv, sv: 32 bytes per pair | d, sum, s: 4 bytes per block */
        v.base += u;
        v.off_dv = a->off_dv + u / 64 * 32 - u;
        v.off_sv = a->off_sv + u / 64 * 32 - u;
        v.off_d = a->off_d + u / 32 * 4 - u;
        v.off_sum = a->off_sum + u / 32 * 4 - u;
        v.off_s = a->off_s + u / 32 * 4 - u;
        break;
    case KACT_Q8_K: /* qs[n] | d[n/256] f32 | bsums[n/16] i16 */
        v.base += u;
        v.off_d = a->off_d + u / 256 * 4 - u;
        v.off_sum = a->off_sum + u / 16 * 2 - u;
        break;
    }
    return v;
}

kdot_fn kdot_for(enum ksimd level, enum dtype t) {
    kdot_fn f = NULL;
    if (level >= KSIMD_AVX512) f = kdot_avx512(t);
    if (!f && level >= KSIMD_AVX2) f = kdot_avx2(t);
    if (!f) f = kdot_scalar(t);
    return f;
}

kdot_gran_fn kdot_gran_fused(enum ksimd level, enum dtype t) {
    /* The fused kernels repeat the AVX2 row kernels' arithmetic. The AVX-512 row kernels
     * give the same bits as AVX2's (dot_avx512.c; tests/unit/test_simd_avx512.c), so the
     * AVX2 fused kernels equal the per-granule loop at that level too. (The scalar
     * kernels give those bits as well, but the scalar level must run without AVX2.) */
    if (level >= KSIMD_AVX2) return kdot_gran_avx2(t);
    return NULL;
}

void kdot_gran_loop(kdot_fn dot, const void *w, int64_t n, int64_t granule, const struct kact_rows *views,
                    const size_t *w_off, int64_t t0, int nt, double *out) {
    for (int64_t g = 0; g * granule < n; g++) {
        int64_t gn = TP_MIN(granule, n - g * granule);
        float f[KDOT_NT];
        dot((const uint8_t *)w + w_off[g], gn, &views[g], t0, nt, f);
        for (int k = 0; k < nt; k++) out[k] += (double)f[k];
    }
}
