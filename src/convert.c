/*
 * convert.c: scalar conversions between float32 and the 16-bit float formats
 * on the host. bf16 is inline in dmoe-impl.h; IEEE half needs more care
 * (subnormals, rounding to nearest even) and lives here.
 */
#include "dmoe-impl.h"

float dmoe__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 */
        float f = (float)mant * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (exp == 31) v.u = sign | 0x7f800000u | (mant << 13);
    else v.u = sign | ((exp + 112u) << 23) | (mant << 13);
    return v.f;
}

uint16_t dmoe__f32_to_f16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    uint32_t sign = (v.u >> 16) & 0x8000u;
    uint32_t abs = v.u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (abs < 0x38800000u) {
        /* result is subnormal or zero: round abs / 2^-24 to nearest even */
        union { uint32_t u; float f; } a;
        a.u = abs;
        float scaled = a.f * 16777216.0f; /* exact: power of two */
        uint32_t m = (uint32_t)scaled;
        float rem = scaled - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t mant = abs & 0x7fffffu;
    uint32_t exp = (abs >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

void dmoe__convert_to_f32(const void *src, dmoe_dtype dt, float *dst, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = dmoe__load_f32(src, dt, i);
}

void dmoe__convert_from_f32(const float *src, void *dst, dmoe_dtype dt, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) dmoe__store_f32(dst, dt, i, src[i]);
}
