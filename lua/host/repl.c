/*
 * repl.c — the interactive REPL: readline editing, history, multi-line input (continues
 * while the chunk is incomplete), results printed once and readably, help(), and tab
 * completion of globals and of fields after '.' or ':'.
 *
 * Keeping work: Ctrl-C on a line being typed drops that line (and a chunk being
 * continued) and gives a fresh prompt; Ctrl-C during a call interrupts the call at its
 * next Lua step (main.c's hook) and returns here with every global intact; the REPL
 * leaves only at Ctrl-D (end of input). Each line is appended to the history file as it
 * is entered ($QLORA_HISTORY, else ~/.qlora_history; QLORA_HISTORY= keeps none), so a
 * killed REPL loses nothing typed. Results go through qlora.repl (lua/qlora/repl.lua):
 * tables as short literals, and values a call already streamed (lm:generate's text) not
 * printed again; help() is qlora.help's.
 *
 * The terminal is read through readline's callback interface, so that Ctrl-C is seen
 * as a signal this file handles (readline's own handlers are off: rl_catch_signals = 0).
 * Piped input is read with plain fgets, with the same semantics.
 */
#include "repl.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "platform.h"
#include "ql.h"

static lua_State *rl_L;

/* ---------------------------------------------------------------- completion */

static char **matches;
static int nmatches, capmatches;

static void add_match(const char *prefix, const char *key, const char *sep)
{
    if (nmatches + 1 >= capmatches) {
        capmatches = capmatches ? capmatches * 2 : 64;
        char **m = realloc(matches, sizeof(char *) * (size_t)capmatches);
        if (!m) return;
        matches = m;
    }
    size_t n = strlen(prefix) + strlen(sep) + strlen(key) + 1;
    char *s = malloc(n);
    if (!s) return;
    snprintf(s, n, "%s%s%s", prefix, sep, key);
    matches[nmatches++] = s;
}

static void collect_keys(lua_State *L, int idx, const char *path, const char *sep, const char *part)
{
    idx = lua_absindex(L, idx);
    for (int round = 0; round < 2; round++) {
        int t = idx;
        if (round == 1) {  /* also the metatable's __index table (methods) */
            if (!lua_getmetatable(L, idx)) break;
            lua_getfield(L, -1, "__index");
            if (lua_iscfunction(L, -1) && lua_getupvalue(L, -1, 1)) {  /* methods kept as an upvalue */
                lua_remove(L, -2);
            }
            if (!lua_istable(L, -1)) { lua_pop(L, 2); break; }
            t = lua_gettop(L);
        } else if (!lua_istable(L, idx)) continue;
        lua_pushnil(L);
        while (lua_next(L, t)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                const char *k = lua_tostring(L, -2);
                if (!strncmp(k, part, strlen(part)) && k[0] != '_') add_match(path, k, sep);
            }
            lua_pop(L, 1);
        }
        if (round == 1) lua_pop(L, 2);
    }
}

/* fills matches for text (a light userdata); run protected: a field access may load a
   lazy module, and an error there must not take the REPL down */
static int collect_matches(lua_State *L)
{
    const char *text = lua_touserdata(L, 1);
    const char *sepp = NULL;
    for (const char *p = text; *p; p++) if (*p == '.' || *p == ':') sepp = p;
    if (!sepp) {
        lua_pushglobaltable(L);
        collect_keys(L, -1, "", "", text);
        return 0;
    }
    /* walk the path before the last separator through plain field access */
    char path[512];
    size_t n = (size_t)(sepp - text);
    if (n >= sizeof path) return 0;
    memcpy(path, text, n);
    path[n] = 0;
    lua_pushglobaltable(L);
    char *save, *tok = strtok_r(path, ".:", &save);
    while (tok && (lua_istable(L, -1) || lua_isuserdata(L, -1))) {
        if (lua_istable(L, -1)) lua_getfield(L, -1, tok);  /* may load lazy modules */
        else {
            if (!luaL_getmetafield(L, -1, "__index")) { lua_pushnil(L); }
            else if (lua_istable(L, -1)) { lua_getfield(L, -1, tok); lua_remove(L, -2); }
            else { lua_pop(L, 1); lua_pushnil(L); }
        }
        lua_remove(L, -2);
        tok = strtok_r(NULL, ".:", &save);
    }
    if (!tok) {
        char pre[520];
        memcpy(pre, text, n);
        pre[n] = 0;
        char sep[2] = { *sepp, 0 };
        collect_keys(L, -1, pre, sep, sepp + 1);
    }
    return 0;
}

static char *gen_matches(const char *text, int state)
{
    static int at;
    if (state == 0) {
        for (int i = 0; i < nmatches; i++) free(matches[i]);
        nmatches = 0;
        at = 0;
        lua_State *L = rl_L;
        int top = lua_gettop(L);
        lua_pushcfunction(L, collect_matches);
        lua_pushlightuserdata(L, (void *)text);
        lua_pcall(L, 1, 0, 0);   /* an error: no completions */
        lua_settop(L, top);
    }
    if (at < nmatches) return strdup(matches[at++]);
    return NULL;
}

