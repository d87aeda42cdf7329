/*
 * nf4.c — NF4 quantization, the CPU reference (see nf4.h for the layout).
 *
 * Every rounding step mirrors bitsandbytes 0.50 on the CPU, which is:
 *   4-bit part   torch ops (backends/default quantize_4bit): absmax = max|x|;
 *                full blocks scale by x * fl(1/max(absmax, 1e-38f)), the ragged
 *                last block by x / max(absmax, 1e-38f) and stores the clamped
 *                absmax; nibble = number of fp32 midpoints (c[i]+c[i+1])/2 that
 *                are strictly below the scaled value (torch.bucketize); an odd n
 *                is padded with 0.0 (nibble 7).
 *   offset       torch's CPU mean: cascade sum (ql_nf4_torch_mean) / n.
 *   8-bit part   libbitsandbytes_cpu quantize_cpu_impl: per 256-block
 *                m = max|v|; m == 0 -> all indices 0; else
 *                k = (uint16)(int)fmaf(fl(fl(clamp(v * fl(1/m)) + 1) * 0.5), 65535, 0.5)
 *                and index = lut[k], lut[k] = number of midpoints
 *                fl(0.5 * (c[i]+c[i+1])) below fl(fl(2k) / 65535) - 1.
 *                (The fmaf is in bitsandbytes' binary: GCC contracted it.)
 * This file must be compiled without floating-point contraction (-std=c11
 * implies -ffp-contract=off on GCC; clang defaults to on-in-expression only
 * with FP_CONTRACT, so the places that must fuse call ql_fmaf explicitly (a
 * correctly rounded fma of our own, below: C libraries' fmaf are not all correct)
 * and the other expressions are split into separate statements).
 */
#include "nf4.h"
#include "platform.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NESTED QL_NF4_NESTED_BLOCKSIZE
#define LUT_SIZE 65536

static const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

void ql_nf4_code(float out[16]) { memcpy(out, NF4_CODE, sizeof NF4_CODE); }

/* torch: bounds = (code[:-1] + code[1:]) / 2 in fp32 */
static void nf4_bounds(float b[15])
{
    for (int i = 0; i < 15; i++) {
        float s = NF4_CODE[i] + NF4_CODE[i + 1];
        b[i] = s / 2.0f;
    }
}

/* torch.bucketize(v, bounds, right=False): the number of bounds strictly
   below v; the bounds are ascending, so a branchless 4-step search gives it. */
static inline int nf4_bucket(const float b[15], float v)
{
    int q = (v > b[7]) << 3;
    q += (v > b[q + 3]) << 2;
    q += (v > b[q + 1]) << 1;
    q += v > b[q];
    return q;
}

uint16_t ql_nf4_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* ---------------------------------------------------------------- tables */

/* torch.linspace(start, end, steps, dtype=float32) as torch's CPU build
   computes it: step = (end - start) / (steps - 1); below halfway
   start + step*idx, above end - step*(steps - idx - 1), each as one fused
   multiply-add (the compiler contracted them; checked against torch for every
   step count used here). */
static void torch_linspace_f32(float start, float end, int steps, float *out)
{
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2;
    for (int idx = 0; idx < steps; idx++)
        out[idx] = idx < half ? ql_fmaf(step, (float)idx, start)
                              : ql_fmaf(-step, (float)(steps - idx - 1), end);
}

