/*
 * tensor.c — tensor lifetime, views, and the one place where ops are checked
 * and dispatched to a backend (backend.h). Memory in use is counted here per
 * device, around every backend allocation.
 */
#include "tensor.h"
#include "backend.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- devices */

ql_status ql_device_parse(const char *s, ql_device *out)
{
    if (strcmp(s, "cpu") == 0) { *out = ql_cpu(); return QL_OK; }
    if (strncmp(s, "cuda", 4) == 0) {
        if (s[4] == 0) { *out = ql_cuda(0); return QL_OK; }
        if (s[4] == ':') {
            char *end;
            long i = strtol(s + 5, &end, 10);
            if (*end == 0 && end != s + 5 && i >= 0 && i < 64) { *out = ql_cuda((int)i); return QL_OK; }
        }
    }
    return ql_fail(QL_EINVAL, "unknown device '%s': use \"cpu\", \"cuda\" or \"cuda:N\"", s);
}

void ql_device_str(ql_device d, char *buf, size_t cap)
{
    if (d.type == QL_DEV_CPU) snprintf(buf, cap, "cpu");
    else snprintf(buf, cap, "cuda:%d", d.index);
}

const ql_backend *ql_backend_for(ql_device dev)
{
    if (dev.type == QL_DEV_CPU) return &ql_cpu_backend;
#ifdef QL_CUDA
    int n = ql_cuda_backend.device_count();
    if (n <= 0) {
        ql_fail(QL_ENODEV, "no usable CUDA GPU on this machine: run `qlora doctor` to see why, "
                           "or use device \"cpu\"");
        return NULL;
    }
    if (dev.index >= n) {
        ql_fail(QL_ENODEV, "cuda:%d does not exist: this machine has %d GPU%s (cuda:0..cuda:%d)",
                dev.index, n, n == 1 ? "" : "s", n - 1);
        return NULL;
    }
    return &ql_cuda_backend;
#else
    ql_fail(QL_ENODEV, "this qlora was built without CUDA: rebuild with the CUDA Toolkit 12.8+ "
                       "installed (./setup.sh finds nvcc) or use device \"cpu\"");
    return NULL;
#endif
}

/* ---------------------------------------------------------------- memory accounting */

#define QL_NSLOTS 17
static _Atomic int64_t mem_in_use[QL_NSLOTS], mem_peak[QL_NSLOTS], mem_allocs[QL_NSLOTS];

static int slot_of(ql_device d) { return d.type == QL_DEV_CPU ? 0 : 1 + (d.index % (QL_NSLOTS - 1)); }

void ql_memory_count(ql_device d, int64_t bytes)
{
    int s = slot_of(d);
    int64_t now = atomic_fetch_add(&mem_in_use[s], bytes) + bytes;
    atomic_fetch_add(&mem_allocs[s], bytes > 0 ? 1 : -1);
    int64_t p = atomic_load(&mem_peak[s]);
    while (now > p && !atomic_compare_exchange_weak(&mem_peak[s], &p, now)) {}
}

ql_mem_stats ql_memory(ql_device dev)
{
    int s = slot_of(dev);
    ql_mem_stats m = { atomic_load(&mem_in_use[s]), atomic_load(&mem_peak[s]), atomic_load(&mem_allocs[s]) };
    return m;
}

void ql_memory_reset_peak(ql_device dev) { int s = slot_of(dev); atomic_store(&mem_peak[s], atomic_load(&mem_in_use[s])); }

/* ---------------------------------------------------------------- storage */

static ql_storage *storage_new(ql_device dev, size_t nbytes)
{
    const ql_backend *be = ql_backend_for(dev);
    if (!be) return NULL;
    ql_storage *s = calloc(1, sizeof *s);
    if (!s) { ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
    s->refcount = 1;
    s->device = dev;
    s->nbytes = nbytes;
    s->data = be->alloc(dev.index, nbytes ? nbytes : 1);
    if (!s->data) { free(s); return NULL; }
    ql_memory_count(dev, (int64_t)nbytes);
    return s;
}

static void storage_release(ql_storage *s)
{
    if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    if (s->release) s->release(s);
    else {
        const ql_backend *be = s->device.type == QL_DEV_CPU ? &ql_cpu_backend : ql_backend_for(s->device);
        if (be) be->free(s->device.index, s->data);
        ql_memory_count(s->device, -(int64_t)s->nbytes);
    }
    free(s);
}

/* ---------------------------------------------------------------- tensors */

static void set_contiguous_strides(ql_tensor *t)
{
    int64_t st = 1;
    for (int d = t->ndim - 1; d >= 0; d--) { t->stride[d] = st; st *= t->shape[d]; }
}

static ql_status check_shape(int ndim, const int64_t *shape, int64_t *numel)
{
    if (ndim < 0 || ndim > QL_MAXDIM)
        return ql_fail(QL_EINVAL, "a tensor has 0 to %d dimensions, not %d", QL_MAXDIM, ndim);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return ql_fail(QL_EINVAL, "negative size %lld in dimension %d", (long long)shape[d], d);
        if (shape[d] && n > INT64_MAX / 16 / shape[d])
            return ql_fail(QL_EINVAL, "tensor too large (overflows 64-bit sizes)");
        n *= shape[d];
    }
    *numel = n;
    return QL_OK;
}

