/*
 * cpu-kernels-avx512.c: the AVX-512 kernel table of the fast CPU backend
 * (DMOE_CPU_ISA=avx512bf16; needs AVX-512 F, BW, VL and BF16, e.g. AMD Zen 4/5,
 * Intel Sapphire Rapids).
 *
 * The dot kernels use the dot-product form that the weight layout allows
 * without repacking: a weight row and a token row are both contiguous along
 * k, so one 16-lane accumulator per (row, token) pair gathers partial sums
 * over k, and 4 rows' accumulators are reduced across lanes together at the
 * end (reduce4: one fixed tree per row, so a result does not depend on what
 * shares its tile). Two element kinds:
 *   bf16 dot: 32 k per step, vdpbf16ps (bf16 pairs multiplied exactly, summed
 *             in fp32); weights stay bf16 in memory, no converted copy.
 *   fma:      16 k per step, vfmadd231ps on fp32 token rows; bf16 weights
 *             widened in registers (zero-extend + shift), f16 with vcvtph2ps.
 * and two loop shapes, picked by the number of tokens in the call:
 *   row kernel  (n_tok < TILE_MIN_TOKENS): one weight row at a time against
 *               up to 8 tokens, the row streamed once and strictly in order,
 *               with a software prefetch PF_BYTES ahead. On this class of
 *               machine (measured on Zen 5, see bench/cpu-notes.md) one
 *               sequential stream per core reaches ~37 GB/s while 4 rows read
 *               side by side reach ~25 GB/s; decode is all streaming.
 *   tile kernel (n_tok >= TILE_MIN_TOKENS): 4 rows x up to 6 tokens in
 *               registers (24 accumulators, 4 weight vectors, 1 token vector
 *               of the 32 zmm), ~90% of vdpbf16ps peak from cache against
 *               ~70% for the row kernel; the 4 rows stay in L1 while the
 *               token tiles of a group (x rows kept in L2) pass over them.
 * Tokens are cut into near-equal tiles (8 tokens run as 4 + 4, not 6 + 2);
 * tails along k use masked loads; with fewer than 4 rows left, the tile kernel
 * repeats the last row (computed, not stored) and the row kernel reduces
 * zeros in their place. With one token the row kernel keeps two accumulators
 * (even and odd k steps) so it is not bound by vdpbf16ps latency.
 * Which shape runs depends only on the call's token count, never on threads.
 */
#include "cpu-kernels.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")
#endif

#include <immintrin.h>

#define AVX512_INLINE static inline __attribute__((always_inline))

enum {
    TILE_ROWS = 4,        /* rows per reduce4, both shapes */
    TILE_TOKENS = 6,      /* tile kernel: tokens per register tile */
    ROW_TOKENS = 8,       /* row kernel: tokens per pass over a row */
    TILE_MIN_TOKENS = 16, /* calls with at least this many tokens use the tile kernel */
    PF_BYTES = 8192,      /* row kernel: software prefetch distance in the weight stream */
    ROW_X_BYTES = 32768,  /* row kernel: token bytes a pass keeps in L1 */
    ROW_BLOCK_BYTES = 256 * 1024, /* row kernel: weight rows kept in L2 across passes */
};

/* Element kinds: what a weight vector and a token vector hold. */
typedef enum kern_kind { KIND_BF16DOT, KIND_FMA_F32W, KIND_FMA_BF16W, KIND_FMA_F16W } kern_kind;

AVX512_INLINE int64_t kind_step(kern_kind kd) { return kd == KIND_BF16DOT ? 32 : 16; }
AVX512_INLINE size_t kind_wsize(kern_kind kd) { return kd == KIND_FMA_F32W ? 4 : 2; }
AVX512_INLINE size_t kind_xsize(kern_kind kd) { return kd == KIND_BF16DOT ? 2 : 4; }

