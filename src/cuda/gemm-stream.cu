/*
 * gemm-stream.cu: grouped GEMM1 (+SwiGLU) and GEMM2 (+routing weight) for few
 * rows per expert (decode), where the work is to read every active expert's
 * weights from HBM once, at full bandwidth. Implements the contract of
 * cuda-ops.h:
 *   act  (T*K, F) row s = silu(x[t] . W1_e) * (x[t] . W3_e), t = pairs[s] / K
 *   part (T*K, H) row s = topk_w[pairs[s]] * (act[s] . W2_e)
 * with w13 (E, 2F, H) and w2 (E, H, F) in the Hugging Face layout.
 *
 * Work item = (active expert, 16 weight rows): for GEMM1 the gate and up rows
 * of 8 features, for GEMM2 16 output rows. A persistent grid (resident blocks
 * x SMs) walks the items; a block's 4 warps split the item's reduction
 * dimension in 32-element slices (the block reads 256 contiguous bytes of each
 * of the 16 rows per step), then add their partial sums in shared memory in
 * warp order (deterministic) and apply the epilogue.
 *
 * The multiply is mma.sync m16n8k16 with the operands swapped (weights are
 * the M side, 8 tokens the N side) and fragments loaded straight from global
 * memory with 16-byte loads (see dmoe_mma_swapped in cuda-common.cuh):
 * weights bypass L1, token rows stay in it. NT 8-token tiles are done per pass
 * over the weights; an expert with more rows than NT*8 takes several passes
 * (correct, just slower: the heuristics pick NT from the expected rows).
 *
 * With a per-expert pointer table (a->w_ptrs, from the expert cache) expert e's
 * weights are read at w_ptrs[e] instead of w + e * stride: a cache slot in
 * device memory or the expert's pinned host copy (zero-copy over PCIe). With
 * an install table (a->w_install) the kernel also stores what it read of
 * expert e into w_install[e] on its first pass: a cache miss then crosses PCIe
 * once, while the GEMM runs, instead of in a copy kernel before it.
 */
#include "cuda-common.cuh"
#include "cuda-context.h"
#include "gemm.h"
#include "heuristics.h"

#define STREAM_THREADS 128
#define STREAM_WARPS (STREAM_THREADS / 32)

typedef struct stream_params {
    const int32_t *offsets; /* (E+1) */
    const int32_t *pairs;   /* (T*K) */
    int32_t n_experts, top_k;
    int64_t k_dim;   /* reduction: H (GEMM1) or F (GEMM2) */
    int64_t n_dim;   /* F (GEMM1, features) or H (GEMM2, output rows) */
    int32_t n_tiles; /* items per expert */
    const void *a;   /* GEMM1: x (T, H); GEMM2: act (T*K, F) */
    const void *w;   /* GEMM1: w13 (E, 2F, H); GEMM2: w2 (E, H, F) */
    const void *const *w_ptrs; /* (E) per-expert weights, or NULL: w + e * stride */
    void *const *w_install;    /* (E) slot to copy expert e into while streaming it, or NULL */
    const int32_t *w_wait;     /* (E) experts to leave until after the grid dependency wait, or NULL */
    unsigned long long *w_stall_ns; /* with w_wait: += 1024 * this block's wait / gridDim.x, or NULL */
    const float *topk_w;
    void *out;       /* GEMM1: act; GEMM2: part */
} stream_params;

