/* bench_serve.c - `tpllm bench serve`: an online load test of any OpenAI-compatible server
 * (tpllm's own, llama-server, vLLM), as `vllm bench serve` does it.
 *
 * N requests (POST /v1/completions, stream: true, greedy, ignore_eos) arrive at --rate per
 * second (Poisson, seeded; default: all at once) and at most --concurrency are in flight.
 * Per request: TTFT (arrival to the first token event), TPOT ((last - first) / (tokens - 1)),
 * and every inter-token gap; over the run: request and output-token throughput, errors.
 * libcurl does the HTTP (plain or TLS); the event stream is parsed line by line. */
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_serve.h"
#include "kernels/base.h"

struct bs_args {
    const char *url, *key, *model;
    int requests, concurrency, prompt_words, max_tokens;
    double rate; /* requests per second; 0: all at once */
    uint64_t seed;
    bool json;
};

struct bs_req {
    double t_arrive, t_start, t_first, t_last;
    int tokens;        /* token events seen */
    int usage_tokens;  /* completion_tokens of the usage event (-1: none) */
    bool ok;
    char err[160];
    double *gaps;      /* inter-token gaps (seconds) */
    int n_gaps, cap_gaps;
    char line[8192];   /* the event line being assembled */
    size_t line_len;
};

struct bs_run {
    const struct bs_args *a;
    struct bs_req *reqs;
    pthread_mutex_t mu;
    int next;
    double t0;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: tpllm bench serve --url URL [options]\n\n"
            "Load test of a running OpenAI-compatible server: streaming completions, greedy, ignore_eos.\n"
            "  --url URL               the server, e.g. http://127.0.0.1:8080 (required)\n"
            "  --requests N            requests in all (default 64)\n"
            "  --concurrency C         requests in flight at most (default 8)\n"
            "  --rate R                arrivals per second, Poisson (default 0: all at once)\n"
            "  --prompt-words W        words per prompt (default 32)\n"
            "  --max-tokens T          generated tokens per request (default 64)\n"
            "  --model NAME            the \"model\" field (default: none; tpllm accepts that)\n"
            "  --api-key KEY           sent as 'Authorization: Bearer KEY'\n"
            "  --seed S                arrival times and prompts (default 1)\n"
            "  --json                  the results as JSON\n");
}

/* One line of the event stream. */
static void on_line(struct bs_req *r, const char *l, size_t n) {
    if (n < 6 || strncmp(l, "data: ", 6)) return;
    l += 6, n -= 6;
    if (n >= 6 && !strncmp(l, "[DONE]", 6)) return;
    const double t = now_s();
    if (strstr(l, "\"error\"") && !strstr(l, "\"choices\"")) {
        snprintf(r->err, sizeof r->err, "error event: %.120s", l);
        return;
    }
    const char *u = strstr(l, "\"completion_tokens\":");
    if (u) r->usage_tokens = atoi(u + 20);
    if (strstr(l, "\"choices\":[]")) return;            /* the usage event */
    if (!strstr(l, "\"finish_reason\":null")) return;    /* the last event: no token */
    if (r->tokens == 0) {
        r->t_first = t;
    } else {
        if (r->n_gaps == r->cap_gaps) {
            int cap = r->cap_gaps ? 2 * r->cap_gaps : 64;
            double *g = realloc(r->gaps, (size_t)cap * sizeof *g);
            if (g) r->gaps = g, r->cap_gaps = cap;
        }
        if (r->n_gaps < r->cap_gaps) r->gaps[r->n_gaps++] = t - r->t_last;
    }
    r->t_last = t;
    r->tokens++;
}

static size_t on_data(char *p, size_t sz, size_t nm, void *user) {
    struct bs_req *r = user;
    const size_t n = sz * nm;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            on_line(r, r->line, r->line_len);
            r->line_len = 0;
        } else if (r->line_len + 1 < sizeof r->line) {
            r->line[r->line_len++] = p[i];
        }
    }
    return n;
}

static const char *const BS_WORDS[] = {"the", "river", "runs", "past", "old", "mill", "and", "miller", "counts",
                                       "sacks", "of", "grain", "while", "rain", "falls", "on", "stone"};

