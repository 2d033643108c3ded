/*
 * cpu-kernels-scalar.c: the plain C kernel table of the fast CPU backend, for
 * machines without AVX2 and as the portable path (DMOE_CPU_ISA=scalar).
 *
 * dot_f32 computes blocks of 4 weight rows x 2 tokens, each weight element
 * widened once to float and used for both tokens; each output keeps 8
 * partial sums (k mod 8), added pairwise at the end, so the code is the same
 * arithmetic whatever the block a row or token falls in. fp32 throughout.
 */
#include "cpu-kernels.h"

enum { SC_NR = 4, SC_MT = 2, SC_LANES = 8 };

/* dst[0..n) = the weights w[i0 .. i0 + n) widened to float. The switch sits
 * outside the loops so each loop is a plain (vectorisable) conversion. */
static inline void sc_load_w(const void *w, dmoe_dtype wt, int64_t i0, int64_t n, float *dst) {
    switch (wt) {
    case DMOE_DTYPE_BF16:
        for (int64_t l = 0; l < n; l++) dst[l] = dmoe__bf16_to_f32(((const uint16_t *)w)[i0 + l]);
        break;
    case DMOE_DTYPE_F16:
        for (int64_t l = 0; l < n; l++) dst[l] = dmoe__f16_to_f32(((const uint16_t *)w)[i0 + l]);
        break;
    default:
        for (int64_t l = 0; l < n; l++) dst[l] = ((const float *)w)[i0 + l];
        break;
    }
}

static inline float sc_reduce(const float *lanes) {
    float a = (lanes[0] + lanes[4]) + (lanes[2] + lanes[6]);
    float b = (lanes[1] + lanes[5]) + (lanes[3] + lanes[7]);
    return a + b;
}

/* acc[l] += w[l] * x[l] for one lane group; n is SC_LANES in the loop body
 * (a constant: the compiler vectorises it with whatever SIMD the target
 * has) and smaller only for the tail. */
static inline void sc_lanes(float *acc, const float *w, const float *x, int64_t n) {
    for (int64_t l = 0; l < n; l++) acc[l] += w[l] * x[l];
}

/* One block: nr (<= 4) rows from w, mt (<= 2) tokens. */
static void sc_tile(const void *w, dmoe_dtype wt, int64_t ldw, int nr, const float *const *x,
                    int mt, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    float acc[SC_NR][SC_MT][SC_LANES];
    memset(acc, 0, sizeof acc);
    int64_t k0 = 0;
    for (; k0 + SC_LANES <= n_k; k0 += SC_LANES) {
        for (int r = 0; r < nr; r++) {
            float wv[SC_LANES];
            sc_load_w(w, wt, r * ldw + k0, SC_LANES, wv);
            for (int j = 0; j < mt; j++) sc_lanes(acc[r][j], wv, x[j] + k0, SC_LANES);
        }
    }
    if (k0 < n_k) {
        const int64_t len = n_k - k0;
        for (int r = 0; r < nr; r++) {
            float wv[SC_LANES];
            sc_load_w(w, wt, r * ldw + k0, len, wv);
            for (int j = 0; j < mt; j++) sc_lanes(acc[r][j], wv, x[j] + k0, len);
        }
    }
    for (int j = 0; j < mt; j++) {
        float s = scale ? scale[j] : 1.0f;
        for (int r = 0; r < nr; r++) out[j * ldo + r] = s * sc_reduce(acc[r][j]);
    }
}

static void sc_dot_f32(const void *w, dmoe_dtype wt, int64_t ldw, int64_t n_rows,
                       const float *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                       float *out, int64_t ldo) {
    const size_t wsize = dmoe_dtype_size(wt);
    const int64_t group = cpu_token_group(n_k, sizeof(float), SC_MT);
    for (int64_t j0 = 0; j0 < n_tok; j0 += group) {
        int64_t j1 = j0 + group < n_tok ? j0 + group : n_tok;
        for (int64_t r = 0; r < n_rows; r += SC_NR) {
            int nr = (int)(n_rows - r < SC_NR ? n_rows - r : SC_NR);
            const void *wr = (const char *)w + (size_t)(r * ldw) * wsize;
            for (int64_t j = j0; j < j1; j += SC_MT) {
                int mt = (int)(j1 - j < SC_MT ? j1 - j : SC_MT);
                sc_tile(wr, wt, ldw, nr, x + j, mt, n_k, scale ? scale + j : NULL,
                        out + j * ldo + r, ldo);
            }
        }
    }
}

static void sc_swiglu(const float *g, const float *u, int64_t n, void *out, dmoe_dtype out_dt) {
    for (int64_t i = 0; i < n; i++) {
        float v = g[i] / (1.0f + expf(-g[i])) * u[i];
        dmoe__store_f32(out, out_dt, i, v);
    }
}

const cpu_kernels cpu_kernels_scalar = {
    /* .name      = */ "scalar",
    /* .supported = */ NULL,
    /* .dot_f32   = */ sc_dot_f32,
    /* .dot_bf16  = */ NULL,
    /* .swiglu    = */ sc_swiglu,
    /* .to_f32    = */ dmoe__convert_to_f32,
    /* .from_f32  = */ dmoe__convert_from_f32,
};
