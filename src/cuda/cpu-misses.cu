/*
 * cpu-misses.cu: missed experts of decode forwards run on the host CPU (the
 * contract is in dmoe.h, dmoe_layer_set_miss_policy; the interface in
 * cpu-misses.h).
 *
 * Why: a cache miss costs expert_bytes / PCIe bandwidth (~55 GB/s on the H100
 * host link), while a host CPU streams the same weights from its own memory
 * at its memory bandwidth; at decode (a few rows per expert) the CPU's work is
 * bandwidth-bound too, so where the CPU is faster than PCIe the miss is
 * cheaper where the weights already are (bench/offload-bench.c measured the
 * strategies side by side).
 *
 * One forward (T <= DMOE_MISS_CPU_MAX_TOKENS):
 *   1. on the stream: ids, weights, x and the cache's slot table to pinned host
 *      buffers; the host waits for the stream;
 *   2. host: pairs whose expert has a slot stay on the GPU, the others go to
 *      the CPU list (a token with any CPU pair is one CPU row; its GPU pairs are
 *      given weight 0 and the id of one of its CPU experts, so the cpu backend
 *      sees valid ids and they add nothing);
 *   3. GPU: the masked ids (CPU pairs -> -1, weight 0) go up and the staged
 *      expert path runs asynchronously; meanwhile the cpu backend computes the
 *      CPU rows; their output goes up and add_rows_kernel adds it into y;
 *   4. host: hotness counts of the experts used; every REFRESH forwards the
 *      hottest experts without a slot are prefetched (stream order, so the
 *      next forward's table read sees them): into empty slots at once, over
 *      resident ones within a PCIe budget of BUDGET_FRAC of the forwards' time;
 *      the hot resident experts are listed too, so the victims are the coldest
 *      slots. The refresh waits for a forward that installed nothing (its table
 *      read is then current).
 * A forward with no CPU pair runs the GPU path on the caller's ids untouched
 * (bitwise the cached forward).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu-misses.h"
#include "cuda-common.cuh"
#include "cuda-context.h"
#include "miss-plan.h"

#define REFRESH 16          /* forwards between hotness refreshes */
#define BUDGET_FRAC 0.10    /* share of the forwards' time the refresh may spend on PCIe */
#define ADD_THREADS 256

struct dmoe_cuda_misses {
    dmoe_miss_policy policy, effective;
    int32_t n_threads;
    double h2d_gbs, cpu_gbs, cpu_fixed_s;
    int32_t E, K, max_t;
    int64_t H;
    dmoe_dtype dt;
    size_t es, expert_bytes;
    dmoe_context *cpu_ctx;
    dmoe_layer *cpu_layer;
    void *router_dummy;       /* the cpu layer needs a router view; dmoe_experts never reads it */
    dmoe_pool *pool;
    /* pinned host staging */
    void *pinned;
    int32_t *h_ids, *h_table, *g_ids, *c_ids, *h_tok;
    float *h_w, *g_w, *c_w;
    void *h_x, *c_x, *c_y;
    /* device */
    void *dev;
    size_t dev_bytes;
    int32_t *d_ids, *d_tok;
    float *d_w;
    void *d_ycpu;
    /* hotness */
    double *hot;
    unsigned char *used;
    int32_t *order;
    int64_t n_forwards;
    int refresh_due;
    double window_s, budget_s;
    /* counters */
    uint64_t cpu_forwards, gpu_forwards, cpu_pairs, cpu_experts, refresh_installs;
};

template <typename T>
static __global__ void __launch_bounds__(ADD_THREADS)
add_rows_kernel(T *y, const T *add, const int32_t *tok, int32_t n_rows, int64_t H) {
    const int64_t n = (int64_t)n_rows * H;
    for (int64_t i = blockIdx.x * (int64_t)ADD_THREADS + threadIdx.x; i < n; i += (int64_t)gridDim.x * ADD_THREADS) {
        const int64_t j = i / H, h = i - j * H;
        T *o = y + (int64_t)tok[j] * H + h;
        *o = dmoe_dt<T>::from_f32(dmoe_dt<T>::load(o) + dmoe_dt<T>::load(add + i));
    }
}

