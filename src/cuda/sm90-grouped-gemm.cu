/*
 * sm90-grouped-gemm.cu: the grouped GEMMs of the staged MoE path on Hopper
 * (sm_90a): 128x256 tiles for many rows per expert (prefill), described here,
 * and the swap-AB kernels for few rows per expert (further down, before the
 * host side; heuristics.cu chooses).
 *
 *   GEMM1  act  (n_rows, F) = silu(x[t] . w13[e, f]) * (x[t] . w13[e, F + f])
 *          x (T, H) gathered by t = pairs[s] / top_k, w13 (E, 2F, H)
 *   GEMM2  part (n_rows, H) = topk_w[pairs[s]] * (act[s] . w2[e, h])
 *          act (n_rows, F) contiguous per expert, w2 (E, H, F)
 * Both are "TN": every operand is K-major (rows contiguous along the reduction).
 * Expert e owns rows [offsets[e], offsets[e+1]); the host does not know the
 * counts, so nothing on the host depends on them.
 *
 * Algorithm. One persistent kernel per GEMM, one CTA per SM, 384 threads.
 *   - Tiles: 128 rows x 256 B rows x 64 k per stage (GEMM1: 128 act columns,
 *     GEMM2: 256 part columns). At start the CTA turns offsets into a tile
 *     prefix in shared memory (expert e: ceil(count_e / 128) row tiles times
 *     n_tiles column tiles) and walks tiles b, b + grid, ... Inside an expert
 *     tiles come in groups of kGroupM row tiles, column outer, so that CTAs
 *     running at the same time share a weight tile through L2. All tiles take
 *     the same time (rows past the segment are computed, not skipped), which
 *     keeps the CTAs in step and that sharing intact (bench/sm90-gemm-notes.md).
 *   - Warpgroup 0 produces (setmaxnreg 56). Thread 0 loads B, two TMA boxes
 *     of 128 weight rows x 64 k, 128-byte swizzle. GEMM2 loads A (act rows,
 *     contiguous) with one more TMA box. GEMM1 gathers A (x rows by token)
 *     with 16-byte cp.async from all 128 threads into the same swizzled
 *     layout; the rows' addresses are computed once per tile into shared
 *     memory. Rows past the segment and k past k_dim are zero-filled. One
 *     mbarrier per stage ("full") counts the cp.async arrivals and the TMA
 *     bytes, a second ("empty") the 8 consumer warps releasing it. 4 stages.
 *   - Warpgroups 1 and 2 consume (setmaxnreg 224): each owns 64 rows and
 *     issues two wgmma m64n128k16 per k16 step (one per 128-row half of B),
 *     64 x 256 fp32 accumulators in registers. One wgmma batch stays in
 *     flight; a stage is released once the batch reading it has completed.
 *   - GEMM1's B tile is gate rows [f0, f0+128) of w13[e] followed by up rows
 *     [F+f0, F+f0+128), so gate and up of feature f0+j sit in the same
 *     register of the same thread: the epilogue computes silu(g) * u. GEMM2's
 *     B tile is rows [h0, h0+256) of w2[e]; its epilogue scales by the
 *     routing weight (loaded before the k loop). Epilogues transpose pairs
 *     inside each quad of lanes and store 16 bytes per lane from registers,
 *     predicated on the segment's rows and on n_dim.
 * B rows of a partial tile past the expert read the next expert's rows (or
 * TMA's zero fill past the tensor); their columns are never stored. No
 * padding copies anywhere.
 */
#include <cuda.h> /* CUtensorMap and its enums; the encoder comes from the runtime */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "sm90-grouped-gemm.h"
#include "cuda-context.h"

namespace {

/* Tile shapes are compile-time; run-time shapes are any multiple of 8. */
constexpr int kBlockM = 128;                       /* rows of act/part per tile */
constexpr int kBlockK = 64;                        /* 64 x 2 bytes = one 128-byte swizzle row */
constexpr int kBoxRows = 128;                      /* B rows per TMA box = one wgmma n128 */
constexpr int kTileABytes = kBlockM * kBlockK * 2; /* 16 KB */
constexpr int kTileBBytes = 2 * kBoxRows * kBlockK * 2; /* 32 KB */
constexpr int kStageBytes = kTileABytes + kTileBBytes;
constexpr int kStages = 4;  /* 3 measured 20-25% slower */
constexpr int kGroupM = 8;  /* row tiles per raster group */
constexpr int kThreads = 384; /* producer warpgroup + 2 consumer warpgroups */
constexpr int kProducerRegs = 56;
constexpr int kConsumerRegs = 224;

enum gemm_kind { GEMM1_SWIGLU = 1, GEMM2_SCALE = 2 };

struct grouped_params {
    const void *a;             /* GEMM1: x (T, H); GEMM2: act (n_rows, F) */
    void *out;                 /* GEMM1: act (n_rows, F); GEMM2: part (n_rows, H) */
    const int32_t *offsets;    /* (E+1) */
    const int32_t *pairs;      /* (n_rows) slot -> pair t*K + k */
    const float *topk_w;       /* (T*K), GEMM2 only */
    int64_t k_dim;             /* H or F */
    int64_t n_dim;             /* F or H */
    int64_t b_rows_per_expert; /* 2F or H: rows of w13[e] / w2[e] */
    int32_t top_k;
    int32_t n_experts;
    int32_t n_tiles_n;         /* column tiles per expert */
    int32_t tile_n;            /* output columns per tile: 128 (GEMM1) or 256 (GEMM2) */
    int32_t b_second;          /* row offset of B's second box: F (GEMM1) or 128 (GEMM2) */
};

/* ---- PTX wrappers ---- */
__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile("{\n\t.reg .pred p;\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
/* Arrives on bar once every cp.async this thread issued before has landed. */
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
/* 16 bytes global -> shared; src_bytes 0 writes zeros and reads nothing. */
/* No "memory" clobber: nothing in this thread reads the destination, and
 * leaving it out lets the compiler issue the row-pointer loads ahead. */
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void *src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                            int32_t c_inner, int32_t c_row) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4}], [%2];" ::"r"(dst),
                 "l"((uint64_t)map), "r"(bar), "r"(c_inner), "r"(c_row)
                 : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving accumulator accesses across wgmma waits. */
