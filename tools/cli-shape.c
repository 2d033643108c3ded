/*
 * cli-shape.c: layer shapes for the CLI (the options check and bench share,
 * their descriptions) and random weights for them.
 *
 * Weight scale: every matrix is uniform in +-sqrt(3 / fan_in), i.e. variance
 * 1/fan_in, so with unit-variance inputs the router logits, the gate and up
 * projections and the expert outputs all have a standard deviation near 1:
 * outputs are O(1), never all zeros, and a wrong row shows up in the error.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_shape_default(cli_shape *s) {
    memset(s, 0, sizeof *s);
    s->hidden = 1024;
    s->ffn = 512;
    s->n_experts = 16;
    s->top_k = 4;
    s->scoring = DMOE_SCORING_SOFTMAX;
    s->renormalize = 1;
    s->scaling = 1.0f;
    s->dtype = DMOE_DTYPE_BF16;
}

int cli_dtype_parse(const char *name, dmoe_dtype *out) {
    if (strcmp(name, "f32") == 0) *out = DMOE_DTYPE_F32;
    else if (strcmp(name, "bf16") == 0) *out = DMOE_DTYPE_BF16;
    else if (strcmp(name, "f16") == 0) *out = DMOE_DTYPE_F16;
    else return -1;
    return 0;
}

int cli_shape_parse(cli_args *a, cli_shape *s) {
    const int64_t max_e = DMOE_MAX_EXPERTS;
    if (cli_is(a, "--hidden")) {
        s->hidden = cli_value_int(a, 1, DMOE_MAX_DIM);
    } else if (cli_is(a, "--ffn")) {
        s->ffn = cli_value_int(a, 1, DMOE_MAX_DIM);
    } else if (cli_is(a, "--experts")) {
        s->n_experts = (int32_t)cli_value_int(a, 1, max_e);
    } else if (cli_is(a, "--topk")) {
        s->top_k = (int32_t)cli_value_int(a, 1, max_e);
    } else if (cli_is(a, "--shared")) {
        s->n_shared = (int32_t)cli_value_int(a, 0, max_e);
    } else if (cli_is(a, "--shared-ffn")) {
        s->shared_ffn = cli_value_int(a, 1, DMOE_MAX_DIM);
    } else if (cli_is(a, "--shared-gate")) {
        cli_no_value(a);
        s->shared_gate = 1;
    } else if (cli_is(a, "--no-renorm")) {
        cli_no_value(a);
        s->renormalize = 0;
    } else if (cli_is(a, "--bias")) {
        cli_no_value(a);
        s->bias = 1;
    } else if (cli_is(a, "--groups")) {
        s->n_group = (int32_t)cli_value_int(a, 0, max_e);
    } else if (cli_is(a, "--topk-groups")) {
        s->topk_group = (int32_t)cli_value_int(a, 0, max_e);
    } else if (cli_is(a, "--scale-factor")) {
        s->scaling = (float)cli_value_double(a, 1e-6, 1e6);
    } else if (cli_is(a, "--scoring")) {
        const char *v = cli_value(a);
        if (strcmp(v, "softmax") == 0) s->scoring = DMOE_SCORING_SOFTMAX;
        else if (strcmp(v, "sigmoid") == 0) s->scoring = DMOE_SCORING_SIGMOID;
        else cli_usage_error(a->cmd, "--scoring must be softmax or sigmoid, got '%s'", v);
    } else {
        return 0;
    }
    return 1;
}

void cli_shape_desc(const cli_shape *s, int64_t max_tokens, dmoe_layer_desc *d) {
    dmoe_layer_desc_init(d);
    d->hidden = s->hidden;
    d->ffn = s->ffn;
    d->n_experts = s->n_experts;
    d->top_k = s->top_k;
    d->n_shared_experts = s->n_shared;
    d->shared_ffn = s->n_shared ? (s->shared_ffn ? s->shared_ffn : s->ffn) : 0;
    d->shared_gate = s->shared_gate ? DMOE_SHARED_GATE_SIGMOID : DMOE_SHARED_GATE_NONE;
    d->routing.scoring = s->scoring;
    d->routing.renormalize = s->renormalize;
    d->routing.n_group = s->n_group;
    d->routing.topk_group = s->topk_group;
    d->routing.routed_scaling_factor = s->scaling;
    d->routing.use_correction_bias = s->bias;
    d->act_dtype = s->dtype;
    d->weight_dtype = s->dtype;
    d->max_tokens = max_tokens;
}

static int64_t shared_ffn_of(const cli_shape *s) { return s->shared_ffn ? s->shared_ffn : s->ffn; }

void cli_shape_str(const cli_shape *s, char *buf, size_t len) {
    int n = snprintf(buf, len, "H=%lld F=%lld E=%d K=%d", (long long)s->hidden, (long long)s->ffn,
                     (int)s->n_experts, (int)s->top_k);
    if (s->n_shared && n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, " S=%dx%lld%s", (int)s->n_shared,
                 (long long)shared_ffn_of(s), s->shared_gate ? "g" : "");
}

void cli_routing_str(const cli_shape *s, char *buf, size_t len) {
    int n = snprintf(buf, len, "%s,%s", s->scoring == DMOE_SCORING_SIGMOID ? "sigmoid" : "softmax",
                     s->renormalize ? "renorm" : "no-renorm");
    if (s->bias && n >= 0 && (size_t)n < len) n += snprintf(buf + n, len - (size_t)n, ",bias");
    if (s->n_group > 1 && n >= 0 && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, ",g%d/%d", (int)s->n_group, (int)s->topk_group);
    if (s->scaling != 1.0f && n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, ",x%g", (double)s->scaling);
}

size_t cli_shape_weight_bytes(const cli_shape *s) {
    const size_t es = dmoe_dtype_size(s->dtype), H = (size_t)s->hidden;
    size_t n = (size_t)s->n_experts * H                         /* router */
               + (size_t)s->n_experts * 3 * (size_t)s->ffn * H; /* w13 + w2 */
    if (s->n_shared) n += (size_t)s->n_shared * 3 * (size_t)shared_ffn_of(s) * H + H;
    return n * es + (s->bias ? (size_t)s->n_experts * sizeof(float) : 0);
}

