/*
 * cpu_backend.c — the reference backend. Plain C over strided tensors, every
 * value through the dtype.h conversions; float math in f32 (sums in double),
 * integer math in int64. Large ops split across threads with ql_parallel_for.
 * Matmul goes to OpenBLAS sgemm (threaded by OpenBLAS itself); a scalar
 * reference matmul (ql_cpu_matmul_ref) is kept for tests and the benchmark.
 */
#include "backend.h"
#include "nf4_backend.h"
#include "platform.h"
#include "rng.h"
#include "scalar_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GRAIN 32768

/* ---------------------------------------------------------------- element access */

static inline float ld_f(const void *base, ql_dtype t, int64_t i)
{
    switch (t) {
    case QL_F32: return ((const float *)base)[i];
    case QL_F16: return ql_f16_to_f32(((const uint16_t *)base)[i]);
    case QL_BF16: return ql_bf16_to_f32(((const uint16_t *)base)[i]);
    case QL_I32: return (float)((const int32_t *)base)[i];
    case QL_I64: return (float)((const int64_t *)base)[i];
    case QL_U8: return (float)((const uint8_t *)base)[i];
    default: return NAN;
    }
}

static inline int64_t ld_i(const void *base, ql_dtype t, int64_t i)
{
    switch (t) {
    case QL_I32: return ((const int32_t *)base)[i];
    case QL_I64: return ((const int64_t *)base)[i];
    case QL_U8: return ((const uint8_t *)base)[i];
    default: {
        float f = ld_f(base, t, i);
        if (f != f) return 0;
        if (f >= 9.2233720368547758e18f) return INT64_MAX;
        if (f <= -9.2233720368547758e18f) return INT64_MIN;
        return (int64_t)f;  /* truncates toward zero, as torch does */
    }
    }
}

static inline void st_f(void *base, ql_dtype t, int64_t i, float v)
{
    switch (t) {
    case QL_F32: ((float *)base)[i] = v; break;
    case QL_F16: ((uint16_t *)base)[i] = ql_f32_to_f16(v); break;
    case QL_BF16: ((uint16_t *)base)[i] = ql_f32_to_bf16(v); break;
    case QL_I32: ((int32_t *)base)[i] = v != v ? 0 : v >= 2147483647.0f ? INT32_MAX : v <= -2147483648.0f ? INT32_MIN : (int32_t)v; break;
    case QL_I64: ((int64_t *)base)[i] = v != v ? 0 : v >= 9.2233720368547758e18f ? INT64_MAX : v <= -9.2233720368547758e18f ? INT64_MIN : (int64_t)v; break;
    case QL_U8: ((uint8_t *)base)[i] = (uint8_t)(v != v ? 0 : (int64_t)v); break;
    default: break;
    }
}

static inline void st_i(void *base, ql_dtype t, int64_t i, int64_t v)
{
    switch (t) {
    case QL_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case QL_I64: ((int64_t *)base)[i] = v; break;
    case QL_U8: ((uint8_t *)base)[i] = (uint8_t)v; break;
    default: st_f(base, t, i, (float)v); break;
    }
}

static inline int is_float(ql_dtype t) { return t == QL_F32 || t == QL_F16 || t == QL_BF16; }

/* Offsets of up to three same-shape tensors advanced element by element in row-major order. */
typedef struct {
    int ndim, n;
    int64_t shape[QL_MAXDIM];
    int64_t idx[QL_MAXDIM];
    int64_t stride[3][QL_MAXDIM];
    int64_t off[3];
} iter;

static void iter_init(iter *it, int n, const ql_tensor *const *ts, int64_t start)
{
    const ql_tensor *t0 = ts[0];
    it->ndim = t0->ndim; it->n = n;
    int64_t lin = start;
    for (int d = t0->ndim - 1; d >= 0; d--) {
        it->shape[d] = t0->shape[d];
        it->idx[d] = t0->shape[d] ? lin % t0->shape[d] : 0;
        lin = t0->shape[d] ? lin / t0->shape[d] : 0;
    }
    for (int k = 0; k < n; k++) {
        it->off[k] = ts[k]->offset;
        for (int d = 0; d < t0->ndim; d++) {
            it->stride[k][d] = ts[k]->stride[d];
            it->off[k] += it->idx[d] * ts[k]->stride[d];
        }
    }
}

