/*
 * l_gguf.c — qlora.gguf: GGUF files (llama.cpp, Ollama) from Lua.
 *
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.gguf) in the REPL).
 * Writers raise on misuse and write errors; opening returns nil, message.
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_quant.h"

#define WRITER_MT "qlora.gguf.Writer"
#define FILE_MT "qlora.gguf.File"

typedef struct { ql_gguf_writer *w; } lwriter;
typedef struct { ql_gguf_file *f; } lfile;

/* ---------------------------------------------------------------- writer */

static ql_gguf_writer *checkw(lua_State *L)
{
    lwriter *u = luaL_checkudata(L, 1, WRITER_MT);
    if (!u->w) luaL_error(L, "this GGUF writer was closed or aborted");
    return u->w;
}

static int l_writer(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer align = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "alignment");
        align = luaL_optinteger(L, -1, 0);
        lua_pop(L, 1);
    }
    if (align < 0 || align > (1 << 30)) return luaL_error(L, "alignment %d out of range", (int)align);
    lwriter *u = lua_newuserdatauv(L, sizeof *u, 0);   /* before the resource it owns */
    u->w = NULL;
    luaL_setmetatable(L, WRITER_MT);
    u->w = ql_gguf_writer_new(path, (uint32_t)align);
    if (!u->w) return ql_lua_fail(L);
    return 1;
}

static int parse_vtype(lua_State *L, const char *s)
{
    int t = ql_gguf_vtype_parse(s);
    if (t < 0 || t == QL_GGUF_ARR)
        luaL_error(L, "unknown GGUF value type '%s' (u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str, or arr:TYPE)", s);
    return t;
}

/* packs Lua value at idx as type t into buf (8 bytes) */
static void pack(lua_State *L, int idx, int t, void *buf, const char *key)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; float f; double d; } v;
    memset(&v, 0, sizeof v);
    if (t == QL_GGUF_BOOL) {
        if (!lua_isboolean(L, idx)) luaL_error(L, "GGUF key '%s': a bool needs true or false", key);
        v.u8 = (uint8_t)lua_toboolean(L, idx);
    } else if (t == QL_GGUF_F32 || t == QL_GGUF_F64) {
        if (!lua_isnumber(L, idx)) luaL_error(L, "GGUF key '%s': expected a number", key);
        double d = lua_tonumber(L, idx);
        if (t == QL_GGUF_F32) v.f = (float)d; else v.d = d;
    } else {
        int ok;
        lua_Integer i = lua_tointegerx(L, idx, &ok);
        if (!ok) luaL_error(L, "GGUF key '%s': expected an integer", key);
        int bad = 0;
        switch (t) {
        case QL_GGUF_U8: bad = i < 0 || i > 255; v.u8 = (uint8_t)i; break;
        case QL_GGUF_I8: bad = i < -128 || i > 127; v.i8 = (int8_t)i; break;
        case QL_GGUF_U16: bad = i < 0 || i > 65535; v.u16 = (uint16_t)i; break;
        case QL_GGUF_I16: bad = i < -32768 || i > 32767; v.i16 = (int16_t)i; break;
        case QL_GGUF_U32: bad = i < 0 || i > 4294967295ll; v.u32 = (uint32_t)i; break;
        case QL_GGUF_I32: bad = i < INT32_MIN || i > INT32_MAX; v.i32 = (int32_t)i; break;
        case QL_GGUF_U64: v.u64 = (uint64_t)i; break;   /* Lua integers past 2^63 wrap, as in string.format("%u") */
        case QL_GGUF_I64: v.i64 = i; break;
        }
        if (bad) luaL_error(L, "GGUF key '%s': %I does not fit a %s", key, i, ql_gguf_vtype_name((uint32_t)t));
    }
    memcpy(buf, &v, 8);
}

