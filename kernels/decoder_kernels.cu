/*
 * decoder_kernels.cu — the decoder's elementwise, row and optimizer kernels
 * behind the CUDA op table (decoder_ops.cu): embedding rows, RMSNorm and its
 * backward, residual adds, RoPE, SwiGLU and its backward, LoRA dropout with
 * the CPU's counter-based mask, bias, row gather / scatter / KV-cache stores,
 * cross-entropy rows, AdamW, the gradient norm and scaling. Contracts are in
 * decoder_kernels.cuh; attention and GEMM live in attention.cu and gemm.cu.
 *
 * Numerics: f32 math written in the CPU reference's order (engine/model/
 * model.c, train.c, lora.c) with explicit round-to-nearest intrinsics where
 * the reference rounds each step, so nvcc cannot contract a multiply-add the
 * CPU rounds twice; bf16 results are rounded once (ql_f32_to_bf16). AdamW is
 * bit for bit the CPU's. Row reductions (RMSNorm sums, the RMSNorm backward
 * dot, log-sum-exp) necessarily add in a different order than the CPU loop.
 *
 * Shapes: elementwise kernels are grid-stride loops, 4 elements per thread
 * (float4 / 4 x 16-bit loads) when every pointer is aligned, a scalar tail;
 * row kernels are one block per row (grid-stride over rows) with the same
 * vector width when the row length and pointers allow. Indices are 64-bit.
 *
 * Kernels part first, launchers (device pointers, legacy default stream, an
 * error check after every launch) after.
 */
#include "common.cuh"
extern "C" {
#include "rng.h"
}
#include "decoder_kernels.cuh"

#include <stdint.h>

/* ================================================================ kernels */

/* ---------------------------------------------------------------- vector loads / stores */

/* V (1 or 4) consecutive elements from p + i, widened to f32; V == 4 needs p + i aligned to 4 elements */
template <int V> __device__ __forceinline__ void ldv(const float *p, int64_t i, float *o)
{
    if constexpr (V == 4) {
        float4 t = *reinterpret_cast<const float4 *>(p + i);
        o[0] = t.x; o[1] = t.y; o[2] = t.z; o[3] = t.w;
    } else {
        o[0] = p[i];
    }
}
template <int V> __device__ __forceinline__ void ldv(const ql_bf16_t *p, int64_t i, float *o)
{
    if constexpr (V == 4) {
        uint2 t = *reinterpret_cast<const uint2 *>(p + i);
        o[0] = ql_bf16_to_f32((uint16_t)t.x); o[1] = ql_bf16_to_f32((uint16_t)(t.x >> 16));
        o[2] = ql_bf16_to_f32((uint16_t)t.y); o[3] = ql_bf16_to_f32((uint16_t)(t.y >> 16));
    } else {
        o[0] = ql_bf16_to_f32(p[i].x);
    }
}
template <int V> __device__ __forceinline__ void ldv(const ql_f16_t *p, int64_t i, float *o)
{
    if constexpr (V == 4) {
        uint2 t = *reinterpret_cast<const uint2 *>(p + i);
        o[0] = ql_f16_to_f32((uint16_t)t.x); o[1] = ql_f16_to_f32((uint16_t)(t.x >> 16));
        o[2] = ql_f16_to_f32((uint16_t)t.y); o[3] = ql_f16_to_f32((uint16_t)(t.y >> 16));
    } else {
        o[0] = ql_f16_to_f32(p[i].x);
    }
}
template <int V> __device__ __forceinline__ void stv(float *p, int64_t i, const float *v)
{
    if constexpr (V == 4) *reinterpret_cast<float4 *>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    else p[i] = v[0];
}
/* rounds each value to bf16 once, nearest even */
template <int V> __device__ __forceinline__ void stv(ql_bf16_t *p, int64_t i, const float *v)
{
    if constexpr (V == 4) {
        uint2 t;
        t.x = (uint32_t)ql_f32_to_bf16(v[0]) | ((uint32_t)ql_f32_to_bf16(v[1]) << 16);
        t.y = (uint32_t)ql_f32_to_bf16(v[2]) | ((uint32_t)ql_f32_to_bf16(v[3]) << 16);
        *reinterpret_cast<uint2 *>(p + i) = t;
    } else {
        p[i].x = ql_f32_to_bf16(v[0]);
    }
}

static inline bool aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }
/* 4-element vector alignment of an element pointer: 16 bytes for f32, 8 for 16-bit types */
static inline bool vec_ok(const void *p, ql_dtype dt) { return aligned(p, dt == QL_F32 ? 16 : 8); }

/* ---------------------------------------------------------------- block reductions */

template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
   same total. sh: 32 shared slots; safe to call again right away. */
