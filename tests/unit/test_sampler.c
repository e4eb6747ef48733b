/* test_sampler.c - the sampler against a double-precision reference on fresh random logits:
 * filters, probabilities, draw frequencies, seeding, distributed candidates, penalties. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/sampler.h"
#include "testutil.h"

/* ---- reference helpers (written independently of sampler.c) ---- */

struct entry {
    float v;
    int32_t id;
};

static int by_value_then_id(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->v > y->v) return -1;
    if (x->v < y->v) return 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Sort logits[0..n) (ids base + i) into ids/vals, descending, ties by id. */
static void sort_all(const float *logits, int64_t n, int32_t base, int32_t *ids, float *vals) {
    struct entry *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = (struct entry){logits[i], base + (int32_t)i};
    qsort(t, (size_t)n, sizeof *t, by_value_then_id);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = t[i].id;
        vals[i] = t[i].v;
    }
    free(t);
}

static double lse_double(const float *x, int64_t n) {
    double m = -INFINITY, s = 0.0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, x[i]);
    for (int64_t i = 0; i < n; i++) s += exp((double)x[i] - m);
    return m + log(s);
}

/* The reference survivors and probabilities over a full sorted vocabulary. */
static int64_t ref_dist(const struct sampler_params *p, const float *v, int64_t n, double lse, double *q) {
    if (p->temperature <= 0) {
        q[0] = 1.0;
        return 1;
    }
    int64_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        for (int64_t i = 0; i < k; i++) {
            cum += exp(v[i] - lse);
            if (cum >= p->top_p) {
                k = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        double pmax = exp(v[0] - lse);
        int64_t m = 0;
        while (m < k && exp(v[m] - lse) >= p->min_p * pmax) m++;
        k = m;
    }
    double s = 0.0;
    for (int64_t i = 0; i < k; i++) s += q[i] = exp(((double)v[i] - v[0]) / p->temperature);
    for (int64_t i = 0; i < k; i++) q[i] /= s;
    return k;
}

/* Simulated ranks: split [0, V) into R uneven slices, each gives its top `k` and lse. */
struct ranks {
    int32_t *ids;
    float *vals;
    int64_t counts[8];
    float lses[8];
    int n;
};

static void ranks_build(struct ranks *r, const float *logits, int64_t V, int R, int64_t k, tu_rng *rng) {
    int64_t cut[9] = {0};
    cut[R] = V;
    for (int i = 1; i < R; i++) cut[i] = (int64_t)(tu_next(rng) % (uint64_t)V);
    for (int i = 1; i < R; i++) /* sort the cut points */
        for (int j = i + 1; j < R; j++)
            if (cut[j] < cut[i]) {
                int64_t t = cut[i];
                cut[i] = cut[j];
                cut[j] = t;
            }
    r->ids = malloc((size_t)V * sizeof(int32_t));
    r->vals = malloc((size_t)V * sizeof(float));
    r->n = R;
    int32_t *sid = malloc((size_t)V * sizeof(int32_t));
    float *sv = malloc((size_t)V * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < R; i++) {
        int64_t n = cut[i + 1] - cut[i];
        int64_t take = TP_MIN(n, k);
        sort_all(logits + cut[i], n, (int32_t)cut[i], sid, sv);
        memcpy(r->ids + off, sid, (size_t)take * sizeof(int32_t));
        memcpy(r->vals + off, sv, (size_t)take * sizeof(float));
        r->counts[i] = take;
        r->lses[i] = n ? (float)lse_double(logits + cut[i], n) : -INFINITY;
        off += take;
    }
    free(sid);
    free(sv);
}

static void ranks_free(struct ranks *r) {
    free(r->ids);
    free(r->vals);
}

static void random_logits(tu_rng *rng, float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * tu_normal(rng);
}

static struct sampler_params params(float temp, int32_t top_k, float top_p, float min_p, uint64_t seed) {
    struct sampler_params p;
    sampler_params_default(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

/* ---- tests ---- */

Test(sampler, greedy_takes_the_argmax_and_the_lowest_id_on_ties) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 3000 };
    float *x = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t));
    float *vals = malloc(V * sizeof(float));
    for (int trial = 0; trial < 20; trial++) {
        random_logits(&rng, x, V, 3.0f);
        int32_t a = (int32_t)(tu_next(&rng) % V), b = (int32_t)(tu_next(&rng) % V);
        x[a] = x[b] = 100.0f;
        int32_t want = TP_MIN(a, b);
        struct sampler_params p = params(0.0f, 40, 0.95f, 0.05f, 1);
        struct sampler s;
        cr_assert_eq(sampler_init(&s, &p, NULL), 0);
        for (int R = 1; R <= 4; R++) {
            struct ranks r;
            ranks_build(&r, x, V, R, sampler_n_cand(&p), &rng);
            int64_t n;
            float lse;
            cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
            int32_t tok = -1;
            cr_assert_eq(sampler_sample(&s, ids, vals, n, lse, false, &tok, NULL), 0);
            cr_assert_eq(tok, want, "R=%d: got %d, want %d", R, tok, want);
            ranks_free(&r);
        }
    }
    free(x);
    free(ids);
    free(vals);
}

