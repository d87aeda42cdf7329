/*
 * pdf.c — PDF documents through MuPDF: open, metadata, outline, and the
 * structured text of a page as lines of styled spans (see pdf.h).
 *
 * Each ql_pdf has its own fz_context, so documents are independent between
 * threads. All MuPDF calls sit inside fz_try; errors become ql_fail messages
 * naming the file. A page's strings and arrays live in one arena freed with
 * the page.
 */
#include "pdf.h"
#include "platform.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mupdf/fitz.h>
#include <mupdf/pdf.h>

struct ql_pdf {
    fz_context *ctx;
    fz_document *doc;
    char *path;
    int npages;
    fz_cookie cookie;     /* passed to every page run; abort = the time limit passed */
    ql_alarm *alarm;      /* sets cookie.abort at the time limit */
    double limit;         /* seconds, for messages */
    double deadline;      /* ql_now() time of the limit, 0: none */
};

/* ---------------------------------------------------------------- arena */
typedef struct ql_pdf_arena {
    struct ql_pdf_arena *next;
    size_t used, cap;
    /* data follows, aligned for any object */
    _Alignas(16) unsigned char data[];
} ql_pdf_arena;

static void *arena_alloc(ql_pdf_arena **head, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    ql_pdf_arena *a = *head;
    if (!a || a->used + n > a->cap) {
        size_t cap = n > 65536 ? n : 65536;
        ql_pdf_arena *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a; b->used = 0; b->cap = cap;
        *head = a = b;
    }
    void *p = a->data + a->used;
    a->used += n;
    return p;
}

static void arena_free(ql_pdf_arena *a)
{
    while (a) { ql_pdf_arena *n = a->next; free(a); a = n; }
}

static char *arena_strndup(ql_pdf_arena **head, const char *s, size_t n)
{
    char *p = arena_alloc(head, n + 1);
    if (p) { memcpy(p, s, n); p[n] = 0; }
    return p;
}

/* ---------------------------------------------------------------- open */
static ql_status fail_from_mupdf(ql_status code, const char *path, fz_context *ctx, const char *what)
{
    return ql_fail(code, "%s: %s: %s", path, what, fz_caught_message(ctx));
}

ql_status ql_pdf_open(ql_pdf **out, const char *path, const char *password)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ql_fail(QL_EIO, "%s: cannot open the file: check the path and permissions", path);
    unsigned char head[1024];
    size_t got = fread(head, 1, sizeof head, fp);
    fclose(fp);
    if (got == 0) return ql_fail(QL_EFORMAT, "%s: the file is empty, not a PDF", path);
    int has_magic = 0;
    for (size_t i = 0; i + 4 < got; i++)
        if (memcmp(head + i, "%PDF", 4) == 0) { has_magic = 1; break; }
    if (!has_magic)
        return ql_fail(QL_EFORMAT, "%s: not a PDF (no %%PDF header in the first 1 KiB): check the file type", path);

    ql_pdf *pdf = calloc(1, sizeof *pdf);
    if (!pdf) return ql_fail(QL_ENOMEM, "%s: out of memory", path);
    pdf->path = strdup(path);
    pdf->ctx = fz_new_context(NULL, NULL, FZ_STORE_DEFAULT);
    if (!pdf->ctx || !pdf->path) {
        ql_pdf_close(pdf);
        return ql_fail(QL_ENOMEM, "%s: cannot create a MuPDF context (out of memory)", path);
    }
    fz_context *ctx = pdf->ctx;
    /* MuPDF prints warnings about damaged files on stderr; keep them quiet. */
    fz_set_warning_callback(ctx, NULL, NULL);
    fz_set_error_callback(ctx, NULL, NULL);
    ql_status st = QL_OK;
    fz_try(ctx) {
        fz_register_document_handlers(ctx);
        pdf->doc = fz_open_document(ctx, path);
    }
    fz_catch(ctx) {
        st = fail_from_mupdf(QL_EFORMAT, path, ctx, "corrupt or unreadable PDF");
    }
    if (st == QL_OK && fz_needs_password(ctx, pdf->doc)) {
        volatile int ok = 0;
        fz_try(ctx) ok = fz_authenticate_password(ctx, pdf->doc, password ? password : "");
        fz_catch(ctx) ok = 0;
        if (!ok)
            st = ql_fail(QL_EINVAL, password && *password
                             ? "%s: encrypted PDF and the password given is wrong"
                             : "%s: encrypted PDF: pass the password (password=...)", path);
    }
    if (st == QL_OK) {
        fz_try(ctx) pdf->npages = fz_count_pages(ctx, pdf->doc);
        fz_catch(ctx) st = fail_from_mupdf(QL_EFORMAT, path, ctx, "corrupt PDF (cannot count pages)");
    }
    if (st == QL_OK && pdf->npages <= 0)
        st = ql_fail(QL_EFORMAT, "%s: corrupt or truncated PDF: no pages found (re-download or re-export the file)", path);
    if (st != QL_OK) { ql_pdf_close(pdf); return st; }
    *out = pdf;
    return QL_OK;
}

