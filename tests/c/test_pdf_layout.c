/*
 * test_pdf_layout.c — what real books and manuals do to PDF → Markdown
 * (issue 9), on PDFs made by a real producer (groff -ms -Tpdf) from the
 * sources in tests/pdf/src (tests/pdf/make_fixtures.sh):
 *   heads.ms.pdf   running heads and footers: "Chapter N: Title" with the page
 *                  number on odd pages, the book's title (also on page 1) on
 *                  even ones, roman front matter, "N / M" footers;
 *   layout.ms.pdf  numbered headings (.NH "1. Loops"; "A.1   Installing" with
 *                  its number apart), code whose style changes inside a word,
 *                  a table of contents with dot leaders;
 *   outline.mom.pdf (groff -mom -Tpdf)  third-level headings in italics a
 *                  hair larger than the text, known only from the outline;
 * and by pdflatex from the LaTeX sources there:
 *   slides.beamer.pdf  a Beamer deck: "N / M" frame numbers in the title bar,
 *                  glyph bullets (triangles, bullets, circles) nested three
 *                  deep, overlays, sections named only in the navigation bar;
 *   paper.latex.pdf  a two-column article: authors side by side under the
 *                  title, words hyphenated at line ends across style changes,
 *                  a table across both columns floated to the top of page 2
 *                  (its middle column where the gutter runs below it) and a
 *                  table in a column with a footnote set under it.
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

QL_TEST(pdf_slide_deck)
{
    ql_pdf_md_stats st;
    char *md = md_of("pdf/slides.beamer.pdf", &st);
    if (!md) return;
    /* frame numbers leave the titles, which become headings below the
       sections of the outline (named on the slides only in the navigation bar) */
    CHECK_EQ_INT(count(md, " / 5"), 0);
    CHECK(strstr(md, "\n# Basics\n\n## About this tutorial\n") != NULL);
    CHECK(strstr(md, "\n# Practice\n\n## Oiling the axles\n") != NULL);
    CHECK_EQ_INT(count(md, "\n## Gears and belts\n"), 3);   /* one frame, three overlays */
    CHECK_EQ_INT(count(md, "Basics"), 1);
    /* glyph bullets become list items, nested by their x */
    CHECK(strstr(md, "\n- Machines that make no noise\n- Why quiet matters\n  - for sleep\n  - for work\n"
                     "    - even in open offices\n- What comes next\n") != NULL);
    CHECK(strstr(md, "\n- Use light oil\n  - never grease on fast axles\n- Wipe off what drips\n") != NULL);
    CHECK(strstr(md, "\xE2\x96\xB6") == NULL);   /* no triangle left */
    CHECK(strstr(md, "\n1. Quiet machines are kind machines\n2. Oil them\n") != NULL);
    free(md);
}

QL_TEST(pdf_title_block_side_by_side)
{
    char *md = md_of("pdf/paper.latex.pdf", NULL);
    if (!md) return;
    /* each author's stack kept together, in order, not interleaved line by line */
    CHECK(strstr(md, "# Quiet Gears in Loud Rooms\n\n"
                     "Ada Example Institute of Gears Hekla, Iceland ada@gears.example\n\n"
                     "Ben Sample Belt Works Dublin, Ohio, USA ben@belts.example\n\n"
                     "Cai Trial Oil Laboratories Doimukh, India cai@oil.example\n\n"
                     "Dee Probe University of Axles Haidian, China dee@axles.example\n\n"
                     "Eve Test The Quiet Group Rocquencourt, France eve@quiet.example\n\n") != NULL);
    const char *intro = strstr(md, "# 1 Introduction");
    CHECK(intro != NULL);
    CHECK(intro && memchr(md, '|', (size_t)(intro - md)) == NULL);
    CHECK(strstr(md, "# Eve") == NULL);
    free(md);
}

QL_TEST(pdf_hyphens_across_styles)
{
    char *md = md_of("pdf/paper.latex.pdf", NULL);
    if (!md) return;
    /* hyphens at line ends joined across style changes, as in plain text */
    CHECK(strstr(md, "Take for *example* a mill") != NULL);
    CHECK(strstr(md, "A heavy counter*weight* kept") != NULL);
    CHECK(strstr(md, "we call the **toothband** of a machine") != NULL);
    CHECK(strstr(md, "-*") == NULL && strstr(md, "-**") == NULL);
    free(md);
}

QL_TEST(pdf_mom_outline_headings)
{
    char *md = md_of("pdf/outline.mom.pdf", NULL);
    if (!md) return;
    CHECK(strstr(md, "\n### Gears\n") != NULL);
    CHECK(strstr(md, "\n#### Spur gears\n\nSpur gears are the loudest") != NULL);
    CHECK(strstr(md, "\n#### Worm gears\n") != NULL);
    CHECK(strstr(md, "\n#### Oiling the axles\n") != NULL);
    free(md);
}

QL_TEST(pdf_tables_in_two_columns)
{
    char *md = md_of("pdf/paper.latex.pdf", NULL);
    if (!md) return;
    /* a table across both columns: one table, all five columns, its rows in
       order, not split at the gutter into two tables nor its rows collapsed */
    CHECK(strstr(md, "\nTable 1: Rooms and what they did to the sound\n\n"
                     "| Room | Floor area | Echo | Loudest part | Advice |\n"
                     "| --- | --- | --- | --- | --- |\n"
                     "| Small | 12 square metres | short | gears | open a window |\n"
                     "| Middling | 40 square metres | medium | chains | hang a curtain |\n"
                     "| Large | 150 square metres | long | axles | oil the axles |\n\n") != NULL);
    CHECK_EQ_INT(count(md, "\n| --- "), 2);   /* two tables */
    /* the paragraph it floated into runs on before it, with its hyphen joined */
    CHECK(strstr(md, "A dry axle, by contrast, scrapes in its bearing") != NULL);
    /* a table in one column, its footnote right after it, not at the end */
    CHECK(strstr(md, "| Part | Dry | Oiled |\n| --- | --- | --- |\n"
                     "| Gear[^a] | 71 dB | 64 dB |\n| Axle | 58 dB | 49 dB |\n| Chain | 66 dB | 61 dB |\n\n"
                     "[^a]: Spur gears only; worm gears were not measured.\n\n") != NULL);
    CHECK_EQ_INT(count(md, "Spur gears only"), 1);
    free(md);
}
