/*
 * fused-moe.cu: the whole MoE forward in one persistent launch (FlashDMoE
 * design), for decode-sized batches (few tokens per expert).
 *
 * Phases, with counters instead of grid-wide barriers:
 *   ROUTE   every warp of the grid takes (16 router rows, k split) units and
 *           writes partial logits (nsplit, T, E+1), the router read from HBM
 *           once and each unit one round of loads. The k splits and the
 *           summation order are the staged router's (router.cu), so dmoe_route
 *           and the fused forward route bitwise alike. A warp arrives on one
 *           counter with its unit count; every block waits for all units.
 *   PLAN    EVERY block computes the routing and the plan redundantly in its
 *           own shared memory (T*E is small here): logits = the split
 *           partials summed in split order, top-k per token by one warp with
 *           the staged router's own code (route-token.cuh), the segment
 *           table: at T=1 (routed here) the picks in pick order, up to 32 pairs
 *           grouped by one warp with shuffles in the order their experts first
 *           appear, more grouped by expert by the whole
 *           block (each pair ranked against the others, or counts and a scan
 *           beyond 192 pairs). No block waits for another one's plan; block 0
 *           writes topk_ids/w. From T = FM_DTK_MIN on the top-k is
 *           distributed instead: token t is routed by one warp of block
 *           t % grid only, which writes topk_ids/w and arrives on C_TOPK;
 *           every block waits for the T arrivals and reads the picks back.
 *           Up to 32 (token, k) pairs (FM_PREFETCH_FIRST), whose segments come
 *           in the order their experts first appear (token 0's picks first),
 *           the publisher warp claims the block's first task before the plan;
 *           warp 0's top-k of token 0 writes each round's
 *           pick to shared memory as the round ends (a word the publisher
 *           polls: the word is the data; FM_PICK_FORM), and the publisher asks L2
 *           for that task's 16 weight rows (cp.async.bulk.prefetch) as soon
 *           as its segment's expert is picked, ~1.5 us before the plan ends.
 *   TASKS   warp roles, one function each:
 *           producer  (1 warp) claims tasks from one atomic counter (one task
 *                     ahead) and streams each task's 16 weight rows, in chunks
 *                     of FM_KC columns, into an FM_NS-stage shared-memory ring
 *                     with cp.async.bulk completing on mbarriers (L2 evict-first);
 *           consumers (4 warps) split the chunk's k, run mma.sync from the
 *                     ring (A = weights, 16-byte conflict-free lds) against the
 *                     token rows (x from L1, act from L2), release the stage,
 *                     and hand their partial sums to the publisher through an
 *                     FM_NR-deep reduction ring;
 *           publisher (1 warp) sums the four partials in warp order
 *                     (deterministic), applies SwiGLU (GEMM1) or the routing
 *                     weight (GEMM2), writes act / part and arrives on
 *                     done1[seg] / done2[h tile]; the publisher of an h tile's
 *                     LAST-SEGMENT task (claimed after the tile's other tasks)
 *                     waits for their nseg - 1 arrivals instead and COMBINES
 *                     the tile: y[t, h] = sum over k in order of
 *                     part[slot_of(t,k), h] plus the shared experts, so the
 *                     output is bitwise deterministic.
 *           Tasks: GEMM1(seg, 8 features) = the 8 gate and the 8 up rows of the
 *           same features (SwiGLU needs no exchange); GEMM2(seg, 16 rows of H)
 *           waits (consumer side only: its weights are already streaming) for
 *           done1[seg] = F/8. Tasks are claimed in order, all GEMM1 first, so a
 *           block never waits on a task that is claimed after its own.
 *           Arrivals are release operations by one lane after a __syncwarp
 *           (red.release, no answer awaited): no per-lane fences. (Until
 *           session 6 every GEMM2 publisher arrived with atom.acq_rel and the
 *           one whose answer completed the tile combined it: a round trip per
 *           task; 3-17 us slower at T = 1..16, bench/fused-notes.md.)
 *   EXIT    the last block to leave (atom.acq_rel on the exit counter) resets
 *           every counter to zero, so the next launch (or a CUDA-graph
 *           replay) starts clean without a memset.
 * All blocks must be resident (they wait on each other): the launch is
 * cooperative, the grid sized with the occupancy API.
 *
 * Tensor cores with the operands swapped ("swap AB"): the weight rows are the
 * M side of mma.sync m16n8k16 (16 weight rows) and the tokens the N side (8),
 * so a single token wastes nothing of the weight stream. Why mma.sync and not
 * the wgmma warpgroups of shared/DESIGN.md: this kernel serves decode (AUTO
 * runs it for T <= 4; the staged path's TMA + wgmma GEMMs take larger T), where
 * the consumers are not the limit -- without the bench's write flush the task
 * phase moves qwen3's bytes at the copy rate (T=4: 94.2 us of tasks for a 94.6
 * us floor, T=8: 159.9 for 160.7; bench/fused-notes.md, session 7) -- and
 * wgmma's 64-row M would make tasks 4x larger: ~2 per block at T=1 on 264
 * blocks, so the last wave's imbalance would be the tail. The k order inside
 * each 32-wide step is permuted identically for A and B, so every thread reads
 * 16 contiguous bytes of a weight row (from the ring) and of a token row
 * straight into its fragment registers:
 *   thread (g = lane/4, c = lane%4) loads W[row g][kb+8c..+7], W[row g+8][..],
 *   X[token g][kb+8c..+7]; mma #1 takes the first 4 elements of each, mma #2
 *   the last 4. Ring rows are FM_RS = 2*FM_KC + 64 bytes apart (64 mod 128),
 *   so the 8 threads of a quarter warp hit 8 distinct 16-byte bank groups.
 *
 * Layouts (T tokens, K = top_k, S shared experts, P = T*K + S*T slots):
 *   x (T, H), router (E, H), w13 (E, 2F, H), w2 (E, H, F), y (T, H)
 *   workspace: counters | done1 (E+S) | done2 (H/16) | partial logits
 *              FM_PLOG_COPIES x (k splits, T, E+1) (each route unit writes
 *              every copy; the plan of block b reads copy b % FM_PLOG_COPIES,
 *              so fewer blocks load the same lines at once) | act (P, Fmax) |
 *              part (P, H) float
 *   shared memory (fm_smem_layout): mbarriers | stage/reduction metadata |
 *              segment table | slots | reduction ring | weight ring (the
 *              top-k scratch while planning).
 */
#include <float.h>

#include "cuda-common.cuh"
#include "cuda-context.h"
#include "fused-moe.h"
#include "heuristics.h"
#ifdef FM_TRACE /* SM clock at the steps of block 0's top-k by warp 0 (route-token.cuh; the last token
                    that warp routes, T=1: the only one) */
__device__ long long fm_rtrace[8];
#define DMOE_ROUTE_MARK(i)                                     \
    do {                                                       \
        if (blockIdx.x == 0 && threadIdx.x == 0) fm_rtrace[i] = clock64(); \
    } while (0)
#endif
#include "route-token.cuh"

#ifndef FM_KC
#define FM_KC 512 /* k columns per ring stage (a multiple of 64) */
#endif
#ifndef FM_NS
#define FM_NS 3 /* ring stages. Session 16 (H100, gpu_bench.py, two rounds): 3 against 4 -0.9..-1.8 us a cell at
                   qwen3 / olmoe T=1..4 (session 15: -0.3..-1.3), T=16 unchanged; 2 costs 2.5 us at qwen3 T=4. The fused
                   GPU tests, racecheck and synccheck passed on 3 (bench/fused-notes.md, session 16) */
#endif
#ifndef FM_NR
#define FM_NR 2 /* reduction buffers between the consumers and the publisher */
#endif
#ifndef FM_MIN_BLOCKS
#define FM_MIN_BLOCKS 2 /* blocks per SM the register budget is cut for */
#endif
#ifndef FM_ARRIVE_POLL_NS
#define FM_ARRIVE_POLL_NS 32 /* the arrival poll's longest back-off (256: 0.5-1 us slower at T=1) */
#endif
#ifndef FM_DONE1_POLL_NS
#define FM_DONE1_POLL_NS 256 /* the same for a GEMM2 task's wait on its segment's act */
#endif
#ifndef FM_PREFETCH_FIRST
#define FM_PREFETCH_FIRST 1 /* routed here, T <= 5 with up to 32 pairs: the publisher warp claims the block's first
                               task before the plan and, as soon as token 0's top-k round that picks its segment's
                               expert has run, asks L2 for its 16 weight rows (fm_pick_hook). Session 9 (T=1):
                               qwen3 T=1 -1.7 us, olmoe -0.8; session 10 (T=2..4, first-appearance segments):
                               qwen3 T=2 / 3 / 4 -0.8 / -1.6 / -1.3 us. Extending it to T = 7..10 needs the block
                               grouping in first-appearance order, which cost more than the prefetch saved
                               (bench/fused-notes.md, session 10). */
#endif
#ifndef FM_PREFETCH_HINT
#define FM_PREFETCH_HINT 0 /* 1: that L2 prefetch with the evict-first policy of the stream (experiment, session 14) */
#endif
#ifndef FM_ONE_TOKEN_SEGMENTS
#define FM_ONE_TOKEN_SEGMENTS 1 /* T=1: the K picks are the segments in pick order (no grouping pass) */
#endif
#ifndef FM_WARP_GROUPING
#define FM_WARP_GROUPING 1 /* up to 32 (token, k) pairs: grouped by warp 0 with shuffles */
#endif
#ifndef FM_PLOG_COPIES
#define FM_PLOG_COPIES 2 /* copies of the partial logits; block b reads copy b % 2: half the readers a line
                            (qwen3 T=1 / 4 -1.3 / -2.3 us; 4 copies: -1.5 / -1.3) */
