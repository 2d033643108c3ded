/*
 * expert-cache.cu: the GPU expert cache (layouts in expert-cache.h, contract
 * in dmoe.h).
 *
 * resolve_kernel: one block, one thread per expert and per slot (E <= 1024,
 * N <= E). Thread e marks whether the batch uses expert e (offsets, or the
 * prefetch list); a used expert with a slot is a hit (its stamp becomes the
 * new clock). The candidate victims are the slots no used expert occupies;
 * each candidate's rank in (stamp, slot) order is counted against the others
 * (empty slots have stamp 0, so they go first). The m-th miss in ascending
 * expert order takes the candidate of rank m and evicts its expert; misses
 * beyond the candidates are read from host memory by the GEMMs. The block
 * writes the pointer tables, the install list and the counters.
 *
 * Installs are done by copy_kernel: 2 blocks per SM stream the installs from mapped host
 * memory into their slots with 16-byte loads, 4 in flight per thread, so the
 * PCIe link is kept busy without a DMA engine or a host round trip. Its grid is
 * fixed (the install count is only known on the device); with no installs it
 * exits at once. It triggers programmatic dependent launch at its start, and
 * the streaming GEMM1 after it (w_wait = the installed experts) computes the
 * resident experts while the copy runs, waiting only before the installed
 * ones: PCIe and HBM work overlap in one stream, capturable in a graph.
 * DMOE_CACHE_INSTALL=stream (read when the cache is enabled) is the variant
 * measured against it: the streaming GEMMs read a miss from host memory and
 * write it into its slot as they go (no copy kernel); it measured slower
 * (bench/RESULTS.md), the GEMM's 64-byte row pieces use PCIe less well than
 * the copy kernel's 512-byte warp reads.
 */
#include "cuda-common.cuh"
#include "cuda-context.h"
#include "expert-cache.h"

#define CACHE_MAX_THREADS 1024
#define PREFETCH_CHUNK 256
#define COPY_THREADS 256
#define COPY_UNROLL 4

enum {
    CTR_HITS = 0,
    CTR_MISSES,
    CTR_INSTALLS,
    CTR_EVICTIONS,
    CTR_DIRECT,
    CTR_PREFETCH,
    CTR_BYTES,
    CTR_STALL_NS, /* added by the streaming GEMM1 (w_stall_ns), ns with 10 fraction bits */
    CTR_COUNT
};

struct dmoe_cuda_cache {
    dmoe_pool *pool;
    int32_t n_experts, n_slots;
    size_t w13_bytes, w2_bytes, expert_bytes, slot_stride;
    void *host;                 /* pinned: host_w13 (E, 2F, H) then host_w2 (E, H, F) */
    const char *host_dev;       /* its device address */
    void *slots;                /* (N) slots of slot_stride bytes */
    size_t slots_bytes;
    void *meta;                 /* table, pointer tables, install list, counters */
    size_t meta_bytes;
    int32_t *slot_of_expert;    /* (E) */
    int32_t *expert_of_slot;    /* (N) */
    uint32_t *stamp;            /* (N) */
    uint32_t *clock;            /* (1) */
    int32_t *install;           /* (1 + 2N) */
    const void **w13_ptrs;      /* (E) */
    const void **w2_ptrs;       /* (E) */
    void **w13_dst, **w2_dst;   /* (E) install targets for the streaming GEMM, or NULL */
    int32_t *wait;              /* (E) 1: installed by this forward's copy kernel */
    unsigned long long *counters; /* (CTR_COUNT) */
    int32_t stream_install;     /* 0: copy kernel only (DMOE_CACHE_INSTALL=copy) */
    int32_t device, num_sms;
};

typedef struct resolve_params {
    const int32_t *offsets; /* (E+1) forward; NULL for a prefetch */
    int32_t n_experts, n_slots;
    int32_t n_ids;          /* prefetch */
    int32_t ids[PREFETCH_CHUNK];
    int32_t *slot_of_expert, *expert_of_slot;
    uint32_t *stamp, *clock;
    int32_t *install;
    const void **w13_ptrs, **w2_ptrs;
    void **w13_dst, **w2_dst;
    int32_t *wait;
    int32_t stream_install; /* forward: the GEMMs install the misses while streaming them */
    unsigned long long *counters;
    const char *host_dev;   /* host_w13 */
    const char *slots;
    unsigned long long w13_bytes, w2_bytes, expert_bytes, slot_stride;
} resolve_params;

