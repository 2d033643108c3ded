/*
 * cuda-backend.cu: the CUDA backend (dmoe__backend_cuda), staged path.
 *
 * A context holds the device and its properties (cuda-context.h). A layer
 * holds one device arena with all the workspace a forward of up to max_tokens
 * needs, carved into views at creation; route, experts and forward then only
 * launch kernels on the caller's stream: no allocation, no host
 * synchronisation, so a forward can be captured in a CUDA graph.
 *
 * A forward, with T tokens, K = top_k, S shared experts (cuda-ops.h has the
 * layouts):
 *   router   x -> ids (T, K), wts (T, K)             router.cu  (T <= 16: also the plan)
 *   plan     ids -> counts, offsets, pairs, slot_of  plan.cu
 *   gemm1    x, w13 -> act (T*K, F)                  gemm-stream.cu | gemm-mma.cu | sm90
 *   gemm2    act, w2, wts -> part (T*K, H)           same choice (heuristics.cu)
 *   shared   [S > 0] trivial plan + gate, gemm1/gemm2 over S dense experts (shared.cu)
 *   combine  part (+ shared part) -> y               combine.cu
 *
 * Backend limits: act_dtype == weight_dtype in {bf16, f16}; H, F and Fs
 * multiples of 8 (16-byte rows); K <= 32; E and S <= 1024.
 * Two paths: the staged kernels above, and the fused persistent kernel
 * (fused-moe.cu: the whole forward in one cooperative launch) for up to
 * DMOE_FUSED_MAX_TOKENS tokens. desc.path (AUTO, STAGED, FUSED), overridden
 * by DMOE_PATH=staged|fused|auto (read at layer creation), is the request;
 * path-choice.c turns it into the path of each T (AUTO: fused only where its
 * table records a measured win). A fused request above the limit runs staged.
 * The fused workspace is allocated when some T of the layer may run fused.
 * The resident serving mode (resident.cu) runs the fused kernel too.
 * Environment (read at layer creation): DMOE_CUDA_GEMM=auto|stream|mma|sm90
 * forces a grouped GEMM; DMOE_PRINT_CONFIG=1 prints the choices of each new T;
 * DMOE_CUDA_PDL=0 turns programmatic dependent launch off (read per context).
 */
#include "combine.h"
#include "cuda-context.h"
#include "expert-cache.h"
#include "cpu-misses.h"
#include "fused-moe.h"
#include "cuda-ops.h"
#include "gemm.h"
#include "heuristics.h"
#include "plan.h"
#include "path-choice.h"
#include "resident.h"
#include "router.h"

#define CUDA_MAX_EXPERTS 1024

typedef struct cuda_layer {
    void *arena;            /* one block of the context's pool, carved below */
    size_t arena_bytes;
    size_t fused_bytes;
    void *weights_dev;      /* (optional) device copy of a model loader's weight arena */
    size_t weights_bytes;
    dmoe_cuda_cache *cache; /* (optional) expert cache (expert-cache.cu) */
    dmoe_cuda_misses *misses; /* (optional, with the cache) miss policy state (cpu-misses.cu) */
    float *logits;          /* router partial logits */
    unsigned *counter;      /* router's last-block counter (1) */
    int32_t *ids;           /* (maxT, K) */
    float *wts;             /* (maxT, K) */
    int32_t *counts;        /* (E) */
    int32_t *offsets;       /* (E+1) */
    int32_t *pairs;         /* (maxT*K) */
    int32_t *slot_of;       /* (maxT*K) */
    int32_t *plan_ws;       /* plan histogram */
    void *act;              /* (maxT*K, F) */
    void *part;             /* (maxT*K, H) */
    float *wts_sh;          /* (maxT*S) */
    int32_t *pairs_sh;      /* (maxT*S) */
    int32_t *offsets_sh;    /* (S+1) */
    void *act_sh;           /* (maxT*S, Fs) */
    void *part_sh;          /* (maxT*S, H) */
    void *fused_ws;         /* fused kernel workspace (zeroed once; the kernel leaves it so) */
    int64_t fused_max_t;    /* tokens the fused workspace holds (0: none) */
    dmoe_path request;      /* desc.path or DMOE_PATH */
    dmoe_cuda_gemm_kind gemm_kind;
    int print_config;
    int64_t printed_tokens; /* T of the last printed configuration */
} cuda_layer;

static __global__ void probe_kernel(int *p) {
    if (p) *p = 0;
}

/* The pool's backing allocator: cudaMalloc on the current device (the backend
 * selects the context's device before every call). */
static int pool_raw_alloc(void *user, size_t size, void **out) {
    (void)user;
    cudaError_t err = cudaMalloc(out, size);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: clear it so later checks see only their own */
        return 1;
    }
    return 0;
}

static void pool_raw_free(void *user, void *ptr) {
    (void)user;
    cudaFree(ptr);
    (void)cudaGetLastError();
}

static int cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

static dmoe_status use_device(dmoe_context *ctx) {
    const int dev = dmoe__cuda_ctx(ctx)->device;
    int cur = -1;
    DMOE_CUDA_CHECK(ctx, cudaGetDevice(&cur));
    if (cur != dev) DMOE_CUDA_CHECK(ctx, cudaSetDevice(dev));
    return DMOE_OK;
}

