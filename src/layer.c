/*
 * layer.c: layer creation and the public compute entry points. Every argument
 * is validated here, once, so backends see only valid inputs; a failed call
 * sets the context's message and leaves its outputs untouched.
 */
#include <float.h>

#include "dmoe-impl.h"

void dmoe_layer_desc_init(dmoe_layer_desc *d) {
    if (!d) return;
    memset(d, 0, sizeof *d);
    d->routing.scoring = DMOE_SCORING_SOFTMAX;
    d->routing.renormalize = 1;
    d->routing.n_group = 0;
    d->routing.topk_group = 0;
    d->routing.routed_scaling_factor = 1.0f;
    d->routing.use_correction_bias = 0;
    d->shared_gate = DMOE_SHARED_GATE_NONE;
    d->act_dtype = DMOE_DTYPE_BF16;
    d->weight_dtype = DMOE_DTYPE_BF16;
    d->max_tokens = 8192;
    d->path = DMOE_PATH_AUTO;
}

const char *dmoe_path_name(dmoe_path path) {
    switch (path) {
    case DMOE_PATH_AUTO: return "auto";
    case DMOE_PATH_STAGED: return "staged";
    case DMOE_PATH_FUSED: return "fused";
    }
    return "unknown";
}

static int is_float_dtype(dmoe_dtype dt) {
    return dt == DMOE_DTYPE_F32 || dt == DMOE_DTYPE_BF16 || dt == DMOE_DTYPE_F16;
}

/* Compute, weight and cache calls are refused while a resident kernel owns
 * the layer (src/resident.c), and for good when one did not stop. */
static dmoe_status resident_busy(dmoe_layer *layer) {
    if (layer->resident)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "the layer runs a resident kernel (dmoe_resident_*): destroy it first");
    if (layer->resident_stuck)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "a resident kernel of this layer did not stop when destroyed and may still read "
                           "its weights: the layer can only be destroyed");
    return DMOE_OK;
}

static dmoe_status validate_desc(dmoe_context *ctx, const dmoe_layer_desc *d) {
    const dmoe_backend_iface *be = ctx->backend;
    if (d->hidden < 1 || d->hidden > DMOE_MAX_DIM)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "hidden must be in [1, %d], got %lld",
                           DMOE_MAX_DIM, (long long)d->hidden);
    if (d->ffn < 1 || d->ffn > DMOE_MAX_DIM)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "ffn must be in [1, %d], got %lld",
                           DMOE_MAX_DIM, (long long)d->ffn);
    if (d->n_experts < 1 || d->n_experts > DMOE_MAX_EXPERTS)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_experts must be in [1, %d], got %d",
                           DMOE_MAX_EXPERTS, (int)d->n_experts);
    if (d->top_k < 1 || d->top_k > d->n_experts)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "top_k must be in [1, n_experts=%d], got %d", (int)d->n_experts,
                           (int)d->top_k);
    if (d->top_k > be->max_top_k)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' supports top_k <= %d, got %d",
                           be->name, (int)be->max_top_k, (int)d->top_k);
    if (d->n_shared_experts < 0 || d->n_shared_experts > DMOE_MAX_EXPERTS)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "n_shared_experts must be in [0, %d], got %d", DMOE_MAX_EXPERTS,
                           (int)d->n_shared_experts);
    if (d->n_shared_experts > 0 && (d->shared_ffn < 1 || d->shared_ffn > DMOE_MAX_DIM))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "shared_ffn must be in [1, %d] when there are shared experts, got %lld",
                           DMOE_MAX_DIM, (long long)d->shared_ffn);
    if (d->shared_gate != DMOE_SHARED_GATE_NONE && d->shared_gate != DMOE_SHARED_GATE_SIGMOID)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "unknown shared_gate %d",
                           (int)d->shared_gate);
    if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID && d->n_shared_experts == 0)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "a shared-expert gate needs n_shared_experts > 0");
    const dmoe_routing_desc *r = &d->routing;
    if (r->scoring != DMOE_SCORING_SOFTMAX && r->scoring != DMOE_SCORING_SIGMOID)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "unknown scoring %d", (int)r->scoring);
    if (r->renormalize != 0 && r->renormalize != 1)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "renormalize must be 0 or 1");
    if (r->use_correction_bias != 0 && r->use_correction_bias != 1)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "use_correction_bias must be 0 or 1");
    if (!(r->routed_scaling_factor > 0.0f) || r->routed_scaling_factor > FLT_MAX)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "routed_scaling_factor must be finite and > 0, got %g",
                           (double)r->routed_scaling_factor);
    if (r->n_group < 0 || r->n_group > d->n_experts)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_group must be in [0, E=%d], got %d",
                           (int)d->n_experts, (int)r->n_group);
    if (r->n_group > 1) {
        if (d->n_experts % r->n_group != 0)
            return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                               "n_group=%d must divide n_experts=%d", (int)r->n_group,
                               (int)d->n_experts);
        if (r->topk_group < 1 || r->topk_group > r->n_group)
            return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                               "topk_group must be in [1, n_group=%d], got %d", (int)r->n_group,
                               (int)r->topk_group);
        int64_t reachable = (int64_t)r->topk_group * (d->n_experts / r->n_group);
        if (d->top_k > reachable)
            return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                               "top_k=%d exceeds the %lld experts in topk_group=%d groups",
                               (int)d->top_k, (long long)reachable, (int)r->topk_group);
    }
    if (!is_float_dtype(d->act_dtype))
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED_DTYPE,
                           "act_dtype must be f32, bf16 or f16, got %s", dmoe_dtype_name(d->act_dtype));
    if (!is_float_dtype(d->weight_dtype))
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED_DTYPE,
                           "weight_dtype must be f32, bf16 or f16, got %s",
                           dmoe_dtype_name(d->weight_dtype));
    if (d->max_tokens < 1 || d->max_tokens > DMOE_MAX_TOKENS)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "max_tokens must be in [1, %d], got %lld",
                           DMOE_MAX_TOKENS, (long long)d->max_tokens);
    if (d->max_tokens * d->top_k > (int64_t)1 << 30)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "max_tokens * top_k must be <= 2^30, got %lld",
                           (long long)(d->max_tokens * d->top_k));
    if (d->path != DMOE_PATH_AUTO && d->path != DMOE_PATH_STAGED && d->path != DMOE_PATH_FUSED)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "unknown path %d (expected DMOE_PATH_AUTO, _STAGED or _FUSED)", (int)d->path);
    return DMOE_OK;
}

