/*
 * test-util.h: what the dmoe unit tests share.
 *
 *  - checks that count failures and keep going (TU_CHECK*), so one run
 *    reports every broken case; tu_finish() turns the count into the exit
 *    status (0 pass, 1 fail, TU_SKIP = 77 skip, see tests/CMakeLists.txt);
 *  - a small fixed-seed PRNG (splitmix64). The seed is printed; set
 *    DMOE_TEST_SEED=<n> to replay a run or DMOE_TEST_SEED=fresh for a new one;
 *  - buffers in any dmoe dtype: random fill, NaN poison, finiteness;
 *  - comparisons by relative L2 error that print the first mismatches and
 *    the worst error (STYLE.md, habit 11);
 *  - a random model (weights with sensible scales) and layer setup on a
 *    backend, plus an independent, sort-based routing oracle that also
 *    reports how close a token's routing is to a tie.
 *
 * The backend under test is `cpu` unless DMOE_TEST_BACKEND names another
 * (DMOE_TEST_BACKEND=cpu-ref checks the test logic itself against the oracle).
 */
#ifndef DMOE_TEST_UTIL_H
#define DMOE_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>

#include "dmoe.h"

#define TU_SKIP 77

/* ---- checks ---- */
extern int tu_n_failed;
extern int tu_n_checked;

void tu_fail_at(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#define TU_CHECK(cond)                                                  \
    do {                                                                \
        tu_n_checked++;                                                 \
        if (!(cond)) tu_fail_at(__FILE__, __LINE__, "%s", #cond);       \
    } while (0)

#define TU_CHECKF(cond, ...)                                            \
    do {                                                                \
        tu_n_checked++;                                                 \
        if (!(cond)) tu_fail_at(__FILE__, __LINE__, __VA_ARGS__);       \
    } while (0)

/* Checks that expr returns the status want; on a mismatch prints both names
 * and the message of ctx (may be NULL: the thread's slot). */
#define TU_CHECK_STATUS(ctx, expr, want) \
    tu_check_status_at(__FILE__, __LINE__, #expr, (expr), (want), (ctx))
int tu_check_status_at(const char *file, int line, const char *expr, dmoe_status got,
                       dmoe_status want, const dmoe_context *ctx);

/* Prints "name: N checks, M failed" and returns the exit status. */
int tu_finish(const char *name);

/* ---- random numbers ---- */
typedef struct tu_rng {
    uint64_t state;
} tu_rng;

/* The run's seed: DMOE_TEST_SEED (a number, or "fresh" for one from the
 * clock), else a fixed default. Printed on the first call. */
uint64_t tu_seed(void);
void tu_rng_init(tu_rng *rng, uint64_t seed);
uint64_t tu_rand_u64(tu_rng *rng);
double tu_rand_unit(tu_rng *rng);                         /* [0, 1) */
double tu_now_s(void);                                    /* monotonic clock, seconds */
double tu_rand_range(tu_rng *rng, double lo, double hi);  /* [lo, hi) */
int64_t tu_rand_int(tu_rng *rng, int64_t lo, int64_t hi); /* [lo, hi] */

/* ---- buffers in a dmoe dtype ---- */
void *tu_malloc(size_t bytes); /* 64-byte aligned; exits on failure */
void tu_free(void *p);
double tu_get(const void *p, dmoe_dtype dt, int64_t idx);
void tu_set(void *p, dmoe_dtype dt, int64_t idx, double v); /* rounds to dt */
void tu_fill_uniform(tu_rng *rng, void *p, dmoe_dtype dt, int64_t n, double lo, double hi);
void tu_fill_nan(void *p, dmoe_dtype dt, int64_t n); /* i32: fills with INT32_MIN */
int64_t tu_count_nonfinite(const void *p, dmoe_dtype dt, int64_t n);

/* Relative L2 error of got against want, both (rows, cols), over the rows
 * where row_ok is nonzero (row_ok NULL: all rows): it must be <= tol, and
 * the worst single row's relative error <= 4 * tol (so one bad token in a
 * large batch still fails). Prints one summary line with the worst element;
 * on failure also the worst row and the first mismatching elements.
 * Non-finite values in got always fail. Returns 1 when it passes. */
int tu_compare(const char *what, const void *got, dmoe_dtype got_dt, const void *want,
               dmoe_dtype want_dt, int64_t rows, int64_t cols, const unsigned char *row_ok,
               double tol);

/* ---- models and layers ---- */
typedef struct tu_model {
    dmoe_layer_desc desc;
    void *router;      /* (E, H) weight dtype */
    void *w13;         /* (E, 2F, H) */
    void *w2;          /* (E, H, F) */
    float *bias;       /* (E) float32, NULL without correction bias */
    void *shared_w13;  /* (S, 2Fs, H) or NULL */
    void *shared_w2;   /* (S, H, Fs) or NULL */
    void *shared_gate; /* (1, H) or NULL */
    dmoe_weights weights; /* views of the above */
} tu_model;

/* Random weights for desc. Scales keep router logits around N(0, 1) and the
 * expert outputs of order 0.1 to 1 for x in [-1, 1]. */
void tu_model_random(tu_model *m, const dmoe_layer_desc *desc, tu_rng *rng);
void tu_model_free(tu_model *m);

typedef struct tu_layer {
    dmoe_context *ctx;
    dmoe_layer *layer;
} tu_layer;

/* Context (backend, n_threads) + layer (m->desc) + weights (m). On failure
 * prints the message, closes what it opened and returns the status. */
dmoe_status tu_layer_open(tu_layer *l, dmoe_backend backend, int32_t n_threads, const tu_model *m);
void tu_layer_close(tu_layer *l);

/* y (T, H) = cpu-ref's dmoe_experts on caller routing, with the tokens split
 * over threads (one cpu-ref layer each; layers are independent), so the
 * oracle keeps up with large tests. DMOE_TEST_REF_THREADS caps the threads
 * (default: online cores, at most 8). */
dmoe_status tu_reference_experts(const tu_model *m, const void *x, int64_t n_tokens,
                                 const int32_t *topk_ids, const float *topk_weights, void *y);

/* The backend under test: DMOE_TEST_BACKEND, default cpu. */
dmoe_backend tu_backend_under_test(void);
/* 0 when DMOE_CPU_ISA names kernels this machine cannot run, i.e. the
 * backend under test refuses a context with DMOE_ERR_BACKEND_UNAVAILABLE:
 * the test should then exit TU_SKIP. Prints why. */
int tu_forced_isa_runs(void);
/* 1 when the backend's function table has its compute entries (the cpu
 * backend is a placeholder until it lands). */
int tu_backend_implemented(dmoe_backend backend);

/* ---- routing oracle ----
 * An independent statement of the rules in dmoe.h, written as plainly as
 * possible (full sorts instead of a selection): ids (K) in rank order and
 * weights (K) in double. margin (optional) is how far the token is from a
 * tie that could change the chosen set: the smallest gap, relative to the
 * scores involved, between the K-th and (K+1)-th candidates and between
 * the topk_group-th and next group; 1e300 when no such boundary exists. */
void tu_route_oracle(const dmoe_routing_desc *r, int32_t n_experts, int32_t top_k,
                     const double *logits, const float *bias, int32_t *ids, double *weights,
                     double *margin);

/* Router logits (T, E) of x (T, H) in float64, the way the reference computes them. */
void tu_router_logits(const tu_model *m, const void *x, int64_t n_tokens, double *logits);

#endif /* DMOE_TEST_UTIL_H */
