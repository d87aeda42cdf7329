/*
 * attention_gemm.cu — causal attention of a training batch through cuBLASLt
 * products on tensor cores: per segment of the batch (a run of documents
 * that no query outside it looks into) and per head, the scores
 * S = scale Q K^T are one product, a row kernel turns them into masked
 * probabilities P (and the row logsumexp), and O = P V is another. The
 * backward recomputes S, forms dP = dO V^T, dS = P (dP - D) scale in a row
 * kernel, and gets dQ = dS K, dK += dS^T Q, dV += P^T dO as products (dK and
 * dV summed over the group's query heads in f32, then rounded to bf16).
 *
 * The score matrices live in scratch of segment length squared, so this path
 * serves segments up to QL_ATTN_GEMM_MAX tokens; longer ones (and KV-cache
 * decoding) go to the warp kernels of attention.cu. Queries see keys
 * [lo_i, hi_i) clipped to the sliding window, exactly as there; probabilities
 * outside a query's range are zero, so a segment may hold several documents.
 *
 * Segments are cut on the host from lo/hi: before token i when no query at or
 * after i looks at a key before i; neighbours are merged while they stay
 * within 256 tokens (fewer, larger products for short documents).
 */
#include "decoder_kernels.cuh"

#include <stdlib.h>

/* ---------------------------------------------------------------- kernels */

__device__ __forceinline__ uint16_t bf16_rn(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
__device__ __forceinline__ float bf16_f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ void row_range(const int32_t *lo, const int32_t *hi, int64_t i, int window, int64_t s0,
                                          int64_t *b, int64_t *e)
{
    int64_t l = lo[i], h = hi[i];
    if (window > 0 && h - window > l) l = h - window;
    *b = l - s0;
    *e = h - s0;
}

/* block-wide reductions over 256 threads */
__device__ __forceinline__ float block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, o));
        if (threadIdx.x == 0) sh[32] = w;
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}
__device__ __forceinline__ float block_sum(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (threadIdx.x == 0) sh[32] = w;
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}

/* one block per row r of a segment: P = masked softmax of S, lse of the row */
__global__ void k_seg_softmax(const float *__restrict__ S, int64_t L, int64_t ld, int64_t s0,
                              const int32_t *__restrict__ lo, const int32_t *__restrict__ hi, int window,
                              uint16_t *__restrict__ P, float *__restrict__ lse, int heads, int h)
{
    __shared__ float sh[33];
    const int64_t r = blockIdx.x, i = s0 + r;
    int64_t b, e;
    row_range(lo, hi, i, window, s0, &b, &e);
    const float *s = S + r * ld;
    float mx = -INFINITY;
    for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_max(mx, sh);
    float sum = 0;
    for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) sum += expf(s[j] - mx);
    sum = block_sum(sum, sh);
    const float l = logf(sum) + mx;
    if (threadIdx.x == 0 && lse) lse[i * heads + h] = e > b ? l : -INFINITY;
    uint16_t *p = P + r * ld;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) p[j] = (j >= b && j < e) ? bf16_rn(expf(s[j] - l)) : 0;
}

/* one block per row: P = exp(S - lse) in range, dS = P (dP - D) scale */
__global__ void k_seg_dsoftmax(const float *__restrict__ S, const float *__restrict__ dP, int64_t L, int64_t ld,
                               int64_t s0, const int32_t *__restrict__ lo, const int32_t *__restrict__ hi, int window,
                               const float *__restrict__ lse, const float *__restrict__ D, int heads, int h, float scale,
                               uint16_t *__restrict__ P, uint16_t *__restrict__ dS)
{
    const int64_t r = blockIdx.x, i = s0 + r;
    int64_t b, e;
    row_range(lo, hi, i, window, s0, &b, &e);
    const float l = lse[i * heads + h], d = D[i * heads + h];
    const float *s = S + r * ld, *dp = dP + r * ld;
    uint16_t *p = P + r * ld, *ds = dS + r * ld;
    for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
        if (j >= b && j < e) {
            float pj = expf(s[j] - l);
            p[j] = bf16_rn(pj);
            ds[j] = bf16_rn(pj * (dp[j] - d) * scale);
        } else {
            p[j] = 0;
            ds[j] = 0;
        }
    }
}

/* one warp per (token, head), grid-stride over the n * heads of them (n * heads / 8 blocks would
   pass gridDim.x's 2^31 - 1 for a long enough batch): D = sum_d dout * out */
__global__ void k_attn_D(const float *__restrict__ dout, const uint16_t *__restrict__ out, int64_t n, int heads,
                         int hd, float *__restrict__ D)
{
    const int lane = threadIdx.x & 31;
    const int64_t nw = n * heads, step = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < nw; w += step) {   /* warp-uniform */
        const int64_t i = w / heads, h = w % heads, base = i * (int64_t)heads * hd + h * hd;
        float acc = 0;
        for (int d = lane; d < hd; d += 32) acc += dout[base + d] * bf16_f(out[base + d]);
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) D[w] = acc;
    }
}

