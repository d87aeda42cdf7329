/*
 * l_tensor.c — qlora.tensor: tensors as Lua objects.
 *
 * Lua conventions, not Python's: dimensions and indices are 1-based, negative
 * ones count from the end (-1 is the last), and ranges include both ends as
 * in string.sub: t:slice(1, 2, 4) takes rows 2, 3 and 4. t[i] selects along
 * the first dimension. Shapes are given as a table {2, 3} or as numbers.
 * Creation functions take an options table last: {dtype = "bf16", device = "cuda"}.
 * Each function's documentation is in the docs tables beside the luaL_Reg tables
 * below (help(qlora.tensor), help(t) in the REPL).
 */
#include "qlora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "nf4_io.h"
#include "safetensors.h"

typedef struct { ql_tensor *t; } ltensor;

/* ---------------------------------------------------------------- helpers */

ql_tensor *ql_lua_totensor(lua_State *L, int idx)
{
    ltensor *u = luaL_testudata(L, idx, QL_TENSOR_MT);
    return u ? u->t : NULL;
}

ql_tensor *ql_lua_checktensor(lua_State *L, int idx)
{
    ltensor *u = luaL_checkudata(L, idx, QL_TENSOR_MT);
    if (!u->t) luaL_error(L, "this tensor was released (closed or garbage-collected)");
    return u->t;
}

int ql_lua_pushtensor(lua_State *L, ql_tensor *t)
{
    if (!t) return ql_lua_error(L);
    ltensor *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->t = t;
    luaL_setmetatable(L, QL_TENSOR_MT);
    return 1;
}

static ql_dtype opt_dtype(lua_State *L, int opts, ql_dtype def)
{
    if (opts <= 0 || !lua_istable(L, opts)) return def;
    lua_getfield(L, opts, "dtype");
    ql_dtype t = def;
    if (!lua_isnil(L, -1)) {
        const char *s = luaL_checkstring(L, -1);
        if (ql_dtype_parse(s, &t) != 0)
            luaL_error(L, "unknown dtype '%s' (use f32, f16, bf16, i32, i64, u8 or nf4)", s);
    }
    lua_pop(L, 1);
    return t;
}

static ql_device opt_device(lua_State *L, int opts, ql_device def)
{
    if (opts <= 0 || !lua_istable(L, opts)) return def;
    lua_getfield(L, opts, "device");
    ql_device d = def;
    if (!lua_isnil(L, -1) && ql_device_parse(luaL_checkstring(L, -1), &d) != QL_OK) ql_lua_error(L);
    lua_pop(L, 1);
    return d;
}

/* shape from a table at idx, or from the numbers idx..top; returns ndim; *next is the first
   argument after the shape */
