/*
 * backend_cuda.cu — the CUDA backend table (ql_cuda_backend, backend.h):
 * memory, host transfers, and the elementwise ops (fill, arange, rand, copy
 * and casts, unary, binary). Reductions and softmax live in reduce_cuda.cu,
 * matmul in matmul_cublaslt.cu, the device probe in device_cuda.cu.
 *
 * Contract (backend.h): tensor.c has validated shapes, dtypes and devices.
 * Every op makes the tensor's device current, works on the legacy default
 * stream and checks every CUDA call and launch; failures come back as
 * QL_EDEVICE / QL_ENOMEM with the CUDA error string, never an abort.
 * Results must equal the CPU reference bit for bit for fill, arange, rand and
 * copies, and within float rounding for math (f32 arithmetic, no fast-math).
 * Memory accounting is tensor.c's job, not ours.
 *
 * Kernels: one thread per element in a grid-stride loop with 64-bit indices;
 * a contiguous fast path, else the merged strided index of common.cuh.
 */
#include "common.cuh"
extern "C" {
#include "rng.h"
#include "nf4.h"
#include "scalar_ops.h"
}

#define QL_ILP 4   /* elements in flight per thread in the contiguous kernels */

#include <mutex>
#include <stdlib.h>
#include <unordered_map>
#include <vector>

/* ---------------------------------------------------------------- devices */

static std::once_flag g_count_once;
static int g_ndev;                 /* usable devices, 0 on any error */
static int g_sm[QL_MAX_GPUS];

static void count_devices(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { (void)cudaGetLastError(); n = 0; }
    if (n > QL_MAX_GPUS) n = QL_MAX_GPUS;
    for (int i = 0; i < n; i++) {
        int sm = 0;
        if (cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, i) != cudaSuccess) {
            (void)cudaGetLastError();
            sm = 1;
        }
        g_sm[i] = sm > 0 ? sm : 1;
    }
    g_ndev = n;
}

static int cuda_device_count(void)
{
    std::call_once(g_count_once, count_devices);
    return g_ndev;
}

int ql_cuda_sm_count(int dev)
{
    if (dev < 0 || dev >= cuda_device_count()) return 1;
    return g_sm[dev];
}

ql_status ql_cuda_set_device(int dev)
{
    int n = cuda_device_count();
    if (dev < 0 || dev >= n)
        return ql_fail(QL_ENODEV, "cuda:%d does not exist: this machine has %d usable CUDA device%s "
                       "(run `qlora doctor` to see why)", dev, n, n == 1 ? "" : "s");
    QL_CU(cudaSetDevice(dev));
    return QL_OK;
}

/* ---------------------------------------------------------------- memory */

/*
 * A caching allocator: freed blocks go to per-device lists keyed by a rounded
 * size and are handed out again without cudaMalloc/cudaFree (each costs
 * ~0.1 ms and synchronises). Safe because our work runs in order on the
 * legacy default stream: a kernel queued after the reuse runs after every
 * kernel that used the block before. The two side streams of decoder_ops.cu
 * (checkpoint copies, dequantization ahead) touch only the decoder's arena,
 * page-locked host memory and the weights, and decoder.c synchronises the
 * device before it frees the arena (ql_model_free releases the decoder
 * first). When cudaMalloc fails, the cache is
 * emptied and the allocation tried once more. QL_CUDA_NO_CACHE=1 turns the
 * cache off (for compute-sanitizer and leak hunting). Memory accounting stays
 * tensor.c's: it counts the bytes asked for, not these rounded blocks.
 */
struct block_cache {
    std::mutex mu;
    std::unordered_map<size_t, std::vector<void *>> free_lists;  /* rounded size -> blocks */
    std::unordered_map<void *, size_t> size_of;                  /* every live or cached block */
    size_t cached;                                               /* bytes in free_lists */
    char *slab;                                                  /* the small blocks' current slab */
    size_t slab_used;
    std::unordered_map<void *, char> in_slab;                    /* blocks carved from slabs */
};
/* never destroyed: tensors may be released during exit */
static block_cache *const g_cache = new block_cache[QL_MAX_GPUS];

