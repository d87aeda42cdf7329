/*
 * flash_attn.cu — causal attention of a training batch without an n x n
 * matrix: tiles of queries and keys in shared memory, products on tensor
 * cores through mma.sync (m16n8k16, bf16 in, f32 accumulate), the softmax
 * kept online per row (running max and sum, output rescaled), as in
 * FlashAttention-2 (Dao, 2023). Runs on sm_80 and later.
 *
 * Queries see keys [lo_i, hi_i) (lo_i raised to hi_i - window under a
 * sliding window), any ranges: a tile of keys is visited when one of the
 * tile's queries sees one of its keys, and every score outside a query's own
 * range is masked, so packed documents never see each other.
 *
 *   forward   one block per (64 queries, head); 4 warps of 16 query rows;
 *             key tiles of 64. Writes out A and lse S (natural log; -inf
 *             for a query with no keys, whose output is 0).
 *   backward  D = rowsum(dO * O) first (qlk_attn_rowdot, attention_gemm.cu), then
 *             dK, dV: one block per (64 keys, query head), 4 warps of 16
 *                     keys; the queries that see the block's keys (from the
 *                     batch's qlo/qhi) in tiles of 32. With grouped queries
 *                     each head's share goes to f32 scratch and a second
 *                     kernel sums the group (a block per kv head instead
 *                     would leave most of the GPU idle: 4 kv heads x 32 key
 *                     blocks is fewer blocks than an H200 has SMs);
 *             dQ:     one block per (64 queries, head), key tiles of 32.
 *             P is recomputed from lse; dS = P (dP - D); dQ = scale dS K,
 *             dK = scale dS^T Q, dV = P^T dO, each written once as bf16.
 *
 * Fragment layouts are those of the PTX ISA for mma.m16n8k16 (.row.col):
 * lane = 4 g + t; A holds rows g and g + 8, columns 2t, 2t + 1 and 2t + 8,
 * 2t + 9; B holds columns (n) g, rows (k) 2t, 2t + 1 and 2t + 8, 2t + 9;
 * C holds rows g and g + 8, columns 2t, 2t + 1. Two neighbouring C tiles of
 * n = 8 are the A fragment of a k = 16 product, which is how P (and dS)
 * feed the next product without leaving registers. Tiles sit row-major in
 * shared memory, rows padded by 8 values so that the 32 lanes of a 32-bit
 * fragment load or an ldmatrix phase hit 32 different banks; operands whose
 * k index runs along a tile's rows (V for P V; dO, Q, K in the backward)
 * come out by ldmatrix .trans. Tiles stream in by cp.async, two stages, the
 * next one loading while the current one is used.
 *
 * Head dims: multiples of 16 up to 128 (qlk_flash_supported).
 *
 * Index math: token indices (query rows, keys, tile starts) may be int, as
 * lo/hi are int32 and the host refuses n > INT32_MAX - 64, so a tile start
 * plus a tile's 64 rows still fits; global offsets (a row times heads * hd or
 * kvh * hd, lse and D at row * heads) are int64; offsets inside a shared-memory
 * tile are int.
 */
#include "decoder_kernels.cuh"

#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>

#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FA_OLD_ARCH 1   /* the kernels compile there but never run: qlk_flash_supported says no */
#endif

