/*
 * device.h — what the GPUs of this machine can do for this binary.
 *
 * ql_device_probe never fails on a machine without a GPU, driver or CUDA
 * build: it fills the report and says why in its fields. Used by `qlora
 * doctor` (recipes/doctor.lua) and by the CUDA backend before first use.
 */
#ifndef QL_DEVICE_H
#define QL_DEVICE_H

#include "ql.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QL_MAX_GPUS 16

typedef struct ql_gpu_info {
    int  index;
    char name[256];
    int  cc_major, cc_minor;      /* compute capability */
    int64_t total_mem, free_mem;  /* bytes */
    int  sm_count;
    int  bf16;                    /* native bf16 math (sm_80+) */
    int  kernel_ok;               /* the probe kernel ran and wrote its answer */
    int  kernel_error;            /* cudaError_t of the failed launch, 0 if fine */
    char kernel_error_msg[256];   /* "no kernel image is available ..." */
    int  binary_version;          /* SASS the driver picked, e.g. 90; 0 when unknown */
    int  ptx_version;             /* PTX version of the probe kernel */
    int  jit;                     /* 1 when the kernel ran from PTX (JIT), not SASS */
} ql_gpu_info;

typedef struct ql_device_report {
    int  cuda_built;              /* compiled with the CUDA backend */
    char archs[128];              /* SASS architectures compiled in: "75,80,86,89,90,100,120" */
    char ptx_arch[16];            /* PTX carried: "120" */
    int  driver_version;          /* CUDA version the driver supports, 12080 = 12.8; 0 when no driver */
    int  runtime_version;         /* cudart this binary uses */
    int  cublaslt_version;        /* e.g. 130100 */
    int  count_error;             /* cudaError_t from counting devices, 0 if fine */
    char count_error_msg[256];
    int  device_count;
    ql_gpu_info gpus[QL_MAX_GPUS];
} ql_device_report;

ql_status ql_device_probe(ql_device_report *r);

#ifdef QL_CUDA
/* kernels/device_cuda.cu: fills every CUDA field of r (cuda_built and archs are set by the caller). */
ql_status ql_cuda_probe(ql_device_report *r);
#endif

#ifdef __cplusplus
}
#endif
#endif
