/*
 * device.c — ql_device_probe: build facts here, GPU facts from the CUDA side
 * (kernels/device_cuda.cu) when compiled in.
 */
#include "device.h"

#include <stdio.h>
#include <string.h>

#if defined(__has_include)
#if __has_include("ql_build.h")
#include "ql_build.h"
#endif
#endif
#ifndef QL_CUDA_ARCHS
#define QL_CUDA_ARCHS ""
#endif

ql_status ql_device_probe(ql_device_report *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->archs, sizeof r->archs, "%s", QL_CUDA_ARCHS);
    const char *last = strrchr(QL_CUDA_ARCHS, ',');
    snprintf(r->ptx_arch, sizeof r->ptx_arch, "%s", last ? last + 1 : QL_CUDA_ARCHS);
#ifdef QL_CUDA
    r->cuda_built = 1;
    return ql_cuda_probe(r);
#else
    r->cuda_built = 0;
    return QL_OK;
#endif
}
