/*
 * l_pdf.c — qlora.pdf: PDF documents and PDF → Markdown for recipes.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.pdf) in the REPL).
 */
#include "qlora.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pdf.h"
#include "platform.h"

#define PDF_MT "qlora.PdfDoc"

typedef struct { ql_pdf *pdf; } lpdf;

static ql_pdf *check_doc(lua_State *L)
{
    lpdf *d = luaL_checkudata(L, 1, PDF_MT);
    if (!d->pdf) luaL_error(L, "qlora.pdf: document is closed");
    return d->pdf;
}

static void read_opts(lua_State *L, int idx, ql_pdf_md_opts *o)
{
    ql_pdf_md_opts_default(o);
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "page_markers"); if (!lua_isnil(L, -1)) o->page_markers = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, idx, "use_outline"); if (!lua_isnil(L, -1)) o->use_outline = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, idx, "keep_furniture"); if (!lua_isnil(L, -1)) o->keep_furniture = lua_toboolean(L, -1); lua_pop(L, 1);
    lua_getfield(L, idx, "inline_styles"); if (!lua_isnil(L, -1)) o->inline_styles = lua_toboolean(L, -1); lua_pop(L, 1);
    /* the password string stays alive: it is in the caller's table */
    lua_getfield(L, idx, "password"); o->password = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL; lua_pop(L, 1);
    lua_getfield(L, idx, "timeout");
    if (!lua_isnil(L, -1)) {
        int isnum;
        lua_Number t = lua_tonumberx(L, -1, &isnum);
        if (!isnum || !(t >= 0)) luaL_error(L, "qlora.pdf: timeout must be a number of seconds >= 0 (0: no limit)");
        o->timeout = (double)t;
    }
    lua_pop(L, 1);
}

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *pw = NULL;
    if (lua_istable(L, 2)) { lua_getfield(L, 2, "password"); pw = lua_tostring(L, -1); }
    lpdf *d = lua_newuserdatauv(L, sizeof *d, 0);
    d->pdf = NULL;
    luaL_setmetatable(L, PDF_MT);
    if (ql_pdf_open(&d->pdf, path, pw) != QL_OK) return ql_lua_fail(L);
    return 1;
}

static int l_close(lua_State *L)
{
    lpdf *d = luaL_checkudata(L, 1, PDF_MT);
    if (d->pdf) { ql_pdf_close(d->pdf); d->pdf = NULL; }
    return 0;
}

static int l_page_count(lua_State *L) { lua_pushinteger(L, ql_pdf_page_count(check_doc(L))); return 1; }

static int l_metadata(lua_State *L)
{
    ql_pdf *pdf = check_doc(L);
    char buf[1024];
    if (ql_pdf_metadata(pdf, luaL_checkstring(L, 2), buf, sizeof buf) != QL_OK) return ql_lua_error(L);
    lua_pushstring(L, buf);
    return 1;
}

static int l_outline(lua_State *L)
{
    ql_pdf *pdf = check_doc(L);
    ql_pdf_outline_item *it; int n;
    if (ql_pdf_outline(pdf, &it, &n) != QL_OK) return ql_lua_error(L);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, it[i].level); lua_setfield(L, -2, "level");
        lua_pushstring(L, it[i].title); lua_setfield(L, -2, "title");
        lua_pushinteger(L, it[i].page + 1); lua_setfield(L, -2, "page");
        lua_pushnumber(L, it[i].y); lua_setfield(L, -2, "y");
        lua_rawseti(L, -2, i + 1);
    }
    ql_pdf_outline_free(it, n);
    return 1;
}

static void set_box(lua_State *L, float x0, float y0, float x1, float y1)
{
    lua_pushnumber(L, x0); lua_setfield(L, -2, "x0");
    lua_pushnumber(L, y0); lua_setfield(L, -2, "y0");
    lua_pushnumber(L, x1); lua_setfield(L, -2, "x1");
    lua_pushnumber(L, y1); lua_setfield(L, -2, "y1");
}

