/*
 * cuda-common.cuh: device helpers shared by the CUDA ops (included by .cu
 * files only): dtype traits, thin PTX wrappers (16-byte loads, cp.async,
 * ldmatrix, mma.sync m16n8k16, griddepcontrol), warp reductions and the
 * block-wide scans over per-expert counts that the grouped kernels start with.
 *
 * Everything here is __device__ __forceinline__ or a template, so each .cu file
 * gets its own copy (the library is built without relocatable device code).
 */
#ifndef DMOE_CUDA_COMMON_CUH
#define DMOE_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <float.h>
#include <stdint.h>

#include "cuda-ops.h"

typedef __nv_bfloat16 dmoe_bf16;
typedef __half dmoe_f16;

/* ---- dtype traits: the two 16-bit formats the CUDA backend computes in ---- */
template <typename T> struct dmoe_dt;

template <> struct dmoe_dt<dmoe_bf16> {
    static constexpr bool is_bf16 = true;
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* .x (lo) at the lower address */
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ float2 unpack2(uint32_t u) {
        return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
    }
    static __device__ __forceinline__ float load(const dmoe_bf16 *p) { return __bfloat162float(*p); }
    static __device__ __forceinline__ dmoe_bf16 from_f32(float v) { return __float2bfloat16_rn(v); }
};

template <> struct dmoe_dt<dmoe_f16> {
    static constexpr bool is_bf16 = false;
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
    static __device__ __forceinline__ float2 unpack2(uint32_t u) {
        return __half22float2(*reinterpret_cast<__half2 *>(&u));
    }
    static __device__ __forceinline__ float load(const dmoe_f16 *p) { return __half2float(*p); }
    static __device__ __forceinline__ dmoe_f16 from_f32(float v) { return __float2half_rn(v); }
};

/* ---- loads ---- */
/* 16 bytes that are read once (weights): bypass L1 so it keeps the activations. */
static __device__ __forceinline__ uint4 dmoe_ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
/* 16 bytes that other warps of the block will read too (activations). */
static __device__ __forceinline__ uint4 dmoe_ld_cached16(const void *p) {
    return __ldg(reinterpret_cast<const uint4 *>(p));
}

/* Predicated 16-byte loads that give zeros when pred is false. They are
 * volatile asm, like dmoe_mma_swapped below, so the compiler keeps a loop
 * body's loads ahead of its mma instructions: all of them are in flight at
 * once (plain loads behind a ?: were interleaved with the mma, one at a time).
 * One body, three cache behaviours (OP: the load instruction; CLOBBER: ": \"memory\""
 * to order it against the kernel's other memory accesses, or nothing). */
#define DMOE_LD16_IF(name, OP, CLOBBER)                                                           \
    static __device__ __forceinline__ uint4 name(const void *p, bool pred) {                      \
        uint4 v;                                                                                  \
        asm volatile("{\n .reg .pred q;\n setp.ne.b32 q, %5, 0;\n"                                \
                     " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"          \
                     " @q " OP " {%0,%1,%2,%3}, [%4];\n}\n"                                         \
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)                                 \
                     : "l"(p), "r"((int)pred) CLOBBER);                                           \
        return v;                                                                                 \
    }
/* streamed once (weights): no L1 allocation */
DMOE_LD16_IF(dmoe_ld_stream16_if, "ld.global.nc.L1::no_allocate.v4.u32", )
/* read by other warps of the block too (activations) */
DMOE_LD16_IF(dmoe_ld_cached16_if, "ld.global.nc.v4.u32", )
/* through L2 only (ld.global.cg): data rewritten between uses by the same
 * long-running kernel (the resident kernel's input) */
DMOE_LD16_IF(dmoe_ld_l2_16_if, "ld.global.cg.v4.u32", : "memory")
#undef DMOE_LD16_IF