__device__ __forceinline__ void fence_acc(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/* Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups
 * 1024 bytes apart. Adding 2 advances 32 bytes = 16 elements along K. */
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

/* d (64x128 fp32 per warpgroup) += A (64x16, smem) * B (128x16, smem)^T;
 * scale_d == 0 overwrites d. */
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db,
                                                 int scale_d) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile(
            "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %66, 0;\n\t"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
            "%64, %65, p, 1, 1, 0, 0;\n\t}"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
              "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
              "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
              "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
              "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
              "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
              "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
              "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
              "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(da), "l"(db), "r"(scale_d));
    } else {
        asm volatile(
            "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %66, 0;\n\t"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
            "%64, %65, p, 1, 1, 0, 0;\n\t}"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
              "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
              "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
              "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
              "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
              "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
              "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
              "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
              "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(da), "l"(db), "r"(scale_d));
    }
}

/* d (64x16 fp32 per warpgroup) += A (64x16, smem) * B (16x16, smem)^T. */
template <typename T>
__device__ __forceinline__ void wgmma_m64n16k16(float (&d)[8], uint64_t da, uint64_t db, int scale_d) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %10, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7}, "
                     "%8, %9, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7])
                     : "l"(da), "l"(db), "r"(scale_d));
    } else {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %10, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7}, "
                     "%8, %9, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7])
                     : "l"(da), "l"(db), "r"(scale_d));
    }
}

/* d (64x32 fp32 per warpgroup) += A (64x16, smem) * B (32x16, smem)^T. */
template <typename T>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t da, uint64_t db, int scale_d) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %18, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                     "%16, %17, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(da), "l"(db), "r"(scale_d));
    } else {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %18, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                     "%16, %17, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                     : "l"(da), "l"(db), "r"(scale_d));
    }
}

/* d (64x64 fp32 per warpgroup) += A (64x16, smem) * B (64x16, smem)^T. */
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t da, uint64_t db, int scale_d) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %34, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                       "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                       "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(scale_d));
    } else {
        asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %34, 0;\n\t"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "%32, %33, p, 1, 1, 0, 0;\n\t}"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                       "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                       "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(scale_d));
    }
}


template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ float silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

/* ---- the tile list ---- */
struct tile_info {
    int32_t expert;
    int32_t row0;   /* first slot of the tile */
    int32_t rows;   /* valid rows, 1..128 */
    int32_t n_tile; /* column tile */
};

/* tile_start[e] = first tile of expert e (ceil(count / block_m) * n_tiles_n
 * tiles each), tile_start[E] = total. All threads
 * of the CTA call this; it ends with __syncthreads. */
__device__ void build_tile_prefix(const grouped_params &p, int32_t *tile_start, int32_t *warp_sums,
                                  int block_m) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    constexpr int n_warps = kThreads / 32;
    int32_t running = 0;
    if (tid == 0) tile_start[0] = 0;
    for (int base = 0; base < p.n_experts; base += kThreads) {
        const int e = base + tid;
        int32_t v = 0;
        if (e < p.n_experts) {
            const int32_t count = __ldg(p.offsets + e + 1) - __ldg(p.offsets + e);
            v = count > 0 ? (count + block_m - 1) / block_m * p.n_tiles_n : 0;
        }
        int32_t incl = v;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int32_t o = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += o;
        }
        if (lane == 31) warp_sums[warp] = incl;
        __syncthreads();
        int32_t before = running, chunk = 0;
        for (int w = 0; w < n_warps; ++w) {
            const int32_t s = warp_sums[w];
            if (w < warp) before += s;
            chunk += s;
        }
        if (e < p.n_experts) tile_start[e + 1] = before + incl;
        running += chunk;
        __syncthreads(); /* warp_sums is rewritten by the next chunk */
    }
    __syncthreads();
}

/* Tile t -> (expert, rows, column tile). Inside an expert, row tiles come in
 * groups of kGroupM; within a group the column tile is the outer index, so
 * consecutive tiles (running at the same time on neighbouring CTAs) share
 * the same weight tile. */
__device__ __forceinline__ tile_info decode_tile(const grouped_params &p, const int32_t *tile_start,
                                                 int32_t t) {
    int lo = 0, hi = p.n_experts - 1; /* largest e with tile_start[e] <= t */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (tile_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    const int32_t local = t - tile_start[lo];
    const int32_t seg0 = __ldg(p.offsets + lo);
    const int32_t count = __ldg(p.offsets + lo + 1) - seg0;
    const int32_t m_tiles = (count + kBlockM - 1) / kBlockM;
    const int32_t group_tiles = kGroupM * p.n_tiles_n;
    const int32_t g = local / group_tiles;
    const int32_t in_group = local - g * group_tiles;
    const int32_t g_rows = min(kGroupM, m_tiles - g * kGroupM);
    const int32_t n_tile = in_group / g_rows;
    const int32_t m_tile = g * kGroupM + (in_group - n_tile * g_rows);
    tile_info ti;
    ti.expert = lo;
    ti.row0 = seg0 + m_tile * kBlockM;
    ti.rows = min(kBlockM, count - m_tile * kBlockM);
    ti.n_tile = n_tile;
    return ti;
}

__device__ __forceinline__ void producer_bar_sync() {
    asm volatile("bar.sync 1, 128;" ::: "memory"); /* the producer warpgroup only */
}

/* Stores one accumulator row segment: v[i] holds columns col0 + 8 i + 2 q and
 * + 1 (q = lane % 4) as a packed pair. A 4x4 transpose inside each quad gives
 * lane q all 8 columns of group 4 a + q, stored as 16 bytes (4x fewer store
 * instructions than the pairs: +30% on qwen3 GEMM2). Every lane must call this
 * (shuffles); row_ok only predicates the stores. */
template <typename T, int NG>
__device__ __forceinline__ void store_groups(T *orow, const uint32_t (&v)[NG], int64_t col0,
                                             int64_t n_dim, bool row_ok, int lane) {
    static_assert(NG % 4 == 0, "groups come in fours");
    const int q = lane & 3;
    const bool b0 = lane & 1, b1 = lane & 2;
#pragma unroll
    for (int a = 0; a < NG / 4; ++a) {
        uint32_t x0 = v[4 * a], x1 = v[4 * a + 1], x2 = v[4 * a + 2], x3 = v[4 * a + 3];
        uint32_t t0 = b0 ? x0 : x1, t1 = b0 ? x2 : x3;
        t0 = __shfl_xor_sync(0xffffffffu, t0, 1);
        t1 = __shfl_xor_sync(0xffffffffu, t1, 1);
        x0 = b0 ? t0 : x0;
        x1 = b0 ? x1 : t0;
        x2 = b0 ? t1 : x2;
        x3 = b0 ? x3 : t1;
        uint32_t u0 = b1 ? x0 : x2, u1 = b1 ? x1 : x3;
        u0 = __shfl_xor_sync(0xffffffffu, u0, 2);
        u1 = __shfl_xor_sync(0xffffffffu, u1, 2);
        x0 = b1 ? u0 : x0;
        x1 = b1 ? u1 : x1;
        x2 = b1 ? x2 : u0;
        x3 = b1 ? x3 : u1;
        const int64_t col = col0 + 8 * (4 * a + q);
        if (row_ok && col < n_dim) *(uint4 *)(orow + col) = make_uint4(x0, x1, x2, x3);
    }
}

/* ---- the kernel ---- */
template <typename T, int Kind>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap tmap_a,
                        const __grid_constant__ CUtensorMap tmap_b, const grouped_params p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); /* built for another architecture: the host never launches it there */
