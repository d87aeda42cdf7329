/*
 * error.c — per-thread error messages for the engine (see ql.h).
 */
#include "ql.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define QL_ERRMAX 1024

static _Thread_local char ql_errbuf[QL_ERRMAX];

ql_status ql_fail(ql_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ql_errbuf, sizeof ql_errbuf, fmt, ap);
    va_end(ap);
    return code;
}

ql_status ql_fail_context(ql_status code, const char *fmt, ...)
{
    char prefix[QL_ERRMAX], old[QL_ERRMAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, ql_errbuf, sizeof old);
    size_t p = strlen(prefix), o = strnlen(old, sizeof old - 1);
    if (p > QL_ERRMAX - 1) p = QL_ERRMAX - 1;
    if (o > QL_ERRMAX - 1 - p) o = QL_ERRMAX - 1 - p;
    memcpy(ql_errbuf, prefix, p);
    memcpy(ql_errbuf + p, old, o);
    ql_errbuf[p + o] = 0;
    return code;
}

const char *ql_last_error(void) { return ql_errbuf; }
void ql_clear_error(void) { ql_errbuf[0] = 0; }

const char *ql_status_name(ql_status s)
{
    switch (s) {
    case QL_OK: return "ok";
    case QL_EINVAL: return "invalid argument";
    case QL_EIO: return "i/o error";
    case QL_EFORMAT: return "bad format";
    case QL_ENOMEM: return "out of memory";
    case QL_ENODEV: return "no device";
    case QL_EUNSUPPORTED: return "unsupported";
    case QL_EDEVICE: return "device error";
    case QL_ETIMEOUT: return "time limit reached";
    }
    return "unknown";
}

#if defined(__has_include)
#if __has_include("ql_build.h")
#include "ql_build.h"
#endif
#endif
#ifndef QL_COMMIT
#define QL_COMMIT "unknown"
#endif
#ifndef QL_BUILD_OPTIONS
#define QL_BUILD_OPTIONS ""
#endif
const char *ql_build_commit(void) { return QL_COMMIT; }
const char *ql_build_options(void) { return QL_BUILD_OPTIONS; }
#ifndef QL_CUDA_ARCHS
#define QL_CUDA_ARCHS ""
#endif
const char *ql_build_cuda_archs(void) { return QL_CUDA_ARCHS; }