static int l_page(lua_State *L)
{
    ql_pdf *pdf = check_doc(L);
    int n = (int)luaL_checkinteger(L, 2);
    ql_pdf_page *pg;
    if (ql_pdf_page_load(pdf, n - 1, &pg) != QL_OK) return ql_lua_fail(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, n); lua_setfield(L, -2, "number");
    lua_pushnumber(L, pg->width); lua_setfield(L, -2, "width");
    lua_pushnumber(L, pg->height); lua_setfield(L, -2, "height");
    lua_pushinteger(L, pg->nimages); lua_setfield(L, -2, "images");
    lua_createtable(L, pg->nlines, 0);
    for (int i = 0; i < pg->nlines; i++) {
        const ql_pdf_line *l = &pg->lines[i];
        lua_createtable(L, 0, 7);
        set_box(L, l->x0, l->y0, l->x1, l->y1);
        lua_pushnumber(L, l->baseline); lua_setfield(L, -2, "baseline");
        lua_pushinteger(L, l->block + 1); lua_setfield(L, -2, "block");
        lua_createtable(L, l->nspans, 0);
        for (int s = 0; s < l->nspans; s++) {
            const ql_pdf_span *sp = &l->spans[s];
            lua_createtable(L, 0, 11);
            lua_pushstring(L, sp->text); lua_setfield(L, -2, "text");
            lua_pushstring(L, sp->font); lua_setfield(L, -2, "font");
            lua_pushnumber(L, sp->size); lua_setfield(L, -2, "size");
            lua_pushboolean(L, sp->flags & QL_PDF_BOLD); lua_setfield(L, -2, "bold");
            lua_pushboolean(L, sp->flags & QL_PDF_ITALIC); lua_setfield(L, -2, "italic");
            lua_pushboolean(L, sp->flags & QL_PDF_MONO); lua_setfield(L, -2, "mono");
            lua_pushboolean(L, sp->flags & QL_PDF_SUPER); lua_setfield(L, -2, "super");
            lua_pushinteger(L, sp->color); lua_setfield(L, -2, "color");
            set_box(L, sp->x0, sp->y0, sp->x1, sp->y1);
            lua_rawseti(L, -2, s + 1);
        }
        lua_setfield(L, -2, "spans");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "lines");
    lua_createtable(L, pg->nrules, 0);
    for (int i = 0; i < pg->nrules; i++) {
        const ql_pdf_rule *r = &pg->rules[i];
        lua_createtable(L, 0, 5);
        lua_pushstring(L, r->kind == QL_PDF_RULE_H ? "h" : r->kind == QL_PDF_RULE_V ? "v" : "dot");
        lua_setfield(L, -2, "kind");
        set_box(L, r->x0, r->y0, r->x1, r->y1);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "rules");
    ql_pdf_page_free(pg);
    return 1;
}

static void push_stats(lua_State *L, const ql_pdf_md_stats *st)
{
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, st->pages); lua_setfield(L, -2, "pages");
    lua_pushinteger(L, st->chars); lua_setfield(L, -2, "chars");
    lua_pushinteger(L, st->headings); lua_setfield(L, -2, "headings");
    lua_pushinteger(L, st->furniture_lines); lua_setfield(L, -2, "furniture_lines");
    lua_pushinteger(L, st->unmapped_pages); lua_setfield(L, -2, "unmapped_pages");
    if (st->first_unmapped >= 0) { lua_pushinteger(L, st->first_unmapped + 1); lua_setfield(L, -2, "first_unmapped"); }
    lua_pushinteger(L, st->damaged_pages); lua_setfield(L, -2, "damaged_pages");
    lua_pushboolean(L, st->repaired); lua_setfield(L, -2, "repaired");
    lua_pushnumber(L, st->seconds); lua_setfield(L, -2, "seconds");
}

static int l_to_markdown(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    ql_pdf_md_opts o;
    read_opts(L, 2, &o);
    char *md; size_t n; ql_pdf_md_stats st;
    ql_status s = ql_pdf_to_markdown(path, &o, &md, &n, &st);
    if (s != QL_OK) {
        ql_lua_fail(L);
        lua_pushstring(L, s == QL_ETIMEOUT ? "timeout" : "error");
        return 3;
    }
    lua_pushlstring(L, md, n);
    free(md);
    push_stats(L, &st);
    return 2;
}

/* ---- parallel conversion ---- */
typedef struct {
    const char *src, *dst;
    int ok, pages, timeout;
    ql_pdf_md_stats st;
    char err[512];
} job;

typedef struct {
    job *jobs;
    ql_pdf_md_opts opts;
    ql_mutex *mu;
    int done, pages, failed, total, progress;
    double t0;
} batch;