static dmoe_status cuda_context_init(dmoe_context *ctx) {
    int n = 0;
    DMOE_CUDA_CHECK(ctx, cudaGetDeviceCount(&n));
    if (ctx->desc.device >= n)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "device %d does not exist (%d CUDA devices)",
                           (int)ctx->desc.device, n);
    DMOE_CUDA_CHECK(ctx, cudaSetDevice(ctx->desc.device));
    cudaDeviceProp prop;
    DMOE_CUDA_CHECK(ctx, cudaGetDeviceProperties(&prop, ctx->desc.device));
    cudaFuncAttributes fa;
    cudaError_t err = cudaFuncGetAttributes(&fa, probe_kernel);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return dmoe__error(ctx, DMOE_ERR_BACKEND_UNAVAILABLE,
                           "this build has no kernels for %s (sm_%d%d): %s; rebuild with "
                           "CMAKE_CUDA_ARCHITECTURES for it",
                           prop.name, prop.major, prop.minor, cudaGetErrorString(err));
    }
    dmoe_cuda_context *cc = (dmoe_cuda_context *)dmoe__calloc(ctx, 1, sizeof *cc);
    if (!cc) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cuda: context state");
    cc->device = ctx->desc.device;
    cc->num_sms = prop.multiProcessorCount;
    /* DMOE_CUDA_SMS=n (testing): size the persistent grids for n SMs, n < the device's. Under
     * compute-sanitizer racecheck the cost grows with the blocks launched; grid-stride loops
     * then take many turns, which the tests want to see too. */
    const char *sms = getenv("DMOE_CUDA_SMS");
    if (sms && *sms) {
        char *end = NULL;
        const long n = strtol(sms, &end, 10);
        if (*end == '\0' && n > 0 && n < cc->num_sms) cc->num_sms = (int32_t)n;
        else
            fprintf(stderr, "dmoe: DMOE_CUDA_SMS='%s' ignored (want an integer in [1, %d), the device's SMs)\n", sms,
                    (int)cc->num_sms);
    }
    cc->cc_major = prop.major;
    cc->cc_minor = prop.minor;
    cc->smem_optin = prop.sharedMemPerBlockOptin;
    cc->l2_bytes = (size_t)prop.l2CacheSize;
    const char *pdl = getenv("DMOE_CUDA_PDL");
    cc->pdl = prop.major >= 9 && !(pdl && strcmp(pdl, "0") == 0);
    const char *pc = getenv("DMOE_PRINT_CONFIG");
    cc->print_config = pc && strcmp(pc, "0") != 0 && *pc;
    snprintf(cc->name, sizeof cc->name, "%s", prop.name);
    snprintf(cc->pool_name, sizeof cc->pool_name, "cuda device %d", (int)cc->device);
    cc->pool = (dmoe_pool *)dmoe__calloc(ctx, 1, sizeof *cc->pool);
    if (!cc->pool) {
        dmoe__free(ctx, cc);
        return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cuda: pool state");
    }
    dmoe_raw_allocator raw;
    raw.alloc = pool_raw_alloc;
    raw.free = pool_raw_free;
    raw.user = NULL;
    raw.name = cc->pool_name;
    dmoe_status pst = dmoe__pool_init(cc->pool, ctx, &raw);
    if (pst != DMOE_OK) {
        dmoe__free(ctx, cc->pool);
        dmoe__free(ctx, cc);
        return pst;
    }
    ctx->backend_data = cc;
    if (cc->print_config)
        fprintf(stderr, "dmoe cuda: device %d %s sm_%d%d, %d SMs, L2 %zu MB, pdl %s, sm90 gemm %s\n",
                cc->device, cc->name, cc->cc_major, cc->cc_minor, cc->num_sms, cc->l2_bytes >> 20,
                cc->pdl ? "on" : "off",
                dmoe__cuda_sm90_available(cc->cc_major, cc->cc_minor) ? "yes" : "no");
    return DMOE_OK;
}

static void cuda_context_fini(dmoe_context *ctx) {
    dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    if (cc && cc->pool && dmoe__cuda_resident_active(cc->device)) {
        /* cudaFree would wait for the resident kernel, which does not end on its own */
        fprintf(stderr, "dmoe cuda: a context was destroyed while a resident kernel occupies device %d: its "
                        "memory pool is leaked (destroy the resident kernel first)\n", (int)cc->device);
    } else if (cc && cc->pool) {
        int cur = -1;
        if (cudaGetDevice(&cur) == cudaSuccess && cur != cc->device) cudaSetDevice(cc->device);
        dmoe__pool_fini(cc->pool);
        dmoe__free(ctx, cc->pool);
        (void)cudaGetLastError();
    }
    dmoe__free(ctx, ctx->backend_data);
    ctx->backend_data = NULL;
}

/* Carves the arena: each view 256-byte aligned. With base == NULL it only counts. */
static size_t carve(cuda_layer *L, const dmoe_layer_desc *d, int num_sms, char *base) {
    const int64_t T = d->max_tokens, K = d->top_k, E = d->n_experts, H = d->hidden, F = d->ffn;
    const int64_t S = d->n_shared_experts, Fs = d->shared_ffn;
    const size_t es = dmoe_dtype_size(d->act_dtype);
    size_t off = 0;
#define DMOE_CARVE(field, type, bytes)                          \
    do {                                                        \
        if (base) L->field = (type)(void *)(base + off);        \
        off += ((size_t)(bytes) + 255) & ~(size_t)255;          \
    } while (0)
    DMOE_CARVE(logits, float *, dmoe__cuda_router_ws_floats(T, H, (int32_t)E, num_sms) * sizeof(float));
    DMOE_CARVE(counter, unsigned *, sizeof(unsigned));
    DMOE_CARVE(ids, int32_t *, T * K * sizeof(int32_t));
    DMOE_CARVE(wts, float *, T * K * sizeof(float));
    DMOE_CARVE(counts, int32_t *, E * sizeof(int32_t));
    DMOE_CARVE(offsets, int32_t *, (E + 1) * sizeof(int32_t));
    DMOE_CARVE(pairs, int32_t *, T * K * sizeof(int32_t));
    DMOE_CARVE(slot_of, int32_t *, T * K * sizeof(int32_t));
    DMOE_CARVE(plan_ws, int32_t *, dmoe__cuda_plan_ws_ints(T * K, (int32_t)E) * sizeof(int32_t));
    DMOE_CARVE(act, void *, (size_t)(T * K) * F * es);
    DMOE_CARVE(part, void *, (size_t)(T * K) * H * es);
    if (S > 0) {
        DMOE_CARVE(wts_sh, float *, T * S * sizeof(float));
        DMOE_CARVE(pairs_sh, int32_t *, T * S * sizeof(int32_t));
        DMOE_CARVE(offsets_sh, int32_t *, (S + 1) * sizeof(int32_t));
        DMOE_CARVE(act_sh, void *, (size_t)(T * S) * Fs * es);
        DMOE_CARVE(part_sh, void *, (size_t)(T * S) * H * es);
    }
#undef DMOE_CARVE
    return off;
}

