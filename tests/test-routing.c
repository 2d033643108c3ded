/*
 * test-routing: the routing rules of dmoe.h, checked three ways.
 *
 * 1. Hand-computed cases (ids and weights worked out on paper, weights to
 *    16 digits): softmax with and without renormalisation, ties to the lower
 *    index, K = 1, K = E, E = 1, sigmoid with a correction bias that selects
 *    but does not weigh, DeepSeek-style grouped top-k (group score = sum of
 *    the top-2; a case where "max" or "sum of all" would keep other groups),
 *    ties among groups, routed_scaling_factor, NaN / +-inf logits and
 *    NaN / +-inf correction biases.
 *    Each case runs through dmoe__route_token, through the test's own oracle
 *    (so the oracle that test-backend-agree relies on is checked too), and
 *    through the public API (dmoe_route and dmoe_forward) on cpu-ref and on
 *    the backend under test, in f32, bf16 and f16. The public API gets exact
 *    logits from a router with H = 1 and x = 1: logit_e = router[e] * 1,
 *    which also carries NaN and inf through unchanged.
 * 2. Tokens are routed independently: T tokens with an identity router
 *    (H = E, x = the logits) against the oracle.
 * 3. Random configurations with many exact ties, non-finite logits and biases:
 *    dmoe__route_token against the oracle, ids exactly, weights to 1e-6.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmoe-impl.h"
#include "test-util.h"

enum { MAXE = 16 };

typedef struct route_case {
    const char *name;
    int32_t E, K;
    dmoe_scoring scoring;
    int32_t renormalize;
    int32_t n_group, topk_group;
    float scale;
    int32_t use_bias;
    int32_t f32_only; /* logits not exact in bf16/f16 */
    float logits[MAXE];
    float bias[MAXE];
    int32_t ids[MAXE];       /* expected, in rank order */
    double weights[MAXE];    /* expected */
} route_case;

#define SOFTMAX DMOE_SCORING_SOFTMAX
#define SIGMOID DMOE_SCORING_SIGMOID

