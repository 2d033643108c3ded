/* miss-plan.c: see miss-plan.h. */
#include "miss-plan.h"

#include <string.h>

int32_t dmoe__miss_count(const int32_t *ids, int64_t n, const int32_t *table, int32_t E, unsigned char *mark) {
    int32_t n_miss = 0;
    for (int64_t p = 0; p < n; p++) {
        const int32_t e = ids[p];
        if (e >= 0 && e < E && table[e] < 0 && !mark[e]) {
            mark[e] = 1;
            n_miss++;
        }
    }
    for (int64_t p = 0; p < n; p++)
        if (ids[p] >= 0 && ids[p] < E) mark[ids[p]] = 0;
    return n_miss;
}

int dmoe__miss_cpu_faster(double cpu_fixed_s, double cpu_gbs, double h2d_gbs, double expert_bytes, int32_t n) {
    if (n <= 0 || cpu_gbs <= 0.0) return 0;
    if (h2d_gbs <= 0.0) return 1;
    const double bytes = (double)n * expert_bytes;
    return cpu_fixed_s + bytes / (cpu_gbs * 1e9) < bytes / (h2d_gbs * 1e9);
}

int32_t dmoe__miss_split(const int32_t *ids, const float *w, int64_t T, int32_t K, const int32_t *table,
                         int32_t E, int use_cpu, int32_t *g_ids, float *g_w, int32_t *c_ids, float *c_w,
                         int32_t *tok, unsigned char *used, uint64_t *cpu_pairs) {
    int32_t rows = 0;
    for (int64_t t = 0; t < T; t++) {
        const int32_t *ti = ids + t * K;
        const float *tw = w + t * K;
        int32_t first_cpu = -1;
        for (int32_t k = 0; k < K; k++) {
            const int32_t e = ti[k];
            const int valid = e >= 0 && e < E;
            const int on_cpu = use_cpu && valid && table[e] < 0;
            g_ids[t * K + k] = on_cpu ? -1 : e;
            g_w[t * K + k] = on_cpu ? 0.0f : tw[k];
            if (valid) used[e] |= on_cpu ? 2 : 1;
            if (on_cpu && first_cpu < 0) first_cpu = e;
        }
        if (first_cpu < 0) continue;
        for (int32_t k = 0; k < K; k++) {
            const int32_t e = ti[k];
            const int on_cpu = e >= 0 && e < E && table[e] < 0; /* use_cpu holds here */
            c_ids[(int64_t)rows * K + k] = on_cpu ? e : first_cpu;
            c_w[(int64_t)rows * K + k] = on_cpu ? tw[k] : 0.0f;
            *cpu_pairs += (uint64_t)on_cpu;
        }
        tok[rows++] = (int32_t)t;
    }
    return rows;
}

int32_t dmoe__miss_refresh_list(const double *hot, const int32_t *table, int32_t E, int32_t n_slots,
                                double cost_s, double *budget_s, int32_t *order, int32_t *list,
                                int32_t *n_list) {
    int32_t n_res = 0;
    for (int32_t e = 0; e < E; e++) {
        order[e] = e;
        n_res += table[e] >= 0;
    }
    /* by hotness, descending, ties to the lower id (insertion sort: stable; E <= 1024) */
    for (int32_t i = 1; i < E; i++) {
        const int32_t e = order[i];
        int32_t j = i;
        while (j > 0 && hot[order[j - 1]] < hot[e]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = e;
    }
    int32_t n = 0, n_inst = 0, empty = n_slots - n_res;
    for (int32_t i = 0; i < n_slots && i < E; i++) {
        const int32_t e = order[i];
        if (!(hot[e] > 0.0)) break;
        if (table[e] < 0) {
            if (empty > 0) {
                empty--;
            } else if (*budget_s >= cost_s) {
                *budget_s -= cost_s;
            } else {
                continue;
            }
            n_inst++;
        }
        list[n++] = e;
    }
    *n_list = n;
    return n_inst;
}
