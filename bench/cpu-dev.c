/*
 * cpu-dev.c: development checker and timer of the fast CPU backend, through
 * the public API only.
 *
 *   cpu-dev check [quick]   compares backend cpu against cpu-ref (the oracle)
 *                           on a grid of shapes (odd sizes, H=2880 F=1408 E=60
 *                           K=6, shared experts, sigmoid grouped routing, each
 *                           weight and activation dtype), for every kernel
 *                           table the CPU supports (DMOE_CPU_ISA) and 1, 2, 3
 *                           threads: forward and experts by relative L2 error,
 *                           route ids exactly; outputs must be bitwise equal
 *                           across thread counts. Exit status 1 on failure.
 *   cpu-dev oom             creates layers with an allocator that fails at the
 *                           n-th allocation, n = 1, 2, ... until success (run
 *                           it under ASan to see every failure path frees).
 *   cpu-dev bench [--bw GB/s] [--reps n] [--threads n] [T ...]
 *                           times forward on the qwen3-30b-a3b layer (H=2048,
 *                           F=768, E=128, K=8, bf16; 1.2 GB of weights) at
 *                           each T (default 1 128), inputs rotated over 8
 *                           random batches; prints min and median ms and the
 *                           fraction of the floor = (bytes of the experts the
 *                           batch touches + router) / bandwidth (default 45 GB/s,
 *                           measure it with bench/membw.c).
 *
 * Build (see bench/cpu-notes.md):
 *   gcc -O2 -Wall -Wextra -Iinclude bench/cpu-dev.c build-cpu/lib/libdmoe.a -lpthread -lm -o /tmp/cpu-dev
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmoe.h"

/* ------------------------------------------------------------ utilities */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline uint64_t rng_next(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}
/* uniform in [-1, 1) */
static inline float rng_uniform(void) { return (float)((double)(rng_next() >> 40) / 8388608.0 - 1.0); }

static uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } v = {.f = f};
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
static uint16_t f32_to_f16(float f) { /* normal range only: test data is in [-4, 4] */
    union { uint32_t u; float f; } v = {.f = f};
    uint32_t sign = (v.u >> 16) & 0x8000u, abs = v.u & 0x7fffffffu;
    if (abs < 0x38800000u) return (uint16_t)sign; /* tiny: flush (test data only) */
    uint32_t h = ((abs >> 23) - 112u) << 10 | ((abs & 0x7fffffu) >> 13);
    uint32_t rest = abs & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) return sign ? -(float)mant * 5.9604644775390625e-8f : (float)mant * 5.9604644775390625e-8f;
    union { uint32_t u; float f; } v = {.u = sign | ((exp + 112u) << 23) | (mant << 13)};
    if (exp == 31) v.u = sign | 0x7f800000u | (mant << 13);
    return v.f;
}

static size_t dt_size(dmoe_dtype dt) { return dt == DMOE_DTYPE_F32 ? 4 : 2; }

/* n random values in [-scale, scale) stored as dt. */
static void *rand_array(dmoe_dtype dt, size_t n, float scale) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n * dt_size(dt) + 64) != 0) {
        fprintf(stderr, "cpu-dev: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        float v = rng_uniform() * scale;
        if (dt == DMOE_DTYPE_F32) ((float *)p)[i] = v;
        else if (dt == DMOE_DTYPE_BF16) ((uint16_t *)p)[i] = f32_to_bf16(v);
        else ((uint16_t *)p)[i] = f32_to_f16(v);
    }
    return p;
}

static double get_f(const void *p, dmoe_dtype dt, size_t i) {
    if (dt == DMOE_DTYPE_F32) return ((const float *)p)[i];
    if (dt == DMOE_DTYPE_BF16) return bf16_to_f32(((const uint16_t *)p)[i]);
    return f16_to_f32(((const uint16_t *)p)[i]);
}

