/*
 * fused-moe.cu: the whole MoE forward in one persistent launch (FlashDMoE
 * design), for decode-sized batches (few tokens per expert).
 *
 * Phases, with counters instead of grid-wide barriers:
 *   ROUTE   every warp of the grid computes router logits (T, E) for a strided
 *           set of experts (the router is read from HBM once); each block then
 *           arrives on a counter.
 *   PLAN    the LAST block to arrive does top-k per token (softmax | sigmoid,
 *           bias, groups, renorm, scaling: the rules of dmoe.h, in float), the
 *           stable grouping of (token, k) pairs by expert, and the segment
 *           table; then it raises a flag the other blocks wait on.
 *   TASKS   warps claim tasks from one atomic counter, in order:
 *           GEMM1(seg, 8 features): act[slot, f] = silu(x.W1[f]) * (x.W3[f]) for
 *               all tokens of the segment; arrives on done1[seg];
 *           GEMM2(seg, 16 rows of H): part[slot, h] = w_slot * act[slot] . W2[h];
 *               it prefetches its W2 rows into L2, then waits for done1[seg];
 *               arrives on done2[h tile]; the warp that completes an h tile
 *               COMBINES it: y[t, h] = sum over k in order of part[slot_of(t,k), h]
 *               plus the shared experts, so the output is bitwise deterministic.
 *   EXIT    the last block to leave resets every counter to zero, so the next
 *           launch (or a CUDA-graph replay) starts clean without a memset.
 * All blocks must be resident (they wait on each other): the launch is
 * cooperative, the grid sized with the occupancy API.
 *
 * Tensor cores with the operands swapped ("swap AB"): the weight rows are the
 * M side of mma.sync m16n8k16 (16 weight rows) and the tokens the N side (8),
 * so a single token wastes nothing of the weight stream. The k order inside
 * each 32-wide step is permuted identically for A and B, which lets every
 * thread load 16 contiguous bytes of a weight row and of a token row straight
 * into its fragment registers (no shared memory, no ldmatrix):
 *   thread (g = lane/4, c = lane%4) loads W[row g][kb+8c..+7], W[row g+8][..],
 *   X[token g][kb+8c..+7]; mma #1 takes the first 4 elements of each, mma #2
 *   the last 4.
 * In GEMM1 the 16 rows are 8 gate rows and the 8 up rows of the SAME features,
 * so SwiGLU happens in registers.
 *
 * Layouts (T tokens, K = top_k, S shared experts, P = T*K + S*T slots):
 *   x (T, H), router (E, H), w13 (E, 2F, H), w2 (E, H, F), y (T, H)
 *   workspace: counters | logits (T, E+1) | slot_token (P) | slot_weight (P) |
 *              slot_of (T*K) | seg tables | act (P, Fmax) | part (P, H) float
 */
#include <float.h>

#include "cuda-common.cuh"
#include "fused-moe.h"

#ifndef FM_THREADS
#define FM_THREADS 128
#endif
#define FM_WARPS (FM_THREADS / 32)
#define FM_TOPK_WARPS FM_WARPS
#ifndef FM_MIN_BLOCKS
#define FM_MIN_BLOCKS 4 /* blocks per SM the register budget is cut for */
#endif

/* Counter block at the start of the workspace (uint32 each). */
enum { C_ARRIVE = 0, C_FLAG, C_TASK, C_EXIT, C_RTASK, C_NSEG, C_NROUTED, C_NTASK1, C_NTASK, C_HEADER = 32 };

typedef struct fm_layout {
    uint32_t *ctr;      /* (C_HEADER) */
    uint32_t *done1;    /* (E + S) */
    uint32_t *done2;    /* (ceil(H/16)) */
    float *logits;      /* (T, E + 1) */
    int32_t *slot_token;/* (P) */
    float *slot_weight; /* (P) */
    int32_t *slot_of;   /* (T*K) */
    int32_t *seg_begin, *seg_count, *seg_expert; /* (E + S) */
    uint16_t *act;      /* (P, Fmax) */
    float *part;        /* (P, H) */
} fm_layout;

static __host__ __device__ size_t align_up(size_t v) { return (v + 255) & ~(size_t)255; }

