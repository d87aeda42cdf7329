/*
 * platform.c — platform.h for POSIX and, behind _WIN32, for Windows: the thread
 * pool once, over a few primitives of each; then in two halves mappings, mutexes,
 * alarms and atomic files (POSIX, then Win32), the file-name
 * check both share, then file facts, folders, processes, loading, Ctrl-C,
 * terminal and clock (POSIX, then Win32). The Windows side is built with
 * MinGW-w64 and its tests run under Wine by tests/win/run.sh (docs/windows.md).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "platform.h"

#ifdef _WIN32
#include <windows.h>
#include <psapi.h>
#include <errno.h>
#include <io.h>
#include <process.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#else
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#endif

/* ---------------- threads ----------------
   The pool is written once, over these primitives of each platform: a lock (pthread mutex,
   SRW lock), condition variables, a detached worker thread and the count of cores. */
#ifdef _WIN32
typedef SRWLOCK pl_lock;
typedef CONDITION_VARIABLE pl_cond;
#define PL_LOCK_INIT SRWLOCK_INIT
#define PL_COND_INIT CONDITION_VARIABLE_INIT
static void pl_acquire(pl_lock *l) { AcquireSRWLockExclusive(l); }
static void pl_release(pl_lock *l) { ReleaseSRWLockExclusive(l); }
static int pl_try(pl_lock *l) { return TryAcquireSRWLockExclusive(l) != 0; }
static void pl_wait(pl_cond *c, pl_lock *l) { SleepConditionVariableSRW(c, l, INFINITE, 0); }
static void pl_wake_all(pl_cond *c) { WakeAllConditionVariable(c); }
static int pl_cores(void)
{
    DWORD c = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
    return c > 0 ? (int)c : 1;
}
#else
typedef pthread_mutex_t pl_lock;
typedef pthread_cond_t pl_cond;
#define PL_LOCK_INIT PTHREAD_MUTEX_INITIALIZER
#define PL_COND_INIT PTHREAD_COND_INITIALIZER
static void pl_acquire(pl_lock *l) { pthread_mutex_lock(l); }
static void pl_release(pl_lock *l) { pthread_mutex_unlock(l); }
static int pl_try(pl_lock *l) { return pthread_mutex_trylock(l) == 0; }
static void pl_wait(pl_cond *c, pl_lock *l) { pthread_cond_wait(c, l); }
static void pl_wake_all(pl_cond *c) { pthread_cond_broadcast(c); }
static int pl_cores(void)
{
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
}
#endif

static int ql_threads = 0;

int ql_num_threads(void)
{
    if (ql_threads <= 0) {
        const char *env = getenv("QL_THREADS");
        int n = env ? atoi(env) : 0;
        if (n <= 0) n = pl_cores();
        if (n > 256) n = 256;
        ql_threads = n;
    }
    return ql_threads;
}

void ql_set_num_threads(int n) { ql_threads = n > 256 ? 256 : n; }

/* A persistent pool: workers sleep on a condition variable between jobs, so a
   parallel loop costs a wake-up rather than thread creation, and per-thread
   caches (the tokenizer's) survive across calls. One loop runs at a time;
   a loop started while another runs (from another thread) or from inside a
   worker runs inline on its caller. Workers live as long as the process. */
static struct {
    pl_lock lock;                   /* held by the thread whose loop runs */
    pl_lock m;                      /* guards the fields below */
    pl_cond wake, done;
    int nworkers;
    uint64_t generation;
    ql_task_fn fn;
    void *arg;
    int64_t n, chunk, nchunks;
    int64_t next;                   /* next chunk to take */
    int64_t pending;                /* chunks not finished */
} pool = { PL_LOCK_INIT, PL_LOCK_INIT, PL_COND_INIT, PL_COND_INIT, 0, 0, NULL, NULL, 0, 0, 0, 0, 0 };
static _Thread_local int in_worker;

/* takes and runs chunks of the current loop until none is left; called with pool.m held */
static void run_chunks(void)
{
    while (pool.next < pool.nchunks) {
        int64_t c = pool.next++;
        ql_task_fn fn = pool.fn;
        void *arg = pool.arg;
        int64_t b = c * pool.chunk, e = b + pool.chunk < pool.n ? b + pool.chunk : pool.n;
        pl_release(&pool.m);
        fn(arg, b, e);
        pl_acquire(&pool.m);
        if (--pool.pending == 0) pl_wake_all(&pool.done);
    }
}

static void worker_loop(void)
{
    in_worker = 1;
    uint64_t seen = 0;
    pl_acquire(&pool.m);
    for (;;) {
        while (pool.generation == seen) pl_wait(&pool.wake, &pool.m);
        seen = pool.generation;
        run_chunks();
    }
}

/* one more detached worker; 0 when the OS refuses */
#ifdef _WIN32
static unsigned __stdcall worker_main(void *p) { (void)p; worker_loop(); return 0; }
static int pl_spawn_worker(void)
{
    uintptr_t t = _beginthreadex(NULL, 0, worker_main, NULL, 0, NULL);
    if (!t) return 0;
    CloseHandle((HANDLE)t);
    return 1;
}
#else
static void *worker_main(void *p) { (void)p; worker_loop(); return NULL; }
static int pl_spawn_worker(void)
{
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int ok = pthread_create(&t, &at, worker_main, NULL) == 0;
    pthread_attr_destroy(&at);
    return ok;
}
#endif