template <typename T> __device__ __forceinline__ T block_sum(T v, T *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                     /* the previous call's readers are done with sh */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : (T)0;
    return warp_sum(v);                  /* each warp sums the partials itself: no broadcast step */
}

/* Running (max, sum of exp(z - max)) pairs: add one value, merge two pairs. A pair with
   s == 0 is empty; -inf values contribute exp(-inf) = 0 and are skipped so an all -inf
   stretch never makes exp(-inf - -inf). NaN poisons the sum, as in the CPU loop. */
__host__ __device__ __forceinline__ void lse_add(float &m, float &s, float z)
{
    if (z > m) {
        s = s * expf(m - z) + 1.0f;      /* s == 0 while m == -inf: 0 * 0 + 1 */
        m = z;
    } else if (z != -INFINITY) {
        s += expf(z - m);                /* NaN z lands here and poisons s */
    }
}
__host__ __device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2)
{
    if (s2 == 0.0f) return;              /* empty partner (a NaN s2 falls through and poisons s) */
    if (s == 0.0f) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * expf(m - m2) + s2; m = m2; }
    else s += s2 * expf(m2 - m);
}

/* Block-wide merge of (m, s); every thread gets lane 0 of warp 0's result. */
__device__ __forceinline__ void block_lse(float &m, float &s, float *shm, float *shs)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    __syncthreads();
    if (lane == 0) { shm[wid] = m; shs[wid] = s; }
    __syncthreads();
    m = lane < nw ? shm[lane] : -INFINITY;
    s = lane < nw ? shs[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    m = __shfl_sync(0xffffffffu, m, 0);  /* one value for the whole block, whatever the lane order did */
    s = __shfl_sync(0xffffffffu, s, 0);
}

/* ---------------------------------------------------------------- index math (host-checkable) */

/* RoPE work unit u of a row (nh heads, units_per_head per head, each unit PAIR (1 or 2)
   rotation pairs): the head and the first d of the unit */
__host__ __device__ static inline void rope_unit(int u, int units_per_head, int pair, int *h, int *d)
{
    *h = u / units_per_head;
    *d = (u - *h * units_per_head) * pair;
}

/* Block size for a row of `units` work items: a multiple of 32 in [32, cap]. */
static inline int row_threads(int64_t units, int cap)
{
    int64_t t = (units + 31) / 32 * 32;
    if (t < 32) t = 32;
    if (t > cap) t = cap;
    return (int)t;
}

/* Grid for one block per row with a grid-stride loop over rows. */
static inline unsigned rows_grid(int64_t n)
{
    return (unsigned)(n < (1 << 20) ? (n > 0 ? n : 1) : (1 << 20));
}

/* ---------------------------------------------------------------- generic elementwise map */

/* Op::run<V>(e) handles elements [e, e + V); V == 4 is only called with e a multiple of 4
   and e + 4 <= count, so the vector loads are aligned when the base pointers are. */
template <int VEC, class Op> __global__ void k_map(Op op, int64_t count)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * VEC;
    for (int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC; e < count; e += stride) {
        if (VEC == 1 || e + VEC <= count) op.template run<VEC>(e);
        else
            for (int64_t t = e; t < count; t++) op.template run<1>(t);
    }
}

/* out = a + f32(b) */
struct op_residual {
    float *out; const float *a; const ql_bf16_t *b;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float x[V], y[V];
        ldv<V>(a, e, x);
        ldv<V>(b, e, y);
#pragma unroll
        for (int k = 0; k < V; k++) x[k] = __fadd_rn(x[k], y[k]);
        stv<V>(out, e, x);
    }
};

/* dst = bf16(src) */
template <typename S> struct op_to_bf16 {
    const S *src; ql_bf16_t *dst;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float x[V];
        ldv<V>(src, e, x);
        stv<V>(dst, e, x);
    }
};

/* dst = f32(src) */
struct op_widen {
    const ql_bf16_t *src; float *dst;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float x[V];
        ldv<V>(src, e, x);
        stv<V>(dst, e, x);
    }
};

/* h = g / (1 + expf(-g)) * u   (model.c: g[i] / (1.0f + expf(-g[i])) * u[i]) */
struct op_swiglu {
    const ql_bf16_t *g, *u; ql_bf16_t *h;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float G[V], U[V], H[V];
        ldv<V>(g, e, G);
        ldv<V>(u, e, U);
#pragma unroll
        for (int k = 0; k < V; k++) H[k] = __fmul_rn(__fdiv_rn(G[k], __fadd_rn(1.0f, expf(-G[k]))), U[k]);
        stv<V>(h, e, H);
    }
};

/* train.c layer_bwd: sg = 1 / (1 + expf(-g)), silu = g * sg; du = dh * silu;
   dg = dh * u * (sg * (1 + g * (1 - sg))) */
