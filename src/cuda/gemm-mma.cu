/*
 * gemm-mma.cu: tiled mma.sync (m16n8k16, bf16/f16, fp32 accumulate) grouped
 * GEMMs for any size: the general fallback of the contract in cuda-ops.h, and
 * the router's logits GEMM at large T.
 *   GEMM1   act  (T*K, F) row s = silu(x[t] . W1_e) * (x[t] . W3_e), t = pairs[s]/K
 *   GEMM2   part (T*K, H) row s = topk_w[pairs[s]] * (act[s] . W2_e)
 *   LOGITS  logits (k_splits, T, E) float32: split s = x . router^T over the
 *           columns [s*k_chunk, (s+1)*k_chunk) (route_kernel sums the splits)
 * Both operands are K-contiguous rows (token or act rows on the A side,
 * weight rows on the B side), which is exactly mma's row.col form.
 *
 * A block computes BM x BN output tiles of a persistent tile list. Its first
 * act is a prefix over the experts of ceil(rows_e / BM) (the plan gives the
 * row segments), so a tile index maps to (expert, row tile, column tile) by a
 * binary search; inside an expert, tiles go in groups of 8 row tiles so that
 * the blocks running together share weight and activation tiles in L2.
 * Row pointers of the tile (gathered token rows for GEMM1) are resolved once
 * into shared memory; then BK = 32 slices stream through a STAGES-deep
 * cp.async ring (rows padded to 80 bytes: ldmatrix without bank conflicts),
 * with zero fill beyond the segment and beyond K. The last tile of a segment is
 * partial, handled by predication, never by padding copies.
 *
 * GEMM1 computes gate and up of the same features in one tile: B tile rows are
 * laid out per warp column as WTN/2 gate rows then the WTN/2 up rows of the
 * same features, so each thread holds both accumulators of a feature and the
 * SwiGLU happens in registers.
 *
 * Weight rows are addressed from the tile's expert base: w + e * stride, or
 * w_ptrs[e] when the caller passes a per-expert pointer table (the expert
 * cache: a slot in device memory or pinned host memory).
 */
#include "cuda-common.cuh"
#include "cuda-context.h"
#include "gemm.h"
#include "heuristics.h"

enum { MMA_LOGITS = 0, MMA_GEMM1 = 1, MMA_GEMM2 = 2 };

#define MMA_BK 32
#define MMA_PITCH (MMA_BK + 8)
#define MMA_GROUP_M 8

typedef struct mma_params {
    const int32_t *offsets; /* (E+1); unused for LOGITS */
    const int32_t *pairs;
    int32_t n_experts, top_k;
    int64_t m_rows;   /* LOGITS: T */
    int64_t k_dim;    /* K */
    int64_t n_dim;    /* F (GEMM1 features), H (GEMM2), E (LOGITS) */
    int32_t n_ntiles; /* column tiles */
    const void *a, *w;
    const void *const *w_ptrs; /* (E) per-expert weights, or NULL: w + e * stride */
    const float *topk_w;
    void *out;
    int32_t k_splits; /* LOGITS: partial sets along K (1 elsewhere) */
    int64_t k_chunk;  /* LOGITS: K columns per set, a multiple of MMA_BK */
} mma_params;

template <int BM, int BN, int STAGES>
static constexpr size_t mma_smem_bytes() {
    return (size_t)STAGES * (BM + BN) * MMA_PITCH * 2 + (size_t)(BM + BN) * sizeof(int64_t);
}

