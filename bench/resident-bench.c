/*
 * resident-bench: per-batch latency of the resident serving mode beside the
 * graph-replayed ordinary fused forward, on one layer shape (default the
 * qwen3-30b-a3b layer: H=2048 F=768 E=128 K=8, bf16).
 *
 *   resident-bench [H F E K] [--batches N]
 *
 * For each T in {1, 16}:
 *   fused (graph)  dmoe_forward with desc.path = FUSED captured in a CUDA
 *                  graph, 1000 replays each timed with CUDA events (after 50
 *                  warm-ups): median and P99 of the device time;
 *                  and the same replays timed on the host (launch to the
 *                  return of cudaStreamSynchronize), median and P99, alone
 *                  and with x copied in from / y copied out to pinned host
 *                  memory on the same stream (what the resident mode does);
 *   resident       N batches (default 10,000) through dmoe_resident_*: host
 *                  time from submit to the wait's return (x already in the
 *                  pinned input buffer), P50 and P99;
 * plus the floor (bytes of the experts the batch hits + router + x + y over
 * the device-to-device copy bandwidth measured here) and the fraction of it.
 * The first resident batch is checked bitwise against the graph's output.
 * Weights: one random expert copied to every expert slot (timing does not
 * depend on the values; random routing spreads tokens over experts).
 */
#include <math.h>
#include <time.h>

#include "gpu-util.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(double *v, int n, double p) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