static int check_shape(lua_State *L, int idx, int64_t *shape, int *next)
{
    int n = 0;
    if (lua_istable(L, idx) && !luaL_testudata(L, idx, QL_TENSOR_MT)) {
        n = (int)luaL_len(L, idx);
        if (n > QL_MAXDIM) luaL_error(L, "at most %d dimensions", QL_MAXDIM);
        for (int i = 0; i < n; i++) {
            lua_geti(L, idx, i + 1);
            if (!lua_isinteger(L, -1)) luaL_error(L, "shape entries must be integers");
            shape[i] = lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        *next = idx + 1;
        return n;
    }
    while (lua_isinteger(L, idx + n)) {
        if (n >= QL_MAXDIM) luaL_error(L, "at most %d dimensions", QL_MAXDIM);
        shape[n] = lua_tointeger(L, idx + n);
        n++;
    }
    if (n == 0 && lua_isnumber(L, idx)) luaL_error(L, "shape entries must be integers");
    *next = idx + n;
    return n;
}

static int check_dim(lua_State *L, ql_tensor *t, int arg)
{
    lua_Integer d = luaL_checkinteger(L, arg);
    if (d > 0 && d <= t->ndim) return (int)d - 1;
    if (d < 0 && -d <= t->ndim) return t->ndim + (int)d;
    return luaL_error(L, "dimension %d is out of range (the tensor has %d)", (int)d, t->ndim);
}

/* ---------------------------------------------------------------- the generator */

static uint64_t g_seed = 0x5eed;
static uint64_t g_stream = 0;

static int l_manual_seed(lua_State *L)
{
    g_seed = (uint64_t)luaL_checkinteger(L, 1);
    g_stream = 0;
    return 0;
}

/* ---------------------------------------------------------------- creation */

static int create_filled(lua_State *L, double value, int explicit_value)
{
    int64_t shape[QL_MAXDIM];
    int next, nd = check_shape(L, 1, shape, &next);
    if (explicit_value) value = luaL_checknumber(L, next++);
    ql_dtype dt = opt_dtype(L, next, QL_F32);
    ql_device dev = opt_device(L, next, ql_cpu());
    return ql_lua_pushtensor(L, ql_tensor_full(dt, nd, shape, value, dev));
}
static int l_zeros(lua_State *L) { return create_filled(L, 0, 0); }
static int l_ones(lua_State *L) { return create_filled(L, 1, 0); }
static int l_full(lua_State *L) { return create_filled(L, 0, 1); }

static int l_empty(lua_State *L)
{
    int64_t shape[QL_MAXDIM];
    int next, nd = check_shape(L, 1, shape, &next);
    return ql_lua_pushtensor(L, ql_tensor_new(opt_dtype(L, next, QL_F32), nd, shape, opt_device(L, next, ql_cpu())));
}

static int l_arange(lua_State *L)
{
    int top = lua_gettop(L), opts = lua_istable(L, top) ? top : 0, nargs = opts ? top - 1 : top;
    double start = 0, stop, step = 1;
    if (nargs == 1) stop = luaL_checknumber(L, 1);
    else { start = luaL_checknumber(L, 1); stop = luaL_checknumber(L, 2); if (nargs >= 3) step = luaL_checknumber(L, 3); }
    int all_int = lua_isinteger(L, 1) && (nargs < 2 || lua_isinteger(L, 2)) && (nargs < 3 || lua_isinteger(L, 3));
    ql_dtype dt = opt_dtype(L, opts, all_int ? QL_I64 : QL_F32);
    return ql_lua_pushtensor(L, ql_tensor_arange(start, stop, step, dt, opt_device(L, opts, ql_cpu())));
}

static int create_random(lua_State *L, int normal)
{
    int64_t shape[QL_MAXDIM];
    int next, nd = check_shape(L, 1, shape, &next);
    uint64_t seed = g_seed, stream;
    int have_seed = 0;
    if (lua_istable(L, next)) {
        lua_getfield(L, next, "seed");
        if (!lua_isnil(L, -1)) { seed = (uint64_t)luaL_checkinteger(L, -1); have_seed = 1; }
        lua_pop(L, 1);
    }
    stream = have_seed ? 0 : g_stream++;
    if (lua_istable(L, next)) {
        lua_getfield(L, next, "stream");
        if (!lua_isnil(L, -1)) stream = (uint64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    return ql_lua_pushtensor(L, ql_tensor_rand(opt_dtype(L, next, QL_F32), nd, shape, normal, seed, stream,
                                               opt_device(L, next, ql_cpu())));
}
static int l_rand(lua_State *L) { return create_random(L, 0); }
static int l_randn(lua_State *L) { return create_random(L, 1); }

/* nested Lua table -> shape; fills *count */
static int table_shape(lua_State *L, int idx, int64_t *shape, int depth)
{
    if (depth >= QL_MAXDIM) return luaL_error(L, "table nests deeper than %d levels", QL_MAXDIM);
    lua_Integer n = luaL_len(L, idx);
    shape[depth] = n;
    if (n == 0) return depth + 1;
    lua_geti(L, idx, 1);
    int nd = depth + 1;
    if (lua_istable(L, -1)) nd = table_shape(L, lua_gettop(L), shape, depth + 1);
    else if (!lua_isnumber(L, -1) && !lua_isboolean(L, -1)) luaL_error(L, "tensor tables hold numbers, not %s", luaL_typename(L, -1));
    lua_pop(L, 1);
    return nd;
}

static void table_fill(lua_State *L, int idx, const int64_t *shape, int nd, int depth, double *out, int64_t *pos, int *ints)
{
    lua_Integer n = luaL_len(L, idx);
    if (n != shape[depth]) luaL_error(L, "ragged table: a row at depth %d has %d entries, expected %d", depth + 1, (int)n, (int)shape[depth]);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, idx, i);
        if (depth + 1 < nd) {
            if (!lua_istable(L, -1)) luaL_error(L, "ragged table: expected a row at depth %d", depth + 2);
            table_fill(L, lua_gettop(L), shape, nd, depth + 1, out, pos, ints);
        } else {
            if (lua_istable(L, -1)) luaL_error(L, "ragged table: unexpected row at depth %d", depth + 2);
            if (lua_isboolean(L, -1)) out[(*pos)++] = lua_toboolean(L, -1);
            else {
                if (!lua_isinteger(L, -1)) *ints = 0;
                out[(*pos)++] = luaL_checknumber(L, -1);
            }
        }
        lua_pop(L, 1);
    }
}

static int l_from(lua_State *L)
{
    if (lua_isnumber(L, 1)) {  /* scalar -> 0-d */
        double v = lua_tonumber(L, 1);
        ql_dtype dt = opt_dtype(L, 2, lua_isinteger(L, 1) ? QL_I64 : QL_F32);
        return ql_lua_pushtensor(L, ql_tensor_full(dt, 0, NULL, v, opt_device(L, 2, ql_cpu())));
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    int64_t shape[QL_MAXDIM];
    int nd = table_shape(L, 1, shape, 0);
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= shape[d];
    /* a userdata buffer: a Lua error while filling cannot leak it */
    double *buf = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof(double), 0);
    int64_t pos = 0;
    int ints = 1;
    table_fill(L, 1, shape, nd, 0, buf, &pos, &ints);
    ql_dtype dt = opt_dtype(L, 2, ints ? QL_I64 : QL_F32);
    ql_device dev = opt_device(L, 2, ql_cpu());
    /* exact for i64 up to 2^53; floats round from double through f32 */
    ql_tensor *t;
    if (dt == QL_I64 || dt == QL_I32 || dt == QL_U8) {
        int64_t *ib = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
        if (!ib) return luaL_error(L, "out of memory");
        for (int64_t i = 0; i < n; i++) ib[i] = (int64_t)buf[i];
        t = ql_tensor_from_host(dt, nd, shape, ib, QL_I64, dev);
        free(ib);
    } else {
        float *fb = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
        if (!fb) return luaL_error(L, "out of memory");
        for (int64_t i = 0; i < n; i++) fb[i] = (float)buf[i];
        t = ql_tensor_from_host(dt, nd, shape, fb, QL_F32, dev);
        free(fb);
    }
    return ql_lua_pushtensor(L, t);
}

/* ---------------------------------------------------------------- conversion to Lua */

static ql_tensor *host_copy(lua_State *L, ql_tensor *t)
{
    ql_tensor *h = t;
    if (t->dtype == QL_NF4) h = ql_tensor_to(t, QL_F32, ql_cpu());
    else if (ql_tensor_device(t).type != QL_DEV_CPU) h = ql_tensor_to(t, t->dtype, ql_cpu());
    else ql_tensor_retain(t);
    if (!h) ql_lua_error(L);
    return h;
}

static void push_elem(lua_State *L, const ql_tensor *h, int64_t i)
{
    double v = ql_tensor_get_flat(h, i);
    if (h->dtype == QL_I64) {
        int64_t off = ql_offset_of(h, i);
        lua_pushinteger(L, ((const int64_t *)h->storage->data)[off]);
    } else if (!ql_dtype_info_of(h->dtype)->is_float) lua_pushinteger(L, (lua_Integer)v);
    else lua_pushnumber(L, v);
}

static void push_nested(lua_State *L, const ql_tensor *h, int depth, int64_t *pos)
{
    if (depth == h->ndim) { push_elem(L, h, (*pos)++); return; }
    lua_createtable(L, (int)h->shape[depth], 0);
    for (int64_t i = 0; i < h->shape[depth]; i++) {
        push_nested(L, h, depth + 1, pos);
        lua_seti(L, -2, i + 1);
    }
}

static int m_totable(lua_State *L)
{
    ql_tensor *h = host_copy(L, ql_lua_checktensor(L, 1));
    int64_t pos = 0;
    luaL_checkstack(L, h->ndim + 4, "tensor too deep");
    push_nested(L, h, 0, &pos);
    ql_tensor_release(h);
    return 1;
}

static int m_item(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (ql_tensor_numel(t) != 1) {
        char s[128];
        ql_shape_str(t, s, sizeof s);
        return luaL_error(L, "item() needs a tensor with one element, this one is %s", s);
    }
    ql_tensor *h = host_copy(L, t);
    push_elem(L, h, 0);
    ql_tensor_release(h);
    return 1;
}

/* ---------------------------------------------------------------- printing */

static void fmt_num(luaL_Buffer *b, const ql_tensor *h, int64_t i, int width)
{
    char s[64];
    if (!ql_dtype_info_of(h->dtype)->is_float) {
        if (h->dtype == QL_I64) snprintf(s, sizeof s, "%*lld", width, (long long)((const int64_t *)h->storage->data)[ql_offset_of(h, i)]);
        else snprintf(s, sizeof s, "%*lld", width, (long long)ql_tensor_get_flat(h, i));
    } else {
        double v = ql_tensor_get_flat(h, i);
        snprintf(s, sizeof s, "%*.4f", width, v);
    }
    luaL_addstring(b, s);
}

static void fmt_rec(luaL_Buffer *b, const ql_tensor *h, int depth, int64_t base, int width, int indent)
{
    int64_t n = h->shape[depth], inner = 1;
    for (int d = depth + 1; d < h->ndim; d++) inner *= h->shape[d];
    luaL_addchar(b, '[');
    int elide = n > 6;
    for (int64_t i = 0; i < n; i++) {
        if (elide && i == 3) {
            luaL_addstring(b, depth == h->ndim - 1 ? ", ..." : ",\n");
            if (depth != h->ndim - 1) { for (int k = 0; k < indent + 1; k++) luaL_addchar(b, ' '); luaL_addstring(b, "..."); }
            i = n - 3;
        }
        if (i) {
            luaL_addchar(b, ',');
            if (depth == h->ndim - 1) luaL_addchar(b, ' ');
            else {
                for (int k = depth; k < h->ndim - 1; k++) luaL_addchar(b, '\n');
                for (int k = 0; k < indent + 1; k++) luaL_addchar(b, ' ');
            }
        }
        if (depth == h->ndim - 1) fmt_num(b, h, base + i, width);
        else fmt_rec(b, h, depth + 1, base + i * inner, width, indent + 1);
    }
    luaL_addchar(b, ']');
}

static int m_tostring(lua_State *L)
{
    ltensor *u = luaL_checkudata(L, 1, QL_TENSOR_MT);
    if (!u->t) { lua_pushstring(L, "tensor(released)"); return 1; }
    ql_tensor *t = u->t;
    char shp[160], dev[32];
    ql_shape_str(t, shp, sizeof shp);
    ql_device_str(ql_tensor_device(t), dev, sizeof dev);
    luaL_Buffer b;
    ql_tensor *h = host_copy(L, t);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "tensor(");
    int64_t n = ql_tensor_numel(h);
    int width = 0;
    /* width from the magnitudes shown */
    for (int64_t i = 0; i < n && i < 4096; i++) {
        char s[64];
        double v = ql_tensor_get_flat(h, i);
        int w = ql_dtype_info_of(h->dtype)->is_float ? snprintf(s, sizeof s, "%.4f", v) : snprintf(s, sizeof s, "%lld", (long long)v);
        if (w > width) width = w;
    }
    if (h->ndim == 0) fmt_num(&b, h, 0, 0);
    else fmt_rec(&b, h, 0, 0, width, 7);
    ql_tensor_release(h);
    luaL_addstring(&b, ", shape=");
    luaL_addstring(&b, shp);
    luaL_addstring(&b, ", dtype=");
    luaL_addstring(&b, ql_dtype_name(t->dtype));
    luaL_addstring(&b, ", device=");
    luaL_addstring(&b, dev);
    luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    return 1;
}

