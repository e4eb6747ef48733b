/* testutil.c - helpers shared by the unit tests. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "kernels/quant.h"

uint64_t tu_seed(void) {
    const char *s = getenv("TPLLM_TEST_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : ((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20));
    fprintf(stderr, "[testutil] seed %llu (set TPLLM_TEST_SEED to repeat)\n", (unsigned long long)seed);
    return seed;
}

void tu_rng_init(tu_rng *r, uint64_t seed) { r->s = seed ? seed : 0x9E3779B97F4A7C15ull; }

uint64_t tu_next(tu_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

float tu_uniform(tu_rng *r, float lo, float hi) {
    double u = (double)(tu_next(r) >> 11) / (double)(1ull << 53);
    return (float)(lo + (hi - lo) * u);
}

float tu_normal(tu_rng *r) {
    double u1 = ((double)(tu_next(r) >> 11) + 1.0) / ((double)(1ull << 53) + 1.0);
    double u2 = (double)(tu_next(r) >> 11) / (double)(1ull << 53);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void tu_fill_uniform(tu_rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = tu_uniform(r, lo, hi);
}

char *tu_tmp_path(const char *suffix) {
    const char *dir = getenv("TMPDIR");
    if (!dir) dir = "/tmp";
    static unsigned counter; /* tests run single-threaded per process */
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/tpllm-test-%d-%u%s", dir, (int)getpid(), counter++, suffix ? suffix : "");
    return p;
}

char *tu_src_path(const char *rel) {
    const char *root = getenv("TPLLM_SOURCE_DIR");
#ifdef TPLLM_SOURCE_DIR
    if (!root) root = TPLLM_SOURCE_DIR;
#endif
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s", root ? root : ".", rel);
    return p;
}

void *tu_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

int tu_write_file(const char *path, const void *buf, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, size, f);
    fclose(f);
    return w == size ? 0 : -1;
}

/* The activation row in ggml block form as the runtime quantizes it: Q8_K (and every
 * non-Q8_0/Q8_1 type) by the reference quantizer; Q8_0 / Q8_1 as llama.cpp's x86 backend
 * does, q = x * (127 / amax) rounded half to even, d = amax / 127 (and s = d * sum q). */
void tu_act_quantize_row(int vt, const float *x, uint8_t *q, int64_t n) {
    if (vt != DTYPE_Q8_0 && vt != DTYPE_Q8_1) {
        quant_quantize_row(vt, x, q, n);
        return;
    }
    const size_t bs = vt == DTYPE_Q8_0 ? 34 : 36, qo = bs - 32;
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        uint8_t *blk = q + (size_t)b * bs;
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127, id = amax != 0 ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int v = (int)nearbyintf(xb[j] * id);
            blk[qo + j] = (uint8_t)(int8_t)v;
            sum += v;
        }
        uint16_t dh = f32_to_fp16(d), sh = f32_to_fp16((float)sum * d);
        memcpy(blk, &dh, 2);
        if (vt == DTYPE_Q8_1) memcpy(blk + 2, &sh, 2);
    }
}

int tu_cuda_devices(void) {
    if (!kbackend_cuda_compiled()) return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        int n = kbackend_cuda_device_count();
        _exit(n < 0 ? 0 : n > 100 ? 100 : n);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return 0;
    return WEXITSTATUS(st);
}

void tu_fill_topk_rows(tu_rng *r, float *x, int64_t rows, int64_t n, int kind) {
    for (int64_t i = 0; i < rows * n; i++) {
        const int64_t j = i % n;
        if (kind == 0) x[i] = tu_uniform(r, -20.0f, 20.0f);
        else if (kind == 1) x[i] = (float)(tu_next(r) % 6) - 2.5f;
        else if (kind == 2) x[i] = tu_next(r) % 4 == 0 ? -INFINITY : tu_uniform(r, -5.0f, 5.0f);
        else if (kind == 3) x[i] = (float)j * 0.013f + tu_uniform(r, -0.5f, 0.5f); /* rising: new maxima */
        else if (kind == 4) {
            uint64_t u = tu_next(r) % 4096;
            x[i] = u == 0 ? NAN : u == 1 ? INFINITY : u < 40 ? -INFINITY : tu_uniform(r, -60.0f, 60.0f);
        } else { /* e^-40-ish terms (some -inf in kind 6): lse = log(1 + their sum) shows its order */
            x[i] = kind == 6 && tu_next(r) % 64 == 0 ? -INFINITY : tu_uniform(r, -42.0f, -38.0f);
        }
    }
    if (kind >= 5) /* the maximum, 0, somewhere in each row */
        for (int64_t row = 0; row < rows; row++) x[row * n + (int64_t)(tu_next(r) % (uint64_t)n)] = 0.0f;
}