template <typename T, int BM, int BN, int WM, int WN, int STAGES, int MODE, int MINB>
static __global__ void __launch_bounds__(WM * WN * 32, MINB) mma_gemm_kernel(mma_params p) {
    constexpr int NTH = WM * WN * 32, BK = MMA_BK, PITCH = MMA_PITCH;
    constexpr int WTM = BM / WM, WTN = BN / WN, MI = WTM / 16, NI = WTN / 8;
    static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile");
    static_assert(MODE != MMA_GEMM1 || NI % 2 == 0, "GEMM1 needs gate and up halves");
    extern __shared__ __align__(16) unsigned char smem[];
    T *sA = (T *)smem;
    T *sB = sA + STAGES * BM * PITCH;
    int64_t *s_arow = (int64_t *)(sB + STAGES * BN * PITCH);
    int64_t *s_brow = s_arow + BM;
    __shared__ int s_tp[1025];
    __shared__ int s_warp[33];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN, g = lane >> 2, q = lane & 3;
    const int64_t K = p.k_dim, N = p.n_dim;
    const T *A = (const T *)p.a;
    const T *W = (const T *)p.w;
    const int NTN = p.n_ntiles;
    dmoe_griddep_wait();

    int total_mt;
    if (MODE == MMA_LOGITS) total_mt = (int)((p.m_rows + BM - 1) / BM);
    else total_mt = dmoe_tile_prefix(p.offsets, p.n_experts, BM, s_tp, s_warp);
    const int KS = MODE == MMA_LOGITS ? p.k_splits : 1;
    const int64_t n_tiles = (int64_t)total_mt * NTN * KS;

    for (int64_t tile_ks = blockIdx.x; tile_ks < n_tiles; tile_ks += gridDim.x) {
        /* LOGITS split along K: this tile sums columns [kbeg, kend) into partial set ks */
        const int ks_set = (int)(tile_ks % KS);
        const int64_t tile = tile_ks / KS;
        const int64_t kbeg = MODE == MMA_LOGITS ? (int64_t)ks_set * p.k_chunk : 0;
        const int64_t kend = MODE == MMA_LOGITS && kbeg + p.k_chunk < K ? kbeg + p.k_chunk : K;
        const int KT = (int)((kend - kbeg + BK - 1) / BK);
        const int gmt = (int)(tile / NTN);
        int e = 0, first_mt = 0, mte = total_mt;
        if (MODE != MMA_LOGITS) {
            int lo = 0, hi = p.n_experts;
            while (lo < hi) {
                const int mid = (lo + hi + 1) >> 1;
                if (s_tp[mid] <= gmt) lo = mid;
                else hi = mid - 1;
            }
            e = lo;
            first_mt = s_tp[e];
            mte = s_tp[e + 1] - first_mt;
        }
        const int64_t local = tile - (int64_t)first_mt * NTN;
        const int grp = (int)(local / (MMA_GROUP_M * NTN));
        const int gfirst = grp * MMA_GROUP_M;
        const int gsize = mte - gfirst < MMA_GROUP_M ? mte - gfirst : MMA_GROUP_M;
        const int rem = (int)(local - (int64_t)grp * MMA_GROUP_M * NTN);
        const int mt = gfirst + rem % gsize;
        const int nt = rem / gsize;
        int64_t row0;
        int rows;
        if (MODE == MMA_LOGITS) {
            row0 = (int64_t)mt * BM;
            rows = p.m_rows - row0 < BM ? (int)(p.m_rows - row0) : BM;
        } else {
            const int cnt = p.offsets[e + 1] - p.offsets[e];
            row0 = (int64_t)p.offsets[e] + (int64_t)mt * BM;
            rows = cnt - mt * BM < BM ? cnt - mt * BM : BM;
        }

        /* this tile's expert weights: (2F, H) for GEMM1, (H, F) for GEMM2 (LOGITS: the router) */
        const T *Wt = MODE == MMA_LOGITS ? W
                      : p.w_ptrs          ? (const T *)p.w_ptrs[e]
                                          : W + (int64_t)e * (MODE == MMA_GEMM1 ? 2 * N : N) * K;
        __syncthreads(); /* the previous tile is done with s_arow, s_brow and the ring */
        for (int r = tid; r < BM; r += NTH) {
            int64_t off = -1;
            if (r < rows) {
                if (MODE == MMA_GEMM1) off = (int64_t)(p.pairs[row0 + r] / p.top_k) * K;
                else off = (row0 + r) * K;
            }
            s_arow[r] = off;
        }
        for (int j = tid; j < BN; j += NTH) {
            int64_t off = -1;
            if (MODE == MMA_GEMM1) {
                const int wn_ = j / WTN, jj = j % WTN;
                const int half = jj / (WTN / 2);
                const int64_t f = (int64_t)nt * (BN / 2) + wn_ * (WTN / 2) + jj % (WTN / 2);
                if (f < N) off = ((int64_t)half * N + f) * K;
            } else {
                const int64_t c = (int64_t)nt * BN + j;
                if (c < N) off = c * K;
            }
            s_brow[j] = off;
        }
        __syncthreads();

        auto load_stage = [&](int st, int kt) {
            const int64_t k0 = kbeg + (int64_t)kt * BK;
            T *as = sA + st * BM * PITCH;
            T *bs = sB + st * BN * PITCH;
#pragma unroll
            for (int i = tid; i < BM * 4; i += NTH) {
                const int r = i >> 2, ch = i & 3;
                const int64_t kk = k0 + ch * 8, ro = s_arow[r];
                const bool ok = ro >= 0 && kk < kend;
                dmoe_cp_async16(as + r * PITCH + ch * 8, ok ? (const void *)(A + ro + kk) : (const void *)A, ok);
            }
#pragma unroll
            for (int i = tid; i < BN * 4; i += NTH) {
                const int r = i >> 2, ch = i & 3;
                const int64_t kk = k0 + ch * 8, ro = s_brow[r];
                const bool ok = ro >= 0 && kk < kend;
                dmoe_cp_async16(bs + r * PITCH + ch * 8, ok ? (const void *)(Wt + ro + kk) : (const void *)Wt, ok);
            }
        };

        float acc[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int ni = 0; ni < NI; ni++) acc[mi][ni][0] = acc[mi][ni][1] = acc[mi][ni][2] = acc[mi][ni][3] = 0.0f;

#pragma unroll
        for (int s = 0; s < STAGES - 1; s++) {
            if (s < KT) load_stage(s, s);
            dmoe_cp_async_commit();
        }
        for (int kt = 0; kt < KT; kt++) {
            dmoe_cp_async_wait<STAGES - 2>();
            __syncthreads();
            const int nk = kt + STAGES - 1;
            if (nk < KT) load_stage(nk % STAGES, nk);
            dmoe_cp_async_commit();
            const T *as = sA + (kt % STAGES) * BM * PITCH;
            const T *bs = sB + (kt % STAGES) * BN * PITCH;
#pragma unroll
            for (int ks = 0; ks < BK / 16; ks++) {
                uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; mi++)
                    dmoe_ldmatrix_x4(af[mi], as + (wm * WTM + mi * 16 + (lane & 15)) * PITCH + ks * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int nj = 0; nj < NI / 2; nj++) {
                    uint32_t r[4];
                    dmoe_ldmatrix_x4(r, bs + (wn * WTN + nj * 16 + (lane & 7) + ((lane >> 4) << 3)) * PITCH +
                                            ks * 16 + ((lane >> 3) & 1) * 8);
                    bfr[2 * nj][0] = r[0];
                    bfr[2 * nj][1] = r[1];
                    bfr[2 * nj + 1][0] = r[2];
                    bfr[2 * nj + 1][1] = r[3];
                }
#pragma unroll
                for (int mi = 0; mi < MI; mi++)
#pragma unroll
                    for (int ni = 0; ni < NI; ni++)
                        dmoe_mma16816<T>(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bfr[ni][0], bfr[ni][1]);
            }
        }
        dmoe_cp_async_wait<0>();

        /* epilogue: c0,c1 at (row g, cols 2q, 2q+1), c2,c3 at row g+8 */
#pragma unroll
        for (int mi = 0; mi < MI; mi++) {
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int r = wm * WTM + mi * 16 + g + half * 8;
                if (r >= rows) continue;
                const int64_t orow = row0 + r;
                float wt = 1.0f;
                if (MODE == MMA_GEMM2) wt = p.topk_w[p.pairs[orow]];
#pragma unroll
                for (int ni = 0; ni < (MODE == MMA_GEMM1 ? NI / 2 : NI); ni++) {
                    const float v0 = acc[mi][ni][half * 2], v1 = acc[mi][ni][half * 2 + 1];
                    const int col = wn * WTN + ni * 8 + 2 * q;
                    if (MODE == MMA_LOGITS) {
                        const int64_t c = (int64_t)nt * BN + col;
                        float *o = (float *)p.out + (int64_t)ks_set * p.m_rows * N + orow * N;
                        if (c < N) o[c] = v0;
                        if (c + 1 < N) o[c + 1] = v1;
                    } else if (MODE == MMA_GEMM1) {
                        const int64_t f = (int64_t)nt * (BN / 2) + wn * (WTN / 2) + ni * 8 + 2 * q;
                        if (f < N) {
                            const float u0 = acc[mi][ni + NI / 2][half * 2], u1 = acc[mi][ni + NI / 2][half * 2 + 1];
                            *(uint32_t *)((T *)p.out + orow * N + f) =
                                dmoe_dt<T>::pack2(dmoe_silu(v0) * u0, dmoe_silu(v1) * u1);
                        }
                    } else {
                        const int64_t h = (int64_t)nt * BN + col;
                        if (h < N) *(uint32_t *)((T *)p.out + orow * N + h) = dmoe_dt<T>::pack2(v0 * wt, v1 * wt);
                    }
                }
            }
        }
    }
}

