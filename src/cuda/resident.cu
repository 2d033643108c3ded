/*
 * resident.cu: the resident serving mode of the cuda backend (dmoe.h,
 * "resident serving mode"): the fused persistent kernel launched once, fed
 * batches through a doorbell in pinned, mapped host memory.
 *
 * Memory:
 *   mailbox (host, mapped)   cmd  (u64, host writes): seq (bits 0-31) | n_tokens (32-47) | stop (63)
 *                            done (u64, kernel writes): seq (bits 0-31) | status (int32, 32-63)
 *                            on separate 64-byte lines
 *   input, output (host, mapped)  (max_tokens, H) act_dtype
 *   device arena             fused workspace (max_tokens) | x (max_tokens, H) | y (max_tokens, H) |
 *                            topk ids, weights (max_tokens, K) | control block (go word,
 *                            barrier, done counter, bad-input flag on separate lines)
 *
 * One batch, every block of the fully resident (cooperative) grid:
 *   1. Block 0's thread 0 polls the host's cmd word (the only PCIe poller),
 *      checks the token count, and publishes the command to the device go
 *      word; the other blocks poll that word in L2.
 *   2. Stop: every block leaves; the host sees the kernel end on its stream.
 *   3. The blocks copy x from the host buffer into device memory (grid-strided
 *      16-byte loads that bypass the caches, because the host rewrites it),
 *      looking for NaN/inf when asked to; grid barrier (generation counter).
 *   4. fused_body<DT> (fused-moe.cu, the very code of the ordinary launch),
 *      unless the input was rejected; it leaves its counters at zero.
 *   5. Grid barrier: no block copies y, nor starts the next batch, before
 *      every block is out of the body (counters reset, y complete).
 *   6. The blocks copy y to the host buffer, fence at system scope, arrive on
 *      the done counter; the last to arrive resets it and the bad-input flag
 *      and publishes done = seq | status with a system-scope release.
 * The host (submit, wait) writes cmd with a release store after the caller
 * wrote the input, and reads done with an acquire load; wait spins against a
 * monotonic clock and also asks the stream whether the kernel is still
 * running, so a dead or stuck kernel gives a status, never a hang.
 *
 * x changes between batches within this one launch, so fused_body is compiled
 * here with FM_X_COHERENT: it reads x through L2 (ld.global.cg) instead of the
 * read-only path, whose coherence with writes of the same kernel PTX does not
 * promise; the batches are ordered by the grid barrier (gpu-scope acquire).
 * The 10,000-batch test (tests/gpu/test-cuda-resident.c) checks every batch
 * bitwise against the ordinary launch.
 */
#define DMOE_FUSED_BODY_ONLY 1
#define FM_X_COHERENT 1 /* x is rewritten between batches: read it through L2 */
#include "fused-moe.cu" /* fused_body<DT> and its helpers; the ordinary launch stays in fused-moe.cu's own object */
#undef DMOE_FUSED_BODY_ONLY

#include <pthread.h>
#include <sched.h>

#include "cuda-context.h"
#include "heuristics.h"
#include "path-choice.h"
#include "resident.h"

#define RS_STOP (1ull << 63)

typedef struct rs_mailbox {
    unsigned long long cmd; /* host -> kernel */
    char pad0[56];
    unsigned long long done; /* kernel -> host */
    char pad1[56];
} rs_mailbox;

typedef struct rs_ctrl {
    unsigned long long go; /* block 0 -> grid: the command (cmd encoding) */
    char pad0[120];
    uint32_t bar_count, bar_gen;
    char pad1[120];
    uint32_t done_count;
    char pad2[124];
    uint32_t bad; /* a block saw a non-finite input value in this batch */
    char pad3[124];
} rs_ctrl;

/* ---- device ---- */

