/*
 * safetensors.c — see safetensors.h. The header parser is a small strict JSON
 * reader for exactly this format; every failure names the file and the fault.
 */
#include "safetensors.h"
#include "platform.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER (100u << 20)   /* 100 MiB, as the reference implementation */
#define ST_MAX_ELEMENTS (1ull << 53)  /* per tensor: byte sizes and strides stay far from overflow */

typedef struct st_map {
    int refcount;
    ql_mapping m;
} st_map;

struct ql_st_file {
    char *path;
    st_map *map;
    const uint8_t *data;        /* start of the data section */
    uint64_t data_size;
    int n, cap;
    ql_st_entry *e;
    int nmeta;
    char **meta_k, **meta_v;
};

static void map_release(st_map *m)
{
    if (m && __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        ql_unmap_file(&m->m);
        free(m);
    }
}

/* ---------------------------------------------------------------- JSON reader */

typedef struct {
    const char *p, *end;
    const char *path;
    const char *base;
    int depth;
} jr;

static ql_status jfail(jr *r, const char *what)
{
    return ql_fail(QL_EFORMAT, "%s: bad safetensors header at byte %ld: %s; the file is corrupt or not a "
                               "safetensors file (re-download or re-save it)",
                   r->path, (long)(r->p - r->base) + 8, what);
}

static void ws(jr *r) { while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++; }

static int peek(jr *r) { ws(r); return r->p < r->end ? (unsigned char)*r->p : -1; }

static ql_status expect(jr *r, char c)
{
    if (peek(r) != (unsigned char)c) {
        char m[32];
        snprintf(m, sizeof m, "expected '%c'", c);
        return jfail(r, m);
    }
    r->p++;
    return QL_OK;
}

static void put_utf8(char **o, unsigned cp)
{
    char *q = *o;
    if (cp < 0x80) *q++ = (char)cp;
    else if (cp < 0x800) { *q++ = (char)(0xc0 | (cp >> 6)); *q++ = (char)(0x80 | (cp & 0x3f)); }
    else if (cp < 0x10000) { *q++ = (char)(0xe0 | (cp >> 12)); *q++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *q++ = (char)(0x80 | (cp & 0x3f)); }
    else { *q++ = (char)(0xf0 | (cp >> 18)); *q++ = (char)(0x80 | ((cp >> 12) & 0x3f)); *q++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *q++ = (char)(0x80 | (cp & 0x3f)); }
    *o = q;
}

static int hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        *v <<= 4;
        if (c >= '0' && c <= '9') *v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') *v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') *v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    return 0;
}

/* reads a string into a new malloc'd buffer */
static ql_status jstring(jr *r, char **out)
{
    *out = NULL;
    QL_TRY(expect(r, '"'));
    const char *s = r->p;
    size_t n = 0;
    while (s + n < r->end && s[n] != '"') { if (s[n] == '\\') n++; n++; }
    if (s + n >= r->end) return jfail(r, "unterminated string");
    char *buf = malloc(n + 1), *o = buf;
    if (!buf) return ql_fail(QL_ENOMEM, "out of memory");
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) { free(buf); return jfail(r, "control character in string"); }
        if (c != '\\') { *o++ = (char)c; continue; }
        if (r->p >= r->end) break;
        char e = *r->p++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (r->end - r->p < 4 || hex4(r->p, &cp)) { free(buf); return jfail(r, "bad \\u escape"); }
            r->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u' &&
                !hex4(r->p + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                r->p += 6;
            }
            put_utf8(&o, cp);
            break;
        }
        default: free(buf); return jfail(r, "bad escape");
        }
    }
    *o = 0;
    r->p++;  /* closing quote */
    *out = buf;
    return QL_OK;
}

static ql_status jint(jr *r, int64_t *v)
{
    ws(r);
    const char *s = r->p;
    int neg = 0;
    if (s < r->end && *s == '-') { neg = 1; s++; }
    if (s >= r->end || *s < '0' || *s > '9') return jfail(r, "expected an integer");
    uint64_t x = 0;
    while (s < r->end && *s >= '0' && *s <= '9') {
        uint64_t dgt = (uint64_t)(*s++ - '0');
        if (x > ((uint64_t)INT64_MAX - dgt) / 10) return jfail(r, "integer too large");   /* |v| <= INT64_MAX */
        x = x * 10 + dgt;
    }
    if (s < r->end && (*s == '.' || *s == 'e' || *s == 'E')) return jfail(r, "expected an integer, found a fraction");
    r->p = s;
    *v = neg ? -(int64_t)x : (int64_t)x;
    return QL_OK;
}

