/*
 * l_tokenizer.c — qlora.tokenizer: HF tokenizer.json tokenizers from Lua.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.tokenizer) in the REPL).
 * Ids are the model's ids (0-based), not Lua indices.
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int luaopen_qlora_tokenizer(lua_State *L);

#define TOK_MT "qlora.Tokenizer"

typedef struct { ql_tokenizer *t; } tok_box;

static ql_tokenizer *check_tok(lua_State *L, int idx)
{
    tok_box *b = luaL_checkudata(L, idx, TOK_MT);
    if (!b->t) luaL_error(L, "tokenizer: used after close()");
    return b->t;
}

static int opt_bool(lua_State *L, int idx, const char *key, int dflt)
{
    if (!lua_istable(L, idx)) return dflt;
    lua_getfield(L, idx, key);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static void push_ids(lua_State *L, const ql_tok_ids *v)
{
    lua_createtable(L, (int)v->n, 0);
    for (size_t i = 0; i < v->n; i++) {
        lua_pushinteger(L, v->ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static int l_load(lua_State *L)
{
    size_t len;
    const char *arg = luaL_checklstring(L, 1, &len);
    ql_tokenizer *t = NULL;
    ql_status s;
    size_t i = 0;
    while (i < len && (arg[i] == ' ' || arg[i] == '\n' || arg[i] == '\t' || arg[i] == '\r')) i++;
    if (i < len && arg[i] == '{') s = ql_tokenizer_from_json(arg, len, NULL, 0, "tokenizer.json (string)", &t);
    else s = ql_tokenizer_load(arg, &t);
    if (s != QL_OK) return ql_lua_fail(L);
    tok_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->t = t;
    luaL_setmetatable(L, TOK_MT);
    return 1;
}

static int l_encode(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    ql_tok_ids v = { 0 };
    if (ql_tokenizer_encode(t, s, len, opt_bool(L, 3, "add_special", 1), &v) != QL_OK) {
        ql_tok_ids_free(&v);
        return ql_lua_error(L);
    }
    push_ids(L, &v);
    ql_tok_ids_free(&v);
    return 1;
}

static int l_count(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    size_t len, n = 0;
    const char *s = luaL_checklstring(L, 2, &len);
    if (ql_tokenizer_count(t, s, len, opt_bool(L, 3, "add_special", 1), &n) != QL_OK) return ql_lua_error(L);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int l_encode_batch(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, 2);
    int add = opt_bool(L, 3, "add_special", 1);
    /* the strings stay referenced by the argument table while we encode */
    const char **texts = malloc((n + 1) * sizeof *texts);
    size_t *lens = malloc((n + 1) * sizeof *lens);
    ql_tok_ids *outs = calloc(n + 1, sizeof *outs);
    if (!texts || !lens || !outs) { free(texts); free(lens); free(outs); return luaL_error(L, "encode_batch: out of memory"); }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            free(texts); free(lens); free(outs);
            return luaL_error(L, "encode_batch: item %d is a %s, expected a string", (int)i + 1, luaL_typename(L, -1));
        }
        texts[i] = lua_tolstring(L, -1, &lens[i]);
        lua_pop(L, 1);
    }
    ql_status s = ql_tokenizer_encode_batch(t, texts, lens, n, add, outs);
    free(texts); free(lens);
    if (s != QL_OK) {
        for (size_t i = 0; i < n; i++) ql_tok_ids_free(&outs[i]);
        free(outs);
        return ql_lua_error(L);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        push_ids(L, &outs[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
        ql_tok_ids_free(&outs[i]);
    }
    free(outs);
    return 1;
}

static int l_decode(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, 2);
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) return luaL_error(L, "decode: out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        lua_pop(L, 1);
        if (!ok || v < INT32_MIN || v > INT32_MAX) {
            free(ids);
            return luaL_error(L, "decode: item %d is not an integer token id", (int)i + 1);
        }
        ids[i] = (int32_t)v;
    }
    char *out = NULL;
    size_t olen = 0;
    ql_status s = ql_tokenizer_decode(t, ids, n, opt_bool(L, 3, "skip_special", 0), &out, &olen);
    free(ids);
    if (s != QL_OK) return ql_lua_error(L);
    lua_pushlstring(L, out, olen);
    free(out);
    return 1;
}

static const char *field_str(lua_State *L, int idx, const char *key)
{
    lua_getfield(L, idx, key);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1); /* the string stays alive: it is referenced by the message table */
    return s;
}

/* does message table m hold only role, content and reasoning_content strings? */
static int plain_message(lua_State *L, int m)
{
    int plain = 1;
    lua_pushnil(L);
    while (lua_next(L, m)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!k || lua_type(L, -1) != LUA_TSTRING ||
            (strcmp(k, "role") && strcmp(k, "content") && strcmp(k, "reasoning_content"))) plain = 0;
        lua_pop(L, 1);
    }
    return plain;
}