static int cache_on(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("QL_CUDA_NO_CACHE");
        v = !(e && e[0] == '1');
    }
    return v;
}

/* sizes round up to 4 steps per power of two (at most 25% slack), 512 bytes at least */
static size_t round_size(size_t n)
{
    if (n <= 512) return 512;
    /* large blocks (model weights, the decoder's plan) to whole 2 MiB pages, cudaMalloc's own
       granularity: a quarter-power-of-two class would waste up to 25 % of a 7B's weights */
    if (n >= ((size_t)32 << 20)) return (n + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
    size_t p = 512;
    while (p * 2 <= n && p * 2 > p) p *= 2;
    size_t q = p / 4;
    return (n + q - 1) / q * q;
}

/*
 * Blocks up to SMALL_MAX are carved from slabs of SLAB bytes: cudaMalloc hands out whole 2 MiB
 * pages, so each small tensor (norm weights, NF4 scales, biases) would hold a page, and a 6.4 MB
 * NF4 weight (a 7B's q or o projection) its 7 MiB size class rounded up to 8. On a 7B that is
 * ~0.1 GiB of pages holding nothing. Slab blocks stay in the cache for good (a flush keeps them;
 * slabs are never given back), reused by size class like any cached block.
 */
#define SMALL_MAX ((size_t)8 << 20)
#define SLAB ((size_t)64 << 20)

static void cache_flush(int dev)
{
    block_cache &c = g_cache[dev];
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto &kv : c.free_lists) {
        std::vector<void *> keep;
        for (void *p : kv.second) {
            if (c.in_slab.count(p)) { keep.push_back(p); continue; }
            if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
            c.size_of.erase(p);
            c.cached -= kv.first;
        }
        kv.second.swap(keep);
    }
}

/* a small block of rs bytes from the device's slab (c.mu held); NULL when a new slab cannot be had */
static void *slab_take(block_cache &c, size_t rs, cudaError_t *e)
{
    size_t at = (c.slab_used + 255) & ~(size_t)255;
    if (!c.slab || at + rs > SLAB) {
        void *s = NULL;
        *e = cudaMalloc(&s, SLAB);
        if (*e != cudaSuccess) return NULL;
        c.slab = (char *)s;   /* the old slab's tail is left unused */
        at = 0;
    }
    c.slab_used = at + rs;
    void *p = c.slab + at;
    c.in_slab[p] = 1;
    *e = cudaSuccess;
    return p;
}

static void *alloc_impl(int dev, size_t nbytes, const char *what)
{
    if (ql_cuda_set_device(dev) != QL_OK) return NULL;
    int use_cache = cache_on();
    size_t rs = use_cache ? round_size(nbytes) : (nbytes ? nbytes : 1);
    if (use_cache) {
        block_cache &c = g_cache[dev];
        std::lock_guard<std::mutex> lock(c.mu);
        auto it = c.free_lists.find(rs);
        if (it != c.free_lists.end() && !it->second.empty()) {
            void *p = it->second.back();
            it->second.pop_back();
            c.cached -= rs;
            return p;
        }
    }
    void *p = NULL;
    cudaError_t e;
    if (use_cache && rs <= SMALL_MAX) {
        block_cache &c = g_cache[dev];
        std::lock_guard<std::mutex> lock(c.mu);
        p = slab_take(c, rs, &e);
    } else
        e = cudaMalloc(&p, rs);
    if (e == cudaErrorMemoryAllocation && use_cache) {
        (void)cudaGetLastError();
        cache_flush(dev);
        if (rs <= SMALL_MAX) {
            block_cache &c = g_cache[dev];
            std::lock_guard<std::mutex> lock(c.mu);
            p = slab_take(c, rs, &e);
        } else
            e = cudaMalloc(&p, rs);
    }
    if (e == cudaSuccess) {
        if (use_cache) {
            block_cache &c = g_cache[dev];
            std::lock_guard<std::mutex> lock(c.mu);
            c.size_of[p] = rs;
        }
        return p;
    }
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        ql_fail(QL_ENOMEM, "CUDA out of memory on cuda:%d: %s asked for %.3f GiB (%zu bytes) but only "
                "%.3f GiB of %.3f GiB are free. Use a smaller batch size or seq_len, or turn on "
                "gradient checkpointing.", dev, what, nbytes / 1073741824.0, nbytes,
                free_b / 1073741824.0, total_b / 1073741824.0);
    } else {
        ql_fail(QL_EDEVICE, "CUDA: cudaMalloc of %zu bytes on cuda:%d failed: %s (%s)", nbytes, dev,
                cudaGetErrorString(e), cudaGetErrorName(e));
    }
    return NULL;
}