float ql_fmaf(float a, float b, float c)
{
    double p = (double)a * (double)b;   /* exact: two 24-bit significands fit in 53 bits */
    double s = p + (double)c;
    if (!isfinite(s)) return (float)s;
    /* the addition's rounding error (Knuth's TwoSum): 0 when s is exact */
    double bv = s - p, err = (p - (s - bv)) + ((double)c - bv);
    if (err != 0.0) {
        /* round to odd: an inexact sum gets an odd last bit, one ulp toward the exact value, so
           that rounding it to float (24 bits, 53 >= 24 + 2) rounds the exact value correctly */
        uint64_t u;
        memcpy(&u, &s, sizeof u);
        if (!(u & 1)) {
            u += (err > 0) == (s > 0) ? 1 : (uint64_t)-1;
            memcpy(&s, &u, sizeof s);
        }
    }
    return (float)s;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void ql_nf4_dynamic_map(float out[256])
{
    /* create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
       for i in 0..6: 2^i + 1 boundaries in [0.1, 1]; means of neighbours
       times 10^(i-6), both signs; then 0 and 1; sorted. */
    int k = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        float bnd[65], scale = (float)pow(10.0, (double)(i - 6));
        torch_linspace_f32(0.1f, 1.0f, items, bnd);
        for (int j = 0; j + 1 < items; j++) {
            float s = bnd[j] + bnd[j + 1];
            float mean = s / 2.0f;
            float v = scale * mean;
            out[k++] = v;
            out[k++] = -v;
        }
    }
    out[k++] = 0.0f;
    out[k++] = 1.0f;
    qsort(out, 256, sizeof(float), cmp_float);
}

/* ---------------------------------------------------------------- torch mean */

/* c10::utils::CeilLog2 */
static int64_t ceil_log2(int64_t x)
{
    if (x <= 2) return 1;
    uint64_t v = (uint64_t)x - 1;
    int last = 63;
    while (!(v >> last)) last--;
    return last + 1;
}

#define LANES 8 /* Vectorized<float>::size() with AVX2 */
typedef struct { float v[LANES]; } vec8;

static inline void vadd(vec8 *a, const vec8 *b) { for (int l = 0; l < LANES; l++) a->v[l] += b->v[l]; }

/* multi_row_sum over `size` rows of 4 consecutive items each, items being
   vectors of `w` lanes (w = LANES or 1) starting at x, row stride 4*w. */
static void multi_row_sum(const float *x, int64_t size, int w, vec8 out[4])
{
    enum { LEVELS = 4 };
    int64_t level_power = ceil_log2(size) / LEVELS;
    if (level_power < 4) level_power = 4;
    int64_t level_step = (int64_t)1 << level_power, level_mask = level_step - 1;
    vec8 acc[LEVELS][4];
    memset(acc, 0, sizeof acc);
    int64_t i = 0;
    for (; i + level_step <= size;) {
        for (int64_t j = 0; j < level_step; ++j, ++i)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < w; l++) acc[0][k].v[l] += x[(i * 4 + k) * w + l];
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < 4; k++) { vadd(&acc[j][k], &acc[j - 1][k]); memset(&acc[j - 1][k], 0, sizeof(vec8)); }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < size; ++i)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < w; l++) acc[0][k].v[l] += x[(i * 4 + k) * w + l];
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < 4; k++) vadd(&acc[0][k], &acc[j][k]);
    for (int k = 0; k < 4; k++) out[k] = acc[0][k];
}

/* row_sum: items of w lanes, ilp factor 4 */
static vec8 row_sum(const float *x, int64_t nitems, int w)
{
    vec8 p[4];
    int64_t size_ilp = nitems / 4;
    multi_row_sum(x, size_ilp, w, p);
    for (int64_t i = size_ilp * 4; i < nitems; i++)
        for (int l = 0; l < w; l++) p[0].v[l] += x[i * w + l];
    for (int k = 1; k < 4; k++) vadd(&p[0], &p[k]);
    return p[0];
}

static float cascade_sum(const float *x, int64_t n)
{
    if (n >= LANES) {                         /* vectorized_inner_sum */
        int64_t nvec = n / LANES;
        vec8 acc = row_sum(x, nvec, LANES);
        float sum = 0.0f;
        for (int64_t k = nvec * LANES; k < n; k++) sum += x[k];
        for (int l = 0; l < LANES; l++) sum += acc.v[l];
        return sum;
    }
    return row_sum(x, n, 1).v[0];             /* scalar_inner_sum */
}

