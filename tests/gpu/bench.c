/*
 * bench.c — qlbench: the short GPU timing table of tests/gpu/run.sh.
 *
 *   qlbench            prints the device report, then one line per measurement:
 *                      "bench <name> <value> <unit> (<detail>)"
 *
 * Timings: warm-up first (module load, cuBLASLt handle and workspace), then
 * the median of several timed repetitions, each bracketed by device syncs
 * and read with a monotonic host clock. Matmuls call the backend entry
 * directly on preallocated tensors so that the numbers are the kernel path
 * (ql_matmul adds an allocation per call; measured separately).
 * Copy bandwidth counts bytes read plus bytes written.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "device.h"
#include "tensor.h"

#ifdef QL_CUDA

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef ql_status (*bench_fn)(void *ctx);

/* median seconds per call of fn over reps timed runs of `inner` calls each */
static double time_median(bench_fn fn, void *ctx, int warm, int reps, int inner)
{
    double t[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < warm; i++)
        if (fn(ctx) != QL_OK) return -1;
    if (ql_cuda_backend.sync(0) != QL_OK) return -1;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int i = 0; i < inner; i++)
            if (fn(ctx) != QL_OK) return -1;
        if (ql_cuda_backend.sync(0) != QL_OK) return -1;
        t[r] = (now() - t0) / inner;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_d);
    return t[reps / 2];
}

typedef struct { ql_tensor *d, *a, *b; } mm_ctx;
static ql_status mm_backend(void *p) { mm_ctx *c = p; return ql_cuda_backend.matmul(c->d, c->a, c->b); }
static ql_status mm_api(void *p)
{
    mm_ctx *c = p;
    ql_tensor *r = ql_matmul(c->a, c->b);
    if (!r) return QL_EDEVICE;
    ql_tensor_release(r);
    return QL_OK;
}
static ql_status copy_api(void *p) { mm_ctx *c = p; return ql_tensor_copy_(c->d, c->a); }
static ql_status add_api(void *p) { mm_ctx *c = p; return ql_cuda_backend.binary(QL_ADD, c->d, c->a, c->b); }
static ql_status sum_api(void *p) { mm_ctx *c = p; return ql_cuda_backend.reduce(QL_SUM, c->d, c->a, 1); }
static ql_status softmax_api(void *p) { mm_ctx *c = p; return ql_cuda_backend.softmax(c->d, c->a); }

static void fail(const char *what)
{
    printf("bench %s FAILED: %s\n", what, ql_last_error());
}

static void bench_matmul(ql_dtype dt, int64_t n, int api)
{
    char name[64];
    snprintf(name, sizeof name, "matmul_%s_%lld%s", ql_dtype_name(dt), (long long)n, api ? "_api" : "");
    int64_t s3[3] = { 1, n, n };
    mm_ctx c = { 0 };
    c.a = ql_tensor_rand(dt, 3, s3, 1, 1, 0, ql_cuda(0));
    c.b = ql_tensor_rand(dt, 3, s3, 1, 2, 0, ql_cuda(0));
    c.d = ql_tensor_new(dt, 3, s3, ql_cuda(0));
    if (!c.a || !c.b || !c.d) { fail(name); goto out; }
    double t = time_median(api ? mm_api : mm_backend, &c, 3, 9, n >= 4096 ? 5 : 20);
    if (t < 0) { fail(name); goto out; }
    printf("bench %s %.1f TFLOP/s (%.3f ms per product)\n", name, 2.0 * n * n * n / t / 1e12, t * 1e3);
out:
    ql_tensor_release(c.a); ql_tensor_release(c.b); ql_tensor_release(c.d);
}