extern "C" void dmoe__cuda_misses_destroy(dmoe_cuda_misses *m) {
    if (!m) return;
    if (m->cpu_layer) dmoe_layer_destroy(m->cpu_layer);
    if (m->cpu_ctx) dmoe_context_destroy(m->cpu_ctx);
    if (m->pinned) cudaFreeHost(m->pinned);
    if (m->dev) dmoe__pool_free(m->pool, m->dev, m->dev_bytes);
    free(m->router_dummy);
    free(m->hot);
    free(m->used);
    free(m->order);
    free(m);
    (void)cudaGetLastError();
}

extern "C" void dmoe__cuda_misses_abandon(dmoe_cuda_misses *m) {
    if (!m) return;
    m->pinned = NULL;
    m->dev = NULL;
    dmoe__cuda_misses_destroy(m);
}

static dmoe_status bind_weights(dmoe_context *ctx, dmoe_cuda_misses *m, const dmoe_cuda_cache *c) {
    dmoe_weights w;
    memset(&w, 0, sizeof w);
    w.router = m->router_dummy;
    dmoe__cuda_cache_host_weights(c, &w.w13, &w.w2);
    if (dmoe_layer_set_weights(m->cpu_layer, &w) != DMOE_OK)
        return dmoe__error(ctx, DMOE_ERR_INTERNAL, "miss policy: cpu layer weights: %s",
                           dmoe_context_last_error(m->cpu_ctx));
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_misses_rebind(dmoe_context *ctx, dmoe_cuda_misses *m,
                                                const dmoe_cuda_cache *c) {
    const dmoe_status st = bind_weights(ctx, m, c);
    if (st == DMOE_OK) memset(m->hot, 0, sizeof(double) * (size_t)m->E); /* a failed rebind keeps the old cache */
    return st;
}

/* The cpu backend's time for `rows` tokens routed to K distinct experts each
 * (n = min(rows * K, E) experts in all): the best of three runs over
 * different experts (their weights not in a CPU cache) after an untimed one
 * that wakes the worker threads (the fixed cost is otherwise noisy: 0.1 to
 * 3 ms on the device's host in one run). */
static dmoe_status time_cpu(dmoe_context *ctx, dmoe_cuda_misses *m, int32_t rows, double *t_out, int32_t *n_out) {
    double best = 1e30;
    const int32_t K = m->K, E = m->E;
    memset(m->c_x, 0, (size_t)rows * (size_t)m->H * m->es);
    int32_t n = rows * K < E ? rows * K : E;
    for (int rep = 0; rep < 4; rep++) {
        for (int32_t r = 0; r < rows; r++)
            for (int32_t k = 0; k < K; k++) {
                m->c_ids[r * K + k] = (rep * n + (r * K + k) % n) % E; /* K distinct per row */
                m->c_w[r * K + k] = 1.0f / (float)K;
            }
        dmoe_tensor tx = dmoe_tensor_2d(m->c_x, m->dt, rows, m->H, DMOE_DEVICE_HOST);
        dmoe_tensor ty = dmoe_tensor_2d(m->c_y, m->dt, rows, m->H, DMOE_DEVICE_HOST);
        dmoe_tensor ti = dmoe_tensor_2d(m->c_ids, DMOE_DTYPE_I32, rows, K, DMOE_DEVICE_HOST);
        dmoe_tensor tw = dmoe_tensor_2d(m->c_w, DMOE_DTYPE_F32, rows, K, DMOE_DEVICE_HOST);
        const double t0 = dmoe__now_s();
        if (dmoe_experts(m->cpu_layer, &tx, &ti, &tw, &ty, NULL) != DMOE_OK)
            return dmoe__error(ctx, DMOE_ERR_INTERNAL, "miss policy: cpu experts: %s",
                               dmoe_context_last_error(m->cpu_ctx));
        const double t = dmoe__now_s() - t0;
        if (rep > 0 && t < best) best = t;
    }
    *t_out = best;
    *n_out = n;
    return DMOE_OK;
}

/* cpu time(n experts) ~ fixed + n * expert_bytes / gbs, from K and 4K experts. */
static dmoe_status measure_cpu(dmoe_context *ctx, dmoe_cuda_misses *m) {
    double t1, t2;
    int32_t n1, n2;
    const int32_t rows = m->max_t < 4 ? m->max_t : 4;
    dmoe_status st = time_cpu(ctx, m, 1, &t1, &n1);
    if (st == DMOE_OK) st = time_cpu(ctx, m, rows, &t2, &n2);
    if (st != DMOE_OK) return st;
    double per = n2 > n1 && t2 > t1 ? (t2 - t1) / (double)(n2 - n1) : t1 / (double)n1;
    double fixed = t1 - per * (double)n1;
    if (fixed < 0.0) {
        fixed = 0.0;
        per = t2 / (double)n2;
    }
    m->cpu_gbs = (double)m->expert_bytes / per * 1e-9;
    m->cpu_fixed_s = fixed;
    return DMOE_OK;
}

/* AUTO: the CPU takes a forward's n missed experts when it is the faster of the two. */
static int cpu_faster(const dmoe_cuda_misses *m, int32_t n) {
    return dmoe__miss_cpu_faster(m->cpu_fixed_s, m->cpu_gbs, m->h2d_gbs, (double)m->expert_bytes, n);
}

/* A pinned copy of up to 64 MB of the cache's host experts into device memory. */
static dmoe_status measure_h2d(dmoe_context *ctx, dmoe_cuda_misses *m, const dmoe_cuda_cache *c, double *gbs) {
    const void *w13, *w2;
    dmoe__cuda_cache_host_weights(c, &w13, &w2);
    size_t bytes = (size_t)m->E * m->expert_bytes;
    if (bytes > ((size_t)64 << 20)) bytes = (size_t)64 << 20;
    void *buf = NULL;
    dmoe_status st = dmoe__pool_alloc(m->pool, bytes, &buf);
    if (st != DMOE_OK) return st;
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        const double t0 = dmoe__now_s();
        cudaError_t err = cudaMemcpy(buf, w13, bytes, cudaMemcpyHostToDevice);
        const double t = dmoe__now_s() - t0;
        if (err != cudaSuccess) {
            dmoe__pool_free(m->pool, buf, bytes);
            return dmoe__cuda_error(ctx, err, "miss policy: h2d measurement", __FILE__, __LINE__);
        }
        if (t < best) best = t;
    }
    dmoe__pool_free(m->pool, buf, bytes);
    *gbs = (double)bytes / best * 1e-9;
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_misses_create(dmoe_context *ctx, dmoe_pool *pool, const dmoe_layer_desc *d,
                                                const dmoe_cuda_cache *c, dmoe_miss_policy policy,
                                                int32_t n_threads, dmoe_cuda_misses **out) {
    dmoe_cuda_misses *m = (dmoe_cuda_misses *)calloc(1, sizeof *m);
    if (!m) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "miss policy state");
    m->policy = policy;
    m->pool = pool;
    m->E = d->n_experts;
    m->K = d->top_k;
    m->H = d->hidden;
    m->dt = d->act_dtype;
    m->es = dmoe_dtype_size(d->act_dtype);
    m->expert_bytes = (size_t)3 * (size_t)d->hidden * (size_t)d->ffn * m->es;
    m->max_t = (int32_t)(d->max_tokens < DMOE_MISS_CPU_MAX_TOKENS ? d->max_tokens : DMOE_MISS_CPU_MAX_TOKENS);
    m->n_threads = n_threads > 0 ? n_threads : (int32_t)sysconf(_SC_NPROCESSORS_ONLN);
    const int64_t TK = (int64_t)m->max_t * m->K, TH = (int64_t)m->max_t * m->H;
    dmoe_status st = DMOE_OK;
    m->hot = (double *)calloc((size_t)m->E, sizeof(double));
    m->used = (unsigned char *)calloc((size_t)m->E, 1);
    m->order = (int32_t *)calloc((size_t)m->E, sizeof(int32_t));
    m->router_dummy = calloc((size_t)(m->E * m->H), m->es);
    if (!m->hot || !m->used || !m->order || !m->router_dummy) {
        dmoe__cuda_misses_destroy(m);
        return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "miss policy state");
    }
    /* pinned staging: ids, w, table, g_ids, g_w, c_ids, c_w, tok, then x, c_x, c_y (16-byte aligned) */
    const size_t small = (size_t)(6 * TK + m->E + m->max_t) * 4;
    const size_t small_al = (small + 255) & ~(size_t)255;
    const size_t rows = (size_t)TH * m->es;
    const size_t rows_al = (rows + 255) & ~(size_t)255;
    cudaError_t err = cudaHostAlloc(&m->pinned, small_al + 3 * rows_al, cudaHostAllocDefault);
    if (err != cudaSuccess) {
        m->pinned = NULL;
        dmoe__cuda_misses_destroy(m);
        return dmoe__cuda_error(ctx, err, "miss policy: pinned staging", __FILE__, __LINE__);
    }
    char *p = (char *)m->pinned;
    m->h_ids = (int32_t *)p; p += TK * 4;
    m->h_w = (float *)p; p += TK * 4;
    m->g_ids = (int32_t *)p; p += TK * 4;
    m->g_w = (float *)p; p += TK * 4;
    m->c_ids = (int32_t *)p; p += TK * 4;
    m->c_w = (float *)p; p += TK * 4;
    m->h_table = (int32_t *)p; p += (size_t)m->E * 4;
    m->h_tok = (int32_t *)p;
    p = (char *)m->pinned + small_al;
    m->h_x = p;
    m->c_x = p + rows_al;
    m->c_y = p + 2 * rows_al;
    /* device: ids, w, tok, y rows */
    m->dev_bytes = (size_t)(2 * TK + m->max_t) * 4 + 256 + rows;
    if ((st = dmoe__pool_alloc(pool, m->dev_bytes, &m->dev)) != DMOE_OK) {
        m->dev = NULL;
        dmoe__cuda_misses_destroy(m);
        return st;
    }
    m->d_ids = (int32_t *)m->dev;
    m->d_w = (float *)(m->d_ids + TK);
    m->d_tok = (int32_t *)(m->d_w + TK);
    m->d_ycpu = (char *)m->dev + (((size_t)(2 * TK + m->max_t) * 4 + 255) & ~(size_t)255);
    /* the cpu side: routed experts only (shared experts and the router stay on the GPU) */
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU;
    cd.n_threads = n_threads;
    if (dmoe_context_create(&cd, &m->cpu_ctx) != DMOE_OK) {
        char why[DMOE_ERROR_LEN];
        snprintf(why, sizeof why, "%s", dmoe_context_last_error(NULL));
        m->cpu_ctx = NULL;
        dmoe__cuda_misses_destroy(m);
        return dmoe__error(ctx, DMOE_ERR_THREAD, "miss policy: cpu context: %s", why);
    }
    dmoe_layer_desc cdsc = *d;
    cdsc.n_shared_experts = 0;
    cdsc.shared_ffn = 0;
    cdsc.shared_gate = DMOE_SHARED_GATE_NONE;
    cdsc.routing.use_correction_bias = 0;
    cdsc.max_tokens = m->max_t;
    cdsc.path = DMOE_PATH_AUTO;
    if (dmoe_layer_create(m->cpu_ctx, &cdsc, &m->cpu_layer) != DMOE_OK) {
        char why[DMOE_ERROR_LEN];
        snprintf(why, sizeof why, "%s", dmoe_context_last_error(m->cpu_ctx));
        m->cpu_layer = NULL;
        dmoe__cuda_misses_destroy(m);
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED, "miss policy: cpu layer: %s", why);
    }
    if ((st = bind_weights(ctx, m, c)) != DMOE_OK || (st = measure_h2d(ctx, m, c, &m->h2d_gbs)) != DMOE_OK ||
        (st = measure_cpu(ctx, m)) != DMOE_OK) {
        dmoe__cuda_misses_destroy(m);
        return st;
    }
    m->effective = policy == DMOE_MISS_CPU || (policy == DMOE_MISS_AUTO && cpu_faster(m, m->K))
                       ? DMOE_MISS_CPU
                       : DMOE_MISS_GPU;
    *out = m;
    return DMOE_OK;
}

