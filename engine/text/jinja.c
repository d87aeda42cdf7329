/*
 * jinja.c — a Jinja2 interpreter for chat templates (see jinja.h for what it covers).
 *
 * Three stages: the lexer turns the source into one token stream (text runs,
 * tag delimiters and expression tokens), applying whitespace control, trim_blocks
 * and lstrip_blocks exactly as Jinja2's lexer does; the parser builds a tree of
 * nodes (precedence as jinja2/parser.py); the renderer walks it. Everything of a
 * template lives in one arena, everything of a render in another, so errors
 * unwind with longjmp and free nothing by hand. Limits keep hostile templates
 * bounded: nesting depth, call depth, range() size and output size.
 */
#include "jinja.h"

#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_DEPTH 200                 /* nesting of expressions / blocks, and of calls */
#define MAX_RANGE 1000000             /* items of one range() */
#define MAX_OUT ((size_t)1 << 30)     /* bytes of one render */

/* ------------------------------------------------------------------ arena */

typedef struct chunk { struct chunk *next; size_t used, cap; max_align_t data[]; } chunk;
typedef struct arena { chunk *head; } arena;

typedef struct errctx { jmp_buf jb; ql_status code; char msg[512]; int line; } errctx;

static void arena_free(arena *a)
{
    for (chunk *c = a->head, *n; c; c = n) { n = c->next; free(c); }
    a->head = NULL;
}

static void *arena_alloc(arena *a, size_t n, errctx *E)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        chunk *c = malloc(sizeof *c + cap);
        if (!c) { E->code = QL_ENOMEM; snprintf(E->msg, sizeof E->msg, "out of memory"); longjmp(E->jb, 1); }
        c->next = a->head; c->used = 0; c->cap = cap;
        a->head = c;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

/* ------------------------------------------------------------------ values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_MACRO, V_FUNC /* a global function, u.s its name */ };

typedef struct jlist jlist;
typedef struct jdict jdict;
struct node;
typedef struct jv {
    int t;
    union {
        int b;
        int64_t i;
        double f;
        struct { const char *p; size_t n; } s;
        jlist *l;
        jdict *d;
        struct { const struct node *m; struct frame *closure; } m;
    } u;
} jv;
struct jlist { size_t n, cap; jv *v; int tuple; };
struct jdict { size_t n, cap; jv *k, *v; };

static jv v_undef(void) { jv v; memset(&v, 0, sizeof v); v.t = V_UNDEF; return v; }
static jv v_none(void) { jv v; memset(&v, 0, sizeof v); v.t = V_NONE; return v; }
static jv v_bool(int b) { jv v; memset(&v, 0, sizeof v); v.t = V_BOOL; v.u.b = !!b; return v; }
static jv v_int(int64_t i) { jv v; memset(&v, 0, sizeof v); v.t = V_INT; v.u.i = i; return v; }
static jv v_float(double f) { jv v; memset(&v, 0, sizeof v); v.t = V_FLOAT; v.u.f = f; return v; }
static jv v_str(const char *p, size_t n) { jv v; memset(&v, 0, sizeof v); v.t = V_STR; v.u.s.p = p; v.u.s.n = n; return v; }
static jv v_cstr(const char *p) { return v_str(p, strlen(p)); }

/* ------------------------------------------------------------------ tokens and nodes */

enum { T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct token { int k; const char *p; size_t n; int line; double f; int64_t i; } token;

enum {
    N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_CALLBLOCK, N_FILTERBLOCK, N_BREAK, N_CONTINUE,
    N_BODY,
    E_CONST, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS, E_NOT, E_AND, E_OR,
    E_COND, E_LIST, E_TUPLE, E_DICT, E_CMP, E_CONCAT
};

typedef struct node {
    int k, line;
    int op;                          /* operator; E_TEST: negated */
    jv v;                            /* E_CONST value; names (E_NAME, E_ATTR, filter/test names, set target) */
    struct node *a, *b, *c;          /* operands; N_IF/N_FOR: a = condition/iterable, c = filter */
    struct node **kids; size_t nk;   /* args, items, body */
    struct node **kids2; size_t nk2; /* kwarg values, dict values, else body, defaults */
    jv *names; size_t nn;            /* kwarg names, params, loop targets, cmp ops */
} node;

struct ql_jinja { arena A; node *root; char *name; char *src; };

/* ------------------------------------------------------------------ errors */

static void fail(errctx *E, ql_status code, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(E->msg, sizeof E->msg, fmt, ap);
    va_end(ap);
    E->code = code;
    E->line = line;
    longjmp(E->jb, 1);
}

/* ------------------------------------------------------------------ lexer */

typedef struct lexer {
    const char *s; size_t n, pos; int line;
    token *t; size_t nt, cap;
    arena *A; errctx *E;
} lexer;

static void push_tok(lexer *L, int k, const char *p, size_t n)
{
    if (L->nt == L->cap) {
        size_t nc = L->cap ? L->cap * 2 : 256;
        token *nt = arena_alloc(L->A, nc * sizeof *nt, L->E);
        if (L->nt) memcpy(nt, L->t, L->nt * sizeof *nt);
        L->t = nt; L->cap = nc;
    }
    token *t = &L->t[L->nt++];
    memset(t, 0, sizeof *t);
    t->k = k; t->p = p; t->n = n; t->line = L->line;
}

static int count_lines(const char *p, size_t n) { int c = 0; for (size_t i = 0; i < n; i++) c += p[i] == '\n'; return c; }
static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* expression tokens up to the closing delimiter `close` ("}}" or "%}"); returns the
   position after it and sets *strip to the '-' / '+' marker before it */
static size_t lex_expr(lexer *L, size_t i, const char *close, int *strip)
{
    const char *s = L->s;
    size_t n = L->n;
    for (;;) {
        while (i < n && is_ws(s[i])) { if (s[i] == '\n') L->line++; i++; }
        if (i >= n) fail(L->E, QL_EFORMAT, L->line, "unclosed tag: expected '%s'", close);
        if ((s[i] == '-' || s[i] == '+') && i + 3 <= n && !memcmp(s + i + 1, close, 2)) {
            *strip = s[i];
            return i + 3;
        }
        if (i + 1 < n && !memcmp(s + i, close, 2)) { *strip = 0; return i + 2; }
        char c = s[i];
        if (isalpha((unsigned char)c) || c == '_') {
            size_t j = i;
            while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
            push_tok(L, T_NAME, s + i, j - i);
            i = j;
        } else if (isdigit((unsigned char)c)) {
            size_t j = i;
            int isf = 0;
            while (j < n && (isdigit((unsigned char)s[j]) || s[j] == '_')) j++;
            if (j + 1 < n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
                isf = 1; j++;
                while (j < n && (isdigit((unsigned char)s[j]) || s[j] == '_')) j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-')) k++;
                if (k < n && isdigit((unsigned char)s[k])) {
                    isf = 1; j = k;
                    while (j < n && isdigit((unsigned char)s[j])) j++;
                }
            }
            char buf[64];
            size_t m = 0;
            for (size_t k = i; k < j && m < sizeof buf - 1; k++) if (s[k] != '_') buf[m++] = s[k];
            buf[m] = 0;
            push_tok(L, isf ? T_FLOAT : T_INT, s + i, j - i);
            if (isf) L->t[L->nt - 1].f = strtod(buf, NULL);
            else L->t[L->nt - 1].i = strtoll(buf, NULL, 10);
            i = j;
        } else if (c == '\'' || c == '"') {
            /* unescape into the arena (Python string escapes) */
            size_t j = i + 1;
            char *out = arena_alloc(L->A, n - i + 1, L->E);
            size_t m = 0;
            int line0 = L->line;
            while (j < n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < n) {
                    char e = s[j + 1];
                    j += 2;
                    switch (e) {
                    case 'n': out[m++] = '\n'; break;
                    case 't': out[m++] = '\t'; break;
                    case 'r': out[m++] = '\r'; break;
                    case '0': out[m++] = '\0'; break;
                    case 'b': out[m++] = '\b'; break;
                    case 'f': out[m++] = '\f'; break;
                    case 'v': out[m++] = '\v'; break;
                    case '\\': out[m++] = '\\'; break;
                    case '\'': out[m++] = '\''; break;
                    case '"': out[m++] = '"'; break;
                    case '\n': L->line++; break;
                    case 'x': case 'u': case 'U': {
                        int digs = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                        uint32_t cp = 0;
                        for (int d = 0; d < digs; d++, j++) {
                            if (j >= n || !isxdigit((unsigned char)s[j]))
                                fail(L->E, QL_EFORMAT, L->line, "bad \\%c escape in a string", e);
                            cp = cp * 16 + (uint32_t)(isdigit((unsigned char)s[j]) ? s[j] - '0' : (tolower((unsigned char)s[j]) - 'a' + 10));
                        }
                        if (cp < 0x80) out[m++] = (char)cp;
                        else if (cp < 0x800) { out[m++] = (char)(0xC0 | cp >> 6); out[m++] = (char)(0x80 | (cp & 63)); }
                        else if (cp < 0x10000) { out[m++] = (char)(0xE0 | cp >> 12); out[m++] = (char)(0x80 | (cp >> 6 & 63)); out[m++] = (char)(0x80 | (cp & 63)); }
                        else { out[m++] = (char)(0xF0 | cp >> 18); out[m++] = (char)(0x80 | (cp >> 12 & 63)); out[m++] = (char)(0x80 | (cp >> 6 & 63)); out[m++] = (char)(0x80 | (cp & 63)); }
                        break;
                    }
                    default: out[m++] = '\\'; out[m++] = e; break;
                    }
                } else {
                    if (s[j] == '\n') L->line++;
                    out[m++] = s[j++];
                }
            }
            if (j >= n) fail(L->E, QL_EFORMAT, line0, "unterminated string");
            push_tok(L, T_STR, out, m);
            i = j + 1;
        } else {
            static const char *ops2[] = { "==", "!=", "<=", ">=", "//", "**", NULL };
            size_t len = 1;
            for (int k = 0; ops2[k]; k++) if (i + 1 < n && !memcmp(s + i, ops2[k], 2)) len = 2;
            if (len == 1 && !strchr("+-*/%~()[]{}.,:|<>=!", c))
                fail(L->E, QL_EFORMAT, L->line, "unexpected character '%c' in a tag", c);
            push_tok(L, T_OP, s + i, len);
            i += len;
        }
    }
}

static void lex(lexer *L)
{
    const char *s = L->s;
    size_t n = L->n, i = 0;
    int strip_next = 0;      /* 1: drop one '\n' (trim_blocks), 2: drop all whitespace ('-') */
    int line_starting = 1;
    while (i < n) {
        /* the next tag start */
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
        if (j + 1 >= n) j = n;
        const char *tp = s + i;
        size_t tn = j - i;
        if (strip_next == 2) { while (tn && is_ws(*tp)) { tp++; tn--; } }
        else if (strip_next == 1 && tn && *tp == '\n') { tp++; tn--; }
        strip_next = 0;
        int kind = 0;
        char sign = 0;
        if (j < n) {
            kind = s[j + 1];
            if (j + 2 < n && (s[j + 2] == '-' || s[j + 2] == '+')) sign = s[j + 2];
            if (sign == '-') {
                while (tn && is_ws(tp[tn - 1])) tn--;
            } else if (sign != '+' && kind != '{') {         /* lstrip_blocks */
                size_t l = tn;
                while (l && tp[l - 1] != '\n') l--;
                int only_ws = l < tn;
                for (size_t k = l; k < tn; k++) if (!is_ws(tp[k])) only_ws = 0;
                if ((l > 0 || line_starting) && only_ws) tn = l;
            }
        }
        if (tn) push_tok(L, T_TEXT, tp, tn);
        L->line += count_lines(s + i, j - i);
        if (j >= n) break;
        size_t k = j + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t e = k;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}')) e++;
            if (e + 1 >= n) fail(L->E, QL_EFORMAT, L->line, "unclosed comment");
            int dash = e > k && s[e - 1] == '-', plus = e > k && s[e - 1] == '+';
            L->line += count_lines(s + j, e + 2 - j);
            i = e + 2;
            strip_next = dash ? 2 : plus ? 0 : 1;
        } else {
            int var = kind == '{';
            push_tok(L, var ? T_VBEGIN : T_BBEGIN, s + j, 2);
            size_t start_tok = L->nt;
            int st = 0;
            i = lex_expr(L, k, var ? "}}" : "%}", &st);
            push_tok(L, var ? T_VEND : T_BEND, s + i - 2, 2);
            if (st == '-') strip_next = 2;
            else if (!var && st != '+') strip_next = 1;
            /* {% raw %}: the text up to {% endraw %} verbatim */
            if (!var && L->nt == start_tok + 2 && L->t[start_tok].k == T_NAME && L->t[start_tok].n == 3 &&
                !memcmp(L->t[start_tok].p, "raw", 3)) {
                L->nt -= 3;
                size_t e = i;
                for (;; e++) {
                    if (e + 1 >= n) fail(L->E, QL_EFORMAT, L->line, "unclosed raw block");
                    if (s[e] != '{' || s[e + 1] != '%') continue;
                    size_t q = e + 2;
                    if (q < n && (s[q] == '-' || s[q] == '+')) q++;
                    while (q < n && is_ws(s[q])) q++;
                    if (q + 6 <= n && !memcmp(s + q, "endraw", 6)) break;
                }
                const char *rp = s + i;
                size_t rn = e - i;
                if (strip_next == 2) while (rn && is_ws(*rp)) { rp++; rn--; }
                else if (strip_next == 1 && rn && *rp == '\n') { rp++; rn--; }
                if (e + 2 < n && s[e + 2] == '-') while (rn && is_ws(rp[rn - 1])) rn--;
                if (rn) push_tok(L, T_TEXT, rp, rn);
                L->line += count_lines(s + i, e - i);
                int st2 = 0;
                size_t save = L->nt;
                i = lex_expr(L, e + 2 + ((s[e + 2] == '-' || s[e + 2] == '+') ? 1 : 0), "%}", &st2);
                L->nt = save;
                strip_next = st2 == '-' ? 2 : st2 == '+' ? 0 : 1;
            }
        }
        line_starting = i > 0 && (strip_next == 1 ? (i < n && s[i] == '\n') : s[i - 1] == '\n');
        if (strip_next == 2) {
            /* Jinja's `-%}` consumes the whitespace after it: the line starts anew if that ended with '\n' */
            size_t q = i;
            while (q < n && is_ws(s[q])) q++;
            line_starting = q > i ? s[q - 1] == '\n' : line_starting;
        }
    }
    push_tok(L, T_EOF, s + n, 0);
}

