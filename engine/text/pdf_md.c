/*
 * pdf_md.c — PDF structured text (pdf.c) to Markdown.
 *
 * Pipeline, per document:
 *   1. load every page's lines (pdf.c);
 *   2. furniture: rows at the top/bottom edge that carry a page number whose
 *      offset from the page index recurs, or whose text recurs at one place
 *      (running heads, "Chapter 3: Title 7", "12 / 92", roman numerals), and
 *      lone page numbers, are dropped (see find_furniture; no fixed margins);
 *      slide numbers with their total ("2 / 5") leave the frame title beside them;
 *   3. reading order: a page whose lines leave a vertical gutter free is read
 *      as two columns, band by band (full-width lines, and tables across both
 *      columns, told by their rules, separate bands; spanning_zones); a title
 *      block of authors side by side is read stack by stack (title_stacks);
 *   4. rows: lines on one baseline within a column join into a row of spans;
 *      wide gaps split a row into cells;
 *   5. classes: code (all monospace), contents lines (title, leader, page
 *      number: a nested list), list items (bullet glyph, drawn dot, or
 *      number marker, slide triangles), table runs (>=2 aligned cells on consecutive rows),
 *      footnotes (small rows led by a raised mark), heading candidates (larger
 *      than body text, or bold and short); heading levels come from the
 *      outline when it matches, else from the rank of the heading styles;
 *      slide decks (landscape pages) take frame titles as headings under the
 *      outline's sections, inserted where only the navigation bar names them
 *      (deck_outline);
 *   6. blocks: paragraphs reflowed across lines, columns and pages with
 *      de-hyphenation; code blocks with indentation; lists with nesting; GFM
 *      tables (a table's own notes right after it); footnotes at the end.
 * Units are PDF points. Nothing here touches MuPDF directly.
 * opts->timeout bounds a file: the loops poll ql_pdf_timed_out() (MuPDF's own
 * stop through its cookie) and the file fails with QL_ETIMEOUT. Damage seen on
 * the way (unmapped text, damaged pages, a repaired file) goes to the stats.
 */
#include "pdf.h"
#include "platform.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ql_pdf_md_opts_default(ql_pdf_md_opts *o)
{
    memset(o, 0, sizeof *o);
    o->use_outline = 1;
    o->inline_styles = 1;
}

/* ---------------------------------------------------------------- strings */
/* A growable NUL-terminated buffer. Growth is checked: a size that would
   overflow, or memory that runs out, sets `oom` and makes further appends
   no-ops (the caller checks once at the end and fails). Never keep a pointer
   into p across an append: appends may move it; keep offsets instead. */
typedef struct { char *p; size_t n, cap; int oom; } str;

