/*
 * pdf.h — PDF reading on MuPDF: open (with password), page count, metadata,
 * outline, and per-page structured text (lines of styled spans with boxes,
 * plus the vector rules and bullet dots a page draws). pdf_md.c turns the
 * pages into Markdown.
 *
 * Coordinates are PDF points with y growing downwards (MuPDF's convention).
 * A ql_pdf owns its own fz_context, so different documents may be used from
 * different threads at once; one document must not be shared between threads.
 * Every MuPDF error is caught and turned into ql_fail() with the file name.
 */
#ifndef QL_PDF_H
#define QL_PDF_H

#include "ql.h"

typedef struct ql_pdf ql_pdf;

enum {
    QL_PDF_BOLD   = 1,
    QL_PDF_ITALIC = 2,
    QL_PDF_MONO   = 4,
    QL_PDF_SERIF  = 8,
    QL_PDF_SUPER  = 16,  /* raised and smaller than the line: a footnote mark */
    QL_PDF_GAP    = 32   /* a wide gap precedes this span (table cell, tab stop) */
};

typedef struct ql_pdf_span {
    const char *text;    /* UTF-8, NUL-terminated */
    const char *font;    /* font name as in the PDF, subset prefix removed */
    float size;          /* font size in points */
    unsigned flags;      /* QL_PDF_* */
    uint32_t color;      /* 0xRRGGBB */
    float x0, y0, x1, y1;
} ql_pdf_span;

typedef struct ql_pdf_line {
    float x0, y0, x1, y1;
    float baseline;      /* y of the first character's origin */
    int block;           /* index of MuPDF's block on the page */
    int nspans;
    ql_pdf_span *spans;
} ql_pdf_line;

/* A horizontal or vertical rule (thin filled rect or stroked line), or a small
   filled shape that can be a list bullet drawn as graphics. */
enum { QL_PDF_RULE_H = 0, QL_PDF_RULE_V = 1, QL_PDF_DOT = 2 };
typedef struct ql_pdf_rule {
    int kind;
    float x0, y0, x1, y1;
} ql_pdf_rule;

typedef struct ql_pdf_page {
    int number;          /* 0-based */
    float width, height;
    int nlines;
    ql_pdf_line *lines;
    int nrules;
    ql_pdf_rule *rules;
    int nchars;          /* non-space characters on the page */
    int nunmapped;       /* of those, characters with no Unicode meaning: controls,
                            private use, U+FFFD (fonts without a ToUnicode map) */
    int errors;          /* errors MuPDF met (and skipped) running the page */
    int nimages;         /* images drawn on the page */
    struct ql_pdf_arena *arena;
} ql_pdf_page;

typedef struct ql_pdf_outline_item {
    int level;           /* 1 for top-level entries */
    int page;            /* 0-based, -1 when it points nowhere in the file */
    float y;             /* target y on the page, or -1 */
    char *title;
} ql_pdf_outline_item;

/* Opens path; password may be NULL. Encrypted files without the right password,
   corrupt files and missing files fail with a message naming path. */
ql_status ql_pdf_open(ql_pdf **out, const char *path, const char *password);
void ql_pdf_close(ql_pdf *pdf);
const char *ql_pdf_path(const ql_pdf *pdf);
int ql_pdf_page_count(ql_pdf *pdf);
/* 1 when MuPDF had to rebuild the file's cross-reference table (a damaged or
   truncated file); may turn true only after pages are loaded. */
int ql_pdf_repaired(ql_pdf *pdf);

/* A time limit on everything done with pdf from now on (seconds; <= 0 lifts
   it). Past it, MuPDF's own loops stop (the abort flag of its cookie, set by
   an alarm thread), ql_pdf_timed_out turns 1, and page loads fail with
   QL_ETIMEOUT. Callers' own loops poll ql_pdf_timed_out (it also reads the
   clock, so the limit holds even before the alarm thread runs). */
void ql_pdf_set_time_limit(ql_pdf *pdf, double seconds);
int ql_pdf_timed_out(ql_pdf *pdf);
/* key: "title", "author", "subject", "keywords", "creator", "producer",
   "format", "encryption", "creationDate", "modDate". Writes "" when absent. */
ql_status ql_pdf_metadata(ql_pdf *pdf, const char *key, char *buf, size_t size);

/* The outline flattened in document order; *items is malloc'd, free it with
   ql_pdf_outline_free. An outline-less document gives n == 0. */
ql_status ql_pdf_outline(ql_pdf *pdf, ql_pdf_outline_item **items, int *n);
void ql_pdf_outline_free(ql_pdf_outline_item *items, int n);

/* Structured text of page number (0-based). Free with ql_pdf_page_free. */
ql_status ql_pdf_page_load(ql_pdf *pdf, int number, ql_pdf_page **out);
void ql_pdf_page_free(ql_pdf_page *page);

/* ---- Markdown (pdf_md.c) ---- */
typedef struct ql_pdf_md_opts {
    int page_markers;     /* emit "<!-- page N -->" before each page's content */
    int use_outline;      /* use the outline for headings when present (default 1) */
    int keep_furniture;   /* keep running headers/footers/page numbers */
    int inline_styles;    /* **bold**, *italic*, `code` inside paragraphs (default 1) */
    const char *password;
    double timeout;       /* seconds for the whole file, 0: none; past it the
                             conversion stops with QL_ETIMEOUT */
} ql_pdf_md_opts;

void ql_pdf_md_opts_default(ql_pdf_md_opts *o);

typedef struct ql_pdf_md_stats {
    int pages;
    int chars;
    int headings;
    int furniture_lines;  /* lines dropped as running headers/footers/page numbers */
    /* damage, for the user to hear about (the Markdown is still written) */
    int unmapped_pages;   /* pages whose text is mostly characters without a
                             Unicode mapping: garbage, needs OCR */
    int first_unmapped;   /* 0-based page of the first such page, -1 if none */
    int damaged_pages;    /* pages that failed to load or ran with errors */
    int repaired;         /* the file was damaged and rebuilt by MuPDF */
    double seconds;
} ql_pdf_md_stats;

/* Converts a whole file; *md is malloc'd (free it). Scanned (text-less) PDFs
   fail with QL_EUNSUPPORTED and a message saying so; a file past
   opts->timeout with QL_ETIMEOUT. stats may be NULL. */
ql_status ql_pdf_to_markdown(const char *path, const ql_pdf_md_opts *opts,
                             char **md, size_t *len, ql_pdf_md_stats *stats);

#endif
