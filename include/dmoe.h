/*
 * dmoe.h: the public C API of dmoe, a Mixture-of-Experts layer engine.
 *
 * One forward of an MoE layer, as data:
 *
 *   x (T, H) --route--> topk_ids (T, K) int32, topk_weights (T, K) float32
 *            --experts-> y (T, H) = sum_k w[t,k] * FFN_{ids[t,k]}(x[t]) (+ shared experts)
 *
 * where FFN_e(x) = W2_e @ (silu(W1_e @ x) * (W3_e @ x)) (SwiGLU).
 *
 * Weights use the Hugging Face / vLLM layout, row-major, all in the layer's
 * weight dtype:
 *   router       (E, H)
 *   w13          (E, 2F, H)    gate rows (W1) first, then up rows (W3)
 *   w2           (E, H, F)
 *   shared_w13   (S, 2Fs, H)   optional shared experts (S = n_shared_experts)
 *   shared_w2    (S, H, Fs)
 *   shared_gate  (1, H)        optional Qwen2-MoE style sigmoid gate of the shared output
 *   correction_bias (E) float32, optional, used for expert selection only (DeepSeek-V3)
 *
 * Objects are opaque handles. Every fallible call returns a dmoe_status
 * (0 = ok, negative = error); dmoe_context_last_error() gives a detailed
 * message for the last failure. A failed call leaves its outputs untouched.
 *
 * Routing rules (identical on every backend):
 *  - scores = softmax(logits) over all E experts, or sigmoid(logits);
 *  - choice = scores + correction_bias (if given), used only to pick experts;
 *  - grouped top-k (n_group > 1): experts form n_group equal groups; a group's
 *    score is the sum of its top-2 choice values (top-1 if a group has one
 *    expert); the topk_group best groups are kept, the rest are masked out;
 *  - top-k over choice; ties resolve to the LOWER expert index (also among groups);
 *  - weight = score of the picked expert (without bias); if renormalize, weights
 *    are divided by their sum (left as they are when that sum is 0);
 *    then multiplied by routed_scaling_factor.
 *  - Non-finite logits have defined behaviour: NaN counts as the lowest possible
 *    logit (-FLT_MAX), +inf/-inf are clamped to +FLT_MAX/-FLT_MAX. So a token
 *    whose logits are all NaN is routed to experts 0..K-1 with equal weights.
 *    correction_bias entries are taken the same way (NaN as -FLT_MAX, +-inf as
 *    +-FLT_MAX): an expert whose bias is NaN or -inf ranks below every expert
 *    with a finite bias (among themselves, the lower index first).
 */
#ifndef DMOE_H
#define DMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMOE_VERSION_MAJOR 0
#define DMOE_VERSION_MINOR 1
#define DMOE_VERSION_PATCH 0

#if defined(_WIN32) && defined(DMOE_SHARED_BUILD)
#define DMOE_API __declspec(dllexport)
#elif defined(__GNUC__)
#define DMOE_API __attribute__((visibility("default")))
#else
#define DMOE_API
#endif

/* Limits. Backends may document tighter ones (the CUDA backend: K <= 32,
 * E and S <= 1024, H, F and Fs multiples of 8, bf16 or f16; its fused kernel
 * also needs its shared memory per block to fit the device, else the forward
 * runs staged). */
#define DMOE_MAX_EXPERTS 4096       /* E and S */
#define DMOE_MAX_DIM (1 << 20)      /* H and F */
#define DMOE_MAX_TOKENS (1 << 24)   /* max_tokens */

/* ---- status codes: one X-macro list gives the enum and the strings ---- */
#define DMOE_STATUS_LIST(X)                                                              \
    X(DMOE_OK, 0, "ok")                                                                  \
    X(DMOE_ERR_NULL_POINTER, -1, "a required pointer is NULL")                           \
    X(DMOE_ERR_INVALID_ARGUMENT, -2, "invalid argument")                                 \
    X(DMOE_ERR_BAD_SHAPE, -3, "tensor shape does not match the layer")                   \
    X(DMOE_ERR_UNSUPPORTED_DTYPE, -4, "dtype not supported here")                        \
    X(DMOE_ERR_DTYPE_MISMATCH, -5, "tensor dtype does not match the layer")              \
    X(DMOE_ERR_MISALIGNED, -6, "pointer is not aligned as required")                     \
    X(DMOE_ERR_OUT_OF_MEMORY, -7, "out of memory")                                       \
    X(DMOE_ERR_BACKEND_UNAVAILABLE, -8, "backend not available in this build or machine") \
    X(DMOE_ERR_NO_WEIGHTS, -9, "layer has no weights set")                               \
    X(DMOE_ERR_TOO_MANY_TOKENS, -10, "token count exceeds the layer's max_tokens")       \
    X(DMOE_ERR_WRONG_DEVICE, -11, "tensor lives on the wrong device")                    \
    X(DMOE_ERR_CUDA, -12, "CUDA error")                                                  \
    X(DMOE_ERR_IO, -13, "I/O error")                                                     \
    X(DMOE_ERR_CORRUPT_FILE, -14, "file is corrupt or inconsistent")                     \
    X(DMOE_ERR_UNSUPPORTED, -15, "operation not supported by this backend")              \
    X(DMOE_ERR_THREAD, -16, "could not start worker threads")                            \
    X(DMOE_ERR_INTERNAL, -17, "internal error")                                         \
    X(DMOE_ERR_TIMEOUT, -18, "timed out: the device did not finish within the timeout")