static __global__ void __launch_bounds__(CACHE_MAX_THREADS) resolve_kernel(resolve_params p) {
    __shared__ unsigned char s_want[CACHE_MAX_THREADS];
    __shared__ uint32_t s_stamp[CACHE_MAX_THREADS];
    __shared__ unsigned char s_cand[CACHE_MAX_THREADS];
    __shared__ int s_victim[CACHE_MAX_THREADS];
    __shared__ int s_warp[33];
    __shared__ uint32_t s_clock;
    const int t = threadIdx.x;
    const int E = p.n_experts, N = p.n_slots;
    const bool prefetch = p.offsets == nullptr;
    if (t == 0) s_clock = *p.clock + 1;
    if (!prefetch) {
        if (t < E) s_want[t] = p.offsets[t + 1] > p.offsets[t];
    } else {
        if (t < E) s_want[t] = 0;
        __syncthreads();
        if (t < p.n_ids) s_want[p.ids[t]] = 1;
    }
    __syncthreads();
    const uint32_t clock = s_clock;
    /* slot side: stamps and candidates (slots no wanted expert holds) */
    int occupant = -1;
    if (t < N) {
        occupant = p.expert_of_slot[t];
        s_stamp[t] = p.stamp[t];
        s_cand[t] = !(occupant >= 0 && s_want[occupant]);
    }
    /* expert side: hit or miss */
    const int want = t < E && s_want[t];
    const int my_slot = want ? p.slot_of_expert[t] : -1;
    const int hit = want && my_slot >= 0;
    const int miss = want && my_slot < 0;
    __syncthreads();
    const int n_cand = __syncthreads_count(t < N && s_cand[t]);
    if (t < N && s_cand[t]) {
        const uint32_t st = s_stamp[t];
        int rank = 0;
        for (int s = 0; s < N; s++)
            rank += s_cand[s] && (s_stamp[s] < st || (s_stamp[s] == st && s < t));
        s_victim[rank] = t;
    }
    int n_miss;
    const int miss_rank = dmoe_block_exclusive_scan(miss, s_warp, &n_miss); /* syncs */
    const int n_hit = __syncthreads_count(hit);
    const int n_install = n_miss < n_cand ? n_miss : n_cand;
    int evicted = 0;
    const char *host_w13 = p.host_dev + (size_t)t * p.w13_bytes;
    const char *host_w2 = p.host_dev + (size_t)E * p.w13_bytes + (size_t)t * p.w2_bytes;
    if (want && !prefetch) {
        p.w13_dst[t] = nullptr;
        p.w2_dst[t] = nullptr;
        p.wait[t] = miss && miss_rank < n_cand && !p.stream_install;
    }
    if (hit) {
        p.stamp[my_slot] = clock;
        if (!prefetch) {
            const char *slot = p.slots + (size_t)my_slot * p.slot_stride;
            p.w13_ptrs[t] = slot;
            p.w2_ptrs[t] = slot + p.w13_bytes;
        }
    } else if (miss) {
        if (miss_rank < n_cand) {
            const int s = s_victim[miss_rank];
            const int old = p.expert_of_slot[s];
            if (old >= 0) {
                p.slot_of_expert[old] = -1;
                evicted = 1;
            }
            p.slot_of_expert[t] = s;
            p.expert_of_slot[s] = t;
            p.stamp[s] = clock;
            p.install[1 + 2 * miss_rank] = t;
            p.install[2 + 2 * miss_rank] = s;
            if (!prefetch) {
                char *slot = (char *)p.slots + (size_t)s * p.slot_stride;
                if (p.stream_install) {
                    /* the GEMMs read host memory and write the slot as they go */
                    p.w13_ptrs[t] = host_w13;
                    p.w2_ptrs[t] = host_w2;
                    p.w13_dst[t] = slot;
                    p.w2_dst[t] = slot + p.w13_bytes;
                } else {
                    p.w13_ptrs[t] = slot;
                    p.w2_ptrs[t] = slot + p.w13_bytes;
                }
            }
        } else if (!prefetch) {
            /* no free slot for it in this batch: the GEMMs read it from host memory */
            p.w13_ptrs[t] = host_w13;
            p.w2_ptrs[t] = host_w2;
        }
    }
    const int n_evict = __syncthreads_count(evicted);
    if (t == 0) {
        *p.clock = clock;
        p.install[0] = (!prefetch && p.stream_install) ? 0 : n_install; /* what the copy kernel does */
        unsigned long long *c = p.counters;
        c[CTR_EVICTIONS] += (unsigned long long)n_evict;
        if (prefetch) {
            c[CTR_PREFETCH] += (unsigned long long)n_install;
            c[CTR_BYTES] += (unsigned long long)n_install * p.expert_bytes;
        } else {
            c[CTR_HITS] += (unsigned long long)n_hit;
            c[CTR_MISSES] += (unsigned long long)n_miss;
            c[CTR_INSTALLS] += (unsigned long long)n_install;
            c[CTR_DIRECT] += (unsigned long long)(n_miss - n_install);
            c[CTR_BYTES] += (unsigned long long)n_miss * p.expert_bytes;
        }
    }
}

