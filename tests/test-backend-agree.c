/*
 * test-backend-agree: the backend under test (cpu) against the oracle
 * (cpu-ref) on a grid of layer shapes, routing modes and dtypes, in the
 * manner of ggml's test-backend-ops.
 *
 * For every case and token count T:
 *  - dmoe_experts with cpu-ref's own routing: the numeric comparison, by
 *    relative L2 error (f32: 1e-5, bf16/f16: 1e-2). Using the reference's
 *    routing means a near-tie in routing cannot fail the comparison;
 *  - dmoe_route: every id in [0, E) and distinct within its token, every
 *    weight finite; the chosen set and its weights equal the reference's
 *    except on tokens whose routing margin (test-util.h, tu_route_oracle)
 *    is below what the dtype's rounding can flip;
 *  - dmoe_forward: compared like dmoe_experts on the tokens with a safe margin;
 *  - on the smaller cases, dmoe_experts with caller routing that repeats
 *    experts within a token and has negative and zero weights;
 *  - outputs are poisoned with NaN (ids with INT32_MIN) before each call,
 *    and every output element must come back finite; x must be unchanged.
 *
 * The cpu backend reads DMOE_CPU_ISA (scalar, avx2, avx512bf16) when a
 * context is created; tests/CMakeLists.txt registers this test once per
 * value. A value the machine cannot run makes the test skip (exit 77) if
 * the backend refuses the context with DMOE_ERR_BACKEND_UNAVAILABLE or
 * DMOE_ERR_UNSUPPORTED.
 *
 * `test-backend-agree --large` runs the one large case instead (H=2880,
 * F=1408, E=60, K=6, T=512, bf16): the reference is computed once and each
 * ISA (all of them, unless DMOE_CPU_ISA is set) is compared with it; the
 * slow scalar kernels run dmoe_route and dmoe_experts only there. Under
 * AddressSanitizer the reference covers every 8th token and only the default
 * ISA runs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

/* Short names for the table below (its enum fields are plain ints). */
enum { F32 = DMOE_DTYPE_F32, BF16 = DMOE_DTYPE_BF16, F16 = DMOE_DTYPE_F16 };
enum { SOFTMAX = DMOE_SCORING_SOFTMAX, SIGMOID = DMOE_SCORING_SIGMOID };
enum { GATE = DMOE_SHARED_GATE_SIGMOID };

typedef struct agree_case {
    const char *name;
    int64_t H, F;
    int32_t E, K, S;
    int64_t Fs;
    int gate;    /* dmoe_shared_gate */
    int scoring; /* dmoe_scoring */
    int32_t renormalize, n_group, topk_group;
    float scale;
    int32_t bias;
    int act, wt; /* dmoe_dtype */
    int64_t Ts[5]; /* token counts, 0-terminated */
} agree_case;

