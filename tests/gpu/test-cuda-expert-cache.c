/*
 * test-cuda-expert-cache: the GPU expert cache (dmoe.h, "GPU expert cache").
 *  - eviction order: a hand-made sequence of routings (dmoe_experts with
 *    caller ids) on 4 slots, with the expected slot of every expert after each
 *    step and the exact counters, written out by hand from the documented
 *    policy (LRU among the slots the batch does not use, empty slots first,
 *    ties to the lower slot, misses in ascending expert order, overflow read
 *    from host memory);
 *  - a long random sequence (T in 1..16) against a host model of the same
 *    policy: table and counters equal after every step;
 *  - every cached output equals the uncached forward of the same layer with
 *    the same GEMM kernels bit for bit (stream and mma.sync, forced through
 *    DMOE_CUDA_GEMM), and cpu-ref within 1e-2 (bf16);
 *  - prefetch: listed experts are installed (counted apart), the next forward
 *    counts them as hits, a prefetch never evicts another listed expert;
 *  - a prefetch and a cached dmoe_forward captured in a CUDA graph and
 *    replayed on new inputs equal the eager uncached forward bit for bit, and
 *    the counters advance;
 *  - bad arguments: each fails with its status and leaves outputs untouched.
 */
#include <math.h>
#include <stdlib.h>

#include "gpu-util.h"

#define N_SLOTS 4

typedef struct sim {
    int32_t E, N;
    int32_t slot_of[1024], expert_of[1024];
    uint32_t stamp[1024], clock;
    uint64_t hits, misses, installs, evictions, direct, prefetch;
} sim;

static void sim_init(sim *s, int32_t E, int32_t N) {
    memset(s, 0, sizeof *s);
    s->E = E;
    s->N = N;
    for (int i = 0; i < E; i++) s->slot_of[i] = -1;
    for (int i = 0; i < N; i++) s->expert_of[i] = -1;
}

/* want (E) flags; the documented policy, written plainly. */
static void sim_step(sim *s, const unsigned char *want, int prefetch) {
    s->clock++;
    int busy[1024] = {0};
    for (int e = 0; e < s->E; e++)
        if (want[e] && s->slot_of[e] >= 0) busy[s->slot_of[e]] = 1;
    int victims[1024], nv = 0;
    for (int k = 0; k < s->N; k++)
        if (!busy[k]) victims[nv++] = k;
    /* sort candidates by (stamp, slot) */
    for (int i = 1; i < nv; i++)
        for (int j = i; j > 0; j--) {
            int a = victims[j - 1], b = victims[j];
            if (s->stamp[a] > s->stamp[b] || (s->stamp[a] == s->stamp[b] && a > b)) {
                victims[j - 1] = b;
                victims[j] = a;
            }
        }
    int m = 0;
    for (int e = 0; e < s->E; e++) {
        if (!want[e]) continue;
        if (s->slot_of[e] >= 0) {
            s->stamp[s->slot_of[e]] = s->clock;
            if (!prefetch) s->hits++;
            continue;
        }
        if (!prefetch) s->misses++;
        if (m < nv) {
            int k = victims[m++];
            if (s->expert_of[k] >= 0) {
                s->slot_of[s->expert_of[k]] = -1;
                s->evictions++;
            }
            s->expert_of[k] = e;
            s->slot_of[e] = k;
            s->stamp[k] = s->clock;
            if (prefetch) s->prefetch++;
            else s->installs++;
        } else if (!prefetch) {
            s->direct++;
        }
    }
}

typedef struct rig {
    dmoe_layer_desc d;
    tu_model m;
    gpu_model g;
    tu_layer plain, cached; /* same weights, same forced GEMM kind */
    void *d_x, *d_y, *d_y0;
    int32_t *d_ids;
    float *d_w;
    cudaStream_t s; /* a stream of our own: programmatic dependent launch is on there */
} rig;

static int rig_open(rig *r, tu_rng *rng, const char *gemm) {
    memset(r, 0, sizeof *r);
    dmoe_layer_desc_init(&r->d);
    r->d.hidden = 256;
    r->d.ffn = 136; /* not a multiple of 16: partial tiles */
    r->d.n_experts = 16;
    r->d.top_k = 2;
    r->d.max_tokens = 32;
    tu_model_random(&r->m, &r->d, rng);
    gpu_model_upload(&r->g, &r->m);
    setenv("DMOE_CUDA_GEMM", gemm, 1);
    int ok = gpu_layer_open(&r->plain, &r->d, &r->g) == DMOE_OK &&
             gpu_layer_open(&r->cached, &r->d, &r->g) == DMOE_OK;
    unsetenv("DMOE_CUDA_GEMM");
    if (!ok) return 0;
    const size_t xb = (size_t)(r->d.max_tokens * r->d.hidden) * 2;
    r->d_x = gpu_alloc(xb);
    r->d_y = gpu_alloc(xb);
    r->d_y0 = gpu_alloc(xb);
    r->d_ids = (int32_t *)gpu_alloc((size_t)(r->d.max_tokens * r->d.top_k) * 4);
    r->d_w = (float *)gpu_alloc((size_t)(r->d.max_tokens * r->d.top_k) * 4);
    GPU_CHECK(cudaStreamCreateWithFlags(&r->s, cudaStreamNonBlocking));
    return 1;
}

