/*
 * attention.cu — causal grouped-query attention over per-query key ranges,
 * forward and backward, for the decoder's CUDA ops (decoder_kernels.cuh).
 *
 * This is the straightforward version that the CPU reference (ql_attn_range
 * in engine/model/model.c, attn_bwd_range in engine/model/train.c) is checked
 * against; no tensor cores. Query i of head h sees keys [lo_i, hi_i) of kv head
 * h / (heads / kvh), lo_i raised to hi_i - window under a sliding window.
 *
 * Work split (index math in attn_index.h):
 *   forward  one warp per (query, head), online softmax over tiles of 32 keys:
 *            lane t scores key t0 + t (q in shared memory as f32, the key row read
 *            with 16-byte loads), then lanes split the head dim in bf16 pairs to
 *            accumulate p * v. Few rows (generation: n = 1 against a KV cache):
 *            the 8 warps of a block share one row, take every 8th tile and
 *            merge their (max, sum, acc) in shared memory.
 *   dq       one warp per (query, head); also writes D_i = dout_i . out_i to a
 *            scratch [n, heads] for the next kernel.
 *   dk, dv   one warp per (key, kv head), looping over the group's heads and the
 *            key's queries [qlo_j, qhi_j) (each query still checked against its
 *            own range, so a wider [qlo, qhi) is harmless).
 * Every output row is owned by one warp: no atomics, results are deterministic.
 *
 * Numerics: bf16 inputs widened to f32, all math in f32 (fmaf dots, expf, IEEE
 * division, scale = 1 / sqrtf(hd)), each bf16 output rounded once to nearest
 * even. The backward recomputes P_ij = expf(s_ij - lse_i) with the forward's
 * dot in the forward's order. An empty range gives out = 0 and lse = -inf.
 *
 * Constraints: hd even, 16..256; heads a multiple of kvh; heads <= 65535;
 * bf16 arrays 4-byte aligned and dout 8-byte aligned (cudaMalloc gives 256);
 * 16-byte loads are used when hd % 8 == 0 and the rows allow it. Index math is
 * 64-bit. Work is queued on the legacy default stream.
 *
 * Kernels first, launchers (extern "C" via decoder_kernels.cuh) after.
 */
#include "common.cuh"
#include "decoder_kernels.cuh"
#include "attn_index.h"

#define FULL 0xffffffffu
#define WPB QL_ATTN_WPB
#define MAXHD QL_ATTN_MAXHD

/* ---------------------------------------------------------------- helpers */

__device__ __forceinline__ float bf_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ uint32_t bf_pack(float a, float b)
{
    return (uint32_t)ql_f32_to_bf16(a) | ((uint32_t)ql_f32_to_bf16(b) << 16);
}
__device__ __forceinline__ uint32_t ld_pair(const uint16_t *p) { return __ldg((const unsigned int *)p); }

/* VEC consecutive values of a global row, widened to f32 */
template <int VEC> __device__ __forceinline__ void ld_vec(const uint16_t *p, float *f);
template <> __device__ __forceinline__ void ld_vec<8>(const uint16_t *p, float *f)
{
    uint4 u = __ldg((const uint4 *)p);
    f[0] = bf_lo(u.x); f[1] = bf_hi(u.x); f[2] = bf_lo(u.y); f[3] = bf_hi(u.y);
    f[4] = bf_lo(u.z); f[5] = bf_hi(u.z); f[6] = bf_lo(u.w); f[7] = bf_hi(u.w);
}
template <> __device__ __forceinline__ void ld_vec<2>(const uint16_t *p, float *f)
{
    uint32_t u = ld_pair(p);
    f[0] = bf_lo(u); f[1] = bf_hi(u);
}
template <int VEC> __device__ __forceinline__ void ld_vec(const float *p, float *f);
template <> __device__ __forceinline__ void ld_vec<8>(const float *p, float *f)
{
    float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)p + 1);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
template <> __device__ __forceinline__ void ld_vec<2>(const float *p, float *f)
{
    float2 a = __ldg((const float2 *)p);
    f[0] = a.x; f[1] = a.y;
}

