/*
 * dmoe-impl.h: private core of dmoe shared by every backend.
 *
 * The public functions in src/layer.c and src/context.c validate their arguments once, then call
 * the backend's function table (dmoe_backend_iface). Backends therefore see
 * only valid inputs: shapes match the layer, dtypes match, pointers are
 * non-NULL and aligned, T is in [1, max_tokens].
 *
 * A layer's workspace belongs to the layer: one layer must not run two calls
 * at once (different layers may, from different threads).
 */
#ifndef DMOE_IMPL_H
#define DMOE_IMPL_H

#include "dmoe.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Internal invariants only: never for errors a caller can cause. */
#define DMOE_ASSERT(cond)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "dmoe: internal assertion failed at %s:%d: %s\n", __FILE__,      \
                    __LINE__, #cond);                                                        \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

#define DMOE_ERROR_LEN 1024

typedef struct dmoe_backend_iface dmoe_backend_iface;

struct dmoe_context {
    dmoe_context_desc desc;
    const dmoe_backend_iface *backend;
    dmoe_allocator alloc;
    int32_t n_threads;
    void *backend_data; /* owned by the backend: thread pool, CUDA handles */
    uint64_t serial;    /* unique per process: keys the per-thread error messages (status.c) */
};

struct dmoe_layer {
    dmoe_context *ctx;
    dmoe_layer_desc desc;
    dmoe_weights w;
    int has_weights;
    void *backend_data; /* owned by the backend: workspace sized for max_tokens */
    void *owned_weights; /* (optional) host arena behind w, freed with the layer */
    dmoe_resident *resident; /* a resident kernel runs on this layer (compute calls refused) */
    int resident_stuck;      /* a resident kernel of this layer did not stop when destroyed: it may
                              * still read the weights, so compute and weight calls stay refused */
};

/* A resident serving kernel (src/resident.c validates, the backend runs it). */
struct dmoe_resident {
    dmoe_layer *layer;
    dmoe_resident_desc desc; /* max_tokens resolved */
    void *input;             /* (max_tokens, H) host, pinned and mapped */
    void *output;            /* (max_tokens, H) host, pinned and mapped */
    void *backend_data;
};

/* The resident serving mode of a backend; every entry required when the table is. */
typedef struct dmoe_resident_iface {
    int64_t max_tokens;                                  /* the largest max_tokens supported */
    dmoe_status (*create)(dmoe_resident *r);             /* sets input, output, backend_data */
    dmoe_status (*submit)(dmoe_resident *r, int64_t n_tokens);
    dmoe_status (*wait)(dmoe_resident *r, int32_t timeout_ms);
    void (*query)(const dmoe_resident *r, dmoe_resident_info *info);
    dmoe_status (*destroy)(dmoe_resident *r);            /* frees backend_data (or leaks it) */
} dmoe_resident_iface;

/* A backend is a table of functions; entries marked (optional) may be NULL.
 * Arguments have been validated by the caller (src/layer.c). */
