/*
 * test-determinism: the same input gives the same bits.
 *
 * On cpu-ref and on the backend under test, for a bf16 layer with shared
 * experts and an f32 sigmoid + bias + grouped layer:
 *  - two forwards (and two routes, two experts calls) are bitwise equal;
 *  - the output does not depend on what y held before (NaN, zeros, garbage);
 *  - cpu-ref: forward is bitwise route + experts;
 *  - the backend under test gives bitwise the same forward, route and
 *    experts output with 1, 2, 3 and 5 worker threads (the cpu kernels
 *    reduce every element in one fixed order however the work is split);
 *  - a token's output within a batch of T equals its output computed alone
 *    (within the tolerance of test-backend-agree; whether it is bitwise is
 *    printed, not required);
 *  - two layers of one context run forwards concurrently from two threads
 *    and get the results of running alone.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

enum { T = 48 };

typedef struct bufs {
    void *x, *y;
    int32_t *ids;
    float *w;
    size_t xbytes;
} bufs;

static void run_all(const tu_layer *l, const tu_model *m, const void *x, int64_t n, void *y_fwd,
                    int32_t *ids, float *w, void *y_exp) {
    const dmoe_layer_desc *d = &m->desc;
    dmoe_tensor tx = dmoe_tensor_2d((void *)x, d->act_dtype, n, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor tyf = dmoe_tensor_2d(y_fwd, d->act_dtype, n, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor tye = dmoe_tensor_2d(y_exp, d->act_dtype, n, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, n, d->top_k, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(w, DMOE_DTYPE_F32, n, d->top_k, DMOE_DEVICE_HOST);
    tu_fill_nan(y_fwd, d->act_dtype, n * d->hidden);
    tu_fill_nan(y_exp, d->act_dtype, n * d->hidden);
    tu_fill_nan(ids, DMOE_DTYPE_I32, n * d->top_k);
    tu_fill_nan(w, DMOE_DTYPE_F32, n * d->top_k);
    TU_CHECK_STATUS(l->ctx, dmoe_forward(l->layer, &tx, &tyf, NULL), DMOE_OK);
    TU_CHECK_STATUS(l->ctx, dmoe_route(l->layer, &tx, &ti, &tw, NULL), DMOE_OK);
    TU_CHECK_STATUS(l->ctx, dmoe_experts(l->layer, &tx, &ti, &tw, &tye, NULL), DMOE_OK);
}

typedef struct outputs {
    void *y_fwd, *y_exp;
    int32_t *ids;
    float *w;
    size_t ybytes, rbytes;
} outputs;

static void outputs_alloc(outputs *o, const dmoe_layer_desc *d, int64_t n) {
    o->ybytes = (size_t)(n * d->hidden) * dmoe_dtype_size(d->act_dtype);
    o->rbytes = (size_t)(n * d->top_k) * 4;
    o->y_fwd = tu_malloc(o->ybytes);
    o->y_exp = tu_malloc(o->ybytes);
    o->ids = (int32_t *)tu_malloc(o->rbytes);
    o->w = (float *)tu_malloc(o->rbytes);
}

static void outputs_free(outputs *o) {
    tu_free(o->y_fwd);
    tu_free(o->y_exp);
    tu_free(o->ids);
    tu_free(o->w);
}

static void check_same(const char *what, const outputs *a, const outputs *b) {
    TU_CHECKF(memcmp(a->y_fwd, b->y_fwd, a->ybytes) == 0, "%s: forward outputs differ", what);
    TU_CHECKF(memcmp(a->ids, b->ids, a->rbytes) == 0, "%s: route ids differ", what);
    TU_CHECKF(memcmp(a->w, b->w, a->rbytes) == 0, "%s: route weights differ", what);
    TU_CHECKF(memcmp(a->y_exp, b->y_exp, a->ybytes) == 0, "%s: experts outputs differ", what);
}

typedef struct conc_job {
    const tu_layer *l;
    const tu_model *m;
    const void *x;
    outputs out;
    const outputs *want;
    int mismatches;
} conc_job;

static void *conc_run(void *arg) {
    conc_job *j = (conc_job *)arg;
    for (int rep = 0; rep < 4; rep++) {
        run_all(j->l, j->m, j->x, T, j->out.y_fwd, j->out.ids, j->out.w, j->out.y_exp);
        j->mismatches += memcmp(j->out.y_fwd, j->want->y_fwd, j->out.ybytes) != 0 ||
                         memcmp(j->out.y_exp, j->want->y_exp, j->out.ybytes) != 0 ||
                         memcmp(j->out.ids, j->want->ids, j->out.rbytes) != 0;
    }
    return NULL;
}

static void check_layer(const char *name, const dmoe_layer_desc *d, dmoe_backend b, tu_rng *rng) {
    printf("%s on %s\n", name, dmoe_backend_name(b));
    tu_model m;
    tu_model_random(&m, d, rng);
    const size_t es = dmoe_dtype_size(d->act_dtype);
    void *x = tu_malloc((size_t)(T * d->hidden) * es);
    tu_fill_uniform(rng, x, d->act_dtype, T * d->hidden, -1, 1);
    outputs o1, o2;
    outputs_alloc(&o1, d, T);
    outputs_alloc(&o2, d, T);
    tu_layer l;
    if (!TU_CHECK_STATUS(NULL, tu_layer_open(&l, b, 2, &m), DMOE_OK)) goto done;

    /* Twice the same. */
    run_all(&l, &m, x, T, o1.y_fwd, o1.ids, o1.w, o1.y_exp);
    TU_CHECK(tu_count_nonfinite(o1.y_fwd, d->act_dtype, T * d->hidden) == 0);
    run_all(&l, &m, x, T, o2.y_fwd, o2.ids, o2.w, o2.y_exp);
    check_same("second run", &o1, &o2);

    /* y's previous contents do not matter. */
    dmoe_tensor tx = dmoe_tensor_2d(x, d->act_dtype, T, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(o2.y_fwd, d->act_dtype, T, d->hidden, DMOE_DEVICE_HOST);
    memset(o2.y_fwd, 0, o2.ybytes);
    TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_OK);
    TU_CHECKF(memcmp(o1.y_fwd, o2.y_fwd, o1.ybytes) == 0, "forward into a zeroed y differs");
    memset(o2.y_fwd, 0x7b, o2.ybytes);
    TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_OK);
    TU_CHECKF(memcmp(o1.y_fwd, o2.y_fwd, o1.ybytes) == 0, "forward into a garbage y differs");

    if (b == DMOE_BACKEND_CPU_REF)
        TU_CHECKF(memcmp(o1.y_fwd, o1.y_exp, o1.ybytes) == 0,
                  "cpu-ref forward is not bitwise route + experts");

    /* Worker thread counts. */
    if (b != DMOE_BACKEND_CPU_REF) {
        static const int32_t counts[] = {1, 3, 5};
        for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
            tu_layer lt;
            if (!TU_CHECK_STATUS(NULL, tu_layer_open(&lt, b, counts[i], &m), DMOE_OK)) continue;
            TU_CHECK(dmoe_context_n_threads(lt.ctx) == counts[i]);
            run_all(&lt, &m, x, T, o2.y_fwd, o2.ids, o2.w, o2.y_exp);
            char what[64];
            snprintf(what, sizeof what, "%d threads against 2", (int)counts[i]);
            check_same(what, &o1, &o2);
            tu_layer_close(&lt);
        }
    }

    /* A token alone against the same token in the batch. */
    {
        const double tol = d->act_dtype == DMOE_DTYPE_F32 ? 1e-5 : 1e-2;
        int bitwise = 1;
        outputs one;
        outputs_alloc(&one, d, 1);
        static const int64_t toks[] = {0, 17, T - 1};
        for (size_t i = 0; i < 3; i++) {
            const int64_t t = toks[i];
            run_all(&l, &m, (char *)x + (size_t)(t * d->hidden) * es, 1, one.y_fwd, one.ids, one.w,
                    one.y_exp);
            char what[64];
            snprintf(what, sizeof what, "token %lld alone vs in batch", (long long)t);
            const void *yb = (char *)o1.y_fwd + (size_t)(t * d->hidden) * es;
            TU_CHECK(tu_compare(what, one.y_fwd, d->act_dtype, yb, d->act_dtype, 1, d->hidden, NULL, tol));
            bitwise &= memcmp(one.y_fwd, yb, one.ybytes) == 0;
        }
        printf("  outputs are %sbitwise independent of the batch\n", bitwise ? "" : "NOT ");
        outputs_free(&one);
    }

    /* Two layers of one context, used from two threads at once. */
    {
        tu_layer l2 = {l.ctx, NULL};
        if (TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, d, &l2.layer), DMOE_OK) &&
            TU_CHECK_STATUS(l.ctx, dmoe_layer_set_weights(l2.layer, &m.weights), DMOE_OK)) {
            conc_job jobs[2] = {{&l, &m, x, {0}, &o1, 0}, {&l2, &m, x, {0}, &o1, 0}};
            pthread_t th;
            outputs_alloc(&jobs[0].out, d, T);
            outputs_alloc(&jobs[1].out, d, T);
            int started = pthread_create(&th, NULL, conc_run, &jobs[1]) == 0;
            conc_run(&jobs[0]);
            if (started) pthread_join(th, NULL);
            TU_CHECKF(started, "cannot start a thread");
            TU_CHECKF(jobs[0].mismatches == 0 && jobs[1].mismatches == 0,
                      "concurrent layers: %d and %d runs differ from the single run",
                      jobs[0].mismatches, jobs[1].mismatches);
            outputs_free(&jobs[0].out);
            outputs_free(&jobs[1].out);
        }
        dmoe_layer_destroy(l2.layer);
    }
    tu_layer_close(&l);