struct op_swiglu_bwd {
    const ql_bf16_t *g, *u; const float *dh; ql_bf16_t *dg, *du;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float G[V], U[V], D[V], OG[V], OU[V];
        ldv<V>(g, e, G);
        ldv<V>(u, e, U);
        ldv<V>(dh, e, D);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float sg = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-G[k])));
            float silu = __fmul_rn(G[k], sg);
            OU[k] = __fmul_rn(D[k], silu);
            float t = __fmul_rn(sg, __fadd_rn(1.0f, __fmul_rn(G[k], __fsub_rn(1.0f, sg))));
            OG[k] = __fmul_rn(__fmul_rn(D[k], U[k]), t);
        }
        stv<V>(dg, e, OG);
        stv<V>(du, e, OU);
    }
};

/* decoder_cpu.c apply_dropout: ql_rng_uniform(seed, stream, e) < p ? 0 : x * keep */
__device__ __forceinline__ float dropped(float x, int64_t e, float p, float keep, uint64_t seed, uint64_t stream)
{
    return ql_rng_uniform(seed, stream, (uint64_t)e) < p ? 0.0f : __fmul_rn(x, keep);
}

struct op_dropout {
    const ql_bf16_t *x; ql_bf16_t *y; float p, keep; uint64_t seed, stream, e0;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float X[V];
        ldv<V>(x, e, X);
#pragma unroll
        for (int k = 0; k < V; k++) X[k] = dropped(X[k], (int64_t)e0 + e + k, p, keep, seed, stream);
        stv<V>(y, e, X);
    }
};

/* dst = dst + mask(src) (apply_dropout with accumulate) */
struct op_dropout_add {
    const float *src; float *dst; float p, keep; uint64_t seed, stream, e0;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float S[V], D[V];
        ldv<V>(src, e, S);
        ldv<V>(dst, e, D);
#pragma unroll
        for (int k = 0; k < V; k++) D[k] = __fadd_rn(D[k], dropped(S[k], (int64_t)e0 + e + k, p, keep, seed, stream));
        stv<V>(dst, e, D);
    }
};

/* lora.c adamw, step for step:
   p *= decay; m = m + w1 * (g - m); v = v * fb2; v = v + w2 * g * g;
   denom = sqrtf(v) / bc2_sqrt + eps; p = p + neg_step * m / denom */
struct op_adamw {
    float *p; const float *g; float *m, *v;
    float decay, w1, fb2, w2, neg_step, bc2_sqrt, eps;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float P[V], G[V], M[V], S[V];
        ldv<V>(p, e, P);
        ldv<V>(g, e, G);
        ldv<V>(m, e, M);
        ldv<V>(v, e, S);
#pragma unroll
        for (int k = 0; k < V; k++) {
            P[k] = __fmul_rn(P[k], decay);
            M[k] = __fadd_rn(M[k], __fmul_rn(w1, __fsub_rn(G[k], M[k])));
            S[k] = __fmul_rn(S[k], fb2);
            S[k] = __fadd_rn(S[k], __fmul_rn(__fmul_rn(w2, G[k]), G[k]));
            float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(S[k]), bc2_sqrt), eps);
            P[k] = __fadd_rn(P[k], __fdiv_rn(__fmul_rn(neg_step, M[k]), denom));
        }
        stv<V>(p, e, P);
        stv<V>(m, e, M);
        stv<V>(v, e, S);
    }
};

/* g *= s */
struct op_scale {
    float *g; float s;
    template <int V> __device__ __forceinline__ void run(int64_t e) const
    {
        float G[V];
        ldv<V>(g, e, G);
#pragma unroll
        for (int k = 0; k < V; k++) G[k] = __fmul_rn(G[k], s);
        stv<V>(g, e, G);
    }
};

/* ---------------------------------------------------------------- row kernels */

/* x [n, H] f32 = E rows ids[i] widened */
template <int VEC, typename ET>
__global__ void k_embed(const ET *E, int64_t H, const int32_t *ids, int64_t n, float *x)
{
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const ET *src = E + (int64_t)ids[i] * H;
        float *dst = x + i * H;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float v[VEC];
            ldv<VEC>(src, j, v);
            stv<VEC>(dst, j, v);
        }
    }
}

/* model.c ql_rmsnorm_r: ss = sum x^2; r = 1 / sqrtf(ss / H + eps); y = bf16(w * (x * r)). H % VEC == 0. */
template <int VEC, typename WT>
__global__ void k_rmsnorm(const float *x, const WT *w, int64_t n, int64_t H, float eps, ql_bf16_t *y, float *r)
{
    __shared__ float sh[32];
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const float *xi = x + i * H;
        float ss = 0.0f;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float v[VEC];
            ldv<VEC>(xi, j, v);
#pragma unroll
            for (int k = 0; k < VEC; k++) ss = __fadd_rn(ss, __fmul_rn(v[k], v[k]));
        }
        ss = block_sum(ss, sh);
        const float ri = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)H), eps)));
        if (r && threadIdx.x == 0) r[i] = ri;
        ql_bf16_t *yi = y + i * H;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float v[VEC], wv[VEC];
            ldv<VEC>(xi, j, v);
            ldv<VEC>(w, j, wv);