/* ------------------------------------------------------------------ parser */

typedef struct parser { token *t; size_t nt, i; arena *A; errctx *E; int depth; } parser;

static token *peek(parser *P) { return &P->t[P->i]; }
static token *peekn(parser *P, size_t k) { return &P->t[P->i + k < P->nt ? P->i + k : P->nt - 1]; }
static token *next(parser *P) { token *t = &P->t[P->i]; if (P->i + 1 < P->nt) P->i++; return t; }
static int tok_is(const token *t, int k, const char *s) { return t->k == k && t->n == strlen(s) && !memcmp(t->p, s, t->n); }
static int is_op(parser *P, const char *s) { return tok_is(peek(P), T_OP, s); }
static int is_name(parser *P, const char *s) { return tok_is(peek(P), T_NAME, s); }
static int accept_op(parser *P, const char *s) { if (is_op(P, s)) { next(P); return 1; } return 0; }
static int accept_name(parser *P, const char *s) { if (is_name(P, s)) { next(P); return 1; } return 0; }

static const char *tok_desc(const token *t)
{
    switch (t->k) {
    case T_EOF: return "end of template";
    case T_VEND: return "'}}'";
    case T_BEND: return "'%}'";
    case T_TEXT: return "text";
    case T_STR: return "a string";
    default: return NULL;
    }
}

static void expect_op(parser *P, const char *s)
{
    if (!accept_op(P, s)) {
        token *t = peek(P);
        const char *d = tok_desc(t);
        if (d) fail(P->E, QL_EFORMAT, t->line, "expected '%s', got %s", s, d);
        fail(P->E, QL_EFORMAT, t->line, "expected '%s', got '%.*s'", s, (int)t->n, t->p);
    }
}

static jv expect_name(parser *P)
{
    token *t = peek(P);
    if (t->k != T_NAME) {
        const char *d = tok_desc(t);
        if (d) fail(P->E, QL_EFORMAT, t->line, "expected a name, got %s", d);
        fail(P->E, QL_EFORMAT, t->line, "expected a name, got '%.*s'", (int)t->n, t->p);
    }
    next(P);
    return v_str(t->p, t->n);
}

static node *mk(parser *P, int k)
{
    node *x = arena_alloc(P->A, sizeof *x, P->E);
    memset(x, 0, sizeof *x);
    x->k = k;
    x->line = peek(P)->line;
    return x;
}

/* a growable node array in the arena */
typedef struct nvec { node **v; size_t n, cap; } nvec;
static void nv_push(parser *P, nvec *a, node *x)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 4;
        node **nv = arena_alloc(P->A, nc * sizeof *nv, P->E);
        if (a->n) memcpy(nv, a->v, a->n * sizeof *nv);
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = x;
}
typedef struct svec { jv *v; size_t n, cap; } svec;
static void sv_push(parser *P, svec *a, jv x)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 4;
        jv *nv = arena_alloc(P->A, nc * sizeof *nv, P->E);
        if (a->n) memcpy(nv, a->v, a->n * sizeof *nv);
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = x;
}

static node *parse_expr(parser *P);
static node *parse_or(parser *P);
static node *parse_unary(parser *P, int with_filter);
static node *parse_primary(parser *P);
static node *parse_postfix(parser *P, node *x);
static node *parse_filter_expr(parser *P, node *x);

static void enter(parser *P)
{
    if (++P->depth > MAX_DEPTH) fail(P->E, QL_EFORMAT, peek(P)->line, "template nested too deeply");
}

/* call arguments after '(': positional and name=value */
static void parse_args(parser *P, node *call)
{
    nvec args = { 0 }, kw = { 0 };
    svec names = { 0 };
    while (!is_op(P, ")")) {
        if (args.n + kw.n) expect_op(P, ",");
        if (is_op(P, ")")) break;
        if (peek(P)->k == T_NAME && tok_is(peekn(P, 1), T_OP, "=")) {
            sv_push(P, &names, expect_name(P));
            next(P);
            nv_push(P, &kw, parse_expr(P));
        } else {
            nv_push(P, &args, parse_expr(P));
        }
    }
    expect_op(P, ")");
    call->kids = args.v; call->nk = args.n;
    call->kids2 = kw.v; call->nk2 = kw.n;
    call->names = names.v; call->nn = names.n;
}

static node *parse_expr(parser *P)
{
    enter(P);
    node *x = parse_or(P);
    while (is_name(P, "if")) {
        next(P);
        node *c = mk(P, E_COND);
        c->a = parse_or(P);
        c->b = x;
        c->c = accept_name(P, "else") ? parse_expr(P) : NULL;
        x = c;
    }
    P->depth--;
    return x;
}

static node *parse_not(parser *P);
static node *parse_math1(parser *P);

static node *parse_or(parser *P)
{
    node *x = NULL;
    /* and binds tighter than or */
    node *l = parse_not(P);
    while (is_name(P, "and")) { next(P); node *y = mk(P, E_AND); y->a = l; y->b = parse_not(P); l = y; }
    x = l;
    while (is_name(P, "or")) {
        next(P);
        node *r = parse_not(P);
        while (is_name(P, "and")) { next(P); node *y = mk(P, E_AND); y->a = r; y->b = parse_not(P); r = y; }
        node *y = mk(P, E_OR); y->a = x; y->b = r; x = y;
    }
    return x;
}

static node *parse_compare(parser *P)
{
    node *x = parse_math1(P);
    nvec ops = { 0 };
    svec names = { 0 };
    nv_push(P, &ops, x);
    for (;;) {
        const char *op = NULL;
        token *t = peek(P);
        if (t->k == T_OP && (tok_is(t, T_OP, "==") || tok_is(t, T_OP, "!=") || tok_is(t, T_OP, "<") ||
                             tok_is(t, T_OP, ">") || tok_is(t, T_OP, "<=") || tok_is(t, T_OP, ">="))) {
            next(P);
            sv_push(P, &names, v_str(t->p, t->n));
            op = "";
        } else if (is_name(P, "in")) {
            next(P);
            sv_push(P, &names, v_cstr("in"));
            op = "";
        } else if (is_name(P, "not") && tok_is(peekn(P, 1), T_NAME, "in")) {
            next(P); next(P);
            sv_push(P, &names, v_cstr("notin"));
            op = "";
        }
        if (!op) break;
        nv_push(P, &ops, parse_math1(P));
    }
    if (ops.n == 1) return x;
    node *c = mk(P, E_CMP);
    c->kids = ops.v; c->nk = ops.n; c->names = names.v; c->nn = names.n;
    return c;
}

static node *parse_not(parser *P)
{
    if (is_name(P, "not")) {
        next(P);
        enter(P);
        node *x = mk(P, E_NOT);
        x->a = parse_not(P);
        P->depth--;
        return x;
    }
    return parse_compare(P);
}

static node *bin(parser *P, int op, node *a, node *b) { node *x = mk(P, E_BIN); x->op = op; x->a = a; x->b = b; return x; }

static node *parse_pow(parser *P)
{
    node *x = parse_unary(P, 1);
    while (is_op(P, "**")) { next(P); x = bin(P, 'P', x, parse_unary(P, 1)); }
    return x;
}
static node *parse_math2(parser *P)
{
    node *x = parse_pow(P);
    for (;;) {
        if (accept_op(P, "*")) x = bin(P, '*', x, parse_pow(P));
        else if (accept_op(P, "/")) x = bin(P, '/', x, parse_pow(P));
        else if (accept_op(P, "//")) x = bin(P, 'F', x, parse_pow(P));
        else if (accept_op(P, "%")) x = bin(P, '%', x, parse_pow(P));
        else return x;
    }
}
static node *parse_concat(parser *P)
{
    node *x = parse_math2(P);
    while (accept_op(P, "~")) { node *y = mk(P, E_CONCAT); y->a = x; y->b = parse_math2(P); x = y; }
    return x;
}
static node *parse_math1(parser *P)
{
    node *x = parse_concat(P);
    for (;;) {
        if (accept_op(P, "+")) x = bin(P, '+', x, parse_concat(P));
        else if (accept_op(P, "-")) x = bin(P, '-', x, parse_concat(P));
        else return x;
    }
}

static node *parse_unary(parser *P, int with_filter)
{
    node *x;
    enter(P);
    if (accept_op(P, "-")) { x = mk(P, E_NEG); x->a = parse_unary(P, 0); }
    else if (accept_op(P, "+")) { x = mk(P, E_POS); x->a = parse_unary(P, 0); }
    else x = parse_postfix(P, parse_primary(P));
    if (with_filter) x = parse_filter_expr(P, x);
    P->depth--;
    return x;
}

static node *parse_primary(parser *P)
{
    token *t = peek(P);
    node *x;
    if (t->k == T_NAME) {
        next(P);
        x = mk(P, E_CONST);
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True")) x->v = v_bool(1);
        else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False")) x->v = v_bool(0);
        else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) x->v = v_none();
        else { x->k = E_NAME; x->v = v_str(t->p, t->n); }
        return x;
    }
    if (t->k == T_STR) {
        /* adjacent literals concatenate */
        size_t total = 0, k = P->i;
        while (P->t[k].k == T_STR) total += P->t[k++].n;
        char *buf = arena_alloc(P->A, total + 1, P->E);
        size_t m = 0;
        while (peek(P)->k == T_STR) { token *s = next(P); memcpy(buf + m, s->p, s->n); m += s->n; }
        x = mk(P, E_CONST);
        x->v = v_str(buf, m);
        return x;
    }
    if (t->k == T_INT) { next(P); x = mk(P, E_CONST); x->v = v_int(t->i); return x; }
    if (t->k == T_FLOAT) { next(P); x = mk(P, E_CONST); x->v = v_float(t->f); return x; }
    if (accept_op(P, "(")) {
        if (accept_op(P, ")")) { x = mk(P, E_TUPLE); return x; }
        node *e = parse_expr(P);
        if (!is_op(P, ",")) { expect_op(P, ")"); return e; }
        nvec items = { 0 };
        nv_push(P, &items, e);
        while (accept_op(P, ",")) {
            if (is_op(P, ")")) break;
            nv_push(P, &items, parse_expr(P));
        }
        expect_op(P, ")");
        x = mk(P, E_TUPLE);
        x->kids = items.v; x->nk = items.n;
        return x;
    }
    if (accept_op(P, "[")) {
        nvec items = { 0 };
        while (!is_op(P, "]")) {
            if (items.n) expect_op(P, ",");
            if (is_op(P, "]")) break;
            nv_push(P, &items, parse_expr(P));
        }
        expect_op(P, "]");
        x = mk(P, E_LIST);
        x->kids = items.v; x->nk = items.n;
        return x;
    }
    if (accept_op(P, "{")) {
        nvec keys = { 0 }, vals = { 0 };
        while (!is_op(P, "}")) {
            if (keys.n) expect_op(P, ",");
            if (is_op(P, "}")) break;
            nv_push(P, &keys, parse_expr(P));
            expect_op(P, ":");
            nv_push(P, &vals, parse_expr(P));
        }
        expect_op(P, "}");
        x = mk(P, E_DICT);
        x->kids = keys.v; x->nk = keys.n; x->kids2 = vals.v; x->nk2 = vals.n;
        return x;
    }
    const char *d = tok_desc(t);
    if (d) fail(P->E, QL_EFORMAT, t->line, "expected an expression, got %s", d);
    fail(P->E, QL_EFORMAT, t->line, "unexpected '%.*s'", (int)t->n, t->p);
    return NULL;
}

static node *parse_subscript_arg(parser *P)
{
    /* [a], [a:b], [a:b:c], [::-1] */
    node *parts[3] = { 0 };
    int colons = 0;
    if (!is_op(P, ":")) parts[0] = parse_expr(P);
    while (colons < 2 && accept_op(P, ":")) {
        colons++;
        if (!is_op(P, ":") && !is_op(P, "]")) parts[colons] = parse_expr(P);
    }
    expect_op(P, "]");
    if (!colons) return parts[0];
    node *s = mk(P, E_SLICE);
    s->a = parts[0]; s->b = parts[1]; s->c = parts[2];
    return s;
}

static node *parse_postfix(parser *P, node *x)
{
    for (;;) {
        if (accept_op(P, ".")) {
            token *t = peek(P);
            node *y = mk(P, E_ATTR);
            y->a = x;
            if (t->k == T_INT) { next(P); y->k = E_ITEM; y->b = mk(P, E_CONST); y->b->v = v_int(t->i); }
            else y->v = expect_name(P);
            x = y;
        } else if (accept_op(P, "[")) {
            node *arg = parse_subscript_arg(P);
            if (arg->k == E_SLICE && arg->nk == 0) {
                /* a slice node holds its bounds in kids[0..2] and the sliced object in a */
                node *s = mk(P, E_SLICE);
                s->a = x;
                s->kids = arena_alloc(P->A, 3 * sizeof(node *), P->E);
                s->kids[0] = arg->a; s->kids[1] = arg->b; s->kids[2] = arg->c;
                s->nk = 3;
                x = s;
            } else {
                node *y = mk(P, E_ITEM); y->a = x; y->b = arg; x = y;
            }
        } else if (accept_op(P, "(")) {
            node *y = mk(P, E_CALL);
            y->a = x;
            parse_args(P, y);
            x = y;
        } else {
            return x;
        }
    }
}

