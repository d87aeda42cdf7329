/*
 * l_lora.c — qlora.lora: LoRA adapters and the training step. The adapter trains
 * where its model lives (the CPU reference, or a GPU: parameters, gradients and AdamW
 * state stay there; saving and params() copy them back).
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.lora) in the REPL).
 * The adapter keeps its model's weights alive: model:release() while an adapter uses them
 * makes the model object unusable, and the weights go with the last such adapter.
 * Layer numbers are the model's own (0-based, as in "model.layers.0").
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "lora.h"
#include "model.h"

#define LORA_MT "qlora.Lora"

/* mh: the use count that keeps the C model alive while the adapter exists (qlora.h);
   m: its model */
typedef struct { ql_lora *l; ql_model *m; ql_lua_model *mh; } llora;

static llora *check(lua_State *L, int idx)
{
    llora *u = luaL_checkudata(L, idx, LORA_MT);
    if (!u->l) luaL_error(L, "this adapter was released");
    return u;
}

/* the adapter object for the model at model_idx, made before the adapter it will own
   (so that nothing leaks when making it raises); holds the model through its user value
   and a use count */
static llora *new_object(lua_State *L, int model_idx)
{
    llora *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->l = NULL; u->m = NULL; u->mh = NULL;
    luaL_setmetatable(L, LORA_MT);
    lua_pushvalue(L, model_idx);
    lua_setiuservalue(L, -2, 1);
    u->mh = ql_lua_model_use(L, model_idx);
    u->m = ql_lua_model_ptr(u->mh);
    return u;
}

/* __gc, __close and release: frees the adapter, then gives up its use of the model */
static int m_release(lua_State *L)
{
    llora *u = luaL_checkudata(L, 1, LORA_MT);
    ql_lora_free(u->l);
    u->l = NULL;
    if (u->mh) { ql_lua_model_unuse(u->mh); u->mh = NULL; }
    return 0;
}

/* gives the object on top of the stack its adapter l (NULL: the error of making it) */
static int finish(lua_State *L, llora *u, ql_lora *l)
{
    if (!l) return ql_lua_fail(L);
    u->l = l;
    if (ql_lora_to_device(l, u->m->device) != QL_OK) {   /* training runs where the model lives */
        ql_lora_free(l);
        u->l = NULL;
        return ql_lua_fail(L);
    }
    return 1;
}

static int l_new(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    int r = 16, rs = 0;
    float alpha = -1, dropout = 0;
    unsigned targets = (1u << QL_NTARGETS) - 1;
    uint64_t seed = 0;
    uint8_t *on = NULL;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "r"); r = (int)luaL_optinteger(L, -1, 16); lua_pop(L, 1);
        lua_getfield(L, 2, "alpha"); alpha = (float)luaL_optnumber(L, -1, -1); lua_pop(L, 1);
        lua_getfield(L, 2, "dropout"); dropout = (float)luaL_optnumber(L, -1, 0); lua_pop(L, 1);
        lua_getfield(L, 2, "rslora"); rs = lua_toboolean(L, -1); lua_pop(L, 1);
        lua_getfield(L, 2, "seed"); seed = (uint64_t)luaL_optinteger(L, -1, 0); lua_pop(L, 1);
        lua_getfield(L, 2, "targets");
        if (lua_istable(L, -1)) {
            targets = 0;
            for (lua_Integer i = 1; i <= luaL_len(L, -1); i++) {
                lua_geti(L, -1, i);
                const char *name = luaL_checkstring(L, -1);
                int found = 0;
                for (int t = 0; t < QL_NTARGETS; t++)
                    if (!strcmp(name, ql_lora_target_names[t]) || (strlen(name) == 1 && name[0] == ql_lora_target_names[t][0] && t <= QL_T_O)) {
                        targets |= 1u << t; found = 1;
                    }
                if (!found) return luaL_error(L, "unknown LoRA target '%s' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", name);
                lua_pop(L, 1);
            }
        } else if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "all") != 0 && strcmp(lua_tostring(L, -1), "all-linear") != 0)
            return luaL_error(L, "targets: a list of projection names or \"all\"");
        lua_pop(L, 1);
        lua_getfield(L, 2, "layers");
        if (lua_istable(L, -1)) {
            on = lua_newuserdatauv(L, (size_t)m->cfg.layers, 0);
            memset(on, 0, (size_t)m->cfg.layers);
            for (lua_Integer i = 1; i <= luaL_len(L, -2); i++) {
                lua_geti(L, -2, i);
                lua_Integer k = luaL_checkinteger(L, -1);
                if (k < 0 || k >= m->cfg.layers) return luaL_error(L, "layer %d does not exist (0..%d)", (int)k, m->cfg.layers - 1);
                on[k] = 1;
                lua_pop(L, 1);
            }
        }
    }
    if (alpha < 0) alpha = (float)(2 * r);
    llora *u = new_object(L, 1);
    return finish(L, u, ql_lora_new(m, r, alpha, rs, dropout, targets, on, seed));
}

