/*
 * memstream.c — memstream.h: a temporary file per stream, read back by qlwin_fclose.
 */
#ifdef _WIN32
#include <windows.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <stdlib.h>

FILE *qlwin_open_memstream(char **buf, size_t *len);
int qlwin_fclose(FILE *fp);

static struct { FILE *fp; char **buf; size_t *len; } open_streams[16];
static SRWLOCK lock = SRWLOCK_INIT;

FILE *qlwin_open_memstream(char **buf, size_t *len)
{
    wchar_t dir[MAX_PATH + 1], name[MAX_PATH + 1];
    if (!GetTempPathW(MAX_PATH + 1, dir) || !GetTempFileNameW(dir, L"qlm", 0, name)) return NULL;
    HANDLE h = CreateFileW(name, GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                           FILE_ATTRIBUTE_TEMPORARY | FILE_FLAG_DELETE_ON_CLOSE, NULL);
    if (h == INVALID_HANDLE_VALUE) return NULL;
    int fd = _open_osfhandle((intptr_t)h, _O_RDWR | _O_BINARY);
    if (fd < 0) { CloseHandle(h); return NULL; }
    FILE *fp = _fdopen(fd, "w+b");
    if (!fp) { _close(fd); return NULL; }
    AcquireSRWLockExclusive(&lock);
    for (size_t i = 0; i < sizeof open_streams / sizeof open_streams[0]; i++)
        if (!open_streams[i].fp) {
            open_streams[i].fp = fp; open_streams[i].buf = buf; open_streams[i].len = len;
            ReleaseSRWLockExclusive(&lock);
            *buf = NULL; *len = 0;
            return fp;
        }
    ReleaseSRWLockExclusive(&lock);
    fclose(fp);
    return NULL;
}

int qlwin_fclose(FILE *fp)
{
    char **buf = NULL;
    size_t *len = NULL;
    AcquireSRWLockExclusive(&lock);
    for (size_t i = 0; i < sizeof open_streams / sizeof open_streams[0]; i++)
        if (open_streams[i].fp == fp) {
            buf = open_streams[i].buf; len = open_streams[i].len;
            open_streams[i].fp = NULL;
            break;
        }
    ReleaseSRWLockExclusive(&lock);
    if (!buf) return fclose(fp);
    int bad = fflush(fp) != 0 || fseek(fp, 0, SEEK_END) != 0;
    long n = bad ? -1 : ftell(fp);
    char *p = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!p || fseek(fp, 0, SEEK_SET) != 0 || fread(p, 1, (size_t)n, fp) != (size_t)n) { free(p); p = NULL; }
    if (p) { p[n] = 0; *buf = p; *len = (size_t)n; }
    return fclose(fp) != 0 || !p ? EOF : 0;
}
#else
typedef int qlwin_memstream_unused;   /* ISO C wants something in a translation unit */
#endif
