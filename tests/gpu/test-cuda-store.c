/*
 * test-cuda-store: model layers loaded straight into the cuda backend, and the
 * device memory pool behind it.
 *  - dmoe_model_load_layer with a cuda context on synthetic directories, and
 *    dmoe_model_load_layer_offloaded (experts in host memory, E/4 cached)
 *    (qwen3_moe; qwen2_moe with its gated shared expert; deepseek_v3 with
 *    bias, groups, sigmoid scoring and a shared expert) gives a layer whose
 *    forward matches the same layer loaded into cpu-ref (bf16, 1e-2 rel L2),
 *    on random inputs with the output poisoned first;
 *  - the pool: a layer's workspace and weight copy show up in bytes_in_use,
 *    go back to the cache when the layer is destroyed, are reused by the next
 *    layer of the same shape (n_reused grows, no new cudaMalloc), and a trim
 *    empties the cache;
 *  - out of memory: a layer whose workspace cannot fit fails with
 *    DMOE_ERR_OUT_OF_MEMORY after a trim and one retry (n_trims and n_failures
 *    grow by one, the message says so), and the context keeps working.
 */
#include <stdlib.h>
#include <unistd.h>

#include "gpu-util.h"

static dmoe_context *open_ctx(dmoe_backend be) {
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = be;
    cd.n_threads = 4;
    dmoe_context *c = NULL;
    if (dmoe_context_create(&cd, &c) != DMOE_OK) {
        printf("  context: %s\n", dmoe_context_last_error(NULL));
        return NULL;
    }
    return c;
}

