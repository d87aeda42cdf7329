/*
 * json.c — strict JSON parser (see json.h).
 *
 * Recursive descent with an explicit depth limit. Children of an array or
 * object are first pushed on one growable scratch stack shared by all levels,
 * then copied into the arena when the container closes, so each container is
 * one contiguous allocation and parsing does no per-value malloc.
 */
#include "json.h"
#include "platform.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

struct ql_json_doc {
    arena_block *blocks;
    ql_json root;
};

typedef struct parser {
    const unsigned char *s, *p, *end;
    const char *name;
    ql_json_doc *doc;
    ql_json *stack;
    size_t sp, scap;
    int failed;
} parser;

static void *arena_alloc(ql_json_doc *d, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_block *b = d->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->used = 0; b->cap = cap; b->next = d->blocks; d->blocks = b;
    }
    void *r = b->data + b->used;
    b->used += n;
    return r;
}

static ql_status perr(parser *P, const unsigned char *at, const char *msg)
{
    if (P->failed) return QL_EFORMAT;
    P->failed = 1;
    int line = 1, col = 1;
    for (const unsigned char *q = P->s; q < at && q < P->end; q++) {
        if (*q == '\n') { line++; col = 1; }
        else if ((*q & 0xC0) != 0x80) col++;
    }
    return ql_fail(QL_EFORMAT, "%s:%d:%d: %s (the file is not valid JSON; re-export or re-download it)",
                   P->name, line, col, msg);
}

static void skip_ws(parser *P)
{
    while (P->p < P->end && (*P->p == ' ' || *P->p == '\n' || *P->p == '\r' || *P->p == '\t')) P->p++;
}