static inline void iter_next(iter *it)
{
    for (int d = it->ndim - 1; d >= 0; d--) {
        if (++it->idx[d] < it->shape[d]) {
            for (int k = 0; k < it->n; k++) it->off[k] += it->stride[k][d];
            return;
        }
        it->idx[d] = 0;
        for (int k = 0; k < it->n; k++) it->off[k] -= (it->shape[d] - 1) * it->stride[k][d];
    }
}

/* ---------------------------------------------------------------- memory */

static int cpu_device_count(void) { return 1; }

static void *cpu_alloc(int dev, size_t n)
{
    (void)dev;
    void *p = NULL;
#ifdef _WIN32
    /* Windows has no posix_memalign; what _aligned_malloc returns goes back through _aligned_free */
    if (!(p = _aligned_malloc(n ? (n + 63) / 64 * 64 : 64, 64))) {
#else
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) {
#endif
        ql_fail(QL_ENOMEM, "out of host memory allocating %.1f MiB", n / 1048576.0);
        return NULL;
    }
    return p;
}

#ifdef _WIN32
static void cpu_free(int dev, void *p) { (void)dev; _aligned_free(p); }
#else
static void cpu_free(int dev, void *p) { (void)dev; free(p); }
#endif
static ql_status cpu_memcpy(int dev, void *d, const void *s, size_t n) { (void)dev; memcpy(d, s, n); return QL_OK; }
static ql_status cpu_sync(int dev) { (void)dev; return QL_OK; }
static ql_status cpu_mem_info(int dev, size_t *f, size_t *t)
{
    (void)dev;
    ql_host_memory(t, f);
    return QL_OK;
}

/* ---------------------------------------------------------------- fill, arange, rand, copy */

typedef struct {
    ql_tensor *dst; const ql_tensor *src; double v, step; uint64_t seed, stream; int op; const ql_tensor *b;
    int failed;   /* set by a task that found no memory (softmax) */
} job;

static void fill_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    iter it;
    const ql_tensor *ts[1] = { j->dst };
    iter_init(&it, 1, ts, b);
    void *base = j->dst->storage->data;
    ql_dtype t = j->dst->dtype;
    if (is_float(t)) { float v = (float)j->v; for (int64_t i = b; i < e; i++, iter_next(&it)) st_f(base, t, it.off[0], v); }
    else { int64_t v = (int64_t)j->v; for (int64_t i = b; i < e; i++, iter_next(&it)) st_i(base, t, it.off[0], v); }
}

static ql_status cpu_fill(ql_tensor *dst, double v)
{
    job j = { .dst = dst, .v = v };
    ql_parallel_for(ql_tensor_numel(dst), GRAIN, fill_range, &j);
    return QL_OK;
}

static ql_status cpu_arange(ql_tensor *dst, double start, double step)
{
    int64_t n = ql_tensor_numel(dst);
    void *base = dst->storage->data;
    for (int64_t i = 0; i < n; i++) {
        double v = start + (double)i * step;
        if (is_float(dst->dtype)) st_f(base, dst->dtype, dst->offset + i * dst->stride[0], (float)v);
        else st_i(base, dst->dtype, dst->offset + i * dst->stride[0], (int64_t)v);
    }
    return QL_OK;
}

static void rand_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    iter it;
    const ql_tensor *ts[1] = { j->dst };
    iter_init(&it, 1, ts, b);
    for (int64_t i = b; i < e; i++, iter_next(&it)) {
        float v = j->op ? ql_rng_normal(j->seed, j->stream, (uint64_t)i) : ql_rng_uniform(j->seed, j->stream, (uint64_t)i);
        st_f(j->dst->storage->data, j->dst->dtype, it.off[0], v);
    }
}

static ql_status cpu_rand(ql_tensor *dst, int normal, uint64_t seed, uint64_t stream)
{
    job j = { .dst = dst, .seed = seed, .stream = stream, .op = normal };
    ql_parallel_for(ql_tensor_numel(dst), 4096, rand_range, &j);
    return QL_OK;
}