typedef enum dmoe_status {
#define DMOE_X_ENUM(name, value, text) name = value,
    DMOE_STATUS_LIST(DMOE_X_ENUM)
#undef DMOE_X_ENUM
} dmoe_status;

/* A short static description of a status ("unknown status" for others). */
DMOE_API const char *dmoe_status_str(dmoe_status status);
/* The symbolic name of a status ("DMOE_ERR_BAD_SHAPE"). */
DMOE_API const char *dmoe_status_name(dmoe_status status);
/* "0.1.0 (cuda: yes|no)" */
DMOE_API const char *dmoe_version_string(void);

/* ---- dtypes and tensors ---- */
typedef enum dmoe_dtype {
    DMOE_DTYPE_F32 = 0,
    DMOE_DTYPE_BF16 = 1,
    DMOE_DTYPE_F16 = 2,
    DMOE_DTYPE_I32 = 3,
} dmoe_dtype;

DMOE_API size_t dmoe_dtype_size(dmoe_dtype dtype);  /* 0 for unknown */
DMOE_API const char *dmoe_dtype_name(dmoe_dtype dtype); /* "f32", "bf16", "f16", "i32" */

#define DMOE_DEVICE_HOST (-1)

/* A view of caller memory: contiguous, row-major. */
typedef struct dmoe_tensor {
    void *data;
    dmoe_dtype dtype;
    int32_t n_dims;     /* 1..4 */
    int64_t shape[4];   /* shape[0] is the slowest dimension */
    int32_t device;     /* DMOE_DEVICE_HOST or a CUDA device ordinal */
} dmoe_tensor;

/* Convenience: a host or device view of a 2-D contiguous array. */
DMOE_API dmoe_tensor dmoe_tensor_2d(void *data, dmoe_dtype dtype, int64_t rows, int64_t cols,
                                    int32_t device);

/* ---- backends and contexts ---- */
typedef enum dmoe_backend {
    DMOE_BACKEND_CPU_REF = 0, /* plain reference, float64 accumulation: the oracle */
    DMOE_BACKEND_CPU = 1,     /* threaded, SIMD (AVX-512 BF16 / AVX2 / C), runtime dispatch */
    DMOE_BACKEND_CUDA = 2,    /* NVIDIA GPUs (Hopper kernels on sm_90) */
    DMOE_BACKEND_COUNT
} dmoe_backend;

DMOE_API const char *dmoe_backend_name(dmoe_backend backend); /* "cpu-ref", "cpu", "cuda" */
/* Parses a name; returns DMOE_ERR_INVALID_ARGUMENT for unknown names. */
DMOE_API dmoe_status dmoe_backend_from_name(const char *name, dmoe_backend *out);
/* 1 if the backend is compiled in and usable on this machine (CUDA: a device exists). */
DMOE_API int dmoe_backend_available(dmoe_backend backend);

/* Host memory allocator used for every host allocation dmoe makes. alloc must
 * return memory aligned to `align` (a power of two <= 4096) or NULL. */
typedef struct dmoe_allocator {
    void *(*alloc)(void *user, size_t size, size_t align);
    void (*free)(void *user, void *ptr);
    void *user;
} dmoe_allocator;

typedef struct dmoe_context_desc {
    dmoe_backend backend;
    int32_t n_threads;               /* cpu: worker threads; 0 = all online cores */
    int32_t device;                  /* cuda: device ordinal */
    const dmoe_allocator *allocator; /* NULL = the C library's aligned allocator */
} dmoe_context_desc;

typedef struct dmoe_context dmoe_context;

/* Fills *desc with defaults: backend cpu, all cores, device 0, default allocator. */
DMOE_API void dmoe_context_desc_init(dmoe_context_desc *desc);
/* Creates a context. On failure *out is untouched and the message is available
 * from dmoe_context_last_error(NULL) (per thread). */
DMOE_API dmoe_status dmoe_context_create(const dmoe_context_desc *desc, dmoe_context **out);
/* Destroys a context; NULL is a no-op. All its layers must be destroyed first. */
DMOE_API void dmoe_context_destroy(dmoe_context *ctx);
/* The message of the calling thread's last failure on ctx ("" if none): layers of
 * one context used from several threads each read their own thread's message.
 * With ctx == NULL, the calling thread's last failure of a call that had no
 * context. The text stays valid until this thread's next dmoe call. */
