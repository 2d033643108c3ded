/*
 * test-cuda-path: path selection of the cuda backend (desc.path, DMOE_PATH,
 * the AUTO heuristic of path-choice.c).
 *  - dmoe_layer_query_path: STAGED is staged at every T; FUSED is fused up to
 *    64 tokens and staged above; AUTO follows the bytes-per-token rule: staged
 *    on the small test shapes, fused at T=1,4 and staged at T>=5 on the
 *    deepseek-v3 and qwen3 shapes (query only: no weights needed);
 *  - each forward runs what the query says: with DMOE_PRINT_CONFIG=1 the
 *    fused launch prints "fused kernel:" on stderr (captured here), the staged
 *    path prints its router/plan/experts line; and it agrees with cpu-ref
 *    (rel L2 <= 1e-2) on the GPU's routing, output poisoned first;
 *  - DMOE_PATH overrides desc.path; an unknown value fails layer creation.
 * --quick: only the fused forwards at T=1 and 37 (for compute-sanitizer).
 */
#include <unistd.h>

#include "gpu-util.h"

static int quick;

/* Runs fn with stderr redirected into buf (NUL-terminated). */
static dmoe_status capture_stderr(char *buf, size_t n, dmoe_status (*fn)(void *), void *arg) {
    fflush(stderr);
    FILE *tmp = tmpfile();
    int saved = dup(2);
    if (!tmp || saved < 0) {
        buf[0] = 0;
        return fn(arg);
    }
    dup2(fileno(tmp), 2);
    dmoe_status st = fn(arg);
    cudaDeviceSynchronize();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t got = fread(buf, 1, n - 1, tmp);
    buf[got] = 0;
    fclose(tmp);
    return st;
}

typedef struct fwd_call {
    dmoe_layer *layer;
    dmoe_tensor *x, *y;
} fwd_call;

static dmoe_status do_forward(void *p) {
    fwd_call *c = (fwd_call *)p;
    return dmoe_forward(c->layer, c->x, c->y, NULL);
}

static void check_forward(tu_layer *l, const tu_model *m, int64_t T, tu_rng *rng, const char *name) {
    const dmoe_layer_desc *d = &m->desc;
    const int64_t H = d->hidden, K = d->top_k;
    const dmoe_dtype dt = d->act_dtype;
    const size_t xb = (size_t)(T * H) * dmoe_dtype_size(dt);
    dmoe_path want = DMOE_PATH_AUTO;
    TU_CHECK_STATUS(l->ctx, dmoe_layer_query_path(l->layer, T, &want), DMOE_OK);
    void *x = tu_malloc(xb), *y = tu_malloc(xb), *yref = tu_malloc(xb);
    tu_fill_uniform(rng, x, dt, T * H, -1.0, 1.0);
    void *d_x = gpu_upload(x, xb), *d_y = gpu_alloc(xb);
    gpu_poison(d_y, xb);
    dmoe_tensor tx = dmoe_tensor_2d(d_x, dt, T, H, 0), ty = dmoe_tensor_2d(d_y, dt, T, H, 0);
    fwd_call c = {l->layer, &tx, &ty};
    char log[8192];
    dmoe_status st = capture_stderr(log, sizeof log, do_forward, &c);
    TU_CHECKF(st == DMOE_OK, "%s T=%lld: forward: %s", name, (long long)T, dmoe_context_last_error(l->ctx));
    const int ran_fused = strstr(log, "fused kernel:") != NULL;
    const int ran_staged = strstr(log, "experts ") != NULL && strstr(log, "router ") != NULL;
    TU_CHECKF(ran_fused == (want == DMOE_PATH_FUSED) && ran_staged == (want == DMOE_PATH_STAGED),
              "%s T=%lld: query says %s but the forward printed:\n%s", name, (long long)T, dmoe_path_name(want), log);
    gpu_download(y, d_y, xb);
    /* cpu-ref on the GPU's routing */
    int32_t *d_ids = (int32_t *)gpu_alloc(sizeof(int32_t) * (size_t)(T * K));
    float *d_w = (float *)gpu_alloc(sizeof(float) * (size_t)(T * K));
    dmoe_tensor ti = dmoe_tensor_2d(d_ids, DMOE_DTYPE_I32, T, K, 0);
    dmoe_tensor tw = dmoe_tensor_2d(d_w, DMOE_DTYPE_F32, T, K, 0);
    TU_CHECK_STATUS(l->ctx, dmoe_route(l->layer, &tx, &ti, &tw, NULL), DMOE_OK);
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
    float *w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
    gpu_download(ids, d_ids, sizeof(int32_t) * (size_t)(T * K));
    gpu_download(w, d_w, sizeof(float) * (size_t)(T * K));
    TU_CHECK(tu_reference_experts(m, x, T, ids, w, yref) == DMOE_OK);
    char what[128];
    snprintf(what, sizeof what, "  %s T=%lld ran %s", name, (long long)T, ran_fused ? "fused" : "staged");
    TU_CHECK(tu_compare(what, y, dt, yref, dt, T, H, NULL, 1e-2));
    gpu_free(d_x); gpu_free(d_y); gpu_free(d_ids); gpu_free(d_w);
    tu_free(x); tu_free(y); tu_free(yref); tu_free(ids); tu_free(w);
}