#else
    constexpr int S = kStages;
    extern __shared__ uint8_t smem_raw[];
    /* 128-byte swizzle atoms are 1024 bytes: align the ring to 1024. The
     * offset is applied to smem_raw itself so the compiler keeps knowing that
     * these are shared-memory pointers (LDS, not generic loads). */
    const uint32_t pad = (1024 - (smem_addr(smem_raw) & 1023)) & 1023;
    uint8_t *smem = smem_raw + pad;
    uint64_t *full_bar = (uint64_t *)(smem + S * kStageBytes);
    uint64_t *empty_bar = full_bar + S;
    int32_t *warp_sums = (int32_t *)(empty_bar + S);         /* 16 */
    const T **row_ptr = (const T **)(warp_sums + 16);        /* 128: GEMM1's x rows */
    int32_t *tile_start = (int32_t *)(row_ptr + kBlockM);    /* E + 1 */
    const uint32_t ring = smem_addr(smem);
    /* GEMM1 gathers A with cp.async (128 arrivals) and loads B with TMA (one
     * arrival with the byte count); GEMM2 loads both with TMA. */
    constexpr bool a_by_tma = Kind == GEMM2_SCALE;
    constexpr uint32_t full_count = a_by_tma ? 1 : 128 + 1;
    constexpr uint32_t tma_bytes = a_by_tma ? kStageBytes : kTileBBytes;

    const int tid = threadIdx.x;
    const int wg = tid / 128;
    if (tid == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(smem_addr(full_bar + s), full_count);
            mbar_init(smem_addr(empty_bar + s), 8); /* one per consumer warp */
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&tmap_b) : "memory");
        if (a_by_tma) asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&tmap_a) : "memory");
    }
    build_tile_prefix(p, tile_start, warp_sums, kBlockM); /* ends with __syncthreads */
    const int32_t n_kb = (int32_t)((p.k_dim + kBlockK - 1) / kBlockK);

    if (wg == 0) {
        /* ---- producer warpgroup ---- */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs));
        const int32_t n_tiles = tile_start[p.n_experts];
        const int chunk = tid & 7;  /* 16-byte chunk of a 128-byte row */
        const int rbase = tid >> 3; /* rows rbase + 16 i, i < 8 */
        const uint32_t a_off = rbase * 128 + ((chunk ^ (rbase & 7)) << 4);
        const T *a = (const T *)p.a;
        uint32_t it = 0;
        for (int32_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            const tile_info ti = decode_tile(p, tile_start, t);
            if (!a_by_tma) {
                /* x row of every tile row; NULL past the segment: those rows
                 * are zero-filled (an output row depends only on its own A
                 * row, and rows past the segment are not stored). */
                producer_bar_sync(); /* the previous tile's reads of row_ptr are done */
                for (int r = tid; r < kBlockM; r += 128)
                    row_ptr[r] = r < ti.rows
                                     ? a + (int64_t)(__ldg(p.pairs + ti.row0 + r) / p.top_k) * p.k_dim
                                     : nullptr;
                producer_bar_sync();
            }
            const int32_t b_row0 =
                (int32_t)(ti.expert * p.b_rows_per_expert + (int64_t)ti.n_tile * p.tile_n);
            for (int32_t kb = 0; kb < n_kb; ++kb, ++it) {
                const uint32_t stage = it % S;
                mbar_wait(smem_addr(empty_bar + stage), ((it / S) & 1) ^ 1);
                const uint32_t sa = ring + stage * kStageBytes;
                const uint32_t sb = sa + kTileABytes;
                const uint32_t fb = smem_addr(full_bar + stage);
                if (tid == 0) {
                    mbar_arrive_expect_tx(fb, tma_bytes);
                    if (a_by_tma) tma_load_2d(sa, &tmap_a, fb, kb * kBlockK, ti.row0);
                    tma_load_2d(sb, &tmap_b, fb, kb * kBlockK, b_row0);
                    tma_load_2d(sb + kTileBBytes / 2, &tmap_b, fb, kb * kBlockK,
                                b_row0 + p.b_second);
                }
                if (!a_by_tma) {
                    const int64_t col = (int64_t)kb * kBlockK + chunk * 8;
                    const bool col_ok = col < p.k_dim; /* zero-fill past k_dim */
                    /* All row addresses first (no memory clobber on cp.async,
                     * so these LDS issue back to back), then the copies. */
                    const T *rp[kBlockM / 16];
#pragma unroll
                    for (int i = 0; i < kBlockM / 16; ++i) rp[i] = row_ptr[rbase + 16 * i];
#pragma unroll
                    for (int i = 0; i < kBlockM / 16; ++i) {
                        const bool ok = col_ok && rp[i] != nullptr;
                        cp_async_16(sa + a_off + i * 16 * 128, ok ? rp[i] + col : a, ok ? 16u : 0u);
                    }
                    cp_async_arrive_noinc(fb);
                }
            }
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
    } else {
        /* ---- consumer warpgroups ---- */
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kConsumerRegs));
        const int32_t n_tiles = tile_start[p.n_experts];
        const int cw = wg - 1;
        const int warp = (tid >> 5) & 3, lane = tid & 31;
        const int a_row = cw * 64; /* this warpgroup's 64 rows of the tile */
        float acc[2][64];          /* half j: B rows (columns) 128 j .. 128 j + 127 */
        uint32_t it = 0;
        for (int32_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            const tile_info ti = decode_tile(p, tile_start, t);
            /* GEMM2's routing weights, loaded before the k loop to hide their latency. */
            float w_row[2] = {0.f, 0.f};
            if constexpr (Kind == GEMM2_SCALE) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = a_row + warp * 16 + (lane >> 2) + 8 * h;
                    if (r < ti.rows) w_row[h] = __ldg(p.topk_w + __ldg(p.pairs + ti.row0 + r));
                }
            }

            for (int32_t kb = 0; kb < n_kb; ++kb, ++it) {
                const uint32_t stage = it % S;
                mbar_wait(smem_addr(full_bar + stage), (it / S) & 1);
                /* NOTE: no fence.proxy.async between the cp.async writes and
                 * wgmma's reads, as in CUTLASS's cp.async mainloops; with one
                 * it measured the same and checks pass without it. */
                const uint32_t sa = ring + stage * kStageBytes;
                const uint32_t sb = sa + kTileABytes;
                const uint64_t da = make_desc(sa + a_row * 128);
                const uint64_t db[2] = {make_desc(sb), make_desc(sb + kBoxRows * 128)};
                wgmma_fence();
#pragma unroll
                for (int k = 0; k < kBlockK / 16; ++k) {
                    const int scale = (kb > 0 || k > 0) ? 1 : 0;
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        wgmma_m64n128k16<T>(acc[j], da + 2 * k, db[j] + 2 * k, scale);
                }
                wgmma_commit();
                wgmma_wait<1>();
                fence_acc(acc[0]);
                fence_acc(acc[1]);
                if (kb > 0 && lane == 0) mbar_arrive(smem_addr(empty_bar + (it - 1) % S));
            }
            wgmma_wait<0>();
            fence_acc(acc[0]);
            fence_acc(acc[1]);
            if (lane == 0) mbar_arrive(smem_addr(empty_bar + (it - 1) % S));

            /* Epilogue: this thread holds rows a_row + 16 warp + lane / 4
             * (+ 8 for h = 1) and, in half j, column pairs 8 i + 2 (lane % 4), i < 16. */
            if (a_row >= ti.rows) continue; /* warp-uniform */
            T *out = (T *)p.out;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = a_row + warp * 16 + (lane >> 2) + 8 * h;
                const bool row_ok = r < ti.rows;
                T *orow = out + (int64_t)(ti.row0 + (row_ok ? r : 0)) * p.n_dim;
                if constexpr (Kind == GEMM1_SWIGLU) {
                    /* gate in acc[0], up in acc[1] */
                    uint32_t v[16];
#pragma unroll
                    for (int i = 0; i < 16; ++i)
                        v[i] = pack2<T>(silu(acc[0][4 * i + 2 * h]) * acc[1][4 * i + 2 * h],
                                        silu(acc[0][4 * i + 2 * h + 1]) * acc[1][4 * i + 2 * h + 1]);
                    store_groups<T, 16>(orow, v, (int64_t)ti.n_tile * p.tile_n, p.n_dim, row_ok,
                                        lane);
                } else {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        uint32_t v[16];
#pragma unroll
                        for (int i = 0; i < 16; ++i)
                            v[i] = pack2<T>(w_row[h] * acc[j][4 * i + 2 * h],
                                            w_row[h] * acc[j][4 * i + 2 * h + 1]);
                        store_groups<T, 16>(orow, v, (int64_t)ti.n_tile * p.tile_n + j * kBoxRows,
                                            p.n_dim, row_ok, lane);
                    }
                }
            }
        }
    }
