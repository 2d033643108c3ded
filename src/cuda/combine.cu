/*
 * combine.cu: y (T, H) = sum_k part[slot_of[t*K + k]] (+ shared parts), the
 * last stage of a staged forward.
 *   part        (T*K, H)  act dtype, routing weight already applied (GEMM2)
 *   slot_of     (T*K)     int32, -1 for pairs that were not placed
 *   shared_part (S*T, H)  act dtype, row s*T + t, gate already applied
 * One thread per 8 columns of a token: K 16-byte loads (8 slots, then their 8
 * parts, in flight at once), summed in fp32 in k order, then the shared
 * experts in s order, rounded once. Every element is summed in the same order
 * on every run: the result is bitwise deterministic.
 */
#include "combine.h"
#include "cuda-common.cuh"
#include "cuda-context.h"

#define COMBINE_THREADS 128
#define COMBINE_BATCH 8 /* pairs of a token whose loads are in flight together */

template <typename T>
static __device__ __forceinline__ void add8(float acc[8], const uint4 &v) {
    const float2 a = dmoe_dt<T>::unpack2(v.x), b = dmoe_dt<T>::unpack2(v.y);
    const float2 c = dmoe_dt<T>::unpack2(v.z), d = dmoe_dt<T>::unpack2(v.w);
    acc[0] += a.x; acc[1] += a.y; acc[2] += b.x; acc[3] += b.y;
    acc[4] += c.x; acc[5] += c.y; acc[6] += d.x; acc[7] += d.y;
}

template <typename T>
static __global__ void __launch_bounds__(COMBINE_THREADS)
combine_kernel(const T *part, const int32_t *slot_of, int64_t n_tokens, int top_k,
               const T *shared_part, int n_shared, int64_t hidden, T *y) {
    dmoe_griddep_wait();
    const int64_t chunks = hidden / 8;
    const int64_t total = n_tokens * chunks;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / chunks, c = i - t * chunks;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int k0 = 0; k0 < top_k; k0 += COMBINE_BATCH) {
            /* a batch of slots, then its parts, all in flight; summed in k order */
            int s[COMBINE_BATCH];
            uint4 v[COMBINE_BATCH] = {};
#pragma unroll
            for (int j = 0; j < COMBINE_BATCH; j++) s[j] = k0 + j < top_k ? __ldg(slot_of + t * top_k + k0 + j) : -1;
#pragma unroll
            for (int j = 0; j < COMBINE_BATCH; j++)
                if (s[j] >= 0) v[j] = dmoe_ld_cached16(part + (int64_t)s[j] * hidden + c * 8);
#pragma unroll
            for (int j = 0; j < COMBINE_BATCH; j++)
                if (s[j] >= 0) add8<T>(acc, v[j]);
        }
        for (int s = 0; s < n_shared; s++)
            add8<T>(acc, dmoe_ld_cached16(shared_part + ((int64_t)s * n_tokens + t) * hidden + c * 8));
        uint4 o;
        o.x = dmoe_dt<T>::pack2(acc[0], acc[1]);
        o.y = dmoe_dt<T>::pack2(acc[2], acc[3]);
        o.z = dmoe_dt<T>::pack2(acc[4], acc[5]);
        o.w = dmoe_dt<T>::pack2(acc[6], acc[7]);
        *(uint4 *)(y + t * hidden + c * 8) = o;
    }
}

extern "C" dmoe_status dmoe__cuda_combine(dmoe_context *ctx, const void *part,
                                          const int32_t *slot_of, int64_t n_tokens, int32_t top_k,
                                          const void *shared_part, int32_t n_shared, int64_t hidden,
                                          dmoe_dtype dtype, void *y, cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const int64_t total = n_tokens * (hidden / 8);
    int64_t blocks = (total + COMBINE_THREADS - 1) / COMBINE_THREADS;
    const int64_t cap = (int64_t)cc->num_sms * 16;
    if (blocks > cap) blocks = cap;
    cudaError_t err;
    if (dtype == DMOE_DTYPE_BF16)
        err = dmoe_launch(combine_kernel<dmoe_bf16>, dim3((unsigned)blocks), dim3(COMBINE_THREADS), 0,
                          stream, cc->pdl, (const dmoe_bf16 *)part, slot_of, n_tokens, (int)top_k,
                          (const dmoe_bf16 *)shared_part, (int)n_shared, hidden, (dmoe_bf16 *)y);
    else
        err = dmoe_launch(combine_kernel<dmoe_f16>, dim3((unsigned)blocks), dim3(COMBINE_THREADS), 0,
                          stream, cc->pdl, (const dmoe_f16 *)part, slot_of, n_tokens, (int)top_k,
                          (const dmoe_f16 *)shared_part, (int)n_shared, hidden, (dmoe_f16 *)y);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