float ql_nf4_torch_mean_threads(const float *x, int64_t n, int torch_threads)
{
    enum { GRAIN = 32768 };                   /* at::internal::GRAIN_SIZE */
    if (n <= 0) return NAN;
    float sum;
    if (n < GRAIN || torch_threads <= 1) {
        sum = cascade_sum(x, n);
    } else {                                  /* two_pass_reduction over at::parallel_for chunks */
        float part[256] = { 0 };
        int64_t nt = torch_threads > 256 ? 256 : torch_threads;
        int64_t used = (n + GRAIN - 1) / GRAIN < nt ? (n + GRAIN - 1) / GRAIN : nt;
        int64_t chunk = (n + used - 1) / used;
        for (int64_t t = 0; t < used && t * chunk < n; t++) {
            int64_t e = (t + 1) * chunk < n ? (t + 1) * chunk : n;
            part[t] = cascade_sum(x + t * chunk, e - t * chunk);
        }
        sum = cascade_sum(part, nt);
    }
    return sum / (float)n;
}

float ql_nf4_torch_mean(const float *x, int64_t n) { return ql_nf4_torch_mean_threads(x, n, 1); }

/* ---------------------------------------------------------------- validation */

static int blocksize_ok(int bs)
{
    return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0;
}

ql_status ql_nf4_validate(const ql_nf4 *q)
{
    if (!q) return ql_fail(QL_EINVAL, "nf4: NULL quantized weight");
    if (!blocksize_ok(q->blocksize))
        return ql_fail(QL_EINVAL, "nf4: blocksize %d is not one of 32, 64, ..., 4096", q->blocksize);
    if (q->rows < 0 || q->cols < 0 || q->n != q->rows * q->cols)
        return ql_fail(QL_EINVAL, "nf4: shape [%lld, %lld] does not match n = %lld",
                       (long long)q->rows, (long long)q->cols, (long long)q->n);
    if (q->nblocks != (q->n + q->blocksize - 1) / q->blocksize)
        return ql_fail(QL_EINVAL, "nf4: nblocks %lld, expected ceil(%lld / %d)",
                       (long long)q->nblocks, (long long)q->n, q->blocksize);
    if (q->n == 0) return QL_OK;
    if (!q->packed) return ql_fail(QL_EINVAL, "nf4: packed data missing");
    if (q->double_quant) {
        if (q->nested_blocksize != NESTED)
            return ql_fail(QL_EINVAL, "nf4: nested_blocksize %d, only 256 is supported", q->nested_blocksize);
        if (q->nested_nblocks != (q->nblocks + NESTED - 1) / NESTED)
            return ql_fail(QL_EINVAL, "nf4: nested_nblocks %lld, expected ceil(%lld / 256)",
                           (long long)q->nested_nblocks, (long long)q->nblocks);
        if (!q->absmax_q || !q->nested_absmax)
            return ql_fail(QL_EINVAL, "nf4: double quantization needs absmax (u8) and nested_absmax");
    } else if (!q->absmax) {
        return ql_fail(QL_EINVAL, "nf4: absmax missing");
    }
    return QL_OK;
}

void ql_nf4_free(ql_nf4 *q)
{
    if (!q) return;
    if (q->owned) {
        free(q->packed);
        free(q->absmax);
        free(q->absmax_q);
        free(q->nested_absmax);
    }
    memset(q, 0, sizeof *q);
}

/* ---------------------------------------------------------------- quantize */

typedef struct {
    const float *x;
    int64_t n;
    int bs;
    float bounds[15];
    uint8_t *packed;
    float *absmax;
} quant4_job;

static void quant4_task(void *arg, int64_t b0, int64_t b1)
{
    quant4_job *j = arg;
    const float *x = j->x;
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * j->bs, e = s + j->bs;
        int ragged = e > j->n;
        if (ragged) e = j->n;
        float m = 0.0f;
        int bad = 0;
        for (int64_t i = s; i < e; i++) {
            float a = fabsf(x[i]);
            bad |= !(a <= FLT_MAX);
            m = a > m ? a : m;
        }
        if (bad) { j->absmax[b] = NAN; continue; }
        float mc = m > 1e-38f ? m : 1e-38f;   /* absmax.clamp(min=1e-38) */
        float inv = 1.0f / mc;
        j->absmax[b] = ragged ? mc : m;
        if (!ragged) {                        /* the hot loop: whole bytes */
            for (int64_t i = s; i < e; i += 2) {
                float v0 = x[i] * inv, v1 = x[i + 1] * inv;
                j->packed[i >> 1] = (uint8_t)(nf4_bucket(j->bounds, v0) << 4 | nf4_bucket(j->bounds, v1));
            }
            continue;
        }
        for (int64_t i = s; i < e; i += 2) {
            float v0 = ragged ? x[i] / mc : x[i] * inv;
            int hi = nf4_bucket(j->bounds, v0), lo = 7;   /* pad: 0.0 -> 7 */
            if (i + 1 < e) {
                float v1 = ragged ? x[i + 1] / mc : x[i + 1] * inv;
                lo = nf4_bucket(j->bounds, v1);
            }
            j->packed[i >> 1] = (uint8_t)(hi << 4 | lo);
        }
    }
}

