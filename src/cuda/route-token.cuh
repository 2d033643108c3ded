/*
 * route-token.cuh: the routing of one token by one warp, following dmoe.h's
 * rules (src/routing.c states them on the host). The staged router
 * (router.cu) and the fused kernel (fused-moe.cu) both call it on logits
 * summed in the same k-split order, so the two paths route bitwise alike.
 *
 * The caller fills s_score[e] with the token's logits (NaN -> -FLT_MAX, +-inf
 * clamped), entry e written by lane e % 32, and passes each lane's maximum of
 * its entries. Every E-long array here is owned that way: entry e is written
 * and read only by lane e % 32, except where a __syncwarp says otherwise.
 *
 * Selection (top-k of the choices, top groups of the group scores) runs in
 * rounds without shared-memory traffic between lanes: each lane keeps the
 * best of its own entries as an order-preserving integer key; a round is a
 * redux.sync max over the keys and a redux.sync min over the indices that
 * hold it (ties go to the lower index); the winning lane marks its entry NaN
 * and rescans only its own entries. No __syncwarp inside the rounds.
 */
#pragma once
#include <float.h>

#include "cuda-common.cuh"

#ifndef DMOE_ROUTE_MARK /* development: a timing hook (fused-moe.cu's FM_TRACE) */
#define DMOE_ROUTE_MARK(i)
#endif

typedef struct dmoe_route_rules {
    const float *bias; /* E correction biases added to the choice, or NULL */
    float scale;       /* routed_scaling_factor */
    int n_experts, top_k, n_group, topk_group;
    int softmax, renorm;
} dmoe_route_rules;

/* An order-preserving key of a float: larger float, larger key; every non-NaN
 * value maps above 0, NaN to 0; -0 and +0 share a key (as a float compare). */
static __device__ __forceinline__ uint32_t dmoe_route_key(float v) {
    if (v != v) return 0u;
    const uint32_t u = __float_as_uint(v + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The best of this lane's entries arr[lane + 32 i] (i ascending: the first of
 * equal keys stays). key 0 and idx -1 when every entry is NaN. */
static __device__ __forceinline__ void dmoe_route_lane_best(const float *arr, int n, uint32_t &key, int &idx) {
    key = 0u;
    idx = -1;
#pragma unroll 4
    for (int i = (int)(threadIdx.x & 31); i < n; i += 32) {
        const uint32_t k = dmoe_route_key(arr[i]);
        if (k > key) {
            key = k;
            idx = i;
        }
    }
}

/* Selects the k best non-NaN entries of arr[0..n) in order (highest value
 * first, the lower index on ties), marking each chosen entry NaN. Lane j
 * (j < 32, j < k) returns the index chosen in round j, or -1 when fewer than j+1
 * entries were not NaN; the other lanes return -1. */
static __device__ __forceinline__ int dmoe_route_select(float *arr, int n, int k) {
    const int lane = threadIdx.x & 31;
    const float nan = __int_as_float(0x7fc00000);
    uint32_t key;
    int idx;
    dmoe_route_lane_best(arr, n, key, idx);
    int mine = -1;
    for (int j = 0; j < k; j++) {
        const uint32_t kmax = __reduce_max_sync(0xffffffffu, key);
        if (kmax == 0u) break; /* nothing but NaN left */
        const int w = (int)__reduce_min_sync(0xffffffffu, key == kmax ? (uint32_t)idx : 0xffffffffu);
        if (lane == j) mine = w;
        if ((w & 31) == lane) {
            arr[w] = nan;
            dmoe_route_lane_best(arr, n, key, idx);
        }
    }
    return mine;
}

/* Routes one token: scores (softmax over all E, or sigmoid), choices (score +
 * bias), the group mask, the top-k and its weights. s_score / s_choice: E
 * floats, s_group: n_group floats (shared memory of this warp). On return lane
 * j < K holds the j-th expert in *id (-1 if none) and its weight in *w. */
static __device__ __forceinline__ void dmoe_route_topk(const dmoe_route_rules &r, float mx, float *s_score,
                                                       float *s_choice, float *s_group, int *id, float *w) {
    const int lane = threadIdx.x & 31, E = r.n_experts;
    const float nan = __int_as_float(0x7fc00000);
    DMOE_ROUTE_MARK(0);
    if (r.softmax) {
        mx = dmoe_warp_max(mx);
        float sum = 0.0f;
        for (int e = lane; e < E; e += 32) {
            const float s = expf(s_score[e] - mx);
            s_score[e] = s;
            sum += s;
        }
        sum = dmoe_warp_sum(sum);
        for (int e = lane; e < E; e += 32) s_score[e] = s_score[e] / sum;
    } else {
        for (int e = lane; e < E; e += 32) s_score[e] = 1.0f / (1.0f + expf(-s_score[e]));
    }
    for (int e = lane; e < E; e += 32) s_choice[e] = s_score[e] + (r.bias ? r.bias[e] : 0.0f);
    __syncwarp(); /* the weights below read any lane's scores; the groups any lane's choices */
    DMOE_ROUTE_MARK(1);
    if (r.n_group > 1) {
        const int G = r.n_group, per = E / G;
        for (int g = lane; g < G; g += 32) {
            float b1 = 0.0f, b2 = 0.0f;
            int n1 = 0, n2 = 0;
            for (int i = 0; i < per; i++) {
                const float v = s_choice[g * per + i];
                if (!n1 || v > b1) {
                    b2 = b1;
                    n2 = n1;
                    b1 = v;
                    n1 = 1;
                } else if (!n2 || v > b2) {
                    b2 = v;
                    n2 = 1;
                }
            }
            s_group[g] = per >= 2 ? b1 + b2 : b1;
        }
        (void)dmoe_route_select(s_group, G, r.topk_group); /* NaN marks a kept group */
        __syncwarp();
        for (int e = lane; e < E; e += 32) {
            const float gs = s_group[e / per];
            if (gs == gs) s_choice[e] = nan; /* expert of a dropped group */
        }
    }
    DMOE_ROUTE_MARK(2);
    const int mine = dmoe_route_select(s_choice, E, r.top_k);
    DMOE_ROUTE_MARK(3);
    const float my_w = mine >= 0 ? s_score[mine] : 0.0f;
    float sum = 0.0f;
    for (int k = 0; k < r.top_k; k++) sum += __shfl_sync(0xffffffffu, my_w, k);
    float wt = my_w;
    if (r.renorm && sum > 0.0f) wt = wt / sum;
    *id = mine;
    *w = wt * r.scale;
    DMOE_ROUTE_MARK(4);
}