static void cuda_layer_fini(dmoe_layer *layer) {
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    if (!L) return;
    /* (a layer with a miss policy has a cache, so L->misses is handled in the blocks below) */
    if ((L->arena || L->fused_ws || L->weights_dev || L->cache) &&
        dmoe__cuda_resident_active(layer->ctx->desc.device)) {
        /* cudaFree (and cudaFreeHost) would wait for the resident kernel, which does not end on its own. */
        fprintf(stderr, "dmoe cuda: a layer was destroyed while a resident kernel occupies device %d: its "
                        "device memory is leaked (destroy the resident kernel first)\n", (int)layer->ctx->desc.device);
        L->arena = L->fused_ws = L->weights_dev = NULL;
        L->cache = NULL;
        dmoe__cuda_misses_abandon(L->misses); /* host state only: its pinned and pool buffers leak too */
        L->misses = NULL;
    }
    if (L->arena || L->fused_ws || L->weights_dev || L->cache) {
        dmoe_pool *pool = dmoe__cuda_ctx(layer->ctx)->pool;
        int cur = -1;
        if (cudaGetDevice(&cur) == cudaSuccess && cur != layer->ctx->desc.device)
            cudaSetDevice(layer->ctx->desc.device);
        /* blocks go back to the pool: work still queued on them must finish first (the miss
         * policy's queued copies may still read its pinned staging buffers) */
        (void)cudaDeviceSynchronize();
        dmoe__cuda_misses_destroy(L->misses);
        L->misses = NULL;
        dmoe__cuda_cache_destroy(L->cache);
        dmoe__pool_free(pool, L->arena, L->arena_bytes);
        dmoe__pool_free(pool, L->fused_ws, L->fused_bytes);
        dmoe__pool_free(pool, L->weights_dev, L->weights_bytes);
        (void)cudaGetLastError();
    }
    dmoe__free(layer->ctx, L);
    layer->backend_data = NULL;
}

static dmoe_status cuda_layer_init(dmoe_layer *layer) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    if (d->act_dtype != d->weight_dtype ||
        (d->act_dtype != DMOE_DTYPE_BF16 && d->act_dtype != DMOE_DTYPE_F16))
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED_DTYPE,
                           "cuda: act_dtype and weight_dtype must be the same, bf16 or f16 "
                           "(got act %s, weights %s)",
                           dmoe_dtype_name(d->act_dtype), dmoe_dtype_name(d->weight_dtype));
    /* A size the other backends accept but this one does not: UNSUPPORTED, so
     * callers (dmoe check, the Python module) can fall back instead of failing. */
    if (d->hidden % 8 != 0 || d->ffn % 8 != 0 || (d->n_shared_experts > 0 && d->shared_ffn % 8 != 0))
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "cuda: hidden (%lld), ffn (%lld) and shared_ffn (%lld) must be multiples "
                           "of 8 (rows are read 16 bytes at a time)",
                           (long long)d->hidden, (long long)d->ffn,
                           (long long)(d->n_shared_experts > 0 ? d->shared_ffn : 0));
    if (d->n_experts > CUDA_MAX_EXPERTS || d->n_shared_experts > CUDA_MAX_EXPERTS)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "cuda: at most %d routed and %d shared experts (got %d and %d)",
                           CUDA_MAX_EXPERTS, CUDA_MAX_EXPERTS, (int)d->n_experts,
                           (int)d->n_shared_experts);
    if (dmoe__cuda_resident_active(ctx->desc.device))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "a resident kernel occupies device %d: create layers before it or after its destroy "
                           "(creating one synchronises with the device)", (int)ctx->desc.device);
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    cuda_layer *L = (cuda_layer *)dmoe__calloc(ctx, 1, sizeof *L);
    if (!L) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cuda: layer state");
    layer->backend_data = L;
    const size_t bytes = carve(L, d, cc->num_sms, NULL);
    st = dmoe__pool_alloc(cc->pool, bytes, &L->arena);
    if (st != DMOE_OK) {
        char why[DMOE_ERROR_LEN];
        snprintf(why, sizeof why, "%s", dmoe_context_last_error(ctx));
        L->arena = NULL;
        cuda_layer_fini(layer);
        return dmoe__error(ctx, st, "cuda: cannot allocate %.1f MB of workspace for max_tokens=%lld (%s)",
                           (double)bytes / 1048576.0, (long long)d->max_tokens, why);
    }
    L->arena_bytes = bytes;
    carve(L, d, cc->num_sms, (char *)L->arena);
    cudaError_t err = cudaMemset(L->counter, 0, sizeof(unsigned));
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        cuda_layer_fini(layer);
        return dmoe__cuda_error(ctx, err, "cudaMemset(counter)", __FILE__, __LINE__);
    }
    if (dmoe__cuda_path_request(d, &L->request) != 0) {
        cuda_layer_fini(layer);
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "DMOE_PATH=%s: expected staged, fused or auto",
                           getenv("DMOE_PATH"));
    }
    if (dmoe__cuda_path_may_fuse(d, L->request)) {
        L->fused_max_t = d->max_tokens < DMOE_FUSED_MAX_TOKENS ? d->max_tokens : DMOE_FUSED_MAX_TOKENS;
        const size_t fb = dmoe__fused_workspace_bytes(L->fused_max_t, (int32_t)d->hidden, (int32_t)d->ffn,
                                                      (int32_t)d->shared_ffn, d->n_experts, d->top_k,
                                                      d->n_shared_experts);
        st = dmoe__pool_alloc(cc->pool, fb, &L->fused_ws);
        if (st != DMOE_OK) {
            L->fused_ws = NULL;
            cuda_layer_fini(layer);
            return st;
        }
        L->fused_bytes = fb;
        err = cudaMemset(L->fused_ws, 0, fb);
        if (err == cudaSuccess) err = cudaDeviceSynchronize();
        if (err != cudaSuccess) {
            cuda_layer_fini(layer);
            return dmoe__cuda_error(ctx, err, "fused workspace", __FILE__, __LINE__);
        }
    }
    L->gemm_kind = dmoe__cuda_gemm_kind_from_env();
    L->print_config = cc->print_config;
    L->printed_tokens = -1;
    if (L->print_config)
        fprintf(stderr, "dmoe cuda: layer H=%lld F=%lld E=%d K=%d S=%d: %.1f MB workspace for %lld tokens, gemm %s, "
                "path %s (fused workspace for %lld tokens)\n",
                (long long)d->hidden, (long long)d->ffn, (int)d->n_experts, (int)d->top_k,
                (int)d->n_shared_experts, (double)bytes / 1048576.0, (long long)d->max_tokens,
                dmoe__cuda_gemm_kind_name(L->gemm_kind), dmoe_path_name(L->request),
                (long long)L->fused_max_t);
    return DMOE_OK;
}

static dmoe_status check_device_ptr(dmoe_context *ctx, const void *p, const char *name) {
    if (!p) return DMOE_OK;
    cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return dmoe__error(ctx, DMOE_ERR_WRONG_DEVICE, "weights.%s is not CUDA memory (%s)", name,
                           cudaGetErrorString(err));
    }
    const int dev = dmoe__cuda_ctx(ctx)->device;
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        return dmoe__error(ctx, DMOE_ERR_WRONG_DEVICE,
                           "weights.%s is host memory; the cuda backend needs device memory on "
                           "device %d",
                           name, dev);
    if (attr.device != dev)
        return dmoe__error(ctx, DMOE_ERR_WRONG_DEVICE, "weights.%s is on device %d, the context uses %d",
                           name, attr.device, dev);
    return DMOE_OK;
}

