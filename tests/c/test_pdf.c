/*
 * test_pdf.c — PDF extraction and PDF → Markdown on the committed fixtures
 * (tests/fixtures/pdf, made by tests/pdf/make_fixtures.sh from tests/pdf/src),
 * the footnote hang of issue 9, per-file time limits and damage reports.
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pdf.h"
#include "platform.h"
#include "strbuf.h"

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

/* Issue 9: a footnote of more than 256 bytes over several rows. Joining its
   rows moved the buffer under a pointer kept into it; the next append got a
   length near 2^64 and the buffer's growth spun forever. The conversion runs
   in a child with an alarm, so a regression fails here instead of hanging. */
QL_TEST(pdf_footnote_over_256_bytes_converts_in_bounded_time)
{
    int fd[2];
    if (pipe(fd) != 0) { CHECK_MSG(0, "pipe failed"); return; }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) { close(fd[0]); close(fd[1]); CHECK_MSG(0, "fork failed"); return; }
    if (pid == 0) {
        close(fd[0]);
        alarm(60);
        char *md = NULL; size_t n = 0;
        ql_status s = ql_pdf_to_markdown(qltest_fixture("pdf/footnote-long.ms.pdf"), NULL, &md, &n, NULL);
        if (s != QL_OK) { const char *m = ql_last_error(); if (write(fd[1], m, strlen(m)) < 0) _exit(4); _exit(3); }
        for (size_t off = 0; off < n;) {
            ssize_t w = write(fd[1], md + off, n - off);
            if (w <= 0) _exit(4);
            off += (size_t)w;
        }
        _exit(0);
    }
    close(fd[1]);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (ssize_t r; buf && (r = read(fd[0], buf + n, cap - n)) > 0;) {
        n += (size_t)r;
        if (n == cap) { char *b = realloc(buf, 2 * cap + 1); if (!b) break; buf = b; cap *= 2; }
    }
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK_MSG(WIFEXITED(status), "the conversion did not finish within 60 s (signal %d)",
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (!buf) return;
    buf[n] = 0;
    if (WIFEXITED(status)) CHECK_MSG(WEXITSTATUS(status) == 0, "exit %d: %s", WEXITSTATUS(status), buf);
    /* the mark in the text, and the whole footnote, its rows joined, at the end */
    CHECK(strstr(buf, "at the bottom of the page.[^1] The paragraph goes on") != NULL);
    const char *f = strstr(buf, "\n[^1]: The footnote text goes on for a while, so that it wraps over more than two rows");
    CHECK_MSG(f != NULL, "footnote missing:\n%s", buf);
    if (f) {
        const char *end = strchr(f + 1, '\n');
        CHECK_MSG(end && end - f > 300, "footnote cut short: %.*s", end ? (int)(end - f) : 80, f);
        CHECK(strstr(f, "past two hundred and fifty six bytes once its rows are joined.\n") != NULL);
    }
    free(buf);
}

/* The growth of a string buffer is checked arithmetic: a length that cannot
   fit fails (oom) instead of wrapping around and spinning. */
QL_TEST(strbuf_growth_is_checked)
{
    ql_strbuf b = {0};
    ql_strbuf_add(&b, "abc", 3);
    CHECK(!b.oom && b.n == 3);
    volatile size_t huge = SIZE_MAX;   /* hidden from the compiler, which would warn about the constant */
    ql_strbuf_add(&b, "x", huge);
    CHECK(b.oom);
    CHECK(b.n == 3 && strcmp(b.p, "abc") == 0);
    ql_strbuf_add(&b, "d", 1);   /* a no-op once failed */
    CHECK(b.n == 3);
    free(b.p);
}

/* A per-file time limit: a file past it stops with QL_ETIMEOUT and a message
   naming it; nothing is returned. A generous limit changes nothing. */
