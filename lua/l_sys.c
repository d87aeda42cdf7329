/*
 * l_sys.c — qlora.sys: the platform layer for recipes (clocks, threads,
 * files, terminal, build facts). Everything OS-specific stays in engine/core/platform.c.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.sys) in the REPL).
 */
#include "qlora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"


static int l_now(lua_State *L) { lua_pushnumber(L, ql_now()); return 1; }
static int l_threads(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) ql_set_num_threads((int)luaL_checkinteger(L, 1));
    lua_pushinteger(L, ql_num_threads());
    return 1;
}
static int l_peak_rss(lua_State *L) { lua_pushinteger(L, (lua_Integer)ql_peak_rss_bytes()); return 1; }
static int l_isatty(lua_State *L) { lua_pushboolean(L, ql_isatty(luaL_optinteger(L, 1, 1) == 2 ? stderr : stdout)); return 1; }
static int l_term_width(lua_State *L) { lua_pushinteger(L, ql_term_width()); return 1; }
static int l_exists(lua_State *L) { lua_pushboolean(L, ql_file_exists(luaL_checkstring(L, 1))); return 1; }
static int l_is_dir(lua_State *L) { lua_pushboolean(L, ql_is_dir(luaL_checkstring(L, 1))); return 1; }
static int l_mtime(lua_State *L)
{
    double t = ql_file_mtime(luaL_checkstring(L, 1));
    if (t < 0) lua_pushnil(L); else lua_pushnumber(L, t);
    return 1;
}
static int l_size(lua_State *L)
{
    int64_t n = ql_file_size(luaL_checkstring(L, 1));
    if (n < 0) lua_pushnil(L); else lua_pushinteger(L, n);
    return 1;
}
static int l_mkdir(lua_State *L)
{
    if (ql_mkdir_p(luaL_checkstring(L, 1)) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}
static int l_exe_dir(lua_State *L) { lua_pushstring(L, ql_exe_dir()); return 1; }

/* write a whole file atomically: temp + rename */
static int l_write_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    ql_atomic_file af;
    if (ql_atomic_open(&af, path) != QL_OK) return ql_lua_fail(L);
    fwrite(data, 1, n, af.fp);
    if (ql_atomic_commit(&af) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* qlora.sys.trap_interrupt(true|false): Ctrl-C sets a flag instead of raising an error */
static int l_trap_interrupt(lua_State *L) { ql_sigint_trap(lua_toboolean(L, 1)); return 0; }
/* qlora.sys.interrupted() -> true once after each Ctrl-C while trapped */
static int l_interrupted(lua_State *L) { lua_pushboolean(L, ql_sigint_take()); return 1; }
/* qlora.sys.append_line(path, text): appends one line and flushes (metrics logs) */
static int l_append_line(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    FILE *f = fopen(path, "ab");
    if (!f) { lua_pushnil(L); lua_pushfstring(L, "%s: cannot open for appending", path); return 2; }
    fwrite(s, 1, n, f);
    fputc('\n', f);
    int bad = fclose(f) != 0;
    if (bad) { lua_pushnil(L); lua_pushfstring(L, "%s: write failed (disk full?)", path); return 2; }
    lua_pushboolean(L, 1);
    return 1;
}
/* qlora.sys.remove_tree(path): a file or a folder with everything in it */
static int l_remove_tree(lua_State *L)
{
    if (ql_remove_tree(luaL_checkstring(L, 1)) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* qlora.sys.rename(from, to): atomic within a file system */
static int l_rename(lua_State *L)
{
    const char *a = luaL_checkstring(L, 1), *b = luaL_checkstring(L, 2);
    if (rename(a, b) != 0) { lua_pushnil(L); lua_pushfstring(L, "cannot rename %s to %s", a, b); return 2; }
    lua_pushboolean(L, 1);
    return 1;
}

/* qlora.sys.list_dir(path) -> {names...} sorted (no "." or ".."), or nil, message */
#define NAMES_MT "qlora.sys.names"
static int names_gc(lua_State *L)
{
    char **p = luaL_checkudata(L, 1, NAMES_MT);
    free(*p);
    *p = NULL;
    return 0;
}
static int cmp_names(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
static int l_list_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char **box = lua_newuserdatauv(L, sizeof(char *), 0);   /* owns the C block, so an error frees it */
    *box = NULL;
    luaL_setmetatable(L, NAMES_MT);
    size_t len;
    if (ql_list_dir(path, box, &len) != QL_OK) return ql_lua_fail(L);
    /* sorted, so that listings are the same on every file system */
    size_t n = 0;
    for (size_t at = 0; at < len; at += strlen(*box + at) + 1) n++;
    const char **names = lua_newuserdatauv(L, sizeof(char *) * (n + 1), 0);
    n = 0;
    for (size_t at = 0; at < len; at += strlen(*box + at) + 1) names[n++] = *box + at;
    qsort(names, n, sizeof *names, cmp_names);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) { lua_pushstring(L, names[i]); lua_rawseti(L, -2, (lua_Integer)i + 1); }
    free(*box);
    *box = NULL;
    return 1;
}

/* qlora.sys.pid_alive(pid) -> whether a process with this id exists */
static int l_pid_alive(lua_State *L) { lua_pushboolean(L, ql_pid_alive((long)luaL_checkinteger(L, 1))); return 1; }
/* qlora.sys.pid() -> this process's id */
static int l_pid(lua_State *L) { lua_pushinteger(L, ql_pid()); return 1; }

static int l_build(lua_State *L)
{
    lua_newtable(L);
    lua_pushstring(L, QL_VERSION); lua_setfield(L, -2, "version");
    lua_pushstring(L, ql_build_commit()); lua_setfield(L, -2, "commit");
    lua_pushstring(L, ql_build_options()); lua_setfield(L, -2, "options");
    lua_pushstring(L, ql_build_cuda_archs()); lua_setfield(L, -2, "cuda_archs");
#ifdef QL_CUDA
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "cuda");
    return 1;
}

static const luaL_Reg functions[] = {
    { "now", l_now }, { "threads", l_threads }, { "peak_rss", l_peak_rss }, { "isatty", l_isatty },
    { "term_width", l_term_width }, { "exists", l_exists }, { "is_dir", l_is_dir }, { "mtime", l_mtime },
    { "size", l_size }, { "mkdir", l_mkdir }, { "exe_dir", l_exe_dir }, { "write_file", l_write_file },
    { "build", l_build }, { "trap_interrupt", l_trap_interrupt }, { "interrupted", l_interrupted },
    { "append_line", l_append_line }, { "rename", l_rename }, { "remove_tree", l_remove_tree },
    { "list_dir", l_list_dir }, { "pid_alive", l_pid_alive }, { "pid", l_pid },
    { NULL, NULL }
};

static const ql_lua_doc docs[] = {
    { "", "the platform layer for recipes: clocks, threads, files, terminal, build facts" },
    { "now", "now() -> seconds   a monotonic clock (for durations)" },
    { "threads", "threads([n]) -> n   the CPU threads qlora uses; n sets them" },
    { "peak_rss", "peak_rss() -> bytes   the most memory this process has held resident" },
    { "isatty", "isatty([fd = 1]) -> boolean   whether stdout (1) or stderr (2) is a terminal" },
    { "term_width", "term_width() -> columns   of the terminal (80 when unknown)" },
    { "exists", "exists(path) -> boolean   a file or folder" },
    { "is_dir", "is_dir(path) -> boolean" },
    { "mtime", "mtime(path) -> seconds | nil   modification time (Unix seconds, fractional)" },
    { "size", "size(path) -> bytes | nil" },
    { "mkdir", "mkdir(path) -> true | nil, message   with its parents (mkdir -p)" },
    { "exe_dir", "exe_dir() -> path   the folder of the running program" },
    { "write_file", "write_file(path, data) -> true | nil, message   the whole file, atomically (temp file + rename)" },
    { "build", "build() -> {version, commit, options, cuda_archs, cuda}   how this qlora was built" },
    { "trap_interrupt", "trap_interrupt(on)   true: Ctrl-C only sets a flag (read it with interrupted()); false: Ctrl-C interrupts" },
    { "interrupted", "interrupted() -> boolean   true once after each Ctrl-C while trapped" },
    { "append_line", "append_line(path, text) -> true | nil, message   appends text and a newline, then closes (logs)" },
    { "rename", "rename(from, to) -> true | nil, message   atomic within a file system" },
    { "remove_tree", "remove_tree(path) -> true | nil, message   a file, or a folder with everything in it" },
    { "list_dir", "list_dir(path) -> {names} | nil, message   sorted, without . and .." },
    { "pid_alive", "pid_alive(pid) -> boolean   whether a process with this id exists" },
    { "pid", "pid() -> n   this process's id" },
    { NULL, NULL }
};

int luaopen_qlora_sys(lua_State *L)
{
    if (luaL_newmetatable(L, NAMES_MT)) { lua_pushcfunction(L, names_gc); lua_setfield(L, -2, "__gc"); }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.sys", "qlora.sys.", docs);
    return 1;
}