static void draw_progress(batch *b)
{
    double dt = ql_now() - b->t0;
    int width = ql_term_width();
    if (width < 40) width = 80;
    int barw = width - 50;
    if (barw > 40) barw = 40;
    if (barw < 10) barw = 10;
    int fill = b->total ? b->done * barw / b->total : barw;
    char bar[64];
    for (int i = 0; i < barw; i++) bar[i] = i < fill ? '#' : '.';
    bar[barw] = 0;
    fprintf(stderr, "\r[%s] %d/%d files %d pages %.0f pages/s %d failed ", bar, b->done, b->total,
            b->pages, dt > 0 ? b->pages / dt : 0.0, b->failed);
    fflush(stderr);
}

static void convert_range(void *arg, int64_t begin, int64_t end)
{
    batch *b = arg;
    for (int64_t i = begin; i < end; i++) {
        job *j = &b->jobs[i];
        char *md = NULL; size_t n = 0; ql_pdf_md_stats st; memset(&st, 0, sizeof st);
        ql_status s = ql_pdf_to_markdown(j->src, &b->opts, &md, &n, &st);
        if (s == QL_OK) {
            ql_atomic_file af;
            if (ql_atomic_open(&af, j->dst) == QL_OK) {
                fwrite(md, 1, n, af.fp);
                if (ql_atomic_commit(&af) == QL_OK) { j->ok = 1; j->pages = st.pages; j->st = st; }
            }
        }
        j->timeout = s == QL_ETIMEOUT;
        if (!j->ok) snprintf(j->err, sizeof j->err, "%s", ql_last_error());
        free(md);
        ql_mutex_lock(b->mu);
        b->done++; b->pages += j->pages; b->failed += !j->ok;
        if (b->progress) draw_progress(b);
        ql_mutex_unlock(b->mu);
    }
}

static int l_convert(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    batch b; memset(&b, 0, sizeof b);
    read_opts(L, 2, &b.opts);
    b.progress = ql_isatty(stderr);
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "progress");
        if (!lua_isnil(L, -1)) b.progress = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int n = (int)luaL_len(L, 1);
    b.jobs = calloc((size_t)(n ? n : 1), sizeof *b.jobs);
    b.mu = ql_mutex_new();
    if (!b.jobs || !b.mu) { free(b.jobs); if (b.mu) ql_mutex_free(b.mu); return luaL_error(L, "qlora.pdf.convert: out of memory"); }
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        lua_getfield(L, -1, "src"); b.jobs[i].src = lua_tostring(L, -1); lua_pop(L, 1);
        lua_getfield(L, -1, "dst"); b.jobs[i].dst = lua_tostring(L, -1); lua_pop(L, 1);
        lua_pop(L, 1);
        if (!b.jobs[i].src || !b.jobs[i].dst) {
            free(b.jobs); ql_mutex_free(b.mu);
            return luaL_error(L, "qlora.pdf.convert: job %d needs src and dst strings", i + 1);
        }
    }
    /* strings stay alive: they belong to the job tables still referenced by arg 1 */
    b.total = n; b.t0 = ql_now();
    ql_parallel_for(n, 1, convert_range, &b);
    if (b.progress && n) fputc('\n', stderr);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 7);
        lua_pushstring(L, b.jobs[i].src); lua_setfield(L, -2, "src");
        lua_pushstring(L, b.jobs[i].dst); lua_setfield(L, -2, "dst");
        lua_pushboolean(L, b.jobs[i].ok); lua_setfield(L, -2, "ok");
        lua_pushinteger(L, b.jobs[i].pages); lua_setfield(L, -2, "pages");
        if (!b.jobs[i].ok) { lua_pushstring(L, b.jobs[i].err); lua_setfield(L, -2, "error"); }
        if (b.jobs[i].timeout) { lua_pushboolean(L, 1); lua_setfield(L, -2, "timeout"); }
        if (b.jobs[i].ok) { push_stats(L, &b.jobs[i].st); lua_setfield(L, -2, "stats"); }
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushnumber(L, ql_now() - b.t0);
    free(b.jobs);
    ql_mutex_free(b.mu);
    return 2;
}

/* ---- directory listing ---- */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct { char **v; int n, cap; } strvec;

