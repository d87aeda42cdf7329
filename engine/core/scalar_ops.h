/*
 * scalar_ops.h — the formula of every elementwise op on one value, shared by
 * the CPU reference (cpu_backend.c) and the CUDA kernels (backend_cuda.cu), so
 * both backends compute the same function: float math in f32, integer math in
 * int64 wrapping modulo 2^64 (no undefined overflow), comparisons as 0/1.
 */
#ifndef QL_SCALAR_OPS_H
#define QL_SCALAR_OPS_H

#include <math.h>

#include "dtype.h"
#include "tensor.h"

QL_HD float ql_unary_f32(int op, float x)
{
    switch (op) {
    case QL_NEG: return -x;
    case QL_ABS: return fabsf(x);
    case QL_EXP: return expf(x);
    case QL_LOG: return logf(x);
    case QL_SQRT: return sqrtf(x);
    case QL_RSQRT: return 1.0f / sqrtf(x);
    case QL_SIN: return sinf(x);
    case QL_COS: return cosf(x);
    case QL_TANH: return tanhf(x);
    case QL_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case QL_SILU: return x / (1.0f + expf(-x));
    case QL_RELU: return x > 0.0f ? x : 0.0f;
    case QL_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case QL_SQUARE: return x * x;
    case QL_RECIP: return 1.0f / x;
    default: return NAN;
    }
}

/* integer neg/abs/relu/square */
QL_HD int64_t ql_unary_i64(int op, int64_t x)
{
    uint64_t u = (uint64_t)x;
    switch (op) {
    case QL_NEG: return (int64_t)(0 - u);
    case QL_ABS: return x < 0 ? (int64_t)(0 - u) : x;
    case QL_RELU: return x > 0 ? x : 0;
    default: return (int64_t)(u * u);
    }
}

QL_HD float ql_binary_f32(int op, float a, float b)
{
    switch (op) {
    case QL_ADD: return a + b;
    case QL_SUB: return a - b;
    case QL_MUL: return a * b;
    case QL_DIV: return a / b;
    case QL_POW: return powf(a, b);
    case QL_MAXIMUM: return a != a || b != b ? NAN : a > b ? a : b;
    case QL_MINIMUM: return a != a || b != b ? NAN : a < b ? a : b;
    case QL_EQ: return a == b ? 1.0f : 0.0f;
    case QL_NE: return a != b ? 1.0f : 0.0f;
    case QL_LT: return a < b ? 1.0f : 0.0f;
    case QL_LE: return a <= b ? 1.0f : 0.0f;
    case QL_GT: return a > b ? 1.0f : 0.0f;
    case QL_GE: return a >= b ? 1.0f : 0.0f;
    default: return NAN;
    }
}

/* pow by squaring: the same result modulo 2^64 as repeated products, in log(b) steps */
QL_HD int64_t ql_binary_i64(int op, int64_t a, int64_t b)
{
    switch (op) {
    case QL_ADD: return (int64_t)((uint64_t)a + (uint64_t)b);
    case QL_SUB: return (int64_t)((uint64_t)a - (uint64_t)b);
    case QL_MUL: return (int64_t)((uint64_t)a * (uint64_t)b);
    case QL_POW: {
        if (b < 0) return a == 1 ? 1 : 0;
        uint64_t r = 1, x = (uint64_t)a;
        for (uint64_t e = (uint64_t)b; e; e >>= 1) { if (e & 1) r *= x; x *= x; }
        return (int64_t)r;
    }
    case QL_MAXIMUM: return a > b ? a : b;
    case QL_MINIMUM: return a < b ? a : b;
    case QL_EQ: return a == b;
    case QL_NE: return a != b;
    case QL_LT: return a < b;
    case QL_LE: return a <= b;
    case QL_GT: return a > b;
    case QL_GE: return a >= b;
    default: return 0;
    }
}

#endif
