/*
 * router.h: the device router (see router.cu): gating GEMM, scoring, grouped
 * top-k, renormalisation and scaling, following the rules in dmoe.h.
 */
#ifndef DMOE_CUDA_ROUTER_H
#define DMOE_CUDA_ROUTER_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmoe_cuda_router_args {
    const void *x;            /* (T, H) */
    const void *weight;       /* (E, H) router */
    const float *bias;        /* (E) correction bias, or NULL */
    int64_t n_tokens;         /* T */
    int64_t hidden;           /* H */
    int32_t n_experts;        /* E */
    int32_t top_k;            /* K */
    dmoe_routing_desc routing;
    dmoe_dtype dtype;
    float *logits_ws;         /* dmoe__cuda_router_ws_floats() floats */
    unsigned *counter;        /* one unsigned, zero between calls */
    int32_t *topk_ids;        /* (T, K) out */
    float *topk_w;            /* (T, K) out */
    /* Optional: when set and the router runs its fused small-T path, it also
     * writes the plan (see plan.h); *plan_done then says so. */
    int32_t *counts, *offsets, *pairs, *slot_of;
} dmoe_cuda_router_args;

/* Floats of logits workspace for any T <= max_tokens. */
size_t dmoe__cuda_router_ws_floats(int64_t max_tokens, int64_t hidden, int32_t n_experts,
                                   int32_t num_sms);

dmoe_status dmoe__cuda_router(dmoe_context *ctx, const dmoe_cuda_router_args *a, int *plan_done,
                              cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_ROUTER_H */
