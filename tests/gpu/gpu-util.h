/*
 * gpu-util.h: what the GPU tests share on top of tests/test-util.h: the skip
 * when no CUDA device exists, device buffers (exit on failure: tests may),
 * device copies of a random tu_model, and a cuda layer over them.
 */
#ifndef DMOE_GPU_UTIL_H
#define DMOE_GPU_UTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

#define GPU_CHECK(expr)                                                                   \
    do {                                                                                  \
        cudaError_t gpu_err_ = (expr);                                                    \
        if (gpu_err_ != cudaSuccess) {                                                    \
            printf("FATAL: %s failed at %s:%d: %s\n", #expr, __FILE__, __LINE__,          \
                   cudaGetErrorString(gpu_err_));                                         \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* Prints the skip line and returns 1 when there is no usable CUDA device. */
static inline int gpu_skip(const char *name) {
    if (!dmoe_backend_available(DMOE_BACKEND_CUDA)) {
        printf("%s: SKIPPED: no CUDA device\n", name);
        return 1;
    }
    return 0;
}

static inline void *gpu_alloc(size_t bytes) {
    void *p = NULL;
    GPU_CHECK(cudaMalloc(&p, bytes ? bytes : 16));
    return p;
}
static inline void *gpu_upload(const void *h, size_t bytes) {
    void *d = gpu_alloc(bytes);
    if (h && bytes) GPU_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static inline void gpu_download(void *h, const void *d, size_t bytes) {
    GPU_CHECK(cudaDeviceSynchronize());
    GPU_CHECK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}
static inline void gpu_free(void *d) {
    if (d) cudaFree(d);
}
/* Fills a 16-bit float buffer with NaN (0xffff is NaN in bf16 and f16). */
static inline void gpu_poison(void *d, size_t bytes) { GPU_CHECK(cudaMemset(d, 0xff, bytes)); }

typedef struct gpu_model {
    void *router, *w13, *w2, *shared_w13, *shared_w2, *shared_gate;
    float *bias;
    dmoe_weights weights; /* device views */
} gpu_model;

static inline void gpu_model_upload(gpu_model *g, const tu_model *m) {
    const dmoe_layer_desc *d = &m->desc;
    const size_t es = dmoe_dtype_size(d->weight_dtype);
    const size_t H = (size_t)d->hidden, F = (size_t)d->ffn, E = (size_t)d->n_experts;
    const size_t S = (size_t)d->n_shared_experts, Fs = (size_t)d->shared_ffn;
    memset(g, 0, sizeof *g);
    g->router = gpu_upload(m->router, E * H * es);
    g->w13 = gpu_upload(m->w13, E * 2 * F * H * es);
    g->w2 = gpu_upload(m->w2, E * H * F * es);
    if (m->bias) g->bias = (float *)gpu_upload(m->bias, E * sizeof(float));
    if (m->shared_w13) g->shared_w13 = gpu_upload(m->shared_w13, S * 2 * Fs * H * es);
    if (m->shared_w2) g->shared_w2 = gpu_upload(m->shared_w2, S * H * Fs * es);
    if (m->shared_gate) g->shared_gate = gpu_upload(m->shared_gate, H * es);
    g->weights.router = g->router;
    g->weights.w13 = g->w13;
    g->weights.w2 = g->w2;
    g->weights.correction_bias = g->bias;
    g->weights.shared_w13 = g->shared_w13;
    g->weights.shared_w2 = g->shared_w2;
    g->weights.shared_gate = g->shared_gate;
}

static inline void gpu_model_free(gpu_model *g) {
    gpu_free(g->router);
    gpu_free(g->w13);
    gpu_free(g->w2);
    gpu_free(g->bias);
    gpu_free(g->shared_w13);
    gpu_free(g->shared_w2);
    gpu_free(g->shared_gate);
    memset(g, 0, sizeof *g);
}

/* A cuda context + layer on desc with the device weights. Prints and returns
 * the status on failure (everything closed). */
static inline dmoe_status gpu_layer_open(tu_layer *l, const dmoe_layer_desc *desc,
                                         const gpu_model *g) {
    memset(l, 0, sizeof *l);
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CUDA;
    cd.device = 0;
    dmoe_status st = dmoe_context_create(&cd, &l->ctx);
    if (st != DMOE_OK) {
        printf("  cuda context: %s\n", dmoe_context_last_error(NULL));
        l->ctx = NULL;
        return st;
    }
    st = dmoe_layer_create(l->ctx, desc, &l->layer);
    if (st == DMOE_OK) st = dmoe_layer_set_weights(l->layer, &g->weights);
    if (st != DMOE_OK) {
        printf("  cuda layer: %s\n", dmoe_context_last_error(l->ctx));
        tu_layer_close(l);
    }
    return st;
}

#endif /* DMOE_GPU_UTIL_H */
