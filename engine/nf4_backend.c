/*
 * nf4_backend.c — CPU NF4 entries of the backend (see nf4_backend.h).
 * Until the bitsandbytes-exact NF4 code lands these report unsupported.
 */
#include "nf4_backend.h"

ql_status ql_cpu_nf4_dequantize(ql_tensor *dst, const ql_tensor *src)
{
    (void)dst; (void)src;
    return ql_fail(QL_EUNSUPPORTED, "nf4 dequantize: not built yet");
}

ql_status ql_cpu_nf4_quantize(ql_tensor *dst, const ql_tensor *src)
{
    (void)dst; (void)src;
    return ql_fail(QL_EUNSUPPORTED, "nf4 quantize: not built yet");
}
