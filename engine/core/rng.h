/*
 * rng.h — counter-based random numbers that are identical on CPU and CUDA.
 *
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3")
 * keyed by a 64-bit seed. Element i of a tensor filled at stream offset `off`
 * uses counter (i, off): no state to carry, any element computable alone, so
 * every thread of a CUDA kernel and every CPU worker produce the same numbers.
 *
 *   uniform(i) = (philox(i).x >> 8) * 2^-24                      in [0, 1)
 *   normal(i)  = sqrt(-2 log u1) * cos(2 pi u2), u1 = (x>>8 + 1) * 2^-24, u2 = (y>>8) * 2^-24
 *
 * The normal transform is computed in double with our own log and cos built
 * only from IEEE-rounded +, *, / and sqrt (explicitly rounded on the device, so
 * no fused multiply-add can change a bit), then rounded to float: the same bits
 * on both backends, unlike libm/CUDA logf/cosf which differ in the last ulp.
 */
#ifndef QL_RNG_H
#define QL_RNG_H

#include "dtype.h"
#include <math.h>

#if defined(__CUDA_ARCH__)   /* the device pass: explicitly rounded, never fused */
#define QL_DMUL(a, b) __dmul_rn((a), (b))
#define QL_DADD(a, b) __dadd_rn((a), (b))
#else
#define QL_DMUL(a, b) ((a) * (b))
#define QL_DADD(a, b) ((a) + (b))
#endif

typedef struct ql_u32x4 { uint32_t x, y, z, w; } ql_u32x4;

QL_HD uint32_t ql_mulhilo(uint32_t a, uint32_t b, uint32_t *hi)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

QL_HD ql_u32x4 ql_philox(uint64_t seed, uint64_t counter, uint64_t stream)
{
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = ql_mulhilo(0xD2511F53u, c0, &hi0);
        uint32_t lo1 = ql_mulhilo(0xCD9E8D57u, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    ql_u32x4 out = { c0, c1, c2, c3 };
    return out;
}

QL_HD float ql_rng_uniform(uint64_t seed, uint64_t stream, uint64_t i)
{
    ql_u32x4 r = ql_philox(seed, i, stream);
    return (float)(r.x >> 8) * (1.0f / 16777216.0f);
}

/* natural log for x in (0, 1], from basic operations only */
QL_HD double ql_det_log(double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    int e = (int)((u >> 52) & 0x7ff) - 1023;
    u = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull; /* m in [1, 2) */
    double m;
    memcpy(&m, &u, 8);
    if (m > 1.4142135623730951) { m = QL_DMUL(m, 0.5); e += 1; }
    double s = (m - 1.0) / (m + 1.0), s2 = QL_DMUL(s, s);
    double p = 1.0 / 25.0;
    for (int k = 11; k >= 0; k--) p = QL_DADD(QL_DMUL(p, s2), 1.0 / (2 * k + 1));
    double lm = QL_DMUL(QL_DMUL(2.0, s), p);
    return QL_DADD(QL_DMUL((double)e, 0.6931471805599453), lm);
}

/* cos(2 pi u) for u in [0, 1), from basic operations only */
QL_HD double ql_det_cos2pi(double u)
{
    double v = QL_DMUL(u, 4.0);
    int q = (int)v;
    double f = v - (double)q;                     /* exact */
    double t = QL_DMUL(f, 1.5707963267948966), t2 = QL_DMUL(t, t);
    double c = 0.0, s = 0.0;
    /* Taylor series to t^26 / 26!, Horner form, |t| < pi/2 */
    for (int n = 26; n >= 2; n -= 2) c = QL_DMUL(QL_DADD(c, 1.0), -t2 / (double)(n * (n - 1)));
    c = QL_DADD(c, 1.0);
    for (int n = 27; n >= 3; n -= 2) s = QL_DMUL(QL_DADD(s, 1.0), -t2 / (double)(n * (n - 1)));
    s = QL_DMUL(QL_DADD(s, 1.0), t);
    switch (q & 3) {
    case 0: return c;
    case 1: return -s;
    case 2: return -c;
    default: return s;
    }
}

QL_HD float ql_rng_normal(uint64_t seed, uint64_t stream, uint64_t i)
{
    ql_u32x4 r = ql_philox(seed, i, stream);
    double u1 = (double)((r.x >> 8) + 1) * (1.0 / 16777216.0);
    double u2 = (double)(r.y >> 8) * (1.0 / 16777216.0);
    double rad = sqrt(QL_DMUL(-2.0, ql_det_log(u1)));
    return (float)QL_DMUL(rad, ql_det_cos2pi(u2));
}

#endif