#endif
}

/* ---- swap-AB kernels: weights on the wgmma M side (few rows per expert) ----
 * An expert with 32..128 rows leaves most of a 128-row tile empty, and every
 * row tile reads the whole weight tile again. Here the weights are A (M side,
 * 64 rows per wgmma) and the expert's rows ("tokens") are B (N side, NT =
 * 16/32/64/128 chosen at compile time, the heuristics pick), so an item is
 * (expert, chunk of NT rows, 256 weight rows) and the weights of an expert are
 * read once per NT-row chunk: for <= NT rows exactly once, at the rate of the
 * TMA pipeline.
 *   GEMM1: the 256 weight rows are gate rows [f0, f0+128) and up rows
 *          [F+f0, F+f0+128) of w13[e] (two TMA boxes); consumer warpgroup c
 *          issues two m64nNT wgmmas per k16 (gate rows c*64.., up rows
 *          128+c*64..) into two accumulators of the same layout, so the
 *          epilogue computes silu(g)*u of feature f0+c*64+r in registers.
 *   GEMM2: rows [h0, h0+256) of w2[e]; acc[j] holds output columns
 *          h0 + 128 j + c*64 + r, scaled by the token's routing weight.
 * B (the expert's rows, NT x 64 k per stage, 128-byte swizzle): GEMM1 gathers
 * x rows with 16-byte cp.async (rows past the segment zero-filled), GEMM2
 * loads act rows with one TMA box (rows past the segment belong to the next
 * expert or are TMA's zero fill; an output column of wgmma depends only on its
 * own B row, and those columns are never stored). Epilogue: the accumulator
 * holds (weight row r, token n); lanes l and l^4 hold rows r and r^1, so one
 * shuffle gives each lane two adjacent output columns of one token (4-byte
 * stores, predicated on n < rows and the column < n_dim). */
constexpr int kSwapWRows = 256;                        /* weight rows per item */
constexpr int kSwapWBytes = kSwapWRows * kBlockK * 2;  /* 32 KB per stage */

template <int NT> struct swap_cfg {
    static_assert(NT == 16 || NT == 32 || NT == 64 || NT == 128, "NT: 16, 32, 64 or 128");
    static constexpr int kTokBytes = NT * kBlockK * 2;
    static constexpr int kStageBytes = kSwapWBytes + kTokBytes;
    static constexpr int kStages = (200 * 1024) / kStageBytes > 8 ? 8 : (200 * 1024) / kStageBytes;
};

template <typename T, int NT>
__device__ __forceinline__ void wgmma_tok(float (&d)[NT / 2], uint64_t da, uint64_t db, int scale) {
    if constexpr (NT == 16) wgmma_m64n16k16<T>(d, da, db, scale);
    else if constexpr (NT == 32) wgmma_m64n32k16<T>(d, da, db, scale);
    else if constexpr (NT == 64) wgmma_m64n64k16<T>(d, da, db, scale);
    else wgmma_m64n128k16<T>(d, da, db, scale);
}

template <int R> __device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/* Item t -> (expert, chunk rows, weight block). Inside an expert the chunks of
 * one weight block are consecutive, so they run at the same time and share
 * the weight block through L2. */
