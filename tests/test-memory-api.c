/*
 * test-memory-api: the host side of the memory and expert-cache API. Host
 * contexts report all-zero pool statistics and accept a trim; every entry
 * point rejects NULL with DMOE_ERR_NULL_POINTER (outputs untouched); the
 * expert cache is refused by host backends with DMOE_ERR_UNSUPPORTED (its
 * argument checks on a cuda layer are in tests/gpu/test-cuda-expert-cache.c).
 */
#include <string.h>

#include "test-util.h"

int main(void) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 64;
    d.ffn = 32;
    d.n_experts = 8;
    d.top_k = 2;
    d.max_tokens = 4;
    tu_model m;
    tu_model_random(&m, &d, &rng);

    for (int b = 0; b < 2; b++) {
        const dmoe_backend be = b == 0 ? DMOE_BACKEND_CPU_REF : DMOE_BACKEND_CPU;
        tu_layer l;
        if (tu_layer_open(&l, be, 1, &m) != DMOE_OK) {
            TU_CHECK(0);
            continue;
        }
        dmoe_memory_stats ms;
        memset(&ms, 0x5a, sizeof ms);
        TU_CHECK_STATUS(l.ctx, dmoe_context_memory_stats(l.ctx, &ms), DMOE_OK);
        TU_CHECK(ms.bytes_in_use == 0 && ms.bytes_cached == 0 && ms.bytes_reserved == 0 &&
                 ms.peak_in_use == 0 && ms.n_allocs == 0 && ms.n_reused == 0 && ms.n_trims == 0 &&
                 ms.n_failures == 0);
        TU_CHECK_STATUS(l.ctx, dmoe_context_memory_stats(l.ctx, NULL), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_context_memory_stats(NULL, &ms), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(l.ctx, dmoe_context_trim_memory(l.ctx), DMOE_OK);
        TU_CHECK_STATUS(NULL, dmoe_context_trim_memory(NULL), DMOE_ERR_NULL_POINTER);

        TU_CHECK_STATUS(l.ctx, dmoe_layer_enable_expert_cache(l.layer, 2, 0), DMOE_ERR_UNSUPPORTED);
        int32_t ids[2] = {0, 1};
        TU_CHECK_STATUS(l.ctx, dmoe_layer_prefetch_experts(l.layer, ids, 2, NULL), DMOE_ERR_UNSUPPORTED);
        dmoe_expert_cache_stats cs;
        memset(&cs, 0x5a, sizeof cs);
        dmoe_expert_cache_stats before = cs;
        TU_CHECK_STATUS(l.ctx, dmoe_layer_expert_cache_stats(l.layer, &cs), DMOE_ERR_UNSUPPORTED);
        TU_CHECK(memcmp(&cs, &before, sizeof cs) == 0);
        int32_t table[8];
        TU_CHECK_STATUS(l.ctx, dmoe_layer_expert_cache_table(l.layer, table), DMOE_ERR_UNSUPPORTED);
        TU_CHECK_STATUS(NULL, dmoe_layer_enable_expert_cache(NULL, 2, 0), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_layer_prefetch_experts(NULL, ids, 2, NULL), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_layer_expert_cache_stats(NULL, &cs), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_layer_expert_cache_table(NULL, table), DMOE_ERR_NULL_POINTER);
        /* the miss policy needs an expert cache: host backends refuse, info untouched */
        TU_CHECK_STATUS(l.ctx, dmoe_layer_set_miss_policy(l.layer, DMOE_MISS_CPU, 0), DMOE_ERR_UNSUPPORTED);
        dmoe_miss_info mi, mi0;
        memset(&mi, 0x5a, sizeof mi);
        mi0 = mi;
        TU_CHECK_STATUS(l.ctx, dmoe_layer_miss_info(l.layer, &mi), DMOE_ERR_UNSUPPORTED);
        TU_CHECK(memcmp(&mi, &mi0, sizeof mi) == 0);
        TU_CHECK_STATUS(NULL, dmoe_layer_set_miss_policy(NULL, DMOE_MISS_CPU, 0), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_layer_miss_info(NULL, &mi), DMOE_ERR_NULL_POINTER);
        /* offloaded experts are a cuda feature: host backends refuse, with a message */
        TU_CHECK_STATUS(l.ctx, dmoe_layer_set_weights_offloaded(l.layer, &m.weights, 2), DMOE_ERR_UNSUPPORTED);
        TU_CHECK(strstr(dmoe_context_last_error(l.ctx), "cuda only") != NULL);
        TU_CHECK_STATUS(l.ctx, dmoe_layer_set_weights_offloaded(l.layer, NULL, 2), DMOE_ERR_NULL_POINTER);
        TU_CHECK_STATUS(NULL, dmoe_layer_set_weights_offloaded(NULL, &m.weights, 2), DMOE_ERR_NULL_POINTER);
        tu_layer_close(&l);
    }
    tu_model_free(&m);
    return tu_finish("test-memory-api");
}