static __device__ __forceinline__ unsigned long long ld_acquire_sys64(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void st_release_sys64(unsigned long long *p, unsigned long long v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
static __device__ __forceinline__ unsigned long long ld_acquire_gpu64(const unsigned long long *p) {
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
static __device__ __forceinline__ void st_release_gpu64(unsigned long long *p, unsigned long long v) {
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
/* 16 bytes of host memory the host rewrites between batches: no cache may keep it. */
static __device__ __forceinline__ uint4 ld_volatile16(const uint4 *p) {
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}

/* 1 when one of the 8 16-bit values in v is NaN or inf (exponent all ones). */
template <typename DT> static __device__ __forceinline__ bool nonfinite8(uint4 v) {
    const uint32_t m = dmoe_dt<DT>::is_bf16 ? 0x7f80u : 0x7c00u;
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    bool bad = false;
#pragma unroll
    for (int i = 0; i < 4; i++) bad |= (w[i] & m) == m || (w[i] >> 16 & m) == m;
    return bad;
}

static __device__ __forceinline__ void rs_st_release(uint32_t *p, uint32_t v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

/* Grid-wide barrier by generation: the last block to arrive resets the count
 * and bumps the generation the others wait on. */
static __device__ void rs_barrier(rs_ctrl *c) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const uint32_t gen = ld_acquire(&c->bar_gen);
        /* acq_rel: releases this block's writes; the last arriver acquires every block's, and its
         * release of the generation passes them all on (the fused forward's counter resets too) */
        if (atom_acq_rel(&c->bar_count, 1u) == gridDim.x - 1) {
            c->bar_count = 0;
            rs_st_release(&c->bar_gen, gen + 1);
        } else {
            while (ld_acquire(&c->bar_gen) == gen) __nanosleep(32);
        }
    }
    __syncthreads();
}

static __device__ void publish_done(rs_mailbox *mb, uint32_t seq, int32_t status) {
    __threadfence_system();
    st_release_sys64(&mb->done, (unsigned long long)(uint32_t)status << 32 | seq);
}

#define RS_BAD_COUNT (1ull << 62) /* go word: token count out of range, nothing runs */

/* Copies n16 16-byte chunks of x from the host buffer to the device, with
 * threads [first, first + stride) of the grid; returns 1 when this thread saw
 * a non-finite value (only looked for when asked). */
template <typename DT>
static __device__ __forceinline__ bool stage_x(const uint4 *xh, uint4 *xd, size_t n16, size_t first, size_t stride,
                                               int check) {
    bool bad = false;
    for (size_t i = first; i < n16; i += stride) {
        const uint4 v = ld_volatile16(xh + i);
        if (check) bad |= nonfinite8<DT>(v);
        xd[i] = v;
    }
    return bad;
}

/* Copies y to the host buffer; fences at system scope when it wrote anything. */
static __device__ __forceinline__ void publish_y(const uint4 *yd, uint4 *yh, size_t n16, size_t first, size_t stride) {
    bool wrote = false;
    for (size_t i = first; i < n16; i += stride) {
        yh[i] = __ldcg(yd + i);
        wrote = true;
    }
    if (wrote) __threadfence_system();
}

template <typename DT>
__global__ void __launch_bounds__(FM_THREADS, FM_MIN_BLOCKS)
    resident_kernel(dmoe_fused_args a, rs_ctrl *c, rs_mailbox *mb, const uint4 *xh, uint4 *xd, uint4 *yh,
                    int max_tokens, int reject_nonfinite) {
    extern __shared__ __align__(16) char smem[];
    __shared__ uint32_t s_word;
    __shared__ unsigned long long s_go;
    const size_t row16 = (size_t)a.hidden / 8; /* 16-byte chunks per row (H % 8 == 0) */
    const size_t tid = (size_t)blockIdx.x * FM_THREADS + threadIdx.x, nthreads = (size_t)gridDim.x * FM_THREADS;
    const uint4 *yd = (const uint4 *)a.y;
    uint32_t seen = 0; /* sequence number of the last command this block acted on */
    for (;;) {
        if (threadIdx.x == 0) {
            unsigned long long go;
            if (blockIdx.x == 0) { /* the doorbell: one thread of the grid polls the host word */
                while ((uint32_t)(go = ld_acquire_sys64(&mb->cmd)) == seen) {
                }
                const int T = (int)((go >> 32) & 0xffff);
                if (!(go & RS_STOP) && (T < 1 || T > max_tokens)) go |= RS_BAD_COUNT;
                st_release_gpu64(&c->go, go);
            } else {
                while ((uint32_t)(go = ld_acquire_gpu64(&c->go)) == seen) __nanosleep(64);
            }
            s_go = go;
        }
        __syncthreads();
        const unsigned long long go = s_go;
        __syncthreads(); /* every thread has read s_go before thread 0 may write it again */
        seen = (uint32_t)go;
        if (go & RS_STOP) break;
        if (go & RS_BAD_COUNT) { /* nothing runs; no block waits on another */
            if (blockIdx.x == 0 && threadIdx.x == 0) publish_done(mb, seen, DMOE_ERR_INVALID_ARGUMENT);
            continue;
        }
        const int T = (int)((go >> 32) & 0xffff);
        const size_t n16 = (size_t)T * row16;
        const bool bad = stage_x<DT>(xh, xd, n16, tid, nthreads, reject_nonfinite);
        if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(&c->bad, 1u);
        rs_barrier(c);
        const bool skip = __ldcg((const int *)&c->bad) != 0;
        if (!skip) {
            a.n_tokens = T;
            fused_body<DT>(a, smem, &s_word);
        }
        rs_barrier(c); /* y complete, counters reset; every block has read the bad flag */
        if (!skip) publish_y(yd, yh, n16, tid, nthreads);
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            if (atomicAdd(&c->done_count, 1u) == gridDim.x - 1) {
                c->done_count = 0;
                c->bad = 0;
                publish_done(mb, seen, skip ? DMOE_ERR_INVALID_ARGUMENT : DMOE_OK);
            }
        }
    }
}

/* ---- host ---- */

#define RS_MAX_DEVICES 64
static int rs_active[RS_MAX_DEVICES]; /* resident kernels per device (0 or 1) */

/* A resident kernel that did not stop within destroy's timeout: its buffers stay allocated (freeing
 * them would wait for it) and the device stays taken, until a later look finds its stream idle. */
typedef struct rs_orphan {
    cudaStream_t stream;
    void *arena, *mb, *in, *out;
} rs_orphan;
static rs_orphan *rs_orphans[RS_MAX_DEVICES];

/* resident.h, dmoe__cuda_device_enter: shared by the backend's calls, exclusive in rs_create. Writers
 * first (glibc's default lets a stream of overlapping readers keep rs_create out for ever); so no
 * gated call may enter the gate again (none does: the table's wrappers call the unwrapped bodies). */
static pthread_rwlock_t rs_gates[RS_MAX_DEVICES];
static pthread_mutex_t rs_reapers[RS_MAX_DEVICES];
static pthread_once_t rs_gates_once = PTHREAD_ONCE_INIT;
static void rs_gates_init(void) {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
#if defined(__GLIBC__)
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    for (int i = 0; i < RS_MAX_DEVICES; i++) {
        pthread_rwlock_init(&rs_gates[i], &a);
        pthread_mutex_init(&rs_reapers[i], NULL);
    }
    pthread_rwlockattr_destroy(&a);
}
static pthread_rwlock_t *rs_gate(int device) {
    if (device < 0 || device >= RS_MAX_DEVICES) return NULL;
    pthread_once(&rs_gates_once, rs_gates_init);
    return &rs_gates[device];
}
static void rs_gate_fail(const char *what, int err) {
    fprintf(stderr, "dmoe: the resident gate of a device: pthread_rwlock_%s: %s\n", what, strerror(err));
    abort(); /* running on unlocked would risk a wait for ever on the resident kernel */
}
extern "C" void dmoe__cuda_device_enter(int device) {
    pthread_rwlock_t *g = rs_gate(device);
    int err;
    if (g && (err = pthread_rwlock_rdlock(g)) != 0) rs_gate_fail("rdlock", err);
}
extern "C" void dmoe__cuda_device_leave(int device) {
    pthread_rwlock_t *g = rs_gate(device);
    int err;
    if (g && (err = pthread_rwlock_unlock(g)) != 0) rs_gate_fail("unlock", err);
}

/* The device side of a resident kernel, every pointer optional (its kernel has ended). */
static void rs_free_buffers(cudaStream_t stream, void *arena, void *mb, void *in, void *out) {
    if (stream) cudaStreamDestroy(stream);
    if (arena) cudaFree(arena);
    if (mb) cudaFreeHost(mb);
    if (in) cudaFreeHost(in);
    if (out) cudaFreeHost(out);
    (void)cudaGetLastError();
}

/* Frees an orphan whose kernel has ended and gives its device back; 0 while it still runs or there is
 * none. One reaper at a time per device (readers of the gate may look at once). */
static int rs_reap(int device) {
    if (!__atomic_load_n(&rs_orphans[device], __ATOMIC_ACQUIRE)) return 0;
    pthread_once(&rs_gates_once, rs_gates_init);
    pthread_mutex_lock(&rs_reapers[device]);
    rs_orphan *o = __atomic_load_n(&rs_orphans[device], __ATOMIC_ACQUIRE);
    int reaped = 0;
    if (o && cudaStreamQuery(o->stream) != cudaErrorNotReady) {
        int cur = -1;
        (void)cudaGetDevice(&cur);
        (void)cudaSetDevice(device);
        rs_free_buffers(o->stream, o->arena, o->mb, o->in, o->out);
        if (cur >= 0) (void)cudaSetDevice(cur);
        free(o);
        __atomic_store_n(&rs_orphans[device], (rs_orphan *)NULL, __ATOMIC_RELEASE);
        __atomic_store_n(&rs_active[device], 0, __ATOMIC_RELEASE);
        reaped = 1;
    }
    (void)cudaGetLastError();
    pthread_mutex_unlock(&rs_reapers[device]);
    return reaped;
}

extern "C" int dmoe__cuda_resident_active(int device) {
    if (device < 0 || device >= RS_MAX_DEVICES || __atomic_load_n(&rs_active[device], __ATOMIC_ACQUIRE) == 0)
        return 0;
    (void)rs_reap(device);
    return __atomic_load_n(&rs_active[device], __ATOMIC_ACQUIRE) != 0;
}

typedef struct rs_state {
    cudaStream_t stream;
    rs_mailbox *mb;     /* host view */
    rs_mailbox *mb_dev; /* device view of the same memory */
    void *in_dev, *out_dev;
    void *arena;
    rs_ctrl *ctrl;
    int32_t n_blocks;
    int32_t device;
    uint32_t seq;      /* of the last command written */
    int in_flight;
    int running;
    int has_last;
    dmoe_status last_status;
    int64_t n_submitted, n_completed, t_in_flight;
} rs_state;

static double now_ms(void) { return dmoe__now_s() * 1e3; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Frees everything (the kernel has ended or never started) and frees the device. */
static void rs_free(dmoe_resident *r, rs_state *s) {
    if (!s) return;
    const int device = s->device;
    rs_free_buffers(s->stream, s->arena, s->mb, r->input, r->output);
    r->input = r->output = NULL;
    dmoe__free(r->layer->ctx, s);
    __atomic_store_n(&rs_active[device], 0, __ATOMIC_RELEASE);
}

static size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }

static dmoe_status rs_create_locked(dmoe_resident *r);

static dmoe_status rs_create(dmoe_resident *r) {
    dmoe_context *ctx = r->layer->ctx;
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    DMOE_CUDA_CHECK(ctx, cudaSetDevice(cc->device));
    int can_map = 0, coop = 0;
    DMOE_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&can_map, cudaDevAttrCanMapHostMemory, cc->device));
    DMOE_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, cc->device));
    if (!can_map || !coop)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "resident mode needs mapped host memory and cooperative launch (device %d: %d, %d)",
                           (int)cc->device, can_map, coop);
    if (cc->device >= RS_MAX_DEVICES)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "resident mode: device ordinal %d >= %d", (int)cc->device,
                           RS_MAX_DEVICES);
    /* exclusive: no backend call of another thread is between its own check and its device work */
    pthread_rwlock_t *gate = rs_gate(cc->device);
    pthread_rwlock_wrlock(gate);
    (void)rs_reap(cc->device); /* a kernel an earlier destroy left running may have ended since */
    int expected = 0;
    dmoe_status st;
    if (!__atomic_compare_exchange_n(&rs_active[cc->device], &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        st = dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "a resident kernel already occupies device %d (one per device)",
                         (int)cc->device);
    } else {
        st = rs_create_locked(r);
        if (st != DMOE_OK) __atomic_store_n(&rs_active[cc->device], 0, __ATOMIC_RELEASE);
    }
    pthread_rwlock_unlock(gate);
    return st;
}