__device__ __forceinline__ tile_info decode_item(const grouped_params &p, const int32_t *tile_start,
                                                 int32_t t, int nt) {
    int lo = 0, hi = p.n_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (tile_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    const int32_t local = t - tile_start[lo];
    const int32_t seg0 = __ldg(p.offsets + lo);
    const int32_t count = __ldg(p.offsets + lo + 1) - seg0;
    const int32_t n_chunks = (count + nt - 1) / nt;
    const int32_t n_tile = local / n_chunks;
    const int32_t chunk = local - n_tile * n_chunks;
    tile_info ti;
    ti.expert = lo;
    ti.row0 = seg0 + chunk * nt;
    ti.rows = min(nt, count - chunk * nt);
    ti.n_tile = n_tile;
    return ti;
}

template <typename T, int Kind, int NT>
__global__ void __launch_bounds__(kThreads, 1)
    swap_gemm_kernel(const __grid_constant__ CUtensorMap tmap_w,
                     const __grid_constant__ CUtensorMap tmap_t, const grouped_params p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    using C = swap_cfg<NT>;
    constexpr int S = C::kStages;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t pad = (1024 - (smem_addr(smem_raw) & 1023)) & 1023;
    uint8_t *smem = smem_raw + pad;
    uint64_t *full_bar = (uint64_t *)(smem + S * C::kStageBytes);
    uint64_t *empty_bar = full_bar + S;
    int32_t *warp_sums = (int32_t *)(empty_bar + S);   /* 16 */
    const T **row_ptr = (const T **)(warp_sums + 16);  /* NT: GEMM1's x rows */
    int32_t *tile_start = (int32_t *)(row_ptr + NT);   /* E + 1 */
    const uint32_t ring = smem_addr(smem);
    constexpr bool t_by_tma = Kind == GEMM2_SCALE;
    constexpr uint32_t full_count = t_by_tma ? 1 : 128 + 1;
    constexpr uint32_t tma_bytes = t_by_tma ? C::kStageBytes : kSwapWBytes;

    const int tid = threadIdx.x;
    const int wg = tid / 128;
    if (tid == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(smem_addr(full_bar + s), full_count);
            mbar_init(smem_addr(empty_bar + s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&tmap_w) : "memory");
        if (t_by_tma) asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&tmap_t) : "memory");
    }
    /* Programmatic dependent launch (a no-op without it): GEMM1 reads the plan
     * and x, so it waits for the kernels before it first; then it lets the next
     * kernel (GEMM2) launch, whose blocks take each SM as this kernel's block
     * there finishes. GEMM2 reads the plan and the routing weights (offsets,
     * pairs, topk_w: from before GEMM1, which has waited for them) without
     * waiting -- its consumers never wait --; its producer sends the weight
     * boxes of its first stages, then waits for GEMM1 (the act rows, which only
     * the producer's TMA reads) and lets the next kernel launch. */
    if constexpr (Kind == GEMM1_SWIGLU) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
    build_tile_prefix(p, tile_start, warp_sums, NT);
    const int32_t n_kb = (int32_t)((p.k_dim + kBlockK - 1) / kBlockK);

    if (wg == 0) {
        /* ---- producer warpgroup ---- */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs));
        const int32_t n_tiles = tile_start[p.n_experts];
        const int chunk = tid & 7;
        const int rbase = tid >> 3; /* rows rbase + 16 i, i < NT / 16 */
        const uint32_t t_off = rbase * 128 + ((chunk ^ (rbase & 7)) << 4);
        const T *a = (const T *)p.a;
        uint32_t it = 0;
        uint32_t pre = 0; /* GEMM2: stages whose weight boxes went out before the wait */
        if constexpr (Kind == GEMM2_SCALE) {
            if ((int32_t)blockIdx.x < n_tiles) {
                const tile_info t0 = decode_item(p, tile_start, blockIdx.x, NT);
                const int32_t w0 = (int32_t)(t0.expert * p.b_rows_per_expert + (int64_t)t0.n_tile * p.tile_n);
                pre = (uint32_t)min(S, n_kb);
                if (tid == 0)
                    for (uint32_t kb = 0; kb < pre; ++kb) { /* a fresh ring: no empty-barrier wait */
                        const uint32_t sw = ring + kb * C::kStageBytes, fb = smem_addr(full_bar + kb);
                        mbar_arrive_expect_tx(fb, tma_bytes);
                        tma_load_2d(sw, &tmap_w, fb, kb * kBlockK, w0);
                        tma_load_2d(sw + kSwapWBytes / 2, &tmap_w, fb, kb * kBlockK, w0 + p.b_second);
                    }
            }
            asm volatile("griddepcontrol.wait;" ::: "memory");
            asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
        }
        for (int32_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            const tile_info ti = decode_item(p, tile_start, t, NT);
            if (!t_by_tma) {
                producer_bar_sync();
                for (int r = tid; r < NT; r += 128)
                    row_ptr[r] = r < ti.rows
                                     ? a + (int64_t)(__ldg(p.pairs + ti.row0 + r) / p.top_k) * p.k_dim
                                     : nullptr;
                producer_bar_sync();
            }
            const int32_t w_row0 =
                (int32_t)(ti.expert * p.b_rows_per_expert + (int64_t)ti.n_tile * p.tile_n);
            for (int32_t kb = 0; kb < n_kb; ++kb, ++it) {
                const uint32_t stage = it % S;
                const bool sent = it < pre; /* weight boxes already out (GEMM2's first stages) */
                if (!sent) mbar_wait(smem_addr(empty_bar + stage), ((it / S) & 1) ^ 1);
                const uint32_t sw = ring + stage * C::kStageBytes;
                const uint32_t st = sw + kSwapWBytes;
                const uint32_t fb = smem_addr(full_bar + stage);
                if (tid == 0) {
                    if (!sent) {
                        mbar_arrive_expect_tx(fb, tma_bytes);
                        tma_load_2d(sw, &tmap_w, fb, kb * kBlockK, w_row0);
                        tma_load_2d(sw + kSwapWBytes / 2, &tmap_w, fb, kb * kBlockK,
                                    w_row0 + p.b_second);
                    }
                    if (t_by_tma) tma_load_2d(st, &tmap_t, fb, kb * kBlockK, ti.row0);
                }
                if (!t_by_tma) {
                    const int64_t col = (int64_t)kb * kBlockK + chunk * 8;
                    const bool col_ok = col < p.k_dim;
                    const T *rp[NT / 16];
#pragma unroll
                    for (int i = 0; i < NT / 16; ++i) rp[i] = row_ptr[rbase + 16 * i];
#pragma unroll
                    for (int i = 0; i < NT / 16; ++i) {
                        const bool ok = col_ok && rp[i] != nullptr;
                        cp_async_16(st + t_off + i * 16 * 128, ok ? rp[i] + col : a, ok ? 16u : 0u);
                    }
                    cp_async_arrive_noinc(fb);
                }
            }
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
    } else {
        /* ---- consumer warpgroups ---- */
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kConsumerRegs));
        const int32_t n_tiles = tile_start[p.n_experts];
        const int cw = wg - 1;
        const int warp = (tid >> 5) & 3, lane = tid & 31;
        const int q = lane & 3;
        const bool even = ((lane >> 2) & 1) == 0;
        constexpr int NJ = NT / 8; /* token column groups of 8 */
        float acc[2][NT / 2];      /* acc[j][4 i + 2 h + b]: weight row 16 warp + lane/4 + 8 h of
                                      box j's 64-row slice, token 8 i + 2 q + b */
        uint32_t it = 0;
        for (int32_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
            const tile_info ti = decode_item(p, tile_start, t, NT);
            float w_tok[NJ][2];
            if constexpr (Kind == GEMM2_SCALE) {
#pragma unroll
                for (int i = 0; i < NJ; ++i)
#pragma unroll
                    for (int b = 0; b < 2; ++b) {
                        const int n = 8 * i + 2 * q + b;
                        w_tok[i][b] = n < ti.rows ? __ldg(p.topk_w + __ldg(p.pairs + ti.row0 + n)) : 0.f;
                    }
            }
            for (int32_t kb = 0; kb < n_kb; ++kb, ++it) {
                const uint32_t stage = it % S;
                mbar_wait(smem_addr(full_bar + stage), (it / S) & 1);
                const uint32_t sw = ring + stage * C::kStageBytes;
                const uint32_t st = sw + kSwapWBytes;
                const uint64_t da[2] = {make_desc(sw + cw * 64 * 128),
                                        make_desc(sw + (128 + cw * 64) * 128)};
                const uint64_t db = make_desc(st);
                wgmma_fence();
#pragma unroll
                for (int k = 0; k < kBlockK / 16; ++k) {
                    const int scale = (kb > 0 || k > 0) ? 1 : 0;
#pragma unroll
                    for (int j = 0; j < 2; ++j) wgmma_tok<T, NT>(acc[j], da[j] + 2 * k, db + 2 * k, scale);
                }
                wgmma_commit();
                wgmma_wait<1>();
                fence_regs(acc[0]);
                fence_regs(acc[1]);
                if (kb > 0 && lane == 0) mbar_arrive(smem_addr(empty_bar + (it - 1) % S));
            }
            wgmma_wait<0>();
            fence_regs(acc[0]);
            fence_regs(acc[1]);
            if (lane == 0) mbar_arrive(smem_addr(empty_bar + (it - 1) % S));

            T *out = (T *)p.out;
            constexpr int NOUT = Kind == GEMM1_SWIGLU ? 1 : 2;
#pragma unroll
            for (int j = 0; j < NOUT; ++j) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int r = cw * 64 + warp * 16 + (lane >> 2) + 8 * h;
                    /* output column of this lane's pair: r (even lane) or r - 1 (odd) */
                    const int64_t col = (int64_t)ti.n_tile * p.tile_n + j * 128 + (even ? r : r - 1);
                    const bool col_ok = col < p.n_dim;
#pragma unroll
                    for (int i = 0; i < NJ; ++i) {
                        float v0, v1;
                        if constexpr (Kind == GEMM1_SWIGLU) {
                            v0 = silu(acc[0][4 * i + 2 * h]) * acc[1][4 * i + 2 * h];
                            v1 = silu(acc[0][4 * i + 2 * h + 1]) * acc[1][4 * i + 2 * h + 1];
                        } else {
                            v0 = w_tok[i][0] * acc[j][4 * i + 2 * h];
                            v1 = w_tok[i][1] * acc[j][4 * i + 2 * h + 1];
                        }
                        const float recv = __shfl_xor_sync(0xffffffffu, even ? v1 : v0, 4);
                        const int n = 8 * i + 2 * q + (even ? 0 : 1);
                        const uint32_t packed = even ? pack2<T>(v0, recv) : pack2<T>(recv, v1);
                        if (col_ok && n < ti.rows)
                            *(uint32_t *)(out + (int64_t)(ti.row0 + n) * p.n_dim + col) = packed;
                    }
                }
            }
        }
    }
