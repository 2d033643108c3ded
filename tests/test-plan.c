/*
 * test-plan: invariants of dmoe__plan_build, the stable grouping of
 * (token, k) pairs by expert that every backend's expert stage relies on.
 *
 * For random ids (and edge cases: T = 1, E = 1, one expert taking every
 * pair, most experts empty, repeated ids within a token as a caller of
 * dmoe_experts may pass them) it checks, against counts made here:
 *   counts[e] = #pairs with id e, so sum(counts) = T*K;
 *   offsets are the prefix sums of counts (offsets[0] = 0, offsets[E] = T*K);
 *   pairs[offsets[e] .. offsets[e+1]) hold exactly the pairs routed to e,
 *   in increasing pair index (stable);
 *   every pair index appears exactly once and slot_of[pairs[s]] = s.
 * Outputs are poisoned first, so an entry the plan forgets to write shows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmoe-impl.h"
#include "test-util.h"

enum { MODE_RANDOM, MODE_DISTINCT, MODE_ONE_EXPERT, MODE_FEW_EXPERTS, MODE_REPEATS };
static const char *const mode_names[] = {"random", "distinct per token", "one expert takes all",
                                         "most experts empty", "repeated ids in a token"};

static void check_plan(tu_rng *rng, int64_t T, int32_t K, int32_t E, int mode) {
    const int64_t P = T * K;
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)P);
    int32_t *counts = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)E);
    int64_t *offsets = (int64_t *)tu_malloc(sizeof(int64_t) * (size_t)(E + 1));
    int32_t *pairs = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)P);
    int32_t *slot_of = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)P);
    int32_t *want_counts = (int32_t *)calloc((size_t)E, sizeof(int32_t));
    unsigned char *seen = (unsigned char *)calloc((size_t)P, 1);
    const int32_t one = (int32_t)tu_rand_int(rng, 0, E - 1);
    const int32_t few = E < 3 ? E : 3;

    for (int64_t t = 0; t < T; t++) {
        for (int32_t k = 0; k < K; k++) {
            int32_t e;
            switch (mode) {
            case MODE_DISTINCT: /* a random K-subset, as routing produces */
                for (;;) {
                    e = (int32_t)tu_rand_int(rng, 0, E - 1);
                    int dup = 0;
                    for (int32_t j = 0; j < k; j++) dup |= ids[t * K + j] == e;
                    if (!dup) break;
                }
                break;
            case MODE_ONE_EXPERT: e = one; break;
            case MODE_FEW_EXPERTS: e = E - 1 - (int32_t)tu_rand_int(rng, 0, few - 1); break;
            case MODE_REPEATS: e = k > 0 && tu_rand_int(rng, 0, 1) ? ids[t * K + k - 1]
                                                                     : (int32_t)tu_rand_int(rng, 0, E - 1);
                break;
            default: e = (int32_t)tu_rand_int(rng, 0, E - 1); break;
            }
            ids[t * K + k] = e;
            want_counts[e]++;
        }
    }
    memset(counts, 0x5a, sizeof(int32_t) * (size_t)E);
    memset(offsets, 0x5a, sizeof(int64_t) * (size_t)(E + 1));
    memset(pairs, 0xff, sizeof(int32_t) * (size_t)P);
    memset(slot_of, 0xff, sizeof(int32_t) * (size_t)P);

    dmoe__plan_build(ids, T, K, E, counts, offsets, pairs, slot_of);

    int failed_before = tu_n_failed;
    int64_t sum = 0;
    for (int32_t e = 0; e < E; e++) {
        TU_CHECKF(counts[e] == want_counts[e], "counts[%d] = %d, expected %d", (int)e,
                  (int)counts[e], (int)want_counts[e]);
        sum += counts[e];
    }
    TU_CHECKF(sum == P, "counts sum to %lld, expected T*K = %lld", (long long)sum, (long long)P);
    TU_CHECKF(offsets[0] == 0, "offsets[0] = %lld", (long long)offsets[0]);
    for (int32_t e = 0; e < E; e++)
        TU_CHECKF(offsets[e + 1] == offsets[e] + want_counts[e],
                  "offsets[%d] = %lld, expected offsets[%d] + counts = %lld", (int)(e + 1),
                  (long long)offsets[e + 1], (int)e, (long long)(offsets[e] + want_counts[e]));
    TU_CHECKF(offsets[E] == P, "offsets[E] = %lld, expected %lld", (long long)offsets[E],
              (long long)P);
    for (int32_t e = 0; e < E && tu_n_failed == failed_before; e++) {
        for (int64_t s = offsets[e]; s < offsets[e + 1]; s++) {
            int32_t p = pairs[s];
            if (p < 0 || p >= P) {
                TU_CHECKF(0, "pairs[%lld] = %d is not a pair index", (long long)s, (int)p);
                continue;
            }
            TU_CHECKF(ids[p] == e, "pairs[%lld] = %d has expert %d but lies in expert %d's segment",
                      (long long)s, (int)p, (int)ids[p], (int)e);
            TU_CHECKF(s == offsets[e] || pairs[s - 1] < p,
                      "expert %d's segment is not in pair order at slot %lld (%d after %d)", (int)e,
                      (long long)s, (int)p, (int)pairs[s - 1]);
            TU_CHECKF(!seen[p], "pair %d appears twice", (int)p);
            seen[p] = 1;
            TU_CHECKF(slot_of[p] == s, "slot_of[%d] = %d, expected %lld", (int)p, (int)slot_of[p],
                      (long long)s);
        }
    }
    for (int64_t p = 0; p < P && tu_n_failed == failed_before; p++)
        TU_CHECKF(seen[p], "pair %lld is missing from the plan", (long long)p);
    if (tu_n_failed != failed_before)
        fprintf(stderr, "  (in T=%lld K=%d E=%d, ids %s)\n", (long long)T, (int)K, (int)E,
                mode_names[mode]);

    tu_free(ids);
    tu_free(counts);
    tu_free(offsets);
    tu_free(pairs);
    tu_free(slot_of);
    free(want_counts);
    free(seen);
}

int main(void) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    static const int64_t Ts[] = {1, 2, 7, 33, 512, 4099};
    static const int32_t Es[] = {1, 2, 3, 8, 60, 256};
    static const int32_t Ks[] = {1, 2, 6, 8};
    int n = 0;
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t ei = 0; ei < sizeof Es / sizeof Es[0]; ei++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
                for (int mode = 0; mode <= MODE_REPEATS; mode++) {
                    if (mode == MODE_DISTINCT && Ks[ki] > Es[ei]) continue;
                    check_plan(&rng, Ts[ti], Ks[ki], Es[ei], mode);
                    n++;
                }
    /* The largest shapes a layer allows in one dimension at a time. */
    check_plan(&rng, 1, 1, DMOE_MAX_EXPERTS, MODE_RANDOM);
    check_plan(&rng, 3, 64, DMOE_MAX_EXPERTS, MODE_DISTINCT);
    check_plan(&rng, 100000, 8, 256, MODE_DISTINCT);
    printf("  %d plans checked\n", n + 3);
    return tu_finish("test-plan");
}
