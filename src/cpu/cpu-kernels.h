/*
 * cpu-kernels.h: the per-ISA kernels of the fast CPU backend, one table per
 * instruction set, chosen at run time by cpu.c.
 *
 * The GEMMs of an MoE layer all have the same form once the weights are
 * read in their Hugging Face layout (rows contiguous along the reduction):
 *   out[j][r] = scale[j] * sum_k w[r][k] * x_j[k]
 * w is a block of n_rows weight rows (stride ldw elements), x_j are n_tok
 * token rows reached through a pointer array (so GEMM1 gathers the rows of
 * x that an expert takes without copying them), and out is token-major
 * (out[j * ldo + r]) so the SwiGLU epilogue and the part rows read it
 * contiguously. How an output element is summed depends only on the call's
 * n_tok and n_k (which loop shape runs), never on which rows share a block
 * or on the thread, so results do not depend on how cpu.c splits the work.
 *
 * Files: cpu-kernels-scalar.c (plain C, any machine), cpu-kernels-avx2.c
 * (AVX2 + FMA + F16C), cpu-kernels-avx512.c (AVX-512 F/BW/VL/BF16; the only
 * table with dot_bf16). The SIMD files are compiled with target attributes,
 * so the library itself needs no -m flags.
 */
#ifndef DMOE_CPU_KERNELS_H
#define DMOE_CPU_KERNELS_H

#include "../dmoe-impl.h"

typedef struct cpu_kernels {
    const char *name; /* "avx512bf16", "avx2", "scalar": the DMOE_CPU_ISA values */
    /* 1 if this machine and OS can run the table (NULL = always). */
    int (*supported)(void);
    /* out[j*ldo + r] = s_j * sum_{k < n_k} w[r*ldw + k] * x[j][k] for r < n_rows,
     * j < n_tok, s_j = scale ? scale[j] : 1. w in wt (f32, bf16 or f16), x rows f32.
     * fp32 accumulation; no rounding of the inputs. */
    void (*dot_f32)(const void *w, dmoe_dtype wt, int64_t ldw, int64_t n_rows,
                    const float *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                    float *out, int64_t ldo);
    /* The same with bf16 weights and bf16 token rows (products exact, fp32
     * accumulation). NULL when the ISA has no bf16 dot product. */
    void (*dot_bf16)(const uint16_t *w, int64_t ldw, int64_t n_rows, const uint16_t *const *x,
                     int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo);
    /* out[i] = silu(g[i]) * u[i], i < n, stored as out_dt (f32 or bf16). */
    void (*swiglu)(const float *g, const float *u, int64_t n, void *out, dmoe_dtype out_dt);
    /* dst (n) f32 <- src (n) in dt (f32, bf16, f16). */
    void (*to_f32)(const void *src, dmoe_dtype dt, float *dst, int64_t n);
    /* dst (n) in dt <- src (n) f32, rounded to nearest even like dmoe__store_f32. */
    void (*from_f32)(const float *src, void *dst, dmoe_dtype dt, int64_t n);
} cpu_kernels;

extern const cpu_kernels cpu_kernels_scalar;
extern const cpu_kernels cpu_kernels_avx2;
extern const cpu_kernels cpu_kernels_avx512;

/* Tokens whose rows stay in L2 while a block of weight rows passes over
 * them: the token loop of every dot kernel is cut into such groups. */
static inline int64_t cpu_token_group(int64_t n_k, size_t elem_size, int64_t multiple) {
    const int64_t l2_budget = 512 * 1024;
    int64_t g = l2_budget / (n_k * (int64_t)elem_size);
    g -= g % multiple;
    return g < multiple ? multiple : g;
}

#endif /* DMOE_CPU_KERNELS_H */
