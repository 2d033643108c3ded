/*
 * plan-block.cuh: the block-level pieces of the device plan, shared by the
 * plan kernels (plan.cu) and the router's fused small-T path (router.cu).
 *
 * Placement is stable: pair p = t*K + k goes to slot offsets[e] + (number of
 * earlier pairs with the same expert). A block places one chunk of blockDim
 * pairs at a time: inside a warp, __match_any_sync gives each pair its rank
 * among equal experts; across warps, a (warps x E) byte table of per-warp
 * counts gives the pairs of earlier warps; a per-expert cursor in shared
 * memory carries the count from chunk to chunk.
 * Pairs whose expert id is outside [0, E) get slot_of = -1 and no slot.
 */
#ifndef DMOE_CUDA_PLAN_BLOCK_CUH
#define DMOE_CUDA_PLAN_BLOCK_CUH

#include "cuda-common.cuh"

/* Places pairs [p0, p0 + blockDim) that are < n_pairs. s_cursor (E): next
 * free slot of each expert, advanced here. s_tab (n_warps * E bytes): zero on
 * entry, zero again on return. Every thread must call it. */
static __device__ __forceinline__ void dmoe_plan_place_chunk(const int32_t *topk_ids, int64_t p0,
                                                             int64_t n_pairs, int n_experts,
                                                             int *s_cursor, uint8_t *s_tab,
                                                             int32_t *pairs, int32_t *slot_of) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int64_t p = p0 + threadIdx.x;
    int key = -1; /* -1: no pair here; -2: id out of range; else the expert */
    if (p < n_pairs) {
        const int e = topk_ids[p];
        key = (e >= 0 && e < n_experts) ? e : -2;
    }
    const unsigned mask = __match_any_sync(0xffffffffu, key);
    const int rank = __popc(mask & ((1u << lane) - 1u));
    const int leader = rank == 0;
    const int valid = key >= 0;
    if (valid && leader) s_tab[warp * n_experts + key] = (uint8_t)__popc(mask);
    __syncthreads();
    int slot = -1, last = 0, total = 0;
    if (valid) {
        int before = 0;
        for (int w = 0; w < warp; w++) before += s_tab[w * n_experts + key];
        slot = s_cursor[key] + before + rank;
        if (leader) {
            last = 1;
            for (int w = warp + 1; w < n_warps; w++)
                if (s_tab[w * n_experts + key]) last = 0;
            total = before + __popc(mask);
        }
    }
    __syncthreads();
    if (valid && leader) {
        if (last) s_cursor[key] += total;
        s_tab[warp * n_experts + key] = 0;
    }
    if (p < n_pairs) {
        slot_of[p] = slot;
        if (valid) pairs[slot] = (int32_t)p;
    }
    __syncthreads();
}

/* s_cnt (E, shared): each expert's count on entry, its first slot on return;
 * counts, offsets (E + 1) written. An exclusive scan with each thread owning a
 * run of experts. Every thread calls it; the caller syncs before reading s_cnt. */
static __device__ __forceinline__ void dmoe_plan_offsets(int *s_cnt, int n_experts, int32_t *counts,
                                                         int32_t *offsets, int *s_warp) {
    const int per = (n_experts + (int)blockDim.x - 1) / (int)blockDim.x;
    const int e0 = (int)threadIdx.x * per;
    int mine = 0;
    for (int i = 0; i < per; i++)
        if (e0 + i < n_experts) mine += s_cnt[e0 + i];
    int total;
    int pos = dmoe_block_exclusive_scan(mine, s_warp, &total); /* syncs: every s_cnt read is done */
    for (int i = 0; i < per; i++) {
        const int e = e0 + i;
        if (e < n_experts) {
            const int c = s_cnt[e];
            counts[e] = c;
            offsets[e] = pos;
            s_cnt[e] = pos;
            pos += c;
        }
    }
    if (threadIdx.x == 0) offsets[n_experts] = total;
}

/* The whole plan in one block, for small n_pairs. Shared memory: s_cursor (E
 * ints), s_tab (n_warps * E bytes), s_warp (33 ints). Every thread calls it. */
static __device__ __forceinline__ void dmoe_plan_block(const int32_t *topk_ids, int64_t n_pairs,
                                                       int n_experts, int32_t *counts,
                                                       int32_t *offsets, int32_t *pairs,
                                                       int32_t *slot_of, int *s_cursor,
                                                       uint8_t *s_tab, int *s_warp) {
    const int n_warps = blockDim.x >> 5;
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x) s_cursor[i] = 0;
    for (int i = threadIdx.x; i < n_warps * n_experts; i += blockDim.x) s_tab[i] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int e = topk_ids[p];
        if (e >= 0 && e < n_experts) atomicAdd(&s_cursor[e], 1);
    }
    __syncthreads();
    dmoe_plan_offsets(s_cursor, n_experts, counts, offsets, s_warp);
    __syncthreads();
    for (int64_t p0 = 0; p0 < n_pairs; p0 += blockDim.x)
        dmoe_plan_place_chunk(topk_ids, p0, n_pairs, n_experts, s_cursor, s_tab, pairs, slot_of);
}

#endif /* DMOE_CUDA_PLAN_BLOCK_CUH */