static void rig_close(rig *r) {
    tu_layer_close(&r->plain);
    tu_layer_close(&r->cached);
    gpu_free(r->d_x);
    gpu_free(r->d_y);
    gpu_free(r->d_y0);
    gpu_free(r->d_ids);
    gpu_free(r->d_w);
    if (r->s) cudaStreamDestroy(r->s);
    gpu_model_free(&r->g);
    tu_model_free(&r->m);
}

/* One step: T tokens with ids (T*K), random x and weights; the cached output
 * must equal the uncached one bit for bit and cpu-ref within tolerance. */
static void rig_step_ex(rig *r, tu_rng *rng, int64_t T, const int32_t *ids, const char *what, int bitwise) {
    const int64_t H = r->d.hidden, K = r->d.top_k;
    const size_t xb = (size_t)(T * H) * 2;
    void *x = tu_malloc(xb), *y = tu_malloc(xb), *y0 = tu_malloc(xb), *yref = tu_malloc(xb);
    float *w = (float *)tu_malloc((size_t)(T * K) * 4);
    tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
    for (int64_t i = 0; i < T * K; i++) w[i] = (float)tu_rand_range(rng, 0.1, 1.0);
    GPU_CHECK(cudaMemcpy(r->d_x, x, xb, cudaMemcpyHostToDevice));
    GPU_CHECK(cudaMemcpy(r->d_ids, ids, (size_t)(T * K) * 4, cudaMemcpyHostToDevice));
    GPU_CHECK(cudaMemcpy(r->d_w, w, (size_t)(T * K) * 4, cudaMemcpyHostToDevice));
    gpu_poison(r->d_y, xb);
    gpu_poison(r->d_y0, xb);
    GPU_CHECK(cudaDeviceSynchronize()); /* the memsets ran on the legacy stream; r->s does not wait */
    dmoe_tensor tx = dmoe_tensor_2d(r->d_x, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor ti = dmoe_tensor_2d(r->d_ids, DMOE_DTYPE_I32, T, K, 0);
    dmoe_tensor tw = dmoe_tensor_2d(r->d_w, DMOE_DTYPE_F32, T, K, 0);
    dmoe_tensor ty = dmoe_tensor_2d(r->d_y, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor ty0 = dmoe_tensor_2d(r->d_y0, DMOE_DTYPE_BF16, T, H, 0);
    TU_CHECK_STATUS(r->cached.ctx, dmoe_experts(r->cached.layer, &tx, &ti, &tw, &ty, r->s), DMOE_OK);
    TU_CHECK_STATUS(r->plain.ctx, dmoe_experts(r->plain.layer, &tx, &ti, &tw, &ty0, r->s), DMOE_OK);
    gpu_download(y, r->d_y, xb);
    gpu_download(y0, r->d_y0, xb);
    if (bitwise) TU_CHECKF(memcmp(y, y0, xb) == 0, "%s: cached output differs from the uncached one", what);
    else TU_CHECK(tu_compare(what, y, DMOE_DTYPE_BF16, y0, DMOE_DTYPE_BF16, T, H, NULL, 1e-2));
    TU_CHECK(tu_reference_experts(&r->m, x, T, ids, w, yref) == DMOE_OK);
    TU_CHECK(tu_compare(what, y, DMOE_DTYPE_BF16, yref, DMOE_DTYPE_BF16, T, H, NULL, 1e-2));
    tu_free(x); tu_free(y); tu_free(y0); tu_free(yref); tu_free(w);
}

static void rig_step(rig *r, tu_rng *rng, int64_t T, const int32_t *ids, const char *what) {
    rig_step_ex(r, rng, T, ids, what, 1);
}

static void check_table(rig *r, const int32_t *want_slot, const char *what) {
    int32_t t[16];
    memset(t, 0x7f, sizeof t);
    TU_CHECK_STATUS(r->cached.ctx, dmoe_layer_expert_cache_table(r->cached.layer, t), DMOE_OK);
    for (int e = 0; e < r->d.n_experts; e++)
        TU_CHECKF(t[e] == want_slot[e], "%s: expert %d in slot %d, expected %d", what, e, t[e],
                  want_slot[e]);
}

static void check_counters(rig *r, uint64_t hits, uint64_t misses, uint64_t installs,
                           uint64_t evictions, uint64_t direct, uint64_t prefetch, const char *what) {
    dmoe_expert_cache_stats s;
    TU_CHECK_STATUS(r->cached.ctx, dmoe_layer_expert_cache_stats(r->cached.layer, &s), DMOE_OK);
    const uint64_t eb = (uint64_t)(3 * r->d.hidden * r->d.ffn * 2);
    TU_CHECKF(s.hits == hits && s.misses == misses && s.installs == installs &&
                  s.evictions == evictions && s.direct_reads == direct && s.prefetch_installs == prefetch,
              "%s: counters hits %llu misses %llu installs %llu evictions %llu direct %llu prefetch %llu, "
              "expected %llu %llu %llu %llu %llu %llu",
              what, (unsigned long long)s.hits, (unsigned long long)s.misses,
              (unsigned long long)s.installs, (unsigned long long)s.evictions,
              (unsigned long long)s.direct_reads, (unsigned long long)s.prefetch_installs,
              (unsigned long long)hits, (unsigned long long)misses, (unsigned long long)installs,
              (unsigned long long)evictions, (unsigned long long)direct, (unsigned long long)prefetch);
    TU_CHECKF(s.bytes_h2d == (misses + prefetch) * eb, "%s: bytes_h2d %llu, expected %llu", what,
              (unsigned long long)s.bytes_h2d, (unsigned long long)((misses + prefetch) * eb));
    TU_CHECK(s.expert_bytes == eb && s.n_slots == N_SLOTS);
}

static void test_lru_by_hand(tu_rng *rng, const char *gemm) {
    rig r;
    if (!rig_open(&r, rng, gemm)) {
        TU_CHECK(0);
        return;
    }
    printf("  lru by hand (%s)\n", gemm);
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS, 0), DMOE_OK);
    int32_t want[16];
    for (int e = 0; e < 16; e++) want[e] = -1;
    /* s1 {0,1}: empty slots 0, 1 */
    rig_step(&r, rng, 1, (const int32_t[]){0, 1}, "s1");
    want[0] = 0; want[1] = 1;
    check_table(&r, want, "s1");
    check_counters(&r, 0, 2, 2, 0, 0, 0, "s1");
    /* s2 {3,2}: empty slots 2, 3 go to experts 2, 3 (ascending expert order) */
    rig_step(&r, rng, 1, (const int32_t[]){3, 2}, "s2");
    want[2] = 2; want[3] = 3;
    check_table(&r, want, "s2");
    check_counters(&r, 0, 4, 4, 0, 0, 0, "s2");
    /* s3 {0,4}: 0 hits; 4 evicts the least recent unused slot: slot 1 (expert 1, step 1) */
    rig_step(&r, rng, 1, (const int32_t[]){0, 4}, "s3");
    want[1] = -1; want[4] = 1;
    check_table(&r, want, "s3");
    check_counters(&r, 1, 5, 5, 1, 0, 0, "s3");
    /* s4 {1,2}: 2 hits; 1 evicts slot 3 (expert 3, step 2), older than slots 0 and 1 (step 3) */
    rig_step(&r, rng, 1, (const int32_t[]){1, 2}, "s4");
    want[3] = -1; want[1] = 3;
    check_table(&r, want, "s4");
    check_counters(&r, 2, 6, 6, 2, 0, 0, "s4");
    /* s5: 6 new experts over 3 tokens: all 4 slots evicted in (stamp, slot) order 0,1,2,3 for
     * experts 5,6,7,8; experts 9 and 10 are read from host memory */
    rig_step(&r, rng, 3, (const int32_t[]){10, 5, 6, 9, 8, 7}, "s5");
    for (int e = 0; e < 16; e++) want[e] = -1;
    want[5] = 0; want[6] = 1; want[7] = 2; want[8] = 3;
    check_table(&r, want, "s5");
    check_counters(&r, 2, 12, 10, 6, 2, 0, "s5");
    /* s6 {9,5} twice over two tokens: 5 hits; 9 takes slot 1 (stamps: slots 0..3 all step 5,
     * slot 0 is busy, so the lowest free slot is 1) */
    rig_step(&r, rng, 2, (const int32_t[]){9, 5, 5, 9}, "s6");
    want[6] = -1; want[9] = 1;
    check_table(&r, want, "s6");
    check_counters(&r, 3, 13, 11, 7, 2, 0, "s6");

    /* prefetch: {12, 5, 13}: 5 is resident (touched), 12 and 13 take the two oldest slots (2, 3) */
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_prefetch_experts(r.cached.layer, (const int32_t[]){12, 5, 13}, 3, r.s),
                    DMOE_OK);
    want[7] = -1; want[8] = -1; want[12] = 2; want[13] = 3;
    check_table(&r, want, "prefetch");
    check_counters(&r, 3, 13, 11, 9, 2, 2, "prefetch");
    /* the prefetched experts are hits */
    rig_step(&r, rng, 2, (const int32_t[]){12, 13, 13, 5}, "after prefetch");
    check_table(&r, want, "after prefetch");
    check_counters(&r, 6, 13, 11, 9, 2, 2, "after prefetch");
    /* a full prefetch of 4 never evicts a listed expert: {9, 0, 1, 2} keeps 9 (slot 1) */
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_prefetch_experts(r.cached.layer, (const int32_t[]){9, 0, 1, 2}, 4, r.s),
                    DMOE_OK);
    int32_t t[16];
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_expert_cache_table(r.cached.layer, t), DMOE_OK);
    TU_CHECK(t[9] == 1 && t[0] >= 0 && t[1] >= 0 && t[2] >= 0);
    dmoe_expert_cache_stats s;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_expert_cache_stats(r.cached.layer, &s), DMOE_OK);
    TU_CHECK(s.n_resident == 4 && s.prefetch_installs == 5);
    rig_close(&r);
}