Test(sampler, filters_keep_the_reference_set_with_the_reference_probabilities) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 2000 };
    static const int32_t ks[] = {0, 1, 5, 40, 300};
    static const float tps[] = {1.0f, 0.95f, 0.6f, 0.2f};
    static const float mps[] = {0.0f, 0.05f, 0.3f};
    static const float temps[] = {0.3f, 1.0f, 1.7f};
    float *x = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t));
    float *vals = malloc(V * sizeof(float));
    double *got = malloc(V * sizeof(double)), *want = malloc(V * sizeof(double));
    int checked = 0;
    for (size_t a = 0; a < TP_ARRAY_LEN(ks); a++)
        for (size_t b = 0; b < TP_ARRAY_LEN(tps); b++)
            for (size_t c = 0; c < TP_ARRAY_LEN(mps); c++)
                for (size_t d = 0; d < TP_ARRAY_LEN(temps); d++) {
                    random_logits(&rng, x, V, tu_uniform(&rng, 0.5f, 4.0f));
                    sort_all(x, V, 0, ids, vals);
                    float lse = (float)lse_double(x, V);
                    struct sampler_params p = params(temps[d], ks[a], tps[b], mps[c], 7);
                    int64_t k = -1;
                    cr_assert_eq(sampler_dist(&p, ids, vals, V, lse, true, &k, got, NULL), 0);
                    int64_t rk = ref_dist(&p, vals, V, (double)lse, want);
                    cr_assert_eq(k, rk, "top_k %d top_p %g min_p %g temp %g: kept %lld, reference %lld", ks[a],
                                 (double)tps[b], (double)mps[c], (double)temps[d], (long long)k, (long long)rk);
                    for (int64_t i = 0; i < k; i++)
                        cr_assert(fabs(got[i] - want[i]) <= 1e-12 * want[i] + 1e-300, "prob %lld: %.17g vs %.17g",
                                  (long long)i, got[i], want[i]);
                    checked++;
                }
    cr_assert_eq(checked, 180);
    free(x);
    free(ids);
    free(vals);
    free(got);
    free(want);
}

