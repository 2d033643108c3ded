/*
 * offload.c: a model layer whose routed experts stay in host memory (cuda).
 *
 * Loads one MoE layer of a Hugging Face model directory with only the router,
 * the shared experts and n_slots experts on the GPU
 * (dmoe_model_load_layer_offloaded), chooses what a forward does with an expert
 * the GPU lacks (dmoe_layer_set_miss_policy: copy it over PCIe, run it on the
 * host CPU, or decide per forward), runs a few decode forwards and prints what
 * the expert cache and the miss policy did.
 *
 *   build/bin/offload-example [MODEL_DIR [N_SLOTS [gpu|cpu|auto]]]
 *
 * Without MODEL_DIR (or with "") it writes a small synthetic qwen3_moe directory first
 * (dmoe_model_write_synthetic). Without a CUDA device it says so and exits 77.
 */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmoe.h"

#define CHECK(ctx, call)                                                                  \
    do {                                                                                  \
        dmoe_status st_ = (call);                                                         \
        if (st_ != DMOE_OK) {                                                             \
            fprintf(stderr, "%s: %s (%s)\n", #call, dmoe_context_last_error(ctx),         \
                    dmoe_status_name(st_));                                               \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

int main(int argc, char **argv) {
    if (!dmoe_backend_available(DMOE_BACKEND_CUDA)) {
        printf("offload-example: no CUDA device (the offloaded layer is a cuda feature); skipped\n");
        return 77;
    }
    const int synth = argc <= 1 || !argv[1][0]; /* no MODEL_DIR, or "" */
    const char *dir = synth ? "/tmp/dmoe-offload-example" : argv[1];
    const char *pol = argc > 3 ? argv[3] : "auto";
    dmoe_miss_policy policy = DMOE_MISS_AUTO;
    if (!strcmp(pol, "gpu")) policy = DMOE_MISS_GPU;
    else if (!strcmp(pol, "cpu")) policy = DMOE_MISS_CPU;
    else if (strcmp(pol, "auto")) {
        fprintf(stderr, "offload-example: policy must be gpu, cpu or auto\n");
        return 2;
    }
    dmoe_context *ctx = NULL;
    dmoe_model *model = NULL;
    dmoe_layer *layer = NULL;
    void *x = NULL, *y = NULL;
    int rc = 1;
    if (synth) { /* a small qwen3_moe model: 4 layers of 32 experts, top-4 */
        dmoe_layer_desc sd;
        dmoe_layer_desc_init(&sd);
        sd.hidden = 512;
        sd.ffn = 256;
        sd.n_experts = 32;
        sd.top_k = 4;
        CHECK(NULL, dmoe_model_write_synthetic(dir, "qwen3_moe", &sd, 4, 1));
    }
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    CHECK(NULL, dmoe_context_create(&cd, &ctx));
    CHECK(ctx, dmoe_model_open(dir, &model));
    int32_t layer_idx = 0;
    dmoe_layer_desc d;
    CHECK(ctx, dmoe_model_moe_layer(model, 0, &layer_idx, &d));
    d.max_tokens = 16; /* decode batches */
    const int32_t n_slots = argc > 2 ? atoi(argv[2]) : (d.n_experts + 3) / 4;
    CHECK(ctx, dmoe_model_load_layer_offloaded(model, ctx, layer_idx, &d, n_slots, &layer));
    CHECK(ctx, dmoe_layer_set_miss_policy(layer, policy, 0));
    dmoe_miss_info mi;
    CHECK(ctx, dmoe_layer_miss_info(layer, &mi));
    printf("%s layer %d: H=%lld F=%lld E=%d K=%d, %d experts on the GPU; miss policy %s", dmoe_model_arch(model),
           (int)layer_idx, (long long)d.hidden, (long long)d.ffn, (int)d.n_experts, (int)d.top_k, (int)n_slots, pol);
    if (policy != DMOE_MISS_GPU)
        printf(" (measured: PCIe %.1f GB/s, CPU %.1f GB/s + %.0f us, %d threads)", mi.h2d_gbs, mi.cpu_gbs,
               mi.cpu_fixed_us, (int)mi.n_threads);
    printf("\n");

    const size_t xb = (size_t)(16 * d.hidden) * dmoe_dtype_size(d.act_dtype);
    uint16_t *hx = malloc(xb);
    for (size_t i = 0; hx && i < xb / 2; i++) hx[i] = (uint16_t)(0x3f80 + rand() % 0x80); /* bf16 in [1, 2) */
    if (!hx || cudaMalloc(&x, xb) != cudaSuccess || cudaMalloc(&y, xb) != cudaSuccess ||
        cudaMemcpy(x, hx, xb, cudaMemcpyHostToDevice) != cudaSuccess) {
        fprintf(stderr, "offload-example: device buffers\n");
        free(hx);
        goto done;
    }
    free(hx);
    for (int step = 0; step < 32; step++) {
        const int64_t T = 1 + step % 4;
        dmoe_tensor tx = dmoe_tensor_2d(x, d.act_dtype, T, d.hidden, 0);
        dmoe_tensor ty = dmoe_tensor_2d(y, d.act_dtype, T, d.hidden, 0);
        CHECK(ctx, dmoe_forward(layer, &tx, &ty, NULL));
    }
    if (cudaDeviceSynchronize() != cudaSuccess) goto done;
    dmoe_expert_cache_stats cs;
    CHECK(ctx, dmoe_layer_expert_cache_stats(layer, &cs));
    CHECK(ctx, dmoe_layer_miss_info(layer, &mi));
    printf("32 forwards: expert cache hits %llu, misses %llu (installed %llu, read from host %llu), %.1f MB over "
           "PCIe, GEMM stalled %.1f us; on the CPU: %llu (token, expert) pairs in %llu forwards\n",
           (unsigned long long)cs.hits, (unsigned long long)cs.misses, (unsigned long long)cs.installs,
           (unsigned long long)cs.direct_reads, (double)cs.bytes_h2d / 1e6, (double)cs.stall_ns * 1e-3,
           (unsigned long long)mi.cpu_pairs, (unsigned long long)mi.cpu_forwards);
    rc = 0;
done:
    if (x) cudaFree(x);
    if (y) cudaFree(y);
    dmoe_layer_destroy(layer);
    dmoe_model_close(model);
    dmoe_context_destroy(ctx);
    return rc;
}