static double rel_l2(const void *a, const void *ref, dmoe_dtype dt, size_t n, int *nonfinite) {
    double num = 0, den = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        double x = get_f(a, dt, i), r = get_f(ref, dt, i);
        if (!isfinite(x) || !isfinite(r)) (*nonfinite)++;
        num += (x - r) * (x - r);
        den += r * r;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define CHECK_OK(expr)                                                                    \
    do {                                                                                  \
        dmoe_status st_ = (expr);                                                         \
        if (st_ != DMOE_OK) {                                                             \
            fprintf(stderr, "cpu-dev: %s failed at line %d: %s (%s)\n", #expr, __LINE__, \
                    dmoe_status_name(st_), dmoe_context_last_error(NULL));                \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* ------------------------------------------------------------ one layer */

typedef struct test_layer {
    dmoe_layer_desc desc;
    dmoe_weights w;
    void *bufs[7];
} test_layer;

static void test_layer_make(test_layer *tl, const dmoe_layer_desc *d) {
    memset(tl, 0, sizeof *tl);
    tl->desc = *d;
    const dmoe_dtype wt = d->weight_dtype;
    const size_t H = (size_t)d->hidden, F = (size_t)d->ffn, E = (size_t)d->n_experts;
    const size_t S = (size_t)d->n_shared_experts, Fs = (size_t)d->shared_ffn;
    tl->bufs[0] = rand_array(wt, E * H, 2.0f / sqrtf((float)H));
    tl->bufs[1] = rand_array(wt, E * 2 * F * H, 1.7f / sqrtf((float)H));
    tl->bufs[2] = rand_array(wt, E * H * F, 1.7f / sqrtf((float)F));
    tl->w.router = tl->bufs[0];
    tl->w.w13 = tl->bufs[1];
    tl->w.w2 = tl->bufs[2];
    if (d->routing.use_correction_bias) {
        tl->bufs[3] = rand_array(DMOE_DTYPE_F32, E, 0.1f);
        tl->w.correction_bias = (const float *)tl->bufs[3];
    }
    if (S > 0) {
        tl->bufs[4] = rand_array(wt, S * 2 * Fs * H, 1.7f / sqrtf((float)H));
        tl->bufs[5] = rand_array(wt, S * H * Fs, 1.7f / sqrtf((float)Fs));
        tl->w.shared_w13 = tl->bufs[4];
        tl->w.shared_w2 = tl->bufs[5];
    }
    if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
        tl->bufs[6] = rand_array(wt, H, 2.0f / sqrtf((float)H));
        tl->w.shared_gate = tl->bufs[6];
    }
}

static void test_layer_free(test_layer *tl) {
    for (int i = 0; i < 7; i++) free(tl->bufs[i]);
}

/* Creates a context (ISA through DMOE_CPU_ISA, NULL = default) and a layer. */
static dmoe_status open_layer(dmoe_backend be, const char *isa, int threads, const test_layer *tl,
                              dmoe_context **ctx, dmoe_layer **layer) {
    if (isa) setenv("DMOE_CPU_ISA", isa, 1);
    else unsetenv("DMOE_CPU_ISA");
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = be;
    cd.n_threads = threads;
    dmoe_status st = dmoe_context_create(&cd, ctx);
    unsetenv("DMOE_CPU_ISA");
    if (st != DMOE_OK) return st;
    CHECK_OK(dmoe_layer_create(*ctx, &tl->desc, layer));
    CHECK_OK(dmoe_layer_set_weights(*layer, &tl->w));
    return DMOE_OK;
}

/* ---------------------------------------------------------------- check */

typedef struct check_case {
    const char *name;
    int64_t H, F, T;
    int32_t E, K, S;
    int64_t Fs;
    int sigmoid_grouped; /* sigmoid scoring, 4 groups (2 kept), bias, scaling 2.5 */
    int shared_gate;
    dmoe_dtype act, wt;
} check_case;

static const char *const isas[] = {"avx512bf16", "avx2", "scalar"};

static int run_case(const check_case *c, int *n_runs) {
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = c->H;
    d.ffn = c->F;
    d.n_experts = c->E;
    d.top_k = c->K;
    d.n_shared_experts = c->S;
    d.shared_ffn = c->Fs;
    d.shared_gate = c->shared_gate ? DMOE_SHARED_GATE_SIGMOID : DMOE_SHARED_GATE_NONE;
    d.act_dtype = c->act;
    d.weight_dtype = c->wt;
    d.max_tokens = c->T;
    if (c->sigmoid_grouped) {
        d.routing.scoring = DMOE_SCORING_SIGMOID;
        d.routing.n_group = 4;
        d.routing.topk_group = 2;
        d.routing.use_correction_bias = 1;
        d.routing.routed_scaling_factor = 2.5f;
    }
    test_layer tl;
    test_layer_make(&tl, &d);
    const size_t T = (size_t)c->T, H = (size_t)c->H, K = (size_t)c->K;
    void *x = rand_array(c->act, T * H, 1.0f);
    dmoe_tensor xt = dmoe_tensor_2d(x, c->act, c->T, c->H, DMOE_DEVICE_HOST);

    /* The oracle: forward, route, and experts with its own routing. */
    dmoe_context *rctx;
    dmoe_layer *rl;
    CHECK_OK(open_layer(DMOE_BACKEND_CPU_REF, NULL, 1, &tl, &rctx, &rl));
    void *y_ref = calloc(T * H, dt_size(c->act));
    int32_t *ids_ref = calloc(T * K, sizeof(int32_t));
    float *wts_ref = calloc(T * K, sizeof(float));
    dmoe_tensor yt_ref = dmoe_tensor_2d(y_ref, c->act, c->T, c->H, DMOE_DEVICE_HOST);
    dmoe_tensor it_ref = dmoe_tensor_2d(ids_ref, DMOE_DTYPE_I32, c->T, c->K, DMOE_DEVICE_HOST);
    dmoe_tensor wt_ref = dmoe_tensor_2d(wts_ref, DMOE_DTYPE_F32, c->T, c->K, DMOE_DEVICE_HOST);
    CHECK_OK(dmoe_forward(rl, &xt, &yt_ref, NULL));
    CHECK_OK(dmoe_route(rl, &xt, &it_ref, &wt_ref, NULL));
    dmoe_layer_destroy(rl);
    dmoe_context_destroy(rctx);

    /* fp32 paths must reach 1e-5; anything that rounds to bf16 or f16 1e-2. */
    int failed = 0;
    void *y = calloc(T * H, dt_size(c->act)), *y1 = calloc(T * H, dt_size(c->act));
    void *ye = calloc(T * H, dt_size(c->act));
    int32_t *ids = calloc(T * K, sizeof(int32_t));
    float *wts = calloc(T * K, sizeof(float));
    dmoe_tensor yt = dmoe_tensor_2d(y, c->act, c->T, c->H, DMOE_DEVICE_HOST);
    dmoe_tensor yet = dmoe_tensor_2d(ye, c->act, c->T, c->H, DMOE_DEVICE_HOST);
    dmoe_tensor it = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, c->T, c->K, DMOE_DEVICE_HOST);
    dmoe_tensor wtt = dmoe_tensor_2d(wts, DMOE_DTYPE_F32, c->T, c->K, DMOE_DEVICE_HOST);
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
        int have_first = 0;
        for (int threads = 1; threads <= 3; threads++) {
            dmoe_context *ctx;
            dmoe_layer *l;
            if (open_layer(DMOE_BACKEND_CPU, isas[i], threads, &tl, &ctx, &l) != DMOE_OK) break;
            CHECK_OK(dmoe_forward(l, &xt, &yt, NULL));
            CHECK_OK(dmoe_route(l, &xt, &it, &wtt, NULL));
            CHECK_OK(dmoe_experts(l, &xt, &it_ref, &wt_ref, &yet, NULL));
            dmoe_layer_destroy(l);
            dmoe_context_destroy(ctx);
            (*n_runs)++;
            int nf = 0, nfe = 0, nf_ref = 0;
            double err = rel_l2(y, y_ref, c->act, T * H, &nf);
            double err_e = rel_l2(ye, y_ref, c->act, T * H, &nfe);
            rel_l2(y_ref, y_ref, c->act, T * H, &nf_ref);
            size_t id_mismatch = 0;
            double w_err = 0;
            for (size_t p = 0; p < T * K; p++) {
                id_mismatch += ids[p] != ids_ref[p];
                w_err = fmax(w_err, fabs((double)wts[p] - wts_ref[p]) / (fabs((double)wts_ref[p]) + 1e-30));
            }
            int rounds = (c->wt == DMOE_DTYPE_BF16 && i == 0) || c->act != DMOE_DTYPE_F32 ||
                         c->wt == DMOE_DTYPE_F16;
            double tol = rounds ? 1e-2 : 1e-5;
            /* Output dtype quantisation alone costs ~2e-3 (bf16) / 3e-4 (f16). */
            int bitwise = 1;
            if (!have_first) {
                memcpy(y1, y, T * H * dt_size(c->act));
                have_first = 1;
            } else {
                bitwise = memcmp(y1, y, T * H * dt_size(c->act)) == 0;
            }
            int ok = err <= tol && err_e <= tol && nf == nf_ref && nfe == nf_ref &&
                     id_mismatch == 0 && w_err < 1e-4 && bitwise;
            if (!ok || threads == 1)
                printf("%-12s %-10s T=%-4zu thr=%d  fwd %.2e  experts %.2e  ids %zu  w %.1e  %s%s\n",
                       c->name, isas[i], T, threads, err, err_e, id_mismatch, w_err,
                       bitwise ? "" : "NOT-BITWISE ", ok ? "ok" : "FAIL");
            failed |= !ok;
        }
    }
    free(y);
    free(y1);
    free(ye);
    free(ids);
    free(wts);
    free(y_ref);
    free(ids_ref);
    free(wts_ref);
    free(x);
    test_layer_free(&tl);
    return failed;
}