static void test_lru_random(tu_rng *rng, const char *gemm) {
    rig r;
    if (!rig_open(&r, rng, gemm)) {
        TU_CHECK(0);
        return;
    }
    printf("  lru random sequence (%s)\n", gemm);
    const int32_t E = r.d.n_experts, K = r.d.top_k;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS, 0), DMOE_OK);
    sim s;
    sim_init(&s, E, N_SLOTS);
    /* DMOE_GPU_TEST_QUICK (under compute-sanitizer): a shorter sequence */
    const int n_steps = getenv("DMOE_GPU_TEST_QUICK") ? 12 : 40;
    const double t_enable = tu_now_s();
    for (int step = 0; step < n_steps; step++) {
        const int64_t T = tu_rand_int(rng, 1, 16);
        int32_t ids[32 * 2];
        unsigned char want[16] = {0};
        for (int64_t t = 0; t < T; t++) {
            /* skewed: low experts more often, so hits happen */
            for (int k = 0; k < K; k++) {
                int32_t e;
                do {
                    double u = tu_rand_unit(rng);
                    e = (int32_t)(u * u * E);
                } while (k > 0 && e == ids[t * K]);
                ids[t * K + k] = e;
                want[e] = 1;
            }
        }
        const int prefetch = step % 7 == 3;
        if (prefetch) {
            int32_t pids[N_SLOTS];
            int np = (int)tu_rand_int(rng, 1, N_SLOTS);
            unsigned char pw[16] = {0};
            for (int i = 0; i < np; i++) {
                int32_t e;
                do e = (int32_t)tu_rand_int(rng, 0, E - 1); while (pw[e]);
                pw[e] = 1;
                pids[i] = e;
            }
            TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_prefetch_experts(r.cached.layer, pids, np, r.s), DMOE_OK);
            sim_step(&s, pw, 1);
        }
        char what[64];
        snprintf(what, sizeof what, "random step %d (T=%lld)", step, (long long)T);
        rig_step(&r, rng, T, ids, what);
        sim_step(&s, want, 0);
        check_table(&r, s.slot_of, what);
        check_counters(&r, s.hits, s.misses, s.installs, s.evictions, s.direct, s.prefetch, what);
    }
    /* stall time: only the streaming GEMM1 waits for the copy kernel (the mma path has no
     * overlap, nothing to count); never more than the host time since the cache was enabled */
    dmoe_expert_cache_stats st;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_expert_cache_stats(r.cached.layer, &st), DMOE_OK);
    const double elapsed_ns = (tu_now_s() - t_enable) * 1e9;
    printf("    stall %.1f us over %d steps (%.1f ms of host time)\n", (double)st.stall_ns * 1e-3, n_steps,
           elapsed_ns * 1e-6);
    if (strcmp(gemm, "stream") == 0)
        TU_CHECKF((double)st.stall_ns <= elapsed_ns, "stall_ns %llu above the %.0f ns elapsed",
                  (unsigned long long)st.stall_ns, elapsed_ns);
    else
        TU_CHECKF(st.stall_ns == 0, "%s GEMM: stall_ns %llu, expected 0", gemm, (unsigned long long)st.stall_ns);
    rig_close(&r);
}

