/*
 * cpu-kernels-avx2.c: the AVX2 + FMA kernel table of the fast CPU backend
 * (DMOE_CPU_ISA=avx2; needs AVX2, FMA and F16C: Intel Haswell, AMD Zen 1 and
 * later).
 *
 * Same dot-product form, row and tile shapes and choice between them as the
 * AVX-512 table (see cpu-kernels-avx512.c), with 8-lane fp32 accumulators:
 * the tile kernel is 4 weight rows x up to 2 tokens (8 accumulators + 4
 * weight vectors + 1 token vector of the 16 ymm registers), the row kernel
 * one row against up to 8 tokens. Weights are widened in registers (bf16:
 * zero-extend + shift, f16: vcvtph2ps) and multiplied with fp32 token rows,
 * fp32 accumulation; nothing is rounded to 16 bits, so fp32 layers keep fp32
 * accuracy. The last k % 8 elements go through zero-padded stack copies.
 */
#include "cpu-kernels.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#define AVX2_INLINE static inline __attribute__((always_inline))

enum {
    TILE_ROWS = 4,        /* rows per reduce4, both shapes */
    TILE_TOKENS = 2,      /* tile kernel: 8 accumulators + 4 weight vectors + 1 token vector */
    ROW_TOKENS = 8,       /* row kernel: tokens per pass over a row */
    TILE_MIN_TOKENS = 16, /* calls with at least this many tokens use the tile kernel */
    PF_BYTES = 4096,      /* row kernel: software prefetch distance in the weight stream */
    ROW_X_BYTES = 32768,  /* row kernel: token bytes a pass keeps in L1 */
    ROW_BLOCK_BYTES = 256 * 1024, /* row kernel: weight rows kept in L2 across passes */
};

AVX2_INLINE __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

AVX2_INLINE void store_sums(float *out, __m128 s, const float *scale, int nr) {
    if (scale) s = _mm_mul_ps(s, _mm_set1_ps(*scale));
    float tmp[4];
    _mm_storeu_ps(tmp, s);
    for (int r = 0; r < nr; r++) out[r] = tmp[r];
}

AVX2_INLINE __m256 load_w8(const void *p, dmoe_dtype wt, int64_t k) {
    switch (wt) {
    case DMOE_DTYPE_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k))), 16));
    case DMOE_DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + k)));
    default: return _mm256_loadu_ps((const float *)p + k);
    }
}

/* The elements [k, n_k) (fewer than 8) of a weight row, widened, zero-padded. */
AVX2_INLINE __m256 load_w8_tail(const void *p, dmoe_dtype wt, int64_t k, int64_t n_k) {
    float buf[8] = {0};
    for (int64_t i = k; i < n_k; i++) {
        switch (wt) {
        case DMOE_DTYPE_BF16: buf[i - k] = dmoe__bf16_to_f32(((const uint16_t *)p)[i]); break;
        case DMOE_DTYPE_F16: buf[i - k] = dmoe__f16_to_f32(((const uint16_t *)p)[i]); break;
        default: buf[i - k] = ((const float *)p)[i]; break;
        }
    }
    return _mm256_loadu_ps(buf);
}

AVX2_INLINE __m256 load_x8_tail(const float *p, int64_t k, int64_t n_k) {
    float buf[8] = {0};
    for (int64_t i = k; i < n_k; i++) buf[i - k] = p[i];
    return _mm256_loadu_ps(buf);
}

AVX2_INLINE const void *row_ptr(const void *w, dmoe_dtype wt, int64_t row, int64_t ldw) {
    return (const char *)w + (size_t)(row * ldw) * dmoe_dtype_size(wt);
}

/* ---- tile kernel: 4 rows x mt (<= 2) tokens in registers ---- */
AVX2_INLINE void tile(const void *w, dmoe_dtype wt, int64_t ldw, int nr, const float *const *x,
                      const int mt, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    const void *wr[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) wr[r] = row_ptr(w, wt, r < nr ? r : nr - 1, ldw);
    __m256 acc[TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int j = 0; j < mt; j++) acc[r][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n_k; k += 8) {
        __m256 wv[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) wv[r] = load_w8(wr[r], wt, k);
        for (int j = 0; j < mt; j++) {
            __m256 xv = _mm256_loadu_ps(x[j] + k);
            for (int r = 0; r < TILE_ROWS; r++) acc[r][j] = _mm256_fmadd_ps(wv[r], xv, acc[r][j]);
        }
    }
    if (k < n_k) {
        __m256 wv[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) wv[r] = load_w8_tail(wr[r], wt, k, n_k);
        for (int j = 0; j < mt; j++) {
            __m256 xv = load_x8_tail(x[j], k, n_k);
            for (int r = 0; r < TILE_ROWS; r++) acc[r][j] = _mm256_fmadd_ps(wv[r], xv, acc[r][j]);
        }
    }
    for (int j = 0; j < mt; j++)
        store_sums(out + j * ldo, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]),
                   scale ? scale + j : NULL, nr);
}