static void *cuda_alloc(int dev, size_t nbytes) { return alloc_impl(dev, nbytes, "a tensor"); }

static void cuda_free(int dev, void *p)
{
    if (!p || dev < 0 || dev >= QL_MAX_GPUS) return;
    if (cache_on()) {
        block_cache &c = g_cache[dev];
        std::lock_guard<std::mutex> lock(c.mu);
        auto it = c.size_of.find(p);
        if (it != c.size_of.end()) {
            c.free_lists[it->second].push_back(p);
            c.cached += it->second;
            return;
        }
    }
    if (ql_cuda_set_device(dev) != QL_OK) return;
    if (cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}

/* mapped pinned memory: under unified addressing its host pointer is valid in kernels */
static void *cuda_host_alloc(size_t nbytes)
{
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, nbytes ? nbytes : 1, cudaHostAllocMapped);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        ql_fail(e == cudaErrorMemoryAllocation ? QL_ENOMEM : QL_EDEVICE,
                "CUDA: cudaHostAlloc of %zu bytes failed: %s", nbytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}
static void cuda_host_free(void *p)
{
    if (p && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}

void *ql_cuda_tmp_alloc(int dev, size_t nbytes) { return alloc_impl(dev, nbytes, "a temporary buffer"); }
void ql_cuda_tmp_free(int dev, void *p) { cuda_free(dev, p); }

static ql_status cuda_to_host(int dev, void *dst, const void *src, size_t n)
{
    QL_TRY(ql_cuda_set_device(dev));
    if (n) QL_CU(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
    return QL_OK;
}

static ql_status cuda_from_host(int dev, void *dst, const void *src, size_t n)
{
    QL_TRY(ql_cuda_set_device(dev));
    if (n) QL_CU(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
    return QL_OK;
}

static ql_status cuda_sync(int dev)
{
    QL_TRY(ql_cuda_set_device(dev));
    QL_CU(cudaDeviceSynchronize());
    return QL_OK;
}

/* free memory counts the blocks our cache holds: they are available to the next allocation */
static ql_status cuda_mem_info(int dev, size_t *free_b, size_t *total_b)
{
    QL_TRY(ql_cuda_set_device(dev));
    QL_CU(cudaMemGetInfo(free_b, total_b));
    block_cache &c = g_cache[dev];
    std::lock_guard<std::mutex> lock(c.mu);
    *free_b += c.cached;
    return QL_OK;
}

/* ---------------------------------------------------------------- fill */

/* value -> element, as the CPU reference's fill: floats through (float)v,
   integers through (int64_t)v then a wrapping C conversion */
template <typename T> static inline T from_double(double v)
{
    if (ql_is_int<T>::value) return ql_from_i64<T>((int64_t)v);
    return ql_from_f32<T>((float)v);
}

template <typename W, bool CONTIG>
__global__ void k_fill(W *dst, W val, int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o = i;
        if (!CONTIG) ql_idx_offsets<1>(ix, i, &o);
        dst[o] = val;
    }
}

/* fills by bit pattern: W is the unsigned word of the element's size */
template <typename W> static ql_status fill_words(ql_tensor *dst, W val)
{
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    ql_idx ix;
    const ql_tensor *ts[1] = { dst };
    int contig = ql_idx_make(&ix, 1, ts);
    W *p = ql_ptr<W>(dst);
    if (contig) k_fill<W, true><<<ql_grid(n), 256>>>(p, val, n, ix);
    else k_fill<W, false><<<ql_grid(n), 256>>>(p, val, n, ix);
    QL_CU_LAUNCH("k_fill");
    return QL_OK;
}

template <typename T> static ql_status fill_t(ql_tensor *dst, double value)
{
    T v = from_double<T>(value);
    if (sizeof(T) == 1) { uint8_t w; memcpy(&w, &v, 1); return fill_words<uint8_t>(dst, w); }
    if (sizeof(T) == 2) { uint16_t w; memcpy(&w, &v, 2); return fill_words<uint16_t>(dst, w); }
    if (sizeof(T) == 4) { uint32_t w; memcpy(&w, &v, 4); return fill_words<uint32_t>(dst, w); }
    uint64_t w; memcpy(&w, &v, 8); return fill_words<uint64_t>(dst, w);
}

static ql_status cuda_fill(ql_tensor *dst, double value)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    QL_SWITCH(dst->dtype, T, return fill_t<T>(dst, value));
}

/* ---------------------------------------------------------------- arange */

/* as the CPU's arange: floats through (float)v, integers through (int64_t)v */
template <typename T> __device__ __forceinline__ T dev_from_double(double v)
{
    if (ql_is_int<T>::value) return ql_from_i64<T>((int64_t)v);
    return ql_from_f32<T>((float)v);
}

template <typename T>
__global__ void k_arange(T *dst, int64_t n, double start, double step)
{
    /* explicit rounding: no fused multiply-add, same bits as the CPU's start + i * step */
    QL_GRID_LOOP(i, n) dst[i] = dev_from_double<T>(__dadd_rn(start, __dmul_rn((double)i, step)));
}

template <typename T> static ql_status arange_t(ql_tensor *dst, double start, double step)
{
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    k_arange<T><<<ql_grid(n), 256>>>(ql_ptr<T>(dst), n, start, step);
    QL_CU_LAUNCH("k_arange");
    return QL_OK;
}

static ql_status cuda_arange(ql_tensor *dst, double start, double step)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    QL_SWITCH(dst->dtype, T, return arange_t<T>(dst, start, step));
}

/* ---------------------------------------------------------------- rand */

template <typename T, bool NORMAL, bool CONTIG>
__global__ void k_rand(T *dst, int64_t n, uint64_t seed, uint64_t stream, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        float v = NORMAL ? ql_rng_normal(seed, stream, (uint64_t)i) : ql_rng_uniform(seed, stream, (uint64_t)i);
        int64_t o = i;
        if (!CONTIG) ql_idx_offsets<1>(ix, i, &o);
        dst[o] = ql_from_f32<T>(v);
    }
}

