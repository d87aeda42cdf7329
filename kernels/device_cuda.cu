/*
 * device_cuda.cu — ql_cuda_probe (device.h): what the driver, the runtime,
 * cuBLASLt and each GPU say, and whether our kernels can run there.
 *
 * Must never crash or hang on a machine without a GPU or driver: every CUDA
 * call's error is recorded in the report instead (a binary linked with
 * cudart_static answers cudaErrorInsufficientDriver / cudaErrorNoDevice).
 *
 * Per GPU: properties, free/total memory, and a one-thread probe kernel that
 * writes a known value. cudaFuncGetAttributes on it tells which SASS the
 * driver picked (binaryVersion) and the PTX version; when binaryVersion is
 * none of the SASS architectures this file was compiled for
 * (__CUDA_ARCH_LIST__), the driver JIT-compiled our PTX.
 */
#include "common.cuh"

#include <cublasLt.h>
#include <stdio.h>

#define QL_PROBE_MAGIC 0x51104a75u

__global__ void ql_probe_kernel(unsigned *out)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) *out = QL_PROBE_MAGIC;
}

static void set_msg(char *dst, size_t cap, cudaError_t e)
{
    snprintf(dst, cap, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
}

/* 1 when sm (e.g. 90) is one of the SASS targets compiled into this file */
static int compiled_for(int sm)
{
#ifdef __CUDA_ARCH_LIST__
    static const int list[] = { __CUDA_ARCH_LIST__ };
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        if (list[i] / 10 == sm) return 1;
    return 0;
#else
    (void)sm;
    return -1;
#endif
}

/* Launches the probe kernel on the current device and fills g's kernel fields. */
static void probe_kernel(ql_gpu_info *g)
{
    cudaFuncAttributes fa;
    memset(&fa, 0, sizeof fa);
    cudaError_t e = cudaFuncGetAttributes(&fa, ql_probe_kernel);
    if (e == cudaSuccess) {
        g->binary_version = fa.binaryVersion;
        g->ptx_version = fa.ptxVersion;
        g->jit = compiled_for(fa.binaryVersion) == 0;
    } else {
        (void)cudaGetLastError();
    }
    unsigned *d = NULL, h = 0;
    e = cudaMalloc(&d, sizeof *d);
    if (e == cudaSuccess) e = cudaMemset(d, 0, sizeof *d);
    if (e == cudaSuccess) {
        ql_probe_kernel<<<1, 32>>>(d);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        g->kernel_error = (int)e;
        set_msg(g->kernel_error_msg, sizeof g->kernel_error_msg, e);
        (void)cudaGetLastError();
    } else if (h != QL_PROBE_MAGIC) {
        snprintf(g->kernel_error_msg, sizeof g->kernel_error_msg,
                 "the probe kernel ran but wrote 0x%08x instead of 0x%08x", h, QL_PROBE_MAGIC);
    } else {
        g->kernel_ok = 1;
    }
    if (d && cudaFree(d) != cudaSuccess) (void)cudaGetLastError();
}

extern "C" ql_status ql_cuda_probe(ql_device_report *r)
{
    int v = 0;
    if (cudaDriverGetVersion(&v) == cudaSuccess) r->driver_version = v;
    else (void)cudaGetLastError();
    v = 0;
    if (cudaRuntimeGetVersion(&v) == cudaSuccess) r->runtime_version = v;
    else (void)cudaGetLastError();
    r->cublaslt_version = (int)cublasLtGetVersion();

    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        r->count_error = (int)e;
        set_msg(r->count_error_msg, sizeof r->count_error_msg, e);
        (void)cudaGetLastError();
        r->device_count = 0;
        return QL_OK;
    }
    if (n > QL_MAX_GPUS) n = QL_MAX_GPUS;
    r->device_count = n;
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) { (void)cudaGetLastError(); prev = -1; }
    for (int i = 0; i < n; i++) {
        ql_gpu_info *g = &r->gpus[i];
        memset(g, 0, sizeof *g);
        g->index = i;
        cudaDeviceProp p;
        memset(&p, 0, sizeof p);
        e = cudaGetDeviceProperties(&p, i);
        if (e != cudaSuccess) {
            g->kernel_error = (int)e;
            set_msg(g->kernel_error_msg, sizeof g->kernel_error_msg, e);
            (void)cudaGetLastError();
            continue;
        }
        snprintf(g->name, sizeof g->name, "%s", p.name);
        g->cc_major = p.major;
        g->cc_minor = p.minor;
        g->sm_count = p.multiProcessorCount;
        g->bf16 = p.major >= 8;
        g->total_mem = (int64_t)p.totalGlobalMem;
        e = cudaSetDevice(i);
        if (e == cudaSuccess) {
            size_t fr = 0, tot = 0;
            e = cudaMemGetInfo(&fr, &tot);
            if (e == cudaSuccess) { g->free_mem = (int64_t)fr; g->total_mem = (int64_t)tot; }
        }
        if (e != cudaSuccess) {
            g->kernel_error = (int)e;
            set_msg(g->kernel_error_msg, sizeof g->kernel_error_msg, e);
            (void)cudaGetLastError();
            continue;
        }
        probe_kernel(g);
    }
    if (prev >= 0 && cudaSetDevice(prev) != cudaSuccess) (void)cudaGetLastError();
    return QL_OK;
}