__device__ __forceinline__ void mma_bf16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1)
{
#ifdef FA_OLD_ARCH
    /* no bf16 mma before sm_80; the host never launches these kernels there (qlk_flash_supported) */
    (void)c; (void)a0; (void)a1; (void)a2; (void)a3; (void)b0; (void)b1;
    __trap();
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* two floats as a bf16 pair, the first in the low half (rounded to nearest even) */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t ld32(const uint16_t *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* a query's key range with the window applied; empty for rows past the batch (int: lo, hi are int32) */
__device__ __forceinline__ void key_range(const int32_t *lo, const int32_t *hi, int64_t i, int64_t n, int window,
                                          int *b, int *e)
{
    if (i >= n) { *b = 0; *e = 0; return; }
    int l = lo[i], h = hi[i];
    if (window > 0 && h - window > l) l = h - window;
    *b = l;
    *e = h;
}

/* 16 bytes global -> shared without passing through registers; zeros when !valid */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
#ifdef FA_OLD_ARCH
    (void)dst; (void)src; (void)valid;
    __trap();
#else
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit()
{
#ifndef FA_OLD_ARCH
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
/* waits until at most N of this thread's committed groups are still in flight */
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#ifndef FA_OLD_ARCH
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* B fragments of two neighbouring n = 8 tiles from a row-major tile T[k][n] in shared memory:
   rows k0..k0 + 15, columns n0..n0 + 15. Lane l gives the address of row k0 + (l & 7) + 8 ((l >> 3) & 1),
   column n0 + 8 (l >> 4); ldmatrix .trans hands lane 4 g + t the values T[k0 + 2t (+1)][n0 + g] of
   each 8 x 8 matrix: b0, b1 of the first tile, then b0, b1 of the second. */
template <int LD>
__device__ __forceinline__ void ldsm_b_pair(const uint16_t *T, int k0, int n0, int lane, uint32_t &b00, uint32_t &b01,
                                            uint32_t &b10, uint32_t &b11)
{
    const uint16_t *p = T + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8;
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b00), "=r"(b01), "=r"(b10), "=r"(b11)
                 : "r"(a));
}

/* rows [r0, r0 + rows) of src (row stride ld values) into dst [rows][HD + 8] by cp.async, zeros
   past n; the caller commits and waits */
template <int HD>
__device__ __forceinline__ void load_rows_async(uint16_t *dst, const uint16_t *src, int64_t ld, int64_t r0, int rows,
                                                int64_t n)
{
    constexpr int C = HD / 8;   /* 16-byte chunks a row */
    for (int c = threadIdx.x; c < rows * C; c += blockDim.x) {
        int r = c / C, col = (c % C) * 8;
        bool ok = r0 + r < n;
        cp_async16(dst + r * (HD + 8) + col, ok ? src + (r0 + r) * ld + col : src, ok);
    }
}

/* ---------------------------------------------------------------- forward */

template <int HD>
struct fwd_smem {
    static constexpr int BN = 64;
    static constexpr size_t tile = (size_t)BN * (HD + 8) * 2, bytes = 4 * tile;   /* K, V x 2 stages */
};

template <int HD>
__global__ void __launch_bounds__(128) k_flash_fwd(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                                                   const uint16_t *__restrict__ v, const int32_t *__restrict__ lo,
                                                   const int32_t *__restrict__ hi, int64_t n, int heads, int kvh,
                                                   int window, float sl2, uint16_t *__restrict__ out,
                                                   float *__restrict__ lse)
{
    constexpr int BN = fwd_smem<HD>::BN, KS = HD / 16, DT = HD / 8, LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    /* stage st: K at smem + 2 st tile, V right after it */
#define FA_K(st) ((uint16_t *)(smem + (size_t)(2 * (st)) * fwd_smem<HD>::tile))
#define FA_V(st) ((uint16_t *)(smem + (size_t)(2 * (st) + 1) * fwd_smem<HD>::tile))
    __shared__ int s_lo, s_hi;
    const int h = blockIdx.y, kh = h / (heads / kvh);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t Q = (int64_t)heads * HD, KV = (int64_t)kvh * HD;
    /* query blocks in reverse order: the late ones see the most keys and should start first */
    const int64_t r0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * 64, ra = r0 + warp * 16 + g, rb = ra + 8;
    int la, ha, lb, hb;
    key_range(lo, hi, ra, n, window, &la, &ha);
    key_range(lo, hi, rb, n, window, &lb, &hb);
    if (threadIdx.x == 0) { s_lo = INT32_MAX; s_hi = 0; }
    __syncthreads();
    if (t == 0) {
        if (la < ha) { atomicMin(&s_lo, la); atomicMax(&s_hi, ha); }
        if (lb < hb) { atomicMin(&s_lo, lb); atomicMax(&s_hi, hb); }
    }
    __syncthreads();
    const int kb = s_lo, ke = s_hi;
    const int ntiles = ke > kb ? (ke - kb + BN - 1) / BN : 0;
    const uint16_t *kbase = k + (int64_t)kh * HD, *vbase = v + (int64_t)kh * HD;
    if (ntiles > 0) {
        load_rows_async<HD>(FA_K(0), kbase, KV, kb, BN, n);
        load_rows_async<HD>(FA_V(0), vbase, KV, kb, BN, n);
        cp_async_commit();
    }

    /* this warp's query rows as A fragments */
    uint32_t qf[KS][4];
    {
        const uint16_t *qa = q + ra * Q + (int64_t)h * HD, *qb = q + rb * Q + (int64_t)h * HD;
#pragma unroll
        for (int s = 0; s < KS; s++) {
            qf[s][0] = ra < n ? ld32(qa + s * 16 + 2 * t) : 0;
            qf[s][1] = rb < n ? ld32(qb + s * 16 + 2 * t) : 0;
            qf[s][2] = ra < n ? ld32(qa + s * 16 + 8 + 2 * t) : 0;
            qf[s][3] = rb < n ? ld32(qb + s * 16 + 8 + 2 * t) : 0;
        }
    }
    float o[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, sa = 0.0f, sb = 0.0f;   /* running max (log2 units) and partial sums */

    for (int it = 0; it < ntiles; it++) {
        const int j0 = kb + it * BN;
        if (it + 1 < ntiles) {   /* the next tile streams in while this one is used */
            load_rows_async<HD>(FA_K((it + 1) & 1), kbase, KV, j0 + BN, BN, n);
            load_rows_async<HD>(FA_V((it + 1) & 1), vbase, KV, j0 + BN, BN, n);
            cp_async_commit();
            cp_async_wait<1>();
        } else
            cp_async_wait<0>();
        __syncthreads();
        const uint16_t *Ks = FA_K(it & 1), *Vs = FA_V(it & 1);
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                const uint16_t *kr = Ks + (nt * 8 + g) * LD + ks * 16 + 2 * t;
                mma_bf16(s[nt], qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3], ld32(kr), ld32(kr + 8));
            }
        /* mask, scale to log2 units, row maxima over the quad */
        float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            int j = j0 + nt * 8 + 2 * t;
            s[nt][0] = (j >= la && j < ha) ? s[nt][0] * sl2 : -INFINITY;
            s[nt][1] = (j + 1 >= la && j + 1 < ha) ? s[nt][1] * sl2 : -INFINITY;
            s[nt][2] = (j >= lb && j < hb) ? s[nt][2] * sl2 : -INFINITY;
            s[nt][3] = (j + 1 >= lb && j + 1 < hb) ? s[nt][3] * sl2 : -INFINITY;
            mxa = fmaxf(mxa, fmaxf(s[nt][0], s[nt][1]));
            mxb = fmaxf(mxb, fmaxf(s[nt][2], s[nt][3]));
        }
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
        mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
        mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
        const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
        /* rows that have seen no key yet keep max -inf: their p and rescale factors are 0 */
        const float ca = na == -INFINITY ? 0.0f : exp2f(ma - na), cb = nb == -INFINITY ? 0.0f : exp2f(mb - nb);
        const float ba = na == -INFINITY ? 0.0f : na, bb = nb == -INFINITY ? 0.0f : nb;
        ma = na;
        mb = nb;
        sa *= ca;
        sb *= cb;
#pragma unroll
        for (int d = 0; d < DT; d++) {
            o[d][0] *= ca; o[d][1] *= ca;
            o[d][2] *= cb; o[d][3] *= cb;
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - ba);
            s[nt][1] = exp2f(s[nt][1] - ba);
            s[nt][2] = exp2f(s[nt][2] - bb);
            s[nt][3] = exp2f(s[nt][3] - bb);
            sa += s[nt][0] + s[nt][1];
            sb += s[nt][2] + s[nt][3];
        }
        /* O += P V, V's fragments by ldmatrix .trans from the row-major tile */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int d = 0; d < DT; d += 2) {
                uint32_t b00, b01, b10, b11;
                ldsm_b_pair<LD>(Vs, kk * 16, d * 8, lane, b00, b01, b10, b11);
                mma_bf16(o[d], a0, a1, a2, a3, b00, b01);
                mma_bf16(o[d + 1], a0, a1, a2, a3, b10, b11);
            }
        }
        __syncthreads();   /* everyone is done with this stage before it is refilled */
    }
    sa += __shfl_xor_sync(0xffffffffu, sa, 1);
    sa += __shfl_xor_sync(0xffffffffu, sa, 2);
    sb += __shfl_xor_sync(0xffffffffu, sb, 1);
    sb += __shfl_xor_sync(0xffffffffu, sb, 2);
    const float ia = sa > 0 ? 1.0f / sa : 0.0f, ib = sb > 0 ? 1.0f / sb : 0.0f;
    if (ra < n) {
        uint16_t *oa = out + ra * Q + (int64_t)h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < DT; d++) *reinterpret_cast<uint32_t *>(oa + d * 8) = pack_bf16(o[d][0] * ia, o[d][1] * ia);
        if (lse && t == 0) lse[ra * heads + h] = sa > 0 ? (ma + log2f(sa)) * FA_LN2 : -INFINITY;
    }
    if (rb < n) {
        uint16_t *ob = out + rb * Q + (int64_t)h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < DT; d++) *reinterpret_cast<uint32_t *>(ob + d * 8) = pack_bf16(o[d][2] * ib, o[d][3] * ib);
        if (lse && t == 0) lse[rb * heads + h] = sb > 0 ? (mb + log2f(sb)) * FA_LN2 : -INFINITY;
    }
}