typedef struct copy_params {
    const int32_t *install;
    const char *host_w13, *host_w2; /* device addresses of the pinned copies */
    char *slots;
    unsigned long long w13_chunks, w2_chunks, slot_stride; /* chunks of 16 bytes */
} copy_params;

static __global__ void __launch_bounds__(COPY_THREADS) copy_kernel(copy_params p) {
    /* the GEMM after it may start now and work on resident experts (see w_wait) */
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int n = p.install[0];
    const unsigned long long per = p.w13_chunks + p.w2_chunks;
    const unsigned long long total = (unsigned long long)n * per;
    const unsigned long long stride = (unsigned long long)gridDim.x * COPY_THREADS;
    unsigned long long c = (unsigned long long)blockIdx.x * COPY_THREADS + threadIdx.x;
    for (; c < total; c += stride * COPY_UNROLL) {
        uint4 v[COPY_UNROLL];
        uint4 *dst[COPY_UNROLL];
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; u++) {
            const unsigned long long cc = c + u * stride;
            dst[u] = nullptr;
            if (cc < total) {
                const int i = (int)(cc / per);
                const unsigned long long j = cc - (unsigned long long)i * per;
                const int e = p.install[1 + 2 * i], s = p.install[2 + 2 * i];
                char *slot = p.slots + (size_t)s * p.slot_stride;
                const uint4 *src;
                if (j < p.w13_chunks) {
                    src = (const uint4 *)(p.host_w13 + (size_t)e * p.w13_chunks * 16) + j;
                    dst[u] = (uint4 *)slot + j;
                } else {
                    src = (const uint4 *)(p.host_w2 + (size_t)e * p.w2_chunks * 16) + (j - p.w13_chunks);
                    dst[u] = (uint4 *)slot + j;
                }
                v[u] = *src;
            }
        }
#pragma unroll
        for (int u = 0; u < COPY_UNROLL; u++)
            if (dst[u]) *dst[u] = v[u];
    }
}

static resolve_params resolve_params_of(const dmoe_cuda_cache *c) {
    resolve_params p;
    memset(&p, 0, sizeof p);
    p.n_experts = c->n_experts;
    p.n_slots = c->n_slots;
    p.slot_of_expert = c->slot_of_expert;
    p.expert_of_slot = c->expert_of_slot;
    p.stamp = c->stamp;
    p.clock = c->clock;
    p.install = c->install;
    p.w13_ptrs = c->w13_ptrs;
    p.w2_ptrs = c->w2_ptrs;
    p.w13_dst = c->w13_dst;
    p.w2_dst = c->w2_dst;
    p.wait = c->wait;
    p.counters = c->counters;
    p.host_dev = c->host_dev;
    p.slots = (const char *)c->slots;
    p.w13_bytes = c->w13_bytes;
    p.w2_bytes = c->w2_bytes;
    p.expert_bytes = c->expert_bytes;
    p.slot_stride = c->slot_stride;
    return p;
}