#pragma unroll
            for (int k = 0; k < VEC; k++) v[k] = __fmul_rn(wv[k], __fmul_rn(v[k], ri));
            stv<VEC>(yi, j, v);
        }
    }
}

/* train.c rmsnorm_bwd: dot = sum (double)w * dy * x (double); c = (float)(dot * r * r * r / H);
   dx += r * w * dy - x * c. H % VEC == 0. */
template <int VEC, typename WT>
__global__ void k_rmsnorm_bwd(const float *x, const WT *w, const float *r, const float *dy, int64_t n, int64_t H,
                              float *dx)
{
    __shared__ double sh[32];
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const float *xi = x + i * H, *dyi = dy + i * H;
        double dot = 0.0;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float xv[VEC], wv[VEC], dv[VEC];
            ldv<VEC>(xi, j, xv);
            ldv<VEC>(w, j, wv);
            ldv<VEC>(dyi, j, dv);
#pragma unroll
            for (int k = 0; k < VEC; k++) dot = __dadd_rn(dot, __dmul_rn(__dmul_rn((double)wv[k], (double)dv[k]), (double)xv[k]));
        }
        dot = block_sum(dot, sh);
        const float ri = r[i];
        const double rd = (double)ri;
        const float c = (float)(__dmul_rn(__dmul_rn(__dmul_rn(dot, rd), rd), rd) / (double)H);
        float *dxi = dx + i * H;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float xv[VEC], wv[VEC], dv[VEC], o[VEC];
            ldv<VEC>(xi, j, xv);
            ldv<VEC>(w, j, wv);
            ldv<VEC>(dyi, j, dv);
            ldv<VEC>(dxi, j, o);
#pragma unroll
            for (int k = 0; k < VEC; k++)
                o[k] = __fadd_rn(o[k], __fsub_rn(__fmul_rn(__fmul_rn(ri, wv[k]), dv[k]), __fmul_rn(xv[k], c)));
            stv<VEC>(dxi, j, o);
        }
    }
}

/* model.c ql_rope on bf16 rows [n, nh * hd]: the row's cos / sin go to shared memory once
   (2 * half floats, dynamic), then every thread rotates PAIR adjacent d of one head. */
__device__ __forceinline__ void rope_rot(float a, float b, float c, float s, float *oa, float *ob)
{
    *oa = __fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s));
    *ob = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

template <int PAIR>
__global__ void k_rope(uint16_t *x, const int32_t *pos, const float *inv_freq, int64_t n, int nh, int hd,
                       int inverse)
{
    extern __shared__ float cs[];        /* cos [half], sin [half] */
    const int half = hd / 2, uph = half / PAIR;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        __syncthreads();                 /* the previous row's readers are done with cs */
        const float p = (float)pos[i];
        for (int d = threadIdx.x; d < half; d += blockDim.x) {
            float ang = __fmul_rn(p, inv_freq[d]);
            float s = sinf(ang);
            cs[d] = cosf(ang);
            cs[half + d] = inverse ? -s : s;
        }
        __syncthreads();
        uint16_t *xr = x + i * (int64_t)nh * hd;
        for (int u = threadIdx.x; u < nh * uph; u += blockDim.x) {
            int h, d;
            rope_unit(u, uph, PAIR, &h, &d);
            uint16_t *v = xr + (int64_t)h * hd;
            if (PAIR == 2) {
                uint32_t A = *reinterpret_cast<const uint32_t *>(v + d);
                uint32_t B = *reinterpret_cast<const uint32_t *>(v + d + half);
                float a0, b0, a1, b1;
                rope_rot(ql_bf16_to_f32((uint16_t)A), ql_bf16_to_f32((uint16_t)B), cs[d], cs[half + d], &a0, &b0);
                rope_rot(ql_bf16_to_f32((uint16_t)(A >> 16)), ql_bf16_to_f32((uint16_t)(B >> 16)), cs[d + 1],
                         cs[half + d + 1], &a1, &b1);
                *reinterpret_cast<uint32_t *>(v + d) = (uint32_t)ql_f32_to_bf16(a0) | ((uint32_t)ql_f32_to_bf16(a1) << 16);
                *reinterpret_cast<uint32_t *>(v + d + half) =
                    (uint32_t)ql_f32_to_bf16(b0) | ((uint32_t)ql_f32_to_bf16(b1) << 16);
            } else {
                float a, b;
                rope_rot(ql_bf16_to_f32(v[d]), ql_bf16_to_f32(v[d + half]), cs[d], cs[half + d], &a, &b);
                v[d] = ql_f32_to_bf16(a);
                v[d + half] = ql_f32_to_bf16(b);
            }
        }
    }
}

