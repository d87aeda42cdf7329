/*
 * gguf_quant.c — see gguf_quant.h. The k-quant scale searches below re-state the
 * algorithm of ggml's reference quantizer (ggml-quants.c) so that its output is
 * reproduced exactly; every float expression keeps that algorithm's operand order,
 * which is why some look redundant (w*x*l is (w*x)*l, never w*(x*l)). Do not
 * "simplify" them: a last-bit change moves a rounding and a block differs.
 */
#include "gguf_quant.h"
#include "gguf.h"
#include "dtype.h"
#include "platform.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define QK 256          /* values per k-quant super-block */
#define SUB 32          /* values per Q4_K/Q5_K sub-block */
#define TINY 1e-15f     /* a group whose largest |x| is below this quantizes to zero */

static void put_f16(uint8_t *p, float v) { uint16_t h = ql_f32_to_f16(v); p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }
static float get_f16(const uint8_t *p) { return ql_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Nearest integer, halves to even, for |v| < 2^22: adding 1.5*2^23 leaves the integer in
   the low mantissa bits (the rounding is the float addition's own). */
static inline int nearest(float v)
{
    float t = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &t, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---------------------------------------------------------------- Q4_K / Q5_K */

/* Codes q in 0..qmax for 32 values as scale*q - off (off >= 0) minimising the weighted
   squared error: start from the full range [min(x,0), max(x)], then try nstep+1 other
   code counts (qmax + rmin + rdelta*s) and keep the least-squares scale and offset of
   the best one. Returns the scale, *off the offset; q in L. */
static float fit_scale_offset(const float *x, const float *w, int qmax, float rmin, float rdelta,
                              int nstep, uint8_t *L, float *off)
{
    uint8_t trial[SUB];
    float lo = x[0], hi = x[0];
    float sw = w[0], swx = w[0] * x[0];
    for (int i = 1; i < SUB; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sw += w[i];
        swx += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, SUB);
        *off = -lo;
        return 0.0f;
    }
    float inv = qmax / (hi - lo);
    float scale = 1 / inv;
    float best = 0;
    for (int i = 0; i < SUB; i++) {
        L[i] = (uint8_t)clampi(nearest(inv * (x[i] - lo)), 0, qmax);
        float e = scale * L[i] + lo - x[i];
        best += w[i] * (e * e);
    }
    for (int s = 0; s <= nstep; s++) {
        inv = (rmin + rdelta * s + qmax) / (hi - lo);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < SUB; i++) {
            int q = clampi(nearest(inv * (x[i] - lo)), 0, qmax);
            trial[i] = (uint8_t)q;
            sl += w[i] * q;
            sl2 += w[i] * q * q;
            sxl += w[i] * q * x[i];
        }
        float det = sw * sl2 - sl * sl;
        if (!(det > 0)) continue;
        float sc = (sw * sxl - swx * sl) / det;
        float mn = (sl2 * swx - sl * sxl) / det;
        if (mn > 0) {   /* the offset may only lower values: refit the scale alone */
            mn = 0;
            sc = sxl / sl2;
        }
        float err = 0;
        for (int i = 0; i < SUB; i++) {
            float e = sc * trial[i] + mn - x[i];
            err += w[i] * (e * e);
        }
        if (err < best) {
            memcpy(L, trial, SUB);
            best = err;
            scale = sc;
            lo = mn;
        }
    }
    *off = -lo;
    return scale;
}

/* the 6-bit scale and min of sub-block j from the 12 packed bytes */
static void unpack_sm(const uint8_t *p, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = p[j] & 63;
        *mn = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0x0f) | ((p[j - 4] >> 6) << 4);
        *mn = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

/* One Q4_K (qmax 15) or Q5_K (qmax 31) super-block: per sub-block scale and offset,
   both requantized to 6 bits against the block's largest, then every value re-coded
   against the scales as stored. Writes d, dmin and scales[12] at b; codes to L. */
static void kquant_block(const float *x, int qmax, float rmin, int nstep, uint8_t *b, uint8_t *L)
{
    float scales[QK / SUB], offs[QK / SUB], w[SUB];
    float top_scale = 0, top_off = 0;
    for (int j = 0; j < QK / SUB; j++) {
        const float *xs = x + SUB * j;
        float ss = 0;
        for (int i = 0; i < SUB; i++) ss += xs[i] * xs[i];
        float rms = sqrtf(ss / SUB);
        for (int i = 0; i < SUB; i++) w[i] = rms + fabsf(xs[i]);
        scales[j] = fit_scale_offset(xs, w, qmax, rmin, 0.1f, nstep, L + SUB * j, &offs[j]);
        if (scales[j] > top_scale) top_scale = scales[j];
        if (offs[j] > top_off) top_off = offs[j];
    }
    float inv_s = top_scale > 0 ? 63.f / top_scale : 0.f;
    float inv_m = top_off > 0 ? 63.f / top_off : 0.f;
    uint8_t *sm = b + 4;
    for (int j = 0; j < QK / SUB; j++) {
        uint8_t s6 = (uint8_t)nearest(inv_s * scales[j]);   /* kept modulo 256, then capped */
        uint8_t m6 = (uint8_t)nearest(inv_m * offs[j]);
        if (s6 > 63) s6 = 63;
        if (m6 > 63) m6 = 63;
        if (j < 4) {
            sm[j] = s6;
            sm[j + 4] = m6;
        } else {
            sm[j + 4] = (uint8_t)((s6 & 0x0f) | ((m6 & 0x0f) << 4));
            sm[j - 4] |= (uint8_t)((s6 >> 4) << 6);
            sm[j] |= (uint8_t)((m6 >> 4) << 6);
        }
    }
    put_f16(b, top_scale / 63.f);
    put_f16(b + 2, top_off / 63.f);
    const float d = get_f16(b), dmin = get_f16(b + 2);
    for (int j = 0; j < QK / SUB; j++) {
        int sc, mn;
        unpack_sm(sm, j, &sc, &mn);
        const float ds = d * sc;
        if (!ds) continue;                 /* a zero scale keeps the fit's codes */
        const float dm = dmin * mn;
        for (int i = 0; i < SUB; i++)
            L[SUB * j + i] = (uint8_t)clampi(nearest((x[SUB * j + i] + dm) / ds), 0, qmax);
    }
}

void ql_gguf_quantize_q4_k(const float *x, void *out, int64_t n)
{
    uint8_t *b = out, L[QK];
    for (int64_t k = 0; k < n / QK; k++, x += QK, b += 144) {
        kquant_block(x, 15, -1.f, 20, b, L);
        uint8_t *qs = b + 16;
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) qs[32 * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
    }
}

void ql_gguf_quantize_q5_k(const float *x, void *out, int64_t n)
{
    uint8_t *b = out, L[QK];
    for (int64_t k = 0; k < n / QK; k++, x += QK, b += 176) {
        kquant_block(x, 31, -0.5f, 15, b, L);
        uint8_t *qh = b + 16, *qs = b + 48;
        memset(qh, 0, 32);
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) {
                int a = L[64 * g + l], c = L[64 * g + 32 + l];
                if (a > 15) { a -= 16; qh[l] |= (uint8_t)(1u << (2 * g)); }
                if (c > 15) { c -= 16; qh[l] |= (uint8_t)(2u << (2 * g)); }
                qs[32 * g + l] = (uint8_t)(a | (c << 4));
            }
    }
}

