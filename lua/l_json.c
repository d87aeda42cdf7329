/*
 * l_json.c — qlora.json: JSON for recipes (JSONL data, trainer state, configs).
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.json) in the REPL).
 * Tables whose keys are 1..n encode as arrays, others as objects with sorted keys.
 * Numbers: integers stay integers when they fit; others are doubles (%.17g).
 */
#include "qlora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "strbuf.h"

static char null_key, array_key;

static void push_value(lua_State *L, const ql_json *v)
{
    luaL_checkstack(L, 4, "JSON nests too deep");
    switch (v->type) {
    case QL_JSON_NULL: lua_pushlightuserdata(L, &null_key); break;
    case QL_JSON_FALSE: lua_pushboolean(L, 0); break;
    case QL_JSON_TRUE: lua_pushboolean(L, 1); break;
    case QL_JSON_NUMBER: {
        double d = v->u.num;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) lua_pushinteger(L, (lua_Integer)d);
        else lua_pushnumber(L, d);
        break;
    }
    case QL_JSON_STRING: lua_pushlstring(L, v->u.str, v->n); break;
    case QL_JSON_ARRAY:
        lua_createtable(L, (int)v->n, 0);
        for (uint32_t i = 0; i < v->n; i++) { push_value(L, &v->u.items[i]); lua_seti(L, -2, i + 1); }
        break;
    case QL_JSON_OBJECT:
        lua_createtable(L, 0, (int)v->n);
        for (uint32_t i = 0; i < v->n; i++) {
            lua_pushlstring(L, v->u.items[2 * i].u.str, v->u.items[2 * i].n);
            push_value(L, &v->u.items[2 * i + 1]);
            lua_rawset(L, -3);
        }
        break;
    }
}

static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    ql_json_doc *doc;
    if (ql_json_parse(s, n, luaL_optstring(L, 2, "json"), &doc) != QL_OK) return ql_lua_fail(L);
    push_value(L, ql_json_root(doc));
    ql_json_free(doc);
    return 1;
}

/* Encoding writes into a C buffer owned by a userdata on the stack (its __gc frees
   it), never into a luaL_Buffer: the encoder pushes table entries while it runs,
   which a luaL_Buffer forbids, and an error (a NaN, a function) then frees
   everything through the collector. */
#define JBUF_MT "qlora.json.buffer"

static int jbuf_gc(lua_State *L)
{
    ql_strbuf *b = luaL_checkudata(L, 1, JBUF_MT);
    free(b->p);
    memset(b, 0, sizeof *b);
    return 0;
}

static void add_str(ql_strbuf *b, const char *s) { ql_strbuf_add(b, s, strlen(s)); }
static void add_char(ql_strbuf *b, char c) { ql_strbuf_add(b, &c, 1); }

static void enc_string(ql_strbuf *b, const char *s, size_t n)
{
    add_char(b, '"');
    size_t run = 0;   /* start of the bytes copied as they are */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        ql_strbuf_add(b, s + run, i - run);
        run = i + 1;
        char tmp[8];
        switch (c) {
        case '"': add_str(b, "\\\""); break;
        case '\\': add_str(b, "\\\\"); break;
        case '\n': add_str(b, "\\n"); break;
        case '\r': add_str(b, "\\r"); break;
        case '\t': add_str(b, "\\t"); break;
        default: snprintf(tmp, sizeof tmp, "\\u%04x", c); add_str(b, tmp);
        }
    }
    ql_strbuf_add(b, s + run, n - run);
    add_char(b, '"');
}