/* ---------------------------------------------------------------- backward: dK, dV */

/* shared memory of k_flash_dkv: K, V of the block's 64 keys; two stages of 32 queries' Q, dO, lse
   (log2 units), D and key ranges */
#undef FA_K
#undef FA_V

template <int HD>
struct dkv_smem {
    static constexpr int BK = 64, BQ = 32;
    static constexpr size_t kv = (size_t)BK * (HD + 8) * 2, qt = (size_t)BQ * (HD + 8) * 2, meta = BQ * 4 * 4;
    static constexpr size_t stage = 2 * qt + meta, bytes = 2 * kv + 2 * stage;
};

template <int HD>
__global__ void __launch_bounds__(128) k_flash_dkv(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                                                   const uint16_t *__restrict__ v, const uint16_t *__restrict__ dO,
                                                   const float *__restrict__ lse, const float *__restrict__ D,
                                                   const int32_t *__restrict__ lo, const int32_t *__restrict__ hi,
                                                   const int32_t *__restrict__ qlo, const int32_t *__restrict__ qhi,
                                                   int64_t n, int heads, int kvh, int window, float sl2, float scale,
                                                   uint16_t *__restrict__ dk, uint16_t *__restrict__ dv,
                                                   float *__restrict__ pk, float *__restrict__ pv, int group_loop)
{
    typedef dkv_smem<HD> L;
    constexpr int BK = L::BK, BQ = L::BQ, KS = HD / 16, DT = HD / 8, NT = BQ / 8, LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t *Ks = (uint16_t *)smem, *Vs = (uint16_t *)(smem + L::kv);
    __shared__ int s_lo, s_hi;
    /* blockIdx.y: a query head (its share of dK, dV), or with group_loop a kv head whose group of
       query heads this block walks one after another, summing dK, dV in its registers */
    const int grp = heads / kvh;
    const int kh = group_loop ? (int)blockIdx.y : (int)blockIdx.y / grp;
    const int h0 = group_loop ? kh * grp : (int)blockIdx.y, h1 = group_loop ? h0 + grp : h0 + 1;
    int h = h0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t Q = (int64_t)heads * HD, KV = (int64_t)kvh * HD;
    const int64_t c0 = (int64_t)blockIdx.x * BK;
    const int ka = (int)(c0 + warp * 16 + g), kb = ka + 8;   /* this lane's two key rows (< n + 64: int) */
    const int wr = warp * 16;                                   /* the warp's first row in Ks, Vs */
    const uint16_t *qbase = q + (int64_t)h * HD, *obase = dO + (int64_t)h * HD;

    if (threadIdx.x == 0) { s_lo = INT32_MAX; s_hi = 0; }
    load_rows_async<HD>(Ks, k + (int64_t)kh * HD, KV, c0, BK, n);
    load_rows_async<HD>(Vs, v + (int64_t)kh * HD, KV, c0, BK, n);
    cp_async_commit();
    __syncthreads();
    for (int64_t j = c0 + threadIdx.x; j < c0 + BK && j < n; j += blockDim.x)
        if (qlo[j] < qhi[j]) { atomicMin(&s_lo, qlo[j]); atomicMax(&s_hi, qhi[j]); }
    __syncthreads();
    const int qb = s_lo, qe = s_hi;
    const int ntiles = qe > qb ? (qe - qb + BQ - 1) / BQ : 0;

    /* stage st of the query tiles: Q, dO rows, then lse, D, lo, hi per query */
    auto stage_load = [&](int st, int i0) {
        unsigned char *b = smem + 2 * L::kv + st * L::stage;
        load_rows_async<HD>((uint16_t *)b, qbase, Q, i0, BQ, n);
        load_rows_async<HD>((uint16_t *)(b + L::qt), obase, Q, i0, BQ, n);
        if (threadIdx.x < BQ) {
            float *Ls = (float *)(b + 2 * L::qt), *Ds = Ls + BQ;
            int *Lo = (int *)(Ds + BQ), *Hi = Lo + BQ;
            int64_t i = i0 + threadIdx.x;
            int bb, ee;
            key_range(lo, hi, i, n, window, &bb, &ee);
            Lo[threadIdx.x] = bb;
            Hi[threadIdx.x] = ee;
            Ls[threadIdx.x] = (i < n && bb < ee) ? lse[i * heads + h] * FA_LOG2E : 0.0f;
            Ds[threadIdx.x] = i < n ? D[i * heads + h] : 0.0f;
        }
        cp_async_commit();
    };

    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) {
        dka[d][0] = dka[d][1] = dka[d][2] = dka[d][3] = 0.0f;
        dva[d][0] = dva[d][1] = dva[d][2] = dva[d][3] = 0.0f;
    }
    for (h = h0; h < h1; h++) {
        qbase = q + (int64_t)h * HD;
        obase = dO + (int64_t)h * HD;
        if (ntiles > 0) stage_load(0, qb);
        for (int it = 0; it < ntiles; it++) {
            const int i0 = qb + it * BQ;
            if (it + 1 < ntiles) {
                stage_load((it + 1) & 1, i0 + BQ);
                cp_async_wait<1>();
            } else
                cp_async_wait<0>();
            __syncthreads();
            unsigned char *b = smem + 2 * L::kv + (it & 1) * L::stage;
            const uint16_t *Qs = (const uint16_t *)b, *dOs = (const uint16_t *)(b + L::qt);
            const float *Ls = (const float *)(b + 2 * L::qt), *Ds = Ls + BQ;
            const int *Lo = (const int *)(Ds + BQ), *Hi = Lo + BQ;
            /* S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 32 queries */
            float s[NT][4], dp[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
                dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
            }
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                const uint16_t *kr = Ks + (wr + g) * LD + ks * 16 + 2 * t, *vr = Vs + (wr + g) * LD + ks * 16 + 2 * t;
                uint32_t k0 = ld32(kr), k1 = ld32(kr + 8 * LD), k2 = ld32(kr + 8), k3 = ld32(kr + 8 * LD + 8);
                uint32_t v0 = ld32(vr), v1 = ld32(vr + 8 * LD), v2 = ld32(vr + 8), v3 = ld32(vr + 8 * LD + 8);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint16_t *qr = Qs + (nt * 8 + g) * LD + ks * 16 + 2 * t;
                    const uint16_t *dr = dOs + (nt * 8 + g) * LD + ks * 16 + 2 * t;
                    mma_bf16(s[nt], k0, k1, k2, k3, ld32(qr), ld32(qr + 8));
                    mma_bf16(dp[nt], v0, v1, v2, v3, ld32(dr), ld32(dr + 8));
                }
            }
            /* P^T and dS^T = P^T (dP^T - D) */
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int qi = nt * 8 + 2 * t + (e & 1), key = e < 2 ? ka : kb;
                    bool ok = key >= Lo[qi] && key < Hi[qi];
                    float p = ok ? exp2f(s[nt][e] * sl2 - Ls[qi]) : 0.0f;
                    s[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - Ds[qi]);
                }
            }
            /* dV += P^T dO, dK += dS^T Q over the 32 queries (two k = 16 steps); dO's and Q's
               fragments by ldmatrix .trans from their row-major tiles */
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) {
                uint32_t p0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), p1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                uint32_t p2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), p3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                uint32_t d0 = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), d1 = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
                uint32_t d2 = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), d3 = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
                for (int d = 0; d < DT; d += 2) {
                    uint32_t b00, b01, b10, b11;
                    ldsm_b_pair<LD>(dOs, kk * 16, d * 8, lane, b00, b01, b10, b11);
                    mma_bf16(dva[d], p0, p1, p2, p3, b00, b01);
                    mma_bf16(dva[d + 1], p0, p1, p2, p3, b10, b11);
                    ldsm_b_pair<LD>(Qs, kk * 16, d * 8, lane, b00, b01, b10, b11);
                    mma_bf16(dka[d], d0, d1, d2, d3, b00, b01);
                    mma_bf16(dka[d + 1], d0, d1, d2, d3, b10, b11);
                }
            }
            __syncthreads();
        }
    }   /* the group's heads */
    if (ntiles == 0) cp_async_wait<0>();   /* K and V were loaded for nothing; let them land */
    if (pk) {   /* grouped queries: this head's share, summed over the group by k_group_sum */
        const int64_t col = (int64_t)h0 * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < DT; d++) {
            if (ka < n) {
                *reinterpret_cast<float2 *>(pk + ka * Q + col + d * 8) = make_float2(dka[d][0] * scale, dka[d][1] * scale);
                *reinterpret_cast<float2 *>(pv + ka * Q + col + d * 8) = make_float2(dva[d][0], dva[d][1]);
            }
            if (kb < n) {
                *reinterpret_cast<float2 *>(pk + kb * Q + col + d * 8) = make_float2(dka[d][2] * scale, dka[d][3] * scale);
                *reinterpret_cast<float2 *>(pv + kb * Q + col + d * 8) = make_float2(dva[d][2], dva[d][3]);
            }
        }
        return;
    }
    const int64_t col = (int64_t)kh * HD + 2 * t;
    if (ka < n)