/* bitsandbytes' CPU 8-bit LUT over [-1, 1] for the code c[256] */
static void build_lut(const float c[256], uint8_t *lut)
{
    float mid[255];
    for (int i = 0; i < 255; i++) {
        float s = c[i] + c[i + 1];
        mid[i] = 0.5f * s;
    }
    int idx = 0;
    for (int k = 0; k < LUT_SIZE; k++) {
        float t = (float)(2 * k);
        float v = t / 65535.0f;
        v = v - 1.0f;
        while (idx < 255 && mid[idx] < v) idx++;
        lut[k] = (uint8_t)idx;
    }
}

typedef struct {
    const float *d;       /* absmax - offset [nb] */
    int64_t nb;
    const uint8_t *lut;
    uint8_t *absmax_q;
    float *nested_absmax;
} quant8_job;

static void quant8_task(void *arg, int64_t b0, int64_t b1)
{
    quant8_job *j = arg;
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * NESTED, e = s + NESTED < j->nb ? s + NESTED : j->nb;
        float m = 0.0f;
        for (int64_t i = s; i < e; i++) {
            float a = fabsf(j->d[i]);
            m = a > m ? a : m;
        }
        j->nested_absmax[b] = m;
        if (m == 0.0f) { memset(j->absmax_q + s, 0, (size_t)(e - s)); continue; }
        float inv = 1.0f / m;
        for (int64_t i = s; i < e; i++) {
            float v = j->d[i] * inv;
            v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
            float t = v + 1.0f;
            t = t * 0.5f;
            float f = ql_fmaf(t, 65535.0f, 0.5f);
            uint16_t k = (uint16_t)(int32_t)f;
            j->absmax_q[i] = j->lut[k];
        }
    }
}