static void run_shape(const char *name, dmoe_layer_desc base, tu_rng *rng) {
    tu_model m;
    gpu_model g;
    tu_model_random(&m, &base, rng);
    gpu_model_upload(&g, &m);
    const dmoe_path paths[3] = {DMOE_PATH_AUTO, DMOE_PATH_STAGED, DMOE_PATH_FUSED};
    const int64_t Ts[4] = {1, 16, 64, 65};
    for (int pi = quick ? 2 : 0; pi < 3; pi++) {
        dmoe_layer_desc d = base;
        d.path = paths[pi];
        m.desc = d;
        tu_layer l;
        if (gpu_layer_open(&l, &d, &g) != DMOE_OK) {
            TU_CHECK(0);
            continue;
        }
        for (int ti = 0; ti < 4; ti++) {
            dmoe_path p = DMOE_PATH_AUTO;
            TU_CHECK_STATUS(l.ctx, dmoe_layer_query_path(l.layer, Ts[ti], &p), DMOE_OK);
            const dmoe_path want = paths[pi] == DMOE_PATH_FUSED && Ts[ti] <= 64 ? DMOE_PATH_FUSED : DMOE_PATH_STAGED;
            TU_CHECKF(p == want, "%s path %s T=%lld: query %s, expected %s", name, dmoe_path_name(paths[pi]),
                      (long long)Ts[ti], dmoe_path_name(p), dmoe_path_name(want));
        }
        char nm[64];
        snprintf(nm, sizeof nm, "%s/%s", name, dmoe_path_name(paths[pi]));
        if (quick) {
            check_forward(&l, &m, 1, rng, nm);
            check_forward(&l, &m, 37, rng, nm);
        } else {
            for (int ti = 0; ti < 4; ti++) check_forward(&l, &m, Ts[ti], rng, nm);
        }
        tu_layer_close(&l);
    }
    m.desc = base;
    gpu_model_free(&g);
    tu_model_free(&m);
}

/* AUTO on a large layer (query only): fused for T <= 4, staged above (path-choice.c). */
static void check_auto(dmoe_context *ctx, dmoe_layer *layer, const char *name, const int64_t *Ts, int n) {
    for (int i = 0; i < n; i++) {
        const dmoe_path want = Ts[i] <= 4 ? DMOE_PATH_FUSED : DMOE_PATH_STAGED;
        dmoe_path p = DMOE_PATH_AUTO;
        TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, Ts[i], &p), DMOE_OK);
        TU_CHECKF(p == want, "%s auto T=%lld: %s, expected %s", name, (long long)Ts[i], dmoe_path_name(p),
                  dmoe_path_name(want));
    }
}

int main(int argc, char **argv) {
    if (gpu_skip("test-cuda-path")) return TU_SKIP;
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    unsetenv("DMOE_PATH");
    setenv("DMOE_PRINT_CONFIG", "1", 1);
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());

    dmoe_layer_desc a;
    dmoe_layer_desc_init(&a);
    a.hidden = 256;
    a.ffn = 128;
    a.n_experts = 16;
    a.top_k = 4;
    a.max_tokens = 96;
    run_shape("small", a, &rng);

    dmoe_layer_desc b = a;
    b.hidden = 200;
    b.ffn = 72;
    b.n_experts = 12;
    b.top_k = 3;
    b.n_shared_experts = 1;
    b.shared_ffn = 40;
    b.routing.scoring = DMOE_SCORING_SIGMOID;
    b.routing.n_group = 4;
    b.routing.topk_group = 2;
    run_shape("odd", b, &rng);

    if (!quick) {
        /* AUTO on the deepseek-v3 shape (query only) */
        dmoe_layer_desc ds;
        dmoe_layer_desc_init(&ds);
        ds.hidden = 7168;
        ds.ffn = 2048;
        ds.n_experts = 256;
        ds.top_k = 8;
        ds.n_shared_experts = 1;
        ds.shared_ffn = 2048;
        ds.routing.scoring = DMOE_SCORING_SIGMOID;
        ds.routing.n_group = 8;
        ds.routing.topk_group = 4;
        ds.routing.use_correction_bias = 1;
        ds.routing.routed_scaling_factor = 2.5f;
        ds.max_tokens = 96;
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = DMOE_BACKEND_CUDA;
        dmoe_context *ctx = NULL;
        TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx), DMOE_OK);
        dmoe_layer *layer = NULL;
        if (ctx) TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &ds, &layer), DMOE_OK);
        if (layer) {
            /* path-choice.c: fused for T <= 4 on layers this large, staged above */
            const int64_t Ts[4] = {1, 4, 5, 65};
            check_auto(ctx, layer, "deepseek-v3", Ts, 4);
            dmoe_layer_destroy(layer);
            layer = NULL;
            /* qwen3-30b-a3b shape: fused at T=1 and 4, staged at 5 and 16 */
            dmoe_layer_desc qw;
            dmoe_layer_desc_init(&qw);
            qw.hidden = 2048;
            qw.ffn = 768;
            qw.n_experts = 128;
            qw.top_k = 8;
            qw.max_tokens = 32;
            TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &qw, &layer), DMOE_OK);
            if (layer) {
                const int64_t Tq[4] = {1, 4, 5, 16};
                check_auto(ctx, layer, "qwen3", Tq, 4);
                dmoe_layer_destroy(layer);
                layer = NULL;
            }
            /* the environment overrides desc.path */
            setenv("DMOE_PATH", "staged", 1);
            TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &ds, &layer), DMOE_OK);
            if (layer) {
                dmoe_path p = DMOE_PATH_AUTO;
                TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, 1, &p), DMOE_OK);
                TU_CHECK(p == DMOE_PATH_STAGED);
                dmoe_layer_destroy(layer);
                layer = NULL;
            }
            setenv("DMOE_PATH", "fastest", 1);
            TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &ds, &layer), DMOE_ERR_INVALID_ARGUMENT);
            TU_CHECK(layer == NULL);
            unsetenv("DMOE_PATH");
        }
        dmoe_context_destroy(ctx);
        printf("auto: deepseek-v3 and qwen3 shapes fused at T=1,4, staged at T>=5; DMOE_PATH overrides\n");
    }
    return tu_finish("test-cuda-path");
}