/* Carves the workspace; returns its total size. base may be NULL (sizing). */
static __host__ __device__ size_t fm_carve(void *base, int64_t T, int32_t H, int32_t F, int32_t Fs,
                                           int32_t E, int32_t K, int32_t S, fm_layout *L) {
    const size_t P = (size_t)T * K + (size_t)S * T, nseg = (size_t)E + S, ht = ((size_t)H + 15) / 16;
    const size_t fmax = (size_t)(F > Fs ? F : Fs);
    size_t off = 0;
    char *b = (char *)base;
#define FM_TAKE(field, type, count)                             \
    do {                                                        \
        if (L) L->field = (type *)(b ? b + off : NULL);         \
        off += align_up(sizeof(type) * (size_t)(count));        \
    } while (0)
    FM_TAKE(ctr, uint32_t, C_HEADER);
    FM_TAKE(done1, uint32_t, nseg);
    FM_TAKE(done2, uint32_t, ht);
    FM_TAKE(logits, float, (size_t)T * (E + 1));
    FM_TAKE(slot_token, int32_t, P);
    FM_TAKE(slot_weight, float, P);
    FM_TAKE(slot_of, int32_t, (size_t)T * K);
    FM_TAKE(seg_begin, int32_t, nseg);
    FM_TAKE(seg_count, int32_t, nseg);
    FM_TAKE(seg_expert, int32_t, nseg);
    FM_TAKE(act, uint16_t, P * fmax);
    FM_TAKE(part, float, P * (size_t)H);
#undef FM_TAKE
    return off;
}

/* ---- small device helpers ---- */

/* Data other blocks wrote in this launch: through L2 (an intrinsic, so the
 * compiler keeps it after the acquire that guards it). */
static __device__ __forceinline__ uint4 ld_l2(const void *p) { return __ldcg((const uint4 *)p); }
static __device__ __forceinline__ float ld_l2f(const float *p) { return __ldcg(p); }
static __device__ __forceinline__ int ld_l2i(const int32_t *p) { return __ldcg(p); }
static __device__ __forceinline__ uint32_t ld_acquire(const uint32_t *p) {
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void st_release(uint32_t *p, uint32_t v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
static __device__ __forceinline__ void wait_at_least(const uint32_t *p, uint32_t target) {
    unsigned ns = 32;
    while (ld_acquire(p) < target) { /* back off: thousands of warps may poll one line */
        __nanosleep(ns);
        ns = ns < 512 ? ns * 2 : ns;
    }
}

static __device__ __forceinline__ float sanitize(float v) {
    if (isnan(v)) return -FLT_MAX;
    return fminf(fmaxf(v, -FLT_MAX), FLT_MAX);
}

/* Better candidate: higher value, then lower index. */
static __device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}
static __device__ __forceinline__ void warp_argmax(float &v, int &i) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}
#ifdef FM_TRACE
/* Development only: per block, globaltimer at entry, arrival, start of tasks, exit. */
__device__ unsigned long long fm_trace[4 * 4096];
static __device__ __forceinline__ void trace(int i) {
    if (threadIdx.x == 0 && blockIdx.x < 4096) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        fm_trace[4 * blockIdx.x + i] = t;
    }
}
__device__ unsigned long long fm_wtrace[4 * 65536]; /* per warp: kind, start, wait end, end */
static __device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#else
static __device__ __forceinline__ void trace(int) {}
#endif

/* ---- PLAN: top-k per token, then the stable grouping; run by one block ---- */
static __device__ void topk_token(const dmoe_fused_args &a, const fm_layout &L, int t, float *sc, float *ch,
                                  float *gs) {
    const int lane = threadIdx.x & 31, E = a.n_experts, K = a.top_k;
    const float *lg = L.logits + (size_t)t * (E + 1);
    for (int e = lane; e < E; e += 32) sc[e] = sanitize(ld_l2f(lg + e));
    __syncwarp();
    if (a.scoring == DMOE_SCORING_SOFTMAX) {
        float m = -FLT_MAX;
        for (int e = lane; e < E; e += 32) m = fmaxf(m, sc[e]);
        m = dmoe_warp_max(m);
        float s = 0.f;
        for (int e = lane; e < E; e += 32) {
            sc[e] = __expf(sc[e] - m);
            s += sc[e];
        }
        s = dmoe_warp_sum(s);
        const float inv = __frcp_rn(s);
        for (int e = lane; e < E; e += 32) sc[e] *= inv;
    } else {
        for (int e = lane; e < E; e += 32) sc[e] = __frcp_rn(1.f + __expf(-sc[e]));
    }
    for (int e = lane; e < E; e += 32) ch[e] = sc[e] + (a.use_bias ? a.bias[e] : 0.f);
    __syncwarp();
    if (a.n_group > 1) {
        const int G = a.n_group, per = E / G;
        for (int g = lane; g < G; g += 32) { /* top-2 sum of each group (top-1 if per == 1) */
            float b1 = -INFINITY, b2 = -INFINITY;
            int i1 = -1;
            for (int i = 0; i < per; i++) {
                float v = ch[g * per + i];
                if (i1 < 0 || v > b1) {
                    b2 = b1;
                    b1 = v;
                    i1 = i;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            gs[g] = per > 1 ? b1 + b2 : b1;
        }
        __syncwarp();
        /* a group is kept when fewer than topk_group groups rank before it */
        for (int g = lane; g < G; g += 32) {
            int rank = 0;
            for (int o = 0; o < G; o++) rank += better(gs[o], o, gs[g], g);
            if (rank >= a.topk_group)
                for (int i = 0; i < per; i++) ch[g * per + i] = -INFINITY;
        }
        __syncwarp();
    }
    float wsum = 0.f, wk = 0.f;
    int idk = 0;
    for (int k = 0; k < K; k++) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32)
            if (ch[e] != -INFINITY && better(ch[e], e, bv, bi)) {
                bv = ch[e];
                bi = e;
            }
        warp_argmax(bv, bi);
        if (lane == k) idk = bi;
        float s = sc[bi];
        if (lane == k) wk = s;
        wsum += s;
        __syncwarp();
        if (lane == 0) ch[bi] = -INFINITY;
        __syncwarp();
    }
    if (lane < K) {
        float w = wk;
        if (a.renormalize && wsum > 0.f) w = __fdividef(w, wsum);
        a.topk_ids[t * K + lane] = idk;
        a.topk_w[t * K + lane] = w * a.scale;
    }
    __syncwarp();
}