dmoe_status dmoe_layer_create(dmoe_context *ctx, const dmoe_layer_desc *desc, dmoe_layer **out) {
    if (!ctx) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "ctx is NULL");
    dmoe__clear_error(ctx);
    if (!desc || !out) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "desc and out are required");
    dmoe_status st = validate_desc(ctx, desc);
    if (st != DMOE_OK) return st;
    dmoe_layer *layer = (dmoe_layer *)dmoe__calloc(ctx, 1, sizeof *layer);
    if (!layer) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cannot allocate the layer");
    layer->ctx = ctx;
    layer->desc = *desc;
    if (ctx->backend->layer_init) {
        st = ctx->backend->layer_init(layer);
        if (st != DMOE_OK) {
            dmoe__free(ctx, layer);
            return st;
        }
    }
    *out = layer;
    return DMOE_OK;
}

void dmoe_layer_destroy(dmoe_layer *layer) {
    if (!layer) return;
    dmoe_context *ctx = layer->ctx;
    /* its resident kernel first (it reads the layer's weights and workspace) */
    if (layer->resident) (void)dmoe_resident_destroy(layer->resident);
    if (ctx->backend->layer_fini) ctx->backend->layer_fini(layer);
    dmoe__free(ctx, layer->owned_weights);
    dmoe__free(ctx, layer);
}

const dmoe_layer_desc *dmoe_layer_get_desc(const dmoe_layer *layer) {
    return layer ? &layer->desc : NULL;
}

dmoe_status dmoe_layer_query_path(const dmoe_layer *layer, int64_t n_tokens, dmoe_path *out) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe_context *ctx = layer->ctx;
    dmoe__clear_error(ctx);
    if (!out) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "out is NULL");
    if (n_tokens < 1 || n_tokens > layer->desc.max_tokens)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_tokens must be in [1, max_tokens=%lld], got %lld",
                           (long long)layer->desc.max_tokens, (long long)n_tokens);
    if (!ctx->backend->query_path)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' has a single path",
                           ctx->backend->name);
    return ctx->backend->query_path(layer, n_tokens, out);
}

static size_t required_align(const dmoe_context *ctx, dmoe_dtype dt) {
    size_t a = dmoe_dtype_size(dt);
    return ctx->backend->weight_align > a ? ctx->backend->weight_align : a;
}

