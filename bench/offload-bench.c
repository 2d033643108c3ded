/*
 * offload-bench: decode with the GPU expert cache (dmoe.h) against the naive
 * offload (copy each needed expert before every forward), on the expert
 * shapes of qwen3-30b-a3b (H=2048 F=768 E=128 K=8) and mixtral-8x7b (H=4096
 * F=14336 E=8 K=2), T = 1, 4, 16, cache of 25% and 50% of the experts.
 *
 * Measured in the same run, first:
 *   h2d   cudaMemcpyAsync from pinned host memory to the device (256 MB, median of 5)
 *   d2d   device-to-device cudaMemcpyAsync, bytes read + written (1 GB, median of 5)
 *   fill  the cache's install kernel (zero-copy reads of mapped host memory),
 *         timed as a prefetch of n_slots experts into an empty cache
 * Routing: each token picks K distinct experts from a Zipf law (s = 1) over
 * expert ranks (rank r -> expert perm[r], a fixed random permutation), fixed
 * seed; the ids of every step are uploaded before timing, and the steps run
 * back to back through dmoe_experts (caller ids) on one stream, timed with
 * CUDA events after WARM warm-up steps.
 * Bound of a cell = sum over steps of (miss bytes / h2d + active expert bytes / d2d),
 * with d2d in bytes read + written as in KERNELS.md's floor:
 * the PCIe time of what was missing plus the HBM floor of reading every active
 * expert once (FLOPs are < 1% of that at T <= 16). fraction = bound / measured.
 * Naive: all experts in a full-size device array; before each forward the
 * step's distinct experts are copied from pinned memory with cudaMemcpyAsync
 * (w13 and w2 of each), then the uncached forward runs.
 *
 * Hybrid (the llama.cpp / ktransformers placement): the n_slots most popular
 * experts (ranks 0..n_slots-1) stay on the GPU, every other pair runs on the
 * CPU backend (all cores) from the same host weights, concurrently with the
 * GPU part; the CPU partial is added on the host and y uploaded again. Timed
 * with the host clock per step (it synchronises: not graph-capturable);
 * hyb_l2 = rel L2 of its output against the all-GPU forward (same routing).
 *
 *   offload-bench [steps]   timed steps per qwen3 cell (default 100; mixtral a quarter)
 *   DMOE_OFFLOAD_HYBRID=0   skips the hybrid strategy
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dmoe.h"

#define CK(expr)                                                                             \
    do {                                                                                     \
        cudaError_t e_ = (expr);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)
#define DK(ctx, expr)                                                                        \
    do {                                                                                     \
        dmoe_status s_ = (expr);                                                             \
        if (s_ != DMOE_OK) {                                                                 \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                     \
                    dmoe_context_last_error(ctx));                                           \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)


static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static float median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_f);
    return v[n / 2];
}

/* GB/s of a cudaMemcpyAsync of bytes (x factor for bytes counted), median of 5. */
static double copy_bw(void *dst, const void *src, size_t bytes, double factor, cudaStream_t s) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    float ms[5];
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
    for (int i = 0; i < 5; i++) {
        CK(cudaEventRecord(a, s));
        CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&ms[i], a, b));
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return factor * (double)bytes / (median(ms, 5) * 1e-3) / 1e9;
}

typedef struct shape {
    const char *name;
    int64_t H, F;
    int32_t E, K;
} shape;

/* Random bf16 values: a block of 2^20 fresh values, then copies of it at
 * shifting offsets (GBs of weights; the kernels' speed does not depend on them). */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
