/*
 * test-cuda-errors: the error paths that belong to the cuda backend: dtypes
 * it does not compute in, sizes that are not multiples of 8, too many
 * experts or top_k, weights in host memory, tensors tagged for the host, a
 * device that does not exist. Each call must fail with its status and leave
 * a message.
 */
#include "gpu-util.h"

static dmoe_layer_desc small_desc(void) {
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 64;
    d.ffn = 32;
    d.n_experts = 8;
    d.top_k = 2;
    d.max_tokens = 16;
    return d;
}

static void expect_create(dmoe_context *ctx, const dmoe_layer_desc *d, dmoe_status want, const char *what) {
    dmoe_layer *layer = NULL;
    dmoe_status st = dmoe_layer_create(ctx, d, &layer);
    printf("  %-36s -> %s: %s\n", what, dmoe_status_name(st), dmoe_context_last_error(ctx));
    TU_CHECK(st == want);
    TU_CHECK(st == DMOE_OK || layer == NULL);
    TU_CHECK(st == DMOE_OK || dmoe_context_last_error(ctx)[0] != '\0');
    dmoe_layer_destroy(layer);
}

int main(void) {
    if (gpu_skip("test-cuda-errors")) return TU_SKIP;
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    cd.device = 99;
    dmoe_context *ctx = NULL;
    dmoe_status st = dmoe_context_create(&cd, &ctx);
    printf("  %-36s -> %s: %s\n", "device 99", dmoe_status_name(st), dmoe_context_last_error(NULL));
    TU_CHECK(st == DMOE_ERR_INVALID_ARGUMENT && ctx == NULL);
    cd.device = 0;
    TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx), DMOE_OK);
    if (!ctx) return tu_finish("test-cuda-errors");

    dmoe_layer_desc d = small_desc();
    d.act_dtype = d.weight_dtype = DMOE_DTYPE_F32;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED_DTYPE, "f32 activations and weights");
    d = small_desc();
    d.weight_dtype = DMOE_DTYPE_F16;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED_DTYPE, "bf16 activations, f16 weights");
    d = small_desc();
    d.hidden = 100;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED, "hidden 100 (not a multiple of 8)");
    d = small_desc();
    d.ffn = 36;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED, "ffn 36 (not a multiple of 8)");
    d = small_desc();
    d.n_shared_experts = 1;
    d.shared_ffn = 20;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED, "shared_ffn 20 (not a multiple of 8)");
    d = small_desc();
    d.n_experts = 2048;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED, "2048 experts");
    d = small_desc();
    d.n_experts = 64;
    d.top_k = 33;
    expect_create(ctx, &d, DMOE_ERR_UNSUPPORTED, "top_k 33");

    /* weights in host memory */
    d = small_desc();
    tu_model m;
    tu_model_random(&m, &d, &rng);
    dmoe_layer *layer = NULL;
    TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK);
    if (layer) {
        st = dmoe_layer_set_weights(layer, &m.weights);
        printf("  %-36s -> %s: %s\n", "host weights", dmoe_status_name(st), dmoe_context_last_error(ctx));
        TU_CHECK(st == DMOE_ERR_WRONG_DEVICE);
        gpu_model g;
        gpu_model_upload(&g, &m);
        dmoe_weights mixed = g.weights;
        mixed.w2 = m.w2;
        st = dmoe_layer_set_weights(layer, &mixed);
        printf("  %-36s -> %s: %s\n", "w2 in host memory", dmoe_status_name(st), dmoe_context_last_error(ctx));
        TU_CHECK(st == DMOE_ERR_WRONG_DEVICE);
        /* a failed set_weights leaves the layer without weights */
        void *d_x = gpu_alloc(16 * 64 * 2), *d_y = gpu_alloc(16 * 64 * 2);
        dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, 4, 64, 0);
        dmoe_tensor ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, 4, 64, 0);
        TU_CHECK_STATUS(ctx, dmoe_forward(layer, &tx, &ty, NULL), DMOE_ERR_NO_WEIGHTS);
        TU_CHECK_STATUS(ctx, dmoe_layer_set_weights(layer, &g.weights), DMOE_OK);
        dmoe_tensor hx = tx;
        hx.device = DMOE_DEVICE_HOST;
        st = dmoe_forward(layer, &hx, &ty, NULL);
        printf("  %-36s -> %s: %s\n", "x tagged as host memory", dmoe_status_name(st), dmoe_context_last_error(ctx));
        TU_CHECK(st == DMOE_ERR_WRONG_DEVICE);
        TU_CHECK_STATUS(ctx, dmoe_forward(layer, &tx, &ty, NULL), DMOE_OK);
        GPU_CHECK(cudaDeviceSynchronize());
        gpu_free(d_x);
        gpu_free(d_y);
        dmoe_layer_destroy(layer);
        gpu_model_free(&g);
    }
    tu_model_free(&m);
    dmoe_context_destroy(ctx);
    return tu_finish("test-cuda-errors");
}