static __device__ void plan_role(const dmoe_fused_args &a, const fm_layout &L, char *smem) {
    const int E = a.n_experts, K = a.top_k, T = a.n_tokens, S = a.n_shared;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int *cnt = (int *)smem;                 /* (E) pairs per expert, then the cursor */
    int *sbase = cnt + E;                   /* (E) first slot of each expert */
    float *fbuf = (float *)(sbase + E);     /* FM_TOPK_WARPS x 3E */
    if (!a.route_from_ids) {
        if (warp < FM_TOPK_WARPS) {
            float *sc = fbuf + (size_t)warp * 3 * E;
            for (int t = warp; t < T; t += FM_TOPK_WARPS) topk_token(a, L, t, sc, sc + E, sc + 2 * E);
        }
        __threadfence_block();
    }
    for (int e = threadIdx.x; e < E; e += FM_THREADS) cnt[e] = 0;
    __syncthreads();
    const int P = T * K;
    for (int p = threadIdx.x; p < P; p += FM_THREADS) {
        int e = a.topk_ids[p];
        if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (warp == 0) {
        /* expert order: slot bases and the segment table, 32 experts per step */
        int run = 0, nseg = 0;
        for (int e0 = 0; e0 < E; e0 += 32) {
            int e = e0 + lane, c = e < E ? cnt[e] : 0;
            int incl = c;
            for (int o = 1; o < 32; o <<= 1) {
                int v = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += v;
            }
            unsigned act = __ballot_sync(0xffffffffu, c > 0);
            int si = nseg + __popc(act & ((1u << lane) - 1));
            if (e < E) sbase[e] = run + incl - c;
            if (c > 0) {
                L.seg_begin[si] = run + incl - c;
                L.seg_count[si] = c;
                L.seg_expert[si] = e;
            }
            run += __shfl_sync(0xffffffffu, incl, 31);
            nseg += __popc(act);
        }
        for (int s = lane; s < S; s += 32) {
            L.seg_begin[nseg + s] = P + s * T;
            L.seg_count[nseg + s] = T;
            L.seg_expert[nseg + s] = -1 - s;
        }
        nseg += S;
        if (lane == 0) { /* routed segments have F/8 GEMM1 tasks each, shared ones Fs/8 */
            const int n1 = (nseg - S) * (a.ffn / 8) + S * (a.shared_ffn / 8);
            L.ctr[C_NSEG] = (uint32_t)nseg;
            L.ctr[C_NROUTED] = (uint32_t)(nseg - S);
            L.ctr[C_NTASK1] = (uint32_t)n1;
            L.ctr[C_NTASK] = (uint32_t)(n1 + nseg * ((a.hidden + 15) / 16));
        }
        __syncwarp();
        /* stable slots: pairs in order, 32 at a time; peers with the same expert
         * take consecutive slots in pair order */
        for (int p0 = 0; p0 < P; p0 += 32) {
            int p = p0 + lane;
            int e = p < P ? a.topk_ids[p] : -1;
            bool ok = p < P && e >= 0 && e < E;
            unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
            int rank = __popc(peers & ((1u << lane) - 1));
            int leader = __ffs(peers) - 1;
            int base = ok && lane == leader ? sbase[e] : 0;
            base = __shfl_sync(0xffffffffu, base, leader);
            __syncwarp();
            if (ok) {
                int s = base + rank;
                L.slot_token[s] = p / K;
                L.slot_weight[s] = a.topk_w[p];
                L.slot_of[p] = s;
                if (lane == leader) sbase[e] = base + __popc(peers);
            } else if (p < P) {
                L.slot_of[p] = -1;
            }
            __syncwarp();
        }
    }
    __syncthreads();
    /* shared-expert slots: weight 1, or the sigmoid gate of the token */
    for (int i = threadIdx.x; i < S * T; i += FM_THREADS) {
        int t = i % T;
        float g = 1.f;
        if (a.shared_gate) g = __frcp_rn(1.f + __expf(-ld_l2f(L.logits + (size_t)t * (E + 1) + E)));
        L.slot_token[P + i] = t;
        L.slot_weight[P + i] = g;
    }
}

/* ---- TASKS: one block per task; its 8 warps split the reduction ---- */

/* 32-wide k steps whose loads are issued before the first mma: 8 for one
 * token tile, fewer when more token tiles hold registers. */
#define FM_UNROLL (8 / NT)

/* acc[j] += W[rows lo/hi] . B[j] over k in [k0, k1): 16 weight rows (lo: row g,
 * hi: row g + 8) against NT tiles of 8 token rows (brow[j]: this thread's row,
 * or NULL for padding; bvalid: any real row, read in its place and masked).
 * Loads are unconditional (k past the end reads k0) and masked afterwards, so
 * the compiler issues all FM_UNROLL steps of loads before the first mma. */
template <typename DT, int NT, bool B_L2>
static __device__ __forceinline__ void mma_rows(const uint16_t *rlo, const uint16_t *rhi, int k0, int k1,
                                                const uint16_t *const (&brow)[NT], const uint16_t *bvalid,
                                                float (&acc)[NT][4]) {
    const int c = threadIdx.x & 3;
    const uint32_t mlo = rlo ? ~0u : 0u, mhi = rhi ? ~0u : 0u;
    const uint16_t *plo = rlo ? rlo : (rhi ? rhi : bvalid), *phi = rhi ? rhi : plo;
    uint32_t mb[NT];
    const uint16_t *pb[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        mb[j] = brow[j] ? ~0u : 0u;
        pb[j] = brow[j] ? brow[j] : bvalid;
    }
    for (int kb = k0; kb < k1; kb += 32 * FM_UNROLL) {
        uint4 lo[FM_UNROLL], hi[FM_UNROLL], b[FM_UNROLL][NT];
        uint32_t mk[FM_UNROLL];
#pragma unroll
        for (int u = 0; u < FM_UNROLL; u++) {
            int k = kb + 32 * u + 8 * c;
            mk[u] = k < k1 ? ~0u : 0u;
            k = k < k1 ? k : k0;
            lo[u] = dmoe_ld_stream16(plo + k);
            hi[u] = dmoe_ld_stream16(phi + k);
#pragma unroll
            for (int j = 0; j < NT; j++)
                b[u][j] = B_L2 ? ld_l2(pb[j] + k) : __ldg((const uint4 *)(pb[j] + k));
        }
#pragma unroll
        for (int u = 0; u < FM_UNROLL; u++) {
            const uint32_t ml = mlo & mk[u], mh = mhi & mk[u];
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const uint32_t m = mb[j];
                const uint4 wa = make_uint4(lo[u].x & ml, lo[u].y & ml, lo[u].z & ml, lo[u].w & ml);
                const uint4 wb = make_uint4(hi[u].x & mh, hi[u].y & mh, hi[u].z & mh, hi[u].w & mh);
                const uint4 xv = make_uint4(b[u][j].x & m, b[u][j].y & m, b[u][j].z & m, b[u][j].w & m);
                dmoe_mma_swapped<DT>(acc[j], wa, wb, xv);
            }
        }
    }
}

