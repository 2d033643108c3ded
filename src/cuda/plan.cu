/*
 * plan.cu: groups the (token, k) pairs by expert on the device, stably:
 *   topk_ids (n_pairs) int32, pair p = t*K + k
 *   -> counts (E), offsets (E+1), pairs (n_pairs) sorted by (expert, p),
 *      slot_of (n_pairs) with slot_of[pairs[s]] = s, -1 for ids outside [0, E).
 *
 * Small plans (n_pairs <= DMOE_CUDA_PLAN_SMALL) take one block and one launch
 * (plan-block.cuh). Larger ones take three launches, one pass of a radix sort
 * with the expert as the digit:
 *   count  block b counts the experts of its chunk of pairs -> hist[e*NB + b];
 *   scan   one block turns hist, read in (e, b) order, into its exclusive
 *          prefix sum, so hist[e*NB + b] = offsets[e] + pairs of expert e in
 *          the chunks before b, and hist[e*NB] = offsets[e];
 *   place  block b places its chunk from the cursors hist[e*NB + b].
 * NB <= 1024 blocks; each handles a run of 1024-pair sub-chunks.
 */
#include "plan-block.cuh"
#include "cuda-context.h"
#include "plan.h"

#define PLAN_THREADS 1024
#define PLAN_MAX_BLOCKS 1024

static void plan_shape(int64_t n_pairs, int *n_blocks, int64_t *chunk) {
    const int64_t per_block = (n_pairs + (int64_t)PLAN_THREADS * PLAN_MAX_BLOCKS - 1) /
                              ((int64_t)PLAN_THREADS * PLAN_MAX_BLOCKS);
    *chunk = per_block * PLAN_THREADS;
    *n_blocks = (int)((n_pairs + *chunk - 1) / *chunk);
}

extern "C" size_t dmoe__cuda_plan_ws_ints(int64_t max_pairs, int32_t n_experts) {
    int nb;
    int64_t chunk;
    plan_shape(max_pairs, &nb, &chunk);
    return (size_t)nb * (size_t)n_experts;
}

static size_t plan_block_smem(int n_experts, int threads) {
    return (size_t)n_experts * sizeof(int) + (size_t)(threads / 32) * n_experts + 33 * sizeof(int);
}

static __global__ void __launch_bounds__(PLAN_THREADS)
plan_small_kernel(const int32_t *topk_ids, int64_t n_pairs, int n_experts, int32_t *counts,
                  int32_t *offsets, int32_t *pairs, int32_t *slot_of) {
    extern __shared__ __align__(16) unsigned char smem[];
    int *s_cursor = (int *)smem;
    int *s_warp = s_cursor + n_experts;
    uint8_t *s_tab = (uint8_t *)(s_warp + 33);
    dmoe_griddep_wait();
    dmoe_plan_block(topk_ids, n_pairs, n_experts, counts, offsets, pairs, slot_of, s_cursor, s_tab,
                    s_warp);
}

static __global__ void __launch_bounds__(PLAN_THREADS)
plan_count_kernel(const int32_t *topk_ids, int64_t n_pairs, int n_experts, int64_t chunk,
                  int32_t *hist) {
    extern __shared__ __align__(16) unsigned char smem[];
    int *s_cnt = (int *)smem;
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x) s_cnt[i] = 0;
    dmoe_griddep_wait();
    __syncthreads();
    const int64_t p0 = (int64_t)blockIdx.x * chunk;
    const int64_t p1 = p0 + chunk < n_pairs ? p0 + chunk : n_pairs;
    for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
        const int e = topk_ids[p];
        if (e >= 0 && e < n_experts) atomicAdd(&s_cnt[e], 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x)
        hist[(int64_t)i * gridDim.x + blockIdx.x] = s_cnt[i];
}