#pragma unroll
        for (int d = 0; d < DT; d++) {
            *reinterpret_cast<uint32_t *>(dk + ka * KV + col + d * 8) = pack_bf16(dka[d][0] * scale, dka[d][1] * scale);
            *reinterpret_cast<uint32_t *>(dv + ka * KV + col + d * 8) = pack_bf16(dva[d][0], dva[d][1]);
        }
    if (kb < n)
#pragma unroll
        for (int d = 0; d < DT; d++) {
            *reinterpret_cast<uint32_t *>(dk + kb * KV + col + d * 8) = pack_bf16(dka[d][2] * scale, dka[d][3] * scale);
            *reinterpret_cast<uint32_t *>(dv + kb * KV + col + d * 8) = pack_bf16(dva[d][2], dva[d][3]);
        }
}

/* dk, dv A [n, kvh * hd] = the sums over each group's query heads of pk, pv f32 [n, heads * hd] */
__global__ void k_group_sum(const float *__restrict__ pk, const float *__restrict__ pv, int64_t n, int heads, int kvh,
                            int hd, uint16_t *__restrict__ dk, uint16_t *__restrict__ dv)
{
    const int64_t KV = (int64_t)kvh * hd, total = n * KV;
    const int grp = heads / kvh;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = e / KV, c = e % KV, kh = c / hd, d = c % hd;
        const float *a = pk + j * heads * hd + kh * grp * hd + d, *b = pv + j * heads * hd + kh * grp * hd + d;
        float sk = 0.0f, sv = 0.0f;
        for (int i = 0; i < grp; i++) { sk += a[i * hd]; sv += b[i * hd]; }
        __nv_bfloat16 hk = __float2bfloat16_rn(sk), hv = __float2bfloat16_rn(sv);
        dk[e] = *reinterpret_cast<uint16_t *>(&hk);
        dv[e] = *reinterpret_cast<uint16_t *>(&hv);
    }
}