done:
    tu_free(x);
    outputs_free(&o1);
    outputs_free(&o2);
    tu_model_free(&m);
}

int main(void) {
    tu_rng rng;
    const uint64_t seed = tu_seed();
    if (!tu_forced_isa_runs()) return TU_SKIP;
    dmoe_backend backends[2] = {DMOE_BACKEND_CPU_REF, tu_backend_under_test()};
    int n_backends = backends[1] == DMOE_BACKEND_CPU_REF ? 1 : 2;
    for (int bi = 0; bi < n_backends; bi++) {
        if (!tu_backend_implemented(backends[bi])) {
            TU_CHECKF(0, "backend %s has no compute functions yet", dmoe_backend_name(backends[bi]));
            continue;
        }
        tu_rng_init(&rng, seed);
        dmoe_layer_desc d;
        dmoe_layer_desc_init(&d);
        d.hidden = 320;
        d.ffn = 192;
        d.n_experts = 16;
        d.top_k = 4;
        d.n_shared_experts = 1;
        d.shared_ffn = 128;
        d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
        d.max_tokens = T;
        check_layer("bf16, softmax, gated shared expert", &d, backends[bi], &rng);
        d.act_dtype = d.weight_dtype = DMOE_DTYPE_F32;
        d.shared_gate = DMOE_SHARED_GATE_NONE;
        d.routing.scoring = DMOE_SCORING_SIGMOID;
        d.routing.use_correction_bias = 1;
        d.routing.n_group = 4;
        d.routing.topk_group = 2;
        d.routing.routed_scaling_factor = 2.5f;
        check_layer("f32, sigmoid + bias + grouped, shared expert", &d, backends[bi], &rng);
    }
    return tu_finish("test-determinism");
}
