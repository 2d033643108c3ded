/*
 * plan.cu: groups the (token, k) pairs by expert on the device, stably:
 *   topk_ids (n_pairs) int32, pair p = t*K + k
 *   -> counts (E), offsets (E+1), pairs (n_pairs) sorted by (expert, p),
 *      slot_of (n_pairs) with slot_of[pairs[s]] = s, -1 for ids outside [0, E).
 *
 * Up to PLAN_TABLE_MAX_PAIRS pairs whose table fits in shared memory, one
 * block of 1024 threads and one launch (plan_table_kernel): pair p sits in
 * register r = p / 1024 of thread p % 1024, so its warp of 32 consecutive
 * pairs is v = p / 32 ("virtual warp", <= 512 of them). __match_any_sync
 * gives each pair its rank among equal experts in v, and the leader of each
 * expert writes the count into a (E x V) uint16 table. One warp per expert
 * then turns its row into the exclusive prefix over v (lanes own runs of
 * PT entries), and the row's total is the expert's count; a block scan over
 * the counts gives offsets, and pair p goes to slot offsets[e] + table[e][v]
 * + rank. Every id is read once, into registers. By default it replaces
 * plan_small up to DMOE_CUDA_PLAN_SMALL pairs: measured 2026-12-06 (session
 * 13, H100, gpu_bench.py, one repetition, dmoe us) granite-like T=128 / 256
 * 104.6 / 111.6 -> 103.8 / 110.9, olmoe 300.4 / 312.4 -> 300.4 / 311.2, qwen3
 * 431.2 / 441.3 -> 430.8 / 440.9; at 8192 pairs (T=1024) it lost to the three
 * kernels below by 12-15 us (granite 146.8 -> 158.4, olmoe 365.3 -> 377.6,
 * qwen3 491.0 -> 506.1), so it stops there unless DMOE_CUDA_PLAN_TABLE=1
 * (then up to PLAN_TABLE_MAX_PAIRS; =0 turns it off).
 * Other small plans (n_pairs <= DMOE_CUDA_PLAN_SMALL with a table too large,
 * E ~ 1024) take plan-block.cuh's one-block plan. Larger ones take three
 * launches, one pass of a radix sort with the expert as the digit:
 *   count  block b counts the experts of its chunk of pairs -> hist[e*NB + b];
 *   scan   one block turns hist, read in (e, b) order, into its exclusive
 *          prefix sum, so hist[e*NB + b] = offsets[e] + pairs of expert e in
 *          the chunks before b, and hist[e*NB] = offsets[e];
 *   place  block b places its chunk from the cursors hist[e*NB + b].
 * NB <= 1024 blocks; each handles a run of 1024-pair sub-chunks.
 */
#include <stdlib.h>

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
    /* plan_shape's block count is not monotone in n_pairs (2^20 pairs take 1024
     * blocks, one more pair 513): size for the most any n <= max_pairs takes */
    int64_t nb = (max_pairs + PLAN_THREADS - 1) / PLAN_THREADS;
    if (nb > PLAN_MAX_BLOCKS) nb = PLAN_MAX_BLOCKS;
    if (nb < 1) nb = 1;
    return (size_t)nb * (size_t)n_experts;
}

/* plan_table_kernel: pairs per thread (a template value: 1, 2, 4, 8, 16), most pairs, largest
 * table (bytes: below every device's opt-in maximum, sm_86's 99 KB included). */
#define PLAN_TABLE_MAX_PAIRS (16 * PLAN_THREADS)
#define PLAN_TABLE_MAX_BYTES (88 * 1024)
static_assert(PLAN_TABLE_MAX_PAIRS <= 65536, "the table's prefix sums are uint16");

static int plan_table_pt(int64_t n_pairs) {
    int pt = 1;
    while ((int64_t)pt * PLAN_THREADS < n_pairs) pt *= 2;
    return pt;
}

/* plan_table_kernel's table: E rows of 32 * pt uint16. */
static size_t plan_table_bytes(int64_t n_pairs, int n_experts) {
    return (size_t)n_experts * 32 * plan_table_pt(n_pairs) * sizeof(uint16_t);
}

/* Its shared memory: the table, E ints, 33 ints. */
static size_t plan_table_smem(int64_t n_pairs, int n_experts) {
    return plan_table_bytes(n_pairs, n_experts) + (size_t)n_experts * sizeof(int) + 33 * sizeof(int);
}

/* The most pairs the table plan takes (read once): DMOE_CUDA_PLAN_TABLE=0 none, =1 up to
 * PLAN_TABLE_MAX_PAIRS (for tests), unset where it was measured faster: plan_small's range. */
static int64_t plan_table_max_pairs(void) {
    static int64_t v = -1;
    if (v < 0) {
        const char *e = getenv("DMOE_CUDA_PLAN_TABLE");
        const int set = e && (e[0] == '0' || e[0] == '1') && e[1] == 0;
        v = !set ? DMOE_CUDA_PLAN_SMALL : e[0] == '1' ? PLAN_TABLE_MAX_PAIRS : 0;
    }
    return v;
}

static int plan_table_fits(int64_t n_pairs, int n_experts, size_t smem_optin) {
    if (n_pairs > plan_table_max_pairs()) return 0;
    return plan_table_bytes(n_pairs, n_experts) <= PLAN_TABLE_MAX_BYTES &&
           plan_table_smem(n_pairs, n_experts) <= smem_optin;
}

