/*
 * fuzz_pdf.c — the PDF front end on any bytes written to a temporary file:
 * ql_pdf_open, page count, metadata, outline and the first pages' structured
 * text, then ql_pdf_to_markdown. MuPDF itself is not instrumented (Debian's
 * static library): this finds faults in our use of it and in pdf.c/pdf_md.c.
 */
#include "fuzz.h"
#include "pdf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size, ".pdf");
    ql_pdf *pdf = NULL;
    if (ql_pdf_open(&pdf, path, NULL) == QL_OK) {
        ql_pdf_set_time_limit(pdf, 2.0);
        int n = ql_pdf_page_count(pdf);
        char buf[256];
        (void)ql_pdf_metadata(pdf, "info:Title", buf, sizeof buf);
        ql_pdf_outline_item *items = NULL;
        int ni = 0;
        if (ql_pdf_outline(pdf, &items, &ni) == QL_OK) ql_pdf_outline_free(items, ni);
        for (int i = 0; i < n && i < 4; i++) {
            ql_pdf_page *pg = NULL;
            if (ql_pdf_page_load(pdf, i, &pg) == QL_OK) ql_pdf_page_free(pg);
        }
        (void)ql_pdf_repaired(pdf);
        ql_pdf_close(pdf);
    }
    ql_pdf_md_opts o;
    ql_pdf_md_opts_default(&o);
    o.timeout = 2.0;
    o.page_markers = size & 1;
    char *md = NULL;
    size_t len = 0;
    if (ql_pdf_to_markdown(path, &o, &md, &len, NULL) == QL_OK) free(md);
    return 0;
}
