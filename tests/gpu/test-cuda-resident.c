/*
 * test-cuda-resident: the resident serving mode (dmoe_resident_*) against the
 * ordinary fused forward and cpu-ref. For a small shape (H=256 F=128 E=16
 * K=4, bf16) and an odd one (H=200 F=72 E=12 K=3, one shared expert with a
 * sigmoid gate, sigmoid scoring with correction bias and 4 groups, f16):
 *  - reference pass: N batches of random T in [1, 64] with fresh random x,
 *    each through dmoe_forward on the fused path (desc.path = FUSED), output
 *    kept; every 1000th batch also against cpu-ref on the GPU's routing;
 *  - resident pass: the same N batches through one resident kernel, output
 *    poisoned before each; every result must equal the ordinary fused output
 *    bit for bit, and the sampled ones cpu-ref within 1e-2 rel L2;
 *  - while resident: the layer refuses forward and set_weights, a second
 *    resident on it is refused, bad arguments give their statuses;
 *  - timeout: wait(0) right after submitting a full batch is DMOE_ERR_TIMEOUT
 *    and the batch stays in flight (submit refused), then completes correctly;
 *  - bad input: a batch with a NaN is rejected by the kernel
 *    (DMOE_ERR_INVALID_ARGUMENT, output untouched), so is a token count the
 *    host did not check, and the next batch is correct again;
 *  - shutdown and re-create: destroy, the layer works again, a second
 *    resident (max_tokens 8, NaN allowed) runs 200 more checked batches;
 *  - a kernel that outlives destroy's timeout (test_orphan_reaped, not in
 *    quick mode): reported, reaped once it ends, the device usable again;
 *  - layer creation on another thread racing 40 resident create / batch /
 *    destroy cycles (test_gate_race): nothing hangs, every batch is right.
 * N = 10000 (DMOE_GPU_TEST_QUICK=1: 50, for compute-sanitizer).
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gpu-util.h"

dmoe_status dmoe__cuda_resident_submit_unchecked(dmoe_resident *r, int64_t n_tokens);

#define MAXT 64
#define WAIT_MS 5000

static int quick;

static void fill_x(uint64_t seed, int64_t i, void *x, dmoe_dtype dt, int64_t n) {
    tu_rng rng;
    tu_rng_init(&rng, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)));
    tu_fill_uniform(&rng, x, dt, n, -1.0, 1.0);
}

static int64_t batch_tokens(uint64_t seed, int64_t i) {
    tu_rng rng;
    tu_rng_init(&rng, seed * 31 + (uint64_t)i * 7919 + 1);
    return 1 + (int64_t)(tu_rand_u64(&rng) % MAXT);
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* cpu-ref on the cuda layer's routing of x (T tokens). */
static void cpu_reference(tu_layer *l, const tu_model *m, const void *x, void *d_x, int64_t T, void *yref) {
    const dmoe_layer_desc *d = &m->desc;
    const int64_t H = d->hidden, K = d->top_k;
    int32_t *d_ids = (int32_t *)gpu_alloc(sizeof(int32_t) * (size_t)(T * K));
    float *d_w = (float *)gpu_alloc(sizeof(float) * (size_t)(T * K));
    dmoe_tensor tx = dmoe_tensor_2d(d_x, d->act_dtype, T, H, 0);
    dmoe_tensor ti = dmoe_tensor_2d(d_ids, DMOE_DTYPE_I32, T, K, 0);
    dmoe_tensor tw = dmoe_tensor_2d(d_w, DMOE_DTYPE_F32, T, K, 0);
    TU_CHECK_STATUS(l->ctx, dmoe_route(l->layer, &tx, &ti, &tw, NULL), DMOE_OK);
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
    float *w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
    gpu_download(ids, d_ids, sizeof(int32_t) * (size_t)(T * K));
    gpu_download(w, d_w, sizeof(float) * (size_t)(T * K));
    TU_CHECK(tu_reference_experts(m, x, T, ids, w, yref) == DMOE_OK);
    gpu_free(d_ids);
    gpu_free(d_w);
    tu_free(ids);
    tu_free(w);
}

/* Submits batch x (T rows) and waits; returns the wait's status. */
static dmoe_status run_batch(dmoe_resident *r, const void *x, int64_t T, size_t row_bytes, double *us) {
    memcpy(dmoe_resident_input(r), x, (size_t)T * row_bytes);
    memset((void *)dmoe_resident_output(r), 0xff, (size_t)T * row_bytes); /* poison: NaN */
    const double t0 = now_us();
    dmoe_status st = dmoe_resident_submit(r, T);
    if (st == DMOE_OK) st = dmoe_resident_wait(r, WAIT_MS);
    if (us) *us = now_us() - t0;
    return st;
}