/* Every view but the routed experts (w13, w2) must be device memory. */
static dmoe_status check_dense_views(dmoe_context *ctx, const dmoe_weights *w) {
    dmoe_status st;
    if ((st = check_device_ptr(ctx, w->router, "router"))) return st;
    if ((st = check_device_ptr(ctx, w->correction_bias, "correction_bias"))) return st;
    if ((st = check_device_ptr(ctx, w->shared_w13, "shared_w13"))) return st;
    if ((st = check_device_ptr(ctx, w->shared_w2, "shared_w2"))) return st;
    return check_device_ptr(ctx, w->shared_gate, "shared_gate");
}

/* Calls that synchronise the whole device would wait forever for a resident
 * kernel (resident.cu) that occupies it: refused while one runs. */
static dmoe_status refuse_if_resident(dmoe_context *ctx, const char *what) {
    if (!dmoe__cuda_resident_active(ctx->desc.device)) return DMOE_OK;
    return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                       "%s synchronises device %d, which a resident kernel occupies: destroy it first", what,
                       (int)ctx->desc.device);
}

static dmoe_status cuda_layer_weights_changed(dmoe_layer *layer) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_weights *w = &layer->w;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    if (L->cache && (st = refuse_if_resident(ctx, "replacing the weights of a cached layer")) != DMOE_OK)
        return st;
    if ((st = check_dense_views(ctx, w))) return st;
    if ((st = check_device_ptr(ctx, w->w13, "w13"))) return st;
    if ((st = check_device_ptr(ctx, w->w2, "w2"))) return st;
    if (L->cache) { /* new weights: the cache's host copy is stale (dmoe.h: set_weights turns it off) */
        (void)cudaDeviceSynchronize();
        dmoe__cuda_misses_destroy(L->misses); /* and the miss policy with it */
        L->misses = NULL;
        dmoe__cuda_cache_destroy(L->cache);
        L->cache = NULL;
    }
    return DMOE_OK;
}

/* ---- weights copied from a model loader's host arena (dmoe_model_load_layer) ---- */
static dmoe_status cuda_layer_load_arena(dmoe_layer *layer, const void *arena, size_t bytes,
                                         const dmoe_weights *host, dmoe_weights *out) {
    dmoe_context *ctx = layer->ctx;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    /* the pool may free cached blocks to make room, and cudaFree waits for the device */
    if ((st = refuse_if_resident(ctx, "loading weights")) != DMOE_OK) return st;
    void *dev = NULL;
    if ((st = dmoe__pool_alloc(dmoe__cuda_ctx(ctx)->pool, bytes, &dev)) != DMOE_OK) return st;
    cudaError_t err = cudaMemcpy(dev, arena, bytes, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) {
        dmoe__pool_free(dmoe__cuda_ctx(ctx)->pool, dev, bytes);
        return dmoe__cuda_error(ctx, err, "cudaMemcpy(weights to the device)", __FILE__, __LINE__);
    }
    if (L->weights_dev) dmoe__pool_free(dmoe__cuda_ctx(ctx)->pool, L->weights_dev, L->weights_bytes);
    L->weights_dev = dev;
    L->weights_bytes = bytes;
    const char *base = (const char *)arena;
    char *d = (char *)dev;
#define DMOE_MOVE(field, type) out->field = host->field ? (type)(d + ((const char *)host->field - base)) : NULL
    DMOE_MOVE(router, const void *);
    DMOE_MOVE(w13, const void *);
    DMOE_MOVE(w2, const void *);
    DMOE_MOVE(correction_bias, const float *);
    DMOE_MOVE(shared_w13, const void *);
    DMOE_MOVE(shared_w2, const void *);
    DMOE_MOVE(shared_gate, const void *);
#undef DMOE_MOVE
    return DMOE_OK;
}

/* ---- weights with the routed experts in host memory (dmoe_layer_set_weights_offloaded) ---- */
static dmoe_status check_host_ptr(dmoe_context *ctx, const void *p, const char *name) {
    cudaPointerAttributes attr;
    cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) { /* older runtimes: plain host memory is an error here */
        (void)cudaGetLastError();
        return DMOE_OK;
    }
    if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged)
        return dmoe__error(ctx, DMOE_ERR_WRONG_DEVICE,
                           "weights.%s is device memory; an offloaded layer takes its routed experts from host "
                           "memory (dmoe_layer_set_weights takes device memory)",
                           name);
    return DMOE_OK;
}

static dmoe_status cuda_weights_offloaded(dmoe_layer *layer, const dmoe_weights *w, int32_t n_slots,
                                          dmoe_weights *out) {
    dmoe_context *ctx = layer->ctx;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    if ((st = refuse_if_resident(ctx, "setting offloaded weights")) != DMOE_OK) return st;
    if ((st = check_dense_views(ctx, w))) return st;
    if ((st = check_host_ptr(ctx, w->w13, "w13"))) return st;
    if ((st = check_host_ptr(ctx, w->w2, "w2"))) return st;
    /* the cache copies the experts into its pinned, mapped host memory (cudaMemcpyDefault) */
    dmoe_cuda_cache *fresh = NULL;
    st = dmoe__cuda_cache_create(ctx, dmoe__cuda_ctx(ctx)->pool, &layer->desc, w->w13, w->w2, n_slots, &fresh);
    if (st != DMOE_OK) return st;
    if (L->misses && (st = dmoe__cuda_misses_rebind(ctx, L->misses, fresh)) != DMOE_OK) {
        dmoe__cuda_cache_destroy(fresh);
        return st;
    }
    dmoe__cuda_cache_destroy(L->cache);
    L->cache = fresh;
    *out = *w;
    /* the layer keeps views of the cache's copy (mapped: valid on the device too) */
    dmoe__cuda_cache_host_weights(L->cache, &out->w13, &out->w2);
    return DMOE_OK;
}