/* The block's 16 x 8NT tile: warp w reduces its slice of k, the slices are
 * summed in warp order through shared memory (deterministic). The result is
 * valid in warp 0 only. red: FM_WARPS * NT * 128 floats. */
template <typename DT, int NT, bool B_L2>
static __device__ __forceinline__ void block_mma(const uint16_t *rlo, const uint16_t *rhi, int kbeg, int kend,
                                                 const uint16_t *const (&brow)[NT], const uint16_t *bvalid,
                                                 float (&acc)[NT][4], float *red) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slice = ((kend - kbeg + FM_WARPS - 1) / FM_WARPS + 31) / 32 * 32;
    const int k0 = kbeg + warp * slice, k1 = min(kend, k0 + slice);
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    if (k0 < k1) mma_rows<DT, NT, B_L2>(rlo, rhi, k0, k1, brow, bvalid, acc);
    if (warp > 0) {
#pragma unroll
        for (int j = 0; j < NT; j++)
            *(float4 *)(red + ((warp * NT + j) * 32 + lane) * 4) = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    }
    __syncthreads();
    if (warp == 0) {
        for (int w = 1; w < FM_WARPS; w++) {
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const float4 v = *(const float4 *)(red + ((w * NT + j) * 32 + lane) * 4);
                acc[j][0] += v.x;
                acc[j][1] += v.y;
                acc[j][2] += v.z;
                acc[j][3] += v.w;
            }
        }
    }
    __syncthreads();
}

