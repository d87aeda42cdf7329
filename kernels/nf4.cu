/*
 * nf4.cu — NF4 quantize / dequantize on the GPU, byte-identical to the CPU
 * reference in engine/formats/nf4.c (and so to bitsandbytes 0.50 on the CPU).
 *
 * Every floating-point step is an explicit round-to-nearest intrinsic
 * (__fmul_rn, __fadd_rn, __fdiv_rn, __fmaf_rn where the reference fuses), so
 * nvcc cannot contract or approximate anything whatever the flags. Max
 * reductions are exact in any order. The one order-dependent reduction of the
 * format, the mean of the block absmax (nested_offset), is left to the host
 * (ql_nf4_torch_mean), see nf4.h.
 *
 * Kernels part first, launchers (extern "C", device pointers) after.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#ifndef QL_CUDA
#define QL_CUDA 1
#endif
extern "C" {
#include "ql.h"
#include "nf4.h"
}

#define NESTED 256

__constant__ float c_nf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* torch.bucketize: number of fp32 midpoints (c[i]+c[i+1])/2 strictly below v */
__device__ __forceinline__ int nf4_bucket(const float *bounds, float v)
{
    int q = 0;
#pragma unroll
    for (int i = 0; i < 15; i++) q += v > bounds[i];
    return q;
}

__device__ __forceinline__ uint16_t f32_to_bf16_rne(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One warp per quantization block; 8 warps per CUDA block. */
__global__ void k_nf4_quantize(const float *__restrict__ x, int64_t n, int bs, int64_t nblocks,
                               uint8_t *__restrict__ packed, float *__restrict__ absmax)
{
    __shared__ float bounds[15];
    if (threadIdx.x < 15) bounds[threadIdx.x] = __fmul_rn(__fadd_rn(c_nf4[threadIdx.x], c_nf4[threadIdx.x + 1]), 0.5f);
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t b = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= nblocks) return;
    const int64_t s = b * bs;
    int64_t e = s + bs;
    const bool ragged = e > n;
    if (ragged) e = n;

    float m = 0.0f;
    int bad = 0;
    for (int64_t i = s + lane; i < e; i += 32) {
        float a = fabsf(x[i]);
        bad |= !(a <= 3.402823466e+38f);
        m = a > m ? a : m;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(0xffffffffu, m, o);
        m = t > m ? t : m;
        bad |= __shfl_xor_sync(0xffffffffu, bad, o);
    }
    const float mc = m > 1e-38f ? m : 1e-38f;    /* absmax.clamp(min=1e-38) */
    const float inv = __fdiv_rn(1.0f, mc);
    if (lane == 0) absmax[b] = bad ? __int_as_float(0x7fc00000) : (ragged ? mc : m);
    const int64_t npairs = (e - s + 1) / 2;
    for (int64_t p = lane; p < npairs; p += 32) {
        const int64_t i = s + 2 * p;
        float v0 = ragged ? __fdiv_rn(x[i], mc) : __fmul_rn(x[i], inv);
        int hi = nf4_bucket(bounds, v0), lo = 7;   /* odd n: the pad 0.0 codes to 7 */
        if (i + 1 < e) {
            float v1 = ragged ? __fdiv_rn(x[i + 1], mc) : __fmul_rn(x[i + 1], inv);
            lo = nf4_bucket(bounds, v1);
        }
        packed[i >> 1] = (uint8_t)(hi << 4 | lo);
    }
}

/* One CUDA block (256 threads) per nested block of 256 absmax values.
   bitsandbytes' CPU 8-bit quantizer: LUT index k from the scaled value, code
   index = number of code midpoints below fl(fl(2k)/65535) - 1. */
