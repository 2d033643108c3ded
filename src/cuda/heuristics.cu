/*
 * heuristics.cu: the launch-shape decisions of the CUDA backend (host code
 * only, see heuristics.h). Kernels never decide their own shapes; they get
 * them from here, so one file says how a shape is run.
 *
 * Grouped GEMMs. The quantity that decides is m, the rows an expert gets. We
 * plan for a high quantile of a balanced routing: with n = T*K pairs over E
 * experts, avg = n/E and m ~ avg + 3*sqrt(avg) + 1, capped by T (router ids
 * pick an expert at most once per token). Then:
 *   on sm_90 (the wgmma kernels built):
 *     m <= 64   the swap-AB kernels (weights on the wgmma M side, the
 *               expert's rows as N = 16/32/64, sm90-grouped-gemm.cu): every
 *               weight read once through a TMA pipeline, 97-103% of the floor
 *               on mixtral T=16/128 and deepseek T=16..512, 86-91% on
 *               qwen3/olmoe T=16/128 (the streaming kernels: 72-94%), unless
 *               the launch has too few items for the grid: with the experts
 *               hit estimated as E (1 - (1 - K/E)^T), items = hit *
 *               min(ceil(F / 128), ceil(H / 256)) < num_sms / 2 (T = 1 on
 *               mixtral, qwen3, olmoe: 32-64 items) goes to stream, which
 *               splits K and measured 4-15% faster there
 *               (bench/sm90-gemm-notes.md, v06);
 *     else      the 128x256-tile wgmma kernels (at 64 < m <= 128 they beat
 *               swap128 by 2-5% in the harness: olmoe T=512, deepseek T=2048),
 *               unless m <= 128 and their tiles fill the last wave badly:
 *               with S SMs and t tiles, fill(t) = t / (ceil(t / S) * S),
 *               GEMM1 t = hit * ceil(F / 128), GEMM2 t = hit * ceil(H / 256),
 *               weighted 2:1 (GEMM1 reads twice the weights); below 0.75 the
 *               swap kernels with 64 rows an item (2 items an expert, ~4x the
 *               tiles) measured faster: granite-3b-like (E=40, F=512) T=256,
 *               fill 0.71, 122.8 -> 115.7 us (session 12); at fill >= 0.8
 *               (dsv2-lite, gpt-oss, olmoe T=512) swap64 was 1% faster to 6%
 *               slower, so the margin. Shared experts (hit = S, 1 or 2) fill
 *               a wave poorly either way and take the rule too (not timed);
 *   elsewhere: m <= 64 stream (8/16/32/64 tokens a pass), else mma.sync with
 *   64- or 128-row tiles.
 * DMOE_CUDA_SWAP_N=16|32|64|128 forces the swap kernels' rows per item.
 * Router. Up to T = 1024 (dmoe__cuda_router_stream_max) a split-k streaming
 * kernel: 16 experts x k_chunk x a share of the token passes per block, with
 * k_splits chosen so that ~2 blocks per SM read the router weights (at most
 * DMOE_CUDA_ROUTER_MAX_SPLITS; above the fused kernel's 64 tokens, fewer as
 * the token passes fill the SMs) and the passes spread over blocks (t_splits);
 * T <= 16 routes inside that launch (fused). Beyond, tiled mma logits split
 * along H into up to 8 partial sets so that ~2 blocks per SM are busy.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "heuristics.h"
#include "path-choice.h" /* DMOE_FUSED_MAX_TOKENS */
#ifdef DMOE_HAVE_SM90_GEMM
#include "sm90-grouped-gemm.h"
#endif

extern "C" const char *dmoe__cuda_gemm_kind_name(dmoe_cuda_gemm_kind kind) {
    switch (kind) {
    case DMOE_CUDA_GEMM_AUTO: return "auto";
    case DMOE_CUDA_GEMM_STREAM: return "stream";
    case DMOE_CUDA_GEMM_MMA: return "mma";
    case DMOE_CUDA_GEMM_SM90: return "sm90";
    case DMOE_CUDA_GEMM_SWAP: return "sm90-swap";
    }
    return "unknown";
}

extern "C" int dmoe__cuda_sm90_available(int cc_major, int cc_minor) {
#ifdef DMOE_HAVE_SM90_GEMM
    return cc_major == 9 && cc_minor == 0;
#else
    (void)cc_major;
    (void)cc_minor;
    return 0;
#endif
}