static ql_tensor *tensor_header(ql_dtype dtype, int ndim, const int64_t *shape)
{
    ql_tensor *t = calloc(1, sizeof *t);
    if (!t) { ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
    t->refcount = 1;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    set_contiguous_strides(t);
    return t;
}

ql_tensor *ql_tensor_new(ql_dtype dtype, int ndim, const int64_t *shape, ql_device dev)
{
    int64_t n;
    if ((unsigned)dtype >= QL_NDTYPES) { ql_fail(QL_EINVAL, "bad dtype %d", (int)dtype); return NULL; }
    if (check_shape(ndim, shape, &n) != QL_OK) return NULL;
    ql_tensor *t = tensor_header(dtype, ndim, shape);
    if (!t) return NULL;
    t->storage = storage_new(dev, (size_t)ql_dtype_bytes(dtype, n));
    if (!t->storage) { free(t); return NULL; }
    return t;
}

static void borrowed_release(ql_storage *s) { (void)s; }

ql_tensor *ql_tensor_wrap(ql_dtype dtype, int ndim, const int64_t *shape, void *data, size_t nbytes,
                          void (*release)(ql_storage *), void *owner)
{
    int64_t n;
    if (check_shape(ndim, shape, &n) != QL_OK) return NULL;
    if ((size_t)ql_dtype_bytes(dtype, n) > nbytes) {
        ql_fail(QL_EINVAL, "wrap: %lld bytes given for %lld elements of %s",
                (long long)nbytes, (long long)n, ql_dtype_name(dtype));
        return NULL;
    }
    ql_tensor *t = tensor_header(dtype, ndim, shape);
    ql_storage *s = calloc(1, sizeof *s);
    if (!t || !s) { free(t); free(s); ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
    s->refcount = 1; s->device = ql_cpu(); s->data = data; s->nbytes = nbytes;
    /* borrowed memory (no release given) must never go back to the allocator */
    s->release = release ? release : borrowed_release;
    s->owner = owner;
    t->storage = s;
    return t;
}

static void quant_release(ql_quant *q)
{
    if (!q || __atomic_sub_fetch(&q->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    ql_tensor_release(q->absmax);
    ql_tensor_release(q->nested_absmax);
    ql_tensor_release(q->nested_code);
    free(q);
}

ql_tensor *ql_tensor_retain(ql_tensor *t)
{
    if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL);
    return t;
}

void ql_tensor_release(ql_tensor *t)
{
    if (!t || __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    storage_release(t->storage);
    quant_release(t->quant);
    free(t);
}

int64_t ql_tensor_numel(const ql_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

int ql_tensor_is_contiguous(const ql_tensor *t)
{
    int64_t st = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != st) return 0;
        st *= t->shape[d];
    }
    return 1;
}

void *ql_tensor_data(const ql_tensor *t)
{
    return (char *)t->storage->data + ql_dtype_bytes(t->dtype, t->offset);
}

size_t ql_tensor_nbytes(const ql_tensor *t) { return (size_t)ql_dtype_bytes(t->dtype, ql_tensor_numel(t)); }

int ql_shape_eq(const ql_tensor *a, const ql_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++) if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

void ql_shape_str(const ql_tensor *t, char *buf, size_t cap)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int d = 0; d < t->ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* a view header sharing t's storage */
static ql_tensor *view_of(ql_tensor *t)
{
    ql_tensor *v = malloc(sizeof *v);
    if (!v) { ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
    *v = *t;
    v->refcount = 1;
    __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_ACQ_REL);
    if (v->quant) __atomic_add_fetch(&v->quant->refcount, 1, __ATOMIC_ACQ_REL);
    return v;
}

static ql_status no_nf4_view(const ql_tensor *t, const char *what)
{
    if (t->dtype == QL_NF4)
        return ql_fail(QL_EUNSUPPORTED, "%s of an nf4 tensor: dequantize first with :to(\"bf16\") or :to(\"f32\")", what);
    return QL_OK;
}

/* ---------------------------------------------------------------- creation */

ql_tensor *ql_tensor_full(ql_dtype dtype, int ndim, const int64_t *shape, double value, ql_device dev)
{
    if (dtype == QL_NF4) { ql_fail(QL_EINVAL, "full: nf4 tensors come from quantizing, not from a value"); return NULL; }
    ql_tensor *t = ql_tensor_new(dtype, ndim, shape, dev);
    if (!t) return NULL;
    if (ql_tensor_fill_(t, value) != QL_OK) { ql_tensor_release(t); return NULL; }
    return t;
}

ql_status ql_tensor_fill_(ql_tensor *dst, double value)
{
    QL_TRY(no_nf4_view(dst, "fill"));
    const ql_backend *be = ql_backend_for(ql_tensor_device(dst));
    if (!be) return QL_ENODEV;
    return be->fill(dst, value);
}

ql_tensor *ql_tensor_arange(double start, double stop, double step, ql_dtype dtype, ql_device dev)
{
    if (step == 0 || !isfinite(start) || !isfinite(stop) || !isfinite(step)) {
        ql_fail(QL_EINVAL, "arange: step must be non-zero and bounds finite");
        return NULL;
    }
    double cnt = ceil((stop - start) / step);
    int64_t n = cnt > 0 ? (int64_t)cnt : 0;
    ql_tensor *t = ql_tensor_new(dtype, 1, &n, dev);
    if (!t) return NULL;
    const ql_backend *be = ql_backend_for(dev);
    if (n && be->arange(t, start, step) != QL_OK) { ql_tensor_release(t); return NULL; }
    return t;
}

ql_tensor *ql_tensor_rand(ql_dtype dtype, int ndim, const int64_t *shape, int normal,
                          uint64_t seed, uint64_t stream, ql_device dev)
{
    if (!ql_dtype_info_of(dtype) || !ql_dtype_info_of(dtype)->is_float || dtype == QL_NF4) {
        ql_fail(QL_EINVAL, "rand/randn make floating-point tensors (f32, bf16, f16), not %s", ql_dtype_name(dtype));
        return NULL;
    }
    ql_tensor *t = ql_tensor_new(dtype, ndim, shape, dev);
    if (!t) return NULL;
    const ql_backend *be = ql_backend_for(dev);
    if (ql_tensor_numel(t) && be->rand(t, normal, seed, stream) != QL_OK) { ql_tensor_release(t); return NULL; }
    return t;
}

ql_tensor *ql_tensor_from_host(ql_dtype dtype, int ndim, const int64_t *shape, const void *src,
                               ql_dtype src_dtype, ql_device dev)
{
    int64_t n;
    if (check_shape(ndim, shape, &n) != QL_OK) return NULL;
    if (src_dtype == QL_NF4 || dtype == QL_NF4) {
        ql_fail(QL_EINVAL, "from_host: nf4 data is built with the nf4 module");
        return NULL;
    }
    ql_tensor *tmp = ql_tensor_wrap(src_dtype, ndim, shape, (void *)src, (size_t)ql_dtype_bytes(src_dtype, n), NULL, NULL);
    if (!tmp) return NULL;
    ql_tensor *t = ql_tensor_to(tmp, dtype, dev);
    ql_tensor_release(tmp);
    return t;
}

double ql_tensor_get_flat(const ql_tensor *t, int64_t i)
{
    const char *base = t->storage->data;
    int64_t off = ql_offset_of(t, i);
    switch (t->dtype) {
    case QL_F32: return ((const float *)base)[off];
    case QL_F16: return ql_f16_to_f32(((const uint16_t *)base)[off]);
    case QL_BF16: return ql_bf16_to_f32(((const uint16_t *)base)[off]);
    case QL_I32: return ((const int32_t *)base)[off];
    case QL_I64: return (double)((const int64_t *)base)[off];
    case QL_U8: return ((const uint8_t *)base)[off];
    default: return NAN;
    }
}

/* ---------------------------------------------------------------- views */

ql_tensor *ql_tensor_view(ql_tensor *t, int ndim, const int64_t *shape_in)
{
    int64_t shape[QL_MAXDIM], numel = ql_tensor_numel(t), known = 1;
    int infer = -1;
    if (ndim < 0 || ndim > QL_MAXDIM) { ql_fail(QL_EINVAL, "view: 0 to %d dimensions", QL_MAXDIM); return NULL; }
    for (int d = 0; d < ndim; d++) {
        shape[d] = shape_in[d];
        if (shape[d] == -1) {
            if (infer >= 0) { ql_fail(QL_EINVAL, "view: only one dimension can be -1"); return NULL; }
            infer = d;
        } else if (shape[d] < 0) { ql_fail(QL_EINVAL, "view: bad size %lld", (long long)shape[d]); return NULL; }
        else known *= shape[d];
    }
    if (infer >= 0) shape[infer] = known ? numel / known : 0;
    int64_t n2 = 1;
    for (int d = 0; d < ndim; d++) n2 *= shape[d];
    if (n2 != numel || (infer >= 0 && known && numel % known)) {
        char a[128];
        ql_shape_str(t, a, sizeof a);
        ql_fail(QL_EINVAL, "view: cannot view %s (%lld elements) with the requested shape (%lld elements)",
                a, (long long)numel, (long long)n2);
        return NULL;
    }
    if (t->dtype == QL_NF4 && !ql_tensor_is_contiguous(t)) { no_nf4_view(t, "view"); return NULL; }
    /* Compute strides for the new shape over t's layout (torch's rule): walk
       chunks of t's dims that are mutually contiguous. */
    int64_t newstride[QL_MAXDIM];
    if (ql_tensor_is_contiguous(t) || numel == 0) {
        int64_t st = 1;
        for (int d = ndim - 1; d >= 0; d--) { newstride[d] = st; st *= shape[d]; }
    } else {
        int view_d = ndim - 1;
        int64_t chunk_base_stride = t->ndim ? t->stride[t->ndim - 1] : 1;
        int64_t tensor_numel = 1, view_numel = 1;
        for (int d = t->ndim - 1; d >= 0; d--) {
            tensor_numel *= t->shape[d];
            if (d == 0 || (t->shape[d - 1] != 1 && t->stride[d - 1] != tensor_numel * chunk_base_stride)) {
                while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                    newstride[view_d] = view_numel * chunk_base_stride;
                    view_numel *= shape[view_d];
                    view_d--;
                }
                if (view_numel != tensor_numel) {
                    ql_fail(QL_EINVAL, "view: the tensor's strides do not allow this shape; "
                                       "call :contiguous() first or use reshape");
                    return NULL;
                }
                if (d > 0) { chunk_base_stride = t->stride[d - 1]; tensor_numel = 1; view_numel = 1; }
            }
        }
        if (view_d != -1) { ql_fail(QL_EINVAL, "view: incompatible shape; use reshape"); return NULL; }
    }
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    v->ndim = ndim;
    for (int d = 0; d < ndim; d++) { v->shape[d] = shape[d]; v->stride[d] = newstride[d]; }
    return v;
}

ql_tensor *ql_tensor_reshape(ql_tensor *t, int ndim, const int64_t *shape)
{
    ql_tensor *v = ql_tensor_view(t, ndim, shape);
    if (v) return v;
    ql_clear_error();
    ql_tensor *c = ql_tensor_contiguous(t);
    if (!c) return NULL;
    v = ql_tensor_view(c, ndim, shape);
    ql_tensor_release(c);
    return v;
}

static int norm_dim(const ql_tensor *t, int d, const char *what)
{
    int nd = t->ndim;
    if (d < 0) d += nd;
    if (d < 0 || d >= nd) {
        ql_fail(QL_EINVAL, "%s: dimension out of range (tensor has %d dimensions)", what, nd);
        return -1;
    }
    return d;
}

ql_tensor *ql_tensor_transpose(ql_tensor *t, int d0, int d1)
{
    if (no_nf4_view(t, "transpose")) return NULL;
    if ((d0 = norm_dim(t, d0, "transpose")) < 0 || (d1 = norm_dim(t, d1, "transpose")) < 0) return NULL;
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    int64_t s = v->shape[d0]; v->shape[d0] = v->shape[d1]; v->shape[d1] = s;
    s = v->stride[d0]; v->stride[d0] = v->stride[d1]; v->stride[d1] = s;
    return v;
}

ql_tensor *ql_tensor_permute(ql_tensor *t, const int *perm)
{
    if (no_nf4_view(t, "permute")) return NULL;
    int seen[QL_MAXDIM] = { 0 };
    for (int d = 0; d < t->ndim; d++) {
        int p = perm[d] < 0 ? perm[d] + t->ndim : perm[d];
        if (p < 0 || p >= t->ndim || seen[p]) {
            ql_fail(QL_EINVAL, "permute: the order must name each of the %d dimensions once", t->ndim);
            return NULL;
        }
        seen[p] = 1;
    }
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    for (int d = 0; d < t->ndim; d++) {
        int p = perm[d] < 0 ? perm[d] + t->ndim : perm[d];
        v->shape[d] = t->shape[p];
        v->stride[d] = t->stride[p];
    }
    return v;
}

ql_tensor *ql_tensor_slice(ql_tensor *t, int dim, int64_t start, int64_t stop, int64_t step)
{
    if (no_nf4_view(t, "slice")) return NULL;
    if ((dim = norm_dim(t, dim, "slice")) < 0) return NULL;
    if (step <= 0) { ql_fail(QL_EINVAL, "slice: step must be positive"); return NULL; }
    int64_t n = t->shape[dim];
    if (start < 0) start += n;
    if (stop < 0) stop += n;
    if (start < 0) start = 0;
    if (stop > n) stop = n;
    if (start > n) start = n;
    int64_t len = stop > start ? (stop - start + step - 1) / step : 0;
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    v->offset += start * t->stride[dim];
    v->shape[dim] = len;
    v->stride[dim] = t->stride[dim] * step;
    return v;
}

ql_tensor *ql_tensor_select(ql_tensor *t, int dim, int64_t i)
{
    if (no_nf4_view(t, "select")) return NULL;
    if ((dim = norm_dim(t, dim, "select")) < 0) return NULL;
    int64_t n = t->shape[dim];
    if (i < 0) i += n;
    if (i < 0 || i >= n) {
        ql_fail(QL_EINVAL, "index %lld is out of range for dimension %d of size %lld", (long long)i, dim, (long long)n);
        return NULL;
    }
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    v->offset += i * t->stride[dim];
    for (int d = dim; d < t->ndim - 1; d++) { v->shape[d] = t->shape[d + 1]; v->stride[d] = t->stride[d + 1]; }
    v->ndim--;
    return v;
}

ql_tensor *ql_tensor_expand(ql_tensor *t, int ndim, const int64_t *shape)
{
    if (no_nf4_view(t, "expand")) return NULL;
    if (ndim < t->ndim || ndim > QL_MAXDIM) {
        ql_fail(QL_EINVAL, "expand: cannot broadcast %d dimensions to %d", t->ndim, ndim);
        return NULL;
    }
    ql_tensor *v = view_of(t);
    if (!v) return NULL;
    int shift = ndim - t->ndim;
    for (int d = ndim - 1; d >= 0; d--) {
        int sd = d - shift;
        int64_t have = sd >= 0 ? t->shape[sd] : 1;
        if (have == shape[d]) { v->shape[d] = have; v->stride[d] = sd >= 0 ? t->stride[sd] : 0; }
        else if (have == 1) { v->shape[d] = shape[d]; v->stride[d] = 0; }
        else {
            char a[128];
            ql_shape_str(t, a, sizeof a);
            ql_fail(QL_EINVAL, "cannot broadcast %s: dimension %d has size %lld, needs %lld or 1",
                    a, d, (long long)have, (long long)shape[d]);
            ql_tensor_release(v);
            return NULL;
        }
    }
    v->ndim = ndim;
    return v;
}

ql_tensor *ql_tensor_contiguous(ql_tensor *t)
{
    if (ql_tensor_is_contiguous(t)) return ql_tensor_retain(t);
    ql_tensor *c = ql_tensor_new(t->dtype, t->ndim, t->shape, ql_tensor_device(t));
    if (!c) return NULL;
    if (ql_tensor_copy_(c, t) != QL_OK) { ql_tensor_release(c); return NULL; }
    return c;
}

/* ---------------------------------------------------------------- copies */

static ql_tensor *nf4_quantize_to(ql_tensor *src, ql_device dev);
static ql_tensor *nf4_dequantize_to(ql_tensor *src, ql_dtype dtype, ql_device dev);

/* raw contiguous transfer of a whole storage range between devices */
static ql_status transfer(ql_tensor *dst, ql_tensor *src)
{
    ql_device sd = ql_tensor_device(src), dd = ql_tensor_device(dst);
    size_t n = ql_tensor_nbytes(src);
    if (sd.type == QL_DEV_CPU && dd.type == QL_DEV_CPU) { memcpy(ql_tensor_data(dst), ql_tensor_data(src), n); return QL_OK; }
    if (sd.type == QL_DEV_CPU) {
        const ql_backend *be = ql_backend_for(dd);
        return be ? be->from_host(dd.index, ql_tensor_data(dst), ql_tensor_data(src), n) : QL_ENODEV;
    }
    if (dd.type == QL_DEV_CPU) {
        const ql_backend *be = ql_backend_for(sd);
        return be ? be->to_host(sd.index, ql_tensor_data(dst), ql_tensor_data(src), n) : QL_ENODEV;
    }
    /* GPU to GPU through the host: simple and always correct */
    ql_tensor *h = ql_tensor_new(src->dtype, src->ndim, src->shape, ql_cpu());
    if (!h) return QL_ENOMEM;
    ql_status s = transfer(h, src);
    if (s == QL_OK) s = transfer(dst, h);
    ql_tensor_release(h);
    return s;
}

ql_status ql_tensor_copy_(ql_tensor *dst, ql_tensor *src)
{
    if (dst->dtype == QL_NF4 || src->dtype == QL_NF4)
        return ql_fail(QL_EUNSUPPORTED, "copy into or from an nf4 tensor: use :to(\"nf4\") or :to(\"bf16\")");
    ql_tensor *s = ql_shape_eq(dst, src) ? ql_tensor_retain(src) : ql_tensor_expand(src, dst->ndim, dst->shape);
    if (!s) return ql_fail_context(QL_EINVAL, "copy: ");
    ql_device sd = ql_tensor_device(s), dd = ql_tensor_device(dst);
    ql_status st;
    if (ql_device_eq(sd, dd)) {
        const ql_backend *be = ql_backend_for(dd);
        st = be ? be->copy(dst, s) : QL_ENODEV;
    } else if (dst->dtype == s->dtype && ql_tensor_is_contiguous(dst) && ql_tensor_is_contiguous(s)) {
        /* one transfer straight into dst: a staging copy on the destination would be a second
           tensor's worth of device memory (1 GiB for a 7B's lm_head), left in the CUDA cache */
        st = transfer(dst, s);
    } else {
        /* make a contiguous copy in src's dtype on src's device, move it, then cast on dst's device */
        ql_tensor *c = ql_tensor_new(s->dtype, s->ndim, s->shape, sd);
        ql_tensor *m = c ? ql_tensor_new(s->dtype, s->ndim, s->shape, dd) : NULL;
        st = c && m ? QL_OK : QL_ENOMEM;
        if (st == QL_OK) st = ql_backend_for(sd)->copy(c, s);
        if (st == QL_OK) st = transfer(m, c);
        if (st == QL_OK) st = ql_backend_for(dd)->copy(dst, m);
        ql_tensor_release(c);
        ql_tensor_release(m);
    }
    ql_tensor_release(s);
    return st;
}

ql_tensor *ql_tensor_to(ql_tensor *t, ql_dtype dtype, ql_device dev)
{
    if (dtype == QL_NF4 && t->dtype == QL_NF4) {
        if (ql_device_eq(ql_tensor_device(t), dev)) return ql_tensor_retain(t);
        return nf4_dequantize_to(t, QL_NF4, dev);   /* moves packed data and state */
    }
    if (dtype == QL_NF4) return nf4_quantize_to(t, dev);
    if (t->dtype == QL_NF4) return nf4_dequantize_to(t, dtype, dev);
    ql_tensor *r = ql_tensor_new(dtype, t->ndim, t->shape, dev);
    if (!r) return NULL;
    if (ql_tensor_copy_(r, t) != QL_OK) { ql_tensor_release(r); return NULL; }
    return r;
}

/* ---------------------------------------------------------------- NF4 */

static ql_tensor *move_to(ql_tensor *t, ql_device dev)
{
    if (!t) return NULL;
    if (ql_device_eq(ql_tensor_device(t), dev)) return ql_tensor_retain(t);
    ql_tensor *r = ql_tensor_new(t->dtype, t->ndim, t->shape, dev);
    if (!r) return NULL;
    ql_tensor *c = ql_tensor_contiguous(t);
    ql_status s = c ? transfer(r, c) : QL_ENOMEM;
    ql_tensor_release(c);
    if (s != QL_OK) { ql_tensor_release(r); return NULL; }
    return r;
}

/* the nf4 tensor src moved to dev, packed data and quant state alike */
static ql_tensor *nf4_move(ql_tensor *src, ql_device dev)
{
    ql_tensor *r = ql_tensor_new(QL_NF4, src->ndim, src->shape, dev);
    ql_quant *q = calloc(1, sizeof *q);
    if (!r || !q) { ql_tensor_release(r); free(q); return NULL; }
    *q = *src->quant;
    q->refcount = 1;
    q->absmax = move_to(src->quant->absmax, dev);
    q->nested_absmax = src->quant->nested_absmax ? move_to(src->quant->nested_absmax, dev) : NULL;
    q->nested_code = src->quant->nested_code ? move_to(src->quant->nested_code, dev) : NULL;
    r->quant = q;
    if (!q->absmax || (src->quant->nested_absmax && !q->nested_absmax) ||
        (src->quant->nested_code && !q->nested_code) || transfer(r, src) != QL_OK) {
        ql_tensor_release(r);
        return NULL;
    }
    return r;
}

static ql_tensor *nf4_dequantize_to(ql_tensor *src, ql_dtype dtype, ql_device dev)
{
    if (!src->quant) { ql_fail(QL_EINVAL, "nf4 tensor without quantization state"); return NULL; }
    if (dtype == QL_NF4) return nf4_move(src, dev);
    if (dtype != QL_F32 && dtype != QL_BF16 && dtype != QL_F16) {
        ql_fail(QL_EINVAL, "nf4 dequantizes to f32, bf16 or f16, not %s", ql_dtype_name(dtype));
        return NULL;
    }
    ql_device sd = ql_tensor_device(src);
    const ql_backend *be = ql_backend_for(sd);
    if (!be) return NULL;
    ql_tensor *r = ql_tensor_new(dtype, src->ndim, src->shape, sd);
    if (!r) return NULL;
    if (be->nf4_dequantize(r, src) != QL_OK) { ql_tensor_release(r); return NULL; }
    if (ql_device_eq(sd, dev)) return r;
    ql_tensor *m = move_to(r, dev);
    ql_tensor_release(r);
    return m;
}

ql_tensor *ql_tensor_quantize_nf4(ql_tensor *src, int blocksize, int double_quant, ql_device dev)
{
    if (src->dtype == QL_NF4) { ql_fail(QL_EINVAL, "the tensor is already nf4"); return NULL; }
    if (!ql_dtype_info_of(src->dtype)->is_float) {
        ql_fail(QL_EINVAL, "nf4 quantizes floating-point weights, not %s", ql_dtype_name(src->dtype));
        return NULL;
    }
    if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1))) {
        ql_fail(QL_EINVAL, "nf4 blocksize must be a power of two from 32 to 4096, not %d", blocksize);
        return NULL;
    }
    /* quantize on the destination device from a contiguous f32 copy there */
    ql_tensor *x = ql_tensor_to(src, QL_F32, dev);
    if (!x) return NULL;
    const ql_backend *be = ql_backend_for(dev);
    ql_tensor *r = be ? ql_tensor_new(QL_NF4, src->ndim, src->shape, dev) : NULL;
    if (!r) { ql_tensor_release(x); return NULL; }
    int64_t n = ql_tensor_numel(src);
    int64_t nblocks = (n + blocksize - 1) / blocksize, nnested = (nblocks + 255) / 256, code_n = 256;
    ql_quant *q = calloc(1, sizeof *q);
    if (!q) { ql_tensor_release(x); ql_tensor_release(r); ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
    q->refcount = 1; q->blocksize = blocksize; q->double_quant = double_quant; q->nested_blocksize = 256;
    q->orig_dtype = src->dtype;
    r->quant = q;
    q->absmax = ql_tensor_new(double_quant ? QL_U8 : QL_F32, 1, &nblocks, dev);
    if (double_quant) {
        q->nested_absmax = ql_tensor_new(QL_F32, 1, &nnested, dev);
        q->nested_code = ql_tensor_new(QL_F32, 1, &code_n, dev);
    }
    if (!q->absmax || (double_quant && (!q->nested_absmax || !q->nested_code)) || be->nf4_quantize(r, x) != QL_OK) {
        ql_tensor_release(x);
        ql_tensor_release(r);
        return NULL;
    }
    ql_tensor_release(x);
    return r;
}

