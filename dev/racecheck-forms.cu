/* dev/racecheck-forms.cu: which shared-memory hand-offs does compute-sanitizer racecheck see as ordered?
 *
 * The fused kernel's racecheck reports (bench/fused-notes.md, "The racecheck reports") are all between accesses on
 * opposite sides of an mbarrier (inline-PTX arrive / try_wait.parity, or cp.async.bulk completing on one). This
 * probe runs the same producer/consumer hand-off in several forms, one kernel each, so a racecheck log tells which
 * forms the tool models: a racy control (no ordering: must be reported), __syncthreads (must be clean), the
 * fused kernel's inline-PTX mbarrier (arrive after __syncwarp, try_wait.parity), the CUDA header's
 * __mbarrier_arrive / __mbarrier_test_wait, libcu++ cuda::barrier, a bulk copy completing on an mbarrier, and a
 * named barrier (bar.arrive / bar.sync); session 14: the bulk fill released by every lane (bulk_all), and the pick
 * word's forms (flag_vol / flag_atom / flag_rel: volatile, atomic, st.release / ld.acquire). Every form also checks its data, so a wrong hand-off fails the run.
 *
 *   nvcc -std=c++17 -O3 -arch=sm_90a -I/usr/local/cuda/include/cccl dev/racecheck-forms.cu -o rf
 *   ./rf                                   # PASS / FAIL per form
 *   compute-sanitizer --tool racecheck ./rf <form>   # hazards of one form
 */
#include <cuda_awbarrier_primitives.h>
#include <cuda/barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define ROUNDS 8
#define N 256 /* ints a round: 32 lanes x 8 */

static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
static __device__ __forceinline__ void ptx_arrive(uint64_t *b) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(b)) : "memory");
}
static __device__ __forceinline__ void ptx_wait(uint64_t *b, uint32_t parity) {
    uint32_t ok = 0;
    while (!ok)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(ok)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
}

/* Warp 0 produces round r into buf (values r * N + i), warp 1 consumes it and sums; warp 0 may overwrite only after
 * warp 1 released the buffer. form selects the ordering. */
__global__ void k_racy(const int *src, long long *out) {
    __shared__ int buf[N];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0)
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
        if (w == 1)
            for (int i = lane; i < N; i += 32) s += buf[i];
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

__global__ void k_sync(const int *src, long long *out) {
    __shared__ int buf[N];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0)
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
        __syncthreads();
        if (w == 1)
            for (int i = lane; i < N; i += 32) s += buf[i];
        __syncthreads();
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* a warp's arrival: every lane (ALL; the barrier counts 32 a warp) or lane 0 after __syncwarp */
template <bool ALL> static __device__ __forceinline__ void warp_arrive(uint64_t *b) {
    if (!ALL) __syncwarp();
    if (ALL || (threadIdx.x & 31) == 0) ptx_arrive(b);
}

/* ALL false: the fused kernel's form (all lanes store, __syncwarp, lane 0 arrives; the other side try_wait.parity);
 * ALL true: every lane arrives (counts 32) and waits, no elected lane */
template <bool ALL> __global__ void k_ptx(const int *src, long long *out) {
    __shared__ int buf[N];
    __shared__ __align__(8) uint64_t full, empty;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(&full)), "r"(ALL ? 32 : 1) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(&empty)), "r"(ALL ? 32 : 1) : "memory");
    }
    __syncthreads();
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0) {
            if (r > 0) ptx_wait(&empty, (r - 1) & 1);
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
            warp_arrive<ALL>(&full);
        } else {
            ptx_wait(&full, r & 1);
            for (int i = lane; i < N; i += 32) s += buf[i];
            warp_arrive<ALL>(&empty);
        }
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* cuda_awbarrier_primitives.h: token-based arrive / test_wait, every lane */
__global__ void k_aw(const int *src, long long *out) {
    __shared__ int buf[N];
    __shared__ __mbarrier_t full, empty;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        __mbarrier_init(&full, 64);
        __mbarrier_init(&empty, 64);
    }
    __syncthreads();
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0)
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
        __mbarrier_token_t t = __mbarrier_arrive(&full);
        while (!__mbarrier_test_wait(&full, t)) {
        }
        if (w == 1)
            for (int i = lane; i < N; i += 32) s += buf[i];
        t = __mbarrier_arrive(&empty);
        while (!__mbarrier_test_wait(&empty, t)) {
        }
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* libcu++ cuda::barrier (block scope): arrive_and_wait by both warps */
__global__ void k_cxx(const int *src, long long *out) {
    __shared__ int buf[N];
#pragma nv_diag_suppress static_var_with_dynamic_init
    __shared__ cuda::barrier<cuda::thread_scope_block> bar;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (threadIdx.x == 0) init(&bar, 64);
    __syncthreads();
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0)
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
        bar.arrive_and_wait();
        if (w == 1)
            for (int i = lane; i < N; i += 32) s += buf[i];
        bar.arrive_and_wait();
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* a bulk copy (cp.async.bulk, complete_tx) fills buf; warp 1 waits on full and reads, releases empty: lane 0 after
 * __syncwarp (ALL false, the fused kernel's form until session 14) or every lane (ALL true, empty counts 32) */
template <bool ALL> __global__ void k_bulk(const int *src, long long *out) {
    __shared__ __align__(128) int buf[N];
    __shared__ __align__(8) uint64_t full, empty;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(&full)) : "memory");
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(&empty)), "r"(ALL ? 32 : 1) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0) {
            if (lane == 0) {
                if (r > 0) ptx_wait(&empty, (r - 1) & 1);
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(
                                 smem_u32(&full)),
                             "r"((uint32_t)(N * 4))
                             : "memory");
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                                 smem_u32(buf)),
                             "l"(src + r * N), "r"((uint32_t)(N * 4)), "r"(smem_u32(&full))
                             : "memory");
            }
            __syncwarp();
        } else {
            ptx_wait(&full, r & 1);
            for (int i = lane; i < N; i += 32) s += buf[i];
            warp_arrive<ALL>(&empty);
        }
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* named barriers: producer bar.arrive / consumer bar.sync on id 1 (full) and the reverse on id 2 (empty) */
__global__ void k_named(const int *src, long long *out) {
    __shared__ int buf[N];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0) {
            if (r > 0) asm volatile("bar.sync 2, 64;" ::: "memory");
            for (int i = lane; i < N; i += 32) buf[i] = src[r * N + i];
            asm volatile("bar.arrive 1, 64;" ::: "memory");
        } else {
            asm volatile("bar.sync 1, 64;" ::: "memory");
            for (int i = lane; i < N; i += 32) s += buf[i];
            if (r < ROUNDS - 1) asm volatile("bar.arrive 2, 64;" ::: "memory");
        }
    }
    if (w == 1) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