/* ---- row kernel: one row streamed in order against up to 8 tokens ---- */
AVX2_INLINE void row(const void *w, dmoe_dtype wt, const float *const *x, const int mt,
                     int64_t n_k, __m256 *acc) {
    const size_t ws = dmoe_dtype_size(wt);
    __m256 a[ROW_TOKENS], a_odd = _mm256_setzero_ps();
    for (int j = 0; j < mt; j++) a[j] = _mm256_setzero_ps();
    int64_t k = 0;
    if (mt == 1) { /* two chains, so one token is not bound by the FMA latency */
        for (; k + 16 <= n_k; k += 16) {
            _mm_prefetch((const char *)w + (size_t)k * ws + PF_BYTES, _MM_HINT_T0);
            a[0] = _mm256_fmadd_ps(load_w8(w, wt, k), _mm256_loadu_ps(x[0] + k), a[0]);
            a_odd = _mm256_fmadd_ps(load_w8(w, wt, k + 8), _mm256_loadu_ps(x[0] + k + 8), a_odd);
        }
    }
    for (; k + 8 <= n_k; k += 8) {
        _mm_prefetch((const char *)w + (size_t)k * ws + PF_BYTES, _MM_HINT_T0);
        const __m256 wv = load_w8(w, wt, k);
        for (int j = 0; j < mt; j++) a[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[j] + k), a[j]);
    }
    if (k < n_k) {
        const __m256 wv = load_w8_tail(w, wt, k, n_k);
        for (int j = 0; j < mt; j++) a[j] = _mm256_fmadd_ps(wv, load_x8_tail(x[j], k, n_k), a[j]);
    }
    if (mt == 1) a[0] = _mm256_add_ps(a[0], a_odd);
    for (int j = 0; j < mt; j++) acc[j] = a[j];
}

AVX2_INLINE void rows4(const void *w, dmoe_dtype wt, int64_t ldw, int nr, const float *const *x,
                       const int mt, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    __m256 acc[TILE_ROWS][ROW_TOKENS];
    for (int r = 0; r < TILE_ROWS; r++) {
        if (r < nr) row(row_ptr(w, wt, r, ldw), wt, x, mt, n_k, acc[r]);
        else
            for (int j = 0; j < mt; j++) acc[r][j] = _mm256_setzero_ps();
    }
    for (int j = 0; j < mt; j++)
        store_sums(out + j * ldo, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]),
                   scale ? scale + j : NULL, nr);
}

/* The same two shapes and choice as in cpu-kernels-avx512.c. */
AVX2_INLINE void dot_wt(const void *w, dmoe_dtype wt, int64_t ldw, int64_t n_rows,
                        const float *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                        float *out, int64_t ldo) {
    if (n_tok >= TILE_MIN_TOKENS) {
        const int64_t group = cpu_token_group(n_k, sizeof(float), TILE_TOKENS);
        for (int64_t j0 = 0; j0 < n_tok; j0 += group) {
            const int64_t j1 = j0 + group < n_tok ? j0 + group : n_tok;
            for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
                const int nr = (int)(n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS);
                const void *wr = row_ptr(w, wt, r0, ldw);
                for (int64_t j = j0; j < j1; j += TILE_TOKENS) {
                    const float *sc = scale ? scale + j : NULL;
                    if (j1 - j >= 2) tile(wr, wt, ldw, nr, x + j, 2, n_k, sc, out + j * ldo + r0, ldo);
                    else tile(wr, wt, ldw, nr, x + j, 1, n_k, sc, out + j * ldo + r0, ldo);
                }
            }
        }
        return;
    }
    int64_t mt_max = ROW_X_BYTES / (n_k * (int64_t)sizeof(float));
    mt_max = mt_max > ROW_TOKENS ? ROW_TOKENS : mt_max < 1 ? 1 : mt_max;
    int64_t rb = ROW_BLOCK_BYTES / (n_k * (int64_t)dmoe_dtype_size(wt));
    rb = rb < TILE_ROWS ? TILE_ROWS : rb - rb % TILE_ROWS;
    const int64_t n_pass = (n_tok + mt_max - 1) / mt_max;
    for (int64_t rb0 = 0; rb0 < n_rows; rb0 += rb) {
        const int64_t rb1 = rb0 + rb < n_rows ? rb0 + rb : n_rows;
        for (int64_t t = 0; t < n_pass; t++) {
            const int64_t ja = n_tok * t / n_pass, jb = n_tok * (t + 1) / n_pass;
            for (int64_t r0 = rb0; r0 < rb1; r0 += TILE_ROWS) {
                const int nr = (int)(rb1 - r0 < TILE_ROWS ? rb1 - r0 : TILE_ROWS);
                const void *wr = row_ptr(w, wt, r0, ldw);
                const float *sc = scale ? scale + ja : NULL;
                float *o = out + ja * ldo + r0;
                switch (jb - ja) {
                case 1: rows4(wr, wt, ldw, nr, x + ja, 1, n_k, sc, o, ldo); break;
                case 2: rows4(wr, wt, ldw, nr, x + ja, 2, n_k, sc, o, ldo); break;
                case 3: rows4(wr, wt, ldw, nr, x + ja, 3, n_k, sc, o, ldo); break;
                case 4: rows4(wr, wt, ldw, nr, x + ja, 4, n_k, sc, o, ldo); break;
                case 5: rows4(wr, wt, ldw, nr, x + ja, 5, n_k, sc, o, ldo); break;
                case 6: rows4(wr, wt, ldw, nr, x + ja, 6, n_k, sc, o, ldo); break;
                case 7: rows4(wr, wt, ldw, nr, x + ja, 7, n_k, sc, o, ldo); break;
                default: rows4(wr, wt, ldw, nr, x + ja, 8, n_k, sc, o, ldo); break;
                }
            }
        }
    }
}

