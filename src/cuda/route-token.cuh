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
 * best two of its own entries as order-preserving integer keys; a round is a
 * redux.sync max over the best keys and a redux.sync min over the indices
 * that hold it (ties go to the lower index); the winning lane marks its entry
 * NaN and moves its second best up (rescanning its own entries only when it
 * wins twice in a row). No __syncwarp inside the rounds.
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

/* The router's split partials summed in split order (s = 0, 1, ... from 0.0f:
 * both paths sum them so), for up to 4 elements at once: v[q] = sum over s of
 * base[s * sstride + first + q * step], for first + q * step < limit (the
 * others 0). 4 x 8 loads in flight instead of one L2 round trip per split. */
static __device__ __forceinline__ void dmoe_route_split_sums4(const float *base, size_t sstride, int first, int step,
                                                              int limit, int nsplit, float v[4]) {
#pragma unroll
    for (int q = 0; q < 4; q++) v[q] = 0.0f;
    for (int s0 = 0; s0 < nsplit; s0 += 8) {
        float pv[4][8];
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int i = first + q * step, s = s0 + u;
                pv[q][u] = i < limit && s < nsplit ? __ldcg(base + (size_t)s * sstride + i) : 0.0f;
            }
#pragma unroll
        for (int q = 0; q < 4; q++)
#pragma unroll
            for (int u = 0; u < 8; u++)
                if (s0 + u < nsplit) v[q] += pv[q][u];
    }
}

/* A logit as the routing takes it: NaN -> -FLT_MAX, +-inf clamped to +-FLT_MAX. */
static __device__ __forceinline__ float dmoe_route_clamp_logit(float v) {
    return (v != v) ? -FLT_MAX : fminf(fmaxf(v, -FLT_MAX), FLT_MAX);
}

/* An order-preserving key of a float: larger float, larger key; every non-NaN
 * value maps above 0, NaN to 0; -0 and +0 share a key (as a float compare). */
static __device__ __forceinline__ uint32_t dmoe_route_key(float v) {
    if (v != v) return 0u;
    const uint32_t u = __float_as_uint(v + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The best and the second best of this lane's entries arr[lane + 32 i] in the
 * selection order (higher key first; i ascending, so the first of equal keys
 * ranks first). Key 0 and index -1 where there is none. */
static __device__ __forceinline__ void dmoe_route_lane_best2(const float *arr, int n, uint32_t &k1, int &i1,
                                                             uint32_t &k2, int &i2) {
    k1 = k2 = 0u;
    i1 = i2 = -1;
#pragma unroll 4
    for (int i = (int)(threadIdx.x & 31); i < n; i += 32) {
        const uint32_t k = dmoe_route_key(arr[i]);
        if (k > k1) {
            k2 = k1;
            i2 = i1;
            k1 = k;
            i1 = i;
        } else if (k > k2) {
            k2 = k;
            i2 = i;
        }
    }
}

/* No-op pick hook (see dmoe_route_select). */
struct dmoe_route_no_hook {
    __device__ __forceinline__ void operator()(int, int) const {}
};

/* Selects the k best non-NaN entries of arr[0..n) in order (highest value
 * first, the lower index on ties), marking each chosen entry NaN. Lane j
 * (j < 32, j < k) returns the index chosen in round j, or -1 when fewer than j+1
 * entries were not NaN; the other lanes return -1. A round is two redux.sync;
 * the winning lane moves its second best up and rescans its entries only when
 * it wins again before having rescanned. hook(j, index) runs on every lane as
 * soon as round j has chosen (the fused kernel starts a prefetch there). */
template <typename Hook = dmoe_route_no_hook>
static __device__ __forceinline__ int dmoe_route_select(float *arr, int n, int k, const Hook &hook = Hook()) {
    const int lane = threadIdx.x & 31;
    const float nan = __int_as_float(0x7fc00000);
    uint32_t k1, k2;
    int i1, i2;
    dmoe_route_lane_best2(arr, n, k1, i1, k2, i2);
    bool have2 = true; /* (k2, i2) is this lane's second best */
    int mine = -1;
    for (int j = 0; j < k; j++) {
        const uint32_t kmax = __reduce_max_sync(0xffffffffu, k1);
        if (kmax == 0u) break; /* nothing but NaN left */
        const int w = (int)__reduce_min_sync(0xffffffffu, k1 == kmax ? (uint32_t)i1 : 0xffffffffu);
        if (lane == j) mine = w;
        hook(j, w);
        if ((w & 31) == lane) {
            arr[w] = nan;
            if (have2) {
                k1 = k2;
                i1 = i2;
                have2 = false;
            } else {
                dmoe_route_lane_best2(arr, n, k1, i1, k2, i2);
                have2 = true;
            }
        }
    }
    return mine;
}

/* Scores (softmax over all E, or sigmoid), choices (score + bias) and the
 * group mask (experts of dropped groups get a NaN choice) of one token.
 * s_score / s_choice: E floats, s_group: n_group floats (shared memory of this
 * warp). Ends with every lane's entries written (__syncwarp'd for the group
 * step; the caller syncs before other lanes or warps read the choices). */
static __device__ __forceinline__ void dmoe_route_choices(const dmoe_route_rules &r, float mx, float *s_score,
                                                          float *s_choice, float *s_group) {
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
    /* a bias is taken like a logit (NaN -> -FLT_MAX, +-inf clamped), so no choice is NaN: a NaN
     * choice would read as already picked and leave a token with fewer than K experts */
    for (int e = lane; e < E; e += 32)
        s_choice[e] = s_score[e] + (r.bias ? dmoe_route_clamp_logit(r.bias[e]) : 0.0f);
    __syncwarp(); /* the weights read any lane's scores; the groups any lane's choices */
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
}

/* The weight of the expert `mine` that lane j < K chose in round j (-1: none):
 * its score, renormalised over the K chosen (summed in k order) when asked,
 * then scaled. Every lane of the warp takes part. */
static __device__ __forceinline__ float dmoe_route_weight(const dmoe_route_rules &r, int mine, const float *s_score) {
    const float my_w = mine >= 0 ? s_score[mine] : 0.0f;
    float sum = 0.0f;
    for (int k = 0; k < r.top_k; k++) sum += __shfl_sync(0xffffffffu, my_w, k);
    float wt = my_w;
    if (r.renorm && sum > 0.0f) wt = wt / sum;
    return wt * r.scale;
}

/* Routes one token with one warp: choices, the top-k in rounds, the weights.
 * On return lane j < K holds the j-th expert in *id (-1 if none) and its
 * weight in *w. hook: see dmoe_route_select. */
template <typename Hook = dmoe_route_no_hook>
static __device__ __forceinline__ void dmoe_route_topk(const dmoe_route_rules &r, float mx, float *s_score,
                                                       float *s_choice, float *s_group, int *id, float *w,
                                                       const Hook &hook = Hook()) {
    dmoe_route_choices(r, mx, s_score, s_choice, s_group);
    const int mine = dmoe_route_select(s_choice, r.n_experts, r.top_k, hook);
    DMOE_ROUTE_MARK(3);
    *id = mine;
    *w = dmoe_route_weight(r, mine, s_score);
    DMOE_ROUTE_MARK(4);
}