static void test_load(tu_rng *rng, const char *root, const char *arch, const dmoe_layer_desc *want) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, arch);
    printf("  %s: H=%lld F=%lld E=%d K=%d S=%d\n", arch, (long long)want->hidden, (long long)want->ffn,
           (int)want->n_experts, (int)want->top_k, (int)want->n_shared_experts);
    TU_CHECK_STATUS(NULL, dmoe_model_write_synthetic(dir, arch, want, 2, 1234), DMOE_OK);
    dmoe_model *m = NULL;
    if (TU_CHECK_STATUS(NULL, dmoe_model_open(dir, &m), DMOE_OK) == 0) return;
    int32_t L = -1;
    dmoe_layer_desc d;
    TU_CHECK_STATUS(NULL, dmoe_model_moe_layer(m, 1, &L, &d), DMOE_OK);
    d.max_tokens = 64;
    dmoe_context *cg = open_ctx(DMOE_BACKEND_CUDA), *cr = open_ctx(DMOE_BACKEND_CPU_REF);
    dmoe_layer *lg = NULL, *lr = NULL;
    dmoe_memory_stats s0, s1;
    TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &s0), DMOE_OK);
    TU_CHECK_STATUS(cg, dmoe_model_load_layer(m, cg, L, &d, &lg), DMOE_OK);
    TU_CHECK_STATUS(cr, dmoe_model_load_layer(m, cr, L, &d, &lr), DMOE_OK);
    TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &s1), DMOE_OK);
    const size_t es = 2, H = (size_t)d.hidden, F = (size_t)d.ffn, E = (size_t)d.n_experts;
    TU_CHECKF(s1.bytes_in_use >= s0.bytes_in_use + E * 3 * H * F * es,
              "pool in use %zu after loading (before %zu): the weights are not in the pool",
              s1.bytes_in_use, s0.bytes_in_use);
    /* the same layer offloaded: routed experts in pinned host memory, a quarter of them
     * cached on the GPU; it must take less device memory than the full layer */
    dmoe_layer *lo = NULL;
    const int32_t n_slots = d.n_experts / 4 > 0 ? d.n_experts / 4 : 1;
    dmoe_memory_stats so0, so1;
    TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &so0), DMOE_OK);
    TU_CHECK_STATUS(cg, dmoe_model_load_layer_offloaded(m, cg, L, &d, n_slots, &lo), DMOE_OK);
    TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &so1), DMOE_OK);
    TU_CHECKF(so1.bytes_in_use - so0.bytes_in_use < s1.bytes_in_use - s0.bytes_in_use,
              "%s: the offloaded layer takes %zu B of device memory, the full one %zu", arch,
              so1.bytes_in_use - so0.bytes_in_use, s1.bytes_in_use - s0.bytes_in_use);
    if (lg && lr) {
        for (int rep = 0; rep < 3; rep++) {
            const int64_t T = rep == 0 ? 1 : (rep == 1 ? 7 : 64);
            const size_t xb = (size_t)T * H * es;
            void *x = tu_malloc(xb), *y = tu_malloc(xb), *yr = tu_malloc(xb);
            tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * (int64_t)H, -1.0, 1.0);
            tu_fill_nan(yr, DMOE_DTYPE_BF16, T * (int64_t)H);
            void *dx = gpu_upload(x, xb), *dy = gpu_alloc(xb);
            gpu_poison(dy, xb);
            dmoe_tensor tx = dmoe_tensor_2d(dx, DMOE_DTYPE_BF16, T, (int64_t)H, 0);
            dmoe_tensor ty = dmoe_tensor_2d(dy, DMOE_DTYPE_BF16, T, (int64_t)H, 0);
            dmoe_tensor hx = dmoe_tensor_2d(x, DMOE_DTYPE_BF16, T, (int64_t)H, DMOE_DEVICE_HOST);
            dmoe_tensor hy = dmoe_tensor_2d(yr, DMOE_DTYPE_BF16, T, (int64_t)H, DMOE_DEVICE_HOST);
            TU_CHECK_STATUS(cg, dmoe_forward(lg, &tx, &ty, NULL), DMOE_OK);
            /* the oracle runs the cuda layer's routing (a near-tie may route differently in
             * float64), so the comparison checks the loaded expert weights, not tie-breaking */
            const int64_t K = d.top_k;
            int32_t *ids = (int32_t *)tu_malloc((size_t)(T * K) * 4);
            float *w = (float *)tu_malloc((size_t)(T * K) * 4);
            int32_t *dids = (int32_t *)gpu_alloc((size_t)(T * K) * 4);
            float *dw = (float *)gpu_alloc((size_t)(T * K) * 4);
            dmoe_tensor ti = dmoe_tensor_2d(dids, DMOE_DTYPE_I32, T, K, 0);
            dmoe_tensor tw = dmoe_tensor_2d(dw, DMOE_DTYPE_F32, T, K, 0);
            TU_CHECK_STATUS(cg, dmoe_route(lg, &tx, &ti, &tw, NULL), DMOE_OK);
            gpu_download(ids, dids, (size_t)(T * K) * 4);
            gpu_download(w, dw, (size_t)(T * K) * 4);
            dmoe_tensor hi = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
            dmoe_tensor hw = dmoe_tensor_2d(w, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
            TU_CHECK_STATUS(cr, dmoe_experts(lr, &hx, &hi, &hw, &hy, NULL), DMOE_OK);
            /* and the routing itself: cpu-ref's ids on the same x, equal for almost every token */
            int32_t *ids_r = (int32_t *)tu_malloc((size_t)(T * K) * 4);
            float *w_r = (float *)tu_malloc((size_t)(T * K) * 4);
            dmoe_tensor hir = dmoe_tensor_2d(ids_r, DMOE_DTYPE_I32, T, K, DMOE_DEVICE_HOST);
            dmoe_tensor hwr = dmoe_tensor_2d(w_r, DMOE_DTYPE_F32, T, K, DMOE_DEVICE_HOST);
            TU_CHECK_STATUS(cr, dmoe_route(lr, &hx, &hir, &hwr, NULL), DMOE_OK);
            int64_t same = 0;
            for (int64_t i = 0; i < T * K; i++) same += ids[i] == ids_r[i];
            TU_CHECKF(same * 10 >= T * K * 9, "%s: only %lld of %lld routing ids agree with cpu-ref",
                      arch, (long long)same, (long long)(T * K));
            gpu_download(y, dy, xb);
            char what[96];
            snprintf(what, sizeof what, "%s loaded into cuda vs cpu-ref, T=%lld", arch, (long long)T);
            TU_CHECK(tu_compare(what, y, DMOE_DTYPE_BF16, yr, DMOE_DTYPE_BF16, T, (int64_t)H, NULL, 1e-2));
            if (lo) { /* same router and weights, so the same routing as lg: same oracle */
                void *dy2 = gpu_alloc(xb), *y2 = tu_malloc(xb);
                gpu_poison(dy2, xb);
                dmoe_tensor ty2 = dmoe_tensor_2d(dy2, DMOE_DTYPE_BF16, T, (int64_t)H, 0);
                TU_CHECK_STATUS(cg, dmoe_forward(lo, &tx, &ty2, NULL), DMOE_OK);
                gpu_download(y2, dy2, xb);
                snprintf(what, sizeof what, "%s offloaded (%d slots) vs cpu-ref, T=%lld", arch, (int)n_slots,
                         (long long)T);
                TU_CHECK(tu_compare(what, y2, DMOE_DTYPE_BF16, yr, DMOE_DTYPE_BF16, T, (int64_t)H, NULL, 1e-2));
                gpu_free(dy2);
                tu_free(y2);
            }
            gpu_free(dx); gpu_free(dy); gpu_free(dids); gpu_free(dw);
            tu_free(x); tu_free(y); tu_free(yr); tu_free(ids); tu_free(w); tu_free(ids_r); tu_free(w_r);
        }
    }
    dmoe_layer_destroy(lo);
    dmoe_layer_destroy(lg);
    dmoe_layer_destroy(lr);
    if (cg) {
        dmoe_memory_stats s2;
        TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &s2), DMOE_OK);
        TU_CHECKF(s2.bytes_in_use == s0.bytes_in_use, "in use %zu after destroy, %zu before",
                  s2.bytes_in_use, s0.bytes_in_use);
        TU_CHECK(s2.bytes_cached > 0 && s2.bytes_reserved == s2.bytes_in_use + s2.bytes_cached);
        /* the same layer again comes from the cache */
        TU_CHECK_STATUS(cg, dmoe_model_load_layer(m, cg, L, &d, &lg), DMOE_OK);
        dmoe_memory_stats s3;
        TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &s3), DMOE_OK);
        TU_CHECKF(s3.n_reused >= s2.n_reused + 2, "reused %llu -> %llu: the second load did not reuse",
                  (unsigned long long)s2.n_reused, (unsigned long long)s3.n_reused);
        TU_CHECK(s3.bytes_reserved == s2.bytes_reserved);
        dmoe_layer_destroy(lg);
        TU_CHECK_STATUS(cg, dmoe_context_trim_memory(cg), DMOE_OK);
        TU_CHECK_STATUS(cg, dmoe_context_memory_stats(cg, &s3), DMOE_OK);
        TU_CHECK(s3.bytes_cached == 0 && s3.bytes_in_use == 0 && s3.peak_in_use >= s1.bytes_in_use);
    }
    dmoe_context_destroy(cg);
    dmoe_context_destroy(cr);
    dmoe_model_close(m);
}