static dmoe_status rs_create_locked(dmoe_resident *r) {
    dmoe_layer *layer = r->layer;
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const int64_t T = r->desc.max_tokens, H = d->hidden;
    const size_t es = dmoe_dtype_size(d->act_dtype), io = (size_t)(T * H) * es;
    rs_state *s = (rs_state *)dmoe__calloc(ctx, 1, sizeof *s);
    if (!s) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "resident state");
    dmoe_status st = DMOE_OK;
    s->device = cc->device;
    cudaError_t err;
    const size_t ws = dmoe__fused_workspace_bytes(T, (int32_t)H, (int32_t)d->ffn, (int32_t)d->shared_ffn,
                                                  d->n_experts, d->top_k, d->n_shared_experts);
    const size_t off_x = align256(ws), off_y = off_x + align256(io), off_ids = off_y + align256(io);
    const size_t off_w = off_ids + align256((size_t)T * d->top_k * 4), off_c = off_w + align256((size_t)T * d->top_k * 4);
    const size_t total = off_c + align256(sizeof(rs_ctrl));
    void *in = NULL, *out = NULL;
    const char *what = "cudaHostAlloc(mailbox)";
    err = cudaHostAlloc((void **)&s->mb, sizeof(rs_mailbox), cudaHostAllocMapped);
    if (err == cudaSuccess) {
        what = "cudaHostAlloc(input, output)";
        memset(s->mb, 0, sizeof(rs_mailbox));
        err = cudaHostAlloc(&in, io, cudaHostAllocMapped);
        r->input = in;
    }
    if (err == cudaSuccess) err = cudaHostAlloc(&out, io, cudaHostAllocMapped);
    r->output = out;
    if (err == cudaSuccess) {
        what = "cudaHostGetDevicePointer";
        err = cudaHostGetDevicePointer((void **)&s->mb_dev, s->mb, 0);
    }
    if (err == cudaSuccess) err = cudaHostGetDevicePointer(&s->in_dev, in, 0);
    if (err == cudaSuccess) err = cudaHostGetDevicePointer(&s->out_dev, out, 0);
    if (err == cudaSuccess) {
        what = "cudaMalloc(resident workspace)";
        err = cudaMalloc(&s->arena, total);
    }
    if (err == cudaSuccess) {
        what = "cudaMemset(resident workspace)";
        err = cudaMemset(s->arena, 0, total);
    }
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err == cudaSuccess) {
        what = "cudaStreamCreateWithFlags";
        err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    }
    if (err != cudaSuccess) {
        st = err == cudaErrorMemoryAllocation
                 ? dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "resident mode: %s: %s", what, cudaGetErrorString(err))
                 : dmoe__cuda_error(ctx, err, what, __FILE__, __LINE__);
        (void)cudaGetLastError();
        rs_free(r, s);
        return st;
    }
    char *base = (char *)s->arena;
    s->ctrl = (rs_ctrl *)(base + off_c);
    dmoe_fused_args a;
    dmoe__cuda_fused_args_init(layer, &a);
    a.n_tokens = (int32_t)T;
    a.route_from_ids = 0;
    a.x = base + off_x;
    a.y = base + off_y;
    a.topk_ids = (int32_t *)(base + off_ids);
    a.topk_w = (float *)(base + off_w);
    a.ws = base;
    /* the staged router's k split, as dmoe__fused_forward sets it (it does not depend on T
     * up to the fused kernel's 64 tokens), so every batch routes bitwise like the ordinary launch */
    a.route_kchunk = (int32_t)dmoe__cuda_router_config(T, d->hidden, d->n_experts, dmoe__cuda_ctx(ctx)->num_sms).k_chunk;
    if (!dmoe__fused_kchunk_fits((int32_t)d->hidden, a.route_kchunk)) {
        st = dmoe__error(ctx, DMOE_ERR_INTERNAL, "resident: router split of %d columns at H=%lld does not fit the "
                         "fused workspace", (int)a.route_kchunk, (long long)d->hidden);
        rs_free(r, s);
        return st;
    }

    /* fused_body lays out its shared memory for each batch's T, and a smaller T can need
     * more (its logits may fit in shared memory where the largest T's do not): the block
     * gets the most any batch size needs */
    size_t smem = 0;
    for (int64_t t = 1; t <= T; t++) {
        const size_t b = dmoe__fused_smem_bytes((int32_t)t, d->n_experts, d->top_k, d->n_shared_experts);
        if (b > smem) smem = b;
    }
    void (*kernel)(dmoe_fused_args, rs_ctrl *, rs_mailbox *, const uint4 *, uint4 *, uint4 *, int, int) =
        a.is_bf16 ? resident_kernel<dmoe_bf16> : resident_kernel<dmoe_f16>;
    size_t most = 0; /* the opt-in maximum minus the kernel's static shared memory */
    err = dmoe_smem_most(kernel, cc->device, &most);
    if (err == cudaSuccess && smem > most) {
        rs_free(r, s);
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "resident mode: the fused kernel needs %zu B of shared memory per block for batches of up "
                           "to %lld tokens, the device allows %zu (lower max_tokens)",
                           smem, (long long)T, most);
    }
    int per_sm = 0;
    if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, FM_THREADS, smem);
    if (err == cudaSuccess && per_sm < 1) {
        rs_free(r, s);
        return dmoe__error(ctx, DMOE_ERR_CUDA, "resident kernel: no block fits on a multiprocessor");
    }
    if (err == cudaSuccess) {
        s->n_blocks = per_sm * cc->num_sms;
        cudaLaunchConfig_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.gridDim = dim3((unsigned)s->n_blocks);
        cfg.blockDim = dim3(FM_THREADS);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = s->stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeCooperative;
        attr[0].val.cooperative = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        err = cudaLaunchKernelEx(&cfg, kernel, a, s->ctrl, s->mb_dev, (const uint4 *)s->in_dev,
                                 (uint4 *)(base + off_x), (uint4 *)s->out_dev, (int)T, (int)r->desc.reject_nonfinite);
        if (err == cudaSuccess) err = cudaGetLastError();
    }
    if (err != cudaSuccess) {
        st = dmoe__cuda_error(ctx, err, "resident kernel launch", __FILE__, __LINE__);
        (void)cudaGetLastError();
        rs_free(r, s);
        return st;
    }
    s->running = 1;
    s->last_status = DMOE_ERR_INVALID_ARGUMENT;
    r->backend_data = s;
    if (cc->print_config)
        fprintf(stderr,
                "dmoe cuda: resident kernel: %d blocks (%d per SM) x %d threads, %zu B smem, max_tokens %lld, "
                "%.1f MB device workspace, nonfinite inputs %s\n",
                s->n_blocks, per_sm, FM_THREADS, smem, (long long)T, (double)total / 1048576.0,
                r->desc.reject_nonfinite ? "rejected" : "allowed");
    return DMOE_OK;
}

