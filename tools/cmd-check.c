/*
 * cmd-check.c: `dmoe check`, every available backend against cpu-ref.
 *
 * For each case (a layer shape, routing and dtype) and token count, on fresh
 * random inputs:
 *   1. route:   the backend's dmoe_route must give cpu-ref's ids, in order,
 *               for every token, except where the decision is a near-tie in
 *               float64 (check-compare.c: token_margins); its weights must
 *               match on the tokens that matched;
 *   2. experts: the backend's dmoe_experts given cpu-ref's routing, against
 *               cpu-ref's output: the main numeric check, over every token;
 *   3. forward: the backend's dmoe_forward on the tokens whose routing matched.
 * Outputs are poisoned with NaN before each call, so an element the backend
 * never wrote fails as non-finite. Cases marked nonfinite feed tokens of NaN
 * and +-inf, whose routing dmoe.h defines exactly (no near-tie allowance).
 * cpu-ref runs on several layers at once (one per core, token slices), since
 * the oracle is single-threaded and the large cases would otherwise dominate.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

enum { MAX_TOKEN_COUNTS = 16, MAX_CASES = 32, MAX_REF_LAYERS = 64 };

typedef struct check_case {
    const char *label;
    cli_shape shape;
    unsigned dtypes; /* bit (1 << dmoe_dtype) per dtype to run */
    int64_t tokens[MAX_TOKEN_COUNTS];
    int n_tokens;
    int heavy;     /* skipped by --quick */
    int nonfinite; /* tokens 0, 1, 2 carry NaN, +inf, -inf */
} check_case;

typedef struct check_opts {
    uint64_t seed;
    int n_threads;
    double tol; /* 0: by dtype */
    double tie_eps;
    int quick;
    int have_backend;
    dmoe_backend backend;
} check_opts;

typedef struct check_totals {
    int pass, fail, skip;
} check_totals;

#define DT_BIT(dt) (1u << (unsigned)(dt))
#define ALL_DTYPES (DT_BIT(DMOE_DTYPE_F32) | DT_BIT(DMOE_DTYPE_BF16) | DT_BIT(DMOE_DTYPE_F16))

static double tolerance(const check_opts *o, dmoe_dtype dt) {
    if (o->tol > 0) return o->tol;
    return dt == DMOE_DTYPE_F32 ? 1e-5 : 1e-2;
}

/* ---- the default grid ---- */

static cli_shape mk(int64_t H, int64_t F, int32_t E, int32_t K) {
    cli_shape s;
    cli_shape_default(&s);
    s.hidden = H;
    s.ffn = F;
    s.n_experts = E;
    s.top_k = K;
    return s;
}

static void add(check_case *cases, int *n, const char *label, cli_shape s, unsigned dtypes,
                const int64_t *tokens, int n_tokens, int heavy, int nonfinite) {
    check_case *c = &cases[(*n)++];
    memset(c, 0, sizeof *c);
    c->label = label;
    c->shape = s;
    c->dtypes = dtypes;
    memcpy(c->tokens, tokens, sizeof(int64_t) * (size_t)n_tokens);
    c->n_tokens = n_tokens;
    c->heavy = heavy;
    c->nonfinite = nonfinite;
}