static dmoe_status check_weight_ptr(dmoe_context *ctx, const void *p, const char *name,
                                    dmoe_dtype dt) {
    if (!p) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "weights.%s is required", name);
    size_t a = required_align(ctx, dt);
    if ((uintptr_t)p % a != 0)
        return dmoe__error(ctx, DMOE_ERR_MISALIGNED, "weights.%s must be %zu-byte aligned", name, a);
    return DMOE_OK;
}

/* Every view of w against the layer's description (presence, alignment, and
 * the optional views given only when the description asks for them). */
static dmoe_status check_weights(dmoe_layer *layer, const dmoe_weights *w) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    const dmoe_dtype wt = d->weight_dtype;
    dmoe_status st;
    if ((st = check_weight_ptr(ctx, w->router, "router", wt)) != DMOE_OK) return st;
    if ((st = check_weight_ptr(ctx, w->w13, "w13", wt)) != DMOE_OK) return st;
    if ((st = check_weight_ptr(ctx, w->w2, "w2", wt)) != DMOE_OK) return st;
    if (d->routing.use_correction_bias) {
        if ((st = check_weight_ptr(ctx, w->correction_bias, "correction_bias", DMOE_DTYPE_F32)))
            return st;
    } else if (w->correction_bias) {
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "weights.correction_bias given but routing.use_correction_bias is 0");
    }
    if (d->n_shared_experts > 0) {
        if ((st = check_weight_ptr(ctx, w->shared_w13, "shared_w13", wt)) != DMOE_OK) return st;
        if ((st = check_weight_ptr(ctx, w->shared_w2, "shared_w2", wt)) != DMOE_OK) return st;
    } else if (w->shared_w13 || w->shared_w2) {
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "shared expert weights given but n_shared_experts is 0");
    }
    if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
        if ((st = check_weight_ptr(ctx, w->shared_gate, "shared_gate", wt)) != DMOE_OK) return st;
    } else if (w->shared_gate) {
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "weights.shared_gate given but shared_gate is NONE");
    }
    return DMOE_OK;
}

dmoe_status dmoe_layer_set_weights(dmoe_layer *layer, const dmoe_weights *w) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe_context *ctx = layer->ctx;
    dmoe__clear_error(ctx);
    if (!w) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "weights is NULL");
    dmoe_status st;
    if ((st = resident_busy(layer)) != DMOE_OK) return st;
    if ((st = check_weights(layer, w)) != DMOE_OK) return st;
    dmoe_weights old = layer->w;
    int had = layer->has_weights;
    layer->w = *w;
    layer->has_weights = 1;
    if (ctx->backend->layer_weights_changed) {
        st = ctx->backend->layer_weights_changed(layer);
        if (st != DMOE_OK) {
            layer->w = old;
            layer->has_weights = had;
            return st;
        }
    }
    return DMOE_OK;
}

dmoe_status dmoe_layer_set_weights_offloaded(dmoe_layer *layer, const dmoe_weights *w, int32_t n_slots) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe_context *ctx = layer->ctx;
    dmoe__clear_error(ctx);
    if (!w) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "weights is NULL");
    const dmoe_backend_iface *be = ctx->backend;
    if (!be->weights_offloaded)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "backend '%s' has no offloaded experts (cuda only; host backends read host memory "
                           "directly: use dmoe_layer_set_weights)",
                           be->name);
    dmoe_status st;
    if ((st = resident_busy(layer)) != DMOE_OK) return st;
    if (n_slots < 1 || n_slots > layer->desc.n_experts)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_slots must be in [1, E=%d], got %d",
                           (int)layer->desc.n_experts, (int)n_slots);
    if ((st = check_weights(layer, w)) != DMOE_OK) return st;
    dmoe_weights kept;
    memset(&kept, 0, sizeof kept);
    if ((st = be->weights_offloaded(layer, w, n_slots, &kept)) != DMOE_OK) return st;
    layer->w = kept;
    layer->has_weights = 1;
    return DMOE_OK;
}