static char **complete(const char *text, int start, int end)
{
    (void)start; (void)end;
    rl_attempted_completion_over = 1;
    rl_completion_append_character = '\0';   /* "qlora.ten" -> "qlora.tensor", ready for '.' */
    return rl_completion_matches(text, gen_matches);
}

/* ---------------------------------------------------------------- reading lines */

static volatile sig_atomic_t read_sigint;
static void on_read_sigint(int sig) { (void)sig; read_sigint = 1; }

static char *cb_line;
static int cb_done;
static void on_line(char *line)
{
    cb_line = line;
    cb_done = 1;
    rl_callback_handler_remove();
}

enum { READ_LINE, READ_EOF, READ_INTERRUPTED };

/* one line from the terminal into *out (malloc'd). Ctrl-C drops what was typed.
   SIGINT stays blocked except inside pselect (which unblocks it atomically) and while readline
   handles a key: a Ctrl-C that lands while readline works (echoing the last key, say) is seen
   before the next wait, instead of after a wait that nothing would end (a slow build made
   that race show: the ASan suite missed a Ctrl-C typed right after an echo). */
static int read_tty(const char *prompt, char **out)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_read_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &orig);
    read_sigint = 0;
    cb_done = 0;
    cb_line = NULL;
    int fd = fileno(rl_instream ? rl_instream : stdin), how = READ_LINE;
    rl_callback_handler_install(prompt, on_line);
    while (!cb_done) {
        int r = 0;
        if (!read_sigint) {
            fd_set fds;
            FD_ZERO(&fds);
            FD_SET(fd, &fds);
            r = pselect(fd + 1, &fds, NULL, NULL, NULL, &orig);
        }
        if (read_sigint) {   /* Ctrl-C: forget the line, keep everything else */
            read_sigint = 0;
            rl_free_line_state();
            rl_callback_sigcleanup();
            rl_callback_handler_remove();
            fputs("\n", stdout);
            fflush(stdout);
            how = READ_INTERRUPTED;
            break;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            rl_callback_handler_remove();
            break;   /* the terminal is gone: as end of input */
        }
        sigprocmask(SIG_SETMASK, &orig, NULL);
        rl_callback_read_char();
        sigprocmask(SIG_BLOCK, &block, NULL);
    }
    sigprocmask(SIG_SETMASK, &orig, NULL);
    sigaction(SIGINT, &old, NULL);
    if (how == READ_INTERRUPTED) { free(cb_line); *out = NULL; return how; }
    *out = cb_line;
    return cb_line ? READ_LINE : READ_EOF;
}

static int read_pipe(char **out)
{
    size_t cap = 256, n = 0;
    char *buf = malloc(cap);
    if (!buf) return READ_EOF;
    int c;
    while ((c = getchar()) != EOF && c != '\n') {
        if (n + 1 >= cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); return READ_EOF; }
            buf = b;
        }
        buf[n++] = (char)c;
    }
    if (c == EOF && n == 0) { free(buf); return READ_EOF; }
    buf[n] = 0;
    *out = buf;
    return READ_LINE;
}

static int tty;
static int read_line(const char *prompt, char **out) { return tty ? read_tty(prompt, out) : read_pipe(out); }

/* ---------------------------------------------------------------- history */

static char history_path[4096];

/* $QLORA_HISTORY, else ~/.qlora_history; an empty QLORA_HISTORY keeps no history */
static void open_history(void)
{
    const char *env = getenv("QLORA_HISTORY"), *home = getenv("HOME");
    if (env) snprintf(history_path, sizeof history_path, "%s", env);
    else if (home && *home) snprintf(history_path, sizeof history_path, "%s/.qlora_history", home);
    if (!*history_path) return;
    read_history(history_path);
    history_truncate_file(history_path, 5000);   /* bounded: the newest 5000 lines */
}

/* a line entered: into the list (arrow keys) and onto the end of the file, now */
static void remember(const char *chunk)
{
    if (!tty || !*chunk) return;
    HIST_ENTRY *last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
    if (last && !strcmp(last->line, chunk)) return;   /* no repeats of the line before */
    add_history(chunk);
    if (!*history_path) return;
    FILE *f = fopen(history_path, "a");   /* append_history needs the file to exist */
    if (f) fclose(f);
    if (append_history(1, history_path) != 0) {
        static int warned;
        if (!warned) fprintf(stderr, "qlora: cannot write the history file %s\n", history_path);
        warned = 1;
    }
}

/* ---------------------------------------------------------------- the loop */

static int incomplete(lua_State *L, int status)
{
    if (status == LUA_ERRSYNTAX) {
        size_t lmsg;
        const char *msg = lua_tolstring(L, -1, &lmsg);
        if (lmsg >= 5 && strcmp(msg + lmsg - 5, "<eof>") == 0) { lua_pop(L, 1); return 1; }
    }
    return 0;
}

