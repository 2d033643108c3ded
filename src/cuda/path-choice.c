/*
 * path-choice.c: staged or fused, per (T, H, F, E, K, S).
 *
 * Measured on the H100 (bench/gpu_bench.py, graph-replayed, L2 flushed by a
 * 256 MB write, both paths in the same run; bench/RESULTS.md, 2026-12-06,
 * session 10 runs 3 and 5: the staged path with PDL through its swap-AB
 * GEMMs), staged / fused us:
 *                   T=1            T=2           T=4            T=8             T=16
 *   qwen3-30b-a3b    55.5 /  50.1   75.5 /  73.1  120.5 / 119.6   187.5 /  193.3  270.7 /  293.2
 *   olmoe-1b-7b      61.4 /  57.3   87.3 /  86.5  132.4 / 132.4   198.7 /  204.4  267.1 /  280.4
 *   mixtral-8x7b    276.4 / 258.3        -        708.1 / 705.9        -         915.8 /  933.9
 *   deepseek-v3     254.9 / 251.5        -        910.6 / 913.4        -        2845.0 / 2868.8
 * (qwen3 and olmoe T=1 from run 3, before that change, which does not touch
 * T=1 (streaming GEMMs there); T=2 and 4 from run 7, the rest from run 5.)
 * Session 6 (2026-11-24, device run 19), T=2 / T=3: mixtral 432.0 / 381.6
 * and 494.2 / 496.8, deepseek 503.3 / 497.4 and 697.8 / 696.9.
 * The fused kernel saves the staged path's launches and hand-offs (a fixed
 * gain, largest at T=1), but plans inside every block with a serial top-k
 * chain per token (a cost that grows with T): it wins at T = 1..4 on every
 * preset (ties within 0.5% on mixtral T=3, mixtral / deepseek / olmoe T=4,
 * qwen3 T=4 and olmoe T=2 within 1%: deepseek T=4 staged 0.3% ahead in run
 * 5, fused 0.1% ahead in session 6) and loses from T=8 (where the staged
 * swap-AB wgmma GEMMs stream better). So AUTO runs fused for
 * T <= FUSED_AUTO_MAX_T on layers with enough weights per token
 * (>= FUSED_MIN_BYTES_PER_TOKEN: E * (1 - (1 - K/E)^T) distinct experts under
 * uniform routing times one expert's bytes, plus the shared experts, over T;
 * 72-352 MiB per token on the presets at T=1), and staged everywhere else.
 * Shapes beyond the presets (session 11, gpu_bench.py --shapes, staged /
 * fused graph us at T=1 and 4; MiB per token in brackets): granite-3b-like
 * H=1536 F=512 E=40 K=8 37.4 / 37.8 [36] and 61.8 / 63.4 [26.5], odd-small
 * H=1000 F=200 E=60 K=6 25.6 / 27.1 [2.2] and 34.9 / 36.2; but qwen3-next-like
 * H=2048 F=512 E=512 K=10 53.4 / 51.1 [60] and 123.4 / 122.2 [58],
 * deepseek-v2-lite-like H=2048 F=1408 E=64 K=6 63.0 / 58.0 [99] and
 * 150.4 / 141.2 [86], gpt-oss-20b-like, qwen2-57b-like and phi-3.5-moe-like
 * layers 7-14% faster fused at T=1 and 2-10% at T=4: so the threshold sits
 * at 48 MiB, between 36 and 58. (At T=16 the fused kernel also won on
 * gpt-oss-20b-like 490.7 / 516.7, deepseek-v2-lite-like 323.0 / 332.7 and
 * phi-3.5-moe-like 786.5 / 798.8 and lost on the others; no rule here
 * predicts which, so T > 4 stays staged.)
 * DMOE_PRINT_CONFIG=1 prints the decision with its numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "path-choice.h"

#define FUSED_AUTO_MAX_T 4
#define FUSED_MIN_BYTES_PER_TOKEN (48.0 * 1024 * 1024)

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
    if (T > FUSED_AUTO_MAX_T) {
        snprintf(why, why_len, "staged: auto, T=%lld > %d (the fused kernel wins only at the smallest T)",
                 (long long)T, FUSED_AUTO_MAX_T);
        return DMOE_PATH_STAGED;
    }
    const double bpt = bytes_per_token(d, T);
    const dmoe_path p = bpt >= FUSED_MIN_BYTES_PER_TOKEN ? DMOE_PATH_FUSED : DMOE_PATH_STAGED;
    snprintf(why, why_len, "%s: auto, T=%lld <= %d and ~%.0f MiB of weights per token %s %.0f MiB (path-choice.c)",
             dmoe_path_name(p), (long long)T, FUSED_AUTO_MAX_T, bpt / 1048576.0,
             p == DMOE_PATH_FUSED ? ">=" : "<", FUSED_MIN_BYTES_PER_TOKEN / 1048576.0);
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