void ql_parallel_for(int64_t n, int64_t grain, ql_task_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t nt = ql_num_threads();
    if (nt > n / grain) nt = n / grain;
    if (nt <= 1 || in_worker || !pl_try(&pool.lock)) { fn(arg, 0, n); return; }
    pl_acquire(&pool.m);
    while (pool.nworkers < nt - 1 && pool.nworkers < 255 && pl_spawn_worker()) pool.nworkers++;
    /* a few chunks per thread balance uneven work */
    int64_t nchunks = nt * 4 < n / grain ? nt * 4 : n / grain;
    if (nchunks < 1) nchunks = 1;
    pool.fn = fn;
    pool.arg = arg;
    pool.n = n;
    pool.chunk = (n + nchunks - 1) / nchunks;
    pool.nchunks = (n + pool.chunk - 1) / pool.chunk;
    pool.next = 0;
    pool.pending = pool.nchunks;
    pool.generation++;
    pl_wake_all(&pool.wake);
    run_chunks();                        /* the caller works too */
    while (pool.pending > 0) pl_wait(&pool.done, &pool.m);
    pl_release(&pool.m);
    pl_release(&pool.lock);
}

#ifndef _WIN32
struct ql_mutex { pthread_mutex_t m; };

ql_mutex *ql_mutex_new(void)
{
    ql_mutex *m = malloc(sizeof *m);
    if (m) pthread_mutex_init(&m->m, NULL);
    return m;
}
void ql_mutex_free(ql_mutex *m) { if (m) { pthread_mutex_destroy(&m->m); free(m); } }
void ql_mutex_lock(ql_mutex *m) { pthread_mutex_lock(&m->m); }
void ql_mutex_unlock(ql_mutex *m) { pthread_mutex_unlock(&m->m); }

struct ql_alarm {
    pthread_t thread;
    pthread_mutex_t m;
    pthread_cond_t cv;
    struct timespec when;     /* CLOCK_MONOTONIC */
    volatile int *flag;
    int stop;
};

static void *alarm_main(void *arg)
{
    ql_alarm *a = arg;
    pthread_mutex_lock(&a->m);
    while (!a->stop) {
        int rc = pthread_cond_timedwait(&a->cv, &a->m, &a->when);
        if (rc == ETIMEDOUT && !a->stop) { __atomic_store_n(a->flag, 1, __ATOMIC_RELAXED); break; }
    }
    pthread_mutex_unlock(&a->m);
    return NULL;
}

ql_alarm *ql_alarm_start(double seconds, volatile int *flag)
{
    ql_alarm *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    if (!(seconds > 0)) seconds = 0;
    if (seconds > 1e9) seconds = 1e9;
    clock_gettime(CLOCK_MONOTONIC, &a->when);
    double s = (double)a->when.tv_sec + a->when.tv_nsec * 1e-9 + seconds;
    a->when.tv_sec = (time_t)s;
    a->when.tv_nsec = (long)((s - (double)a->when.tv_sec) * 1e9);
    if (a->when.tv_nsec >= 1000000000L) { a->when.tv_sec++; a->when.tv_nsec -= 1000000000L; }
    if (a->when.tv_nsec < 0) a->when.tv_nsec = 0;
    a->flag = flag;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int okm = pthread_mutex_init(&a->m, NULL) == 0;
    int okc = okm && pthread_cond_init(&a->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
    if (!okc || pthread_create(&a->thread, NULL, alarm_main, a) != 0) {
        if (okc) pthread_cond_destroy(&a->cv);
        if (okm) pthread_mutex_destroy(&a->m);
        free(a);
        return NULL;
    }
    return a;
}

void ql_alarm_stop(ql_alarm *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->m);
    a->stop = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->m);
    pthread_join(a->thread, NULL);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->m);
    free(a);
}

/* ---------------- files ---------------- */

ql_status ql_map_file(const char *path, ql_mapping *out)
{
    out->data = NULL; out->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ql_fail(QL_EIO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ql_fail(QL_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) { close(fd); return QL_OK; }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return ql_fail(QL_EIO, "%s: cannot map (%s)", path, strerror(errno));
    out->data = p; out->size = (size_t)st.st_size;
    return QL_OK;
}

void ql_unmap_file(ql_mapping *m)
{
    if (m->data) munmap(m->data, m->size);
    m->data = NULL; m->size = 0;
}

void ql_mapping_dontneed(const void *p, size_t n)
{
    long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || n == 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)ps - 1) & ~((uintptr_t)ps - 1);   /* whole pages inside */
    uintptr_t e = ((uintptr_t)p + n) & ~((uintptr_t)ps - 1);
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

/* "<path>.tmp.<pid>" files of writers that were killed (kill -9, power loss): their
   process is gone, so nobody will rename or remove them; a new write of path does */
static void remove_stale_atomic(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    size_t bl = strlen(base);
    char *names;
    size_t len;
    if (!bl || ql_list_dir(dir, &names, &len) != QL_OK) { ql_clear_error(); return; }
    for (size_t at = 0; at < len; at += strlen(names + at) + 1) {
        const char *nm = names + at;
        if (strncmp(nm, base, bl) || strncmp(nm + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(nm + bl + 5, &end, 10);
        if (end == nm + bl + 5 || *end || pid <= 0 || pid == (long)getpid() || ql_pid_alive(pid)) continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, nm);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode)) unlink(p);
    }
    free(names);
}