static ql_tensor *nf4_quantize_to(ql_tensor *src, ql_device dev)
{
    return ql_tensor_quantize_nf4(src, 64, 1, dev);
}

/* ---------------------------------------------------------------- math */

static const char *unary_names[QL_NUNARY] = {
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh",
    "sigmoid", "silu", "relu", "gelu", "square", "recip"
};
static const char *binary_names[QL_NBINARY] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"
};
const char *ql_unary_name(ql_unary_op op) { return (unsigned)op < QL_NUNARY ? unary_names[op] : "?"; }
const char *ql_binary_name(ql_binary_op op) { return (unsigned)op < QL_NBINARY ? binary_names[op] : "?"; }

ql_dtype ql_promote(ql_dtype a, ql_dtype b)
{
    if (a == b) return a;
    int fa = ql_dtype_info_of(a)->is_float, fb = ql_dtype_info_of(b)->is_float;
    if (fa && fb) return QL_F32;              /* bf16 with f16 or f32 -> f32 */
    if (fa) return a;
    if (fb) return b;
    if (a == QL_I64 || b == QL_I64) return QL_I64;
    if (a == QL_I32 || b == QL_I32) return QL_I32;
    return QL_U8;
}

static ql_status math_operand(const ql_tensor *t, const char *what)
{
    if (t->dtype == QL_NF4)
        return ql_fail(QL_EUNSUPPORTED, "%s on an nf4 tensor: dequantize first with :to(\"bf16\") or :to(\"f32\")", what);
    return QL_OK;
}