DMOE_API const char *dmoe_context_last_error(const dmoe_context *ctx);
/* Worker threads in use (cpu), 1 otherwise. */
DMOE_API int32_t dmoe_context_n_threads(const dmoe_context *ctx);
DMOE_API dmoe_backend dmoe_context_backend(const dmoe_context *ctx);

/* ---- layers ---- */
typedef enum dmoe_scoring {
    DMOE_SCORING_SOFTMAX = 0,
    DMOE_SCORING_SIGMOID = 1,
} dmoe_scoring;

typedef enum dmoe_shared_gate {
    DMOE_SHARED_GATE_NONE = 0,    /* shared experts added as they are (DeepSeek) */
    DMOE_SHARED_GATE_SIGMOID = 1, /* multiplied by sigmoid(shared_gate . x) (Qwen2-MoE) */
} dmoe_shared_gate;

typedef struct dmoe_routing_desc {
    dmoe_scoring scoring;
    int32_t renormalize;           /* 1: divide the top-k weights by their sum */
    int32_t n_group;               /* 0 or 1: no grouping; else must divide E */
    int32_t topk_group;            /* groups kept when n_group > 1 */
    float routed_scaling_factor;   /* multiplies the final weights (finite, > 0) */
    int32_t use_correction_bias;   /* 1: weights carry correction_bias (E) float32 */
} dmoe_routing_desc;

/* Which CUDA implementation runs a forward (host backends have one and ignore it). */
typedef enum dmoe_path {
    DMOE_PATH_AUTO = 0,   /* the backend's heuristic picks per token count (default) */
    DMOE_PATH_STAGED = 1, /* separate kernels: router, plan, grouped GEMMs, combine */
    DMOE_PATH_FUSED = 2,  /* the fused persistent kernel (small T; larger T runs staged) */
} dmoe_path;

DMOE_API const char *dmoe_path_name(dmoe_path path); /* "auto", "staged", "fused" */

typedef struct dmoe_layer_desc {
    int64_t hidden;              /* H */
    int64_t ffn;                 /* F, per routed expert */
    int32_t n_experts;           /* E */
    int32_t top_k;               /* K, 1 <= K <= E */
    int32_t n_shared_experts;    /* S, 0 = none */
    int64_t shared_ffn;          /* Fs, per shared expert (required when S > 0) */
    dmoe_shared_gate shared_gate;
    dmoe_routing_desc routing;
    dmoe_dtype act_dtype;        /* x and y: f32, bf16 or f16 */
    dmoe_dtype weight_dtype;     /* every matrix: f32, bf16 or f16 */
    int64_t max_tokens;          /* largest T a call may pass; workspace is sized for it */
    dmoe_path path;              /* cuda: AUTO, STAGED or FUSED; the environment variable
                                  * DMOE_PATH=staged|fused|auto overrides it (experiments) */
} dmoe_layer_desc;

typedef struct dmoe_layer dmoe_layer;

/* Defaults: softmax, renormalize on, no groups, scaling 1, no bias, no shared
 * experts, bf16 activations and weights, max_tokens 8192, path AUTO; the sizes
 * are 0 and must be set. */
DMOE_API void dmoe_layer_desc_init(dmoe_layer_desc *desc);
/* Validates desc and allocates the layer's workspace. */
DMOE_API dmoe_status dmoe_layer_create(dmoe_context *ctx, const dmoe_layer_desc *desc,
                                       dmoe_layer **out);
DMOE_API void dmoe_layer_destroy(dmoe_layer *layer); /* NULL is a no-op */
DMOE_API const dmoe_layer_desc *dmoe_layer_get_desc(const dmoe_layer *layer);
/* The path a forward of n_tokens tokens runs on this layer (after DMOE_PATH and
 * the heuristic): STAGED or FUSED, never AUTO. Host backends have one path and
 * answer DMOE_ERR_UNSUPPORTED. n_tokens in [1, max_tokens]. */
DMOE_API dmoe_status dmoe_layer_query_path(const dmoe_layer *layer, int64_t n_tokens, dmoe_path *out);

/* Weight views: zero copy, the caller keeps the memory alive while the layer
 * uses it. Pointers must be aligned to the element size (cpu backends) or to
 * 16 bytes (cuda), and live on the context's device. */
typedef struct dmoe_weights {
    const void *router;          /* (E, H) */
    const void *w13;             /* (E, 2F, H) */
    const void *w2;              /* (E, H, F) */
    const float *correction_bias; /* (E) float32; required iff routing.use_correction_bias */
    const void *shared_w13;      /* (S, 2Fs, H); required iff S > 0 */
    const void *shared_w2;       /* (S, H, Fs); required iff S > 0 */
    const void *shared_gate;     /* (1, H); required iff shared_gate == SIGMOID */
} dmoe_weights;

DMOE_API dmoe_status dmoe_layer_set_weights(dmoe_layer *layer, const dmoe_weights *weights);