static int cmd_check(int quick) {
    const dmoe_dtype B = DMOE_DTYPE_BF16, F32 = DMOE_DTYPE_F32, F16 = DMOE_DTYPE_F16;
    const check_case cases[] = {
        /* name          H     F     T   E   K  S  Fs  sg gate act  wt */
        {"tiny-odd", 17, 5, 7, 8, 3, 0, 0, 0, 0, F32, F32},
        {"tiny-odd", 17, 5, 33, 8, 3, 1, 3, 0, 1, B, B},
        {"tiny-odd", 17, 5, 33, 8, 2, 0, 0, 1, 0, F16, F16},
        {"odd", 33, 47, 33, 12, 4, 2, 9, 1, 1, F32, B},
        {"odd", 100, 61, 512, 16, 4, 1, 30, 0, 0, B, B},
        {"odd", 100, 61, 512, 16, 4, 1, 30, 0, 0, F32, F32},
        {"mid-f16w", 256, 96, 33, 8, 2, 1, 64, 0, 1, B, F16},
        {"gptoss-ish", 2880, 1408, 1, 60, 6, 0, 0, 0, 0, B, B},
        {"gptoss-ish", 2880, 1408, 7, 60, 6, 0, 0, 0, 0, F32, F32},
        {"gptoss-ish", 2880, 1408, 33, 60, 6, 1, 1408, 0, 1, B, B},
        {"gptoss-ish", 2880, 1408, 33, 60, 6, 0, 0, 1, 0, F32, B},
        {"qwen3-small", 2048, 768, 512, 16, 8, 0, 0, 0, 0, B, B},
        {"gptoss-512", 2880, 1408, 512, 60, 6, 0, 0, 0, 0, B, B},
        /* H * K large: several chunks per call (chunk ~190 tokens) */
        {"chunked", 4096, 16, 512, 64, 32, 1, 24, 1, 1, B, B},
        {"chunked", 4096, 16, 400, 64, 32, 1, 24, 0, 0, F32, F32},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    if (quick) n = 7;
    if (getenv("CHECK_FROM")) {
        int from = atoi(getenv("CHECK_FROM"));
        int failed = 0, runs = 0;
        for (int i = from; i < (int)(sizeof cases / sizeof cases[0]); i++) failed |= run_case(&cases[i], &runs);
        printf("check: %d runs, %s\n", runs, failed ? "FAILED" : "all ok");
        return failed;
    }
    int failed = 0, runs = 0;
    for (int i = 0; i < n; i++) failed |= run_case(&cases[i], &runs);
    printf("check: %d runs, %s\n", runs, failed ? "FAILED" : "all ok");
    return failed;
}

/* ------------------------------------------------------------------ oom */

typedef struct fail_alloc {
    long budget; /* allocations left before failing */
    long live;
} fail_alloc;

static void *fa_alloc(void *user, size_t size, size_t align) {
    fail_alloc *fa = (fail_alloc *)user;
    if (fa->budget-- <= 0) return NULL;
    void *p = NULL;
    if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0) return NULL;
    fa->live++;
    return p;
}
static void fa_free(void *user, void *p) {
    ((fail_alloc *)user)->live--;
    free(p);
}