ql_status ql_atomic_open(ql_atomic_file *af, const char *path)
{
    remove_stale_atomic(path);
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = strdup(path);
    af->tmp = malloc(n);
    if (!af->path || !af->tmp) { ql_atomic_abort(af); return ql_fail(QL_ENOMEM, "out of memory"); }
    snprintf(af->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    af->fp = fopen(af->tmp, "wb");
    if (!af->fp) {
        ql_status s = ql_fail(QL_EIO, "%s: cannot create (%s); check that the folder exists and is writable",
                              af->tmp, strerror(errno));
        free(af->path); free(af->tmp); af->path = af->tmp = NULL;
        return s;
    }
    return QL_OK;
}

ql_status ql_atomic_commit(ql_atomic_file *af)
{
    int bad = ferror(af->fp);
    if (fflush(af->fp) != 0) bad = 1;
    if (!bad && fsync(fileno(af->fp)) != 0) bad = 1;
    int err = errno;
    if (fclose(af->fp) != 0) bad = 1;
    af->fp = NULL;
    if (bad) {
        ql_status s = ql_fail(QL_EIO, "%s: write failed (%s); is the disk full?", af->path, strerror(err));
        ql_atomic_abort(af);
        return s;
    }
    if (rename(af->tmp, af->path) != 0) {
        ql_status s = ql_fail(QL_EIO, "%s: cannot rename from %s (%s)", af->path, af->tmp, strerror(errno));
        ql_atomic_abort(af);
        return s;
    }
    free(af->path); free(af->tmp);
    af->path = af->tmp = NULL;
    return QL_OK;
}

void ql_atomic_abort(ql_atomic_file *af)
{
    if (af->fp) fclose(af->fp);
    if (af->tmp) remove(af->tmp);
    free(af->path); free(af->tmp);
    memset(af, 0, sizeof *af);
}

#else /* _WIN32 */

/* ================================================================ Win32
 * The same contract as the POSIX code above, on the Win32 API (Windows 10 and
 * later; built with MinGW-w64 or MSVC). Paths are UTF-8 at this interface and
 * UTF-16 below it; '/' and '\\' both separate. The differences that remain are
 * the OS's own: a mapped or open file cannot be replaced or removed until it
 * is unmapped and closed (docs/windows.md). Checked under Wine by tests/win/run.sh.
 */

/* ---------------- helpers ---------------- */

/* UTF-8 -> UTF-16, malloc'd; NULL when the name is not valid UTF-8 or memory is short */
static wchar_t *wide(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
    if (n <= 0) return NULL;
    wchar_t *w = malloc((size_t)n * sizeof *w);
    if (w && MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n) != n) { free(w); w = NULL; }
    return w;
}

/* UTF-16 -> UTF-8 into buf (cap bytes); 0 when it does not fit */
static int narrow(const wchar_t *w, char *buf, int cap)
{
    int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, buf, cap, NULL, NULL);
    if (n <= 0) { if (cap > 0) buf[0] = 0; return 0; }
    return n;
}

/* the system's words for a Win32 error code, for messages; per thread */
static const char *win_error(DWORD code)
{
    static _Thread_local char msg[256];
    DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, code,
                             MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT), msg, sizeof msg, NULL);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r' || msg[n - 1] == ' ' || msg[n - 1] == '.')) msg[--n] = 0;
    if (n == 0) snprintf(msg, sizeof msg, "Windows error %lu", (unsigned long)code);
    return msg;
}

static int is_sep(char c) { return c == '/' || c == '\\'; }

struct ql_mutex { SRWLOCK l; };   /* not recursive, as the default pthread mutex */

ql_mutex *ql_mutex_new(void)
{
    ql_mutex *m = malloc(sizeof *m);
    if (m) InitializeSRWLock(&m->l);
    return m;
}
void ql_mutex_free(ql_mutex *m) { free(m); }
void ql_mutex_lock(ql_mutex *m) { AcquireSRWLockExclusive(&m->l); }
void ql_mutex_unlock(ql_mutex *m) { ReleaseSRWLockExclusive(&m->l); }

struct ql_alarm {
    HANDLE thread;
    SRWLOCK m;
    CONDITION_VARIABLE cv;
    double when;              /* ql_now() seconds */
    volatile int *flag;
    int stop;
};

static unsigned __stdcall alarm_main(void *arg)
{
    ql_alarm *a = arg;
    AcquireSRWLockExclusive(&a->m);
    while (!a->stop) {
        double left = a->when - ql_now();
        if (left <= 0) {
            /* a 32-bit interlocked store: int is 32 bits on every Windows ABI */
            InterlockedExchange((volatile LONG *)a->flag, 1);
            break;
        }
        DWORD ms = left > 86400.0 ? 86400000u : (DWORD)(left * 1e3) + 1;   /* wakes early or late: rechecked */
        SleepConditionVariableSRW(&a->cv, &a->m, ms, 0);
    }
    ReleaseSRWLockExclusive(&a->m);
    return 0;
}

