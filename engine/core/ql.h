/*
 * ql.h — what every engine file shares: status codes and the error message.
 *
 * The engine never exits or aborts on bad input. A failing function returns a
 * ql_status other than QL_OK (or NULL) after calling ql_fail(), which records a
 * message for the calling thread. Messages name the file, the field and the fix.
 * This header has no dependency beyond the C standard library and never
 * includes Lua.
 */
#ifndef QL_H
#define QL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QL_VERSION "0.1.0"

typedef enum ql_status {
    QL_OK = 0,
    QL_EINVAL,       /* bad argument: wrong shape, dtype, range */
    QL_EIO,          /* file could not be opened, read or written */
    QL_EFORMAT,      /* file content is malformed or truncated */
    QL_ENOMEM,       /* host or device allocation failed */
    QL_ENODEV,       /* no such device, or no GPU support in this build */
    QL_EUNSUPPORTED, /* valid request we do not implement */
    QL_EDEVICE,      /* a device (CUDA) call failed */
    QL_ETIMEOUT      /* a time limit was reached (the work stopped part way) */
} ql_status;

/* Records a printf-style message for this thread and returns code. */
ql_status ql_fail(ql_status code, const char *fmt, ...)
#if defined(__GNUC__) && defined(_WIN32)
    __attribute__((format(gnu_printf, 2, 3)))   /* MinGW: its C99 printf (__USE_MINGW_ANSI_STDIO=1) */
#elif defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prepends context ("reading model.safetensors: ") to the current message. */
ql_status ql_fail_context(ql_status code, const char *fmt, ...)
#if defined(__GNUC__) && defined(_WIN32)
    __attribute__((format(gnu_printf, 2, 3)))   /* MinGW: its C99 printf (__USE_MINGW_ANSI_STDIO=1) */
#elif defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The message of the last failure on this thread ("" when none). */
const char *ql_last_error(void);
void ql_clear_error(void);
const char *ql_status_name(ql_status s);

/* Build facts, filled by the build system. */
const char *ql_build_commit(void);
const char *ql_build_options(void);
const char *ql_build_cuda_archs(void);   /* "75,80,...,120", "" for a CPU-only build */

#ifdef __cplusplus
}
#endif

#define QL_TRY(expr) do { ql_status ql__s = (expr); if (ql__s != QL_OK) return ql__s; } while (0)

#endif