/* The weight vector at element k of row w (bf16 pairs kept as bits for the dot). */
AVX512_INLINE __m512 w_load(kern_kind kd, const void *w, int64_t k) {
    switch (kd) {
    case KIND_BF16DOT: return _mm512_castsi512_ps(_mm512_loadu_si512((const uint16_t *)w + k));
    case KIND_FMA_BF16W:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k))), 16));
    case KIND_FMA_F16W:
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k)));
    default: return _mm512_loadu_ps((const float *)w + k);
    }
}

/* The first n (< step) elements at k, zeros after. */
AVX512_INLINE __m512 w_load_tail(kern_kind kd, const void *w, int64_t k, int64_t n) {
    const __mmask32 m32 = (__mmask32)((1ull << n) - 1);
    const __mmask16 m16 = (__mmask16)m32;
    switch (kd) {
    case KIND_BF16DOT:
        return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m32, (const uint16_t *)w + k));
    case KIND_FMA_BF16W:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m16, (const uint16_t *)w + k)), 16));
    case KIND_FMA_F16W:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, (const uint16_t *)w + k));
    default: return _mm512_maskz_loadu_ps(m16, (const float *)w + k);
    }
}

/* acc + w . x[k..k+step). */
AVX512_INLINE __m512 madd(kern_kind kd, __m512 acc, __m512 wv, const void *x, int64_t k) {
    if (kd == KIND_BF16DOT)
        return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(wv),
                                (__m512bh)_mm512_loadu_si512((const uint16_t *)x + k));
    return _mm512_fmadd_ps(wv, _mm512_loadu_ps((const float *)x + k), acc);
}

AVX512_INLINE __m512 madd_tail(kern_kind kd, __m512 acc, __m512 wv, const void *x, int64_t k,
                               int64_t n) {
    const __mmask32 m32 = (__mmask32)((1ull << n) - 1);
    if (kd == KIND_BF16DOT)
        return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(wv),
                                (__m512bh)_mm512_maskz_loadu_epi16(m32, (const uint16_t *)x + k));
    return _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps((__mmask16)m32, (const float *)x + k), acc);
}

AVX512_INLINE const void *row_ptr(kern_kind kd, const void *w, int64_t row, int64_t ldw) {
    return (const char *)w + (size_t)(row * ldw) * kind_wsize(kd);
}

/* The sums of the lanes of a, b, c, d, as [sum a, sum b, sum c, sum d]. */
AVX512_INLINE __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                                _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    __m256 lo = _mm512_castps512_ps256(abcd);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1));
    __m256 s = _mm256_add_ps(lo, hi);
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* out[0..nr) = scale * the 4 sums (nr <= 4 of them stored). */
AVX512_INLINE void store_sums(float *out, __m128 s, const float *scale, int nr) {
    if (scale) s = _mm_mul_ps(s, _mm_set1_ps(*scale));
    if (nr == TILE_ROWS) _mm_storeu_ps(out, s);
    else _mm_mask_storeu_ps(out, (__mmask8)((1u << nr) - 1), s);
}

/* ---- tile kernel: 4 rows x mt tokens in registers ---- */

AVX512_INLINE void tile(kern_kind kd, const void *w, int64_t ldw, int nr, const void *const *x,
                        const int mt, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    const int64_t step = kind_step(kd);
    const void *wr[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) wr[r] = row_ptr(kd, w, r < nr ? r : nr - 1, ldw);
    __m512 acc[TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < TILE_ROWS; r++)
        for (int j = 0; j < mt; j++) acc[r][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + step <= n_k; k += step) {
        __m512 wv[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) wv[r] = w_load(kd, wr[r], k);
#pragma GCC unroll 6
        for (int j = 0; j < mt; j++) {
            if (kd == KIND_BF16DOT) { /* one token load serves the 4 rows */
                __m512bh xv = (__m512bh)_mm512_loadu_si512((const uint16_t *)x[j] + k);
                for (int r = 0; r < TILE_ROWS; r++)
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)_mm512_castps_si512(wv[r]), xv);
            } else {
                __m512 xv = _mm512_loadu_ps((const float *)x[j] + k);
                for (int r = 0; r < TILE_ROWS; r++) acc[r][j] = _mm512_fmadd_ps(wv[r], xv, acc[r][j]);
            }
        }
    }
    if (k < n_k) {
        __m512 wv[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) wv[r] = w_load_tail(kd, wr[r], k, n_k - k);
        for (int j = 0; j < mt; j++)
            for (int r = 0; r < TILE_ROWS; r++)
                acc[r][j] = madd_tail(kd, acc[r][j], wv[r], x[j], k, n_k - k);
    }
    /* Rows past nr repeated the last row: their sums are dropped by store_sums. */
    for (int j = 0; j < mt; j++)
        store_sums(out + j * ldo, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]),
                   scale ? scale + j : NULL, nr);
}

