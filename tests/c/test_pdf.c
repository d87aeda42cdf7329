/*
 * test_pdf.c — PDF extraction and PDF → Markdown on the committed fixtures
 * (tests/fixtures/pdf, made by tests/pdf/make_fixtures.sh from tests/pdf/src).
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>

#include "pdf.h"

static char *to_md(const char *name, int markers)
{
    ql_pdf_md_opts o;
    ql_pdf_md_opts_default(&o);
    o.page_markers = markers;
    char *md = NULL; size_t n = 0;
    ql_status s = ql_pdf_to_markdown(qltest_fixture(name), &o, &md, &n, NULL);
    CHECK_MSG(s == QL_OK, "%s: %s", name, ql_last_error());
    if (md) CHECK_EQ_INT(strlen(md), n);
    return md;
}

static int count(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) c++;
    return c;
}

QL_TEST(pdf_open_outline_metadata)
{
    ql_pdf *pdf = NULL;
    CHECK_OK(ql_pdf_open(&pdf, qltest_fixture("pdf/report.latex.pdf"), NULL));
    if (!pdf) return;
    CHECK_EQ_INT(ql_pdf_page_count(pdf), 3);
    char buf[256];
    CHECK_OK(ql_pdf_metadata(pdf, "format", buf, sizeof buf));
    CHECK_MSG(strncmp(buf, "PDF", 3) == 0, "format = '%s'", buf);
    CHECK(ql_pdf_metadata(pdf, "nonsense", buf, sizeof buf) == QL_EINVAL);
    ql_pdf_outline_item *ol; int n;
    CHECK_OK(ql_pdf_outline(pdf, &ol, &n));
    CHECK_EQ_INT(n, 9);
    if (n == 9) {
        CHECK(strcmp(ol[0].title, "Introduction") == 0 && ol[0].level == 1 && ol[0].page == 0);
        CHECK(strcmp(ol[3].title, "Hardware under test") == 0 && ol[3].level == 3);
    }
    ql_pdf_outline_free(ol, n);
    ql_pdf_page *pg = NULL;
    CHECK_OK(ql_pdf_page_load(pdf, 1, &pg));
    if (pg) {
        int mono = 0, bold = 0;
        for (int i = 0; i < pg->nlines; i++)
            for (int s = 0; s < pg->lines[i].nspans; s++) {
                const ql_pdf_span *sp = &pg->lines[i].spans[s];
                if (strcmp(sp->text, "Hardware under test") == 0 && (sp->flags & QL_PDF_BOLD)) bold = 1;
                if (sp->flags & QL_PDF_MONO) mono++;
                CHECK(sp->x1 >= sp->x0 && sp->y1 >= sp->y0 && sp->size > 0);
            }
        CHECK(bold);
        CHECK_EQ_INT(mono, 0);
        CHECK(pg->width > 600 && pg->width < 620);
    }
    ql_pdf_page_free(pg);
    CHECK(ql_pdf_page_load(pdf, 3, &pg) == QL_EINVAL);
    ql_pdf_close(pdf);
}

QL_TEST(pdf_markdown_latex)
{
    char *md = to_md("pdf/report.latex.pdf", 0);
    if (!md) return;
    CHECK(strstr(md, "# Introduction\n") == md);
    CHECK(strstr(md, "\n## Scope and goals\n") != NULL);
    CHECK(strstr(md, "\n### Hardware under test\n") != NULL);
    CHECK(strstr(md, "\n# Results\n") != NULL);
    CHECK(strstr(md, "\n1. Reset the machine") != NULL);
    CHECK(strstr(md, "\n  - one configured as a mirror\n") != NULL);
    CHECK(strstr(md, "```\nfor size in sizes:\n    start = clock()\n") != NULL);
    CHECK(strstr(md, "| Mirror server | 1840 | 920 | 5 |") != NULL);
    CHECK(strstr(md, "[^1]: The spread exceeded") != NULL);
    /* running header and page numbers are gone; the paragraph across the page
       break is one paragraph */
    CHECK_EQ_INT(count(md, "Evaluation Corpus Draft"), 0);
    CHECK(strstr(md, "\n2\n") == NULL && strstr(md, "\n3\n") == NULL);
    free(md);
}

QL_TEST(pdf_markdown_two_columns_and_hyphens)
{
    char *md = to_md("pdf/report.latex2.pdf", 0);
    if (!md) return;
    /* two-column order: the sections come in source order */
    const char *a = strstr(md, "# Introduction"), *b = strstr(md, "## Scope and goals"),
               *c = strstr(md, "# Results"), *d = strstr(md, "# Conclusions");
    CHECK(a && b && c && d && a < b && b < c && c < d);
    /* "compatibil-\nity" is joined */
    CHECK(strstr(md, "electromagnetic compatibility of the new rack") != NULL);
    CHECK(strstr(md, "compatibil-") == NULL);
    free(md);
}

QL_TEST(pdf_markdown_producers)
{
    static const char *files[] = {"pdf/guide.ms.pdf", "pdf/guide.odt.pdf", "pdf/guide.wk.pdf",
                                  "pdf/guide.latex.noout.pdf", "pdf/guide.latex2.noout.pdf"};
    for (int i = 0; i < 5; i++) {
        char *md = to_md(files[i], 1);
        if (!md) continue;
        CHECK_MSG(strstr(md, "# Getting started\n") != NULL, "%s", files[i]);
        CHECK_MSG(strstr(md, "\n## Installation\n") != NULL, "%s", files[i]);
        CHECK_MSG(strstr(md, "\n### Options that matter\n") != NULL, "%s", files[i]);
        CHECK_MSG(strstr(md, "| cycle detected | two steps depend on each other | split one of the steps |") != NULL,
                  "%s", files[i]);
        CHECK_MSG(strstr(md, "\n  - useful in continuous integration\n") != NULL, "%s", files[i]);
        CHECK_MSG(strstr(md, "<!-- page 1 -->") == md, "%s", files[i]);
        CHECK_MSG(strstr(md, "<!-- page 2 -->") != NULL, "%s", files[i]);
        free(md);
    }
}

QL_TEST(pdf_errors_are_clear)
{
    static const struct { const char *name; ql_status code; const char *says; } cases[] = {
        {"pdf/bad-encrypted.pdf", QL_EINVAL, "encrypted"},
        {"pdf/bad-notpdf.pdf", QL_EFORMAT, "not a PDF"},
        {"pdf/bad-truncated.pdf", QL_EFORMAT, "corrupt"},
        {"pdf/bad-scanned.pdf", QL_EUNSUPPORTED, "OCR"},
        {"pdf/does-not-exist.pdf", QL_EIO, "cannot open"},
    };
    for (int i = 0; i < 5; i++) {
        char *md = NULL; size_t n;
        ql_status s = ql_pdf_to_markdown(qltest_fixture(cases[i].name), NULL, &md, &n, NULL);
        CHECK_MSG(s == cases[i].code, "%s: status %s (%s)", cases[i].name, ql_status_name(s), ql_last_error());
        CHECK_MSG(strstr(ql_last_error(), cases[i].says) && strstr(ql_last_error(), cases[i].name),
                  "%s: message '%s'", cases[i].name, ql_last_error());
        CHECK(md == NULL);
    }
    /* the right password opens the encrypted file */
    ql_pdf_md_opts o; ql_pdf_md_opts_default(&o); o.password = "secret";
    char *md = NULL; size_t n;
    CHECK_OK(ql_pdf_to_markdown(qltest_fixture("pdf/bad-encrypted.pdf"), &o, &md, &n, NULL));
    CHECK(md && strstr(md, "# Getting started"));
    free(md);
}