extern "C" dmoe_cuda_gemm_kind dmoe__cuda_gemm_kind_from_env(void) {
    const char *v = getenv("DMOE_CUDA_GEMM");
    if (!v || !*v || strcmp(v, "auto") == 0) return DMOE_CUDA_GEMM_AUTO;
    if (strcmp(v, "stream") == 0) return DMOE_CUDA_GEMM_STREAM;
    if (strcmp(v, "mma") == 0) return DMOE_CUDA_GEMM_MMA;
    if (strcmp(v, "swap") == 0) {
#ifdef DMOE_HAVE_SM90_GEMM
        return DMOE_CUDA_GEMM_SWAP;
#else
        fprintf(stderr, "dmoe: DMOE_CUDA_GEMM=swap but the sm90 kernels are not built; using auto\n");
        return DMOE_CUDA_GEMM_AUTO;
#endif
    }
    if (strcmp(v, "sm90") == 0) {
#ifdef DMOE_HAVE_SM90_GEMM
        return DMOE_CUDA_GEMM_SM90;
#else
        fprintf(stderr, "dmoe: DMOE_CUDA_GEMM=sm90 but the sm90 kernels are not built; using auto\n");
        return DMOE_CUDA_GEMM_AUTO;
#endif
    }
    fprintf(stderr, "dmoe: unknown DMOE_CUDA_GEMM=%s (auto|stream|mma|sm90|swap); using auto\n", v);
    return DMOE_CUDA_GEMM_AUTO;
}

extern "C" int64_t dmoe__cuda_rows_estimate(const dmoe_cuda_grouped_args *a) {
    const double avg = (double)a->n_rows / (double)a->n_experts;
    double est = avg + 3.0 * sqrt(avg) + 1.0;
    if (est > (double)a->n_tokens) est = (double)a->n_tokens;
    if (est > (double)a->n_rows) est = (double)a->n_rows;
    int64_t m = (int64_t)ceil(est);
    return m < 1 ? 1 : m;
}

extern "C" int32_t dmoe__cuda_stream_tokens(const dmoe_cuda_grouped_args *a) {
    const int64_t m = dmoe__cuda_rows_estimate(a);
    if (m <= 8) return 8;
    if (m <= 16) return 16;
    if (m <= 32) return 32;
    return 64;
}

/* Experts a uniform routing of n_tokens hits, E (1 - (1 - K/E)^T). */
static double experts_hit(const dmoe_cuda_grouped_args *a) {
    const double E = (double)a->n_experts, K = (double)a->top_k;
    return E * (1.0 - pow(1.0 - (K < E ? K : E) / E, (double)a->n_tokens));
}

static double grid_sms(const dmoe_cuda_grouped_args *a) { return (double)(a->num_sms > 0 ? a->num_sms : 132); }

/* Items of the smaller swap launch (per expert hit: GEMM1 ceil(F / 128)
 * feature blocks, GEMM2 ceil(H / 256) row blocks), with the experts hit
 * estimated for uniform routing. a: GEMM1's arguments (k_dim H, n_dim F). */
static double swap_items(const dmoe_cuda_grouped_args *a) {
    double hit = experts_hit(a);
    if (hit > (double)a->n_rows) hit = (double)a->n_rows;
    const double b1 = (double)((a->n_dim + 127) / 128), b2 = (double)((a->k_dim + 255) / 256);
    return hit * (b1 < b2 ? b1 : b2);
}

/* DMOE_CUDA_SWAP_N (read once): the swap kernels' rows an item, or 0. */
static int swap_n_forced(void) {
    static int forced = -1;
    if (forced < 0) {
        const char *v = getenv("DMOE_CUDA_SWAP_N");
        const int n = v ? atoi(v) : 0;
        forced = (n == 16 || n == 32 || n == 64 || n == 128) ? n : 0;
    }
    return forced;
}

extern "C" int32_t dmoe__cuda_swap_tokens(const dmoe_cuda_grouped_args *a) {
    const int forced = swap_n_forced();
    if (forced) return forced;
    const int64_t m = dmoe__cuda_rows_estimate(a);
    if (m <= 16) return 16;
    if (m <= 32) return 32;
    if (m <= 64) return 64;
    return 128;
}

