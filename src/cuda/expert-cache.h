/*
 * expert-cache.h: the GPU expert cache of one layer (expert-cache.cu; the
 * public contract is in dmoe.h, "GPU expert cache").
 *
 * Memory:
 *   host_w13   (E, 2F, H)  pinned, mapped host memory: every routed expert
 *   host_w2    (E, H, F)   same
 *   slots      (N) x [w13_e (2F, H) | w2_e (H, F)]   device memory (the pool)
 *   table      slot_of_expert (E), expert_of_slot (N), stamp (N), clock (1): device
 *   w13_ptrs, w2_ptrs (E)  device: where each expert of the current batch is read
 *   w13_dst, w2_dst (E)    device: where the streaming GEMM installs it (or NULL)
 *   install    (1 + 2N)    device: n, then (expert, slot) pairs to copy
 *   counters   (8)         device: see dmoe_expert_cache_stats
 *
 * A forward calls dmoe__cuda_cache_resolve after the plan (one block: hits,
 * LRU victims, table update, pointer tables), which also launches the copy
 * kernel for the installs; the GEMMs then read through w13_ptrs / w2_ptrs.
 * Everything is enqueued on the caller's stream: no host round trip.
 */
#ifndef DMOE_CUDA_EXPERT_CACHE_H
#define DMOE_CUDA_EXPERT_CACHE_H

#include "cuda-ops.h"
#include "../pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmoe_cuda_cache dmoe_cuda_cache;

/* Copies the routed experts w13 (E, 2F, H) and w2 (E, H, F) (device or host
 * memory) into pinned host memory and sets up n_slots empty slots. Synchronous. */
dmoe_status dmoe__cuda_cache_create(dmoe_context *ctx, dmoe_pool *pool, const dmoe_layer_desc *d,
                                    const void *w13, const void *w2, int32_t n_slots,
                                    dmoe_cuda_cache **out);
void dmoe__cuda_cache_destroy(dmoe_cuda_cache *c); /* NULL is a no-op; syncs the device */

/* After the plan of a forward: every expert e with offsets[e+1] > offsets[e]
 * gets its w13/w2 pointers (slot or host), misses are installed. */
dmoe_status dmoe__cuda_cache_resolve(dmoe_context *ctx, dmoe_cuda_cache *c, const int32_t *offsets,
                                     int stream_gemm, cudaStream_t stream);
/* With stream_gemm (the forward's GEMMs are the streaming kernels) the misses
 * are installed by the GEMMs through these tables (gemm-stream.cu). */
void *const *dmoe__cuda_cache_w13_dst(const dmoe_cuda_cache *c);
/* (E) device array: the slot of each expert, -1 when not resident (stream-ordered state). */
const int32_t *dmoe__cuda_cache_slot_table(const dmoe_cuda_cache *c);
/* (E) flags for the streaming GEMM1 (w_wait), or NULL when installs ride on the GEMMs. */
const int32_t *dmoe__cuda_cache_wait(const dmoe_cuda_cache *c);
/* The device counter the streaming GEMM1 adds its install wait to (w_stall_ns), or NULL. */
unsigned long long *dmoe__cuda_cache_stall_counter(const dmoe_cuda_cache *c);
void *const *dmoe__cuda_cache_w2_dst(const dmoe_cuda_cache *c);
int32_t dmoe__cuda_cache_n_slots(const dmoe_cuda_cache *c);
/* The cache's pinned host copy of every routed expert: (E, 2F, H) and (E, H, F). */
void dmoe__cuda_cache_host_weights(const dmoe_cuda_cache *c, const void **w13, const void **w2);
const void *const *dmoe__cuda_cache_w13_ptrs(const dmoe_cuda_cache *c);
const void *const *dmoe__cuda_cache_w2_ptrs(const dmoe_cuda_cache *c);

/* ids: host array, validated (in range, distinct, n_ids <= n_slots). */
dmoe_status dmoe__cuda_cache_prefetch(dmoe_context *ctx, dmoe_cuda_cache *c, const int32_t *ids,
                                      int32_t n_ids, cudaStream_t stream);
dmoe_status dmoe__cuda_cache_stats(dmoe_context *ctx, dmoe_cuda_cache *c, dmoe_expert_cache_stats *out);
dmoe_status dmoe__cuda_cache_table(dmoe_context *ctx, dmoe_cuda_cache *c, int32_t *slot_of_expert);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_EXPERT_CACHE_H */