#endif
}

/* ---- host side ---- */
typedef CUresult (*tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                   const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                   const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static tmap_encode_fn get_tmap_encoder(void) {
    /* NOTE: a benign race: every thread stores the same pointer. */
    static tmap_encode_fn fn = NULL;
    if (!fn) {
        void *ptr = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                             cudaEnableDefault, &q) == cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (tmap_encode_fn)ptr;
    }
    return fn;
}

/* A 2-D K-major tensor (rows, k_dim) in boxes of box_rows x 64 k, 128-byte swizzle. */
template <typename T>
static CUresult make_tmap(CUtensorMap *map, const void *base, int64_t k_dim, uint64_t rows,
                          int box_rows) {
    tmap_encode_fn encode = get_tmap_encoder();
    if (!encode) return CUDA_ERROR_NOT_SUPPORTED;
    const CUtensorMapDataType dt = std::is_same<T, __nv_bfloat16>::value
                                       ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    const cuuint64_t dims[2] = {(cuuint64_t)k_dim, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)k_dim * sizeof(T)};
    const cuuint32_t box[2] = {kBlockK, (cuuint32_t)box_rows};
    const cuuint32_t elem_strides[2] = {1, 1};
    return encode(map, dt, 2, (void *)base, dims, strides, box, elem_strides,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

/* The current device must be sm_90; *num_sms = a->num_sms or the device's count. */
static dmoe_status device_check(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                const char *name, int *num_sms) {
    int dev = 0, cc_major = 0, cc_minor = 0;
    DMOE_CUDA_CHECK(ctx, cudaGetDevice(&dev));
    DMOE_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
    DMOE_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (cc_major != 9 || cc_minor != 0)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "%s: needs compute capability 9.0, got %d.%d",
                           name, cc_major, cc_minor);
    *num_sms = a->num_sms;
    if (*num_sms <= 0)
        DMOE_CUDA_CHECK(ctx, cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, dev));
    return DMOE_OK;
}

static size_t smem_bytes(int32_t n_experts) {
    return 1024 + (size_t)kStages * kStageBytes + 2 * kStages * sizeof(uint64_t) +
           16 * sizeof(int32_t) + kBlockM * sizeof(void *) + ((size_t)n_experts + 1) * sizeof(int32_t);
}

static int print_config_enabled(void) {
    static int v = -1;
    if (v < 0) {
        const char *s = getenv("DMOE_PRINT_CONFIG");
        v = s && *s && strcmp(s, "0") != 0; /* as the backend reads it (cuda-backend.cu) */
    }
    return v;
}