static void run_shape(const char *name, const dmoe_layer_desc *desc, uint64_t seed) {
    const int64_t N = quick ? 50 : 10000, H = desc->hidden;
    const dmoe_dtype dt = desc->act_dtype;
    const size_t row = (size_t)H * dmoe_dtype_size(dt), xmax = MAXT * row;
    printf("%s: H=%lld F=%lld E=%d K=%d S=%d %s, %lld batches\n", name, (long long)H, (long long)desc->ffn,
           (int)desc->n_experts, (int)desc->top_k, (int)desc->n_shared_experts, dmoe_dtype_name(dt),
           (long long)N);
    tu_rng rng;
    tu_rng_init(&rng, seed);
    tu_model m;
    gpu_model g;
    tu_layer l;
    tu_model_random(&m, desc, &rng);
    gpu_model_upload(&g, &m);
    if (gpu_layer_open(&l, desc, &g) != DMOE_OK) {
        TU_CHECK(0);
        return;
    }
    dmoe_path p = DMOE_PATH_AUTO;
    TU_CHECK_STATUS(l.ctx, dmoe_layer_query_path(l.layer, MAXT, &p), DMOE_OK);
    TU_CHECKF(p == DMOE_PATH_FUSED, "%s: the reference layer does not run fused at T=%d", name, MAXT);

    /* ---- reference pass: the ordinary fused forward ---- */
    void *d_x = gpu_alloc(xmax), *d_y = gpu_alloc(xmax);
    void *x = tu_malloc(xmax), *y = tu_malloc(xmax);
    int64_t *tok = (int64_t *)tu_malloc(sizeof(int64_t) * (size_t)N);
    size_t *off = (size_t *)tu_malloc(sizeof(size_t) * (size_t)(N + 1));
    off[0] = 0;
    for (int64_t i = 0; i < N; i++) {
        tok[i] = batch_tokens(seed, i);
        off[i + 1] = off[i] + (size_t)tok[i] * row;
    }
    char *yall = (char *)tu_malloc(off[N]);
    const int n_samples = quick ? 3 : 10;
    void *ycpu[10];
    int64_t sample_idx[10];
    for (int s = 0; s < n_samples; s++) {
        sample_idx[s] = s * (N / n_samples) + (s % 3);
        ycpu[s] = NULL;
    }
    for (int64_t i = 0; i < N; i++) {
        const int64_t T = tok[i];
        fill_x(seed, i, x, dt, T * H);
        GPU_CHECK(cudaMemcpy(d_x, x, (size_t)T * row, cudaMemcpyHostToDevice));
        gpu_poison(d_y, (size_t)T * row);
        dmoe_tensor tx = dmoe_tensor_2d(d_x, dt, T, H, 0), ty = dmoe_tensor_2d(d_y, dt, T, H, 0);
        if (dmoe_forward(l.layer, &tx, &ty, NULL) != DMOE_OK) {
            TU_CHECKF(0, "%s: reference forward %lld: %s", name, (long long)i, dmoe_context_last_error(l.ctx));
            break;
        }
        GPU_CHECK(cudaMemcpy(yall + off[i], d_y, (size_t)T * row, cudaMemcpyDeviceToHost));
        for (int s = 0; s < n_samples; s++)
            if (sample_idx[s] == i) {
                ycpu[s] = tu_malloc((size_t)T * row);
                cpu_reference(&l, &m, x, d_x, T, ycpu[s]);
            }
    }

    /* ---- argument checks before any resident exists ---- */
    dmoe_resident *r = NULL, *sentinel = (dmoe_resident *)&m;
    dmoe_resident_desc rd;
    const int64_t bad_max[3] = {-1, MAXT + 1, 1 << 20};
    for (int i = 0; i < 3; i++) {
        dmoe_resident_desc_init(&rd);
        rd.max_tokens = bad_max[i];
        r = sentinel;
        TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, &rd, &r), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK(r == sentinel);
    }
    dmoe_resident_desc_init(&rd);
    rd.reject_nonfinite = 2;
    TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, &rd, &r), DMOE_ERR_INVALID_ARGUMENT);
    dmoe_resident_desc_init(&rd);
    rd.shutdown_timeout_ms = 0;
    TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, &rd, &r), DMOE_ERR_INVALID_ARGUMENT);
    {
        dmoe_layer *bare = NULL;
        TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, desc, &bare), DMOE_OK);
        if (bare) {
            TU_CHECK_STATUS(l.ctx, dmoe_resident_create(bare, NULL, &r), DMOE_ERR_NO_WEIGHTS);
            dmoe_layer_destroy(bare);
        }
    }
    TU_CHECK(r == sentinel);

    /* ---- resident pass ---- */
    dmoe_layer *other = NULL; /* a second layer on the device, made before the kernel */
    TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, desc, &other), DMOE_OK);
    if (other) TU_CHECK_STATUS(l.ctx, dmoe_layer_set_weights(other, &g.weights), DMOE_OK);
    r = NULL;
    TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, NULL, &r), DMOE_OK);
    if (!r) goto done;
    {
        dmoe_resident_info info;
        TU_CHECK_STATUS(l.ctx, dmoe_resident_query(r, &info), DMOE_OK);
        TU_CHECK(info.max_tokens == MAXT && info.running == 1 && info.in_flight == 0 && info.n_blocks > 0);
        printf("  resident: %d blocks, max_tokens %lld\n", (int)info.n_blocks, (long long)info.max_tokens);
        /* the layer is locked while resident */
        dmoe_tensor tx = dmoe_tensor_2d(d_x, dt, 1, H, 0), ty = dmoe_tensor_2d(d_y, dt, 1, H, 0);
        TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK_STATUS(l.ctx, dmoe_layer_set_weights(l.layer, &g.weights), DMOE_ERR_INVALID_ARGUMENT);
        dmoe_resident *r2 = sentinel;
        TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, NULL, &r2), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK(r2 == sentinel);
        /* one resident kernel per device; no new layers while it occupies the device */
        if (other) TU_CHECK_STATUS(l.ctx, dmoe_resident_create(other, NULL, &r2), DMOE_ERR_INVALID_ARGUMENT);
        dmoe_layer *late = NULL;
        TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, desc, &late), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK(late == NULL && r2 == sentinel);
        /* bad arguments */
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, 0), DMOE_ERR_INVALID_ARGUMENT); /* nothing submitted */
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, 0), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, -5), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, MAXT + 1), DMOE_ERR_TOO_MANY_TOKENS);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, -1), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_query(r, NULL), DMOE_ERR_NULL_POINTER);
        TU_CHECK(dmoe_resident_input(r) != NULL && dmoe_resident_output(r) != NULL);
    }
    {
        int64_t differ = 0, failed = 0;
        double *lat = (double *)tu_malloc(sizeof(double) * (size_t)N);
        for (int64_t i = 0; i < N; i++) {
            const int64_t T = tok[i];
            fill_x(seed, i, x, dt, T * H);
            dmoe_status st = run_batch(r, x, T, row, &lat[i]);
            if (st != DMOE_OK) {
                if (failed++ < 5)
                    printf("  batch %lld (T=%lld): %s: %s  <-- FAIL\n", (long long)i, (long long)T,
                           dmoe_status_name(st), dmoe_context_last_error(l.ctx));
                if (st == DMOE_ERR_TIMEOUT || failed > 20) break;
                continue;
            }
            if (memcmp(dmoe_resident_output(r), yall + off[i], (size_t)T * row) != 0) {
                if (differ++ < 5) printf("  batch %lld (T=%lld): resident output differs from the ordinary fused forward  <-- FAIL\n", (long long)i, (long long)T);
            }
            for (int s = 0; s < n_samples; s++)
                if (sample_idx[s] == i && ycpu[s]) {
                    char what[96];
                    snprintf(what, sizeof what, "  resident batch %lld T=%lld vs cpu-ref", (long long)i, (long long)T);
                    TU_CHECK(tu_compare(what, dmoe_resident_output(r), dt, ycpu[s], dt, T, H, NULL, 1e-2));
                }
        }
        qsort(lat, (size_t)N, sizeof(double), cmp_double);
        printf("  %lld batches: %lld failed, %lld differ from the ordinary fused forward%s; submit-to-wait "
               "P50 %.1f us, P99 %.1f us (T in [1, %d], unchecked timing)\n",
               (long long)N, (long long)failed, (long long)differ, failed || differ ? "  <-- FAIL" : "",
               lat[N / 2], lat[(N * 99) / 100], MAXT);
        TU_CHECK(failed == 0 && differ == 0);
        tu_free(lat);
    }
    {
        /* timeout: wait(0) right after a full batch */
        const int64_t i = N - 1, T = MAXT;
        fill_x(seed, 123456789, x, dt, T * H);
        memcpy(dmoe_resident_input(r), x, (size_t)T * row);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, T), DMOE_OK);
        dmoe_status st = dmoe_resident_wait(r, 0);
        TU_CHECKF(st == DMOE_ERR_TIMEOUT, "wait(0) right after submit gave %s", dmoe_status_name(st));
        dmoe_resident_info info;
        dmoe_resident_query(r, &info);
        TU_CHECK(info.in_flight == 1 || st != DMOE_ERR_TIMEOUT);
        if (st == DMOE_ERR_TIMEOUT)
            TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, 1), DMOE_ERR_INVALID_ARGUMENT); /* busy */
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, WAIT_MS), DMOE_OK);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, 0), DMOE_OK); /* idempotent */
        memcpy(y, dmoe_resident_output(r), (size_t)T * row);
        (void)i;
        printf("  timeout path: wait(0) gave %s, then the batch completed\n", dmoe_status_name(st));

        /* bad input: a NaN in the last token, then a count the host did not check */
        void *out_before = tu_malloc((size_t)T * row);
        fill_x(seed, 42, x, dt, 5 * H);
        tu_set(x, dt, 4 * H + 7, NAN);
        memcpy(dmoe_resident_input(r), x, 5 * row);
        memcpy(out_before, dmoe_resident_output(r), 5 * row);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, 5), DMOE_OK);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, WAIT_MS), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK(memcmp(out_before, dmoe_resident_output(r), 5 * row) == 0);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, 0), DMOE_ERR_INVALID_ARGUMENT); /* the same again */
        TU_CHECK_STATUS(l.ctx, dmoe__cuda_resident_submit_unchecked(r, MAXT + 1), DMOE_OK);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, WAIT_MS), DMOE_ERR_INVALID_ARGUMENT);
        TU_CHECK_STATUS(l.ctx, dmoe__cuda_resident_submit_unchecked(r, 0), DMOE_OK);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, WAIT_MS), DMOE_ERR_INVALID_ARGUMENT);
        tu_free(out_before);
        /* and the kernel still answers correctly */
        const int64_t j = sample_idx[0], Tj = tok[j];
        fill_x(seed, j, x, dt, Tj * H);
        TU_CHECK_STATUS(l.ctx, run_batch(r, x, Tj, row, NULL), DMOE_OK);
        TU_CHECKF(memcmp(dmoe_resident_output(r), yall + off[j], (size_t)Tj * row) == 0,
                  "batch after the rejected ones differs");
        dmoe_resident_query(r, &info);
        TU_CHECK(info.n_completed == info.n_submitted && info.in_flight == 0 && info.running == 1);
    }
    /* ---- shutdown, the layer works again, re-create ---- */
    TU_CHECK_STATUS(l.ctx, dmoe_resident_destroy(r), DMOE_OK);
    r = NULL;
    dmoe_layer_destroy(other);
    {
        const int64_t T = MAXT;
        fill_x(seed, 123456789, x, dt, T * H);
        GPU_CHECK(cudaMemcpy(d_x, x, (size_t)T * row, cudaMemcpyHostToDevice));
        dmoe_tensor tx = dmoe_tensor_2d(d_x, dt, T, H, 0), ty = dmoe_tensor_2d(d_y, dt, T, H, 0);
        TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_OK);
        void *yo = tu_malloc((size_t)T * row);
        gpu_download(yo, d_y, (size_t)T * row);
        TU_CHECKF(memcmp(yo, y, (size_t)T * row) == 0, "the timed-out batch differs from the ordinary forward");
        tu_free(yo);
    }
    dmoe_resident_desc_init(&rd);
    rd.max_tokens = 8;
    rd.reject_nonfinite = 0;
    TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, &rd, &r), DMOE_OK);
    if (r) {
        int64_t differ = 0, checked = 0;
        for (int64_t i = 0; i < N && checked < 200; i++) {
            if (tok[i] > 8) continue;
            fill_x(seed, i, x, dt, tok[i] * H);
            dmoe_status st = run_batch(r, x, tok[i], row, NULL);
            TU_CHECK(st == DMOE_OK);
            if (st != DMOE_OK) break;
            differ += memcmp(dmoe_resident_output(r), yall + off[i], (size_t)tok[i] * row) != 0;
            checked++;
        }
        printf("  re-created (max_tokens 8): %lld batches, %lld differ%s\n", (long long)checked, (long long)differ,
               differ ? "  <-- FAIL" : "");
        TU_CHECK(differ == 0 && checked > 0);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, 9), DMOE_ERR_TOO_MANY_TOKENS);
        /* with reject_nonfinite = 0 a NaN batch runs */
        fill_x(seed, 7, x, dt, 2 * H);
        tu_set(x, dt, H + 3, NAN);
        TU_CHECK_STATUS(l.ctx, run_batch(r, x, 2, row, NULL), DMOE_OK);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_destroy(r), DMOE_OK);
    }
