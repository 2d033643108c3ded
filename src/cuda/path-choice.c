/*
 * path-choice.c: staged or fused, per (T, H, F, E, K, S).
 *
 * What the two paths cost, from the H100 measurements (graph-replayed, L2
 * flushed; bench/fused-notes.md versions 05, bench/RESULTS.md):
 *  - the fused kernel streams the experts' weights at 0.89-1.00 of the copy
 *    bandwidth, the staged kernels at ~0.85-0.92: a gain proportional to the
 *    bytes of the experts the batch hits;
 *  - the fused kernel plans inside every block, and its top-k is a serial
 *    chain per token (~1-4 us per token): a cost proportional to T.
 *  So the fused kernel wins where the expert bytes per token are large:
 *    mixtral-8x7b  T=1 267 vs 290 us, T=16 972 vs 1035 (176 MB/token at T=16)
 *    deepseek-v3   T=1 273 vs 302 us, T=16 2891 vs 3188 (300 MB/token)
 *    qwen3-30b-a3b T=1 55.3 vs 56.2 us (75 MB/token), T=16 325.5 vs 309.5 (49 MB/token)
 *    olmoe-1b-7b   T=1 62.6 vs 64.3 us (100 MB/token), T=16 305.3 vs 297.4 (43 MB/token)
 *  and the rule is: fused when T <= DMOE_FUSED_MAX_TOKENS and the expected
 *  bytes of weights per token are at least FUSED_MIN_BYTES_PER_TOKEN, where the
 *  expected bytes are E * (1 - (1 - K/E)^T) distinct routed experts (uniform
 *  routing) times one expert's bytes, plus the shared experts. The threshold
 *  sits between the losing (<= 49 MB) and the winning (>= 75 MB) cells.
 * DMOE_PRINT_CONFIG=1 prints the decision with its numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "path-choice.h"

#define FUSED_MIN_BYTES_PER_TOKEN (64.0 * 1024 * 1024)

/* Expected bytes of weights a forward of T tokens reads per token. */
static double bytes_per_token(const dmoe_layer_desc *d, int64_t T) {
    const double es = (double)dmoe_dtype_size(d->weight_dtype);
    const double E = (double)d->n_experts, K = (double)d->top_k;
    const double hit = E * (1.0 - pow(1.0 - K / E, (double)T));
    const double expert = 3.0 * (double)d->hidden * (double)d->ffn * es;
    const double shared = d->n_shared_experts > 0
                              ? (double)d->n_shared_experts * 3.0 * (double)d->hidden * (double)d->shared_ffn * es
                              : 0.0;
    return (hit * expert + shared) / (double)T;
}

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
    if (T > DMOE_FUSED_MAX_TOKENS) {
        snprintf(why, why_len, "staged: auto, T=%lld > %d (the fused kernel's limit)", (long long)T,
                 DMOE_FUSED_MAX_TOKENS);
        return DMOE_PATH_STAGED;
    }
    const double bpt = bytes_per_token(d, T);
    const dmoe_path p = bpt >= FUSED_MIN_BYTES_PER_TOKEN ? DMOE_PATH_FUSED : DMOE_PATH_STAGED;
    snprintf(why, why_len, "%s: auto, ~%.0f MB of weights per token %s %.0f MB (path-choice.c)",
             dmoe_path_name(p), bpt / 1048576.0, p == DMOE_PATH_FUSED ? ">=" : "<",
             FUSED_MIN_BYTES_PER_TOKEN / 1048576.0);
    return p;
}

int dmoe__cuda_path_may_fuse(const dmoe_layer_desc *d, dmoe_path request) {
    if (request == DMOE_PATH_STAGED) return 0;
    if (request == DMOE_PATH_FUSED) return 1;
    const int64_t tmax = d->max_tokens < DMOE_FUSED_MAX_TOKENS ? d->max_tokens : DMOE_FUSED_MAX_TOKENS;
    for (int64_t T = 1; T <= tmax; T++)
        if (dmoe__cuda_choose_path(d, request, T, NULL, 0) == DMOE_PATH_FUSED) return 1;
    return 0;
}