/* DMOE_PRINT_CONFIG=1: 1 when this launch's configuration differs from the
 * previous launch of the same GEMM (prints each change once, not every forward).
 * NOTE: a benign race between host threads: at worst a line is printed twice. */
static int print_config_once(int kind, int nt, int dtype) {
    static int last[3] = {-1, -1, -1};
    if (!print_config_enabled()) return 0;
    const int key = nt * 16 + dtype * 2 + 1;
    if (last[kind] == key) return 0;
    last[kind] = key;
    return 1;
}

static dmoe_status check_args(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, const char *name,
                              const void *p0, const void *p1, const void *p2) {
    if (a->dtype != DMOE_DTYPE_BF16 && a->dtype != DMOE_DTYPE_F16)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED_DTYPE, "%s: dtype must be bf16 or f16", name);
    if (a->k_dim <= 0 || a->n_dim <= 0 || a->k_dim % 8 || a->n_dim % 8)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "%s: k_dim %lld and n_dim %lld must be positive multiples of 8", name,
                           (long long)a->k_dim, (long long)a->n_dim);
    if (a->n_experts <= 0 || a->top_k <= 0 || a->n_rows < 0 || a->n_rows > INT32_MAX)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "%s: bad E %d, K %d or n_rows %lld",
                           name, a->n_experts, a->top_k, (long long)a->n_rows);
    if (((uintptr_t)p0 | (uintptr_t)p1 | (uintptr_t)p2) & 15)
        return dmoe__error(ctx, DMOE_ERR_MISALIGNED, "%s: operands must be 16-byte aligned", name);
    return DMOE_OK;
}

template <typename T, int Kind>
static dmoe_status launch(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, const void *in,
                          const void *w, const float *topk_w, void *out, cudaStream_t stream) {
    const char *name = Kind == GEMM1_SWIGLU ? "gemm1_sm90" : "gemm2_sm90";
    grouped_params p;
    p.a = in;
    p.out = out;
    p.offsets = a->offsets;
    p.pairs = a->pairs;
    p.topk_w = topk_w;
    p.k_dim = a->k_dim;
    p.n_dim = a->n_dim;
    p.top_k = a->top_k;
    p.n_experts = a->n_experts;
    p.tile_n = Kind == GEMM1_SWIGLU ? kBoxRows : 2 * kBoxRows;
    p.n_tiles_n = (int32_t)((a->n_dim + p.tile_n - 1) / p.tile_n);
    p.b_rows_per_expert = Kind == GEMM1_SWIGLU ? 2 * a->n_dim : a->n_dim;
    p.b_second = Kind == GEMM1_SWIGLU ? (int32_t)a->n_dim : kBoxRows;

    if (!get_tmap_encoder())
        return dmoe__error(ctx, DMOE_ERR_CUDA, "%s: cuTensorMapEncodeTiled is unavailable", name);
    const uint64_t b_rows = (uint64_t)a->n_experts * (uint64_t)p.b_rows_per_expert;
    if (b_rows >= ((uint64_t)1 << 31))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "%s: %llu weight rows exceed 2^31",
                           name, (unsigned long long)b_rows);
    /* B as a 2-D tensor (E * rows per expert, k_dim), boxes of 128 rows x 64 k;
     * GEMM2's A as (n_rows, k_dim), the same boxes. Both 128-byte swizzled. */
    CUtensorMap tmap_a, tmap_b;
    CUresult cr = make_tmap<T>(&tmap_b, w, a->k_dim, b_rows, kBoxRows);
    if (cr == CUDA_SUCCESS)
        cr = Kind == GEMM2_SCALE ? make_tmap<T>(&tmap_a, in, a->k_dim, (uint64_t)a->n_rows, kBoxRows)
                                 : make_tmap<T>(&tmap_a, w, a->k_dim, b_rows, kBoxRows); /* unused by GEMM1 */
    if (cr != CUDA_SUCCESS)
        return dmoe__error(ctx, DMOE_ERR_CUDA, "%s: cuTensorMapEncodeTiled failed (%d)", name,
                           (int)cr);

    int num_sms = 0;
    const dmoe_status dst = device_check(ctx, a, name, &num_sms);
    if (dst != DMOE_OK) return dst;
    const size_t smem = smem_bytes(a->n_experts);
    auto kernel = grouped_gemm_kernel<T, Kind>;
    DMOE_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)smem));
    if (print_config_once(Kind, 0, (int)a->dtype))
        fprintf(stderr,
                "dmoe: %s %s: tile %dx%d k%d, %d stages, group_m %d, grid %d x %d threads, "
                "smem %zu B\n",
                name, a->dtype == DMOE_DTYPE_BF16 ? "bf16" : "f16", kBlockM, p.tile_n, kBlockK,
                kStages, kGroupM, num_sms, kThreads, smem);
    kernel<<<num_sms, kThreads, smem, stream>>>(tmap_a, tmap_b, p);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

template <int Kind>
static dmoe_status dispatch(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, const void *in,
                            const void *w, const float *topk_w, void *out, cudaStream_t stream) {
    if (a->n_rows == 0) return DMOE_OK;
    if (a->dtype == DMOE_DTYPE_BF16)
        return launch<__nv_bfloat16, Kind>(ctx, a, in, w, topk_w, out, stream);
    return launch<__half, Kind>(ctx, a, in, w, topk_w, out, stream);
}

static size_t swap_smem_bytes(int nt, int stage_bytes, int stages, int32_t n_experts) {
    return 1024 + (size_t)stages * stage_bytes + 2 * stages * sizeof(uint64_t) + 16 * sizeof(int32_t) +
           (size_t)nt * sizeof(void *) + ((size_t)n_experts + 1) * sizeof(int32_t);
}