static void test_graph(tu_rng *rng) {
    rig r;
    if (!rig_open(&r, rng, "stream")) {
        TU_CHECK(0);
        return;
    }
    printf("  graph capture of a cached forward\n");
    const int64_t T = 4, H = r.d.hidden;
    const size_t xb = (size_t)(T * H) * 2;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS, 0), DMOE_OK);
    cudaStream_t st;
    GPU_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    void *x = tu_malloc(xb), *y = tu_malloc(xb), *y0 = tu_malloc(xb);
    dmoe_tensor tx = dmoe_tensor_2d(r.d_x, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor ty = dmoe_tensor_2d(r.d_y, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor ty0 = dmoe_tensor_2d(r.d_y0, DMOE_DTYPE_BF16, T, H, 0);
    tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
    GPU_CHECK(cudaMemcpy(r.d_x, x, xb, cudaMemcpyHostToDevice));
    TU_CHECK_STATUS(r.cached.ctx, dmoe_forward(r.cached.layer, &tx, &ty, st), DMOE_OK);
    GPU_CHECK(cudaStreamSynchronize(st));
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    GPU_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    /* a prefetch is captured too (it must not synchronise either) */
    dmoe_status ds = dmoe_layer_prefetch_experts(r.cached.layer, (const int32_t[]){0, 1}, 2, st);
    if (ds == DMOE_OK) ds = dmoe_forward(r.cached.layer, &tx, &ty, st);
    cudaError_t ce = cudaStreamEndCapture(st, &graph);
    TU_CHECKF(ds == DMOE_OK, "forward during capture: %s", dmoe_context_last_error(r.cached.ctx));
    TU_CHECKF(ce == cudaSuccess, "capture: %s", cudaGetErrorString(ce));
    if (ds == DMOE_OK && ce == cudaSuccess) {
        GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        dmoe_expert_cache_stats s0, s1;
        TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_expert_cache_stats(r.cached.layer, &s0), DMOE_OK);
        int differ = 0;
        for (int rep = 0; rep < 20; rep++) {
            tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
            GPU_CHECK(cudaMemcpy(r.d_x, x, xb, cudaMemcpyHostToDevice));
            gpu_poison(r.d_y, xb);
            GPU_CHECK(cudaDeviceSynchronize());
            GPU_CHECK(cudaGraphLaunch(exec, st));
            GPU_CHECK(cudaStreamSynchronize(st));
            TU_CHECK_STATUS(r.plain.ctx, dmoe_forward(r.plain.layer, &tx, &ty0, st), DMOE_OK);
            gpu_download(y, r.d_y, xb);
            gpu_download(y0, r.d_y0, xb);
            differ += memcmp(y, y0, xb) != 0;
        }
        TU_CHECKF(differ == 0, "%d of 20 graph replays differ from the uncached forward", differ);
        TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_expert_cache_stats(r.cached.layer, &s1), DMOE_OK);
        const uint64_t looked = (s1.hits + s1.misses) - (s0.hits + s0.misses);
        TU_CHECKF(looked >= 20 && looked <= 20 * (uint64_t)(T * r.d.top_k),
                  "replays looked up %llu experts", (unsigned long long)looked);
        printf("    20 replays: %llu hits, %llu misses\n", (unsigned long long)(s1.hits - s0.hits),
               (unsigned long long)(s1.misses - s0.misses));
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
    }
    cudaStreamDestroy(st);
    tu_free(x); tu_free(y); tu_free(y0);
    rig_close(&r);
}