static void walk(const char *dir, const char *ext, strvec *out, int depth)
{
    DIR *d = opendir(dir);
    if (!d || depth > 32) { if (d) closedir(d); return; }
    struct dirent *e;
    size_t el = strlen(ext);
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t need = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(need);
        if (!p) break;
        snprintf(p, need, "%s/%s", dir, e->d_name);
        /* a link to a folder is not followed: two links to "." would loop, and
           one would list the same files again under other names */
        struct stat ls;
        if (lstat(p, &ls) != 0) { free(p); continue; }
        if (S_ISLNK(ls.st_mode) && ql_is_dir(p)) { free(p); continue; }
        if (S_ISDIR(ls.st_mode)) { walk(p, ext, out, depth + 1); free(p); continue; }
        size_t pl = strlen(p);
        if (pl < el || strcasecmp(p + pl - el, ext) != 0) { free(p); continue; }
        if (out->n == out->cap) {
            int cap = out->cap ? out->cap * 2 : 64;
            char **q = realloc(out->v, (size_t)cap * sizeof *q);
            if (!q) { free(p); break; }
            out->v = q; out->cap = cap;
        }
        out->v[out->n++] = p;
    }
    closedir(d);
}

static int l_list_files(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    const char *ext = luaL_optstring(L, 2, "");
    if (!ql_is_dir(dir)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: not a directory: check src=", dir);
        return 2;
    }
    strvec v = {0};
    walk(dir, ext, &v, 0);
    if (v.n) qsort(v.v, (size_t)v.n, sizeof *v.v, cmp_str);
    lua_createtable(L, v.n, 0);
    for (int i = 0; i < v.n; i++) { lua_pushstring(L, v.v[i]); lua_rawseti(L, -2, i + 1); free(v.v[i]); }
    free(v.v);
    return 1;
}

static const luaL_Reg doc_methods[] = {
    {"page_count", l_page_count}, {"metadata", l_metadata}, {"outline", l_outline},
    {"page", l_page}, {"close", l_close}, {NULL, NULL}
};

static const luaL_Reg funcs[] = {
    {"open", l_open}, {"to_markdown", l_to_markdown}, {"convert", l_convert},
    {"list_files", l_list_files}, {NULL, NULL}
};

static const ql_lua_doc doc_method_docs[] = {
    { "", "an open PDF document (qlora.pdf.open)" },
    { "page_count", "page_count() -> n" },
    { "metadata", "metadata(key) -> string | nil   e.g. \"info:Title\", \"format\"" },
    { "outline", "outline() -> {{level, title, page}, ...}   the bookmarks" },
    { "page", "page(n) -> {number, width, height, lines = {{x0, y0, x1, y1, baseline, spans = {{text, font, size,\n"
              "  bold, italic, mono, super, x0, y0, x1, y1}}}}, rules = {{kind = \"h\"|\"v\"|\"dot\", x0, y0, x1, y1}}}   n is 1-based" },
    { "close", "close()   (also __gc / __close)" },
    { NULL, NULL }
};
static const ql_lua_doc docs[] = {
    { "", "PDF documents (MuPDF) and PDF -> Markdown for recipes" },
    { "open", "open(path [, {password =}]) -> doc | nil, message" },
    { "to_markdown", "to_markdown(path [, opts]) -> markdown, stats | nil, message, status\n"
                     "  opts: page_markers, use_outline, keep_furniture, inline_styles, password, timeout (seconds; 0/nil: none)\n"
                     "  stats: pages, chars, headings, furniture_lines, seconds, unmapped_pages (text without a Unicode\n"
                     "  mapping: OCR it), first_unmapped, damaged_pages, repaired; status: \"timeout\" or \"error\"" },
    { "convert", "convert({{src =, dst =}, ...} [, opts]) -> {{src, dst, ok, pages, error, timeout, stats}, ...}\n"
                 "  converts in parallel (one MuPDF context per file), writes each dst atomically, a progress bar with\n"
                 "  pages/s on a terminal (opts.progress = false hides it); opts.timeout limits each file" },
    { "list_files", "list_files(dir, ext) -> sorted paths under dir ending in ext\n"
                    "  recursive; links to folders are not followed, links to files are listed" },
    { NULL, NULL }
};

int luaopen_qlora_pdf(lua_State *L)
{
    if (luaL_newmetatable(L, PDF_MT)) {
        luaL_newlib(L, doc_methods);
        ql_lua_docs(L, -1, PDF_MT, "doc:", doc_method_docs);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close); lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close); lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    ql_lua_docs(L, -1, "qlora.pdf", "qlora.pdf.", docs);
    return 1;
}
