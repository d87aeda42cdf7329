/*
 * common.cuh — what the CUDA kernel files share: the engine headers with C
 * linkage, error checks, element types, dtype conversions that match the CPU
 * reference bit for bit, and the strided N-d indexer.
 *
 * Header rule: only static inline functions, templates and declarations here
 * (each .cu is its own translation unit; see STYLE.md).
 *
 * Conversions: every value that crosses dtypes goes through ql_cvt<D>(S),
 * defined once below. Float dtypes go through f32 with dtype.h's rounding
 * (round to nearest even, NaN stays NaN); integers from floats truncate
 * toward zero (C's conversion, like the CPU reference); NaN/out-of-range
 * float-to-int is saturated here to stay defined (C leaves it undefined).
 */
#ifndef QL_KERNELS_COMMON_CUH
#define QL_KERNELS_COMMON_CUH

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <cuda_runtime.h>

extern "C" {
#include "ql.h"
#include "dtype.h"
#include "tensor.h"
#include "backend.h"
#include "device.h"
}

/* ---------------------------------------------------------------- errors */

/* Records a CUDA failure as QL_EDEVICE (QL_ENOMEM for allocation failures) and returns it. */
static inline ql_status ql_cuda_fail(cudaError_t e, const char *what, const char *file, int line)
{
    ql_status code = e == cudaErrorMemoryAllocation ? QL_ENOMEM : QL_EDEVICE;
    (void)cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return ql_fail(code, "CUDA: %s failed: %s (%s) at %s:%d", what, cudaGetErrorString(e),
                   cudaGetErrorName(e), file, line);
}