done:
    for (int s = 0; s < n_samples; s++) tu_free(ycpu[s]);
    tu_free(yall);
    tu_free(tok);
    tu_free(off);
    tu_free(x);
    tu_free(y);
    gpu_free(d_x);
    gpu_free(d_y);
    tu_layer_close(&l);
    gpu_model_free(&g);
    tu_model_free(&m);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A resident kernel that outlives destroy's budget (rs_destroy's orphan, rs_reap): a batch whose
 * weight bytes alone take >= 5 ms at 3.35 TB/s (the H100's HBM peak; ~4 ms on an H200; one batch is
 * timed first, skipped under 4 ms) is in flight when destroy runs with shutdown_timeout_ms = 1 (1 ms
 * for the batch, 1 ms for the stop); a 60 s alarm fails the test if the kernel never ends:
 *  - destroy gives DMOE_ERR_TIMEOUT, the layer refuses a forward for good, and the device refuses a
 *    new layer while the kernel still runs (probed at once, unless 0.6 of a batch's time has passed);
 *  - once the kernel has ended, the first look (a layer create) reaps it: the create succeeds and the
 *    orphan's device arena (>= 16 MB here) is free again (cudaMemGetInfo; nothing else allocates);
 *  - a new layer on the device then runs a resident batch that matches cpu-ref, and the stuck layer
 *    destroys cleanly. Weights are a constant (the orphan's output is never read), the router random
 *    so that the 64 tokens spread over the experts. Skipped where the device lacks the memory. */
/* A watchdog for tests that could hang: after `seconds` it prints msg as a failure and exits. */
static const char *watchdog_msg;
static void watchdog_fire(int sig) {
    (void)sig;
    if (write(1, watchdog_msg, strlen(watchdog_msg)) < 0) _exit(3);
    _exit(2);
}
static void watchdog_on(unsigned seconds, const char *msg) {
    watchdog_msg = msg;
    signal(SIGALRM, watchdog_fire);
    alarm(seconds);
}
static void watchdog_off(void) {
    alarm(0);
    signal(SIGALRM, SIG_DFL);
}

static void test_orphan_reaped_body(uint64_t seed);
static void test_orphan_reaped(uint64_t seed) {
    watchdog_on(60, "  the orphaned resident kernel did not end in 60 s  <-- FAIL\n");
    test_orphan_reaped_body(seed);
    watchdog_off();
}

static void test_orphan_reaped_body(uint64_t seed) {
    const int64_t H = 4096, F = 8192, E = 96, T = MAXT;
    const size_t es = 2, wbytes = (size_t)E * 3 * (size_t)F * (size_t)H * es;
    size_t free0 = 0, total = 0;
    GPU_CHECK(cudaMemGetInfo(&free0, &total));
    printf("orphan: H=%lld F=%lld E=%d K=8 bf16, %.1f GB of weights, batch of %lld tokens, shutdown 1 ms\n",
           (long long)H, (long long)F, (int)E, wbytes / 1e9, (long long)T);
    if (free0 < wbytes + ((size_t)4 << 30)) {
        printf("  SKIPPED: %.1f GB free on the device, %.1f GB needed\n", free0 / 1e9, wbytes / 1e9 + 4);
        return;
    }
    tu_rng rng;
    tu_rng_init(&rng, seed ^ 0x0f0f0f0full);
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = H;
    d.ffn = F;
    d.n_experts = (int32_t)E;
    d.top_k = 8;
    d.max_tokens = T;
    d.path = DMOE_PATH_FUSED;
    gpu_model g;
    memset(&g, 0, sizeof g);
    void *router_h = tu_malloc((size_t)E * (size_t)H * es);
    tu_fill_uniform(&rng, router_h, DMOE_DTYPE_BF16, E * H, -1.0, 1.0);
    g.router = gpu_upload(router_h, (size_t)E * (size_t)H * es);
    tu_free(router_h);
    g.w13 = gpu_alloc((size_t)E * 2 * (size_t)F * (size_t)H * es);
    g.w2 = gpu_alloc((size_t)E * (size_t)H * (size_t)F * es);
    GPU_CHECK(cudaMemset(g.w13, 0x3c, (size_t)E * 2 * (size_t)F * (size_t)H * es)); /* bf16 0x3c3c = 0.0115 */
    GPU_CHECK(cudaMemset(g.w2, 0x3c, (size_t)E * (size_t)H * (size_t)F * es));
    GPU_CHECK(cudaDeviceSynchronize());
    g.weights.router = g.router;
    g.weights.w13 = g.w13;
    g.weights.w2 = g.w2;
    tu_layer l;
    if (gpu_layer_open(&l, &d, &g) != DMOE_OK) {
        TU_CHECK(0);
        gpu_model_free(&g);
        return;
    }
    dmoe_resident_desc rd;
    dmoe_resident_desc_init(&rd);
    rd.max_tokens = T;
    rd.shutdown_timeout_ms = 1;
    dmoe_resident *r = NULL;
    TU_CHECK_STATUS(l.ctx, dmoe_resident_create(l.layer, &rd, &r), DMOE_OK);
    if (!r) {
        tu_layer_close(&l);
        gpu_model_free(&g);
        return;
    }
    void *d_io = gpu_alloc((size_t)2 * H * es); /* for the forward the stuck layer must refuse */
    fill_x(seed, 777, dmoe_resident_input(r), DMOE_DTYPE_BF16, T * H);
    /* one batch timed first: the test needs it to take well over destroy's 2 ms */
    double t_batch = now_us();
    TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, T), DMOE_OK);
    TU_CHECK_STATUS(l.ctx, dmoe_resident_wait(r, 10000), DMOE_OK);
    t_batch = now_us() - t_batch;
    printf("  one batch: %.2f ms\n", t_batch / 1e3);
    if (t_batch < 4000) {
        printf("  SKIPPED: a batch of %.2f ms is too short to outlive destroy's 2 ms budget for sure\n",
               t_batch / 1e3);
        TU_CHECK_STATUS(l.ctx, dmoe_resident_destroy(r), DMOE_OK);
        tu_layer_close(&l);
        gpu_free(d_io);
        gpu_model_free(&g);
        return;
    }
    TU_CHECK_STATUS(l.ctx, dmoe_resident_submit(r, T), DMOE_OK);
    const double t0 = now_us();
    const dmoe_status dst = dmoe_resident_destroy(r);
    const double t_destroy = now_us() - t0;
    TU_CHECKF(dst == DMOE_ERR_TIMEOUT, "destroy of a resident kernel busy with a %.1f GB batch, 1 ms budget: %s",
              wbytes / 1e9, dmoe_status_name(dst));
    printf("  destroy: %s after %.2f ms: %s\n", dmoe_status_name(dst), t_destroy / 1e3, dmoe_context_last_error(l.ctx));
    r = NULL;
    dmoe_layer_desc sd;
    dmoe_layer_desc_init(&sd);
    sd.hidden = 256;
    sd.ffn = 128;
    sd.n_experts = 16;
    sd.top_k = 4;
    sd.max_tokens = T;
    sd.path = DMOE_PATH_FUSED;
    dmoe_layer *probe = NULL;
    if (dst == DMOE_ERR_TIMEOUT) {
        dmoe_tensor tx = dmoe_tensor_2d(d_io, DMOE_DTYPE_BF16, 1, H, 0);
        dmoe_tensor ty = dmoe_tensor_2d((char *)d_io + H * es, DMOE_DTYPE_BF16, 1, H, 0);
        TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, NULL), DMOE_ERR_INVALID_ARGUMENT); /* stuck */
        /* the batch takes t_batch and destroy returned after ~2 ms: the kernel still runs */
        if (now_us() - t0 < 0.6 * t_batch) {
            TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, &sd, &probe), DMOE_ERR_INVALID_ARGUMENT);
            TU_CHECK(probe == NULL);
            printf("  at once: layer create %s\n", dmoe_context_last_error(l.ctx));
        } else {
            printf("  at once: not probed (%.2f ms since the submit: the batch may have ended)\n",
                   (now_us() - t0) / 1e3);
        }
        sleep_ms(300); /* the batch and the stop take a few ms */
        size_t free_orphan = 0, free_after = 0;
        GPU_CHECK(cudaMemGetInfo(&free_orphan, &total)); /* does not synchronise */
        TU_CHECK_STATUS(l.ctx, dmoe_layer_create(l.ctx, &sd, &probe), DMOE_OK); /* reaps the orphan */
        dmoe_layer_destroy(probe);
        probe = NULL;
        TU_CHECK_STATUS(l.ctx, dmoe_context_trim_memory(l.ctx), DMOE_OK);
        GPU_CHECK(cudaMemGetInfo(&free_after, &total));
        const double freed_mb = ((double)free_after - (double)free_orphan) / 1048576.0;
        printf("  after the kernel ended: the create reaped it, %.1f MB of device memory came back%s\n", freed_mb,
               freed_mb >= 16 ? "" : "  <-- FAIL");
        TU_CHECK(freed_mb >= 16);
    }
    /* the device takes a new resident kernel, whose batch is right */
    {
        tu_model m;
        gpu_model g2;
        tu_layer l2;
        tu_model_random(&m, &sd, &rng);
        gpu_model_upload(&g2, &m);
        if (gpu_layer_open(&l2, &sd, &g2) == DMOE_OK) {
            const int64_t T2 = 5, H2 = sd.hidden;
            const size_t row = (size_t)H2 * 2;
            void *x = tu_malloc((size_t)T2 * row), *yref = tu_malloc((size_t)T2 * row);
            fill_x(seed, 778, x, DMOE_DTYPE_BF16, T2 * H2);
            void *d_x = gpu_upload(x, (size_t)T2 * row);
            cpu_reference(&l2, &m, x, d_x, T2, yref);
            dmoe_resident *r2 = NULL;
            TU_CHECK_STATUS(l2.ctx, dmoe_resident_create(l2.layer, NULL, &r2), DMOE_OK);
            if (r2) {
                TU_CHECK_STATUS(l2.ctx, run_batch(r2, x, T2, row, NULL), DMOE_OK);
                TU_CHECK(tu_compare("  resident batch after the reap vs cpu-ref", dmoe_resident_output(r2),
                                    DMOE_DTYPE_BF16, yref, DMOE_DTYPE_BF16, T2, H2, NULL, 1e-2));
                TU_CHECK_STATUS(l2.ctx, dmoe_resident_destroy(r2), DMOE_OK);
            }
            gpu_free(d_x);
            tu_free(x);
            tu_free(yref);
            tu_layer_close(&l2);
        } else {
            TU_CHECK(0);
        }
        gpu_model_free(&g2);
        tu_model_free(&m);
    }
    tu_layer_close(&l); /* the stuck layer: destroy is the one call it takes */
    gpu_free(d_io);
    gpu_model_free(&g);
}