static void *worker(void *arg) {
    struct bs_run *run = arg;
    const struct bs_args *a = run->a;
    CURL *c = curl_easy_init();
    if (!c) return NULL;
    char url[1024];
    snprintf(url, sizeof url, "%s/v1/completions", a->url);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[600];
    if (a->key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", a->key);
        hdr = curl_slist_append(hdr, auth);
    }
    for (;;) {
        pthread_mutex_lock(&run->mu);
        int i = run->next < a->requests ? run->next++ : -1;
        pthread_mutex_unlock(&run->mu);
        if (i < 0) break;
        struct bs_req *r = &run->reqs[i];
        double wait = run->t0 + r->t_arrive - now_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        char body[16384];
        size_t o = (size_t)snprintf(body, sizeof body, "{\"prompt\": \"%d:", i);
        uint64_t s = a->seed * 6364136223846793005ull + (uint64_t)i * 1442695040888963407ull + 1;
        for (int w = 0; w < a->prompt_words && o + 16 < sizeof body; w++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            o += (size_t)snprintf(body + o, sizeof body - o, " %s", BS_WORDS[(s >> 33) % TP_ARRAY_LEN(BS_WORDS)]);
        }
        char model[300] = "";
        if (a->model) snprintf(model, sizeof model, ", \"model\": \"%.256s\"", a->model);
        snprintf(body + o, sizeof body - o,
                 "\", \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true, \"stream\": true, "
                 "\"stream_options\": {\"include_usage\": true}%s}", a->max_tokens, model);
        r->usage_tokens = -1;
        r->t_start = now_s();
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 600L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        CURLcode rc = curl_easy_perform(c);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK) snprintf(r->err, sizeof r->err, "%s", curl_easy_strerror(rc));
        else if (status != 200) snprintf(r->err, sizeof r->err, "HTTP %ld", status);
        else if (r->tokens == 0) snprintf(r->err, sizeof r->err, "no token events");
        r->ok = !r->err[0];
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    return NULL;
}