/* Checks a (rows, cols) tensor; rows < 0 means "any rows in [1, max_tokens]". */
static dmoe_status check_tensor(dmoe_layer *layer, const dmoe_tensor *t, const char *name,
                                dmoe_dtype dtype, int64_t rows, int64_t cols) {
    dmoe_context *ctx = layer->ctx;
    if (!t) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "%s is NULL", name);
    if (!t->data) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "%s->data is NULL", name);
    if (t->dtype != dtype)
        return dmoe__error(ctx, DMOE_ERR_DTYPE_MISMATCH, "%s has dtype %s, expected %s", name,
                           dmoe_dtype_name(t->dtype), dmoe_dtype_name(dtype));
    if (t->n_dims != 2)
        return dmoe__error(ctx, DMOE_ERR_BAD_SHAPE, "%s must be 2-D, has %d dims", name,
                           (int)t->n_dims);
    if (t->shape[1] != cols)
        return dmoe__error(ctx, DMOE_ERR_BAD_SHAPE, "%s has %lld columns, expected %lld", name,
                           (long long)t->shape[1], (long long)cols);
    if (rows >= 0 && t->shape[0] != rows)
        return dmoe__error(ctx, DMOE_ERR_BAD_SHAPE, "%s has %lld rows, expected %lld (tokens)",
                           name, (long long)t->shape[0], (long long)rows);
    if (t->shape[0] < 1)
        return dmoe__error(ctx, DMOE_ERR_BAD_SHAPE, "%s has %lld rows; at least 1 token is needed",
                           name, (long long)t->shape[0]);
    if (t->shape[0] > layer->desc.max_tokens)
        return dmoe__error(ctx, DMOE_ERR_TOO_MANY_TOKENS, "%s has %lld tokens, max_tokens is %lld",
                           name, (long long)t->shape[0], (long long)layer->desc.max_tokens);
    int32_t want_dev = ctx->desc.backend == DMOE_BACKEND_CUDA ? ctx->desc.device : DMOE_DEVICE_HOST;
    if (t->device != want_dev)
        return dmoe__error(ctx, DMOE_ERR_WRONG_DEVICE, "%s is on device %d, backend '%s' needs %d",
                           name, (int)t->device, ctx->backend->name, (int)want_dev);
    size_t a = required_align(ctx, dtype);
    if ((uintptr_t)t->data % a != 0)
        return dmoe__error(ctx, DMOE_ERR_MISALIGNED, "%s->data must be %zu-byte aligned", name, a);
    return DMOE_OK;
}

static size_t tensor_bytes(const dmoe_tensor *t) {
    return (size_t)t->shape[0] * (size_t)t->shape[1] * dmoe_dtype_size(t->dtype);
}

static int overlaps(const dmoe_tensor *a, const dmoe_tensor *b) {
    uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + tensor_bytes(a);
    uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + tensor_bytes(b);
    return a0 < b1 && b0 < a1;
}

static dmoe_status begin_call(dmoe_layer *layer, const dmoe_tensor *x) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe__clear_error(layer->ctx);
    if (!layer->has_weights)
        return dmoe__error(layer->ctx, DMOE_ERR_NO_WEIGHTS, "call dmoe_layer_set_weights first");
    dmoe_status busy = resident_busy(layer);
    if (busy != DMOE_OK) return busy;
    return check_tensor(layer, x, "x", layer->desc.act_dtype, -1, layer->desc.hidden);
}

static dmoe_status check_output(dmoe_layer *layer, const dmoe_tensor *x, const dmoe_tensor *out,
                                const char *name) {
    if (out && out->data && overlaps(x, out))
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "%s overlaps x", name);
    return DMOE_OK;
}

dmoe_status dmoe_forward(dmoe_layer *layer, const dmoe_tensor *x, dmoe_tensor *y, void *stream) {
    dmoe_status st = begin_call(layer, x);
    if (st != DMOE_OK) return st;
    const int64_t T = x->shape[0];
    if ((st = check_tensor(layer, y, "y", layer->desc.act_dtype, T, layer->desc.hidden))) return st;
    if ((st = check_output(layer, x, y, "y"))) return st;
    return layer->ctx->backend->forward(layer, x->data, T, y->data, stream);
}

dmoe_status dmoe_route(dmoe_layer *layer, const dmoe_tensor *x, dmoe_tensor *topk_ids,
                       dmoe_tensor *topk_weights, void *stream) {
    dmoe_status st = begin_call(layer, x);
    if (st != DMOE_OK) return st;
    const int64_t T = x->shape[0], K = layer->desc.top_k;
    if ((st = check_tensor(layer, topk_ids, "topk_ids", DMOE_DTYPE_I32, T, K))) return st;
    if ((st = check_tensor(layer, topk_weights, "topk_weights", DMOE_DTYPE_F32, T, K))) return st;
    if ((st = check_output(layer, x, topk_ids, "topk_ids"))) return st;
    if ((st = check_output(layer, x, topk_weights, "topk_weights"))) return st;
    if (overlaps(topk_ids, topk_weights))
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "topk_ids overlaps topk_weights");
    return layer->ctx->backend->route(layer, x->data, T, (int32_t *)topk_ids->data,
                                      (float *)topk_weights->data, stream);
}