template <typename T> static ql_status rand_t(ql_tensor *dst, int normal, uint64_t seed, uint64_t stream)
{
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    ql_idx ix;
    const ql_tensor *ts[1] = { dst };
    int contig = ql_idx_make(&ix, 1, ts);
    T *p = ql_ptr<T>(dst);
    unsigned g = ql_grid(n);
    if (normal) {
        if (contig) k_rand<T, true, true><<<g, 256>>>(p, n, seed, stream, ix);
        else k_rand<T, true, false><<<g, 256>>>(p, n, seed, stream, ix);
    } else {
        if (contig) k_rand<T, false, true><<<g, 256>>>(p, n, seed, stream, ix);
        else k_rand<T, false, false><<<g, 256>>>(p, n, seed, stream, ix);
    }
    QL_CU_LAUNCH("k_rand");
    return QL_OK;
}

static ql_status cuda_rand(ql_tensor *dst, int normal, uint64_t seed, uint64_t stream)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    QL_SWITCH_FLOAT(dst->dtype, T, return rand_t<T>(dst, normal, seed, stream));
}

/* ---------------------------------------------------------------- copy / cast */

template <typename D, typename S, bool CONTIG>
__global__ void k_copy(D *dst, const S *src, int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o[2] = { i, i };
        if (!CONTIG) ql_idx_offsets<2>(ix, i, o);
        dst[o[0]] = ql_cvt<D>(src[o[1]]);
    }
}

