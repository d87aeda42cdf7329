/*
 * test_win_platform.c — the platform layer (platform.h) through its contract
 * only, so that the same checks pass on both implementations in platform.c:
 * under Wine for Win32 (tests/win/run.sh) and natively for POSIX
 * (tests/win/run.sh --native). Mapped files, atomic replacement, folders,
 * file facts, UTF-8 names, processes, the thread pool, mutexes, alarms,
 * clocks, dynamic loading, memory, and a safetensors file written and mapped
 * back (the atomic writer and the mapping together).
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "platform.h"
#include "safetensors.h"
#include "tensor.h"

/* a fresh folder for one test: <temp>/qlwin_<pid>_<name> */
static const char *scratch(const char *name)
{
    static char dir[1024];
#ifdef _WIN32
    const char *t = getenv("TEMP");
    if (!t || !*t) t = ".";
#else
    const char *t = getenv("TMPDIR");
    if (!t || !*t) t = "/tmp";
#endif
    snprintf(dir, sizeof dir, "%s/qlwin_%ld_%s", t, ql_pid(), name);
    ql_remove_tree(dir);
    ql_status s = ql_mkdir_p(dir);
    CHECK_MSG(s == QL_OK, "mkdir_p %s: %s", dir, ql_last_error());
    return dir;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fputs(text, f);
    return fclose(f) == 0;
}

static int file_is(const char *path, const char *text)
{
    char buf[256] = { 0 };
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return n == strlen(text) && !memcmp(buf, text, n);
}

/* the names of a folder, sorted and joined by ',' */
static const char *listing(const char *dir)
{
    static char out[1024];
    char *names, *v[64];
    size_t len;
    int n = 0;
    out[0] = 0;
    if (ql_list_dir(dir, &names, &len) != QL_OK) return "(error)";
    for (size_t at = 0; at < len && n < 64; at += strlen(names + at) + 1) v[n++] = names + at;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) { char *t = v[j]; v[j] = v[j - 1]; v[j - 1] = t; }
    for (int i = 0; i < n; i++) {
        if (i) strncat(out, ",", sizeof out - strlen(out) - 1);
        strncat(out, v[i], sizeof out - strlen(out) - 1);
    }
    free(names);
    return out;
}

QL_TEST(platform_map_file)
{
    const char *d = scratch("map");
    char p[1100], e[1100];
    snprintf(p, sizeof p, "%s/data.bin", d);
    snprintf(e, sizeof e, "%s/empty.bin", d);
    CHECK(write_file(p, "0123456789abcdef"));
    CHECK(write_file(e, ""));
    ql_mapping m;
    CHECK_OK(ql_map_file(p, &m));
    CHECK_EQ_INT(m.size, 16);
    CHECK(m.data && !memcmp(m.data, "0123456789abcdef", 16));
    ql_mapping_dontneed(m.data, m.size);                  /* advice only: the data stays readable */
    CHECK(m.data && !memcmp(m.data, "0123456789abcdef", 16));
    ql_unmap_file(&m);
    CHECK(m.data == NULL && m.size == 0);
    CHECK_OK(ql_map_file(e, &m));
    CHECK(m.data == NULL && m.size == 0);
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/missing.bin", d);
    CHECK(ql_map_file(missing, &m) == QL_EIO);
    CHECK(strstr(ql_last_error(), "missing.bin") != NULL);
    CHECK(ql_map_file(d, &m) == QL_EIO);                  /* a folder */
    CHECK_OK(ql_remove_tree(d));
}

QL_TEST(platform_atomic_replace)
{
    const char *d = scratch("atomic");
    char p[1100];
    snprintf(p, sizeof p, "%s/out.txt", d);
    CHECK(write_file(p, "old"));
    ql_atomic_file af;
    CHECK_OK(ql_atomic_open(&af, p));
    fputs("new contents", af.fp);
    CHECK(file_is(p, "old"));                             /* nothing visible before the commit */
    CHECK_OK(ql_atomic_commit(&af));
    CHECK(file_is(p, "new contents"));
    CHECK_EQ_INT(ql_file_size(p), 12);
    CHECK(strcmp(listing(d), "out.txt") == 0);            /* no temporary left */
    /* a temporary of a writer that died (no such process) goes on the next write */
    char stale[1200];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", p, 2147483000L);
    CHECK(write_file(stale, "half"));
    CHECK(!ql_pid_alive(2147483000L));
    CHECK_OK(ql_atomic_open(&af, p));
    ql_atomic_abort(&af);
    CHECK_MSG(strcmp(listing(d), "out.txt") == 0, "left: %s", listing(d));
    CHECK(file_is(p, "new contents"));
    /* ql_rename replaces an existing target too (MoveFileEx with MOVEFILE_REPLACE_EXISTING) */
    char q[1100];
    snprintf(q, sizeof q, "%s/other.txt", d);
    CHECK(write_file(q, "other"));
    CHECK_OK(ql_rename(q, p));
    CHECK(file_is(p, "other") && !ql_file_exists(q));
    CHECK(ql_rename(q, p) == QL_EIO);                     /* the source is gone now */
    /* a folder that does not exist: a message that names the temporary */
    char bad[1200];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.txt", d);
    CHECK(ql_atomic_open(&af, bad) == QL_EIO);
    CHECK(strstr(ql_last_error(), "x.txt.tmp.") != NULL);
    CHECK_OK(ql_remove_tree(d));
}