/* ---- the device pool's statistics ---- */
static dmoe_status cuda_memory_stats(dmoe_context *ctx, dmoe_memory_stats *out) {
    dmoe_pool_stats s = dmoe__pool_get_stats(dmoe__cuda_ctx(ctx)->pool);
    memset(out, 0, sizeof *out);
    out->bytes_in_use = s.bytes_in_use;
    out->bytes_cached = s.bytes_cached;
    out->bytes_reserved = s.bytes_in_use + s.bytes_cached;
    out->peak_in_use = s.peak_in_use;
    out->n_allocs = s.n_allocs;
    out->n_reused = s.n_reused;
    out->n_trims = s.n_trims;
    out->n_failures = s.n_failures;
    return DMOE_OK;
}

static void cuda_memory_trim(dmoe_context *ctx) {
    /* cudaFree waits for a resident kernel on the device: then the trim does nothing */
    if (dmoe__cuda_resident_active(ctx->desc.device)) return;
    if (use_device(ctx) == DMOE_OK) dmoe__pool_trim(dmoe__cuda_ctx(ctx)->pool);
}

/* ---- the expert cache (expert-cache.cu) ---- */
static dmoe_status cuda_cache_enable(dmoe_layer *layer, int32_t n_slots, uint32_t flags) {
    (void)flags;
    dmoe_context *ctx = layer->ctx;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    if ((st = refuse_if_resident(ctx, "enabling an expert cache")) != DMOE_OK) return st;
    /* Rebuilding: the experts come from the old cache's host copy (the caller may have freed
     * weights.w13/w2 since the first enable), and the old cache goes only once the new exists. */
    const void *w13 = layer->w.w13, *w2 = layer->w.w2;
    if (L->cache) dmoe__cuda_cache_host_weights(L->cache, &w13, &w2);
    dmoe_cuda_cache *fresh = NULL;
    st = dmoe__cuda_cache_create(ctx, dmoe__cuda_ctx(ctx)->pool, &layer->desc, w13, w2, n_slots, &fresh);
    if (st != DMOE_OK) return st;
    if (L->misses && (st = dmoe__cuda_misses_rebind(ctx, L->misses, fresh)) != DMOE_OK) {
        dmoe__cuda_cache_destroy(fresh);
        return st;
    }
    if (L->cache && layer->w.w13 == w13) {
        /* an offloaded layer's views point into the old cache's host copy: move them */
        dmoe__cuda_cache_host_weights(fresh, &layer->w.w13, &layer->w.w2);
    }
    dmoe__cuda_cache_destroy(L->cache);
    L->cache = fresh;
    return DMOE_OK;
}

static dmoe_status cuda_cache_prefetch(dmoe_layer *layer, const int32_t *ids, int32_t n_ids,
                                       void *stream) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    (void)cudaGetLastError();
    return dmoe__cuda_cache_prefetch(layer->ctx, ((cuda_layer *)layer->backend_data)->cache, ids,
                                     n_ids, (cudaStream_t)stream);
}

static dmoe_status cuda_cache_stats(dmoe_layer *layer, dmoe_expert_cache_stats *out) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    if ((st = refuse_if_resident(layer->ctx, "reading the cache counters")) != DMOE_OK) return st;
    return dmoe__cuda_cache_stats(layer->ctx, ((cuda_layer *)layer->backend_data)->cache, out);
}

static dmoe_status cuda_cache_table(dmoe_layer *layer, int32_t *slot_of_expert) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    if ((st = refuse_if_resident(layer->ctx, "reading the cache table")) != DMOE_OK) return st;
    return dmoe__cuda_cache_table(layer->ctx, ((cuda_layer *)layer->backend_data)->cache, slot_of_expert);
}

static dmoe_status cuda_miss_policy(dmoe_layer *layer, dmoe_miss_policy policy, int32_t n_threads) {
    dmoe_context *ctx = layer->ctx;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_status st = use_device(ctx);
    if (st != DMOE_OK) return st;
    if ((st = refuse_if_resident(ctx, "setting the miss policy")) != DMOE_OK) return st;
    DMOE_CUDA_CHECK(ctx, cudaDeviceSynchronize()); /* forwards in flight may use the old state */
    /* the new state first: a failed call keeps the policy that was set */
    dmoe_cuda_misses *fresh = NULL;
    if (policy != DMOE_MISS_GPU &&
        (st = dmoe__cuda_misses_create(ctx, dmoe__cuda_ctx(ctx)->pool, &layer->desc, L->cache, policy, n_threads,
                                       &fresh)) != DMOE_OK)
        return st;
    dmoe__cuda_misses_destroy(L->misses);
    L->misses = fresh;
    return DMOE_OK;
}

static dmoe_status cuda_miss_info(dmoe_layer *layer, dmoe_miss_info *out) {
    dmoe__cuda_misses_info(((cuda_layer *)layer->backend_data)->misses, out);
    return DMOE_OK;
}

static int32_t cuda_cache_slots(const dmoe_layer *layer) {
    const cuda_layer *L = (const cuda_layer *)layer->backend_data;
    return L && L->cache ? dmoe__cuda_cache_n_slots(L->cache) : 0;
}

static dmoe_cuda_grouped_args grouped_args(const dmoe_cuda_context *cc, dmoe_dtype dt, int64_t T,
                                           int32_t K, int32_t E, int64_t k_dim, int64_t n_dim,
                                           const int32_t *offsets, const int32_t *pairs) {
    dmoe_cuda_grouped_args a;
    memset(&a, 0, sizeof a);
    a.n_rows = T * K;
    a.n_tokens = T;
    a.top_k = K;
    a.n_experts = E;
    a.k_dim = k_dim;
    a.n_dim = n_dim;
    a.offsets = offsets;
    a.pairs = pairs;
    a.dtype = dt;
    a.num_sms = cc->num_sms;
    return a;
}

static const char *choice_str(const dmoe_cuda_gemm_choice *c, char *buf, size_t n) {
    if (c->kind == DMOE_CUDA_GEMM_STREAM) snprintf(buf, n, "stream (%d tokens/pass)", (int)c->tile);
    else if (c->kind == DMOE_CUDA_GEMM_MMA) snprintf(buf, n, "mma (%dx128 tiles)", (int)c->tile);
    else if (c->kind == DMOE_CUDA_GEMM_SWAP) snprintf(buf, n, "sm90-swap (%d rows/item)", (int)c->tile);
    else snprintf(buf, n, "%s", dmoe__cuda_gemm_kind_name(c->kind));
    return buf;
}