static int l_load(lua_State *L)
{
    ql_lua_checkmodel(L, 1);
    const char *dir = luaL_checkstring(L, 2);
    llora *u = new_object(L, 1);
    return finish(L, u, ql_lora_load_peft(u->m, dir));
}

static int m_save(lua_State *L)
{
    llora *u = check(L, 1);
    if (ql_lora_sync_host(u->l) != QL_OK) return ql_lua_fail(L);
    if (ql_lora_save_peft(u->l, luaL_checkstring(L, 2), luaL_optstring(L, 3, u->m->dir)) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_save_state(lua_State *L)
{
    ql_lora *l = check(L, 1)->l;
    if (ql_lora_sync_host(l) != QL_OK || ql_lora_save_state(l, luaL_checkstring(L, 2)) != QL_OK) return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_load_state(lua_State *L)
{
    ql_lora *l = check(L, 1)->l;
    if (ql_lora_sync_host(l) != QL_OK || ql_lora_load_state(l, luaL_checkstring(L, 2)) != QL_OK ||
        ql_lora_sync_device(l) != QL_OK)
        return ql_lua_fail(L);
    lua_pushboolean(L, 1);
    return 1;
}

/* ids (arg idx), optional labels, options: builds a batch; pushes userdata scratch */
static void batch(lua_State *L, int ids_idx, int opts, ql_batch *b, int *rows, int *T)
{
    b->ids = ql_lua_ids(L, ids_idx, rows, T);
    int64_t n = (int64_t)*rows * *T;
    int32_t *r = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)n * 3, 0);
    ql_lua_batch_ranges(L, opts, *rows, *T, r, r + n, r + 2 * n);
    b->n = n; b->pos = r; b->lo = r + n; b->hi = r + 2 * n;
}

/* ids (arg 2) and labels (arg 3) of the same shape, options at arg 4 */
static int32_t *batch_labels(lua_State *L, ql_batch *b)
{
    int rows, T, lr, lT;
    batch(L, 2, 4, b, &rows, &T);
    int32_t *labels = ql_lua_ids(L, 3, &lr, &lT);
    if (lr != rows || lT != T) luaL_error(L, "labels must have the shape of ids");
    return labels;
}

static int opt_bool(lua_State *L, int idx, const char *k, int d)
{
    if (!lua_istable(L, idx)) return d;
    lua_getfield(L, idx, k);
    int v = lua_isnil(L, -1) ? d : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* checkpointing = false | true | "host" */
static int opt_ckpt(lua_State *L, int idx)
{
    if (!lua_istable(L, idx)) return QL_CKPT_NONE;
    lua_getfield(L, idx, "checkpointing");
    int v = QL_CKPT_NONE;
    if (lua_type(L, -1) == LUA_TSTRING) {
        if (strcmp(lua_tostring(L, -1), "host") != 0)
            return luaL_error(L, "checkpointing must be true, false or \"host\", not \"%s\"", lua_tostring(L, -1));
        v = QL_CKPT_HOST;
    } else if (lua_toboolean(L, -1)) v = QL_CKPT_DEVICE;
    lua_pop(L, 1);
    return v;
}

/* mlp_rows = N: the MLP in slices of N tokens (absent or 0: the decoder's default) */
static int64_t opt_mlp_rows(lua_State *L, int idx)
{
    if (!lua_istable(L, idx)) return 0;
    lua_getfield(L, idx, "mlp_rows");
    int isint = 0;
    int64_t v = lua_isnil(L, -1) ? 0 : (int64_t)lua_tointegerx(L, -1, &isint);
    if (!lua_isnil(L, -1) && (!isint || v < 0))
        return luaL_error(L, "mlp_rows must be a whole number of tokens (0: the default of %d)", QL_DEC_MLP_ROWS);
    lua_pop(L, 1);
    return v;
}

static int m_forward_backward(lua_State *L)
{
    llora *u = check(L, 1);
    ql_batch b;
    int32_t *labels = batch_labels(L, &b);
    double denom = 0;
    if (lua_istable(L, 4)) { lua_getfield(L, 4, "denom"); denom = luaL_optnumber(L, -1, 0); lua_pop(L, 1); }
    if (denom <= 0) {  /* default: this batch's target tokens */
        for (int64_t i = 0; i + 1 < b.n; i++) if (b.lo[i + 1] <= i && labels[i + 1] != -100) denom += 1;
        if (denom <= 0) denom = 1;
    }
    ql_dec_step st = { .mode = QL_DEC_TRAIN, .batch = &b, .labels = labels, .lora = u->l, .denom = denom,
                       .train = opt_bool(L, 4, "train", 1), .checkpointing = opt_ckpt(L, 4),
                       .mlp_rows = opt_mlp_rows(L, 4) };
    if (ql_decoder_run(u->m, &st) != QL_OK) return ql_lua_error(L);
    lua_pushnumber(L, st.loss_sum);
    lua_pushinteger(L, st.count);
    return 2;
}

static int m_loss(lua_State *L)
{
    llora *u = check(L, 1);
    ql_batch b;
    int32_t *labels = batch_labels(L, &b);
    ql_dec_step st = { .mode = QL_DEC_LOSS, .batch = &b, .labels = labels, .lora = u->l, .mlp_rows = opt_mlp_rows(L, 4) };
    if (ql_decoder_run(u->m, &st) != QL_OK) return ql_lua_error(L);
    double sum = st.loss_sum;
    int64_t count = st.count;
    lua_pushnumber(L, count ? sum / (double)count : 0.0 / 0.0);
    lua_pushnumber(L, sum);
    lua_pushinteger(L, count);
    return 3;
}

static int m_logits(lua_State *L)
{
    llora *u = check(L, 1);
    ql_batch b;
    int rows, T;
    batch(L, 2, 3, &b, &rows, &T);
    int64_t shape[2] = { b.n, u->m->cfg.vocab };
    ql_tensor *out = ql_tensor_new(QL_F32, 2, shape, ql_cpu());
    if (!out) return ql_lua_error(L);
    if (ql_lora_logits(u->m, u->l, &b, ql_tensor_data(out)) != QL_OK) { ql_tensor_release(out); return ql_lua_error(L); }
    if (rows > 1) {
        int64_t s3[3] = { rows, T, u->m->cfg.vocab };
        ql_tensor *v = ql_tensor_view(out, 3, s3);
        ql_tensor_release(out);
        out = v;
    }
    return ql_lua_pushtensor(L, out);
}

static int m_zero_grad(lua_State *L)
{
    if (ql_lora_zero_grad(check(L, 1)->l) != QL_OK) return ql_lua_error(L);
    return 0;
}
static int m_grad_norm(lua_State *L)
{
    double norm;
    if (ql_lora_grad_norm(check(L, 1)->l, &norm) != QL_OK) return ql_lua_error(L);
    lua_pushnumber(L, norm);
    return 1;
}
static int m_scale_grad(lua_State *L)
{
    if (ql_lora_scale_grad(check(L, 1)->l, (float)luaL_checknumber(L, 2)) != QL_OK) return ql_lua_error(L);
    return 0;
}
static int m_num_params(lua_State *L) { lua_pushinteger(L, ql_lora_num_params(check(L, 1)->l)); return 1; }

static double opt_num(lua_State *L, int idx, const char *k, double d)
{
    lua_getfield(L, idx, k);
    double v = luaL_optnumber(L, -1, d);
    lua_pop(L, 1);
    return v;
}

static int m_adamw(lua_State *L)
{
    llora *u = check(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    double lr = opt_num(L, 2, "lr", -1);
    if (lr < 0) return luaL_error(L, "adamw: lr is required");
    lua_getfield(L, 2, "step");
    lua_Integer step = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (step < 1) return luaL_error(L, "adamw: step counts from 1");
    if (ql_lora_adamw(u->l, (float)lr, (float)opt_num(L, 2, "beta1", 0.9), (float)opt_num(L, 2, "beta2", 0.999),
                      (float)opt_num(L, 2, "eps", 1e-8), (float)opt_num(L, 2, "weight_decay", 0), step) != QL_OK)
        return ql_lua_error(L);
    return 0;
}

static int push_arrays(lua_State *L, int grads)
{
    llora *u = check(L, 1);
    if (ql_lora_sync_host(u->l) != QL_OK) return ql_lua_error(L);
    lua_newtable(L);
    for (int i = 0; i < u->l->layers; i++)
        for (int t = 0; t < QL_NTARGETS; t++) {
            ql_lora_mod *mod = ql_lora_at(u->l, i, t);
            if (!mod) continue;
            for (int ab = 0; ab < 2; ab++) {
                char key[256];
                snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s.lora_%s.weight", i,
                         t <= QL_T_O ? "self_attn" : "mlp", ql_lora_target_names[t], ab ? "B" : "A");
                int64_t shape[2] = { ab ? mod->out : mod->r, ab ? mod->r : mod->in };
                const float *src = ab ? (grads ? mod->gB : mod->B) : (grads ? mod->gA : mod->A);
                ql_tensor *t2 = ql_tensor_from_host(QL_F32, 2, shape, src, QL_F32, ql_cpu());
                if (!t2) return ql_lua_error(L);
                ql_lua_pushtensor(L, t2);
                lua_setfield(L, -2, key);
            }
        }
    return 1;
}
static int m_params(lua_State *L) { return push_arrays(L, 0); }
static int m_grads(lua_State *L) { return push_arrays(L, 1); }

static int m_merge(lua_State *L)
{
    llora *u = check(L, 1);
    char note[512] = "";
    if (ql_lora_sync_host(u->l) != QL_OK) return ql_lua_fail(L);
    if (ql_lora_merge(u->l, luaL_checkstring(L, 2), luaL_checkstring(L, 3), note, sizeof note) != QL_OK) return ql_lua_fail(L);
    lua_pushstring(L, note);
    return 1;
}

/* the dropout stream position, saved and restored with checkpoints for exact resume */
/* lo:set_dropout_step(step [, seed]) */
static int m_set_dropout_step(lua_State *L)
{
    llora *u = check(L, 1);
    u->l->dropout_step = (uint64_t)luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3)) u->l->seed = (uint64_t)luaL_checkinteger(L, 3);
    return 0;
}

