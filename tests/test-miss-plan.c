/*
 * test-miss-plan: the host decisions of the cuda miss policy (src/miss-plan.c,
 * used by src/cuda/cpu-misses.cu), checked on the CPU:
 *  - count: distinct experts without a slot, ids outside [0, E) ignored, the
 *    scratch left zero;
 *  - split: on random routings (repeated and out-of-range ids included) and
 *    random slot tables, every pair lands on exactly one side with its weight,
 *    the other side holds weight 0 for it, GPU-side ids are the caller's or -1,
 *    CPU rows are the tokens with a CPU pair in token order, filler entries name
 *    a CPU expert of the same token, the used flags and the CPU pair count
 *    match; with use_cpu = 0 nothing goes to the CPU;
 *  - AUTO's rule on hand-computed cases;
 *  - refresh: listed experts are the hottest (ties to the lower id), at most
 *    n_slots, never cold ones, resident ones included, installs limited by the
 *    empty slots and the budget, the budget charged exactly.
 * Outputs are poisoned first.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "miss-plan.h"
#include "test-util.h"

static void test_count(tu_rng *rng) {
    const int32_t E = 40;
    int32_t table[40], ids[64];
    unsigned char mark[40] = {0};
    for (int it = 0; it < 200; it++) {
        for (int e = 0; e < E; e++) table[e] = tu_rand_unit(rng) < 0.4 ? (int32_t)tu_rand_int(rng, 0, 9) : -1;
        const int n = (int)tu_rand_int(rng, 1, 64);
        for (int p = 0; p < n; p++) ids[p] = (int32_t)tu_rand_int(rng, -3, E + 2);
        int want = 0;
        unsigned char seen[48] = {0};
        for (int p = 0; p < n; p++)
            if (ids[p] >= 0 && ids[p] < E && table[ids[p]] < 0 && !seen[ids[p]]) {
                seen[ids[p]] = 1;
                want++;
            }
        const int32_t got = dmoe__miss_count(ids, n, table, E, mark);
        TU_CHECKF(got == want, "count: %d, expected %d", (int)got, want);
        int dirty = 0;
        for (int e = 0; e < E; e++) dirty |= mark[e];
        TU_CHECKF(!dirty, "count: scratch not zero on return (iteration %d)", it);
    }
}

static void test_split(tu_rng *rng) {
    enum { TMAX = 16, KMAX = 8 };
    int32_t ids[TMAX * KMAX], g_ids[TMAX * KMAX], c_ids[TMAX * KMAX], tok[TMAX], table[64];
    float w[TMAX * KMAX], g_w[TMAX * KMAX], c_w[TMAX * KMAX];
    unsigned char used[64];
    int bad = 0;
    for (int it = 0; it < 2000 && !bad; it++) {
        const int32_t E = (int32_t)tu_rand_int(rng, 1, 64), K = (int32_t)tu_rand_int(rng, 1, KMAX);
        const int64_t T = tu_rand_int(rng, 1, TMAX);
        const int use_cpu = it % 5 != 0;
        const double p_res = tu_rand_unit(rng);
        for (int e = 0; e < E; e++) table[e] = tu_rand_unit(rng) < p_res ? e % 7 : -1;
        for (int64_t p = 0; p < T * K; p++) {
            const double u = tu_rand_unit(rng);
            ids[p] = u < 0.05 ? (u < 0.025 ? -1 : E + 3) : (int32_t)tu_rand_int(rng, 0, E - 1); /* repeats happen */
            w[p] = (float)tu_rand_range(rng, 0.01, 1.0);
        }
        for (int i = 0; i < TMAX * KMAX; i++) {
            g_ids[i] = c_ids[i] = 0x7fff0000;
            g_w[i] = c_w[i] = NAN;
        }
        for (int i = 0; i < TMAX; i++) tok[i] = -7;
        memset(used, 0, sizeof used);
        uint64_t cpu_pairs = 5;
        const int32_t rows = dmoe__miss_split(ids, w, T, K, table, E, use_cpu, g_ids, g_w, c_ids, c_w, tok, used,
                                              &cpu_pairs);
        /* the expected sides, written plainly */
        uint64_t want_pairs = 0;
        unsigned char want_used[64] = {0};
        int32_t r = 0;
        for (int64_t t = 0; t < T && !bad; t++) {
            int has_cpu = 0, first = -1;
            for (int32_t k = 0; k < K; k++) {
                const int32_t e = ids[t * K + k];
                const int valid = e >= 0 && e < E;
                const int cpu = use_cpu && valid && table[e] < 0;
                if (valid) want_used[e] |= cpu ? 2 : 1;
                if (cpu) {
                    want_pairs++;
                    if (first < 0) first = e;
                    has_cpu = 1;
                }
                const int32_t gi = g_ids[t * K + k];
                const float gw = g_w[t * K + k];
                if (cpu ? (gi != -1 || gw != 0.0f) : (gi != e || gw != w[t * K + k])) {
                    printf("  split it %d: GPU side of pair (%lld,%d) id %d w %g (caller %d %g, cpu %d)\n", it,
                           (long long)t, (int)k, (int)gi, (double)gw, (int)e, (double)w[t * K + k], cpu);
                    bad = 1;
                }
            }
            if (!has_cpu) continue;
            if (r >= rows || tok[r] != t) {
                printf("  split it %d: CPU row %d should be token %lld (rows %d)\n", it, (int)r, (long long)t,
                       (int)rows);
                bad = 1;
                break;
            }
            for (int32_t k = 0; k < K; k++) {
                const int32_t e = ids[t * K + k];
                const int cpu = e >= 0 && e < E && table[e] < 0;
                const int32_t ci = c_ids[(int64_t)r * K + k];
                const float cw = c_w[(int64_t)r * K + k];
                if (cpu ? (ci != e || cw != w[t * K + k]) : (ci != first || cw != 0.0f)) {
                    printf("  split it %d: CPU row %d entry %d id %d w %g (caller %d, cpu %d, first %d)\n", it,
                           (int)r, (int)k, (int)ci, (double)cw, (int)e, cpu, first);
                    bad = 1;
                }
            }
            r++;
        }
        if (!bad && r != rows) {
            printf("  split it %d: %d CPU rows, expected %d\n", it, (int)rows, (int)r);
            bad = 1;
        }
        if (!bad && cpu_pairs != 5 + want_pairs) {
            printf("  split it %d: cpu pairs +%llu, expected +%llu\n", it, (unsigned long long)(cpu_pairs - 5),
                   (unsigned long long)want_pairs);
            bad = 1;
        }
        if (!bad && memcmp(used, want_used, (size_t)E) != 0) {
            printf("  split it %d: used flags differ\n", it);
            bad = 1;
        }
        if (!bad && !use_cpu && rows != 0) bad = 1;
    }
    TU_CHECKF(!bad, "split: see above");
}