static void test_bad_args(tu_rng *rng) {
    rig r;
    if (!rig_open(&r, rng, "auto")) {
        TU_CHECK(0);
        return;
    }
    printf("  bad arguments\n");
    dmoe_layer *L = r.cached.layer;
    dmoe_context *c = r.cached.ctx;
    int32_t ids[4] = {0, 1, 2, 3};
    dmoe_expert_cache_stats s, before;
    memset(&s, 0x5a, sizeof s);
    before = s;
    /* no cache yet */
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, ids, 2, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK(memcmp(&s, &before, sizeof s) == 0);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, 0, 0), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, 17, 0), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, -1, 0), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, 4, 1u), DMOE_ERR_INVALID_ARGUMENT);
    /* a layer without weights */
    dmoe_layer *bare = NULL;
    TU_CHECK_STATUS(c, dmoe_layer_create(c, &r.d, &bare), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(bare, 4, 0), DMOE_ERR_NO_WEIGHTS);
    dmoe_layer_destroy(bare);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, 4, 0), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, NULL, 2, NULL), DMOE_ERR_NULL_POINTER);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, ids, 5, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, ids, -1, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, (const int32_t[]){1, 16}, 2, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, (const int32_t[]){-1}, 1, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, (const int32_t[]){3, 3}, 2, NULL), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_prefetch_experts(L, NULL, 0, NULL), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, NULL), DMOE_ERR_NULL_POINTER);
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_table(L, NULL), DMOE_ERR_NULL_POINTER);
    /* nothing above touched the table */
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s), DMOE_OK);
    TU_CHECK(s.n_resident == 0 && s.prefetch_installs == 0 && s.hits == 0 && s.misses == 0 && s.stall_ns == 0);
    /* new weights turn the cache off */
    TU_CHECK_STATUS(c, dmoe_layer_set_weights(L, &r.g.weights), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s), DMOE_ERR_INVALID_ARGUMENT);
    rig_close(&r);
}

/* dmoe_layer_set_weights_offloaded: the routed experts from HOST arrays (the
 * model's own), the rest on the device; outputs equal the uncached layer's bit
 * for bit and the cache starts empty. Device memory for w13 is refused. */
static void test_offloaded_from_host(tu_rng *rng) {
    rig r;
    if (!rig_open(&r, rng, "stream")) {
        TU_CHECK(0);
        return;
    }
    printf("  offloaded weights from host memory\n");
    dmoe_weights w = r.g.weights;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_set_weights_offloaded(r.cached.layer, &w, N_SLOTS),
                    DMOE_ERR_WRONG_DEVICE); /* device w13: that is dmoe_layer_set_weights */
    /* plain host copies that are overwritten right after the call (dmoe.h: the caller may
     * free them), so a layer that kept the caller's pointers would compute garbage */
    const size_t b13 = (size_t)(r.d.n_experts * 2 * r.d.ffn * r.d.hidden) * 2;
    const size_t b2 = (size_t)(r.d.n_experts * r.d.hidden * r.d.ffn) * 2;
    void *h13 = tu_malloc(b13), *h2 = tu_malloc(b2);
    memcpy(h13, r.m.w13, b13);
    memcpy(h2, r.m.w2, b2);
    w.w13 = h13;
    w.w2 = h2;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_set_weights_offloaded(r.cached.layer, &w, 0), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_set_weights_offloaded(r.cached.layer, &w, N_SLOTS), DMOE_OK);
    memset(h13, 0xff, b13);
    memset(h2, 0xff, b2);
    const int32_t none[16] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
    check_table(&r, none, "offloaded, before any forward");
    const int64_t T = 5, K = r.d.top_k;
    int32_t ids[10];
    for (int round = 0; round < 2; round++) {
        if (round == 1) { /* a rebuilt cache (its own host copy; the layer's views move with it) */
            TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS - 1, 0), DMOE_OK);
            check_table(&r, none, "offloaded, rebuilt cache");
        }
        for (int step = 0; step < 3; step++) {
            for (int64_t t = 0; t < T; t++) {
                ids[t * K] = (int32_t)((3 * t + step) % r.d.n_experts);
                ids[t * K + 1] = (int32_t)((3 * t + step + 7) % r.d.n_experts);
            }
            rig_step(&r, rng, T, ids, round ? "offloaded, rebuilt cache" : "offloaded from host memory");
        }
    }
    tu_free(h13);
    tu_free(h2);
    rig_close(&r);
}