static int default_grid(check_case *cases) {
    static const int64_t t_std[] = {1, 7, 33}, t_small[] = {1, 7}, t_seven[] = {7};
    static const int64_t t_medium[] = {1, 16, 130}, t_four[] = {4}, t_five[] = {5};
    const unsigned f32 = DT_BIT(DMOE_DTYPE_F32), bf16 = DT_BIT(DMOE_DTYPE_BF16);
    const unsigned f16 = DT_BIT(DMOE_DTYPE_F16);
    int n = 0;
    cli_shape s;
    /* Odd sizes everywhere: nothing divides by a tile. */
    add(cases, &n, "odd-large", mk(2880, 1408, 60, 6), f32 | bf16, t_std, 3, 1, 0);
    add(cases, &n, "odd-large", mk(2880, 1408, 60, 6), f16, t_seven, 1, 1, 0);
    add(cases, &n, "tiny", mk(17, 5, 3, 2), ALL_DTYPES, t_std, 3, 0, 0);
    add(cases, &n, "k-equals-e", mk(33, 1, 5, 5), f32 | bf16, t_small, 2, 0, 0);
    /* H=1 in f32 only: each output is one dot product of a few terms whose sum
     * may cancel, so its relative error in bf16 measures cancellation, not
     * the backend (rounding the SwiGLU activations to bf16 is allowed). */
    add(cases, &n, "hidden-1", mk(1, 3, 4, 1), f32, t_small, 2, 0, 0);
    add(cases, &n, "medium", mk(1024, 512, 32, 4), bf16, t_medium, 3, 0, 0);
    s = mk(256, 96, 16, 4);
    s.n_shared = 2;
    s.shared_ffn = 160;
    add(cases, &n, "shared", s, f32 | bf16, t_std, 3, 0, 0);
    s = mk(192, 64, 12, 4);
    s.n_shared = 1;
    s.shared_ffn = 320;
    s.shared_gate = 1;
    s.renormalize = 0;
    add(cases, &n, "shared-gated", s, ALL_DTYPES, t_std, 3, 0, 0);
    s = mk(128, 80, 64, 8);
    s.renormalize = 0;
    add(cases, &n, "softmax-no-renorm", s, f32 | bf16, t_std, 3, 0, 0);
    s = mk(384, 128, 64, 8); /* DeepSeek-V3's routing on a small layer */
    s.scoring = DMOE_SCORING_SIGMOID;
    s.bias = 1;
    s.n_group = 8;
    s.topk_group = 4;
    s.scaling = 2.5f;
    s.n_shared = 1;
    s.shared_ffn = 128;
    add(cases, &n, "deepseek-like", s, ALL_DTYPES, t_std, 3, 0, 0);
    s = mk(100, 36, 10, 3);
    s.scoring = DMOE_SCORING_SIGMOID;
    s.renormalize = 0;
    s.bias = 1;
    s.scaling = 1.5f;
    add(cases, &n, "sigmoid-no-renorm", s, f32 | bf16, t_std, 3, 0, 0);
    s = mk(64, 32, 8, 4); /* groups of one expert: a group scores its top-1 */
    s.scoring = DMOE_SCORING_SIGMOID;
    s.n_group = 8;
    s.topk_group = 4;
    add(cases, &n, "groups-of-one", s, f32 | bf16, t_small, 2, 0, 0);
    add(cases, &n, "nonfinite", mk(64, 32, 8, 2), f32 | bf16, t_four, 1, 0, 1);
    s = mk(64, 32, 16, 4);
    s.scoring = DMOE_SCORING_SIGMOID;
    s.bias = 1;
    s.n_group = 4;
    s.topk_group = 2;
    add(cases, &n, "nonfinite-grouped", s, f32 | f16, t_five, 1, 0, 1);
    return n;
}

/* ---- one case ---- */

typedef struct ref_job {
    dmoe_layer **layers; /* one per thread */
    const void *x;       /* (T, H) */
    const int32_t *ids;  /* (T, K) */
    const float *wts;    /* (T, K) */
    void *y;             /* (T, H) */
    int64_t H, K;
    dmoe_dtype dt;
    dmoe_status st[MAX_REF_LAYERS];
} ref_job;

static void ref_experts_range(void *arg, int64_t begin, int64_t end, int tid) {
    ref_job *j = (ref_job *)arg;
    if (begin >= end) return;
    const size_t row0 = (size_t)(begin * j->H) * dmoe_dtype_size(j->dt);
    const int64_t n = end - begin, H = j->H, K = j->K;
    const int host = DMOE_DEVICE_HOST;
    dmoe_tensor x = dmoe_tensor_2d((char *)j->x + row0, j->dt, n, H, host);
    dmoe_tensor y = dmoe_tensor_2d((char *)j->y + row0, j->dt, n, H, host);
    dmoe_tensor ids = dmoe_tensor_2d((void *)(j->ids + begin * K), DMOE_DTYPE_I32, n, K, host);
    dmoe_tensor w = dmoe_tensor_2d((void *)(j->wts + begin * K), DMOE_DTYPE_F32, n, K, host);
    j->st[tid] = dmoe_experts(j->layers[tid], &x, &ids, &w, &y, NULL);
}