/* y (T, H) = MoE(x (T, H)). x and y in act_dtype, 1 <= T <= max_tokens, and
 * they must not overlap. stream is a cudaStream_t for the cuda backend (NULL =
 * the default stream) and ignored elsewhere; cuda calls are asynchronous. */
DMOE_API dmoe_status dmoe_forward(dmoe_layer *layer, const dmoe_tensor *x, dmoe_tensor *y,
                                  void *stream);

/* The routing half: topk_ids (T, K) int32, topk_weights (T, K) float32.
 * On the cuda backend, on a stream the caller created, the kernels may use
 * programmatic dependent launch: a kernel of the caller's launched after it
 * with that attribute must execute griddepcontrol.wait (cudaGridDependencySynchronize)
 * before it reads the outputs; kernels launched without it need nothing. */
DMOE_API dmoe_status dmoe_route(dmoe_layer *layer, const dmoe_tensor *x, dmoe_tensor *topk_ids,
                                dmoe_tensor *topk_weights, void *stream);

/* The expert half with caller-supplied routing: y = sum_k w[t,k] FFN_ids[t,k](x[t])
 * plus the shared experts. On cpu backends ids out of [0, E) are rejected with
 * DMOE_ERR_INVALID_ARGUMENT; the cuda backend cannot check without a host
 * synchronisation and skips such pairs (they contribute nothing). */
DMOE_API dmoe_status dmoe_experts(dmoe_layer *layer, const dmoe_tensor *x,
                                  const dmoe_tensor *topk_ids, const dmoe_tensor *topk_weights,
                                  dmoe_tensor *y, void *stream);

/* ---- device memory (cuda) ----
 * The cuda backend takes its device memory (layer workspaces, weight
 * copies made by dmoe_model_load_layer, expert-cache slots; not the resident
 * mode's buffers, which are allocated directly) from one pool per
 * context, with size classes (four per power of two, at most 25% rounding
 * loss). Freed blocks stay cached for the next request of their class; when
 * cudaMalloc fails the pool gives its cached blocks back (a trim) and retries
 * once, then the call fails with DMOE_ERR_OUT_OF_MEMORY and a message with the
 * pool's numbers. Host backends have no pool: their statistics are all zero. */
typedef struct dmoe_memory_stats {
    size_t bytes_in_use;     /* handed out (rounded up to size classes) */
    size_t bytes_cached;     /* freed, held for reuse */
    size_t bytes_reserved;   /* in use + cached: what the pool holds from the device */
    size_t peak_in_use;      /* largest bytes_in_use seen */
    uint64_t n_allocs;       /* requests served */
    uint64_t n_reused;       /* of which served from the cache */
    uint64_t n_trims;        /* times the cache was given back after a failed cudaMalloc */
    uint64_t n_failures;     /* requests that failed even after the trim */
} dmoe_memory_stats;

DMOE_API dmoe_status dmoe_context_memory_stats(dmoe_context *ctx, dmoe_memory_stats *out);
/* Gives every cached (freed) block back to the device. While a resident kernel
 * occupies the device it does nothing (freeing would wait for that kernel). */
DMOE_API dmoe_status dmoe_context_trim_memory(dmoe_context *ctx);

/* ---- GPU expert cache (cuda) ----
 * For layers whose routed experts do not all fit in GPU memory. Enabling the
 * cache copies the routed experts (w13, w2) of the layer's current weights
 * into pinned, mapped host memory owned by dmoe; from then on the layer never
 * reads the weights.w13 / weights.w2 views again (the caller may free them).
 * n_slots device slots hold one expert each (its w13 and w2 rows). The slot
 * table (expert -> slot, slot -> expert, last-use stamps) lives on the device:
 * after the plan of each forward, one small kernel resolves every expert the
 * batch uses: a resident one is a hit; a missing one takes the least recently
 * used slot that this batch does not use (empty slots first, then the oldest
 * stamp, ties to the lower slot), evicting its expert, and the expert is
 * streamed from mapped host memory into the slot by a copy kernel
 * (zero-copy over PCIe, no host round trip) while the decode GEMM already
 * works on the resident experts (programmatic dependent launch);
 * if the batch needs more distinct experts than there are
 * slots, the rest are read by the GEMMs straight from host memory (counted as
 * direct reads). Misses are resolved in ascending expert order. The GEMMs read
 * weights through a per-expert pointer table, so the forward stays
 * asynchronous and can be captured in a CUDA graph. Cached layers run the
 * staged path with the streaming / mma.sync GEMMs.
 * Calling dmoe_layer_set_weights later turns the cache off; enabling it again
 * rebuilds it from its own host copy. A layer loaded by dmoe_model_load_layer
 * keeps its full device copy of the weights next to the cache (the cache then
 * adds memory instead of saving it): for models whose experts do not fit, use
 * dmoe_model_load_layer_offloaded or dmoe_layer_set_weights_offloaded. While a resident kernel occupies the
 * device, the cache calls that synchronise it (enable, stats, table) are
 * refused. Host backends return DMOE_ERR_UNSUPPORTED. */