#endif
#ifndef FM_DTK_MIN
#define FM_DTK_MIN 32 /* from this T on, token t is routed by block t % grid alone (one token a warp instead of
                         T / 6 rounds in every block) and the blocks exchange the picks through topk_ids / topk_w:
                         qwen3 T=32 / 64 -3.8 / -38 us; from T=8 or 16 it was 3-7 us slower (session 7, run 9) */
#endif
#ifndef FM_EVICT_FIRST
#define FM_EVICT_FIRST 1 /* weights are read once: L2 evict-first on the bulk copies */
#endif
#ifndef FM_LANE_ARRIVE
#define FM_LANE_ARRIVE 1 /* the consumers' and the publisher's releases of ring stages and reduction buffers. 1: every
                            lane arrives on the mbarrier (counts x 32), so each lane's own accesses are ordered by its
                            own arrive; 0: lane 0 arrives after a __syncwarp (the PTX memory model orders that too,
                            but compute-sanitizer racecheck does not model it: dev/racecheck-forms.cu); 2 / 3: every
                            lane on the ring's stages / on the reduction buffers only. Session 15 (H100, with
                            FM_PICK_FORM 1): racecheck 0 hazards (test-cuda-path --quick, test-cuda-resident,
                            test-cuda-forward variants 0-3; was ~24 on the first). Cost (session 16, FM_NS 3): 0 is
                            1.6-2.7 us faster than 1 at qwen3 / olmoe T=1..4 (qwen3 T=1 46.2-46.6 against 47.9-48.2 us);
                            2 and 3 are each within 0.8 us of 1: either family of every-lane releases alone costs
                            about what both do (bench/fused-notes.md, session 16) */
#endif
#if FM_LANE_ARRIVE < 0 || FM_LANE_ARRIVE > 3
#error "FM_LANE_ARRIVE is 0 (lane 0), 1 (every lane), 2 (every lane on the ring only) or 3 (on the reduction buffers only)"
#endif
#define FM_ALL_RING (FM_LANE_ARRIVE == 1 || FM_LANE_ARRIVE == 2) /* every lane releases the ring's stages */
#define FM_ALL_RED (FM_LANE_ARRIVE == 1 || FM_LANE_ARRIVE == 3)  /* ... and the reduction buffers */
#define FM_ARRIVERS_RING (FM_ALL_RING ? 32 : 1) /* arrivals a warp makes on a release */
#define FM_ARRIVERS_RED (FM_ALL_RED ? 32 : 1)
#define FM_CWARPS 4    /* consumer warps 0..3 */
#define FM_PRODUCER 4  /* warp index of the producer */
#define FM_PUBLISHER 5 /* warp index of the publisher */
#define FM_WARPS 6
#define FM_THREADS (32 * FM_WARPS)
#define FM_RS (2 * FM_KC + 64) /* bytes between ring rows: 64 mod 128, no bank conflicts */
#define FM_STAGE (16 * FM_RS)
#define FM_SPLIT_MAX DMOE_CUDA_ROUTER_MAX_SPLITS /* k splits of the router: the staged router's, capped alike (heuristics.h) */
static_assert(FM_KC % 64 == 0, "FM_KC must be a multiple of 64");

/* Counter block at the start of the workspace (uint32 each). C_TOPK sits on
 * the second 128-byte line; on the first, beside C_TASK's atomics, it measured
 * the same (session 7, run 4). */
enum { C_ARRIVE = 0, C_TASK, C_EXIT, C_TOPK = 32, C_HEADER = 64 };
/* Plan header in shared memory. */
enum { H_NSEG = 0, H_NROUTED, H_N1, H_N, H_FIRST, H_WORDS = 8 };

typedef struct fm_layout {
    uint32_t *ctr;      /* (C_HEADER) */
    uint32_t *done1;    /* (E + S) */
    uint32_t *done2;    /* (ceil(H/16)) */
    float *plog;        /* FM_PLOG_COPIES x (k splits, T, E + 1) partial router logits */
    size_t plog_copy;   /* floats between the copies */
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
    const size_t nsplit = ((size_t)H + 255) / 256 < FM_SPLIT_MAX ? ((size_t)H + 255) / 256 : FM_SPLIT_MAX;
    if (L) L->plog_copy = nsplit * T * (E + 1);
    FM_TAKE(plog, float, FM_PLOG_COPIES * nsplit * T * (E + 1));
    FM_TAKE(act, uint16_t, P * fmax);
    FM_TAKE(part, float, P * (size_t)H);
#undef FM_TAKE
    return off;
}

/* Loads of x. The ordinary launch reads it through the read-only path; the
 * resident kernel (resident.cu, FM_X_COHERENT) gets a new x behind the same
 * address for every batch within one launch, which the non-coherent path does
 * not promise to see, so it reads x through L2 (ld.global.cg). */
#ifdef FM_X_COHERENT
#define FM_LD_X(p) __ldcg((const uint4 *)(p))
#define FM_LD_X_IF(p, pred) dmoe_ld_l2_16_if((p), (pred))
#else
#define FM_LD_X(p) __ldg((const uint4 *)(p))
#define FM_LD_X_IF(p, pred) dmoe_ld_cached16_if((p), (pred))
#endif

/* Router columns per k split: the staged router's choice (route_kchunk, set
 * by dmoe__fused_forward), or one split when a caller left it 0. */
static __host__ __device__ int fm_route_kr(int kchunk, int H) {
    return kchunk > 0 ? kchunk : (H + 255) / 256 * 256;
}

/* The plan sums the router's split partials into shared memory first (one
 * round of loads for the whole block) when the (T, E+1) logits take <= 32 KB;
 * else each top-k warp sums its token's. */
static __host__ __device__ bool fm_logits_in_smem(int T, int E) { return (size_t)T * (E + 1) * 4 <= 32768; }

/* Shared memory of one block (byte offsets). */
typedef struct fm_smem {
    uint32_t bar, meta, seg, slot, red, ring, total;
    int ntt; /* token tiles of 8 the reduction ring holds per warp: 1, 2, 4 or 8 */
} fm_smem;

static __host__ __device__ fm_smem fm_smem_layout(int T, int E, int K, int S) {
    fm_smem m;
    const uint32_t nsm = (uint32_t)(E + S), P = (uint32_t)(T * K + S * T), TK = (uint32_t)(T * K);
    const int tt = (T + 7) / 8;
    m.ntt = tt <= 1 ? 1 : tt <= 2 ? 2 : tt <= 4 ? 4 : 8;
    uint32_t o = 0;
    m.bar = o; /* full[NS], empty[NS], redfull[NR], redempty[NR] */
    o += (2 * FM_NS + 2 * FM_NR) * 8;
    m.meta = o; /* stage_task[NS], stage_chunk[NS], red_task[NR], hdr[H_WORDS] */
    o += (2 * FM_NS + FM_NR + H_WORDS) * 4;
    o = (o + 15) / 16 * 16;
    m.seg = o; /* seg_begin, seg_count, seg_expert: (E + S) each */
    o += 3 * nsm * 4;
    o = (o + 15) / 16 * 16;
    m.slot = o; /* slot_token (P), slot_weight (P), slot_of (T*K) */
    o += (2 * P + TK) * 4;
    o = (o + 15) / 16 * 16;
    m.red = o; /* (NR, FM_CWARPS, ntt, 32 lanes, 4) floats */
    o += FM_NR * FM_CWARPS * m.ntt * 128 * 4;
    o = (o + 127) / 128 * 128;
    m.ring = o; /* FM_NS stages; while planning: top-k scratch */
    const uint32_t scratch = (uint32_t)((fm_logits_in_smem(T, E) ? T * (E + 1) : 0) + FM_WARPS * 3 * E + 2 * TK + 2 * E) * 4;
    const uint32_t ring = FM_NS * FM_STAGE;
    o += ring > scratch ? ring : scratch;
    m.total = o;
    return m;
}

/* ---- small device helpers ---- */

/* Data other blocks wrote in this launch: through L2 (an intrinsic, so the
 * compiler keeps it after the acquire that guards it). */
static __device__ __forceinline__ uint4 ld_l2(const void *p) { return __ldcg((const uint4 *)p); }
static __device__ __forceinline__ float ld_l2f(const float *p) { return __ldcg(p); }
static __device__ __forceinline__ uint32_t ld_acquire(const uint32_t *p) {
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
/* Arrivals on counters other blocks wait on: the release makes this thread's
 * earlier writes (and those a __syncwarp / __syncthreads ordered before it)
 * visible first; red needs no answer, so the warp goes on at once. */
static __device__ __forceinline__ void red_release(uint32_t *p, uint32_t v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
static __device__ __forceinline__ uint32_t atom_acq_rel(uint32_t *p, uint32_t v) {
    uint32_t old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}
static __device__ __forceinline__ void wait_at_least(const uint32_t *p, uint32_t target, unsigned ns_max = 256) {
    unsigned ns = 32;
    while (ld_acquire(p) < target) { /* back off: hundreds of warps may poll one line */
        __nanosleep(ns);
        ns = ns < ns_max ? ns * 2 : ns;
    }
}

/* ---- mbarriers and bulk copies (shared::cta addresses) ---- */
static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
static __device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
static __device__ __forceinline__ void mbar_inval(uint64_t *b) {
    asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(smem_u32(b)) : "memory");
}
static __device__ __forceinline__ void mbar_arrive(uint64_t *b) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(b)) : "memory");
}
static __device__ __forceinline__ void mbar_arrive_tx(uint64_t *b, uint32_t bytes) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_u32(b)),
                 "r"(bytes)
                 : "memory");
}
static __device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
    } while (!done);
}
/* bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned),
 * completing on mbarrier bar. */
static __device__ __forceinline__ void bulk_g2s(void *dst, const void *src, uint32_t bytes, uint64_t *bar,
                                                uint64_t pol) {
#if FM_EVICT_FIRST
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
                 ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(pol)
                 : "memory");