static float bf16_f(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static uint16_t f_bf16(float f) { /* round to nearest even (finite inputs) */
    union { uint32_t u; float f; } v;
    v.f = f;
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* The hybrid strategy's result of one cell. */
typedef struct hybrid_res {
    double us_per_step, gpu_pair_frac, cpu_pairs_per_step, rel_l2;
} hybrid_res;

/* Runs n_steps steps (the first warm untimed): pairs whose expert is resident[] run on the GPU
 * layer (others get id -1, which the cuda backend skips), the rest on the CPU layer; the CPU
 * partial is added on the host. Last step's y is compared with the all-GPU forward. */
static hybrid_res run_hybrid(dmoe_context *gctx, dmoe_layer *plain, dmoe_context *cctx, dmoe_layer *cpu,
                             const unsigned char *resident, const int32_t *ids, const float *wts, int n_steps,
                             int warm, int T, int64_t H, int64_t K, const uint16_t *hx, void *d_x, void *d_y,
                             cudaStream_t s) {
    hybrid_res r;
    memset(&r, 0, sizeof r);
    const size_t yb = (size_t)(T * H) * 2;
    int32_t *g_ids, *c_ids;
    float *g_w, *c_w;
    uint16_t *hy, *cx, *cy, *ref;
    CK(cudaHostAlloc((void **)&g_ids, sizeof(int32_t) * (size_t)(T * K), cudaHostAllocDefault));
    CK(cudaHostAlloc((void **)&g_w, sizeof(float) * (size_t)(T * K), cudaHostAllocDefault));
    CK(cudaHostAlloc((void **)&hy, yb, cudaHostAllocDefault));
    c_ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(T * K));
    c_w = (float *)malloc(sizeof(float) * (size_t)(T * K));
    cx = (uint16_t *)malloc(yb);
    cy = (uint16_t *)malloc(yb);
    ref = (uint16_t *)malloc(yb);
    int32_t *d_gids;
    float *d_gw;
    CK(cudaMalloc((void **)&d_gids, sizeof(int32_t) * (size_t)(T * K)));
    CK(cudaMalloc((void **)&d_gw, sizeof(float) * (size_t)(T * K)));
    int tok_of[16];
    double t_sum = 0, gpu_pairs = 0, cpu_pairs = 0;
    for (int st = 0; st < n_steps; st++) {
        const int32_t *si = ids + (int64_t)st * T * K;
        const float *sw = wts + (int64_t)st * T * K;
        const double t0 = now_s();
        /* split the pairs */
        int tc = 0;
        for (int t = 0; t < T; t++) {
            int first_miss = -1;
            for (int k = 0; k < K; k++) {
                const int32_t e = si[t * K + k];
                const int on_gpu = resident[e];
                g_ids[t * K + k] = on_gpu ? e : -1;
                g_w[t * K + k] = on_gpu ? sw[t * K + k] : 0.0f;
                if (!on_gpu && first_miss < 0) first_miss = e;
                if (st >= warm) {
                    gpu_pairs += on_gpu;
                    cpu_pairs += !on_gpu;
                }
            }
            if (first_miss >= 0) { /* this token has CPU pairs: K slots, the GPU ones weighted 0 */
                for (int k = 0; k < K; k++) {
                    const int32_t e = si[t * K + k];
                    c_ids[tc * K + k] = resident[e] ? first_miss : e;
                    c_w[tc * K + k] = resident[e] ? 0.0f : sw[t * K + k];
                }
                memcpy(cx + (size_t)tc * H, hx + (size_t)t * H, (size_t)H * 2);
                tok_of[tc++] = t;
            }
        }
        /* GPU part, asynchronous */
        CK(cudaMemcpyAsync(d_gids, g_ids, sizeof(int32_t) * (size_t)(T * K), cudaMemcpyHostToDevice, s));
        CK(cudaMemcpyAsync(d_gw, g_w, sizeof(float) * (size_t)(T * K), cudaMemcpyHostToDevice, s));
        dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ti = dmoe_tensor_2d(d_gids, DMOE_DTYPE_I32, T, K, 0);
        dmoe_tensor tw = dmoe_tensor_2d(d_gw, DMOE_DTYPE_F32, T, K, 0);
        DK(gctx, dmoe_experts(plain, &tx, &ti, &tw, &ty, s));
        CK(cudaMemcpyAsync(hy, d_y, yb, cudaMemcpyDeviceToHost, s));
        /* CPU part meanwhile */
        if (tc > 0) {
            dmoe_tensor hx_ = dmoe_tensor_2d(cx, DMOE_DTYPE_BF16, tc, H, DMOE_DEVICE_HOST);
            dmoe_tensor hy_ = dmoe_tensor_2d(cy, DMOE_DTYPE_BF16, tc, H, DMOE_DEVICE_HOST);
            dmoe_tensor hi_ = dmoe_tensor_2d(c_ids, DMOE_DTYPE_I32, tc, K, DMOE_DEVICE_HOST);
            dmoe_tensor hw_ = dmoe_tensor_2d(c_w, DMOE_DTYPE_F32, tc, K, DMOE_DEVICE_HOST);
            DK(cctx, dmoe_experts(cpu, &hx_, &hi_, &hw_, &hy_, NULL));
        }
        CK(cudaStreamSynchronize(s));
        for (int j = 0; j < tc; j++)
            for (int64_t h = 0; h < H; h++) {
                uint16_t *o = hy + (size_t)tok_of[j] * H + h;
                *o = f_bf16(bf16_f(*o) + bf16_f(cy[(size_t)j * H + h]));
            }
        CK(cudaMemcpyAsync(d_y, hy, yb, cudaMemcpyHostToDevice, s)); /* y back where the next layer reads it */
        CK(cudaStreamSynchronize(s));
        if (st >= warm) t_sum += now_s() - t0;
    }
    /* the last step against the all-GPU forward on the same routing */
    {
        const int st = n_steps - 1;
        CK(cudaMemcpy(d_gids, ids + (int64_t)st * T * K, sizeof(int32_t) * (size_t)(T * K), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_gw, wts + (int64_t)st * T * K, sizeof(float) * (size_t)(T * K), cudaMemcpyHostToDevice));
        dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ti = dmoe_tensor_2d(d_gids, DMOE_DTYPE_I32, T, K, 0);
        dmoe_tensor tw = dmoe_tensor_2d(d_gw, DMOE_DTYPE_F32, T, K, 0);
        DK(gctx, dmoe_experts(plain, &tx, &ti, &tw, &ty, s));
        CK(cudaStreamSynchronize(s));
        CK(cudaMemcpy(ref, d_y, yb, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (size_t i = 0; i < (size_t)(T * H); i++) {
            const double a = bf16_f(hy[i]), b = bf16_f(ref[i]);
            num += (a - b) * (a - b);
            den += b * b;
        }
        r.rel_l2 = den > 0 ? sqrt(num / den) : 0;
    }
    const int timed = n_steps - warm;
    r.us_per_step = t_sum / timed * 1e6;
    r.gpu_pair_frac = gpu_pairs / (gpu_pairs + cpu_pairs);
    r.cpu_pairs_per_step = cpu_pairs / timed;
    cudaFree(d_gids);
    cudaFree(d_gw);
    cudaFreeHost(g_ids);
    cudaFreeHost(g_w);
    cudaFreeHost(hy);
    free(c_ids);
    free(c_w);
    free(cx);
    free(cy);
    free(ref);
    return r;
}

static void fill_bf16(uint16_t *p, size_t n, float scale) {
    const size_t blk = (size_t)1 << 20;
    const size_t m = n < blk ? n : blk;
    for (size_t i = 0; i < m; i++) {
        float f = (float)(urand() * 2.0 - 1.0) * scale;
        uint32_t u;
        memcpy(&u, &f, 4);
        p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    for (size_t i = m, sh = 1; i < n; i += m, sh = sh * 7 % m + 1) {
        const size_t len = n - i < m - sh ? n - i : m - sh;
        memcpy(p + i, p + sh, len * 2);
        if (len < m && i + len < n) {
            const size_t rest = n - i - len < sh ? n - i - len : sh;
            memcpy(p + i + len, p, rest * 2);
        }
    }
}

int main(int argc, char **argv) {
    /* timed steps per cell (after warm-up), qwen3 and mixtral */
    const int steps_arg = argc > 1 ? atoi(argv[1]) : 100;
    if (!dmoe_backend_available(DMOE_BACKEND_CUDA)) {
        printf("offload-bench: SKIPPED: no CUDA device\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    /* bandwidths */
    const size_t hb = 256u << 20, db = 1024u << 20;
    void *pin = NULL, *dev = NULL, *dev2 = NULL;
    CK(cudaHostAlloc(&pin, hb, cudaHostAllocMapped));
    memset(pin, 1, hb);
    CK(cudaMalloc(&dev, db));
    CK(cudaMalloc(&dev2, db));
    const double h2d = copy_bw(dev, pin, hb, 1.0, s);
    const double d2d = copy_bw(dev2, dev, db, 2.0, s);
    cudaFreeHost(pin);
    cudaFree(dev);
    cudaFree(dev2);
    const char *im = getenv("DMOE_CACHE_INSTALL");
    printf("device: %s, %d SMs; cache installs by %s\n", prop.name, prop.multiProcessorCount,
           im && strcmp(im, "stream") == 0 ? "the decode GEMM (DMOE_CACHE_INSTALL=stream)"
                                           : "the copy kernel, overlapped with the GEMM (default)");
    printf("measured: h2d pinned cudaMemcpyAsync %.1f GB/s, d2d copy %.0f GB/s (read + written)\n", h2d, d2d);

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    dmoe_context *ctx = NULL;
    DK(NULL, dmoe_context_create(&cd, &ctx));
    const char *hyb_env = getenv("DMOE_OFFLOAD_HYBRID");
    const int hybrid = !(hyb_env && strcmp(hyb_env, "0") == 0);
    dmoe_context *cctx = NULL; /* the CPU backend, all cores, for the hybrid strategy */
    if (hybrid) {
        dmoe_context_desc ccd;
        dmoe_context_desc_init(&ccd);
        ccd.backend = DMOE_BACKEND_CPU;
        DK(NULL, dmoe_context_create(&ccd, &cctx));
        printf("hybrid strategy: cpu backend, %d threads\n", (int)dmoe_context_n_threads(cctx));
    }

    const shape shapes[2] = {{"qwen3-30b-a3b", 2048, 768, 128, 8}, {"mixtral-8x7b", 4096, 14336, 8, 2}};
    const int Ts[3] = {1, 4, 16};
    const int pcts[2] = {25, 50};
    printf("\n%-14s %3s %5s %9s %7s %9s %9s %9s %6s | %9s %9s %6s | %9s\n", "shape", "T", "cache",
           "tok/s", "hit%", "us/step", "bound_us", "fill_GBs", "frac", "naive_t/s", "naive_us", "frac",
           "resident_us");
    for (int si = 0; si < 2; si++) {
        const shape *sh = &shapes[si];
        const int64_t H = sh->H, F = sh->F, E = sh->E, K = sh->K;
        /* a mixtral miss moves 352 MB: fewer steps */
        const int steps = si == 0 ? steps_arg : (steps_arg + 3) / 4;
        const int WARM = si == 0 ? 20 : 5;
        const size_t w13b = (size_t)(2 * F * H) * 2, w2b = (size_t)(H * F) * 2, eb = w13b + w2b;
        /* weights: random bf16 on the host (pinned, for the naive copies), copied to the device */
        uint16_t *h_w13 = NULL, *h_w2 = NULL, *h_router = NULL;
        CK(cudaHostAlloc((void **)&h_w13, (size_t)E * w13b, cudaHostAllocDefault));
        CK(cudaHostAlloc((void **)&h_w2, (size_t)E * w2b, cudaHostAllocDefault));
        h_router = (uint16_t *)malloc((size_t)(E * H) * 2);
        fill_bf16(h_w13, (size_t)E * w13b / 2, 0.02f);
        fill_bf16(h_w2, (size_t)E * w2b / 2, 0.02f);
        fill_bf16(h_router, (size_t)(E * H), 0.02f);
        void *d_w13, *d_w2, *d_router;
        CK(cudaMalloc(&d_w13, (size_t)E * w13b));
        CK(cudaMalloc(&d_w2, (size_t)E * w2b));
        CK(cudaMalloc(&d_router, (size_t)(E * H) * 2));
        CK(cudaMemcpy(d_w13, h_w13, (size_t)E * w13b, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_w2, h_w2, (size_t)E * w2b, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_router, h_router, (size_t)(E * H) * 2, cudaMemcpyHostToDevice));
        dmoe_layer_desc d;
        dmoe_layer_desc_init(&d);
        d.hidden = H;
        d.ffn = F;
        d.n_experts = (int32_t)E;
        d.top_k = (int32_t)K;
        d.max_tokens = 16;
        dmoe_weights w;
        memset(&w, 0, sizeof w);
        w.router = d_router;
        w.w13 = d_w13;
        w.w2 = d_w2;
        dmoe_layer *plain = NULL;
        DK(ctx, dmoe_layer_create(ctx, &d, &plain));
        DK(ctx, dmoe_layer_set_weights(plain, &w));
        dmoe_layer *cpu = NULL; /* the same weights, read from host memory by the CPU backend */
        if (hybrid) {
            dmoe_weights hw;
            memset(&hw, 0, sizeof hw);
            hw.router = h_router;
            hw.w13 = h_w13;
            hw.w2 = h_w2;
            DK(cctx, dmoe_layer_create(cctx, &d, &cpu));
            DK(cctx, dmoe_layer_set_weights(cpu, &hw));
        }
        /* Zipf(1) over ranks, ranks mapped to experts by a fixed permutation */
        int32_t perm[1024];
        double cdf[1024], z = 0.0;
        for (int i = 0; i < E; i++) perm[i] = i;
        for (int i = (int)E - 1; i > 0; i--) {
            int j = (int)(urand() * (i + 1));
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        for (int r = 0; r < E; r++) z += 1.0 / (r + 1);
        double acc = 0.0;
        for (int r = 0; r < E; r++) cdf[r] = (acc += 1.0 / (r + 1) / z);
        for (int ti = 0; ti < 3; ti++) {
            const int T = Ts[ti];
            const int n_steps = WARM + steps;
            /* per-step stride of the id and weight arrays: 16-byte aligned views */
            const int64_t SS = (T * K + 3) / 4 * 4;
            int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n_steps * T * K));
            float *wts = (float *)malloc(sizeof(float) * (size_t)(n_steps * T * K));
            for (int64_t i = 0; i < (int64_t)n_steps * T; i++) {
                for (int k = 0; k < K; k++) {
                    int32_t e;
                    int dup;
                    do {
                        double u = urand();
                        int r = 0;
                        while (r < E - 1 && cdf[r] < u) r++;
                        e = perm[r];
                        dup = 0;
                        for (int j = 0; j < k; j++) dup |= ids[i * K + j] == e;
                    } while (dup);
                    ids[i * K + k] = e;
                    wts[i * K + k] = 1.0f / (float)K;
                }
            }
            int32_t *d_ids;
            float *d_wts;
            void *d_x, *d_y;
            CK(cudaMalloc((void **)&d_ids, sizeof(int32_t) * (size_t)(n_steps * SS)));
            CK(cudaMalloc((void **)&d_wts, sizeof(float) * (size_t)(n_steps * SS)));
            for (int st = 0; st < n_steps; st++) {
                CK(cudaMemcpy(d_ids + (int64_t)st * SS, ids + (int64_t)st * T * K, sizeof(int32_t) * (size_t)(T * K),
                              cudaMemcpyHostToDevice));
                CK(cudaMemcpy(d_wts + (int64_t)st * SS, wts + (int64_t)st * T * K, sizeof(float) * (size_t)(T * K),
                              cudaMemcpyHostToDevice));
            }
            CK(cudaMalloc(&d_x, (size_t)(T * H) * 2));
            CK(cudaMalloc(&d_y, (size_t)(T * H) * 2));
            uint16_t *hx = (uint16_t *)malloc((size_t)(T * H) * 2);
            fill_bf16(hx, (size_t)(T * H), 1.0f);
            CK(cudaMemcpy(d_x, hx, (size_t)(T * H) * 2, cudaMemcpyHostToDevice));
            dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, T, H, 0);
            dmoe_tensor ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, T, H, 0);
            /* distinct experts per step (host) */
            int *n_act = (int *)calloc((size_t)n_steps, sizeof(int));
            int32_t *act = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n_steps * E));
            for (int st = 0; st < n_steps; st++) {
                unsigned char seen[1024] = {0};
                for (int i = 0; i < T * K; i++) {
                    int32_t e = ids[((int64_t)st * T) * K + i];
                    if (!seen[e]) {
                        seen[e] = 1;
                        act[(int64_t)st * E + n_act[st]++] = e;
                    }
                }
            }
            cudaEvent_t ev0, ev1;
            CK(cudaEventCreate(&ev0));
            CK(cudaEventCreate(&ev1));
            /* resident (all experts on the device): the compute/HBM reference */
            float resident_ms = 0;
            for (int st = 0; st < n_steps; st++) {
                if (st == WARM) CK(cudaEventRecord(ev0, s));
                dmoe_tensor ti_ = dmoe_tensor_2d(d_ids + (int64_t)st * SS, DMOE_DTYPE_I32, T, K, 0);
                dmoe_tensor tw_ = dmoe_tensor_2d(d_wts + (int64_t)st * SS, DMOE_DTYPE_F32, T, K, 0);
                DK(ctx, dmoe_experts(plain, &tx, &ti_, &tw_, &ty, s));
            }
            CK(cudaEventRecord(ev1, s));
            CK(cudaEventSynchronize(ev1));
            CK(cudaEventElapsedTime(&resident_ms, ev0, ev1));
            /* naive: copy the step's experts into the full-size device arrays, then forward */
            float naive_ms = 0;
            for (int st = 0; st < n_steps; st++) {
                if (st == WARM) CK(cudaEventRecord(ev0, s));
                for (int j = 0; j < n_act[st]; j++) {
                    const int32_t e = act[(int64_t)st * E + j];
                    CK(cudaMemcpyAsync((char *)d_w13 + (size_t)e * w13b, (char *)h_w13 + (size_t)e * w13b,
                                       w13b, cudaMemcpyHostToDevice, s));
                    CK(cudaMemcpyAsync((char *)d_w2 + (size_t)e * w2b, (char *)h_w2 + (size_t)e * w2b, w2b,
                                       cudaMemcpyHostToDevice, s));
                }
                dmoe_tensor ti_ = dmoe_tensor_2d(d_ids + (int64_t)st * SS, DMOE_DTYPE_I32, T, K, 0);
                dmoe_tensor tw_ = dmoe_tensor_2d(d_wts + (int64_t)st * SS, DMOE_DTYPE_F32, T, K, 0);
                DK(ctx, dmoe_experts(plain, &tx, &ti_, &tw_, &ty, s));
            }
            CK(cudaEventRecord(ev1, s));
            CK(cudaEventSynchronize(ev1));
            CK(cudaEventElapsedTime(&naive_ms, ev0, ev1));
            double naive_bytes = 0, active_bytes = 0;
            for (int st = WARM; st < n_steps; st++) {
                naive_bytes += (double)n_act[st] * (double)eb;
                active_bytes += (double)n_act[st] * (double)eb;
            }
            /* the HBM floor as in KERNELS.md: bytes / d2d copy rate (read + written) */
            const double floor_s = active_bytes / (d2d * 1e9);
            const double naive_bound_s = naive_bytes / (h2d * 1e9) + floor_s;

            for (int pi = 0; pi < 2; pi++) {
                const int n_slots = (int)(E * pcts[pi] / 100);
                dmoe_layer *cached = NULL;
                DK(ctx, dmoe_layer_create(ctx, &d, &cached));
                DK(ctx, dmoe_layer_set_weights(cached, &w));
                DK(ctx, dmoe_layer_enable_expert_cache(cached, n_slots, 0));
                /* fill rate of the install kernel: a prefetch of n_slots experts into the empty cache */
                int32_t pre[1024];
                for (int i = 0; i < n_slots; i++) pre[i] = perm[i];
                CK(cudaEventRecord(ev0, s));
                DK(ctx, dmoe_layer_prefetch_experts(cached, pre, n_slots, s));
                CK(cudaEventRecord(ev1, s));
                CK(cudaEventSynchronize(ev1));
                float fill_ms = 0;
                CK(cudaEventElapsedTime(&fill_ms, ev0, ev1));
                const double fill = (double)n_slots * (double)eb / (fill_ms * 1e-3) / 1e9;
                dmoe_expert_cache_stats c0, c1;
                float cached_ms = 0;
                for (int st = 0; st < n_steps; st++) {
                    if (st == WARM) {
                        CK(cudaEventRecord(ev0, s));
                        CK(cudaEventSynchronize(ev0));
                        DK(ctx, dmoe_layer_expert_cache_stats(cached, &c0));
                        CK(cudaEventRecord(ev0, s));
                    }
                    dmoe_tensor ti_ = dmoe_tensor_2d(d_ids + (int64_t)st * SS, DMOE_DTYPE_I32, T, K, 0);
                    dmoe_tensor tw_ = dmoe_tensor_2d(d_wts + (int64_t)st * SS, DMOE_DTYPE_F32, T, K, 0);
                    DK(ctx, dmoe_experts(cached, &tx, &ti_, &tw_, &ty, s));
                }
                CK(cudaEventRecord(ev1, s));
                CK(cudaEventSynchronize(ev1));
                CK(cudaEventElapsedTime(&cached_ms, ev0, ev1));
                DK(ctx, dmoe_layer_expert_cache_stats(cached, &c1));
                const double hits = (double)(c1.hits - c0.hits), misses = (double)(c1.misses - c0.misses);
                const double miss_bytes = (double)(c1.bytes_h2d - c0.bytes_h2d);
                const double bound_s = miss_bytes / (h2d * 1e9) + floor_s;
                const double t_s = cached_ms * 1e-3;
                printf("%-14s %3d %4d%% %9.0f %6.1f%% %9.1f %9.1f %9.1f %6.2f | %9.0f %9.1f %6.2f | %9.1f\n",
                       sh->name, T, pcts[pi], steps * T / t_s, 100.0 * hits / (hits + misses),
                       t_s / steps * 1e6, bound_s / steps * 1e6, fill, bound_s / t_s,
                       steps * T / (naive_ms * 1e-3), naive_ms * 1e3 / steps,
                       naive_bound_s / (naive_ms * 1e-3), resident_ms * 1e3 / steps);
                printf("    counters: hits %.0f misses %.0f installs %llu direct %llu evictions %llu, "
                       "GEMM stalled on installs %.1f us/step\n", hits,
                       misses, (unsigned long long)(c1.installs - c0.installs),
                       (unsigned long long)(c1.direct_reads - c0.direct_reads),
                       (unsigned long long)(c1.evictions - c0.evictions),
                       (double)(c1.stall_ns - c0.stall_ns) * 1e-3 / steps);
                if (hybrid) {
                    unsigned char resident[1024] = {0};
                    for (int i = 0; i < n_slots; i++) resident[perm[i]] = 1; /* the hottest experts */
                    const hybrid_res hr = run_hybrid(ctx, plain, cctx, cpu, resident, ids, wts, n_steps, WARM, T,
                                                     H, K, hx, d_x, d_y, s);
                    printf("    hybrid (hottest %d on the GPU, the rest on the CPU): %.0f tok/s, %.1f us/step "
                           "(%.2fx the cache), GPU pairs %.1f%%, CPU pairs/step %.1f, rel L2 vs all-GPU %.1e\n",
                           n_slots, T / (hr.us_per_step * 1e-6), hr.us_per_step, t_s / steps * 1e6 / hr.us_per_step,
                           100.0 * hr.gpu_pair_frac, hr.cpu_pairs_per_step, hr.rel_l2);
                }
                if (hybrid) {
                    /* the library's own policy (dmoe_layer_set_miss_policy): AUTO's decision from the
                     * bandwidths it measures, then CPU forced, on the same steps; the cache as the GPU
                     * policy left it, slots adapted by the hotness refresh */
                    for (int pol = 0; pol < 2; pol++) {
                    const dmoe_miss_policy policy = pol == 0 ? DMOE_MISS_CPU : DMOE_MISS_AUTO;
                    dmoe_miss_info m0, m1;
                    DK(ctx, dmoe_layer_set_miss_policy(cached, policy, 0));
                    double tp0 = now_s();
                    memset(&m0, 0, sizeof m0);
                    for (int st = 0; st < n_steps; st++) {
                        if (st == WARM) {
                            CK(cudaStreamSynchronize(s));
                            DK(ctx, dmoe_layer_miss_info(cached, &m0));
                            tp0 = now_s();
                        }
                        dmoe_tensor ti_ = dmoe_tensor_2d(d_ids + (int64_t)st * SS, DMOE_DTYPE_I32, T, K, 0);
                        dmoe_tensor tw_ = dmoe_tensor_2d(d_wts + (int64_t)st * SS, DMOE_DTYPE_F32, T, K, 0);
                        DK(ctx, dmoe_experts(cached, &tx, &ti_, &tw_, &ty, s));
                    }
                    CK(cudaStreamSynchronize(s));
                    const double tp = now_s() - tp0;
                    DK(ctx, dmoe_layer_miss_info(cached, &m1));
                    printf("    library miss policy %s: %.0f tok/s, %.1f us/step (%.2fx the GPU policy), forwards "
                           "with misses on the cpu %llu / gpu %llu, CPU experts/step %.1f, refresh installs %llu "
                           "(measured: h2d %.1f GB/s, cpu %.1f GB/s + %.0f us, %d threads)\n",
                           pol == 0 ? "cpu " : "auto", steps * T / tp, tp / steps * 1e6, t_s / tp,
                           (unsigned long long)(m1.cpu_forwards - m0.cpu_forwards),
                           (unsigned long long)(m1.gpu_forwards - m0.gpu_forwards),
                           (double)(m1.cpu_experts - m0.cpu_experts) / steps,
                           (unsigned long long)(m1.refresh_installs - m0.refresh_installs), m1.h2d_gbs, m1.cpu_gbs,
                           m1.cpu_fixed_us, (int)m1.n_threads);
                    }
                    DK(ctx, dmoe_layer_set_miss_policy(cached, DMOE_MISS_GPU, 0));
                }
                fflush(stdout);
                dmoe_layer_destroy(cached);
            }
            cudaEventDestroy(ev0);
            cudaEventDestroy(ev1);
            cudaFree(d_ids);
            cudaFree(d_wts);
            cudaFree(d_x);
            cudaFree(d_y);
            free(ids);
            free(wts);
            free(hx);
            free(n_act);
            free(act);
        }
        dmoe_layer_destroy(plain);
        dmoe_layer_destroy(cpu);
        cudaFree(d_w13);
        cudaFree(d_w2);
        cudaFree(d_router);
        cudaFreeHost(h_w13);
        cudaFreeHost(h_w2);
        free(h_router);
    }
    dmoe_memory_stats ms;
    DK(ctx, dmoe_context_memory_stats(ctx, &ms));
    printf("\npool: in use %zu, cached %zu, peak %zu, allocs %llu (reused %llu), trims %llu\n", ms.bytes_in_use,
           ms.bytes_cached, ms.peak_in_use, (unsigned long long)ms.n_allocs, (unsigned long long)ms.n_reused,
           (unsigned long long)ms.n_trims);
    dmoe_context_destroy(ctx);
    dmoe_context_destroy(cctx);
    printf("columns: tok/s and us/step of the cached forward; bound_us = (miss bytes / h2d + active expert "
           "bytes / d2d) per step; frac = bound / measured; fill_GBs = the install kernel's rate; naive = "
           "cudaMemcpyAsync of every needed expert before each forward (frac against its own bound: all "
           "needed bytes / h2d + floor); resident_us = all experts on the device\n");
    return 0;
}