static int cmd_oom(void) {
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 64;
    d.ffn = 32;
    d.n_experts = 8;
    d.top_k = 2;
    d.n_shared_experts = 1;
    d.shared_ffn = 16;
    d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    d.max_tokens = 16;
    test_layer tl;
    test_layer_make(&tl, &d);
    int failed = 0;
    long n;
    for (n = 0;; n++) {
        fail_alloc fa = {n, 0};
        dmoe_allocator al = {fa_alloc, fa_free, &fa};
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = DMOE_BACKEND_CPU;
        cd.n_threads = 3;
        cd.allocator = &al;
        dmoe_context *ctx;
        dmoe_status st = dmoe_context_create(&cd, &ctx);
        if (st != DMOE_OK) {
            if (st != DMOE_ERR_OUT_OF_MEMORY) failed = 1;
            if (fa.live != 0) failed = 1;
            continue;
        }
        dmoe_layer *l;
        st = dmoe_layer_create(ctx, &d, &l);
        if (st == DMOE_OK) {
            dmoe_layer_destroy(l);
            dmoe_context_destroy(ctx);
            if (fa.live != 0) failed = 1;
            break;
        }
        if (st != DMOE_ERR_OUT_OF_MEMORY) failed = 1;
        dmoe_context_destroy(ctx);
        if (fa.live != 0) failed = 1;
    }
    test_layer_free(&tl);
    printf("oom: succeeded after %ld failing allocations: %s\n", n, failed ? "FAILED" : "ok");
    return failed;
}

