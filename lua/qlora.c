/*
 * qlora.c — the `qlora` Lua module: a table whose fields are the submodules.
 * `require "qlora"` from the qlora host or from a stock lua5.4 (through
 * qlora.so) gives the same table. Pure-Lua submodules (lua/qlora/NAME.lua) are
 * loaded lazily through package.path on first access.
 */
#include "qlora.h"

#include <stdio.h>
#include <string.h>

#include "platform.h"

int ql_lua_error(lua_State *L)
{
    const char *m = ql_last_error();
    return luaL_error(L, "%s", m && *m ? m : "qlora: unknown error");
}

int ql_lua_fail(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, ql_last_error());
    return 2;
}


static const luaL_Reg native[] = {
    { "tensor", luaopen_qlora_tensor },
    { "device", luaopen_qlora_device },
    { "nf4", luaopen_qlora_nf4 },
    { "sys", luaopen_qlora_sys },
#ifndef QL_NO_PDF   /* the GPU test bundle leaves MuPDF out to stay small */
    { "pdf", luaopen_qlora_pdf },
    { "text", luaopen_qlora_text },
#endif
    { "model", luaopen_qlora_model },
    { "tokenizer", luaopen_qlora_tokenizer },
    { "lora", luaopen_qlora_lora },
    { "json", luaopen_qlora_json },
    { "gguf", luaopen_qlora_gguf },
    /* modules of later issues register here */
    { NULL, NULL }
};

/* qlora.X for X not native: require("qlora.X") from lua/qlora/X.lua */
static int lazy_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    if (strchr(k, '.') || k[0] == '_') return 0;
    lua_getglobal(L, "require");
    lua_pushfstring(L, "qlora.%s", k);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        const char *e = lua_tostring(L, -1);
        if (e && strstr(e, "not found")) { lua_pop(L, 1); return 0; }
        return lua_error(L);
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* adds the lua/ folder of the source tree or installation to package.path so
   lua/qlora/NAME.lua are found: <exe>/../lua (bin/qlora) or <exe>/../../lua
   (bin/asan/qlora, bin/debug/qlora) */
static void add_lua_path(lua_State *L)
{
    const char *dir = ql_exe_dir();
    if (!dir || !*dir) return;
    char probe[4200], root[4200] = "";
    const char *ups[] = { "/..", "/../..", "/../share/qlora" };
    for (size_t i = 0; i < sizeof ups / sizeof ups[0] && !root[0]; i++) {
        snprintf(probe, sizeof probe, "%s%s/lua/qlora", dir, ups[i]);
        if (ql_is_dir(probe)) snprintf(root, sizeof root, "%s%s/lua", dir, ups[i]);
    }
    if (!root[0]) return;
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1)) { lua_pop(L, 1); return; }
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", root, root, old ? old : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

int luaopen_qlora(lua_State *L)
{
    add_lua_path(L);
    lua_newtable(L);
    for (const luaL_Reg *r = native; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_call(L, 0, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_pushstring(L, QL_VERSION);
    lua_setfield(L, -2, "version");
    lua_newtable(L);
    lua_pushcfunction(L, lazy_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    /* make require("qlora.tensor") etc. return the native submodules too */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    for (const luaL_Reg *r = native; r->name; r++) {
        char name[64];
        snprintf(name, sizeof name, "qlora.%s", r->name);
        lua_getfield(L, -3, r->name);
        lua_setfield(L, -2, name);
    }
    lua_pop(L, 2);
    return 1;
}