static const route_case cases[] = {
    {"softmax top-2 renormalized (Mixtral)", 8, 2, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {0.5f, 2, -1, 3, 0.25f, 2, -3, 1}, {0}, {3, 1},
     {0.7310585786300048, 0.2689414213699951}},
    {"softmax top-2 not renormalized (OLMoE)", 8, 2, SOFTMAX, 0, 0, 0, 1.0f, 0, 0,
     {0.5f, 2, -1, 3, 0.25f, 2, -3, 1}, {0}, {3, 1},
     {0.490700870962381, 0.18051876219198076}},
    {"tie at the top-k boundary goes to the lower index", 5, 2, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {1, 5, 5, 5, 0}, {0}, {1, 2}, {0.5, 0.5}},
    {"all logits equal, renormalized", 6, 3, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {0.75f, 0.75f, 0.75f, 0.75f, 0.75f, 0.75f}, {0}, {0, 1, 2},
     {1.0 / 3, 1.0 / 3, 1.0 / 3}},
    {"all logits equal, not renormalized", 6, 3, SOFTMAX, 0, 0, 0, 1.0f, 0, 0,
     {0.75f, 0.75f, 0.75f, 0.75f, 0.75f, 0.75f}, {0}, {0, 1, 2},
     {1.0 / 6, 1.0 / 6, 1.0 / 6}},
    {"K=1 renormalized (tie for the top)", 4, 1, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {-1, 0.5f, 2.5f, 2.5f}, {0}, {2}, {1.0}},
    {"K=1 not renormalized", 4, 1, SOFTMAX, 0, 0, 0, 1.0f, 0, 0,
     {-1, 0.5f, 2.5f, 2.5f}, {0}, {2}, {0.4617801501663973}},
    {"K=E ranks every expert", 4, 4, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {0.5f, -1, 2, 0.5f}, {0}, {2, 0, 3, 1},
     {0.6684280241233108, 0.14914645207033286, 0.14914645207033286, 0.033279071736023486}},
    {"E=1 softmax", 1, 1, SOFTMAX, 0, 0, 0, 1.0f, 0, 0, {-7.5f}, {0}, {0}, {1.0}},
    {"E=1 sigmoid", 1, 1, SIGMOID, 0, 0, 0, 1.0f, 0, 0, {0.5f}, {0}, {0}, {0.6224593312018546}},
    {"routed_scaling_factor after renormalisation", 8, 2, SOFTMAX, 1, 0, 0, 2.5f, 0, 0,
     {0.5f, 2, -1, 3, 0.25f, 2, -3, 1}, {0}, {3, 1},
     {2.5 * 0.7310585786300048, 2.5 * 0.2689414213699951}},
    {"routed_scaling_factor without renormalisation (sigmoid)", 4, 2, SIGMOID, 0, 0, 0, 1.5f, 0,
     0, {1, -1, 0, 2}, {0}, {3, 0}, {1.3211956169668235, 1.0965878679450074}},
    {"sigmoid: correction bias selects, weights stay unbiased", 4, 2, SIGMOID, 1, 0, 0, 1.0f, 1,
     0, {2, 1, 0, -1}, {0, 0, 0.875f, 0}, {2, 0}, {0.36210968865333093, 0.6378903113466692}},
    {"sigmoid: negative bias moves the top-1", 2, 1, SIGMOID, 0, 0, 0, 1.0f, 1, 0, {1, 0.5f},
     {-0.5f, 0}, {1}, {0.6224593312018546}},
    /* Groups {0-3} {4-7} {8-11} {12-15}. Top-2 sums 1.072 1.245 1.124 1.000
     * keep groups 1 and 2; the max (g0, g1) or the sum of all (g2, g3) would
     * keep others. Plain top-4 would be 0, 12, 4, 5. */
    {"grouped top-k: group score is the sum of its top-2 (DeepSeek-V3)", 16, 4, SIGMOID, 1, 4, 2,
     2.5f, 0, 0, {3, -2, -2, -2, 0.5f, 0.5f, -3, -3, 0.25f, 0.25f, 0, 0, 0, 0, 0, 0}, {0},
     {4, 5, 8, 9},
     {0.656804515722894, 0.656804515722894, 0.593195484277106, 0.593195484277106}},
    /* The bias lifts group 3 (top-2 choice 0.8 + 0.65) above groups 1 and 2
     * and picks 13 and 14, but the weights use the unbiased scores (0.5). */
    {"grouped top-k with correction bias (DeepSeek-V3)", 16, 4, SIGMOID, 1, 4, 2, 2.5f, 1, 0,
     {3, -2, -2, -2, 0.5f, 0.5f, -3, -3, 0.25f, 0.25f, 0, 0, 0, 0, 0, 0},
     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.3f, 0.15f, 0}, {13, 14, 4, 5},
     {0.5568130466970165, 0.5568130466970165, 0.6931869533029837, 0.6931869533029837}},
    {"grouped: tie between groups goes to the lower group", 4, 2, SOFTMAX, 1, 2, 1, 1.0f, 0, 0,
     {0.5f, 1, 1, 0.5f}, {0}, {1, 0}, {0.6224593312018545, 0.3775406687981454}},
    {"grouped: groups of one expert (n_group = E)", 4, 2, SOFTMAX, 1, 4, 2, 1.0f, 0, 0,
     {1, 3, 2, 0}, {0}, {1, 2}, {0.7310585786300048, 0.2689414213699951}},
    {"grouped: topk_group = n_group keeps every group", 8, 2, SOFTMAX, 1, 4, 4, 1.0f, 0, 0,
     {0.5f, 2, -1, 3, 0.25f, 2, -3, 1}, {0}, {3, 1},
     {0.7310585786300048, 0.2689414213699951}},
    /* Non-finite logits: NaN is -FLT_MAX, +-inf are +-FLT_MAX. */
    {"all-NaN token: experts 0..K-1, equal weights (softmax)", 6, 2, SOFTMAX, 1, 0, 0, 1.0f, 0,
     0, {NAN, NAN, NAN, NAN, NAN, NAN}, {0}, {0, 1}, {0.5, 0.5}},
    {"all-NaN token, not renormalized: 1/E each", 6, 2, SOFTMAX, 0, 0, 0, 1.0f, 0, 0,
     {NAN, NAN, NAN, NAN, NAN, NAN}, {0}, {0, 1}, {1.0 / 6, 1.0 / 6}},
    {"all-NaN token, sigmoid: scores 0, sum 0 left as is", 4, 3, SIGMOID, 1, 0, 0, 1.0f, 0, 0,
     {NAN, NAN, NAN, NAN}, {0}, {0, 1, 2}, {0, 0, 0}},
    {"all-NaN token, grouped: groups 0.. and experts 0..K-1", 8, 2, SOFTMAX, 1, 4, 2, 1.0f, 0, 0,
     {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN}, {0}, {0, 1}, {0.5, 0.5}},
    {"all-NaN token with bias: the bias alone chooses", 4, 2, SIGMOID, 1, 0, 0, 1.0f, 1, 0,
     {NAN, NAN, NAN, NAN}, {0, 0.5f, 0.25f, 0}, {1, 2}, {0, 0}},
    {"NaN ranks below every finite logit", 4, 3, SOFTMAX, 1, 0, 0, 1.0f, 0, 0, {NAN, -1, -2, 1},
     {0}, {3, 1, 2}, {0.8437947344813395, 0.11419519938459448, 0.042010066134066056}},
    {"+inf clamps to FLT_MAX: two +inf tie, no NaN weights", 4, 2, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {1, INFINITY, 2, INFINITY}, {0}, {1, 3}, {0.5, 0.5}},
    {"-inf and NaN both become -FLT_MAX and tie", 3, 3, SOFTMAX, 1, 0, 0, 1.0f, 0, 0,
     {-INFINITY, NAN, 1}, {0}, {2, 0, 1}, {1, 0, 0}},
    {"sigmoid of +inf is 1, of NaN is 0", 3, 2, SIGMOID, 0, 0, 0, 1.0f, 0, 0, {NAN, INFINITY, 0},
     {0}, {1, 2}, {1.0, 0.5}},
    {"FLT_MAX ties with +inf (f32 only)", 3, 2, SOFTMAX, 1, 0, 0, 1.0f, 0, 1,
     {FLT_MAX, INFINITY, 0}, {0}, {0, 1}, {0.5, 0.5}},
    /* Non-finite correction biases are taken like logits (NaN -> -FLT_MAX, +-inf -> +-FLT_MAX):
     * every token still gets K distinct experts, NaN-biased ones last and by index. */
    {"NaN bias ranks last, ties by index; weights stay unbiased", 4, 3, SIGMOID, 0, 0, 0, 1.0f, 1, 0,
     {2, 1, 0, -1}, {NAN, 0, NAN, 0}, {1, 3, 0},
     {0.7310585786300049, 0.2689414213699951, 0.8807970779778823}},
    {"+inf bias is FLT_MAX (two tie by index), -inf bias is -FLT_MAX", 4, 2, SIGMOID, 1, 0, 0, 1.0f, 1,
     0, {0, 0, 0, 0}, {-INFINITY, INFINITY, 0, INFINITY}, {1, 3}, {0.5, 0.5}},
    /* groups {0,1} {2,3} {4,5} {6,7}, scores 0.5: choices -M -M | 0.5 -M | -M -M | 0.75 0.5
     * (M = FLT_MAX): groups 3 and 1 kept, then 6 and the tie 2 / 7 to the lower index */
    {"grouped with NaN biases: K distinct experts from the kept groups", 8, 2, SIGMOID, 1, 4, 2, 1.0f,
     1, 0, {0, 0, 0, 0, 0, 0, 0, 0}, {NAN, NAN, 0, NAN, NAN, NAN, 0.25f, 0}, {6, 2}, {0.5, 0.5}},
};