static node *parse_filter_expr(parser *P, node *x)
{
    for (;;) {
        if (accept_op(P, "|")) {
            node *f = mk(P, E_FILTER);
            f->a = x;
            f->v = expect_name(P);
            if (accept_op(P, "(")) parse_args(P, f);
            x = f;
        } else if (is_name(P, "is")) {
            next(P);
            node *t = mk(P, E_TEST);
            t->a = x;
            t->op = accept_name(P, "not");
            /* a test name may be a keyword-like name: none, true, false, in */
            token *nt = peek(P);
            if (nt->k != T_NAME) fail(P->E, QL_EFORMAT, nt->line, "expected a test name after 'is'");
            next(P);
            t->v = v_str(nt->p, nt->n);
            if (tok_is(nt, T_NAME, "==")) t->v = v_cstr("eq");
            if (accept_op(P, "(")) parse_args(P, t);
            else {
                token *a = peek(P);
                int starts = a->k == T_STR || a->k == T_INT || a->k == T_FLOAT ||
                             (a->k == T_NAME && !tok_is(a, T_NAME, "else") && !tok_is(a, T_NAME, "or") &&
                              !tok_is(a, T_NAME, "and") && !tok_is(a, T_NAME, "if") && !tok_is(a, T_NAME, "in") &&
                              !tok_is(a, T_NAME, "not") && !tok_is(a, T_NAME, "is")) ||
                             tok_is(a, T_OP, "[") || tok_is(a, T_OP, "{") || tok_is(a, T_OP, "-");
                if (starts) {
                    t->kids = arena_alloc(P->A, sizeof(node *), P->E);
                    t->kids[0] = parse_postfix(P, parse_primary(P));
                    t->nk = 1;
                }
            }
            x = t;
        } else {
            return x;
        }
    }
}

/* ---- statements */

static node *parse_body(parser *P, const char *const *ends, jv *which);

static void expect_bend(parser *P)
{
    token *t = peek(P);
    if (t->k != T_BEND) {
        const char *d = tok_desc(t);
        if (d) fail(P->E, QL_EFORMAT, t->line, "expected '%%}', got %s", d);
        fail(P->E, QL_EFORMAT, t->line, "expected '%%}', got '%.*s'", (int)t->n, t->p);
    }
    next(P);
}

static int jv_eq_cstr(jv s, const char *c) { return s.t == V_STR && s.u.s.n == strlen(c) && !memcmp(s.u.s.p, c, s.u.s.n); }

/* a list of names: `a` or `a, b` (for targets, set targets) */
static void parse_targets(parser *P, svec *names)
{
    int paren = accept_op(P, "(");
    sv_push(P, names, expect_name(P));
    while (accept_op(P, ",")) sv_push(P, names, expect_name(P));
    if (paren) expect_op(P, ")");
}

static node *parse_stmt(parser *P)
{
    token *t = peek(P);
    int line = t->line;
    jv kw = expect_name(P);
    node *x;
    if (jv_eq_cstr(kw, "if")) {
        x = mk(P, N_IF);
        x->line = line;
        x->a = parse_expr(P);
        expect_bend(P);
        static const char *const ends[] = { "elif", "else", "endif", NULL };
        jv which;
        x->b = parse_body(P, ends, &which);
        node *cur = x;
        while (jv_eq_cstr(which, "elif")) {
            node *e = mk(P, N_IF);
            e->a = parse_expr(P);
            expect_bend(P);
            e->b = parse_body(P, ends, &which);
            cur->c = e;
            cur = e;
        }
        if (jv_eq_cstr(which, "else")) {
            expect_bend(P);
            static const char *const ends2[] = { "endif", NULL };
            cur->c = parse_body(P, ends2, &which);
        }
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "for")) {
        x = mk(P, N_FOR);
        x->line = line;
        svec names = { 0 };
        parse_targets(P, &names);
        x->names = names.v; x->nn = names.n;
        if (!accept_name(P, "in")) fail(P->E, QL_EFORMAT, peek(P)->line, "expected 'in' in a for statement");
        /* the iterable: no conditional expression (its `if` filters the loop) */
        x->a = parse_or(P);
        if (accept_name(P, "if")) x->c = parse_expr(P);
        accept_name(P, "recursive");
        expect_bend(P);
        static const char *const ends[] = { "else", "endfor", NULL };
        jv which;
        x->b = parse_body(P, ends, &which);
        if (jv_eq_cstr(which, "else")) {
            expect_bend(P);
            static const char *const ends2[] = { "endfor", NULL };
            node *eb = parse_body(P, ends2, &which);
            x->kids2 = arena_alloc(P->A, sizeof(node *), P->E);
            x->kids2[0] = eb; x->nk2 = 1;
        }
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "set")) {
        svec names = { 0 };
        jv attr = v_undef();
        sv_push(P, &names, expect_name(P));
        if (accept_op(P, ".")) attr = expect_name(P);
        else while (accept_op(P, ",")) sv_push(P, &names, expect_name(P));
        if (accept_op(P, "=")) {
            x = mk(P, N_SET);
            x->line = line;
            x->names = names.v; x->nn = names.n;
            x->v = attr;
            x->a = parse_expr(P);
            if (is_op(P, ",")) {   /* set a = 1, 2 makes a tuple */
                node *tup = mk(P, E_TUPLE);
                nvec items = { 0 };
                nv_push(P, &items, x->a);
                while (accept_op(P, ",")) nv_push(P, &items, parse_expr(P));
                tup->kids = items.v; tup->nk = items.n;
                x->a = tup;
            }
            expect_bend(P);
            return x;
        }
        x = mk(P, N_SETBLOCK);
        x->line = line;
        x->names = names.v; x->nn = names.n;
        x->v = attr;
        /* {% set x | filter %} */
        node *holder = mk(P, E_CONST);
        x->c = parse_filter_expr(P, holder);
        if (x->c == holder) x->c = NULL;
        expect_bend(P);
        static const char *const ends[] = { "endset", NULL };
        jv which;
        x->b = parse_body(P, ends, &which);
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "macro") || jv_eq_cstr(kw, "call")) {
        int is_call = jv_eq_cstr(kw, "call");
        x = mk(P, is_call ? N_CALLBLOCK : N_MACRO);
        x->line = line;
        svec params = { 0 };
        nvec defs = { 0 };
        if (!is_call) x->v = expect_name(P);
        if (!is_call || accept_op(P, "(")) {
            if (!is_call) expect_op(P, "(");
            while (!is_op(P, ")")) {
                if (params.n) expect_op(P, ",");
                if (is_op(P, ")")) break;
                sv_push(P, &params, expect_name(P));
                nv_push(P, &defs, accept_op(P, "=") ? parse_expr(P) : NULL);
            }
            expect_op(P, ")");
        }
        x->names = params.v; x->nn = params.n;
        x->kids2 = defs.v; x->nk2 = defs.n;
        if (is_call) {
            x->a = parse_expr(P);
            if (x->a->k != E_CALL) fail(P->E, QL_EFORMAT, line, "{%% call %%} needs a macro call");
        }
        expect_bend(P);
        static const char *const mends[] = { "endmacro", NULL }, *const cends[] = { "endcall", NULL };
        jv which;
        x->b = parse_body(P, is_call ? cends : mends, &which);
        if (!is_call && peek(P)->k == T_NAME) next(P);   /* {% endmacro name %} */
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "filter")) {
        x = mk(P, N_FILTERBLOCK);
        x->line = line;
        node *holder = mk(P, E_CONST);
        /* the first filter has no leading '|' */
        node *f = mk(P, E_FILTER);
        f->a = holder;
        f->v = expect_name(P);
        if (accept_op(P, "(")) parse_args(P, f);
        x->c = parse_filter_expr(P, f);
        expect_bend(P);
        static const char *const ends[] = { "endfilter", NULL };
        jv which;
        x->b = parse_body(P, ends, &which);
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "generation")) {
        /* transformers' AssistantTracker: the body renders as itself */
        expect_bend(P);
        static const char *const ends[] = { "endgeneration", NULL };
        jv which;
        x = parse_body(P, ends, &which);
        expect_bend(P);
        return x;
    }
    if (jv_eq_cstr(kw, "break") || jv_eq_cstr(kw, "continue")) {
        x = mk(P, jv_eq_cstr(kw, "break") ? N_BREAK : N_CONTINUE);
        x->line = line;
        expect_bend(P);
        return x;
    }
    fail(P->E, QL_EFORMAT, line, "unknown statement '%.*s'", (int)kw.u.s.n, kw.u.s.p);
    return NULL;
}

/* statements until one of ends (the end tag's name is consumed, its '%}' is not) */
static node *parse_body(parser *P, const char *const *ends, jv *which)
{
    enter(P);
    nvec body = { 0 };
    node *b = mk(P, N_BODY);
    int line = b->line;
    for (;;) {
        token *t = peek(P);
        if (t->k == T_EOF) {
            if (!ends) break;
            fail(P->E, QL_EFORMAT, line, "unclosed block: expected {%% %s %%} before the end of the template", ends[0]);
        }
        if (t->k == T_TEXT) {
            next(P);
            node *x = mk(P, N_TEXT);
            x->v = v_str(t->p, t->n);
            nv_push(P, &body, x);
        } else if (t->k == T_VBEGIN) {
            next(P);
            node *x = mk(P, N_OUT);
            x->a = parse_expr(P);
            if (peek(P)->k != T_VEND) {
                token *u = peek(P);
                const char *d = tok_desc(u);
                if (d) fail(P->E, QL_EFORMAT, u->line, "expected '}}', got %s", d);
                fail(P->E, QL_EFORMAT, u->line, "expected '}}', got '%.*s'", (int)u->n, u->p);
            }
            next(P);
            nv_push(P, &body, x);
        } else if (t->k == T_BBEGIN) {
            token *kw = peekn(P, 1);
            int end = 0;
            for (size_t k = 0; ends && ends[k]; k++)
                if (tok_is(kw, T_NAME, ends[k])) end = 1;
            if (end) {
                next(P); next(P);
                *which = v_str(kw->p, kw->n);
                break;
            }
            if (kw->k == T_NAME && (tok_is(kw, T_NAME, "endif") || tok_is(kw, T_NAME, "endfor") || tok_is(kw, T_NAME, "else") ||
                                    tok_is(kw, T_NAME, "elif") || tok_is(kw, T_NAME, "endmacro") || tok_is(kw, T_NAME, "endset") ||
                                    tok_is(kw, T_NAME, "endcall") || tok_is(kw, T_NAME, "endfilter") || tok_is(kw, T_NAME, "endgeneration")))
                fail(P->E, QL_EFORMAT, kw->line, "unexpected {%% %.*s %%}%s%s", (int)kw->n, kw->p,
                     ends ? ": expected " : "", ends ? ends[0] : "");
            next(P);
            nv_push(P, &body, parse_stmt(P));
        } else {
            fail(P->E, QL_EFORMAT, t->line, "unexpected token '%.*s'", (int)t->n, t->p);
        }
    }
    b->kids = body.v; b->nk = body.n;
    P->depth--;
    return b;
}

static void set_error(errctx *E, const char *name)
{
    if (E->line) ql_fail(E->code, "%s:%d: %s", name, E->line, E->msg);
    else ql_fail(E->code, "%s: %s", name, E->msg);
}

ql_status ql_jinja_parse(const char *src, size_t len, const char *name, ql_jinja **out)
{
    *out = NULL;
    if (!name) name = "template";
    ql_jinja *t = calloc(1, sizeof *t);
    if (!t) return ql_fail(QL_ENOMEM, "%s: out of memory", name);
    t->name = strdup(name);
    t->src = malloc(len + 1);
    if (!t->name || !t->src) { ql_jinja_free(t); return ql_fail(QL_ENOMEM, "%s: out of memory", name); }
    memcpy(t->src, src, len);
    t->src[len] = 0;
    errctx *E = calloc(1, sizeof *E);
    if (!E) { ql_jinja_free(t); return ql_fail(QL_ENOMEM, "%s: out of memory", name); }
    if (setjmp(E->jb)) {
        set_error(E, t->name);
        ql_status code = E->code;
        free(E);
        ql_jinja_free(t);
        return code;
    }
    lexer L = { t->src, len, 0, 1, NULL, 0, 0, &t->A, E };
    lex(&L);
    parser P = { L.t, L.nt, 0, &t->A, E, 0 };
    t->root = parse_body(&P, NULL, NULL);
    free(E);
    *out = t;
    return QL_OK;
}

void ql_jinja_free(ql_jinja *t)
{
    if (!t) return;
    arena_free(&t->A);
    free(t->name);
    free(t->src);
    free(t);
}

/* ------------------------------------------------------------------ renderer */

typedef struct frame { struct frame *parent; jdict vars; } frame;

typedef struct sbuf { char *p; size_t n, cap; } sbuf;

typedef struct rstate {
    arena A;
    errctx *E;
    frame *globals;
    sbuf *out;
    int depth;
    int ctl;              /* 1: break, 2: continue pending */
    int64_t now;
    frame *ef;            /* the frame names are read from */
} rstate;

static void rfail(rstate *R, const node *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(R->E->msg, sizeof R->E->msg, fmt, ap);
    va_end(ap);
    R->E->code = QL_EINVAL;
    R->E->line = at ? at->line : 0;
    longjmp(R->E->jb, 1);
}

static void *ralloc(rstate *R, size_t n) { return arena_alloc(&R->A, n, R->E); }

static void sb_add(rstate *R, sbuf *b, const char *s, size_t n)
{
    if (!n) return;
    if (n > MAX_OUT - b->n) rfail(R, NULL, "the output passed %zu bytes", MAX_OUT);
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->n + n) nc *= 2;
        char *np = ralloc(R, nc);
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np; b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void sb_cstr(rstate *R, sbuf *b, const char *s) { sb_add(R, b, s, strlen(s)); }
static jv sb_val(sbuf *b) { return v_str(b->p ? b->p : "", b->n); }

static jlist *list_new(rstate *R, size_t cap)
{
    jlist *l = ralloc(R, sizeof *l);
    l->n = 0; l->cap = cap; l->tuple = 0;
    l->v = cap ? ralloc(R, cap * sizeof *l->v) : NULL;
    return l;
}
static void list_push(rstate *R, jlist *l, jv x)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 4;
        jv *nv = ralloc(R, nc * sizeof *nv);
        if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv; l->cap = nc;
    }
    l->v[l->n++] = x;
}
static jv v_list(jlist *l) { jv v; memset(&v, 0, sizeof v); v.t = V_LIST; v.u.l = l; return v; }
static jv v_dict(jdict *d) { jv v; memset(&v, 0, sizeof v); v.t = V_DICT; v.u.d = d; return v; }

static int str_eq(jv a, const char *p, size_t n) { return a.t == V_STR && a.u.s.n == n && !memcmp(a.u.s.p, p, n); }