/* ---------------------------------------------------------------- properties and views */

static void push_shape(lua_State *L, const ql_tensor *t)
{
    lua_createtable(L, t->ndim, 0);
    for (int d = 0; d < t->ndim; d++) { lua_pushinteger(L, t->shape[d]); lua_seti(L, -2, d + 1); }
}

static int m_size(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) { push_shape(L, t); return 1; }
    lua_pushinteger(L, t->shape[check_dim(L, t, 2)]);
    return 1;
}
static int m_numel(lua_State *L) { lua_pushinteger(L, ql_tensor_numel(ql_lua_checktensor(L, 1))); return 1; }
static int m_dim(lua_State *L) { lua_pushinteger(L, ql_lua_checktensor(L, 1)->ndim); return 1; }
static int m_is_contiguous(lua_State *L) { lua_pushboolean(L, ql_tensor_is_contiguous(ql_lua_checktensor(L, 1))); return 1; }
static int m_stride(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    lua_createtable(L, t->ndim, 0);
    for (int d = 0; d < t->ndim; d++) { lua_pushinteger(L, t->stride[d]); lua_seti(L, -2, d + 1); }
    return 1;
}

static int m_view(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int64_t shape[QL_MAXDIM];
    int next, nd = check_shape(L, 2, shape, &next);
    return ql_lua_pushtensor(L, ql_tensor_view(t, nd, shape));
}