/* ROUTE task: logits[t][r] for 16 router rows r0.. (row E is the shared
 * gate's) and every token, in passes of 8NT tokens. */
template <typename DT, int NT>
static __device__ void route_pass(const dmoe_fused_args &a, const fm_layout &L, int r0, int p0, float *red) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, H = a.hidden, E = a.n_experts, T = a.n_tokens;
    const int rows = E + (a.shared_gate ? 1 : 0);
    auto row = [&](int r) -> const uint16_t * {
        if (r >= rows) return nullptr;
        return r < E ? (const uint16_t *)a.router + (size_t)r * H : (const uint16_t *)a.shared_gate_w;
    };
    const uint16_t *brow[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int t = p0 + 8 * j + g;
        brow[j] = t < T ? (const uint16_t *)a.x + (size_t)t * H : nullptr;
    }
    float acc[NT][4];
    block_mma<DT, NT, false>(row(r0 + g), row(r0 + 8 + g), 0, H, brow, (const uint16_t *)a.x + (size_t)p0 * H, acc,
                               red);
    float *lg = L.logits;
    if ((threadIdx.x >> 5) == 0) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int q = 0; q < 2; q++) {
                const int t = p0 + 8 * j + 2 * c + q;
                if (t >= T) continue;
                if (r0 + g < rows) lg[(size_t)t * (E + 1) + r0 + g] = acc[j][q];
                if (r0 + 8 + g < rows) lg[(size_t)t * (E + 1) + r0 + 8 + g] = acc[j][2 + q];
            }
    }
}

/* GEMM1 pass over up to 8NT tokens: rows g = gate of feature f0+g, rows g+8 =
 * up of the same feature; columns = tokens 2c, 2c+1 of each tile. */
template <typename DT, int NT>
static __device__ void gemm1_pass(const dmoe_fused_args &a, const fm_layout &L, const uint16_t *wg,
                                  const uint16_t *wu, int begin, int n, int p0, int f0, size_t fstride, float *red) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, H = a.hidden;
    const uint16_t *brow[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int r = p0 + 8 * j + g;
        brow[j] = r < n ? (const uint16_t *)a.x + (size_t)ld_l2i(L.slot_token + begin + r) * H : nullptr;
    }
    const uint16_t *bvalid = (const uint16_t *)a.x + (size_t)ld_l2i(L.slot_token + begin + p0) * H;
    float acc[NT][4];
    block_mma<DT, NT, false>(wg, wu, 0, H, brow, bvalid, acc, red);
    if ((threadIdx.x >> 5) == 0) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int q = 0; q < 2; q++) {
                const int r = p0 + 8 * j + 2 * c + q;
                if (r < n) {
                    const float gt = acc[j][q], up = acc[j][2 + q];
                    reinterpret_cast<DT *>(L.act)[(size_t)(begin + r) * fstride + f0 + g] =
                        dmoe_dt<DT>::from_f32(__fdividef(gt, 1.f + __expf(-gt)) * up);
                }
            }
    }
}

template <typename DT, int NT>
static __device__ void gemm2_pass(const dmoe_fused_args &a, const fm_layout &L, const uint16_t *rlo,
                                  const uint16_t *rhi, int F, int begin, int n, int p0, int hlo, int hhi,
                                  size_t fstride, float *red) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, H = a.hidden;
    const uint16_t *brow[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int r = p0 + 8 * j + g;
        brow[j] = r < n ? L.act + (size_t)(begin + r) * fstride : nullptr;
    }
    float acc[NT][4];
    block_mma<DT, NT, true>(rlo, rhi, 0, F, brow, L.act + (size_t)(begin + p0) * fstride, acc, red);
    if ((threadIdx.x >> 5) == 0) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int q = 0; q < 2; q++) {
                const int r = p0 + 8 * j + 2 * c + q;
                if (r < n) {
                    const float w = ld_l2f(L.slot_weight + begin + r);
                    float *prow = L.part + (size_t)(begin + r) * H;
                    if (rlo) prow[hlo] = w * acc[j][q];
                    if (rhi) prow[hhi] = w * acc[j][2 + q];
                }
            }
    }
}