/* y [n, out] bf16 += b [out]: x over columns, y over rows (grid-strided both ways). out % VEC == 0. */
template <int VEC, typename BT>
__global__ void k_add_bias(ql_bf16_t *y, const BT *b, int64_t n, int64_t out)
{
    for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
        ql_bf16_t *yi = y + i * out;
        for (int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC; j < out;
             j += (int64_t)gridDim.x * blockDim.x * VEC) {
            float v[VEC], bv[VEC];
            ldv<VEC>(yi, j, v);
            ldv<VEC>(b, j, bv);
#pragma unroll
            for (int k = 0; k < VEC; k++) v[k] = __fadd_rn(v[k], bv[k]);
            stv<VEC>(yi, j, v);
        }
    }
}

/* dst row (dmap ? dmap[i] : i) = src row (smap ? smap[i] : i), rows of `units` VT words */
template <typename VT>
__global__ void k_copy_rows(VT *dst, const VT *src, const int32_t *dmap, const int32_t *smap, int64_t nrows,
                            int64_t units)
{
    for (int64_t i = blockIdx.x; i < nrows; i += gridDim.x) {
        const int64_t di = dmap ? (int64_t)dmap[i] : i, si = smap ? (int64_t)smap[i] : i;
        VT *d = dst + di * units;
        const VT *s = src + si * units;
        for (int64_t u = threadIdx.x; u < units; u += blockDim.x) d[u] = s[u];
    }
}

/* dst row rows[q] += src row q (rows distinct: no two blocks touch one row) */
template <int VEC>
__global__ void k_scatter_add_rows(const float *src, const int32_t *rows, int64_t k, int64_t H, float *dst)
{
    for (int64_t q = blockIdx.x; q < k; q += gridDim.x) {
        const float *s = src + q * H;
        float *d = dst + (int64_t)rows[q] * H;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < H; j += (int64_t)blockDim.x * VEC) {
            float a[VEC], b[VEC];
            ldv<VEC>(d, j, a);
            ldv<VEC>(s, j, b);
#pragma unroll
            for (int t = 0; t < VEC; t++) a[t] = __fadd_rn(a[t], b[t]);
            stv<VEC>(d, j, a);
        }
    }
}

/* Cross-entropy rows: one pass of running (max, sum exp) per thread, a block merge,
   thread 0 adds lse - z[tgt] to *loss_sum (double atomic), then a second pass writes
   dz = bf16((expf(z - lse) - onehot) / denom). V % VEC == 0. A target outside [0, V)
   adds NaN (the CPU rejects such labels before it gets here) and no one-hot. */
template <int VEC>
__global__ void k_ce_rows(const float *z, const int32_t *tgt, int64_t k, int64_t V, float fden, double *loss_sum,
                          ql_bf16_t *dz)
{
    __shared__ float shm[32], shs[32];
    __shared__ float sh_lse;
    for (int64_t i = blockIdx.x; i < k; i += gridDim.x) {
        const float *zi = z + i * V;
        float m = -INFINITY, s = 0.0f;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < V; j += (int64_t)blockDim.x * VEC) {
            float v[VEC];
            ldv<VEC>(zi, j, v);
#pragma unroll
            for (int t = 0; t < VEC; t++) lse_add(m, s, v[t]);
        }
        block_lse(m, s, shm, shs);
        const int64_t t = (int64_t)tgt[i];
        const bool tok = t >= 0 && t < V;
        if (threadIdx.x == 0) {
            double lse = log((double)s) + (double)m;
            atomicAdd(loss_sum, tok ? lse - (double)zi[t] : (double)NAN);
            sh_lse = (float)lse;
        }
        if (!dz) continue;               /* uniform across the block */
        __syncthreads();
        const float lse = sh_lse;        /* rewritten only after block_lse's barriers next row */
        ql_bf16_t *di = dz + i * V;
        for (int64_t j = (int64_t)threadIdx.x * VEC; j < V; j += (int64_t)blockDim.x * VEC) {
            float v[VEC];
            ldv<VEC>(zi, j, v);
#pragma unroll
            for (int q = 0; q < VEC; q++) {
                float pr = expf(__fsub_rn(v[q], lse));
                v[q] = __fdiv_rn(j + q == t ? __fsub_rn(pr, 1.0f) : pr, fden);
            }
            stv<VEC>(di, j, v);
        }
    }
}