/* ---------------------------------------------------------------- backward: dQ */

template <int HD>
struct dq_smem {
    static constexpr int BQ = 64, BK = 32;
    static constexpr size_t qt = (size_t)BQ * (HD + 8) * 2, kt = (size_t)BK * (HD + 8) * 2;
    static constexpr size_t bytes = 2 * qt + 4 * kt;   /* Q, dO; K, V x 2 stages */
};

template <int HD>
__global__ void __launch_bounds__(128) k_flash_dq(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                                                  const uint16_t *__restrict__ v, const uint16_t *__restrict__ dO,
                                                  const float *__restrict__ lse, const float *__restrict__ D,
                                                  const int32_t *__restrict__ lo, const int32_t *__restrict__ hi,
                                                  int64_t n, int heads, int kvh, int window, float sl2, float scale,
                                                  uint16_t *__restrict__ dq)
{
    typedef dq_smem<HD> L;
    constexpr int BK = L::BK, KS = HD / 16, DT = HD / 8, NT = BK / 8, LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t *Qs = (uint16_t *)smem, *dOs = (uint16_t *)(smem + L::qt);
    __shared__ int s_lo, s_hi;
    const int h = blockIdx.y, kh = h / (heads / kvh);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t Q = (int64_t)heads * HD, KV = (int64_t)kvh * HD;
    const int64_t r0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * L::BQ, ra = r0 + warp * 16 + g, rb = ra + 8;
    const int wr = warp * 16;
    const uint16_t *kbase = k + (int64_t)kh * HD, *vbase = v + (int64_t)kh * HD;
    int la, ha, lb, hb;
    key_range(lo, hi, ra, n, window, &la, &ha);
    key_range(lo, hi, rb, n, window, &lb, &hb);
    if (threadIdx.x == 0) { s_lo = INT32_MAX; s_hi = 0; }
    load_rows_async<HD>(Qs, q + (int64_t)h * HD, Q, r0, L::BQ, n);
    load_rows_async<HD>(dOs, dO + (int64_t)h * HD, Q, r0, L::BQ, n);
    cp_async_commit();
    __syncthreads();
    if (t == 0) {
        if (la < ha) { atomicMin(&s_lo, la); atomicMax(&s_hi, ha); }
        if (lb < hb) { atomicMin(&s_lo, lb); atomicMax(&s_hi, hb); }
    }
    __syncthreads();
    const int kb0 = s_lo, ke = s_hi;
    const int ntiles = ke > kb0 ? (ke - kb0 + BK - 1) / BK : 0;
    auto stage_load = [&](int st, int j0) {
        unsigned char *b = smem + 2 * L::qt + st * 2 * L::kt;
        load_rows_async<HD>((uint16_t *)b, kbase, KV, j0, BK, n);
        load_rows_async<HD>((uint16_t *)(b + L::kt), vbase, KV, j0, BK, n);
        cp_async_commit();
    };
    if (ntiles > 0) stage_load(0, kb0);
    const float lsa = (ra < n && la < ha) ? lse[ra * heads + h] * FA_LOG2E : 0.0f;
    const float lsb = (rb < n && lb < hb) ? lse[rb * heads + h] * FA_LOG2E : 0.0f;
    const float Da = ra < n ? D[ra * heads + h] : 0.0f, Db = rb < n ? D[rb * heads + h] : 0.0f;

    float acc[DT][4];
#pragma unroll
    for (int d = 0; d < DT; d++) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
    for (int it = 0; it < ntiles; it++) {
        const int j0 = kb0 + it * BK;
        if (it + 1 < ntiles) {
            stage_load((it + 1) & 1, j0 + BK);
            cp_async_wait<1>();
        } else
            cp_async_wait<0>();
        __syncthreads();
        unsigned char *b = smem + 2 * L::qt + (it & 1) * 2 * L::kt;
        const uint16_t *Ks = (const uint16_t *)b, *Vs = (const uint16_t *)(b + L::kt);
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const uint16_t *qr = Qs + (wr + g) * LD + ks * 16 + 2 * t, *orow = dOs + (wr + g) * LD + ks * 16 + 2 * t;
            uint32_t q0 = ld32(qr), q1 = ld32(qr + 8 * LD), q2 = ld32(qr + 8), q3 = ld32(qr + 8 * LD + 8);
            uint32_t o0 = ld32(orow), o1 = ld32(orow + 8 * LD), o2 = ld32(orow + 8), o3 = ld32(orow + 8 * LD + 8);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint16_t *kr = Ks + (nt * 8 + g) * LD + ks * 16 + 2 * t;
                const uint16_t *vr = Vs + (nt * 8 + g) * LD + ks * 16 + 2 * t;
                mma_bf16(s[nt], q0, q1, q2, q3, ld32(kr), ld32(kr + 8));
                mma_bf16(dp[nt], o0, o1, o2, o3, ld32(vr), ld32(vr + 8));
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            int j = j0 + nt * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = j + (e & 1);
                bool ok = e < 2 ? (key >= la && key < ha) : (key >= lb && key < hb);
                float p = ok ? exp2f(s[nt][e] * sl2 - (e < 2 ? lsa : lsb)) : 0.0f;
                dp[nt][e] = p * (dp[nt][e] - (e < 2 ? Da : Db));
            }
        }
        /* dQ += dS K over the 32 keys; K's fragments by ldmatrix .trans from its row-major tile */
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t a0 = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), a1 = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
            uint32_t a2 = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), a3 = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
            for (int d = 0; d < DT; d += 2) {
                uint32_t b00, b01, b10, b11;
                ldsm_b_pair<LD>(Ks, kk * 16, d * 8, lane, b00, b01, b10, b11);
                mma_bf16(acc[d], a0, a1, a2, a3, b00, b01);
                mma_bf16(acc[d + 1], a0, a1, a2, a3, b10, b11);
            }
        }
        __syncthreads();
    }
    if (ntiles == 0) cp_async_wait<0>();
    if (ra < n) {
        uint16_t *p = dq + ra * Q + (int64_t)h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < DT; d++) *reinterpret_cast<uint32_t *>(p + d * 8) = pack_bf16(acc[d][0] * scale, acc[d][1] * scale);
    }
    if (rb < n) {
        uint16_t *p = dq + rb * Q + (int64_t)h * HD + 2 * t;
#pragma unroll
        for (int d = 0; d < DT; d++) *reinterpret_cast<uint32_t *>(p + d * 8) = pack_bf16(acc[d][2] * scale, acc[d][3] * scale);
    }
}