/* The expert half: plan (unless the router did it), GEMMs, shared experts, combine. */
static dmoe_status run_experts(dmoe_layer *layer, const void *x, int64_t T, const int32_t *ids,
                               const float *wts, void *y, int plan_done, cudaStream_t stream) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    const dmoe_cuda_context *cc = dmoe__cuda_ctx(ctx);
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    const dmoe_dtype dt = d->act_dtype;
    const int32_t K = d->top_k, E = d->n_experts, S = d->n_shared_experts;
    dmoe_status st;
    if (!plan_done) {
        st = dmoe__cuda_plan(ctx, ids, T * K, E, L->counts, L->offsets, L->pairs, L->slot_of,
                             L->plan_ws, stream);
        if (st != DMOE_OK) return st;
    }
    dmoe_cuda_grouped_args a1 = grouped_args(cc, dt, T, K, E, d->hidden, d->ffn, L->offsets, L->pairs);
    dmoe_cuda_grouped_args a2 = grouped_args(cc, dt, T, K, E, d->ffn, d->hidden, L->offsets, L->pairs);
    dmoe_cuda_gemm_choice c = dmoe__cuda_choose_gemm(L->gemm_kind, &a1, cc->cc_major, cc->cc_minor);
    if (L->cache) {
        /* resolve the batch's experts (hits, LRU installs, pointer tables) on the device; the
         * streaming and mma.sync GEMMs then read each expert through its pointer */
        /* the decode regime (where AUTO picks swap-AB; DMOE_CUDA_GEMM=sm90-swap forces it at any
         * size): the streaming GEMM overlaps installs */
        if (c.kind == DMOE_CUDA_GEMM_SWAP && dmoe__cuda_rows_estimate(&a1) <= 64)
            c = dmoe__cuda_choose_gemm(DMOE_CUDA_GEMM_STREAM, &a1, cc->cc_major, cc->cc_minor);
        else if (c.kind != DMOE_CUDA_GEMM_STREAM && c.kind != DMOE_CUDA_GEMM_MMA)
            c = dmoe__cuda_choose_gemm(DMOE_CUDA_GEMM_MMA, &a1, cc->cc_major, cc->cc_minor);
        const int stream_gemm = c.kind == DMOE_CUDA_GEMM_STREAM;
        if ((st = dmoe__cuda_cache_resolve(ctx, L->cache, L->offsets, stream_gemm, stream))) return st;
        a1.w_ptrs = dmoe__cuda_cache_w13_ptrs(L->cache);
        a2.w_ptrs = dmoe__cuda_cache_w2_ptrs(L->cache);
        if (stream_gemm) {
            a1.w_install = dmoe__cuda_cache_w13_dst(L->cache);
            a2.w_install = dmoe__cuda_cache_w2_dst(L->cache);
            a1.w_wait = dmoe__cuda_cache_wait(L->cache); /* GEMM1 overlaps the copy kernel */
            a1.w_stall_ns = dmoe__cuda_cache_stall_counter(L->cache);
        }
    }
    if ((st = c.gemm1(ctx, &a1, x, layer->w.w13, L->act, stream))) return st;
    if ((st = c.gemm2(ctx, &a2, L->act, layer->w.w2, wts, L->part, stream))) return st;
    dmoe_cuda_gemm_choice cs;
    memset(&cs, 0, sizeof cs);
    if (S > 0) {
        st = dmoe__cuda_shared_prep(ctx, x, layer->w.shared_gate, T, d->hidden, S, dt, L->wts_sh,
                                    L->pairs_sh, L->offsets_sh, stream);
        if (st != DMOE_OK) return st;
        dmoe_cuda_grouped_args s1 =
            grouped_args(cc, dt, T, S, S, d->hidden, d->shared_ffn, L->offsets_sh, L->pairs_sh);
        dmoe_cuda_grouped_args s2 =
            grouped_args(cc, dt, T, S, S, d->shared_ffn, d->hidden, L->offsets_sh, L->pairs_sh);
        cs = dmoe__cuda_choose_gemm(L->gemm_kind, &s1, cc->cc_major, cc->cc_minor);
        if ((st = cs.gemm1(ctx, &s1, x, layer->w.shared_w13, L->act_sh, stream))) return st;
        if ((st = cs.gemm2(ctx, &s2, L->act_sh, layer->w.shared_w2, L->wts_sh, L->part_sh, stream)))
            return st;
    }
    if (L->print_config && L->printed_tokens != T) {
        char b1[64], b2[64], b3[64];
        L->printed_tokens = T;
        dmoe_cuda_router_cfg rc = dmoe__cuda_router_config(T, d->hidden, E, cc->num_sms);
        snprintf(b3, sizeof b3, "mma logits (%d k splits) + route", (int)rc.k_splits);
        fprintf(stderr,
                "dmoe cuda: T=%lld H=%lld F=%lld E=%d K=%d: router %s, plan %s, experts %s "
                "(~%lld rows/expert)%s%s\n",
                (long long)T, (long long)d->hidden, (long long)d->ffn, (int)E, (int)K,
                rc.use_mma ? b3 : (rc.fused ? "stream split-k, fused route" : "stream split-k + route"),
                plan_done ? "fused in router" : dmoe__cuda_plan_kind(ctx, T * K, E),
                choice_str(&c, b1, sizeof b1), (long long)dmoe__cuda_rows_estimate(&a1),
                S > 0 ? ", shared " : "", S > 0 ? choice_str(&cs, b2, sizeof b2) : "");
    }
    return dmoe__cuda_combine(ctx, L->part, L->slot_of, T, K, S > 0 ? L->part_sh : NULL, S, d->hidden,
                              dt, y, stream);
}

/* The fused kernel's arguments for layer (shapes, routing, weights); the
 * caller sets the per-call fields (tokens, x, y, ids, weights, workspace). */
extern "C" void dmoe__cuda_fused_args_init(const dmoe_layer *layer, dmoe_fused_args *out) {
    const dmoe_layer_desc *d = &layer->desc;
    dmoe_fused_args a;
    memset(&a, 0, sizeof a);
    a.hidden = (int32_t)d->hidden;
    a.ffn = (int32_t)d->ffn;
    a.n_experts = d->n_experts;
    a.top_k = d->top_k;
    a.n_shared = d->n_shared_experts;
    a.shared_ffn = d->n_shared_experts > 0 ? (int32_t)d->shared_ffn : 0; /* as the workspace is sized */
    a.shared_gate = d->shared_gate == DMOE_SHARED_GATE_SIGMOID;
    a.scoring = d->routing.scoring;
    a.renormalize = d->routing.renormalize;
    a.n_group = d->routing.n_group;
    a.topk_group = d->routing.topk_group;
    a.use_bias = d->routing.use_correction_bias;
    a.scale = d->routing.routed_scaling_factor;
    a.is_bf16 = d->act_dtype == DMOE_DTYPE_BF16;
    a.router = layer->w.router;
    a.bias = layer->w.correction_bias;
    a.w13 = layer->w.w13;
    a.w2 = layer->w.w2;
    a.shared_w13 = layer->w.shared_w13;
    a.shared_w2 = layer->w.shared_w2;
    a.shared_gate_w = layer->w.shared_gate;
    *out = a;
}