Test(sampler, draw_frequencies_match_the_reference_distribution) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 60, DRAWS = 200000 };
    float x[V];
    int32_t ids[V];
    float vals[V];
    double q[V];
    random_logits(&rng, x, V, 1.5f);
    sort_all(x, V, 0, ids, vals);
    float lse = (float)lse_double(x, V);
    struct sampler_params p = params(0.9f, 0, 0.97f, 0.01f, 20240607);
    int64_t k = ref_dist(&p, vals, V, lse, q);
    cr_assert_geq(k, 5, "the test wants a spread distribution (kept %lld)", (long long)k);
    struct sampler s;
    cr_assert_eq(sampler_init(&s, &p, NULL), 0);
    long count[V] = {0};
    for (int i = 0; i < DRAWS; i++) {
        int32_t t;
        cr_assert_eq(sampler_sample(&s, ids, vals, V, lse, true, &t, NULL), 0);
        count[t]++;
    }
    /* Chi-square over the survivors, merging cells with fewer than 5 expected draws. */
    double chi2 = 0.0, exp_acc = 0.0, obs_acc = 0.0;
    int df = -1;
    for (int64_t i = 0; i < k; i++) {
        exp_acc += q[i] * DRAWS;
        obs_acc += (double)count[ids[i]];
        if (exp_acc >= 5.0 || i == k - 1) {
            chi2 += (obs_acc - exp_acc) * (obs_acc - exp_acc) / exp_acc;
            exp_acc = obs_acc = 0.0;
            df++;
        }
    }
    for (int64_t i = k; i < V; i++) cr_assert_eq(count[ids[i]], 0, "token %d was filtered out but drawn", ids[i]);
    double limit = df + 10.0 * sqrt(2.0 * df) + 10.0; /* generous: a wrong distribution gives thousands */
    cr_assert_lt(chi2, limit, "chi-square %.1f with %d degrees of freedom (limit %.1f)", chi2, df, limit);
}

Test(sampler, the_same_seed_gives_the_same_tokens) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 500 };
    float x[V], vals[V];
    int32_t ids[V];
    random_logits(&rng, x, V, 1.0f);
    sort_all(x, V, 0, ids, vals);
    float lse = (float)lse_double(x, V);
    struct sampler_params p = params(1.0f, 0, 1.0f, 0.0f, 42);
    struct sampler a, b, c;
    sampler_init(&a, &p, NULL);
    sampler_init(&b, &p, NULL);
    p.seed = 43;
    sampler_init(&c, &p, NULL);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        int32_t ta, tb, tc;
        sampler_sample(&a, ids, vals, V, lse, true, &ta, NULL);
        sampler_sample(&b, ids, vals, V, lse, true, &tb, NULL);
        sampler_sample(&c, ids, vals, V, lse, true, &tc, NULL);
        cr_assert_eq(ta, tb, "draw %d", i);
        differ += ta != tc;
    }
    cr_assert_gt(differ, 100, "another seed should give other tokens");
    p.seed = SAMPLER_SEED_RANDOM;
    sampler_init(&a, &p, NULL);
    cr_assert_neq(a.seed, SAMPLER_SEED_RANDOM);
}

/* One step both ways: full vocabulary (complete) and R ranks' candidates; returns 1 when
 * the distributed path had to ask for the whole vocabulary. */
static int both_ways(const struct sampler_params *p, struct sampler *full, struct sampler *dist, const float *x,
                     int64_t V, int R, tu_rng *rng, int32_t *t_full, int32_t *t_dist) {
    int32_t *ids = malloc((size_t)V * sizeof(int32_t));
    float *vals = malloc((size_t)V * sizeof(float));
    sort_all(x, V, 0, ids, vals);
    float lse_full = (float)lse_double(x, V);
    cr_assert_eq(sampler_sample(full, ids, vals, V, lse_full, true, t_full, NULL), 0);

    struct ranks r;
    ranks_build(&r, x, V, R, sampler_n_cand(p), rng);
    int64_t n;
    float lse;
    cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
    cr_assert(fabsf(lse - lse_full) <= 1e-5f * fabsf(lse_full) + 1e-5f);
    int rc = sampler_sample(dist, ids, vals, n, lse, n == V, t_dist, NULL);
    cr_assert_geq(rc, 0);
    if (rc == 1) { /* gather the whole vocabulary; its lse is recomputed over it, as the engine does */
        sort_all(x, V, 0, ids, vals);
        cr_assert_eq(sampler_sample(dist, ids, vals, V, lse_full, true, t_dist, NULL), 0);
    }
    ranks_free(&r);
    free(ids);
    free(vals);
    return rc;
}