/* ---- row kernel: one row at a time, up to 8 tokens ---- */

/* Partial sums of row w against x[0..mt) into acc[0..mt). */
AVX512_INLINE void row(kern_kind kd, const void *w, const void *const *x, const int mt,
                       int64_t n_k, __m512 *acc) {
    const int64_t step = kind_step(kd);
    const size_t ws = kind_wsize(kd);
    __m512 a[ROW_TOKENS], a_odd = _mm512_setzero_ps();
    for (int j = 0; j < mt; j++) a[j] = _mm512_setzero_ps();
    int64_t k = 0;
    if (mt == 1) { /* two chains: one token alone would wait on the vdpbf16ps latency */
        for (; k + 2 * step <= n_k; k += 2 * step) {
            _mm_prefetch((const char *)w + (size_t)k * ws + PF_BYTES, _MM_HINT_T0);
            a[0] = madd(kd, a[0], w_load(kd, w, k), x[0], k);
            a_odd = madd(kd, a_odd, w_load(kd, w, k + step), x[0], k + step);
        }
    }
    for (; k + step <= n_k; k += step) {
        _mm_prefetch((const char *)w + (size_t)k * ws + PF_BYTES, _MM_HINT_T0);
        const __m512 wv = w_load(kd, w, k);
#pragma GCC unroll 8
        for (int j = 0; j < mt; j++) a[j] = madd(kd, a[j], wv, x[j], k);
    }
    if (k < n_k) {
        const __m512 wv = w_load_tail(kd, w, k, n_k - k);
        for (int j = 0; j < mt; j++) a[j] = madd_tail(kd, a[j], wv, x[j], k, n_k - k);
    }
    if (mt == 1) a[0] = _mm512_add_ps(a[0], a_odd);
    for (int j = 0; j < mt; j++) acc[j] = a[j];
}

AVX512_INLINE void rows4(kern_kind kd, const void *w, int64_t ldw, int nr, const void *const *x,
                         const int mt, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    __m512 acc[TILE_ROWS][ROW_TOKENS];
    for (int r = 0; r < TILE_ROWS; r++) {
        if (r < nr) row(kd, row_ptr(kd, w, r, ldw), x, mt, n_k, acc[r]);
        else
            for (int j = 0; j < mt; j++) acc[r][j] = _mm512_setzero_ps();
    }
    for (int j = 0; j < mt; j++)
        store_sums(out + j * ldo, reduce4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]),
                   scale ? scale + j : NULL, nr);
}

/* ---- drivers: one instance per kind, mt made a constant by the switch ---- */