static int w_kv(lua_State *L)
{
    ql_gguf_writer *w = checkw(L);
    const char *key = luaL_checkstring(L, 2);
    const char *ts = luaL_checkstring(L, 3);
    ql_status s;
    if (!strncmp(ts, "arr:", 4)) {
        int et = parse_vtype(L, ts + 4);
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_Integer n = luaL_len(L, 4);
        if (et == QL_GGUF_STR) {
            const char **ss = lua_newuserdatauv(L, sizeof *ss * (size_t)(n + 1), 0);
            size_t *lens = lua_newuserdatauv(L, sizeof *lens * (size_t)(n + 1), 0);
            for (lua_Integer i = 0; i < n; i++) {
                lua_geti(L, 4, i + 1);
                if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "GGUF key '%s': element %I is not a string", key, i + 1);
                ss[i] = lua_tolstring(L, -1, &lens[i]);
                lua_pop(L, 1);   /* the table keeps the string alive */
            }
            s = ql_gguf_writer_kv_str_array(w, key, (uint64_t)n, ss, lens);
        } else {
            size_t es = ql_gguf_vtype_size((uint32_t)et);
            uint8_t *buf = lua_newuserdatauv(L, es * (size_t)(n + 1), 0);
            for (lua_Integer i = 0; i < n; i++) {
                uint8_t tmp[8];
                lua_geti(L, 4, i + 1);
                pack(L, -1, et, tmp, key);
                memcpy(buf + (size_t)i * es, tmp, es);
                lua_pop(L, 1);
            }
            s = ql_gguf_writer_kv_array(w, key, (ql_gguf_vtype)et, (uint64_t)n, buf);
        }
    } else {
        int t = parse_vtype(L, ts);
        if (t == QL_GGUF_STR) {
            size_t len;
            const char *v = luaL_checklstring(L, 4, &len);
            s = ql_gguf_writer_kv(w, key, QL_GGUF_STR, v, len);
        } else {
            uint8_t buf[8];
            pack(L, 4, t, buf, key);
            s = ql_gguf_writer_kv(w, key, (ql_gguf_vtype)t, buf, 0);
        }
    }
    if (s != QL_OK) return ql_lua_error(L);
    lua_settop(L, 1);
    return 1;
}