ql_status ql_nf4_quantize(ql_nf4 *out, const float *x, int64_t rows, int64_t cols,
                          int blocksize, int double_quant)
{
    if (!out) return ql_fail(QL_EINVAL, "nf4 quantize: NULL output");
    memset(out, 0, sizeof *out);
    if (!blocksize_ok(blocksize))
        return ql_fail(QL_EINVAL, "nf4 quantize: blocksize %d is not allowed: use 32, 64, 128, 256, "
                       "512, 1024, 2048 or 4096 (64 is bitsandbytes' default)", blocksize);
    if (rows < 0 || cols < 0)
        return ql_fail(QL_EINVAL, "nf4 quantize: negative shape [%lld, %lld]", (long long)rows, (long long)cols);
    if (cols > 0 && rows > (INT64_MAX / 4) / cols)
        return ql_fail(QL_EINVAL, "nf4 quantize: shape [%lld, %lld] overflows", (long long)rows, (long long)cols);
    int64_t n = rows * cols;
    if ((uint64_t)n > (uint64_t)SIZE_MAX / 8)
        return ql_fail(QL_EINVAL, "nf4 quantize: %lld elements do not fit in memory", (long long)n);
    if (n > 0 && !x) return ql_fail(QL_EINVAL, "nf4 quantize: NULL input");

    out->n = n; out->rows = rows; out->cols = cols; out->ndim = 2;
    out->blocksize = blocksize;
    out->nblocks = (n + blocksize - 1) / blocksize;
    out->double_quant = double_quant ? 1 : 0;
    out->nested_blocksize = NESTED;
    out->owned = 1;
    memcpy(out->code, NF4_CODE, sizeof NF4_CODE);
    ql_nf4_dynamic_map(out->nested_code);
    snprintf(out->dtype, sizeof out->dtype, "float32");
    if (n == 0) return QL_OK;

    int64_t nb = out->nblocks;
    out->packed = malloc((size_t)((n + 1) / 2));
    float *absmax = malloc((size_t)nb * sizeof(float));
    if (!out->packed || !absmax) {
        free(absmax); ql_nf4_free(out);
        return ql_fail(QL_ENOMEM, "nf4 quantize: out of memory for %lld elements", (long long)n);
    }
    quant4_job j4 = { .x = x, .n = n, .bs = blocksize, .packed = out->packed, .absmax = absmax };
    nf4_bounds(j4.bounds);
    ql_parallel_for(nb, 16384 / blocksize + 1, quant4_task, &j4);
    for (int64_t b = 0; b < nb; b++)
        if (isnan(absmax[b])) {
            free(absmax); ql_nf4_free(out);
            return ql_fail(QL_EINVAL, "nf4 quantize: non-finite value (NaN or Inf) in block %lld "
                           "(elements %lld..%lld): fix the weight before quantizing",
                           (long long)b, (long long)(b * blocksize), (long long)((b + 1) * blocksize - 1));
        }
    if (!out->double_quant) { out->absmax = absmax; return QL_OK; }

    /* double quantization: offset = mean(absmax); (absmax - offset) -> u8 blockwise 256 */
    int64_t nn = (nb + NESTED - 1) / NESTED;
    out->nested_nblocks = nn;
    out->nested_offset = ql_nf4_torch_mean(absmax, nb);
    out->absmax_q = malloc((size_t)nb);
    out->nested_absmax = malloc((size_t)nn * sizeof(float));
    uint8_t *lut = malloc(LUT_SIZE);
    if (!out->absmax_q || !out->nested_absmax || !lut) {
        free(lut); free(absmax); ql_nf4_free(out);
        return ql_fail(QL_ENOMEM, "nf4 quantize: out of memory for %lld block scales", (long long)nb);
    }
    for (int64_t b = 0; b < nb; b++) absmax[b] = absmax[b] - out->nested_offset;
    build_lut(out->nested_code, lut);
    quant8_job j8 = { .d = absmax, .nb = nb, .lut = lut, .absmax_q = out->absmax_q,
                      .nested_absmax = out->nested_absmax };
    ql_parallel_for(nn, 64, quant8_task, &j8);
    free(lut);
    free(absmax);
    return QL_OK;
}

/* ---------------------------------------------------------------- dequantize */

float ql_nf4_block_absmax(const ql_nf4 *q, int64_t b)
{
    if (!q->double_quant) return q->absmax[b];
    float v = q->nested_code[q->absmax_q[b]] * q->nested_absmax[b / NESTED];
    return v + q->nested_offset;
}

ql_status ql_nf4_absmax_f32(const ql_nf4 *q, float *out)
{
    QL_TRY(ql_nf4_validate(q));
    for (int64_t b = 0; b < q->nblocks; b++) out[b] = ql_nf4_block_absmax(q, b);
    return QL_OK;
}

/* Elements [begin, end), f32 or bf16 output (exactly one of of32/obf non-NULL),
   out indexed from begin. */
static void dequant_span(const ql_nf4 *q, int64_t begin, int64_t end, float *of32, uint16_t *obf)
{
    const int64_t bs = q->blocksize;
    int64_t i = begin;
    while (i < end) {
        int64_t b = i / bs, be = (b + 1) * bs < end ? (b + 1) * bs : end;
        float s = ql_nf4_block_absmax(q, b);
        float lut[16];
        for (int k = 0; k < 16; k++) lut[k] = q->code[k] * s;
        for (; i < be; i++) {
            uint8_t byte = q->packed[i >> 1];
            float v = lut[(i & 1) ? (byte & 15) : (byte >> 4)];
            if (of32) of32[i - begin] = v;
            else obf[i - begin] = ql_nf4_f32_to_bf16(v);
        }
    }
}