static dmoe_status launch_resolve_and_copy(dmoe_context *ctx, dmoe_cuda_cache *c,
                                           const resolve_params &rp, cudaStream_t stream) {
    const int threads = (c->n_experts + 31) / 32 * 32;
    resolve_kernel<<<1, threads, 0, stream>>>(rp);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    if (rp.offsets && rp.stream_install) return DMOE_OK; /* the GEMMs install */
    copy_params cp;
    cp.install = c->install;
    cp.host_w13 = c->host_dev;
    cp.host_w2 = c->host_dev + (size_t)c->n_experts * c->w13_bytes;
    cp.slots = (char *)c->slots;
    cp.w13_chunks = c->w13_bytes / 16;
    cp.w2_chunks = c->w2_bytes / 16;
    cp.slot_stride = c->slot_stride;
    /* enough blocks to keep many PCIe reads in flight, not more than the largest copy needs */
    const unsigned long long max_chunks =
        (unsigned long long)c->n_slots * (cp.w13_chunks + cp.w2_chunks);
    /* 2 blocks per SM keep ~4 MB of PCIe reads in flight and leave room beside them for the
     * GEMM, which starts early under programmatic dependent launch */
    unsigned long long grid = (unsigned long long)c->num_sms * 2;
    const unsigned long long need = (max_chunks + COPY_THREADS * COPY_UNROLL - 1) / (COPY_THREADS * COPY_UNROLL);
    if (grid > need) grid = need;
    if (grid < 1) grid = 1;
    copy_kernel<<<(unsigned)grid, COPY_THREADS, 0, stream>>>(cp);
    DMOE_CUDA_CHECK(ctx, cudaGetLastError());
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_cache_resolve(dmoe_context *ctx, dmoe_cuda_cache *c,
                                                const int32_t *offsets, int stream_gemm,
                                                cudaStream_t stream) {
    resolve_params rp = resolve_params_of(c);
    rp.offsets = offsets;
    rp.stream_install = stream_gemm && c->stream_install;
    return launch_resolve_and_copy(ctx, c, rp, stream);
}

extern "C" dmoe_status dmoe__cuda_cache_prefetch(dmoe_context *ctx, dmoe_cuda_cache *c,
                                                 const int32_t *ids, int32_t n_ids,
                                                 cudaStream_t stream) {
    /* In chunks that fit a kernel's parameters. A later chunk never evicts an
     * earlier one: those carry the newest stamps and n_ids <= n_slots. */
    for (int32_t i0 = 0; i0 < n_ids; i0 += PREFETCH_CHUNK) {
        resolve_params rp = resolve_params_of(c);
        rp.offsets = nullptr;
        rp.n_ids = n_ids - i0 < PREFETCH_CHUNK ? n_ids - i0 : PREFETCH_CHUNK;
        memcpy(rp.ids, ids + i0, (size_t)rp.n_ids * sizeof(int32_t));
        dmoe_status st = launch_resolve_and_copy(ctx, c, rp, stream);
        if (st != DMOE_OK) return st;
    }
    return DMOE_OK;
}

extern "C" void dmoe__cuda_cache_host_weights(const dmoe_cuda_cache *c, const void **w13, const void **w2) {
    *w13 = c->host;
    *w2 = (const char *)c->host + (size_t)c->n_experts * c->w13_bytes;
}

extern "C" unsigned long long *dmoe__cuda_cache_stall_counter(const dmoe_cuda_cache *c) {
    return c->stream_install ? NULL : c->counters + CTR_STALL_NS;
}

extern "C" const int32_t *dmoe__cuda_cache_slot_table(const dmoe_cuda_cache *c) { return c->slot_of_expert; }

extern "C" int32_t dmoe__cuda_cache_n_slots(const dmoe_cuda_cache *c) { return c->n_slots; }
extern "C" const int32_t *dmoe__cuda_cache_wait(const dmoe_cuda_cache *c) {
    return c->stream_install ? NULL : c->wait;
}
extern "C" void *const *dmoe__cuda_cache_w13_dst(const dmoe_cuda_cache *c) { return c->w13_dst; }
extern "C" void *const *dmoe__cuda_cache_w2_dst(const dmoe_cuda_cache *c) { return c->w2_dst; }
extern "C" const void *const *dmoe__cuda_cache_w13_ptrs(const dmoe_cuda_cache *c) { return c->w13_ptrs; }
extern "C" const void *const *dmoe__cuda_cache_w2_ptrs(const dmoe_cuda_cache *c) { return c->w2_ptrs; }

extern "C" void dmoe__cuda_cache_destroy(dmoe_cuda_cache *c) {
    if (!c) return;
    (void)cudaDeviceSynchronize(); /* no forward may still read the slots or the host copy */
    if (c->slots) dmoe__pool_free(c->pool, c->slots, c->slots_bytes);
    if (c->meta) dmoe__pool_free(c->pool, c->meta, c->meta_bytes);
    if (c->host) cudaFreeHost(c->host);
    (void)cudaGetLastError();
    dmoe__free(c->pool->ctx, c);
}

extern "C" dmoe_status dmoe__cuda_cache_create(dmoe_context *ctx, dmoe_pool *pool,
                                               const dmoe_layer_desc *d, const void *w13,
                                               const void *w2, int32_t n_slots,
                                               dmoe_cuda_cache **out) {
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    const size_t es = dmoe_dtype_size(d->weight_dtype);
    const int32_t E = d->n_experts;
    if (E > CACHE_MAX_THREADS)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "expert cache: at most %d experts, got %d",
                           CACHE_MAX_THREADS, (int)E);
    dmoe_cuda_cache *c = (dmoe_cuda_cache *)dmoe__calloc(ctx, 1, sizeof *c);
    if (!c) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "expert cache: state");
    c->pool = pool;
    c->n_experts = E;
    c->n_slots = n_slots;
    c->w13_bytes = (size_t)(2 * d->ffn * d->hidden) * es;
    c->w2_bytes = (size_t)(d->hidden * d->ffn) * es;
    c->expert_bytes = c->w13_bytes + c->w2_bytes;
    c->slot_stride = (c->expert_bytes + 255) & ~(size_t)255;
    c->device = cc->device;
    c->num_sms = cc->num_sms;
    {
        const char *im = getenv("DMOE_CACHE_INSTALL");
        c->stream_install = im && strcmp(im, "stream") == 0;
    }
    dmoe_status st = DMOE_OK;
    const size_t host_bytes = (size_t)E * c->expert_bytes;
    cudaError_t err = cudaHostAlloc(&c->host, host_bytes, cudaHostAllocMapped | cudaHostAllocPortable);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        c->host = NULL;
        st = dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY,
                         "expert cache: cannot pin %.1f MB of host memory for %d experts: %s",
                         (double)host_bytes / 1048576.0, (int)E, cudaGetErrorString(err));
        goto fail;
    }
    {
        void *dev = NULL;
        err = cudaHostGetDevicePointer(&dev, c->host, 0);
        if (err == cudaSuccess) err = cudaMemcpy(c->host, w13, (size_t)E * c->w13_bytes, cudaMemcpyDefault);
        if (err == cudaSuccess)
            err = cudaMemcpy((char *)c->host + (size_t)E * c->w13_bytes, w2, (size_t)E * c->w2_bytes,
                             cudaMemcpyDefault);
        if (err != cudaSuccess) {
            st = dmoe__cuda_error(ctx, err, "expert cache: copying the experts to pinned memory",
                                  __FILE__, __LINE__);
            goto fail;
        }
        c->host_dev = (const char *)dev;
    }
    c->slots_bytes = (size_t)n_slots * c->slot_stride;
    if ((st = dmoe__pool_alloc(pool, c->slots_bytes, &c->slots)) != DMOE_OK) {
        c->slots = NULL;
        goto fail;
    }
    {
        size_t off = 0;
        const size_t o_soe = off; off += ((size_t)E * 4 + 255) & ~(size_t)255;
        const size_t o_eos = off; off += ((size_t)n_slots * 4 + 255) & ~(size_t)255;
        const size_t o_stamp = off; off += ((size_t)n_slots * 4 + 255) & ~(size_t)255;
        const size_t o_clock = off; off += 256;
        const size_t o_inst = off; off += ((size_t)(1 + 2 * n_slots) * 4 + 255) & ~(size_t)255;
        const size_t o_p13 = off; off += ((size_t)E * sizeof(void *) + 255) & ~(size_t)255;
        const size_t o_p2 = off; off += ((size_t)E * sizeof(void *) + 255) & ~(size_t)255;
        const size_t o_d13 = off; off += ((size_t)E * sizeof(void *) + 255) & ~(size_t)255;
        const size_t o_d2 = off; off += ((size_t)E * sizeof(void *) + 255) & ~(size_t)255;
        const size_t o_wait = off; off += ((size_t)E * 4 + 255) & ~(size_t)255;
        const size_t o_ctr = off; off += 256;
        c->meta_bytes = off;
        if ((st = dmoe__pool_alloc(pool, c->meta_bytes, &c->meta)) != DMOE_OK) {
            c->meta = NULL;
            goto fail;
        }
        char *m = (char *)c->meta;
        c->slot_of_expert = (int32_t *)(m + o_soe);
        c->expert_of_slot = (int32_t *)(m + o_eos);
        c->stamp = (uint32_t *)(m + o_stamp);
        c->clock = (uint32_t *)(m + o_clock);
        c->install = (int32_t *)(m + o_inst);
        c->w13_ptrs = (const void **)(m + o_p13);
        c->w2_ptrs = (const void **)(m + o_p2);
        c->w13_dst = (void **)(m + o_d13);
        c->w2_dst = (void **)(m + o_d2);
        c->wait = (int32_t *)(m + o_wait);
        c->counters = (unsigned long long *)(m + o_ctr);
        err = cudaMemset(m, 0, c->meta_bytes);
        if (err == cudaSuccess) err = cudaMemset(c->slot_of_expert, 0xff, (size_t)E * 4);
        if (err == cudaSuccess) err = cudaMemset(c->expert_of_slot, 0xff, (size_t)n_slots * 4);
        if (err == cudaSuccess) err = cudaDeviceSynchronize();
        if (err != cudaSuccess) {
            st = dmoe__cuda_error(ctx, err, "expert cache: table init", __FILE__, __LINE__);
            goto fail;
        }
    }
    *out = c;
    return DMOE_OK;