/* Runs pass<NT> over n rows in chunks of 32, picking NT by what is left. */
#define FM_PASSES(n, CALL1, CALL2, CALL4)              \
    for (int p0 = 0; p0 < (n); p0 += 32) {             \
        const int left_ = (n) - p0;                    \
        if (left_ <= 8) CALL1;                         \
        else if (left_ <= 16) CALL2;                   \
        else CALL4;                                    \
    }

template <typename DT>
static __device__ void gemm1_task(const dmoe_fused_args &a, const fm_layout &L, int seg, int tile, float *red) {
    const int g = (threadIdx.x & 31) >> 2;
    const int H = a.hidden, ex = ld_l2i(L.seg_expert + seg);
    const int F = ex >= 0 ? a.ffn : a.shared_ffn;
    const uint16_t *w13 = ex >= 0 ? (const uint16_t *)a.w13 + (size_t)ex * 2 * F * H
                                  : (const uint16_t *)a.shared_w13 + (size_t)(-1 - ex) * 2 * F * H;
    const int f0 = tile * 8;
    const uint16_t *wg = w13 + (size_t)(f0 + g) * H, *wu = w13 + (size_t)(F + f0 + g) * H;
    const int begin = ld_l2i(L.seg_begin + seg), n = ld_l2i(L.seg_count + seg);
    const size_t fstride = (size_t)(a.ffn > a.shared_ffn ? a.ffn : a.shared_ffn);
    FM_PASSES(n, (gemm1_pass<DT, 1>(a, L, wg, wu, begin, n, p0, f0, fstride, red)),
              (gemm1_pass<DT, 2>(a, L, wg, wu, begin, n, p0, f0, fstride, red)),
              (gemm1_pass<DT, 4>(a, L, wg, wu, begin, n, p0, f0, fstride, red)))
    if (threadIdx.x < 32) __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(L.done1 + seg, 1u);
}

template <typename DT>
static __device__ void combine_tile(const dmoe_fused_args &a, const fm_layout &L, int h0) {
    const int T = a.n_tokens, K = a.top_k, H = a.hidden, P = T * K;
    DT *y = (DT *)a.y;
    for (int i = threadIdx.x; i < T * 16; i += FM_THREADS) {
        const int t = i >> 4, h = h0 + (i & 15);
        if (h >= H) continue;
        float s = 0.f;
        for (int k = 0; k < K; k++) {
            const int slot = ld_l2i(L.slot_of + t * K + k);
            if (slot >= 0) s += ld_l2f(L.part + (size_t)slot * H + h);
        }
        for (int j = 0; j < a.n_shared; j++) s += ld_l2f(L.part + (size_t)(P + j * T + t) * H + h);
        y[(size_t)t * H + h] = dmoe_dt<DT>::from_f32(s);
    }
}

template <typename DT>
static __device__ void gemm2_task(const dmoe_fused_args &a, const fm_layout &L, int seg, int htile, int nseg,
                                  float *red, uint32_t *s_word) {
    const int g = (threadIdx.x & 31) >> 2;
    const int H = a.hidden, ex = ld_l2i(L.seg_expert + seg);
    const int F = ex >= 0 ? a.ffn : a.shared_ffn;
    const uint16_t *w2 = ex >= 0 ? (const uint16_t *)a.w2 + (size_t)ex * H * F
                                 : (const uint16_t *)a.shared_w2 + (size_t)(-1 - ex) * H * F;
    const int h0 = htile * 16, hlo = h0 + g, hhi = h0 + 8 + g;
    const uint16_t *rlo = hlo < H ? w2 + (size_t)hlo * F : nullptr;
    const uint16_t *rhi = hhi < H ? w2 + (size_t)hhi * F : nullptr;
    if (threadIdx.x == 0) wait_at_least(L.done1 + seg, (uint32_t)(F / 8));
#ifdef FM_TRACE
    if (threadIdx.x == 0 && blockIdx.x < 4096 && fm_wtrace[4 * blockIdx.x + 2] == 0) fm_wtrace[4 * blockIdx.x + 2] = gtime();
#endif
    __syncthreads();
    const int begin = ld_l2i(L.seg_begin + seg), n = ld_l2i(L.seg_count + seg);
    const size_t fstride = (size_t)(a.ffn > a.shared_ffn ? a.ffn : a.shared_ffn);
    FM_PASSES(n, (gemm2_pass<DT, 1>(a, L, rlo, rhi, F, begin, n, p0, hlo, hhi, fstride, red)),
              (gemm2_pass<DT, 2>(a, L, rlo, rhi, F, begin, n, p0, hlo, hhi, fstride, red)),
              (gemm2_pass<DT, 4>(a, L, rlo, rhi, F, begin, n, p0, hlo, hhi, fstride, red)))
    if (threadIdx.x < 32) __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *s_word = atomicAdd(L.done2 + htile, 1u);
    __syncthreads();
    if (*s_word == (uint32_t)nseg - 1) { /* this block completed the h tile: combine it */
        __threadfence();
        combine_tile<DT>(a, L, h0);
    }
}