static dmoe_routing_desc case_routing(const route_case *c) {
    dmoe_routing_desc r;
    memset(&r, 0, sizeof r);
    r.scoring = c->scoring;
    r.renormalize = c->renormalize;
    r.n_group = c->n_group;
    r.topk_group = c->topk_group;
    r.routed_scaling_factor = c->scale;
    r.use_correction_bias = c->use_bias;
    return r;
}

static int weight_close(double got, double want, double rtol) {
    return isfinite(got) && fabs(got - want) <= rtol * fabs(want) + 1e-7;
}

/* ids/weights of one token against the case; ranked = require rank order,
 * else compare as a set of (id, weight) pairs. */
static void check_token(const route_case *c, const char *via, const int32_t *ids,
                        const double *w, int ranked, double rtol) {
    int32_t got_ids[MAXE], want_ids[MAXE];
    double got_w[MAXE], want_w[MAXE];
    for (int32_t k = 0; k < c->K; k++) {
        got_ids[k] = ids[k];
        got_w[k] = w[k];
        want_ids[k] = c->ids[k];
        want_w[k] = c->weights[k];
    }
    if (!ranked) { /* sort both by id (insertion sort, K is tiny) */
        for (int32_t i = 1; i < c->K; i++)
            for (int32_t j = i; j > 0; j--) {
                if (got_ids[j - 1] > got_ids[j]) {
                    int32_t ti = got_ids[j]; got_ids[j] = got_ids[j - 1]; got_ids[j - 1] = ti;
                    double tw = got_w[j]; got_w[j] = got_w[j - 1]; got_w[j - 1] = tw;
                }
                if (want_ids[j - 1] > want_ids[j]) {
                    int32_t ti = want_ids[j]; want_ids[j] = want_ids[j - 1]; want_ids[j - 1] = ti;
                    double tw = want_w[j]; want_w[j] = want_w[j - 1]; want_w[j - 1] = tw;
                }
            }
    }
    for (int32_t k = 0; k < c->K; k++) {
        TU_CHECKF(got_ids[k] == want_ids[k], "[%s] %s: id[%d] = %d, expected %d", c->name, via,
                  (int)k, (int)got_ids[k], (int)want_ids[k]);
        TU_CHECKF(weight_close(got_w[k], want_w[k], rtol),
                  "[%s] %s: weight[%d] = %.9g, expected %.9g", c->name, via, (int)k, got_w[k],
                  want_w[k]);
    }
}