dmoe_status dmoe_experts(dmoe_layer *layer, const dmoe_tensor *x, const dmoe_tensor *topk_ids,
                         const dmoe_tensor *topk_weights, dmoe_tensor *y, void *stream) {
    dmoe_status st = begin_call(layer, x);
    if (st != DMOE_OK) return st;
    const int64_t T = x->shape[0], K = layer->desc.top_k;
    if ((st = check_tensor(layer, topk_ids, "topk_ids", DMOE_DTYPE_I32, T, K))) return st;
    if ((st = check_tensor(layer, topk_weights, "topk_weights", DMOE_DTYPE_F32, T, K))) return st;
    if ((st = check_tensor(layer, y, "y", layer->desc.act_dtype, T, layer->desc.hidden))) return st;
    if ((st = check_output(layer, x, y, "y"))) return st;
    if (overlaps(y, topk_ids) || overlaps(y, topk_weights))
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "y overlaps the routing inputs");
    if (topk_ids->device == DMOE_DEVICE_HOST) {
        const int32_t *ids = (const int32_t *)topk_ids->data;
        for (int64_t i = 0; i < T * K; i++) {
            if (ids[i] < 0 || ids[i] >= layer->desc.n_experts)
                return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                                   "topk_ids[%lld][%lld] = %d is outside [0, %d)",
                                   (long long)(i / K), (long long)(i % K), (int)ids[i],
                                   (int)layer->desc.n_experts);
        }
    }
    return layer->ctx->backend->experts(layer, x->data, T, (const int32_t *)topk_ids->data,
                                        (const float *)topk_weights->data, y->data, stream);
}

/* ---- the expert cache (dmoe.h): validated here, run by the backend ---- */

static dmoe_status cache_begin(dmoe_layer *layer, int need_enabled) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe__clear_error(layer->ctx);
    const dmoe_backend_iface *be = layer->ctx->backend;
    if (!be->cache_enable)
        return dmoe__error(layer->ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' has no expert cache",
                           be->name);
    dmoe_status busy = resident_busy(layer);
    if (busy != DMOE_OK) return busy;
    if (need_enabled && be->cache_slots(layer) == 0)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "the layer has no expert cache (call dmoe_layer_enable_expert_cache)");
    return DMOE_OK;
}

dmoe_status dmoe_layer_enable_expert_cache(dmoe_layer *layer, int32_t n_slots, uint32_t flags) {
    dmoe_status st = cache_begin(layer, 0);
    if (st != DMOE_OK) return st;
    if (n_slots < 1 || n_slots > layer->desc.n_experts)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "n_slots must be in [1, E=%d], got %d",
                           (int)layer->desc.n_experts, (int)n_slots);
    if (flags != DMOE_EXPERT_CACHE_FLAGS_NONE)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "unknown expert cache flags 0x%x",
                           (unsigned)flags);
    if (!layer->has_weights)
        return dmoe__error(layer->ctx, DMOE_ERR_NO_WEIGHTS,
                           "set the weights before enabling the expert cache");
    return layer->ctx->backend->cache_enable(layer, n_slots, flags);
}

dmoe_status dmoe_layer_prefetch_experts(dmoe_layer *layer, const int32_t *expert_ids, int32_t n_ids,
                                        void *stream) {
    dmoe_status st = cache_begin(layer, 1);
    if (st != DMOE_OK) return st;
    const int32_t n_slots = layer->ctx->backend->cache_slots(layer);
    if (n_ids < 0 || n_ids > n_slots)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "n_ids must be in [0, n_slots=%d], got %d", (int)n_slots, (int)n_ids);
    if (n_ids == 0) return DMOE_OK;
    if (!expert_ids) return dmoe__error(layer->ctx, DMOE_ERR_NULL_POINTER, "expert_ids is NULL");
    for (int32_t i = 0; i < n_ids; i++) {
        if (expert_ids[i] < 0 || expert_ids[i] >= layer->desc.n_experts)
            return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                               "expert_ids[%d] = %d is outside [0, %d)", (int)i, (int)expert_ids[i],
                               (int)layer->desc.n_experts);
        for (int32_t j = 0; j < i; j++)
            if (expert_ids[j] == expert_ids[i])
                return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                                   "expert %d is listed twice (positions %d and %d)",
                                   (int)expert_ids[i], (int)j, (int)i);
    }
    return layer->ctx->backend->cache_prefetch(layer, expert_ids, n_ids, stream);
}