AVX512_INLINE void dot_kind(kern_kind kd, const void *w, int64_t ldw, int64_t n_rows,
                            const void *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                            float *out, int64_t ldo) {
    if (n_tok >= TILE_MIN_TOKENS) {
        /* Token groups whose rows stay in L2; 4 rows in L1 across a group's tiles. */
        const int64_t group = cpu_token_group(n_k, kind_xsize(kd), TILE_TOKENS);
        for (int64_t j0 = 0; j0 < n_tok; j0 += group) {
            const int64_t n = j0 + group < n_tok ? group : n_tok - j0;
            const int64_t n_tiles = (n + TILE_TOKENS - 1) / TILE_TOKENS;
            for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
                const int nr = (int)(n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS);
                const void *wr = row_ptr(kd, w, r0, ldw);
                for (int64_t t = 0; t < n_tiles; t++) {
                    const int64_t ja = j0 + n * t / n_tiles, jb = j0 + n * (t + 1) / n_tiles;
                    const float *sc = scale ? scale + ja : NULL;
                    float *o = out + ja * ldo + r0;
                    switch (jb - ja) {
                    case 1: tile(kd, wr, ldw, nr, x + ja, 1, n_k, sc, o, ldo); break;
                    case 2: tile(kd, wr, ldw, nr, x + ja, 2, n_k, sc, o, ldo); break;
                    case 3: tile(kd, wr, ldw, nr, x + ja, 3, n_k, sc, o, ldo); break;
                    case 4: tile(kd, wr, ldw, nr, x + ja, 4, n_k, sc, o, ldo); break;
                    case 5: tile(kd, wr, ldw, nr, x + ja, 5, n_k, sc, o, ldo); break;
                    default: tile(kd, wr, ldw, nr, x + ja, 6, n_k, sc, o, ldo); break;
                    }
                }
            }
        }
        return;
    }
    /* Row kernel: passes of up to ROW_TOKENS tokens whose slices fit in L1;
     * blocks of rows that stay in L2 while the passes go over them. */
    int64_t mt_max = ROW_X_BYTES / (n_k * (int64_t)kind_xsize(kd));
    mt_max = mt_max > ROW_TOKENS ? ROW_TOKENS : mt_max < 1 ? 1 : mt_max;
    int64_t rb = ROW_BLOCK_BYTES / (n_k * (int64_t)kind_wsize(kd));
    rb = rb < TILE_ROWS ? TILE_ROWS : rb - rb % TILE_ROWS;
    const int64_t n_pass = (n_tok + mt_max - 1) / mt_max;
    for (int64_t rb0 = 0; rb0 < n_rows; rb0 += rb) {
        const int64_t rb1 = rb0 + rb < n_rows ? rb0 + rb : n_rows;
        for (int64_t t = 0; t < n_pass; t++) {
            const int64_t ja = n_tok * t / n_pass, jb = n_tok * (t + 1) / n_pass;
            for (int64_t r0 = rb0; r0 < rb1; r0 += TILE_ROWS) {
                const int nr = (int)(rb1 - r0 < TILE_ROWS ? rb1 - r0 : TILE_ROWS);
                const void *wr = row_ptr(kd, w, r0, ldw);
                const float *sc = scale ? scale + ja : NULL;
                float *o = out + ja * ldo + r0;
                switch (jb - ja) {
                case 1: rows4(kd, wr, ldw, nr, x + ja, 1, n_k, sc, o, ldo); break;
                case 2: rows4(kd, wr, ldw, nr, x + ja, 2, n_k, sc, o, ldo); break;
                case 3: rows4(kd, wr, ldw, nr, x + ja, 3, n_k, sc, o, ldo); break;
                case 4: rows4(kd, wr, ldw, nr, x + ja, 4, n_k, sc, o, ldo); break;
                case 5: rows4(kd, wr, ldw, nr, x + ja, 5, n_k, sc, o, ldo); break;
                case 6: rows4(kd, wr, ldw, nr, x + ja, 6, n_k, sc, o, ldo); break;
                case 7: rows4(kd, wr, ldw, nr, x + ja, 7, n_k, sc, o, ldo); break;
                default: rows4(kd, wr, ldw, nr, x + ja, 8, n_k, sc, o, ldo); break;
                }
            }
        }
    }
}

static void avx512_dot_bf16(const uint16_t *w, int64_t ldw, int64_t n_rows,
                            const uint16_t *const *x, int64_t n_tok, int64_t n_k,
                            const float *scale, float *out, int64_t ldo) {
    dot_kind(KIND_BF16DOT, w, ldw, n_rows, (const void *const *)x, n_tok, n_k, scale, out, ldo);
}

