/*
 * nf4_backend.c — CPU NF4 entries of the backend: NF4 tensors (packed data +
 * ql_quant state tensors) bridged to the raw-array, bitsandbytes-exact code
 * of nf4.c without copying. Also ql_nf4_view, shared with the file layout code.
 */
#include "nf4_backend.h"
#include "nf4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ql_status ql_nf4_view(ql_nf4 *q, const ql_tensor *t)
{
    memset(q, 0, sizeof *q);
    const ql_quant *s = t->quant;
    if (t->dtype != QL_NF4 || !s || !s->absmax)
        return ql_fail(QL_EINVAL, "not an nf4 tensor with quantization state");
    if (!ql_tensor_is_contiguous(t) || t->offset != 0)
        return ql_fail(QL_EINVAL, "nf4 tensors must be whole and contiguous");
    q->n = ql_tensor_numel(t);
    q->cols = t->ndim ? t->shape[t->ndim - 1] : 1;
    q->rows = q->cols ? q->n / q->cols : 0;
    q->ndim = t->ndim >= 2 ? 2 : 1;
    q->blocksize = s->blocksize;
    q->nblocks = (q->n + s->blocksize - 1) / s->blocksize;
    q->packed = ql_tensor_data(t);
    q->double_quant = s->double_quant;
    ql_nf4_code(q->code);
    if (s->double_quant) {
        if (!s->nested_absmax || !s->nested_code || s->absmax->dtype != QL_U8)
            return ql_fail(QL_EINVAL, "nf4 tensor: double quantization state is incomplete");
        q->absmax_q = ql_tensor_data(s->absmax);
        q->nested_blocksize = s->nested_blocksize;
        q->nested_nblocks = (q->nblocks + s->nested_blocksize - 1) / s->nested_blocksize;
        q->nested_absmax = ql_tensor_data(s->nested_absmax);
        q->nested_offset = s->nested_offset;
        memcpy(q->nested_code, ql_tensor_data(s->nested_code), sizeof q->nested_code);
    } else {
        if (s->absmax->dtype != QL_F32) return ql_fail(QL_EINVAL, "nf4 tensor: absmax must be f32");
        q->absmax = ql_tensor_data(s->absmax);
    }
    snprintf(q->dtype, sizeof q->dtype, "%s", s->orig_dtype == QL_F16 ? "float16" : s->orig_dtype == QL_F32 ? "float32" : "bfloat16");
    q->owned = 0;
    return ql_nf4_validate(q);
}

ql_status ql_cpu_nf4_dequantize(ql_tensor *dst, const ql_tensor *src)
{
    ql_nf4 q;
    QL_TRY(ql_nf4_view(&q, src));
    if (!ql_tensor_is_contiguous(dst)) return ql_fail(QL_EINVAL, "nf4 dequantize: destination must be contiguous");
    switch (dst->dtype) {
    case QL_F32: return ql_nf4_dequantize_f32(&q, ql_tensor_data(dst));
    case QL_BF16: return ql_nf4_dequantize_bf16(&q, ql_tensor_data(dst));
    case QL_F16: {
        float *tmp = malloc(sizeof(float) * (size_t)(q.n ? q.n : 1));
        if (!tmp) return ql_fail(QL_ENOMEM, "out of host memory");
        ql_status s = ql_nf4_dequantize_f32(&q, tmp);
        uint16_t *o = ql_tensor_data(dst);
        for (int64_t i = 0; s == QL_OK && i < q.n; i++) o[i] = ql_f32_to_f16(tmp[i]);
        free(tmp);
        return s;
    }
    default: return ql_fail(QL_EINVAL, "nf4 dequantizes to f32, bf16 or f16");
    }
}

ql_status ql_cpu_nf4_quantize(ql_tensor *dst, const ql_tensor *src)
{
    ql_quant *s = dst->quant;
    int64_t n = ql_tensor_numel(src);
    int64_t cols = src->ndim ? src->shape[src->ndim - 1] : 1, rows = cols ? n / cols : 0;
    ql_nf4 q;
    QL_TRY(ql_nf4_quantize(&q, ql_tensor_data(src), rows, cols, s->blocksize, s->double_quant));
    memcpy(ql_tensor_data(dst), q.packed, (size_t)((q.n + 1) / 2));
    if (q.double_quant) {
        memcpy(ql_tensor_data(s->absmax), q.absmax_q, (size_t)q.nblocks);
        memcpy(ql_tensor_data(s->nested_absmax), q.nested_absmax, sizeof(float) * (size_t)q.nested_nblocks);
        memcpy(ql_tensor_data(s->nested_code), q.nested_code, sizeof q.nested_code);
        s->nested_offset = q.nested_offset;
    } else {
        memcpy(ql_tensor_data(s->absmax), q.absmax, sizeof(float) * (size_t)q.nblocks);
    }
    ql_nf4_free(&q);
    return QL_OK;
}