/* ---------------------------------------------------------------- host side */

/* heads go to gridDim.y (at most 65535) and the kernels divide by heads / kvh */
static ql_status flash_shape(int64_t n, int heads, int kvh)
{
    if (n > INT32_MAX - 64) return ql_fail(QL_EINVAL, "flash attention: %lld tokens", (long long)n);
    if (heads <= 0 || kvh <= 0 || heads % kvh != 0 || heads > 65535)
        return ql_fail(QL_EINVAL, "flash attention: %d heads over %d kv heads (heads must be a positive multiple of "
                       "kv_heads, at most 65535)", heads, kvh);
    return QL_OK;
}

int qlk_flash_supported(int hd)
{
    if (hd % 16 != 0 || hd < 16 || hd > 128) return 0;
    /* asked on every attention call: the device's answer is kept (0 unknown, 1 yes, 2 no) */
    static int known[64];
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (dev >= 0 && dev < 64 && known[dev]) return known[dev] == 1;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
    if (dev >= 0 && dev < 64) known[dev] = major >= 8 ? 1 : 2;
    return major >= 8;
}

/* Grouped queries' dK, dV: per query head shares (f32 [n, Q] each, 8 x Q bytes a token) summed by
   k_group_sum, which keeps every SM busy on short batches; or, from FLASH_GROUP_LOOP_N tokens on
   (blocks enough for the card then), each block walks its kv head's group of query heads and sums
   in registers: no shares, K and V read once a group. QL_FLASH_GROUP=loop|shares picks one. */
