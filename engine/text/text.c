/*
 * text.c — corpus text cleaning and MinHash on utf8proc (see text.h).
 */
#include "text.h"
#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

void ql_text_opts_default(ql_text_opts *o)
{
    memset(o, 0, sizeof *o);
    o->nfkc = 1;
    o->collapse_spaces = 1;
    o->max_blank_lines = 1;
}

typedef ql_strbuf buf;
static void b_put(buf *b, const char *s, size_t n) { ql_strbuf_add(b, s, n); }

static void b_cp(buf *b, int32_t c)
{
    utf8proc_uint8_t tmp[4];
    utf8proc_ssize_t k = utf8proc_encode_char(c, tmp);
    b_put(b, (const char *)tmp, (size_t)k);
}

/* invalid bytes -> U+FFFD so utf8proc accepts the text */
static char *sanitize(const char *in, size_t n, size_t *outn)
{
    buf b = {0};
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)in + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) { b_cp(&b, 0xFFFD); i++; continue; }
        if (c == 0) { i += (size_t)k; continue; }
        b_put(&b, in + i, (size_t)k);
        i += (size_t)k;
    }
    if (!b.p) b_put(&b, "", 0);
    if (b.oom) { free(b.p); return NULL; }
    *outn = b.n;
    return b.p;
}

static int is_odd_space(int32_t c)
{
    return c == 0xA0 || (c >= 0x2000 && c <= 0x200A) || c == 0x202F || c == 0x205F || c == 0x3000 ||
           c == 0x1680 || c == '\t' || c == '\v' || c == '\f';
}

ql_status ql_text_clean(const char *in, size_t n, const ql_text_opts *o_in, char **out, size_t *outn)
{
    ql_text_opts o;
    if (o_in) o = *o_in; else ql_text_opts_default(&o);
    *out = NULL;
    size_t sn;
    char *s = sanitize(in, n, &sn);
    if (!s) return ql_fail(QL_ENOMEM, "text.clean: out of memory");
    utf8proc_uint8_t *norm = NULL;
    int flags = UTF8PROC_STABLE | UTF8PROC_COMPOSE | (o.nfkc ? UTF8PROC_COMPAT : 0);
    utf8proc_ssize_t nn = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)sn, &norm, flags);
    free(s);
    if (nn < 0) return ql_fail(QL_EINVAL, "text.clean: %s", utf8proc_errmsg(nn));
    buf b = {0};
    int in_fence = 0, blank_run = 0, at_line_start = 1, pending_space = 0;
    size_t line_start = 0;
    for (utf8proc_ssize_t i = 0; i < nn;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(norm + i, nn - i, &c);
        if (k <= 0) { i++; continue; }
        i += k;
        if (c == '\r') { if (i < nn && norm[i] == '\n') continue; c = '\n'; }
        if (c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        if (c == '\n') {
            /* trim trailing spaces of the line */
            while (b.n > line_start && b.p[b.n - 1] == ' ') b.n--;
            if (b.p) b.p[b.n] = 0;
            int blank = b.n == line_start;
            const char *ls = b.p ? b.p + line_start : "";
            if (!blank && strncmp(ls + strspn(ls, " "), "```", 3) == 0) in_fence = !in_fence;
            if (blank) {
                blank_run++;
                if (blank_run > o.max_blank_lines && !in_fence) { continue; }
            } else blank_run = 0;
            if (b.n == 0 && blank) continue;   /* no leading blank lines */
            b_put(&b, "\n", 1);
            line_start = b.n; at_line_start = 1; pending_space = 0;
            continue;
        }
        utf8proc_category_t cat = utf8proc_category(c);
        if (c == 0x200C || c == 0x200D) { b_cp(&b, c); at_line_start = 0; continue; }   /* ZWNJ/ZWJ kept */
        if (c == 0xAD || c == 0x200B || c == 0x2060 || c == 0xFEFF || c == 0x180E) continue;
        if (is_odd_space(c)) c = ' ';
        if (cat == UTF8PROC_CATEGORY_CC && c != ' ') continue;
        if (cat == UTF8PROC_CATEGORY_CF && !(c >= 0x600 && c <= 0x6FF) && c != 0x110BD) continue;
        if (cat == UTF8PROC_CATEGORY_CO || cat == UTF8PROC_CATEGORY_CS) continue;
        if (c >= 0xFB00 && c <= 0xFB06) {   /* ligatures left by NFC */
            static const char *lig[] = {"ff", "fi", "fl", "ffi", "ffl", "st", "st"};
            b_put(&b, lig[c - 0xFB00], strlen(lig[c - 0xFB00]));
            at_line_start = 0; continue;
        }
        if (o.fold_quotes) {
            const char *r = NULL;
            if (c == 0x2018 || c == 0x2019 || c == 0x201A || c == 0x201B || c == 0x2032) r = "'";
            else if (c == 0x201C || c == 0x201D || c == 0x201E || c == 0x201F || c == 0x2033 || c == 0xAB || c == 0xBB) r = "\"";
            else if (c == 0x2010 || c == 0x2011 || c == 0x2012 || c == 0x2013 || c == 0x2014 || c == 0x2015 || c == 0x2212) r = "-";
            else if (c == 0x2026) r = "...";
            if (r) {
                if (pending_space) { b_put(&b, " ", 1); pending_space = 0; }
                b_put(&b, r, strlen(r)); at_line_start = 0; continue;
            }
        }
        if (c == ' ' && o.collapse_spaces && !in_fence) {
            if (!at_line_start) pending_space = 1;
            else {
                /* keep indentation (lists, nested items) at line start */
                b_put(&b, " ", 1);
            }
            continue;
        }
        if (pending_space) { b_put(&b, " ", 1); pending_space = 0; }
        b_cp(&b, c);
        at_line_start = 0;
    }
    free(norm);
    while (b.n > 0 && (b.p[b.n - 1] == '\n' || b.p[b.n - 1] == ' ')) b.n--;
    b_put(&b, "\n", b.n ? 1 : 0);
    if (b.oom) { free(b.p); return ql_fail(QL_ENOMEM, "text.clean: out of memory"); }
    *out = b.p;
    if (outn) *outn = b.n;
    return QL_OK;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* folded code points without whitespace and punctuation */
static int32_t *fold(const char *in, size_t n, size_t *count)
{
    size_t sn;
    char *s = sanitize(in, n, &sn);
    if (!s) return NULL;
    utf8proc_uint8_t *f = NULL;
    utf8proc_ssize_t fn = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)sn, &f,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD);
    free(s);
    if (fn < 0) return NULL;
    int32_t *cp = malloc(((size_t)fn + 1) * sizeof *cp);
    size_t k = 0;
    if (cp) {
        for (utf8proc_ssize_t i = 0; i < fn;) {
            utf8proc_int32_t c;
            utf8proc_ssize_t m = utf8proc_iterate(f + i, fn - i, &c);
            if (m <= 0) { i++; continue; }
            i += m;
            utf8proc_category_t cat = utf8proc_category(c);
            if (cat >= UTF8PROC_CATEGORY_ZS || (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO)) continue;
            cp[k++] = c;
        }
    }
    free(f);
    *count = k;
    return cp;
}

