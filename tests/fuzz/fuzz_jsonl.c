/*
 * fuzz_jsonl.c — JSONL records through the Lua decoder (lua/l_json.c, as
 * qlora.train.read_jsonl uses it): each line is decoded with its file:line
 * label; a record that decodes is encoded again (compact and indented) and
 * must decode to an equal encoding. Lua errors are fine; crashes are not.
 */
#include "fuzz.h"
#include "qlora.h"

/* the two helpers of lua/qlora.c that l_json.c uses */
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

static const char script[] =
    "local json, text = ...\n"
    "local n = 0\n"
    "for line in text:gmatch('[^\\n]+') do\n"
    "  n = n + 1\n"
    "  local v, err = json.decode(line, 'data.jsonl:' .. n)\n"
    "  if v == nil then\n"
    "    if type(err) ~= 'string' or not err:find('data.jsonl:' .. n, 1, true) then\n"
    "      error('FINDING: the error does not name the line: ' .. tostring(err))\n"
    "    end\n"
    "  else\n"
    "    local ok, s = pcall(json.encode, v)\n"
    "    if ok then\n"
    "      local again, e2 = json.decode(s, 're')\n"
    "      if again == nil then error('FINDING: encode wrote what decode refuses: ' .. e2) end\n"
    "      if json.encode(again) ~= s then error('FINDING: encode/decode/encode differs') end\n"
    "      json.encode(again, { indent = 2 })\n"
    "    end\n"
    "  end\n"
    "end\n";

static lua_State *L;
static int script_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, script) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); abort(); }
    script_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, script_ref);
    luaL_requiref(L, "qlora.json", luaopen_qlora_json, 0);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        const char *e = lua_tostring(L, -1);
        /* the script's FINDING errors are findings; other Lua errors (a value encode refuses) are not */
        if (e && strstr(e, "FINDING")) {
            fprintf(stderr, "jsonl: %s\n", e);
            abort();
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    if (lua_gc(L, LUA_GCCOUNT, 0) > 64 * 1024) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
