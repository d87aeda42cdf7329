/*
 * tensor.h — the one tensor type: dtype, device, shape and strides over a
 * refcounted storage. Views (reshape of contiguous data, transpose, permute,
 * slice, expand) share storage; ops allocate their result.
 *
 * Ownership: functions named _new or returning ql_tensor* hand the caller one
 * reference; ql_tensor_release drops it. NULL means failure, with the reason
 * in ql_last_error(). Strides and offsets count elements, not bytes (NF4
 * tensors are always contiguous with an even offset).
 *
 * Ops dispatch in one place (tensor.c) to a backend (backend.h): the CPU
 * reference always, CUDA when compiled in and a GPU is present.
 */
#ifndef QL_TENSOR_H
#define QL_TENSOR_H

#include "dtype.h"
#include "ql.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QL_MAXDIM 8

typedef enum ql_devtype { QL_DEV_CPU = 0, QL_DEV_CUDA = 1 } ql_devtype;

typedef struct ql_device {
    int type;   /* ql_devtype */
    int index;  /* cuda:N */
} ql_device;

static inline ql_device ql_cpu(void) { ql_device d = { QL_DEV_CPU, 0 }; return d; }
static inline ql_device ql_cuda(int i) { ql_device d = { QL_DEV_CUDA, i }; return d; }
static inline int ql_device_eq(ql_device a, ql_device b) { return a.type == b.type && (a.type == QL_DEV_CPU || a.index == b.index); }
/* "cpu", "cuda", "cuda:1" */
ql_status ql_device_parse(const char *s, ql_device *out);
void ql_device_str(ql_device d, char *buf, size_t cap);

typedef struct ql_storage {
    int refcount;
    ql_device device;
    void *data;
    size_t nbytes;
    /* how to give the memory back: NULL for memory from the backend allocator */
    void (*release)(struct ql_storage *s);
    void *owner;                 /* e.g. the file mapping that data points into */
} ql_storage;

/* Quantization state of an NF4 tensor (bitsandbytes layout), on the tensor's device. */
typedef struct ql_quant {
    int refcount;
    int blocksize;               /* elements per absmax block (64) */
    int double_quant;            /* absmax stored as u8 + nested statistics */
    int nested_blocksize;        /* 256 */
    float nested_offset;
    ql_dtype orig_dtype;         /* dtype the weight had before quantization (bf16, f16, f32) */
    struct ql_tensor *absmax;        /* f32 [nblocks], or u8 [nblocks] when double_quant */
    struct ql_tensor *nested_absmax; /* f32 [ceil(nblocks / nested_blocksize)] */
    struct ql_tensor *nested_code;   /* f32 [256] signed dynamic map */
} ql_quant;

typedef struct ql_tensor {
    int refcount;
    ql_dtype dtype;
    int ndim;
    int64_t shape[QL_MAXDIM];
    int64_t stride[QL_MAXDIM];   /* in elements */
    int64_t offset;              /* in elements */
    ql_storage *storage;
    ql_quant *quant;             /* NF4 only */
} ql_tensor;

/* ---------------- lifetime ---------------- */
ql_tensor *ql_tensor_new(ql_dtype dtype, int ndim, const int64_t *shape, ql_device dev); /* uninitialised */
ql_tensor *ql_tensor_retain(ql_tensor *t);
void       ql_tensor_release(ql_tensor *t);
/* A tensor over memory someone else owns; `release` (may be NULL) runs when the last view dies. */
ql_tensor *ql_tensor_wrap(ql_dtype dtype, int ndim, const int64_t *shape, void *data, size_t nbytes,
                          void (*release)(ql_storage *), void *owner);

static inline ql_device ql_tensor_device(const ql_tensor *t) { return t->storage->device; }
int64_t ql_tensor_numel(const ql_tensor *t);
int     ql_tensor_is_contiguous(const ql_tensor *t);
/* Pointer to element 0 (host pointer for CPU, device pointer for CUDA). */
void   *ql_tensor_data(const ql_tensor *t);
size_t  ql_tensor_nbytes(const ql_tensor *t);   /* numel in bytes (contiguous size) */
int     ql_shape_eq(const ql_tensor *a, const ql_tensor *b);
void    ql_shape_str(const ql_tensor *t, char *buf, size_t cap);  /* "[2, 3]" */

/* ---------------- creation ---------------- */
ql_tensor *ql_tensor_full(ql_dtype dtype, int ndim, const int64_t *shape, double value, ql_device dev);
ql_tensor *ql_tensor_arange(double start, double stop, double step, ql_dtype dtype, ql_device dev);
/* Uniform [0,1) or standard normal from the counter-based generator (rng.h):
   element i of the result is a function of (seed, stream, i) alone. */
ql_tensor *ql_tensor_rand(ql_dtype dtype, int ndim, const int64_t *shape, int normal,
                          uint64_t seed, uint64_t stream, ql_device dev);