#define FLASH_GROUP_LOOP_N 16384
static int group_loop(int64_t n, int heads, int kvh)
{
    if (heads == kvh) return 0;
    const char *e = getenv("QL_FLASH_GROUP");
    if (e && !strcmp(e, "loop")) return 1;
    if (e && !strcmp(e, "shares")) return 0;
    return n >= FLASH_GROUP_LOOP_N;
}

/* dO bf16 [n, Q], D f32 [n, heads], the per-head dK and dV shares f32 [n, Q] each (not with
   group_loop) */
struct flash_scratch { uint16_t *dO; float *D, *pk, *pv; size_t bytes; };
static flash_scratch scratch_layout(void *base, int64_t n, int heads, int kvh, int hd)
{
    size_t nq = (size_t)(n * heads * hd), off = 0;
    char *b = (char *)base;
    auto take = [&](size_t bytes) { size_t at = off; off = (off + bytes + 255) & ~(size_t)255; return b ? b + at : NULL; };
    flash_scratch s;
    s.dO = (uint16_t *)take(nq * 2);
    s.D = (float *)take((size_t)(n * heads) * 4);
    int shares = heads != kvh && !group_loop(n, heads, kvh);
    s.pk = shares ? (float *)take(nq * 4) : NULL;
    s.pv = shares ? (float *)take(nq * 4) : NULL;
    s.bytes = off;
    return s;
}

size_t qlk_flash_scratch(int64_t n, int heads, int kvh, int hd) { return scratch_layout(NULL, n, heads, kvh, hd).bytes; }