static void copy_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    iter it;
    const ql_tensor *ts[2] = { j->dst, j->src };
    iter_init(&it, 2, ts, b);
    void *d = j->dst->storage->data;
    const void *s = j->src->storage->data;
    ql_dtype td = j->dst->dtype, tsrc = j->src->dtype;
    if (td == tsrc) {
        size_t es = (size_t)ql_dtype_bytes(td, 1);
        for (int64_t i = b; i < e; i++, iter_next(&it))
            memcpy((char *)d + it.off[0] * es, (const char *)s + it.off[1] * es, es);
    } else if (is_float(td) || is_float(tsrc)) {
        for (int64_t i = b; i < e; i++, iter_next(&it)) {
            if (is_float(td)) st_f(d, td, it.off[0], ld_f(s, tsrc, it.off[1]));
            else st_i(d, td, it.off[0], ld_i(s, tsrc, it.off[1]));
        }
    } else {
        for (int64_t i = b; i < e; i++, iter_next(&it)) st_i(d, td, it.off[0], ld_i(s, tsrc, it.off[1]));
    }
}

static ql_status cpu_copy(ql_tensor *dst, const ql_tensor *src)
{
    if (dst->dtype == src->dtype && ql_tensor_is_contiguous(dst) && ql_tensor_is_contiguous(src)) {
        memcpy(ql_tensor_data(dst), ql_tensor_data(src), ql_tensor_nbytes(dst));
        return QL_OK;
    }
    job j = { .dst = dst, .src = src };
    ql_parallel_for(ql_tensor_numel(dst), GRAIN, copy_range, &j);
    return QL_OK;
}

/* ---------------------------------------------------------------- unary, binary */

static void unary_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    iter it;
    const ql_tensor *ts[2] = { j->dst, j->src };
    iter_init(&it, 2, ts, b);
    void *d = j->dst->storage->data;
    const void *s = j->src->storage->data;
    ql_dtype td = j->dst->dtype, tsrc = j->src->dtype;
    if (!is_float(td)) { /* integer neg/abs/relu/square */
        for (int64_t i = b; i < e; i++, iter_next(&it)) {
            int64_t x = ld_i(s, tsrc, it.off[1]);
            st_i(d, td, it.off[0], ql_unary_i64(j->op, x));
        }
        return;
    }
    for (int64_t i = b; i < e; i++, iter_next(&it))
        st_f(d, td, it.off[0], ql_unary_f32(j->op, ld_f(s, tsrc, it.off[1])));
}

static ql_status cpu_unary(ql_unary_op op, ql_tensor *dst, const ql_tensor *src)
{
    job j = { .dst = dst, .src = src, .op = op };
    ql_parallel_for(ql_tensor_numel(dst), GRAIN, unary_range, &j);
    return QL_OK;
}

static void binary_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    iter it;
    const ql_tensor *ts[3] = { j->dst, j->src, j->b };
    iter_init(&it, 3, ts, b);
    void *d = j->dst->storage->data;
    const void *pa = j->src->storage->data, *pb = j->b->storage->data;
    ql_dtype td = j->dst->dtype, ta = j->src->dtype, tb = j->b->dtype;
    int fl = is_float(ta) || is_float(tb) || j->op == QL_DIV;
    if (td == QL_F32 && ta == QL_F32 && tb == QL_F32) {
        float *D = d; const float *A = pa, *B = pb;
        for (int64_t i = b; i < e; i++, iter_next(&it)) D[it.off[0]] = ql_binary_f32(j->op, A[it.off[1]], B[it.off[2]]);
    } else if (fl) {
        for (int64_t i = b; i < e; i++, iter_next(&it))
            st_f(d, td, it.off[0], ql_binary_f32(j->op, ld_f(pa, ta, it.off[1]), ld_f(pb, tb, it.off[2])));
    } else {
        for (int64_t i = b; i < e; i++, iter_next(&it))
            st_i(d, td, it.off[0], ql_binary_i64(j->op, ld_i(pa, ta, it.off[1]), ld_i(pb, tb, it.off[2])));
    }
}

static ql_status cpu_binary(ql_binary_op op, ql_tensor *dst, const ql_tensor *a, const ql_tensor *b)
{
    if (op == QL_DIV && !is_float(a->dtype) && !is_float(b->dtype) && !is_float(dst->dtype))
        return ql_fail(QL_EINVAL, "integer division: convert to a float dtype first");
    job j = { .dst = dst, .src = a, .b = b, .op = op };
    ql_parallel_for(ql_tensor_numel(dst), GRAIN, binary_range, &j);
    return QL_OK;
}

/* ---------------------------------------------------------------- reduce, softmax */

