/*
 * plan.h: the device plan (see plan.cu): counts, offsets, pairs, slot_of from
 * topk_ids, stable, on the caller's stream.
 */
#ifndef DMOE_CUDA_PLAN_H
#define DMOE_CUDA_PLAN_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Pairs up to which one block builds the whole plan in one launch. */
#define DMOE_CUDA_PLAN_SMALL 2048

/* Which plan dmoe__cuda_plan runs for n_pairs ("table, 1 block", "1 block", "3 kernels"). */
const char *dmoe__cuda_plan_kind(dmoe_context *ctx, int64_t n_pairs, int32_t n_experts);

/* int32 workspace (hist) the plan needs for up to max_pairs pairs. */
size_t dmoe__cuda_plan_ws_ints(int64_t max_pairs, int32_t n_experts);

/* topk_ids (n_pairs) -> counts (E), offsets (E+1), pairs (n_pairs), slot_of
 * (n_pairs; -1 for ids outside [0, E)). n_pairs in [1, 2^30], E in [1, 1024]. */
dmoe_status dmoe__cuda_plan(dmoe_context *ctx, const int32_t *topk_ids, int64_t n_pairs,
                            int32_t n_experts, int32_t *counts, int32_t *offsets, int32_t *pairs,
                            int32_t *slot_of, int32_t *ws, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_PLAN_H */
