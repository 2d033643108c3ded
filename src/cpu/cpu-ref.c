/*
 * cpu-ref.c: the reference backend, the oracle for every other path.
 *
 * The plainest code that is right: one token at a time, every dot product
 * accumulated in float64, weights widened element by element, no threads.
 *   route:   logits (E) = router (E, H) . x[t] (H), then dmoe__route_token
 *   experts: h (F) = silu(w13[e][0:F] . x) * (w13[e][F:2F] . x)
 *            y[t] += weight * (w2[e] (H, F) . h), summed in k order,
 *            plus the shared experts (optionally gated by sigmoid(gate . x)).
 * y is rounded to the activation dtype once, at the end.
 */
#include "../dmoe-impl.h"

typedef struct ref_layer {
    double *xd;     /* (H) the token, widened */
    double *logits; /* (E) */
    double *h;      /* (max(F, Fs)) */
    double *acc;    /* (H) */
    void *route_scratch;
    int32_t *ids;   /* (K) */
    float *wts;     /* (K) */
} ref_layer;

static void ref_layer_fini(dmoe_layer *layer) {
    ref_layer *r = (ref_layer *)layer->backend_data;
    if (!r) return;
    dmoe_context *ctx = layer->ctx;
    dmoe__free(ctx, r->xd);
    dmoe__free(ctx, r->logits);
    dmoe__free(ctx, r->h);
    dmoe__free(ctx, r->acc);
    dmoe__free(ctx, r->route_scratch);
    dmoe__free(ctx, r->ids);
    dmoe__free(ctx, r->wts);
    dmoe__free(ctx, r);
    layer->backend_data = NULL;
}

static dmoe_status ref_layer_init(dmoe_layer *layer) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    ref_layer *r = (ref_layer *)dmoe__calloc(ctx, 1, sizeof *r);
    if (!r) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu-ref: layer state");
    layer->backend_data = r;
    /* shared_ffn means something only with shared experts (it is not validated otherwise). */
    int64_t fmax = d->n_shared_experts > 0 && d->shared_ffn > d->ffn ? d->shared_ffn : d->ffn;
    r->xd = (double *)dmoe__calloc(ctx, (size_t)d->hidden, sizeof(double));
    r->logits = (double *)dmoe__calloc(ctx, (size_t)d->n_experts, sizeof(double));
    r->h = (double *)dmoe__calloc(ctx, (size_t)fmax, sizeof(double));
    r->acc = (double *)dmoe__calloc(ctx, (size_t)d->hidden, sizeof(double));
    r->route_scratch = dmoe__malloc(ctx, dmoe__route_scratch_bytes(d->n_experts));
    r->ids = (int32_t *)dmoe__calloc(ctx, (size_t)d->top_k, sizeof(int32_t));
    r->wts = (float *)dmoe__calloc(ctx, (size_t)d->top_k, sizeof(float));
    if (!r->xd || !r->logits || !r->h || !r->acc || !r->route_scratch || !r->ids || !r->wts) {
        ref_layer_fini(layer);
        return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu-ref: workspace");
    }
    return DMOE_OK;
}

/* sum_i w[i] * v[i] in float64; w is a row of weights in dtype dt. */
static double dot_row(const void *w, dmoe_dtype dt, int64_t row, int64_t n, const double *v) {
    double s = 0.0;
    const int64_t base = row * n;
    for (int64_t i = 0; i < n; i++) s += (double)dmoe__load_f32(w, dt, base + i) * v[i];
    return s;
}

static void load_token(const dmoe_layer *layer, ref_layer *r, const void *x, int64_t t) {
    const int64_t H = layer->desc.hidden;
    for (int64_t i = 0; i < H; i++) r->xd[i] = dmoe__load_f32(x, layer->desc.act_dtype, t * H + i);
}

static void route_loaded_token(const dmoe_layer *layer, ref_layer *r) {
    const dmoe_layer_desc *d = &layer->desc;
    for (int32_t e = 0; e < d->n_experts; e++)
        r->logits[e] = dot_row(layer->w.router, d->weight_dtype, e, d->hidden, r->xd);
    dmoe__route_token(&d->routing, d->n_experts, d->top_k, r->logits, layer->w.correction_bias,
                      r->route_scratch, r->ids, r->wts);
}