struct dmoe_backend_iface {
    const char *name;
    size_t weight_align; /* required alignment of weight and activation pointers */
    int32_t max_top_k;
    int (*available)(void);                                   /* (optional) NULL = always */
    dmoe_status (*context_init)(dmoe_context *ctx);           /* (optional) */
    void (*context_fini)(dmoe_context *ctx);                  /* (optional) */
    dmoe_status (*layer_init)(dmoe_layer *layer);             /* (optional) workspace */
    void (*layer_fini)(dmoe_layer *layer);                    /* (optional) */
    /* Called after the views in layer->w changed. (optional) */
    dmoe_status (*layer_weights_changed)(dmoe_layer *layer);
    /* topk_ids (T, K), topk_weights (T, K), on the backend's device. */
    dmoe_status (*route)(dmoe_layer *layer, const void *x, int64_t n_tokens, int32_t *topk_ids,
                         float *topk_weights, void *stream);
    /* ids already validated in [0, E) on host backends. */
    dmoe_status (*experts)(dmoe_layer *layer, const void *x, int64_t n_tokens,
                           const int32_t *topk_ids, const float *topk_weights, void *y,
                           void *stream);
    /* Route and experts in one call, using the layer's own workspace. */
    dmoe_status (*forward)(dmoe_layer *layer, const void *x, int64_t n_tokens, void *y,
                           void *stream);
    /* The path a forward of n_tokens would run (STAGED or FUSED). (optional) */
    dmoe_status (*query_path)(const dmoe_layer *layer, int64_t n_tokens, dmoe_path *out);
    const dmoe_resident_iface *resident; /* (optional) resident serving mode */
    /* (optional) Copies a host arena of `bytes` bytes, whose views are `host`, into memory the
     * layer owns (freed in layer_fini) and gives the matching views in *out. NULL: the layer
     * keeps the host arena (host backends). */
    dmoe_status (*layer_load_arena)(dmoe_layer *layer, const void *arena, size_t bytes,
                                    const dmoe_weights *host, dmoe_weights *out);
    /* (optional) Weights whose routed experts w13/w2 are host memory (the rest validated
     * as for set_weights by src/layer.c, the locations by the backend): the experts go to
     * the expert cache with n_slots slots; *out receives the views the layer keeps. */
    dmoe_status (*weights_offloaded)(dmoe_layer *layer, const dmoe_weights *w, int32_t n_slots,
                                     dmoe_weights *out);
    /* (optional) NULL: no pool, statistics are zero and trim does nothing. */
    dmoe_status (*memory_stats)(dmoe_context *ctx, dmoe_memory_stats *out);
    void (*memory_trim)(dmoe_context *ctx);
    /* (optional) The expert cache (dmoe.h); arguments validated by src/layer.c. NULL: unsupported. */
    dmoe_status (*cache_enable)(dmoe_layer *layer, int32_t n_slots, uint32_t flags);
    dmoe_status (*cache_prefetch)(dmoe_layer *layer, const int32_t *ids, int32_t n_ids, void *stream);
    dmoe_status (*cache_stats)(dmoe_layer *layer, dmoe_expert_cache_stats *out);
    dmoe_status (*cache_table)(dmoe_layer *layer, int32_t *slot_of_expert);
    /* (optional) The layer's cache slots, 0 when it has no expert cache. Never synchronises. */
    int32_t (*cache_slots)(const dmoe_layer *layer);
    /* (optional, with the cache) The miss policy (dmoe.h); arguments validated by src/layer.c. */
    dmoe_status (*miss_policy)(dmoe_layer *layer, dmoe_miss_policy policy, int32_t n_threads);
    dmoe_status (*miss_info)(dmoe_layer *layer, dmoe_miss_info *out);
};

extern const dmoe_backend_iface dmoe__backend_cpu_ref;
extern const dmoe_backend_iface dmoe__backend_cpu;
extern const dmoe_backend_iface dmoe__backend_cuda; /* only when DMOE_HAVE_CUDA */

/* The model loader's hand-over of a host weight arena (views w point into it):
 * host backends keep it, the cuda backend copies it to device memory. On
 * success the layer owns the arena; on failure the caller still does. */
dmoe_status dmoe__layer_adopt_arena(dmoe_layer *layer, void *arena, size_t bytes, const dmoe_weights *w);
/* The same for an offloaded layer: the first bytes of the arena (router, bias,
 * shared experts; w's w13/w2 lie beyond them) go to the backend's memory, the
 * routed experts w->w13/w2 to the expert cache (n_slots). The arena is freed on
 * success (the cache holds its own copy of the experts). */
dmoe_status dmoe__layer_adopt_arena_offloaded(dmoe_layer *layer, void *arena, size_t bytes,
                                              const dmoe_weights *w, int32_t n_slots);