ql_alarm *ql_alarm_start(double seconds, volatile int *flag)
{
    ql_alarm *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    if (!(seconds > 0)) seconds = 0;
    if (seconds > 1e9) seconds = 1e9;
    a->when = ql_now() + seconds;
    a->flag = flag;
    InitializeSRWLock(&a->m);
    InitializeConditionVariable(&a->cv);
    uintptr_t t = _beginthreadex(NULL, 0, alarm_main, a, 0, NULL);
    if (!t) { free(a); return NULL; }
    a->thread = (HANDLE)t;
    return a;
}

void ql_alarm_stop(ql_alarm *a)
{
    if (!a) return;
    AcquireSRWLockExclusive(&a->m);
    a->stop = 1;
    WakeConditionVariable(&a->cv);
    ReleaseSRWLockExclusive(&a->m);
    WaitForSingleObject(a->thread, INFINITE);
    CloseHandle(a->thread);
    free(a);
}

/* ---------------- files ---------------- */

ql_status ql_map_file(const char *path, ql_mapping *out)
{
    out->data = NULL; out->size = 0;
    wchar_t *w = wide(path);
    if (!w) return ql_fail(QL_EIO, "%s: cannot open (not a valid UTF-8 path, or out of memory)", path);
    /* FILE_SHARE_DELETE: others may still rename or delete the name while it is mapped */
    HANDLE h = CreateFileW(w, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                           OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    DWORD err = GetLastError();
    free(w);
    if (h == INVALID_HANDLE_VALUE) {
        if (err == ERROR_ACCESS_DENIED && ql_is_dir(path)) return ql_fail(QL_EIO, "%s: not a regular file", path);
        return ql_fail(QL_EIO, "%s: cannot open (%s)", path, win_error(err));
    }
    LARGE_INTEGER sz;
    if (GetFileType(h) != FILE_TYPE_DISK || !GetFileSizeEx(h, &sz)) {
        CloseHandle(h);
        return ql_fail(QL_EIO, "%s: not a regular file", path);
    }
    if (sz.QuadPart == 0) { CloseHandle(h); return QL_OK; }
    if ((uint64_t)sz.QuadPart > (uint64_t)SIZE_MAX) {
        CloseHandle(h);
        return ql_fail(QL_EIO, "%s: too large to map in this process", path);
    }
    HANDLE fm = CreateFileMappingW(h, NULL, PAGE_READONLY, 0, 0, NULL);
    err = GetLastError();
    CloseHandle(h);                                  /* the mapping keeps the file */
    if (!fm) return ql_fail(QL_EIO, "%s: cannot map (%s)", path, win_error(err));
    void *p = MapViewOfFile(fm, FILE_MAP_READ, 0, 0, 0);
    err = GetLastError();
    CloseHandle(fm);                                 /* the view keeps the mapping */
    if (!p) return ql_fail(QL_EIO, "%s: cannot map (%s)", path, win_error(err));
    out->data = p; out->size = (size_t)sz.QuadPart;
    return QL_OK;
}

void ql_unmap_file(ql_mapping *m)
{
    if (m->data) UnmapViewOfFile(m->data);
    m->data = NULL; m->size = 0;
}

void ql_mapping_dontneed(const void *p, size_t n)
{
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    uintptr_t ps = si.dwPageSize;
    if (ps == 0 || n == 0) return;
    uintptr_t a = ((uintptr_t)p + ps - 1) & ~(ps - 1);   /* whole pages inside */
    uintptr_t e = ((uintptr_t)p + n) & ~(ps - 1);
    /* unlocking pages that are not locked takes them out of the working set:
       the closest Win32 has to MADV_DONTNEED for a file view (it fails, as documented) */
    if (e > a) VirtualUnlock((void *)a, e - a);
}

/* "<path>.tmp.<pid>" files of writers that were killed: see the POSIX version */
static void remove_stale_atomic(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = NULL;
    for (char *q = dir; *q; q++) if (is_sep(*q)) slash = q;
    const char *base = slash ? path + (slash - dir) + 1 : path;
    if (slash == dir) dir[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    size_t bl = strlen(base);
    char *names;
    size_t len;
    if (!bl || ql_list_dir(dir, &names, &len) != QL_OK) { ql_clear_error(); return; }
    for (size_t at = 0; at < len; at += strlen(names + at) + 1) {
        const char *nm = names + at;
        if (strncmp(nm, base, bl) || strncmp(nm + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(nm + bl + 5, &end, 10);
        if (end == nm + bl + 5 || *end || pid <= 0 || pid == ql_pid() || ql_pid_alive(pid)) continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dir, nm);
        wchar_t *w = wide(p);
        if (!w) continue;
        DWORD attr = GetFileAttributesW(w);
        if (attr != INVALID_FILE_ATTRIBUTES && !(attr & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT)))
            DeleteFileW(w);
        free(w);
    }
    free(names);
}

static FILE *wfopen(const char *path, const wchar_t *mode)
{
    wchar_t *w = wide(path);
    if (!w) { errno = EINVAL; return NULL; }
    FILE *f = _wfopen(w, mode);
    free(w);
    return f;
}

ql_status ql_atomic_open(ql_atomic_file *af, const char *path)
{
    remove_stale_atomic(path);
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = strdup(path);
    af->tmp = malloc(n);
    if (!af->path || !af->tmp) { ql_atomic_abort(af); return ql_fail(QL_ENOMEM, "out of memory"); }
    snprintf(af->tmp, n, "%s.tmp.%ld", path, ql_pid());
    af->fp = wfopen(af->tmp, L"wb");
    if (!af->fp) {
        ql_status s = ql_fail(QL_EIO, "%s: cannot create (%s); check that the folder exists and is writable",
                              af->tmp, strerror(errno));
        free(af->path); free(af->tmp); af->path = af->tmp = NULL;
        return s;
    }
    return QL_OK;
}

/* rename over an existing file in one step; fails while the target is open
   without FILE_SHARE_DELETE or mapped (where POSIX would succeed) */
static int replace_file(const char *from, const char *to, DWORD *err)
{
    wchar_t *wf = wide(from), *wt = wide(to);
    int ok = wf && wt && MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH);
    *err = ok ? 0 : (wf && wt ? GetLastError() : ERROR_NO_UNICODE_TRANSLATION);
    free(wf); free(wt);
    return ok;
}

ql_status ql_atomic_commit(ql_atomic_file *af)
{
    int bad = ferror(af->fp);
    if (fflush(af->fp) != 0) bad = 1;
    int err = errno;
    if (!bad && !FlushFileBuffers((HANDLE)_get_osfhandle(_fileno(af->fp)))) { bad = 1; err = EIO; }
    if (fclose(af->fp) != 0) bad = 1;
    af->fp = NULL;
    if (bad) {
        ql_status s = ql_fail(QL_EIO, "%s: write failed (%s); is the disk full?", af->path, strerror(err));
        ql_atomic_abort(af);
        return s;
    }
    DWORD werr;
    if (!replace_file(af->tmp, af->path, &werr)) {
        ql_status s = ql_fail(QL_EIO, "%s: cannot rename from %s (%s)%s", af->path, af->tmp, win_error(werr),
                              werr == ERROR_ACCESS_DENIED || werr == ERROR_SHARING_VIOLATION ||
                              werr == ERROR_USER_MAPPED_FILE
                                  ? "; on Windows a file that is open or mapped cannot be replaced: close it first" : "");
        ql_atomic_abort(af);
        return s;
    }
    free(af->path); free(af->tmp);
    af->path = af->tmp = NULL;
    return QL_OK;
}

void ql_atomic_abort(ql_atomic_file *af)
{
    if (af->fp) fclose(af->fp);
    if (af->tmp) {
        wchar_t *w = wide(af->tmp);
        if (w) { DeleteFileW(w); free(w); }
    }
    free(af->path); free(af->tmp);
    memset(af, 0, sizeof *af);
}
#endif /* _WIN32 */

/* ---------------- both ---------------- */

ql_status ql_check_file_name(const char *name, size_t len, const char *source, const char *what)
{
    if (!name) return ql_fail(QL_EFORMAT, "%s: %s is not a string naming a file", source, what);
    int bad = len == 0 || len > 255 || strlen(name) != len || !strcmp(name, ".") || !strcmp(name, "..") ||
              strchr(name, '/') || strchr(name, '\\');
    if (bad)
        return ql_fail(QL_EFORMAT, "%s: %s \"%.80s\" is not a plain file name inside the folder; names from "
                                   "this file may not point elsewhere (fix or re-download it)", source, what, name);
    return QL_OK;
}

#ifndef _WIN32
int ql_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0; }
int ql_is_dir(const char *path) { struct stat st; return stat(path, &st) == 0 && S_ISDIR(st.st_mode); }
int ql_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
int64_t ql_file_size(const char *path) { struct stat st; return stat(path, &st) == 0 ? (int64_t)st.st_size : -1; }