template <typename T, int Kind, int NT>
static dmoe_status swap_launch(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, const void *in,
                               const void *w, const float *topk_w, void *out, cudaStream_t stream) {
    using C = swap_cfg<NT>;
    const char *name = Kind == GEMM1_SWIGLU ? "gemm1_sm90_swap" : "gemm2_sm90_swap";
    grouped_params p;
    p.a = in;
    p.out = out;
    p.offsets = a->offsets;
    p.pairs = a->pairs;
    p.topk_w = topk_w;
    p.k_dim = a->k_dim;
    p.n_dim = a->n_dim;
    p.top_k = a->top_k;
    p.n_experts = a->n_experts;
    p.tile_n = Kind == GEMM1_SWIGLU ? kSwapWRows / 2 : kSwapWRows;
    p.n_tiles_n = (int32_t)((a->n_dim + p.tile_n - 1) / p.tile_n);
    p.b_rows_per_expert = Kind == GEMM1_SWIGLU ? 2 * a->n_dim : a->n_dim;
    p.b_second = Kind == GEMM1_SWIGLU ? (int32_t)a->n_dim : kBoxRows;

    const uint64_t w_rows = (uint64_t)a->n_experts * (uint64_t)p.b_rows_per_expert;
    if (w_rows >= ((uint64_t)1 << 31))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "%s: %llu weight rows exceed 2^31",
                           name, (unsigned long long)w_rows);
    CUtensorMap tmap_w, tmap_t;
    CUresult cr = make_tmap<T>(&tmap_w, w, a->k_dim, w_rows, kBoxRows);
    if (cr == CUDA_SUCCESS)
        cr = Kind == GEMM2_SCALE ? make_tmap<T>(&tmap_t, in, a->k_dim, (uint64_t)a->n_rows, NT)
                                 : make_tmap<T>(&tmap_t, w, a->k_dim, w_rows, kBoxRows); /* unused */
    if (cr != CUDA_SUCCESS)
        return dmoe__error(ctx, DMOE_ERR_CUDA, "%s: cuTensorMapEncodeTiled failed (%d)", name,
                           (int)cr);
    int num_sms = 0;
    const dmoe_status st = device_check(ctx, a, name, &num_sms);
    if (st != DMOE_OK) return st;
    const size_t smem = swap_smem_bytes(NT, C::kStageBytes, C::kStages, a->n_experts);
    auto kernel = swap_gemm_kernel<T, Kind, NT>;
    DMOE_CUDA_CHECK(ctx, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)smem));
    if (print_config_once(Kind, NT, (int)a->dtype))
        fprintf(stderr,
                "dmoe: %s %s: swap-AB, %d weight rows x %d tokens x k%d per stage, %d stages, "
                "grid %d x %d threads, smem %zu B\n",
                name, a->dtype == DMOE_DTYPE_BF16 ? "bf16" : "f16", kSwapWRows, NT, kBlockK,
                C::kStages, num_sms, kThreads, smem);
    /* programmatic dependent launch where the context asks for it (the kernel's
     * griddepcontrol steps say what it reads before the previous kernel ends) */
    const int pdl = ctx && ctx->backend_data ? dmoe__cuda_ctx(ctx)->pdl : 0; /* dev harnesses pass NULL */
    DMOE_CUDA_CHECK(ctx, dmoe_launch(kernel, dim3((unsigned)num_sms), dim3(kThreads), smem, stream, pdl, tmap_w,
                                     tmap_t, p));
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

template <int Kind>
static dmoe_status swap_dispatch(dmoe_context *ctx, const dmoe_cuda_grouped_args *a, int nt,
                                 const void *in, const void *w, const float *topk_w, void *out,
                                 cudaStream_t stream) {
    if (a->n_rows == 0) return DMOE_OK;
#define DMOE_SWAP_CASE(N)                                                                      \
    case N:                                                                                    \
        return a->dtype == DMOE_DTYPE_BF16                                                     \
                   ? swap_launch<__nv_bfloat16, Kind, N>(ctx, a, in, w, topk_w, out, stream) \
                   : swap_launch<__half, Kind, N>(ctx, a, in, w, topk_w, out, stream);
    switch (nt) {
        DMOE_SWAP_CASE(16)
        DMOE_SWAP_CASE(32)
        DMOE_SWAP_CASE(64)
        DMOE_SWAP_CASE(128)
    }
#undef DMOE_SWAP_CASE
    return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "sm90 swap: tokens per item %d not in 16/32/64/128", nt);
}

} /* namespace */

extern "C" dmoe_status dmoe__cuda_gemm1_sm90(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                             const void *x, const void *w13, void *act,
                                             cudaStream_t stream) {
    const dmoe_status st = check_args(ctx, a, "gemm1_sm90", x, w13, act);
    if (st != DMOE_OK) return st;
    return dispatch<GEMM1_SWIGLU>(ctx, a, x, w13, NULL, act, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm2_sm90(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                             const void *act, const void *w2,
                                             const float *topk_w, void *part,
                                             cudaStream_t stream) {
    const dmoe_status st = check_args(ctx, a, "gemm2_sm90", act, w2, part);
    if (st != DMOE_OK) return st;
    return dispatch<GEMM2_SCALE>(ctx, a, act, w2, topk_w, part, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm1_sm90_swap_n(dmoe_context *ctx,
                                                   const dmoe_cuda_grouped_args *a, int tokens,
                                                   const void *x, const void *w13, void *act,
                                                   cudaStream_t stream) {
    const dmoe_status st = check_args(ctx, a, "gemm1_sm90_swap", x, w13, act);
    if (st != DMOE_OK) return st;
    return swap_dispatch<GEMM1_SWIGLU>(ctx, a, tokens, x, w13, NULL, act, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm2_sm90_swap_n(dmoe_context *ctx,
                                                   const dmoe_cuda_grouped_args *a, int tokens,
                                                   const void *act, const void *w2,
                                                   const float *topk_w, void *part,
                                                   cudaStream_t stream) {
    const dmoe_status st = check_args(ctx, a, "gemm2_sm90_swap", act, w2, part);
    if (st != DMOE_OK) return st;
    return swap_dispatch<GEMM2_SCALE>(ctx, a, tokens, act, w2, topk_w, part, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm1_sm90_swap(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                                  const void *x, const void *w13, void *act,
                                                  cudaStream_t stream) {
    return dmoe__cuda_gemm1_sm90_swap_n(ctx, a, dmoe__cuda_swap_tokens(a), x, w13, act, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm2_sm90_swap(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                                  const void *act, const void *w2,
                                                  const float *topk_w, void *part,
                                                  cudaStream_t stream) {
    return dmoe__cuda_gemm2_sm90_swap_n(ctx, a, dmoe__cuda_swap_tokens(a), act, w2, topk_w, part,
                                        stream);
}

extern "C" dmoe_status dmoe__cuda_gemm1_sm90_swap64(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                                    const void *x, const void *w13, void *act,
                                                    cudaStream_t stream) {
    return dmoe__cuda_gemm1_sm90_swap_n(ctx, a, 64, x, w13, act, stream);
}

extern "C" dmoe_status dmoe__cuda_gemm2_sm90_swap64(dmoe_context *ctx, const dmoe_cuda_grouped_args *a,
                                                    const void *act, const void *w2,
                                                    const float *topk_w, void *part,
                                                    cudaStream_t stream) {
    return dmoe__cuda_gemm2_sm90_swap_n(ctx, a, 64, act, w2, topk_w, part, stream);
}