Test(sampler, candidates_merged_from_1_to_4_ranks_draw_the_full_vocabulary_token) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 5000 };
    float *x = malloc(V * sizeof(float));
    struct sampler_params ps[] = {params(0.8f, 40, 0.95f, 0.05f, 11), params(1.2f, 0, 0.9f, 0.0f, 12),
                                  params(0.7f, 0, 1.0f, 0.1f, 13), params(1.0f, 100, 1.0f, 0.0f, 14),
                                  params(1.0f, 0, 1.0f, 0.0f, 15)};
    for (size_t pi = 0; pi < TP_ARRAY_LEN(ps); pi++) {
        for (int R = 1; R <= 4; R++) {
            struct sampler full, dist;
            sampler_init(&full, &ps[pi], NULL);
            sampler_init(&dist, &ps[pi], NULL);
            int asked = 0;
            for (int step = 0; step < 40; step++) {
                random_logits(&rng, x, V, step % 2 ? 6.0f : 2.0f);
                int32_t a, b;
                asked += both_ways(&ps[pi], &full, &dist, x, V, R, &rng, &a, &b);
                cr_assert_eq(a, b, "params %zu, %d ranks, step %d: full %d, distributed %d", pi, R, step, a, b);
            }
            if (ps[pi].top_k > 0) cr_assert_eq(asked, 0, "top_k on: the candidates always suffice");
            if (ps[pi].top_k == 0 && ps[pi].top_p == 1.0f && ps[pi].min_p == 0.0f)
                cr_assert_eq(asked, 40, "no filter: the whole vocabulary is needed");
        }
    }
    free(x);
}

Test(sampler, asks_for_more_candidates_when_they_cannot_prove_the_nucleus) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 20000, R = 4 };
    float *x = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t));
    float *vals = malloc(V * sizeof(float));
    random_logits(&rng, x, V, 0.1f); /* nearly flat: 4 x 64 candidates hold ~1% of the mass */
    struct sampler_params p = params(1.0f, 0, 0.9f, 0.0f, 99);
    struct sampler s, fresh;
    sampler_init(&s, &p, NULL);
    sampler_init(&fresh, &p, NULL);
    struct ranks r;
    ranks_build(&r, x, V, R, sampler_n_cand(&p), &rng);
    int64_t n;
    float lse;
    cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
    int32_t tok = -7;
    cr_assert_eq(sampler_sample(&s, ids, vals, n, lse, false, &tok, NULL), 1);
    cr_assert_eq(tok, -7, "nothing drawn");
    int64_t k;
    cr_assert_eq(sampler_dist(&p, ids, vals, n, lse, false, &k, NULL, NULL), 1);
    sort_all(x, V, 0, ids, vals);
    int32_t a, b;
    cr_assert_eq(sampler_sample(&s, ids, vals, V, lse, true, &a, NULL), 0);
    cr_assert_eq(sampler_sample(&fresh, ids, vals, V, lse, true, &b, NULL), 0);
    cr_assert_eq(a, b, "the refused call must not advance the PRNG");
    ranks_free(&r);

    /* A peaked distribution: the nucleus is a few tokens, provable from the candidates. */
    random_logits(&rng, x, V, 0.1f);
    x[123] = 30.0f;
    x[4567] = 29.0f;
    ranks_build(&r, x, V, R, sampler_n_cand(&p), &rng);
    cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
    cr_assert_eq(sampler_dist(&p, ids, vals, n, lse, false, &k, NULL, NULL), 0);
    cr_assert_eq(k, 2);
    ranks_free(&r);
    free(x);
    free(ids);
    free(vals);
}