static ql_status jskip(jr *r)
{
    int c = peek(r);
    if (++r->depth > 64) return jfail(r, "nesting too deep");
    ql_status s = QL_OK;
    if (c == '"') { char *x; s = jstring(r, &x); free(x); }
    else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        r->p++;
        if (peek(r) == close) r->p++;
        else for (;;) {
            if (c == '{') { char *k; if ((s = jstring(r, &k))) break; free(k); if ((s = expect(r, ':'))) break; }
            if ((s = jskip(r))) break;
            if (peek(r) == ',') { r->p++; continue; }
            s = expect(r, close);
            break;
        }
    } else {
        while (r->p < r->end && strchr("-+.0123456789eEtruefalsn", *r->p)) r->p++;
        if (r->p == r->end) s = jfail(r, "unexpected end");
    }
    r->depth--;
    return s;
}

/* ---------------------------------------------------------------- open */

static const struct { const char *name; ql_dtype t; int bytes; } st_dtypes[] = {
    { "F32", QL_F32, 4 }, { "F16", QL_F16, 2 }, { "BF16", QL_BF16, 2 }, { "I32", QL_I32, 4 },
    { "I64", QL_I64, 8 }, { "U8", QL_U8, 1 },
};
static const struct { const char *name; int bytes; } st_other[] = {
    { "F64", 8 }, { "I8", 1 }, { "I16", 2 }, { "U16", 2 }, { "U32", 4 }, { "U64", 8 }, { "BOOL", 1 },
    { "F8_E4M3", 1 }, { "F8_E5M2", 1 },
};

static int dtype_bytes(const char *name, int *supported, ql_dtype *t)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(name, st_dtypes[i].name)) { *supported = 1; *t = st_dtypes[i].t; return st_dtypes[i].bytes; }
    for (size_t i = 0; i < sizeof st_other / sizeof st_other[0]; i++)
        if (!strcmp(name, st_other[i].name)) { *supported = 0; return st_other[i].bytes; }
    return 0;
}

static ql_status parse_entry(jr *r, ql_st_entry *e)
{
    int have_dtype = 0, have_shape = 0, have_off = 0;
    QL_TRY(expect(r, '{'));
    if (peek(r) == '}') { r->p++; return jfail(r, "empty tensor entry"); }
    for (;;) {
        char *k;
        QL_TRY(jstring(r, &k));
        ql_status s = expect(r, ':');
        if (s == QL_OK && !strcmp(k, "dtype")) {
            char *d;
            s = jstring(r, &d);
            if (s == QL_OK) {
                if (strlen(d) >= sizeof e->dtype) s = jfail(r, "unknown dtype");
                else strcpy(e->dtype, d);
                free(d);
                have_dtype = 1;
            }
        } else if (s == QL_OK && !strcmp(k, "shape")) {
            s = expect(r, '[');
            e->ndim = 0;
            if (s == QL_OK && peek(r) == ']') r->p++;
            else while (s == QL_OK) {
                int64_t v;
                if ((s = jint(r, &v))) break;
                if (v < 0) { s = jfail(r, "negative dimension in shape"); break; }
                if (e->ndim >= QL_MAXDIM) { s = jfail(r, "more than 8 dimensions"); break; }
                e->shape[e->ndim++] = v;
                if (peek(r) == ',') { r->p++; continue; }
                s = expect(r, ']');
                break;
            }
            have_shape = 1;
        } else if (s == QL_OK && !strcmp(k, "data_offsets")) {
            int64_t b = 0, en = 0;
            s = expect(r, '[');
            if (s == QL_OK) s = jint(r, &b);
            if (s == QL_OK) s = expect(r, ',');
            if (s == QL_OK) s = jint(r, &en);
            if (s == QL_OK) s = expect(r, ']');
            if (s == QL_OK && (b < 0 || en < b)) s = jfail(r, "data_offsets out of order");
            e->begin = (uint64_t)b; e->end = (uint64_t)en;
            have_off = 1;
        } else if (s == QL_OK) s = jskip(r);
        free(k);
        if (s) return s;
        if (peek(r) == ',') { r->p++; continue; }
        QL_TRY(expect(r, '}'));
        break;
    }
    if (!have_dtype || !have_shape || !have_off) return jfail(r, "tensor entry lacks dtype, shape or data_offsets");
    return QL_OK;
}