/* Everything one (case, dtype) needs, shared by its token counts. */
typedef struct case_env {
    const check_opts *o;
    const check_case *c;
    cli_shape s;
    dmoe_backend be;
    cli_weights w;
    dmoe_layer *ref[MAX_REF_LAYERS];
    int n_ref;
    dmoe_context *ref_ctx;
    dmoe_layer *layer; /* the backend's */
    dmoe_context *ctx;
} case_env;

/* Appends a detail line (printed under the result line). */
static void note(char *buf, size_t len, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void note(char *buf, size_t len, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

static void fmt_ids(char *buf, size_t len, const int32_t *ids, const float *w, int32_t K) {
    size_t used = 0;
    buf[0] = '\0';
    for (int32_t k = 0; k < K && used + 24 < len; k++)
        used += (size_t)snprintf(buf + used, len - used, "%s%d:%.4g", k ? " " : "", (int)ids[k],
                                 (double)w[k]);
}

static void token_logits(const case_env *env, const float *xf, int64_t t, double *logits) {
    const int64_t H = env->s.hidden;
    for (int32_t e = 0; e < env->s.n_experts; e++) {
        double acc = 0.0;
        for (int64_t h = 0; h < H; h++)
            acc += (double)env->w.router_f32[e * H + h] * (double)xf[t * H + h];
        logits[e] = acc;
    }
}

static int ids_sorted_equal(const int32_t *a, const int32_t *b, int32_t K) {
    for (int32_t i = 0; i < K; i++) {
        int found = 0;
        for (int32_t j = 0; j < K; j++) found |= a[i] == b[j];
        if (!found) return 0;
    }
    return 1;
}

static void *xalloc(size_t bytes) {
    void *p = cli_alloc(bytes);
    if (!p) {
        fprintf(stderr, "dmoe check: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

typedef enum call_kind { CALL_ROUTE, CALL_EXPERTS, CALL_FORWARD } call_kind;
static const char *const call_names[] = {"dmoe_route", "dmoe_experts", "dmoe_forward"};

/* One backend call on host buffers, through the device seam: route writes
 * ids and wts; experts reads them and writes y; forward writes y. */
static dmoe_status backend_call(case_env *env, call_kind kind, const void *x, int64_t T,
                                int32_t *ids, float *wts, void *y) {
    const dmoe_backend be = env->be;
    const int dev = cli_device_of(be);
    const int64_t H = env->s.hidden, K = env->s.top_k;
    const size_t xb = (size_t)(T * H) * dmoe_dtype_size(env->s.dtype);
    const size_t rb = (size_t)(T * K) * 4;
    void *dx = NULL, *dids = NULL, *dw = NULL, *dy = NULL;
    dmoe_status st = DMOE_ERR_UNSUPPORTED;
    if (cli_device_mirror(be, x, xb, &dx)) goto done;
    if (kind == CALL_ROUTE) {
        if (cli_device_output(be, ids, rb, &dids) || cli_device_output(be, wts, rb, &dw)) goto done;
    } else if (kind == CALL_EXPERTS) {
        if (cli_device_mirror(be, ids, rb, &dids) || cli_device_mirror(be, wts, rb, &dw)) goto done;
    }
    if (kind != CALL_ROUTE && cli_device_output(be, y, xb, &dy)) goto done;
    dmoe_tensor tx = dmoe_tensor_2d(dx, env->s.dtype, T, H, dev);
    dmoe_tensor ty = dmoe_tensor_2d(dy, env->s.dtype, T, H, dev);
    dmoe_tensor ti = dmoe_tensor_2d(dids, DMOE_DTYPE_I32, T, K, dev);
    dmoe_tensor tw = dmoe_tensor_2d(dw, DMOE_DTYPE_F32, T, K, dev);
    if (kind == CALL_ROUTE) st = dmoe_route(env->layer, &tx, &ti, &tw, NULL);
    else if (kind == CALL_EXPERTS) st = dmoe_experts(env->layer, &tx, &ti, &tw, &ty, NULL);
    else st = dmoe_forward(env->layer, &tx, &ty, NULL);
    if (st == DMOE_OK && cli_device_sync(be)) st = DMOE_ERR_UNSUPPORTED;
    if (st == DMOE_OK && kind == CALL_ROUTE &&
        (cli_device_download(be, ids, dids, rb) || cli_device_download(be, wts, dw, rb)))
        st = DMOE_ERR_UNSUPPORTED;
    if (st == DMOE_OK && kind != CALL_ROUTE && cli_device_download(be, y, dy, xb))
        st = DMOE_ERR_UNSUPPORTED;
done:
    cli_device_release(be, dx, x);
    cli_device_release(be, dids, ids);
    cli_device_release(be, dw, wts);
    cli_device_release(be, dy, y);
    return st;
}

/* Runs and judges one token count; returns 1 when it passes. */
static int check_tokens(case_env *env, int64_t T, uint64_t seed) {
    const cli_shape *s = &env->s;
    const int64_t H = s->hidden, K = s->top_k, E = s->n_experts;
    const dmoe_dtype dt = s->dtype;
    const size_t es = dmoe_dtype_size(dt);
    const double tol = tolerance(env->o, dt);
    const double t0 = cli_now_s();
    char details[4096] = "";

    void *x = xalloc((size_t)(T * H) * es);
    float *xf = (float *)xalloc((size_t)(T * H) * sizeof(float));
    const size_t rb = (size_t)(T * K) * 4;
    int32_t *ids_ref = (int32_t *)xalloc(rb), *ids_b = (int32_t *)xalloc(rb);
    float *w_ref = (float *)xalloc(rb), *w_b = (float *)xalloc(rb);
    void *y_ref = xalloc((size_t)(T * H) * es), *y_b = xalloc((size_t)(T * H) * es);
    unsigned char *matched = (unsigned char *)calloc((size_t)T, 1);
    double *logits = (double *)xalloc((size_t)E * sizeof(double));
    if (!matched) exit(1);

    /* Unit-variance inputs; nonfinite cases spoil tokens 0..2. */
    cli_fill_uniform(x, dt, T * H, sqrt(3.0), seed, xf);
    int64_t n_strict = 0;
    if (env->c->nonfinite) {
        const float specials[3] = {NAN, INFINITY, -INFINITY};
        for (int64_t t = 0; t < T && t < 3; t++, n_strict++) {
            for (int64_t h = 0; h < H; h++) {
                if (t > 0 && h != H / 2) continue; /* token 0: all NaN; 1, 2: one inf */
                float v = specials[t];
                xf[t * H + h] = v;
                if (dt == DMOE_DTYPE_F32) ((float *)x)[t * H + h] = v;
                else if (dt == DMOE_DTYPE_BF16) ((uint16_t *)x)[t * H + h] = cli_f32_to_bf16(v);
                else ((uint16_t *)x)[t * H + h] = cli_f32_to_f16(v);
            }
        }
    }

    int ok = 1;
    dmoe_status st;
    /* The reference: route, then experts on every core. */
    dmoe_tensor tx = dmoe_tensor_2d(x, dt, T, H, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids_ref, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(w_ref, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
    if ((st = dmoe_route(env->ref[0], &tx, &ti, &tw, NULL)) != DMOE_OK) {
        fprintf(stderr, "dmoe check: cpu-ref route: %s\n", dmoe_context_last_error(env->ref_ctx));
        exit(1);
    }
    ref_job rj;
    memset(&rj, 0, sizeof rj);
    rj.layers = env->ref;
    rj.x = x;
    rj.ids = ids_ref;
    rj.wts = w_ref;
    rj.y = y_ref;
    rj.H = H;
    rj.K = K;
    rj.dt = dt;
    cli_parallel_for(env->n_ref, T, ref_experts_range, &rj);
    for (int i = 0; i < env->n_ref; i++) {
        if (rj.st[i] != DMOE_OK) {
            fprintf(stderr, "dmoe check: cpu-ref experts: %s\n",
                    dmoe_context_last_error(env->ref_ctx));
            exit(1);
        }
    }

    /* 1. route */
    cmp_stats wst;
    cmp_init(&wst);
    int64_t n_match = 0, n_ties = 0, n_bad_route = 0, shown = 0;
    for (int64_t i = 0; i < T * K; i++) ids_b[i] = -1;
    cli_poison(w_b, DMOE_DTYPE_F32, T * K);
    st = backend_call(env, CALL_ROUTE, x, T, ids_b, w_b, NULL);
    if (st != DMOE_OK) {
        note(details, sizeof details, "    dmoe_route: %s\n", dmoe_context_last_error(env->ctx));
        ok = 0;
    }
    for (int64_t t = 0; t < T && st == DMOE_OK; t++) {
        const int32_t *ri = ids_ref + t * K, *bi = ids_b + t * K;
        const char *why = NULL;
        double margin = NAN; /* computed only for a plain difference */
        for (int64_t k = 0; k < K && !why; k++) {
            if (bi[k] < 0 || bi[k] >= E) why = "id out of range (unwritten?)";
            else if (!isfinite(w_b[t * K + k])) why = "non-finite weight (unwritten?)";
            for (int64_t j = 0; j < k && !why; j++)
                if (bi[j] == bi[k]) why = "an expert picked twice";
        }
        if (!why && memcmp(ri, bi, sizeof(int32_t) * (size_t)K) == 0) {
            matched[t] = 1;
            n_match++;
            for (int64_t k = 0; k < K; k++)
                cmp_add(&wst, w_ref[t * K + k], w_b[t * K + k], t * K + k);
            continue;
        }
        if (!why && t < n_strict) why = "differs on a non-finite token (defined exactly by dmoe.h)";
        if (!why) {
            double set_margin, order_margin;
            token_logits(env, xf, t, logits);
            token_margins(s, logits, env->w.bias, &set_margin, &order_margin);
            margin = ids_sorted_equal(ri, bi, (int32_t)K) ? order_margin : set_margin;
            if (margin < env->o->tie_eps) {
                n_ties++;
                continue;
            }
            why = "differs";
        }
        n_bad_route++;
        if (shown++ < 4) {
            char a[256], b[256], m[48] = "";
            fmt_ids(a, sizeof a, ri, w_ref + t * K, (int32_t)K);
            fmt_ids(b, sizeof b, bi, w_b + t * K, (int32_t)K);
            if (!isnan(margin)) snprintf(m, sizeof m, " (margin %.2e)", margin);
            note(details, sizeof details, "    route token %lld %s%s: ref [%s] got [%s]\n",
                 (long long)t, why, m, a, b);
        }
    }
    if (n_bad_route || !cmp_ok(&wst, tol)) ok = 0;

    /* 2. experts with the reference's routing, 3. forward. */
    cmp_stats est, fst, fother;
    cmp_init(&est);
    cmp_init(&fst);
    cmp_init(&fother);
    for (call_kind kind = CALL_EXPERTS; kind <= CALL_FORWARD; kind++) {
        cli_poison(y_b, dt, T * H);
        st = backend_call(env, kind, x, T, ids_ref, w_ref, y_b);
        if (st != DMOE_OK) {
            note(details, sizeof details, "    %s: %s\n", call_names[kind],
                 dmoe_context_last_error(env->ctx));
            ok = 0;
        } else if (kind == CALL_EXPERTS) {
            cmp_rows(&est, y_ref, y_b, dt, H, NULL, T);
        } else {
            cmp_rows(&fst, y_ref, y_b, dt, H, matched, T);
            /* Tokens routed differently: only that every value was written counts. */
            for (int64_t t = 0; t < T; t++) matched[t] = !matched[t];
            cmp_rows(&fother, y_ref, y_b, dt, H, matched, T);
        }
    }
    if (!cmp_ok(&est, tol) || !cmp_ok(&fst, tol) || fother.n_bad) ok = 0;
    if (est.ref2 == 0.0 && est.n > 0) {
        note(details, sizeof details, "    the reference output is all zeros: nothing is tested\n");
        ok = 0;
    }

    char shape[96], routing[96], route[48];
    cli_shape_str(s, shape, sizeof shape);
    cli_routing_str(s, routing, sizeof routing);
    snprintf(route, sizeof route, "%lld/%lld%s", (long long)n_match, (long long)T,
             n_ties ? "~" : "");
    printf("%-7s %-17s %-28s T=%-4lld %-4s %-30s route %-8s w %.1e | experts %.2e %.2e | forward "
           "%.2e %.2e | %s %.1fs\n",
           dmoe_backend_name(env->be), env->c->label, shape, (long long)T, dmoe_dtype_name(dt),
           routing, route, cmp_rel_l2(&wst), est.max_abs, cmp_rel_l2(&est), fst.max_abs,
           cmp_rel_l2(&fst), ok ? "PASS" : "FAIL", cli_now_s() - t0);
    if (n_ties)
        printf("    %lld token(s) routed differently at a near-tie (margin < %.0e): allowed\n",
               (long long)n_ties, env->o->tie_eps);
    if (!ok) {
        fputs(details, stdout);
        if (!cmp_ok(&wst, tol)) cmp_print_failure("route weights", &wst, K, tol);
        cmp_print_failure("experts", &est, H, tol);
        cmp_print_failure("forward", &fst, H, tol);
        if (fother.n_bad) cmp_print_failure("forward (near-tie tokens)", &fother, H, tol);
    }
    fflush(stdout);

    cli_free(x);
    cli_free(xf);
    cli_free(ids_ref);
    cli_free(ids_b);
    cli_free(w_ref);
    cli_free(w_b);
    cli_free(y_ref);
    cli_free(y_b);
    cli_free(logits);
    free(matched);
    return ok;
}

static int is_unsupported(dmoe_status st) {
    return st == DMOE_ERR_UNSUPPORTED || st == DMOE_ERR_UNSUPPORTED_DTYPE;
}

static void run_case(const check_opts *o, dmoe_backend be, dmoe_context *ref_ctx, dmoe_context *ctx,
                     const check_case *c, dmoe_dtype dt, uint64_t seed, check_totals *tot) {
    case_env env;
    memset(&env, 0, sizeof env);
    env.o = o;
    env.c = c;
    env.s = c->shape;
    env.s.dtype = dt;
    env.be = be;
    env.ref_ctx = ref_ctx;
    env.ctx = ctx;
    int64_t max_t = 1;
    for (int i = 0; i < c->n_tokens; i++) max_t = c->tokens[i] > max_t ? c->tokens[i] : max_t;
    char shape[96];
    cli_shape_str(&env.s, shape, sizeof shape);

    dmoe_layer_desc d;
    cli_shape_desc(&env.s, max_t, &d);
    dmoe_status st = dmoe_layer_create(ctx, &d, &env.layer);
    if (st != DMOE_OK) {
        int skip = is_unsupported(st);
        printf("%-7s %-17s %-28s %-4s %s: %s\n", dmoe_backend_name(be), c->label, shape,
               dmoe_dtype_name(dt), skip ? "SKIP" : "FAIL", dmoe_context_last_error(ctx));
        if (skip) tot->skip += c->n_tokens;
        else tot->fail += c->n_tokens;
        return;
    }
    if (cli_weights_create(&env.s, cli_seed_mix(seed, 1), 1, &env.w) != 0) exit(1);
    dmoe_weights host_views = cli_weights_views(&env.w), be_views;
    if (cli_weights_on_backend(be, &env.s, &env.w, &be_views) != 0) exit(1);
    st = dmoe_layer_set_weights(env.layer, &be_views);
    if (st != DMOE_OK) {
        printf("%-7s %-17s %-28s %-4s FAIL: dmoe_layer_set_weights: %s\n", dmoe_backend_name(be),
               c->label, shape, dmoe_dtype_name(dt), dmoe_context_last_error(ctx));
        tot->fail += c->n_tokens;
        goto cleanup;
    }
    env.n_ref = cli_online_cores();
    if (env.n_ref > MAX_REF_LAYERS) env.n_ref = MAX_REF_LAYERS;
    if (env.n_ref > max_t) env.n_ref = (int)max_t;
    for (int i = 0; i < env.n_ref; i++) {
        if (dmoe_layer_create(ref_ctx, &d, &env.ref[i]) != DMOE_OK ||
            dmoe_layer_set_weights(env.ref[i], &host_views) != DMOE_OK) {
            fprintf(stderr, "dmoe check: cpu-ref layer: %s\n", dmoe_context_last_error(ref_ctx));
            exit(1);
        }
    }
    for (int i = 0; i < c->n_tokens; i++) {
        if (check_tokens(&env, c->tokens[i], cli_seed_mix(seed, 100 + (uint64_t)i))) tot->pass++;
        else tot->fail++;
    }
cleanup:
    for (int i = 0; i < env.n_ref; i++) dmoe_layer_destroy(env.ref[i]);
    dmoe_layer_destroy(env.layer);
    cli_weights_release(be, &be_views, &env.w);
    cli_weights_destroy(&env.w);
}

static void check_help(FILE *f) {
    fprintf(f,
            "usage: dmoe check [--backend NAME] [--seed N] [--quick] [shape options]\n"
            "\n"
            "Runs every available backend (except cpu-ref, the oracle) against cpu-ref on fresh\n"
            "random inputs and prints one line per case:\n"
            "  backend, case, shape, tokens, dtype, routing,\n"
            "  route N/T  tokens routed exactly as cpu-ref ('~': others differed at a near-tie),\n"
            "  w          relative L2 error of the routing weights on those tokens,\n"
            "  experts    max abs and relative L2 error of dmoe_experts given cpu-ref's routing,\n"
            "  forward    the same for dmoe_forward, on the tokens routed exactly,\n"
            "  PASS/FAIL and the time. The exit status is 1 when any case fails.\n"
            "Outputs are poisoned with NaN before each call, so unwritten values fail.\n"
            "\n"
            "Without shape options it runs a default grid: odd sizes (H=2880 F=1408 E=60 K=6 at\n"
            "T=1,7,33; H=17 F=5 E=3 K=2; K=E; H=1), shared experts with and without a gate,\n"
            "softmax with and without renormalisation, sigmoid with bias, grouped top-k and\n"
            "scaling, tokens of NaN and inf, in f32, bf16 and f16. With any shape option it\n"
            "checks exactly that shape (other sizes default to H=1024 F=512 E=16 K=4).\n"
            "\n"
            "options:\n"
            "  --backend NAME     check only this backend (cpu, cuda; cpu-ref checks the oracle\n"
            "                     against itself)\n"
            "  --seed N           random seed (default: from the clock; printed)\n"
            "  --threads N        backend threads (default: all cores)\n"
            "  --quick            skip the large cases (for sanitizer builds and CI)\n"
            "  --tokens T1,T2,..  token counts (shape mode; default 1,7,33)\n"
            "  --dtype D1,D2,..   f32, bf16, f16 (shape mode; default all three)\n"
            "  --tol X            relative L2 tolerance (default 1e-5 for f32, 1e-2 for bf16/f16)\n"
            "  --tie-eps X        routing margin below which a token may route differently\n"
            "                     (default 1e-4)\n"
            "shape options:\n" CLI_SHAPE_HELP);
}

static int parse_dtype_list(cli_args *a) {
    const char *v = cli_value(a);
    char buf[64];
    if (strlen(v) >= sizeof buf) cli_usage_error(a->cmd, "--dtype list too long");
    strcpy(buf, v);
    unsigned mask = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        dmoe_dtype dt;
        if (cli_dtype_parse(tok, &dt) != 0)
            cli_usage_error(a->cmd, "--dtype takes f32, bf16, f16 (or a list), got '%s'", tok);
        mask |= DT_BIT(dt);
    }
    if (!mask) cli_usage_error(a->cmd, "--dtype needs a value");
    return (int)mask;
}

int cli_cmd_check(int argc, char **argv) {
    check_opts o;
    memset(&o, 0, sizeof o);
    o.tie_eps = 1e-4;
    int have_seed = 0, shape_mode = 0, n_tokens = 0;
    int64_t tokens[MAX_TOKEN_COUNTS];
    unsigned dtypes = 0;
    cli_shape shape;
    cli_shape_default(&shape);
    cli_args a;
    cli_args_init(&a, "check", argc, argv);
    while (cli_args_next(&a)) {
        if (cli_is(&a, "--help") || cli_is(&a, "-h")) {
            check_help(stdout);
            return 0;
        } else if (cli_shape_parse(&a, &shape)) {
            shape_mode = 1;
        } else if (cli_is(&a, "--backend")) {
            const char *v = cli_value(&a);
            if (dmoe_backend_from_name(v, &o.backend) != DMOE_OK)
                cli_usage_error("check", "unknown backend '%s' (cpu-ref, cpu, cuda)", v);
            o.have_backend = 1;
        } else if (cli_is(&a, "--seed")) {
            o.seed = (uint64_t)cli_value_int(&a, 0, INT64_MAX);
            have_seed = 1;
        } else if (cli_is(&a, "--threads")) {
            o.n_threads = (int)cli_value_int(&a, 0, 1024);
        } else if (cli_is(&a, "--quick")) {
            cli_no_value(&a);
            o.quick = 1;
        } else if (cli_is(&a, "--tokens")) {
            n_tokens = cli_value_int_list(&a, tokens, MAX_TOKEN_COUNTS, 1, DMOE_MAX_TOKENS);
        } else if (cli_is(&a, "--dtype")) {
            dtypes = (unsigned)parse_dtype_list(&a);
        } else if (cli_is(&a, "--tol")) {
            o.tol = cli_value_double(&a, 1e-12, 1.0);
        } else if (cli_is(&a, "--tie-eps")) {
            o.tie_eps = cli_value_double(&a, 0.0, 1.0);
        } else {
            cli_unknown_option(&a);
        }
    }
    if (!shape_mode && (n_tokens || dtypes))
        cli_usage_error("check",
                        "--tokens and --dtype apply to an explicit shape (give --hidden etc.)");
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o.seed =
            ((uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 20) &
            INT64_MAX;
    }

    check_case cases[MAX_CASES];
    int n_cases = 0;
    if (shape_mode) {
        static const int64_t t_std[] = {1, 7, 33};
        add(cases, &n_cases, "custom", shape, dtypes ? dtypes : ALL_DTYPES,
            n_tokens ? tokens : t_std, n_tokens ? n_tokens : 3, 0, 0);
    } else {
        n_cases = default_grid(cases);
    }

    dmoe_backend list[DMOE_BACKEND_COUNT];
    int n_be = 0;
    if (o.have_backend) {
        if (!dmoe_backend_available(o.backend)) {
            fprintf(stderr, "dmoe check: backend '%s' is not available in this build or machine\n",
                    dmoe_backend_name(o.backend));
            return 1;
        }
        list[n_be++] = o.backend;
    } else {
        for (int b = 0; b < DMOE_BACKEND_COUNT; b++)
            if (b != DMOE_BACKEND_CPU_REF && dmoe_backend_available((dmoe_backend)b))
                list[n_be++] = (dmoe_backend)b;
    }

    printf("dmoe check: seed %llu (rerun with --seed %llu), oracle cpu-ref, tolerance rel L2 "
           "%.0e (f32) %.0e (bf16, f16), near-tie margin %.0e\n",
           (unsigned long long)o.seed, (unsigned long long)o.seed, o.tol > 0 ? o.tol : 1e-5,
           o.tol > 0 ? o.tol : 1e-2, o.tie_eps);
    if (n_be == 0) {
        printf("no backend to check (available: cpu-ref only)\n");
        return 0;
    }

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ref_ctx = NULL;
    if (dmoe_context_create(&cd, &ref_ctx) != DMOE_OK) {
        fprintf(stderr, "dmoe check: cpu-ref: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    check_totals tot = {0, 0, 0};
    for (int b = 0; b < n_be; b++) {
        const dmoe_backend be = list[b];
        dmoe_context_desc_init(&cd);
        cd.backend = be;
        cd.n_threads = o.n_threads;
        dmoe_context *ctx = NULL;
        if (dmoe_context_create(&cd, &ctx) != DMOE_OK) {
            printf("%-7s FAIL: %s\n", dmoe_backend_name(be), dmoe_context_last_error(NULL));
            tot.fail++;
            continue;
        }
        printf("backend %s: %d threads\n", dmoe_backend_name(be), (int)dmoe_context_n_threads(ctx));
        for (int i = 0; i < n_cases; i++) {
            if (o.quick && cases[i].heavy) continue;
            for (int dt = 0; dt <= DMOE_DTYPE_F16; dt++) {
                if (!(cases[i].dtypes & DT_BIT(dt))) continue;
                uint64_t seed = cli_seed_mix(o.seed, (uint64_t)(i * 16 + dt));
                run_case(&o, be, ref_ctx, ctx, &cases[i], (dmoe_dtype)dt, seed, &tot);
            }
        }
        dmoe_context_destroy(ctx);
    }
    dmoe_context_destroy(ref_ctx);
    printf("dmoe check: %d passed, %d failed, %d skipped (seed %llu)\n", tot.pass, tot.fail,
           tot.skip, (unsigned long long)o.seed);
    return tot.fail ? 1 : 0;
}