__global__ void k_nf4_quantize_nested(const float *__restrict__ absmax, int64_t nblocks, float offset,
                                      const float *__restrict__ code, uint8_t *__restrict__ absmax_q,
                                      float *__restrict__ nested_absmax)
{
    __shared__ float mid[255];
    __shared__ float wmax[NESTED / 32];
    const int t = threadIdx.x;
    if (t < 255) mid[t] = __fmul_rn(0.5f, __fadd_rn(code[t], code[t + 1]));
    const int64_t i = (int64_t)blockIdx.x * NESTED + t;
    const bool live = i < nblocks;
    const float d = live ? __fsub_rn(absmax[i], offset) : 0.0f;
    float m = fabsf(d);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, m, o);
        m = u > m ? u : m;
    }
    if ((t & 31) == 0) wmax[t >> 5] = m;
    __syncthreads();
    m = wmax[0];
    for (int w = 1; w < NESTED / 32; w++) m = wmax[w] > m ? wmax[w] : m;
    if (t == 0) nested_absmax[blockIdx.x] = m;
    if (!live) return;
    if (m == 0.0f) { absmax_q[i] = 0; return; }
    const float inv = __fdiv_rn(1.0f, m);
    float v = __fmul_rn(d, inv);
    v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    float f = __fmaf_rn(__fmul_rn(__fadd_rn(v, 1.0f), 0.5f), 65535.0f, 0.5f);
    const int k = (uint16_t)__float2int_rz(f);
    const float val = __fsub_rn(__fdiv_rn((float)(2 * k), 65535.0f), 1.0f);
    int lo = 0, hi = 255;                       /* count of mid[] < val (mid ascending) */
    while (lo < hi) {
        int c = (lo + hi) >> 1;
        if (mid[c] < val) lo = c + 1; else hi = c;
    }
    absmax_q[i] = (uint8_t)lo;
}

__global__ void k_nf4_absmax_dequant(const uint8_t *__restrict__ absmax_q, const float *__restrict__ nested_absmax,
                                     const float *__restrict__ code, float offset, int64_t nblocks,
                                     float *__restrict__ out)
{
    const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    out[b] = __fadd_rn(__fmul_rn(code[absmax_q[b]], nested_absmax[b / NESTED]), offset);
}

/* One thread per packed byte (two elements). */
template <bool BF16>
__global__ void k_nf4_dequantize(const uint8_t *__restrict__ packed, const float *__restrict__ absmax,
                                 int64_t n, int bs, void *__restrict__ out)
{
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t i = 2 * j;
    if (i >= n) return;
    const uint8_t byte = packed[j];
    const float v0 = __fmul_rn(c_nf4[byte >> 4], absmax[i / bs]);
    if (BF16) ((uint16_t *)out)[i] = f32_to_bf16_rne(v0);
    else ((float *)out)[i] = v0;
    if (i + 1 < n) {
        const float v1 = __fmul_rn(c_nf4[byte & 15], absmax[(i + 1) / bs]);
        if (BF16) ((uint16_t *)out)[i + 1] = f32_to_bf16_rne(v1);
        else ((float *)out)[i + 1] = v1;
    }
}

/* 8 elements per thread: one 4-byte load of packed values, the block scale decoded inline
   (double quantization: the same two roundings as k_nf4_absmax_dequant), one 16-byte store
   of bf16. A warp reads 128 contiguous bytes and writes 512 in one instruction each, so every
   transaction is whole. blocksize >= 32, so the 8 elements share one scale. */
template <bool DQ>
__global__ void k_nf4_dequantize_bf16_x8(const uint32_t *__restrict__ packed, const uint8_t *__restrict__ absmax_q,
                                         const float *__restrict__ absmax, const float *__restrict__ nested_absmax,
                                         const float *__restrict__ code, float offset, int64_t groups, int bs_log2,
                                         uint4 *__restrict__ out)
{
    /* the 16 code values in shared memory, one copy per bank: lane l reads entry c at
       lut[c][l], so a warp's 32 lookups never conflict (a single copy in 16 banks would
       serialise random lookups; the constant cache, 16 lookups a thread, worse) */
    __shared__ float lut[16][32];
    for (int i = threadIdx.x; i < 16 * 32; i += blockDim.x) lut[i >> 5][i & 31] = c_nf4[i >> 5];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= groups) return;
    const int64_t b = (t * 8) >> bs_log2;
    float s;
    if (DQ) s = __fadd_rn(__fmul_rn(__ldg(&code[absmax_q[b]]), __ldg(&nested_absmax[b / NESTED])), offset);
    else s = __ldg(&absmax[b]);
    const uint32_t p = packed[t];
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const uint32_t byte = (p >> (8 * k)) & 0xffu;
        const uint32_t hi = f32_to_bf16_rne(__fmul_rn(lut[byte >> 4][lane], s));
        const uint32_t lo = f32_to_bf16_rne(__fmul_rn(lut[byte & 15][lane], s));
        w[k] = hi | (lo << 16);   /* element 2k (high nibble) first in memory */
    }
    out[t] = make_uint4(w[0], w[1], w[2], w[3]);
}