/* The fused kernel's pick words: ROUNDS words set to -1 before a __syncthreads, then lane 0 of warp 0 writes word r
 * (a value >= 0) as its round r ends; warp 1 polls word r until it is not -1 and uses it. Forms: volatile accesses
 * (the kernel's today), atomics (atomicExch / atomicAdd 0), relaxed / acquire-release PTX accesses. */
template <int MODE> static __device__ __forceinline__ void flag_store(int *p, int v) {
    if (MODE == 0) *(volatile int *)p = v;
    else if (MODE == 1) atomicExch(p, v);
    else asm volatile("st.release.cta.shared.b32 [%0], %1;" ::"r"(smem_u32(p)), "r"(v) : "memory");
}
template <int MODE> static __device__ __forceinline__ int flag_load(int *p) {
    int v;
    if (MODE == 0) v = *(volatile int *)p;
    else if (MODE == 1) v = atomicAdd(p, 0);
    else asm volatile("ld.acquire.cta.shared.b32 %0, [%1];" : "=r"(v) : "r"(smem_u32(p)) : "memory");
    return v;
}
template <int MODE> __global__ void k_flag(const int *src, long long *out) {
    __shared__ int word[ROUNDS];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (threadIdx.x < ROUNDS) word[threadIdx.x] = -1;
    __syncthreads();
    long long s = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (w == 0) {
            int v = 0;
            for (int i = lane; i < N; i += 32) v += src[r * N + i] & 1;
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) flag_store<MODE>(word + r, v);
        } else {
            int v;
            while ((v = flag_load<MODE>(word + r)) == -1) __nanosleep(20);
            if (lane == 0) s += v;
        }
    }
    if (w == 1 && lane == 0) atomicAdd((unsigned long long *)out, (unsigned long long)s);
}

typedef void (*kfn)(const int *, long long *);
struct form {
    const char *name;
    kfn k;
    int exact; /* the racy control may read stale data: its sum is not checked; 2: the flag forms' sum */
};
static const form forms[] = {
    {"racy", k_racy, 0},   {"sync", k_sync, 1},   {"ptx", k_ptx<false>, 1}, {"ptx_all", k_ptx<true>, 1},
    {"aw", k_aw, 1},       {"cxx", k_cxx, 1},     {"bulk", k_bulk<false>, 1},   {"named", k_named, 1},
    {"bulk_all", k_bulk<true>, 1}, {"flag_vol", k_flag<0>, 2}, {"flag_atom", k_flag<1>, 2}, {"flag_rel", k_flag<2>, 2},
};

int main(int argc, char **argv) {
    int n = ROUNDS * N, *h = (int *)malloc(n * sizeof(int)), *d;
    long long want = 0, want_flag = 0, *dout, got;
    for (int i = 0; i < n; i++) {
        h[i] = (int)((i * 2654435761u) >> 20);
        want += h[i];
        want_flag += h[i] & 1;
    }
    cudaMalloc(&d, n * sizeof(int));
    cudaMalloc(&dout, sizeof(long long));
    cudaMemcpy(d, h, n * sizeof(int), cudaMemcpyHostToDevice);
    int fail = 0;
    for (const form &f : forms) {
        if (argc > 1 && strcmp(argv[1], f.name) != 0) continue;
        cudaMemset(dout, 0xff, sizeof(long long)); /* poisoned */
        cudaMemset(dout, 0, sizeof(long long));
        f.k<<<1, 64>>>(d, dout);
        cudaError_t e = cudaDeviceSynchronize();
        cudaMemcpy(&got, dout, sizeof got, cudaMemcpyDeviceToHost);
        const long long w = f.exact == 2 ? want_flag : want;
        int ok = e == cudaSuccess && (!f.exact || got == w);
        if (!ok) fail = 1;
        printf("%-9s %s (sum %lld, want %lld, %s)\n", f.name, ok ? "PASS" : "FAIL", got, w, cudaGetErrorString(e));
    }
    return fail;
}