/* Layer creation racing dmoe_resident_create on the same device (the resident gate, resident.h):
 * thread A creates layers (each creation synchronises with the device) while this thread runs
 * resident kernels one after another (create, one batch checked against cpu-ref, destroy). Without
 * the gate A can pass its "no resident kernel" check, the resident kernel launch, and A's
 * synchronisation wait for that kernel until it is destroyed. So each kernel is kept alive until A
 * has finished two more calls (refused: a resident kernel runs), at most 5 s: an A stuck behind the
 * kernel fails the test ("creator stuck"). Every call must return (a 120 s alarm fails the test
 * otherwise), A's creations succeed or are refused with DMOE_ERR_INVALID_ARGUMENT (some must be
 * refused), and every resident batch is right. */
#define GATE_MAX 1024
#define GATE_CYCLES 40
typedef struct gate_race {
    dmoe_context *ctx; /* thread A's */
    dmoe_layer_desc desc;
    dmoe_layer *made[GATE_MAX];
    int ok, refused, other;
    int calls, done, stop; /* atomics */
} gate_race;

static void *gate_race_creator(void *arg) {
    gate_race *gr = (gate_race *)arg;
    for (int i = 0; i < GATE_MAX && !__atomic_load_n(&gr->stop, __ATOMIC_ACQUIRE); i++) {
        const dmoe_status st = dmoe_layer_create(gr->ctx, &gr->desc, &gr->made[i]);
        if (st == DMOE_OK) gr->ok++;
        else if (st == DMOE_ERR_INVALID_ARGUMENT) {
            gr->refused++;
            const struct timespec ts = {0, 200000L}; /* 0.2 ms: refusals are quick, keep calls for later kernels */
            nanosleep(&ts, NULL);
        } else if (gr->other++ < 3)
            printf("  creator: %s: %s  <-- FAIL\n", dmoe_status_name(st), dmoe_context_last_error(gr->ctx));
        __atomic_add_fetch(&gr->calls, 1, __ATOMIC_ACQ_REL);
    }
    __atomic_store_n(&gr->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* 1 once A has finished `more` calls after `from` (or has stopped), 0 after timeout_ms */
static int gate_race_progress(gate_race *gr, int from, int more, int timeout_ms) {
    const double t0 = now_us();
    while (now_us() - t0 < timeout_ms * 1e3) {
        if (__atomic_load_n(&gr->calls, __ATOMIC_ACQUIRE) >= from + more || __atomic_load_n(&gr->done, __ATOMIC_ACQUIRE))
            return 1;
        sleep_ms(1);
    }
    return 0;
}

static void test_gate_race(uint64_t seed) {
    gate_race *gr = (gate_race *)calloc(1, sizeof *gr);
    if (!gr) {
        TU_CHECK(0);
        return;
    }
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 256;
    d.ffn = 128;
    d.n_experts = 16;
    d.top_k = 4;
    d.max_tokens = MAXT;
    d.path = DMOE_PATH_FUSED;
    tu_rng rng;
    tu_rng_init(&rng, seed);
    tu_model m;
    gpu_model g;
    tu_layer l;
    tu_model_random(&m, &d, &rng);
    gpu_model_upload(&g, &m);
    if (gpu_layer_open(&l, &d, &g) != DMOE_OK) {
        TU_CHECK(0);
        gpu_model_free(&g);
        tu_model_free(&m);
        free(gr);
        return;
    }
    const int64_t T = 5, H = d.hidden;
    const size_t row = (size_t)H * 2;
    void *x = tu_malloc((size_t)T * row), *yref = tu_malloc((size_t)T * row);
    fill_x(seed, 779, x, DMOE_DTYPE_BF16, T * H);
    void *d_x = gpu_upload(x, (size_t)T * row);
    cpu_reference(&l, &m, x, d_x, T, yref);
    gr->desc = d;
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &gr->ctx), DMOE_OK);
    pthread_t a;
    int started = 0, batches = 0, bad = 0, stuck = 0;
    if (gr->ctx) {
        watchdog_on(120, "  layer creation racing dmoe_resident_create did not finish in 120 s  <-- FAIL\n");
        started = pthread_create(&a, NULL, gate_race_creator, gr) == 0;
        TU_CHECK(started);
        for (int j = 0; started && j < GATE_CYCLES; j++) {
            dmoe_resident *r = NULL;
            dmoe_status st = dmoe_resident_create(l.layer, NULL, &r);
            if (st != DMOE_OK) {
                if (bad++ < 3) printf("  resident create %d: %s: %s  <-- FAIL\n", j, dmoe_status_name(st),
                                      dmoe_context_last_error(l.ctx));
                continue;
            }
            const int from = __atomic_load_n(&gr->calls, __ATOMIC_ACQUIRE);
            if (!gate_race_progress(gr, from, 2, 5000) && stuck++ < 3)
                printf("  creator stuck behind resident kernel %d (no call of thread A returned in 5 s)  <-- FAIL\n", j);
            st = run_batch(r, x, T, row, NULL);
            if (st != DMOE_OK || !tu_compare("  resident batch while layers are created vs cpu-ref",
                                             dmoe_resident_output(r), DMOE_DTYPE_BF16, yref, DMOE_DTYPE_BF16, T, H,
                                             NULL, 1e-2))
                bad++;
            else
                batches++;
            if (dmoe_resident_destroy(r) != DMOE_OK) bad++;
        }
        __atomic_store_n(&gr->stop, 1, __ATOMIC_RELEASE);
        if (started) pthread_join(a, NULL);
        watchdog_off();
    }
    const int fail = bad || stuck || gr->other || batches != GATE_CYCLES || gr->refused == 0 ||
                     gr->ok + gr->refused != gr->calls;
    printf("gate race: %d resident kernels with a checked batch each, %d failed, %d with thread A stuck; meanwhile "
           "%d layers created, %d refused (a resident kernel ran), %d other statuses%s\n",
           batches, bad, stuck, gr->ok, gr->refused, gr->other, fail ? "  <-- FAIL" : "");
    TU_CHECK(!fail);
    for (int i = 0; i < GATE_MAX; i++) dmoe_layer_destroy(gr->made[i]);
    dmoe_context_destroy(gr->ctx);
    free(gr);
    gpu_free(d_x);
    tu_free(x);
    tu_free(yref);
    tu_layer_close(&l);
    gpu_model_free(&g);
    tu_model_free(&m);
}

