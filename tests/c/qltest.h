/*
 * qltest.h — the C test harness. Each test is a function registered at load
 * time with QL_TEST(name); checks record failures with file:line and keep
 * going. The runner (qltest.c) prints one line per test and a final
 * "N passed, N failed" line. `qltest PATTERN` runs the tests whose name
 * contains PATTERN.
 */
#ifndef QLTEST_H
#define QLTEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

typedef void (*qltest_fn)(void);
void qltest_register(const char *name, qltest_fn fn);
void qltest_failf(const char *file, int line, const char *fmt, ...);
void qltest_skip(const char *why);
/* Directory holding tests/fixtures (from QL_FIXTURES or relative to the binary). */
const char *qltest_fixture(const char *name);
int qltest_failed_now(void);

#define QL_TEST(name)                                                        \
    static void qltest_##name(void);                                         \
    __attribute__((constructor)) static void qltest_reg_##name(void)         \
    { qltest_register(#name, qltest_##name); }                               \
    static void qltest_##name(void)

#define CHECK(cond) do { if (!(cond)) qltest_failf(__FILE__, __LINE__, "CHECK(%s)", #cond); } while (0)
#define CHECK_MSG(cond, ...) do { if (!(cond)) qltest_failf(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define CHECK_OK(expr) do { ql_status s__ = (expr); if (s__ != QL_OK)                         \
    qltest_failf(__FILE__, __LINE__, "%s -> %s: %s", #expr, ql_status_name(s__), ql_last_error()); } while (0)
#define CHECK_EQ_INT(a, b) do { long long a__ = (long long)(a), b__ = (long long)(b); if (a__ != b__) \
    qltest_failf(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", #a, a__, #b, b__); } while (0)
#define CHECK_NEAR(a, b, tol) do { double a__ = (a), b__ = (b); if (!(fabs(a__ - b__) <= (tol)))        \
    qltest_failf(__FILE__, __LINE__, "%s = %.9g, expected %.9g (tol %g)", #a, a__, b__, (double)(tol)); } while (0)

/* |a-r| <= atol + rtol*|r| for every element; prints the first mismatches. */
int qltest_allclose_f32(const char *file, int line, const float *a, const float *r, int64_t n,
                        double atol, double rtol);
#define CHECK_ALLCLOSE(a, r, n, atol, rtol) qltest_allclose_f32(__FILE__, __LINE__, a, r, n, atol, rtol)

#endif