/* s . g over hd values: s a row in shared memory (f32), g a global row; one
   fmaf chain in index order, whichever operand is where (the forward and both
   backward kernels get the same bits for the same pair of rows) */
template <int VEC, typename G>
__device__ __forceinline__ float dot_row(const float *s, const G *g, int hd)
{
    float acc = 0.0f;
#pragma unroll 2
    for (int d = 0; d < hd; d += VEC) {
        float f[VEC];
        ld_vec<VEC>(g + d, f);
#pragma unroll
        for (int e = 0; e < VEC; e++) acc = fmaf(s[d + e], f[e], acc);
    }
    return acc;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

/* a bf16 row [hd] into shared memory as f32 (lanes over pairs) */
__device__ __forceinline__ void row_to_shared(float *s, const uint16_t *g, int pairs, int lane)
{
    for (int p = lane; p < pairs; p += 32) {
        uint32_t u = ld_pair(g + 2 * p);
        s[2 * p] = bf_lo(u);
        s[2 * p + 1] = bf_hi(u);
    }
}

/* acc (the pairs a lane owns) += w * row (bf16 global) */
template <int NP>
__device__ __forceinline__ void axpy_pairs(float *acc, float w, const uint16_t *row, int lane, int width, int pairs)
{
#pragma unroll
    for (int c = 0; c < NP; c++) {
        int p = ql_attn_pair(lane, c, width);
        if (p < pairs) {
            uint32_t u = ld_pair(row + 2 * p);
            acc[2 * c] = fmaf(w, bf_lo(u), acc[2 * c]);
            acc[2 * c + 1] = fmaf(w, bf_hi(u), acc[2 * c + 1]);
        }
    }
}
/* the same with an f32 row */
template <int NP>
__device__ __forceinline__ void axpy_pairs(float *acc, float w, const float *row, int lane, int width, int pairs)
{
#pragma unroll
    for (int c = 0; c < NP; c++) {
        int p = ql_attn_pair(lane, c, width);
        if (p < pairs) {
            float2 u = __ldg((const float2 *)(row + 2 * p));
            acc[2 * c] = fmaf(w, u.x, acc[2 * c]);
            acc[2 * c + 1] = fmaf(w, u.y, acc[2 * c + 1]);
        }
    }
}

/* sum of the lane groups' partial accumulators (every lane gets the total) */
template <int NP> __device__ __forceinline__ void reduce_groups(float *acc, int width)
{
    for (int o = width; o < 32; o <<= 1)
#pragma unroll
        for (int c = 0; c < 2 * NP; c++) acc[c] += __shfl_xor_sync(FULL, acc[c], o);
}

/* row (bf16 global) = acc / div for the pairs of group 0's lanes (div = 1: as is) */
template <int NP>
__device__ __forceinline__ void store_pairs(uint16_t *row, const float *acc, float div, int lane, int width, int pairs)
{
    if (lane >= width) return;
#pragma unroll
    for (int c = 0; c < NP; c++) {
        int p = ql_attn_pair(lane, c, width);
        if (p < pairs) *(uint32_t *)(row + 2 * p) = bf_pack(acc[2 * c] / div, acc[2 * c + 1] / div);
    }
}

/* ---------------------------------------------------------------- forward */

template <int NP, int VEC>
__global__ void __launch_bounds__(WPB * 32)
k_attn_fwd(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k, const uint16_t *__restrict__ v,
           const int32_t *__restrict__ lo, const int32_t *__restrict__ hi, int64_t n, int heads, int kvh, int hd,
           int window, int split, uint16_t *__restrict__ out, float *__restrict__ lse)
{
    __shared__ __align__(16) float sq[WPB][MAXHD];
    __shared__ float sacc[WPB][MAXHD];
    __shared__ float sm[WPB], sl[WPB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = ql_attn_row(blockIdx.x, warp, split);
    const int part = ql_attn_part(warp, split), nparts = ql_attn_nparts(split);
    const int h = blockIdx.y, kh = h / (heads / kvh);
    const int pairs = hd >> 1, width = ql_attn_width(hd), groups = 32 / width, grp = lane / width;
    const int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float m = -INFINITY, l = 0.0f, acc[2 * NP];
#pragma unroll
    for (int c = 0; c < 2 * NP; c++) acc[c] = 0.0f;

    if (row < n) {   /* warp-uniform (block-uniform with split) */
        float *qs = sq[warp];
        row_to_shared(qs, q + row * Q + (int64_t)h * hd, pairs, lane);
        __syncwarp();
        const int64_t e = hi[row], b = ql_attn_first(lo[row], hi[row], window);
        const uint16_t *kb = k + (int64_t)kh * hd, *vb = v + (int64_t)kh * hd;
        for (int64_t t0 = b + 32 * (int64_t)part; t0 < e; t0 += 32 * (int64_t)nparts) {
            const int64_t s = t0 + lane;
            float sc = -INFINITY;
            if (s < e) sc = dot_row<VEC>(qs, kb + s * KV, hd) * scale;
            const float mn = fmaxf(m, warp_max(sc));   /* finite: the tile has a key */
            const float corr = expf(m - mn);           /* 0 on the first tile */
            const float p = s < e ? expf(sc - mn) : 0.0f;
            l = l * corr + warp_sum(p);
#pragma unroll
            for (int c = 0; c < 2 * NP; c++) acc[c] *= corr;
            m = mn;
            const int cnt = e - t0 < 32 ? (int)(e - t0) : 32;
            for (int base = 0; base < cnt; base += groups) {
                const int jj = base + grp;
                const float pj = __shfl_sync(FULL, p, jj & 31);
                if (jj < cnt) axpy_pairs<NP>(acc, pj, vb + (t0 + jj) * KV, lane, width, pairs);
            }
        }
        reduce_groups<NP>(acc, width);
    }

    if (nparts > 1) {   /* merge the warps' partial softmaxes; block-uniform */
        if (lane == 0) { sm[warp] = m; sl[warp] = l; }
        if (lane < width)
#pragma unroll
            for (int c = 0; c < NP; c++) {
                int p = ql_attn_pair(lane, c, width);
                if (p < pairs) { sacc[warp][2 * p] = acc[2 * c]; sacc[warp][2 * p + 1] = acc[2 * c + 1]; }
            }
        __syncthreads();
        if (warp != 0) return;
        float M = -INFINITY;
        for (int w = 0; w < nparts; w++) M = fmaxf(M, sm[w]);
        l = 0.0f;
#pragma unroll
        for (int c = 0; c < 2 * NP; c++) acc[c] = 0.0f;
        if (M != -INFINITY) {
            for (int w = 0; w < nparts; w++) {
                if (sm[w] == -INFINITY) continue;   /* a part without keys */
                const float f = expf(sm[w] - M);
                l = fmaf(sl[w], f, l);
                if (lane < width)
#pragma unroll
                    for (int c = 0; c < NP; c++) {
                        int p = ql_attn_pair(lane, c, width);
                        if (p < pairs) {
                            acc[2 * c] = fmaf(sacc[w][2 * p], f, acc[2 * c]);
                            acc[2 * c + 1] = fmaf(sacc[w][2 * p + 1], f, acc[2 * c + 1]);
                        }
                    }
            }
        }
        m = M;
    }
    if (row >= n || part != 0) return;
    store_pairs<NP>(out + row * Q + (int64_t)h * hd, acc, l > 0.0f ? l : 1.0f, lane, width, pairs);
    if (lse && lane == 0) lse[row * heads + h] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* ---------------------------------------------------------------- backward: dq and D */

template <int NP, int VEC>
__global__ void __launch_bounds__(WPB * 32)
k_attn_bwd_dq(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k, const uint16_t *__restrict__ v,
              const uint16_t *__restrict__ out, const float *__restrict__ lse, const float *__restrict__ dout,
              const int32_t *__restrict__ lo, const int32_t *__restrict__ hi, int64_t n, int heads, int kvh, int hd,
              int window, float *__restrict__ Dbuf, uint16_t *__restrict__ dq)
{
    __shared__ __align__(16) float sq[WPB][MAXHD];
    __shared__ __align__(16) float sdo[WPB][MAXHD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = ql_attn_row(blockIdx.x, warp, 0);
    if (row >= n) return;   /* no block-wide sync below */
    const int h = blockIdx.y, kh = h / (heads / kvh);
    const int pairs = hd >> 1, width = ql_attn_width(hd), groups = 32 / width, grp = lane / width;
    const int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t ro = row * Q + (int64_t)h * hd;

    float *qs = sq[warp], *dos = sdo[warp];
    row_to_shared(qs, q + ro, pairs, lane);
    float dsum = 0.0f;
    for (int p = lane; p < pairs; p += 32) {
        const float2 d2 = __ldg((const float2 *)(dout + ro + 2 * p));
        const uint32_t o = ld_pair(out + ro + 2 * p);
        dos[2 * p] = d2.x;
        dos[2 * p + 1] = d2.y;
        dsum = fmaf(d2.x, bf_lo(o), dsum);
        dsum = fmaf(d2.y, bf_hi(o), dsum);
    }
    const float D = warp_sum(dsum);
    if (lane == 0) Dbuf[row * heads + h] = D;
    __syncwarp();

    const float L = lse[row * heads + h];
    const int64_t e = hi[row], b = ql_attn_first(lo[row], hi[row], window);
    const uint16_t *kb = k + (int64_t)kh * hd, *vb = v + (int64_t)kh * hd;
    float acc[2 * NP];
#pragma unroll
    for (int c = 0; c < 2 * NP; c++) acc[c] = 0.0f;
    for (int64_t t0 = b; t0 < e; t0 += 32) {
        const int64_t s = t0 + lane;
        float dsc = 0.0f;
        if (s < e) {
            const float sc = dot_row<VEC>(qs, kb + s * KV, hd) * scale;
            const float p = expf(sc - L);
            const float dp = dot_row<VEC>(dos, vb + s * KV, hd);
            dsc = p * (dp - D) * scale;
        }
        const int cnt = e - t0 < 32 ? (int)(e - t0) : 32;
        for (int base = 0; base < cnt; base += groups) {
            const int jj = base + grp;
            const float w = __shfl_sync(FULL, dsc, jj & 31);
            if (jj < cnt) axpy_pairs<NP>(acc, w, kb + (t0 + jj) * KV, lane, width, pairs);
        }
    }
    reduce_groups<NP>(acc, width);
    store_pairs<NP>(dq + ro, acc, 1.0f, lane, width, pairs);
}

/* ---------------------------------------------------------------- backward: dk, dv */

template <int NP, int VEC>
__global__ void __launch_bounds__(WPB * 32, NP == 4 ? 2 : 3)
k_attn_bwd_dkdv(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k, const uint16_t *__restrict__ v,
                const float *__restrict__ lse, const float *__restrict__ dout, const float *__restrict__ Dbuf,
                const int32_t *__restrict__ lo, const int32_t *__restrict__ hi, const int32_t *__restrict__ qlo,
                const int32_t *__restrict__ qhi, int64_t n, int heads, int kvh, int hd, int window,
                uint16_t *__restrict__ dk, uint16_t *__restrict__ dv)
{
    __shared__ __align__(16) float sk[WPB][MAXHD];
    __shared__ __align__(16) float sv[WPB][MAXHD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t j = ql_attn_row(blockIdx.x, warp, 0);
    if (j >= n) return;   /* no block-wide sync below */
    const int kh = blockIdx.y, g = heads / kvh;
    const int pairs = hd >> 1, width = ql_attn_width(hd), groups = 32 / width, grp = lane / width;
    const int64_t Q = (int64_t)heads * hd, KV = (int64_t)kvh * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t ro = j * KV + (int64_t)kh * hd;

    float *ks = sk[warp], *vs = sv[warp];
    row_to_shared(ks, k + ro, pairs, lane);
    row_to_shared(vs, v + ro, pairs, lane);
    __syncwarp();

    float ak[2 * NP], av[2 * NP];
#pragma unroll
    for (int c = 0; c < 2 * NP; c++) ak[c] = av[c] = 0.0f;
    /* query indices fit int32 (lo, hi are int32; n <= INT32_MAX - 64, so t0 += 32 cannot wrap);
       offsets are 64-bit */
    const int i0 = qlo[j] > 0 ? qlo[j] : 0, i1 = qhi[j] < n ? qhi[j] : (int)n;
    for (int h = kh * g; h < kh * g + g; h++) {
        const uint16_t *qb = q + (int64_t)h * hd;
        const float *db = dout + (int64_t)h * hd;
        for (int t0 = i0; t0 < i1; t0 += 32) {
            const int i = t0 + lane;
            float p = 0.0f, dsc = 0.0f;
            bool sees = false;
            if (i < i1) {
                sees = ql_attn_sees(lo[i], hi[i], window, j);
                if (sees) {
                    const int64_t st = (int64_t)i * heads + h;
                    const float sc = dot_row<VEC>(ks, qb + (int64_t)i * Q, hd) * scale;
                    p = expf(sc - lse[st]);
                    const float dp = dot_row<VEC>(vs, db + (int64_t)i * Q, hd);
                    dsc = p * (dp - Dbuf[st]) * scale;
                }
            }
            const unsigned live = __ballot_sync(FULL, sees);
            const int cnt = i1 - t0 < 32 ? i1 - t0 : 32;
            for (int base = 0; base < cnt; base += groups) {
                const int jj = base + grp;
                const float pj = __shfl_sync(FULL, p, jj & 31);
                const float dj = __shfl_sync(FULL, dsc, jj & 31);
                if (jj < cnt && ((live >> jj) & 1u)) {
                    const int64_t o = (int64_t)(t0 + jj) * Q;
                    axpy_pairs<NP>(ak, dj, qb + o, lane, width, pairs);
                    axpy_pairs<NP>(av, pj, db + o, lane, width, pairs);
                }
            }
        }
    }
    reduce_groups<NP>(ak, width);
    reduce_groups<NP>(av, width);
    store_pairs<NP>(dk + ro, ak, 1.0f, lane, width, pairs);
    store_pairs<NP>(dv + ro, av, 1.0f, lane, width, pairs);
}

/* ---------------------------------------------------------------- launchers */

/* runs the launch (the variadic part) with constants NP (pairs per lane, 1..4) and VEC (2 or 8) */
#define ATT_DISPATCH(np, v8, ...)                                         \
    switch ((np) * 2 + ((v8) ? 1 : 0)) {                                  \
    case 2: { const int NP = 1, VEC = 2; __VA_ARGS__; } break;                 \
    case 3: { const int NP = 1, VEC = 8; __VA_ARGS__; } break;                 \
    case 4: { const int NP = 2, VEC = 2; __VA_ARGS__; } break;                 \
    case 5: { const int NP = 2, VEC = 8; __VA_ARGS__; } break;                 \
    case 6: { const int NP = 3, VEC = 2; __VA_ARGS__; } break;                 \
    case 7: { const int NP = 3, VEC = 8; __VA_ARGS__; } break;                 \
    case 8: { const int NP = 4, VEC = 2; __VA_ARGS__; } break;                 \
    default: { const int NP = 4, VEC = 8; __VA_ARGS__; } break;                \
    }

static inline bool aligned(const void *p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static ql_status check_shape(const char *who, int64_t n, int heads, int kvh, int hd)
{
    if (n < 0) return ql_fail(QL_EINVAL, "%s: negative token count %lld", who, (long long)n);
    if (heads <= 0 || kvh <= 0 || heads % kvh != 0 || heads > 65535)
        return ql_fail(QL_EINVAL, "%s: %d heads over %d kv heads (heads must be a positive multiple of kv_heads, "
                       "at most 65535)", who, heads, kvh);
    if (hd < 16 || hd > MAXHD || hd % 2 != 0)
        return ql_fail(QL_EUNSUPPORTED, "%s: head_dim %d is not supported (even, 16..%d)", who, hd, MAXHD);
    /* token indices are int32 (lo, hi; dk/dv's query loop steps an int by 32), which also keeps
       ql_attn_blocks(n, 0), the grid's x, far below 2^31 - 1 */
    if (n > INT32_MAX - 64)
        return ql_fail(QL_EINVAL, "%s: %lld tokens are too many for one launch", who, (long long)n);
    return QL_OK;
}

ql_status qlk_attn_fwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo, const int32_t *hi,
                       int64_t n, int heads, int kvh, int hd, int window, uint16_t *out, float *lse)
{
    QL_TRY(check_shape("attention forward", n, heads, kvh, hd));
    if (n == 0) return QL_OK;
    if (!q || !k || !v || !lo || !hi || !out)
        return ql_fail(QL_EINVAL, "attention forward: a NULL buffer");
    if (!aligned(q, 4) || !aligned(k, 4) || !aligned(v, 4) || !aligned(out, 4))
        return ql_fail(QL_EINVAL, "attention forward: q, k, v and out must be 4-byte aligned");
    const bool v8 = hd % 8 == 0 && aligned(k, 16);
    int dev = 0;
    QL_CU(cudaGetDevice(&dev));
    /* few rows (generation): 8 warps per row so that the SMs have work */
    const int split = n * heads < (int64_t)ql_cuda_sm_count(dev) * 32;
    dim3 grid((unsigned)ql_attn_blocks(n, split), (unsigned)heads);
    ATT_DISPATCH(ql_attn_np(hd), v8,
                 k_attn_fwd<NP, VEC><<<grid, WPB * 32>>>(q, k, v, lo, hi, n, heads, kvh, hd, window, split, out, lse));
    QL_CU_LAUNCH("k_attn_fwd");
    return QL_OK;
}

ql_status qlk_attn_bwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out, const float *lse,
                       const float *dout, const int32_t *lo, const int32_t *hi, const int32_t *qlo, const int32_t *qhi,
                       int64_t n, int heads, int kvh, int hd, int window, uint16_t *dq, uint16_t *dk, uint16_t *dv)
{
    QL_TRY(check_shape("attention backward", n, heads, kvh, hd));
    if (n == 0) return QL_OK;
    if (!q || !k || !v || !out || !lse || !dout || !lo || !hi || !qlo || !qhi || !dq || !dk || !dv)
        return ql_fail(QL_EINVAL, "attention backward: a NULL buffer");
    if (!aligned(q, 4) || !aligned(k, 4) || !aligned(v, 4) || !aligned(out, 4) || !aligned(dq, 4) ||
        !aligned(dk, 4) || !aligned(dv, 4) || !aligned(dout, 8))
        return ql_fail(QL_EINVAL, "attention backward: bf16 buffers must be 4-byte aligned and dout 8-byte aligned");
    const bool v8q = hd % 8 == 0 && aligned(k, 16) && aligned(v, 16);              /* dq: rows of k, v */
    const bool v8k = hd % 8 == 0 && aligned(q, 16) && aligned(dout, 16);           /* dk, dv: rows of q, dout */
    int dev = 0;
    QL_CU(cudaGetDevice(&dev));
    float *D = (float *)ql_cuda_tmp_alloc(dev, sizeof(float) * (size_t)(n * heads));
    if (!D) return QL_ENOMEM;
    const int np = ql_attn_np(hd);
    ql_status st = QL_OK;
    cudaError_t e;
    dim3 gq((unsigned)ql_attn_blocks(n, 0), (unsigned)heads), gk((unsigned)ql_attn_blocks(n, 0), (unsigned)kvh);
    ATT_DISPATCH(np, v8q,
                 k_attn_bwd_dq<NP, VEC><<<gq, WPB * 32>>>(q, k, v, out, lse, dout, lo, hi, n, heads, kvh, hd, window,
                                                          D, dq));
    e = cudaGetLastError();
    if (e != cudaSuccess) st = ql_cuda_fail(e, "launch of k_attn_bwd_dq", __FILE__, __LINE__);
    if (st == QL_OK) {
        ATT_DISPATCH(np, v8k,
                     k_attn_bwd_dkdv<NP, VEC><<<gk, WPB * 32>>>(q, k, v, lse, dout, D, lo, hi, qlo, qhi, n, heads, kvh,
                                                                hd, window, dk, dv));
        e = cudaGetLastError();
        if (e != cudaSuccess) st = ql_cuda_fail(e, "launch of k_attn_bwd_dkdv", __FILE__, __LINE__);
    }
    /* stream-ordered reuse: the cache hands D out again only to later work on this stream */
    ql_cuda_tmp_free(dev, D);
    return st;
}