typedef struct { const ql_nf4 *q; float *f32; uint16_t *bf; } dequant_job;

static void dequant_task(void *arg, int64_t b0, int64_t b1)
{
    dequant_job *j = arg;
    int64_t bs = j->q->blocksize, s = b0 * bs, e = b1 * bs < j->q->n ? b1 * bs : j->q->n;
    dequant_span(j->q, s, e, j->f32 ? j->f32 + s : NULL, j->bf ? j->bf + s : NULL);
}

static ql_status dequant_all(const ql_nf4 *q, float *f32, uint16_t *bf)
{
    QL_TRY(ql_nf4_validate(q));
    if (q->n > 0 && !f32 && !bf) return ql_fail(QL_EINVAL, "nf4 dequantize: NULL output");
    dequant_job j = { q, f32, bf };
    ql_parallel_for(q->nblocks, 65536 / q->blocksize + 1, dequant_task, &j);
    return QL_OK;
}

ql_status ql_nf4_dequantize_f32(const ql_nf4 *q, float *out) { return dequant_all(q, out, NULL); }
ql_status ql_nf4_dequantize_bf16(const ql_nf4 *q, uint16_t *out) { return dequant_all(q, NULL, out); }

static ql_status range_check(const ql_nf4 *q, int64_t begin, int64_t count, const void *out)
{
    if (!q) return ql_fail(QL_EINVAL, "nf4 dequantize range: NULL weight");
    if (begin < 0 || count < 0 || begin > q->n || count > q->n - begin)
        return ql_fail(QL_EINVAL, "nf4 dequantize range: [%lld, +%lld) is outside the %lld elements",
                       (long long)begin, (long long)count, (long long)q->n);
    if (count > 0 && !out) return ql_fail(QL_EINVAL, "nf4 dequantize range: NULL output");
    return QL_OK;
}

ql_status ql_nf4_dequantize_range_f32(const ql_nf4 *q, int64_t begin, int64_t count, float *out)
{
    QL_TRY(range_check(q, begin, count, out));
    dequant_span(q, begin, begin + count, out, NULL);
    return QL_OK;
}

ql_status ql_nf4_dequantize_range_bf16(const ql_nf4 *q, int64_t begin, int64_t count, uint16_t *out)
{
    QL_TRY(range_check(q, begin, count, out));
    dequant_span(q, begin, begin + count, NULL, out);
    return QL_OK;
}

/* ---------------------------------------------------------------- JSON */

/* Python's repr(float): shortest digits that round-trip, fixed notation when
   the decimal exponent is in [-4, 16), else d.ddde[+-]XX; always a '.0' or
   an exponent so it reads back as a float. */
static void py_float_repr(double v, char *buf, size_t cap)
{
    if (v == 0.0) { snprintf(buf, cap, signbit(v) ? "-0.0" : "0.0"); return; }
    if (isnan(v)) { snprintf(buf, cap, "NaN"); return; }
    if (isinf(v)) { snprintf(buf, cap, v < 0 ? "-Infinity" : "Infinity"); return; }
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, v);
        if (strtod(e, NULL) == v) break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *s = e + neg;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9') digits[nd++] = *s;
    digits[nd] = 0;
    int exp10 = atoi(s + 1);          /* value = d.ddd * 10^exp10 */
    int decpt = exp10 + 1;            /* value = 0.dddd * 10^decpt */
    char *o = buf;
    size_t left = cap;
#define PUT(...) do { int w__ = snprintf(o, left, __VA_ARGS__); if (w__ < 0 || (size_t)w__ >= left) return; o += w__; left -= (size_t)w__; } while (0)
    if (neg) PUT("-");
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            PUT("0.");
            for (int i = 0; i < -decpt; i++) PUT("0");
            PUT("%s", digits);
        } else if (decpt >= nd) {
            PUT("%s", digits);
            for (int i = nd; i < decpt; i++) PUT("0");
            PUT(".0");
        } else {
            PUT("%.*s.%s", decpt, digits, digits + decpt);
        }
    } else {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
#undef PUT
}