ql_tensor *ql_unary(ql_unary_op op, ql_tensor *a)
{
    if ((unsigned)op >= QL_NUNARY) { ql_fail(QL_EINVAL, "bad unary op"); return NULL; }
    if (math_operand(a, unary_names[op])) return NULL;
    ql_dtype dt = ql_dtype_info_of(a->dtype)->is_float || op == QL_NEG || op == QL_ABS ||
                  op == QL_RELU || op == QL_SQUARE ? a->dtype : QL_F32;
    ql_tensor *r = ql_tensor_new(dt, a->ndim, a->shape, ql_tensor_device(a));
    if (!r) return NULL;
    if (ql_backend_for(ql_tensor_device(a))->unary(op, r, a) != QL_OK) { ql_tensor_release(r); return NULL; }
    return r;
}

static ql_status broadcast_shape(const ql_tensor *a, const ql_tensor *b, int *ndim, int64_t *shape)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int d = 0; d < nd; d++) {
        int da = d - (nd - a->ndim), db = d - (nd - b->ndim);
        int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            char x[128], y[128];
            ql_shape_str(a, x, sizeof x);
            ql_shape_str(b, y, sizeof y);
            return ql_fail(QL_EINVAL, "shapes %s and %s do not broadcast (dimension %d: %lld vs %lld)",
                           x, y, d, (long long)sa, (long long)sb);
        }
        shape[d] = sa == 1 ? sb : sa;
    }
    *ndim = nd;
    return QL_OK;
}