/* acc += scale * FFN(x) for expert e of a weight set with F columns. */
static void add_expert(const dmoe_layer *layer, ref_layer *r, const void *w13, const void *w2,
                       int64_t F, int64_t e, double scale) {
    const int64_t H = layer->desc.hidden;
    const dmoe_dtype wt = layer->desc.weight_dtype;
    for (int64_t f = 0; f < F; f++) {
        double g = dot_row(w13, wt, e * 2 * F + f, H, r->xd);
        double u = dot_row(w13, wt, e * 2 * F + F + f, H, r->xd);
        r->h[f] = dmoe__silu(g) * u;
    }
    for (int64_t i = 0; i < H; i++) r->acc[i] += scale * dot_row(w2, wt, e * H + i, F, r->h);
}

static void finish_token(const dmoe_layer *layer, ref_layer *r, void *y, int64_t t) {
    const dmoe_layer_desc *d = &layer->desc;
    const int64_t H = d->hidden;
    for (int64_t i = 0; i < H; i++) r->acc[i] = 0.0;
    for (int32_t k = 0; k < d->top_k; k++)
        add_expert(layer, r, layer->w.w13, layer->w.w2, d->ffn, r->ids[k], (double)r->wts[k]);
    if (d->n_shared_experts > 0) {
        double gate = 1.0;
        if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID)
            gate = 1.0 / (1.0 + exp(-dot_row(layer->w.shared_gate, d->weight_dtype, 0, H, r->xd)));
        for (int32_t s = 0; s < d->n_shared_experts; s++)
            add_expert(layer, r, layer->w.shared_w13, layer->w.shared_w2, d->shared_ffn, s, gate);
    }
    for (int64_t i = 0; i < H; i++) dmoe__store_f32(y, d->act_dtype, t * H + i, (float)r->acc[i]);
}

static dmoe_status ref_route(dmoe_layer *layer, const void *x, int64_t n_tokens, int32_t *ids,
                             float *weights, void *stream) {
    (void)stream;
    ref_layer *r = (ref_layer *)layer->backend_data;
    const int32_t K = layer->desc.top_k;
    for (int64_t t = 0; t < n_tokens; t++) {
        load_token(layer, r, x, t);
        route_loaded_token(layer, r);
        memcpy(ids + t * K, r->ids, sizeof(int32_t) * (size_t)K);
        memcpy(weights + t * K, r->wts, sizeof(float) * (size_t)K);
    }
    return DMOE_OK;
}

static dmoe_status ref_experts(dmoe_layer *layer, const void *x, int64_t n_tokens,
                               const int32_t *ids, const float *weights, void *y, void *stream) {
    (void)stream;
    ref_layer *r = (ref_layer *)layer->backend_data;
    const int32_t K = layer->desc.top_k;
    for (int64_t t = 0; t < n_tokens; t++) {
        load_token(layer, r, x, t);
        memcpy(r->ids, ids + t * K, sizeof(int32_t) * (size_t)K);
        memcpy(r->wts, weights + t * K, sizeof(float) * (size_t)K);
        finish_token(layer, r, y, t);
    }
    return DMOE_OK;
}

static dmoe_status ref_forward(dmoe_layer *layer, const void *x, int64_t n_tokens, void *y,
                               void *stream) {
    (void)stream;
    ref_layer *r = (ref_layer *)layer->backend_data;
    for (int64_t t = 0; t < n_tokens; t++) {
        load_token(layer, r, x, t);
        route_loaded_token(layer, r);
        finish_token(layer, r, y, t);
    }
    return DMOE_OK;
}

const dmoe_backend_iface dmoe__backend_cpu_ref = {
    /* .name                  = */ "cpu-ref",
    /* .weight_align          = */ 1,
    /* .max_top_k             = */ DMOE_MAX_EXPERTS,
    /* .available             = */ NULL,
    /* .context_init          = */ NULL,
    /* .context_fini          = */ NULL,
    /* .layer_init            = */ ref_layer_init,
    /* .layer_fini            = */ ref_layer_fini,
    /* .layer_weights_changed = */ NULL,
    /* .route                 = */ ref_route,
    /* .experts               = */ ref_experts,
    /* .forward               = */ ref_forward,
    /* .query_path            = */ NULL,
    /* .resident              = */ NULL,
    /* .layer_load_arena      = */ NULL,
    /* .weights_offloaded     = */ NULL,
    /* .memory_stats          = */ NULL,
    /* .memory_trim           = */ NULL,
    /* .cache_enable          = */ NULL,
    /* .cache_prefetch        = */ NULL,
    /* .cache_stats           = */ NULL,
    /* .cache_table           = */ NULL,
    /* .cache_slots           = */ NULL,
    /* .miss_policy           = */ NULL,
    /* .miss_info             = */ NULL,
};
