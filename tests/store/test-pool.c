/*
 * test-pool: the size-class pool (src/pool.c) over a fake backing allocator
 * with a byte limit: class rounding wastes at most 25% and never rounds down;
 * a freed block is reused by the next request of its class; when the backing
 * allocator runs out, the cache is given back and the request retried once;
 * a request that still cannot fit fails with DMOE_ERR_OUT_OF_MEMORY and a
 * message; statistics add up; two threads hammering the pool leave it
 * consistent; nothing is left allocated after fini.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "pool.h"
#include "test-util.h"


typedef struct fake {
    pthread_mutex_t lock;
    size_t limit, live_bytes;
    long live_blocks, calls;
} fake;

static int fake_alloc(void *user, size_t size, void **out) {
    fake *f = (fake *)user;
    pthread_mutex_lock(&f->lock);
    f->calls++;
    int fail = f->live_bytes + size > f->limit;
    void *p = fail ? NULL : malloc(size + sizeof(size_t));
    if (p) {
        *(size_t *)p = size;
        f->live_bytes += size;
        f->live_blocks++;
        *out = (char *)p + sizeof(size_t);
    }
    pthread_mutex_unlock(&f->lock);
    return p ? 0 : 1;
}

static void fake_free(void *user, void *ptr) {
    fake *f = (fake *)user;
    char *p = (char *)ptr - sizeof(size_t);
    pthread_mutex_lock(&f->lock);
    f->live_bytes -= *(size_t *)p;
    f->live_blocks--;
    pthread_mutex_unlock(&f->lock);
    free(p);
}

static void test_classes(void) {
    size_t prev = 0;
    for (size_t s = 1; s < ((size_t)1 << 34); s = s * 3 / 2 + 1) {
        size_t bytes = 0;
        int c = dmoe__pool_class(s, &bytes);
        TU_CHECKF(c >= 0 && bytes >= s, "class of %zu holds %zu", s, bytes);
        TU_CHECKF(s < 256 || bytes <= s + s / 4 + 1, "class of %zu wastes too much (%zu)", s, bytes);
        TU_CHECKF(bytes >= prev, "classes grow with size");
        prev = bytes;
    }
}

typedef struct stress_arg {
    dmoe_pool *pool;
    unsigned seed;
    int errors;
} stress_arg;

static void *stress(void *p) {
    stress_arg *a = (stress_arg *)p;
    void *held[8] = {0};
    size_t sizes[8] = {0};
    for (int i = 0; i < 20000; i++) {
        int slot = (int)(rand_r(&a->seed) % 8);
        if (held[slot]) {
            dmoe__pool_free(a->pool, held[slot], sizes[slot]);
            held[slot] = NULL;
        } else {
            sizes[slot] = 1 + rand_r(&a->seed) % 100000;
            if (dmoe__pool_alloc(a->pool, sizes[slot], &held[slot]) != DMOE_OK) a->errors++;
        }
    }
    for (int s = 0; s < 8; s++)
        if (held[s]) dmoe__pool_free(a->pool, held[s], sizes[s]);
    return NULL;
}

int main(void) {
    test_classes();
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    if (dmoe_context_create(&cd, &ctx) != DMOE_OK) return 1;

    fake f = {PTHREAD_MUTEX_INITIALIZER, 4096, 0, 0, 0};
    dmoe_raw_allocator raw = {fake_alloc, fake_free, &f, "fake device"};
    dmoe_pool pool;
    TU_CHECKF(dmoe__pool_init(&pool, ctx, &raw) == DMOE_OK, "init");

    void *a = NULL, *b = NULL, *c = NULL;
    TU_CHECKF(dmoe__pool_alloc(&pool, 1000, &a) == DMOE_OK, "first block");
    dmoe__pool_free(&pool, a, 1000);
    long calls = f.calls;
    TU_CHECKF(dmoe__pool_alloc(&pool, 1020, &b) == DMOE_OK && b == a && f.calls == calls,
          "same class is served from the cache without the backing allocator");
    dmoe_pool_stats s = dmoe__pool_get_stats(&pool);
    TU_CHECKF(s.n_allocs == 2 && s.n_reused == 1 && s.bytes_in_use == 1024 && s.bytes_cached == 0,
          "stats after reuse: allocs %llu reused %llu in use %zu cached %zu",
          (unsigned long long)s.n_allocs, (unsigned long long)s.n_reused, s.bytes_in_use, s.bytes_cached);
    dmoe__pool_free(&pool, b, 1020);
    /* 1024 cached + 3584 would exceed 4096: the pool must trim and retry */
    TU_CHECKF(dmoe__pool_alloc(&pool, 3500, &c) == DMOE_OK, "trim and retry: %s", dmoe_context_last_error(ctx));
    s = dmoe__pool_get_stats(&pool);
    TU_CHECKF(s.n_trims == 1 && s.bytes_cached == 0 && s.bytes_in_use == 3584, "stats after trim");
    void *d = (void *)0x1;
    TU_CHECKF(dmoe__pool_alloc(&pool, 4000, &d) == DMOE_ERR_OUT_OF_MEMORY, "a request that cannot fit fails");
    TU_CHECKF(d == (void *)0x1, "output untouched on failure");
    TU_CHECKF(strstr(dmoe_context_last_error(ctx), "fake device") != NULL, "message names the allocator");
    TU_CHECKF(dmoe__pool_get_stats(&pool).n_failures == 1, "failure counted");
    dmoe__pool_free(&pool, c, 3500);
    dmoe__pool_fini(&pool);
    TU_CHECKF(f.live_blocks == 0 && f.live_bytes == 0, "fini gives every block back (%ld live)", f.live_blocks);

    /* two threads */
    fake g = {PTHREAD_MUTEX_INITIALIZER, (size_t)1 << 30, 0, 0, 0};
    dmoe_raw_allocator raw2 = {fake_alloc, fake_free, &g, "fake device"};
    TU_CHECKF(dmoe__pool_init(&pool, ctx, &raw2) == DMOE_OK, "init 2");
    pthread_t th[2];
    stress_arg args[2] = {{&pool, 1, 0}, {&pool, 2, 0}};
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, stress, &args[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    s = dmoe__pool_get_stats(&pool);
    TU_CHECKF(args[0].errors == 0 && args[1].errors == 0, "stress allocations failed");
    TU_CHECKF(s.bytes_in_use == 0, "in use after stress: %zu", s.bytes_in_use);
    TU_CHECKF(s.bytes_cached == g.live_bytes, "cached bytes %zu match the backing allocator's %zu",
          s.bytes_cached, g.live_bytes);
    TU_CHECKF(s.n_reused > s.n_allocs / 2, "the cache serves most requests (%llu of %llu)",
          (unsigned long long)s.n_reused, (unsigned long long)s.n_allocs);
    dmoe__pool_fini(&pool);
    TU_CHECKF(g.live_blocks == 0, "fini after stress");
    dmoe_context_destroy(ctx);
    printf("%s (%d failures)\n", tu_n_failed ? "FAILED" : "all pool checks passed", tu_n_failed);
    return tu_n_failed != 0;
}
