/*
 * qltest.c — runner for the C tests registered with QL_TEST.
 */
#include "qltest.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform.h"

#define MAXTESTS 1024

static struct { const char *name; qltest_fn fn; } tests[MAXTESTS];
static int ntests;
static int cur_failed, cur_skipped;
static char skip_reason[256];

void qltest_register(const char *name, qltest_fn fn)
{
    if (ntests < MAXTESTS) { tests[ntests].name = name; tests[ntests].fn = fn; ntests++; }
}

void qltest_failf(const char *file, int line, const char *fmt, ...)
{
    if (cur_failed < 8) {
        va_list ap;
        fprintf(stdout, "    %s:%d: ", file, line);
        va_start(ap, fmt);
        vfprintf(stdout, fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
    }
    cur_failed++;
}

int qltest_failed_now(void) { return cur_failed; }

void qltest_skip(const char *why)
{
    cur_skipped = 1;
    snprintf(skip_reason, sizeof skip_reason, "%s", why);
}

const char *qltest_fixture(const char *name)
{
    static char buf[4096];
    const char *dir = getenv("QL_FIXTURES");
    if (dir) snprintf(buf, sizeof buf, "%s/%s", dir, name);
    else snprintf(buf, sizeof buf, "%s/../tests/fixtures/%s", ql_exe_dir(), name);
    return buf;
}

int qltest_allclose_f32(const char *file, int line, const float *a, const float *r, int64_t n,
                        double atol, double rtol)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)r[i]);
        int ok = d <= atol + rtol * fabs((double)r[i]);
        if (isnan(a[i]) != isnan(r[i])) ok = 0;
        if (isnan(a[i]) && isnan(r[i])) ok = 1;
        if (!ok) {
            if (bad < 5)
                qltest_failf(file, line, "element %lld: got %.9g, expected %.9g (atol %g rtol %g)",
                             (long long)i, a[i], r[i], atol, rtol);
            bad++;
        }
    }
    if (bad > 5) qltest_failf(file, line, "... %lld of %lld elements differ", (long long)bad, (long long)n);
    return bad == 0;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0, skipped = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < ntests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
        cur_failed = 0; cur_skipped = 0;
        double t0 = ql_now();
        tests[i].fn();
        double ms = (ql_now() - t0) * 1e3;
        if (cur_failed) { failed++; printf("FAIL  c/%s (%.0f ms)\n", tests[i].name, ms); }
        else if (cur_skipped) { skipped++; printf("skip  c/%s: %s\n", tests[i].name, skip_reason); }
        else { passed++; printf("ok    c/%s (%.0f ms)\n", tests[i].name, ms); }
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
