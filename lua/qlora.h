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

/* Documentation for help(), written once beside each luaL_Reg table: rows of
   { "name", "name(args) -> results\n  what it does" }, ended by { NULL, NULL }; a row
   named "" describes the owner itself, a row naming no function documents a field.
   ql_lua_docs records them in package.loaded["qlora.docs"] (lua/qlora/help.lua reads it):
     fns[f] = prefix .. text, for each function f found under its name in the table at idx
     owners[owner] = {prefix =, about =, names = {...}, text = {name = text},
                      undocumented = {names of functions in the table at idx with no text}}
   owner: the module ("qlora.tensor") or the metatable's __name ("qlora.Tensor");
   prefix: how a call reads ("qlora.tensor." or "t:"). */
typedef struct { const char *name; const char *text; } ql_lua_doc;
void ql_lua_docs(lua_State *L, int idx, const char *owner, const char *prefix, const ql_lua_doc *docs);

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

/* safetensors from Lua (l_tensor.c): save(path, tensors, metadata) with or without nf4
   tensors, and the metadata table of an open file */
struct ql_st_file;
int  ql_lua_save(lua_State *L, int allow_nf4);
void ql_lua_push_metadata(lua_State *L, const struct ql_st_file *f);

/* models (l_model.c) */
struct ql_model;
struct ql_model *ql_lua_checkmodel(lua_State *L, int idx);
/* An object that works on a model (a LoRA adapter) holds it by a use count, besides
   keeping the model userdata reachable (a user value): model:release() with users only
   marks the model released (its methods then raise), and the last user's unuse frees
   the C model. use checks the model at idx like ql_lua_checkmodel. */
typedef struct ql_lua_model ql_lua_model;
ql_lua_model *ql_lua_model_use(lua_State *L, int idx);
struct ql_model *ql_lua_model_ptr(const ql_lua_model *h);
void ql_lua_model_unuse(ql_lua_model *h);
/* token ids from a Lua array, an array of rows or an integer tensor (kept in a userdata pushed on the stack) */
int32_t *ql_lua_ids(lua_State *L, int idx, int *rows, int *T);
/* positions and attention ranges for rows of length T, honouring opts.doc_lens */
void ql_lua_batch_ranges(lua_State *L, int opts, int rows, int T, int32_t *pos, int32_t *lo, int32_t *hi);
int luaopen_qlora_lora(lua_State *L);
int luaopen_qlora_json(lua_State *L);
int luaopen_qlora_gguf(lua_State *L);

#endif