QL_TEST(platform_folders_and_facts)
{
    const char *d = scratch("dirs");
    char deep[1100], f[1200], g[1200], same[1200];
    snprintf(deep, sizeof deep, "%s/a/b/c", d);
    CHECK_OK(ql_mkdir_p(deep));
    CHECK_OK(ql_mkdir_p(deep));                           /* again: it exists, fine */
    CHECK(ql_is_dir(deep) && ql_file_exists(deep));
    snprintf(f, sizeof f, "%s/a/b/file.txt", d);
    snprintf(g, sizeof g, "%s/a/b/c/g.txt", d);
    CHECK(write_file(f, "hello") && write_file(g, "x"));
    CHECK(ql_mkdir_p(f) != QL_OK);                        /* a file is in the way */
    CHECK(!ql_is_dir(f) && ql_file_exists(f));
    CHECK_EQ_INT(ql_file_size(f), 5);
    double now = (double)time(NULL), mt = ql_file_mtime(f);
    CHECK_MSG(mt > now - 120 && mt < now + 120, "mtime %.0f, now %.0f", mt, now);
    snprintf(same, sizeof same, "%s/a/./b/c/../file.txt", d);
    CHECK(ql_same_file(f, same));
    CHECK(!ql_same_file(f, g));
    CHECK(strcmp(listing(d), "a") == 0);
    char ab[1100];
    snprintf(ab, sizeof ab, "%s/a/b", d);
    CHECK(strcmp(listing(ab), "c,file.txt") == 0);
    char nope[1100];
    snprintf(nope, sizeof nope, "%s/nope", d);
    CHECK(ql_file_size(nope) == -1 && ql_file_mtime(nope) == -1 && !ql_file_exists(nope));
    char *names; size_t len;
    CHECK(ql_list_dir(nope, &names, &len) == QL_EIO);
    CHECK_OK(ql_remove_tree(nope));                       /* missing: nothing to do */
    CHECK_OK(ql_remove_tree(d));
    CHECK(!ql_file_exists(d));
}

QL_TEST(platform_utf8_names)
{
    const char *d = scratch("utf8");
    char sub[1100], p[1200];
    snprintf(sub, sizeof sub, "%s/m\xc3\xbc" "ll \xe6\x97\xa5\xe6\x9c\xac", d);   /* "müll 日本" */
    CHECK_OK(ql_mkdir_p(sub));
    snprintf(p, sizeof p, "%s/\xc3\xa9t\xc3\xa9.bin", sub);                       /* "été.bin" */
    ql_atomic_file af;
    CHECK_OK(ql_atomic_open(&af, p));
    fputs("abc", af.fp);
    CHECK_OK(ql_atomic_commit(&af));
    CHECK(strcmp(listing(sub), "\xc3\xa9t\xc3\xa9.bin") == 0);
    CHECK_EQ_INT(ql_file_size(p), 3);
    ql_mapping m;
    CHECK_OK(ql_map_file(p, &m));
    CHECK(m.size == 3 && !memcmp(m.data, "abc", 3));
    ql_unmap_file(&m);
    CHECK_OK(ql_remove_tree(d));
    CHECK(!ql_file_exists(d));
}

QL_TEST(platform_process_clock_memory)
{
    CHECK(ql_pid() > 0);
    CHECK(ql_pid_alive(ql_pid()));
    CHECK(!ql_pid_alive(0) && !ql_pid_alive(-5));
    double t0 = ql_now(), t1 = ql_now();
    CHECK(t1 >= t0 && t0 > 0);
    size_t total = 0, avail = 0;
    ql_host_memory(&total, &avail);
    CHECK(total > 0 && avail <= total);
    CHECK(ql_peak_rss_bytes() > 0);
    const char *dir = ql_exe_dir();
    CHECK_MSG(dir[0] && ql_is_dir(dir), "exe dir '%s'", dir);
    CHECK(ql_term_width() > 0);
    CHECK(ql_isatty(stdout) == 0 || ql_isatty(stdout) == 1);
    ql_sigint_take();
    CHECK(!ql_sigint_pending());
    ql_sigint_trap(1);
    CHECK(ql_sigint_trapped());
    ql_sigint_note();
    CHECK(ql_sigint_pending() && ql_sigint_take() && !ql_sigint_take());
    ql_sigint_trap(0);
    CHECK(!ql_sigint_trapped());
}