static void test_cpu_faster(void) {
    /* 10 MB experts, PCIe 50 GB/s: 200 us each; CPU 100 GB/s + 1 ms fixed: 1100 us for 1, 1500 for 5, 2000 for 10 */
    const double eb = 10e6;
    TU_CHECK(!dmoe__miss_cpu_faster(1e-3, 100.0, 50.0, eb, 1));  /* 1100 us vs 200 us */
    TU_CHECK(!dmoe__miss_cpu_faster(1e-3, 100.0, 50.0, eb, 10)); /* 2000 vs 2000: not faster */
    TU_CHECK(dmoe__miss_cpu_faster(1e-3, 100.0, 50.0, eb, 11));  /* 2100 vs 2200 */
    TU_CHECK(!dmoe__miss_cpu_faster(0.0, 40.0, 50.0, eb, 32));   /* slower per byte, never */
    TU_CHECK(dmoe__miss_cpu_faster(0.0, 60.0, 50.0, eb, 1));
    TU_CHECK(!dmoe__miss_cpu_faster(0.0, 60.0, 50.0, eb, 0));    /* nothing missed */
    TU_CHECK(!dmoe__miss_cpu_faster(0.0, 0.0, 50.0, eb, 4));     /* no CPU measurement */
}

static void test_refresh(tu_rng *rng) {
    enum { EMAX = 64 };
    double hot[EMAX];
    int32_t table[EMAX], order[EMAX], list[EMAX];
    int bad = 0;
    /* by hand: E=6, 2 slots holding experts 4 and 5; hot 0:3 1:5 2:0 3:5 4:1 5:9 */
    {
        const double h[6] = {3, 5, 0, 5, 1, 9};
        const int32_t tb[6] = {-1, -1, -1, -1, 0, 1};
        double budget = 1.0;
        int32_t n = -1;
        /* hottest two: 5 (resident), then 1 (tie with 3, lower id): one install paid from the budget */
        int32_t inst = dmoe__miss_refresh_list(h, tb, 6, 2, 0.75, &budget, order, list, &n);
        TU_CHECKF(inst == 1 && n == 2 && list[0] == 5 && list[1] == 1 && fabs(budget - 0.25) < 1e-12,
                  "refresh by hand: installs %d, list %d [%d %d], budget %g", (int)inst, (int)n, (int)list[0],
                  (int)list[1], budget);
        /* no budget: the resident hot one is still listed, nothing installed */
        budget = 0.5;
        inst = dmoe__miss_refresh_list(h, tb, 6, 2, 0.75, &budget, order, list, &n);
        TU_CHECKF(inst == 0 && n == 1 && list[0] == 5 && budget == 0.5, "refresh without budget: %d %d", (int)inst,
                  (int)n);
        /* an empty slot is free */
        const int32_t tb2[6] = {-1, -1, -1, -1, -1, 1};
        budget = 0.0;
        inst = dmoe__miss_refresh_list(h, tb2, 6, 2, 0.75, &budget, order, list, &n);
        TU_CHECKF(inst == 1 && n == 2 && list[1] == 1 && budget == 0.0, "refresh into an empty slot: %d %d", (int)inst,
                  (int)n);
    }
    for (int it = 0; it < 2000 && !bad; it++) {
        const int32_t E = (int32_t)tu_rand_int(rng, 1, EMAX), n_slots = (int32_t)tu_rand_int(rng, 1, E);
        /* a random table with at most n_slots residents */
        int32_t res = 0;
        for (int e = 0; e < E; e++) {
            table[e] = (res < n_slots && tu_rand_unit(rng) < 0.5) ? res : -1;
            res += table[e] >= 0;
        }
        for (int e = 0; e < E; e++) hot[e] = tu_rand_unit(rng) < 0.3 ? 0.0 : (double)tu_rand_int(rng, 1, 6) * 0.5;
        const double cost = 1.0;
        double budget = (double)tu_rand_int(rng, 0, 4), b0 = budget;
        for (int i = 0; i < EMAX; i++) list[i] = -9;
        int32_t n = -1;
        const int32_t inst = dmoe__miss_refresh_list(hot, table, E, n_slots, cost, &budget, order, list, &n);
        /* reference: the n_slots first of the hot experts by (hot desc, id asc) */
        int32_t ref[EMAX], nr = 0;
        unsigned char taken[EMAX] = {0};
        for (int i = 0; i < n_slots; i++) {
            int best = -1;
            for (int e = 0; e < E; e++)
                if (!taken[e] && hot[e] > 0.0 && (best < 0 || hot[e] > hot[best])) best = e;
            if (best < 0) break;
            taken[best] = 1;
            ref[nr++] = best;
        }
        int32_t empty = n_slots - res, j = 0, want_inst = 0;
        double want_budget = b0;
        for (int i = 0; i < nr && !bad; i++) {
            const int32_t e = ref[i];
            if (table[e] < 0) {
                if (empty > 0) empty--;
                else if (want_budget >= cost) want_budget -= cost;
                else continue;
                want_inst++;
            }
            if (j >= n || list[j] != e) bad = 1;
            j++;
        }
        if (bad || j != n || inst != want_inst || budget != want_budget || n > n_slots) {
            printf("  refresh it %d: E %d slots %d: list %d (want %d), installs %d (want %d), budget %g (want %g)\n",
                   it, (int)E, (int)n_slots, (int)n, (int)j, (int)inst, (int)want_inst, budget, want_budget);
            bad = 1;
        }
    }
    TU_CHECKF(!bad, "refresh: see above");
}

int main(void) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    test_count(&rng);
    test_split(&rng);
    test_cpu_faster();
    test_refresh(&rng);
    return tu_finish("test-miss-plan");
}