void ql_pdf_close(ql_pdf *pdf)
{
    if (!pdf) return;
    ql_alarm_stop(pdf->alarm);
    if (pdf->ctx) {
        fz_try(pdf->ctx) fz_drop_document(pdf->ctx, pdf->doc);
        fz_catch(pdf->ctx) {}
        fz_drop_context(pdf->ctx);
    }
    free(pdf->path);
    free(pdf);
}

const char *ql_pdf_path(const ql_pdf *pdf) { return pdf->path; }
int ql_pdf_page_count(ql_pdf *pdf) { return pdf->npages; }

int ql_pdf_repaired(ql_pdf *pdf)
{
    volatile int r = 0;
    fz_try(pdf->ctx) {
        pdf_document *pd = pdf_specifics(pdf->ctx, pdf->doc);
        r = pd ? pdf_was_repaired(pdf->ctx, pd) : 0;
    }
    fz_catch(pdf->ctx) r = 0;
    return r;
}

void ql_pdf_set_time_limit(ql_pdf *pdf, double seconds)
{
    ql_alarm_stop(pdf->alarm);
    pdf->alarm = NULL;
    pdf->limit = seconds;
    pdf->deadline = seconds > 0 ? ql_now() + seconds : 0;
    if (seconds > 0) pdf->alarm = ql_alarm_start(seconds, &pdf->cookie.abort);
}

int ql_pdf_timed_out(ql_pdf *pdf)
{
    /* the alarm thread stores the flag atomically; MuPDF reads it in its loops */
    if (__atomic_load_n(&pdf->cookie.abort, __ATOMIC_RELAXED)) return 1;
    if (pdf->deadline > 0 && ql_now() >= pdf->deadline) {
        __atomic_store_n(&pdf->cookie.abort, 1, __ATOMIC_RELAXED);
        return 1;
    }
    return 0;
}

static ql_status fail_timeout(ql_pdf *pdf, int page)
{
    return ql_fail(QL_ETIMEOUT, "%s: stopped at page %d of %d: the time limit of %g s was reached "
                   "(a slow or pathological file; raise timeout= or convert it alone)",
                   pdf->path, page + 1, pdf->npages, pdf->limit);
}

ql_status ql_pdf_metadata(ql_pdf *pdf, const char *key, char *buf, size_t size)
{
    static const struct { const char *k, *m; } keys[] = {
        {"title", FZ_META_INFO_TITLE}, {"author", FZ_META_INFO_AUTHOR},
        {"subject", FZ_META_INFO_SUBJECT}, {"keywords", FZ_META_INFO_KEYWORDS},
        {"creator", FZ_META_INFO_CREATOR}, {"producer", FZ_META_INFO_PRODUCER},
        {"creationDate", FZ_META_INFO_CREATIONDATE}, {"modDate", FZ_META_INFO_MODIFICATIONDATE},
        {"format", FZ_META_FORMAT}, {"encryption", FZ_META_ENCRYPTION},
    };
    if (size == 0) return ql_fail(QL_EINVAL, "ql_pdf_metadata: empty buffer");
    buf[0] = 0;
    const char *mk = NULL;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i].k, key) == 0) mk = keys[i].m;
    if (!mk) return ql_fail(QL_EINVAL, "%s: unknown metadata key '%s' (use title, author, subject, "
                            "keywords, creator, producer, creationDate, modDate, format, encryption)",
                            pdf->path, key);
    int n = -1;
    fz_try(pdf->ctx) n = fz_lookup_metadata(pdf->ctx, pdf->doc, mk, buf, (int)(size > 1 << 30 ? 1 << 30 : size));
    fz_catch(pdf->ctx) n = -1;
    if (n < 0) buf[0] = 0;
    return QL_OK;
}

