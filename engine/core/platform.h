/*
 * platform.h — the one place that touches the operating system: threads,
 * memory-mapped files, atomic file writes, paths, dynamic loading, terminal
 * and clocks. platform.c implements it for POSIX and, behind _WIN32, on the
 * Win32 API (tested under Wine: tests/win/run.sh).
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

/* A time limit for work that polls a flag (MuPDF's fz_cookie.abort, or a
   loop's own check): ql_alarm_start arms a timer on a thread of its own that
   sets *flag = 1 once `seconds` have passed, unless ql_alarm_stop came first.
   ql_alarm_stop disarms, waits for the thread and frees (NULL: nothing).
   The store is atomic (__atomic, relaxed): readers load it the same way.
   Returns NULL when no thread can be started (then nothing is limited). */
typedef struct ql_alarm ql_alarm;
ql_alarm *ql_alarm_start(double seconds, volatile int *flag);
void ql_alarm_stop(ql_alarm *a);

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
   and renames over path; abort removes the temporary. Never leaves half a file.
   Open also removes the "<path>.tmp.<pid>" files of killed writers (pid not running). */
typedef struct ql_atomic_file {
    FILE *fp;
    char *path;
    char *tmp;
} ql_atomic_file;
ql_status ql_atomic_open(ql_atomic_file *af, const char *path);
ql_status ql_atomic_commit(ql_atomic_file *af);
void      ql_atomic_abort(ql_atomic_file *af);

/* A file name read from a file (an index's weight_map, a config, metadata) must be a
   plain name inside its folder: not empty, not "." or "..", no '/' or '\\', no NUL
   (len: its length as stored, since a JSON string may hold an escaped NUL; name NULL: not a
   string). Otherwise fails with QL_EFORMAT: "<source>: <what> ... is not a plain file
   name". The one check every reader of such names goes through. */
ql_status ql_check_file_name(const char *name, size_t len, const char *source, const char *what);

int     ql_file_exists(const char *path);
int     ql_is_dir(const char *path);
int     ql_same_file(const char *a, const char *b);   /* both exist and are one file or folder (links followed) */
int64_t ql_file_size(const char *path);   /* -1 when missing */
double  ql_file_mtime(const char *path);  /* seconds; -1 when missing */
ql_status ql_mkdir_p(const char *path);
/* removes a file or a folder with everything in it (missing: QL_OK) */
ql_status ql_remove_tree(const char *path);
ql_status ql_rename(const char *from, const char *to);
long ql_pid(void);
/* 1 when a process with this id exists (a temporary named after a pid is stale otherwise) */
int  ql_pid_alive(long pid);
/* The names in a folder, without "." and "..", in no particular order: one malloc'd
   block of NUL-terminated names, *len bytes in all, that the caller frees. */
ql_status ql_list_dir(const char *path, char **names, size_t *len);
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
int  ql_sigint_pending(void);       /* the same without clearing it: long engine work polls this to stop early */

/* ---- terminal and clock ---- */
int    ql_isatty(FILE *fp);
int    ql_term_width(void);
double ql_now(void);            /* monotonic seconds */
uint64_t ql_peak_rss_bytes(void);
void   ql_host_memory(size_t *total, size_t *available);

#endif
