/*
 * nf4_backend.h — the CPU backend's NF4 entries (nf4_backend.c), bridging
 * tensors with their quantization state to the raw-array NF4 code (nf4.h).
 */
#ifndef QL_NF4_BACKEND_H
#define QL_NF4_BACKEND_H

#include "tensor.h"

struct ql_nf4;
/* A ql_nf4 borrowing the arrays of an NF4 CPU tensor (no copies). */
ql_status ql_nf4_view(struct ql_nf4 *q, const ql_tensor *t);

ql_status ql_cpu_nf4_dequantize(ql_tensor *dst, const ql_tensor *src);
ql_status ql_cpu_nf4_quantize(ql_tensor *dst, const ql_tensor *src);

#endif