/* contiguous: QL_ILP elements per thread per step, all loads before the stores */
template <typename D, typename S>
__global__ void k_copy_c(D *dst, const S *src, int64_t n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; base < n; base += stride * QL_ILP) {
        S v[QL_ILP];
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) { int64_t i = base + k * stride; if (i < n) v[k] = src[i]; }
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) { int64_t i = base + k * stride; if (i < n) dst[i] = ql_cvt<D>(v[k]); }
    }
}

template <typename D, typename S> static ql_status copy_t(ql_tensor *dst, const ql_tensor *src)
{
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    ql_idx ix;
    const ql_tensor *ts[2] = { dst, src };
    int contig = ql_idx_make(&ix, 2, ts);
    if (contig && dst->dtype == src->dtype) {
        QL_CU(cudaMemcpyAsync(ql_ptr<D>(dst), ql_ptr<S>(src), (size_t)n * sizeof(D), cudaMemcpyDeviceToDevice, 0));
        return QL_OK;
    }
    if (contig) k_copy_c<D, S><<<ql_grid((n + QL_ILP - 1) / QL_ILP), 256>>>(ql_ptr<D>(dst), ql_ptr<S>(src), n);
    else k_copy<D, S, false><<<ql_grid(n), 256>>>(ql_ptr<D>(dst), ql_ptr<S>(src), n, ix);
    QL_CU_LAUNCH("k_copy");
    return QL_OK;
}

ql_status ql_cuda_copy(ql_tensor *dst, const ql_tensor *src)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    if (ql_cuda_dev_of(src) != ql_cuda_dev_of(dst)) {
        /* peer copy between two GPUs: only plain contiguous same-dtype data */
        if (src->dtype != dst->dtype || !ql_tensor_is_contiguous(src) || !ql_tensor_is_contiguous(dst))
            return ql_fail(QL_EUNSUPPORTED, "CUDA backend: a copy between cuda:%d and cuda:%d needs "
                           "contiguous tensors of one dtype (make them contiguous first)",
                           ql_cuda_dev_of(src), ql_cuda_dev_of(dst));
        QL_CU(cudaMemcpyPeer(ql_tensor_data(dst), ql_cuda_dev_of(dst), ql_tensor_data(src),
                             ql_cuda_dev_of(src), ql_tensor_nbytes(dst)));
        return QL_OK;
    }
    QL_SWITCH(dst->dtype, D, QL_SWITCH(src->dtype, S, return copy_t<D, S>(dst, src)));
}

static ql_status cuda_copy(ql_tensor *dst, const ql_tensor *src) { return ql_cuda_copy(dst, src); }

/* ---------------------------------------------------------------- unary */

/* fast path: one float dtype in and out */
template <typename T, bool CONTIG>
__global__ void k_unary(int op, T *dst, const T *src, int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o[2] = { i, i };
        if (!CONTIG) ql_idx_offsets<2>(ix, i, o);
        dst[o[0]] = ql_from_f32<T>(ql_unary_f32(op, ql_to_f32(src[o[1]])));
    }
}