/* Hand-made slices: rank r owns [r * 1000, (r + 1) * 1000); each gives its top 16. */
static void merge_hand_made(const float *x, int R, struct sampler_params *p, int32_t *ids, float *vals, int64_t *n,
                            float *lse) {
    int32_t *sid = malloc(1000 * sizeof(int32_t)), *cid = malloc((size_t)R * 16 * sizeof(int32_t));
    float *sv = malloc(1000 * sizeof(float)), *cv = malloc((size_t)R * 16 * sizeof(float));
    int64_t counts[8];
    float lses[8];
    for (int r = 0; r < R; r++) {
        sort_all(x + r * 1000, 1000, r * 1000, sid, sv);
        memcpy(cid + r * 16, sid, 16 * sizeof(int32_t));
        memcpy(cv + r * 16, sv, 16 * sizeof(float));
        counts[r] = 16;
        lses[r] = (float)lse_double(x + r * 1000, 1000);
    }
    p->n_cand = 16;
    cr_assert_eq(sampler_merge(ids, vals, n, lse, cid, cv, counts, lses, R, NULL), 0);
    free(sid);
    free(cid);
    free(sv);
    free(cv);
}

Test(sampler, mass_proofs_extend_the_certified_prefix_but_never_past_a_missing_token) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { R = 4, V = R * 1000 };
    float *x = malloc(V * sizeof(float)), *vals = malloc(V * sizeof(float)), *fv = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t)), *fi = malloc(V * sizeof(int32_t));
    double *q = malloc(V * sizeof(double)), *want = malloc(V * sizeof(double));
    int64_t n, k;
    float lse;

    /* 5 strong tokens per rank, the rest negligible: 20 strong tokens in the list, more than
     * the 16 a rank guarantees, holding all but ~1e-6 of the mass. The 0.95 nucleus has 19. */
    for (int64_t i = 0; i < V; i++) x[i] = -10.0f + 0.1f * tu_normal(&rng);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < 5; i++) x[r * 1000 + 7 * i + 3] = 5.0f + 0.01f * tu_normal(&rng);
    struct sampler_params p = params(1.0f, 0, 0.95f, 0.0f, 1);
    merge_hand_made(x, R, &p, ids, vals, &n, &lse);
    cr_assert_eq(sampler_dist(&p, ids, vals, n, lse, false, &k, q, NULL), 0, "the mass proves the nucleus");
    sort_all(x, V, 0, fi, fv);
    cr_assert_eq(k, ref_dist(&p, fv, V, (double)lse, want));
    cr_assert_eq(k, 19);

    /* Rank 0 has 16 strong tokens and a 17th (unseen: not in its 16) at 5% of the best, ~0.3%
     * of the mass; the other ranks send weak tokens (0.8% of the best). min_p = 0.01 keeps the
     * unseen token, so the candidates cannot decide: refuse, although its mass is small. */
    for (int64_t i = 0; i < V; i++) x[i] = -10.0f + 0.1f * tu_normal(&rng);
    for (int i = 0; i < 16; i++) x[11 * i] = 4.0f + 0.01f * tu_normal(&rng);
    x[11 * 16] = 4.0f + logf(0.05f);
    for (int r = 1; r < R; r++)
        for (int i = 0; i < 16; i++) x[r * 1000 + i] = 4.0f + logf(0.008f) + 0.01f * tu_normal(&rng);
    p = params(1.0f, 0, 1.0f, 0.01f, 1);
    merge_hand_made(x, R, &p, ids, vals, &n, &lse);
    cr_assert_eq(sampler_dist(&p, ids, vals, n, lse, false, &k, q, NULL), 1, "token 17 of rank 0 is unseen");
    free(x);
    free(vals);
    free(fv);
    free(ids);
    free(fi);
    free(q);
    free(want);
}