dmoe_status dmoe_layer_expert_cache_stats(dmoe_layer *layer, dmoe_expert_cache_stats *out) {
    dmoe_status st = cache_begin(layer, 1);
    if (st != DMOE_OK) return st;
    if (!out) return dmoe__error(layer->ctx, DMOE_ERR_NULL_POINTER, "out is NULL");
    return layer->ctx->backend->cache_stats(layer, out);
}

dmoe_status dmoe_layer_expert_cache_table(dmoe_layer *layer, int32_t *slot_of_expert) {
    dmoe_status st = cache_begin(layer, 1);
    if (st != DMOE_OK) return st;
    if (!slot_of_expert) return dmoe__error(layer->ctx, DMOE_ERR_NULL_POINTER, "slot_of_expert is NULL");
    return layer->ctx->backend->cache_table(layer, slot_of_expert);
}

dmoe_status dmoe_layer_set_miss_policy(dmoe_layer *layer, dmoe_miss_policy policy, int32_t n_threads) {
    dmoe_status st = cache_begin(layer, 1);
    if (st != DMOE_OK) return st;
    if (policy != DMOE_MISS_GPU && policy != DMOE_MISS_CPU && policy != DMOE_MISS_AUTO)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "unknown miss policy %d (DMOE_MISS_GPU, _CPU or _AUTO)", (int)policy);
    if (n_threads < 0 || n_threads > 4096)
        return dmoe__error(layer->ctx, DMOE_ERR_INVALID_ARGUMENT, "n_threads must be in [0, 4096], got %d",
                           (int)n_threads);
    if (!layer->ctx->backend->miss_policy)
        return dmoe__error(layer->ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' has no miss policy",
                           layer->ctx->backend->name);
    return layer->ctx->backend->miss_policy(layer, policy, n_threads);
}

dmoe_status dmoe_layer_miss_info(dmoe_layer *layer, dmoe_miss_info *out) {
    dmoe_status st = cache_begin(layer, 1);
    if (st != DMOE_OK) return st;
    if (!out) return dmoe__error(layer->ctx, DMOE_ERR_NULL_POINTER, "out is NULL");
    if (!layer->ctx->backend->miss_info)
        return dmoe__error(layer->ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' has no miss policy",
                           layer->ctx->backend->name);
    return layer->ctx->backend->miss_info(layer, out);
}

/* Used by the model loader: moves a host arena into memory the backend owns
 * (device memory for cuda), or keeps it on the host. On success the layer owns
 * the arena either way (it frees it, or its copy, when destroyed). */
dmoe_status dmoe__layer_adopt_arena_offloaded(dmoe_layer *layer, void *arena, size_t bytes,
                                              const dmoe_weights *w, int32_t n_slots) {
    const dmoe_backend_iface *be = layer->ctx->backend;
    if (!be->layer_load_arena || !be->weights_offloaded)
        return dmoe__error(layer->ctx, DMOE_ERR_UNSUPPORTED,
                           "backend '%s' has no offloaded experts (cuda only)", be->name);
    dmoe_weights small = *w, dev;
    small.w13 = small.w2 = NULL; /* they lie beyond the first bytes: not copied */
    memset(&dev, 0, sizeof dev);
    dmoe_status st = be->layer_load_arena(layer, arena, bytes, &small, &dev);
    if (st != DMOE_OK) return st;
    dev.w13 = w->w13;
    dev.w2 = w->w2;
    st = dmoe_layer_set_weights_offloaded(layer, &dev, n_slots);
    if (st == DMOE_OK) dmoe__free(layer->ctx, arena);
    return st;
}

dmoe_status dmoe__layer_adopt_arena(dmoe_layer *layer, void *arena, size_t bytes, const dmoe_weights *w) {
    const dmoe_backend_iface *be = layer->ctx->backend;
    if (!be->layer_load_arena) {
        dmoe_status st = dmoe_layer_set_weights(layer, w);
        if (st == DMOE_OK) layer->owned_weights = arena;
        return st;
    }
    dmoe_weights dev;
    memset(&dev, 0, sizeof dev);
    dmoe_status st = be->layer_load_arena(layer, arena, bytes, w, &dev);
    if (st != DMOE_OK) return st;
    st = dmoe_layer_set_weights(layer, &dev);
    if (st == DMOE_OK) dmoe__free(layer->ctx, arena);
    return st;
}