template <typename T, int NT, int U, bool GEMM1>
static __global__ void __launch_bounds__(STREAM_THREADS, 4)
stream_gemm_kernel(stream_params p) {
    __shared__ float s_red[STREAM_WARPS][NT * 4][32];
    __shared__ int s_active[1024];
    __shared__ int s_warp[33];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
    const int64_t K = p.k_dim, N = p.n_dim;
    const T *a = (const T *)p.a;
    const T *w = (const T *)p.w;
    T *out = (T *)p.out;
    /* With w_wait, only the experts it flags depend on the previous kernel (the expert cache's
     * copy kernel; everything else was written by kernels that finished before it started): do
     * the others first, then wait for the grid dependency and do the flagged ones. */
    const bool split = p.w_wait != nullptr;
    if (!split) dmoe_griddep_wait();
    const int n_active = dmoe_active_experts(p.offsets, p.n_experts, s_active, s_warp);
    const int64_t n_items = (int64_t)n_active * p.n_tiles;

    for (int phase = split ? 0 : 1; phase < 2; phase++) {
    if (split && phase == 1) {
        const unsigned long long t0 = dmoe_globaltimer();
        dmoe_griddep_wait();
        /* fixed point, 10 fraction bits: short waits of many blocks do not round to 0 */
        if (p.w_stall_ns && tid == 0) atomicAdd(p.w_stall_ns, ((dmoe_globaltimer() - t0) << 10) / gridDim.x);
    }
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int e = s_active[item / p.n_tiles];
        if (split && (p.w_wait[e] != 0) != (phase == 1)) continue; /* uniform in the block */
        const int tile = (int)(item % p.n_tiles);
        const int32_t seg = p.offsets[e];
        const int32_t m = p.offsets[e + 1] - seg;
        const T *wexp = p.w_ptrs ? (const T *)p.w_ptrs[e] : w + (int64_t)e * (GEMM1 ? 2 * N : N) * K;
        const T *wa, *wb;
        int64_t oa = -1, ob = -1; /* row offsets inside the expert */
        if (GEMM1) {
            const int64_t f = (int64_t)tile * 8 + g;
            if (f < N) oa = f * K, ob = (N + f) * K;
        } else {
            const int64_t h = (int64_t)tile * 16 + g;
            if (h < N) oa = h * K;
            if (h + 8 < N) ob = (h + 8) * K;
        }
        wa = oa >= 0 ? wexp + oa : nullptr;
        wb = ob >= 0 ? wexp + ob : nullptr;
        /* an install: the weights read (from host memory) are also written to the slot, once */
        T *inst = p.w_install ? (T *)p.w_install[e] : nullptr;
        T *ia = inst && oa >= 0 ? inst + oa : nullptr;
        T *ib = inst && ob >= 0 ? inst + ob : nullptr;
        for (int m0 = 0; m0 < m; m0 += NT * 8) {
            if (m0 > 0) ia = ib = nullptr; /* installed on the first pass */
            const T *xr[NT];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const int r = m0 + nt * 8 + g;
                if (r < m) {
                    const int64_t row = GEMM1 ? (int64_t)(p.pairs[seg + r] / p.top_k) : (int64_t)(seg + r);
                    xr[nt] = a + row * K;
                } else {
                    xr[nt] = nullptr;
                }
            }
            float acc[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
            for (int64_t kb = warp * 32; kb < K; kb += STREAM_THREADS * U) {
                uint4 va[U], vb[U], vx[U][NT];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int64_t kk = kb + u * STREAM_THREADS + q * 8;
                    const bool ok = kk < K;
                    va[u] = dmoe_ld_stream16_if(wa + kk, ok && wa);
                    vb[u] = dmoe_ld_stream16_if(wb + kk, ok && wb);
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
                        vx[u][nt] = dmoe_ld_cached16_if(xr[nt] + kk, ok && xr[nt]);
                }
                if (ia || ib) {
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        const int64_t kk = kb + u * STREAM_THREADS + q * 8;
                        if (kk < K) {
                            if (ia) *(uint4 *)(ia + kk) = va[u];
                            if (ib) *(uint4 *)(ib + kk) = vb[u];
                        }
                    }
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
            for (int idx = tid; idx < NT * 32; idx += STREAM_THREADS) {
                const int nt = idx >> 5, ln = idx & 31;
                float v[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    float s = 0.0f;
#pragma unroll
                    for (int w4 = 0; w4 < STREAM_WARPS; w4++) s += s_red[w4][nt * 4 + j][ln];
                    v[j] = s;
                }
                const int r0 = m0 + nt * 8 + 2 * (ln & 3), r1 = r0 + 1;
                if (GEMM1) {
                    /* rows g: gate of feature f, rows g+8: up of the same feature */
                    const int64_t f = (int64_t)tile * 8 + (ln >> 2);
                    if (f < N) {
                        if (r0 < m) out[(int64_t)(seg + r0) * N + f] = dmoe_dt<T>::from_f32(dmoe_silu(v[0]) * v[2]);
                        if (r1 < m) out[(int64_t)(seg + r1) * N + f] = dmoe_dt<T>::from_f32(dmoe_silu(v[1]) * v[3]);
                    }
                } else {
                    const int64_t h0 = (int64_t)tile * 16 + (ln >> 2), h1 = h0 + 8;
                    if (r0 < m) {
                        const float wt = p.topk_w[p.pairs[seg + r0]];
                        if (h0 < N) out[(int64_t)(seg + r0) * N + h0] = dmoe_dt<T>::from_f32(v[0] * wt);
                        if (h1 < N) out[(int64_t)(seg + r0) * N + h1] = dmoe_dt<T>::from_f32(v[2] * wt);
                    }
                    if (r1 < m) {
                        const float wt = p.topk_w[p.pairs[seg + r1]];
                        if (h0 < N) out[(int64_t)(seg + r1) * N + h0] = dmoe_dt<T>::from_f32(v[1] * wt);
                        if (h1 < N) out[(int64_t)(seg + r1) * N + h1] = dmoe_dt<T>::from_f32(v[3] * wt);
                    }
                }
            }
            __syncthreads();
        }
    }
    } /* phase */
}

