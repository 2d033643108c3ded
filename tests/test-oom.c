/*
 * test-oom: allocation failures at every point (libuv's test-loop-oom).
 *
 * A dmoe_allocator that succeeds N times and then fails. For N = 0, 1, 2, ...
 * until context creation, layer creation and set_weights all succeed, on
 * cpu-ref and on the backend under test:
 *  - each failure returns DMOE_ERR_OUT_OF_MEMORY (or DMOE_ERR_THREAD from
 *    context creation), leaves *out untouched and sets a message;
 *  - after destroying what was created, no allocation is live: the allocator
 *    counts them and also checks every free is of a pointer it returned;
 *  - once everything is created, forward, route and experts succeed and
 *    allocate nothing (DESIGN.md: a forward never allocates);
 *  - a set_weights that fails for memory keeps the old weights (the next
 *    forward gives the same bits).
 * The allocator fills new memory with 0xcd so code that assumes zeroed
 * memory shows, and checks alignment requests are powers of two <= 4096.
 * The AddressSanitizer build (DMOE_SANITIZE=ON) adds leak checking on top.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-util.h"

typedef struct counting_alloc {
    pthread_mutex_t lock;
    int64_t fail_after; /* successful allocations allowed; < 0: never fail */
    int64_t n_allocs, n_failed, live, peak_live;
    size_t live_bytes, peak_bytes;
    void **ptrs;   /* live pointers */
    size_t *sizes;
    size_t n_ptrs, cap;
    int bad_frees, bad_aligns;
} counting_alloc;

static void *ca_alloc(void *user, size_t size, size_t align) {
    counting_alloc *a = (counting_alloc *)user;
    pthread_mutex_lock(&a->lock);
    void *p = NULL;
    if (align == 0 || (align & (align - 1)) || align > 4096) a->bad_aligns++;
    if (a->fail_after >= 0 && a->n_allocs >= a->fail_after) {
        a->n_failed++;
        goto out;
    }
    if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size ? size : 1) != 0) {
        p = NULL;
        goto out;
    }
    memset(p, 0xcd, size);
    if (a->n_ptrs == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->ptrs = (void **)realloc(a->ptrs, a->cap * sizeof *a->ptrs);
        a->sizes = (size_t *)realloc(a->sizes, a->cap * sizeof *a->sizes);
        if (!a->ptrs || !a->sizes) abort();
    }
    a->ptrs[a->n_ptrs] = p;
    a->sizes[a->n_ptrs++] = size;
    a->n_allocs++;
    a->live++;
    a->live_bytes += size;
    if (a->live > a->peak_live) a->peak_live = a->live;
    if (a->live_bytes > a->peak_bytes) a->peak_bytes = a->live_bytes;
out:
    pthread_mutex_unlock(&a->lock);
    return p;
}

static void ca_free(void *user, void *ptr) {
    counting_alloc *a = (counting_alloc *)user;
    if (!ptr) return;
    pthread_mutex_lock(&a->lock);
    size_t i = 0;
    while (i < a->n_ptrs && a->ptrs[i] != ptr) i++;
    if (i == a->n_ptrs) {
        a->bad_frees++;
        pthread_mutex_unlock(&a->lock);
        return; /* not ours: do not pass it to free() */
    }
    a->live--;
    a->live_bytes -= a->sizes[i];
    a->ptrs[i] = a->ptrs[--a->n_ptrs];
    a->sizes[i] = a->sizes[a->n_ptrs];
    pthread_mutex_unlock(&a->lock);
    free(ptr);
}

static void ca_reset(counting_alloc *a, int64_t fail_after) {
    a->fail_after = fail_after;
    a->n_allocs = a->n_failed = 0;
}

enum { T = 5 };

/* Compute calls on a complete layer: all succeed and none allocates. Returns
 * the forward's output in y. */