/* ---------------------------------------------------------------- outline */
typedef struct { ql_pdf_outline_item *v; int n, cap; int oom; } outline_vec;

static int page_of(ql_pdf *pdf, fz_location loc)
{
    volatile int page = -1;
    fz_try(pdf->ctx) page = fz_page_number_from_location(pdf->ctx, pdf->doc, loc);
    fz_catch(pdf->ctx) page = -1;
    return page;
}

static void outline_walk(ql_pdf *pdf, fz_outline *o, int level, outline_vec *vec)
{
    for (; o; o = o->next) {
        if (vec->n == vec->cap) {
            int cap = vec->cap ? vec->cap * 2 : 32;
            void *p = realloc(vec->v, (size_t)cap * sizeof *vec->v);
            if (!p) { vec->oom = 1; return; }
            vec->v = p; vec->cap = cap;
        }
        ql_pdf_outline_item *it = &vec->v[vec->n++];
        it->level = level;
        it->title = strdup(o->title ? o->title : "");
        it->y = o->y;
        it->page = page_of(pdf, o->page);
        if (!it->title) vec->oom = 1;
        if (o->down && level < 64) outline_walk(pdf, o->down, level + 1, vec);
    }
}

ql_status ql_pdf_outline(ql_pdf *pdf, ql_pdf_outline_item **items, int *n)
{
    *items = NULL; *n = 0;
    fz_outline *volatile root = NULL;
    fz_try(pdf->ctx) root = fz_load_outline(pdf->ctx, pdf->doc);
    fz_catch(pdf->ctx) root = NULL;   /* a broken outline is treated as none */
    outline_vec vec = {0};
    outline_walk(pdf, root, 1, &vec);
    fz_drop_outline(pdf->ctx, root);
    if (vec.oom) {
        ql_pdf_outline_free(vec.v, vec.n);
        return ql_fail(QL_ENOMEM, "%s: out of memory reading the outline", pdf->path);
    }
    *items = vec.v; *n = vec.n;
    return QL_OK;
}

void ql_pdf_outline_free(ql_pdf_outline_item *items, int n)
{
    for (int i = 0; i < n; i++) free(items[i].title);
    free(items);
}

/* ---------------------------------------------------------------- rules device */
typedef struct {
    fz_device super;
    ql_pdf_rule *v;
    int n, cap, oom;
    int nimages;
} rule_device;

static void rules_add(rule_device *d, int kind, fz_rect r)
{
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        void *p = realloc(d->v, (size_t)cap * sizeof *d->v);
        if (!p) { d->oom = 1; return; }
        d->v = p; d->cap = cap;
    }
    d->v[d->n++] = (ql_pdf_rule){kind, r.x0, r.y0, r.x1, r.y1};
}

static void rules_classify(rule_device *d, fz_rect r, int stroked)
{
    float w = r.x1 - r.x0, h = r.y1 - r.y0;
    if (h <= 2.5f && w >= 8) rules_add(d, QL_PDF_RULE_H, r);
    else if (w <= 2.5f && h >= 8) rules_add(d, QL_PDF_RULE_V, r);
    else if (w >= 1.5f && h >= 1.5f && w <= 8 && h <= 8 && w < 1.7f * h && h < 1.7f * w)
        rules_add(d, QL_PDF_DOT, r);
    else if (stroked && w > 8 && h > 8) {   /* a box: keep its four edges */
        rules_add(d, QL_PDF_RULE_H, (fz_rect){r.x0, r.y0, r.x1, r.y0});
        rules_add(d, QL_PDF_RULE_H, (fz_rect){r.x0, r.y1, r.x1, r.y1});
        rules_add(d, QL_PDF_RULE_V, (fz_rect){r.x0, r.y0, r.x0, r.y1});
        rules_add(d, QL_PDF_RULE_V, (fz_rect){r.x1, r.y0, r.x1, r.y1});
    }
}

static void rules_fill_path(fz_context *ctx, fz_device *dev, const fz_path *path, int even_odd,
                            fz_matrix ctm, fz_colorspace *cs, const float *color, float alpha,
                            fz_color_params cp)
{
    (void)even_odd; (void)cs; (void)color; (void)cp;
    if (alpha <= 0.05f) return;
    rules_classify((rule_device *)dev, fz_bound_path(ctx, path, NULL, ctm), 0);
}