static int m_reshape(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int64_t shape[QL_MAXDIM];
    int next, nd = check_shape(L, 2, shape, &next);
    return ql_lua_pushtensor(L, ql_tensor_reshape(t, nd, shape));
}

static int m_transpose(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) {
        if (t->ndim != 2) return luaL_error(L, "transpose() without dimensions needs a 2-D tensor");
        return ql_lua_pushtensor(L, ql_tensor_transpose(t, 0, 1));
    }
    return ql_lua_pushtensor(L, ql_tensor_transpose(t, check_dim(L, t, 2), check_dim(L, t, 3)));
}

static int m_permute(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int perm[QL_MAXDIM];
    int64_t p[QL_MAXDIM];
    int next, nd = check_shape(L, 2, p, &next);
    if (nd != t->ndim) return luaL_error(L, "permute needs %d dimensions, got %d", t->ndim, nd);
    for (int d = 0; d < nd; d++) perm[d] = p[d] > 0 ? (int)p[d] - 1 : (int)p[d];
    return ql_lua_pushtensor(L, ql_tensor_permute(t, perm));
}

/* t:slice(dim, first, last [, step]) — inclusive, 1-based, negative from the end */
static int m_slice(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int dim = check_dim(L, t, 2);
    int64_t n = t->shape[dim];
    lua_Integer first = luaL_optinteger(L, 3, 1), last = luaL_optinteger(L, 4, -1), step = luaL_optinteger(L, 5, 1);
    if (first < 0) first += n + 1;
    if (last < 0) last += n + 1;
    if (first < 1) first = 1;
    return ql_lua_pushtensor(L, ql_tensor_slice(t, dim, first - 1, last, step));
}

static int m_select(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int dim = check_dim(L, t, 2);
    lua_Integer i = luaL_checkinteger(L, 3);
    if (i == 0) return luaL_error(L, "indices are 1-based: index 0 does not exist");
    return ql_lua_pushtensor(L, ql_tensor_select(t, dim, i > 0 ? i - 1 : i));
}

static int m_contiguous(lua_State *L) { return ql_lua_pushtensor(L, ql_tensor_contiguous(ql_lua_checktensor(L, 1))); }

static int m_clone(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    return ql_lua_pushtensor(L, ql_tensor_to(t, t->dtype, ql_tensor_device(t)));
}

/* t:to("bf16"), t:to("cuda"), t:to("bf16", "cuda"), t:to{dtype=..., device=...} */
static int m_to(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    ql_dtype dt = t->dtype;
    ql_device dev = ql_tensor_device(t);
    if (lua_istable(L, 2)) { dt = opt_dtype(L, 2, dt); dev = opt_device(L, 2, dev); }
    else {
        for (int i = 2; i <= lua_gettop(L); i++) {
            const char *s = luaL_checkstring(L, i);
            if (ql_dtype_parse(s, &dt) != 0 && ql_device_parse(s, &dev) != QL_OK)
                return luaL_error(L, "to(): '%s' is neither a dtype (f32, bf16, ...) nor a device (cpu, cuda:N)", s);
        }
    }
    ql_clear_error();
    return ql_lua_pushtensor(L, ql_tensor_to(t, dt, dev));
}
static int m_cpu(lua_State *L) { ql_tensor *t = ql_lua_checktensor(L, 1); return ql_lua_pushtensor(L, ql_tensor_to(t, t->dtype, ql_cpu())); }
static int m_cuda(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    return ql_lua_pushtensor(L, ql_tensor_to(t, t->dtype, ql_cuda((int)luaL_optinteger(L, 2, 0))));
}
static int m_float(lua_State *L) { ql_tensor *t = ql_lua_checktensor(L, 1); return ql_lua_pushtensor(L, ql_tensor_to(t, QL_F32, ql_tensor_device(t))); }

