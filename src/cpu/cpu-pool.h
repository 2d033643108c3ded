/*
 * cpu-pool.h: the fast CPU backend's thread pool.
 *
 * A pool of n threads: the calling thread plus n - 1 pthreads. cpu_pool_run
 * hands a job (a function and a count of independent items) to every thread;
 * threads claim items with an atomic counter until none are left, and the
 * call returns when every item is done. Which thread runs an item is not
 * fixed, so a job must not let the result depend on it (the backend's jobs
 * write each output element from exactly one item).
 *
 * Idle workers spin for a short while (a forward runs several jobs back to
 * back), then sleep on a condition variable. Calls from different threads on
 * one pool are serialised by a mutex.
 */
#ifndef DMOE_CPU_POOL_H
#define DMOE_CPU_POOL_H

#include "../dmoe-impl.h"

/* fn(arg, item, thread_idx): item in [0, n_items), thread_idx in [0, n_threads). */
typedef void (*cpu_job_fn)(void *arg, int64_t item, int thread_idx);

typedef struct cpu_pool cpu_pool;

/* Starts n_threads - 1 workers. Returns DMOE_ERR_OUT_OF_MEMORY or DMOE_ERR_THREAD
 * (with the message on ctx) and leaves *out untouched on failure. */
dmoe_status cpu_pool_create(dmoe_context *ctx, int n_threads, cpu_pool **out);
/* Joins the workers and frees the pool; NULL is a no-op. */
void cpu_pool_destroy(dmoe_context *ctx, cpu_pool *pool);
/* Runs fn over [0, n_items) on all threads and waits for it. */
void cpu_pool_run(cpu_pool *pool, cpu_job_fn fn, void *arg, int64_t n_items);
int cpu_pool_n_threads(const cpu_pool *pool);

#endif /* DMOE_CPU_POOL_H */