/* ---------------------------------------------------------------- bench */

static int cmd_bench(int argc, char **argv) {
    double bw = 45.0;
    int reps = 20, threads = 0;
    int64_t Ts[16];
    int nT = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--bw") && i + 1 < argc) bw = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (nT < 16) Ts[nT++] = atoll(argv[i]);
    }
    if (nT == 0) {
        Ts[nT++] = 1;
        Ts[nT++] = 128;
    }
    int64_t Tmax = 1;
    for (int i = 0; i < nT; i++) Tmax = Ts[i] > Tmax ? Ts[i] : Tmax;

    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 2048;
    d.ffn = 768;
    d.n_experts = 128;
    d.top_k = 8;
    d.max_tokens = Tmax;
    test_layer tl;
    double t_init = now_s();
    test_layer_make(&tl, &d);
    t_init = now_s() - t_init;
    dmoe_context *ctx;
    dmoe_layer *l;
    const char *isa = getenv("DMOE_CPU_ISA") ? getenv("DMOE_CPU_ISA") : "auto";
    CHECK_OK(open_layer(DMOE_BACKEND_CPU, strcmp(isa, "auto") ? isa : NULL, threads, &tl, &ctx, &l));
    const size_t H = 2048, K = 8, E = 128;
    const double expert_bytes = 3.0 * 2048 * 768 * 2, router_bytes = (double)E * H * 2;
    printf("bench: qwen3-30b-a3b layer (H=2048 F=768 E=128 K=8, bf16), %d threads, isa %s, "
           "bw %.1f GB/s, %d reps (weights made in %.1f s)\n",
           (int)dmoe_context_n_threads(ctx), isa, bw, reps, t_init);
    printf("%6s %10s %10s %10s %12s %12s %10s %12s\n", "T", "min ms", "median ms", "floor ms",
           "floor/min", "floor/median", "TFLOP/s", "cpu/thr ms");
    enum { N_INPUTS = 8 };
    for (int ti = 0; ti < nT; ti++) {
        const int64_t T = Ts[ti];
        void *xs[N_INPUTS];
        double floor_ms[N_INPUTS];
        void *y = calloc((size_t)T * H, 2);
        int32_t *ids = calloc((size_t)T * K, sizeof(int32_t));
        float *wts = calloc((size_t)T * K, sizeof(float));
        for (int i = 0; i < N_INPUTS; i++) {
            xs[i] = rand_array(DMOE_DTYPE_BF16, (size_t)T * H, 1.0f);
            dmoe_tensor xt = dmoe_tensor_2d(xs[i], DMOE_DTYPE_BF16, T, (int64_t)H, DMOE_DEVICE_HOST);
            dmoe_tensor it = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, (int64_t)K, DMOE_DEVICE_HOST);
            dmoe_tensor wtt = dmoe_tensor_2d(wts, DMOE_DTYPE_F32, T, (int64_t)K, DMOE_DEVICE_HOST);
            CHECK_OK(dmoe_route(l, &xt, &it, &wtt, NULL));
            char touched[128] = {0};
            int n_touched = 0;
            for (size_t p = 0; p < (size_t)T * K; p++)
                if (!touched[ids[p]]) touched[ids[p]] = 1, n_touched++;
            floor_ms[i] = (n_touched * expert_bytes + router_bytes + 4.0 * (double)T * H) / (bw * 1e9) * 1e3;
        }
        double *ms = calloc((size_t)reps, sizeof(double)), *frac = calloc((size_t)reps, sizeof(double));
        double cpu_min = 1e30;
        double floor_sum = 0, time_sum = 0;
        for (int r = -2; r < reps; r++) { /* 2 warm-up runs */
            int i = (r + N_INPUTS * 4) % N_INPUTS;
            dmoe_tensor xt = dmoe_tensor_2d(xs[i], DMOE_DTYPE_BF16, T, (int64_t)H, DMOE_DEVICE_HOST);
            dmoe_tensor yt = dmoe_tensor_2d(y, DMOE_DTYPE_BF16, T, (int64_t)H, DMOE_DEVICE_HOST);
            double t0 = now_s(), c0 = cpu_s();
            CHECK_OK(dmoe_forward(l, &xt, &yt, NULL));
            double dt = (now_s() - t0) * 1e3, dc = (cpu_s() - c0) * 1e3 / dmoe_context_n_threads(ctx);
            if (r >= 0 && dc < cpu_min) cpu_min = dc;
            if (r < 0) continue;
            ms[r] = dt;
            frac[r] = floor_ms[i] / dt;
            floor_sum += floor_ms[i];
            time_sum += dt;
        }
        qsort(ms, (size_t)reps, sizeof(double), cmp_double);
        qsort(frac, (size_t)reps, sizeof(double), cmp_double);
        double flops = 2.0 * (double)T * K * 3 * H * 768 + 2.0 * (double)T * H * E;
        printf("%6lld %10.3f %10.3f %10.3f %12.3f %12.3f %10.3f %12.3f\n", (long long)T, ms[0],
               ms[reps / 2], floor_sum / reps, frac[reps - 1], frac[reps / 2],
               flops / (ms[reps / 2] * 1e-3) * 1e-12, cpu_min);
        (void)time_sum;
        free(ms);
        free(frac);
        for (int i = 0; i < N_INPUTS; i++) free(xs[i]);
        free(y);
        free(ids);
        free(wts);
    }
    dmoe_layer_destroy(l);
    dmoe_context_destroy(ctx);
    test_layer_free(&tl);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "check")) return cmd_check(argc >= 3 && !strcmp(argv[2], "quick"));
    if (argc >= 2 && !strcmp(argv[1], "oom")) return cmd_oom();
    if (argc >= 2 && !strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    fprintf(stderr, "usage: cpu-dev check [quick] | oom | bench [--bw GB/s] [--reps n] [--threads n] [T ...]\n");
    return 2;
}