static int m_copy_(lua_State *L)
{
    ql_tensor *d = ql_lua_checktensor(L, 1);
    if (lua_isnumber(L, 2)) { if (ql_tensor_fill_(d, lua_tonumber(L, 2)) != QL_OK) return ql_lua_error(L); }
    else if (ql_tensor_copy_(d, ql_lua_checktensor(L, 2)) != QL_OK) return ql_lua_error(L);
    lua_settop(L, 1);
    return 1;
}

/* ---------------------------------------------------------------- math */

static int unary(lua_State *L, ql_unary_op op) { return ql_lua_pushtensor(L, ql_unary(op, ql_lua_checktensor(L, 1))); }
#define UNARY(name, op) static int m_##name(lua_State *L) { return unary(L, op); }
UNARY(neg, QL_NEG) UNARY(abs, QL_ABS) UNARY(exp, QL_EXP) UNARY(log, QL_LOG) UNARY(sqrt, QL_SQRT)
UNARY(rsqrt, QL_RSQRT) UNARY(sin, QL_SIN) UNARY(cos, QL_COS) UNARY(tanh, QL_TANH) UNARY(sigmoid, QL_SIGMOID)
UNARY(silu, QL_SILU) UNARY(relu, QL_RELU) UNARY(gelu, QL_GELU) UNARY(square, QL_SQUARE) UNARY(recip, QL_RECIP)

static int binary(lua_State *L, ql_binary_op op)
{
    ltensor *ua = luaL_testudata(L, 1, QL_TENSOR_MT), *ub = luaL_testudata(L, 2, QL_TENSOR_MT);
    if ((ua && !ua->t) || (ub && !ub->t)) return luaL_error(L, "this tensor was released (closed or garbage-collected)");
    ql_tensor *a = ua ? ua->t : NULL, *b = ub ? ub->t : NULL;
    if (a && b) return ql_lua_pushtensor(L, ql_binary(op, a, b));
    if (a && lua_isnumber(L, 2)) return ql_lua_pushtensor(L, ql_binary_scalar(op, ql_lua_checktensor(L, 1), lua_tonumber(L, 2), 0));
    if (b && lua_isnumber(L, 1)) return ql_lua_pushtensor(L, ql_binary_scalar(op, ql_lua_checktensor(L, 2), lua_tonumber(L, 1), 1));
    return luaL_error(L, "%s: expected tensors or a tensor and a number, got %s and %s",
                      ql_binary_name(op), luaL_typename(L, 1), luaL_typename(L, 2));
}
#define BINARY(name, op) static int m_##name(lua_State *L) { return binary(L, op); }
BINARY(add, QL_ADD) BINARY(sub, QL_SUB) BINARY(mul, QL_MUL) BINARY(div, QL_DIV) BINARY(pow, QL_POW)
BINARY(maximum, QL_MAXIMUM) BINARY(minimum, QL_MINIMUM) BINARY(eq, QL_EQ) BINARY(ne, QL_NE)
BINARY(lt, QL_LT) BINARY(le, QL_LE) BINARY(gt, QL_GT) BINARY(ge, QL_GE)

static int reduce(lua_State *L, ql_reduce_op op)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (lua_isnoneornil(L, 2)) return ql_lua_pushtensor(L, ql_reduce(op, t, QL_ALLDIMS, 0));
    int dim = check_dim(L, t, 2);
    ql_tensor *r = ql_reduce(op, t, dim, lua_toboolean(L, 3));
    if (r && op == QL_ARGMAX) {  /* 1-based indices in Lua */
        ql_tensor *r1 = ql_binary_scalar(QL_ADD, r, 1, 0);
        ql_tensor_release(r);
        r = r1;
    }
    return ql_lua_pushtensor(L, r);
}
static int m_sum(lua_State *L) { return reduce(L, QL_SUM); }
static int m_mean(lua_State *L) { return reduce(L, QL_MEAN); }
static int m_max(lua_State *L) { return reduce(L, QL_MAX); }
static int m_min(lua_State *L) { return reduce(L, QL_MIN); }
static int m_argmax(lua_State *L) { return reduce(L, QL_ARGMAX); }

static int m_softmax(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    int dim = lua_isnoneornil(L, 2) ? t->ndim - 1 : check_dim(L, t, 2);
    return ql_lua_pushtensor(L, ql_softmax(t, dim));
}

static int m_matmul(lua_State *L) { return ql_lua_pushtensor(L, ql_matmul(ql_lua_checktensor(L, 1), ql_lua_checktensor(L, 2))); }

/* ---------------------------------------------------------------- lifetime */

static int m_release(lua_State *L)
{
    ltensor *u = luaL_checkudata(L, 1, QL_TENSOR_MT);
    if (u->t) { ql_tensor_release(u->t); u->t = NULL; }
    return 0;
}

