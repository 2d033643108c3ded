/*
 * test-util.c: the helpers declared in test-util.h. Nothing here uses the
 * library's own routing or comparison code, so the tests built on it are an
 * independent check of the library (only dtype conversions are shared, and
 * test-convert checks those exhaustively on their own).
 */
#include "test-util.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "dmoe-impl.h"

int tu_n_failed;
int tu_n_checked;

enum { TU_MAX_PRINTED_FAILURES = 60 };

void tu_fail_at(const char *file, int line, const char *fmt, ...) {
    tu_n_failed++;
    if (tu_n_failed > TU_MAX_PRINTED_FAILURES) {
        if (tu_n_failed == TU_MAX_PRINTED_FAILURES + 1)
            fprintf(stderr, "(further failures are counted, not printed)\n");
        return;
    }
    const char *base = strrchr(file, '/');
    fprintf(stderr, "FAIL %s:%d: ", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int tu_check_status_at(const char *file, int line, const char *expr, dmoe_status got,
                       dmoe_status want, const dmoe_context *ctx) {
    tu_n_checked++;
    if (got == want) return 1;
    tu_fail_at(file, line, "%s returned %s, expected %s (message: \"%s\")", expr,
               dmoe_status_name(got), dmoe_status_name(want), dmoe_context_last_error(ctx));
    return 0;
}

int tu_finish(const char *name) {
    printf("%s: %d checks, %d failed\n", name, tu_n_checked, tu_n_failed);
    fflush(stdout);
    return tu_n_failed ? 1 : 0;
}

/* ---- random numbers: splitmix64 ---- */
uint64_t tu_seed(void) {
    static int done;
    static uint64_t seed = 20250101u;
    if (done) return seed;
    done = 1;
    /* Line by line, so ctest's log interleaves stdout and stderr in order. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *env = getenv("DMOE_TEST_SEED");
    if (env && strcmp(env, "fresh") == 0) {
        struct timespec ts;
        timespec_get(&ts, TIME_UTC);
        seed = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec;
    } else if (env && *env) {
        seed = strtoull(env, NULL, 0);
    }
    printf("seed %llu (replay with DMOE_TEST_SEED=%llu, new one with DMOE_TEST_SEED=fresh)\n",
           (unsigned long long)seed, (unsigned long long)seed);
    return seed;
}

void tu_rng_init(tu_rng *rng, uint64_t seed) { rng->state = seed; }

uint64_t tu_rand_u64(tu_rng *rng) {
    uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tu_rand_unit(tu_rng *rng) { return (double)(tu_rand_u64(rng) >> 11) * 0x1.0p-53; }

double tu_rand_range(tu_rng *rng, double lo, double hi) {
    return lo + (hi - lo) * tu_rand_unit(rng);
}

int64_t tu_rand_int(tu_rng *rng, int64_t lo, int64_t hi) {
    return lo + (int64_t)(tu_rand_u64(rng) % (uint64_t)(hi - lo + 1));
}

/* ---- buffers ---- */
void *tu_malloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
        fprintf(stderr, "test: out of memory (%zu bytes)\n", bytes);
        exit(2);
    }
    return p;
}

void tu_free(void *p) { free(p); }

double tu_get(const void *p, dmoe_dtype dt, int64_t idx) {
    if (dt == DMOE_DTYPE_I32) return (double)((const int32_t *)p)[idx];
    return (double)dmoe__load_f32(p, dt, idx);
}

void tu_set(void *p, dmoe_dtype dt, int64_t idx, double v) {
    if (dt == DMOE_DTYPE_I32) ((int32_t *)p)[idx] = (int32_t)v;
    else dmoe__store_f32(p, dt, idx, (float)v);
}

void tu_fill_uniform(tu_rng *rng, void *p, dmoe_dtype dt, int64_t n, double lo, double hi) {
    enum { TABLE = 1 << 16 };
    if (n < 4 * TABLE || dt == DMOE_DTYPE_I32) {
        for (int64_t i = 0; i < n; i++) tu_set(p, dt, i, tu_rand_range(rng, lo, hi));
        return;
    }
    /* Large weights: draw from a table of 65536 random values, four indices
     * per random number. Converting every element (f16 in particular) made
     * the big models of test-backend-agree cost seconds each. */
    void *table = tu_malloc(TABLE * dmoe_dtype_size(dt));
    tu_fill_uniform(rng, table, dt, TABLE, lo, hi);
    for (int64_t i = 0; i < n; i += 4) {
        uint64_t r = tu_rand_u64(rng);
        for (int64_t j = i; j < i + 4 && j < n; j++, r >>= 16) {
            if (dt == DMOE_DTYPE_F32) ((float *)p)[j] = ((const float *)table)[r & 0xffff];
            else ((uint16_t *)p)[j] = ((const uint16_t *)table)[r & 0xffff];
        }
    }
    tu_free(table);
}

void tu_fill_nan(void *p, dmoe_dtype dt, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (dt == DMOE_DTYPE_I32) ((int32_t *)p)[i] = INT32_MIN;
        else tu_set(p, dt, i, NAN);
    }
}