#define DMOE_EXPERT_CACHE_FLAGS_NONE 0u

typedef struct dmoe_expert_cache_stats {
    int32_t n_slots;
    int32_t n_resident;        /* slots holding an expert */
    size_t expert_bytes;       /* bytes of one expert (w13 + w2) */
    uint64_t hits;             /* (forward, expert) pairs found resident */
    uint64_t misses;           /* (forward, expert) pairs not resident */
    uint64_t installs;         /* misses copied into a slot */
    uint64_t evictions;        /* installs (forward or prefetch) that replaced an expert */
    uint64_t direct_reads;     /* misses read by the GEMMs from host memory (no free slot) */
    uint64_t prefetch_installs; /* experts copied in by dmoe_layer_prefetch_experts */
    uint64_t bytes_h2d;        /* bytes read over PCIe: installs, prefetches and direct reads */
    uint64_t stall_ns;         /* time the expert GEMM sat idle waiting for installs to land:
                                * per forward, the mean over the GEMM's blocks of their wait
                                * for the install copy, summed over forwards (device clock,
                                * ns). Direct reads and DMOE_CACHE_INSTALL=stream installs are
                                * done by the GEMM itself and show up in its run time instead. */
} dmoe_expert_cache_stats;

/* n_slots in [1, E]; flags must be DMOE_EXPERT_CACHE_FLAGS_NONE. Weights must be
 * set. Calling it again rebuilds the cache (empty, counters zero). Synchronises
 * the device. */
DMOE_API dmoe_status dmoe_layer_enable_expert_cache(dmoe_layer *layer, int32_t n_slots,
                                                    uint32_t flags);
/* Enqueues on stream: every listed expert (host array of n_ids ids in [0, E),
 * n_ids <= n_slots, no duplicates) not yet resident is copied into a slot
 * (least recently used first, never evicting another listed expert) and the
 * table is updated in stream order; listed experts count as just used. The
 * prefetch touches the layer's table like a forward: order it with the layer's
 * forwards (same stream, or events), as with any two calls on one layer. */
DMOE_API dmoe_status dmoe_layer_prefetch_experts(dmoe_layer *layer, const int32_t *expert_ids,
                                                 int32_t n_ids, void *stream);
/* Counters since the cache was enabled. Synchronises the device. */
DMOE_API dmoe_status dmoe_layer_expert_cache_stats(dmoe_layer *layer, dmoe_expert_cache_stats *out);
/* slot_of_expert (E) host array: the slot of each expert, -1 when not resident.
 * Synchronises the device. */
DMOE_API dmoe_status dmoe_layer_expert_cache_table(dmoe_layer *layer, int32_t *slot_of_expert);
/* Sets weights whose routed experts (w13, w2) are HOST memory, for layers whose
 * experts do not fit on the GPU (cuda only): the experts are copied once into
 * dmoe's pinned, mapped host memory (the caller may free w13/w2 when the call
 * returns) and the expert cache is enabled with n_slots slots, as above; the
 * router, correction_bias and shared-expert views are device memory, as for
 * dmoe_layer_set_weights. The device never holds all the experts. Synchronises
 * the device. Host backends: DMOE_ERR_UNSUPPORTED (they read host memory
 * directly: dmoe_layer_set_weights). */
DMOE_API dmoe_status dmoe_layer_set_weights_offloaded(dmoe_layer *layer, const dmoe_weights *weights,
                                                      int32_t n_slots);

/* What a decode forward (T <= DMOE_MISS_CPU_MAX_TOKENS) of a cached layer does
 * with an expert its cache does not hold (cuda):
 *  - DMOE_MISS_GPU (default): copy it into a slot over PCIe (or read it from
 *    host memory), as above; asynchronous and capturable.
 *  - DMOE_MISS_CPU: run its (token, expert) pairs on the host CPU, reading the
 *    weights in host memory where they are (the cache's pinned copy; a cpu
 *    backend context of n_threads threads, 0 = all cores). The forward copies
 *    the routing, x and the slot table back (a host synchronisation on the
 *    stream), runs the resident pairs on the GPU and the missed pairs on the
 *    CPU at the same time, and adds the CPU part into y on the stream. It
 *    cannot be captured in a CUDA graph (DMOE_ERR_UNSUPPORTED while the stream
 *    captures). Forwards install no missed expert; instead the layer counts
 *    how often each expert is used and every 16 forwards prefetches the
 *    hottest experts it lacks: empty slots at once, replacing resident ones
 *    (the coldest) only within a PCIe budget of 10% of the forwards' time.
 *    Each layer with a CPU or AUTO policy owns its cpu context (n_threads
 *    worker threads, asleep between forwards) and its staging buffers (pinned
 *    host and pool memory for 16 tokens), from the default allocator.
 *  - DMOE_MISS_AUTO: decided per decode forward from bandwidths this call
 *    measures: the pinned host-to-device copy (h2d) and the cpu backend's time
 *    for n experts, fitted as cpu_fixed + n * expert_bytes / cpu_gbs (from
 *    runs of K and 4K experts). A forward whose n missed experts take less
 *    time on the CPU than n * expert_bytes / h2d runs them there; otherwise it
 *    runs as DMOE_MISS_GPU (every decode forward reads the routing back).
 * Batches with more tokens always run on the GPU (their missed experts do
 * enough work per byte to be worth the copy), and so does every forward while
 * a resident kernel occupies the device (it queues behind that kernel; the
 * read-back would wait for it). Needs an expert cache; a new
 * cache (enable, set_weights_offloaded) keeps the policy, dmoe_layer_set_weights
 * drops both. Synchronises the device (AUTO measures for tens of ms). */