static jv *dict_find(jdict *d, const char *k, size_t n)
{
    for (size_t i = 0; i < d->n; i++) if (str_eq(d->k[i], k, n)) return &d->v[i];
    return NULL;
}
static void dict_set(rstate *R, jdict *d, jv k, jv v)
{
    if (k.t == V_STR) {
        jv *p = dict_find(d, k.u.s.p, k.u.s.n);
        if (p) { *p = v; return; }
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 8;
        jv *nk = ralloc(R, nc * sizeof *nk), *nv = ralloc(R, nc * sizeof *nv);
        if (d->n) { memcpy(nk, d->k, d->n * sizeof *nk); memcpy(nv, d->v, d->n * sizeof *nv); }
        d->k = nk; d->v = nv; d->cap = nc;
    }
    d->k[d->n] = k; d->v[d->n] = v; d->n++;
}
static jdict *dict_new(rstate *R) { jdict *d = ralloc(R, sizeof *d); memset(d, 0, sizeof *d); return d; }
static void dict_setc(rstate *R, jdict *d, const char *k, jv v) { dict_set(R, d, v_cstr(k), v); }

static frame *frame_new(rstate *R, frame *parent) { frame *f = ralloc(R, sizeof *f); memset(f, 0, sizeof *f); f->parent = parent; return f; }
/* the globals of transformers' environment that are functions */
static const char *const global_funcs[] = { "raise_exception", "strftime_now", "namespace", "dict", "range", NULL };

static jv lookup(frame *f, jv name)
{
    for (; f; f = f->parent) {
        jv *p = dict_find(&f->vars, name.u.s.p, name.u.s.n);
        if (p) return *p;
    }
    for (int i = 0; global_funcs[i]; i++)
        if (jv_eq_cstr(name, global_funcs[i])) { jv v = name; v.t = V_FUNC; return v; }
    return v_undef();
}

/* ---- conversions */

static const char *type_name(jv v)
{
    static const char *names[] = { "undefined", "none", "bool", "int", "float", "str", "list", "dict", "namespace", "macro",
                                   "function" };
    if (v.t == V_LIST && v.u.l->tuple) return "tuple";
    return names[v.t];
}

static int truthy(jv v)
{
    switch (v.t) {
    case V_UNDEF: case V_NONE: return 0;
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->n != 0;
    case V_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

/* Python's float repr: the shortest digits that round-trip */
static void float_repr(char *buf, size_t cap, double f)
{
    if (isnan(f)) { snprintf(buf, cap, "nan"); return; }
    if (isinf(f)) { snprintf(buf, cap, f > 0 ? "inf" : "-inf"); return; }
    char tmp[64];
    int prec;
    for (prec = 1; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
    /* tmp: [-]d.ddde[+-]XX */
    char digits[32];
    size_t nd = 0;
    const char *p = tmp;
    int neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++) if (isdigit((unsigned char)*p)) digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    size_t m = 0;
    if (neg) buf[m++] = '-';
    if (exp10 >= 16 || exp10 < -4) {
        buf[m++] = digits[0];
        if (nd > 1) { buf[m++] = '.'; for (size_t i = 1; i < nd; i++) buf[m++] = digits[i]; }
        snprintf(buf + m, cap - m, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        return;
    }
    if (exp10 < 0) {
        buf[m++] = '0'; buf[m++] = '.';
        for (int i = 0; i < -exp10 - 1; i++) buf[m++] = '0';
        for (size_t i = 0; i < nd; i++) buf[m++] = digits[i];
    } else {
        for (int i = 0; i <= exp10; i++) buf[m++] = (size_t)i < nd ? digits[i] : '0';
        buf[m++] = '.';
        if ((size_t)exp10 + 1 < nd) for (size_t i = (size_t)exp10 + 1; i < nd; i++) buf[m++] = digits[i];
        else buf[m++] = '0';
    }
    buf[m] = 0;
}

static void repr_into(rstate *R, sbuf *b, jv v, int top);

static void str_repr(rstate *R, sbuf *b, const char *p, size_t n)
{
    char q = memchr(p, '\'', n) && !memchr(p, '"', n) ? '"' : '\'';
    sb_add(R, b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        char esc[8];
        if (c == '\\') sb_cstr(R, b, "\\\\");
        else if (c == (unsigned char)q) { esc[0] = '\\'; esc[1] = q; sb_add(R, b, esc, 2); }
        else if (c == '\n') sb_cstr(R, b, "\\n");
        else if (c == '\r') sb_cstr(R, b, "\\r");
        else if (c == '\t') sb_cstr(R, b, "\\t");
        else if (c < 0x20 || c == 0x7f) { snprintf(esc, sizeof esc, "\\x%02x", c); sb_cstr(R, b, esc); }
        else sb_add(R, b, p + i, 1);
    }
    sb_add(R, b, &q, 1);
}

/* str(v) (top) or repr(v) inside containers */
static void repr_into(rstate *R, sbuf *b, jv v, int top)
{
    char buf[64];
    switch (v.t) {
    case V_UNDEF: if (!top) sb_cstr(R, b, "Undefined"); break;
    case V_NONE: sb_cstr(R, b, "None"); break;
    case V_BOOL: sb_cstr(R, b, v.u.b ? "True" : "False"); break;
    case V_INT: snprintf(buf, sizeof buf, "%lld", (long long)v.u.i); sb_cstr(R, b, buf); break;
    case V_FLOAT: float_repr(buf, sizeof buf, v.u.f); sb_cstr(R, b, buf); break;
    case V_STR: if (top) sb_add(R, b, v.u.s.p, v.u.s.n); else str_repr(R, b, v.u.s.p, v.u.s.n); break;
    case V_LIST:
        sb_cstr(R, b, v.u.l->tuple ? "(" : "[");
        for (size_t i = 0; i < v.u.l->n; i++) { if (i) sb_cstr(R, b, ", "); repr_into(R, b, v.u.l->v[i], 0); }
        if (v.u.l->tuple && v.u.l->n == 1) sb_cstr(R, b, ",");
        sb_cstr(R, b, v.u.l->tuple ? ")" : "]");
        break;
    case V_DICT:
        sb_cstr(R, b, "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_cstr(R, b, ", ");
            repr_into(R, b, v.u.d->k[i], 0);
            sb_cstr(R, b, ": ");
            repr_into(R, b, v.u.d->v[i], 0);
        }
        sb_cstr(R, b, "}");
        break;
    case V_NS: sb_cstr(R, b, "<Namespace>"); break;
    case V_FUNC: sb_cstr(R, b, "<function>"); break;
    default: sb_cstr(R, b, "<Macro>"); break;
    }
}

static jv to_str(rstate *R, jv v)
{
    if (v.t == V_STR) return v;
    sbuf b = { 0 };
    repr_into(R, &b, v, 1);
    return sb_val(&b);
}

/* ---- JSON (transformers' tojson: json.dumps, ensure_ascii=False) */

static void json_str(rstate *R, sbuf *b, const char *p, size_t n)
{
    sb_cstr(R, b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        char esc[8];
        switch (c) {
        case '"': sb_cstr(R, b, "\\\""); break;
        case '\\': sb_cstr(R, b, "\\\\"); break;
        case '\n': sb_cstr(R, b, "\\n"); break;
        case '\r': sb_cstr(R, b, "\\r"); break;
        case '\t': sb_cstr(R, b, "\\t"); break;
        case '\b': sb_cstr(R, b, "\\b"); break;
        case '\f': sb_cstr(R, b, "\\f"); break;
        default:
            if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); sb_cstr(R, b, esc); }
            else sb_add(R, b, p + i, 1);
        }
    }
    sb_cstr(R, b, "\"");
}

typedef struct jsonfmt { const char *indent; size_t indent_n; int has_indent; jv item_sep, key_sep; int sort; } jsonfmt;

static int cmp_values(rstate *R, const node *at, jv a, jv b);

static void json_dump(rstate *R, const node *at, sbuf *b, jv v, const jsonfmt *f, int level)
{
    char buf[64];
    if (level > MAX_DEPTH) rfail(R, at, "tojson: nested too deeply");
    switch (v.t) {
    case V_NONE: case V_UNDEF: sb_cstr(R, b, "null"); return;
    case V_BOOL: sb_cstr(R, b, v.u.b ? "true" : "false"); return;
    case V_INT: snprintf(buf, sizeof buf, "%lld", (long long)v.u.i); sb_cstr(R, b, buf); return;
    case V_FLOAT:
        if (isnan(v.u.f)) sb_cstr(R, b, "NaN");
        else if (isinf(v.u.f)) sb_cstr(R, b, v.u.f > 0 ? "Infinity" : "-Infinity");
        else { float_repr(buf, sizeof buf, v.u.f); sb_cstr(R, b, buf); }
        return;
    case V_STR: json_str(R, b, v.u.s.p, v.u.s.n); return;
    case V_LIST: case V_DICT: case V_NS: {
        int is_list = v.t == V_LIST;
        size_t n = is_list ? v.u.l->n : v.u.d->n;
        if (!n) { sb_cstr(R, b, is_list ? "[]" : "{}"); return; }
        size_t *order = ralloc(R, n * sizeof *order);
        for (size_t i = 0; i < n; i++) order[i] = i;
        if (!is_list && f->sort)   /* insertion sort by key: dicts here are small */
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && cmp_values(R, at, v.u.d->k[order[j - 1]], v.u.d->k[order[j]]) > 0; j--) {
                    size_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
                }
        sb_cstr(R, b, is_list ? "[" : "{");
        for (size_t i = 0; i < n; i++) {
            if (i) sb_add(R, b, f->item_sep.u.s.p, f->item_sep.u.s.n);
            if (f->has_indent) {
                sb_cstr(R, b, "\n");
                for (int l = 0; l <= level; l++) sb_add(R, b, f->indent, f->indent_n);
            }
            if (is_list) json_dump(R, at, b, v.u.l->v[i], f, level + 1);
            else {
                jv k = v.u.d->k[order[i]];
                if (k.t == V_STR) json_str(R, b, k.u.s.p, k.u.s.n);
                else { jv ks = to_str(R, k); json_str(R, b, ks.u.s.p, ks.u.s.n); }
                sb_add(R, b, f->key_sep.u.s.p, f->key_sep.u.s.n);
                json_dump(R, at, b, v.u.d->v[order[i]], f, level + 1);
            }
        }
        if (f->has_indent) {
            sb_cstr(R, b, "\n");
            for (int l = 0; l < level; l++) sb_add(R, b, f->indent, f->indent_n);
        }
        sb_cstr(R, b, is_list ? "]" : "}");
        return;
    }
    default: rfail(R, at, "tojson: a %s is not JSON serializable", type_name(v));
    }
}

/* ---- UTF-8 helpers (Python strings count code points) */

static size_t u8_len(const char *p, size_t n) { size_t c = 0; for (size_t i = 0; i < n; i++) c += ((unsigned char)p[i] & 0xC0) != 0x80; return c; }
/* byte offset of code point k (k <= length) */
static size_t u8_off(const char *p, size_t n, size_t k)
{
    size_t i = 0;
    while (k && i < n) { i++; while (i < n && ((unsigned char)p[i] & 0xC0) == 0x80) i++; k--; }
    return i;
}