int64_t tu_count_nonfinite(const void *p, dmoe_dtype dt, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !isfinite(tu_get(p, dt, i));
    return bad;
}

/* A row's error relative to its own norm, but never to less than a tenth
 * of the typical row norm (so a row that is nearly zero cannot fail alone). */
static double row_rel(double d2, double w2, double typical_w2) {
    double den = w2 > 0.01 * typical_w2 ? w2 : 0.01 * typical_w2;
    return den > 0.0 ? sqrt(d2 / den) : sqrt(d2);
}

int tu_compare(const char *what, const void *got, dmoe_dtype got_dt, const void *want,
               dmoe_dtype want_dt, int64_t rows, int64_t cols, const unsigned char *row_ok,
               double tol) {
    double num = 0.0, den = 0.0, worst = -1.0;
    int64_t worst_idx = -1, nonfinite = 0, first_nonfinite = -1, n_rows = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (row_ok && !row_ok[r]) continue;
        n_rows++;
        for (int64_t c = 0; c < cols; c++) {
            int64_t i = r * cols + c;
            double g = tu_get(got, got_dt, i), w = tu_get(want, want_dt, i);
            if (!isfinite(g) || !isfinite(w)) {
                if (first_nonfinite < 0) first_nonfinite = i;
                nonfinite++;
                continue;
            }
            double d = fabs(g - w);
            num += d * d;
            den += w * w;
            if (d > worst) {
                worst = d;
                worst_idx = i;
            }
        }
    }
    /* The worst row as well: a bug in one token of a large batch barely
     * moves the overall error. Rows may be off by ROW_FACTOR * tol. */
    const double ROW_FACTOR = 4.0;
    const double typical_w2 = n_rows ? den / (double)n_rows : 0.0;
    double worst_row = 0.0;
    int64_t worst_row_idx = -1;
    for (int64_t r = 0; r < rows && nonfinite == 0; r++) {
        if (row_ok && !row_ok[r]) continue;
        double d2 = 0.0, w2 = 0.0;
        for (int64_t c = 0; c < cols; c++) {
            double g = tu_get(got, got_dt, r * cols + c), w = tu_get(want, want_dt, r * cols + c);
            d2 += (g - w) * (g - w);
            w2 += w * w;
        }
        double e = row_rel(d2, w2, typical_w2);
        if (e > worst_row) {
            worst_row = e;
            worst_row_idx = r;
        }
    }
    double rel = den > 0.0 ? sqrt(num / den) : sqrt(num);
    int ok = nonfinite == 0 && rel <= tol && worst_row <= ROW_FACTOR * tol;
    printf("  %-44s rows %lld/%lld rel_l2 %.3e (tol %.0e), worst row %.2e", what,
           (long long)n_rows, (long long)rows, rel, tol, worst_row);
    if (worst_idx >= 0)
        printf(", worst |d| %.3e at [%lld,%lld] got %.6g want %.6g", worst,
               (long long)(worst_idx / cols), (long long)(worst_idx % cols),
               tu_get(got, got_dt, worst_idx), tu_get(want, want_dt, worst_idx));
    printf("%s\n", ok ? "" : "  <-- FAIL");
    if (nonfinite)
        printf("    %lld non-finite values, first at [%lld,%lld]: got %g want %g\n",
               (long long)nonfinite, (long long)(first_nonfinite / cols),
               (long long)(first_nonfinite % cols), tu_get(got, got_dt, first_nonfinite),
               tu_get(want, want_dt, first_nonfinite));
    if (!ok && nonfinite == 0) {
        if (worst_row > ROW_FACTOR * tol)
            printf("    row %lld has relative error %.3e (limit %.0e)\n", (long long)worst_row_idx,
                   worst_row, ROW_FACTOR * tol);
        /* The first elements that are off by more than tol relative to the
         * data's RMS, which is where a wrong tile or row usually shows. */
        double rms = n_rows ? sqrt(den / (double)(n_rows * cols)) : 0.0;
        int shown = 0;
        for (int64_t r = 0; r < rows && shown < 8; r++) {
            if (row_ok && !row_ok[r]) continue;
            for (int64_t c = 0; c < cols && shown < 8; c++) {
                int64_t i = r * cols + c;
                double g = tu_get(got, got_dt, i), w = tu_get(want, want_dt, i);
                if (fabs(g - w) > tol * (fabs(w) + rms)) {
                    printf("    mismatch [%lld,%lld]: got %.7g want %.7g\n", (long long)r,
                           (long long)c, g, w);
                    shown++;
                }
            }
        }
    }
    return ok;
}

