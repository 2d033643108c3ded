/*
 * shared.cu: shared experts as dense experts. Every token uses each of the S
 * shared experts, so their plan is fixed by T (see combine.h):
 *   offsets (S+1) = s*T, pairs[s*T + t] = t*S + s,
 *   weights[t*S + s] = sigmoid(shared_gate (H) . x[t]) or 1,
 * and the grouped GEMMs then run on it unchanged, the gate riding in GEMM2's
 * epilogue as the routing weight does. One warp per token for the gate's dot
 * product (16-byte loads, fp32, fixed reduction order).
 */
#include "combine.h"
#include "cuda-common.cuh"
#include "cuda-context.h"

#define SHARED_THREADS 256

template <typename T>
static __device__ __forceinline__ float dot2(uint32_t a, uint32_t b) {
    const float2 x = dmoe_dt<T>::unpack2(a), y = dmoe_dt<T>::unpack2(b);
    return x.x * y.x + x.y * y.y;
}

template <typename T>
static __global__ void __launch_bounds__(SHARED_THREADS)
shared_prep_kernel(const T *x, const T *gate, int64_t n_tokens, int64_t hidden, int n_shared,
                   float *weights, int32_t *pairs, int32_t *offsets) {
    const int lane = threadIdx.x & 31;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    dmoe_griddep_wait();
    if (blockIdx.x == 0)
        for (int s = threadIdx.x; s <= n_shared; s += blockDim.x) offsets[s] = (int32_t)(s * n_tokens);
    for (int64_t t = warp; t < n_tokens; t += n_warps) {
        float wt = 1.0f;
        if (gate) {
            float acc = 0.0f;
            for (int64_t k = (int64_t)lane * 8; k < hidden; k += 256) {
                const uint4 xv = dmoe_ld_cached16(x + t * hidden + k);
                const uint4 gv = dmoe_ld_cached16(gate + k);
                acc += dot2<T>(xv.x, gv.x) + dot2<T>(xv.y, gv.y) + dot2<T>(xv.z, gv.z) + dot2<T>(xv.w, gv.w);
            }
            acc = dmoe_warp_sum(acc);
            wt = 1.0f / (1.0f + expf(-acc));
        }
        for (int s = lane; s < n_shared; s += 32) {
            weights[t * n_shared + s] = wt;
            pairs[(int64_t)s * n_tokens + t] = (int32_t)(t * n_shared + s);
        }
    }
}

extern "C" dmoe_status dmoe__cuda_shared_prep(dmoe_context *ctx, const void *x, const void *gate,
                                              int64_t n_tokens, int64_t hidden, int32_t n_shared,
                                              dmoe_dtype dtype, float *weights, int32_t *pairs,
                                              int32_t *offsets, cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    int64_t blocks = (n_tokens + SHARED_THREADS / 32 - 1) / (SHARED_THREADS / 32);
    const int64_t cap = (int64_t)cc->num_sms * 8;
    if (blocks > cap) blocks = cap;
    cudaError_t err;
    if (dtype == DMOE_DTYPE_BF16)
        err = dmoe_launch(shared_prep_kernel<dmoe_bf16>, dim3((unsigned)blocks), dim3(SHARED_THREADS),
                          0, stream, cc->pdl, (const dmoe_bf16 *)x, (const dmoe_bf16 *)gate,
                          n_tokens, hidden, (int)n_shared, weights, pairs, offsets);
    else
        err = dmoe_launch(shared_prep_kernel<dmoe_f16>, dim3((unsigned)blocks), dim3(SHARED_THREADS),
                          0, stream, cc->pdl, (const dmoe_f16 *)x, (const dmoe_f16 *)gate, n_tokens,
                          hidden, (int)n_shared, weights, pairs, offsets);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
