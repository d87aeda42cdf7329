/*
 * dtype.h — element types and their facts, in one traits table.
 *
 * Conversions to and from float are scalar reference code used everywhere a
 * value crosses dtypes: bf16 and f16 round to nearest even, NaN stays NaN.
 * Everything here is static inline and free of host-only calls so that CUDA
 * kernels include it too (QL_HD marks host+device functions).
 */
#ifndef QL_DTYPE_H
#define QL_DTYPE_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define QL_HD __host__ __device__ __forceinline__
#else
#define QL_HD static inline
#endif

typedef enum ql_dtype {
    QL_F32 = 0,
    QL_F16,
    QL_BF16,
    QL_I32,
    QL_I64,
    QL_U8,
    QL_NF4,    /* packed 4-bit NormalFloat, two per byte, bitsandbytes layout */
    QL_NDTYPES
} ql_dtype;

typedef struct ql_dtype_info {
    const char *name;      /* "f32" */
    const char *st_name;   /* safetensors name: "F32" */
    int bits;              /* bits per element (4 for nf4) */
    int is_float;
} ql_dtype_info;

const ql_dtype_info *ql_dtype_info_of(ql_dtype t);
const char *ql_dtype_name(ql_dtype t);
/* Accepts "f32", "float32", "bf16", "bfloat16", "F32" ...; returns 0 on success. */
int ql_dtype_parse(const char *name, ql_dtype *out);
/* Bytes for n elements (rounds nf4 up to whole bytes). */
static inline int64_t ql_dtype_bytes(ql_dtype t, int64_t n)
{
    static const int bits[QL_NDTYPES] = { 32, 16, 16, 32, 64, 8, 4 };
    return (n * bits[t] + 7) / 8;
}

QL_HD float ql_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
QL_HD uint32_t ql_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

QL_HD float ql_bf16_to_f32(uint16_t h) { return ql_bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even, as torch and the CUDA intrinsics do. */
QL_HD uint16_t ql_f32_to_bf16(float f)
{
    uint32_t u = ql_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

QL_HD float ql_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            man &= 0x3ff;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    return ql_bits_to_f32(u);
}

QL_HD uint16_t ql_f32_to_f16(float f)
{
    uint32_t u = ql_f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;          /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00;         /* overflow to inf (>= 65520) */
    if (a < 0x38800000u) {                              /* subnormal or zero in f16 */
        if (a < 0x33000000u) return sign;               /* < 2^-25 rounds to 0 */
        uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
        /* value = m * 2^(e-150); the f16 subnormal unit is 2^-24, so q = m * 2^(e-126) */
        int shift = 126 - (int)e;                       /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);        /* round mantissa to 10 bits */
    return sign | (uint16_t)((r >> 13) - ((127 - 15) << 10));
}

#endif
