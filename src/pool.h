/*
 * pool.h: a memory pool with size classes, for device memory (the CUDA
 * backend backs it with cudaMalloc) or any other raw allocator.
 *
 * Requests are rounded up to a size class (four classes per power of two, so
 * at most 25% is lost to rounding); freed blocks stay cached on their class's
 * list and serve the next request of that class without calling the backing
 * allocator. When the backing allocator fails, the pool gives every cached
 * block back (trim) and retries once; a second failure is reported as
 * DMOE_ERR_OUT_OF_MEMORY with the pool's numbers in the message.
 * Blocks are freed with the size they were asked for (sized free), so the pool
 * needs no table of live pointers. Thread-safe.
 */
#ifndef DMOE_POOL_H
#define DMOE_POOL_H

#include <pthread.h>

#include "dmoe-impl.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmoe_raw_allocator {
    /* Returns 0 and *out on success, non-zero on failure. */
    int (*alloc)(void *user, size_t size, void **out);
    void (*free)(void *user, void *ptr);
    void *user;
    const char *name; /* "cuda device 0": for messages */
} dmoe_raw_allocator;

typedef struct dmoe_pool_stats {
    size_t bytes_in_use;     /* handed out, rounded to classes */
    size_t bytes_cached;     /* held on free lists */
    size_t peak_in_use;
    uint64_t n_allocs;       /* requests served */
    uint64_t n_reused;       /* of which from a free list */
    uint64_t n_trims;        /* times the cache was given back after a failure */
    uint64_t n_failures;     /* requests that failed after the retry */
} dmoe_pool_stats;

#define DMOE_POOL_CLASSES 256

typedef struct dmoe_pool_block {
    struct dmoe_pool_block *next;
    void *ptr;
} dmoe_pool_block;

typedef struct dmoe_pool {
    dmoe_context *ctx;            /* host allocator for bookkeeping, and messages */
    dmoe_raw_allocator raw;
    pthread_mutex_t lock;
    dmoe_pool_block *free_lists[DMOE_POOL_CLASSES];
    dmoe_pool_block *spare;       /* recycled list nodes */
    dmoe_pool_stats stats;
} dmoe_pool;

/* The class of a request and the bytes that class holds. */
int dmoe__pool_class(size_t size, size_t *class_bytes);
dmoe_status dmoe__pool_init(dmoe_pool *pool, dmoe_context *ctx, const dmoe_raw_allocator *raw);
/* Gives every cached block back; blocks still in use are the caller's to free first. */
void dmoe__pool_fini(dmoe_pool *pool);
dmoe_status dmoe__pool_alloc(dmoe_pool *pool, size_t size, void **out);
void dmoe__pool_free(dmoe_pool *pool, void *ptr, size_t size);
void dmoe__pool_trim(dmoe_pool *pool);
dmoe_pool_stats dmoe__pool_get_stats(dmoe_pool *pool);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_POOL_H */