/* any dtypes (integers, int -> f32), element access by run-time dtype */
__global__ void k_unary_dyn(int op, void *dst, int dd, const void *src, int ds, int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o[2];
        ql_idx_offsets<2>(ix, i, o);
        if (ql_dt_float(dd)) ql_stf(dst, dd, o[0], ql_unary_f32(op, ql_ldf(src, ds, o[1])));
        else ql_sti(dst, dd, o[0], ql_unary_i64(op, ql_ldi(src, ds, o[1])));
    }
}

template <typename T>
__global__ void k_unary_c(int op, T *dst, const T *src, int64_t n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; base < n; base += stride * QL_ILP) {
        float x[QL_ILP];
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) { int64_t i = base + k * stride; if (i < n) x[k] = ql_to_f32(src[i]); }
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) {
            int64_t i = base + k * stride;
            if (i < n) dst[i] = ql_from_f32<T>(ql_unary_f32(op, x[k]));
        }
    }
}

template <typename T> static ql_status unary_t(int op, ql_tensor *dst, const ql_tensor *src, int64_t n,
                                               const ql_idx &ix, int contig)
{
    if (contig) k_unary_c<T><<<ql_grid((n + QL_ILP - 1) / QL_ILP), 256>>>(op, ql_ptr<T>(dst), ql_ptr<T>(src), n);
    else k_unary<T, false><<<ql_grid(n), 256>>>(op, ql_ptr<T>(dst), ql_ptr<T>(src), n, ix);
    QL_CU_LAUNCH("k_unary");
    return QL_OK;
}

/* byte pointer to element 0 */
static inline void *ql_bytes(const ql_tensor *t)
{
    return (char *)t->storage->data + ql_dtype_bytes(t->dtype, t->offset);
}

static ql_status cuda_unary(ql_unary_op op, ql_tensor *dst, const ql_tensor *src)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    ql_idx ix;
    const ql_tensor *ts[2] = { dst, src };
    int contig = ql_idx_make(&ix, 2, ts);
    if (dst->dtype == src->dtype && (dst->dtype == QL_F32 || dst->dtype == QL_BF16 || dst->dtype == QL_F16)) {
        QL_SWITCH_FLOAT(dst->dtype, T, return unary_t<T>((int)op, dst, src, n, ix, contig));
    }
    k_unary_dyn<<<ql_grid(n), 256>>>((int)op, ql_bytes(dst), dst->dtype, ql_bytes(src), src->dtype, n, ix);
    QL_CU_LAUNCH("k_unary_dyn");
    return QL_OK;
}

/* ---------------------------------------------------------------- binary */

/* Same as cpu_backend.c's binary_f: f32 math; maximum/minimum give NaN if either is NaN. */
/* fast path: one float dtype for a, b and dst */
template <typename T, bool CONTIG>
__global__ void k_binary(int op, T *dst, const T *a, const T *b, int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o[3] = { i, i, i };
        if (!CONTIG) ql_idx_offsets<3>(ix, i, o);
        dst[o[0]] = ql_from_f32<T>(ql_binary_f32(op, ql_to_f32(a[o[1]]), ql_to_f32(b[o[2]])));
    }
}

/* mixed dtypes (a bf16 tensor with an f32 scalar, comparisons into u8, integers) */
__global__ void k_binary_dyn(int op, int fl, void *dst, int dd, const void *a, int da, const void *b, int db,
                             int64_t n, ql_idx ix)
{
    QL_GRID_LOOP(i, n) {
        int64_t o[3];
        ql_idx_offsets<3>(ix, i, o);
        if (fl) ql_stf(dst, dd, o[0], ql_binary_f32(op, ql_ldf(a, da, o[1]), ql_ldf(b, db, o[2])));
        else ql_sti(dst, dd, o[0], ql_binary_i64(op, ql_ldi(a, da, o[1]), ql_ldi(b, db, o[2])));
    }
}