/* The whole forward (route_from_ids = 0) or the expert half with the caller's
 * routing (1) in one launch of the fused kernel. */
static dmoe_status run_fused(dmoe_layer *layer, const void *x, int64_t T, int32_t *ids, float *wts,
                             int route_from_ids, void *y, cudaStream_t stream) {
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_fused_args a;
    dmoe__cuda_fused_args_init(layer, &a);
    a.n_tokens = (int32_t)T;
    a.route_from_ids = route_from_ids;
    a.x = x;
    a.y = y;
    a.topk_ids = ids;
    a.topk_w = wts;
    a.ws = L->fused_ws;
    return dmoe__fused_forward(layer->ctx, &a, dmoe__cuda_ctx(layer->ctx)->num_sms, stream);
}

/* The path of a forward of T tokens; prints it (and why) once per new T. */
/* 1 when a fused forward of T tokens needs more shared memory per block than
 * the device offers (large E, K or S at larger T): it then runs staged. */
static int fused_smem_too_big(const dmoe_layer *layer, int64_t T) {
    const dmoe_layer_desc *d = &layer->desc;
    return dmoe__fused_smem_bytes((int32_t)T, d->n_experts, d->top_k, d->n_shared_experts) >
           dmoe__fused_smem_limit(dmoe__cuda_ctx(layer->ctx)->device);
}

static dmoe_path layer_path(const dmoe_layer *layer, int64_t T) {
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    char why[256];
    dmoe_path p = dmoe__cuda_choose_path(&layer->desc, L->request, T, why, sizeof why);
    if (p == DMOE_PATH_FUSED && T > L->fused_max_t) p = DMOE_PATH_STAGED; /* not reached: ws sized for it */
    if (p == DMOE_PATH_FUSED && L->cache) { /* the fused kernel reads w13/w2 at fixed strides */
        p = DMOE_PATH_STAGED;
        snprintf(why, sizeof why, "staged: the layer has an expert cache (the fused kernel cannot read through it)");
    }
    if (p == DMOE_PATH_FUSED && fused_smem_too_big(layer, T)) {
        p = DMOE_PATH_STAGED;
        snprintf(why, sizeof why, "staged: the fused kernel would need more shared memory per block than the device has");
    }
    if (L->print_config && L->printed_tokens != T) {
        if (p == DMOE_PATH_FUSED) L->printed_tokens = T; /* the staged print marks it itself */
        fprintf(stderr, "dmoe cuda: T=%lld: path %s\n", (long long)T, why);
    }
    return p;
}

static int fused_fits(const dmoe_layer *layer, int64_t T) { return layer_path(layer, T) == DMOE_PATH_FUSED; }

static dmoe_status cuda_query_path(const dmoe_layer *layer, int64_t n_tokens, dmoe_path *out) {
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_path p = dmoe__cuda_choose_path(&layer->desc, L->request, n_tokens, NULL, 0);
    if (p == DMOE_PATH_FUSED && (n_tokens > L->fused_max_t || L->cache || fused_smem_too_big(layer, n_tokens)))
        p = DMOE_PATH_STAGED;
    *out = p;
    return DMOE_OK;
}

static dmoe_cuda_router_args router_args(dmoe_layer *layer, const void *x, int64_t T,
                                         int32_t *ids, float *wts) {
    const dmoe_layer_desc *d = &layer->desc;
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    dmoe_cuda_router_args r;
    memset(&r, 0, sizeof r);
    r.x = x;
    r.weight = layer->w.router;
    r.bias = layer->w.correction_bias;
    r.n_tokens = T;
    r.hidden = d->hidden;
    r.n_experts = d->n_experts;
    r.top_k = d->top_k;
    r.routing = d->routing;
    r.dtype = d->act_dtype;
    r.logits_ws = L->logits;
    r.counter = L->counter;
    r.topk_ids = ids;
    r.topk_w = wts;
    return r;
}

static dmoe_status cuda_route(dmoe_layer *layer, const void *x, int64_t n_tokens, int32_t *topk_ids,
                              float *topk_weights, void *stream) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    (void)cudaGetLastError();
    dmoe_cuda_router_args r = router_args(layer, x, n_tokens, topk_ids, topk_weights);
    int plan_done = 0;
    return dmoe__cuda_router(layer->ctx, &r, &plan_done, (cudaStream_t)stream);
}

/* The GPU half of a miss-policy forward (cpu-misses.cu): the staged experts on caller ids. */
static dmoe_status gpu_experts(dmoe_layer *layer, const void *x, int64_t n_tokens, const int32_t *ids,
                               const float *wts, void *y, cudaStream_t stream) {
    return run_experts(layer, x, n_tokens, ids, wts, y, 0, stream);
}

/* Whether a forward of n_tokens goes through the miss policy. That reads back to the host; while
 * a resident kernel occupies the device the forward's kernels queue behind it and the read would
 * wait for them without bound (dmoe.h): such forwards run as DMOE_MISS_GPU (queued, asynchronous). */
static int misses_take(const dmoe_layer *layer, int64_t n_tokens) {
    const cuda_layer *L = (const cuda_layer *)layer->backend_data;
    return dmoe__cuda_misses_take(L->misses, n_tokens) && !dmoe__cuda_resident_active(layer->ctx->desc.device);
}

static dmoe_status cuda_experts(dmoe_layer *layer, const void *x, int64_t n_tokens,
                                const int32_t *topk_ids, const float *topk_weights, void *y,
                                void *stream) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    (void)cudaGetLastError();
    if (fused_fits(layer, n_tokens))
        return run_fused(layer, x, n_tokens, (int32_t *)topk_ids, (float *)topk_weights, 1, y, (cudaStream_t)stream);
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    if (misses_take(layer, n_tokens))
        return dmoe__cuda_misses_experts(layer, L->misses, L->cache, x, n_tokens, topk_ids, topk_weights, y,
                                         (cudaStream_t)stream, gpu_experts);
    return run_experts(layer, x, n_tokens, topk_ids, topk_weights, y, 0, (cudaStream_t)stream);
}