/* ---------------------------------------------------------------- Q6_K */

/* Signed codes q in -qmax..qmax-1 for 16 values as scale*q, weights x^2: the scale
   1/s for s = -(qmax + 0.1k)/x_absmax, k = 0, ±1..±9, that maximises (Σw·x·q)²/Σw·q²,
   refined to the least-squares scale. Codes stored as q + qmax in L. */
static float fit_scale_sym(const float *x, int qmax, int8_t *L)
{
    enum { N = 16 };
    float big = 0, amax = 0;
    for (int i = 0; i < N; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; big = x[i]; }
    }
    if (amax < TINY) {
        memset(L, 0, N);
        return 0.f;
    }
    float inv = -qmax / big;
    float sxl = 0, sll = 0;
    for (int i = 0; i < N; i++) {
        int q = clampi(nearest(inv * x[i]), -qmax, qmax - 1);
        L[i] = (int8_t)(q + qmax);
        float w = x[i] * x[i];
        sxl += w * x[i] * q;
        sll += w * q * q;
    }
    float scale = sll ? sxl / sll : 0.0f;
    float best = scale * sxl;
    for (int k = -9; k <= 9; k++) {
        if (!k) continue;
        inv = -(qmax + 0.1f * k) / big;
        sxl = sll = 0;
        for (int i = 0; i < N; i++) {
            int q = clampi(nearest(inv * x[i]), -qmax, qmax - 1);
            float w = x[i] * x[i];
            sxl += w * x[i] * q;
            sll += w * q * q;
        }
        if (sll > 0 && sxl * sxl > best * sll) {
            for (int i = 0; i < N; i++) L[i] = (int8_t)(qmax + clampi(nearest(inv * x[i]), -qmax, qmax - 1));
            scale = sxl / sll;
            best = scale * sxl;
        }
    }
    return scale;
}