/* 0 while the kernel runs; else a status (and running = 0). */
static dmoe_status rs_check_alive(dmoe_resident *r, rs_state *s) {
    if (!s->running) return dmoe__error(r->layer->ctx, DMOE_ERR_INTERNAL, "the resident kernel is no longer running");
    cudaError_t err = cudaStreamQuery(s->stream);
    if (err == cudaErrorNotReady) return DMOE_OK;
    s->running = 0;
    if (err == cudaSuccess)
        return dmoe__error(r->layer->ctx, DMOE_ERR_INTERNAL, "the resident kernel exited unexpectedly");
    return dmoe__cuda_error(r->layer->ctx, err, "resident kernel", __FILE__, __LINE__);
}

static void write_cmd(rs_state *s, unsigned long long flags_and_tokens) {
    s->seq = s->seq + 1 == 0 ? 1 : s->seq + 1; /* 0 is the initial "nothing" */
    __atomic_store_n(&s->mb->cmd, flags_and_tokens | s->seq, __ATOMIC_RELEASE);
}

static dmoe_status submit_cmd(dmoe_resident *r, int64_t n_tokens) {
    rs_state *s = (rs_state *)r->backend_data;
    if (s->in_flight)
        return dmoe__error(r->layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "a batch is in flight: dmoe_resident_wait for it before submitting the next");
    dmoe_status st = rs_check_alive(r, s);
    if (st != DMOE_OK) return st;
    write_cmd(s, (unsigned long long)(n_tokens & 0xffff) << 32);
    s->in_flight = 1;
    s->t_in_flight = n_tokens;
    s->n_submitted++;
    return DMOE_OK;
}

