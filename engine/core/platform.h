/*
 * platform.h — the one place that touches the operating system: threads,
 * memory-mapped files, atomic file writes, paths, dynamic loading, terminal
 * and clocks. POSIX is implemented in platform.c; a Windows port replaces
 * only that file.
 */
#ifndef QL_PLATFORM_H
#define QL_PLATFORM_H

#include "ql.h"
#include <stdio.h>

/* ---- threads ---- */
typedef void (*ql_task_fn)(void *arg, int64_t begin, int64_t end);

/* Number of worker threads used by ql_parallel_for (QL_THREADS or the core count). */
int  ql_num_threads(void);
void ql_set_num_threads(int n);
/* Splits [0, n) into contiguous ranges of at least grain items and runs fn on
   them in parallel; returns when all are done. Runs inline when n is small. */
void ql_parallel_for(int64_t n, int64_t grain, ql_task_fn fn, void *arg);

typedef struct ql_mutex ql_mutex;
ql_mutex *ql_mutex_new(void);
void ql_mutex_free(ql_mutex *m);
void ql_mutex_lock(ql_mutex *m);
void ql_mutex_unlock(ql_mutex *m);

/* ---- files ---- */
typedef struct ql_mapping {
    void  *data;
    size_t size;
} ql_mapping;

/* Maps a whole file read-only. An empty file maps to data == NULL, size 0. */
ql_status ql_map_file(const char *path, ql_mapping *out);
void      ql_unmap_file(ql_mapping *m);
/* Tells the OS that the mapped pages of [p, p+n) will not be needed soon, so
   reading a large file once (quantizing while loading) does not keep it resident. */
void      ql_mapping_dontneed(const void *p, size_t n);

/* Atomic output: ql_atomic_open writes to "<path>.tmp.<pid>"; commit fsyncs
   and renames over path; abort removes the temporary. Never leaves half a file. */
typedef struct ql_atomic_file {
    FILE *fp;
    char *path;
    char *tmp;
} ql_atomic_file;
ql_status ql_atomic_open(ql_atomic_file *af, const char *path);
ql_status ql_atomic_commit(ql_atomic_file *af);
void      ql_atomic_abort(ql_atomic_file *af);

int     ql_file_exists(const char *path);
int     ql_is_dir(const char *path);
int64_t ql_file_size(const char *path);   /* -1 when missing */
double  ql_file_mtime(const char *path);  /* seconds; -1 when missing */
ql_status ql_mkdir_p(const char *path);
/* removes a file or a folder with everything in it (missing: QL_OK) */
ql_status ql_remove_tree(const char *path);
ql_status ql_rename(const char *from, const char *to);
long ql_pid(void);
/* Directory of the running executable (or of the loaded module), without the
   trailing slash; "" when it cannot be found. */
const char *ql_exe_dir(void);

/* ---- dynamic loading ---- */
void *ql_dlopen(const char *name);
void *ql_dlsym(void *lib, const char *sym);
const char *ql_dlerror(void);

/* ---- Ctrl-C ----
   With the trap on, SIGINT only sets a flag (a training loop checks it, saves
   a checkpoint and stops); off, Ctrl-C interrupts as usual. */
void ql_sigint_trap(int on);
int  ql_sigint_trapped(void);
void ql_sigint_note(void);          /* called by a SIGINT handler while trapped */
int  ql_sigint_take(void);          /* 1 when Ctrl-C was pressed since the last call */

/* ---- terminal and clock ---- */
int    ql_isatty(FILE *fp);
int    ql_term_width(void);
double ql_now(void);            /* monotonic seconds */
uint64_t ql_peak_rss_bytes(void);
void   ql_host_memory(size_t *total, size_t *available);

#endif