ql_status ql_nf4_state_json(const ql_nf4 *q, const char *dtype, char *buf, size_t cap)
{
    if (!q || !buf) return ql_fail(QL_EINVAL, "nf4 state json: NULL argument");
    if (!dtype || !*dtype) dtype = q->dtype[0] ? q->dtype : "bfloat16";
    char shape[64];
    if (q->ndim == 1) snprintf(shape, sizeof shape, "[%lld]", (long long)q->n);
    else snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)q->rows, (long long)q->cols);
    int w;
    if (q->double_quant) {
        char off[40];
        py_float_repr((double)q->nested_offset, off, sizeof off);
        w = snprintf(buf, cap, "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", "
                     "\"shape\": %s, \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", "
                     "\"nested_offset\": %s}", q->blocksize, dtype, shape, q->nested_blocksize, off);
    } else {
        w = snprintf(buf, cap, "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", "
                     "\"shape\": %s}", q->blocksize, dtype, shape);
    }
    if (w < 0 || (size_t)w >= cap)
        return ql_fail(QL_EINVAL, "nf4 state json: buffer of %zu bytes is too small (need %d)", cap, w + 1);
    return QL_OK;
}

/* A tiny reader for the flat JSON object above: string, number, array of
   numbers, true/false/null values. */
typedef struct { const char *p, *end; } jrd;

static void jws(jrd *r) { while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++; }
static int jeat(jrd *r, char c) { jws(r); if (r->p < r->end && *r->p == c) { r->p++; return 1; } return 0; }

static int jstring(jrd *r, char *out, size_t cap)
{
    jws(r);
    if (r->p >= r->end || *r->p != '"') return 0;
    r->p++;
    size_t k = 0;
    while (r->p < r->end && *r->p != '"') {
        char c = *r->p++;
        if (c == '\\') { if (r->p >= r->end) return 0; c = *r->p++; if (c == 'u') { r->p += 4; c = '?'; } }
        if (k + 1 < cap) out[k++] = c;
    }
    if (r->p >= r->end) return 0;
    r->p++;
    out[k] = 0;
    return 1;
}

static int jnumber(jrd *r, double *v)
{
    jws(r);
    char tmp[64];
    size_t k = 0;
    while (r->p < r->end && k + 1 < sizeof tmp && strchr("+-0123456789.eE", *r->p) && *r->p) tmp[k++] = *r->p++;
    tmp[k] = 0;
    if (!k) {
        if (r->end - r->p >= 3 && !strncmp(r->p, "NaN", 3)) { r->p += 3; *v = NAN; return 1; }
        return 0;
    }
    char *e;
    *v = strtod(tmp, &e);
    return *e == 0;
}

static int jskip_value(jrd *r)
{
    char tmp[8];
    double d;
    jws(r);
    if (r->p >= r->end) return 0;
    if (*r->p == '"') return jstring(r, tmp, sizeof tmp);
    if (*r->p == '[') {
        r->p++;
        if (jeat(r, ']')) return 1;
        do { if (!jskip_value(r)) return 0; } while (jeat(r, ','));
        return jeat(r, ']');
    }
    static const char *words[] = { "true", "false", "null" };
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(words[i]);
        if ((size_t)(r->end - r->p) >= l && !strncmp(r->p, words[i], l)) { r->p += l; return 1; }
    }
    return jnumber(r, &d);
}

