/*
 * pdf_tool.c — command-line driver for the PDF engine, used by the evaluation
 * harness (tests/pdf) and the benchmark until the qlora host runs recipes.
 *   pdf_tool dump FILE            lines with spans, styles and boxes
 *   pdf_tool md FILE [OUT.md]     Markdown (page markers with -p)
 *   pdf_tool bench FILE...        pages/s on one thread
 * Built by ./setup.sh as bin/pdf_tool.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pdf.h"
#include "platform.h"

static int dump(const char *path)
{
    ql_pdf *pdf;
    if (ql_pdf_open(&pdf, path, NULL)) { fprintf(stderr, "%s\n", ql_last_error()); return 1; }
    ql_pdf_outline_item *ol; int nol;
    if (ql_pdf_outline(pdf, &ol, &nol) == QL_OK) {
        for (int i = 0; i < nol; i++) printf("outline %d p%d y%.0f %s\n", ol[i].level, ol[i].page + 1, ol[i].y, ol[i].title);
        ql_pdf_outline_free(ol, nol);
    }
    for (int p = 0; p < ql_pdf_page_count(pdf); p++) {
        ql_pdf_page *pg;
        if (ql_pdf_page_load(pdf, p, &pg)) { fprintf(stderr, "%s\n", ql_last_error()); continue; }
        printf("=== page %d %.0fx%.0f lines %d rules %d images %d\n", p + 1, pg->width, pg->height, pg->nlines, pg->nrules, pg->nimages);
        for (int r = 0; r < pg->nrules; r++)
            printf("  rule %d %.1f,%.1f-%.1f,%.1f\n", pg->rules[r].kind, pg->rules[r].x0, pg->rules[r].y0, pg->rules[r].x1, pg->rules[r].y1);
        for (int i = 0; i < pg->nlines; i++) {
            ql_pdf_line *l = &pg->lines[i];
            printf("b%d [%.1f %.1f %.1f %.1f] bl%.1f:", l->block, l->x0, l->y0, l->x1, l->y1, l->baseline);
            for (int s = 0; s < l->nspans; s++)
                printf(" {%s %.1f %x|%s}", l->spans[s].font, l->spans[s].size, l->spans[s].flags, l->spans[s].text);
            printf("\n");
        }
        ql_pdf_page_free(pg);
    }
    ql_pdf_close(pdf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: pdf_tool dump|md|bench FILE...\n"); return 2; }
    if (!strcmp(argv[1], "dump")) return dump(argv[2]);
    ql_pdf_md_opts o; ql_pdf_md_opts_default(&o);
    int argi = 2;
    if (argi < argc && !strcmp(argv[argi], "-p")) { o.page_markers = 1; argi++; }
    if (!strcmp(argv[1], "md")) {
        char *md; size_t n; ql_pdf_md_stats st;
        if (ql_pdf_to_markdown(argv[argi], &o, &md, &n, &st)) { fprintf(stderr, "%s\n", ql_last_error()); return 1; }
        FILE *f = argi + 1 < argc ? fopen(argv[argi + 1], "wb") : stdout;
        if (!f) { perror(argv[argi + 1]); free(md); return 1; }
        fwrite(md, 1, n, f);
        if (f != stdout) fclose(f);
        free(md);
        return 0;
    }
    if (!strcmp(argv[1], "bench")) {
        int pages = 0, bad = 0; double t0 = ql_now();
        for (int i = argi; i < argc; i++) {
            char *md; size_t n; ql_pdf_md_stats st;
            if (ql_pdf_to_markdown(argv[i], &o, &md, &n, &st)) { bad++; continue; }
            pages += st.pages; free(md);
        }
        double dt = ql_now() - t0;
        printf("%d pages in %.3f s: %.1f pages/s (%d failed)\n", pages, dt, pages / dt, bad);
        return 0;
    }
    return 2;
}
