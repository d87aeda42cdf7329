/*
 * l_device.c — qlora.device: what the GPUs can do for this binary.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.device) in the REPL).
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "device.h"

static void set_int(lua_State *L, const char *k, lua_Integer v) { lua_pushinteger(L, v); lua_setfield(L, -2, k); }
static void set_str(lua_State *L, const char *k, const char *v) { lua_pushstring(L, v); lua_setfield(L, -2, k); }
static void set_bool(lua_State *L, const char *k, int v) { lua_pushboolean(L, v); lua_setfield(L, -2, k); }

static int l_probe(lua_State *L)
{
    ql_device_report r;
    ql_status s = ql_device_probe(&r);
    lua_newtable(L);
    set_bool(L, "cuda_built", r.cuda_built);
    lua_newtable(L);
    int k = 1;
    char archs[sizeof r.archs];
    memcpy(archs, r.archs, sizeof archs);
    for (char *save, *tok = strtok_r(archs, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        lua_pushinteger(L, atoi(tok));
        lua_seti(L, -2, k++);
    }
    lua_setfield(L, -2, "archs");
    if (r.ptx_arch[0]) set_int(L, "ptx_arch", atoi(r.ptx_arch));
    set_int(L, "driver_version", r.driver_version);
    set_int(L, "runtime_version", r.runtime_version);
    set_int(L, "cublaslt_version", r.cublaslt_version);
    set_int(L, "count_error", r.count_error);
    set_str(L, "count_error_msg", r.count_error_msg);
    set_int(L, "device_count", r.device_count);
    if (s != QL_OK) set_str(L, "probe_error", ql_last_error());
    lua_createtable(L, r.device_count, 0);
    for (int i = 0; i < r.device_count && i < QL_MAX_GPUS; i++) {
        ql_gpu_info *g = &r.gpus[i];
        lua_newtable(L);
        set_int(L, "index", g->index);
        set_str(L, "name", g->name);
        set_int(L, "cc_major", g->cc_major);
        set_int(L, "cc_minor", g->cc_minor);
        set_int(L, "sm", g->cc_major * 10 + g->cc_minor);
        set_int(L, "total_mem", g->total_mem);
        set_int(L, "free_mem", g->free_mem);
        set_int(L, "sm_count", g->sm_count);
        set_bool(L, "bf16", g->bf16);
        set_bool(L, "kernel_ok", g->kernel_ok);
        set_int(L, "kernel_error", g->kernel_error);
        set_str(L, "kernel_error_msg", g->kernel_error_msg);
        set_int(L, "binary_version", g->binary_version);
        set_int(L, "ptx_version", g->ptx_version);
        set_bool(L, "jit", g->jit);
        lua_seti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "gpus");
    return 1;
}

static int l_count(lua_State *L)
{
#ifdef QL_CUDA
    lua_pushinteger(L, ql_cuda_backend.device_count());
#else
    lua_pushinteger(L, 0);
#endif
    return 1;
}

static int l_memory(lua_State *L)
{
    ql_device d = ql_cpu();
    if (!lua_isnoneornil(L, 1) && ql_device_parse(luaL_checkstring(L, 1), &d) != QL_OK) return ql_lua_error(L);
    ql_mem_stats m = ql_memory(d);
    lua_newtable(L);
    set_int(L, "in_use", m.in_use);
    set_int(L, "peak", m.peak);
    set_int(L, "tensors", m.allocs);
    const ql_backend *be = ql_backend_for(d);
    size_t fr = 0, tot = 0;
    if (be && be->mem_info(d.index, &fr, &tot) == QL_OK) { set_int(L, "free", (lua_Integer)fr); set_int(L, "total", (lua_Integer)tot); }
    ql_clear_error();
    return 1;
}

static const luaL_Reg functions[] = {
    { "probe", l_probe }, { "count", l_count }, { "memory", l_memory }, { NULL, NULL }
};

static const ql_lua_doc docs[] = {
    { "", "what the GPUs can do for this binary (qlora doctor reads it)" },
    { "probe", "probe() -> {cuda_built, archs = {...}, ptx_arch, driver_version, runtime_version,\n"
               "  cublaslt_version, count_error, count_error_msg, gpus = {{...}, ...}}: the driver, the runtime and each GPU" },
    { "count", "count() -> n   usable CUDA devices (0 without a GPU or a CUDA build)" },
    { "memory", "memory(\"cuda:0\") -> {in_use, peak, tensors, free, total}   bytes on a device" },
    { NULL, NULL }
};

int luaopen_qlora_device(lua_State *L)
{
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.device", "qlora.device.", docs);
    return 1;
}