static const agree_case grid[] = {
    /* name                                H     F    E  K  S  Fs  gate  scoring rn ng tg scale b  act   wt     T */
    {"tiny odd (H=17 F=5 E=3 K=2)",        17,   5,   3, 2, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F32,  F32,  {1, 2, 7, 33}},
    {"tiny odd (H=17 F=5 E=3 K=2)",        17,   5,   3, 2, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, BF16, BF16, {1, 2, 7, 33}},
    {"tiny odd (H=17 F=5 E=3 K=2)",        17,   5,   3, 2, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F16,  F16,  {1, 2, 7, 33}},
    {"H=F=1, E=2, K=1",                    1,    1,   2, 1, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F32,  F32,  {1, 5}},
    {"H=F=1, E=2, K=1",                    1,    1,   2, 1, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, BF16, BF16, {1, 5}},
    {"K=E=4, not renormalized",            24,   12,  4, 4, 0, 0,  0,    SOFTMAX, 0, 0, 0, 1.0f, 0, BF16, BF16, {1, 9}},
    {"E=K=1",                              40,   24,  1, 1, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F16,  F16,  {3}},
    {"shared experts, plain (S=2)",        64,   32,  8, 2, 2, 48, 0,    SOFTMAX, 0, 0, 0, 1.0f, 0, BF16, BF16, {1, 33}},
    {"shared experts, plain (S=2)",        64,   32,  8, 2, 2, 48, 0,    SOFTMAX, 0, 0, 0, 1.0f, 0, F32,  F32,  {7}},
    {"shared expert, sigmoid gate",        96,   40,  16, 4, 1, 64, GATE, SOFTMAX, 0, 0, 0, 1.0f, 0, F16,  F16,  {1, 33}},
    {"shared expert, sigmoid gate",        96,   40,  16, 4, 1, 64, GATE, SOFTMAX, 0, 0, 0, 1.0f, 0, BF16, BF16, {7}},
    {"shared expert, sigmoid gate",        96,   40,  16, 4, 1, 64, GATE, SOFTMAX, 0, 0, 0, 1.0f, 0, F32,  F32,  {7}},
    {"sigmoid+bias+grouped (DeepSeek-V3)", 128,  64,  32, 4, 1, 64, 0,    SIGMOID, 1, 8, 4, 2.5f, 1, BF16, BF16, {1, 33, 100}},
    {"sigmoid+bias+grouped (DeepSeek-V3)", 128,  64,  32, 4, 1, 64, 0,    SIGMOID, 1, 8, 4, 2.5f, 1, F32,  F32,  {7}},
    {"sigmoid+bias+grouped (DeepSeek-V3)", 128,  64,  32, 4, 1, 64, 0,    SIGMOID, 1, 8, 4, 2.5f, 1, F16,  F16,  {7}},
    {"odd sizes (H=257 F=129 E=9 K=3)",    257,  129, 9, 3, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, BF16, BF16, {33}},
    {"odd sizes (H=257 F=129 E=9 K=3)",    257,  129, 9, 3, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F16,  F16,  {7}},
    {"odd sizes (H=257 F=129 E=9 K=3)",    257,  129, 9, 3, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F32,  F32,  {7}},
    {"several chunks (cpu: <= 1024 tokens each)", 64, 32, 8, 2, 1, 16, 0,   SIGMOID, 1, 4, 2, 1.0f, 1, BF16, BF16, {1025, 2100}},
    {"mixed dtypes: f32 x, bf16 weights",  64,   32,  8, 2, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F32,  BF16, {7}},
    {"mixed dtypes: bf16 x, f32 weights",  64,   32,  8, 2, 0, 0,  0,    SOFTMAX, 1, 0, 0, 1.0f, 0, BF16, F32,  {7}},
    {"H=2880 F=1408 E=60 K=6",             2880, 1408, 60, 6, 0, 0, 0,    SOFTMAX, 1, 0, 0, 1.0f, 0, BF16, BF16, {1, 7, 33}},
    {"H=2880 F=1408 E=60 K=6",             2880, 1408, 60, 6, 0, 0, 0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F32,  F32,  {1}},
    {"H=2880 F=1408 E=60 K=6",             2880, 1408, 60, 6, 0, 0, 0,    SOFTMAX, 1, 0, 0, 1.0f, 0, F16,  F16,  {2}},
};

static const agree_case large_case = {
    "H=2880 F=1408 E=60 K=6 T=512", 2880, 1408, 60, 6, 0, 0, 0, SOFTMAX, 1, 0, 0, 1.0f, 0, BF16,
    BF16, {512}};

static int n_compared_isas; /* ISA runs that were not skipped */

static double out_tol(const agree_case *c) {
    return c->act == F32 && c->wt == F32 ? 1e-5 : 1e-2;
}
/* Smallest routing margin (relative) that the dtype's rounding cannot flip. */
static double margin_tol(const agree_case *c) {
    return c->act == F32 && c->wt == F32 ? 1e-4 : 2e-3;
}

static dmoe_layer_desc case_desc(const agree_case *c, int64_t max_tokens) {
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = c->H;
    d.ffn = c->F;
    d.n_experts = c->E;
    d.top_k = c->K;
    d.n_shared_experts = c->S;
    d.shared_ffn = c->Fs;
    d.shared_gate = (dmoe_shared_gate)c->gate;
    d.routing.scoring = (dmoe_scoring)c->scoring;
    d.routing.renormalize = c->renormalize;
    d.routing.n_group = c->n_group;
    d.routing.topk_group = c->topk_group;
    d.routing.routed_scaling_factor = c->scale;
    d.routing.use_correction_bias = c->bias;
    d.act_dtype = (dmoe_dtype)c->act;
    d.weight_dtype = (dmoe_dtype)c->wt;
    d.max_tokens = max_tokens;
    return d;
}