/* Two tile configurations: L (128x128, 8 warps) for many rows per expert, S
 * (64x128, 4 warps) for a few dozen. */
template <typename T, int MODE, bool LARGE>
static cudaError_t launch_mma(const mma_params &p, int64_t tile_bound, int num_sms,
                              cudaStream_t stream, const dmoe_cuda_context *cc) {
    constexpr int BM = LARGE ? 128 : 64, BN = 128, WM = 2, WN = LARGE ? 4 : 2, STAGES = 4;
    constexpr int MINB = LARGE ? 2 : 3;
    auto kernel = mma_gemm_kernel<T, BM, BN, WM, WN, STAGES, MODE, MINB>;
    const size_t smem = mma_smem_bytes<BM, BN, STAGES>();
    static unsigned long long smem_done = 0;
    static int occ_cache[64];
    cudaError_t err = dmoe_set_smem(kernel, smem, cc->device, &smem_done);
    if (err != cudaSuccess) return err;
    const int occ = dmoe_occupancy(kernel, WM * WN * 32, smem, cc->device, occ_cache);
    int64_t grid = (int64_t)num_sms * occ;
    if (grid > tile_bound) grid = tile_bound;
    if (grid < 1) grid = 1;
    return dmoe_launch(kernel, dim3((unsigned)grid), dim3(WM * WN * 32), smem, stream, cc->pdl, p);
}

