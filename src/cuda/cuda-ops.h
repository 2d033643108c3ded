/*
 * cuda-ops.h: the contract between the CUDA backend (cuda-backend.cu, which
 * owns workspace, streams and the order of ops) and the individual ops, one
 * .cu file each. Everything here is launched on the caller's stream, never
 * synchronises with the host and never allocates.
 *
 * Data of one staged forward, all on the device (T tokens, K = top_k):
 *   x          (T, H)      act dtype (bf16 or f16; weights have the same dtype)
 *   topk_ids   (T, K)      int32     from the router (or the caller)
 *   topk_w     (T, K)      float32
 *   counts     (E)         int32     pairs per expert
 *   offsets    (E+1)       int32     prefix sums of counts
 *   pairs      (T*K)       int32     slot -> pair index p = t*K + k, sorted by (expert, p)
 *   slot_of    (T*K)       int32     pair index -> slot
 *   act        (T*K, F)    act dtype row s = silu(x[t] . W1_e) * (x[t] . W3_e), t = pairs[s] / K
 *   part       (T*K, H)    act dtype row s = topk_w[pairs[s]] * (act[s] . W2_e)
 *   y          (T, H)      act dtype y[t] = sum over k in order of part[slot_of[t*K+k]] (+ shared)
 * Pairs whose expert id is outside [0, E) are not placed in any segment
 * (the plan counts them apart) and contribute nothing.
 */
#ifndef DMOE_CUDA_OPS_H
#define DMOE_CUDA_OPS_H

#include <cuda_runtime.h>

#include "../dmoe-impl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records a CUDA failure (expression, file, line) on ctx and returns DMOE_ERR_CUDA. */
dmoe_status dmoe__cuda_error(dmoe_context *ctx, cudaError_t err, const char *expr,
                             const char *file, int line);
#define DMOE_CUDA_CHECK(ctx, expr)                                                   \
    do {                                                                             \
        cudaError_t dmoe_cuda_err_ = (expr);                                         \
        if (dmoe_cuda_err_ != cudaSuccess)                                           \
            return dmoe__cuda_error((ctx), dmoe_cuda_err_, #expr, __FILE__, __LINE__); \
    } while (0)

/* A grouped GEMM over the experts' row segments (the plan's output). */
typedef struct dmoe_cuda_grouped_args {
    int64_t n_rows;          /* T*K: rows of act/part (an upper bound on used rows) */
    int64_t n_tokens;        /* T */
    int32_t top_k;           /* K */
    int32_t n_experts;       /* E */
    int64_t k_dim;           /* reduction: H for GEMM1, F for GEMM2 */
    int64_t n_dim;           /* output columns: F for GEMM1, H for GEMM2 */
    const int32_t *offsets;  /* (E+1) device */
    const int32_t *pairs;    /* (T*K) device */
    dmoe_dtype dtype;        /* DMOE_DTYPE_BF16 or DMOE_DTYPE_F16 */
    int32_t num_sms;         /* multiprocessors of the device */
    /* (E) device array of per-expert weight pointers (w13_e (2F, H) or w2_e (H, F)), or NULL:
     * expert e then lives at w + e * stride. Only the stream and mma kernels take it (the
     * expert cache gives them slots in device memory or mapped host memory). */
    const void *const *w_ptrs;
    /* (E) device array, or NULL: where the streaming kernel also writes expert e's weights as
     * it reads them (an expert-cache install riding on the GEMM), NULL entries for none. */
    void *const *w_install;
    /* (E) device flags, or NULL (streaming GEMM1 only): experts whose weights the kernel just
     * before this one (the cache's copy kernel) is still writing. The GEMM does the other
     * experts first and waits (griddepcontrol) only before these: the copy and the GEMM of the
     * resident experts overlap under programmatic dependent launch. */
    const int32_t *w_wait;
    /* device counter or NULL (with w_wait): each block adds its wait for the copy kernel, in
     * ns * 1024 divided by the grid size (the expert cache's stall time, 10 fraction bits) */
    unsigned long long *w_stall_ns;
} dmoe_cuda_grouped_args;

/* act (T*K, F) = SwiGLU over w13 (E, 2F, H) of the gathered rows of x (T, H). */
typedef dmoe_status (*dmoe_cuda_gemm1_fn)(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                          const void *x, const void *w13, void *act,
                                          cudaStream_t stream);
/* part (T*K, H) = topk_w[pair] * act (T*K, F) . w2 (E, H, F)^T. */
typedef dmoe_status (*dmoe_cuda_gemm2_fn)(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                          const void *act, const void *w2, const float *topk_w,
                                          void *part, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_OPS_H */
