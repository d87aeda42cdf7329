/*
 * l_nf4.c — qlora.nf4: bitsandbytes NF4 from Lua.
 *   qlora.nf4.quantize(t) -> nf4 tensor (blocksize 64, double quantization)
 *   qlora.nf4.dequantize(q [, dtype]) -> tensor (bf16 by default)
 */
#include "qlora.h"

static int l_quantize(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    return ql_lua_pushtensor(L, ql_tensor_to(t, QL_NF4, ql_tensor_device(t)));
}

static int l_dequantize(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    ql_dtype dt = QL_BF16;
    if (!lua_isnoneornil(L, 2) && ql_dtype_parse(luaL_checkstring(L, 2), &dt) != 0)
        return luaL_error(L, "unknown dtype '%s'", lua_tostring(L, 2));
    return ql_lua_pushtensor(L, ql_tensor_to(t, dt, ql_tensor_device(t)));
}

static const luaL_Reg functions[] = { { "quantize", l_quantize }, { "dequantize", l_dequantize }, { NULL, NULL } };

int luaopen_qlora_nf4(lua_State *L)
{
    luaL_newlib(L, functions);
    return 1;
}
