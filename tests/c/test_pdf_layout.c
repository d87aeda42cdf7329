/*
 * test_pdf_layout.c — what real books and manuals do to PDF → Markdown
 * (issue 9), on PDFs made by a real producer (groff -ms -Tpdf) from the
 * sources in tests/pdf/src (tests/pdf/make_fixtures.sh):
 *   heads.ms.pdf   running heads and footers: "Chapter N: Title" with the page
 *                  number on odd pages, the book's title (also on page 1) on
 *                  even ones, roman front matter, "N / M" footers;
 *   layout.ms.pdf  numbered headings (.NH "1. Loops"; "A.1   Installing" with
 *                  its number apart), code whose style changes inside a word,
 *                  a table of contents with dot leaders.
 */
#include "qltest.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "pdf.h"

static char *md_of(const char *name, ql_pdf_md_stats *st)
{
    ql_pdf_md_opts o;
    ql_pdf_md_opts_default(&o);
    char *md = NULL; size_t n = 0;
    ql_status s = ql_pdf_to_markdown(qltest_fixture(name), &o, &md, &n, st);
    CHECK_MSG(s == QL_OK, "%s: %s", name, ql_last_error());
    return md;
}

static int count(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) c++;
    return c;
}

/* a line that is only a page number: "7", "iii", "7 / 12" */
static int lone_numbers(const char *md)
{
    int n = 0;
    for (const char *p = md; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int only = len > 0;
        for (size_t k = 0; k < len && only; k++)
            only = isdigit((unsigned char)p[k]) || strchr("ivx /", p[k]);
        n += only;
        p += len + (e != NULL);
    }
    return n;
}

QL_TEST(pdf_running_heads_of_a_book)
{
    ql_pdf_md_stats st;
    char *md = md_of("pdf/heads.ms.pdf", &st);
    if (!md) return;
    /* the title stays, once, although later pages run it as their head */
    CHECK_MSG(strncmp(md, "# The Handbook of Quiet Machines\n", 33) == 0, "%.80s", md);
    CHECK_EQ_INT(count(md, "The Handbook of Quiet Machines"), 1);
    /* chapter heads with their page numbers, on some pages of each chapter only */
    CHECK_EQ_INT(count(md, "Chapter "), 0);
    /* "N / 12" footers, roman and arabic, and lone page numbers */
    CHECK_EQ_INT(count(md, " / 12"), 0);
    CHECK_EQ_INT(lone_numbers(md), 0);
    /* the chapters' own headings stay */
    CHECK(strstr(md, "\n# 2. Wheels and Axles\n") != NULL || strstr(md, "\n## 2. Wheels and Axles\n") != NULL);
    CHECK_EQ_INT(count(md, "Wheels and Axles"), 1);
    CHECK(st.furniture_lines >= 15 + 12);   /* 15 footers, 12 heads (none on the title page and on chapters' first pages) */
    free(md);
}

QL_TEST(pdf_layout_of_manuals)
{
    char *md = md_of("pdf/layout.ms.pdf", NULL);
    if (!md) return;
    /* numbered headings, not list items nor two-cell tables */
    CHECK(strstr(md, "\n## 1. Loops\n") != NULL);
    CHECK(strstr(md, "\n### 1.1. Nested loops\n") != NULL);
    CHECK(strstr(md, "\n## 2. Conditionals\n") != NULL);
    CHECK(strstr(md, "\n## A.1 Installing\n") != NULL);
    CHECK(strstr(md, "\n## A.1.1 From sources\n") != NULL);
    /* code: spaces where the glyphs stand apart, none where a style changes */
    CHECK(strstr(md, "\nuntil test-commands; do consequent-commands; done\n") != NULL);
    CHECK(strstr(md, "\nwhile test-commands; do consequent-commands; done\n") != NULL);
    /* the table of contents: a nested list without leaders or page numbers */
    CHECK(strstr(md, "\n- 1\\. Loops\n  - 1.1. Nested loops\n- 2\\. Conditionals\n  - 2.1. Case statements\n") != NULL);
    CHECK(strstr(md, ". . .") == NULL);
    CHECK(strchr(md, '|') == NULL);
    free(md);
}