QL_TEST(platform_dynamic_loading)
{
    CHECK(ql_dlopen("qlwin_no_such_library_42") == NULL);
    CHECK(ql_dlerror()[0] != 0);
#ifdef _WIN32
    const char *lib = "kernel32.dll", *sym = "GetCurrentProcessId";
#else
    const char *lib = "libc.so.6", *sym = "getpid";
#endif
    void *h = ql_dlopen(lib);
    CHECK_MSG(h != NULL, "%s: %s", lib, ql_dlerror());
    if (h) {
        CHECK(ql_dlsym(h, sym) != NULL);
        CHECK(ql_dlsym(h, "qlwin_no_such_symbol") == NULL);
    }
}

typedef struct { ql_mutex *m; int64_t sum; int64_t calls; } locked_sum;

static void add_locked(void *arg, int64_t b, int64_t e)
{
    locked_sum *s = arg;
    for (int64_t i = b; i < e; i++) {
        ql_mutex_lock(s->m);
        s->sum += i;
        ql_mutex_unlock(s->m);
    }
    ql_mutex_lock(s->m);
    s->calls++;
    ql_mutex_unlock(s->m);
}

static void nested(void *arg, int64_t b, int64_t e)
{
    /* a loop started inside a worker runs inline: it must still cover its range */
    locked_sum *s = arg;
    for (int64_t i = b; i < e; i++) ql_parallel_for(10, 1, add_locked, s);
}

QL_TEST(platform_threads_and_mutex)
{
    int saved = ql_num_threads();
    ql_set_num_threads(4);
    CHECK_EQ_INT(ql_num_threads(), 4);
    locked_sum s = { ql_mutex_new(), 0, 0 };
    CHECK(s.m != NULL);
    for (int rep = 0; rep < 20; rep++) ql_parallel_for(100000, 100, add_locked, &s);
    CHECK_EQ_INT(s.sum, 20 * (100000LL * 99999 / 2));
    CHECK(s.calls >= 20);
    s.sum = 0;
    ql_parallel_for(8, 1, nested, &s);
    CHECK_EQ_INT(s.sum, 8 * 45);
    ql_mutex_free(s.m);
    ql_set_num_threads(saved);
}

QL_TEST(platform_alarm)
{
    volatile int flag = 0;
    double t0 = ql_now();
    ql_alarm *a = ql_alarm_start(0.05, &flag);
    CHECK(a != NULL);
    while (!__atomic_load_n(&flag, __ATOMIC_RELAXED) && ql_now() - t0 < 10) { }
    double took = ql_now() - t0;
    CHECK(flag == 1);
    CHECK_MSG(took >= 0.04 && took < 5, "fired after %.3f s", took);
    ql_alarm_stop(a);
    /* stopped before its time: it never fires and the stop does not wait for it */
    volatile int flag2 = 0;
    t0 = ql_now();
    a = ql_alarm_start(100, &flag2);
    CHECK(a != NULL);
    ql_alarm_stop(a);
    CHECK(flag2 == 0);
    CHECK_MSG(ql_now() - t0 < 5, "stop took %.3f s", ql_now() - t0);
    ql_alarm_stop(NULL);
}

QL_TEST(platform_safetensors_round_trip)
{
    const char *d = scratch("st");
    char p[1100];
    snprintf(p, sizeof p, "%s/w.safetensors", d);
    float a[6] = { 1, -2, 3.5f, 0, 1e-3f, 7 };
    uint8_t b[3] = { 1, 2, 255 };
    ql_st_raw e[2] = { { "a", "F32", 2, { 2, 3 }, a, sizeof a }, { "b", "U8", 1, { 3 }, b, sizeof b } };
    const char *mk[1] = { "format" }, *mv[1] = { "pt" };
    CHECK_OK(ql_st_save_raw(p, 2, e, 1, mk, mv));
    ql_st_file *f = ql_st_open(p);
    CHECK_MSG(f != NULL, "%s", ql_last_error());
    if (f) {
        CHECK_EQ_INT(ql_st_count(f), 2);
        int ia = ql_st_find(f, "a");
        CHECK(ia >= 0 && !memcmp(ql_st_data(f, ia), a, sizeof a));
        ql_tensor *t = ia >= 0 ? ql_st_tensor(f, ia) : NULL;
        CHECK(t && t->ndim == 2 && t->shape[1] == 3 && ((float *)ql_tensor_data(t))[2] == 3.5f);
        const char *fmt = ql_st_meta_get(f, "format");
        CHECK(fmt && !strcmp(fmt, "pt"));
        ql_tensor_release(t);
        ql_st_close(f);                                   /* unmapped: the file may be replaced */
    }
    a[0] = 42;
    CHECK_OK(ql_st_save_raw(p, 2, e, 1, mk, mv));
    f = ql_st_open(p);
    CHECK(f && ((const float *)ql_st_data(f, ql_st_find(f, "a")))[0] == 42);
    ql_st_close(f);
    CHECK(strcmp(listing(d), "w.safetensors") == 0);
    CHECK_OK(ql_remove_tree(d));
}