/* dmoe.h: once the cache is on, the caller may free weights.w13/w2; enabling
 * the cache again rebuilds it from its own host copy. The views the cached layer
 * was given are overwritten (as freed and reused memory would be) before the
 * rebuild: the outputs must still equal the uncached layer's bit for bit. */
static void test_reenable_after_free(tu_rng *rng) {
    rig r;
    if (!rig_open(&r, rng, "stream")) {
        TU_CHECK(0);
        return;
    }
    printf("  re-enable after the weights were freed\n");
    const size_t es = 2, E = (size_t)r.d.n_experts, H = (size_t)r.d.hidden, F = (size_t)r.d.ffn;
    void *w13 = gpu_alloc(E * 2 * F * H * es), *w2 = gpu_alloc(E * H * F * es);
    GPU_CHECK(cudaMemcpy(w13, r.g.w13, E * 2 * F * H * es, cudaMemcpyDeviceToDevice));
    GPU_CHECK(cudaMemcpy(w2, r.g.w2, E * H * F * es, cudaMemcpyDeviceToDevice));
    dmoe_weights w = r.g.weights;
    w.w13 = w13;
    w.w2 = w2;
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_set_weights(r.cached.layer, &w), DMOE_OK);
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS, 0), DMOE_OK);
    gpu_poison(w13, E * 2 * F * H * es);
    gpu_poison(w2, E * H * F * es);
    GPU_CHECK(cudaDeviceSynchronize());
    TU_CHECK_STATUS(r.cached.ctx, dmoe_layer_enable_expert_cache(r.cached.layer, N_SLOTS - 1, 0), DMOE_OK);
    const int64_t T = 6, K = r.d.top_k;
    int32_t ids[12];
    for (int64_t i = 0; i < T * K; i++) ids[i] = (int32_t)((i * 5 + i / K) % r.d.n_experts);
    for (int64_t t = 0; t < T; t++)
        if (ids[t * K] == ids[t * K + 1]) ids[t * K + 1] = (ids[t * K + 1] + 1) % r.d.n_experts;
    rig_step(&r, rng, T, ids, "rebuilt cache, source weights overwritten");
    gpu_free(w13);
    gpu_free(w2);
    rig_close(&r);
}

static dmoe_miss_info miss_info(rig *r) {
    dmoe_miss_info mi;
    memset(&mi, 0x5a, sizeof mi);
    TU_CHECK_STATUS(r->cached.ctx, dmoe_layer_miss_info(r->cached.layer, &mi), DMOE_OK);
    return mi;
}

/* DMOE_MISS_CPU: pairs of experts without a slot run on the CPU. Per step the
 * table is read first: the CPU counters must grow by exactly the pairs and the
 * experts that lacked a slot, the GPU cache counters must see no miss, and the
 * output must match the uncached layer (bitwise when every expert had a slot)
 * and float64. The hotness refresh fills empty slots after 16 forwards. */