double ql_file_mtime(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
}

ql_status ql_mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return ql_fail(QL_EINVAL, "mkdir: bad path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ql_fail(QL_EIO, "%s: cannot create folder (%s)", buf, strerror(errno));
            buf[i] = c;
        }
    }
    if (!ql_is_dir(path)) return ql_fail(QL_EIO, "%s: exists and is not a folder", path);
    return QL_OK;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

ql_status ql_remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return QL_OK;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return ql_fail(QL_EIO, "%s: cannot remove (%s)", path, strerror(errno));
    return QL_OK;
}

ql_status ql_rename(const char *from, const char *to)
{
    if (rename(from, to) != 0) return ql_fail(QL_EIO, "cannot rename %s to %s (%s)", from, to, strerror(errno));
    return QL_OK;
}

long ql_pid(void) { return (long)getpid(); }

int ql_pid_alive(long pid)
{
    if (pid <= 0) return 0;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

ql_status ql_list_dir(const char *path, char **names, size_t *len)
{
    *names = NULL;
    *len = 0;
    DIR *d = opendir(path);
    if (!d) return ql_fail(QL_EIO, "%s: cannot list the folder (%s)", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t k = strlen(e->d_name) + 1;
        if (n + k > cap) {
            size_t nc = cap ? 2 * cap : 1024;
            while (nc < n + k) nc *= 2;
            char *nb = realloc(buf, nc);
            if (!nb) { free(buf); closedir(d); return ql_fail(QL_ENOMEM, "%s: out of memory listing the folder", path); }
            buf = nb;
            cap = nc;
        }
        memcpy(buf + n, e->d_name, k);
        n += k;
    }
    closedir(d);
    *names = buf;
    *len = n;
    return QL_OK;
}

const char *ql_exe_dir(void)
{
    static char dir[4096];
    if (dir[0]) return dir;
    Dl_info info;
    /* the object holding this function: the qlora executable or qlora.so */
    if (dladdr((void *)&ql_exe_dir, &info) && info.dli_fname && strchr(info.dli_fname, '/')) {
        char *r = realpath(info.dli_fname, NULL);
        if (r) { snprintf(dir, sizeof dir, "%s", r); free(r); }
    }
    if (!dir[0]) {
        ssize_t k = readlink("/proc/self/exe", dir, sizeof dir - 1);
        if (k <= 0) { dir[0] = 0; return dir; }
        dir[k] = 0;
    }
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    return dir;
}

/* ---------------- dynamic loading ---------------- */

void *ql_dlopen(const char *name) { return dlopen(name, RTLD_NOW | RTLD_LOCAL); }
void *ql_dlsym(void *lib, const char *sym) { return dlsym(lib, sym); }
const char *ql_dlerror(void) { const char *e = dlerror(); return e ? e : ""; }

/* ---------------- Ctrl-C ---------------- */

#include <signal.h>

static volatile sig_atomic_t sig_trapped, sig_hit;

static void trap_handler(int sig)
{
    (void)sig;
    sig_hit = 1;
    signal(SIGINT, trap_handler);
}

void ql_sigint_trap(int on)
{
    sig_trapped = on != 0;
    if (on) signal(SIGINT, trap_handler);
}
int ql_sigint_trapped(void) { return sig_trapped; }
void ql_sigint_note(void) { sig_hit = 1; }
int ql_sigint_take(void) { int h = sig_hit; sig_hit = 0; return h; }
int ql_sigint_pending(void) { return sig_hit; }

/* ---------------- terminal and clock ---------------- */

int ql_isatty(FILE *fp) { return isatty(fileno(fp)); }

int ql_term_width(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    const char *c = getenv("COLUMNS");
    return c && atoi(c) > 0 ? atoi(c) : 80;
}

double ql_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ql_host_memory(size_t *total, size_t *available)
{
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
    *total = pages > 0 ? (size_t)pages * (size_t)ps : 0;
    *available = avail > 0 ? (size_t)avail * (size_t)ps : 0;
}

uint64_t ql_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u;
}