static void bench_copy(void)
{
    int64_t n = (int64_t)1 << 28;  /* 1 GiB of f32 */
    int64_t s2[2] = { 16384, 16384 };
    mm_ctx c = { 0 };
    c.a = ql_tensor_rand(QL_F32, 1, &n, 0, 3, 0, ql_cuda(0));
    c.d = ql_tensor_new(QL_F32, 1, &n, ql_cuda(0));
    if (!c.a || !c.d) { fail("copy"); goto out; }
    double t = time_median(copy_api, &c, 2, 9, 3);
    if (t < 0) { fail("copy_f32"); goto out; }
    printf("bench copy_f32_contiguous %.0f GB/s (1 GiB, cudaMemcpyAsync)\n", 2.0 * n * 4 / t / 1e9);
    ql_tensor_release(c.d);
    c.d = ql_tensor_new(QL_BF16, 1, &n, ql_cuda(0));
    if (!c.d) { fail("copy_cast"); goto out; }
    t = time_median(copy_api, &c, 2, 9, 3);
    if (t >= 0) printf("bench cast_f32_to_bf16 %.0f GB/s (2^28 elements, 6 bytes each)\n", 6.0 * n / t / 1e9);
    else fail("cast_f32_to_bf16");
    ql_tensor_release(c.d);
    /* transpose: a strided read into a contiguous write */
    {
        ql_tensor *sq = ql_tensor_view(c.a, 2, s2);
        ql_tensor *tr = sq ? ql_tensor_transpose(sq, 0, 1) : NULL;
        c.d = ql_tensor_new(QL_F32, 2, s2, ql_cuda(0));
        mm_ctx c2 = { c.d, tr, NULL };
        if (tr && c.d) {
            t = time_median(copy_api, &c2, 2, 9, 3);
            if (t >= 0) printf("bench copy_f32_transposed %.0f GB/s (16384^2, strided kernel)\n", 2.0 * n * 4 / t / 1e9);
            else fail("copy_f32_transposed");
        } else fail("copy_f32_transposed");
        ql_tensor_release(sq); ql_tensor_release(tr);
    }
    /* add: two reads and a write */
    {
        ql_tensor *b = ql_tensor_rand(QL_F32, 2, s2, 0, 4, 0, ql_cuda(0));
        ql_tensor *a2 = ql_tensor_view(c.a, 2, s2);
        mm_ctx c3 = { c.d, a2, b };
        if (b && a2 && c.d) {
            t = time_median(add_api, &c3, 2, 9, 3);
            if (t >= 0) printf("bench add_f32 %.0f GB/s (16384^2, contiguous)\n", 3.0 * n * 4 / t / 1e9);
            else fail("add_f32");
            int64_t r1[2] = { 16384, 1 };
            ql_tensor *rs = ql_tensor_new(QL_F32, 2, r1, ql_cuda(0));
            mm_ctx c4 = { rs, a2, NULL };
            t = rs ? time_median(sum_api, &c4, 2, 9, 3) : -1;
            if (t >= 0) printf("bench sum_rows_f32 %.0f GB/s (16384^2 along dim 1)\n", 1.0 * n * 4 / t / 1e9);
            else fail("sum_rows_f32");
            ql_tensor_release(rs);
            int64_t sm[2] = { 65536, 4096 };
            ql_tensor *x = ql_tensor_view(c.a, 2, sm), *y = ql_tensor_new(QL_F32, 2, sm, ql_cuda(0));
            mm_ctx c5 = { y, x, NULL };
            t = x && y ? time_median(softmax_api, &c5, 2, 9, 3) : -1;
            if (t >= 0) printf("bench softmax_f32 %.0f GB/s (65536 rows of 4096)\n", 2.0 * n * 4 / t / 1e9);
            else fail("softmax_f32");
            ql_tensor_release(x); ql_tensor_release(y);
        } else fail("add_f32");
        ql_tensor_release(b); ql_tensor_release(a2);
    }
out:
    ql_tensor_release(c.a); ql_tensor_release(c.d);
}

int main(void)
{
    ql_device_report r;
    ql_device_probe(&r);
    printf("probe: cuda_built %d archs %s ptx %s driver %d runtime %d cublasLt %d devices %d%s%s\n",
           r.cuda_built, r.archs, r.ptx_arch, r.driver_version, r.runtime_version, r.cublaslt_version,
           r.device_count, r.count_error ? " count_error: " : "", r.count_error ? r.count_error_msg : "");
    for (int i = 0; i < r.device_count; i++) {
        const ql_gpu_info *g = &r.gpus[i];
        printf("probe: gpu %d %s cc %d.%d SMs %d mem %.1f/%.1f GiB bf16 %d kernel_ok %d SASS %d PTX %d jit %d %s\n",
               i, g->name, g->cc_major, g->cc_minor, g->sm_count, g->free_mem / 1073741824.0,
               g->total_mem / 1073741824.0, g->bf16, g->kernel_ok, g->binary_version, g->ptx_version, g->jit,
               g->kernel_error_msg);
    }
    if (ql_cuda_backend.device_count() < 1) { printf("bench: no CUDA device\n"); return 0; }
    bench_matmul(QL_BF16, 4096, 0);
    bench_matmul(QL_BF16, 4096, 1);
    bench_matmul(QL_BF16, 8192, 0);
    bench_matmul(QL_F16, 4096, 0);
    bench_matmul(QL_F32, 4096, 0);
    bench_matmul(QL_BF16, 1024, 0);
    bench_copy();
    return 0;
}

#else
int main(void)
{
    printf("bench: built without CUDA\n");
    return 0;
}
#endif