#else
    (void)pol;
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#endif
}
static __device__ __forceinline__ uint64_t evict_first_policy() {
    uint64_t p = 0;
#if FM_EVICT_FIRST
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
#endif
    return p;
}
/* Generic-proxy writes to shared memory that the copy engine overwrites next. */
static __device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

#ifdef FM_TRACE
/* Development only: per block, globaltimer at entry, after the arrival wait,
 * after the plan, after the tasks, after the exit path (8 words a block); per
 * block the number of tasks its producer claimed. */
__device__ unsigned long long fm_trace[8 * 4096];
__device__ unsigned int fm_ntasks[4096];
__device__ unsigned long long fm_ptrace[4]; /* block 0: logits summed, top-k done */
static __device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
static __device__ __forceinline__ void trace(int i) {
    if (threadIdx.x == 0 && blockIdx.x < 4096) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        fm_trace[8 * blockIdx.x + i] = t;
    }
}
static __device__ __forceinline__ void trace_warp(int i) { /* lane 0 of the calling warp */
    if ((threadIdx.x & 31) == 0 && blockIdx.x < 4096) fm_trace[8 * blockIdx.x + i] = gtime();
}
static __device__ __forceinline__ void trace_grouping() { /* block 0, thread 0: the plan's grouping starts */
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        fm_ptrace[1] = gtime();
        fm_rtrace[6] = clock64();
    }
}
#else
static __device__ __forceinline__ void trace(int) {}
static __device__ __forceinline__ void trace_warp(int) {}
static __device__ __forceinline__ void trace_grouping() {}
#endif

/* The block's shared memory, as pointers. */
struct fm_sp {
    uint64_t *full, *empty, *redfull, *redempty;
    int *stage_task, *stage_chunk, *red_task, *hdr;
    int *seg_begin, *seg_count, *seg_expert;
    int *slot_token, *slot_of;
    float *slot_weight, *red;
    char *ring;
    int ntt;
};
static __device__ __forceinline__ fm_sp fm_pointers(char *smem, const fm_smem &m, int E, int S, int P) {
    fm_sp s;
    uint64_t *b = (uint64_t *)(smem + m.bar);
    s.full = b;
    s.empty = b + FM_NS;
    s.redfull = b + 2 * FM_NS;
    s.redempty = b + 2 * FM_NS + FM_NR;
    int *mt = (int *)(smem + m.meta);
    s.stage_task = mt;
    s.stage_chunk = mt + FM_NS;
    s.red_task = mt + 2 * FM_NS;
    s.hdr = mt + 2 * FM_NS + FM_NR;
    const int nsm = E + S;
    int *sg = (int *)(smem + m.seg);
    s.seg_begin = sg;
    s.seg_count = sg + nsm;
    s.seg_expert = sg + 2 * nsm;
    s.slot_token = (int *)(smem + m.slot);
    s.slot_weight = (float *)(s.slot_token + P);
    s.slot_of = (int *)(s.slot_weight + P);
    s.red = (float *)(smem + m.red);
    s.ring = smem + m.ring;
    s.ntt = m.ntt;
    return s;
}

/* ---- PLAN: every block, in its own shared memory ---- */

/* Token t's E logits into out[0..E) (shared memory) by one warp. */
static __device__ __noinline__ void token_logits(const float *plog, int T, int E, int nsplit, int t, float *out) {
    const int lane = threadIdx.x & 31;
    for (int e0 = lane; e0 < E; e0 += 128) {
        float v[4];
        dmoe_route_split_sums4(plog + (size_t)t * (E + 1), (size_t)T * (E + 1), e0, 32, E, nsplit, v);
#pragma unroll
        for (int q = 0; q < 4; q++)
            if (e0 + 32 * q < E) out[e0 + 32 * q] = v[q];
    }
    __syncwarp();
}

/* A warp's release of a ring stage or a reduction buffer it has read or written
 * (the mbarrier counts FM_ARRIVERS_RING / _RED arrivals a warp): by every lane
 * when all_lanes, else by lane 0 after a __syncwarp. */
static __device__ __forceinline__ void warp_release(uint64_t *b, bool all_lanes) {
    if (all_lanes) {
        mbar_arrive(b);
    } else {
        __syncwarp();
        if ((threadIdx.x & 31) == 0) mbar_arrive(b);
    }
}

/* Lane k < K's pick of token t (id, weight) into ids / wts, and into out_ids /
 * out_w when they are not NULL. */
static __device__ __forceinline__ void store_pick(int t, int K, int id, float w, int *ids, float *wts, int32_t *out_ids,
                                                  float *out_w) {
    const int lane = threadIdx.x & 31;
    if (lane < K) {
        ids[t * K + lane] = id;
        wts[t * K + lane] = w;
        if (out_ids) {
            out_ids[t * K + lane] = id;
            out_w[t * K + lane] = w;
        }
    }
}

/* Top-k of token t by one warp from its logits lg (E floats, shared memory)
 * with the staged router's code (route-token.cuh) on logits summed in the same
 * k-split order, so dmoe_route (staged) and the fused forward agree bitwise.
 * s_score / s_choice E floats, s_group n_group. ids/wts (T*K) in shared
 * memory, and the outputs out_ids / out_w when they are not NULL (topk_token:
 * block 0's topk_ids / topk_w when out is set). */
template <typename Hook = dmoe_route_no_hook>
static __device__ __forceinline__ void topk_token_r(const dmoe_route_rules &r, const float *lg, int t, float *s_score,
                                                    float *s_choice, float *s_group, int *ids, float *wts,
                                                    int32_t *out_ids, float *out_w, const Hook &hook = Hook()) {
    const int lane = threadIdx.x & 31, E = r.n_experts, K = r.top_k;
    float mx = -FLT_MAX;
    for (int e = lane; e < E; e += 32) {
        const float v = dmoe_route_clamp_logit(lg[e]);
        s_score[e] = v;
        mx = fmaxf(mx, v);
    }
    int id;
    float w;
    dmoe_route_topk(r, mx, s_score, s_choice, s_group, &id, &w, hook);
    store_pick(t, K, id, w, ids, wts, out_ids, out_w);
    __syncwarp();
}
static __device__ __forceinline__ dmoe_route_rules fm_rules(const dmoe_fused_args &a) {
    const dmoe_route_rules r = {a.use_bias ? a.bias : nullptr, a.scale, a.n_experts, a.top_k, a.n_group, a.topk_group,
                                a.scoring == DMOE_SCORING_SOFTMAX, a.renormalize};
    return r;
}
/* The pick words (FM_PREFETCH_FIRST): written by warp 0 as its top-k rounds
 * end, polled by the publisher warp. FM_PICK_FORM 0: volatile accesses
 * (which racecheck reports as a hazard); 1: shared-memory atomics; 2:
 * st.release / ld.acquire. racecheck (session 15, dev/racecheck-forms.cu
 * flag_*): 0 and 2 reported as hazards, 1 clean. */
#ifndef FM_PICK_FORM
#define FM_PICK_FORM 1 /* session 15: 1 is what racecheck takes as ordered (dev/racecheck-forms.cu flag_atom) */
#endif
#if FM_PICK_FORM < 0 || FM_PICK_FORM > 2
#error "FM_PICK_FORM is 0, 1 or 2"
#endif
static __device__ __forceinline__ void pick_store(int *p, int v) {
#if FM_PICK_FORM == 0
    *(volatile int *)p = v;
#elif FM_PICK_FORM == 1
    atomicExch(p, v);
#else
    asm volatile("st.release.cta.shared.b32 [%0], %1;" ::"r"(smem_u32(p)), "r"(v) : "memory");
#endif
}
static __device__ __forceinline__ int pick_load(int *p) {
    int v;
#if FM_PICK_FORM == 0
    v = *(volatile int *)p;
#elif FM_PICK_FORM == 1
    v = atomicAdd(p, 0);
#else
    asm volatile("ld.acquire.cta.shared.b32 %0, [%1];" : "=r"(v) : "r"(smem_u32(p)) : "memory");
#endif
    return v;
}

/* Round j's pick into s_pick[j] (shared memory) as the round ends, when
 * s_pick is set: the publisher warp waits there to prefetch (FM_PREFETCH_FIRST). */
struct fm_pick_hook {
    int *s_pick;
    __device__ __forceinline__ void operator()(int j, int e) const {
        if (s_pick && (threadIdx.x & 31) == 0) pick_store(s_pick + j, e);
    }
};
static __device__ void topk_token(const dmoe_fused_args &a, const float *lg, int t, float *s_score, float *s_choice,
                                  float *s_group, int *ids, float *wts, bool out, int *s_pick) {
    topk_token_r(fm_rules(a), lg, t, s_score, s_choice, s_group, ids, wts, out ? a.topk_ids : nullptr,
                 out ? a.topk_w : nullptr, fm_pick_hook{s_pick});
}

/* Row `lane` (0..15) of GEMM1 task `tile` of expert ex (shared expert -1 - ex
 * when ex < 0, width F): rows 0-7 the gate rows of features tile*8.., rows
 * 8-15 the up rows of the same features (SwiGLU needs no exchange). */
static __device__ __forceinline__ const uint16_t *fm_w13_row(const dmoe_fused_args &a, int ex, int F, int tile,
                                                             int lane) {
    const int H = a.hidden;
    const uint16_t *w13 = ex >= 0 ? (const uint16_t *)a.w13 + (size_t)ex * 2 * F * H
                                  : (const uint16_t *)a.shared_w13 + (size_t)(-1 - ex) * 2 * F * H;
    const int r = lane < 8 ? tile * 8 + lane : F + tile * 8 + (lane - 8);
    return w13 + (size_t)r * H;
}

