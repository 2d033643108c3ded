/*
 * test-convert: the host conversions between float32 and bf16 / f16
 * (dmoe__f32_to_bf16, dmoe__bf16_to_f32, dmoe__f32_to_f16,
 * dmoe__f16_to_f32 and the array forms), against oracles written here from
 * the definitions rather than from bit tricks:
 *  - every one of the 65536 bf16 and f16 encodings widens to the value its
 *    fields define (ldexp of the significand) and narrows back to itself;
 *  - narrowing rounds to nearest, ties to even: checked at every midpoint
 *    between adjacent 16-bit values (and one float32 ulp either side), at
 *    the overflow threshold, through the subnormal range, and on a million
 *    random float32 bit patterns; the oracle finds the two neighbours by
 *    binary search over the decoded values and compares distances in double;
 *  - NaN stays NaN (sign kept), +-inf stay +-inf, -0 stays -0.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dmoe-impl.h"
#include "test-util.h"

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The value of a 16-bit float with exp_bits exponent bits and man_bits
 * significand bits, by definition. */
static double decode16(uint16_t h, int exp_bits, int man_bits) {
    const int bias = (1 << (exp_bits - 1)) - 1;
    const uint32_t e = (h >> man_bits) & ((1u << exp_bits) - 1), m = h & ((1u << man_bits) - 1);
    const double sign = (h >> 15) ? -1.0 : 1.0;
    if (e == (1u << exp_bits) - 1) return m ? NAN : sign * INFINITY;
    if (e == 0) return sign * ldexp((double)m, 1 - bias - man_bits);
    return sign * ldexp((double)((1u << man_bits) | m), (int)e - bias - man_bits);
}

typedef struct fmt16 {
    const char *name;
    int exp_bits, man_bits;
    double finite[0x7f80]; /* decoded positive finite values, ascending (bf16 has 0x7f80) */
    uint16_t code[0x7f80];
    int n;
} fmt16;

static fmt16 bf16_fmt = {"bf16", 8, 7, {0}, {0}, 0};
static fmt16 f16_fmt = {"f16", 5, 10, {0}, {0}, 0};

static void fmt_init(fmt16 *f) {
    f->n = 0;
    for (uint32_t h = 0; h < 0x8000u; h++) {
        double v = decode16((uint16_t)h, f->exp_bits, f->man_bits);
        if (!isfinite(v)) break; /* positive codes ascend until inf */
        f->finite[f->n] = v;
        f->code[f->n] = (uint16_t)h;
        f->n++;
    }
}

/* Round-to-nearest-even of v (finite or not) to the format, by search. */
static uint16_t oracle_round(const fmt16 *f, double v) {
    const uint16_t inf_code = (uint16_t)(((1u << f->exp_bits) - 1) << f->man_bits);
    if (isnan(v)) return 0x7fff; /* caller only checks NaN-ness */
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    double a = fabs(v);
    const double max = f->finite[f->n - 1];
    /* The next value after max would be 2^(emax+1); halfway rounds to it (even). */
    const double above = ldexp(1.0, (1 << (f->exp_bits - 1)));
    if (a >= (max + above) / 2) return sign | inf_code;
    int lo = 0, hi = f->n - 1; /* largest index with finite[idx] <= a */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (f->finite[mid] <= a) lo = mid;
        else hi = mid - 1;
    }
    if (f->finite[lo] == a || lo == f->n - 1) return sign | f->code[lo];
    double d_lo = a - f->finite[lo], d_hi = f->finite[lo + 1] - a;
    int up = d_hi < d_lo || (d_hi == d_lo && (f->code[lo] & 1));
    return sign | f->code[up ? lo + 1 : lo];
}

static int n_reported;

static void check_narrow(const fmt16 *f, uint16_t (*narrow)(float), float v) {
    uint16_t got = narrow(v), want = oracle_round(f, (double)v);
    int ok;
    if (isnan(v)) ok = isnan(decode16(got, f->exp_bits, f->man_bits)) && (got >> 15) == (signbit(v) ? 1 : 0);
    else ok = got == want;
    tu_n_checked++;
    if (!ok) {
        if (n_reported++ < 20)
            tu_fail_at(__FILE__, __LINE__, "%s(%.9g = 0x%08x) = 0x%04x, expected 0x%04x", f->name,
                       (double)v, (unsigned)bits_of(v), (unsigned)got, (unsigned)want);
        else
            tu_n_failed++;
    }
}

static uint16_t narrow_bf16(float v) { return dmoe__f32_to_bf16(v); }
static uint16_t narrow_f16(float v) { return dmoe__f32_to_f16(v); }
static float widen_bf16(uint16_t h) { return dmoe__bf16_to_f32(h); }
static float widen_f16(uint16_t h) { return dmoe__f16_to_f32(h); }

