/*
 * strbuf.h — a growable NUL-terminated byte buffer for building text
 * (tokenizer decoding, chat templates, text cleaning). Out of memory sets
 * `oom` and makes further appends no-ops; the caller checks it once at the end.
 * Growth is checked arithmetic: a size that would overflow also sets `oom`.
 * An append may move p: keep offsets, not pointers into it, across appends.
 */
#ifndef QL_STRBUF_H
#define QL_STRBUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct ql_strbuf { char *p; size_t n, cap; int oom; } ql_strbuf;

static inline void ql_strbuf_add(ql_strbuf *b, const void *s, size_t n)
{
    if (b->oom) return;
    if (n > SIZE_MAX - 1 - b->n) { b->oom = 1; return; }   /* the size would overflow */
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc = nc > SIZE_MAX / 2 ? b->n + n + 1 : nc * 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

#endif
