/*
 * fused-moe.h: the fused persistent MoE kernel (FlashDMoE design) for few
 * tokens per expert: router, plan, GEMM1+SwiGLU, GEMM2 and combine in ONE
 * launch, with counters instead of grid-wide barriers. See fused-moe.cu.
 */
#ifndef DMOE_CUDA_FUSED_MOE_H
#define DMOE_CUDA_FUSED_MOE_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Everything one fused forward reads and writes. Pointers are device memory. */
typedef struct dmoe_fused_args {
    /* problem */
    int32_t n_tokens, hidden, ffn, n_experts, top_k;
    int32_t n_shared, shared_ffn, shared_gate; /* shared_gate: 1 = sigmoid(gate . x) */
    int32_t scoring, renormalize, n_group, topk_group, use_bias;
    float scale;
    int32_t route_from_ids; /* 1: topk_ids/topk_w are inputs (dmoe_experts), skip the router */
    int32_t is_bf16;        /* 1: bf16 tensors, 0: f16 */
    int32_t route_kchunk;   /* router columns per k split, the staged router's (dmoe__cuda_router_config),
                               so dmoe_route and the fused forward route bitwise alike; 0: filled in
                               by dmoe__fused_forward (a kernel calling fused_body must set it) */
    /* inputs (bf16 or f16) */
    const void *x;            /* (T, H) */
    const void *router;       /* (E, H) */
    const float *bias;        /* (E) or NULL */
    const void *w13;          /* (E, 2F, H) */
    const void *w2;           /* (E, H, F) */
    const void *shared_w13;   /* (S, 2Fs, H) */
    const void *shared_w2;    /* (S, H, Fs) */
    const void *shared_gate_w;/* (1, H) */
    /* outputs */
    void *y;                  /* (T, H) */
    int32_t *topk_ids;        /* (T, K) written by the router (read when route_from_ids) */
    float *topk_w;            /* (T, K) */
    /* workspace, sized by dmoe__fused_workspace_bytes for max_tokens */
    void *ws;
} dmoe_fused_args;

/* Bytes of workspace for a layer (zeroed once with cudaMemset at creation:
 * the kernel leaves its counters at zero when it finishes). */
size_t dmoe__fused_workspace_bytes(int64_t max_tokens, int32_t hidden, int32_t ffn, int32_t shared_ffn,
                                   int32_t n_experts, int32_t top_k, int32_t n_shared);

/* Dynamic shared memory of one block of the fused kernel (fused_body's smem) for
 * forwards of up to max_tokens tokens. */
size_t dmoe__fused_smem_bytes(int32_t max_tokens, int32_t n_experts, int32_t top_k, int32_t n_shared);
/* Whether the fused workspace holds the partial logits of a router split of kchunk columns at hidden
 * size H (it is sized for the streaming router's splits). */
int dmoe__fused_kchunk_fits(int32_t H, int32_t kchunk);
/* The most dynamic shared memory a block of the fused kernel may have on device
 * (the opt-in maximum minus its static shared memory); 0 if it cannot be read. */
size_t dmoe__fused_smem_limit(int32_t device);

/* Launches the fused forward on stream (cooperative launch: every block resident). */
dmoe_status dmoe__fused_forward(dmoe_context *ctx, const dmoe_fused_args *a, int32_t num_sms,
                                cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_FUSED_MOE_H */