/* The 128x256-tile kernels' wave fill for m rows an expert (see the top). */
static double sm90_wave_fill(const dmoe_cuda_grouped_args *a, int64_t m) {
    double hit = experts_hit(a);
    if (hit < 1.0) hit = 1.0;
    const double row_tiles = (double)((m + 127) / 128), S = grid_sms(a);
    const double t1 = ceil(hit) * row_tiles * (double)((a->n_dim + 127) / 128);
    const double t2 = ceil(hit) * row_tiles * (double)((a->k_dim + 255) / 256);
    const double f1 = t1 / (ceil(t1 / S) * S), f2 = t2 / (ceil(t2 / S) * S);
    return (2.0 * f1 + f2) / 3.0;
}

extern "C" int32_t dmoe__cuda_mma_rows(const dmoe_cuda_grouped_args *a) {
    return dmoe__cuda_rows_estimate(a) <= 64 ? 64 : 128;
}

extern "C" dmoe_cuda_gemm_choice dmoe__cuda_choose_gemm(dmoe_cuda_gemm_kind forced,
                                                        const dmoe_cuda_grouped_args *a,
                                                        int cc_major, int cc_minor) {
    dmoe_cuda_gemm_kind kind = forced;
    const int64_t m = dmoe__cuda_rows_estimate(a);
    int swap_tile = 0; /* set: AUTO chose swap above 64 rows for the wave fill */
    if ((kind == DMOE_CUDA_GEMM_SM90 || kind == DMOE_CUDA_GEMM_SWAP) &&
        !dmoe__cuda_sm90_available(cc_major, cc_minor))
        kind = DMOE_CUDA_GEMM_AUTO;
    if (kind == DMOE_CUDA_GEMM_AUTO) {
        const int sm90 = dmoe__cuda_sm90_available(cc_major, cc_minor);
        if (sm90 && m <= 64)
            kind = swap_items(a) * 2 >= grid_sms(a)
                       ? DMOE_CUDA_GEMM_SWAP
                       : DMOE_CUDA_GEMM_STREAM;
        else if (sm90 && m <= 128 && sm90_wave_fill(a, m) < 0.75) {
            kind = DMOE_CUDA_GEMM_SWAP;
            swap_tile = swap_n_forced() ? 0 : 64; /* DMOE_CUDA_SWAP_N still forces the rows an item */
        } else if (sm90) kind = DMOE_CUDA_GEMM_SM90;
        else kind = m <= 64 ? DMOE_CUDA_GEMM_STREAM : DMOE_CUDA_GEMM_MMA;
    }
    dmoe_cuda_gemm_choice c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    switch (kind) {
    case DMOE_CUDA_GEMM_STREAM:
        c.gemm1 = dmoe__cuda_gemm1_stream;
        c.gemm2 = dmoe__cuda_gemm2_stream;
        c.tile = dmoe__cuda_stream_tokens(a);
        break;
#ifdef DMOE_HAVE_SM90_GEMM
    case DMOE_CUDA_GEMM_SM90:
        c.gemm1 = dmoe__cuda_gemm1_sm90;
        c.gemm2 = dmoe__cuda_gemm2_sm90;
        c.tile = 0;
        break;
    case DMOE_CUDA_GEMM_SWAP:
        c.gemm1 = dmoe__cuda_gemm1_sm90_swap;
        c.gemm2 = dmoe__cuda_gemm2_sm90_swap;
        c.tile = swap_tile ? swap_tile : dmoe__cuda_swap_tokens(a);
        if (swap_tile) {
            c.gemm1 = dmoe__cuda_gemm1_sm90_swap64;
            c.gemm2 = dmoe__cuda_gemm2_sm90_swap64;
        }
        break;
#endif
    default:
        (void)swap_tile;
        c.kind = DMOE_CUDA_GEMM_MMA;
        c.gemm1 = dmoe__cuda_gemm1_mma;
        c.gemm2 = dmoe__cuda_gemm2_mma;
        c.tile = dmoe__cuda_mma_rows(a);
        break;
    }
    return c;
}