static int cmp_keys(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static void indent_to(ql_strbuf *b, int indent, int depth)
{
    if (indent <= 0) return;
    add_char(b, '\n');
    for (int i = 0; i < indent * depth; i++) add_char(b, ' ');
}

/* encodes the value at idx into b; leaves the stack as it found it */
static void enc(lua_State *L, ql_strbuf *b, int idx, int indent, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > 100) luaL_error(L, "json.encode: nesting deeper than 100 (a cycle?)");
    luaL_checkstack(L, 4, "json.encode: nesting too deep");
    switch (lua_type(L, idx)) {
    case LUA_TNIL: add_str(b, "null"); return;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &null_key) { add_str(b, "null"); return; }
        break;
    case LUA_TBOOLEAN: add_str(b, lua_toboolean(L, idx) ? "true" : "false"); return;
    case LUA_TNUMBER: {
        char tmp[64];
        if (lua_isinteger(L, idx)) snprintf(tmp, sizeof tmp, "%lld", (long long)lua_tointeger(L, idx));
        else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) luaL_error(L, "json.encode: %s cannot be written in JSON", d != d ? "NaN" : d > 0 ? "Inf" : "-Inf");
            snprintf(tmp, sizeof tmp, "%.17g", d);
        }
        add_str(b, tmp);
        return;
    }
    case LUA_TSTRING: { size_t n; const char *s = lua_tolstring(L, idx, &n); enc_string(b, s, n); return; }
    case LUA_TTABLE: {
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        int is_array = n > 0;
        if (!is_array && lua_getmetatable(L, idx)) {
            lua_pushlightuserdata(L, &array_key);
            lua_rawget(L, -2);
            is_array = lua_toboolean(L, -1);
            lua_pop(L, 2);
        }
        lua_Integer count = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) { count++; lua_pop(L, 1); }
        if (is_array && count == n) {
            add_char(b, '[');
            for (lua_Integer i = 1; i <= n; i++) {
                if (i > 1) add_char(b, ',');
                indent_to(b, indent, depth + 1);
                lua_rawgeti(L, idx, i);
                enc(L, b, -1, indent, depth + 1);
                lua_pop(L, 1);
            }
            if (n) indent_to(b, indent, depth);
            add_char(b, ']');
            return;
        }
        /* the sorted keys, in collectable memory so that an error cannot leak them */
        const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(count + 1), 0);
        int k = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "json.encode: object keys must be strings");
            keys[k++] = lua_tostring(L, -1);   /* stays valid: the key lives in the table */
        }
        qsort(keys, (size_t)k, sizeof *keys, cmp_keys);
        add_char(b, '{');
        for (int i = 0; i < k; i++) {
            if (i) add_char(b, ',');
            indent_to(b, indent, depth + 1);
            enc_string(b, keys[i], strlen(keys[i]));
            add_str(b, indent > 0 ? ": " : ":");
            lua_getfield(L, idx, keys[i]);
            enc(L, b, -1, indent, depth + 1);
            lua_pop(L, 1);
        }
        if (k) indent_to(b, indent, depth);
        add_char(b, '}');
        lua_pop(L, 1);   /* keys */
        return;
    }
    default: break;
    }
    luaL_error(L, "json.encode: cannot encode a %s", luaL_typename(L, idx));
}

static int l_encode(lua_State *L)
{
    int indent = 0;
    if (lua_istable(L, 2)) { lua_getfield(L, 2, "indent"); indent = (int)luaL_optinteger(L, -1, 0); lua_pop(L, 1); }
    lua_settop(L, 1);
    ql_strbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, JBUF_MT);
    enc(L, b, 1, indent, 0);
    if (b->oom) luaL_error(L, "json.encode: out of memory");
    lua_pushlstring(L, b->p ? b->p : "", b->n);
    free(b->p);   /* now rather than at the next collection */
    memset(b, 0, sizeof *b);
    return 1;
}

static int l_array(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_newtable(L);
    lua_pushlightuserdata(L, &array_key);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_setmetatable(L, 1);
    lua_settop(L, 1);
    return 1;
}

static const luaL_Reg functions[] = { { "decode", l_decode }, { "encode", l_encode }, { "array", l_array }, { NULL, NULL } };

static const ql_lua_doc docs[] = {
    { "", "JSON for recipes (JSONL data, trainer state, configs); objects encode with sorted keys" },
    { "decode", "decode(text [, name]) -> value | nil, message   (name labels errors: \"data.jsonl:12\")" },
    { "encode", "encode(value [, {indent = 2}]) -> text\n"
                "  tables with keys 1..n become arrays, others objects; integers stay integers, other numbers %.17g" },
    { "array", "array(t) -> t   marks t to encode as an array even when empty" },
    { "null", "null   (a field) what JSON null decodes to, and encodes as null" },
    { NULL, NULL }
};

int luaopen_qlora_json(lua_State *L)
{
    if (luaL_newmetatable(L, JBUF_MT)) { lua_pushcfunction(L, jbuf_gc); lua_setfield(L, -2, "__gc"); }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_pushlightuserdata(L, &null_key);
    lua_setfield(L, -2, "null");
    ql_lua_docs(L, -1, "qlora.json", "qlora.json.", docs);
    return 1;
}