void ql_gguf_quantize_q6_k(const float *x, void *out, int64_t n)
{
    uint8_t *b = out;
    int8_t L[QK];
    float scales[QK / 16];
    for (int64_t k = 0; k < n / QK; k++, x += QK, b += 210) {
        float top = 0, top_abs = 0;
        for (int j = 0; j < QK / 16; j++) {
            scales[j] = fit_scale_sym(x + 16 * j, 32, L + 16 * j);
            float a = fabsf(scales[j]);
            if (a > top_abs) { top_abs = a; top = scales[j]; }
        }
        if (top_abs < TINY) {   /* all (near) zero: an all-zero block */
            memset(b, 0, 210);
            continue;
        }
        uint8_t *ql = b, *qh = b + 128, *d16 = b + 208;
        int8_t *sc = (int8_t *)(b + 192);
        float inv = -128.f / top;
        put_f16(d16, 1 / inv);
        for (int j = 0; j < QK / 16; j++) {
            int v = nearest(inv * scales[j]);
            sc[j] = (int8_t)(v < 127 ? v : 127);
        }
        const float d = get_f16(d16);
        for (int j = 0; j < QK / 16; j++) {
            const float ds = d * sc[j];
            if (!ds) continue;
            for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(nearest(x[16 * j + i] / ds), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++) {
            const int8_t *q = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[64 * h + l] = (uint8_t)((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                ql[64 * h + 32 + l] = (uint8_t)((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                qh[32 * h + l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                           ((q[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ---------------------------------------------------------------- Q5_0 / Q5_1 */

static void put_q5(uint8_t *qh4, uint8_t *qs, const uint8_t *q)
{
    uint32_t hi = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
        hi |= (uint32_t)((q[j] >> 4) & 1) << j;
        hi |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int i = 0; i < 4; i++) qh4[i] = (uint8_t)(hi >> (8 * i));
}

/* d = x_absmax / -16 (the value of largest magnitude becomes code 0), codes x/d + 16 */
void ql_gguf_quantize_q5_0(const float *x, void *out, int64_t n)
{
    uint8_t *b = out, q[32];
    for (int64_t k = 0; k < n / 32; k++, x += 32, b += 22) {
        float amax = 0, big = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); big = x[j]; }
        const float d = big / -16;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(b, d);
        for (int j = 0; j < 32; j++) {
            int v = (int)(x[j] * id + 16.5f);   /* truncation, as the reference */
            q[j] = (uint8_t)(v < 31 ? v : 31);
        }
        put_q5(b + 2, b + 6, q);
    }
}

/* d = (max - min)/31, m = min, codes (x - min)/d rounded half up */
void ql_gguf_quantize_q5_1(const float *x, void *out, int64_t n)
{
    uint8_t *b = out, q[32];
    for (int64_t k = 0; k < n / 32; k++, x += 32, b += 24) {
        float lo = FLT_MAX, hi = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (x[j] < lo) lo = x[j];
            if (x[j] > hi) hi = x[j];
        }
        const float d = (hi - lo) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        put_f16(b, d);
        put_f16(b + 2, lo);
        for (int j = 0; j < 32; j++) q[j] = (uint8_t)(int)((x[j] - lo) * id + 0.5f);
        put_q5(b + 4, b + 8, q);
    }
}

/* ---------------------------------------------------------------- dispatch */

int ql_gguf_type_supported(uint32_t type)
{
    switch (type) {
    case QL_GGML_F32: case QL_GGML_F16: case QL_GGML_BF16: case QL_GGML_Q8_0:
    case QL_GGML_Q4_K: case QL_GGML_Q5_K: case QL_GGML_Q6_K: case QL_GGML_Q5_0: case QL_GGML_Q5_1:
        return 1;
    }
    return 0;
}

typedef struct { void (*fn)(const float *, void *, int64_t); const float *x; uint8_t *o; uint32_t block, bytes; } qjob;

static void quantize_range(void *arg, int64_t b0, int64_t b1)
{
    const qjob *j = arg;
    j->fn(j->x + b0 * j->block, j->o + b0 * j->bytes, (b1 - b0) * j->block);
}

size_t ql_gguf_quantize(uint32_t type, const float *x, void *out, int64_t n)
{
    uint32_t block, bytes;
    if (!ql_gguf_type_supported(type) || !ql_ggml_type_block(type, &block, &bytes) || n % block) return 0;
    uint8_t *o = out;
    /* the searching quantizers on all cores, blocks being independent (the bytes do not
       depend on the split) */
    void (*fn)(const float *, void *, int64_t) = type == QL_GGML_Q4_K ? ql_gguf_quantize_q4_k
        : type == QL_GGML_Q5_K ? ql_gguf_quantize_q5_k : type == QL_GGML_Q6_K ? ql_gguf_quantize_q6_k : NULL;
    if (fn) {
        qjob j = { fn, x, o, block, bytes };
        ql_parallel_for(n / block, 8, quantize_range, &j);
        return (size_t)(n / block) * bytes;
    }
    switch (type) {
    case QL_GGML_F32: memcpy(o, x, (size_t)n * 4); break;
    case QL_GGML_F16: for (int64_t i = 0; i < n; i++) put_f16(o + 2 * i, x[i]); break;
    case QL_GGML_BF16:
        for (int64_t i = 0; i < n; i++) { uint16_t h = ql_f32_to_bf16(x[i]); o[2 * i] = (uint8_t)h; o[2 * i + 1] = (uint8_t)(h >> 8); }
        break;
    case QL_GGML_Q8_0: ql_gguf_quantize_q8_0(x, o, n); break;
    case QL_GGML_Q4_K: ql_gguf_quantize_q4_k(x, o, n); break;
    case QL_GGML_Q5_K: ql_gguf_quantize_q5_k(x, o, n); break;
    case QL_GGML_Q6_K: ql_gguf_quantize_q6_k(x, o, n); break;
    case QL_GGML_Q5_0: ql_gguf_quantize_q5_0(x, o, n); break;
    case QL_GGML_Q5_1: ql_gguf_quantize_q5_1(x, o, n); break;
    }
    return (size_t)(n / block) * bytes;
}

static void dq_kq(const uint8_t *b, int five, float *y)
{
    const float d = get_f16(b), dmin = get_f16(b + 2);
    const uint8_t *sm = b + 4, *qh = five ? b + 16 : NULL, *qs = b + (five ? 48 : 16);
    for (int g = 0; g < 4; g++) {
        int s0, m0, s1, m1;
        unpack_sm(sm, 2 * g, &s0, &m0);
        unpack_sm(sm, 2 * g + 1, &s1, &m1);
        const float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
        for (int l = 0; l < 32; l++) {
            int a = qs[32 * g + l] & 0x0f, c = qs[32 * g + l] >> 4;
            if (qh) {
                a += (qh[l] >> (2 * g) & 1) << 4;
                c += (qh[l] >> (2 * g + 1) & 1) << 4;
            }
            y[64 * g + l] = d0 * a - o0;
            y[64 * g + 32 + l] = d1 * c - o1;
        }
    }
}

static void dq_q6k(const uint8_t *b, float *y)
{
    const float d = get_f16(b + 208);
    const int8_t *sc = (const int8_t *)(b + 192);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        float *o = y + 128 * h;
        const int8_t *s = sc + 8 * h;
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            int q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            o[l] = d * s[is] * q1;
            o[l + 32] = d * s[is + 2] * q2;
            o[l + 64] = d * s[is + 4] * q3;
            o[l + 96] = d * s[is + 6] * q4;
        }
    }
}

static void dq_q5(const uint8_t *b, int has_min, float *y)
{
    const float d = get_f16(b), m = has_min ? get_f16(b + 2) : 0.0f;
    const uint8_t *qh4 = b + (has_min ? 4 : 2), *qs = qh4 + 4;
    uint32_t hi = (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 | (uint32_t)qh4[3] << 24;
    for (int j = 0; j < 16; j++) {
        int a = (qs[j] & 0x0f) | (int)((hi >> j & 1) << 4);
        int c = (qs[j] >> 4) | (int)((hi >> (j + 16) & 1) << 4);
        if (has_min) { y[j] = a * d + m; y[j + 16] = c * d + m; }
        else { y[j] = (a - 16) * d; y[j + 16] = (c - 16) * d; }
    }
}

int ql_gguf_dequantize(uint32_t type, const void *in, float *y, int64_t n)
{
    uint32_t block, bytes;
    if (!ql_gguf_type_supported(type) || !ql_ggml_type_block(type, &block, &bytes) || n % block) return 0;
    const uint8_t *p = in;
    for (int64_t k = 0; k < n / block; k++, p += bytes, y += block) {
        uint16_t h;
        switch (type) {
        case QL_GGML_F32: memcpy(y, p, 4); break;
        case QL_GGML_F16: memcpy(&h, p, 2); y[0] = ql_f16_to_f32(h); break;
        case QL_GGML_BF16: memcpy(&h, p, 2); y[0] = ql_bf16_to_f32(h); break;
        case QL_GGML_Q8_0: {
            const float d = get_f16(p);
            for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)p[2 + j];
            break;
        }
        case QL_GGML_Q4_K: dq_kq(p, 0, y); break;
        case QL_GGML_Q5_K: dq_kq(p, 1, y); break;
        case QL_GGML_Q6_K: dq_q6k(p, y); break;
        case QL_GGML_Q5_0: dq_q5(p, 0, y); break;
        case QL_GGML_Q5_1: dq_q5(p, 1, y); break;
        }
    }
    return 1;
}