extern "C" int64_t dmoe__cuda_router_stream_max(void) {
    static int64_t v = -1;
    if (v < 0) {
        const char *e = getenv("DMOE_CUDA_ROUTER_STREAM_MAX");
        const long long n = e ? atoll(e) : 0;
        v = n > 0 ? (int64_t)n : 1024;
        /* the fused kernel (T <= DMOE_FUSED_MAX_TOKENS) routes with the streaming router's split and
         * sizes its workspace for it: below that the override would hand it the mma split */
        if (v < DMOE_FUSED_MAX_TOKENS) {
            fprintf(stderr, "dmoe: DMOE_CUDA_ROUTER_STREAM_MAX=%s raised to %d (the fused kernel's tokens)\n", e,
                    DMOE_FUSED_MAX_TOKENS);
            v = DMOE_FUSED_MAX_TOKENS;
        }
    }
    return v;
}

extern "C" dmoe_cuda_router_cfg dmoe__cuda_router_config(int64_t n_tokens, int64_t hidden,
                                                         int32_t n_experts, int32_t num_sms) {
    dmoe_cuda_router_cfg c;
    memset(&c, 0, sizeof c);
    if (n_tokens > dmoe__cuda_router_stream_max()) {
        /* Tiled mma logits, 128 x 128 tiles, two blocks per SM. With few tiles
         * (T = 2048, E = 128: 16) the GEMM ran on 16 SMs for ~55 us (ncu,
         * bench/sm90-gemm-notes.md), so H is split until ~2 blocks per SM are
         * busy: each split writes its own partial logits and the route kernel
         * sums them in split order (deterministic). Splits keep >= 128 columns. */
        c.use_mma = 1;
        const int64_t tiles = (n_tokens + 127) / 128 * ((n_experts + 127) / 128);
        int64_t splits = 2 * (int64_t)num_sms / tiles;
        if (splits > hidden / 128) splits = hidden / 128;
        if (splits > 8) splits = 8;
        if (splits < 1) splits = 1;
        int64_t chunk = (hidden + splits - 1) / splits;
        chunk = (chunk + 31) / 32 * 32;
        c.k_chunk = chunk;
        c.k_splits = (int32_t)((hidden + chunk - 1) / chunk);
        return c;
    }
    c.tok_tiles = n_tokens <= 8 ? 1 : (n_tokens <= 16 ? 2 : 4);
    const int64_t row_tiles = (n_experts + 15) / 16;
    const int64_t max_splits = (hidden + 255) / 256;
    const int64_t slots = 2 * (int64_t)num_sms; /* two blocks per SM */
    int64_t splits = (slots + row_tiles - 1) / row_tiles;
    if (splits > max_splits) splits = max_splits;
    if (splits > DMOE_CUDA_ROUTER_MAX_SPLITS) splits = DMOE_CUDA_ROUTER_MAX_SPLITS;
    /* A block's pass over 8 * tok_tiles tokens is a round of dependent steps (loads,
     * the block's reduction, the stores) whatever its k_chunk, so many tokens are
     * spread over blocks too (t_splits) -- one block row per (16 experts, split) walked
     * all 32 passes of T = 1024 alone; with the split, staged forwards at T = 1024 went
     * 186 -> 146 us on a granite-3b-like layer, 529 -> 494 qwen3, 406 -> 368 olmoe,
     * 705 -> 663 gpt-oss-20b-like, T = 256 / 512 5-13% faster, session 11 run 3) -- and above the fused
     * kernel's token limit the split along H shrinks while the passes fill the slots
     * (fewer, longer passes; fewer partial sums to add). Up to that limit the split
     * depends on (H, E) only: the fused kernel and the resident mode route with it. */
    const int64_t passes = (n_tokens + 8 * c.tok_tiles - 1) / (8 * c.tok_tiles);
    if (n_tokens > DMOE_FUSED_MAX_TOKENS) {
        const int64_t need = (slots + row_tiles * passes - 1) / (row_tiles * passes);
        if (need < splits) splits = need;
    }
    if (splits < 1) splits = 1;
    int64_t chunk = (hidden + splits - 1) / splits;
    chunk = (chunk + 255) / 256 * 256;
    c.k_chunk = chunk;
    c.k_splits = (int32_t)((hidden + chunk - 1) / chunk);
    int64_t ts = (slots + row_tiles * c.k_splits - 1) / (row_tiles * c.k_splits);
    if (ts > passes) ts = passes;
    c.t_splits = (int32_t)(ts < 1 ? 1 : ts);
    c.fused = n_tokens <= 16;
    return c;
}