#define QL_CU(call)                                                                   \
    do {                                                                              \
        cudaError_t ql_e_ = (call);                                                   \
        if (ql_e_ != cudaSuccess) return ql_cuda_fail(ql_e_, #call, __FILE__, __LINE__); \
    } while (0)

/* after every <<<...>>> */
#define QL_CU_LAUNCH(name)                                                            \
    do {                                                                              \
        cudaError_t ql_e_ = cudaGetLastError();                                       \
        if (ql_e_ != cudaSuccess) return ql_cuda_fail(ql_e_, "launch of " name, __FILE__, __LINE__); \
    } while (0)

/* ---------------------------------------------------------------- shared helpers (backend_cuda.cu) */

/* Makes dev current (and checks it exists). */
ql_status ql_cuda_set_device(int dev);
/* Number of SMs of dev (cached). */
int ql_cuda_sm_count(int dev);
/* Temporary device buffer for an op (cudaMalloc; ENOMEM message like alloc's). */
void *ql_cuda_tmp_alloc(int dev, size_t nbytes);
void ql_cuda_tmp_free(int dev, void *p);
/* dst = cast(src) on the device; same shape; used by matmul to make operands contiguous. */
ql_status ql_cuda_copy(ql_tensor *dst, const ql_tensor *src);
/* The ops living in their own files. */
ql_status ql_cuda_reduce(ql_reduce_op op, ql_tensor *dst, const ql_tensor *src, int dim);
ql_status ql_cuda_softmax(ql_tensor *dst, const ql_tensor *src);
ql_status ql_cuda_matmul(ql_tensor *dst, const ql_tensor *a, const ql_tensor *b);

static inline int ql_cuda_dev_of(const ql_tensor *t) { return t->storage->device.index; }

/* ---------------------------------------------------------------- element types */

struct ql_bf16_t { uint16_t x; };
struct ql_f16_t { uint16_t x; };

template <typename T> struct ql_is_int { static const bool value = false; };
template <> struct ql_is_int<int32_t> { static const bool value = true; };
template <> struct ql_is_int<int64_t> { static const bool value = true; };
template <> struct ql_is_int<uint8_t> { static const bool value = true; };

/* any element -> f32 (exact for f16/bf16/u8; i32/i64 round to nearest like C) */
__host__ __device__ __forceinline__ float ql_to_f32(float v) { return v; }
__host__ __device__ __forceinline__ float ql_to_f32(ql_bf16_t v) { return ql_bf16_to_f32(v.x); }
__host__ __device__ __forceinline__ float ql_to_f32(ql_f16_t v) { return ql_f16_to_f32(v.x); }
__host__ __device__ __forceinline__ float ql_to_f32(int32_t v) { return (float)v; }
__host__ __device__ __forceinline__ float ql_to_f32(int64_t v) { return (float)v; }
__host__ __device__ __forceinline__ float ql_to_f32(uint8_t v) { return (float)v; }

/* f32 -> element, as the CPU reference's st_f: float dtypes round to nearest
   even; i32/i64 truncate and saturate (NaN -> 0); u8 truncates through int64
   and wraps. */
template <typename D> __host__ __device__ __forceinline__ D ql_from_f32(float f);
template <> __host__ __device__ __forceinline__ float ql_from_f32<float>(float f) { return f; }
template <> __host__ __device__ __forceinline__ ql_bf16_t ql_from_f32<ql_bf16_t>(float f) { ql_bf16_t r; r.x = ql_f32_to_bf16(f); return r; }
template <> __host__ __device__ __forceinline__ ql_f16_t ql_from_f32<ql_f16_t>(float f) { ql_f16_t r; r.x = ql_f32_to_f16(f); return r; }
/* float -> int64 as the CPU's ld_i: NaN -> 0, saturating, truncating toward zero */
__host__ __device__ __forceinline__ int64_t ql_f2i64(float f)
{
    if (f != f) return 0;
    if (f >= 9.2233720368547758e18f) return INT64_MAX;
    if (f <= -9.2233720368547758e18f) return INT64_MIN;
    return (int64_t)f;
}
template <> __host__ __device__ __forceinline__ int32_t ql_from_f32<int32_t>(float f)
{ return f != f ? 0 : f >= 2147483647.0f ? INT32_MAX : f <= -2147483648.0f ? INT32_MIN : (int32_t)f; }
template <> __host__ __device__ __forceinline__ int64_t ql_from_f32<int64_t>(float f) { return ql_f2i64(f); }
template <> __host__ __device__ __forceinline__ uint8_t ql_from_f32<uint8_t>(float f) { return (uint8_t)ql_f2i64(f); }

/* integer value of an element (floats as ql_f2i64) */
__host__ __device__ __forceinline__ int64_t ql_to_i64(int32_t v) { return v; }
__host__ __device__ __forceinline__ int64_t ql_to_i64(int64_t v) { return v; }
__host__ __device__ __forceinline__ int64_t ql_to_i64(uint8_t v) { return v; }
__host__ __device__ __forceinline__ int64_t ql_to_i64(float v) { return ql_f2i64(v); }
__host__ __device__ __forceinline__ int64_t ql_to_i64(ql_bf16_t v) { return ql_f2i64(ql_to_f32(v)); }
__host__ __device__ __forceinline__ int64_t ql_to_i64(ql_f16_t v) { return ql_f2i64(ql_to_f32(v)); }

/* int64 -> element, as the CPU's st_i: integers wrap (C conversion), floats via (float)v */
template <typename D> __host__ __device__ __forceinline__ D ql_from_i64(int64_t v) { return (D)v; }
template <> __host__ __device__ __forceinline__ float ql_from_i64<float>(int64_t v) { return (float)v; }
template <> __host__ __device__ __forceinline__ ql_bf16_t ql_from_i64<ql_bf16_t>(int64_t v) { return ql_from_f32<ql_bf16_t>((float)v); }
template <> __host__ __device__ __forceinline__ ql_f16_t ql_from_i64<ql_f16_t>(int64_t v) { return ql_from_f32<ql_f16_t>((float)v); }

/* The one cast, D <- S, as the CPU's copy: a float destination takes the
   value through f32; an integer destination takes it through int64. */
template <typename D, typename S> __host__ __device__ __forceinline__ D ql_cvt(S s)
{
    if (ql_is_int<D>::value) return ql_from_i64<D>(ql_to_i64(s));
    return ql_from_f32<D>(ql_to_f32(s));
}

/* ---------------------------------------------------------------- run-time dtype access */
/* For the mixed-dtype paths: element i of base (dtype dt) as the CPU's ld_f/ld_i/st_f/st_i. */
__device__ __forceinline__ bool ql_dt_float(int dt) { return dt == QL_F32 || dt == QL_BF16 || dt == QL_F16; }
__device__ __forceinline__ float ql_ldf(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case QL_F32: return ((const float *)p)[i];
    case QL_BF16: return ql_bf16_to_f32(((const uint16_t *)p)[i]);
    case QL_F16: return ql_f16_to_f32(((const uint16_t *)p)[i]);
    case QL_I32: return (float)((const int32_t *)p)[i];
    case QL_I64: return (float)((const int64_t *)p)[i];
    case QL_U8: return (float)((const uint8_t *)p)[i];
    default: return NAN;
    }
}
__device__ __forceinline__ int64_t ql_ldi(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case QL_I32: return ((const int32_t *)p)[i];
    case QL_I64: return ((const int64_t *)p)[i];
    case QL_U8: return ((const uint8_t *)p)[i];
    default: return ql_f2i64(ql_ldf(p, dt, i));
    }
}
__device__ __forceinline__ void ql_stf(void *p, int dt, int64_t i, float v)
{
    switch (dt) {
    case QL_F32: ((float *)p)[i] = v; break;
    case QL_BF16: ((uint16_t *)p)[i] = ql_f32_to_bf16(v); break;
    case QL_F16: ((uint16_t *)p)[i] = ql_f32_to_f16(v); break;
    case QL_I32: ((int32_t *)p)[i] = ql_from_f32<int32_t>(v); break;
    case QL_I64: ((int64_t *)p)[i] = ql_from_f32<int64_t>(v); break;
    case QL_U8: ((uint8_t *)p)[i] = ql_from_f32<uint8_t>(v); break;
    default: break;
    }
}
__device__ __forceinline__ void ql_sti(void *p, int dt, int64_t i, int64_t v)
{
    switch (dt) {
    case QL_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case QL_I64: ((int64_t *)p)[i] = v; break;
    case QL_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    default: ql_stf(p, dt, i, (float)v); break;
    }
}