static void dot_f32w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                     int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_kind(KIND_FMA_F32W, w, ldw, n_rows, (const void *const *)x, n_tok, n_k, scale, out, ldo);
}
static void dot_bf16w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                      int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_kind(KIND_FMA_BF16W, w, ldw, n_rows, (const void *const *)x, n_tok, n_k, scale, out, ldo);
}
static void dot_f16w(const void *w, int64_t ldw, int64_t n_rows, const float *const *x,
                     int64_t n_tok, int64_t n_k, const float *scale, float *out, int64_t ldo) {
    dot_kind(KIND_FMA_F16W, w, ldw, n_rows, (const void *const *)x, n_tok, n_k, scale, out, ldo);
}

static void avx512_dot_f32(const void *w, dmoe_dtype wt, int64_t ldw, int64_t n_rows,
                           const float *const *x, int64_t n_tok, int64_t n_k, const float *scale,
                           float *out, int64_t ldo) {
    switch (wt) {
    case DMOE_DTYPE_BF16: dot_bf16w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    case DMOE_DTYPE_F16: dot_f16w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    default: dot_f32w(w, ldw, n_rows, x, n_tok, n_k, scale, out, ldo); break;
    }
}

/* ---- element-wise ---- */

/* exp(v) for v in [-87, 88] to ~1 ulp of float (Cephes expf polynomial),
 * scaled with vscalefps so the range ends are handled by the hardware. */
AVX512_INLINE __m512 exp16(__m512 v) {
    v = _mm512_max_ps(_mm512_min_ps(v, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* f32 -> bf16 with the rounding of dmoe__f32_to_bf16 (nearest even, NaN kept
 * quiet, subnormals kept), which vcvtneps2bf16 does not promise. */
AVX512_INLINE __m256i f32_to_bf16_16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

AVX512_INLINE __m256i f32_to_f16_16(__m512 v) {
    __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* NaN as dmoe__f32_to_f16 writes it: sign | 0x7e00. */
    __m512i u = _mm512_castps_si512(v);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m256i canon = _mm512_cvtepi32_epi16(_mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000)),
        _mm512_set1_epi32(0x7e00)));
    return _mm256_mask_blend_epi16(nan, h, canon);
}

static void avx512_swiglu(const float *g, const float *u, int64_t n, void *out,
                          dmoe_dtype out_dt) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i), uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 v = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), uv);
        if (out_dt == DMOE_DTYPE_BF16)
            _mm256_mask_storeu_epi16((uint16_t *)out + i, m, f32_to_bf16_16(v));
        else
            _mm512_mask_storeu_ps((float *)out + i, m, v);
    }
}

static void avx512_to_f32(const void *src, dmoe_dtype dt, float *dst, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const kern_kind kd = dt == DMOE_DTYPE_BF16 ? KIND_FMA_BF16W : KIND_FMA_F16W;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, w_load(kd, src, i));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, w_load_tail(kd, src, i, n - i));
    }
}

static void avx512_from_f32(const float *src, void *dst, dmoe_dtype dt, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, src + i);
        __m256i h = dt == DMOE_DTYPE_BF16 ? f32_to_bf16_16(v) : f32_to_f16_16(v);
        _mm256_mask_storeu_epi16((uint16_t *)dst + i, m, h);
    }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static int avx512_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

const cpu_kernels cpu_kernels_avx512 = {
    /* .name      = */ "avx512bf16",
    /* .supported = */ avx512_supported,
    /* .dot_f32   = */ avx512_dot_f32,
    /* .dot_bf16  = */ avx512_dot_bf16,
    /* .swiglu    = */ avx512_swiglu,
    /* .to_f32    = */ avx512_to_f32,
    /* .from_f32  = */ avx512_from_f32,
};

#else /* not x86 with GCC or Clang: the table exists but never runs */

static int avx512_supported(void) { return 0; }

const cpu_kernels cpu_kernels_avx512 = {
    /* .name      = */ "avx512bf16",
    /* .supported = */ avx512_supported,
    /* .dot_f32   = */ NULL,
    /* .dot_bf16  = */ NULL,
    /* .swiglu    = */ NULL,
    /* .to_f32    = */ NULL,
    /* .from_f32  = */ NULL,
};

#endif