/* the JSON text of the value at idx (strings are taken as JSON text already), pushed on the
   stack; enc is the stack index of qlora.json.encode */
static const char *to_json(lua_State *L, int idx, int enc)
{
    if (lua_type(L, idx) == LUA_TSTRING) { lua_pushvalue(L, idx); return lua_tostring(L, -1); }
    lua_pushvalue(L, enc);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    return lua_tostring(L, -1);
}

static int l_apply_chat(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, 2);
    /* a scratch table keeps the JSON strings made here alive; created before the C array */
    lua_newtable(L);
    int keep = lua_gettop(L);
    lua_pushcfunction(L, luaopen_qlora_json);   /* qlora.json.encode, fetched once */
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "encode");
    lua_remove(L, -2);
    int enc = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        if (!lua_istable(L, -1)) return luaL_error(L, "apply_chat_template: message %d is not a table", (int)i + 1);
        lua_getfield(L, -1, "role");
        int has_role = lua_type(L, -1) == LUA_TSTRING;
        lua_pop(L, 1);
        if (!has_role) return luaL_error(L, "apply_chat_template: message %d has no string 'role'", (int)i + 1);
        if (!plain_message(L, lua_gettop(L))) { to_json(L, lua_gettop(L), enc); lua_rawseti(L, keep, (lua_Integer)i + 1); }
        lua_pop(L, 1);
    }
    ql_chat_opts o = { 0 };
    o.add_generation_prompt = opt_bool(L, 3, "add_generation_prompt", 0);
    o.enable_thinking = opt_bool(L, 3, "enable_thinking", 1);
    int tokenize = opt_bool(L, 3, "tokenize", 0);
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "tools");
        /* an empty table is an empty list of tools: no tools (JSON would make it an object) */
        int no_tools = lua_isnil(L, -1);
        if (!no_tools && lua_istable(L, -1)) {
            lua_pushnil(L);
            if (lua_next(L, -2)) lua_pop(L, 2);
            else no_tools = 1;
        }
        if (!no_tools) { o.tools_json = to_json(L, lua_gettop(L), enc); lua_rawseti(L, keep, -1); }
        lua_pop(L, 1);
        lua_getfield(L, 3, "vars");
        if (!lua_isnil(L, -1)) { o.vars_json = to_json(L, lua_gettop(L), enc); lua_rawseti(L, keep, -2); }
        lua_pop(L, 1);
        lua_getfield(L, 3, "now");
        if (!lua_isnil(L, -1)) o.now = (int64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    ql_chat_msg *msgs = calloc(n + 1, sizeof *msgs);
    if (!msgs) return luaL_error(L, "apply_chat_template: out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, keep, (lua_Integer)i + 1);
        msgs[i].json = lua_tostring(L, -1);   /* alive: referenced by the scratch table */
        lua_pop(L, 1);
        if (msgs[i].json) continue;
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        int m = lua_gettop(L);
        msgs[i].role = field_str(L, m, "role");
        msgs[i].content = field_str(L, m, "content");
        msgs[i].reasoning = field_str(L, m, "reasoning_content");
        lua_pop(L, 1); /* the message table stays referenced by the argument */
        if (!msgs[i].content) msgs[i].content = "";
    }
    char *out = NULL;
    size_t olen = 0;
    ql_status s = ql_tokenizer_apply_chat(t, msgs, n, &o, &out, &olen);
    free(msgs);
    if (s != QL_OK) return ql_lua_error(L);
    if (tokenize) {
        ql_tok_ids v = { 0 };
        s = ql_tokenizer_encode(t, out, olen, 0, &v);
        free(out);
        if (s != QL_OK) { ql_tok_ids_free(&v); return ql_lua_error(L); }
        push_ids(L, &v);
        ql_tok_ids_free(&v);
        return 1;
    }
    lua_pushlstring(L, out, olen);
    free(out);
    return 1;
}

static int l_token_to_id(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    int32_t id = ql_tokenizer_token_to_id(t, s, len);
    if (id < 0) lua_pushnil(L); else lua_pushinteger(L, id);
    return 1;
}

static int l_id_to_token(lua_State *L)
{
    ql_tokenizer *t = check_tok(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2);
    size_t len;
    const char *s = (id >= 0 && id <= INT32_MAX) ? ql_tokenizer_id_to_token(t, (int32_t)id, &len) : NULL;
    if (s) lua_pushlstring(L, s, len); else lua_pushnil(L);
    return 1;
}

static int l_close(lua_State *L)
{
    tok_box *b = luaL_checkudata(L, 1, TOK_MT);
    ql_tokenizer_free(b->t);
    b->t = NULL;
    return 0;
}