Test(sampler, incomplete_lists_are_either_exact_or_refused) {
    /* Skewed vocabularies (the best tokens crowd into one rank) must never yield a wrong set. */
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 3000 };
    float *x = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t)), *fids = malloc(V * sizeof(int32_t));
    float *vals = malloc(V * sizeof(float)), *fvals = malloc(V * sizeof(float));
    double *got = malloc(V * sizeof(double)), *want = malloc(V * sizeof(double));
    int exact = 0;
    for (int trial = 0; trial < 300; trial++) {
        random_logits(&rng, x, V, tu_uniform(&rng, 0.2f, 5.0f));
        if (trial % 3 == 0) /* ascending logits: the last rank owns the whole top */
            for (int64_t i = 0; i < V; i++)
                x[i] = (float)i * tu_uniform(&rng, 0.0005f, 0.01f) + 0.01f * tu_normal(&rng);
        struct sampler_params p =
            params(1.0f, (trial % 4 == 0) ? 30 : 0, tu_uniform(&rng, 0.3f, 1.0f), (trial % 5 == 0) ? 0.02f : 0.0f, 1);
        p.n_cand = 16;
        int R = 1 + trial % 4;
        struct ranks r;
        ranks_build(&r, x, V, R, sampler_n_cand(&p), &rng);
        int64_t n, k;
        float lse;
        cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
        int rc = sampler_dist(&p, ids, vals, n, lse, n == V, &k, got, NULL);
        cr_assert_geq(rc, 0);
        if (rc == 0) {
            sort_all(x, V, 0, fids, fvals);
            int64_t rk = ref_dist(&p, fvals, V, (double)lse, want);
            cr_assert_eq(k, rk, "trial %d: kept %lld, reference %lld", trial, (long long)k, (long long)rk);
            cr_assert(memcmp(ids, fids, (size_t)k * sizeof(int32_t)) == 0, "trial %d: other tokens kept", trial);
            for (int64_t i = 0; i < k; i++) cr_assert(fabs(got[i] - want[i]) <= 1e-12);
            exact++;
        }
        ranks_free(&r);
    }
    cr_assert_gt(exact, 30, "most skewed cases are still decidable (%d were)", exact);
    free(x);
    free(ids);
    free(fids);
    free(vals);
    free(fvals);
    free(got);
    free(want);
}

/* Reference penalties: count by brute force over the window, llama.cpp's float formula. */
static void ref_penalize(const struct sampler_params *p, float *x, int64_t V, const int32_t *h, int64_t nh) {
    int64_t w = p->repeat_last_n < 0 ? nh : TP_MIN(nh, (int64_t)p->repeat_last_n);
    for (int64_t t = 0; t < V; t++) {
        int64_t c = 0;
        for (int64_t i = nh - w; i < nh; i++) c += h[i] == t;
        if (c == 0) continue;
        x[t] = x[t] <= 0 ? x[t] * p->repeat_penalty : x[t] / p->repeat_penalty;
        x[t] -= (float)c * p->frequency_penalty + p->presence_penalty;
    }
}

Test(sampler, penalties_match_the_reference_on_every_slice) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 700, H = 2000 };
    float *x = malloc(V * sizeof(float)), *ref = malloc(V * sizeof(float)), *mine = malloc(V * sizeof(float));
    int32_t *h = malloc(H * sizeof(int32_t));
    static const int32_t lastn[] = {-1, 0, 1, 5, 64, 1500};
    for (size_t li = 0; li < TP_ARRAY_LEN(lastn); li++) {
        random_logits(&rng, x, V, 3.0f);
        for (int i = 0; i < H; i++) h[i] = (int32_t)(tu_next(&rng) % (i % 7 ? 40 : V)); /* many repeats */
        struct sampler_params p = params(1.0f, 0, 1.0f, 0.0f, 1);
        p.repeat_penalty = tu_uniform(&rng, 1.05f, 1.5f);
        p.presence_penalty = tu_uniform(&rng, -0.5f, 1.0f);
        p.frequency_penalty = tu_uniform(&rng, 0.0f, 0.3f);
        p.repeat_last_n = lastn[li];
        memcpy(ref, x, V * sizeof(float));
        ref_penalize(&p, ref, V, h, H);
        for (int R = 1; R <= 3; R++) { /* slices [b, e) of R ranks */
            memcpy(mine, x, V * sizeof(float));
            for (int r = 0; r < R; r++) {
                int64_t b = V * r / R, e = V * (r + 1) / R;
                sampler_penalize(&p, mine + b, b, e - b, h, H);
            }
            for (int64_t t = 0; t < V; t++)
                cr_assert(mine[t] == ref[t], "repeat_last_n %d, %d ranks: token %lld: %.9g vs %.9g", lastn[li], R,
                          (long long)t, (double)mine[t], (double)ref[t]);
        }
    }
    free(x);
    free(ref);
    free(mine);
    free(h);
}