template <int PT>
static __global__ void __launch_bounds__(PLAN_THREADS)
plan_table_kernel(const int32_t *topk_ids, int64_t n_pairs, int n_experts, int32_t *counts,
                  int32_t *offsets, int32_t *pairs, int32_t *slot_of) {
    constexpr int V = 32 * PT; /* virtual warps (table columns) */
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t *s_tab = (uint16_t *)smem;                      /* [e][v] */
    int *s_off = (int *)(smem + (size_t)n_experts * V * 2); /* per expert: count, then offset */
    int *s_warp = s_off + n_experts;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int E = n_experts;
    {
        uint4 *z = (uint4 *)s_tab;
        const int n16 = E * V * 2 / 16; /* V * 2 bytes = 64 * PT: a multiple of 16 */
        for (int i = tid; i < n16; i += PLAN_THREADS) z[i] = make_uint4(0, 0, 0, 0);
    }
    dmoe_griddep_wait();
    int key[PT], rank[PT];
#pragma unroll
    for (int r = 0; r < PT; r++) {
        const int64_t p = (int64_t)r * PLAN_THREADS + tid;
        const int e = p < n_pairs ? topk_ids[p] : -1;
        key[r] = p >= n_pairs ? -1 : (e >= 0 && e < E ? e : -2); /* -2: out of range, no slot */
    }
    __syncthreads(); /* the table is zero */
#pragma unroll
    for (int r = 0; r < PT; r++) {
        const unsigned mask = __match_any_sync(0xffffffffu, key[r]);
        rank[r] = __popc(mask & ((1u << lane) - 1u));
        if (key[r] >= 0 && rank[r] == 0) s_tab[key[r] * V + r * 32 + warp] = (uint16_t)__popc(mask);
    }
    __syncthreads();
    /* each expert's row -> exclusive prefix over v; lane l owns entries [l*PT, l*PT + PT) */
    for (int e = warp; e < E; e += PLAN_THREADS / 32) {
        uint16_t *row = s_tab + e * V + lane * PT;
        int v[PT], sum = 0;
#pragma unroll
        for (int j = 0; j < PT; j++) {
            v[j] = row[j];
            sum += v[j];
        }
        int incl = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int n = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += n;
        }
        int run = incl - sum;
#pragma unroll
        for (int j = 0; j < PT; j++) {
            row[j] = (uint16_t)run;
            run += v[j];
        }
        if (lane == 31) s_off[e] = incl;
    }
    __syncthreads();
    dmoe_plan_offsets(s_off, E, counts, offsets, s_warp);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < PT; r++) {
        const int64_t p = (int64_t)r * PLAN_THREADS + tid;
        if (key[r] >= 0) {
            const int slot = s_off[key[r]] + s_tab[key[r] * V + r * 32 + warp] + rank[r];
            slot_of[p] = slot;
            pairs[slot] = (int32_t)p;
        } else if (key[r] == -2) {
            slot_of[p] = -1;
        }
    }
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

template <int PT>
static cudaError_t launch_plan_table(const dmoe_cuda_context *cc, size_t smem, cudaStream_t stream,
                                     const int32_t *topk_ids, int64_t n_pairs, int E, int32_t *counts,
                                     int32_t *offsets, int32_t *pairs, int32_t *slot_of) {
    static unsigned long long smem_done = 0;
    cudaError_t err = dmoe_set_smem(plan_table_kernel<PT>, smem, cc->device, &smem_done);
    if (err != cudaSuccess) return err;
    return dmoe_launch(plan_table_kernel<PT>, dim3(1), dim3(PLAN_THREADS), smem, stream, cc->pdl, topk_ids,
                       n_pairs, E, counts, offsets, pairs, slot_of);
}

extern "C" const char *dmoe__cuda_plan_kind(dmoe_context *ctx, int64_t n_pairs, int32_t n_experts) {
    if (plan_table_fits(n_pairs, n_experts, dmoe__cuda_ctx(ctx)->smem_optin)) return "table, 1 block";
    return n_pairs <= DMOE_CUDA_PLAN_SMALL ? "1 block" : "3 kernels";
}

extern "C" dmoe_status dmoe__cuda_plan(dmoe_context *ctx, const int32_t *topk_ids, int64_t n_pairs,
                                       int32_t n_experts, int32_t *counts, int32_t *offsets,
                                       int32_t *pairs, int32_t *slot_of, int32_t *ws,
                                       cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const int E = n_experts;
    if (plan_table_fits(n_pairs, E, cc->smem_optin)) {
        const int pt = plan_table_pt(n_pairs);
        const size_t smem = plan_table_smem(n_pairs, E);
        cudaError_t err;
        if (pt == 1) err = launch_plan_table<1>(cc, smem, stream, topk_ids, n_pairs, E, counts, offsets, pairs, slot_of);
        else if (pt == 2) err = launch_plan_table<2>(cc, smem, stream, topk_ids, n_pairs, E, counts, offsets, pairs, slot_of);
        else if (pt == 4) err = launch_plan_table<4>(cc, smem, stream, topk_ids, n_pairs, E, counts, offsets, pairs, slot_of);
        else if (pt == 8) err = launch_plan_table<8>(cc, smem, stream, topk_ids, n_pairs, E, counts, offsets, pairs, slot_of);
        else err = launch_plan_table<16>(cc, smem, stream, topk_ids, n_pairs, E, counts, offsets, pairs, slot_of);
        DMOE_CUDA_CHECK(ctx, err);
        DMOE_CUDA_CHECK(ctx, cudaGetLastError());
        return DMOE_OK;
    }
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