/* Device copy bandwidth: bytes read + written per second, 1 GiB copies, median of 5. */
static double copy_bw(void) {
    const size_t n = (size_t)1 << 30;
    void *a = gpu_alloc(n), *b = gpu_alloc(n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double t[5];
    GPU_CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < 5; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        t[i] = 2.0 * (double)n / (ms * 1e-3);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    gpu_free(a);
    gpu_free(b);
    return pct(t, 5, 0.5);
}

static void fill_random_bf16(tu_rng *rng, void *h, size_t n, double scale) {
    tu_fill_uniform(rng, h, DMOE_DTYPE_BF16, (int64_t)n, -scale, scale);
}

int main(int argc, char **argv) {
    if (gpu_skip("resident-bench")) return TU_SKIP;
    int64_t H = 2048, F = 768;
    int E = 128, K = 8, N = 10000;
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc) N = atoi(argv[++i]);
        else if (pos == 0) H = atoll(argv[i]), pos++;
        else if (pos == 1) F = atoll(argv[i]), pos++;
        else if (pos == 2) E = atoi(argv[i]), pos++;
        else if (pos == 3) K = atoi(argv[i]), pos++;
    }
    if (N < 100) N = 100;
    struct cudaDeviceProp prop;
    GPU_CHECK(cudaGetDeviceProperties(&prop, 0));
    const double bw = copy_bw();
    printf("resident-bench: %s, H=%lld F=%lld E=%d K=%d bf16, copy bandwidth %.0f GB/s, %d resident batches\n",
           prop.name, (long long)H, (long long)F, E, K, bw / 1e9, N);

    /* weights: one random expert replicated */
    tu_rng rng;
    tu_rng_init(&rng, 1234);
    const size_t e13 = (size_t)(2 * F * H), e2 = (size_t)(H * F);
    void *h13 = tu_malloc(e13 * 2), *h2 = tu_malloc(e2 * 2), *hr = tu_malloc((size_t)E * (size_t)H * 2);
    fill_random_bf16(&rng, h13, e13, 1.0 / sqrt((double)H));
    fill_random_bf16(&rng, h2, e2, 1.0 / sqrt((double)F));
    fill_random_bf16(&rng, hr, (size_t)E * (size_t)H, 1.0 / sqrt((double)H));
    char *d13 = (char *)gpu_alloc(e13 * 2 * (size_t)E), *d2 = (char *)gpu_alloc(e2 * 2 * (size_t)E);
    void *dr = gpu_upload(hr, (size_t)E * (size_t)H * 2);
    for (int e = 0; e < E; e++) {
        GPU_CHECK(cudaMemcpy(d13 + e13 * 2 * (size_t)e, h13, e13 * 2, cudaMemcpyHostToDevice));
        GPU_CHECK(cudaMemcpy(d2 + e2 * 2 * (size_t)e, h2, e2 * 2, cudaMemcpyHostToDevice));
    }
    dmoe_weights w;
    memset(&w, 0, sizeof w);
    w.router = dr;
    w.w13 = d13;
    w.w2 = d2;

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    dmoe_context *ctx = NULL;
    if (dmoe_context_create(&cd, &ctx) != DMOE_OK) {
        printf("context: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = H;
    d.ffn = F;
    d.n_experts = E;
    d.top_k = K;
    d.max_tokens = 64;
    d.path = DMOE_PATH_FUSED;
    dmoe_layer *layer = NULL;
    if (dmoe_layer_create(ctx, &d, &layer) != DMOE_OK || dmoe_layer_set_weights(layer, &w) != DMOE_OK) {
        printf("layer: %s\n", dmoe_context_last_error(ctx));
        return 1;
    }
    printf("| T | graph device median us | graph device P99 us | graph host median us | graph host P99 us | "
           "graph+copies host median us | graph+copies host P99 us | resident P50 us | resident P99 us | "
           "resident mean us | floor us | graph frac | resident P50 frac |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const int Ts[2] = {1, 16};
    double *lat = (double *)tu_malloc(sizeof(double) * (size_t)(N > 1000 ? N : 1000));
    for (int ti = 0; ti < 2; ti++) {
        const int64_t T = Ts[ti];
        const size_t xb = (size_t)(T * H) * 2;
        void *x = tu_malloc(xb), *yg = tu_malloc(xb);
        tu_fill_uniform(&rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
        void *d_x = gpu_upload(x, xb), *d_y = gpu_alloc(xb);
        /* experts hit, from the layer's own routing */
        int32_t *d_ids = (int32_t *)gpu_alloc((size_t)(T * K) * 4);
        float *d_w = (float *)gpu_alloc((size_t)(T * K) * 4);
        dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, T, H, 0), ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ti_ = dmoe_tensor_2d(d_ids, DMOE_DTYPE_I32, T, K, 0), tw = dmoe_tensor_2d(d_w, DMOE_DTYPE_F32, T, K, 0);
        if (dmoe_route(layer, &tx, &ti_, &tw, NULL) != DMOE_OK) printf("route: %s\n", dmoe_context_last_error(ctx));
        int32_t *ids = (int32_t *)tu_malloc((size_t)(T * K) * 4);
        gpu_download(ids, d_ids, (size_t)(T * K) * 4);
        int hit = 0;
        unsigned char *seen = (unsigned char *)calloc((size_t)E, 1);
        for (int64_t i = 0; i < T * K; i++)
            if (ids[i] >= 0 && ids[i] < E && !seen[ids[i]]) seen[ids[i]] = 1, hit++;
        free(seen);
        const double bytes = (double)hit * 3.0 * (double)H * (double)F * 2 + (double)E * (double)H * 2 + 2.0 * (double)xb;
        const double floor_us = bytes / bw * 1e6;

        /* fused forward, graph-replayed */
        cudaStream_t s;
        GPU_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        if (dmoe_forward(layer, &tx, &ty, s) != DMOE_OK) printf("forward: %s\n", dmoe_context_last_error(ctx));
        GPU_CHECK(cudaStreamSynchronize(s));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        GPU_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        dmoe_status st = dmoe_forward(layer, &tx, &ty, s);
        GPU_CHECK(cudaStreamEndCapture(s, &graph));
        if (st != DMOE_OK) printf("capture: %s\n", dmoe_context_last_error(ctx));
        GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        for (int i = 0; i < 50; i++) cudaGraphLaunch(exec, s);
        for (int i = 0; i < 1000; i++) {
            cudaEventRecord(e0, s);
            cudaGraphLaunch(exec, s);
            cudaEventRecord(e1, s);
            cudaEventSynchronize(e1);
            float ms = 0;
            cudaEventElapsedTime(&ms, e0, e1);
            lat[i] = ms * 1e3;
        }
        const double g50 = pct(lat, 1000, 0.5), g99 = pct(lat, 1000, 0.99);
        /* the same replay measured on the host: launch to the return of a stream sync */
        for (int i = 0; i < 1000; i++) {
            const double t0 = now_us();
            cudaGraphLaunch(exec, s);
            cudaStreamSynchronize(s);
            lat[i] = now_us() - t0;
        }
        const double gh50 = pct(lat, 1000, 0.5), gh99 = pct(lat, 1000, 0.99);
        /* and with x copied in from pinned host memory and y copied back, as the
         * resident mode does: launch to the return of a stream sync */
        void *xp = NULL, *yp = NULL;
        GPU_CHECK(cudaMallocHost(&xp, xb));
        GPU_CHECK(cudaMallocHost(&yp, xb));
        memcpy(xp, x, xb);
        for (int i = 0; i < 1000; i++) {
            const double t0 = now_us();
            cudaMemcpyAsync(d_x, xp, xb, cudaMemcpyHostToDevice, s);
            cudaGraphLaunch(exec, s);
            cudaMemcpyAsync(yp, d_y, xb, cudaMemcpyDeviceToHost, s);
            cudaStreamSynchronize(s);
            lat[i] = now_us() - t0;
        }
        const double gc50 = pct(lat, 1000, 0.5), gc99 = pct(lat, 1000, 0.99);
        cudaFreeHost(xp);
        cudaFreeHost(yp);
        gpu_download(yg, d_y, xb);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        GPU_CHECK(cudaStreamSynchronize(s));
        cudaStreamDestroy(s);

        /* resident */
        dmoe_resident *r = NULL;
        dmoe_resident_desc rd;
        dmoe_resident_desc_init(&rd);
        rd.max_tokens = 16;
        if (dmoe_resident_create(layer, &rd, &r) != DMOE_OK) {
            printf("resident: %s\n", dmoe_context_last_error(ctx));
            return 1;
        }
        memcpy(dmoe_resident_input(r), x, xb);
        double sum = 0;
        int bad = 0;
        for (int i = 0; i < 100; i++) { /* warm-up */
            dmoe_resident_submit(r, T);
            if (dmoe_resident_wait(r, 5000) != DMOE_OK) bad++;
            if (i == 0 && memcmp(dmoe_resident_output(r), yg, xb) != 0) {
                printf("T=%lld: resident output differs from the graph's  <-- FAIL\n", (long long)T);
                bad++;
            }
        }
        for (int i = 0; i < N; i++) {
            const double t0 = now_us();
            dmoe_resident_submit(r, T);
            st = dmoe_resident_wait(r, 5000);
            lat[i] = now_us() - t0;
            sum += lat[i];
            if (st != DMOE_OK) bad++;
        }
        const double r50 = pct(lat, N, 0.5), r99 = pct(lat, N, 0.99);
        if (dmoe_resident_destroy(r) != DMOE_OK) printf("destroy: %s\n", dmoe_context_last_error(ctx));
        printf("| %lld | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |%s\n",
               (long long)T, g50, g99, gh50, gh99, gc50, gc99, r50, r99, sum / N, floor_us, floor_us / g50,
               floor_us / r50, bad ? "  <-- FAILED BATCHES" : "");
        printf("  (T=%lld: %d experts hit, %.1f MB)\n", (long long)T, hit, bytes / 1e6);
        gpu_free(d_x); gpu_free(d_y); gpu_free(d_ids); gpu_free(d_w);
        tu_free(x); tu_free(yg); tu_free(ids);
    }
    tu_free(lat);
    dmoe_layer_destroy(layer);
    dmoe_context_destroy(ctx);
    return 0;
}
