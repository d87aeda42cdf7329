/*
 * l_nf4.c — qlora.nf4: bitsandbytes NF4 from Lua.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.nf4) in the REPL).
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "nf4_io.h"
#include "safetensors.h"

static int l_quantize(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int bs = 64, dq = 1;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "blocksize");
        bs = (int)luaL_optinteger(L, -1, 64);
        lua_getfield(L, 2, "double_quant");
        if (!lua_isnil(L, -1)) dq = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    return ql_lua_pushtensor(L, ql_tensor_quantize_nf4(t, bs, dq, ql_tensor_device(t)));
}

static int l_dequantize(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    ql_dtype dt = QL_BF16;
    if (!lua_isnoneornil(L, 2) && ql_dtype_parse(luaL_checkstring(L, 2), &dt) != 0)
        return luaL_error(L, "unknown dtype '%s'", lua_tostring(L, 2));
    return ql_lua_pushtensor(L, ql_tensor_to(t, dt, ql_tensor_device(t)));
}

static int l_info(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (t->dtype != QL_NF4 || !t->quant) return luaL_error(L, "info: not an nf4 tensor");
    lua_newtable(L);
    lua_pushinteger(L, t->quant->blocksize); lua_setfield(L, -2, "blocksize");
    lua_pushboolean(L, t->quant->double_quant); lua_setfield(L, -2, "double_quant");
    lua_pushnumber(L, t->quant->nested_offset); lua_setfield(L, -2, "nested_offset");
    lua_pushstring(L, ql_dtype_name(t->quant->orig_dtype)); lua_setfield(L, -2, "orig_dtype");
    return 1;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    ql_st_file *f = ql_st_open(path);
    if (!f) return ql_lua_fail(L);
    lua_newtable(L);
    int n = ql_st_count(f);
    /* first the 4-bit weights, then every entry that is not part of one */
    char *skip = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!skip) { ql_st_close(f); return luaL_error(L, "out of memory"); }
    static const char *subs[] = { "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state.bitsandbytes__nf4" };
    for (int i = 0; i < n; i++) {
        const char *name = ql_st_name(f, i);
        if (!ends_with(name, ".quant_state.bitsandbytes__nf4")) continue;
        size_t klen = strlen(name) - strlen(".quant_state.bitsandbytes__nf4");
        char *key = malloc(klen + 1);
        if (!key) break;
        memcpy(key, name, klen);
        key[klen] = 0;
        ql_tensor *t = ql_nf4_st_read(f, key);
        if (!t) { free(key); free(skip); ql_st_close(f); return ql_lua_fail(L); }
        ql_lua_pushtensor(L, t);
        lua_setfield(L, -2, key);
        int k = ql_st_find(f, key);
        if (k >= 0) skip[k] = 1;
        for (size_t s = 0; s < sizeof subs / sizeof subs[0]; s++) {
            char sub[1024];
            snprintf(sub, sizeof sub, "%s.%s", key, subs[s]);
            int j = ql_st_find(f, sub);
            if (j >= 0) skip[j] = 1;
        }
        free(key);
    }
    for (int i = 0; i < n; i++) {
        if (skip[i]) continue;
        ql_tensor *t = ql_st_tensor(f, i);
        if (!t) { free(skip); ql_st_close(f); return ql_lua_fail(L); }
        ql_lua_pushtensor(L, t);
        lua_setfield(L, -2, ql_st_name(f, i));
    }
    free(skip);
    ql_lua_push_metadata(L, f);
    ql_st_close(f);
    return 2;
}

static int l_save(lua_State *L) { return ql_lua_save(L, 1); }

static const luaL_Reg functions[] = {
    { "quantize", l_quantize }, { "dequantize", l_dequantize }, { "info", l_info },
    { "load", l_load }, { "save", l_save },
    { NULL, NULL }
};

static const ql_lua_doc docs[] = {
    { "", "bitsandbytes NF4 (4-bit NormalFloat), bit for bit" },
    { "quantize", "quantize(t [, {blocksize = 64, double_quant = true}]) -> nf4 tensor" },
    { "dequantize", "dequantize(q [, dtype = \"bf16\"]) -> tensor" },
    { "info", "info(q) -> {blocksize, double_quant, nested_offset, orig_dtype}" },
    { "load", "load(path) -> {name = tensor}, metadata   a safetensors file; 4-bit weights come back as nf4 tensors" },
    { "save", "save(path, {name = tensor} [, metadata]) -> true | nil, message\n"
              "  nf4 tensors in the transformers 4-bit layout, written atomically" },
    { NULL, NULL }
};

int luaopen_qlora_nf4(lua_State *L)
{
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.nf4", "qlora.nf4.", docs);
    return 1;
}
