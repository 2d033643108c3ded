/*
 * miss-plan.h: the host-side decisions of the cuda backend's miss policy
 * (dmoe.h, dmoe_layer_set_miss_policy; run by src/cuda/cpu-misses.cu), in
 * plain C so the CPU tests check them (tests/test-miss-plan.c):
 *  - which experts of a batch lack a slot;
 *  - AUTO's rule: the CPU takes a forward's n missed experts when
 *    cpu_fixed + n * expert_bytes / cpu_gbs < n * expert_bytes / h2d_gbs;
 *  - the split of the (token, expert) pairs between the GPU and the CPU;
 *  - the hotness refresh: which experts to prefetch into the slots.
 */
#ifndef DMOE_MISS_PLAN_H
#define DMOE_MISS_PLAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Distinct experts e in [0, E) among the n ids with table[e] < 0 (no slot).
 * mark: (E) bytes, zero on entry and on return. */
int32_t dmoe__miss_count(const int32_t *ids, int64_t n, const int32_t *table, int32_t E, unsigned char *mark);

/* 1 when the CPU is the faster place for n missed experts of expert_bytes. */
int dmoe__miss_cpu_faster(double cpu_fixed_s, double cpu_gbs, double h2d_gbs, double expert_bytes, int32_t n);

/* Splits T tokens of K pairs (ids, w) given the slot table:
 *  - GPU part g_ids/g_w (T*K): a pair keeps its id and weight when its
 *    expert has a slot, its id is outside [0, E), or use_cpu is 0; otherwise
 *    id -1 and weight 0 (it adds nothing on the GPU);
 *  - CPU part: one row per token with at least one CPU pair, in token order,
 *    tok[r] = the token; c_ids/c_w (rows*K) hold its CPU pairs in place and,
 *    in the places of its other pairs, the id of its first CPU expert with
 *    weight 0 (valid ids for the cpu backend, adding nothing).
 * used[e] |= 1 when expert e (valid) has a GPU pair, 2 when a CPU pair (the
 * caller zeroes used). Returns the number of CPU rows; *cpu_pairs += the CPU
 * pairs. */
int32_t dmoe__miss_split(const int32_t *ids, const float *w, int64_t T, int32_t K, const int32_t *table,
                         int32_t E, int use_cpu, int32_t *g_ids, float *g_w, int32_t *c_ids, float *c_w,
                         int32_t *tok, unsigned char *used, uint64_t *cpu_pairs);

/* The refresh: the n_slots hottest experts (hot[e] > 0; ties to the lower
 * id), listed in that order, resident ones included (a prefetch evicts no
 * listed expert); a missing one is listed while an empty slot is left, or
 * while *budget_s covers cost_s (then *budget_s -= cost_s), else skipped.
 * order: (E) scratch. Writes list (<= n_slots ids) and *n_list; returns the
 * number of listed experts without a slot (the installs). */
int32_t dmoe__miss_refresh_list(const double *hot, const int32_t *table, int32_t E, int32_t n_slots,
                                double cost_s, double *budget_s, int32_t *order, int32_t *list,
                                int32_t *n_list);

#ifdef __cplusplus
}
#endif

#endif