/* Whether this forward prefetches its first task during the top-k (FM_PREFETCH_FIRST):
 * tokens routed here whose segments come in first-appearance order (token 0's K
 * picks first, in pick order), and no more tokens than the warps before the
 * publisher, so the publisher routes none and is free to wait for the pick. */
static __device__ __forceinline__ bool fm_prefetch_first(const dmoe_fused_args &a) {
    const int T = a.n_tokens, P = T * a.top_k;
    const bool first_order = T == 1 ? FM_ONE_TOKEN_SEGMENTS : P <= 32 && FM_WARP_GROUPING;
    return FM_PREFETCH_FIRST && first_order && !a.route_from_ids && T <= FM_PUBLISHER && T < FM_DTK_MIN &&
           fm_logits_in_smem(T, a.n_experts);
}

/* The end of the segment table and the plan's header, by one warp once the nseg
 * routed segments are placed: the shared experts' segments (each takes all T
 * tokens, slots from P on), then the segment count and the GEMM1 and total
 * task counts (routed segments have F/8 GEMM1 tasks each, shared ones Fs/8). */
static __device__ __forceinline__ void fm_finish_segments(const dmoe_fused_args &a, const fm_sp &sp, int nseg) {
    const int lane = threadIdx.x & 31, S = a.n_shared, T = a.n_tokens, P = T * a.top_k;
    for (int s = lane; s < S; s += 32) {
        sp.seg_begin[nseg + s] = P + s * T;
        sp.seg_count[nseg + s] = T;
        sp.seg_expert[nseg + s] = -1 - s;
    }
    if (lane == 0) {
        const int n1 = nseg * (a.ffn / 8) + S * (a.shared_ffn / 8);
        sp.hdr[H_NSEG] = nseg + S;
        sp.hdr[H_NROUTED] = nseg;
        sp.hdr[H_N1] = n1;
        sp.hdr[H_N] = n1 + (nseg + S) * ((a.hidden + 15) / 16);
    }
}

/* Pair p (expert e, token t, weight w) at slot `slot`; the first pair of its
 * expert (lead) also writes segment seg of n pairs. */
static __device__ __forceinline__ void fm_place_pair(const fm_sp &sp, int p, int e, int t, float w, int slot, bool lead,
                                                     int seg, int n) {
    if (lead) {
        sp.seg_begin[seg] = slot;
        sp.seg_count[seg] = n;
        sp.seg_expert[seg] = e;
    }
    sp.slot_token[slot] = t;
    sp.slot_weight[slot] = w;
    sp.slot_of[p] = slot;
}

/* The distributed top-k (T >= FM_DTK_MIN): token t on warp t / grid of block
 * t % grid, its logits summed there in split order; the picks go out to
 * topk_ids / topk_w, C_TOPK counts the tokens routed, and every block reads all
 * of them back into ids / wts (shared memory). Not inlined: the kernel's
 * register allocation stays that of the paths without it (inlined, qwen3 T=4..8
 * ran 1.3-1.5 us slower with the code present but unused). sc: this warp's
 * scratch (2E + G floats). Its last step writes ids / wts (shared memory) after
 * its block barrier: the caller needs another barrier before any other warp reads
 * them (every grouping path that follows starts with one). */
static __device__ __noinline__ void route_distributed(const dmoe_route_rules r, int T, int32_t *topk_ids, float *topk_w,
                                                      uint32_t *ctr, const float *plog, int nsplit, float *sc, int *ids,
                                                      float *wts) {
    const int E = r.n_experts, P = T * r.top_k, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint32_t mine = 0;
    for (int t = (int)blockIdx.x + (int)gridDim.x * warp; t < T; t += (int)gridDim.x * FM_WARPS) {
        token_logits(plog, T, E, nsplit, t, sc + E);
        topk_token_r(r, sc + E, t, sc, sc + E, sc + 2 * E, ids, wts, topk_ids, topk_w);
        mine++;
    }
    if (mine) {
        __syncwarp(); /* the lanes' topk_ids / topk_w stores before lane 0's release */
        if (lane == 0) red_release(ctr + C_TOPK, mine);
    }
    if (threadIdx.x == 0) wait_at_least(ctr + C_TOPK, (uint32_t)T, FM_ARRIVE_POLL_NS);
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += FM_THREADS) {
        ids[p] = __ldcg(topk_ids + p);
        wts[p] = __ldcg(topk_w + p);
    }
}

/* The routing and the plan of the whole batch, by every thread of the block,
 * into the block's shared memory: segment table (routed experts; up to 32
 * pairs in the order their experts first appear -- pick order for one token
 * --, more in expert order; then the shared experts), slot_token / slot_weight
 * / slot_of (each segment's pairs contiguous, stable in pair order, then the
 * shared slots), header counts. */
static __device__ void plan_block(const dmoe_fused_args &a, const fm_layout &L, const fm_sp &sp, int nsplit,
                                  uint32_t first_claim) {
    const int E = a.n_experts, K = a.top_k, T = a.n_tokens, S = a.n_shared, P = T * K;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int G = a.n_group > 1 ? a.n_group : 0, per_warp = 2 * E + G;
    const bool dtk = !a.route_from_ids && T >= FM_DTK_MIN; /* distributed top-k (FM_DTK_MIN) */
    const bool lg_smem = fm_logits_in_smem(T, E) && !dtk;
    const float *plog = L.plog + (size_t)(blockIdx.x % FM_PLOG_COPIES) * L.plog_copy; /* this block's copy */
    /* ring scratch: (T, E+1) logits when lg_smem (fm_smem_layout reserves them whenever they fit,
     * unused by the distributed top-k), FM_WARPS x (2E + G), ids, wts, cnt, sbase */
    float *lg = (float *)sp.ring;
    float *fbuf = lg + (lg_smem ? (size_t)T * (E + 1) : 0);
    int *ids = (int *)(fbuf + (size_t)FM_WARPS * per_warp);
    float *wts = (float *)(ids + P);
    int *cnt = (int *)(wts + P), *sbase = cnt + E;
    const bool pf = fm_prefetch_first(a);
    int *s_pick = pf ? cnt : nullptr; /* K words; cnt is unused where pf holds */
    if (pf && warp == 0 && lane < K) pick_store(s_pick + lane, -1); /* before the logits' barrier below */
    if (lg_smem && (!a.route_from_ids || a.shared_gate)) {
        /* logits = the split partials summed in split order, 4 x 8 loads in flight per thread */
        const int n = T * (E + 1);
        const size_t sstride = (size_t)T * (E + 1);
        for (int i0 = threadIdx.x; i0 < n; i0 += 4 * FM_THREADS) {
            float v[4];
            dmoe_route_split_sums4(plog, sstride, i0, FM_THREADS, n, nsplit, v);
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (i0 + q * FM_THREADS < n) lg[i0 + q * FM_THREADS] = v[q];
        }
        __syncthreads();
    }
#ifdef FM_TRACE
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        fm_ptrace[0] = gtime();
        fm_rtrace[5] = clock64();
    }