static void test_miss_policy_cpu(tu_rng *rng) {
    rig r;
    if (!rig_open(&r, rng, "stream")) {
        TU_CHECK(0);
        return;
    }
    printf("  miss policy cpu\n");
    dmoe_context *c = r.cached.ctx;
    dmoe_layer *L = r.cached.layer;
    const int32_t E = r.d.n_experts, K = r.d.top_k;
    /* refusals: no cache yet, bad policy, bad thread count, NULL out */
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_CPU, 2), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_enable_expert_cache(L, N_SLOTS, 0), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, (dmoe_miss_policy)7, 2), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_CPU, -1), DMOE_ERR_INVALID_ARGUMENT);
    TU_CHECK_STATUS(c, dmoe_layer_miss_info(L, NULL), DMOE_ERR_NULL_POINTER);
    dmoe_miss_info mi = miss_info(&r);
    TU_CHECK(mi.policy == DMOE_MISS_GPU && mi.effective == DMOE_MISS_GPU && mi.cpu_pairs == 0);

    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_CPU, 2), DMOE_OK);
    mi = miss_info(&r);
    printf("    measured: h2d %.1f GB/s, cpu experts %.1f GB/s (2 threads)\n", mi.h2d_gbs, mi.cpu_gbs);
    TU_CHECK(mi.policy == DMOE_MISS_CPU && mi.effective == DMOE_MISS_CPU && mi.n_threads == 2);
    TU_CHECK(mi.h2d_gbs > 0.0 && mi.cpu_gbs > 0.0 && mi.cpu_pairs == 0 && mi.cpu_experts == 0);

    /* 16 forwards on experts 5 and 6 only, cache empty: all on the CPU; then the refresh
     * installs both into empty slots and forward 17 runs on the GPU, bitwise the uncached one */
    int32_t ids[16 * 2];
    for (int step = 0; step < 16; step++) {
        const int64_t T = 1 + step % 3;
        for (int64_t t = 0; t < T; t++) {
            ids[t * K] = 5 + (int32_t)(t & 1);
            ids[t * K + 1] = 6 - (int32_t)(t & 1);
        }
        rig_step_ex(&r, rng, T, ids, "miss policy cpu, empty cache", 0);
    }
    mi = miss_info(&r);
    TU_CHECKF(mi.cpu_experts == 32 && mi.refresh_installs == 2, "cpu experts %llu (want 32), refresh installs %llu (want 2)",
              (unsigned long long)mi.cpu_experts, (unsigned long long)mi.refresh_installs);
    int32_t table[16];
    TU_CHECK_STATUS(c, dmoe_layer_expert_cache_table(L, table), DMOE_OK);
    TU_CHECKF(table[5] >= 0 && table[6] >= 0, "after the refresh: experts 5/6 in slots %d/%d", table[5], table[6]);
    rig_step_ex(&r, rng, 2, ids, "miss policy cpu, every expert resident", 1);
    TU_CHECK(miss_info(&r).cpu_experts == 32);

    /* random steps: exact CPU/GPU split per step */
    const int n_steps = getenv("DMOE_GPU_TEST_QUICK") ? 8 : 30;
    for (int step = 0; step < n_steps; step++) {
        const int64_t T = tu_rand_int(rng, 1, 16);
        for (int64_t t = 0; t < T; t++) {
            ids[t * K] = (int32_t)tu_rand_int(rng, 0, E - 1);
            do ids[t * K + 1] = (int32_t)tu_rand_int(rng, 0, E - 1); while (ids[t * K + 1] == ids[t * K]);
        }
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_table(L, table), DMOE_OK);
        uint64_t want_pairs = 0, want_experts = 0, want_hits = 0;
        unsigned char seen[16] = {0};
        for (int64_t p = 0; p < T * K; p++) {
            const int32_t e = ids[p];
            want_pairs += table[e] < 0;
            if (!seen[e]) {
                seen[e] = 1;
                want_experts += table[e] < 0;
                want_hits += table[e] >= 0;
            }
        }
        dmoe_expert_cache_stats s0, s1;
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s0), DMOE_OK);
        const dmoe_miss_info m0 = miss_info(&r);
        char what[64];
        snprintf(what, sizeof what, "miss policy cpu, step %d (T=%lld)", step, (long long)T);
        rig_step_ex(&r, rng, T, ids, what, want_pairs == 0);
        const dmoe_miss_info m1 = miss_info(&r);
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s1), DMOE_OK);
        TU_CHECKF(m1.cpu_pairs - m0.cpu_pairs == want_pairs && m1.cpu_experts - m0.cpu_experts == want_experts,
                  "%s: cpu pairs +%llu experts +%llu, expected +%llu +%llu", what,
                  (unsigned long long)(m1.cpu_pairs - m0.cpu_pairs),
                  (unsigned long long)(m1.cpu_experts - m0.cpu_experts), (unsigned long long)want_pairs,
                  (unsigned long long)want_experts);
        TU_CHECKF(s1.misses == s0.misses && s1.hits - s0.hits == want_hits,
                  "%s: GPU misses +%llu (want 0), hits +%llu (want %llu)", what,
                  (unsigned long long)(s1.misses - s0.misses), (unsigned long long)(s1.hits - s0.hits),
                  (unsigned long long)want_hits);
    }

    /* the whole forward (router on the GPU) through the policy, against the uncached layer */
    {
        const int64_t T = 7, H = r.d.hidden;
        const size_t xb = (size_t)(T * H) * 2;
        void *x = tu_malloc(xb), *y = tu_malloc(xb), *y0 = tu_malloc(xb);
        tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
        GPU_CHECK(cudaMemcpy(r.d_x, x, xb, cudaMemcpyHostToDevice));
        gpu_poison(r.d_y, xb);
        GPU_CHECK(cudaDeviceSynchronize());
        dmoe_tensor tx = dmoe_tensor_2d(r.d_x, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ty = dmoe_tensor_2d(r.d_y, DMOE_DTYPE_BF16, T, H, 0);
        dmoe_tensor ty0 = dmoe_tensor_2d(r.d_y0, DMOE_DTYPE_BF16, T, H, 0);
        TU_CHECK_STATUS(c, dmoe_forward(L, &tx, &ty, r.s), DMOE_OK);
        TU_CHECK_STATUS(r.plain.ctx, dmoe_forward(r.plain.layer, &tx, &ty0, r.s), DMOE_OK);
        gpu_download(y, r.d_y, xb);
        gpu_download(y0, r.d_y0, xb);
        TU_CHECK(tu_compare("miss policy cpu, dmoe_forward", y, DMOE_DTYPE_BF16, y0, DMOE_DTYPE_BF16, T, H, NULL, 1e-2));
        /* a capturing stream is refused before anything is enqueued */
        cudaGraph_t g = NULL;
        GPU_CHECK(cudaStreamBeginCapture(r.s, cudaStreamCaptureModeThreadLocal));
        const dmoe_status cst = dmoe_forward(L, &tx, &ty, r.s);
        GPU_CHECK(cudaStreamEndCapture(r.s, &g));
        TU_CHECK_STATUS(c, cst, DMOE_ERR_UNSUPPORTED);
        if (g) cudaGraphDestroy(g);
        tu_free(x); tu_free(y); tu_free(y0);
    }

    /* AUTO decides per forward from what it measured: n missed experts go to the CPU iff
     * cpu_fixed + n * eb / cpu_gbs < n * eb / h2d_gbs */
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_AUTO, 0), DMOE_OK);
    mi = miss_info(&r);
    const double eb = 3.0 * (double)r.d.hidden * (double)r.d.ffn * 2.0;
