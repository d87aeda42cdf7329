/*
 * reduce_cuda.cu — reductions along one dim (sum, mean, max, min, argmax) and
 * the row softmax of the CUDA backend.
 *
 * Shapes: src [..., n at dim, ...], dst the same with shape[dim] == 1.
 * Each output is one "row" of n values at stride src->stride[dim] from a base
 * offset; a warp reduces a row (a block of 512 threads when rows are long and
 * few), lanes accumulate strided partials in f32 (int64 for integer dtypes),
 * then a shuffle tree combines them. Max/min propagate NaN; argmax returns the
 * first index of the maximum (a NaN counts as the maximum), as i64.
 *
 * Softmax: contiguous rows of the last dim, f32 math, max subtracted first.
 */
#include "common.cuh"

template <typename T> struct ql_acc { typedef float type; };
template <> struct ql_acc<int32_t> { typedef int64_t type; };
template <> struct ql_acc<int64_t> { typedef int64_t type; };
template <> struct ql_acc<uint8_t> { typedef int64_t type; };

__device__ __forceinline__ float ql_load_acc(float, float v) { return v; }
template <typename S> __device__ __forceinline__ float ql_load_acc(float, S v) { return ql_to_f32(v); }
template <typename S> __device__ __forceinline__ int64_t ql_load_acc(int64_t, S v) { return ql_to_i64(v); }

template <typename A> __device__ __forceinline__ bool ql_isnan(A v) { return v != v; }

/* one partial: value and, for argmax, its index */
template <typename A> struct ql_part { A v; int64_t i; };

/* is b preferred over a? (MAX/ARGMAX: larger; MIN: smaller; NaN wins; ties: lower index) */
template <typename A>
__device__ __forceinline__ bool ql_better(int op, const ql_part<A> &b, const ql_part<A> &a)
{
    if (b.i < 0) return false;
    if (a.i < 0) return true;
    bool an = ql_isnan(a.v), bn = ql_isnan(b.v);
    if (an || bn) return (an && bn) ? b.i < a.i : bn;
    if (b.v != a.v) return op == QL_MIN ? b.v < a.v : b.v > a.v;
    return b.i < a.i;
}

template <typename A>
__device__ __forceinline__ ql_part<A> ql_combine(int op, ql_part<A> a, ql_part<A> b)
{
    if (op == QL_SUM || op == QL_MEAN) {  /* integers wrap like the reference's int64 sum */
        a.v = ql_is_int<A>::value ? (A)(int64_t)((uint64_t)(int64_t)a.v + (uint64_t)(int64_t)b.v) : a.v + b.v;
        if (b.i >= 0 && a.i < 0) a.i = b.i;
        return a;
    }
    return ql_better(op, b, a) ? b : a;
}

template <typename A>
__device__ __forceinline__ ql_part<A> ql_shfl_down(ql_part<A> p, int off)
{
    ql_part<A> r;
    r.v = __shfl_down_sync(0xffffffffu, p.v, off);
    r.i = __shfl_down_sync(0xffffffffu, p.i, off);
    return r;
}

template <typename A>
__device__ __forceinline__ ql_part<A> ql_warp_reduce(int op, ql_part<A> p)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) p = ql_combine(op, p, ql_shfl_down(p, off));
    return p;
}

/* Partial of one thread over row elements k = first, first+step, ... < n. */
template <typename S, typename A>
__device__ __forceinline__ ql_part<A> ql_row_partial(int op, const S *row, int64_t n, int64_t rstride,
                                                     int64_t first, int64_t step)
{
    ql_part<A> p;
    p.v = 0; p.i = -1;  /* i < 0: empty */
    for (int64_t k = first; k < n; k += step) {
        ql_part<A> q;
        q.v = ql_load_acc(A(), row[k * rstride]);
        q.i = k;
        p = ql_combine(op, p, q);
    }
    return p;
}

/* stores a row's result as the CPU reference does (st_f for float results, st_i for integers) */
template <typename A>
__device__ __forceinline__ void ql_store_result(int op, void *dst, int dd, int64_t o, ql_part<A> p, int64_t n)
{
    if (op == QL_ARGMAX) { ql_sti(dst, dd, o, p.i < 0 ? 0 : p.i); return; }
    if (op == QL_MEAN) { ql_stf(dst, dd, o, n ? (float)((double)p.v / (double)n) : NAN); return; }
    if (ql_is_int<A>::value) ql_sti(dst, dd, o, (int64_t)p.v);
    else ql_stf(dst, dd, o, (float)p.v);
}

/* one warp per output row */
template <typename S>
__global__ void k_reduce_warp(int op, void *dst, int dd, const S *src, int64_t nout, int64_t n, int64_t rstride, ql_idx ix)
{
    typedef typename ql_acc<S>::type A;
    int lane = threadIdx.x & 31;
    int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t r = warp; r < nout; r += nwarps) {
        int64_t o[2];
        ql_idx_offsets<2>(ix, r, o);
        ql_part<A> p = ql_row_partial<S, A>(op, src + o[1], n, rstride, lane, 32);
        p = ql_warp_reduce(op, p);
        if (lane == 0) ql_store_result<A>(op, dst, dd, o[0], p, n);
    }
}