/* Python str.isspace() at p: the byte length of a whitespace character, or 0 */
static size_t py_space_at(const char *p, size_t n)
{
    unsigned char c = (unsigned char)p[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
    if (n >= 2 && c == 0xC2 && ((unsigned char)p[1] == 0x85 || (unsigned char)p[1] == 0xA0)) return 2;
    if (n >= 3) {
        unsigned c1 = (unsigned char)p[1], c2 = (unsigned char)p[2];
        if (c == 0xE1 && c1 == 0x9A && c2 == 0x80) return 3;
        if (c == 0xE2 && c1 == 0x80 && (c2 <= 0x8A || c2 == 0xA8 || c2 == 0xA9 || c2 == 0xAF)) return 3;
        if (c == 0xE2 && c1 == 0x81 && c2 == 0x9F) return 3;
        if (c == 0xE3 && c1 == 0x80 && c2 == 0x80) return 3;
    }
    return 0;
}

static size_t u8_char_len(const char *p, size_t n)
{
    size_t k = 1;
    while (k < n && ((unsigned char)p[k] & 0xC0) == 0x80) k++;
    return k;
}

static int in_chars(const char *p, size_t k, jv chars)
{
    /* is the character p[0..k) one of chars? */
    for (size_t i = 0; i < chars.u.s.n;) {
        size_t m = u8_char_len(chars.u.s.p + i, chars.u.s.n - i);
        if (m == k && !memcmp(chars.u.s.p + i, p, k)) return 1;
        i += m;
    }
    return 0;
}

/* str.strip / lstrip / rstrip: which: 1 left, 2 right, 3 both; chars NONE = whitespace */
static jv py_strip(jv s, int which, jv chars)
{
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    int ws = chars.t != V_STR;
    if (which & 1)
        while (n) {
            size_t k = ws ? py_space_at(p, n) : (in_chars(p, u8_char_len(p, n), chars) ? u8_char_len(p, n) : 0);
            if (!k) break;
            p += k; n -= k;
        }
    if (which & 2)
        for (;;) {
            if (!n) break;
            size_t st = n - 1;
            while (st > 0 && ((unsigned char)p[st] & 0xC0) == 0x80) st--;
            size_t k = n - st;
            int hit = ws ? py_space_at(p + st, k) == k : in_chars(p + st, k, chars);
            if (!hit) break;
            n = st;
        }
    return v_str(p, n);
}

static const char *find_sub(const char *h, size_t hn, const char *nd, size_t nn)
{
    if (nn == 0) return h;
    if (hn < nn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++) if (h[i] == nd[0] && !memcmp(h + i, nd, nn)) return h + i;
    return NULL;
}

static jv str_replace(rstate *R, jv s, jv a, jv b, int64_t count)
{
    sbuf o = { 0 };
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    if (a.u.s.n == 0) {
        /* Python inserts b between characters */
        int64_t done = 0;
        for (size_t i = 0; i <= n;) {
            if (count < 0 || done < count) { sb_add(R, &o, b.u.s.p, b.u.s.n); done++; }
            if (i == n) break;
            size_t k = u8_char_len(p + i, n - i);
            sb_add(R, &o, p + i, k);
            i += k;
        }
        return sb_val(&o);
    }
    int64_t done = 0;
    for (;;) {
        const char *hit = (count < 0 || done < count) ? find_sub(p, n, a.u.s.p, a.u.s.n) : NULL;
        if (!hit) { sb_add(R, &o, p, n); break; }
        sb_add(R, &o, p, (size_t)(hit - p));
        sb_add(R, &o, b.u.s.p, b.u.s.n);
        n -= (size_t)(hit - p) + a.u.s.n;
        p = hit + a.u.s.n;
        done++;
    }
    return sb_val(&o);
}

/* ASCII case mapping (chat templates apply it to role names and keywords) */
static jv str_case(rstate *R, jv s, int mode)   /* 0 lower, 1 upper, 2 capitalize, 3 title */
{
    char *o = ralloc(R, s.u.s.n + 1);
    int word_start = 1;
    for (size_t i = 0; i < s.u.s.n; i++) {
        unsigned char c = (unsigned char)s.u.s.p[i];
        if (mode == 0) c = (unsigned char)tolower(c);
        else if (mode == 1) c = (unsigned char)toupper(c);
        else if (mode == 2) c = (unsigned char)(i == 0 ? toupper(c) : tolower(c));
        else {
            /* Jinja's title: words split at whitespace, '-', '(', '{', '[', '<' */
            int sep = is_ws((char)c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
            if (sep) word_start = 1;
            else { c = (unsigned char)(word_start ? toupper(c) : tolower(c)); word_start = 0; }
        }
        o[i] = (char)c;
    }
    return v_str(o, s.u.s.n);
}

/* ---- evaluation */

static jv eval(rstate *R, const node *x);
static void render(rstate *R, const node *x, frame *f);

typedef struct args { jv *pos; size_t np; jv *kwv; jv *kwn; size_t nk; } args;

static args eval_args(rstate *R, const node *x)
{
    args a = { 0 };
    a.np = x->nk;
    a.pos = x->nk ? ralloc(R, x->nk * sizeof *a.pos) : NULL;
    for (size_t i = 0; i < x->nk; i++) a.pos[i] = eval(R, x->kids[i]);
    a.nk = x->nk2;
    a.kwv = x->nk2 ? ralloc(R, x->nk2 * sizeof *a.kwv) : NULL;
    a.kwn = x->names;
    for (size_t i = 0; i < x->nk2; i++) a.kwv[i] = eval(R, x->kids2[i]);
    return a;
}

/* argument i (positional) or name= */
static jv arg(const args *a, size_t i, const char *name)
{
    if (i < a->np) return a->pos[i];
    for (size_t k = 0; k < a->nk; k++) if (name && jv_eq_cstr(a->kwn[k], name)) return a->kwv[k];
    return v_undef();
}

static jv need_str(rstate *R, const node *at, jv v, const char *what)
{
    if (v.t != V_STR) rfail(R, at, "%s: expected a string, got %s", what, type_name(v));
    return v;
}
static int64_t need_int(rstate *R, const node *at, jv v, const char *what)
{
    if (v.t == V_INT) return v.u.i;
    if (v.t == V_BOOL) return v.u.b;
    rfail(R, at, "%s: expected an integer, got %s", what, type_name(v));
    return 0;
}

static jv getattr_v(rstate *R, const node *at, jv obj, jv name);

/* iterate: list -> items; dict -> keys; str -> characters; undefined/none error-free */
static jlist *iter_list(rstate *R, const node *at, jv v)
{
    if (v.t == V_LIST) return v.u.l;
    jlist *l = list_new(R, 0);
    if (v.t == V_DICT || v.t == V_NS) { for (size_t i = 0; i < v.u.d->n; i++) list_push(R, l, v.u.d->k[i]); return l; }
    if (v.t == V_STR) {
        for (size_t i = 0; i < v.u.s.n;) {
            size_t k = u8_char_len(v.u.s.p + i, v.u.s.n - i);
            list_push(R, l, v_str(v.u.s.p + i, k));
            i += k;
        }
        return l;
    }
    if (v.t == V_UNDEF) return l;
    rfail(R, at, "a %s is not iterable", type_name(v));
    return NULL;
}

static int values_eq(jv a, jv b)
{
    if ((a.t == V_INT || a.t == V_FLOAT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_FLOAT || b.t == V_BOOL)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) {
            int64_t x = a.t == V_BOOL ? a.u.b : a.u.i, y = b.t == V_BOOL ? b.u.b : b.u.i;
            return x == y;
        }
        double x = a.t == V_FLOAT ? a.u.f : a.t == V_INT ? (double)a.u.i : a.u.b;
        double y = b.t == V_FLOAT ? b.u.f : b.t == V_INT ? (double)b.u.i : b.u.b;
        return x == y;
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a.u.s.n == b.u.s.n && !memcmp(a.u.s.p, b.u.s.p, a.u.s.n);
    case V_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++) if (!values_eq(a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv k = a.u.d->k[i];
            jv *o = k.t == V_STR ? dict_find(b.u.d, k.u.s.p, k.u.s.n) : NULL;
            if (!o || !values_eq(a.u.d->v[i], *o)) return 0;
        }
        return 1;
    default: return a.u.d == b.u.d;
    }
}

static int is_num(jv v) { return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL; }
static double num(jv v) { return v.t == V_FLOAT ? v.u.f : v.t == V_INT ? (double)v.u.i : v.u.b; }

static int cmp_values(rstate *R, const node *at, jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) {
            int64_t x = a.t == V_BOOL ? a.u.b : a.u.i, y = b.t == V_BOOL ? b.u.b : b.u.i;
            return x < y ? -1 : x > y;
        }
        double x = num(a), y = num(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = memcmp(a.u.s.p, b.u.s.p, m);
        if (c) return c < 0 ? -1 : 1;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    if (a.t == V_LIST && b.t == V_LIST) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            int c = cmp_values(R, at, a.u.l->v[i], b.u.l->v[i]);
            if (c) return c;
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    rfail(R, at, "cannot compare a %s with a %s", type_name(a), type_name(b));
    return 0;
}

static int contains(rstate *R, const node *at, jv hay, jv needle)
{
    if (hay.t == V_STR) {
        if (needle.t != V_STR) rfail(R, at, "'in <string>' needs a string on the left, got %s", type_name(needle));
        return find_sub(hay.u.s.p, hay.u.s.n, needle.u.s.p, needle.u.s.n) != NULL;
    }
    if (hay.t == V_LIST) { for (size_t i = 0; i < hay.u.l->n; i++) if (values_eq(hay.u.l->v[i], needle)) return 1; return 0; }
    if (hay.t == V_DICT || hay.t == V_NS) {
        for (size_t i = 0; i < hay.u.d->n; i++) if (values_eq(hay.u.d->k[i], needle)) return 1;
        return 0;
    }
    if (hay.t == V_UNDEF) return 0;
    rfail(R, at, "argument of type %s is not iterable", type_name(hay));
    return 0;
}

/* b == -1 is done without dividing: INT64_MIN / -1 traps on x86 (the result wraps, as the
   renderer's other integer arithmetic does) */
static int64_t py_floordiv(int64_t a, int64_t b)
{
    if (b == -1) return (int64_t)(0 - (uint64_t)a);
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}
static int64_t py_mod(int64_t a, int64_t b)
{
    if (b == -1) return 0;
    int64_t m = a % b;
    if (m && ((m < 0) != (b < 0))) m += b;
    return m;
}

static jv binop(rstate *R, const node *at, int op, jv a, jv b)
{
    if (op == '+') {
        if (a.t == V_STR && b.t == V_STR) {
            char *p = ralloc(R, a.u.s.n + b.u.s.n + 1);
            memcpy(p, a.u.s.p, a.u.s.n); memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
            return v_str(p, a.u.s.n + b.u.s.n);
        }
        if (a.t == V_LIST && b.t == V_LIST) {
            jlist *l = list_new(R, a.u.l->n + b.u.l->n);
            for (size_t i = 0; i < a.u.l->n; i++) list_push(R, l, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++) list_push(R, l, b.u.l->v[i]);
            return v_list(l);
        }
    }
    if (op == '*' && ((a.t == V_STR && b.t == V_INT) || (a.t == V_INT && b.t == V_STR))) {
        jv s = a.t == V_STR ? a : b;
        int64_t k = a.t == V_INT ? a.u.i : b.u.i;
        sbuf o = { 0 };
        if (k <= 0 || s.u.s.n == 0) return sb_val(&o);
        if ((uint64_t)k > MAX_OUT / s.u.s.n) rfail(R, at, "a string repeated %lld times is longer than the output limit", (long long)k);
        for (int64_t i = 0; i < k; i++) sb_add(R, &o, s.u.s.p, s.u.s.n);
        return sb_val(&o);
    }
    if (!is_num(a) || !is_num(b))
        rfail(R, at, "unsupported operand types for %c: %s and %s", op == 'F' ? '/' : op == 'P' ? '*' : op, type_name(a), type_name(b));
    int ints = a.t != V_FLOAT && b.t != V_FLOAT;
    int64_t x = ints ? (a.t == V_BOOL ? a.u.b : a.u.i) : 0, y = ints ? (b.t == V_BOOL ? b.u.b : b.u.i) : 0;
    double fx = num(a), fy = num(b);
    switch (op) {
    case '+': return ints ? v_int(x + y) : v_float(fx + fy);
    case '-': return ints ? v_int(x - y) : v_float(fx - fy);
    case '*': return ints ? v_int(x * y) : v_float(fx * fy);
    case '/': if (fy == 0) rfail(R, at, "division by zero"); return v_float(fx / fy);
    case 'F': if (fy == 0) rfail(R, at, "division by zero"); return ints ? v_int(py_floordiv(x, y)) : v_float(floor(fx / fy));
    case '%': if (fy == 0) rfail(R, at, "modulo by zero"); return ints ? v_int(py_mod(x, y)) : v_float(fx - fy * floor(fx / fy));
    case 'P':
        if (ints && y >= 0) { int64_t r = 1; for (int64_t i = 0; i < y && i < 64; i++) r *= x; return v_int(r); }
        return v_float(pow(fx, fy));
    }
    return v_undef();
}

/* Python slice indices */
static void slice_idx(rstate *R, const node *at, size_t len, jv a, jv b, jv c, int64_t *start, int64_t *step, int64_t *count)
{
    int64_t n = (int64_t)len;
    int64_t st = c.t == V_UNDEF || c.t == V_NONE ? 1 : need_int(R, at, c, "slice step");
    if (st == 0) rfail(R, at, "slice step cannot be zero");
    int64_t lo, hi;
    if (st > 0) {
        lo = a.t == V_UNDEF || a.t == V_NONE ? 0 : need_int(R, at, a, "slice start");
        hi = b.t == V_UNDEF || b.t == V_NONE ? n : need_int(R, at, b, "slice stop");
        if (lo < 0) { lo += n; if (lo < 0) lo = 0; } else if (lo > n) lo = n;
        if (hi < 0) { hi += n; if (hi < 0) hi = 0; } else if (hi > n) hi = n;
        *count = hi > lo ? (hi - lo + st - 1) / st : 0;
    } else {
        lo = a.t == V_UNDEF || a.t == V_NONE ? n - 1 : need_int(R, at, a, "slice start");
        hi = b.t == V_UNDEF || b.t == V_NONE ? -1 : need_int(R, at, b, "slice stop");
        if (a.t != V_UNDEF && a.t != V_NONE) { if (lo < 0) { lo += n; if (lo < 0) lo = -1; } else if (lo >= n) lo = n - 1; }
        if (b.t != V_UNDEF && b.t != V_NONE) { if (hi < 0) { hi += n; if (hi < 0) hi = -1; } else if (hi >= n) hi = n - 1; }
        *count = lo > hi ? (lo - hi + (-st) - 1) / (-st) : 0;
    }
    *start = lo;
    *step = st;
}

static jv do_slice(rstate *R, const node *at, jv obj, jv a, jv b, jv c)
{
    int64_t start, step, count;
    if (obj.t == V_LIST) {
        slice_idx(R, at, obj.u.l->n, a, b, c, &start, &step, &count);
        jlist *l = list_new(R, (size_t)count);
        for (int64_t i = 0; i < count; i++) list_push(R, l, obj.u.l->v[start + i * step]);
        l->tuple = obj.u.l->tuple;
        return v_list(l);
    }
    if (obj.t == V_STR) {
        size_t len = u8_len(obj.u.s.p, obj.u.s.n);
        slice_idx(R, at, len, a, b, c, &start, &step, &count);
        if (step == 1) {
            size_t o0 = u8_off(obj.u.s.p, obj.u.s.n, (size_t)start), o1 = u8_off(obj.u.s.p, obj.u.s.n, (size_t)(start + count));
            return v_str(obj.u.s.p + o0, o1 - o0);
        }
        sbuf o = { 0 };
        for (int64_t i = 0; i < count; i++) {
            size_t off = u8_off(obj.u.s.p, obj.u.s.n, (size_t)(start + i * step));
            sb_add(R, &o, obj.u.s.p + off, u8_char_len(obj.u.s.p + off, obj.u.s.n - off));
        }
        return sb_val(&o);
    }
    if (obj.t == V_UNDEF) return v_undef();
    rfail(R, at, "a %s cannot be sliced", type_name(obj));
    return v_undef();
}

static jv getitem(rstate *R, const node *at, jv obj, jv key)
{
    if (obj.t == V_DICT || obj.t == V_NS) {
        for (size_t i = 0; i < obj.u.d->n; i++) if (values_eq(obj.u.d->k[i], key)) return obj.u.d->v[i];
        return v_undef();
    }
    if (obj.t == V_LIST && (key.t == V_INT || key.t == V_BOOL)) {
        int64_t i = key.t == V_INT ? key.u.i : key.u.b, n = (int64_t)obj.u.l->n;
        if (i < 0) i += n;
        if (i < 0 || i >= n) return v_undef();
        return obj.u.l->v[i];
    }
    if (obj.t == V_STR && key.t == V_INT) {
        int64_t n = (int64_t)u8_len(obj.u.s.p, obj.u.s.n), i = key.u.i;
        if (i < 0) i += n;
        if (i < 0 || i >= n) return v_undef();
        size_t off = u8_off(obj.u.s.p, obj.u.s.n, (size_t)i);
        return v_str(obj.u.s.p + off, u8_char_len(obj.u.s.p + off, obj.u.s.n - off));
    }
    if (obj.t == V_UNDEF) {
        if (at && at->a && at->a->k == E_NAME)
            rfail(R, at, "'%.*s' is undefined", (int)at->a->v.u.s.n, at->a->v.u.s.p);
        rfail(R, at, "an undefined value has no items");
    }
    return v_undef();
}

static jv getattr_v(rstate *R, const node *at, jv obj, jv name)
{
    if (obj.t == V_DICT || obj.t == V_NS) {
        jv *p = dict_find(obj.u.d, name.u.s.p, name.u.s.n);
        return p ? *p : v_undef();
    }
    if (obj.t == V_UNDEF) {
        if (at && at->a && at->a->k == E_NAME)
            rfail(R, at, "'%.*s' is undefined", (int)at->a->v.u.s.n, at->a->v.u.s.p);
        rfail(R, at, "an undefined value has no attribute '%.*s'", (int)name.u.s.n, name.u.s.p);
    }
    return v_undef();
}

static int64_t length(rstate *R, const node *at, jv v)
{
    switch (v.t) {
    case V_STR: return (int64_t)u8_len(v.u.s.p, v.u.s.n);
    case V_LIST: return (int64_t)v.u.l->n;
    case V_DICT: case V_NS: return (int64_t)v.u.d->n;
    case V_UNDEF: return 0;
    default: rfail(R, at, "a %s has no length", type_name(v)); return 0;
    }
}

static int apply_test(rstate *R, const node *at, jv name, jv v, const args *a);
static jv apply_filter(rstate *R, const node *at, jv name, jv v, const args *a);

/* a macro call: positional and keyword arguments bound to parameters */
static jv call_macro(rstate *R, const node *at, jv m, const args *a, const node *caller, frame *caller_frame)
{
    const node *mac = m.u.m.m;
    if (++R->depth > MAX_DEPTH) rfail(R, at, "macro calls nested too deeply");
    frame *f = frame_new(R, m.u.m.closure);
    for (size_t i = 0; i < mac->nn; i++) {
        jv v = i < a->np ? a->pos[i] : v_undef();
        for (size_t k = 0; k < a->nk; k++) if (values_eq(a->kwn[k], mac->names[i])) v = a->kwv[k];
        if (v.t == V_UNDEF && mac->kids2 && mac->kids2[i]) {
            frame *save = R->ef;
            R->ef = m.u.m.closure;
            v = eval(R, mac->kids2[i]);
            R->ef = save;
        }
        dict_set(R, &f->vars, mac->names[i], v);
    }
    if (caller) {
        jv c; memset(&c, 0, sizeof c); c.t = V_MACRO;
        c.u.m.m = caller;
        c.u.m.closure = caller_frame;
        dict_setc(R, &f->vars, "caller", c);
    }
    sbuf o = { 0 }, *save = R->out;
    R->out = &o;
    render(R, mac->b, f);
    R->out = save;
    R->depth--;
    return sb_val(&o);
}

static jv call_method(rstate *R, const node *at, jv obj, jv name, const args *a)
{
#define M(s) jv_eq_cstr(name, s)
    if (obj.t == V_STR) {
        if (M("strip")) return py_strip(obj, 3, arg(a, 0, "chars"));
        if (M("lstrip")) return py_strip(obj, 1, arg(a, 0, "chars"));
        if (M("rstrip")) return py_strip(obj, 2, arg(a, 0, "chars"));
        if (M("upper")) return str_case(R, obj, 1);
        if (M("lower")) return str_case(R, obj, 0);
        if (M("capitalize")) return str_case(R, obj, 2);
        if (M("title")) return str_case(R, obj, 3);
        if (M("startswith") || M("endswith")) {
            jv p = arg(a, 0, "prefix");
            int ends = M("endswith");
            jlist one = { 1, 1, &p, 0 };
            jlist *opts = p.t == V_LIST ? p.u.l : &one;
            for (size_t i = 0; i < opts->n; i++) {
                jv q = need_str(R, at, opts->v[i], ends ? "endswith" : "startswith");
                if (q.u.s.n <= obj.u.s.n &&
                    !memcmp(obj.u.s.p + (ends ? obj.u.s.n - q.u.s.n : 0), q.u.s.p, q.u.s.n)) return v_bool(1);
            }
            return v_bool(0);
        }
        if (M("split") || M("rsplit")) {
            jv sep = arg(a, 0, "sep");
            jv mx = arg(a, 1, "maxsplit");
            int64_t maxsplit = mx.t == V_INT ? mx.u.i : -1;
            jlist *l = list_new(R, 0);
            const char *p = obj.u.s.p;
            size_t n = obj.u.s.n;
            if (sep.t != V_STR) {   /* runs of whitespace */
                int64_t splits = 0;
                size_t i = 0;
                for (;;) {
                    while (i < n && py_space_at(p + i, n - i)) i += py_space_at(p + i, n - i);
                    if (i >= n) break;
                    size_t j = i;
                    if (maxsplit >= 0 && splits >= maxsplit) {
                        size_t e = n;
                        list_push(R, l, py_strip(v_str(p + i, e - i), 2, v_none()));
                        break;
                    }
                    while (j < n && !py_space_at(p + j, n - j)) j += u8_char_len(p + j, n - j);
                    list_push(R, l, v_str(p + i, j - i));
                    splits++;
                    i = j;
                }
                return v_list(l);
            }
            if (!sep.u.s.n) rfail(R, at, "split: empty separator");
            int64_t splits = 0;
            for (;;) {
                const char *hit = (maxsplit < 0 || splits < maxsplit) ? find_sub(p, n, sep.u.s.p, sep.u.s.n) : NULL;
                if (!hit) { list_push(R, l, v_str(p, n)); break; }
                list_push(R, l, v_str(p, (size_t)(hit - p)));
                n -= (size_t)(hit - p) + sep.u.s.n;
                p = hit + sep.u.s.n;
                splits++;
            }
            return v_list(l);
        }
        if (M("replace")) {
            jv c = arg(a, 2, "count");
            return str_replace(R, obj, need_str(R, at, arg(a, 0, "old"), "replace"), need_str(R, at, arg(a, 1, "new"), "replace"),
                               c.t == V_INT ? c.u.i : -1);
        }
        if (M("find") || M("count") || M("index")) {
            jv sub = need_str(R, at, arg(a, 0, "sub"), "find");
            if (M("count")) {
                int64_t k = 0;
                const char *p = obj.u.s.p;
                size_t n = obj.u.s.n;
                if (!sub.u.s.n) return v_int(length(R, at, obj) + 1);
                for (const char *h; (h = find_sub(p, n, sub.u.s.p, sub.u.s.n)); k++) { n -= (size_t)(h - p) + sub.u.s.n; p = h + sub.u.s.n; }
                return v_int(k);
            }
            const char *h = find_sub(obj.u.s.p, obj.u.s.n, sub.u.s.p, sub.u.s.n);
            if (!h && M("index")) rfail(R, at, "substring not found");
            return v_int(h ? (int64_t)u8_len(obj.u.s.p, (size_t)(h - obj.u.s.p)) : -1);
        }
        if (M("join")) {
            jlist *l = iter_list(R, at, arg(a, 0, "iterable"));
            sbuf o = { 0 };
            for (size_t i = 0; i < l->n; i++) {
                if (i) sb_add(R, &o, obj.u.s.p, obj.u.s.n);
                jv s = need_str(R, at, l->v[i], "join");
                sb_add(R, &o, s.u.s.p, s.u.s.n);
            }
            return sb_val(&o);
        }
        if (M("splitlines")) {
            jlist *l = list_new(R, 0);
            const char *p = obj.u.s.p;
            size_t n = obj.u.s.n, i = 0, st = 0;
            while (i < n) {
                if (p[i] == '\n' || p[i] == '\r') {
                    list_push(R, l, v_str(p + st, i - st));
                    if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') i++;
                    st = ++i;
                } else i++;
            }
            if (st < n) list_push(R, l, v_str(p + st, n - st));
            return v_list(l);
        }
        if (M("isdigit") || M("isspace") || M("isalpha") || M("isalnum")) {
            if (!obj.u.s.n) return v_bool(0);
            for (size_t i = 0; i < obj.u.s.n; i++) {
                unsigned char c = (unsigned char)obj.u.s.p[i];
                int ok = M("isdigit") ? isdigit(c) : M("isspace") ? is_ws((char)c) : M("isalpha") ? isalpha(c) : isalnum(c);
                if (!ok) return v_bool(0);
            }
            return v_bool(1);
        }
        if (M("format")) {
            /* "{}" and "{0}" placeholders */
            sbuf o = { 0 };
            size_t auto_i = 0;
            for (size_t i = 0; i < obj.u.s.n; i++) {
                char c = obj.u.s.p[i];
                if (c == '{' && i + 1 < obj.u.s.n && obj.u.s.p[i + 1] == '{') { sb_cstr(R, &o, "{"); i++; continue; }
                if (c == '}' && i + 1 < obj.u.s.n && obj.u.s.p[i + 1] == '}') { sb_cstr(R, &o, "}"); i++; continue; }
                if (c == '{') {
                    size_t j = i + 1;
                    while (j < obj.u.s.n && obj.u.s.p[j] != '}') j++;
                    if (j >= obj.u.s.n) rfail(R, at, "format: unmatched '{'");
                    jv v;
                    if (j == i + 1) v = arg(a, auto_i++, NULL);
                    else if (isdigit((unsigned char)obj.u.s.p[i + 1])) v = arg(a, (size_t)atoi(obj.u.s.p + i + 1), NULL);
                    else {
                        v = v_undef();
                        for (size_t k = 0; k < a->nk; k++) if (str_eq(a->kwn[k], obj.u.s.p + i + 1, j - i - 1)) v = a->kwv[k];
                    }
                    jv s = to_str(R, v);
                    sb_add(R, &o, s.u.s.p, s.u.s.n);
                    i = j;
                    continue;
                }
                sb_add(R, &o, &c, 1);
            }
            return sb_val(&o);
        }
    }
    if (obj.t == V_DICT) {
        if (M("items") || M("keys") || M("values")) {
            jlist *l = list_new(R, obj.u.d->n);
            for (size_t i = 0; i < obj.u.d->n; i++) {
                if (M("keys")) list_push(R, l, obj.u.d->k[i]);
                else if (M("values")) list_push(R, l, obj.u.d->v[i]);
                else {
                    jlist *pair = list_new(R, 2);
                    pair->tuple = 1;
                    list_push(R, pair, obj.u.d->k[i]);
                    list_push(R, pair, obj.u.d->v[i]);
                    list_push(R, l, v_list(pair));
                }
            }
            return v_list(l);
        }
        if (M("get")) {
            jv k = arg(a, 0, "key");
            jv v = getitem(R, at, obj, k);
            if (v.t == V_UNDEF) { jv d = arg(a, 1, "default"); return d.t == V_UNDEF ? v_none() : d; }
            return v;
        }
    }
    if (obj.t == V_LIST && (M("append") || M("pop") || M("insert") || M("extend") || M("remove") || M("clear")))
        rfail(R, at, "lists are immutable in chat templates (the sandbox refuses %.*s)", (int)name.u.s.n, name.u.s.p);
    if (obj.t == V_DICT && (M("update") || M("pop") || M("setdefault") || M("clear")))
        rfail(R, at, "dicts are immutable in chat templates (the sandbox refuses %.*s)", (int)name.u.s.n, name.u.s.p);
#undef M
    if (obj.t == V_UNDEF) {
        if (at->a && at->a->a && at->a->a->k == E_NAME)
            rfail(R, at, "'%.*s' is undefined", (int)at->a->a->v.u.s.n, at->a->a->v.u.s.p);
    }
    rfail(R, at, "a %s has no method '%.*s'", type_name(obj), (int)name.u.s.n, name.u.s.p);
    return v_undef();
}

static jv call_global(rstate *R, const node *at, jv name, const args *a)
{
#define G(s) jv_eq_cstr(name, s)
    if (G("raise_exception")) {
        jv m = to_str(R, arg(a, 0, "message"));
        R->E->code = QL_EINVAL;
        R->E->line = at->line;
        snprintf(R->E->msg, sizeof R->E->msg, "raise_exception: %.*s", (int)m.u.s.n, m.u.s.p);
        longjmp(R->E->jb, 1);
    }
    if (G("namespace") || G("dict")) {
        jdict *d = dict_new(R);
        jv first = arg(a, 0, NULL);
        if (first.t == V_DICT) for (size_t i = 0; i < first.u.d->n; i++) dict_set(R, d, first.u.d->k[i], first.u.d->v[i]);
        for (size_t i = 0; i < a->nk; i++) dict_set(R, d, a->kwn[i], a->kwv[i]);
        jv v = v_dict(d);
        if (G("namespace")) v.t = V_NS;
        return v;
    }
    if (G("range")) {
        int64_t lo = 0, hi, st = 1;
        if (a->np == 1) hi = need_int(R, at, a->pos[0], "range");
        else if (a->np >= 2) {
            lo = need_int(R, at, a->pos[0], "range"); hi = need_int(R, at, a->pos[1], "range");
            if (a->np >= 3) st = need_int(R, at, a->pos[2], "range");
        } else rfail(R, at, "range needs an argument");
        if (st == 0) rfail(R, at, "range: step cannot be zero");
        int64_t count = st > 0 ? (hi > lo ? (hi - lo + st - 1) / st : 0) : (lo > hi ? (lo - hi - st - 1) / -st : 0);
        if (count > MAX_RANGE) rfail(R, at, "range of %lld items is over the limit of %d", (long long)count, MAX_RANGE);
        jlist *l = list_new(R, (size_t)count);
        for (int64_t i = 0; i < count; i++) list_push(R, l, v_int(lo + i * st));
        return v_list(l);
    }
    if (G("strftime_now")) {
        jv fmt = need_str(R, at, arg(a, 0, "format"), "strftime_now");
        struct tm tmv;
        time_t t;
        if (R->now) { t = (time_t)R->now; gmtime_r(&t, &tmv); }
        else { t = time(NULL); localtime_r(&t, &tmv); }
        char f[256], buf[512];
        snprintf(f, sizeof f, "%.*s", (int)fmt.u.s.n, fmt.u.s.p);
        size_t n = strftime(buf, sizeof buf, f, &tmv);
        char *p = ralloc(R, n + 1);
        memcpy(p, buf, n);
        return v_str(p, n);
    }
#undef G
    rfail(R, at, "'%.*s' is undefined (not a function this renderer knows)", (int)name.u.s.n, name.u.s.p);
    return v_undef();
}

static jv eval_call(rstate *R, const node *x, const node *caller, frame *caller_frame)
{
    const node *fn = x->a;
    args a = eval_args(R, x);
    if (fn->k == E_ATTR) {
        jv obj = eval(R, fn->a);
        if (obj.t == V_DICT || obj.t == V_NS) {
            jv *p = dict_find(obj.u.d, fn->v.u.s.p, fn->v.u.s.n);
            if (p && p->t == V_MACRO) return call_macro(R, x, *p, &a, caller, caller_frame);
        }
        return call_method(R, x, obj, fn->v, &a);
    }
    jv f = eval(R, fn);
    if (f.t == V_MACRO) return call_macro(R, x, f, &a, caller, caller_frame);
    if (f.t == V_FUNC) { jv nm = f; nm.t = V_STR; return call_global(R, x, nm, &a); }
    if (fn->k == E_NAME && f.t == V_UNDEF) return call_global(R, x, fn->v, &a);
    rfail(R, x, "a %s is not callable", type_name(f));
    return v_undef();
}

static jv eval(rstate *R, const node *x)
{
    switch (x->k) {
    case E_CONST: return x->v;
    case E_NAME: return lookup(R->ef, x->v);
    case E_ATTR: return getattr_v(R, x, eval(R, x->a), x->v);
    case E_ITEM: return getitem(R, x, eval(R, x->a), eval(R, x->b));
    case E_SLICE: {
        jv obj = eval(R, x->a);
        jv p[3];
        for (int i = 0; i < 3; i++) p[i] = x->kids[i] ? eval(R, x->kids[i]) : v_undef();
        return do_slice(R, x, obj, p[0], p[1], p[2]);
    }
    case E_CALL: return eval_call(R, x, NULL, NULL);
    case E_FILTER: {
        jv v = eval(R, x->a);
        args a = eval_args(R, x);
        return apply_filter(R, x, x->v, v, &a);
    }
    case E_TEST: {
        jv v;
        /* `x is defined` must not fail on x.y of an undefined x */
        if (x->a->k == E_NAME) v = lookup(R->ef, x->a->v);
        else v = eval(R, x->a);
        args a = eval_args(R, x);
        int r = apply_test(R, x, x->v, v, &a);
        return v_bool(x->op ? !r : r);
    }
    case E_BIN: return binop(R, x, x->op, eval(R, x->a), eval(R, x->b));
    case E_CONCAT: {
        jv a = to_str(R, eval(R, x->a)), b = to_str(R, eval(R, x->b));
        return binop(R, x, '+', a, b);
    }
    case E_NEG: case E_POS: {
        jv v = eval(R, x->a);
        if (!is_num(v)) rfail(R, x, "bad operand type for unary %c: %s", x->k == E_NEG ? '-' : '+', type_name(v));
        if (x->k == E_POS) return v.t == V_BOOL ? v_int(v.u.b) : v;
        return v.t == V_FLOAT ? v_float(-v.u.f) : v_int(-(v.t == V_BOOL ? v.u.b : v.u.i));
    }
    case E_NOT: return v_bool(!truthy(eval(R, x->a)));
    case E_AND: { jv a = eval(R, x->a); return truthy(a) ? eval(R, x->b) : a; }
    case E_OR: { jv a = eval(R, x->a); return truthy(a) ? a : eval(R, x->b); }
    case E_COND: return truthy(eval(R, x->a)) ? eval(R, x->b) : (x->c ? eval(R, x->c) : v_undef());
    case E_LIST: case E_TUPLE: {
        jlist *l = list_new(R, x->nk);
        for (size_t i = 0; i < x->nk; i++) list_push(R, l, eval(R, x->kids[i]));
        l->tuple = x->k == E_TUPLE;
        return v_list(l);
    }
    case E_DICT: {
        jdict *d = dict_new(R);
        for (size_t i = 0; i < x->nk; i++) dict_set(R, d, eval(R, x->kids[i]), eval(R, x->kids2[i]));
        return v_dict(d);
    }
    case E_CMP: {
        jv a = eval(R, x->kids[0]);
        for (size_t i = 0; i < x->nn; i++) {
            jv b = eval(R, x->kids[i + 1]);
            jv op = x->names[i];
            int r;
            if (jv_eq_cstr(op, "==")) r = values_eq(a, b);
            else if (jv_eq_cstr(op, "!=")) r = !values_eq(a, b);
            else if (jv_eq_cstr(op, "in")) r = contains(R, x, b, a);
            else if (jv_eq_cstr(op, "notin")) r = !contains(R, x, b, a);
            else {
                int c = cmp_values(R, x, a, b);
                r = jv_eq_cstr(op, "<") ? c < 0 : jv_eq_cstr(op, ">") ? c > 0 : jv_eq_cstr(op, "<=") ? c <= 0 : c >= 0;
            }
            if (!r) return v_bool(0);
            a = b;
        }
        return v_bool(1);
    }
    default: rfail(R, x, "internal: cannot evaluate node %d", x->k);
    }
    return v_undef();
}

/* ---- tests */

static int apply_test(rstate *R, const node *at, jv name, jv v, const args *a)
{
#define T(s) jv_eq_cstr(name, s)
    jv x = arg(a, 0, NULL);
    if (T("defined")) return v.t != V_UNDEF;
    if (T("undefined")) return v.t == V_UNDEF;
    if (T("none")) return v.t == V_NONE;
    if (T("string")) return v.t == V_STR;
    if (T("mapping")) return v.t == V_DICT;
    if (T("iterable")) return v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    if (T("sequence")) return v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    if (T("number")) return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL;
    if (T("integer")) return v.t == V_INT;
    if (T("float")) return v.t == V_FLOAT;
    if (T("boolean")) return v.t == V_BOOL;
    if (T("true")) return v.t == V_BOOL && v.u.b;
    if (T("false")) return v.t == V_BOOL && !v.u.b;
    if (T("callable")) return v.t == V_MACRO || v.t == V_FUNC;
    if (T("equalto") || T("eq") || T("==") || T("sameas")) {
        if (T("sameas") && (v.t == V_BOOL || x.t == V_BOOL || v.t == V_NONE || x.t == V_NONE)) return v.t == x.t && values_eq(v, x);
        return values_eq(v, x);
    }
    if (T("ne") || T("!=")) return !values_eq(v, x);
    if (T("lt") || T("lessthan")) return cmp_values(R, at, v, x) < 0;
    if (T("le")) return cmp_values(R, at, v, x) <= 0;
    if (T("gt") || T("greaterthan")) return cmp_values(R, at, v, x) > 0;
    if (T("ge")) return cmp_values(R, at, v, x) >= 0;
    if (T("in")) return contains(R, at, x, v);
    if (T("odd")) return (need_int(R, at, v, "odd") & 1) != 0;
    if (T("even")) return (need_int(R, at, v, "even") & 1) == 0;
    if (T("divisibleby")) { int64_t d = need_int(R, at, x, "divisibleby"); return d && need_int(R, at, v, "divisibleby") % d == 0; }
    if (T("lower") || T("upper")) {
        if (v.t != V_STR) return 0;
        jv c = str_case(R, v, T("upper"));
        return values_eq(c, v);
    }
#undef T
    rfail(R, at, "no test named '%.*s'", (int)name.u.s.n, name.u.s.p);
    return 0;
}

/* ---- filters */

static jv attr_path(rstate *R, const node *at, jv obj, jv path)
{
    /* "a.b" or "0" */
    const char *p = path.u.s.p;
    size_t n = path.u.s.n;
    while (n) {
        const char *dot = memchr(p, '.', n);
        size_t k = dot ? (size_t)(dot - p) : n;
        jv part = v_str(p, k);
        int digit = k && isdigit((unsigned char)p[0]);
        if (digit) obj = getitem(R, NULL, obj, v_int(strtoll(p, NULL, 10)));
        else if (obj.t == V_DICT || obj.t == V_NS) obj = getattr_v(R, at, obj, part);
        else obj = v_undef();
        if (!dot) break;
        p = dot + 1;
        n -= k + 1;
    }
    return obj;
}

static jv apply_filter(rstate *R, const node *at, jv name, jv v, const args *a)
{
#define F(s) jv_eq_cstr(name, s)
    if (F("trim")) return py_strip(need_str(R, at, to_str(R, v), "trim"), 3, arg(a, 0, "chars"));
    if (F("length") || F("count")) return v_int(length(R, at, v));
    if (F("string")) return to_str(R, v);
    if (F("safe")) return v;
    if (F("upper")) return str_case(R, to_str(R, v), 1);
    if (F("lower")) return str_case(R, to_str(R, v), 0);
    if (F("capitalize")) return str_case(R, to_str(R, v), 2);
    if (F("title")) return str_case(R, to_str(R, v), 3);
    if (F("tojson")) {
        jsonfmt f = { "", 0, 0, v_cstr(", "), v_cstr(": "), 0 };
        jv ind = arg(a, 1, "indent"), seps = arg(a, 2, "separators"), sk = arg(a, 3, "sort_keys");
        char spaces[64];
        if (ind.t == V_INT) {
            int64_t k = ind.u.i < 0 ? 0 : ind.u.i > 63 ? 63 : ind.u.i;
            memset(spaces, ' ', (size_t)k);
            f.indent = spaces; f.indent_n = (size_t)k; f.has_indent = 1;
            f.item_sep = v_cstr(",");
        } else if (ind.t == V_STR) {
            f.indent = ind.u.s.p; f.indent_n = ind.u.s.n; f.has_indent = 1;
            f.item_sep = v_cstr(",");
        }
        if (seps.t == V_LIST && seps.u.l->n == 2) {
            f.item_sep = need_str(R, at, seps.u.l->v[0], "tojson separators");
            f.key_sep = need_str(R, at, seps.u.l->v[1], "tojson separators");
        }
        f.sort = truthy(sk);
        sbuf o = { 0 };
        json_dump(R, at, &o, v, &f, 0);
        return sb_val(&o);
    }
    if (F("default") || F("d")) {
        jv dv = arg(a, 0, "default_value");
        int boolean = truthy(arg(a, 1, "boolean"));
        if (v.t == V_UNDEF || (boolean && !truthy(v))) return dv.t == V_UNDEF ? v_cstr("") : dv;
        return v;
    }
    if (F("join")) {
        jv sep = arg(a, 0, "d");
        jv attr = arg(a, 1, "attribute");
        jlist *l = iter_list(R, at, v);
        sbuf o = { 0 };
        for (size_t i = 0; i < l->n; i++) {
            if (i && sep.t == V_STR) sb_add(R, &o, sep.u.s.p, sep.u.s.n);
            jv it = attr.t == V_STR ? attr_path(R, at, l->v[i], attr) : l->v[i];
            jv s = to_str(R, it);
            sb_add(R, &o, s.u.s.p, s.u.s.n);
        }
        return sb_val(&o);
    }
    if (F("replace")) {
        jv c = arg(a, 2, "count");
        return str_replace(R, to_str(R, v), need_str(R, at, arg(a, 0, "old"), "replace"),
                           need_str(R, at, to_str(R, arg(a, 1, "new")), "replace"), c.t == V_INT ? c.u.i : -1);
    }
    if (F("items")) {
        if (v.t == V_UNDEF) return v_list(list_new(R, 0));
        if (v.t != V_DICT && v.t != V_NS) rfail(R, at, "items: expected a mapping, got %s", type_name(v));
        args none = { 0 };
        jv d = v; d.t = V_DICT;
        return call_method(R, at, d, v_cstr("items"), &none);
    }
    if (F("list")) {
        jlist *src = iter_list(R, at, v), *l = list_new(R, src->n);
        for (size_t i = 0; i < src->n; i++) list_push(R, l, src->v[i]);
        return v_list(l);
    }
    if (F("first")) { jlist *l = iter_list(R, at, v); return l->n ? l->v[0] : v_undef(); }
    if (F("last")) {
        if (v.t == V_STR) return getitem(R, at, v, v_int(-1));
        jlist *l = iter_list(R, at, v);
        return l->n ? l->v[l->n - 1] : v_undef();
    }
    if (F("reverse")) {
        if (v.t == V_STR) return do_slice(R, at, v, v_undef(), v_undef(), v_int(-1));
        jlist *src = iter_list(R, at, v), *l = list_new(R, src->n);
        for (size_t i = src->n; i-- > 0;) list_push(R, l, src->v[i]);
        return v_list(l);
    }
    if (F("selectattr") || F("rejectattr") || F("select") || F("reject")) {
        int by_attr = F("selectattr") || F("rejectattr"), keep = F("selectattr") || F("select");
        jlist *src = iter_list(R, at, v), *l = list_new(R, src->n);
        size_t base = by_attr ? 1 : 0;
        jv attr = by_attr ? need_str(R, at, arg(a, 0, "attribute"), "selectattr") : v_undef();
        jv test = base < a->np ? a->pos[base] : v_undef();
        args targs = { 0 };
        if (a->np > base + 1) { targs.pos = a->pos + base + 1; targs.np = a->np - base - 1; }
        for (size_t i = 0; i < src->n; i++) {
            jv it = by_attr ? attr_path(R, at, src->v[i], attr) : src->v[i];
            int r = test.t == V_STR ? apply_test(R, at, test, it, &targs) : truthy(it);
            if (r == keep) list_push(R, l, src->v[i]);
        }
        return v_list(l);
    }
    if (F("map")) {
        jlist *src = iter_list(R, at, v), *l = list_new(R, src->n);
        jv attr = arg(a, 99, "attribute");
        jv dflt = arg(a, 99, "default");
        jv fname = a->np ? a->pos[0] : v_undef();
        args fargs = { 0 };
        if (a->np > 1) { fargs.pos = a->pos + 1; fargs.np = a->np - 1; }
        for (size_t i = 0; i < src->n; i++) {
            jv it;
            if (attr.t == V_STR) { it = attr_path(R, at, src->v[i], attr); if (it.t == V_UNDEF && dflt.t != V_UNDEF) it = dflt; }
            else if (fname.t == V_STR) it = apply_filter(R, at, fname, src->v[i], &fargs);
            else rfail(R, at, "map needs a filter name or attribute=");
            list_push(R, l, it);
        }
        return v_list(l);
    }
    if (F("int")) {
        jv dflt = arg(a, 0, "default");
        if (v.t == V_INT) return v;
        if (v.t == V_BOOL) return v_int(v.u.b);
        if (v.t == V_FLOAT) return v_int((int64_t)v.u.f);
        if (v.t == V_STR) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.p);
            char *e;
            long long k = strtoll(buf, &e, 10);
            while (*e && is_ws(*e)) e++;
            if (e != buf && !*e) return v_int(k);
            double d = strtod(buf, &e);
            while (*e && is_ws(*e)) e++;
            if (e != buf && !*e) return v_int((int64_t)d);
        }
        return dflt.t == V_UNDEF ? v_int(0) : dflt;
    }
    if (F("float")) {
        if (is_num(v)) return v_float(num(v));
        if (v.t == V_STR) {
            char buf[64], *e;
            snprintf(buf, sizeof buf, "%.*s", (int)(v.u.s.n < 63 ? v.u.s.n : 63), v.u.s.p);
            double d = strtod(buf, &e);
            if (e != buf) return v_float(d);
        }
        jv dflt = arg(a, 0, "default");
        return dflt.t == V_UNDEF ? v_float(0) : dflt;
    }
    if (F("abs")) {
        if (v.t == V_INT) return v_int(v.u.i < 0 ? -v.u.i : v.u.i);
        if (v.t == V_FLOAT) return v_float(fabs(v.u.f));
        rfail(R, at, "abs: expected a number, got %s", type_name(v));
    }
    if (F("round")) {
        jv pr = arg(a, 0, "precision");
        double m = pow(10, pr.t == V_INT ? (double)pr.u.i : 0);
        return v_float(round(num(v) * m) / m);
    }
    if (F("indent")) {
        jv w = arg(a, 0, "width");
        int first = truthy(arg(a, 1, "first")), blank = truthy(arg(a, 2, "blank"));
        sbuf ind = { 0 };
        if (w.t == V_STR) sb_add(R, &ind, w.u.s.p, w.u.s.n);
        else for (int64_t i = 0, k = w.t == V_INT ? w.u.i : 4; i < k && i < 256; i++) sb_cstr(R, &ind, " ");
        jv s = to_str(R, v);
        /* lines as str.splitlines() of s + "\n" */
        sbuf tmp = { 0 };
        sb_add(R, &tmp, s.u.s.p, s.u.s.n);
        sb_cstr(R, &tmp, "\n");
        args none = { 0 };
        jlist *lines = call_method(R, at, sb_val(&tmp), v_cstr("splitlines"), &none).u.l;
        sbuf o = { 0 };
        if (first) sb_add(R, &o, ind.p, ind.n);
        for (size_t i = 0; i < lines->n; i++) {
            jv ln = lines->v[i];
            if (i) {
                sb_cstr(R, &o, "\n");
                if (blank || ln.u.s.n) sb_add(R, &o, ind.p, ind.n);
            }
            sb_add(R, &o, ln.u.s.p, ln.u.s.n);
        }
        return sb_val(&o);
    }
    if (F("unique")) {
        jlist *src = iter_list(R, at, v), *l = list_new(R, src->n);
        for (size_t i = 0; i < src->n; i++) {
            int seen = 0;
            for (size_t j = 0; j < l->n && !seen; j++) seen = values_eq(l->v[j], src->v[i]);
            if (!seen) list_push(R, l, src->v[i]);
        }
        return v_list(l);
    }
    if (F("sort") || F("dictsort")) {
        jlist *src = F("dictsort") ? call_method(R, at, v, v_cstr("items"), &(args){ 0 }).u.l : iter_list(R, at, v);
        jlist *l = list_new(R, src->n);
        jv attr = arg(a, 99, "attribute");
        int rev = truthy(arg(a, 0, "reverse"));
        for (size_t i = 0; i < src->n; i++) {
            list_push(R, l, src->v[i]);
            for (size_t j = l->n - 1; j > 0; j--) {
                jv x = attr.t == V_STR ? attr_path(R, at, l->v[j - 1], attr) : l->v[j - 1];
                jv y = attr.t == V_STR ? attr_path(R, at, l->v[j], attr) : l->v[j];
                int c = cmp_values(R, at, x, y);
                if (rev ? c >= 0 : c <= 0) break;
                jv t = l->v[j]; l->v[j] = l->v[j - 1]; l->v[j - 1] = t;
            }
        }
        return v_list(l);
    }
    if (F("escape") || F("e")) {
        jv s = to_str(R, v);
        sbuf o = { 0 };
        for (size_t i = 0; i < s.u.s.n; i++) {
            char c = s.u.s.p[i];
            if (c == '&') sb_cstr(R, &o, "&amp;");
            else if (c == '<') sb_cstr(R, &o, "&lt;");
            else if (c == '>') sb_cstr(R, &o, "&gt;");
            else if (c == '"') sb_cstr(R, &o, "&#34;");
            else if (c == '\'') sb_cstr(R, &o, "&#39;");
            else sb_add(R, &o, &c, 1);
        }
        return sb_val(&o);
    }
    if (F("sum")) {
        jlist *l = iter_list(R, at, v);
        jv acc = v_int(0);
        for (size_t i = 0; i < l->n; i++) acc = binop(R, at, '+', acc, l->v[i]);
        return acc;
    }
    if (F("min") || F("max")) {
        jlist *l = iter_list(R, at, v);
        if (!l->n) return v_undef();
        jv best = l->v[0];
        for (size_t i = 1; i < l->n; i++) {
            int c = cmp_values(R, at, l->v[i], best);
            if (F("min") ? c < 0 : c > 0) best = l->v[i];
        }
        return best;
    }
    if (F("wordcount")) {
        args none = { 0 };
        return v_int((int64_t)call_method(R, at, to_str(R, v), v_cstr("split"), &none).u.l->n);
    }