/* *out += block sums of g^2 (in double: the product of two floats is exact) */
template <int VEC>
__global__ void k_sumsq(const float *g, int64_t count, double *out)
{
    __shared__ double sh[32];
    double acc = 0.0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * VEC;
    for (int64_t e = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC; e < count; e += stride) {
        if (VEC == 1 || e + VEC <= count) {
            float v[VEC];
            ldv<VEC>(g, e, v);
#pragma unroll
            for (int k = 0; k < VEC; k++) acc += (double)v[k] * (double)v[k];
        } else {
            for (int64_t t = e; t < count; t++) acc += (double)g[t] * (double)g[t];
        }
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0 && acc != 0.0) atomicAdd(out, acc);
}

/* ================================================================ launchers */

static ql_status launched(const char *what)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return ql_cuda_fail(e, what, __FILE__, __LINE__);
    return QL_OK;
}

static ql_status bad_count(const char *what, int64_t count)
{
    return ql_fail(QL_EINVAL, "%s: negative size %lld", what, (long long)count);
}

template <class Op> static ql_status map_launch(const Op &op, int64_t count, bool vec4, const char *what)
{
    if (count < 0) return bad_count(what, count);
    if (count == 0) return QL_OK;
    if (vec4) k_map<4, Op><<<ql_grid((count + 3) / 4), 256>>>(op, count);
    else k_map<1, Op><<<ql_grid(count), 256>>>(op, count);
    return launched(what);
}

ql_status qlk_embed(const void *E, ql_dtype edt, int64_t H, const int32_t *ids, int64_t n, float *x)
{
    if (n < 0 || H < 0) return bad_count("qlk_embed", n < 0 ? n : H);
    if (n == 0 || H == 0) return QL_OK;
    const bool v4 = H % 4 == 0 && vec_ok(E, edt) && aligned(x, 16);
    const int thr = row_threads(v4 ? H / 4 : H, 256);
    QL_SWITCH_FLOAT(edt, T, {
        if (v4) k_embed<4, T><<<rows_grid(n), thr>>>((const T *)E, H, ids, n, x);
        else k_embed<1, T><<<rows_grid(n), thr>>>((const T *)E, H, ids, n, x);
        return launched("launch of k_embed");
    })
}

ql_status qlk_rmsnorm(const float *x, const void *w, ql_dtype wdt, int64_t n, int64_t H, float eps, uint16_t *y,
                      float *r)
{
    if (n < 0 || H < 0) return bad_count("qlk_rmsnorm", n < 0 ? n : H);
    if (n == 0 || H == 0) return QL_OK;
    const bool v4 = H % 4 == 0 && aligned(x, 16) && vec_ok(w, wdt) && aligned(y, 8);
    const int thr = row_threads(v4 ? H / 4 : H, 256);
    ql_bf16_t *yb = (ql_bf16_t *)y;
    QL_SWITCH_FLOAT(wdt, T, {
        if (v4) k_rmsnorm<4, T><<<rows_grid(n), thr>>>(x, (const T *)w, n, H, eps, yb, r);
        else k_rmsnorm<1, T><<<rows_grid(n), thr>>>(x, (const T *)w, n, H, eps, yb, r);
        return launched("launch of k_rmsnorm");
    })
}

ql_status qlk_rmsnorm_bwd(const float *x, const void *w, ql_dtype wdt, const float *r, const float *dy, int64_t n,
                          int64_t H, float *dx)
{
    if (n < 0 || H < 0) return bad_count("qlk_rmsnorm_bwd", n < 0 ? n : H);
    if (n == 0 || H == 0) return QL_OK;
    const bool v4 = H % 4 == 0 && aligned(x, 16) && vec_ok(w, wdt) && aligned(dy, 16) && aligned(dx, 16);
    const int thr = row_threads(v4 ? H / 4 : H, 256);
    QL_SWITCH_FLOAT(wdt, T, {
        if (v4) k_rmsnorm_bwd<4, T><<<rows_grid(n), thr>>>(x, (const T *)w, r, dy, n, H, dx);
        else k_rmsnorm_bwd<1, T><<<rows_grid(n), thr>>>(x, (const T *)w, r, dy, n, H, dx);
        return launched("launch of k_rmsnorm_bwd");
    })
}

ql_status qlk_residual(float *out, const float *a, const uint16_t *b, int64_t count)
{
    op_residual op = { out, a, (const ql_bf16_t *)b };
    return map_launch(op, count, aligned(out, 16) && aligned(a, 16) && aligned(b, 8), "launch of qlk_residual");
}

ql_status qlk_to_bf16(const void *src, ql_dtype sdt, uint16_t *dst, int64_t count)
{
    const bool v4 = vec_ok(src, sdt) && aligned(dst, 8);
    QL_SWITCH_FLOAT(sdt, T, {
        op_to_bf16<T> op = { (const T *)src, (ql_bf16_t *)dst };
        return map_launch(op, count, v4, "launch of qlk_to_bf16");
    })
}