Test(sampler, logprobs_are_the_whole_vocabulary_log_probabilities) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    enum { V = 4000, R = 3 };
    float *x = malloc(V * sizeof(float));
    int32_t *ids = malloc(V * sizeof(int32_t));
    float *vals = malloc(V * sizeof(float));
    random_logits(&rng, x, V, 2.0f);
    double lse_ref = lse_double(x, V);
    struct sampler_params p = params(0.8f, 40, 0.95f, 0.05f, 5);
    struct sampler s;
    sampler_init(&s, &p, NULL);
    struct ranks r;
    ranks_build(&r, x, V, R, sampler_n_cand(&p), &rng);
    int64_t n;
    float lse;
    cr_assert_eq(sampler_merge(ids, vals, &n, &lse, r.ids, r.vals, r.counts, r.lses, R, NULL), 0);
    int32_t tok;
    cr_assert_eq(sampler_sample(&s, ids, vals, n, lse, false, &tok, NULL), 0);
    struct sampler_logprob top[5];
    float lp;
    cr_assert_eq(sampler_logprobs(ids, vals, n, lse, tok, 5, top, &lp, NULL), 0);
    cr_assert(fabs(lp - ((double)x[tok] - lse_ref)) < 1e-5, "%g vs %g", (double)lp, (double)x[tok] - lse_ref);
    cr_assert_float_eq(sampler_logprob(&s, vals, ids, n, lse, tok), lp, 0.0f);
    int32_t *fids = malloc(V * sizeof(int32_t));
    float *fvals = malloc(V * sizeof(float));
    sort_all(x, V, 0, fids, fvals);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(top[i].id, fids[i]);
        cr_assert(fabs(top[i].logprob - ((double)fvals[i] - lse_ref)) < 1e-5);
    }
    tp_err e = {0};
    cr_assert_eq(sampler_logprobs(ids, vals, n, lse, -1, 5, top, &lp, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "token -1"), "%s", e.msg);
    cr_assert(isinf(sampler_logprob(&s, vals, ids, n, lse, -1)));
    ranks_free(&r);
    free(x);
    free(ids);
    free(vals);
    free(fids);
    free(fvals);
}

Test(sampler, bad_input_is_refused_with_a_message) {
    int32_t ids[3] = {0, 1, 2};
    float vals[3] = {1.0f, 2.0f, 0.0f};
    struct sampler_params p = params(1.0f, 0, 1.0f, 0.0f, 1);
    int64_t k;
    tp_err e = {0};
    cr_assert_eq(sampler_dist(&p, ids, vals, 3, 3.0f, true, &k, NULL, &e), TP_EINVAL);
    cr_assert(strstr(e.msg, "sorted"), "%s", e.msg);

    float nan_vals[2] = {1.0f, NAN};
    int64_t counts[2] = {1, 1};
    float lses[2] = {1.0f, 1.0f};
    int32_t out_ids[2];
    float out_vals[2], lse;
    int64_t n;
    tp_err e2 = {0};
    cr_assert_eq(sampler_merge(out_ids, out_vals, &n, &lse, ids, nan_vals, counts, lses, 2, &e2), TP_EINVAL);
    cr_assert(strstr(e2.msg, "rank 1") && strstr(e2.msg, "NaN"), "%s", e2.msg);

    /* An empty slice (-inf lse, no candidates) merges fine. */
    float ok_vals[2] = {1.0f, 0.5f};
    int64_t counts2[2] = {2, 0};
    float lses2[2] = {2.0f, -INFINITY};
    cr_assert_eq(sampler_merge(out_ids, out_vals, &n, &lse, ids, ok_vals, counts2, lses2, 2, NULL), 0);
    cr_assert_eq(n, 2);
    cr_assert_float_eq(lse, 2.0f, 1e-6f);
}