static dmoe_status cuda_forward(dmoe_layer *layer, const void *x, int64_t n_tokens, void *y,
                                void *stream) {
    dmoe_status st = use_device(layer->ctx);
    if (st != DMOE_OK) return st;
    (void)cudaGetLastError();
    cuda_layer *L = (cuda_layer *)layer->backend_data;
    if (fused_fits(layer, n_tokens)) return run_fused(layer, x, n_tokens, L->ids, L->wts, 0, y, (cudaStream_t)stream);
    dmoe_cuda_router_args r = router_args(layer, x, n_tokens, L->ids, L->wts);
    r.counts = L->counts;
    r.offsets = L->offsets;
    r.pairs = L->pairs;
    r.slot_of = L->slot_of;
    int plan_done = 0;
    const int misses = misses_take(layer, n_tokens);
    if (misses) { /* routing only (the plan is of the masked ids), on a stream that does not capture */
        if ((st = dmoe__cuda_misses_check_stream(layer->ctx, (cudaStream_t)stream)) != DMOE_OK) return st;
        r.counts = r.offsets = r.pairs = r.slot_of = NULL;
    }
    st = dmoe__cuda_router(layer->ctx, &r, &plan_done, (cudaStream_t)stream);
    if (st != DMOE_OK) return st;
    if (misses)
        return dmoe__cuda_misses_experts(layer, L->misses, L->cache, x, n_tokens, L->ids, L->wts, y,
                                         (cudaStream_t)stream, gpu_experts);
    return run_experts(layer, x, n_tokens, L->ids, L->wts, y, plan_done, (cudaStream_t)stream);
}

/* The table's entries that may touch device memory or synchronise run inside the device's resident
 * gate (resident.h): shared here, exclusive while dmoe_resident_create checks and launches. */
#define GATED(ret, name, params, dev, args)                   \
    static ret gated_##name params {                          \
        const int device_ = (dev);                            \
        dmoe__cuda_device_enter(device_);                     \
        ret r_ = name args;                                   \
        dmoe__cuda_device_leave(device_);                     \
        return r_;                                            \
    }
#define GATED_VOID(name, params, dev, args) \
    static void gated_##name params {       \
        const int device_ = (dev);          \
        dmoe__cuda_device_enter(device_);   \
        name args;                          \
        dmoe__cuda_device_leave(device_);   \
    }
GATED(dmoe_status, cuda_context_init, (dmoe_context * ctx), ctx->desc.device, (ctx))
GATED_VOID(cuda_context_fini, (dmoe_context * ctx), ctx->desc.device, (ctx))
GATED(dmoe_status, cuda_layer_init, (dmoe_layer * l), l->ctx->desc.device, (l))
GATED_VOID(cuda_layer_fini, (dmoe_layer * l), l->ctx->desc.device, (l))
GATED(dmoe_status, cuda_layer_weights_changed, (dmoe_layer * l), l->ctx->desc.device, (l))
GATED(dmoe_status, cuda_route,
      (dmoe_layer * l, const void *x, int64_t n, int32_t *ids, float *w, void *stream), l->ctx->desc.device,
      (l, x, n, ids, w, stream))
GATED(dmoe_status, cuda_experts,
      (dmoe_layer * l, const void *x, int64_t n, const int32_t *ids, const float *w, void *y, void *stream),
      l->ctx->desc.device, (l, x, n, ids, w, y, stream))
GATED(dmoe_status, cuda_forward, (dmoe_layer * l, const void *x, int64_t n, void *y, void *stream),
      l->ctx->desc.device, (l, x, n, y, stream))
GATED(dmoe_status, cuda_layer_load_arena,
      (dmoe_layer * l, const void *arena, size_t bytes, const dmoe_weights *host, dmoe_weights *out),
      l->ctx->desc.device, (l, arena, bytes, host, out))
GATED(dmoe_status, cuda_weights_offloaded, (dmoe_layer * l, const dmoe_weights *w, int32_t n, dmoe_weights *out),
      l->ctx->desc.device, (l, w, n, out))
GATED_VOID(cuda_memory_trim, (dmoe_context * ctx), ctx->desc.device, (ctx))
GATED(dmoe_status, cuda_cache_enable, (dmoe_layer * l, int32_t n, uint32_t flags), l->ctx->desc.device,
      (l, n, flags))
GATED(dmoe_status, cuda_cache_prefetch, (dmoe_layer * l, const int32_t *ids, int32_t n, void *stream),
      l->ctx->desc.device, (l, ids, n, stream))
GATED(dmoe_status, cuda_cache_stats, (dmoe_layer * l, dmoe_expert_cache_stats *out), l->ctx->desc.device, (l, out))
GATED(dmoe_status, cuda_cache_table, (dmoe_layer * l, int32_t *slot_of_expert), l->ctx->desc.device,
      (l, slot_of_expert))
GATED(dmoe_status, cuda_miss_policy, (dmoe_layer * l, dmoe_miss_policy p, int32_t n), l->ctx->desc.device, (l, p, n))
#undef GATED
#undef GATED_VOID

extern "C" const dmoe_backend_iface dmoe__backend_cuda = {
    /* .name                  = */ "cuda",
    /* .weight_align          = */ 16,
    /* .max_top_k             = */ 32,
    /* .available             = */ cuda_available,
    /* .context_init          = */ gated_cuda_context_init,
    /* .context_fini          = */ gated_cuda_context_fini,
    /* .layer_init            = */ gated_cuda_layer_init,
    /* .layer_fini            = */ gated_cuda_layer_fini,
    /* .layer_weights_changed = */ gated_cuda_layer_weights_changed,
    /* .route                 = */ gated_cuda_route,
    /* .experts               = */ gated_cuda_experts,
    /* .forward               = */ gated_cuda_forward,
    /* .query_path            = */ cuda_query_path,
    /* .resident              = */ &dmoe__cuda_resident_iface,
    /* .layer_load_arena      = */ gated_cuda_layer_load_arena,
    /* .weights_offloaded     = */ gated_cuda_weights_offloaded,
    /* .memory_stats          = */ cuda_memory_stats,
    /* .memory_trim           = */ gated_cuda_memory_trim,
    /* .cache_enable          = */ gated_cuda_cache_enable,
    /* .cache_prefetch        = */ gated_cuda_cache_prefetch,
    /* .cache_stats           = */ gated_cuda_cache_stats,
    /* .cache_table           = */ gated_cuda_cache_table,
    /* .cache_slots           = */ cuda_cache_slots,
    /* .miss_policy           = */ gated_cuda_miss_policy,
    /* .miss_info             = */ cuda_miss_info,
};
