/*
 * path-choice.c: staged or fused, per (T, H, F, E, K, S).
 *
 * AUTO picks the fused persistent kernel only where a measurement showed it
 * faster than the staged kernels; everywhere else the staged path (it covers
 * every T and was within a few percent at decode, bench/fused-notes.md). The
 * rule is the table below: a row matches a layer when every nonzero shape
 * field equals the layer's and T lies in [t_min, t_max]. Retune it by editing
 * rows (with the measurement in the note); nothing else needs to change.
 * DMOE_PRINT_CONFIG=1 prints the decision and the row's note.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "path-choice.h"

typedef struct path_rule {
    int64_t hidden, ffn;      /* 0 = any */
    int32_t n_experts, top_k; /* 0 = any */
    int32_t n_shared;         /* -1 = any */
    int64_t t_min, t_max;     /* tokens, inclusive */
    dmoe_path path;
    const char *note;         /* the measurement behind the row */
} path_rule;

static const path_rule RULES[] = {
    /* deepseek-v3 layer (H=7168 F=2048 E=256 K=8, 1 shared expert): fused 298.7 us vs staged
     * 303.9 at T=1 and 3155 vs 3415 us (8% faster) at T=16, graph-replayed, H100,
     * bench/fused-notes.md 2026-11-23. T between 1 and 16 assumed alike; above 16 unmeasured. */
    {7168, 2048, 256, 8, 1, 1, 16, DMOE_PATH_FUSED,
     "deepseek-v3 shape: fused measured 2-8% faster at T=1,16 (bench/fused-notes.md)"},
};

int dmoe__cuda_path_request(const dmoe_layer_desc *d, dmoe_path *out) {
    const char *env = getenv("DMOE_PATH");
    if (env && *env) {
        if (strcmp(env, "staged") == 0) *out = DMOE_PATH_STAGED;
        else if (strcmp(env, "fused") == 0) *out = DMOE_PATH_FUSED;
        else if (strcmp(env, "auto") == 0) *out = DMOE_PATH_AUTO;
        else return -1;
        return 0;
    }
    *out = d->path;
    return 0;
}

static const path_rule *find_rule(const dmoe_layer_desc *d, int64_t T) {
    const int32_t S = d->n_shared_experts;
    for (size_t i = 0; i < sizeof RULES / sizeof RULES[0]; i++) {
        const path_rule *r = &RULES[i];
        if ((r->hidden && r->hidden != d->hidden) || (r->ffn && r->ffn != d->ffn) ||
            (r->n_experts && r->n_experts != d->n_experts) || (r->top_k && r->top_k != d->top_k) ||
            (r->n_shared >= 0 && r->n_shared != S) || T < r->t_min || T > r->t_max)
            continue;
        return r;
    }
    return NULL;
}

dmoe_path dmoe__cuda_choose_path(const dmoe_layer_desc *d, dmoe_path request, int64_t T, char *why,
                                 size_t why_len) {
    char dummy[256];
    if (!why) {
        why = dummy;
        why_len = sizeof dummy;
    }
    const char *src = getenv("DMOE_PATH") && *getenv("DMOE_PATH") ? "DMOE_PATH" : "desc.path";
    if (request == DMOE_PATH_STAGED) {
        snprintf(why, why_len, "staged: %s=staged", src);
        return DMOE_PATH_STAGED;
    }
    if (request == DMOE_PATH_FUSED) {
        if (T > DMOE_FUSED_MAX_TOKENS) {
            snprintf(why, why_len, "staged: %s=fused, but T=%lld > %d (the fused kernel's limit)", src,
                     (long long)T, DMOE_FUSED_MAX_TOKENS);
            return DMOE_PATH_STAGED;
        }
        snprintf(why, why_len, "fused: %s=fused", src);
        return DMOE_PATH_FUSED;
    }
    if (T <= DMOE_FUSED_MAX_TOKENS) {
        const path_rule *r = find_rule(d, T);
        if (r) {
            snprintf(why, why_len, "%s: auto, rule: %s", dmoe_path_name(r->path), r->note);
            return r->path;
        }
    }
    snprintf(why, why_len, "staged: auto, no measured fused win for this shape at T=%lld", (long long)T);
    return DMOE_PATH_STAGED;
}

int dmoe__cuda_path_may_fuse(const dmoe_layer_desc *d, dmoe_path request) {
    if (request == DMOE_PATH_STAGED) return 0;
    if (request == DMOE_PATH_FUSED) return 1;
    const int64_t tmax = d->max_tokens < DMOE_FUSED_MAX_TOKENS ? d->max_tokens : DMOE_FUSED_MAX_TOKENS;
    for (int64_t T = 1; T <= tmax; T++)
        if (dmoe__cuda_choose_path(d, request, T, NULL, 0) == DMOE_PATH_FUSED) return 1;
    return 0;
}