/* ---- models and layers ---- */
void tu_model_random(tu_model *m, const dmoe_layer_desc *d, tu_rng *rng) {
    memset(m, 0, sizeof *m);
    m->desc = *d;
    const dmoe_dtype wt = d->weight_dtype;
    const size_t es = dmoe_dtype_size(wt);
    const int64_t H = d->hidden, F = d->ffn, E = d->n_experts;
    /* x is uniform in [-1, 1] (variance 1/3): a uniform [-a, a] weight with
     * a = 3/sqrt(n) gives dot products of unit variance. */
    const double a_h = 3.0 / sqrt((double)H);
    m->router = tu_malloc((size_t)(E * H) * es);
    m->w13 = tu_malloc((size_t)(E * 2 * F * H) * es);
    m->w2 = tu_malloc((size_t)(E * H * F) * es);
    tu_fill_uniform(rng, m->router, wt, E * H, -a_h, a_h);
    tu_fill_uniform(rng, m->w13, wt, E * 2 * F * H, -a_h, a_h);
    tu_fill_uniform(rng, m->w2, wt, E * H * F, -1.5 / sqrt((double)F), 1.5 / sqrt((double)F));
    if (d->routing.use_correction_bias) {
        m->bias = (float *)tu_malloc((size_t)E * sizeof(float));
        tu_fill_uniform(rng, m->bias, DMOE_DTYPE_F32, E, -0.1, 0.1);
    }
    if (d->n_shared_experts > 0) {
        const int64_t S = d->n_shared_experts, Fs = d->shared_ffn;
        m->shared_w13 = tu_malloc((size_t)(S * 2 * Fs * H) * es);
        m->shared_w2 = tu_malloc((size_t)(S * H * Fs) * es);
        tu_fill_uniform(rng, m->shared_w13, wt, S * 2 * Fs * H, -a_h, a_h);
        tu_fill_uniform(rng, m->shared_w2, wt, S * H * Fs, -1.5 / sqrt((double)Fs),
                        1.5 / sqrt((double)Fs));
    }
    if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
        m->shared_gate = tu_malloc((size_t)H * es);
        tu_fill_uniform(rng, m->shared_gate, wt, H, -a_h, a_h);
    }
    m->weights.router = m->router;
    m->weights.w13 = m->w13;
    m->weights.w2 = m->w2;
    m->weights.correction_bias = m->bias;
    m->weights.shared_w13 = m->shared_w13;
    m->weights.shared_w2 = m->shared_w2;
    m->weights.shared_gate = m->shared_gate;
}