QL_TEST(pdf_time_limit)
{
    ql_pdf_md_opts o;
    ql_pdf_md_opts_default(&o);
    o.timeout = 1e-6;
    const char *path = qltest_fixture("pdf/report.latex.pdf");
    char *md = NULL; size_t n = 0;
    double t0 = ql_now();
    ql_status s = ql_pdf_to_markdown(path, &o, &md, &n, NULL);
    CHECK_MSG(s == QL_ETIMEOUT, "status %s: %s", ql_status_name(s), ql_last_error());
    CHECK_MSG(strstr(ql_last_error(), path) && strstr(ql_last_error(), "time limit"), "message: %s", ql_last_error());
    CHECK(md == NULL);
    CHECK(ql_now() - t0 < 5);
    o.timeout = 60;
    CHECK_OK(ql_pdf_to_markdown(path, &o, &md, &n, NULL));
    CHECK(md && strstr(md, "# Introduction"));
    free(md);
    /* the page loader alone, under a limit that has passed */
    ql_pdf *pdf = NULL;
    CHECK_OK(ql_pdf_open(&pdf, path, NULL));
    if (!pdf) return;
    ql_pdf_set_time_limit(pdf, 1e-6);
    ql_pdf_page *pg = NULL;
    while (!ql_pdf_timed_out(pdf)) {}
    CHECK(ql_pdf_page_load(pdf, 0, &pg) == QL_ETIMEOUT && pg == NULL);
    ql_pdf_set_time_limit(pdf, 0);
    ql_pdf_close(pdf);
}

/* Damage is reported: text without a Unicode mapping, and a file MuPDF had to
   repair (the committed fixture without its cross-reference table). */
QL_TEST(pdf_damage_is_reported)
{
    ql_pdf_md_stats st;
    char *md = NULL; size_t n = 0;
    CHECK_OK(ql_pdf_to_markdown(qltest_fixture("pdf/bad-unmapped.pdf"), NULL, &md, &n, &st));
    CHECK_EQ_INT(st.unmapped_pages, 1);
    CHECK_EQ_INT(st.first_unmapped, 0);
    CHECK_EQ_INT(st.repaired, 0);
    free(md); md = NULL;
    CHECK_OK(ql_pdf_to_markdown(qltest_fixture("pdf/report.latex.pdf"), NULL, &md, &n, &st));
    CHECK_EQ_INT(st.unmapped_pages, 0);
    CHECK_EQ_INT(st.first_unmapped, -1);
    CHECK_EQ_INT(st.damaged_pages, 0);
    CHECK_EQ_INT(st.repaired, 0);
    free(md); md = NULL;
    /* cut the file before its xref table */
    FILE *fp = fopen(qltest_fixture("pdf/footnote-long.ms.pdf"), "rb");
    CHECK(fp != NULL);
    if (!fp) return;
    static char data[1 << 16];
    size_t got = fread(data, 1, sizeof data, fp);
    fclose(fp);
    size_t cut = 0;
    for (size_t i = 0; i + 5 < got; i++) if (memcmp(data + i, "\nxref", 5) == 0) cut = i + 1;
    CHECK(cut > 0);
    char tmp[] = "/tmp/qltest-repairedXXXXXX";
    int fd = mkstemp(tmp);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(write(fd, data, cut) == (ssize_t)cut);
    close(fd);
    CHECK_OK(ql_pdf_to_markdown(tmp, NULL, &md, &n, &st));
    CHECK_EQ_INT(st.repaired, 1);
    CHECK(md && strstr(md, "[^1]: The footnote text"));
    free(md);
    unlink(tmp);
}

/* The alarm behind the time limit (MuPDF's cookie is set from its thread). */
QL_TEST(alarm_sets_its_flag_once_due)
{
    int due = 0, early = 0;
    double t0 = ql_now();
    ql_alarm *a = ql_alarm_start(0.02, &due);
    CHECK(a != NULL);
    while (!__atomic_load_n(&due, __ATOMIC_RELAXED) && ql_now() - t0 < 10) {}
    CHECK(__atomic_load_n(&due, __ATOMIC_RELAXED) == 1);
    CHECK(ql_now() - t0 >= 0.019);
    ql_alarm_stop(a);
    t0 = ql_now();
    ql_alarm *b = ql_alarm_start(30, &early);
    ql_alarm_stop(b);              /* disarmed before it is due: returns at once */
    CHECK(__atomic_load_n(&early, __ATOMIC_RELAXED) == 0);
    CHECK(ql_now() - t0 < 5);
    ql_alarm_stop(NULL);
}