static int m_len(lua_State *L)
{
    ql_tensor *t = ql_lua_checktensor(L, 1);
    if (t->ndim == 0) return luaL_error(L, "a 0-d tensor has no length");
    lua_pushinteger(L, t->shape[0]);
    return 1;
}

static const luaL_Reg methods[] = {
    { "size", m_size }, { "numel", m_numel }, { "dim", m_dim }, { "stride", m_stride },
    { "is_contiguous", m_is_contiguous },
    { "view", m_view }, { "reshape", m_reshape }, { "transpose", m_transpose }, { "permute", m_permute },
    { "slice", m_slice }, { "select", m_select }, { "contiguous", m_contiguous }, { "clone", m_clone },
    { "to", m_to }, { "cpu", m_cpu }, { "cuda", m_cuda }, { "float", m_float }, { "copy_", m_copy_ },
    { "totable", m_totable }, { "item", m_item },
    { "neg", m_neg }, { "abs", m_abs }, { "exp", m_exp }, { "log", m_log }, { "sqrt", m_sqrt },
    { "rsqrt", m_rsqrt }, { "sin", m_sin }, { "cos", m_cos }, { "tanh", m_tanh }, { "sigmoid", m_sigmoid },
    { "silu", m_silu }, { "relu", m_relu }, { "gelu", m_gelu }, { "square", m_square }, { "recip", m_recip },
    { "add", m_add }, { "sub", m_sub }, { "mul", m_mul }, { "div", m_div }, { "pow", m_pow },
    { "maximum", m_maximum }, { "minimum", m_minimum }, { "eq", m_eq }, { "ne", m_ne },
    { "lt", m_lt }, { "le", m_le }, { "gt", m_gt }, { "ge", m_ge },
    { "sum", m_sum }, { "mean", m_mean }, { "max", m_max }, { "min", m_min }, { "argmax", m_argmax },
    { "softmax", m_softmax }, { "matmul", m_matmul },
    { "release", m_release },
    { NULL, NULL }
};

static int m_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TNUMBER) {  /* t[i]: select along the first dimension */
        ql_tensor *t = ql_lua_checktensor(L, 1);
        if (t->ndim == 0) return luaL_error(L, "cannot index a 0-d tensor");
        lua_Integer i = luaL_checkinteger(L, 2);
        if (i == 0) return luaL_error(L, "indices are 1-based: index 0 does not exist");
        return ql_lua_pushtensor(L, ql_tensor_select(t, 0, i > 0 ? i - 1 : i));
    }
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "shape") == 0) { push_shape(L, ql_lua_checktensor(L, 1)); return 1; }
    if (strcmp(k, "dtype") == 0) { lua_pushstring(L, ql_dtype_name(ql_lua_checktensor(L, 1)->dtype)); return 1; }
    if (strcmp(k, "ndim") == 0) { lua_pushinteger(L, ql_lua_checktensor(L, 1)->ndim); return 1; }
    if (strcmp(k, "device") == 0) {
        char s[32];
        ql_device_str(ql_tensor_device(ql_lua_checktensor(L, 1)), s, sizeof s);
        lua_pushstring(L, s);
        return 1;
    }
    if (strcmp(k, "T") == 0) { lua_settop(L, 1); return m_transpose(L); }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_getfield(L, -1, k);
    return 1;
}