typedef enum dmoe_miss_policy {
    DMOE_MISS_GPU = 0,
    DMOE_MISS_CPU = 1,
    DMOE_MISS_AUTO = 2
} dmoe_miss_policy;
#define DMOE_MISS_CPU_MAX_TOKENS 16

typedef struct dmoe_miss_info {
    dmoe_miss_policy policy;    /* as set */
    dmoe_miss_policy effective; /* GPU or CPU: what a decode forward with K missed experts does */
    int32_t n_threads;          /* of the cpu context (0 while the policy is GPU) */
    double h2d_gbs;             /* measured pinned host-to-device copy, GB/s (0 while GPU) */
    double cpu_gbs;             /* measured: expert weight bytes per second of the cpu backend for
                                 * each further expert, GB/s (0 while GPU) */
    double cpu_fixed_us;        /* measured: the cpu backend's time beyond n experts' bytes */
    uint64_t cpu_forwards;      /* decode forwards that ran missed experts on the CPU */
    uint64_t gpu_forwards;      /* decode forwards AUTO left to the GPU */
    uint64_t cpu_pairs;         /* (token, expert) pairs run on the CPU since the policy was set */
    uint64_t cpu_experts;       /* (forward, expert) pairs run on the CPU */
    uint64_t refresh_installs;  /* experts the hotness refresh prefetched */
} dmoe_miss_info;

DMOE_API dmoe_status dmoe_layer_set_miss_policy(dmoe_layer *layer, dmoe_miss_policy policy,
                                                int32_t n_threads);
DMOE_API dmoe_status dmoe_layer_miss_info(dmoe_layer *layer, dmoe_miss_info *out);


/* ---- resident serving mode (cuda) ----
 * The fused persistent kernel launched ONCE on its own stream, then fed
 * batches through a doorbell in pinned, mapped host memory:
 *
 *   dmoe_resident *r;  dmoe_resident_create(layer, &rdesc, &r);
 *   for each batch: write T rows of x into dmoe_resident_input(r)   (T, H) act_dtype
 *                   dmoe_resident_submit(r, T);
 *                   dmoe_resident_wait(r, timeout_ms);   DMOE_OK: rows [0, T) of
 *                   dmoe_resident_output(r) hold y       (T, H) act_dtype
 *   dmoe_resident_destroy(r);
 *
 * The kernel copies x to the device, runs the same forward as the ordinary
 * fused path (same bits), copies y back into the output buffer and publishes
 * a completion word (sequence number + status) with a system-scope fence.
 * One batch is in flight at a time; the input and output buffers belong to
 * the kernel between submit and a wait that returned (any status but
 * DMOE_ERR_TIMEOUT). Calls on one resident object must not run concurrently.
 *
 * WHILE RESIDENT THE KERNEL OCCUPIES EVERY SM OF THE DEVICE. Other kernels
 * (including dmoe_forward on any layer) queue behind it and run only after
 * dmoe_resident_destroy; the layer itself rejects forward, route, experts and
 * set_weights until then. One resident kernel per device; creating a cuda
 * layer on that device is refused meanwhile, and destroying one leaks its
 * workspace with a warning (both would otherwise wait for the kernel). Do NOT call cudaDeviceSynchronize, cudaFree,
 * cudaFreeHost or synchronous work on a blocking stream that waits for it on
 * that device: they wait for the kernel, which never ends on its own.
 * Copies on other streams (the copy engines) and other devices are fine.
 * dmoe_resident_create may run while other threads create, destroy, configure
 * (cache, miss policy), load (dmoe_model_load_layer) or run OTHER layers and
 * contexts of the same device: each of those calls either completes before the
 * kernel starts or sees it running (and is refused, or leaks as above), never
 * waits for it (a per-device reader-writer lock, writer first: those calls
 * share it, the create holds it alone). The resident layer itself, like any
 * layer, takes one call at a time. A kernel's first launch loads its module
 * (CUDA's lazy loading), which can wait for the device: run one forward of
 * each layer shape before going resident, or set CUDA_MODULE_LOADING=EAGER.
 * A batch that does not complete within the wait's timeout returns
 * DMOE_ERR_TIMEOUT (the batch stays in flight: wait again); a kernel that
 * died returns DMOE_ERR_CUDA or DMOE_ERR_INTERNAL. Nothing blocks without a
 * bound. */