/* ---------------------------------------------------------------- launchers */

static ql_status launch_check(const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return ql_fail(QL_EDEVICE, "nf4 %s: CUDA launch failed: %s", what, cudaGetErrorString(e));
    return QL_OK;
}

static bool bs_ok(int bs) { return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0; }

static ql_status grid_for(int64_t items, int per_block, const char *what, unsigned *grid)
{
    int64_t g = (items + per_block - 1) / per_block;
    if (g > 0x7fffffffLL) return ql_fail(QL_EINVAL, "nf4 %s: %lld items exceed one launch", what, (long long)items);
    *grid = (unsigned)g;
    return QL_OK;
}

extern "C" ql_status ql_cuda_nf4_quantize(const float *x, int64_t n, int blocksize,
                                          uint8_t *packed, float *absmax, void *stream)
{
    if (!bs_ok(blocksize)) return ql_fail(QL_EINVAL, "nf4 cuda quantize: blocksize %d is not a power of two in 32..4096", blocksize);
    if (n < 0) return ql_fail(QL_EINVAL, "nf4 cuda quantize: negative size %lld", (long long)n);
    if (n == 0) return QL_OK;
    if (!x || !packed || !absmax) return ql_fail(QL_EINVAL, "nf4 cuda quantize: NULL device pointer");
    int64_t nb = (n + blocksize - 1) / blocksize;
    unsigned grid = 0;
    QL_TRY(grid_for(nb, 8, "cuda quantize", &grid));
    k_nf4_quantize<<<grid, 256, 0, (cudaStream_t)stream>>>(x, n, blocksize, nb, packed, absmax);
    return launch_check("cuda quantize");
}

extern "C" ql_status ql_cuda_nf4_quantize_nested(const float *absmax, int64_t nblocks, float offset,
                                                 const float *nested_code, uint8_t *absmax_q,
                                                 float *nested_absmax, void *stream)
{
    if (nblocks < 0) return ql_fail(QL_EINVAL, "nf4 cuda nested quantize: negative block count");
    if (nblocks == 0) return QL_OK;
    if (!absmax || !nested_code || !absmax_q || !nested_absmax)
        return ql_fail(QL_EINVAL, "nf4 cuda nested quantize: NULL device pointer");
    unsigned grid = 0;
    QL_TRY(grid_for(nblocks, NESTED, "cuda nested quantize", &grid));
    k_nf4_quantize_nested<<<grid, NESTED, 0, (cudaStream_t)stream>>>(absmax, nblocks, offset, nested_code,
                                                                     absmax_q, nested_absmax);
    return launch_check("cuda nested quantize");
}

extern "C" ql_status ql_cuda_nf4_absmax_dequant(const uint8_t *absmax_q, const float *nested_absmax,
                                                const float *nested_code, float offset, int64_t nblocks,
                                                float *absmax_f32, void *stream)
{
    if (nblocks < 0) return ql_fail(QL_EINVAL, "nf4 cuda absmax dequant: negative block count");
    if (nblocks == 0) return QL_OK;
    if (!absmax_q || !nested_absmax || !nested_code || !absmax_f32)
        return ql_fail(QL_EINVAL, "nf4 cuda absmax dequant: NULL device pointer");
    unsigned grid = 0;
    QL_TRY(grid_for(nblocks, 256, "cuda absmax dequant", &grid));
    k_nf4_absmax_dequant<<<grid, 256, 0, (cudaStream_t)stream>>>(absmax_q, nested_absmax, nested_code, offset,
                                                                 nblocks, absmax_f32);
    return launch_check("cuda absmax dequant");
}

