/*
 * router.cu: the router on the device.
 *   x (T, H), router (E, H) -> topk_ids (T, K) int32, topk_w (T, K) float32
 * following the rules in dmoe.h, which src/routing.c states on the host:
 * NaN logits count as -FLT_MAX and +-inf are clamped; softmax over all E or
 * sigmoid; choice = score + correction bias; grouped top-k keeps the
 * topk_group groups with the best sum of their top-2 choices (top-1 for
 * groups of one); top-k over choice with ties to the lower index; weights are
 * the scores, renormalised when asked (unless their sum is 0), then scaled.
 * Logits are accumulated in fp32; scoring and selection run in fp32.
 *
 * Two GEMM paths (heuristics.cu picks):
 *  - T <= 1024: router_stream_kernel, a split-k GEMV/GEMM in the "swapped"
 *    form: 16 experts are the M side of mma.sync, 8 tokens the N side, and
 *    every block reads a 16 x k_chunk slice of the router weights, so even one
 *    token spreads the E*H weights over the whole chip. Each block writes its
 *    partial logits to part (k_splits, T, E). For T <= 16 the last block to
 *    finish (an atomic counter that it resets) sums the partials, routes every
 *    token and, in a forward, builds the plan too: one launch in all.
 *  - T > 1024: the tiled mma.sync GEMM of gemm-mma.cu writes the partial
 *    logits (k_splits, T, E), H split until ~2 blocks per SM are busy.
 * route_kernel then sums the partials (in k-split order: deterministic) and
 * routes, one warp per token, with the token's scores and choices in shared
 * memory (route-token.cuh: the same code as the fused kernel's).
 */
#include "cuda-common.cuh"
#include "cuda-context.h"
#include "gemm.h"
#include "heuristics.h"
#include "plan-block.cuh"
#include "plan.h"
#include "route-token.cuh"
#include "router.h"

#define ROUTER_THREADS 256 /* 8 warps: the block walks H 256 elements at a time */
#define ROUTE_THREADS 128  /* route_kernel: 4 tokens per block */

typedef struct route_cfg {
    int n_experts, top_k, softmax, renorm, n_group, topk_group;
    float scale;
    const float *bias;
} route_cfg;

/* Routes token t with one warp (route-token.cuh). Its logits are the sum over
 * ks of part[(ks*T + t)*E + e]. s_score and s_choice hold E floats, s_group
 * n_group. */
static __device__ void route_token(const float *part, int k_splits, int64_t n_tokens, int64_t t,
                                   const route_cfg &rc, float *s_score, float *s_choice,
                                   float *s_group, int32_t *ids_out, float *w_out) {
    const int lane = threadIdx.x & 31, E = rc.n_experts;
    float mx = -FLT_MAX;
    for (int e0 = lane; e0 < E; e0 += 128) { /* 4 experts x 8 splits of loads in flight */
        float v[4];
        dmoe_route_split_sums4(part + t * E, (size_t)n_tokens * E, e0, 32, E, k_splits, v);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int e = e0 + 32 * q;
            if (e >= E) break;
            const float c = dmoe_route_clamp_logit(v[q]);
            s_score[e] = c;
            mx = fmaxf(mx, c);
        }
    }
    const dmoe_route_rules r = {rc.bias, rc.scale, E, rc.top_k, rc.n_group, rc.topk_group, rc.softmax, rc.renorm};
    int id;
    float w;
    dmoe_route_topk(r, mx, s_score, s_choice, s_group, &id, &w);
    if (lane < rc.top_k) {
        ids_out[t * rc.top_k + lane] = id;
        w_out[t * rc.top_k + lane] = w;
    }
    __syncwarp();
}

static __host__ __device__ size_t route_smem_floats(int n_experts, int n_group) {
    return 2 * (size_t)n_experts + (size_t)(n_group > 1 ? n_group : 0);
}