static void rules_stroke_path(fz_context *ctx, fz_device *dev, const fz_path *path,
                              const fz_stroke_state *ss, fz_matrix ctm, fz_colorspace *cs,
                              const float *color, float alpha, fz_color_params cp)
{
    (void)cs; (void)color; (void)cp;
    if (alpha <= 0.05f) return;
    /* a straight stroked line: its stroked bound counts the miter limit (a 0.8pt
       rule gets 16pt tall); take the line and half the line width instead */
    fz_rect r = fz_bound_path(ctx, path, NULL, ctm);
    if (ss && (r.x1 - r.x0 < 0.01f || r.y1 - r.y0 < 0.01f)) {
        float hw = 0.5f * ss->linewidth * fz_matrix_expansion(ctm);
        r.x0 -= hw; r.y0 -= hw; r.x1 += hw; r.y1 += hw;
    } else r = fz_bound_path(ctx, path, ss, ctm);
    rules_classify((rule_device *)dev, r, 1);
}

static void rules_fill_image(fz_context *ctx, fz_device *dev, fz_image *img, fz_matrix ctm,
                             float alpha, fz_color_params cp)
{
    (void)ctx; (void)img; (void)alpha; (void)cp;
    fz_rect r = fz_transform_rect(fz_unit_rect, ctm);
    if (r.x1 - r.x0 > 16 && r.y1 - r.y0 > 16) ((rule_device *)dev)->nimages++;
    else rules_classify((rule_device *)dev, r, 0);   /* tiny images used as bullets */
}

/* ---------------------------------------------------------------- page text */
typedef struct { fz_font *font; unsigned flags; const char *name; } font_flags;

static int has_ci(const char *s, const char *sub)
{
    size_t n = strlen(sub);
    for (; *s; s++)
        if (strncasecmp(s, sub, n) == 0) return 1;
    return 0;
}

static unsigned flags_of_font(fz_context *ctx, fz_font *font, const char **name_out)
{
    const char *name = fz_font_name(ctx, font);
    if (!name) name = "";
    const char *plus = strchr(name, '+');
    if (plus && plus - name == 6) name = plus + 1;
    *name_out = name;
    unsigned f = 0;
    if (fz_font_is_bold(ctx, font) || has_ci(name, "bold") || has_ci(name, "black") ||
        has_ci(name, "heavy") || has_ci(name, "semibold") || has_ci(name, "demi") ||
        strncmp(name, "CMBX", 4) == 0 || strncmp(name, "CMB", 3) == 0 || strstr(name, "-B") == name + strlen(name) - 2)
        f |= QL_PDF_BOLD;
    if (fz_font_is_italic(ctx, font) || has_ci(name, "italic") || has_ci(name, "oblique") ||
        strncmp(name, "CMTI", 4) == 0 || strncmp(name, "CMSL", 4) == 0 || strstr(name, "-I") == name + strlen(name) - 2)
        f |= QL_PDF_ITALIC;
    if (fz_font_is_monospaced(ctx, font) || has_ci(name, "mono") || has_ci(name, "courier") ||
        strncmp(name, "CMTT", 4) == 0 || has_ci(name, "typewriter") || has_ci(name, "consol") ||
        has_ci(name, "code"))
        f |= QL_PDF_MONO;
    if (fz_font_is_serif(ctx, font)) f |= QL_PDF_SERIF;
    return f;
}

typedef struct {
    char *buf; size_t n, cap;
} sbuf;

static int sbuf_putc8(sbuf *b, int c)
{
    if (b->n + 8 > b->cap) {
        if (b->cap > SIZE_MAX / 4) return -1;   /* checked growth, never a wrap-around */
        size_t cap = b->cap ? b->cap * 2 : 256;
        char *p = realloc(b->buf, cap);
        if (!p) return -1;
        b->buf = p; b->cap = cap;
    }
    b->n += (size_t)fz_runetochar(b->buf + b->n, c);
    return 0;
}

typedef struct {
    ql_pdf_span *v; int n, cap;
} span_vec;

