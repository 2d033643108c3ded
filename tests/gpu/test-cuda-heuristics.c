/*
 * test-cuda-heuristics: the grouped-GEMM choice of the staged path
 * (src/cuda/heuristics.cu), host code only, so it runs without a GPU (CI):
 *  - up to 64 rows an expert on sm_90: swap-AB with 16..64 rows an item, or
 *    the streaming kernels when the launch has too few items (T = 1);
 *  - 64 < rows <= 128 on sm_90: the 128x256-tile kernels, unless their tiles
 *    fill the last wave badly (a granite-3b-like layer at T = 256: 160 GEMM1
 *    tiles on 132 SMs), then swap-AB with 64 rows an item;
 *  - more rows: the 128x256 tiles whatever the fill;
 *  - without sm_90: streaming up to 64 rows, mma.sync above;
 *  - a forced kind stays forced.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda/gemm.h"
#include "cuda/heuristics.h"
#include "cuda/sm90-grouped-gemm.h"
#include "test-util.h"

/* GEMM1's arguments of a layer (H, F, E, K) at T tokens on a device of 132 SMs. */
static dmoe_cuda_grouped_args args(int64_t H, int64_t F, int E, int K, int64_t T) {
    dmoe_cuda_grouped_args a;
    memset(&a, 0, sizeof a);
    a.n_rows = T * K;
    a.n_tokens = T;
    a.top_k = K;
    a.n_experts = E;
    a.k_dim = H;
    a.n_dim = F;
    a.dtype = DMOE_DTYPE_BF16;
    a.num_sms = 132;
    return a;
}

static void expect(const char *what, int64_t H, int64_t F, int E, int K, int64_t T, int cc_major,
                   dmoe_cuda_gemm_kind forced, dmoe_cuda_gemm_kind want, int want_tile,
                   dmoe_cuda_gemm1_fn want_g1, dmoe_cuda_gemm2_fn want_g2) {
    dmoe_cuda_grouped_args a = args(H, F, E, K, T);
    const dmoe_cuda_gemm_choice c = dmoe__cuda_choose_gemm(forced, &a, cc_major, 0);
    const int ok = c.kind == want && (want_tile == 0 || c.tile == want_tile) && (!want_g1 || c.gemm1 == want_g1) &&
                   (!want_g2 || c.gemm2 == want_g2);
    printf("  %-44s rows~%-4lld -> %-6s tile %-3d (want %s tile %d)%s\n", what,
           (long long)dmoe__cuda_rows_estimate(&a), dmoe__cuda_gemm_kind_name(c.kind), (int)c.tile,
           dmoe__cuda_gemm_kind_name(want), want_tile, ok ? "" : "  <-- FAIL");
    TU_CHECK(ok);
}

int main(void) {
    const dmoe_cuda_gemm_kind AUTO = DMOE_CUDA_GEMM_AUTO;
    /* the development overrides would change the answers (read once, so before the first call) */
    unsetenv("DMOE_CUDA_SWAP_N");
    unsetenv("DMOE_CUDA_GEMM");
    if (dmoe__cuda_sm90_available(9, 0)) {
        printf("sm_90:\n");
        expect("qwen3-30b-a3b T=1: few items -> stream", 2048, 768, 128, 8, 1, 9, AUTO, DMOE_CUDA_GEMM_STREAM, 0, NULL, NULL);
        expect("qwen3-30b-a3b T=128: swap, <= 64 rows an item", 2048, 768, 128, 8, 128, 9, AUTO,
               DMOE_CUDA_GEMM_SWAP, 0, dmoe__cuda_gemm1_sm90_swap, dmoe__cuda_gemm2_sm90_swap);
        expect("granite-3b-like T=256: fill 0.71 -> swap64", 1536, 512, 40, 8, 256, 9, AUTO, DMOE_CUDA_GEMM_SWAP, 64,
               dmoe__cuda_gemm1_sm90_swap64, dmoe__cuda_gemm2_sm90_swap64);
        expect("granite-3b-like T=384: fill 0.71 -> swap64", 1536, 512, 40, 8, 384, 9, AUTO, DMOE_CUDA_GEMM_SWAP, 64,
               dmoe__cuda_gemm1_sm90_swap64, dmoe__cuda_gemm2_sm90_swap64);
        expect("granite-3b-like T=1024: > 128 rows -> 128x256", 1536, 512, 40, 8, 1024, 9, AUTO,
               DMOE_CUDA_GEMM_SM90, 0, dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        expect("gpt-oss-20b-like T=512: fill 0.94 -> 128x256", 2880, 2880, 32, 4, 512, 9, AUTO,
               DMOE_CUDA_GEMM_SM90, 0, dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        expect("olmoe-1b-7b T=512: fill 0.97 -> 128x256", 2048, 1024, 64, 8, 512, 9, AUTO, DMOE_CUDA_GEMM_SM90, 0,
               dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        expect("dsv2-lite-like T=1024: fill 0.92 -> 128x256", 2048, 1408, 64, 6, 1024, 9, AUTO,
               DMOE_CUDA_GEMM_SM90, 0, dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        expect("forced sm90 at T=256 granite stays sm90", 1536, 512, 40, 8, 256, 9, DMOE_CUDA_GEMM_SM90,
               DMOE_CUDA_GEMM_SM90, 0, dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        /* the boundary: 128 rows (T = 486 here) take the rule, 129 (T = 487) the 128x256 tiles */
        expect("granite-3b-like T=486: 128 rows, fill 0.71 -> swap64", 1536, 512, 40, 8, 486, 9, AUTO,
               DMOE_CUDA_GEMM_SWAP, 64, dmoe__cuda_gemm1_sm90_swap64, dmoe__cuda_gemm2_sm90_swap64);
        expect("granite-3b-like T=487: 129 rows -> 128x256", 1536, 512, 40, 8, 487, 9, AUTO, DMOE_CUDA_GEMM_SM90, 0,
               dmoe__cuda_gemm1_sm90, dmoe__cuda_gemm2_sm90);
        expect("forced swap at T=1024 granite: plain swap", 1536, 512, 40, 8, 1024, 9, DMOE_CUDA_GEMM_SWAP,
               DMOE_CUDA_GEMM_SWAP, 128, dmoe__cuda_gemm1_sm90_swap, dmoe__cuda_gemm2_sm90_swap);
    } else {
        printf("sm_90 kernels not built: their cases skipped\n");
    }
    printf("sm_80:\n");
    expect("granite-3b-like T=256 -> mma", 1536, 512, 40, 8, 256, 8, AUTO, DMOE_CUDA_GEMM_MMA, 128, NULL, NULL);
    expect("qwen3-30b-a3b T=128 -> stream", 2048, 768, 128, 8, 128, 8, AUTO, DMOE_CUDA_GEMM_STREAM, 0, NULL, NULL);
    expect("forced sm90 without sm_90 -> auto (mma)", 1536, 512, 40, 8, 1024, 8, DMOE_CUDA_GEMM_SM90,
           DMOE_CUDA_GEMM_MMA, 128, NULL, NULL);
    return tu_finish("test-cuda-heuristics");
}