/* Copies n elements of dtype `src_dtype` from host memory into a new tensor of `dtype`. */
ql_tensor *ql_tensor_from_host(ql_dtype dtype, int ndim, const int64_t *shape, const void *src,
                               ql_dtype src_dtype, ql_device dev);
/* Reads element i (row-major order of the logical shape) as a double; CPU tensors only. */
double ql_tensor_get_flat(const ql_tensor *t, int64_t i);

/* ---------------- views ---------------- */
/* view: same data, new shape; fails unless the strides allow it. One dim may be -1. */
ql_tensor *ql_tensor_view(ql_tensor *t, int ndim, const int64_t *shape);
/* reshape: a view when possible, else a contiguous copy. */
ql_tensor *ql_tensor_reshape(ql_tensor *t, int ndim, const int64_t *shape);
ql_tensor *ql_tensor_transpose(ql_tensor *t, int d0, int d1);
ql_tensor *ql_tensor_permute(ql_tensor *t, const int *perm);
/* elements start, start+step, ... < stop along dim (negative start/stop count from the end) */
ql_tensor *ql_tensor_slice(ql_tensor *t, int dim, int64_t start, int64_t stop, int64_t step);
/* drop dim by picking index i */
ql_tensor *ql_tensor_select(ql_tensor *t, int dim, int64_t i);
ql_tensor *ql_tensor_expand(ql_tensor *t, int ndim, const int64_t *shape);  /* broadcast view */
ql_tensor *ql_tensor_contiguous(ql_tensor *t);   /* t itself (retained) when already contiguous */

/* ---------------- copies ---------------- */
/* New tensor of dtype on dev; NF4 sources dequantize, NF4 targets quantize (blocksize 64, double quant). */
ql_tensor *ql_tensor_quantize_nf4(ql_tensor *t, int blocksize, int double_quant, ql_device dev);
ql_tensor *ql_tensor_to(ql_tensor *t, ql_dtype dtype, ql_device dev);
/* dst[...] = src, broadcasting src to dst's shape; any dtypes and devices. */
ql_status  ql_tensor_copy_(ql_tensor *dst, ql_tensor *src);
ql_status  ql_tensor_fill_(ql_tensor *dst, double value);

/* ---------------- math ---------------- */
typedef enum ql_unary_op {
    QL_NEG, QL_ABS, QL_EXP, QL_LOG, QL_SQRT, QL_RSQRT, QL_SIN, QL_COS, QL_TANH,
    QL_SIGMOID, QL_SILU, QL_RELU, QL_GELU, QL_SQUARE, QL_RECIP, QL_NUNARY
} ql_unary_op;
typedef enum ql_binary_op {
    QL_ADD, QL_SUB, QL_MUL, QL_DIV, QL_POW, QL_MAXIMUM, QL_MINIMUM,
    QL_EQ, QL_NE, QL_LT, QL_LE, QL_GT, QL_GE, QL_NBINARY
} ql_binary_op;
typedef enum ql_reduce_op { QL_SUM, QL_MEAN, QL_MAX, QL_MIN, QL_ARGMAX, QL_NREDUCE } ql_reduce_op;
#define QL_ALLDIMS (-1000)

const char *ql_unary_name(ql_unary_op op);
const char *ql_binary_name(ql_binary_op op);
ql_dtype   ql_promote(ql_dtype a, ql_dtype b);

ql_tensor *ql_unary(ql_unary_op op, ql_tensor *a);
ql_tensor *ql_binary(ql_binary_op op, ql_tensor *a, ql_tensor *b);        /* broadcasting */
ql_tensor *ql_binary_scalar(ql_binary_op op, ql_tensor *a, double s, int scalar_first);
/* dim = QL_ALLDIMS reduces everything to a 0-d tensor; argmax gives i64 */
ql_tensor *ql_reduce(ql_reduce_op op, ql_tensor *a, int dim, int keepdim);
ql_tensor *ql_softmax(ql_tensor *a, int dim);
/* [..., M, K] @ [..., K, N] -> [..., M, N]; batch dims broadcast; f32 accumulation.
   An NF4 operand is dequantized (to f32 on CPU, bf16 on CUDA). */
ql_tensor *ql_matmul(ql_tensor *a, ql_tensor *b);

/* ---------------- memory accounting ---------------- */
typedef struct ql_mem_stats {
    int64_t in_use;      /* bytes held by live storages */
    int64_t peak;
    int64_t allocs;      /* live allocation count */
} ql_mem_stats;
ql_mem_stats ql_memory(ql_device dev);
void ql_memory_reset_peak(ql_device dev);
/* counts bytes (negative: freed) of memory taken outside tensors (the decoder's planned buffers) */
void ql_memory_count(ql_device dev, int64_t bytes);

#ifdef __cplusplus
}
#endif
#endif