template <int HD>
static ql_status fwd_hd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo, const int32_t *hi,
                        int64_t n, int heads, int kvh, int window, uint16_t *out, float *lse)
{
    dim3 grid((unsigned)((n + 63) / 64), (unsigned)heads);
    float sl2 = FA_LOG2E / sqrtf((float)HD);
    size_t sm = fwd_smem<HD>::bytes;
    QL_CU(cudaFuncSetAttribute(k_flash_fwd<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    k_flash_fwd<HD><<<grid, 128, sm>>>(q, k, v, lo, hi, n, heads, kvh, window, sl2, out, lse);
    QL_CU_LAUNCH("k_flash_fwd");
    return QL_OK;
}

template <int HD>
static ql_status bwd_hd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *dO, const float *lse,
                        const float *D, const int32_t *lo, const int32_t *hi, const int32_t *qlo, const int32_t *qhi,
                        int64_t n, int heads, int kvh, int window, uint16_t *dq, uint16_t *dk, uint16_t *dv, float *pk,
                        float *pv)
{
    float scale = 1.0f / sqrtf((float)HD), sl2 = FA_LOG2E * scale;
    size_t b1 = dkv_smem<HD>::bytes, b2 = dq_smem<HD>::bytes;
    /* the opt-in above 48 KiB of dynamic shared memory (per device, so on every call: it is cheap) */
    QL_CU(cudaFuncSetAttribute(k_flash_dkv<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b1));
    QL_CU(cudaFuncSetAttribute(k_flash_dq<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b2));
    const int loop = group_loop(n, heads, kvh);
    const bool shares = heads != kvh && !loop;
    dim3 g1((unsigned)((n + 63) / 64), (unsigned)(loop ? kvh : heads));
    k_flash_dkv<HD><<<g1, 128, b1>>>(q, k, v, dO, lse, D, lo, hi, qlo, qhi, n, heads, kvh, window, sl2, scale, dk, dv,
                                     shares ? pk : NULL, shares ? pv : NULL, loop);
    QL_CU_LAUNCH("k_flash_dkv");
    if (shares) {
        int64_t total = n * kvh * HD;
        unsigned blocks = (unsigned)((total + 255) / 256 < 65535 * 16 ? (total + 255) / 256 : 65535 * 16);
        k_group_sum<<<blocks, 256>>>(pk, pv, n, heads, kvh, HD, dk, dv);
        QL_CU_LAUNCH("k_group_sum");
    }
    dim3 g2((unsigned)((n + 63) / 64), (unsigned)heads);
    k_flash_dq<HD><<<g2, 128, b2>>>(q, k, v, dO, lse, D, lo, hi, n, heads, kvh, window, sl2, scale, dq);
    QL_CU_LAUNCH("k_flash_dq");
    return QL_OK;
}

ql_status qlk_flash_fwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo, const int32_t *hi,
                        int64_t n, int heads, int kvh, int hd, int window, uint16_t *out, float *lse)
{
    if (n == 0) return QL_OK;
    QL_TRY(flash_shape(n, heads, kvh));
#define FWD(H) fwd_hd<H>(q, k, v, lo, hi, n, heads, kvh, window, out, lse)
    switch (hd) {
    case 16: return FWD(16);
    case 32: return FWD(32);
    case 48: return FWD(48);
    case 64: return FWD(64);
    case 80: return FWD(80);
    case 96: return FWD(96);
    case 112: return FWD(112);
    case 128: return FWD(128);
    default: return ql_fail(QL_EUNSUPPORTED, "flash attention: head dim %d (a multiple of 16 up to 128 is needed)", hd);
    }
#undef FWD
}

ql_status qlk_flash_bwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out, const float *lse,
                        const float *dout, const int32_t *lo, const int32_t *hi, const int32_t *qlo, const int32_t *qhi,
                        int64_t n, int heads, int kvh, int hd, int window, uint16_t *dq, uint16_t *dk, uint16_t *dv,
                        void *scratch)
{
    if (n == 0) return QL_OK;
    QL_TRY(flash_shape(n, heads, kvh));
    flash_scratch sc = scratch_layout(scratch, n, heads, kvh, hd);
    QL_TRY(qlk_to_bf16(dout, QL_F32, sc.dO, n * heads * hd));
    QL_TRY(qlk_attn_rowdot(dout, out, n, heads, hd, sc.D));
#define BWD(H) bwd_hd<H>(q, k, v, sc.dO, lse, sc.D, lo, hi, qlo, qhi, n, heads, kvh, window, dq, dk, dv, sc.pk, sc.pv)
    switch (hd) {
    case 16: return BWD(16);
    case 32: return BWD(32);
    case 48: return BWD(48);
    case 64: return BWD(64);
    case 80: return BWD(80);
    case 96: return BWD(96);
    case 112: return BWD(112);
    case 128: return BWD(128);
    default: return ql_fail(QL_EUNSUPPORTED, "flash attention: head dim %d (a multiple of 16 up to 128 is needed)", hd);
    }
#undef BWD
}