void tu_model_free(tu_model *m) {
    tu_free(m->router);
    tu_free(m->w13);
    tu_free(m->w2);
    tu_free(m->bias);
    tu_free(m->shared_w13);
    tu_free(m->shared_w2);
    tu_free(m->shared_gate);
    memset(m, 0, sizeof *m);
}

dmoe_status tu_layer_open(tu_layer *l, dmoe_backend backend, int32_t n_threads, const tu_model *m) {
    memset(l, 0, sizeof *l);
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = backend;
    cd.n_threads = n_threads;
    dmoe_status st = dmoe_context_create(&cd, &l->ctx);
    if (st != DMOE_OK) {
        printf("  context on %s: %s\n", dmoe_backend_name(backend), dmoe_context_last_error(NULL));
        l->ctx = NULL;
        return st;
    }
    st = dmoe_layer_create(l->ctx, &m->desc, &l->layer);
    if (st == DMOE_OK) st = dmoe_layer_set_weights(l->layer, &m->weights);
    if (st != DMOE_OK) {
        printf("  layer on %s: %s\n", dmoe_backend_name(backend), dmoe_context_last_error(l->ctx));
        tu_layer_close(l);
    }
    return st;
}

void tu_layer_close(tu_layer *l) {
    dmoe_layer_destroy(l->layer);
    dmoe_context_destroy(l->ctx);
    l->layer = NULL;
    l->ctx = NULL;
}

typedef struct ref_job {
    const tu_model *m;
    const void *x;
    const int32_t *ids;
    const float *w;
    void *y;
    int64_t t0, n;
    dmoe_status st;
} ref_job;