static void check_direct(const route_case *c) {
    dmoe_routing_desc r = case_routing(c);
    double logits[MAXE], w[MAXE];
    float wf[MAXE];
    int32_t ids[MAXE];
    for (int32_t e = 0; e < c->E; e++) logits[e] = (double)c->logits[e];
    void *scratch = tu_malloc(dmoe__route_scratch_bytes(c->E));
    dmoe__route_token(&r, c->E, c->K, logits, c->use_bias ? c->bias : NULL, scratch, ids, wf);
    tu_free(scratch);
    for (int32_t k = 0; k < c->K; k++) w[k] = wf[k];
    check_token(c, "dmoe__route_token", ids, w, 1, 1e-6);
    /* The test's oracle must agree with the hand-computed answer as well. */
    tu_route_oracle(&r, c->E, c->K, logits, c->use_bias ? c->bias : NULL, ids, w, NULL);
    check_token(c, "tu_route_oracle", ids, w, 1, 1e-12);
}

/* y of one token through H = 1, F = 1 experts: FFN_e(1) = silu(2) * (e + 1) / 8. */
static double expected_y(const route_case *c) {
    double y = 0.0;
    for (int32_t k = 0; k < c->K; k++) y += c->weights[k] * (c->ids[k] + 1) / 8.0;
    return y * 2.0 / (1.0 + exp(-2.0));
}