#else /* _WIN32 */

/* the facts of a file or folder, without following a final link (as stat would:
   Windows links are rare enough that the difference does not matter here) */
static int file_facts(const char *path, WIN32_FILE_ATTRIBUTE_DATA *d)
{
    wchar_t *w = wide(path);
    int ok = w && GetFileAttributesExW(w, GetFileExInfoStandard, d);
    free(w);
    return ok;
}

int ql_file_exists(const char *path) { WIN32_FILE_ATTRIBUTE_DATA d; return file_facts(path, &d); }
int ql_is_dir(const char *path)
{
    WIN32_FILE_ATTRIBUTE_DATA d;
    return file_facts(path, &d) && (d.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY);
}

/* a file's identity: volume serial number and file index (st_dev, st_ino) */
static int file_id(const char *path, BY_HANDLE_FILE_INFORMATION *fi)
{
    wchar_t *w = wide(path);
    if (!w) return 0;
    /* no access rights needed; FILE_FLAG_BACKUP_SEMANTICS opens folders too */
    HANDLE h = CreateFileW(w, 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                           FILE_FLAG_BACKUP_SEMANTICS, NULL);
    free(w);
    if (h == INVALID_HANDLE_VALUE) return 0;
    int ok = GetFileInformationByHandle(h, fi) != 0;
    CloseHandle(h);
    return ok;
}

int ql_same_file(const char *a, const char *b)
{
    BY_HANDLE_FILE_INFORMATION fa, fb;
    return file_id(a, &fa) && file_id(b, &fb) && fa.dwVolumeSerialNumber == fb.dwVolumeSerialNumber &&
           fa.nFileIndexHigh == fb.nFileIndexHigh && fa.nFileIndexLow == fb.nFileIndexLow;
}

int64_t ql_file_size(const char *path)
{
    WIN32_FILE_ATTRIBUTE_DATA d;
    if (!file_facts(path, &d)) return -1;
    return (int64_t)(((uint64_t)d.nFileSizeHigh << 32) | d.nFileSizeLow);
}

double ql_file_mtime(const char *path)
{
    WIN32_FILE_ATTRIBUTE_DATA d;
    if (!file_facts(path, &d)) return -1;
    /* FILETIME: 100 ns ticks since 1601-01-01 UTC; 11644473600 s before the Unix epoch */
    uint64_t t = ((uint64_t)d.ftLastWriteTime.dwHighDateTime << 32) | d.ftLastWriteTime.dwLowDateTime;
    return (double)(t / 10000000u) - 11644473600.0 + (double)(t % 10000000u) * 1e-7;
}