extern "C" dmoe_status dmoe__cuda_misses_check_stream(dmoe_context *ctx, cudaStream_t stream) {
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    DMOE_CUDA_CHECK(ctx, cudaStreamIsCapturing(stream, &cap));
    if (cap != cudaStreamCaptureStatusNone)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                           "the layer runs missed experts on the CPU (miss policy), which reads the routing back "
                           "to the host: it cannot be captured in a CUDA graph (set DMOE_MISS_GPU to capture)");
    return DMOE_OK;
}

extern "C" int dmoe__cuda_misses_take(const dmoe_cuda_misses *m, int64_t n_tokens) {
    return m && m->policy != DMOE_MISS_GPU && n_tokens <= m->max_t;
}

extern "C" void dmoe__cuda_misses_info(const dmoe_cuda_misses *m, dmoe_miss_info *out) {
    memset(out, 0, sizeof *out);
    out->policy = out->effective = DMOE_MISS_GPU;
    if (!m) return;
    out->policy = m->policy;
    out->effective = m->effective;
    out->n_threads = m->n_threads;
    out->h2d_gbs = m->h2d_gbs;
    out->cpu_gbs = m->cpu_gbs;
    out->cpu_fixed_us = m->cpu_fixed_s * 1e6;
    out->cpu_forwards = m->cpu_forwards;
    out->gpu_forwards = m->gpu_forwards;
    out->cpu_pairs = m->cpu_pairs;
    out->cpu_experts = m->cpu_experts;
    out->refresh_installs = m->refresh_installs;
}