ql_status qlk_widen(const uint16_t *src, float *dst, int64_t count)
{
    op_widen op = { (const ql_bf16_t *)src, dst };
    return map_launch(op, count, aligned(src, 8) && aligned(dst, 16), "launch of qlk_widen");
}

ql_status qlk_rope(uint16_t *x, const int32_t *pos, const float *inv_freq, int64_t n, int nh, int hd, int inverse)
{
    if (n < 0 || nh < 0 || hd < 0) return bad_count("qlk_rope", n < 0 ? n : nh < 0 ? nh : hd);
    const int half = hd / 2;
    if (n == 0 || nh == 0 || half == 0) return QL_OK;
    const bool pair = half % 2 == 0 && hd % 2 == 0 && aligned(x, 4);
    const int64_t units = (int64_t)nh * (pair ? half / 2 : half);
    if (units > INT32_MAX || (size_t)half * 2 * sizeof(float) > 48 * 1024)
        return ql_fail(QL_EINVAL, "qlk_rope: %d heads of %d is too large", nh, hd);
    const int thr = row_threads(units, 256);
    const size_t shm = (size_t)half * 2 * sizeof(float);
    if (pair) k_rope<2><<<rows_grid(n), thr, shm>>>(x, pos, inv_freq, n, nh, hd, inverse);
    else k_rope<1><<<rows_grid(n), thr, shm>>>(x, pos, inv_freq, n, nh, hd, inverse);
    return launched("launch of k_rope");
}

ql_status qlk_swiglu(const uint16_t *g, const uint16_t *u, uint16_t *h, int64_t count)
{
    op_swiglu op = { (const ql_bf16_t *)g, (const ql_bf16_t *)u, (ql_bf16_t *)h };
    return map_launch(op, count, aligned(g, 8) && aligned(u, 8) && aligned(h, 8), "launch of qlk_swiglu");
}

ql_status qlk_swiglu_bwd(const uint16_t *g, const uint16_t *u, const float *dh, uint16_t *dg, uint16_t *du,
                         int64_t count)
{
    op_swiglu_bwd op = { (const ql_bf16_t *)g, (const ql_bf16_t *)u, dh, (ql_bf16_t *)dg, (ql_bf16_t *)du };
    const bool v4 = aligned(g, 8) && aligned(u, 8) && aligned(dh, 16) && aligned(dg, 8) && aligned(du, 8);
    return map_launch(op, count, v4, "launch of qlk_swiglu_bwd");
}

ql_status qlk_dropout(const uint16_t *x, uint16_t *y, int64_t count, float p, uint64_t seed, uint64_t stream,
                      uint64_t e0)
{
    op_dropout op = { (const ql_bf16_t *)x, (ql_bf16_t *)y, p, 1.0f / (1.0f - p), seed, stream, e0 };
    return map_launch(op, count, aligned(x, 8) && aligned(y, 8), "launch of qlk_dropout");
}

ql_status qlk_dropout_add(const float *src, float *dst, int64_t count, float p, uint64_t seed, uint64_t stream,
                          uint64_t e0)
{
    op_dropout_add op = { src, dst, p, 1.0f / (1.0f - p), seed, stream, e0 };
    return map_launch(op, count, aligned(src, 16) && aligned(dst, 16), "launch of qlk_dropout_add");
}

ql_status qlk_add_bias(uint16_t *y, const void *b, ql_dtype bdt, int64_t n, int64_t out)
{
    if (n < 0 || out < 0) return bad_count("qlk_add_bias", n < 0 ? n : out);
    if (n == 0 || out == 0) return QL_OK;
    const bool v4 = out % 4 == 0 && aligned(y, 8) && vec_ok(b, bdt);
    const int vec = v4 ? 4 : 1;
    int64_t gx = (out / vec + 255) / 256;
    if (gx > 1024) gx = 1024;
    int64_t gy = n < 65535 ? n : 65535;
    dim3 grid((unsigned)gx, (unsigned)gy);
    ql_bf16_t *yb = (ql_bf16_t *)y;
    QL_SWITCH_FLOAT(bdt, T, {
        if (v4) k_add_bias<4, T><<<grid, 256>>>(yb, (const T *)b, n, out);
        else k_add_bias<1, T><<<grid, 256>>>(yb, (const T *)b, n, out);
        return launched("launch of k_add_bias");
    })
}