static void reduce_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    const ql_tensor *src = j->src;
    ql_tensor *dst = j->dst;
    int dim = (int)j->v;
    int64_t n = src->shape[dim], sstride = src->stride[dim];
    /* iterate over dst elements; each walks src along dim */
    iter it;
    const ql_tensor *ts[1] = { dst };
    iter_init(&it, 1, ts, b);
    for (int64_t o = b; o < e; o++, iter_next(&it)) {
        int64_t soff = src->offset;
        for (int d = 0; d < src->ndim; d++) if (d != dim) soff += it.idx[d] * src->stride[d];
        const void *sb = src->storage->data;
        int fl = is_float(src->dtype);
        if (j->op == QL_SUM || j->op == QL_MEAN) {
            if (fl || j->op == QL_MEAN) {
                double acc = 0;
                for (int64_t k = 0; k < n; k++) acc += fl ? ld_f(sb, src->dtype, soff + k * sstride) : (double)ld_i(sb, src->dtype, soff + k * sstride);
                if (j->op == QL_MEAN) acc = n ? acc / (double)n : NAN;
                st_f(dst->storage->data, dst->dtype, it.off[0], (float)acc);
            } else {
                int64_t acc = 0;
                for (int64_t k = 0; k < n; k++) acc += ld_i(sb, src->dtype, soff + k * sstride);
                st_i(dst->storage->data, dst->dtype, it.off[0], acc);
            }
        } else {
            int64_t best = 0;
            int want_max = j->op != QL_MIN;
            if (fl) {
                float bv = ld_f(sb, src->dtype, soff);
                for (int64_t k = 1; k < n && bv == bv; k++) {
                    float x = ld_f(sb, src->dtype, soff + k * sstride);
                    if (x != x || (want_max ? x > bv : x < bv)) { bv = x; best = k; }
                }
                if (j->op == QL_ARGMAX) st_i(dst->storage->data, dst->dtype, it.off[0], best);
                else st_f(dst->storage->data, dst->dtype, it.off[0], bv);
            } else {
                int64_t bv = ld_i(sb, src->dtype, soff);
                for (int64_t k = 1; k < n; k++) {
                    int64_t x = ld_i(sb, src->dtype, soff + k * sstride);
                    if (want_max ? x > bv : x < bv) { bv = x; best = k; }
                }
                st_i(dst->storage->data, dst->dtype, it.off[0], j->op == QL_ARGMAX ? best : bv);
            }
        }
    }
}

static ql_status cpu_reduce(ql_reduce_op op, ql_tensor *dst, const ql_tensor *src, int dim)
{
    job j = { .dst = dst, .src = src, .op = op, .v = dim };
    int64_t grain = src->shape[dim] > 0 ? GRAIN / src->shape[dim] + 1 : GRAIN;
    ql_parallel_for(ql_tensor_numel(dst), grain, reduce_range, &j);
    return QL_OK;
}

static void softmax_range(void *arg, int64_t b, int64_t e)
{
    job *j = arg;
    const ql_tensor *src = j->src;
    ql_tensor *dst = j->dst;
    int64_t n = src->ndim ? src->shape[src->ndim - 1] : 1;
    const void *sb = ql_tensor_data(src);
    void *db = ql_tensor_data(dst);
    float *row = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!row) { __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED); return; }
    for (int64_t r = b; r < e; r++) {
        float mx = -INFINITY;
        for (int64_t k = 0; k < n; k++) { row[k] = ld_f(sb, src->dtype, r * n + k); if (row[k] > mx) mx = row[k]; }
        double sum = 0;
        for (int64_t k = 0; k < n; k++) { row[k] = expf(row[k] - mx); sum += row[k]; }
        float inv = (float)(1.0 / sum);
        for (int64_t k = 0; k < n; k++) st_f(db, dst->dtype, r * n + k, row[k] * inv);
    }
    free(row);
}

static ql_status cpu_softmax(ql_tensor *dst, const ql_tensor *src)
{
    int64_t n = src->ndim ? src->shape[src->ndim - 1] : 1;
    int64_t rows = n ? ql_tensor_numel(src) / n : 0;
    job j = { .dst = dst, .src = src };
    ql_parallel_for(rows, GRAIN / (n + 1) + 1, softmax_range, &j);
    if (j.failed) return ql_fail(QL_ENOMEM, "softmax: out of memory for a row of %lld values", (long long)n);
    return QL_OK;
}

/* ---------------------------------------------------------------- matmul */