static void line_mark_super(ql_pdf_line *ln, const float *base)
{
    /* dominant size: that of the span with the most text */
    size_t best = 0; float dom = 0;
    for (int i = 0; i < ln->nspans; i++) {
        size_t l = strlen(ln->spans[i].text);
        if (l > best) { best = l; dom = ln->spans[i].size; }
    }
    if (ln->nspans < 2) return;
    float mainbase = ln->baseline;
    for (int i = 0; i < ln->nspans; i++)
        if (ln->spans[i].size == dom) { mainbase = base[i]; break; }
    for (int i = 0; i < ln->nspans; i++) {
        ql_pdf_span *s = &ln->spans[i];
        if (s->size < 0.85f * dom && base[i] < mainbase - 0.15f * dom && strlen(s->text) <= 4)
            s->flags |= QL_PDF_SUPER;
    }
}

/* A character that stands for no text: what a font without a Unicode map
   (ToUnicode) gives: control codes, private use, the replacement character. */
static int no_unicode(int c)
{
    return (c >= 0 && c < 0x20) || (c >= 0x7F && c < 0xA0) || (c >= 0xE000 && c <= 0xF8FF) ||
           c == 0xFFFD || c >= 0xF0000;
}

static ql_status build_page(fz_context *ctx, fz_stext_page *tp, ql_pdf_page *pg)
{
    /* count lines */
    int nlines = 0;
    for (fz_stext_block *b = tp->first_block; b; b = b->next)
        if (b->type == FZ_STEXT_BLOCK_TEXT)
            for (fz_stext_line *l = b->u.t.first_line; l; l = l->next) nlines++;
        else pg->nimages++;
    pg->lines = arena_alloc(&pg->arena, (size_t)(nlines ? nlines : 1) * sizeof *pg->lines);
    if (!pg->lines) return QL_ENOMEM;

    font_flags cache[32]; int ncache = 0, cache_next = 0;
    sbuf text = {0};
    span_vec spans = {0};
    float *bases = NULL; int bases_cap = 0;
    ql_status st = QL_OK;
    int bi = 0;
    for (fz_stext_block *b = tp->first_block; b && st == QL_OK; b = b->next, bi++) {
        if (b->type != FZ_STEXT_BLOCK_TEXT) continue;
        for (fz_stext_line *l = b->u.t.first_line; l && st == QL_OK; l = l->next) {
            if (fabsf(l->dir.y) > 0.3f) continue;   /* skip rotated/vertical text */
            spans.n = 0; text.n = 0;
            size_t *starts = NULL;
            int nstarts = 0;
            float lastx1 = -1e9f, cur_size = -1;
            unsigned cur_flags = ~0u; fz_font *cur_font = NULL;
            const char *cur_name = "";
            float first_base = 0; int have_base = 0;
            for (fz_stext_char *ch = l->first_char; ch; ch = ch->next) {
                int is_space = ch->c == ' ' || ch->c == 0xA0 || ch->c == '\t';
                fz_rect qr = fz_rect_from_quad(ch->quad);
                if (!have_base) { first_base = ch->origin.y; have_base = 1; }
                unsigned fl = cur_flags; const char *fname = cur_name;
                if (!is_space) {
                    int k;
                    for (k = 0; k < ncache; k++) if (cache[k].font == ch->font) break;
                    if (k == ncache) {
                        k = ncache < 32 ? ncache++ : (cache_next++ % 32);
                        cache[k].font = ch->font;
                        cache[k].flags = flags_of_font(ctx, ch->font, &cache[k].name);
                    }
                    fl = cache[k].flags; fname = cache[k].name;
                    if (pg->nchars < 0x7fffffff) pg->nchars++;
                    if (no_unicode(ch->c) && pg->nunmapped < 0x7fffffff) pg->nunmapped++;
                }
                int gap = !is_space && lastx1 > -1e8f && qr.x0 - lastx1 > 0.9f * ch->size;
                int newspan = spans.n == 0 || gap ||
                              (!is_space && (fl != cur_flags || fabsf(ch->size - cur_size) > 0.2f ||
                                             ch->font != cur_font));
                if (newspan) {
                    /* a trailing space belongs to no span */
                    if (spans.n > 0) {
                        size_t s0 = starts[spans.n - 1];
                        while (text.n > s0 && text.buf[text.n - 1] == ' ') text.n--;
                    }
                    if (spans.n == spans.cap) {
                        int cap = spans.cap ? spans.cap * 2 : 8;
                        void *p = realloc(spans.v, (size_t)cap * sizeof *spans.v);
                        if (!p) { st = QL_ENOMEM; break; }
                        spans.v = p; spans.cap = cap;
                    }
                    if (spans.n >= nstarts) {
                        int cap = nstarts ? nstarts * 2 : 8;
                        void *p = realloc(starts, (size_t)cap * sizeof *starts);
                        void *q = realloc(bases, (size_t)cap * sizeof *bases);
                        if (q) { bases = q; bases_cap = cap; }
                        if (!p || !q) { if (p) starts = p; st = QL_ENOMEM; break; }
                        starts = p; nstarts = cap;
                    }
                    (void)bases_cap;
                    if (is_space && !gap) { /* leading space of a span: drop it */
                        continue;
                    }
                    ql_pdf_span *s = &spans.v[spans.n];
                    memset(s, 0, sizeof *s);
                    s->size = ch->size;
                    s->flags = fl | (gap ? QL_PDF_GAP : 0);
                    s->font = fname;
                    s->color = (uint32_t)ch->color & 0xffffff;
                    s->x0 = qr.x0; s->y0 = qr.y0; s->x1 = qr.x1; s->y1 = qr.y1;
                    bases[spans.n] = ch->origin.y;
                    starts[spans.n] = text.n;
                    spans.n++;
                    cur_flags = fl; cur_size = ch->size; cur_font = ch->font; cur_name = fname;
                    if (is_space) continue;
                }
                ql_pdf_span *s = &spans.v[spans.n - 1];
                if (is_space) {
                    if (text.n > starts[spans.n - 1] && text.buf[text.n - 1] != ' ')
                        if (sbuf_putc8(&text, ' ')) { st = QL_ENOMEM; break; }
                    continue;
                }
                int c = ch->c;
                if (c == 0xAD) c = '-';   /* soft hyphen shown at a line end */
                if (sbuf_putc8(&text, c)) { st = QL_ENOMEM; break; }
                if (qr.x0 < s->x0) s->x0 = qr.x0;
                if (qr.y0 < s->y0) s->y0 = qr.y0;
                if (qr.x1 > s->x1) s->x1 = qr.x1;
                if (qr.y1 > s->y1) s->y1 = qr.y1;
                lastx1 = qr.x1;
            }
            if (st == QL_OK && spans.n > 0) {
                size_t s0 = starts[spans.n - 1];
                while (text.n > s0 && text.buf[text.n - 1] == ' ') text.n--;
            }
            if (st == QL_OK && spans.n > 0) {
                ql_pdf_line *ln = &pg->lines[pg->nlines];
                ln->spans = arena_alloc(&pg->arena, (size_t)spans.n * sizeof *ln->spans);
                if (!ln->spans) st = QL_ENOMEM;
                int k = 0;
                for (int i = 0; i < spans.n && st == QL_OK; i++) {
                    size_t a = starts[i], e = i + 1 < spans.n ? starts[i + 1] : text.n;
                    while (e > a && text.buf[e - 1] == ' ') e--;
                    if (e == a) continue;
                    ln->spans[k] = spans.v[i];
                    ln->spans[k].text = arena_strndup(&pg->arena, text.buf + a, e - a);
                    if (!ln->spans[k].text) { st = QL_ENOMEM; break; }
                    bases[k] = bases[i];
                    k++;
                }
                if (st == QL_OK && k > 0) {
                    ln->nspans = k;
                    ln->x0 = ln->spans[0].x0; ln->x1 = ln->spans[0].x1;
                    ln->y0 = ln->spans[0].y0; ln->y1 = ln->spans[0].y1;
                    for (int i = 1; i < k; i++) {
                        ql_pdf_span *s = &ln->spans[i];
                        if (s->x0 < ln->x0) ln->x0 = s->x0;
                        if (s->x1 > ln->x1) ln->x1 = s->x1;
                        if (s->y0 < ln->y0) ln->y0 = s->y0;
                        if (s->y1 > ln->y1) ln->y1 = s->y1;
                    }
                    ln->baseline = first_base;
                    ln->block = bi;
                    line_mark_super(ln, bases);
                    /* baseline of the main text, not of a leading superscript */
                    for (int i = 0; i < k; i++)
                        if (!(ln->spans[i].flags & QL_PDF_SUPER)) { ln->baseline = bases[i]; break; }
                    pg->nlines++;
                }
            }
            free(starts);
        }
    }
    free(text.buf);
    free(spans.v);
    free(bases);
    return st;
}