template <int MODE>
static dmoe_status grouped_mma(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, const void *in,
                               const void *w, const float *topk_w, void *out, cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    mma_params p;
    memset(&p, 0, sizeof p);
    p.offsets = a->offsets;
    p.pairs = a->pairs;
    p.n_experts = a->n_experts;
    p.top_k = a->top_k;
    p.k_dim = a->k_dim;
    p.n_dim = a->n_dim;
    p.a = in;
    p.w = w;
    p.w_ptrs = a->w_ptrs;
    p.topk_w = topk_w;
    p.out = out;
    const bool large = dmoe__cuda_mma_rows(a) >= 128;
    const int bm = large ? 128 : 64;
    p.n_ntiles = MODE == MMA_GEMM1 ? (int32_t)((a->n_dim + 63) / 64) : (int32_t)((a->n_dim + 127) / 128);
    const int64_t busy = a->n_rows < a->n_experts ? a->n_rows : a->n_experts;
    const int64_t tile_bound = ((a->n_rows + bm - 1) / bm + busy) * p.n_ntiles;
    cudaError_t err;
    if (a->dtype == DMOE_DTYPE_BF16)
        err = large ? launch_mma<dmoe_bf16, MODE, true>(p, tile_bound, a->num_sms, stream, cc)
                    : launch_mma<dmoe_bf16, MODE, false>(p, tile_bound, a->num_sms, stream, cc);
    else
        err = large ? launch_mma<dmoe_f16, MODE, true>(p, tile_bound, a->num_sms, stream, cc)
                    : launch_mma<dmoe_f16, MODE, false>(p, tile_bound, a->num_sms, stream, cc);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_gemm1_mma(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                            const void *x, const void *w13, void *act,
                                            cudaStream_t stream) {
    return grouped_mma<MMA_GEMM1>(ctx, a, x, w13, NULL, act, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm2_mma(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                            const void *act, const void *w2, const float *topk_w,
                                            void *part, cudaStream_t stream) {
    return grouped_mma<MMA_GEMM2>(ctx, a, act, w2, topk_w, part, stream);
}

extern "C" dmoe_status dmoe__cuda_logits_mma(dmoe_context *ctx, const void *x, const void *router,
                                             int64_t n_tokens, int64_t hidden, int32_t n_experts,
                                             int32_t k_splits, int64_t k_chunk, dmoe_dtype dtype,
                                             float *logits, cudaStream_t stream) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    mma_params p;
    memset(&p, 0, sizeof p);
    p.m_rows = n_tokens;
    p.k_dim = hidden;
    p.n_dim = n_experts;
    p.n_experts = 1;
    p.a = x;
    p.w = router;
    p.out = logits;
    p.n_ntiles = (n_experts + 127) / 128;
    p.k_splits = k_splits > 1 ? k_splits : 1;
    p.k_chunk = k_splits > 1 ? k_chunk : hidden;
    DMOE_ASSERT(p.k_chunk % MMA_BK == 0 || p.k_splits == 1);
    const int64_t tile_bound = (n_tokens + 127) / 128 * p.n_ntiles * p.k_splits;
    cudaError_t err = dtype == DMOE_DTYPE_BF16
                          ? launch_mma<dmoe_bf16, MMA_LOGITS, true>(p, tile_bound, cc->num_sms, stream, cc)
                          : launch_mma<dmoe_f16, MMA_LOGITS, true>(p, tile_bound, cc->num_sms, stream, cc);
    DMOE_CUDA_CHECK(ctx, err);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}