/* Claims a task number for the whole block from counter ctr. */
static __device__ __forceinline__ uint32_t claim(uint32_t *ctr, uint32_t *s_word) {
    __syncthreads();
    if (threadIdx.x == 0) *s_word = atomicAdd(ctr, 1u);
    __syncthreads();
    return *s_word;
}

template <typename DT> static __device__ void route_role(const dmoe_fused_args &a, const fm_layout &L, float *red,
                                                       uint32_t *s_word) {
    const int E = a.n_experts, rows = E + (a.shared_gate ? 1 : 0);
    /* with caller-supplied routing only the shared gate's row is needed */
    const int first = a.route_from_ids ? E : 0, n = (rows - first + 15) / 16;
    for (;;) {
        const uint32_t task = claim(L.ctr + C_RTASK, s_word);
        if (task >= (uint32_t)n) break;
        const int r0 = first + 16 * (int)task;
        FM_PASSES(a.n_tokens, (route_pass<DT, 1>(a, L, r0, p0, red)), (route_pass<DT, 2>(a, L, r0, p0, red)),
                  (route_pass<DT, 4>(a, L, r0, p0, red)))
    }
}

/* A task number decoded: GEMM1 (routed segments first, F/8 tasks each, then
 * the shared ones) or GEMM2 (segment-major, ceil(H/16) tasks each). */
struct fm_task {
    int gemm, seg, tile;
};
struct fm_counts {
    uint32_t n1, n, t1r, t1s, ht;
    int nseg, nrouted;
};
static __device__ __forceinline__ fm_task decode(const fm_counts &c, uint32_t task) {
    fm_task d;
    if (task < c.n1) {
        const uint32_t routed1 = (uint32_t)c.nrouted * c.t1r;
        d.gemm = 1;
        if (task < routed1) {
            d.seg = (int)(task / c.t1r);
            d.tile = (int)(task % c.t1r);
        } else {
            d.seg = c.nrouted + (int)((task - routed1) / c.t1s);
            d.tile = (int)((task - routed1) % c.t1s);
        }
    } else {
        d.gemm = 2;
        d.seg = (int)((task - c.n1) / c.ht);
        d.tile = (int)((task - c.n1) % c.ht);
    }
    return d;
}

template <typename DT> static __device__ void task_role(const dmoe_fused_args &a, const fm_layout &L, float *red,
                                                      uint32_t *s_word) {
    fm_counts c;
    c.n1 = ld_l2i((const int32_t *)L.ctr + C_NTASK1);
    c.n = ld_l2i((const int32_t *)L.ctr + C_NTASK);
    c.nseg = ld_l2i((const int32_t *)L.ctr + C_NSEG);
    c.nrouted = ld_l2i((const int32_t *)L.ctr + C_NROUTED);
    c.t1r = (uint32_t)(a.ffn / 8);
    c.t1s = (uint32_t)(a.n_shared ? a.shared_ffn / 8 : 1);
    c.ht = (uint32_t)((a.hidden + 15) / 16);
    for (;;) {
        const uint32_t task = claim(L.ctr + C_TASK, s_word);
        if (task >= c.n) break;
#ifdef FM_TRACE
        const bool first = blockIdx.x < 4096 && fm_wtrace[4 * blockIdx.x + 1] == 0;
        if (first && threadIdx.x == 0) {
            fm_wtrace[4 * blockIdx.x] = task < c.n1 ? 1 : 2;
            fm_wtrace[4 * blockIdx.x + 1] = gtime();
        }
#endif
        const fm_task d = decode(c, task);
        if (d.gemm == 1) gemm1_task<DT>(a, L, d.seg, d.tile, red);
        else gemm2_task<DT>(a, L, d.seg, d.tile, c.nseg, red, s_word);
#ifdef FM_TRACE
        if (first && threadIdx.x == 0) fm_wtrace[4 * blockIdx.x + 3] = gtime();
#endif
    }
}

/* One whole forward, run by every block of a fully resident grid. smem is the
 * block's dynamic shared memory (plan_smem_bytes), s_word one shared word.
 * Leaves every counter at zero, so it can run again at once (a new launch,
 * a graph replay, or the next batch of the resident kernel). */