static ql_status parse_meta(jr *r, ql_st_file *f)
{
    QL_TRY(expect(r, '{'));
    if (peek(r) == '}') { r->p++; return QL_OK; }
    for (;;) {
        char *k, *v = NULL;
        QL_TRY(jstring(r, &k));
        ql_status s = expect(r, ':');
        if (s == QL_OK) s = peek(r) == '"' ? jstring(r, &v) : jfail(r, "__metadata__ values must be strings");
        if (s) { free(k); return s; }
        char **nk = realloc(f->meta_k, sizeof(char *) * (size_t)(f->nmeta + 1));
        if (nk) f->meta_k = nk;
        char **nv = realloc(f->meta_v, sizeof(char *) * (size_t)(f->nmeta + 1));
        if (nv) f->meta_v = nv;
        if (!nk || !nv) { free(k); free(v); return ql_fail(QL_ENOMEM, "out of memory"); }
        f->meta_k[f->nmeta] = k; f->meta_v[f->nmeta] = v; f->nmeta++;
        if (peek(r) == ',') { r->p++; continue; }
        return expect(r, '}');
    }
}

static int cmp_begin(const void *a, const void *b)
{
    const ql_st_entry *x = *(ql_st_entry *const *)a, *y = *(ql_st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

ql_st_file *ql_st_open(const char *path)
{
    ql_st_file *f = calloc(1, sizeof *f);
    st_map *m = calloc(1, sizeof *m);
    if (!f || !m) { free(f); free(m); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    f->path = strdup(path ? path : "");
    m->refcount = 1;
    f->map = m;
    if (ql_map_file(path, &m->m) != QL_OK) { ql_st_close(f); return NULL; }
    const uint8_t *d = m->m.data;
    uint64_t size = m->m.size;
    if (size < 8) {
        ql_fail(QL_EFORMAT, "%s: %llu bytes is too short for a safetensors file (truncated download?)", path, (unsigned long long)size);
        ql_st_close(f);
        return NULL;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | d[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        ql_fail(QL_EFORMAT, "%s: header length %llu does not fit the file size %llu: the file is truncated or "
                            "not a safetensors file", path, (unsigned long long)hlen, (unsigned long long)size);
        ql_st_close(f);
        return NULL;
    }
    f->data = d + 8 + hlen;
    f->data_size = size - 8 - hlen;
    jr r = { (const char *)d + 8, (const char *)d + 8 + hlen, path, (const char *)d + 8, 0 };
    ql_status s = expect(&r, '{');
    if (s == QL_OK && peek(&r) == '}') r.p++;
    else while (s == QL_OK) {
        char *k;
        if ((s = jstring(&r, &k))) break;
        if ((s = expect(&r, ':'))) { free(k); break; }
        if (!strcmp(k, "__metadata__")) { free(k); s = parse_meta(&r, f); }
        else {
            if (f->n == f->cap) {
                int nc = f->cap ? f->cap * 2 : 64;
                ql_st_entry *ne = realloc(f->e, sizeof *ne * (size_t)nc);
                if (!ne) { free(k); s = ql_fail(QL_ENOMEM, "out of memory"); break; }
                f->e = ne; f->cap = nc;
            }
            ql_st_entry *e = &f->e[f->n];
            memset(e, 0, sizeof *e);
            e->name = k;
            f->n++;
            s = parse_entry(&r, e);
        }
        if (s) break;
        if (peek(&r) == ',') { r.p++; continue; }
        s = expect(&r, '}');
        break;
    }
    if (s == QL_OK) { ws(&r); if (r.p != r.end) s = jfail(&r, "trailing bytes after the header object"); }
    /* check every entry against the data section */
    for (int i = 0; s == QL_OK && i < f->n; i++) {
        ql_st_entry *e = &f->e[i];
        int bytes = dtype_bytes(e->dtype, &e->supported, &e->qdtype);
        if (!bytes) { s = ql_fail(QL_EFORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, e->name, e->dtype); break; }
        /* the product of the nonzero dimensions is bounded too, so that a tensor of no
           elements cannot carry a shape whose strides overflow */
        uint64_t n = 1, span = 1;
        for (int k = 0; k < e->ndim; k++) {
            uint64_t d = (uint64_t)e->shape[k];
            if (d && span > ST_MAX_ELEMENTS / d) {
                s = ql_fail(QL_EFORMAT, "%s: tensor '%s': shape dimension %d (%lld) makes more than 2^53 elements; "
                                        "the header is corrupt", path, e->name, k, (long long)e->shape[k]);
                break;
            }
            if (d) span *= d;
            n *= d;
        }
        if (s != QL_OK) break;
        if (n * (uint64_t)bytes != e->end - e->begin)
            s = ql_fail(QL_EFORMAT, "%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets give %llu",
                        path, e->name, e->dtype, (unsigned long long)(n * (uint64_t)bytes),
                        (unsigned long long)(e->end - e->begin));
        else if (e->end > f->data_size)
            s = ql_fail(QL_EFORMAT, "%s: tensor '%s' ends at byte %llu of the data but the file holds only %llu: "
                                    "the file is truncated (re-download it)",
                        path, e->name, (unsigned long long)e->end, (unsigned long long)f->data_size);
    }
    if (s == QL_OK && f->n > 1) {
        ql_st_entry **order = malloc(sizeof *order * (size_t)f->n);
        if (!order) s = ql_fail(QL_ENOMEM, "out of memory");
        else {
            for (int i = 0; i < f->n; i++) order[i] = &f->e[i];
            qsort(order, (size_t)f->n, sizeof *order, cmp_begin);
            for (int i = 1; i < f->n && s == QL_OK; i++)
                if (order[i]->begin < order[i - 1]->end)
                    s = ql_fail(QL_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data section",
                                path, order[i - 1]->name, order[i]->name);
            free(order);
        }
    }
    if (s != QL_OK) { ql_st_close(f); return NULL; }
    return f;
}

void ql_st_close(ql_st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->e[i].name);
    for (int i = 0; i < f->nmeta; i++) { free(f->meta_k[i]); free(f->meta_v[i]); }
    free(f->e); free(f->meta_k); free(f->meta_v); free(f->path);
    map_release(f->map);
    free(f);
}

const char *ql_st_path(const ql_st_file *f) { return f->path; }
int ql_st_count(const ql_st_file *f) { return f->n; }
const char *ql_st_name(const ql_st_file *f, int i) { return f->e[i].name; }
const ql_st_entry *ql_st_entry_at(const ql_st_file *f, int i) { return &f->e[i]; }
int ql_st_meta_count(const ql_st_file *f) { return f->nmeta; }
const char *ql_st_meta_key(const ql_st_file *f, int i) { return f->meta_k[i]; }
const char *ql_st_meta_value(const ql_st_file *f, int i) { return f->meta_v[i]; }
const void *ql_st_data(const ql_st_file *f, int i) { return f->data + f->e[i].begin; }

void ql_st_drop(const ql_st_file *f, int i)
{
    if (i >= 0 && i < f->n) ql_mapping_dontneed(f->data + f->e[i].begin, (size_t)(f->e[i].end - f->e[i].begin));
}

int ql_st_find(const ql_st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++) if (!strcmp(f->e[i].name, name)) return i;
    return -1;
}

const char *ql_st_meta_get(const ql_st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++) if (!strcmp(f->meta_k[i], key)) return f->meta_v[i];
    return NULL;
}

static void st_storage_release(ql_storage *s) { map_release(s->owner); }

ql_tensor *ql_st_tensor(ql_st_file *f, int i)
{
    if (i < 0 || i >= f->n) { ql_fail(QL_EINVAL, "%s: no tensor #%d", f->path, i); return NULL; }
    ql_st_entry *e = &f->e[i];
    if (!e->supported) {
        ql_fail(QL_EUNSUPPORTED, "%s: tensor '%s' has dtype %s, which qlora does not take "
                                 "(supported: F32, F16, BF16, I32, I64, U8); convert the checkpoint to bf16",
                f->path, e->name, e->dtype);
        return NULL;
    }
    const uint8_t *p = f->data + e->begin;
    size_t esize = (size_t)ql_dtype_bytes(e->qdtype, 1);
    if ((uintptr_t)p % esize != 0) {
        /* safetensors does not align tensors to their element size: copy the odd ones */
        ql_tensor *c = ql_tensor_new(e->qdtype, e->ndim, e->shape, ql_cpu());
        if (c) memcpy(ql_tensor_data(c), p, (size_t)(e->end - e->begin));
        return c;
    }
    __atomic_add_fetch(&f->map->refcount, 1, __ATOMIC_ACQ_REL);
    ql_tensor *t = ql_tensor_wrap(e->qdtype, e->ndim, e->shape, (void *)(f->data + e->begin),
                                  (size_t)(e->end - e->begin), st_storage_release, f->map);
    if (!t) map_release(f->map);
    return t;
}

/* ---------------------------------------------------------------- save */

static void json_str(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { fputc('\\', fp); fputc(*p, fp); }
        else if (*p < 0x20) fprintf(fp, "\\u%04x", *p);
        else fputc(*p, fp);
    }
    fputc('"', fp);
}