static void check_public(const route_case *c, dmoe_context *ctx, dmoe_dtype dt) {
    enum { T = 3 };
    const int32_t E = c->E, K = c->K;
    char via[160];
    snprintf(via, sizeof via, "%s %s", dmoe_backend_name(dmoe_context_backend(ctx)),
             dmoe_dtype_name(dt));
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 1;
    d.ffn = 1;
    d.n_experts = E;
    d.top_k = K;
    d.routing = case_routing(c);
    d.act_dtype = d.weight_dtype = dt;
    d.max_tokens = T;
    size_t es = dmoe_dtype_size(dt);
    void *router = tu_malloc(E * es), *w13 = tu_malloc(2 * E * es), *w2 = tu_malloc(E * es);
    void *x = tu_malloc(T * es), *y = tu_malloc(T * es);
    for (int32_t e = 0; e < E; e++) {
        tu_set(router, dt, e, c->logits[e]);
        tu_set(w13, dt, 2 * e, 2.0);     /* gate row */
        tu_set(w13, dt, 2 * e + 1, 1.0); /* up row */
        tu_set(w2, dt, e, (e + 1) / 8.0);
    }
    for (int t = 0; t < T; t++) tu_set(x, dt, t, 1.0);
    dmoe_weights w;
    memset(&w, 0, sizeof w);
    w.router = router;
    w.w13 = w13;
    w.w2 = w2;
    w.correction_bias = c->use_bias ? c->bias : NULL;
    dmoe_layer *layer = NULL;
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK)) goto done;
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_set_weights(layer, &w), DMOE_OK)) goto done;

    int32_t ids[T * MAXE];
    float wts[T * MAXE];
    tu_fill_nan(ids, DMOE_DTYPE_I32, T * K);
    tu_fill_nan(wts, DMOE_DTYPE_F32, T * K);
    dmoe_tensor tx = dmoe_tensor_2d(x, dt, T, 1, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(wts, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(y, dt, T, 1, DMOE_DEVICE_HOST);
    int is_ref = dmoe_context_backend(ctx) == DMOE_BACKEND_CPU_REF;
    if (TU_CHECK_STATUS(ctx, dmoe_route(layer, &tx, &ti, &tw, NULL), DMOE_OK)) {
        for (int t = 0; t < T; t++) {
            double wd[MAXE];
            for (int32_t k = 0; k < K; k++) wd[k] = wts[t * K + k];
            char tok[200];
            snprintf(tok, sizeof tok, "%s dmoe_route token %d", via, t);
            check_token(c, tok, ids + t * K, wd, is_ref, 1e-5);
        }
    }
    tu_fill_nan(y, dt, T);
    if (TU_CHECK_STATUS(ctx, dmoe_forward(layer, &tx, &ty, NULL), DMOE_OK)) {
        double want = expected_y(c), tol = dt == DMOE_DTYPE_F32 ? 1e-5 : 1e-2;
        for (int t = 0; t < T; t++) {
            double got = tu_get(y, dt, t);
            TU_CHECKF(isfinite(got) && fabs(got - want) <= tol * fabs(want) + 1e-6,
                      "[%s] %s dmoe_forward token %d: y = %.7g, expected %.7g", c->name, via, t,
                      got, want);
        }
    }
done:
    dmoe_layer_destroy(layer);
    tu_free(router);
    tu_free(w13);
    tu_free(w2);
    tu_free(x);
    tu_free(y);
}

/* Many tokens with distinct logits through an identity router (H = E, f32,
 * so every backend computes the logits exactly): each token on its own. */
static void check_independent_tokens(dmoe_context *ctx, tu_rng *rng, int32_t E, int32_t K,
                                     const dmoe_routing_desc *r) {
    enum { T = 37 };
    const dmoe_dtype dt = DMOE_DTYPE_F32;
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = E;
    d.ffn = 4;
    d.n_experts = E;
    d.top_k = K;
    d.routing = *r;
    d.act_dtype = d.weight_dtype = dt;
    d.max_tokens = T;
    tu_model m;
    tu_model_random(&m, &d, rng);
    memset(m.router, 0, sizeof(float) * (size_t)(E * E));
    for (int32_t e = 0; e < E; e++) ((float *)m.router)[e * E + e] = 1.0f;
    float *x = (float *)tu_malloc(sizeof(float) * T * E);
    tu_fill_uniform(rng, x, dt, T * E, -3.0, 3.0);
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * T * K);
    float *wts = (float *)tu_malloc(sizeof(float) * T * K);
    tu_fill_nan(ids, DMOE_DTYPE_I32, T * K);
    tu_fill_nan(wts, DMOE_DTYPE_F32, T * K);
    const char *bname = dmoe_backend_name(dmoe_context_backend(ctx));
    dmoe_layer *layer = NULL;
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK)) goto done;
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_set_weights(layer, &m.weights), DMOE_OK)) goto done;
    dmoe_tensor tx = dmoe_tensor_2d(x, dt, T, E, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(wts, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
    if (!TU_CHECK_STATUS(ctx, dmoe_route(layer, &tx, &ti, &tw, NULL), DMOE_OK)) goto done;
    int skipped = 0;
    for (int t = 0; t < T; t++) {
        double logits[64], want_w[64], margin;
        int32_t want_ids[64];
        for (int32_t e = 0; e < E; e++) logits[e] = x[t * E + e];
        tu_route_oracle(r, E, K, logits, m.bias, want_ids, want_w, &margin);
        if (margin < 1e-6) { /* a float rounding could legitimately flip it */
            skipped++;
            continue;
        }
        /* Compare as sets: sort the oracle's pairs into the backend's order. */
        for (int32_t k = 0; k < K; k++) {
            int found = -1;
            for (int32_t j = 0; j < K; j++)
                if (want_ids[j] == ids[t * K + k]) found = j;
            TU_CHECKF(found >= 0, "%s E=%d K=%d token %d: id %d not in the oracle's choice", bname,
                      (int)E, (int)K, t, (int)ids[t * K + k]);
            if (found >= 0)
                TU_CHECKF(weight_close(wts[t * K + k], want_w[found], 1e-5),
                          "%s E=%d K=%d token %d: weight of expert %d = %.9g, expected %.9g",
                          bname, (int)E, (int)K, t, (int)ids[t * K + k], wts[t * K + k],
                          want_w[found]);
        }
    }
    TU_CHECKF(skipped < T / 4, "%s: %d of %d tokens too close to a tie to check", bname, skipped, T);
done:
    dmoe_layer_destroy(layer);
    tu_model_free(&m);
    tu_free(x);
    tu_free(ids);
    tu_free(wts);
}

/* dmoe__route_token against the oracle on random configurations whose logits
 * come from a small set (so ties are frequent) with NaN and +-inf mixed in. */
static void check_random_configs(tu_rng *rng, int n_configs) {
    static const double pool[] = {-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, NAN, INFINITY,
                                  -INFINITY, FLT_MAX, -FLT_MAX, 1e-3};
    const int n_pool = (int)(sizeof pool / sizeof pool[0]);
    int mismatches = 0;
    for (int it = 0; it < n_configs; it++) {
        int32_t E = (int32_t)tu_rand_int(rng, 1, 48);
        dmoe_routing_desc r;
        memset(&r, 0, sizeof r);
        r.scoring = tu_rand_int(rng, 0, 1) ? DMOE_SCORING_SIGMOID : DMOE_SCORING_SOFTMAX;
        r.renormalize = (int32_t)tu_rand_int(rng, 0, 1);
        r.use_correction_bias = (int32_t)tu_rand_int(rng, 0, 1);
        static const float scales[] = {1.0f, 2.5f, 0.5f, 16.0f};
        r.routed_scaling_factor = scales[tu_rand_int(rng, 0, 3)];
        int32_t per = E, G = 1;
        if (tu_rand_int(rng, 0, 1)) { /* a random divisor of E as the group count */
            G = (int32_t)tu_rand_int(rng, 1, E);
            while (E % G) G--;
            per = E / G;
        }
        r.n_group = G > 1 ? G : (int32_t)tu_rand_int(rng, 0, 1);
        r.topk_group = G > 1 ? (int32_t)tu_rand_int(rng, 1, G) : 0;
        int32_t reach = G > 1 ? r.topk_group * per : E;
        int32_t K = (int32_t)tu_rand_int(rng, 1, reach);
        double logits[48], want_w[48];
        float bias[48], got_w[48];
        int32_t got_ids[48], want_ids[48];
        int mode = (int)tu_rand_int(rng, 0, 2);
        for (int32_t e = 0; e < E; e++) {
            if (mode == 0) logits[e] = pool[tu_rand_int(rng, 0, n_pool - 1)];
            else if (mode == 1) logits[e] = pool[tu_rand_int(rng, 0, 7)]; /* finite ties */
            else logits[e] = tu_rand_range(rng, -4, 4);
            bias[e] = (float)(tu_rand_int(rng, 0, 3) * 0.125);
            if (mode == 0 && tu_rand_int(rng, 0, 3) == 0) /* non-finite biases too */
                bias[e] = (float)pool[tu_rand_int(rng, 8, 10)];
        }
        void *scratch = tu_malloc(dmoe__route_scratch_bytes(E));
        dmoe__route_token(&r, E, K, logits, r.use_correction_bias ? bias : NULL, scratch, got_ids,
                          got_w);
        tu_free(scratch);
        tu_route_oracle(&r, E, K, logits, r.use_correction_bias ? bias : NULL, want_ids, want_w,
                        NULL);
        int bad = 0;
        for (int32_t k = 0; k < K; k++) {
            if (got_ids[k] != want_ids[k]) bad = 1;
            if (!isfinite(got_w[k]) || fabs(got_w[k] - (float)want_w[k]) >
                                           1e-6 * fabs(want_w[k]) + 1e-30)
                bad = 1;
        }
        if (bad && mismatches++ < 5) {
            fprintf(stderr, "config %d: E=%d K=%d %s renorm=%d groups=%d/%d bias=%d scale=%g\n", it,
                    (int)E, (int)K, r.scoring ? "sigmoid" : "softmax", (int)r.renormalize,
                    (int)r.topk_group, (int)r.n_group, (int)r.use_correction_bias,
                    (double)r.routed_scaling_factor);
            for (int32_t k = 0; k < K; k++)
                fprintf(stderr, "  k=%d got %d %.9g want %d %.9g\n", (int)k, (int)got_ids[k],
                        (double)got_w[k], (int)want_ids[k], want_w[k]);
        }
        TU_CHECKF(!bad, "random config %d: dmoe__route_token differs from the oracle", it);
    }
    printf("  %d random configurations: %d mismatches\n", n_configs, mismatches);
}

int main(void) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    if (!tu_forced_isa_runs()) return TU_SKIP;
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);

    printf("hand-computed cases: dmoe__route_token and the test oracle\n");
    for (int i = 0; i < n_cases; i++) check_direct(&cases[i]);

    dmoe_backend backends[2] = {DMOE_BACKEND_CPU_REF, tu_backend_under_test()};
    int n_backends = backends[1] == DMOE_BACKEND_CPU_REF ? 1 : 2;
    for (int b = 0; b < n_backends; b++) {
        if (!tu_backend_implemented(backends[b])) {
            TU_CHECKF(0, "backend %s has no compute functions yet", dmoe_backend_name(backends[b]));
            continue;
        }
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = backends[b];
        dmoe_context *ctx = NULL;
        if (!TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx), DMOE_OK)) continue;
        printf("hand-computed cases through dmoe_route and dmoe_forward on %s\n",
               dmoe_backend_name(backends[b]));
        for (int i = 0; i < n_cases; i++) {
            check_public(&cases[i], ctx, DMOE_DTYPE_F32);
            if (!cases[i].f32_only) {
                check_public(&cases[i], ctx, DMOE_DTYPE_BF16);
                check_public(&cases[i], ctx, DMOE_DTYPE_F16);
            }
        }
        printf("independent tokens on %s\n", dmoe_backend_name(backends[b]));
        dmoe_routing_desc r;
        memset(&r, 0, sizeof r);
        r.scoring = DMOE_SCORING_SOFTMAX;
        r.renormalize = 1;
        r.routed_scaling_factor = 1.0f;
        check_independent_tokens(ctx, &rng, 8, 2, &r);
        r.renormalize = 0;
        check_independent_tokens(ctx, &rng, 60, 6, &r);
        r.scoring = DMOE_SCORING_SIGMOID;
        r.renormalize = 1;
        r.n_group = 8;
        r.topk_group = 3;
        r.use_correction_bias = 1;
        r.routed_scaling_factor = 2.5f;
        check_independent_tokens(ctx, &rng, 64, 6, &r);
        dmoe_context_destroy(ctx);
    }

    printf("random configurations: dmoe__route_token against the oracle\n");
    check_random_configs(&rng, 20000);
    return tu_finish("test-routing");
}