#endif
    if (dtk) {
        route_distributed(fm_rules(a), T, a.topk_ids, a.topk_w, L.ctr, plog, nsplit, fbuf + (size_t)warp * per_warp, ids,
                          wts);
    }
    else if (!a.route_from_ids) {
        float *sc = fbuf + (size_t)warp * per_warp;
        for (int t = warp; t < T; t += FM_WARPS) {
            const float *lt = lg + (size_t)t * (E + 1);
            if (!lg_smem) { /* this token's logits, summed in split order, into s_choice first */
                token_logits(plog, T, E, nsplit, t, sc + E);
                lt = sc + E;
            }
            topk_token(a, lt, t, sc, sc + E, sc + 2 * E, ids, wts, blockIdx.x == 0, t == 0 ? s_pick : nullptr);
            if (pf && t == 0 && lane < K && ids[lane] < 0) pick_store(s_pick + lane, -2); /* no pick in that round */
        }
        if (pf && warp == FM_PUBLISHER) {
            /* the block's first task (claimed by this warp's lane 0): once the round that picks
             * its segment's expert has run, lanes 0-15 ask L2 for its 16 weight rows */
            const uint32_t c = __shfl_sync(0xffffffffu, first_claim, 0), tiles = (uint32_t)(a.ffn / 8);
            if (lane == 0) sp.hdr[H_FIRST] = (int)c; /* for the producer, after the plan's barrier */
            if (c < (uint32_t)K * tiles) {
                const int seg = (int)(c / tiles), tile = (int)(c % tiles), F = a.ffn, H = a.hidden;
                int e;
                while ((e = pick_load(s_pick + seg)) == -1) __nanosleep(20);
                if (e >= 0 && lane < 16)
#if FM_PREFETCH_HINT && FM_EVICT_FIRST /* (without FM_EVICT_FIRST there is no policy to pass) */
                    asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(
                                     fm_w13_row(a, e, F, tile, lane)),
                                 "r"((uint32_t)H * 2), "l"(evict_first_policy()));
#else
                    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(fm_w13_row(a, e, F, tile, lane)),
                                 "r"((uint32_t)H * 2));
#endif
            }
        }
    } else {
        for (int p = threadIdx.x; p < P; p += FM_THREADS) {
            ids[p] = __ldcg(a.topk_ids + p);
            wts[p] = __ldcg(a.topk_w + p);
        }
    }
    if (T == 1 && !a.route_from_ids && FM_ONE_TOKEN_SEGMENTS) {
        /* One token routed by warp 0: its picks are the segments, in pick order
         * (the picks are distinct; the rounds stop at the first NaN choice, so
         * the valid ones come first). No grouping pass and no block barrier; the
         * output is the same bits (the combine sums in k order whatever order
         * the segments stream in). */
        if (warp == 0) {
            trace_grouping();
            const int e = lane < K ? ids[lane] : -1;
            const bool ok = e >= 0 && e < E;
            const unsigned okm = __ballot_sync(0xffffffffu, ok);
            const int slot = __popc(okm & ((1u << lane) - 1u));
            if (ok) fm_place_pair(sp, lane, e, 0, wts[lane], slot, true, slot, 1);
            else if (lane < K) sp.slot_of[lane] = -1;
            fm_finish_segments(a, sp, __popc(okm));
        }
    } else if (P <= 32 && FM_WARP_GROUPING) {
        /* Up to 32 pairs: warp 0 groups them with shuffles, each lane one pair,
         * the segments in the order their experts first appear among the pairs
         * (token 0's picks first, in pick order, as at T=1: so the first
         * prefetch can start in token 0's top-k rounds): segment = experts
         * first seen before its own, slot = the pairs of those segments + the
         * earlier pairs of its own expert. The output is the same bits in any
         * segment order (the combine sums each token's picks in k order). */
        __syncthreads(); /* every top-k warp's ids / wts */
        if (warp == 0) {
            trace_grouping();
            const unsigned full = 0xffffffffu;
            const int e = lane < P ? ids[lane] : -1;
            const bool ok = lane < P && e >= 0 && e < E;
            const unsigned okm = __ballot_sync(full, ok);
            const unsigned peers = __match_any_sync(full, ok ? e : -1);
            const int first = __ffs(peers) - 1; /* the pair where this expert first appears */
            const bool lead = ok && first == lane;
            const unsigned leadm = __ballot_sync(full, lead);
            const int v = lead ? __popc(peers) : 0; /* pairs of the segment this lane leads */
            int incl = v;
            for (int o = 1; o < 32; o <<= 1) {
                const int y = __shfl_up_sync(full, incl, o);
                if (lane >= o) incl += y;
            }
            const int before = __shfl_sync(full, incl - v, first); /* pairs of the earlier segments */
            const int seg = __popc(leadm & ((1u << first) - 1u));
            (void)okm; /* unused; removing the ballot reschedules the measured SASS */
            if (ok) {
                const int slot = before + __popc(peers & ((1u << lane) - 1u));
                fm_place_pair(sp, lane, e, lane / K, wts[lane], slot, lead, seg, __popc(peers));
            } else if (lane < P) {
                sp.slot_of[lane] = -1;
            }
            fm_finish_segments(a, sp, __popc(leadm));
        }
    } else {
        /* Grouping the pairs by expert. Up to FM_THREADS pairs: each thread ranks
         * its pair against all of them (slot = pairs of lower experts + earlier
         * pairs of its own) and finds its segment from a bitmap of the experts hit;
         * more pairs: counts per expert, then warp 0 scans E and places the pairs
         * 32 at a time. Both give the same stable order. */
        const bool rank_pairs = P <= FM_THREADS;
        const int nbm = (E + 31) / 32;
        for (int e = threadIdx.x; e < (rank_pairs ? nbm : E); e += FM_THREADS) cnt[e] = 0;
        __syncthreads();
        trace_grouping();
        if (rank_pairs) {
            const int p = threadIdx.x;
            const int e = p < P ? ids[p] : -1;
            const bool ok = p < P && e >= 0 && e < E;
            unsigned *bm = (unsigned *)cnt;
            if (ok) atomicOr(bm + (e >> 5), 1u << (e & 31));
            __syncthreads();
            if (ok) {
                int below = 0, before = 0, same = 0;
                for (int q = 0; q < P; q++) {
                    const int f = ids[q];
                    below += (unsigned)f < (unsigned)e; /* an invalid f (< 0 or >= E) never counts */
                    same += f == e;
                    before += f == e && q < p;
                }
                const int slot = below + before;
                int seg = __popc(bm[e >> 5] & ((1u << (e & 31)) - 1));
                for (int i = 0; i < (e >> 5); i++) seg += __popc(bm[i]);
                fm_place_pair(sp, p, e, p / K, wts[p], slot, before == 0, seg, same);
            } else if (p < P) {
                sp.slot_of[p] = -1;
            }
            if (warp == FM_WARPS - 1) {
                int nseg = 0;
                for (int i = lane; i < nbm; i += 32) nseg += __popc(bm[i]);
                nseg = (int)__reduce_add_sync(0xffffffffu, (unsigned)nseg);
                fm_finish_segments(a, sp, nseg);
            }
        } else {
            for (int p = threadIdx.x; p < P; p += FM_THREADS) {
                int e = ids[p];
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
                        sp.seg_begin[si] = run + incl - c;
                        sp.seg_count[si] = c;
                        sp.seg_expert[si] = e;
                    }
                    run += __shfl_sync(0xffffffffu, incl, 31);
                    nseg += __popc(act);
                }
                fm_finish_segments(a, sp, nseg);
                __syncwarp();
                /* stable slots: pairs in order, 32 at a time; peers with the same expert
                 * take consecutive slots in pair order */
                for (int p0 = 0; p0 < P; p0 += 32) {
                    int p = p0 + lane;
                    int e = p < P ? ids[p] : -1;
                    bool ok = p < P && e >= 0 && e < E;
                    unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
                    int rank = __popc(peers & ((1u << lane) - 1));
                    int leader = __ffs(peers) - 1;
                    int base = ok && lane == leader ? sbase[e] : 0;
                    base = __shfl_sync(0xffffffffu, base, leader);
                    __syncwarp();
                    if (ok) {
                        int s = base + rank;
                        sp.slot_token[s] = p / K;
                        sp.slot_weight[s] = wts[p];
                        sp.slot_of[p] = s;
                        if (lane == leader) sbase[e] = base + __popc(peers);
                    } else if (p < P) {
                        sp.slot_of[p] = -1;
                    }
                    __syncwarp();
                }
            }
        }
    } /* grouping */
    /* shared-expert slots: weight 1, or the sigmoid gate of the token */
    for (int i = threadIdx.x; i < S * T; i += FM_THREADS) {
        const int t = i % T;
        sp.slot_token[P + i] = t;
        float v;
        if (lg_smem) {
            v = lg[(size_t)t * (E + 1) + E];
        } else {
            float g[4];
            dmoe_route_split_sums4(plog + (size_t)t * (E + 1) + E, (size_t)T * (E + 1), 0, 1, 1, nsplit, g);
            v = g[0];
        }
        sp.slot_weight[P + i] = a.shared_gate ? __frcp_rn(1.f + __expf(-v)) : 1.f;
    }
    fence_proxy_async(); /* the ring held the scratch; the copy engine writes it next */
    __syncthreads();
}

/* ---- ROUTE: one warp per (16 router rows, k split) unit ---- */

/* Partial logits of 16 router rows r0.. (row E is the shared gate's) over the
 * split's columns [k0, k1) for the tokens p0..p0+8NT-1, with the staged
 * router's arithmetic (router.cu, router_stream_kernel): 8 interleaved
 * accumulators, one per 32-column step mod 8 (its 8 warps), masked steps
 * included, summed in order from 0. */
template <typename DT, int NT>
static __device__ void route_pass(const dmoe_fused_args &a, const fm_layout &L, int r0, int k0, int k1, int split,
                                  int p0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, H = a.hidden, E = a.n_experts, T = a.n_tokens;
    const int rows = E + (a.shared_gate ? 1 : 0);
    auto row = [&](int r) -> const uint16_t * {
        if (r >= rows) return nullptr;
        return r < E ? (const uint16_t *)a.router + (size_t)r * H : (const uint16_t *)a.shared_gate_w;
    };
    const uint16_t *ra = row(r0 + g), *rb = row(r0 + 8 + g);
    const uint16_t *xr[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int t = p0 + 8 * j + g;
        xr[j] = t < T ? (const uint16_t *)a.x + (size_t)t * H : nullptr;
    }
    constexpr int WB = NT == 1 ? 8 : 2; /* virtual warps whose loads are in flight together */
    float acc[8][NT][4];
#pragma unroll
    for (int w = 0; w < 8; w++)
#pragma unroll
        for (int j = 0; j < NT; j++) acc[w][j][0] = acc[w][j][1] = acc[w][j][2] = acc[w][j][3] = 0.f;
    for (int kb = k0; kb < k1; kb += 256) {
#pragma unroll
        for (int w0 = 0; w0 < 8; w0 += WB) {
            uint4 va[WB], vb[WB], vx[WB][NT];
#pragma unroll
            for (int w = 0; w < WB; w++) {
                const int kk = kb + (w0 + w) * 32 + c * 8;
                const bool ok = kk < k1;
                va[w] = dmoe_ld_cached16_if(ra + kk, ok && ra);
                vb[w] = dmoe_ld_cached16_if(rb + kk, ok && rb);
#pragma unroll
                for (int j = 0; j < NT; j++) vx[w][j] = FM_LD_X_IF(xr[j] + kk, ok && xr[j]);
            }
#pragma unroll
            for (int w = 0; w < WB; w++)
#pragma unroll
                for (int j = 0; j < NT; j++) dmoe_mma_swapped<DT>(acc[w0 + w][j], va[w], vb[w], vx[w][j]);
        }
    }
    float *lg = L.plog + (size_t)split * T * (E + 1);
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float s = 0.0f;
#pragma unroll
            for (int w = 0; w < 8; w++) s += acc[w][j][q];
            const int t = p0 + 8 * j + 2 * c + (q & 1), r = r0 + g + (q >= 2 ? 8 : 0);
            if (t < T && r < rows)
#pragma unroll
                for (int cp = 0; cp < FM_PLOG_COPIES; cp++) lg[cp * L.plog_copy + (size_t)t * (E + 1) + r] = s;
        }
}

/* Router units: (16 rows, k split); with caller-supplied routing only the
 * shared gate's row. Returns the number of units. */
static __device__ __forceinline__ int route_units(const dmoe_fused_args &a, int nsplit, int *first) {
    const int E = a.n_experts, rows = E + (a.shared_gate ? 1 : 0);
    *first = a.route_from_ids ? E : 0;
    return (rows - *first + 15) / 16 * nsplit;
}

