/*
 * main.c — the `qlora` program: runs Lua recipes, one-liners and an
 * interactive REPL with the qlora modules preloaded.
 *
 *   qlora FILE.lua [key=value ...]   run a recipe; `args` holds the key=value
 *                                    pairs, `arg` the raw arguments (arg[0] = FILE)
 *   qlora -e 'code' [key=value ...]  run code
 *   qlora doctor                     run recipes/doctor.lua (GPU checklist)
 *   qlora chat MODEL [key=value ...] chat with a model (recipes/chat.lua, a recipe by name)
 *   qlora ls                         list the recipes, a line each (lua/qlora/recipes.lua)
 *   qlora cp NAME DEST.lua           copy a recipe to customise it
 *   qlora NAME [key=value ...]       run recipe NAME (full, train, ...) found beside the
 *                                    program like the Lua modules: <exe>/../recipes,
 *                                    <exe>/../../recipes, <exe>/../share/qlora/recipes,
 *                                    then ./recipes
 *   qlora --version                  version, commit, build options, CUDA architectures
 *   qlora                            interactive REPL (readline, history, help(); repl.c)
 *
 * Exit status: 0 success, 1 a Lua error, 2 bad command line; recipes may
 * exit with their own codes (doctor documents its codes).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../qlora.h"
#include "platform.h"
#include "repl.h"


/* ---------------------------------------------------------------- Ctrl-C */

/* Ctrl-C during a call sets a hook that raises "interrupted" at the call's next Lua
   step, as lua.c does (lua_sethook is safe in a signal handler). Running a recipe, a
   second Ctrl-C before that step kills the process (a C call that never returns to Lua);
   in the REPL it never does: the REPL's work is kept, and the second press only says
   what is going on. */
static lua_State *g_L;
static volatile sig_atomic_t g_repl, g_pending;

void ql_host_repl_mode(int on) { g_repl = on; }

static void lstop(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    g_pending = 0;
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig)
{
    if (ql_sigint_trapped()) {   /* a training loop asked to see Ctrl-C as a flag */
        ql_sigint_note();
        signal(sig, on_sigint);
        return;
    }
    if (g_repl) {
        signal(sig, on_sigint);
        if (g_pending) {
            static const char note[] = "\nqlora: interrupting at the next Lua step; a C call (loading, a big product) finishes first; Ctrl-\\ kills\n";
            ssize_t w = write(2, note, sizeof note - 1);
            (void)w;
        }
    } else signal(sig, SIG_DFL);  /* a second Ctrl-C kills */
    g_pending = 1;
    if (g_L) lua_sethook(g_L, lstop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* runs the function on the stack with n args; prints errors */
int ql_host_docall(lua_State *L, int narg, int nres)
{
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    g_L = L;
    g_pending = 0;
    signal(SIGINT, on_sigint);
    int status = lua_pcall(L, narg, nres, base);
    signal(SIGINT, g_repl ? SIG_IGN : SIG_DFL);   /* the REPL reads its lines with its own handler */
    /* a Ctrl-C that came as the call was returning must not stop the next one */
    if (lua_gethook(L) == lstop) lua_sethook(L, NULL, 0, 0);
    g_pending = 0;
    lua_remove(L, base);
    return status;
}

static void report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "qlora: %s\n", msg ? msg : "(error)");
        fflush(stderr);
        lua_pop(L, 1);
    }
}

/* ---------------------------------------------------------------- setup */

/* A guard on globals for recipes: assigning or reading an undeclared global
   raises, so a typo in a recipe fails loudly instead of creating nil. */
static const char *strict_lua =
    "local mt = {}\n"
    "setmetatable(_G, mt)\n"
    "mt.__newindex = function(t, k, v)\n"
    "  error(\"assignment to undeclared global '\" .. tostring(k) .. \"' (declare it with local, or use rawset(_G, name, value))\", 2)\n"
    "end\n"
    "mt.__index = function(t, k)\n"
    "  error(\"undeclared global '\" .. tostring(k) .. \"' (a typo? declare it with local)\", 2)\n"
    "end\n";

static void set_args(lua_State *L, int argc, char **argv, int script_at, int first_arg)
{
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_seti(L, -2, i - script_at);
    }
    lua_setglobal(L, "arg");
    lua_newtable(L);
    for (int i = first_arg; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (eq && eq != argv[i]) {
            lua_pushlstring(L, argv[i], (size_t)(eq - argv[i]));
            lua_pushstring(L, eq + 1);
            lua_settable(L, -3);
        } else {
            lua_pushstring(L, argv[i]);
            lua_seti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
        }
    }
    lua_setglobal(L, "args");
}

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    if (!L) { fprintf(stderr, "qlora: cannot create the Lua state (out of memory)\n"); exit(1); }
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_qlora);
    lua_setfield(L, -2, "qlora");
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushstring(L, "qlora");
    if (ql_host_docall(L, 1, 1) != LUA_OK) { report(L, 1); exit(1); }
    lua_setglobal(L, "qlora");
    return L;
}

