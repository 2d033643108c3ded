/*
 * check-compare.c: how `dmoe check` compares a backend with cpu-ref.
 *
 * Outputs: every element is compared in float64. Where the reference is not
 * finite (a token whose input holds NaN or inf), the backend must not be
 * finite either; where the reference is finite, a non-finite value (for
 * instance the NaN poison a backend failed to overwrite) is a failure, and
 * finite values add to the max abs and relative L2 errors.
 *
 * Routing near-ties: two experts whose choice values differ by less than the
 * rounding of a float32 router may legitimately swap places between a
 * backend and the float64 reference. token_margins() recomputes one token's
 * routing in float64 from its logits (the rules in dmoe.h) and reports how
 * close the decision was: the gap between the K-th and (K+1)-th choice among
 * the eligible experts, the gap between the last kept and the first dropped
 * group, and the smallest gap inside the top K (which only decides order).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

void cmp_init(cmp_stats *c) {
    memset(c, 0, sizeof *c);
    c->worst_idx = -1;
}

void cmp_add(cmp_stats *c, double ref, double got, int64_t idx) {
    if (!isfinite(ref)) {
        if (isfinite(got)) {
            if (c->n_bad == 0) c->first_bad_idx = idx;
            c->n_bad++;
        }
        return;
    }
    if (!isfinite(got)) {
        if (c->n_bad == 0) c->first_bad_idx = idx;
        c->n_bad++;
        return;
    }
    double d = fabs(got - ref);
    c->err2 += d * d;
    c->ref2 += ref * ref;
    c->n++;
    if (d > c->max_abs || c->worst_idx < 0) {
        c->max_abs = d;
        c->worst_idx = idx;
        c->worst_ref = ref;
        c->worst_got = got;
    }
}

double cmp_rel_l2(const cmp_stats *c) {
    if (c->ref2 > 0.0) return sqrt(c->err2 / c->ref2);
    return sqrt(c->err2); /* all-zero reference: absolute error */
}

int cmp_ok(const cmp_stats *c, double tol) { return c->n_bad == 0 && cmp_rel_l2(c) <= tol; }

void cmp_rows(cmp_stats *c, const void *ref, const void *got, dmoe_dtype dt, int64_t cols,
              const unsigned char *row_mask, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        if (row_mask && !row_mask[r]) continue;
        for (int64_t i = 0; i < cols; i++) {
            const int64_t idx = r * cols + i;
            cmp_add(c, cli_load(ref, dt, idx), cli_load(got, dt, idx), idx);
        }
    }
}

void cmp_print_failure(const char *what, const cmp_stats *c, int64_t cols, double tol) {
    if (c->n_bad)
        printf("    %s: %lld non-finite or unwritten values where the reference is finite (or the "
               "reverse); first at token %lld, column %lld\n",
               what, (long long)c->n_bad, (long long)(c->first_bad_idx / cols),
               (long long)(c->first_bad_idx % cols));
    if (c->worst_idx >= 0 && cmp_rel_l2(c) > tol)
        printf("    %s: rel L2 %.3e > %.1e; worst at token %lld, column %lld: ref %.6g got %.6g\n",
               what, cmp_rel_l2(c), tol, (long long)(c->worst_idx / cols),
               (long long)(c->worst_idx % cols), c->worst_ref, c->worst_got);
}

/* ---- routing margins ---- */

typedef struct ranked {
    double v;
    int32_t idx;
} ranked;

/* Higher value first, ties to the lower index: the order of dmoe.h. */
static int ranked_cmp(const void *pa, const void *pb) {
    const ranked *a = (const ranked *)pa, *b = (const ranked *)pb;
    if (a->v > b->v) return -1;
    if (a->v < b->v) return 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static double sanitize(double v) {
    if (isnan(v)) return -FLT_MAX;
    if (v > FLT_MAX) return FLT_MAX;
    if (v < -FLT_MAX) return -FLT_MAX;
    return v;
}

void token_margins(const cli_shape *s, const double *logits, const float *bias, double *set_margin,
                   double *order_margin) {
    const int32_t E = s->n_experts, K = s->top_k;
    ranked *r = (ranked *)malloc(sizeof(ranked) * (size_t)E * 2);
    double *choice = (double *)malloc(sizeof(double) * (size_t)E);
    if (!r || !choice) {
        fprintf(stderr, "dmoe check: out of memory\n");
        exit(1);
    }
    double mx = -DBL_MAX, sum = 0.0;
    for (int32_t e = 0; e < E; e++) mx = fmax(mx, sanitize(logits[e]));
    for (int32_t e = 0; e < E; e++) {
        double l = sanitize(logits[e]);
        if (s->scoring == DMOE_SCORING_SOFTMAX) {
            choice[e] = exp(l - mx);
            sum += choice[e];
        } else {
            choice[e] = 1.0 / (1.0 + exp(-l));
        }
    }
    for (int32_t e = 0; e < E; e++) {
        if (s->scoring == DMOE_SCORING_SOFTMAX) choice[e] /= sum;
        if (bias) choice[e] += (double)bias[e];
    }

    double group_margin = INFINITY;
    ranked *groups = r + E;
    int32_t n_elig = 0;
    if (s->n_group > 1) {
        const int32_t G = s->n_group, per = E / G;
        for (int32_t g = 0; g < G; g++) {
            double b1 = -INFINITY, b2 = -INFINITY;
            for (int32_t i = 0; i < per; i++) {
                double v = choice[g * per + i];
                if (v > b1) {
                    b2 = b1;
                    b1 = v;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            groups[g].v = per >= 2 ? b1 + b2 : b1;
            groups[g].idx = g;
        }
        qsort(groups, (size_t)G, sizeof *groups, ranked_cmp);
        if (s->topk_group < G) group_margin = groups[s->topk_group - 1].v - groups[s->topk_group].v;
        for (int32_t j = 0; j < s->topk_group; j++)
            for (int32_t i = 0; i < per; i++) {
                int32_t e = groups[j].idx * per + i;
                r[n_elig++] = (ranked){choice[e], e};
            }
    } else {
        for (int32_t e = 0; e < E; e++) r[n_elig++] = (ranked){choice[e], e};
    }
    qsort(r, (size_t)n_elig, sizeof *r, ranked_cmp);
    double boundary = n_elig > K ? r[K - 1].v - r[K].v : INFINITY;
    double inside = INFINITY;
    for (int32_t j = 0; j + 1 < K; j++) inside = fmin(inside, r[j].v - r[j + 1].v);
    *set_margin = fmin(boundary, group_margin);
    *order_margin = inside;
    free(r);
    free(choice);
}