static int w_tensor(lua_State *L)
{
    ql_gguf_writer *w = checkw(L);
    const char *name = luaL_checkstring(L, 2);
    const char *ts = luaL_checkstring(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    int t = ql_ggml_type_parse(ts);
    if (t < 0 || !ql_gguf_type_supported((uint32_t)t))
        return luaL_error(L, "GGUF tensor '%s': type '%s' is not one of f32, f16, bf16, q8_0, q4_K, q5_K, q6_K, q5_0, q5_1",
                          name, ts);
    lua_Integer nd = luaL_len(L, 4);
    if (nd < 1 || nd > QL_GGUF_MAX_DIMS) return luaL_error(L, "GGUF tensor '%s': 1 to 4 dimensions, not %I", name, nd);
    int64_t ne[QL_GGUF_MAX_DIMS];
    for (lua_Integer i = 0; i < nd; i++) {
        lua_geti(L, 4, i + 1);
        ne[nd - 1 - i] = (int64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    if (ql_gguf_writer_add_tensor(w, name, (ql_ggml_type)t, (int)nd, ne) != QL_OK) return ql_lua_error(L);
    lua_settop(L, 1);
    return 1;
}

static int w_begin(lua_State *L)
{
    if (ql_gguf_writer_begin(checkw(L)) != QL_OK) return ql_lua_error(L);
    lua_settop(L, 1);
    return 1;
}

static int w_write(lua_State *L)
{
    ql_gguf_writer *w = checkw(L);
    ql_status s;
    if (lua_type(L, 2) == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, 2, &n);
        s = ql_gguf_writer_write(w, p, n);
    } else {
        ql_tensor *t = ql_lua_checktensor(L, 2);
        if (ql_tensor_device(t).type != QL_DEV_CPU || !ql_tensor_is_contiguous(t)) {
            ql_tensor *c = ql_tensor_to(t, t->dtype, ql_cpu());
            ql_tensor *cc = c ? ql_tensor_contiguous(c) : NULL;
            ql_tensor_release(c);
            if (!cc) return ql_lua_error(L);
            s = ql_gguf_writer_write_tensor(w, cc);
            ql_tensor_release(cc);
        } else s = ql_gguf_writer_write_tensor(w, t);
    }
    if (s != QL_OK) return ql_lua_error(L);
    lua_settop(L, 1);
    return 1;
}

static int w_current(lua_State *L)
{
    const char *n = ql_gguf_writer_current(checkw(L));
    if (n) lua_pushstring(L, n); else lua_pushnil(L);
    return 1;
}

static int w_close(lua_State *L)
{
    lwriter *u = luaL_checkudata(L, 1, WRITER_MT);
    if (!u->w) return luaL_error(L, "this GGUF writer was closed or aborted");
    ql_gguf_writer *w = u->w;
    u->w = NULL;
    if (ql_gguf_writer_close(w) != QL_OK) return ql_lua_error(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int w_abort(lua_State *L)
{
    lwriter *u = luaL_checkudata(L, 1, WRITER_MT);
    if (u->w) { ql_gguf_writer_abort(u->w); u->w = NULL; }
    return 0;
}

/* ---------------------------------------------------------------- reader */

static ql_gguf_file *checkf(lua_State *L)
{
    lfile *u = luaL_checkudata(L, 1, FILE_MT);
    if (!u->f) luaL_error(L, "this GGUF file was closed");
    return u->f;
}

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lfile *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->f = NULL;
    luaL_setmetatable(L, FILE_MT);
    u->f = ql_gguf_open(path);
    if (!u->f) return ql_lua_fail(L);
    return 1;
}

static void push_elem(lua_State *L, const ql_gguf_kv *kv, uint32_t t, uint64_t i)
{
    switch (t) {
    case QL_GGUF_BOOL: lua_pushboolean(L, ql_gguf_kv_int(kv, i) != 0); break;
    case QL_GGUF_F32: case QL_GGUF_F64: lua_pushnumber(L, ql_gguf_kv_float(kv, i)); break;
    case QL_GGUF_STR: { uint64_t n; const char *s = ql_gguf_kv_str(kv, i, &n); lua_pushlstring(L, s ? s : "", (size_t)n); break; }
    case QL_GGUF_U64: lua_pushinteger(L, (lua_Integer)ql_gguf_kv_uint(kv, i)); break;
    case QL_GGUF_ARR: lua_newtable(L); break;   /* nested arrays are validated, not unpacked */
    default: lua_pushinteger(L, (lua_Integer)ql_gguf_kv_int(kv, i)); break;
    }
}

static void push_value(lua_State *L, const ql_gguf_kv *kv)
{
    if (kv->type != QL_GGUF_ARR) { push_elem(L, kv, kv->type, 0); return; }
    luaL_checkstack(L, 4, "GGUF array");
    lua_createtable(L, kv->n < (1u << 26) ? (int)kv->n : 0, 0);
    for (uint64_t i = 0; i < kv->n; i++) { push_elem(L, kv, kv->arr_type, i); lua_rawseti(L, -2, (lua_Integer)i + 1); }
}

static void push_type(lua_State *L, const ql_gguf_kv *kv)
{
    if (kv->type == QL_GGUF_ARR) lua_pushfstring(L, "arr:%s", ql_gguf_vtype_name(kv->arr_type));
    else lua_pushstring(L, ql_gguf_vtype_name(kv->type));
}

static int f_get(lua_State *L)
{
    const ql_gguf_kv *kv = ql_gguf_find(checkf(L), luaL_checkstring(L, 2));
    if (!kv) return 0;
    push_value(L, kv);
    push_type(L, kv);
    return 2;
}

static int f_keys(lua_State *L)
{
    ql_gguf_file *f = checkf(L);
    lua_newtable(L);
    for (int64_t i = 0; i < ql_gguf_kv_count(f); i++) {
        lua_pushstring(L, ql_gguf_kv_at(f, i)->key);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int f_kv(lua_State *L)
{
    ql_gguf_file *f = checkf(L);
    lua_newtable(L);
    lua_newtable(L);
    for (int64_t i = 0; i < ql_gguf_kv_count(f); i++) {
        const ql_gguf_kv *kv = ql_gguf_kv_at(f, i);
        push_value(L, kv);
        lua_setfield(L, -3, kv->key);
        push_type(L, kv);
        lua_setfield(L, -2, kv->key);
    }
    return 2;
}

static int f_tensors(lua_State *L)
{
    ql_gguf_file *f = checkf(L);
    lua_newtable(L);
    for (int64_t i = 0; i < ql_gguf_tensor_count(f); i++) {
        const ql_gguf_tensor_info *t = ql_gguf_tensor_at(f, i);
        lua_createtable(L, 0, 6);
        lua_pushstring(L, t->name); lua_setfield(L, -2, "name");
        lua_pushstring(L, ql_ggml_type_name(t->type)); lua_setfield(L, -2, "type");
        lua_newtable(L);
        for (uint32_t d = 0; d < t->ndim; d++) { lua_pushinteger(L, t->ne[t->ndim - 1 - d]); lua_rawseti(L, -2, d + 1); }
        lua_setfield(L, -2, "shape");
        lua_newtable(L);
        for (uint32_t d = 0; d < t->ndim; d++) { lua_pushinteger(L, t->ne[d]); lua_rawseti(L, -2, d + 1); }
        lua_setfield(L, -2, "ne");
        lua_pushinteger(L, (lua_Integer)t->offset); lua_setfield(L, -2, "offset");
        lua_pushinteger(L, (lua_Integer)t->nbytes); lua_setfield(L, -2, "nbytes");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int64_t checktensor_index(lua_State *L, ql_gguf_file *f)
{
    const char *name = luaL_checkstring(L, 2);
    int64_t i = ql_gguf_find_tensor(f, name);
    if (i < 0) luaL_error(L, "%s: no tensor '%s'", ql_gguf_path(f), name);
    return i;
}

static int f_tensor(lua_State *L)
{
    ql_gguf_file *f = checkf(L);
    return ql_lua_pushtensor(L, ql_gguf_tensor_f32(f, checktensor_index(L, f)));
}

static int f_bytes(lua_State *L)
{
    ql_gguf_file *f = checkf(L);
    int64_t i = checktensor_index(L, f);
    lua_pushlstring(L, ql_gguf_tensor_data(f, i), (size_t)ql_gguf_tensor_at(f, i)->nbytes);
    return 1;
}

static int f_version(lua_State *L) { lua_pushinteger(L, ql_gguf_version(checkf(L))); return 1; }
static int f_alignment(lua_State *L) { lua_pushinteger(L, ql_gguf_alignment(checkf(L))); return 1; }
static int f_data_offset(lua_State *L) { lua_pushinteger(L, (lua_Integer)ql_gguf_data_offset(checkf(L))); return 1; }

static int f_close(lua_State *L)
{
    lfile *u = luaL_checkudata(L, 1, FILE_MT);
    if (u->f) { ql_gguf_close(u->f); u->f = NULL; }
    return 0;
}

static uint32_t check_type(lua_State *L, int arg, uint32_t *block, uint32_t *bytes)
{
    const char *ts = luaL_checkstring(L, arg);
    int t = ql_ggml_type_parse(ts);
    if (t < 0 || !ql_gguf_type_supported((uint32_t)t))
        luaL_error(L, "GGUF type '%s' is not one of f32, f16, bf16, q8_0, q4_K, q5_K, q6_K, q5_0, q5_1", ts);
    ql_ggml_type_block((uint32_t)t, block, bytes);
    return (uint32_t)t;
}

static int quantize_as(lua_State *L, int targ, const char *tname)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    uint32_t block, bytes, ty = targ ? check_type(L, targ, &block, &bytes) : QL_GGML_Q8_0;
    if (!targ) ql_ggml_type_block(ty, &block, &bytes);
    int64_t n = ql_tensor_numel(t);
    if (n % block) return luaL_error(L, "%s needs a multiple of %d values, not %I", tname ? tname : ql_ggml_type_name(ty),
                                     (int)block, (lua_Integer)n);
    ql_tensor *f = ql_tensor_to(t, QL_F32, ql_cpu());
    ql_tensor *c = f ? ql_tensor_contiguous(f) : NULL;
    ql_tensor_release(f);
    if (!c) return ql_lua_error(L);
    size_t nb = (size_t)(n / block) * bytes;
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, nb ? nb : 1);
    ql_gguf_quantize(ty, ql_tensor_data(c), out, n);
    ql_tensor_release(c);
    luaL_pushresultsize(&b, nb);
    return 1;
}

static int l_quantize(lua_State *L) { return quantize_as(L, 2, NULL); }
static int l_release_pages(lua_State *L) { ql_gguf_release_pages(ql_lua_checktensor(L, 1)); return 0; }
static int l_quantize_q8_0(lua_State *L) { return quantize_as(L, 0, "Q8_0"); }

static int l_dequantize(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    uint32_t block, bytes, ty = check_type(L, 2, &block, &bytes);
    lua_Integer n = luaL_checkinteger(L, 3);
    if (n < 0 || n % block || (uint64_t)(n / block) * bytes != len)
        return luaL_error(L, "%s: %I values need %I bytes, the string has %I", ql_ggml_type_name(ty), n,
                          n >= 0 ? (lua_Integer)((uint64_t)(n / block) * bytes) : (lua_Integer)0, (lua_Integer)len);
    int64_t shape[1] = { (int64_t)n };
    ql_tensor *o = ql_tensor_new(QL_F32, 1, shape, ql_cpu());
    if (!o) return ql_lua_error(L);
    ql_gguf_dequantize(ty, p, ql_tensor_data(o), (int64_t)n);
    return ql_lua_pushtensor(L, o);
}

static const luaL_Reg writer_methods[] = {
    { "kv", w_kv }, { "tensor", w_tensor }, { "begin", w_begin }, { "write", w_write },
    { "current", w_current }, { "close", w_close }, { "abort", w_abort }, { NULL, NULL }
};
static const luaL_Reg file_methods[] = {
    { "version", f_version }, { "alignment", f_alignment }, { "data_offset", f_data_offset },
    { "keys", f_keys }, { "get", f_get }, { "kv", f_kv }, { "tensors", f_tensors },
    { "tensor", f_tensor }, { "bytes", f_bytes }, { "close", f_close }, { NULL, NULL }
};
static const luaL_Reg functions[] = {
    { "writer", l_writer }, { "open", l_open }, { "quantize", l_quantize }, { "dequantize", l_dequantize },
    { "quantize_q8_0", l_quantize_q8_0 }, { "release_pages", l_release_pages }, { NULL, NULL }
};

static const ql_lua_doc writer_docs[] = {
    { "", "a GGUF file being written (qlora.gguf.writer): kv and tensor declarations, begin, then each tensor's data" },
    { "kv", "kv(key, type, value)   type: u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str, or \"arr:<type>\" with a Lua array" },
    { "tensor", "tensor(name, type, shape)   declares the next tensor: type f32 f16 bf16 q8_0 q4_K q5_K q6_K q5_0 q5_1\n"
                "  (any case); shape in PyTorch order\n"
                "  ({rows, cols}), stored reversed as ggml wants" },
    { "begin", "begin()   writes the header, the key/values and the tensor infos" },
    { "write", "write(t)   the current tensor's data: a CPU tensor (f32, f16, bf16; converted to the declared type)\n"
               "  or a string of raw bytes" },
    { "current", "current() -> name   the tensor the next write goes to (nil when all are written)" },
    { "close", "close()   checks that every tensor was written, renames the file into place" },
    { "abort", "abort()   removes the temporary file (also on __gc / __close)" },
    { NULL, NULL }
};
static const ql_lua_doc file_docs[] = {
    { "", "a GGUF file open for reading (qlora.gguf.open); values are read from a mapping" },
    { "version", "version() -> n   the GGUF version" },
    { "alignment", "alignment() -> n   general.alignment (32 when absent)" },
    { "data_offset", "data_offset() -> n   where the tensor data starts" },
    { "keys", "keys() -> {key, ...}   in file order" },
    { "get", "get(key) -> value, type   nil when absent; arrays as Lua tables; type as for w:kv" },
    { "kv", "kv() -> {key = value}, {key = type}" },
    { "tensors", "tensors() -> {{name, type = \"Q8_0\", shape = {...} (PyTorch order), ne = {...}, offset, nbytes}, ...}" },
    { "tensor", "tensor(name) -> f32 tensor   dequantized: every type w:tensor takes" },
    { "bytes", "bytes(name) -> string   the tensor's raw data" },
    { "close", "close()   (also __gc / __close)" },
    { NULL, NULL }
};
static const ql_lua_doc docs[] = {
    { "", "GGUF files (llama.cpp, Ollama) from Lua; writers raise on misuse and write errors, opening returns nil, message" },
    { "writer", "writer(path [, {alignment = 32}]) -> w | nil, message   (help(w) lists its methods)" },
    { "open", "open(path) -> f | nil, message   validated; help(f) lists its methods" },
    { "quantize", "quantize(t, type) -> string   the tensor's values (row-major) in that type's blocks, as ggml's\n"
                  "  reference quantizer writes them (gguf_quant.h)" },
    { "dequantize", "dequantize(bytes, type, n) -> f32 tensor of n values" },
    { "quantize_q8_0", "quantize_q8_0(t) -> string   quantize(t, \"q8_0\")" },
    { "release_pages", "release_pages(t)   the pages of a tensor over a mapped file back to the kernel (w:write does it\n"
                       "  for what it writes; see gguf.h)" },
    { NULL, NULL }
};

int luaopen_qlora_gguf(lua_State *L)
{
    luaL_newmetatable(L, WRITER_MT);
    luaL_newlib(L, writer_methods);
    ql_lua_docs(L, -1, WRITER_MT, "w:", writer_docs);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, w_abort); lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, w_abort); lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    luaL_newmetatable(L, FILE_MT);
    luaL_newlib(L, file_methods);
    ql_lua_docs(L, -1, FILE_MT, "f:", file_docs);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, f_close); lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, f_close); lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.gguf", "qlora.gguf.", docs);
    return 1;
}