static int repl_ref = LUA_NOREF;   /* the qlora.repl module */

/* calls qlora.repl's function `name` with the n values on top of the stack (popped) */
static void repl_call(lua_State *L, const char *name, int n)
{
    if (repl_ref == LUA_NOREF) {   /* no qlora.repl: Lua's own printing */
        if (strcmp(name, "print_results") || n == 0) { lua_pop(L, n); return; }
        lua_getglobal(L, "print");
    } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, repl_ref);
        lua_getfield(L, -1, name);
        lua_remove(L, -2);
    }
    lua_insert(L, -(n + 1));
    if (lua_pcall(L, n, 0, 0) != LUA_OK) {
        fprintf(stderr, "qlora: error printing the results: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

/* compiles a chunk: first as `return <line>` (an expression to print), else as statements,
   reading more lines while it is incomplete. Returns the load status with the function or
   the message on the stack, or -1 when Ctrl-C or the end of input dropped the chunk. */
static int compile(lua_State *L, char **chunkp)
{
    char *chunk = *chunkp;
    size_t n = strlen(chunk);
    char *code = malloc(n + 8);
    if (!code) return luaL_loadstring(L, "error('out of memory', 0)");
    snprintf(code, n + 8, "return %s", chunk);
    int status = luaL_loadbuffer(L, code, strlen(code), "=stdin");
    free(code);
    if (status == LUA_OK) return status;
    lua_pop(L, 1);
    for (;;) {
        status = luaL_loadbuffer(L, chunk, strlen(chunk), "=stdin");
        if (!incomplete(L, status)) break;
        char *more = NULL;
        int how = read_line(">> ", &more);
        if (how == READ_INTERRUPTED) { remember(chunk); *chunkp = chunk; return -1; }
        if (how == READ_EOF) { status = luaL_loadbuffer(L, chunk, strlen(chunk), "=stdin"); break; }
        size_t a = strlen(chunk), b = strlen(more);
        char *joined = malloc(a + b + 2);
        if (!joined) { free(more); status = luaL_loadbuffer(L, chunk, strlen(chunk), "=stdin"); break; }
        memcpy(joined, chunk, a);
        joined[a] = '\n';
        memcpy(joined + a + 1, more, b + 1);
        free(more);
        free(chunk);
        chunk = joined;
    }
    *chunkp = chunk;
    return status;
}

int ql_repl(lua_State *L)
{
    rl_L = L;
    rl_readline_name = "qlora";
    rl_attempted_completion_function = complete;
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^#~[]";
    rl_catch_signals = 0;   /* Ctrl-C is ours: read_tty and main.c's handler */
    tty = isatty(0);
    if (tty) open_history();
    ql_host_repl_mode(1);
    signal(SIGINT, SIG_IGN);   /* between lines and calls; read_tty and main.c's docall set their own */

    /* qlora.repl: printing, shown values, help() */
    lua_getglobal(L, "require");
    lua_pushstring(L, "qlora.repl");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) {
        if (*history_path) { lua_pushstring(L, history_path); lua_setfield(L, -2, "history_path"); }
        lua_getfield(L, -1, "help");
        lua_setglobal(L, "help");
        repl_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    } else {
        fprintf(stderr, "qlora: %s (help() and result printing are plain)\n", lua_isstring(L, -1) ? lua_tostring(L, -1) : "qlora.repl did not load");
        lua_pop(L, 1);
    }
    if (tty) printf("qlora %s — Lua 5.4 with the qlora modules. help() lists them; Ctrl-C clears or interrupts; Ctrl-D quits.\n", QL_VERSION);
    for (;;) {
        char *chunk = NULL;
        int how = read_line("qlora> ", &chunk);
        if (how == READ_INTERRUPTED) continue;
        if (how == READ_EOF) break;
        int status = compile(L, &chunk);
        if (status == -1) { lua_settop(L, 0); free(chunk); continue; }
        remember(chunk);
        free(chunk);
        if (status == LUA_OK) {
            repl_call(L, "begin", 0);
            int base = lua_gettop(L) - 1;
            status = ql_host_docall(L, 0, LUA_MULTRET);
            if (status == LUA_OK) repl_call(L, "print_results", lua_gettop(L) - base);
        }
        if (status != LUA_OK) {
            repl_call(L, "finish", 0);
            const char *msg = lua_tostring(L, -1);
            fprintf(stderr, "%s\n", msg ? msg : "(an error object that is not a string)");
            fflush(stderr);
        }
        lua_settop(L, 0);
    }
    if (tty) putchar('\n');
    ql_host_repl_mode(0);
    signal(SIGINT, SIG_DFL);
    if (repl_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, repl_ref);
    repl_ref = LUA_NOREF;
    for (int i = 0; i < nmatches; i++) free(matches[i]);
    free(matches);
    matches = NULL;
    nmatches = capmatches = 0;
    return 0;
}