static dmoe_status rs_submit(dmoe_resident *r, int64_t n_tokens) { return submit_cmd(r, n_tokens); }

extern "C" dmoe_status dmoe__cuda_resident_submit_unchecked(dmoe_resident *r, int64_t n_tokens) {
    return submit_cmd(r, n_tokens);
}

static dmoe_status rs_wait(dmoe_resident *r, int32_t timeout_ms) {
    rs_state *s = (rs_state *)r->backend_data;
    dmoe_context *ctx = r->layer->ctx;
    if (!s->in_flight) {
        if (!s->has_last) return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "no batch was submitted");
        if (s->last_status != DMOE_OK)
            return dmoe__error(ctx, s->last_status, "the last batch failed (%s)", dmoe_status_name(s->last_status));
        return DMOE_OK;
    }
    const double deadline = now_ms() + timeout_ms;
    for (uint64_t spin = 0;; spin++) {
        const unsigned long long done = __atomic_load_n(&s->mb->done, __ATOMIC_ACQUIRE);
        if ((uint32_t)done == s->seq) {
            s->in_flight = 0;
            s->n_completed++;
            s->has_last = 1;
            s->last_status = (dmoe_status)(int32_t)(uint32_t)(done >> 32);
            if (s->last_status != DMOE_OK)
                return dmoe__error(ctx, s->last_status,
                                   "batch %lld (%lld tokens) was not run: the kernel found %s",
                                   (long long)s->n_submitted, (long long)s->t_in_flight,
                                   s->t_in_flight < 1 || s->t_in_flight > r->desc.max_tokens
                                       ? "a token count out of range"
                                       : "NaN or inf in the input");
            return DMOE_OK;
        }
        const int timed_out = (spin & 63) == 0 && now_ms() >= deadline;
        if ((spin & 1023) == 1023 || timed_out) {
            /* a dead kernel is reported, never a timeout that repeats forever (also
             * for timeout 0); the batch counts as failed for later waits */
            dmoe_status st = rs_check_alive(r, s);
            if (st != DMOE_OK) {
                s->in_flight = 0;
                s->has_last = 1;
                s->last_status = st;
                return st;
            }
        }
        if (timed_out) {
            /* one last look, so a batch that completed during the check is not reported late */
            if ((uint32_t)__atomic_load_n(&s->mb->done, __ATOMIC_ACQUIRE) == s->seq) continue;
            return dmoe__error(ctx, DMOE_ERR_TIMEOUT,
                               "batch %lld (%lld tokens) not complete after %d ms; it stays in flight",
                               (long long)s->n_submitted, (long long)s->t_in_flight, (int)timeout_ms);
        }
        if (spin > (1u << 20)) sched_yield();
        else cpu_relax();
    }
}