static int set_isa(const char *isa) {
    if (!isa) return 0;
    if (strcmp(isa, "auto") == 0) return unsetenv("DMOE_CPU_ISA");
    return setenv("DMOE_CPU_ISA", isa, 1);
}

typedef struct ref_data {
    int64_t T;
    void *x, *x_snap;
    unsigned char *row_ok;      /* margin safe and reference computed */
    unsigned char *row_sampled; /* reference computed */
    int32_t *ids;               /* (T, K) reference routing */
    float *w;
    double *margin;
    void *y;                    /* (T, H) reference output of dmoe_experts(ids, w) */
    int32_t *c_ids;             /* caller routing with repeats, or NULL */
    float *c_w;
    void *c_y;
} ref_data;

/* The reference output for the rows picked by row_sampled, through a compact copy. */
static dmoe_status sampled_reference(const tu_model *m, const ref_data *r, const int32_t *ids,
                                     const float *w, void *y) {
    const int64_t H = m->desc.hidden, K = m->desc.top_k;
    const size_t es = dmoe_dtype_size(m->desc.act_dtype);
    int64_t n = 0;
    for (int64_t t = 0; t < r->T; t++) n += r->row_sampled[t];
    if (n == r->T) return tu_reference_experts(m, r->x, r->T, ids, w, y);
    void *xs = tu_malloc((size_t)(n * H) * es), *ys = tu_malloc((size_t)(n * H) * es);
    int32_t *is = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(n * K));
    float *ws = (float *)tu_malloc(sizeof(float) * (size_t)(n * K));
    for (int64_t t = 0, j = 0; t < r->T; t++) {
        if (!r->row_sampled[t]) continue;
        memcpy((char *)xs + (size_t)(j * H) * es, (char *)r->x + (size_t)(t * H) * es, (size_t)H * es);
        memcpy(is + j * K, ids + t * K, sizeof(int32_t) * (size_t)K);
        memcpy(ws + j * K, w + t * K, sizeof(float) * (size_t)K);
        j++;
    }
    dmoe_status st = tu_reference_experts(m, xs, n, is, ws, ys);
    for (int64_t t = 0, j = 0; t < r->T; t++) {
        if (!r->row_sampled[t]) continue;
        memcpy((char *)y + (size_t)(t * H) * es, (char *)ys + (size_t)(j * H) * es, (size_t)H * es);
        j++;
    }
    tu_free(xs);
    tu_free(ys);
    tu_free(is);
    tu_free(ws);
    return st;
}