static int s_grow(str *s, size_t add)
{
    if (s->oom) return -1;
    if (add > SIZE_MAX - 1 - s->n) { s->oom = 1; return -1; }
    size_t need = s->n + add + 1;
    if (need <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *q = realloc(s->p, cap);
    if (!q) { s->oom = 1; return -1; }
    s->p = q; s->cap = cap;
    return 0;
}
static void s_addn(str *s, const char *t, size_t n)
{
    if (s_grow(s, n)) return;
    memcpy(s->p + s->n, t, n); s->n += n; s->p[s->n] = 0;
}
static void s_add(str *s, const char *t) { s_addn(s, t, strlen(t)); }
static void s_addc(str *s, char c) { s_addn(s, &c, 1); }
static void s_printf(str *s, const char *fmt, ...)
{
    char buf[256];
    va_list ap; va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) s_addn(s, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}
static char s_last(const str *s) { return s->n ? s->p[s->n - 1] : 0; }

/* UTF-8 decode one code point at *p (advances). Invalid bytes give U+FFFD. */
static int u8_next(const char **p)
{
    const unsigned char *s = (const unsigned char *)*p;
    int c = s[0], n = 0;
    if (c < 0x80) { *p += 1; return c; }
    if ((c & 0xE0) == 0xC0) { c &= 0x1F; n = 1; }
    else if ((c & 0xF0) == 0xE0) { c &= 0x0F; n = 2; }
    else if ((c & 0xF8) == 0xF0) { c &= 0x07; n = 3; }
    else { *p += 1; return 0xFFFD; }
    for (int i = 1; i <= n; i++) {
        if ((s[i] & 0xC0) != 0x80) { *p += i; return 0xFFFD; }
        c = (c << 6) | (s[i] & 0x3F);
    }
    *p += n + 1;
    return c;
}

static int is_lower_start(const char *t)
{
    const char *p = t;
    int c = u8_next(&p);
    if (c < 0x80) return islower(c);
    return (c >= 0xDF && c <= 0xFF && c != 0xF7) || (c >= 0x430 && c <= 0x44F);
}

/* lowercase alphanumerics only, digits replaced by '#' when digits_hash */
static void norm_key(const char *t, char *out, size_t size, int digits_hash)
{
    size_t k = 0;
    for (const char *p = t; *p && k + 5 < size;) {
        const char *q = p;
        int c = u8_next(&p);
        if (c < 0x80) {
            if (isdigit(c)) { if (digits_hash) { if (k == 0 || out[k - 1] != '#') out[k++] = '#'; } else out[k++] = (char)c; }
            else if (isalpha(c)) out[k++] = (char)tolower(c);
        } else {
            while (q < p && k + 1 < size) out[k++] = *q++;
        }
    }
    out[k] = 0;
}

/* ---------------------------------------------------------------- rows */
enum { R_TEXT, R_HEAD, R_CODE, R_LIST, R_TABLE, R_FOOT, R_SKIP, R_TOC };

typedef struct row {
    int page, col;             /* col: index of the column band on the page */
    float x0, x1, y0, y1, base, size;
    float colx0, colx1;        /* bounds of the column the row is in */
    unsigned all, any;         /* AND / OR of span flags (spaces excluded) */
    int ncells;
    int nspans;
    const ql_pdf_span **spans;
    int kind, level;
    int marker_len;            /* bytes of the list marker at the start of text */
    float marker_x;            /* x of the list marker */
    int ordered;
    int dot;                   /* a drawn bullet precedes the row */
    int newcol;                /* first row of a column or page */
    int stack;                 /* > 0: a stack of a title block (one author's name,
                                  affiliation, address): one paragraph */
    char *text;                /* plain text, spans joined */
} row;

typedef struct {
    row *v; int n, cap;
} rowvec;

static int row_push(rowvec *rv, row *r)
{
    if (rv->n == rv->cap) {
        int cap = rv->cap ? rv->cap * 2 : 256;
        void *p = realloc(rv->v, (size_t)cap * sizeof *rv->v);
        if (!p) return -1;
        rv->v = p; rv->cap = cap;
    }
    rv->v[rv->n++] = *r;
    return 0;
}

static int is_pagenum_text(const char *t)
{
    /* "12", "- 12 -", "Page 12", "12 of 30", "xii", "12/30" */
    char buf[64];
    size_t n = strlen(t);
    if (n == 0 || n > 40) return 0;
    size_t k = 0;
    for (const char *p = t; *p && k + 1 < sizeof buf; p++)
        if (*p != ' ' && *p != '-' && *p != '|' && *p != '.' && *p != '[' && *p != ']') buf[k++] = (char)tolower((unsigned char)*p);
    buf[k] = 0;
    const char *s = buf;
    if (strncmp(s, "page", 4) == 0) s += 4;
    if (strncmp(s, "seite", 5) == 0) s += 5;
    int digits = 0;
    while (isdigit((unsigned char)*s)) { s++; digits++; }
    if (digits) {
        if (*s == 0) return 1;
        if (strncmp(s, "of", 2) == 0) s += 2; else if (*s == '/') s++; else return 0;
        while (isdigit((unsigned char)*s)) s++;
        return *s == 0;
    }
    if (*s == 0) return 0;
    for (; *s; s++) if (!strchr("ivxlc", *s)) return 0;
    return 1;
}

static char *line_text(const ql_pdf_line *l)
{
    str s = {0};
    for (int i = 0; i < l->nspans; i++) {
        if (i) s_addc(&s, ' ');
        s_add(&s, l->spans[i].text);
    }
    if (!s.p) return strdup("");
    return s.p;
}

/* No other line of the page on line i's baseline: a section number such as
   "1" or "1.2.1" set apart from its title is not a lone page number. */
static int line_alone(const ql_pdf_page *pg, int i)
{
    const ql_pdf_line *l = &pg->lines[i];
    float tol = 0.3f * (l->y1 - l->y0);
    for (int k = 0; k < pg->nlines; k++)
        if (k != i && fabsf(pg->lines[k].baseline - l->baseline) < tol) return 0;
    return 1;
}

/* ---------------------------------------------------------------- furniture */
/* Running heads and footers. A page's band rows (lines on one baseline in the
   outer 15% of the page, the three outermost rows of each band) are furniture
   when:
   - their first or last token is a page number, arabic or roman, whose offset
     from the page index recurs on many pages of the same band ("Chapter 3:
     Basic Shell Features 7", "12 / 92", "xii", "Page 4"); the printed page
     number varies, its distance from the page index does not;
   - or their digit-normalised text recurs at one place (band, baseline within
     3 pt, font size) on many pages ("Evaluation Corpus Draft", "Trovato et al.");
   - or they sit in a place where such rows stand and their text recurs there
     at least twice (chapter names of running heads without page numbers, the
     other side's head of odd and even pages).
   Matching by place keeps a title that also runs as the head of later pages:
   on its own page it stands lower and larger. Lone page numbers at a page's
   edge, alone on their baseline, go too. */
typedef struct {
    int page, band;            /* band 0: top, 1: bottom */
    float y, size;             /* baseline and font size of the row's first line */
    int nl, lines[8];          /* the page's lines on this baseline in the band */
    int numline[2];            /* line holding the first / last token */
    long num[2]; int numk[2];  /* first / last token as a page number: value, kind (0 none, 1 arabic, 2 roman) */
    char key[96];
    int rank;                  /* 0: the outermost row of its band on its page */
    int pnum;                  /* the row is only a page number ("12", "- 12 -", "12 / 92") */
    int mark;
    long fnum[2], ftot[2];     /* a leading / trailing "N / M" (slide numbers): N, M; 0 if none */
} frow;

static int roman_value(const char *t, size_t n)
{
    if (n == 0 || n > 8) return 0;
    int upper = isupper((unsigned char)t[0]);
    int v = 0, prev = 0;
    for (size_t i = n; i-- > 0;) {
        char c = t[i];
        if ((upper && !isupper((unsigned char)c)) || (!upper && !islower((unsigned char)c))) return 0;
        int d;
        switch (tolower((unsigned char)c)) {
        case 'i': d = 1; break; case 'v': d = 5; break; case 'x': d = 10; break;
        case 'l': d = 50; break; case 'c': d = 100; break; default: return 0;
        }
        if (d < prev) v -= d; else { v += d; prev = d; }
    }
    /* canonical form only ("iiii", "vx", "il" are words or noise) */
    static const char *const ones[] = {"", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix"};
    static const char *const tens[] = {"", "x", "xx", "xxx", "xl", "l", "lx", "lxx", "lxxx", "xc"};
    if (v <= 0 || v >= 200) return 0;
    char buf[24];
    snprintf(buf, sizeof buf, "%s%s%s", v >= 100 ? "c" : "", tens[(v / 10) % 10], ones[v % 10]);
    if (strlen(buf) != n) return 0;
    for (size_t i = 0; i < n; i++) if (tolower((unsigned char)t[i]) != buf[i]) return 0;
    return v;
}

/* A token as a page number: 1-9999 in digits, or a roman numeral. */
static long page_token(const char *t, size_t n, int *kind)
{
    *kind = 0;
    while (n && strchr("-([.", *t)) { t++; n--; }
    while (n && strchr("-)].,:", t[n - 1])) n--;
    if (n == 0) return 0;
    size_t d = 0;
    while (d < n && isdigit((unsigned char)t[d])) d++;
    if (d == n && n <= 4) { *kind = 1; return strtol(t, NULL, 10); }
    int v = roman_value(t, n);
    if (v) { *kind = 2; return v; }
    return 0;
}

static int cmp_long3(const void *a, const void *b)
{
    const long *x = a, *y = b;
    for (int i = 0; i < 3; i++) if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return (x[3] > y[3]) - (x[3] < y[3]);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* median of v[0..n), n > 0 (reorders v) */
static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return v[n / 2];
}

static _Thread_local const frow *frow_sort;
static int cmp_frow_key(const void *a, const void *b)
{
    const frow *x = &frow_sort[*(const int *)a], *y = &frow_sort[*(const int *)b];
    if (x->band != y->band) return x->band - y->band;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    return (x->y > y->y) - (x->y < y->y);
}

static int cmp_frow_place(const void *a, const void *b)
{
    const frow *x = &frow_sort[*(const int *)a], *y = &frow_sort[*(const int *)b];
    if (x->band != y->band) return x->band - y->band;
    long sx = lroundf(x->size * 2), sy = lroundf(y->size * 2);
    if (sx != sy) return sx < sy ? -1 : 1;
    return (x->y > y->y) - (x->y < y->y);
}

/* digits (1-4) at t[*i..n) -> value, advancing *i; -1 when none */
static long frac_digits(const char *t, size_t n, size_t *i)
{
    size_t a = *i;
    long v = 0;
    while (*i < n && isdigit((unsigned char)t[*i]) && *i - a < 4) v = v * 10 + (t[(*i)++] - '0');
    if (*i == a || (*i < n && isdigit((unsigned char)t[*i]))) return -1;
    return v;
}

/* "N / M" or "N of M" (a slide or page number with the total) standing at the
   start (end 0) or the end (end 1) of t[0..n): N and M, and the bytes it
   covers from that end; 0 when none. */
static size_t frac_at(const char *t, size_t n, int end, long *num, long *tot)
{
    while (n && t[n - 1] == ' ') n--;
    size_t s = 0;
    while (s < n && t[s] == ' ') s++;
    size_t i;
    if (end) {   /* back over "M", the slash, "N" */
        i = n;
        while (i > s && isdigit((unsigned char)t[i - 1]) && n - i < 4) i--;
        if (i == n || (i > s && isdigit((unsigned char)t[i - 1]))) return 0;
        while (i > s && t[i - 1] == ' ') i--;
        if (i > s && t[i - 1] == '/') i--;
        else if (i >= s + 2 && !memcmp(t + i - 2, "of", 2)) i -= 2;
        else return 0;
        while (i > s && t[i - 1] == ' ') i--;
        size_t b = i;
        while (i > s && isdigit((unsigned char)t[i - 1]) && b - i < 4) i--;
        if (i == b || (i > s && t[i - 1] != ' ')) return 0;
    } else i = s;
    size_t at = i;
    long a = frac_digits(t, n, &i);
    if (a < 0) return 0;
    while (i < n && t[i] == ' ') i++;
    if (i < n && t[i] == '/') i++;
    else if (i + 2 <= n && !memcmp(t + i, "of", 2)) i += 2;
    else return 0;
    while (i < n && t[i] == ' ') i++;
    long b = frac_digits(t, n, &i);
    if (b < 0 || (i < n && t[i] != ' ') || a < 1 || b < 2 || a > b) return 0;
    *num = a; *tot = b;
    return end ? n - at : i;
}

typedef struct { long band, end, tot, page, num; int row; } fracrow;
static int cmp_fracrow(const void *a, const void *b)
{
    const fracrow *x = a, *y = b;
    if (x->band != y->band) return x->band < y->band ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    if (x->tot != y->tot) return x->tot < y->tot ? -1 : 1;
    if (x->page != y->page) return x->page < y->page ? -1 : 1;
    return x->row - y->row;
}

/* Takes a slide number "N / M" off line li of pg: the whole line when that is
   all it holds, else the spans that make it up at the line's start (end 0) or
   end (end 1), so a frame title on the same line stays. 1 when done. */
static int strip_fraction(ql_pdf_page *pg, int li, int end, unsigned char *furn)
{
    ql_pdf_line *l = &pg->lines[li];
    char *t = line_text(l);
    if (!t) return 0;
    long a, b;
    size_t n = strlen(t), k = frac_at(t, n, end, &a, &b);
    size_t all = n;
    while (all && t[all - 1] == ' ') all--;
    size_t lead = 0;
    while (lead < all && t[lead] == ' ') lead++;
    free(t);
    if (!k) return 0;
    if (k >= all - lead) { if (furn[li]) return 0; furn[li] = 1; return 1; }
    /* whole spans only: those at that end whose text is the fraction, exactly */
    for (int ns = 1; ns < l->nspans; ns++) {
        str u = {0};
        for (int s = 0; s < ns; s++) {
            if (s) s_addc(&u, ' ');
            s_add(&u, l->spans[end ? l->nspans - ns + s : s].text);
        }
        if (u.oom || !u.p) { free(u.p); return 0; }
        size_t un = u.n;
        while (un && u.p[un - 1] == ' ') un--;
        size_t ul = 0;
        while (ul < un && u.p[ul] == ' ') ul++;
        long a2, b2;
        size_t k2 = frac_at(u.p, u.n, end, &a2, &b2);
        free(u.p);
        if (un - ul > k + 1) return 0;
        if (!k2 || k2 < un - ul || a2 != a || b2 != b) continue;
        if (end) { l->nspans -= ns; l->x1 = l->spans[l->nspans - 1].x1; }
        else { l->spans += ns; l->nspans -= ns; l->x0 = l->spans[0].x0; }
        return 1;
    }
    return 0;
}

/* Marks furniture lines: furn[p][i] = 1. Returns lines marked. */
static int find_furniture(ql_pdf *pdf, ql_pdf_page **pages, int np, unsigned char **furn)
{
    int marked = 0, nr = 0, cap = 0;
    frow *rs = NULL;
    enum { K = 3 };
    for (int p = 0; p < np && !ql_pdf_timed_out(pdf); p++) {
        ql_pdf_page *pg = pages[p];
        for (int band = 0; band < 2; band++) {
            /* the K outermost baselines in the band */
            float bases[64]; int nb = 0;
            /* the page's outermost line counts wherever it stands (a page number
               under a short text block) */
            float edge = band == 0 ? 1e9f : -1e9f;
            for (int i = 0; i < pg->nlines; i++)
                edge = band == 0 ? fminf(edge, pg->lines[i].baseline) : fmaxf(edge, pg->lines[i].baseline);
            for (int i = 0; i < pg->nlines; i++) {
                const ql_pdf_line *l = &pg->lines[i];
                if ((band == 0 ? l->y0 > pg->height * 0.15f : l->y1 < pg->height * 0.85f) && l->baseline != edge) continue;
                float tol = 0.3f * (l->y1 - l->y0);
                int k;
                for (k = 0; k < nb; k++) if (fabsf(bases[k] - l->baseline) < tol) break;
                if (k == nb && nb < 64) bases[nb++] = l->baseline;
            }
            for (int a = 1; a < nb; a++)
                for (int k = a; k > 0 && (band == 0 ? bases[k] < bases[k - 1] : bases[k] > bases[k - 1]); k--) {
                    float t = bases[k]; bases[k] = bases[k - 1]; bases[k - 1] = t;
                }
            if (nb > K) nb = K;
            for (int b = 0; b < nb; b++) {
                if (nr == cap) {
                    int c2 = cap ? cap * 2 : 256;
                    void *q = realloc(rs, (size_t)c2 * sizeof *rs);
                    if (!q) { free(rs); return marked; }
                    rs = q; cap = c2;
                }
                frow *r = &rs[nr];
                memset(r, 0, sizeof *r);
                r->page = p; r->band = band; r->y = bases[b]; r->rank = b;
                /* the row's lines in x order */
                for (int i = 0; i < pg->nlines && r->nl < 8; i++) {
                    const ql_pdf_line *l = &pg->lines[i];
                    if (fabsf(l->baseline - r->y) >= 0.3f * (l->y1 - l->y0)) continue;
                    int k = r->nl++;
                    while (k > 0 && pg->lines[r->lines[k - 1]].x0 > l->x0) { r->lines[k] = r->lines[k - 1]; k--; }
                    r->lines[k] = i;
                }
                if (!r->nl) continue;
                const ql_pdf_line *l0 = &pg->lines[r->lines[0]];
                r->size = l0->nspans ? l0->spans[0].size : 0;
                str t = {0};
                size_t e0 = 0, s1 = 0;   /* end of the first token, start of the last */
                for (int k = 0; k < r->nl; k++) {
                    char *lt = line_text(&pg->lines[r->lines[k]]);
                    if (!lt) continue;
                    if (t.n) s_addc(&t, ' ');
                    size_t at = t.n;
                    s_add(&t, lt);
                    free(lt);
                    if (t.oom) break;
                    /* first token, last token, and the lines they are in */
                    if (k == 0) {
                        size_t e = at;
                        while (e < t.n && t.p[e] != ' ') e++;
                        r->num[0] = page_token(t.p + at, e - at, &r->numk[0]);
                        e0 = e;
                        r->numline[0] = r->lines[k];
                    }
                    if (k == r->nl - 1) {
                        size_t s0 = t.n;
                        while (s0 > at && t.p[s0 - 1] != ' ') s0--;
                        r->num[1] = page_token(t.p + s0, t.n - s0, &r->numk[1]);
                        s1 = s0;
                        r->numline[1] = r->lines[k];
                    }
                }
                if (t.oom || !t.p) { free(t.p); continue; }
                /* a long line is text, not a head */
                if (t.n > 160) { r->numk[0] = r->numk[1] = 0; }
                /* lone page number at the very edge of the page */
                r->pnum = is_pagenum_text(t.p);
                for (int e = 0; e < 2; e++)
                    if (!frac_at(t.p, t.n, e, &r->fnum[e], &r->ftot[e])) r->fnum[e] = r->ftot[e] = 0;
                if (b == 0 && r->nl == 1 && r->pnum && line_alone(pg, r->lines[0])) r->mark = 2;
                /* the key: page numbers at either end as '#', roman ones too
                   ("ii The Handbook" and "6 The Handbook" are one head) */
                if (r->numk[1] == 2 && s1 > e0) t.n = s1, t.p[t.n] = 0, s_addc(&t, '#');
                norm_key(t.p + (r->numk[0] == 2 && e0 < t.n ? e0 : 0), r->key + (r->numk[0] == 2), sizeof r->key - 1, 1);
                if (r->numk[0] == 2) r->key[0] = '#';
                free(t.p);
                nr++;
            }
        }
    }
    if (np < 2 || !rs) goto apply;
    /* body size: running heads are never set larger (slide titles that repeat
       over a deck's overlays are) */
    float body = 0;
    {
        static const int NB = 400;
        float w[400] = {0};
        for (int p = 0; p < np; p++)
            for (int i = 0; i < pages[p]->nlines; i++) {
                const ql_pdf_line *l = &pages[p]->lines[i];
                for (int s = 0; s < l->nspans; s++) {
                    long b = lroundf(l->spans[s].size * 2);
                    if (b > 0 && b < NB) w[b] += (float)strlen(l->spans[s].text);
                }
            }
        int best = 0;
        for (int b = 1; b < NB; b++) if (w[b] > w[best]) best = b;
        body = best * 0.5f;
    }
    float maxhead = body > 0 ? body * 1.05f + 0.5f : 1e9f;
    /* 1. page numbers by their offset from the page index */
    {
        long (*o)[4] = malloc((size_t)(2 * nr + 1) * sizeof *o);
        int no = 0;
        if (o) {
            for (int i = 0; i < nr; i++)
                for (int e = 0; e < 2; e++) {
                    if (!rs[i].numk[e] || (e == 1 && rs[i].numk[0] && rs[i].num[0] - rs[i].page == rs[i].num[1] - rs[i].page && rs[i].numk[0] == rs[i].numk[1]))
                        continue;
                    o[no][0] = rs[i].band; o[no][1] = rs[i].numk[e]; o[no][2] = rs[i].num[e] - rs[i].page; o[no][3] = rs[i].page; no++;
                }
            qsort(o, (size_t)no, sizeof *o, cmp_long3);
            int need_arabic = np / 20 > 4 ? np / 20 : 4;
            for (int a = 0; a < no;) {
                int b = a, pagesn = 0;
                while (b < no && o[b][0] == o[a][0] && o[b][1] == o[a][1] && o[b][2] == o[a][2]) {
                    if (b == a || o[b][3] != o[b - 1][3]) pagesn++;
                    b++;
                }
                if (pagesn >= (o[a][1] == 1 ? need_arabic : 3)) {
                    /* the rows of the group stand at one place in one type: a
                       chapter title whose number happens to be the page's
                       ("1 Introduction" on page 1) stands lower and larger */
                    int nm = 0;
                    float *ys = malloc((size_t)(2 * (b - a)) * sizeof *ys), *ss = ys ? ys + (b - a) : NULL;
                    for (int i = 0; ys && i < nr && nm < b - a; i++)
                        for (int e = 0; e < 2; e++)
                            if (rs[i].band == o[a][0] && rs[i].numk[e] == o[a][1] && rs[i].num[e] - rs[i].page == o[a][2]) {
                                ys[nm] = rs[i].y; ss[nm] = rs[i].size; nm++; break;
                            }
                    float my = nm ? median(ys, nm) : 0, ms = nm ? median(ss, nm) : 0;
                    for (int i = 0; ys && i < nr; i++)
                        for (int e = 0; e < 2; e++)
                            if (rs[i].band == o[a][0] && rs[i].numk[e] == o[a][1] && rs[i].num[e] - rs[i].page == o[a][2] &&
                                !rs[i].mark && fabsf(rs[i].y - my) < 3 && fabsf(rs[i].size - ms) < 1 &&
                                (rs[i].size <= maxhead || rs[i].pnum))
                                rs[i].mark = 3 + e;   /* 3: by the first token, 4: by the last */
                    free(ys);
                }
                a = b;
            }
            free(o);
        }
    }
    /* 2. text recurring at one place; 3. recurring text where furniture stands */
    {
        int *ix = malloc((size_t)nr * sizeof *ix);
        if (!ix) goto apply;
        for (int i = 0; i < nr; i++) ix[i] = i;
        frow_sort = rs;
        qsort(ix, (size_t)nr, sizeof *ix, cmp_frow_key);
        int need = np >= 4 ? ((np + 4) / 5 > 3 ? (np + 4) / 5 : 3) : 2;
        for (int a = 0; a < nr;) {
            int b = a;
            while (b < nr && rs[ix[b]].band == rs[ix[a]].band && !strcmp(rs[ix[b]].key, rs[ix[a]].key)) b++;
            if (strlen(rs[ix[a]].key) >= 3)
                for (int c = a; c < b;) {   /* clusters by baseline */
                    int d = c + 1;
                    while (d < b && rs[ix[d]].y - rs[ix[c]].y < 3) d++;
                    int same = 0;
                    for (int k = c; k < d; k++) if (fabsf(rs[ix[k]].size - rs[ix[c]].size) < 0.6f) same++;
                    if (same >= need && rs[ix[c]].size <= maxhead)
                        for (int k = c; k < d; k++) if (fabsf(rs[ix[k]].size - rs[ix[c]].size) < 0.6f && !rs[ix[k]].mark) rs[ix[k]].mark = 1;
                    c = d;
                }
            a = b;
        }
        /* places: rows of one band on one baseline (within 2 pt) in one size.
           Where most rows of a place repeat their text, or furniture already
           stands there, the rows whose text repeats at that place are running
           heads too (chapter names without page numbers, odd and even sides) */
        frow_sort = rs;
        qsort(ix, (size_t)nr, sizeof *ix, cmp_frow_place);
        int *tmp = malloc((size_t)nr * sizeof *tmp);
        for (int a = 0; tmp && a < nr;) {
            const frow *f = &rs[ix[a]];
            int b = a + 1;
            while (b < nr && rs[ix[b]].band == f->band && lroundf(rs[ix[b]].size * 2) == lroundf(f->size * 2) &&
                   rs[ix[b]].y - f->y < 2) b++;
            int n = 0, furnished = 0, m = 0;
            for (int k = a; k < b; k++) {
                /* only rows at the edge: nothing but furniture further out */
                const frow *r = &rs[ix[k]];
                int edge = 1;
                for (int j = ix[k] - 1; j >= 0 && edge && rs[j].page == r->page && rs[j].band == r->band; j--)
                    edge = rs[j].mark != 0;
                furnished |= r->mark != 0;
                if (edge) tmp[n++] = ix[k];
            }
            qsort(tmp, (size_t)n, sizeof *tmp, cmp_frow_key);
            for (int k = 0; k < n; k++)
                if (strlen(rs[tmp[k]].key) >= 3 && ((k > 0 && !strcmp(rs[tmp[k]].key, rs[tmp[k - 1]].key)) ||
                                                    (k + 1 < n && !strcmp(rs[tmp[k]].key, rs[tmp[k + 1]].key)))) m++;
            if (f->size <= maxhead && ((furnished && m >= 2) || (n >= 3 && m >= 3 && m * 10 >= n * 6)))
                for (int k = 0; k < n; k++)
                    if (!rs[tmp[k]].mark && strlen(rs[tmp[k]].key) >= 3 &&
                        ((k > 0 && !strcmp(rs[tmp[k]].key, rs[tmp[k - 1]].key)) || (k + 1 < n && !strcmp(rs[tmp[k]].key, rs[tmp[k + 1]].key))))
                        rs[tmp[k]].mark = 1;
            a = b;
        }
        free(tmp);
        free(ix);
    }
    /* 4. slide numbers with the total, "N / M": M the same, N never going
       down from page to page, on many pages of one band. Overlays repeat a
       frame's number over several pages, so its offset from the page index
       does not recur; the frame title on the same row stays (rows marked
       above, footers with a constant text, go whole) */
    {
        fracrow *fr = malloc((size_t)(2 * nr + 1) * sizeof *fr);
        int nf = 0;
        for (int i = 0; fr && i < nr; i++)
            for (int e = 0; e < 2; e++)
                if (rs[i].ftot[e]) fr[nf++] = (fracrow){rs[i].band, e, rs[i].ftot[e], rs[i].page, rs[i].fnum[e], i};
        if (fr) qsort(fr, (size_t)nf, sizeof *fr, cmp_fracrow);
        int need = np / 4 > 3 ? np / 4 : 3;
        for (int a = 0; a < nf;) {
            int b = a, pagesn = 0, mono = 1, vary = 0;
            while (b < nf && fr[b].band == fr[a].band && fr[b].end == fr[a].end && fr[b].tot == fr[a].tot) {
                if (b == a || fr[b].page != fr[b - 1].page) pagesn++;
                if (b > a && fr[b].num < fr[b - 1].num) mono = 0;
                if (b > a && fr[b].num != fr[b - 1].num) vary = 1;
                b++;
            }
            if (mono && vary && pagesn >= need)
                for (int k = a; k < b; k++) {
                    frow *r = &rs[fr[k].row];
                    if (!r->mark) r->mark = 5 + (int)fr[k].end;
                }
            a = b;
        }
        free(fr);
    }
apply:
    for (int i = 0; i < nr; i++) {
        frow *r = &rs[i];
        if (!r->mark) continue;
        ql_pdf_page *pg = pages[r->page];
        float nsize = 0;
        if (r->mark >= 5) {   /* a slide number: only the number goes */
            marked += strip_fraction(pg, r->numline[r->mark - 5], r->mark - 5, furn[r->page]);
            continue;
        }
        if (r->mark >= 3) {
            /* by a page number: the number's line, and the row's lines set in
               its type (a frame title beside a slide number stays) */
            const ql_pdf_line *nl = &pg->lines[r->numline[r->mark - 3]];
            nsize = nl->nspans ? nl->spans[0].size : 0;
        }
        for (int k = 0; k < r->nl; k++) {
            int li = r->lines[k];
            const ql_pdf_line *l = &pg->lines[li];
            if (r->mark >= 3 && li != r->numline[r->mark - 3] && l->nspans && fabsf(l->spans[0].size - nsize) > 1) continue;
            if (!furn[r->page][li]) { furn[r->page][li] = 1; marked++; }
        }
    }
    free(rs);
    return marked;
}

typedef struct { int line; int col; } ordered_line;

static int cmp_line_y(const void *a, const void *b, void *ctx)
{
    const ql_pdf_page *pg = ctx;
    const ql_pdf_line *x = &pg->lines[*(const int *)a], *y = &pg->lines[*(const int *)b];
    if (fabsf(x->baseline - y->baseline) > 0.5f * fminf(x->y1 - x->y0, y->y1 - y->y0) * 0.6f)
        return x->baseline < y->baseline ? -1 : 1;
    return x->x0 < y->x0 ? -1 : x->x0 > y->x0;
}

/* qsort with a context, via a static thread-local pointer */
static _Thread_local void *sort_ctx;
static int cmp_line_y_q(const void *a, const void *b) { return cmp_line_y(a, b, sort_ctx); }

static void sort_lines(const ql_pdf_page *pg, int *idx, int n)
{
    sort_ctx = (void *)pg;
    qsort(idx, (size_t)n, sizeof *idx, cmp_line_y_q);
}

/* Finds a vertical gutter; returns its x or -1 when the page is one column. */
static float find_gutter(const ql_pdf_page *pg, const int *idx, int n)
{
    if (n < 8) return -1;
    float minx = 1e9f, maxx = -1e9f;
    for (int i = 0; i < n; i++) {
        const ql_pdf_line *l = &pg->lines[idx[i]];
        if (l->x0 < minx) minx = l->x0;
        if (l->x1 > maxx) maxx = l->x1;
    }
    float w = maxx - minx;
    if (!(w >= 100)) return -1;   /* also NaN coordinates */
    float best = -1; int bestcross = n + 1;
    /* candidate gutters a point apart over the middle 40 %, at most 2000 of them: a damaged file's
       page can be 1e30 wide, where x += 1 would never move (the fuzzer's hang) */
    const float x0 = minx + 0.3f * w, x1 = minx + 0.7f * w;
    for (int s = 0; s <= 2000; s++) {
        float x = x0 + (float)s;
        if (x > x1) break;
        int cross = 0;
        for (int i = 0; i < n; i++) {
            const ql_pdf_line *l = &pg->lines[idx[i]];
            if (l->x0 < x - 2 && l->x1 > x + 2) cross++;
        }
        if (cross < bestcross) { bestcross = cross; best = x; }
    }
    if (best < 0) return -1;
    int left = 0, right = 0;
    float ly0 = 1e9f, ly1 = -1e9f, ry0 = 1e9f, ry1 = -1e9f;
    for (int i = 0; i < n; i++) {
        const ql_pdf_line *l = &pg->lines[idx[i]];
        if (l->x1 <= best + 2) { left++; ly0 = fminf(ly0, l->y0); ly1 = fmaxf(ly1, l->y1); }
        else if (l->x0 >= best - 2) { right++; ry0 = fminf(ry0, l->y0); ry1 = fmaxf(ry1, l->y1); }
    }
    if (bestcross > 0.15f * n || left < 4 || right < 4) return -1;
    /* the two sides must stand side by side, not one above the other */
    float ov = fminf(ly1, ry1) - fmaxf(ly0, ry0);
    if (ov < 0.3f * fminf(ly1 - ly0, ry1 - ry0)) return -1;
    /* both sides must hold real text: wide lines, not a narrow table column */
    float lw = 0, rw = 0;
    for (int i = 0; i < n; i++) {
        const ql_pdf_line *l = &pg->lines[idx[i]];
        if (l->x1 <= best + 2) lw = fmaxf(lw, l->x1 - l->x0);
        else if (l->x0 >= best - 2) rw = fmaxf(rw, l->x1 - l->x0);
    }
    if (lw < 0.3f * w || rw < 0.3f * w) return -1;
    return best;
}

/* Tables across both columns (acmart's table*, LaTeX's table* with \hline,
   booktabs): two or more horizontal rules of one extent that cross the gutter
   well on both sides, close together, with only short lines (cells, not column
   text) between them and lines on both sides of the gutter. The lines within
   such a zone (plus a caption or note just above or below) read as one
   full-width band, so that a table whose middle column stands where the
   gutter runs below it is not split into two tables in two columns. Returns
   the number of zones, as {x0, y0, x1, y1}. */
static int spanning_zones(const ql_pdf_page *pg, const int *idx, int n, float gut, float colw, float (*zone)[4], int maxz)
{
    int nz = 0;
    char used[256] = {0};
    int nr = pg->nrules < 256 ? pg->nrules : 256;
    for (int a = 0; a < nr && nz < maxz; a++) {
        const ql_pdf_rule *ra = &pg->rules[a];
        if (used[a] || ra->kind != QL_PDF_RULE_H || ra->x0 > gut - 20 || ra->x1 < gut + 20) continue;
        float z[4] = {ra->x0, ra->y0, ra->x1, ra->y1};
        int cnt = 1;
        used[a] = 1;
        /* gather the rules of the same extent below, each within a third of a page */
        for (int grow = 1; grow;) {
            grow = 0;
            for (int b = 0; b < nr; b++) {
                const ql_pdf_rule *rb = &pg->rules[b];
                if (used[b] || rb->kind != QL_PDF_RULE_H || fabsf(rb->x0 - ra->x0) > 3 || fabsf(rb->x1 - ra->x1) > 3) continue;
                if (rb->y0 > z[3] + pg->height / 3 || rb->y1 < z[1] - pg->height / 3) continue;
                used[b] = 1; cnt++; grow = 1;
                z[1] = fminf(z[1], rb->y0); z[3] = fmaxf(z[3], rb->y1);
            }
        }
        if (cnt < 2) continue;
        int left = 0, right = 0, wide = 0;
        for (int i = 0; i < n; i++) {
            const ql_pdf_line *l = &pg->lines[idx[i]];
            float cy = 0.5f * (l->y0 + l->y1);
            if (cy < z[1] || cy > z[3] || l->x1 < z[0] - 2 || l->x0 > z[2] + 2) continue;
            if (l->x1 - l->x0 > 0.6f * colw && !(l->x0 < gut - 2 && l->x1 > gut + 2)) wide++;
            if (l->x1 <= gut + 2) left++;
            else if (l->x0 >= gut - 2) right++;
        }
        if (wide || !left || !right) continue;
        memcpy(zone[nz++], z, sizeof z);
    }
    return nz;
}

static int in_zone(const ql_pdf_line *l, float (*zone)[4], int nz)
{
    float cy = 0.5f * (l->y0 + l->y1);
    for (int z = 0; z < nz; z++)
        if (cy >= zone[z][1] && cy <= zone[z][3] && l->x1 >= zone[z][0] - 2 && l->x0 <= zone[z][2] + 2) return 1;
    return 0;
}

static const char *bullets[] = {"\xE2\x80\xA2", "\xE2\x97\xA6", "\xE2\x96\xAA", "\xE2\x96\xAB", "\xE2\x80\xA3",
                                "\xE2\x81\x83", "\xE2\x97\x8F", "\xE2\x97\x8B", "\xE2\x96\xA0", "\xE2\x96\xA1",
                                "\xE2\x96\xBA", "\xE2\x80\x93", "\xE2\x80\x94", "\xC2\xB7", "\xEF\x82\xB7",
                                "\xE2\x9E\xA2", "\xE2\x9C\x93",
                                /* Beamer's and other slide bullets: black and white triangles
                                   (amssymb's \blacktriangleright is U+25B6), diamonds, arrows */
                                "\xE2\x96\xB6", "\xE2\x96\xB7", "\xE2\x96\xB8", "\xE2\x96\xB9", "\xE2\x97\x86",
                                "\xE2\x97\x87", "\xE2\x9D\x96", "\xE2\x9E\xA4", "\xE2\x97\xBE", "\xE2\x97\xBC",
                                "-", "*", "+", "o", NULL};

/* Length in bytes of a list marker (with its space) at the start of t, 0 if none. */
static int list_marker(const char *t, int separate_span, int *ordered)
{
    *ordered = 0;
    for (int i = 0; bullets[i]; i++) {
        size_t n = strlen(bullets[i]);
        if (strncmp(t, bullets[i], n) == 0) {
            if (t[n] == ' ') {
                if ((n == 1 || !strcmp(bullets[i], "\xE2\x80\x93") || !strcmp(bullets[i], "\xE2\x80\x94")) && !separate_span &&
                    bullets[i][0] != '-' && bullets[i][0] != '*') continue;
                if (bullets[i][0] == 'o' && !separate_span) continue;
                return (int)n + 1;
            }
            if (t[n] == 0 && separate_span) return (int)n;
        }
    }
    const char *p = t;
    int paren = 0;
    if (*p == '(') { paren = 1; p++; }
    const char *q = p;
    while (isdigit((unsigned char)*q) && q - p < 3) q++;
    if (q == p) {
        /* a single letter or a short roman numeral */
        while (*q && strchr("ivx", *q) && q - p < 4) q++;
        if (q == p && isalpha((unsigned char)*q) && !isalpha((unsigned char)q[1])) q++;
        if (q == p) return 0;
        if (!paren && *q != ')' && *q != '.') return 0;
        if (*q == '.' && q - p == 1 && isupper((unsigned char)*p)) return 0;   /* "A. Smith" */
    }
    if (paren) { if (*q != ')') return 0; q++; }
    else if (*q == '.' || *q == ')') q++;
    else return 0;
    if (*q != ' ') return 0;
    /* "1.2 Title" is a section number, not a list */
    if (isdigit((unsigned char)q[1]) && q[-1] == '.') return 0;
    *ordered = 1;
    return (int)(q - t) + 1;
}

/* A title block of authors side by side (acmart, article's \and): under a
   title, on the first page, bands of lines (cut where no line covers a
   vertical gap of a quarter line, or under a line set much larger) that split
   at x gutters into two or more
   stacks of centred lines, one line per baseline, each stack an author's
   name, affiliation and address. Read across, the rows would interleave the
   authors line by line. Fills ord/colof/stk with the lines of the bands up
   to the last such band, stack by stack (each stack a column of its own,
   stk its number from 1; other bands a column each), colb/ncol with the
   columns; returns how many of idx[0..n) (sorted by baseline) it took. */
static int title_stacks(const ql_pdf_page *pg, const int *idx, int n, int *ord, int *colof, int *stk,
                        float (*colb)[2], int *ncol)
{
    enum { MAXB = 16 };
    int bstart[MAXB + 1], nb = 0, last_stack = -1, first_stack = -1;
    int isstack[MAXB] = {0}, single[MAXB] = {0};
    float wide = 0.3f * pg->width;
    int stop = n;   /* the first line of body text (wide, and a wide line under it
                       starts at its x), or past the top 60% of the page */
    for (int i = 0; i < n && stop == n; i++) {
        const ql_pdf_line *l = &pg->lines[idx[i]];
        if (l->y0 > 0.6f * pg->height) stop = i;
        for (int k = i + 1; k < n && k <= i + 3 && l->x1 - l->x0 >= wide; k++) {
            const ql_pdf_line *m = &pg->lines[idx[k]];
            if (m->x1 - m->x0 >= wide && fabsf(m->x0 - l->x0) < 1.5f) { stop = i; break; }
        }
    }
    if (stop < 4) return 0;
    /* bands */
    float maxy1 = -1e9f, lastsz = 0;
    for (int i = 0; i < stop; i++) {
        const ql_pdf_line *l = &pg->lines[idx[i]];
        float h = l->y1 - l->y0, sz = l->nspans ? l->spans[0].size : 0;
        /* a cut: a gap, or a much larger line just above (a title close over the authors) */
        int cut = l->y0 > maxy1 + fmaxf(0.25f * h, 3.0f) || (lastsz > sz + 3 && l->y0 > maxy1 - 1);
        lastsz = sz;
        if (i == 0 || cut) {
            if (nb == MAXB) { stop = i; break; }
            bstart[nb++] = i;
        }
        maxy1 = fmaxf(maxy1, l->y1);
    }
    bstart[nb] = stop;
    /* stacks within each band: x intervals merged */
    int *grp = malloc((size_t)(stop + 1) * sizeof *grp);
    if (!grp) return 0;
    int ng_of[MAXB] = {0};
    for (int b = 0; b < nb; b++) {
        int a = bstart[b], e = bstart[b + 1], ng = 0;
        /* groups: intervals that overlap (x order by insertion) */
        float iv[64][2]; int cnt[64] = {0};
        for (int i = a; i < e && ng >= 0; i++) {
            const ql_pdf_line *l = &pg->lines[idx[i]];
            float x0 = l->x0, x1 = l->x1;
            int hit = -1;
            for (int g = 0; g < ng; g++)
                if (x0 < iv[g][1] + 2 && x1 > iv[g][0] - 2) {
                    if (hit < 0) { hit = g; iv[g][0] = fminf(iv[g][0], x0); iv[g][1] = fmaxf(iv[g][1], x1); cnt[g]++; }
                    else { ng = -1; break; }   /* a line across two stacks */
                }
            if (ng < 0) break;
            if (hit < 0) { if (ng == 64) { ng = -1; break; } iv[ng][0] = x0; iv[ng][1] = x1; cnt[ng++] = 1; }
        }
        if (ng < 1) continue;
        /* groups whose intervals grew into each other: not stacks */
        int ok = 1;
        for (int g = 0; g < ng && ok; g++)
            for (int h = g + 1; h < ng && ok; h++)
                if (iv[g][0] < iv[h][1] + 2 && iv[g][1] > iv[h][0] - 2) ok = 0;
        for (int g = 0; g < ng && ok; g++) if (cnt[g] < 2) ok = 0;
        /* each stack: centred lines, one per baseline */
        for (int g = 0; g < ng && ok; g++) {
            float c = 0.5f * (iv[g][0] + iv[g][1]);
            float tol = fmaxf(3.0f, 0.05f * (iv[g][1] - iv[g][0]));
            float lastb = -1e9f;
            for (int i = a; i < e && ok; i++) {
                const ql_pdf_line *l = &pg->lines[idx[i]];
                if (!(l->x0 < iv[g][1] + 2 && l->x1 > iv[g][0] - 2)) continue;
                if (fabsf(0.5f * (l->x0 + l->x1) - c) > tol) ok = 0;
                if (fabsf(l->baseline - lastb) < 0.3f * (l->y1 - l->y0)) ok = 0;
                lastb = l->baseline;
            }
        }
        if (!ok) continue;
        ng_of[b] = ng;
        if (ng == 1) { single[b] = 1; continue; }   /* one author alone: a stack when under others */
        isstack[b] = 1;
        if (first_stack < 0) first_stack = b;
        last_stack = b;
    }
    int took = 0;
    while (last_stack >= 0 && last_stack + 1 < nb && single[last_stack + 1]) isstack[++last_stack] = 1;
    if (first_stack >= 0) {
        /* a title above the first stacks, set larger than any of their lines */
        float smax = 0, tmax = 0;
        for (int b = first_stack; b <= last_stack; b++)
            if (isstack[b])
                for (int i = bstart[b]; i < bstart[b + 1]; i++) {
                    const ql_pdf_line *l = &pg->lines[idx[i]];
                    for (int k = 0; k < l->nspans; k++) smax = fmaxf(smax, l->spans[k].size);
                }
        for (int i = 0; i < bstart[first_stack]; i++) {
            const ql_pdf_line *l = &pg->lines[idx[i]];
            for (int k = 0; k < l->nspans; k++) tmax = fmaxf(tmax, l->spans[k].size);
        }
        if (tmax > smax + 1) took = bstart[last_stack + 1];
    }
    int no = 0, nst = 0;
    for (int b = 0; took && b <= last_stack; b++) {
        int a = bstart[b], e = bstart[b + 1];
        if (!isstack[b] || *ncol + ng_of[b] > 60) {
            if (*ncol < 63) { colb[*ncol][0] = 0; colb[*ncol][1] = pg->width; (*ncol)++; }
            for (int i = a; i < e; i++) { ord[no] = idx[i]; colof[no] = *ncol - 1; stk[no] = 0; no++; }
            continue;
        }
        /* stacks left to right: repeatedly the leftmost line not yet taken
           opens a stack, which takes the lines it overlaps, top to bottom */
        for (int i = a; i < e; i++) grp[i] = 0;
        for (;;) {
            int lead = -1;
            for (int i = a; i < e; i++)
                if (!grp[i] && (lead < 0 || pg->lines[idx[i]].x0 < pg->lines[idx[lead]].x0)) lead = i;
            if (lead < 0) break;
            float x0 = pg->lines[idx[lead]].x0, x1 = pg->lines[idx[lead]].x1;
            for (int again = 1; again;) {   /* the stack's extent, grown to a fixpoint */
                again = 0;
                for (int i = a; i < e; i++) {
                    const ql_pdf_line *l = &pg->lines[idx[i]];
                    if (!grp[i] && l->x0 < x1 + 2 && l->x1 > x0 - 2 && (l->x0 < x0 || l->x1 > x1)) {
                        x0 = fminf(x0, l->x0); x1 = fmaxf(x1, l->x1); again = 1;
                    }
                }
            }
            nst++;
            colb[*ncol][0] = x0; colb[*ncol][1] = x1;
            for (int i = a; i < e; i++) {
                const ql_pdf_line *l = &pg->lines[idx[i]];
                if (!grp[i] && l->x0 < x1 + 2 && l->x1 > x0 - 2) {
                    grp[i] = 1; ord[no] = idx[i]; colof[no] = *ncol; stk[no] = nst; no++;
                }
            }
            (*ncol)++;
        }
    }
    free(grp);
    return took ? no : 0;
}

/* Builds rows for one page in reading order; appends to rv. first: the
   document's first page with text (where a title block stands). */
static int page_rows(ql_pdf_page *pg, const unsigned char *furn, rowvec *rv, int *ncols_seen, int first)
{
    int n = 0;
    int *idx = malloc((size_t)(pg->nlines ? pg->nlines : 1) * sizeof *idx);
    int *ord = malloc((size_t)(pg->nlines ? pg->nlines : 1) * sizeof *ord);
    int *colof = malloc((size_t)(pg->nlines ? pg->nlines : 1) * sizeof *colof);
    int *stk = calloc((size_t)(pg->nlines ? pg->nlines : 1), sizeof *stk);
    if (!idx || !ord || !colof || !stk) { free(idx); free(ord); free(colof); free(stk); return -1; }
    for (int i = 0; i < pg->nlines; i++) if (!furn[i]) idx[n++] = i;
    sort_lines(pg, idx, n);
    float colb[64][2]; int ncol = 0;
    /* a title block's stacks first; the rest of the page after them */
    int nz = first ? title_stacks(pg, idx, n, ord, colof, stk, colb, &ncol) : 0;
    int no = nz;
    int *all = idx;
    idx += nz; n -= nz;
    float gut = find_gutter(pg, idx, n);
    float fminx = 1e9f, fmaxx = -1e9f;
    for (int i = 0; i < n; i++) { fminx = fminf(fminx, pg->lines[idx[i]].x0); fmaxx = fmaxf(fmaxx, pg->lines[idx[i]].x1); }
    if (gut < 0) {
        if (n > 0 && ncol < 63) { colb[ncol][0] = fminx; colb[ncol][1] = fmaxx; ncol++; }
        for (int i = 0; i < n; i++) { ord[no] = idx[i]; colof[no++] = ncol - 1; }
    } else {
        /* bands separated by lines that cross the gutter, and by tables across
           both columns (spanning_zones) */
        float zone[8][4];
        int nzone = spanning_zones(pg, idx, n, gut, gut - fminx, zone, 8);
        #define SPANS(l) (((l)->x0 < gut - 2 && (l)->x1 > gut + 2) || in_zone(l, zone, nzone))
        int i = 0;
        while (i < n) {
            const ql_pdf_line *l = &pg->lines[idx[i]];
            if (SPANS(l)) {
                if (ncol < 63) { colb[ncol][0] = fminx; colb[ncol][1] = fmaxx; ncol++; }
                ord[no] = idx[i]; colof[no++] = ncol - 1; i++;
                /* further spanning lines join the same band */
                while (i < n && SPANS(&pg->lines[idx[i]])) {
                    ord[no] = idx[i]; colof[no++] = ncol - 1; i++;
                }
                continue;
            }
            int j = i;
            while (j < n && !SPANS(&pg->lines[idx[j]])) j++;
            #undef SPANS
            for (int side = 0; side < 2; side++) {
                if (ncol < 63) { colb[ncol][0] = side ? gut : fminx; colb[ncol][1] = side ? fmaxx : gut; ncol++; }
                for (int k = i; k < j; k++) {
                    const ql_pdf_line *m = &pg->lines[idx[k]];
                    int right = m->x0 >= gut - 2;
                    if (right == side) { ord[no] = idx[k]; colof[no++] = ncol - 1; }
                }
            }
            i = j;
        }
    }
    if (ncol > 1) (*ncols_seen)++;
    /* tighten column bounds to their lines */
    for (int c = 0; c < ncol; c++) { colb[c][0] = 1e9f; colb[c][1] = -1e9f; }
    for (int i = 0; i < no; i++) {
        const ql_pdf_line *l = &pg->lines[ord[i]];
        colb[colof[i]][0] = fminf(colb[colof[i]][0], l->x0);
        colb[colof[i]][1] = fmaxf(colb[colof[i]][1], l->x1);
    }
    /* rows */
    int prevcol = -1;
    for (int i = 0; i < no;) {
        int j = i + 1;
        const ql_pdf_line *a = &pg->lines[ord[i]];
        float h = a->y1 - a->y0;
        while (j < no && colof[j] == colof[i]) {
            const ql_pdf_line *b = &pg->lines[ord[j]];
            float hb = b->y1 - b->y0;
            if (fabsf(b->baseline - a->baseline) > 0.3f * fminf(h, hb)) break;
            j++;
        }
        row r; memset(&r, 0, sizeof r);
        r.page = pg->number; r.col = colof[i]; r.stack = stk[i];
        r.colx0 = colb[colof[i]][0]; r.colx1 = colb[colof[i]][1];
        int ns = 0;
        for (int k = i; k < j; k++) ns += pg->lines[ord[k]].nspans;
        r.spans = malloc((size_t)ns * sizeof *r.spans);
        if (!r.spans) { free(all); free(ord); free(colof); free(stk); return -1; }
        /* lines in x order */
        for (int k = i + 1; k < j; k++) {
            int t = ord[k], m = k;
            while (m > i && pg->lines[ord[m - 1]].x0 > pg->lines[t].x0) { ord[m] = ord[m - 1]; m--; }
            ord[m] = t;
        }
        r.x0 = 1e9f; r.x1 = -1e9f; r.y0 = 1e9f; r.y1 = -1e9f;
        r.all = ~0u; r.any = 0;
        size_t best = 0;
        str text = {0};
        float lastx1 = -1e9f;
        for (int k = i; k < j; k++) {
            const ql_pdf_line *l = &pg->lines[ord[k]];
            for (int s = 0; s < l->nspans; s++) {
                const ql_pdf_span *sp = &l->spans[s];
                r.spans[r.nspans++] = sp;
                r.x0 = fminf(r.x0, sp->x0); r.x1 = fmaxf(r.x1, sp->x1);
                if (!(sp->flags & QL_PDF_SUPER)) { r.y0 = fminf(r.y0, sp->y0); r.y1 = fmaxf(r.y1, sp->y1); }
                size_t len = strlen(sp->text);
                if (!(sp->flags & QL_PDF_SUPER)) {
                    r.all &= sp->flags; r.any |= sp->flags;
                    if (len > best) { best = len; r.size = sp->size; }
                }
                int gap = (sp->flags & QL_PDF_GAP) || (lastx1 > -1e8f && sp->x0 - lastx1 > 0.9f * sp->size);
                if (r.nspans == 1 || gap) r.ncells++;
                if (text.n && (sp->x0 - lastx1 > 0.12f * sp->size || gap) && s_last(&text) != ' ')
                    s_addc(&text, ' ');
                s_add(&text, sp->text);
                lastx1 = sp->x1;
            }
        }
        if (r.y0 > r.y1) { r.y0 = a->y0; r.y1 = a->y1; }
        if (r.all == ~0u) r.all = 0;
        if (r.size == 0) r.size = r.spans[0]->size;
        r.base = a->baseline;
        r.text = text.p ? text.p : strdup("");
        r.newcol = colof[i] != prevcol;
        prevcol = colof[i];
        if (text.oom || !r.text || row_push(rv, &r)) { free(r.spans); free(r.text); free(all); free(ord); free(colof); free(stk); return -1; }
        i = j;
    }
    free(all); free(ord); free(colof); free(stk);
    return 0;
}

/* ---------------------------------------------------------------- classify */
static float weighted_mode(const float *v, const float *w, int n)
{
    float best = 0, bw = -1;
    for (int i = 0; i < n; i++) {
        float acc = 0;
        for (int j = 0; j < n; j++) if (fabsf(v[j] - v[i]) < 0.3f) acc += w[j];
        if (acc > bw) { bw = acc; best = v[i]; }
    }
    return best;
}

typedef struct { float size; int bold; int level; int count; } hstyle;

static int hstyle_cmp(const void *a, const void *b)
{
    const hstyle *x = a, *y = b;
    if (fabsf(x->size - y->size) > 0.25f) return x->size > y->size ? -1 : 1;
    return y->bold - x->bold;
}

static int text_ends_sentence(const char *t)
{
    size_t n = strlen(t);
    while (n && t[n - 1] == ' ') n--;
    if (!n) return 0;
    char c = t[n - 1];
    return c == '.' || c == '!' || c == '?' || c == ':' || c == ';';
}

/* Depth of a section number leading t ("3 Title" 1, "3.1. Title" 2,
   "3.1.2 Title" 3); 0 when t does not start with one followed by a word. */
static int section_depth(const char *t)
{
    int d = 0;
    const char *p = t;
    for (;;) {
        const char *q = p;
        while (isdigit((unsigned char)*p) && p - q < 3) p++;
        if (p == q || isdigit((unsigned char)*p)) return 0;
        d++;
        if (*p == '.' && isdigit((unsigned char)p[1])) { p++; continue; }
        if (*p == '.') p++;
        break;
    }
    if (*p != ' ') return 0;
    while (*p == ' ') p++;
    return isalpha((unsigned char)*p) || (unsigned char)*p >= 0x80 ? d : 0;
}

/* A section number standing alone: "3", "3.2", "3.2.1", "A", "A.4", "IV". */
static int section_number(const char *t)
{
    const char *p = t;
    if (isupper((unsigned char)*p) && (p[1] == 0 || p[1] == '.')) p++;
    else if (isdigit((unsigned char)*p)) while (isdigit((unsigned char)*p) && p - t < 3) p++;
    else { int k = 0; while (strchr("IVX", *p) && *p && k < 5) { p++; k++; } if (!k || *p) return 0; return 1; }
    while (*p == '.' && isdigit((unsigned char)p[1])) { p++; while (isdigit((unsigned char)*p)) p++; }
    if (*p == '.') p++;
    return *p == 0;
}

/* A line of a table of contents: a title, then a dot leader (1) or a wide
   gap to a right-hand page number (2), then the page number; 0 when not.
   *title: bytes of the title in r->text. */
static int toc_row(const row *r, int *title)
{
    const char *t = r->text;
    size_t n = strlen(t);
    while (n && t[n - 1] == ' ') n--;
    size_t s = n;
    while (s && t[s - 1] != ' ' && t[s - 1] != '.') s--;
    int kind;
    if (s == n || !page_token(t + s, n - s, &kind)) return 0;
    size_t q = s;
    int dots = 0;
    for (;;) {
        if (q && (t[q - 1] == ' ' || t[q - 1] == '.')) { dots += t[q - 1] == '.'; q--; continue; }
        if (q >= 3 && !memcmp(t + q - 3, "\xE2\x80\xA6", 3)) { dots += 3; q -= 3; continue; }   /* ... */
        break;
    }
    int alpha = 0;
    for (size_t k = 0; k < q; k++) if (isalpha((unsigned char)t[k]) || (unsigned char)t[k] >= 0x80) { alpha = 1; break; }
    if (!alpha || q == 0) return 0;
    *title = (int)q;
    if (dots >= 4) return 1;
    /* no leader: the number is a span of its own, far right of the title */
    if (r->nspans < 2) return 0;
    const ql_pdf_span *last = r->spans[r->nspans - 1], *before = r->spans[r->nspans - 2];
    if (strlen(last->text) != n - s || last->x0 - before->x1 < 3 * r->size || last->x1 < r->colx1 - 2) return 0;
    return 2;
}

/* ---------------------------------------------------------------- emit */
typedef struct {
    str out;
    str foot;             /* footnote definitions */
    int page_markers;
    int inline_styles;
    int last_page_marked;
} emitter;

static void emit_span_text(str *s, const ql_pdf_span *sp, int styles, unsigned row_all)
{
    if (sp->flags & QL_PDF_SUPER) {
        const char *t = sp->text;
        int digits = 1;
        for (const char *p = t; *p; p++) if (!isalnum((unsigned char)*p) && *p != '*') digits = 0;
        if (digits) { s_add(s, "[^"); s_add(s, t); s_add(s, "]"); return; }
    }
    unsigned f = styles ? sp->flags & ~row_all : 0;
    const char *open = "", *close = "";
    if (f & QL_PDF_MONO) { open = "`"; close = "`"; }
    else if ((f & QL_PDF_BOLD) && (f & QL_PDF_ITALIC)) { open = "***"; close = "***"; }
    else if (f & QL_PDF_BOLD) { open = "**"; close = "**"; }
    else if (f & QL_PDF_ITALIC) { open = "*"; close = "*"; }
    s_add(s, open); s_add(s, sp->text); s_add(s, close);
}

/* Row text with inline styles, starting after skip bytes of the first span. */
static void row_rich_text(str *s, const row *r, int styles, int skip)
{
    float lastx1 = -1e9f;
    for (int i = 0; i < r->nspans; i++) {
        const ql_pdf_span *sp = r->spans[i];
        if (i == 0 && skip > 0) {
            if ((size_t)skip >= strlen(sp->text)) { lastx1 = sp->x1; skip -= (int)strlen(sp->text) + 1; continue; }
            ql_pdf_span tmp = *sp; tmp.text = sp->text + skip;
            while (*tmp.text == ' ') tmp.text++;
            emit_span_text(s, &tmp, styles, r->all);
            lastx1 = sp->x1; skip = 0;
            continue;
        }
        if (skip > 0 && i == 1) {
            const char *t = sp->text + (skip > 0 ? skip : 0);
            if ((size_t)skip > strlen(sp->text)) t = sp->text + strlen(sp->text);
            while (*t == ' ') t++;
            ql_pdf_span tmp = *sp; tmp.text = t;
            if (*t) emit_span_text(s, &tmp, styles, r->all);
            lastx1 = sp->x1; skip = 0;
            continue;
        }
        if (s->n && s_last(s) != ' ' && (sp->x0 - lastx1 > 0.12f * sp->size || (sp->flags & QL_PDF_GAP)) &&
            !(sp->flags & QL_PDF_SUPER))
            s_addc(s, ' ');
        emit_span_text(s, sp, styles, r->all);
        lastx1 = sp->x1;
    }
}

/* Appends row text to a paragraph, joining hyphenated words, also where the
   style changes at the break: "*exam-*" + "*ple*" gives "*example*",
   "exam-" + "*ple*" "exam*ple*", "*exam-*" + "ple" "*exam*ple" (emphasis
   marks only: code keeps its hyphens). */
static void para_join(str *para, const char *add)
{
    if (para->n) {
        size_t n = para->n, close = 0, open = 0;
        while (close < 3 && close < n && para->p[n - 1 - close] == '*') close++;
        while (open < 3 && add[open] == '*') open++;
        size_t h = n - close;   /* the hyphen's place, plus one */
        int hyph = h >= 2 && para->p[h - 1] == '-' && isalpha((unsigned char)para->p[h - 2]) &&
                   is_lower_start(add + open) && (!close || !open || close == open);
        if (hyph) {
            if (close && open) { para->n = h - 1; add += open; }        /* one style: one span */
            else { memmove(para->p + h - 1, para->p + h, close); para->n--; }
            para->p[para->n] = 0;
        } else if (s_last(para) != ' ') s_addc(para, ' ');
    }
    s_add(para, add);
}

static void md_escape_line_start(str *s, size_t start)
{
    /* a paragraph that starts like Markdown syntax gets a backslash */
    if (start >= s->n) return;
    char c = s->p[start];
    int ord_;
    if (c == '#' || ((c == '-' || c == '+' || c == '*' || c == '>') && start + 1 < s->n && s->p[start + 1] == ' ') ||
        list_marker(s->p + start, 0, &ord_) > 0) {
        if (list_marker(s->p + start, 0, &ord_) > 0 && ord_) {
            /* "1. text" paragraph: escape the dot */
            char *dot = s->p + start;
            while (*dot && *dot != '.' && *dot != ')') dot++;
            if (*dot) {
                size_t at = (size_t)(dot - s->p);
                s_grow(s, 1);
                if (s->oom) return;
                memmove(s->p + at + 1, s->p + at, s->n - at + 1);
                s->p[at] = '\\'; s->n++;
            }
            return;
        }
        s_grow(s, 1);
        if (s->oom) return;
        memmove(s->p + start + 1, s->p + start, s->n - start + 1);
        s->p[start] = '\\'; s->n++;
    }
}

static void emit_block_sep(emitter *e)
{
    if (e->out.n == 0) return;
    if (e->out.n >= 2 && e->out.p[e->out.n - 1] == '\n' && e->out.p[e->out.n - 2] == '\n') return;
    if (s_last(&e->out) == '\n') s_addc(&e->out, '\n');
    else s_add(&e->out, "\n\n");
}

static void emit_page_marker(emitter *e, int page)
{
    if (!e->page_markers || page <= e->last_page_marked) return;
    for (int p = e->last_page_marked + 1; p <= page; p++) {
        emit_block_sep(e);
        s_printf(&e->out, "<!-- page %d -->\n\n", p + 1);
    }
    e->last_page_marked = page;
}

/* Where line r of a table puts its text in column c (by span middles):
   right end, and the width of the first word there; 0 when the cell is empty. */
static int table_cell(const row *r, const float (*cx)[2], int nc, int c, float *x1, float *word)
{
    int found = 0;
    for (int s = 0; s < r->nspans; s++) {
        const ql_pdf_span *sp = r->spans[s];
        float mid = 0.5f * (sp->x0 + sp->x1);
        int k = 0;
        for (int q = 0; q < nc; q++) if (mid >= cx[q][0] - 1 && mid <= cx[q][1] + 1) { k = q; break; }
        if (k != c) continue;
        if (!found) {
            /* first word: its share of the span's characters, in proportion */
            int all = 0, first = 0, inword = 1;
            for (const char *p = sp->text; *p;) {
                int ch = u8_next(&p);
                all++;
                if (ch == ' ') inword = 0;
                if (inword) first++;
            }
            *word = all ? (sp->x1 - sp->x0) * (float)first / (float)all : 0;
            *x1 = sp->x1;
            found = 1;
        } else *x1 = fmaxf(*x1, sp->x1);
    }
    return found;
}

/* Evenly spaced table lines: does line nx continue the cells of line r? It
   does when in every column where nx has text, r has text too and the first
   word of nx there would not have fitted after it in the column's width (so
   the line broke because the column was full). A word that would have fitted,
   or text under an empty cell, starts a new row. */
static int table_line_wraps(const row *r, const row *nx, const float (*cx)[2], const float *cw, int nc)
{
    int tested = 0;
    for (int c = 0; c < nc; c++) {
        float bx1 = 0, bw = 0, ax1 = 0, aw = 0;
        if (!table_cell(nx, cx, nc, c, &bx1, &bw)) continue;
        if (!table_cell(r, cx, nc, c, &ax1, &aw)) return 0;
        float space = 0.3f * r->size;
        if (ax1 + space + bw <= cx[c][0] + cw[c]) return 0;
        tested++;
    }
    return tested > 0;
}

/* GFM table from rows [a, b) */
/* Horizontal rules that cross the table (segments at one height joined), and
   for each pair of consecutive lines [i, i+1) whether one lies between them:
   brk[i - a] = 1. Returns the number of such inner rules. */
static int table_inner_rules(const ql_pdf_page *pg, const row *rows, int a, int b, unsigned char *brk)
{
    float tx0 = 1e9f, tx1 = -1e9f;
    for (int i = a; i < b; i++) { tx0 = fminf(tx0, rows[i].x0); tx1 = fmaxf(tx1, rows[i].x1); }
    int n = 0;
    for (int i = a; i + 1 < b; i++) {
        brk[i - a] = 0;
        const row *r = &rows[i], *nx = &rows[i + 1];
        float lo = r->base + 0.1f * r->size, hi = nx->base - 0.6f * nx->size;
        if (!pg || hi <= lo) continue;
        /* join the segments in the band by height, measure how much of the table they cover */
        for (int k = 0; k < pg->nrules && !brk[i - a]; k++) {
            const ql_pdf_rule *q = &pg->rules[k];
            float y = 0.5f * (q->y0 + q->y1);
            if (q->kind != QL_PDF_RULE_H || y <= lo || y >= hi) continue;
            float cover = 0;
            for (int m = 0; m < pg->nrules; m++) {
                const ql_pdf_rule *u = &pg->rules[m];
                if (u->kind != QL_PDF_RULE_H || fabsf(0.5f * (u->y0 + u->y1) - y) > 1) continue;
                /* count each stretch of x once: only the part not covered by earlier segments */
                float x0 = fmaxf(u->x0, tx0), x1 = fminf(u->x1, tx1);
                for (int o = 0; o < m && x1 > x0; o++) {
                    const ql_pdf_rule *v = &pg->rules[o];
                    if (v->kind != QL_PDF_RULE_H || fabsf(0.5f * (v->y0 + v->y1) - y) > 1) continue;
                    if (v->x0 <= x0 && v->x1 > x0) x0 = fminf(x1, v->x1);
                    else if (v->x1 >= x1 && v->x0 < x1) x1 = fmaxf(x0, v->x0);
                }
                if (x1 > x0) cover += x1 - x0;
            }
            if (cover >= 0.8f * (tx1 - tx0)) { brk[i - a] = 1; n++; }
        }
    }
    return n;
}

/* A footnote from row i and its continuation rows into dst as "[^1]: text\n";
   returns the row after it. */
static int emit_footnote(str *dst, const row *R, int i, int nr)
{
    const row *r = &R[i];
    str f = {0};
    row_rich_text(&f, r, 0, 0);
    /* "[^1]text" -> "[^1]: text"; the mark's end is kept as an offset,
       since joining the continuation rows below may move f.p */
    const char *cl = f.p ? strchr(f.p, ']') : NULL;
    size_t close = cl ? (size_t)(cl - f.p) : SIZE_MAX;
    int j = i + 1;
    while (j < nr && R[j].kind == R_TEXT && R[j].page == r->page && R[j].col == r->col &&
           fabsf(R[j].size - r->size) < 0.5f && R[j].base - R[j - 1].base < 1.6f * r->size) {
        para_join(&f, R[j].text); j++;
    }
    if (f.oom) dst->oom = 1;
    else if (close < f.n && f.p[0] == '[') {
        s_addn(dst, f.p, close + 1);
        s_add(dst, ": ");
        const char *rest = f.p + close + 1;
        while (*rest == ' ') rest++;
        s_add(dst, rest);
        s_addc(dst, '\n');
    } else if (f.p) { s_add(dst, f.p); s_addc(dst, '\n'); }
    free(f.p);
    return j;
}

/* notes: footnotes follow the table; raised marks in its cells are their
   references ("Gear[^a]") */
static void emit_table(emitter *e, row *rows, int a, int b, float pitch, const ql_pdf_page *pg, int notes)
{
    /* columns: merge overlapping cell intervals over all rows */
    float cx[32][2]; int nc = 0;
    for (int i = a; i < b; i++) {
        row *r = &rows[i];
        float c0 = 0, c1 = 0; int open = 0; float lastx1 = -1e9f;
        for (int s = 0; s <= r->nspans; s++) {
            const ql_pdf_span *sp = s < r->nspans ? r->spans[s] : NULL;
            int gap = !sp || s == 0 || (sp->flags & QL_PDF_GAP) || sp->x0 - lastx1 > 0.9f * sp->size;
            if (gap && open) {
                int k, merged = 0;
                for (k = 0; k < nc; k++)
                    if (c0 < cx[k][1] + 1 && c1 > cx[k][0] - 1) {
                        cx[k][0] = fminf(cx[k][0], c0); cx[k][1] = fmaxf(cx[k][1], c1); merged = 1; break;
                    }
                if (!merged && nc < 32) { cx[nc][0] = c0; cx[nc][1] = c1; nc++; }
                open = 0;
            }
            if (!sp) break;
            if (!open) { c0 = sp->x0; open = 1; }
            c1 = sp->x1; lastx1 = sp->x1;
        }
    }
    /* merging may make intervals overlap: merge again, then sort by x */
    for (int pass = 0; pass < 4; pass++)
        for (int i = 0; i < nc; i++)
            for (int j = i + 1; j < nc; j++)
                if (cx[i][0] < cx[j][1] && cx[i][1] > cx[j][0]) {
                    cx[i][0] = fminf(cx[i][0], cx[j][0]); cx[i][1] = fmaxf(cx[i][1], cx[j][1]);
                    cx[j][0] = cx[nc - 1][0]; cx[j][1] = cx[nc - 1][1]; nc--; j--;
                }
    for (int i = 1; i < nc; i++)
        for (int j = i; j > 0 && cx[j][0] < cx[j - 1][0]; j--) {
            float t0 = cx[j][0], t1 = cx[j][1];
            cx[j][0] = cx[j - 1][0]; cx[j][1] = cx[j - 1][1]; cx[j - 1][0] = t0; cx[j - 1][1] = t1;
        }
    /* wrapped cells: when some row gaps are clearly larger than the smallest,
       the small gaps join lines of one table row */
    /* rules between lines: always a row boundary. With two or more of them
       (a ruled grid) they alone separate rows; with one, it closes the header,
       whose lines (up to three) make one row. The gaps at rules say nothing
       about wrapping, so the gap statistics below leave them out. */
    unsigned char brkbuf[256], *brk = b - a <= 256 ? brkbuf : malloc((size_t)(b - a));
    int ninner = 0, hdr_end = -1;
    if (brk) {
        ninner = table_inner_rules(pg, rows, a, b, brk);
        if (ninner == 1) {
            int h = 0;
            while (!brk[h]) h++;
            if (h <= 2) hdr_end = a + h;
        }
    }
    int nbig = 0, nsmall = 0;
    float gmin = pitch;
    for (int i = a + 1; i < b; i++) {
        if (brk && brk[i - 1 - a]) continue;
        float g = rows[i].base - rows[i - 1].base;
        if (g > 1.1f * pitch) nbig++; else nsmall++;
    }
    int grouped = nsmall >= 1 && (nbig >= 2 || (nbig >= 1 && 2 * nbig >= nsmall));
    /* column widths for the fit test below: a column reaches to the next
       column's start less the narrowest gap seen between columns (cells that
       wrap fill their column); the last one to the right edge of the text column */
    float cw[32];
    {
        float mingap = 1e9f;
        for (int c = 0; c + 1 < nc; c++) mingap = fminf(mingap, cx[c + 1][0] - cx[c][1]);
        if (mingap < 0) mingap = 0;
        float right = cx[nc > 0 ? nc - 1 : 0][1];
        for (int i = a; i < b; i++) right = fmaxf(right, rows[i].colx1);
        for (int c = 0; c < nc; c++)
            cw[c] = c + 1 < nc ? fmaxf(cx[c][1] - cx[c][0], cx[c + 1][0] - cx[c][0] - mingap) : right - cx[c][0];
    }
    emit_block_sep(e);
    str cells[32]; memset(cells, 0, sizeof cells);
    int first = 1;
    for (int i = a; i < b; i++) {
        row *r = &rows[i];
        unsigned char seen[32] = {0};
        for (int s = 0; s < r->nspans; s++) {
            const ql_pdf_span *sp = r->spans[s];
            float mid = 0.5f * (sp->x0 + sp->x1);
            int k = 0;
            for (int c = 0; c < nc; c++) if (mid >= cx[c][0] - 1 && mid <= cx[c][1] + 1) { k = c; break; }
            /* a word hyphenated at the end of a cell's line joins up again */
            if (!seen[k] && cells[k].n >= 2 && cells[k].p[cells[k].n - 1] == '-' &&
                isalpha((unsigned char)cells[k].p[cells[k].n - 2]) && is_lower_start(sp->text)) {
                cells[k].n--; cells[k].p[cells[k].n] = 0;
            } else if (cells[k].n) s_addc(&cells[k], ' ');
            seen[k] = 1;
            if (notes && (sp->flags & QL_PDF_SUPER) && cells[k].n && strlen(sp->text) <= 3) {
                int mark = 1;
                for (const char *p = sp->text; *p; p++) if (!isalnum((unsigned char)*p) && *p != '*') mark = 0;
                if (mark) {
                    if (s_last(&cells[k]) == ' ') cells[k].p[--cells[k].n] = 0;
                    s_add(&cells[k], "[^"); s_add(&cells[k], sp->text); s_addc(&cells[k], ']');
                    continue;
                }
            }
            for (const char *p = sp->text; *p; p++) {
                if (*p == '|') s_addc(&cells[k], '\\');
                s_addc(&cells[k], *p);
            }
        }
        /* the next row continues this one: it is in the same group (grouping
           by gaps), or, when rows are evenly spaced, its first column is empty */
        if (i + 1 < b && nc > 1 && brk && (brk[i - a] || ninner >= 2 || i < hdr_end)) {
            if (!brk[i - a]) continue;
        } else if (i + 1 < b && nc > 1) {
            const row *nx = &rows[i + 1];
            float g = nx->base - r->base;
            /* a subscript or a lower limit set as a line of its own, within
               the descent of the line above ("Ψ" over a small "1"): same row */
            if (g > 0 && g < 0.45f * r->size && nx->size < 0.85f * r->size) continue;
            if (grouped ? g <= gmin * 1.1f
                        : g < 1.6f * r->size && (0.5f * (nx->spans[0]->x0 + nx->spans[0]->x1) > cx[0][1] + 1 ||
                                                 table_line_wraps(r, nx, cx, cw, nc)))
                continue;
        }
        s_addc(&e->out, '|');
        for (int c = 0; c < nc; c++) {
            s_addc(&e->out, ' ');
            if (cells[c].p) s_add(&e->out, cells[c].p);
            if (cells[c].oom) e->out.oom = 1;
            s_add(&e->out, " |");
            free(cells[c].p);
            memset(&cells[c], 0, sizeof cells[c]);
        }
        s_addc(&e->out, '\n');
        if (first) {
            first = 0;
            s_addc(&e->out, '|');
            for (int c = 0; c < nc; c++) s_add(&e->out, " --- |");
            s_addc(&e->out, '\n');
        }
    }
    s_addc(&e->out, '\n');
    if (brk != brkbuf) free(brk);
}

/* ---------------------------------------------------------------- slide decks */
/* A deck's outline entries not matched on their page (olrow[k] < 0) become
   heading rows (no spans) before the first row of their target page, after
   the row of the entry before when that stands on the same page; heading rows
   not from the outline get levels below the outline entry in effect: the
   page's first (the frame title, with the rows it wraps onto) one deeper,
   others (block titles) two. Matched rows keep the outline's level. */
static int deck_outline(rowvec *rv, const ql_pdf_outline_item *ol, int nol, const int *olrow)
{
    int nr = rv->n, nins = 0;
    int *pos = malloc((size_t)nol * sizeof *pos);
    if (!pos) return -1;
    int lastat = 0, lastpage = -1;   /* where the entry before stands */
    for (int k = 0; k < nol; k++) {
        pos[k] = -1;
        if (olrow[k] >= 0 && olrow[k] < nr) { lastat = olrow[k] + 1; lastpage = rv->v[olrow[k]].page; continue; }
        if (ol[k].page < 0 || !ol[k].title || !ol[k].title[0]) continue;
        int at = 0;
        while (at < nr && rv->v[at].page < ol[k].page) at++;
        if (lastpage == ol[k].page && lastat > at) at = lastat;
        pos[k] = at; lastat = at; lastpage = ol[k].page;
        nins++;
    }
    row *v = malloc((size_t)(nr + nins + 1) * sizeof *v);
    if (!v) { free(pos); return -1; }
    int n = 0, cur = 0, fail = 0, titlepage = -1, titlerow = -1;
    for (int i = 0; i <= nr; i++) {
        for (int k = 0; k < nol; k++) {
            if (pos[k] != i) continue;
            row h; memset(&h, 0, sizeof h);
            h.page = i < nr ? rv->v[i].page : ol[k].page;
            h.col = -1;
            h.kind = R_HEAD;
            h.level = ol[k].level < 1 ? 1 : ol[k].level > 6 ? 6 : ol[k].level;
            h.text = strdup(ol[k].title);
            /* one line: titles may hold newlines */
            for (char *c = h.text; c && *c; c++) if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
            if (!h.text) { fail = 1; continue; }
            cur = h.level;
            v[n++] = h;
        }
        if (i == nr) break;
        row *r = &rv->v[i];
        int from_ol = 0;
        for (int k = 0; k < nol && !from_ol; k++) from_ol = olrow[k] == i;
        if (from_ol) cur = r->level;
        else if (r->kind == R_HEAD) {
            const row *pr = n ? &v[n - 1] : NULL;
            if (pr && titlerow == n - 1 && pr->page == r->page && pr->col == r->col &&
                fabsf(pr->size - r->size) < 0.6f && r->base - pr->base < 1.6f * r->size) {
                r->level = pr->level;        /* the title wraps */
                titlerow = n;
            } else if (titlepage != r->page) {
                r->level = cur + 1 < 6 ? cur + 1 : 6;
                titlepage = r->page; titlerow = n;
            } else r->level = cur + 2 < 6 ? cur + 2 : 6;
        }
        v[n++] = *r;
    }
    free(pos);
    free(rv->v);
    rv->v = v; rv->n = n; rv->cap = nr + nins + 1;
    return fail ? -1 : 0;
}

/* ---------------------------------------------------------------- main */
/* A page counts as unmapped when most of its text has no Unicode meaning. */
static int page_unmapped(const ql_pdf_page *pg)
{
    return pg->nunmapped >= 10 && (long)pg->nunmapped * 10 >= (long)pg->nchars * 3;
}

ql_status ql_pdf_to_markdown(const char *path, const ql_pdf_md_opts *opts_in,
                             char **md, size_t *len, ql_pdf_md_stats *stats)
{
    double t0 = ql_now();
    ql_pdf_md_opts opts;
    if (opts_in) opts = *opts_in; else ql_pdf_md_opts_default(&opts);
    *md = NULL; if (len) *len = 0;
    ql_pdf *pdf = NULL;
    QL_TRY(ql_pdf_open(&pdf, path, opts.password));
    if (opts.timeout > 0) ql_pdf_set_time_limit(pdf, opts.timeout);
    /* the time limit, polled by the loops below (MuPDF's own loops stop by themselves) */
    #define TIME_UP() (ql_pdf_timed_out(pdf) && (st = ql_fail(QL_ETIMEOUT, "%s: stopped after the time limit of %g s " \
        "(a slow or pathological file; raise timeout= or convert it alone)", path, opts.timeout)))
    int np = ql_pdf_page_count(pdf);
    ql_pdf_page **pages = calloc((size_t)np, sizeof *pages);
    unsigned char **furn = calloc((size_t)np, sizeof *furn);
    rowvec rv = {0};
    ql_pdf_outline_item *ol = NULL; int nol = 0;
    emitter e; memset(&e, 0, sizeof e);
    e.page_markers = opts.page_markers; e.inline_styles = opts.inline_styles; e.last_page_marked = -1;
    ql_status st = QL_OK;
    int loaded = 0, bad_pages = 0, unmapped = 0, first_unmapped = -1;
    long chars = 0; int images = 0;
    if (!pages || !furn) { st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
    for (int p = 0; p < np; p++) {
        ql_status ps = ql_pdf_page_load(pdf, p, &pages[p]);
        if (ps == QL_ETIMEOUT || ps == QL_ENOMEM) { st = ps; goto done; }
        if (ps != QL_OK) { bad_pages++; continue; }
        loaded++;
        if (pages[p]->errors) bad_pages++;
        if (page_unmapped(pages[p])) { unmapped++; if (first_unmapped < 0) first_unmapped = p; }
        chars += pages[p]->nchars; images += pages[p]->nimages;
        furn[p] = calloc((size_t)pages[p]->nlines + 1, 1);
        if (!furn[p]) { st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
    }
    if (loaded == 0) { st = ql_fail(QL_EFORMAT, "%s: corrupt PDF: none of its %d pages could be read (%s)", path, np, ql_last_error()); goto done; }
    if (chars < 16) {
        st = ql_fail(QL_EUNSUPPORTED, "%s: no text layer (%d page%s%s): a scanned PDF needs OCR first (e.g. ocrmypdf)",
                     path, np, np == 1 ? "" : "s", images ? " of images" : "");
        goto done;
    }
    /* pages that failed to load are skipped: give them empty stand-ins */
    int nfurn = 0;
    {
        ql_pdf_page **live = malloc((size_t)np * sizeof *live);
        unsigned char **lfurn = malloc((size_t)np * sizeof *lfurn);
        int nl = 0;
        if (!live || !lfurn) { free(live); free(lfurn); st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
        for (int p = 0; p < np; p++) if (pages[p]) { live[nl] = pages[p]; lfurn[nl] = furn[p]; nl++; }
        if (!opts.keep_furniture) nfurn = find_furniture(pdf, live, nl, lfurn);
        int ncols = 0, first_text = 0;
        while (first_text < nl && live[first_text]->nlines == 0) first_text++;
        for (int i = 0; i < nl && st == QL_OK && !TIME_UP(); i++)
            if (page_rows(live[i], lfurn[i], &rv, &ncols, i == first_text)) st = ql_fail(QL_ENOMEM, "%s: out of memory", path);
        free(live); free(lfurn);
        if (st) goto done;
    }
    if (opts.use_outline && ql_pdf_outline(pdf, &ol, &nol) != QL_OK) { ol = NULL; nol = 0; }

    row *R = rv.v; int nr = rv.n;
    /* body size and line pitch */
    float body = 10, pitch = 12;
    {
        float *v = malloc((size_t)(nr + 1) * sizeof *v), *w = malloc((size_t)(nr + 1) * sizeof *w);
        if (!v || !w) { free(v); free(w); st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
        int k = 0;
        for (int i = 0; i < nr; i++) { v[k] = roundf(R[i].size * 2) / 2; w[k] = (float)strlen(R[i].text); k++; }
        /* sampling keeps this O(n) for big documents */
        int step = k > 400 ? k / 400 : 1, m = 0;
        for (int i = 0; i < k; i += step) { v[m] = v[i]; w[m] = w[i]; m++; }
        if (m) body = weighted_mode(v, w, m);
        m = 0;
        for (int i = 1; i < nr; i++) {
            if (R[i].page != R[i - 1].page || R[i].col != R[i - 1].col) continue;
            if (fabsf(R[i].size - body) > 0.6f || fabsf(R[i - 1].size - body) > 0.6f) continue;
            float d = R[i].base - R[i - 1].base;
            if (d > 0.5f * body && d < 3 * body) { v[m] = roundf(d * 2) / 2; w[m] = 1; m++; }
        }
        int step2 = m > 400 ? m / 400 : 1, m2 = 0;
        for (int i = 0; i < m; i += step2) { v[m2] = v[i]; w[m2] = 1; m2++; }
        if (m2) pitch = weighted_mode(v, w, m2); else pitch = body * 1.2f;
        free(v); free(w);
    }

    /* a slide deck: landscape pages. A frame's title is its first row, at
       the top, bold or larger than the text even when it ends a sentence.
       The outline names sections that stand only in the navigation bar
       (furniture): entries not found on their own page become headings
       there, frame titles go one level below (deck_outline), and rows that
       repeat outline titles elsewhere (an "Outline" frame) become a list */
    int deck = 0;
    {
        int land = 0, live = 0;
        for (int p = 0; p < np; p++)
            if (pages[p]) { live++; land += pages[p]->width > 1.15f * pages[p]->height; }
        deck = live >= 3 && land * 10 >= live * 8;
    }
    /* classify rows */
    hstyle hs[64]; int nhs = 0;
    unsigned char *tocc = calloc((size_t)nr + 1, 1);   /* rows that may be contents lines without a leader */
    for (int i = 0; i < nr; i++) {
        row *r = &R[i];
        r->kind = R_TEXT;
        if (r->stack) continue;   /* a title block's stack: text, one paragraph */
        size_t tl = strlen(r->text);
        int sep = r->nspans > 1 && (r->spans[1]->x0 - r->spans[0]->x1 > 0.25f * r->size ||
                                    r->spans[0]->flags != r->spans[1]->flags);
        int ord;
        int ml = list_marker(r->text, sep && strlen(r->spans[0]->text) <= 4, &ord);
        if ((r->all & QL_PDF_MONO) && !(ml && sep && !(r->spans[0]->flags & QL_PDF_MONO))) { r->kind = R_CODE; continue; }
        /* a table of contents: titles, a dot leader, a page number */
        int tlen, toc = toc_row(r, &tlen);
        if (toc == 1) { r->kind = R_TOC; r->marker_len = tlen; r->marker_x = r->x0; continue; }
        if (toc == 2 && tocc) tocc[i] = (unsigned char)1;
        /* "1. Title" set in bold alone on its row: a numbered heading (groff
           ms .NH), not a list */
        if (ml && ord && (r->all & QL_PDF_BOLD) && section_depth(r->text) && tl < 120 && !text_ends_sentence(r->text)) ml = 0;
        /* "3.2 | Title", "A.1 | Title": a numbered heading whose number stands
           apart (DocBook/dblatex, AsciiDoc), not a two-cell table row */
        if (!ml && r->ncells == 2 && section_number(r->spans[0]->text) && tl < 120 && !text_ends_sentence(r->text) &&
            (r->size >= body * 1.12f || (r->all & QL_PDF_BOLD))) r->ncells = 1;
        if (ml) {
            r->kind = R_LIST; r->marker_len = ml; r->ordered = ord; r->marker_x = r->x0;
            continue;
        }
        /* footnote text: smaller than body, led by a raised mark, low on the page */
        if (r->size < body * 0.92f && r->nspans > 1 && (r->spans[0]->flags & QL_PDF_SUPER)) { r->kind = R_FOOT; continue; }
        if (r->ncells >= 2) { r->kind = R_TABLE; continue; }
        int big = r->size >= body * 1.12f;
        int boldshort = (r->all & QL_PDF_BOLD) && r->size >= body * 0.95f && tl < 120 && !text_ends_sentence(r->text);
        if (deck && (i == 0 || R[i - 1].page != r->page) && r->y0 < 0.25f * pages[r->page]->height && tl < 200 &&
            (((r->all & QL_PDF_BOLD) && r->size >= body * 0.95f) || r->size >= body * 1.08f)) big = 1;
        if ((big && tl < 200) || boldshort) {
            r->kind = R_HEAD;
            float sz = roundf(r->size * 2) / 2;
            int bold = (r->all & QL_PDF_BOLD) != 0, k;
            for (k = 0; k < nhs; k++) if (fabsf(hs[k].size - sz) < 0.3f && hs[k].bold == bold) break;
            if (k == nhs && nhs < 64) { hs[nhs].size = sz; hs[nhs].bold = bold; hs[nhs].level = 0; hs[nhs].count = 0; nhs++; }
            if (k < nhs) hs[k].count++;
        }
    }
    /* contents lines without a leader ("Canvas size    32"): in a run of
       contents lines on one page that holds a leader, or of three or more whose
       page numbers do not decrease (a table's last column seldom does that) */
    for (int i = 0; tocc && i < nr;) {
        if (!tocc[i] && R[i].kind != R_TOC) { i++; continue; }
        int j = i, leader = 0, mono = 1, cand = 0;
        long last = -1;
        while (j < nr && (tocc[j] || R[j].kind == R_TOC) && R[j].page == R[i].page) {
            leader |= R[j].kind == R_TOC;
            cand += tocc[j];
            const char *t = R[j].text;
            size_t n = strlen(t), s0;
            while (n && t[n - 1] == ' ') n--;
            s0 = n;
            while (s0 && t[s0 - 1] != ' ' && t[s0 - 1] != '.') s0--;
            int kind;
            long v = page_token(t + s0, n - s0, &kind);
            if (kind == 1) { if (v < last || v > 2L * np + 50) mono = 0; last = v; }
            j++;
        }
        if (cand && (leader || (j - i >= 3 && mono)))
            for (int k = i; k < j; k++)
                if (tocc[k] && (R[k].kind == R_TEXT || R[k].kind == R_HEAD || R[k].kind == R_TABLE)) {
                    int tlen;
                    toc_row(&R[k], &tlen);
                    R[k].kind = R_TOC; R[k].marker_len = tlen; R[k].marker_x = R[k].x0; R[k].level = 0;
                }
        i = j;
    }
    free(tocc);
    /* drawn bullets */
    if (TIME_UP()) goto done;
    for (int i = 0; i < nr && !ql_pdf_timed_out(pdf); i++) {
        row *r = &R[i];
        if ((r->kind != R_TEXT && r->kind != R_TABLE) || r->stack) continue;
        ql_pdf_page *pg = pages[r->page];
        if (!pg) continue;
        for (int k = 0; k < pg->nrules; k++) {
            ql_pdf_rule *d = &pg->rules[k];
            if (d->kind != QL_PDF_DOT) continue;
            float cy = 0.5f * (d->y0 + d->y1);
            if (cy > r->y0 && cy < r->y1 && d->x1 <= r->x0 + 1 && r->x0 - d->x1 < 2.5f * r->size) {
                r->kind = R_LIST; r->dot = 1; r->marker_x = d->x0; r->marker_len = 0; break;
            }
        }
    }
    /* table runs: >=2 multi-cell rows in one column, with the wrapped lines of
       their cells (single-cell rows right of the first column); else text */
    for (int i = 0; i < nr;) {
        if (R[i].kind != R_TABLE) { i++; continue; }
        int j = i + 1, multi = 1;
        float tx0 = R[i].x0, tx1 = R[i].x1;
        while (j < nr && R[j].page == R[i].page && R[j].col == R[i].col) {
            float g = R[j].base - R[j - 1].base;
            if (R[j].kind == R_TABLE && g < 3.5f * pitch) {
                multi++; tx0 = fminf(tx0, R[j].x0); tx1 = fmaxf(tx1, R[j].x1); j++; continue;
            }
            if ((R[j].kind == R_TEXT || R[j].kind == R_HEAD) && g < 1.5f * pitch &&
                ((R[j].x0 > tx0 + 2 * R[j].size && R[j].x1 <= tx1 + 5) || R[j].x1 - R[j].x0 < 0.4f * (tx1 - tx0))) {
                R[j].level = -1 - R[j].kind;   /* remember the class in case this is no table */
                R[j].kind = R_TABLE; j++; continue;
            }
            break;
        }
        if (multi < 2) {
            for (int k = i + 1; k < j; k++) if (R[k].level < 0) { R[k].kind = -1 - R[k].level; R[k].level = 0; }
            /* a lone multi-cell row: treat like a normal row */
            row *r = &R[i];
            r->kind = R_TEXT;
            if (r->size >= body * 1.12f || ((r->all & QL_PDF_BOLD) && strlen(r->text) < 120)) r->kind = R_HEAD;
            if (r->kind == R_HEAD) {
                float sz = roundf(r->size * 2) / 2; int bold = (r->all & QL_PDF_BOLD) != 0, k;
                for (k = 0; k < nhs; k++) if (fabsf(hs[k].size - sz) < 0.3f && hs[k].bold == bold) break;
                if (k == nhs && nhs < 64) { hs[nhs].size = sz; hs[nhs].bold = bold; hs[nhs].count = 0; nhs++; }
                if (k < nhs) hs[k].count++;
            }
        } else {
            for (int k = i; k < j; k++) R[k].level = 0;
        }
        i = j;
    }
    /* heading levels: outline first */
    int use_ol = 0;
    int *olrow = NULL;   /* deck: the row each outline entry matched, -1 none */
    if (nol > 0) {
        int matched = 0;
        char a[256], b[256];
        int *olhit = calloc((size_t)nol, sizeof *olhit);
        if (deck) {
            olrow = malloc((size_t)nol * sizeof *olrow);
            if (!olrow) { free(olhit); st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
            for (int k = 0; k < nol; k++) olrow[k] = -1;
        }
        /* pass 1: rows that look like headings; pass 2, for the entries
           left: a row that is the whole title in italics (groff mom's third
           level), not the italic mention of a title before its heading */
        for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < nr && !ql_pdf_timed_out(pdf); i++) {
            row *r = &R[i];
            if (r->kind == R_CODE || r->kind == R_TABLE || r->kind == R_TOC) continue;
            if (pass && (r->kind != R_TEXT || !(r->all & QL_PDF_ITALIC))) continue;
            norm_key(r->text, a, sizeof a, 0);
            if (!a[0]) continue;
            for (int k = 0; k < nol; k++) {
                if (olhit && olhit[k]) continue;
                if (ol[k].page >= 0 && abs(ol[k].page - r->page) > (deck ? 0 : 1)) continue;
                if (deck && r->kind != R_HEAD && r->kind != R_TEXT) continue;
                norm_key(ol[k].title, b, sizeof b, 0);
                size_t la = strlen(a), lb = strlen(b);
                if (!lb) continue;
                int eq = la == lb ? strcmp(a, b) == 0 : (la > lb && strcmp(a + la - lb, b) == 0 && la - lb <= 6);
                if (!eq) continue;
                /* the row must look like a heading: bigger, or bold (pass 1) */
                if (pass ? la != lb : r->kind != R_HEAD && !(r->all & QL_PDF_BOLD) && r->size < body * 1.05f) continue;
                r->kind = R_HEAD; r->level = ol[k].level < 6 ? ol[k].level : 6;
                if (olhit) olhit[k] = 1;
                if (olrow) olrow[k] = i;
                matched++;
                break;
            }
        }
        free(olhit);
        use_ol = matched * 2 >= nol || matched >= 3;
        if (deck) use_ol = 0;
        /* deck: a row that is an outline title (a section number before it
           allowed) away from that entry's page is a contents line */
        char (*okey)[256] = deck && olrow ? malloc((size_t)nol * sizeof *okey) : NULL;
        for (int k = 0; okey && k < nol; k++) norm_key(ol[k].title ? ol[k].title : "", okey[k], sizeof okey[k], 0);
        for (int i = 0; okey && i < nr; i++) {
            row *r = &R[i];
            if (r->kind != R_HEAD && r->kind != R_TEXT) continue;
            int mine = 0;
            for (int k = 0; k < nol && !mine; k++) mine = olrow[k] == i;
            if (mine) continue;
            norm_key(r->text, a, sizeof a, 0);
            size_t la = strlen(a);
            if (!la) continue;
            for (int k = 0; k < nol; k++) {
                if (ol[k].page == r->page) continue;
                size_t lb = strlen(okey[k]);
                if (lb < 4 || la < lb || la - lb > 3 || strcmp(a + la - lb, okey[k])) continue;
                if (la > lb && !isdigit((unsigned char)a[0])) continue;
                r->kind = R_LIST; r->marker_len = 0; r->marker_x = r->x0; r->ordered = 0; r->level = 0;
                break;
            }
        }
        free(okey);
        if (use_ol) {
            /* styles seen on outline headings map to levels; other candidates with
               those styles (deeper than the outline) keep them, the rest are text */
            for (int k = 0; k < nhs; k++) hs[k].level = 0;
            for (int i = 0; i < nr; i++) {
                row *r = &R[i];
                if (r->kind != R_HEAD || !r->level) continue;
                float sz = roundf(r->size * 2) / 2; int bold = (r->all & QL_PDF_BOLD) != 0;
                for (int k = 0; k < nhs; k++)
                    if (fabsf(hs[k].size - sz) < 0.3f && hs[k].bold == bold && (!hs[k].level || r->level > hs[k].level))
                        hs[k].level = r->level;
            }
            for (int i = 0; i < nr; i++) {
                row *r = &R[i];
                if (r->kind != R_HEAD || r->level) continue;
                r->kind = R_TEXT;
            }
        } else if (!deck) {
            for (int i = 0; i < nr; i++) R[i].level = 0;
        }
    }
    if (deck && olrow) {
        if (deck_outline(&rv, ol, nol, olrow)) { free(olrow); st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
        R = rv.v; nr = rv.n;
    }
    free(olrow);
    if (!use_ol && !(deck && nol > 0)) {
        qsort(hs, (size_t)nhs, sizeof *hs, hstyle_cmp);
        for (int k = 0; k < nhs; k++) hs[k].level = k + 1 < 6 ? k + 1 : 6;
        for (int i = 0; i < nr; i++) {
            row *r = &R[i];
            if (r->kind != R_HEAD) continue;
            float sz = roundf(r->size * 2) / 2; int bold = (r->all & QL_PDF_BOLD) != 0;
            r->level = 6;
            for (int k = 0; k < nhs; k++) if (fabsf(hs[k].size - sz) < 0.3f && hs[k].bold == bold) { r->level = hs[k].level; break; }
        }
        /* hierarchical section numbers ("2", "2.1", "2.1.3") tell levels that
           styles may not (groff ms sets every level past the first alike): when
           numbered headings show two depths or more, depth counts from the
           level the shallowest numbered headings got by style */
        int nnum = 0, dmin = 99, dmax = 0, base = 6;
        for (int i = 0; i < nr; i++) {
            if (R[i].kind != R_HEAD) continue;
            int d = section_depth(R[i].text);
            if (!d) continue;
            nnum++;
            if (d < dmin) { dmin = d; base = R[i].level; }
            else if (d == dmin && R[i].level < base) base = R[i].level;
            if (d > dmax) dmax = d;
        }
        if (nnum >= 3 && dmax > dmin)
            for (int i = 0; i < nr; i++) {
                int d = R[i].kind == R_HEAD ? section_depth(R[i].text) : 0;
                if (d) R[i].level = base + d - dmin < 6 ? base + d - dmin : 6;
            }
    }
    /* a table floated to the top of a page (a full-width band before the
       page's columns) that interrupts a paragraph running on from the page
       before: the paragraph's continuation goes first, then the table with its
       caption and notes, as LaTeX's source has it */
    for (int i = 1; i < nr; i++) {
        if (R[i].page == R[i - 1].page || R[i - 1].kind != R_TEXT) continue;
        int b = i, table = 0, other = 0;
        while (b < nr && R[b].page == R[i].page && R[b].col == R[i].col) {
            table |= R[b].kind == R_TABLE;
            other |= R[b].kind != R_TABLE && R[b].kind != R_TEXT && R[b].kind != R_FOOT;
            b++;
        }
        if (!table || other || b >= nr || R[b].page != R[i].page || R[b].kind != R_TEXT || R[b].stack) continue;
        const row *pv = &R[i - 1];
        int full = pv->x1 > pv->colx1 - 0.12f * (pv->colx1 - pv->colx0);
        if (!((full && !text_ends_sentence(pv->text)) || is_lower_start(R[b].text))) continue;
        /* the paragraph's rows after the band: same column, close, not indented */
        int k = b + 1;
        while (k < nr && R[k].kind == R_TEXT && R[k].page == R[b].page && R[k].col == R[b].col && !R[k].stack &&
               R[k].base - R[k - 1].base <= pitch * 1.28f + 0.5f && fabsf(R[k].size - R[k - 1].size) <= 0.8f &&
               !(R[k].x0 > R[k - 1].x0 + 0.8f * R[k].size) &&
               !(text_ends_sentence(R[k - 1].text) && R[k - 1].x1 < R[k - 1].colx0 + 0.7f * (R[k - 1].colx1 - R[k - 1].colx0)))
            k++;
        row *tmp = malloc((size_t)(b - i) * sizeof *tmp);
        if (!tmp) { st = ql_fail(QL_ENOMEM, "%s: out of memory", path); goto done; }
        memcpy(tmp, &R[i], (size_t)(b - i) * sizeof *tmp);
        memmove(&R[i], &R[b], (size_t)(k - b) * sizeof *R);
        memcpy(&R[i + (k - b)], tmp, (size_t)(b - i) * sizeof *tmp);
        free(tmp);
        i = k - 1;
    }
    /* ---- blocks ---- */
    if (TIME_UP()) goto done;
    int headings = 0;
    str para = {0}; int para_open = 0;
    int in_list = 0; float list_x[8]; int list_depth = 0; int prev_was_list = 0;
    #define FLUSH_PARA() do { if (para_open) { emit_block_sep(&e); size_t st0 = e.out.n; s_add(&e.out, para.p ? para.p : ""); \
        md_escape_line_start(&e.out, st0); s_addc(&e.out, '\n'); para.n = 0; if (para.p) para.p[0] = 0; para_open = 0; } } while (0)
    for (int i = 0; i < nr && !ql_pdf_timed_out(pdf);) {
        row *r = &R[i];
        row *prev = i > 0 ? &R[i - 1] : NULL;
        int same_flow = prev && prev->page == r->page && prev->col == r->col;
        float gap = same_flow ? r->base - prev->base : 0;
        if (r->kind != R_TEXT || !para_open) emit_page_marker(&e, r->page);
        if (r->kind != R_LIST && r->kind != R_FOOT && r->kind != R_TOC) prev_was_list = 0;
        switch (r->kind) {
        case R_HEAD: {
            FLUSH_PARA(); in_list = 0;
            str h = {0};
            s_add(&h, r->text);
            int j = i + 1;
            /* a heading wrapped over two rows */
            while (j < nr && r->nspans && R[j].nspans && R[j].kind == R_HEAD && R[j].level == r->level && R[j].page == r->page &&
                   R[j].col == r->col && R[j].base - R[j - 1].base < 1.6f * r->size && j - i < 3) {
                s_addc(&h, ' '); s_add(&h, R[j].text); j++;
            }
            emit_block_sep(&e);
            for (int k = 0; k < r->level; k++) s_addc(&e.out, '#');
            s_addc(&e.out, ' ');
            s_add(&e.out, h.p ? h.p : "");
            s_addc(&e.out, '\n');
            if (h.oom) e.out.oom = 1;
            free(h.p);
            headings++;
            i = j;
            continue;
        }
        case R_CODE: {
            FLUSH_PARA(); in_list = 0;
            int j = i + 1;
            while (j < nr && R[j].kind == R_CODE &&
                   (R[j].page != R[j - 1].page || R[j].col != R[j - 1].col || R[j].base - R[j - 1].base < 2.6f * R[j].size)) j++;
            float minx = 1e9f, cw = 0;
            for (int k = i; k < j; k++) {
                minx = fminf(minx, R[k].x0);
                size_t n = strlen(R[k].text);
                if (n >= 4 && cw == 0) cw = (R[k].x1 - R[k].x0) / (float)n;
            }
            if (cw <= 0) cw = 0.6f * r->size;
            emit_block_sep(&e);
            s_add(&e.out, "```\n");
            for (int k = i; k < j; k++) {
                /* page change inside a code block: restart the indentation origin */
                float mx = minx;
                int ind = (int)lroundf((R[k].x0 - mx) / cw);
                if (ind < 0) ind = 0;
                if (ind > 60) ind = 60;
                for (int s = 0; s < ind; s++) s_addc(&e.out, ' ');
                /* keep runs of spaces inside code: rebuild from spans by x */
                float cx = R[k].x0;
                for (int s = 0; s < R[k].nspans; s++) {
                    const ql_pdf_span *sp = R[k].spans[s];
                    if (s > 0) {
                        /* spaces as the glyph positions say: none where a
                           style changes inside a word ("test-commands; do") */
                        int sp_n = (int)lroundf((sp->x0 - cx) / cw);
                        if (sp_n < 0) sp_n = 0;
                        if (sp_n == 0 && (sp->flags & QL_PDF_GAP)) sp_n = 1;
                        if (sp_n > 40) sp_n = 40;
                        for (int q = 0; q < sp_n; q++) s_addc(&e.out, ' ');
                    }
                    s_add(&e.out, sp->text);
                    cx = sp->x1;
                }
                s_addc(&e.out, '\n');
            }
            s_add(&e.out, "```\n");
            i = j;
            continue;
        }
        case R_TOC: {
            /* a table of contents as a nested list of titles (leaders and page
               numbers dropped), nested by where the titles start */
            FLUSH_PARA(); in_list = 0;
            float tx[8]; int depth = 0, j = i;
            tx[0] = r->marker_x;
            if (!prev_was_list) emit_block_sep(&e);
            for (; j < nr && R[j].kind == R_TOC; j++) {
                float x = R[j].marker_x;
                if (R[j].page != R[j > i ? j - 1 : j].page && j > i) { depth = 0; tx[0] = x; }
                while (depth > 0 && x < tx[depth] - 3) depth--;
                if (x > tx[depth] + 3 && depth < 7) tx[++depth] = x;
                else if (x < tx[depth]) tx[depth] = x;
                for (int d = 0; d < depth; d++) s_add(&e.out, "  ");
                s_add(&e.out, "- ");
                size_t at = e.out.n;
                s_addn(&e.out, R[j].text, (size_t)R[j].marker_len);
                md_escape_line_start(&e.out, at);
                s_addc(&e.out, '\n');
            }
            prev_was_list = 1;
            i = j;
            continue;
        }
        case R_TABLE: {
            FLUSH_PARA(); in_list = 0;
            int j = i + 1;
            while (j < nr && R[j].kind == R_TABLE && R[j].page == r->page && R[j].col == r->col) j++;
            /* the table's own notes, set just under it (a minipage's or
               threeparttable's footnotes): kept right after it, not at the end */
            int notes = j < nr && R[j].kind == R_FOOT && R[j].page == r->page && R[j].col == r->col &&
                        R[j].y0 - R[j - 1].y1 < 2.5f * pitch;
            emit_table(&e, R, i, j, pitch, pages[r->page], notes);
            if (notes) {
                str f = {0};
                while (j < nr && R[j].kind == R_FOOT && R[j].page == r->page && R[j].col == r->col)
                    j = emit_footnote(&f, R, j, nr);
                if (f.oom) e.out.oom = 1;
                else if (f.p) { emit_block_sep(&e); s_add(&e.out, f.p); }
                free(f.p);
            }
            i = j;
            continue;
        }
        case R_FOOT:
            i = emit_footnote(&e.foot, R, i, nr);
            continue;
        case R_LIST: {
            FLUSH_PARA();
            /* nesting by marker x */
            float mx = r->marker_x;
            if (!in_list) { list_depth = 0; list_x[0] = mx; in_list = 1; }
            else {
                int d = list_depth;
                while (d > 0 && mx < list_x[d] - 3) d--;
                if (mx > list_x[d] + 3) { if (d < 7) { d++; list_x[d] = mx; } }
                else list_x[d] = fminf(list_x[d], mx);
                list_depth = d;
            }
            str item = {0};
            row_rich_text(&item, r, e.inline_styles, r->marker_len);
            int j = i + 1;
            float textx = r->x0;
            if (!r->dot && r->nspans > 1 && r->marker_len >= (int)strlen(r->spans[0]->text)) textx = r->spans[1]->x0;
            /* continuation rows: same flow, close below, indented past the marker */
            while (j < nr && R[j].kind == R_TEXT &&
                   ((R[j].page == R[j - 1].page && R[j].col == R[j - 1].col && R[j].base - R[j - 1].base < pitch * 1.25f &&
                     R[j].x0 > mx + 2) ||
                    ((R[j].page != R[j - 1].page || R[j].col != R[j - 1].col) && is_lower_start(R[j].text)))) {
                str t = {0};
                row_rich_text(&t, &R[j], e.inline_styles, 0);
                para_join(&item, t.p ? t.p : "");
                if (t.oom) item.oom = 1;
                free(t.p);
                j++;
            }
            (void)textx;
            if (!prev_was_list) emit_block_sep(&e);
            else if (e.out.n && s_last(&e.out) != '\n') s_addc(&e.out, '\n');
            for (int d = 0; d < list_depth; d++) s_add(&e.out, r->ordered ? "   " : "  ");
            if (r->ordered) {
                /* keep the number */
                const char *t = r->text; char num[16]; int k = 0;
                while (*t && *t != ' ' && k < 15) num[k++] = *t++;
                num[k] = 0;
                if (num[0] == '(') { memmove(num, num + 1, strlen(num)); }
                size_t nl = strlen(num);
                if (nl && num[nl - 1] == ')') num[nl - 1] = '.';
                s_add(&e.out, num); s_addc(&e.out, ' ');
            } else s_add(&e.out, "- ");
            s_add(&e.out, item.p ? item.p : "");
            s_addc(&e.out, '\n');
            if (item.oom) e.out.oom = 1;
            free(item.p);
            prev_was_list = 1;
            i = j;
            continue;
        }
        default: break;
        }
        /* text row */
        int newpara = !para_open;
        if (para_open && prev) {
            if (r->stack || prev->stack) newpara = r->stack != prev->stack || prev->kind != R_TEXT;
            else if (prev->kind != R_TEXT) newpara = 1;
            else if (same_flow) {
                if (gap > pitch * 1.28f + 0.5f || gap < 0) newpara = 1;
                else if (fabsf(r->size - prev->size) > 0.8f) newpara = 1;
                else if (r->x0 > prev->x0 + 0.8f * r->size && r->x0 - r->colx0 > 0.8f * r->size &&
                         r->x0 - r->colx0 < 4 * r->size && i + 1 < nr && fabsf(R[i + 1].x0 - prev->x0) < 2) newpara = 1;
                else if (text_ends_sentence(prev->text) && prev->x1 < prev->colx0 + 0.7f * (prev->colx1 - prev->colx0)) newpara = 1;
            } else {
                /* new column or page: continue when the last row ran to the right
                   edge without ending a sentence, or the next starts lowercase */
                int full = prev->x1 > prev->colx1 - 0.12f * (prev->colx1 - prev->colx0);
                newpara = !((full && !text_ends_sentence(prev->text)) || is_lower_start(r->text));
            }
        }
        if (newpara) { FLUSH_PARA(); in_list = 0; emit_page_marker(&e, r->page); }
        str t = {0};
        row_rich_text(&t, r, e.inline_styles, 0);
        para_join(&para, t.p ? t.p : "");
        if (t.oom) para.oom = 1;
        free(t.p);
        para_open = 1;
        i++;
    }
    FLUSH_PARA();
    #undef FLUSH_PARA
    free(para.p);
    if (TIME_UP()) goto done;
    if (e.foot.n) {
        emit_block_sep(&e);
        s_add(&e.out, e.foot.p);
    }
    if (e.out.oom || e.foot.oom || para.oom) { st = ql_fail(QL_ENOMEM, "%s: out of memory building Markdown (or a text block past the size limit)", path); goto done; }
    if (!e.out.p) s_add(&e.out, "");
    *md = e.out.p; e.out.p = NULL;
    if (len) *len = *md ? strlen(*md) : 0;
    if (stats) {
        stats->pages = np; stats->chars = (int)(chars > 0x7fffffff ? 0x7fffffff : chars);
        stats->headings = headings; stats->furniture_lines = nfurn;
        stats->unmapped_pages = unmapped; stats->first_unmapped = first_unmapped;
        stats->damaged_pages = bad_pages; stats->repaired = ql_pdf_repaired(pdf);
        stats->seconds = ql_now() - t0;
    }
done:
    free(e.out.p); free(e.foot.p);
    for (int i = 0; i < rv.n; i++) { free(rv.v[i].spans); free(rv.v[i].text); }
    free(rv.v);
    ql_pdf_outline_free(ol, nol);
    if (pages) for (int p = 0; p < np; p++) ql_pdf_page_free(pages[p]);
    if (furn) for (int p = 0; p < np; p++) free(furn[p]);
    free(pages); free(furn);
    ql_pdf_close(pdf);
    return st;
    #undef TIME_UP
}