#define CPU_WINS(mi, n) \
    ((mi).cpu_fixed_us * 1e-6 + (n) * eb / ((mi).cpu_gbs * 1e9) < (n) * eb / ((mi).h2d_gbs * 1e9))
    printf("    auto: h2d %.1f GB/s, cpu %.1f GB/s + %.1f us (%d threads) -> %s at K misses\n", mi.h2d_gbs,
           mi.cpu_gbs, mi.cpu_fixed_us, (int)mi.n_threads, mi.effective == DMOE_MISS_CPU ? "cpu" : "gpu");
    TU_CHECK(mi.policy == DMOE_MISS_AUTO && mi.n_threads > 0 && mi.cpu_pairs == 0 && mi.cpu_fixed_us >= 0.0 &&
             mi.effective == (CPU_WINS(mi, K) ? DMOE_MISS_CPU : DMOE_MISS_GPU));
    for (int step = 0; step < 6; step++) {
        const int64_t T = 1 + 3 * step;
        for (int64_t t = 0; t < T; t++) {
            ids[t * K] = (int32_t)tu_rand_int(rng, 0, E - 1);
            do ids[t * K + 1] = (int32_t)tu_rand_int(rng, 0, E - 1); while (ids[t * K + 1] == ids[t * K]);
        }
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_table(L, table), DMOE_OK);
        unsigned char seen[16] = {0};
        int n_miss = 0;
        for (int64_t p = 0; p < T * K; p++)
            if (table[ids[p]] < 0 && !seen[ids[p]]) {
                seen[ids[p]] = 1;
                n_miss++;
            }
        const dmoe_miss_info m0 = miss_info(&r);
        char what[64];
        snprintf(what, sizeof what, "miss policy auto, step %d (T=%lld)", step, (long long)T);
        const int want_cpu = n_miss > 0 && CPU_WINS(m0, n_miss);
        rig_step_ex(&r, rng, T, ids, what, !want_cpu);
        const dmoe_miss_info m1 = miss_info(&r);
        TU_CHECKF(m1.cpu_forwards - m0.cpu_forwards == (uint64_t)want_cpu &&
                      m1.gpu_forwards - m0.gpu_forwards == (uint64_t)(n_miss > 0 && !want_cpu),
                  "%s: %d misses: cpu forwards +%llu, gpu forwards +%llu", what, n_miss,
                  (unsigned long long)(m1.cpu_forwards - m0.cpu_forwards),
                  (unsigned long long)(m1.gpu_forwards - m0.gpu_forwards));
    }
#undef CPU_WINS
    /* back to GPU: misses are installed again */
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_GPU, 0), DMOE_OK);
    {
        dmoe_expert_cache_stats s0, s1;
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s0), DMOE_OK);
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_table(L, table), DMOE_OK);
        int32_t e0 = 0;
        while (table[e0] >= 0) e0++; /* N_SLOTS < E: one expert without a slot */
        ids[0] = e0;
        ids[1] = (e0 + 1) % E;
        rig_step(&r, rng, 1, ids, "miss policy back to gpu");
        TU_CHECK_STATUS(c, dmoe_layer_expert_cache_stats(L, &s1), DMOE_OK);
        TU_CHECK(s1.misses > s0.misses && miss_info(&r).effective == DMOE_MISS_GPU);
    }
    /* new dense weights drop the cache and the policy */
    TU_CHECK_STATUS(c, dmoe_layer_set_miss_policy(L, DMOE_MISS_CPU, 1), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_set_weights(L, &r.g.weights), DMOE_OK);
    TU_CHECK_STATUS(c, dmoe_layer_miss_info(L, &mi), DMOE_ERR_INVALID_ARGUMENT);
    rig_close(&r);
}

int main(void) {
    if (gpu_skip("test-cuda-expert-cache")) return TU_SKIP;
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    test_lru_by_hand(&rng, "stream");
    test_lru_by_hand(&rng, "mma");
    test_lru_random(&rng, "stream");
    test_lru_random(&rng, "mma");
    test_graph(&rng);
    test_reenable_after_free(&rng);
    test_offloaded_from_host(&rng);
    test_bad_args(&rng);
    test_miss_policy_cpu(&rng);
    return tu_finish("test-cuda-expert-cache");
}