/* Every REFRESH forwards: the hottest experts without a slot are prefetched,
 * into empty slots freely, over resident experts within the PCIe budget. */
static dmoe_status refresh(dmoe_context *ctx, dmoe_cuda_misses *m, dmoe_cuda_cache *c, cudaStream_t stream) {
    const int32_t E = m->E, n_slots = dmoe__cuda_cache_n_slots(c);
    m->budget_s += BUDGET_FRAC * m->window_s;
    m->window_s = 0.0;
    const double cost = (double)m->expert_bytes / (m->h2d_gbs * 1e9);
    if (m->budget_s > n_slots * cost) m->budget_s = n_slots * cost;
    int32_t list[1024], n = 0;
    const int32_t n_inst = dmoe__miss_refresh_list(m->hot, m->h_table, E, n_slots, cost, &m->budget_s, m->order,
                                                   list, &n);
    for (int32_t e = 0; e < E; e++) m->hot[e] *= 0.5; /* recent use weighs more */
    if (n_inst == 0) return DMOE_OK;
    m->refresh_installs += (uint64_t)n_inst;
    return dmoe__cuda_cache_prefetch(ctx, c, list, n, stream);
}

extern "C" dmoe_status dmoe__cuda_misses_experts(dmoe_layer *layer, dmoe_cuda_misses *m, dmoe_cuda_cache *c,
                                                 const void *x, int64_t T, const int32_t *ids, const float *wts,
                                                 void *y, cudaStream_t stream, dmoe_cuda_gpu_experts_fn gpu) {
    dmoe_context *ctx = layer->ctx;
    dmoe_status st = dmoe__cuda_misses_check_stream(ctx, stream);
    if (st != DMOE_OK) return st;
    const double t0 = dmoe__now_s();
    const int32_t K = m->K, E = m->E;
    const int64_t H = m->H, TK = T * K;
    const size_t xb = (size_t)(T * H) * m->es;
    DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->h_ids, ids, (size_t)TK * 4, cudaMemcpyDeviceToHost, stream));
    DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->h_w, wts, (size_t)TK * 4, cudaMemcpyDeviceToHost, stream));
    DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->h_table, dmoe__cuda_cache_slot_table(c), (size_t)E * 4,
                                         cudaMemcpyDeviceToHost, stream));
    DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->h_x, x, xb, cudaMemcpyDeviceToHost, stream));
    DMOE_CUDA_CHECK(ctx, cudaStreamSynchronize(stream));
    /* the missed experts; AUTO gives them to the CPU only when it is the faster */
    const int32_t n_miss = dmoe__miss_count(m->h_ids, TK, m->h_table, E, m->used);
    const int use_cpu = m->policy == DMOE_MISS_CPU || (n_miss > 0 && cpu_faster(m, n_miss));
    if (n_miss > 0) {
        if (use_cpu) m->cpu_forwards++;
        else m->gpu_forwards++;
    }
    /* split the pairs; ids outside [0, E) contribute nothing on either side */
    const int32_t tc = dmoe__miss_split(m->h_ids, m->h_w, T, K, m->h_table, E, use_cpu, m->g_ids, m->g_w, m->c_ids,
                                        m->c_w, m->h_tok, m->used, &m->cpu_pairs);
    for (int32_t e = 0; e < E; e++) {
        m->hot[e] += m->used[e] ? 1.0 : 0.0;
        m->cpu_experts += (m->used[e] & 2) ? 1 : 0;
        m->used[e] = 0;
    }
    for (int32_t r = 0; r < tc; r++)
        memcpy((char *)m->c_x + (size_t)r * H * m->es, (const char *)m->h_x + (size_t)m->h_tok[r] * H * m->es,
               (size_t)H * m->es);
    if (tc == 0) {
        st = gpu(layer, x, T, ids, wts, y, stream);
    } else {
        DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->d_ids, m->g_ids, (size_t)TK * 4, cudaMemcpyHostToDevice, stream));
        DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->d_w, m->g_w, (size_t)TK * 4, cudaMemcpyHostToDevice, stream));
        DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->d_tok, m->h_tok, (size_t)tc * 4, cudaMemcpyHostToDevice, stream));
        st = gpu(layer, x, T, m->d_ids, m->d_w, y, stream);
        if (st != DMOE_OK) return st;
        dmoe_tensor tx = dmoe_tensor_2d(m->c_x, m->dt, tc, H, DMOE_DEVICE_HOST);
        dmoe_tensor ty = dmoe_tensor_2d(m->c_y, m->dt, tc, H, DMOE_DEVICE_HOST);
        dmoe_tensor ti = dmoe_tensor_2d(m->c_ids, DMOE_DTYPE_I32, tc, K, DMOE_DEVICE_HOST);
        dmoe_tensor tw = dmoe_tensor_2d(m->c_w, DMOE_DTYPE_F32, tc, K, DMOE_DEVICE_HOST);
        if (dmoe_experts(m->cpu_layer, &tx, &ti, &tw, &ty, NULL) != DMOE_OK)
            return dmoe__error(ctx, DMOE_ERR_INTERNAL, "miss policy: cpu experts: %s",
                               dmoe_context_last_error(m->cpu_ctx));
        DMOE_CUDA_CHECK(ctx, cudaMemcpyAsync(m->d_ycpu, m->c_y, (size_t)tc * H * m->es, cudaMemcpyHostToDevice,
                                             stream));
        const int64_t n = (int64_t)tc * H;
        int64_t blocks = (n + ADD_THREADS - 1) / ADD_THREADS;
        if (blocks > 1024) blocks = 1024;
        if (m->dt == DMOE_DTYPE_BF16)
            add_rows_kernel<dmoe_bf16><<<(unsigned)blocks, ADD_THREADS, 0, stream>>>(
                (dmoe_bf16 *)y, (const dmoe_bf16 *)m->d_ycpu, m->d_tok, tc, H);
        else
            add_rows_kernel<dmoe_f16><<<(unsigned)blocks, ADD_THREADS, 0, stream>>>(
                (dmoe_f16 *)y, (const dmoe_f16 *)m->d_ycpu, m->d_tok, tc, H);
        DMOE_CUDA_CHECK(ctx, cudaGetLastError());
        st = DMOE_OK;
    }
    if (st != DMOE_OK) return st;
    m->window_s += dmoe__now_s() - t0;
    /* the refresh decides from the table read at the start of this forward: it waits for a
     * forward that installed nothing (every forward but an AUTO one given to the GPU with misses) */
    if (++m->n_forwards % REFRESH == 0) m->refresh_due = 1;
    if (m->refresh_due && (use_cpu || n_miss == 0)) {
        m->refresh_due = 0;
        return refresh(ctx, m, c, stream);
    }
    return DMOE_OK;
}