static int cmp_raw(const void *a, const void *b)
{
    return strcmp(((const ql_st_raw *)a)->name, ((const ql_st_raw *)b)->name);
}

struct ql_st_writer {
    ql_atomic_file af;
    uint64_t expected, written;
    char *path;
};

ql_st_writer *ql_st_writer_open(const char *path, int n, const ql_st_raw *e,
                                int nmeta, const char *const *mk, const char *const *mv)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(e[i].name, e[j].name)) { ql_fail(QL_EINVAL, "%s: tensor name '%s' appears twice", path, e[i].name); return NULL; }
    /* header into memory first, to know its length */
    char *hdr = NULL;
    size_t hlen = 0;
    FILE *mem = open_memstream(&hdr, &hlen);
    if (!mem) { ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    fputc('{', mem);
    int first = 1;
    if (nmeta > 0) {
        fputs("\"__metadata__\":{", mem);
        for (int i = 0; i < nmeta; i++) {
            if (i) fputc(',', mem);
            json_str(mem, mk[i]); fputc(':', mem); json_str(mem, mv[i]);
        }
        fputc('}', mem);
        first = 0;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!first) fputc(',', mem);
        first = 0;
        json_str(mem, e[i].name);
        fprintf(mem, ":{\"dtype\":\"%s\",\"shape\":[", e[i].dtype);
        for (int d = 0; d < e[i].ndim; d++) fprintf(mem, d ? ",%lld" : "%lld", (long long)e[i].shape[d]);
        fprintf(mem, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + e[i].nbytes));
        off += e[i].nbytes;
    }
    fputc('}', mem);
    fclose(mem);
    while (hlen % 8) {  /* pad with spaces to 8-byte alignment of the data */
        char *h2 = realloc(hdr, hlen + 1);
        if (!h2) { free(hdr); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
        hdr = h2;
        hdr[hlen++] = ' ';
    }
    ql_st_writer *w = calloc(1, sizeof *w);
    if (!w) { free(hdr); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    if (ql_atomic_open(&w->af, path) != QL_OK) { free(hdr); free(w); return NULL; }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    fwrite(len8, 1, 8, w->af.fp);
    fwrite(hdr, 1, hlen, w->af.fp);
    free(hdr);
    w->expected = off;
    w->path = strdup(path);
    return w;
}

ql_status ql_st_writer_write(ql_st_writer *w, const void *data, size_t n)
{
    if (w->written + n > w->expected) return ql_fail(QL_EINVAL, "%s: more data than the header announced", w->path);
    if (n && fwrite(data, 1, n, w->af.fp) != n) return ql_fail(QL_EIO, "%s: write failed; is the disk full?", w->path);
    w->written += n;
    return QL_OK;
}

void ql_st_writer_abort(ql_st_writer *w)
{
    if (!w) return;
    ql_atomic_abort(&w->af);
    free(w->path);
    free(w);
}

ql_status ql_st_writer_close(ql_st_writer *w)
{
    if (w->written != w->expected) {
        ql_status s = ql_fail(QL_EINVAL, "%s: %llu of %llu data bytes written", w->path,
                              (unsigned long long)w->written, (unsigned long long)w->expected);
        ql_st_writer_abort(w);
        return s;
    }
    ql_status s = ql_atomic_commit(&w->af);
    free(w->path);
    free(w);
    return s;
}

ql_status ql_st_save_raw(const char *path, int n, const ql_st_raw *entries_in,
                         int nmeta, const char *const *mk, const char *const *mv)
{
    ql_st_raw *e = malloc(sizeof *e * (size_t)(n > 0 ? n : 1));
    if (!e) return ql_fail(QL_ENOMEM, "out of memory");
    memcpy(e, entries_in, sizeof *e * (size_t)n);
    qsort(e, (size_t)n, sizeof *e, cmp_raw);
    ql_st_writer *w = ql_st_writer_open(path, n, e, nmeta, mk, mv);
    ql_status s = w ? QL_OK : QL_EIO;
    for (int i = 0; s == QL_OK && i < n; i++) s = ql_st_writer_write(w, e[i].data, (size_t)e[i].nbytes);
    if (w) { if (s == QL_OK) s = ql_st_writer_close(w); else ql_st_writer_abort(w); }
    free(e);
    return s;
}