static __global__ void __launch_bounds__(ROUTE_THREADS)
route_kernel(const float *part, int k_splits, int64_t n_tokens, route_cfg rc, int32_t *ids,
             float *wts) {
    extern __shared__ __align__(16) float smem_f[];
    const int warp = threadIdx.x >> 5;
    const size_t per_warp = route_smem_floats(rc.n_experts, rc.n_group);
    float *s_score = smem_f + warp * per_warp;
    float *s_choice = s_score + rc.n_experts;
    float *s_group = s_choice + rc.n_experts;
    dmoe_griddep_wait();
    for (int64_t t = (int64_t)blockIdx.x * (ROUTE_THREADS / 32) + warp; t < n_tokens;
         t += (int64_t)gridDim.x * (ROUTE_THREADS / 32))
        route_token(part, k_splits, n_tokens, t, rc, s_score, s_choice, s_group, ids, wts);
}

typedef struct router_params {
    const void *x, *w;
    int64_t n_tokens, hidden;
    int32_t n_experts;
    int64_t k_chunk;
    float *part;       /* (k_splits, T, E) */
    unsigned *counter;
    route_cfg rc;
    int32_t *ids;
    float *wts;
    int32_t *counts, *offsets, *pairs, *slot_of; /* fused plan, or NULL */
} router_params;

/* grid (ceil(E/16), k_splits, t_splits), 256 threads. NT 8-token tiles per
 * pass over T, block z taking passes z, z + t_splits, ...; U loads in flight
 * per thread and weight row. FUSED: the last block routes. */
template <typename T, int NT, int U, bool FUSED>
static __global__ void __launch_bounds__(ROUTER_THREADS, 2)
router_stream_kernel(router_params p) {
    __shared__ float s_red[ROUTER_THREADS / 32][NT * 4][32];
    extern __shared__ __align__(16) float smem_f[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
    const int E = p.n_experts;
    const int64_t H = p.hidden, n_tok = p.n_tokens;
    const int ks = blockIdx.y;
    const int ea = blockIdx.x * 16 + g, eb = ea + 8;
    const int64_t k_beg = (int64_t)ks * p.k_chunk;
    const int64_t k_end = k_beg + p.k_chunk < H ? k_beg + p.k_chunk : H;
    const T *w = (const T *)p.w;
    const T *x = (const T *)p.x;
    const T *wa = ea < E ? w + (int64_t)ea * H : nullptr;
    const T *wb = eb < E ? w + (int64_t)eb * H : nullptr;
    float *out = p.part + (int64_t)ks * n_tok * E;
    dmoe_griddep_wait();
    /* the next kernel may launch now (its blocks fill the SMs this small grid leaves free);
     * every kernel that follows the router waits for it before reading its output */
    dmoe_griddep_launch();

    for (int64_t t0 = (int64_t)blockIdx.z * NT * 8; t0 < n_tok; t0 += (int64_t)gridDim.z * NT * 8) {
        const T *xr[NT];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int64_t t = t0 + nt * 8 + g;
            xr[nt] = t < n_tok ? x + t * H : nullptr;
        }
        float acc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        for (int64_t kb = k_beg + warp * 32; kb < k_end; kb += 256 * U) {
            uint4 va[U], vb[U], vx[U][NT];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t kk = kb + u * 256 + q * 8;
                const bool ok = kk < k_end;
                va[u] = dmoe_ld_cached16_if(wa + kk, ok && wa);
                vb[u] = dmoe_ld_cached16_if(wb + kk, ok && wb);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) vx[u][nt] = dmoe_ld_cached16_if(xr[nt] + kk, ok && xr[nt]);
            }
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) dmoe_mma_swapped<T>(acc[nt], va[u], vb[u], vx[u][nt]);
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) s_red[warp][nt * 4 + j][lane] = acc[nt][j];
        __syncthreads();
        for (int idx = tid; idx < NT * 32; idx += ROUTER_THREADS) {
            const int nt = idx >> 5, ln = idx & 31;
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float s = 0.0f;
#pragma unroll
                for (int w8 = 0; w8 < ROUTER_THREADS / 32; w8++) s += s_red[w8][nt * 4 + j][ln];
                v[j] = s;
            }
            const int e0 = blockIdx.x * 16 + (ln >> 2), e1 = e0 + 8;
            const int64_t ta = t0 + nt * 8 + 2 * (ln & 3), tb = ta + 1;
            if (e0 < E) {
                if (ta < n_tok) out[ta * E + e0] = v[0];
                if (tb < n_tok) out[tb * E + e0] = v[1];
            }
            if (e1 < E) {
                if (ta < n_tok) out[ta * E + e1] = v[2];
                if (tb < n_tok) out[tb * E + e1] = v[3];
            }
        }
        __syncthreads();
    }

    if constexpr (FUSED) {
        __shared__ int s_last;
        __threadfence();
        __syncthreads();
        if (tid == 0) s_last = atomicAdd(p.counter, 1u) == gridDim.x * gridDim.y * gridDim.z - 1;
        __syncthreads();
        if (!s_last) return;
        __threadfence();
        const size_t per_warp = route_smem_floats(E, p.rc.n_group);
        float *s_score = smem_f + warp * per_warp;
        for (int64_t t = warp; t < n_tok; t += ROUTER_THREADS / 32)
            route_token(p.part, gridDim.y, n_tok, t, p.rc, s_score, s_score + E, s_score + 2 * E,
                        p.ids, p.wts);
        if (p.counts) {
            __syncthreads();
            int *s_cursor = (int *)smem_f;
            int *s_warp = s_cursor + E;
            uint8_t *s_tab = (uint8_t *)(s_warp + 33);
            dmoe_plan_block(p.ids, n_tok * p.rc.top_k, E, p.counts, p.offsets, p.pairs, p.slot_of,
                            s_cursor, s_tab, s_warp);
        }
        if (tid == 0) atomicExch(p.counter, 0u);
    }
}