typedef struct dmoe_resident dmoe_resident;

typedef struct dmoe_resident_desc {
    int64_t max_tokens;          /* largest batch: 1..dmoe_resident_max_supported(); 0 = the
                                  * smaller of that and the layer's max_tokens */
    int32_t reject_nonfinite;    /* 1 (default): a batch whose input holds NaN or inf is not run;
                                  * its wait returns DMOE_ERR_INVALID_ARGUMENT */
    int32_t shutdown_timeout_ms; /* destroy waits at most this long for a batch in flight, then as
                                  * long again for the kernel to stop (default 2000) */
} dmoe_resident_desc;

typedef struct dmoe_resident_info {
    int64_t max_tokens;          /* as created */
    int32_t n_blocks;            /* blocks of the resident grid */
    int32_t in_flight;           /* 1 while a submitted batch was not yet waited for */
    int32_t running;             /* 1 while the kernel is resident */
    int64_t n_submitted;         /* batches submitted */
    int64_t n_completed;         /* batches whose completion the host has seen */
} dmoe_resident_info;

/* The largest max_tokens a resident kernel supports (the fused kernel's limit). */
DMOE_API int64_t dmoe_resident_max_supported(void);
DMOE_API void dmoe_resident_desc_init(dmoe_resident_desc *desc);
/* Launches the resident kernel for layer (cuda backend, weights set; one
 * resident object per layer). desc may be NULL (defaults). */
DMOE_API dmoe_status dmoe_resident_create(dmoe_layer *layer, const dmoe_resident_desc *desc,
                                          dmoe_resident **out);
/* Host pointers (pinned, mapped) to (max_tokens, H) buffers in act_dtype. NULL for NULL. */
DMOE_API void *dmoe_resident_input(dmoe_resident *r);
DMOE_API const void *dmoe_resident_output(const dmoe_resident *r);
/* Starts a batch of the first n_tokens rows of the input (1 <= n_tokens <= max_tokens).
 * Fails with DMOE_ERR_INVALID_ARGUMENT while a batch is in flight. */
DMOE_API dmoe_status dmoe_resident_submit(dmoe_resident *r, int64_t n_tokens);
/* Waits up to timeout_ms (>= 0; 0 = just look) for the batch in flight.
 * DMOE_OK: output rows [0, n_tokens) hold y. DMOE_ERR_TIMEOUT: not done yet,
 * still in flight. DMOE_ERR_INVALID_ARGUMENT: the kernel rejected the batch
 * (non-finite input), output untouched. With no batch in flight it returns the
 * status of the last batch again (DMOE_ERR_INVALID_ARGUMENT if there was none). */
DMOE_API dmoe_status dmoe_resident_wait(dmoe_resident *r, int32_t timeout_ms);
DMOE_API dmoe_status dmoe_resident_query(const dmoe_resident *r, dmoe_resident_info *info);
/* Sends the stop command and waits (at most shutdown_timeout_ms) for the
 * kernel to exit, a batch in flight first. DMOE_OK, or DMOE_ERR_TIMEOUT when
 * the kernel did not exit: then its buffers stay allocated (freeing memory a
 * running kernel uses would synchronise with it, i.e. hang) until a later call
 * finds the kernel ended, which frees them and gives the device back (until
 * then the device takes no new layer or resident kernel), and the layer
 * refuses every call but dmoe_layer_destroy from then on (the kernel may
 * still read its weights). The object is gone either way. NULL is a
 * no-op. Messages go to the layer's context. dmoe_layer_destroy of a layer
 * with a resident object destroys that object first (do not use it after). */
DMOE_API dmoe_status dmoe_resident_destroy(dmoe_resident *r);

/* ---- safetensors files (src/store) ----
 * A read-only, memory-mapped view of one .safetensors file. Every header field
 * is validated when the file is opened: header length within the file, a JSON
 * object, known dtypes, non-negative shapes, data_offsets in bounds, byte
 * ranges that equal shape x dtype size, ranges that tile the data section with
 * no overlap and no hole (as the format requires), and element alignment of
 * every tensor in the mapping (so views are usable as typed pointers).
 * Failures return DMOE_ERR_IO (cannot read), DMOE_ERR_CORRUPT_FILE (defective
 * header), DMOE_ERR_UNSUPPORTED_DTYPE or DMOE_ERR_MISALIGNED, with the message in
 * dmoe_context_last_error(NULL). */
typedef struct dmoe_safetensors dmoe_safetensors;

#define DMOE_ST_MAX_DIMS 8