#undef F
    rfail(R, at, "no filter named '%.*s'", (int)name.u.s.n, name.u.s.p);
    return v_undef();
}

/* ---- statements */

/* the filters of a {% filter %} / {% set x | f %} block applied to its rendered body v;
   the chain's innermost operand is a placeholder */
static jv filter_chain(rstate *R, const node *c, jv v)
{
    if (c->k != E_FILTER) return v;
    v = filter_chain(R, c->a, v);
    args a = eval_args(R, c);
    return apply_filter(R, c, c->v, v, &a);
}

static void assign(rstate *R, const node *x, frame *f, jv val)
{
    if (x->v.t == V_STR) {   /* ns.attr = value */
        jv ns = lookup(f, x->names[0]);
        if (ns.t != V_NS) rfail(R, x, "cannot set an attribute of '%.*s', a %s: only namespace() objects take assignments",
                                (int)x->names[0].u.s.n, x->names[0].u.s.p, type_name(ns));
        if (x->v.u.s.n && x->v.u.s.p[0] == '_') rfail(R, x, "namespace attributes cannot start with '_'");
        dict_set(R, ns.u.d, x->v, val);
        return;
    }
    if (x->nn == 1) { dict_set(R, &f->vars, x->names[0], val); return; }
    jlist *l = iter_list(R, x, val);
    if (l->n != x->nn) rfail(R, x, "cannot unpack %zu values into %zu names", l->n, x->nn);
    for (size_t i = 0; i < x->nn; i++) dict_set(R, &f->vars, x->names[i], l->v[i]);
}