/* one block (512 threads) per output row */
template <typename S>
__global__ void k_reduce_block(int op, void *dst, int dd, const S *src, int64_t nout, int64_t n, int64_t rstride, ql_idx ix)
{
    typedef typename ql_acc<S>::type A;
    __shared__ A sv[32];
    __shared__ int64_t si[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int64_t r = blockIdx.x; r < nout; r += gridDim.x) {
        int64_t o[2];
        ql_idx_offsets<2>(ix, r, o);
        ql_part<A> p = ql_row_partial<S, A>(op, src + o[1], n, rstride, threadIdx.x, blockDim.x);
        p = ql_warp_reduce(op, p);
        if (lane == 0) { sv[wid] = p.v; si[wid] = p.i; }
        __syncthreads();
        if (wid == 0) {
            ql_part<A> q;
            q.v = lane < nw ? sv[lane] : A(0);
            q.i = lane < nw ? si[lane] : -1;
            q = ql_warp_reduce(op, q);
            if (lane == 0) ql_store_result<A>(op, dst, dd, o[0], q, n);
        }
        __syncthreads();
    }
}

template <typename S>
static ql_status reduce_t(int op, ql_tensor *dst, const ql_tensor *src, int dim)
{
    int64_t nout = ql_tensor_numel(dst);
    if (nout == 0) return QL_OK;
    int64_t n = src->shape[dim], rstride = src->stride[dim];
    ql_tensor base = *src;      /* src with the reduced dim collapsed to its first element */
    base.shape[dim] = 1;
    ql_idx ix;
    const ql_tensor *ts[2] = { dst, &base };
    (void)ql_idx_make(&ix, 2, ts);
    void *d = (char *)dst->storage->data + ql_dtype_bytes(dst->dtype, dst->offset);
    int sms = ql_cuda_sm_count(ql_cuda_dev_of(dst));
    if (n >= 4096 && nout < 4 * (int64_t)sms) {
        unsigned g = (unsigned)(nout < 65535 ? nout : 65535);
        k_reduce_block<S><<<g, 512>>>(op, d, dst->dtype, ql_ptr<S>(src), nout, n, rstride, ix);
        QL_CU_LAUNCH("k_reduce_block");
    } else {
        k_reduce_warp<S><<<ql_grid(nout * 32), 256>>>(op, d, dst->dtype, ql_ptr<S>(src), nout, n, rstride, ix);
        QL_CU_LAUNCH("k_reduce_warp");
    }
    return QL_OK;
}

ql_status ql_cuda_reduce(ql_reduce_op op, ql_tensor *dst, const ql_tensor *src, int dim)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    if (dim < 0 || dim >= src->ndim)
        return ql_fail(QL_EINVAL, "CUDA reduce: dim %d out of range for a %d-d tensor", dim, src->ndim);
    QL_SWITCH(src->dtype, S, return reduce_t<S>((int)op, dst, src, dim));
}

/* ---------------------------------------------------------------- softmax */

__device__ __forceinline__ float ql_warp_max(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
__device__ __forceinline__ float ql_warp_sum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* block-wide max or sum for blockDim.x a multiple of 32; every thread gets the result */
__device__ __forceinline__ float ql_block_allreduce(float v, bool is_max, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = is_max ? ql_warp_max(v) : ql_warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
    r = is_max ? ql_warp_max(r) : ql_warp_sum(r);
    return r;
}

/* ROWS_PER_BLOCK rows per block: 8 (a warp each) for short rows, 1 (the whole block) for long */
template <typename T, bool WARP>
__global__ void k_softmax(T *dst, const T *src, int64_t rows, int64_t len)
{
    __shared__ float sh[32];
    int lane = threadIdx.x & 31;
    int64_t first, step;
    int64_t r0, rstep;
    if (WARP) {
        r0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
        rstep = ((int64_t)gridDim.x * blockDim.x) >> 5;
        first = lane; step = 32;
    } else {
        r0 = blockIdx.x; rstep = gridDim.x;
        first = threadIdx.x; step = blockDim.x;
    }
    for (int64_t r = r0; r < rows; r += rstep) {
        const T *x = src + r * len;
        T *y = dst + r * len;
        float m = -INFINITY;
        for (int64_t k = first; k < len; k += step) m = fmaxf(m, ql_to_f32(x[k]));
        m = WARP ? ql_warp_max(m) : ql_block_allreduce(m, true, sh);
        if (m == -INFINITY) m = 0.0f;  /* a row of -inf: exp(-inf - 0) = 0, then 0/0 = NaN like the reference */
        float s = 0.0f;
        for (int64_t k = first; k < len; k += step) s += expf(ql_to_f32(x[k]) - m);
        s = WARP ? ql_warp_sum(s) : ql_block_allreduce(s, false, sh);
        float inv = 1.0f / s;
        for (int64_t k = first; k < len; k += step) y[k] = ql_from_f32<T>(expf(ql_to_f32(x[k]) - m) * inv);
    }
}

template <typename T> static ql_status softmax_t(ql_tensor *dst, const ql_tensor *src)
{
    int64_t numel = ql_tensor_numel(src);
    if (numel == 0) return QL_OK;
    int64_t len = src->ndim ? src->shape[src->ndim - 1] : 1;
    if (len == 0) return QL_OK;
    int64_t rows = numel / len;
    if (len > 1024) {
        unsigned g = (unsigned)(rows < 65535 * 4 ? rows : 65535 * 4);
        k_softmax<T, false><<<g, 512>>>(ql_ptr<T>(dst), ql_ptr<T>(src), rows, len);
    } else {
        k_softmax<T, true><<<ql_grid(rows * 32), 256>>>(ql_ptr<T>(dst), ql_ptr<T>(src), rows, len);
    }
    QL_CU_LAUNCH("k_softmax");
    return QL_OK;
}

ql_status ql_cuda_softmax(ql_tensor *dst, const ql_tensor *src)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    if (!ql_tensor_is_contiguous(src) || !ql_tensor_is_contiguous(dst) || src->dtype != dst->dtype)
        return ql_fail(QL_EINVAL, "CUDA softmax: src and dst must be contiguous and of one dtype");
    QL_SWITCH_FLOAT(src->dtype, T, return softmax_t<T>(dst, src));
}
