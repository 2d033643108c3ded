/*
 * plan.c: groups the (token, k) pairs by expert in a stable order, the
 * host version of the device plan: counting sort over expert ids.
 *   counts (E), offsets (E+1), pairs (T*K): pair index t*K+k sorted by
 *   (expert, t*K+k); slot_of (T*K): slot_of[pairs[s]] = s.
 * Ids outside [0, E) must have been rejected before.
 */
#include "dmoe-impl.h"

void dmoe__plan_build(const int32_t *topk_ids, int64_t n_tokens, int32_t top_k, int32_t n_experts,
                      int32_t *counts, int64_t *offsets, int32_t *pairs, int32_t *slot_of) {
    const int64_t n_pairs = n_tokens * top_k;
    memset(counts, 0, sizeof(int32_t) * (size_t)n_experts);
    for (int64_t p = 0; p < n_pairs; p++) {
        int32_t e = topk_ids[p];
        DMOE_ASSERT(e >= 0 && e < n_experts);
        counts[e]++;
    }
    offsets[0] = 0;
    for (int32_t e = 0; e < n_experts; e++) offsets[e + 1] = offsets[e] + counts[e];
    /* Fill in pair order: stable by construction. offsets[e] is reused as a
     * cursor and restored afterwards. */
    for (int64_t p = 0; p < n_pairs; p++) {
        int32_t e = topk_ids[p];
        int64_t s = offsets[e]++;
        pairs[s] = (int32_t)p;
        slot_of[p] = (int32_t)s;
    }
    for (int32_t e = n_experts; e > 0; e--) offsets[e] = offsets[e - 1];
    offsets[0] = 0;
}