/* QL_SWITCH(dtype, T, body): runs body with T the element type of dtype (body
   returns); other dtypes (nf4) fail with QL_EUNSUPPORTED. Nests for two dtypes. */
#define QL_SWITCH(dt, T, ...)                                                             \
    switch (dt) {                                                                         \
    case QL_F32:  { typedef float T; __VA_ARGS__; }                                       \
    case QL_BF16: { typedef ql_bf16_t T; __VA_ARGS__; }                                   \
    case QL_F16:  { typedef ql_f16_t T; __VA_ARGS__; }                                    \
    case QL_I32:  { typedef int32_t T; __VA_ARGS__; }                                     \
    case QL_I64:  { typedef int64_t T; __VA_ARGS__; }                                     \
    case QL_U8:   { typedef uint8_t T; __VA_ARGS__; }                                     \
    default: return ql_fail(QL_EUNSUPPORTED, "CUDA backend: dtype %s is not supported by this op", \
                            ql_dtype_name(dt));                                           \
    }

#define QL_SWITCH_FLOAT(dt, T, ...)                                                       \
    switch (dt) {                                                                         \
    case QL_F32:  { typedef float T; __VA_ARGS__; }                                       \
    case QL_BF16: { typedef ql_bf16_t T; __VA_ARGS__; }                                   \
    case QL_F16:  { typedef ql_f16_t T; __VA_ARGS__; }                                    \
    default: return ql_fail(QL_EUNSUPPORTED, "CUDA backend: this op needs f32, bf16 or f16, got %s", \
                            ql_dtype_name(dt));                                           \
    }

/* ---------------------------------------------------------------- strided indexing */

/* Shape and strides (in elements) of up to 4 tensors of one logical shape, after
   dropping size-1 dims and merging dims that are contiguous in all of them.
   Passed by value to kernels. */
#define QL_IDX_MAXT 4
struct ql_idx {
    int ndim;
    int64_t shape[QL_MAXDIM];
    int64_t stride[QL_IDX_MAXT][QL_MAXDIM];
};

/* Builds the merged index over nt tensors (all of ts[0]'s logical shape; strides may be 0).
   Returns 1 when every tensor is plain contiguous (then offsets are just i). */
static inline int ql_idx_make(ql_idx *ix, int nt, const ql_tensor *const *ts)
{
    const ql_tensor *t0 = ts[0];
    int n = 0;
    int64_t shape[QL_MAXDIM], st[QL_IDX_MAXT][QL_MAXDIM];
    for (int d = 0; d < t0->ndim; d++) {
        if (t0->shape[d] == 1) continue;
        if (n > 0) {
            int merge = 1;
            for (int k = 0; k < nt; k++)
                if (st[k][n - 1] != ts[k]->stride[d] * t0->shape[d]) merge = 0;
            if (merge) {
                shape[n - 1] *= t0->shape[d];
                for (int k = 0; k < nt; k++) st[k][n - 1] = ts[k]->stride[d];
                continue;
            }
        }
        shape[n] = t0->shape[d];
        for (int k = 0; k < nt; k++) st[k][n] = ts[k]->stride[d];
        n++;
    }
    memset(ix, 0, sizeof *ix);
    ix->ndim = n;
    int contig = 1;
    for (int d = 0; d < n; d++) {
        ix->shape[d] = shape[d];
        for (int k = 0; k < nt; k++) ix->stride[k][d] = st[k][d];
    }
    if (n > 1) contig = 0;
    if (n == 1)
        for (int k = 0; k < nt; k++)
            if (st[k][0] != 1) contig = 0;
    return contig;
}

/* Element offsets of linear index i for the first NT tensors. */
template <int NT>
__device__ __forceinline__ void ql_idx_offsets(const ql_idx &ix, int64_t i, int64_t *off)
{
#pragma unroll
    for (int k = 0; k < NT; k++) off[k] = 0;
    for (int d = ix.ndim - 1; d >= 0; d--) {
        int64_t n = ix.shape[d];
        int64_t q = i / n, r = i - q * n;
#pragma unroll
        for (int k = 0; k < NT; k++) off[k] += r * ix.stride[k][d];
        i = q;
    }
}

/* Typed pointer to element 0 of a tensor (its offset applied). */
template <typename T> static inline T *ql_ptr(const ql_tensor *t)
{
    return (T *)t->storage->data + t->offset;
}

/* Grid for n elements with 256-thread blocks and a grid-stride loop. */
static inline unsigned ql_grid(int64_t n, int threads = 256)
{
    int64_t b = (n + threads - 1) / threads;
    if (b > 65535 * 8) b = 65535 * 8;
    if (b < 1) b = 1;
    return (unsigned)b;
}

#define QL_GRID_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#endif