/* ---- random weights ---- */

/* A new array of n random values of dt with variance 1/fan_in; NULL when out of memory. */
static void *alloc_fill(int64_t n, dmoe_dtype dt, double fan_in, uint64_t seed, float *copy) {
    void *p = cli_alloc((size_t)n * dmoe_dtype_size(dt));
    if (p) cli_fill_uniform(p, dt, n, sqrt(3.0 / fan_in), seed, copy);
    return p;
}

int cli_weights_create(const cli_shape *s, uint64_t seed, int keep_router_f32, cli_weights *w) {
    memset(w, 0, sizeof *w);
    const int64_t H = s->hidden, F = s->ffn, E = s->n_experts, S = s->n_shared;
    const int64_t Fs = shared_ffn_of(s);
    const dmoe_dtype dt = s->dtype;
    if (keep_router_f32) {
        w->router_f32 = (float *)cli_alloc((size_t)(E * H) * sizeof(float));
        if (!w->router_f32) goto oom;
    }
    /* Each array draws from its own sub-stream of the seed. */
    w->router = alloc_fill(E * H, dt, (double)H, cli_seed_mix(seed, 1), w->router_f32);
    w->w13 = alloc_fill(E * 2 * F * H, dt, (double)H, cli_seed_mix(seed, 2), NULL);
    w->w2 = alloc_fill(E * H * F, dt, (double)F, cli_seed_mix(seed, 3), NULL);
    if (!w->router || !w->w13 || !w->w2) goto oom;
    if (s->bias) {
        /* DeepSeek-V3's bias is small next to the sigmoid scores but does move
         * the choice: +-0.05 changes some picks without swamping the scores. */
        w->bias = (float *)cli_alloc((size_t)E * sizeof(float));
        if (!w->bias) goto oom;
        cli_fill_uniform(w->bias, DMOE_DTYPE_F32, E, 0.05, cli_seed_mix(seed, 4), NULL);
    }
    if (S > 0) {
        w->shared_w13 = alloc_fill(S * 2 * Fs * H, dt, (double)H, cli_seed_mix(seed, 5), NULL);
        w->shared_w2 = alloc_fill(S * H * Fs, dt, (double)Fs, cli_seed_mix(seed, 6), NULL);
        if (!w->shared_w13 || !w->shared_w2) goto oom;
        if (s->shared_gate) {
            w->shared_gate = alloc_fill(H, dt, (double)H, cli_seed_mix(seed, 7), NULL);
            if (!w->shared_gate) goto oom;
        }
    }
    return 0;
oom:
    fprintf(stderr, "dmoe: out of memory allocating %.1f MB of weights\n",
            (double)cli_shape_weight_bytes(s) / 1e6);
    cli_weights_destroy(w);
    return -1;
}

