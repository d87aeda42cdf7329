/*
 * dtype.c — the dtype traits table and name parsing.
 */
#include "dtype.h"

#include <strings.h>

static const ql_dtype_info infos[QL_NDTYPES] = {
    [QL_F32] = { "f32", "F32", 32, 1 },
    [QL_F16] = { "f16", "F16", 16, 1 },
    [QL_BF16] = { "bf16", "BF16", 16, 1 },
    [QL_I32] = { "i32", "I32", 32, 0 },
    [QL_I64] = { "i64", "I64", 64, 0 },
    [QL_U8] = { "u8", "U8", 8, 0 },
    [QL_NF4] = { "nf4", "NF4", 4, 1 },
};

const ql_dtype_info *ql_dtype_info_of(ql_dtype t) { return (unsigned)t < QL_NDTYPES ? &infos[t] : NULL; }
const char *ql_dtype_name(ql_dtype t) { return (unsigned)t < QL_NDTYPES ? infos[t].name : "?"; }

int ql_dtype_parse(const char *s, ql_dtype *out)
{
    static const struct { const char *name; ql_dtype t; } names[] = {
        { "f32", QL_F32 }, { "float32", QL_F32 }, { "float", QL_F32 },
        { "f16", QL_F16 }, { "float16", QL_F16 }, { "half", QL_F16 },
        { "bf16", QL_BF16 }, { "bfloat16", QL_BF16 },
        { "i32", QL_I32 }, { "int32", QL_I32 },
        { "i64", QL_I64 }, { "int64", QL_I64 }, { "long", QL_I64 },
        { "u8", QL_U8 }, { "uint8", QL_U8 },
        { "nf4", QL_NF4 },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) { *out = names[i].t; return 0; }
    return -1;
}
