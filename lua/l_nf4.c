/*
 * l_nf4.c — qlora.nf4: bitsandbytes NF4 from Lua.
 *   qlora.nf4.quantize(t [, {blocksize = 64, double_quant = true}]) -> nf4 tensor
 *   qlora.nf4.dequantize(q [, dtype = "bf16"]) -> tensor
 *   qlora.nf4.load(path) -> {name = tensor}, metadata   4-bit weights come back as nf4 tensors
 *   qlora.nf4.save(path, {name = tensor}, metadata)      nf4 tensors in the transformers 4-bit layout
 *   qlora.nf4.info(q) -> {blocksize, double_quant, nested_offset, orig_dtype}
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
    lua_newtable(L);
    for (int i = 0; i < ql_st_meta_count(f); i++) {
        lua_pushstring(L, ql_st_meta_value(f, i));
        lua_setfield(L, -2, ql_st_meta_key(f, i));
    }
    ql_st_close(f);
    return 2;
}

typedef struct { int n; ql_st_raw *raw; ql_nf4_st_store *stores; int nstores; ql_tensor **hold; int nhold; } save_state;

static int save_state_gc(lua_State *L)
{
    save_state *s = lua_touserdata(L, 1);
    for (int i = 0; i < s->nstores; i++) ql_nf4_st_entries_free(&s->stores[i]);
    for (int i = 0; i < s->nhold; i++) ql_tensor_release(s->hold[i]);
    free(s->raw); free(s->stores); free(s->hold);
    memset(s, 0, sizeof *s);
    return 0;
}

static int l_save(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int count = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) { count++; lua_pop(L, 1); }
    /* the state is a to-be-closed userdata so every path frees it */
    save_state *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    lua_newtable(L);
    lua_pushcfunction(L, save_state_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, save_state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    int state_idx = lua_gettop(L);
    lua_toclose(L, state_idx);
    s->raw = calloc((size_t)count * 6 + 1, sizeof *s->raw);
    s->stores = calloc((size_t)count + 1, sizeof *s->stores);
    s->hold = calloc((size_t)count + 1, sizeof *s->hold);
    if (!s->raw || !s->stores || !s->hold) return luaL_error(L, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "save: tensor names must be strings");
        const char *name = lua_tostring(L, -2);
        ql_tensor *t = ql_lua_checktensor(L, -1);
        if (t->dtype == QL_NF4) {
            ql_tensor *h = ql_tensor_device(t).type == QL_DEV_CPU ? ql_tensor_retain(t) : ql_tensor_to(t, QL_NF4, ql_cpu());
            if (!h) return ql_lua_error(L);
            s->hold[s->nhold++] = h;
            int k = ql_nf4_st_entries(h, name, s->raw + s->n, &s->stores[s->nstores]);
            if (k < 0) return ql_lua_error(L);
            s->nstores++;
            s->n += k;
        } else {
            ql_tensor *h = ql_tensor_device(t).type == QL_DEV_CPU ? ql_tensor_contiguous(t) : ql_tensor_to(t, t->dtype, ql_cpu());
            if (!h) return ql_lua_error(L);
            s->hold[s->nhold++] = h;
            ql_st_raw *e = &s->raw[s->n++];
            e->name = name;
            e->dtype = ql_dtype_info_of(t->dtype)->st_name;
            e->ndim = t->ndim;
            memcpy(e->shape, t->shape, sizeof t->shape);
            e->data = ql_tensor_data(h);
            e->nbytes = ql_tensor_nbytes(h);
        }
        lua_pop(L, 1);
    }
    int nm = 0;
    const char **mk = NULL, **mv = NULL;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) { nm++; lua_pop(L, 1); }
        mk = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nm + 1), 0);
        mv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nm + 1), 0);
        int j = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            mk[j] = luaL_checkstring(L, -2);
            mv[j] = luaL_checkstring(L, -1);
            j++;
            lua_pop(L, 1);
        }
    }
    if (ql_st_save_raw(path, s->n, s->raw, nm, mk, mv) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg functions[] = {
    { "quantize", l_quantize }, { "dequantize", l_dequantize }, { "info", l_info },
    { "load", l_load }, { "save", l_save },
    { NULL, NULL }
};

int luaopen_qlora_nf4(lua_State *L)
{
    luaL_newlib(L, functions);
    return 1;
}