static __global__ void __launch_bounds__(PLAN_THREADS)
plan_scan_kernel(int32_t *hist, int n_experts, int n_blocks, int32_t *counts, int32_t *offsets) {
    __shared__ int s_warp[33];
    dmoe_griddep_wait();
    const int64_t n = (int64_t)n_experts * n_blocks;
    const int64_t len = (n + blockDim.x - 1) / blockDim.x;
    const int64_t i0 = (int64_t)threadIdx.x * len;
    const int64_t i1 = i0 + len < n ? i0 + len : n;
    int mine = 0;
    for (int64_t i = i0; i < i1; i++) mine += hist[i];
    int total;
    int run = dmoe_block_exclusive_scan(mine, s_warp, &total);
    for (int64_t i = i0; i < i1; i++) {
        const int v = hist[i];
        hist[i] = run;
        if (i % n_blocks == 0) offsets[i / n_blocks] = run;
        run += v;
    }
    if (threadIdx.x == 0) offsets[n_experts] = total;
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) counts[e] = offsets[e + 1] - offsets[e];
}

static __global__ void __launch_bounds__(PLAN_THREADS)
plan_place_kernel(const int32_t *topk_ids, int64_t n_pairs, int n_experts, int64_t chunk,
                  const int32_t *hist, int32_t *pairs, int32_t *slot_of) {
    extern __shared__ __align__(16) unsigned char smem[];
    int *s_cursor = (int *)smem;
    uint8_t *s_tab = (uint8_t *)(s_cursor + n_experts);
    const int n_warps = blockDim.x >> 5;
    for (int i = threadIdx.x; i < n_warps * n_experts; i += blockDim.x) s_tab[i] = 0;
    dmoe_griddep_wait();
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x)
        s_cursor[i] = hist[(int64_t)i * gridDim.x + blockIdx.x];
    __syncthreads();
    const int64_t p0 = (int64_t)blockIdx.x * chunk;
    const int64_t p1 = p0 + chunk < n_pairs ? p0 + chunk : n_pairs;
    for (int64_t p = p0; p < p1; p += blockDim.x)
        dmoe_plan_place_chunk(topk_ids, p, p1, n_experts, s_cursor, s_tab, pairs, slot_of);
}

extern "C" dmoe_status dmoe__cuda_plan(dmoe_context *ctx, const int32_t *topk_ids, int64_t n_pairs,
                                       int32_t n_experts, int32_t *counts, int32_t *offsets,
                                       int32_t *pairs, int32_t *slot_of, int32_t *ws,
                                       cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const int E = n_experts;
    if (n_pairs <= DMOE_CUDA_PLAN_SMALL) {
        DMOE_CUDA_CHECK(ctx, dmoe_launch(plan_small_kernel, dim3(1), dim3(PLAN_THREADS),
                                         plan_block_smem(E, PLAN_THREADS), stream, cc->pdl,
                                         topk_ids, n_pairs, E, counts, offsets, pairs, slot_of));
        DMOE_CUDA_CHECK(ctx, cudaGetLastError());
        return DMOE_OK;
    }
    int nb;
    int64_t chunk;
    plan_shape(n_pairs, &nb, &chunk);
    DMOE_CUDA_CHECK(ctx, dmoe_launch(plan_count_kernel, dim3(nb), dim3(PLAN_THREADS),
                                     (size_t)E * sizeof(int), stream, cc->pdl, topk_ids, n_pairs,
                                     E, chunk, ws));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    DMOE_CUDA_CHECK(ctx, dmoe_launch(plan_scan_kernel, dim3(1), dim3(PLAN_THREADS), 0, stream,
                                     cc->pdl, ws, E, nb, counts, offsets));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    DMOE_CUDA_CHECK(ctx, dmoe_launch(plan_place_kernel, dim3(nb), dim3(PLAN_THREADS),
                                     (size_t)E * sizeof(int) + (size_t)(PLAN_THREADS / 32) * E,
                                     stream, cc->pdl, topk_ids, n_pairs, E, chunk,
                                     (const int32_t *)ws, pairs, slot_of));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
