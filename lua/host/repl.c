/*
 * repl.c — the interactive REPL: readline editing and history
 * (~/.qlora_history), multi-line input (continues while the chunk is
 * incomplete), expressions printed as Lua 5.4's REPL does, help(), and tab
 * completion of globals and of fields after '.' or ':'.
 */
#include "repl.h"

#include <lauxlib.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "platform.h"
#include "ql.h"

static lua_State *rl_L;

static const char *help_lua =
    "return function(what)\n"
    "  if what == nil then\n"
    "    print('qlora ' .. qlora.version .. ' — modules (type help(qlora.NAME) for their functions):')\n"
    "    local names = {}\n"
    "    for k, v in pairs(qlora) do if type(v) == 'table' then names[#names + 1] = k end end\n"
    "    for _, k in ipairs({'tokenizer', 'pdf', 'text', 'chunk', 'dedup', 'llm', 'model', 'lora', 'train'}) do\n"
    "      if rawget(qlora, k) == nil then local ok, m = pcall(function() return qlora[k] end)\n"
    "        if ok and m then names[#names + 1] = k end end\n"
    "    end\n"
    "    table.sort(names)\n"
    "    for _, k in ipairs(names) do print('  qlora.' .. k) end\n"
    "    print('Tensors: t = qlora.tensor.randn{2, 3}; t:matmul(t.T); help(t) lists methods.')\n"
    "    print('Ctrl-D leaves; Tab completes names; history is kept in ~/.qlora_history.')\n"
    "    return\n"
    "  end\n"
    "  local keys = {}\n"
    "  local function add(t) for k in pairs(t) do if type(k) == 'string' then keys[k] = true end end end\n"
    "  if type(what) == 'table' then add(what) end\n"
    "  local mt = getmetatable(what)\n"
    "  if type(mt) == 'table' and type(mt.__index) == 'table' then add(mt.__index) end\n"
    "  if qlora.tensor.is_tensor(what) then\n"
    "    for k in pairs(qlora.tensor) do keys[k] = true end\n"
    "    for _, k in ipairs({'shape', 'dtype', 'device', 'ndim', 'T'}) do keys[k] = true end end\n"
    "  local list = {}\n"
    "  for k in pairs(keys) do list[#list + 1] = k end\n"
    "  table.sort(list)\n"
    "  print(table.concat(list, '  '))\n"
    "end\n";

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

static char *gen_matches(const char *text, int state)
{
    static int at;
    if (state == 0) {
        for (int i = 0; i < nmatches; i++) free(matches[i]);
        nmatches = 0;
        at = 0;
        lua_State *L = rl_L;
        int top = lua_gettop(L);
        const char *sepp = NULL;
        for (const char *p = text; *p; p++) if (*p == '.' || *p == ':') sepp = p;
        if (!sepp) {
            lua_pushglobaltable(L);
            collect_keys(L, -1, "", "", text);
        } else {
            /* walk the path before the last separator through plain field access */
            char path[512];
            size_t n = (size_t)(sepp - text);
            if (n >= sizeof path) { lua_settop(L, top); return NULL; }
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
        }
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

static void print_results(lua_State *L, int n)
{
    if (n <= 0) return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, -(n + 1));
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        fprintf(stderr, "qlora: error calling print: %s\n", lua_tostring(L, -1));
}

static char history_path[4096];

int ql_repl(lua_State *L)
{
    rl_L = L;
    rl_readline_name = "qlora";
    rl_attempted_completion_function = complete;
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^#~[]";
    const char *home = getenv("HOME");
    if (home) {
        snprintf(history_path, sizeof history_path, "%s/.qlora_history", home);
        read_history(history_path);
    }
    if (luaL_dostring(L, help_lua) == LUA_OK) lua_setglobal(L, "help");
    else lua_pop(L, 1);
    int tty = isatty(0);
    if (tty) printf("qlora %s — Lua 5.4 with the qlora modules. help() lists them; Ctrl-D quits.\n", QL_VERSION);
    for (;;) {
        char *line = tty ? readline("qlora> ") : NULL;
        if (!tty) {  /* piped input: plain reads, same semantics */
            static char buf[1 << 16];
            if (!fgets(buf, sizeof buf, stdin)) break;
            buf[strcspn(buf, "\n")] = 0;
            line = strdup(buf);
        }
        if (!line) break;
        /* first as an expression: "return <line>" */
        size_t n = strlen(line);
        char *code = malloc(n + 8);
        if (!code) { free(line); break; }
        snprintf(code, n + 8, "return %s", line);
        int status = luaL_loadbuffer(L, code, strlen(code), "=stdin");
        free(code);
        char *chunk = line;
        if (status != LUA_OK) {
            lua_pop(L, 1);
            /* as a statement, reading more lines while incomplete */
            for (;;) {
                status = luaL_loadbuffer(L, chunk, strlen(chunk), "=stdin");
                if (!incomplete(L, status)) break;
                char *more = tty ? readline(">> ") : NULL;
                if (!tty) {
                    static char buf2[1 << 16];
                    if (fgets(buf2, sizeof buf2, stdin)) { buf2[strcspn(buf2, "\n")] = 0; more = strdup(buf2); }
                }
                if (!more) { status = luaL_loadbuffer(L, chunk, strlen(chunk), "=stdin"); break; }
                size_t a = strlen(chunk), b = strlen(more);
                char *joined = malloc(a + b + 2);
                if (!joined) { free(more); break; }
                memcpy(joined, chunk, a);
                joined[a] = '\n';
                memcpy(joined + a + 1, more, b + 1);
                free(more);
                free(chunk);
                chunk = joined;
            }
        }
        if (tty && *chunk) add_history(chunk);
        if (status == LUA_OK) {
            int base = lua_gettop(L) - 1;
            status = ql_host_docall(L, 0, LUA_MULTRET);
            if (status == LUA_OK) print_results(L, lua_gettop(L) - base);
        }
        if (status != LUA_OK) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_settop(L, 0);
        free(chunk);
    }
    if (tty) {
        putchar('\n');
        if (*history_path) write_history(history_path);
    }
    for (int i = 0; i < nmatches; i++) free(matches[i]);
    free(matches);
    return 0;
}