/* Every warp of the grid takes units; a warp that did any arrives on
 * C_ARRIVE with their number once its logits are visible. */
template <typename DT> static __device__ void route_role(const dmoe_fused_args &a, const fm_layout &L, int kr) {
    const int H = a.hidden, nsplit = (H + kr - 1) / kr;
    int first;
    const int units = route_units(a, nsplit, &first), warp = threadIdx.x >> 5;
    uint32_t done = 0;
    /* unit u on warp u / grid of block u % grid: a decode batch's few units spread over the SMs
     * (on the first warps of the first blocks: 0.5-1 us slower at T=1) */
    for (int u = warp * (int)gridDim.x + (int)blockIdx.x; u < units; u += gridDim.x * FM_WARPS) {
        const int r0 = first + 16 * (u / nsplit), s = u % nsplit, k0 = s * kr, k1 = min(H, k0 + kr);
        /* 16 tokens per pass at most: 8 accumulators per token tile */
        for (int p0 = 0; p0 < a.n_tokens; p0 += 16) {
            if (a.n_tokens - p0 <= 8) route_pass<DT, 1>(a, L, r0, k0, k1, s, p0);
            else route_pass<DT, 2>(a, L, r0, k0, k1, s, p0);
        }
        done++;
    }
    if (done) {
        __syncwarp();
        if ((threadIdx.x & 31) == 0) red_release(L.ctr + C_ARRIVE, done);
    }
}

/* ---- TASKS ---- */

/* A task number decoded: GEMM1 (routed segments first, F/8 tasks each, then
 * the shared ones) or GEMM2 (segment-major, ceil(H/16) tasks each). */
struct fm_task {
    int gemm, seg, tile;
};
static __device__ __forceinline__ fm_task decode(const dmoe_fused_args &a, const fm_sp &sp, uint32_t task) {
    const uint32_t n1 = (uint32_t)sp.hdr[H_N1], nrouted = (uint32_t)sp.hdr[H_NROUTED];
    const uint32_t t1r = (uint32_t)(a.ffn / 8), t1s = (uint32_t)(a.n_shared ? a.shared_ffn / 8 : 1);
    const uint32_t ht = (uint32_t)((a.hidden + 15) / 16);
    fm_task d;
    if (task < n1) {
        const uint32_t routed1 = nrouted * t1r;
        d.gemm = 1;
        if (task < routed1) {
            d.seg = (int)(task / t1r);
            d.tile = (int)(task % t1r);
        } else {
            d.seg = (int)(nrouted + (task - routed1) / t1s);
            d.tile = (int)((task - routed1) % t1s);
        }
    } else {
        d.gemm = 2;
        d.seg = (int)((task - n1) / ht);
        d.tile = (int)((task - n1) % ht);
    }
    return d;
}
static __device__ __forceinline__ int seg_ffn(const dmoe_fused_args &a, const fm_sp &sp, int seg) {
    return sp.seg_expert[seg] >= 0 ? a.ffn : a.shared_ffn;
}

/* Producer warp: claims tasks (one ahead, so the atomic's round trip hides
 * behind the copies) and streams each task's 16 weight rows chunk by chunk
 * into the ring; lane r copies row r. Ends the ring with task -1. */
static __device__ void producer_role(const dmoe_fused_args &a, const fm_layout &L, const fm_sp &sp,
                                     uint32_t first_claim) {
    const int lane = threadIdx.x & 31, H = a.hidden;
    const uint32_t n = (uint32_t)sp.hdr[H_N];
    const uint64_t pol = evict_first_policy();
    uint32_t it = 0;
    uint32_t raw;
    uint32_t task = __shfl_sync(0xffffffffu, first_claim, 0);
#ifdef FM_TRACE
    uint32_t claimed = 0;
#endif
    while (task < n) {
        raw = lane == 0 ? atomicAdd(L.ctr + C_TASK, 1u) : 0u; /* the next one, in flight meanwhile */
        const fm_task d = decode(a, sp, task);
        const int ex = sp.seg_expert[d.seg], F = seg_ffn(a, sp, d.seg);
        const uint16_t *src;
        int kd, nvalid;
        bool valid = lane < 16;
        if (d.gemm == 1) {
            src = fm_w13_row(a, ex, F, d.tile, lane);
            kd = H;
            nvalid = 16;
        } else { /* rows h0 .. h0+15 of W2 (H, F) */
            const uint16_t *w2 = ex >= 0 ? (const uint16_t *)a.w2 + (size_t)ex * H * F
                                         : (const uint16_t *)a.shared_w2 + (size_t)(-1 - ex) * H * F;
            const int h = d.tile * 16 + lane;
            valid = valid && h < H;
            src = w2 + (size_t)(h < H ? h : 0) * F;
            kd = F;
            nvalid = min(16, H - d.tile * 16);
        }
        for (int k0 = 0, c = 0; k0 < kd; k0 += FM_KC, c++) {
            const uint32_t st = it % FM_NS, round = it / FM_NS;
            if (round > 0) mbar_wait(sp.empty + st, (round - 1) & 1);
            const uint32_t bytes = (uint32_t)min(FM_KC, kd - k0) * 2;
            if (lane == 0) {
                sp.stage_task[st] = (int)task;
                sp.stage_chunk[st] = c;
                mbar_arrive_tx(sp.full + st, bytes * (uint32_t)nvalid);
            }
            __syncwarp();
            if (valid) bulk_g2s(sp.ring + (size_t)st * FM_STAGE + lane * FM_RS, src + k0, bytes, sp.full + st, pol);
            it++;
        }
#ifdef FM_TRACE
        claimed++;
#endif
        task = __shfl_sync(0xffffffffu, raw, 0);
    }
    const uint32_t st = it % FM_NS, round = it / FM_NS;
    if (round > 0) mbar_wait(sp.empty + st, (round - 1) & 1);
    if (lane == 0) {
        sp.stage_task[st] = -1;
        mbar_arrive(sp.full + st);
    }
#ifdef FM_TRACE
    if (lane == 0 && blockIdx.x < 4096) fm_ntasks[blockIdx.x] = claimed;
#endif
}

/* acc[j] += W[16 rows of the stage] . B[j] over the chunk columns [kk0, kk1)
 * of this warp (B rows brow[j] + kg, masked by mb[j]; weight rows masked by
 * mlo / mhi). The token loads of a step group are issued before the wait for
 * the stage, so they overlap the copy. */
template <typename DT, int NTT, bool B_L2>
static __device__ __forceinline__ void ring_mma(const char *stage, int kk0, int kk1, int kg,
                                                const uint16_t *const (&brow)[NTT], const uint32_t (&mb)[NTT],
                                                uint32_t mlo, uint32_t mhi, float (&acc)[NTT][4], uint64_t *bar,
                                                uint32_t parity, bool wait) {
    constexpr int UB = NTT >= 8 ? 1 : (NTT >= 4 ? 2 : 4);
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const char *plo = stage + g * FM_RS, *phi = stage + (g + 8) * FM_RS;
    for (int kb = kk0; kb < kk1; kb += 32 * UB) {
        uint4 b[UB][NTT];
        uint32_t mk[UB];
        int ks[UB];
#pragma unroll
        for (int u = 0; u < UB; u++) {
            const int k = kb + 32 * u + 8 * c;
            mk[u] = k < kk1 ? ~0u : 0u;
            ks[u] = k < kk1 ? k : kk0;
#pragma unroll
            for (int j = 0; j < NTT; j++)
                b[u][j] = B_L2 ? ld_l2(brow[j] + kg + ks[u]) : FM_LD_X(brow[j] + kg + ks[u]);
        }
        if (wait) {
            mbar_wait(bar, parity);
            wait = false;
        }
#pragma unroll
        for (int u = 0; u < UB; u++) {
            const uint4 lo = *(const uint4 *)(plo + 2 * ks[u]), hi = *(const uint4 *)(phi + 2 * ks[u]);
            const uint32_t ml = mlo & mk[u], mh = mhi & mk[u];
            const uint4 wa = make_uint4(lo.x & ml, lo.y & ml, lo.z & ml, lo.w & ml);
            const uint4 wb = make_uint4(hi.x & mh, hi.y & mh, hi.z & mh, hi.w & mh);
#pragma unroll
            for (int j = 0; j < NTT; j++) {
                const uint32_t m = mb[j];
                const uint4 xv = make_uint4(b[u][j].x & m, b[u][j].y & m, b[u][j].z & m, b[u][j].w & m);
                dmoe_mma_swapped<DT>(acc[j], wa, wb, xv);
            }
        }
    }
    if (wait) mbar_wait(bar, parity); /* this warp had no columns in the chunk */
}

/* One task of a consumer warp: every chunk of it from the ring (the first one
 * already waited for), then the warp's partial tile into reduction buffer rb. */
template <typename DT, int NTT>
static __device__ void consumer_task(const dmoe_fused_args &a, const fm_layout &L, const fm_sp &sp, uint32_t task,
                                     const fm_task &d, uint32_t &it, uint32_t &rb, int &ready_seg) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, H = a.hidden;
    const int begin = sp.seg_begin[d.seg], n = sp.seg_count[d.seg], F = seg_ffn(a, sp, d.seg);
    const size_t fstride = (size_t)(a.ffn > a.shared_ffn ? a.ffn : a.shared_ffn);
    const uint16_t *brow[NTT];
    uint32_t mb[NTT];
    uint32_t mlo = ~0u, mhi = ~0u;
    int kd;
    if (d.gemm == 1) {
        kd = H;
#pragma unroll
        for (int j = 0; j < NTT; j++) {
            const int r = 8 * j + g;
            mb[j] = r < n ? ~0u : 0u;
            brow[j] = (const uint16_t *)a.x + (size_t)sp.slot_token[begin + (r < n ? r : 0)] * H;
        }
    } else {
        kd = F;
        const int h0 = d.tile * 16;
        mlo = h0 + g < H ? ~0u : 0u;
        mhi = h0 + 8 + g < H ? ~0u : 0u;
#pragma unroll
        for (int j = 0; j < NTT; j++) {
            const int r = 8 * j + g;
            mb[j] = r < n ? ~0u : 0u;
            brow[j] = L.act + (size_t)(begin + (r < n ? r : 0)) * fstride;
        }
        if (d.seg != ready_seg) { /* act of this segment: every GEMM1 task of it published */
            if (lane == 0) wait_at_least(L.done1 + d.seg, (uint32_t)(F / 8), FM_DONE1_POLL_NS);
            __syncwarp();
            ready_seg = d.seg;
        }
    }
    float acc[NTT][4];
