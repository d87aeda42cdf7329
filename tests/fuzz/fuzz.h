/*
 * fuzz.h — helpers shared by the libFuzzer targets in tests/fuzz (header-only).
 *
 * Parsers that take a path get the input written to one temporary file per
 * process (under $TMPDIR, else /tmp), rewritten on every run. Nothing here is
 * part of the engine; see tests/fuzz/build.sh and docs/fuzzing.md.
 */
#ifndef QL_FUZZ_H
#define QL_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* writes data to this process's temporary file named after suffix; returns its path */
static inline const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix)
{
    static char path[512];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/qlfuzz-%d%s", dir && *dir ? dir : "/tmp", (int)getpid(), suffix);
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); abort(); }
    if (size && fwrite(data, 1, size, f) != size) { perror(path); abort(); }
    fclose(f);
    return path;
}

/* the next piece of data[*pos..size) up to (not including) byte sep; NUL-terminated copy */
static inline char *fuzz_piece(const uint8_t *data, size_t size, size_t *pos, uint8_t sep)
{
    size_t b = *pos, e = b;
    while (e < size && data[e] != sep) e++;
    char *s = malloc(e - b + 1);
    if (!s) abort();
    memcpy(s, data + b, e - b);
    s[e - b] = 0;
    *pos = e < size ? e + 1 : e;
    return s;
}

#endif