static void run_calls(dmoe_context *ctx, dmoe_layer *layer, counting_alloc *a, const tu_model *m,
                      const void *x, void *y, const char *tag) {
    const dmoe_layer_desc *d = &m->desc;
    int32_t ids[T * 8];
    float w[T * 8];
    void *y2 = tu_malloc((size_t)(T * d->hidden) * dmoe_dtype_size(d->act_dtype));
    dmoe_tensor tx = dmoe_tensor_2d((void *)x, d->act_dtype, T, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(y, d->act_dtype, T, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ty2 = dmoe_tensor_2d(y2, d->act_dtype, T, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, d->top_k, DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d(w, DMOE_DTYPE_F32, T, d->top_k, DMOE_DEVICE_HOST);
    int64_t before = a->n_allocs, failed_before = a->n_failed;
    TU_CHECK_STATUS(ctx, dmoe_forward(layer, &tx, &ty, NULL), DMOE_OK);
    TU_CHECK_STATUS(ctx, dmoe_route(layer, &tx, &ti, &tw, NULL), DMOE_OK);
    TU_CHECK_STATUS(ctx, dmoe_experts(layer, &tx, &ti, &tw, &ty2, NULL), DMOE_OK);
    TU_CHECKF(a->n_allocs == before && a->n_failed == failed_before,
              "%s: compute calls allocated %lld times", tag,
              (long long)(a->n_allocs - before + a->n_failed - failed_before));
    TU_CHECK(tu_count_nonfinite(y, d->act_dtype, T * d->hidden) == 0);
    tu_free(y2);
}

static void check_backend(dmoe_backend b, const char *name, const dmoe_layer_desc *desc) {
    static char sentinel;
    const int can_compute = tu_backend_implemented(b);
    counting_alloc a;
    memset(&a, 0, sizeof a);
    pthread_mutex_init(&a.lock, NULL);
    dmoe_allocator alloc = {ca_alloc, ca_free, &a};
    tu_rng rng;
    tu_rng_init(&rng, 99);
    tu_model m, m2;
    tu_model_random(&m, desc, &rng);
    tu_model_random(&m2, desc, &rng);
    const size_t ybytes = (size_t)(T * desc->hidden) * dmoe_dtype_size(desc->act_dtype);
    void *x = tu_malloc(ybytes), *y0 = tu_malloc(ybytes), *y1 = tu_malloc(ybytes);
    tu_fill_uniform(&rng, x, desc->act_dtype, T * desc->hidden, -1, 1);

    int64_t n = 0, fails = 0, done = 0;
    for (; n < 100000 && !done; n++) {
        ca_reset(&a, n);
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = b;
        cd.n_threads = 2;
        cd.allocator = &alloc;
        dmoe_context *ctx = (dmoe_context *)(void *)&sentinel;
        dmoe_layer *layer = (dmoe_layer *)(void *)&sentinel;
        dmoe_status st = dmoe_context_create(&cd, &ctx);
        if (st != DMOE_OK) {
            fails++;
            TU_CHECKF(st == DMOE_ERR_OUT_OF_MEMORY || st == DMOE_ERR_THREAD,
                      "%s N=%lld: context create returned %s", name, (long long)n,
                      dmoe_status_name(st));
            TU_CHECKF(ctx == (dmoe_context *)(void *)&sentinel, "%s N=%lld: *out written", name,
                      (long long)n);
            TU_CHECKF(dmoe_context_last_error(NULL)[0], "%s N=%lld: no message", name, (long long)n);
            goto check_live;
        }
        st = dmoe_layer_create(ctx, desc, &layer);
        if (st != DMOE_OK) {
            fails++;
            TU_CHECKF(st == DMOE_ERR_OUT_OF_MEMORY, "%s N=%lld: layer create returned %s", name,
                      (long long)n, dmoe_status_name(st));
            TU_CHECKF(layer == (dmoe_layer *)(void *)&sentinel, "%s N=%lld: *out written", name,
                      (long long)n);
            TU_CHECKF(dmoe_context_last_error(ctx)[0], "%s N=%lld: no message", name, (long long)n);
            dmoe_context_destroy(ctx);
            goto check_live;
        }
        st = dmoe_layer_set_weights(layer, &m.weights);
        if (st != DMOE_OK) {
            fails++;
            TU_CHECKF(st == DMOE_ERR_OUT_OF_MEMORY, "%s N=%lld: set_weights returned %s", name,
                      (long long)n, dmoe_status_name(st));
            dmoe_tensor tx = dmoe_tensor_2d(x, desc->act_dtype, T, desc->hidden, DMOE_DEVICE_HOST);
            dmoe_tensor ty = dmoe_tensor_2d(y0, desc->act_dtype, T, desc->hidden, DMOE_DEVICE_HOST);
            TU_CHECKF(dmoe_forward(layer, &tx, &ty, NULL) == DMOE_ERR_NO_WEIGHTS,
                      "%s N=%lld: a layer whose set_weights failed has weights", name, (long long)n);
        } else {
            done = 1;
            printf("  %s: %lld allocations to create and set up (peak %lld live, %zu bytes)\n",
                   name, (long long)a.n_allocs, (long long)a.peak_live, a.peak_bytes);
            if (can_compute) {
                char tag[64];
                snprintf(tag, sizeof tag, "%s N=%lld", name, (long long)n);
                run_calls(ctx, layer, &a, &m, x, y0, tag);
                /* New weights with no memory left: either no allocation is
                 * needed, or the old weights stay. */
                ca_reset(&a, 0);
                st = dmoe_layer_set_weights(layer, &m2.weights);
                TU_CHECKF(st == DMOE_OK || st == DMOE_ERR_OUT_OF_MEMORY,
                          "%s: set_weights without memory returned %s", name, dmoe_status_name(st));
                ca_reset(&a, -1);
                if (st == DMOE_ERR_OUT_OF_MEMORY) {
                    run_calls(ctx, layer, &a, &m, x, y1, tag);
                    TU_CHECKF(memcmp(y0, y1, ybytes) == 0,
                              "%s: a failed set_weights changed the layer's weights", name);
                }
            }
        }
        dmoe_layer_destroy(layer);
        dmoe_context_destroy(ctx);
    check_live:
        TU_CHECKF(a.live == 0, "%s N=%lld: %lld allocations (%zu bytes) live after destroy", name,
                  (long long)n, (long long)a.live, a.live_bytes);
        if (a.live) break; /* the rest would repeat the report */
    }
    TU_CHECKF(done, "%s: never succeeded", name);
    TU_CHECKF(fails == n - 1, "%s: %lld failures for %lld attempts", name, (long long)fails,
              (long long)n);
    TU_CHECKF(a.bad_frees == 0, "%s: %d frees of pointers the allocator did not return", name,
              a.bad_frees);
    TU_CHECKF(a.bad_aligns == 0, "%s: %d bad alignment requests", name, a.bad_aligns);
    printf("  %s: %lld failure points checked\n", name, (long long)fails);
    free(a.ptrs);
    free(a.sizes);
    pthread_mutex_destroy(&a.lock);
    tu_model_free(&m);
    tu_model_free(&m2);
    tu_free(x);
    tu_free(y0);
    tu_free(y1);
}

int main(void) {
    (void)tu_seed();
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 64;
    d.ffn = 48;
    d.n_experts = 8;
    d.top_k = 2;
    d.n_shared_experts = 2;
    d.shared_ffn = 32;
    d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    d.routing.scoring = DMOE_SCORING_SIGMOID;
    d.routing.use_correction_bias = 1;
    d.routing.n_group = 4;
    d.routing.topk_group = 2;
    d.max_tokens = 16;
    dmoe_backend backends[2] = {DMOE_BACKEND_CPU_REF, tu_backend_under_test()};
    int n_backends = backends[1] == DMOE_BACKEND_CPU_REF ? 1 : 2;
    for (int bi = 0; bi < n_backends; bi++) {
        const char *bn = dmoe_backend_name(backends[bi]);
        char name[64];
        printf("%s\n", bn);
        d.act_dtype = d.weight_dtype = DMOE_DTYPE_BF16;
        snprintf(name, sizeof name, "%s bf16", bn);
        check_backend(backends[bi], name, &d);
        d.act_dtype = d.weight_dtype = DMOE_DTYPE_F32;
        snprintf(name, sizeof name, "%s f32", bn);
        check_backend(backends[bi], name, &d);
    }
    return tu_finish("test-oom");
}
