/*
 * cpu-misses.h: the miss policy of a cached cuda layer (dmoe.h,
 * dmoe_layer_set_miss_policy): decode forwards run the (token, expert) pairs
 * of experts the GPU cache lacks on the host CPU, through a cpu backend layer
 * over the cache's pinned host copy of the experts, while the GPU runs the
 * resident pairs; the CPU part is added into y on the stream.
 */
#ifndef DMOE_CUDA_CPU_MISSES_H
#define DMOE_CUDA_CPU_MISSES_H

#include <cuda_runtime_api.h>

#include "dmoe-impl.h"
#include "expert-cache.h"
#include "pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmoe_cuda_misses dmoe_cuda_misses;

/* The GPU half of a forward: the layer's staged expert path with caller ids on
 * the device (ids outside [0, E) contribute nothing). */
typedef dmoe_status (*dmoe_cuda_gpu_experts_fn)(dmoe_layer *layer, const void *x, int64_t n_tokens,
                                                const int32_t *ids, const float *wts, void *y,
                                                cudaStream_t stream);

/* Creates the CPU side of layer (its desc, the cache c's host experts): a cpu
 * context of n_threads threads (0 = all cores), pinned staging buffers and
 * device buffers from pool; measures the pinned host-to-device bandwidth and
 * the cpu backend's expert bandwidth and fixes the effective policy.
 * Synchronises the device. */
dmoe_status dmoe__cuda_misses_create(dmoe_context *ctx, dmoe_pool *pool, const dmoe_layer_desc *d,
                                     const dmoe_cuda_cache *c, dmoe_miss_policy policy,
                                     int32_t n_threads, dmoe_cuda_misses **out);
/* A new cache of the same layer (rebuilt or offloaded again): its host copy. */
dmoe_status dmoe__cuda_misses_rebind(dmoe_context *ctx, dmoe_cuda_misses *m, const dmoe_cuda_cache *c);
void dmoe__cuda_misses_destroy(dmoe_cuda_misses *m);
/* While a resident kernel occupies the device: frees the host side only and
 * leaks the pinned and device buffers (cudaFreeHost would wait for that kernel). */
void dmoe__cuda_misses_abandon(dmoe_cuda_misses *m);
/* DMOE_ERR_UNSUPPORTED while stream captures (the policy reads back to the host). */
dmoe_status dmoe__cuda_misses_check_stream(dmoe_context *ctx, cudaStream_t stream);
/* Whether a forward of n_tokens goes through dmoe__cuda_misses_experts. */
int dmoe__cuda_misses_take(const dmoe_cuda_misses *m, int64_t n_tokens);
/* The forward's expert half: reads ids/wts/x and the slot table back (host
 * synchronisation), runs pairs of resident experts with gpu() and the others
 * on the CPU, adds the CPU part into y on stream, updates the hotness counts
 * and, every 16 forwards, prefetches hot experts into c. */
dmoe_status dmoe__cuda_misses_experts(dmoe_layer *layer, dmoe_cuda_misses *m, dmoe_cuda_cache *c,
                                      const void *x, int64_t n_tokens, const int32_t *ids,
                                      const float *wts, void *y, cudaStream_t stream,
                                      dmoe_cuda_gpu_experts_fn gpu);
void dmoe__cuda_misses_info(const dmoe_cuda_misses *m, dmoe_miss_info *out);

#ifdef __cplusplus
}
#endif

#endif