static const ql_lua_doc method_docs[] = {
    { "", "a tensor: dtype, device, shape and strides over a shared storage; t.shape, t.dtype, t.device, "
          "t.ndim and t.T (2-D transpose) are fields; t[i] selects along the first dimension; + - * / ^ work "
          "elementwise with tensors and numbers" },
    { "shape", "shape -> {n1, n2, ...}   (a field) the sizes of the dimensions" },
    { "dtype", "dtype -> \"f32\" | \"bf16\" | \"f16\" | \"i64\" | \"i32\" | \"u8\" | \"nf4\"   (a field)" },
    { "device", "device -> \"cpu\" | \"cuda:N\"   (a field)" },
    { "ndim", "ndim -> n   (a field) the number of dimensions" },
    { "T", "T -> tensor   (a field) the transpose of a 2-D tensor (a view)" },
    { "size", "size([dim]) -> {n1, n2, ...} | n\n  the shape, or the size of one dimension (1-based, negative from the end)" },
    { "numel", "numel() -> n   the number of elements" },
    { "dim", "dim() -> n   the number of dimensions" },
    { "stride", "stride() -> {s1, s2, ...}   strides in elements" },
    { "is_contiguous", "is_contiguous() -> boolean   whether the elements are dense in row-major order" },
    { "view", "view(shape) -> tensor\n  the same storage seen with another shape (a contiguous tensor; -1 infers one size)" },
    { "reshape", "reshape(shape) -> tensor\n  a view when possible, else a copy with that shape" },
    { "transpose", "transpose([d1, d2]) -> tensor\n  a view with two dimensions swapped (no arguments: a 2-D tensor's transpose)" },
    { "permute", "permute({d1, d2, ...}) -> tensor   a view with the dimensions reordered" },
    { "slice", "slice(dim, first [, last [, step]]) -> tensor\n  a view of indices first..last (inclusive, 1-based, negative from the end): "
               "t:slice(1, 2, 4) takes rows 2 to 4" },
    { "select", "select(dim, i) -> tensor   the i-th entry along dim (1-based), one dimension fewer (a view)" },
    { "contiguous", "contiguous() -> tensor   itself when contiguous, else a dense copy" },
    { "clone", "clone() -> tensor   a copy with the same dtype and device" },
    { "to", "to(dtype | device, ...) or to{dtype =, device =} -> tensor\n  converted and/or moved: t:to(\"bf16\"), t:to(\"cuda\"), t:to(\"bf16\", \"cuda:1\")" },
    { "cpu", "cpu() -> tensor   a copy on the CPU (itself when already there)" },
    { "cuda", "cuda([n]) -> tensor   a copy on GPU n (default 0)" },
    { "float", "float() -> tensor   converted to f32 on the same device" },
    { "copy_", "copy_(src | number) -> t\n  copies src (broadcast, converted) or a number into t, in place" },
    { "totable", "totable() -> nested Lua table of the values (copied to the CPU)" },
    { "item", "item() -> number   the value of a one-element tensor" },
    { "neg", "neg() -> tensor   -t, elementwise" },
    { "abs", "abs() -> tensor   |t|, elementwise" },
    { "exp", "exp() -> tensor   e^t, elementwise" },
    { "log", "log() -> tensor   natural logarithm, elementwise" },
    { "sqrt", "sqrt() -> tensor   square root, elementwise" },
    { "rsqrt", "rsqrt() -> tensor   1 / sqrt(t), elementwise" },
    { "sin", "sin() -> tensor   sine, elementwise" },
    { "cos", "cos() -> tensor   cosine, elementwise" },
    { "tanh", "tanh() -> tensor   hyperbolic tangent, elementwise" },
    { "sigmoid", "sigmoid() -> tensor   1 / (1 + e^-t), elementwise" },
    { "silu", "silu() -> tensor   t * sigmoid(t), elementwise" },
    { "relu", "relu() -> tensor   max(t, 0), elementwise" },
    { "gelu", "gelu() -> tensor   GELU (the exact erf form, torch's default), elementwise" },
    { "square", "square() -> tensor   t * t, elementwise" },
    { "recip", "recip() -> tensor   1 / t, elementwise" },
    { "add", "add(other) -> tensor   t + other (a tensor, broadcast, or a number); also the + operator" },
    { "sub", "sub(other) -> tensor   t - other; also the - operator" },
    { "mul", "mul(other) -> tensor   t * other, elementwise; also the * operator" },
    { "div", "div(other) -> tensor   t / other; also the / operator" },
    { "pow", "pow(other) -> tensor   t ^ other; also the ^ operator" },
    { "maximum", "maximum(other) -> tensor   the larger of t and other, elementwise" },
    { "minimum", "minimum(other) -> tensor   the smaller of t and other, elementwise" },
    { "eq", "eq(other) -> tensor   1 where t == other, else 0" },
    { "ne", "ne(other) -> tensor   1 where t ~= other, else 0" },
    { "lt", "lt(other) -> tensor   1 where t < other, else 0" },
    { "le", "le(other) -> tensor   1 where t <= other, else 0" },
    { "gt", "gt(other) -> tensor   1 where t > other, else 0" },
    { "ge", "ge(other) -> tensor   1 where t >= other, else 0" },
    { "sum", "sum([dim [, keepdim]]) -> tensor   the sum of all elements, or along dim" },
    { "mean", "mean([dim [, keepdim]]) -> tensor   the mean of all elements, or along dim" },
    { "max", "max([dim [, keepdim]]) -> tensor   the largest element, or along dim" },
    { "min", "min([dim [, keepdim]]) -> tensor   the smallest element, or along dim" },
    { "argmax", "argmax([dim [, keepdim]]) -> tensor   index of the largest element (0-based, as torch.argmax), or along dim" },
    { "softmax", "softmax([dim]) -> tensor   softmax along dim (default: the last)" },
    { "matmul", "matmul(other) -> tensor   matrix product (batched over leading dimensions)" },
    { "release", "release()   frees the storage now (also on __gc / __close); using t afterwards raises" },
    { NULL, NULL }
};

static const luaL_Reg metamethods[] = {
    { "__add", m_add }, { "__sub", m_sub }, { "__mul", m_mul }, { "__div", m_div }, { "__pow", m_pow },
    { "__unm", m_neg }, { "__len", m_len }, { "__tostring", m_tostring },
    { "__gc", m_release }, { "__close", m_release },
    { NULL, NULL }
};

/* ---------------------------------------------------------------- safetensors */

static int l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    ql_st_file *f = ql_st_open(path);
    if (!f) return ql_lua_fail(L);
    lua_createtable(L, 0, ql_st_count(f));
    for (int i = 0; i < ql_st_count(f); i++) {
        ql_tensor *t = ql_st_tensor(f, i);
        if (!t) { ql_st_close(f); return ql_lua_fail(L); }
        ql_lua_pushtensor(L, t);
        lua_setfield(L, -2, ql_st_name(f, i));
    }
    ql_lua_push_metadata(L, f);   /* the second result */
    ql_st_close(f);  /* tensors keep the mapping alive */
    return 2;
}