extern "C" size_t dmoe__cuda_router_ws_floats(int64_t max_tokens, int64_t hidden, int32_t n_experts,
                                              int32_t num_sms) {
    /* Streaming (T <= stream_max): the split count is largest at T <= 64 (where
     * it depends on (H, E) only; above, it falls as T grows). Above, the mma
     * logits split H by a count that falls as T grows: take the largest
     * splits x T over the token counts a call may pass (the count changes
     * only at multiples of 128 tokens). */
    const int64_t smax = dmoe__cuda_router_stream_max();
    const int64_t t_stream = max_tokens < smax ? max_tokens : smax;
    dmoe_cuda_router_cfg c = dmoe__cuda_router_config(t_stream < 64 ? t_stream : 64, hidden, n_experts, num_sms);
    size_t need = (size_t)c.k_splits * (size_t)t_stream * (size_t)n_experts;
    for (int64_t m = smax / 128 + 1; 128 * (m - 1) < max_tokens; m++) { /* T in (128(m-1), 128m]: one count */
        const int64_t tt = 128 * m < max_tokens ? 128 * m : max_tokens;
        c = dmoe__cuda_router_config(tt, hidden, n_experts, num_sms);
        const size_t n = (size_t)c.k_splits * (size_t)tt * (size_t)n_experts;
        if (n > need) need = n;
    }
    if ((size_t)max_tokens * (size_t)n_experts > need) need = (size_t)max_tokens * (size_t)n_experts;
    return need;
}

template <typename T, int NT, int U, bool FUSED>
static cudaError_t launch_router_stream(const router_params &p, const dmoe_cuda_router_cfg &c, size_t smem,
                                       cudaStream_t stream, const dmoe_cuda_context *cc) {
    static unsigned long long smem_done = 0;
    cudaError_t err = dmoe_set_smem(router_stream_kernel<T, NT, U, FUSED>, smem, cc->device, &smem_done);
    if (err != cudaSuccess) return err;
    dim3 grid((p.n_experts + 15) / 16, c.k_splits, c.t_splits);
    return dmoe_launch(router_stream_kernel<T, NT, U, FUSED>, grid, dim3(ROUTER_THREADS), smem,
                       stream, cc->pdl, p);
}

template <typename T>
static cudaError_t router_stream_dispatch(const router_params &p, const dmoe_cuda_router_cfg &c,
                                          size_t smem, cudaStream_t stream,
                                          const dmoe_cuda_context *cc) {
    if (c.fused) {
        if (c.tok_tiles == 1) return launch_router_stream<T, 1, 4, true>(p, c, smem, stream, cc);
        return launch_router_stream<T, 2, 4, true>(p, c, smem, stream, cc);
    }
    if (c.tok_tiles == 1) return launch_router_stream<T, 1, 4, false>(p, c, 0, stream, cc);
    if (c.tok_tiles == 2) return launch_router_stream<T, 2, 4, false>(p, c, 0, stream, cc);
    return launch_router_stream<T, 4, 2, false>(p, c, 0, stream, cc);
}