/* Row copy of 16-bit rows of H elements with the widest word the row length and pointers allow. */
static ql_status copy_rows16(uint16_t *dst, const uint16_t *src, const int32_t *dmap, const int32_t *smap,
                             int64_t nrows, int64_t H, const char *what)
{
    if (nrows < 0 || H < 0) return bad_count(what, nrows < 0 ? nrows : H);
    if (nrows == 0 || H == 0) return QL_OK;
    const unsigned g = rows_grid(nrows);
    if (H % 8 == 0 && aligned(dst, 16) && aligned(src, 16))
        k_copy_rows<uint4><<<g, row_threads(H / 8, 256)>>>((uint4 *)dst, (const uint4 *)src, dmap, smap, nrows, H / 8);
    else if (H % 4 == 0 && aligned(dst, 8) && aligned(src, 8))
        k_copy_rows<uint2><<<g, row_threads(H / 4, 256)>>>((uint2 *)dst, (const uint2 *)src, dmap, smap, nrows, H / 4);
    else if (H % 2 == 0 && aligned(dst, 4) && aligned(src, 4))
        k_copy_rows<uint32_t><<<g, row_threads(H / 2, 256)>>>((uint32_t *)dst, (const uint32_t *)src, dmap, smap,
                                                               nrows, H / 2);
    else
        k_copy_rows<uint16_t><<<g, row_threads(H, 256)>>>(dst, src, dmap, smap, nrows, H);
    return launched(what);
}

ql_status qlk_gather_rows(const uint16_t *src, const int32_t *rows, int64_t k, int64_t H, uint16_t *dst)
{
    return copy_rows16(dst, src, NULL, rows, k, H, "launch of k_copy_rows (gather)");
}

ql_status qlk_kv_store(uint16_t *cache, const uint16_t *src, const int32_t *pos, int64_t n, int64_t KV)
{
    return copy_rows16(cache, src, pos, NULL, n, KV, "launch of k_copy_rows (kv_store)");
}

ql_status qlk_scatter_add_rows(const float *src, const int32_t *rows, int64_t k, int64_t H, float *dst)
{
    if (k < 0 || H < 0) return bad_count("qlk_scatter_add_rows", k < 0 ? k : H);
    if (k == 0 || H == 0) return QL_OK;
    const bool v4 = H % 4 == 0 && aligned(src, 16) && aligned(dst, 16);
    const int thr = row_threads(v4 ? H / 4 : H, 256);
    if (v4) k_scatter_add_rows<4><<<rows_grid(k), thr>>>(src, rows, k, H, dst);
    else k_scatter_add_rows<1><<<rows_grid(k), thr>>>(src, rows, k, H, dst);
    return launched("launch of k_scatter_add_rows");
}

ql_status qlk_ce_rows(const float *z, const int32_t *tgt, int64_t k, int64_t V, double denom, double *loss_sum,
                      uint16_t *dz)
{
    if (k < 0 || V < 0) return bad_count("qlk_ce_rows", k < 0 ? k : V);
    if (k == 0) return QL_OK;
    if (V == 0) return ql_fail(QL_EINVAL, "qlk_ce_rows: empty vocabulary");
    const bool v4 = V % 4 == 0 && aligned(z, 16) && (!dz || aligned(dz, 8));
    const int thr = row_threads(v4 ? V / 4 : V, 512);
    const float fden = (float)denom;
    ql_bf16_t *d = (ql_bf16_t *)dz;
    if (v4) k_ce_rows<4><<<rows_grid(k), thr>>>(z, tgt, k, V, fden, loss_sum, d);
    else k_ce_rows<1><<<rows_grid(k), thr>>>(z, tgt, k, V, fden, loss_sum, d);
    return launched("launch of k_ce_rows");
}

ql_status qlk_adamw(float *p, const float *g, float *m, float *v, int64_t count, float decay, float w1, float fb2,
                    float w2, float neg_step, float bc2_sqrt, float eps)
{
    op_adamw op = { p, g, m, v, decay, w1, fb2, w2, neg_step, bc2_sqrt, eps };
    const bool v4 = aligned(p, 16) && aligned(g, 16) && aligned(m, 16) && aligned(v, 16);
    return map_launch(op, count, v4, "launch of qlk_adamw");
}

ql_status qlk_sumsq(const float *g, int64_t count, double *out)
{
    if (count < 0) return bad_count("qlk_sumsq", count);
    QL_CU(cudaMemsetAsync(out, 0, sizeof(double), 0));   /* an empty sum is 0 */
    if (count == 0) return QL_OK;
    const bool v4 = aligned(g, 16);
    unsigned grid = ql_grid(v4 ? (count + 3) / 4 : count);
    if (grid > 1024) grid = 1024;
    if (v4) k_sumsq<4><<<grid, 256>>>(g, count, out);
    else k_sumsq<1><<<grid, 256>>>(g, count, out);
    return launched("launch of k_sumsq");
}

ql_status qlk_scale(float *g, int64_t count, float s)
{
    op_scale op = { g, s };
    return map_launch(op, count, aligned(g, 16), "launch of qlk_scale");
}