#pragma unroll
    for (int j = 0; j < NTT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int k0 = 0; k0 < kd; k0 += FM_KC) {
        const uint32_t st = it % FM_NS;
        const int klen = min(FM_KC, kd - k0);
        const int sl = ((klen + FM_CWARPS - 1) / FM_CWARPS + 31) / 32 * 32;
        const int kk0 = warp * sl, kk1 = min(klen, kk0 + sl);
        const char *stage = sp.ring + (size_t)st * FM_STAGE;
        const bool wait = k0 > 0;
        if (d.gemm == 1)
            ring_mma<DT, NTT, false>(stage, kk0, kk0 < kk1 ? kk1 : kk0, k0, brow, mb, mlo, mhi, acc, sp.full + st,
                                     (it / FM_NS) & 1, wait);
        else
            ring_mma<DT, NTT, true>(stage, kk0, kk0 < kk1 ? kk1 : kk0, k0, brow, mb, mlo, mhi, acc, sp.full + st,
                                    (it / FM_NS) & 1, wait);
        warp_release(sp.empty + st, FM_ALL_RING);
        it++;
    }
    const uint32_t b = rb % FM_NR;
    if (rb >= FM_NR) mbar_wait(sp.redempty + b, ((rb / FM_NR) - 1) & 1);
    float *red = sp.red + ((size_t)(b * FM_CWARPS + warp) * sp.ntt) * 128;
#pragma unroll
    for (int j = 0; j < NTT; j++)
        *(float4 *)(red + (j * 32 + lane) * 4) = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    if (warp == 0 && lane == 0) sp.red_task[b] = (int)task;
    warp_release(sp.redfull + b, FM_ALL_RED);
    rb++;
}

/* Consumer warps: take the ring's tasks in order until task -1, then pass
 * the end on to the publisher. */
template <typename DT> static __device__ void consumer_role(const dmoe_fused_args &a, const fm_layout &L,
                                                          const fm_sp &sp) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint32_t it = 0, rb = 0;
    int ready_seg = -1; /* the last segment whose act this warp saw complete */
    for (;;) {
        const uint32_t st = it % FM_NS;
        mbar_wait(sp.full + st, (it / FM_NS) & 1);
        const int task = sp.stage_task[st];
        if (task < 0) break;
        const fm_task d = decode(a, sp, (uint32_t)task);
        const int n = sp.seg_count[d.seg];
        if (n <= 8) consumer_task<DT, 1>(a, L, sp, (uint32_t)task, d, it, rb, ready_seg);
        else if (n <= 16) consumer_task<DT, 2>(a, L, sp, (uint32_t)task, d, it, rb, ready_seg);
        else if (n <= 32) consumer_task<DT, 4>(a, L, sp, (uint32_t)task, d, it, rb, ready_seg);
        else consumer_task<DT, 8>(a, L, sp, (uint32_t)task, d, it, rb, ready_seg);
    }
    const uint32_t b = rb % FM_NR;
    if (rb >= FM_NR) mbar_wait(sp.redempty + b, ((rb / FM_NR) - 1) & 1);
    if (warp == 0 && lane == 0) sp.red_task[b] = -1;
    warp_release(sp.redfull + b, FM_ALL_RED);
}

/* y[t, h0..h0+15] = sum over k in order of part[slot_of(t,k)] + the shared parts.
 * Each lane takes CU outputs at a time, 8 k of each in flight together. */
template <typename DT>
static __device__ void combine_tile(const dmoe_fused_args &a, const fm_layout &L, const fm_sp &sp, int h0) {
    constexpr int CU = 4;
    const int T = a.n_tokens, K = a.top_k, H = a.hidden, P = T * K, lane = threadIdx.x & 31;
    DT *y = (DT *)a.y;
    for (int i0 = lane; i0 < T * 16; i0 += 32 * CU) {
        float s[CU];
        int slot[CU][8];
#pragma unroll
        for (int u = 0; u < CU; u++) s[u] = 0.f;
        for (int k0 = 0; k0 < K; k0 += 8) { /* summed in k order */
            float v[CU][8];
#pragma unroll
            for (int u = 0; u < CU; u++) {
                const int i = i0 + 32 * u, t = i >> 4, h = h0 + (i & 15);
                const bool ok = i < T * 16 && h < H;
#pragma unroll
                for (int q = 0; q < 8; q++) {
                    const int k = k0 + q;
                    slot[u][q] = ok && k < K ? sp.slot_of[t * K + k] : -1;
                    v[u][q] = slot[u][q] >= 0 ? ld_l2f(L.part + (size_t)slot[u][q] * H + h) : 0.f;
                }
            }
#pragma unroll
            for (int u = 0; u < CU; u++)
#pragma unroll
                for (int q = 0; q < 8; q++)
                    if (slot[u][q] >= 0) s[u] += v[u][q];
        }
#pragma unroll
        for (int u = 0; u < CU; u++) {
            const int i = i0 + 32 * u, t = i >> 4, h = h0 + (i & 15);
            if (i >= T * 16 || h >= H) continue;
            float r = s[u];
            for (int j = 0; j < a.n_shared; j++) r += ld_l2f(L.part + (size_t)(P + j * T + t) * H + h);
            y[(size_t)t * H + h] = dmoe_dt<DT>::from_f32(r);
        }
    }
}

/* The publisher's work on one finished task in reduction buffer b: the four
 * partials summed in warp order, the epilogue (SwiGLU into act, or the routing
 * weight into part) and the stores; then buffer b goes back to the consumers. */
template <typename DT>
static __device__ __forceinline__ void publish_stores(const dmoe_fused_args &a, const fm_layout &L, const fm_sp &sp,
                                                      const fm_task &d, uint32_t b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, H = a.hidden;
    const size_t fstride = (size_t)(a.ffn > a.shared_ffn ? a.ffn : a.shared_ffn);
    const int begin = sp.seg_begin[d.seg], n = sp.seg_count[d.seg];
    const int ntt = (n + 7) / 8;
    const float *red = sp.red + (size_t)b * FM_CWARPS * sp.ntt * 128;
    for (int j = 0; j < ntt; j++) {
        float4 v = *(const float4 *)(red + (j * 32 + lane) * 4);
        for (int w = 1; w < FM_CWARPS; w++) {
            const float4 o = *(const float4 *)(red + ((w * sp.ntt + j) * 32 + lane) * 4);
            v.x += o.x;
            v.y += o.y;
            v.z += o.z;
            v.w += o.w;
        }
        const float acc[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const int r = 8 * j + 2 * c + q;
            if (r >= n) continue;
            if (d.gemm == 1) {
                const float gt = acc[q], up = acc[2 + q];
                reinterpret_cast<DT *>(L.act)[(size_t)(begin + r) * fstride + d.tile * 8 + g] =
                    dmoe_dt<DT>::from_f32(__fdividef(gt, 1.f + __expf(-gt)) * up);
            } else {
                const float w = sp.slot_weight[begin + r];
                float *prow = L.part + (size_t)(begin + r) * H;
                const int hlo = d.tile * 16 + g, hhi = hlo + 8;
                if (hlo < H) prow[hlo] = w * acc[q];
                if (hhi < H) prow[hhi] = w * acc[2 + q];
            }
        }
    }
#if FM_ALL_RED
    __syncwarp(); /* every lane's act / part stores before lane 0's release of the task's counter (publisher_role) */
#endif
    warp_release(sp.redempty + b, FM_ALL_RED); /* the buffer is read: consumers may refill it (lane 0: after a __syncwarp,
                                      which also orders the stores before that release) */
}

/* Publisher warp: per finished task, publish_stores, then the arrival on the
 * task's counter (one release by lane 0 after publish_stores' __syncwarp), or,
 * for an h tile's last-segment task, the wait for the tile's other arrivals and
 * the combine. (Batching the arrivals of the tasks already waiting, one release
 * for all, measured 1-1.5 us slower at T=1 and 2-5 us faster at T=16 when every
 * arrival still awaited its answer: bench/fused-notes.md, session 4.) */
template <typename DT> static __device__ void publisher_role(const dmoe_fused_args &a, const fm_layout &L,
                                                           const fm_sp &sp) {
    const int lane = threadIdx.x & 31;
    const int nseg = sp.hdr[H_NSEG];
    for (uint32_t rb = 0;; rb++) {
        const uint32_t b = rb % FM_NR;
        mbar_wait(sp.redfull + b, (rb / FM_NR) & 1);
        const int task = sp.red_task[b];
        if (task < 0) break;
        const fm_task d = decode(a, sp, (uint32_t)task);
        /* The h tile's task of the last segment is claimed after the tile's other
         * tasks: its publisher combines the tile once their nseg - 1 arrivals are
         * in (the others' arrivals are releases without an answer; this one does not
         * arrive, its own part rows are its warp's stores). A wait is only ever
         * on tasks claimed earlier, so it cannot block the tasks it waits for. */
        const bool last = d.gemm == 2 && d.seg == nseg - 1;
        publish_stores<DT>(a, L, sp, d, b);
        if (d.gemm == 1) { /* act rows published; nobody here needs the count */
            if (lane == 0) red_release(L.done1 + d.seg, 1u);
            continue;
        }
        if (!last) {
            if (lane == 0) red_release(L.done2 + d.tile, 1u);
            continue;
        }
        /* (an acquire issued before publish_stores would hold the warp there: the
         * acquire's L1 invalidation waits for its load) */
        if (lane == 0) wait_at_least(L.done2 + d.tile, (uint32_t)nseg - 1, FM_ARRIVE_POLL_NS);
        __syncwarp(); /* lane 0's acquire and the warp's own part stores, for every lane's loads */
        combine_tile<DT>(a, L, sp, d.tile * 16);
    }
}