static void rs_query(const dmoe_resident *r, dmoe_resident_info *info) {
    const rs_state *s = (const rs_state *)r->backend_data;
    info->max_tokens = r->desc.max_tokens;
    info->n_blocks = s->n_blocks;
    info->in_flight = s->in_flight;
    info->running = s->running && cudaStreamQuery(s->stream) == cudaErrorNotReady;
    info->n_submitted = s->n_submitted;
    info->n_completed = s->n_completed;
}

static dmoe_status rs_destroy(dmoe_resident *r) {
    rs_state *s = (rs_state *)r->backend_data;
    dmoe_context *ctx = r->layer->ctx;
    if (!s) return DMOE_OK;
    const int budget = r->desc.shutdown_timeout_ms;
    if (s->running && s->in_flight) (void)rs_wait(r, budget); /* let the batch finish first */
    s->in_flight = 0;
    if (s->running) {
        write_cmd(s, RS_STOP);
        const double deadline = now_ms() + budget; /* the stop's own budget, whatever the batch took */
        cudaError_t err = cudaErrorNotReady;
        while ((err = cudaStreamQuery(s->stream)) == cudaErrorNotReady && now_ms() < deadline) sched_yield();
        if (err == cudaErrorNotReady) {
            /* Freeing what the kernel uses would wait for it forever: it becomes an orphan, freed
             * (and its device given back) by the first look after it ends (rs_reap). */
            rs_orphan *o = (rs_orphan *)calloc(1, sizeof *o);
            if (o) {
                o->stream = s->stream;
                o->arena = s->arena;
                o->mb = s->mb;
                o->in = r->input;
                o->out = r->output;
                __atomic_store_n(&rs_orphans[s->device], o, __ATOMIC_RELEASE);
            }
            dmoe__free(ctx, s);
            r->backend_data = NULL;
            r->input = r->output = NULL;
            return dmoe__error(ctx, DMOE_ERR_TIMEOUT,
                               "the resident kernel did not stop within %d ms; its buffers stay allocated until "
                               "it ends (the device takes no new layer or resident kernel until then)", budget);
        }
        s->running = 0;
        if (err != cudaSuccess) {
            dmoe_status st = dmoe__cuda_error(ctx, err, "resident kernel", __FILE__, __LINE__);
            rs_free(r, s);
            r->backend_data = NULL;
            return st;
        }
    }
    rs_free(r, s);
    r->backend_data = NULL;
    return DMOE_OK;
}

extern "C" const dmoe_resident_iface dmoe__cuda_resident_iface = {
    /* .max_tokens = */ DMOE_FUSED_MAX_TOKENS,
    /* .create     = */ rs_create,
    /* .submit     = */ rs_submit,
    /* .wait       = */ rs_wait,
    /* .query      = */ rs_query,
    /* .destroy    = */ rs_destroy,
};