static void push_opt_id(lua_State *L, int32_t id) { if (id < 0) lua_pushnil(L); else lua_pushinteger(L, id); }
static void push_opt_str(lua_State *L, const char *s) { if (s) lua_pushstring(L, s); else lua_pushnil(L); }

static const luaL_Reg methods[] = {
    { "encode", l_encode },
    { "count", l_count },
    { "encode_batch", l_encode_batch },
    { "decode", l_decode },
    { "apply_chat_template", l_apply_chat },
    { "token_to_id", l_token_to_id },
    { "id_to_token", l_id_to_token },
    { "close", l_close },
    { NULL, NULL }
};

static const ql_lua_doc method_docs[] = {
    { "", "a Hugging Face tokenizer (qlora.tokenizer.load); ids are the model's ids (0-based)" },
    { "encode", "encode(text [, {add_special = true}]) -> {ids}   as HF tokenizers gives them" },
    { "count", "count(text [, {add_special = true}]) -> n   the number of tokens" },
    { "encode_batch", "encode_batch({texts} [, {add_special = true}]) -> {{ids}, ...}   on all threads" },
    { "decode", "decode(ids [, {skip_special = false}]) -> string" },
    { "apply_chat_template", "apply_chat_template(messages [, {add_generation_prompt = false, enable_thinking = true,\n"
                             "  tokenize = false, tools = nil, vars = nil, now = nil}]) -> string | {ids}\n"
                             "  messages = {{role = \"user\", content = \"...\"}, ...}, rendered by a Jinja2 interpreter as\n"
                             "  transformers' apply_chat_template does; tools: tool schemas or their JSON; vars: more template\n"
                             "  variables; now: strftime_now's clock (seconds, UTC)" },
    { "token_to_id", "token_to_id(s) -> id | nil" },
    { "id_to_token", "id_to_token(id) -> string | nil" },
    { "close", "close()   (also __gc / __close)" },
    { "vocab_size", "vocab_size   (a field) the number of ids" },
    { "bos_id", "bos_id, eos_id, pad_id   (fields) special token ids, or nil" },
    { "bos_token", "bos_token, eos_token, pad_token, unk_token   (fields) special token strings, or nil" },
    { "chat_template", "chat_template   (a field) chat_template.jinja beside the tokenizer, else tokenizer_config.json's, or nil" },
    { NULL, NULL }
};
static const ql_lua_doc docs[] = {
    { "", "Hugging Face tokenizer.json tokenizers, identical ids to HF tokenizers, and chat templates" },
    { "load", "load(dir_or_json) -> tok | nil, message\n"
              "  a folder with tokenizer.json (+ tokenizer_config.json), the path of a tokenizer.json, or the JSON text" },
    { NULL, NULL }
};

static int l_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    for (const luaL_Reg *r = methods; r->name; r++)
        if (!strcmp(k, r->name)) { lua_pushcfunction(L, r->func); return 1; }
    ql_tokenizer *t = check_tok(L, 1);
    if (!strcmp(k, "vocab_size")) lua_pushinteger(L, ql_tokenizer_vocab_size(t));
    else if (!strcmp(k, "bos_id")) push_opt_id(L, ql_tokenizer_bos_id(t));
    else if (!strcmp(k, "eos_id")) push_opt_id(L, ql_tokenizer_eos_id(t));
    else if (!strcmp(k, "pad_id")) push_opt_id(L, ql_tokenizer_pad_id(t));
    else if (!strcmp(k, "bos_token")) push_opt_str(L, ql_tokenizer_bos_token(t));
    else if (!strcmp(k, "eos_token")) push_opt_str(L, ql_tokenizer_eos_token(t));
    else if (!strcmp(k, "pad_token")) push_opt_str(L, ql_tokenizer_pad_token(t));
    else if (!strcmp(k, "unk_token")) push_opt_str(L, ql_tokenizer_unk_token(t));
    else if (!strcmp(k, "chat_template")) push_opt_str(L, ql_tokenizer_chat_template(t));
    else lua_pushnil(L);
    return 1;
}

static int l_tostring(lua_State *L)
{
    tok_box *b = luaL_checkudata(L, 1, TOK_MT);
    if (!b->t) lua_pushstring(L, "qlora.Tokenizer (closed)");
    else lua_pushfstring(L, "qlora.Tokenizer (%d ids)", (int)ql_tokenizer_vocab_size(b->t));
    return 1;
}

int luaopen_qlora_tokenizer(lua_State *L)
{
    if (luaL_newmetatable(L, TOK_MT)) {
        lua_pushcfunction(L, l_index); lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close); lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close); lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring); lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    luaL_newlib(L, methods);   /* the methods are reached through l_index: a table of them for the docs */
    ql_lua_docs(L, -1, TOK_MT, "tok:", method_docs);
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    ql_lua_docs(L, -1, "qlora.tokenizer", "qlora.tokenizer.", docs);
    return 1;
}