/* One whole forward, run by every block of a fully resident grid. smem is the
 * block's dynamic shared memory (fm_smem_bytes for the launch's T, E, K, S),
 * s_word one shared word. Leaves every counter at zero, so it can run again at
 * once (a new launch, a graph replay, or the next batch of a resident kernel,
 * which must still keep its blocks in step between batches). */
template <typename DT> static __device__ __forceinline__ void fused_body(const dmoe_fused_args &a, char *smem,
                                                                        uint32_t *s_word_p) {
    uint32_t &s_word = *s_word_p;
    trace(0);
    const int T = a.n_tokens, E = a.n_experts, K = a.top_k, S = a.n_shared, H = a.hidden;
    fm_layout L;
    fm_carve(a.ws, T, H, a.ffn, a.shared_ffn, E, K, S, &L);
    const fm_smem m = fm_smem_layout(T, E, K, S);
    const fm_sp sp = fm_pointers(smem, m, E, S, T * K + S * T);
    if (threadIdx.x == 0) {
        for (int i = 0; i < FM_NS; i++) {
            mbar_init(sp.full + i, 1);
            mbar_init(sp.empty + i, FM_CWARPS * FM_ARRIVERS_RING);
        }
        for (int i = 0; i < FM_NR; i++) {
            mbar_init(sp.redfull + i, FM_CWARPS * FM_ARRIVERS_RED);
            mbar_init(sp.redempty + i, FM_ARRIVERS_RED);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    const int kr = fm_route_kr(a.route_kchunk, H), nsplit = (H + kr - 1) / kr;
    if (!a.route_from_ids || a.shared_gate) {
        route_role<DT>(a, L, kr);
        int first;
        const int units = route_units(a, nsplit, &first);
        if (threadIdx.x == 0) /* every block needs every logit */
            wait_at_least(L.ctr + C_ARRIVE, (uint32_t)units, FM_ARRIVE_POLL_NS);
    }
    __syncthreads();
    trace(1);
    /* the producer's first claim needs no plan: its round trip overlaps the planning */
    const int warp = threadIdx.x >> 5;
    const bool pf = fm_prefetch_first(a); /* then the publisher claims it, for its prefetch */
    uint32_t first_claim = warp == (pf ? FM_PUBLISHER : FM_PRODUCER) && (threadIdx.x & 31) == 0
                               ? atomicAdd(L.ctr + C_TASK, 1u)
                               : 0u;
    plan_block(a, L, sp, nsplit, first_claim);
    if (pf) first_claim = (uint32_t)sp.hdr[H_FIRST];
    trace(2);
    if (sp.hdr[H_NSEG] == 0) /* every pair out of range and no shared expert: y = 0 */
        for (size_t i = (size_t)blockIdx.x * FM_THREADS + threadIdx.x; i < (size_t)T * H; i += (size_t)gridDim.x * FM_THREADS)
            ((DT *)a.y)[i] = dmoe_dt<DT>::from_f32(0.f);
    if (warp == FM_PRODUCER) {
        producer_role(a, L, sp, first_claim);
        trace_warp(6);
    } else if (warp == FM_PUBLISHER) {
        publisher_role<DT>(a, L, sp);
        trace_warp(5);
    } else {
        consumer_role<DT>(a, L, sp);
    }
    trace(3);

    /* the last block out resets the counters for the next launch */
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 0; i < FM_NS; i++) {
            mbar_inval(sp.full + i);
            mbar_inval(sp.empty + i);
        }
        for (int i = 0; i < FM_NR; i++) {
            mbar_inval(sp.redfull + i);
            mbar_inval(sp.redempty + i);
        }
        s_word = atom_acq_rel(L.ctr + C_EXIT, 1u); /* release: this block is done with every counter */
    }
    __syncthreads();
    if (s_word == gridDim.x - 1) { /* acquired every block's release: reset (the kernel's end, or the
                                      resident kernel's barrier, publishes the stores) */
        const int nseg = sp.hdr[H_NSEG], ht = (H + 15) / 16;
        for (int i = threadIdx.x; i < nseg; i += FM_THREADS) L.done1[i] = 0;
        for (int i = threadIdx.x; i < ht; i += FM_THREADS) L.done2[i] = 0;
        if (threadIdx.x == 0) {
            L.ctr[C_ARRIVE] = 0;
            L.ctr[C_TASK] = 0;
            L.ctr[C_EXIT] = 0;
            L.ctr[C_TOPK] = 0;
        }
    }
    trace(4);
}

#ifndef DMOE_FUSED_BODY_ONLY /* resident.cu includes this file for fused_body alone */
template <typename DT> __global__ void __launch_bounds__(FM_THREADS, FM_MIN_BLOCKS) fused_moe_kernel(const dmoe_fused_args a) {
    extern __shared__ __align__(128) char smem[];
    __shared__ uint32_t s_word;
    fused_body<DT>(a, smem, &s_word);
}

/* ---- host ---- */

size_t dmoe__fused_workspace_bytes(int64_t max_tokens, int32_t hidden, int32_t ffn, int32_t shared_ffn,
                                   int32_t n_experts, int32_t top_k, int32_t n_shared) {
    /* shared_ffn means nothing without shared experts (dmoe.h): a stale value must not size act */
    return fm_carve(NULL, max_tokens, hidden, ffn, n_shared > 0 ? shared_ffn : 0, n_experts, top_k, n_shared, NULL);
}

/* Dynamic shared memory of a block for a forward of up to max_tokens tokens. */
static size_t fm_smem_bytes(int32_t max_tokens, int32_t E, int32_t K, int32_t S) {
    return fm_smem_layout(max_tokens, E, K, S).total;
}

/* The workspace holds the partial logits of min(ceil(H / 256), FM_SPLIT_MAX) router splits (fm_carve):
 * a router split narrower than that would write past them. */
extern "C" int dmoe__fused_kchunk_fits(int32_t H, int32_t kchunk) {
    const int sized = (H + 255) / 256 < FM_SPLIT_MAX ? (H + 255) / 256 : FM_SPLIT_MAX;
    const int kr = fm_route_kr(kchunk, H);
    return kr > 0 && (H + kr - 1) / kr <= sized;
}

extern "C" size_t dmoe__fused_smem_limit(int32_t device) {
    static size_t cache[64];
    if (device >= 0 && device < 64 && cache[device]) return cache[device];
    size_t most = 0;
    if (dmoe_smem_most(fused_moe_kernel<dmoe_bf16>, device, &most) != cudaSuccess) { /* the f16 one is alike */
        (void)cudaGetLastError();
        return 0;
    }
    if (device >= 0 && device < 64) cache[device] = most;
    return most;
}

extern "C" size_t dmoe__fused_smem_bytes(int32_t max_tokens, int32_t n_experts, int32_t top_k, int32_t n_shared) {
    return fm_smem_bytes(max_tokens, n_experts, top_k, n_shared);
}

template <typename DT>
static dmoe_status launch(dmoe_context *ctx, const dmoe_fused_args *a, int32_t num_sms, cudaStream_t stream) {
    const size_t smem = fm_smem_bytes(a->n_tokens, a->n_experts, a->top_k, a->n_shared);
    auto kernel = fused_moe_kernel<DT>;
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const size_t most = dmoe__fused_smem_limit(cc->device);
    if (smem > most)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "fused kernel: %zu B of shared memory per block needed at T=%d, the device allows %zu",
                           smem, a->n_tokens, most);
    /* raised once per device to the most the kernel can have (cuda-context.h) */
    static unsigned long long smem_done = 0;
    DMOE_CUDA_CHECK(ctx, dmoe_set_smem(kernel, smem, cc->device, &smem_done));
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
#ifdef FM_NONCOOP /* experiment: the same grid without the cooperative guarantee */
    cfg.numAttrs = 0;
#else
    cfg.numAttrs = 1;
#endif
    /* DMOE_PRINT_CONFIG (not 0): once per change of T, not every forward (a race between host threads
     * at worst prints a line twice) */
    static int printed_t = -1;
    if (cc->print_config && __atomic_exchange_n(&printed_t, a->n_tokens, __ATOMIC_RELAXED) != a->n_tokens)
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
    dmoe_fused_args b = *a;
    if (b.route_kchunk <= 0) /* the staged router's split, so both paths route bitwise alike */
        b.route_kchunk = (int32_t)dmoe__cuda_router_config(b.n_tokens, b.hidden, b.n_experts, num_sms).k_chunk;
    if (!dmoe__fused_kchunk_fits(b.hidden, b.route_kchunk))
        return dmoe__error(ctx, DMOE_ERR_INTERNAL, "fused kernel: router split of %d columns at H=%d needs more "
                           "partial logits than its workspace holds", (int)b.route_kchunk, (int)b.hidden);
    /* The dtype is a template parameter only because mma.sync names it in the instruction. */
    return b.is_bf16 ? launch<dmoe_bf16>(ctx, &b, num_sms, stream) : launch<dmoe_f16>(ctx, &b, num_sms, stream);
}
#endif /* DMOE_FUSED_BODY_ONLY */