/* ---- errors ---- */
/* Records a printf-style message on ctx (or the thread's context-less slot
 * when ctx is NULL) and returns status, so callers write
 *   return dmoe__error(ctx, DMOE_ERR_BAD_SHAPE, "x has %d dims", n); */
dmoe_status dmoe__error(dmoe_context *ctx, dmoe_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void dmoe__clear_error(dmoe_context *ctx);
/* A number no other context of this process has had (keys the per-thread messages). */
uint64_t dmoe__context_serial(void);
/* CLOCK_MONOTONIC in seconds (host-side timeouts and measurements). */
double dmoe__now_s(void);

/* ---- host memory through the context's allocator ---- */
void *dmoe__malloc(dmoe_context *ctx, size_t size); /* 64-byte aligned, NULL on failure */
void *dmoe__calloc(dmoe_context *ctx, size_t count, size_t size); /* overflow-checked */
void dmoe__free(dmoe_context *ctx, void *ptr);

/* ---- numeric conversions (host) ---- */
static inline float dmoe__bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t dmoe__f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}
float dmoe__f16_to_f32(uint16_t h);
uint16_t dmoe__f32_to_f16(float f);

/* Element idx of a buffer of dtype as float (f32, bf16, f16 only). */
static inline float dmoe__load_f32(const void *p, dmoe_dtype dt, int64_t idx) {
    switch (dt) {
    case DMOE_DTYPE_F32: return ((const float *)p)[idx];
    case DMOE_DTYPE_BF16: return dmoe__bf16_to_f32(((const uint16_t *)p)[idx]);
    case DMOE_DTYPE_F16: return dmoe__f16_to_f32(((const uint16_t *)p)[idx]);
    default: DMOE_ASSERT(0 && "not a float dtype"); return 0.0f;
    }
}
static inline void dmoe__store_f32(void *p, dmoe_dtype dt, int64_t idx, float v) {
    switch (dt) {
    case DMOE_DTYPE_F32: ((float *)p)[idx] = v; break;
    case DMOE_DTYPE_BF16: ((uint16_t *)p)[idx] = dmoe__f32_to_bf16(v); break;
    case DMOE_DTYPE_F16: ((uint16_t *)p)[idx] = dmoe__f32_to_f16(v); break;
    default: DMOE_ASSERT(0 && "not a float dtype");
    }
}
/* Converts n elements to float32. */
void dmoe__convert_to_f32(const void *src, dmoe_dtype dt, float *dst, int64_t n);
void dmoe__convert_from_f32(const float *src, void *dst, dmoe_dtype dt, int64_t n);

/* ---- routing math (host; shared by the cpu backends and the tests) ----
 * Given one token's router logits (E) as double, computes its top-k ids and
 * weights following the rules in dmoe.h. scratch must hold 3*E doubles plus
 * E ints (see dmoe__route_scratch_bytes). */
size_t dmoe__route_scratch_bytes(int32_t n_experts);
void dmoe__route_token(const dmoe_routing_desc *r, int32_t n_experts, int32_t top_k,
                       const double *logits, const float *correction_bias, void *scratch,
                       int32_t *ids_out, float *weights_out);
/* Sanitises one logit: NaN -> -FLT_MAX, +-inf -> +-FLT_MAX. */
double dmoe__sanitize_logit(double v);

/* ---- plan: tokens grouped by expert, stable ----
 * counts (E): pairs routed to each expert; offsets (E+1): prefix sums;
 * pairs (T*K): pair indices p = t*K + k sorted by (expert, p);
 * slot_of (T*K): inverse of pairs (slot_of[pairs[s]] = s). */
void dmoe__plan_build(const int32_t *topk_ids, int64_t n_tokens, int32_t top_k, int32_t n_experts,
                      int32_t *counts, int64_t *offsets, int32_t *pairs, int32_t *slot_of);

static inline double dmoe__silu(double v) { return v / (1.0 + exp(-v)); }

#ifdef __cplusplus
}
#endif

#endif /* DMOE_IMPL_H */