static int run_strict_file(lua_State *L, const char *path)
{
    if (luaL_dostring(L, strict_lua) != LUA_OK) { report(L, 1); return 1; }
    int st = luaL_loadfile(L, path);
    if (st == LUA_OK) st = ql_host_docall(L, 0, 0);
    report(L, st);
    return st == LUA_OK ? 0 : 1;
}

static void print_version(void)
{
    printf("qlora %s (commit %s)\n", QL_VERSION, ql_build_commit());
    printf("build: %s\n", ql_build_options());
    printf("CUDA architectures: %s\n", *ql_build_cuda_archs() ? ql_build_cuda_archs() : "none (CPU-only build)");
    printf("%s\n", LUA_RELEASE);
}

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: qlora [FILE.lua [key=value ...]]\n"
            "       qlora -e 'lua code' [key=value ...]\n"
            "       qlora NAME [key=value ...]  run a recipe by name (qlora full --help)\n"
            "       qlora chat MODEL        chat with a model (its chat template, streamed)\n"
            "       qlora ls                list the recipes\n"
            "       qlora cp NAME DEST.lua  copy a recipe to customise it\n"
            "       qlora doctor            check GPUs, drivers and this build\n"
            "       qlora --version\n"
            "With no arguments, qlora opens an interactive Lua REPL (help() lists the modules).\n");
}

static char *find_recipe(const char *name)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/../recipes/%s", ql_exe_dir(), name);
    if (ql_file_exists(buf)) return buf;
    snprintf(buf, sizeof buf, "%s/../../recipes/%s", ql_exe_dir(), name);   /* bin/asan/, bin/debug/ */
    if (ql_file_exists(buf)) return buf;
    snprintf(buf, sizeof buf, "%s/../share/qlora/recipes/%s", ql_exe_dir(), name);
    if (ql_file_exists(buf)) return buf;
    snprintf(buf, sizeof buf, "recipes/%s", name);
    if (ql_file_exists(buf)) return buf;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-v"))) { print_version(); return 0; }
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) { usage(stdout); return 0; }
    lua_State *L = new_state();
    int rc = 0;
    if (argc == 1) {
        set_args(L, argc, argv, 0, 1);
        rc = ql_repl(L);
    } else if (!strcmp(argv[1], "-e")) {
        if (argc < 3) { usage(stderr); lua_close(L); return 2; }
        set_args(L, argc, argv, 2, 3);
        int st = luaL_loadbuffer(L, argv[2], strlen(argv[2]), "=(command line)");
        if (st == LUA_OK) st = ql_host_docall(L, 0, 0);
        report(L, st);
        rc = st == LUA_OK ? 0 : 1;
    } else if (!strcmp(argv[1], "doctor")) {
        char *p = find_recipe("doctor.lua");
        if (!p) { fprintf(stderr, "qlora: recipes/doctor.lua not found next to %s\n", ql_exe_dir()); lua_close(L); return 2; }
        set_args(L, argc, argv, 1, 2);
        rc = run_strict_file(L, p);
    } else if (!strcmp(argv[1], "ls") || !strcmp(argv[1], "cp")) {
        set_args(L, argc, argv, 1, 2);
        lua_getglobal(L, "require");
        lua_pushstring(L, "qlora.recipes");
        int st = ql_host_docall(L, 1, 1);
        if (st == LUA_OK) {
            lua_getfield(L, -1, "main");
            lua_pushstring(L, argv[1]);
            lua_createtable(L, argc, 0);
            for (int i = 2; i < argc; i++) { lua_pushstring(L, argv[i]); lua_seti(L, -2, i - 1); }
            st = ql_host_docall(L, 2, 1);
            if (st == LUA_OK) { rc = (int)lua_tointeger(L, -1); lua_pop(L, 1); }
            lua_remove(L, -1);
        }
        if (st != LUA_OK) { report(L, st); rc = 1; }
    } else if (argv[1][0] == '-') {
        fprintf(stderr, "qlora: unknown option '%s'\n", argv[1]);
        usage(stderr);
        rc = 2;
    } else {
        if (!ql_file_exists(argv[1])) {
            /* a recipe by name: `qlora full model=...` */
            char name[1024];
            char *p = NULL;
            if (!strchr(argv[1], '/') && strlen(argv[1]) + 5 < sizeof name) {
                size_t n = strlen(argv[1]);
                snprintf(name, sizeof name, "%s%s", argv[1], n > 4 && !strcmp(argv[1] + n - 4, ".lua") ? "" : ".lua");
                p = find_recipe(name);
            }
            if (!p) {
                fprintf(stderr, "qlora: %s: no such file or recipe (`%s ls` lists the recipes)\n", argv[1], argv[0]);
                lua_close(L);
                return 2;
            }
            argv[1] = p;
        }
        set_args(L, argc, argv, 1, 2);
        rc = run_strict_file(L, argv[1]);
    }
    /* os.exit(n) in a recipe exits directly; otherwise close cleanly */
    lua_close(L);
    return rc;
}