void cli_weights_destroy(cli_weights *w) {
    cli_free(w->router);
    cli_free(w->w13);
    cli_free(w->w2);
    cli_free(w->bias);
    cli_free(w->shared_w13);
    cli_free(w->shared_w2);
    cli_free(w->shared_gate);
    cli_free(w->router_f32);
    memset(w, 0, sizeof *w);
}

dmoe_weights cli_weights_views(const cli_weights *w) {
    dmoe_weights v;
    memset(&v, 0, sizeof v);
    v.router = w->router;
    v.w13 = w->w13;
    v.w2 = w->w2;
    v.correction_bias = w->bias;
    v.shared_w13 = w->shared_w13;
    v.shared_w2 = w->shared_w2;
    v.shared_gate = w->shared_gate;
    return v;
}

static size_t n_bytes(const cli_shape *s, int64_t n) {
    return (size_t)n * dmoe_dtype_size(s->dtype);
}

/* *dst = the backend's copy of host (left NULL when host is NULL). */
static int mirror(dmoe_backend be, const void *host, size_t bytes, const void **dst) {
    void *p = NULL;
    if (!host) return 0;
    if (cli_device_mirror(be, host, bytes, &p) != 0) return -1;
    *dst = p;
    return 0;
}

int cli_weights_on_backend(dmoe_backend be, const cli_shape *s, const cli_weights *w,
                           dmoe_weights *out) {
    const int64_t H = s->hidden, F = s->ffn, E = s->n_experts, S = s->n_shared;
    const int64_t Fs = shared_ffn_of(s);
    dmoe_weights v;
    memset(&v, 0, sizeof v);
    const void *bias = NULL;
    if (mirror(be, w->router, n_bytes(s, E * H), &v.router) ||
        mirror(be, w->w13, n_bytes(s, E * 2 * F * H), &v.w13) ||
        mirror(be, w->w2, n_bytes(s, E * H * F), &v.w2) ||
        mirror(be, w->bias, (size_t)E * sizeof(float), &bias) ||
        mirror(be, w->shared_w13, n_bytes(s, S * 2 * Fs * H), &v.shared_w13) ||
        mirror(be, w->shared_w2, n_bytes(s, S * H * Fs), &v.shared_w2) ||
        mirror(be, w->shared_gate, n_bytes(s, H), &v.shared_gate)) {
        v.correction_bias = (const float *)bias;
        cli_weights_release(be, &v, w);
        return -1;
    }
    v.correction_bias = (const float *)bias;
    *out = v;
    return 0;
}

void cli_weights_release(dmoe_backend be, dmoe_weights *v, const cli_weights *w) {
    cli_device_release(be, (void *)v->router, w->router);
    cli_device_release(be, (void *)v->w13, w->w13);
    cli_device_release(be, (void *)v->w2, w->w2);
    cli_device_release(be, (void *)v->correction_bias, w->bias);
    cli_device_release(be, (void *)v->shared_w13, w->shared_w13);
    cli_device_release(be, (void *)v->shared_w2, w->shared_w2);
    cli_device_release(be, (void *)v->shared_gate, w->shared_gate);
    memset(v, 0, sizeof *v);
}
