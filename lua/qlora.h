/*
 * qlora.h — shared by the Lua binding files: the module table and helpers
 * for raising engine errors.
 */
#ifndef QL_LUA_QLORA_H
#define QL_LUA_QLORA_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ql.h"
#include "tensor.h"

/* each binding file exports one of these */
int luaopen_qlora(lua_State *L);
int luaopen_qlora_tensor(lua_State *L);
int luaopen_qlora_device(lua_State *L);
int luaopen_qlora_nf4(lua_State *L);
int luaopen_qlora_sys(lua_State *L);
int luaopen_qlora_pdf(lua_State *L);
int luaopen_qlora_text(lua_State *L);
int luaopen_qlora_model(lua_State *L);
int luaopen_qlora_tokenizer(lua_State *L);

/* raises the engine's last error as a Lua error */
int ql_lua_error(lua_State *L);
/* pushes nil, message (the engine's last error) and returns 2: for expected failures */
int ql_lua_fail(lua_State *L);

/* tensors (l_tensor.c) */
#define QL_TENSOR_MT "qlora.Tensor"
ql_tensor *ql_lua_checktensor(lua_State *L, int idx);
ql_tensor *ql_lua_totensor(lua_State *L, int idx);       /* NULL when not a tensor */
/* pushes t as a Lua object, taking over the caller's reference; NULL raises the last error */
int ql_lua_pushtensor(lua_State *L, ql_tensor *t);

#endif