typedef struct dmoe_st_tensor_info {
    const char *name;        /* owned by the file object */
    const char *dtype_name;  /* as in the file: "BF16", "F32", "I64", ... */
    int32_t dtype;           /* matching dmoe_dtype, or -1 when dmoe has none */
    size_t element_size;     /* bytes per element */
    int32_t n_dims;          /* 0..DMOE_ST_MAX_DIMS */
    int64_t shape[DMOE_ST_MAX_DIMS];
    const void *data;        /* points into the mapping; valid until close */
    size_t n_bytes;
} dmoe_st_tensor_info;

/* Maps the file read-only (mmap) and checks its header against its size. The
 * file must not be truncated while the object is open: the system then kills
 * a reader of the lost pages (SIGBUS), which no check at open can prevent. */
DMOE_API dmoe_status dmoe_safetensors_open(const char *path, dmoe_safetensors **out);
/* Parses a file image held in memory (not copied: buf must outlive the object). */
DMOE_API dmoe_status dmoe_safetensors_open_memory(const void *buf, size_t len,
                                                  dmoe_safetensors **out);
DMOE_API void dmoe_safetensors_close(dmoe_safetensors *st); /* NULL is a no-op */
DMOE_API int64_t dmoe_safetensors_count(const dmoe_safetensors *st);
/* Tensors in file order of their data (ascending offsets). */
DMOE_API dmoe_status dmoe_safetensors_get(const dmoe_safetensors *st, int64_t idx,
                                          dmoe_st_tensor_info *out);
/* DMOE_ERR_INVALID_ARGUMENT when no tensor has that name. */
DMOE_API dmoe_status dmoe_safetensors_find(const dmoe_safetensors *st, const char *name,
                                           dmoe_st_tensor_info *out);
/* A "__metadata__" string value, or NULL. */
DMOE_API const char *dmoe_safetensors_metadata(const dmoe_safetensors *st, const char *key);


/* ---- Hugging Face model directories (src/store) ----
 * A directory with config.json and model.safetensors, or shards listed in
 * model.safetensors.index.json. Architectures (config "model_type"):
 * mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3. Each MoE
 * decoder layer maps to one dmoe layer; the loader copies that layer's
 * per-expert tensors into one arena in dmoe's layout (converting dtype where
 * the file's differs), owned by the layer. Errors: DMOE_ERR_IO,
 * DMOE_ERR_CORRUPT_FILE (missing or inconsistent tensors or config fields),
 * DMOE_ERR_UNSUPPORTED (an architecture or routing dmoe does not run). */
typedef struct dmoe_model dmoe_model;

DMOE_API dmoe_status dmoe_model_open(const char *dir, dmoe_model **out);
DMOE_API void dmoe_model_close(dmoe_model *model); /* NULL is a no-op */
DMOE_API const char *dmoe_model_arch(const dmoe_model *model);
/* Number of MoE layers (dense decoder layers are not counted). */
DMOE_API int32_t dmoe_model_n_moe_layers(const dmoe_model *model);
/* The i-th MoE layer: its decoder layer index and a layer description with the
 * shapes and routing from config.json, dtypes from the file, max_tokens 8192. */
DMOE_API dmoe_status dmoe_model_moe_layer(const dmoe_model *model, int32_t i, int32_t *layer_idx,
                                          dmoe_layer_desc *desc);
/* Creates a layer for decoder layer layer_idx with its weights loaded. desc
 * must be the one dmoe_model_moe_layer gave, where only act_dtype,
 * weight_dtype, max_tokens and path may be changed. With a cuda context the weights
 * are copied to device memory owned by the layer (from the context's pool) and
 * freed with it; host backends keep them in a host arena owned by the layer. */
DMOE_API dmoe_status dmoe_model_load_layer(dmoe_model *model, dmoe_context *ctx, int32_t layer_idx,
                                           const dmoe_layer_desc *desc, dmoe_layer **out);
/* The same for a model whose experts do not fit on the GPU (cuda only): the
 * router, bias and shared experts are copied to the device, the routed experts
 * stay in pinned host memory with n_slots of them cached on the GPU
 * (dmoe_layer_set_weights_offloaded). Host backends: DMOE_ERR_UNSUPPORTED. */
DMOE_API dmoe_status dmoe_model_load_layer_offloaded(dmoe_model *model, dmoe_context *ctx,
                                                     int32_t layer_idx, const dmoe_layer_desc *desc,
                                                     int32_t n_slots, dmoe_layer **out);

/* Writes a synthetic model directory (config.json + model.safetensors) of
 * architecture arch ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
 * "deepseek_v3") with n_layers MoE layers shaped by desc (routing fields must
 * match what the architecture supports), random bf16 weights from seed. */
DMOE_API dmoe_status dmoe_model_write_synthetic(const char *dir, const char *arch,
                                                const dmoe_layer_desc *desc, int32_t n_layers,
                                                uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_H */