template <typename T, int NT, int U, bool GEMM1>
static cudaError_t launch_stream(const dmoe_cuda_grouped_args *a, const stream_params &p,
                                 cudaStream_t stream, const dmoe_cuda_context *cc) {
    static int occ_cache[64];
    const int occ = dmoe_occupancy(stream_gemm_kernel<T, NT, U, GEMM1>, STREAM_THREADS, 0,
                                   cc->device, occ_cache);
    int64_t max_items = (a->n_rows < a->n_experts ? a->n_rows : a->n_experts) * (int64_t)p.n_tiles;
    int64_t grid = (int64_t)a->num_sms * occ;
    if (grid > max_items) grid = max_items;
    if (grid < 1) grid = 1;
    return dmoe_launch(stream_gemm_kernel<T, NT, U, GEMM1>, dim3((unsigned)grid),
                       dim3(STREAM_THREADS), 0, stream, cc->pdl, p);
}

template <typename T, bool GEMM1>
static cudaError_t stream_dispatch(const dmoe_cuda_grouped_args *a, const stream_params &p,
                                   cudaStream_t stream, const dmoe_cuda_context *cc) {
    const int tokens = dmoe__cuda_stream_tokens(a);
    if (tokens <= 8) return launch_stream<T, 1, 4, GEMM1>(a, p, stream, cc);
    if (tokens <= 16) return launch_stream<T, 2, 4, GEMM1>(a, p, stream, cc);
    if (tokens <= 32) return launch_stream<T, 4, 2, GEMM1>(a, p, stream, cc);
    return launch_stream<T, 8, 2, GEMM1>(a, p, stream, cc);
}

static stream_params stream_params_of(const dmoe_cuda_grouped_args *a, const void *act_in,
                                      const void *w, const float *topk_w, void *out, int gemm1) {
    stream_params p;
    memset(&p, 0, sizeof p);
    p.offsets = a->offsets;
    p.pairs = a->pairs;
    p.n_experts = a->n_experts;
    p.top_k = a->top_k;
    p.k_dim = a->k_dim;
    p.n_dim = a->n_dim;
    p.n_tiles = gemm1 ? (int32_t)((a->n_dim + 7) / 8) : (int32_t)((a->n_dim + 15) / 16);
    p.a = act_in;
    p.w = w;
    p.w_ptrs = a->w_ptrs;
    p.w_install = a->w_install;
    p.w_wait = a->w_wait;
    p.w_stall_ns = a->w_stall_ns;
    p.topk_w = topk_w;
    p.out = out;
    return p;
}

extern "C" dmoe_status dmoe__cuda_gemm1_stream(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                               const void *x, const void *w13, void *act,
                                               cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    stream_params p = stream_params_of(a, x, w13, NULL, act, 1);
    cudaError_t err = a->dtype == DMOE_DTYPE_BF16 ? stream_dispatch<dmoe_bf16, true>(a, p, stream, cc)
                                                  : stream_dispatch<dmoe_f16, true>(a, p, stream, cc);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_gemm2_stream(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                               const void *act, const void *w2,
                                               const float *topk_w, void *part,
                                               cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    stream_params p = stream_params_of(a, act, w2, topk_w, part, 0);
    cudaError_t err = a->dtype == DMOE_DTYPE_BF16 ? stream_dispatch<dmoe_bf16, false>(a, p, stream, cc)
                                                  : stream_dispatch<dmoe_f16, false>(a, p, stream, cc);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