ql_status ql_nf4_parse_state_json(const char *json, size_t len, ql_nf4 *q)
{
    if (!json || !q) return ql_fail(QL_EINVAL, "nf4 quant_state: NULL argument");
    memset(q, 0, sizeof *q);
    jrd r = { json, json + len };
    int have_bs = 0, have_shape = 0, have_type = 0, nested = 0, have_offset = 0;
    double offset = 0;
    int nested_bs = NESTED;
    int64_t dims[2] = { 0, 0 };
    int ndim = 0;
    if (!jeat(&r, '{')) goto bad;
    if (!jeat(&r, '}')) {
        do {
            char key[64];
            if (!jstring(&r, key, sizeof key) || !jeat(&r, ':')) goto bad;
            if (!strcmp(key, "quant_type")) {
                char v[32];
                if (!jstring(&r, v, sizeof v)) goto bad;
                if (strcmp(v, "nf4"))
                    return ql_fail(QL_EUNSUPPORTED, "nf4 quant_state: quant_type \"%s\" is not supported "
                                   "(only nf4; re-quantize with bnb_4bit_quant_type=\"nf4\")", v);
                have_type = 1;
            } else if (!strcmp(key, "blocksize") || !strcmp(key, "nested_blocksize")) {
                double v;
                if (!jnumber(&r, &v) || !(v >= 0 && v <= 1 << 20) || v != (double)(int)v) goto bad;
                if (key[0] == 'b') { q->blocksize = (int)v; have_bs = 1; } else { nested_bs = (int)v; nested = 1; }
            } else if (!strcmp(key, "dtype")) {
                if (!jstring(&r, q->dtype, sizeof q->dtype)) goto bad;
            } else if (!strcmp(key, "nested_dtype")) {
                char v[32];
                if (!jstring(&r, v, sizeof v)) goto bad;
                if (strcmp(v, "float32"))
                    return ql_fail(QL_EUNSUPPORTED, "nf4 quant_state: nested_dtype \"%s\" is not supported (float32 only)", v);
                nested = 1;
            } else if (!strcmp(key, "nested_offset")) {
                if (!jnumber(&r, &offset) || fabs(offset) > 3.4e38) goto bad;
                nested = 1; have_offset = 1;
            } else if (!strcmp(key, "shape")) {
                if (!jeat(&r, '[')) goto bad;
                if (!jeat(&r, ']')) {
                    do {
                        double v;
                        if (!jnumber(&r, &v) || !(v >= 0 && v < 0x1p62) || v != (double)(int64_t)v) goto bad;
                        if (ndim == 2) {
                            /* [a, b, c...]: fold leading dims into rows */
                            if (v != 0 && dims[0] > INT64_MAX / 4 / (dims[1] ? dims[1] : 1) / (int64_t)v) goto bad;
                            dims[0] *= dims[1]; dims[1] = (int64_t)v;
                        } else dims[ndim++] = (int64_t)v;
                    } while (jeat(&r, ','));
                    if (!jeat(&r, ']')) goto bad;
                }
                have_shape = 1;
            } else if (!jskip_value(&r)) goto bad;
        } while (jeat(&r, ','));
        if (!jeat(&r, '}')) goto bad;
    }
    if (!have_type || !have_bs || !have_shape || ndim == 0)
        return ql_fail(QL_EFORMAT, "nf4 quant_state: missing %s", !have_type ? "quant_type" :
                       !have_bs ? "blocksize" : "shape");
    if (!blocksize_ok(q->blocksize))
        return ql_fail(QL_EFORMAT, "nf4 quant_state: blocksize %d is not a power of two in 32..4096", q->blocksize);
    if (nested && !have_offset) return ql_fail(QL_EFORMAT, "nf4 quant_state: nested_offset missing");
    if (nested && nested_bs != NESTED)
        return ql_fail(QL_EUNSUPPORTED, "nf4 quant_state: nested_blocksize %d (only 256)", nested_bs);
    if (ndim == 1) { q->rows = 1; q->cols = dims[0]; }
    else {
        if (dims[1] && dims[0] > INT64_MAX / 4 / dims[1]) goto bad;
        q->rows = dims[0]; q->cols = dims[1];
    }
    q->ndim = ndim;
    q->n = q->rows * q->cols;
    q->nblocks = (q->n + q->blocksize - 1) / q->blocksize;
    q->double_quant = nested;
    q->nested_blocksize = NESTED;
    q->nested_nblocks = nested ? (q->nblocks + NESTED - 1) / NESTED : 0;
    q->nested_offset = (float)offset;
    if (!q->dtype[0]) snprintf(q->dtype, sizeof q->dtype, "bfloat16");
    memcpy(q->code, NF4_CODE, sizeof NF4_CODE);
    ql_nf4_dynamic_map(q->nested_code);
    return QL_OK;
bad:
    return ql_fail(QL_EFORMAT, "nf4 quant_state: malformed JSON near byte %lld of %zu",
                   (long long)(r.p - json), len);
}