/* f32 copy of a [rows, cols] slice with arbitrary strides, row-major */
static float *f32_matrix(const ql_tensor *t, int64_t off, int64_t rows, int64_t cols, int64_t rs, int64_t cs)
{
    float *m = malloc((size_t)(rows * cols > 0 ? rows * cols : 1) * sizeof(float));
    if (!m) return NULL;
    const void *b = t->storage->data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) m[r * cols + c] = ld_f(b, t->dtype, off + r * rs + c * cs);
    return m;
}

static ql_status cpu_matmul(ql_tensor *dst, const ql_tensor *a, const ql_tensor *b)
{
    int64_t B = a->shape[0], M = a->shape[1], K = a->shape[2], N = b->shape[2];
    for (int64_t bi = 0; bi < B; bi++) {
        int64_t aoff = a->offset + bi * a->stride[0], boff = b->offset + bi * b->stride[0];
        float *tmpA = NULL, *tmpB = NULL, *tmpC = NULL;
        const float *pa, *pb;
        int ta = 0, tb = 0;
        int64_t lda, ldb;
        /* A: use in place when f32 with one unit stride, else an f32 copy */
        if (a->dtype == QL_F32 && a->stride[2] == 1 && a->stride[1] >= (K > 1 ? K : 1)) {
            pa = (const float *)a->storage->data + aoff; lda = a->stride[1];
        } else if (a->dtype == QL_F32 && a->stride[1] == 1 && a->stride[2] >= (M > 1 ? M : 1)) {
            pa = (const float *)a->storage->data + aoff; lda = a->stride[2]; ta = 1;
        } else {
            tmpA = f32_matrix(a, aoff, M, K, a->stride[1], a->stride[2]);
            if (!tmpA) return ql_fail(QL_ENOMEM, "matmul: out of host memory");
            pa = tmpA; lda = K > 0 ? K : 1;
        }
        if (b->dtype == QL_F32 && b->stride[2] == 1 && b->stride[1] >= (N > 1 ? N : 1)) {
            pb = (const float *)b->storage->data + boff; ldb = b->stride[1];
        } else if (b->dtype == QL_F32 && b->stride[1] == 1 && b->stride[2] >= (K > 1 ? K : 1)) {
            pb = (const float *)b->storage->data + boff; ldb = b->stride[2]; tb = 1;
        } else {
            tmpB = f32_matrix(b, boff, K, N, b->stride[1], b->stride[2]);
            if (!tmpB) { free(tmpA); return ql_fail(QL_ENOMEM, "matmul: out of host memory"); }
            pb = tmpB; ldb = N > 0 ? N : 1;
        }
        float *pc;
        if (dst->dtype == QL_F32) pc = (float *)ql_tensor_data(dst) + bi * M * N;
        else {
            tmpC = malloc((size_t)(M * N > 0 ? M * N : 1) * sizeof(float));
            if (!tmpC) { free(tmpA); free(tmpB); return ql_fail(QL_ENOMEM, "matmul: out of host memory"); }
            pc = tmpC;
        }
        if (M && N) {
            if (K == 0) memset(pc, 0, (size_t)(M * N) * sizeof(float));
            else cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                             (int)M, (int)N, (int)K, 1.0f, pa, (int)lda, pb, (int)ldb, 0.0f, pc, (int)(N));
        }
        if (tmpC) {
            void *db = ql_tensor_data(dst);
            for (int64_t i = 0; i < M * N; i++) st_f(db, dst->dtype, bi * M * N + i, tmpC[i]);
        }
        free(tmpA); free(tmpB); free(tmpC);
    }
    return QL_OK;
}

void ql_cpu_matmul_ref(float *c, const float *a, const float *b, int64_t M, int64_t K, int64_t N)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (double)a[i * K + k] * b[k * N + j];
            c[i * N + j] = (float)acc;
        }
}

const ql_backend ql_cpu_backend = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_memcpy,
    .from_host = cpu_memcpy,
    .sync = cpu_sync,
    .mem_info = cpu_mem_info,
    .fill = cpu_fill,
    .arange = cpu_arange,
    .rand = cpu_rand,
    .copy = cpu_copy,
    .unary = cpu_unary,
    .binary = cpu_binary,
    .reduce = cpu_reduce,
    .softmax = cpu_softmax,
    .matmul = cpu_matmul,
    .nf4_dequantize = ql_cpu_nf4_dequantize,
    .nf4_quantize = ql_cpu_nf4_quantize,
};