int main(void) {
    if (gpu_skip("test-cuda-resident")) return TU_SKIP;
    const char *q = getenv("DMOE_GPU_TEST_QUICK");
    quick = q && *q && strcmp(q, "0") != 0;
    const uint64_t seed = tu_seed();

    dmoe_layer_desc a;
    dmoe_layer_desc_init(&a);
    a.hidden = 256;
    a.ffn = 128;
    a.n_experts = 16;
    a.top_k = 4;
    a.max_tokens = MAXT;
    a.path = DMOE_PATH_FUSED;
    run_shape("small", &a, seed);

    dmoe_layer_desc b;
    dmoe_layer_desc_init(&b);
    b.hidden = 200;
    b.ffn = 72;
    b.n_experts = 12;
    b.top_k = 3;
    b.n_shared_experts = 1;
    b.shared_ffn = 40;
    b.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    b.routing.scoring = DMOE_SCORING_SIGMOID;
    b.routing.use_correction_bias = 1;
    b.routing.n_group = 4;
    b.routing.topk_group = 2;
    b.routing.routed_scaling_factor = 2.5f;
    b.act_dtype = DMOE_DTYPE_F16;
    b.weight_dtype = DMOE_DTYPE_F16;
    b.max_tokens = 96;
    b.path = DMOE_PATH_FUSED;
    run_shape("odd", &b, seed + 1);
    if (!quick) test_orphan_reaped(seed + 2);
    if (!quick) test_gate_race(seed + 3);
    return tu_finish("test-cuda-resident");
}