static int make_reference(const agree_case *c, const tu_model *m, tu_layer *ref, int64_t T,
                          int stride, tu_rng *rng, ref_data *r) {
    const int64_t H = c->H, K = c->K, E = c->E;
    const size_t es = dmoe_dtype_size(c->act);
    memset(r, 0, sizeof *r);
    r->T = T;
    r->x = tu_malloc((size_t)(T * H) * es);
    r->x_snap = tu_malloc((size_t)(T * H) * es);
    tu_fill_uniform(rng, r->x, c->act, T * H, -1.0, 1.0);
    memcpy(r->x_snap, r->x, (size_t)(T * H) * es);
    r->row_ok = (unsigned char *)tu_malloc((size_t)T);
    r->row_sampled = (unsigned char *)tu_malloc((size_t)T);
    r->ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
    r->w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
    r->margin = (double *)tu_malloc(sizeof(double) * (size_t)T);
    r->y = tu_malloc((size_t)(T * H) * es);
    tu_fill_nan(r->y, c->act, T * H);

    dmoe_tensor tx = dmoe_tensor_2d(r->x, c->act, T, H, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(r->ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(r->w, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
    if (!TU_CHECK_STATUS(ref->ctx, dmoe_route(ref->layer, &tx, &ti, &tw, NULL), DMOE_OK)) return 0;

    /* Margins from float64 logits; the reference's routing must match the
     * test's oracle wherever the token is not an exact tie. */
    double *logits = (double *)tu_malloc(sizeof(double) * (size_t)(T * E));
    int32_t *o_ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)K);
    double *o_w = (double *)tu_malloc(sizeof(double) * (size_t)K);
    tu_router_logits(m, r->x, T, logits);
    int64_t n_unsafe = 0;
    for (int64_t t = 0; t < T; t++) {
        tu_route_oracle(&m->desc.routing, c->E, c->K, logits + t * E, m->bias, o_ids, o_w,
                        &r->margin[t]);
        r->row_sampled[t] = stride <= 1 || t % stride == 0 || t == T - 1;
        r->row_ok[t] = r->row_sampled[t] && r->margin[t] >= margin_tol(c);
        n_unsafe += r->margin[t] < margin_tol(c);
        if (r->margin[t] < 1e-9) continue;
        for (int64_t k = 0; k < K; k++) {
            int found = 0;
            for (int64_t j = 0; j < K; j++) found |= o_ids[j] == r->ids[t * K + k];
            TU_CHECKF(found, "%s T=%lld: cpu-ref routes token %lld to %d, not chosen by the oracle",
                      c->name, (long long)T, (long long)t, (int)r->ids[t * K + k]);
        }
    }
    tu_free(logits);
    tu_free(o_ids);
    tu_free(o_w);
    if (n_unsafe)
        printf("  T=%lld: %lld tokens within %.0e of a routing tie (route and forward skip them)\n",
               (long long)T, (long long)n_unsafe, margin_tol(c));

    if (!TU_CHECK_STATUS(NULL, sampled_reference(m, r, r->ids, r->w, r->y), DMOE_OK)) return 0;

    /* Caller routing with repeated experts and signed weights, on small shapes. */
    if (c->H * c->F <= (1 << 16)) {
        r->c_ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
        r->c_w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
        r->c_y = tu_malloc((size_t)(T * H) * es);
        for (int64_t i = 0; i < T * K; i++) {
            r->c_ids[i] = i % K && tu_rand_int(rng, 0, 2) == 0 ? r->c_ids[i - 1]
                                                               : (int32_t)tu_rand_int(rng, 0, E - 1);
            r->c_w[i] = tu_rand_int(rng, 0, 5) == 0 ? 0.0f : (float)tu_rand_range(rng, -1.0, 1.5);
        }
        if (!TU_CHECK_STATUS(NULL, sampled_reference(m, r, r->c_ids, r->c_w, r->c_y), DMOE_OK))
            return 0;
    }
    return 1;
}

static void free_reference(ref_data *r) {
    tu_free(r->x);
    tu_free(r->x_snap);
    tu_free(r->row_ok);
    tu_free(r->row_sampled);
    tu_free(r->ids);
    tu_free(r->w);
    tu_free(r->margin);
    tu_free(r->y);
    tu_free(r->c_ids);
    tu_free(r->c_w);
    tu_free(r->c_y);
}

/* Route of the backend under test against the reference. */
static void check_route(const agree_case *c, const ref_data *r, const int32_t *ids,
                        const float *w, const char *tag) {
    const int64_t T = r->T, K = c->K;
    int64_t bad_tokens = 0, checked = 0;
    const double wtol = (c->act == F32 && c->wt == F32 ? 1e-4 : 1e-3) * c->scale;
    for (int64_t t = 0; t < T; t++) {
        int bad = 0;
        for (int64_t k = 0; k < K; k++) {
            int32_t e = ids[t * K + k];
            if (e < 0 || e >= c->E || !isfinite(w[t * K + k])) bad = 1;
            for (int64_t j = 0; j < k; j++) bad |= ids[t * K + j] == e;
        }
        TU_CHECKF(!bad, "%s: token %lld has invalid ids or non-finite weights", tag, (long long)t);
        if (bad || r->margin[t] < margin_tol(c)) continue;
        checked++;
        for (int64_t k = 0; k < K; k++) {
            int64_t found = -1;
            for (int64_t j = 0; j < K; j++)
                if (r->ids[t * K + j] == ids[t * K + k]) found = j;
            if (found < 0 || fabs(w[t * K + k] - r->w[t * K + found]) > wtol) {
                if (bad_tokens++ < 5)
                    printf("    token %lld: expert %d weight %.7g; reference has %s %.7g\n",
                           (long long)t, (int)ids[t * K + k], (double)w[t * K + k],
                           found < 0 ? "no such expert" : "weight",
                           found < 0 ? 0.0 : (double)r->w[t * K + found]);
                break;
            }
        }
    }
    printf("  %-44s %lld of %lld tokens compared, %lld differ\n", tag, (long long)checked,
           (long long)T, (long long)bad_tokens);
    TU_CHECKF(bad_tokens == 0, "%s: %lld tokens routed differently from cpu-ref", tag,
              (long long)bad_tokens);
    TU_CHECKF(T < 8 || checked * 2 >= T, "%s: only %lld of %lld tokens had a safe margin", tag,
              (long long)checked, (long long)T);
}

/* One ISA of the backend under test on one token count. Returns 0 when skipped. */
static int compare_backend(const agree_case *c, const tu_model *m, const ref_data *r,
                           const char *isa, int skip_forward) {
    const int64_t T = r->T, H = c->H, K = c->K;
    const size_t es = dmoe_dtype_size(c->act);
    const dmoe_backend b = tu_backend_under_test();
    const int mixed = c->act != c->wt;
    set_isa(isa);
    tu_layer l;
    dmoe_status st = tu_layer_open(&l, b, 0, m);
    if (st != DMOE_OK) {
        if (mixed && (st == DMOE_ERR_UNSUPPORTED_DTYPE || st == DMOE_ERR_UNSUPPORTED)) {
            printf("  %s does not support %s activations with %s weights: skipped\n",
                   dmoe_backend_name(b), dmoe_dtype_name(c->act), dmoe_dtype_name(c->wt));
            return 0;
        }
        if (getenv("DMOE_CPU_ISA") &&
            (st == DMOE_ERR_BACKEND_UNAVAILABLE || st == DMOE_ERR_UNSUPPORTED)) {
            printf("  DMOE_CPU_ISA=%s cannot run here: skipped\n", getenv("DMOE_CPU_ISA"));
            return 0;
        }
        TU_CHECKF(0, "%s: cannot open the layer on %s: %s", c->name, dmoe_backend_name(b),
                  dmoe_status_name(st));
        return 1;
    }
    char tag[160];
    const char *isa_name = getenv("DMOE_CPU_ISA") ? getenv("DMOE_CPU_ISA") : "auto";
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
    float *w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
    void *y = tu_malloc((size_t)(T * H) * es);
    dmoe_tensor tx = dmoe_tensor_2d(r->x, c->act, T, H, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(y, c->act, T, H, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(w, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);

    /* route */
    tu_fill_nan(ids, DMOE_DTYPE_I32, T * K);
    tu_fill_nan(w, DMOE_DTYPE_F32, T * K);
    snprintf(tag, sizeof tag, "[%s] T=%lld route", isa_name, (long long)T);
    if (TU_CHECK_STATUS(l.ctx, dmoe_route(l.layer, &tx, &ti, &tw, NULL), DMOE_OK))
        check_route(c, r, ids, w, tag);

    /* experts on the reference routing */
    dmoe_tensor rti = dmoe_tensor_2d(r->ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor rtw = dmoe_tensor_2d(r->w, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
    tu_fill_nan(y, c->act, T * H);
    snprintf(tag, sizeof tag, "[%s] T=%lld experts", isa_name, (long long)T);
    if (TU_CHECK_STATUS(l.ctx, dmoe_experts(l.layer, &tx, &rti, &rtw, &ty, NULL), DMOE_OK)) {
        TU_CHECKF(tu_count_nonfinite(y, c->act, T * H) == 0, "%s: non-finite output", tag);
        TU_CHECKF(tu_compare(tag, y, c->act, r->y, c->act, T, H, r->row_sampled, out_tol(c)),
                  "%s: output differs from cpu-ref", tag);
    }

    /* forward */
    tu_fill_nan(y, c->act, T * H);
    snprintf(tag, sizeof tag, "[%s] T=%lld forward", isa_name, (long long)T);
    if (!skip_forward && TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_OK)) {
        TU_CHECKF(tu_count_nonfinite(y, c->act, T * H) == 0, "%s: non-finite output", tag);
        TU_CHECKF(tu_compare(tag, y, c->act, r->y, c->act, T, H, r->row_ok, out_tol(c)),
                  "%s: output differs from cpu-ref", tag);
    }

    /* experts on caller routing with repeats */
    if (r->c_ids) {
        dmoe_tensor cti = dmoe_tensor_2d(r->c_ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
        dmoe_tensor ctw = dmoe_tensor_2d(r->c_w, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
        tu_fill_nan(y, c->act, T * H);
        snprintf(tag, sizeof tag, "[%s] T=%lld experts, repeated ids", isa_name, (long long)T);
        if (TU_CHECK_STATUS(l.ctx, dmoe_experts(l.layer, &tx, &cti, &ctw, &ty, NULL), DMOE_OK)) {
            TU_CHECKF(tu_count_nonfinite(y, c->act, T * H) == 0, "%s: non-finite output", tag);
            TU_CHECKF(tu_compare(tag, y, c->act, r->c_y, c->act, T, H, r->row_sampled, out_tol(c)),
                      "%s: output differs from cpu-ref", tag);
        }
    }
    TU_CHECKF(memcmp(r->x, r->x_snap, (size_t)(T * H) * es) == 0, "%s T=%lld: x was modified",
              c->name, (long long)T);
    tu_free(ids);
    tu_free(w);
    tu_free(y);
    tu_layer_close(&l);
    return 1;
}

static void run_case(const agree_case *c, uint64_t seed, const char *const *isas, int n_isas,
                     int stride) {
    int64_t max_t = 1;
    for (int i = 0; i < 5 && c->Ts[i]; i++) max_t = c->Ts[i] > max_t ? c->Ts[i] : max_t;
    printf("%s, %s x / %s weights%s%s\n", c->name, dmoe_dtype_name(c->act), dmoe_dtype_name(c->wt),
           c->S ? (c->gate ? ", gated shared" : ", shared") : "",
           c->n_group > 1 ? ", grouped" : "");
    dmoe_layer_desc d = case_desc(c, max_t);
    tu_rng rng;
    tu_rng_init(&rng, seed);
    tu_model m;
    tu_model_random(&m, &d, &rng);
    tu_layer ref;
    if (!TU_CHECK_STATUS(NULL, tu_layer_open(&ref, DMOE_BACKEND_CPU_REF, 1, &m), DMOE_OK)) {
        tu_model_free(&m);
        return;
    }
    for (int i = 0; i < 5 && c->Ts[i]; i++) {
        ref_data r;
        if (make_reference(c, &m, &ref, c->Ts[i], stride, &rng, &r))
            for (int j = 0; j < n_isas; j++) {
                /* The scalar kernels take ~20 s per pass over the large case:
                 * one pass (experts) is enough, the grid covers its forward. */
                int skip_forward = n_isas > 1 && isas[j] && strcmp(isas[j], "scalar") == 0;
                n_compared_isas += compare_backend(c, &m, &r, isas[j], skip_forward);
            }
        free_reference(&r);
    }
    tu_layer_close(&ref);
    tu_model_free(&m);
}

#if defined(__SANITIZE_ADDRESS__)
#define TU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_SANITIZED 1
#endif
#endif

int main(int argc, char **argv) {
    const int large = argc > 1 && strcmp(argv[1], "--large") == 0;
    const uint64_t seed = tu_seed();
    const dmoe_backend b = tu_backend_under_test();
    printf("backend under test: %s, DMOE_CPU_ISA=%s\n", dmoe_backend_name(b),
           getenv("DMOE_CPU_ISA") ? getenv("DMOE_CPU_ISA") : "(unset)");
    if (!tu_forced_isa_runs()) return TU_SKIP;
    if (!tu_backend_implemented(b)) {
        TU_CHECKF(0, "backend %s has no compute functions yet", dmoe_backend_name(b));
        return tu_finish(large ? "test-backend-agree --large" : "test-backend-agree");
    }
    if (large) {
        static const char *const all_isas[] = {"scalar", "avx2", "avx512bf16", "auto"};
        const char *const env_isa[] = {NULL};
        const int from_env = getenv("DMOE_CPU_ISA") != NULL;
#ifdef TU_SANITIZED
        /* Sanitized builds are ~5x slower: every 8th token of the reference,
         * and the default ISA only (the per-ISA registrations cover the rest). */
        const int stride = 8, n_isas = 1;
        const char *const *isas = from_env ? env_isa : all_isas + 3;
#else
        const int stride = 1, n_isas = from_env ? 1 : 4;
        const char *const *isas = from_env ? env_isa : all_isas;
#endif
        run_case(&large_case, seed, isas, n_isas, stride);
        set_isa("auto");
    } else {
        const char *const env_isa[] = {NULL};
        for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++)
            run_case(&grid[i], seed + 1000003u * i, env_isa, 1, 1);
    }
    if (n_compared_isas == 0 && tu_n_failed == 0) {
        printf("nothing compared: skipped\n");
        return TU_SKIP;
    }
    return tu_finish(large ? "test-backend-agree --large" : "test-backend-agree");
}
