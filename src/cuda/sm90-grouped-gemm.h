/*
 * sm90-grouped-gemm.h: the Hopper (sm_90a) grouped GEMMs of the staged path:
 * 128x256 tiles for many rows per expert (prefill), and the swap-AB kernels
 * (weights on the M side) for few rows per expert. They implement the typedefs
 * dmoe_cuda_gemm1_fn and dmoe_cuda_gemm2_fn of cuda-ops.h; see
 * sm90-grouped-gemm.cu for the algorithm.
 *
 * Requirements beyond cuda-ops.h (a violation returns a status and launches
 * nothing): dtype bf16 or f16 (DMOE_ERR_UNSUPPORTED_DTYPE); k_dim and n_dim
 * positive multiples of 8, E * (rows of w13[e] or w2[e]) < 2^31
 * (DMOE_ERR_INVALID_ARGUMENT); x/act/w13/w2/part 16-byte aligned
 * (DMOE_ERR_MISALIGNED); the current device of compute capability 9.0, since
 * the kernels are built for sm_90a only (DMOE_ERR_UNSUPPORTED).
 * Both launch a persistent grid of a->num_sms CTAs (queried when <= 0) with
 * ~200 KB of shared memory each, and never synchronise with the host.
 * DMOE_PRINT_CONFIG=1 prints the tile configuration of every launch.
 */
#ifndef DMOE_CUDA_SM90_GROUPED_GEMM_H
#define DMOE_CUDA_SM90_GROUPED_GEMM_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* act (n_rows, F) = silu(x[t] . w13[e, f]) * (x[t] . w13[e, F + f]), t = pairs[s] / top_k.
 *   x    (T, H)       w13 (E, 2F, H)       act (n_rows, F)      a->k_dim = H, a->n_dim = F */
dmoe_status dmoe__cuda_gemm1_sm90(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                  const void *x, const void *w13, void *act,
                                  cudaStream_t stream);

/* part (n_rows, H) = topk_w[pairs[s]] * act[s] . w2[e, h].
 *   act  (n_rows, F)  w2 (E, H, F)  topk_w (T*K)  part (n_rows, H)  a->k_dim = F, a->n_dim = H */
dmoe_status dmoe__cuda_gemm2_sm90(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                  const void *act, const void *w2, const float *topk_w,
                                  void *part, cudaStream_t stream);

/* The same two GEMMs with the weights on the wgmma M side ("swap-AB"), for
 * few rows per expert (32..128): an item is (expert, chunk of `tokens` rows,
 * 256 weight rows), tokens = 16, 32, 64 or 128 (compile-time instances); the
 * weights of an expert are read once per chunk. The _n forms take the chunk;
 * the plain forms ask dmoe__cuda_swap_tokens (heuristics.cu).
 * Launched with programmatic dependent launch where the context allows it:
 * GEMM1 waits for the previous kernel before it reads anything; GEMM2 reads
 * offsets, pairs and topk_w BEFORE its wait (only act after it), so it must
 * follow a GEMM1 that waited for the kernels writing those (as run_experts
 * does), never directly the kernel that writes them. */
dmoe_status dmoe__cuda_gemm1_sm90_swap_n(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                         int tokens, const void *x, const void *w13, void *act,
                                         cudaStream_t stream);
dmoe_status dmoe__cuda_gemm2_sm90_swap_n(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                         int tokens, const void *act, const void *w2,
                                         const float *topk_w, void *part, cudaStream_t stream);
dmoe_status dmoe__cuda_gemm1_sm90_swap(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                       const void *x, const void *w13, void *act,
                                       cudaStream_t stream);
dmoe_status dmoe__cuda_gemm2_sm90_swap(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                       const void *act, const void *w2, const float *topk_w,
                                       void *part, cudaStream_t stream);
/* The swap kernels with 64 rows an item whatever the rows (heuristics.cu's
 * choice above 64 rows an expert where the 128x256 tiles fill waves badly). */
dmoe_status dmoe__cuda_gemm1_sm90_swap64(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                         const void *x, const void *w13, void *act,
                                         cudaStream_t stream);
dmoe_status dmoe__cuda_gemm2_sm90_swap64(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                         const void *act, const void *w2, const float *topk_w,
                                         void *part, cudaStream_t stream);
/* Rows per item of the swap kernels for this launch (heuristics.cu). */
int32_t dmoe__cuda_swap_tokens(const dmoe_cuda_grouped_args *a);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_SM90_GROUPED_GEMM_H */