static int cmp_d(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The q-quantile (0..1) of v[0..n) sorted ascending (linear interpolation). */
static double quant(const double *v, int n, double q) {
    if (n <= 0) return 0;
    double pos = q * (n - 1);
    int i = (int)pos;
    return i + 1 < n ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[n - 1];
}

static int parse(struct bs_args *a, int argc, char **argv) {
    *a = (struct bs_args){.requests = 64, .concurrency = 8, .prompt_words = 32, .max_tokens = 64, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(o, "--json")) {
            a->json = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "tpllm bench serve: unknown or incomplete option '%s'. Run 'tpllm bench serve --help'.\n", o);
            return 2;
        }
        i++;
        char *end = NULL;
        long long x = strtoll(v, &end, 10);
        bool num_ok = *v && !*end;
        if (!strcmp(o, "--url")) a->url = v;
        else if (!strcmp(o, "--api-key")) a->key = v;
        else if (!strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--rate")) {
            a->rate = strtod(v, &end);
            if (*end || !(a->rate >= 0)) {
                fprintf(stderr, "tpllm bench serve: --rate expects requests per second >= 0, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(o, "--requests") && num_ok && x >= 1 && x <= 100000) a->requests = (int)x;
        else if (!strcmp(o, "--concurrency") && num_ok && x >= 1 && x <= 1024) a->concurrency = (int)x;
        else if (!strcmp(o, "--prompt-words") && num_ok && x >= 1 && x <= 2000) a->prompt_words = (int)x;
        else if (!strcmp(o, "--max-tokens") && num_ok && x >= 1 && x <= 100000) a->max_tokens = (int)x;
        else if (!strcmp(o, "--seed") && num_ok && x >= 0) a->seed = (uint64_t)x;
        else {
            fprintf(stderr, "tpllm bench serve: bad option or value '%s %s' (see --help for the ranges)\n", o, v);
            return 2;
        }
    }
    if (!a->url || (strncmp(a->url, "http://", 7) && strncmp(a->url, "https://", 8))) {
        fprintf(stderr, "tpllm bench serve: give the server with --url http://HOST:PORT\n");
        return 2;
    }
    return 0;
}

int cmd_bench_serve(int argc, char **argv) {
    struct bs_args a;
    int prc = parse(&a, argc, argv);
    if (prc) return prc == 1 ? 0 : prc;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "tpllm bench serve: libcurl did not initialise\n");
        return 1;
    }
    struct bs_run run = {.a = &a};
    run.reqs = calloc((size_t)a.requests, sizeof *run.reqs);
    if (!run.reqs) {
        fprintf(stderr, "tpllm bench serve: out of memory\n");
        return 1;
    }
    /* Poisson arrivals: exponential gaps of mean 1 / rate, from the seed */
    uint64_t s = a.seed * 0x9E3779B97F4A7C15ull + 7;
    double t = 0;
    for (int i = 0; i < a.requests; i++) {
        run.reqs[i].t_arrive = t;
        if (a.rate > 0) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            double u = ((double)((s * 2685821657736338717ull) >> 11) + 1.0) / 9007199254740993.0;
            t += -log(u) / a.rate;
        }
    }
    pthread_mutex_init(&run.mu, NULL);
    const int nt = TP_MIN(a.concurrency, a.requests);
    pthread_t *th = calloc((size_t)nt, sizeof *th);
    if (!th) return 1;
    run.t0 = now_s();
    for (int i = 0; i < nt; i++) pthread_create(&th[i], NULL, worker, &run);
    for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
    const double wall = now_s() - run.t0;

    int ok = 0, n_gaps = 0;
    long long toks = 0;
    for (int i = 0; i < a.requests; i++) {
        ok += run.reqs[i].ok;
        if (run.reqs[i].ok) toks += run.reqs[i].tokens, n_gaps += run.reqs[i].n_gaps;
    }
    double *ttft = calloc((size_t)a.requests + 1, sizeof(double)), *tpot = calloc((size_t)a.requests + 1, sizeof(double));
    double *itl = calloc((size_t)n_gaps + 1, sizeof(double));
    int n_ttft = 0, n_tpot = 0, k = 0;
    for (int i = 0; i < a.requests; i++) {
        const struct bs_req *r = &run.reqs[i];
        if (!r->ok) continue;
        ttft[n_ttft++] = r->t_first - (run.t0 + r->t_arrive);
        if (r->tokens > 1) tpot[n_tpot++] = (r->t_last - r->t_first) / (r->tokens - 1);
        for (int g = 0; g < r->n_gaps; g++) itl[k++] = r->gaps[g];
    }
    qsort(ttft, (size_t)n_ttft, sizeof *ttft, cmp_d);
    qsort(tpot, (size_t)n_tpot, sizeof *tpot, cmp_d);
    qsort(itl, (size_t)k, sizeof *itl, cmp_d);
    const char *first_err = "";
    for (int i = 0; i < a.requests; i++)
        if (!run.reqs[i].ok) {
            first_err = run.reqs[i].err;
            break;
        }
    if (a.json) {
        printf("{\"url\": \"%s\", \"requests\": %d, \"concurrency\": %d, \"rate\": %g, \"max_tokens\": %d, "
               "\"completed\": %d, \"errors\": %d, \"wall_s\": %.3f, \"request_throughput\": %.4f, "
               "\"output_token_throughput\": %.3f, "
               "\"ttft_s\": {\"p50\": %.5f, \"p90\": %.5f, \"p99\": %.5f}, "
               "\"tpot_s\": {\"p50\": %.5f, \"p90\": %.5f, \"p99\": %.5f}, "
               "\"itl_s\": {\"p50\": %.5f, \"p90\": %.5f, \"p99\": %.5f}}\n",
               a.url, a.requests, a.concurrency, a.rate, a.max_tokens, ok, a.requests - ok, wall, ok / wall,
               (double)toks / wall, quant(ttft, n_ttft, .5), quant(ttft, n_ttft, .9), quant(ttft, n_ttft, .99),
               quant(tpot, n_tpot, .5), quant(tpot, n_tpot, .9), quant(tpot, n_tpot, .99), quant(itl, k, .5),
               quant(itl, k, .9), quant(itl, k, .99));
    } else {
        printf("%s: %d requests (%d completed, %d errors%s%s), concurrency %d, rate %s, %d tokens each\n", a.url,
               a.requests, ok, a.requests - ok, first_err[0] ? ": " : "", first_err, a.concurrency,
               a.rate > 0 ? "Poisson" : "all at once", a.max_tokens);
        printf("| metric | p50 | p90 | p99 |\n| --- | ---: | ---: | ---: |\n");
        printf("| TTFT (ms) | %.1f | %.1f | %.1f |\n", 1e3 * quant(ttft, n_ttft, .5), 1e3 * quant(ttft, n_ttft, .9),
               1e3 * quant(ttft, n_ttft, .99));
        printf("| TPOT (ms) | %.2f | %.2f | %.2f |\n", 1e3 * quant(tpot, n_tpot, .5), 1e3 * quant(tpot, n_tpot, .9),
               1e3 * quant(tpot, n_tpot, .99));
        printf("| ITL (ms) | %.2f | %.2f | %.2f |\n", 1e3 * quant(itl, k, .5), 1e3 * quant(itl, k, .9),
               1e3 * quant(itl, k, .99));
        printf("throughput: %.2f requests/s, %.1f output tokens/s over %.2f s\n", ok / wall, (double)toks / wall, wall);
    }
    for (int i = 0; i < a.requests; i++) free(run.reqs[i].gaps);
    free(run.reqs);
    free(ttft);
    free(tpot);
    free(itl);
    free(th);
    pthread_mutex_destroy(&run.mu);
    curl_global_cleanup();
    return ok == a.requests ? 0 : 1;
}