static int m_index(lua_State *L)
{
    const char *k = luaL_checkstring(L, 2);
    lua_getfield(L, lua_upvalueindex(1), k);   /* methods first: release() stays callable on a released adapter */
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    llora *u = check(L, 1);
    if (!strcmp(k, "r")) { lua_pushinteger(L, u->l->r); return 1; }
    if (!strcmp(k, "alpha")) { lua_pushnumber(L, u->l->alpha); return 1; }
    if (!strcmp(k, "dropout")) { lua_pushnumber(L, u->l->dropout); return 1; }
    if (!strcmp(k, "rslora")) { lua_pushboolean(L, u->l->rslora); return 1; }
    if (!strcmp(k, "model")) { lua_getiuservalue(L, 1, 1); return 1; }
    if (!strcmp(k, "dropout_step")) { lua_pushinteger(L, (lua_Integer)u->l->dropout_step); return 1; }
    if (!strcmp(k, "seed")) { lua_pushinteger(L, (lua_Integer)u->l->seed); return 1; }
    lua_pushnil(L);
    return 1;
}

static const luaL_Reg methods[] = {
    { "save", m_save }, { "save_state", m_save_state }, { "load_state", m_load_state },
    { "forward_backward", m_forward_backward }, { "loss", m_loss }, { "logits", m_logits },
    { "zero_grad", m_zero_grad }, { "grad_norm", m_grad_norm }, { "scale_grad", m_scale_grad },
    { "adamw", m_adamw }, { "params", m_params }, { "grads", m_grads }, { "merge", m_merge },
    { "num_params", m_num_params }, { "release", m_release }, { "set_dropout_step", m_set_dropout_step },
    { NULL, NULL }
};

