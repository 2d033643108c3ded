/*
 * heuristics.h: every launch-shape decision of the CUDA backend, in one place
 * (heuristics.cu): which grouped GEMM runs for a given (T, H, F, E, K), the
 * token tile of the weight-streaming kernels, the tile of the mma.sync
 * kernels, and the router's split. DMOE_PRINT_CONFIG=1 prints the choices.
 */
#ifndef DMOE_CUDA_HEURISTICS_H
#define DMOE_CUDA_HEURISTICS_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dmoe_cuda_gemm_kind {
    DMOE_CUDA_GEMM_AUTO = 0,
    DMOE_CUDA_GEMM_STREAM = 1, /* weight streaming, swapped mma.sync (decode) */
    DMOE_CUDA_GEMM_MMA = 2,    /* tiled mma.sync with cp.async (general fallback) */
    DMOE_CUDA_GEMM_SM90 = 3,   /* wgmma + TMA (sm90-grouped-gemm.cu), when built */
    DMOE_CUDA_GEMM_SWAP = 4,   /* wgmma + TMA, weights on the M side (few rows per expert) */
} dmoe_cuda_gemm_kind;

typedef struct dmoe_cuda_gemm_choice {
    dmoe_cuda_gemm_kind kind;
    dmoe_cuda_gemm1_fn gemm1;
    dmoe_cuda_gemm2_fn gemm2;
    int32_t tile; /* stream: tokens per pass (8, 16, 32, 64); mma: rows per tile (64, 128);
                     swap: rows per item (16, 32, 64, 128) */
} dmoe_cuda_gemm_choice;

/* DMOE_CUDA_GEMM=auto|stream|mma|sm90|swap (unset = auto). Unknown values and
 * sm90/swap without the sm90 kernels print a warning and give auto. */
dmoe_cuda_gemm_kind dmoe__cuda_gemm_kind_from_env(void);
const char *dmoe__cuda_gemm_kind_name(dmoe_cuda_gemm_kind kind);
/* 1 when the wgmma kernels are compiled in and the device is sm_90. */
int dmoe__cuda_sm90_available(int cc_major, int cc_minor);

/* Largest rows per expert to plan for: a high quantile of a balanced routing,
 * never more than n_tokens (router ids pick an expert at most once a token). */
int64_t dmoe__cuda_rows_estimate(const dmoe_cuda_grouped_args *a);
dmoe_cuda_gemm_choice dmoe__cuda_choose_gemm(dmoe_cuda_gemm_kind forced,
                                             const dmoe_cuda_grouped_args *a, int cc_major,
                                             int cc_minor);
/* Tokens per pass of the streaming kernels (8, 16, 32 or 64). */
int32_t dmoe__cuda_stream_tokens(const dmoe_cuda_grouped_args *a);
/* Row tile of the mma.sync kernels (64 or 128). */
int32_t dmoe__cuda_mma_rows(const dmoe_cuda_grouped_args *a);

typedef struct dmoe_cuda_router_cfg {
    int32_t use_mma;      /* 0: split-k streaming kernel; 1: tiled mma logits (large T) */
    int32_t tok_tiles;    /* streaming: 8-token tiles per pass (1, 2, 4) */
    int32_t k_splits;     /* blocks along H (streaming; mma logits: partial logit sets) */
    int64_t k_chunk;      /* H per split: a multiple of 256 (streaming) or of 32 (mma) */
    int32_t fused;        /* streaming: the last block also routes (and plans) */
    int32_t t_splits;     /* streaming: blocks along T (each takes every t_splits-th pass) */
} dmoe_cuda_router_cfg;

/* Largest T the streaming router takes (above: the mma logits);
 * DMOE_CUDA_ROUTER_STREAM_MAX=N overrides it (development, read once). */
int64_t dmoe__cuda_router_stream_max(void);

dmoe_cuda_router_cfg dmoe__cuda_router_config(int64_t n_tokens, int64_t hidden, int32_t n_experts,
                                              int32_t num_sms);

/* Most k splits of the streaming router (the fused kernel sizes its partial
 * logits for this many, since it routes with the same split). */
#define DMOE_CUDA_ROUTER_MAX_SPLITS 32

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_HEURISTICS_H */
