/*
 * platform.c — POSIX implementation of platform.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "platform.h"

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

/* ---------------- threads ---------------- */

static int ql_threads = 0;

int ql_num_threads(void)
{
    if (ql_threads <= 0) {
        const char *env = getenv("QL_THREADS");
        int n = env ? atoi(env) : 0;
        if (n <= 0) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            n = c > 0 ? (int)c : 1;
        }
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
   worker runs inline on its caller. */
static struct {
    pthread_mutex_t lock;           /* held by the thread whose loop runs */
    pthread_mutex_t m;              /* guards the fields below */
    pthread_cond_t wake, done;
    int nworkers;
    uint64_t generation;
    ql_task_fn fn;
    void *arg;
    int64_t n, chunk, nchunks;
    int64_t next;                   /* next chunk to take */
    int64_t pending;                /* chunks not finished */
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
           PTHREAD_COND_INITIALIZER, 0, 0, NULL, NULL, 0, 0, 0, 0, 0 };
static _Thread_local int in_worker;

/* takes and runs chunks of the current loop until none is left; called with pool.m held */
static void run_chunks(void)
{
    while (pool.next < pool.nchunks) {
        int64_t c = pool.next++;
        ql_task_fn fn = pool.fn;
        void *arg = pool.arg;
        int64_t b = c * pool.chunk, e = b + pool.chunk < pool.n ? b + pool.chunk : pool.n;
        pthread_mutex_unlock(&pool.m);
        fn(arg, b, e);
        pthread_mutex_lock(&pool.m);
        if (--pool.pending == 0) pthread_cond_broadcast(&pool.done);
    }
}

static void *worker_main(void *p)
{
    (void)p;
    in_worker = 1;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool.m);
    for (;;) {
        while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.m);
        seen = pool.generation;
        run_chunks();
    }
    return NULL;
}

void ql_parallel_for(int64_t n, int64_t grain, ql_task_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t nt = ql_num_threads();
    if (nt > n / grain) nt = n / grain;
    if (nt <= 1 || in_worker || pthread_mutex_trylock(&pool.lock) != 0) { fn(arg, 0, n); return; }
    pthread_mutex_lock(&pool.m);
    while (pool.nworkers < nt - 1 && pool.nworkers < 255) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&t, &at, worker_main, NULL) == 0;
        pthread_attr_destroy(&at);
        if (!ok) break;
        pool.nworkers++;
    }
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
    pthread_cond_broadcast(&pool.wake);
    run_chunks();                        /* the caller works too */
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.m);
    pthread_mutex_unlock(&pool.m);
    pthread_mutex_unlock(&pool.lock);
}

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
