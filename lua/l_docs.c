/*
 * l_docs.c — ql_lua_docs (qlora.h): the documentation of each binding, registered beside its
 * luaL_Reg table, for help() in the REPL (lua/qlora/help.lua). Its own file so that anything
 * linking one binding (a fuzz target) needs nothing else.
 */
#include "qlora.h"

#include <string.h>

void ql_lua_docs(lua_State *L, int idx, const char *owner, const char *prefix, const ql_lua_doc *docs)
{
    idx = lua_absindex(L, idx);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    luaL_getsubtable(L, -1, "qlora.docs");
    int root = lua_gettop(L);
    luaL_getsubtable(L, root, "fns");
    int fns = lua_gettop(L);
    luaL_getsubtable(L, root, "owners");
    lua_createtable(L, 0, 5);                       /* owners[owner] */
    int own = lua_gettop(L);
    lua_pushstring(L, prefix); lua_setfield(L, own, "prefix");
    lua_newtable(L); int names = lua_gettop(L);
    lua_newtable(L); int text = lua_gettop(L);
    int n = 0;
    for (const ql_lua_doc *d = docs; d->name; d++) {
        if (!*d->name) { lua_pushstring(L, d->text); lua_setfield(L, own, "about"); continue; }
        lua_getfield(L, idx, d->name);
        int is_fn = lua_isfunction(L, -1);
        lua_pop(L, 1);
        size_t np = strlen(prefix);
        if (!is_fn && np && prefix[np - 1] == ':') {   /* a field of an object: t.shape, not t:shape */
            lua_pushlstring(L, prefix, np - 1);
            lua_pushfstring(L, "%s.%s", lua_tostring(L, -1), d->text);
            lua_remove(L, -2);
        } else lua_pushfstring(L, "%s%s", prefix, d->text);
        lua_pushvalue(L, -1);
        lua_setfield(L, text, d->name);
        lua_pushstring(L, d->name); lua_rawseti(L, names, ++n);
        lua_getfield(L, idx, d->name);
        if (lua_isfunction(L, -1) && lua_rawget(L, fns) == LUA_TNIL) {   /* the first owner's text wins */
            lua_pop(L, 1);
            lua_getfield(L, idx, d->name);
            lua_pushvalue(L, -2);
            lua_rawset(L, fns);
        } else lua_pop(L, 1);
        lua_pop(L, 1);
    }
    lua_setfield(L, own, "text");
    lua_setfield(L, own, "names");
    lua_newtable(L);                                /* functions the rows left out */
    int und = lua_gettop(L), nu = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1) && lua_tostring(L, -2)[0] != '_') {
            lua_pushvalue(L, -1);
            if (lua_rawget(L, fns) == LUA_TNIL) { lua_pushvalue(L, -3); lua_rawseti(L, und, ++nu); }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_setfield(L, own, "undocumented");
    lua_setfield(L, -2, owner);
    lua_settop(L, root - 2);
}
