/*
 * gemm.h: the grouped GEMMs of this backend, each implementing the contract
 * of cuda-ops.h (dmoe_cuda_gemm1_fn / dmoe_cuda_gemm2_fn):
 *   gemm-stream.cu  weight streaming for few rows per expert (decode)
 *   gemm-mma.cu     tiled mma.sync for any size (the general fallback), and the
 *                   router's logits GEMM for large T.
 */
#ifndef DMOE_CUDA_GEMM_H
#define DMOE_CUDA_GEMM_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

dmoe_status dmoe__cuda_gemm1_stream(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                    const void *x, const void *w13, void *act, cudaStream_t stream);
dmoe_status dmoe__cuda_gemm2_stream(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                    const void *act, const void *w2, const float *topk_w,
                                    void *part, cudaStream_t stream);

dmoe_status dmoe__cuda_gemm1_mma(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                 const void *x, const void *w13, void *act, cudaStream_t stream);
dmoe_status dmoe__cuda_gemm2_mma(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                 const void *act, const void *w2, const float *topk_w, void *part,
                                 cudaStream_t stream);

/* logits (T, E) float32 = x (T, H) . router (E, H)^T, fp32 accumulation, split
 * along H into k_splits partial sets of k_chunk columns (a multiple of 32):
 * set s, over columns [s*k_chunk, (s+1)*k_chunk), goes to logits + s*T*E. */
dmoe_status dmoe__cuda_logits_mma(dmoe_context *ctx, const void *x, const void *router,
                                  int64_t n_tokens, int64_t hidden, int32_t n_experts,
                                  int32_t k_splits, int64_t k_chunk, dmoe_dtype dtype,
                                  float *logits, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_GEMM_H */