static int devices_match(const ql_tensor *a, const ql_tensor *b, const char *what)
{
    if (ql_device_eq(ql_tensor_device(a), ql_tensor_device(b))) return 1;
    char x[32], y[32];
    ql_device_str(ql_tensor_device(a), x, sizeof x);
    ql_device_str(ql_tensor_device(b), y, sizeof y);
    ql_fail(QL_EINVAL, "%s: operands are on different devices (%s and %s); move one with :to(\"%s\")", what, x, y, x);
    return 0;
}

ql_tensor *ql_binary(ql_binary_op op, ql_tensor *a, ql_tensor *b)
{
    if ((unsigned)op >= QL_NBINARY) { ql_fail(QL_EINVAL, "bad binary op"); return NULL; }
    const char *nm = binary_names[op];
    if (math_operand(a, nm) || math_operand(b, nm) || !devices_match(a, b, nm)) return NULL;
    int nd = 0;
    int64_t shape[QL_MAXDIM];
    if (broadcast_shape(a, b, &nd, shape) != QL_OK) return NULL;
    ql_dtype dt = op >= QL_EQ ? QL_U8 : ql_promote(a->dtype, b->dtype);
    if (op == QL_DIV && !ql_dtype_info_of(dt)->is_float) dt = QL_F32;
    ql_tensor *ea = ql_tensor_expand(a, nd, shape), *eb = ea ? ql_tensor_expand(b, nd, shape) : NULL;
    ql_tensor *r = eb ? ql_tensor_new(dt, nd, shape, ql_tensor_device(a)) : NULL;
    ql_status s = r ? ql_backend_for(ql_tensor_device(a))->binary(op, r, ea, eb) : QL_EINVAL;
    ql_tensor_release(ea);
    ql_tensor_release(eb);
    if (s != QL_OK) { ql_tensor_release(r); return NULL; }
    return r;
}