/* ---- cp.async (16 bytes, zero-filled when pred is false) ---- */
static __device__ __forceinline__ void dmoe_cp_async16(void *smem, const void *gmem, bool pred) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void dmoe_cp_async_commit(void) {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> static __device__ __forceinline__ void dmoe_cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* ---- ldmatrix / mma.sync ---- */
static __device__ __forceinline__ void dmoe_ldmatrix_x4(uint32_t r[4], const void *smem) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* c (16x8, f32) += a (16x16, row) * b (16x8, col). Fragment layouts (g = lane/4, q = lane%4):
 *   a0:(g, 2q..2q+1) a1:(g+8, 2q..) a2:(g, 2q+8..) a3:(g+8, 2q+8..)
 *   b0:(k 2q..2q+1, n g) b1:(k 2q+8.., n g)
 *   c0,c1:(g, 2q, 2q+1) c2,c3:(g+8, 2q, 2q+1) */
template <typename T>
static __device__ __forceinline__ void dmoe_mma16816(float c[4], uint32_t a0, uint32_t a1,
                                                     uint32_t a2, uint32_t a3, uint32_t b0,
                                                     uint32_t b1) {
    if constexpr (dmoe_dt<T>::is_bf16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

/*
 * The "swapped" mma step of the weight-streaming kernels: 16 weight rows are
 * the M side, 8 tokens the N side, and the fragments come straight from
 * 16-byte global loads. Thread (g, q) holds 8 consecutive k of weight row g
 * (wa), of weight row g+8 (wb) and of token g (xv), all at the same k offset
 * 8q. Since a dot product does not care in which order k is summed, the two
 * mma k-steps just use k 8q+{0,1},{2,3} and 8q+{4,5},{6,7} of those registers
 * as their logical k 2q..2q+1 and 2q+8..2q+9, for A and B alike.
 */
template <typename T>
static __device__ __forceinline__ void dmoe_mma16816_ordered(float c[4], uint32_t a0, uint32_t a1,
                                                             uint32_t a2, uint32_t a3,
                                                             uint32_t b0, uint32_t b1) {
    if constexpr (dmoe_dt<T>::is_bf16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}
template <typename T>
static __device__ __forceinline__ void dmoe_mma_swapped(float c[4], const uint4 &wa,
                                                        const uint4 &wb, const uint4 &xv) {
    dmoe_mma16816_ordered<T>(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
    dmoe_mma16816_ordered<T>(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

/* the device's nanosecond clock (%globaltimer) */
static __device__ __forceinline__ unsigned long long dmoe_globaltimer(void) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* ---- programmatic dependent launch (no-ops when launched without it) ---- */
static __device__ __forceinline__ void dmoe_griddep_wait(void) {
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
}
/* Lets the next kernel on the stream launch before this one ends (it waits with
 * dmoe_griddep_wait before reading what this one writes). */
static __device__ __forceinline__ void dmoe_griddep_launch(void) {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
static __device__ __forceinline__ void dmoe_prefetch_l2_bulk(const void *p, uint32_t bytes) {
    /* bytes: a multiple of 16, p 16-byte aligned */
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

/* ---- warp / block reductions ---- */
static __device__ __forceinline__ float dmoe_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float dmoe_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Exclusive scan of one int per thread over the block (blockDim a multiple of
 * 32, at most 1024). s_warp: 32 ints of shared memory. Returns the thread's
 * exclusive prefix; *total gets the sum. Ends with a barrier. */
static __device__ __forceinline__ int dmoe_block_exclusive_scan(int v, int *s_warp, int *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int w = lane < nw ? s_warp[lane] : 0;
        int wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int n = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += n;
        }
        if (lane < nw) s_warp[lane] = wi - w; /* exclusive per warp */
        if (lane == 31) s_warp[32] = wi;      /* needs 33 ints */
    }
    __syncthreads();
    const int r = s_warp[warp] + incl - v;
    *total = s_warp[32];
    __syncthreads();
    return r;
}

/* Compacts the experts with at least one row into s_active (in expert order)
 * and returns how many there are. offsets (E+1) is the plan's. s_active holds E
 * ints, s_warp 33. Every thread of the block must call it. */
static __device__ __forceinline__ int dmoe_active_experts(const int32_t *offsets, int n_experts,
                                                          int *s_active, int *s_warp) {
    const int per = (n_experts + (int)blockDim.x - 1) / (int)blockDim.x;
    const int e0 = (int)threadIdx.x * per;
    int mine = 0;
    for (int i = 0; i < per; i++) {
        int e = e0 + i;
        if (e < n_experts && offsets[e + 1] > offsets[e]) mine++;
    }
    int total;
    int pos = dmoe_block_exclusive_scan(mine, s_warp, &total);
    for (int i = 0; i < per; i++) {
        int e = e0 + i;
        if (e < n_experts && offsets[e + 1] > offsets[e]) s_active[pos++] = e;
    }
    __syncthreads();
    return total;
}

/* s_tiles[e] = number of row tiles of height bm before expert e (exclusive
 * prefix of ceil(count_e / bm)); s_tiles[E] = total. s_tiles holds E+1 ints. */
static __device__ __forceinline__ int dmoe_tile_prefix(const int32_t *offsets, int n_experts,
                                                       int bm, int *s_tiles, int *s_warp) {
    const int per = (n_experts + (int)blockDim.x - 1) / (int)blockDim.x;
    const int e0 = (int)threadIdx.x * per;
    int mine = 0;
    for (int i = 0; i < per; i++) {
        int e = e0 + i;
        if (e < n_experts) mine += (offsets[e + 1] - offsets[e] + bm - 1) / bm;
    }
    int total;
    int pos = dmoe_block_exclusive_scan(mine, s_warp, &total);
    for (int i = 0; i < per; i++) {
        int e = e0 + i;
        if (e < n_experts) {
            s_tiles[e] = pos;
            pos += (offsets[e + 1] - offsets[e] + bm - 1) / bm;
        }
    }
    if (threadIdx.x == 0) s_tiles[n_experts] = total;
    __syncthreads();
    return total;
}

static __device__ __forceinline__ float dmoe_silu(float v) { return v / (1.0f + expf(-v)); }

#endif /* DMOE_CUDA_COMMON_CUH */