template <typename T>
__global__ void k_binary_c(int op, T *dst, const T *a, const T *b, int64_t n)
{
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; base < n; base += stride * QL_ILP) {
        float x[QL_ILP], y[QL_ILP];
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) {
            int64_t i = base + k * stride;
            if (i < n) { x[k] = ql_to_f32(a[i]); y[k] = ql_to_f32(b[i]); }
        }
#pragma unroll
        for (int k = 0; k < QL_ILP; k++) {
            int64_t i = base + k * stride;
            if (i < n) dst[i] = ql_from_f32<T>(ql_binary_f32(op, x[k], y[k]));
        }
    }
}

template <typename T> static ql_status binary_t(int op, ql_tensor *dst, const ql_tensor *a, const ql_tensor *b,
                                                int64_t n, const ql_idx &ix, int contig)
{
    if (contig) k_binary_c<T><<<ql_grid((n + QL_ILP - 1) / QL_ILP), 256>>>(op, ql_ptr<T>(dst), ql_ptr<T>(a), ql_ptr<T>(b), n);
    else k_binary<T, false><<<ql_grid(n), 256>>>(op, ql_ptr<T>(dst), ql_ptr<T>(a), ql_ptr<T>(b), n, ix);
    QL_CU_LAUNCH("k_binary");
    return QL_OK;
}

static int is_float_dt(ql_dtype t) { return t == QL_F32 || t == QL_BF16 || t == QL_F16; }

static ql_status cuda_binary(ql_binary_op op, ql_tensor *dst, const ql_tensor *a, const ql_tensor *b)
{
    QL_TRY(ql_cuda_set_device(ql_cuda_dev_of(dst)));
    int fl = is_float_dt(a->dtype) || is_float_dt(b->dtype) || op == QL_DIV;
    if (op == QL_DIV && !is_float_dt(a->dtype) && !is_float_dt(b->dtype) && !is_float_dt(dst->dtype))
        return ql_fail(QL_EINVAL, "integer division: convert to a float dtype first");
    int64_t n = ql_tensor_numel(dst);
    if (n == 0) return QL_OK;
    ql_idx ix;
    const ql_tensor *ts[3] = { dst, a, b };
    int contig = ql_idx_make(&ix, 3, ts);
    if (a->dtype == dst->dtype && b->dtype == dst->dtype && is_float_dt(dst->dtype)) {
        QL_SWITCH_FLOAT(dst->dtype, T, return binary_t<T>((int)op, dst, a, b, n, ix, contig));
    }
    k_binary_dyn<<<ql_grid(n), 256>>>((int)op, fl, ql_bytes(dst), dst->dtype, ql_bytes(a), a->dtype,
                                      ql_bytes(b), b->dtype, n, ix);
    QL_CU_LAUNCH("k_binary_dyn");
    return QL_OK;
}

/* ---------------------------------------------------------------- NF4 */

/* NF4 through the launchers of kernels/nf4.cu (same arithmetic as the CPU,
   byte-identical). The double-quantized absmax is expanded to f32 first. */
