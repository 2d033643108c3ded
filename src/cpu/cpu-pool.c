/*
 * cpu-pool.c: the thread pool of the fast CPU backend (see cpu-pool.h).
 *
 * Hand-off: the caller publishes the job (fn, arg, n_items), resets the item
 * counter and the count of busy workers, then bumps `gen` under `mu` and
 * broadcasts `wake`. A worker waits for `gen` to change: first spinning (jobs
 * of one forward follow each other within microseconds), then asleep on
 * `wake`, re-checking `gen` under `mu` so no wake-up is lost. Every worker
 * takes part in every job, even one with no items left, and decrements
 * `n_busy` when done; the caller runs items too and returns once `n_busy`
 * is 0, so a job's writes are visible to the caller (release/acquire on
 * n_busy) and the next job cannot start while a worker is still in the last.
 */
#include "cpu-pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

/* Spin iterations before a worker sleeps, and before the caller yields its
 * core while waiting. A pause is tens of cycles: this is tens of microseconds. */
enum { POOL_SPIN_WORKER = 4096, POOL_SPIN_CALLER = 1024 };

typedef struct pool_worker_arg {
    struct cpu_pool *pool;
    int idx;
} pool_worker_arg;

struct cpu_pool {
    int n_threads;
    pthread_t *threads;    /* (n_threads - 1) */
    pool_worker_arg *args; /* (n_threads - 1) */
    int n_started;
    pthread_mutex_t run_mu; /* one job at a time */
    pthread_mutex_t mu;     /* guards sleeping on wake */
    pthread_cond_t wake;
    atomic_uint_least64_t gen;
    atomic_int_least64_t next_item;
    atomic_int n_busy;
    atomic_int stop;
    /* The current job: written by the caller before gen is bumped. */
    cpu_job_fn fn;
    void *arg;
    int64_t n_items;
};

static void pool_run_items(cpu_pool *p, int idx) {
    for (;;) {
        int64_t it = atomic_fetch_add_explicit(&p->next_item, 1, memory_order_relaxed);
        if (it >= p->n_items) break;
        p->fn(p->arg, it, idx);
    }
}

static void pool_worker_loop(cpu_pool *p, int idx) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int s = 0; g == seen && s < POOL_SPIN_WORKER; s++) {
            cpu_relax();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return;
        pool_run_items(p, idx);
        atomic_fetch_sub_explicit(&p->n_busy, 1, memory_order_release);
    }
}

static void *pool_worker_main(void *varg) {
    pool_worker_arg *a = (pool_worker_arg *)varg;
    pool_worker_loop(a->pool, a->idx);
    return NULL;
}

/* Publishes a new generation (a job, or the stop request) and wakes sleepers. */
static void pool_publish(cpu_pool *p) {
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

static void pool_stop_workers(cpu_pool *p) {
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pool_publish(p);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    p->n_started = 0;
}

dmoe_status cpu_pool_create(dmoe_context *ctx, int n_threads, cpu_pool **out) {
    if (n_threads < 1) n_threads = 1;
    cpu_pool *p = (cpu_pool *)dmoe__calloc(ctx, 1, sizeof *p);
    if (!p) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu: thread pool");
    p->n_threads = n_threads;
    if (n_threads > 1) {
        p->threads = (pthread_t *)dmoe__calloc(ctx, (size_t)(n_threads - 1), sizeof(pthread_t));
        p->args = (pool_worker_arg *)dmoe__calloc(ctx, (size_t)(n_threads - 1), sizeof *p->args);
        if (!p->threads || !p->args) {
            dmoe__free(ctx, p->args);
            dmoe__free(ctx, p->threads);
            dmoe__free(ctx, p);
            return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu: thread pool");
        }
    }
    atomic_init(&p->gen, 0);
    atomic_init(&p->next_item, 0);
    atomic_init(&p->n_busy, 0);
    atomic_init(&p->stop, 0);
    int inits = 0;
    if (pthread_mutex_init(&p->run_mu, NULL) == 0) inits++;
    if (inits == 1 && pthread_mutex_init(&p->mu, NULL) == 0) inits++;
    if (inits == 2 && pthread_cond_init(&p->wake, NULL) == 0) inits++;
    dmoe_status st = DMOE_OK;
    if (inits < 3) {
        st = dmoe__error(ctx, DMOE_ERR_THREAD, "cpu: cannot initialise the pool's locks");
        goto fail;
    }
    for (int i = 0; i < n_threads - 1; i++) {
        p->args[i].pool = p;
        p->args[i].idx = i + 1;
        int rc = pthread_create(&p->threads[i], NULL, pool_worker_main, &p->args[i]);
        if (rc != 0) {
            st = dmoe__error(ctx, DMOE_ERR_THREAD, "cpu: pthread_create failed for worker %d of %d (%s)",
                             i + 1, n_threads - 1, strerror(rc));
            goto fail;
        }
        p->n_started++;
    }
    *out = p;
    return DMOE_OK;

fail:
    if (p->n_started > 0) pool_stop_workers(p); /* only after the locks were made */
    if (inits >= 3) pthread_cond_destroy(&p->wake);
    if (inits >= 2) pthread_mutex_destroy(&p->mu);
    if (inits >= 1) pthread_mutex_destroy(&p->run_mu);
    dmoe__free(ctx, p->args);
    dmoe__free(ctx, p->threads);
    dmoe__free(ctx, p);
    return st;
}

void cpu_pool_destroy(dmoe_context *ctx, cpu_pool *p) {
    if (!p) return;
    pool_stop_workers(p);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    dmoe__free(ctx, p->args);
    dmoe__free(ctx, p->threads);
    dmoe__free(ctx, p);
}

void cpu_pool_run(cpu_pool *p, cpu_job_fn fn, void *arg, int64_t n_items) {
    if (p->n_threads == 1) {
        for (int64_t it = 0; it < n_items; it++) fn(arg, it, 0);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->arg = arg;
    p->n_items = n_items;
    atomic_store_explicit(&p->next_item, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_busy, p->n_threads - 1, memory_order_relaxed);
    pool_publish(p);
    if (n_items > 0) pool_run_items(p, 0);
    for (int s = 0; atomic_load_explicit(&p->n_busy, memory_order_acquire) > 0; s++) {
        if (s < POOL_SPIN_CALLER) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&p->run_mu);
}

int cpu_pool_n_threads(const cpu_pool *p) { return p->n_threads; }