static void dot_f32w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                     int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_wt(w, DMOE_DTYPE_F32, ldw, n_rows, x, n_tok, n_k, scale, out, ldo);
}
static void dot_bf16w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                      int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_wt(w, DMOE_DTYPE_BF16, ldw, n_rows, x, n_tok, n_k, scale, out, ldo);
}
static void dot_f16w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                     int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_wt(w, DMOE_DTYPE_F16, ldw, n_rows, x, n_tok, n_k, scale, out, ldo);
}

static void avx2_dot_f32(const void *w, dmoe_dtype wt, int64_t ldw, int64_t n_rows,
                         const float *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                         float *out, int64_t ldo) {
    switch (wt) {
    case DMOE_DTYPE_BF16: dot_bf16w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    case DMOE_DTYPE_F16: dot_f16w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    default: dot_f32w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    }
}

/* exp(v) for v clamped to [-87, 88], Cephes expf polynomial; 2^n built in the
 * exponent field (n stays in [-126, 127], so no subnormal tricks are needed). */
AVX2_INLINE __m256 exp8(__m256 v) {
    v = _mm256_max_ps(_mm256_min_ps(v, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* 8 floats -> 8 bf16 as dmoe__f32_to_bf16 rounds them. */
AVX2_INLINE __m128i f32_to_bf16_8(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                     _mm256_set1_epi32(0x7f800000));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256i h = _mm256_blendv_epi8(rounded, quiet, nan);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
    return _mm256_castsi256_si128(packed);
}

static void avx2_swiglu(const float *g, const float *u, int64_t n, void *out, dmoe_dtype out_dt) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 v = _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), uv);
        if (out_dt == DMOE_DTYPE_BF16)
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), f32_to_bf16_8(v));
        else
            _mm256_storeu_ps((float *)out + i, v);
    }
    for (; i < n; i++) dmoe__store_f32(out, out_dt, i, g[i] / (1.0f + expf(-g[i])) * u[i]);
}

static void avx2_to_f32(const void *src, dmoe_dtype dt, float *dst, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_w8(src, dt, i));
    for (; i < n; i++) dst[i] = dmoe__load_f32(src, dt, i);
}

static void avx2_from_f32(const float *src, void *dst, dmoe_dtype dt, int64_t n) {
    if (dt != DMOE_DTYPE_BF16) {
        dmoe__convert_from_f32(src, dst, dt, n);
        return;
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), f32_to_bf16_8(_mm256_loadu_ps(src + i)));
    for (; i < n; i++) ((uint16_t *)dst)[i] = dmoe__f32_to_bf16(src[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static int avx2_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

const cpu_kernels cpu_kernels_avx2 = {
    /* .name      = */ "avx2",
    /* .supported = */ avx2_supported,
    /* .dot_f32   = */ avx2_dot_f32,
    /* .dot_bf16  = */ NULL,
    /* .swiglu    = */ avx2_swiglu,
    /* .to_f32    = */ avx2_to_f32,
    /* .from_f32  = */ avx2_from_f32,
};

#else /* not x86 with GCC or Clang */

static int avx2_supported(void) { return 0; }

const cpu_kernels cpu_kernels_avx2 = {
    /* .name      = */ "avx2",
    /* .supported = */ avx2_supported,
    /* .dot_f32   = */ NULL,
    /* .dot_bf16  = */ NULL,
    /* .swiglu    = */ NULL,
    /* .to_f32    = */ NULL,
    /* .from_f32  = */ NULL,
};

#endif