ql_status ql_pdf_page_load(ql_pdf *pdf, int number, ql_pdf_page **out)
{
    *out = NULL;
    if (number < 0 || number >= pdf->npages)
        return ql_fail(QL_EINVAL, "%s: page %d out of range (the document has %d pages)",
                       pdf->path, number + 1, pdf->npages);
    if (ql_pdf_timed_out(pdf)) return fail_timeout(pdf, number);
    fz_context *ctx = pdf->ctx;
    ql_pdf_page *pg = calloc(1, sizeof *pg);
    if (!pg) return ql_fail(QL_ENOMEM, "%s: out of memory", pdf->path);
    pg->number = number;
    fz_cookie *cookie = &pdf->cookie;
    int errors0 = cookie->errors;
    fz_device *ldev = NULL;
    fz_page *page = NULL;
    fz_display_list *list = NULL;
    fz_stext_page *tp = NULL;
    fz_device *dev = NULL;
    rule_device *rdev = NULL;
    ql_status st = QL_OK;
    fz_var(page); fz_var(list); fz_var(tp); fz_var(dev); fz_var(rdev); fz_var(ldev);
    fz_try(ctx) {
        page = fz_load_page(ctx, pdf->doc, number);
        fz_rect mb = fz_bound_page(ctx, page);
        pg->width = mb.x1 - mb.x0; pg->height = mb.y1 - mb.y0;
        /* the page's content runs once, into a display list, under the cookie:
           MuPDF polls its abort flag (the time limit) and counts errors there */
        list = fz_new_display_list(ctx, mb);
        ldev = fz_new_list_device(ctx, list);
        fz_run_page(ctx, page, ldev, fz_identity, cookie);
        fz_close_device(ctx, ldev);
        fz_drop_device(ctx, ldev); ldev = NULL;
        fz_stext_options opts = {0};
        opts.flags = FZ_STEXT_MEDIABOX_CLIP;
        tp = fz_new_stext_page(ctx, mb);
        dev = fz_new_stext_device(ctx, tp, &opts);
        fz_run_display_list(ctx, list, dev, fz_identity, fz_infinite_rect, cookie);
        fz_close_device(ctx, dev);
        fz_drop_device(ctx, dev); dev = NULL;
        rdev = fz_new_derived_device(ctx, rule_device);
        rdev->super.fill_path = rules_fill_path;
        rdev->super.stroke_path = rules_stroke_path;
        rdev->super.fill_image = rules_fill_image;
        fz_run_display_list(ctx, list, &rdev->super, fz_identity, mb, cookie);
        fz_close_device(ctx, &rdev->super);
    }
    fz_catch(ctx) {
        if (!ql_pdf_timed_out(pdf))
            st = ql_fail(QL_EFORMAT, "%s: page %d is damaged: %s", pdf->path, number + 1, fz_caught_message(ctx));
    }
    if (ql_pdf_timed_out(pdf)) st = fail_timeout(pdf, number);
    pg->errors = cookie->errors - errors0;
    if (st == QL_OK) {
        st = build_page(ctx, tp, pg);
        if (st == QL_ENOMEM) ql_fail(st, "%s: out of memory reading page %d", pdf->path, number + 1);
    }
    if (st == QL_OK && rdev && !rdev->oom) {
        pg->nimages += rdev->nimages;
        if (rdev->n) {
            pg->rules = arena_alloc(&pg->arena, (size_t)rdev->n * sizeof *pg->rules);
            if (pg->rules) { memcpy(pg->rules, rdev->v, (size_t)rdev->n * sizeof *pg->rules); pg->nrules = rdev->n; }
        }
    }
    if (rdev) { free(rdev->v); fz_drop_device(ctx, &rdev->super); }
    if (dev) fz_drop_device(ctx, dev);
    if (ldev) fz_drop_device(ctx, ldev);
    fz_drop_stext_page(ctx, tp);
    fz_drop_display_list(ctx, list);
    fz_drop_page(ctx, page);
    if (st != QL_OK) { ql_pdf_page_free(pg); return st; }
    *out = pg;
    return QL_OK;
}

void ql_pdf_page_free(ql_pdf_page *page)
{
    if (!page) return;
    arena_free(page->arena);
    free(page);
}