/* ---------------------------------------------------------------- host side */

ql_status qlk_attn_rowdot(const float *dout, const uint16_t *out, int64_t n, int heads, int hd, float *D)
{
    int64_t warps = n * heads;
    if (warps == 0) return QL_OK;
    k_attn_D<<<ql_grid(warps * 32), 256>>>(dout, out, n, heads, hd, D);   /* capped grid, the kernel strides */
    QL_CU_LAUNCH("k_attn_D");
    return QL_OK;
}

/* segments of a causal batch: starts in seg[0..count], seg[count] = n; 0 when a query's keys
   leave its segment (then the caller uses the warp kernels) */
static int64_t segments(const int32_t *lo, const int32_t *hi, int64_t n, int64_t *seg, int64_t maxlen)
{
    /* cut before i when min(lo[i..n)) >= i: no query at or after i looks before it */
    uint8_t *cut = (uint8_t *)malloc((size_t)(n + 1));
    if (!cut) return -1;
    int64_t sufmin = n;
    for (int64_t i = n - 1; i >= 0; i--) {
        if (lo[i] < sufmin) sufmin = lo[i];
        cut[i] = sufmin >= i;
    }
    /* pieces between cuts, merged greedily while a segment stays within 256 tokens */
    int64_t count = 0, start = 0, end = 0;
    for (int64_t pb = 0; pb < n;) {
        int64_t pe = pb + 1;
        while (pe < n && !cut[pe]) pe++;
        if (end > start && pe - start > 256) { seg[count++] = start; start = pb; }
        end = pe;
        pb = pe;
    }
    seg[count++] = start;
    seg[count] = n;
    free(cut);
    for (int64_t k = 0; k < count; k++) {
        int64_t s0 = seg[k], s1 = seg[k + 1];
        if (s1 - s0 > maxlen) return 0;
        for (int64_t i = s0; i < s1; i++)
            if (lo[i] < s0 || hi[i] > s1) return 0;
    }
    return count;
}

static int64_t pad8(int64_t x) { return (x + 7) & ~(int64_t)7; }

size_t qlk_attn_gemm_scratch(int64_t n, int heads, int kvh, int hd)
{
    int64_t C = n < QL_ATTN_GEMM_MAX ? n : QL_ATTN_GEMM_MAX, Cp = pad8(C);
    int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    size_t b = 0;
    b += (size_t)(C * Cp) * (4 + 4 + 2 + 2);       /* S, dP, P, dS */
    b += (size_t)(n * Q) * 2;                       /* dout in bf16 */
    b += (size_t)(n * KV) * 4 * 2;                  /* dk, dv accumulators */
    b += (size_t)(n * heads) * 4;                   /* D */
    return b + 8 * 256;
}

struct scratch_layout { float *S, *dP; uint16_t *P, *dS, *dO; float *dkf, *dvf, *D; };

static scratch_layout carve(void *base, int64_t n, int heads, int kvh, int hd)
{
    int64_t C = n < QL_ATTN_GEMM_MAX ? n : QL_ATTN_GEMM_MAX, Cp = pad8(C);
    int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    char *p = (char *)base;
    auto take = [&](size_t bytes) { char *r = p; p += (bytes + 255) & ~(size_t)255; return (void *)r; };
    scratch_layout s;
    s.S = (float *)take((size_t)(C * Cp) * 4);
    s.dP = (float *)take((size_t)(C * Cp) * 4);
    s.P = (uint16_t *)take((size_t)(C * Cp) * 2);
    s.dS = (uint16_t *)take((size_t)(C * Cp) * 2);
    s.dO = (uint16_t *)take((size_t)(n * Q) * 2);
    s.dkf = (float *)take((size_t)(n * KV) * 4);
    s.dvf = (float *)take((size_t)(n * KV) * 4);
    s.D = (float *)take((size_t)(n * heads) * 4);
    return s;
}

int qlk_attn_gemm_fits(const int32_t *lo, const int32_t *hi, int64_t n)
{
    int64_t *seg = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 2));
    if (!seg) return 0;
    int64_t c = segments(lo, hi, n, seg, QL_ATTN_GEMM_MAX);
    free(seg);
    return c > 0;
}