ql_tensor *ql_binary_scalar(ql_binary_op op, ql_tensor *a, double v, int scalar_first)
{
    /* a 0-d tensor of a's dtype when float (so bf16 + 1 stays bf16), else f32/i64 */
    ql_dtype dt = a->dtype;
    if (!ql_dtype_info_of(dt)->is_float && v != floor(v)) dt = QL_F32;
    if (dt == QL_NF4) { math_operand(a, binary_names[op]); return NULL; }
    ql_tensor *s = ql_tensor_full(dt == QL_BF16 || dt == QL_F16 ? QL_F32 : dt, 0, NULL, v, ql_tensor_device(a));
    if (!s) return NULL;
    ql_tensor *r = scalar_first ? ql_binary(op, s, a) : ql_binary(op, a, s);
    ql_tensor_release(s);
    /* keep half precision results in the tensor's dtype */
    if (r && (a->dtype == QL_BF16 || a->dtype == QL_F16) && r->dtype == QL_F32) {
        ql_tensor *c = ql_tensor_to(r, a->dtype, ql_tensor_device(r));
        ql_tensor_release(r);
        r = c;
    }
    return r;
}

ql_tensor *ql_reduce(ql_reduce_op op, ql_tensor *a, int dim, int keepdim)
{
    static const char *names[] = { "sum", "mean", "max", "min", "argmax" };
    if ((unsigned)op >= QL_NREDUCE) { ql_fail(QL_EINVAL, "bad reduce op"); return NULL; }
    if (math_operand(a, names[op])) return NULL;
    if (dim == QL_ALLDIMS) {
        int64_t n = ql_tensor_numel(a);
        ql_tensor *flat = ql_tensor_reshape(a, 1, &n);
        if (!flat) return NULL;
        ql_tensor *r = ql_reduce(op, flat, 0, 0);
        ql_tensor_release(flat);
        return r;
    }
    if ((dim = norm_dim(a, dim, names[op])) < 0) return NULL;
    if (a->shape[dim] == 0 && op != QL_SUM && op != QL_MEAN) {
        ql_fail(QL_EINVAL, "%s over an empty dimension", names[op]);
        return NULL;
    }
    int64_t shape[QL_MAXDIM];
    for (int d = 0; d < a->ndim; d++) shape[d] = d == dim ? 1 : a->shape[d];
    ql_dtype dt = op == QL_ARGMAX ? QL_I64
                : op == QL_MEAN && !ql_dtype_info_of(a->dtype)->is_float ? QL_F32
                : op == QL_SUM && !ql_dtype_info_of(a->dtype)->is_float ? QL_I64 : a->dtype;
    ql_tensor *r = ql_tensor_new(dt, a->ndim, shape, ql_tensor_device(a));
    if (!r) return NULL;
    if (ql_backend_for(ql_tensor_device(a))->reduce(op, r, a, dim) != QL_OK) { ql_tensor_release(r); return NULL; }
    if (keepdim) return r;
    int64_t sq[QL_MAXDIM];
    int k = 0;
    for (int d = 0; d < a->ndim; d++) if (d != dim) sq[k++] = a->shape[d];
    ql_tensor *v = ql_tensor_view(r, k, sq);
    ql_tensor_release(r);
    return v;
}

