/*
 * resident.c: the public resident serving API (dmoe.h, "resident serving
 * mode"). Every argument is validated here; the backend's resident table
 * (dmoe_resident_iface, today only the cuda backend's, src/cuda/resident.cu)
 * runs the kernel, the doorbell and the completion word. Messages go to the
 * layer's context.
 */
#include "dmoe-impl.h"

#define DMOE_RESIDENT_DEFAULT_SHUTDOWN_MS 2000

int64_t dmoe_resident_max_supported(void) {
#ifdef DMOE_HAVE_CUDA
    return dmoe__backend_cuda.resident ? dmoe__backend_cuda.resident->max_tokens : 0;
#else
    return 0;
#endif
}

void dmoe_resident_desc_init(dmoe_resident_desc *desc) {
    if (!desc) return;
    memset(desc, 0, sizeof *desc);
    desc->max_tokens = 0;
    desc->reject_nonfinite = 1;
    desc->shutdown_timeout_ms = DMOE_RESIDENT_DEFAULT_SHUTDOWN_MS;
}

dmoe_status dmoe_resident_create(dmoe_layer *layer, const dmoe_resident_desc *desc, dmoe_resident **out) {
    if (!layer) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "layer is NULL");
    dmoe_context *ctx = layer->ctx;
    dmoe__clear_error(ctx);
    if (!out) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "out is NULL");
    const dmoe_resident_iface *ri = ctx->backend->resident;
    if (!ri)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "backend '%s' has no resident mode (cuda only)",
                           ctx->backend->name);
    if (!layer->has_weights)
        return dmoe__error(ctx, DMOE_ERR_NO_WEIGHTS, "call dmoe_layer_set_weights first");
    if (layer->resident)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "the layer already has a resident kernel");
    if (layer->resident_stuck)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "a resident kernel of this layer did not stop when destroyed: the layer can only be "
                           "destroyed");
    if (ctx->backend->cache_slots && ctx->backend->cache_slots(layer) > 0)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "the layer has an expert cache: resident mode runs the fused kernel, which reads "
                           "every expert from the layer's weights (use a layer without a cache)");
    dmoe_resident_desc d;
    if (desc) d = *desc;
    else dmoe_resident_desc_init(&d);
    const int64_t cap = layer->desc.max_tokens < ri->max_tokens ? layer->desc.max_tokens : ri->max_tokens;
    if (d.max_tokens == 0) d.max_tokens = cap;
    if (d.max_tokens < 1 || d.max_tokens > cap)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "resident max_tokens must be in [1, %lld] (the layer's max_tokens %lld and the "
                           "fused kernel's %lld), or 0 for that; got %lld",
                           (long long)cap, (long long)layer->desc.max_tokens, (long long)ri->max_tokens,
                           (long long)d.max_tokens);
    if (d.reject_nonfinite != 0 && d.reject_nonfinite != 1)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "reject_nonfinite must be 0 or 1, got %d",
                           (int)d.reject_nonfinite);
    if (d.shutdown_timeout_ms < 1 || d.shutdown_timeout_ms > 600000)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "shutdown_timeout_ms must be in [1, 600000], got %d", (int)d.shutdown_timeout_ms);
    dmoe_resident *r = (dmoe_resident *)dmoe__calloc(ctx, 1, sizeof *r);
    if (!r) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cannot allocate the resident object");
    r->layer = layer;
    r->desc = d;
    dmoe_status st = ri->create(r);
    if (st != DMOE_OK) {
        dmoe__free(ctx, r);
        return st;
    }
    layer->resident = r;
    *out = r;
    return DMOE_OK;
}

void *dmoe_resident_input(dmoe_resident *r) { return r ? r->input : NULL; }
const void *dmoe_resident_output(const dmoe_resident *r) { return r ? r->output : NULL; }

dmoe_status dmoe_resident_submit(dmoe_resident *r, int64_t n_tokens) {
    if (!r) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "resident is NULL");
    dmoe_context *ctx = r->layer->ctx;
    dmoe__clear_error(ctx);
    if (n_tokens < 1)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_tokens must be >= 1, got %lld",
                           (long long)n_tokens);
    if (n_tokens > r->desc.max_tokens)
        return dmoe__error(ctx, DMOE_ERR_TOO_MANY_TOKENS, "n_tokens %lld exceeds the resident max_tokens %lld",
                           (long long)n_tokens, (long long)r->desc.max_tokens);
    return ctx->backend->resident->submit(r, n_tokens);
}

dmoe_status dmoe_resident_wait(dmoe_resident *r, int32_t timeout_ms) {
    if (!r) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "resident is NULL");
    dmoe_context *ctx = r->layer->ctx;
    dmoe__clear_error(ctx);
    if (timeout_ms < 0)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "timeout_ms must be >= 0 (there is no unbounded wait), got %d", (int)timeout_ms);
    return ctx->backend->resident->wait(r, timeout_ms);
}

dmoe_status dmoe_resident_query(const dmoe_resident *r, dmoe_resident_info *info) {
    if (!r) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "resident is NULL");
    dmoe_context *ctx = r->layer->ctx;
    dmoe__clear_error(ctx);
    if (!info) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "info is NULL");
    memset(info, 0, sizeof *info);
    ctx->backend->resident->query(r, info);
    return DMOE_OK;
}

dmoe_status dmoe_resident_destroy(dmoe_resident *r) {
    if (!r) return DMOE_OK;
    dmoe_layer *layer = r->layer;
    dmoe_context *ctx = layer->ctx;
    dmoe__clear_error(ctx);
    dmoe_status st = ctx->backend->resident->destroy(r);
    layer->resident = NULL;
    if (st == DMOE_ERR_TIMEOUT) layer->resident_stuck = 1; /* the kernel may still read the weights */
    dmoe__free(ctx, r);
    return st;
}
