/*
 * backend.h — what a compute backend provides. tensor.c validates shapes,
 * dtypes and devices, allocates results and then calls exactly one of these;
 * a backend never sees a shape mismatch. All tensors handed to one call live
 * on the backend's device. Strided inputs are allowed everywhere unless noted.
 *
 * The CPU backend (cpu_backend.c) is the reference. The CUDA backend
 * (kernels/backend_cuda.cu, present when built with QL_CUDA) must match it:
 * bit-for-bit for copies, casts, fill, arange, rand and NF4; within float
 * rounding for math.
 */
#ifndef QL_BACKEND_H
#define QL_BACKEND_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ql_backend {
    const char *name;
    /* number of devices this backend drives (0: none usable) */
    int (*device_count)(void);
    void *(*alloc)(int dev, size_t nbytes);          /* NULL + ql_fail on failure */
    void (*free)(int dev, void *p);
    /* raw copies between this backend's memory and the host */
    ql_status (*to_host)(int dev, void *dst, const void *src, size_t n);
    ql_status (*from_host)(int dev, void *dst, const void *src, size_t n);
    ql_status (*sync)(int dev);
    ql_status (*mem_info)(int dev, size_t *free_b, size_t *total_b);

    /* dst = value (dst any dtype but nf4) */
    ql_status (*fill)(ql_tensor *dst, double value);
    /* dst[i] = start + i * step, dst contiguous 1-D */
    ql_status (*arange)(ql_tensor *dst, double start, double step);
    /* dst = rand (uniform or normal), element i from (seed, stream, i) in row-major order */
    ql_status (*rand)(ql_tensor *dst, int normal, uint64_t seed, uint64_t stream);
    /* dst = cast(src), same shape (src may have 0 strides from broadcasting); neither nf4 */
    ql_status (*copy)(ql_tensor *dst, const ql_tensor *src);
    /* dst = op(src), same shape; float math in f32 */
    ql_status (*unary)(ql_unary_op op, ql_tensor *dst, const ql_tensor *src);
    /* dst = a op b, all three the same shape (a, b expanded by the caller) */
    ql_status (*binary)(ql_binary_op op, ql_tensor *dst, const ql_tensor *a, const ql_tensor *b);
    /* dst = reduce(src) along dim; dst has src's shape with shape[dim] == 1 */
    ql_status (*reduce)(ql_reduce_op op, ql_tensor *dst, const ql_tensor *src, int dim);
    /* dst = softmax(src) along the last dim; both contiguous */
    ql_status (*softmax)(ql_tensor *dst, const ql_tensor *src);
    /* dst[b] = a[b] @ b[b]: dst [B, M, N] contiguous; a [B, M, K], b [B, K, N], either may
       have any strides (a batch stride of 0 broadcasts); f32 accumulation */
    ql_status (*matmul)(ql_tensor *dst, const ql_tensor *a, const ql_tensor *b);
    /* NF4: dst (f32/bf16/f16, contiguous, numel == src numel) = dequantize(src) */
    ql_status (*nf4_dequantize)(ql_tensor *dst, const ql_tensor *src);
    /* NF4: dst (nf4, quant state allocated by the caller) = quantize(src contiguous f32) */
    ql_status (*nf4_quantize)(ql_tensor *dst, const ql_tensor *src);
    /* page-locked host memory that this backend's kernels read directly (NULL entries, or a
       NULL result, when the backend has none): tables kept off the device, like an untied
       embedding, that a step needs a few rows of */
    void *(*host_alloc)(size_t nbytes);
    void (*host_free)(void *p);
} ql_backend;

extern const ql_backend ql_cpu_backend;
#ifdef QL_CUDA
/* defined in kernels/backend_cuda.cu */
extern const ql_backend ql_cuda_backend;
#endif

/* The backend for a device, or NULL with ql_fail when that device cannot be used. */
const ql_backend *ql_backend_for(ql_device dev);

/* Strided N-d iteration helpers shared by backends (host code). */
static inline int64_t ql_offset_of(const ql_tensor *t, int64_t linear)
{
    int64_t off = t->offset;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (linear % n) * t->stride[d];
        linear /= n;
    }
    return off;
}

#ifdef __cplusplus
}
#endif
#endif