static void *ref_job_run(void *arg) {
    ref_job *j = (ref_job *)arg;
    const dmoe_layer_desc *d = &j->m->desc;
    const int64_t H = d->hidden, K = d->top_k;
    const size_t es = dmoe_dtype_size(d->act_dtype);
    tu_layer l;
    j->st = tu_layer_open(&l, DMOE_BACKEND_CPU_REF, 1, j->m);
    if (j->st != DMOE_OK) return NULL;
    dmoe_tensor tx = dmoe_tensor_2d((char *)j->x + (size_t)(j->t0 * H) * es, d->act_dtype, j->n, H,
                                    DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d((char *)j->y + (size_t)(j->t0 * H) * es, d->act_dtype, j->n, H,
                                    DMOE_DEVICE_HOST);
    dmoe_tensor ti = dmoe_tensor_2d((int32_t *)j->ids + j->t0 * K, DMOE_DTYPE_I32, j->n, K,
                                    DMOE_DEVICE_HOST);
    dmoe_tensor tw = dmoe_tensor_2d((float *)j->w + j->t0 * K, DMOE_DTYPE_F32, j->n, K,
                                    DMOE_DEVICE_HOST);
    j->st = dmoe_experts(l.layer, &tx, &ti, &tw, &ty, NULL);
    if (j->st != DMOE_OK) printf("  cpu-ref experts: %s\n", dmoe_context_last_error(l.ctx));
    tu_layer_close(&l);
    return NULL;
}

dmoe_status tu_reference_experts(const tu_model *m, const void *x, int64_t n_tokens,
                                 const int32_t *topk_ids, const float *topk_weights, void *y) {
    enum { MAX_JOBS = 8 };
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("DMOE_TEST_REF_THREADS");
    if (env && *env) n = strtol(env, NULL, 10);
    if (n > MAX_JOBS) n = MAX_JOBS;
    if (n > n_tokens) n = (long)n_tokens;
    if (n < 1) n = 1;
    ref_job jobs[MAX_JOBS];
    pthread_t threads[MAX_JOBS];
    int started[MAX_JOBS] = {0};
    for (long i = 0; i < n; i++) {
        int64_t t0 = n_tokens * i / n, t1 = n_tokens * (i + 1) / n;
        jobs[i] = (ref_job){m, x, topk_ids, topk_weights, y, t0, t1 - t0, DMOE_OK};
        /* Job 0 runs on this thread; the others get their own. */
        if (i > 0) started[i] = pthread_create(&threads[i], NULL, ref_job_run, &jobs[i]) == 0;
        if (i > 0 && !started[i]) ref_job_run(&jobs[i]);
    }
    ref_job_run(&jobs[0]);
    dmoe_status st = jobs[0].st;
    for (long i = 1; i < n; i++) {
        if (started[i]) pthread_join(threads[i], NULL);
        if (st == DMOE_OK) st = jobs[i].st;
    }
    return st;
}

dmoe_backend tu_backend_under_test(void) {
    const char *env = getenv("DMOE_TEST_BACKEND");
    dmoe_backend b = DMOE_BACKEND_CPU;
    if (env && *env && dmoe_backend_from_name(env, &b) != DMOE_OK) {
        fprintf(stderr, "test: unknown DMOE_TEST_BACKEND '%s'\n", env);
        exit(2);
    }
    return b;
}

int tu_forced_isa_runs(void) {
    const char *isa = getenv("DMOE_CPU_ISA");
    if (!isa || !*isa) return 1;
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = tu_backend_under_test();
    dmoe_context *ctx = NULL;
    dmoe_status st = dmoe_context_create(&cd, &ctx);
    dmoe_context_destroy(ctx);
    if (st == DMOE_ERR_BACKEND_UNAVAILABLE) {
        printf("DMOE_CPU_ISA=%s cannot run here (%s): skipped\n", isa,
               dmoe_context_last_error(NULL));
        return 0;
    }
    return 1;
}

int tu_backend_implemented(dmoe_backend backend) {
    const dmoe_backend_iface *be = NULL;
    switch (backend) {
    case DMOE_BACKEND_CPU_REF: be = &dmoe__backend_cpu_ref; break;
    case DMOE_BACKEND_CPU: be = &dmoe__backend_cpu; break;
    default: return dmoe_backend_available(backend);
    }
    return be->route && be->experts && be->forward;
}

/* ---- routing oracle ---- */
typedef struct ranked {
    double value;
    int32_t idx;
} ranked;

/* Higher value first, then the lower index: the order dmoe.h defines. */
static int ranked_cmp(const void *pa, const void *pb) {
    const ranked *a = (const ranked *)pa, *b = (const ranked *)pb;
    if (a->value > b->value) return -1;
    if (a->value < b->value) return 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static double sanitize(double v) {
    if (v != v) return -FLT_MAX;
    if (v > FLT_MAX) return FLT_MAX;
    if (v < -FLT_MAX) return -FLT_MAX;
    return v;
}

/* Equal values at or beyond FLT_MAX in magnitude come only from clamped (non-finite) logits or
 * biases, which absorb the score in float as in double: an exact tie, decided by index on every
 * backend, not a near one. */
static int exact_clamped_tie(double a, double b) {
    return a == b && fabs(a) >= FLT_MAX;
}

static double rel_gap(double gap, double scale) {
    if (scale > 0.0) return gap / scale;
    return gap > 0.0 ? 1e300 : 0.0;
}

void tu_route_oracle(const dmoe_routing_desc *r, int32_t n_experts, int32_t top_k,
                     const double *logits, const float *bias, int32_t *ids, double *weights,
                     double *margin) {
    const int32_t E = n_experts;
    double *score = (double *)tu_malloc(sizeof(double) * (size_t)E);
    double *choice = (double *)tu_malloc(sizeof(double) * (size_t)E);
    ranked *cand = (ranked *)tu_malloc(sizeof(ranked) * (size_t)E);
    ranked *groups = (ranked *)tu_malloc(sizeof(ranked) * (size_t)E);
    double *group_mag = (double *)tu_malloc(sizeof(double) * (size_t)E);
    unsigned char *kept = (unsigned char *)tu_malloc((size_t)E);

    if (r->scoring == DMOE_SCORING_SOFTMAX) {
        double mx = -INFINITY, z = 0.0;
        for (int32_t e = 0; e < E; e++) mx = fmax(mx, sanitize(logits[e]));
        for (int32_t e = 0; e < E; e++) z += (score[e] = exp(sanitize(logits[e]) - mx));
        for (int32_t e = 0; e < E; e++) score[e] /= z;
    } else {
        for (int32_t e = 0; e < E; e++) score[e] = 1.0 / (1.0 + exp(-sanitize(logits[e])));
    }
    for (int32_t e = 0; e < E; e++)
        choice[e] = score[e] + (r->use_correction_bias ? sanitize(bias[e]) : 0.0);

    double m = 1e300;
    for (int32_t e = 0; e < E; e++) kept[e] = 1;
    if (r->n_group > 1) {
        const int32_t G = r->n_group, per = E / G;
        for (int32_t g = 0; g < G; g++) {
            for (int32_t i = 0; i < per; i++) cand[i] = (ranked){choice[g * per + i], g * per + i};
            qsort(cand, (size_t)per, sizeof *cand, ranked_cmp);
            int32_t take = per < 2 ? per : 2;
            double s = 0.0, mag = 0.0;
            for (int32_t i = 0; i < take; i++) {
                s += cand[i].value;
                mag += score[cand[i].idx];
            }
            groups[g] = (ranked){s, g};
            group_mag[g] = mag;
        }
        qsort(groups, (size_t)G, sizeof *groups, ranked_cmp);
        for (int32_t e = 0; e < E; e++) kept[e] = 0;
        for (int32_t j = 0; j < r->topk_group; j++)
            for (int32_t i = 0; i < per; i++) kept[groups[j].idx * per + i] = 1;
        if (r->topk_group < G) {
            const ranked *a = &groups[r->topk_group - 1], *b = &groups[r->topk_group];
            if (!exact_clamped_tie(a->value, b->value))
                m = fmin(m, rel_gap(a->value - b->value, fmax(group_mag[a->idx], group_mag[b->idx])));
        }
    }
    int32_t n_cand = 0;
    for (int32_t e = 0; e < E; e++)
        if (kept[e]) cand[n_cand++] = (ranked){choice[e], e};
    qsort(cand, (size_t)n_cand, sizeof *cand, ranked_cmp);
    if (top_k < n_cand) {
        const ranked *a = &cand[top_k - 1], *b = &cand[top_k];
        if (!exact_clamped_tie(a->value, b->value))
            m = fmin(m, rel_gap(a->value - b->value, fmax(score[a->idx], score[b->idx])));
    }
    double sum = 0.0;
    for (int32_t k = 0; k < top_k; k++) {
        ids[k] = cand[k].idx;
        sum += score[ids[k]];
    }
    for (int32_t k = 0; k < top_k; k++) {
        double w = score[ids[k]];
        if (r->renormalize && sum > 0.0) w /= sum;
        weights[k] = w * (double)r->routed_scaling_factor;
    }
    if (margin) *margin = m;
    tu_free(score);
    tu_free(choice);
    tu_free(cand);
    tu_free(groups);
    tu_free(group_mag);
    tu_free(kept);
}

void tu_router_logits(const tu_model *m, const void *x, int64_t n_tokens, double *logits) {
    const dmoe_layer_desc *d = &m->desc;
    const int64_t H = d->hidden, E = d->n_experts;
    double *xd = (double *)tu_malloc(sizeof(double) * (size_t)H);
    double *wd = (double *)tu_malloc(sizeof(double) * (size_t)(E * H));
    for (int64_t i = 0; i < E * H; i++) wd[i] = tu_get(m->router, d->weight_dtype, i);
    for (int64_t t = 0; t < n_tokens; t++) {
        for (int64_t i = 0; i < H; i++) xd[i] = tu_get(x, d->act_dtype, t * H + i);
        for (int64_t e = 0; e < E; e++) {
            double s = 0.0;
            for (int64_t i = 0; i < H; i++) s += wd[e * H + i] * xd[i];
            logits[t * E + e] = s;
        }
    }
    tu_free(xd);
    tu_free(wd);
}

double tu_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