ql_status qlk_attn_fwd_gemm(int dev, const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo_h,
                            const int32_t *hi_h, const int32_t *lo, const int32_t *hi, int64_t n, int heads, int kvh,
                            int hd, int window, uint16_t *out, float *lse, void *scratch)
{
    int64_t *seg = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 2));
    if (!seg) return ql_fail(QL_ENOMEM, "out of host memory");
    int64_t ns = segments(lo_h, hi_h, n, seg, QL_ATTN_GEMM_MAX);
    if (ns <= 0) { free(seg); return ql_fail(QL_EINVAL, "attention: the batch does not split into segments"); }
    scratch_layout sc = carve(scratch, n, heads, kvh, hd);
    int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    int g = heads / kvh;
    float scale = 1.0f / sqrtf((float)hd);
    ql_status st = QL_OK;
    for (int64_t s = 0; s < ns && st == QL_OK; s++) {
        int64_t s0 = seg[s], L = seg[s + 1] - s0, Lp = pad8(L);
        for (int h = 0; h < heads && st == QL_OK; h++) {
            int kh = h / g;
            const uint16_t *qh = q + s0 * Q + (int64_t)h * hd, *kk = k + s0 * KV + (int64_t)kh * hd;
            const uint16_t *vv = v + s0 * KV + (int64_t)kh * hd;
            st = qlk_gemm(dev, 0, 1, L, L, hd, scale, qh, Q, kk, KV, QL_BF16, 0.0f, sc.S, Lp, QL_F32);
            if (st) break;
            k_seg_softmax<<<(unsigned)L, 256>>>(sc.S, L, Lp, s0, lo, hi, window, sc.P, lse, heads, h);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) { st = ql_cuda_fail(e, "launch of k_seg_softmax", __FILE__, __LINE__); break; }
            st = qlk_gemm(dev, 0, 0, L, hd, L, 1.0f, sc.P, Lp, vv, KV, QL_BF16, 0.0f, out + s0 * Q + (int64_t)h * hd, Q,
                          QL_BF16);
        }
    }
    free(seg);
    return st;
}

ql_status qlk_attn_bwd_gemm(int dev, const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out,
                            const float *lse, const float *dout, const int32_t *lo_h, const int32_t *hi_h,
                            const int32_t *lo, const int32_t *hi, int64_t n, int heads, int kvh, int hd, int window,
                            uint16_t *dq, uint16_t *dk, uint16_t *dv, void *scratch)
{
    int64_t *seg = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 2));
    if (!seg) return ql_fail(QL_ENOMEM, "out of host memory");
    int64_t ns = segments(lo_h, hi_h, n, seg, QL_ATTN_GEMM_MAX);
    if (ns <= 0) { free(seg); return ql_fail(QL_EINVAL, "attention: the batch does not split into segments"); }
    scratch_layout sc = carve(scratch, n, heads, kvh, hd);
    int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    int g = heads / kvh;
    float scale = 1.0f / sqrtf((float)hd);
    ql_status st = qlk_to_bf16(dout, QL_F32, sc.dO, n * Q);
    if (st == QL_OK) st = qlk_attn_rowdot(dout, out, n, heads, hd, sc.D);
    for (int64_t s = 0; s < ns && st == QL_OK; s++) {
        int64_t s0 = seg[s], L = seg[s + 1] - s0, Lp = pad8(L);
        for (int h = 0; h < heads && st == QL_OK; h++) {
            int kh = h / g, first = h % g == 0;
            const uint16_t *qh = q + s0 * Q + (int64_t)h * hd, *kk = k + s0 * KV + (int64_t)kh * hd;
            const uint16_t *vv = v + s0 * KV + (int64_t)kh * hd, *doh = sc.dO + s0 * Q + (int64_t)h * hd;
            float *dkf = sc.dkf + s0 * KV + (int64_t)kh * hd, *dvf = sc.dvf + s0 * KV + (int64_t)kh * hd;
            if ((st = qlk_gemm(dev, 0, 1, L, L, hd, scale, qh, Q, kk, KV, QL_BF16, 0.0f, sc.S, Lp, QL_F32))) break;
            if ((st = qlk_gemm(dev, 0, 1, L, L, hd, 1.0f, doh, Q, vv, KV, QL_BF16, 0.0f, sc.dP, Lp, QL_F32))) break;
            k_seg_dsoftmax<<<(unsigned)L, 256>>>(sc.S, sc.dP, L, Lp, s0, lo, hi, window, lse, sc.D, heads, h, scale, sc.P,
                                                 sc.dS);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) { st = ql_cuda_fail(e, "launch of k_seg_dsoftmax", __FILE__, __LINE__); break; }
            /* dQ_h = dS K; dK += dS^T Q_h; dV += P^T dO_h */
            if ((st = qlk_gemm(dev, 0, 0, L, hd, L, 1.0f, sc.dS, Lp, kk, KV, QL_BF16, 0.0f, dq + s0 * Q + (int64_t)h * hd,
                               Q, QL_BF16)))
                break;
            if ((st = qlk_gemm(dev, 1, 0, L, hd, L, 1.0f, sc.dS, Lp, qh, Q, QL_BF16, first ? 0.0f : 1.0f, dkf, KV, QL_F32)))
                break;
            st = qlk_gemm(dev, 1, 0, L, hd, L, 1.0f, sc.P, Lp, doh, Q, QL_BF16, first ? 0.0f : 1.0f, dvf, KV, QL_F32);
        }
    }
    if (st == QL_OK) st = qlk_to_bf16(sc.dkf, QL_F32, dk, n * KV);
    if (st == QL_OK) st = qlk_to_bf16(sc.dvf, QL_F32, dv, n * KV);
    free(seg);
    return st;
}