template <typename DT> static __device__ __forceinline__ void fused_body(const dmoe_fused_args &a, char *smem,
                                                                        uint32_t *s_word_p) {
    uint32_t &s_word = *s_word_p;
    trace(0);
    fm_layout L;
    fm_carve(a.ws, a.n_tokens, a.hidden, a.ffn, a.shared_ffn, a.n_experts, a.top_k, a.n_shared, &L);
    float *red = (float *)smem; /* FM_WARPS * 4 * 128 floats for block_mma; the plan reuses smem */

    if (!a.route_from_ids || a.shared_gate) route_role<DT>(a, L, red, s_word_p);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_word = atomicAdd(L.ctr + C_ARRIVE, 1u);
    __syncthreads();
    trace(1);
    if (s_word == gridDim.x - 1) { /* the last block to arrive plans */
        __threadfence();
        plan_role(a, L, smem);
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) st_release(L.ctr + C_FLAG, 1u);
    } else {
        if (threadIdx.x == 0) wait_at_least(L.ctr + C_FLAG, 1u);
        __syncthreads();
    }
    trace(2);
    task_role<DT>(a, L, red, s_word_p);
    trace(3);

    /* the last block out resets the counters for the next launch */
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        s_word = atomicAdd(L.ctr + C_EXIT, 1u);
    }
    __syncthreads();
    if (s_word == gridDim.x - 1) {
        __threadfence();
        const int nseg = (int)ld_l2i((const int32_t *)L.ctr + C_NSEG), ht = (a.hidden + 15) / 16;
        for (int i = threadIdx.x; i < nseg; i += FM_THREADS) L.done1[i] = 0;
        for (int i = threadIdx.x; i < ht; i += FM_THREADS) L.done2[i] = 0;
        __syncthreads();
        if (threadIdx.x == 0) {
            L.ctr[C_ARRIVE] = 0;
            L.ctr[C_FLAG] = 0;
            L.ctr[C_TASK] = 0;
            L.ctr[C_RTASK] = 0;
            L.ctr[C_EXIT] = 0;
            __threadfence();
        }
    }
}

#ifndef DMOE_FUSED_BODY_ONLY /* resident.cu includes this file for fused_body alone */
template <typename DT> __global__ void __launch_bounds__(FM_THREADS, FM_MIN_BLOCKS) fused_moe_kernel(const dmoe_fused_args a) {
    extern __shared__ __align__(16) char smem[];
    __shared__ uint32_t s_word;
    fused_body<DT>(a, smem, &s_word);
}

/* ---- host ---- */

size_t dmoe__fused_workspace_bytes(int64_t max_tokens, int32_t hidden, int32_t ffn, int32_t shared_ffn,
                                   int32_t n_experts, int32_t top_k, int32_t n_shared) {
    return fm_carve(NULL, max_tokens, hidden, ffn, shared_ffn, n_experts, top_k, n_shared, NULL);
}

static size_t plan_smem_bytes(int32_t E) {
    const size_t plan = (size_t)E * 2 * sizeof(int) + (size_t)FM_TOPK_WARPS * 3 * E * sizeof(float);
    const size_t red = (size_t)FM_WARPS * 4 * 128 * sizeof(float);
    return plan > red ? plan : red;
}

extern "C" size_t dmoe__fused_smem_bytes(int32_t n_experts) { return plan_smem_bytes(n_experts); }

template <typename DT>
static dmoe_status launch(dmoe_context *ctx, const dmoe_fused_args *a, int32_t num_sms, cudaStream_t stream) {
    const size_t smem = plan_smem_bytes(a->n_experts);
    auto kernel = fused_moe_kernel<DT>;
    DMOE_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int per_sm = 0;
    DMOE_CUDA_CHECK(ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, FM_THREADS, smem));
    if (per_sm < 1) return dmoe__error(ctx, DMOE_ERR_CUDA, "fused kernel: no block fits on a multiprocessor");
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(per_sm * num_sms));
    cfg.blockDim = dim3(FM_THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (getenv("DMOE_PRINT_CONFIG"))
        fprintf(stderr, "dmoe: fused kernel: %d blocks (%d per SM) x %d threads, %zu B smem, T=%d\n",
                per_sm * num_sms, per_sm, FM_THREADS, smem, a->n_tokens);
    DMOE_CUDA_CHECK(ctx, cudaLaunchKernelEx(&cfg, kernel, *a));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__fused_forward(dmoe_context *ctx, const dmoe_fused_args *a, int32_t num_sms,
                                           cudaStream_t stream) {
    if (a->hidden % 8 != 0 || a->ffn % 8 != 0 || (a->n_shared > 0 && a->shared_ffn % 8 != 0))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "fused kernel: H and F must be multiples of 8");
    /* The dtype is a template parameter only because mma.sync names it in the instruction. */
    return a->is_bf16 ? launch<dmoe_bf16>(ctx, a, num_sms, stream) : launch<dmoe_f16>(ctx, a, num_sms, stream);
}
#endif /* DMOE_FUSED_BODY_ONLY */