static void render_body(rstate *R, const node *b, frame *f)
{
    for (size_t i = 0; i < b->nk && !R->ctl; i++) render(R, b->kids[i], f);
}

static void render(rstate *R, const node *x, frame *f)
{
    frame *save_ef = R->ef;
    R->ef = f;
    if (++R->depth > MAX_DEPTH * 4) rfail(R, x, "template nested too deeply");
    switch (x->k) {
    case N_BODY: render_body(R, x, f); break;
    case N_TEXT: sb_add(R, R->out, x->v.u.s.p, x->v.u.s.n); break;
    case N_OUT: {
        jv v = eval(R, x->a);
        jv s = to_str(R, v);
        sb_add(R, R->out, s.u.s.p, s.u.s.n);
        break;
    }
    case N_IF: {
        const node *c = x;
        while (c && c->k == N_IF) {
            R->ef = f;
            if (truthy(eval(R, c->a))) { render_body(R, c->b, f); c = NULL; break; }
            c = c->c;
        }
        if (c) render_body(R, c, f);
        break;
    }
    case N_FOR: {
        jv it = eval(R, x->a);
        jlist *src = iter_list(R, x, it);
        jlist *items = src;
        if (x->c) {   /* {% for a in b if cond %}: the loop counts the kept items */
            items = list_new(R, src->n);
            for (size_t i = 0; i < src->n; i++) {
                frame *tf = frame_new(R, f);
                node tmp = *x;
                tmp.v = v_undef();
                assign(R, &tmp, tf, src->v[i]);
                R->ef = tf;
                if (truthy(eval(R, x->c))) list_push(R, items, src->v[i]);
            }
        }
        size_t n = items->n;
        for (size_t i = 0; i < n; i++) {
            frame *itf = frame_new(R, f);   /* each iteration starts with fresh locals */
            jdict *loop = dict_new(R);
            dict_setc(R, loop, "index", v_int((int64_t)i + 1));
            dict_setc(R, loop, "index0", v_int((int64_t)i));
            dict_setc(R, loop, "revindex", v_int((int64_t)(n - i)));
            dict_setc(R, loop, "revindex0", v_int((int64_t)(n - i - 1)));
            dict_setc(R, loop, "first", v_bool(i == 0));
            dict_setc(R, loop, "last", v_bool(i + 1 == n));
            dict_setc(R, loop, "length", v_int((int64_t)n));
            dict_setc(R, loop, "previtem", i ? items->v[i - 1] : v_undef());
            dict_setc(R, loop, "nextitem", i + 1 < n ? items->v[i + 1] : v_undef());
            dict_setc(R, loop, "depth", v_int(1));
            dict_setc(R, loop, "depth0", v_int(0));
            dict_setc(R, &itf->vars, "loop", v_dict(loop));
            node tmp = *x;
            tmp.v = v_undef();
            assign(R, &tmp, itf, items->v[i]);
            render_body(R, x->b, itf);
            if (R->ctl == 1) { R->ctl = 0; break; }
            R->ctl = 0;
        }
        if (!n && x->nk2) render_body(R, x->kids2[0], f);
        break;
    }
    case N_SET: assign(R, x, f, eval(R, x->a)); break;
    case N_SETBLOCK: {
        sbuf o = { 0 }, *save = R->out;
        R->out = &o;
        render_body(R, x->b, f);
        R->out = save;
        jv v = sb_val(&o);
        R->ef = f;
        if (x->c) v = filter_chain(R, x->c, v);
        assign(R, x, f, v);
        break;
    }
    case N_FILTERBLOCK: {
        sbuf o = { 0 }, *save = R->out;
        R->out = &o;
        render_body(R, x->b, f);
        R->out = save;
        R->ef = f;
        jv v = to_str(R, filter_chain(R, x->c, sb_val(&o)));
        sb_add(R, R->out, v.u.s.p, v.u.s.n);
        break;
    }
    case N_MACRO: {
        jv m; memset(&m, 0, sizeof m); m.t = V_MACRO;
        m.u.m.m = x;
        m.u.m.closure = f;
        dict_set(R, &f->vars, x->v, m);
        break;
    }
    case N_CALLBLOCK: {
        /* the caller's body sees the frame of the call site */
        const node *call = x->a;
        node *body_macro = ralloc(R, sizeof *body_macro);
        *body_macro = *x;
        body_macro->k = N_MACRO;
        jv v = eval_call(R, call, body_macro, f);
        jv s = to_str(R, v);
        sb_add(R, R->out, s.u.s.p, s.u.s.n);
        break;
    }
    case N_BREAK: R->ctl = 1; break;
    case N_CONTINUE: R->ctl = 2; break;
    default: rfail(R, x, "internal: cannot render node %d", x->k);
    }
    R->depth--;
    R->ef = save_ef;
}

