/*
 * device.c — ql_device_probe: build facts here, GPU facts from the CUDA side
 * (kernels/device_cuda.cu) when compiled in.
 */
#include "device.h"

#include <stdio.h>
#include <string.h>


ql_status ql_device_probe(ql_device_report *r)
{
    memset(r, 0, sizeof *r);
    snprintf(r->archs, sizeof r->archs, "%s", ql_build_cuda_archs());
    const char *last = strrchr(ql_build_cuda_archs(), ',');
    snprintf(r->ptx_arch, sizeof r->ptx_arch, "%s", last ? last + 1 : ql_build_cuda_archs());
#ifdef QL_CUDA
    r->cuda_built = 1;
    return ql_cuda_probe(r);
#else
    r->cuda_built = 0;
    return QL_OK;
#endif
}
