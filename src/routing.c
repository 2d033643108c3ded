/*
 * routing.c: the router's scoring and top-k selection for one token, on the
 * host, in float64. Used by both CPU backends and as the oracle in tests.
 *
 * logits (E) -> scores (softmax or sigmoid) -> choice = scores + bias
 *   -> [grouped: keep the topk_group groups with the best sum of top-2 choices]
 *   -> top-k over choice, ties to the lower index
 *   -> weights = scores at the picked experts -> [renormalize] -> * scaling
 * The rules are stated once, in dmoe.h; this file is their only host copy.
 */
#include <float.h>

#include "dmoe-impl.h"

double dmoe__sanitize_logit(double v) {
    if (isnan(v)) return -FLT_MAX;
    if (v > FLT_MAX) return FLT_MAX;
    if (v < -FLT_MAX) return -FLT_MAX;
    return v;
}

size_t dmoe__route_scratch_bytes(int32_t n_experts) {
    return (size_t)n_experts * (3 * sizeof(double) + sizeof(int32_t));
}

/* Is candidate (value a, index ia) ranked before (b, ib)? Higher value first,
 * then the lower index. -inf (masked) values are never better than anything
 * unmasked because masked entries are skipped by the callers. */
static inline int ranks_before(double a, int32_t ia, double b, int32_t ib) {
    return a > b || (a == b && ia < ib);
}

/* Selects the k best of values[0..n) (skipping those with keep[i] == 0 when
 * keep is given) into out[0..k) in rank order. O(n*k), fine for k <= n <= 4096
 * per token on the reference path; the fast path has its own selection. */
static void select_topk(const double *values, const int32_t *keep, int32_t n, int32_t k,
                        int32_t *out) {
    int32_t filled = 0;
    for (int32_t i = 0; i < n; i++) {
        if (keep && !keep[i]) continue;
        /* insertion into the sorted out[0..filled) */
        int32_t pos = filled < k ? filled : k;
        while (pos > 0 && ranks_before(values[i], i, values[out[pos - 1]], out[pos - 1])) pos--;
        if (pos >= k) continue;
        int32_t last = filled < k ? filled : k - 1;
        for (int32_t j = last; j > pos; j--) out[j] = out[j - 1];
        out[pos] = i;
        if (filled < k) filled++;
    }
    DMOE_ASSERT(filled == k);
}

void dmoe__route_token(const dmoe_routing_desc *r, int32_t n_experts, int32_t top_k,
                       const double *logits, const float *correction_bias, void *scratch,
                       int32_t *ids_out, float *weights_out) {
    const int32_t E = n_experts;
    double *scores = (double *)scratch;     /* (E) */
    double *choice = scores + E;            /* (E) */
    double *group_score = choice + E;       /* (n_group) <= E */
    int32_t *keep = (int32_t *)(group_score + E); /* (E) */

    if (r->scoring == DMOE_SCORING_SOFTMAX) {
        double mx = -DBL_MAX;
        for (int32_t e = 0; e < E; e++) {
            scores[e] = dmoe__sanitize_logit(logits[e]);
            if (scores[e] > mx) mx = scores[e];
        }
        double sum = 0.0;
        for (int32_t e = 0; e < E; e++) {
            scores[e] = exp(scores[e] - mx);
            sum += scores[e];
        }
        for (int32_t e = 0; e < E; e++) scores[e] /= sum;
    } else {
        for (int32_t e = 0; e < E; e++)
            scores[e] = 1.0 / (1.0 + exp(-dmoe__sanitize_logit(logits[e])));
    }
    for (int32_t e = 0; e < E; e++)
        choice[e] = scores[e] + (r->use_correction_bias ? dmoe__sanitize_logit((double)correction_bias[e]) : 0.0);

    const int32_t *mask = NULL;
    if (r->n_group > 1) {
        const int32_t G = r->n_group, per = E / G;
        for (int32_t g = 0; g < G; g++) {
            int32_t best[2];
            int32_t take = per < 2 ? per : 2;
            select_topk(choice + (size_t)g * per, NULL, per, take, best);
            double s = 0.0;
            for (int32_t j = 0; j < take; j++) s += choice[(size_t)g * per + best[j]];
            group_score[g] = s;
        }
        int32_t *groups = keep; /* reuse keep as scratch for the chosen group ids */
        select_topk(group_score, NULL, G, r->topk_group, groups);
        /* Mark the experts of the kept groups; build the mask after reading groups. */
        int32_t kept_groups[DMOE_MAX_EXPERTS];
        for (int32_t j = 0; j < r->topk_group; j++) kept_groups[j] = groups[j];
        for (int32_t e = 0; e < E; e++) keep[e] = 0;
        for (int32_t j = 0; j < r->topk_group; j++)
            for (int32_t i = 0; i < per; i++) keep[kept_groups[j] * per + i] = 1;
        mask = keep;
    }
    select_topk(choice, mask, E, top_k, ids_out);

    double sum = 0.0;
    for (int32_t k = 0; k < top_k; k++) sum += scores[ids_out[k]];
    for (int32_t k = 0; k < top_k; k++) {
        double w = scores[ids_out[k]];
        if (r->renormalize && sum > 0.0) w /= sum;
        weights_out[k] = (float)(w * (double)r->routed_scaling_factor);
    }
}