static ql_status push(parser *P, const ql_json *v)
{
    if (P->sp == P->scap) {
        size_t nc = P->scap ? P->scap * 2 : 1024;
        ql_json *ns = realloc(P->stack, nc * sizeof *ns);
        if (!ns) return ql_fail(QL_ENOMEM, "%s: out of memory while parsing JSON", P->name);
        P->stack = ns; P->scap = nc;
    }
    P->stack[P->sp++] = *v;
    return QL_OK;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static int utf8_valid_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;
        if (c == 0xED && p[1] >= 0xA0) return 0;
        return 3;
    }
    if (c < 0xF5) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;
        if (c == 0xF4 && p[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

static ql_status parse_hex4(parser *P, unsigned *out)
{
    if (P->end - P->p < 4) return perr(P, P->p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(P->p[i]);
        if (h < 0) return perr(P, P->p + i, "bad hex digit in \\u escape");
        v = v * 16 + (unsigned)h;
    }
    P->p += 4;
    *out = v;
    return QL_OK;
}

static ql_status parse_string(parser *P, ql_json *out)
{
    const unsigned char *start = ++P->p; /* after the quote */
    /* first pass: find the end and whether there are escapes */
    const unsigned char *q = start;
    int esc = 0;
    while (q < P->end && *q != '"') {
        if (*q == '\\') { esc = 1; q += 2; continue; }
        if (*q < 0x20) return perr(P, q, "control character inside a string (escape it as \\n, \\t or \\u00XX)");
        q++;
    }
    if (q >= P->end) return perr(P, start - 1, "unterminated string");
    size_t maxlen = (size_t)(q - start);
    if (maxlen >= 0xFFFFFFFFu) return perr(P, start, "string too long");
    char *dst = arena_alloc(P->doc, maxlen + 1);
    if (!dst) return ql_fail(QL_ENOMEM, "%s: out of memory while parsing JSON", P->name);
    size_t n = 0;
    if (!esc) {
        for (const unsigned char *r = start; r < q;) {
            int l = utf8_valid_len(r, q);
            if (!l) return perr(P, r, "invalid UTF-8 in string");
            r += l;
        }
        memcpy(dst, start, maxlen);
        n = maxlen;
        P->p = q + 1;
    } else {
        P->p = start;
        while (*P->p != '"') {
            unsigned c = *P->p;
            if (c == '\\') {
                P->p++;
                if (P->p >= P->end) return perr(P, P->p, "truncated escape");
                unsigned e = *P->p++;
                switch (e) {
                case '"': dst[n++] = '"'; break;
                case '\\': dst[n++] = '\\'; break;
                case '/': dst[n++] = '/'; break;
                case 'b': dst[n++] = '\b'; break;
                case 'f': dst[n++] = '\f'; break;
                case 'n': dst[n++] = '\n'; break;
                case 'r': dst[n++] = '\r'; break;
                case 't': dst[n++] = '\t'; break;
                case 'u': {
                    unsigned cp;
                    QL_TRY(parse_hex4(P, &cp));
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        unsigned lo;
                        if (P->end - P->p < 6 || P->p[0] != '\\' || P->p[1] != 'u')
                            return perr(P, P->p, "lone high surrogate in \\u escape");
                        P->p += 2;
                        QL_TRY(parse_hex4(P, &lo));
                        if (lo < 0xDC00 || lo > 0xDFFF) return perr(P, P->p - 6, "bad low surrogate in \\u escape");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        return perr(P, P->p - 6, "lone low surrogate in \\u escape");
                    }
                    /* the encoded form is never longer than the 6 or 12 escape bytes */
                    if (cp < 0x80) dst[n++] = (char)cp;
                    else if (cp < 0x800) { dst[n++] = (char)(0xC0 | cp >> 6); dst[n++] = (char)(0x80 | (cp & 63)); }
                    else if (cp < 0x10000) {
                        dst[n++] = (char)(0xE0 | cp >> 12); dst[n++] = (char)(0x80 | ((cp >> 6) & 63));
                        dst[n++] = (char)(0x80 | (cp & 63));
                    } else {
                        dst[n++] = (char)(0xF0 | cp >> 18); dst[n++] = (char)(0x80 | ((cp >> 12) & 63));
                        dst[n++] = (char)(0x80 | ((cp >> 6) & 63)); dst[n++] = (char)(0x80 | (cp & 63));
                    }
                    break;
                }
                default: return perr(P, P->p - 1, "unknown escape sequence in string");
                }
            } else {
                int l = utf8_valid_len(P->p, q);
                if (!l) return perr(P, P->p, "invalid UTF-8 in string");
                memcpy(dst + n, P->p, (size_t)l);
                n += (size_t)l;
                P->p += l;
            }
        }
        P->p++;
    }
    dst[n] = 0;
    out->type = QL_JSON_STRING;
    out->n = (uint32_t)n;
    out->u.str = dst;
    return QL_OK;
}

static ql_status parse_number(parser *P, ql_json *out)
{
    const unsigned char *b = P->p, *q = P->p;
    if (q < P->end && *q == '-') q++;
    if (q >= P->end) return perr(P, b, "truncated number");
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9') while (q < P->end && *q >= '0' && *q <= '9') q++;
    else return perr(P, b, "invalid number");
    if (q < P->end && *q == '.') {
        q++;
        if (q >= P->end || *q < '0' || *q > '9') return perr(P, q, "digit expected after '.'");
        while (q < P->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < P->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < P->end && (*q == '+' || *q == '-')) q++;
        if (q >= P->end || *q < '0' || *q > '9') return perr(P, q, "digit expected in exponent");
        while (q < P->end && *q >= '0' && *q <= '9') q++;
    }
    char buf[64];
    size_t len = (size_t)(q - b);
    double v;
    if (len < sizeof buf) {
        memcpy(buf, b, len); buf[len] = 0;
        v = strtod(buf, NULL);
    } else {
        char *t = malloc(len + 1);
        if (!t) return ql_fail(QL_ENOMEM, "%s: out of memory", P->name);
        memcpy(t, b, len); t[len] = 0;
        v = strtod(t, NULL);
        free(t);
    }
    /* 1e999 would become infinity, which JSON cannot write back */
    if (!isfinite(v)) return perr(P, b, "number out of range (beyond what a double holds)");
    P->p = q;
    out->type = QL_JSON_NUMBER;
    out->n = 0;
    out->u.num = v;
    return QL_OK;
}

static ql_status parse_value(parser *P, ql_json *out, int depth);

static ql_status finish_container(parser *P, size_t base, ql_json *out, ql_json_type t)
{
    size_t cnt = P->sp - base;
    if (cnt > 0xFFFFFFFFu) return perr(P, P->p, "container too large");
    out->type = t;
    out->n = (uint32_t)(t == QL_JSON_OBJECT ? cnt / 2 : cnt);
    out->u.items = NULL;
    if (cnt) {
        out->u.items = arena_alloc(P->doc, cnt * sizeof(ql_json));
        if (!out->u.items) return ql_fail(QL_ENOMEM, "%s: out of memory while parsing JSON", P->name);
        memcpy(out->u.items, P->stack + base, cnt * sizeof(ql_json));
    }
    P->sp = base;
    return QL_OK;
}

static ql_status parse_value(parser *P, ql_json *out, int depth)
{
    skip_ws(P);
    if (P->p >= P->end) return perr(P, P->p, "unexpected end of input, a value was expected");
    unsigned c = *P->p;
    if (c == '{' || c == '[') {
        if (depth >= QL_JSON_MAX_DEPTH) return perr(P, P->p, "nesting deeper than 256 levels");
        int obj = c == '{';
        unsigned close = obj ? '}' : ']';
        size_t base = P->sp;
        P->p++;
        skip_ws(P);
        if (P->p < P->end && *P->p == close) { P->p++; return finish_container(P, base, out, obj ? QL_JSON_OBJECT : QL_JSON_ARRAY); }
        for (;;) {
            ql_json v;
            if (obj) {
                skip_ws(P);
                if (P->p >= P->end || *P->p != '"') return perr(P, P->p, "expected a string key in object");
                QL_TRY(parse_string(P, &v));
                QL_TRY(push(P, &v));
                skip_ws(P);
                if (P->p >= P->end || *P->p != ':') return perr(P, P->p, "expected ':' after object key");
                P->p++;
            }
            QL_TRY(parse_value(P, &v, depth + 1));
            QL_TRY(push(P, &v));
            skip_ws(P);
            if (P->p >= P->end) return perr(P, P->p, obj ? "unterminated object" : "unterminated array");
            if (*P->p == ',') { P->p++; continue; }
            if (*P->p == close) { P->p++; break; }
            return perr(P, P->p, obj ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
        }
        return finish_container(P, base, out, obj ? QL_JSON_OBJECT : QL_JSON_ARRAY);
    }
    if (c == '"') return parse_string(P, out);
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(P, out);
    size_t left = (size_t)(P->end - P->p);
    out->n = 0;
    out->u.items = NULL;
    if (left >= 4 && !memcmp(P->p, "null", 4)) { P->p += 4; out->type = QL_JSON_NULL; return QL_OK; }
    if (left >= 4 && !memcmp(P->p, "true", 4)) { P->p += 4; out->type = QL_JSON_TRUE; return QL_OK; }
    if (left >= 5 && !memcmp(P->p, "false", 5)) { P->p += 5; out->type = QL_JSON_FALSE; return QL_OK; }
    return perr(P, P->p, "unexpected character, a value was expected");
}

ql_status ql_json_parse(const char *text, size_t len, const char *name, ql_json_doc **out)
{
    *out = NULL;
    if (!name) name = "<json>";
    if (len >= 0xFFFFFFFFu) return ql_fail(QL_EINVAL, "%s: JSON documents over 4 GiB are not supported", name);
    ql_json_doc *d = calloc(1, sizeof *d);
    if (!d) return ql_fail(QL_ENOMEM, "%s: out of memory", name);
    parser P = { (const unsigned char *)text, (const unsigned char *)text, (const unsigned char *)text + len,
                 name, d, NULL, 0, 0, 0 };
    /* a UTF-8 byte order mark is tolerated */
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) P.p += 3;
    ql_status s = parse_value(&P, &d->root, 0);
    if (s == QL_OK) {
        skip_ws(&P);
        if (P.p != P.end) s = perr(&P, P.p, "extra characters after the JSON value");
    }
    free(P.stack);
    if (s != QL_OK) { ql_json_free(d); return s; }
    *out = d;
    return QL_OK;
}

ql_status ql_json_parse_file(const char *path, ql_json_doc **out)
{
    ql_mapping m;
    *out = NULL;
    ql_status s = ql_map_file(path, &m);
    if (s != QL_OK) return s;
    s = ql_json_parse(m.data ? (const char *)m.data : "", m.size, path, out);
    ql_unmap_file(&m);
    return s;
}

void ql_json_free(ql_json_doc *doc)
{
    if (!doc) return;
    arena_block *b = doc->blocks;
    while (b) { arena_block *n = b->next; free(b); b = n; }
    free(doc);
}

const ql_json *ql_json_root(const ql_json_doc *doc) { return doc ? &doc->root : NULL; }

const ql_json *ql_json_get(const ql_json *obj, const char *key)
{
    if (!obj || obj->type != QL_JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < obj->n; i++) {
        const ql_json *k = &obj->u.items[2 * i];
        if (k->n == kl && !memcmp(k->u.str, key, kl)) return &obj->u.items[2 * i + 1];
    }
    return NULL;
}

const ql_json *ql_json_at(const ql_json *arr, size_t i)
{
    if (!arr || arr->type != QL_JSON_ARRAY || i >= arr->n) return NULL;
    return &arr->u.items[i];
}

const ql_json *ql_json_key_at(const ql_json *obj, size_t i)
{
    if (!obj || obj->type != QL_JSON_OBJECT || i >= obj->n) return NULL;
    return &obj->u.items[2 * i];
}

const ql_json *ql_json_value_at(const ql_json *obj, size_t i)
{
    if (!obj || obj->type != QL_JSON_OBJECT || i >= obj->n) return NULL;
    return &obj->u.items[2 * i + 1];
}

size_t ql_json_len(const ql_json *v)
{
    if (!v) return 0;
    if (v->type == QL_JSON_ARRAY || v->type == QL_JSON_OBJECT || v->type == QL_JSON_STRING) return v->n;
    return 0;
}

const char *ql_json_str(const ql_json *v) { return v && v->type == QL_JSON_STRING ? v->u.str : NULL; }
double ql_json_num(const ql_json *v, double dflt) { return v && v->type == QL_JSON_NUMBER ? v->u.num : dflt; }
int ql_json_bool(const ql_json *v, int dflt)
{
    if (!v) return dflt;
    if (v->type == QL_JSON_TRUE) return 1;
    if (v->type == QL_JSON_FALSE) return 0;
    return dflt;
}
int ql_json_is(const ql_json *v, ql_json_type t) { return v && v->type == t; }

const char *ql_json_type_name(ql_json_type t)
{
    static const char *names[] = { "null", "false", "true", "number", "string", "array", "object" };
    return (unsigned)t < 7 ? names[t] : "?";
}

/* ---------------------------------------------------------------- writing */

static void write_str(FILE *fp, const char *s, size_t n)
{
    fputc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { fputc('\\', fp); fputc(c, fp); }
        else if (c == '\n') fputs("\\n", fp);
        else if (c == '\t') fputs("\\t", fp);
        else if (c == '\r') fputs("\\r", fp);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

static void write_value(FILE *fp, const ql_json *v, int indent, int depth, const char *skip_key)
{
    char pad[130];
    int w = indent > 0 ? indent * (depth + 1) : 0;
    if (w > 128) w = 128;
    memset(pad, ' ', (size_t)w);
    pad[w] = 0;
    const char *nl = indent > 0 ? "\n" : "";
    switch (v->type) {
    case QL_JSON_NULL: fputs("null", fp); break;
    case QL_JSON_FALSE: fputs("false", fp); break;
    case QL_JSON_TRUE: fputs("true", fp); break;
    case QL_JSON_NUMBER:
        /* the range first: converting a double outside long long is undefined */
        if (fabs(v->u.num) < 9e15 && v->u.num == (double)(long long)v->u.num) fprintf(fp, "%lld", (long long)v->u.num);
        else fprintf(fp, "%.17g", v->u.num);
        break;
    case QL_JSON_STRING: write_str(fp, v->u.str, v->n); break;
    case QL_JSON_ARRAY:
        fputc('[', fp);
        for (uint32_t i = 0; i < v->n; i++) {
            fprintf(fp, "%s%s%s", i ? "," : "", nl, pad);
            write_value(fp, &v->u.items[i], indent, depth + 1, NULL);
        }
        if (v->n) fprintf(fp, "%s%.*s", nl, indent > 0 ? w - indent : 0, pad);
        fputc(']', fp);
        break;
    case QL_JSON_OBJECT: {
        fputc('{', fp);
        int first = 1;
        for (uint32_t i = 0; i < v->n; i++) {
            const ql_json *k = &v->u.items[2 * i];
            if (skip_key && !strcmp(k->u.str, skip_key)) continue;
            fprintf(fp, "%s%s%s", first ? "" : ",", nl, pad);
            first = 0;
            write_str(fp, k->u.str, k->n);
            fputs(indent > 0 ? ": " : ":", fp);
            write_value(fp, &v->u.items[2 * i + 1], indent, depth + 1, NULL);
        }
        if (!first) fprintf(fp, "%s%.*s", nl, indent > 0 ? w - indent : 0, pad);
        fputc('}', fp);
        break;
    }
    }
}

void ql_json_write(FILE *fp, const ql_json *v, int indent, const char *skip_key)
{
    write_value(fp, v, indent, 0, skip_key);
    if (indent > 0) fputc('\n', fp);
}