struct bad_case {
    const char *field, *flag;
    void (*set)(struct sampler_params *);
};

static void bad_temp(struct sampler_params *p) { p->temperature = -0.5f; }
static void bad_temp_nan(struct sampler_params *p) { p->temperature = NAN; }
static void bad_top_k(struct sampler_params *p) { p->top_k = -1; }
static void bad_top_p(struct sampler_params *p) { p->top_p = 1.5f; }
static void bad_top_p0(struct sampler_params *p) { p->top_p = 0.0f; }
static void bad_min_p(struct sampler_params *p) { p->min_p = -0.1f; }
static void bad_repeat(struct sampler_params *p) { p->repeat_penalty = 0.0f; }
static void bad_last_n(struct sampler_params *p) { p->repeat_last_n = -2; }
static void bad_presence(struct sampler_params *p) { p->presence_penalty = 3.0f; }
static void bad_frequency(struct sampler_params *p) { p->frequency_penalty = -2.5f; }
static void bad_n_cand(struct sampler_params *p) { p->n_cand = 0; }

Test(sampler, invalid_parameters_are_rejected_naming_the_field_and_range) {
    struct sampler_params p;
    sampler_params_default(&p);
    cr_assert_eq(sampler_params_validate(&p, NULL), 0);
    cr_assert_float_eq(p.temperature, 0.8f, 0.0f);
    cr_assert_eq(p.top_k, 40);
    cr_assert_float_eq(p.top_p, 0.95f, 0.0f);
    cr_assert_float_eq(p.min_p, 0.05f, 0.0f);
    cr_assert_float_eq(p.repeat_penalty, 1.0f, 0.0f);
    cr_assert_eq(sampler_n_cand(&p), 64);
    p.top_k = 100;
    cr_assert_eq(sampler_n_cand(&p), 100);

    const struct bad_case cases[] = {
        {"temperature", "--temp", bad_temp},
        {"temperature", "--temp", bad_temp_nan},
        {"top_k", "--top-k", bad_top_k},
        {"top_p", "--top-p", bad_top_p},
        {"top_p", "--top-p", bad_top_p0},
        {"min_p", "--min-p", bad_min_p},
        {"repeat_penalty", "--repeat-penalty", bad_repeat},
        {"repeat_last_n", "--repeat-last-n", bad_last_n},
        {"presence_penalty", "--presence-penalty", bad_presence},
        {"frequency_penalty", "--frequency-penalty", bad_frequency},
        {"n_cand", "candidates", bad_n_cand},
    };
    for (size_t i = 0; i < TP_ARRAY_LEN(cases); i++) {
        sampler_params_default(&p);
        cases[i].set(&p);
        tp_err e = {0};
        cr_assert_eq(sampler_params_validate(&p, &e), TP_EINVAL, "%s", cases[i].field);
        cr_assert(strstr(e.msg, cases[i].field) && strstr(e.msg, cases[i].flag) && strstr(e.msg, "got"),
                  "message for %s: %s", cases[i].field, e.msg);
        struct sampler s;
        cr_assert_eq(sampler_init(&s, &p, NULL), TP_EINVAL);
    }
    sampler_params_default(&p);
    p.top_p = 1.5f;
    tp_err e = {0};
    sampler_params_validate(&p, &e);
    cr_assert(strstr(e.msg, "top_p must be in (0, 1], got 1.5"), "%s", e.msg);
}
