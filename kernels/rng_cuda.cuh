/*
 * rng_cuda.cuh — includes engine/rng.h for CUDA translation units.
 *
 * rng.h picks __dmul_rn/__dadd_rn under __CUDACC__, but those are device-only
 * intrinsics while its functions are host+device, so nvcc rejects the host
 * pass. Until rng.h tests __CUDA_ARCH__ instead, these wrappers give the
 * host pass plain IEEE double * and + (the same rounding) and the device pass
 * the explicitly rounded intrinsics (no FMA contraction).
 */
#ifndef QL_RNG_CUDA_CUH
#define QL_RNG_CUDA_CUH

#include "common.cuh"

__host__ __device__ __forceinline__ double ql_dmul_rn_(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
__host__ __device__ __forceinline__ double ql_dadd_rn_(double a, double b)
{
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

#define __dmul_rn ql_dmul_rn_
#define __dadd_rn ql_dadd_rn_
extern "C" {
#include "rng.h"
}
#undef __dmul_rn
#undef __dadd_rn

#endif