extern "C" dmoe_status dmoe__cuda_router(dmoe_context *ctx, const dmoe_cuda_router_args *a,
                                         int *plan_done, cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const int E = a->n_experts;
    const dmoe_cuda_router_cfg c = dmoe__cuda_router_config(a->n_tokens, a->hidden, E, cc->num_sms);
    route_cfg rc;
    rc.n_experts = E;
    rc.top_k = a->top_k;
    rc.softmax = a->routing.scoring == DMOE_SCORING_SOFTMAX;
    rc.renorm = a->routing.renormalize;
    rc.n_group = a->routing.n_group > 1 ? a->routing.n_group : 0;
    rc.topk_group = a->routing.topk_group;
    rc.scale = a->routing.routed_scaling_factor;
    rc.bias = a->routing.use_correction_bias ? a->bias : NULL;
    const size_t route_smem =
        (size_t)(ROUTE_THREADS / 32) * route_smem_floats(E, rc.n_group) * sizeof(float);
    *plan_done = 0;
    int k_splits = 1;
    if (!c.use_mma) {
        router_params p;
        memset(&p, 0, sizeof p);
        p.x = a->x;
        p.w = a->weight;
        p.n_tokens = a->n_tokens;
        p.hidden = a->hidden;
        p.n_experts = E;
        p.k_chunk = c.k_chunk;
        p.part = a->logits_ws;
        p.counter = a->counter;
        p.rc = rc;
        p.ids = a->topk_ids;
        p.wts = a->topk_w;
        size_t smem = 0;
        if (c.fused) {
            smem = (size_t)(ROUTER_THREADS / 32) * route_smem_floats(E, rc.n_group) * sizeof(float);
            if (a->counts && a->n_tokens * a->top_k <= DMOE_CUDA_PLAN_SMALL) {
                p.counts = a->counts;
                p.offsets = a->offsets;
                p.pairs = a->pairs;
                p.slot_of = a->slot_of;
                const size_t plan_smem = (size_t)E * sizeof(int) + 33 * sizeof(int) +
                                         (size_t)(ROUTER_THREADS / 32) * E;
                if (plan_smem > smem) smem = plan_smem;
                *plan_done = 1;
            }
        }
        cudaError_t err = a->dtype == DMOE_DTYPE_BF16
                              ? router_stream_dispatch<dmoe_bf16>(p, c, smem, stream, cc)
                              : router_stream_dispatch<dmoe_f16>(p, c, smem, stream, cc);
        DMOE_CUDA_CHECK(ctx, err);
        DMOE_CUDA_CHECK(ctx, cudaGetLastError());
        if (c.fused) return DMOE_OK;
        k_splits = c.k_splits;
    } else {
        dmoe_status st = dmoe__cuda_logits_mma(ctx, a->x, a->weight, a->n_tokens, a->hidden, E,
                                               c.k_splits, c.k_chunk, a->dtype, a->logits_ws, stream);
        if (st != DMOE_OK) return st;
        k_splits = c.k_splits;
    }
    static unsigned long long smem_done = 0;
    DMOE_CUDA_CHECK(ctx, dmoe_set_smem(route_kernel, route_smem, cc->device, &smem_done));
    int64_t blocks = (a->n_tokens + ROUTE_THREADS / 32 - 1) / (ROUTE_THREADS / 32);
    const int64_t cap = (int64_t)cc->num_sms * 16;
    if (blocks > cap) blocks = cap;
    DMOE_CUDA_CHECK(ctx, dmoe_launch(route_kernel, dim3((unsigned)blocks), dim3(ROUTE_THREADS),
                                     route_smem, stream, cc->pdl, (const float *)a->logits_ws,
                                     k_splits, a->n_tokens, rc, a->topk_ids, a->topk_w));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
