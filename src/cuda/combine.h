/*
 * combine.h: the last stage of a forward (combine.cu) and the plumbing that
 * runs shared experts as dense experts through the same grouped GEMMs
 * (shared.cu).
 */
#ifndef DMOE_CUDA_COMBINE_H
#define DMOE_CUDA_COMBINE_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y (T, H) = sum over k in order of part[slot_of[t*K + k]] (slots < 0 skipped)
 * + sum over s in order of shared_part[s*T + t] (when n_shared > 0). */
dmoe_status dmoe__cuda_combine(dmoe_context *ctx, const void *part, const int32_t *slot_of,
                               int64_t n_tokens, int32_t top_k, const void *shared_part,
                               int32_t n_shared, int64_t hidden, dmoe_dtype dtype, void *y,
                               cudaStream_t stream);

/* The trivial plan of S shared experts over T tokens, seen as a routing with
 * K = S where token t picks expert s as its pair p = t*S + s:
 *   offsets (S+1) = s*T; pairs (S*T): pairs[s*T + t] = t*S + s;
 *   weights (T*S): sigmoid(gate . x[t]) when gate is given, else 1. */
dmoe_status dmoe__cuda_shared_prep(dmoe_context *ctx, const void *x, const void *gate,
                                   int64_t n_tokens, int64_t hidden, int32_t n_shared,
                                   dmoe_dtype dtype, float *weights, int32_t *pairs,
                                   int32_t *offsets, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_COMBINE_H */