ql_tensor *ql_softmax(ql_tensor *a, int dim)
{
    if (math_operand(a, "softmax")) return NULL;
    if ((dim = norm_dim(a, dim, "softmax")) < 0) return NULL;
    if (!ql_dtype_info_of(a->dtype)->is_float) { ql_fail(QL_EINVAL, "softmax needs a floating-point tensor"); return NULL; }
    /* move dim last, make contiguous, run, move back */
    int perm[QL_MAXDIM];
    for (int d = 0, k = 0; d < a->ndim; d++) if (d != dim) perm[k++] = d;
    perm[a->ndim - 1] = dim;
    ql_tensor *p = dim == a->ndim - 1 ? ql_tensor_retain(a) : ql_tensor_permute(a, perm);
    ql_tensor *c = p ? ql_tensor_contiguous(p) : NULL;
    ql_tensor *r = c ? ql_tensor_new(a->dtype, c->ndim, c->shape, ql_tensor_device(a)) : NULL;
    ql_status s = r ? ql_backend_for(ql_tensor_device(a))->softmax(r, c) : QL_ENOMEM;
    ql_tensor_release(p);
    ql_tensor_release(c);
    if (s != QL_OK) { ql_tensor_release(r); return NULL; }
    if (dim == a->ndim - 1) return r;
    int inv[QL_MAXDIM];
    for (int d = 0; d < a->ndim; d++) inv[perm[d]] = d;
    ql_tensor *v = ql_tensor_permute(r, inv);
    ql_tensor_release(r);
    ql_tensor *out = v ? ql_tensor_contiguous(v) : NULL;
    ql_tensor_release(v);
    return out;
}