template <bool BF16>
static ql_status dequant_launch(const uint8_t *packed, const float *absmax, int64_t n, int bs, void *out,
                                void *stream, const char *what)
{
    if (!bs_ok(bs)) return ql_fail(QL_EINVAL, "nf4 %s: blocksize %d is not a power of two in 32..4096", what, bs);
    if (n < 0) return ql_fail(QL_EINVAL, "nf4 %s: negative size", what);
    if (n == 0) return QL_OK;
    if (!packed || !absmax || !out) return ql_fail(QL_EINVAL, "nf4 %s: NULL device pointer", what);
    unsigned grid = 0;
    QL_TRY(grid_for((n + 1) / 2, 256, what, &grid));
    k_nf4_dequantize<BF16><<<grid, 256, 0, (cudaStream_t)stream>>>(packed, absmax, n, bs, out);
    return launch_check(what);
}

extern "C" ql_status ql_cuda_nf4_dequantize_f32(const uint8_t *packed, const float *absmax_f32, int64_t n,
                                                int blocksize, float *out, void *stream)
{
    return dequant_launch<false>(packed, absmax_f32, n, blocksize, out, stream, "cuda dequantize f32");
}

extern "C" ql_status ql_cuda_nf4_dequantize_bf16(const uint8_t *packed, const float *absmax_f32, int64_t n,
                                                 int blocksize, uint16_t *out, void *stream)
{
    return dequant_launch<true>(packed, absmax_f32, n, blocksize, out, stream, "cuda dequantize bf16");
}

extern "C" ql_status ql_cuda_nf4_dequantize_bf16_fast(const uint8_t *packed, int double_quant, const uint8_t *absmax_q,
                                                      const float *absmax_f32, const float *nested_absmax,
                                                      const float *nested_code, float offset, int64_t n,
                                                      int blocksize, uint16_t *out, float *absmax_tmp, void *stream)
{
    if (!bs_ok(blocksize)) return ql_fail(QL_EINVAL, "nf4 dequantize: blocksize %d is not a power of two in 32..4096", blocksize);
    if (n <= 0) return n == 0 ? QL_OK : ql_fail(QL_EINVAL, "nf4 dequantize: negative size");
    const bool vec = n % 8 == 0 && ((uintptr_t)packed & 3) == 0 && ((uintptr_t)out & 15) == 0;
    if (!vec) {   /* the one-thread-per-byte path */
        const float *am = absmax_f32;
        if (double_quant) {
            int64_t nb = (n + blocksize - 1) / blocksize;
            QL_TRY(ql_cuda_nf4_absmax_dequant(absmax_q, nested_absmax, nested_code, offset, nb, absmax_tmp, stream));
            am = absmax_tmp;
        }
        return ql_cuda_nf4_dequantize_bf16(packed, am, n, blocksize, out, stream);
    }
    int lg = 0;
    while ((1 << lg) < blocksize) lg++;
    const int64_t groups = n / 8;
    unsigned grid = 0;
    QL_TRY(grid_for(groups, 256, "dequantize bf16", &grid));
    if (double_quant)
        k_nf4_dequantize_bf16_x8<true><<<grid, 256, 0, (cudaStream_t)stream>>>(
            (const uint32_t *)packed, absmax_q, NULL, nested_absmax, nested_code, offset, groups, lg, (uint4 *)out);
    else
        k_nf4_dequantize_bf16_x8<false><<<grid, 256, 0, (cudaStream_t)stream>>>(
            (const uint32_t *)packed, NULL, absmax_f32, NULL, NULL, 0.0f, groups, lg, (uint4 *)out);
    return launch_check("dequantize bf16");
}