fail:
    dmoe__cuda_cache_destroy(c);
    return st;
}

extern "C" dmoe_status dmoe__cuda_cache_stats(dmoe_context *ctx, dmoe_cuda_cache *c,
                                              dmoe_expert_cache_stats *out) {
    unsigned long long ctr[CTR_COUNT];
    int32_t eos[CACHE_MAX_THREADS];
    DMOE_CUDA_CHECK(ctx, cudaDeviceSynchronize());
    DMOE_CUDA_CHECK(ctx, cudaMemcpy(ctr, c->counters, sizeof ctr, cudaMemcpyDeviceToHost));
    DMOE_CUDA_CHECK(ctx, cudaMemcpy(eos, c->expert_of_slot, (size_t)c->n_slots * 4, cudaMemcpyDeviceToHost));
    dmoe_expert_cache_stats s;
    memset(&s, 0, sizeof s);
    s.n_slots = c->n_slots;
    for (int i = 0; i < c->n_slots; i++) s.n_resident += eos[i] >= 0;
    s.expert_bytes = c->expert_bytes;
    s.hits = ctr[CTR_HITS];
    s.misses = ctr[CTR_MISSES];
    s.installs = ctr[CTR_INSTALLS];
    s.evictions = ctr[CTR_EVICTIONS];
    s.direct_reads = ctr[CTR_DIRECT];
    s.prefetch_installs = ctr[CTR_PREFETCH];
    s.bytes_h2d = ctr[CTR_BYTES];
    s.stall_ns = ctr[CTR_STALL_NS] >> 10;
    *out = s;
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_cache_table(dmoe_context *ctx, dmoe_cuda_cache *c, int32_t *slot_of_expert) {
    DMOE_CUDA_CHECK(ctx, cudaDeviceSynchronize());
    DMOE_CUDA_CHECK(ctx, cudaMemcpy(slot_of_expert, c->slot_of_expert, (size_t)c->n_experts * 4,
                                    cudaMemcpyDeviceToHost));
    return DMOE_OK;
}