static ql_status cuda_nf4_dequantize(ql_tensor *dst, const ql_tensor *src)
{
    const ql_quant *q = src->quant;
    int dev = ql_tensor_device(src).index;
    QL_TRY(ql_cuda_set_device(dev));
    int64_t n = ql_tensor_numel(src), nb = (n + q->blocksize - 1) / q->blocksize;
    float *absmax = (float *)ql_tensor_data(q->absmax), *tmp = NULL;
    ql_status s = QL_OK;
    if (q->double_quant) {
        tmp = (float *)alloc_impl(dev, sizeof(float) * (size_t)(nb ? nb : 1), "nf4 block scales");
        if (!tmp) return QL_ENOMEM;
        s = ql_cuda_nf4_absmax_dequant((const uint8_t *)ql_tensor_data(q->absmax), (const float *)ql_tensor_data(q->nested_absmax),
                                       (const float *)ql_tensor_data(q->nested_code), q->nested_offset, nb, tmp, NULL);
        absmax = tmp;
    }
    const uint8_t *packed = (const uint8_t *)ql_tensor_data(src);
    if (s == QL_OK) {
        if (dst->dtype == QL_F32) s = ql_cuda_nf4_dequantize_f32(packed, absmax, n, q->blocksize, (float *)ql_tensor_data(dst), NULL);
        else if (dst->dtype == QL_BF16) s = ql_cuda_nf4_dequantize_bf16(packed, absmax, n, q->blocksize, (uint16_t *)ql_tensor_data(dst), NULL);
        else {  /* f16: through an f32 copy */
            ql_tensor *f = ql_tensor_new(QL_F32, dst->ndim, dst->shape, ql_tensor_device(dst));
            if (!f) s = QL_ENOMEM;
            else {
                s = ql_cuda_nf4_dequantize_f32(packed, absmax, n, q->blocksize, (float *)ql_tensor_data(f), NULL);
                if (s == QL_OK) s = ql_cuda_copy(dst, f);
                ql_tensor_release(f);
            }
        }
    }
    if (tmp) cuda_free(dev, tmp);
    return s;
}

static ql_status cuda_nf4_quantize(ql_tensor *dst, const ql_tensor *src)
{
    ql_quant *q = dst->quant;
    int dev = ql_tensor_device(dst).index;
    QL_TRY(ql_cuda_set_device(dev));
    int64_t n = ql_tensor_numel(src), nb = (n + q->blocksize - 1) / q->blocksize;
    const float *x = (const float *)ql_tensor_data(src);
    uint8_t *packed = (uint8_t *)ql_tensor_data(dst);
    if (!q->double_quant)
        return ql_cuda_nf4_quantize(x, n, q->blocksize, packed, (float *)ql_tensor_data(q->absmax), NULL);
    /* double quantization: absmax on the device, its mean on the host in torch's order */
    float *absmax = (float *)alloc_impl(dev, sizeof(float) * (size_t)(nb ? nb : 1), "nf4 block scales");
    float *host = (float *)malloc(sizeof(float) * (size_t)(nb ? nb : 1));
    ql_status s = absmax && host ? QL_OK : ql_fail(QL_ENOMEM, "out of memory quantizing %lld values", (long long)n);
    if (s == QL_OK) s = ql_cuda_nf4_quantize(x, n, q->blocksize, packed, absmax, NULL);
    if (s == QL_OK) s = cuda_to_host(dev, host, absmax, sizeof(float) * (size_t)nb);
    float code[256];
    if (s == QL_OK) {
        q->nested_offset = nb ? ql_nf4_torch_mean(host, nb) : 0.0f;
        ql_nf4_dynamic_map(code);
        s = cuda_from_host(dev, ql_tensor_data(q->nested_code), code, sizeof code);
    }
    if (s == QL_OK)
        s = ql_cuda_nf4_quantize_nested(absmax, nb, q->nested_offset, (const float *)ql_tensor_data(q->nested_code),
                                        (uint8_t *)ql_tensor_data(q->absmax), (float *)ql_tensor_data(q->nested_absmax), NULL);
    if (absmax) cuda_free(dev, absmax);
    free(host);
    return s;
}

/* ---------------------------------------------------------------- the table */

extern "C" const ql_backend ql_cuda_backend = {
    "cuda",
    cuda_device_count,
    cuda_alloc,
    cuda_free,
    cuda_to_host,
    cuda_from_host,
    cuda_sync,
    cuda_mem_info,
    cuda_fill,
    cuda_arange,
    cuda_rand,
    cuda_copy,
    cuda_unary,
    cuda_binary,
    ql_cuda_reduce,
    ql_cuda_softmax,
    ql_cuda_matmul,
    cuda_nf4_dequantize,
    cuda_nf4_quantize,
    cuda_host_alloc,
    cuda_host_free,
};