ql_tensor *ql_matmul(ql_tensor *a, ql_tensor *b)
{
    if (!devices_match(a, b, "matmul")) return NULL;
    if (a->ndim < 1 || b->ndim < 1) { ql_fail(QL_EINVAL, "matmul needs tensors of 1 or more dimensions"); return NULL; }
    ql_tensor *A = NULL, *B = NULL, *r = NULL;
    /* dequantize nf4 operands */
    ql_device dev = ql_tensor_device(a);
    ql_dtype deq = dev.type == QL_DEV_CPU ? QL_F32 : QL_BF16;
    A = a->dtype == QL_NF4 ? ql_tensor_to(a, deq, dev) : ql_tensor_retain(a);
    B = b->dtype == QL_NF4 ? ql_tensor_to(b, deq, dev) : ql_tensor_retain(b);
    if (!A || !B) goto done;
    if (!ql_dtype_info_of(A->dtype)->is_float || !ql_dtype_info_of(B->dtype)->is_float) {
        ql_fail(QL_EINVAL, "matmul needs floating-point tensors (got %s and %s)", ql_dtype_name(A->dtype), ql_dtype_name(B->dtype));
        goto done;
    }
    /* 1-D operands: [K] -> [1, K] and [K] -> [K, 1], squeezed at the end */
    int squeeze_m = A->ndim == 1, squeeze_n = B->ndim == 1;
    int64_t M = squeeze_m ? 1 : A->shape[A->ndim - 2], K = A->shape[A->ndim - 1];
    int64_t K2 = squeeze_n ? B->shape[0] : B->shape[B->ndim - 2], N = squeeze_n ? 1 : B->shape[B->ndim - 1];
    if (K != K2) {
        char x[128], y[128];
        ql_shape_str(a, x, sizeof x);
        ql_shape_str(b, y, sizeof y);
        ql_fail(QL_EINVAL, "matmul: %s @ %s: inner dimensions differ (%lld vs %lld)", x, y, (long long)K, (long long)K2);
        goto done;
    }
    /* broadcast batch dims */
    int bnA = A->ndim > 2 ? A->ndim - 2 : 0, bnB = B->ndim > 2 ? B->ndim - 2 : 0;
    int bn = bnA > bnB ? bnA : bnB;
    int64_t bshape[QL_MAXDIM], batch = 1;
    for (int d = 0; d < bn; d++) {
        int da = d - (bn - bnA), db = d - (bn - bnB);
        int64_t sa = da >= 0 ? A->shape[da] : 1, sb = db >= 0 ? B->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            ql_fail(QL_EINVAL, "matmul: batch dimensions do not broadcast (%lld vs %lld)", (long long)sa, (long long)sb);
            goto done;
        }
        bshape[d] = sa == 1 ? sb : sa;
        batch *= bshape[d];
    }
    /* 3-D operands [batch, M, K] and [batch, K, N] as strided views */
    int64_t sa3[QL_MAXDIM], sb3[QL_MAXDIM];
    for (int d = 0; d < bn; d++) sa3[d] = sb3[d] = bshape[d];
    sa3[bn] = M; sa3[bn + 1] = K;
    sb3[bn] = K; sb3[bn + 1] = N;
    ql_tensor *A2 = NULL, *B2 = NULL;
    {
        int64_t s2[2] = { M, K };
        A2 = squeeze_m ? ql_tensor_view(A, 2, s2) : ql_tensor_retain(A);
        int64_t t2[2] = { K, N };
        B2 = squeeze_n ? ql_tensor_view(B, 2, t2) : ql_tensor_retain(B);
    }
    ql_tensor *EA = A2 ? ql_tensor_expand(A2, bn + 2, sa3) : NULL;
    ql_tensor *EB = B2 ? ql_tensor_expand(B2, bn + 2, sb3) : NULL;
    ql_tensor_release(A2);
    ql_tensor_release(B2);
    ql_tensor *A3 = NULL, *B3 = NULL;
    if (EA && EB) {
        /* collapse batch dims into one; a reshape copies if the batch strides don't merge */
        int64_t a3[3] = { batch, M, K }, b3[3] = { batch, K, N };
        A3 = bn <= 1 ? (bn == 1 ? ql_tensor_retain(EA) : ql_tensor_view(EA, 3, a3)) : ql_tensor_reshape(EA, 3, a3);
        B3 = bn <= 1 ? (bn == 1 ? ql_tensor_retain(EB) : ql_tensor_view(EB, 3, b3)) : ql_tensor_reshape(EB, 3, b3);
    }
    ql_tensor_release(EA);
    ql_tensor_release(EB);
    if (A3 && B3) {
        int64_t r3[3] = { batch, M, N };
        ql_dtype dt = ql_promote(A->dtype, B->dtype);
        ql_tensor *R = ql_tensor_new(dt, 3, r3, dev);
        if (R && ql_backend_for(dev)->matmul(R, A3, B3) == QL_OK) {
            int64_t out[QL_MAXDIM];
            int k = 0;
            for (int d = 0; d < bn; d++) out[k++] = bshape[d];
            if (!squeeze_m) out[k++] = M;
            if (!squeeze_n) out[k++] = N;
            r = ql_tensor_view(R, k, out);
        }
        ql_tensor_release(R);
    }
    ql_tensor_release(A3);
    ql_tensor_release(B3);
done:
    ql_tensor_release(A);
    ql_tensor_release(B);
    return r;
}