/* save(path, {name = tensor}, metadata): shared by qlora.tensor.save and qlora.nf4.save */
int ql_lua_save(lua_State *L, int allow_nf4)
{
    const char *path = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) { n++; lua_pop(L, 1); }
    /* userdata arrays: a Lua error below cannot leak them */
    const char **names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
    ql_tensor **ts = lua_newuserdatauv(L, sizeof(ql_tensor *) * (size_t)(n ? n : 1), 0);
    int k = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "save: tensor names must be strings");
        names[k] = lua_tostring(L, -2);
        ts[k] = ql_lua_checktensor(L, -1);
        k++;
        lua_pop(L, 1);
    }
    int nm = 0;
    const char **mk = NULL, **mv = NULL;
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) { nm++; lua_pop(L, 1); }
        mk = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nm ? nm : 1), 0);
        mv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nm ? nm : 1), 0);
        int j = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "save: metadata keys and values must be strings");
            mk[j] = lua_tostring(L, -2);
            mv[j] = lua_tostring(L, -1);
            j++;
            lua_pop(L, 1);
        }
    }
    if (ql_tensors_save(path, n, names, ts, allow_nf4, nm, mk, mv) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_save(lua_State *L) { return ql_lua_save(L, 0); }

void ql_lua_push_metadata(lua_State *L, const ql_st_file *f)
{
    lua_createtable(L, 0, ql_st_meta_count(f));
    for (int i = 0; i < ql_st_meta_count(f); i++) {
        lua_pushstring(L, ql_st_meta_value(f, i));
        lua_setfield(L, -2, ql_st_meta_key(f, i));
    }
}

/* ---------------------------------------------------------------- memory */

static int l_memory(lua_State *L)
{
    ql_device d = ql_cpu();
    if (!lua_isnoneornil(L, 1) && ql_device_parse(luaL_checkstring(L, 1), &d) != QL_OK) return ql_lua_error(L);
    ql_mem_stats m = ql_memory(d);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, m.in_use); lua_setfield(L, -2, "in_use");
    lua_pushinteger(L, m.peak); lua_setfield(L, -2, "peak");
    lua_pushinteger(L, m.allocs); lua_setfield(L, -2, "tensors");
    return 1;
}

static int l_is_tensor(lua_State *L) { lua_pushboolean(L, ql_lua_totensor(L, 1) != NULL); return 1; }

static const luaL_Reg functions[] = {
    { "zeros", l_zeros }, { "ones", l_ones }, { "full", l_full }, { "empty", l_empty },
    { "arange", l_arange }, { "rand", l_rand }, { "randn", l_randn }, { "manual_seed", l_manual_seed },
    { "from", l_from }, { "load", l_load }, { "save", l_save }, { "memory", l_memory },
    { "is_tensor", l_is_tensor },
    { NULL, NULL }
};

static const ql_lua_doc function_docs[] = {
    { "", "tensors as Lua objects: 1-based dimensions and indices, inclusive ranges; the methods of "
          "a tensor (help(t)) are functions here too: qlora.tensor.matmul(a, b)" },
    { "zeros", "zeros(shape [, {dtype = \"f32\", device = \"cpu\"}]) -> tensor   filled with 0; shape: {2, 3} or 2, 3" },
    { "ones", "ones(shape [, {dtype, device}]) -> tensor   filled with 1" },
    { "full", "full(shape, value [, {dtype, device}]) -> tensor   filled with value" },
    { "empty", "empty(shape [, {dtype, device}]) -> tensor   uninitialised values" },
    { "arange", "arange([start,] stop [, step] [, {dtype, device}]) -> 1-D tensor\n"
                "  start, start + step, ... with stop excluded (i64 when every argument is an integer, else f32)" },
    { "rand", "rand(shape [, {seed, stream, dtype, device}]) -> tensor   uniform in [0, 1); the same numbers on CPU and CUDA" },
    { "randn", "randn(shape [, {seed, stream, dtype, device}]) -> tensor\n"
               "  standard normal values; the same numbers on CPU and CUDA for a seed "
               "(without one: the generator of manual_seed, a new stream per call)" },
    { "manual_seed", "manual_seed(n)   seeds the generator used by rand/randn without {seed =}" },
    { "from", "from(table | number [, {dtype, device}]) -> tensor\n"
              "  from a nested Lua table (rows of equal length) or a number (0-d); i64 when all are integers" },
    { "load", "load(path) -> {name = tensor}, metadata | nil, message\n"
              "  a safetensors file, memory-mapped, its header validated" },
    { "save", "save(path, {name = tensor} [, metadata]) -> true | nil, message\n"
              "  a safetensors file, written atomically (temp file + rename)" },
    { "memory", "memory([device]) -> {in_use, peak, tensors}   bytes and tensors allocated on a device (default cpu)" },
    { "is_tensor", "is_tensor(x) -> boolean" },
    { NULL, NULL }
};

int luaopen_qlora_tensor(lua_State *L)
{
    if (luaL_newmetatable(L, QL_TENSOR_MT)) {
        luaL_setfuncs(L, metamethods, 0);
        luaL_newlib(L, methods);
        ql_lua_docs(L, -1, QL_TENSOR_MT, "t:", method_docs);
        lua_pushcclosure(L, m_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "qlora.Tensor");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    /* module-level ops mirror the methods: qlora.tensor.matmul(a, b) */
    luaL_setfuncs(L, methods, 0);
    lua_pushnil(L); lua_setfield(L, -2, "release");
    ql_lua_docs(L, -1, "qlora.tensor", "qlora.tensor.", function_docs);
    return 1;
}