static const luaL_Reg functions[] = { { "new", l_new }, { "load", l_load }, { NULL, NULL } };

static const ql_lua_doc method_docs[] = {
    { "", "a LoRA adapter on a model; lo.r, lo.alpha, lo.dropout, lo.rslora, lo.model, lo.seed, lo.dropout_step are fields" },
    { "save", "save(dir [, base_model_name])   PEFT files (adapter_model.safetensors, adapter_config.json), written atomically" },
    { "save_state", "save_state(path)   the AdamW moments, for an exact resume" },
    { "load_state", "load_state(path)   reads what save_state wrote" },
    { "forward_backward", "forward_backward(ids, labels, {doc_lens, denom, train = true, checkpointing = false}) -> loss_sum, count\n"
                          "  the gradients of loss_sum / denom are added to the adapter's; checkpointing = true keeps\n"
                          "  only each layer's input and recomputes the layer in the backward, \"host\" keeps those\n"
                          "  inputs in page-locked host memory; mlp_rows = N runs the MLP N tokens at a time (default\n"
                          "  8192: long sequences need less memory)" },
    { "loss", "loss(ids, labels [, {doc_lens, mlp_rows}]) -> mean, sum, count   no gradients" },
    { "logits", "logits(ids [, {doc_lens}]) -> tensor   the model's logits with the adapter applied" },
    { "zero_grad", "zero_grad()   sets the gradients to 0" },
    { "grad_norm", "grad_norm() -> x   the L2 norm of all gradients" },
    { "scale_grad", "scale_grad(f)   multiplies the gradients by f" },
    { "adamw", "adamw{lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, step}   one AdamW update (torch's)" },
    { "params", "params() -> {PEFT key = tensor}   copies of the adapter's weights" },
    { "grads", "grads() -> {PEFT key = tensor}   copies of the gradients" },
    { "merge", "merge(base_dir, out_dir) -> note | nil, message   the adapter merged into base_dir's bf16 weights, a new model folder" },
    { "num_params", "num_params() -> n   trainable parameters" },
    { "release", "release()   frees the adapter now (also when collected or closed)" },
    { "set_dropout_step", "set_dropout_step(step [, seed])   the dropout stream position, restored from a checkpoint for an exact resume" },
    { NULL, NULL }
};
static const ql_lua_doc docs[] = {
    { "", "LoRA adapters and the training step; the adapter trains where its model lives (CPU or GPU)" },
    { "new", "new(model, {r = 16, alpha = 32, dropout = 0, rslora = false, targets = {\"q_proj\", ...} | \"all\",\n"
             "  layers = {0, 1, ...}, seed = 0}) -> adapter   (layers: the model's own 0-based numbers)" },
    { "load", "load(model, adapter_dir) -> adapter | nil, message   a PEFT adapter folder" },
    { NULL, NULL }
};

int luaopen_qlora_lora(lua_State *L)
{
    if (luaL_newmetatable(L, LORA_MT)) {
        luaL_newlib(L, methods);
        ql_lua_docs(L, -1, LORA_MT, "lo:", method_docs);
        lua_pushcclosure(L, m_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, m_release); lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, m_release); lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.lora", "qlora.lora.", docs);
    return 1;
}
