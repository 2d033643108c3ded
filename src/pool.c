/*
 * pool.c: the size-class memory pool (see pool.h for the policy).
 * Class c covers sizes up to (4 + c % 4) << (c / 4 + 6) bytes: 256, 320, 384,
 * 448, 512, 640, ... so every power of two is split in four steps.
 */
#include "pool.h"

int dmoe__pool_class(size_t size, size_t *class_bytes) {
    if (size < 256) size = 256;
    for (int c = 0; c < DMOE_POOL_CLASSES; c++) {
        int shift = c / 4 + 6;
        if (shift >= 62) break;
        size_t bytes = (size_t)(4 + c % 4) << shift;
        if (bytes >= size) {
            if (class_bytes) *class_bytes = bytes;
            return c;
        }
    }
    return -1;
}

dmoe_status dmoe__pool_init(dmoe_pool *pool, dmoe_context *ctx, const dmoe_raw_allocator *raw) {
    memset(pool, 0, sizeof *pool);
    pool->ctx = ctx;
    pool->raw = *raw;
    if (pthread_mutex_init(&pool->lock, NULL) != 0)
        return dmoe__error(ctx, DMOE_ERR_THREAD, "pool: cannot create its mutex");
    return DMOE_OK;
}

static void release_cached(dmoe_pool *pool) {
    for (int c = 0; c < DMOE_POOL_CLASSES; c++) {
        while (pool->free_lists[c]) {
            dmoe_pool_block *b = pool->free_lists[c];
            pool->free_lists[c] = b->next;
            pool->raw.free(pool->raw.user, b->ptr);
            b->next = pool->spare;
            pool->spare = b;
        }
    }
    pool->stats.bytes_cached = 0;
}

void dmoe__pool_fini(dmoe_pool *pool) {
    release_cached(pool);
    while (pool->spare) {
        dmoe_pool_block *b = pool->spare;
        pool->spare = b->next;
        dmoe__free(pool->ctx, b);
    }
    pthread_mutex_destroy(&pool->lock);
}

void dmoe__pool_trim(dmoe_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    release_cached(pool);
    pthread_mutex_unlock(&pool->lock);
}

dmoe_status dmoe__pool_alloc(dmoe_pool *pool, size_t size, void **out) {
    size_t bytes = 0;
    int c = dmoe__pool_class(size, &bytes);
    if (c < 0) return dmoe__error(pool->ctx, DMOE_ERR_OUT_OF_MEMORY, "pool: %zu bytes is too large", size);
    pthread_mutex_lock(&pool->lock);
    dmoe_status st = DMOE_OK;
    dmoe_pool_block *b = pool->free_lists[c];
    if (b) {
        pool->free_lists[c] = b->next;
        *out = b->ptr;
        b->next = pool->spare;
        pool->spare = b;
        pool->stats.bytes_cached -= bytes;
        pool->stats.n_reused++;
    } else {
        void *p = NULL;
        if (pool->raw.alloc(pool->raw.user, bytes, &p) != 0) {
            release_cached(pool);
            pool->stats.n_trims++;
            if (pool->raw.alloc(pool->raw.user, bytes, &p) != 0) {
                pool->stats.n_failures++;
                st = dmoe__error(pool->ctx, DMOE_ERR_OUT_OF_MEMORY,
                                 "%s: cannot allocate %zu bytes (class of %zu) even after giving back "
                                 "the cache; %zu bytes are in use",
                                 pool->raw.name ? pool->raw.name : "pool", bytes, size,
                                 pool->stats.bytes_in_use);
            }
        }
        if (st == DMOE_OK) *out = p;
    }
    if (st == DMOE_OK) {
        pool->stats.n_allocs++;
        pool->stats.bytes_in_use += bytes;
        if (pool->stats.bytes_in_use > pool->stats.peak_in_use)
            pool->stats.peak_in_use = pool->stats.bytes_in_use;
    }
    pthread_mutex_unlock(&pool->lock);
    return st;
}

void dmoe__pool_free(dmoe_pool *pool, void *ptr, size_t size) {
    if (!ptr) return;
    size_t bytes = 0;
    int c = dmoe__pool_class(size, &bytes);
    DMOE_ASSERT(c >= 0);
    pthread_mutex_lock(&pool->lock);
    pool->stats.bytes_in_use -= bytes;
    dmoe_pool_block *b = pool->spare;
    if (b) pool->spare = b->next;
    else b = (dmoe_pool_block *)dmoe__malloc(pool->ctx, sizeof *b);
    if (b) {
        b->ptr = ptr;
        b->next = pool->free_lists[c];
        pool->free_lists[c] = b;
        pool->stats.bytes_cached += bytes;
    } else {
        pool->raw.free(pool->raw.user, ptr); /* no node to cache it on: give it back */
    }
    pthread_mutex_unlock(&pool->lock);
}

dmoe_pool_stats dmoe__pool_get_stats(dmoe_pool *pool) {
    pthread_mutex_lock(&pool->lock);
    dmoe_pool_stats s = pool->stats;
    pthread_mutex_unlock(&pool->lock);
    return s;
}