static void check_format(const fmt16 *f, uint16_t (*narrow)(float), float (*widen)(uint16_t),
                         tu_rng *rng) {
    printf("  %s: %d positive finite values\n", f->name, f->n);
    /* Every encoding: widen by definition, narrow back to itself. */
    for (uint32_t h = 0; h <= 0xffffu; h++) {
        double want = decode16((uint16_t)h, f->exp_bits, f->man_bits);
        float w = widen((uint16_t)h);
        if (isnan(want)) {
            TU_CHECKF(isnan(w) && !!signbit(w) == !!(h >> 15), "%s widen(0x%04x) = %g, expected NaN",
                      f->name, (unsigned)h, (double)w);
            uint16_t back = narrow(w);
            TU_CHECKF(isnan(decode16(back, f->exp_bits, f->man_bits)) && (back >> 15) == (h >> 15),
                      "%s NaN 0x%04x narrows to 0x%04x", f->name, (unsigned)h, (unsigned)back);
            continue;
        }
        TU_CHECKF((double)w == want && !!signbit(w) == !!(h >> 15),
                  "%s widen(0x%04x) = %.9g, expected %.9g", f->name, (unsigned)h, (double)w, want);
        uint16_t back = narrow(w);
        TU_CHECKF(back == h, "%s round trip 0x%04x -> %.9g -> 0x%04x", f->name, (unsigned)h,
                  (double)w, (unsigned)back);
    }
    /* Every midpoint between neighbours, and the float32 values either side. */
    for (int i = 0; i + 1 < f->n; i++) {
        double mid = (f->finite[i] + f->finite[i + 1]) / 2;
        float m = (float)mid;
        TU_CHECKF((double)m == mid, "%s midpoint %.17g is not a float32", f->name, mid);
        for (int s = 0; s < 2; s++) {
            float v = s ? -m : m;
            check_narrow(f, narrow, v);
            check_narrow(f, narrow, nextafterf(v, INFINITY));
            check_narrow(f, narrow, nextafterf(v, -INFINITY));
        }
    }
    /* Around the overflow threshold and the top of the range. */
    const double max = f->finite[f->n - 1];
    const double thresh = (max + ldexp(1.0, 1 << (f->exp_bits - 1))) / 2;
    float specials[] = {(float)max, nextafterf((float)thresh, 0.0f), (float)thresh,
                        nextafterf((float)thresh, INFINITY), FLT_MAX, INFINITY, -INFINITY,
                        0.0f, -0.0f, FLT_MIN, -FLT_MIN, f32_from_bits(1), f32_from_bits(0x80000001u),
                        f32_from_bits(0x007fffffu), 1.0f, -1.0f, NAN, -NAN, 65504.0f, 65519.0f,
                        65520.0f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 8.940697e-8f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        check_narrow(f, narrow, specials[i]);
    TU_CHECK(narrow(INFINITY) == (uint16_t)(((1u << f->exp_bits) - 1) << f->man_bits));
    TU_CHECK(narrow(-0.0f) == 0x8000);
    /* A million random bit patterns, and a sweep through the small numbers. */
    for (int i = 0; i < 1000000; i++) check_narrow(f, narrow, f32_from_bits((uint32_t)tu_rand_u64(rng)));
    for (uint32_t u = 0x33000000u; u < 0x39000000u; u += 0x1001u) check_narrow(f, narrow, f32_from_bits(u));
}

static void check_arrays(tu_rng *rng) {
    enum { N = 1000 };
    float src[N], back[N];
    uint16_t h[N];
    for (int i = 0; i < N; i++) src[i] = (float)tu_rand_range(rng, -1e5, 1e5) * (i % 3 ? 1e-4f : 1.0f);
    src[0] = NAN;
    src[1] = INFINITY;
    const dmoe_dtype dts[] = {DMOE_DTYPE_BF16, DMOE_DTYPE_F16, DMOE_DTYPE_F32};
    for (int d = 0; d < 3; d++) {
        float f32buf[N];
        void *dst = dts[d] == DMOE_DTYPE_F32 ? (void *)f32buf : (void *)h;
        dmoe__convert_from_f32(src, dst, dts[d], N);
        dmoe__convert_to_f32(dst, dts[d], back, N);
        for (int i = 0; i < N; i++) {
            float want = dts[d] == DMOE_DTYPE_BF16  ? dmoe__bf16_to_f32(dmoe__f32_to_bf16(src[i]))
                         : dts[d] == DMOE_DTYPE_F16 ? dmoe__f16_to_f32(dmoe__f32_to_f16(src[i]))
                                                    : src[i];
            TU_CHECKF(memcmp(&back[i], &want, sizeof want) == 0 || (isnan(want) && isnan(back[i])),
                      "%s array conversion [%d]: %g, scalar gives %g", dmoe_dtype_name(dts[d]), i,
                      (double)back[i], (double)want);
        }
    }
}

int main(void) {
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    fmt_init(&bf16_fmt);
    fmt_init(&f16_fmt);
    TU_CHECK(bf16_fmt.n == 0x7f80 && f16_fmt.n == 0x7c00);
    check_format(&bf16_fmt, narrow_bf16, widen_bf16, &rng);
    check_format(&f16_fmt, narrow_f16, widen_f16, &rng);
    check_arrays(&rng);
    return tu_finish("test-convert");
}