static void test_oom(void) {
    printf("  out of memory: trim, retry once, then a clear error\n");
    dmoe_context *c = open_ctx(DMOE_BACKEND_CUDA);
    if (!c) {
        TU_CHECK(0);
        return;
    }
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 4096;
    d.ffn = 1024;
    d.n_experts = 8;
    d.top_k = 2;
    d.max_tokens = 8192;
    /* a small layer first, destroyed: its blocks stay cached, so the failure must trim them */
    dmoe_layer *small = NULL;
    TU_CHECK_STATUS(c, dmoe_layer_create(c, &d, &small), DMOE_OK);
    dmoe_layer_destroy(small);
    dmoe_memory_stats s0, s1;
    TU_CHECK_STATUS(c, dmoe_context_memory_stats(c, &s0), DMOE_OK);
    TU_CHECK(s0.bytes_cached > 0);
    size_t free_b = 0, total_b = 0;
    GPU_CHECK(cudaMemGetInfo(&free_b, &total_b));
    /* workspace ~ max_tokens * K * (F + H) * 2 bytes: ask for about twice the device */
    d.max_tokens = (int64_t)(2.0 * (double)total_b / (double)(d.top_k * (d.ffn + d.hidden) * 2));
    if (d.max_tokens > DMOE_MAX_TOKENS) d.max_tokens = DMOE_MAX_TOKENS;
    d.hidden = 8192;
    d.ffn = 8192;
    dmoe_layer *big = (dmoe_layer *)0x1;
    TU_CHECK_STATUS(c, dmoe_layer_create(c, &d, &big), DMOE_ERR_OUT_OF_MEMORY);
    TU_CHECK(big == (dmoe_layer *)0x1);
    const char *msg = dmoe_context_last_error(c);
    printf("    message: %s\n", msg);
    TU_CHECK(strstr(msg, "even after giving back the cache") != NULL);
    TU_CHECK_STATUS(c, dmoe_context_memory_stats(c, &s1), DMOE_OK);
    TU_CHECK(s1.n_trims == s0.n_trims + 1 && s1.n_failures == s0.n_failures + 1);
    TU_CHECK(s1.bytes_cached == 0 && s1.bytes_in_use == s0.bytes_in_use);
    /* the context still works */
    d.hidden = 4096;
    d.ffn = 1024;
    d.max_tokens = 64;
    TU_CHECK_STATUS(c, dmoe_layer_create(c, &d, &small), DMOE_OK);
    dmoe_layer_destroy(small);
    dmoe_context_destroy(c);
}

int main(void) {
    if (gpu_skip("test-cuda-store")) return TU_SKIP;
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    char root[] = "/tmp/dmoe-cuda-store-XXXXXX";
    if (!mkdtemp(root)) {
        printf("FATAL: mkdtemp\n");
        return 1;
    }
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 256;
    d.ffn = 64;
    d.n_experts = 16;
    d.top_k = 4;
    test_load(&rng, root, "qwen3_moe", &d);
    d.n_shared_experts = 1;
    d.shared_ffn = 128;
    d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    test_load(&rng, root, "qwen2_moe", &d);
    d.shared_gate = DMOE_SHARED_GATE_NONE;
    d.routing.scoring = DMOE_SCORING_SIGMOID;
    d.routing.n_group = 4;
    d.routing.topk_group = 2;
    d.routing.use_correction_bias = 1;
    d.routing.routed_scaling_factor = 2.5f;
    test_load(&rng, root, "deepseek_v3", &d);
    test_oom();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", root);
    return tu_finish("test-cuda-store");
}