ql_status ql_mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return ql_fail(QL_EINVAL, "mkdir: bad path '%s'", path);
    memcpy(buf, path, n + 1);
    size_t start = 1;
    if (n >= 2 && is_sep(buf[0]) && is_sep(buf[1])) {          /* \\server\share\ exists or not: not ours */
        int seps = 0;
        for (start = 2; start < n && seps < 2; start++) if (is_sep(buf[start])) seps++;
    }
    for (size_t i = start; i <= n; i++) {
        if (is_sep(buf[i]) || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            wchar_t *w = wide(buf);
            if (!w) return ql_fail(QL_EINVAL, "mkdir: '%s' is not a valid UTF-8 path", path);
            DWORD err = CreateDirectoryW(w, NULL) ? 0 : GetLastError();
            free(w);
            /* "C:" and folders that exist answer with an error: what matters is a folder there */
            if (err && err != ERROR_ALREADY_EXISTS && !ql_is_dir(buf) && !(i == 2 && buf[1] == ':'))
                return ql_fail(QL_EIO, "%s: cannot create folder (%s)", buf, win_error(err));
            buf[i] = c;
        }
    }
    if (!ql_is_dir(path)) return ql_fail(QL_EIO, "%s: exists and is not a folder", path);
    return QL_OK;
}

/* depth first; a link (reparse point) is removed itself, never followed; read-only is cleared */
static int remove_wtree(const wchar_t *w)
{
    DWORD attr = GetFileAttributesW(w);
    if (attr == INVALID_FILE_ATTRIBUTES) return GetLastError() == ERROR_FILE_NOT_FOUND ||
                                                 GetLastError() == ERROR_PATH_NOT_FOUND;
    if (attr & FILE_ATTRIBUTE_READONLY) SetFileAttributesW(w, attr & ~(DWORD)FILE_ATTRIBUTE_READONLY);
    if (!(attr & FILE_ATTRIBUTE_DIRECTORY)) return DeleteFileW(w) != 0;
    if (!(attr & FILE_ATTRIBUTE_REPARSE_POINT)) {
        size_t n = wcslen(w);
        wchar_t *pat = malloc((n + 3) * sizeof *pat);
        if (!pat) return 0;
        memcpy(pat, w, n * sizeof *pat);
        wcscpy(pat + n, L"\\*");
        WIN32_FIND_DATAW fd;
        HANDLE h = FindFirstFileExW(pat, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL, 0);
        free(pat);
        if (h != INVALID_HANDLE_VALUE) {
            int ok = 1;
            do {
                if (!wcscmp(fd.cFileName, L".") || !wcscmp(fd.cFileName, L"..")) continue;
                size_t k = wcslen(fd.cFileName);
                wchar_t *child = malloc((n + k + 2) * sizeof *child);
                if (!child) { ok = 0; break; }
                memcpy(child, w, n * sizeof *child);
                child[n] = L'\\';
                memcpy(child + n + 1, fd.cFileName, (k + 1) * sizeof *child);
                if (!remove_wtree(child)) ok = 0;
                free(child);
            } while (ok && FindNextFileW(h, &fd));
            FindClose(h);
            if (!ok) return 0;
        }
    }
    return RemoveDirectoryW(w) != 0;
}

ql_status ql_remove_tree(const char *path)
{
    if (!ql_file_exists(path)) return QL_OK;
    wchar_t *w = wide(path);
    if (!w) return ql_fail(QL_EINVAL, "%s: not a valid UTF-8 path", path);
    int ok = remove_wtree(w);
    DWORD err = GetLastError();
    free(w);
    if (!ok) return ql_fail(QL_EIO, "%s: cannot remove (%s)", path, win_error(err));
    return QL_OK;
}

ql_status ql_rename(const char *from, const char *to)
{
    DWORD err;
    if (!replace_file(from, to, &err))
        return ql_fail(QL_EIO, "cannot rename %s to %s (%s)", from, to, win_error(err));
    return QL_OK;
}

long ql_pid(void) { return (long)GetCurrentProcessId(); }

int ql_pid_alive(long pid)
{
    if (pid <= 0) return 0;
    HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
    if (!h) return GetLastError() == ERROR_ACCESS_DENIED;    /* exists, not ours (EPERM) */
    DWORD code = 0;
    int alive = GetExitCodeProcess(h, &code) && code == STILL_ACTIVE;
    CloseHandle(h);
    return alive;
}