ql_status ql_text_minhash(const char *in, size_t n, int k, int nperm, uint32_t *sig)
{
    if (k < 1 || nperm < 1 || nperm > 256) return ql_fail(QL_EINVAL, "text.minhash: k must be >= 1 and nperm in 1..256");
    size_t m;
    int32_t *cp = fold(in, n, &m);
    if (!cp) return ql_fail(QL_ENOMEM, "text.minhash: out of memory");
    for (int p = 0; p < nperm; p++) sig[p] = 0xffffffffu;
    size_t nsh = m >= (size_t)k ? m - (size_t)k + 1 : 1;
    for (size_t i = 0; i < nsh; i++) {
        uint64_t h = 0x9E3779B97F4A7C15ULL;
        for (size_t j = i; j < i + (size_t)k && j < m; j++) h = mix64(h ^ (uint64_t)(uint32_t)cp[j]);
        for (int p = 0; p < nperm; p++) {
            uint32_t v = (uint32_t)(mix64(h + 0x632BE59BD9B4E019ULL * (uint64_t)(p + 1)) >> 32);
            if (v < sig[p]) sig[p] = v;
        }
    }
    free(cp);
    return QL_OK;
}

uint64_t ql_text_fingerprint(const char *in, size_t n)
{
    size_t m;
    int32_t *cp = fold(in, n, &m);
    uint64_t h = 0xcbf29ce484222325ULL;
    if (!cp) return 0;
    for (size_t i = 0; i < m; i++) h = mix64(h ^ (uint64_t)(uint32_t)cp[i]);
    free(cp);
    return h;
}