/* ---- JSON input */

static jv from_json(rstate *R, const ql_json *j, int depth)
{
    if (!j) return v_undef();
    if (depth > MAX_DEPTH) rfail(R, NULL, "template variables nested too deeply");
    switch (j->type) {
    case QL_JSON_NULL: return v_none();
    case QL_JSON_FALSE: return v_bool(0);
    case QL_JSON_TRUE: return v_bool(1);
    case QL_JSON_NUMBER: {
        double d = j->u.num;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return v_int((int64_t)d);
        return v_float(d);
    }
    case QL_JSON_STRING: return v_str(j->u.str, j->n);
    case QL_JSON_ARRAY: {
        jlist *l = list_new(R, j->n);
        for (size_t i = 0; i < j->n; i++) list_push(R, l, from_json(R, &j->u.items[i], depth + 1));
        return v_list(l);
    }
    case QL_JSON_OBJECT: {
        jdict *d = dict_new(R);
        for (size_t i = 0; i < j->n; i++)
            dict_set(R, d, v_str(j->u.items[2 * i].u.str, j->u.items[2 * i].n), from_json(R, &j->u.items[2 * i + 1], depth + 1));
        return v_dict(d);
    }
    }
    return v_undef();
}

ql_status ql_jinja_render(const ql_jinja *t, const ql_json *vars, const ql_jinja_opts *opts, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (vars && vars->type != QL_JSON_OBJECT) return ql_fail(QL_EINVAL, "%s: template variables must be a JSON object", t->name);
    rstate *R = calloc(1, sizeof *R);
    errctx *E = calloc(1, sizeof *E);
    if (!R || !E) { free(R); free(E); return ql_fail(QL_ENOMEM, "%s: out of memory", t->name); }
    R->E = E;
    R->now = opts ? opts->now : 0;
    if (setjmp(E->jb)) {
        set_error(E, t->name);
        ql_status code = E->code;
        arena_free(&R->A);
        free(R); free(E);
        return code;
    }
    R->globals = frame_new(R, NULL);
    if (vars)
        for (size_t i = 0; i < vars->n; i++)
            dict_set(R, &R->globals->vars, v_str(vars->u.items[2 * i].u.str, vars->u.items[2 * i].n),
                     from_json(R, &vars->u.items[2 * i + 1], 0));
    sbuf o = { 0 };
    R->out = &o;
    render(R, t->root, R->globals);
    char *res = malloc(o.n + 1);
    if (!res) { arena_free(&R->A); free(R); free(E); return ql_fail(QL_ENOMEM, "%s: out of memory", t->name); }
    if (o.n) memcpy(res, o.p, o.n);
    res[o.n] = 0;
    *out = res;
    if (out_len) *out_len = o.n;
    arena_free(&R->A);
    free(R); free(E);
    return QL_OK;
}