ql_status ql_list_dir(const char *path, char **names, size_t *len)
{
    *names = NULL;
    *len = 0;
    size_t pl = strlen(path);
    char *pat8 = malloc(pl + 3);
    if (!pat8) return ql_fail(QL_ENOMEM, "%s: out of memory listing the folder", path);
    memcpy(pat8, path, pl);
    memcpy(pat8 + pl, pl && is_sep(path[pl - 1]) ? "*" : "\\*", pl && is_sep(path[pl - 1]) ? 2 : 3);
    wchar_t *pat = wide(pat8);
    free(pat8);
    if (!pat) return ql_fail(QL_EIO, "%s: cannot list the folder (not a valid UTF-8 path)", path);
    WIN32_FIND_DATAW fd;
    HANDLE h = FindFirstFileExW(pat, FindExInfoBasic, &fd, FindExSearchNameMatch, NULL, 0);
    DWORD err = GetLastError();
    free(pat);
    if (h == INVALID_HANDLE_VALUE) {
        if (err == ERROR_FILE_NOT_FOUND && ql_is_dir(path)) return QL_OK;   /* a drive root with nothing */
        if (err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND)
            return ql_fail(QL_EIO, "%s: cannot list the folder (No such file or directory)", path);
        return ql_fail(QL_EIO, "%s: cannot list the folder (%s)", path, win_error(err));
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    do {
        if (!wcscmp(fd.cFileName, L".") || !wcscmp(fd.cFileName, L"..")) continue;
        char name[MAX_PATH * 4];
        int k = narrow(fd.cFileName, name, (int)sizeof name);
        if (k <= 0) continue;
        if (n + (size_t)k > cap) {
            size_t nc = cap ? 2 * cap : 1024;
            while (nc < n + (size_t)k) nc *= 2;
            char *nb = realloc(buf, nc);
            if (!nb) { free(buf); FindClose(h); return ql_fail(QL_ENOMEM, "%s: out of memory listing the folder", path); }
            buf = nb;
            cap = nc;
        }
        memcpy(buf + n, name, (size_t)k);          /* k counts the NUL */
        n += (size_t)k;
    } while (FindNextFileW(h, &fd));
    FindClose(h);
    *names = buf;
    *len = n;
    return QL_OK;
}

const char *ql_exe_dir(void)
{
    static char dir[4096];
    if (dir[0]) return dir;
    HMODULE mod = NULL;
    wchar_t w[32768];
    /* the module holding this function: qlora.exe or qlora.dll */
    if (!GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            (LPCWSTR)(void *)&ql_exe_dir, &mod))
        mod = NULL;
    DWORD k = GetModuleFileNameW(mod, w, sizeof w / sizeof w[0]);
    if (k == 0 || k >= sizeof w / sizeof w[0] || !narrow(w, dir, (int)sizeof dir)) { dir[0] = 0; return dir; }
    /* '/' like everywhere else in qlora; Windows takes both */
    for (char *q = dir; *q; q++) if (*q == '\\') *q = '/';
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    return dir;
}

/* ---------------- dynamic loading ---------------- */

static _Thread_local DWORD dl_err;

void *ql_dlopen(const char *name)
{
    wchar_t *w = wide(name);
    HMODULE h = w ? LoadLibraryW(w) : NULL;
    dl_err = h ? 0 : (w ? GetLastError() : ERROR_NO_UNICODE_TRANSLATION);
    free(w);
    return (void *)h;
}
void *ql_dlsym(void *lib, const char *sym)
{
    FARPROC f = GetProcAddress((HMODULE)lib, sym);
    dl_err = f ? 0 : GetLastError();
    void *p;
    memcpy(&p, &f, sizeof p);          /* a function pointer as data, as dlsym returns it */
    return p;
}
const char *ql_dlerror(void) { return dl_err ? win_error(dl_err) : ""; }

/* ---------------- Ctrl-C ---------------- */

static volatile LONG sig_trapped, sig_hit, sig_installed;

/* runs on a thread of its own that Windows starts for the event; while trapped,
   Ctrl-C only sets the flag (TRUE: handled), otherwise the default handler ends
   the process, as Ctrl-C does without the trap */
static BOOL WINAPI console_handler(DWORD ev)
{
    if ((ev == CTRL_C_EVENT || ev == CTRL_BREAK_EVENT) && sig_trapped) {
        InterlockedExchange(&sig_hit, 1);
        return TRUE;
    }
    return FALSE;
}

void ql_sigint_trap(int on)
{
    InterlockedExchange(&sig_trapped, on != 0);
    if (on && !InterlockedExchange(&sig_installed, 1)) SetConsoleCtrlHandler(console_handler, TRUE);
}
int ql_sigint_trapped(void) { return sig_trapped != 0; }
void ql_sigint_note(void) { InterlockedExchange(&sig_hit, 1); }
int ql_sigint_take(void) { return InterlockedExchange(&sig_hit, 0) != 0; }
int ql_sigint_pending(void) { return sig_hit != 0; }

/* ---------------- terminal and clock ---------------- */

int ql_isatty(FILE *fp) { return _isatty(_fileno(fp)) != 0; }

int ql_term_width(void)
{
    CONSOLE_SCREEN_BUFFER_INFO ci;
    if (GetConsoleScreenBufferInfo(GetStdHandle(STD_OUTPUT_HANDLE), &ci) && ci.srWindow.Right > ci.srWindow.Left)
        return ci.srWindow.Right - ci.srWindow.Left + 1;
    const char *c = getenv("COLUMNS");
    return c && atoi(c) > 0 ? atoi(c) : 80;
}

double ql_now(void)
{
    static LARGE_INTEGER freq;                /* fixed at boot: a benign race */
    LARGE_INTEGER t;
    if (!freq.QuadPart) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&t);
    return (double)(t.QuadPart / freq.QuadPart) + (double)(t.QuadPart % freq.QuadPart) / (double)freq.QuadPart;
}

void ql_host_memory(size_t *total, size_t *available)
{
    MEMORYSTATUSEX ms;
    ms.dwLength = sizeof ms;
    if (!GlobalMemoryStatusEx(&ms)) { *total = *available = 0; return; }
    *total = (size_t)ms.ullTotalPhys;
    *available = (size_t)ms.ullAvailPhys;
}

uint64_t ql_peak_rss_bytes(void)
{
    PROCESS_MEMORY_COUNTERS pc;
    if (!GetProcessMemoryInfo(GetCurrentProcess(), &pc, sizeof pc)) return 0;
    return (uint64_t)pc.PeakWorkingSetSize;
}

#endif /* _WIN32 */
